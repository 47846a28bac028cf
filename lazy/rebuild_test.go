package lazy

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// tarOf writes hdrs (with contents) in format f, then pads the archive
// to a multiple of record bytes, as GNU tar pads to its blocking factor.
func tarOf(t *testing.T, f tar.Format, record int, hdrs ...tarFile) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range hdrs {
		hdr := h.hdr
		if hdr.Typeflag != tar.TypeXGlobalHeader {
			hdr.Format = f
		}
		if hdr.ModTime.IsZero() && hdr.Typeflag != tar.TypeXGlobalHeader {
			hdr.ModTime = time.Unix(1700000000, 123456789)
		}
		hdr.Size = int64(len(h.data))
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(h.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if record > 0 && b.Len()%record != 0 {
		b.Write(make([]byte, record-b.Len()%record))
	}
	return b.Bytes()
}

type tarFile struct {
	hdr  tar.Header
	data []byte
}

func file(name string, data []byte) tarFile {
	return tarFile{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1000, Gid: 1000}, data: data}
}

// rebuildEntries covers what a layer tar holds: long names and link
// targets (PAX records or GNU 'L'/'K' blocks, by format), hard links,
// symlinks, devices, a fifo, xattrs, a setuid file, empty files, sizes on
// and off block boundaries, files spanning chunks.
func rebuildEntries() []tarFile {
	long := strings.Repeat("long-directory-name/", 8) + "file-with-a-long-name"
	return []tarFile{
		{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
		file("etc/passwd", []byte("root:x:0:0::/root:/bin/sh\n")),
		file("empty", nil),
		file("block", bytes.Repeat([]byte{7}, 512)),
		file("big", random(1, 5000)),
		file(long, random(2, 1500)),
		{hdr: tar.Header{Name: "bin/su", Typeflag: tar.TypeReg, Mode: 0o4755}, data: []byte("#!/bin/sh\n")},
		{hdr: tar.Header{Name: "hard", Typeflag: tar.TypeLink, Linkname: long}},
		{hdr: tar.Header{Name: "sym", Typeflag: tar.TypeSymlink, Linkname: "/" + long}},
		{hdr: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{hdr: tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o660, Devmajor: 8}},
		{hdr: tar.Header{Name: "fifo", Typeflag: tar.TypeFifo, Mode: 0o600}},
		{hdr: tar.Header{Name: "caps", Typeflag: tar.TypeReg, Mode: 0o755,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "SCHILY.xattr.user.k": "v"}}, data: []byte("x")},
		{hdr: tar.Header{Name: "dir/.wh..wh..opq", Typeflag: tar.TypeReg}},
		{hdr: tar.Header{Name: "dir/.wh.gone", Typeflag: tar.TypeReg}},
	}
}

// The rebuilt tar is the original, byte for byte, whatever the format,
// and verifies against its diff ID, read from the data object in one
// stream and through a Layer.
func TestRebuildRoundTrip(t *testing.T) {
	pax := rebuildEntries()
	gnu := rebuildEntries()[:12] // archive/tar writes no xattrs in the GNU format
	gnu[3].hdr.Uname, gnu[3].hdr.Gname = "someone", "group"
	global := append([]tarFile{{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, PAXRecords: map[string]string{"comment": "global"}}}}, pax...)
	tests := []struct {
		name string
		tar  []byte
	}{
		{"pax", tarOf(t, tar.FormatPAX, 0, pax...)},
		{"gnu, 10 KiB records", tarOf(t, tar.FormatGNU, 10240, gnu...)},
		{"pax global header first", tarOf(t, tar.FormatPAX, 0, global...)},
		{"pax global header last", tarOf(t, tar.FormatPAX, 0, append(pax[:3:3], global[0])...)},
		{"empty archive", tarOf(t, tar.FormatPAX, 0)},
		{"no end-of-archive blocks", noEnd(tarOf(t, tar.FormatPAX, 0, pax[:3]...))},
	}
	for _, tc := range tests {
		for _, chunk := range []int64{64, 1024, DefaultChunkSize} {
			t.Run(tc.name, func(t *testing.T) {
				b := buildTar(t, tc.tar, chunk)
				if tc.name == "gnu, 10 KiB records" && !bytes.Contains(tc.tar, []byte("././@LongLink")) {
					t.Fatal("the gnu tar holds no long-name block")
				}
				tr, err := b.toc.TarReader(b.toc.DataStream(bytes.NewReader(b.data)))
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, tc.tar) {
					t.Fatalf("rebuilt %d bytes, not the %d of the tar", len(got), len(tc.tar))
				}
				diffID := digest.FromBytes(tc.tar)
				if err := b.toc.Verify(context.Background(), b.toc.DataStream(bytes.NewReader(b.data)), diffID); err != nil {
					t.Fatalf("verify: %v", err)
				}
				if err := b.layer(t).Verify(context.Background(), diffID); err != nil {
					t.Fatalf("verify through a layer: %v", err)
				}
			})
		}
	}
}

// noEnd drops archive/tar's two end-of-archive blocks.
func noEnd(b []byte) []byte { return b[:len(b)-1024] }

