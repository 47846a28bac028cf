package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// clock is a settable time for the breaker.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }
func testURL(t *testing.T) string        { return "s3://breaker-test/" + t.Name() }
func statusErr(status int, code string) error {
	return &smithy.OperationError{ServiceID: "S3", OperationName: "HeadObject", Err: &awshttp.ResponseError{
		ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status, Header: http.Header{}}},
			Err:      &smithy.GenericAPIError{Code: code},
		},
	}}
}

var (
	errRefused = &smithy.OperationError{ServiceID: "S3", OperationName: "HeadObject",
		Err: &smithyhttp.RequestSendError{Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}}
	err503      = fmt.Errorf("exceeded maximum number of attempts, 3: %w", statusErr(503, "SlowDown"))
	err403      = statusErr(403, "AccessDenied")
	err404      = statusErr(404, "NotFound")
	errCanceled = fmt.Errorf("operation error S3: HeadObject: %w", context.Canceled)
	errDeadline = fmt.Errorf("operation error S3: HeadObject: %w", context.DeadlineExceeded)
)

func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// step is one request: the clock moves by wait, the request asks the
// breaker, and if let through takes took and ends with err.
type step struct {
	wait    time.Duration
	err     error
	took    time.Duration
	refused bool // want it refused
	probe   bool // want it to be the probe
	single  bool // want a single attempt
	state   breakerState
}

func TestBreaker(t *testing.T) {
	const cool = 15 * time.Second
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"threshold consecutive failures open it", []step{
			{err: errRefused, state: closed},
			{err: errRefused, single: true, state: closed},
			{err: err503, single: true, state: open},
			{refused: true, state: open},
			{wait: cool - time.Second, refused: true, state: open},
		}},
		{"an answer clears the count", []step{
			{err: errRefused, state: closed},
			{err: errRefused, single: true, state: closed},
			{err: err404, single: true, state: closed},
			{err: errRefused, state: closed},
			{err: nil, single: true, state: closed},
			{err: nil, state: closed},
		}},
		{"one slow failure opens it", []step{
			{err: errRefused, took: slowFailure, state: open},
			{refused: true, state: open},
		}},
		{"403 counts", []step{
			{err: err403, state: closed},
			{err: err403, single: true, state: closed},
			{err: err403, single: true, state: open},
		}},
		{"cancellations count nothing", []step{
			{err: errRefused, state: closed},
			{err: errCanceled, single: true, state: closed},
			{err: errDeadline, single: true, state: closed},
			{err: errRefused, single: true, state: closed},
			{err: errRefused, single: true, state: open},
		}},
		{"a deadline that waited long counts", []step{
			{err: errDeadline, took: slowFailure, state: open},
		}},
		{"probe after cooldown closes it", []step{
			{err: errRefused, took: slowFailure, state: open},
			{wait: cool, probe: true, single: true, err: err404, state: closed},
			{err: errRefused, state: closed},
		}},
		{"failed probe doubles the cooldown, up to 8x", []step{
			{err: errRefused, took: slowFailure, state: open},
			{wait: cool, probe: true, single: true, err: errRefused, state: open},
			{wait: 2*cool - time.Second, refused: true, state: open},
			{wait: time.Second, probe: true, single: true, err: errRefused, state: open},
			{wait: 4 * cool, probe: true, single: true, err: errRefused, state: open},
			{wait: 8 * cool, probe: true, single: true, err: errRefused, state: open},
			{wait: 8*cool - time.Second, refused: true, state: open},
			{wait: time.Second, probe: true, single: true, err: nil, state: closed},
			// Closed again: the next opening starts from the first cooldown.
			{err: errRefused, took: slowFailure, state: open},
			{wait: cool, probe: true, single: true, err: nil, state: closed},
		}},
		{"a cancelled probe leaves it to the next request", []step{
			{err: errRefused, took: slowFailure, state: open},
			{wait: cool, probe: true, single: true, err: errCanceled, state: halfOpen},
			{probe: true, single: true, err: nil, state: closed},
		}},
		{"a refusal passed on counts nothing", []step{
			{err: errRefused, state: closed},
			{err: fmt.Errorf("open blob: %w", ErrUnavailable), single: true, state: closed},
			{err: errRefused, single: true, state: closed},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			b := newBreaker(testURL(t), DefaultBreakerThreshold, cool, c.now)
			ctx := context.Background()
			for i, s := range tc.steps {
				c.advance(s.wait)
				tk, err := b.admit(ctx)
				if s.refused != (err != nil) {
					t.Fatalf("step %d: admit: %v, want refused %v", i, err, s.refused)
				}
				if err == nil {
					if tk.probe != s.probe || tk.single != s.single {
						t.Fatalf("step %d: ticket probe %v single %v, want %v %v", i, tk.probe, tk.single, s.probe, s.single)
					}
					c.advance(s.took)
					b.done(ctx, tk, s.err)
				} else if !errors.Is(err, ErrUnavailable) {
					t.Fatalf("step %d: refusal %v does not wrap ErrUnavailable", i, err)
				}
				if b.state != s.state {
					t.Fatalf("step %d: state %v, want %v", i, b.state, s.state)
				}
				want := 0.0
				if s.state != closed {
					want = 1
				}
				if g := gaugeValue(t, b.gauge); g != want {
					t.Fatalf("step %d: breaker_open gauge %v, want %v", i, g, want)
				}
			}
		})
	}
}

