package appliance

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/causeway-net/causeway/dataplane"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// This file turns the dataplane's cumulative counters into usage records
// (managed mode only); usage_spool.go keeps them on disk and
// usage_ship.go sends them to the controller:
//
//	every interval: counters ─▶ deltas ─▶ record ─▶ spool (fsync) ─▶ POST /api/v1/usage/report ─▶ delete acked
//
// The meter reads the counting TUN's atomics (dataplane.Device.
// InnerCounters) and the gateway's counters from its own goroutine; the
// data path never waits for it, and it never waits for the network.
// docs/usage-spool.md describes the records, the spool and what a crash
// can lose.

// Usage record defaults and limits.
const (
	// UsageInterval is how often a usage record is cut by default.
	UsageInterval = 10 * time.Second
	// MinUsageInterval and MaxUsageInterval bound the interval an
	// operator may set.
	MinUsageInterval = time.Second
	MaxUsageInterval = time.Hour
	// usageMaxHeld bounds the records cut but not yet in the spool (the
	// disk failing); each holds at most an hour, so this is a week.
	usageMaxHeld = 7 * 24
)

// Meters and directions of a usage entry.
const (
	// MeterOverlay is traffic through the overlay to or from one peer
	// site: tx into the tunnel, rx out of it (inner IP bytes).
	MeterOverlay = "overlay"
	// MeterGateway is traffic through the site's Internet gateway: tx
	// LAN to Internet, rx Internet to LAN (IP bytes).
	MeterGateway = "gateway"
	DirTx        = "tx"
	DirRx        = "rx"
)

// UsageEntry is one meter, peer site and direction of a usage record.
type UsageEntry struct {
	Meter     string `json:"meter"`
	PeerSite  string `json:"peer_site,omitempty"` // overlay only
	Direction string `json:"direction"`
	Bytes     uint64 `json:"bytes"`
	Packets   uint64 `json:"packets"`
}

// UsageRecord is the usage of one interval, as the appliance spools it
// and sends it (POST /api/v1/usage/report). Seq is per appliance and
// strictly increasing across restarts; an interval never crosses an hour
// boundary; Usage lists only non-zero entries, sorted.
type UsageRecord struct {
	Seq   uint64       `json:"seq"`
	Start time.Time    `json:"start"`
	End   time.Time    `json:"end"`
	Usage []UsageEntry `json:"usage"`
}

// usageBytes is the total of the record's entries, for logs of what was
// lost.
func (r *UsageRecord) usageBytes() uint64 {
	var n uint64
	for _, e := range r.Usage {
		n += e.Bytes
	}
	return n
}

// GatewayCounters reads the site's Internet-gateway counters: Tx is LAN
// to Internet, Rx Internet to LAN, cumulative since the gateway started.
// false means the appliance is not the gateway right now (nothing is read
// and nothing is lost: the next reading continues from the last one).
type GatewayCounters func() (dataplane.Counters, bool)

// peerUsage is one peer's cumulative inner counters and the site they are
// metered against.
type peerUsage struct {
	Key   wgkey.PublicKey
	Site  string
	Inner dataplane.Counters
}

// usageSource is what the meter reads: a running appliance. Its counters
// are cumulative from 0 when its device was created.
type usageSource interface {
	usageCounters() []peerUsage
}

// peerSites remembers the metered site of every peer key an appliance
// has configured, also after the peer is gone: the dataplane keeps a
// removed peer's counters, and the meter attributes their last increase.
type peerSites struct {
	mu sync.Mutex
	m  map[wgkey.PublicKey]string
}

// note records the sites of cfg's peers.
func (s *peerSites) note(cfg *Config) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[wgkey.PublicKey]string{}
	}
	for _, p := range cfg.Peers {
		s.m[p.PublicKey] = p.MeterSite()
	}
}

func (s *peerSites) site(k wgkey.PublicKey) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if site, ok := s.m[k]; ok {
		return site
	}
	// Not reachable: every key the device counts for was configured
	// through note first. Better attributed to the key than lost.
	return "key:" + k.String()
}

// usageCounters is the appliance's usage source: its device's counters
// (readable also after Close, so a final reading is complete).
func (a *Appliance) usageCounters() []peerUsage {
	if a == nil || a.dev == nil {
		return nil
	}
	inner := a.dev.InnerCounters()
	out := make([]peerUsage, 0, len(inner))
	for k, c := range inner {
		out = append(out, peerUsage{Key: k, Site: a.sites.site(k), Inner: c})
	}
	return out
}

// delta is cur minus last, per direction. A direction whose bytes or
// packets went down has restarted from 0 (a new device or gateway), so
// all of cur is new; nothing is ever negative.
func delta(last, cur dataplane.Counters) (d dataplane.Counters, reset bool) {
	if cur.TxBytes < last.TxBytes || cur.TxPackets < last.TxPackets {
		d.TxBytes, d.TxPackets, reset = cur.TxBytes, cur.TxPackets, true
	} else {
		d.TxBytes, d.TxPackets = cur.TxBytes-last.TxBytes, cur.TxPackets-last.TxPackets
	}
	if cur.RxBytes < last.RxBytes || cur.RxPackets < last.RxPackets {
		d.RxBytes, d.RxPackets, reset = cur.RxBytes, cur.RxPackets, true
	} else {
		d.RxBytes, d.RxPackets = cur.RxBytes-last.RxBytes, cur.RxPackets-last.RxPackets
	}
	return d, reset
}

