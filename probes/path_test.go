package probes

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// run drives a Path with a fake clock.
type run struct {
	t    *testing.T
	p    *Path
	now  time.Time
	reqs map[uint64]Packet
	log  []Transition
}

func newRun(t *testing.T, opts Options) *run {
	return &run{t: t, p: NewPath(1, opts, t0), now: t0, reqs: map[uint64]Packet{}}
}

// at moves the clock to t0+d. On the way it calls Advance at every instant
// Deadline announces, as a Tracker driven by Next does.
func (r *run) at(d time.Duration) *run {
	target := t0.Add(d)
	for {
		dl, ok := r.p.Deadline()
		if !ok || !dl.Before(target) {
			break
		}
		r.now = later(dl, r.now)
		r.log = append(r.log, r.p.Advance(r.now)...)
	}
	r.now = target
	r.log = append(r.log, r.p.Advance(r.now)...)
	return r
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (r *run) probe() uint64 {
	req := r.p.Probe(r.now)
	r.reqs[req.Seq] = req
	return req.Seq
}

func (r *run) reply(seq uint64) error {
	req, ok := r.reqs[seq]
	if !ok {
		req = Packet{Kind: KindRequest, Path: 1, Seq: seq}
	}
	err := r.p.Reply(req.Reply(), r.now)
	r.log = append(r.log, r.p.Advance(r.now)...)
	return err
}

func (r *run) mustReply(seq uint64) {
	r.t.Helper()
	if err := r.reply(seq); err != nil {
		r.t.Fatalf("reply %d at %v: %v", seq, r.now.Sub(t0), err)
	}
}

func (r *run) states() string {
	var b []string
	for _, tr := range r.log {
		b = append(b, fmt.Sprintf("%v@%v", tr.To, tr.At.Sub(t0)))
	}
	return strings.Join(b, " ")
}

// steady sends probes every 200 ms from start for n probes, each answered
// after rtt, and returns the time of the last reply.
func (r *run) steady(start time.Duration, n int, rtt time.Duration) time.Duration {
	var last time.Duration
	for i := range n {
		s := start + time.Duration(i)*200*ms
		r.at(s)
		seq := r.probe()
		r.at(s + rtt)
		r.mustReply(seq)
		last = s + rtt
	}
	return last
}

func TestPathRTTStats(t *testing.T) {
	r := newRun(t, Options{Window: 10})
	rtts := []time.Duration{30, 10, 20, 50, 40, 60, 70, 90, 80, 100, 25, 35}
	for i, v := range rtts {
		s := time.Duration(i) * 200 * ms
		r.at(s)
		seq := r.probe()
		r.at(s + v*ms)
		r.mustReply(seq)
	}
	st := r.p.Stats()
	// The window holds the last 10: 20 50 40 60 70 90 80 100 25 35.
	if st.Samples != 10 || st.RTTMin != 20*ms || st.RTTMean != 57*ms || st.RTTP50 != 50*ms || st.RTTP99 != 100*ms {
		t.Errorf("stats = %+v", st)
	}
	if st.Sent != 12 || st.Received != 12 || st.Lost != 0 || st.LossPercent != 0 || st.Settled != 10 {
		t.Errorf("counts = %+v", st)
	}
	if st.State != StateUp || st.LastReply != t0.Add(11*200*ms+35*ms) {
		t.Errorf("state %v, last reply %v", st.State, st.LastReply)
	}
	if st.Jitter <= 0 {
		t.Errorf("jitter = %v", st.Jitter)
	}
}

// TestPathLoss runs table-driven reply patterns. In a pattern each probe is
// sent 200 ms apart and answered after the given delay in ms, with "x"
// meaning never and "d" a duplicate of the previous reply.
func TestPathLoss(t *testing.T) {
	tests := []struct {
		name                      string
		delays                    []string
		received, lost, late, dup uint64
	}{
		{"all answered", []string{"20", "20", "20", "20"}, 4, 0, 0, 0},
		{"one lost", []string{"20", "x", "20", "20"}, 3, 1, 0, 0},
		{"reordered within the timeout", []string{"900", "700", "500", "300", "100"}, 5, 0, 0, 0},
		{"late reply is loss", []string{"20", "1000", "1500", "20"}, 2, 2, 2, 0},
		{"just in time", []string{"999", "20"}, 2, 0, 0, 0},
		// A "d" stands in for its own probe, which is lost.
		{"duplicates are not replies", []string{"20", "d", "30", "d", "d"}, 2, 3, 0, 3},
		{"all lost", []string{"x", "x", "x", "x", "x", "x"}, 0, 6, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			type ev struct {
				at  time.Duration
				seq uint64
			}
			p := NewPath(1, Options{}, t0)
			var events []ev
			reqs := map[uint64]Packet{}
			var lastSeq uint64
			var lastDelay time.Duration
			for i, d := range tc.delays {
				switch d {
				case "x":
					lastSeq = 0
					continue
				case "d":
					events = append(events, ev{time.Duration(i)*200*ms + lastDelay + 5*ms, lastSeq})
					continue
				}
				var v int
				fmt.Sscan(d, &v)
				lastSeq, lastDelay = uint64(i+1), time.Duration(v)*ms
				events = append(events, ev{time.Duration(i)*200*ms + lastDelay, lastSeq})
			}
			// Interleave sends and replies in time order.
			for i := range tc.delays {
				events = append(events, ev{time.Duration(i) * 200 * ms, 0})
			}
			sort.SliceStable(events, func(i, j int) bool { return events[i].at < events[j].at })
			for _, e := range events {
				now := t0.Add(e.at)
				if e.seq == 0 {
					req := p.Probe(now)
					reqs[req.Seq] = req
					continue
				}
				p.Reply(reqs[e.seq].Reply(), now)
			}
			p.Advance(t0.Add(time.Minute))
			st := p.Stats()
			if st.Received != tc.received || st.Lost != tc.lost || st.Late != tc.late || st.Duplicate != tc.dup {
				t.Errorf("received %d lost %d late %d dup %d; want %d %d %d %d",
					st.Received, st.Lost, st.Late, st.Duplicate, tc.received, tc.lost, tc.late, tc.dup)
			}
			if st.Sent != uint64(len(tc.delays)) || st.Received+st.Lost != st.Sent {
				t.Errorf("sent %d != received %d + lost %d", st.Sent, st.Received, st.Lost)
			}
		})
	}
}

