package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/integration/ecrfake"
	"github.com/s3snap/s3snap/integration/testenv"
	"github.com/s3snap/s3snap/lifecycle"
	"github.com/s3snap/s3snap/store"
)

// releasePolicy mirrors a typical team's ECR policy: keep the last ten
// releases, drop untagged builds after a week, and cap everything else.
const releasePolicy = `{
  "rules": [
    {"rulePriority": 1, "description": "keep last 10 v* images",
     "selection": {"tagStatus": "tagged", "tagPrefixList": ["v"], "countType": "imageCountMoreThan", "countNumber": 10},
     "action": {"type": "expire"}},
    {"rulePriority": 2, "description": "expire untagged after 7 days",
     "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 7},
     "action": {"type": "expire"}},
    {"rulePriority": 3, "description": "keep at most 20 images",
     "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 20},
     "action": {"type": "expire"}}
  ]
}`

// pruneOut is one repository of prune -o json.
type pruneOut struct {
	Repository string                  `json:"repository"`
	Policy     string                  `json:"policy"`
	DryRun     bool                    `json:"dryRun"`
	Images     []lifecycle.ImageResult `json:"images"`
	Expired    int                     `json:"expired"`
	Kept       int                     `json:"kept"`
	Failed     int                     `json:"failed"`
}

func runPrune(t *testing.T, cli *migrateCLI, args ...string) ([]pruneOut, int) {
	t.Helper()
	stdout, _, code := cli.run(t, append([]string{"prune", "-o", "json"}, args...)...)
	var out []pruneOut
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("prune -o json: %v\n%s", err, stdout)
	}
	return out, code
}

// decisions maps an image's name to "expire 1" / "keep 3" / "keep index".
func decisions(t *testing.T, out pruneOut, names map[digest.Digest]string) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, im := range out.Images {
		n, ok := names[im.Digest]
		if !ok {
			t.Errorf("prune listed an unknown image %s %v", im.Digest, im.Tags)
			continue
		}
		s := fmt.Sprintf("%s %d", im.Action, im.RulePriority)
		if im.Index != "" {
			s = "keep index " + names[im.Index]
		}
		got[n] = s
	}
	return got
}

