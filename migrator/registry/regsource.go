package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/internal/retry"
	"github.com/s3snap/s3snap/migrator"
	"github.com/s3snap/s3snap/store"
)

// Source returns repo's manifest ref (a tag, or a digest "sha256:...") as a
// copy Source. Manifests are read once and kept; blobs are streamed.
func (r *Registry) Source(repo, ref string) migrator.Source {
	return &registrySource{r: r, repo: repo, ref: ref, raw: map[digest.Digest][]byte{}}
}

type registrySource struct {
	r    *Registry
	repo string
	ref  string

	mu  sync.Mutex
	raw map[digest.Digest][]byte
}

func (s *registrySource) reference() (name.Reference, error) {
	rp, err := s.r.repository(s.repo)
	if err != nil {
		return nil, err
	}
	if d, err := digest.Parse(s.ref); err == nil {
		return rp.Digest(d.String()), nil
	}
	return rp.Tag(s.ref), nil
}

func (s *registrySource) Root(ctx context.Context) (ocispec.Descriptor, error) {
	ref, err := s.reference()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc, err := s.r.puller.Get(ctx, ref)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("get %s: %w", ref, classify(err))
	}
	d := digest.FromBytes(desc.Manifest)
	s.mu.Lock()
	s.raw[d] = desc.Manifest
	s.mu.Unlock()
	return ocispec.Descriptor{MediaType: string(desc.MediaType), Digest: d, Size: int64(len(desc.Manifest))}, nil
}

func (s *registrySource) Manifest(ctx context.Context, d digest.Digest) ([]byte, error) {
	s.mu.Lock()
	raw, ok := s.raw[d]
	s.mu.Unlock()
	if ok {
		return raw, nil
	}
	rp, err := s.r.repository(s.repo)
	if err != nil {
		return nil, err
	}
	desc, err := s.r.puller.Get(ctx, rp.Digest(d.String()))
	if err != nil {
		return nil, fmt.Errorf("get %s@%s: %w", rp, d, classify(err))
	}
	return desc.Manifest, nil
}

func (s *registrySource) Blob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	return s.r.openBlob(ctx, s.repo, desc)
}

// openBlob streams a blob. If the connection breaks part way, the reader
// resumes with a Range request where it stopped (registries, and the S3
// URLs ECR redirects to, serve ranges), so a reset late in a large layer
// costs little. Digest and size are checked by the caller.
func (r *Registry) openBlob(ctx context.Context, repo string, desc ocispec.Descriptor) (io.ReadCloser, error) {
	rp, err := r.repository(repo)
	if err != nil {
		return nil, err
	}
	t, err := r.transport(ctx, rp, transport.PullScope)
	if err != nil {
		return nil, err
	}
	u := url.URL{Scheme: rp.Scheme(), Host: rp.RegistryStr(), Path: fmt.Sprintf("/v2/%s/blobs/%s", rp.RepositoryStr(), desc.Digest)}
	br := &blobReader{ctx: ctx, client: &http.Client{Transport: t}, policy: r.policy, url: u.String(), size: desc.Size, what: rp.String() + "@" + desc.Digest.String()}
	if err := br.open(); err != nil {
		return nil, err
	}
	return br, nil
}

// blobReader reads a blob over HTTP, resuming with Range after a broken
// connection, as often and after the same waits as the registry's retry
// policy allows for one request. A resumed answer must be exactly the rest
// of the blob (a strict Content-Range check), or a whole blob to skip into.
type blobReader struct {
	ctx     context.Context
	client  *http.Client
	policy  retry.Policy
	url     string
	size    int64
	what    string
	off     int64
	body    io.ReadCloser
	resumes int
}

func (b *blobReader) open() error {
	req, err := http.NewRequestWithContext(b.ctx, http.MethodGet, b.url, nil)
	if err != nil {
		return err
	}
	if b.off > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", b.off))
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return fmt.Errorf("get blob %s: %w", b.what, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK && b.off == 0:
		b.body = resp.Body
		return nil
	case resp.StatusCode == http.StatusPartialContent && b.off > 0:
		if err := retry.CheckContentRange(resp.Header.Get("Content-Range"), b.off, -1, b.size); err != nil {
			resp.Body.Close()
			return fmt.Errorf("get blob %s from byte %d: %w", b.what, b.off, err)
		}
		b.body = resp.Body
		return nil
	case resp.StatusCode == http.StatusOK:
		// The server ignored Range: skip what was already read.
		if _, err := io.CopyN(io.Discard, resp.Body, b.off); err != nil {
			resp.Body.Close()
			return fmt.Errorf("get blob %s: %w", b.what, err)
		}
		b.body = resp.Body
		return nil
	}
	defer resp.Body.Close()
	err = transport.CheckError(resp, http.StatusOK)
	return fmt.Errorf("get blob %s: %w", b.what, classify(err))
}

func (b *blobReader) Read(p []byte) (int, error) {
	for {
		n, err := b.body.Read(p)
		b.off += int64(n)
		if err == nil || err == io.EOF && (b.size < 0 || b.off >= b.size) {
			return n, err
		}
		if n > 0 {
			// Hand over what we have; the error comes back next Read.
			return n, nil
		}
		if b.ctx.Err() != nil || b.resumes+1 >= b.policy.Tries() || (err != io.EOF && !retry.Transient(err)) {
			if err == io.EOF {
				err = fmt.Errorf("blob %s ended after %d of %d bytes: %w", b.what, b.off, b.size, store.ErrSizeMismatch)
			}
			return 0, err
		}
		b.resumes++
		b.body.Close()
		if serr := retry.Sleep(b.ctx, b.policy.Delay(b.resumes, retry.Retry, nil)); serr != nil {
			return 0, serr
		}
		if oerr := b.open(); oerr != nil {
			return 0, oerr
		}
	}
}

func (b *blobReader) Close() error {
	if b.body == nil {
		return nil
	}
	return b.body.Close()
}
