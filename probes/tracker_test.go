package probes

import (
	"container/heap"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestTrackerAddRemove(t *testing.T) {
	tr := NewTracker(Options{TestOnlyRand: seeded(11)})
	if err := tr.Add(NoPath, t0); err == nil {
		t.Error("added path 0")
	}
	must(t, tr.Add(2, t0))
	must(t, tr.Add(1, t0))
	if err := tr.Add(1, t0); !errors.Is(err, ErrPathExists) {
		t.Errorf("second Add = %v", err)
	}
	if got := tr.Paths(); !slices.Equal(got, []PathID{1, 2}) {
		t.Errorf("Paths() = %v", got)
	}
	tr.Remove(1)
	if _, ok := tr.Stats(1); ok {
		t.Error("stats of a removed path")
	}
	if err := tr.HandleReply(Packet{Kind: KindReply, Path: 1, Seq: 1}, t0); !errors.Is(err, ErrStray) {
		t.Errorf("reply for a removed path = %v", err)
	}
	tr.Remove(2)
	if _, ok := tr.Next(); ok {
		t.Error("Next with no paths")
	}
}

func TestTrackerPoll(t *testing.T) {
	tr := NewTracker(Options{TestOnlyRand: seeded(12)})
	must(t, tr.Add(1, t0))
	must(t, tr.Add(2, t0))
	now := t0
	sent := map[PathID]int{}
	for now.Before(t0.Add(10 * time.Second)) {
		next, ok := tr.Next()
		if !ok || next.Before(now) {
			t.Fatalf("Next() = %v, %v at %v", next.Sub(t0), ok, now.Sub(t0))
		}
		now = next
		reqs, _ := tr.Poll(now)
		for _, r := range reqs {
			sent[r.Path]++
			must(t, tr.HandleReply(r.Reply(), now.Add(10*ms)))
		}
	}
	for id := PathID(1); id <= 2; id++ {
		if n := sent[id]; n < 48 || n > 52 {
			t.Errorf("path %d: %d probes in 10 s, want about 50", id, n)
		}
		st, _ := tr.Stats(id)
		if st.State != StateUp || st.Received != uint64(sent[id]) {
			t.Errorf("path %d: %+v", id, st)
		}
	}
	aggs := tr.Aggregates(now)
	if len(aggs) != 2 || aggs[0].Path != 1 || aggs[1].Path != 2 || aggs[0].Sent != uint64(sent[1]) {
		t.Errorf("aggregates = %+v", aggs)
	}
	if aggs := tr.Aggregates(now); aggs[0].Sent != 0 {
		t.Errorf("aggregates not reset: %+v", aggs)
	}
}

// TestTrackerConcurrent polls while other goroutines hand in replies; run
// it with -race.
func TestTrackerConcurrent(t *testing.T) {
	tr := NewTracker(Options{})
	for id := PathID(1); id <= 4; id++ {
		must(t, tr.Add(id, t0))
	}
	replies := make(chan Packet, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	now := t0
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	for range 3 {
		wg.Go(func() {
			for p := range replies {
				tr.HandleReply(p, clock())
				tr.Stats(p.Path)
			}
		})
	}
	for range 2000 {
		mu.Lock()
		now = now.Add(10 * ms)
		n := now
		mu.Unlock()
		reqs, _ := tr.Poll(n)
		for _, r := range reqs {
			replies <- r.Reply()
		}
		tr.Next()
	}
	close(replies)
	wg.Wait()
	tr.Aggregates(clock())
}

// The rest of this file runs the whole engine over a simulated network: a
// Tracker and a Selector on one appliance, a Reflector on the other, and
// marshalled packets between them on links with a delay and a loss rate
// that the test changes.

type link struct {
	delay time.Duration // one way
	loss  float64       // per packet, each way
	dead  bool
}

type delivery struct {
	at    time.Time
	pkt   []byte
	path  PathID
	toFar bool
	seq   int // tie-break: order of sending
}

type queue []delivery

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q queue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *queue) Push(x any)   { *q = append(*q, x.(delivery)) }
func (q *queue) Pop() any     { o := *q; x := o[len(o)-1]; *q = o[:len(o)-1]; return x }

type sim struct {
	t       *testing.T
	now     time.Time
	rng     *rand.Rand
	keys    *Keyring
	tracker *Tracker
	refl    *Reflector
	sel     *Selector
	prio    map[PathID]int
	links   map[PathID]*link
	q       queue
	n       int
	moves   []Decision
	moveAt  []time.Time
}

func newSim(t *testing.T, seed uint64, sla SLA) *sim {
	s := &sim{
		t: t, now: t0, rng: seeded(seed), keys: testKeyring(t, 1),
		tracker: NewTracker(Options{TestOnlyRand: seeded(seed + 1000)}),
		sel:     NewSelector(SelectorOptions{SLA: sla}),
		prio:    map[PathID]int{1: 10, 2: 20},
		links:   map[PathID]*link{1: {delay: 15 * ms}, 2: {delay: 25 * ms}},
	}
	s.refl = NewReflector(s.keys)
	for id := range s.prio {
		must(t, s.tracker.Add(id, t0))
	}
	return s
}

func (s *sim) send(path PathID, b []byte, toFar bool) {
	l := s.links[path]
	if l.dead || s.rng.Float64() < l.loss {
		return
	}
	s.n++
	heap.Push(&s.q, delivery{at: s.now.Add(l.delay), pkt: b, path: path, toFar: toFar, seq: s.n})
}

// runUntil advances the simulation to end, calling Poll when Next says,
// delivering packets, and selecting after every event.
func (s *sim) runUntil(end time.Time) {
	for {
		next, _ := s.tracker.Next()
		if len(s.q) > 0 && s.q[0].at.Before(next) {
			next = s.q[0].at
		}
		if next.After(end) {
			s.now = end
			return
		}
		s.now = next
		if len(s.q) > 0 && !s.q[0].at.After(s.now) {
			d := heap.Pop(&s.q).(delivery)
			if !IsProbe(d.pkt) {
				s.t.Fatal("not a probe")
			}
			// Both ends run the same receive path.
			rep, pkt, err := s.refl.Handle(d.pkt)
			switch {
			case err != nil:
				s.t.Fatal(err)
			case rep != nil:
				if !d.toFar {
					s.t.Fatal("request arrived at the sender")
				}
				s.send(d.path, rep, false)
			default:
				s.tracker.HandleReply(pkt, s.now)
			}
		}
		reqs, _ := s.tracker.Poll(s.now)
		for _, r := range reqs {
			b, err := Marshal(nil, r, s.keys)
			if err != nil {
				s.t.Fatal(err)
			}
			s.send(r.Path, b, true)
		}
		s.selectNow()
	}
}

func (s *sim) selectNow() {
	var cands []Candidate
	for _, id := range s.tracker.Paths() {
		st, _ := s.tracker.Stats(id)
		cands = append(cands, Candidate{Path: id, Priority: s.prio[id], Stats: st})
	}
	if d := s.sel.Select(s.now, cands); d.Changed {
		s.moves = append(s.moves, d)
		s.moveAt = append(s.moveAt, s.now)
	}
}

// TestSimFailover kills the active path at many different instants and
// checks that traffic moves within 1 s every time; the worst case is
// DownAfter plus one one-way delay plus up to 10% of an interval of jitter.
func TestSimFailover(t *testing.T) {
	var worst time.Duration
	for trial := range 40 {
		s := newSim(t, uint64(trial), SLA{})
		s.runUntil(t0.Add(3 * time.Second))
		if s.sel.Active() != 1 {
			t.Fatalf("trial %d: active %d before the failure; moves %+v", trial, s.sel.Active(), s.moves)
		}
		kill := t0.Add(3*time.Second + time.Duration(s.rng.Int64N(int64(time.Second))))
		s.runUntil(kill)
		s.links[1].dead = true
		n := len(s.moves)
		s.runUntil(kill.Add(2 * time.Second))
		if len(s.moves) != n+1 || s.moves[n].Active != 2 || s.moves[n].Reason != ReasonDown {
			t.Fatalf("trial %d: moves after the failure: %+v", trial, s.moves[n:])
		}
		took := s.moveAt[n].Sub(kill)
		worst = max(worst, took)
		if took > time.Second || took < 400*ms {
			t.Errorf("trial %d: moved %v after the failure", trial, took)
		}
	}
	t.Logf("worst failover %v", worst)
	if worst > 700*ms {
		t.Errorf("worst failover %v, want at most 700ms with the defaults", worst)
	}
}

// TestSimRecoveryAndBrownout: the preferred path comes back after its hold
// time; a brownout on it moves traffic again; nothing flaps.
func TestSimRecoveryAndBrownout(t *testing.T) {
	s := newSim(t, 99, SLA{MaxLossPercent: 2, MaxRTT: 150 * ms})
	s.runUntil(t0.Add(3 * time.Second))
	s.links[1].dead = true
	s.runUntil(t0.Add(5 * time.Second))
	s.links[1].dead = false
	s.runUntil(t0.Add(40 * time.Second))
	// Path 1 answers again at 5 s and is up at about 5.6 s; its loss window
	// still holds the outage until 50 settled probes later, about 15.6 s;
	// then 10 s of hold-down.
	if len(s.moves) != 3 || s.moves[2].Active != 1 || s.moves[2].Reason != ReasonPreferred {
		t.Fatalf("moves %+v", s.moves)
	}
	for i, m := range s.moves {
		t.Logf("%v: %+v", s.moveAt[i].Sub(t0), m)
	}
	if back := s.moveAt[2].Sub(t0); back < 25*time.Second || back > 27*time.Second {
		t.Errorf("back on path 1 at %v", back)
	}
	// A brownout: 10% loss each way on path 1.
	s.links[1].loss = 0.1
	s.runUntil(t0.Add(60 * time.Second))
	if len(s.moves) != 4 || s.moves[3].Active != 2 || s.moves[3].Reason != ReasonSLA {
		t.Fatalf("moves %+v", s.moves)
	}
	t.Logf("brownout detected after %v: %s", s.moveAt[3].Sub(t0.Add(40*time.Second)), s.moves[3].Detail)
	// It lasts: path 1 is never good long enough to be taken back.
	s.runUntil(t0.Add(5 * time.Minute))
	if len(s.moves) != 4 {
		t.Fatalf("flapping: %+v", s.moves[4:])
	}
	// Latency on path 2 rises past the SLA too: path 1 is no better, stay.
	s.links[2].delay = 100 * ms
	s.runUntil(t0.Add(6 * time.Minute))
	if len(s.moves) != 4 {
		t.Fatalf("moved between two bad paths: %+v", s.moves[4:])
	}
	if c := s.refl.Counters(); c.BadMAC+c.Malformed+c.UnknownKey+c.NotRequest != 0 || c.Reflected == 0 {
		t.Errorf("reflector counters %+v", c)
	}
}
