package lab

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// The office's pair: office-1a (ISP 1, priority 200) and office-1b (ISP
// 2), one LAN, office-1-host's default route the VIP 10.10.0.1.
const (
	memberA = "office-1a"
	memberB = "office-1b"
)

// backendEcho is the UDP echo the pair tests run on vpc-1-backend-1.
const backendEcho = "10.20.0.10:7010"

// echoStream sends a numbered datagram every few milliseconds from a node
// to a UDP echo and records when each echo comes back: a loss in either
// direction shows.
type echoStream struct {
	name  string
	c     *net.UDPConn
	every time.Duration

	mu      sync.Mutex
	sentAt  []time.Time       // by sequence number
	got     map[int]time.Time // first echo of each
	arrived []time.Time       // echoes in order of arrival
	stop    chan struct{}
	wg      sync.WaitGroup
}

func startEchoStream(t *testing.T, l *Lab, name, node, dst string, every time.Duration) *echoStream {
	t.Helper()
	s := &echoStream{name: name, c: udpDial(t, l.Netns(node), "", dst), every: every, got: map[int]time.Time{},
		stop: make(chan struct{})}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 64)
		for {
			n, err := s.c.Read(buf)
			if err != nil {
				return
			}
			now := time.Now()
			if n < 4 {
				continue
			}
			seq := int(binary.BigEndian.Uint32(buf))
			s.mu.Lock()
			if _, dup := s.got[seq]; !dup && seq < len(s.sentAt) {
				s.got[seq] = now
				s.arrived = append(s.arrived, now)
			}
			s.mu.Unlock()
		}
	}()
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 64)
		start := time.Now()
		for seq := 0; ; seq++ {
			binary.BigEndian.PutUint32(buf, uint32(seq))
			s.mu.Lock()
			s.sentAt = append(s.sentAt, time.Now())
			s.mu.Unlock()
			s.c.Write(buf) // an error is a loss like any other
			select {
			case <-s.stop:
				return
			case <-time.After(time.Until(start.Add(time.Duration(seq+1) * every))):
			}
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *echoStream) close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
		s.c.Close()
		s.wg.Wait()
	}
}

