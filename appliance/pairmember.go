package appliance

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/causeway-net/causeway/appliance/pair"
	"github.com/causeway-net/causeway/probes"
)

// This file runs the appliance as one member of its site's PAIR
// (docs/pair.md, "In the appliance"): appliance/pair's Member elects the
// active member and moves the LAN gateway address (the VIP); the gateway
// lends this member's WAN link to the partner and borrows the partner's
// (so both WireGuard identities have paths over both ISPs); the overlay
// copies bridge a hand-over (dataplane/gateway, SetOverlayCopy); and
// every change is reported to the controller, which tells the remote
// sites which member to route the site to.
//
//	pair.Member ─ OnChange ─▶ pairRunner.changed ─▶ log, wake the reporter (managed.go)
//	                                             ├▶ gateway health (the borrowed uplink needs a live partner)
//	                                             └▶ overlay copies on or off

// Pair member defaults.
const (
	// DefaultBorrowedUplink names the partner's uplink as this member
	// uses it (logs, metrics, path reports).
	DefaultBorrowedUplink = "partner"
	// DefaultLendPort is the UDP port on this member's WAN address that is
	// forwarded to the partner's WireGuard socket.
	DefaultLendPort = 51821
	// pairSettle is how long after the controller's choice became this
	// member the overlay copies stay on: the remotes get the change in
	// their netmaps at slightly different times.
	pairSettle = 3 * time.Second
	// pairLinger is how long a member that handed the role over on Close
	// keeps forwarding, so that the remotes (told by the controller) move
	// to the partner before its tunnel goes.
	pairLinger = 1500 * time.Millisecond
	// pairReportEvery is how often a member reports without a change: the
	// controller holds reports older than 90 s stale.
	pairReportEvery = 30 * time.Second
)

// PairLocal makes the appliance a member of its site's pair: the settings
// only the device knows (its LAN and WAN links and addresses, the VIP).
// Priority and drain come from PairSelf (the controller's netmap, or the
// config file).
type PairLocal struct {
	// Preempt: with the higher priority, take the active role back from
	// the partner once eligible for the hold-down (1 s).
	Preempt bool
	// LANInterface carries the VIP, the LAN heartbeat and the borrowed
	// uplink; it is the gateway's LAN interface.
	LANInterface string
	// LANAddr is this member's own address on it, PartnerLANAddr the
	// partner's.
	LANAddr, PartnerLANAddr netip.Addr
	// VIP is the LAN's gateway address with the LAN prefix length.
	VIP netip.Prefix
	// WANInterface is the uplink (one of Config.Uplinks' interfaces) the
	// WAN heartbeat leaves on and the one lent to the partner; WANAddr is
	// its address, PartnerWANAddr the partner's.
	WANInterface            string
	WANAddr, PartnerWANAddr netip.Addr
	// BorrowedUplink names the partner's uplink, reached over the LAN.
	BorrowedUplink string
	// LendPort is the port on WANAddr forwarded to the partner's
	// WireGuard socket (the partner's second endpoint).
	LendPort uint16
}

// pairMember returns the pair member settings, nil if the appliance is
// not a pair member.
func (c *Config) pairMember() *PairLocal {
	if c.Pair == nil {
		return nil
	}
	return c.Pair.Member
}

// bindUplinks are the multipath bind's uplinks: the configured ones and,
// for a pair member, the borrowed one (a socket on the LAN address,
// routed via the partner by the gateway).
func (c *Config) bindUplinks() []Uplink {
	ups := slices.Clone(c.Uplinks)
	if pm := c.pairMember(); pm != nil {
		ups = append(ups, Uplink{Name: pm.BorrowedUplink, Interface: pm.LANInterface, Addr: pm.LANAddr})
	}
	return ups
}

// partnerPeer returns the partner among c's peers: the other pair member
// of this appliance's site.
func (c *Config) partnerPeer() (PeerConfig, bool) {
	if c.Pair == nil || c.Pair.Site == "" {
		return PeerConfig{}, false
	}
	for _, p := range c.Peers {
		if p.Pair != nil && p.Pair.Site == c.Pair.Site {
			return p, true
		}
	}
	return PeerConfig{}, false
}

