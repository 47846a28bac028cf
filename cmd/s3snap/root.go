package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/containerd/log"
	"github.com/spf13/cobra"

	"github.com/s3snap/s3snap/fetcher"
)

// Output formats of -o/--output.
const (
	outputText = "text"
	outputJSON = "json"
)

// globals are the persistent flags every command shares, and where output
// goes.
type globals struct {
	endpoint  string
	region    string
	profile   string
	pathStyle bool
	output    string
	logLevel  string
	logFormat string

	pathStyleSet bool // --path-style given explicitly
	stdout       io.Writer
	stderr       io.Writer
}

const rootLong = `s3snap keeps container images in S3, in CNCF Distribution's exact storage
layout (<prefix>/docker/registry/v2/...), so a stock registry can serve the
same bucket and nodes can pull straight out of it.

An image location is written as a URL:

  s3://BUCKET[/PREFIX][/REPOSITORY][:TAG|@sha256:DIGEST]

PREFIX is the key prefix the layout lives under (Distribution's
rootdirectory), REPOSITORY may be nested (team/app/api). Where PREFIX ends and
REPOSITORY begins is found by looking for <PREFIX>/docker/registry/v2/ in the
bucket; give --prefix to state it instead.

S3 access uses the AWS SDK's default chain: AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --profile, IRSA, Pod Identity, the EC2
instance role. For an S3-compatible server (MinIO, versitygw, ...) give
--endpoint or set AWS_ENDPOINT_URL.

Exit codes:
  0  success
  1  failure (S3 error, not found, digest mismatch, ...)
  2  usage error (unknown command or flag, wrong arguments, malformed URL)`

const rootExample = `  # List the repositories in a bucket, then the tags of one
  s3snap ls s3://my-images
  s3snap ls s3://my-images/team/app

  # Show what a tag points at (the manifest as stored, byte for byte, with --raw)
  s3snap inspect s3://my-images/team/app:v1
  s3snap inspect --raw s3://my-images/team/app:v1

  # Push an OCI image layout into the bucket
  crane pull --format oci registry.example.com/team/app:v1 ./app
  s3snap push ./app s3://my-images/team/app:v1

  # Against a local S3-compatible server
  s3snap --endpoint http://127.0.0.1:9000 ls s3://my-images`

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:           "s3snap",
		Short:         "Keep container images in S3, in CNCF Distribution's layout",
		Long:          rootLong,
		Example:       rootExample,
		Version:       versionString(),
		SilenceErrors: true,
		SilenceUsage:  true,
		// SuggestionsFor, unlike cobra's own lookup, does not default it.
		SuggestionsMinimumDistance: 2,
		// Args and RunE make an unknown command a usage error (exit 2)
		// rather than cobra's untyped one.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf(" (did you mean %q?)", s[0])
			}
			return usagef("%s", msg)
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			g.pathStyleSet = cmd.Flags().Changed("path-style")
			return g.setup()
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return asUsage(err) })
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")

	f := root.PersistentFlags()
	f.StringVar(&g.endpoint, "endpoint", "", "S3 endpoint URL, e.g. http://127.0.0.1:9000 (default: AWS S3, or $AWS_ENDPOINT_URL)")
	f.StringVar(&g.region, "region", "", "AWS region (default: from the environment, profile or instance; us-east-1 with --endpoint)")
	f.StringVar(&g.profile, "profile", "", "shared config profile to use (default: $AWS_PROFILE or \"default\")")
	f.BoolVar(&g.pathStyle, "path-style", false, "address buckets in the URL path, as S3-compatible servers need (default: true when an endpoint is given)")
	f.StringVarP(&g.output, "output", "o", outputText, "output format: text or json")
	f.StringVar(&g.logLevel, "log-level", "warn", "log level on stderr: trace, debug, info, warn, error")
	f.StringVar(&g.logFormat, "log-format", "text", "log format on stderr: text or json, both with nanosecond timestamps")

	root.AddCommand(newVersionCmd(g), newLsCmd(g), newInspectCmd(g), newPushCmd(g), newAgentCmd(g), newMigrateCmd(g), newVerifyCmd(g), newInstallCmd(g), newDoctorCmd(g))
	root.AddCommand(newRewriteCmd(g))
	root.AddCommand(newIndexCmd(g))
	root.AddCommand(newRmCmd(g))
	root.AddCommand(newGcCmd(g))
	root.AddCommand(newPruneCmd(g))
	return root
}

// setup validates the global flags and configures logging.
func (g *globals) setup() error {
	switch g.output {
	case outputText, outputJSON:
	default:
		return usagef("--output %q: want text or json", g.output)
	}
	if err := log.SetLevel(g.logLevel); err != nil {
		return usagef("--log-level %q: want trace, debug, info, warn or error", g.logLevel)
	}
	if g.logFormat != string(log.TextFormat) && g.logFormat != string(log.JSONFormat) {
		return usagef("--log-format %q: want text or json", g.logFormat)
	}
	if err := log.SetFormat(log.OutputFormat(g.logFormat)); err != nil {
		return usagef("--log-format: %v", err)
	}
	log.L.Logger.SetOutput(g.stderr)
	if g.endpoint != "" {
		if err := validateEndpoint(g.endpoint); err != nil {
			return asUsage(err)
		}
	}
	return nil
}

// validateEndpoint checks an --endpoint value is an http(s) URL with a host.
func validateEndpoint(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("--endpoint %q: want an http:// or https:// URL with a host: %w", s, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--endpoint %q: want an http:// or https:// URL with a host", s)
	}
	return nil
}

// usePathStyle is --path-style if given, else whether a custom endpoint is in
// use (by flag or by the SDK's AWS_ENDPOINT_URL[_S3] variables).
func (g *globals) usePathStyle(getenv func(string) string) bool {
	if g.pathStyleSet {
		return g.pathStyle
	}
	return g.endpoint != "" || getenv("AWS_ENDPOINT_URL_S3") != "" || getenv("AWS_ENDPOINT_URL") != ""
}

// client builds the S3 client from the global flags.
func (g *globals) client(ctx context.Context) (*s3.Client, error) {
	cfg := fetcher.ClientConfig{
		Region:    g.region,
		Endpoint:  g.endpoint,
		Profile:   g.profile,
		PathStyle: g.usePathStyle(os.Getenv),
	}
	log.G(ctx).WithFields(log.Fields{
		"endpoint":   cfg.Endpoint,
		"region":     cfg.Region,
		"profile":    cfg.Profile,
		"path-style": cfg.PathStyle,
	}).Debug("s3 client")
	c, err := fetcher.NewClient(ctx, cfg)
	if errors.Is(err, fetcher.ErrNoRegion) {
		return nil, fmt.Errorf("s3 client: %w (give --region or set AWS_REGION)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("s3 client: %w", err)
	}
	return c, nil
}

// json reports whether -o json was asked for.
func (g *globals) json() bool { return g.output == outputJSON }

// exactArgs is cobra.ExactArgs with a usage error that names the arguments.
func exactArgs(n int, names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if n == 0 && len(args) > 0 {
			return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
		}
		if len(args) != n {
			return usagef("%s takes %d argument(s) (%s), got %d", cmd.CommandPath(), n, strings.Join(names, " "), len(args))
		}
		return nil
	}
}
