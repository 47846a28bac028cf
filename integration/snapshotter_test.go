package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/snapshotter"
	"github.com/s3snap/s3snap/store"
)

const testRegistryHost = "123456789012.dkr.ecr.us-east-1.amazonaws.com"

type snapEnv struct {
	e      *testenv.S3Env
	bucket string
	st     *store.Store
	root   string
	sn     *snapshotter.Snapshotter
}

func newSnapEnv(t *testing.T) *snapEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "the overlay snapshotter needs root")
	}
	e := testenv.S3(t)
	env := &snapEnv{e: e, bucket: e.NewBucket(t), root: t.TempDir()}
	env.st = store.New(e.Client(t), env.bucket, store.WithPrefix("p"))
	env.open(t)
	return env
}

func (env *snapEnv) open(t *testing.T) {
	t.Helper()
	sn, err := snapshotter.New(context.Background(), env.root, func(host string) []*store.Store {
		if host != testRegistryHost {
			return nil
		}
		return []*store.Store{env.st}
	})
	if err != nil {
		t.Fatal(err)
	}
	env.sn = sn
	t.Cleanup(func() { sn.Close() })
}

func prepareAll(t *testing.T, sn snapshots.Snapshotter, repo string, im *testenv.Image) (string, int) {
	t.Helper()
	return testenv.PrepareLayers(t, sn, testRegistryHost+"/"+repo, im)
}

func readView(t *testing.T, sn snapshots.Snapshotter, chain string, names ...string) map[string]string {
	t.Helper()
	return testenv.ReadView(t, sn, chain, names...)
}

func TestSnapshotterServesLayersFromS3(t *testing.T) {
	env := newSnapEnv(t)
	ctx := context.Background()
	im := testenv.NewImage(t, hostPlatform(),
		[]testenv.File{{Name: "etc/base", Data: []byte("base")}, {Name: "etc/gone", Data: []byte("to be deleted")}},
		[]testenv.File{{Name: "etc/.wh.gone"}, {Name: "app/one", Data: bytes.Repeat([]byte("1"), 3<<20)}},
		[]testenv.File{{Name: "app/two", Data: []byte("two")}},
	)
	testenv.PutImage(t, env.st, "team/app", im)

	top, served := prepareAll(t, env.sn, "team/app", im)
	if served != 3 {
		t.Fatalf("%d of 3 layers served from S3, want all", served)
	}
	files := readView(t, env.sn, top, "etc/base", "etc/gone", "app/one", "app/two")
	if files["etc/base"] != "base" || files["app/two"] != "two" || len(files["app/one"]) != 3<<20 {
		t.Errorf("view has wrong content: %v", keysOf(files))
	}
	if _, ok := files["etc/gone"]; ok {
		t.Error("whiteout in layer 2 did not hide etc/gone")
	}
	u, err := env.sn.Usage(ctx, top)
	if err != nil || u.Size == 0 {
		t.Errorf("Usage(top) = %+v, %v; want real bytes", u, err)
	}

	t.Run("survives restart without refetching", func(t *testing.T) {
		env.sn.Close()
		env.open(t)
		_, served := prepareAll(t, env.sn, "team/app", im)
		if served != 3 {
			t.Errorf("after restart %d of 3 layers reported existing", served)
		}
		var staging int
		_ = env.sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			if info.Kind == snapshots.KindActive {
				staging++
			}
			return nil
		})
		if staging != 0 {
			t.Errorf("%d active snapshots left after a full pull", staging)
		}
	})
}

func keysOf(m map[string]string) []string {
	var ks []string
	for k, v := range m {
		ks = append(ks, k+"("+string(rune('0'+len(v)%10))+")")
	}
	return ks
}

