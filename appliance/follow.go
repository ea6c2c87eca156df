package appliance

import (
	"cmp"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/dataplane"
	"github.com/causeway-net/causeway/dataplane/wgkey"
	"github.com/causeway-net/causeway/probes"
)

// This file is the remote side of a pair (docs/pair-follow.md): a site
// with two appliances is two peers announcing the same LAN prefixes, and
// WireGuard routes a prefix to one peer only. The follower decides which
// member's AllowedIPs carry the prefixes (the other keeps its overlay
// address only), from the controller's choice and the prober's verdicts:
//
//   - the controller's active member while it has a path up, or while
//     nothing is probed;
//   - else the other member, once the controller's choice has no path left
//     (every path down) and the other has one up;
//   - else whichever holds them now.
//
// Up and down are the prober's path states, with their hysteresis (down
// after 3 probe intervals of silence, up after 3 answered probes in a
// row), so the choice does not flap. The follower reacts to the prober's
// state changes as they happen, not to the controller; a change is one
// dataplane SetPeers (a diff: sessions survive).
//
//	prober.run ─▶ onChange ─▶ follower.poke ─▶ prober.health
//	                                        └▶ Device.SetPeers, log, count

// PairSelf is an appliance's own place in its site's pair.
type PairSelf struct {
	Priority int
	Drained  bool
	// Site is the pair's site id; the partner is the peer whose
	// PairMember.Site it is.
	Site string
	// Member, if set, makes this appliance a running member of the pair
	// (pairmember.go); without it the appliance only knows its place.
	Member *PairLocal
}

// PairMember marks a peer as one of the two appliances of a site.
type PairMember struct {
	// Site names the pair: the two peers with the same Site are one.
	Site     string
	Priority int
	// Active is set on the member the controller holds active.
	Active bool
	Term   uint64
}

type filePairSelf struct {
	Priority int    `json:"priority"`
	Drained  bool   `json:"drained"`
	Site     string `json:"site,omitempty"`
	filePairLocal
}

type filePairMember struct {
	Site     string `json:"site"`
	Priority int    `json:"priority"`
	Active   bool   `json:"active"`
	Term     uint64 `json:"term"`
}

func (v *validator) priority(field string, p int) int {
	if p < 0 || p > netmap.MaxPriority {
		v.fail(field, "want 0 to %d (higher is preferred), got %d", netmap.MaxPriority, p)
		return 0
	}
	return p
}

func (v *validator) pairSelf(fp *filePairSelf) *PairSelf {
	if fp == nil {
		return nil
	}
	if len(fp.Site) > 64 {
		v.fail("pair.site", "want the pair's site id, at most 64 bytes, got %d", len(fp.Site))
	}
	return &PairSelf{Priority: v.priority("pair.priority", fp.Priority), Drained: fp.Drained, Site: fp.Site}
}

func (v *validator) pairMember(base string, fp *filePairMember) *PairMember {
	if fp == nil {
		return nil
	}
	if fp.Site == "" || len(fp.Site) > 64 {
		v.fail(base+".pair.site", "want the pair's site id, 1 to 64 bytes, got %q", fp.Site)
	}
	return &PairMember{Site: fp.Site, Priority: v.priority(base+".pair.priority", fp.Priority), Active: fp.Active, Term: fp.Term}
}

// pairGroups are the pair members of a config seen so far, by site.
type pairGroups map[string][]pairSeen

type pairSeen struct {
	field    string
	prefixes []netip.Prefix
	active   bool
}

// samePairPrefixes checks p against the other member of its pair and
// reports whether that member already claimed p's prefixes (then p, which
// must announce the same ones, claims none of its own).
func (v *validator) samePairPrefixes(groups pairGroups, base string, p *PeerConfig) bool {
	if p.Pair == nil || p.Pair.Site == "" {
		return false
	}
	seen := groups[p.Pair.Site]
	groups[p.Pair.Site] = append(seen, pairSeen{field: base, prefixes: p.Prefixes, active: p.Pair.Active})
	switch len(seen) {
	case 0:
		return false
	case 1:
		if !netmap.SamePrefixes(p.Prefixes, seen[0].prefixes) {
			v.fail(base+".prefixes", "the two members of pair %s must announce the same prefixes: %v here, %v at %s",
				p.Pair.Site, p.Prefixes, seen[0].prefixes, seen[0].field)
		}
		if p.Pair.Active && seen[0].active {
			v.fail(base+".pair.active", "pair %s has two active members (also %s)", p.Pair.Site, seen[0].field)
		}
	default:
		v.fail(base+".pair", "pair %s has more than two members (also %s and %s)", p.Pair.Site, seen[0].field, seen[1].field)
	}
	return true
}

// memberHealth is what the prober knows of one peer's paths.
type memberHealth struct {
	probed bool // probing is on and the peer has paths
	up     bool // at least one path is up
	down   bool // probed, and every path is down
}

