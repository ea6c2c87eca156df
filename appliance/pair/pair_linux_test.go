package pair

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/dataplane/bind/bindtest"
)

// startPair starts a (priority 200) and b (100) and waits until a is
// active, b standby with a live partner, and the LAN host's ARP entry for
// the VIP names a.
func startPair(t *testing.T, l *lab, preempt bool) (a, b *memberProc) {
	t.Helper()
	a = l.start(l.config("a", 200, preempt))
	b = l.start(l.config("b", 100, preempt))
	waitFor(t, 5*time.Second, "a active and b standby", func() bool {
		sa, sb := a.state(), b.state()
		return sa.Role == RoleActive && sb.Role == RoleStandby && sb.Active == "a" && sb.Partner.Alive && sa.Partner.Alive
	})
	if !l.holds("a") || l.holds("b") {
		t.Fatalf("VIP holders: a %v, b %v", l.holds("a"), l.holds("b"))
	}
	return a, b
}

// TestStartupAndKill: exactly one active by priority, the LAN host's ARP
// entry names it; kill -9 of the active moves the VIP and the host's entry
// to the standby within a second, and a stream through the gateway has no
// gap longer than that.
func TestStartupAndKill(t *testing.T) {
	l := newLab(t)
	a, b := startPair(t, l, false)
	if s := a.state(); s.LastFailover == nil || s.LastFailover.Reason != ReasonStartup || s.Term == 0 {
		t.Fatalf("a after startup: %+v", s)
	}
	if s := b.state(); s.Term != a.state().Term || s.Partner.Name != "a" || !s.Partner.LAN || !s.Partner.WAN {
		t.Fatalf("b after startup: %+v (a's term %d)", s, a.state().Term)
	}

	st := l.startStream(5 * time.Millisecond)
	waitFor(t, 2*time.Second, "the host's ARP entry for the VIP names a", func() bool { return l.arpPointsAt("a") })
	waitFor(t, 2*time.Second, "datagrams arriving at far", func() bool { return st.received() > 20 })
	time.Sleep(300 * time.Millisecond)

	// The appliance's data path dies with its process; here the
	// namespace's kernel forwards, so the kill turns forwarding off too.
	killedAt := time.Now()
	a.kill()
	l.ns["a"].Sysctl("net/ipv4/ip_forward", "0")
	waitFor(t, 2*time.Second, "b holds the VIP", func() bool { return l.holds("b") })
	vipAfter := time.Since(killedAt)
	waitFor(t, 2*time.Second, "the host's ARP entry names b", func() bool { return l.arpPointsAt("b") })
	arpAfter := time.Since(killedAt)
	time.Sleep(300 * time.Millisecond)
	sent, lost, gap := st.result()

	s := b.state()
	if s.Role != RoleActive || s.LastFailover == nil || s.LastFailover.Reason != ReasonPartnerDead ||
		s.LastFailover.From != "a" || s.LastFailover.To != "b" || s.Partner.Alive {
		t.Fatalf("b after the kill: %+v %+v", s, s.LastFailover)
	}
	detect := s.LastFailover.At.Sub(killedAt)
	t.Logf("kill -9 of the active: b claimed after %v, VIP on b after %v, host ARP on b after %v; stream every 5 ms: %d sent, %d lost, longest gap %v",
		detect.Round(time.Millisecond), vipAfter.Round(time.Millisecond), arpAfter.Round(time.Millisecond), sent, lost, gap.Round(time.Millisecond))
	if vipAfter > time.Second || arpAfter > time.Second || gap > time.Second {
		t.Errorf("takeover too slow: VIP %v, ARP %v, gap %v (limit 1 s)", vipAfter, arpAfter, gap)
	}
	if m := b.metrics(); m.Failovers[ReasonPartnerDead] != 1 || m.GARPSent < 1 {
		t.Errorf("b metrics: %+v", m)
	}

	// The dead member's VIP was a lease: the kernel removes it.
	waitFor(t, 8*time.Second, "the killed member's VIP expires", func() bool { return !l.holds("a") })
	t.Logf("the killed member's VIP expired %v after the kill", time.Since(killedAt).Round(100*time.Millisecond))

	// a comes back (without Preempt), with a VIP left on its LAN link as a
	// crash could leave it: it removes that, hears b active within its
	// startup wait and stays standby.
	l.ns["a"].Sysctl("net/ipv4/ip_forward", "1")
	l.ns["a"].AddAddr("lan", vip)
	a = l.start(l.config("a", 200, false))
	waitFor(t, 2*time.Second, "a back as a standby", func() bool {
		s := a.state()
		return s.Partner.Alive && s.Active == "b"
	})
	time.Sleep(1500 * time.Millisecond)
	if sa, sb := a.state(), b.state(); sa.Role != RoleStandby || sa.LastFailover != nil || sb.Role != RoleActive ||
		l.holds("a") || !l.holds("b") || !sb.Partner.Member || !sa.Partner.Member {
		t.Fatalf("after a's restart: a %+v, b %+v", sa, sb)
	}
}

