package lazy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// tarEntry is one entry of a test layer.
type tarEntry struct {
	name, link string
	typ        byte
	data       []byte
	mode       int64
	xattrs     map[string]string
}

func reg(name string, data []byte) tarEntry {
	return tarEntry{name: name, typ: tar.TypeReg, data: data}
}
func dir(name string) tarEntry { return tarEntry{name: name, typ: tar.TypeDir, mode: 0o755} }

// layerBlob builds a gzip'd tar of entries and returns it with its diff ID.
func layerBlob(t *testing.T, entries ...tarEntry) ([]byte, digest.Digest) {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: mode, Linkname: e.link, Size: int64(len(e.data)),
			ModTime: time.Unix(1700000000, 0), Uid: 1000, Gid: 1001, Format: tar.FormatPAX}
		if e.typ == tar.TypeChar {
			hdr.Devmajor, hdr.Devminor = 1, 3
		}
		for k, v := range e.xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw.Bytes())
	zw.Close()
	return gz.Bytes(), digest.FromBytes(raw.Bytes())
}

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// built is a layer indexed in memory.
type built struct {
	toc  *TOC
	data []byte
	blob []byte
}

func build(t *testing.T, chunk int64, entries ...tarEntry) built {
	t.Helper()
	blob, diffID := layerBlob(t, entries...)
	var data bytes.Buffer
	toc, err := Build(context.Background(), digest.FromBytes(blob), bytes.NewReader(blob), &data, WithChunkSize(chunk), WithJobs(3))
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	if toc.DiffID != diffID {
		t.Fatalf("diff id %s, want %s", toc.DiffID, diffID)
	}
	// What a reader gets back from the bucket.
	enc, err := toc.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeTOC(enc)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return built{toc: back, data: data.Bytes(), blob: blob}
}

func (b built) layer(t *testing.T) *Layer {
	cache, err := NewCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	return NewLayer(b.toc, cache, func() (io.ReaderAt, error) { return bytes.NewReader(b.data), nil })
}

// readFile reads a regular file of the tree through the layer.
func readFile(l *Layer, n *Node) ([]byte, error) {
	buf := make([]byte, n.Entry.Size)
	_, err := l.ReadAt(buf, n.Entry.Offset)
	if err == io.EOF {
		err = nil
	}
	return buf, err
}

func find(t *testing.T, root *Node, p string) *Node {
	t.Helper()
	n := root
	for _, part := range bytes.Split([]byte(p), []byte("/")) {
		if n = n.Children[string(part)]; n == nil {
			t.Fatalf("%s not in the tree", p)
		}
	}
	return n
}

