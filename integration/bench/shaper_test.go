package bench

import (
	"net"
	"sync"
	"time"
)

// shaper is a TCP proxy that makes loopback look like a network to S3:
// every response waits ttfb (from its request) before its first byte, and
// every connection is capped at rate bytes/s. On loopback a single stream is
// CPU bound and concurrency looks useless; against S3 a connection gives
// ~90 MB/s after tens of ms, and concurrency is what fills the NIC. The
// shaper lets the part size and concurrency defaults be chosen on that
// shape (scaled down, so 2 cores can still carry it).
type shaper struct {
	ln     net.Listener
	target string
	rate   float64 // bytes per second per connection
	ttfb   time.Duration
}

func newShaper(target string, rate float64, ttfb time.Duration) (*shaper, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &shaper{ln: ln, target: target, rate: rate, ttfb: ttfb}
	go s.serve()
	return s, nil
}

func (s *shaper) URL() string { return "http://" + s.ln.Addr().String() }

func (s *shaper) Close() error { return s.ln.Close() }

func (s *shaper) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go s.handle(c)
	}
}

func (s *shaper) handle(c net.Conn) {
	defer c.Close()
	u, err := net.Dial("tcp", s.target)
	if err != nil {
		return
	}
	defer u.Close()

	var mu sync.Mutex
	var due time.Time // earliest first byte of the pending response
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				mu.Lock()
				if due.IsZero() {
					due = time.Now().Add(s.ttfb)
				}
				mu.Unlock()
				if _, werr := u.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				u.(*net.TCPConn).CloseWrite() //nolint:errcheck
				return
			}
		}
	}()

	buf := make([]byte, 64<<10)
	next := time.Now()
	for {
		n, err := u.Read(buf)
		if n > 0 {
			mu.Lock()
			d := due
			due = time.Time{}
			mu.Unlock()
			if !d.IsZero() {
				time.Sleep(time.Until(d))
				next = d
			}
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
			next = later(next, time.Now()).Add(time.Duration(float64(n) / s.rate * float64(time.Second)))
			time.Sleep(time.Until(next))
		}
		if err != nil {
			return
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
