package registry

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/aws/aws-sdk-go-v2/service/ecr/types"
)

// tokenAPI issues numbered tokens that last ttl.
type tokenAPI struct {
	ECRAPI
	ttl time.Duration
	n   int
}

func (a *tokenAPI) GetAuthorizationToken(context.Context, *ecr.GetAuthorizationTokenInput, ...func(*ecr.Options)) (*ecr.GetAuthorizationTokenOutput, error) {
	a.n++
	tok := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "AWS:token-%d", a.n))
	return &ecr.GetAuthorizationTokenOutput{AuthorizationData: []types.AuthorizationData{{
		AuthorizationToken: aws.String(tok), ExpiresAt: aws.Time(time.Now().Add(a.ttl)), ProxyEndpoint: aws.String("https://x"),
	}}}, nil
}

func TestECRAuthRenewsBeforeExpiry(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name   string
		ttl    time.Duration
		before time.Duration
		wait   time.Duration
		age    time.Duration // pretend the token was issued this long ago
		want   string
	}{
		{"fresh token reused", 12 * time.Hour, 30 * time.Minute, 0, 0, "token-1"},
		{"12h token renewed in its last 30 minutes", 20 * time.Minute, 30 * time.Minute, 0, 11*time.Hour + 40*time.Minute, "token-2"},
		{"short-lived: renewed after 3/4 of its life", 400 * time.Millisecond, 30 * time.Minute, 320 * time.Millisecond, 0, "token-2"},
		{"short-lived: kept before", 400 * time.Millisecond, 30 * time.Minute, 100 * time.Millisecond, 0, "token-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &ecrAuth{api: &tokenAPI{ttl: tc.ttl}, refreshBefore: tc.before}
			if _, err := a.current(ctx); err != nil {
				t.Fatal(err)
			}
			a.tok.fetched = a.tok.fetched.Add(-tc.age)
			time.Sleep(tc.wait)
			cfg, err := a.AuthorizationContext(ctx)
			if err != nil || cfg.Username != "AWS" || cfg.Password != tc.want {
				t.Fatalf("got %s:%s, %v; want AWS:%s", cfg.Username, cfg.Password, err, tc.want)
			}
		})
	}
}

func TestECRAuthRefreshOncePerRefusal(t *testing.T) {
	api := &tokenAPI{ttl: 12 * time.Hour}
	a := &ecrAuth{api: api, refreshBefore: 30 * time.Minute}
	first, err := a.current(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// Two requests refused with the same token: one new token.
	h1, _ := a.Refresh(t.Context(), first.header())
	h2, _ := a.Refresh(t.Context(), first.header())
	if h1 != h2 || api.n != 2 {
		t.Errorf("refreshes %q %q after %d tokens; want one new token", h1, h2, api.n)
	}
	// Refused again with the new one: another.
	if h3, _ := a.Refresh(t.Context(), h2); h3 == h2 || api.n != 3 {
		t.Errorf("a refused fresh token was not renewed")
	}
}

func TestParseECRHost(t *testing.T) {
	for host, ok := range map[string]bool{
		"123456789012.dkr.ecr.us-east-1.amazonaws.com":          true,
		"123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com": true,
		"123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn":      true,
		"12345.dkr.ecr.us-east-1.amazonaws.com":                 false,
		"public.ecr.aws":                                        false,
	} {
		_, _, err := ParseECRHost(host)
		if (err == nil) != ok || (err != nil && !errors.Is(err, ErrNotECR)) {
			t.Errorf("ParseECRHost(%s): %v", host, err)
		}
	}
}