// waitFlowing waits until echoes come back.
func (s *echoStream) waitFlowing(ctx context.Context, t *testing.T) {
	t.Helper()
	for {
		s.mu.Lock()
		n := len(s.arrived)
		s.mu.Unlock()
		if n > 20 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: no echoes", s.name)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// window is what happened to the datagrams sent between from and to: how
// many were sent and never echoed, and the longest time without an echo
// (from the last echo before from, or from, to the last echo before to).
// Datagrams sent in the last 300 ms before to are left out: their echoes
// may still be on their way.
func (s *echoStream) window(from, to time.Time) (sent, lost int, gap time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for seq, at := range s.sentAt {
		if at.Before(from) || !at.Before(to.Add(-300*time.Millisecond)) {
			continue
		}
		sent++
		if _, ok := s.got[seq]; !ok {
			lost++
		}
	}
	last := from
	for _, at := range s.arrived {
		if at.Before(from) {
			last = at
			continue
		}
		if at.After(to) {
			break
		}
		gap = max(gap, at.Sub(last))
		last = at
	}
	return sent, lost, gap
}

// serveEcho runs a UDP echo on addr inside node until the test ends.
func serveEcho(t *testing.T, l *Lab, node, addr string) {
	t.Helper()
	c := udpIn(t, l.Netns(node), addr)
	go echo(c)
}

// pairViews returns both members' GET /pair, failing the test if either
// does not answer.
func pairRoles(ctx context.Context, t *testing.T, l *Lab) (a, b string) {
	t.Helper()
	va, err := l.PairState(ctx, memberA)
	if err != nil {
		t.Fatal(err)
	}
	vb, err := l.PairState(ctx, memberB)
	if err != nil {
		t.Fatal(err)
	}
	return va.Role, vb.Role
}

// waitActive waits until name is the active member and its partner, if
// it runs, a standby that hears it and knows it as the controller's
// choice; it returns how long that took.
func waitActive(ctx context.Context, t *testing.T, l *Lab, name string, partnerRuns bool) time.Duration {
	t.Helper()
	start := time.Now()
	other := memberB
	if name == memberB {
		other = memberA
	}
	for {
		v, err := l.PairState(ctx, name)
		ok := err == nil && v.Role == "active"
		if ok && partnerRuns {
			p, err := l.PairState(ctx, other)
			ok = err == nil && p.Role == "standby" && p.Active == name && p.Partner.Alive && p.ControllerChoice == name &&
				v.ControllerChoice == name
		}
		if ok {
			return time.Since(start)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s did not become the active member: %v (last error %v)", name, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// vipHolders samples both members' LAN interface for the VIP every few
// milliseconds until stopped, and counts the samples in which both held it.
type vipHolders struct {
	stop    chan struct{}
	done    chan struct{}
	samples int
	both    int
	none    int
	holders map[string]int
	err     error
}

func sampleVIP(t *testing.T, l *Lab, every time.Duration) *vipHolders {
	t.Helper()
	hs := map[string]*netlink.Handle{}
	for _, m := range []string{memberA, memberB} {
		h, err := netlinkHandle(l.Netns(m))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(h.Close)
		hs[m] = h
	}
	v := &vipHolders{stop: make(chan struct{}), done: make(chan struct{}), holders: map[string]int{}}
	holds := func(m string) (bool, error) {
		link, err := hs[m].LinkByName("lan0")
		if err != nil {
			return false, err
		}
		addrs, err := hs[m].AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return false, err
		}
		for _, a := range addrs {
			if a.IP.Equal(officeVIP.Addr().AsSlice()) {
				return true, nil
			}
		}
		return false, nil
	}
	go func() {
		defer close(v.done)
		for {
			// b before a: a move from a to b that does not overlap cannot
			// be sampled as an overlap.
			b, err := holds(memberB)
			a, err2 := holds(memberA)
			if err != nil || err2 != nil {
				v.err = fmt.Errorf("sampling the VIP: %v %v", err, err2)
				return
			}
			v.samples++
			switch {
			case a && b:
				v.both++
			case !a && !b:
				v.none++
			case a:
				v.holders[memberA]++
			default:
				v.holders[memberB]++
			}
			select {
			case <-v.stop:
				return
			case <-time.After(every):
			}
		}
	}()
	return v
}

func (v *vipHolders) finish(t *testing.T) *vipHolders {
	t.Helper()
	close(v.stop)
	<-v.done
	if v.err != nil {
		t.Fatal(v.err)
	}
	return v
}

// slowDownload fetches n bytes of the backend's pattern from office-1-host
// through the overlay, reading about rate bytes a second, and checks every
// byte.
func slowDownload(ctx context.Context, l *Lab, n, rate int) error {
	c := l.HTTPClient("office-1-host")
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/bytes?n=%d", backendAddr, n), nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	buf := make([]byte, 32<<10)
	start := time.Now()
	got := 0
	for got < n {
		m, err := resp.Body.Read(buf)
		for i := range m {
			if buf[i] != byte(got+i) {
				return fmt.Errorf("byte %d is %d, want %d", got+i, buf[i], byte(got+i))
			}
		}
		got += m
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", got, n, err)
		}
		time.Sleep(time.Until(start.Add(time.Duration(float64(got) / float64(rate) * float64(time.Second)))))
	}
	if got != n {
		return fmt.Errorf("got %d of %d bytes", got, n)
	}
	return nil
}

// pairStatusAPI is the controller's pair status, as `ctl pair status
// --json` prints it.
type pairStatusAPI struct {
	ActiveName   string `json:"active_name"`
	Since        string `json:"since"`
	Term         int64  `json:"term"`
	LastFailover *struct {
		At       string `json:"at"`
		FromName string `json:"from_name"`
		ToName   string `json:"to_name"`
		Reason   string `json:"reason"`
	} `json:"last_failover"`
}

// TestPairFailover runs office-1's pair through a device failure and the
// planned hand-overs with a 10 ms UDP echo stream from office-1-host
// through the overlay (to the vpc backend) and one to the Internet (web-1),
// and a slow TCP download through the overlay: kill -9 of the active, the
// pair's status afterwards (lab status, the controller, /metrics), the
// restart and fail-back by priority, drain and undrain.
func TestPairFailover(t *testing.T) {
	t.Parallel()
	l := upLab(t, "pfo", os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	serveEcho(t, l, "vpc-1-backend-1", backendEcho)
	ov := startEchoStream(t, l, "overlay", "office-1-host", backendEcho, 10*time.Millisecond)
	inet := startEchoStream(t, l, "internet", "office-1-host", netip.AddrPortFrom(webAddr, webEchoPort).String(), 10*time.Millisecond)
	ov.waitFlowing(ctx, t)
	inet.waitFlowing(ctx, t)
	if a, b := pairRoles(ctx, t, l); a != "active" || b != "standby" {
		t.Fatalf("after lab up: %s %s, %s %s; want office-1a active", memberA, a, memberB, b)
	}
	before, err := metrics(ctx, l, memberB)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("kill-active", func(t *testing.T) {
		dl := make(chan error, 1)
		go func() { dl <- slowDownload(ctx, l, 24<<20, 6<<20) }() // about 4 s
		time.Sleep(time.Second)
		killed := time.Now()
		if err := l.KillAppliance(memberA); err != nil {
			t.Fatal(err)
		}
		waitActive(ctx, t, l, memberB, false)
		claimed := time.Since(killed)
		time.Sleep(2500 * time.Millisecond)
		end := time.Now()
		for _, s := range []*echoStream{ov, inet} {
			sent, lost, gap := s.window(killed.Add(-500*time.Millisecond), end)
			t.Logf("kill -9 of office-1a, %s stream: %d sent, %d lost, longest gap %d ms", s.name, sent, lost, gap.Milliseconds())
			if gap > time.Second {
				t.Errorf("%s stream: longest gap %v, want <= 1s", s.name, gap)
			}
		}
		t.Logf("office-1b active %d ms after the kill", claimed.Milliseconds())
		if err := <-dl; err != nil {
			t.Errorf("the TCP download through the overlay did not survive the failover: %v", err)
		}
	})

	t.Run("status-after-kill", func(t *testing.T) {
		// The controller's view: active, since, the last failover and why.
		var ps pairStatusAPI
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := l.ctlJSON(ctx, &ps, "pair", "status", l.Tenant(), "office-1")
			if err == nil && ps.ActiveName == memberB && ps.LastFailover != nil && ps.LastFailover.ToName == memberB {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("ctl pair status: %+v %v", ps, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("controller: active %s since %s, term %d; last failover %+v", ps.ActiveName, ps.Since, ps.Term, *ps.LastFailover)
		if ps.Since == "" || ps.LastFailover.FromName != memberA || !strings.HasPrefix(ps.LastFailover.Reason, "partner-down") {
			t.Errorf("controller's pair status: %+v, last failover %+v", ps, *ps.LastFailover)
		}
		// lab status, from the members themselves.
		st := l.Status()
		if len(st.Pairs) != 1 {
			t.Fatalf("status pairs: %+v", st.Pairs)
		}
		p := st.Pairs[0]
		if p.Site != "office-1" || p.Active != memberB || p.Since == "" || p.LastFailover == nil ||
			p.LastFailover.From != memberA || p.LastFailover.To != memberB || p.LastFailover.Reason != "partner dead" {
			t.Errorf("status pair %+v, last failover %+v", p, p.LastFailover)
		}
		for _, a := range st.Appliances {
			switch a.Name {
			case memberA:
				if a.PID != 0 || a.Pair == nil || a.Pair.Role != "" {
					t.Errorf("killed %s in status: pid %d, pair %+v", a.Name, a.PID, a.Pair)
				}
			case memberB:
				if a.Pair == nil || a.Pair.Role != "active" || !a.Pair.Active || a.Pair.Term < 2 || a.Pair.Since == "" {
					t.Errorf("%s in status: pair %+v", a.Name, a.Pair)
				}
			}
		}
		// Failovers are counted on /metrics.
		m, err := metrics(ctx, l, memberB)
		if err != nil {
			t.Fatal(err)
		}
		sel := `causeway_pair_failovers_total{reason="partner-dead"}`
		if got := sum(m, sel) - sum(before, sel); got != 1 {
			t.Errorf("%s counted %v failovers for a dead partner, want 1", memberB, got)
		}
		if sum(m, `causeway_pair_role{role="active"}`) != 1 || sum(m, `causeway_pair_partner_alive{channel="any"}`) != 0 {
			t.Errorf("%s's pair metrics after the kill: role active %v, partner alive %v", memberB,
				sum(m, `causeway_pair_role{role="active"}`), sum(m, `causeway_pair_partner_alive{channel="any"}`))
		}
	})

	t.Run("restart-fail-back", func(t *testing.T) {
		// office-1a comes back as a standby and, with the higher priority,
		// takes the role back after the hold-down: no datagram lost.
		from := time.Now()
		if err := l.StartAppliance(ctx, memberA); err != nil {
			t.Fatal(err)
		}
		back := waitActive(ctx, t, l, memberA, true)
		time.Sleep(3 * time.Second)
		for _, s := range []*echoStream{ov, inet} {
			sent, lost, gap := s.window(from, time.Now())
			t.Logf("office-1a restarted, fail back: %s stream: %d sent, %d lost, longest gap %d ms", s.name, sent, lost, gap.Milliseconds())
			if lost != 0 {
				t.Errorf("%s stream: %d lost in the fail back", s.name, lost)
			}
		}
		t.Logf("office-1a active again %d ms after its start", back.Milliseconds())
		v, err := l.PairState(ctx, memberA)
		if err != nil || v.Failover == nil || v.Failover.Reason != "higher priority returned" {
			t.Errorf("office-1a after the fail back: %+v %v", v.Failover, err)
		}
	})

	t.Run("drain-undrain", func(t *testing.T) {
		for _, step := range []struct {
			verb, active string
		}{{"drain", memberB}, {"undrain", memberA}} {
			from := time.Now()
			if _, err := l.Ctl(ctx, "pair", step.verb, l.Tenant(), memberA); err != nil {
				t.Fatal(err)
			}
			took := waitActive(ctx, t, l, step.active, true)
			time.Sleep(3 * time.Second)
			for _, s := range []*echoStream{ov, inet} {
				sent, lost, gap := s.window(from, time.Now())
				t.Logf("%s office-1a: %s active after %d ms; %s stream: %d sent, %d lost, longest gap %d ms",
					step.verb, step.active, took.Milliseconds(), s.name, sent, lost, gap.Milliseconds())
				if lost != 0 {
					t.Errorf("%s: %s stream lost %d", step.verb, s.name, lost)
				}
			}
		}
	})
}

// lanFilter drops every frame the office LAN's switch would forward
// between the two members (and nothing else): a LAN fault between them
// that leaves every link's carrier up, while office-1-host still reaches
// both. on false removes it.
func lanFilter(ctx context.Context, t *testing.T, l *Lab, on bool) {
	t.Helper()
	script := "table bridge causeway_test_cut\ndelete table bridge causeway_test_cut\n"
	if on {
		script = `table bridge causeway_test_cut {
	chain forward {
		type filter hook forward priority 0;
		iifname "office-1a" oifname "office-1b" drop
		iifname "office-1b" oifname "office-1a" drop
	}
}
`
	}
	cmd := l.Command(ctx, "office-1-lan", "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in office-1-lan: %v\n%s", err, out)
	}
}

// setPort sets the switch's port to a member up or down: down, the
// member's lan0 loses its carrier.
func setPort(t *testing.T, l *Lab, port string, up bool) {
	t.Helper()
	h, err := netlinkHandle(l.Netns("office-1-lan"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(port)
	if err == nil {
		if up {
			err = h.LinkSetUp(link)
		} else {
			err = h.LinkSetDown(link)
		}
	}
	if err != nil {
		t.Fatalf("switch port %s up=%v: %v", port, up, err)
	}
}

// TestPairNetworkFaults runs office-1's pair through faults of the
// network with both members alive, under the two 10 ms echo streams:
// office-1a's uplink cut and restored (its paths and its Internet flows
// move to the borrowed ISP 2 and back), a silent LAN fault between the
// members (nothing moves: the WAN heartbeat keeps the partner alive) and
// the active's LAN carrier lost (the VIP moves, never on both).
func TestPairNetworkFaults(t *testing.T) {
	t.Parallel()
	l := upLab(t, "pnf", os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	serveEcho(t, l, "vpc-1-backend-1", backendEcho)
	ov := startEchoStream(t, l, "overlay", "office-1-host", backendEcho, 10*time.Millisecond)
	inet := startEchoStream(t, l, "internet", "office-1-host", netip.AddrPortFrom(webAddr, webEchoPort).String(), 10*time.Millisecond)
	ov.waitFlowing(ctx, t)
	inet.waitFlowing(ctx, t)
	// The office's path to vpc-1 over each ISP, as office-1a has them.
	path := func(uplink string) []string {
		return []string{`peer="vpc-1"`, `remote="198.18.2.2:51820"`, `uplink="` + uplink + `"`}
	}
	waitMetric(ctx, t, l, memberA, func(m map[string]float64) bool {
		return sum(m, append(path("wan1"), "causeway_path_up")...) == 1 && sum(m, append(path("wan2"), "causeway_path_up")...) == 1 &&
			sum(m, append(path("wan1"), "causeway_path_active")...) == 1 &&
			sum(m, gatewayMetric("uplink_nexthop", "wan1")) == 1 && sum(m, gatewayMetric("uplink_nexthop", "wan2")) == 1
	})

	t.Run("uplink-cut", func(t *testing.T) {
		cut := time.Now()
		if err := l.Impair(ctx, memberA, "wan1", Impairment{Down: true}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		for _, s := range []*echoStream{ov, inet} {
			sent, lost, gap := s.window(cut.Add(-500*time.Millisecond), time.Now())
			t.Logf("office-1a's wan1 cut, %s stream: %d sent, %d lost, longest gap %d ms", s.name, sent, lost, gap.Milliseconds())
			if gap > time.Second {
				t.Errorf("%s stream: longest gap %v, want <= 1s", s.name, gap)
			}
		}
		m, err := metrics(ctx, l, memberA)
		if err != nil {
			t.Fatal(err)
		}
		if sum(m, append(path("wan2"), "causeway_path_active")...) != 1 || sum(m, gatewayMetric("uplink_nexthop", "wan1")) != 0 {
			t.Errorf("after the cut office-1a does not use the borrowed wan2 alone: path %v, wan1 next hop %v",
				sum(m, append(path("wan2"), "causeway_path_active")...), sum(m, gatewayMetric("uplink_nexthop", "wan1")))
		}
		if a, b := pairRoles(ctx, t, l); a != "active" || b != "standby" {
			t.Errorf("an uplink cut moved the role: %s %s, %s %s", memberA, a, memberB, b)
		}
	})

	t.Run("uplink-restore", func(t *testing.T) {
		// Back by policy: the gateway at once, the overlay path once wan1
		// has been good for its hold time (10 s); nothing lost.
		from := time.Now()
		if err := l.Clear(memberA, "wan1"); err != nil {
			t.Fatal(err)
		}
		m := waitMetric(ctx, t, l, memberA, func(m map[string]float64) bool {
			return sum(m, append(path("wan1"), "causeway_path_active")...) == 1 && sum(m, gatewayMetric("uplink_nexthop", "wan1")) == 1
		})
		back := time.Since(from)
		time.Sleep(time.Second)
		for _, s := range []*echoStream{ov, inet} {
			sent, lost, gap := s.window(from, time.Now())
			t.Logf("office-1a's wan1 restored, back on it after %d ms: %s stream: %d sent, %d lost, longest gap %d ms",
				back.Milliseconds(), s.name, sent, lost, gap.Milliseconds())
			if lost != 0 {
				t.Errorf("%s stream: %d lost on the way back", s.name, lost)
			}
		}
		if sum(m, `causeway_path_changes_total{reason="preferred"}`) < 1 {
			t.Error("no move back to the preferred path was counted")
		}
	})

	t.Run("lan-fault-between-members", func(t *testing.T) {
		va, err := l.PairState(ctx, memberA)
		if err != nil {
			t.Fatal(err)
		}
		vip := sampleVIP(t, l, 3*time.Millisecond)
		from := time.Now()
		lanFilter(ctx, t, l, true)
		time.Sleep(3 * time.Second)
		pa, err := l.PairState(ctx, memberA)
		if err != nil {
			t.Fatal(err)
		}
		pb, err := l.PairState(ctx, memberB)
		if err != nil {
			t.Fatal(err)
		}
		lanFilter(ctx, t, l, false)
		time.Sleep(time.Second)
		h := vip.finish(t)
		t.Logf("LAN cut between the members for 3 s: VIP sampled %d times: office-1a %d, office-1b %d, both %d, none %d; "+
			"office-1a sees its partner on LAN %v, WAN %v", h.samples, h.holders[memberA], h.holders[memberB], h.both, h.none,
			pa.Partner.LAN, pa.Partner.WAN)
		if h.both != 0 || h.none != 0 || h.holders[memberB] != 0 {
			t.Errorf("the VIP moved or doubled during a LAN fault: %+v", h)
		}
		if pa.Role != "active" || pb.Role != "standby" || pa.Term != va.Term || pa.Partner.LAN || !pa.Partner.WAN {
			t.Errorf("during the LAN fault: office-1a %s term %d (was %d), partner LAN %v WAN %v; office-1b %s",
				pa.Role, pa.Term, va.Term, pa.Partner.LAN, pa.Partner.WAN, pb.Role)
		}
		for _, s := range []*echoStream{ov, inet} {
			sent, lost, gap := s.window(from, time.Now())
			t.Logf("LAN cut between the members, %s stream: %d sent, %d lost, longest gap %d ms", s.name, sent, lost, gap.Milliseconds())
			if gap > time.Second {
				t.Errorf("%s stream: longest gap %v, want <= 1s", s.name, gap)
			}
		}
	})

	t.Run("active-lan-carrier-lost", func(t *testing.T) {
		waitActive(ctx, t, l, memberA, true)
		// Break before make: office-1a gives the VIP up before office-1b
		// claims it.
		vip := sampleVIP(t, l, 3*time.Millisecond)
		from := time.Now()
		setPort(t, l, memberA, false)
		took := waitActive(ctx, t, l, memberB, false)
		time.Sleep(2 * time.Second)
		h := vip.finish(t)
		t.Logf("office-1a's LAN carrier lost: VIP sampled %d times: office-1a %d, office-1b %d, both %d, none %d",
			h.samples, h.holders[memberA], h.holders[memberB], h.both, h.none)
		if h.both != 0 || h.holders[memberB] == 0 {
			t.Errorf("VIP holders when office-1a lost its LAN carrier: %+v", h)
		}
		for _, s := range []*echoStream{ov, inet} {
			sent, lost, gap := s.window(from, time.Now())
			t.Logf("office-1a's LAN carrier lost: office-1b active after %d ms; %s stream: %d sent, %d lost, longest gap %d ms",
				took.Milliseconds(), s.name, sent, lost, gap.Milliseconds())
			if gap > time.Second {
				t.Errorf("%s stream: longest gap %v, want <= 1s", s.name, gap)
			}
		}
		// Make before break when office-1a takes the role back (preempt,
		// after the hold-down): both hold the VIP for a few milliseconds.
		vip = sampleVIP(t, l, 3*time.Millisecond)
		setPort(t, l, memberA, true)
		waitActive(ctx, t, l, memberA, true)
		h = vip.finish(t)
		t.Logf("office-1a's LAN back: VIP sampled %d times: office-1a %d, office-1b %d, both %d (about %d ms), none %d",
			h.samples, h.holders[memberA], h.holders[memberB], h.both, 3*h.both, h.none)
		if h.none != 0 || h.both > 30 || h.holders[memberA] == 0 {
			t.Errorf("VIP holders when office-1a took the role back: %+v", h)
		}
	})
}