func TestBreakerHalfOpenLetsOneProbe(t *testing.T) {
	c := newClock()
	b := newBreaker(testURL(t), 1, 10*time.Second, c.now)
	ctx := context.Background()
	tk, _ := b.admit(ctx)
	b.done(ctx, tk, errRefused)
	c.advance(10 * time.Second)
	probe, err := b.admit(ctx)
	if err != nil || !probe.probe {
		t.Fatalf("after the cooldown: %+v %v, want the probe", probe, err)
	}
	_, err = b.admit(ctx)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "probe in flight") {
		t.Fatalf("while probing: %v, want refused until the probe answers", err)
	}
	b.done(ctx, probe, nil)
	if tk, err := b.admit(ctx); err != nil || tk.probe || tk.single {
		t.Fatalf("after the probe succeeded: %+v %v", tk, err)
	}
}

func TestBreakerRefusalNamesStoreAndTime(t *testing.T) {
	c := newClock()
	b := newBreaker("s3://bkt/pfx", 1, 20*time.Second, c.now)
	ctx := context.Background()
	tk, _ := b.admit(ctx)
	b.done(ctx, tk, errRefused)
	_, err := b.admit(ctx)
	for _, want := range []string{"s3://bkt/pfx", "2026-01-02T03:04:25Z", "connection refused"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}
}

// TestBreakerCancelsInFlight: a request let through before the breaker
// opened stops at once, with ErrUnavailable, when another request opens it.
func TestBreakerCancelsInFlight(t *testing.T) {
	c := newClock()
	b := newBreaker(testURL(t), 1, 10*time.Second, c.now)
	ctx := context.Background()
	slow, _ := b.admit(ctx)
	rctx, release := bind(ctx, slow)
	other, _ := b.admit(ctx)
	b.done(ctx, other, errRefused)
	select {
	case <-rctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the request in flight was not cancelled when the breaker opened")
	}
	err := release(fmt.Errorf("operation error S3: HeadObject: %w", rctx.Err()))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("cancelled request error %v, want ErrUnavailable", err)
	}
	b.done(ctx, slow, err)
	if b.state != open {
		t.Fatalf("state %v", b.state)
	}

	// A request that failed on its own keeps its error.
	c.advance(10 * time.Second)
	probe, _ := b.admit(ctx)
	b.done(ctx, probe, nil)
	tk, _ := b.admit(ctx)
	_, release = bind(ctx, tk)
	if err := release(err404); !errors.Is(err, err404) {
		t.Fatalf("release changed %v", err)
	}
}

func TestBreakerStragglers(t *testing.T) {
	c := newClock()
	b := newBreaker(testURL(t), 1, 10*time.Second, c.now)
	ctx := context.Background()
	late1, _ := b.admit(ctx)
	late2, _ := b.admit(ctx)
	first, _ := b.admit(ctx)
	b.done(ctx, first, errRefused)
	until := b.until
	c.advance(5 * time.Second)
	b.done(ctx, late1, errRefused) // already open: does not extend it
	if b.state != open || b.until != until {
		t.Fatalf("a late failure changed the breaker: %v until %v", b.state, b.until)
	}
	b.done(ctx, late2, nil) // S3 answered: it is back
	if b.state != closed {
		t.Fatalf("state %v after S3 answered, want closed", b.state)
	}
}

func TestBreakerOff(t *testing.T) {
	if b := newBreaker(testURL(t), 0, time.Second, time.Now); b != nil {
		t.Fatal("threshold 0 made a breaker")
	}
	var b *breaker
	for range 10 {
		tk, err := b.admit(context.Background())
		if err != nil || tk.single {
			t.Fatalf("nil breaker: %+v %v", tk, err)
		}
		b.done(context.Background(), tk, errRefused)
	}
}
