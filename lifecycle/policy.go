package lifecycle

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// ECR's lifecycle policy, as documented in the Amazon ECR User Guide:
//   - properties: https://docs.aws.amazon.com/AmazonECR/latest/userguide/lifecycle_policy_parameters.html
//   - evaluation rules: https://docs.aws.amazon.com/AmazonECR/latest/userguide/LifecyclePolicies.html
//   - worked examples: https://docs.aws.amazon.com/AmazonECR/latest/userguide/lifecycle_policy_examples.html

// MaxPolicySize is the longest policy accepted, in bytes: ECR's own limit
// on a lifecycle policy's length (30,720 characters).
const MaxPolicySize = 30720

// maxWildcards is the most '*' one tagPatternList entry may hold.
const maxWildcards = 4

// ErrInvalidPolicy is returned for a policy ECR would refuse, or one using a
// feature s3snap does not have (archive storage, pull times).
var ErrInvalidPolicy = errors.New("invalid lifecycle policy")

// Tag statuses a rule selects by.
const (
	TagStatusTagged   = "tagged"
	TagStatusUntagged = "untagged"
	TagStatusAny      = "any"
)

// Count types.
const (
	// CountImageCountMoreThan keeps the countNumber most recently pushed
	// images the rule selects and expires the rest.
	CountImageCountMoreThan = "imageCountMoreThan"
	// CountSinceImagePushed expires images pushed more than countNumber
	// days ago.
	CountSinceImagePushed = "sinceImagePushed"
)

// ActionExpire is the only action s3snap carries out.
const ActionExpire = "expire"

// Policy is an ECR lifecycle policy. Parse returns its rules sorted by
// priority, lowest (applied first) first.
type Policy struct {
	Rules []Rule `json:"rules"`
}

// Rule is one rule of a Policy.
type Rule struct {
	RulePriority int       `json:"rulePriority"`
	Description  string    `json:"description,omitempty"`
	Selection    Selection `json:"selection"`
	Action       Action    `json:"action"`
}

// Selection says which images a rule is about and when it expires them.
type Selection struct {
	TagStatus      string   `json:"tagStatus"`
	TagPatternList []string `json:"tagPatternList,omitempty"`
	TagPrefixList  []string `json:"tagPrefixList,omitempty"`
	// StorageClass is ECR's archive tier selector: only "standard" (or
	// none) means anything here.
	StorageClass string `json:"storageClass,omitempty"`
	CountType    string `json:"countType"`
	CountUnit    string `json:"countUnit,omitempty"`
	CountNumber  int    `json:"countNumber"`
}

// Action is what a rule does to the images it marks.
type Action struct {
	Type               string `json:"type"`
	TargetStorageClass string `json:"targetStorageClass,omitempty"`
}

// String names the rule for output: "rule 2 (expire untagged after 7 days)".
func (r *Rule) String() string {
	if r.Description == "" {
		return fmt.Sprintf("rule %d", r.RulePriority)
	}
	return fmt.Sprintf("rule %d (%s)", r.RulePriority, r.Description)
}

