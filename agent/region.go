package agent

import (
	"cmp"
	"context"
	"os"

	"github.com/containerd/log"
	"github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/fetcher"
)

// ownRegion returns the region the node is in: [s3] region if set, else
// the AWS SDK's (AWS_REGION, AWS_DEFAULT_REGION, the profile), else the
// instance's own from IMDSv2 (unless AWS_EC2_METADATA_DISABLED=true); ""
// when nothing says.
func ownRegion(ctx context.Context, cfg config.Config) string {
	awsCfg, err := fetcher.LoadAWSConfig(ctx, cfg.S3.Region, cfg.S3.Profile, true)
	if err != nil {
		log.G(ctx).WithError(err).Debug("the node's region is unknown")
		return ""
	}
	return awsCfg.Region
}

// customEndpoint reports whether S3 is reached through one given endpoint
// (an S3-compatible server, a VPC endpoint) rather than AWS's per-region
// ones: then every store is addressed there, signed for the node's region.
func customEndpoint(cfg config.Config) bool {
	return cmp.Or(cfg.S3.Endpoint, os.Getenv("AWS_ENDPOINT_URL_S3"), os.Getenv("AWS_ENDPOINT_URL")) != ""
}
