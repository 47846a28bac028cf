package rewrite

import (
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// walker finds the image references of one YAML document and collects the
// edits that rewrite them.
type walker struct {
	rw      *Rewriter
	src     *source
	kustom  bool // the file is a kustomization
	edits   []edit
	changes []Change
	warns   []Warning
	seen    map[*yaml.Node]bool
	found   bool // an image field of any registry
}

// doc walks one document.
func (w *walker) doc(d *yaml.Node) {
	if d.Kind != yaml.DocumentNode || len(d.Content) == 0 {
		return
	}
	root := d.Content[0]
	kustom := w.kustom || (root.Kind == yaml.MappingNode &&
		(scalarValue(root, "kind") == "Kustomization" || strings.HasPrefix(scalarValue(root, "apiVersion"), "kustomize.config.k8s.io/")))
	if kustom && root.Kind == yaml.MappingNode {
		if imgs := lookup(root, "images"); imgs != nil && imgs.Kind == yaml.SequenceNode {
			for i, e := range imgs.Content {
				if e.Kind == yaml.MappingNode {
					w.kustomizeImage(e, fmt.Sprintf("images[%d]", i))
				}
			}
		}
	}
	if k := scalarValue(root, "kind"); root.Kind == yaml.MappingNode && (k == "ConfigMap" || k == "Secret") && scalarValue(root, "apiVersion") == "v1" {
		return // data a program reads: whatever it calls image is not one
	}
	w.node(root, "")
}

// node visits n at path: image fields and image blocks anywhere, then its
// children. Aliases are not followed: what they name is visited where it is
// defined (scalars under an image key are resolved in imageString).
func (w *walker) node(n *yaml.Node, path string) {
	switch n.Kind {
	case yaml.SequenceNode:
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			if c.Kind == yaml.MappingNode && isImageBlock("", c) {
				w.helmImage(c, p)
			}
			w.node(c, p)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				continue
			}
			p := join(path, k.Value)
			switch {
			case isImageKey(k.Value) && deref(v).Kind == yaml.ScalarNode:
				w.imageString(deref(v), p)
			case v.Kind == yaml.MappingNode && isImageBlock(k.Value, v):
				w.helmImage(v, p)
			}
			w.node(v, p)
		}
	}
}

// isImageKey: image, and camelCase keys ending in Image (sidecarImage).
func isImageKey(k string) bool { return k == "image" || (len(k) > 5 && strings.HasSuffix(k, "Image")) }

// isImageBlock: a map with a repository and a tag or registry (Helm's image
// blocks), or with a repository under a key that says image.
func isImageBlock(key string, m *yaml.Node) bool {
	if scalar(m, "repository") == nil {
		return false
	}
	return scalar(m, "tag") != nil || scalar(m, "registry") != nil || strings.Contains(strings.ToLower(key), "image")
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// deref is the node an alias names, or n.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// lookup is the value of key in mapping m, or nil.
func lookup(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if k := m.Content[i]; k.Kind == yaml.ScalarNode && k.Value == key {
			return deref(m.Content[i+1])
		}
	}
	return nil
}

// lookupKey is the key node of key in mapping m, or nil.
func lookupKey(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if k := m.Content[i]; k.Kind == yaml.ScalarNode && k.Value == key {
			return k
		}
	}
	return nil
}

// scalar is the string scalar under key in m, or nil.
func scalar(m *yaml.Node, key string) *yaml.Node {
	v := lookup(m, key)
	if v == nil || v.Kind != yaml.ScalarNode || (v.Tag != "!!str" && v.Tag != "!!int" && v.Tag != "!!float") {
		return nil
	}
	return v
}

func scalarValue(m *yaml.Node, key string) string {
	if v := scalar(m, key); v != nil {
		return v.Value
	}
	return ""
}

// assign is one scalar to set.
type assign struct {
	n     *yaml.Node
	value string
}

// set records the edits making each scalar read its value, all or none: if
// one cannot be edited in place, it warns and changes nothing.
func (w *walker) set(field string, as ...assign) bool {
	var edits []edit
	for _, a := range as {
		if a.n.Value == a.value && a.n.Kind == yaml.ScalarNode {
			continue
		}
		e, err := w.src.replace(a.n, a.value)
		if err != nil {
			w.warn(a.n, field, a.n.Value, err.Error())
			return false
		}
		edits = append(edits, e)
	}
	w.edits = append(w.edits, edits...)
	return true
}

func (w *walker) warn(n *yaml.Node, field, ref, msg string) {
	w.warns = append(w.warns, Warning{Line: n.Line, Field: field, Reference: ref, Message: msg})
}

// once reports whether n is seen for the first time.
func (w *walker) once(n *yaml.Node) bool {
	if w.seen[n] {
		return false
	}
	w.seen[n] = true
	return true
}

