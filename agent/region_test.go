package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/s3snap/s3snap/agent/config"
)

// TestOpenStoresRegions: the node's region comes from [s3] region, else
// AWS_REGION (never IMDS here: it is disabled); each registry's stores are
// looked in with that region's first; each store's client is signed for
// the store's own region, except behind a custom endpoint, where all are
// signed for the node's region.
func TestOpenStoresRegions(t *testing.T) {
	const host = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
	table := "[[registry]]\nhost = \"" + host + "\"\nstores = { \"us-east-1\" = \"s3://imgs-use1/p\", \"eu-west-1\" = \"s3://imgs-euw1/p\", \"ap-south-1\" = \"s3://imgs-aps1/p\" }\n" +
		"[[registry]]\nhost = \"docker.io\"\nstore = \"s3://hub\"\n"
	for _, tc := range []struct {
		name, s3, awsRegion string
		want                []string // store@client region, in lookup order
		wantHub             string
	}{
		{"[s3] region", "region = \"eu-west-1\"", "ap-south-1",
			[]string{"s3://imgs-euw1/p@eu-west-1", "s3://imgs-use1/p@us-east-1", "s3://imgs-aps1/p@ap-south-1"}, "s3://hub@eu-west-1"},
		{"AWS_REGION", "", "ap-south-1",
			[]string{"s3://imgs-aps1/p@ap-south-1", "s3://imgs-use1/p@us-east-1", "s3://imgs-euw1/p@eu-west-1"}, "s3://hub@ap-south-1"},
		{"custom endpoint: one signing region", "region = \"eu-west-1\"\nendpoint = \"http://127.0.0.1:1\"", "",
			[]string{"s3://imgs-euw1/p@eu-west-1", "s3://imgs-use1/p@eu-west-1", "s3://imgs-aps1/p@eu-west-1"}, "s3://hub@eu-west-1"},
		{"region unknown: config order", "endpoint = \"http://127.0.0.1:1\"", "",
			[]string{"s3://imgs-use1/p@us-east-1", "s3://imgs-euw1/p@us-east-1", "s3://imgs-aps1/p@us-east-1"}, "s3://hub@us-east-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range map[string]string{
				"AWS_REGION": tc.awsRegion, "AWS_DEFAULT_REGION": "", "AWS_EC2_METADATA_DISABLED": "true",
				"AWS_PROFILE": "", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
				"AWS_ENDPOINT_URL": "", "AWS_ENDPOINT_URL_S3": "",
			} {
				t.Setenv(k, v)
			}
			cfg, err := config.Parse([]byte("[s3]\n" + tc.s3 + "\n" + table))
			if err != nil {
				t.Fatal(err)
			}
			stores, err := openStores(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range stores[host] {
				got = append(got, e.store.URL()+"@"+e.client.Options().Region)
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("stores of %s:\n got %v\nwant %v", host, got, tc.want)
			}
			if hub := stores["docker.io"]; len(hub) != 1 || hub[0].store.URL()+"@"+hub[0].client.Options().Region != tc.wantHub {
				t.Errorf("plain store: %v, want %s", hub, tc.wantHub)
			}
		})
	}
}
