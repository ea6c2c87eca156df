package gateway

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/causeway-net/causeway/dataplane"
)

// Gateway is a running Internet gateway. Create it with New, stop it
// with Close. Its methods are safe for concurrent use.
type Gateway struct {
	cfg Config // validated, with defaults
	ns  netns.NsHandle
	nl  *netlink.Handle
	nft *nftables.Conn
	pol *policy

	mu       sync.Mutex
	healthy  []string // as last given to SetHealthy
	nexthops []int    // indexes of the uplinks in the multipath route
	last     dataplane.Counters
	closed   bool
	copying  bool           // overlay copies on (SetOverlayCopy)
	undo     []func() error // newest last
}

// New sets the gateway up in the network namespace of the calling OS
// thread (lock the thread if the process's threads are not all in one
// namespace): every handle and file it needs is opened there, so the
// methods may be called from any goroutine afterwards. Every uplink
// starts healthy. It enables IPv4 forwarding and sets
// net.ipv4.fib_multipath_hash_policy to 1 (per-flow L4 hash), and removes
// what an earlier gateway that crashed left behind. Strict reverse-path
// filtering needs no change: the kernel checks a forwarded packet's
// source as if it had come in on the interface it leaves by, the LAN,
// so the gateway's own rules answer the check.
// It is all-or-nothing: on error everything already done is undone.
func New(cfg Config) (_ *Gateway, err error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	g := &Gateway{cfg: c}
	defer func() {
		if err != nil {
			if uerr := g.runUndo(); uerr != nil {
				err = errors.Join(err, fmt.Errorf("rolling back: %w", uerr))
			}
		}
	}()
	if g.ns, err = netns.Get(); err != nil {
		return nil, fmt.Errorf("gateway: the current network namespace: %w", err)
	}
	g.push(g.ns.Close)
	if g.nl, err = netlink.NewHandleAt(g.ns); err != nil {
		return nil, fmt.Errorf("gateway: netlink: %w", err)
	}
	g.push(func() error { g.nl.Close(); return nil })
	if g.nft, err = nftables.New(nftables.WithNetNSFd(int(g.ns)), nftables.AsLasting()); err != nil {
		return nil, fmt.Errorf("gateway: nftables: %w", err)
	}
	g.push(g.nft.CloseLasting)

	g.pol = &policy{c: &g.cfg, nl: g.nl, links: map[string]int{}}
	ifaces := []string{c.LANInterface}
	for _, u := range c.Uplinks {
		ifaces = append(ifaces, u.Interface)
	}
	if c.Lend != nil {
		ifaces = append(ifaces, c.Lend.Interface)
	}
	for _, name := range ifaces {
		if _, ok := g.pol.links[name]; ok {
			continue
		}
		l, err := g.nl.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("gateway: interface %s: %w", name, err)
		}
		g.pol.links[name] = l.Attrs().Index
	}

	// Leftovers first: a table of ours, rules and routes in our ranges.
	if err := g.deleteTable(); err != nil {
		return nil, err
	}
	if err := g.pol.sweep(); err != nil {
		return nil, err
	}

	if err := g.sysctl("net/ipv4/ip_forward", "1"); err != nil {
		return nil, err
	}
	if err := g.sysctl("net/ipv4/fib_multipath_hash_policy", "1"); err != nil {
		return nil, err
	}
	rs := &ruleset{c: &g.cfg, nft: g.nft}
	if err := rs.build(); err != nil {
		return nil, fmt.Errorf("gateway: building table %s: %w", TableName, err)
	}
	if err := g.nft.Flush(); err != nil {
		return nil, fmt.Errorf("gateway: installing table %s: %w", TableName, err)
	}
	g.push(g.deleteTable)

	// Routes before the rules that point at them.
	for _, r := range g.pol.fixedRoutes() {
		if err := g.addRoute(r); err != nil {
			return nil, err
		}
	}
	g.nexthops = allIndexes(len(c.Uplinks))
	if err := g.addRoute(g.pol.multipathRoute(g.nexthops)); err != nil {
		return nil, err
	}
	for _, r := range g.pol.rules() {
		if err := g.nl.RuleAdd(r); err != nil {
			return nil, fmt.Errorf("gateway: adding rule %s: %w", describeRule(r), err)
		}
		g.push(func() error {
			if err := g.nl.RuleDel(r); err != nil {
				return fmt.Errorf("gateway: removing rule %s: %w", describeRule(r), err)
			}
			return nil
		})
	}
	for _, u := range c.Uplinks {
		g.healthy = append(g.healthy, u.Name)
	}
	return g, nil
}

func (g *Gateway) push(f func() error) { g.undo = append(g.undo, f) }

func (g *Gateway) sysctl(key, v string) error {
	undo, err := setSysctl(key, v)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	g.push(func() error {
		if err := undo(); err != nil {
			return fmt.Errorf("gateway: sysctl %s: %w", key, err)
		}
		return nil
	})
	return nil
}

