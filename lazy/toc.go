// Package lazy is s3snap's lazy-pull index: its format, building it from a
// layer blob, and reading a layer through it, file data on demand, into a
// verified chunk cache; Mount presents such a layer with FUSE. It is the
// only package that uses go-fuse: users hold a Mounted, and unmount it.
//
// A layer's index is two objects in the store's s3snap area, beside (never
// inside) the registry layout, so image digests and layer blobs stay
// exactly as they are:
//
//	<prefix>/s3snap/lazy/v2/sha256/<layer hex>/data  file contents, re-chunked
//	<prefix>/s3snap/lazy/v2/sha256/<layer hex>/toc   the table of contents
//
// The data object is the concatenation of every regular file's content, in
// tar order, cut into chunks of ChunkSize uncompressed bytes (the last one
// shorter), each compressed on its own with zstd, so any chunk can be read
// with one ranged GET and decompressed alone. The TOC is zstd-compressed
// JSON: the layer digest and diff ID it was built from, the chunks (where
// each lies in the data object and the sha256 of its uncompressed bytes)
// and every tar entry (name, type, mode, owner, size, mtime, link name,
// device numbers, xattrs, and for regular files where their content starts
// in the uncompressed stream). A chunk is checked against its sha256
// before any byte of it is used.
//
// Format v2 (what Build writes) also holds, per entry, the raw tar header
// blocks that precede its content (PAX and GNU long-name records
// included) and the archive's trailer, stored raw after the JSON, so the layer's uncompressed tar is
// rebuilt byte for byte from the TOC and the data stream (TarReader) and
// its sha256 checked against the diff ID the image config names (Verify):
// that check, not the TOC, ties the index to the layer. The headers are
// the one source of an entry's metadata: Validate parses each and rejects
// an entry whose fields say anything else. Format v1 (no headers) is
// still read, unverified.
//
// The data object is written first and the TOC last: a TOC's presence
// means the index is complete. Entry names are clean relative paths; one
// that is absolute or climbs out with ".." is rejected both when building
// and when reading. A layer with no (complete) index is ErrNoIndex, which
// is also a store.ErrNotFound.
package lazy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/store"
)

// Version is the index format version Build writes, part of the object
// keys; MinVersion is the oldest still read (v1: no tar headers, so it
// cannot be verified).
const (
	Version    = 2
	MinVersion = 1
)

const (
	// DefaultChunkSize is the uncompressed size of a data chunk: the unit
	// of a ranged GET on a cache miss.
	DefaultChunkSize = 1 << 20
	// MaxChunkSize bounds ChunkSize (and what one chunk may decompress to).
	MaxChunkSize = 4 << 20
	// maxTOCWindow bounds the zstd window of a TOC object: Encode's frames
	// use at most 8 MiB.
	maxTOCWindow = 32 << 20
)

var (
	// ErrNoIndex means the store holds no (complete) index for a layer.
	ErrNoIndex = fmt.Errorf("no lazy index: %w", store.ErrNotFound)
	// ErrInvalidIndex means a TOC is malformed or does not describe what
	// it claims: unknown types, entries escaping the root, chunks that do
	// not add up.
	ErrInvalidIndex = errors.New("invalid lazy index")
	// ErrCorruptChunk means a data chunk did not decompress to its length
	// and sha256: its bytes are never used.
	ErrCorruptChunk = errors.New("corrupt lazy data chunk")
	// ErrWrite means an index's objects could not be written (an error
	// of the store, not of the layer).
	ErrWrite = errors.New("write lazy index")
	// ErrUnsafePath means a tar entry's name (or hard link target) is
	// absolute or escapes the layer root.
	ErrUnsafePath = errors.New("path escapes the layer root")
)

// Type is a TOC entry's file type.
type Type string

// Entry types, as in a tar archive.
const (
	TypeDir      Type = "dir"
	TypeReg      Type = "reg"
	TypeSymlink  Type = "symlink"
	TypeHardlink Type = "hardlink"
	TypeChar     Type = "char"
	TypeBlock    Type = "block"
	TypeFifo     Type = "fifo"
)

