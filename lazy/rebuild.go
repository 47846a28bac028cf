package lazy

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/internal/iox"
)

var (
	// ErrUnverifiable means a TOC (format v1) holds no tar headers: its
	// layer's tar cannot be rebuilt, so its content is not checked
	// against the diff ID.
	ErrUnverifiable = errors.New("lazy index of format v1 cannot be verified")
	// ErrMismatch means a TOC and its data do not rebuild the layer the
	// image names: the rebuilt tar does not hash to the diff ID. It is an
	// ErrInvalidIndex too.
	ErrMismatch = fmt.Errorf("lazy index does not rebuild its layer: %w", ErrInvalidIndex)
)

// blockPadding is the zero padding after n bytes of tar content.
func blockPadding(n int64) int64 { return -n & 511 }

// parseHeader reads an entry's raw header bytes as Go's archive/tar reads
// them in the whole tar (as containerd does: the reader keeps no state
// from one entry to the next but the padding, which is not in b): any PAX
// global headers, then one entry whose header ends exactly where b does.
func parseHeader(b []byte) (*tar.Header, error) {
	cr := &iox.CountingReader{R: bytes.NewReader(b)}
	tr := tar.NewReader(cr)
	for {
		hdr, err := tr.Next()
		if err != nil {
			return nil, invalid("tar header of %d bytes: %v", len(b), err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if cr.N != int64(len(b)) {
			return nil, invalid("tar header of %.64q is %d bytes, the toc holds %d", hdr.Name, cr.N, len(b))
		}
		return hdr, nil
	}
}

// checkTrailer checks a tar's trailer holds no entry: only PAX global
// headers (which carry none) before the end of the archive.
func checkTrailer(b []byte) error {
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return invalid("tar trailer of %d bytes: %v", len(b), err)
		}
		if hdr.Typeflag != tar.TypeXGlobalHeader {
			return invalid("tar trailer holds entry %.64q", hdr.Name)
		}
	}
}

// checkHeaders checks a v2 TOC's entries are what their tar headers say
// (the headers decide: a TOC whose JSON fields disagree is invalid) and
// the trailer holds no entry; a v1 TOC must hold neither.
func (t *TOC) checkHeaders() error {
	if !t.Verifiable() {
		if len(t.Trailer) > 0 || t.TrailerSize != 0 {
			return invalid("a v1 toc with a tar trailer")
		}
		for i := range t.Entries {
			if t.Entries[i].Header != nil || t.Entries[i].HeaderSize != 0 {
				return invalid("a v1 toc with tar headers")
			}
		}
		return nil
	}
	if len(t.Trailer) > MaxTrailerSize {
		return invalid("tar trailer of %d bytes, more than %d", len(t.Trailer), MaxTrailerSize)
	}
	total := int64(len(t.Trailer))
	for i := range t.Entries {
		e := &t.Entries[i]
		if len(e.Header) < 512 || len(e.Header) > MaxHeaderSize {
			return invalid("entry %d %.64q: tar header of %d bytes (512 to %d)", i, e.Name, len(e.Header), MaxHeaderSize)
		}
		if total += int64(len(e.Header)); total > MaxHeaderBytes {
			return invalid("more than %d bytes of tar headers", MaxHeaderBytes)
		}
		hdr, err := parseHeader(e.Header)
		if err != nil {
			return fmt.Errorf("entry %d %.64q: %w", i, e.Name, err)
		}
		want, err := entryOf(hdr)
		if err != nil {
			return fmt.Errorf("entry %d: %w", i, err)
		}
		if !sameEntry(e, want) {
			return invalid("entry %d %.64q: the toc says %s %o %d:%d %d bytes, its tar header %.64q %s %o %d:%d %d bytes (or other fields differ)",
				i, e.Name, e.Type, e.Mode, e.UID, e.GID, e.Size, want.Name, want.Type, want.Mode, want.UID, want.GID, want.Size)
		}
	}
	return checkTrailer(t.Trailer)
}

// sameEntry compares the metadata of two entries (not where the content
// lies, nor the header).
func sameEntry(a, b *Entry) bool {
	return a.Name == b.Name && a.Type == b.Type && a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID &&
		a.Size == b.Size && a.ModTime == b.ModTime && a.Linkname == b.Linkname &&
		a.DevMajor == b.DevMajor && a.DevMinor == b.DevMinor && maps.EqualFunc(a.Xattrs, b.Xattrs, bytes.Equal)
}

// TarReader rebuilds the layer's uncompressed tar, byte for byte, from a
// v2 TOC and its uncompressed data stream read in order from the start
// (Layer.Stream, or DataStream over the data object). A stream shorter or
// longer than the TOC says is an error wrapping ErrInvalidIndex.
func (t *TOC) TarReader(stream io.Reader) (io.Reader, error) {
	if !t.Verifiable() {
		return nil, fmt.Errorf("layer %s: %w", t.Layer, ErrUnverifiable)
	}
	return &tarRebuild{t: t, stream: stream}, nil
}

var zeroBlock [512]byte

