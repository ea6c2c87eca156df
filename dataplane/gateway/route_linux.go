package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// policy is the gateway's routing: its tables and policy rules.
type policy struct {
	c     *Config
	nl    *netlink.Handle
	links map[string]int // interface indexes by name
}

// rules returns every policy rule of the gateway, in priority order.
func (p *policy) rules() []*netlink.Rule {
	c := p.c
	var out []*netlink.Rule
	add := func(prio, table int, set func(r *netlink.Rule)) {
		r := netlink.NewRule()
		r.Family = netlink.FAMILY_V4
		r.Priority = c.prio(prio)
		r.Table = table
		set(r)
		out = append(out, r)
	}
	suppressDefault := func(r *netlink.Rule) { r.SuppressPrefixlen = 0 }
	fromLAN := func(prio, table int, pfx netip.Prefix, then func(*netlink.Rule)) {
		add(prio, table, func(r *netlink.Rule) {
			r.Src, r.IifName = ipNet(pfx), c.LANInterface
			if then != nil {
				then(r)
			}
		})
	}
	for i, u := range c.Uplinks {
		if u.SocketPort == 0 {
			continue
		}
		sock := func(then func(*netlink.Rule)) func(*netlink.Rule) {
			return func(r *netlink.Rule) {
				r.Src = ipNet(netip.PrefixFrom(c.LANAddr, 32))
				r.IPProto = unix.IPPROTO_UDP
				r.Sport = netlink.NewRulePortRange(u.SocketPort, u.SocketPort)
				if then != nil {
					then(r)
				}
			}
		}
		add(prioSocketMain, unix.RT_TABLE_MAIN, sock(suppressDefault))
		add(prioSocket, c.uplinkTable(i), sock(nil))
	}
	for _, pfx := range c.LANPrefixes {
		fromLAN(prioLANMain, unix.RT_TABLE_MAIN, pfx, suppressDefault)
	}
	if c.Partner.IsValid() {
		table := unix.RT_TABLE_MAIN
		if c.Lend != nil {
			table = c.lendTable()
		}
		fromLAN(prioPartner, table, netip.PrefixFrom(c.Partner, 32), nil)
	}
	for i := range c.Uplinks {
		add(prioPinned, c.uplinkTable(i), func(r *netlink.Rule) {
			r.IifName = c.LANInterface
			r.Mark = uplinkMark(i)
			mask := MarkMask
			r.Mask = &mask
		})
	}
	for _, pfx := range c.LANPrefixes {
		fromLAN(prioMultipath, c.multipathTable(), pfx, nil)
	}
	return out
}

// fixedRoutes are the default routes of the per-uplink tables and of the
// lent link's table; they do not change with health.
func (p *policy) fixedRoutes() []*netlink.Route {
	c := p.c
	var out []*netlink.Route
	for i, u := range c.Uplinks {
		out = append(out, p.defaultRoute(c.uplinkTable(i), u.Interface, u.Gateway))
	}
	if l := c.Lend; l != nil {
		out = append(out, p.defaultRoute(c.lendTable(), l.Interface, l.Gateway))
	}
	return out
}

func (p *policy) defaultRoute(table int, dev string, via netip.Addr) *netlink.Route {
	return &netlink.Route{Family: netlink.FAMILY_V4, Table: table, Dst: ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0)),
		LinkIndex: p.links[dev], Gw: via.AsSlice()}
}

// multipathRoute is the multipath table's default route over the uplinks
// idx (at least one).
func (p *policy) multipathRoute(idx []int) *netlink.Route {
	c := p.c
	if len(idx) == 1 {
		u := c.Uplinks[idx[0]]
		return p.defaultRoute(c.multipathTable(), u.Interface, u.Gateway)
	}
	r := &netlink.Route{Family: netlink.FAMILY_V4, Table: c.multipathTable(), Dst: ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0))}
	for _, i := range idx {
		u := c.Uplinks[i]
		r.MultiPath = append(r.MultiPath, &netlink.NexthopInfo{LinkIndex: p.links[u.Interface], Gw: u.Gateway.AsSlice(), Hops: u.Weight - 1})
	}
	return r
}

