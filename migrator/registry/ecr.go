package registry

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/aws/aws-sdk-go-v2/service/ecr/types"
	"github.com/containerd/log"
	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/s3snap/s3snap/migrator"
)

// ECRAPI is the part of the ECR API the migrator calls.
type ECRAPI interface {
	ecr.DescribeRepositoriesAPIClient
	ecr.DescribeImagesAPIClient
	GetAuthorizationToken(ctx context.Context, in *ecr.GetAuthorizationTokenInput, optFns ...func(*ecr.Options)) (*ecr.GetAuthorizationTokenOutput, error)
	CreateRepository(ctx context.Context, in *ecr.CreateRepositoryInput, optFns ...func(*ecr.Options)) (*ecr.CreateRepositoryOutput, error)
	GetLifecyclePolicy(ctx context.Context, in *ecr.GetLifecyclePolicyInput, optFns ...func(*ecr.Options)) (*ecr.GetLifecyclePolicyOutput, error)
}

// ErrNotECR is returned for a host that is not ACCOUNT.dkr.ecr.REGION.amazonaws.com.
var ErrNotECR = errors.New("not an ECR registry host")

var ecrHostRe = regexp.MustCompile(`^(\d{12})\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$`)

// ParseECRHost splits ACCOUNT.dkr.ecr.REGION.amazonaws.com.
func ParseECRHost(host string) (account, region string, err error) {
	m := ecrHostRe.FindStringSubmatch(host)
	if m == nil {
		return "", "", fmt.Errorf("%q: want ACCOUNT.dkr.ecr.REGION.amazonaws.com: %w", host, ErrNotECR)
	}
	return m[1], m[2], nil
}

// ECR is one ECR registry (an account in a region): its API lists
// repositories and images (never _catalog), issues the data plane's tokens
// and creates repositories; its data plane is a Registry.
type ECR struct {
	api     ECRAPI
	account string
	host    string
	auth    *ecrAuth
	reg     *Registry
	create  *CreateOptions
	created sync.Map
}

// CreateOptions are the settings of repositories an ECR destination
// creates.
type CreateOptions struct {
	TagImmutable bool
	ScanOnPush   bool
}

type ecrOptions struct {
	reg           []RegistryOption
	create        *CreateOptions
	refreshBefore time.Duration
}

// ECROption configures NewECR.
type ECROption func(*ecrOptions)

// WithECRRegistryOptions passes options to the data plane's Registry.
func WithECRRegistryOptions(opts ...RegistryOption) ECROption {
	return func(o *ecrOptions) { o.reg = append(o.reg, opts...) }
}

// WithCreate makes a destination create missing repositories.
func WithCreate(c CreateOptions) ECROption { return func(o *ecrOptions) { o.create = &c } }

// WithRefreshBefore renews a token this long before it expires (default 30
// minutes, ECR tokens lasting 12 hours; never earlier than when three
// quarters of its life are over).
func WithRefreshBefore(d time.Duration) ECROption {
	return func(o *ecrOptions) { o.refreshBefore = d }
}

// NewECR returns the registry at host (ACCOUNT.dkr.ecr.REGION.amazonaws.com)
// through api. It fetches a first token: the data plane is the
// proxyEndpoint that comes with it (ECR's own host, or a stand-in's).
func NewECR(ctx context.Context, api ECRAPI, host string, opts ...ECROption) (*ECR, error) {
	o := ecrOptions{refreshBefore: 30 * time.Minute}
	for _, opt := range opts {
		opt(&o)
	}
	account, _, err := ParseECRHost(host)
	if err != nil {
		return nil, err
	}
	auth := &ecrAuth{api: api, account: account, refreshBefore: o.refreshBefore}
	tok, err := auth.current(ctx)
	if err != nil {
		return nil, err
	}
	endpoint := trimScheme(tok.endpoint)
	if endpoint == "" {
		endpoint = host
	}
	ropts := append([]RegistryOption{WithAuth(auth), WithRefresher(auth), WithInsecure(strings.HasPrefix(tok.endpoint, "http://"))}, o.reg...)
	reg, err := NewRegistry(endpoint, ropts...)
	if err != nil {
		return nil, err
	}
	return &ECR{api: api, account: account, host: host, auth: auth, reg: reg, create: o.create}, nil
}

// Registry is the data plane.
func (e *ECR) Registry() *Registry { return e.reg }

// String is the registry as an ecr:// URL.
func (e *ECR) String() string { return "ecr://" + e.host }

// ecrAuth is an authn.Authenticator over GetAuthorizationToken: basic
// AWS:<token>, renewed before it expires and, through Refresh, on a 401.
type ecrAuth struct {
	api           ECRAPI
	account       string
	refreshBefore time.Duration

	mu  sync.Mutex
	tok *ecrToken
}

