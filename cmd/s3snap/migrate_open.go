package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/migrator"
	"github.com/s3snap/s3snap/migrator/registry"
	"github.com/s3snap/s3snap/store"
)

// Multipart settings of migrate's uploads: memory is about
// --jobs x part size x (parts in flight + 1).
const (
	migratePartSize  = 16 << 20
	migratePartJobs  = 4
	migrateUntagged  = true
	ecrEndpointUsage = "ECR API endpoint URL (a VPC endpoint, or a stand-in; default: AWS's, or $AWS_ENDPOINT_URL_ECR)"
)

// migrateFlags are the flags migrate and verify share: what to select and
// how to reach both sides.
type migrateFlags struct {
	repo, tag, pushedAfter, platform, shard string
	untagged, referrers, insecure           bool
	images, jobs                            int

	ecrEndpoint             string
	creds                   credsFlags
	srcProfile, dstProfile  string
	srcRoleARN, dstRoleARN  string
	ecrCreate, ecrImmutable bool
	ecrScanOnPush           bool
	reportPath              string

	limits  limitFlags
	reqRate *migrator.RequestRate // from --max-requests, set by runOptions
	lazy    lazyIndexFlags
}

func (f *migrateFlags) register(cmd *cobra.Command, forMigrate bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.repo, "repo", "", "only repositories matching this regular expression (e.g. '^team/')")
	fl.StringVar(&f.tag, "tag", "", "only tags matching this regular expression (e.g. '^v[0-9]'); untagged images are then left out")
	fl.StringVar(&f.pushedAfter, "pushed-after", "", "only images pushed after this time (RFC 3339 or 2006-01-02) or within this duration (e.g. 720h) (ECR sources)")
	fl.StringVar(&f.platform, "platform", "", "keep only these platforms of multi-arch indexes, e.g. linux/amd64,linux/arm64 (this changes the index digests; the report says so)")
	fl.BoolVar(&f.untagged, "untagged", migrateUntagged, "include untagged images, by digest (ECR sources)")
	fl.BoolVar(&f.referrers, "referrers", false, "also copy signatures, attestations and SBOMs: cosign sha256-<hex>.sig/.att/.sbom tags and OCI referrers")
	fl.StringVar(&f.shard, "shard", "", "do only part i of N of the work (i/N, 0-based), split deterministically: one Kubernetes Indexed Job pod per shard")
	fl.IntVar(&f.images, "images", migrator.DefaultImageJobs, "images worked on at once")
	fl.BoolVar(&f.insecure, "insecure", false, "allow plain-HTTP registries (loopback and private addresses always may)")
	fl.StringVar(&f.ecrEndpoint, "ecr-endpoint", "", ecrEndpointUsage)
	f.creds.register(fl, "a docker:// source", "a docker:// destination")
	fl.StringVar(&f.srcProfile, "src-profile", "", "AWS profile for an ecr:// source (default: --profile)")
	fl.StringVar(&f.dstProfile, "dst-profile", "", "AWS profile for an ecr:// destination (default: --profile)")
	fl.StringVar(&f.srcRoleARN, "src-role-arn", "", "IAM role to assume for an ecr:// source (cross-account)")
	fl.StringVar(&f.dstRoleARN, "dst-role-arn", "", "IAM role to assume for an ecr:// destination (cross-account)")
	fl.StringVar(&f.reportPath, "report", "", "write the JSON report (one entry per tag and untagged image) to FILE")
	if forMigrate {
		fl.IntVarP(&f.jobs, "jobs", "j", migrator.DefaultBlobJobs, "blobs streamed at once, across all images")
		fl.BoolVar(&f.ecrCreate, "ecr-create", false, "create missing repositories in an ecr:// destination")
		fl.BoolVar(&f.ecrImmutable, "ecr-tag-immutable", false, "with --ecr-create: make new repositories' tags immutable")
		fl.BoolVar(&f.ecrScanOnPush, "ecr-scan-on-push", false, "with --ecr-create: turn on scan on push for new repositories")
		f.limits.register(fl)
		f.lazy.register(fl, false)
	} else {
		f.jobs = migrator.DefaultBlobJobs
		f.lazy.register(fl, true)
	}
}

