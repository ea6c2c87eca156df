package bind

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/causeway-net/causeway/dataplane/bind/bindtest"
	"github.com/causeway-net/causeway/probes"
)

var (
	overlayA = netip.MustParseAddr("10.0.0.1")
	overlayB = netip.MustParseAddr("10.0.0.2")
)

func mustNew(t testing.TB, opts Options) *Bind {
	t.Helper()
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// setup is node A at a site with the multipath bind on two uplinks, and
// node B at a remote with the multipath bind on its one endpoint address.
type setup struct {
	topo         *bindtest.TwoUplinks
	site, remote *Bind
	a, b         *node
	remoteEP     netip.AddrPort    // B's endpoint
	paths        [2]PathID         // the site's paths to B, one per uplink
	siteEP       [2]netip.AddrPort // A's endpoints, one per uplink
	peerB        *Peer             // B in the site's bind
	peerA        *Peer             // A in the remote's bind
	siteLog      *wgLog            // what A's WireGuard logs
}

type setupOptions struct {
	siteKey   bool // give the site's bind the private key
	sitePaths bool // configure the site's paths to B and B's endpoint; else B is NAT-ed
	// remotePath, if >= 0, is the site uplink B always sends to (a path the
	// remote's bind holds); -1 lets B follow WireGuard's roaming.
	remotePath               int
	siteProbes, remoteProbes ProbeHandler
}

func newSetup(t *testing.T, o setupOptions) *setup {
	t.Helper()
	bindtest.Require(t)
	s := &setup{topo: bindtest.NewTwoUplinks(t), siteLog: &wgLog{}}
	s.remoteEP = netip.AddrPortFrom(s.topo.RemoteAddr, wgPort)
	for i := range 2 {
		s.paths[i] = PathID{Uplink: i, Remote: s.remoteEP}
		s.siteEP[i] = netip.AddrPortFrom(s.topo.SiteAddr[i], wgPort)
	}
	keyA, keyB := newKey(t), newKey(t)
	siteOpts := Options{
		Uplinks: []Uplink{
			{Name: "wan1", Interface: s.topo.SiteIf[0], Addr: s.topo.SiteAddr[0]},
			{Name: "wan2", Interface: s.topo.SiteIf[1], Addr: s.topo.SiteAddr[1]},
		},
		Probes: o.siteProbes,
	}
	if o.siteKey {
		siteOpts.PrivateKey = keyA
	}
	s.site = mustNew(t, siteOpts)
	s.remote = mustNew(t, Options{
		Uplinks:    []Uplink{{Name: "lo", Addr: s.topo.RemoteAddr}},
		PrivateKey: keyB,
		Probes:     o.remoteProbes,
	})

	s.peerB = s.site.AddPeer(keyB.Public())
	if o.sitePaths {
		if err := s.site.SetPaths(s.peerB, s.paths[:]); err != nil {
			t.Fatal(err)
		}
	}
	s.peerA = s.remote.AddPeer(keyA.Public())
	if o.remotePath >= 0 {
		if err := s.remote.SetPaths(s.peerA, []PathID{{Uplink: 0, Remote: s.siteEP[o.remotePath]}}); err != nil {
			t.Fatal(err)
		}
	}

	s.a = startNode(t, s.topo.Site, s.site, keyA, overlayA, s.siteLog.logger("A: "))
	s.b = startNode(t, s.topo.Remote, s.remote, keyB, overlayB, nil)
	var epB, epA netip.AddrPort
	if o.sitePaths {
		epB = s.remoteEP
	}
	if o.remotePath >= 0 {
		epA = s.siteEP[o.remotePath]
	}
	s.a.addPeer(t, s.b, epB)
	s.b.addPeer(t, s.a, epA)
	return s
}

func TestSwitchActivePath(t *testing.T) {
	leakCheck(t)
	s := newSetup(t, setupOptions{siteKey: true, sitePaths: true, remotePath: -1})

	exchange(t, s.a, s.b, 0, 50)
	exchange(t, s.b, s.a, 0, 50)
	if got, ok := s.peerB.Active(); !ok || got != s.paths[0] {
		t.Fatalf("active path %v, want the first one", got)
	}
	c0, c1 := s.site.Counters(0), s.site.Counters(1)
	if c0.TxPackets < 50 || c0.RxPackets < 50 || c1.TxPackets != 0 || c1.RxPackets != 0 {
		t.Fatalf("before the switch: uplink 0 %+v, uplink 1 %+v", c0, c1)
	}

	// Stream; a third of the way through, switch to uplink 2 and cut
	// uplink 1 at once. Nothing may be lost: every packet after the swap
	// leaves on the new path, and the ones before it were delivered.
	const n = 600
	var switchedAt time.Time
	got := stream(t, s.a, s.b, 1000, n, 100*time.Microsecond, func(i int) {
		if i == n/3 {
			if err := s.site.SetActive(s.peerB, s.paths[1]); err != nil {
				t.Error(err)
			}
			switchedAt = time.Now()
			s.topo.Cut(0, true)
		}
	})
	if lost := n - len(got); lost > 0 {
		t.Errorf("%d of %d packets lost across the switch", lost, n)
	}
	t.Logf("switched at %s; %d packets delivered", switchedAt.Format(time.StampMicro), len(got))
	// Counted once sendmmsg returns, which may be after the delivery.
	waitFor(t, "uplink 2's counters", func() bool { return s.site.Counters(1).TxPackets-c1.TxPackets >= n-n/3 })
	d0, d1 := s.site.Counters(0), s.site.Counters(1)
	if sent := d0.TxPackets - c0.TxPackets; sent > n/3 {
		t.Errorf("uplink 1 sent %d packets, want <= %d (only those before the switch)", sent, n/3)
	}

	// B follows (it roamed to A's new source) and answers on uplink 2.
	exchange(t, s.b, s.a, 5000, 50)
	if rx := s.site.Counters(1).RxPackets - d1.RxPackets; rx < 50 {
		t.Errorf("uplink 2 received %d packets from B, want >= 50", rx)
	}

	// And back, with uplink 1 restored, in one step.
	s.topo.Cut(0, false)
	if err := s.site.SetActive(s.peerB, s.paths[0]); err != nil {
		t.Fatal(err)
	}
	e1 := s.site.Counters(1)
	exchange(t, s.a, s.b, 9000, 50)
	if s.site.Counters(1).TxPackets != e1.TxPackets {
		t.Error("uplink 2 still carries traffic after switching back")
	}
	if err := s.site.SetActive(s.peerB, PathID{Uplink: 1, Remote: netip.MustParseAddrPort("198.19.9.9:1")}); !errors.Is(err, ErrUnknownPath) {
		t.Errorf("SetActive to a path of no peer: %v", err)
	}
}

func TestRoamingKeepsChosenPath(t *testing.T) {
	leakCheck(t)
	// B always sends to A's second uplink; A's chosen path is the first.
	// WireGuard at A authenticates B on path 2 and roams there; the bind
	// must keep A's traffic on path 1.
	s := newSetup(t, setupOptions{siteKey: true, sitePaths: true, remotePath: 1})
	exchange(t, s.b, s.a, 0, 50)
	exchange(t, s.a, s.b, 0, 50)
	exchange(t, s.b, s.a, 100, 50)
	exchange(t, s.a, s.b, 100, 50)

	if got, _ := s.peerB.Roamed(); got != s.paths[1] {
		t.Errorf("Roamed = %v, want %v (where B's datagrams come in)", got, s.paths[1])
	}
	if got, _ := s.peerB.Active(); got != s.paths[0] {
		t.Errorf("Active = %v, want %v", got, s.paths[0])
	}
	c0, c1 := s.site.Counters(0), s.site.Counters(1)
	if c1.TxPackets != 0 || c0.TxPackets < 100 {
		t.Errorf("A sent %d packets on uplink 1 and %d on uplink 2; want all on uplink 1", c0.TxPackets, c1.TxPackets)
	}
	if c1.RxPackets < 100 || c0.RxPackets != 0 {
		t.Errorf("A received %d packets on uplink 1 and %d on uplink 2; want all on uplink 2", c0.RxPackets, c1.RxPackets)
	}
	if n := len(s.peerB.Learned()); n != 0 {
		t.Errorf("configured paths were learned: %v", s.peerB.Learned())
	}

	// A forged transport message with B's session index from a new source
	// is attributed to B, but WireGuard rejects it, so nothing moves.
	s.site.index.mu.Lock()
	var idx uint32
	for i, p := range s.site.index.byIndex {
		if p == s.peerB {
			idx = i
		}
	}
	s.site.index.mu.Unlock()
	forged := make([]byte, 64)
	forged[0] = msgTransport
	forged[4], forged[5], forged[6], forged[7] = byte(idx), byte(idx>>8), byte(idx>>16), byte(idx>>24)
	var fromEP netip.AddrPort
	s.topo.Remote.MustDo(func() error {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.topo.RemoteAddr, 0)))
		if err != nil {
			return err
		}
		defer c.Close()
		fromEP = c.LocalAddr().(*net.UDPAddr).AddrPort()
		_, err = c.WriteToUDPAddrPort(forged, s.siteEP[0])
		return err
	})
	forgedPath := PathID{Uplink: 0, Remote: fromEP}
	waitFor(t, "the forged datagram", func() bool {
		for _, l := range s.peerB.Learned() {
			if l == forgedPath {
				return true
			}
		}
		return false
	})
	exchange(t, s.a, s.b, 200, 20)
	if got, _ := s.peerB.Roamed(); got != s.paths[1] {
		t.Errorf("after a forged datagram Roamed = %v", got)
	}
	if e := s.site.table.Load().byUplink[0][fromEP]; e != nil {
		t.Error("an unauthenticated source entered the receive table")
	}
}