// TOC is a layer's table of contents.
type TOC struct {
	Version int           `json:"version"`
	Layer   digest.Digest `json:"layer"`  // compressed layer blob digest
	DiffID  digest.Digest `json:"diffID"` // uncompressed tar digest
	// ChunkSize is every chunk's uncompressed size but the last's.
	ChunkSize int64   `json:"chunkSize"`
	DataSize  int64   `json:"dataSize"` // the data object's size
	Chunks    []Chunk `json:"chunks"`
	Entries   []Entry `json:"entries"`
	// Trailer is what follows the last entry's content and padding: the
	// end-of-archive blocks and anything after them (v2). Like the
	// entries' headers, it is stored raw after the JSON (Encode).
	Trailer     []byte `json:"-"`
	TrailerSize int    `json:"trailerSize,omitempty"`

	lastChunkSize int64 // derived by Validate
}

// Chunk is one zstd frame in the data object.
type Chunk struct {
	Offset int64         `json:"offset"` // in the data object
	Size   int64         `json:"size"`   // compressed bytes
	Digest digest.Digest `json:"digest"` // sha256 of the uncompressed bytes
}

// Entry is one tar entry.
type Entry struct {
	// Name is clean and relative ("" is the root directory itself).
	Name string `json:"name"`
	Type Type   `json:"type"`
	// Mode is the permission bits with setuid, setgid and sticky (07777).
	Mode     uint32 `json:"mode"`
	UID      int    `json:"uid"`
	GID      int    `json:"gid"`
	Size     int64  `json:"size,omitempty"`
	ModTime  int64  `json:"mtime"` // unix nanoseconds
	Linkname string `json:"linkname,omitempty"`
	DevMajor int64  `json:"devMajor,omitempty"`
	DevMinor int64  `json:"devMinor,omitempty"`
	// Xattrs are the PAX SCHILY.xattr records, name to raw value.
	Xattrs map[string][]byte `json:"xattrs,omitempty"`
	// Offset is where a regular file's content starts in the
	// uncompressed data stream.
	Offset int64 `json:"offset,omitempty"`
	// Header is the raw tar bytes before the content (v2): every header
	// block of the entry, PAX and GNU long-name records and any PAX
	// global header before it included; the zero padding of the previous
	// file's content is not. The fields above must be what it says.
	// Encode stores it raw after the JSON, HeaderSize in it.
	Header     []byte `json:"-"`
	HeaderSize int    `json:"headerSize,omitempty"`
}

// Key is the object name of a layer's TOC or data in the current format,
// relative to the store's s3snap area.
func Key(layer digest.Digest, object string) string { return VersionKey(Version, layer, object) }

// VersionKey is Key for format version v.
func VersionKey(v int, layer digest.Digest, object string) string {
	return fmt.Sprintf("lazy/v%d/%s/%s/%s", v, layer.Algorithm(), layer.Encoded(), object)
}

// Key is the object name of this TOC's object (its data, or itself).
func (t *TOC) Key(object string) string { return VersionKey(t.Version, t.Layer, object) }

// Verifiable reports whether the TOC can rebuild its layer's tar (v2).
func (t *TOC) Verifiable() bool { return t.Version >= 2 }

// StreamSize is the uncompressed data stream's length.
func (t *TOC) StreamSize() int64 {
	if len(t.Chunks) == 0 {
		return 0
	}
	return int64(len(t.Chunks)-1)*t.ChunkSize + t.lastChunkSize
}

// chunkLen is chunk i's uncompressed size.
func (t *TOC) chunkLen(i int) int64 {
	if i == len(t.Chunks)-1 {
		return t.lastChunkSize
	}
	return t.ChunkSize
}

// CleanName validates a tar entry name and returns it clean and relative
// ("" for the root). Absolute names and any ".." component are rejected.
func CleanName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%q is absolute: %w", name, ErrUnsafePath)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%q contains NUL: %w", name, ErrUnsafePath)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%q: %w", name, ErrUnsafePath)
		}
	}
	c := path.Clean(name)
	if c == "." {
		return "", nil
	}
	return c, nil
}

