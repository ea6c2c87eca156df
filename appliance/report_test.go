package appliance

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/causeway-net/causeway/dataplane/wgkey"
	"github.com/causeway-net/causeway/probes"
)

// fakeFeed stands in for the prober: each call returns one aggregate per
// path for the interval since the previous call.
type fakeFeed struct {
	mu    sync.Mutex
	last  time.Time
	calls int
	peer  string
}

func (f *fakeFeed) aggregates(now time.Time) []pathAggregate {
	f.mu.Lock()
	defer f.mu.Unlock()
	start := f.last
	if start.IsZero() {
		start = now.Add(-ReportInterval)
	}
	f.last = now
	f.calls++
	out := []pathAggregate{}
	for i, uplink := range []string{"wan1", "wan2"} {
		a := probes.Aggregate{Start: start, End: now, Sent: 50, Received: 50 - uint64(i), Lost: uint64(i),
			RTTMin: 8 * time.Millisecond, RTTMean: 10 * time.Millisecond, RTTP50: 10 * time.Millisecond,
			RTTP99: 14 * time.Millisecond, RTTMax: 15 * time.Millisecond, Jitter: time.Millisecond}
		out = append(out, pathAggregate{Peer: f.peer, Uplink: uplink, Remote: netip.MustParseAddrPort("198.18.2.2:51820"), Agg: a})
	}
	// An idle path is not sent.
	out = append(out, pathAggregate{Peer: f.peer, Uplink: "lte", Remote: netip.MustParseAddrPort("198.18.2.2:51820"),
		Agg: probes.Aggregate{Start: start, End: now}})
	return out
}

