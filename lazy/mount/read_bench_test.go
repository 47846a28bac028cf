package mount

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/s3snap/s3snap/lazy"
)

// BenchmarkColdSequentialRead reads a ~100 MB binary (this machine's
// /usr/bin/node, or random data) sequentially, 1 MiB at a time, through
// a fresh mount with an empty chunk cache: the FUSE and decode path alone
// (the data object is in memory). RA_KB sets the mount's kernel
// readahead (its bdi's read_ahead_kb) to compare.
//
//	go test ./lazy/mount -run '^$' -bench ColdSequentialRead -benchtime 3x
func BenchmarkColdSequentialRead(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("a FUSE mount needs root")
	}
	data, err := os.ReadFile("/usr/bin/node")
	if err != nil {
		data = random(1, 100<<20)
	}
	bl := build(b, lazy.DefaultChunkSize, reg("big", data))
	var total time.Duration
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		cache, err := lazy.NewCache(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		l := lazy.NewLayer(bl.toc, cache, func() (io.ReaderAt, error) { return byteReaderAt(bl.data), nil })
		m, err := Mount(b.Context(), dir, l)
		if err != nil {
			b.Fatal(err)
		}
		if ra := os.Getenv("RA_KB"); ra != "" {
			var st syscall.Stat_t
			if err := syscall.Stat(dir, &st); err != nil {
				b.Fatal(err)
			}
			bdi := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
			if err := os.WriteFile(bdi, []byte(ra), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		start := time.Now()
		f, err := os.Open(filepath.Join(dir, "big"))
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, make([]byte, 1<<20))
		f.Close()
		took := time.Since(start)
		total += took
		_ = m.Unmount()
		cache.Close()
		if err != nil || n != int64(len(data)) {
			b.Fatalf("read %d of %d bytes: %v", n, len(data), err)
		}
	}
	b.ReportMetric(float64(len(data))*float64(b.N)/1e6/total.Seconds(), "MB/s")
}

type byteReaderAt []byte

func (r byteReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(r)) {
		return 0, io.EOF
	}
	n := copy(p, r[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
