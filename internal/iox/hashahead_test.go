package iox

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
)

// HashAhead passes every byte through and hashes every byte of the
// stream, whatever its length; a read error reaches the reader after the
// bytes before it; Close stops it early.
func TestHashAhead(t *testing.T) {
	for _, n := range []int{0, 1, hashBlock - 1, hashBlock, 3*hashBlock + hashBlock/2, (hashBlocks + 3) * hashBlock} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rand.IntN(256))
		}
		h := sha256.New()
		a := HashAhead(iotest.HalfReader(bytes.NewReader(data)), h)
		got, err := io.ReadAll(iotest.OneByteReader(io.LimitReader(a, int64(n/3))))
		if err != nil {
			t.Fatal(err)
		}
		rest, err := io.ReadAll(a)
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		a.Close()
		if got = append(got, rest...); !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read %d bytes, not the same", n, len(got))
		}
		if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
			t.Fatalf("%d bytes: hash is not the stream's", n)
		}
	}

	boom := errors.New("boom")
	a := HashAhead(io.MultiReader(bytes.NewReader(make([]byte, 5000)), iotest.ErrReader(boom)), sha256.New())
	got, err := io.ReadAll(a)
	if len(got) != 5000 || !errors.Is(err, boom) {
		t.Fatalf("read %d bytes, %v; want 5000 and the reader's error", len(got), err)
	}
	a.Close()

	// Closed early, with the goroutine blocked on a full queue: it ends.
	a = HashAhead(bytes.NewReader(make([]byte, (hashBlocks+4)*hashBlock)), sha256.New())
	if _, err := a.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	a.Close() // returns once the goroutine has
	if _, ok := <-a.done; ok {
		t.Fatal("the goroutine is still running after Close")
	}
}
