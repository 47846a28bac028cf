package integration

import (
	"encoding/json"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/ecrfake"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/migrator"
)

// planFixture is a registry repository of images that share layers: two
// tags over one base, and a two-platform index whose children share it too.
type planFixture struct {
	src     *testenv.Registry
	images  map[string][]*testenv.Image // tag -> image(s)
	index   []byte                      // the "multi" index
	listed  int64                       // sizes added up, manifests included
	unique  int64                       // distinct configs and layers
	baseLen int64                       // the shared layers' bytes
}

func newPlanFixture(t *testing.T) *planFixture {
	t.Helper()
	f := &planFixture{src: testenv.StartFSRegistry(t), images: map[string][]*testenv.Image{}}
	push := regPusher{addr: f.src.Addr}
	base := randomLayers(41, 2, 1<<20)
	own := randomLayers(42, 4, 256<<10)
	withBase := func(p ocispec.Platform, extra []byte) *testenv.Image {
		layers := [][]byte{base[0], base[1], extra}
		diffIDs := []digest.Digest{digest.FromBytes(layers[0]), digest.FromBytes(layers[1]), digest.FromBytes(layers[2])}
		return testenv.ImageFromLayers(t, p, layers, diffIDs, ocispec.ImageConfig{Cmd: []string{"/bin/true"}})
	}
	f.images["v1"] = []*testenv.Image{withBase(hostPlatform(), own[0])}
	f.images["v2"] = []*testenv.Image{withBase(hostPlatform(), own[1])}
	f.images["multi"] = []*testenv.Image{withBase(hostPlatform(), own[2]), withBase(otherPlatform(), own[3])}
	for tag, ims := range f.images {
		if len(ims) == 1 {
			push.image(t, "app", tag, ims[0])
			continue
		}
		for _, im := range ims {
			push.image(t, "app", "", im)
		}
		f.index = testenv.NewIndex(t, ims...)
		push.manifest(t, "app", tag, f.index, ocispec.MediaTypeImageIndex)
		f.listed += int64(len(f.index))
	}
	// An image's size counts what its children share once; the run
	// counts what all images share once.
	seen := map[digest.Digest]bool{}
	for _, ims := range f.images {
		inImage := map[digest.Digest]bool{}
		for _, im := range ims {
			f.listed += int64(len(im.Manifest))
			for d, b := range im.Blobs() {
				if !inImage[d] {
					inImage[d] = true
					f.listed += int64(len(b))
				}
				if !seen[d] {
					seen[d] = true
					f.unique += int64(len(b))
				}
			}
		}
	}
	f.baseLen = int64(len(base[0]) + len(base[1]))
	return f
}

