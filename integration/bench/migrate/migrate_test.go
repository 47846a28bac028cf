// Package migrate measures s3snap migrate against crane copy, in one run
// against the local S3 server and registries (integration/env.sh up):
//
//	go test ./integration/bench/migrate -run '^$' -bench Migrate -benchtime 1x
package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
)

// prngLayer is a layer of size pseudo-random bytes from seed, generated on
// the fly (never held in memory), so multi-GiB images cost no RAM to push.
type prngLayer struct {
	seed uint64
	size int64
	d    digest.Digest
}

func newPRNGLayer(seed uint64, size int64) *prngLayer {
	l := &prngLayer{seed: seed, size: size}
	h := sha256.New()
	_, _ = io.Copy(h, l.reader())
	l.d = digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil))
	return l
}

type prngReader struct {
	r    *rand.ChaCha8
	left int64
}

func (p *prngReader) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.left {
		b = b[:p.left]
	}
	n, _ := p.r.Read(b)
	p.left -= int64(n)
	return n, nil
}

func (l *prngLayer) reader() io.Reader {
	return &prngReader{r: rand.NewChaCha8([32]byte{byte(l.seed), byte(l.seed >> 8), 1}), left: l.size}
}

func (l *prngLayer) Digest() (v1.Hash, error)             { return v1.NewHash(l.d.String()) }
func (l *prngLayer) DiffID() (v1.Hash, error)             { return v1.NewHash(l.d.String()) }
func (l *prngLayer) Size() (int64, error)                 { return l.size, nil }
func (l *prngLayer) MediaType() (types.MediaType, error)  { return types.OCILayer, nil }
func (l *prngLayer) Compressed() (io.ReadCloser, error)   { return io.NopCloser(l.reader()), nil }
func (l *prngLayer) Uncompressed() (io.ReadCloser, error) { return l.Compressed() }

type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// pushPRNGImage pushes an image of layers into addr/repo:tag and returns its
// total blob size.
func pushPRNGImage(b *testing.B, addr, repo string, layers []*prngLayer) int64 {
	b.Helper()
	rp, err := name.NewRepository(addr + "/" + repo)
	if err != nil {
		b.Fatal(err)
	}
	cfg := fmt.Appendf(nil, `{"architecture":%q,"os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`, runtime.GOARCH)
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}}
	m.SchemaVersion = 2
	total := int64(len(cfg))
	for _, l := range layers {
		if err := remote.WriteLayer(rp, l); err != nil {
			b.Fatal(err)
		}
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: l.d, Size: l.size})
		total += l.size
	}
	if err := remote.WriteLayer(rp, staticBlob(cfg)); err != nil {
		b.Fatal(err)
	}
	raw, _ := json.Marshal(m)
	if err := remote.Put(rp.Tag("v1"), rawManifest(raw)); err != nil {
		b.Fatal(err)
	}
	return total
}

// staticBlob is a small in-memory blob as a layer.
type staticBlob []byte

func (s staticBlob) Digest() (v1.Hash, error)            { return v1.NewHash(digest.FromBytes(s).String()) }
func (s staticBlob) DiffID() (v1.Hash, error)            { return s.Digest() }
func (s staticBlob) Size() (int64, error)                { return int64(len(s)), nil }
func (s staticBlob) MediaType() (types.MediaType, error) { return types.OCIConfigJSON, nil }
func (s staticBlob) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader(string(s))), nil
}
func (s staticBlob) Uncompressed() (io.ReadCloser, error) { return s.Compressed() }

// s3snapBin builds the CLI once.
func s3snapBin(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	bin := filepath.Join(dir, "s3snap")
	cmd := exec.Command("go", "build", "-o", bin, "../../../cmd/s3snap")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build s3snap: %v\n%s", err, out)
	}
	return bin
}

// runMigrate migrates src into a fresh bucket and returns the wall time and
// the process's peak RSS.
func runMigrate(b *testing.B, bin string, e *testenv.S3Env, src string) (time.Duration, int64) {
	b.Helper()
	bucket := e.NewBucket(b)
	cmd := exec.Command(bin, "--endpoint", e.Endpoint, "migrate", src, "s3://"+bucket)
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+e.AccessKey, "AWS_SECRET_ACCESS_KEY="+e.SecretKey, "AWS_REGION="+e.Region)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err != nil {
		b.Fatalf("s3snap migrate: %v\n%s", err, out)
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	testenv.EmptyBucket(context.Background(), e.Client(b), bucket)
	return took, ru.Maxrss * 1024
}

func mbps(n int64, d time.Duration) float64 { return float64(n) / (1 << 20) / d.Seconds() }

// BenchmarkMigrate prints, in one run, registry -> S3 migration throughput
// against `crane copy` registry -> registry for the same ~300 MB, six-layer
// image, and the migrator's peak RSS for a 2 GiB single-layer image
// (S3SNAP_BENCH_BIG_LAYER bytes).
func BenchmarkMigrate(b *testing.B) {
	e := testenv.S3(b)
	crane := testenv.Bin(b, "crane")
	src, dst := testenv.StartFSRegistry(b), testenv.StartFSRegistry(b)
	bin := s3snapBin(b)
	var layers []*prngLayer
	for i := range 6 {
		layers = append(layers, newPRNGLayer(uint64(100+i), 50<<20))
	}
	size := pushPRNGImage(b, src.Addr, "bench/app", layers)
	bigSize := int64(2 << 30)
	if v := os.Getenv("S3SNAP_BENCH_BIG_LAYER"); v != "" {
		fmt.Sscan(v, &bigSize)
	}
	pushPRNGImage(b, src.Addr, "bench/big", []*prngLayer{newPRNGLayer(7, bigSize)})

	var mig, cp time.Duration
	var rss int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, _ := runMigrate(b, bin, e, "docker://"+src.Addr+"/bench/app:v1")
		mig += d
		start := time.Now()
		testenv.Run(b, crane, "copy", "--insecure", src.Addr+"/bench/app:v1", fmt.Sprintf("%s/bench/app%d:v1", dst.Addr, i))
		cp += time.Since(start)
		_, r := runMigrate(b, bin, e, "docker://"+src.Addr+"/bench/big:v1")
		rss = max(rss, r)
	}
	b.StopTimer()
	n := time.Duration(b.N)
	b.ReportMetric(mbps(size, mig/n), "migrate-MB/s")
	b.ReportMetric(mbps(size, cp/n), "crane-copy-MB/s")
	b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MiB")
	fmt.Printf("\nmigrate registry->S3 %.0f MB image: %s (%.1f MB/s)\ncrane copy registry->registry:  %s (%.1f MB/s)  ratio %.2fx\npeak RSS migrating a %.1f GiB single-layer image: %.0f MiB\n",
		float64(size)/(1<<20), (mig / n).Round(time.Millisecond), mbps(size, mig/n), (cp / n).Round(time.Millisecond), mbps(size, cp/n),
		cp.Seconds()/mig.Seconds(), float64(bigSize)/(1<<30), float64(rss)/(1<<20))
}
