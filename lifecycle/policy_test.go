package lifecycle

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// img is an image named name (its digest is derived from it), pushed
// daysAgo days before now.
func img(name string, daysAgo float64, tags ...string) Image {
	return Image{Digest: digest.FromString(name), Tags: tags, PushedAt: now.Add(-time.Duration(daysAgo * float64(24*time.Hour)))}
}

// rule builds a rule's JSON.
func rule(prio int, sel string) string {
	return fmt.Sprintf(`{"rulePriority": %d, "description": "Rule %d", "selection": {%s}, "action": {"type": "expire"}}`, prio, prio, sel)
}

func policy(rules ...string) string { return `{"rules": [` + strings.Join(rules, ",") + `]}` }

// expired returns the names of the images decisions expire, by name.
func expired(t *testing.T, images []Image, ds []Decision) []string {
	t.Helper()
	name := map[digest.Digest]string{}
	for _, im := range images {
		for _, n := range []string{"A", "B", "C", "D", "E", "F", "G", "H", "idx", "amd64", "arm64"} {
			if im.Digest == digest.FromString(n) {
				name[im.Digest] = n
			}
		}
	}
	var out []string
	for _, d := range ds {
		if d.Expire {
			out = append(out, name[d.Digest])
		}
	}
	slices.Sort(out)
	return out
}

// TestEvaluateDocumentedExamples runs every example of "Examples of
// lifecycle policies in Amazon ECR" and checks the documented result.
func TestEvaluateDocumentedExamples(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy string
		images []Image
		want   []string
	}{
		{
			name:   "filtering on image age: untagged older than 14 days",
			policy: policy(rule(1, `"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 14`)),
			images: []Image{img("A", 20), img("B", 14.5), img("C", 13), img("D", 30, "v1")},
			want:   []string{"A", "B"},
		},
		{
			name:   "filtering on image age: prod* older than 14 days",
			policy: policy(rule(1, `"tagStatus": "tagged", "tagPatternList": ["prod*"], "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 14`)),
			images: []Image{img("A", 20, "prod"), img("B", 20, "prod1"), img("C", 20, "beta"), img("D", 2, "prod2"), img("E", 20)},
			want:   []string{"A", "B"},
		},
		{
			name:   "filtering on image count: keep one untagged",
			policy: policy(rule(1, `"tagStatus": "untagged", "countType": "imageCountMoreThan", "countNumber": 1`)),
			images: []Image{img("A", 3), img("B", 2), img("C", 1), img("D", 9, "v1")},
			want:   []string{"A", "B"},
		},
		{
			name: "multiple rules, example A",
			policy: policy(
				rule(1, `"tagStatus": "tagged", "tagPrefixList": ["prod"], "countType": "imageCountMoreThan", "countNumber": 1`),
				rule(2, `"tagStatus": "tagged", "tagPrefixList": ["beta"], "countType": "imageCountMoreThan", "countNumber": 1`)),
			images: []Image{img("A", 10, "beta-1", "prod-1"), img("B", 9, "beta-2", "prod-2"), img("C", 8, "beta-3")},
			want:   []string{"A"},
		},
		{
			name: "multiple rules, example B (priorities swapped)",
			policy: policy(
				rule(1, `"tagStatus": "tagged", "tagPrefixList": ["beta"], "countType": "imageCountMoreThan", "countNumber": 1`),
				rule(2, `"tagStatus": "tagged", "tagPrefixList": ["prod"], "countType": "imageCountMoreThan", "countNumber": 1`)),
			images: []Image{img("A", 10, "beta-1", "prod-1"), img("B", 9, "beta-2", "prod-2"), img("C", 8, "beta-3")},
			want:   []string{"A", "B"},
		},
		{
			name:   "multiple tags in a single rule, example A: an image must match every prefix",
			policy: policy(rule(1, `"tagStatus": "tagged", "tagPrefixList": ["alpha", "beta"], "countType": "sinceImagePushed", "countNumber": 5, "countUnit": "days"`)),
			images: []Image{img("A", 12, "alpha-1"), img("B", 11, "beta-1"), img("C", 10, "alpha-2", "beta-2"), img("D", 4, "alpha-3"), img("E", 3, "beta-3"), img("F", 2, "alpha-4", "beta-4")},
			want:   []string{"C"},
		},
		{
			name:   "multiple tags in a single rule, example B: tags are not exclusive",
			policy: policy(rule(1, `"tagStatus": "tagged", "tagPrefixList": ["alpha", "beta"], "countType": "imageCountMoreThan", "countNumber": 1`)),
			images: []Image{img("A", 10, "alpha-1", "beta-1", "gamma-1"), img("B", 9, "alpha-2", "beta-2"), img("C", 8, "alpha-3", "beta-3", "gamma-2")},
			want:   []string{"A", "B"},
		},
		{
			name:   "all images, example A: any, keep one",
			policy: policy(rule(1, `"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 1`)),
			images: []Image{img("A", 4, "alpha-1"), img("B", 3, "beta-1"), img("C", 2), img("D", 1, "alpha-2")},
			want:   []string{"A", "B", "C"},
		},
		{
			// The guide pushes D and E both "1 day ago" and keeps E as the
			// newest; here E is a minute younger to say so.
			name: "all images, example B: every rule type in one policy",
			policy: policy(
				rule(1, `"tagStatus": "tagged", "tagPrefixList": ["alpha"], "countType": "imageCountMoreThan", "countNumber": 1`),
				rule(2, `"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 1`),
				rule(3, `"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 1`)),
			images: []Image{img("A", 4, "alpha-1", "beta-1"), img("B", 3), img("C", 2, "alpha-2"), img("D", 1, "git-hash"), img("E", 1-1.0/24/60)},
			want:   []string{"A", "B", "D"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse([]byte(tc.policy))
			if err != nil {
				t.Fatal(err)
			}
			ds := p.Evaluate(tc.images, now)
			if got := expired(t, tc.images, ds); !slices.Equal(got, tc.want) {
				t.Errorf("expired %v, want %v", got, tc.want)
			}
			if len(ds) != len(tc.images) {
				t.Errorf("%d decisions for %d images", len(ds), len(tc.images))
			}
		})
	}
}

