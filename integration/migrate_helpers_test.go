package integration

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/migrator"
)

// regPusher pushes test images into a real registry.
type regPusher struct {
	addr string
	auth authn.Authenticator
}

func (p regPusher) opts() []remote.Option {
	a := p.auth
	if a == nil {
		a = authn.Anonymous
	}
	return []remote.Option{remote.WithAuth(a)}
}

type rawManifest struct {
	raw []byte
	mt  string
}

func (m rawManifest) RawManifest() ([]byte, error)        { return m.raw, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.MediaType(m.mt), nil }

// image pushes im's blobs and manifest into repo, tagged ref (a tag, or ""
// for by digest only).
func (p regPusher) image(t testing.TB, repo, tag string, im *testenv.Image) {
	t.Helper()
	rp, err := name.NewRepository(p.addr + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(im.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	for i, l := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		data := im.Config
		if i > 0 {
			data = im.Layers[i-1]
		}
		if err := remote.WriteLayer(rp, static.NewLayer(data, types.MediaType(l.MediaType)), p.opts()...); err != nil {
			t.Fatalf("push blob %s to %s: %v", l.Digest, rp, err)
		}
	}
	p.manifest(t, repo, tag, im.Manifest, ocispec.MediaTypeImageManifest)
}

// manifest puts raw by digest, and under tag if not "".
func (p regPusher) manifest(t testing.TB, repo, tag string, raw []byte, mt string) digest.Digest {
	t.Helper()
	rp, err := name.NewRepository(p.addr + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(raw)
	refs := []name.Reference{rp.Digest(d.String())}
	if tag != "" {
		refs = append(refs, rp.Tag(tag))
	}
	for _, ref := range refs {
		if err := remote.Put(ref, rawManifest{raw, mt}, p.opts()...); err != nil {
			t.Fatalf("put %s: %v", ref, err)
		}
	}
	return d
}

// randomLayers makes n opaque layers of size bytes each (a seeded PRNG:
// incompressible, quick to make).
func randomLayers(seed uint64, n, size int) [][]byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}))
	out := make([][]byte, n)
	for i := range out {
		b := make([]byte, size)
		for j := 0; j+8 <= len(b); j += 8 {
			v := r.Uint64()
			for k := range 8 {
				b[j+k] = byte(v >> (8 * k))
			}
		}
		out[i] = b
	}
	return out
}

// opaqueImage is an image over layers that are not tars: registries and
// the migrator never look inside.
func opaqueImage(t testing.TB, layers [][]byte) *testenv.Image {
	t.Helper()
	diffIDs := make([]digest.Digest, len(layers))
	for i, l := range layers {
		diffIDs[i] = digest.FromBytes(l)
	}
	return testenv.ImageFromLayers(t, testenv.HostPlatform(), layers, diffIDs, ocispec.ImageConfig{Cmd: []string{"/bin/true"}})
}

// migrateCLI runs the s3snap binary built once per test binary.
type migrateCLI struct {
	bin string
	env []string
	s3  string
}

func newMigrateCLI(t *testing.T, e *testenv.S3Env) *migrateCLI {
	t.Helper()
	return &migrateCLI{
		bin: sharedCLI(t),
		s3:  e.Endpoint,
		env: []string{"AWS_ACCESS_KEY_ID=" + e.AccessKey, "AWS_SECRET_ACCESS_KEY=" + e.SecretKey, "AWS_REGION=" + e.Region,
			"AWS_EC2_METADATA_DISABLED=true", "HOME=" + t.TempDir()},
	}
}

var cliPath string

// sharedCLI builds ./cmd/s3snap once per test binary.
func sharedCLI(t *testing.T) string {
	t.Helper()
	if cliPath == "" {
		dir, err := os.MkdirTemp("", "s3snap-cli-")
		if err != nil {
			t.Fatal(err)
		}
		cliPath = buildCLI(t, dir)
	}
	return cliPath
}

func (c *migrateCLI) command(args ...string) *exec.Cmd {
	cmd := exec.Command(c.bin, append([]string{"--endpoint", c.s3}, args...)...)
	cmd.Env = append(os.Environ(), c.env...)
	return cmd
}

// run runs s3snap and returns stdout, stderr and the exit code.
func (c *migrateCLI) run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := c.command(args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("s3snap %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("s3snap %s: exit %d\n%s%s", strings.Join(args, " "), code, o.String(), tailLines(e.String(), 30))
	return o.String(), e.String(), code
}

// migrate runs s3snap with a --report and returns it and the exit code.
func (c *migrateCLI) migrate(t *testing.T, args ...string) (*migrator.Report, int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "report.json")
	_, _, code := c.run(t, append([]string{args[0], "--report", path}, args[1:]...)...)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no report (exit %d): %v", code, err)
	}
	var rep migrator.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	return &rep, code
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}

// entry finds key (repo:tag or repo@digest) in rep.
func entry(t *testing.T, rep *migrator.Report, key string) migrator.Entry {
	t.Helper()
	for _, e := range rep.Entries {
		if e.Key() == key {
			return e
		}
	}
	t.Fatalf("report has no entry %s", key)
	return migrator.Entry{}
}

func basic(user, pass string) authn.Authenticator {
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: pass})
}