func sameDecisions(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	for n, w := range want {
		if got[n] != w {
			t.Errorf("%s: %s: %q, want %q", what, n, got[n], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%s: %d images listed, want %d: %v", what, len(got), len(want), got)
	}
}

// TestPrunePolicy applies an ECR lifecycle policy to a repository in a
// bucket: the dry run names exactly the images ECR would expire and the
// rule expiring each, the real run removes exactly those (tags included),
// and a stock registry over the bucket still serves every kept tag.
func TestPrunePolicy(t *testing.T) {
	e := testenv.S3(t)
	ctx := context.Background()
	bucket := e.NewBucket(t)
	st := store.New(e.Client(t), bucket, store.WithPrefix("reg"))
	const repo = "team/app"
	names := map[digest.Digest]string{}
	tagsOf := map[string][]string{}
	put := func(name string, tags ...string) *testenv.Image {
		im := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "id", Data: []byte(name)}})
		testenv.PutImage(t, st, repo, im)
		for _, tag := range tags {
			if err := st.Tag(ctx, repo, tag, im.Digest); err != nil {
				t.Fatal(err)
			}
		}
		names[im.Digest], tagsOf[name] = name, tags
		return im
	}
	// Push times come from the bucket (revision links' LastModified, to
	// the second): a pause marks each boundary a rule's outcome hangs on.
	tick := func() { time.Sleep(1100 * time.Millisecond) }
	put("dev-old", "dev-old")
	tick()
	for i := 1; i <= 15; i++ {
		tags := []string{fmt.Sprint("v", i)}
		switch i {
		case 3:
			tags = append(tags, "stable") // goes with v3
		case 15:
			tags = append(tags, "latest")
		}
		put(fmt.Sprint("v", i), tags...)
		if i == 5 {
			tick()
		}
	}
	tick()
	put("u1")
	put("u2")
	tick()
	put("dev-1", "dev-1")
	put("dev-2", "dev-2")
	put("u3")
	amd := put("amd64")
	arm := put("arm64")
	idx, err := st.PutManifest(ctx, repo, testenv.NewIndex(t, amd, arm))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Tag(ctx, repo, "multi", idx); err != nil {
		t.Fatal(err)
	}
	names[idx], tagsOf["multi"] = "multi", []string{"multi"}

	// "Now" is just over a week after u2 was pushed and under a week after
	// u3: the bucket's own push times, read the way prune reads them.
	images, err := lifecycle.ListImages(ctx, st, repo)
	if err != nil {
		t.Fatal(err)
	}
	pushed := map[string]time.Time{}
	for _, im := range images {
		pushed[names[im.Digest]] = im.PushedAt
	}
	if len(images) != 24 || !pushed["u3"].After(pushed["u2"]) || !pushed["v6"].After(pushed["v5"]) {
		t.Fatalf("listed %d images (want 24); push times %v", len(images), pushed)
	}
	now := pushed["u2"].Add(7*24*time.Hour + 500*time.Millisecond).Format(time.RFC3339Nano)

	policy := filepath.Join(t.TempDir(), "policy.json")
	writeFile(t, policy, []byte(releasePolicy))
	cli := newMigrateCLI(t, e)
	url := "s3://" + bucket + "/reg/" + repo
	want := map[string]string{
		"dev-old": "expire 3",
		"u1":      "expire 2", "u2": "expire 2", "u3": "keep 2",
		"dev-1": "keep 3", "dev-2": "keep 3", "multi": "keep 3",
		"amd64": "keep 2", "arm64": "keep 2",
	}
	for i := 1; i <= 15; i++ {
		want[fmt.Sprint("v", i)] = map[bool]string{true: "expire 1", false: "keep 1"}[i <= 5]
	}
	before := testenv.Keys(t, e.Client(t), bucket, "")

	t.Run("dry run", func(t *testing.T) {
		out, code := runPrune(t, cli, "--dry-run", "--policy", policy, "--now", now, url)
		if code != 0 || len(out) != 1 {
			t.Fatalf("exit %d, %d repositories", code, len(out))
		}
		sameDecisions(t, "dry run", decisions(t, out[0], names), want)
		if out[0].Expired != 8 || out[0].Kept != 16 || !out[0].DryRun || out[0].Policy != "file" {
			t.Errorf("expired %d kept %d dryRun %v policy %q; want 8, 16, true, file", out[0].Expired, out[0].Kept, out[0].DryRun, out[0].Policy)
		}
		for _, im := range out[0].Images {
			if n := names[im.Digest]; n == "v3" && (!slices.Equal(im.Tags, []string{"stable", "v3"}) || len(im.Keys) == 0) {
				t.Errorf("v3: tags %v, keys %v: want both tags and the keys it would delete", im.Tags, im.Keys)
			}
		}
		// The text output names each expired image's rule.
		text, _, code := cli.run(t, "prune", "--dry-run", "--policy", policy, "--now", now, url)
		if code != 0 || !strings.Contains(text, "would expire 8, kept 16") {
			t.Errorf("text dry run: exit %d, no summary", code)
		}
		for _, line := range strings.Split(text, "\n") {
			if strings.Contains(line, " v1 ") && !(strings.HasPrefix(line, "would expire") && strings.Contains(line, "1 keep last 10 v* images")) {
				t.Errorf("v1 line %q: want would expire by rule 1 and its description", line)
			}
		}
		// A week and more on, every untagged image is over age, but an
		// index's children stay with it.
		later := pushed["multi"].Add(30 * 24 * time.Hour).Format(time.RFC3339)
		out, code = runPrune(t, cli, "--dry-run", "--policy", policy, "--now", later, url)
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
		got := decisions(t, out[0], names)
		if got["u3"] != "expire 2" || got["amd64"] != "keep index multi" || got["arm64"] != "keep index multi" {
			t.Errorf("at +30 days: u3 %q, amd64 %q, arm64 %q; want expire 2, and both children kept for their index", got["u3"], got["amd64"], got["arm64"])
		}
		if after := testenv.Keys(t, e.Client(t), bucket, ""); len(after) != len(before) {
			t.Errorf("dry runs changed the bucket: %d objects, were %d", len(after), len(before))
		}
	})

	t.Run("bad policy is a usage error", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.json")
		writeFile(t, bad, []byte(strings.Replace(releasePolicy, `"rulePriority": 1,`, `"rulePriority": 3,`, 1)))
		_, stderr, code := cli.run(t, "prune", "--policy", bad, url)
		if code != 2 || !strings.Contains(stderr, "used twice") {
			t.Errorf("duplicate priorities: exit %d, %q; want 2 and the reason", code, stderr)
		}
	})

	t.Run("prune", func(t *testing.T) {
		out, code := runPrune(t, cli, "--policy", policy, "--now", now, url)
		if code != 0 || len(out) != 1 || out[0].Expired != 8 || out[0].Failed != 0 {
			t.Fatalf("exit %d, %+v", code, out)
		}
		sameDecisions(t, "prune", decisions(t, out[0], names), want)
		var keptTags []string
		for n, w := range want {
			for _, tag := range tagsOf[n] {
				_, err := st.Resolve(ctx, repo, tag)
				expire := strings.HasPrefix(w, "expire")
				if expire && !errors.Is(err, store.ErrNotFound) || !expire && err != nil {
					t.Errorf("tag %s of %s (%s): resolve: %v", tag, n, w, err)
				}
				if !expire {
					keptTags = append(keptTags, tag)
				}
			}
		}
		tags, err := st.ListTags(ctx, repo)
		slices.Sort(keptTags)
		if err != nil || !slices.Equal(tags, keptTags) {
			t.Errorf("tags after prune: %v (%v), want %v", tags, err, keptTags)
		}
		left, err := lifecycle.ListImages(ctx, st, repo)
		if err != nil || len(left) != 16 {
			t.Errorf("%d images left (%v), want 16", len(left), err)
		}
		for _, im := range left {
			if strings.HasPrefix(want[names[im.Digest]], "expire") {
				t.Errorf("%s still in the repository", names[im.Digest])
			}
		}

		// A stock registry over the bucket serves every kept tag, and
		// the children of the kept index by digest; expired tags are gone.
		reg := testenv.StartS3Registry(t, e, bucket, "reg")
		get := func(ref string) (int, string) {
			req, _ := http.NewRequest(http.MethodGet, "http://"+reg.Addr+"/v2/"+repo+"/manifests/"+ref, nil)
			req.Header.Set("Accept", ocispec.MediaTypeImageManifest+", "+ocispec.MediaTypeImageIndex)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode, resp.Header.Get("Docker-Content-Digest")
		}
		for _, tag := range keptTags {
			d, _ := st.Resolve(ctx, repo, tag)
			if code, got := get(tag); code != http.StatusOK || got != d.String() {
				t.Errorf("registry GET %s: %d %s, want 200 %s", tag, code, got, d)
			}
		}
		for _, d := range []digest.Digest{amd.Digest, arm.Digest} {
			if code, _ := get(d.String()); code != http.StatusOK {
				t.Errorf("registry GET child %s: %d", d, code)
			}
		}
		for _, tag := range []string{"v1", "stable", "dev-old"} {
			if code, _ := get(tag); code != http.StatusNotFound {
				t.Errorf("registry GET expired %s: %d, want 404", tag, code)
			}
		}
	})
}

