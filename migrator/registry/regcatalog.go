package registry

import (
	"context"

	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/migrator"
)

// RegistryCatalog is one repository of a registry (any OCI registry can list
// a repository's tags; whole registries are listed only through ECR's API,
// never _catalog). With ref set (a tag or a digest) it is that one image.
func (r *Registry) Catalog(repo, ref string) migrator.Catalog {
	return &registryCatalog{r: r, repo: repo, ref: ref}
}

type registryCatalog struct {
	r    *Registry
	repo string
	ref  string
}

func (c *registryCatalog) String() string { return refString("docker://"+c.r.host, c.repo, c.ref) }

// refString formats base[/repo][:tag|@digest].
func refString(base, repo, ref string) string {
	if repo != "" {
		base += "/" + repo
	}
	if ref == "" {
		return base
	}
	if _, err := digest.Parse(ref); err == nil {
		return base + "@" + ref
	}
	return base + ":" + ref
}

func (c *registryCatalog) List(ctx context.Context, f migrator.Filter) ([]migrator.Item, error) {
	if c.ref != "" {
		if d, err := digest.Parse(c.ref); err == nil {
			return []migrator.Item{{Repository: c.repo, Digest: d}}, nil
		}
		return []migrator.Item{{Repository: c.repo, Tag: c.ref}}, nil
	}
	tags, err := c.r.Tags(ctx, c.repo)
	if err != nil {
		return nil, err
	}
	var items []migrator.Item
	for _, t := range tags {
		if it := (migrator.Item{Repository: c.repo, Tag: t}); f.Match(it) {
			items = append(items, it)
		}
	}
	return items, nil
}

func (c *registryCatalog) Open(_ context.Context, it migrator.Item) (migrator.Source, error) {
	return c.r.Source(it.Repository, itemRef(it)), nil
}

func (c *registryCatalog) Referrers(ctx context.Context, repo string, d digest.Digest) ([]migrator.Item, error) {
	return c.r.Referrers(ctx, repo, d)
}

// itemRef is what to fetch for it: its tag, else its digest.
func itemRef(it migrator.Item) string {
	if it.Tag != "" {
		return it.Tag
	}
	return it.Digest.String()
}