// runOptions turns the selection flags into migrator options.
func (f *migrateFlags) runOptions(now time.Time) ([]migrator.RunOption, error) {
	var filter migrator.Filter
	var err error
	if f.repo != "" {
		if filter.Repository, err = regexp.Compile(f.repo); err != nil {
			return nil, usagef("--repo %q: %v", f.repo, err)
		}
	}
	if f.tag != "" {
		if filter.Tag, err = regexp.Compile(f.tag); err != nil {
			return nil, usagef("--tag %q: %v", f.tag, err)
		}
	}
	if f.pushedAfter != "" {
		if filter.PushedAfter, err = parseSince(f.pushedAfter, now); err != nil {
			return nil, usagef("--pushed-after %q: %v", f.pushedAfter, err)
		}
	}
	filter.SkipUntagged = !f.untagged
	opts := []migrator.RunOption{migrator.WithFilter(filter), migrator.WithImageJobs(f.images),
		migrator.WithBlobJobs(f.jobs), migrator.WithReferrers(f.referrers)}
	if f.platform != "" {
		ps, err := migrator.ParsePlatforms(f.platform)
		if err != nil {
			return nil, usagef("--platform: %v", err)
		}
		opts = append(opts, migrator.WithPlatforms(ps))
	}
	if f.shard != "" {
		sh, err := migrator.ParseShard(f.shard)
		if err != nil {
			return nil, usagef("--shard: %v", err)
		}
		opts = append(opts, migrator.WithShard(sh))
	}
	if f.images < 1 || f.jobs < 1 {
		return nil, usagef("--images and --jobs must be at least 1")
	}
	bw, rr, err := f.limits.parse()
	if err != nil {
		return nil, err
	}
	if bw != nil {
		opts = append(opts, migrator.WithBandwidth(bw))
	}
	f.reqRate = rr
	if lo, err := f.lazy.runOption(); err != nil {
		return nil, err
	} else if lo != nil {
		opts = append(opts, lo)
	}
	return opts, nil
}

// parseSince reads a time (RFC 3339 or a date) or a duration before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("want a time (RFC 3339 or 2006-01-02) or a duration (720h)")
}

// parseLocation parses a SRC or DST argument; a malformed one is a usage
// error.
func parseLocation(arg string) (registry.Location, error) {
	l, err := registry.ParseLocation(arg)
	return l, asUsage(err)
}

// basicAuth turns USER:PASSWORD into an authenticator (nil: use the
// keychain). flag names where creds came from, for the error.
func basicAuth(flag, creds string) (authn.Authenticator, error) {
	if creds == "" {
		return nil, nil
	}
	user, pass, ok := strings.Cut(creds, ":")
	if !ok || user == "" {
		return nil, usagef("%s: want USER:PASSWORD", flag)
	}
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: pass}), nil
}

// registry opens a docker:// registry with the given credentials.
func (f *migrateFlags) registry(host, flag, creds string) (*registry.Registry, error) {
	auth, err := basicAuth(flag, creds)
	if err != nil {
		return nil, err
	}
	opts := []registry.RegistryOption{registry.WithInsecure(f.insecure), registry.WithRequestRate(f.reqRate)}
	if auth != nil {
		opts = append(opts, registry.WithAuth(auth))
	}
	return registry.NewRegistry(host, opts...)
}

// ecr opens an ecr:// registry through its API.
func (f *migrateFlags) ecr(ctx context.Context, g *globals, host, profile, role string, extra ...registry.ECROption) (*registry.ECR, error) {
	_, region, err := registry.ParseECRHost(host)
	if err != nil {
		return nil, asUsage(err)
	}
	if profile == "" {
		profile = g.profile
	}
	api, err := registry.NewECRClient(ctx, registry.ECRConfig{Region: region, Profile: profile, RoleARN: role, Endpoint: f.ecrEndpoint})
	if err != nil {
		return nil, err
	}
	opts := append([]registry.ECROption{registry.WithECRRegistryOptions(registry.WithInsecure(f.insecure), registry.WithRequestRate(f.reqRate))}, extra...)
	return registry.NewECR(ctx, api, host, opts...)
}

