package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentconfig "github.com/s3snap/s3snap/agent/config"
	"github.com/s3snap/s3snap/fetcher"
	"github.com/s3snap/s3snap/store"
)

const agentFix = "start the agent: systemctl start s3snap; see journalctl -u s3snap"

// socket checks the snapshotter socket is there, 0600, and answers the
// snapshots API.
func (r *run) socket(ctx context.Context) {
	const name = "agent socket"
	if r.cfg == nil {
		r.skip(name, "needs the agent config")
		return
	}
	path := r.cfg.Socket
	fi, err := os.Stat(path)
	if err != nil {
		r.add(Check{Name: name, Status: Fail, Detail: err.Error(), Fix: agentFix})
		return
	}
	if fi.Mode()&os.ModeSocket == 0 {
		r.add(Check{Name: name, Status: Fail, Detail: path + " is not a socket", Fix: "remove it and restart the agent"})
		return
	}
	conn, err := dialUnix(path)
	if err != nil {
		r.add(Check{Name: name, Status: Fail, Detail: err.Error(), Fix: agentFix})
		return
	}
	defer conn.Close()
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	// A key that never exists: NotFound proves the service answers.
	_, err = snapshotsapi.NewSnapshotsClient(conn).Stat(cctx, &snapshotsapi.StatSnapshotRequest{Snapshotter: agentconfig.PluginName, Key: "s3snap-doctor-probe"})
	if status.Code(err) != codes.NotFound {
		if err == nil {
			err = errors.New("answered Stat of a key that cannot exist")
		}
		r.add(Check{Name: name, Status: Fail, Detail: fmt.Sprintf("%s: %v", path, err), Fix: agentFix})
		return
	}
	st := Check{Name: name, Status: OK, Detail: path + " answers the snapshots API"}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		st.Status, st.Detail, st.Fix = Warn, fmt.Sprintf("%s is mode %04o, want 0600", path, perm), "restart the agent (it creates the socket 0600)"
	}
	r.add(st)
}

