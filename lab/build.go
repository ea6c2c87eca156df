package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// builder creates a topology's namespaces, links, addresses and routes for
// one instance, holding a netlink handle per namespace.
type builder struct {
	t        *topology
	instance string
	handles  map[string]*netlink.Handle // by node
	fds      map[string]int             // namespace file descriptors, by node
}

func (b *builder) ns(node string) string { return netnsName(b.instance, node) }

func (b *builder) close() {
	for _, h := range b.handles {
		h.Close()
	}
	for _, fd := range b.fds {
		unix.Close(fd)
	}
}

// build creates everything in the topology except processes. It stops at
// the first error; the caller tears down what was built.
func (b *builder) build(ctx context.Context) error {
	b.handles = map[string]*netlink.Handle{}
	b.fds = map[string]int{}
	for _, n := range b.t.nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := b.createNode(n); err != nil {
			return err
		}
	}
	for _, br := range b.t.bridges {
		if err := b.addBridge(br); err != nil {
			return err
		}
	}
	for _, v := range b.t.veths {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := b.addVeth(v); err != nil {
			return err
		}
	}
	for _, r := range b.t.routes {
		if err := b.addRoute(r); err != nil {
			return err
		}
	}
	for _, s := range b.t.sysctls {
		if err := writeSysctl(b.ns(s.node), s.key, s.value); err != nil {
			return err
		}
	}
	if err := b.waitLinksUp(ctx); err != nil {
		return err
	}
	for _, n := range b.t.nats {
		if err := addMasquerade(b.fds[n.node], n.out, n.src); err != nil {
			return fmt.Errorf("NAT in %s: %w", b.ns(n.node), err)
		}
	}
	for _, node := range b.t.fragCounters {
		if err := addFragmentCounter(b.fds[node]); err != nil {
			return fmt.Errorf("fragment counter in %s: %w", b.ns(node), err)
		}
	}
	return nil
}

// createNode makes the node's namespace, quiets IPv6 (the lab is IPv4 only;
// this keeps router solicitations and DAD off the links), turns on
// forwarding where the node routes, and brings up loopback.
func (b *builder) createNode(n node) error {
	ns := b.ns(n.name)
	if err := createNetns(ns); err != nil {
		return err
	}
	fd, err := unix.Open(netnsPath(ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", ns, err)
	}
	b.fds[n.name] = fd
	sysctls := [][2]string{
		{"net/ipv6/conf/all/disable_ipv6", "1"},
		{"net/ipv6/conf/default/disable_ipv6", "1"},
	}
	if n.forward {
		sysctls = append(sysctls, [2]string{"net/ipv4/ip_forward", "1"})
	}
	for _, s := range sysctls {
		if err := writeSysctl(ns, s[0], s[1]); err != nil {
			return err
		}
	}
	h, err := netlinkHandle(ns)
	if err != nil {
		return err
	}
	b.handles[n.name] = h
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("%s: %w", ns, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("%s: bringing lo up: %w", ns, err)
	}
	return nil
}

func (b *builder) addBridge(br iface) error {
	h := b.handles[br.node]
	l := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: br.name, MTU: underlayMTU}}
	if err := h.LinkAdd(l); err != nil {
		return fmt.Errorf("%s: adding bridge %s: %w", b.ns(br.node), br.name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s: bringing %s up: %w", b.ns(br.node), br.name, err)
	}
	return nil
}

// addVeth creates the pair from inside a's namespace with its peer placed
// straight into b's, so that neither end ever exists in the caller's
// namespace, then configures both ends.
func (b *builder) addVeth(v veth) error {
	mtu := v.mtu
	if mtu == 0 {
		mtu = underlayMTU
	}
	l := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: v.a.name, MTU: mtu},
		PeerName:      v.b.name,
		PeerMTU:       uint32(mtu),
		PeerNamespace: netlink.NsFd(b.fds[v.b.node]),
	}
	if err := b.handles[v.a.node].LinkAdd(l); err != nil {
		return fmt.Errorf("adding veth %s/%s <-> %s/%s: %w",
			b.ns(v.a.node), v.a.name, b.ns(v.b.node), v.b.name, err)
	}
	for _, e := range []iface{v.a, v.b} {
		if err := b.configure(e, otherEnd(v, e).node); err != nil {
			return err
		}
	}
	return nil
}

func otherEnd(v veth, e iface) iface {
	if e == v.a {
		return v.b
	}
	return v.a
}

// configure labels one veth end with the node at the other end, gives it
// its address or bridge, and brings it up.
func (b *builder) configure(e iface, peer string) error {
	h := b.handles[e.node]
	where := b.ns(e.node) + "/" + e.name
	l, err := h.LinkByName(e.name)
	if err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	if err := h.LinkSetAlias(l, "to "+peer); err != nil {
		return fmt.Errorf("%s: setting alias: %w", where, err)
	}
	if e.addr.IsValid() {
		a := &netlink.Addr{IPNet: ipNet(e.addr)}
		if err := h.AddrAdd(l, a); err != nil {
			return fmt.Errorf("%s: adding %s: %w", where, e.addr, err)
		}
	}
	if e.bridge != "" {
		br, err := h.LinkByName(e.bridge)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if err := h.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("%s: attaching to %s: %w", where, e.bridge, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s: bringing up: %w", where, err)
	}
	return nil
}

func (b *builder) addRoute(r route) error {
	rt := &netlink.Route{Gw: r.via.AsSlice(), Priority: r.metric}
	if r.dst.IsValid() {
		rt.Dst = ipNet(r.dst)
	}
	if err := b.handles[r.node].RouteAdd(rt); err != nil {
		dst := "default"
		if r.dst.IsValid() {
			dst = r.dst.String()
		}
		return fmt.Errorf("%s: adding route %s via %s: %w", b.ns(r.node), dst, r.via, err)
	}
	return nil
}

// waitLinksUp waits until every link reports operational state up. A link
// that was just set up drops what is sent on it until the kernel's link
// watcher has activated its queue, which it may put off for up to a second;
// a first TCP SYN or WireGuard handshake lost that way costs a retransmit.
func (b *builder) waitLinksUp(ctx context.Context) error {
	for _, n := range b.t.nodes {
		h := b.handles[n.name]
		for {
			links, err := h.LinkList()
			if err != nil {
				return fmt.Errorf("%s: listing links: %w", b.ns(n.name), err)
			}
			var down []string
			for _, l := range links {
				if a := l.Attrs(); a.Name != "lo" && a.OperState != netlink.OperUp {
					down = append(down, a.Name)
				}
			}
			if len(down) == 0 {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: links %v not up: %w", b.ns(n.name), down, ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
}

// ipNet converts p, keeping its host bits (an interface address).
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