// health returns what the prober knows of every peer it probes; a peer
// it does not probe is absent.
func (p *prober) health() map[wgkey.PublicKey]memberHealth {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[wgkey.PublicKey]memberHealth, len(p.peers))
	if !p.on {
		return out
	}
	for key, pp := range p.peers {
		if len(pp.paths) == 0 {
			continue
		}
		h := memberHealth{probed: true, down: true}
		for _, tp := range pp.paths {
			st, ok := p.tr.Stats(tp.id)
			if !ok {
				h.down = false
				continue
			}
			h.up = h.up || st.State == probes.StateUp
			h.down = h.down && st.State == probes.StateDown
		}
		out[key] = h
	}
	return out
}

// Reasons a pair's prefixes move, as logged and counted.
const (
	followDown       = "down"       // the controller's choice has no path up, the other member has
	followRecovered  = "recovered"  // the controller's choice has a path up again
	followController = "controller" // the controller holds the other member active now
	followUnprobed   = "unprobed"   // probing is off: the controller's choice
)

var followReasons = []string{followDown, followRecovered, followController, followUnprobed}

// pairSite is one pair of cfg: its two members, in config order, and
// which of them the controller chose.
type pairSite struct {
	site    string
	members [2]PeerConfig
	pref    int
}

// pairSitesOf returns the pairs of cfg, by site. The controller's choice
// is the member it holds active, else (no report yet) the one with the
// higher priority, then the lower name.
func pairSitesOf(cfg *Config) []*pairSite {
	bySite := map[string][]PeerConfig{}
	for _, p := range cfg.Peers {
		if p.Pair != nil {
			bySite[p.Pair.Site] = append(bySite[p.Pair.Site], p)
		}
	}
	var out []*pairSite
	for site, ms := range bySite {
		if len(ms) != 2 {
			continue // the partner of this appliance's own site, alone
		}
		ps := &pairSite{site: site, members: [2]PeerConfig{ms[0], ms[1]}}
		a, b := ms[0].Pair, ms[1].Pair
		switch {
		case a.Active != b.Active:
			if b.Active {
				ps.pref = 1
			}
		case a.Priority != b.Priority:
			if b.Priority > a.Priority {
				ps.pref = 1
			}
		case ms[1].Name < ms[0].Name:
			ps.pref = 1
		}
		out = append(out, ps)
	}
	slices.SortFunc(out, func(x, y *pairSite) int { return cmp.Compare(x.site, y.site) })
	return out
}

// follower keeps, for every pair site, which member carries its prefixes.
// Its methods are safe for concurrent use. Lock order: follower, then
// prober, then device.
type follower struct {
	log *slog.Logger

	mu sync.Mutex
	// set applies peers to the dataplane; rehandshake starts a new session
	// with a peer; health is the prober's. set and rehandshake are nil
	// before the device exists, health without a prober.
	set         func([]dataplane.Peer) error
	rehandshake func(wgkey.PublicKey) error
	health      func() map[wgkey.PublicKey]memberHealth
	cfg         *Config
	sites       []*pairSite
	hold        map[string]wgkey.PublicKey // site -> the member with its prefixes
	wasDown     map[wgkey.PublicKey]bool   // members whose paths were all down since they last had one up
	switches    map[string]uint64
}

func newFollower(log *slog.Logger) *follower {
	return &follower{log: log.With("component", "pair-follow"), hold: map[string]wgkey.PublicKey{},
		wasDown: map[wgkey.PublicKey]bool{}, switches: map[string]uint64{}}
}

// bind gives the follower the device and, if there is one, the prober.
func (f *follower) bind(dev *dataplane.Device, p *prober) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.set, f.rehandshake = dev.SetPeers, dev.Rehandshake
	if p != nil {
		f.health = p.health
	}
}

func (f *follower) healthNow() map[wgkey.PublicKey]memberHealth {
	if f.health == nil {
		return nil
	}
	return f.health()
}

// apply configures the dataplane's peers for cfg, each pair's prefixes on
// the member the follower picks. A pair whose controller's choice changed
// moves to it if it can.
func (f *follower) apply(cfg *Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	before := map[string]wgkey.PublicKey{}
	for _, ps := range f.sites {
		before[ps.site] = ps.members[ps.pref].PublicKey
	}
	f.cfg, f.sites = cfg, pairSitesOf(cfg)
	h := f.healthNow()
	keep := map[string]bool{}
	for _, ps := range f.sites {
		keep[ps.site] = true
		cur, ok := f.hold[ps.site]
		if !ok || (cur != ps.members[0].PublicKey && cur != ps.members[1].PublicKey) {
			pref := ps.members[ps.pref]
			f.hold[ps.site] = pref.PublicKey
			f.log.Info("pair follow chosen", "site", ps.site, "to", pref.Name, "reason", "initial",
				"detail", "the controller's choice until the probes say otherwise")
		}
		why := ""
		if prev, ok := before[ps.site]; ok && prev != ps.members[ps.pref].PublicKey {
			why = followController
		}
		f.decide(ps, h, why)
	}
	for site := range f.hold {
		if !keep[site] {
			delete(f.hold, site)
		}
	}
	if f.set == nil {
		return nil
	}
	return f.set(devicePeers(cfg, f.standby()))
}

