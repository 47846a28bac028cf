package lazy

import (
	"context"
	"sync"
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

// yield waits (background work only) until no on-demand fetch is running.
func (g *gate) yield(ctx context.Context) error {
	for {
		g.mu.Lock()
		ch := g.clear
		g.mu.Unlock()
		if ch == nil {
			return ctx.Err()
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
