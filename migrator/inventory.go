package migrator

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/s3snap/s3snap/store"
)

// Inventory is what a dry run found: every image it would consider, the
// bytes they hold before and after deduplication, what the destination
// already has, and what a real run would cost at the given prices.
type Inventory struct {
	Source      string           `json:"source"`
	Destination string           `json:"destination"`
	Platforms   string           `json:"platforms,omitempty"`
	Images      []InventoryImage `json:"images"`
	Totals      InventoryTotals  `json:"totals"`
	Prices      Prices           `json:"prices"`
}

// InventoryImage is one tag or untagged image of an Inventory.
type InventoryImage struct {
	Repository string `json:"repository"`
	// Tag is empty for an untagged image (named by Digest).
	Tag       string `json:"tag,omitempty"`
	Digest    Digest `json:"digest,omitempty"`
	MediaType string `json:"mediaType,omitempty"`
	// Platforms are os/arch[/variant] of the image, or of the children an
	// index keeps (after a platform filter).
	Platforms []string `json:"platforms,omitempty"`
	// Size is the bytes of the image's manifests, configs and layers (for
	// an index: of every child kept), each blob counted once.
	Size int64 `json:"size"`
	// PushedAt is when the source says the image was pushed (ECR); zero
	// where the source does not say.
	PushedAt time.Time `json:"pushedAt,omitzero"`
	// Status is StatusPlanned (a real run would copy it),
	// StatusUnchanged (the destination has it) or StatusFailed.
	Status Status `json:"status"`
	Reason string `json:"reason,omitempty"`
}

// InventoryTotals sums an Inventory. Byte counts after deduplication
// (BytesUnique, BytesPresent, BytesToTransfer) are of configs and layers,
// what the copy streams and a real run's report counts as moved; the
// manifests, a few KiB per image, are counted apart in ManifestBytes.
type InventoryTotals struct {
	Images    int `json:"images"`
	Tags      int `json:"tags"`
	Untagged  int `json:"untagged"`
	ToCopy    int `json:"toCopy"`
	Unchanged int `json:"unchanged"`
	Failed    int `json:"failed"`
	// BytesListed is the sum of the images' sizes, manifests included,
	// counting what images share once per image.
	BytesListed int64 `json:"bytesListed"`
	// Blobs and BytesUnique are the distinct configs and layers of all the
	// images (per repository for a registry destination, which keeps blobs
	// per repository; bucket-wide for a bucket).
	Blobs       int   `json:"blobs"`
	BytesUnique int64 `json:"bytesUnique"`
	// BlobsPresent and BytesPresent are those the destination already has:
	// a real run skips them.
	BlobsPresent int   `json:"blobsPresent"`
	BytesPresent int64 `json:"bytesPresent"`
	// BlobsToTransfer and BytesToTransfer are the rest: what a real run
	// reads from the source and writes.
	BlobsToTransfer int   `json:"blobsToTransfer"`
	BytesToTransfer int64 `json:"bytesToTransfer"`
	// Manifests and ManifestBytes are the distinct manifests.
	Manifests     int   `json:"manifests"`
	ManifestBytes int64 `json:"manifestBytes"`
	// PutRequests is how many S3 PUT-class requests a real run into a
	// bucket makes: one per small blob, parts+2 per multipart upload, and
	// the manifests' and tags' objects and links.
	PutRequests int64 `json:"putRequests"`
	// The estimate, in Prices.Currency: reading BytesToTransfer out of the
	// source, the PUT requests, and a month of S3 storage for everything
	// these images take in the bucket (BytesUnique + ManifestBytes).
	TransferCost       float64 `json:"transferCost"`
	RequestCost        float64 `json:"requestCost"`
	StorageCostMonthly float64 `json:"storageCostMonthly"`
}

// Prices are what the estimate assumes. A GB is 2^30 bytes, as AWS bills.
type Prices struct {
	Currency string `json:"currency"`
	// TransferPerGB is data transfer out of the source per GB.
	TransferPerGB float64 `json:"transferPerGB"`
	// PutPer1000 is S3's price of 1,000 PUT, COPY, POST or LIST requests.
	PutPer1000 float64 `json:"putPer1000"`
	// StoragePerGBMonth is S3 Standard storage per GB-month.
	StoragePerGBMonth float64 `json:"storagePerGBMonth"`
	// Basis says where the prices come from.
	Basis string `json:"basis"`
}