// source opens SRC as a catalog.
func (f *migrateFlags) source(ctx context.Context, g *globals, l registry.Location) (migrator.Catalog, error) {
	switch l.Scheme {
	case registry.SchemeECR:
		e, err := f.ecr(ctx, g, l.Host, f.srcProfile, f.srcRoleARN)
		if err != nil {
			return nil, err
		}
		return e.Catalog(l.Repository, l.Ref()), nil
	case registry.SchemeDocker:
		if l.Repository == "" {
			return nil, usagef("%s names no repository: a docker:// source is one repository (a whole registry can only be listed through ECR's API, ecr://)", l)
		}
		r, err := f.registry(l.Host, f.creds.src.from, f.creds.src.creds)
		if err != nil {
			return nil, err
		}
		return r.Catalog(l.Repository, l.Ref()), nil
	}
	if l.Digest != "" {
		return nil, usagef("%s: an s3:// source takes a tag, not a digest", l)
	}
	loc, err := g.locate(ctx, l.S3, nil, false)
	if err != nil {
		return nil, err
	}
	return migrator.StoreCatalog(loc.store, loc.repo, l.Tag), nil
}

// target opens DST. The s3:// path is the store prefix; a registry path
// renames (one source repository) or prefixes (many) the repositories.
func (f *migrateFlags) target(ctx context.Context, g *globals, l, src registry.Location) (migrator.Target, func(string) string, error) {
	if l.Tag != "" || l.Digest != "" {
		return nil, nil, usagef("destination %s: name a bucket (and prefix) or a registry (and repository), not a tag", l)
	}
	rename := func(s string) string { return s }
	if l.Repository != "" {
		single := src.Repository != "" || (src.Scheme == registry.SchemeS3 && src.Tag != "")
		to := l.Repository
		if single {
			rename = func(string) string { return to }
		} else {
			rename = func(s string) string { return to + "/" + s }
		}
	}
	switch l.Scheme {
	case registry.SchemeECR:
		var extra []registry.ECROption
		if f.ecrCreate {
			extra = append(extra, registry.WithCreate(registry.CreateOptions{TagImmutable: f.ecrImmutable, ScanOnPush: f.ecrScanOnPush}))
		}
		e, err := f.ecr(ctx, g, l.Host, f.dstProfile, f.dstRoleARN, extra...)
		if err != nil {
			return nil, nil, err
		}
		return e.Target(), rename, nil
	case registry.SchemeDocker:
		r, err := f.registry(l.Host, f.creds.dst.from, f.creds.dst.creds)
		if err != nil {
			return nil, nil, err
		}
		return r, rename, nil
	}
	client, err := g.client(ctx)
	if err != nil {
		return nil, nil, err
	}
	st := store.New(client, l.S3.Bucket, store.WithPrefix(l.S3.Path), store.WithUpload(migratePartSize, migratePartJobs))
	return migrator.StoreDestination(st), rename, nil
}

// open parses SRC and DST and the selection flags, and opens both sides.
func (f *migrateFlags) open(ctx context.Context, g *globals, srcArg, dstArg string) (migrator.Catalog, migrator.Target, []migrator.RunOption, error) {
	srcLoc, err := parseLocation(srcArg)
	if err != nil {
		return nil, nil, nil, err
	}
	dstLoc, err := parseLocation(dstArg)
	if err != nil {
		return nil, nil, nil, err
	}
	opts, err := f.runOptions(time.Now())
	if err != nil {
		return nil, nil, nil, err
	}
	if err := f.creds.resolve(os.Getenv, g.stderr); err != nil {
		return nil, nil, nil, err
	}
	src, err := f.source(ctx, g, srcLoc)
	if err != nil {
		return nil, nil, nil, err
	}
	dst, rename, err := f.target(ctx, g, dstLoc, srcLoc)
	if err != nil {
		return nil, nil, nil, err
	}
	return src, dst, append(opts, migrator.WithRename(rename)), nil
}