// imageString rewrites a whole reference written as one string.
func (w *walker) imageString(n *yaml.Node, field string) {
	if n.Tag != "!!str" || !w.once(n) {
		return
	}
	old, ok := ParseRef(n.Value)
	if !ok {
		return
	}
	w.found = true
	nr, why, ok := w.rw.target(old)
	if !ok {
		return
	}
	if why != "" {
		w.warn(n, field, n.Value, why)
	}
	if nr != old && w.set(field, assign{n, nr.String()}) {
		w.changes = append(w.changes, Change{Line: n.Line, Field: field, Old: n.Value, New: nr.String()})
	}
}

// helmImage rewrites a Helm values image block: registry (optional) and
// repository make the name; tag and digest (optional) are separate.
func (w *walker) helmImage(m *yaml.Node, field string) {
	reg, repo, tag, dig := scalar(m, "registry"), scalar(m, "repository"), scalar(m, "tag"), scalar(m, "digest")
	if repo.Tag != "!!str" || w.seen[repo] {
		return
	}
	if reg == nil && strings.ContainsAny(repo.Value, ":@") {
		if r, ok := ParseRef(repo.Value); ok && (r.Tag != "" || r.Digest != "") {
			w.imageString(repo, join(field, "repository")) // a whole reference
			return
		}
	}
	w.once(repo)
	name := repo.Value
	if reg != nil && reg.Value != "" {
		name = reg.Value + "/" + repo.Value
	}
	if tag != nil && tag.Value != "" {
		name += ":" + tag.Value
	}
	if dig != nil && dig.Value != "" {
		name += "@" + dig.Value
	}
	old, ok := ParseRef(name)
	if !ok {
		return
	}
	w.found = true
	nr, why, ok := w.rw.target(old)
	if !ok {
		return
	}
	if why != "" {
		w.warn(repo, field, old.String(), why)
	}
	var as []assign
	if nr.Name() != old.Name() {
		switch {
		case reg == nil || reg.Value == "":
			as = append(as, assign{repo, nr.Name()})
		default:
			newReg, newRepo := nr.Host, nr.Path
			// A registry that held the whole --from location takes the
			// whole --to and the repository stays as it is.
			if l, err := ParseLocation(reg.Value); err == nil {
				if rest, ok := w.rw.from.contains(l.Host, l.Path); ok {
					newReg, newRepo = w.rw.to.join(rest), repo.Value
				}
			}
			as = append(as, assign{reg, newReg}, assign{repo, newRepo})
		}
	}
	if nr.Digest != old.Digest { // pinned; the tag field stays, the digest wins
		if dig == nil {
			w.warn(repo, field, old.String(), "no digest field to pin "+nr.Digest.String()+" into: tag left")
			nr.Digest = old.Digest
		} else {
			as = append(as, assign{dig, nr.Digest.String()})
		}
		nr.Tag = old.Tag
	}
	if nr != old && w.set(field, as...) {
		w.changes = append(w.changes, Change{Line: repo.Line, Field: field, Old: old.String(), New: nr.String()})
	}
}

// kustomizeImage rewrites one kustomization images entry: name and newName
// are names, newTag a tag, digest a digest. Pinning turns newTag into digest.
func (w *walker) kustomizeImage(m *yaml.Node, field string) {
	name, newName, newTag, dig := scalar(m, "name"), scalar(m, "newName"), scalar(m, "newTag"), scalar(m, "digest")
	var as []assign
	var before, after []string
	for _, n := range []*yaml.Node{name, newName} {
		if n == nil || n.Tag != "!!str" || !w.once(n) {
			continue
		}
		r, ok := ParseRef(n.Value)
		if !ok || r.Tag != "" || r.Digest != "" {
			continue
		}
		w.found = true
		if nr, ok := w.rw.move(r); ok && nr.Name() != r.Name() {
			as = append(as, assign{n, nr.Name()})
			before, after = append(before, n.Value), append(after, nr.Name())
		}
	}
	// Pin what the entry makes of the image: newName (or name) at newTag.
	img := newName
	if img == nil {
		img = name
	}
	if w.rw.pins != nil && img != nil && newTag != nil && newTag.Value != "" && (dig == nil || dig.Value == "") {
		if r, ok := ParseRef(img.Value + ":" + newTag.Value); ok {
			nr, why, ok := w.rw.target(r)
			switch {
			case !ok:
			case why != "":
				w.warn(newTag, join(field, "newTag"), r.String(), why)
			case nr.Digest != "" && dig != nil:
				as = append(as, assign{dig, nr.Digest.String()})
				before, after = append(before, "digest: "+dig.Value), append(after, "digest: "+nr.Digest.String())
			case nr.Digest != "":
				as = append(as, assign{lookupKey(m, "newTag"), "digest"}, assign{newTag, nr.Digest.String()})
				before, after = append(before, "newTag: "+newTag.Value), append(after, "digest: "+nr.Digest.String())
			}
		}
	}
	if len(as) > 0 && w.set(field, as...) {
		line := m.Line
		if name != nil {
			line = name.Line
		}
		w.changes = append(w.changes, Change{Line: line, Field: field, Old: strings.Join(before, ", "), New: strings.Join(after, ", ")})
	}
}
