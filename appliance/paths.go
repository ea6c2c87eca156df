package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/causeway-net/causeway/dataplane/bind"
	"github.com/causeway-net/causeway/dataplane/wgkey"
	"github.com/causeway-net/causeway/probes"
)

// This file is the appliance's path prober: it probes every path of every
// peer on the multipath bind (one local uplink to one remote endpoint, on
// the sockets and 5-tuples WireGuard uses), answers the far ends' probes,
// and moves each peer's traffic to the path its probes.Selector picks.
//
//	bind receive goroutines ─▶ prober.HandleProbe ─▶ Reflector ─▶ reply (requests)
//	                                                   └──────▶ Tracker.HandleReply (replies)
//	prober.run: Tracker.Poll ─▶ Marshal ─▶ bind.SendProbe
//	            Selector.Select per peer ─▶ bind.SetActive, log, count

// multipath is what the prober needs of the multipath bind. bindPaths
// provides it over a *bind.Bind; tests substitute a simulated network.
type multipath interface {
	// Paths returns the configured paths of the peer with key, in the
	// bind's order; nil for an unknown peer.
	Paths(peer wgkey.PublicKey) []bind.PathID
	// Active returns the path the peer's traffic takes.
	Active(peer wgkey.PublicKey) (bind.PathID, bool)
	// SetActive moves the peer's traffic to path, one of its Paths.
	SetActive(peer wgkey.PublicKey, path bind.PathID) error
	// SendProbe sends pkt on path.
	SendProbe(path bind.PathID, pkt []byte) error
}

// bindPaths is multipath over the bind, which knows peers by *bind.Peer.
type bindPaths struct{ b *bind.Bind }

func (m bindPaths) Paths(key wgkey.PublicKey) []bind.PathID {
	if p := m.b.LookupPeer(key); p != nil {
		return p.Paths()
	}
	return nil
}

func (m bindPaths) Active(key wgkey.PublicKey) (bind.PathID, bool) {
	if p := m.b.LookupPeer(key); p != nil {
		return p.Active()
	}
	return bind.PathID{}, false
}

func (m bindPaths) SetActive(key wgkey.PublicKey, path bind.PathID) error {
	p := m.b.LookupPeer(key)
	if p == nil {
		return fmt.Errorf("%w: peer %s is gone", bind.ErrUnknownPath, key)
	}
	return m.b.SetActive(p, path)
}

func (m bindPaths) SendProbe(path bind.PathID, pkt []byte) error { return m.b.SendProbe(path, pkt) }

// pathRef is what a probe path id stands for.
type pathRef struct {
	peer wgkey.PublicKey
	path bind.PathID
}

// pathIDs numbers paths for the probe wire format and keeps the numbering
// both ways. An id is never given to a second path (it wraps after 2^32-1
// adds), so a late reply to a removed path cannot count for a new one. The
// zero value is ready to use; it is not safe for concurrent use.
type pathIDs struct {
	last   probes.PathID
	byWire map[probes.PathID]pathRef
	byPath map[bind.PathID]probes.PathID
}

// add returns the id of path, numbering it if it has none. A path belongs
// to one peer: adding it for another peer renumbers it.
func (m *pathIDs) add(peer wgkey.PublicKey, path bind.PathID) probes.PathID {
	if m.byWire == nil {
		m.byWire = map[probes.PathID]pathRef{}
		m.byPath = map[bind.PathID]probes.PathID{}
	}
	if id, ok := m.byPath[path]; ok {
		if m.byWire[id].peer == peer {
			return id
		}
		m.remove(path)
	}
	m.last++
	if m.last == probes.NoPath {
		m.last++
	}
	m.byWire[m.last] = pathRef{peer: peer, path: path}
	m.byPath[path] = m.last
	return m.last
}

// remove forgets path; its id is not used again.
func (m *pathIDs) remove(path bind.PathID) {
	if id, ok := m.byPath[path]; ok {
		delete(m.byPath, path)
		delete(m.byWire, id)
	}
}