// Encode serializes the TOC: zstd-compressed JSON; for v2, followed by a
// newline and the raw tar headers of every entry, in order, then the
// trailer (their sizes are in the JSON): raw bytes decode far faster than
// base64 in JSON, and compress better. A TOC too large for DecodeTOC to
// accept is an error wrapping ErrInvalidIndex.
func (t *TOC) Encode() ([]byte, error) {
	c := *t
	c.Entries = append([]Entry(nil), t.Entries...)
	var blob []byte
	for i := range c.Entries {
		c.Entries[i].HeaderSize = len(c.Entries[i].Header)
		blob = append(blob, c.Entries[i].Header...)
	}
	c.TrailerSize = len(c.Trailer)
	blob = append(blob, c.Trailer...)
	raw, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("encode toc: %w", err)
	}
	if c.Version >= 2 {
		raw = append(append(raw, '\n'), blob...)
	}
	if len(raw) > MaxTOCJSONSize {
		return nil, invalid("toc of %s: %d bytes of json, more than %d", t.Layer, len(raw), MaxTOCJSONSize)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	b := enc.EncodeAll(raw, nil)
	if len(b) > MaxTOCSize {
		return nil, invalid("toc of %s: %d bytes compressed, more than %d", t.Layer, len(b), MaxTOCSize)
	}
	return b, nil
}

