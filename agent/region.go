package agent

import (
	"cmp"
	"context"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/containerd/log"
)

// imdsRegionTimeout bounds asking the instance metadata service for the
// region: off EC2 nothing answers, and the agent must not wait long.
const imdsRegionTimeout = 2 * time.Second

// ownRegion returns the region the node is in: [s3] region if set, else
// the AWS SDK's (AWS_REGION, AWS_DEFAULT_REGION, the profile), else the
// instance's own from IMDSv2 (unless AWS_EC2_METADATA_DISABLED=true); ""
// when nothing says.
func ownRegion(ctx context.Context, cfg Config) string {
	if cfg.S3.Region != "" {
		return cfg.S3.Region
	}
	var opts []func(*config.LoadOptions) error
	if cfg.S3.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.S3.Profile))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		log.G(ctx).WithError(err).Warn("load aws config to learn the node's region")
		return ""
	}
	if awsCfg.Region != "" {
		return awsCfg.Region
	}
	ctx, cancel := context.WithTimeout(ctx, imdsRegionTimeout)
	defer cancel()
	out, err := imds.NewFromConfig(awsCfg, func(o *imds.Options) {
		o.EnableFallback = aws.FalseTernary // IMDSv2 only
	}).GetRegion(ctx, &imds.GetRegionInput{})
	if err != nil {
		log.G(ctx).WithError(err).Debug("instance metadata did not give the region")
		return ""
	}
	return out.Region
}

// customEndpoint reports whether S3 is reached through one given endpoint
// (an S3-compatible server, a VPC endpoint) rather than AWS's per-region
// ones: then every store is addressed there, signed for the node's region.
func customEndpoint(cfg Config) bool {
	return cmp.Or(cfg.S3.Endpoint, os.Getenv("AWS_ENDPOINT_URL_S3"), os.Getenv("AWS_ENDPOINT_URL")) != ""
}
