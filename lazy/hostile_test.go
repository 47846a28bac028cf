package lazy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// hostileBase is a small valid layer the hostile cases below edit:
// 0 "d" dir, 1 "d/a" file, 2 "l" hard link to d/a, 3 "s" symlink, 4 "dev/null".
func hostileBase(t *testing.T) built {
	return build(t, 1024, dir("d"), reg("d/a", []byte("aaa")),
		tarEntry{name: "l", typ: tar.TypeLink, link: "d/a"},
		tarEntry{name: "s", typ: tar.TypeSymlink, link: "d/a"},
		tarEntry{name: "dev/null", typ: tar.TypeChar, mode: 0o666})
}

func cloneTOC(toc *TOC) *TOC {
	c := *toc
	c.Chunks = append([]Chunk(nil), toc.Chunks...)
	c.Entries = append([]Entry(nil), toc.Entries...)
	return &c
}

func deepName(n int) string { return strings.TrimSuffix(strings.Repeat("x/", n), "/") }

func manyXattrs(n, size int) map[string][]byte {
	x := map[string][]byte{}
	for i := range n {
		x[fmt.Sprintf("user.k%d", i)] = make([]byte, size)
	}
	return x
}

// hostileTOC is a valid TOC edited into one the loader must reject.
type hostileTOC struct {
	name   string
	mutate func(toc *TOC)
	want   error
}

// hostileTOCs are the edits of hostileBase that DecodeTOC rejects; the
// fuzz seeds (testdata/fuzz/FuzzDecodeTOC) are these, encoded. Each
// passed the loader before its bounds existed, but for "file size
// overflowing the stream".
func hostileTOCs() []hostileTOC {
	return []hostileTOC{
		// A whiteout hiding "", "." or ".." made go-fuse panic in Prepare.
		{"whiteout of nothing d/.wh.", func(toc *TOC) { toc.Entries[1].Name = "d/.wh." }, ErrUnsafePath},
		{"whiteout of nothing .wh.", func(toc *TOC) { toc.Entries[3].Name = ".wh." }, ErrUnsafePath},
		{"whiteout of the directory d/.wh..", func(toc *TOC) { toc.Entries[3].Name = "d/.wh.." }, ErrUnsafePath},
		{"whiteout of the parent d/.wh...", func(toc *TOC) { toc.Entries[3].Name = "d/.wh..." }, ErrUnsafePath},
		// A chunk of 1 TiB made prefetch allocate it.
		{"huge chunk", func(toc *TOC) { toc.Chunks[0].Size = 1 << 40; toc.DataSize = 1 << 40 }, ErrInvalidIndex},
		{"chunk larger than its frame can be", func(toc *TOC) {
			toc.DataSize += 5000 - toc.Chunks[0].Size
			toc.Chunks[0].Size = 5000 // a 3-byte chunk
		}, ErrInvalidIndex},
		// Two chunks whose sizes overflow int64: offsets wrap around.
		{"overflowing chunk offsets", func(toc *TOC) {
			toc.Entries[1].Size = 1025
			toc.Chunks = []Chunk{
				{Offset: 0, Size: math.MaxInt64, Digest: toc.Chunks[0].Digest},
				{Offset: math.MaxInt64, Size: math.MaxInt64, Digest: toc.Chunks[0].Digest},
			}
			toc.DataSize = -2 // MaxInt64 + MaxInt64, wrapped
		}, ErrInvalidIndex},
		{"file size overflowing the stream", func(toc *TOC) { toc.Entries[1].Size = math.MaxInt64 }, ErrInvalidIndex},
		{"deep path", func(toc *TOC) { toc.Entries[3].Name = deepName(300) }, ErrInvalidIndex},
		{"64k-byte name", func(toc *TOC) { toc.Entries[3].Name = strings.Repeat("n", 64<<10) }, ErrInvalidIndex},
		{"256-byte component", func(toc *TOC) { toc.Entries[3].Name = "d/" + strings.Repeat("n", 256) }, ErrInvalidIndex},
		{"4097-byte path", func(toc *TOC) { toc.Entries[3].Name = strings.Repeat("nnnnnnn/", 512) + "n" }, ErrInvalidIndex},
		{"hard link to a directory", func(toc *TOC) { toc.Entries[2].Linkname = "d" }, ErrInvalidIndex},
		{"hard link to a later entry", func(toc *TOC) { toc.Entries[2].Linkname = "s" }, ErrInvalidIndex},
		{"hard link to nothing", func(toc *TOC) { toc.Entries[2].Linkname = "nope" }, ErrInvalidIndex},
		{"hard link too deep", func(toc *TOC) { toc.Entries[2].Linkname = deepName(300) }, ErrUnsafePath},
		{"symlink target of 5000 bytes", func(toc *TOC) { toc.Entries[3].Linkname = strings.Repeat("t", 5000) }, ErrInvalidIndex},
		{"empty symlink target", func(toc *TOC) { toc.Entries[3].Linkname = "" }, ErrInvalidIndex},
		{"link target on a file", func(toc *TOC) { toc.Entries[1].Linkname = "x" }, ErrInvalidIndex},
		{"200 xattrs", func(toc *TOC) { toc.Entries[3].Xattrs = manyXattrs(200, 1) }, ErrInvalidIndex},
		{"70 KiB xattr", func(toc *TOC) { toc.Entries[3].Xattrs = manyXattrs(1, 70<<10) }, ErrInvalidIndex},
		{"xattrs of 300 KiB together", func(toc *TOC) { toc.Entries[3].Xattrs = manyXattrs(5, 60<<10) }, ErrInvalidIndex},
		{"xattr name with NUL", func(toc *TOC) { toc.Entries[3].Xattrs = map[string][]byte{"user.a\x00b": nil} }, ErrInvalidIndex},
		{"empty xattr name", func(toc *TOC) { toc.Entries[3].Xattrs = map[string][]byte{"": []byte("v")} }, ErrInvalidIndex},
		{"negative uid", func(toc *TOC) { toc.Entries[3].UID = -1 }, ErrInvalidIndex},
		{"uid past 32 bits", func(toc *TOC) { toc.Entries[3].GID = 1 << 33 }, ErrInvalidIndex},
		{"negative device number", func(toc *TOC) { toc.Entries[4].DevMinor = -1 }, ErrInvalidIndex},
		{"device numbers on a fifo", func(toc *TOC) { toc.Entries[4].Type = TypeFifo }, ErrInvalidIndex},
		{"root is a symlink", func(toc *TOC) { toc.Entries[3].Name = "" }, ErrInvalidIndex},
		{"parent is a file", func(toc *TOC) { toc.Entries[3].Name = "d/a/s" }, ErrInvalidIndex},
		{"data size", func(toc *TOC) { toc.DataSize++ }, ErrInvalidIndex},
	}
}

