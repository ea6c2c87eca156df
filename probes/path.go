package probes

import (
	"errors"
	"fmt"
	"time"
)

// State is what a Path knows about its far end.
//
//	          UpProbes consecutive replies
//	Unknown ───────────────────────────────▶ Up
//	   │                                     ▲ │
//	   │ silent for DownAfter                │ │ silent for DownAfter
//	   │ and DownProbes probes      UpProbes │ │ and DownProbes probes
//	   ▼                 consecutive replies │ ▼
//	  Down ──────────────────────────────────┘
//
// "Silent" counts from the last reply, or from the first probe of a path
// that never had one.
type State uint8

// The states of a path.
const (
	StateUnknown State = iota // no verdict yet
	StateUp
	StateDown
)

func (s State) String() string {
	switch s {
	case StateUnknown:
		return "unknown"
	case StateUp:
		return "up"
	case StateDown:
		return "down"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Errors Path.Reply returns for the replies it ignores. Each is counted in
// Stats and changes nothing else; in particular a late reply does not undo
// the loss of its probe.
var (
	ErrDuplicate = errors.New("probes: duplicate reply")
	ErrLate      = errors.New("probes: late reply")
	ErrStray     = errors.New("probes: stray reply")
)

// Transition is a change of a path's State.
type Transition struct {
	Path     PathID
	From, To State
	At       time.Time
	Reason   string // e.g. "no reply for 600ms, 3 probes unanswered"
}

func (t Transition) String() string {
	return fmt.Sprintf("path %d %v -> %v: %s", t.Path, t.From, t.To, t.Reason)
}

type probeState uint8

const (
	pending probeState = iota
	answered
	lost
)

type slot struct {
	seq   uint64
	sent  int64 // nanoseconds since the path's epoch
	state probeState
	gen   uint32 // the down count when it was answered
}

// Path tracks one path: it numbers the probes, matches replies to them and
// keeps the statistics and the state. Every method takes the current time;
// times must not go backwards. A Path is not safe for concurrent use
// (Tracker serialises access).
type Path struct {
	id    PathID
	opts  Options
	epoch time.Time // Timestamps count from here

	ring   []slot // probe seq lives at ring[seq & mask]
	mask   uint64
	next   uint64 // the next sequence number; the first is 1
	oldest uint64 // no probe before it is pending

	state   State
	since   int64
	gen     uint32 // how many times the path went down
	changes []Transition

	probed     bool
	lastHeard  int64 // the last reply, or the first probe if none
	sinceReply int   // probes sent since the last reply
	lastReply  time.Time

	sent, received, lost, late, dup, stray uint64

	rtt     sampleWindow
	outcome outcomeWindow
	jit     jitter
	scratch []int64

	agg aggregator
}

type aggregator struct {
	start                                  int64
	sent, received, lost, late, dup, stray uint64
	changes                                int
	downtime                               int64
	rtt                                    reservoir
}

// NewPath returns a path in StateUnknown whose clock starts at now. opts
// with defaults applied are used as documented on Options.
func NewPath(id PathID, opts Options, now time.Time) *Path {
	opts = opts.withDefaults()
	n := opts.ringSize()
	return &Path{
		id:      id,
		opts:    opts,
		epoch:   now,
		ring:    make([]slot, n),
		mask:    uint64(n - 1),
		next:    1,
		oldest:  1,
		rtt:     newSampleWindow(opts.Window),
		outcome: newOutcomeWindow(opts.Window),
		scratch: make([]int64, 0, opts.Window),
	}
}

// ID returns the path's id.
func (p *Path) ID() PathID { return p.id }

// State returns the path's current state.
func (p *Path) State() State { return p.state }

func (p *Path) ns(t time.Time) int64    { return int64(t.Sub(p.epoch)) }
func (p *Path) time(ns int64) time.Time { return p.epoch.Add(time.Duration(ns)) }
func (p *Path) slot(seq uint64) *slot   { return &p.ring[seq&p.mask] }
func (p *Path) inRing(seq uint64) bool {
	return seq > 0 && seq < p.next && p.next-seq <= uint64(len(p.ring))
}
func (p *Path) ringFull(seq uint64) bool      { return p.oldest+uint64(len(p.ring)) <= seq }
func (p *Path) expired(s *slot, t int64) bool { return t-s.sent >= int64(p.opts.LossTimeout) }

// Probe records that a request is sent now and returns it, for the caller
// to Marshal and send on the path.
func (p *Path) Probe(now time.Time) Packet {
	t := p.ns(now)
	seq := p.next
	for p.ringFull(seq) {
		// Only if probes go out much faster than Options.Interval.
		if s := p.slot(p.oldest); s.state == pending {
			p.markLost(s)
		}
		p.oldest++
	}
	p.next++
	*p.slot(seq) = slot{seq: seq, sent: t}
	p.sent++
	p.agg.sent++
	if !p.probed {
		p.probed, p.lastHeard = true, t
	}
	p.sinceReply++
	return Packet{Kind: KindRequest, Path: p.id, Seq: seq, Timestamp: uint64(t)}
}

// Reply counts the reply pkt, received now. It returns ErrDuplicate,
// ErrLate or ErrStray (wrapped) for a reply it ignores. A reply may bring
// the path up; Advance reports the transition.
func (p *Path) Reply(pkt Packet, now time.Time) error {
	t := p.ns(now)
	p.settle(t)
	seq := pkt.Seq
	if pkt.Kind != KindReply || pkt.Path != p.id || !p.inRing(seq) {
		return p.strayf("seq %d", seq)
	}
	s := p.slot(seq)
	switch {
	case s.seq != seq || uint64(s.sent) != pkt.Timestamp || t < s.sent:
		return p.strayf("seq %d: timestamp %d", seq, pkt.Timestamp)
	case s.state == answered:
		p.dup++
		p.agg.dup++
		return fmt.Errorf("%w: seq %d", ErrDuplicate, seq)
	case s.state == lost:
		p.late++
		p.agg.late++
		return fmt.Errorf("%w: seq %d after %v", ErrLate, seq, time.Duration(t-s.sent))
	}
	rtt := t - s.sent
	s.state, s.gen = answered, p.gen
	p.received++
	p.agg.received++
	p.outcome.add(false)
	p.rtt.add(rtt)
	p.agg.rtt.add(rtt)
	p.jit.add(rtt)
	p.lastHeard, p.sinceReply, p.lastReply = t, 0, now
	if p.state != StateUp && p.run(seq) >= p.opts.UpProbes {
		p.transition(StateUp, t, fmt.Sprintf("%d consecutive replies", p.opts.UpProbes))
	}
	return nil
}

func (p *Path) strayf(format string, args ...any) error {
	p.stray++
	p.agg.stray++
	return fmt.Errorf("%w: path %d: %s", ErrStray, p.id, fmt.Sprintf(format, args...))
}

// run returns the length, up to UpProbes, of the run of consecutive
// sequence numbers around seq answered since the path last went down.
func (p *Path) run(seq uint64) int {
	ok := func(q uint64) bool {
		s := p.slot(q)
		return p.inRing(q) && s.seq == q && s.state == answered && s.gen == p.gen
	}
	n := 1
	for q := seq - 1; n < p.opts.UpProbes && ok(q); q-- {
		n++
	}
	for q := seq + 1; n < p.opts.UpProbes && ok(q); q++ {
		n++
	}
	return n
}

// Advance settles the probes whose LossTimeout has passed and takes the path
// down if it has been silent too long. It returns the transitions since the
// last call, including those caused by Reply, oldest first.
func (p *Path) Advance(now time.Time) []Transition {
	t := p.ns(now)
	p.settle(t)
	if p.state != StateDown && p.probed && p.sinceReply >= p.opts.DownProbes {
		if silent := t - p.lastHeard; silent >= int64(p.opts.DownAfter) {
			what := "no reply for"
			if p.lastReply.IsZero() {
				what = "no reply since the first probe, for"
			}
			p.transition(StateDown, t, fmt.Sprintf("%s %v, %d probes unanswered",
				what, time.Duration(silent).Round(time.Millisecond), p.sinceReply))
		}
	}
	out := p.changes
	p.changes = nil
	return out
}

// Deadline returns the earliest time at which Advance would change anything
// without a new Probe or Reply; ok is false if there is none.
func (p *Path) Deadline() (deadline time.Time, ok bool) {
	var d int64
	for seq := p.oldest; seq < p.next; seq++ {
		if s := p.slot(seq); s.state == pending {
			d, ok = s.sent+int64(p.opts.LossTimeout), true
			break
		}
	}
	if p.state != StateDown && p.probed && p.sinceReply >= p.opts.DownProbes {
		if down := p.lastHeard + int64(p.opts.DownAfter); !ok || down < d {
			d, ok = down, true
		}
	}
	if !ok {
		return time.Time{}, false
	}
	return p.time(d), true
}

// settle declares lost every pending probe whose LossTimeout has passed.
func (p *Path) settle(t int64) {
	for ; p.oldest < p.next; p.oldest++ {
		s := p.slot(p.oldest)
		if s.state == pending {
			if !p.expired(s, t) {
				return
			}
			p.markLost(s)
		}
	}
}

func (p *Path) markLost(s *slot) {
	s.state = lost
	p.lost++
	p.agg.lost++
	p.outcome.add(true)
}

func (p *Path) transition(to State, t int64, reason string) {
	if p.state == StateDown {
		p.agg.downtime += t - max(p.since, p.agg.start)
	}
	if to == StateDown {
		p.gen++
	}
	p.changes = append(p.changes, Transition{Path: p.id, From: p.state, To: to, At: p.time(t), Reason: reason})
	p.state, p.since = to, t
	p.agg.changes++
}