// pairChoice is the member the remote sites are taken to route the site
// to: the controller's active member, as the netmap says (the partner's
// entry has active, or a term while it is not active: this member); with
// no report yet, the higher priority, then the lower name, as the remotes
// choose (follow.go). "" when the partner is not in the netmap.
func (c *Config) pairChoice() string {
	p, ok := c.partnerPeer()
	switch {
	case !ok:
		return ""
	case p.Pair.Active:
		return p.Name
	case p.Pair.Term > 0:
		return c.Name
	case p.Pair.Priority != c.Pair.Priority:
		if p.Pair.Priority > c.Pair.Priority {
			return p.Name
		}
		return c.Name
	case p.Name < c.Name:
		return p.Name
	}
	return c.Name
}

// The file form of the member settings, in the "pair" object beside
// priority and drained:
//
//	"pair": {"priority": 200, "preempt": true, "lan_interface": "lan0", "lan_addr": "10.10.0.2",
//	         "partner_lan_addr": "10.10.0.3", "vip": "10.10.0.1/24", "wan_interface": "wan1",
//	         "wan_addr": "198.18.1.2", "partner_wan_addr": "198.18.4.2", "borrowed_uplink": "wan2"}
type filePairLocal struct {
	Preempt        bool   `json:"preempt,omitempty"`
	LANInterface   string `json:"lan_interface,omitempty"`
	LANAddr        string `json:"lan_addr,omitempty"`
	PartnerLANAddr string `json:"partner_lan_addr,omitempty"`
	VIP            string `json:"vip,omitempty"`
	WANInterface   string `json:"wan_interface,omitempty"`
	WANAddr        string `json:"wan_addr,omitempty"`
	PartnerWANAddr string `json:"partner_wan_addr,omitempty"`
	BorrowedUplink string `json:"borrowed_uplink,omitempty"`
	LendPort       int    `json:"lend_port,omitempty"`
}

func (f *filePairLocal) set() bool { return *f != filePairLocal{} }

func marshalPairLocal(m *PairLocal) filePairLocal {
	if m == nil {
		return filePairLocal{}
	}
	return filePairLocal{Preempt: m.Preempt, LANInterface: m.LANInterface, LANAddr: m.LANAddr.String(),
		PartnerLANAddr: m.PartnerLANAddr.String(), VIP: m.VIP.String(), WANInterface: m.WANInterface,
		WANAddr: m.WANAddr.String(), PartnerWANAddr: m.PartnerWANAddr.String(), BorrowedUplink: m.BorrowedUplink,
		LendPort: int(m.LendPort)}
}