type ecrToken struct {
	user, pass string
	endpoint   string
	expires    time.Time
	fetched    time.Time // when it was issued
}

func (a *ecrAuth) current(ctx context.Context) (*ecrToken, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tok != nil && time.Until(a.tok.expires) > min(a.refreshBefore, a.tok.expires.Sub(a.tok.fetched)/4) {
		return a.tok, nil
	}
	return a.fetchLocked(ctx)
}

func (a *ecrAuth) fetchLocked(ctx context.Context) (*ecrToken, error) {
	// The token works for every registry the principal may use.
	out, err := a.api.GetAuthorizationToken(ctx, &ecr.GetAuthorizationTokenInput{})
	if err != nil {
		return nil, fmt.Errorf("ecr GetAuthorizationToken: %w", err)
	}
	if len(out.AuthorizationData) == 0 {
		return nil, fmt.Errorf("ecr GetAuthorizationToken: no authorization data: %w", migrator.ErrUnauthorized)
	}
	ad := out.AuthorizationData[0]
	raw, err := base64.StdEncoding.DecodeString(aws.ToString(ad.AuthorizationToken))
	if err != nil {
		return nil, fmt.Errorf("ecr GetAuthorizationToken: token is not base64: %w", migrator.ErrUnauthorized)
	}
	user, pass, ok := strings.Cut(string(raw), ":")
	if !ok {
		return nil, fmt.Errorf("ecr GetAuthorizationToken: token is not user:password: %w", migrator.ErrUnauthorized)
	}
	t := &ecrToken{user: user, pass: pass, endpoint: aws.ToString(ad.ProxyEndpoint), fetched: time.Now()}
	if ad.ExpiresAt != nil {
		t.expires = *ad.ExpiresAt
	} else {
		t.expires = time.Now().Add(12 * time.Hour)
	}
	log.G(ctx).WithFields(log.Fields{"account": a.account, "expires": t.expires}).Debug("ecr token issued")
	a.tok = t
	return t, nil
}

// Authorization implements authn.Authenticator.
func (a *ecrAuth) Authorization() (*authn.AuthConfig, error) {
	return a.AuthorizationContext(context.Background())
}

// AuthorizationContext implements authn.ContextAuthenticator.
func (a *ecrAuth) AuthorizationContext(ctx context.Context) (*authn.AuthConfig, error) {
	t, err := a.current(ctx)
	if err != nil {
		return nil, err
	}
	return &authn.AuthConfig{Username: t.user, Password: t.pass}, nil
}

// Refresh implements Refresher: a new token, unless another request has
// already renewed the one that was refused.
func (a *ecrAuth) Refresh(ctx context.Context, refused string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t := a.tok; t != nil && t.header() != refused {
		return t.header(), nil
	}
	t, err := a.fetchLocked(ctx)
	if err != nil {
		return "", err
	}
	return t.header(), nil
}

// header is the token as an Authorization header value.
func (t *ecrToken) header() string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(t.user+":"+t.pass))
}

// Catalog returns the registry's images: with repo empty every repository,
// else that one; with ref (a tag or digest) set, that one image.
func (e *ECR) Catalog(repo, ref string) migrator.Catalog {
	return &ecrCatalog{e: e, repo: repo, ref: ref}
}

type ecrCatalog struct {
	e    *ECR
	repo string
	ref  string
}

func (c *ecrCatalog) String() string { return refString(c.e.String(), c.repo, c.ref) }

func (c *ecrCatalog) Open(_ context.Context, it migrator.Item) (migrator.Source, error) {
	return c.e.reg.Source(it.Repository, itemRef(it)), nil
}

func (c *ecrCatalog) Referrers(ctx context.Context, repo string, d migrator.Digest) ([]migrator.Item, error) {
	return c.e.reg.Referrers(ctx, repo, d)
}

func (c *ecrCatalog) List(ctx context.Context, f migrator.Filter) ([]migrator.Item, error) {
	if c.repo != "" && c.ref != "" {
		return (&registryCatalog{r: c.e.reg, repo: c.repo, ref: c.ref}).List(ctx, f)
	}
	in := &ecr.DescribeRepositoriesInput{RegistryId: aws.String(c.e.account)}
	if c.repo != "" {
		in.RepositoryNames = []string{c.repo}
	}
	var items []migrator.Item
	p := ecr.NewDescribeRepositoriesPaginator(c.e.api, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("ecr DescribeRepositories: %w", err)
		}
		for _, r := range page.Repositories {
			name := aws.ToString(r.RepositoryName)
			if !f.MatchRepository(name) {
				continue
			}
			repoItems, err := c.images(ctx, name, f)
			if err != nil {
				return nil, err
			}
			items = append(items, repoItems...)
		}
	}
	return items, nil
}

