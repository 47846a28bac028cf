package lazy

import (
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// Bounds on an index. A TOC comes from the bucket and is untrusted: every
// size, count and depth in it is checked against these when it is read
// (DecodeTOC, Validate) and when it is built (Build), so the loader never
// meets an index it would reject and a hostile one cannot exhaust memory,
// overflow an offset or recurse without end.
const (
	// MaxTOCSize bounds an encoded (zstd-compressed) TOC object.
	MaxTOCSize = 64 << 20
	// MaxTOCJSONSize bounds what a TOC object decompresses to: a small
	// object must not expand to gigabytes.
	MaxTOCJSONSize = 256 << 20
	// MaxEntries bounds a TOC's entries, and separately the directories
	// its tree creates without an entry of their own (implicit parents):
	// each is an inode in memory.
	MaxEntries = 1 << 20
	// MaxChunks bounds a TOC's data chunks.
	MaxChunks = 1 << 22
	// MaxStreamSize bounds the uncompressed data stream: the contents of
	// every regular file of the layer together.
	MaxStreamSize = 1 << 40
	// MaxFrameSize bounds a chunk's compressed size: a zstd frame of a
	// MaxChunkSize chunk, incompressible, is the chunk plus a few bytes of
	// headers per 128 KiB block. A chunk of n bytes may be at most
	// n + n/256 + 4096 bytes compressed.
	MaxFrameSize = MaxChunkSize + MaxChunkSize>>8 + frameSlack
	// MaxPathDepth bounds the components of an entry name or hard link
	// target.
	MaxPathDepth = 256
	// MaxNameLen bounds one component of a path, in bytes (NAME_MAX).
	MaxNameLen = 255
	// MaxPathLen bounds an entry name, a hard link target and a symlink
	// target, in bytes (PATH_MAX).
	MaxPathLen = 4096
	// MaxXattrs bounds the extended attributes of one entry.
	MaxXattrs = 128
	// MaxXattrNameLen bounds an extended attribute's name (XATTR_NAME_MAX).
	MaxXattrNameLen = 255
	// MaxXattrValueLen bounds an extended attribute's value (XATTR_SIZE_MAX).
	MaxXattrValueLen = 64 << 10
	// MaxXattrBytes bounds the names and values of one entry's extended
	// attributes together.
	MaxXattrBytes = 128 << 10
	// MaxHeaderSize bounds one entry's raw tar header bytes (v2): its
	// header blocks with PAX records (xattrs up to MaxXattrBytes) and GNU
	// long names, and any PAX global headers before it.
	MaxHeaderSize = 512 << 10
	// MaxHeaderBytes bounds a TOC's raw tar header bytes together, its
	// trailer included: about 250,000 plain entries, each header base64
	// in the JSON, which stays within MaxTOCJSONSize.
	MaxHeaderBytes = 128 << 20
	// MaxTrailerSize bounds what follows the last entry of a tar (v2):
	// the end-of-archive blocks, padded to a record (GNU tar: 10 KiB by
	// default, 1 MiB at its largest blocking factor).
	MaxTrailerSize = 1 << 20
	// maxID bounds owner IDs and device numbers: 32 bits on Linux.
	maxID = math.MaxUint32

	frameSlack = 4096
)

// maxFrameSize is the largest compressed size a chunk of n uncompressed
// bytes may have.
func maxFrameSize(n int64) int64 { return n + n>>8 + frameSlack }

// invalid is an ErrInvalidIndex error.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrInvalidIndex)
}

// checkPath checks a clean relative path (an entry name or hard link
// target, "" the root) against the bounds: length, depth, component length,
// valid UTF-8 (the TOC is JSON: other bytes would not survive it).
func checkPath(p string) error {
	if c, err := CleanName(p); err != nil {
		return err
	} else if c != p {
		return invalid("name %.64q is not clean", p)
	}
	if len(p) > MaxPathLen {
		return invalid("name %.64q... is %d bytes long, more than %d", p, len(p), MaxPathLen)
	}
	if !utf8.ValidString(p) {
		return invalid("name %.64q is not valid UTF-8", p)
	}
	if p == "" {
		return nil
	}
	if n := strings.Count(p, "/") + 1; n > MaxPathDepth {
		return invalid("name %.64q... has %d components, more than %d", p, n, MaxPathDepth)
	}
	for rest := p; rest != ""; {
		part, tail, _ := strings.Cut(rest, "/")
		if len(part) > MaxNameLen {
			return invalid("name %.64q... has a %d-byte component, more than %d", p, len(part), MaxNameLen)
		}
		rest = tail
	}
	return nil
}

