package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/crypto/bcrypt"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/store"
)

// pushDocJSON is the part of `s3snap push -o json` the tests check.
type pushDocJSON struct {
	pushJSON
	SourceKind   string `json:"sourceKind"`
	Destinations []struct {
		Destination   string `json:"destination"`
		Status        string `json:"status"`
		Error         string `json:"error"`
		Digest        string `json:"digest"`
		BlobsUploaded int    `json:"blobsUploaded"`
	} `json:"destinations"`
}

// tarEntry is one file of a test tar; link makes it a symlink.
type tarEntry struct {
	name string
	data []byte
	link string
}

func writeTarFile(t *testing.T, path string, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: tar.TypeReg}
		if e.link != "" {
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.link, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.link == "" {
			if _, err := tw.Write(e.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, buf.Bytes())
	return buf.Bytes()
}

// ociTarEntries lays blobs out as an OCI image layout with index.json
// listing root; extra entries (docker save's manifest.json) go at the end.
func ociTarEntries(t *testing.T, root ocispec.Descriptor, blobs map[digest.Digest][]byte, extra ...tarEntry) []tarEntry {
	t.Helper()
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{root}}
	idx.SchemaVersion = 2
	ij, _ := json.Marshal(idx)
	ents := []tarEntry{{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)}}
	keys := make([]string, 0, len(blobs))
	for d := range blobs {
		keys = append(keys, d.String())
	}
	sort.Strings(keys)
	for _, k := range keys {
		d := digest.Digest(k)
		ents = append(ents, tarEntry{name: "blobs/sha256/" + d.Encoded(), data: blobs[d]})
	}
	ents = append(ents, tarEntry{name: "index.json", data: ij})
	return append(ents, extra...)
}

func gunzip(t *testing.T, gz []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// saveImage is a runnable image in the shapes push reads from a tar.
type saveImage struct {
	files map[string][]byte // what /hello hashes in a container
	im    *testenv.Image    // OCI, gzip'd layers
	raw   [][]byte          // the layers uncompressed, as docker save holds them
}

func newSaveImage(t *testing.T, seed uint64) *saveImage {
	t.Helper()
	s := &saveImage{files: map[string][]byte{
		"/data/a": pseudoRandom(seed, 1<<20),
		"/etc/b":  []byte("saved by docker " + hex.EncodeToString([]byte{byte(seed)})),
	}}
	s.im = testenv.RunnableImage(t,
		[]testenv.File{{Name: "data/a", Data: s.files["/data/a"]}},
		[]testenv.File{{Name: "etc/b", Data: s.files["/etc/b"]}})
	for _, l := range s.im.Layers {
		s.raw = append(s.raw, gunzip(t, l))
	}
	return s
}

// docker25 is what `docker save` writes from Docker 25 on: an OCI layout
// (uncompressed layers, OCI media types) plus the legacy manifest.json. It
// returns the manifest's digest.
func (s *saveImage) docker25(t *testing.T, path string) digest.Digest {
	t.Helper()
	blobs := map[digest.Digest][]byte{digest.FromBytes(s.im.Config): s.im.Config}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(s.im.Config), Size: int64(len(s.im.Config))}}
	m.SchemaVersion = 2
	var layerPaths []string
	for _, l := range s.raw {
		d := digest.FromBytes(l)
		blobs[d] = l
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: d, Size: int64(len(l))})
		layerPaths = append(layerPaths, "blobs/sha256/"+d.Encoded())
	}
	raw, _ := json.Marshal(m)
	md := digest.FromBytes(raw)
	blobs[md] = raw
	legacy, _ := json.Marshal([]map[string]any{{"Config": "blobs/sha256/" + m.Config.Digest.Encoded(), "RepoTags": []string{"app:v1"}, "Layers": layerPaths}})
	root := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: md, Size: int64(len(raw)),
		Annotations: map[string]string{"io.containerd.image.name": "docker.io/library/app:v1", ocispec.AnnotationRefName: "v1"}}
	writeTarFile(t, path, ociTarEntries(t, root, blobs, tarEntry{name: "manifest.json", data: legacy}))
	return md
}

