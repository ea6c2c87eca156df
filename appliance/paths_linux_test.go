package appliance

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/causeway-net/causeway/probes"
)

// inNetns runs fn on a locked OS thread inside the named namespace.
// Sockets fn creates stay in that namespace.
func inNetns(t testing.TB, name string, fn func() error) {
	t.Helper()
	err := func() error {
		h, err := netns.GetFromName(name)
		if err != nil {
			return err
		}
		defer h.Close()
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			return err
		}
		defer orig.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			return err
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			return fmt.Errorf("leaving %s: %w (thread left locked)", name, err)
		}
		runtime.UnlockOSThread()
		return ferr
	}()
	if err != nil {
		t.Fatalf("in namespace %s: %v", name, err)
	}
}

// scrape returns every sample of the appliance's /metrics inside ns,
// keyed by series as printed (labels sorted by name).
func scrape(t *testing.T, ns string) map[string]float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "curl", "-sf", "http://127.0.0.1:9180/metrics").Output()
	if err != nil {
		t.Fatalf("scraping metrics in %s: %v", ns, err)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(out), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m
}

func pathSeries(name, peer, uplink, remote string) string {
	return fmt.Sprintf(`%s{peer=%q,remote=%q,uplink=%q}`, name, peer, remote, uplink)
}

func pathChanges(m map[string]float64) float64 {
	var n float64
	for k, v := range m {
		if strings.HasPrefix(k, "causeway_path_changes_total{") {
			n += v
		}
	}
	return n
}

// arrival is one datagram of the stream as the receiver saw it.
type arrival struct {
	seq uint64
	at  time.Time
}

