package lab

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// office-1's public addresses, one per ISP: office-1a's wan1, office-1b's
// wan2.
var (
	office1Wan1 = addr("198.18.1.2")
	office1Wan2 = addr("198.18.4.2")
)

// gatewayMetric names one of a gateway's series for an uplink.
func gatewayMetric(name, uplink string) string {
	return "causeway_gateway_" + name + `{uplink="` + uplink + `"}`
}

// natAddrOf returns the address office-1a NATs the UDP flow from local
// (on office-1-host) to dst to, from its conntrack table: its wan1 address
// for a flow over ISP 1, its LAN address for one over the borrowed ISP 2
// (office-1b masquerades it in turn); the zero Addr if there is no such
// flow.
func natAddrOf(t *testing.T, l *Lab, local, dst netip.AddrPort) netip.Addr {
	t.Helper()
	var h *netlink.Handle
	if err := inNetns(l.Netns(memberA), func() (err error) {
		h, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		src, _ := netip.AddrFromSlice(f.Forward.SrcIP)
		dstIP, _ := netip.AddrFromSlice(f.Forward.DstIP)
		if f.Forward.Protocol == unix.IPPROTO_UDP && src.Unmap() == local.Addr() && f.Forward.SrcPort == local.Port() &&
			dstIP.Unmap() == dst.Addr() && f.Forward.DstPort == dst.Port() {
			a, _ := netip.AddrFromSlice(f.Reverse.DstIP)
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

// TestGateway checks office-1's pair as its LAN's Internet gateway, with
// office-1a active: office-1-host reaches web-1 on the Internet over both
// ISPs (its own wan1, and wan2 borrowed from office-1b), NATed; cutting
// wan1 moves a 10 ms UDP stream to wan2 with a gap of at most 1 s.
func TestGateway(t *testing.T) {
	l := upLab(t, "gw", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bothHealthy := func(m map[string]float64) bool {
		return sum(m, gatewayMetric("uplink_healthy", "wan1")) == 1 && sum(m, gatewayMetric("uplink_healthy", "wan2")) == 1 &&
			sum(m, gatewayMetric("uplink_nexthop", "wan1")) == 1 && sum(m, gatewayMetric("uplink_nexthop", "wan2")) == 1
	}
	waitMetric(ctx, t, l, memberA, bothHealthy)
	// office-1a serves the LAN (it holds the VIP, the remotes route to
	// it): the counters read below are its own.
	waitActive(ctx, t, l, memberA, true)
	webURL := "http://" + webAddr.String() + "/"
	echoAddr := netip.AddrPortFrom(webAddr, webEchoPort)

	t.Run("both-uplinks", func(t *testing.T) {
		before, err := metrics(ctx, l, memberA)
		if err != nil {
			t.Fatal(err)
		}
		// One connection per request: each is a new flow for the hash.
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
				return l.DialContext(ctx, "office-1-host", network, a)
			}}}
		const n = 64
		per := map[netip.Addr]int{}
		for i := range n {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			req, _ := http.NewRequestWithContext(rctx, http.MethodGet, webURL, nil)
			resp, err := c.Do(req)
			if err != nil {
				cancel()
				t.Fatalf("request %d: %v", i, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			cancel()
			// "You are 198.18.1.2:40001." names the flow's public side.
			_, you, ok := strings.Cut(string(body), "You are ")
			ap, err := netip.ParseAddrPort(strings.TrimSuffix(strings.TrimSpace(you), "."))
			if !ok || err != nil {
				t.Fatalf("request %d: page %q", i, body)
			}
			per[ap.Addr()]++
		}
		t.Logf("%d connections from office-1-host to web-1: %d via wan1 (%s), %d via wan2 (%s)",
			n, per[office1Wan1], office1Wan1, per[office1Wan2], office1Wan2)
		if per[office1Wan1]+per[office1Wan2] != n {
			t.Fatalf("web-1 saw other sources than office-1's two ISPs: %v", per)
		}
		// Binomial(64, 1/2): mean 32, standard deviation 4.
		if per[office1Wan1] < n/4 || per[office1Wan2] < n/4 {
			t.Errorf("unfair spread over the uplinks: %v", per)
		}
		after, err := metrics(ctx, l, memberA)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{"tx", "rx"} {
			s := `causeway_gateway_packets_total{direction="` + d + `"}`
			if got := sum(after, s) - sum(before, s); got < 3*n {
				t.Errorf("%s grew by %v for %d connections", s, got, n)
			}
		}
	})

	t.Run("wan1-cut", func(t *testing.T) {
		// A flow that office-1a sends over wan1: the hash decides, so try
		// source ports until one lands there.
		var tx *net.UDPConn
		buf := make([]byte, 64)
		for try := 0; tx == nil; try++ {
			if try == 30 {
				t.Fatal("30 flows in a row went over wan2")
			}
			c := udpDial(t, l.Netns("office-1-host"), "", echoAddr.String())
			c.Write(buf)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(buf); err != nil {
				t.Fatalf("no echo from %s: %v", echoAddr, err)
			}
			c.SetReadDeadline(time.Time{})
			local := c.LocalAddr().(*net.UDPAddr).AddrPort()
			if a := natAddrOf(t, l, netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), echoAddr); a == office1Wan1 {
				tx = c
			} else {
				c.Close()
			}
		}
		const n, gap = 600, 10 * time.Millisecond // 6 s
		arrivals := make([]time.Time, 0, n)
		var mu sync.Mutex
		done := make(chan struct{})
		go func() {
			defer close(done)
			rb := make([]byte, 64)
			for {
				if _, err := tx.Read(rb); err != nil {
					return
				}
				mu.Lock()
				arrivals = append(arrivals, time.Now())
				mu.Unlock()
			}
		}()
		var cut time.Time
		start := time.Now()
		for i := range n {
			if i == 200 {
				if err := l.Impair(ctx, memberA, "wan1", Impairment{Down: true}); err != nil {
					t.Fatal(err)
				}
				cut = time.Now()
			}
			binary.BigEndian.PutUint32(buf, uint32(i))
			tx.Write(buf)
			time.Sleep(time.Until(start.Add(time.Duration(i+1) * gap)))
		}
		time.Sleep(300 * time.Millisecond)
		tx.SetReadDeadline(time.Now())
		<-done
		defer l.Clear(memberA, "wan1")
		var longest time.Duration
		after := 0
		for i := 1; i < len(arrivals); i++ {
			longest = max(longest, arrivals[i].Sub(arrivals[i-1]))
			if arrivals[i].After(cut) {
				after++
			}
		}
		local := tx.LocalAddr().(*net.UDPAddr).AddrPort()
		nat := natAddrOf(t, l, netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), echoAddr)
		t.Logf("wan1 cut under a 10 ms UDP stream to web-1: %d of %d echoes, %d after the cut; longest gap %v; the flow is now NATed to %s",
			len(arrivals), n, after, longest, nat)
		if longest > time.Second {
			t.Errorf("longest gap %v, want <= 1s", longest)
		}
		if after < 300 {
			t.Errorf("only %d echoes after the cut: the stream did not move to wan2", after)
		}
		if lan := l.t.lanAddr(memberA); nat != lan {
			t.Errorf("the flow is NATed to %v after the cut, want the LAN address %v (the borrowed wan2)", nat, lan)
		}
		m, err := metrics(ctx, l, memberA)
		if err != nil {
			t.Fatal(err)
		}
		if sum(m, gatewayMetric("uplink_healthy", "wan1")) != 0 || sum(m, gatewayMetric("uplink_nexthop", "wan1")) != 0 {
			t.Errorf("wan1 still healthy or a next hop after the cut")
		}
		if err := l.Clear(memberA, "wan1"); err != nil {
			t.Fatal(err)
		}
		waitMetric(ctx, t, l, memberA, bothHealthy)
	})
}
