package lazy

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// Seeds beyond those added here are in testdata/fuzz/<FuzzName>/: valid
// layers and the hostile cases of hostile_test.go.

// FuzzDecodeTOC: whatever bytes the bucket holds, DecodeTOC either rejects
// them with ErrInvalidIndex or ErrUnsafePath, or returns a TOC whose tree
// builds, whose go-fuse inodes build, which reads (here from a data object
// of zeros: corrupt chunks, errors) without panicking or allocating past
// the bounds, and which encodes to a TOC that decodes again to the same.
// An input that is not a zstd frame is taken as the JSON inside one, so
// the fuzzer's edits reach the JSON decoder and Validate.
func FuzzDecodeTOC(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":2}`))
	// A valid v2 TOC (JSON, then its tar headers and trailer) to edit.
	if enc, err := buildTar(&testing.T{}, tarOf(&testing.T{}, tar.FormatPAX, 0, rebuildEntries()...), 1024).toc.Encode(); err == nil {
		if raw, err := zstdDecode(enc); err == nil {
			f.Add(raw)
		}
	}
	cache, err := NewCache(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	defer cache.Close()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		f.Fatal(err)
	}
	defer enc.Close()
	f.Fuzz(func(t *testing.T, b []byte) {
		if !bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
			b = enc.EncodeAll(b, nil)
		}
		toc, err := DecodeTOC(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidIndex) && !errors.Is(err, ErrUnsafePath) {
				t.Fatalf("decode: %v: neither ErrInvalidIndex nor ErrUnsafePath", err)
			}
			return
		}
		checkValidTOC(t, toc)
		enc, err := toc.Encode()
		if err != nil {
			t.Fatalf("encode a valid toc: %v", err)
		}
		back, err := DecodeTOC(enc)
		if err != nil {
			t.Fatalf("a valid toc, encoded, does not decode: %v", err)
		}
		if enc2, err := back.Encode(); err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("encode, decode, encode: not the same (%v)", err)
		}
		l := NewLayer(toc, cache, func() (io.ReaderAt, error) { return zeros(toc.DataSize), nil })
		p := make([]byte, min(toc.StreamSize(), 4096))
		if _, err := l.ReadAt(p, 0); err != nil && !errors.Is(err, ErrCorruptChunk) && err != io.EOF {
			t.Fatalf("read: %v", err)
		}
		if err := l.Prefetch(context.Background(), 2, 1<<20); err != nil && !errors.Is(err, ErrCorruptChunk) {
			t.Fatalf("prefetch: %v", err)
		}
		// Rebuilding from the stream the TOC describes never panics.
		if tr, err := toc.TarReader(io.LimitReader(zeroReader{}, toc.StreamSize())); err == nil {
			if _, err := io.Copy(io.Discard, tr); err != nil {
				t.Fatalf("rebuild from a stream of the right size: %v", err)
			}
		}
	})
}

func zstdDecode(b []byte) ([]byte, error) {
	dec, err := zstd.NewReader(nil)
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	return dec.DecodeAll(b, nil)
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// zeros is a data object of n zero bytes, never allocated.
type zeros int64

func (z zeros) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= int64(z) {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), int64(z)-off))
	clear(p[:n])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// checkValidTOC checks what a validated TOC promises: its tree builds
// (with and without implied directories' attributes), every name in it is
// one a directory can hold, and go-fuse builds its inodes without a panic.
func checkValidTOC(t *testing.T, toc *TOC) {
	t.Helper()
	root, err := Tree(toc)
	if err != nil {
		t.Fatalf("a valid toc's tree: %v", err)
	}
	checkNode(t, root, 0)
	attrs := map[string]Entry{}
	for _, d := range ImplicitDirs(toc) {
		attrs[d] = Entry{Mode: 0o2750, UID: 1, GID: 2, Xattrs: map[string][]byte{"user.x": []byte("y"), "trusted.z": nil}}
	}
	if _, err := Tree(toc, WithImplicitDirs(attrs)); err != nil {
		t.Fatalf("a valid toc's tree with implied directories: %v", err)
	}
}

func checkNode(t *testing.T, n *Node, depth int) {
	if depth > MaxPathDepth {
		t.Fatalf("%.64q: deeper than %d", n.Entry.Name, MaxPathDepth)
	}
	if n.IsDir() != (n.Children != nil) {
		t.Fatalf("%.64q: a %s with children %v", n.Entry.Name, n.Entry.Type, n.Children != nil)
	}
	for name, c := range n.Children {
		if name == "" || name == "." || name == ".." || strings.Contains(name, "/") || len(name) > MaxNameLen {
			t.Fatalf("%.64q holds %.64q", n.Entry.Name, name)
		}
		if c.IsDir() {
			checkNode(t, c, depth+1)
		}
	}
}

