package fetcher

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"os"

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
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = cmp.Or(os.Getenv("AWS_ENDPOINT_URL_S3"), os.Getenv("AWS_ENDPOINT_URL"))
	}
	// Behind a local S3-compatible server any region signs: no round trip
	// to an instance metadata service that may not exist.
	awsCfg, err := LoadAWSConfig(ctx, cfg.Region, cfg.Profile, endpoint == "", config.WithHTTPClient(httpClient))
	switch {
	case err != nil:
		return nil, err
	case awsCfg.Region != "":
	case endpoint != "":
		awsCfg.Region = "us-east-1"
	default:
		return nil, ErrNoRegion
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
