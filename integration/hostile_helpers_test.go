package integration

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/s3snap/s3snap/integration/testenv"
)

// containerdVersions are the containerd versions the agent is tested with.
func containerdVersions() []string { return testenv.ContainerdVersions() }

// zstdBomb is a small zstd object that inflates to over a GiB: a JSON
// object that never ends.
func zstdBomb(t *testing.T) []byte {
	t.Helper()
	var out bytes.Buffer
	zw, err := zstd.NewWriter(&out, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = zw.Write([]byte(`{"entries":[`))
	spaces := bytes.Repeat([]byte(" "), 1<<20)
	for range 1100 {
		if _, err := zw.Write(spaces); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}
