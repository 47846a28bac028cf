package server

import (
	"context"
	"errors"

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
	err := sv.layer.Verify(ctx, diffID)
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
