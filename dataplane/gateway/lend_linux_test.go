package gateway

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/causeway-net/causeway/dataplane/bind/bindtest"
)

// pair is a LAN with two gateways, a borrower and a lender, as a PAIR of
// appliances, each with its own ISP:
//
//	host eth0 10.10.0.10/24 ─┐                borrower wan0 198.18.2.2/24 ── i2 198.18.2.1/24 inet
//	borrower lan0 10.10.0.2 ─┼─ br0 (switch)
//	lender lan0 10.10.0.1 ───┘                lender wan0 198.18.1.2/24 ── i1 198.18.1.1/24
//	                                   (inet lo 198.19.0.10: the Internet host;
//	                                    198.19.0.20, .21: remote WireGuard peers)
//
// The host's default route is the borrower. The borrower's main table has
// no default route (as when its ISP's DHCP lease has gone): the uplinks'
// next hops are only in the gateway's tables. Reverse-path filtering is
// strict on the borrower and the lender.
type pair struct {
	host, borrower, lender, sw, inet *bindtest.Netns
}

var (
	lenderPublic = netip.AddrPortFrom(ip("198.18.1.2"), 51821)
	remoteWG     = netip.MustParseAddrPort("198.19.0.20:51820")
	remoteWG2    = netip.MustParseAddrPort("198.19.0.21:51820")
	borrowerWG   = netip.MustParseAddrPort("10.10.0.2:51820")
)

