package server

import (
	"context"
	"errors"
	"io"

	"github.com/containerd/log"

	"github.com/s3snap/s3snap/lazy"
)

// verify checks a mounted layer once its prefetch has it whole: the tar
// its index rebuilds must hash to the diff ID the agent checked against
// the image (lazy.Layer.Verify). A mismatch marks the layer bad, so every
// read fails with EIO, is counted (s3snap_lazy_verify_failures_total, on
// the agent's /metrics too) and reported by List, so the agent never
// mounts that index again. A TOC is verified once per server.
func (s *server) verify(ctx context.Context, sv *served) {
	s.verifyFrom(ctx, sv, nil)
}

// verifyStreamed is verify for a layer the chunk cache cannot hold whole:
// its data object is read once, in parallel ranged reads, and not cached.
func (s *server) verifyStreamed(ctx context.Context, sv *served) {
	st := s.store(sv.req)
	if st == nil {
		return // not mapped any more: only the cache can be read
	}
	toc := sv.layer.TOC()
	ra, err := st.ExtraReaderAt(ctx, toc.Key("data"), toc.DataSize)
	if err != nil {
		log.G(ctx).WithError(err).WithField("layer", sv.req.Layer).Warn("lazy layer could not be verified")
		return
	}
	stream := toc.ParallelStream(ctx, ra, 2)
	defer stream.Close()
	s.verifyFrom(ctx, sv, stream)
}

// verifyFrom is verify reading the layer's data stream from stream, or
// through the cache if stream is nil.
func (s *server) verifyFrom(ctx context.Context, sv *served, stream io.Reader) {
	s.mu.Lock()
	done := sv.req.Verified || s.verified[sv.req.TOC] || s.bad[sv.req.TOC] != nil
	s.mu.Unlock()
	if done {
		return
	}
	diffID := sv.req.DiffID
	if diffID == "" {
		diffID = sv.layer.TOC().DiffID // readTOC checked they agree when both are set
	}
	var err error
	if stream != nil {
		err = sv.layer.VerifyStream(ctx, stream, diffID)
	} else {
		err = sv.layer.Verify(ctx, diffID)
	}
	fields := log.Fields{"layer": sv.req.Layer, "snapshot": sv.req.Name, "registry": sv.req.Host, "store": sv.req.Store}
	switch {
	case err == nil:
		s.mu.Lock()
		s.verified[sv.req.TOC] = true
		s.mu.Unlock()
		log.G(ctx).WithFields(fields).Debug("lazy layer verified")
	case errors.Is(err, lazy.ErrUnverifiable):
		log.G(ctx).WithFields(fields).Warn("lazy layer served from a v1 index, unverified; s3snap index rewrites it as v2")
	case sv.layer.Bad() != nil:
		s.mu.Lock()
		s.bad[sv.req.TOC] = err
		s.mu.Unlock()
		log.G(ctx).WithError(err).WithFields(fields).Error("lazy layer does not match the image: its reads now fail (EIO); remove the image and pull it again")
	case ctx.Err() == nil:
		log.G(ctx).WithError(err).WithFields(fields).Warn("lazy layer could not be verified")
	}
}