// pairLocal validates the member settings of the "pair" object against
// the rest of the config (c has everything else already).
func (v *validator) pairLocal(f *filePairLocal, c *Config) *PairLocal {
	m := &PairLocal{Preempt: f.Preempt, LANInterface: f.LANInterface, WANInterface: f.WANInterface,
		BorrowedUplink: f.BorrowedUplink, LendPort: DefaultLendPort}
	ipv4 := func(field, s string) netip.Addr {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			v.fail(field, "want an IPv4 address, got %q", s)
			return netip.Addr{}
		}
		return a
	}
	switch {
	case !ifaceRE.MatchString(f.LANInterface) || f.LANInterface == "." || f.LANInterface == "..":
		v.fail("pair.lan_interface", "want an interface name of 1-15 letters, digits, '_', '.' or '-', got %q", f.LANInterface)
	case f.LANInterface == c.Interface:
		v.fail("pair.lan_interface", "%q is the overlay interface", f.LANInterface)
	case slices.ContainsFunc(c.Uplinks, func(u Uplink) bool { return u.Interface == f.LANInterface }):
		v.fail("pair.lan_interface", "%q is an uplink's interface; the LAN must be another link", f.LANInterface)
	}
	m.LANAddr = ipv4("pair.lan_addr", f.LANAddr)
	m.PartnerLANAddr = ipv4("pair.partner_lan_addr", f.PartnerLANAddr)
	if m.LANAddr.IsValid() && m.LANAddr == m.PartnerLANAddr {
		v.fail("pair.partner_lan_addr", "%s is also pair.lan_addr", m.LANAddr)
	}
	if m.LANAddr.IsValid() && !slices.ContainsFunc(c.LANPrefixes, func(p netip.Prefix) bool { return p.Contains(m.LANAddr) }) {
		v.fail("pair.lan_addr", "%s is in none of lan_prefixes", m.LANAddr)
	}
	if vip, err := netip.ParsePrefix(f.VIP); err != nil || !vip.Addr().Is4() || vip.Bits() < 8 || vip.Bits() > 30 {
		v.fail("pair.vip", "want the LAN's gateway address with its prefix length, e.g. 10.10.0.1/24, got %q", f.VIP)
	} else {
		m.VIP = vip
		for _, o := range []struct {
			field string
			a     netip.Addr
		}{{"pair.lan_addr", m.LANAddr}, {"pair.partner_lan_addr", m.PartnerLANAddr}} {
			switch {
			case !o.a.IsValid():
			case o.a == vip.Addr():
				v.fail("pair.vip", "%s is also %s", vip.Addr(), o.field)
			case !vip.Contains(o.a):
				v.fail(o.field, "%s is outside the VIP's prefix %s", o.a, vip.Masked())
			}
		}
	}
	if m.WANInterface == "" && len(c.Uplinks) > 0 {
		m.WANInterface = c.Uplinks[0].Interface
	}
	if !slices.ContainsFunc(c.Uplinks, func(u Uplink) bool { return u.Interface == m.WANInterface }) {
		v.fail("pair.wan_interface", "want the interface of one of uplinks (the WAN link lent to the partner), got %q", m.WANInterface)
	}
	m.WANAddr = ipv4("pair.wan_addr", f.WANAddr)
	m.PartnerWANAddr = ipv4("pair.partner_wan_addr", f.PartnerWANAddr)
	if m.WANAddr.IsValid() && m.WANAddr == m.PartnerWANAddr {
		v.fail("pair.partner_wan_addr", "%s is also pair.wan_addr", m.WANAddr)
	}
	if m.BorrowedUplink == "" {
		m.BorrowedUplink = DefaultBorrowedUplink
	}
	if !nameRE.MatchString(m.BorrowedUplink) {
		v.fail("pair.borrowed_uplink", "want 1-63 lower-case letters, digits and '-', got %q", m.BorrowedUplink)
	} else if slices.ContainsFunc(c.Uplinks, func(u Uplink) bool { return u.Name == m.BorrowedUplink }) {
		v.fail("pair.borrowed_uplink", "%q is also the name of one of uplinks", m.BorrowedUplink)
	}
	if f.LendPort != 0 {
		if f.LendPort < 1 || f.LendPort > 65535 {
			v.fail("pair.lend_port", "want 1-65535, got %d", f.LendPort)
		} else {
			m.LendPort = uint16(f.LendPort)
		}
	}
	if m.LendPort == c.ListenPort {
		v.fail("pair.lend_port", "%d is also listen_port", m.LendPort)
	}
	if c.Gateway == nil || c.Gateway.LANInterface != f.LANInterface {
		v.fail("pair", "a pair member is its LAN's gateway: it needs gateway.lan_interface %q", f.LANInterface)
	}
	if c.ProbeKey.IsZero() {
		v.fail("pair", "needs probe_key: the pair's heartbeat key is derived from the tenant's probe keys")
	}
	return m
}

// pairKey is the pair's heartbeat secret for one probe key: both members
// have the tenant's probe keys, and a rotation of those rotates it.
func pairKey(k probes.Key) []byte {
	raw := k.Raw()
	m := hmac.New(sha256.New, raw[:])
	m.Write([]byte("causeway pair heartbeat"))
	return m.Sum(nil)
}