// tocOf assembles a TOC from a line per entry: a type letter (d reg
// directory, f file, l symlink, h hard link, c b p devices and fifos, any
// other an unknown type), the name, and after a tab the link target.
// Files hold as many bytes as their line is long, modulo 5, in chunks of
// 4 bytes.
func tocOf(spec string) *TOC {
	toc := &TOC{Version: Version, Layer: digest.FromString("layer"), DiffID: digest.FromString("diff"), ChunkSize: 4}
	types := map[byte]Type{'d': TypeDir, 'f': TypeReg, 'l': TypeSymlink, 'h': TypeHardlink, 'c': TypeChar, 'b': TypeBlock, 'p': TypeFifo}
	var end int64
	for _, line := range strings.Split(spec, "\n") {
		if line == "" {
			continue
		}
		typ, ok := types[line[0]]
		if !ok {
			typ = Type(line[:1])
		}
		name, link, _ := strings.Cut(line[1:], "\t")
		e := Entry{Name: name, Type: typ, Linkname: link, Mode: 0o644}
		if typ == TypeReg {
			e.Offset, e.Size = end, int64(len(line)%5)
			end += e.Size
		}
		toc.Entries = append(toc.Entries, e)
	}
	for off := int64(0); off < end; off += toc.ChunkSize {
		toc.Chunks = append(toc.Chunks, Chunk{Offset: toc.DataSize, Size: 8, Digest: digest.FromString("chunk")})
		toc.DataSize += 8
	}
	return toc
}

// FuzzTree: whatever names, types and link targets a TOC holds, Validate
// and Tree never panic, and a TOC that validates has a tree.
func FuzzTree(f *testing.F) {
	for _, s := range []string{
		"ddir\nfdir/file\nhdir/link\tdir/file\nldir/sym\t../x",
		"fd/.wh.", "f.wh.", "fa/.wh..", "fa/.wh...", "fa/.wh..wh..opq", "fa/.wh..wh.plnk",
		"dd\nhl\td", "hl\tf\nff", "fa/b/c\nfa", "fa\nfa/b", "d\nf\nl\tt", "l\t",
		"f" + strings.Repeat("x/", 300) + "x", "f" + strings.Repeat("n", 64<<10),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		toc := tocOf(spec)
		verr := toc.Validate()
		if verr != nil && !errors.Is(verr, ErrInvalidIndex) && !errors.Is(verr, ErrUnsafePath) {
			t.Fatalf("validate: %v: neither ErrInvalidIndex nor ErrUnsafePath", verr)
		}
		_, terr := Tree(toc)
		_ = ImplicitDirs(toc)
		if verr == nil {
			if terr != nil {
				t.Fatalf("valid, but the tree: %v", terr)
			}
			checkValidTOC(t, toc)
		}
	})
}

// FuzzBuild: whatever a layer blob holds, Build never panics, an index it
// builds is one the loader accepts, and it rebuilds the layer's tar byte
// for byte.
func FuzzBuild(f *testing.F) {
	f.Add([]byte{})
	for _, format := range []tar.Format{tar.FormatPAX, tar.FormatGNU} {
		f.Add(tarOf(&testing.T{}, format, 0, rebuildEntries()[:12]...))
	}
	f.Fuzz(func(t *testing.T, blob []byte) {
		var data bytes.Buffer
		toc, err := Build(context.Background(), digest.FromBytes(blob), bytes.NewReader(blob), &data,
			WithChunkSize(64), WithJobs(1), withStreamLimit(1<<20))
		if err != nil {
			return
		}
		enc, err := toc.Encode()
		if err != nil {
			t.Fatalf("encode a built toc: %v", err)
		}
		back, err := DecodeTOC(enc)
		if err != nil {
			t.Fatalf("the loader rejects a built toc: %v", err)
		}
		checkValidTOC(t, back)
		raw, err := io.ReadAll(decompressed(blob))
		if err != nil {
			t.Fatalf("built, but the blob does not decompress: %v", err)
		}
		tr, err := back.TarReader(back.DataStream(bytes.NewReader(data.Bytes())))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(tr)
		if err != nil || !bytes.Equal(got, raw) {
			t.Fatalf("rebuilt %d bytes (%v), not the layer's %d", len(got), err, len(raw))
		}
	})
}

// decompressed is what Build reads from a blob.
func decompressed(blob []byte) io.Reader {
	ds, err := compression.DecompressStream(bytes.NewReader(blob))
	if err != nil {
		return iotest.ErrReader(err)
	}
	return ds
}
