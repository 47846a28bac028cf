package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/log/logtest"

	"github.com/s3snap/s3snap/integration/testenv"
)

// The conformance test runs containerd's snapshotter suite twice, each in a
// child process of this test binary (the same test, told what to run by
// these variables): against stock overlayfs in-process, the baseline, and
// against real agents through their gRPC sockets. A child's failures
// cannot be taken back, so the parent judges: an agent failure is skipped
// only when stock overlayfs fails the same subtest on the same kernel.
const (
	conformanceModeEnv   = "S3SNAP_CONFORMANCE_MODE" // "overlay" or "agent"
	conformanceBinEnv    = "S3SNAP_CONFORMANCE_BIN"
	conformanceBucketEnv = "S3SNAP_CONFORMANCE_BUCKET"
)

func TestSnapshotterConformance(t *testing.T) {
	if mode := os.Getenv(conformanceModeEnv); mode != "" {
		runConformanceSuite(t, mode)
		return
	}
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "the overlay snapshotter needs root")
	}
	e := testenv.S3(t)
	bin := testenv.S3snapBinary(t)
	bucket := e.NewBucket(t)
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	kver := strings.TrimSpace(string(kernel))

	base := runConformanceChild(t, "overlay", bin, bucket)
	agent := runConformanceChild(t, "agent", bin, bucket)
	t.Logf("containerd snapshotter suite on kernel %s: stock overlayfs %s, agent over gRPC %s%s",
		kver, base.took.Round(time.Millisecond), agent.took.Round(time.Millisecond), agent.startupSummary())
	var table strings.Builder
	fmt.Fprintf(&table, "%-30s %-16s %s\n", "subtest", "stock overlayfs", "agent")
	for _, name := range agent.order {
		fmt.Fprintf(&table, "%-30s %-16s %s\n", name, base.verdict(name), agent.verdict(name))
	}
	t.Logf("results:\n%s", table.String())

	for _, name := range base.order {
		if _, ok := agent.action[name]; !ok {
			t.Errorf("subtest %s ran against stock overlayfs but not against the agent", name)
		}
	}
	for _, name := range agent.order {
		t.Run(name, func(t *testing.T) {
			switch agent.action[name] {
			case "pass":
			case "skip":
				t.Skipf("the suite skips it: %s", agent.reason(name))
			case "fail":
				if base.action[name] == "fail" {
					t.Skipf("stock overlayfs fails it too on kernel %s, so the failure is not the agent's.\nstock overlayfs: %s\nagent: %s",
						kver, base.reason(name), agent.reason(name))
				}
				t.Errorf("fails against the agent, while stock overlayfs on kernel %s gives %s:\n%s",
					kver, base.verdict(name), readableLog(agent.output[name]))
			default:
				t.Errorf("no result for the agent (%q):\n%s", agent.action[name], agent.output[name])
			}
		})
	}
}

// runConformanceSuite is the child's part: the suite (plus a Cleanup
// check) against one snapshotter.
func runConformanceSuite(t *testing.T, mode string) {
	var newSn testsuite.SnapshotterFunc
	switch mode {
	case "overlay":
		newSn = func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
			sn, err := overlay.NewSnapshotter(root)
			if err != nil {
				return nil, nil, err
			}
			return sn, sn.Close, nil
		}
	case "agent":
		agents := testenv.NewAgentSnapshotters(t, os.Getenv(conformanceBinEnv), testenv.AgentOptions{
			S3:         testenv.S3(t),
			Registries: map[string]string{testRegistryHost: "s3://" + os.Getenv(conformanceBucketEnv) + "/p"},
		})
		newSn = agents.New
	default:
		t.Fatalf("%s=%q: want overlay or agent", conformanceModeEnv, mode)
	}
	t.Run("Cleanup", func(t *testing.T) { checkCleanup(t, newSn) })
	// Both run as "overlayfs": the agent's snapshots are overlayfs mounts,
	// and the suite leaves out for overlayfs a directory rename the kernel
	// may refuse (without redirect_dir), as for containerd's own overlayfs.
	testsuite.SnapshotterSuite(t, "overlayfs", newSn)
}

