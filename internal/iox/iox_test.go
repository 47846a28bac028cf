package iox

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
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

// LockedReader shared by goroutines gives each byte to exactly one of
// them (run with -race).
func TestLockedReader(t *testing.T) {
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i)
	}
	l := &LockedReader{R: iotest.HalfReader(bytes.NewReader(data))}
	var wg sync.WaitGroup
	counts := make([]int, 4)
	for g := range counts {
		wg.Go(func() {
			buf := make([]byte, 1000)
			for {
				n, err := l.Read(buf)
				counts[g] += n
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	total := 0
	for _, c := range counts {
		total += c
	}
	if total != len(data) {
		t.Fatalf("%d bytes read in all, want %d", total, len(data))
	}
}
