package probes

import (
	"fmt"
	"strings"
	"time"
)

// SLA is the service level a path should meet. A zero field sets no limit.
// The controller holds one per tenant and may override it per site pair;
// the appliance gets the one that applies to each peer.
type SLA struct {
	MaxLossPercent float64       // compared with Stats.LossPercent
	MaxRTT         time.Duration // compared with Stats.RTTMean
	MaxJitter      time.Duration // compared with Stats.Jitter
}

// Check returns "" if st meets the SLA, or its breaches, e.g.
// "loss 6.0% > 2.0%, rtt 180ms > 150ms".
func (s SLA) Check(st Stats) string {
	var b []string
	if s.MaxLossPercent > 0 && st.LossPercent > s.MaxLossPercent {
		b = append(b, fmt.Sprintf("loss %.1f%% > %.1f%%", st.LossPercent, s.MaxLossPercent))
	}
	if s.MaxRTT > 0 && st.RTTMean > s.MaxRTT {
		b = append(b, fmt.Sprintf("rtt %v > %v", st.RTTMean.Round(time.Millisecond/10), s.MaxRTT))
	}
	if s.MaxJitter > 0 && st.Jitter > s.MaxJitter {
		b = append(b, fmt.Sprintf("jitter %v > %v", st.Jitter.Round(time.Millisecond/10), s.MaxJitter))
	}
	return strings.Join(b, ", ")
}

// excess is the largest ratio of a figure to its limit: at most 1 for a
// path that meets the SLA, 0 if the SLA sets no limit.
func (s SLA) excess(st Stats) float64 {
	var e float64
	if s.MaxLossPercent > 0 {
		e = max(e, st.LossPercent/s.MaxLossPercent)
	}
	if s.MaxRTT > 0 {
		e = max(e, float64(st.RTTMean)/float64(s.MaxRTT))
	}
	if s.MaxJitter > 0 {
		e = max(e, float64(st.Jitter)/float64(s.MaxJitter))
	}
	return e
}

// The defaults of SelectorOptions.
const (
	DefaultHoldDown     = 10 * time.Second
	DefaultMaxHoldDown  = 2 * time.Minute
	DefaultBetterFactor = 2.0
)

// SelectorOptions configure a Selector. The zero value means the defaults;
// so does a zero or negative field.
type SelectorOptions struct {
	// SLA is what a path should meet; the zero SLA sets no limits, and then
	// only state and priority decide.
	SLA SLA
	// HoldDown is how long a path must have been up and within the SLA
	// before it is taken back after being left, and before a preferred path
	// displaces a good active one. Default DefaultHoldDown (10 s).
	HoldDown time.Duration
	// MaxHoldDown caps the hold of a flapping path. A path left less than
	// MaxHoldDown after it was taken waits twice its previous hold before it
	// is taken again; one that served longer starts again at HoldDown.
	// Default DefaultMaxHoldDown (2 min).
	MaxHoldDown time.Duration
	// BetterFactor decides "clearly better" when no candidate meets the
	// SLA: an active path in breach is left for one whose worst figure,
	// relative to its limit, is at least BetterFactor times smaller.
	// Default DefaultBetterFactor (2).
	BetterFactor float64
}

func (o SelectorOptions) withDefaults() SelectorOptions {
	if o.HoldDown <= 0 {
		o.HoldDown = DefaultHoldDown
	}
	if o.MaxHoldDown <= 0 {
		o.MaxHoldDown = DefaultMaxHoldDown
	}
	o.MaxHoldDown = max(o.MaxHoldDown, o.HoldDown)
	if o.BetterFactor <= 0 {
		o.BetterFactor = DefaultBetterFactor
	}
	return o
}

// Candidate is one path of a peer, as the Selector sees it.
type Candidate struct {
	Path PathID
	// Priority orders paths that are otherwise equal; lower is preferred
	// (e.g. the configured priority of the path's uplink).
	Priority int
	Stats    Stats
}

// Reason classifies a move of the active path, for counting.
type Reason uint8

