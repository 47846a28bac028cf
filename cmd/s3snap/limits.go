package main

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	agentconfig "github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/migrator"
)

// limitFlags are the rate limits of a big move, for any command that
// copies blobs (migrate; push can register them too).
type limitFlags struct {
	bandwidth string
	requests  float64
}

const limitsHelp = `Limits for big moves: --max-bandwidth caps the bytes per second read
from the source, across every blob copied at once (they share it evenly);
--max-requests caps the requests per second sent to each registry host
(source and destination, token and redirect hosts each on their own; retries
count). S3 requests are not limited by it: S3 takes thousands per second per
prefix, and --jobs already bounds them.`

// register adds --max-bandwidth and --max-requests to fs.
func (l *limitFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&l.bandwidth, "max-bandwidth", "", "most bytes per second read from the source, shared by all copies, e.g. 50MiB or 100MB (KiB, MiB, GiB, KB, MB, GB; an optional /s)")
	fs.Float64Var(&l.requests, "max-requests", 0, "most requests per second to each registry host (0: no limit)")
}

// parse returns the limits asked for (nil where none was).
func (l *limitFlags) parse() (*migrator.Bandwidth, *migrator.RequestRate, error) {
	var bw *migrator.Bandwidth
	if l.bandwidth != "" {
		n, err := parseRate(l.bandwidth)
		if err != nil {
			return nil, nil, usagef("--max-bandwidth: %v", err)
		}
		bw = migrator.NewBandwidth(n)
	}
	var rr *migrator.RequestRate
	if l.requests != 0 {
		var err error
		if rr, err = migrator.NewRequestRate(l.requests); err != nil {
			return nil, nil, usagef("--max-requests: %v", err)
		}
	}
	return bw, rr, nil
}

// parseRate reads a byte rate: a size as agent config files write it
// (50MiB, 100MB, 1048576), with an optional "/s".
func parseRate(s string) (int64, error) {
	var n agentconfig.Size
	if err := n.UnmarshalText([]byte(strings.TrimSuffix(strings.TrimSpace(s), "/s"))); err != nil {
		return 0, err
	}
	if n < 1024 {
		return 0, fmt.Errorf("%q: want at least 1KiB per second", s)
	}
	return int64(n), nil
}