// poke re-decides every pair from the prober's current verdicts; the
// prober calls it after its paths changed state.
func (f *follower) poke() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cfg == nil || f.set == nil {
		return
	}
	h := f.healthNow()
	moved := false
	for _, ps := range f.sites {
		for _, m := range ps.members {
			switch mh := h[m.PublicKey]; {
			case mh.down:
				f.wasDown[m.PublicKey] = true
			case mh.up && f.wasDown[m.PublicKey] && f.rehandshake != nil:
				// It may have restarted and lost its keys: a session this
				// side still holds would go unanswered.
				delete(f.wasDown, m.PublicKey)
				if err := f.rehandshake(m.PublicKey); err != nil {
					f.log.Warn("starting a new session with a pair member", "peer", m.Name, "err", err)
				} else {
					f.log.Info("pair member reachable again; new session", "site", ps.site, "peer", m.Name)
				}
			}
		}
		if f.decide(ps, h, "") {
			moved = true
		}
	}
	if moved {
		if err := f.set(devicePeers(f.cfg, f.standby())); err != nil {
			f.log.Error("moving a pair's prefixes", "err", err)
		}
	}
}

// decide picks the member of ps that carries its prefixes and reports
// whether that changed. why, if set, is the reason to give for a move to
// the controller's choice.
func (f *follower) decide(ps *pairSite, h map[wgkey.PublicKey]memberHealth, why string) bool {
	pref, other := ps.members[ps.pref], ps.members[1-ps.pref]
	hp, ho := h[pref.PublicKey], h[other.PublicKey]
	var to PeerConfig
	var reason, detail string
	switch {
	case !hp.probed || hp.up:
		to, reason = pref, followRecovered
		detail = fmt.Sprintf("%s, the controller's choice, has a path up", pref.Name)
		if !hp.probed {
			reason, detail = followUnprobed, fmt.Sprintf("%s, the controller's choice, is not probed", pref.Name)
		}
		if why != "" {
			reason, detail = why, fmt.Sprintf("the controller holds %s active", pref.Name)
		}
	case hp.down && ho.up:
		to, reason = other, followDown
		detail = fmt.Sprintf("%s, the controller's choice, has no path up; %s has", pref.Name, other.Name)
	default:
		return false // neither can do better: keep what holds them
	}
	cur := f.hold[ps.site]
	if cur == to.PublicKey {
		return false
	}
	from := pref.Name
	if cur == other.PublicKey {
		from = other.Name
	}
	f.hold[ps.site] = to.PublicKey
	f.switches[reason]++
	f.log.Info("pair follow", "site", ps.site, "from", from, "to", to.Name, "reason", reason, "detail", detail)
	return true
}

// standby lists the pair members that do not carry their pair's prefixes.
func (f *follower) standby() map[wgkey.PublicKey]bool {
	out := map[wgkey.PublicKey]bool{}
	for _, ps := range f.sites {
		for _, m := range ps.members {
			if f.hold[ps.site] != m.PublicKey {
				out[m.PublicKey] = true
			}
		}
	}
	return out
}

// followStatus is one pair member, for metrics.
type followStatus struct {
	peer   string
	holder bool
}

func (f *follower) status() ([]followStatus, map[string]uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []followStatus
	for _, ps := range f.sites {
		for _, m := range ps.members {
			out = append(out, followStatus{peer: m.Name, holder: f.hold[ps.site] == m.PublicKey})
		}
	}
	counts := make(map[string]uint64, len(followReasons))
	for _, r := range followReasons {
		counts[r] = f.switches[r]
	}
	return out, counts
}

var (
	descFollowSwitches = prometheus.NewDesc("causeway_pair_follow_switches_total",
		"Moves of a remote pair's LAN prefixes from one member to the other, by reason (down, recovered, controller, unprobed).",
		[]string{"reason"}, nil)
	descFollowActive = prometheus.NewDesc("causeway_pair_follow_active",
		"1 for the member of a remote pair whose AllowedIPs carry the pair's LAN prefixes, 0 for the other.",
		[]string{"peer"}, nil)
)

// followCollector reads the follower at scrape time; its labels come from
// the config (peer names).
type followCollector struct{ f *follower }

func (c *followCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descFollowSwitches
	ch <- descFollowActive
}

func (c *followCollector) Collect(ch chan<- prometheus.Metric) {
	members, counts := c.f.status()
	for _, r := range followReasons {
		ch <- prometheus.MustNewConstMetric(descFollowSwitches, prometheus.CounterValue, float64(counts[r]), r)
	}
	for _, m := range members {
		v := 0.0
		if m.holder {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descFollowActive, prometheus.GaugeValue, v, m.peer)
	}
}

// PairStandby lists the members of remote pairs that do not carry their
// pair's prefixes when the controller's choice does (the follower's
// starting point, before any probe): for a dataplane configured from cfg
// without the follower.
func (c *Config) PairStandby() map[wgkey.PublicKey]bool {
	out := map[wgkey.PublicKey]bool{}
	for _, ps := range pairSitesOf(c) {
		out[ps.members[1-ps.pref].PublicKey] = true
	}
	return out
}
