package probes

import (
	"slices"
	"testing"
	"time"
)

func TestSchedulerIntervals(t *testing.T) {
	s := NewScheduler(Options{TestOnlyRand: seeded(4)})
	s.Add(1, t0)
	first, _ := s.Next()
	if first.Before(t0) || !first.Before(t0.Add(DefaultInterval)) {
		t.Fatalf("first probe at %v, want within one interval", first.Sub(t0))
	}
	now := first
	var sum time.Duration
	const n = 5000
	for i := range n {
		if due := s.Due(now, nil); !slices.Equal(due, []PathID{1}) {
			t.Fatalf("probe %d: due = %v", i, due)
		}
		next, _ := s.Next()
		d := next.Sub(now)
		if d < 180*ms || d > 220*ms {
			t.Fatalf("interval %v outside 200ms±10%%", d)
		}
		if due := s.Due(next.Add(-time.Nanosecond), nil); len(due) != 0 {
			t.Fatalf("due early: %v", due)
		}
		sum += d
		now = next
	}
	if mean := sum / n; mean < 198*ms || mean > 202*ms {
		t.Errorf("mean interval %v, want 200ms", mean)
	}
}

func TestSchedulerNoJitter(t *testing.T) {
	s := NewScheduler(Options{Interval: 100 * ms, Jitter: -1, TestOnlyRand: seeded(5)})
	s.Add(1, t0)
	now, _ := s.Next()
	for range 10 {
		s.Due(now, nil)
		next, _ := s.Next()
		if next.Sub(now) != 100*ms {
			t.Fatalf("interval %v", next.Sub(now))
		}
		now = next
	}
}

// TestSchedulerLateCaller: a caller that wakes up late gets one probe per
// path, not a burst to catch up.
func TestSchedulerLateCaller(t *testing.T) {
	s := NewScheduler(Options{TestOnlyRand: seeded(6)})
	s.Add(1, t0)
	s.Add(2, t0)
	late := t0.Add(5 * time.Second)
	if due := s.Due(late, nil); !slices.Equal(due, []PathID{1, 2}) {
		t.Fatalf("due = %v", due)
	}
	if due := s.Due(late, nil); len(due) != 0 {
		t.Fatalf("burst: %v", due)
	}
	if next, _ := s.Next(); !next.After(late) {
		t.Fatalf("next %v not after now", next.Sub(late))
	}
}

// TestSchedulerSpreads: paths added at the same instant do not probe in
// step. Over a minute, no two of six paths send within 1 ms of each other
// more than a few times.
func TestSchedulerSpreads(t *testing.T) {
	s := NewScheduler(Options{TestOnlyRand: seeded(7)})
	for id := PathID(1); id <= 6; id++ {
		s.Add(id, t0)
	}
	var sends []time.Duration
	now := t0
	for now.Before(t0.Add(time.Minute)) {
		next, _ := s.Next()
		now = next
		for range s.Due(now, nil) {
			sends = append(sends, now.Sub(t0))
		}
	}
	if n := len(sends); n < 6*290 || n > 6*310 {
		t.Fatalf("%d probes in a minute, want about %d", n, 6*300)
	}
	close := 0
	for i := 1; i < len(sends); i++ {
		if sends[i]-sends[i-1] < ms {
			close++
		}
	}
	if close > len(sends)/20 {
		t.Errorf("%d of %d probes within 1 ms of the previous one", close, len(sends))
	}
}

func TestSchedulerAddRemove(t *testing.T) {
	s := NewScheduler(Options{TestOnlyRand: seeded(8)})
	if _, ok := s.Next(); ok {
		t.Fatal("empty scheduler has a next probe")
	}
	s.Add(3, t0)
	s.Add(1, t0)
	s.Add(2, t0)
	n1, _ := s.Next()
	s.Add(1, t0.Add(time.Hour)) // no effect
	if n2, _ := s.Next(); n2 != n1 {
		t.Fatal("re-adding a path rescheduled it")
	}
	s.Remove(2)
	s.Remove(9)
	if due := s.Due(t0.Add(time.Second), nil); !slices.Equal(due, []PathID{1, 3}) {
		t.Fatalf("due = %v", due)
	}
}

func TestSchedulerRepeatable(t *testing.T) {
	run := func() []time.Time {
		s := NewScheduler(Options{TestOnlyRand: seeded(9)})
		s.Add(1, t0)
		s.Add(2, t0)
		var out []time.Time
		for range 50 {
			next, _ := s.Next()
			s.Due(next, nil)
			out = append(out, next)
		}
		return out
	}
	if a, b := run(), run(); !slices.Equal(a, b) {
		t.Fatal("same seed, different schedule")
	}
}

func TestOptionsDefaults(t *testing.T) {
	o := Options{}.withDefaults()
	want := Options{Interval: 200 * ms, Jitter: 0.1, LossTimeout: time.Second, DownAfter: 600 * ms,
		DownProbes: 3, UpProbes: 3, Window: 50}
	if o != want {
		t.Errorf("defaults = %+v, want %+v", o, want)
	}
	if o := (Options{Interval: 50 * ms, Jitter: 3}).withDefaults(); o.DownAfter != 150*ms || o.Jitter != 0.5 {
		t.Errorf("derived = %+v", o)
	}
	if o := (Options{Jitter: -1}).withDefaults(); o.Jitter != 0 {
		t.Errorf("negative jitter = %v", o.Jitter)
	}
	for _, o := range []Options{{}, {Interval: time.Nanosecond}, {LossTimeout: time.Hour}, {Interval: time.Millisecond, UpProbes: 100}} {
		n := o.withDefaults().ringSize()
		if n&(n-1) != 0 || n < 64 || n > maxRing {
			t.Errorf("ringSize(%+v) = %d", o, n)
		}
	}
}
