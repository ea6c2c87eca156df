package probes

import (
	"slices"
	"time"
)

// Stats is a snapshot of a path. The RTT figures and LossPercent cover the
// last Options.Window samples and settled probes; the counts cover the
// path's lifetime.
type Stats struct {
	State     State
	Since     time.Time // when State was entered
	LastReply time.Time // zero if there has been none

	Sent      uint64 // probes sent
	Received  uint64 // replies counted
	Lost      uint64 // probes unanswered after LossTimeout
	Late      uint64 // replies after LossTimeout, ignored
	Duplicate uint64 // replies to an answered probe, ignored
	Stray     uint64 // replies to no probe this path sent, ignored

	Samples                         int // RTT samples in the window
	RTTMin, RTTMean, RTTP50, RTTP99 time.Duration
	Jitter                          time.Duration // RFC 3550 estimator over every sample
	Settled                         int           // settled probes in the window
	LossPercent                     float64       // lost among Settled, 0 to 100
}

// Aggregate is what a Path did during one interval, for shipping to the
// controller. Each count is of events that happened during the interval
// (a probe sent near the end may be lost in the next interval), so the sums
// over consecutive intervals are exact.
type Aggregate struct {
	Path       PathID
	Start, End time.Time

	Sent, Received, Lost, Late, Duplicate, Stray uint64

	// RTT figures of the replies received in the interval; zero if none.
	RTTMin, RTTMean, RTTP50, RTTP99, RTTMax time.Duration
	Jitter                                  time.Duration // at End

	State        State // at End
	StateChanges int
	Downtime     time.Duration // time spent down during the interval
}

// LossPercent is the share of probes settled during the interval that were
// lost, 0 to 100.
func (a Aggregate) LossPercent() float64 {
	if a.Received+a.Lost == 0 {
		return 0
	}
	return 100 * float64(a.Lost) / float64(a.Received+a.Lost)
}

// Stats returns a snapshot of the path. It does not advance the path; call
// Advance first for figures as of now.
func (p *Path) Stats() Stats {
	st := Stats{
		State:       p.state,
		Since:       p.time(p.since),
		LastReply:   p.lastReply,
		Sent:        p.sent,
		Received:    p.received,
		Lost:        p.lost,
		Late:        p.late,
		Duplicate:   p.dup,
		Stray:       p.stray,
		Samples:     p.rtt.n,
		Jitter:      p.jit.value(),
		Settled:     p.outcome.n,
		LossPercent: p.outcome.lossPercent(),
	}
	if p.rtt.n > 0 {
		p.scratch = p.rtt.sorted(p.scratch)
		st.RTTMin = time.Duration(p.scratch[0])
		st.RTTMean = time.Duration(p.rtt.sum / int64(p.rtt.n))
		st.RTTP50 = time.Duration(percentile(p.scratch, 50))
		st.RTTP99 = time.Duration(percentile(p.scratch, 99))
	}
	return st
}

// Aggregate returns what the path did since the previous call (or since it
// was created) up to now, and starts a new interval at now. Like Stats it
// does not advance the path.
func (p *Path) Aggregate(now time.Time) Aggregate {
	t := p.ns(now)
	a := &p.agg
	out := Aggregate{
		Path:         p.id,
		Start:        p.time(a.start),
		End:          now,
		Sent:         a.sent,
		Received:     a.received,
		Lost:         a.lost,
		Late:         a.late,
		Duplicate:    a.dup,
		Stray:        a.stray,
		Jitter:       p.jit.value(),
		State:        p.state,
		StateChanges: a.changes,
		Downtime:     time.Duration(a.downtime),
	}
	if p.state == StateDown {
		out.Downtime += time.Duration(t - max(p.since, a.start))
	}
	if r := &a.rtt; r.count > 0 {
		sorted := r.samples
		slices.Sort(sorted)
		out.RTTMin = time.Duration(r.min)
		out.RTTMax = time.Duration(r.max)
		out.RTTMean = time.Duration(r.sum / int64(r.count))
		out.RTTP50 = time.Duration(percentile(sorted, 50))
		out.RTTP99 = time.Duration(percentile(sorted, 99))
	}
	a.rtt.reset()
	*a = aggregator{start: t, rtt: a.rtt}
	return out
}
