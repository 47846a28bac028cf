package lazy

import (
	"sync"

	"github.com/opencontainers/go-digest"
)

// recentBytes bounds the decoded chunks kept in memory (per process).
const recentBytes = 64 << 20

// recentChunks keeps the latest verified chunks that readahead decoded,
// so a sequential reader is served from memory rather than by reading
// back the cache file just written. Oldest out first; a chunk pushed out
// is still in the cache.
type recentChunks struct {
	mu    sync.Mutex
	data  map[digest.Digest][]byte
	order []digest.Digest
	bytes int64
}

var recent = recentChunks{data: map[digest.Digest][]byte{}}

func (r *recentChunks) get(d digest.Digest) ([]byte, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.data[d]
	return b, ok
}

func (r *recentChunks) put(d digest.Digest, b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.data[d]; ok {
		return
	}
	r.data[d] = b
	r.order = append(r.order, d)
	r.bytes += int64(len(b))
	for r.bytes > recentBytes && len(r.order) > 0 {
		old := r.order[0]
		r.order = r.order[1:]
		r.bytes -= int64(len(r.data[old]))
		delete(r.data, old)
	}
}
