package lab

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// Node roles, as reported in Status.
const (
	RoleRouter    = "router"    // forwards IPv4 between its links
	RoleSwitch    = "switch"    // holds a site's LAN bridge
	RoleAppliance = "appliance" // runs `causeway appliance`
	RoleHost      = "host"      // an ordinary machine on a site's LAN
	// RoleController runs `causeway controller`, in the cloud, on the
	// underlay.
	RoleController = "controller"
	// RoleServer is a machine on the Internet, outside every site.
	RoleServer = "server"
)

// Names the lab uses inside every namespace.
const (
	netnsPrefix = "cw-"
	bridgeName  = "br0"
	// underlayMTU is the MTU of every link unless the topology says otherwise.
	underlayMTU = 1500
	// listenPort is every appliance's WireGuard port.
	listenPort = 51820
)

// DefaultInstance is the instance name used when Options.Instance is empty.
const DefaultInstance = "demo"

var instanceRE = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// ValidInstance reports whether name can name a lab instance: 1-8
// lower-case letters and digits. The limit keeps every namespace and
// interface name the lab derives from it within the kernel's limits.
func ValidInstance(name string) bool { return instanceRE.MatchString(name) }

// UniqueInstance returns an instance name that no other running process
// can be using: up to three characters of tag (letters and digits) and the
// calling process's PID in base 36. Tests that run concurrently in several
// processes use it to keep out of each other's way.
func UniqueInstance(tag string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(tag) {
		if b.Len() == 3 {
			break
		}
		if ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') {
			b.WriteRune(c)
		}
	}
	return b.String() + strconv.FormatInt(int64(os.Getpid()), 36)
}

func checkInstance(name string) error {
	if !ValidInstance(name) {
		return fmt.Errorf("lab: instance name %q: want 1-8 lower-case letters and digits", name)
	}
	return nil
}

// netnsName is the namespace name of node in instance.
func netnsName(instance, node string) string { return netnsPrefix + instance + "-" + node }

// parseNetnsName splits a namespace name made by netnsName. ok is false for
// every name that is not one of ours: a foreign prefix, a malformed
// instance, or a node the topology does not have.
func parseNetnsName(name string) (instance, node string, ok bool) {
	rest, found := strings.CutPrefix(name, netnsPrefix)
	if !found {
		return "", "", false
	}
	instance, node, found = strings.Cut(rest, "-")
	if !found || !ValidInstance(instance) || labTopology.node(node) == nil {
		return "", "", false
	}
	return instance, node, true
}

// node is one network namespace of the topology.
type node struct {
	name string
	site string // "" for the Internet router
	role string
	// forward turns on IPv4 forwarding. Appliances turn it on themselves.
	forward bool
}

// iface is one end of a veth pair.
type iface struct {
	node string
	name string       // at most 15 bytes (IFNAMSIZ)
	addr netip.Prefix // zero: no address
	// bridge, if set, makes this interface a port of that bridge in node.
	bridge string
}

// veth is a veth pair between two namespaces.
type veth struct {
	a, b iface
	mtu  int // 0: underlayMTU
}

// route is a static route in one namespace; a zero dst is the default route.
type route struct {
	node   string
	dst    netip.Prefix
	via    netip.Addr
	metric int // 0: the kernel's default
}

// sysctl is a setting under /proc/sys/net in one namespace, made once the
// node's interfaces exist (e.g. "net/ipv4/conf/wan1/rp_filter").
type sysctl struct {
	node, key, value string
}

// nat masquerades traffic from src that leaves node through out.
type nat struct {
	node string
	out  string
	src  netip.Prefix
}