// TestLANFaultNoSecondActive cuts the active's LAN link while both members
// live and the WAN heartbeat flows: silently first (the port leaves the
// bridge, the link keeps its carrier), then by carrier. The VIP is never on
// both members: the silent fault moves nothing, and the active that lost its
// carrier gives the VIP up before the partner takes it.
func TestLANFaultNoSecondActive(t *testing.T) {
	l := newLab(t)
	a, b := startPair(t, l, false)
	h := l.sampleHolders(3 * time.Millisecond)

	l.attach("pa", false)
	waitFor(t, 2*time.Second, "b hears a on the WAN only", func() bool {
		p := b.state().Partner
		return p.Alive && !p.LAN && p.WAN
	})
	time.Sleep(2 * time.Second)
	sa, sb := a.state(), b.state()
	if sa.Role != RoleActive || sb.Role != RoleStandby || sb.Active != "a" || !sb.Partner.Alive || sa.Partner.LAN {
		t.Fatalf("after a silent LAN fault: a %+v, b %+v", sa, sb)
	}
	l.attach("pa", true)
	waitFor(t, 2*time.Second, "b hears a on the LAN again", func() bool { return b.state().Partner.LAN })

	cut := time.Now()
	l.lan.SetUp("pa", false)
	waitFor(t, 2*time.Second, "b active after a lost its LAN carrier", func() bool { return b.state().Role == RoleActive })
	moved := time.Since(cut)
	sa, sb = a.state(), b.state()
	if sa.Role != RoleStandby || !sa.LANDown || sa.LastFailover.Reason != ReasonLANDown ||
		sb.LastFailover.Reason != ReasonPartnerLANDown || !sb.Partner.WAN {
		t.Fatalf("after a's carrier loss: a %+v %+v, b %+v %+v", sa, sa.LastFailover, sb, sb.LastFailover)
	}
	l.lan.SetUp("pa", true)
	waitFor(t, 2*time.Second, "a's LAN back", func() bool { return !a.state().LANDown })
	time.Sleep(time.Second)
	if a.state().Role != RoleStandby || b.state().Role != RoleActive {
		t.Fatal("without preempt the role moved back")
	}
	h.finish()
	t.Logf("LAN faults: %d samples of both namespaces, %d with the VIP on both, %d on neither; carrier loss to b active: %v",
		h.samples, h.both, h.none, moved.Round(time.Millisecond))
	if h.both != 0 {
		t.Fatalf("the VIP was on both members in %d of %d samples (first at %v)", h.both, h.samples, h.first)
	}
	if h.samples < 500 {
		t.Fatalf("only %d samples", h.samples)
	}
}

