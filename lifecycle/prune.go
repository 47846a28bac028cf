package lifecycle

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/s3snap/s3snap/store"
)

// Bounds on what one repository's listing may hold, so a damaged or hostile
// bucket cannot exhaust memory: ECR's own quota of images per repository,
// and as many tags.
const (
	MaxImages = 100000
	MaxTags   = 100000
)

// readJobs bounds the tag and manifest reads ListImages runs at once.
const readJobs = 8

// ErrNoPolicy is returned by LoadPolicy when a repository has no stored
// lifecycle policy; it is also a store.ErrNotFound.
var ErrNoPolicy = fmt.Errorf("no lifecycle policy: %w", store.ErrNotFound)

// ErrTooMany is returned when a repository holds more images or tags than
// MaxImages or MaxTags.
var ErrTooMany = errors.New("too many images or tags in repository")

// PolicyName is the name, in the store's s3snap area, of repository repo's
// lifecycle policy (<prefix>/s3snap/lifecycle/<repo>/policy.json), where
// migrate copies an ECR repository's policy.
func PolicyName(repo string) string { return "lifecycle/" + repo + "/policy.json" }

// SavePolicy stores text as repository repo's lifecycle policy, as given
// (ECR's text, byte for byte); prune parses and validates it when it
// applies it.
func SavePolicy(ctx context.Context, st *store.Store, repo string, text []byte) error {
	if err := store.ValidateRepository(repo); err != nil {
		return err
	}
	if len(text) > MaxPolicySize {
		return fmt.Errorf("lifecycle policy of %s is %d bytes, more than ECR's %d: %w", repo, len(text), MaxPolicySize, ErrInvalidPolicy)
	}
	return st.PutExtra(ctx, PolicyName(repo), strings.NewReader(string(text)))
}

// LoadPolicy reads and parses repository repo's stored lifecycle policy:
// ErrNoPolicy when there is none.
func LoadPolicy(ctx context.Context, st *store.Store, repo string) (*Policy, error) {
	if err := store.ValidateRepository(repo); err != nil {
		return nil, err
	}
	b, err := st.GetExtra(ctx, PolicyName(repo), MaxPolicySize)
	if errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrNoSuchBucket) {
		return nil, fmt.Errorf("repository %s: %w", repo, ErrNoPolicy)
	}
	if errors.Is(err, store.ErrSizeMismatch) {
		return nil, fmt.Errorf("stored lifecycle policy of %s: %w: %v", repo, ErrInvalidPolicy, err)
	}
	if err != nil {
		return nil, fmt.Errorf("stored lifecycle policy of %s: %w", repo, err)
	}
	p, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("stored lifecycle policy of %s: %w", repo, err)
	}
	return p, nil
}

// PushedName is the name, in the store's s3snap area, of the push times
// migrate recorded for repository repo's images
// (<prefix>/s3snap/lifecycle/<repo>/pushed.json): the source registry's
// (ECR's imagePushedAt), which the copies' own LastModified lose.
func PushedName(repo string) string { return "lifecycle/" + repo + "/pushed.json" }

// maxPushedSize bounds a pushed.json: about 100 bytes for each of MaxImages.
const maxPushedSize = 16 << 20

type pushedDoc struct {
	Images map[digest.Digest]time.Time `json:"images"`
}

// RecordPushed merges times (manifest digest to when the source says it
// was pushed) into repository repo's record of push times, which prune
// prefers to the bucket's own times.
func RecordPushed(ctx context.Context, st *store.Store, repo string, times map[digest.Digest]time.Time) error {
	if err := store.ValidateRepository(repo); err != nil {
		return err
	}
	old, err := loadPushed(ctx, st, repo)
	if err != nil {
		return err
	}
	doc := pushedDoc{Images: old}
	if doc.Images == nil {
		doc.Images = map[digest.Digest]time.Time{}
	}
	for d, t := range times {
		if d.Validate() == nil && !t.IsZero() {
			doc.Images[d] = t.UTC()
		}
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	if len(b) > maxPushedSize {
		return fmt.Errorf("push times of %s: %d bytes, more than %d: %w", repo, len(b), maxPushedSize, ErrTooMany)
	}
	return st.PutExtra(ctx, PushedName(repo), bytes.NewReader(b))
}

// loadPushed reads repo's recorded push times; nil when there are none.
func loadPushed(ctx context.Context, st *store.Store, repo string) (map[digest.Digest]time.Time, error) {
	b, err := st.GetExtra(ctx, PushedName(repo), maxPushedSize)
	if errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrNoSuchBucket) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("push times of %s: %w", repo, err)
	}
	var doc pushedDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("push times of %s (%s): %w: %v", repo, PushedName(repo), store.ErrCorrupt, err)
	}
	return doc.Images, nil
}