// ref returns the path that id numbers.
func (m *pathIDs) ref(id probes.PathID) (pathRef, bool) {
	r, ok := m.byWire[id]
	return r, ok
}

// id returns the number of path.
func (m *pathIDs) id(path bind.PathID) (probes.PathID, bool) {
	id, ok := m.byPath[path]
	return id, ok
}

// len is the number of paths.
func (m *pathIDs) len() int { return len(m.byPath) }

// proberOptions configure newProber. Uplinks must be set.
type proberOptions struct {
	// Uplinks are the uplink names, indexed like bind.PathID.Uplink.
	Uplinks []string
	// Probe configures the tracker (Interval from the config; the rest
	// at the defaults outside tests).
	Probe probes.Options
	// Selector configures each peer's selector; its SLA is replaced by
	// the peer's.
	Selector probes.SelectorOptions
	Logger   *slog.Logger
	// OnChange, if set, is called from the probe loop, holding nothing,
	// after paths changed state and after a sync (the pair follower).
	OnChange func()
}

// prober probes the paths of every peer and chooses their active paths.
// It is the bind's ProbeHandler from before the device exists (it answers
// probes with the config's keys at once) and starts sending and choosing
// once start gives it the bind. Its methods are safe for concurrent use.
//
// Life cycle: newProber -> start (once) -> sync (on every config) -> close.
type prober struct {
	opts proberOptions
	log  *slog.Logger
	keys *probes.Keyring
	refl *probes.Reflector
	tr   *probes.Tracker

	wrongPath atomic.Uint64 // verified replies that came in on another path than they were sent on
	wake      chan struct{} // a sync happened: poll now
	// changed is signalled (without blocking) when a path changed state
	// or the set of paths changed: the gateway's cue to recompute the
	// uplinks' health.
	changed chan struct{}

	mu    sync.Mutex // guards the fields below
	mp    multipath  // nil before start
	on    bool       // a probe key is set
	ids   pathIDs
	peers map[wgkey.PublicKey]*peerPaths
	order []wgkey.PublicKey // peers in config order
	moves map[probes.Reason]uint64

	cancel context.CancelFunc
	done   chan struct{}
}

// peerPaths is the probing state of one peer.
type peerPaths struct {
	name  string
	sel   *probes.Selector
	paths []trackedPath // in preference order
}

// trackedPath is one probed path of a peer.
type trackedPath struct {
	id       probes.PathID
	path     bind.PathID
	priority int
}

// moveReasons are the reasons a path change is counted under, in order.
var moveReasons = []probes.Reason{probes.ReasonInitial, probes.ReasonRemoved, probes.ReasonDown, probes.ReasonSLA, probes.ReasonPreferred}

func newProber(opts proberOptions) *prober {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	keys := new(probes.Keyring)
	p := &prober{
		opts:  opts,
		log:   log.With("component", "paths"),
		keys:  keys,
		refl:  probes.NewReflector(keys),
		tr:    probes.NewTracker(opts.Probe),
		wake:  make(chan struct{}, 1),
		peers: map[wgkey.PublicKey]*peerPaths{},
		moves: map[probes.Reason]uint64{},
	}
	p.changed = make(chan struct{}, 1)
	return p
}

// HandleProbe is the bind's probe handler: it answers requests and counts
// replies to our probes, if they came back on the path their id names.
// What it refuses is counted (see counters).
func (p *prober) HandleProbe(pkt []byte, path bind.PathID) []byte {
	reply, pkt1, err := p.refl.Handle(pkt)
	if err != nil || reply != nil {
		return reply
	}
	now := time.Now()
	p.mu.Lock()
	ref, ok := p.ids.ref(pkt1.Path)
	p.mu.Unlock()
	if !ok {
		return nil // a path removed since; the tracker would call it stray too
	}
	if ref.path != path {
		p.wrongPath.Add(1)
		return nil
	}
	_ = p.tr.HandleReply(pkt1, now) // late, duplicate and stray replies are counted in the path's stats
	return nil
}