// TestDrainAndFailback drains the active under a 10 ms stream (hand-over
// to b, make before break), undrains it (a, with the higher priority and
// Preempt, takes the role back after HoldDown), then closes it (hand-over
// again): not one datagram is lost.
func TestDrainAndFailback(t *testing.T) {
	l := newLab(t)
	a, b := startPair(t, l, true)
	st := l.startStream(10 * time.Millisecond)
	waitFor(t, 2*time.Second, "the host's ARP entry names a", func() bool { return l.arpPointsAt("a") })
	waitFor(t, 2*time.Second, "datagrams arriving", func() bool { return st.received() > 10 })

	drained := time.Now()
	a.call("drain on")
	waitFor(t, 2*time.Second, "b active, a standby", func() bool {
		return b.state().Role == RoleActive && a.state().Role == RoleStandby
	})
	handover := time.Since(drained)
	waitFor(t, 2*time.Second, "the host's ARP entry names b", func() bool { return l.arpPointsAt("b") })
	if l.holds("a") || !l.holds("b") {
		t.Fatal("after the drain the VIP is not on b alone")
	}
	if f := a.state().LastFailover; f.Reason != ReasonDrain || f.To != "b" {
		t.Fatalf("a's last failover: %+v", f)
	}
	if f := b.state().LastFailover; f.Reason != ReasonPartnerDrained || f.From != "a" {
		t.Fatalf("b's last failover: %+v", f)
	}
	time.Sleep(300 * time.Millisecond)

	undrained := time.Now()
	a.call("drain off")
	waitFor(t, 4*time.Second, "a active again", func() bool {
		return a.state().Role == RoleActive && b.state().Role == RoleStandby
	})
	failback := time.Since(undrained)
	if failback < time.Second {
		t.Fatalf("a preempted after %v, before the 1 s hold-down", failback)
	}
	waitFor(t, 2*time.Second, "the host's ARP entry names a", func() bool { return l.arpPointsAt("a") })
	if f := b.state().LastFailover; f.Reason != ReasonPreempt || f.To != "a" {
		t.Fatalf("b's last failover: %+v", f)
	}
	time.Sleep(300 * time.Millisecond)

	closed := time.Now()
	a.call("close")
	stopped := time.Since(closed)
	if !l.holds("b") || l.holds("a") {
		t.Fatal("after a's Close the VIP is not on b alone")
	}
	waitFor(t, 2*time.Second, "the host's ARP entry names b", func() bool { return l.arpPointsAt("b") })
	time.Sleep(300 * time.Millisecond)
	sent, lost, gap := st.result()
	t.Logf("drain hand-over %v, fail back %v after undrain (hold-down 1 s), Close with hand-over %v; 10 ms stream: %d sent, %d lost, longest gap %v",
		handover.Round(time.Millisecond), failback.Round(time.Millisecond), stopped.Round(time.Millisecond), sent, lost, gap.Round(time.Millisecond))
	if lost != 0 {
		t.Errorf("%d of %d datagrams lost", lost, sent)
	}
	mb := b.metrics()
	if mb.Failovers[ReasonPartnerDrained] != 2 || mb.Failovers[ReasonPreempt] != 1 {
		t.Errorf("b's failovers: %v", mb.Failovers)
	}
	want := fmt.Sprint([]Role{RoleStandby, RoleActive, RoleStandby, RoleActive, RoleStandby, RoleStopped})
	if got := fmt.Sprint(a.roles()); got != want {
		t.Errorf("a's OnChange roles: %s, want %s", got, want)
	}
}

// TestBadHeartbeatsDropped sends forged heartbeats (another key) claiming
// to be a, active with a huge term and priority, and garbage, to b's LAN
// and WAN sockets: b counts them as bad and nothing changes.
func TestBadHeartbeatsDropped(t *testing.T) {
	l := newLab(t)
	a, b := startPair(t, l, true)
	before := b.metrics()
	term := b.state().Term
	wrong := macKey(deriveKey([]byte("not the pair's key at all......"), "heartbeat v1"))
	forge := func(ch Channel, seq uint64) []byte {
		h := heartbeat{Channel: ch, Role: RoleActive, Reason: ReasonPreempt, Priority: 65535, Term: 1 << 40,
			Boot: ^uint64(0), Seq: seq, Name: "a"}
		return appendHeartbeat(nil, &h, &wrong)
	}
	send := func(from *bindtest.Netns, to netip.AddrPort, ch Channel, n int) {
		var c *net.UDPConn
		from.MustDo(func() (err error) {
			c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
			return err
		})
		defer c.Close()
		for i := range n {
			c.Write(forge(ch, uint64(i+1)))
			c.Write([]byte("\xc6CWH garbage"))
			time.Sleep(time.Millisecond)
		}
	}
	send(l.host, netip.AddrPortFrom(members["b"].lan, DefaultHeartbeatPort), ChannelLAN, 50)
	send(l.far, netip.AddrPortFrom(members["b"].wan, DefaultHeartbeatPort), ChannelWAN, 30)
	waitFor(t, 2*time.Second, "b counted the bad datagrams", func() bool {
		m := b.metrics()
		return m.LAN.Bad-before.LAN.Bad >= 100 && m.WAN.Bad-before.WAN.Bad >= 60
	})
	time.Sleep(200 * time.Millisecond)
	m, s := b.metrics(), b.state()
	t.Logf("b: LAN %+v, WAN %+v", m.LAN, m.WAN)
	if m.LAN.Bad-before.LAN.Bad != 100 || m.WAN.Bad-before.WAN.Bad != 60 {
		t.Errorf("bad counters moved by LAN %d, WAN %d; want 100 and 60", m.LAN.Bad-before.LAN.Bad, m.WAN.Bad-before.WAN.Bad)
	}
	if s.Role != RoleStandby || s.Term != term || s.Partner.Priority != 200 || s.Active != "a" || a.state().Role != RoleActive {
		t.Errorf("forged heartbeats changed the pair: b %+v", s)
	}
	if m.LAN.Received == 0 || m.WAN.Received == 0 || m.LAN.Sent == 0 || m.WAN.Sent == 0 {
		t.Errorf("heartbeat counters: %+v %+v", m.LAN, m.WAN)
	}
}

