package probes

import (
	crand "crypto/rand"
	"math/rand/v2"
	"slices"
	"time"
)

// A Scheduler says when each path's next probe is due. Each interval is
// drawn from Options.Interval×[1-Jitter, 1+Jitter], so the probes of paths
// started together drift apart instead of leaving in bursts, while each
// path still averages one probe per Interval. A Scheduler is not safe for
// concurrent use (Tracker serialises access).
type Scheduler struct {
	interval time.Duration
	jitter   float64
	rng      *rand.Rand
	ids      []PathID // sorted, so that draws happen in a repeatable order
	due      map[PathID]time.Time
}

// NewScheduler returns an empty scheduler; it uses opts.Interval,
// opts.Jitter and opts.TestOnlyRand.
func NewScheduler(opts Options) *Scheduler {
	opts = opts.withDefaults()
	rng := opts.TestOnlyRand
	if rng == nil {
		var seed [32]byte
		crand.Read(seed[:]) // never fails (see crypto/rand.Read)
		rng = rand.New(rand.NewChaCha8(seed))
	}
	return &Scheduler{interval: opts.Interval, jitter: opts.Jitter, rng: rng, due: make(map[PathID]time.Time)}
}

// Add schedules path id, whose first probe is due at a random point of the
// coming interval. Adding a scheduled path changes nothing.
func (s *Scheduler) Add(id PathID, now time.Time) {
	if _, ok := s.due[id]; ok {
		return
	}
	i, _ := slices.BinarySearch(s.ids, id)
	s.ids = slices.Insert(s.ids, i, id)
	s.due[id] = now.Add(time.Duration(s.rng.Int64N(int64(s.interval))))
}

// Remove stops scheduling path id.
func (s *Scheduler) Remove(id PathID) {
	if i, ok := slices.BinarySearch(s.ids, id); ok {
		s.ids = slices.Delete(s.ids, i, i+1)
		delete(s.due, id)
	}
}

// Due appends to dst the paths whose probe is due at now, in id order, and
// schedules their next probe one jittered interval after the one that was
// due (or after now, if that is already past: a late caller gets no burst).
func (s *Scheduler) Due(now time.Time, dst []PathID) []PathID {
	for _, id := range s.ids {
		d := s.due[id]
		if d.After(now) {
			continue
		}
		dst = append(dst, id)
		next := d.Add(s.draw())
		if !next.After(now) {
			next = now.Add(s.draw())
		}
		s.due[id] = next
	}
	return dst
}

// Next returns when the earliest probe is due; ok is false if no path is
// scheduled.
func (s *Scheduler) Next() (next time.Time, ok bool) {
	for _, id := range s.ids {
		if d := s.due[id]; !ok || d.Before(next) {
			next, ok = d, true
		}
	}
	return next, ok
}

// draw returns one jittered interval.
func (s *Scheduler) draw() time.Duration {
	f := 1 + s.jitter*(2*s.rng.Float64()-1)
	return time.Duration(float64(s.interval) * f)
}
