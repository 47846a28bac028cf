package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/s3snap/s3snap/integration/testenv"
)

// TestDemo runs `make demo` exactly as a user does (integration/env.sh up,
// then integration/demo.sh: ECR stand-in, migrate, verify, an installed
// node pulling and running from S3, lazy start, doctor, cleanup), so the
// demo can never rot: any step that does not do what its headline says
// makes the script, and this test, fail.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "the demo's node (containerd, overlay and FUSE mounts) needs root")
	}
	if testing.Short() {
		t.Skip("the demo takes a minute or more")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "--no-print-directory", "-C", "..", "demo")
	// Killed at the timeout, the script's trap still cleans up.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("make demo took %s", time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("make demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{"every tag and untagged image is in the bucket", "the registry served no blob", "all green", "demo passed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("make demo exited 0 but did not print %q:\n%s", want, out.String())
		}
	}
	// Its cleanup left nothing behind: no step failed in it, and no lazy
	// FUSE server of the demo's (they outlive the agent) still runs.
	if strings.Contains(out.String(), "FAILED") {
		t.Errorf("make demo passed but a command failed:\n%s", out.String())
	}
	if ps, _ := exec.Command("pgrep", "-af", "s3demo.*agent fused").Output(); len(ps) > 0 {
		t.Errorf("the demo left its lazy FUSE server running:\n%s", ps)
	}
}
