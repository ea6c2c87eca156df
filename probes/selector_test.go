package probes

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func up(loss float64, rtt, jit time.Duration) Stats {
	return Stats{State: StateUp, LossPercent: loss, RTTMean: rtt, Jitter: jit, Samples: 50, Settled: 50}
}

var (
	good    = up(0, 20*ms, 2*ms)
	down    = Stats{State: StateDown}
	unknown = Stats{State: StateUnknown}
	sla     = SLA{MaxLossPercent: 2, MaxRTT: 150 * ms, MaxJitter: 30 * ms}
)

// sel drives a Selector with a fake clock.
type sel struct {
	t   *testing.T
	s   *Selector
	now time.Time
}

func newSel(t *testing.T, opts SelectorOptions) *sel {
	return &sel{t: t, s: NewSelector(opts), now: t0}
}

// at selects at t0+d among paths given as id, priority, stats triples.
func (s *sel) at(d time.Duration, cands ...Candidate) Decision {
	s.now = t0.Add(d)
	return s.s.Select(s.now, cands)
}

func c(id PathID, prio int, st Stats) Candidate {
	return Candidate{Path: id, Priority: prio, Stats: st}
}

func (s *sel) expect(d Decision, active PathID, r Reason, detail string) {
	s.t.Helper()
	if d.Active != active || d.Reason != r || (r != ReasonNone) != d.Changed || !strings.Contains(d.Detail, detail) {
		s.t.Fatalf("at %v: decision %+v, want active %d reason %v detail %q", s.now.Sub(t0), d, active, r, detail)
	}
}

func TestSLACheck(t *testing.T) {
	for _, tc := range []struct {
		st   Stats
		want string
	}{
		{good, ""},
		{up(2, 150*ms, 30*ms), ""}, // at the limits is within them
		{up(6, 20*ms, 2*ms), "loss 6.0% > 2.0%"},
		{up(0, 180*ms, 2*ms), "rtt 180ms > 150ms"},
		{up(0, 20*ms, 40*ms), "jitter 40ms > 30ms"},
		{up(2.5, 151*ms, 31*ms), "loss 2.5% > 2.0%, rtt 151ms > 150ms, jitter 31ms > 30ms"},
	} {
		if got := sla.Check(tc.st); got != tc.want {
			t.Errorf("Check(%+v) = %q, want %q", tc.st, got, tc.want)
		}
	}
	if got := (SLA{}).Check(up(100, time.Hour, time.Hour)); got != "" {
		t.Errorf("the zero SLA has limits: %q", got)
	}
}

func TestSelectorInitial(t *testing.T) {
	s := newSel(t, SelectorOptions{})
	s.expect(s.at(0), NoPath, ReasonNone, "")
	// Nothing known yet: the preferred path.
	s.expect(s.at(0, c(1, 20, unknown), c(2, 10, unknown), c(3, 10, unknown)), 2, ReasonInitial, "initial")
	// The active path is still unknown: keep it.
	s.expect(s.at(100*ms, c(1, 20, good), c(2, 10, unknown), c(3, 10, unknown)), 2, ReasonNone, "")
	if s.s.Moves(ReasonInitial) != 1 {
		t.Error("initial move not counted")
	}

	// An up path beats a better priority that is down.
	s = newSel(t, SelectorOptions{})
	s.expect(s.at(0, c(1, 10, down), c(2, 20, good)), 2, ReasonInitial, "")
	// With all down, still pick one: the bind needs somewhere to send.
	s = newSel(t, SelectorOptions{})
	s.expect(s.at(0, c(1, 10, down), c(2, 20, down)), 1, ReasonInitial, "")
}

func TestSelectorDown(t *testing.T) {
	s := newSel(t, SelectorOptions{SLA: sla})
	s.at(0, c(1, 10, good), c(2, 20, good))
	dead := down
	dead.LastReply = t0.Add(400 * ms)
	// Left at once, for the other path.
	s.expect(s.at(time.Second, c(1, 10, dead), c(2, 20, good)), 2, ReasonDown, "down: no reply for 600ms")
	// Both down: stay.
	s.expect(s.at(2*time.Second, c(1, 10, dead), c(2, 20, down)), 2, ReasonNone, "")
	// 1 is up again but held down; 2 is down, so 1 is taken anyway.
	s.expect(s.at(3*time.Second, c(1, 10, good), c(2, 20, down)), 1, ReasonDown, "down")
	// A dead path is left for an unknown one rather than kept.
	s.expect(s.at(4*time.Second, c(1, 10, down), c(2, 20, down), c(3, 30, unknown)), 3, ReasonDown, "")
	if s.s.Moves(ReasonDown) != 3 {
		t.Errorf("down moves = %d", s.s.Moves(ReasonDown))
	}
}