// checkCleanup checks what containerd's garbage collector relies on after
// removing snapshots: Cleanup (snapshots.Cleaner, a gRPC call for a proxy
// snapshotter) removes snapshot directories the metadata does not know,
// such as a crash between removing a snapshot's record and its directory
// leaves, and keeps the live ones.
func checkCleanup(t *testing.T, newSn testsuite.SnapshotterFunc) {
	ctx := namespaces.WithNamespace(logtest.WithT(context.Background(), t), "testsuite")
	root := filepath.Join(t.TempDir(), "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	sn, closeSn, err := newSn(ctx, root)
	if err != nil {
		t.Fatalf("start snapshotter: %v", err)
	}
	defer func() {
		if err := closeSn(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	if _, err := sn.Prepare(ctx, "live", ""); err != nil {
		t.Fatal(err)
	}
	snapDir := filepath.Join(root, "snapshots")
	live := dirNames(t, snapDir)
	if len(live) != 1 {
		t.Fatalf("%s after one Prepare: %v, want one directory", snapDir, live)
	}
	orphan := filepath.Join(snapDir, "orphan")
	if err := os.MkdirAll(filepath.Join(orphan, "fs"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(orphan, "fs", "left-behind"), []byte("x"))

	cleaner, ok := sn.(snapshots.Cleaner)
	if !ok {
		t.Fatalf("%T does not implement snapshots.Cleaner", sn)
	}
	if err := cleaner.Cleanup(ctx); err != nil {
		t.Fatalf("Cleanup: %v", err)
	}
	if got := dirNames(t, snapDir); !slices.Equal(got, live) {
		t.Errorf("%s after Cleanup: %v, want only the live snapshot's %v", snapDir, got, live)
	}
	if _, err := sn.Stat(ctx, "live"); err != nil {
		t.Errorf("Stat of the live snapshot after Cleanup: %v", err)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// suiteResult is one child's run: each subtest's outcome and output.
type suiteResult struct {
	order   []string // subtests, in the order they ended
	action  map[string]string
	elapsed map[string]float64
	output  map[string]string
	all     string // every line, for the agent's startup times
	took    time.Duration
}

// runConformanceChild runs the suite against mode in a child process
// through test2json, which frames each subtest's output exactly even
// though the suite's subtests run in parallel.
func runConformanceChild(t *testing.T, mode, bin, bucket string) *suiteResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The child runs this test only, and of its subtests those this run
	// was asked for (-run 'TestSnapshotterConformance/Rename').
	run := "^" + t.Name() + "$"
	if f := flag.Lookup("test.run"); f != nil {
		if _, sub, ok := strings.Cut(f.Value.String(), "/"); ok {
			run += "/" + sub
		}
	}
	cmd := exec.CommandContext(ctx, "go", "tool", "test2json", "-t", os.Args[0],
		"-test.run", run, "-test.count", "1", "-test.timeout", "4m", "-test.v=test2json")
	cmd.Env = append(os.Environ(), conformanceModeEnv+"="+mode, conformanceBinEnv+"="+bin, conformanceBucketEnv+"="+bucket)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("run the suite against %s: %v", mode, err)
	}
	r := &suiteResult{action: map[string]string{}, elapsed: map[string]float64{}, output: map[string]string{}}
	outs := map[string]*strings.Builder{}
	var all strings.Builder
	prefix := t.Name() + "/"
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev struct {
			Action  string
			Test    string
			Elapsed float64
			Output  string
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			all.WriteString(sc.Text() + "\n")
			continue
		}
		all.WriteString(ev.Output)
		name, ok := strings.CutPrefix(ev.Test, prefix)
		if !ok {
			continue
		}
		switch ev.Action {
		case "output":
			if outs[name] == nil {
				outs[name] = &strings.Builder{}
			}
			outs[name].WriteString(ev.Output)
		case "pass", "fail", "skip":
			r.order = append(r.order, name)
			r.action[name], r.elapsed[name] = ev.Action, ev.Elapsed
		}
	}
	waitErr := cmd.Wait()
	r.took = time.Since(start)
	for name, b := range outs {
		r.output[name] = b.String()
	}
	r.all = all.String()
	// A failing subtest makes the child exit 1; no subtest at all means it
	// did not get to run the suite (a build error, a panic, a timeout).
	if len(r.order) == 0 {
		t.Fatalf("the suite against %s ran no subtest (%v):\n%s%s", mode, waitErr, lastLines(r.all, 60), stderr.String())
	}
	if waitErr != nil && !slices.Contains(slices.Collect(maps.Values(r.action)), "fail") {
		t.Fatalf("the suite against %s failed outside its subtests (%v):\n%s%s", mode, waitErr, lastLines(r.all, 60), stderr.String())
	}
	return r
}

func (r *suiteResult) verdict(name string) string {
	a, ok := r.action[name]
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%s %.2fs", strings.ToUpper(a), r.elapsed[name])
}

// reason is a subtest's own messages: its output without the framing and
// the snapshotter's log lines.
func (r *suiteResult) reason(name string) string {
	var lines []string
	for _, l := range strings.Split(r.output[name], "\n") {
		s := strings.TrimSpace(l)
		if s == "" || strings.HasPrefix(s, "=== ") || strings.HasPrefix(s, "--- ") || strings.Contains(s, " level=") {
			continue
		}
		lines = append(lines, s)
	}
	return lastLines(strings.Join(lines, "\n"), 20)
}

// agentLogRE matches the agent's log as testenv.AgentSnapshotters hands it
// to the suite's logger, which quotes it onto one line.
var agentLogRE = regexp.MustCompile(`msg="agent log:((?:[^"\\]|\\.)*)"`)

// readableLog unquotes the agent's log in a subtest's output.
func readableLog(out string) string {
	return agentLogRE.ReplaceAllStringFunc(out, func(m string) string {
		u, err := strconv.Unquote(`"` + agentLogRE.FindStringSubmatch(m)[1] + `"`)
		if err != nil {
			return m
		}
		return "agent log:" + strings.ReplaceAll(u, "\n", "\n\t| ")
	})
}

var startupRE = regexp.MustCompile(`msg="agent serving".* startup=([0-9.]+[a-zµ]+)`)

// startupSummary reports how long the agents took to serve, as logged by
// testenv.AgentSnapshotters.
func (r *suiteResult) startupSummary() string {
	var ds []time.Duration
	for _, m := range startupRE.FindAllStringSubmatch(r.all, -1) {
		if d, err := time.ParseDuration(m[1]); err == nil {
			ds = append(ds, d)
		}
	}
	if len(ds) == 0 {
		return ""
	}
	slices.Sort(ds)
	return fmt.Sprintf(" (agents started: %d; start to serving: min %s, median %s, max %s)",
		len(ds), ds[0].Round(time.Millisecond), ds[len(ds)/2].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