// DefaultPrices are AWS list prices in us-east-1 (N. Virginia) as published
// on aws.amazon.com/s3/pricing and /ec2/pricing/on-demand in 2025: S3
// Standard first 50 TB $0.023/GB-month, PUT/COPY/POST/LIST $0.005 per 1,000,
// data transfer out to the internet first 10 TB $0.09/GB. Transfer from ECR
// to S3 in the same region is free, across regions $0.02/GB: override
// TransferPerGB for those.
var DefaultPrices = Prices{
	Currency:          "USD",
	TransferPerGB:     0.09,
	PutPer1000:        0.005,
	StoragePerGBMonth: 0.023,
	Basis:             "AWS us-east-1 list prices (2025): S3 Standard first 50 TB/month, S3 PUT/COPY/POST/LIST requests, data transfer out to the internet first 10 TB/month",
}

// DefaultPartSize is the multipart part size the request estimate assumes
// unless told (the store's default).
const DefaultPartSize = 16 << 20

// WithPrices sets the prices a dry run's estimate uses (default
// DefaultPrices).
func WithPrices(p Prices) RunOption { return func(o *runOptions) { o.prices = p } }

// WithPartSize tells a dry run the multipart part size of the destination
// store, for its request count (default DefaultPartSize).
func WithPartSize(n int64) RunOption { return func(o *runOptions) { o.partSize = max(n, 1) } }

const gib = 1 << 30

// putRequests is how many PUT-class requests uploading a blob of size
// bytes takes: one PutObject below a part, else CreateMultipartUpload, one
// UploadPart per part and CompleteMultipartUpload.
func putRequests(size, partSize int64) int64 {
	if size < partSize {
		return 1
	}
	return (size+partSize-1)/partSize + 2
}

// estimate fills in the costs from the totals.
func (t *InventoryTotals) estimate(p Prices) {
	t.TransferCost = float64(t.BytesToTransfer) / gib * p.TransferPerGB
	t.RequestCost = float64(t.PutRequests) / 1000 * p.PutPer1000
	t.StorageCostMonthly = float64(t.BytesUnique+t.ManifestBytes) / gib * p.StoragePerGBMonth
}

// inventory collects what a dry run planned, item by item, and then asks the
// destination what it already has.
type inventory struct {
	mu     sync.Mutex
	images []InventoryImage
	plans  []plannedItem
}

type plannedItem struct {
	repo    string // at the destination
	tagged  bool
	planned bool // a real run would copy it (not unchanged)
	plan    *Plan
}

// add records one item's outcome; plan is nil for a failed item.
func (inv *inventory) add(img InventoryImage, repo string, tagged bool, plan *Plan) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.images = append(inv.images, img)
	if plan != nil {
		inv.plans = append(inv.plans, plannedItem{repo: repo, tagged: tagged, planned: img.Status == StatusPlanned, plan: plan})
	}
}

// imageOf describes a planned item; reading a single image's config for
// its platform is the one extra request.
func imageOf(ctx context.Context, src Source, it Item, plan *Plan) InventoryImage {
	img := InventoryImage{Repository: it.Repository, Tag: it.Tag, Digest: plan.Root.Digest, MediaType: plan.Root.MediaType, PushedAt: it.PushedAt}
	img.Size = plan.Size()
	seen := map[string]bool{}
	for _, m := range plan.Manifests {
		img.Size += m.Descriptor.Size
		if p := m.Descriptor.Platform; p != nil && p.OS != "unknown" && !m.Manifest.IsIndex() {
			if s := platformString(*p); !seen[s] {
				seen[s] = true
				img.Platforms = append(img.Platforms, s)
			}
		}
	}
	if len(img.Platforms) == 0 {
		if rm := rootManifest(plan); rm != nil && rm.Manifest.Image != nil {
			if p, err := configPlatform(ctx, src, rm.Manifest.Image.Config); err == nil && p.OS != "" {
				img.Platforms = []string{platformString(p)}
			} else if err != nil {
				log.G(ctx).WithError(err).WithField("image", it.Key()).Debug("cannot read config for the platform")
			}
		}
	}
	sort.Strings(img.Platforms)
	return img
}

func rootManifest(p *Plan) *PlannedManifest {
	if n := len(p.Manifests); n > 0 && p.Manifests[n-1].Descriptor.Digest == p.Root.Digest {
		return &p.Manifests[n-1]
	}
	return nil
}

func platformString(p ocispec.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// configPlatform reads an image config (at most 1 MiB) for its platform.
func configPlatform(ctx context.Context, src Source, desc Descriptor) (ocispec.Platform, error) {
	rc, err := src.Blob(ctx, desc)
	if err != nil {
		return ocispec.Platform{}, err
	}
	defer rc.Close()
	var cfg struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
	}
	if err := json.NewDecoder(io.LimitReader(rc, 1<<20)).Decode(&cfg); err != nil {
		return ocispec.Platform{}, err
	}
	return ocispec.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}, nil
}

