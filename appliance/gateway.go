package appliance

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/causeway-net/causeway/dataplane"
	"github.com/causeway-net/causeway/dataplane/gateway"
	"github.com/causeway-net/causeway/probes"
)

// This file makes the appliance the site's Internet gateway (config field
// "gateway", or --gateway in managed mode): dataplane/gateway over the
// appliance's uplinks, with each uplink's health taken from the path
// prober, and its counters on /metrics. See docs/gateway.md.

// GatewayConfig makes the appliance the Internet gateway of its LAN:
// traffic from the LAN prefixes to the Internet is masqueraded and
// balanced per flow over the healthy uplinks.
type GatewayConfig struct {
	// LANInterface is the interface the LAN is on.
	LANInterface string
	// Uplinks are the uplinks (of Config.Uplinks) the gateway uses; empty
	// means all of them, each via its default route.
	Uplinks []GatewayUplink
}

// GatewayUplink is one uplink of the gateway.
type GatewayUplink struct {
	Name string // an uplink of Config.Uplinks
	// Via is the next hop; zero means the main table's default route on
	// the uplink's interface when the appliance starts.
	Via netip.Addr
}

// fileGateway is the JSON shape of GatewayConfig:
//
//	"gateway": {"lan_interface": "lan0", "uplinks": [{"name": "wan1", "via": "198.18.1.1"}]}
type fileGateway struct {
	LANInterface string              `json:"lan_interface"`
	Uplinks      []fileGatewayUplink `json:"uplinks,omitempty"`
}

type fileGatewayUplink struct {
	Name string `json:"name"`
	Via  string `json:"via,omitempty"`
}

// gateway validates the "gateway" object against the config's uplinks
// and LAN prefixes (c has them already).
func (v *validator) gateway(fg *fileGateway, c *Config) *GatewayConfig {
	g := &GatewayConfig{LANInterface: fg.LANInterface}
	switch {
	case !ifaceRE.MatchString(fg.LANInterface) || fg.LANInterface == "." || fg.LANInterface == "..":
		v.fail("gateway.lan_interface", "want an interface name of 1-15 letters, digits, '_', '.' or '-', got %q", fg.LANInterface)
	case fg.LANInterface == c.Interface:
		v.fail("gateway.lan_interface", "%q is the overlay interface", fg.LANInterface)
	default:
		for i, u := range c.Uplinks {
			if u.Interface == fg.LANInterface {
				v.fail("gateway.lan_interface", "%q is the interface of uplinks[%d]", fg.LANInterface, i)
			}
		}
	}
	if len(c.Uplinks) == 0 {
		v.fail("gateway", "needs uplinks (the WAN links it forwards over, each with its health from the path probes)")
	}
	if !slices.ContainsFunc(c.LANPrefixes, func(p netip.Prefix) bool { return p.Addr().Is4() }) {
		v.fail("gateway", "needs an IPv4 prefix in lan_prefixes (the LAN it serves)")
	}
	seen := map[string]string{}
	for i, fu := range fg.Uplinks {
		base := fmt.Sprintf("gateway.uplinks[%d]", i)
		u := GatewayUplink{Name: fu.Name}
		if !slices.ContainsFunc(c.Uplinks, func(x Uplink) bool { return x.Name == fu.Name }) {
			v.fail(base+".name", "%q is not the name of one of uplinks", fu.Name)
		} else if prev, dup := seen[fu.Name]; dup {
			v.fail(base+".name", "%q is also %s", fu.Name, prev)
		} else {
			seen[fu.Name] = base
		}
		if fu.Via != "" {
			a, err := netip.ParseAddr(fu.Via)
			if err != nil || !a.Is4() {
				v.fail(base+".via", "want the uplink's IPv4 next hop, got %q", fu.Via)
			} else {
				u.Via = a
			}
		}
		g.Uplinks = append(g.Uplinks, u)
	}
	return g
}

func marshalGateway(g *GatewayConfig) *fileGateway {
	if g == nil {
		return nil
	}
	fg := &fileGateway{LANInterface: g.LANInterface}
	for _, u := range g.Uplinks {
		fu := fileGatewayUplink{Name: u.Name}
		if u.Via.IsValid() {
			fu.Via = u.Via.String()
		}
		fg.Uplinks = append(fg.Uplinks, fu)
	}
	return fg
}

// gatewayFixed lists what of the gateway cannot change while running:
// the gateway itself, and the LAN prefixes it serves.
func gatewayFixed(old, cfg *Config) []error {
	var errs []error
	same := (old.Gateway == nil) == (cfg.Gateway == nil)
	if same && old.Gateway != nil {
		same = old.Gateway.LANInterface == cfg.Gateway.LANInterface && slices.Equal(old.Gateway.Uplinks, cfg.Gateway.Uplinks)
	}
	if !same {
		errs = append(errs, &FieldError{Field: "gateway", Msg: "cannot change while running; restart the appliance"})
	} else if cfg.Gateway != nil && !slices.Equal(old.LANPrefixes, cfg.LANPrefixes) {
		errs = append(errs, &FieldError{Field: "lan_prefixes", Msg: "cannot change while the appliance is the gateway; restart it"})
	}
	return errs
}

