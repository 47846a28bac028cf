package rewrite

import (
	"errors"
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// ErrBadLocation is returned for a --from or --to that is not
// REGISTRY[/PREFIX].
var ErrBadLocation = errors.New("want REGISTRY[/PREFIX], e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com or registry.example.com/mirror")

// Location is a registry host and an optional repository path prefix.
type Location struct {
	Host string // normalized like reference does (index.docker.io is docker.io)
	Path string // "" or a/b, no leading or trailing slash
}

// String formats the location as HOST[/PATH].
func (l Location) String() string {
	if l.Path == "" {
		return l.Host
	}
	return l.Host + "/" + l.Path
}

// ParseLocation parses REGISTRY[/PREFIX]. The registry must be explicit (a
// host with a dot or a port, or localhost): "team/app" names no registry.
func ParseLocation(s string) (Location, error) {
	host, _, _ := strings.Cut(s, "/")
	if s == "" || strings.HasSuffix(s, "/") || !(strings.ContainsAny(host, ".:") || host == "localhost") {
		return Location{}, fmt.Errorf("%q: %w", s, ErrBadLocation)
	}
	// A placeholder name checks the grammar and normalizes the host.
	named, err := reference.ParseNormalizedNamed(s + "/x")
	if err != nil {
		return Location{}, fmt.Errorf("%q: %w: %w", s, ErrBadLocation, err)
	}
	if _, ok := named.(reference.NamedTagged); ok {
		return Location{}, fmt.Errorf("%q names a tag: %w", s, ErrBadLocation)
	}
	if _, ok := named.(reference.Digested); ok {
		return Location{}, fmt.Errorf("%q names a digest: %w", s, ErrBadLocation)
	}
	l := Location{Host: reference.Domain(named)}
	if strings.Contains(s, "/") {
		// Not for a bare host: docker.io/x is docker.io/library/x.
		l.Path = strings.TrimSuffix(strings.TrimSuffix(reference.Path(named), "x"), "/")
	}
	return l, nil
}

// contains reports whether repository path p of host h is under l (on
// path-component boundaries), and returns the rest of the path below l.
func (l Location) contains(h, p string) (rest string, ok bool) {
	if !strings.EqualFold(h, l.Host) {
		return "", false
	}
	switch {
	case l.Path == "":
		return p, true
	case p == l.Path:
		return "", true
	case strings.HasPrefix(p, l.Path+"/"):
		return p[len(l.Path)+1:], true
	}
	return "", false
}

// join is the repository name rest would have under l.
func (l Location) join(rest string) string {
	switch {
	case rest == "":
		return l.String()
	case l.Path == "":
		return l.Host + "/" + rest
	}
	return l.Host + "/" + l.Path + "/" + rest
}

// Ref is one parsed image reference.
type Ref struct {
	Host   string
	Path   string
	Tag    string        // "" when the reference has none
	Digest digest.Digest // "" when the reference has none
}

// ParseRef parses an image reference the way a container runtime does
// (nginx is docker.io/library/nginx). It returns false for anything that is
// not a reference, such as a template expression or an empty string.
func ParseRef(s string) (Ref, bool) {
	if s == "" || strings.TrimSpace(s) != s {
		return Ref{}, false
	}
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return Ref{}, false
	}
	r := Ref{Host: reference.Domain(named), Path: reference.Path(named)}
	if t, ok := named.(reference.Tagged); ok {
		r.Tag = t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		r.Digest = d.Digest()
	}
	return r, true
}

// Name is HOST/PATH.
func (r Ref) Name() string { return r.Host + "/" + r.Path }

// String formats the reference in full: HOST/PATH[:TAG][@DIGEST].
func (r Ref) String() string {
	s := r.Name()
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest.String()
	}
	return s
}

// moved is r with its name moved from under one location to under another.
func (r Ref) moved(from, to Location) (Ref, bool) {
	rest, ok := from.contains(r.Host, r.Path)
	if !ok {
		return Ref{}, false
	}
	n, err := reference.ParseNormalizedNamed(to.join(rest))
	if err != nil {
		return Ref{}, false
	}
	r.Host, r.Path = reference.Domain(n), reference.Path(n)
	return r, true
}
