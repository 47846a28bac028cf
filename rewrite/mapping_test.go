package rewrite

import (
	"errors"
	"testing"
)

func TestParseLocation(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Location
		err  error
	}{
		{in: ecr, want: Location{Host: ecr}},
		{in: mirror, want: Location{Host: "registry.example.com", Path: "mirror"}},
		{in: "localhost:5000/a/b", want: Location{Host: "localhost:5000", Path: "a/b"}},
		{in: "docker.io", want: Location{Host: "docker.io"}},
		{in: "index.docker.io/library", want: Location{Host: "docker.io", Path: "library"}},
		{in: "", err: ErrBadLocation},
		{in: "team/app", err: ErrBadLocation},              // no registry
		{in: "registry.example.com/", err: ErrBadLocation}, // trailing slash
		{in: "registry.example.com/UPPER", err: ErrBadLocation},
		{in: "registry.example.com/app:v1", err: ErrBadLocation},
		{in: "https://registry.example.com", err: ErrBadLocation},
	} {
		got, err := ParseLocation(tc.in)
		if !errors.Is(err, tc.err) || got != tc.want {
			t.Errorf("ParseLocation(%q) = %+v, %v; want %+v, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// TestTarget: what one reference becomes, on path-component boundaries,
// for every reference form.
func TestTarget(t *testing.T) {
	for _, tc := range []struct {
		from, to, in, want string // want "" for untouched
	}{
		{ecr, mirror, ecr + "/app:v1", mirror + "/app:v1"},
		{ecr, mirror, ecr + "/team/app", mirror + "/team/app"},
		{ecr, mirror, ecr + "/app@sha256:" + hex64('a'), mirror + "/app@sha256:" + hex64('a')},
		{ecr, mirror, ecr + "/app:v1@sha256:" + hex64('a'), mirror + "/app:v1@sha256:" + hex64('a')},
		{ecr, mirror, mirror + "/app:v1", mirror + "/app:v1"}, // already moved
		{ecr, mirror, "210987654321.dkr.ecr.us-east-1.amazonaws.com/app:v1", ""},
		{ecr, mirror, "nginx:1.27", ""},
		{ecr + "/team", "registry.example.com", ecr + "/team/app:v1", "registry.example.com/app:v1"},
		{ecr + "/team", "registry.example.com", ecr + "/teamx/app:v1", ""}, // not a path boundary
		{ecr + "/team", "registry.example.com/t", ecr + "/team:v1", "registry.example.com/t:v1"},
		{"docker.io", mirror, "nginx:1.27", mirror + "/library/nginx:1.27"},
		{"docker.io/bitnami", mirror, "bitnami/redis:7", mirror + "/redis:7"},
		{"localhost:5000", mirror, "localhost:5000/app", mirror + "/app"},
	} {
		rw, err := New(tc.from, tc.to)
		if err != nil {
			t.Fatal(err)
		}
		r, ok := ParseRef(tc.in)
		if !ok {
			t.Fatalf("ParseRef(%q) failed", tc.in)
		}
		nr, why, ok := rw.target(r)
		got := ""
		if ok {
			got = nr.String()
		}
		if got != tc.want || why != "" {
			t.Errorf("%s -> %s: %s became %q (%s), want %q", tc.from, tc.to, tc.in, got, why, tc.want)
		}
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		from, to string
		err      error
	}{
		{"team", mirror, ErrBadLocation},
		{ecr, "", ErrBadLocation},
		{ecr + "/a/b", ecr + "/a", ErrOverlap}, // a second run would move a/b/x again
		{ecr, ecr, ErrOverlap},
	} {
		if _, err := New(tc.from, tc.to); !errors.Is(err, tc.err) {
			t.Errorf("New(%q, %q): %v, want %v", tc.from, tc.to, err, tc.err)
		}
	}
	if _, err := New(ecr, ecr+"/mirror"); err != nil {
		t.Errorf("--to inside --from is idempotent and allowed: %v", err)
	}
}

func hex64(c byte) string {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return string(b)
}