func httpGet(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

func (r *run) mirror(ctx context.Context) {
	const name = "mirror"
	if r.cfg == nil {
		r.skip(name, "needs the agent config")
		return
	}
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	url := "http://" + r.cfg.Mirror.Address + "/v2/"
	code, _, err := httpGet(cctx, url)
	switch {
	case err != nil:
		r.add(Check{Name: name, Status: Fail, Detail: err.Error(), Fix: agentFix})
	case code != http.StatusOK:
		r.add(Check{Name: name, Status: Fail, Detail: fmt.Sprintf("GET %s: HTTP %d", url, code), Fix: "is another program listening on " + r.cfg.Mirror.Address + "?"})
	default:
		r.add(Check{Name: name, Status: OK, Detail: url + " answers"})
	}
}

// health reads the agent's own /healthz: the agent reaching S3 with its
// own credentials.
func (r *run) health(ctx context.Context) {
	const name = "agent health"
	if r.cfg == nil {
		r.skip(name, "needs the agent config")
		return
	}
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	url := "http://" + r.cfg.Metrics.Address + "/healthz"
	code, body, err := httpGet(cctx, url)
	if err != nil {
		r.add(Check{Name: name, Status: Fail, Detail: err.Error(), Fix: agentFix})
		return
	}
	var h agentconfig.Health
	_ = json.Unmarshal(body, &h)
	if code != http.StatusOK {
		var errs []string
		for _, s := range h.Stores {
			if s.Error != "" {
				errs = append(errs, s.Store+": "+s.Error)
			}
		}
		detail := fmt.Sprintf("%s: HTTP %d: %s", url, code, strings.Join(errs, "; "))
		if len(h.Down) > 0 {
			detail = fmt.Sprintf("%s: HTTP %d: no store answers for %s: %s", url, code, strings.Join(h.Down, ", "), strings.Join(errs, "; "))
		}
		r.add(Check{Name: name, Status: Fail, Detail: detail,
			Fix: "the agent cannot read its bucket(s): see the bucket checks below"})
		return
	}
	if h.Status == agentconfig.HealthDegraded {
		r.add(Check{Name: name, Status: Warn, Detail: fmt.Sprintf("%s: degraded: every registry is served, but these stores fail: %s", url, strings.Join(h.Failing, ", ")),
			Fix: "images come from the other stores meanwhile: see the bucket checks below"})
		return
	}
	r.add(Check{Name: name, Status: OK, Detail: fmt.Sprintf("%s: %d store(s) reachable", url, len(h.Stores))})
}

// s3 checks credentials, each store's bucket, and times one blob fetch.
func (r *run) s3(ctx context.Context) {
	if r.cfg == nil {
		r.skip("aws credentials", "needs the agent config")
		r.skip("bucket", "needs the agent config")
		r.skip("blob fetch", "needs the agent config")
		return
	}
	cfg := r.cfg
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	client, err := fetcher.NewClient(cctx, fetcher.ClientConfig{Region: cfg.S3.Region, Endpoint: cfg.S3.Endpoint, Profile: cfg.S3.Profile, PathStyle: cfg.PathStyle()})
	if err != nil {
		r.add(Check{Name: "aws credentials", Status: Fail, Detail: err.Error(), Fix: "set [s3] region in the agent config, or give the node an instance role"})
		return
	}
	creds, err := client.Options().Credentials.Retrieve(cctx)
	if err != nil {
		r.add(Check{Name: "aws credentials", Status: Fail, Detail: err.Error(),
			Fix: "attach an instance profile (IMDSv2) to the node, or set AWS credentials in the agent's environment"})
		return
	}
	// The source names the provider, never the secret.
	r.add(Check{Name: "aws credentials", Status: OK, Detail: fmt.Sprintf("from %s (region %s)", creds.Source, client.Options().Region)})

	// One client per region: a regional store's bucket is addressed in its
	// own region (behind a custom endpoint, the node's, as the agent does).
	clients := map[string]*s3.Client{"": client}
	clientFor := func(region string) (*s3.Client, error) {
		if cfg.S3.Endpoint != "" || region == client.Options().Region {
			region = ""
		}
		if c, ok := clients[region]; ok {
			return c, nil
		}
		c, err := fetcher.NewClient(cctx, fetcher.ClientConfig{Region: region, Endpoint: cfg.S3.Endpoint, Profile: cfg.S3.Profile, PathStyle: cfg.PathStyle()})
		clients[region] = c
		return c, err
	}
	var sample *store.Store
	for _, reg := range cfg.Registry {
		locs, err := reg.Locations()
		if err != nil {
			continue // the config check reported it
		}
		for _, loc := range locs {
			c, err := clientFor(loc.Region)
			if err != nil {
				r.add(Check{Name: "bucket " + loc.URL.String(), Status: Fail, Detail: err.Error()})
				continue
			}
			f := fetcher.New(c, fetcher.WithPartSize(int64(cfg.Fetch.PartSize)), fetcher.WithConcurrency(cfg.Fetch.Concurrency))
			st := store.New(c, loc.URL.Bucket, store.WithPrefix(loc.URL.Path), store.WithFetcher(f))
			name := "bucket " + st.URL()
			where := reg.Host
			if loc.Region != "" {
				where += ", " + loc.Region
			}
			bctx, cancel := r.ctx(ctx)
			repos, err := st.ListRepositories(bctx)
			cancel()
			if err != nil {
				r.add(Check{Name: name, Status: Fail, Detail: fmt.Sprintf("%s (for %s): %v", st.URL(), where, err),
					Fix: "grant the node role s3:ListBucket and s3:GetObject on the bucket (docs/iam/node-policy.json), and check the bucket name and region"})
				continue
			}
			if len(repos) == 0 {
				r.add(Check{Name: name, Status: Warn, Detail: fmt.Sprintf("%s (for %s) is readable but holds no images", st.URL(), where), Fix: "migrate images into it: s3snap migrate"})
				continue
			}
			r.add(Check{Name: name, Status: OK, Detail: fmt.Sprintf("%s (for %s): readable, %d repositories", st.URL(), where, len(repos))})
			if sample == nil {
				sample = st
			}
			if cfg.Lazy.Enabled {
				lctx, cancel := r.ctx(ctx)
				r.add(lazyIndex(lctx, c, st))
				cancel()
			}
		}
	}
	if sample == nil {
		r.skip("blob fetch", "no readable bucket with images")
		return
	}
	r.add(fetchOne(ctx, sample, r.o.Timeout))
}

// fetchOne fetches, verifies and times the first layer of the first tagged
// image in st.
func fetchOne(ctx context.Context, st *store.Store, timeout time.Duration) Check {
	const name = "blob fetch"
	ctx, cancel := context.WithTimeout(ctx, 6*timeout)
	defer cancel()
	fail := func(err error) Check {
		return Check{Name: name, Status: Fail, Detail: fmt.Sprintf("%s: %v", st.URL(), err), Fix: "grant the node role s3:GetObject on the bucket"}
	}
	d, repo, err := sampleBlob(ctx, st)
	if err != nil {
		return fail(err)
	}
	start := time.Now()
	rc, info, err := st.OpenBlob(ctx, d)
	if err != nil {
		return fail(fmt.Errorf("%s %s: %w", repo, d, err))
	}
	n, err := io.Copy(io.Discard, rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(fmt.Errorf("%s %s: %w", repo, d, err))
	}
	el := time.Since(start)
	return Check{Name: name, Status: OK, Detail: fmt.Sprintf("%s layer %s: %d bytes (of %d) in %s, %.1f MB/s, digest verified",
		repo, d.Encoded()[:12], n, info.Size, el.Round(time.Millisecond), float64(n)/1e6/el.Seconds())}
}

// sampleBlob finds a layer to fetch: the first layer of the first tag of
// the first repository (for an index, of its first image).
func sampleBlob(ctx context.Context, st *store.Store) (digest.Digest, string, error) {
	repos, err := st.ListRepositories(ctx)
	if err != nil {
		return "", "", err
	}
	for _, repo := range repos {
		tags, err := st.ListTags(ctx, repo)
		if err != nil || len(tags) == 0 {
			continue
		}
		d, err := st.Resolve(ctx, repo, tags[0])
		if err != nil {
			return "", "", err
		}
		m, err := st.GetManifest(ctx, repo, d)
		if err != nil {
			return "", "", err
		}
		if m.IsIndex() && len(m.Index.Manifests) > 0 {
			if m, err = st.GetManifest(ctx, repo, m.Index.Manifests[0].Digest); err != nil {
				return "", "", err
			}
		}
		if m.Image != nil && len(m.Image.Layers) > 0 {
			return m.Image.Layers[0].Digest, repo + ":" + tags[0], nil
		}
	}
	return "", "", errors.New("no tagged image with layers found")
}
