package lazy

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math"
	"runtime"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

type buildOptions struct {
	chunkSize   int64
	jobs        int
	streamLimit int64 // tests: a tighter MaxStreamSize
}

// BuildOption configures Build.
type BuildOption func(*buildOptions)

// WithChunkSize sets the uncompressed chunk size (default 1 MiB, at most
// MaxChunkSize).
func WithChunkSize(n int64) BuildOption { return func(o *buildOptions) { o.chunkSize = n } }

// withStreamLimit lowers MaxStreamSize for one build (fuzzing).
func withStreamLimit(n int64) BuildOption { return func(o *buildOptions) { o.streamLimit = n } }

// WithJobs sets how many chunks are compressed at once (default: CPUs).
func WithJobs(n int) BuildOption { return func(o *buildOptions) { o.jobs = n } }

// Build reads a layer blob (a tar, gzip- or zstd-compressed or not) and
// writes its index's data object to data, returning the TOC. layer is the
// blob's digest, recorded in the TOC; the blob's bytes are not hashed here
// (the caller reads it through a verifying reader, which fails at its end
// on a mismatch: Build reads it to the end). The diff ID is computed.
func Build(ctx context.Context, layer digest.Digest, blob io.Reader, data io.Writer, opts ...BuildOption) (*TOC, error) {
	o := buildOptions{chunkSize: DefaultChunkSize, jobs: runtime.GOMAXPROCS(0)}
	for _, opt := range opts {
		opt(&o)
	}
	if o.chunkSize <= 0 || o.chunkSize > MaxChunkSize {
		return nil, fmt.Errorf("chunk size %d: want 1 to %d bytes", o.chunkSize, MaxChunkSize)
	}
	ds, err := compression.DecompressStream(blob)
	if err != nil {
		return nil, fmt.Errorf("decompress layer %s: %w", layer, err)
	}
	defer ds.Close()
	h := sha256.New()
	// Every byte of the tar that is not file content is recorded: the
	// headers with each entry, the rest in the trailer (format v2).
	rec := &recorder{r: io.TeeReader(ds, h)}
	tr := tar.NewReader(rec)
	cw, err := newChunkWriter(ctx, data, o.chunkSize, o.jobs)
	if err != nil {
		return nil, err
	}
	defer cw.abort()
	toc := &TOC{Version: Version, Layer: layer, ChunkSize: o.chunkSize}
	// The bounds DecodeTOC applies, checked as the layer is read: a
	// hostile tar fails here, at the entry that breaks one, and never
	// holds more than a TOC's worth of entries in memory.
	streamLimit := min(MaxStreamSize, MaxChunks*o.chunkSize)
	if o.streamLimit > 0 {
		streamLimit = min(streamLimit, o.streamLimit)
	}
	var (
		meta    int64  // a lower bound of the TOC's JSON size
		headers int64  // raw header bytes so far
		pending []byte // header bytes of PAX global headers, for the next entry
		pad     int64  // zero padding owed by the last file's content
	)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		rec.start(MaxHeaderSize - len(pending))
		hdr, err := tr.Next()
		raw := rec.stop()
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("read layer %s: %w", layer, err)
		}
		// The padding is rebuilt as zeros: a tar whose padding is not
		// (or is cut short) could not be.
		if int64(len(raw)) < pad || !allZero(raw[:pad]) {
			return nil, fmt.Errorf("layer %s: the padding after a file is not %d zero bytes: %w", layer, pad, ErrInvalidIndex)
		}
		pending, pad = append(pending, raw[pad:]...), 0
		if err == io.EOF {
			break
		}
		e, err := entryOf(hdr)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", layer, err)
		}
		if e == nil {
			continue // a PAX global header: its bytes go with the next entry
		}
		if len(toc.Entries) >= MaxEntries {
			return nil, fmt.Errorf("layer %s: more than %d entries: %w", layer, MaxEntries, ErrInvalidIndex)
		}
		e.Header, pending = pending, nil
		if headers += int64(len(e.Header)); headers > MaxHeaderBytes {
			return nil, fmt.Errorf("layer %s: more than %d bytes of tar headers: %w", layer, MaxHeaderBytes, ErrInvalidIndex)
		}
		if meta += entryJSONSize(e); meta > MaxTOCJSONSize {
			return nil, fmt.Errorf("layer %s: its toc would be more than %d bytes: %w", layer, MaxTOCJSONSize, ErrInvalidIndex)
		}
		if e.Type == TypeReg {
			if hdr.Size > streamLimit-cw.written {
				return nil, fmt.Errorf("layer %s: %.64q of %d bytes: file contents past %d bytes: %w", layer, e.Name, hdr.Size, streamLimit, ErrInvalidIndex)
			}
			e.Offset = cw.written
			n, err := io.Copy(cw, tr)
			if err != nil {
				return nil, fmt.Errorf("read layer %s: %.64q: %w", layer, hdr.Name, err)
			}
			if n != e.Size {
				return nil, fmt.Errorf("layer %s: %.64q: %d bytes of content, its header says %d: %w", layer, hdr.Name, n, e.Size, ErrInvalidIndex)
			}
			pad = blockPadding(n)
		}
		toc.Entries = append(toc.Entries, *e)
	}
	// The tar reader stops at the end-of-archive marker: what follows is
	// the trailer's too. Then read the blob to its end so its reader
	// verifies it.
	rest, err := io.ReadAll(io.LimitReader(io.TeeReader(ds, h), MaxTrailerSize+1))
	if err != nil {
		return nil, fmt.Errorf("read layer %s: %w", layer, err)
	}
	if toc.Trailer = append(pending, rest...); len(toc.Trailer) > MaxTrailerSize {
		return nil, fmt.Errorf("layer %s: more than %d bytes after its last entry: %w", layer, MaxTrailerSize, ErrInvalidIndex)
	}
	if headers+int64(len(toc.Trailer)) > MaxHeaderBytes {
		return nil, fmt.Errorf("layer %s: more than %d bytes of tar headers: %w", layer, MaxHeaderBytes, ErrInvalidIndex)
	}
	if len(toc.Trailer) == 0 {
		toc.Trailer = nil
	}
	if _, err := io.Copy(io.Discard, blob); err != nil {
		return nil, fmt.Errorf("read layer %s: %w", layer, err)
	}
	if toc.Chunks, err = cw.close(); err != nil {
		return nil, err
	}
	for _, c := range toc.Chunks {
		toc.DataSize += c.Size
	}
	toc.DiffID = digest.NewDigest(digest.SHA256, h)
	if err := toc.Validate(); err != nil {
		return nil, fmt.Errorf("built an invalid toc: %w", err)
	}
	return toc, nil
}

