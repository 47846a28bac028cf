package main

import (
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/migrator"
	"github.com/s3snap/s3snap/migrator/archive"
	"github.com/s3snap/s3snap/migrator/registry"
)

const pushLong = `Push an image into a bucket (and, with --also, into registries too), from CI
or a workstation.

SRC is any of
  DIR        an OCI image layout directory ('crane pull --format oci',
             'docker buildx build --output type=oci,tar=false')
  FILE.tar   a tar of an OCI image layout ('docker buildx build --output
             type=oci,dest=FILE.tar'; 'docker save' from Docker 25 on), read
             in place, nothing extracted
  FILE.tar   an older 'docker save' tar (manifest.json, a config and
             uncompressed layer tars): its layers are gzip'd on the way
  docker://HOST/REPO[:TAG|@DIGEST]
             an image in any registry (~/.docker/config.json credentials,
             or --src-creds)
The kind is told from SRC itself: a directory or tar with index.json is an
OCI layout, a tar with only manifest.json a docker save. A compressed,
truncated or malformed tar, an entry name leaving the archive, or content
that does not match its digest is an error, and nothing is tagged anywhere.

s3snap pushes the manifest the layout lists (the first one if it lists
several), or the one whose org.opencontainers.image.ref.name annotation (or
docker save RepoTag) is --ref. A multi-arch index is copied whole, byte for
byte, so every digest is preserved.

Digests of an older docker save: the config (so the image ID) is kept byte
for byte; layers are gzip'd with Go's compress/gzip at level 1 and an empty
header, exactly as 'crane push FILE.tar' does, so the layer and manifest
digests are the same on every run and machine, and the ones crane gives.
'docker push' of the same image compresses differently and so shows other
layer and manifest digests (the image ID is the same everywhere).

Blobs go first (--jobs at once, each verified against its digest and size
while it streams); blobs already there are not uploaded again, which makes a
re-run cheap. Then the manifests, and the tag last: a reader never sees a tag
whose content is incomplete.

--also docker://HOST/REPO[:TAG] (repeatable) pushes the same image, with the
same digests, to registries at the same time: the cutover window, when new
builds go to both places. The tag defaults to the s3:// one. Every
destination is completed even if another fails; the summary lists each, and
the exit code is 1 if any failed.

The store prefix is the one the bucket already has (found by looking for
<PREFIX>/docker/registry/v2/); in a bucket without one, --prefix (default: none,
the bucket root), and the rest of the path is the repository.

Progress goes to stderr, one line per blob; the summary to stdout (with -o
json as a JSON document, one entry per destination).

` + limitsHelp

const pushExample = `  # CI: build once, push into the bucket and to ECR during the cutover
  docker buildx build --output type=oci,dest=app.tar .
  s3snap push app.tar s3://my-images/team/app:v1 \
    --also docker://123456789012.dkr.ecr.us-east-1.amazonaws.com/team/app

  # A docker save tar, old or new; the image tagged app:v1 in it
  docker save -o images.tar app:v1 app:v2
  s3snap push --ref app:v1 images.tar s3://my-images/team/app:v1

  # An OCI layout directory, into a new bucket under the prefix "mirror"
  crane pull --format oci registry.example.com/team/app:v1 ./app
  s3snap push --prefix mirror ./app s3://my-images/mirror/team/app:v1

  # Straight from a registry
  s3snap push docker://ghcr.io/org/app:v1 s3://my-images/org/app:v1`

// pushFlags are push's flags.
type pushFlags struct {
	prefix   prefixFlag
	ref      string
	jobs     int
	also     []string
	creds    credsFlags
	srcCreds string // resolved from creds
	dstCreds string
	insecure bool
	limits   limitFlags
	bw       *migrator.Bandwidth
	rr       *migrator.RequestRate
	lazy     lazyIndexFlags
}