func TestNATedPeer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		siteKey bool
	}{{"identified", true}, {"anonymous", false}} {
		t.Run(tc.name, func(t *testing.T) {
			leakCheck(t)
			// A knows no path to B and no endpoint; B contacts A's second
			// uplink. A must answer on the path B came in on.
			s := newSetup(t, setupOptions{siteKey: tc.siteKey, sitePaths: false, remotePath: 1})
			exchange(t, s.b, s.a, 0, 50)
			exchange(t, s.a, s.b, 0, 50)
			c0, c1 := s.site.Counters(0), s.site.Counters(1)
			if c0.TxPackets != 0 || c1.TxPackets < 50 {
				t.Errorf("A sent %d packets on uplink 1 and %d on uplink 2; want all on uplink 2", c0.TxPackets, c1.TxPackets)
			}
			if _, ok := s.peerB.Active(); ok {
				t.Error("a peer without configured paths has an active path")
			}
			got, ok := s.peerB.Roamed()
			if !tc.siteKey {
				if ok {
					t.Errorf("anonymous source attributed to B: %v", got)
				}
				return
			}
			if !ok || got != s.paths[1] {
				t.Errorf("Roamed = %v, %v; want %v", got, ok, s.paths[1])
			}
			if l := s.peerB.Learned(); len(l) != 1 || l[0] != s.paths[1] {
				t.Errorf("Learned = %v", l)
			}
			if e := s.site.table.Load().byUplink[1][s.remoteEP]; e == nil || e.peer != s.peerB {
				t.Error("the confirmed path is not in the receive table")
			}
			// Configuring the learned path keeps the traffic where it is.
			if err := s.site.SetPaths(s.peerB, []PathID{s.paths[1]}); err != nil {
				t.Fatal(err)
			}
			exchange(t, s.a, s.b, 100, 50)
			if s.site.Counters(0).TxPackets != 0 {
				t.Error("traffic moved to uplink 1")
			}
		})
	}
}