// DecodeTOC parses and validates an encoded TOC: at most MaxTOCSize bytes,
// decompressing to at most MaxTOCJSONSize, one JSON object and nothing
// after it.
func DecodeTOC(b []byte) (*TOC, error) {
	if len(b) > MaxTOCSize {
		return nil, invalid("toc of %d bytes, more than %d", len(b), MaxTOCSize)
	}
	dec, err := zstd.NewReader(bytes.NewReader(b), zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxMemory(MaxTOCJSONSize), zstd.WithDecoderMaxWindow(maxTOCWindow))
	if err != nil {
		return nil, fmt.Errorf("toc: %w: %w", ErrInvalidIndex, err)
	}
	defer dec.Close()
	// The decoder's memory limit does not bound a stream's output: this
	// does, before the JSON decoder buffers it.
	raw, err := io.ReadAll(io.LimitReader(dec, MaxTOCJSONSize+1))
	if err != nil {
		return nil, fmt.Errorf("toc: %w: %w", ErrInvalidIndex, err)
	}
	if len(raw) > MaxTOCJSONSize {
		return nil, invalid("toc decompresses to more than %d bytes", MaxTOCJSONSize)
	}
	var t TOC
	d := json.NewDecoder(bytes.NewReader(raw))
	d.DisallowUnknownFields()
	if err := d.Decode(&t); err != nil {
		return nil, fmt.Errorf("toc: %w: %w", ErrInvalidIndex, err)
	}
	if err := t.attachHeaders(raw[d.InputOffset():]); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

// attachHeaders hands the raw tar headers after a v2 TOC's JSON to its
// entries and trailer; a v1 TOC has nothing after its JSON.
func (t *TOC) attachHeaders(rest []byte) error {
	if t.Version < 2 {
		if len(bytes.TrimSpace(rest)) > 0 {
			return invalid("toc: data after the json object")
		}
		return nil
	}
	if len(rest) == 0 || rest[0] != '\n' {
		return invalid("toc: no tar headers after the json object")
	}
	rest = rest[1:]
	// Each size is bounded before it is added: the sum cannot overflow.
	var off int
	take := func(n int) ([]byte, error) {
		if n < 0 || n > MaxHeaderSize || n > len(rest)-off {
			return nil, invalid("toc: %d bytes of tar header at %d of %d", n, off, len(rest))
		}
		b := rest[off : off+n : off+n]
		off += n
		return b, nil
	}
	for i := range t.Entries {
		e := &t.Entries[i]
		var err error
		if e.Header, err = take(e.HeaderSize); err != nil {
			return err
		}
	}
	if t.TrailerSize > MaxTrailerSize {
		return invalid("toc: tar trailer of %d bytes, more than %d", t.TrailerSize, MaxTrailerSize)
	}
	var err error
	if t.Trailer, err = take(t.TrailerSize); err != nil {
		return err
	}
	if len(t.Trailer) == 0 {
		t.Trailer = nil
	}
	if off != len(rest) {
		return invalid("toc: %d bytes after the tar headers", len(rest)-off)
	}
	return nil
}

// Validate checks the TOC is self-consistent, within the bounds (MaxEntries,
// MaxChunks, MaxStreamSize, MaxFrameSize, the name and xattr limits), that
// every name is safe, and that its tree builds: a TOC that validates never
// makes Tree fail. Every error wraps ErrInvalidIndex (and ErrUnsafePath
// for a name that escapes). The size of the last chunk is unknown to the
// format and derived here: the stream must end where the last regular file
// ends.
func (t *TOC) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("toc of %.80s: %s: %w", t.Layer, fmt.Sprintf(format, args...), ErrInvalidIndex)
	}
	if t.Version < MinVersion || t.Version > Version {
		return bad("version %d, want %d to %d", t.Version, MinVersion, Version)
	}
	for _, d := range []digest.Digest{t.Layer, t.DiffID} {
		if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
			return bad("digest %.80q", d)
		}
	}
	if t.ChunkSize <= 0 || t.ChunkSize > MaxChunkSize {
		return bad("chunk size %d", t.ChunkSize)
	}
	if len(t.Chunks) > MaxChunks {
		return bad("%d chunks, more than %d", len(t.Chunks), MaxChunks)
	}
	if len(t.Entries) > MaxEntries {
		return bad("%d entries, more than %d", len(t.Entries), MaxEntries)
	}
	// Every chunk is within MaxFrameSize, so their sum cannot overflow;
	// the offsets must still add up exactly.
	var off int64
	for i, c := range t.Chunks {
		if c.Offset != off || c.Size <= 0 || c.Size > maxFrameSize(t.ChunkSize) || c.Digest.Validate() != nil || c.Digest.Algorithm() != digest.SHA256 {
			return bad("chunk %d at %d of %d bytes (at most %d)", i, c.Offset, c.Size, maxFrameSize(t.ChunkSize))
		}
		off += c.Size
	}
	if off != t.DataSize {
		return bad("chunks add up to %d bytes, data object is %d", off, t.DataSize)
	}
	// The stream cannot be longer than its chunks hold.
	limit := min(MaxStreamSize, int64(len(t.Chunks))*t.ChunkSize)
	var end int64 // the stream's length: where the last file's content ends
	for i := range t.Entries {
		e := &t.Entries[i]
		if err := checkEntry(e); err != nil {
			return fmt.Errorf("toc of %.80s: entry %d: %w", t.Layer, i, asInvalid(err))
		}
		if e.Type == TypeReg {
			if e.Offset != end {
				return bad("entry %.64q content at %d, want %d", e.Name, e.Offset, end)
			}
			if e.Size > limit-end {
				return bad("entry %.64q of %d bytes at %d: past the end of the %d-byte chunks", e.Name, e.Size, end, limit)
			}
			end += e.Size
		}
	}
	n := int64(len(t.Chunks))
	if want := (end + t.ChunkSize - 1) / t.ChunkSize; n != want {
		return bad("%d chunks for a %d-byte stream of %d-byte chunks", n, end, t.ChunkSize)
	}
	if n > 0 {
		t.lastChunkSize = end - (n-1)*t.ChunkSize
		if last := t.Chunks[n-1]; last.Size > maxFrameSize(t.lastChunkSize) {
			return bad("last chunk of %d bytes holds %d", last.Size, t.lastChunkSize)
		}
	}
	if err := t.checkHeaders(); err != nil {
		return fmt.Errorf("toc of %.80s: %w", t.Layer, asInvalid(err))
	}
	if _, err := t.tree(nil, nil); err != nil {
		return fmt.Errorf("toc of %.80s: %w", t.Layer, asInvalid(err))
	}
	return nil
}

// asInvalid makes err (an unsafe name) an ErrInvalidIndex too: whatever is
// wrong with a TOC, it is an invalid index, to rebuild or not to use.
func asInvalid(err error) error {
	if errors.Is(err, ErrInvalidIndex) {
		return err
	}
	return fmt.Errorf("%w: %w", err, ErrInvalidIndex)
}