// legacy is what `docker save` wrote before Docker 25: manifest.json, the
// config as <image id>.json and each layer as <id>/layer.tar, uncompressed.
// The last layer is listed twice, the second time through a symlink, as
// docker does for a repeated layer.
func (s *saveImage) legacy(t *testing.T, path string) []byte {
	t.Helper()
	var cfg ocispec.Image
	if err := json.Unmarshal(s.im.Config, &cfg); err != nil {
		t.Fatal(err)
	}
	last := s.raw[len(s.raw)-1]
	cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, digest.FromBytes(last))
	config, _ := json.Marshal(cfg)
	id := digest.FromBytes(config).Encoded()
	ents := []tarEntry{{name: id + ".json", data: config}}
	var layers []string
	for i, l := range s.raw {
		dir := digest.FromString(id + string(rune('a'+i))).Encoded()
		ents = append(ents, tarEntry{name: dir + "/layer.tar", data: l})
		layers = append(layers, dir+"/layer.tar")
	}
	dup := digest.FromString(id + "dup").Encoded()
	ents = append(ents, tarEntry{name: dup + "/layer.tar", link: "../" + layers[len(layers)-1]})
	layers = append(layers, dup+"/layer.tar")
	man, _ := json.Marshal([]map[string]any{{"Config": id + ".json", "RepoTags": []string{"team/app:v1"}, "Layers": layers}})
	repos, _ := json.Marshal(map[string]map[string]string{"team/app": {"v1": id}})
	ents = append(ents, tarEntry{name: "repositories", data: repos}, tarEntry{name: "manifest.json", data: man})
	return writeTarFile(t, path, ents)
}

// ociIndexTar writes a buildx-style OCI tar of a multi-arch index: host and
// other. It returns the index's digest.
func ociIndexTar(t *testing.T, path string, host, other *testenv.Image) digest.Digest {
	t.Helper()
	idx := testenv.NewIndex(t, host, other)
	blobs := map[digest.Digest][]byte{digest.FromBytes(idx): idx,
		host.Digest: host.Manifest, other.Digest: other.Manifest}
	for _, im := range []*testenv.Image{host, other} {
		for d, b := range im.Blobs() {
			blobs[d] = b
		}
	}
	root := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(idx), Size: int64(len(idx)),
		Annotations: map[string]string{ocispec.AnnotationRefName: "v1"}}
	writeTarFile(t, path, ociTarEntries(t, root, blobs))
	return digest.FromBytes(idx)
}

func otherArch() string {
	if testenv.HostPlatform().Architecture == "arm64" {
		return "amd64"
	}
	return "arm64"
}