// pairKeys are the signing key and the accepted ones for cfg.
func pairKeys(cfg *Config) (key []byte, accepted [][]byte) {
	for _, k := range cfg.ProbeAccepted {
		accepted = append(accepted, pairKey(k))
	}
	return pairKey(cfg.ProbeKey), accepted
}

// pairRunner runs the pair member and acts on its changes.
type pairRunner struct {
	log     *slog.Logger
	m       *pair.Member
	name    string
	partner netip.Addr // its LAN address
	lanIf   string
	gw      *gatewayRunner

	mu          sync.Mutex
	choice      string    // see Config.pairChoice
	choiceSince time.Time // when choice last changed
	copyMAC     net.HardwareAddr
	partnerLAN  bool     // the partner's LAN heartbeat arrived, when last looked
	keys        [][]byte // the keys in force, signing key first
	notify      func()   // wakes the controller reporter; nil when unmanaged

	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// startPair starts the pair member (after the gateway, which it needs)
// and pushes its undo: Close hands the role over, and a member that did
// keeps forwarding for pairLinger.
func (a *Appliance) startPair(cfg *Config) error {
	pm := cfg.pairMember()
	r := &pairRunner{log: a.log.With("component", "pair"), name: cfg.Name, partner: pm.PartnerLANAddr,
		lanIf: pm.LANInterface, gw: a.gw, choice: cfg.pairChoice(), choiceSince: time.Now(),
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	key, accepted := pairKeys(cfg)
	r.keys = append([][]byte{key}, accepted...)
	m, err := pair.Start(context.Background(), pair.Config{
		Name: cfg.Name, Priority: cfg.Pair.Priority, Preempt: pm.Preempt,
		LANInterface: pm.LANInterface, LANAddr: pm.LANAddr, PartnerLANAddr: pm.PartnerLANAddr,
		WANInterface:   pm.WANInterface,
		WANAddr:        netip.AddrPortFrom(pm.WANAddr, pair.DefaultHeartbeatPort),
		PartnerWANAddr: netip.AddrPortFrom(pm.PartnerWANAddr, pair.DefaultHeartbeatPort),
		VIP:            pm.VIP, Key: key, AcceptedKeys: accepted,
		OnChange: r.changed, Log: a.log,
	})
	if err != nil {
		return err
	}
	r.m = m
	if cfg.Pair.Drained {
		if err := m.Drain(true); err != nil {
			m.Close()
			return err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		r.run(ctx)
	}()
	a.pair = r
	if a.gw != nil {
		a.gw.mu.Lock()
		a.gw.partnerUp = r.partnerUp
		a.gw.mu.Unlock()
	}
	a.undo = append(a.undo, r.close)
	a.log.Info("pair member up", "vip", pm.VIP.String(), "priority", cfg.Pair.Priority, "drained", cfg.Pair.Drained,
		"preempt", pm.Preempt, "lan", pm.LANInterface, "wan", pm.WANInterface, "borrowed_uplink", pm.BorrowedUplink,
		"lend", netip.AddrPortFrom(pm.WANAddr, pm.LendPort).String(), "controller_choice", r.choice)
	return nil
}

// changed is the member's OnChange.
func (r *pairRunner) changed(s pair.State) {
	args := []any{"role", s.Role.String(), "active", s.Active, "term", s.Term, "partner", s.Partner.Name,
		"partner_alive", s.Partner.Alive}
	if f := s.LastFailover; f != nil {
		args = append(args, "last_failover_from", f.From, "last_failover_to", f.To, "reason", f.Reason.String())
	}
	r.log.Info("pair state", args...)
	r.poke()
	if r.gw != nil {
		r.gw.pokeHealth()
	}
	r.mu.Lock()
	notify := r.notify
	r.mu.Unlock()
	if notify != nil {
		notify()
	}
}

func (r *pairRunner) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// partnerUp reports whether the partner can carry the borrowed uplink: its
// LAN heartbeat arrives. A dead partner's uplink leaves the gateway at once,
// before its paths time out.
func (r *pairRunner) partnerUp() bool {
	s := r.m.State()
	return s.Partner.Alive && s.Partner.LAN
}

// apply follows a new config: priority, drain, keys and the controller's
// choice change in place (the member settings themselves cannot: see
// Apply).
func (r *pairRunner) apply(cfg *Config) error {
	if err := r.m.SetPriority(cfg.Pair.Priority); err != nil {
		return err
	}
	if err := r.m.Drain(cfg.Pair.Drained); err != nil {
		return err
	}
	key, accepted := pairKeys(cfg)
	keys := append([][]byte{key}, accepted...)
	r.mu.Lock()
	same := slices.EqualFunc(keys, r.keys, func(a, b []byte) bool { return hmac.Equal(a, b) })
	r.mu.Unlock()
	if !same {
		if err := r.m.SetKeys(key, accepted...); err != nil {
			return err
		}
		r.log.Info("pair keys changed", "accepted", len(accepted))
	}
	choice := cfg.pairChoice()
	r.mu.Lock()
	r.keys = keys
	if choice != r.choice {
		r.log.Info("pair: the controller's choice changed", "from", r.choice, "to", choice)
		r.choice, r.choiceSince = choice, time.Now()
	}
	r.mu.Unlock()
	r.poke()
	return nil
}

// run turns the overlay copies on and off: on while the partner is there
// on the LAN to forward them and the remotes may not all route the site
// here, i.e. unless the controller's choice has been this member for
// pairSettle. On a standby they cost nothing (no LAN traffic comes its
// way); they are on before it claims, so that none of the new active's
// first packets is lost at a remote that still routes to the old one.
func (r *pairRunner) run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		next := r.updateCopies()
		t.Reset(next)
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-t.C:
		}
	}
}

