package gateway

import (
	"errors"
	"fmt"
	"net/netip"
)

// Defaults of Config fields left zero.
const (
	// DefaultTable is the first of the routing tables the gateway owns:
	// the multipath table; then one per uplink (pinned flows, and the
	// socket route of a borrowed uplink), then one for lent traffic.
	DefaultTable = 52000
	// DefaultRulePriority is the first of the policy rule priorities the
	// gateway uses (see docs/gateway.md for the layout); they all sort
	// before the main table's rule (32766).
	DefaultRulePriority = 5200
	// DefaultPartnerPort is the partner's WireGuard port a lender forwards
	// to.
	DefaultPartnerPort = 51820
	// MaxUplinks bounds Config.Uplinks (one mark value and one table each).
	MaxUplinks = 32
	// TableName is the nftables table the gateway owns (family ip).
	TableName = "causeway-gw"
	// MarkMask is the part of the packet and connection marks the gateway
	// uses: uplink i (0-based) is (i+1)<<16.
	MarkMask uint32 = 0x00ff0000
)

// rulePrioritySpan is how many priorities from RulePriority the gateway
// may use.
const rulePrioritySpan = 50

// Config describes a site's Internet gateway. Addresses are IPv4: the
// gateway does not handle IPv6.
type Config struct {
	// LANInterface is the interface the site's LAN is on.
	LANInterface string
	// LANPrefixes are the LAN's prefixes: traffic from them that leaves
	// for the Internet is masqueraded and balanced over the uplinks.
	LANPrefixes []netip.Prefix
	// LANAddr is the gateway's own address on the LAN. A borrowed uplink
	// needs it (traffic sent to the partner is SNATed to it); it is never
	// counted.
	LANAddr netip.Addr
	// Partner is the LAN address of the PAIR partner, zero without one.
	// Traffic from or to it is the lending traffic and is never counted;
	// traffic from it that arrives on the LAN is routed over Lend (or the
	// main table without Lend), never over the multipath table, so that
	// two members that borrow each other's uplinks cannot loop.
	Partner netip.Addr
	// Overlay is the WireGuard interface (e.g. "cw0"): traffic to or from
	// it is never counted. Routes on it stay in the main table, where they
	// win over the gateway's default route.
	Overlay string
	// Uplinks are the ways to the Internet, at least one.
	Uplinks []Uplink
	// Lend, if set, forwards for the partner over one of this gateway's
	// WAN links (the partner's borrowed uplink).
	Lend *Lend
	// Table is the first routing table number the gateway owns; 0 means
	// DefaultTable. It uses Table .. Table+len(Uplinks)+1.
	Table int
	// RulePriority is the first policy rule priority the gateway uses; 0
	// means DefaultRulePriority. It uses up to 50 from there.
	RulePriority int
}

// Uplink is one way to the Internet: an own WAN link, or a borrowed one
// (the partner's uplink, reached over the LAN).
type Uplink struct {
	// Name identifies the uplink in SetHealthy, logs and metrics.
	Name string
	// Interface is the WAN interface. For a borrowed uplink it is the LAN
	// interface (empty means that).
	Interface string
	// Gateway is the next hop: the ISP's router, or for a borrowed uplink
	// the partner's LAN address (zero means Config.Partner).
	Gateway netip.Addr
	// Borrowed marks the partner's uplink. What the gateway sends over it
	// is SNATed to Config.LANAddr, so that the partner's NAT handles it
	// like its own traffic and the answers come back here.
	Borrowed bool
	// SocketPort, on a borrowed uplink, routes the appliance's own UDP
	// socket bound to LANAddr:SocketPort (its WireGuard socket on this
	// uplink, pinned to the LAN interface) via the partner whatever the
	// uplink's health: `from LANAddr ipproto udp sport SocketPort lookup
	// <the uplink's table>`. 0: no socket route.
	SocketPort uint16
	// Weight is the uplink's share of new flows relative to the others,
	// 1-256; 0 means 1.
	Weight int
}

