package testenv

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var (
	helloOnce sync.Once
	helloBin  []byte
	helloErr  error
)

// HelloBinary returns a static build of integration/cmd/hello, the program
// test images run (it prints a greeting and the sha256 of named files).
func HelloBinary(t testing.TB) []byte {
	t.Helper()
	root := moduleRoot(t)
	helloOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hello-")
		if err != nil {
			helloErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "hello")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./integration/cmd/hello")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			helloErr = &buildError{out: string(b), err: err}
			return
		}
		helloBin, helloErr = os.ReadFile(out)
	})
	if helloErr != nil {
		t.Fatalf("build hello: %v", helloErr)
	}
	return helloBin
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// RunnableImage builds an image whose entrypoint is /hello, with data
// spread over layers so a pull has several to fetch; extra files go in
// their own layers.
func RunnableImage(t testing.TB, extra ...[]File) *Image {
	t.Helper()
	layers := append([][]File{{{Name: "hello", Data: HelloBinary(t), Mode: 0o755}}}, extra...)
	im := NewImage(t, HostPlatform(), layers...)
	var cfg ocispec.Image
	if err := json.Unmarshal(im.Config, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Config.Cmd = []string{"/hello"}
	return ImageFromLayers(t, im.Platform, im.Layers, cfg.RootFS.DiffIDs, cfg.Config)
}

// HostPlatform is linux on this machine's architecture.
func HostPlatform() ocispec.Platform {
	return ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH}
}
