package gateway

import (
	"context"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/causeway-net/causeway/dataplane/bind/bindtest"
)

var (
	wan1Addr = ip("198.18.1.2")
	wan2Addr = ip("198.18.2.2")
)

// openFlows opens n flows from the host to the Internet echo and returns
// them with the public address each was NATed to.
func openFlows(t *testing.T, s *site, n int) ([]*flow, []netip.Addr) {
	t.Helper()
	flows := make([]*flow, n)
	seen := make([]netip.Addr, n)
	for i := range flows {
		flows[i] = dial(t, s.host, netip.AddrPort{}, "", echoAP)
		ap, err := flows[i].askUntil(time.Now().Add(2 * time.Second))
		if err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
		seen[i] = ap.Addr()
	}
	return flows, seen
}

func count(addrs []netip.Addr, a netip.Addr) int {
	n := 0
	for _, x := range addrs {
		if x == a {
			n++
		}
	}
	return n
}

// TestBalanceAndFailover: LAN flows are masqueraded and spread over both
// uplinks; SetHealthy moves the flows of an uplink that left (and new
// ones) at once; flows stay where they are when it returns.
func TestBalanceAndFailover(t *testing.T) {
	s := newSite(t)
	echo(t, s.inet, echoAP)
	g := start(t, s.gw, s.config())

	const n = 64
	flows, seen := openFlows(t, s, n)
	on1, on2 := count(seen, wan1Addr), count(seen, wan2Addr)
	t.Logf("%d flows: %d on wan1, %d on wan2", n, on1, on2)
	if on1+on2 != n {
		t.Fatalf("flows seen from %v, want only the uplinks' addresses", seen)
	}
	// Binomial(64, 1/2): mean 32, standard deviation 4; 16 is 4 below.
	if on1 < n/4 || on2 < n/4 {
		t.Errorf("unfair spread: %d on wan1, %d on wan2", on1, on2)
	}

	t.Run("second-lan-prefix", func(t *testing.T) {
		f := dial(t, s.host, netip.AddrPortFrom(ip("10.11.0.10"), 0), "", echoAP)
		ap, err := f.askUntil(time.Now().Add(2 * time.Second))
		if err != nil || (ap.Addr() != wan1Addr && ap.Addr() != wan2Addr) {
			t.Fatalf("from 10.11.0.10: seen as %v, %v", ap, err)
		}
	})

	t.Run("uplink-leaves", func(t *testing.T) {
		restore := cut(t, s.inet, "i1")
		defer restore()
		start := time.Now()
		if err := g.SetHealthy([]string{"wan2"}); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		deadline := start.Add(time.Second)
		for i, f := range flows {
			ap, err := f.askUntil(deadline)
			if err != nil || ap.Addr() != wan2Addr {
				t.Fatalf("flow %d (was on %s) 1 s after SetHealthy: seen as %v, %v", i, seen[i], ap, err)
			}
		}
		t.Logf("SetHealthy took %v; all %d flows answered over wan2 %v after it", took, n, time.Since(start).Round(time.Millisecond))
		_, fresh := openFlows(t, s, 16)
		if c := count(fresh, wan2Addr); c != 16 {
			t.Errorf("%d of 16 new flows on wan2", c)
		}
		if got := g.Nexthops(); !slices.Equal(got, []string{"wan2"}) {
			t.Errorf("Nexthops %v", got)
		}
	})

	t.Run("uplink-returns", func(t *testing.T) {
		if err := g.SetHealthy([]string{"wan1", "wan2"}); err != nil {
			t.Fatal(err)
		}
		// The flows keep their NAT address whatever the route, so look at
		// the link too: a flow rehashed onto wan1 would leave there.
		tx0 := txPackets(t, s.gw, "wan1")
		for i, f := range flows {
			ap, err := f.askUntil(time.Now().Add(time.Second))
			if err != nil || ap.Addr() != wan2Addr {
				t.Fatalf("flow %d moved when wan1 came back: seen as %v, %v", i, ap, err)
			}
		}
		if d := txPackets(t, s.gw, "wan1") - tx0; d > 4 {
			t.Errorf("%d packets left on wan1 while the %d flows pinned to wan2 sent one datagram each", d, n)
		}
		_, fresh := openFlows(t, s, n)
		if c := count(fresh, wan1Addr); c < n/4 || c > n-n/4 {
			t.Errorf("new flows after wan1 returned: %d of %d on wan1", c, n)
		}
	})

	t.Run("empty-set-means-all", func(t *testing.T) {
		if err := g.SetHealthy(nil); err != nil {
			t.Fatal(err)
		}
		if got := g.Nexthops(); !slices.Equal(got, []string{"wan1", "wan2"}) {
			t.Errorf("Nexthops %v after SetHealthy(nil)", got)
		}
		if err := g.SetHealthy([]string{"wan3"}); err == nil || !strings.Contains(err.Error(), `"wan3"`) {
			t.Errorf("SetHealthy(wan3): %v", err)
		}
		if got := g.Healthy(); len(got) != 0 {
			t.Errorf("Healthy %v after the refused call, want the empty set of before", got)
		}
	})
}