// setKeys installs the probe keys of cfg, if it has any. Start calls it
// before the device exists, so that probes are answered from the start.
func (p *prober) setKeys(cfg *Config) error {
	if cfg.ProbeKey.IsZero() {
		return nil
	}
	if err := p.keys.Set(cfg.ProbeKey, cfg.ProbeAccepted...); err != nil {
		return fmt.Errorf("probe keys: %w", err)
	}
	return nil
}

// start gives the prober the bind and starts its loop; it syncs to cfg
// first. Call it once, after the device has its peers.
func (p *prober) start(mp multipath, cfg *Config) error {
	p.mu.Lock()
	p.mp = mp
	p.mu.Unlock()
	if err := p.sync(cfg); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		p.run(ctx)
	}()
	return nil
}

// close stops the loop and waits for it. Peers stay on the paths they
// are on. It is safe to call without start and more than once.
func (p *prober) close() error {
	if p.cancel != nil {
		p.cancel()
		<-p.done
	}
	return nil
}

// sync makes the keys and the probed paths those of cfg: for each peer of
// cfg, the paths the bind has for it (so call it after the device's
// SetPeers). Paths that stay keep their statistics; a new one starts
// unknown. Without a probe key nothing is probed and every peer is put
// back on its first path.
func (p *prober) sync(cfg *Config) error {
	if err := p.setKeys(cfg); err != nil {
		return err
	}
	on := !cfg.ProbeKey.IsZero()
	defer p.signalChanged() // after the unlock: the paths may have changed
	p.mu.Lock()
	defer p.mu.Unlock()
	if on != p.on {
		if on {
			p.log.Info("path probing on", "probe_key", cfg.ProbeKey.ID(), "interval", cfg.ProbeInterval)
		} else {
			p.log.Info("path probing off: no probe_key; each peer stays on its first path")
		}
	}
	wasOn := p.on
	p.on = on
	if !on {
		// Keep the keys: a reply already on its way still verifies, but
		// nothing is tracked any more. Put traffic back where the bind
		// starts it: each peer's first path.
		for _, pp := range p.peers {
			for _, tp := range pp.paths {
				p.tr.Remove(tp.id)
				p.ids.remove(tp.path)
			}
		}
		clear(p.peers)
		p.order = p.order[:0]
		if wasOn && p.mp != nil {
			for _, pc := range cfg.Peers {
				if paths := p.mp.Paths(pc.PublicKey); len(paths) > 0 {
					p.moveLocked(pc, paths[0], "probing off")
				}
			}
		}
		select {
		case p.wake <- struct{}{}: // OnChange: nothing is probed now
		default:
		}
		return nil
	}
	if p.mp == nil {
		return nil
	}

	// Removals first, so that a path that moves to another peer is
	// renumbered and its old statistics dropped.
	want := map[wgkey.PublicKey][]trackedPath{}
	owner := map[bind.PathID]wgkey.PublicKey{}
	for _, pc := range cfg.Peers {
		paths := preferenceOrder(p.mp.Paths(pc.PublicKey))
		tps := make([]trackedPath, len(paths))
		for i, bp := range paths {
			tps[i] = trackedPath{path: bp, priority: i}
			owner[bp] = pc.PublicKey
		}
		want[pc.PublicKey] = tps
	}
	for key, pp := range p.peers {
		for _, tp := range pp.paths {
			if o, ok := owner[tp.path]; !ok || o != key {
				p.tr.Remove(tp.id)
				p.ids.remove(tp.path)
			}
		}
		if _, stays := want[key]; !stays {
			delete(p.peers, key)
		}
	}
	now := time.Now()
	p.order = p.order[:0]
	for _, pc := range cfg.Peers {
		tps := want[pc.PublicKey]
		for i := range tps {
			_, had := p.ids.id(tps[i].path)
			tps[i].id = p.ids.add(pc.PublicKey, tps[i].path)
			if !had {
				if err := p.tr.Add(tps[i].id, now); err != nil && !errors.Is(err, probes.ErrPathExists) {
					return err
				}
			}
		}
		pp := p.peers[pc.PublicKey]
		if pp == nil {
			so := p.opts.Selector
			so.SLA = cfg.PathSLA(pc)
			pp = &peerPaths{sel: probes.NewSelector(so)}
			p.peers[pc.PublicKey] = pp
		}
		pp.name = pc.Name
		pp.sel.SetSLA(cfg.PathSLA(pc))
		pp.paths = tps
		p.order = append(p.order, pc.PublicKey)
	}
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

// preferenceOrder sorts a peer's paths by preference: the first uplink
// first, and on each uplink the peer's endpoints in the bind's (config)
// order.
func preferenceOrder(paths []bind.PathID) []bind.PathID {
	out := slices.Clone(paths)
	slices.SortStableFunc(out, func(a, b bind.PathID) int { return a.Uplink - b.Uplink })
	return out
}

// idleWait is how long the loop sleeps with nothing to probe.
const idleWait = time.Second

// run is the probe loop: it wakes when the tracker says (a probe due, or a
// path that may go down or a probe that may be lost), sends the due
// probes, and runs every peer's selector.
func (p *prober) run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	buf := make([]byte, 0, probes.Size)
	var sends []probeSend
	for {
		woke := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.wake:
			woke = true
		}
		now := time.Now()
		p.mu.Lock()
		on := p.on
		p.mu.Unlock()
		changed := false
		if on {
			reqs, changes := p.tr.Poll(now)
			changed = len(changes) > 0
			sends = p.resolve(reqs, sends[:0])
			for _, s := range sends {
				b, err := probes.Marshal(buf[:0], s.pkt, p.keys)
				if err != nil {
					p.log.Error("marshalling a probe", "err", err)
					continue
				}
				_ = p.mp.SendProbe(s.path, b) // failures are counted per uplink by the bind
			}
			p.logTransitions(changes)
			if len(changes) > 0 {
				p.signalChanged()
			}
			p.selectPaths(now)
		}
		if (changed || woke) && p.opts.OnChange != nil {
			p.opts.OnChange()
		}
		wait := idleWait
		if next, ok := p.tr.Next(); ok && on {
			wait = max(time.Until(next), 0)
		}
		t.Reset(wait)
	}
}

