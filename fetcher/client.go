package fetcher

import (
	"cmp"
	"errors"
	"os"
	"time"

	"context"
	"fmt"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// ClientConfig says how to reach S3. The zero value is plain AWS S3 with the
// default credential chain.
type ClientConfig struct {
	// Region; empty: from the default chain (env, profile, then IMDS). If
	// still empty and Endpoint is set, "us-east-1".
	Region string
	// Endpoint overrides the S3 endpoint. Empty: the SDK honours
	// AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_S3 itself.
	Endpoint string
	// Profile selects a shared config profile.
	Profile string
	// PathStyle addresses buckets in the path, as S3-compatible servers
	// (MinIO, versitygw) need.
	PathStyle bool
}

// maxIdleConnsPerHost keeps connections of all concurrent ranges alive
// between parts. The SDK default (10) is below DefaultConcurrency, and with
// it every part beyond the tenth would open (and TIME_WAIT) a new connection.
const maxIdleConnsPerHost = 256

// ErrNoRegion means no AWS region was given or could be found.
var ErrNoRegion = errors.New("no AWS region")

// NewClient builds an S3 client with the AWS default credential chain: env,
// shared profile, IRSA web identity, Pod Identity / container credentials,
// then the IMDSv2 instance role. Credentials are resolved lazily by the SDK
// and never logged.
func NewClient(ctx context.Context, cfg ClientConfig) (*s3.Client, error) {
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConns = maxIdleConnsPerHost
		t.MaxIdleConnsPerHost = maxIdleConnsPerHost
	})
	opts := []func(*config.LoadOptions) error{config.WithHTTPClient(httpClient)}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("load aws config: %w", err)
	}
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = cmp.Or(os.Getenv("AWS_ENDPOINT_URL_S3"), os.Getenv("AWS_ENDPOINT_URL"))
	}
	switch {
	case awsCfg.Region != "":
	case endpoint != "":
		// A local S3-compatible server: any region signs; no round trip
		// to an instance metadata service that may not exist.
		awsCfg.Region = "us-east-1"
	default:
		// On EC2 the region usually comes from the instance itself.
		imdsCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, err := imds.NewFromConfig(awsCfg, func(o *imds.Options) {
			o.EnableFallback = aws.FalseTernary // IMDSv2 only
		}).GetRegion(imdsCtx, &imds.GetRegionInput{})
		if err != nil {
			return nil, fmt.Errorf("%w: give --region or set AWS_REGION (the EC2 instance metadata service did not say: %v)", ErrNoRegion, err)
		}
		awsCfg.Region = out.Region
	}
	return s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
		// Without this the SDK logs a line for every GET of an object
		// that has no checksum (all ranged GETs, most S3-compatible
		// servers). Digests are checked by the fetcher instead.
		o.DisableLogOutputChecksumValidationSkipped = true
	}), nil
}