// envRegistry is the registry env.sh started (127.0.0.1:15000), shared by
// every test: repositories are named after the test and a random suffix.
func envRegistry(t *testing.T) (addr, prefix string) {
	t.Helper()
	addr = os.Getenv("S3SNAP_REGISTRY")
	if addr == "" {
		addr = "127.0.0.1:15000"
	}
	if _, err := testenv.RunErr(context.Background(), testenv.Bin(t, "crane"), "catalog", addr); err != nil {
		testenv.Unavailable(t, "no registry at %s", addr)
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	return addr, "pushtest/" + hex.EncodeToString(rnd[:])
}

func newPushCLI(t *testing.T, e *testenv.S3Env) *cliRunner {
	t.Helper()
	tmp := t.TempDir()
	return &cliRunner{
		bin:      buildCLI(t, tmp),
		endpoint: e.Endpoint,
		env: []string{
			"AWS_ACCESS_KEY_ID=" + e.AccessKey, "AWS_SECRET_ACCESS_KEY=" + e.SecretKey, "AWS_REGION=" + e.Region,
			"AWS_EC2_METADATA_DISABLED=true", "DOCKER_CONFIG=" + tmp,
			"AWS_CONFIG_FILE=" + filepath.Join(tmp, "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(tmp, "no-aws-credentials"),
		},
	}
}

// craneDigest is the digest ref resolves to, or "" if it does not.
func craneDigest(t *testing.T, ref string) string {
	t.Helper()
	out, err := testenv.RunErr(context.Background(), testenv.Bin(t, "crane"), "digest", ref)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// TestPushArchives pushes each kind of image tar CI produces (a buildx OCI
// tar of a multi-arch index, a Docker 25+ docker save, an older docker save)
// into a bucket and, with --also, into a registry; a stock Distribution
// registry over the bucket then serves every tag with the same digest and
// blobs that verify. Damaged or hostile tars fail with a clear error and
// leave no tag anywhere.
func TestPushArchives(t *testing.T) {
	e := testenv.S3(t)
	crane := testenv.Bin(t, "crane")
	reg, repoPrefix := envRegistry(t)
	c := newPushCLI(t, e)
	bucket := e.NewBucket(t)
	st := store.New(e.Client(t), bucket)
	dir := t.TempDir()

	img := newSaveImage(t, 1)
	other := testenv.NewImage(t, ocispec.Platform{OS: "linux", Architecture: otherArch()}, []testenv.File{{Name: "x", Data: []byte("other arch")}})
	ociTar := filepath.Join(dir, "oci.tar")
	indexDigest := ociIndexTar(t, ociTar, img.im, other)
	d25Tar := filepath.Join(dir, "d25.tar")
	d25Digest := img.docker25(t, d25Tar).String()
	legacyTar := filepath.Join(dir, "legacy.tar")
	legacyBytes := img.legacy(t, legacyTar)

	want := map[string]string{} // repository:tag in the bucket -> digest

	t.Run("buildx OCI tar, multi-arch index", func(t *testing.T) {
		res := decodeJSON[pushDocJSON](t, "push", c.ok(t, "push", "-o", "json", ociTar, "s3://"+bucket+"/team/multi:v1"))
		if res.Digest != indexDigest.String() || res.Manifests != 3 || res.SourceKind != "oci-archive" || res.BlobsUploaded != 6 {
			// Two configs, three layers of the host image and one of the other.
			t.Errorf("push = %+v; want index %s, 3 manifests, 6 blobs uploaded", res, indexDigest)
		}
		want["team/multi:v1"] = indexDigest.String()
	})

	t.Run("Docker 25 save, also to a registry", func(t *testing.T) {
		regRef := reg + "/" + repoPrefix + "/d25"
		out, errOut, code := c.run(t, "push", "-o", "json", "--ref", "app:v1", "--also", "docker://"+regRef, d25Tar, "s3://"+bucket+"/team/d25:v1")
		if code != 0 {
			t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
		}
		res := decodeJSON[pushDocJSON](t, "push", out)
		if res.Digest != d25Digest || len(res.Destinations) != 2 || res.SourceKind != "oci-archive" {
			t.Fatalf("push = %+v; want %s to 2 destinations", res, d25Digest)
		}
		for _, d := range res.Destinations {
			if d.Status != "ok" || d.Digest != d25Digest {
				t.Errorf("destination %+v", d)
			}
		}
		if got := craneDigest(t, regRef+":v1"); got != d25Digest {
			t.Errorf("registry has %s:v1 at %q, want %s", regRef, got, d25Digest)
		}
		for _, s := range []string{"s3://" + bucket + "/team/d25:v1: tagged", "docker://" + regRef + ":v1: tagged"} {
			if !strings.Contains(errOut, s) {
				t.Errorf("progress lacks %q:\n%s", s, errOut)
			}
		}
		want["team/d25:v1"] = d25Digest
	})

	t.Run("legacy docker save: the digest crane push gives, every time", func(t *testing.T) {
		craneRef := reg + "/" + repoPrefix + "/crane-legacy:v1"
		testenv.Run(t, crane, "push", legacyTar, craneRef)
		craneD := craneDigest(t, craneRef)
		res := decodeJSON[pushDocJSON](t, "push", c.ok(t, "push", "-o", "json", "--ref", "team/app:v1", legacyTar, "s3://"+bucket+"/team/legacy:v1"))
		if res.Digest != craneD || res.SourceKind != "docker-archive" || res.BlobsUploaded != 4 {
			// The config and three layers: the repeated one is one blob.
			t.Errorf("push = %+v; want crane's digest %s and 4 blobs", res, craneD)
		}
		again := decodeJSON[pushDocJSON](t, "push", c.ok(t, "push", "-o", "json", legacyTar, "s3://"+bucket+"/team/legacy:v2"))
		if again.Digest != res.Digest || again.BlobsUploaded != 0 {
			t.Errorf("second push = %+v; want %s again and nothing uploaded", again, res.Digest)
		}
		want["team/legacy:v1"], want["team/legacy:v2"] = craneD, craneD
		m, err := st.GetManifest(context.Background(), "team/legacy", digest.Digest(craneD))
		if err != nil {
			t.Fatal(err)
		}
		if m.Image.Config.Digest != digest.FromBytes(legacyConfig(t, legacyBytes)) {
			t.Errorf("config %s is not the saved one (the image ID changed)", m.Image.Config.Digest)
		}
	})

	t.Run("a registry source", func(t *testing.T) {
		res := decodeJSON[pushDocJSON](t, "push", c.ok(t, "push", "-o", "json", "docker://"+reg+"/"+repoPrefix+"/d25:v1", "s3://"+bucket+"/team/fromreg:v1"))
		if res.Digest != d25Digest || res.SourceKind != "registry" || res.BlobsUploaded != 0 {
			t.Errorf("push = %+v; want %s, every blob already in the bucket", res, d25Digest)
		}
		want["team/fromreg:v1"] = d25Digest
	})

	t.Run("a failing --also still completes the bucket", func(t *testing.T) {
		hp := filepath.Join(t.TempDir(), "htpasswd")
		h, _ := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
		writeFile(t, hp, []byte("someone:"+string(h)+"\n"))
		locked := testenv.StartAuthRegistry(t, t.TempDir(), hp)
		out, errOut, code := c.run(t, "push", "-o", "json", "--also", "docker://"+locked.Addr+"/team/app", ociTar, "s3://"+bucket+"/team/partial:v1")
		if code != 1 || !strings.Contains(errOut, "push failed for 1 of 2 destinations") || !strings.Contains(errOut, "unauthorized") {
			t.Fatalf("exit %d, want 1 naming the refused registry\n%s", code, errOut)
		}
		res := decodeJSON[pushDocJSON](t, "push", out)
		if len(res.Destinations) != 2 || res.Destinations[0].Status != "ok" || res.Destinations[1].Status != "failed" || res.Destinations[1].Error == "" {
			t.Errorf("destinations = %+v", res.Destinations)
		}
		want["team/partial:v1"] = indexDigest.String()

		// The other way round: no bucket, and the registry still gets it.
		regRef := reg + "/" + repoPrefix + "/nobucket"
		out, errOut, code = c.run(t, "push", "--also", "docker://"+regRef, ociTar, "s3://no-such-bucket-"+strings.ReplaceAll(repoPrefix, "/", "-")+"/team/app:v1")
		if code != 1 || !strings.Contains(out, "failed") {
			t.Errorf("exit %d, want 1 with a summary\n%s\n%s", code, out, errOut)
		}
		if got := craneDigest(t, regRef+":v1"); got != indexDigest.String() {
			t.Errorf("registry has %q, want %s", got, indexDigest)
		}
	})

	t.Run("bad archives publish nothing", func(t *testing.T) {
		// A bucket without these blobs: one already there is not read
		// from the archive at all.
		bucket := e.NewBucket(t)
		st := store.New(e.Client(t), bucket)
		ociBytes, _ := os.ReadFile(ociTar)
		layer := digest.FromBytes(img.im.Layers[1])
		at := bytes.Index(ociBytes, []byte("blobs/sha256/"+layer.Encoded()+"\x00"))
		if at < 0 {
			t.Fatal("layer not found in the tar")
		}
		flipped := bytes.Clone(ociBytes)
		flipped[at+512+len(img.im.Layers[1])/2] ^= 0x20
		legacyFlipped := bytes.Clone(legacyBytes)
		li := bytes.Index(legacyFlipped, img.raw[1][:512])
		legacyFlipped[li+2000] ^= 0x01
		var noIndex, traversal []tarEntry
		for _, en := range ociTarEntries(t, ocispec.Descriptor{}, img.im.Blobs()) {
			if en.name != "index.json" {
				noIndex = append(noIndex, en)
			}
		}
		traversal = append(ociTarEntries(t, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: img.im.Digest, Size: int64(len(img.im.Manifest))},
			map[digest.Digest][]byte{img.im.Digest: img.im.Manifest}), tarEntry{name: "../../../tmp/evil", data: []byte("x")})
		for _, tc := range []struct {
			name string
			tar  func(path string)
			msg  string
		}{
			{"truncated", func(p string) { writeFile(t, p, ociBytes[:at+512+len(img.im.Layers[1])/2]) }, "truncated tar"},
			{"flipped byte in a layer", func(p string) { writeFile(t, p, flipped) }, "does not hash to its digest"},
			{"flipped byte in a legacy layer", func(p string) { writeFile(t, p, legacyFlipped) }, "the image config says"},
			{"path traversal", func(p string) { writeTarFile(t, p, traversal) }, "escapes the archive"},
			{"no index.json", func(p string) { writeTarFile(t, p, noIndex) }, "neither index.json"},
			{"gzip'd", func(p string) {
				var b bytes.Buffer
				zw := gzip.NewWriter(&b)
				zw.Write(ociBytes)
				zw.Close()
				writeFile(t, p, b.Bytes())
			}, "gzip-compressed"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tag := strings.NewReplacer(" ", "-", "'", "").Replace(tc.name)
				p := filepath.Join(t.TempDir(), "bad.tar")
				tc.tar(p)
				regRef := reg + "/" + repoPrefix + "/bad"
				out, errOut, code := c.run(t, "push", "--also", "docker://"+regRef, p, "s3://"+bucket+"/team/bad:"+tag)
				if code != 1 || !strings.Contains(errOut, tc.msg) {
					t.Errorf("exit %d, want 1 and %q\nstdout:\n%s\nstderr:\n%s", code, tc.msg, out, errOut)
				}
				t.Logf("stderr: %s", lastLine(errOut))
				if d, err := st.Resolve(context.Background(), "team/bad", tag); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("bucket has team/bad:%s -> %s, %v; want no tag", tag, d, err)
				}
				if d := craneDigest(t, regRef+":"+tag); d != "" {
					t.Errorf("registry has %s:%s -> %s; want no tag", regRef, tag, d)
				}
			})
		}
	})

	t.Run("a stock registry serves the bucket with the same digests", func(t *testing.T) {
		r := testenv.StartS3Registry(t, e, bucket, "")
		for ref, d := range want {
			if got := craneDigest(t, r.Addr+"/"+ref); got != d {
				t.Errorf("stock registry: %s -> %q, want %s", ref, got, d)
			}
		}
		testenv.Run(t, crane, "validate", "--remote", r.Addr+"/team/legacy:v1")
		// Its layers are uncompressed tars, which crane validate cannot
		// read; pull verifies every digest.
		testenv.Run(t, crane, "pull", "--format", "oci", r.Addr+"/team/d25:v1", filepath.Join(t.TempDir(), "d25"))
		testenv.Run(t, crane, "pull", "--format", "oci", r.Addr+"/team/multi:v1", filepath.Join(t.TempDir(), "back"))
	})
}

