package store

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// MaxConfigSize bounds an image config read from the bucket. Real ones
// are kilobytes; a bigger one is refused before it is decoded.
const MaxConfigSize = 8 << 20

// ImageConfig reads image config d whole, so its digest is checked before
// a byte of it is decoded, and refuses one over MaxConfigSize.
func (s *Store) ImageConfig(ctx context.Context, d digest.Digest) (*ocispec.Image, error) {
	rc, info, err := s.OpenBlob(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", d, err)
	}
	defer rc.Close()
	if info.Size > MaxConfigSize {
		return nil, fmt.Errorf("config %s is %d bytes, more than %d: %w", d, info.Size, MaxConfigSize, ErrInvalidManifest)
	}
	b, err := io.ReadAll(io.LimitReader(rc, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", d, err)
	}
	if len(b) > MaxConfigSize {
		return nil, fmt.Errorf("config %s is more than %d bytes: %w", d, MaxConfigSize, ErrInvalidManifest)
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("decode config %s: %w: %w", d, ErrInvalidManifest, err)
	}
	return &cfg, nil
}
