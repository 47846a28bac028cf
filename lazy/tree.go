package lazy

import (
	"fmt"
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

// Tree builds the layer's file tree from its (validated) TOC with overlay
// semantics, as unpacking it into an empty directory would: later entries
// replace earlier ones, parents missing from the tar are created 0755,
// whiteouts become 0:0 character devices or an opaque xattr, hard links
// share the node of their target, which must be an earlier non-directory
// entry of the same layer.
func Tree(t *TOC, opts ...TreeOption) (*Node, error) {
	var o treeOptions
	for _, opt := range opts {
		opt(&o)
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

	// dir finds or creates the directory at p.
	dir := func(p string) (*Node, error) {
		n := root
		if p == "" {
			return n, nil
		}
		for _, part := range strings.Split(p, "/") {
			c := n.Children[part]
			if c == nil {
				name := path.Join(n.Entry.Name, part)
				e := Entry{Name: name, Type: TypeDir, Mode: 0o755}
				if a, ok := o.implicit[name]; ok {
					e.Mode, e.UID, e.GID, e.ModTime, e.Xattrs = a.Mode&07777, a.UID, a.GID, a.ModTime, a.Xattrs
				}
				c = newNode(e)
				n.Children[part] = c
			} else if !c.IsDir() {
				return nil, fmt.Errorf("%s: parent %s is not a directory: %w", p, c.Entry.Name, ErrInvalidIndex)
			}
			n = c
		}
		return n, nil
	}
	lookup := func(p string) *Node {
		n := root
		for _, part := range strings.Split(p, "/") {
			if n = n.Children[part]; n == nil {
				return nil
			}
		}
		return n
	}

	for _, e := range t.Entries {
		if e.Name == "" {
			if e.Type != TypeDir {
				return nil, fmt.Errorf("root entry is a %s: %w", e.Type, ErrInvalidIndex)
			}
			root.Entry = e
			continue
		}
		parentPath, base := path.Split(e.Name)
		parent, err := dir(strings.TrimSuffix(parentPath, "/"))
		if err != nil {
			return nil, err
		}
		switch {
		case base == whiteoutOpaque:
			if parent.Entry.Xattrs == nil {
				parent.Entry.Xattrs = map[string][]byte{}
			}
			parent.Entry.Xattrs[OpaqueXattr] = []byte("y")
			continue
		case strings.HasPrefix(base, whiteoutPrefix):
			// As containerd's applier: ".wh.NAME" hides NAME, even a
			// ".wh..wh.x" (it makes a device ".wh.x"); a target that is
			// not a name in this directory is an invalid archive.
			name := base[len(whiteoutPrefix):]
			if name == "" || name == "." || name == ".." {
				return nil, fmt.Errorf("whiteout %q has no target: %w", e.Name, ErrInvalidIndex)
			}
			parent.Children[name] = newNode(Entry{
				Name: path.Join(parent.Entry.Name, name), Type: TypeChar,
				UID: e.UID, GID: e.GID, ModTime: e.ModTime,
			})
			continue
		}
		if e.Type == TypeHardlink {
			target := lookup(e.Linkname)
			if target == nil || target.IsDir() {
				return nil, fmt.Errorf("hard link %s to %s: no such file earlier in the layer: %w", e.Name, e.Linkname, ErrInvalidIndex)
			}
			if old := parent.Children[base]; old != target {
				target.Nlink++
				parent.Children[base] = target
			}
			// The link's header sets the shared inode's owner, mode, time
			// and xattrs, as containerd's applier does.
			target.Entry.Mode, target.Entry.UID, target.Entry.GID, target.Entry.ModTime = e.Mode, e.UID, e.GID, e.ModTime
			for k, v := range e.Xattrs {
				if target.Entry.Xattrs == nil {
					target.Entry.Xattrs = map[string][]byte{}
				}
				target.Entry.Xattrs[k] = v
			}
			continue
		}
		if old := parent.Children[base]; old != nil && old.IsDir() && e.Type == TypeDir {
			children := old.Children
			old.Entry = e
			old.Children = children // a directory entry again: new attributes, same contents
			continue
		}
		parent.Children[base] = newNode(e)
	}
	countDirLinks(root)
	return root, nil
}

// TreeOption adjusts how Tree builds a layer's tree.
type TreeOption func(*treeOptions)

type treeOptions struct {
	implicit map[string]Entry
}

// WithImplicitDirs gives the directories the layer implies but does not
// hold (see ImplicitDirs) the mode, owner, time and xattrs of attrs[name]
// instead of root 0755: what containerd's applier copies from the same
// directory in the lower layers.
func WithImplicitDirs(attrs map[string]Entry) TreeOption {
	return func(o *treeOptions) { o.implicit = attrs }
}

// ImplicitDirs returns the directories Tree creates for t without an
// entry of their own (parents of entries), parents before children.
func ImplicitDirs(t *TOC) []string {
	explicit := map[string]bool{}
	ancestors := map[string]bool{}
	for _, e := range t.Entries {
		if e.Type == TypeDir {
			explicit[e.Name] = true
		}
		for d := path.Dir(e.Name); d != "." && d != "/" && d != "" && !ancestors[d]; d = path.Dir(d) {
			ancestors[d] = true
		}
	}
	var out []string
	for d := range ancestors {
		if !explicit[d] {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if a, b := strings.Count(out[i], "/"), strings.Count(out[j], "/"); a != b {
			return a < b
		}
		return out[i] < out[j]
	})
	return out
}

// countDirLinks sets each directory's link count: 2 plus its subdirectories.
func countDirLinks(n *Node) {
	n.Nlink = 2
	for _, c := range n.Children {
		if c.IsDir() {
			n.Nlink++
			countDirLinks(c)
		}
	}
}