func TestEvaluateNamesTheRule(t *testing.T) {
	p, err := Parse([]byte(policy(
		rule(3, `"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 30`),
		rule(1, `"tagStatus": "tagged", "tagPrefixList": ["v"], "countType": "imageCountMoreThan", "countNumber": 2`),
		rule(2, `"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 7`))))
	if err != nil {
		t.Fatal(err)
	}
	if p.Rules[0].RulePriority != 1 || p.Rules[2].RulePriority != 3 {
		t.Fatalf("rules not sorted by priority: %+v", p.Rules)
	}
	images := []Image{img("A", 5, "v1"), img("B", 4, "v2"), img("C", 3, "v3", "latest"), img("D", 8), img("E", 6), img("F", 9, "dev")}
	ds := p.Evaluate(images, now)
	want := map[string]struct {
		expire bool
		prio   int
	}{"A": {true, 1}, "B": {false, 1}, "C": {false, 1}, "D": {true, 2}, "E": {false, 2}, "F": {false, 3}}
	for _, d := range ds {
		var name string
		for n := range want {
			if digest.FromString(n) == d.Digest {
				name = n
			}
		}
		w := want[name]
		if d.Expire != w.expire || d.Rule == nil || d.Rule.RulePriority != w.prio {
			t.Errorf("%s: expire=%v rule=%v, want expire=%v by rule %d", name, d.Expire, d.Rule, w.expire, w.prio)
		}
	}
	// Youngest first.
	if ds[0].Digest != digest.FromString("C") || ds[len(ds)-1].Digest != digest.FromString("F") {
		t.Errorf("decisions not youngest first")
	}
	if s := ds[0].Rule.String(); s != "rule 1 (Rule 1)" {
		t.Errorf("rule string %q", s)
	}
}

func TestEvaluateUnmatchedImagesAreKept(t *testing.T) {
	p, err := Parse([]byte(policy(rule(1, `"tagStatus": "tagged", "tagPatternList": ["release-*-final"], "countType": "imageCountMoreThan", "countNumber": 1`))))
	if err != nil {
		t.Fatal(err)
	}
	images := []Image{img("A", 9, "release-1-final"), img("B", 8, "release-2-final"), img("C", 7, "release-3-rc"), img("D", 100)}
	ds := p.Evaluate(images, now)
	if got := expired(t, images, ds); !slices.Equal(got, []string{"A"}) {
		t.Errorf("expired %v, want [A]", got)
	}
	for _, d := range ds {
		if (d.Digest == digest.FromString("C") || d.Digest == digest.FromString("D")) && d.Rule != nil {
			t.Errorf("%s matched %v", d.Digest, d.Rule)
		}
	}
}

func TestEvaluateKeepsChildrenOfKeptIndexes(t *testing.T) {
	p, err := Parse([]byte(policy(rule(1, `"tagStatus": "untagged", "countType": "imageCountMoreThan", "countNumber": 1`))))
	if err != nil {
		t.Fatal(err)
	}
	idx := img("idx", 1, "v1")
	amd, arm := img("amd64", 1), img("arm64", 1)
	idx.Children = []digest.Digest{amd.Digest, arm.Digest}
	images := []Image{idx, amd, arm, img("A", 5), img("B", 6)}
	ds := p.Evaluate(images, now)
	if got := expired(t, images, ds); !slices.Equal(got, []string{"A", "B"}) {
		t.Errorf("expired %v, want [A B] (the index's children stay)", got)
	}
	var kept int
	for _, d := range ds {
		if d.Index == idx.Digest {
			kept++
		}
	}
	if kept != 1 {
		t.Errorf("%d children kept for their index, want 1 (the other is the one untagged image rule 1 keeps)", kept)
	}
}

