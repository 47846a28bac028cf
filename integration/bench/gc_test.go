package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/middleware"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lifecycle"
	"github.com/s3snap/s3snap/store"
)

// BenchmarkGC is gc at scale: a generated bucket of S3SNAP_BENCH_GC_REPOS
// repositories (default 1000), each with 10 tagged images and 10 untagged
// ones, every image a manifest, a config and 3 layers of its own plus a base
// layer shared in the repository: 101k blobs, 10k tags, about 220k objects
// (small, written in parallel). It runs gc --dry-run then gc (no grace, so
// the untagged half goes) and reports time, S3 requests and peak memory.
//
//	go test ./integration/bench -run '^$' -bench GC -benchtime 1x
func BenchmarkGC(b *testing.B) {
	e := testenv.S3(b)
	repos := 1000
	if v := os.Getenv("S3SNAP_BENCH_GC_REPOS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("S3SNAP_BENCH_GC_REPOS=%q", v)
		}
		repos = n
	}
	ctx := context.Background()
	var requests atomic.Int64
	client := s3.New(e.Client(b).Options(), countRequests(&requests))
	bucket := fmt.Sprintf("s3snap-bench-gc-%d", time.Now().UnixNano())
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &bucket}); err != nil {
		b.Fatal(err)
	}
	st := store.New(client, bucket)
	b.Cleanup(func() { emptyFast(ctx, st) })

	start := time.Now()
	gen, err := generate(ctx, client, bucket, st, repos)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("generated %d repositories, %d tags, %d blobs, %d objects in %s (%d PUTs)",
		repos, gen.tags, gen.blobs, gen.objects, time.Since(start).Round(time.Millisecond), requests.Load())

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, dry := range []bool{true, false} {
			requests.Store(0)
			runtime.GC()
			peak := watchHeap()
			t0 := time.Now()
			rep, err := lifecycle.GC(ctx, st, lifecycle.WithGrace(0), lifecycle.WithDryRun(dry))
			took := time.Since(t0)
			heap := peak()
			if err != nil {
				b.Fatal(err)
			}
			n := requests.Load()
			name := "gc"
			if dry {
				name = "gc --dry-run"
			}
			b.Logf("%s: %s, %d S3 requests, peak heap %.1f MiB, VmHWM %s\n%s", name, took.Round(time.Millisecond), n,
				float64(heap)/(1<<20), vmHWM(), rep)
			if !dry {
				b.ReportMetric(took.Seconds(), "s/gc")
				b.ReportMetric(float64(n), "requests/gc")
				b.ReportMetric(float64(heap)/(1<<20), "peak-heap-MiB")
				if rep.Swept.Blobs.Objects != int64(gen.garbage) || rep.Tags != gen.tags {
					b.Errorf("swept %d blobs, want %d; %d tags, want %d", rep.Swept.Blobs.Objects, gen.garbage, rep.Tags, gen.tags)
				}
			}
		}
	}
}

var specsV2 = specs.Versioned{SchemaVersion: 2}

type generated struct{ tags, blobs, garbage, objects int }

// generate writes the benchmark's images straight in Distribution's layout
// (no existence checks: the content is new), 64 PUTs at a time.
func generate(ctx context.Context, c *s3.Client, bucket string, st *store.Store, repos int) (generated, error) {
	var g generated
	var mu sync.Mutex
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(64)
	put := func(key string, body []byte) {
		eg.Go(func() error {
			_, err := c.PutObject(ectx, &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body)))})
			return err
		})
		mu.Lock()
		g.objects++
		mu.Unlock()
	}
	blob := func(data []byte) ocispec.Descriptor {
		d := digest.FromBytes(data)
		put(st.BlobKey(d), data)
		g.blobs++
		return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: d, Size: int64(len(data))}
	}
	link := func(key string, d digest.Digest) { put(key, []byte(d.String())) }
	for r := range repos {
		name := fmt.Sprintf("team%02d/app%04d", r%50, r)
		base := blob([]byte(fmt.Sprintf("base layer of %s", name)))
		link(st.LayerLinkKey(name, base.Digest), base.Digest)
		for i := range 20 {
			layers := []ocispec.Descriptor{base}
			for l := range 3 {
				layers = append(layers, blob([]byte(fmt.Sprintf("layer %d of image %d of %s", l, i, name))))
			}
			cfg := blob([]byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"},"n":"%s/%d"}`, name, i)))
			cfg.MediaType = ocispec.MediaTypeImageConfig
			raw, err := json.Marshal(ocispec.Manifest{Versioned: specsV2, MediaType: ocispec.MediaTypeImageManifest, Config: cfg, Layers: layers})
			if err != nil {
				return g, err
			}
			m := blob(raw)
			for _, l := range append(layers[1:], cfg) {
				link(st.LayerLinkKey(name, l.Digest), l.Digest)
			}
			link(st.RevisionLinkKey(name, m.Digest), m.Digest)
			if i < 10 {
				tag := fmt.Sprintf("v%d", i)
				link(st.TagKey(name, tag)+"index/sha256/"+m.Digest.Encoded()+"/link", m.Digest)
				link(st.TagKey(name, tag)+"current/link", m.Digest)
				g.tags++
			} else {
				g.garbage += 5 // manifest, config, 3 layers
			}
		}
	}
	return g, eg.Wait()
}

// emptyFast deletes every object in the store's bucket, 1000 a request,
// and the bucket.
func emptyFast(ctx context.Context, st *store.Store) {
	var keys []string
	_ = st.Walk(ctx, "", func(o store.Object) error {
		keys = append(keys, o.Key)
		return nil
	})
	_ = st.Delete(ctx, keys)
}

// watchHeap samples the Go heap every 10 ms until the returned func is
// called, which returns the highest HeapInuse seen.
func watchHeap() func() uint64 {
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 { close(stop); <-done; return peak.Load() }
}

// vmHWM is the process's peak resident set (generation included).
func vmHWM() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// countRequests adds one to n for every request the client sends.
func countRequests(n *atomic.Int64) func(*s3.Options) {
	return func(o *s3.Options) {
		o.APIOptions = append(o.APIOptions, func(s *middleware.Stack) error {
			return s.Finalize.Add(middleware.FinalizeMiddlewareFunc("benchCountRequests",
				func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
					n.Add(1)
					return next.HandleFinalize(ctx, in)
				}), middleware.After)
		})
	}
}
