package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/s3snap/s3snap/integration/testenv"
)

// loopContainer is a container running `/hello --loop` over files of a
// lazily pulled image: it hashes them again and again, each pass read
// through the mounts (not the page cache), and reports every failed read
// and wrong hash.
type loopContainer struct {
	p     *pullEnv
	id    string
	out   string // its output
	cmd   *exec.Cmd
	files map[string][]byte
	done  chan struct{}
}

func startLoop(t *testing.T, p *pullEnv, ref, id string, files map[string][]byte) *loopContainer {
	t.Helper()
	l := &loopContainer{p: p, id: id + "-" + p.ctrd.Namespace, out: filepath.Join(t.TempDir(), id+".out"), files: files, done: make(chan struct{})}
	f, err := os.Create(l.out)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--address", p.ctrd.Address, "--namespace", p.namespace(), "run", "--rm", "--snapshotter", "s3snap", ref, l.id, "/hello", "--loop"}
	for name := range files {
		args = append(args, name)
	}
	l.cmd = exec.Command(p.ctrd.CtrBin, args...)
	l.cmd.Stdout, l.cmd.Stderr = f, f
	if err := l.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = l.cmd.Wait(); f.Close(); close(l.done) }()
	t.Cleanup(func() {
		select {
		case <-l.done:
		default:
			_ = l.cmd.Process.Kill()
			<-l.done
		}
	})
	// Started when every file hashed once, and hashed right.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := l.output(t)
		n := 0
		for name, data := range files {
			if strings.Contains(out, "HASH "+hashLine(name, data)) {
				n++
			}
		}
		if n == len(files) {
			break
		}
		if strings.Contains(out, "FAIL ") || time.Now().After(deadline) {
			t.Fatalf("the loop container did not hash every file right:\n%s", out)
		}
		select {
		case <-l.done:
			t.Fatalf("the loop container exited:\n%s", l.output(t))
		case <-time.After(50 * time.Millisecond):
		}
	}
	return l
}

func (l *loopContainer) output(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(l.out)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var loopCounts = regexp.MustCompile(`(?m)^(?:DONE )?reads=(\d+) failed=(\d+) bad=(\d+)$`)

// counts are the container's last reported reads, failed reads and wrong
// hashes.
func (l *loopContainer) counts(t *testing.T) (reads, failed, bad int) {
	t.Helper()
	m := loopCounts.FindAllStringSubmatch(l.output(t), -1)
	if len(m) == 0 {
		return 0, 0, 0
	}
	last := m[len(m)-1]
	reads, _ = strconv.Atoi(last[1])
	failed, _ = strconv.Atoi(last[2])
	bad, _ = strconv.Atoi(last[3])
	return reads, failed, bad
}

// progress waits until the container has read more than after, failing
// t if it stops reading or reports a failed read or a wrong hash.
func (l *loopContainer) progress(t *testing.T, after int, what string) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		reads, failed, bad := l.counts(t)
		out := l.output(t)
		if failed > 0 || bad > 0 || strings.Contains(out, "FAIL ") || strings.Contains(out, "BAD ") {
			t.Fatalf("%s: the container's reads failed (%d failed, %d wrong hashes):\n%s", what, failed, bad, tailLines(out, 20))
		}
		if reads > after {
			return reads
		}
		select {
		case <-l.done:
			t.Fatalf("%s: the loop container exited:\n%s", what, tailLines(out, 20))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the container made no read for 10s (stuck at %d):\n%s", what, reads, tailLines(out, 20))
		}
	}
}

// stop ends the loop (SIGTERM to its task) and returns its final counts.
func (l *loopContainer) stop(t *testing.T) (reads, failed, bad int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := testenv.RunErr(ctx, l.p.ctrd.CtrBin, "--address", l.p.ctrd.Address, "--namespace", l.p.namespace(), "tasks", "kill", "-s", "SIGTERM", l.id); err != nil {
		t.Fatalf("stop the loop container: %v\n%s", err, out)
	}
	select {
	case <-l.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the loop container did not stop:\n%s", tailLines(l.output(t), 20))
	}
	out := l.output(t)
	if !strings.Contains(out, "DONE ") {
		t.Fatalf("the loop container did not finish its report:\n%s", tailLines(out, 20))
	}
	return l.counts(t)
}

// loopFiles are the files of a three-layer image the loop container
// reads: several chunks each, random and compressible.
func loopFiles(seed uint64) ([]testenv.File, []testenv.File, []testenv.File, map[string][]byte) {
	files := map[string][]byte{
		"/data/a": pseudoRandom(seed, 3<<20+777),
		"/data/b": []byte(strings.Repeat(fmt.Sprintf("line %d of b\n", seed), 150000)),
		"/etc/c":  pseudoRandom(seed+1, 100<<10),
	}
	return []testenv.File{{Name: "data/a", Data: files["/data/a"]}},
		[]testenv.File{{Name: "data/b", Data: files["/data/b"]}},
		[]testenv.File{{Name: "etc/c", Data: files["/etc/c"]}},
		files
}
