package bindtest

import (
	"net/netip"
	"testing"
)

// TwoUplinks is a site with two uplinks to a remote whose endpoint address
// is reachable over both:
//
//	site                                 remote
//	up1 198.18.1.1/24 ──────── 198.18.1.2/24 r1
//	up2 198.18.2.1/24 ──────── 198.18.2.2/24 r2
//	                                     lo  198.19.0.2/32 (RemoteAddr)
//
// The site routes RemoteAddr over both uplinks (up1 preferred by metric),
// so a socket pinned to either uplink reaches it; the remote reaches the
// site's addresses on the connected subnets. Reverse-path filtering is off
// on both sides, as an appliance with several uplinks needs.
type TwoUplinks struct {
	Site, Remote *Netns
	// SiteIf and SiteAddr are the site's uplink interfaces and addresses.
	SiteIf   [2]string
	SiteAddr [2]netip.Addr
	// RemoteIf are the remote's ends of the uplinks.
	RemoteIf [2]string
	// RemoteAddr is the remote's endpoint address.
	RemoteAddr netip.Addr
}

// NewTwoUplinks builds the topology in two new namespaces.
func NewTwoUplinks(tb testing.TB) *TwoUplinks {
	tb.Helper()
	t := &TwoUplinks{
		Site:       NewNetns(tb),
		Remote:     NewNetns(tb),
		SiteIf:     [2]string{"up1", "up2"},
		SiteAddr:   [2]netip.Addr{netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.2.1")},
		RemoteIf:   [2]string{"r1", "r2"},
		RemoteAddr: netip.MustParseAddr("198.19.0.2"),
	}
	for _, n := range []*Netns{t.Site, t.Remote} {
		n.Sysctl("net/ipv4/conf/all/rp_filter", "0")
		n.Sysctl("net/ipv4/conf/default/rp_filter", "0")
	}
	gws := [2]netip.Addr{netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("198.18.2.2")}
	for i := range 2 {
		Veth(tb, t.Site, t.SiteIf[i], netip.PrefixFrom(t.SiteAddr[i], 24), t.Remote, t.RemoteIf[i], netip.PrefixFrom(gws[i], 24))
		t.Site.AddRoute(netip.PrefixFrom(t.RemoteAddr, 32), gws[i], t.SiteIf[i], 100*(i+1))
	}
	t.Remote.AddAddr("lo", netip.PrefixFrom(t.RemoteAddr, 32))
	return t
}

// Cut takes uplink i down (on the remote's side, so the site's socket
// stays usable and its datagrams are lost on the way) or restores it.
func (t *TwoUplinks) Cut(i int, cut bool) { t.Remote.SetUp(t.RemoteIf[i], !cut) }

// Pair is two namespaces joined by one veth: A at 198.18.0.1/24 on "a",
// B at 198.18.0.2/24 on "b".
type Pair struct {
	A, B         *Netns
	AddrA, AddrB netip.Addr
}

// NewPair builds the pair.
func NewPair(tb testing.TB) *Pair {
	tb.Helper()
	p := &Pair{A: NewNetns(tb), B: NewNetns(tb),
		AddrA: netip.MustParseAddr("198.18.0.1"), AddrB: netip.MustParseAddr("198.18.0.2")}
	Veth(tb, p.A, "a", netip.PrefixFrom(p.AddrA, 24), p.B, "b", netip.PrefixFrom(p.AddrB, 24))
	return p
}
