package migrator

import (
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
)

// Status is the outcome for one item.
type Status string

// Outcomes of migrate (and, with --dry-run, of planning) and of verify.
const (
	StatusCopied    Status = "copied"    // copied now
	StatusUnchanged Status = "unchanged" // the destination already had it
	StatusFailed    Status = "failed"    // not copied; see Reason
	StatusPlanned   Status = "planned"   // dry run: would be copied
	StatusOK        Status = "ok"        // verify: digests match, everything present
	StatusMissing   Status = "missing"   // verify: not at the destination
	StatusMismatch  Status = "mismatch"  // verify: the destination has another digest
	StatusBroken    Status = "incomplete"
)

// Entry is one item's line in a report.
type Entry struct {
	Repository string `json:"repository"`
	// DestinationRepository is set when it differs from Repository.
	DestinationRepository string        `json:"destinationRepository,omitempty"`
	Tag                   string        `json:"tag,omitempty"`
	SourceDigest          digest.Digest `json:"sourceDigest,omitempty"`
	DestinationDigest     digest.Digest `json:"destinationDigest,omitempty"`
	MediaType             string        `json:"mediaType,omitempty"`
	Status                Status        `json:"status"`
	Reason                string        `json:"reason,omitempty"`
	// Note explains a digest change (a platform filter rewrote the index).
	Note              string `json:"note,omitempty"`
	Manifests         int    `json:"manifests,omitempty"`
	Blobs             int    `json:"blobs,omitempty"`
	BytesMoved        int64  `json:"bytesMoved"`
	BytesDeduplicated int64  `json:"bytesDeduplicated"`
	// Size is the image's config and layer bytes (planned or copied).
	Size int64 `json:"size,omitempty"`
	// LazyIndexes is how many lazy-pull indexes were built for the image's
	// layers (--lazy-index), LazyIndexBytes their objects' bytes.
	LazyIndexes    int   `json:"lazyIndexes,omitempty"`
	LazyIndexBytes int64 `json:"lazyIndexBytes,omitempty"`
}

// Key names the entry like Item.Key.
func (e *Entry) Key() string {
	if e.Tag != "" {
		return e.Repository + ":" + e.Tag
	}
	return e.Repository + "@" + e.SourceDigest.String()
}

// Failed reports whether the entry is a failure (of migrate or verify).
func (e *Entry) Failed() bool {
	switch e.Status {
	case StatusFailed, StatusMissing, StatusMismatch, StatusBroken:
		return true
	}
	return false
}

// Summary totals a report.
type Summary struct {
	Images            int   `json:"images"`
	Tags              int   `json:"tags"`
	Untagged          int   `json:"untagged"`
	Copied            int   `json:"copied,omitempty"`
	Unchanged         int   `json:"unchanged,omitempty"`
	Planned           int   `json:"planned,omitempty"`
	OK                int   `json:"ok,omitempty"`
	Failed            int   `json:"failed"`
	BytesMoved        int64 `json:"bytesMoved"`
	BytesDeduplicated int64 `json:"bytesDeduplicated"`
	// BytesPlanned is the size of what a dry run would copy.
	BytesPlanned int64 `json:"bytesPlanned,omitempty"`
	// LazyIndexes and LazyIndexBytes total the entries'.
	LazyIndexes    int   `json:"lazyIndexes,omitempty"`
	LazyIndexBytes int64 `json:"lazyIndexBytes,omitempty"`
}

// Report is the outcome of one migrate or verify run.
type Report struct {
	Command     string    `json:"command"`
	Source      string    `json:"source"`
	Destination string    `json:"destination"`
	Shard       string    `json:"shard,omitempty"`
	Platforms   string    `json:"platforms,omitempty"`
	DryRun      bool      `json:"dryRun,omitempty"`
	Started     time.Time `json:"started"`
	Finished    time.Time `json:"finished"`
	Summary     Summary   `json:"summary"`
	Entries     []Entry   `json:"entries"`
	// Inventory is a dry run's inventory and estimate.
	Inventory *Inventory `json:"inventory,omitempty"`
	// LifecyclePolicies is what an ECR to bucket run did with each
	// repository's lifecycle policy.
	LifecyclePolicies []PolicyCopy `json:"lifecyclePolicies,omitempty"`
}

// Failed reports whether any entry failed.
func (r *Report) Failed() bool { return r.Summary.Failed > 0 }

// Failures returns the failed entries.
func (r *Report) Failures() []Entry {
	var out []Entry
	for _, e := range r.Entries {
		if e.Failed() {
			out = append(out, e)
		}
	}
	return out
}

// finish sorts the entries and totals them.
func (r *Report) finish() {
	r.Finished = time.Now().UTC()
	sort.SliceStable(r.Entries, func(i, j int) bool {
		a, b := r.Entries[i], r.Entries[j]
		if (a.Tag == "") != (b.Tag == "") {
			return a.Tag != ""
		}
		return a.Key() < b.Key()
	})
	s := Summary{}
	for _, e := range r.Entries {
		s.Images++
		if e.Tag != "" {
			s.Tags++
		} else {
			s.Untagged++
		}
		switch e.Status {
		case StatusCopied:
			s.Copied++
		case StatusUnchanged:
			s.Unchanged++
		case StatusPlanned:
			s.Planned++
			s.BytesPlanned += e.Size
		case StatusOK:
			s.OK++
		}
		if e.Failed() {
			s.Failed++
		}
		s.BytesMoved += e.BytesMoved
		s.BytesDeduplicated += e.BytesDeduplicated
		s.LazyIndexes += e.LazyIndexes
		s.LazyIndexBytes += e.LazyIndexBytes
	}
	r.Summary = s
}
