package rewrite

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// errNotInPlace is returned for a scalar whose text cannot be replaced in
// place (a block scalar, a multi-line or escaped one).
var errNotInPlace = errors.New("cannot be edited in place")

// source is a file's bytes with the byte offset of every line, to turn the
// parser's line and column (counted in characters) into byte offsets.
type source struct {
	b     []byte
	lines []int
}

func newSource(b []byte) *source {
	s := &source{b: b, lines: []int{0}}
	if bytes.HasPrefix(b, []byte("\xef\xbb\xbf")) {
		s.lines[0] = 3 // the parser does not count a BOM
	}
	for i, c := range b {
		if c == '\n' {
			s.lines = append(s.lines, i+1)
		}
	}
	return s
}

// offset is the byte offset of 1-based line and column.
func (s *source) offset(line, col int) (int, bool) {
	if line < 1 || line > len(s.lines) || col < 1 {
		return 0, false
	}
	off := s.lines[line-1]
	for range col - 1 {
		if off >= len(s.b) || s.b[off] == '\n' {
			return 0, false
		}
		_, n := utf8.DecodeRune(s.b[off:])
		off += n
	}
	return off, true
}

// edit replaces b[start:end] with text.
type edit struct {
	start, end int
	text       string
}

// span finds the bytes of scalar n, checking they are exactly its value
// written in its style, and returns the range and the quote character (0
// for plain).
func (s *source) span(n *yaml.Node) (start, end int, quote byte, err error) {
	if n.Kind != yaml.ScalarNode {
		return 0, 0, 0, fmt.Errorf("not a scalar: %w", errNotInPlace)
	}
	off, ok := s.offset(n.Line, n.Column)
	if !ok {
		return 0, 0, 0, fmt.Errorf("line %d column %d is outside the file: %w", n.Line, n.Column, errNotInPlace)
	}
	// The position is that of an anchor or tag before the scalar, if any.
	for off < len(s.b) && (s.b[off] == '&' || s.b[off] == '!') {
		for off < len(s.b) && !isSpace(s.b[off]) {
			off++
		}
		for off < len(s.b) && isSpace(s.b[off]) {
			off++
		}
	}
	raw := n.Value
	switch {
	case n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0:
		// One line of text under the | or > header line.
		raw = strings.TrimRight(raw, "\n")
		if nl := bytes.IndexByte(s.b[off:], '\n'); nl >= 0 {
			off += nl + 1
		}
		for off < len(s.b) && (s.b[off] == ' ' || s.b[off] == '\t') {
			off++
		}
	case n.Style&yaml.DoubleQuotedStyle != 0:
		quote = '"'
	case n.Style&yaml.SingleQuotedStyle != 0:
		quote = '\''
	}
	if quote != 0 {
		raw = string(quote) + raw + string(quote)
	}
	if strings.ContainsAny(n.Value, "\\\"'") || strings.Contains(raw, "\n") || !bytes.HasPrefix(s.b[off:], []byte(raw)) {
		return 0, 0, 0, fmt.Errorf("written with escapes or over several lines: %w", errNotInPlace)
	}
	return off, off + len(raw), quote, nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// replace returns the edit that makes scalar n read value, keeping its
// quoting style. Values are image references, tags, digests and key names:
// none needs quoting or escaping.
func (s *source) replace(n *yaml.Node, value string) (edit, error) {
	start, end, quote, err := s.span(n)
	if err != nil {
		return edit{}, err
	}
	if value == "" || strings.ContainsAny(value, " \t\n\\\"'#,[]{}") {
		return edit{}, fmt.Errorf("%q would need quoting: %w", value, errNotInPlace)
	}
	if quote != 0 {
		value = string(quote) + value + string(quote)
	}
	return edit{start: start, end: end, text: value}, nil
}

// apply splices edits (non-overlapping) into b.
func apply(b []byte, edits []edit) []byte {
	sort.Slice(edits, func(i, j int) bool { return edits[i].start < edits[j].start })
	var out bytes.Buffer
	last := 0
	for _, e := range edits {
		if e.start < last {
			continue // the same scalar twice (through an alias): once is enough
		}
		out.Write(b[last:e.start])
		out.WriteString(e.text)
		last = e.end
	}
	out.Write(b[last:])
	return out.Bytes()
}