func newPair(t *testing.T) *pair {
	t.Helper()
	bindtest.Require(t)
	p := &pair{host: bindtest.NewNetns(t), borrower: bindtest.NewNetns(t), lender: bindtest.NewNetns(t),
		sw: bindtest.NewNetns(t), inet: bindtest.NewNetns(t)}
	for _, n := range []*bindtest.Netns{p.borrower, p.lender} {
		n.Sysctl("net/ipv4/conf/all/rp_filter", "1")
		n.Sysctl("net/ipv4/conf/default/rp_filter", "1")
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := p.sw.Netlink().LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	p.sw.SetUp("br0", true)
	for _, port := range []struct {
		ns   *bindtest.Netns
		dev  string
		addr string
		swIf string
	}{{p.host, "eth0", "10.10.0.10/24", "host"}, {p.borrower, "lan0", "10.10.0.2/24", "borrower"}, {p.lender, "lan0", "10.10.0.1/24", "lender"}} {
		bindtest.Veth(t, port.ns, port.dev, pfx(port.addr), p.sw, port.swIf, pfx("192.0.2.1/32"))
		l, err := p.sw.Netlink().LinkByName(port.swIf)
		if err == nil {
			err = p.sw.Netlink().LinkSetMaster(l, br)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	bindtest.Veth(t, p.lender, "wan0", pfx("198.18.1.2/24"), p.inet, "i1", pfx("198.18.1.1/24"))
	bindtest.Veth(t, p.borrower, "wan0", pfx("198.18.2.2/24"), p.inet, "i2", pfx("198.18.2.1/24"))
	p.host.AddRoute(defaultDst, ip("10.10.0.2"), "eth0", 0)
	p.lender.AddRoute(defaultDst, ip("198.18.1.1"), "wan0", 0)
	for _, a := range []netip.Addr{webAddr, remoteWG.Addr(), remoteWG2.Addr()} {
		p.inet.AddAddr("lo", netip.PrefixFrom(a, 32))
	}
	return p
}

func (p *pair) borrowerConfig() Config {
	return Config{
		LANInterface: "lan0", LANPrefixes: []netip.Prefix{pfx("10.10.0.0/24")},
		LANAddr: ip("10.10.0.2"), Partner: ip("10.10.0.1"),
		Uplinks: []Uplink{
			{Name: "wan0", Interface: "wan0", Gateway: ip("198.18.2.1")},
			{Name: "lender-wan0", Borrowed: true, SocketPort: borrowerWG.Port()},
		},
	}
}

func (p *pair) lenderConfig() Config {
	return Config{
		LANInterface: "lan0", LANPrefixes: []netip.Prefix{pfx("10.10.0.0/24")},
		LANAddr: ip("10.10.0.1"), Partner: ip("10.10.0.2"),
		Uplinks: []Uplink{{Name: "wan0", Interface: "wan0", Gateway: ip("198.18.1.1")}},
		Lend:    &Lend{Interface: "wan0", Gateway: ip("198.18.1.1"), PublicAddr: lenderPublic.Addr(), PublicPort: lenderPublic.Port()},
	}
}

// TestBorrowedUplink: a LAN host behind a borrower reaches the Internet
// through the lender when the borrowed uplink is the healthy one; the borrower's WireGuard-like socket on the
// borrowed uplink reaches remote peers from the lender's public port and
// is reached through the port forward; each lent flow is counted once,
// by the borrower, and the socket by neither.
func TestBorrowedUplink(t *testing.T) {
	p := newPair(t)
	echo(t, p.inet, echoAP)
	echo(t, p.inet, remoteWG)
	lender := start(t, p.lender, p.lenderConfig())
	borrower := start(t, p.borrower, p.borrowerConfig())

	healthy := func(t *testing.T, names ...string) {
		t.Helper()
		if err := borrower.SetHealthy(names); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("lan-host-to-internet", func(t *testing.T) {
		healthy(t, "lender-wan0")
		f := dial(t, p.host, netip.AddrPort{}, "", echoAP)
		ap, err := f.askUntil(time.Now().Add(2 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if ap.Addr() != lenderPublic.Addr() {
			t.Errorf("the Internet host saw the LAN host as %v, want the lender's %v", ap, lenderPublic.Addr())
		}
	})

	t.Run("wireguard-socket-out", func(t *testing.T) {
		// Bound to the LAN address and pinned to the LAN, as the
		// multipath bind's socket for a borrowed uplink. It takes the
		// borrowed uplink also when that is not among the healthy ones
		// (the prober must see it come back).
		healthy(t, "wan0")
		f := dial(t, p.borrower, borrowerWG, "lan0", remoteWG)
		ap, err := f.askUntil(time.Now().Add(2 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if ap != lenderPublic {
			t.Errorf("the remote saw the socket as %v, want the lender's public %v", ap, lenderPublic)
		}
	})

	t.Run("wireguard-socket-in", func(t *testing.T) {
		// A remote that writes first to the public port: forwarded to the
		// socket, which answers through the same forward.
		in := listenUDP(t, p.borrower, borrowerWG, "lan0")
		remote := dial(t, p.inet, remoteWG2, "", lenderPublic)
		go func() {
			buf := make([]byte, 1500)
			for {
				n, from, err := in.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				if from != remoteWG2 {
					copy(buf, "wrong!")
				}
				in.WriteToUDPAddrPort(buf[:n], from)
			}
		}()
		msg := []byte("hello from the remote peer")
		deadline := time.Now().Add(2 * time.Second)
		for {
			remote.c.Write(msg)
			remote.c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			n, err := remote.c.Read(remote.buf)
			if err == nil {
				if got := string(remote.buf[:n]); got != string(msg) {
					t.Fatalf("the socket answered %q (it saw another source than %v)", got, remoteWG2)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no answer through %v: %v", lenderPublic, err)
			}
		}
	})

	t.Run("counted-once", func(t *testing.T) {
		healthy(t, "lender-wan0")
		b0, _ := borrower.ReadCounters()
		l0, _ := lender.ReadCounters()
		f := dial(t, p.host, netip.AddrPort{}, "", echoAP)
		if _, err := f.askUntil(time.Now().Add(2 * time.Second)); err != nil {
			t.Fatal(err)
		}
		var want uint64 = 64 + 28
		const n = 200
		for range n {
			if _, err := f.ask(1000, 2*time.Second); err != nil {
				t.Fatal(err)
			}
			want += 1000 + 28
		}
		sock := dial(t, p.borrower, borrowerWG, "lan0", remoteWG)
		for range 50 {
			if _, err := sock.ask(500, 2*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		b1, _ := borrower.ReadCounters()
		l1, _ := lender.ReadCounters()
		t.Logf("borrower counted tx %d rx %d bytes, lender tx %d rx %d; the host sent and got %d",
			b1.TxBytes-b0.TxBytes, b1.RxBytes-b0.RxBytes, l1.TxBytes-l0.TxBytes, l1.RxBytes-l0.RxBytes, want)
		if b1.TxBytes-b0.TxBytes != want || b1.RxBytes-b0.RxBytes != want {
			t.Errorf("the borrower counted tx %d, rx %d bytes, want %d each", b1.TxBytes-b0.TxBytes, b1.RxBytes-b0.RxBytes, want)
		}
		if l1 != l0 {
			t.Errorf("the lender counted lent traffic: %+v -> %+v", l0, l1)
		}
	})
}