type usageKey struct{ meter, site, dir string }

type usageSum struct{ bytes, packets uint64 }

// usageMeterOptions configure newUsageMeter. Spool must be set.
type usageMeterOptions struct {
	Spool *usageSpool
	// Interval between records; 0 means UsageInterval.
	Interval time.Duration
	// Appended is called after each record reaches the spool (it wakes
	// the shipper); it must not block.
	Appended func()
	Logger   *slog.Logger
	// now is the clock; nil means time.Now (tests set it).
	now func() time.Time
}

// usageMeter cuts usage records from its sources' counters. Its methods
// are safe for concurrent use.
type usageMeter struct {
	opts usageMeterOptions
	log  *slog.Logger

	mu      sync.Mutex
	src     usageSource
	base    map[wgkey.PublicKey]dataplane.Counters // src's last reading
	gw      GatewayCounters
	gwBase  dataplane.Counters
	pending map[usageKey]usageSum
	start   time.Time     // of the interval being counted
	held    []UsageRecord // cut, not yet in the spool (oldest first)
	failing bool          // the last spool append failed
	counted map[usageKey]usageSum
	resets  uint64
	closed  bool

	cancel context.CancelFunc
	done   chan struct{}
}

func newUsageMeter(o usageMeterOptions) *usageMeter {
	if o.Interval <= 0 {
		o.Interval = UsageInterval
	}
	if o.now == nil {
		o.now = time.Now
	}
	if o.Appended == nil {
		o.Appended = func() {}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &usageMeter{
		opts: o, log: log.With("component", "usage"),
		base: map[wgkey.PublicKey]dataplane.Counters{}, pending: map[usageKey]usageSum{}, counted: map[usageKey]usageSum{},
		start: o.now().UTC().Truncate(time.Millisecond),
	}
}

// attach makes src the source of overlay counters. The previous source
// (an appliance that has been closed, or is about to be replaced) gets a
// last reading first; src's counters count from 0, as a new device's do.
// Attaching the source already attached changes nothing.
func (m *usageMeter) attach(src usageSource) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if src == m.src {
		return
	}
	m.collectLocked()
	m.src = src
	m.base = map[wgkey.PublicKey]dataplane.Counters{}
}

// setGateway installs the gateway meter. Like attach, it takes a last
// reading of the previous one, and f's counters count from 0: install
// each gateway once, when it starts. nil removes the gateway meter.
func (m *usageMeter) setGateway(f GatewayCounters) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.collectLocked()
	m.gw, m.gwBase = f, dataplane.Counters{}
}

// collectLocked adds what the sources counted since their last reading to
// the pending interval.
func (m *usageMeter) collectLocked() {
	if m.src != nil {
		for _, p := range m.src.usageCounters() {
			d, reset := delta(m.base[p.Key], p.Inner)
			m.base[p.Key] = p.Inner
			if reset {
				m.resets++
				m.log.Warn("a peer's counters went backwards; counting them from 0", "peer_site", p.Site, "public_key", p.Key.String())
			}
			m.addLocked(MeterOverlay, p.Site, d)
		}
	}
	if m.gw != nil {
		if c, ok := m.gw(); ok {
			d, reset := delta(m.gwBase, c)
			m.gwBase = c
			if reset {
				m.resets++
				m.log.Warn("the gateway's counters went backwards; counting them from 0")
			}
			m.addLocked(MeterGateway, "", d)
		}
	}
}

func (m *usageMeter) addLocked(meter, site string, d dataplane.Counters) {
	add := func(dir string, bytes, packets uint64) {
		if bytes == 0 && packets == 0 {
			return
		}
		k := usageKey{meter, site, dir}
		s := m.pending[k]
		m.pending[k] = usageSum{s.bytes + bytes, s.packets + packets}
		t := usageKey{meter: meter, dir: dir}
		c := m.counted[t]
		m.counted[t] = usageSum{c.bytes + bytes, c.packets + packets}
	}
	add(DirTx, d.TxBytes, d.TxPackets)
	add(DirRx, d.RxBytes, d.RxPackets)
}

// hourEnd is the end of the hour t is in.
func hourEnd(t time.Time) time.Time { return t.Truncate(time.Hour).Add(time.Hour) }

