// Package ecrfake stands in for Amazon ECR in tests, where no ECR can run.
//
// Its data plane is real: a CNCF Distribution registry with htpasswd auth,
// user AWS and the current token as password, which is ECR's own scheme.
// Its control plane is a small HTTP server speaking ECR's JSON 1.1 protocol
// (X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.<Operation>) for the
// calls the migrator makes: DescribeRepositories and DescribeImages (paged,
// from what the registry holds on disk, untagged manifests included, as ECR
// lists them), GetAuthorizationToken (whose proxyEndpoint is the registry's
// http:// address), CreateRepository and GetLifecyclePolicy (policies set
// with SetLifecyclePolicy). Tokens expire on command.
package ecrfake

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/s3snap/s3snap/integration/testenv"
)

const targetPrefix = "AmazonEC2ContainerRegistry_V20150921."

// Options configure Start.
type Options struct {
	// Account and Region make the registry's host name (defaults
	// 123456789012, us-east-1).
	Account, Region string
	// TokenTTL is how long a token is said to last (default 12h).
	TokenTTL time.Duration
	// PageSize is the most results per Describe* page (default 2, so
	// paging is exercised).
	PageSize int
}

// Fake is a running ECR stand-in.
type Fake struct {
	Options
	// Registry is the data plane.
	Registry *testenv.Registry

	root     string // the registry's storage directory
	htpasswd string
	ln       net.Listener
	srv      *http.Server

	mu       sync.Mutex
	proxy    string
	token    string
	expires  time.Time
	pushedAt map[string]time.Time
	repos    map[string]Repository
	policies map[string]string
	calls    map[string]int
}

// Repository is what CreateRepository recorded.
type Repository struct {
	Name         string
	TagImmutable bool
	ScanOnPush   bool
}

// Start starts the registry and the API server; both stop when t ends.
func Start(t testing.TB, opts Options) *Fake {
	t.Helper()
	dir := t.TempDir()
	f, err := New(filepath.Join(dir, "storage"), filepath.Join(dir, "htpasswd"), "127.0.0.1:0", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	f.Registry = testenv.StartAuthRegistry(t, f.root, f.htpasswd)
	return f
}

// New serves the API alone on addr, over a registry the caller runs with
// storage root and htpasswd file htpasswd (written here, token included);
// SetProxyEndpoint must name that registry. Close stops it. It is Start
// for a process outside a test (integration/cmd/ecrfake).
func New(root, htpasswd, addr string, opts Options) (*Fake, error) {
	if opts.Account == "" {
		opts.Account = "123456789012"
	}
	if opts.Region == "" {
		opts.Region = "us-east-1"
	}
	if opts.TokenTTL == 0 {
		opts.TokenTTL = 12 * time.Hour
	}
	if opts.PageSize == 0 {
		opts.PageSize = 2
	}
	f := &Fake{Options: opts, root: root, htpasswd: htpasswd,
		pushedAt: map[string]time.Time{}, repos: map[string]Repository{}, calls: map[string]int{}}
	if err := os.MkdirAll(f.root, 0o755); err != nil {
		return nil, err
	}
	if err := f.rotate(); err != nil {
		return nil, fmt.Errorf("ecrfake: token: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ecrfake: %w", err)
	}
	f.ln = ln
	f.srv = &http.Server{Handler: http.HandlerFunc(f.serve), ReadHeaderTimeout: 10 * time.Second}
	go f.srv.Serve(ln) //nolint:errcheck // ErrServerClosed at Close
	return f, nil
}

// Close stops the API server.
func (f *Fake) Close() error { return f.srv.Close() }

// Host is the registry's ECR host name, ACCOUNT.dkr.ecr.REGION.amazonaws.com.
func (f *Fake) Host() string {
	return fmt.Sprintf("%s.dkr.ecr.%s.amazonaws.com", f.Account, f.Region)
}

// URL is the registry as an ecr:// location.
func (f *Fake) URL() string { return "ecr://" + f.Host() }

// Endpoint is the API's base URL, for the SDK's BaseEndpoint.
func (f *Fake) Endpoint() string { return "http://" + f.ln.Addr().String() }

// Token returns the current password of user AWS.
func (f *Fake) Token() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.token
}

// ExpireToken makes the current token invalid at once (the registry
// refuses it) and issues a new one for the next GetAuthorizationToken.
func (f *Fake) ExpireToken() error { return f.rotate() }

