package appliance

import (
	"cmp"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/dataplane"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// fakeCounters stands in for a device: cumulative counters per key.
type fakeCounters struct {
	mu sync.Mutex
	m  map[wgkey.PublicKey]peerUsage
}

func newFakeCounters() *fakeCounters { return &fakeCounters{m: map[wgkey.PublicKey]peerUsage{}} }

// add counts tx and rx bytes (one packet per 100 bytes) for key at site.
func (f *fakeCounters) add(k wgkey.PublicKey, site string, tx, rx uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.m[k]
	p.Key, p.Site = k, site
	p.Inner.TxBytes += tx
	p.Inner.TxPackets += (tx + 99) / 100
	p.Inner.RxBytes += rx
	p.Inner.RxPackets += (rx + 99) / 100
	f.m[k] = p
}

// set replaces key's counters (a counter that goes backwards).
func (f *fakeCounters) set(k wgkey.PublicKey, site string, c dataplane.Counters) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[k] = peerUsage{Key: k, Site: site, Inner: c}
}

func (f *fakeCounters) usageCounters() []peerUsage {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]peerUsage, 0, len(f.m))
	for _, p := range f.m {
		out = append(out, p)
	}
	return out
}

// fakeClock is a settable wall clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func testKey(t testing.TB) wgkey.PublicKey {
	t.Helper()
	k, err := wgkey.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func testSpool(t testing.TB, dir string, max int64) *usageSpool {
	t.Helper()
	sp, err := openUsageSpool(dir, usageSpoolOptions{MaxBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.close() })
	return sp
}

// spooled returns every record in the spool, oldest first.
func spooled(t testing.TB, sp *usageSpool) []UsageRecord {
	t.Helper()
	recs, err := sp.batch(1<<30, 1<<62, nil)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// totals sums records by meter, site and direction.
func totals(recs []UsageRecord) map[usageKey]usageSum {
	out := map[usageKey]usageSum{}
	for _, r := range recs {
		for _, e := range r.Usage {
			k := usageKey{e.Meter, e.PeerSite, e.Direction}
			s := out[k]
			out[k] = usageSum{s.bytes + e.Bytes, s.packets + e.Packets}
		}
	}
	return out
}

func sortRecords(recs []UsageRecord) {
	slices.SortFunc(recs, func(a, b UsageRecord) int { return cmp.Compare(a.Seq, b.Seq) })
}

func ov(site, dir string) usageKey { return usageKey{MeterOverlay, site, dir} }
func gw(dir string) usageKey       { return usageKey{MeterGateway, "", dir} }

// checkRecords asserts what every record must be: a seq above the
// previous one, a non-empty usage list without zero entries, a positive
// length of at most an hour inside one hour.
func checkRecords(t *testing.T, recs []UsageRecord) {
	t.Helper()
	var last uint64
	for i, r := range recs {
		if r.Seq <= last {
			t.Errorf("record %d: seq %d after %d", i, r.Seq, last)
		}
		last = r.Seq
		if !r.End.After(r.Start) || r.End.Sub(r.Start) > time.Hour || r.End.After(hourEnd(r.Start)) {
			t.Errorf("record %d (seq %d): interval %s - %s crosses an hour or is empty", i, r.Seq, r.Start, r.End)
		}
		if len(r.Usage) == 0 {
			t.Errorf("record %d (seq %d): no usage", i, r.Seq)
		}
		for _, e := range r.Usage {
			if e.Bytes == 0 && e.Packets == 0 {
				t.Errorf("record %d (seq %d): zero entry %+v", i, r.Seq, e)
			}
		}
	}
}

// TestUsageDeltas drives the meter's counting through the cases that
// could make usage negative or doubled: a peer removed, a peer re-keyed,
// a counter going backwards, the appliance restarted (a new device from
// 0), the same device attached twice, and a gateway that stops being the
// gateway and restarts.
func TestUsageDeltas(t *testing.T) {
	sp := testSpool(t, t.TempDir(), 0)
	clk := &fakeClock{t: time.Date(2030, 1, 1, 10, 0, 0, 0, time.UTC)}
	m := newUsageMeter(usageMeterOptions{Spool: sp, now: clk.now})
	step := func() {
		clk.set(clk.now().Add(10 * time.Second))
		m.cut(clk.now(), false)
	}
	k1, k2, k3, k4 := testKey(t), testKey(t), testKey(t), testKey(t)
	dev1 := newFakeCounters()
	m.attach(dev1)
	dev1.add(k1, "st_b", 1000, 500)
	dev1.add(k2, "st_b", 300, 0)
	dev1.add(k3, "st_c", 0, 700)
	step()
	// k2 is removed: the dataplane keeps its last counters, unchanged.
	dev1.add(k1, "st_b", 100, 100)
	step()
	// k1 is re-keyed to k4 (same site): new counters from 0.
	dev1.add(k4, "st_b", 50, 60)
	// k3's counters go backwards (they must never be negative): 40 new.
	dev1.set(k3, "st_c", dataplane.Counters{RxBytes: 40, RxPackets: 1})
	step()
	// The appliance restarts: the old device's last increase is taken
	// when the new one is attached; the new one counts from 0.
	dev1.add(k4, "st_b", 7, 0)
	dev2 := newFakeCounters()
	m.attach(dev1) // the same source again: nothing changes
	m.attach(dev2)
	dev1.add(k4, "st_b", 1_000_000, 0) // a closed device counts nothing; if it did, it is not read
	dev2.add(k4, "st_b", 5, 0)
	m.attach(dev2)
	step()

	// The gateway: installed, read; not the gateway for a while (nothing
	// read, nothing lost); counters going down (it restarted): from 0.
	var mu sync.Mutex
	gwC, gwOK := dataplane.Counters{TxBytes: 900, TxPackets: 9, RxBytes: 9000, RxPackets: 10}, true
	m.setGateway(func() (dataplane.Counters, bool) { mu.Lock(); defer mu.Unlock(); return gwC, gwOK })
	step()
	mu.Lock()
	gwOK = false
	mu.Unlock()
	step()
	mu.Lock()
	gwC.TxBytes, gwC.TxPackets, gwOK = 1000, 10, true
	mu.Unlock()
	step()
	mu.Lock()
	gwC = dataplane.Counters{TxBytes: 30, TxPackets: 1}
	mu.Unlock()
	step()
	m.close()
	m.close()

	recs := spooled(t, sp)
	checkRecords(t, recs)
	got := totals(recs)
	want := map[usageKey]usageSum{
		ov("st_b", DirTx): {1000 + 300 + 100 + 50 + 7 + 5, 10 + 3 + 1 + 1 + 1 + 1},
		ov("st_b", DirRx): {500 + 100 + 60, 5 + 1 + 1},
		ov("st_c", DirRx): {700 + 40, 7 + 1},
		gw(DirTx):         {1000 + 30, 10 + 1},
		gw(DirRx):         {9000, 10},
	}
	if len(got) != len(want) {
		t.Errorf("usage keys %v, want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%+v: %+v, want %+v", k, got[k], w)
		}
	}
	if st := m.stats(); st.Resets != 2 {
		t.Errorf("resets %d, want 2 (k3, the gateway)", st.Resets)
	}
	if n := len(recs); n != 7 {
		t.Errorf("%d records, want 7 (the interval with the gateway off counted nothing)", n)
	}
	if c := m.stats().Counted[usageKey{meter: MeterOverlay, dir: DirTx}]; c != want[ov("st_b", DirTx)] {
		t.Errorf("counted overlay tx %+v, want %+v", c, want[ov("st_b", DirTx)])
	}
}