func TestProbesBypassWireGuard(t *testing.T) {
	leakCheck(t)
	key, err := probes.GenerateKey(7)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := probes.NewKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	refl := probes.NewReflector(keys)
	type seen struct {
		pkt  probes.Packet
		path PathID
	}
	var mu sync.Mutex
	var atSite []PathID
	replies := make(chan seen, 16)
	s := newSetup(t, setupOptions{
		sitePaths:  true,
		remotePath: -1,
		siteProbes: ProbeFunc(func(pkt []byte, path PathID) []byte {
			mu.Lock()
			atSite = append(atSite, path)
			mu.Unlock()
			reply, _, _ := refl.Handle(pkt) // refusals are counted
			return reply
		}),
		remoteProbes: ProbeFunc(func(pkt []byte, path PathID) []byte {
			p, err := probes.Parse(pkt, keys)
			if err != nil {
				t.Errorf("remote: %v", err)
			}
			replies <- seen{p, path}
			return nil
		}),
	})
	exchange(t, s.a, s.b, 0, 10) // WireGuard runs alongside
	before := [2]UplinkCounters{s.site.Counters(0), s.site.Counters(1)}

	for i := range 2 {
		req, err := probes.Marshal(nil, probes.Packet{Kind: probes.KindRequest, Path: probes.PathID(i + 1), Seq: 1, Timestamp: 42}, keys)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.remote.SendProbe(PathID{Uplink: 0, Remote: s.siteEP[i]}, req); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-replies:
			if r.pkt.Kind != probes.KindReply || r.pkt.Path != probes.PathID(i+1) {
				t.Errorf("reply %+v", r.pkt)
			}
			if want := (PathID{Uplink: 0, Remote: s.siteEP[i]}); r.path != want {
				t.Errorf("reply came in on %v, want %v", r.path, want)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("no reply to the probe on uplink %d", i+1)
		}
	}
	mu.Lock()
	if len(atSite) != 2 || atSite[0] != s.paths[0] || atSite[1] != s.paths[1] {
		t.Errorf("site saw probes on %v, want %v", atSite, s.paths)
	}
	mu.Unlock()
	for i := range 2 {
		waitFor(t, "the probe counters", func() bool { return s.site.Counters(i).ProbesTx == before[i].ProbesTx+1 })
		c := s.site.Counters(i)
		if c.ProbesRx-before[i].ProbesRx != 1 || c.RxPackets != before[i].RxPackets {
			t.Errorf("uplink %d counters: %+v, before %+v", i+1, c, before[i])
		}
	}
	if n := s.siteLog.count("unknown type"); n != 0 {
		t.Errorf("WireGuard saw %d probes", n)
	}
	// Probes from an unknown source, and with no handler, are still
	// never WireGuard's.
	s.topo.Remote.MustDo(func() error {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.topo.RemoteAddr, 0)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.WriteToUDPAddrPort([]byte{0xC5, 'C', 'W', 'P', 9, 9, 9, 9}, s.siteEP[0])
		return err
	})
	waitFor(t, "the stray probe", func() bool { return refl.Counters().Malformed == 1 })
	exchange(t, s.a, s.b, 100, 10)
	if n := s.siteLog.count("unknown type"); n != 0 {
		t.Errorf("WireGuard saw %d probes", n)
	}
}

