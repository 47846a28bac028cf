package integration

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/s3snap/s3snap/integration/testenv"
)

// sixLayers is a runnable image of six layers (/hello and five data files),
// seeded so two calls give two images that share nothing but /hello.
func sixLayers(t *testing.T, seed uint64) (*testenv.Image, map[string][]byte) {
	files := map[string][]byte{}
	var layers [][]testenv.File
	for i := range 5 {
		name := fmt.Sprintf("data/%d", i)
		files["/"+name] = pseudoRandom(seed*100+uint64(i), 256<<10)
		layers = append(layers, []testenv.File{{Name: name, Data: files["/"+name]}})
	}
	return testenv.RunnableImage(t, layers...), files
}

// agentPID finds the agent process by its config file on its command line.
func agentPID(t *testing.T, a *testenv.Agent) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 1 && args[1] == "agent" && bytes.Contains(b, []byte(a.ConfigPath)) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	t.Fatalf("no agent process runs with config %s", a.ConfigPath)
	return 0
}

// TestAgentS3Down: with S3 stopped, a pull of an image the bucket holds
// falls back to the registry about as fast as a pull of an image the bucket
// does not hold, instead of waiting out retries layer after layer: the
// store's circuit breaker opens on the first failures and the rest fail at
// once. Once S3 is back and the breaker's cooldown is over, images are
// pulled from S3 again, by the same agent process.
func TestAgentS3Down(t *testing.T) {
	p := newPullEnv(t, false)
	pid := agentPID(t, p.agent)
	storeURL := "s3://" + p.bucket + "/ecr"

	// The reference: the same kind of pull, S3 up, image not in the bucket.
	plainIm, _ := sixLayers(t, 1)
	plainRef := p.add(t, "down/plain", plainIm, false)
	start := time.Now()
	p.pull(t, plainRef)
	plain := time.Since(start)

	im, files := sixLayers(t, 2)
	ref := p.add(t, "down/app", im, true)
	providedBefore := p.provided(t)
	fallbacksBefore := p.agent.Metric(t, "s3snap_snapshotter_fallbacks_total")

	if err := p.proxy.Down(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	p.pull(t, ref)
	down := time.Since(start)
	t.Logf("pull of %d layers: S3 down %v, image not in the bucket (S3 up) %v", len(im.Layers), down.Round(time.Millisecond), plain.Round(time.Millisecond))
	// Generous for a loaded 2-core box; waiting out retries per layer
	// took 9-23 s.
	if limit := plain + 3*time.Second; down > limit {
		t.Errorf("with S3 down the pull took %v, want under %v", down, limit)
	}
	if n := p.provided(t); n != providedBefore {
		t.Errorf("with S3 down the snapshotter provided %v layers from S3", n-providedBefore)
	}
	if n := p.agent.Metric(t, "s3snap_snapshotter_fallbacks_total") - fallbacksBefore; n < 1 {
		t.Errorf("with S3 down no fallback was recorded")
	}
	if n := registryRequests(t, p.reg, "/v2/down/app/blobs/"); n < len(im.Layers)-1 {
		t.Errorf("with S3 down containerd downloaded %d blobs from the registry, want the %d layers at least", n, len(im.Layers)-1)
	}
	if n := p.agent.Metric(t, "s3snap_store_breaker_open", "store="+storeURL); n != 1 {
		t.Errorf("s3snap_store_breaker_open{store=%q} = %v with S3 down, want 1", storeURL, n)
	}
	if code, _ := p.agent.Health(t); code != http.StatusServiceUnavailable {
		t.Errorf("healthz with S3 down = %d, want 503", code)
	}
	p.run(t, ref, "s3-down", files)

	// S3 back: the breaker lets a probe through once its cooldown is over
	// (healthz's listing, here), and closes.
	if err := p.proxy.Up(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(45 * time.Second)
	for {
		code, _ := p.agent.Health(t)
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz still %d with S3 back, %v after the pull began", code, time.Since(start).Round(time.Second))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("S3 usable again %v after the pull began", time.Since(start).Round(time.Second))
	if n := p.agent.Metric(t, "s3snap_store_breaker_open", "store="+storeURL); n != 0 {
		t.Errorf("s3snap_store_breaker_open = %v after S3 came back, want 0", n)
	}
	again, files2 := sixLayers(t, 3)
	ref2 := p.add(t, "down/again", again, true)
	before := p.provided(t)
	p.pull(t, ref2)
	// /hello's layer, shared by every image here, is already unpacked.
	if n := p.provided(t) - before; int(n) != len(again.Layers)-1 {
		t.Errorf("after S3 came back the snapshotter provided %v layers from S3, want %d", n, len(again.Layers)-1)
	}
	if n := registryRequests(t, p.reg, "/v2/down/again/blobs/"); n != 0 {
		t.Errorf("after S3 came back containerd downloaded %d blobs from the registry, want 0", n)
	}
	p.run(t, ref2, "s3-back", files2)
	if got := agentPID(t, p.agent); got != pid {
		t.Errorf("the agent's PID changed from %d to %d", pid, got)
	}
}
