package fetcher

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
)

func TestNewClientRegion(t *testing.T) {
	// Never ask a real instance metadata service from a test.
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	for _, k := range []string{"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"} {
		t.Setenv(k, "")
	}
	for _, tc := range []struct {
		name   string
		cfg    ClientConfig
		env    map[string]string
		region string
		err    error
	}{
		{name: "given", cfg: ClientConfig{Region: "eu-west-1"}, region: "eu-west-1"},
		{name: "from env", env: map[string]string{"AWS_REGION": "ap-south-1"}, region: "ap-south-1"},
		{name: "local endpoint", cfg: ClientConfig{Endpoint: "http://127.0.0.1:9000"}, region: "us-east-1"},
		{name: "endpoint from env", env: map[string]string{"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}, region: "us-east-1"},
		{name: "nowhere", err: ErrNoRegion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := NewClient(context.Background(), tc.cfg)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Options().Region; got != tc.region {
				t.Errorf("region %q, want %q", got, tc.region)
			}
		})
	}
}
