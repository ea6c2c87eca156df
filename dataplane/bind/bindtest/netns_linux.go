package bindtest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Require skips tb unless it runs as root.
func Require(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			tb.Fatal("needs root for network namespaces")
		}
		tb.Skip("needs root for network namespaces")
	}
}

// Netns is an unnamed network namespace with its loopback up.
type Netns struct {
	tb testing.TB
	h  netns.NsHandle
	nl *netlink.Handle
}

// NewNetns creates a namespace, closed when tb ends (the kernel removes it
// with its last reference: the handle, and sockets created in it).
func NewNetns(tb testing.TB) *Netns {
	tb.Helper()
	var h netns.NsHandle
	err := onLockedThread(func() error {
		var err error
		h, err = netns.New() // moves this thread into the new namespace
		return err
	})
	if err != nil {
		tb.Fatalf("creating a network namespace: %v", err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		tb.Fatalf("netlink in the new namespace: %v", err)
	}
	n := &Netns{tb: tb, h: h, nl: nl}
	tb.Cleanup(func() {
		nl.Close()
		h.Close()
	})
	lo, err := nl.LinkByName("lo")
	if err == nil {
		err = nl.LinkSetUp(lo)
	}
	if err != nil {
		tb.Fatalf("bringing lo up: %v", err)
	}
	return n
}

// Netlink is a netlink handle that works in the namespace.
func (n *Netns) Netlink() *netlink.Handle { return n.nl }

// Do runs fn on an OS thread inside the namespace and waits for it.
// Sockets fn creates stay in the namespace whatever thread later uses
// them, so e.g. a conn.Bind's Open (a WireGuard device's Up) goes in Do.
func (n *Netns) Do(fn func() error) error {
	return onLockedThread(func() error {
		if err := netns.Set(n.h); err != nil {
			return fmt.Errorf("entering the namespace: %w", err)
		}
		return fn()
	})
}

// MustDo is Do that fails the test on error.
func (n *Netns) MustDo(fn func() error) {
	n.tb.Helper()
	if err := n.Do(fn); err != nil {
		n.tb.Fatal(err)
	}
}

// Sysctl writes value to the namespace's /proc/sys/<key> (key with
// slashes, e.g. "net/ipv4/conf/all/rp_filter").
func (n *Netns) Sysctl(key, value string) {
	n.tb.Helper()
	n.MustDo(func() error { return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644) })
}

// AddAddr assigns p to the link named dev.
func (n *Netns) AddAddr(dev string, p netip.Prefix) {
	n.tb.Helper()
	l, err := n.nl.LinkByName(dev)
	if err == nil {
		err = n.nl.AddrAdd(l, &netlink.Addr{IPNet: ipNet(p)})
	}
	if err != nil {
		n.tb.Fatalf("adding %s to %s: %v", p, dev, err)
	}
}

// AddRoute adds a route to dst via gw on dev with the given metric.
func (n *Netns) AddRoute(dst netip.Prefix, gw netip.Addr, dev string, metric int) {
	n.tb.Helper()
	l, err := n.nl.LinkByName(dev)
	if err == nil {
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(dst), Priority: metric}
		if gw.IsValid() {
			r.Gw = gw.AsSlice()
		} else {
			r.Scope = netlink.SCOPE_LINK
		}
		err = n.nl.RouteAdd(r)
	}
	if err != nil {
		n.tb.Fatalf("adding route %s via %s dev %s: %v", dst, gw, dev, err)
	}
}

// SetUp brings the link named dev up or down.
func (n *Netns) SetUp(dev string, up bool) {
	n.tb.Helper()
	l, err := n.nl.LinkByName(dev)
	if err == nil {
		if up {
			err = n.nl.LinkSetUp(l)
		} else {
			err = n.nl.LinkSetDown(l)
		}
	}
	if err != nil {
		n.tb.Fatalf("setting %s up=%v: %v", dev, up, err)
	}
}

// Veth links namespace a (interface aName, address aAddr) to namespace b
// (bName, bAddr) and brings both ends up. An end whose prefix is the zero
// Prefix gets no address (a bridge port, say).
func Veth(tb testing.TB, a *Netns, aName string, aAddr netip.Prefix, b *Netns, bName string, bAddr netip.Prefix) {
	tb.Helper()
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName, MTU: 1500},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(int(b.h)),
	}
	if err := a.nl.LinkAdd(v); err != nil {
		tb.Fatalf("creating veth %s-%s: %v", aName, bName, err)
	}
	if aAddr.IsValid() {
		a.AddAddr(aName, aAddr)
	}
	if bAddr.IsValid() {
		b.AddAddr(bName, bAddr)
	}
	a.SetUp(aName, true)
	b.SetUp(bName, true)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// onLockedThread runs fn on a locked OS thread and puts the thread back
// into its namespace afterwards; if that fails the thread stays locked and
// the runtime ends it with the goroutine.
func onLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer origin.Close()
		ferr := fn()
		if err := netns.Set(origin); err != nil {
			errc <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
