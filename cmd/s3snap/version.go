package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set at build time:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)" ./cmd/s3snap
var (
	version = ""
	commit  = ""
)

// buildInfo is what `s3snap version` reports.
type buildInfo struct {
	Version string `json:"version"`
	Go      string `json:"go"`
	Commit  string `json:"commit,omitempty"`
}

// readBuildInfo combines the -ldflags values with what the Go toolchain
// recorded in the binary (module version, VCS revision), the former winning.
func readBuildInfo() buildInfo {
	bi := buildInfo{Version: version, Go: runtime.Version(), Commit: commit}
	info, ok := debug.ReadBuildInfo()
	return fillBuildInfo(bi, info, ok)
}

func fillBuildInfo(bi buildInfo, info *debug.BuildInfo, ok bool) buildInfo {
	if ok {
		if bi.Version == "" {
			bi.Version = info.Main.Version
		}
		if bi.Commit == "" {
			for _, s := range info.Settings {
				if s.Key == "vcs.revision" {
					bi.Commit = s.Value
				}
			}
		}
	}
	if bi.Version == "" {
		bi.Version = "(devel)"
	}
	return bi
}

func versionString() string {
	bi := readBuildInfo()
	if bi.Commit != "" {
		return fmt.Sprintf("%s (commit %s, %s)", bi.Version, bi.Commit, bi.Go)
	}
	return fmt.Sprintf("%s (%s)", bi.Version, bi.Go)
}

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of s3snap",
		Long: `Print the version of s3snap, the Go version it was built with and, when
known, the commit. With -o json: {"version": ..., "go": ..., "commit": ...}.`,
		Example: `  s3snap version
  s3snap version -o json`,
		Args: exactArgs(0),
		RunE: func(*cobra.Command, []string) error {
			bi := readBuildInfo()
			if g.json() {
				return writeJSON(g.stdout, bi)
			}
			_, err := fmt.Fprintf(g.stdout, "s3snap %s\n", versionString())
			return err
		},
	}
}