type tarRebuild struct {
	t      *TOC
	stream io.Reader
	next   int       // the entry whose header comes next
	parts  [3][]byte // header, then content (nil: from the stream), then padding
	part   int       // index into parts; 3: the entry is done
	left   int64     // content bytes still to read from the stream
	ended  bool      // the trailer has been queued
	err    error
}

func (r *tarRebuild) Read(p []byte) (int, error) {
	for r.err == nil {
		if r.part < len(r.parts) {
			if r.part == 1 && r.left > 0 {
				n, err := r.stream.Read(p[:min(int64(len(p)), r.left)])
				r.left -= int64(n)
				if err == io.EOF && r.left > 0 {
					err = invalid("layer %s: data stream ends %d bytes early", r.t.Layer, r.left)
				} else if err == io.EOF {
					err = nil
				}
				if err != nil {
					r.err = err
				}
				return n, err
			}
			if len(r.parts[r.part]) == 0 {
				r.part++
				continue
			}
			n := copy(p, r.parts[r.part])
			r.parts[r.part] = r.parts[r.part][n:]
			return n, nil
		}
		r.advance()
	}
	return 0, r.err
}

// advance queues the next entry, or the trailer, or ends the tar.
func (r *tarRebuild) advance() {
	r.part = 0
	if r.next < len(r.t.Entries) {
		e := &r.t.Entries[r.next]
		r.next++
		r.parts = [3][]byte{e.Header, nil, nil}
		if e.Type == TypeReg {
			r.left = e.Size
			r.parts[2] = zeroBlock[:blockPadding(e.Size)]
		}
		return
	}
	if !r.ended {
		r.ended = true
		r.parts = [3][]byte{r.t.Trailer, nil, nil}
		return
	}
	var one [1]byte
	if n, _ := io.ReadFull(r.stream, one[:]); n > 0 {
		r.err = invalid("layer %s: data stream longer than its files", r.t.Layer)
		return
	}
	r.err = io.EOF
}

// Verify rebuilds the layer's tar from stream (as TarReader) and checks it
// hashes to diffID, the layer's diff ID in the image config: the one check
// that ties an index to its layer. A mismatch is ErrMismatch; a v1 TOC,
// ErrUnverifiable.
func (t *TOC) Verify(ctx context.Context, stream io.Reader, diffID digest.Digest) error {
	if !t.Verifiable() {
		return fmt.Errorf("layer %s: %w", t.Layer, ErrUnverifiable)
	}
	if t.DiffID != diffID {
		return fmt.Errorf("layer %s: its index is of diff id %s, the image says %s: %w", t.Layer, t.DiffID, diffID, ErrMismatch)
	}
	tr, err := t.TarReader(stream)
	if err != nil {
		return err
	}
	h := sha256.New()
	// Large reads: through a Layer, each is a chunk-cache file opened.
	if _, err := io.CopyBuffer(h, iox.ContextReader(ctx, tr), make([]byte, 1<<20)); err != nil {
		return fmt.Errorf("layer %s: rebuild its tar: %w", t.Layer, err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != diffID {
		return fmt.Errorf("layer %s: its index rebuilds a tar of %s, the image says %s: %w", t.Layer, got, diffID, ErrMismatch)
	}
	return nil
}

// DataStream reads the TOC's data object from r, in order from its start,
// and returns the uncompressed data stream, every chunk checked against
// its digest (ErrCorruptChunk) before it is returned: what `s3snap verify`
// reads with one GET.
func (t *TOC) DataStream(r io.Reader) io.Reader {
	return &dataStream{t: t, r: r}
}

type dataStream struct {
	t   *TOC
	r   io.Reader
	dec *zstd.Decoder
	i   int
	buf []byte
	err error
}

func (d *dataStream) Read(p []byte) (int, error) {
	for len(d.buf) == 0 && d.err == nil {
		d.err = d.load()
	}
	if len(d.buf) > 0 {
		n := copy(p, d.buf)
		d.buf = d.buf[n:]
		return n, nil
	}
	if d.dec != nil {
		d.dec.Close()
		d.dec = nil
	}
	return 0, d.err
}

// load reads and checks the next chunk.
func (d *dataStream) load() error {
	if d.i >= len(d.t.Chunks) {
		return io.EOF
	}
	if d.dec == nil {
		dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(2*MaxChunkSize))
		if err != nil {
			return err
		}
		d.dec = dec
	}
	c, size := d.t.Chunks[d.i], d.t.chunkLen(d.i)
	frame := make([]byte, c.Size) // Validate bounded it by MaxFrameSize
	if _, err := io.ReadFull(d.r, frame); err != nil {
		return fmt.Errorf("layer %s: read chunk %d of its data object: %w", d.t.Layer, d.i, err)
	}
	data, err := d.dec.DecodeAll(frame, make([]byte, 0, size))
	if err != nil {
		return fmt.Errorf("layer %s: chunk %d: %w: %w", d.t.Layer, d.i, ErrCorruptChunk, err)
	}
	if int64(len(data)) != size || digest.FromBytes(data) != c.Digest {
		return fmt.Errorf("layer %s: chunk %d does not match its digest: %w", d.t.Layer, d.i, ErrCorruptChunk)
	}
	d.i++
	d.buf = data
	return nil
}
