// Package lazy is s3snap's lazy-pull index: its format, building it from a
// layer blob, and reading a layer through it, file data on demand.
//
// A layer's index is two objects in the store's s3snap area, beside (never
// inside) the registry layout, so image digests and layer blobs stay
// exactly as they are:
//
//	<prefix>/s3snap/lazy/v1/sha256/<layer hex>/data  file contents, re-chunked
//	<prefix>/s3snap/lazy/v1/sha256/<layer hex>/toc   the table of contents
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
// The data object is written first and the TOC last: a TOC's presence
// means the index is complete. Entry names are clean relative paths; one
// that is absolute or climbs out with ".." is rejected both when building
// and when reading.
package lazy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// Version is the index format version, part of the object keys.
const Version = 1

const (
	// DefaultChunkSize is the uncompressed size of a data chunk: the unit
	// of a ranged GET on a cache miss.
	DefaultChunkSize = 1 << 20
	// MaxChunkSize bounds ChunkSize (and what one chunk may decompress to).
	MaxChunkSize = 4 << 20
	// maxTOCSize bounds a TOC object and what it decompresses to.
	maxTOCSize = 64 << 20
	maxTOCJSON = 1 << 30
)

var (
	// ErrNoIndex means the store holds no (complete) index for a layer.
	ErrNoIndex = errors.New("no lazy index")
	// ErrInvalidIndex means a TOC is malformed or does not describe what
	// it claims: unknown types, entries escaping the root, chunks that do
	// not add up.
	ErrInvalidIndex = errors.New("invalid lazy index")
	// ErrCorruptChunk means a data chunk did not decompress to its length
	// and sha256: its bytes are never used.
	ErrCorruptChunk = errors.New("corrupt lazy data chunk")
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
}

// Key is the object name of a layer's TOC or data, relative to the
// store's s3snap area.
func Key(layer digest.Digest, object string) string {
	return fmt.Sprintf("lazy/v%d/%s/%s/%s", Version, layer.Algorithm(), layer.Encoded(), object)
}

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

// Encode serializes the TOC: zstd-compressed JSON.
func (t *TOC) Encode() ([]byte, error) {
	raw, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("encode toc: %w", err)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	return enc.EncodeAll(raw, nil), nil
}

// DecodeTOC parses and validates an encoded TOC.
func DecodeTOC(b []byte) (*TOC, error) {
	if len(b) > maxTOCSize {
		return nil, fmt.Errorf("toc of %d bytes: %w", len(b), ErrInvalidIndex)
	}
	dec, err := zstd.NewReader(bytes.NewReader(b), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxTOCJSON))
	if err != nil {
		return nil, fmt.Errorf("toc: %w: %w", ErrInvalidIndex, err)
	}
	defer dec.Close()
	var t TOC
	d := json.NewDecoder(dec)
	d.DisallowUnknownFields()
	if err := d.Decode(&t); err != nil {
		return nil, fmt.Errorf("toc: %w: %w", ErrInvalidIndex, err)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

// Validate checks the TOC is self-consistent and every name is safe. The
// size of the last chunk is unknown to the format and derived here: the
// stream must end where the last regular file ends.
func (t *TOC) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("toc of %s: %s: %w", t.Layer, fmt.Sprintf(format, args...), ErrInvalidIndex)
	}
	if t.Version != Version {
		return bad("version %d, want %d", t.Version, Version)
	}
	for _, d := range []digest.Digest{t.Layer, t.DiffID} {
		if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
			return bad("digest %q", d)
		}
	}
	if t.ChunkSize <= 0 || t.ChunkSize > MaxChunkSize {
		return bad("chunk size %d", t.ChunkSize)
	}
	var off int64
	for i, c := range t.Chunks {
		if c.Offset != off || c.Size <= 0 || c.Digest.Validate() != nil || c.Digest.Algorithm() != digest.SHA256 {
			return bad("chunk %d", i)
		}
		off += c.Size
	}
	if off != t.DataSize {
		return bad("chunks add up to %d bytes, data object is %d", off, t.DataSize)
	}
	var end int64 // the stream's length: where the last file's content ends
	for i := range t.Entries {
		e := &t.Entries[i]
		if c, err := CleanName(e.Name); err != nil {
			return fmt.Errorf("toc of %s: entry %d: %w", t.Layer, i, err)
		} else if c != e.Name {
			return bad("entry %d name %q is not clean", i, e.Name)
		}
		if e.Mode&^07777 != 0 || e.Size < 0 || e.Offset < 0 {
			return bad("entry %q mode %o size %d offset %d", e.Name, e.Mode, e.Size, e.Offset)
		}
		switch e.Type {
		case TypeReg:
			if e.Offset != end {
				return bad("entry %q content at %d, want %d", e.Name, e.Offset, end)
			}
			end += e.Size
		case TypeHardlink:
			if _, err := CleanName(e.Linkname); err != nil || e.Linkname == "" {
				return fmt.Errorf("toc of %s: hard link %q to %q: %w", t.Layer, e.Name, e.Linkname, ErrUnsafePath)
			}
		case TypeDir, TypeSymlink, TypeChar, TypeBlock, TypeFifo:
		default:
			return bad("entry %q has type %q", e.Name, e.Type)
		}
		if e.Type != TypeReg && (e.Size != 0 || e.Offset != 0) {
			return bad("entry %q of type %s has content", e.Name, e.Type)
		}
	}
	n := int64(len(t.Chunks))
	if want := (end + t.ChunkSize - 1) / t.ChunkSize; n != want {
		return bad("%d chunks for a %d-byte stream of %d-byte chunks", n, end, t.ChunkSize)
	}
	if n > 0 {
		t.lastChunkSize = end - (n-1)*t.ChunkSize
	}
	return nil
}
