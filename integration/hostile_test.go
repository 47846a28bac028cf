package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/faultproxy"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lazy"
)

// hostileEnv is an agent (eager or lazy) between a private containerd of
// one version and a bucket reached through a fault proxy, a registry
// upstream holding the same images, and a directory outside every root
// that no layer may touch.
type hostileEnv struct {
	*pullEnv
	lazy    bool
	cri     bool   // pull through CRI: containerd 1.7's ctr sets no remote-snapshot labels
	outside string // holds only "victim"
	victim  string
	index   *cliRunner
	fused   int // the lazy FUSE server's pid, once seen
}

func newHostileEnv(t *testing.T, version string, lazyMode bool) *hostileEnv {
	t.Helper()
	if lazyMode {
		if _, err := os.Stat("/dev/fuse"); err != nil {
			testenv.Unavailable(t, "lazy mode needs /dev/fuse: %v", err)
		}
	}
	extra := ""
	if lazyMode {
		extra = "\n[lazy]\nenabled = true\n"
	}
	p := newPullEnvWith(t, version, false, extra)
	h := &hostileEnv{pullEnv: p, lazy: lazyMode, cri: p.viaCRI}
	h.outside = t.TempDir()
	h.victim = filepath.Join(h.outside, "victim")
	writeFile(t, h.victim, []byte("untouched"))
	h.index = indexCLI(t, p.e)
	return h
}

// pullErr pulls ref the way this containerd lets the agent in.
func (h *hostileEnv) pullErr(t *testing.T, ref string) (string, error) {
	t.Helper()
	if h.cri {
		endpoint := "unix://" + h.ctrd.Address
		return testenv.RunErr(context.Background(), testenv.Bin(t, "crictl"), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint, "--timeout", "60s", "pull", ref)
	}
	return h.ctrd.CtrErr(t, "images", "pull", "--hosts-dir", h.agent.HostsDir, "--snapshotter", "s3snap", ref)
}

// runFiles runs /hello in a container from ref and returns what it
// printed for files: a hash line each, or the error reading it.
func (h *hostileEnv) runFiles(t *testing.T, ref, id string, files ...string) string {
	t.Helper()
	ns := h.ctrd.Namespace
	if h.cri {
		ns = "k8s.io"
	}
	args := append([]string{"--address", h.ctrd.Address, "--namespace", ns, "run", "--rm", "--snapshotter", "s3snap", ref, id + "-" + h.ctrd.Namespace, "/hello"}, files...)
	out, _ := testenv.RunErr(context.Background(), h.ctrd.CtrBin, args...)
	return out
}

// checkRight fails t unless every file of want reads right in a
// container from ref.
func (h *hostileEnv) checkRight(t *testing.T, ref, id string, want map[string][]byte) {
	t.Helper()
	var names []string
	for n := range want {
		names = append(names, n)
	}
	out := h.runFiles(t, ref, id, names...)
	if !strings.Contains(out, "hello from s3snap") {
		t.Fatalf("container from %s did not run:\n%s", ref, out)
	}
	for n, data := range want {
		if !strings.Contains(out, hashLine(n, data)) {
			t.Errorf("%s does not read right in the container:\n%s", n, out)
		}
	}
}

// checkSafe fails t if the agent died or was replaced, or anything outside
// the roots changed.
func (h *hostileEnv) checkSafe(t *testing.T, pid int) {
	t.Helper()
	if h.agent.Exited() || h.agent.Pid() != pid {
		t.Fatalf("the agent (pid %d) died", pid)
	}
	if h.lazy {
		// Hostile layers are mounted by the lazy FUSE server: it must
		// survive them as the agent does.
		fp := h.agent.FusedPID()
		if fp == 0 || h.fused != 0 && fp != h.fused {
			t.Fatalf("the lazy FUSE server (pid %d) died (now %d)", h.fused, fp)
		}
		h.fused = fp
	}
	entries, err := os.ReadDir(h.outside)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("files appeared outside the snapshot roots: %v", names)
	}
	if b, _ := os.ReadFile(h.victim); string(b) != "untouched" {
		t.Errorf("a file outside the roots changed: %q", b)
	}
	var st syscall.Stat_t
	if n := linkCount(t, h.victim, &st); n != 1 {
		t.Errorf("a file outside the roots has %d links: a hard link escaped", n)
	}
}