func newPushCmd(g *globals) *cobra.Command {
	var f pushFlags
	cmd := &cobra.Command{
		Use:     "push SRC s3://BUCKET[/PREFIX]/REPOSITORY:TAG",
		Short:   "Push an image (OCI layout, OCI or docker save tar, registry) into a bucket",
		Long:    pushLong,
		Example: pushExample,
		Args:    exactArgs(2, "SRC", "s3://BUCKET[/PREFIX]/REPOSITORY:TAG"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.creds.resolve(os.Getenv, g.stderr); err != nil {
				return err
			}
			f.srcCreds, f.dstCreds = f.creds.src.creds, f.creds.dst.creds
			return runPush(cmd, g, &f, args[0], args[1])
		},
	}
	f.prefix.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&f.ref, "ref", "", "push the image of SRC whose org.opencontainers.image.ref.name annotation (or docker save RepoTag) is NAME (default: the first)")
	fl.IntVarP(&f.jobs, "jobs", "j", migrator.DefaultJobs, "blobs uploaded at once, per destination")
	fl.StringArrayVar(&f.also, "also", nil, "also push to this registry: docker://HOST/REPO[:TAG] (repeatable; TAG defaults to the s3:// tag)")
	f.creds.register(fl, "a docker:// SRC", "the --also registries")
	fl.BoolVar(&f.insecure, "insecure", false, "allow plain-HTTP registries (loopback and private addresses always may)")
	f.limits.register(fl)
	f.lazy.register(fl, false)
	return cmd
}

// alsoDest is one parsed --also.
type alsoDest struct {
	loc registry.Location
	tag string
}

func (a alsoDest) String() string {
	l := a.loc
	l.Tag = a.tag
	return l.String()
}

// parseAlso parses the --also values; tag is the s3:// URL's.
func parseAlso(values []string, tag string) ([]alsoDest, error) {
	var out []alsoDest
	seen := map[string]bool{}
	for _, v := range values {
		l, err := registry.ParseLocation(v)
		if err != nil {
			return nil, usagef("--also %s: %w", v, err)
		}
		switch {
		case l.Scheme != registry.SchemeDocker:
			return nil, usagef("--also %s: want docker://HOST/REPO[:TAG] (ECR too: docker://ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO with a docker login or the ecr-login credential helper)", v)
		case l.Repository == "":
			return nil, usagef("--also %s names no repository: want docker://HOST/REPO[:TAG]", v)
		case l.Digest != "":
			return nil, usagef("--also %s: a destination takes a tag, not a digest (the digest is the image's own)", v)
		}
		d := alsoDest{loc: l, tag: l.Tag}
		if d.tag == "" {
			d.tag = tag
		}
		if seen[d.String()] {
			return nil, usagef("--also %s given twice", d)
		}
		seen[d.String()] = true
		out = append(out, d)
	}
	return out, nil
}

// sourceKindName says what push read, for humans.
func sourceKindName(k archive.Kind) string {
	switch k {
	case archive.KindLayoutDir:
		return "OCI layout directory"
	case archive.KindOCIArchive:
		return "OCI layout tar"
	case archive.KindDockerArchive:
		return "docker save tar (legacy; layers gzip'd)"
	case archive.KindRegistry:
		return "registry"
	}
	return strings.ToLower(k.String())
}

// usageIfScheme makes an unknown-scheme SRC a usage error.
func usageIfScheme(src string, err error) error {
	if strings.Contains(src, "://") {
		return asUsage(err)
	}
	return err
}

// check validates the flags that depend on SRC's kind.
func (f *pushFlags) check(kind archive.Kind) error {
	if kind == archive.KindRegistry && f.ref != "" {
		return usagef("--ref selects an image in a layout or tar; a docker:// SRC names its own tag or digest")
	}
	if kind != archive.KindRegistry && f.creds.src.explicit() {
		return usagef("--src-creds is for a docker:// SRC")
	}
	return nil
}