// TestSplitHeals partitions the members on both channels: b takes the role
// (a was "dead"), so both are active, as they must be with no way to tell.
// When the partition heals the higher term (b's) keeps the role and a gives
// way with "split resolved".
func TestSplitHeals(t *testing.T) {
	l := newLab(t)
	a, b := startPair(t, l, false)
	l.attach("pa", false)
	l.router.SetUp("ra", false)
	waitFor(t, 2*time.Second, "b active in the partition", func() bool { return b.state().Role == RoleActive })
	if a.state().Role != RoleActive {
		t.Fatal("a gave the role up in a partition")
	}
	healed := time.Now()
	l.attach("pa", true)
	l.router.SetUp("ra", true)
	waitFor(t, 3*time.Second, "one active after the partition healed", func() bool {
		return a.state().Role == RoleStandby && !l.holds("a")
	})
	resolved := time.Since(healed)
	sa, sb := a.state(), b.state()
	if sb.Role != RoleActive || !l.holds("b") || sa.LastFailover.Reason != ReasonSplit || sa.Term != sb.Term {
		t.Fatalf("after the heal: a %+v %+v, b %+v", sa, sa.LastFailover, sb)
	}
	t.Logf("split resolved %v after the partition healed, term %d", resolved.Round(time.Millisecond), sb.Term)
}

// TestKeyRotation rotates the pair's key the way the appliance does with
// the tenant's probe keys: each member accepts the other's signing key, so
// the pair never loses contact while one signs with the next key and the
// other still with the previous one; a key neither accepts makes the
// heartbeats bad.
func TestKeyRotation(t *testing.T) {
	l := newLab(t)
	const k1, k2, k3 = "pair-key-one-sixteen+", "pair-key-two-sixteen+", "pair-key-three-sixteen"
	ca, cb := l.config("a", 200, false), l.config("b", 100, false)
	ca.Key, ca.AcceptedKeys = []byte(k2), [][]byte{[]byte(k1)}
	cb.Key, cb.AcceptedKeys = []byte(k1), [][]byte{[]byte(k2)}
	a := l.start(ca)
	b := l.start(cb)
	waitFor(t, 5*time.Second, "a active and b standby, signing with different keys", func() bool {
		sa, sb := a.state(), b.state()
		return sa.Role == RoleActive && sb.Role == RoleStandby && sb.Partner.Alive && sa.Partner.Alive && sb.Partner.Member
	})
	if ma, mb := a.metrics(), b.metrics(); ma.LAN.Bad+ma.WAN.Bad+mb.LAN.Bad+mb.WAN.Bad != 0 {
		t.Errorf("bad heartbeats while each accepts the other's key: a %+v %+v, b %+v %+v", ma.LAN, ma.WAN, mb.LAN, mb.WAN)
	}
	// b signs with k3 and still accepts k2: a, which does not accept k3
	// yet, counts b's heartbeats as bad (and may find b silent: an active
	// stays active), b still hears a.
	b.call("keys " + k3 + " " + k2)
	before := a.metrics()
	waitFor(t, 2*time.Second, "a counts b's heartbeats as bad", func() bool {
		m := a.metrics()
		return m.LAN.Bad > before.LAN.Bad+3 && m.WAN.Bad > before.WAN.Bad+3
	})
	// a follows: the two hear each other again and nothing moved.
	a.call("keys " + k3 + " " + k2)
	time.Sleep(500 * time.Millisecond)
	m1 := a.metrics()
	time.Sleep(300 * time.Millisecond)
	m2 := a.metrics()
	if m2.LAN.Bad != m1.LAN.Bad || m2.WAN.Bad != m1.WAN.Bad || m2.LAN.Received == m1.LAN.Received {
		t.Errorf("after both moved to the new key: a LAN %+v -> %+v, WAN %+v -> %+v", m1.LAN, m2.LAN, m1.WAN, m2.WAN)
	}
	if sa, sb := a.state(), b.state(); sa.Role != RoleActive || sb.Role != RoleStandby || sa.Term != sb.Term {
		t.Errorf("the rotation moved the role: a %+v, b %+v", sa, sb)
	}
	// A bad key set is refused and changes nothing.
	fmt.Fprintln(a.in, "keys short")
	if line := <-a.replies; !strings.Contains(line, "Key: want at least 16 bytes") {
		t.Errorf("SetKeys with a short key: %s", line)
	}
}