// applianceSpec is one site appliance. Its overlay address is not here:
// the controller allocates it at enrollment.
type applianceSpec struct {
	name string // also the node name, the site's name and the appliance's
	site string
	kind string // the site kind at the controller: office, vpc, home
	// wans are the uplink interfaces, in order of preference: the first
	// carries the default route with the lowest metric.
	wans []string
	lan  []netip.Prefix
	// gateway, if set, is the LAN interface of an appliance that is its
	// site's Internet gateway (`--gateway`), over all its wans.
	gateway string
	// natted marks an appliance behind NAT: it only dials out, so it
	// reports no endpoints at enrollment. The controller then lists it
	// without endpoints to its peers and gives it a keepalive that keeps
	// its NAT mapping open.
	natted bool
	// pair, if set, makes the appliance one of the two members of its
	// site's pair: both on one LAN, each on its own ISP (wans[0]).
	pair *pairSpec
}

// pairSpec is an appliance's place in its site's pair. Its LAN address is
// its lan0's, its WAN address its wans[0]'s, and the partner's likewise.
type pairSpec struct {
	partner string       // the other member's node
	vip     netip.Prefix // the LAN's gateway address
	// priority is what the lab sets through the controller: higher is
	// preferred.
	priority int
	// borrowed names the partner's uplink as this member uses it: the
	// name of the partner's own WAN link, so that both members call ISP 1
	// wan1 and ISP 2 wan2.
	borrowed string
}

// controllerSpec is the controller the appliances enroll with.
type controllerSpec struct {
	node   string
	listen netip.AddrPort
	// tenant is the tenant the lab creates for its sites.
	tenant string
}

// serviceSpec is a process serving HTTP on a host, and a UDP echo if
// udpEcho is set.
type serviceSpec struct {
	name    string
	host    string
	listen  netip.AddrPort
	udpEcho netip.AddrPort
}

// topology is a whole lab: pure data, built by newTopology and acted on
// by build.
type topology struct {
	nodes      []node
	bridges    []iface // bridge devices (node, name)
	veths      []veth
	routes     []route
	sysctls    []sysctl
	nats       []nat
	appliances []applianceSpec
	controller controllerSpec
	services   []serviceSpec
	// fragCounters are the nodes that count IP fragments passing them.
	fragCounters []string
}

// labTopology is the one topology the lab builds.
var labTopology = newTopology()