func TestSelectorBrownout(t *testing.T) {
	lossy := up(6, 20*ms, 2*ms)
	tests := []struct {
		name   string
		other  Stats
		active PathID
		reason Reason
		detail string
	}{
		{"another meets the SLA", good, 2, ReasonSLA, "sla: loss 6.0% > 2.0%; path 2 meets the SLA"},
		{"another is worse", up(10, 20*ms, 2*ms), 1, ReasonNone, ""},
		{"another is a little better", up(4, 20*ms, 2*ms), 1, ReasonNone, ""},
		{"another is clearly better", up(3, 20*ms, 2*ms), 2, ReasonSLA, "path 2 is clearly better (loss 3.0% > 2.0%)"},
		{"another is down", down, 1, ReasonNone, ""},
		{"another is unknown", unknown, 1, ReasonNone, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSel(t, SelectorOptions{SLA: sla})
			s.at(0, c(1, 10, good), c(2, 20, unknown))
			s.expect(s.at(time.Second, c(1, 10, lossy), c(2, 20, tc.other)), tc.active, tc.reason, tc.detail)
		})
	}
}

// TestSelectorHoldDown: a path that was left is taken back only after it has
// been good for the hold time, and the clock restarts when it falters.
func TestSelectorHoldDown(t *testing.T) {
	s := newSel(t, SelectorOptions{SLA: sla})
	lossy := up(6, 20*ms, 2*ms)
	s.at(0, c(1, 10, good), c(2, 20, good))
	s.expect(s.at(1*time.Second, c(1, 10, lossy), c(2, 20, good)), 2, ReasonSLA, "")
	// 1 recovers at 2 s, falters at 5 s, recovers at 6 s.
	for d := 2 * time.Second; d < 16*time.Second; d += 200 * ms {
		st := good
		if d >= 5*time.Second && d < 6*time.Second {
			st = lossy
		}
		s.expect(s.at(d, c(1, 10, st), c(2, 20, good)), 2, ReasonNone, "")
	}
	s.expect(s.at(16*time.Second, c(1, 10, good), c(2, 20, good)), 1, ReasonPreferred, "preferred path 1 recovered: good for 10s")
}

// TestSelectorHeldTarget: a brownout does not move to a path still held
// down, but a dead path does.
func TestSelectorHeldTarget(t *testing.T) {
	s := newSel(t, SelectorOptions{SLA: sla})
	lossy := up(6, 20*ms, 2*ms)
	s.at(0, c(1, 10, good), c(2, 20, good))
	s.expect(s.at(time.Second, c(1, 10, down), c(2, 20, good)), 2, ReasonDown, "")
	s.expect(s.at(2*time.Second, c(1, 10, good), c(2, 20, lossy)), 2, ReasonNone, "")
	s.expect(s.at(11*time.Second, c(1, 10, good), c(2, 20, lossy)), 2, ReasonNone, "")
	// Good since 2 s: held until 12 s.
	s.expect(s.at(12*time.Second, c(1, 10, good), c(2, 20, lossy)), 1, ReasonSLA, "path 1 meets the SLA")
}

// TestSelectorNoPreemptionWithoutHold: a better-priority path that was never
// left still has to be good for HoldDown before it displaces a good path.
func TestSelectorNoPreemptionWithoutHold(t *testing.T) {
	s := newSel(t, SelectorOptions{HoldDown: 5 * time.Second})
	s.expect(s.at(0, c(1, 10, down), c(2, 20, good)), 2, ReasonInitial, "")
	s.expect(s.at(1*time.Second, c(1, 10, good), c(2, 20, good)), 2, ReasonNone, "")
	s.expect(s.at(5900*ms, c(1, 10, good), c(2, 20, good)), 2, ReasonNone, "")
	s.expect(s.at(6*time.Second, c(1, 10, good), c(2, 20, good)), 1, ReasonPreferred, "")
	// A path of equal or worse priority never preempts.
	s.expect(s.at(time.Hour, c(1, 10, good), c(2, 20, good), c(3, 10, good)), 1, ReasonNone, "")
}