// TestCounters: the counters see exactly the LAN host's Internet
// datagrams (IP lengths), and none of the overlay's or the gateway's own
// traffic.
func TestCounters(t *testing.T) {
	s := newSite(t)
	echo(t, s.inet, echoAP)
	remoteEcho := netip.MustParseAddrPort("10.20.0.10:7")
	echo(t, s.remote, remoteEcho)
	g := start(t, s.gw, s.config())

	flows, _ := openFlows(t, s, 8)
	before, err := g.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	var want uint64
	const n = 800
	for i := range n {
		size := 6 + (i*37)%1400
		if _, err := flows[i%len(flows)].ask(size, 2*time.Second); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		want += uint64(size + 28) // IPv4 and UDP headers
	}

	// The overlay: routed, not NATed, not counted.
	ov := dial(t, s.host, netip.AddrPort{}, "", remoteEcho)
	for range 50 {
		ap, err := ov.ask(1000, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if ap.Addr() != ip("10.10.0.10") {
			t.Fatalf("the overlay saw the host as %v: NATed", ap)
		}
	}
	// The gateway's own traffic: not counted.
	own := dial(t, s.gw, netip.AddrPort{}, "", echoAP)
	for range 50 {
		if _, err := own.ask(1000, 2*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	after, err := g.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	tx, rx := after.TxBytes-before.TxBytes, after.RxBytes-before.RxBytes
	t.Logf("sent %d datagrams, %d IP bytes each way; counted tx %d pkts %d bytes, rx %d pkts %d bytes",
		n, want, after.TxPackets-before.TxPackets, tx, after.RxPackets-before.RxPackets, rx)
	within := func(got uint64) bool {
		return float64(got) >= float64(want)*0.995 && float64(got) <= float64(want)*1.005
	}
	if !within(tx) || !within(rx) {
		t.Errorf("counted tx %d, rx %d bytes; want %d within 0.5%%", tx, rx, want)
	}
	if p := after.TxPackets - before.TxPackets; p != n {
		t.Errorf("counted %d tx packets, want %d", p, n)
	}
	if g.Counters() != after && g.Counters().TxBytes < after.TxBytes {
		t.Error("Counters went backwards")
	}

	t.Run("tcp", func(t *testing.T) {
		// A bulk TCP upload: a super-packet (GSO over veth, GRO on a
		// NIC) counts as one packet with one header, so the bytes are the
		// payload plus the headers of what the kernel forwarded as a unit.
		ln := listen(t, s.inet, netip.AddrPortFrom(webAddr, 80))
		got := make(chan int64, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				got <- -1
				return
			}
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			got <- n
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		b0, _ := g.ReadCounters()
		c, err := dialTCP(ctx, s.host, netip.AddrPortFrom(webAddr, 80))
		if err != nil {
			t.Fatal(err)
		}
		const size = 16 << 20
		if _, err := c.Write(make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if n := <-got; n != size {
			t.Fatalf("the server got %d bytes", n)
		}
		b1, _ := g.ReadCounters()
		tx := b1.TxBytes - b0.TxBytes
		t.Logf("TCP upload of %d bytes: counted %d bytes in %d packets (%.3f%% over the payload)",
			size, tx, b1.TxPackets-b0.TxPackets, 100*(float64(tx)/size-1))
		if tx < size || float64(tx) > size*1.05 {
			t.Errorf("counted %d bytes for a %d-byte upload", tx, size)
		}
	})
}

// TestCloseLeavesNothing: Close removes the table, the rules and the
// routes and restores the sysctls; a gateway that crashed (no Close) is
// cleaned up by the next New.
func TestCloseLeavesNothing(t *testing.T) {
	s := newSite(t)
	echo(t, s.inet, echoAP)
	snap := func() string {
		var b strings.Builder
		s.gw.MustDo(func() error {
			for _, k := range []string{"net/ipv4/ip_forward", "net/ipv4/fib_multipath_hash_policy",
				"net/ipv4/conf/wan1/rp_filter", "net/ipv4/conf/wan2/rp_filter", "net/ipv4/conf/lan0/rp_filter"} {
				v, err := os.ReadFile("/proc/sys/" + k)
				if err != nil {
					return err
				}
				b.WriteString(k + "=" + strings.TrimSpace(string(v)) + "\n")
			}
			return nil
		})
		nl := s.gw.Netlink()
		rules, err := nl.RuleList(netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			b.WriteString(describeRule(&r) + "\n")
		}
		routes, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 0}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if r.Table != 255 { // local: addresses, unchanged
				b.WriteString(describeRoute(&r) + " table " + strconv.Itoa(r.Table) + "\n")
			}
		}
		s.gw.MustDo(func() error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			tables, err := c.ListTables()
			for _, tb := range tables {
				b.WriteString("nft table " + tb.Name + "\n")
			}
			return err
		})
		return b.String()
	}
	s.gw.Sysctl("net/ipv4/ip_forward", "0")
	clean := snap()

	g := start(t, s.gw, s.config())
	running := snap()
	for _, want := range []string{"fib_multipath_hash_policy=1", "ip_forward=1",
		"nft table " + TableName, "5210: from 10.10.0.0/24 iif lan0 lookup 254 suppress_prefixlength 0",
		"5240: from 10.11.0.0/24 iif lan0 lookup 52000", "5230: from all iif lan0 fwmark 0x20000/0xff0000 lookup 52002"} {
		if !strings.Contains(running, want) {
			t.Errorf("running gateway lacks %q:\n%s", want, running)
		}
	}
	if strings.Contains(running, "rp_filter=2") || strings.Contains(running, "rp_filter=0") {
		t.Errorf("reverse-path filtering changed:\n%s", running)
	}
	if _, err := dial(t, s.host, netip.AddrPort{}, "", echoAP).askUntil(time.Now().Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if got := snap(); got != clean {
		t.Errorf("after Close:\n%s\nbefore New:\n%s", got, clean)
	}
	if err := g.SetHealthy([]string{"wan1"}); err == nil {
		t.Error("SetHealthy after Close succeeded")
	}

	// A crash: the process dies without Close. The next New removes the
	// leftovers (here: those of a gateway built then abandoned).
	var crashed *Gateway
	s.gw.MustDo(func() (err error) { crashed, err = New(s.config()); return err })
	_ = crashed // never closed
	g2 := start(t, s.gw, s.config())
	if err := g2.Close(); err != nil {
		t.Fatal(err)
	}
	got := snap()
	// The abandoned gateway's sysctls are what the second one found and
	// restored; everything else must be gone.
	got = strings.ReplaceAll(got, "fib_multipath_hash_policy=1", "fib_multipath_hash_policy=0")
	got = strings.ReplaceAll(got, "ip_forward=1", "ip_forward=0")
	if got != clean {
		t.Errorf("after a crash and a clean New/Close:\n%s\nbefore:\n%s", got, clean)
	}
}

// TestBadConfig: New refuses an invalid config and names the field.
func TestBadConfig(t *testing.T) {
	bindtest.Require(t)
	_, err := New(Config{LANInterface: "lan0", LANPrefixes: []netip.Prefix{pfx("10.10.0.0/24")},
		Uplinks: []Uplink{{Name: "a", Interface: "wan1"}}})
	if err == nil || !strings.Contains(err.Error(), "Uplinks[0].Gateway") {
		t.Errorf("New without a next hop: %v", err)
	}
	ns := bindtest.NewNetns(t)
	err = ns.Do(func() error {
		_, err := New(Config{LANInterface: "nosuch0", LANPrefixes: []netip.Prefix{pfx("10.10.0.0/24")},
			Uplinks: []Uplink{{Name: "a", Interface: "wan1", Gateway: ip("198.18.1.1")}}})
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "interface nosuch0") {
		t.Errorf("New with a missing interface: %v", err)
	}
}

// txPackets is the link's transmitted packet count in ns.
func txPackets(t *testing.T, ns *bindtest.Netns, dev string) uint64 {
	t.Helper()
	l, err := ns.Netlink().LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Statistics.TxPackets
}