func TestTreeOverlaySemantics(t *testing.T) {
	big := random(1, 5000) // spans several 1 KiB chunks
	tests := []struct {
		name    string
		entries []tarEntry
		check   func(t *testing.T, root *Node, l *Layer)
	}{
		{
			name:    "files, content across chunks, implicit parents",
			entries: []tarEntry{reg("a/b/big", big), reg("small", []byte("hi")), {name: "x/exe", typ: tar.TypeReg, mode: 0o4755, data: []byte("#!")}},
			check: func(t *testing.T, root *Node, l *Layer) {
				for p, want := range map[string][]byte{"a/b/big": big, "small": []byte("hi"), "x/exe": []byte("#!")} {
					got, err := readFile(l, find(t, root, p))
					if err != nil || !bytes.Equal(got, want) {
						t.Errorf("%s: %d bytes, %v; want %d bytes", p, len(got), err, len(want))
					}
				}
				if a := find(t, root, "a"); !a.IsDir() || a.Entry.Mode != 0o755 {
					t.Errorf("implicit parent a: %+v", a.Entry)
				}
				if e := find(t, root, "x/exe").Entry; e.Mode != 0o4755 || e.UID != 1000 || e.GID != 1001 {
					t.Errorf("x/exe mode %o owner %d:%d, want 4755 1000:1001", e.Mode, e.UID, e.GID)
				}
			},
		},
		{
			name:    "whiteout becomes a 0:0 char device",
			entries: []tarEntry{dir("etc"), reg("etc/.wh.passwd", nil)},
			check: func(t *testing.T, root *Node, _ *Layer) {
				n := find(t, root, "etc/passwd")
				if n.Entry.Type != TypeChar || n.Entry.DevMajor != 0 || n.Entry.DevMinor != 0 || n.Entry.Mode != 0 {
					t.Errorf("whiteout: %+v", n.Entry)
				}
				if _, ok := find(t, root, "etc").Children[".wh.passwd"]; ok {
					t.Error("the .wh. entry itself is visible")
				}
			},
		},
		{
			name:    "opaque directory gets the overlay xattr",
			entries: []tarEntry{dir("var"), reg("var/.wh..wh..opq", nil), reg("var/new", []byte("n")), reg("var/.wh..wh.plnk", nil)},
			check: func(t *testing.T, root *Node, _ *Layer) {
				v := find(t, root, "var")
				if string(v.Entry.Xattrs[OpaqueXattr]) != "y" {
					t.Errorf("var xattrs %v, want %s=y", v.Entry.Xattrs, OpaqueXattr)
				}
				// containerd's applier turns ".wh..wh.plnk" into a whiteout
				// of ".wh.plnk", as it does any ".wh." name but the opaque
				// marker: the tree must show what it would.
				if names := v.Names(); len(names) != 2 || names[0] != ".wh.plnk" || names[1] != "new" {
					t.Errorf("var holds %v, want [.wh.plnk new]", names)
				}
			},
		},
		{
			name:    "hard links share a node",
			entries: []tarEntry{reg("bin/busybox", []byte("bb")), {name: "bin/sh", typ: tar.TypeLink, link: "bin/busybox"}, {name: "./bin/ls", typ: tar.TypeLink, link: "./bin/busybox"}},
			check: func(t *testing.T, root *Node, l *Layer) {
				bb, sh, ls := find(t, root, "bin/busybox"), find(t, root, "bin/sh"), find(t, root, "bin/ls")
				if bb != sh || bb != ls || bb.Nlink != 3 {
					t.Errorf("links: same node %v %v, nlink %d; want the same node, nlink 3", bb == sh, bb == ls, bb.Nlink)
				}
				if got, _ := readFile(l, ls); string(got) != "bb" {
					t.Errorf("bin/ls reads %q", got)
				}
			},
		},
		{
			name:    "symlinks and xattrs",
			entries: []tarEntry{{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"}, {name: "ping", typ: tar.TypeReg, data: []byte("p"), xattrs: map[string]string{"security.capability": "\x01\x00\x00\x02"}}},
			check: func(t *testing.T, root *Node, _ *Layer) {
				if e := find(t, root, "lib").Entry; e.Type != TypeSymlink || e.Linkname != "usr/lib" {
					t.Errorf("lib: %+v", e)
				}
				if v := find(t, root, "ping").Entry.Xattrs["security.capability"]; string(v) != "\x01\x00\x00\x02" {
					t.Errorf("ping capability xattr %q", v)
				}
			},
		},
		{
			name:    "a later entry replaces an earlier one; a dir entry keeps its contents",
			entries: []tarEntry{reg("f", []byte("old")), reg("f", []byte("new")), reg("d/keep", []byte("k")), {name: "d", typ: tar.TypeDir, mode: 0o700}},
			check: func(t *testing.T, root *Node, l *Layer) {
				if got, _ := readFile(l, find(t, root, "f")); string(got) != "new" {
					t.Errorf("f reads %q, want new", got)
				}
				if d := find(t, root, "d"); d.Entry.Mode != 0o700 || d.Children["keep"] == nil {
					t.Errorf("d: mode %o children %v", d.Entry.Mode, d.Names())
				}
			},
		},
		{
			name:    "devices and fifos",
			entries: []tarEntry{{name: "dev/null", typ: tar.TypeChar, mode: 0o666}, {name: "run/fifo", typ: tar.TypeFifo}},
			check: func(t *testing.T, root *Node, _ *Layer) {
				if e := find(t, root, "dev/null").Entry; e.Type != TypeChar || e.DevMajor != 1 || e.DevMinor != 3 {
					t.Errorf("dev/null: %+v", e)
				}
				if e := find(t, root, "run/fifo").Entry; e.Type != TypeFifo {
					t.Errorf("run/fifo: %+v", e)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := build(t, 1024, tc.entries...)
			root, err := Tree(b.toc)
			if err != nil {
				t.Fatalf("tree: %v", err)
			}
			tc.check(t, root, b.layer(t))
		})
	}
}

func TestBuildRejects(t *testing.T) {
	tests := []struct {
		name  string
		entry tarEntry
		want  error
	}{
		{"dot-dot", reg("../etc/passwd", []byte("x")), ErrUnsafePath},
		{"dot-dot inside", reg("a/../../x", []byte("x")), ErrUnsafePath},
		{"absolute", reg("/etc/passwd", []byte("x")), ErrUnsafePath},
		{"hard link out", tarEntry{name: "l", typ: tar.TypeLink, link: "../../etc/shadow"}, ErrUnsafePath},
		{"hard link absolute", tarEntry{name: "l", typ: tar.TypeLink, link: "/etc/shadow"}, ErrUnsafePath},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			blob, _ := layerBlob(t, reg("ok", []byte("fine")), tc.entry)
			_, err := Build(context.Background(), digest.FromBytes(blob), bytes.NewReader(blob), io.Discard)
			if !errors.Is(err, tc.want) {
				t.Fatalf("build: %v, want %v", err, tc.want)
			}
		})
	}
}

// A TOC is checked again when read: one naming a path outside the root,
// or not adding up, never mounts.
func TestDecodeTOCRejects(t *testing.T) {
	good := build(t, 1024, reg("a", []byte("aaa")), tarEntry{name: "l", typ: tar.TypeLink, link: "a"})
	tests := []struct {
		name   string
		mutate func(toc *TOC)
		want   error
	}{
		{"escaping name", func(toc *TOC) { toc.Entries[0].Name = "../a" }, ErrUnsafePath},
		{"absolute name", func(toc *TOC) { toc.Entries[0].Name = "/a" }, ErrUnsafePath},
		{"unclean name", func(toc *TOC) { toc.Entries[0].Name = "x/./a" }, ErrInvalidIndex},
		{"escaping hard link", func(toc *TOC) { toc.Entries[1].Linkname = "../../a" }, ErrUnsafePath},
		{"content past the chunks", func(toc *TOC) { toc.Entries[0].Size = 5000 }, ErrInvalidIndex},
		{"data size", func(toc *TOC) { toc.DataSize++ }, ErrInvalidIndex},
		{"version", func(toc *TOC) { toc.Version = Version + 1 }, ErrInvalidIndex},
		{"v1 with tar headers", func(toc *TOC) { toc.Version = 1 }, ErrInvalidIndex},
		{"no tar header", func(toc *TOC) { toc.Entries[0].Header = nil }, ErrInvalidIndex},
		{"mode not the header's", func(toc *TOC) { toc.Entries[0].Mode = 0o4755 }, ErrInvalidIndex},
		{"name not the header's", func(toc *TOC) { toc.Entries[0].Name = "b" }, ErrInvalidIndex},
		{"entry hidden in the trailer", func(toc *TOC) {
			toc.Trailer = append(append([]byte(nil), toc.Entries[1].Header...), toc.Trailer...)
			toc.Entries = toc.Entries[:1]
		}, ErrInvalidIndex},
		{"two entries in one header", func(toc *TOC) {
			toc.Entries[0].Header = append(append([]byte(nil), toc.Entries[1].Header...), toc.Entries[0].Header...)
		}, ErrInvalidIndex},
		{"chunk size", func(toc *TOC) { toc.ChunkSize = MaxChunkSize + 1 }, ErrInvalidIndex},
		{"unknown type", func(toc *TOC) { toc.Entries[1].Type = "socket" }, ErrInvalidIndex},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			toc := *good.toc
			toc.Entries = append([]Entry(nil), good.toc.Entries...)
			tc.mutate(&toc)
			enc, err := toc.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := DecodeTOC(enc); !errors.Is(err, tc.want) {
				t.Fatalf("decode: %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := DecodeTOC([]byte("not zstd")); !errors.Is(err, ErrInvalidIndex) {
		t.Errorf("garbage: %v, want ErrInvalidIndex", err)
	}
}

// A flipped byte in a data chunk is an error, never data, and is not
// cached; the other chunks still read, and prefetch reports the damage.
func TestCorruptChunk(t *testing.T) {
	a, b := random(2, 3000), random(3, 3000)
	good := build(t, 1024, reg("a", a), reg("b", b))
	for _, at := range []string{"middle", "first byte", "last byte"} {
		t.Run(at, func(t *testing.T) {
			bad := good
			bad.data = bytes.Clone(good.data)
			c := good.toc.Chunks[1] // inside a
			off := c.Offset + c.Size/2
			switch at {
			case "first byte":
				off = c.Offset
			case "last byte":
				off = c.Offset + c.Size - 1
			}
			bad.data[off] ^= 0x01
			l := bad.layer(t)
			root, err := Tree(bad.toc)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := readFile(l, find(t, root, "a")); !errors.Is(err, ErrCorruptChunk) {
				t.Fatalf("read a: %d bytes, err %v; want ErrCorruptChunk", len(got), err)
			}
			if l.cache.has(c.Digest) || l.present(1) {
				t.Error("the corrupt chunk was cached")
			}
			if got, err := readFile(l, find(t, root, "b")); err != nil || !bytes.Equal(got, b) {
				t.Errorf("read b: %v", err)
			}
			if err := l.Prefetch(context.Background(), 2, 4096); !errors.Is(err, ErrCorruptChunk) {
				t.Errorf("prefetch: %v, want ErrCorruptChunk", err)
			}
		})
	}
}

// Prefetch fills the cache; a second layer over the same cache then reads
// everything without its data object.
func TestPrefetchThenOffline(t *testing.T) {
	files := map[string][]byte{"a": random(4, 10000), "b": random(5, 1), "c/d": random(6, 7000)}
	var entries []tarEntry
	for _, n := range []string{"a", "b", "c/d"} {
		entries = append(entries, reg(n, files[n]))
	}
	b := build(t, 1024, entries...)
	cache, err := NewCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	l := NewLayer(b.toc, cache, func() (io.ReaderAt, error) { return bytes.NewReader(b.data), nil })
	if err := l.Prefetch(context.Background(), 3, 3000); err != nil {
		t.Fatalf("prefetch: %v", err)
	}
	if l.CachedBytes() != b.toc.StreamSize() {
		t.Errorf("cached %d bytes, want %d", l.CachedBytes(), b.toc.StreamSize())
	}
	offline := NewLayer(b.toc, cache, func() (io.ReaderAt, error) { return nil, errors.New("offline") })
	root, _ := Tree(b.toc)
	for name, want := range files {
		got, err := readFile(offline, find(t, root, name))
		if err != nil || sha256.Sum256(got) != sha256.Sum256(want) {
			t.Errorf("%s from the cache: %v", name, err)
		}
	}
}
