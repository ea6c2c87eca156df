package probes

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// A Tracker holds the paths of an appliance and schedules their probes. It
// is safe for concurrent use: typically one goroutine sends (Next, Poll) and
// the receive goroutines of the bind hand it replies (HandleReply).
//
// The sending loop:
//
//	for {
//		wait until t.Next()
//		reqs, changes := t.Poll(now)
//		for each request: Marshal it and send it on its path
//		for each change: log it, then run the Selector of the path's peer
//	}
type Tracker struct {
	opts Options

	mu    sync.Mutex
	paths map[PathID]*Path
	sched *Scheduler
	ids   []PathID // scratch for Poll
}

// NewTracker returns a tracker without paths.
func NewTracker(opts Options) *Tracker {
	opts = opts.withDefaults()
	return &Tracker{opts: opts, paths: make(map[PathID]*Path), sched: NewScheduler(opts)}
}

// ErrPathExists is returned by Add for an id the tracker already has.
var ErrPathExists = errors.New("probes: path exists")

// Add starts tracking path id, whose first probe goes out within one
// interval. id must not be NoPath.
func (t *Tracker) Add(id PathID, now time.Time) error {
	if id == NoPath {
		return errors.New("probes: path id 0 is reserved")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.paths[id]; ok {
		return fmt.Errorf("%w: %d", ErrPathExists, id)
	}
	t.paths[id] = NewPath(id, t.opts, now)
	t.sched.Add(id, now)
	return nil
}

// Remove stops tracking path id and forgets its statistics. Replies still
// in flight for it are then stray.
func (t *Tracker) Remove(id PathID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.paths, id)
	t.sched.Remove(id)
}

// Paths returns the ids of the tracked paths in order.
func (t *Tracker) Paths() []PathID {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.sched.ids)
}

// Poll records and returns the requests due at now, one per path whose turn
// it is, and then advances every path, returning the state transitions
// since the previous Poll (including those that replies caused), in path
// order. The caller sends each request on its path.
func (t *Tracker) Poll(now time.Time) (requests []Packet, changes []Transition) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ids = t.sched.Due(now, t.ids[:0])
	for _, id := range t.ids {
		requests = append(requests, t.paths[id].Probe(now))
	}
	for _, id := range t.sched.ids {
		changes = append(changes, t.paths[id].Advance(now)...)
	}
	return requests, changes
}

// Next returns when Poll should next be called: the earliest of the next
// due probe and the next time a path may be declared down or a probe lost.
// ok is false if there are no paths.
func (t *Tracker) Next() (next time.Time, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	next, ok = t.sched.Next()
	for _, p := range t.paths {
		if d, dok := p.Deadline(); dok && (!ok || d.Before(next)) {
			next, ok = d, true
		}
	}
	return next, ok
}

// HandleReply counts a verified reply received now; see Path.Reply. A reply
// for a path the tracker does not have is ErrStray.
func (t *Tracker) HandleReply(pkt Packet, now time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.paths[pkt.Path]
	if !ok {
		return fmt.Errorf("%w: unknown path %d", ErrStray, pkt.Path)
	}
	return p.Reply(pkt, now)
}

// Stats returns the statistics of path id; see Path.Stats.
func (t *Tracker) Stats(id PathID) (Stats, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.paths[id]
	if !ok {
		return Stats{}, false
	}
	return p.Stats(), true
}

// Aggregates returns the interval aggregate of every path, in path order,
// and starts a new interval at now; see Path.Aggregate. The appliance calls
// it every 10 s and ships the result.
func (t *Tracker) Aggregates(now time.Time) []Aggregate {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Aggregate, 0, len(t.paths))
	for _, id := range t.sched.ids {
		out = append(out, t.paths[id].Aggregate(now))
	}
	return out
}