// updateCopies applies the copy rule and returns when to look again.
func (r *pairRunner) updateCopies() time.Duration {
	if r.gw == nil {
		return time.Hour
	}
	// Often enough to take the borrowed uplink out of the gateway soon
	// after the partner's LAN heartbeat stops (pair.State changes that
	// move no role call no OnChange).
	next := 100 * time.Millisecond
	s := r.m.State()
	r.mu.Lock()
	want := s.Partner.Alive && s.Partner.LAN
	if lanUp := s.Partner.LAN && s.Partner.Alive; lanUp != r.partnerLAN {
		r.partnerLAN = lanUp
		r.gw.pokeHealth()
	}
	if r.choice == r.name {
		if left := pairSettle - time.Since(r.choiceSince); left > 0 {
			next = min(next, left)
		} else {
			want = false
		}
	}
	cur := r.copyMAC
	r.mu.Unlock()
	var mac net.HardwareAddr
	if want {
		if mac = neighbourMAC(r.lanIf, r.partner); mac == nil {
			next = 50 * time.Millisecond // the LAN heartbeat resolves it
		}
	}
	if slices.Equal(mac, cur) {
		return next
	}
	if err := r.gw.gw.SetOverlayCopy(mac); err != nil {
		r.log.Error("pair: overlay copies", "on", mac != nil, "err", err)
		return next
	}
	r.mu.Lock()
	r.copyMAC = mac
	r.mu.Unlock()
	r.log.Info("pair overlay copies", "on", mac != nil, "partner_mac", mac.String(), "controller_choice", r.choice)
	return next
}

// neighbourMAC is the link-layer address of a on dev from the neighbour
// table, nil if it is not resolved.
func neighbourMAC(dev string, a netip.Addr) net.HardwareAddr {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return nil
	}
	ns, err := netlink.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return nil
	}
	for _, n := range ns {
		if n.IP.Equal(a.AsSlice()) && len(n.HardwareAddr) == 6 && n.State&(netlink.NUD_FAILED|netlink.NUD_INCOMPLETE) == 0 {
			return n.HardwareAddr
		}
	}
	return nil
}