// TestPruneAfterMigrateECR is the team's own policy carried over: migrate
// copies each ECR repository's lifecycle policy and push times into the
// bucket, and prune without --policy applies them.
func TestPruneAfterMigrateECR(t *testing.T) {
	e := testenv.S3(t)
	fake := ecrfake.Start(t, ecrfake.Options{})
	push := regPusher{addr: fake.Registry.Addr, auth: authn.FromConfig(authn.AuthConfig{Username: "AWS", Password: fake.Token()})}
	now := time.Now()
	age := map[string]time.Duration{"v1": 40, "v2": 30, "v3": 20, "v4": 10, "untagged": 9}
	digests := map[string]digest.Digest{}
	for _, n := range []string{"v1", "v2", "v3", "v4", "untagged"} {
		im := testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "id", Data: []byte(n)}})
		tag := n
		if n == "untagged" {
			tag = ""
		}
		push.image(t, "svc", tag, im)
		digests[n] = im.Digest
		fake.SetPushedAt("svc", im.Digest.String(), now.Add(-age[n]*24*time.Hour))
	}
	push.image(t, "plain", "v1", testenv.NewImage(t, hostPlatform(), []testenv.File{{Name: "id", Data: []byte("plain")}}))
	const policy = `{"rules":[{"rulePriority":1,"description":"keep last 2 releases","selection":{"tagStatus":"tagged","tagPatternList":["v*"],"countType":"imageCountMoreThan","countNumber":2},"action":{"type":"expire"}},` +
		`{"rulePriority":2,"description":"untagged after 7 days","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":7},"action":{"type":"expire"}}]}`
	fake.SetLifecyclePolicy("svc", policy)

	bucket := e.NewBucket(t)
	cli := newMigrateCLI(t, e)
	rep, code := cli.migrate(t, "migrate", "--ecr-endpoint="+fake.Endpoint(), fake.URL(), "s3://"+bucket+"/mirror")
	if code != 0 {
		t.Fatalf("migrate exit %d", code)
	}
	status := map[string]string{}
	for _, pc := range rep.LifecyclePolicies {
		status[pc.Repository] = pc.Status + pc.Reason
	}
	if status["svc"] != "copied" || status["plain"] != "none" || len(status) != 2 {
		t.Errorf("lifecycle policies in the report: %v; want svc copied, plain none", status)
	}
	if got := readObject(t, e, bucket, "mirror/s3snap/lifecycle/svc/policy.json"); string(got) != policy {
		t.Errorf("stored policy %q, want ECR's text as is", got)
	}

	// Every image landed in the bucket within seconds; ECR's push times
	// (migrated beside them) are what the rules see.
	out, code := runPrune(t, cli, "--dry-run", "s3://"+bucket+"/mirror")
	if code != 0 || len(out) != 2 {
		t.Fatalf("dry run: exit %d, %d repositories", code, len(out))
	}
	names := map[digest.Digest]string{}
	for n, d := range digests {
		names[d] = n
	}
	for _, o := range out {
		switch o.Repository {
		case "plain":
			if o.Policy != "none" || len(o.Images) != 0 {
				t.Errorf("plain: policy %q, %d images; want skipped", o.Policy, len(o.Images))
			}
		case "svc":
			sameDecisions(t, "svc", decisions(t, o, names), map[string]string{
				"v1": "expire 1", "v2": "expire 1", "v3": "keep 1", "v4": "keep 1", "untagged": "expire 2"})
			for _, im := range o.Images {
				if n := names[im.Digest]; !im.PushedAt.Round(time.Second).Equal(now.Add(-age[n] * 24 * time.Hour).Round(time.Second)) {
					t.Errorf("%s pushed %s, want ECR's %s", n, im.PushedAt, now.Add(-age[n]*24*time.Hour))
				}
			}
		default:
			t.Errorf("unexpected repository %s", o.Repository)
		}
	}

	if out, code = runPrune(t, cli, "s3://"+bucket+"/mirror"); code != 0 {
		t.Fatalf("prune exit %d: %+v", code, out)
	}
	st := store.New(e.Client(t), bucket, store.WithPrefix("mirror"))
	ctx := context.Background()
	for repo, want := range map[string][]string{"svc": {"v3", "v4"}, "plain": {"v1"}} {
		if tags, err := st.ListTags(ctx, repo); err != nil || !slices.Equal(tags, want) {
			t.Errorf("%s tags after prune: %v (%v), want %v", repo, tags, err, want)
		}
	}
	if _, err := st.GetManifest(ctx, "svc", digests["untagged"]); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("untagged manifest after prune: %v, want not found", err)
	}

	// One repository without a stored policy, and no --policy: an error.
	_, stderr, code := cli.run(t, "prune", "s3://"+bucket+"/mirror/plain")
	if code != 1 || !strings.Contains(stderr, "no stored lifecycle policy") {
		t.Errorf("prune of a repository without a policy: exit %d, %q", code, stderr)
	}
}