// TestBatchRoundTrip sends batches straight through two binds, without
// WireGuard, to check GSO coalescing and GRO splitting byte for byte.
func TestBatchRoundTrip(t *testing.T) {
	leakCheck(t)
	bindtest.Require(t)
	pair := bindtest.NewPair(t)
	a := mustNew(t, Options{Uplinks: []Uplink{{Name: "a", Interface: "a", Addr: pair.AddrA}}})
	b := mustNew(t, Options{Uplinks: []Uplink{{Name: "b", Interface: "b", Addr: pair.AddrB}}})
	var fnsB []conn.ReceiveFunc
	pair.A.MustDo(func() error { _, _, err := a.Open(wgPort); return err })
	pair.B.MustDo(func() error { var err error; fnsB, _, err = b.Open(wgPort); return err })
	t.Cleanup(func() { a.Close(); b.Close() })

	dst, err := a.ParseEndpoint(netip.AddrPortFrom(pair.AddrB, wgPort).String())
	if err != nil {
		t.Fatal(err)
	}
	// Equal sizes (one GSO run), a short tail, mixed sizes, and more than
	// one run's worth of segments.
	for _, sizes := range [][]int{
		repeat(1452, 128),
		append(repeat(1200, 10), 300),
		{100, 1452, 1452, 60, 1452, 1000, 1000, 1000, 1},
		repeat(148, 1),
	} {
		bufs := make([][]byte, len(sizes))
		for i, n := range sizes {
			bufs[i] = make([]byte, n)
			for j := range bufs[i] {
				bufs[i][j] = byte(i*7 + j)
			}
			bufs[i][0] = msgTransport // not a probe
		}
		if err := a.Send(bufs, dst); err != nil {
			t.Fatal(err)
		}
		rbufs := make([][]byte, conn.IdealBatchSize)
		for i := range rbufs {
			rbufs[i] = make([]byte, 1<<16)
		}
		rsizes := make([]int, conn.IdealBatchSize)
		eps := make([]conn.Endpoint, conn.IdealBatchSize)
		var got [][]byte
		for len(got) < len(bufs) {
			n, err := fnsB[0](rbufs, rsizes, eps)
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				if rsizes[i] == 0 {
					continue
				}
				got = append(got, bytes.Clone(rbufs[i][:rsizes[i]]))
				if ep := eps[i].(*Endpoint); ep.Path() != (PathID{Uplink: 0, Remote: netip.AddrPortFrom(pair.AddrA, wgPort)}) {
					t.Errorf("datagram %d from %v", i, ep.Path())
				}
			}
		}
		for i := range bufs {
			if !bytes.Equal(got[i], bufs[i]) {
				t.Fatalf("sizes %v: datagram %d differs (%d bytes, want %d)", sizes, i, len(got[i]), len(bufs[i]))
			}
		}
	}
	if c := a.Counters(0); c.TxPackets != 128+11+9+1 {
		t.Errorf("tx counters %+v", c)
	}
	t.Logf("GSO %v, GRO %v", a.state.Load().socks[0].txOffload.Load(), b.state.Load().socks[0].rxOffload)
}

func repeat(n, count int) []int {
	s := make([]int, count)
	for i := range s {
		s[i] = n
	}
	return s
}

