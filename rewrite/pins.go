package rewrite

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"strings"

	"github.com/opencontainers/go-digest"
)

// ErrNotVerifyReport is returned for a --pin-digests file that is not the
// JSON report of s3snap verify.
var ErrNotVerifyReport = errors.New("not an s3snap verify report (want verify's JSON report)")

// Pins are the digests a verify report proved equal at both ends, by source
// repository and tag. Only entries with status ok count.
type Pins struct {
	// Source is the verified source as the report names it.
	Source string
	// host is the source registry, "" for a bucket.
	host string
	tags map[string]digest.Digest // repository:tag -> digest at the destination
}

// LoadPins reads the JSON report of s3snap verify.
func LoadPins(path string) (*Pins, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read verify report: %w", err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		return nil, fmt.Errorf("%s: %w: %w", path, ErrNotVerifyReport, err)
	}
	p, err := NewPins(&rep)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// Report is the part of s3snap verify's JSON report (migrator.Report) that
// pinning reads. It is decoded on its own so that this package depends on
// the report's published shape only.
type Report struct {
	Command string        `json:"command"`
	Source  string        `json:"source"`
	Entries []ReportEntry `json:"entries"`
}

// ReportEntry is one verified tag or image.
type ReportEntry struct {
	Repository        string        `json:"repository"`
	Tag               string        `json:"tag"`
	SourceDigest      digest.Digest `json:"sourceDigest"`
	DestinationDigest digest.Digest `json:"destinationDigest"`
	Status            string        `json:"status"`
}

// NewPins indexes the verified (status ok) tags of a verify report.
func NewPins(rep *Report) (*Pins, error) {
	if rep.Command != "verify" {
		return nil, fmt.Errorf("command is %q: %w", rep.Command, ErrNotVerifyReport)
	}
	scheme, rest, ok := strings.Cut(rep.Source, "://")
	if !ok {
		return nil, fmt.Errorf("source %q: %w", rep.Source, ErrNotVerifyReport)
	}
	p := &Pins{Source: rep.Source, tags: map[string]digest.Digest{}}
	switch scheme {
	case "s3": // repositories of a bucket: no registry to check
	case "docker", "ecr":
		host, _, _ := strings.Cut(rest, "/")
		l, err := ParseLocation(host)
		if err != nil {
			return nil, fmt.Errorf("source %q: %w: %w", rep.Source, ErrNotVerifyReport, err)
		}
		p.host = l.Host
	default:
		return nil, fmt.Errorf("source %q: unknown scheme: %w", rep.Source, ErrNotVerifyReport)
	}
	for _, e := range rep.Entries {
		if e.Status != "ok" || e.Tag == "" {
			continue
		}
		d := e.DestinationDigest
		if d == "" {
			d = e.SourceDigest
		}
		if d.Validate() != nil {
			continue
		}
		p.tags[e.Repository+":"+e.Tag] = d
	}
	return p, nil
}

// Len is the number of verified tags.
func (p *Pins) Len() int { return len(p.tags) }

// checkSource fails if the report verified another registry than from.
func (p *Pins) checkSource(from Location) error {
	if p.host != "" && !strings.EqualFold(p.host, from.Host) {
		return fmt.Errorf("the verify report is for %s, not for the source %s", p.Source, from)
	}
	return nil
}

// lookup returns the verified digest of r (a reference at the source; no
// tag means latest).
func (p *Pins) lookup(r Ref) (digest.Digest, bool) {
	tag := r.Tag
	if tag == "" {
		tag = "latest"
	}
	d, ok := p.tags[r.Path+":"+tag]
	return d, ok
}