// cut ends the pending interval at now (or at the end of its hour, if now
// is past it), turns it into a record unless nothing was counted, and
// moves what it can into the spool. final is the last cut before
// shutdown: everything held is written whatever the spool's fill.
func (m *usageMeter) cut(now time.Time, final bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.collectLocked()
	end := now.UTC().Truncate(time.Millisecond)
	if he := hourEnd(m.start); !end.Before(he) {
		end = he
	}
	if !end.After(m.start) {
		// The wall clock is behind the interval's start (it was set
		// back). Keep counting; far behind, start the interval again
		// from now so that records are not held back for long.
		if m.start.Sub(end) > m.opts.Interval {
			m.log.Warn("the wall clock went back; restarting the usage interval", "from", m.start, "to", end)
			m.start = end
		}
		if !final {
			return
		}
		end = m.start.Add(time.Millisecond)
	}
	if len(m.pending) > 0 {
		m.holdLocked(UsageRecord{Start: m.start, End: end, Usage: entries(m.pending)})
		m.pending = map[usageKey]usageSum{}
	}
	m.start = end
	m.flushLocked(final)
}

// entries lists the non-zero sums in a stable order.
func entries(p map[usageKey]usageSum) []UsageEntry {
	out := make([]UsageEntry, 0, len(p))
	for _, k := range slices.SortedFunc(maps.Keys(p), func(a, b usageKey) int {
		switch {
		case a.meter != b.meter:
			return cmpStr(b.meter, a.meter) // overlay before gateway
		case a.site != b.site:
			return cmpStr(a.site, b.site)
		}
		return cmpStr(b.dir, a.dir) // tx before rx
	}) {
		s := p[k]
		out = append(out, UsageEntry{Meter: k.meter, PeerSite: k.site, Direction: k.dir, Bytes: s.bytes, Packets: s.packets})
	}
	return out
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// holdLocked queues r for the spool. A record of the same hour as the last
// one held (the spool is filling up, or failing) is merged into it: the
// record gets coarser, no byte is lost.
func (m *usageMeter) holdLocked(r UsageRecord) {
	if n := len(m.held); n > 0 {
		last := &m.held[n-1]
		if last.Start.Truncate(time.Hour).Equal(r.Start.Truncate(time.Hour)) {
			sum := map[usageKey]usageSum{}
			for _, rec := range []*UsageRecord{last, &r} {
				for _, e := range rec.Usage {
					k := usageKey{e.Meter, e.PeerSite, e.Direction}
					s := sum[k]
					sum[k] = usageSum{s.bytes + e.Bytes, s.packets + e.Packets}
				}
			}
			last.End, last.Usage = r.End, entries(sum)
			return
		}
	}
	m.held = append(m.held, r)
	if len(m.held) > usageMaxHeld {
		lost := m.held[0]
		m.held = m.held[1:]
		m.opts.Spool.countDropped(1, lost.usageBytes())
		m.log.Error("usage record dropped: the spool has refused records for too long",
			"start", lost.Start, "end", lost.End, "bytes", lost.usageBytes())
	}
}

// flushLocked appends the held records to the spool, oldest first. While
// the spool is past its coarse mark, the record of the current hour stays
// held (and grows) until its hour is over.
func (m *usageMeter) flushLocked(final bool) {
	for len(m.held) > 0 {
		r := &m.held[0]
		if !final && m.opts.Spool.coarse() && r.End.Before(hourEnd(r.Start)) {
			return
		}
		if err := m.opts.Spool.append(r); err != nil {
			if !m.failing || final {
				m.log.Error("writing a usage record to the spool failed; keeping it in memory", "err", err, "held", len(m.held))
			}
			m.failing = true
			if final {
				for _, lost := range m.held {
					m.opts.Spool.countDropped(1, lost.usageBytes())
					m.log.Error("usage record lost at shutdown", "start", lost.Start, "end", lost.End, "bytes", lost.usageBytes())
				}
				m.held = nil
			}
			return
		}
		if m.failing {
			m.log.Info("usage records reach the spool again")
			m.failing = false
		}
		m.held = m.held[1:]
		m.opts.Appended()
	}
}

// nextCut is when the pending interval is due: one interval after its
// start, or the end of its hour if that comes first.
func (m *usageMeter) nextCut() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	due, he := m.start.Add(m.opts.Interval), hourEnd(m.start)
	if he.Before(due) {
		return he
	}
	return due
}

// run runs the meter until close.
func (m *usageMeter) run() {
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel, m.done = cancel, make(chan struct{})
	go func() {
		defer close(m.done)
		t := time.NewTimer(0)
		defer t.Stop()
		<-t.C
		for {
			// Wall-clock deadline: the cuts fall on hour boundaries.
			t.Reset(max(time.Until(m.nextCut()), 0))
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				m.cut(m.opts.now(), false)
			}
		}
	}()
}

// close stops the meter and cuts the final record: the sources should
// have stopped counting (the appliance closed) so that it is complete.
// It is safe to call more than once and without run.
func (m *usageMeter) close() {
	if m.cancel != nil {
		m.cancel()
		<-m.done
		m.cancel = nil
	}
	m.mu.Lock()
	closed := m.closed
	m.closed = true
	m.mu.Unlock()
	if !closed {
		m.cut(m.opts.now(), true)
	}
}

// usageMeterStats are the meter's figures for /metrics.
type usageMeterStats struct {
	Counted map[usageKey]usageSum // by meter and direction
	Resets  uint64
	Held    int
}

func (m *usageMeter) stats() usageMeterStats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return usageMeterStats{Counted: maps.Clone(m.counted), Resets: m.resets, Held: len(m.held)}
}