func TestPathReplyErrors(t *testing.T) {
	r := newRun(t, Options{})
	seq := r.probe()
	req := r.reqs[seq]
	r.at(10 * ms)
	for _, tc := range []struct {
		name string
		pkt  Packet
		want error
	}{
		{"request, not reply", req, ErrStray},
		{"other path", func() Packet { p := req.Reply(); p.Path = 2; return p }(), ErrStray},
		{"seq 0", func() Packet { p := req.Reply(); p.Seq = 0; return p }(), ErrStray},
		{"future seq", func() Packet { p := req.Reply(); p.Seq = 2; return p }(), ErrStray},
		{"far past seq", func() Packet { p := req.Reply(); p.Seq = 1 << 60; return p }(), ErrStray},
		{"wrong timestamp (an earlier incarnation)", func() Packet { p := req.Reply(); p.Timestamp++; return p }(), ErrStray},
		{"the reply", req.Reply(), nil},
		{"again", req.Reply(), ErrDuplicate},
	} {
		if err := r.p.Reply(tc.pkt, r.now); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	if st := r.p.Stats(); st.Stray != 6 || st.Duplicate != 1 || st.Received != 1 {
		t.Errorf("stats = %+v", st)
	}
}

// TestPathDownTiming: with the defaults a path that stops answering goes down
// exactly DownAfter after its last reply, whatever the RTT.
func TestPathDownTiming(t *testing.T) {
	for _, rtt := range []time.Duration{1 * ms, 30 * ms, 150 * ms, 190 * ms, 450 * ms} {
		t.Run(rtt.String(), func(t *testing.T) {
			r := newRun(t, Options{Jitter: -1})
			last := r.steady(0, 5, rtt)
			if r.p.State() != StateUp {
				t.Fatalf("not up after 5 replies: %s", r.states())
			}
			// The far end dies; probes keep going out every 200 ms.
			for s := 5 * 200 * ms; s < 3*time.Second; s += 200 * ms {
				r.at(s)
				r.probe()
			}
			down := r.log[len(r.log)-1]
			if want := t0.Add(last + 600*ms); len(r.log) != 2 || down.To != StateDown || down.At != want {
				t.Fatalf("transitions %s, want down@%v", r.states(), want.Sub(t0))
			}
			if want := fmt.Sprintf("no reply for 600ms, %d probes unanswered", 3+rtt/(200*ms)); down.Reason != want {
				t.Errorf("reason = %q, want %q", down.Reason, want)
			}
		})
	}
}

func TestPathDeadline(t *testing.T) {
	p := NewPath(1, Options{Jitter: -1}, t0)
	if _, ok := p.Deadline(); ok {
		t.Fatal("deadline before the first probe")
	}
	p.Probe(t0)
	if d, ok := p.Deadline(); !ok || d != t0.Add(time.Second) {
		t.Fatalf("deadline = %v, %v; want the loss timeout", d, ok)
	}
	p.Probe(t0.Add(200 * ms))
	p.Probe(t0.Add(400 * ms))
	// Three probes, none answered: down 600 ms after the first.
	if d, ok := p.Deadline(); !ok || d != t0.Add(600*ms) {
		t.Fatalf("deadline = %v; want down at 600ms", d.Sub(t0))
	}
	if tr := p.Advance(t0.Add(599 * ms)); len(tr) != 0 {
		t.Fatalf("down early: %v", tr)
	}
	if tr := p.Advance(t0.Add(600 * ms)); len(tr) != 1 || tr[0].From != StateUnknown || tr[0].To != StateDown {
		t.Fatalf("transitions = %v", tr)
	}
	// Down: only the loss timeouts remain.
	if d, ok := p.Deadline(); !ok || d != t0.Add(time.Second) {
		t.Fatalf("deadline = %v, %v", d.Sub(t0), ok)
	}
}

// TestPathSenderStall: silence is only blamed on the path if probes went out.
func TestPathSenderStall(t *testing.T) {
	r := newRun(t, Options{Jitter: -1})
	last := r.steady(0, 4, 20*ms)
	r.at(last + 5*time.Second) // the sender stalled: nothing sent
	if r.p.State() != StateUp {
		t.Fatalf("down while nothing was sent: %s", r.states())
	}
	// Sending resumes and the path answers.
	r.steady(last+5*time.Second, 3, 20*ms)
	if len(r.log) != 1 {
		t.Fatalf("transitions: %s", r.states())
	}
}

func TestPathUpHysteresis(t *testing.T) {
	t.Run("needs UpProbes consecutive replies", func(t *testing.T) {
		r := newRun(t, Options{})
		r.steady(0, 2, 20*ms)
		if r.p.State() != StateUnknown {
			t.Fatalf("state after 2 replies = %v", r.p.State())
		}
		r.steady(400*ms, 1, 20*ms)
		if r.p.State() != StateUp || r.log[0].Reason != "3 consecutive replies" {
			t.Fatalf("after 3 replies: %s", r.states())
		}
	})
	t.Run("50% loss never comes up", func(t *testing.T) {
		r := newRun(t, Options{})
		for i := range 100 {
			s := time.Duration(i) * 200 * ms
			r.at(s)
			seq := r.probe()
			if i%2 == 0 {
				r.at(s + 20*ms)
				r.mustReply(seq)
			}
		}
		if r.p.State() == StateUp || len(r.log) != 0 {
			t.Fatalf("transitions: %s", r.states())
		}
	})
	t.Run("reordered replies count", func(t *testing.T) {
		r := newRun(t, Options{})
		for i := range 3 {
			r.at(time.Duration(i) * 200 * ms)
			r.probe()
		}
		r.at(500 * ms)
		r.mustReply(2)
		r.mustReply(3)
		if r.p.State() == StateUp {
			t.Fatal("up with a gap")
		}
		r.mustReply(1)
		if r.p.State() != StateUp {
			t.Fatalf("not up after 1..3 in the order 2 3 1: %s", r.states())
		}
	})
	t.Run("replies from before going down do not count", func(t *testing.T) {
		r := newRun(t, Options{Jitter: -1})
		r.steady(0, 3, 20*ms) // seqs 1-3, up
		for i := 3; i < 8; i++ {
			r.at(time.Duration(i) * 200 * ms)
			r.probe() // seqs 4-8, unanswered for now
		}
		// 420 ms was the last reply: down at 1020 ms. Reply 4 then arrives
		// (900 ms after it was sent, within the loss timeout).
		r.at(1500 * ms)
		if r.p.State() != StateDown {
			t.Fatalf("not down: %s", r.states())
		}
		r.mustReply(4)
		if r.p.State() != StateDown {
			t.Fatalf("up again on one reply next to pre-down ones: %s", r.states())
		}
		r.mustReply(5)
		r.mustReply(6)
		if r.p.State() != StateUp {
			t.Fatalf("not up after 3 consecutive replies: %s", r.states())
		}
		if got := r.states(); got != "up@420ms down@1.02s up@1.5s" {
			t.Errorf("transitions %s", got)
		}
	})
}

func TestPathNeverAnswers(t *testing.T) {
	r := newRun(t, Options{Jitter: -1})
	for i := range 10 {
		r.at(time.Duration(i) * 200 * ms)
		r.probe()
	}
	if got := r.states(); got != "down@600ms" {
		t.Fatalf("transitions %s", got)
	}
	if !strings.HasPrefix(r.log[0].Reason, "no reply since the first probe, for 600ms, 3 probes unanswered") {
		t.Errorf("reason %q", r.log[0].Reason)
	}
}

// TestPathRingOverflow: probing far faster than the interval settles the
// oldest probes early rather than overwriting them.
func TestPathRingOverflow(t *testing.T) {
	p := NewPath(1, Options{}, t0)
	n := len(p.ring)
	var reqs []Packet
	for i := range 3 * n {
		reqs = append(reqs, p.Probe(t0.Add(time.Duration(i)*time.Microsecond)))
	}
	now := t0.Add(time.Millisecond * 5)
	if err := p.Reply(reqs[0].Reply(), now); !errors.Is(err, ErrStray) {
		t.Errorf("reply to an evicted probe: %v", err)
	}
	if err := p.Reply(reqs[len(reqs)-1].Reply(), now); err != nil {
		t.Errorf("reply to the newest probe: %v", err)
	}
	st := p.Stats()
	if st.Lost != uint64(2*n) || st.Received != 1 {
		t.Errorf("lost %d received %d, want %d, 1", st.Lost, st.Received, 2*n)
	}
}

func TestPathAggregate(t *testing.T) {
	r := newRun(t, Options{Jitter: -1})
	r.steady(0, 5, 20*ms) // up at 420 ms
	// Silence from 1 s: down at 1.42 s.
	for s := 1000 * ms; s < 4*time.Second; s += 200 * ms {
		r.at(s)
		r.probe()
	}
	r.at(5 * time.Second)
	a := r.p.Aggregate(r.now)
	if a.Start != t0 || a.End != t0.Add(5*time.Second) || a.Path != 1 {
		t.Errorf("interval %v..%v", a.Start, a.End)
	}
	if a.Sent != 20 || a.Received != 5 || a.Lost != 15 || a.StateChanges != 2 || a.State != StateDown {
		t.Errorf("aggregate = %+v", a)
	}
	if a.RTTMin != 20*ms || a.RTTMax != 20*ms || a.RTTMean != 20*ms || a.RTTP50 != 20*ms || a.RTTP99 != 20*ms {
		t.Errorf("rtt = %+v", a)
	}
	if want := 5*time.Second - 1420*ms; a.Downtime != want {
		t.Errorf("downtime = %v, want %v", a.Downtime, want)
	}
	if got := a.LossPercent(); got != 75 {
		t.Errorf("loss = %v%%", got)
	}
	// The next interval: down for 2 s more, then back up.
	start := 5 * time.Second
	r.at(start + 2*time.Second)
	r.steady(start+2*time.Second, 3, 10*ms)
	r.at(start + 10*time.Second)
	b := r.p.Aggregate(r.now)
	if b.Start != a.End || b.Sent != 3 || b.Received != 3 || b.Lost != 0 || b.StateChanges != 1 || b.State != StateUp {
		t.Errorf("second aggregate = %+v", b)
	}
	if want := 2*time.Second + 410*ms; b.Downtime != want {
		t.Errorf("downtime = %v, want %v", b.Downtime, want)
	}
	if b.RTTMean != 10*ms {
		t.Errorf("rtt mean = %v", b.RTTMean)
	}
	// Nothing happens: an empty interval.
	c := r.p.Aggregate(r.now.Add(10 * time.Second))
	if c.Sent != 0 || c.Received != 0 || c.RTTMean != 0 || c.StateChanges != 0 || c.Downtime != 0 {
		t.Errorf("empty aggregate = %+v", c)
	}
}

// TestPathAccountingProperty feeds random delays, losses, duplicates and
// reorderings and checks the counts against a direct computation.
func TestPathAccountingProperty(t *testing.T) {
	rng := seeded(3)
	for iter := range 300 {
		opts := Options{Jitter: -1, Window: 1 + rng.IntN(60)}
		p := NewPath(1, opts, t0)
		type ev struct {
			at   time.Duration
			seq  uint64
			kind int // 0 send, 1 reply
		}
		var events []ev
		n := 1 + rng.IntN(200)
		var wantRecv, wantLate, wantDup uint64
		for i := range n {
			sent := time.Duration(i) * 200 * ms
			events = append(events, ev{sent, 0, 0})
			if rng.IntN(5) == 0 {
				continue // lost on the way
			}
			d := time.Duration(rng.Int64N(int64(1500 * ms)))
			events = append(events, ev{sent + d, uint64(i + 1), 1})
			copies := rng.IntN(3)
			for range copies {
				events = append(events, ev{sent + d + time.Duration(rng.Int64N(int64(300*ms))), uint64(i + 1), 1})
			}
			// The copies arrive after the first: duplicates if it came in
			// time, late like it if not.
			if d < time.Second {
				wantRecv++
				wantDup += uint64(copies)
			} else {
				wantLate += uint64(copies + 1)
			}
		}
		sort.SliceStable(events, func(i, j int) bool { return events[i].at < events[j].at })
		reqs := map[uint64]Packet{}
		var recv, late, dup uint64
		for _, e := range events {
			now := t0.Add(e.at)
			if e.kind == 0 {
				req := p.Probe(now)
				reqs[req.Seq] = req
				continue
			}
			switch err := p.Reply(reqs[e.seq].Reply(), now); {
			case err == nil:
				recv++
			case errors.Is(err, ErrLate):
				late++
			case errors.Is(err, ErrDuplicate):
				dup++
			default:
				t.Fatalf("iter %d: %v", iter, err)
			}
		}
		p.Advance(t0.Add(time.Duration(n)*200*ms + 2*time.Second))
		st := p.Stats()
		if st.Received != wantRecv || st.Late != wantLate || st.Duplicate != wantDup {
			t.Fatalf("iter %d: stats %+v; want received %d, late %d, dup %d", iter, st, wantRecv, wantLate, wantDup)
		}
		if recv != st.Received || late != st.Late || dup != st.Duplicate {
			t.Fatalf("iter %d: errors returned disagree with the counts", iter)
		}
		if st.Sent != uint64(n) || st.Received+st.Lost != st.Sent {
			t.Fatalf("iter %d: sent %d received %d lost %d", iter, st.Sent, st.Received, st.Lost)
		}
		if st.Settled != min(n, opts.Window) || st.Samples != min(int(st.Received), opts.Window) {
			t.Fatalf("iter %d: window %d settled, %d samples", iter, st.Settled, st.Samples)
		}
		if !slices.Contains([]State{StateUnknown, StateUp, StateDown}, st.State) {
			t.Fatalf("state %v", st.State)
		}
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{StateUnknown: "unknown", StateUp: "up", StateDown: "down", 7: "state(7)"} {
		if got := s.String(); got != want {
			t.Errorf("%d: %q, want %q", s, got, want)
		}
	}
}