// ListImages returns repository repo's images as a policy sees them: every
// manifest with a revision link (tagged or not, index children included,
// as ECR lists them), the tags pointing at it, and when it was pushed: the
// source registry's time where migrate recorded one (RecordPushed), else
// its revision link's LastModified, which Distribution and s3snap write
// when the manifest is put. Tags pointing at a manifest the repository does not
// hold are left out (no registry serves them).
func ListImages(ctx context.Context, st *store.Store, repo string) ([]Image, error) {
	if err := store.ValidateRepository(repo); err != nil {
		return nil, err
	}
	base := st.RepositoryKey(repo) + "_manifests/revisions/sha256/"
	var images []Image
	at := map[digest.Digest]int{}
	err := st.Walk(ctx, base, func(o store.Object) error {
		hex, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, base), "/link")
		if !ok || strings.Contains(hex, "/") {
			return nil
		}
		d := digest.NewDigestFromEncoded(digest.SHA256, hex)
		if d.Validate() != nil {
			return nil // not a revision link Distribution would read either
		}
		if len(images) >= MaxImages {
			return fmt.Errorf("repository %s: more than %d manifests: %w", repo, MaxImages, ErrTooMany)
		}
		at[d] = len(images)
		images = append(images, Image{Digest: d, Tags: []string{}, PushedAt: o.LastModified})
		return nil
	})
	if err != nil {
		return nil, err
	}
	recorded, err := loadPushed(ctx, st, repo)
	if err != nil {
		return nil, err
	}
	for i := range images {
		if t, ok := recorded[images[i].Digest]; ok && !t.IsZero() {
			images[i].PushedAt = t
		}
	}
	tags, err := st.ListTags(ctx, repo)
	if err != nil {
		return nil, fmt.Errorf("list tags of %s: %w", repo, err)
	}
	if len(tags) > MaxTags {
		return nil, fmt.Errorf("repository %s: %d tags, more than %d: %w", repo, len(tags), MaxTags, ErrTooMany)
	}
	targets := make([]digest.Digest, len(tags))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(readJobs)
	for i, tag := range tags {
		g.Go(func() error {
			d, err := st.Resolve(gctx, repo, tag)
			if errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrNoSuchBucket) {
				return nil // removed meanwhile
			}
			targets[i] = d
			return err
		})
	}
	// Indexes keep their children: read every manifest to find them.
	children := make([][]digest.Digest, len(images))
	for i := range images {
		g.Go(func() error {
			m, err := st.GetManifest(gctx, repo, images[i].Digest)
			switch {
			case errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrNoSuchBucket):
				return nil // removed meanwhile
			case err != nil:
				return fmt.Errorf("read manifest %s of %s: %w", images[i].Digest, repo, err)
			case m.IsIndex():
				for _, c := range m.Index.Manifests {
					children[i] = append(children[i], c.Digest)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for i := range images {
		images[i].Children = children[i]
	}
	for i, d := range targets {
		if d == "" {
			continue
		}
		j, ok := at[d]
		if !ok {
			log.G(ctx).WithFields(log.Fields{"repository": repo, "tag": tags[i], "digest": d}).Warn("tag points at a manifest the repository does not hold; ignored")
			continue
		}
		images[j].Tags = append(images[j].Tags, tags[i])
	}
	return images, nil
}

// ImageResult is what Prune did, or with a dry run would do, to one image.
type ImageResult struct {
	Digest   digest.Digest `json:"digest"`
	Tags     []string      `json:"tags"`
	PushedAt time.Time     `json:"pushedAt"`
	// Action is "expire" or "keep".
	Action string `json:"action"`
	// RulePriority and RuleDescription name the rule that governs the
	// image (expires it, or keeps it); 0 when no rule selects it.
	RulePriority    int    `json:"rulePriority,omitempty"`
	RuleDescription string `json:"ruleDescription,omitempty"`
	// Index is set when the rule would expire the image but it is kept
	// as a child of this kept index.
	Index digest.Digest `json:"keptByIndex,omitempty"`
	// Keys are the objects removed (or that a dry run would remove).
	Keys []string `json:"keys,omitempty"`
	// Error says why an expiry failed.
	Error string `json:"error,omitempty"`
}

// Actions of an ImageResult.
const (
	ActionKeep = "keep"
)

// Result is what Prune did to one repository.
type Result struct {
	Repository string        `json:"repository"`
	DryRun     bool          `json:"dryRun"`
	Now        time.Time     `json:"now"`
	Images     []ImageResult `json:"images"`
	Expired    int           `json:"expired"`
	Kept       int           `json:"kept"`
	Failed     int           `json:"failed"`
}

type pruneOptions struct {
	now    time.Time
	dryRun bool
}

// PruneOption configures Prune.
type PruneOption func(*pruneOptions)

// WithEvaluationTime evaluates ages (sinceImagePushed) at t instead of
// the current time: "what would expire in a week".
func WithEvaluationTime(t time.Time) PruneOption { return func(o *pruneOptions) { o.now = t } }

// WithPruneDryRun makes Prune decide and report, and remove nothing.
func WithPruneDryRun(b bool) PruneOption { return func(o *pruneOptions) { o.dryRun = b } }

// Prune applies policy p to repository repo: it lists the images, evaluates
// p as ECR would, and removes each expired image with RemoveManifest (its
// tags and revision link; blobs are left to gc). Indexes go before their
// children, so a tag never names an index with a child already gone. An
// image that fails to go is reported and the others still go; the error is
// then ErrPartial.
func Prune(ctx context.Context, st *store.Store, repo string, p *Policy, opts ...PruneOption) (*Result, error) {
	o := pruneOptions{now: time.Now()}
	for _, opt := range opts {
		opt(&o)
	}
	images, err := ListImages(ctx, st, repo)
	if err != nil {
		return nil, err
	}
	ds := p.Evaluate(images, o.now)
	res := &Result{Repository: repo, DryRun: o.dryRun, Now: o.now.UTC(), Images: make([]ImageResult, len(ds))}
	for i, d := range ds {
		ir := ImageResult{Digest: d.Digest, Tags: slices.Sorted(slices.Values(d.Tags)), PushedAt: d.PushedAt.UTC(), Action: ActionKeep, Index: d.Index}
		if ir.Tags == nil {
			ir.Tags = []string{}
		}
		if d.Rule != nil {
			ir.RulePriority, ir.RuleDescription = d.Rule.RulePriority, d.Rule.Description
		}
		if d.Expire {
			ir.Action = ActionExpire
		}
		res.Images[i] = ir
	}
	// Indexes first (nested ones before what they hold), then images.
	order := make([]int, 0, len(ds))
	for i, d := range ds {
		if d.Expire {
			order = append(order, i)
		}
	}
	level := parentsFirst(ds, order)
	slices.SortStableFunc(order, func(a, b int) int { return level[a] - level[b] })
	for _, i := range order {
		ir := &res.Images[i]
		rm, err := RemoveManifest(ctx, st, repo, ir.Digest, o.dryRun)
		if err != nil {
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			ir.Error = err.Error()
			res.Failed++
			log.G(ctx).WithError(err).WithFields(log.Fields{"repository": repo, "digest": ir.Digest}).Warn("prune: expiring image failed")
			continue
		}
		ir.Keys = rm.Keys
		res.Expired++
	}
	res.Kept = len(ds) - len(order)
	if res.Failed > 0 {
		return res, fmt.Errorf("prune %s: %d of %d expired images could not be removed: %w", repo, res.Failed, len(order), ErrPartial)
	}
	return res, nil
}

// parentsFirst gives each expired image (the indexes of ds in order) its
// depth below the other expired images: 0 for one no expired index holds,
// one more than its deepest expired parent otherwise.
func parentsFirst(ds []Decision, order []int) map[int]int {
	at := make(map[digest.Digest]int, len(order))
	for _, i := range order {
		at[ds[i].Digest] = i
	}
	level := make(map[int]int, len(order))
	// Each pass settles one more level; a cycle (which a content-addressed
	// store cannot hold) stops at len(order).
	for pass := 0; pass < len(order); pass++ {
		changed := false
		for _, i := range order {
			for _, c := range ds[i].Children {
				if j, ok := at[c]; ok && j != i && level[j] < level[i]+1 {
					level[j] = level[i] + 1
					changed = true
				}
			}
		}
		if !changed {
			break
		}
	}
	return level
}

// ErrPartial is returned when some expired images could not be removed.
var ErrPartial = errors.New("prune incomplete")
