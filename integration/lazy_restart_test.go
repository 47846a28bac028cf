package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/s3snap/s3snap/doctor"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lazy/fused"
	"github.com/s3snap/s3snap/store"
)

// lazyRestartEnv is a lazy agent and containerd with one three-layer
// image pulled (ref, its files) and more images indexed in the bucket to
// pull later (extra, each one small layer besides /hello).
type lazyRestartEnv struct {
	*pullEnv
	ref   string
	files map[string][]byte
	extra []string
}

func newLazyRestartEnv(t *testing.T, version string, extra int) *lazyRestartEnv {
	t.Helper()
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	reg := testenv.StartFSRegistry(t)
	a, b, c, files := loopFiles(41)
	p := newLazyEnv(t, version, e, bucket, reg)
	r := &lazyRestartEnv{pullEnv: p, files: files}
	r.ref = p.add(t, "team/app", testenv.RunnableImage(t, a, b, c), true)
	cli := indexCLI(t, e)
	runIndex(t, cli, "s3://"+bucket+"/ecr/team/app:v1")
	for i := range extra {
		im := testenv.RunnableImage(t, []testenv.File{{Name: "data/x", Data: pseudoRandom(uint64(500+i), 2<<20)}})
		repo := fmt.Sprintf("team/pull%d", i)
		r.extra = append(r.extra, p.add(t, repo, im, true))
		runIndex(t, cli, "s3://"+bucket+"/ecr/"+repo+":v1")
	}
	p.pull(t, r.ref)
	return r
}

// extraFiles is what an extra image's /data/x holds.
func extraFiles(i int) map[string][]byte {
	return map[string][]byte{"/data/x": pseudoRandom(uint64(500+i), 2<<20)}
}

// checkNoStuck fails t if a process of the agent's (its lazy FUSE server)
// is stuck in the kernel or a zombie.
func checkNoStuck(t *testing.T, a *testenv.Agent) {
	t.Helper()
	if pid := a.FusedPID(); pid != 0 {
		if st := testenv.ProcState(pid); st == "D" || st == "Z" {
			t.Errorf("lazy FUSE server %d in state %s", pid, st)
		}
	}
	if pid := a.Pid(); !a.Exited() {
		if st := testenv.ProcState(pid); st == "D" || st == "Z" {
			t.Errorf("agent %d in state %s", pid, st)
		}
	}
}