// Calls returns how often operation op was called.
func (f *Fake) Calls(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// SetPushedAt sets the push time DescribeImages reports for repo@digest
// (default: when the registry wrote it).
func (f *Fake) SetPushedAt(repo, digest string, t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pushedAt[repo+"@"+digest] = t
}

// SetLifecyclePolicy gives repository repo the lifecycle policy text,
// returned as is by GetLifecyclePolicy (ECR validates it on Put; tests
// may want it not to).
func (f *Fake) SetLifecyclePolicy(repo, text string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.policies == nil {
		f.policies = map[string]string{}
	}
	f.policies[repo] = text
}

// Created returns what CreateRepository recorded for name.
func (f *Fake) Created(name string) (Repository, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.repos[name]
	return r, ok
}

// rotate issues a new token and writes it (alone) to the htpasswd file.
func (f *Fake) rotate() error {
	var b [24]byte
	_, _ = rand.Read(b[:])
	tok := hex.EncodeToString(b[:])
	// MinCost: the registry checks the hash on every request.
	h, err := bcrypt.GenerateFromPassword([]byte(tok), bcrypt.MinCost)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	tmp := f.htpasswd + ".tmp"
	if err := os.WriteFile(tmp, []byte("AWS:"+string(h)+"\n"), 0o600); err != nil {
		return err
	}
	// The registry reloads when the modification time changes.
	mt := time.Now()
	if fi, err := os.Stat(f.htpasswd); err == nil && !mt.After(fi.ModTime()) {
		mt = fi.ModTime().Add(time.Second)
	}
	if err := os.Chtimes(tmp, mt, mt); err != nil {
		return err
	}
	if err := os.Rename(tmp, f.htpasswd); err != nil {
		return err
	}
	f.token, f.expires = tok, time.Now().Add(f.TokenTTL)
	return nil
}

// apiError is ECR's JSON 1.1 error.
type apiError struct {
	Type    string `json:"__type"`
	Message string `json:"message"`
}

func (f *Fake) serve(w http.ResponseWriter, r *http.Request) {
	op, ok := strings.CutPrefix(r.Header.Get("X-Amz-Target"), targetPrefix)
	if r.Method != http.MethodPost || !ok {
		writeErr(w, http.StatusBadRequest, "UnknownOperationException", "not an ECR call")
		return
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
		writeErr(w, http.StatusBadRequest, "MissingAuthenticationTokenException", "request is not signed")
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeErr(w, http.StatusBadRequest, "SerializationException", err.Error())
		return
	}
	f.mu.Lock()
	f.calls[op]++
	f.mu.Unlock()
	var out any
	switch op {
	case "GetAuthorizationToken":
		out = f.getAuthorizationToken()
	case "DescribeRepositories":
		out, err = f.describeRepositories(body)
	case "DescribeImages":
		out, err = f.describeImages(body)
	case "CreateRepository":
		out, err = f.createRepository(body)
	case "GetLifecyclePolicy":
		out, err = f.getLifecyclePolicy(body)
	default:
		writeErr(w, http.StatusBadRequest, "UnknownOperationException", op+" is not faked")
		return
	}
	if ae, ok := err.(*apiError); ok {
		writeErr(w, http.StatusBadRequest, ae.Type, ae.Message)
		return
	}
	if err != nil {
		writeErr(w, http.StatusInternalServerError, "ServerException", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	_ = json.NewEncoder(w).Encode(out)
}

func (e *apiError) Error() string { return e.Type + ": " + e.Message }

func writeErr(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Errortype", typ)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(apiError{Type: typ, Message: msg})
}

func epoch(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func (f *Fake) getAuthorizationToken() any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return map[string]any{"authorizationData": []map[string]any{{
		"authorizationToken": base64.StdEncoding.EncodeToString([]byte("AWS:" + f.token)),
		"expiresAt":          epoch(f.expires),
		"proxyEndpoint":      f.proxyEndpoint(),
	}}}
}

// SetProxyEndpoint makes GetAuthorizationToken give url as the data plane
// instead of the registry itself: a fault proxy in front of it, say.
func (f *Fake) SetProxyEndpoint(url string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.proxy = url
}

// proxyEndpoint is the data plane's URL; f.mu is held.
func (f *Fake) proxyEndpoint() string {
	if f.proxy != "" {
		return f.proxy
	}
	return "http://" + f.Registry.Addr
}

// page cuts keys (sorted) at nextToken into one page.
func (f *Fake) page(n int, next string, max int) (from, to int, token string, err error) {
	if next != "" {
		if from, err = strconv.Atoi(next); err != nil || from < 0 || from > n {
			return 0, 0, "", &apiError{"InvalidParameterException", "bad nextToken"}
		}
	}
	size := f.PageSize
	if max > 0 && max < size {
		size = max
	}
	to = min(from+size, n)
	if to < n {
		token = strconv.Itoa(to)
	}
	return from, to, token, nil
}

func (f *Fake) repoJSON(name string) map[string]any {
	return map[string]any{
		"registryId":     f.Account,
		"repositoryName": name,
		"repositoryArn":  fmt.Sprintf("arn:aws:ecr:%s:%s:repository/%s", f.Region, f.Account, name),
		"repositoryUri":  f.Host() + "/" + name,
		"createdAt":      epoch(time.Unix(1700000000, 0)),
	}
}

func (f *Fake) describeRepositories(body []byte) (any, error) {
	var in struct {
		RepositoryNames []string `json:"repositoryNames"`
		NextToken       string   `json:"nextToken"`
		MaxResults      int      `json:"maxResults"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, &apiError{"SerializationException", err.Error()}
	}
	all, err := f.repositories()
	if err != nil {
		return nil, err
	}
	names := all
	if len(in.RepositoryNames) > 0 {
		have := map[string]bool{}
		for _, n := range all {
			have[n] = true
		}
		names = nil
		for _, n := range in.RepositoryNames {
			if !have[n] {
				return nil, &apiError{"RepositoryNotFoundException", fmt.Sprintf("The repository with name '%s' does not exist in the registry with id '%s'", n, f.Account)}
			}
			names = append(names, n)
		}
	}
	from, to, next, err := f.page(len(names), in.NextToken, in.MaxResults)
	if err != nil {
		return nil, err
	}
	var repos []map[string]any
	for _, n := range names[from:to] {
		repos = append(repos, f.repoJSON(n))
	}
	out := map[string]any{"repositories": repos}
	if next != "" {
		out["nextToken"] = next
	}
	return out, nil
}

func (f *Fake) createRepository(body []byte) (any, error) {
	var in struct {
		RepositoryName             string `json:"repositoryName"`
		ImageTagMutability         string `json:"imageTagMutability"`
		ImageScanningConfiguration struct {
			ScanOnPush bool `json:"scanOnPush"`
		} `json:"imageScanningConfiguration"`
	}
	if err := json.Unmarshal(body, &in); err != nil || in.RepositoryName == "" {
		return nil, &apiError{"InvalidParameterException", "repositoryName is required"}
	}
	existing, err := f.repositories()
	if err != nil {
		return nil, err
	}
	for _, n := range existing {
		if n == in.RepositoryName {
			return nil, &apiError{"RepositoryAlreadyExistsException", fmt.Sprintf("The repository with name '%s' already exists", n)}
		}
	}
	f.mu.Lock()
	f.repos[in.RepositoryName] = Repository{Name: in.RepositoryName, TagImmutable: in.ImageTagMutability == "IMMUTABLE", ScanOnPush: in.ImageScanningConfiguration.ScanOnPush}
	f.mu.Unlock()
	return map[string]any{"repository": f.repoJSON(in.RepositoryName)}, nil
}

// repositories lists the registry's repositories (from its storage) and
// those created through the API, sorted.
func (f *Fake) repositories() ([]string, error) {
	base := filepath.Join(f.root, "docker", "registry", "v2", "repositories")
	seen := map[string]bool{}
	err := filepath.WalkDir(base, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.IsDir() && d.Name() == "_manifests" {
			rel, _ := filepath.Rel(base, filepath.Dir(path))
			seen[filepath.ToSlash(rel)] = true
			return filepath.SkipDir
		}
		return nil
	})
	f.mu.Lock()
	for n := range f.repos {
		seen[n] = true
	}
	f.mu.Unlock()
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, err
}

func (f *Fake) getLifecyclePolicy(body []byte) (any, error) {
	var in struct {
		RepositoryName string `json:"repositoryName"`
	}
	if err := json.Unmarshal(body, &in); err != nil || in.RepositoryName == "" {
		return nil, &apiError{"InvalidParameterException", "repositoryName is required"}
	}
	names, err := f.repositories()
	if err != nil {
		return nil, err
	}
	if i := sort.SearchStrings(names, in.RepositoryName); i == len(names) || names[i] != in.RepositoryName {
		return nil, &apiError{"RepositoryNotFoundException", fmt.Sprintf("The repository with name '%s' does not exist in the registry with id '%s'", in.RepositoryName, f.Account)}
	}
	f.mu.Lock()
	text, ok := f.policies[in.RepositoryName]
	f.mu.Unlock()
	if !ok {
		return nil, &apiError{"LifecyclePolicyNotFoundException", fmt.Sprintf("Lifecycle policy does not exist for the repository with name '%s' in the registry with id '%s'", in.RepositoryName, f.Account)}
	}
	return map[string]any{
		"registryId":          f.Account,
		"repositoryName":      in.RepositoryName,
		"lifecyclePolicyText": text,
		"lastEvaluatedAt":     epoch(time.Unix(1700000000, 0)),
	}, nil
}