// sweep removes what an earlier gateway with the same table and priority
// base left behind (a crash skips Close): rules that point into its
// tables or use its priorities on the main table, and the routes of its
// tables.
func (p *policy) sweep() error {
	c := p.c
	last := c.Table + MaxUplinks + 1
	rules, err := p.nl.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("gateway: listing policy rules: %w", err)
	}
	var errs []error
	for i := range rules {
		r := &rules[i]
		ours := r.Table >= c.Table && r.Table <= last ||
			c.ownsPriority(r.Priority) && r.Table == unix.RT_TABLE_MAIN && r.SuppressPrefixlen == 0
		if !ours {
			continue
		}
		if err := p.nl.RuleDel(r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("gateway: removing leftover rule %s: %w", describeRule(r), err))
		}
	}
	for t := c.Table; t <= last; t++ {
		errs = append(errs, p.flushTable(t))
	}
	return errors.Join(errs...)
}

// flushTable deletes every IPv4 route of table.
func (p *policy) flushTable(table int) error {
	routes, err := p.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("gateway: listing routes of table %d: %w", table, err)
	}
	var errs []error
	for i := range routes {
		if err := p.nl.RouteDel(&routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("gateway: removing %s from table %d: %w", describeRoute(&routes[i]), table, err))
		}
	}
	return errors.Join(errs...)
}

// markFilter matches the connections pinned to one of a set of uplinks.
type markFilter map[uint32]bool

func (f markFilter) MatchConntrackFlow(fl *netlink.ConntrackFlow) bool { return f[fl.Mark&MarkMask] }

// unpin deletes the conntrack entries of the flows pinned to the uplinks
// idx. Their next packet makes a new entry: routed over the multipath
// table as it is now, pinned again, and NATed to the new uplink's address.
func (p *policy) unpin(idx []int) (uint, error) {
	f := markFilter{}
	for _, i := range idx {
		f[uplinkMark(i)] = true
	}
	return p.nl.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
}

// describeRule prints r in `ip rule` syntax, for errors.
func describeRule(r *netlink.Rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d: from ", r.Priority)
	if r.Src != nil {
		b.WriteString(r.Src.String())
	} else {
		b.WriteString("all")
	}
	if r.IifName != "" {
		b.WriteString(" iif " + r.IifName)
	}
	if r.Mask != nil {
		fmt.Fprintf(&b, " fwmark %#x/%#x", r.Mark, *r.Mask)
	}
	if r.IPProto != 0 {
		fmt.Fprintf(&b, " ipproto %d", r.IPProto)
	}
	if r.Sport != nil {
		fmt.Fprintf(&b, " sport %d", r.Sport.Start)
	}
	fmt.Fprintf(&b, " lookup %d", r.Table)
	if r.SuppressPrefixlen >= 0 {
		fmt.Fprintf(&b, " suppress_prefixlength %d", r.SuppressPrefixlen)
	}
	return b.String()
}

// describeRoute prints r roughly in `ip route` syntax, for errors.
func describeRoute(r *netlink.Route) string {
	dst := "default"
	if r.Dst != nil {
		if ones, _ := r.Dst.Mask.Size(); ones != 0 || !r.Dst.IP.IsUnspecified() {
			dst = r.Dst.String()
		}
	}
	if len(r.MultiPath) > 0 {
		var hops []string
		for _, h := range r.MultiPath {
			hops = append(hops, fmt.Sprintf("nexthop via %s dev #%d weight %d", h.Gw, h.LinkIndex, h.Hops+1))
		}
		return dst + " " + strings.Join(hops, " ")
	}
	return fmt.Sprintf("%s via %s dev #%d", dst, r.Gw, r.LinkIndex)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// DefaultGateway returns the next hop of the main table's default route
// on dev (the lowest metric if there are several), in the network
// namespace of the calling thread: the uplink's gateway when the
// configuration does not name one.
func DefaultGateway(dev string) (netip.Addr, error) {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("gateway: interface %s: %w", dev, err)
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Table: unix.RT_TABLE_MAIN, LinkIndex: l.Attrs().Index}, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("gateway: listing the routes on %s: %w", dev, err)
	}
	var best netip.Addr
	metric := -1
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		gw, ok := netip.AddrFromSlice(r.Gw)
		if !ok || !gw.Unmap().Is4() {
			continue
		}
		if metric < 0 || r.Priority < metric {
			best, metric = gw.Unmap(), r.Priority
		}
	}
	if !best.IsValid() {
		return netip.Addr{}, fmt.Errorf("gateway: no default route via a gateway on %s in the main table", dev)
	}
	return best, nil
}
