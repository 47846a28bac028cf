package config

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/s3snap/s3snap/store"
)

// RegionStores is a [[registry]] entry's stores table: region → store, in
// the order written (a TOML table decoded into a map would lose it).
type RegionStores []RegionStore

// RegionStore is one entry of a stores table.
type RegionStore struct {
	Region string
	Store  string
}

// UnmarshalTOML reads an inline table (stores = { "us-east-1" = "s3://…" })
// or a [registry.stores] sub-table, keeping the order of its keys. It uses
// go-toml's unstable parser, pinned with the module, since the stable API
// only decodes tables into unordered maps.
func (rs *RegionStores) UnmarshalTOML(data []byte) error {
	doc := data
	inline := bytes.HasPrefix(bytes.TrimSpace(data), []byte("{"))
	if inline {
		doc = append([]byte("stores = "), data...)
	} else if isScalar(data) {
		return errors.New("stores: want a table of region = \"s3://bucket/prefix\"; for one store write store = \"s3://...\"")
	}
	var p unstable.Parser
	p.Reset(doc)
	out := RegionStores{} // non-nil: an empty table was written
	add := func(kv *unstable.Node) error {
		k := kv.Key()
		var parts []string
		for k.Next() {
			parts = append(parts, string(k.Node().Data))
		}
		if len(parts) != 1 {
			return fmt.Errorf("stores: key %q: want a region name such as \"us-east-1\" (quote it)", strings.Join(parts, "."))
		}
		v := kv.Value()
		if v.Kind != unstable.String {
			return fmt.Errorf("stores: region %q: want a store as a string, \"s3://bucket/prefix\"", parts[0])
		}
		out = append(out, RegionStore{Region: parts[0], Store: string(v.Data)})
		return nil
	}
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind != unstable.KeyValue {
			return errors.New("stores: want region = \"s3://bucket/prefix\" entries")
		}
		if !inline {
			if err := add(e); err != nil {
				return err
			}
			continue
		}
		if e.Value().Kind != unstable.InlineTable {
			return errors.New("stores: want a table of region = \"s3://bucket/prefix\"")
		}
		it := e.Value().Children()
		for it.Next() {
			if err := add(it.Node()); err != nil {
				return err
			}
		}
	}
	if err := p.Error(); err != nil {
		return fmt.Errorf("stores: %w", err)
	}
	*rs = out
	return nil
}

// isScalar reports whether data is one TOML value (stores = "s3://…", a
// mistake) rather than the key/value lines of a sub-table.
func isScalar(data []byte) bool {
	var p unstable.Parser
	p.Reset(append([]byte("v = "), data...))
	return p.NextExpression() && !p.NextExpression() && p.Error() == nil
}

// Location is one store a registry's images are looked for in, and the
// region it is in ("" for a plain store, which is in the node's region).
type Location struct {
	Region string
	URL    store.URL
}

// regionPattern is an AWS region name: us-east-1, eu-central-2,
// us-gov-west-1, cn-north-1, ap-southeast-4.
var regionPattern = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)

// bucketPattern is the characters of an S3 bucket name (as buckets made
// in regions other than us-east-1 have always had to be). Only regional
// stores are held to it: a plain store is taken as written, as before.
var bucketPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`)

// placeholder is a {name} in a store pattern.
var placeholder = regexp.MustCompile(`\{[^{}]*\}`)

func validateRegion(r string) error {
	if !regionPattern.MatchString(r) {
		return fmt.Errorf("region %q: not an AWS region name such as us-east-1 or eu-west-1", r)
	}
	return nil
}

// Locations returns the entry's stores in config order: the one Store, the
// Stores table's, or Store's pattern expanded for each of Regions. The
// error names every problem with the entry.
func (r RegistryConfig) Locations() ([]Location, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	var locs []Location
	seen := map[string]bool{}
	addRegion := func(region, raw string) {
		if err := validateRegion(region); err != nil {
			bad("%w", err)
			return
		}
		if seen[region] {
			bad("region %q: listed twice", region)
			return
		}
		seen[region] = true
		if strings.TrimSpace(raw) == "" {
			bad("region %q has no store: want \"s3://bucket/prefix\"", region)
			return
		}
		u, err := parseStore(raw)
		if err == nil && !bucketPattern.MatchString(u.Bucket) {
			err = fmt.Errorf("%q: bucket %q: want lowercase letters, digits, dots and hyphens", raw, u.Bucket)
		}
		if err != nil {
			bad("region %s store: %w", region, err)
			return
		}
		locs = append(locs, Location{Region: region, URL: u})
	}
	names := placeholder.FindAllString(r.Store, -1)
	for _, n := range names {
		if n != "{region}" {
			bad("store %q: unknown placeholder %s; the only one is {region}", r.Store, n)
		}
	}
	isPattern := len(names) > 0
	switch {
	case r.Store != "" && len(r.Stores) > 0:
		bad("both store and stores: give one store, a store pattern with regions, or a stores table")
	case len(r.Stores) > 0:
		if len(r.Regions) > 0 {
			bad("regions is for a store pattern; with a stores table its keys are the regions")
		}
		for _, rs := range r.Stores {
			if placeholder.MatchString(rs.Store) {
				bad("region %s store %q: placeholders belong in a store pattern, not in a stores table", rs.Region, rs.Store)
				continue
			}
			addRegion(rs.Region, rs.Store)
		}
	case r.Stores != nil:
		bad("stores is an empty table: map at least one region to a store")
	case r.Store == "":
		bad("no store: give store = \"s3://bucket/prefix\", a pattern store = \"s3://images-{region}/prefix\" with regions = [...], or stores = { \"us-east-1\" = \"s3://...\" }")
	case isPattern:
		if len(errs) > 0 {
			break // an unknown placeholder: expanding it would only repeat that
		}
		if strings.ContainsAny(placeholder.ReplaceAllString(r.Store, ""), "{}") {
			bad("store %q: unbalanced { or }", r.Store)
			break
		}
		if len(r.Regions) == 0 {
			bad("store pattern %q has no regions: list the regions it stands for, regions = [\"us-east-1\", ...]", r.Store)
		}
		for _, region := range r.Regions {
			addRegion(region, strings.ReplaceAll(r.Store, "{region}", region))
		}
	default:
		if len(r.Regions) > 0 {
			bad("regions given but store %q has no {region} placeholder: write it as s3://bucket-{region}/prefix, or use a stores table", r.Store)
		}
		if strings.ContainsAny(r.Store, "{}") {
			bad("store %q: unbalanced { or }", r.Store)
			break
		}
		u, err := parseStore(r.Store)
		if err != nil {
			bad("store: %w", err)
			break
		}
		locs = append(locs, Location{URL: u})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return locs, nil
}

// StoresFor returns the entry's stores in the order a node in region looks
// in them: region's own store first, then the others in config order. A
// region none of them is in (or "", unknown) keeps the config order.
func (r RegistryConfig) StoresFor(region string) ([]Location, error) {
	locs, err := r.Locations()
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(locs, func(l Location) bool { return l.Region != "" && l.Region == region })
	if i > 0 {
		own := locs[i]
		locs = slices.Insert(slices.Delete(locs, i, i+1), 0, own)
	}
	return locs, nil
}

// Regional reports whether any registry has stores in several regions.
func (c *Config) Regional() bool {
	for _, r := range c.Registry {
		if len(r.Stores) > 0 || len(r.Regions) > 0 || placeholder.MatchString(r.Store) {
			return true
		}
	}
	return false
}
