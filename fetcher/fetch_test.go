package fetcher

import (
	"errors"
	"reflect"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		name         string
		off, n, part int64
		want         []span
	}{
		{"empty", 0, 0, 8, nil},
		{"one byte", 0, 1, 8, []span{{0, 1}}},
		{"one part", 0, 8, 8, []span{{0, 8}}},
		{"part plus one", 0, 9, 8, []span{{0, 8}, {8, 1}}},
		{"n parts", 0, 24, 8, []span{{0, 8}, {8, 8}, {16, 8}}},
		{"unaligned", 7, 10, 8, []span{{7, 8}, {15, 2}}},
		{"inside a part", 3, 2, 8, []span{{3, 2}}},
		{"bad part size", 0, 5, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := plan(tc.off, tc.n, tc.part)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("plan(%d, %d, %d) = %v, want %v", tc.off, tc.n, tc.part, got, tc.want)
			}
			var sum int64
			for _, s := range got {
				sum += s.n
			}
			if len(got) > 0 && sum != tc.n {
				t.Fatalf("spans cover %d bytes, want %d", sum, tc.n)
			}
		})
	}
}

func TestCheckResponse(t *testing.T) {
	out := func(length int64, cr string) *s3.GetObjectOutput {
		o := &s3.GetObjectOutput{ContentLength: aws.Int64(length)}
		if cr != "" {
			o.ContentRange = aws.String(cr)
		}
		return o
	}
	for _, tc := range []struct {
		name           string
		out            *s3.GetObjectOutput
		size, off, end int64
		want           error
	}{
		{"exact", out(10, "bytes 10-19/100"), 100, 10, 19, nil},
		{"short length", out(9, "bytes 10-19/100"), 100, 10, 19, ErrBadRange},
		{"long length", out(11, "bytes 10-19/100"), 100, 10, 19, ErrBadRange},
		{"other range", out(10, "bytes 0-9/100"), 100, 10, 19, ErrBadRange},
		{"size changed", out(10, "bytes 10-19/200"), 100, 10, 19, ErrObjectChanged},
		{"unknown total", out(10, "bytes 10-19/*"), 100, 10, 19, nil},
		{"malformed", out(10, "bytes ten"), 100, 10, 19, ErrBadRange},
		{"range ignored, whole object asked", out(100, ""), 100, 0, 99, nil},
		{"range ignored, part asked", out(10, ""), 100, 0, 9, ErrBadRange},
		{"range ignored, later part", out(10, ""), 100, 10, 19, ErrBadRange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkResponse(tc.out, tc.size, tc.off, tc.end)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("checkResponse = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestETagPin(t *testing.T) {
	var p etagPin
	if !p.check("") {
		t.Fatal("an empty etag must not fail")
	}
	if !p.check(`"abc"`) || p.get() != `"abc"` {
		t.Fatalf("first etag not pinned: %q", p.get())
	}
	if !p.check(`abc`) {
		t.Fatal("quoting must not matter")
	}
	if !p.check("") {
		t.Fatal("a response without etag must not fail")
	}
	if p.check(`"def"`) {
		t.Fatal("another etag must fail")
	}
	q := etagPin{etag: "abc"}
	if q.check(`"abd"`) || !q.check(`"abc"`) {
		t.Fatal("a given etag must be held")
	}
}