// entryJSONSize is a lower bound of an entry's size in the TOC's JSON.
func entryJSONSize(e *Entry) int64 {
	n := int64(len(`{"name":"","type":"","mode":0,"uid":0,"gid":0,"mtime":0,"headerSize":0}`) + len(e.Name) + len(e.Type) + len(e.Linkname) + len(e.Header))
	for k, v := range e.Xattrs {
		n += int64(len(k) + len(v)*4/3)
	}
	return n
}

// Times outside what a TOC (unix nanoseconds) holds are the epoch, as
// containerd's unpacker sets them.
var (
	minTime = time.Unix(0, 0)
	maxTime = time.Unix(0, math.MaxInt64)
)

func boundTime(t time.Time) int64 {
	if t.Before(minTime) || t.After(maxTime) {
		return 0
	}
	return t.UnixNano()
}

// entryOf converts a tar header and checks it (checkEntry); nil means the
// entry carries nothing to present (a PAX global header).
func entryOf(hdr *tar.Header) (*Entry, error) {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil, nil
	}
	name, err := CleanName(hdr.Name)
	if err != nil {
		return nil, err
	}
	e := &Entry{
		Name:    name,
		Mode:    uint32(hdr.Mode) & 07777,
		UID:     hdr.Uid,
		GID:     hdr.Gid,
		ModTime: boundTime(hdr.ModTime),
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA: //lint:ignore SA1019 old archives still carry it
		e.Type, e.Size = TypeReg, hdr.Size
	case tar.TypeDir:
		e.Type = TypeDir
	case tar.TypeSymlink:
		e.Type, e.Linkname = TypeSymlink, hdr.Linkname
	case tar.TypeLink:
		target, err := CleanName(hdr.Linkname)
		if err != nil || target == "" {
			return nil, fmt.Errorf("hard link %.64q to %.64q: %w", hdr.Name, hdr.Linkname, ErrUnsafePath)
		}
		e.Type, e.Linkname = TypeHardlink, target
	case tar.TypeChar, tar.TypeBlock:
		e.Type, e.DevMajor, e.DevMinor = TypeChar, hdr.Devmajor, hdr.Devminor
		if hdr.Typeflag == tar.TypeBlock {
			e.Type = TypeBlock
		}
	case tar.TypeFifo:
		e.Type = TypeFifo
	default:
		return nil, invalid("entry %.64q: unsupported tar type %q", hdr.Name, hdr.Typeflag)
	}
	for k, v := range hdr.PAXRecords {
		// The reader expands a sparse file's holes: its content is not
		// the tar's bytes, and the tar could not be rebuilt.
		if strings.HasPrefix(k, "GNU.sparse.") {
			return nil, invalid("entry %.64q: sparse files are not indexed", hdr.Name)
		}
		if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if e.Xattrs == nil {
				e.Xattrs = map[string][]byte{}
			}
			e.Xattrs[x] = []byte(v)
		}
	}
	if err := checkEntry(e); err != nil {
		return nil, err
	}
	return e, nil
}

