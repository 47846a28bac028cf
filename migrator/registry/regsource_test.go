package registry

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/s3snap/s3snap/internal/retry"
)

// TestBlobReaderResume breaks the first response half way and checks what
// the resumed request's answer must be to be accepted.
func TestBlobReaderResume(t *testing.T) {
	blob := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	half := int64(len(blob) / 2)
	for _, tc := range []struct {
		name   string
		resume func(w http.ResponseWriter, off int64)
		want   error // nil: the whole blob is read
	}{
		{"206 from the offset", func(w http.ResponseWriter, off int64) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, len(blob)-1, len(blob)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob[off:])
		}, nil},
		{"200 whole blob, range ignored", func(w http.ResponseWriter, _ int64) {
			w.Write(blob)
		}, nil},
		{"206 from another offset", func(w http.ResponseWriter, _ int64) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(blob)-1, len(blob)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob)
		}, retry.ErrBadRange},
		{"206 without content-range", func(w http.ResponseWriter, off int64) {
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob[off:])
		}, retry.ErrBadRange},
		{"206 of another size", func(w http.ResponseWriter, off int64) {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, 2*len(blob)-1, 2*len(blob)))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(blob[off:])
		}, retry.ErrBadRange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if n.Add(1) == 1 {
					// Promise the whole blob, send half, drop the connection.
					w.Header().Set("Content-Length", fmt.Sprint(len(blob)))
					w.Write(blob[:half])
					w.(http.Flusher).Flush()
					c, _, _ := http.NewResponseController(w).Hijack()
					c.Close()
					return
				}
				var off int64
				fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &off)
				tc.resume(w, off)
			}))
			defer srv.Close()
			br := &blobReader{ctx: t.Context(), client: srv.Client(), policy: retry.Policy{Attempts: 3, Base: time.Millisecond, Max: time.Millisecond},
				url: srv.URL, size: int64(len(blob)), what: "test"}
			if err := br.open(); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			_, err := buf.ReadFrom(br)
			br.Close()
			got := buf.Bytes()
			if tc.want == nil {
				if err != nil || !bytes.Equal(got, blob) {
					t.Fatalf("read %d of %d bytes, err %v; want the whole blob", len(got), len(blob), err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if int64(len(got)) > half {
				t.Errorf("read %d bytes, more than the %d before the break", len(got), half)
			}
		})
	}
}