// BlobPresence is a Target that can say, writing nothing, whether it already
// holds a blob, and which blobs it keeps once (equal keys). The inventory
// uses it to count what a migration would upload; a Target without it is
// assumed to hold nothing.
type BlobPresence interface {
	// BlobPresent reports whether repo already has desc with its size.
	BlobPresent(ctx context.Context, repo string, desc Descriptor) (bool, error)
	// BlobKey names where desc is kept for repo: equal keys are stored
	// once.
	BlobKey(repo string, desc Descriptor) string
}

func (d *storeDest) BlobPresent(ctx context.Context, _ string, desc Descriptor) (bool, error) {
	info, err := d.s.StatBlob(ctx, desc.Digest)
	if errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrNoSuchBucket) {
		return false, nil
	}
	return err == nil && info.Size == desc.Size, err
}

// A bucket keeps every blob once, whatever the repository.
func (d *storeDest) BlobKey(_ string, desc Descriptor) string { return desc.Digest.String() }

// finish totals the inventory, asking dst (jobs at once) which blobs it
// already has.
func (inv *inventory) finish(ctx context.Context, rep *Report, dst Target, o *runOptions) *Inventory {
	out := &Inventory{Source: rep.Source, Destination: rep.Destination, Platforms: rep.Platforms, Images: inv.images, Prices: o.prices}
	sort.SliceStable(out.Images, func(i, j int) bool {
		a, b := out.Images[i], out.Images[j]
		if (a.Tag == "") != (b.Tag == "") {
			return a.Tag != ""
		}
		return a.Repository+":"+a.Tag+"@"+a.Digest.String() < b.Repository+":"+b.Tag+"@"+b.Digest.String()
	})
	t := &out.Totals
	for _, img := range out.Images {
		t.Images++
		if img.Tag != "" {
			t.Tags++
		} else {
			t.Untagged++
		}
		switch img.Status {
		case StatusPlanned:
			t.ToCopy++
		case StatusUnchanged:
			t.Unchanged++
		case StatusFailed:
			t.Failed++
		}
		t.BytesListed += img.Size
	}

	bp, _ := dst.(BlobPresence)
	key := func(repo string, d Descriptor) string {
		if bp == nil {
			return d.Digest.String()
		}
		return bp.BlobKey(repo, d)
	}
	type want struct {
		repo string
		desc Descriptor
		blob bool // config or layer; else a manifest
	}
	unique := map[string]want{}
	var order []string
	for _, pi := range inv.plans {
		for _, b := range pi.plan.Blobs {
			if k := key(pi.repo, b); unique[k].desc.Digest == "" {
				unique[k] = want{repo: pi.repo, desc: b, blob: true}
				order = append(order, k)
			}
		}
		for _, m := range pi.plan.Manifests {
			if k := "manifest " + key(pi.repo, m.Descriptor); unique[k].desc.Digest == "" {
				unique[k] = want{repo: pi.repo, desc: m.Descriptor}
				order = append(order, k)
			}
		}
		if pi.planned {
			t.PutRequests += linkPuts(pi)
		}
	}

	present := make([]bool, len(order))
	if bp != nil {
		var mu sync.Mutex
		var failed int
		var firstErr error
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(o.blobJobs)
		for i, k := range order {
			w := unique[k]
			g.Go(func() error {
				ok, err := bp.BlobPresent(gctx, w.repo, w.desc)
				present[i] = ok && err == nil
				if err != nil {
					mu.Lock()
					failed++
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
				}
				return nil
			})
		}
		_ = g.Wait()
		if failed > 0 {
			// Counted as missing: the estimate errs high.
			log.G(ctx).WithError(firstErr).Warnf("cannot tell whether the destination has %d of %d blobs and manifests; counting them as missing", failed, len(order))
		}
	}
	for i, k := range order {
		w := unique[k]
		if !w.blob {
			t.Manifests++
			t.ManifestBytes += w.desc.Size
			if !present[i] {
				t.PutRequests++
			}
			continue
		}
		t.Blobs++
		t.BytesUnique += w.desc.Size
		if present[i] {
			t.BlobsPresent++
			t.BytesPresent += w.desc.Size
		} else {
			t.BlobsToTransfer++
			t.BytesToTransfer += w.desc.Size
			t.PutRequests += putRequests(w.desc.Size, o.partSize)
		}
	}
	t.estimate(o.prices)
	return out
}

// linkPuts counts the small objects a real copy of one item writes into a
// bucket whatever is there: per manifest its revision link and, for an
// image, a layer link per config and layer; per tag its two tag links.
func linkPuts(pi plannedItem) int64 {
	var n int64
	for _, m := range pi.plan.Manifests {
		n++
		if !m.Manifest.IsIndex() {
			n += int64(len(m.Manifest.Blobs()))
		}
	}
	if pi.tagged {
		n += 2
	}
	return n
}