// legacyConfig reads the config out of a legacy docker save tar.
func legacyConfig(t *testing.T, tarBytes []byte) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(tarBytes))
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no config in the tar: %v", err)
		}
		if strings.HasSuffix(h.Name, ".json") && h.Name != "manifest.json" {
			b, _ := io.ReadAll(tr)
			return b
		}
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestPushThroughAgent: what CI pushes (an older docker save, whose layers
// push gzips, and a buildx OCI tar of a multi-arch index), into the bucket and
// with --also into the registry a node maps, is pulled by containerd through
// the agent with every layer from S3 and no blob from the registry, and runs
// with every file intact.
func TestPushThroughAgent(t *testing.T) {
	p := newPullEnv(t, false)
	c := newPushCLI(t, p.e)
	dir := t.TempDir()

	legacyImg := newSaveImage(t, 7)
	legacyTar := filepath.Join(dir, "legacy.tar")
	legacyImg.legacy(t, legacyTar)
	multiImg := newSaveImage(t, 8)
	ociTar := filepath.Join(dir, "oci.tar")
	other := testenv.NewImage(t, ocispec.Platform{OS: "linux", Architecture: otherArch()}, []testenv.File{{Name: "x", Data: []byte("other")}})
	ociIndexTar(t, ociTar, multiImg.im, other)

	for _, tc := range []struct {
		name, tar, repo string
		img             *saveImage
		// layers the snapshotter fetches: the legacy image lists its last
		// layer twice (two snapshots); the second image's first layer
		// (/hello) has the same diff ID, so the same snapshot, as the
		// first's.
		layers float64
	}{
		{"legacy docker save", legacyTar, "team/legacy", legacyImg, 4},
		{"buildx OCI tar", ociTar, "team/multi", multiImg, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ref := p.upstream + "/" + tc.repo + ":v1"
			res := decodeJSON[pushDocJSON](t, "push", c.ok(t, "push", "-o", "json", "--prefix", "ecr", "--also", "docker://"+ref, tc.tar, "s3://"+p.bucket+"/ecr/"+tc.repo+":v1"))
			if len(res.Destinations) != 2 || res.Destinations[0].Digest != res.Destinations[1].Digest || res.Destinations[1].Status != "ok" {
				t.Fatalf("push = %+v", res.Destinations)
			}
			if got := craneDigest(t, ref); got != res.Digest {
				t.Errorf("registry has %s at %q, the bucket %s", ref, got, res.Digest)
			}
			before := p.provided(t)
			p.pull(t, ref)
			if n := p.provided(t) - before; n != tc.layers {
				t.Errorf("the snapshotter provided %v layers from S3, want %v", n, tc.layers)
			}
			if n := registryRequests(t, p.reg, "/v2/"+tc.repo+"/blobs/"); n != 0 {
				t.Errorf("containerd downloaded %d blobs from the registry, want 0", n)
			}
			p.run(t, ref, strings.ReplaceAll(tc.repo, "/", "-"), tc.img.files)
		})
	}
}