// close hands over (pair.Member.Close), and if the partner took the role
// keeps the dataplane up for pairLinger.
func (r *pairRunner) close() error {
	before := r.m.State()
	err := r.m.Close()
	r.cancel()
	<-r.done
	after := r.m.State()
	if before.Role == pair.RoleActive && after.LastFailover != nil && after.LastFailover.To != "" && after.LastFailover.To != r.name {
		r.log.Info("pair: handed over; forwarding a little longer while the remote sites move", "to", after.LastFailover.To,
			"for", pairLinger.String())
		time.Sleep(pairLinger)
	}
	return err
}

// PairState returns the pair member's state; ok is false if the appliance
// is not a pair member.
func (a *Appliance) PairState() (s pair.State, ok bool) {
	if a == nil || a.pair == nil {
		return pair.State{}, false
	}
	return a.pair.m.State(), true
}

// PairView is the pair member's state as GET /pair shows it.
type PairView struct {
	Name string `json:"name"`
	// Role is active, standby or stopped.
	Role string `json:"role"`
	// Active is the member that holds the VIP as far as this one knows,
	// "" if neither.
	Active   string        `json:"active"`
	Since    time.Time     `json:"since"`
	Term     uint64        `json:"term"`
	Priority int           `json:"priority"`
	Drained  bool          `json:"drained"`
	LANDown  bool          `json:"lan_down"`
	VIP      string        `json:"vip"`
	Partner  PartnerView   `json:"partner"`
	Failover *FailoverView `json:"last_failover,omitempty"`
	// ControllerChoice is the member the controller's netmap makes the
	// remote sites route the site to; OverlayCopies is whether this member
	// copies the LAN's overlay traffic to the partner (a hand-over).
	ControllerChoice string `json:"controller_choice"`
	OverlayCopies    bool   `json:"overlay_copies"`
}

// PartnerView is the partner as a member sees it.
type PartnerView struct {
	Name     string    `json:"name"`
	Alive    bool      `json:"alive"`
	LAN      bool      `json:"lan"`
	WAN      bool      `json:"wan"`
	Role     string    `json:"role"`
	Term     uint64    `json:"term"`
	Priority int       `json:"priority"`
	Drained  bool      `json:"drained"`
	LastSeen time.Time `json:"last_seen"`
}

// FailoverView is a move of the active role.
type FailoverView struct {
	At     time.Time `json:"at"`
	From   string    `json:"from"`
	To     string    `json:"to"`
	Reason string    `json:"reason"`
}

func (r *pairRunner) view(vip netip.Prefix) PairView {
	s := r.m.State()
	r.mu.Lock()
	choice, copies := r.choice, r.copyMAC != nil
	r.mu.Unlock()
	v := PairView{Name: s.Name, Role: s.Role.String(), Active: s.Active, Since: s.Since, Term: s.Term, Priority: s.Priority,
		Drained: s.Drained, LANDown: s.LANDown, VIP: vip.String(), ControllerChoice: choice, OverlayCopies: copies,
		Partner: PartnerView{Name: s.Partner.Name, Alive: s.Partner.Alive, LAN: s.Partner.LAN, WAN: s.Partner.WAN,
			Role: s.Partner.Role.String(), Term: s.Partner.Term, Priority: s.Partner.Priority, Drained: s.Partner.Drained,
			LastSeen: s.Partner.LastSeen}}
	if f := s.LastFailover; f != nil {
		v.Failover = &FailoverView{At: f.At, From: f.From, To: f.To, Reason: f.Reason.String()}
	}
	return v
}

// reportOf is the controller's report of a member's state.
func reportOf(s pair.State) PairReport {
	r := PairReport{Role: "standby", Term: s.Term, Since: s.Since, PartnerAlive: s.Partner.Alive}
	if s.Role == pair.RoleActive {
		r.Role = "active"
	}
	if f := s.LastFailover; f != nil && f.To != "" {
		r.LastFailover = &PairFailover{At: f.At, From: f.From, To: f.To, Reason: failoverReason(f.Reason, f.From)}
	}
	return r
}

