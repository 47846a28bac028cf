package registry

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

// ECRConfig says how to reach one account's ECR API.
type ECRConfig struct {
	// Region is the registry's region (from its host name).
	Region string
	// Profile is a shared config profile ("": the default chain).
	Profile string
	// RoleARN, if set, is assumed (cross-account migrations).
	RoleARN string
	// Endpoint overrides the API endpoint (a stand-in for tests, a VPC
	// endpoint). AWS_ENDPOINT_URL_ECR works too.
	Endpoint string
}

// NewECRClient returns an ECR API client with credentials from the AWS SDK's
// default chain (or the profile / role asked for).
func NewECRClient(ctx context.Context, c ECRConfig) (*ecr.Client, error) {
	opts := []func(*config.LoadOptions) error{config.WithRegion(c.Region)}
	if c.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(c.Profile))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("load aws config: %w", err)
	}
	if c.RoleARN != "" {
		cfg.Credentials = aws.NewCredentialsCache(stscreds.NewAssumeRoleProvider(sts.NewFromConfig(cfg), c.RoleARN,
			func(o *stscreds.AssumeRoleOptions) { o.RoleSessionName = "s3snap-migrate" }))
	}
	return ecr.NewFromConfig(cfg, func(o *ecr.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
	}), nil
}