// The reasons for a move.
const (
	ReasonNone      Reason = iota // no move
	ReasonInitial                 // the first choice for the peer
	ReasonRemoved                 // the active path is no longer a candidate
	ReasonDown                    // the active path is not up
	ReasonSLA                     // the active path breaches the SLA and another is better
	ReasonPreferred               // a path of better priority has been good for the hold time
	numReasons
)

func (r Reason) String() string {
	switch r {
	case ReasonNone:
		return "none"
	case ReasonInitial:
		return "initial"
	case ReasonRemoved:
		return "removed"
	case ReasonDown:
		return "down"
	case ReasonSLA:
		return "sla"
	case ReasonPreferred:
		return "preferred"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Decision is the outcome of Selector.Select.
type Decision struct {
	Active  PathID // NoPath only if there are no candidates
	Changed bool   // Active differs from the previous decision
	From    PathID // the previous active path, if Changed
	Reason  Reason // ReasonNone if not Changed
	// Detail says why in words, for the log; e.g. "sla: loss 6.0% > 2.0%;
	// path 2 meets the SLA". Empty if not Changed.
	Detail string
}

// A Selector chooses the active path of one peer. The rules, in order:
//
//  1. A path that is down is left at once for the best path that is not
//     down, even one still held down: a dead path is the worst choice.
//  2. A path that is up but breaches the SLA (a brownout) is left for the
//     best path that meets the SLA and is not held down; failing that, for
//     one that is clearly better (see SelectorOptions.BetterFactor).
//  3. A good active path is left only for a path of better priority that
//     has been good for the hold time ("preferred path recovered").
//
// A path left by rule 1 or 2 is held down: it is not taken again, except by
// rule 1, before it has been up and within the SLA for its hold time. A path
// in StateUnknown is kept while it is the active one; it goes up or down
// within DownAfter. "Best" orders paths by how they stand (good and not
// held, good, up, unknown, down), then Priority, then how far they are from
// their limits, then mean RTT, then id.
//
// Select takes the time as a parameter; the Selector never reads a clock. It
// is not safe for concurrent use.
type Selector struct {
	opts   SelectorOptions
	active PathID
	mem    map[PathID]*pathMemory
	moves  [numReasons]uint64
}

// pathMemory is what the Selector remembers about a path between calls.
type pathMemory struct {
	goodSince time.Time     // since when it has been up and within the SLA; zero if not
	takenAt   time.Time     // when it last became active
	hold      time.Duration // its current hold; 0 if never left
	held      bool          // whether it must be good for hold before it is taken
}

// NewSelector returns a selector without an active path.
func NewSelector(opts SelectorOptions) *Selector {
	return &Selector{opts: opts.withDefaults(), mem: make(map[PathID]*pathMemory)}
}

// SetSLA changes the SLA, e.g. when a new netmap arrives. It takes effect
// at the next Select.
func (s *Selector) SetSLA(sla SLA) { s.opts.SLA = sla }

// Active returns the active path, NoPath before the first Select.
func (s *Selector) Active() PathID { return s.active }

// Moves returns how many moves Select has made for reason r.
func (s *Selector) Moves(r Reason) uint64 {
	if r >= numReasons {
		return 0
	}
	return s.moves[r]
}

// view is a candidate with what the Selector derives from it.
type view struct {
	*Candidate
	m      *pathMemory
	good   bool
	held   bool // left earlier and not yet good for its hold
	excess float64
	breach string
}

func (v *view) standing() int {
	switch {
	case v.good && !v.held:
		return 0
	case v.good:
		return 1
	case v.Stats.State == StateUp:
		return 2
	case v.Stats.State == StateUnknown:
		return 3
	}
	return 4
}

func (v *view) better(w *view) bool {
	if a, b := v.standing(), w.standing(); a != b {
		return a < b
	}
	if v.Priority != w.Priority {
		return v.Priority < w.Priority
	}
	if v.excess != w.excess {
		return v.excess < w.excess
	}
	if v.Stats.RTTMean != w.Stats.RTTMean {
		return v.Stats.RTTMean < w.Stats.RTTMean
	}
	return v.Path < w.Path
}

// Select returns the active path given the peer's candidates at now. Call
// it whenever the paths' stats change, and at least once per probe
// interval, so that the time a path has been good is measured. Paths not
// among cands are forgotten; each Path must appear at most once.
func (s *Selector) Select(now time.Time, cands []Candidate) Decision {
	views := make([]view, len(cands))
	var cur *view
	for i := range cands {
		c := &cands[i]
		m := s.mem[c.Path]
		if m == nil {
			m = &pathMemory{}
			s.mem[c.Path] = m
		}
		v := view{Candidate: c, m: m, excess: s.opts.SLA.excess(c.Stats)}
		if c.Stats.State == StateUp {
			v.breach = s.opts.SLA.Check(c.Stats)
			v.good = v.breach == ""
		}
		if !v.good {
			m.goodSince = time.Time{}
		} else if m.goodSince.IsZero() {
			m.goodSince = now
		}
		if m.held && v.good && now.Sub(m.goodSince) >= m.hold {
			m.held = false
		}
		v.held = m.held
		views[i] = v
		if c.Path == s.active {
			cur = &views[i]
		}
	}
	if len(s.mem) > len(cands) {
		for id := range s.mem {
			if !present(cands, id) {
				delete(s.mem, id)
			}
		}
	}

	best := func(ok func(*view) bool) *view {
		var b *view
		for i := range views {
			v := &views[i]
			if v != cur && ok(v) && (b == nil || v.better(b)) {
				b = v
			}
		}
		return b
	}

	switch {
	case cur == nil:
		r := ReasonInitial
		detail := "initial choice"
		if s.active != NoPath {
			r, detail = ReasonRemoved, fmt.Sprintf("path %d removed", s.active)
		}
		return s.move(now, cur, best(func(*view) bool { return true }), r, detail)

	case cur.Stats.State == StateDown:
		if t := best(func(v *view) bool { return v.Stats.State != StateDown }); t != nil {
			detail := "down"
			if !cur.Stats.LastReply.IsZero() {
				detail = fmt.Sprintf("down: no reply for %v", now.Sub(cur.Stats.LastReply).Round(time.Millisecond))
			}
			return s.move(now, cur, t, ReasonDown, detail)
		}

	case cur.Stats.State == StateUp && !cur.good:
		if t := best(func(v *view) bool { return v.good && !v.held }); t != nil {
			return s.move(now, cur, t, ReasonSLA, fmt.Sprintf("sla: %s; path %d meets the SLA", cur.breach, t.Path))
		}
		if t := best(func(v *view) bool {
			return v.Stats.State == StateUp && !v.held && v.excess*s.opts.BetterFactor <= cur.excess
		}); t != nil {
			return s.move(now, cur, t, ReasonSLA,
				fmt.Sprintf("sla: %s; path %d is clearly better (%s)", cur.breach, t.Path, t.breach))
		}

	case cur.good:
		if t := best(func(v *view) bool {
			return v.good && !v.held && v.Priority < cur.Priority && now.Sub(v.m.goodSince) >= s.opts.HoldDown
		}); t != nil {
			return s.move(now, cur, t, ReasonPreferred,
				fmt.Sprintf("preferred path %d recovered: good for %v", t.Path, now.Sub(t.m.goodSince).Round(time.Millisecond)))
		}
	}
	return Decision{Active: s.active}
}

// move makes to the active path; to nil means there is no candidate. from,
// nil if the active path is gone, is held down if it is left for a fault.
func (s *Selector) move(now time.Time, from, to *view, r Reason, detail string) Decision {
	d := Decision{From: s.active, Reason: r, Detail: detail}
	if from != nil && (r == ReasonDown || r == ReasonSLA) {
		m := from.m
		if !m.takenAt.IsZero() && now.Sub(m.takenAt) < s.opts.MaxHoldDown {
			m.hold = min(max(2*m.hold, s.opts.HoldDown), s.opts.MaxHoldDown)
		} else {
			m.hold = s.opts.HoldDown
		}
		m.held = true
	}
	if to != nil {
		d.Active = to.Path
		to.m.takenAt = now
		to.m.held = false
	}
	if d.Active == s.active {
		return Decision{Active: s.active}
	}
	d.Changed = true
	s.active = d.Active
	s.moves[r]++
	return d
}

func present(cands []Candidate, id PathID) bool {
	for i := range cands {
		if cands[i].Path == id {
			return true
		}
	}
	return false
}
