package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/s3snap/s3snap/migrator"
	"github.com/s3snap/s3snap/store"
)

// Registry is an OCI distribution registry (Docker Hub, GHCR, GitLab,
// Artifact Registry, a CNCF Distribution registry, ECR's data plane), reached
// with go-containerregistry over a transport that retries 429s (honouring
// Retry-After), 5xx and resets, and renews expiring credentials on a 401. It
// is safe for concurrent use.
type Registry struct {
	host     string
	insecure bool
	auth     authn.Authenticator // nil: resolve with keychain
	keychain authn.Keychain
	rt       http.RoundTripper
	policy   RetryPolicy
	puller   *remote.Puller
	pusher   *remote.Pusher

	mu    sync.Mutex
	trans map[string]http.RoundTripper // authenticated, per repository and scope

	flight migrator.Flight
}

type registryOptions struct {
	auth      authn.Authenticator
	keychain  authn.Keychain
	refresher Refresher
	retry     RetryPolicy
	insecure  bool
	base      http.RoundTripper
	jobs      int
}

// RegistryOption configures NewRegistry.
type RegistryOption func(*registryOptions)

// WithAuth authenticates with auth (default: the keychain).
func WithAuth(auth authn.Authenticator) RegistryOption {
	return func(o *registryOptions) { o.auth = auth }
}

// WithKeychain resolves credentials with kc (default: authn.DefaultKeychain,
// i.e. ~/.docker/config.json and its credential helpers).
func WithKeychain(kc authn.Keychain) RegistryOption {
	return func(o *registryOptions) { o.keychain = kc }
}

// WithRefresher renews the credential on a 401 (ECR tokens expire).
func WithRefresher(r Refresher) RegistryOption {
	return func(o *registryOptions) { o.refresher = r }
}

// WithRetry sets the retry policy (default DefaultRetry).
func WithRetry(p RetryPolicy) RegistryOption { return func(o *registryOptions) { o.retry = p } }

// WithInsecure allows plain HTTP (loopback and private addresses always
// may).
func WithInsecure(b bool) RegistryOption { return func(o *registryOptions) { o.insecure = b } }

// WithBaseTransport sets the HTTP transport under the retries (default
// http.DefaultTransport).
func WithBaseTransport(rt http.RoundTripper) RegistryOption {
	return func(o *registryOptions) { o.base = rt }
}

// NewRegistry returns a client for the registry at host ("host[:port]"). It
// makes no request.
func NewRegistry(host string, opts ...RegistryOption) (*Registry, error) {
	o := registryOptions{retry: DefaultRetry, keychain: authn.DefaultKeychain, base: http.DefaultTransport, jobs: migrator.DefaultJobs}
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := name.NewRegistry(host); err != nil {
		return nil, fmt.Errorf("registry %q: %w: %v", host, store.ErrInvalidName, err)
	}
	r := &Registry{host: host, insecure: o.insecure, auth: o.auth, keychain: o.keychain, policy: o.retry, trans: map[string]http.RoundTripper{}}
	r.rt = &retryTransport{inner: o.base, policy: o.retry, refresh: o.refresher}
	ropts := []remote.Option{
		remote.WithTransport(r.rt),
		remote.WithJobs(o.jobs),
		// Ours retries (honouring Retry-After); go-containerregistry's
		// own retries would multiply the attempts.
		remote.WithRetryPredicate(func(error) bool { return false }),
		remote.WithRetryStatusCodes(),
		remote.WithUserAgent("s3snap-migrate"),
	}
	if o.auth != nil {
		ropts = append(ropts, remote.WithAuth(o.auth))
	} else {
		ropts = append(ropts, remote.WithAuthFromKeychain(o.keychain))
	}
	var err error
	if r.puller, err = remote.NewPuller(ropts...); err != nil {
		return nil, fmt.Errorf("registry %s: %w", host, err)
	}
	if r.pusher, err = remote.NewPusher(ropts...); err != nil {
		return nil, fmt.Errorf("registry %s: %w", host, err)
	}
	return r, nil
}

// Host is the registry's host[:port].
func (r *Registry) Host() string { return r.host }

// repository parses repo as a repository of this registry.
func (r *Registry) repository(repo string) (name.Repository, error) {
	var opts []name.Option
	if r.insecure {
		opts = append(opts, name.Insecure)
	}
	rp, err := name.NewRepository(r.host+"/"+repo, opts...)
	if err != nil {
		return name.Repository{}, fmt.Errorf("repository %q: %w: %v", repo, store.ErrInvalidName, err)
	}
	return rp, nil
}

// authFor returns the authenticator for repo.
func (r *Registry) authFor(ctx context.Context, rp name.Repository) (authn.Authenticator, error) {
	if r.auth != nil {
		return r.auth, nil
	}
	a, err := authn.Resolve(ctx, r.keychain, rp)
	if err != nil {
		return nil, fmt.Errorf("credentials for %s: %w", rp, err)
	}
	return a, nil
}

// transport returns an authenticated transport for repo with scope
// (transport.PullScope or PushScope), set up once.
func (r *Registry) transport(ctx context.Context, rp name.Repository, scope string) (http.RoundTripper, error) {
	key := rp.RepositoryStr() + " " + scope
	r.mu.Lock()
	t, ok := r.trans[key]
	r.mu.Unlock()
	if ok {
		return t, nil
	}
	auth, err := r.authFor(ctx, rp)
	if err != nil {
		return nil, err
	}
	t, err = transport.NewWithContext(ctx, rp.Registry, auth, r.rt, []string{rp.Scope(scope)})
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", r.host, classify(err))
	}
	r.mu.Lock()
	r.trans[key] = t
	r.mu.Unlock()
	return t, nil
}

// classify maps registry HTTP errors onto the store's sentinel errors.
func classify(err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusNotFound:
			return fmt.Errorf("%w: %v", store.ErrNotFound, err)
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: %v", migrator.ErrUnauthorized, err)
		}
	}
	return err
}

// Tags lists repo's tags.
func (r *Registry) Tags(ctx context.Context, repo string) ([]string, error) {
	rp, err := r.repository(repo)
	if err != nil {
		return nil, err
	}
	tags, err := r.puller.List(ctx, rp)
	if err != nil {
		return nil, fmt.Errorf("list tags of %s: %w", rp, classify(err))
	}
	return tags, nil
}

// String is the registry as a docker:// URL.
func (r *Registry) String() string { return "docker://" + r.host }

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

func trimScheme(s string) string {
	for _, p := range []string{"https://", "http://"} {
		s = strings.TrimPrefix(s, p)
	}
	return strings.TrimSuffix(s, "/")
}