// TestSelectorFlapDamping: a path that keeps failing soon after it is taken
// waits longer each time, up to MaxHoldDown; a path that served a long time
// starts again at HoldDown.
func TestSelectorFlapDamping(t *testing.T) {
	s := newSel(t, SelectorOptions{HoldDown: 10 * time.Second, MaxHoldDown: 40 * time.Second})
	s.at(0, c(1, 10, good), c(2, 20, good))
	now := time.Duration(0)
	var holds []time.Duration
	for range 5 {
		now += time.Second
		s.expect(s.at(now, c(1, 10, down), c(2, 20, good)), 2, ReasonDown, "")
		left := now
		for {
			now += 100 * ms
			if d := s.at(now, c(1, 10, good), c(2, 20, good)); d.Changed {
				break
			}
		}
		holds = append(holds, (now - left).Round(100*ms))
	}
	want := []time.Duration{10.1e9, 20.1e9, 40.1e9, 40.1e9, 40.1e9}
	if fmt.Sprint(holds) != fmt.Sprint(want) {
		t.Errorf("holds %v, want %v", holds, want)
	}
	// Path 1 now serves for longer than MaxHoldDown: the next hold is back
	// to HoldDown.
	now += time.Minute
	s.at(now, c(1, 10, good), c(2, 20, good))
	now += time.Second
	s.expect(s.at(now, c(1, 10, down), c(2, 20, good)), 2, ReasonDown, "")
	left := now
	for s.s.Active() != 1 {
		now += 100 * ms
		s.at(now, c(1, 10, good), c(2, 20, good))
	}
	if hold := (now - left).Round(100 * ms); hold != 10100*ms {
		t.Errorf("hold after a long service %v, want it back at 10.1s", hold)
	}
}

func TestSelectorRemoved(t *testing.T) {
	s := newSel(t, SelectorOptions{})
	s.at(0, c(1, 10, good), c(2, 20, good))
	s.expect(s.at(time.Second, c(2, 20, good)), 2, ReasonRemoved, "path 1 removed")
	s.expect(s.at(2*time.Second), NoPath, ReasonRemoved, "path 2 removed")
	if len(s.s.mem) != 0 {
		t.Error("removed paths remembered")
	}
}

// TestSelectorNoFlapping alternates which of two paths is in brownout every
// 3 s for 10 minutes: the hold-down bounds the moves.
func TestSelectorNoFlapping(t *testing.T) {
	s := newSel(t, SelectorOptions{SLA: sla})
	lossy := up(6, 20*ms, 2*ms)
	moves := 0
	for d := time.Duration(0); d < 10*time.Minute; d += 200 * ms {
		a, b := good, lossy
		if (d/(3*time.Second))%2 == 1 {
			a, b = lossy, good
		}
		if s.at(d, c(1, 10, a), c(2, 10, b)).Changed {
			moves++
		}
	}
	// Neither path is ever good for 10 s, so after the first brownout move
	// nothing is taken again.
	if moves > 2 {
		t.Errorf("%d moves", moves)
	}
}

// TestSelectorPropertyHold: whatever the stats, a path the selector left
// because it was down or in breach is not taken again, other than because
// the active path is down, before it has been good for HoldDown without a
// break since it was left.
func TestSelectorPropertyHold(t *testing.T) {
	const hold = 2 * time.Second
	rng := seeded(10)
	states := []Stats{good, good, good, up(6, 20*ms, 2*ms), up(0, 200*ms, 2*ms), down, unknown}
	for iter := range 300 {
		s := newSel(t, SelectorOptions{SLA: sla, HoldDown: hold})
		goodSince := map[PathID]time.Duration{}
		held := map[PathID]bool{} // left for a fault, hold not yet served
		cur := make([]Stats, 3)
		for i := range cur {
			cur[i] = states[rng.IntN(len(states))]
		}
		for step := range 300 {
			d := time.Duration(step) * 200 * ms
			if rng.IntN(8) == 0 {
				cur[rng.IntN(3)] = states[rng.IntN(len(states))]
			}
			var cs []Candidate
			for i, st := range cur {
				id := PathID(i + 1)
				cs = append(cs, c(id, i, st))
				if st.State == StateUp && sla.Check(st) == "" {
					if _, ok := goodSince[id]; !ok {
						goodSince[id] = d
					}
					if d-goodSince[id] >= hold {
						delete(held, id)
					}
				} else {
					delete(goodSince, id)
				}
			}
			dec := s.at(d, cs...)
			if !dec.Changed || dec.From == NoPath {
				continue
			}
			if held[dec.Active] && dec.Reason != ReasonDown {
				t.Fatalf("iter %d at %v: took back held path %d: %+v", iter, d, dec.Active, dec)
			}
			if dec.Reason == ReasonDown && cur[dec.From-1].State != StateDown {
				t.Fatalf("iter %d at %v: left a path that is not down as down: %+v", iter, d, dec)
			}
			if dec.Reason == ReasonDown || dec.Reason == ReasonSLA {
				held[dec.From] = true
			}
			delete(held, dec.Active)
		}
	}
}

func TestReasonString(t *testing.T) {
	want := []string{"none", "initial", "removed", "down", "sla", "preferred"}
	for r := ReasonNone; r < numReasons; r++ {
		if got := r.String(); got != want[r] {
			t.Errorf("%d: %q, want %q", r, got, want[r])
		}
	}
	if got := Reason(99).String(); got != "reason(99)" {
		t.Errorf("got %q", got)
	}
	if (&Selector{}).Moves(99) != 0 {
		t.Error("Moves of an unknown reason")
	}
}