func TestCloseUnblocksReceive(t *testing.T) {
	leakCheck(t)
	bindtest.Require(t)
	topo := bindtest.NewTwoUplinks(t)
	b := mustNew(t, Options{Uplinks: []Uplink{
		{Name: "wan1", Interface: topo.SiteIf[0], Addr: topo.SiteAddr[0]},
		{Name: "wan2", Interface: topo.SiteIf[1]}, // any address on the interface
	}})
	for round := range 2 {
		var fns []conn.ReceiveFunc
		var port uint16
		topo.Site.MustDo(func() error {
			var err error
			fns, port, err = b.Open(0)
			return err
		})
		if port == 0 || len(fns) != 2 {
			t.Fatalf("Open: port %d, %d fns", port, len(fns))
		}
		if _, _, err := b.Open(0); !errors.Is(err, conn.ErrBindAlreadyOpen) {
			t.Errorf("second Open: %v", err)
		}
		if la, _ := b.LocalAddr(1); la.Port() != port {
			t.Errorf("uplink 2 on %v, want port %d", la, port)
		}
		errs := make(chan error, len(fns))
		for _, fn := range fns {
			go func() {
				bufs := [][]byte{make([]byte, 1500)}
				_, err := fn(bufs, make([]int, 1), make([]conn.Endpoint, 1))
				errs <- err
			}()
		}
		time.Sleep(50 * time.Millisecond) // let them block
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		for range fns {
			select {
			case err := <-errs:
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("round %d: pending receive returned %v", round, err)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("round %d: a receive function did not return after Close", round)
			}
		}
		for _, fn := range fns {
			if _, err := fn([][]byte{make([]byte, 1500)}, make([]int, 1), make([]conn.Endpoint, 1)); !errors.Is(err, net.ErrClosed) {
				t.Errorf("receive after Close: %v", err)
			}
		}
		ep, _ := b.ParseEndpoint("198.19.0.2:51820")
		if err := b.Send([][]byte{{1, 0, 0, 0}}, ep); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Send after Close: %v", err)
		}
		if err := b.SendProbe(PathID{Remote: netip.MustParseAddrPort("198.19.0.2:51820")}, []byte{1}); !errors.Is(err, net.ErrClosed) {
			t.Errorf("SendProbe after Close: %v", err)
		}
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestHotPathAllocs checks that Send and a receive function allocate
// nothing per datagram (nor per batch) on a configured path.
func TestHotPathAllocs(t *testing.T) {
	leakCheck(t)
	bindtest.Require(t)
	pair := bindtest.NewPair(t)
	a := mustNew(t, Options{Uplinks: []Uplink{{Name: "a", Interface: "a", Addr: pair.AddrA}}})
	b := mustNew(t, Options{Uplinks: []Uplink{{Name: "b", Interface: "b", Addr: pair.AddrB}}})
	keyA, keyB := newKey(t), newKey(t)
	pb, pa := a.AddPeer(keyB.Public()), b.AddPeer(keyA.Public())
	if err := a.SetPaths(pb, []PathID{{Uplink: 0, Remote: netip.AddrPortFrom(pair.AddrB, wgPort)}}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPaths(pa, []PathID{{Uplink: 0, Remote: netip.AddrPortFrom(pair.AddrA, wgPort)}}); err != nil {
		t.Fatal(err)
	}
	var fnsB []conn.ReceiveFunc
	pair.A.MustDo(func() error { _, _, err := a.Open(wgPort); return err })
	pair.B.MustDo(func() error { var err error; fnsB, _, err = b.Open(wgPort); return err })
	t.Cleanup(func() { a.Close(); b.Close() })
	dst, _ := a.ParseEndpoint(netip.AddrPortFrom(pair.AddrB, wgPort).String())
	if dst.(*Endpoint).Peer() != pb {
		t.Fatal("ParseEndpoint did not return the peer's endpoint")
	}

	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, 1452)
		bufs[i][0] = msgTransport
	}
	rbufs := make([][]byte, conn.IdealBatchSize)
	for i := range rbufs {
		rbufs[i] = make([]byte, 1<<16)
	}
	rsizes := make([]int, conn.IdealBatchSize)
	eps := make([]conn.Endpoint, conn.IdealBatchSize)
	roundTrip := func() {
		if err := a.Send(bufs, dst); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(bufs); {
			n, err := fnsB[0](rbufs, rsizes, eps)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	}
	roundTrip()
	if allocs := testing.AllocsPerRun(200, roundTrip); allocs != 0 {
		t.Errorf("%v allocations per Send and receive of %d datagrams", allocs, len(bufs))
	}
	if eps[0].(*Endpoint).Peer() != pa {
		t.Error("received datagrams not attributed to the peer")
	}
}