// TestPathReporter reports a fake prober's aggregates to a real
// controller, through an outage, and reads them back with ctl.
func TestPathReporter(t *testing.T) {
	e := startController(t)
	e.ctl(t, "tenant", "create", "acme")
	e.ctl(t, "site", "create", "acme", "office-1", "--kind", "office", "--prefix", "10.10.0.0/24")
	e.ctl(t, "site", "create", "acme", "vpc-1", "--kind", "vpc", "--prefix", "10.20.0.0/24")
	ctx := context.Background()
	enroll := func(site string) *Client {
		t.Helper()
		k, _ := wgkey.NewPrivate()
		c, _ := NewClient(ClientOptions{Controller: e.srv.URL(), CAFingerprint: e.srv.CAFingerprint()})
		enr, _, err := c.Enroll(ctx, EnrollRequest{Token: e.token(t, "acme", site), Name: site, PublicKey: k.Public()})
		if err != nil {
			t.Fatal(err)
		}
		c2, _ := NewClient(ClientOptions{Controller: e.srv.URL(), CAFingerprint: e.srv.CAFingerprint(), Credential: enr.Credential})
		return c2
	}
	office := enroll("office-1")
	enroll("vpc-1")

	var down atomic.Bool
	var sent, accepted atomic.Int64
	send := func(ctx context.Context, pts []PathPoint) (ReportResult, error) {
		if down.Load() {
			return ReportResult{}, errors.New("controller unreachable")
		}
		res, err := office.ReportPaths(ctx, pts)
		sent.Add(int64(len(pts)))
		accepted.Add(res.Accepted)
		return res, err
	}
	feed := &fakeFeed{peer: "vpc-1"}
	r := newReporter(reporterOptions{Source: feed.aggregates, Send: send, Batch: 5})

	now := time.Now().Add(-5 * time.Minute).Truncate(time.Second)
	r.tick(ctx, now)
	if len(r.backlog) != 0 || accepted.Load() != 2 {
		t.Fatalf("first tick: backlog %d, accepted %d", len(r.backlog), accepted.Load())
	}
	// An outage: points pile up in the backlog ...
	down.Store(true)
	for range 6 {
		now = now.Add(ReportInterval)
		r.tick(ctx, now)
	}
	if len(r.backlog) != 12 {
		t.Fatalf("backlog after an outage: %d, want 12", len(r.backlog))
	}
	// ... and go out in batches once the controller is back.
	down.Store(false)
	now = now.Add(ReportInterval)
	r.tick(ctx, now)
	if len(r.backlog) != 0 || accepted.Load() != 16 || sent.Load() != 16 {
		t.Fatalf("after the outage: backlog %d, accepted %d, sent %d", len(r.backlog), accepted.Load(), sent.Load())
	}
	// A resend of points the controller already has counts nothing.
	pt := mustPoint(t, feed, now)
	if res, err := office.ReportPaths(ctx, []PathPoint{pt}); err != nil || res.Accepted != 1 {
		t.Fatalf("a new point: %+v %v", res, err)
	}
	pt.Start, pt.End = now.Add(ReportInterval).UTC(), now.Add(2*ReportInterval).UTC()
	if res, err := office.ReportPaths(ctx, []PathPoint{pt, pt}); err != nil || res.Accepted != 1 || res.Duplicate != 1 {
		t.Fatalf("a point sent twice: %+v %v", res, err)
	}

	out := e.ctl(t, "paths", "acme", "--from", "office-1", "--to", "vpc-1", "--since", "1h")
	t.Logf("ctl paths:\n%s", out)
	for _, want := range []string{"office-1 -> vpc-1", "wan1", "wan2", "198.18.2.2:51820", "0.00", "2.00", "10.0", "14.0"} {
		if !strings.Contains(out, want) {
			t.Errorf("ctl paths output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "lte") {
		t.Errorf("an idle path was reported:\n%s", out)
	}
}

// mustPoint is the first point of a fresh interval of feed.
func mustPoint(t *testing.T, feed *fakeFeed, now time.Time) PathPoint {
	t.Helper()
	for _, a := range feed.aggregates(now.Add(time.Second)) {
		if p, ok := pointOf(a); ok {
			return p
		}
	}
	t.Fatal("no point")
	return PathPoint{}
}

// TestReporterBacklogBounds checks that the backlog keeps the newest
// points only, by age and by count, and that close joins the goroutine.
func TestReporterBacklogBounds(t *testing.T) {
	feed := &fakeFeed{peer: "vpc-1"}
	fail := func(context.Context, []PathPoint) (ReportResult, error) { return ReportResult{}, errors.New("down") }
	r := newReporter(reporterOptions{Source: feed.aggregates, Send: fail, Backlog: time.Minute, MaxPoints: 8})
	now := time.Now()
	for range 20 {
		now = now.Add(ReportInterval)
		r.tick(context.Background(), now)
	}
	if len(r.backlog) != 8 || r.dropped != 32 || !r.backlog[7].End.Equal(now.UTC()) {
		t.Fatalf("backlog %d (dropped %d), newest ends %v", len(r.backlog), r.dropped, r.backlog[len(r.backlog)-1].End)
	}
	r = newReporter(reporterOptions{Source: feed.aggregates, Send: fail, Backlog: 25 * time.Second})
	for range 10 {
		now = now.Add(ReportInterval)
		r.tick(context.Background(), now)
	}
	if len(r.backlog) != 6 {
		t.Fatalf("backlog by age: %d points, want 6 (three intervals)", len(r.backlog))
	}

	// Running: ticks happen on their own, close waits for the goroutine.
	var calls atomic.Int64
	r = newReporter(reporterOptions{Interval: 5 * time.Millisecond, Send: fail,
		Source: func(now time.Time) []pathAggregate { calls.Add(1); return feed.aggregates(now) }})
	r.start()
	deadline := time.Now().Add(5 * time.Second)
	for calls.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	r.close()
	r.close()
	n := calls.Load()
	time.Sleep(20 * time.Millisecond)
	if n < 3 || calls.Load() != n {
		t.Fatalf("ticks: %d, then %d after close", n, calls.Load())
	}
}

// TestProberAggregates checks the hook the reporter reads: each probed
// path's aggregate, named by peer, uplink and remote endpoint.
func TestProberAggregates(t *testing.T) {
	key := testProbeKey(t, 7)
	peer := testPeerKey(t)
	p1, p2 := testPath(0, "198.18.11.2:51820"), testPath(1, "198.18.12.2:51820")
	net := newFakeNet(mustKeyring(t, key))
	net.setPaths(peer, p1, p2)
	p := fastProber(t, net, &Config{ProbeKey: key, Peers: []PeerConfig{{Name: "site-b", PublicKey: peer}}})
	if !waitFor(2*time.Second, func() bool {
		st := p.status()
		return len(st) == 2 && st[0].Stats.Received > 5 && st[1].Stats.Received > 5
	}) {
		t.Fatalf("no replies: %+v", p.status())
	}
	aggs := p.aggregates(time.Now())
	if len(aggs) != 2 {
		t.Fatalf("%d aggregates", len(aggs))
	}
	want := map[string]string{"wan1": "198.18.11.2:51820", "wan2": "198.18.12.2:51820"}
	for _, a := range aggs {
		pt, ok := pointOf(a)
		if a.Peer != "site-b" || want[a.Uplink] != a.Remote.String() || !ok || pt.Received == 0 || pt.RTTP50US <= 0 {
			t.Errorf("aggregate %+v, point %+v", a, pt)
		}
	}
}
