package store

import (
	"context"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"
)

// URL is a parsed s3://bucket[/path][:tag|@digest] location. Path holds the
// key prefix and the repository name together: where one ends and the other
// begins is only known by looking at the bucket (Locate).
type URL struct {
	Bucket string
	Path   string // no leading or trailing slash
	Tag    string
	Digest digest.Digest
}

// ParseURL parses s3://bucket[/path][:tag|@sha256:hex].
func ParseURL(s string) (URL, error) {
	rest, ok := strings.CutPrefix(s, "s3://")
	if !ok {
		return URL{}, fmt.Errorf("%q: want s3://bucket[/prefix][/repo[:tag|@digest]]: %w", s, ErrInvalidName)
	}
	var u URL
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		d, err := digest.Parse(rest[at+1:])
		if err != nil {
			return URL{}, fmt.Errorf("%q: bad digest: %w: %v", s, ErrInvalidName, err)
		}
		u.Digest, rest = d, rest[:at]
	}
	// A tag is a ':' in the last path segment (bucket names can't hold one).
	if slash := strings.LastIndex(rest, "/"); slash >= 0 {
		if colon := strings.LastIndex(rest[slash:], ":"); colon >= 0 {
			u.Tag, rest = rest[slash+colon+1:], rest[:slash+colon]
			if err := ValidateTag(u.Tag); err != nil {
				return URL{}, fmt.Errorf("%q: %w", s, err)
			}
		}
	}
	u.Bucket, u.Path, _ = strings.Cut(rest, "/")
	u.Path = strings.Trim(u.Path, "/")
	if u.Bucket == "" || strings.Contains(u.Bucket, ":") {
		return URL{}, fmt.Errorf("%q: no bucket: %w", s, ErrInvalidName)
	}
	if (u.Tag != "" || u.Digest != "") && u.Path == "" {
		return URL{}, fmt.Errorf("%q: a tag or digest needs a repository: %w", s, ErrInvalidName)
	}
	return u, nil
}

// String formats u back as an s3:// URL.
func (u URL) String() string {
	s := "s3://" + u.Bucket
	if u.Path != "" {
		s += "/" + u.Path
	}
	if u.Tag != "" {
		s += ":" + u.Tag
	}
	if u.Digest != "" {
		s += "@" + u.Digest.String()
	}
	return s
}

// Locate splits u.Path into a store prefix and a repository name by finding
// where the bucket holds a registry root (<prefix>/docker/registry/v2/).
// Where several prefixes of the path hold one, the one that holds the
// repository wins, then the shortest. It returns ErrNotFound when no prefix
// of the path holds a root.
func Locate(ctx context.Context, client Client, u URL) (prefix, repo string, err error) {
	parts := []string{}
	if u.Path != "" {
		parts = strings.Split(u.Path, "/")
	}
	first := -1
	for i := 0; i <= len(parts); i++ {
		s := New(client, u.Bucket, WithPrefix(strings.Join(parts[:i], "/")))
		root := false
		if err := s.listOne(ctx, s.layout.root+"/", func() { root = true }); err != nil {
			return "", "", err
		}
		if !root {
			continue
		}
		if first < 0 {
			first = i
		}
		name := strings.Join(parts[i:], "/")
		if name == "" || ValidateRepository(name) != nil {
			continue
		}
		has := false
		if err := s.listOne(ctx, s.layout.repo(name)+"/_manifests/", func() { has = true }); err != nil {
			return "", "", err
		}
		if has {
			return s.prefix, name, nil
		}
	}
	if first < 0 {
		return "", "", fmt.Errorf("no registry layout (docker/registry/v2/) under %s or any prefix of it (is the layout under a prefix? name it in the URL): %w", u, ErrNotFound)
	}
	return strings.Join(parts[:first], "/"), strings.Join(parts[first:], "/"), nil
}
