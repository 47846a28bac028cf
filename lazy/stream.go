package lazy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/s3snap/s3snap/internal/iox"
)

// maxStreamJobs bounds a stream's runs in flight by default, and so its
// memory (each run holds up to runChunks*DefaultChunkSize decoded): 64
// cores need no more than 16 runs of 8MiB to keep a layer's reader fed.
const maxStreamJobs = 16

// runChunks is how many chunks one ranged read of a parallel stream
// covers (DefaultChunkSize each: 8 MiB of file data a read).
const runChunks = 8

// ParallelStream returns the layer's uncompressed data stream, in order,
// read from its data object ra with up to jobs ranged reads in flight and
// their chunks decoded on as many goroutines (jobs <= 0: GOMAXPROCS+2, so
// that reads waiting on the network don't idle the cores, at most
// maxStreamJobs).
//
// Unlike DataStream it does not check chunks against their digests: it is
// for a reader that trusts nothing until the whole stream is checked, as
// an eager unpack from the index does (the tar rebuilt from it must hash
// to the layer's diff ID before it is committed), where hashing every
// chunk again would cost as much as that check. A frame that does not
// decode to its chunk's size is ErrCorruptChunk. Close stops the reads.
func (t *TOC) ParallelStream(ctx context.Context, ra io.ReaderAt, jobs int) io.ReadCloser {
	if jobs <= 0 {
		jobs = min(runtime.GOMAXPROCS(0)+2, maxStreamJobs)
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &parallelStream{t: t, ra: ra, cancel: cancel, runs: make(chan chan runResult, jobs)}
	s.r = iox.BlockReader{Next: s.next, Put: func(b *[]byte) { runBufs.Put(b) }}
	// Frame checksums are not checked: the rebuilt tar's digest is, and
	// it covers every byte.
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(jobs), zstd.WithDecoderMaxMemory(2*MaxChunkSize),
		zstd.IgnoreChecksum(true))
	if err != nil {
		failed := make(chan runResult, 1)
		failed <- runResult{err: err}
		s.runs <- failed
		close(s.runs)
		return s
	}
	s.dec = dec
	go s.produce(ctx)
	return s
}

type runResult struct {
	data *[]byte // from runBufs; back to it once read
	err  error
}

// runBufs holds the buffers runs read frames into and decode into: a run
// is up to runChunks chunks, and allocating (zeroing) ~1 GB of them for
// one big layer costs more CPU than copying it.
var runBufs sync.Pool

// runBuf returns a buffer of length n from runBufs, or a new one.
func runBuf(n int64) *[]byte {
	if b, ok := runBufs.Get().(*[]byte); ok && int64(cap(*b)) >= n {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, max(n, runChunks*DefaultChunkSize+decodeSlack))
	return &b
}

// decodeSlack is room past a run's last chunk: zstd's decoder takes its
// fast path (copies that may write up to 16 bytes past a sequence) only
// when the buffer it decodes into has it.
const decodeSlack = 64

type parallelStream struct {
	t      *TOC
	ra     io.ReaderAt
	dec    *zstd.Decoder
	cancel context.CancelFunc
	runs   chan chan runResult // one per run, in stream order; its capacity bounds the runs in flight
	r      iox.BlockReader     // over next's runs
	closed sync.Once
}

// produce starts each run's read and decode in turn; the channel's
// capacity keeps at most jobs of them ahead of the reader.
func (s *parallelStream) produce(ctx context.Context) {
	defer close(s.runs)
	for first := 0; first < len(s.t.Chunks); first += runChunks {
		last := min(first+runChunks, len(s.t.Chunks)) - 1
		ch := make(chan runResult, 1)
		select {
		case s.runs <- ch:
		case <-ctx.Done():
			return
		}
		go func() { ch <- s.run(ctx, first, last) }()
	}
}

// run reads chunks first..last with one ranged read and decodes them.
func (s *parallelStream) run(ctx context.Context, first, last int) runResult {
	if err := ctx.Err(); err != nil {
		return runResult{err: err}
	}
	start, end := s.t.Chunks[first].Offset, s.t.Chunks[last].Offset+s.t.Chunks[last].Size
	frames := runBuf(end - start) // Validate bounded each frame by MaxFrameSize
	defer runBufs.Put(frames)
	if n, err := s.ra.ReadAt(*frames, start); n < len(*frames) || (err != nil && !errors.Is(err, io.EOF)) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return runResult{err: fmt.Errorf("layer %s: read chunks %d-%d: %w", s.t.Layer, first, last, err)}
	}
	var size int64
	for i := first; i <= last; i++ {
		size += s.t.chunkLen(i)
	}
	buf := runBuf(size + decodeSlack)
	out := (*buf)[:0]
	for i := first; i <= last; i++ {
		c := s.t.Chunks[i]
		frame := (*frames)[c.Offset-start : c.Offset-start+c.Size]
		n := len(out)
		// Each chunk is decoded into an empty slice of its place in out:
		// the decoder's fast path wants room for the frame's content size
		// past the slice's length, which a slice holding earlier chunks
		// would seem to lack.
		got, err := s.dec.DecodeAll(frame, out[n:n])
		if err != nil {
			runBufs.Put(buf)
			return runResult{err: fmt.Errorf("layer %s: chunk %d: %w: %w", s.t.Layer, i, ErrCorruptChunk, err)}
		}
		if int64(len(got)) != s.t.chunkLen(i) {
			runBufs.Put(buf)
			return runResult{err: fmt.Errorf("layer %s: chunk %d decodes to %d bytes, not %d: %w", s.t.Layer, i, len(got), s.t.chunkLen(i), ErrCorruptChunk)}
		}
		out = out[:n+len(got)]
		if len(got) > 0 && &got[0] != &out[n] {
			copy(out[n:], got) // the decoder allocated anew
		}
	}
	*buf = out
	return runResult{data: buf}
}

func (s *parallelStream) Read(p []byte) (int, error) { return s.r.Read(p) }

// next is the stream's BlockReader.Next: each run's decoded bytes, in
// order.
func (s *parallelStream) next() (*[]byte, error) {
	ch, ok := <-s.runs
	if !ok {
		return nil, io.EOF
	}
	r := <-ch
	return r.data, r.err
}

// Close stops the reads and decodes still running and waits for none of
// them: each ends at its next step.
func (s *parallelStream) Close() error {
	s.closed.Do(func() {
		s.cancel()
		if s.dec != nil {
			go func() {
				// Drain, so that every run has ended before the decoder
				// they share is closed.
				for ch := range s.runs {
					<-ch
				}
				s.dec.Close()
			}()
		}
	})
	return nil
}