// Lend is the lender's side of a borrowed uplink: what this gateway does
// for its partner on one of its WAN links.
type Lend struct {
	// Interface is the WAN interface lent, and Gateway its next hop.
	Interface string
	Gateway   netip.Addr
	// PublicAddr is this gateway's address on Interface, and PublicPort
	// the UDP port on it that is forwarded to the partner's WireGuard
	// socket at Config.Partner:PartnerPort. The partner's WireGuard
	// packets leave from PublicAddr:PublicPort.
	PublicAddr  netip.Addr
	PublicPort  uint16
	PartnerPort uint16 // 0 means DefaultPartnerPort
}

// withDefaults validates c and returns a copy with the defaults applied.
// The error lists every problem, each naming its field.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	checkIf := func(field, name string) {
		if name == "" || len(name) > 15 {
			fail(field, "want an interface name of 1-15 bytes, got %q", name)
		}
	}
	inLAN := func(a netip.Addr) bool {
		for _, p := range c.LANPrefixes {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	checkIf("LANInterface", c.LANInterface)
	if len(c.LANPrefixes) == 0 {
		fail("LANPrefixes", "required (the LAN the gateway serves)")
	}
	prefixes := make([]netip.Prefix, 0, len(c.LANPrefixes))
	for i, p := range c.LANPrefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			fail(fmt.Sprintf("LANPrefixes[%d]", i), "want an IPv4 prefix, got %s", p)
			continue
		}
		p = p.Masked()
		for j, q := range prefixes {
			if p.Overlaps(q) {
				fail(fmt.Sprintf("LANPrefixes[%d]", i), "%s overlaps LANPrefixes[%d] %s", p, j, q)
			}
		}
		prefixes = append(prefixes, p)
	}
	c.LANPrefixes = prefixes
	if c.LANAddr.IsValid() && (!c.LANAddr.Is4() || !inLAN(c.LANAddr)) {
		fail("LANAddr", "%s is not an IPv4 address in LANPrefixes", c.LANAddr)
	}
	if c.Partner.IsValid() {
		switch {
		case !c.Partner.Is4() || !inLAN(c.Partner):
			fail("Partner", "%s is not an IPv4 address in LANPrefixes", c.Partner)
		case c.Partner == c.LANAddr:
			fail("Partner", "%s is also LANAddr", c.Partner)
		}
	}
	if c.Overlay != "" {
		checkIf("Overlay", c.Overlay)
		if c.Overlay == c.LANInterface {
			fail("Overlay", "%q is also the LAN interface", c.Overlay)
		}
	}
	switch n := len(c.Uplinks); {
	case n == 0:
		fail("Uplinks", "at least one uplink is required")
	case n > MaxUplinks:
		fail("Uplinks", "at most %d uplinks, got %d", MaxUplinks, n)
	}
	ups := make([]Uplink, len(c.Uplinks))
	names := map[string]int{}
	for i, u := range c.Uplinks {
		base := fmt.Sprintf("Uplinks[%d]", i)
		if u.Name == "" {
			fail(base+".Name", "required")
		} else if j, dup := names[u.Name]; dup {
			fail(base+".Name", "%q is also the name of Uplinks[%d]", u.Name, j)
		} else {
			names[u.Name] = i
		}
		if u.Weight == 0 {
			u.Weight = 1
		}
		if u.Weight < 1 || u.Weight > 256 {
			fail(base+".Weight", "want 1-256, got %d", u.Weight)
		}
		if u.Borrowed {
			if u.Interface == "" {
				u.Interface = c.LANInterface
			}
			if u.Interface != c.LANInterface {
				fail(base+".Interface", "a borrowed uplink is reached over the LAN interface %q, got %q", c.LANInterface, u.Interface)
			}
			if !u.Gateway.IsValid() {
				u.Gateway = c.Partner
			}
			if !u.Gateway.IsValid() || !u.Gateway.Is4() || !inLAN(u.Gateway) {
				fail(base+".Gateway", "a borrowed uplink needs the partner's LAN address (or Partner), got %s", u.Gateway)
			}
			if !c.LANAddr.IsValid() {
				fail("LANAddr", "required with a borrowed uplink (%s): its traffic is SNATed to it", base)
			}
		} else {
			checkIf(base+".Interface", u.Interface)
			if u.Interface == c.LANInterface {
				fail(base+".Interface", "%q is the LAN interface; mark the uplink Borrowed if it is the partner's", u.Interface)
			}
			if !u.Gateway.IsValid() || !u.Gateway.Is4() {
				fail(base+".Gateway", "want the uplink's IPv4 next hop, got %s", u.Gateway)
			}
			if u.SocketPort != 0 {
				fail(base+".SocketPort", "only a borrowed uplink routes a socket")
			}
		}
		if c.Overlay != "" && u.Interface == c.Overlay {
			fail(base+".Interface", "%q is the overlay interface", u.Interface)
		}
		ups[i] = u
	}
	c.Uplinks = ups
	if c.Lend != nil {
		l := *c.Lend
		checkIf("Lend.Interface", l.Interface)
		if l.Interface == c.LANInterface {
			fail("Lend.Interface", "%q is the LAN interface", l.Interface)
		}
		if !l.Gateway.IsValid() || !l.Gateway.Is4() {
			fail("Lend.Gateway", "want the lent link's IPv4 next hop, got %s", l.Gateway)
		}
		if !l.PublicAddr.IsValid() || !l.PublicAddr.Is4() {
			fail("Lend.PublicAddr", "want the IPv4 address on %s, got %s", l.Interface, l.PublicAddr)
		}
		if l.PublicPort == 0 {
			fail("Lend.PublicPort", "required (the UDP port forwarded to the partner, e.g. 51821)")
		}
		if l.PartnerPort == 0 {
			l.PartnerPort = DefaultPartnerPort
		}
		if !c.Partner.IsValid() {
			fail("Partner", "required with Lend (the address forwarded to)")
		}
		c.Lend = &l
	}
	if c.Table == 0 {
		c.Table = DefaultTable
	}
	// The reserved tables are 0 (unspec) and 253-255 (default, main,
	// local); stay clear of them and of 32-bit overflow.
	if last := c.Table + len(c.Uplinks) + 1; c.Table < 1 || last > 1<<31-1 || (c.Table <= 255 && last >= 253) {
		fail("Table", "tables %d-%d would include a reserved table (0, 253-255)", c.Table, last)
	}
	if c.RulePriority == 0 {
		c.RulePriority = DefaultRulePriority
	}
	if c.RulePriority < 1 || c.RulePriority+rulePrioritySpan >= 32766 {
		fail("RulePriority", "want 1 to %d (the rules must sort before the main table's 32766), got %d", 32766-rulePrioritySpan-1, c.RulePriority)
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("gateway config: %w", errors.Join(errs...))
	}
	return c, nil
}

// The layout of the tables and rule priorities from Config.Table and
// Config.RulePriority.
func (c *Config) multipathTable() int   { return c.Table }
func (c *Config) uplinkTable(i int) int { return c.Table + 1 + i }
func (c *Config) lendTable() int        { return c.Table + 1 + len(c.Uplinks) }
func (c *Config) lastTable() int        { return c.lendTable() }
func uplinkMark(i int) uint32           { return uint32(i+1) << 16 }
func (c *Config) prio(offset int) int   { return c.RulePriority + offset }
func (c *Config) ownsPriority(p int) bool {
	return p >= c.RulePriority && p < c.RulePriority+rulePrioritySpan
}

// Rule priority offsets from Config.RulePriority, in the order the kernel
// consults them.
const (
	prioSocketMain = 0  // a borrowed uplink's socket: main table without its default route
	prioSocket     = 1  // ... then the uplink's table
	prioLANMain    = 10 // LAN sources: main table without its default route
	prioPartner    = 20 // the partner's traffic: the lent link (or main)
	prioPinned     = 30 // flows pinned to an uplink by their connection mark
	prioMultipath  = 40 // LAN sources: the multipath default route
)
