// Package faultproxy is an HTTP reverse proxy that sits between an S3 client
// and a real S3 server and injects network and server faults, so tests
// exercise the real client code against a real server instead of a mock.
//
// Requests are forwarded unchanged, Host header included, so SigV4
// signatures made for the proxy's address stay valid. Rules are
// deterministic: a rule faults the Nth request it matches, the first N, or
// all of them, and counts what it saw.
package faultproxy

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Fault is what a rule does to a request it fires on.
type Fault int

const (
	// Pass forwards the request unchanged; the rule only counts.
	Pass Fault = iota
	// Reset closes the TCP connection with a RST after After bytes of the
	// response body, or before any response when After < 0.
	Reset
	// SlowDown answers 503 with S3's SlowDown XML error (and Retry-After
	// if RetryAfter > 0) without forwarding the request.
	SlowDown
	// Truncate sends the real status and headers, Content-Length included,
	// then After bytes of the body, then closes the connection (FIN).
	Truncate
	// FlipByte forwards the response with the body byte at offset After
	// inverted; headers, length and everything else are unchanged.
	FlipByte
	// Stall holds the response for Delay: before forwarding the request
	// when After <= 0, or after After bytes of the body.
	Stall
	// Status answers with HTTP status Status and S3 error code Code without
	// forwarding, e.g. 500 InternalError or 403 AccessDenied.
	Status
)

func (f Fault) String() string {
	switch f {
	case Pass:
		return "pass"
	case Reset:
		return "reset"
	case SlowDown:
		return "slowdown"
	case Truncate:
		return "truncate"
	case FlipByte:
		return "flipbyte"
	case Stall:
		return "stall"
	case Status:
		return "status"
	}
	return fmt.Sprintf("fault(%d)", int(f))
}

// Rule selects requests and says which of them to fault.
type Rule struct {
	// Method matches the HTTP method; empty matches any.
	Method string
	// Key matches the S3 object key, path-style (/bucket/key) or
	// virtual-hosted (/key); empty matches any.
	Key string
	// Match, if set, must also return true.
	Match func(*http.Request) bool

	// Nth faults only the Nth matching request (1-based). First faults the
	// first First matching requests. With neither, every match is faulted.
	Nth   int
	First int

	Fault      Fault
	After      int64         // byte offset for Reset, Truncate, FlipByte, Stall
	Delay      time.Duration // for Stall
	RetryAfter int           // seconds, for SlowDown and Status; 0: no header
	Status     int           // for Status
	Code       string        // S3 error code for Status

	// Hook, if set, runs synchronously when the rule fires, before the
	// fault: a test can change the object on the server at a known point.
	Hook func(*http.Request)
}

// Handle counts what one rule saw.
type Handle struct {
	matched, fired atomic.Int64
}

// Matched returns how many requests matched the rule.
func (h *Handle) Matched() int { return int(h.matched.Load()) }

// Fired returns how many requests the rule faulted.
func (h *Handle) Fired() int { return int(h.fired.Load()) }

// Request is one request seen by the proxy.
type Request struct {
	Method  string
	Path    string
	Range   string
	IfMatch string
	Fault   Fault // Pass when no rule fired
}

type rule struct {
	Rule
	h *Handle
}

// due reports whether the rule fires on its nth match.
func (r *rule) due(n int64) bool {
	switch {
	case r.Nth > 0:
		return n == int64(r.Nth)
	case r.First > 0:
		return n <= int64(r.First)
	}
	return true
}

func (r *rule) matches(req *http.Request) bool {
	if r.Method != "" && !strings.EqualFold(r.Method, req.Method) {
		return false
	}
	if r.Key != "" && !keyMatches(req.URL.Path, r.Key) {
		return false
	}
	return r.Match == nil || r.Match(req)
}

// keyMatches reports whether path addresses key, path-style or virtual-hosted.
func keyMatches(path, key string) bool {
	p := strings.TrimPrefix(path, "/")
	if p == key {
		return true
	}
	_, rest, ok := strings.Cut(p, "/")
	return ok && rest == key
}

// Proxy is a running fault-injecting proxy.
type Proxy struct {
	target    *url.URL
	addr      string // host:port the proxy listens on, kept across Down/Up
	transport *http.Transport
	rp        *httputil.ReverseProxy

	srvMu sync.Mutex
	srv   *http.Server // nil while Down
	ln    net.Listener

	mu    sync.Mutex
	rules []*rule
	log   []Request
	count atomic.Int64
	seq   atomic.Int64
}

