package lazy

import (
	"bytes"
	"maps"
	"path"
	"sort"
	"strings"
)

// Overlay whiteout conventions, as containerd's overlay unpacker applies
// them: a tar entry ".wh.NAME" hides NAME of lower layers and becomes a
// character device 0:0 named NAME; ".wh..wh..opq" makes its directory
// opaque (this xattr set to "y"); other ".wh..wh." entries are aufs
// bookkeeping and are dropped.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
	// OpaqueXattr marks an overlay directory that hides the lower layers'.
	OpaqueXattr = "trusted.overlay.opaque"
)

// Node is a file of a layer as overlayfs should see it: whiteouts
// converted, hard links sharing one Node.
type Node struct {
	Entry    Entry // its attributes (Name is its first path)
	Ino      uint64
	Nlink    uint32
	Children map[string]*Node // directories only
}

// IsDir reports whether n is a directory.
func (n *Node) IsDir() bool { return n.Entry.Type == TypeDir }

// Names returns a directory's child names, sorted.
func (n *Node) Names() []string {
	names := make([]string, 0, len(n.Children))
	for name := range n.Children {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// TreeOption configures Tree.
type TreeOption func(*treeOptions)

type treeOptions struct {
	implicit map[string]Entry
}

// WithImplicitDirs gives the attributes of directories the layer implies
// but has no entry for (see ImplicitDirs), keyed by clean relative path, as
// containerd's unpacker copies them from the lower layers: a directory in
// attrs takes its Mode (07777 bits), UID, GID, ModTime and Xattrs (except
// trusted.*, which containerd does not copy up); its name and type stay
// the tree's. One not in attrs is root's, 0755.
func WithImplicitDirs(attrs map[string]Entry) TreeOption {
	return func(o *treeOptions) { o.implicit = attrs }
}

// Tree builds the layer's file tree from its (validated) TOC with overlay
// semantics, as unpacking it into an empty directory would: later entries
// replace earlier ones (a directory over a directory keeps its contents and
// adds its xattrs to the old ones), parents missing from the tar are
// created 0755 (or as WithImplicitDirs says), whiteouts become 0:0
// character devices or an opaque xattr, hard links share the node of their
// target, which must be an earlier non-directory entry of the same layer.
// It checks every name itself and never panics, whatever the TOC holds.
func Tree(t *TOC, opts ...TreeOption) (*Node, error) {
	var o treeOptions
	for _, opt := range opts {
		opt(&o)
	}
	return t.tree(o.implicit, nil)
}

// ImplicitDirs returns the directories Tree creates without a tar entry
// for them at that point (a parent an entry needs before, or without, its
// own directory entry), as clean relative paths, sorted: parents before
// children. These are the paths to look up in the lower layers for
// WithImplicitDirs. It returns nil for a TOC whose tree does not build.
func ImplicitDirs(t *TOC) []string {
	seen := map[string]bool{}
	if _, err := t.tree(nil, func(p string) { seen[p] = true }); err != nil {
		return nil
	}
	dirs := make([]string, 0, len(seen))
	for p := range seen {
		dirs = append(dirs, p)
	}
	sort.Strings(dirs) // a path sorts after its prefixes: parents first
	return dirs
}

// tree builds the tree; implicit gives implied directories' attributes,
// made (if set) is told of each one created.
func (t *TOC) tree(implicit map[string]Entry, made func(string)) (*Node, error) {
	if len(t.Entries) > MaxEntries {
		return nil, invalid("%d entries, more than %d", len(t.Entries), MaxEntries)
	}
	ino := uint64(1)
	newNode := func(e Entry) *Node {
		ino++
		n := &Node{Entry: e, Ino: ino, Nlink: 1}
		if e.Type == TypeDir {
			n.Children = map[string]*Node{}
			n.Nlink = 2
		}
		return n
	}
	root := newNode(Entry{Type: TypeDir, Mode: 0o755})
	root.Ino = 1
	ino--

	implied := 0
	newDir := func(p string) (*Node, error) {
		if implied++; implied > MaxEntries {
			return nil, invalid("more than %d implied directories", MaxEntries)
		}
		e := Entry{Name: p, Type: TypeDir, Mode: 0o755}
		if a, ok := implicit[p]; ok {
			e.Mode, e.UID, e.GID, e.ModTime = a.Mode&07777, a.UID, a.GID, a.ModTime
			for k, v := range a.Xattrs {
				if !strings.HasPrefix(k, "trusted.") {
					if e.Xattrs == nil {
						e.Xattrs = map[string][]byte{}
					}
					e.Xattrs[k] = bytes.Clone(v)
				}
			}
		}
		if made != nil {
			made(p)
		}
		return newNode(e), nil
	}
	// dir finds or creates the directory at p (a checked name).
	dir := func(p string) (*Node, error) {
		n := root
		for rest, at := p, 0; rest != ""; {
			part, tail, _ := strings.Cut(rest, "/")
			at += len(part)
			c := n.Children[part]
			if c == nil {
				var err error
				if c, err = newDir(p[:at]); err != nil {
					return nil, err
				}
				n.Children[part] = c
			} else if !c.IsDir() {
				return nil, invalid("%.64q: parent %.64q is not a directory", p, c.Entry.Name)
			}
			n, rest, at = c, tail, at+1
		}
		return n, nil
	}
	lookup := func(p string) *Node {
		n := root
		for rest := p; rest != "" && n != nil; {
			part, tail, _ := strings.Cut(rest, "/")
			n, rest = n.Children[part], tail
		}
		return n
	}

	for i := range t.Entries {
		e := t.Entries[i]
		if err := checkName(e.Name); err != nil {
			return nil, err
		}
		if e.Name == "" {
			if e.Type != TypeDir {
				return nil, invalid("root entry is a %.16s", e.Type)
			}
			e.Xattrs = mergeXattrs(root.Entry.Xattrs, e.Xattrs)
			root.Entry = e
			continue
		}
		parentPath, base := "", e.Name
		if j := strings.LastIndexByte(e.Name, '/'); j >= 0 {
			parentPath, base = e.Name[:j], e.Name[j+1:]
		}
		parent, err := dir(parentPath)
		if err != nil {
			return nil, err
		}
		switch {
		case base == whiteoutOpaque:
			parent.Entry.Xattrs = mergeXattrs(parent.Entry.Xattrs, map[string][]byte{OpaqueXattr: []byte("y")})
			continue
		case strings.HasPrefix(base, whiteoutPrefix):
			// As containerd's overlay applier: ".wh.NAME" hides NAME, and
			// so does any other ".wh..wh.x" (it makes a device ".wh.x").
			name := base[len(whiteoutPrefix):] // checkName: not "", "." or ".."
			parent.Children[name] = newNode(Entry{
				Name: path.Join(parentPath, name), Type: TypeChar,
				UID: e.UID, GID: e.GID, ModTime: e.ModTime,
			})
			continue
		}
		if e.Type == TypeHardlink {
			if err := checkPath(e.Linkname); err != nil {
				return nil, err
			}
			target := lookup(e.Linkname)
			if target == nil || target.IsDir() || e.Linkname == "" {
				return nil, invalid("hard link %.64q to %.64q: no such file earlier in the layer", e.Name, e.Linkname)
			}
			if old := parent.Children[base]; old != target {
				target.Nlink++
				parent.Children[base] = target
			}
			// The link's header sets the shared inode's owner, mode, time
			// and xattrs, as containerd's applier does.
			target.Entry.Mode, target.Entry.UID, target.Entry.GID, target.Entry.ModTime = e.Mode, e.UID, e.GID, e.ModTime
			if len(e.Xattrs) > 0 {
				x := make(map[string][]byte, len(target.Entry.Xattrs)+len(e.Xattrs))
				for k, v := range target.Entry.Xattrs {
					x[k] = v
				}
				for k, v := range e.Xattrs {
					x[k] = v
				}
				target.Entry.Xattrs = x
			}
			continue
		}
		if old := parent.Children[base]; old != nil && old.IsDir() && e.Type == TypeDir {
			// A directory entry again: new attributes, same contents,
			// xattrs added to the old ones (as setxattr on it would).
			e.Xattrs = mergeXattrs(old.Entry.Xattrs, e.Xattrs)
			old.Entry = e
			continue
		}
		if e.Type == TypeSymlink {
			e.Mode = 0o777 // a symlink's mode on Linux, whatever the tar says
		}
		parent.Children[base] = newNode(e)
	}
	countDirLinks(root)
	return root, nil
}

// mergeXattrs returns a new map of old's xattrs overridden by add's, never
// one of its arguments: a node's xattrs are its own, not the TOC's.
func mergeXattrs(old, add map[string][]byte) map[string][]byte {
	if len(old) == 0 && len(add) == 0 {
		return nil
	}
	m := make(map[string][]byte, len(old)+len(add))
	maps.Copy(m, old)
	maps.Copy(m, add)
	return m
}

// countDirLinks sets each directory's link count: 2 plus its
// subdirectories. Iterative: the depth is bounded, but no recursion is
// cheaper still.
func countDirLinks(root *Node) {
	stack := []*Node{root}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n.Nlink = 2
		for _, c := range n.Children {
			if c.IsDir() {
				n.Nlink++
				stack = append(stack, c)
			}
		}
	}
}
