package lazy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// gate gives reads a container waits on priority over background
// prefetch: while any on-demand fetch is running (in any layer of the
// process: they share the cores and the connection to S3), prefetch
// starts no fetch and decodes no further chunk; it resumes once none is
// left. A semaphore alone would let prefetch hold the slots a reader
// needs.
type gate struct {
	mu    sync.Mutex
	busy  int           // on-demand fetches running
	clear chan struct{} // closed when busy drops to 0; nil while busy is 0
}

// demand is the process's priority gate.
var demand gate

// opened is when a layer was last opened (NewLayer: a mount), in Unix
// nanoseconds. Prefetch also waits until mountQuiet has passed since: an
// image being pulled mounts its layers one after another, and the pull
// (and the container's first reads after it) need the cores more than
// prefetch does.
var opened atomic.Int64

const mountQuiet = 500 * time.Millisecond

// enter marks an on-demand fetch running until the returned func is called.
func (g *gate) enter() (leave func()) {
	g.mu.Lock()
	if g.busy == 0 {
		g.clear = make(chan struct{})
	}
	g.busy++
	g.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			if g.busy--; g.busy == 0 {
				close(g.clear)
				g.clear = nil
			}
			g.mu.Unlock()
		})
	}
}

// yield waits (background work only) until no on-demand fetch is
// running and no layer was opened for mountQuiet.
func (g *gate) yield(ctx context.Context) error {
	for {
		g.mu.Lock()
		ch := g.clear
		g.mu.Unlock()
		if ch == nil {
			quiet := time.Until(time.Unix(0, opened.Load()).Add(mountQuiet))
			if quiet <= 0 {
				return ctx.Err()
			}
			t := time.NewTimer(quiet)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
			continue
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