// probeSend is a request with the bind path it goes out on.
type probeSend struct {
	pkt  probes.Packet
	path bind.PathID
}

func (p *prober) resolve(reqs []probes.Packet, out []probeSend) []probeSend {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range reqs {
		if ref, ok := p.ids.ref(r.Path); ok {
			out = append(out, probeSend{pkt: r, path: ref.path})
		}
	}
	return out
}

func (p *prober) logTransitions(changes []probes.Transition) {
	if len(changes) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range changes {
		ref, ok := p.ids.ref(c.Path)
		if !ok {
			continue
		}
		name := ""
		if pp := p.peers[ref.peer]; pp != nil {
			name = pp.name
		}
		p.log.Info("path state", "peer", name, "path", p.describe(ref.path),
			"from", c.From.String(), "to", c.To.String(), "reason", c.Reason)
	}
}

// selectPaths runs every peer's selector and moves the peers whose choice
// changed.
func (p *prober) selectPaths(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var cands []probes.Candidate
	for _, key := range p.order {
		pp := p.peers[key]
		if len(pp.paths) == 0 {
			continue // a peer we only know once it calls (NAT)
		}
		cands = cands[:0]
		for _, tp := range pp.paths {
			st, ok := p.tr.Stats(tp.id)
			if !ok {
				continue
			}
			cands = append(cands, probes.Candidate{Path: tp.id, Priority: tp.priority, Stats: st})
		}
		d := pp.sel.Select(now, cands)
		if !d.Changed {
			continue
		}
		to, ok := p.ids.ref(d.Active)
		if !ok {
			continue
		}
		p.moves[d.Reason]++
		// Where the traffic is now: the bind's active path (after a
		// removal the bind may already have moved it).
		from := ""
		cur, hasCur := p.mp.Active(key)
		if hasCur {
			from = p.describe(cur)
		}
		if err := p.mp.SetActive(key, to.path); err != nil {
			p.log.Error("moving a peer to another path", "peer", pp.name, "to", p.describe(to.path), "err", err)
			continue
		}
		msg := "path changed"
		if d.Reason == probes.ReasonInitial {
			msg = "path chosen"
		}
		p.log.Info(msg, "peer", pp.name, "from", from, "to", p.describe(to.path),
			"reason", d.Reason.String(), "detail", d.Detail)
	}
}

