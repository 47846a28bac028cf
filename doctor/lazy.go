package doctor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/opencontainers/go-digest"

	"github.com/s3snap/s3snap/lazy"
	"github.com/s3snap/s3snap/lazy/fused"
	"github.com/s3snap/s3snap/store"
)

// lazyIAMFix is what to grant when the node cannot read lazy indexes.
const lazyIAMFix = "grant the node role s3:GetObject on BUCKET/PREFIX/s3snap/lazy/* and s3:ListBucket for the prefix PREFIX/s3snap/lazy/ (docs/iam/node-policy.json); without them lazy mode never engages and every layer is downloaded whole"

// lazyIndex checks, with lazy mode on, that the node can find and read
// st's lazy-pull indexes: it lists <prefix>/s3snap/lazy/ and reads and
// validates the first index (TOC) there. Access denied is a failure (lazy
// mode would silently never engage); no index at all, a warning.
func lazyIndex(ctx context.Context, client *s3.Client, st *store.Store) Check {
	name := "lazy index " + st.URL()
	fail := func(what string, err error) Check {
		detail := fmt.Sprintf("%s: %s: %v", st.URL(), what, err)
		if denied(err) {
			detail = fmt.Sprintf("%s: access denied: %s: %v", st.URL(), what, err)
		}
		return Check{Name: name, Status: Fail, Detail: detail, Fix: lazyIAMFix}
	}
	root, err := st.ExtraKey("lazy")
	if err != nil {
		return fail("index location", err)
	}
	root += "/"
	bucket := st.Bucket()
	// Keys sort data before toc, so the first page holds a toc if any
	// index is complete.
	out, err := client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: &bucket, Prefix: &root, MaxKeys: aws.Int32(100)})
	if err != nil {
		return fail("list s3://"+bucket+"/"+root, err)
	}
	var layer digest.Digest
	for _, o := range out.Contents {
		if d, ok := tocLayer(st, aws.ToString(o.Key)); ok {
			layer = d
			break
		}
	}
	if layer == "" {
		return Check{Name: name, Status: Warn, Detail: fmt.Sprintf("%s: lazy mode is on but no lazy index is under s3://%s/%s: every layer is downloaded whole", st.URL(), bucket, root),
			Fix: "build indexes for the images to start lazily: s3snap index s3://BUCKET/PREFIX/REPOSITORY:TAG"}
	}
	toc, _, err := lazy.FetchTOC(ctx, st, layer)
	if err != nil {
		if errors.Is(err, lazy.ErrInvalidIndex) {
			return Check{Name: name, Status: Fail, Detail: fmt.Sprintf("%s: index of layer %s: %v", st.URL(), layer, err),
				Fix: "rebuild it: s3snap index (a damaged index is skipped and the layer downloaded whole)"}
		}
		return fail("read the index of layer "+layer.String(), err)
	}
	if !toc.Verifiable() {
		return Check{Name: name, Status: Warn, Detail: fmt.Sprintf("%s: index of layer %s is of format v1: served, but its content cannot be verified against the image", st.URL(), layer.Encoded()[:12]),
			Fix: "rewrite the indexes as v2: s3snap index s3://BUCKET/PREFIX/REPOSITORY:TAG"}
	}
	return Check{Name: name, Status: OK, Detail: fmt.Sprintf("%s: index of layer %s read and valid (%d files)", st.URL(), layer.Encoded()[:12], len(toc.Entries))}
}

// tocLayer returns the layer whose TOC, of a format version still read,
// is at key in st.
func tocLayer(st *store.Store, key string) (digest.Digest, bool) {
	rest, ok := strings.CutSuffix(key, "/toc")
	if !ok {
		return "", false
	}
	i := strings.LastIndex(rest, "/")
	j := strings.LastIndex(rest[:max(i, 0)], "/")
	if i < 0 || j < 0 {
		return "", false
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(rest[j+1:i]), rest[i+1:])
	if d.Validate() != nil {
		return "", false
	}
	for v := lazy.MinVersion; v <= lazy.Version; v++ {
		if want, err := st.ExtraKey(lazy.VersionKey(v, d, "toc")); err == nil && want == key {
			return d, true
		}
	}
	return "", false // a format version not read
}

// denied reports whether err is S3 refusing access.
func denied(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && (ae.ErrorCode() == "AccessDenied" || ae.ErrorCode() == "Forbidden")
}

// lazyServer checks the lazy FUSE server, which serves the agent's lazy
// mounts from a process of its own: running, it reports its version and
// mounts; not running while lazy mounts are recorded, those layers are
// not served (the agent starts it again within seconds when it runs).
func (r *run) lazyServer(ctx context.Context) {
	const name = "lazy FUSE server"
	if r.cfg == nil {
		r.skip(name, "needs the agent config")
		return
	}
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	info, err := fused.NewClient(r.cfg.Root).Info(cctx)
	if err == nil {
		r.add(Check{Name: name, Status: OK, Detail: fmt.Sprintf("pid %d, version %s, %d lazy mounts (%s)", info.PID, info.Version, info.Mounts, fused.SocketPath(r.cfg.Root))})
		return
	}
	records, _ := os.ReadDir(filepath.Join(r.cfg.Root, "lazy", "mounts"))
	if len(records) == 0 {
		r.skip(name, "not running: no lazy mount (the agent starts it for lazy layers)")
		return
	}
	r.add(Check{Name: name, Status: Fail, Detail: fmt.Sprintf("%d lazy layers recorded but no server answers: %v", len(records), err),
		Fix: "start (or restart) the agent, which starts the server and mounts them again; see " + fused.LogPath(r.cfg.Root)})
}
