package fetcher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/smithy-go"
)

// InstanceRegionTimeout bounds asking the instance metadata service for the
// region: off EC2 nothing answers, and no caller may wait long for it.
const InstanceRegionTimeout = 2 * time.Second

// LoadAWSConfig loads the AWS SDK's default configuration for profile (""
// the default one). The region is region if given, else the SDK's chain
// (AWS_REGION, AWS_DEFAULT_REGION, the profile), else, when askInstance is
// set, the instance's own from IMDSv2 (the SDK's WithEC2IMDSRegion; not
// asked when AWS_EC2_METADATA_DISABLED=true). It is the one place s3snap
// learns the node's region. With no region found the config's Region is
// empty; when the instance was asked and did not say, the error is
// ErrNoRegion.
func LoadAWSConfig(ctx context.Context, region, profile string, askInstance bool, opts ...func(*config.LoadOptions) error) (aws.Config, error) {
	if profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(profile))
	}
	if region != "" {
		opts = append(opts, config.WithRegion(region))
	} else if askInstance {
		opts = append(opts, config.WithEC2IMDSRegion(func(o *config.UseEC2IMDSRegion) {
			o.Client = imds.New(imds.Options{EnableFallback: aws.FalseTernary}) // IMDSv2 only
		}))
		// Loading makes no other round trip (credentials resolve lazily),
		// so this bounds exactly the metadata question.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, InstanceRegionTimeout)
		defer cancel()
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	var opErr *smithy.OperationError
	if errors.As(err, &opErr) && opErr.ServiceID == imds.ServiceID {
		return aws.Config{}, fmt.Errorf("%w: the EC2 instance metadata service did not say: %w", ErrNoRegion, err)
	}
	if err != nil {
		return aws.Config{}, fmt.Errorf("load aws config: %w", err)
	}
	return awsCfg, nil
}