// images lists one repository: an item per tag, and one per untagged image
// that is not a child of one of the repository's indexes (those are copied
// with their index).
func (c *ecrCatalog) images(ctx context.Context, repo string, f migrator.Filter) ([]migrator.Item, error) {
	var tagged, untagged []migrator.Item
	var indexes []migrator.Digest
	p := ecr.NewDescribeImagesPaginator(c.e.api, &ecr.DescribeImagesInput{RegistryId: aws.String(c.e.account), RepositoryName: aws.String(repo)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("ecr DescribeImages %s: %w", repo, err)
		}
		for _, d := range page.ImageDetails {
			base := itemOf(repo, d)
			if migrator.IsIndexType(base.MediaType) {
				indexes = append(indexes, base.Digest)
			}
			if len(d.ImageTags) == 0 {
				untagged = append(untagged, base)
				continue
			}
			for _, t := range d.ImageTags {
				it := base
				it.Tag = t
				tagged = append(tagged, it)
			}
		}
	}
	children := map[migrator.Digest]bool{}
	if len(untagged) > 0 {
		for _, d := range indexes {
			raw, err := c.e.reg.Source(repo, d.String()).Manifest(ctx, d)
			if err != nil {
				return nil, fmt.Errorf("read index %s of %s: %w", d, repo, err)
			}
			for _, ch := range migrator.IndexChildren(raw) {
				children[ch] = true
			}
		}
	}
	var out []migrator.Item
	for _, it := range append(tagged, untagged...) {
		if it.Tag == "" && children[it.Digest] {
			continue
		}
		if f.Match(it) {
			out = append(out, it)
		}
	}
	return out, nil
}

var _ migrator.PolicySource = (*ecrCatalog)(nil)

// LifecyclePolicy returns repo's lifecycle policy text, or nil when it has
// none: ECR catalogs are a migrator.PolicySource.
func (c *ecrCatalog) LifecyclePolicy(ctx context.Context, repo string) ([]byte, error) {
	out, err := c.e.api.GetLifecyclePolicy(ctx, &ecr.GetLifecyclePolicyInput{RegistryId: aws.String(c.e.account), RepositoryName: aws.String(repo)})
	var none *types.LifecyclePolicyNotFoundException
	if errors.As(err, &none) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ecr GetLifecyclePolicy %s: %w", repo, err)
	}
	return []byte(aws.ToString(out.LifecyclePolicyText)), nil
}

func itemOf(repo string, d types.ImageDetail) migrator.Item {
	it := migrator.Item{Repository: repo, Digest: migrator.Digest(aws.ToString(d.ImageDigest)), MediaType: aws.ToString(d.ImageManifestMediaType), Size: aws.ToInt64(d.ImageSizeInBytes)}
	if d.ImagePushedAt != nil {
		it.PushedAt = *d.ImagePushedAt
	}
	return it
}

// Target returns the registry as a migration destination, creating
// repositories first when WithCreate was given.
func (e *ECR) Target() migrator.Target { return &ecrTarget{Registry: e.reg, e: e} }

type ecrTarget struct {
	*Registry
	e *ECR
}

func (t *ecrTarget) String() string { return t.e.String() }

// ensure creates repo once per run if asked to. An existing repository is
// fine.
func (t *ecrTarget) ensure(ctx context.Context, repo string) error {
	if t.e.create == nil {
		return nil
	}
	if _, done := t.e.created.Load(repo); done {
		return nil
	}
	mut := types.ImageTagMutabilityMutable
	if t.e.create.TagImmutable {
		mut = types.ImageTagMutabilityImmutable
	}
	_, err := t.e.api.CreateRepository(ctx, &ecr.CreateRepositoryInput{
		RegistryId:                 aws.String(t.e.account),
		RepositoryName:             aws.String(repo),
		ImageTagMutability:         mut,
		ImageScanningConfiguration: &types.ImageScanningConfiguration{ScanOnPush: t.e.create.ScanOnPush},
	})
	var exists *types.RepositoryAlreadyExistsException
	if err != nil && !errors.As(err, &exists) {
		return fmt.Errorf("ecr CreateRepository %s: %w", repo, err)
	}
	if err == nil {
		log.G(ctx).WithField("repository", repo).Info("ecr repository created")
	}
	t.e.created.Store(repo, true)
	return nil
}

func (t *ecrTarget) PutBlob(ctx context.Context, repo string, desc migrator.Descriptor, open migrator.Opener) (bool, error) {
	if err := t.ensure(ctx, repo); err != nil {
		return false, err
	}
	return t.Registry.PutBlob(ctx, repo, desc, open)
}

func (t *ecrTarget) PutManifest(ctx context.Context, repo string, desc migrator.Descriptor, raw []byte) error {
	if err := t.ensure(ctx, repo); err != nil {
		return err
	}
	return t.Registry.PutManifest(ctx, repo, desc, raw)
}
