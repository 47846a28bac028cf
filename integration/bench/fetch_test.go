// Package bench measures s3snap against the obvious alternatives, in one
// interleaved run against the local S3 server (integration/env.sh up).
// Absolute figures are noisy on a shared machine; compare the ratios.
//
//	go test ./integration/bench -run '^$' -bench Fetch -benchtime 3x
package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/fetcher"
	"github.com/s3snap/s3snap/integration/testenv"
)

// benchObject is the object every benchmark reads, uploaded once per run.
type benchObject struct {
	client *s3.Client // reads: through the shaper when one is configured
	direct *s3.Client // setup and cleanup
	shape  string     // how reads reach the server, for the summary
	bucket string
	key    string
	size   int64
	digest digest.Digest
}

var (
	objOnce sync.Once
	obj     *benchObject
	objErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if obj != nil {
		ctx := context.Background()
		testenv.EmptyBucket(ctx, obj.direct, obj.bucket)
		_, _ = obj.direct.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: &obj.bucket})
	}
	os.Exit(code)
}

// object returns the benchmark object: S3SNAP_BENCH_SIZE bytes (default
// 1 GiB) of pseudo-random data, read through a client built by
// fetcher.NewClient, the one the agent uses.
//
// With S3SNAP_BENCH_CONN_MBPS (MB/s per connection) and S3SNAP_BENCH_TTFB (a
// duration) reads go through a shaper that models S3 over a network.
func object(b *testing.B) *benchObject {
	b.Helper()
	e := testenv.S3(b)
	objOnce.Do(func() { obj, objErr = upload(b, e) })
	if objErr != nil {
		b.Fatal(objErr)
	}
	return obj
}

func upload(b *testing.B, e *testenv.S3Env) (*benchObject, error) {
	size := int64(1 << 30)
	if v := os.Getenv("S3SNAP_BENCH_SIZE"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("S3SNAP_BENCH_SIZE: %w", err)
		}
		size = n
	}
	// The default credential chain reads these: the static test keys.
	b.Setenv("AWS_ACCESS_KEY_ID", e.AccessKey)
	b.Setenv("AWS_SECRET_ACCESS_KEY", e.SecretKey)
	b.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ctx := context.Background()
	c, err := fetcher.NewClient(ctx, fetcher.ClientConfig{Region: e.Region, Endpoint: e.Endpoint, PathStyle: true})
	if err != nil {
		return nil, err
	}
	o := &benchObject{client: c, direct: c, shape: "loopback", bucket: fmt.Sprintf("bench-fetch-%d", time.Now().UnixNano()), key: "blob", size: size}
	if v := os.Getenv("S3SNAP_BENCH_CONN_MBPS"); v != "" {
		mbps, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("S3SNAP_BENCH_CONN_MBPS: %w", err)
		}
		ttfb, err := time.ParseDuration(os.Getenv("S3SNAP_BENCH_TTFB"))
		if err != nil {
			return nil, fmt.Errorf("S3SNAP_BENCH_TTFB: %w", err)
		}
		sh, err := newShaper(strings.TrimPrefix(e.Endpoint, "http://"), mbps*1e6, ttfb)
		if err != nil {
			return nil, err
		}
		// Lives for the whole run; the process exit closes it.
		o.client, err = fetcher.NewClient(ctx, fetcher.ClientConfig{Region: e.Region, Endpoint: sh.URL(), PathStyle: true})
		if err != nil {
			return nil, err
		}
		o.shape = fmt.Sprintf("shaped %.0f MB/s per connection, %v to first byte", mbps, ttfb)
	}
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &o.bucket}); err != nil {
		return nil, fmt.Errorf("create bucket: %w", err)
	}
	data := make([]byte, size)
	_, _ = rand.NewChaCha8([32]byte{1}).Read(data)
	o.digest = digest.FromBytes(data)
	start := time.Now()
	if _, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &o.bucket, Key: &o.key, Body: bytes.NewReader(data)}); err != nil {
		return o, fmt.Errorf("upload: %w", err)
	}
	b.Logf("uploaded %d MiB in %v", size>>20, time.Since(start).Round(time.Millisecond))
	return o, nil
}

// discardAt is a WriterAt that keeps nothing, so the manager is measured
// without the cost of a 1 GiB buffer.
type discardAt struct{}

func (discardAt) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }

type method struct {
	name string
	run  func(ctx context.Context, o *benchObject) (int64, error)
}

// fetcherMethod reads with one Fetcher shared by all rounds, as the agent
// shares one, so part buffers are reused; verify adds the sha256 check.
func fetcherMethod(o *benchObject, name string, verify bool, opts ...fetcher.Option) method {
	f := fetcher.New(o.client, opts...)
	return method{name, func(ctx context.Context, o *benchObject) (int64, error) {
		obj := fetcher.Object{Bucket: o.bucket, Key: o.key, Size: o.size}
		if verify {
			obj.Digest = o.digest
		}
		r, err := f.Reader(ctx, obj)
		if err != nil {
			return 0, err
		}
		defer r.Close()
		return io.Copy(io.Discard, r)
	}}
}

