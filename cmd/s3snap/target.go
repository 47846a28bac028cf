package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/store"
)

// location is an s3:// URL resolved against its bucket: the store (bucket +
// prefix) and the repository in it ("" when the URL names none).
type location struct {
	url   store.URL
	store *store.Store
	repo  string
}

// ref formats the location as s3://bucket[/prefix]/repo[:tag][@digest].
func (l *location) ref() string {
	u := store.URL{Bucket: l.url.Bucket, Path: strings.Trim(l.store.Prefix()+"/"+l.repo, "/"), Tag: l.url.Tag, Digest: l.url.Digest}
	return u.String()
}

// prefixFlag is the --prefix flag of ls, inspect and push.
type prefixFlag struct{ value string }

const prefixUsage = "the leading part of the URL's path that is the store's key prefix (Distribution's rootdirectory); " +
	"the rest is the repository (default: found by looking for <prefix>/docker/registry/v2/ in the bucket)"

func (p *prefixFlag) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&p.value, "prefix", "", prefixUsage)
}

// explicit returns the --prefix value if it was given, else nil.
func (p *prefixFlag) explicit(cmd *cobra.Command) *string {
	if !cmd.Flags().Changed("prefix") {
		return nil
	}
	v := strings.Trim(p.value, "/")
	return &v
}

// parseURL parses an s3:// URL argument; a malformed one is a usage error.
func parseURL(arg string) (store.URL, error) {
	u, err := store.ParseURL(arg)
	return u, asUsage(err)
}

// splitPrefix returns what follows prefix in path: the repository.
func splitPrefix(path, prefix string) (string, error) {
	if path == prefix {
		return "", nil
	}
	if prefix == "" {
		return path, nil
	}
	rest, ok := strings.CutPrefix(path, prefix+"/")
	if !ok {
		return "", usagef("--prefix %q is not the start of the URL's path %q", prefix, path)
	}
	return rest, nil
}

// locate finds the store and repository u names. With an explicit prefix
// that splits the path; otherwise the bucket is probed (store.Locate). When
// create is false the registry layout must already be in the bucket; when it
// is true (push) a bucket without one is fine and the store is rooted at the
// explicit prefix or at the bucket root.
func (g *globals) locate(ctx context.Context, u store.URL, prefix *string, create bool) (*location, error) {
	client, err := g.client(ctx)
	if err != nil {
		return nil, err
	}
	var pfx, repo string
	if prefix != nil {
		pfx = *prefix
		if repo, err = splitPrefix(u.Path, pfx); err != nil {
			return nil, err
		}
	} else {
		pfx, repo, err = store.Locate(ctx, client, u)
		if errors.Is(err, store.ErrNotFound) && create {
			pfx, repo, err = "", u.Path, nil
		}
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("%w (or give it with --prefix)", err)
		}
		if err != nil {
			return nil, err
		}
	}
	st := store.New(client, u.Bucket, store.WithPrefix(pfx))
	if prefix != nil || create {
		// Also how a missing bucket is told apart from an empty one.
		ok, err := st.Exists(ctx)
		if err != nil {
			return nil, err
		}
		if !ok && !create {
			return nil, fmt.Errorf("no registry layout at %s (nothing under %s): %w", st.URL(), layoutRoot(pfx), store.ErrNotFound)
		}
	}
	if repo != "" {
		if err := store.ValidateRepository(repo); err != nil {
			return nil, usagef("%s: %w", u, err)
		}
	}
	log.G(ctx).WithFields(log.Fields{"bucket": u.Bucket, "prefix": pfx, "repository": repo}).Debug("located store")
	return &location{url: u, store: st, repo: repo}, nil
}

// layoutRoot is where a store with prefix keeps its layout.
func layoutRoot(prefix string) string {
	if prefix == "" {
		return "docker/registry/v2/"
	}
	return prefix + "/docker/registry/v2/"
}

// checkImageURL is a usage error unless u names one image: a tag or digest.
func checkImageURL(u store.URL) error {
	if u.Tag == "" && u.Digest == "" {
		return usagef("%s names no tag or digest: want s3://BUCKET[/PREFIX]/REPOSITORY:TAG or @sha256:DIGEST", u)
	}
	return nil
}

// locateImage finds the store and repository of u, which names one image,
// and the digest its tag resolves to (or its own digest).
func (g *globals) locateImage(ctx context.Context, u store.URL, prefix *string) (*location, digest.Digest, error) {
	loc, err := g.locate(ctx, u, prefix, false)
	if err != nil {
		return nil, "", err
	}
	if loc.repo == "" {
		return nil, "", usagef("%s names no repository (the path is the store prefix %q)", u, loc.store.Prefix())
	}
	d := u.Digest
	if d == "" {
		if d, err = loc.store.Resolve(ctx, loc.repo, u.Tag); err != nil {
			return nil, "", err
		}
	}
	return loc, d, nil
}