// buildTar indexes an uncompressed tar (zstd-compressed as a blob) and
// returns the index as the loader reads it.
func buildTar(t *testing.T, raw []byte, chunk int64) built {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	blob := enc.EncodeAll(raw, nil)
	enc.Close()
	var data bytes.Buffer
	toc, err := Build(context.Background(), digest.FromBytes(blob), bytes.NewReader(blob), &data, WithChunkSize(chunk), WithJobs(2))
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	if toc.DiffID != digest.FromBytes(raw) {
		t.Fatalf("diff id %s, want %s", toc.DiffID, digest.FromBytes(raw))
	}
	b, err := toc.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeTOC(b)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return built{toc: back, data: data.Bytes(), blob: blob}
}

// An index whose data is another layer's, consistent with its own TOC
// (every chunk matches its digest, the TOC names this layer and its diff
// ID), passes every check but the rebuilt tar's: verification fails, the
// layer is marked bad, reads fail, the failure is counted.
func TestVerifySwappedData(t *testing.T) {
	a := build(t, 1024, reg("bin/sh", []byte("the real shell")), reg("etc/motd", []byte("hello")))
	b := build(t, 1024, reg("bin/sh", []byte("#!evil shell!!")), reg("etc/motd", []byte("owned")))
	forged := cloneTOC(b.toc)
	forged.Layer, forged.DiffID = a.toc.Layer, a.toc.DiffID
	enc, err := forged.Encode()
	if err != nil {
		t.Fatal(err)
	}
	toc, err := DecodeTOC(enc)
	if err != nil {
		t.Fatalf("the forged toc is consistent, the loader takes it: %v", err)
	}
	l := built{toc: toc, data: b.data}.layer(t)
	before := counterValue(t, verifyFailures)
	n := toc.Entries[0]
	p := make([]byte, n.Size)
	if _, err := l.ReadFileAt(p, n.Offset, n.Offset+n.Size); err != nil || string(p) != "#!evil shell!!" {
		t.Fatalf("before the check: %q, %v", p, err)
	}
	err = l.Verify(context.Background(), a.toc.DiffID)
	if !errors.Is(err, ErrMismatch) || !errors.Is(err, ErrInvalidIndex) {
		t.Fatalf("verify: %v, want ErrMismatch", err)
	}
	if got := counterValue(t, verifyFailures) - before; got != 1 {
		t.Errorf("verify failures counted %v, want 1", got)
	}
	if _, err := l.ReadFileAt(p, n.Offset, n.Offset+n.Size); !errors.Is(err, ErrBadLayer) {
		t.Fatalf("read after the check: %v, want ErrBadLayer", err)
	}
	if l.Bad() == nil {
		t.Error("Bad() is nil")
	}
	// The diff ID the image names decides, not the TOC's.
	if err := a.layer(t).Verify(context.Background(), b.toc.DiffID); !errors.Is(err, ErrMismatch) {
		t.Errorf("verify against another diff id: %v, want ErrMismatch", err)
	}
	// Data one byte short of the TOC is caught too.
	short := a.toc.DataStream(bytes.NewReader(a.data[:len(a.data)-1]))
	if err := a.toc.Verify(context.Background(), short, a.toc.DiffID); err == nil {
		t.Error("verify of a truncated data object passed")
	}
}

// A v1 index cannot be verified, and says so.
func TestVerifyV1(t *testing.T) {
	a := build(t, 1024, reg("f", []byte("content")))
	v1 := asV1(a.toc)
	enc, err := v1.Encode()
	if err != nil {
		t.Fatal(err)
	}
	toc, err := DecodeTOC(enc)
	if err != nil {
		t.Fatalf("a v1 toc is still read: %v", err)
	}
	before := counterValue(t, layersUnverified)
	l := built{toc: toc, data: a.data}.layer(t)
	if err := l.Verify(context.Background(), a.toc.DiffID); !errors.Is(err, ErrUnverifiable) {
		t.Fatalf("verify v1: %v, want ErrUnverifiable", err)
	}
	if got := counterValue(t, layersUnverified) - before; got != 1 {
		t.Errorf("unverified layers counted %v, want 1", got)
	}
	if l.Bad() != nil {
		t.Error("a v1 layer is marked bad")
	}
	if toc.Key("toc") != "lazy/v1/"+strings.Replace(toc.Layer.String(), ":", "/", 1)+"/toc" {
		t.Errorf("v1 key %s", toc.Key("toc"))
	}
}

// A tar whose padding is not zeros cannot be rebuilt: it is not indexed.
func TestBuildRejectsNonZeroPadding(t *testing.T) {
	raw := tarOf(t, tar.FormatPAX, 0, file("a", []byte("abc")), file("b", nil))
	raw[bytes.Index(raw, []byte("abc"))+3] = 'x' // the padding after a's content
	if _, err := Build(context.Background(), digest.FromBytes(raw), bytes.NewReader(raw), io.Discard); !errors.Is(err, ErrInvalidIndex) {
		t.Fatalf("build: %v, want ErrInvalidIndex", err)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