func pfx(s string) netip.Prefix  { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr   { return netip.MustParseAddr(s) }
func defaultRoute() netip.Prefix { return netip.Prefix{} }

// The addresses the rest of the package and the tests refer to.
var (
	backendAddr = addr("10.20.0.10")
	// controllerAddr is the controller's address on the underlay.
	controllerAddr = addr("198.18.0.2")
	// unannouncedAddr is in no site's prefixes: traffic to it must not
	// cross the overlay.
	unannouncedAddr = addr("10.99.0.10")
	// webAddr is the Internet host web-1, outside every site.
	webAddr = addr("198.19.0.10")
	// officeVIP is office-1's gateway address, held by the active member
	// of its pair.
	officeVIP = pfx("10.10.0.1/24")
)

// lendPort is the port on a pair member's WAN address that is forwarded to
// its partner's WireGuard socket: the partner's second endpoint.
const lendPort = 51821

// officePriority is the priority of office-1a, the preferred member of
// office-1's pair; office-1b keeps the controller's default.
const officePriority = 200

// webEchoPort is web-1's UDP echo port.
const webEchoPort = 7

// controllerPort is the controller's HTTPS port.
const controllerPort = 8443

// ISP link MTU between inet and home-1-router: smaller than the 1500 of
// every other link, so that the overlay has to fit a small underlay.
const homeISPMTU = 1400

func newTopology() *topology {
	t := &topology{}
	t.nodes = []node{
		{name: "inet", role: RoleRouter, forward: true},
		{name: "cloud", role: RoleController},
		{name: "office-1a", site: "office-1", role: RoleAppliance},
		{name: "office-1b", site: "office-1", role: RoleAppliance},
		{name: "office-1-lan", site: "office-1", role: RoleSwitch},
		{name: "office-1-host", site: "office-1", role: RoleHost},
		{name: "vpc-1", site: "vpc-1", role: RoleAppliance},
		{name: "vpc-1-lan", site: "vpc-1", role: RoleSwitch},
		{name: "vpc-1-backend-1", site: "vpc-1", role: RoleHost},
		{name: "vpc-1-backend-2", site: "vpc-1", role: RoleHost},
		{name: "home-1-router", site: "home-1", role: RoleRouter, forward: true},
		{name: "home-1", site: "home-1", role: RoleAppliance},
		{name: "home-1-lan", site: "home-1", role: RoleSwitch},
		{name: "home-1-host", site: "home-1", role: RoleHost},
		{name: "web-1", role: RoleServer},
	}
	for _, sw := range []string{"office-1-lan", "vpc-1-lan", "home-1-lan"} {
		t.bridges = append(t.bridges, iface{node: sw, name: bridgeName})
	}

	// Interfaces of routers and switches are named after the node at the
	// other end, and where that is a pair member, after its interface too
	// (office-1a-wan1); those of appliances and hosts are wanN/lan0/eth0.
	t.veths = []veth{
		// The Internet: one /24 per ISP link. office-1 has two ISPs,
		// "ISP 1" on office-1a's wan1 and "ISP 2" on office-1b's wan2.
		{a: iface{node: "inet", name: "cloud", addr: pfx("198.18.0.1/24")},
			b: iface{node: "cloud", name: "eth0", addr: netip.PrefixFrom(controllerAddr, 24)}},
		{a: iface{node: "inet", name: "office-1a-wan1", addr: pfx("198.18.1.1/24")},
			b: iface{node: "office-1a", name: "wan1", addr: pfx("198.18.1.2/24")}},
		{a: iface{node: "inet", name: "office-1b-wan2", addr: pfx("198.18.4.1/24")},
			b: iface{node: "office-1b", name: "wan2", addr: pfx("198.18.4.2/24")}},
		{a: iface{node: "inet", name: "vpc-1", addr: pfx("198.18.2.1/24")},
			b: iface{node: "vpc-1", name: "wan0", addr: pfx("198.18.2.2/24")}},
		{a: iface{node: "inet", name: "home-1-router", addr: pfx("198.18.3.1/24")},
			b: iface{node: "home-1-router", name: "wan0", addr: pfx("198.18.3.2/24")}, mtu: homeISPMTU},
		{a: iface{node: "home-1-router", name: "lan0", addr: pfx("172.16.30.1/24")},
			b: iface{node: "home-1", name: "wan0", addr: pfx("172.16.30.2/24")}},
		// An Internet host, on a link of its own.
		{a: iface{node: "inet", name: "web-1", addr: pfx("198.19.0.1/24")},
			b: iface{node: "web-1", name: "eth0", addr: netip.PrefixFrom(webAddr, 24)}},

		// Site LANs: every device is a port of its switch's bridge.
		{a: iface{node: "office-1a", name: "lan0", addr: pfx("10.10.0.2/24")},
			b: iface{node: "office-1-lan", name: "office-1a", bridge: bridgeName}},
		{a: iface{node: "office-1b", name: "lan0", addr: pfx("10.10.0.3/24")},
			b: iface{node: "office-1-lan", name: "office-1b", bridge: bridgeName}},
		{a: iface{node: "office-1-host", name: "eth0", addr: pfx("10.10.0.10/24")},
			b: iface{node: "office-1-lan", name: "office-1-host", bridge: bridgeName}},
		{a: iface{node: "vpc-1", name: "lan0", addr: pfx("10.20.0.1/24")},
			b: iface{node: "vpc-1-lan", name: "vpc-1", bridge: bridgeName}},
		{a: iface{node: "vpc-1-backend-1", name: "eth0", addr: netip.PrefixFrom(backendAddr, 24)},
			b: iface{node: "vpc-1-lan", name: "vpc-1-backend-1", bridge: bridgeName}},
		{a: iface{node: "vpc-1-backend-2", name: "eth0", addr: pfx("10.20.0.11/24")},
			b: iface{node: "vpc-1-lan", name: "vpc-1-backend-2", bridge: bridgeName}},
		{a: iface{node: "home-1", name: "lan0", addr: pfx("10.30.0.1/24")},
			b: iface{node: "home-1-lan", name: "home-1", bridge: bridgeName}},
		{a: iface{node: "home-1-host", name: "eth0", addr: pfx("10.30.0.10/24")},
			b: iface{node: "home-1-lan", name: "home-1-host", bridge: bridgeName}},
	}

	// inet only knows its connected /24s: it has no route to any LAN, so
	// nothing between sites can flow outside the overlay.
	t.routes = []route{
		{node: "cloud", dst: defaultRoute(), via: addr("198.18.0.1")},
		{node: "office-1a", dst: defaultRoute(), via: addr("198.18.1.1")},
		{node: "office-1b", dst: defaultRoute(), via: addr("198.18.4.1")},
		{node: "vpc-1", dst: defaultRoute(), via: addr("198.18.2.1")},
		{node: "home-1-router", dst: defaultRoute(), via: addr("198.18.3.1")},
		{node: "home-1", dst: defaultRoute(), via: addr("172.16.30.1")},
		// The VIP, on whichever member of the pair is active.
		{node: "office-1-host", dst: defaultRoute(), via: officeVIP.Addr()},
		{node: "vpc-1-backend-1", dst: defaultRoute(), via: addr("10.20.0.1")},
		{node: "vpc-1-backend-2", dst: defaultRoute(), via: addr("10.20.0.1")},
		{node: "home-1-host", dst: defaultRoute(), via: addr("10.30.0.1")},
		{node: "web-1", dst: defaultRoute(), via: addr("198.19.0.1")},
	}
	// Loose reverse-path filtering on the pair members' links: what the
	// partner forwards over the LAN (the borrowed uplink's answers) comes
	// from addresses whose best route is the member's own WAN link.
	t.sysctls = []sysctl{
		{node: "office-1a", key: "net/ipv4/conf/wan1/rp_filter", value: "2"},
		{node: "office-1a", key: "net/ipv4/conf/lan0/rp_filter", value: "2"},
		{node: "office-1b", key: "net/ipv4/conf/wan2/rp_filter", value: "2"},
		{node: "office-1b", key: "net/ipv4/conf/lan0/rp_filter", value: "2"},
	}
	t.nats = []nat{{node: "home-1-router", out: "wan0", src: pfx("172.16.30.0/24")}}
	t.appliances = []applianceSpec{
		{name: "office-1a", site: "office-1", kind: "office", wans: []string{"wan1"}, lan: []netip.Prefix{pfx("10.10.0.0/24")}, gateway: "lan0",
			pair: &pairSpec{partner: "office-1b", vip: officeVIP, priority: officePriority, borrowed: "wan2"}},
		{name: "office-1b", site: "office-1", kind: "office", wans: []string{"wan2"}, lan: []netip.Prefix{pfx("10.10.0.0/24")}, gateway: "lan0",
			pair: &pairSpec{partner: "office-1a", vip: officeVIP, priority: 100, borrowed: "wan1"}},
		{name: "vpc-1", site: "vpc-1", kind: "vpc", wans: []string{"wan0"}, lan: []netip.Prefix{pfx("10.20.0.0/24")}},
		{name: "home-1", site: "home-1", kind: "home", wans: []string{"wan0"}, lan: []netip.Prefix{pfx("10.30.0.0/24")}, natted: true},
	}
	t.controller = controllerSpec{node: "cloud", listen: netip.AddrPortFrom(controllerAddr, controllerPort), tenant: "demo"}
	t.services = []serviceSpec{
		{name: "backend-http", host: "vpc-1-backend-1", listen: netip.AddrPortFrom(backendAddr, 80)},
		{name: "web-http", host: "web-1", listen: netip.AddrPortFrom(webAddr, 80), udpEcho: netip.AddrPortFrom(webAddr, webEchoPort)},
	}
	// inet sees every packet between sites; the home router also sees the
	// fragments inet makes towards it, before its own NAT reassembles them.
	t.fragCounters = []string{"inet", "home-1-router"}
	return t
}

// node returns the named node, or nil.
func (t *topology) node(name string) *node {
	for i := range t.nodes {
		if t.nodes[i].name == name {
			return &t.nodes[i]
		}
	}
	return nil
}

// endpoints are where the appliance's peers reach it: its WAN addresses on
// the WireGuard port and, for a pair member, the partner's WAN address on
// the lend port (forwarded to this member over the LAN). None behind NAT.
func (t *topology) endpoints(a *applianceSpec) []netip.AddrPort {
	if a.natted {
		return nil
	}
	var eps []netip.AddrPort
	for _, w := range a.wans {
		eps = append(eps, netip.AddrPortFrom(t.iface(a.name, w).addr.Addr(), listenPort))
	}
	if a.pair != nil {
		eps = append(eps, netip.AddrPortFrom(t.pairWANAddr(a.pair.partner), lendPort))
	}
	return eps
}

// pairWANAddr is a pair member's WAN address (its first uplink's).
func (t *topology) pairWANAddr(name string) netip.Addr {
	a := t.appliance(name)
	return t.iface(name, a.wans[0]).addr.Addr()
}

// lanAddr is an appliance's address on lan0.
func (t *topology) lanAddr(name string) netip.Addr { return t.iface(name, "lan0").addr.Addr() }

// sites are the appliances' sites, each once, in topology order, with
// the appliance that defines it (kind and prefixes).
func (t *topology) sites() []*applianceSpec {
	var out []*applianceSpec
	seen := map[string]bool{}
	for i := range t.appliances {
		if a := &t.appliances[i]; !seen[a.site] {
			seen[a.site] = true
			out = append(out, a)
		}
	}
	return out
}

// appliance returns the named appliance, or nil.
func (t *topology) appliance(name string) *applianceSpec {
	for i := range t.appliances {
		if t.appliances[i].name == name {
			return &t.appliances[i]
		}
	}
	return nil
}

// ifaces returns every veth end in node, in topology order.
func (t *topology) ifaces(node string) []iface {
	var out []iface
	for _, v := range t.veths {
		for _, e := range []iface{v.a, v.b} {
			if e.node == node {
				out = append(out, e)
			}
		}
	}
	return out
}

// iface returns the interface name in node, or the zero iface.
func (t *topology) iface(node, name string) iface {
	for _, e := range t.ifaces(node) {
		if e.name == name {
			return e
		}
	}
	return iface{}
}

// addrs returns the addresses configured on node's interfaces.
func (t *topology) addrs(node string) []netip.Addr {
	var out []netip.Addr
	for _, e := range t.ifaces(node) {
		if e.addr.IsValid() {
			out = append(out, e.addr.Addr())
		}
	}
	return out
}

// nodeNames returns every node name in topology order.
func (t *topology) nodeNames() []string {
	out := make([]string, len(t.nodes))
	for i, n := range t.nodes {
		out[i] = n.name
	}
	return out
}

// netnsNames returns the namespace of every node of instance.
func (t *topology) netnsNames(instance string) []string {
	out := make([]string, len(t.nodes))
	for i, n := range t.nodes {
		out[i] = netnsName(instance, n.name)
	}
	return out
}

// minUnderlayMTU is the smallest MTU of any link.
func (t *topology) minUnderlayMTU() int {
	m := underlayMTU
	for _, v := range t.veths {
		if v.mtu != 0 && v.mtu < m {
			m = v.mtu
		}
	}
	return m
}