// TestUsageHourBoundaries runs the meter's schedule on a fake clock, with
// late timers and a two-hour suspend: every record stays inside one hour,
// records are contiguous, empty intervals produce none (and take no seq).
func TestUsageHourBoundaries(t *testing.T) {
	sp := testSpool(t, t.TempDir(), 0)
	t0 := time.Date(2030, 1, 1, 9, 59, 33, 500_000_000, time.UTC)
	clk := &fakeClock{t: t0}
	m := newUsageMeter(usageMeterOptions{Spool: sp, now: clk.now})
	dev := newFakeCounters()
	m.attach(dev)
	k := testKey(t)
	var sent uint64
	late := []time.Duration{0, 3 * time.Millisecond, 2 * time.Second, 0, 900 * time.Millisecond}
	var dues []time.Time
	for i := range 40 {
		due := m.nextCut()
		dues = append(dues, due)
		at := due.Add(late[i%len(late)])
		if i == 20 {
			at = due.Add(2*time.Hour + 5*time.Second) // suspended
		}
		if at.Before(clk.now()) {
			at = clk.now() // catching up after the suspend
		}
		if i%7 != 3 { // some intervals see no traffic
			dev.add(k, "st_b", 100, 0)
			sent += 100
		}
		clk.set(at)
		m.cut(at, false)
	}
	m.close()
	if !dues[0].Equal(time.Date(2030, 1, 1, 9, 59, 43, 500_000_000, time.UTC)) ||
		!dues[2].Equal(time.Date(2030, 1, 1, 10, 0, 0, 0, time.UTC)) ||
		!dues[3].Equal(time.Date(2030, 1, 1, 10, 0, 10, 0, time.UTC)) {
		t.Errorf("schedule %v: want the third cut at 10:00:00 and the next 10 s after", dues[:4])
	}
	recs := spooled(t, sp)
	checkRecords(t, recs)
	if got := totals(recs)[ov("st_b", DirTx)].bytes; got != sent {
		t.Errorf("recorded %d bytes, sent %d", got, sent)
	}
	hours := map[time.Time]bool{}
	atHour := false
	for i, r := range recs {
		if r.Seq != uint64(i+1) {
			t.Errorf("record %d has seq %d: empty intervals must not take one", i, r.Seq)
		}
		hours[r.Start.Truncate(time.Hour)] = true
		atHour = atHour || r.End.Equal(time.Date(2030, 1, 1, 10, 0, 0, 0, time.UTC))
		if i > 0 && r.Start.Before(recs[i-1].End) {
			t.Errorf("record %d starts at %s, before the previous one ends (%s)", i, r.Start, recs[i-1].End)
		}
	}
	if !atHour {
		t.Error("no record ends at 10:00:00, though the timer fired 2 s late")
	}
	if !hours[time.Date(2030, 1, 1, 9, 0, 0, 0, time.UTC)] || !hours[time.Date(2030, 1, 1, 10, 0, 0, 0, time.UTC)] {
		t.Errorf("records in hours %v, want 09:00 and 10:00 at least", hours)
	}
	if len(recs) >= 40 || len(recs) < 25 {
		t.Errorf("%d records from 40 intervals, some without traffic", len(recs))
	}
}

