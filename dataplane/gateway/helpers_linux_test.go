package gateway

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/causeway-net/causeway/dataplane/bind/bindtest"
)

var (
	webAddr = netip.MustParseAddr("198.19.0.10") // the Internet host
	echoAP  = netip.AddrPortFrom(webAddr, 7)
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

var defaultDst = pfx("0.0.0.0/0")

// site is a LAN host behind a gateway with two ISPs and an overlay link:
//
//	host eth0 10.10.0.10/24, 10.11.0.10/24 ── lan0 10.10.0.1/24, 10.11.0.1/24  gw
//	                                          wan1 198.18.1.2/24 ── i1 198.18.1.1/24  inet
//	                                          wan2 198.18.2.2/24 ── i2 198.18.2.1/24  (lo 198.19.0.10: the
//	                                          cw0  100.64.0.1/30 ── r0 100.64.0.2/30  remote  Internet host)
//	                                                                (lo 10.20.0.10: a remote site's host)
//
// gw's main table has a default route via each ISP (wan1 preferred) and
// 10.20.0.0/24 via cw0, standing for an overlay route. Reverse-path
// filtering is strict everywhere (conf/all 1), as on many distributions:
// the gateway must cope.
type site struct {
	host, gw, inet, remote *bindtest.Netns
}

func newSite(t *testing.T) *site {
	t.Helper()
	bindtest.Require(t)
	s := &site{host: bindtest.NewNetns(t), gw: bindtest.NewNetns(t), inet: bindtest.NewNetns(t), remote: bindtest.NewNetns(t)}
	for _, n := range []*bindtest.Netns{s.host, s.gw, s.inet, s.remote} {
		n.Sysctl("net/ipv4/conf/all/rp_filter", "1")
		n.Sysctl("net/ipv4/conf/default/rp_filter", "1")
	}
	s.inet.Sysctl("net/ipv4/conf/all/rp_filter", "0")
	bindtest.Veth(t, s.host, "eth0", pfx("10.10.0.10/24"), s.gw, "lan0", pfx("10.10.0.1/24"))
	s.host.AddAddr("eth0", pfx("10.11.0.10/24"))
	s.gw.AddAddr("lan0", pfx("10.11.0.1/24"))
	bindtest.Veth(t, s.gw, "wan1", pfx("198.18.1.2/24"), s.inet, "i1", pfx("198.18.1.1/24"))
	bindtest.Veth(t, s.gw, "wan2", pfx("198.18.2.2/24"), s.inet, "i2", pfx("198.18.2.1/24"))
	bindtest.Veth(t, s.gw, "cw0", pfx("100.64.0.1/30"), s.remote, "r0", pfx("100.64.0.2/30"))
	s.host.AddRoute(defaultDst, ip("10.10.0.1"), "eth0", 0)
	s.gw.AddRoute(defaultDst, ip("198.18.1.1"), "wan1", 100)
	s.gw.AddRoute(defaultDst, ip("198.18.2.1"), "wan2", 200)
	s.gw.AddRoute(pfx("10.20.0.0/24"), ip("100.64.0.2"), "cw0", 0)
	s.inet.AddAddr("lo", netip.PrefixFrom(webAddr, 32))
	s.remote.AddAddr("lo", pfx("10.20.0.10/32"))
	s.remote.AddRoute(pfx("10.10.0.0/15"), ip("100.64.0.1"), "r0", 0)
	return s
}

func (s *site) config() Config {
	return Config{
		LANInterface: "lan0",
		LANPrefixes:  []netip.Prefix{pfx("10.10.0.0/24"), pfx("10.11.0.0/24")},
		LANAddr:      ip("10.10.0.1"),
		Overlay:      "cw0",
		Uplinks: []Uplink{
			{Name: "wan1", Interface: "wan1", Gateway: ip("198.18.1.1")},
			{Name: "wan2", Interface: "wan2", Gateway: ip("198.18.2.1")},
		},
	}
}

// start runs New in ns and closes the gateway when the test ends.
func start(t *testing.T, ns *bindtest.Netns, cfg Config) *Gateway {
	t.Helper()
	var g *Gateway
	ns.MustDo(func() (err error) {
		g, err = New(cfg)
		return err
	})
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return g
}

// echo serves UDP on ap in ns until the test ends: each datagram goes
// back to its sender with its first 6 bytes replaced by the sender's
// address and port as seen here (so the length is kept and a client
// learns what NAT made of it). Datagrams shorter than 6 bytes are echoed
// as they are.
func echo(t *testing.T, ns *bindtest.Netns, ap netip.AddrPort) {
	t.Helper()
	var c *net.UDPConn
	ns.MustDo(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap))
		return err
	})
	var wg sync.WaitGroup
	t.Cleanup(func() { c.Close(); wg.Wait() })
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n >= 6 {
				a := from.Addr().Unmap().As4()
				copy(buf, a[:])
				binary.BigEndian.PutUint16(buf[4:], from.Port())
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	})
}