// failoverReason words a pair reason the way the controller counts
// failovers: its first word is partner-down, drain, preempt, manual, or
// (the rest) other.
func failoverReason(r pair.Reason, from string) string {
	if from == "" {
		from = "the partner"
	}
	switch r {
	case pair.ReasonPartnerDead:
		return "partner-down: no heartbeat from " + from + " on the LAN or the WAN"
	case pair.ReasonPartnerLANDown:
		return "partner-down: " + from + " lost its LAN link"
	case pair.ReasonPartnerDrained, pair.ReasonDrain:
		return "drain: " + from + " was drained"
	case pair.ReasonPartnerLeft, pair.ReasonStop:
		return "manual: " + from + " stopped"
	case pair.ReasonPreempt:
		return "preempt: the member of higher priority took the role back"
	}
	return strings.ReplaceAll(r.String(), " ", "-")
}

// pairReporter sends the member's state to the controller
// (POST /api/v1/pair/report) when it changes and every pairReportEvery,
// from a goroutine of its own; a failed report is retried with backoff.
type pairReporter struct {
	log  *slog.Logger
	src  func() (pair.State, bool)
	send func(context.Context, PairReport) (PairReportResult, error)
	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newPairReporter(src func() (pair.State, bool), send func(context.Context, PairReport) (PairReportResult, error), log *slog.Logger) *pairReporter {
	return &pairReporter{log: log.With("component", "pair-report"), src: src, send: send,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

func (p *pairReporter) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *pairReporter) start() { go p.run() }

func (p *pairReporter) close() {
	close(p.stop)
	<-p.done
}

func (p *pairReporter) run() {
	defer close(p.done)
	var last PairReport
	var lastAt time.Time
	failures := 0
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-p.wake:
		case <-t.C:
		}
		next := time.Second
		if s, ok := p.src(); ok && s.Role != pair.RoleStopped {
			r := reportOf(s)
			if !sameReport(r, last) || time.Since(lastAt) >= pairReportEvery {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				res, err := p.send(ctx, r)
				cancel()
				if err != nil {
					failures++
					next = backoff(failures, 10*time.Second)
					if failures == 1 || failures%10 == 0 {
						p.log.Warn("pair report failed; retrying", "err", err, "failures", failures)
					}
				} else {
					if failures > 0 || !sameReport(r, last) {
						p.log.Info("pair reported", "role", r.Role, "term", r.Term, "controller_active", res.Active,
							"controller_term", res.Term)
					}
					failures, last, lastAt = 0, r, time.Now()
				}
			}
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(next)
	}
}

func sameReport(a, b PairReport) bool {
	if a.Role != b.Role || a.Term != b.Term || !a.Since.Equal(b.Since) || a.PartnerAlive != b.PartnerAlive ||
		(a.LastFailover == nil) != (b.LastFailover == nil) {
		return false
	}
	return a.LastFailover == nil || (a.LastFailover.At.Equal(b.LastFailover.At) && a.LastFailover.To == b.LastFailover.To)
}

// String describes the member settings for errors and logs.
func (m *PairLocal) String() string {
	return fmt.Sprintf("member on %s (%s, partner %s, VIP %s), WAN %s (%s, partner %s)", m.LANInterface, m.LANAddr,
		m.PartnerLANAddr, m.VIP, m.WANInterface, m.WANAddr, m.PartnerWANAddr)
}

var (
	descPairRole = prometheus.NewDesc("causeway_pair_role",
		"1 for the pair member's current role (active, standby, stopped), 0 for the others.", []string{"role"}, nil)
	descPairTerm = prometheus.NewDesc("causeway_pair_term",
		"The term of the pair's current (or last) active member; every takeover starts a higher one.", nil, nil)
	descPairSince = prometheus.NewDesc("causeway_pair_role_since_seconds",
		"Unix time the member took its current role.", nil, nil)
	descPairFailovers = prometheus.NewDesc("causeway_pair_failovers_total",
		"Moves of the active role this member made (takeovers and hand-overs), by reason.", []string{"reason"}, nil)
	descPairHeartbeats = prometheus.NewDesc("causeway_pair_heartbeats_total",
		"Pair heartbeats by channel (lan, wan) and outcome: sent, send_error, received, bad (not a heartbeat with a valid MAC), rejected (authentic, but replayed, misdirected or from a third member).",
		[]string{"channel", "outcome"}, nil)
	descPairPartner = prometheus.NewDesc("causeway_pair_partner_alive",
		"1 while a heartbeat of the partner arrived within the dead time on the channel (lan, wan, any), else 0.", []string{"channel"}, nil)
	descPairGARP = prometheus.NewDesc("causeway_pair_garp_sent_total",
		"Gratuitous ARP frames sent for the VIP.", nil, nil)
	descPairVIPErrors = prometheus.NewDesc("causeway_pair_vip_errors_total",
		"Failed attempts to add, refresh or remove the VIP.", nil, nil)
	descPairCopies = prometheus.NewDesc("causeway_pair_overlay_copies",
		"1 while the member copies the LAN's overlay traffic to the partner (a hand-over in progress at the remote sites), else 0.", nil, nil)
	descPairCopied = prometheus.NewDesc("causeway_pair_overlay_copied_packets_total",
		"Packets of the LAN's overlay traffic copied to the partner.", nil, nil)
)

// failoverLabel is a pair reason as a metric label: "partner dead" is
// partner-dead.
func failoverLabel(r pair.Reason) string {
	return strings.ToLower(strings.ReplaceAll(r.String(), " ", "-"))
}

func (r *pairRunner) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPairRole, descPairTerm, descPairSince, descPairFailovers, descPairHeartbeats,
		descPairPartner, descPairGARP, descPairVIPErrors, descPairCopies, descPairCopied} {
		ch <- d
	}
}