// checkName checks an entry name: checkPath, and a whiteout must name a
// file in its directory (".wh." alone would hide the directory itself,
// ".wh.." and ".wh..." it and its parent).
func checkName(name string) error {
	if err := checkPath(name); err != nil {
		return err
	}
	base := name[strings.LastIndexByte(name, '/')+1:]
	if strings.HasPrefix(base, whiteoutPrefix) && !strings.HasPrefix(base, whiteoutMeta) {
		switch target := base[len(whiteoutPrefix):]; target {
		case "", ".", "..":
			return fmt.Errorf("whiteout %.64q hides %q: %w", name, target, ErrUnsafePath)
		}
	}
	return nil
}

// checkEntry checks one entry's fields on their own: name, type, mode,
// owner, sizes, link target, device numbers, xattrs. Where its content
// lies and what it links to is the TOC's and the tree's to check.
func checkEntry(e *Entry) error {
	if err := checkName(e.Name); err != nil {
		return err
	}
	if e.Mode&^07777 != 0 || e.Size < 0 || e.Offset < 0 {
		return invalid("entry %.64q mode %o size %d offset %d", e.Name, e.Mode, e.Size, e.Offset)
	}
	if e.UID < 0 || int64(e.UID) > maxID || e.GID < 0 || int64(e.GID) > maxID {
		return invalid("entry %.64q owner %d:%d", e.Name, e.UID, e.GID)
	}
	if e.Type != TypeReg && (e.Size != 0 || e.Offset != 0) {
		return invalid("entry %.64q of type %s has content", e.Name, e.Type)
	}
	if e.Type != TypeChar && e.Type != TypeBlock && (e.DevMajor != 0 || e.DevMinor != 0) {
		return invalid("entry %.64q of type %s has device numbers", e.Name, e.Type)
	}
	if e.Type != TypeSymlink && e.Type != TypeHardlink && e.Linkname != "" {
		return invalid("entry %.64q of type %s has a link target", e.Name, e.Type)
	}
	if e.Name == "" && e.Type != TypeDir {
		return invalid("root entry is a %s", e.Type)
	}
	switch e.Type {
	case TypeReg, TypeDir, TypeFifo:
	case TypeHardlink:
		if err := checkPath(e.Linkname); err != nil || e.Linkname == "" {
			return fmt.Errorf("hard link %.64q to %.64q: %w", e.Name, e.Linkname, ErrUnsafePath)
		}
	case TypeSymlink:
		if e.Linkname == "" || len(e.Linkname) > MaxPathLen || strings.IndexByte(e.Linkname, 0) >= 0 || !utf8.ValidString(e.Linkname) {
			return invalid("symlink %.64q to %.64q (%d bytes)", e.Name, e.Linkname, len(e.Linkname))
		}
	case TypeChar, TypeBlock:
		if e.DevMajor < 0 || e.DevMajor > maxID || e.DevMinor < 0 || e.DevMinor > maxID {
			return invalid("device %.64q %d:%d", e.Name, e.DevMajor, e.DevMinor)
		}
	default:
		return invalid("entry %.64q has type %.16q", e.Name, e.Type)
	}
	return checkXattrs(e.Name, e.Xattrs)
}

func checkXattrs(name string, x map[string][]byte) error {
	if len(x) > MaxXattrs {
		return invalid("entry %.64q has %d xattrs, more than %d", name, len(x), MaxXattrs)
	}
	total := 0
	for k, v := range x {
		if k == "" || len(k) > MaxXattrNameLen || strings.IndexByte(k, 0) >= 0 || !utf8.ValidString(k) || len(v) > MaxXattrValueLen {
			return invalid("entry %.64q xattr %.64q (%d-byte value)", name, k, len(v))
		}
		if total += len(k) + len(v); total > MaxXattrBytes {
			return invalid("entry %.64q has more than %d bytes of xattrs", name, MaxXattrBytes)
		}
	}
	return nil
}
