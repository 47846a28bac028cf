// Package rewrite finds container image references in YAML (Kubernetes
// manifests, Helm values, kustomizations) and moves those under one registry
// location to another, optionally pinning tags to verified digests. Edits
// are spliced into the original bytes: comments, order, quoting and layout
// survive, and only the scalars that change are replaced.
package rewrite

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Status is what happened to one file.
type Status string

// File outcomes.
const (
	StatusChanged   Status = "changed"   // references rewritten
	StatusUnchanged Status = "unchanged" // nothing to rewrite (or already rewritten)
	StatusSkipped   Status = "skipped"   // not YAML that parses: left byte for byte
)

// ReasonNoImages is the Reason of a file skipped because it is YAML with no
// image field at all: not a manifest, Helm values or kustomization.
const ReasonNoImages = "no image fields"

// Change is one rewritten reference.
type Change struct {
	Line  int    `json:"line"`
	Field string `json:"field"` // the YAML path, e.g. spec.template.spec.containers[0].image
	Old   string `json:"old"`
	New   string `json:"new"`
}

// Warning is a reference left (partly) as it was, and why.
type Warning struct {
	Line      int    `json:"line"`
	Field     string `json:"field"`
	Reference string `json:"reference"`
	Message   string `json:"message"`
}

// Result is the outcome for one file.
type Result struct {
	Path     string    `json:"file"`
	Status   Status    `json:"status"`
	Reason   string    `json:"reason,omitempty"` // why it was skipped
	Changes  []Change  `json:"changes,omitempty"`
	Warnings []Warning `json:"warnings,omitempty"`
	// Old and New are the file's bytes before and after.
	Old []byte `json:"-"`
	New []byte `json:"-"`
}

// Rewriter moves references from one location to another.
type Rewriter struct {
	from, to Location
	pins     *Pins
}

// Option configures a Rewriter.
type Option func(*Rewriter)

// WithPins replaces the tags of rewritten references with the digests a
// verify report proved equal; a tag it does not have is left, with a
// warning.
func WithPins(p *Pins) Option { return func(rw *Rewriter) { rw.pins = p } }

// ErrOverlap is returned when the source location lies inside the
// destination, so a second run would rewrite what the first one wrote.
var ErrOverlap = errors.New("the source lies inside the destination: a second run would move references again")

// New returns a Rewriter moving references under from (REGISTRY[/PREFIX])
// to the same path under to.
func New(from, to string, opts ...Option) (*Rewriter, error) {
	f, err := ParseLocation(from)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	t, err := ParseLocation(to)
	if err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}
	if _, ok := t.contains(f.Host, f.Path); ok {
		return nil, fmt.Errorf("%s inside %s: %w", f, t, ErrOverlap)
	}
	rw := &Rewriter{from: f, to: t}
	for _, o := range opts {
		o(rw)
	}
	if rw.pins != nil {
		if err := rw.pins.checkSource(f); err != nil {
			return nil, err
		}
	}
	return rw, nil
}

// move is the name r gets: under --to if it is under --from, unchanged if
// it is already under --to; false if it is under neither.
func (rw *Rewriter) move(r Ref) (Ref, bool) {
	if _, ok := rw.to.contains(r.Host, r.Path); ok {
		return r, true
	}
	return r.moved(rw.from, rw.to)
}

// target is the reference r becomes, with a warning if it could not be
// pinned; false if r is none of ours. A reference already under --to is
// pinned too, so a run with pins after one without finishes the job.
func (rw *Rewriter) target(r Ref) (nr Ref, why string, ok bool) {
	src := r
	if _, under := rw.to.contains(r.Host, r.Path); under {
		nr = r
		if s, ok := r.moved(rw.to, rw.from); ok {
			src = s
		}
	} else if nr, ok = r.moved(rw.from, rw.to); !ok {
		return Ref{}, "", false
	}
	if rw.pins == nil {
		return nr, "", true
	}
	d, found := rw.pins.lookup(src)
	tag := src.Tag
	if tag == "" {
		tag = "latest"
	}
	switch {
	case nr.Digest != "":
		if src.Tag != "" && found && d != nr.Digest {
			why = fmt.Sprintf("digest differs from %s, verified for tag %s: left as is", d, tag)
		}
	case !found:
		why = fmt.Sprintf("tag %s of %s is not verified in the report: tag left", tag, src.Name())
	default:
		nr.Tag, nr.Digest = "", d
	}
	return nr, why, true
}

// Rewrite rewrites the references in one file's bytes; name is used for
// reporting and to recognize kustomization.yaml. Bytes that are not YAML
// (or YAML that does not parse, such as a Helm template) are skipped and
// returned unchanged.
func (rw *Rewriter) Rewrite(name string, b []byte) *Result {
	res := &Result{Path: name, Old: b, New: b, Status: StatusUnchanged}
	skip := func(reason string) *Result {
		res.Status, res.Reason = StatusSkipped, reason
		if bytes.Contains(bytes.ToLower(b), []byte(strings.ToLower(rw.from.Host))) {
			res.Reason += "; it mentions " + rw.from.Host + ": check it by hand"
		}
		return res
	}
	if !utf8.Valid(b) || bytes.IndexByte(b, 0) >= 0 {
		return skip("not UTF-8 text")
	}
	docs, err := parse(b)
	if err != nil {
		return skip(err.Error())
	}
	base := filepath.Base(name)
	w := &walker{rw: rw, src: newSource(b), seen: map[*yaml.Node]bool{},
		kustom: base == "kustomization.yaml" || base == "kustomization.yml" || base == "Kustomization"}
	structured := false
	for _, d := range docs {
		if len(d.Content) > 0 && (d.Content[0].Kind == yaml.MappingNode || d.Content[0].Kind == yaml.SequenceNode) {
			structured = true
		}
		w.doc(d)
	}
	if !structured && len(docs) > 0 {
		return skip("not a YAML mapping or sequence")
	}
	if !w.found {
		return skip(ReasonNoImages)
	}
	res.Changes, res.Warnings = w.changes, w.warns
	if len(w.edits) == 0 {
		return res
	}
	out := apply(b, w.edits)
	// A safety net: the edited file must still parse, into as many documents.
	if again, err := parse(out); err != nil || len(again) != len(docs) {
		res.Changes = nil
		return skip(fmt.Sprintf("rewriting would break the YAML (%v): left unchanged", err))
	}
	res.New, res.Status = out, StatusChanged
	return res
}

// parse decodes every document of b.
func parse(b []byte) ([]*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []*yaml.Node
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("not YAML that parses: %s", strings.TrimPrefix(err.Error(), "yaml: "))
		}
		docs = append(docs, &n)
	}
}
