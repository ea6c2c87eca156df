package gateway

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/dataplane/bind/bindtest"
)

// TestOverlayCopy: the pair of lend_linux_test.go, each member with an
// "overlay" link (a veth to a namespace of its own that stands for every
// remote behind the tunnel, 10.20.0.10). The LAN host sends to 10.20.0.10
// through the borrower. With the borrower's copies on, every datagram
// reaches the remote once through the borrower and once through the
// lender, also with the lender's copies on too (the copies are not copied
// back); off, only through the borrower; the counter counts the copies.
func TestOverlayCopy(t *testing.T) {
	p := newPair(t)
	remote := netip.MustParseAddrPort("10.20.0.10:7000")
	sinks := map[string]*net.UDPConn{}
	for _, m := range []struct {
		name string
		ns   *bindtest.Netns
	}{{"borrower", p.borrower}, {"lender", p.lender}} {
		far := bindtest.NewNetns(t)
		bindtest.Veth(t, m.ns, "ov0", pfx("10.99.0.1/30"), far, "eth0", pfx("10.99.0.2/30"))
		far.AddAddr("lo", netip.PrefixFrom(remote.Addr(), 32))
		m.ns.AddRoute(pfx("10.20.0.0/24"), ip("10.99.0.2"), "ov0", 0)
		far.AddRoute(pfx("10.10.0.0/24"), ip("10.99.0.1"), "eth0", 0)
		sinks[m.name] = listenUDP(t, far, remote, "")
	}
	bc, lc := p.borrowerConfig(), p.lenderConfig()
	bc.Overlay, lc.Overlay = "ov0", "ov0"
	lender := start(t, p.lender, lc)
	borrower := start(t, p.borrower, bc)
	mac := func(ns *bindtest.Netns) net.HardwareAddr {
		l, err := ns.Netlink().LinkByName("lan0")
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().HardwareAddr
	}

	// count sends n datagrams from the host and counts what each sink got.
	count := func(t *testing.T, n int) map[string]int {
		t.Helper()
		got := map[string]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for name, c := range sinks {
			wg.Go(func() {
				buf := make([]byte, 100)
				for {
					c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
					if _, err := c.Read(buf); err != nil {
						return
					}
					mu.Lock()
					got[name]++
					mu.Unlock()
				}
			})
		}
		f := dial(t, p.host, netip.AddrPort{}, "", remote)
		for range n {
			f.c.Write([]byte("to a remote site"))
			time.Sleep(time.Millisecond)
		}
		wg.Wait()
		return got
	}

	if got := count(t, 50); got["borrower"] != 50 || got["lender"] != 0 {
		t.Fatalf("copies off: %v, want 50 through the borrower only", got)
	}
	if err := borrower.SetOverlayCopy(mac(p.lender)); err != nil {
		t.Fatal(err)
	}
	if err := lender.SetOverlayCopy(mac(p.borrower)); err != nil {
		t.Fatal(err)
	}
	if got := count(t, 50); got["borrower"] != 50 || got["lender"] != 50 {
		t.Errorf("copies on: %v, want 50 through each", got)
	}
	if on, n, err := borrower.OverlayCopy(); err != nil || !on || n != 50 {
		t.Errorf("borrower's copies: on %v, %d copied, %v; want on, 50", on, n, err)
	}
	if on, n, err := lender.OverlayCopy(); err != nil || !on || n != 0 {
		t.Errorf("lender's copies: on %v, %d copied, %v; want on, none (it copies no copy)", on, n, err)
	}
	if err := borrower.SetOverlayCopy(nil); err != nil {
		t.Fatal(err)
	}
	if got := count(t, 20); got["borrower"] != 20 || got["lender"] != 0 {
		t.Errorf("copies off again: %v, want 20 through the borrower only", got)
	}
	if err := borrower.SetOverlayCopy(net.HardwareAddr{1, 2, 3}); err == nil {
		t.Error("a 3-byte MAC was taken")
	}
	s := newSite(t)
	if err := start(t, s.gw, s.config()).SetOverlayCopy(mac(p.lender)); err == nil {
		t.Error("overlay copies without a partner were taken")
	}
}