// A TOC from the bucket is untrusted: each of these is rejected by
// DecodeTOC with a clear error, and none panics or allocates what it
// claims.
func TestDecodeTOCRejectsHostile(t *testing.T) {
	good := hostileBase(t)
	// Each case against v1 too: there the edit is not caught as a
	// mismatch with the tar header, so the check it is about must.
	v1 := asV1(good.toc)
	for _, tc := range hostileTOCs() {
		for _, base := range []*TOC{good.toc, v1} {
			t.Run(fmt.Sprintf("%s v%d", tc.name, base.Version), func(t *testing.T) {
				toc := cloneTOC(base)
				tc.mutate(toc)
				enc, err := toc.Encode()
				if err != nil {
					t.Fatal(err)
				}
				got, err := DecodeTOC(enc)
				if !errors.Is(err, tc.want) {
					t.Fatalf("decode: %v, want %v", err, tc.want)
				}
				if got != nil {
					t.Error("a toc returned with the error")
				}
				if len(err.Error()) > 1024 {
					t.Errorf("error of %d bytes: it should not echo a hostile name whole", len(err.Error()))
				}
			})
		}
	}
}

// asV1 is toc in format v1: no tar headers.
func asV1(toc *TOC) *TOC {
	c := cloneTOC(toc)
	c.Version, c.Trailer, c.TrailerSize = 1, nil, 0
	for i := range c.Entries {
		c.Entries[i].Header, c.Entries[i].HeaderSize = nil, 0
	}
	return c
}

