package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/s3snap/s3snap/migrator"
	"github.com/s3snap/s3snap/store"
)

// Registry is also a migration Target: registry to registry copies keep
// every manifest byte for byte, so digests are preserved.
var _ migrator.Target = (*Registry)(nil)

// PutBlob uploads the blob unless repo already has it. The registry itself
// verifies the digest when the upload is committed; the stream is verified on
// the way too, so a bad source is named as such.
func (r *Registry) PutBlob(ctx context.Context, repo string, desc ocispec.Descriptor, open migrator.Opener) (bool, error) {
	return r.flight.Do(ctx, repo+"@"+desc.Digest.String(), func() (bool, error) {
		rp, err := r.repository(repo)
		if err != nil {
			return false, err
		}
		ok, err := r.hasBlob(ctx, rp, desc.Digest)
		if err != nil || ok {
			return ok, err
		}
		l := &streamLayer{ctx: ctx, desc: desc, open: open}
		if err := r.pusher.Upload(ctx, rp, l); err != nil {
			if l.err != nil {
				return false, l.err
			}
			return false, fmt.Errorf("upload to %s: %w", rp, classify(err))
		}
		return false, nil
	})
}

// hasBlob asks the registry with a HEAD.
func (r *Registry) hasBlob(ctx context.Context, rp name.Repository, d digest.Digest) (bool, error) {
	t, err := r.transport(ctx, rp, transport.PushScope)
	if err != nil {
		return false, err
	}
	u := url.URL{Scheme: rp.Scheme(), Host: rp.RegistryStr(), Path: fmt.Sprintf("/v2/%s/blobs/%s", rp.RepositoryStr(), d)}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, u.String(), nil)
	if err != nil {
		return false, err
	}
	resp, err := (&http.Client{Transport: t}).Do(req)
	if err != nil {
		return false, fmt.Errorf("head blob %s in %s: %w", d, rp, err)
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("head blob %s in %s: %w", d, rp, classify(transport.CheckError(resp, http.StatusOK)))
}

func (r *Registry) PutManifest(ctx context.Context, repo string, desc ocispec.Descriptor, raw []byte) error {
	rp, err := r.repository(repo)
	if err != nil {
		return err
	}
	return r.putManifest(ctx, rp.Digest(desc.Digest.String()), desc, raw)
}

func (r *Registry) Tag(ctx context.Context, repo, tag string, desc ocispec.Descriptor, raw []byte) error {
	rp, err := r.repository(repo)
	if err != nil {
		return err
	}
	return r.putManifest(ctx, rp.Tag(tag), desc, raw)
}

func (r *Registry) putManifest(ctx context.Context, ref name.Reference, desc ocispec.Descriptor, raw []byte) error {
	if raw == nil {
		return fmt.Errorf("put %s: no manifest bytes", ref)
	}
	if err := r.pusher.Put(ctx, ref, rawManifest{raw: raw, mediaType: desc.MediaType}); err != nil {
		return fmt.Errorf("put %s: %w", ref, classify(err))
	}
	return nil
}

func (r *Registry) Resolve(ctx context.Context, repo, tag string) (digest.Digest, error) {
	rp, err := r.repository(repo)
	if err != nil {
		return "", err
	}
	d, err := r.puller.Head(ctx, rp.Tag(tag))
	if err != nil {
		return "", fmt.Errorf("tag %s:%s: %w", rp, tag, classify(err))
	}
	return digest.Digest(d.Digest.String()), nil
}

func (r *Registry) HasManifest(ctx context.Context, repo string, d digest.Digest) (bool, error) {
	rp, err := r.repository(repo)
	if err != nil {
		return false, err
	}
	_, err = r.puller.Head(ctx, rp.Digest(d.String()))
	if err == nil {
		return true, nil
	}
	if err = classify(err); isNotFound(err) {
		return false, nil
	}
	return false, err
}

func (r *Registry) Check(ctx context.Context, repo string, d digest.Digest, deep bool) error {
	rp, err := r.repository(repo)
	if err != nil {
		return err
	}
	src := r.Source(repo, d.String())
	return migrator.WalkManifests(ctx, d, src.Manifest, func(ctx context.Context, b ocispec.Descriptor) error {
		if deep {
			rc, err := r.openBlob(ctx, repo, b)
			if err != nil {
				return err
			}
			defer rc.Close()
			return migrator.DrainVerify(rc, b)
		}
		ok, err := r.hasBlob(ctx, rp, b.Digest)
		if err == nil && !ok {
			err = fmt.Errorf("not in %s: %w", rp, store.ErrMissingReference)
		}
		return err
	})
}

// rawManifest hands go-containerregistry a manifest's exact bytes.
type rawManifest struct {
	raw       []byte
	mediaType string
}

func (m rawManifest) RawManifest() ([]byte, error) { return m.raw, nil }

func (m rawManifest) MediaType() (types.MediaType, error) { return types.MediaType(m.mediaType), nil }

// streamLayer is a v1.Layer whose compressed bytes are a source blob,
// opened when the pusher asks for them and verified while streamed.
type streamLayer struct {
	ctx  context.Context
	desc ocispec.Descriptor
	open migrator.Opener
	err  error // the source's or verification's error, if any
}

func (l *streamLayer) Digest() (v1.Hash, error) { return v1.NewHash(l.desc.Digest.String()) }
func (l *streamLayer) DiffID() (v1.Hash, error) {
	return v1.Hash{}, fmt.Errorf("diffid of a streamed layer is unknown")
}
func (l *streamLayer) Size() (int64, error) { return l.desc.Size, nil }
func (l *streamLayer) MediaType() (types.MediaType, error) {
	return types.MediaType(l.desc.MediaType), nil
}
func (l *streamLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, fmt.Errorf("a streamed layer is only read compressed")
}

func (l *streamLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.open(l.ctx)
	if err != nil {
		l.err = err
		return nil, err
	}
	return &verifyReader{rc: rc, v: l.desc.Digest.Verifier(), desc: l.desc, fail: func(err error) { l.err = err }}, nil
}

// verifyReader returns an error instead of io.EOF if what it read is not
// desc's size and digest.
type verifyReader struct {
	rc   io.ReadCloser
	v    digest.Verifier
	desc ocispec.Descriptor
	n    int64
	fail func(error)
}

func (r *verifyReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	r.v.Write(p[:n])
	r.n += int64(n)
	if err == io.EOF {
		switch {
		case r.desc.Size >= 0 && r.n != r.desc.Size:
			err = fmt.Errorf("source blob %s: got %d bytes, want %d: %w", r.desc.Digest, r.n, r.desc.Size, store.ErrSizeMismatch)
		case !r.v.Verified():
			err = fmt.Errorf("source blob %s: content does not hash to its digest: %w", r.desc.Digest, store.ErrDigestMismatch)
		}
	}
	if err != nil && err != io.EOF {
		r.fail(err)
	}
	return n, err
}

func (r *verifyReader) Close() error { return r.rc.Close() }
