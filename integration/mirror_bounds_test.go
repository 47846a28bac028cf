package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/integration/faultproxy"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
)

// startAgentConfig runs an agent on S3 server e from a config file made of
// its own root, socket and addresses, the [s3] table for e, mirrorTable
// (the [mirror] table's keys other than address) and rest (more tables).
func startAgentConfig(t *testing.T, e *testenv.S3Env, mirrorTable, rest string) *testenv.Agent {
	t.Helper()
	dir, err := os.MkdirTemp("", "agentcfg-") // short: socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testenv.RemoveAll(dir) })
	cfg := fmt.Sprintf("root = %q\nsocket = %q\n\n[mirror]\naddress = %q\n%s\n[metrics]\naddress = %q\n\n[s3]\nregion = %q\nendpoint = %q\npath_style = true\n\n%s\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "run", "s3snap.sock"), testenv.FreeAddr(t), mirrorTable,
		testenv.FreeAddr(t), e.Region, e.Endpoint, rest)
	path := filepath.Join(dir, "config.toml")
	writeFile(t, path, []byte(cfg))
	return testenv.StartAgent(t, testenv.AgentOptions{S3: e, ConfigPath: path})
}

// isBlobData reports whether an S3 request path is a blob's data object.
func isBlobData(path string) bool {
	return strings.Contains(path, "/docker/registry/v2/blobs/sha256/") && strings.HasSuffix(path, "/data")
}

// blobDataGETs counts the GETs of blob data the proxy saw, by blob digest
// (hex).
func blobDataGETs(p *faultproxy.Proxy) map[string]int {
	n := map[string]int{}
	for _, r := range p.Requests() {
		if r.Method == http.MethodGet && isBlobData(r.Path) {
			n[filepath.Base(filepath.Dir(r.Path))]++
		}
	}
	return n
}

// dirBytes is the size of the files directly in dir.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}