// chunkWriter cuts what is written into chunks, compresses them on up to
// jobs goroutines and writes the frames to w in order.
type chunkWriter struct {
	w       io.Writer
	size    int64
	enc     *zstd.Encoder
	buf     []byte
	written int64 // uncompressed bytes accepted

	pending chan *pendingChunk // in order, bounded: jobs in flight
	done    chan struct{}      // the writer goroutine ended
	chunks  []Chunk
	off     int64
	err     error // the writer goroutine's, read after done
	cancel  context.CancelFunc
	ctx     context.Context
}

type pendingChunk struct {
	ready chan struct{}
	frame []byte
	sum   digest.Digest
}

func newChunkWriter(ctx context.Context, w io.Writer, size int64, jobs int) (*chunkWriter, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	cw := &chunkWriter{w: w, size: size, enc: enc, pending: make(chan *pendingChunk, max(jobs, 1)), done: make(chan struct{}), ctx: ctx, cancel: cancel}
	go cw.drain(cw.pending)
	return cw, nil
}

func (cw *chunkWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if cw.buf == nil {
			cw.buf = make([]byte, 0, cw.size)
		}
		k := min(len(p), int(cw.size)-len(cw.buf))
		cw.buf = append(cw.buf, p[:k]...)
		p, n = p[k:], n+k
		cw.written += int64(k)
		if int64(len(cw.buf)) == cw.size {
			if err := cw.flush(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// flush hands the buffered chunk to a compressing goroutine.
func (cw *chunkWriter) flush() error {
	buf := cw.buf
	cw.buf = nil
	pc := &pendingChunk{ready: make(chan struct{})}
	select {
	case cw.pending <- pc:
	case <-cw.done:
		return cw.err
	}
	go func() {
		sum := sha256.Sum256(buf)
		pc.sum = digest.NewDigestFromBytes(digest.SHA256, sum[:])
		pc.frame = cw.enc.EncodeAll(buf, make([]byte, 0, len(buf)/2))
		close(pc.ready)
	}()
	return nil
}

// drain writes compressed chunks in order.
func (cw *chunkWriter) drain(pending <-chan *pendingChunk) {
	defer close(cw.done)
	for pc := range pending {
		select {
		case <-pc.ready:
		case <-cw.ctx.Done():
			cw.err = cw.ctx.Err()
			return
		}
		if _, err := cw.w.Write(pc.frame); err != nil {
			cw.err = fmt.Errorf("write lazy data: %w: %w", ErrWrite, err)
			return // flush and close see done and return err
		}
		cw.chunks = append(cw.chunks, Chunk{Offset: cw.off, Size: int64(len(pc.frame)), Digest: pc.sum})
		cw.off += int64(len(pc.frame))
	}
}

// close flushes the last chunk and waits for every frame to be written.
func (cw *chunkWriter) close() ([]Chunk, error) {
	if len(cw.buf) > 0 {
		if err := cw.flush(); err != nil {
			return nil, err
		}
	}
	close(cw.pending)
	cw.pending = nil
	<-cw.done
	if cw.err != nil {
		return nil, cw.err
	}
	return cw.chunks, nil
}

// abort stops the writer goroutine if close was not reached.
func (cw *chunkWriter) abort() {
	cw.cancel()
	if cw.pending != nil {
		close(cw.pending)
		cw.pending = nil
		<-cw.done
	}
	cw.enc.Close()
}

// recorder passes reads through, keeping what is read between start and
// stop, at most limit bytes.
type recorder struct {
	r     io.Reader
	on    bool
	limit int
	buf   []byte
}

func (r *recorder) start(limit int) { r.on, r.limit, r.buf = true, limit, nil }

func (r *recorder) stop() []byte {
	r.on = false
	return r.buf
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if r.on && n > 0 {
		if len(r.buf)+n > r.limit {
			return n, fmt.Errorf("a tar header of more than %d bytes: %w", MaxHeaderSize, ErrInvalidIndex)
		}
		r.buf = append(r.buf, p[:n]...)
	}
	return n, err
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