var plainGet = method{"plain", func(ctx context.Context, o *benchObject) (int64, error) {
	out, err := o.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &o.bucket, Key: &o.key})
	if err != nil {
		return 0, err
	}
	defer out.Body.Close()
	return io.Copy(io.Discard, out.Body)
}}

// managerMethod downloads with the SDK's manager; zero part size and
// concurrency keep its defaults.
func managerMethod(name string, partSize int64, concurrency int) method {
	return method{name, func(ctx context.Context, o *benchObject) (int64, error) {
		//lint:ignore SA1019 manager is the SDK's long-standing downloader, the baseline asked for.
		d := manager.NewDownloader(o.client, func(d *manager.Downloader) {
			d.PartSize = partSize
			d.Concurrency = concurrency
		})
		//lint:ignore SA1019 see above.
		return d.Download(ctx, discardAt{}, &s3.GetObjectInput{Bucket: &o.bucket, Key: &o.key})
	}}
}

// runInterleaved runs every method once per round, rotating the order so
// none always goes first (cold) or last, and returns each method's median
// MB/s over the rounds.
func runInterleaved(b *testing.B, o *benchObject, methods []method) map[string]float64 {
	ctx := context.Background()
	rates := make(map[string][]float64)
	b.SetBytes(o.size * int64(len(methods)))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		for j := range methods {
			m := methods[(i+j)%len(methods)]
			start := time.Now()
			n, err := m.run(ctx, o)
			d := time.Since(start)
			if err != nil {
				b.Fatalf("%s: %v", m.name, err)
			}
			if n != o.size {
				b.Fatalf("%s: read %d bytes, want %d", m.name, n, o.size)
			}
			rates[m.name] = append(rates[m.name], float64(n)/1e6/d.Seconds())
		}
	}
	b.StopTimer()
	med := make(map[string]float64)
	for name, r := range rates {
		slices.Sort(r)
		med[name] = r[len(r)/2]
	}
	return med
}

// BenchmarkFetch compares, on one object in one run, the fetcher's ordered
// Reader with one plain streaming GetObject and with the SDK's manager
// Downloader, with its defaults (5 MiB parts, 5 at a time) and with the
// fetcher's part size and concurrency (which needs no ordered output).
func BenchmarkFetch(b *testing.B) {
	o := object(b)
	med := runInterleaved(b, o, []method{
		fetcherMethod(o, "fetcher", false),
		fetcherMethod(o, "fetcher+sha256", true),
		plainGet,
		managerMethod("manager", 0, 0),
		managerMethod("manager-same", fetcher.DefaultPartSize, fetcher.DefaultConcurrency),
	})
	for _, name := range []string{"fetcher", "plain", "manager"} {
		b.ReportMetric(med[name], name+"-MB/s")
	}
	b.ReportMetric(med["fetcher"]/med["plain"], "fetcher/plain")
	b.ReportMetric(med["fetcher"]/med["manager"], "fetcher/manager")
	b.ReportMetric(med["fetcher"]/med["manager-same"], "fetcher/manager-same")
	summary := fmt.Sprintf("fetch %d MiB (%s): fetcher %.0f MB/s, fetcher+sha256 %.0f MB/s, plain GetObject %.0f MB/s, "+
		"manager %.0f MB/s, manager at 8MiBx16 %.0f MB/s; fetcher/plain %.2fx, fetcher/manager %.2fx, fetcher/manager-same %.2fx",
		o.size>>20, o.shape, med["fetcher"], med["fetcher+sha256"], med["plain"], med["manager"], med["manager-same"],
		med["fetcher"]/med["plain"], med["fetcher"]/med["manager"], med["fetcher"]/med["manager-same"])
	b.Log(summary)
	fmt.Println(summary)
}

// BenchmarkFetcherTuning reads the object with several part sizes and
// concurrencies, interleaved, to choose the defaults.
func BenchmarkFetcherTuning(b *testing.B) {
	o := object(b)
	var methods []method
	add := func(part int64, conc int) {
		methods = append(methods, fetcherMethod(o, fmt.Sprintf("part=%dMiB,conc=%d", part>>20, conc), false,
			fetcher.WithPartSize(part), fetcher.WithConcurrency(conc)))
	}
	for _, part := range []int64{4 << 20, 8 << 20, 16 << 20} {
		for _, conc := range []int{4, 8, 16, 32} {
			add(part, conc)
		}
	}
	add(2<<20, 16)
	add(32<<20, 16)
	med := runInterleaved(b, o, methods)
	for _, m := range methods {
		b.ReportMetric(med[m.name], m.name+"-MB/s")
		fmt.Printf("tuning (%s) %-22s %6.0f MB/s\n", o.shape, m.name, med[m.name])
	}
}