// TestAgentMirrorBounds runs the agent with a 4 MiB mirror spool and two
// blob fetches at a time, its S3 traffic through a fault proxy, and asks
// its mirror for blobs over HTTP as containerd would:
//   - eight 1 MiB blobs are each served whole, and the spool directory
//     never holds more than 4 MiB;
//   - a 5 MiB blob gets a 503 (containerd then goes to the registry)
//     without a byte of it read from S3, counted and logged as refused;
//   - a client that leaves in the middle of a 4 MiB fetch stops its S3
//     reads;
//   - five clients asking for five blobs at once get them, read from S3
//     two at a time.
func TestAgentMirrorBounds(t *testing.T) {
	e := testenv.S3(t)
	ctx := context.Background()
	bucket := e.NewBucket(t)
	st := store.New(e.Client(t), bucket, store.WithPrefix("bounds"))
	put := func(size int) []byte {
		b := make([]byte, size)
		_, _ = rand.Read(b)
		if _, err := st.PutBlob(ctx, digest.FromBytes(b), int64(size), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		return b
	}
	var small [][]byte
	for range 8 {
		small = append(small, put(1<<20))
	}
	tooLarge, slow := put(5<<20), put(4<<20)
	var many [][]byte
	for range 5 {
		many = append(many, put(64<<10))
	}

	proxy, err := faultproxy.New(e.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	viaProxy := *e
	viaProxy.Endpoint = proxy.URL()
	const upstreamHost = "registry.bounds.test"
	const limit = 4 << 20
	a := startAgentConfig(t, &viaProxy, "spool_max_bytes = \"4MiB\"\nmax_concurrent_fetches = 2\n",
		fmt.Sprintf("[fetch]\npart_size = \"256KiB\"\nconcurrency = 2\n\n[[registry]]\nhost = %q\nstore = %q\n", upstreamHost, st.URL()))
	spoolDir := filepath.Join(a.Root, "mirror-spool")
	get := func(ctx context.Context, b []byte) (int, []byte, error) {
		u := "http://" + a.MirrorAddr + "/v2/team/app/blobs/" + digest.FromBytes(b).String() + "?ns=" + upstreamHost
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return resp.StatusCode, body, err
	}

	t.Run("spool stays under its limit", func(t *testing.T) {
		for i, b := range small {
			code, body, err := get(ctx, b)
			if err != nil || code != http.StatusOK || !bytes.Equal(body, b) {
				t.Fatalf("blob %d: %d, %d bytes, %v", i, code, len(body), err)
			}
			n := dirBytes(t, spoolDir)
			t.Logf("after blob %d the spool holds %d bytes", i, n)
			if n > limit {
				t.Errorf("after blob %d the spool holds %d bytes, limit %d", i, n, limit)
			}
		}
		if n := a.Metric(t, "s3snap_mirror_spool_bytes"); n > limit || n < 1<<20 {
			t.Errorf("s3snap_mirror_spool_bytes = %v, want 1 MiB to %d", n, limit)
		}
		if n := a.Metric(t, "s3snap_mirror_spool_evictions_total"); n < 4 {
			t.Errorf("spool evictions = %v, want at least 4 (8 MiB through a 4 MiB spool)", n)
		}
	})

	t.Run("blob larger than the spool is refused unread", func(t *testing.T) {
		code, _, err := get(ctx, tooLarge)
		if err != nil || code != http.StatusServiceUnavailable {
			t.Fatalf("blob larger than the spool: %d, %v; want 503", code, err)
		}
		if n := blobDataGETs(proxy)[digest.FromBytes(tooLarge).Encoded()]; n != 0 {
			t.Errorf("%d S3 GETs of the refused blob's data, want 0", n)
		}
		if n := a.Metric(t, "s3snap_mirror_refusals_total", "reason=too_large"); n != 1 {
			t.Errorf("refusals{too_large} = %v, want 1", n)
		}
		if log, _ := os.ReadFile(a.Log); !bytes.Contains(log, []byte("blob refused (spool limit)")) {
			t.Error("the agent logged no refusal")
		}
	})

	t.Run("a client that leaves stops the S3 reads", func(t *testing.T) {
		// 16 parts of 256 KiB, two at a time, 400ms each: about 3.2s.
		stall := proxy.Add(faultproxy.Rule{Method: http.MethodGet, Fault: faultproxy.Stall, Delay: 400 * time.Millisecond,
			Match: func(r *http.Request) bool {
				return strings.Contains(r.URL.Path, digest.FromBytes(slow).Encoded()+"/data")
			}})
		cctx, cancel := context.WithTimeout(ctx, 600*time.Millisecond)
		defer cancel()
		if _, _, err := get(cctx, slow); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("client with a 600ms deadline: %v", err)
		}
		time.Sleep(time.Second) // the parts already asked for end
		n := stall.Matched()
		time.Sleep(3 * time.Second)
		t.Logf("S3 GETs of the 16-part blob: %d a second after its client left, %d three seconds later", n, stall.Matched())
		if m := stall.Matched(); m != n || n > 8 {
			t.Errorf("S3 GETs of the blob: %d a second after its client left, %d three seconds later; want a few of 16, then none", n, m)
		}
		if n := a.Metric(t, "s3snap_mirror_fetches_cancelled_total"); n != 1 {
			t.Errorf("fetches cancelled = %v, want 1", n)
		}
		if entries, _ := os.ReadDir(spoolDir); slicesContainsPrefix(entries, ".fetch-") {
			t.Errorf("the cancelled fetch left a partial file in %s", spoolDir)
		}
	})

	t.Run("concurrent fetches are capped", func(t *testing.T) {
		proxy.Add(faultproxy.Rule{Method: http.MethodGet, Fault: faultproxy.Stall, Delay: time.Second,
			Match: func(r *http.Request) bool {
				for _, b := range many {
					if strings.Contains(r.URL.Path, digest.FromBytes(b).Encoded()+"/data") {
						return true
					}
				}
				return false
			}})
		reading := func() int {
			n := 0
			gets := blobDataGETs(proxy)
			for _, b := range many {
				if gets[digest.FromBytes(b).Encoded()] > 0 {
					n++
				}
			}
			return n
		}
		waitsBefore := a.Metric(t, "s3snap_mirror_fetch_waits_total")
		var wg sync.WaitGroup
		ok := make([]bool, len(many))
		for i, b := range many {
			wg.Go(func() {
				code, body, err := get(ctx, b)
				ok[i] = err == nil && code == http.StatusOK && bytes.Equal(body, b)
			})
		}
		time.Sleep(600 * time.Millisecond)
		t.Logf("blobs being read from S3 600ms after 5 clients asked: %d", reading())
		if n := reading(); n != 2 {
			t.Errorf("blobs being read from S3 at once: %d, want 2 (max_concurrent_fetches)", n)
		}
		wg.Wait()
		for i := range many {
			if !ok[i] {
				t.Errorf("blob %d was not served whole", i)
			}
		}
		if n := a.Metric(t, "s3snap_mirror_fetch_waits_total") - waitsBefore; n != 3 {
			t.Errorf("fetches that waited for a slot: %v, want 3", n)
		}
	})
}

func slicesContainsPrefix(entries []os.DirEntry, prefix string) bool {
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			return true
		}
	}
	return false
}
