package faultproxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
)

// upstream serves 1000 known bytes at any path and records the Host it saw.
func upstream(t *testing.T) (*httptest.Server, []byte, *string) {
	body := bytes.Repeat([]byte("0123456789"), 100)
	var host string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host = r.Host
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv, body, &host
}

func newProxy(t *testing.T, target string) *Proxy {
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func get(t *testing.T, url string) (*http.Response, []byte, error) {
	t.Helper()
	// A fresh connection per request: faults close connections.
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func TestPassKeepsHost(t *testing.T) {
	srv, body, host := upstream(t)
	p := newProxy(t, srv.URL)
	_, got, err := get(t, p.URL()+"/bucket/key")
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("pass-through: %v", err)
	}
	if want := strings.TrimPrefix(p.URL(), "http://"); *host != want {
		t.Fatalf("upstream saw Host %q, want the client's %q", *host, want)
	}
	if p.Count() != 1 || len(p.Requests()) != 1 || p.Requests()[0].Path != "/bucket/key" {
		t.Fatalf("count %d, log %+v", p.Count(), p.Requests())
	}
}

func TestNthAndFirst(t *testing.T) {
	srv, _, _ := upstream(t)
	p := newProxy(t, srv.URL)
	nth := p.Add(Rule{Key: "a", Nth: 2, Fault: Status, Status: 500, Code: "InternalError"})
	first := p.Add(Rule{Key: "b", First: 2, Fault: SlowDown, RetryAfter: 3})
	var statuses []int
	for _, k := range []string{"a", "a", "a", "b", "b", "b", "c"} {
		resp, body, err := get(t, p.URL()+"/bucket/"+k)
		if err != nil {
			t.Fatal(err)
		}
		statuses = append(statuses, resp.StatusCode)
		if resp.StatusCode == 503 && (!strings.Contains(string(body), "<Code>SlowDown</Code>") || resp.Header.Get("Retry-After") != "3") {
			t.Fatalf("slowdown response: %s %v", body, resp.Header)
		}
	}
	if fmt.Sprint(statuses) != "[200 500 200 503 503 200 200]" {
		t.Fatalf("statuses %v", statuses)
	}
	if nth.Matched() != 3 || nth.Fired() != 1 || first.Matched() != 3 || first.Fired() != 2 {
		t.Fatalf("nth %d/%d first %d/%d", nth.Matched(), nth.Fired(), first.Matched(), first.Fired())
	}
	p.Reset()
	if p.Count() != 0 {
		t.Fatal("Reset kept the count")
	}
	if resp, _, _ := get(t, p.URL()+"/bucket/a"); resp.StatusCode != 200 {
		t.Fatal("Reset kept the rules")
	}
}

func TestTruncateAndFlip(t *testing.T) {
	srv, body, _ := upstream(t)
	p := newProxy(t, srv.URL)
	p.Add(Rule{Key: "t", Fault: Truncate, After: 123})
	p.Add(Rule{Key: "f", Fault: FlipByte, After: 500})
	p.Add(Rule{Key: "r", Fault: Reset, After: -1})

	resp, got, err := get(t, p.URL()+"/bucket/t")
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != 123 || resp.ContentLength != 1000 {
		t.Fatalf("truncate: %d bytes of %d, err %v", len(got), resp.ContentLength, err)
	}
	_, got, err = get(t, p.URL()+"/bucket/f")
	if err != nil || len(got) != 1000 || got[500] != body[500]^0xff || !bytes.Equal(got[:500], body[:500]) || !bytes.Equal(got[501:], body[501:]) {
		t.Fatalf("flip: err %v", err)
	}
	if _, _, err := get(t, p.URL()+"/bucket/r"); err == nil {
		t.Fatal("reset before headers: no error")
	}
}

func TestDownRefusesUntilUp(t *testing.T) {
	srv, body, _ := upstream(t)
	p := newProxy(t, srv.URL)
	if err := p.Down(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := get(t, p.URL()+"/bucket/key"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("while down: %v, want connection refused", err)
	}
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	if _, got, err := get(t, p.URL()+"/bucket/key"); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("after up: %v", err)
	}
}
