package registry

import (
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/store"
)

// Scheme is the kind of place a Location names.
type Scheme string

// The places images move between.
const (
	SchemeECR    Scheme = "ecr"
	SchemeDocker Scheme = "docker"
	SchemeS3     Scheme = "s3"
)

// Location is a parsed migrate/verify argument:
//
//	ecr://ACCOUNT.dkr.ecr.REGION.amazonaws.com[/repo[:tag|@digest]]
//	docker://host[:port]/repo[:tag|@digest]
//	s3://bucket[/prefix][/repo[:tag]]
type Location struct {
	Scheme Scheme
	// Host is the registry host[:port] (ecr, docker).
	Host string
	// Repository, Tag and Digest are what the path names (ecr, docker).
	Repository string
	Tag        string
	Digest     digest.Digest
	// S3 is the parsed s3:// URL (s3).
	S3 store.URL
}

// ErrLocation is returned for a malformed location.
var ErrLocation = fmt.Errorf("bad location: %w", store.ErrInvalidName)

// ParseLocation parses a migrate or verify argument.
func ParseLocation(s string) (Location, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Location{}, fmt.Errorf("%q: want ecr://, docker:// or s3://: %w", s, ErrLocation)
	}
	switch Scheme(scheme) {
	case SchemeS3:
		u, err := store.ParseURL(s)
		if err != nil {
			return Location{}, err
		}
		return Location{Scheme: SchemeS3, S3: u, Tag: u.Tag, Digest: u.Digest}, nil
	case SchemeECR, SchemeDocker:
	default:
		return Location{}, fmt.Errorf("%q: unknown scheme %q (want ecr, docker or s3): %w", s, scheme, ErrLocation)
	}
	l := Location{Scheme: Scheme(scheme)}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		d, err := digest.Parse(rest[at+1:])
		if err != nil {
			return Location{}, fmt.Errorf("%q: bad digest: %w: %v", s, ErrLocation, err)
		}
		l.Digest, rest = d, rest[:at]
	}
	host, path, _ := strings.Cut(rest, "/")
	if slash := strings.LastIndex(path, "/"); path != "" {
		if colon := strings.LastIndex(path[slash+1:], ":"); colon >= 0 {
			l.Tag, path = path[slash+1+colon+1:], path[:slash+1+colon]
			if err := store.ValidateTag(l.Tag); err != nil {
				return Location{}, fmt.Errorf("%q: %w", s, err)
			}
		}
	}
	l.Host, l.Repository = host, strings.Trim(path, "/")
	if _, err := name.NewRegistry(l.Host); l.Host == "" || err != nil {
		return Location{}, fmt.Errorf("%q: bad registry host %q: %w", s, l.Host, ErrLocation)
	}
	if l.Repository != "" {
		if err := store.ValidateRepository(l.Repository); err != nil {
			return Location{}, fmt.Errorf("%q: %w", s, err)
		}
	} else if l.Tag != "" || l.Digest != "" {
		return Location{}, fmt.Errorf("%q: a tag or digest needs a repository: %w", s, ErrLocation)
	}
	if l.Scheme == SchemeECR {
		if _, _, err := ParseECRHost(l.Host); err != nil {
			return Location{}, fmt.Errorf("%q: %w", s, err)
		}
	}
	return l, nil
}

// Ref is the location's tag or digest ("" for none).
func (l Location) Ref() string {
	if l.Digest != "" {
		return l.Digest.String()
	}
	return l.Tag
}

// String formats the location back.
func (l Location) String() string {
	if l.Scheme == SchemeS3 {
		return l.S3.String()
	}
	return refString(string(l.Scheme)+"://"+l.Host, l.Repository, l.Ref())
}
