package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/s3snap/s3snap/migrator"
)

// progress shows a running migrate or verify on stderr: a bar (images,
// bytes, rate) on a terminal, one plain line per image otherwise.
type progress struct {
	w     io.Writer
	stats *migrator.Stats
	verb  string

	mu    sync.Mutex
	bar   *progressbar.ProgressBar
	start time.Time
	stop  chan struct{}
	done  chan struct{}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func newProgress(w io.Writer, verb string) *progress {
	p := &progress{w: w, stats: &migrator.Stats{}, verb: verb, start: time.Now()}
	if isTerminal(w) {
		p.bar = progressbar.NewOptions64(-1,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(verb),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionThrottle(200*time.Millisecond),
		)
		p.stop, p.done = make(chan struct{}), make(chan struct{})
		go p.loop()
	}
	return p
}

func (p *progress) loop() {
	defer close(p.done)
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.mu.Lock()
			p.refresh()
			p.mu.Unlock()
		}
	}
}

func (p *progress) refresh() {
	s := p.stats
	if n := s.ImagesTotal.Load(); n > 0 && p.bar.GetMax64() != n {
		p.bar.ChangeMax64(n)
	}
	read := s.BytesRead.Load()
	rate := float64(read) / max(time.Since(p.start).Seconds(), 0.001)
	p.bar.Describe(fmt.Sprintf("%s images | %s of %s streamed, %s/s | %d failed", p.verb,
		humanSize(read), humanSize(s.BytesTotal.Load()), humanSize(int64(rate)), s.Failed.Load()))
	_ = p.bar.Set64(s.ImagesDone.Load())
}

// entry reports one finished image.
func (p *progress) entry(e migrator.Entry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		if !e.Failed() {
			p.refresh()
			return
		}
		_ = p.bar.Clear()
	}
	fmt.Fprintln(p.w, entryLine(e))
	if p.bar != nil {
		p.refresh()
	}
}

// finish removes the bar.
func (p *progress) finish() {
	if p.bar == nil {
		return
	}
	close(p.stop)
	<-p.done
	_ = p.bar.Finish()
	_ = p.bar.Clear()
}

// entryLine is one image's plain progress line.
func entryLine(e migrator.Entry) string {
	name := e.Key()
	d := e.DestinationDigest
	if d == "" {
		d = e.SourceDigest
	}
	s := fmt.Sprintf("%-10s %s %s", e.Status, name, d)
	switch {
	case e.Failed():
		s += ": " + e.Reason
	case e.Status == migrator.StatusCopied:
		s += fmt.Sprintf(" (%s moved, %s deduplicated)", humanSize(e.BytesMoved), humanSize(e.BytesDeduplicated))
	case e.Status == migrator.StatusPlanned:
		s += fmt.Sprintf(" (%s)", humanSize(e.Size))
	}
	if e.Note != "" {
		s += " [" + e.Note + "]"
	}
	return s
}