// TestSnapshotterFallsBack: what the bucket lacks, or holds damaged, is left
// to containerd (Prepare returns mounts) and nothing corrupt is committed.
func TestSnapshotterFallsBack(t *testing.T) {
	env := newSnapEnv(t)
	good := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "ok", Data: []byte("ok")}})
	testenv.PutImage(t, env.st, "app", good)

	t.Run("unmapped registry", func(t *testing.T) {
		other := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "x", Data: []byte("unmapped")}})
		_, served := prepareAllHost(t, env.sn, "docker.io", "library/x", other)
		if served != 0 {
			t.Errorf("%d layers served for an unmapped registry", served)
		}
	})
	t.Run("layer not in bucket", func(t *testing.T) {
		absent := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "x", Data: []byte("absent")}})
		if _, served := prepareAll(t, env.sn, "app", absent); served != 0 {
			t.Errorf("%d layers served that the bucket lacks", served)
		}
	})
	t.Run("flipped byte in the bucket", func(t *testing.T) {
		im := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "data", Data: bytes.Repeat([]byte("abc"), 1000)}})
		testenv.PutImage(t, env.st, "app", im)
		corruptBlob(t, env, digest.FromBytes(im.Layers[0]))
		top, served := prepareAll(t, env.sn, "app", im)
		if served != 0 {
			t.Fatalf("a corrupt layer was served from S3")
		}
		// What got committed is containerd's own (here: the test's) apply.
		if got := readView(t, env.sn, top, "data")["data"]; got != string(bytes.Repeat([]byte("abc"), 1000)) {
			t.Errorf("committed layer has wrong content (%d bytes)", len(got))
		}
	})
	t.Run("flipped byte in an uncompressed layer", func(t *testing.T) {
		// gzip would notice a flipped byte itself; a plain tar needs the
		// digest check to catch it.
		raw, diffID := rawTar(t, []testenv.File{{Name: "plain", Data: bytes.Repeat([]byte("xyz"), 2000)}})
		im := imageFromLayer(t, raw, diffID)
		testenv.PutImage(t, env.st, "app", im)
		info, err := env.st.StatBlob(context.Background(), digest.FromBytes(raw))
		if err != nil {
			t.Fatal(err)
		}
		data := readObject(t, env.e, env.bucket, info.Key)
		data[1024] ^= 0x01 // inside the file's content, not a header
		putObject(t, env.e, env.bucket, info.Key, data)
		if _, served := prepareAll(t, env.sn, "app", im); served != 0 {
			t.Fatalf("a layer with a flipped byte was served from S3")
		}
	})
	t.Run("diff id mismatch", func(t *testing.T) {
		im := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "d", Data: []byte("diff")}})
		testenv.PutImage(t, env.st, "app", im)
		// An image whose config claims another diff id for the same layer.
		var cfg ocispec.Image
		_ = json.Unmarshal(im.Config, &cfg)
		cfg.RootFS.DiffIDs[0] = digest.FromString("not the tar")
		im.Config, _ = json.Marshal(cfg)
		if _, served := prepareAll(t, env.sn, "app", im); served != 0 {
			t.Errorf("a layer whose diff id does not match was served")
		}
	})
	var active int
	_ = env.sn.Walk(context.Background(), func(_ context.Context, info snapshots.Info) error {
		if info.Kind == snapshots.KindActive {
			active++
		}
		return nil
	})
	if active != 0 {
		t.Errorf("%d staging snapshots left behind after fallbacks", active)
	}
}

func prepareAllHost(t *testing.T, sn snapshots.Snapshotter, host, repo string, im *testenv.Image) (string, int) {
	t.Helper()
	// prepareAll uses testRegistryHost; an unmapped host only changes the ref.
	return testenv.PrepareLayers(t, sn, host+"/"+repo, im)
}