func TestEvaluateUntaggedAge(t *testing.T) {
	p, err := Parse([]byte(policy(rule(1, `"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 7`))))
	if err != nil {
		t.Fatal(err)
	}
	images := []Image{img("A", 0)}
	if ds := p.Evaluate(images, now); ds[0].Expire {
		t.Fatal("a new image expired")
	}
	if ds := p.Evaluate(images, now.Add(7*24*time.Hour)); ds[0].Expire {
		t.Fatal("an image exactly 7 days old expired: only older ones are")
	}
	if ds := p.Evaluate(images, now.Add(8*24*time.Hour)); !ds[0].Expire {
		t.Fatal("an 8 days old image was kept")
	}
}

func TestMatchPattern(t *testing.T) {
	for _, tc := range []struct {
		pattern, tag string
		want         bool
	}{
		{"prod*", "prod", true},
		{"prod*", "prod1", true},
		{"prod*", "preprod", false},
		{"*prod", "preprod", true},
		{"*test*1*2*3", "xtest-1-2-3", true},
		{"*test*1*2*3", "xtest-1-2-3-4", false},
		{"test*1*2*3*", "test123", true},
		{"v*.*", "v1.2", true},
		{"v*.*", "v12", false},
		{"a*a", "a", false},
		{"a*a", "aa", true},
		{"exact", "exact", true},
		{"exact", "exact1", false},
		{"*", "anything", true},
	} {
		if got := matchPattern(tc.pattern, tc.tag); got != tc.want {
			t.Errorf("matchPattern(%q, %q) = %v, want %v", tc.pattern, tc.tag, got, tc.want)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	count := `"countType": "imageCountMoreThan", "countNumber": 1`
	for _, tc := range []struct {
		name, policy, want string
	}{
		{"no rules", `{"rules": []}`, "no rules"},
		{"not json", `{"rules": [`, "invalid lifecycle policy"},
		{"trailing data", policy(rule(1, `"tagStatus": "any", `+count)) + `{}`, "data after"},
		{"unknown field", policy(rule(1, `"tagStatus": "any", "tagPrefix": ["v"], `+count)), "unknown field"},
		{"priority zero", policy(rule(0, `"tagStatus": "any", `+count)), "positive integer"},
		{"duplicate priority", policy(rule(1, `"tagStatus": "tagged", "tagPrefixList": ["a"], `+count), rule(1, `"tagStatus": "tagged", "tagPrefixList": ["b"], `+count)), "used twice"},
		{"any not last", policy(rule(2, `"tagStatus": "any", `+count), rule(3, `"tagStatus": "untagged", `+count)), "highest rulePriority"},
		{"two untagged rules", policy(rule(1, `"tagStatus": "untagged", `+count), rule(2, `"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 3`)), "only one may"},
		{"same prefixes twice", policy(rule(1, `"tagStatus": "tagged", "tagPrefixList": ["a", "b"], `+count), rule(2, `"tagStatus": "tagged", "tagPrefixList": ["b", "a"], "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 3`)), "unique set of tag prefixes"},
		{"tagged without list", policy(rule(1, `"tagStatus": "tagged", `+count)), "needs a tagPrefixList or a tagPatternList"},
		{"both lists", policy(rule(1, `"tagStatus": "tagged", "tagPrefixList": ["a"], "tagPatternList": ["a*"], `+count)), "not both"},
		{"untagged with list", policy(rule(1, `"tagStatus": "untagged", "tagPrefixList": ["a"], `+count)), "only for tagStatus tagged"},
		{"five wildcards", policy(rule(1, `"tagStatus": "tagged", "tagPatternList": ["test*1*2*3*4*5"], `+count)), "5 wildcards"},
		{"bad tag status", policy(rule(1, `"tagStatus": "TAGGED", `+count)), "want tagged, untagged or any"},
		{"count unit with count", policy(rule(1, `"tagStatus": "any", "countUnit": "days", `+count)), "countUnit is only for"},
		{"since pushed without unit", policy(rule(1, `"tagStatus": "any", "countType": "sinceImagePushed", "countNumber": 3`)), `needs countUnit "days"`},
		{"hours", policy(rule(1, `"tagStatus": "any", "countType": "sinceImagePushed", "countUnit": "hours", "countNumber": 3`)), `needs countUnit "days"`},
		{"count zero", policy(rule(1, `"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 0`)), "countNumber must be a positive"},
		{"count fraction", policy(rule(1, `"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 1.5`)), "invalid lifecycle policy"},
		{"pull times", policy(rule(1, `"tagStatus": "any", "countType": "sinceImagePulled", "countUnit": "days", "countNumber": 3`)), "not supported"},
		{"archive", policy(rule(1, `"tagStatus": "any", "storageClass": "archive", `+count)), "not supported"},
		{"too long", `{"rules": [` + strings.Repeat(" ", MaxPolicySize) + `]}`, "more than ECR's"},
		{"no countType", policy(rule(1, `"tagStatus": "any", "countNumber": 3`)), "countType is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.policy))
			if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse: %v, want ErrInvalidPolicy saying %q", err, tc.want)
			}
		})
	}
	// Transition is refused too.
	_, err := Parse([]byte(`{"rules": [{"rulePriority": 1, "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 1}, "action": {"type": "transition", "targetStorageClass": "archive"}}]}`))
	if !errors.Is(err, ErrInvalidPolicy) {
		t.Fatalf("transition: %v", err)
	}
}