// zstdOf compresses parts as one stream.
func zstdOf(t *testing.T, parts ...func(w io.Writer)) []byte {
	t.Helper()
	var b bytes.Buffer
	zw, err := zstd.NewWriter(&b, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		p(zw)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// A small TOC object must not expand without bound (the decoder's memory
// limit does not bound a stream), and a valid JSON object followed by
// anything else is not a TOC.
func TestDecodeTOCBoundsDecompression(t *testing.T) {
	good := hostileBase(t)
	raw, err := json.Marshal(asV1(good.toc)) // JSON alone: v2 has tar headers after it
	if err != nil {
		t.Fatal(err)
	}
	spaces := bytes.Repeat([]byte(" "), 1<<20)
	bomb := zstdOf(t, func(w io.Writer) {
		for range 300 { // 300 MiB of whitespace before a valid TOC
			w.Write(spaces)
		}
		w.Write(raw)
	})
	t.Logf("%d bytes decompressing to %d MiB", len(bomb), 300)
	if _, err := DecodeTOC(bomb); !errors.Is(err, ErrInvalidIndex) {
		t.Errorf("bomb: %v, want ErrInvalidIndex", err)
	}
	trailing := zstdOf(t, func(w io.Writer) { w.Write(raw); w.Write([]byte(`{"version":1}`)) })
	if _, err := DecodeTOC(trailing); !errors.Is(err, ErrInvalidIndex) {
		t.Errorf("trailing data: %v, want ErrInvalidIndex", err)
	}
	if _, err := DecodeTOC(zstdOf(t, func(w io.Writer) { w.Write(raw); w.Write([]byte("\n")) })); err != nil {
		t.Errorf("trailing newline: %v", err)
	}
	// v2: exactly the tar headers the JSON sizes, after one newline.
	enc, err := good.toc.Encode()
	if err != nil {
		t.Fatal(err)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	v2, err := dec.DecodeAll(enc, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"a byte more":       append(append([]byte(nil), v2...), 0),
		"a byte less":       v2[:len(v2)-1],
		"no headers":        v2[:bytes.IndexByte(v2, '\n')],
		"space not newline": append(append(append([]byte(nil), v2[:bytes.IndexByte(v2, '\n')]...), ' '), v2[bytes.IndexByte(v2, '\n')+1:]...),
	} {
		if _, err := DecodeTOC(zstdOf(t, func(w io.Writer) { w.Write(b) })); !errors.Is(err, ErrInvalidIndex) {
			t.Errorf("v2, %s: %v, want ErrInvalidIndex", name, err)
		}
	}
	if _, err := DecodeTOC(zstdOf(t, func(w io.Writer) { w.Write(v2) })); err != nil {
		t.Errorf("v2 as encoded: %v", err)
	}
}

// More entries than a TOC may hold is an error, not a million inodes.
func TestValidateEntryCount(t *testing.T) {
	good := hostileBase(t)
	toc := cloneTOC(good.toc)
	extra := make([]Entry, 1<<20)
	for i := range extra {
		extra[i] = Entry{Name: "d", Type: TypeDir, Mode: 0o755}
	}
	toc.Entries = append(toc.Entries, extra...)
	if err := toc.Validate(); !errors.Is(err, ErrInvalidIndex) {
		t.Fatalf("validate: %v, want ErrInvalidIndex", err)
	}
}

// rawTar writes a tar by hand: what archive/tar's writer refuses to
// produce (PAX sparse headers) is what a hostile layer holds.
type rawTar struct{ bytes.Buffer }

func (r *rawTar) header(name string, typ byte, size int64) {
	var h [512]byte
	copy(h[0:], name)
	copy(h[100:], "0000644\x00")
	copy(h[108:], "0000000\x00")
	copy(h[116:], "0000000\x00")
	copy(h[124:], fmt.Sprintf("%011o\x00", size))
	copy(h[136:], fmt.Sprintf("%011o\x00", time.Unix(1700000000, 0).Unix()))
	h[156] = typ
	copy(h[257:], "ustar\x0000")
	copy(h[148:], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:], fmt.Sprintf("%06o\x00 ", sum))
	r.Write(h[:])
}

func (r *rawTar) data(b []byte) {
	r.Write(b)
	r.Write(make([]byte, (512-len(b)%512)%512))
}

func (r *rawTar) pax(records map[string]string) {
	var b strings.Builder
	for k, v := range records {
		rec := " " + k + "=" + v + "\n"
		l := len(rec) + 1 // the record's length counts its own digits
		for l != len(rec)+len(strconv.Itoa(l)) {
			l = len(rec) + len(strconv.Itoa(l))
		}
		fmt.Fprintf(&b, "%d%s", l, rec)
	}
	r.header("PaxHeaders/x", 'x', int64(b.Len()))
	r.data([]byte(b.String()))
}

func (r *rawTar) end() []byte {
	r.Write(make([]byte, 1024))
	return r.Bytes()
}

func gz(b []byte) []byte {
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.Write(b)
	zw.Close()
	return out.Bytes()
}

// A layer tar is untrusted too: the index builder rejects what the loader
// would, at the entry, without allocating what a header claims.
func TestBuildRejectsHostile(t *testing.T) {
	deepXattrs := map[string]string{}
	for i := range 200 {
		deepXattrs[fmt.Sprintf("user.k%d", i)] = "v"
	}
	tests := []struct {
		name    string
		entries []tarEntry
		want    error
	}{
		{"whiteout of nothing d/.wh.", []tarEntry{dir("d"), reg("d/.wh.", nil)}, ErrUnsafePath},
		{"whiteout of nothing .wh.", []tarEntry{reg(".wh.", nil)}, ErrUnsafePath},
		{"whiteout of the directory a/.wh..", []tarEntry{reg("a/.wh..", nil)}, ErrUnsafePath},
		{"whiteout of the parent a/.wh...", []tarEntry{reg("a/.wh...", nil)}, ErrUnsafePath},
		{"64k-byte name", []tarEntry{reg(strings.Repeat("n", 64<<10), []byte("x"))}, ErrInvalidIndex},
		{"deep path", []tarEntry{reg(deepName(300), []byte("x"))}, ErrInvalidIndex},
		{"hard link to a directory", []tarEntry{dir("d"), {name: "l", typ: tar.TypeLink, link: "d"}}, ErrInvalidIndex},
		{"hard link to a later entry", []tarEntry{{name: "l", typ: tar.TypeLink, link: "f"}, reg("f", []byte("x"))}, ErrInvalidIndex},
		{"symlink target of 5000 bytes", []tarEntry{{name: "s", typ: tar.TypeSymlink, link: strings.Repeat("t", 5000)}}, ErrInvalidIndex},
		{"200 xattrs", []tarEntry{{name: "f", typ: tar.TypeReg, xattrs: deepXattrs}}, ErrInvalidIndex},
		{"70 KiB xattr", []tarEntry{{name: "f", typ: tar.TypeReg, xattrs: map[string]string{"user.big": strings.Repeat("v", 70<<10)}}}, ErrInvalidIndex},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			blob, _ := layerBlob(t, append([]tarEntry{reg("ok", []byte("fine"))}, tc.entries...)...)
			_, err := Build(context.Background(), digest.FromBytes(blob), bytes.NewReader(blob), io.Discard)
			if !errors.Is(err, tc.want) {
				t.Fatalf("build: %v, want %v", err, tc.want)
			}
		})
	}

	// A header claiming 10 GiB with a few bytes behind it fails at the
	// end of the tar; a sparse file (claiming 2 TiB) fails at its header.
	// Neither allocates what it claims.
	t.Run("10 GiB claim, truncated", func(t *testing.T) {
		var r rawTar
		r.header("big", '0', 10<<30)
		r.data([]byte("hello"))
		blob := gz(r.Bytes())
		start := time.Now()
		if _, err := Build(context.Background(), digest.FromBytes(blob), bytes.NewReader(blob), io.Discard); err == nil {
			t.Fatal("build succeeded")
		} else {
			t.Logf("%v (%v)", err, time.Since(start))
		}
	})
	t.Run("2 TiB sparse claim", func(t *testing.T) {
		var r rawTar
		r.pax(map[string]string{"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.size": fmt.Sprint(int64(2) << 40), "GNU.sparse.map": "0,5", "GNU.sparse.numblocks": "1"})
		r.header("big", '0', 5)
		r.data([]byte("hello"))
		blob := gz(r.end())
		start := time.Now()
		_, err := Build(context.Background(), digest.FromBytes(blob), bytes.NewReader(blob), io.Discard)
		if !errors.Is(err, ErrInvalidIndex) {
			t.Fatalf("build: %v, want ErrInvalidIndex", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("took %v: the claim was read, not refused", d)
		}
		// Sparse files are refused (format v2 could not rebuild them).
		if !strings.Contains(err.Error(), "sparse") {
			t.Errorf("build: %v, want the sparse file refused", err)
		}
	})
}
