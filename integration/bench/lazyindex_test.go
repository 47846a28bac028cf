package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/migrator"
)

// BenchmarkMigrateLazyIndex: on the realistic image, `s3snap migrate
// --lazy-index` against a plain migrate followed by `s3snap index` (the
// second pass over the bucket it saves). It checks what it measures: the
// registry serves each layer once, the indexes are byte for byte the ones
// s3snap index builds, verify --lazy-index passes, and an agent pulls the
// image lazily from them and verifies every layer.
//
//	go test ./integration/bench -run '^$' -bench MigrateLazyIndex -benchtime 1x
func BenchmarkMigrateLazyIndex(b *testing.B) {
	e := testenv.S3(b)
	im := testenv.RealisticImage(b, ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH})
	reg := testenv.StartFSRegistry(b)
	testenv.PushToRegistry(b, reg.Addr, "bench/realistic", "v1", im)
	src := "docker://" + reg.Addr + "/bench/realistic:v1"
	bin := testenv.S3snapBinary(b)
	tmp := b.TempDir()
	var maxRSS int64 // KiB, of the last command
	cli := func(args ...string) time.Duration {
		b.Helper()
		cmd := exec.Command(bin, append([]string{"--endpoint", e.Endpoint}, args...)...)
		cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+e.AccessKey, "AWS_SECRET_ACCESS_KEY="+e.SecretKey, "AWS_REGION="+e.Region,
			"AWS_EC2_METADATA_DISABLED=true", "HOME="+tmp)
		start := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("s3snap %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			maxRSS = ru.Maxrss
		}
		return time.Since(start)
	}

	plain, lazyB := e.NewBucket(b), e.NewBucket(b)
	tPlain := cli("migrate", src, "s3://"+plain+"/ecr")
	rssPlain := maxRSS
	tIndex := cli("index", "s3://"+plain+"/ecr/bench/realistic:v1")
	logged := logSize(b, reg)
	report := filepath.Join(tmp, "report.json")
	tLazy := cli("migrate", "--report", report, "--lazy-index", "--lazy-index-min-size=0", src, "s3://"+lazyB+"/ecr")
	rssLazy := maxRSS
	gets := layerGETs(b, reg, logged)
	var rep migrator.Report
	if raw, err := os.ReadFile(report); err != nil || json.Unmarshal(raw, &rep) != nil {
		b.Fatalf("report: %v", err)
	}
	for _, l := range im.Layers {
		if n := gets[digest.FromBytes(l)]; n != 1 {
			b.Errorf("layer %s read %d times from the registry, want once", digest.FromBytes(l), n)
		}
		for _, o := range []string{"toc", "data"} {
			key := "ecr/s3snap/" + lazy.Key(digest.FromBytes(l), o)
			if !bytes.Equal(s3Object(b, e, plain, key), s3Object(b, e, lazyB, key)) {
				b.Errorf("layer %s: migrate --lazy-index built another %s than s3snap index", digest.FromBytes(l), o)
			}
		}
	}
	tVerify := cli("verify", "--lazy-index", src, "s3://"+lazyB+"/ecr")

	a := testenv.StartAgent(b, testenv.AgentOptions{S3: e, Registries: map[string]string{reg.Addr: "s3://" + lazyB + "/ecr"}, Extra: "[lazy]\nenabled = true\n"})
	c := testenv.StartContainerd(b, testenv.ContainerdOptions{Extra: a.ContainerdConfig(reg.Addr)})
	ref := reg.Addr + "/bench/realistic:v1"
	pull := timedPull(b, c, ref, "--hosts-dir", a.HostsDir, "--snapshotter", "s3snap")
	if out := c.Ctr(b, "run", "--rm", "--snapshotter", "s3snap", ref, "lazyindex", "/usr/local/go/bin/go", "version"); !strings.Contains(out, "go version go1.") {
		b.Fatalf("go version printed %q", out)
	}
	if n := a.Metric(b, "s3snap_snapshotter_lazy_layers_total"); int(n) != len(im.Layers) {
		b.Errorf("%v of %d layers mounted lazily", n, len(im.Layers))
	}
	start := time.Now()
	for a.Metric(b, "s3snap_lazy_verified_layers_total") < float64(len(im.Layers)) {
		if a.Metric(b, "s3snap_lazy_verify_failures_total") > 0 || time.Since(start) > 5*time.Minute {
			b.Fatalf("%v of %d layers verified", a.Metric(b, "s3snap_lazy_verified_layers_total"), len(im.Layers))
		}
		time.Sleep(100 * time.Millisecond)
	}
	verified := time.Since(start) + pull

	fmt.Printf("migrate of the realistic image (%d layers, %d MB gzip) from a local registry into the local S3; 2 shared cores: noisy\n",
		len(im.Layers), totalSize(im)>>20)
	fmt.Printf("  migrate %.1fs + s3snap index %.1fs = %.1fs;  migrate --lazy-index %.1fs (%.2fx); %d indexes, %d MB\n",
		tPlain.Seconds(), tIndex.Seconds(), (tPlain + tIndex).Seconds(), tLazy.Seconds(), (tPlain+tIndex).Seconds()/tLazy.Seconds(),
		rep.Summary.LazyIndexes, rep.Summary.LazyIndexBytes>>20)
	fmt.Printf("  peak RSS: migrate %d MiB, migrate --lazy-index %d MiB\n", rssPlain>>10, rssLazy>>10)
	fmt.Printf("  verify --lazy-index %.1fs; lazy pull %.2fs, every layer verified %.1fs after the pull began\n", tVerify.Seconds(), pull.Seconds(), verified.Seconds())
	b.ReportMetric(tLazy.Seconds(), "s-migrate-lazy-index")
	b.ReportMetric((tPlain + tIndex).Seconds(), "s-migrate+index")
}

// logSize is how much of the registry's access log is written.
func logSize(b *testing.B, reg *testenv.Registry) int {
	b.Helper()
	raw, err := os.ReadFile(reg.Log)
	if err != nil {
		b.Fatal(err)
	}
	return len(raw)
}

// layerGETs counts the blob GETs the registry served after offset bytes of
// its access log.
func layerGETs(b *testing.B, reg *testenv.Registry, offset int) map[digest.Digest]int {
	b.Helper()
	raw, err := os.ReadFile(reg.Log)
	if err != nil {
		b.Fatal(err)
	}
	re := regexp.MustCompile(`"GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64}) HTTP/1.1" 20[06] `)
	out := map[digest.Digest]int{}
	for _, m := range re.FindAllStringSubmatch(string(raw[offset:]), -1) {
		out[digest.Digest(m[1])]++
	}
	return out
}

// s3Object reads a whole object.
func s3Object(b *testing.B, e *testenv.S3Env, bucket, key string) []byte {
	b.Helper()
	out, err := e.Client(b).GetObject(context.Background(), &s3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		b.Fatalf("get %s: %v", key, err)
	}
	defer out.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(out.Body); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}