// TestUsageCoarseAndFull fills a small spool: past 7/8 of its bound the
// meter writes one record per hour instead of one per interval, without
// losing a byte; at the bound the oldest records are dropped, and what is
// dropped is counted, to the byte.
func TestUsageCoarseAndFull(t *testing.T) {
	const max = 16 << 10
	sp := testSpool(t, t.TempDir(), max)
	clk := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := newUsageMeter(usageMeterOptions{Spool: sp, now: clk.now})
	dev := newFakeCounters()
	m.attach(dev)
	var keys []wgkey.PublicKey
	for range 4 {
		keys = append(keys, testKey(t))
	}
	var counted uint64
	becameCoarse := -1
	for i := range 5*360 - 1 { // five hours of 10 s intervals, less the last
		for j, k := range keys {
			dev.add(k, "st_"+string(rune('a'+j)), 1500, 100)
			counted += 1600
		}
		clk.set(clk.now().Add(10 * time.Second))
		before := sp.stats().Appended
		m.cut(clk.now(), false)
		if becameCoarse < 0 && sp.coarse() {
			becameCoarse = i
		}
		if becameCoarse >= 0 && i > becameCoarse && clk.now().Minute() != 0 && sp.stats().Appended != before {
			t.Fatalf("interval %d at %s: a record was written while coarse, before the hour ended", i, clk.now())
		}
	}
	if becameCoarse < 0 {
		t.Fatal("the spool never reached its coarse mark")
	}
	if held := m.stats().Held; held != 1 {
		t.Errorf("%d records held in memory, want the one of the current hour", held)
	}
	m.close()
	st := sp.stats()
	if st.Bytes > max {
		t.Errorf("spool holds %d bytes, bound %d", st.Bytes, max)
	}
	recs := spooled(t, sp)
	checkRecords(t, recs)
	var kept uint64
	for _, s := range totals(recs) {
		kept += s.bytes
	}
	if st.DroppedRecords == 0 {
		t.Error("nothing dropped: the test did not reach the bound")
	}
	if kept+st.DroppedBytes != counted {
		t.Errorf("kept %d + dropped %d bytes != counted %d", kept, st.DroppedBytes, counted)
	}
	// The hourly records are there: the last two hours' usage is whole.
	last := recs[len(recs)-1]
	if last.End.Sub(last.Start) < 50*time.Minute {
		t.Errorf("last record %s - %s, want a coarse one of about an hour", last.Start, last.End)
	}
	t.Logf("coarse after %d intervals; %d records kept, %d dropped (%d bytes)", becameCoarse, len(recs), st.DroppedRecords, st.DroppedBytes)
}

// TestUsageFinalRecord: close cuts what was counted since the last record.
func TestUsageFinalRecord(t *testing.T) {
	dir := t.TempDir()
	sp := testSpool(t, dir, 0)
	m := newUsageMeter(usageMeterOptions{Spool: sp, Interval: time.Hour})
	dev := newFakeCounters()
	m.attach(dev)
	m.run()
	dev.add(testKey(t), "st_b", 1234, 0)
	time.Sleep(5 * time.Millisecond)
	m.close()
	recs := spooled(t, sp)
	if len(recs) != 1 || totals(recs)[ov("st_b", DirTx)].bytes != 1234 {
		t.Fatalf("after close: %+v", recs)
	}
}
