package integration

import (
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/s3snap/s3snap/integration/faultproxy"
	"github.com/s3snap/s3snap/integration/testenv"
)

// TestMigrateMaxBandwidth: 200 MiB in four layers copied four at a time
// with --max-bandwidth 20MiB takes about ten seconds: the throughput the
// report shows is the limit, within 10%.
func TestMigrateMaxBandwidth(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 200 MiB at 20 MiB/s")
	}
	e := testenv.S3(t)
	src := testenv.StartFSRegistry(t)
	regPusher{addr: src.Addr}.image(t, "big", "v1", opaqueImage(t, randomLayers(51, 4, 50<<20)))
	cli := newMigrateCLI(t, e)

	const limit = 20 << 20
	rep, code := cli.migrate(t, "migrate", "--max-bandwidth=20MiB/s", "--jobs=4", "docker://"+src.Addr+"/big", "s3://"+e.NewBucket(t))
	if code != 0 || rep.Summary.Copied != 1 {
		t.Fatalf("exit %d, %+v", code, rep.Summary)
	}
	elapsed := rep.Finished.Sub(rep.Started).Seconds()
	rate := float64(rep.Summary.BytesMoved) / elapsed
	t.Logf("moved %d bytes in %.2fs: %.1f MiB/s (limit %d MiB/s)", rep.Summary.BytesMoved, elapsed, rate/(1<<20), limit>>20)
	if rep.Summary.BytesMoved < 200<<20 || rate > limit*1.1 || rate < limit*0.9 {
		t.Errorf("throughput %.1f MiB/s: want %d MiB/s within 10%%", rate/(1<<20), limit>>20)
	}
}

// requestLog records when requests pass a fault proxy.
type requestLog struct {
	mu sync.Mutex
	at []time.Time
}

func (l *requestLog) rule() faultproxy.Rule {
	return faultproxy.Rule{Fault: faultproxy.Pass, Match: func(*http.Request) bool {
		l.mu.Lock()
		l.at = append(l.at, time.Now())
		l.mu.Unlock()
		return true
	}}
}

// busiestSecond is the most requests within any one second, and how many
// there were in all.
func (l *requestLog) busiestSecond() (most, total int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ts := append([]time.Time(nil), l.at...)
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	j := 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= time.Second {
			j++
		}
		most = max(most, i-j+1)
	}
	return most, len(ts)
}

// TestMigrateMaxRequests: with --max-requests 10, the registry (behind a
// proxy that logs every request) never sees more than 10 requests plus the
// burst of one in any second; without it, the same copy goes far over.
func TestMigrateMaxRequests(t *testing.T) {
	e := testenv.S3(t)
	src := testenv.StartFSRegistry(t)
	push := regPusher{addr: src.Addr}
	for i, tag := range []string{"a", "b", "c"} {
		push.image(t, "many", tag, opaqueImage(t, randomLayers(uint64(60+i), 8, 4<<10)))
	}
	proxy, err := faultproxy.New("http://" + src.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	cli := newMigrateCLI(t, e)
	from := "docker://" + proxy.URL()[len("http://"):] + "/many"

	const limit, burst = 10, 1
	var limited requestLog
	proxy.Add(limited.rule())
	start := time.Now()
	if rep, code := cli.migrate(t, "migrate", "--max-requests=10", from, "s3://"+e.NewBucket(t)); code != 0 || rep.Summary.Copied != 3 {
		t.Fatalf("limited run: exit %d", code)
	}
	took := time.Since(start)
	most, total := limited.busiestSecond()
	t.Logf("limited: %d requests in %s, at most %d in one second", total, took.Round(time.Millisecond), most)
	if total < 30 {
		t.Fatalf("only %d requests: too few to test a limit of %d/s", total, limit)
	}
	if most > limit+burst {
		t.Errorf("%d requests within one second; the limit is %d/s with a burst of %d", most, limit, burst)
	}
	if min := time.Duration(total-burst) * time.Second / limit; took < min {
		t.Errorf("%d requests took %s; at %d/s they need at least %s", total, took, limit, min)
	}

	proxy.Reset()
	var free requestLog
	proxy.Add(free.rule())
	if _, code := cli.migrate(t, "migrate", from, "s3://"+e.NewBucket(t)); code != 0 {
		t.Fatalf("unlimited run: exit %d", code)
	}
	if most, total := free.busiestSecond(); most <= limit+burst {
		t.Errorf("unlimited: at most %d of %d requests in one second: the proxy log cannot show a limit", most, total)
	}
}
