package main

import (
	"github.com/spf13/pflag"

	agentconfig "github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/migrator"
)

// lazyIndexFlags are --lazy-index and --lazy-index-min-size, for the
// commands that copy into a bucket (migrate, push) and verify.
type lazyIndexFlags struct {
	on      bool
	minSize string
}

func (l *lazyIndexFlags) register(fs *pflag.FlagSet, check bool) {
	usage := "build the lazy-pull index (format v2, as s3snap index writes it) of every tar layer of at least --lazy-index-min-size from the stream being copied (the source is read once), before the tag"
	if check {
		usage = "check every tar layer of at least --lazy-index-min-size has a lazy-pull index, complete, that rebuilds the layer (its data is read whole); smaller layers' indexes are checked when there"
	}
	fs.BoolVar(&l.on, "lazy-index", false, usage)
	fs.StringVar(&l.minSize, "lazy-index-min-size", "10MiB", "with --lazy-index: the smallest compressed layer indexed (smaller ones unpack about as fast as they mount)")
}

// size returns the minimum layer size, or nil without --lazy-index.
func (l *lazyIndexFlags) size() (*int64, error) {
	if !l.on {
		return nil, nil
	}
	var n agentconfig.Size
	if err := n.UnmarshalText([]byte(l.minSize)); err != nil {
		return nil, usagef("--lazy-index-min-size: %v", err)
	}
	v := int64(n)
	return &v, nil
}

// runOption is the migrator option the flags ask for (nil: none).
func (l *lazyIndexFlags) runOption() (migrator.RunOption, error) {
	n, err := l.size()
	if err != nil || n == nil {
		return nil, err
	}
	return migrator.WithLazyIndex(*n), nil
}