// gatewayRunner runs the gateway and feeds it the uplinks' health from
// the prober: an uplink is healthy while at least one of its probed paths
// is up, or while it has no probed path (probing off, or no peer with an
// endpoint on it). With no uplink healthy the gateway uses them all
// (gateway.SetHealthy).
type gatewayRunner struct {
	log   *slog.Logger
	gw    *gateway.Gateway
	names []string // the gateway's uplinks, in order
	p     *prober
	// borrowed names the partner's uplink of a pair member ("" if none);
	// partnerUp (under mu), once the pair member runs, says whether the
	// partner is there to carry it.
	borrowed string
	poke     chan struct{}

	changes   atomic.Uint64 // health changes applied
	mu        sync.Mutex
	healthy   []string // the last verdict
	partnerUp func() bool

	cancel context.CancelFunc
	done   chan struct{}
}

// startGateway sets the gateway up from cfg and starts feeding it health.
// Call it once the prober runs; it pushes its undo.
func (a *Appliance) startGateway(cfg *Config) error {
	gc := cfg.Gateway
	var uplinks []GatewayUplink
	if len(gc.Uplinks) > 0 {
		uplinks = gc.Uplinks
	} else {
		for _, u := range cfg.Uplinks {
			uplinks = append(uplinks, GatewayUplink{Name: u.Name})
		}
	}
	c := gateway.Config{LANInterface: gc.LANInterface, Overlay: cfg.Interface}
	for _, p := range cfg.LANPrefixes {
		if p.Addr().Is4() {
			c.LANPrefixes = append(c.LANPrefixes, p)
		}
	}
	c.LANAddr = lanAddr(gc.LANInterface, c.LANPrefixes)
	pm := cfg.pairMember()
	if pm != nil {
		c.LANAddr, c.Partner = pm.LANAddr, pm.PartnerLANAddr
	}
	for _, gu := range uplinks {
		k := slices.IndexFunc(cfg.Uplinks, func(u Uplink) bool { return u.Name == gu.Name })
		u := cfg.Uplinks[k]
		via := gu.Via
		if !via.IsValid() {
			var err error
			if via, err = gateway.DefaultGateway(u.Interface); err != nil {
				return fmt.Errorf("gateway: uplink %s: %w; give its next hop (gateway.uplinks[].via)", u.Name, err)
			}
		}
		c.Uplinks = append(c.Uplinks, gateway.Uplink{Name: u.Name, Interface: u.Interface, Gateway: via})
	}
	if pm != nil {
		if err := pairGateway(&c, pm, cfg.ListenPort); err != nil {
			return err
		}
	}
	gw, err := gateway.New(c)
	if err != nil {
		return err
	}
	r := &gatewayRunner{log: a.log.With("component", "gateway"), gw: gw, p: a.paths, poke: make(chan struct{}, 1)}
	if pm != nil {
		r.borrowed = pm.BorrowedUplink
	}
	for _, u := range c.Uplinks {
		r.names = append(r.names, u.Name)
	}
	r.healthy = slices.Clone(r.names)
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel, r.done = cancel, make(chan struct{})
	go func() {
		defer close(r.done)
		r.run(ctx)
	}()
	a.gw = r
	a.undo = append(a.undo, r.close)
	var ups []string
	for _, u := range c.Uplinks {
		ups = append(ups, u.Name+" via "+u.Gateway.String()+" dev "+u.Interface)
	}
	a.log.Info("gateway up", "lan_interface", c.LANInterface, "lan_prefixes", fmt.Sprint(c.LANPrefixes), "uplinks", ups)
	return nil
}

// pairGateway adds a pair member's side of lending to c: the partner's
// uplink, borrowed over the LAN (with the route for the WireGuard socket
// bound to the member's LAN address on listenPort), and this member's WAN
// link lent to the partner (its WireGuard socket reached on the WAN
// address's LendPort).
func pairGateway(c *gateway.Config, pm *PairLocal, listenPort uint16) error {
	via := netip.Addr{}
	for _, u := range c.Uplinks {
		if u.Interface == pm.WANInterface {
			via = u.Gateway
		}
	}
	if !via.IsValid() {
		var err error
		if via, err = gateway.DefaultGateway(pm.WANInterface); err != nil {
			return fmt.Errorf("pair: the WAN link lent to the partner, %s: %w", pm.WANInterface, err)
		}
	}
	c.Uplinks = append(c.Uplinks, gateway.Uplink{Name: pm.BorrowedUplink, Borrowed: true, SocketPort: listenPort})
	c.Lend = &gateway.Lend{Interface: pm.WANInterface, Gateway: via, PublicAddr: pm.WANAddr, PublicPort: pm.LendPort,
		PartnerPort: listenPort}
	return nil
}

// lanAddr is the appliance's IPv4 address on dev inside one of prefixes,
// or the zero Addr.
func lanAddr(dev string, prefixes []netip.Prefix) netip.Addr {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return netip.Addr{}
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		for _, p := range prefixes {
			if p.Contains(ip) {
				return ip
			}
		}
	}
	return netip.Addr{}
}

