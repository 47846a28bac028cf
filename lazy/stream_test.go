package lazy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
)

// ParallelStream gives the same stream as DataStream, for any chunk
// size and any number of jobs; its rebuilt tar hashes to the diff ID; a
// truncated data object or a damaged frame is an error, never a short
// stream taken for whole.
func TestParallelStream(t *testing.T) {
	entries := []tarEntry{dir("bin"), reg("bin/big", random(1, 3<<20+17)), reg("etc/a", []byte("a")), reg("etc/empty", nil), reg("lib/x", random(2, 100_000))}
	for _, chunk := range []int64{1024, 64 << 10, DefaultChunkSize} {
		b := build(t, chunk, entries...)
		want, err := io.ReadAll(b.toc.DataStream(bytes.NewReader(b.data)))
		if err != nil {
			t.Fatal(err)
		}
		for _, jobs := range []int{1, 3, 0} {
			s := b.toc.ParallelStream(context.Background(), bytes.NewReader(b.data), jobs)
			tr, err := b.toc.TarReader(s)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			if _, err := io.Copy(h, tr); err != nil {
				t.Fatalf("chunk %d, jobs %d: %v", chunk, jobs, err)
			}
			if got := digest.NewDigest(digest.SHA256, h); got != b.toc.DiffID {
				t.Fatalf("chunk %d, jobs %d: rebuilt tar %s, want %s", chunk, jobs, got, b.toc.DiffID)
			}
			s.Close()
			got, err := io.ReadAll(b.toc.ParallelStream(context.Background(), bytes.NewReader(b.data), jobs))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("chunk %d, jobs %d: %d bytes (err %v), want the %d of DataStream", chunk, jobs, len(got), err, len(want))
			}
		}
	}
	b := build(t, 1024, entries...)
	for name, data := range map[string][]byte{
		"truncated": b.data[:len(b.data)-10],
		"damaged":   append(append([]byte{}, b.data[:100]...), bytes.Repeat([]byte{0xff}, len(b.data)-100)...),
	} {
		_, err := io.ReadAll(b.toc.ParallelStream(context.Background(), bytes.NewReader(data), 2))
		if err == nil {
			t.Errorf("%s data object: no error", name)
		}
		if name == "damaged" && !errors.Is(err, ErrCorruptChunk) {
			t.Errorf("damaged data object: %v, want ErrCorruptChunk", err)
		}
	}

	// A frame that decodes to more than its chunk holds (the first
	// chunk's frame in the last chunk's place) is caught, not written
	// past the chunk.
	last := len(b.toc.Chunks) - 1
	if b.toc.chunkLen(last) == b.toc.ChunkSize {
		t.Fatal("test image: the last chunk should be short")
	}
	first := b.toc.Chunks[0]
	lie := *b.toc
	lie.Chunks = append([]Chunk(nil), b.toc.Chunks...)
	lie.Chunks[last].Size = first.Size
	data := append(append([]byte{}, b.data[:lie.Chunks[last].Offset]...), b.data[first.Offset:first.Offset+first.Size]...)
	lie.DataSize = int64(len(data))
	for _, jobs := range []int{1, 3} {
		if _, err := io.ReadAll(lie.ParallelStream(context.Background(), bytes.NewReader(data), jobs)); !errors.Is(err, ErrCorruptChunk) {
			t.Errorf("jobs %d: a frame bigger than its chunk: %v, want ErrCorruptChunk", jobs, err)
		}
	}
}

// FuzzParallelStream: a damaged or hostile data object behind a valid
// index never panics the parallel stream nor makes it return more or less
// than the index's stream length without an error. (Decoded bytes may
// differ without error: the stream leaves the check to the rebuilt tar's
// digest, as TestAgentEagerFromIndex shows.)
func FuzzParallelStream(f *testing.F) {
	b := build(&testing.T{}, 1024, dir("bin"), reg("bin/a", random(3, 5000)), reg("etc/b", []byte("b")))
	f.Add(b.data)
	f.Add(b.data[:len(b.data)/2])
	f.Fuzz(func(t *testing.T, data []byte) {
		jobs := len(data)%3 + 1
		s := b.toc.ParallelStream(context.Background(), bytes.NewReader(data), jobs)
		defer s.Close()
		got, err := io.ReadAll(s)
		if err == nil && int64(len(got)) != b.toc.StreamSize() {
			t.Fatalf("%d bytes without an error, the index says %d", len(got), b.toc.StreamSize())
		}
	})
}
