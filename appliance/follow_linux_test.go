package appliance

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/probes"
)

// TestPairFollow runs a remote appliance with two peers that are the pair
// of one site, hq-a (the controller's choice) and hq-b, both announcing
// 10.50.0.0/24, each a real appliance process in its own namespace:
//
//	remote r1 198.18.31.1 ── a1 198.18.31.2  hq-a  10.50.0.1
//	remote r2 198.18.32.1 ── b1 198.18.32.2  hq-b  10.50.0.1
//
// A stream of one datagram every 10 ms goes from the remote's overlay
// address to 10.50.0.1, which each member has on its LAN. hq-a's process
// is killed: the remote must move the prefix to hq-b within 1 s, by its
// probes alone. hq-a is started again: the prefix must come back to it,
// and then stay (no flapping).
func TestPairFollow(t *testing.T) {
	requireRoot(t)
	nsR, nsA, nsB := newNetns(t), newNetns(t), newNetns(t)
	for _, l := range []struct{ ns, remote, member, net string }{{nsA, "r1", "a1", "31"}, {nsB, "r2", "b1", "32"}} {
		run(t, "ip", "-n", nsR, "link", "add", l.remote, "type", "veth", "peer", "name", l.member, "netns", l.ns)
		run(t, "ip", "-n", nsR, "addr", "add", "198.18."+l.net+".1/24", "dev", l.remote)
		run(t, "ip", "-n", l.ns, "addr", "add", "198.18."+l.net+".2/24", "dev", l.member)
		run(t, "ip", "-n", nsR, "link", "set", l.remote, "up")
		run(t, "ip", "-n", l.ns, "link", "set", l.member, "up")
		// The address on the member's LAN the stream goes to (the
		// kernel here has no dummy links: the loopback holds it).
		run(t, "ip", "-n", l.ns, "addr", "add", "10.50.0.1/32", "dev", "lo")
	}
	for _, ns := range []string{nsR, nsA, nsB} {
		// As in TestPathFailover: the cross paths (r1 to hq-b, r2 to
		// hq-a) are dead, not delivered through the wrong link.
		run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.rp_filter=2")
	}

	key, err := probes.GenerateKey(1)
	if err != nil {
		t.Fatal(err)
	}
	r := siteConfig(t, "remote-1", "100.64.30.1", "10.60.0.0/24")
	a := siteConfig(t, "hq-a", "100.64.30.2", "10.50.0.0/24")
	b := siteConfig(t, "hq-b", "100.64.30.3", "10.50.0.0/24")
	r.Uplinks = []Uplink{{Name: "r1", Interface: "r1", Addr: netip.MustParseAddr("198.18.31.1")},
		{Name: "r2", Interface: "r2", Addr: netip.MustParseAddr("198.18.32.1")}}
	a.Uplinks = []Uplink{{Name: "a1", Interface: "a1", Addr: netip.MustParseAddr("198.18.31.2")}}
	b.Uplinks = []Uplink{{Name: "b1", Interface: "b1", Addr: netip.MustParseAddr("198.18.32.2")}}
	keys := map[string]*Config{"remote-1": r, "hq-a": a, "hq-b": b}
	pub := map[string]PeerConfig{}
	for name, c := range keys {
		c.ProbeKey, c.ProbeInterval = key, DefaultProbeInterval
		k, err := LoadOrCreateKey(c.StateDir)
		if err != nil {
			t.Fatal(err)
		}
		pub[name] = PeerConfig{Name: name, PublicKey: k.Public(), OverlayAddr: c.OverlayAddr, Prefixes: c.LANPrefixes}
	}
	ep := func(s string) []netip.AddrPort { return []netip.AddrPort{netip.MustParseAddrPort(s)} }
	ma, mb := pub["hq-a"], pub["hq-b"]
	ma.Endpoints, ma.Pair = ep("198.18.31.2:51820"), &PairMember{Site: "st_hq", Priority: 100, Active: true, Term: 1}
	mb.Endpoints, mb.Pair = ep("198.18.32.2:51820"), &PairMember{Site: "st_hq", Priority: 100, Term: 1}
	r.Peers = []PeerConfig{ma, mb}
	toA, toB := pub["remote-1"], pub["remote-1"]
	toA.Endpoints, toB.Endpoints = ep("198.18.31.1:51820"), ep("198.18.32.1:51820")
	a.Peers, b.Peers = []PeerConfig{toA}, []PeerConfig{toB}

	t.Setenv(childLogEnv, "1")
	cr, err := startChild(t, nsR, r)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := startChild(t, nsA, a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := startChild(t, nsB, b)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cr.stop(t)
		cb.stop(t)
		if ca.cmd.ProcessState == nil {
			ca.stop(t)
		}
		for _, line := range strings.Split(cr.stderr.String(), "\n") {
			if strings.Contains(line, `"component":"pair-follow"`) || strings.Contains(line, `"msg":"path state"`) {
				t.Log("remote-1: " + line)
			}
		}
	}()

	holder := func(m map[string]float64, peer string) bool {
		return m[fmt.Sprintf(`causeway_pair_follow_active{peer=%q}`, peer)] == 1
	}
	switches := func(m map[string]float64, reason string) float64 {
		return m[fmt.Sprintf(`causeway_pair_follow_switches_total{reason=%q}`, reason)]
	}
	allSwitches := func(m map[string]float64) float64 {
		var n float64
		for _, reason := range followReasons {
			n += switches(m, reason)
		}
		return n
	}
	var m map[string]float64
	if !waitFor(5*time.Second, func() bool {
		m = scrape(t, nsR)
		return m[pathSeries("causeway_path_up", "hq-a", "r1", "198.18.31.2:51820")] == 1 &&
			m[pathSeries("causeway_path_up", "hq-b", "r2", "198.18.32.2:51820")] == 1
	}) {
		t.Fatalf("paths to the pair not up:\n%v", m)
	}
	if !holder(m, "hq-a") || holder(m, "hq-b") || allSwitches(m) != 0 {
		t.Fatalf("want the prefix on hq-a, no switch yet:\n%v", m)
	}
	if routes := run(t, "ip", "-n", nsR, "route"); !strings.Contains(routes, "10.50.0.0/24 dev cw0") {
		t.Fatalf("no route to the pair's prefix:\n%s", routes)
	}

	// The stream, and a receiver on each member's LAN address.
	type arrival struct {
		seq uint64
		at  time.Time
	}
	var (
		mu       sync.Mutex
		got      = map[string][]arrival{}
		readers  sync.WaitGroup
		sender   sync.WaitGroup
		stop     = make(chan struct{})
		send     net.PacketConn
		receiver = map[string]net.PacketConn{}
	)
	listen := func(member, ns string) {
		inNetns(t, ns, func() (err error) {
			receiver[member], err = net.ListenPacket("udp4", "10.50.0.1:7000")
			return
		})
		c := receiver[member]
		readers.Add(1)
		go func() {
			defer readers.Done()
			buf := make([]byte, 64)
			for {
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				if n >= 8 {
					mu.Lock()
					got[member] = append(got[member], arrival{binary.BigEndian.Uint64(buf), time.Now()})
					mu.Unlock()
				}
			}
		}()
	}
	listen("hq-a", nsA)
	listen("hq-b", nsB)
	defer func() {
		for _, c := range receiver {
			c.Close()
		}
		readers.Wait()
	}()
	inNetns(t, nsR, func() (err error) { send, err = net.ListenPacket("udp4", "100.64.30.1:0"); return })
	defer send.Close()
	sender.Add(1)
	go func() {
		defer sender.Done()
		dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("10.50.0.1:7000"))
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		buf := make([]byte, 64)
		for seq := uint64(1); ; seq++ {
			binary.BigEndian.PutUint64(buf, seq)
			if _, err := send.WriteTo(buf, dst); errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		sender.Wait()
	}()
	// first returns the first arrival at member after since.
	first := func(member string, since time.Time) (arrival, bool) {
		mu.Lock()
		defer mu.Unlock()
		for _, a := range got[member] {
			if a.at.After(since) {
				return a, true
			}
		}
		return arrival{}, false
	}
	last := func(member string, before time.Time) (arrival, bool) {
		mu.Lock()
		defer mu.Unlock()
		var out arrival
		for _, a := range got[member] {
			if a.at.Before(before) {
				out = a
			}
		}
		return out, !out.at.IsZero()
	}
	time.Sleep(time.Second)
	if _, ok := first("hq-a", time.Time{}); !ok {
		t.Fatal("the stream does not reach hq-a")
	}
	if _, ok := first("hq-b", time.Time{}); ok {
		t.Fatal("hq-b got datagrams while hq-a holds the prefix")
	}

	// Kill hq-a's process: no goodbye, its sockets just go.
	killed := time.Now()
	if err := ca.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	ca.cmd.Wait()
	var atB arrival
	if !waitFor(5*time.Second, func() (ok bool) { atB, ok = first("hq-b", killed); return }) {
		t.Fatalf("the stream never reached hq-b after hq-a was killed:\n%v", scrape(t, nsR))
	}
	lastA, _ := last("hq-a", killed.Add(time.Second))
	moved := atB.at.Sub(killed)
	t.Logf("failover: kill -> first datagram at hq-b %v (last at hq-a %v before the kill; sequence %d -> %d)",
		moved.Round(time.Millisecond), killed.Sub(lastA.at).Round(time.Millisecond), lastA.seq, atB.seq)
	if moved > time.Second {
		t.Errorf("the prefix moved to hq-b %v after the kill, want at most 1 s", moved)
	}
	m = scrape(t, nsR)
	if !holder(m, "hq-b") || holder(m, "hq-a") || switches(m, followDown) != 1 || allSwitches(m) != 1 {
		t.Errorf("after the kill: want the prefix on hq-b after one switch (down):\n%v", m)
	}

	// hq-a comes back: once its paths are up again the prefix returns.
	ca, err = startChild(t, nsA, a)
	if err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	var backA arrival
	if !waitFor(5*time.Second, func() (ok bool) { backA, ok = first("hq-a", restarted); return }) {
		t.Fatalf("the stream never came back to hq-a:\n%v", scrape(t, nsR))
	}
	lastB, _ := last("hq-b", backA.at)
	t.Logf("return: hq-a ready -> first datagram at hq-a %v; last at hq-b %v before it (sequence %d -> %d)",
		backA.at.Sub(restarted).Round(time.Millisecond), backA.at.Sub(lastB.at).Round(time.Millisecond), lastB.seq, backA.seq)
	if d := backA.at.Sub(restarted); d > 3*time.Second {
		t.Errorf("the prefix came back to hq-a %v after it was up again, want at most 3 s", d)
	}
	// And stays there: nothing more reaches hq-b, no more switches.
	settled := time.Now()
	time.Sleep(3 * time.Second)
	m = scrape(t, nsR)
	if late, ok := first("hq-b", settled); ok {
		t.Errorf("hq-b got datagram %d after the prefix came back to hq-a", late.seq)
	}
	if !holder(m, "hq-a") || switches(m, followRecovered) != 1 || allSwitches(m) != 2 {
		t.Errorf("after the return: want the prefix on hq-a after two switches (down, recovered):\n%v", m)
	}
	close(stop)
	sender.Wait()
}