// Parse reads and validates an ECR lifecycle policy document (what
// `aws ecr get-lifecycle-policy` returns as lifecyclePolicyText). Unknown
// fields are refused, as ECR refuses them, so a typo cannot quietly widen a
// rule.
func Parse(b []byte) (*Policy, error) {
	if len(b) > MaxPolicySize {
		return nil, fmt.Errorf("policy is %d bytes, more than ECR's %d: %w", len(b), MaxPolicySize, ErrInvalidPolicy)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidPolicy, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the policy document", ErrInvalidPolicy)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	slices.SortFunc(p.Rules, func(a, b Rule) int { return cmp.Compare(a.RulePriority, b.RulePriority) })
	return &p, nil
}

// Validate checks p against ECR's documented constraints.
func (p *Policy) Validate() error {
	if len(p.Rules) == 0 {
		return fmt.Errorf("%w: no rules", ErrInvalidPolicy)
	}
	seen := map[int]bool{}
	lists := map[string]int{}
	untagged, anyPrio, maxPrio := 0, 0, 0
	for i := range p.Rules {
		r := &p.Rules[i]
		if err := r.validate(); err != nil {
			return fmt.Errorf("rule %d: %w", r.RulePriority, err)
		}
		if seen[r.RulePriority] {
			return fmt.Errorf("%w: rulePriority %d is used twice (each rule needs its own)", ErrInvalidPolicy, r.RulePriority)
		}
		seen[r.RulePriority] = true
		maxPrio = max(maxPrio, r.RulePriority)
		switch r.Selection.TagStatus {
		case TagStatusUntagged:
			untagged++
		case TagStatusAny:
			if anyPrio != 0 {
				return fmt.Errorf("%w: rules %d and %d both select any image; only the last rule may", ErrInvalidPolicy, anyPrio, r.RulePriority)
			}
			anyPrio = r.RulePriority
		case TagStatusTagged:
			key := listKey(r.Selection)
			if other, dup := lists[key]; dup {
				return fmt.Errorf("%w: rules %d and %d select the same tags (the rules must have a unique set of tag prefixes)", ErrInvalidPolicy, other, r.RulePriority)
			}
			lists[key] = r.RulePriority
		}
	}
	if untagged > 1 {
		return fmt.Errorf("%w: %d rules select untagged images; only one may", ErrInvalidPolicy, untagged)
	}
	if anyPrio != 0 && anyPrio != maxPrio {
		return fmt.Errorf("%w: rule %d selects any image but is not the last rule (it must have the highest rulePriority, here %d)", ErrInvalidPolicy, anyPrio, maxPrio)
	}
	return nil
}

// listKey identifies a tagged rule's tag list, order aside.
func listKey(s Selection) string {
	kind, list := "prefix", s.TagPrefixList
	if len(s.TagPatternList) > 0 {
		kind, list = "pattern", s.TagPatternList
	}
	l := slices.Clone(list)
	slices.Sort(l)
	return kind + "\x00" + strings.Join(slices.Compact(l), "\x00")
}

func (r *Rule) validate() error {
	s := &r.Selection
	if r.RulePriority < 1 {
		return fmt.Errorf("%w: rulePriority must be a positive integer", ErrInvalidPolicy)
	}
	switch s.TagStatus {
	case TagStatusTagged:
		switch {
		case len(s.TagPrefixList) > 0 && len(s.TagPatternList) > 0:
			return fmt.Errorf("%w: a rule takes tagPrefixList or tagPatternList, not both", ErrInvalidPolicy)
		case len(s.TagPrefixList) == 0 && len(s.TagPatternList) == 0:
			return fmt.Errorf("%w: tagStatus tagged needs a tagPrefixList or a tagPatternList", ErrInvalidPolicy)
		}
		for _, t := range s.TagPrefixList {
			if t == "" {
				return fmt.Errorf("%w: empty entry in tagPrefixList", ErrInvalidPolicy)
			}
		}
		for _, t := range s.TagPatternList {
			if t == "" {
				return fmt.Errorf("%w: empty entry in tagPatternList", ErrInvalidPolicy)
			}
			if n := strings.Count(t, "*"); n > maxWildcards {
				return fmt.Errorf("%w: tagPatternList entry %q has %d wildcards, at most %d are allowed", ErrInvalidPolicy, t, n, maxWildcards)
			}
		}
	case TagStatusUntagged, TagStatusAny:
		if s.TagPrefixList != nil || s.TagPatternList != nil {
			return fmt.Errorf("%w: tagPrefixList and tagPatternList are only for tagStatus tagged, not %s", ErrInvalidPolicy, s.TagStatus)
		}
	case "":
		return fmt.Errorf("%w: selection.tagStatus is required (tagged, untagged or any)", ErrInvalidPolicy)
	default:
		return fmt.Errorf("%w: tagStatus %q: want tagged, untagged or any", ErrInvalidPolicy, s.TagStatus)
	}
	switch s.CountType {
	case CountImageCountMoreThan:
		if s.CountUnit != "" {
			return fmt.Errorf("%w: countUnit is only for countType sinceImagePushed", ErrInvalidPolicy)
		}
	case CountSinceImagePushed:
		if s.CountUnit != "days" {
			return fmt.Errorf("%w: countType sinceImagePushed needs countUnit \"days\", got %q", ErrInvalidPolicy, s.CountUnit)
		}
	case "sinceImagePulled", "sinceImageTransitioned":
		return fmt.Errorf("%w: countType %s is not supported: a bucket keeps no pull or archive times", ErrInvalidPolicy, s.CountType)
	case "":
		return fmt.Errorf("%w: selection.countType is required (imageCountMoreThan or sinceImagePushed)", ErrInvalidPolicy)
	default:
		return fmt.Errorf("%w: countType %q: want imageCountMoreThan or sinceImagePushed", ErrInvalidPolicy, s.CountType)
	}
	if s.CountNumber < 1 {
		return fmt.Errorf("%w: countNumber must be a positive integer, got %d", ErrInvalidPolicy, s.CountNumber)
	}
	if s.StorageClass != "" && s.StorageClass != "standard" {
		return fmt.Errorf("%w: storageClass %q is not supported (a bucket has no archive tier)", ErrInvalidPolicy, s.StorageClass)
	}
	switch r.Action.Type {
	case ActionExpire:
		if r.Action.TargetStorageClass != "" {
			return fmt.Errorf("%w: targetStorageClass is only for action transition", ErrInvalidPolicy)
		}
	case "transition":
		return fmt.Errorf("%w: action transition is not supported (a bucket has no archive tier)", ErrInvalidPolicy)
	case "":
		return fmt.Errorf("%w: action.type is required (expire)", ErrInvalidPolicy)
	default:
		return fmt.Errorf("%w: action type %q: want expire", ErrInvalidPolicy, r.Action.Type)
	}
	return nil
}

// Image is one manifest of a repository as a policy sees it.
type Image struct {
	Digest digest.Digest `json:"digest"`
	// Tags point at the image; none: it is untagged.
	Tags []string `json:"tags"`
	// PushedAt orders images and ages them.
	PushedAt time.Time `json:"pushedAt"`
	// Children are the manifests an index references (nil for an image
	// manifest): they are kept while the index is.
	Children []digest.Digest `json:"-"`
}

// Decision is what a policy does with one image.
type Decision struct {
	Image
	// Expire: the image is to be removed.
	Expire bool
	// Rule is the rule that governs the image: the one of highest priority
	// whose selection matches it. It expires the image when Expire is set;
	// nil when no rule selects the image (it is kept).
	Rule *Rule
	// Index, when set, is a kept index the image is a child of: Rule
	// would expire it, but an index's children stay while it does, as ECR
	// will not expire an image a manifest list references.
	Index digest.Digest
}

// Matches reports whether the rule's selection takes img, by tags alone
// (ECR's "tagging requirements"). A tagged rule matches when every entry of
// its list matches at least one of the image's tags.
func (r *Rule) Matches(img *Image) bool {
	s := &r.Selection
	switch s.TagStatus {
	case TagStatusAny:
		return true
	case TagStatusUntagged:
		return len(img.Tags) == 0
	}
	if len(img.Tags) == 0 {
		return false
	}
	for _, p := range s.TagPrefixList {
		if !slices.ContainsFunc(img.Tags, func(t string) bool { return strings.HasPrefix(t, p) }) {
			return false
		}
	}
	for _, p := range s.TagPatternList {
		if !slices.ContainsFunc(img.Tags, func(t string) bool { return matchPattern(p, t) }) {
			return false
		}
	}
	return true
}

// matchPattern matches tag against an ECR tag pattern, where '*' stands for
// any run of characters (none included) and every other byte for itself.
func matchPattern(pattern, tag string) bool {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return pattern == tag
	}
	if !strings.HasPrefix(tag, parts[0]) {
		return false
	}
	tag = tag[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, p := range parts[1 : len(parts)-1] {
		i := strings.Index(tag, p)
		if i < 0 {
			return false
		}
		tag = tag[i+len(p):]
	}
	return len(tag) >= len(last) && strings.HasSuffix(tag, last)
}

// younger orders images youngest first: by push time, then by digest so
// that equal times give the same answer every run.
func younger(a, b *Image) int {
	if c := b.PushedAt.Compare(a.PushedAt); c != 0 {
		return c
	}
	return strings.Compare(string(a.Digest), string(b.Digest))
}

// Evaluate applies the policy to a repository's images as ECR's evaluator
// does, at time now, and returns one decision per image, youngest first.
//
//   - Every rule is evaluated on its own against all the images its
//     selection matches, regardless of priority: imageCountMoreThan sorts
//     them youngest first and marks all past the first countNumber;
//     sinceImagePushed marks those pushed more than countNumber days
//     before now. Images other rules hold still count ("rules can still
//     identify them as if they haven't been expired").
//   - Then the rules are applied by priority: an image is governed by the
//     highest-priority rule whose tagging requirements it matches, and is
//     expired only if that rule marked it. A lower-priority rule never
//     expires it, so an image is expired by exactly one rule or none.
//   - A manifest an index references is not expired while the index is
//     kept (ECR will not expire an image a manifest list references).
func (p *Policy) Evaluate(images []Image, now time.Time) []Decision {
	out := make([]Decision, len(images))
	for i := range images {
		out[i] = Decision{Image: images[i]}
	}
	slices.SortFunc(out, func(a, b Decision) int { return younger(&a.Image, &b.Image) })
	governed := make([]bool, len(out))
	for ri := range p.Rules {
		r := &p.Rules[ri]
		s := &r.Selection
		kept := 0
		for i := range out {
			if !r.Matches(&out[i].Image) {
				continue
			}
			var mark bool
			switch s.CountType {
			case CountImageCountMoreThan:
				kept++
				mark = kept > s.CountNumber
			case CountSinceImagePushed:
				mark = now.Sub(out[i].PushedAt) > time.Duration(s.CountNumber)*24*time.Hour
			}
			if governed[i] {
				continue
			}
			governed[i] = true
			out[i].Rule = r
			out[i].Expire = mark
		}
	}
	protectChildren(out)
	return out
}

// protectChildren keeps the children of every kept index (and theirs, for
// nested indexes).
func protectChildren(ds []Decision) {
	at := make(map[digest.Digest]int, len(ds))
	for i := range ds {
		at[ds[i].Digest] = i
	}
	// Each pass keeps at least one more image, or ends.
	for changed := true; changed; {
		changed = false
		for i := range ds {
			if ds[i].Expire {
				continue
			}
			for _, c := range ds[i].Children {
				if j, ok := at[c]; ok && ds[j].Expire {
					ds[j].Expire, ds[j].Index = false, ds[i].Digest
					changed = true
				}
			}
		}
	}
}