// addRoute adds r and pushes its removal. The multipath route changes
// in place later (SetHealthy), so the undo flushes its table rather than
// deleting r as it was.
func (g *Gateway) addRoute(r *netlink.Route) error {
	if err := g.nl.RouteAdd(r); err != nil {
		return fmt.Errorf("gateway: adding route %s to table %d: %w", describeRoute(r), r.Table, err)
	}
	table := r.Table
	g.push(func() error { return g.pol.flushTable(table) })
	return nil
}

// deleteTable removes the gateway's nftables table if it exists.
func (g *Gateway) deleteTable() error {
	tables, err := g.nft.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return fmt.Errorf("gateway: listing nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == TableName {
			g.nft.DelTable(t)
			if err := g.nft.Flush(); err != nil {
				return fmt.Errorf("gateway: removing table %s: %w", TableName, err)
			}
		}
	}
	return nil
}

func (g *Gateway) runUndo() error {
	var errs []error
	for i := len(g.undo) - 1; i >= 0; i-- {
		if err := g.undo[i](); err != nil {
			errs = append(errs, err)
		}
	}
	g.undo = nil
	return errors.Join(errs...)
}

// Close removes the table, the rules and the routes and restores the
// sysctls it changed. Established flows keep their NAT bindings in
// conntrack until they expire. Close is idempotent.
func (g *Gateway) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	return g.runUndo()
}

// SetHealthy makes the named uplinks the multipath route's nexthops, at
// once: new flows are balanced over them, and the flows pinned to an
// uplink that left the set lose their conntrack entries, so that their
// next packet is routed over the healthy uplinks and NATed there (a UDP
// flow carries on from a new address; a TCP connection is reset by the
// far end, which does not know the new address). Flows on uplinks that
// stay are not moved, also when uplinks join the set.
//
// An empty set means every uplink: when nothing is known to work, trying
// every link is what a gateway without health checks would do, and an
// outage of whatever the health comes from (the remote sites the paths
// lead to) need not be the Internet's. Unknown names are an error and
// change nothing.
func (g *Gateway) SetHealthy(names []string) error {
	idx := make([]int, 0, len(names))
	for _, n := range names {
		i := slices.IndexFunc(g.cfg.Uplinks, func(u Uplink) bool { return u.Name == n })
		if i < 0 {
			return fmt.Errorf("gateway: SetHealthy: no uplink %q", n)
		}
		if !slices.Contains(idx, i) {
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return errors.New("gateway: SetHealthy after Close")
	}
	g.healthy = slices.Clone(names)
	if len(idx) == 0 {
		idx = allIndexes(len(g.cfg.Uplinks))
	}
	if slices.Equal(idx, g.nexthops) {
		return nil
	}
	r := g.pol.multipathRoute(idx)
	if err := g.nl.RouteReplace(r); err != nil {
		return fmt.Errorf("gateway: replacing the multipath route with %s: %w", describeRoute(r), err)
	}
	var gone []int
	for _, i := range g.nexthops {
		if !slices.Contains(idx, i) {
			gone = append(gone, i)
		}
	}
	g.nexthops = idx
	if len(gone) > 0 {
		if _, err := g.pol.unpin(gone); err != nil {
			return fmt.Errorf("gateway: moving the flows off %v: %w", g.names(gone), err)
		}
	}
	return nil
}

// Healthy returns the names last given to SetHealthy (initially every
// uplink).
func (g *Gateway) Healthy() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.healthy)
}

// Nexthops returns the names of the uplinks new flows are balanced over,
// in config order.
func (g *Gateway) Nexthops() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.names(g.nexthops)
}

func (g *Gateway) names(idx []int) []string {
	out := make([]string, len(idx))
	for k, i := range idx {
		out[k] = g.cfg.Uplinks[i].Name
	}
	return out
}

// Uplinks returns the configured uplinks, with defaults applied.
func (g *Gateway) Uplinks() []Uplink { return slices.Clone(g.cfg.Uplinks) }

// ReadCounters reads the gateway's counters: Tx is what LAN hosts sent
// to the Internet, Rx what they received from it, as forwarded IP
// packets and their IP lengths. Traffic to or from the overlay
// interface, the pair's own LAN addresses (lending) and the appliance
// itself is never counted (docs/gateway.md). They are monotonic over the
// life of the Gateway.
func (g *Gateway) ReadCounters() (dataplane.Counters, error) {
	tx, rx, err := readCounters(g.nft)
	if err != nil {
		return dataplane.Counters{}, err
	}
	c := dataplane.Counters{TxPackets: tx.Packets, TxBytes: tx.Bytes, RxPackets: rx.Packets, RxBytes: rx.Bytes}
	g.mu.Lock()
	g.last = c
	g.mu.Unlock()
	return c, nil
}

// Counters is ReadCounters for callers that cannot act on an error: if
// the read fails it returns the last values read, so the counters never
// go backwards.
func (g *Gateway) Counters() dataplane.Counters {
	if c, err := g.ReadCounters(); err == nil {
		return c
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.last
}

func allIndexes(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}
