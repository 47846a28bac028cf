package lazy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
)

// ParallelStream gives the same stream as DataStream, for any chunk
// size and any number of jobs; its rebuilt tar hashes to the diff ID; a
// truncated data object or a damaged frame is an error, never a short
// stream taken for whole.
func TestParallelStream(t *testing.T) {
	entries := []tarEntry{dir("bin"), reg("bin/big", random(1, 3<<20+17)), reg("etc/a", []byte("a")), reg("etc/empty", nil), reg("lib/x", random(2, 100_000))}
	for _, chunk := range []int64{1024, 64 << 10, DefaultChunkSize} {
		b := build(t, chunk, entries...)
		want, err := io.ReadAll(b.toc.DataStream(bytes.NewReader(b.data)))
		if err != nil {
			t.Fatal(err)
		}
		for _, jobs := range []int{1, 3, 0} {
			s := b.toc.ParallelStream(context.Background(), bytes.NewReader(b.data), jobs)
			tr, err := b.toc.TarReader(s)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			if _, err := io.Copy(h, tr); err != nil {
				t.Fatalf("chunk %d, jobs %d: %v", chunk, jobs, err)
			}
			if got := digest.NewDigest(digest.SHA256, h); got != b.toc.DiffID {
				t.Fatalf("chunk %d, jobs %d: rebuilt tar %s, want %s", chunk, jobs, got, b.toc.DiffID)
			}
			s.Close()
			got, err := io.ReadAll(b.toc.ParallelStream(context.Background(), bytes.NewReader(b.data), jobs))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("chunk %d, jobs %d: %d bytes (err %v), want the %d of DataStream", chunk, jobs, len(got), err, len(want))
			}
		}
	}
	b := build(t, 1024, entries...)
	for name, data := range map[string][]byte{
		"truncated": b.data[:len(b.data)-10],
		"damaged":   append(append([]byte{}, b.data[:100]...), bytes.Repeat([]byte{0xff}, len(b.data)-100)...),
	} {
		_, err := io.ReadAll(b.toc.ParallelStream(context.Background(), bytes.NewReader(data), 2))
		if err == nil {
			t.Errorf("%s data object: no error", name)
		}
		if name == "damaged" && !errors.Is(err, ErrCorruptChunk) {
			t.Errorf("damaged data object: %v, want ErrCorruptChunk", err)
		}
	}
}
