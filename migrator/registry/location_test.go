package registry

import (
	"errors"
	"testing"

	"github.com/s3snap/s3snap/store"
)

func TestParseLocation(t *testing.T) {
	const d = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	for _, tc := range []struct {
		in   string
		want Location
		err  bool
	}{
		{in: "ecr://123456789012.dkr.ecr.us-east-1.amazonaws.com", want: Location{Scheme: SchemeECR, Host: "123456789012.dkr.ecr.us-east-1.amazonaws.com"}},
		{in: "ecr://123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/app/api:v1", want: Location{Scheme: SchemeECR, Host: "123456789012.dkr.ecr.eu-west-1.amazonaws.com", Repository: "team/app/api", Tag: "v1"}},
		{in: "docker://127.0.0.1:5000/app@" + d, want: Location{Scheme: SchemeDocker, Host: "127.0.0.1:5000", Repository: "app", Digest: d}},
		{in: "docker://ghcr.io/org/app:1.2", want: Location{Scheme: SchemeDocker, Host: "ghcr.io", Repository: "org/app", Tag: "1.2"}},
		{in: "docker://localhost:5000", want: Location{Scheme: SchemeDocker, Host: "localhost:5000"}},
		{in: "s3://bucket/prefix/app:v1", want: Location{Scheme: SchemeS3, S3: store.URL{Bucket: "bucket", Path: "prefix/app", Tag: "v1"}, Tag: "v1"}},
		{in: "ecr://example.com/app", err: true},
		{in: "docker://host/App", err: true},
		{in: "docker://host:5000:v1", err: true},
		{in: "ftp://x/y", err: true},
		{in: "app:v1", err: true},
		{in: "docker://host/app@sha256:zz", err: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseLocation(tc.in)
			if tc.err {
				if !errors.Is(err, store.ErrInvalidName) && !errors.Is(err, ErrNotECR) {
					t.Fatalf("err = %v, want a bad-name error", err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
			if got.String() != tc.in {
				t.Errorf("String() = %s", got.String())
			}
		})
	}
}