// tarEnt is one tar entry of a hand-made layer.
type tarEnt struct {
	hdr  tar.Header
	data string
}

func reg(name, data string) tarEnt {
	return tarEnt{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))}, data: data}
}

// handLayer is a gzip'd tar of entries exactly as given, and its diff ID.
func handLayer(t *testing.T, entries ...tarEnt) ([]byte, digest.Digest) {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, e := range entries {
		h := e.hdr
		h.ModTime = time.Unix(1700000000, 0)
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(raw.Bytes())
	_ = zw.Close()
	return gz.Bytes(), digest.FromBytes(raw.Bytes())
}

// runnable is an image of /hello plus layers; diffIDs, if given, are what
// its config claims for them (the truth otherwise).
func runnable(t *testing.T, layers [][]byte, diffIDs []digest.Digest) *testenv.Image {
	t.Helper()
	hello, helloID := testenv.LayerTar(t, []testenv.File{{Name: "hello", Data: testenv.HelloBinary(t), Mode: 0o755}})
	return testenv.ImageFromLayers(t, testenv.HostPlatform(), append([][]byte{hello}, layers...),
		append([]digest.Digest{helloID}, diffIDs...), ocispec.ImageConfig{Cmd: []string{"/hello"}})
}

// addIndexed puts im in the bucket and the registry, and with lazy mode
// on builds its lazy indexes with `s3snap index`.
func (h *hostileEnv) addIndexed(t *testing.T, repo string, im *testenv.Image) string {
	t.Helper()
	ref := h.add(t, repo, im, true)
	if h.lazy {
		h.index.ok(t, "index", "s3://"+h.bucket+"/ecr/"+repo+":v1")
	}
	return ref
}

// addHostile is addIndexed for an image whose layers may be refused by
// `s3snap index` (entries escaping the root): then it has no index, and
// says why.
func (h *hostileEnv) addHostile(t *testing.T, repo string, im *testenv.Image) string {
	t.Helper()
	ref := h.add(t, repo, im, true)
	if h.lazy {
		if stdout, stderr, code := h.index.run(t, "index", "s3://"+h.bucket+"/ecr/"+repo+":v1"); code != 0 {
			t.Logf("s3snap index refused the layer (exit %d): %s", code, lastLine(stdout+stderr))
		}
	}
	return ref
}

// pullAfterRestart pulls ref once containerd has reconnected to a
// restarted agent: its proxy-plugin client backs off up to a few seconds
// between dials, and pulls fail fast meanwhile, as kubelet's would, which
// retries them.
func (h *hostileEnv) pullAfterRestart(t *testing.T, ref string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := h.pullErr(t, ref)
		if err == nil {
			return
		}
		if time.Now().After(deadline) || !strings.Contains(out, "connect") {
			t.Fatalf("pull after the restart: %v\n%s", err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (h *hostileEnv) metric(t *testing.T, name string, labels ...string) float64 {
	return h.agent.Metric(t, name, labels...)
}

// TestAgentHostileImages pulls crafted images and damaged indexes through
// the agent, on containerd 1.7 and 2.x, eager and lazy. For every case the
// agent stays up (same PID, unless the case kills it), nothing lands
// outside the snapshot roots, nothing wrong is committed, and the pull
// ends with the right files or a clear error.
func TestAgentHostileImages(t *testing.T) {
	for _, version := range containerdVersions() {
		for _, mode := range []string{"eager", "lazy"} {
			t.Run("containerd-"+version+"/"+mode, func(t *testing.T) {
				testHostile(t, newHostileEnv(t, version, mode == "lazy"))
			})
		}
	}
}

func testHostile(t *testing.T, h *hostileEnv) {
	pid := h.agent.Pid()
	n := 0
	next := func() string { n++; return fmt.Sprintf("hostile/img%d", n) }

	t.Run("tar entries escaping the root", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			entries []tarEnt
		}{
			{"dotdot", []tarEnt{reg("../../../../../../../.."+h.outside+"/dotdot", "evil")}},
			{"absolute path", []tarEnt{reg(h.outside+"/abs", "evil")}},
			{"absolute symlink then write through it", []tarEnt{
				{hdr: tar.Header{Name: "abslink", Typeflag: tar.TypeSymlink, Linkname: h.outside, Mode: 0o777}},
				reg("abslink/through", "evil"),
			}},
			{"relative symlink out then write through it", []tarEnt{
				{hdr: tar.Header{Name: "rel", Typeflag: tar.TypeSymlink, Linkname: "../../../../../../../.." + h.outside, Mode: 0o777}},
				reg("rel/through2", "evil"),
			}},
			{"hard link to a file outside", []tarEnt{{hdr: tar.Header{Name: "hard", Typeflag: tar.TypeLink, Linkname: h.victim, Mode: 0o644}}}},
			{"relative hard link out", []tarEnt{{hdr: tar.Header{Name: "relhard", Typeflag: tar.TypeLink, Linkname: "../../../../../../../.." + h.victim, Mode: 0o644}}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				gz, id := handLayer(t, tc.entries...)
				ref := h.addHostile(t, next(), runnable(t, [][]byte{gz}, []digest.Digest{id}))
				out, err := h.pullErr(t, ref)
				h.checkSafe(t, pid)
				if err != nil {
					t.Logf("pull refused: %v: %s", err, lastLine(out))
					return
				}
				h.checkRight(t, ref, "esc", nil)
				h.checkSafe(t, pid)
			})
		}
	})

	t.Run("whiteouts with odd names", func(t *testing.T) {
		lower, lowerID := handLayer(t, reg("d/keep", "kept"), reg("top", "top"))
		for _, name := range []string{".wh.", "d/.wh.", "d/.wh..", "d/.wh...", ".wh..wh..opq", "d/.wh..wh..opq", "d/.wh..wh.", ".wh.d/x"} {
			t.Run(name, func(t *testing.T) {
				gz, id := handLayer(t, reg(name, ""), reg("d/new", "new"))
				ref := h.addHostile(t, next(), runnable(t, [][]byte{lower, gz}, []digest.Digest{lowerID, id}))
				out, err := h.pullErr(t, ref)
				h.checkSafe(t, pid)
				if err != nil {
					t.Logf("pull refused: %v: %s", err, lastLine(out))
					return
				}
				h.checkRight(t, ref, "wh", map[string][]byte{"/d/new": []byte("new")})
				h.checkSafe(t, pid)
			})
		}
	})

	t.Run("config whose diff ids lie", func(t *testing.T) {
		// The honest image's layer; the liar's config claims that diff ID
		// for a layer holding something else. Were the liar's layer
		// committed under the chain ID it asks for, the honest image
		// pulled next would reuse it and show the liar's file.
		honest, honestID := handLayer(t, reg("etc/motd", "honest"))
		evil, evilID := handLayer(t, reg("etc/motd", "evil"))
		if h.lazy {
			// An honest index of the liar's layer (indexes are by layer
			// digest): its diff ID is the truth, so it cannot be used.
			h.addIndexed(t, next(), runnable(t, [][]byte{evil}, []digest.Digest{evilID}))
		}
		liar := h.add(t, next(), runnable(t, [][]byte{evil}, []digest.Digest{honestID}), true)
		before := h.metric(t, "s3snap_snapshotter_fallbacks_total", "reason=corrupt") + h.metric(t, "s3snap_snapshotter_fallbacks_total", "reason=bad_index")
		out, err := h.pullErr(t, liar)
		h.checkSafe(t, pid)
		if err == nil {
			t.Errorf("pulling an image whose config lies about a diff id succeeded:\n%s", out)
		} else {
			t.Logf("pull refused: %s", lastLine(out))
		}
		if after := h.metric(t, "s3snap_snapshotter_fallbacks_total", "reason=corrupt") + h.metric(t, "s3snap_snapshotter_fallbacks_total", "reason=bad_index"); after <= before {
			t.Errorf("the agent did not refuse the lying layer (fallbacks corrupt+bad_index %v -> %v)", before, after)
		}
		ref := h.addIndexed(t, next(), runnable(t, [][]byte{honest}, []digest.Digest{honestID}))
		served := func() float64 {
			return h.metric(t, "s3snap_snapshotter_layers_provided_total") + h.metric(t, "s3snap_snapshotter_lazy_layers_total")
		}
		before = served()
		if out, err := h.pullErr(t, ref); err != nil {
			t.Fatalf("pull the honest image: %v\n%s", err, out)
		}
		if after := served(); after <= before {
			t.Errorf("the honest layer was not served from S3 (provided+lazy %v -> %v)", before, after)
		}
		h.checkRight(t, ref, "honest", map[string][]byte{"/etc/motd": []byte("honest")})
		h.checkSafe(t, pid)
	})

	t.Run("flipped byte in a layer blob", func(t *testing.T) {
		files := map[string][]byte{"/data/x": pseudoRandom(71, 1<<20)}
		gz, id := testenv.LayerTar(t, []testenv.File{{Name: "data/x", Data: files["/data/x"]}})
		ref := h.add(t, next(), runnable(t, [][]byte{gz}, []digest.Digest{id}), true)
		info, err := h.st.StatBlob(context.Background(), digest.FromBytes(gz))
		if err != nil {
			t.Fatal(err)
		}
		data := readObject(t, h.e, h.bucket, info.Key)
		data[len(data)/2] ^= 0x01
		putObject(t, h.e, h.bucket, info.Key, data)
		before := h.metric(t, "s3snap_snapshotter_fallbacks_total", "reason=corrupt")
		if out, err := h.pullErr(t, ref); err != nil {
			t.Fatalf("pull: %v\n%s", err, out)
		}
		h.checkSafe(t, pid)
		if after := h.metric(t, "s3snap_snapshotter_fallbacks_total", "reason=corrupt"); after <= before {
			t.Errorf("a flipped byte was not counted as corrupt (fallbacks{reason=corrupt} %v -> %v)", before, after)
		}
		h.checkRight(t, ref, "flipped", files)
	})

	if h.lazy {
		t.Run("damaged, oversized or garbage index", func(t *testing.T) {
			for i, tc := range []struct {
				name   string
				damage func(toc *lazy.TOC) []byte // nil: leave the TOC object alone
			}{
				{"garbage toc", func(*lazy.TOC) []byte { return []byte("not zstd, not json") }},
				{"whiteout with an empty target", func(toc *lazy.TOC) []byte {
					toc.Entries = append(toc.Entries, lazy.Entry{Name: "d/.wh.", Type: lazy.TypeReg, Mode: 0o644})
					return encodeTOC(t, toc)
				}},
				{"huge chunk", func(toc *lazy.TOC) []byte {
					last := len(toc.Chunks) - 1
					toc.DataSize += 1 << 40
					toc.Chunks[last].Size += 1 << 40
					return encodeTOC(t, toc)
				}},
				{"entry outside the root", func(toc *lazy.TOC) []byte {
					toc.Entries = append(toc.Entries, lazy.Entry{Name: "../../escape", Type: lazy.TypeDir, Mode: 0o755})
					return encodeTOC(t, toc)
				}},
				{"toc that inflates to gigabytes", func(*lazy.TOC) []byte {
					return zstdBomb(t)
				}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					files := map[string][]byte{"/data/y": pseudoRandom(uint64(80+i), 512<<10)}
					gz, id := testenv.LayerTar(t, []testenv.File{{Name: "data/y", Data: files["/data/y"]}})
					ref := h.addIndexed(t, next(), runnable(t, [][]byte{gz}, []digest.Digest{id}))
					key := lazy.Key(digest.FromBytes(gz), "toc")
					raw, err := h.st.GetExtra(context.Background(), key, 64<<20)
					if err != nil {
						t.Fatal(err)
					}
					toc, err := lazy.DecodeTOC(raw)
					if err != nil {
						t.Fatal(err)
					}
					if err := h.st.PutExtra(context.Background(), key, bytes.NewReader(tc.damage(toc))); err != nil {
						t.Fatal(err)
					}
					before := h.metric(t, "s3snap_snapshotter_fallbacks_total", "reason=bad_index")
					if out, err := h.pullErr(t, ref); err != nil {
						t.Fatalf("pull: %v\n%s", err, out)
					}
					h.checkSafe(t, pid)
					if after := h.metric(t, "s3snap_snapshotter_fallbacks_total", "reason=bad_index"); after <= before {
						t.Errorf("fallbacks{reason=bad_index} %v -> %v", before, after)
					}
					h.checkRight(t, ref, "badindex", files)
				})
			}
		})
	}

	t.Run("agent SIGKILLed mid-pull and restarted", func(t *testing.T) {
		files := map[string][]byte{"/data/k1": pseudoRandom(91, 2<<20), "/data/k2": pseudoRandom(92, 2<<20)}
		ref := h.addIndexed(t, next(), fileLayers(t, files))
		kill := h.proxy.Add(faultproxy.Rule{
			Method: http.MethodGet,
			Match:  layerData,
			Nth:    2,
			Fault:  faultproxy.Pass,
			Hook:   func(*http.Request) { h.agent.Kill() },
		})
		out, err := h.pullErr(t, ref)
		if kill.Fired() != 1 {
			t.Fatalf("the agent was not killed mid-pull")
		}
		t.Logf("pull with the agent killed: err=%v %s", err, lastLine(out))
		h.agent.StartAgain(t)
		pid = h.agent.Pid()
		h.pullAfterRestart(t, ref)
		h.checkRight(t, ref, "killed", files)
		h.checkSafe(t, pid)
	})

	// Last: the proxy stays closed.
	t.Run("S3 stopped mid-pull", func(t *testing.T) {
		files := map[string][]byte{"/data/s1": pseudoRandom(101, 2<<20), "/data/s2": pseudoRandom(102, 2<<20), "/data/s3": pseudoRandom(103, 2<<20)}
		ref := h.addIndexed(t, next(), fileLayers(t, files))
		down := h.proxy.Add(faultproxy.Rule{
			Method: http.MethodGet,
			Match:  layerData,
			Nth:    3,
			Fault:  faultproxy.Reset,
			Hook:   func(*http.Request) { go h.proxy.Close() },
		})
		start := time.Now()
		out, err := h.pullErr(t, ref)
		if down.Fired() != 1 {
			t.Fatalf("S3 was not stopped mid-pull")
		}
		t.Logf("pull with S3 stopped took %v", time.Since(start).Round(time.Millisecond))
		h.checkSafe(t, pid)
		if err != nil {
			t.Fatalf("pull with S3 stopped: %v\n%s", err, out)
		}
		got := h.runFiles(t, ref, "s3down", "/data/s1", "/data/s2", "/data/s3")
		for name, data := range files {
			line := hashLine(name, data)
			if !strings.Contains(got, line) {
				// A lazily mounted layer may not read with S3 gone: an
				// error, never other bytes.
				if !h.lazy || !strings.Contains(got, name+": ") {
					t.Errorf("%s in the container:\n%s", name, got)
				}
			}
		}
		h.checkSafe(t, pid)
	})
}

// layerData matches S3 reads of layer blobs and lazy indexes.
func layerData(r *http.Request) bool {
	return strings.Contains(r.URL.Path, "/blobs/") || strings.Contains(r.URL.Path, "/s3snap/lazy/")
}

// fileLayers is a runnable image with one layer per file, in name order.
func fileLayers(t *testing.T, files map[string][]byte) *testenv.Image {
	t.Helper()
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	var layers [][]byte
	var ids []digest.Digest
	for _, name := range names {
		gz, id := testenv.LayerTar(t, []testenv.File{{Name: strings.TrimPrefix(name, "/"), Data: files[name]}})
		layers, ids = append(layers, gz), append(ids, id)
	}
	return runnable(t, layers, ids)
}

func encodeTOC(t *testing.T, toc *lazy.TOC) []byte {
	t.Helper()
	b, err := toc.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