// checkServed waits until the running server serves a mount for every
// mount record and every lazy mount under the root is one it serves:
// none a dead process left behind, none missing.
func checkServed(t *testing.T, a *testenv.Agent) {
	t.Helper()
	records := filepath.Join(a.Root, "lazy", "mounts")
	deadline := time.Now().Add(20 * time.Second)
	for {
		problem := ""
		states, err := fused.NewClient(a.Root).List(context.Background())
		served := map[string]bool{}
		for _, st := range states {
			if st.Mounted {
				served[st.Dir] = true
			}
		}
		switch n := countFiles(t, records); {
		case err != nil:
			problem = fmt.Sprintf("list the lazy FUSE server's mounts: %v", err)
		case len(served) != n:
			problem = fmt.Sprintf("the server serves %d mounts, the agent records %d", len(served), n)
		}
		for _, m := range testenv.LazyMountPoints(a.Root) {
			if !served[m] {
				problem = fmt.Sprintf("lazy mount %s is not served by the running server", m)
			}
		}
		if problem == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(problem)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAgentLazySoak is issue 12's soak: a container reads and hashes
// files of three lazily mounted layers in a loop while the agent is
// restarted ten times (SIGTERM, then start; once onto a rebuilt binary of
// another version) and SIGKILLed five times, the kills landing while
// another image is being pulled lazily. Not one read fails, not one hash
// is wrong, every restart is back within seconds, every image pulled
// after a kill runs intact, and once the images are removed no lazy
// mount is left.
func TestAgentLazySoak(t *testing.T) {
	start := time.Now()
	r := newLazyRestartEnv(t, testenv.Containerd2, 5)
	upgraded := testenv.S3snapBinaryVersion(t, "soak-upgrade")
	loop := startLoop(t, r.pullEnv, r.ref, "soak", r.files)
	reads := loop.progress(t, 0, "before any restart")

	// R: SIGTERM and start; U: the same onto the rebuilt binary; K: SIGKILL
	// during a lazy pull, then start.
	const plan = "RRKRRKRURKRRKRK"
	var stops, starts []time.Duration
	kill, duringPull := 0, 0
	records := filepath.Join(r.agent.Root, "lazy", "mounts")
	for i, ev := range plan {
		what := fmt.Sprintf("event %d (%c)", i+1, ev)
		switch ev {
		case 'R', 'U':
			t0 := time.Now()
			r.agent.Stop()
			stops = append(stops, time.Since(t0))
			t1 := time.Now()
			if ev == 'U' {
				r.agent.Upgrade(t, upgraded)
			} else {
				r.agent.StartAgain(t)
			}
			starts = append(starts, time.Since(t1))
		case 'K':
			ref := r.extra[kill]
			before := countFiles(t, records)
			pulled := make(chan error, 1)
			go func() {
				_, err := r.ctrd.CtrErr(t, "images", "pull", "--hosts-dir", r.agent.HostsDir, "--snapshotter", "s3snap", ref)
				pulled <- err
			}()
			// Land inside the pull: once a lazy layer of it is being
			// provided (its mount record written), a little later each time.
			deadline := time.Now().Add(30 * time.Second)
			for countFiles(t, records) <= before && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			time.Sleep(time.Duration(kill*3) * time.Millisecond)
			select {
			case err := <-pulled:
				t.Logf("%s: the pull of %s was over before the kill (%v)", what, ref, err)
				pulled <- err
			default:
				duringPull++
			}
			r.agent.KillWithin(t, 10*time.Second)
			<-pulled
			checkNoStuck(t, r.agent)
			t1 := time.Now()
			r.agent.StartAgain(t)
			starts = append(starts, time.Since(t1))
			r.waitSnapshotter(t)
			r.ctrPull(t, ref)
			r.run(t, ref, fmt.Sprintf("pulled-%d", kill), extraFiles(kill))
			kill++
		}
		r.waitSnapshotter(t)
		reads = loop.progress(t, reads, what)
		checkNoStuck(t, r.agent)
		checkServed(t, r.agent)
	}
	if strings.Count(plan, "R")+strings.Count(plan, "U") != 10 || kill != 5 {
		t.Fatalf("plan %s: want 10 restarts and 5 kills", plan)
	}
	if duringPull < 3 {
		t.Errorf("only %d of 5 kills landed during a lazy pull", duringPull)
	}
	total, failed, bad := loop.stop(t)
	if failed != 0 || bad != 0 || total == 0 {
		t.Errorf("the container read %d times: %d failed, %d wrong hashes", total, failed, bad)
	}
	for _, d := range starts {
		if d > 10*time.Second {
			t.Errorf("an agent start took %s", d)
		}
	}
	for _, d := range stops {
		if d > 5*time.Second {
			t.Errorf("an agent stop (SIGTERM) took %s", d)
		}
	}
	t.Logf("soak on kernel %s: %d reads by the container, 0 failed; 10 restarts (stop %s, start %s) and 5 kills, %d during a lazy pull (start %s) in %s",
		kernel(t), total, span(stops), span(starts[:len(stops)]), duringPull, span(starts[len(stops):]), time.Since(start).Round(time.Second))

	r.rmi(t, r.ref)
	for _, ref := range r.extra {
		r.rmi(t, ref)
	}
	if m := testenv.LazyMountPoints(r.agent.Root); len(m) != 0 {
		t.Errorf("lazy mounts left after every image was removed: %v", m)
	}

	// The upgraded agent kept the old server while it held mounts; idle
	// now, it is replaced by the agent's own version at the next start.
	old := r.agent.FusedPID()
	r.agent.Restart(t)
	info, err := fused.NewClient(r.agent.Root).Info(context.Background())
	if err != nil || info.Version != "soak-upgrade" || info.PID == old {
		t.Errorf("after the upgrade and with no mount left, the server is %+v (%v); want a new one of version soak-upgrade (old pid %d)", info, err, old)
	}
}

// TestAgentLazySIGTERMWithRunningContainer: with a container reading its
// lazily mounted files, SIGTERM stops the agent within seconds, the
// container keeps reading while the agent is down and after it is back,
// every byte right. Then the lazy FUSE server itself is killed: the
// running container's reads fail, the agent mounts the layers again with
// a new server within seconds, and a new container runs intact. On every
// containerd version.
func TestAgentLazySIGTERMWithRunningContainer(t *testing.T) {
	for _, v := range testenv.ContainerdVersions() {
		t.Run("containerd-"+v, func(t *testing.T) {
			r := newLazyRestartEnv(t, v, 0)
			loop := startLoop(t, r.pullEnv, r.ref, "sigterm", r.files)
			reads := loop.progress(t, 0, "before SIGTERM")
			t0 := time.Now()
			r.agent.Stop()
			took := time.Since(t0)
			if took > 5*time.Second {
				t.Errorf("SIGTERM stopped the agent in %s, want a few seconds at most", took)
			}
			reads = loop.progress(t, reads, "agent stopped")
			time.Sleep(time.Second)
			reads = loop.progress(t, reads, "agent stopped for a second")
			r.agent.StartAgain(t)
			reads = loop.progress(t, reads, "agent back")
			t.Logf("containerd %s: SIGTERM stopped the agent in %s with a container reading; %d reads, none failed", v, took.Round(time.Millisecond), reads)

			// The reads do go through the server: when it dies, the running
			// container's reads fail (ENOTCONN); the agent starts another
			// and mounts the layers again, and new containers run intact.
			r.agent.KillFused(t)
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(loop.output(t), "FAIL ") {
				if time.Now().After(deadline) {
					t.Fatalf("the container's reads did not fail with the lazy FUSE server dead:\n%s", tailLines(loop.output(t), 10))
				}
				time.Sleep(100 * time.Millisecond)
			}
			if out := loop.output(t); !strings.Contains(out, "transport endpoint is not connected") {
				t.Errorf("reads of a dead server's mount do not fail with ENOTCONN:\n%s", tailLines(out, 10))
			}
			// Its /hello, mapped from the dead mount, may die of SIGBUS
			// (README), the container going with it: only one still
			// running is stopped and its hashes checked.
			if _, err := ctrErrNS(r.pullEnv, "tasks", "kill", "-s", "SIGTERM", loop.id); err == nil {
				select {
				case <-loop.done:
				case <-time.After(30 * time.Second):
					t.Fatalf("the loop container did not stop:\n%s", tailLines(loop.output(t), 20))
				}
				if _, _, bad := loop.counts(t); bad != 0 {
					t.Errorf("%d wrong hashes", bad)
				}
			} else {
				select {
				case <-loop.done:
				case <-time.After(30 * time.Second):
					t.Fatalf("the loop container can be neither stopped nor found gone: %v", err)
				}
			}
			checkServed(t, r.agent)
			r.run(t, r.ref, "after-server-death", r.files)
		})
	}
}

// TestAgentLazyKillDuringMount: SIGKILL lands on the agent, then on the
// lazy FUSE server, while a lazy layer is being mounted (its mount record
// just written). Neither process is left in the kernel (state D) or as a
// zombie, the next agent starts, every lazy mount is served by the live
// server, and the image is pulled again and runs intact.
func TestAgentLazyKillDuringMount(t *testing.T) {
	r := newLazyRestartEnv(t, testenv.Containerd2, 2)
	records := filepath.Join(r.agent.Root, "lazy", "mounts")
	for i, victim := range []string{"agent", "lazy FUSE server"} {
		ref := r.extra[i]
		before := countFiles(t, records)
		pulled := make(chan error, 1)
		go func() {
			_, err := r.ctrd.CtrErr(t, "images", "pull", "--hosts-dir", r.agent.HostsDir, "--snapshotter", "s3snap", ref)
			pulled <- err
		}()
		deadline := time.Now().Add(30 * time.Second)
		for countFiles(t, records) <= before {
			if time.Now().After(deadline) {
				t.Fatalf("no lazy layer of %s was being mounted within 30s", ref)
			}
			runtime.Gosched()
		}
		fusedPID := r.agent.FusedPID()
		if victim == "agent" {
			r.agent.KillWithin(t, 10*time.Second)
		} else {
			r.agent.KillFused(t) // fails unless it is gone within 10s
		}
		<-pulled
		if st := testenv.ProcState(fusedPID); victim != "agent" && st != "" {
			t.Errorf("killed lazy FUSE server %d still there, state %s", fusedPID, st)
		}
		checkNoStuck(t, r.agent)
		if victim == "agent" {
			r.agent.StartAgain(t)
		}
		r.waitSnapshotter(t)
		// With the server gone, the agent starts another and mounts every
		// layer again.
		checkServed(t, r.agent)
		r.ctrPull(t, ref)
		r.run(t, ref, fmt.Sprintf("after-kill-%d", i), extraFiles(i))
		r.run(t, r.ref, fmt.Sprintf("first-after-kill-%d", i), r.files)
		checkServed(t, r.agent)
	}
}

// TestAgentLazyExternalServer: with [lazy] server = "external" the lazy
// FUSE server is run apart (as a second container of a DaemonSet's pod,
// which an agent container's restart does not kill): the agent never
// starts one, mounts through the one running, and re-adopts its mounts
// after a SIGKILL. Without a server, layers are unpacked instead, and a
// lazy layer whose server went away is never shown until a server runs
// again and the agent has mounted it.
func TestAgentLazyExternalServer(t *testing.T) {
	e := testenv.S3(t)
	bucket := e.NewBucket(t)
	reg := testenv.StartFSRegistry(t)
	a, b, c, files := loopFiles(43)
	p := &pullEnv{e: e, bucket: bucket, reg: reg, upstream: reg.Addr}
	p.st = store.New(e.Client(t), bucket, store.WithPrefix("ecr"))
	p.agent = testenv.StartAgent(t, testenv.AgentOptions{
		S3:         e,
		Registries: map[string]string{p.upstream: "s3://" + bucket + "/ecr"},
		Extra:      "[lazy]\nenabled = true\nserver = \"external\"\n",
	})
	p.startContainerd(t, testenv.Containerd2, false)
	if pid := p.agent.FusedPID(); pid != 0 {
		t.Fatalf("the agent started a lazy FUSE server (%d) though it is external", pid)
	}
	ref := p.add(t, "team/app", testenv.RunnableImage(t, a, b, c), true)
	runIndex(t, indexCLI(t, e), "s3://"+bucket+"/ecr/team/app:v1")

	srv := p.agent.StartFused(t)
	p.pull(t, ref)
	if m := testenv.LazyMountPoints(p.agent.Root); len(m) != 4 {
		t.Fatalf("lazy mounts %v, want 4", m)
	}
	p.agent.KillWithin(t, 10*time.Second)
	p.agent.StartAgain(t)
	p.waitSnapshotter(t)
	if n := p.agent.Metric(t, "s3snap_snapshotter_lazy_layers_total"); n != 0 {
		t.Errorf("after the agent's SIGKILL %v layers were mounted anew, want 0 (re-adopted)", n)
	}
	p.run(t, ref, "adopted", files)
	if c := lazyServerCheck(t, p.agent); c.Status != doctor.OK || !strings.Contains(c.Detail, "4 lazy mounts") {
		t.Errorf("doctor with the server running: %+v", c)
	}

	// The server goes (its container restarted): nothing is shown until
	// one runs again and the agent has mounted the layers.
	srv.Stop()
	if c := lazyServerCheck(t, p.agent); c.Status != doctor.Fail || !strings.Contains(c.Detail, "4 lazy layers recorded but no server answers") {
		t.Errorf("doctor with no server: %+v", c)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := p.ctrd.CtrErr(t, "run", "--rm", "--snapshotter", "s3snap", ref, "gone-"+p.ctrd.Namespace, "/hello")
		if err != nil && strings.Contains(out, "lazy layer not mounted") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with no lazy FUSE server the image still ran, or failed otherwise: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	p.agent.StartFused(t)
	checkServed(t, p.agent)
	p.run(t, ref, "served-again", files)
}

// lazyServerCheck is s3snap doctor's check of the agent's lazy FUSE
// server (the other checks do not matter here).
func lazyServerCheck(t *testing.T, a *testenv.Agent) doctor.Check {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, testenv.S3snapBinary(t), "doctor", "-o", "json", "--config", a.ConfigPath,
		"--containerd-config", filepath.Join(t.TempDir(), "none.toml"), "--containerd-address", filepath.Join(t.TempDir(), "none.sock"), "--timeout", "2s").Output()
	var rep doctor.Report
	if jerr := json.Unmarshal(out, &rep); jerr != nil {
		t.Fatalf("doctor -o json (%v): %v\n%s", err, jerr, out)
	}
	return find(rep, "lazy FUSE server")
}

func countFiles(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(entries)
}

func kernel(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// span is "min..max" of ds.
func span(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	lo, hi := ds[0], ds[0]
	for _, d := range ds {
		lo, hi = min(lo, d), max(hi, d)
	}
	return lo.Round(time.Millisecond).String() + ".." + hi.Round(time.Millisecond).String()
}