// flow is one UDP socket in a namespace, connected to an echo.
type flow struct {
	c   *net.UDPConn
	buf []byte
}

// bindToDevice is a net.ListenConfig / net.Dialer Control that pins the
// socket to dev (SO_BINDTODEVICE).
func bindToDevice(dev string) func(_, _ string, rc syscall.RawConn) error {
	return func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), dev) }); err != nil {
			return err
		}
		return serr
	}
}

// listenUDP opens an unconnected UDP socket on ap in ns, pinned to dev.
func listenUDP(t *testing.T, ns *bindtest.Netns, ap netip.AddrPort, dev string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	ns.MustDo(func() error {
		lc := net.ListenConfig{Control: bindToDevice(dev)}
		pc, err := lc.ListenPacket(context.Background(), "udp4", ap.String())
		if err != nil {
			return err
		}
		c = pc.(*net.UDPConn)
		return nil
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// dial opens a flow from ns (from src if valid, on dev if not "") to dst.
func dial(t *testing.T, ns *bindtest.Netns, src netip.AddrPort, dev string, dst netip.AddrPort) *flow {
	t.Helper()
	var c *net.UDPConn
	ns.MustDo(func() error {
		d := net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(src)}
		if !src.IsValid() {
			d.LocalAddr = nil
		}
		if dev != "" {
			d.Control = bindToDevice(dev)
		}
		conn, err := d.Dial("udp4", dst.String())
		if err != nil {
			return err
		}
		c = conn.(*net.UDPConn)
		return nil
	})
	t.Cleanup(func() { c.Close() })
	return &flow{c: c, buf: make([]byte, 65536)}
}

// ask sends size bytes and waits up to timeout for the echo; it returns
// the flow's address as the echo saw it.
func (f *flow) ask(size int, timeout time.Duration) (netip.AddrPort, error) {
	msg := make([]byte, size)
	if _, err := f.c.Write(msg); err != nil {
		return netip.AddrPort{}, err
	}
	f.c.SetReadDeadline(time.Now().Add(timeout))
	n, err := f.c.Read(f.buf)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if n != size || n < 6 {
		return netip.AddrPort{}, fmt.Errorf("echo of %d bytes for %d", n, size)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(f.buf[:4])), binary.BigEndian.Uint16(f.buf[4:])), nil
}

// askUntil repeats ask (each attempt waiting up to 100 ms) until the echo
// answers or the deadline passes.
func (f *flow) askUntil(deadline time.Time) (netip.AddrPort, error) {
	for {
		seen, err := f.ask(64, 100*time.Millisecond)
		if err == nil || time.Now().After(deadline) {
			return seen, err
		}
	}
}

// cut drops everything on inet's interface dev (both ways) while the
// link keeps its carrier, as when an ISP fails beyond the first hop; the
// returned function restores it.
func cut(t *testing.T, inet *bindtest.Netns, dev string) func() {
	t.Helper()
	table := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: "cut-" + dev}
	run := func(add bool) {
		err := inet.Do(func() error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			if !add {
				c.DelTable(table)
				return c.Flush()
			}
			c.AddTable(table)
			for _, h := range []struct {
				name string
				hook *nftables.ChainHook
				key  expr.MetaKey
			}{{"in", nftables.ChainHookPrerouting, expr.MetaKeyIIFNAME}, {"out", nftables.ChainHookOutput, expr.MetaKeyOIFNAME}} {
				ch := c.AddChain(&nftables.Chain{Name: h.name, Table: table, Type: nftables.ChainTypeFilter,
					Hooknum: h.hook, Priority: nftables.ChainPriorityRaw})
				c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: append(ifCmp(h.key, dev, true), &expr.Verdict{Kind: expr.VerdictDrop})})
			}
			return c.Flush()
		})
		if err != nil {
			t.Errorf("cutting %s (add %v): %v", dev, add, err)
		}
	}
	run(true)
	once := sync.OnceFunc(func() { run(false) })
	t.Cleanup(once)
	return once
}

// listen opens a TCP listener in ns.
func listen(t *testing.T, ns *bindtest.Netns, ap netip.AddrPort) net.Listener {
	t.Helper()
	var ln net.Listener
	ns.MustDo(func() (err error) {
		ln, err = net.Listen("tcp4", ap.String())
		return err
	})
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dialTCP connects from ns to ap.
func dialTCP(ctx context.Context, ns *bindtest.Netns, ap netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp4", ap.String())
		return err
	})
	if err != nil {
		return nil, errors.Join(errors.New("dialing "+ap.String()), err)
	}
	return c, nil
}