// moveLocked moves a peer outside the selector (probing turned off).
func (p *prober) moveLocked(pc PeerConfig, path bind.PathID, why string) {
	if cur, ok := p.mp.Active(pc.PublicKey); ok && cur == path {
		return
	}
	if err := p.mp.SetActive(pc.PublicKey, path); err != nil {
		p.log.Error("moving a peer to its first path", "peer", pc.Name, "err", err)
		return
	}
	p.log.Info("path changed", "peer", pc.Name, "to", p.describe(path), "reason", why)
}

// describe names a path for logs: "wan1 198.18.11.2:51820".
func (p *prober) describe(path bind.PathID) string {
	return p.uplinkName(path.Uplink) + " " + path.Remote.String()
}

func (p *prober) uplinkName(i int) string {
	if i >= 0 && i < len(p.opts.Uplinks) {
		return p.opts.Uplinks[i]
	}
	return fmt.Sprintf("uplink%d", i)
}

// pathStatus is one probed path, for metrics.
type pathStatus struct {
	Peer, Uplink string
	Remote       netip.AddrPort
	Active       bool
	Stats        probes.Stats
}

// status returns every probed path in config order.
func (p *prober) status() []pathStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []pathStatus
	for _, key := range p.order {
		pp := p.peers[key]
		active, hasActive := p.mp.Active(key)
		for _, tp := range pp.paths {
			st, ok := p.tr.Stats(tp.id)
			if !ok {
				continue
			}
			out = append(out, pathStatus{
				Peer: pp.name, Uplink: p.uplinkName(tp.path.Uplink), Remote: tp.path.Remote,
				Active: hasActive && active == tp.path, Stats: st,
			})
		}
	}
	return out
}

// proberCounters are the prober's counts since start.
type proberCounters struct {
	Moves     map[probes.Reason]uint64 // path changes, every reason of moveReasons present
	Reflector probes.ReflectorCounters
	WrongPath uint64 // verified replies that came in on another path than their id names
}

func (p *prober) counters() proberCounters {
	c := proberCounters{Moves: make(map[probes.Reason]uint64, len(moveReasons)),
		Reflector: p.refl.Counters(), WrongPath: p.wrongPath.Load()}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, r := range moveReasons {
		c.Moves[r] = p.moves[r]
	}
	return c
}

// pathAggregate is one path's interval aggregate with what the path is,
// for the controller (see report.go).
type pathAggregate struct {
	Peer, Uplink string
	Remote       netip.AddrPort
	Agg          probes.Aggregate
}

// aggregates returns every probed path's aggregate since the previous
// call and starts a new interval (probes.Tracker.Aggregates). Paths
// removed in between are left out.
func (p *prober) aggregates(now time.Time) []pathAggregate {
	aggs := p.tr.Aggregates(now)
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]pathAggregate, 0, len(aggs))
	for _, a := range aggs {
		ref, ok := p.ids.ref(a.Path)
		if !ok {
			continue
		}
		pp := p.peers[ref.peer]
		if pp == nil {
			continue
		}
		out = append(out, pathAggregate{Peer: pp.name, Uplink: p.uplinkName(ref.path.Uplink), Remote: ref.path.Remote, Agg: a})
	}
	return out
}