// run applies the uplinks' health whenever a path changes state (and
// once a second, in case a change came in between).
func (r *gatewayRunner) run(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		r.update()
		select {
		case <-ctx.Done():
			return
		case <-r.p.changed:
		case <-r.poke:
		case <-tick.C:
		}
	}
}

// pokeHealth makes the runner look at the uplinks' health now.
func (r *gatewayRunner) pokeHealth() {
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

func (r *gatewayRunner) update() {
	h := uplinkHealth(r.names, r.p.status())
	r.mu.Lock()
	partnerUp := r.partnerUp
	r.mu.Unlock()
	if r.borrowed != "" && partnerUp != nil && !partnerUp() {
		h = slices.DeleteFunc(h, func(u string) bool { return u == r.borrowed })
	}
	r.mu.Lock()
	same := slices.Equal(h, r.healthy)
	r.mu.Unlock()
	if same {
		return
	}
	if err := r.gw.SetHealthy(h); err != nil {
		r.log.Error("applying uplink health", "healthy", h, "err", err)
		return
	}
	r.mu.Lock()
	r.healthy = h
	r.mu.Unlock()
	r.changes.Add(1)
	r.log.Info("gateway uplinks", "healthy", h, "nexthops", r.gw.Nexthops())
}

// uplinkHealth returns the healthy ones of uplinks (in that order):
// those with a probed path that is up, and those without probed paths.
func uplinkHealth(uplinks []string, paths []pathStatus) []string {
	probed, up := map[string]bool{}, map[string]bool{}
	for _, p := range paths {
		probed[p.Uplink] = true
		if p.Stats.State == probes.StateUp {
			up[p.Uplink] = true
		}
	}
	out := []string{}
	for _, u := range uplinks {
		if !probed[u] || up[u] {
			out = append(out, u)
		}
	}
	return out
}

// signalChanged tells the gateway runner, if it is waiting, that the
// paths changed (see prober.changed).
func (p *prober) signalChanged() {
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// close stops feeding health and removes the gateway.
func (r *gatewayRunner) close() error {
	r.cancel()
	<-r.done
	return r.gw.Close()
}

// GatewayCounters returns the Internet gateway's counters (Tx: LAN to
// Internet, Rx: Internet to LAN; see gateway.Gateway.ReadCounters); ok is
// false if the appliance is not the gateway.
func (a *Appliance) GatewayCounters() (c dataplane.Counters, ok bool) {
	if a.gw == nil {
		return dataplane.Counters{}, false
	}
	return a.gw.gw.Counters(), true
}

var (
	descGatewayHealthy = prometheus.NewDesc("causeway_gateway_uplink_healthy",
		"1 while the uplink is healthy for the Internet gateway (a probed path on it is up, or none is probed), else 0.", []string{"uplink"}, nil)
	descGatewayNexthop = prometheus.NewDesc("causeway_gateway_uplink_nexthop",
		"1 if new Internet flows from the LAN are balanced onto the uplink (all uplinks when none is healthy), else 0.", []string{"uplink"}, nil)
	descGatewayBytes = prometheus.NewDesc("causeway_gateway_bytes_total",
		"IP bytes the Internet gateway forwarded from the LAN to the Internet (tx) and back (rx); overlay and lending traffic excluded.", []string{"direction"}, nil)
	descGatewayPackets = prometheus.NewDesc("causeway_gateway_packets_total",
		"IP packets the Internet gateway forwarded from the LAN to the Internet (tx) and back (rx); overlay and lending traffic excluded.", []string{"direction"}, nil)
	descGatewayChanges = prometheus.NewDesc("causeway_gateway_health_changes_total",
		"Changes of the set of healthy uplinks applied to the Internet gateway.", nil, nil)
)

func (r *gatewayRunner) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGatewayHealthy, descGatewayNexthop, descGatewayBytes, descGatewayPackets, descGatewayChanges} {
		ch <- d
	}
}

func (r *gatewayRunner) Collect(ch chan<- prometheus.Metric) {
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	r.mu.Lock()
	healthy := slices.Clone(r.healthy)
	r.mu.Unlock()
	hops := r.gw.Nexthops()
	for _, u := range r.names {
		ch <- prometheus.MustNewConstMetric(descGatewayHealthy, prometheus.GaugeValue, flag(slices.Contains(healthy, u)), u)
		ch <- prometheus.MustNewConstMetric(descGatewayNexthop, prometheus.GaugeValue, flag(slices.Contains(hops, u)), u)
	}
	c := r.gw.Counters()
	for _, m := range []struct {
		d      *prometheus.Desc
		tx, rx uint64
	}{{descGatewayBytes, c.TxBytes, c.RxBytes}, {descGatewayPackets, c.TxPackets, c.RxPackets}} {
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.tx), "tx")
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.rx), "rx")
	}
	ch <- prometheus.MustNewConstMetric(descGatewayChanges, prometheus.CounterValue, float64(r.changes.Load()))
}