// New starts a proxy on 127.0.0.1 (a free port) in front of target, an
// http:// URL such as "http://127.0.0.1:19000".
func New(target string) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return nil, fmt.Errorf("faultproxy: bad target %q", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{
		target: u,
		addr:   ln.Addr().String(),
		transport: &http.Transport{
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     30 * time.Second,
			// Forward Accept-Encoding as the client sent it (the
			// transport would otherwise ask for gzip).
			DisableCompression: true,
		},
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			// SigV4 signs the Host header: keep the client's.
			pr.Out.Host = pr.In.Host
		},
		Transport: p.transport,
		// Flush every write so Stall and the byte counts of faults
		// are what the client sees, not what sits in a buffer.
		FlushInterval:  -1,
		ModifyResponse: modifyResponse,
		// Clients that give up mid-fault (the point of most tests)
		// would fill the test output with "proxy error" lines.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	p.serveOn(ln)
	return p, nil
}

// serveOn starts an HTTP server on ln. Caller holds srvMu or owns p alone.
func (p *Proxy) serveOn(ln net.Listener) {
	p.ln = ln
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve), ReadHeaderTimeout: 10 * time.Second}
	go p.srv.Serve(ln) //nolint:errcheck // returns ErrServerClosed on Close
}

// URL is the proxy's base URL, to use as the S3 endpoint.
func (p *Proxy) URL() string { return "http://" + p.addr }

// Down stops the proxy listening and drops every connection it holds, so
// clients get "connection refused", as from a stopped S3 server, until Up.
// Rules and the request log are kept.
func (p *Proxy) Down() error {
	p.srvMu.Lock()
	defer p.srvMu.Unlock()
	if p.srv == nil {
		return nil
	}
	// Close the listener here: Serve may not have taken it up yet, and
	// then srv.Close alone would leave it open for a moment.
	p.ln.Close()
	err := p.srv.Close()
	p.srv, p.ln = nil, nil
	p.transport.CloseIdleConnections()
	return err
}

// Up listens again, on the same address, after Down.
func (p *Proxy) Up() error {
	p.srvMu.Lock()
	defer p.srvMu.Unlock()
	if p.srv != nil {
		return nil
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("faultproxy: listen again on %s: %w", p.addr, err)
	}
	p.serveOn(ln)
	return nil
}

// Add appends a rule. Rules are tried in order; the first that matches and
// is due fires, and every matching rule counts the request.
func (p *Proxy) Add(r Rule) *Handle {
	h := &Handle{}
	p.mu.Lock()
	p.rules = append(p.rules, &rule{Rule: r, h: h})
	p.mu.Unlock()
	return h
}

// Reset removes all rules and clears the request log and counter.
func (p *Proxy) Reset() {
	p.mu.Lock()
	p.rules = nil
	p.log = nil
	p.count.Store(0)
	p.mu.Unlock()
}

// Count returns how many requests reached the proxy since New or Reset.
func (p *Proxy) Count() int { return int(p.count.Load()) }

// Requests returns the requests seen since New or Reset, in arrival order.
func (p *Proxy) Requests() []Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Request(nil), p.log...)
}

// Close stops the proxy and closes its connections.
func (p *Proxy) Close() error { return p.Down() }

// pick counts req against every matching rule and returns the rule that
// fires, if any, and logs the request.
func (p *Proxy) pick(req *http.Request) *rule {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.count.Add(1)
	var fired *rule
	for _, r := range p.rules {
		if !r.matches(req) {
			continue
		}
		n := r.h.matched.Add(1)
		if fired == nil && r.due(n) {
			r.h.fired.Add(1)
			fired = r
		}
	}
	entry := Request{
		Method:  req.Method,
		Path:    req.URL.Path,
		Range:   req.Header.Get("Range"),
		IfMatch: req.Header.Get("If-Match"),
	}
	if fired != nil {
		entry.Fault = fired.Fault
	}
	p.log = append(p.log, entry)
	return fired
}

type ruleKey struct{}

func (p *Proxy) serve(w http.ResponseWriter, req *http.Request) {
	r := p.pick(req)
	if r == nil || r.Fault == Pass {
		if r != nil && r.Hook != nil {
			r.Hook(req)
		}
		p.rp.ServeHTTP(w, req)
		return
	}
	if r.Hook != nil {
		r.Hook(req)
	}
	switch r.Fault {
	case SlowDown:
		if r.RetryAfter > 0 {
			w.Header().Set("Retry-After", fmt.Sprint(r.RetryAfter))
		}
		p.s3Error(w, req, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
	case Status:
		if r.RetryAfter > 0 {
			w.Header().Set("Retry-After", fmt.Sprint(r.RetryAfter))
		}
		code := r.Code
		if code == "" {
			code = http.StatusText(r.Status)
		}
		p.s3Error(w, req, r.Status, code, "injected by faultproxy")
	case Reset, Truncate:
		p.cut(w, req, r)
	case Stall:
		if r.After <= 0 {
			t := time.NewTimer(r.Delay)
			select {
			case <-t.C:
			case <-req.Context().Done():
				t.Stop()
				return
			}
		}
		fallthrough
	default:
		p.rp.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), ruleKey{}, r)))
	}
}