// dryRun runs migrate --dry-run -o json and returns the inventory.
func dryRun(t *testing.T, cli *migrateCLI, args ...string) *migrator.Inventory {
	t.Helper()
	out, _, code := cli.run(t, append([]string{"migrate", "--dry-run", "-o", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("dry run exit %d", code)
	}
	var inv migrator.Inventory
	if err := json.Unmarshal([]byte(out), &inv); err != nil {
		t.Fatalf("dry run output is not one JSON inventory: %v\n%s", err, out)
	}
	return &inv
}

// moved adds up what a real run's report says it moved.
func moved(rep *migrator.Report) int64 {
	var n int64
	for _, e := range rep.Entries {
		n += e.BytesMoved
	}
	return n
}

// TestMigrateDryRunPlan: a dry run over images sharing layers lists each
// image (size, platforms), counts the shared layers once, writes nothing,
// and its "to transfer" is exactly what the real run then moves.
func TestMigrateDryRunPlan(t *testing.T) {
	e := testenv.S3(t)
	f := newPlanFixture(t)
	cli := newMigrateCLI(t, e)
	bucket := e.NewBucket(t)
	src, dst := "docker://"+f.src.Addr+"/app", "s3://"+bucket

	inv := dryRun(t, cli, src, dst)
	tot := inv.Totals
	if tot.Images != 3 || tot.ToCopy != 3 || tot.Failed != 0 {
		t.Fatalf("totals %+v: want 3 images to copy", tot)
	}
	if tot.BytesListed != f.listed {
		t.Errorf("bytes listed %d, want %d (manifests, configs and layers of every image)", tot.BytesListed, f.listed)
	}
	if tot.BytesUnique != f.unique || tot.BytesUnique > tot.BytesListed-2*f.baseLen {
		t.Errorf("bytes after dedup %d, want %d: the shared %d-byte base once, not three times", tot.BytesUnique, f.unique, f.baseLen)
	}
	if tot.BytesPresent != 0 || tot.BytesToTransfer != tot.BytesUnique {
		t.Errorf("empty bucket: present %d, to transfer %d, want 0 and %d", tot.BytesPresent, tot.BytesToTransfer, tot.BytesUnique)
	}
	for _, im := range inv.Images {
		want := []string{"linux/" + hostPlatform().Architecture}
		if im.Tag == "multi" {
			want = append(want, platformName(otherPlatform()))
			slices.Sort(want)
			if im.Digest != digest.FromBytes(f.index) {
				t.Errorf("multi: digest %s, want the index's %s", im.Digest, digest.FromBytes(f.index))
			}
		}
		if !slices.Equal(im.Platforms, want) || im.Size == 0 || !im.PushedAt.IsZero() || im.Status != migrator.StatusPlanned {
			t.Errorf("%s: %+v, want platforms %v, a size, no push time (a registry does not say), planned", im.Tag, im, want)
		}
	}
	// The estimate is the documented arithmetic on the default prices.
	p := migrator.DefaultPrices
	if inv.Prices.TransferPerGB != p.TransferPerGB || !strings.Contains(inv.Prices.Basis, "us-east-1") {
		t.Errorf("prices %+v, want the defaults", inv.Prices)
	}
	if want := float64(tot.BytesToTransfer) / (1 << 30) * p.TransferPerGB; math.Abs(tot.TransferCost-want) > 1e-12 {
		t.Errorf("transfer cost %v, want %v", tot.TransferCost, want)
	}
	if want := float64(tot.PutRequests) / 1000 * p.PutPer1000; tot.PutRequests < int64(tot.BlobsToTransfer) || math.Abs(tot.RequestCost-want) > 1e-12 {
		t.Errorf("%d PUTs for %d blobs, cost %v (want %v)", tot.PutRequests, tot.BlobsToTransfer, tot.RequestCost, want)
	}
	if keys := testenv.Keys(t, e.Client(t), bucket, ""); len(keys) != 0 {
		t.Fatalf("the dry run wrote into the bucket: %v", keys)
	}

	rep, code := cli.migrate(t, "migrate", src, dst)
	if code != 0 || rep.Summary.Copied != 3 {
		t.Fatalf("real run: exit %d, %+v", code, rep.Summary)
	}
	if got := moved(rep); got != tot.BytesToTransfer {
		t.Errorf("the real run moved %d bytes; the dry run said %d", got, tot.BytesToTransfer)
	}

	// Afterwards: everything is there, nothing to transfer.
	inv = dryRun(t, cli, src, dst)
	if inv.Totals.Unchanged != 3 || inv.Totals.BytesToTransfer != 0 || inv.Totals.BytesPresent != f.unique || inv.Totals.PutRequests != 0 {
		t.Errorf("after the run: %+v, want 3 unchanged, all present, nothing to transfer or put", inv.Totals)
	}
}

// TestMigrateDryRunPartialBucket: with one image already in the bucket, the
// dry run counts its blobs (and the base it shares) as present, and the real
// run moves exactly the rest.
func TestMigrateDryRunPartialBucket(t *testing.T) {
	e := testenv.S3(t)
	f := newPlanFixture(t)
	cli := newMigrateCLI(t, e)
	bucket := e.NewBucket(t)
	src, dst := "docker://"+f.src.Addr+"/app", "s3://"+bucket
	if rep, code := cli.migrate(t, "migrate", "--tag=^v1$", src, dst); code != 0 || rep.Summary.Copied != 1 {
		t.Fatalf("copy v1: exit %d", code)
	}
	before := testenv.Keys(t, e.Client(t), bucket, "")

	inv := dryRun(t, cli, src, dst)
	var v1 int64
	for _, b := range f.images["v1"][0].Blobs() {
		v1 += int64(len(b))
	}
	tot := inv.Totals
	if tot.Unchanged != 1 || tot.ToCopy != 2 || tot.BytesPresent != v1 || tot.BytesToTransfer != f.unique-v1 {
		t.Errorf("totals %+v: want v1 unchanged, its %d bytes present, %d to transfer", tot, v1, f.unique-v1)
	}
	if after := testenv.Keys(t, e.Client(t), bucket, ""); !slices.Equal(before, after) {
		t.Errorf("the dry run changed the bucket: %d keys before, %d after", len(before), len(after))
	}

	rep, code := cli.migrate(t, "migrate", src, dst)
	if code != 0 || rep.Summary.Copied != 2 || rep.Summary.Unchanged != 1 {
		t.Fatalf("real run: exit %d, %+v", code, rep.Summary)
	}
	if got := moved(rep); got != tot.BytesToTransfer {
		t.Errorf("the real run moved %d bytes; the dry run said %d", got, tot.BytesToTransfer)
	}
}

// TestMigrateDryRunCLI: the text inventory (table, totals, assumed prices),
// price overrides, and usage errors for bad prices.
func TestMigrateDryRunCLI(t *testing.T) {
	e := testenv.S3(t)
	f := newPlanFixture(t)
	cli := newMigrateCLI(t, e)
	bucket := e.NewBucket(t)
	src, dst := "docker://"+f.src.Addr+"/app", "s3://"+bucket

	out, _, code := cli.run(t, "migrate", "--dry-run", src, dst)
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"REPOSITORY", "PLATFORMS", "app ", "multi", "After deduplication:", "To transfer:", "S3 PUT requests:", "Estimated cost (USD):", "Assumed prices: AWS us-east-1 list prices"} {
		if !strings.Contains(out, want) {
			t.Errorf("text inventory lacks %q", want)
		}
	}

	inv := dryRun(t, cli, "--price-transfer-gb=0", "--price-storage-gb-month=0.0125", src, dst)
	if inv.Totals.TransferCost != 0 || inv.Prices.StoragePerGBMonth != 0.0125 || !strings.Contains(inv.Prices.Basis, "overridden") {
		t.Errorf("overridden prices: %+v, totals %+v", inv.Prices, inv.Totals)
	}

	for _, args := range [][]string{
		{"migrate", "--dry-run", "--price-put-1000=-1", src, dst},
		{"migrate", "--price-transfer-gb=0.02", src, dst}, // prices without --dry-run
		{"migrate", "--max-bandwidth=fast", src, dst},
		{"migrate", "--max-requests=-3", src, dst},
	} {
		if _, stderr, code := cli.run(t, args...); code != 2 || stderr == "" {
			t.Errorf("%v: exit %d, want 2 with a message", args[1], code)
		}
	}
	if keys := testenv.Keys(t, e.Client(t), bucket, ""); len(keys) != 0 {
		t.Errorf("the bucket was written: %v", keys)
	}
}

func platformName(p ocispec.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// TestMigrateDryRunECR: from ECR the inventory has each image's push time
// (DescribeImages' imagePushedAt) and untagged images by digest.
func TestMigrateDryRunECR(t *testing.T) {
	e := testenv.S3(t)
	fake := ecrfake.Start(t, ecrfake.Options{})
	push := regPusher{addr: fake.Registry.Addr, auth: basic("AWS", fake.Token())}
	tagged := opaqueImage(t, randomLayers(71, 2, 64<<10))
	untagged := opaqueImage(t, randomLayers(72, 1, 64<<10))
	push.image(t, "team/app", "v1", tagged)
	push.image(t, "team/app", "", untagged)
	when := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	fake.SetPushedAt("team/app", tagged.Digest.String(), when)
	cli := newMigrateCLI(t, e)

	inv := dryRun(t, cli, "--ecr-endpoint="+fake.Endpoint(), fake.URL(), "s3://"+e.NewBucket(t))
	if len(inv.Images) != 2 || inv.Totals.Tags != 1 || inv.Totals.Untagged != 1 {
		t.Fatalf("images %+v: want the tag and the untagged image", inv.Images)
	}
	if im := inv.Images[0]; im.Tag != "v1" || !im.PushedAt.Equal(when) || im.Digest != tagged.Digest {
		t.Errorf("tagged: %+v, want v1 pushed at %s", im, when)
	}
	if im := inv.Images[1]; im.Tag != "" || im.Digest != untagged.Digest || im.PushedAt.IsZero() {
		t.Errorf("untagged: %+v, want its digest and a push time", im)
	}
}