func (r *pairRunner) Collect(ch chan<- prometheus.Metric) {
	s, m := r.m.State(), r.m.Metrics()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, role := range []pair.Role{pair.RoleActive, pair.RoleStandby, pair.RoleStopped} {
		gauge(descPairRole, flag(s.Role == role), role.String())
	}
	gauge(descPairTerm, float64(s.Term))
	gauge(descPairSince, float64(s.Since.UnixNano())/1e9)
	for _, reason := range pair.Reasons() {
		counter(descPairFailovers, m.Failovers[reason], failoverLabel(reason))
	}
	for _, c := range []struct {
		name string
		m    pair.ChannelMetrics
	}{{"lan", m.LAN}, {"wan", m.WAN}} {
		counter(descPairHeartbeats, c.m.Sent, c.name, "sent")
		counter(descPairHeartbeats, c.m.SendErrors, c.name, "send_error")
		counter(descPairHeartbeats, c.m.Received, c.name, "received")
		counter(descPairHeartbeats, c.m.Bad, c.name, "bad")
		counter(descPairHeartbeats, c.m.Rejected, c.name, "rejected")
	}
	gauge(descPairPartner, flag(s.Partner.LAN), "lan")
	gauge(descPairPartner, flag(s.Partner.WAN), "wan")
	gauge(descPairPartner, flag(s.Partner.Alive), "any")
	counter(descPairGARP, m.GARPSent)
	counter(descPairVIPErrors, m.VIPErrors)
	if r.gw != nil {
		on, copied, err := r.gw.gw.OverlayCopy()
		if err == nil {
			gauge(descPairCopies, flag(on))
			counter(descPairCopied, copied)
		}
	}
}

// notifyPair makes the pair member call f after every change (nil: none).
func (a *Appliance) notifyPair(f func()) {
	if a == nil || a.pair == nil {
		return
	}
	a.pair.mu.Lock()
	a.pair.notify = f
	a.pair.mu.Unlock()
	if f != nil {
		f()
	}
}

// pairState is the pair reporter's source: the running appliance's member.
func (m *managed) pairState() (pair.State, bool) { return m.running().PairState() }

// setPairNotify sets what the running appliance, and every one started
// later, calls after a change of its pair member.
func (m *managed) setPairNotify(f func()) {
	m.mu.Lock()
	m.pairNotify = f
	a := m.a
	m.mu.Unlock()
	a.notifyPair(f)
}
