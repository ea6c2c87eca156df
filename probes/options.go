package probes

import (
	"math/rand/v2"
	"time"
)

// The defaults of Options. With them a dead path is declared down between
// 0.4 and 0.66 s after its last reply; docs/probes.md has the arithmetic.
const (
	DefaultInterval    = 200 * time.Millisecond
	DefaultJitter      = 0.1
	DefaultLossTimeout = time.Second
	DefaultDownProbes  = 3
	DefaultUpProbes    = 3
	DefaultWindow      = 50
)

// Options configure a Path, a Scheduler and a Tracker. The zero value means
// the defaults; so does a zero or negative field, except where noted.
type Options struct {
	// Interval is the mean time between two probes of a path. Default
	// DefaultInterval (200 ms).
	Interval time.Duration
	// Jitter spreads probes of different paths apart: each interval is drawn
	// uniformly from Interval×[1-Jitter, 1+Jitter]. Default DefaultJitter
	// (0.1); negative means none; values above 0.5 are taken as 0.5.
	Jitter float64
	// LossTimeout is how long a probe may go unanswered before it is lost. A
	// reply that arrives later is counted as late and otherwise ignored; one
	// that arrives earlier counts, whatever its order. Default
	// DefaultLossTimeout (1 s).
	LossTimeout time.Duration
	// DownAfter and DownProbes decide when a path goes down: when no reply
	// has arrived for DownAfter, and at least DownProbes probes have been
	// sent since the last reply (so a sender that stalls does not blame the
	// path). DownAfter defaults to 3×Interval, 600 ms at the default
	// interval; DownProbes to DefaultDownProbes (3).
	DownAfter  time.Duration
	DownProbes int
	// UpProbes decides when a path that is not up goes up: when the replies
	// to UpProbes consecutive sequence numbers have arrived, in any order,
	// since it last went down. Default DefaultUpProbes (3).
	UpProbes int
	// Window is the number of RTT samples, and of settled (answered or
	// lost) probes, that Stats covers. Default DefaultWindow (50: 10 s at
	// the default interval).
	Window int
	// TestOnlyRand, if set, draws the scheduler's jitter, for tests that
	// need a repeatable schedule. Nil means a generator seeded from
	// crypto/rand.
	TestOnlyRand *rand.Rand
}

// withDefaults returns o with every unset field at its default.
func (o Options) withDefaults() Options {
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	switch {
	case o.Jitter == 0:
		o.Jitter = DefaultJitter
	case o.Jitter < 0:
		o.Jitter = 0
	case o.Jitter > 0.5:
		o.Jitter = 0.5
	}
	if o.LossTimeout <= 0 {
		o.LossTimeout = DefaultLossTimeout
	}
	if o.DownAfter <= 0 {
		o.DownAfter = 3 * o.Interval
	}
	if o.DownProbes <= 0 {
		o.DownProbes = DefaultDownProbes
	}
	if o.UpProbes <= 0 {
		o.UpProbes = DefaultUpProbes
	}
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	return o
}

// ringSize is the number of recent probes a Path remembers: enough for every
// probe that can still be pending at the slowest jittered interval, and for
// a run of UpProbes, rounded up to a power of two, at most maxRing. (With
// a LossTimeout of more than about 16000 intervals, the oldest pending
// probes are declared lost early.)
func (o Options) ringSize() int {
	fastest := time.Duration(float64(o.Interval) * (1 - o.Jitter))
	need := min(int64(o.LossTimeout/max(fastest, 1)), maxRing) + int64(o.UpProbes) + 8
	n := int64(64)
	for n < need && n < maxRing {
		n <<= 1
	}
	return int(n)
}

const maxRing = 1 << 14
