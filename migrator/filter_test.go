package migrator

import (
	"errors"
	"regexp"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestShard(t *testing.T) {
	for _, bad := range []string{"", "1", "2/2", "-1/3", "0/0", "a/b", "01/3"} {
		if _, err := ParseShard(bad); err == nil {
			t.Errorf("ParseShard(%q) accepted", bad)
		}
	}
	items := make([]Item, 200)
	for i := range items {
		items[i] = Item{Repository: "r", Tag: string(rune('a'+i%26)) + time.Duration(i).String()}
	}
	count := map[int]int{}
	for _, it := range items {
		n := 0
		for i := range 4 {
			if (Shard{Index: i, Count: 4}).Has(it) {
				n++
				count[i]++
			}
		}
		if n != 1 {
			t.Fatalf("%s is in %d shards", it.Key(), n)
		}
	}
	for i := range 4 {
		if count[i] < 20 {
			t.Errorf("shard %d has %d of 200 items: badly balanced", i, count[i])
		}
	}
}

func TestFilter(t *testing.T) {
	now := time.Now()
	old := Item{Repository: "team/app", Tag: "v1", PushedAt: now.Add(-48 * time.Hour)}
	fresh := Item{Repository: "team/app", Tag: "dev", PushedAt: now}
	untagged := Item{Repository: "other", Digest: "sha256:00"}
	for _, tc := range []struct {
		name string
		f    Filter
		want []bool // old, fresh, untagged
	}{
		{"all", Filter{}, []bool{true, true, true}},
		{"repo", Filter{Repository: regexp.MustCompile(`^team/`)}, []bool{true, true, false}},
		{"tag drops untagged", Filter{Tag: regexp.MustCompile(`^v`)}, []bool{true, false, false}},
		{"pushed after", Filter{PushedAfter: now.Add(-time.Hour)}, []bool{false, true, true}},
		{"skip untagged", Filter{SkipUntagged: true}, []bool{true, true, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, it := range []Item{old, fresh, untagged} {
				if got := tc.f.Match(it); got != tc.want[i] {
					t.Errorf("Match(%s) = %v", it.Key(), got)
				}
			}
		})
	}
}

func TestPlatforms(t *testing.T) {
	ps, err := ParsePlatforms("linux/amd64,linux/arm64/v8")
	if err != nil || ps.String() != "linux/amd64,linux/arm64/v8" {
		t.Fatalf("%v %v", ps, err)
	}
	for _, tc := range []struct {
		p    *ocispec.Platform
		want bool
	}{
		{&ocispec.Platform{OS: "linux", Architecture: "amd64"}, true},
		{&ocispec.Platform{OS: "linux", Architecture: "amd64", Variant: "v3"}, true},
		{&ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, true},
		{&ocispec.Platform{OS: "linux", Architecture: "arm64"}, false},
		{&ocispec.Platform{OS: "windows", Architecture: "amd64"}, false},
		{nil, false},
	} {
		if got := ps.Match(tc.p); got != tc.want {
			t.Errorf("Match(%+v) = %v", tc.p, got)
		}
	}
	for _, bad := range []string{"", "linux", "linux/amd64/v1/x", "/amd64"} {
		if _, err := ParsePlatforms(bad); err == nil {
			t.Errorf("ParsePlatforms(%q) accepted", bad)
		}
	}
}

func TestFilterPlatformsRewritesIndex(t *testing.T) {
	src := newMemSource()
	amd := src.image(t, `{"architecture":"amd64"}`, "base", "amd")
	arm := src.image(t, `{"architecture":"arm64"}`, "base", "arm")
	amd.Platform = &ocispec.Platform{OS: "linux", Architecture: "amd64"}
	arm.Platform = &ocispec.Platform{OS: "linux", Architecture: "arm64"}
	src.root = src.index(t, amd, arm)
	ps, _ := ParsePlatforms("linux/arm64")
	f := FilterPlatforms(src, ps)
	p, err := MakePlan(t.Context(), f)
	if err != nil {
		t.Fatal(err)
	}
	if !f.Filtered() || f.Original() != src.root.Digest || p.Root.Digest == src.root.Digest || len(p.Manifests) != 2 || len(p.Blobs) != 3 {
		t.Fatalf("filtered %v, plan %+v", f.Filtered(), p)
	}
	none, _ := ParsePlatforms("linux/s390x")
	if _, err := MakePlan(t.Context(), FilterPlatforms(src, none)); !errors.Is(err, ErrNoPlatform) {
		t.Errorf("no platform left: err = %v", err)
	}
	all, _ := ParsePlatforms("linux/arm64,linux/amd64")
	if f := FilterPlatforms(src, all); func() bool { _, _ = f.Root(t.Context()); return f.Filtered() }() {
		t.Error("a filter keeping everything rewrote the index")
	}
}
