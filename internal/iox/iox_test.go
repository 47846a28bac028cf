package iox

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestCountingReader(t *testing.T) {
	c := &CountingReader{R: strings.NewReader("hello, world")}
	if _, err := io.Copy(io.Discard, c); err != nil || c.N != 12 {
		t.Errorf("counted %d bytes, %v; want 12", c.N, err)
	}
}

func TestContextReader(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := ContextReader(ctx, strings.NewReader("abcdef"))
	p := make([]byte, 3)
	if n, err := r.Read(p); n != 3 || err != nil {
		t.Fatalf("Read = %d, %v before cancel", n, err)
	}
	cancel()
	if n, err := r.Read(p); n != 0 || !errors.Is(err, context.Canceled) {
		t.Errorf("Read = %d, %v after cancel; want context.Canceled", n, err)
	}
}