// s3Error writes an S3-style XML error response.
func (p *Proxy) s3Error(w http.ResponseWriter, req *http.Request, status int, code, msg string) {
	id := fmt.Sprintf("faultproxy-%d", p.seq.Add(1))
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("x-amz-request-id", id)
	body := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<Error><Code>%s</Code><Message>%s</Message><Resource>%s</Resource><RequestId>%s</RequestId></Error>`,
		code, msg, req.URL.Path, id)
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(status)
	if req.Method != http.MethodHead {
		io.WriteString(w, body) //nolint:errcheck // the client may be gone
	}
}

// cut forwards the request, then writes the real response head and only
// After bytes of the body on the raw connection before closing it: with a
// RST for Reset, a FIN for Truncate.
func (p *Proxy) cut(w http.ResponseWriter, req *http.Request, r *rule) {
	conn, bufrw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "faultproxy: hijack: "+err.Error(), http.StatusInternalServerError)
		return
	}
	defer conn.Close()
	if r.Fault == Reset && r.After < 0 {
		abort(conn)
		return
	}

	out := req.Clone(req.Context())
	out.RequestURI = ""
	out.URL.Scheme = p.target.Scheme
	out.URL.Host = p.target.Host
	out.Host = req.Host
	resp, err := p.transport.RoundTrip(out)
	if err != nil {
		abort(conn)
		return
	}
	defer resp.Body.Close()

	fmt.Fprintf(bufrw, "HTTP/1.1 %s\r\n", resp.Status)
	h := resp.Header.Clone()
	h.Del("Transfer-Encoding")
	if resp.ContentLength >= 0 {
		h.Set("Content-Length", fmt.Sprint(resp.ContentLength))
	}
	h.Write(bufrw) //nolint:errcheck // checked at Flush
	bufrw.WriteString("\r\n")
	if req.Method != http.MethodHead && r.After > 0 {
		io.CopyN(bufrw, resp.Body, r.After) //nolint:errcheck // checked at Flush
	}
	if err := bufrw.Flush(); err != nil {
		return
	}
	if r.Fault == Reset {
		abort(conn)
		return
	}
	// Truncate: an orderly close, so the client sees exactly After bytes
	// and then EOF before Content-Length.
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.CloseWrite() //nolint:errcheck
	}
}

// abort closes conn with a TCP RST rather than a FIN.
func abort(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) //nolint:errcheck
	}
	conn.Close()
}

// modifyResponse applies body faults (FlipByte, Stall after K bytes) to a
// forwarded response.
func modifyResponse(resp *http.Response) error {
	r, _ := resp.Request.Context().Value(ruleKey{}).(*rule)
	if r == nil || resp.Body == nil {
		return nil
	}
	switch r.Fault {
	case FlipByte, Stall:
		resp.Body = &faultBody{ReadCloser: resp.Body, r: r, ctx: resp.Request.Context()}
	}
	return nil
}

// faultBody flips or stalls at byte After of a response body.
type faultBody struct {
	io.ReadCloser
	r    *rule
	ctx  context.Context
	off  int64
	done bool
}

func (b *faultBody) Read(p []byte) (int, error) {
	if !b.done && b.r.Fault == Stall && b.off == b.r.After {
		b.done = true
		t := time.NewTimer(b.r.Delay)
		select {
		case <-t.C:
		case <-b.ctx.Done():
			t.Stop()
			return 0, b.ctx.Err()
		}
	}
	if !b.done && b.r.Fault == Stall && b.off < b.r.After {
		// Stop at the stall point so the bytes before it are flushed.
		p = p[:min(int64(len(p)), b.r.After-b.off)]
	}
	n, err := b.ReadCloser.Read(p)
	if !b.done && b.r.Fault == FlipByte && b.r.After >= b.off && b.r.After < b.off+int64(n) {
		p[b.r.After-b.off] ^= 0xff
		b.done = true
	}
	b.off += int64(n)
	return n, err
}