// TestPathFailover runs two sites joined by two uplinks, each a veth pair
// (a.wan1 198.18.11.1 - b.b1 198.18.11.2, a.wan2 198.18.12.1 - b.b2
// 198.18.12.2), both probing with the same key at the default interval.
// A stream of one datagram every 10 ms goes from a's overlay address to
// b's; b's end of the active uplink is then made to drop everything
// (nftables), so the path dies without a link event. The longest gap in
// what b receives must stay under 1 s, the stream must continue on wan2,
// and after the uplink returns the peer must not flap. Last, a probe with
// a bad MAC is sent to a and must be dropped and counted.
func TestPathFailover(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	nsA, nsB := newNetns(t), newNetns(t)
	for i, n := range []int{1, 2} {
		wan, b := fmt.Sprintf("wan%d", n), fmt.Sprintf("b%d", n)
		run(t, "ip", "-n", nsA, "link", "add", wan, "type", "veth", "peer", "name", b, "netns", nsB)
		run(t, "ip", "-n", nsA, "addr", "add", fmt.Sprintf("198.18.%d.1/24", 11+i), "dev", wan)
		run(t, "ip", "-n", nsB, "addr", "add", fmt.Sprintf("198.18.%d.2/24", 11+i), "dev", b)
		run(t, "ip", "-n", nsA, "link", "set", wan, "up")
		run(t, "ip", "-n", nsB, "link", "set", b, "up")
	}
	for _, ns := range []string{nsA, nsB} {
		// Each uplink answers ARP for its own address only, so the cross
		// paths (wan1 to b's wan2 address and so on) are dead, not
		// delivered through the wrong link; loose reverse-path filtering
		// as the appliance wants it on uplinks.
		run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.rp_filter=2")
	}

	key, err := probes.GenerateKey(1)
	if err != nil {
		t.Fatal(err)
	}
	a := siteConfig(t, "site-a", "100.64.9.1", "10.91.0.0/24")
	b := siteConfig(t, "site-b", "100.64.9.2", "10.92.0.0/24")
	a.Uplinks = []Uplink{{Name: "wan1", Interface: "wan1", Addr: netip.MustParseAddr("198.18.11.1")},
		{Name: "wan2", Interface: "wan2", Addr: netip.MustParseAddr("198.18.12.1")}}
	b.Uplinks = []Uplink{{Name: "b1", Interface: "b1", Addr: netip.MustParseAddr("198.18.11.2")},
		{Name: "b2", Interface: "b2", Addr: netip.MustParseAddr("198.18.12.2")}}
	a.ProbeKey, b.ProbeKey = key, key
	a.ProbeInterval, b.ProbeInterval = DefaultProbeInterval, DefaultProbeInterval
	ka, err := LoadOrCreateKey(a.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := LoadOrCreateKey(b.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	b1, b2 := "198.18.11.2:51820", "198.18.12.2:51820"
	a.Peers = []PeerConfig{{Name: "site-b", PublicKey: kb.Public(), OverlayAddr: b.OverlayAddr, Prefixes: b.LANPrefixes,
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort(b1), netip.MustParseAddrPort(b2)}}}
	b.Peers = []PeerConfig{{Name: "site-a", PublicKey: ka.Public(), OverlayAddr: a.OverlayAddr, Prefixes: a.LANPrefixes,
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.11.1:51820"), netip.MustParseAddrPort("198.18.12.1:51820")}}}
	t.Setenv(childLogEnv, "1")
	ca, err := startChild(t, nsA, a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := startChild(t, nsB, b)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ca.stop(t)
		cb.stop(t)
		for _, line := range strings.Split(ca.stderr.String(), "\n") {
			if strings.Contains(line, `"msg":"path`) {
				t.Log("site-a: " + line)
			}
		}
	}()

	up := func(m map[string]float64, uplink, remote string) bool {
		return m[pathSeries("causeway_path_up", "site-b", uplink, remote)] == 1
	}
	active := func(m map[string]float64, uplink, remote string) bool {
		return m[pathSeries("causeway_path_active", "site-b", uplink, remote)] == 1
	}
	var m map[string]float64
	if !waitFor(5*time.Second, func() bool {
		m = scrape(t, nsA)
		return up(m, "wan1", b1) && up(m, "wan2", b2)
	}) {
		t.Fatalf("paths not up:\n%v", m)
	}
	if !active(m, "wan1", b1) || up(m, "wan1", b2) || up(m, "wan2", b1) {
		t.Fatalf("want wan1 active and the cross paths not up:\n%v", m)
	}
	if _, ok := m[pathSeries("causeway_path_loss_ratio", "site-b", "wan1", b1)]; !ok {
		t.Errorf("no loss series:\n%v", m)
	}
	if v, ok := m[`causeway_path_rtt_seconds{peer="site-b",remote="`+b1+`",stat="p50",uplink="wan1"}`]; !ok || v <= 0 || v > 0.1 {
		t.Errorf("rtt p50 of wan1 = %v, %v:\n%v", v, ok, m)
	}

	// The stream: a sender in a's namespace, a receiver in b's, both on
	// the overlay addresses.
	var recv, send net.PacketConn
	inNetns(t, nsB, func() (err error) { recv, err = net.ListenPacket("udp4", "100.64.9.2:7000"); return })
	inNetns(t, nsA, func() (err error) { send, err = net.ListenPacket("udp4", "100.64.9.1:0"); return })
	defer send.Close()
	defer recv.Close()
	var (
		got            []arrival // written by the receiver until it is joined
		sender, reader sync.WaitGroup
		stop           = make(chan struct{})
	)
	reader.Add(1)
	sender.Add(1)
	go func() {
		defer reader.Done()
		buf := make([]byte, 64)
		for {
			n, _, err := recv.ReadFrom(buf)
			if err != nil {
				return
			}
			if n >= 8 {
				got = append(got, arrival{seq: binary.BigEndian.Uint64(buf), at: time.Now()})
			}
		}
	}()
	go func() {
		defer sender.Done()
		dst := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("100.64.9.2:7000"))
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
	time.Sleep(time.Second)

	// Cut wan1 at b's end: everything in and out of b1 is dropped.
	changesBefore := pathChanges(scrape(t, nsA))
	nft := func(script string) {
		cmd := exec.Command("ip", "netns", "exec", nsB, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft: %v\n%s", err, out)
		}
	}
	nft(`table inet cwcut {
	chain in { type filter hook input priority 0; policy accept; iifname "b1" drop; }
	chain out { type filter hook output priority 0; policy accept; oifname "b1" drop; }
}`)
	cut := time.Now()
	time.Sleep(2 * time.Second)
	m = scrape(t, nsA)
	if !active(m, "wan2", b2) || up(m, "wan1", b1) {
		t.Errorf("after the cut: want wan2 active and wan1 not up:\n%v", m)
	}
	if m[`causeway_path_changes_total{reason="down"}`] < 1 {
		t.Errorf("no move counted as down:\n%v", m)
	}
	changesCut := pathChanges(m)

	// Restore, and watch for flapping over the next 5 s.
	nft("delete table inet cwcut")
	restored := time.Now()
	time.Sleep(5 * time.Second)
	m = scrape(t, nsA)
	flaps := pathChanges(m) - changesCut
	close(stop)
	sender.Wait()
	time.Sleep(50 * time.Millisecond) // the last datagrams in flight
	recv.Close()
	reader.Wait()
	if !up(m, "wan1", b1) {
		t.Errorf("wan1 did not come back up:\n%v", m)
	}

	// The longest silence at b around the cut, and the stream after it.
	var gap, seqGap time.Duration
	var last arrival
	var after int
	for _, r := range got {
		if !last.at.IsZero() && r.at.After(cut.Add(-time.Second)) && r.at.Before(restored) {
			gap = max(gap, r.at.Sub(last.at))
			if r.seq > last.seq {
				seqGap = max(seqGap, time.Duration(r.seq-last.seq)*10*time.Millisecond)
			}
		}
		if r.at.After(cut.Add(1500*time.Millisecond)) && r.at.Before(restored) {
			after++
		}
		last = r
	}
	t.Logf("failover: longest gap at the receiver %v (sequence gap %v); moves during the cut %v; moves in the 5 s after restoring %v",
		gap.Round(time.Millisecond), seqGap, changesCut-changesBefore, flaps)
	if gap > time.Second || seqGap > time.Second {
		t.Errorf("gap %v / sequence gap %v, want at most 1 s", gap, seqGap)
	}
	if after < 30 {
		t.Errorf("only %d datagrams arrived on wan2 in the 0.5 s before restoring", after)
	}
	if changesCut-changesBefore != 1 {
		t.Errorf("%v moves during the cut, want 1", changesCut-changesBefore)
	}
	if flaps > 1 {
		t.Errorf("%v moves in the 5 s after restoring, want at most 1", flaps)
	}

	// A probe with a bad MAC, from b's wan2 address to a's wan2 socket.
	badBefore := m[`causeway_probe_rejected_total{reason="bad_mac"}`]
	keys, err := probes.NewKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	pkt, err := probes.Marshal(nil, probes.Packet{Kind: probes.KindRequest, Path: 1, Seq: 1}, keys)
	if err != nil {
		t.Fatal(err)
	}
	pkt[probes.Size-1] ^= 0xff
	var c net.PacketConn
	inNetns(t, nsB, func() (err error) { c, err = net.ListenPacket("udp4", "198.18.12.2:0"); return })
	defer c.Close()
	if _, err := c.WriteTo(pkt, net.UDPAddrFromAddrPort(netip.MustParseAddrPort("198.18.12.1:51820"))); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := c.ReadFrom(make([]byte, 64)); !errors.Is(err, os.ErrDeadlineExceeded) || n != 0 {
		t.Errorf("a probe with a bad MAC was answered (%d bytes, %v)", n, err)
	}
	if !waitFor(2*time.Second, func() bool {
		m = scrape(t, nsA)
		return m[`causeway_probe_rejected_total{reason="bad_mac"}`] == badBefore+1
	}) {
		t.Errorf("bad MAC not counted: %v -> %v", badBefore, m[`causeway_probe_rejected_total{reason="bad_mac"}`])
	}
}