func corruptBlob(t *testing.T, env *snapEnv, d digest.Digest) {
	t.Helper()
	info, err := env.st.StatBlob(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	data := readObject(t, env.e, env.bucket, info.Key)
	data[len(data)/2] ^= 0xff
	putObject(t, env.e, env.bucket, info.Key, data)
}

// TestSnapshotterTarCannotEscape: a layer trying ../ names, an absolute
// symlink followed by a write through it, or a hardlink to a file outside
// the root lands nothing outside the snapshot, whether the layer is then
// served (contained) or refused (fallback).
func TestSnapshotterTarCannotEscape(t *testing.T) {
	env := newSnapEnv(t)
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	writeFile(t, victim, []byte("untouched"))
	for _, tc := range []struct {
		name    string
		entries []tar.Header
		inside  string // where the payload may land inside the snapshot
	}{
		{"dotdot", []tar.Header{{Name: "../../escape-dotdot", Typeflag: tar.TypeReg, Size: 4, Mode: 0o644}}, "escape-dotdot"},
		{"absolute symlink then write", []tar.Header{
			{Name: "abslink", Typeflag: tar.TypeSymlink, Linkname: outside, Mode: 0o777},
			{Name: "abslink/pwned", Typeflag: tar.TypeReg, Size: 4, Mode: 0o644},
		}, filepath.Join(outside, "pwned")},
		{"relative symlink out then write", []tar.Header{
			{Name: "rel", Typeflag: tar.TypeSymlink, Linkname: "../../../../../../../../" + outside, Mode: 0o777},
			{Name: "rel/pwned2", Typeflag: tar.TypeReg, Size: 4, Mode: 0o644},
		}, filepath.Join(outside, "pwned2")},
		{"hardlink out of the root", []tar.Header{{Name: "hardlink", Typeflag: tar.TypeLink, Linkname: victim, Mode: 0o644}}, ""},
		{"relative hardlink out", []tar.Header{{Name: "relhard", Typeflag: tar.TypeLink, Linkname: "../../../../../../" + victim, Mode: 0o644}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var raw bytes.Buffer
			tw := tar.NewWriter(&raw)
			for _, h := range tc.entries {
				h.ModTime = time.Unix(1700000000, 0)
				if err := tw.WriteHeader(&h); err != nil {
					t.Fatal(err)
				}
				if h.Size > 0 {
					_, _ = tw.Write([]byte("evil"))
				}
			}
			tw.Close()
			var gz bytes.Buffer
			zw := gzip.NewWriter(&gz)
			_, _ = zw.Write(raw.Bytes())
			zw.Close()
			im := imageFromLayer(t, gz.Bytes(), digest.FromBytes(raw.Bytes()))
			testenv.PutImage(t, env.st, "evil", im)

			top, served := prepareAll(t, env.sn, "evil", im)
			for _, p := range []string{
				filepath.Join(filepath.Dir(filepath.Dir(env.root)), "escape-dotdot"),
				filepath.Join(filepath.Dir(env.root), "escape-dotdot"),
				filepath.Join(outside, "pwned"),
				filepath.Join(outside, "pwned2"),
			} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("%s was created outside the snapshot", p)
				}
			}
			if b, _ := os.ReadFile(victim); string(b) != "untouched" {
				t.Errorf("victim outside the root changed: %q", b)
			}
			var st syscallStat
			if n := linkCount(t, victim, &st); n != 1 {
				t.Errorf("victim outside the root has %d links: a hardlink escaped", n)
			}
			if served == 1 && tc.inside != "" {
				if got := readView(t, env.sn, top, tc.inside)[tc.inside]; got != "evil" {
					t.Errorf("served layer: payload not contained at /%s inside the snapshot", tc.inside)
				}
			}
			t.Logf("served from S3: %v", served == 1)
		})
	}
}

// rawTar is an uncompressed tar of files and its digest.
func rawTar(t *testing.T, files []testenv.File) ([]byte, digest.Digest) {
	t.Helper()
	gz, diffID := testenv.LayerTar(t, files)
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := out.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), diffID
}

func imageFromLayer(t *testing.T, gz []byte, diffID digest.Digest) *testenv.Image {
	t.Helper()
	im := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "placeholder"}})
	var cfg ocispec.Image
	_ = json.Unmarshal(im.Config, &cfg)
	cfg.RootFS.DiffIDs = []digest.Digest{diffID}
	im.Config, _ = json.Marshal(cfg)
	var m ocispec.Manifest
	_ = json.Unmarshal(im.Manifest, &m)
	m.Config.Digest, m.Config.Size = digest.FromBytes(im.Config), int64(len(im.Config))
	m.Layers[0].Digest, m.Layers[0].Size = digest.FromBytes(gz), int64(len(gz))
	im.Manifest, _ = json.Marshal(m)
	im.Digest = digest.FromBytes(im.Manifest)
	im.Layers = [][]byte{gz}
	return im
}
