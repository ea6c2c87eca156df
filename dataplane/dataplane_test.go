package dataplane

import (
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/causeway-net/causeway/dataplane/wgkey"
)

func mustKey(t testing.TB) wgkey.PublicKey {
	t.Helper()
	k, err := wgkey.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestUAPISetDiff(t *testing.T) {
	a, b, c := mustKey(t), mustKey(t), mustKey(t)
	ep := netip.MustParseAddrPort("198.18.2.2:51820")
	have := map[wgkey.PublicKey]Peer{
		a: {PublicKey: a, Endpoint: ep, AllowedIPs: []netip.Prefix{pfx("10.20.0.0/24")}},
		b: {PublicKey: b},
	}
	want := []Peer{
		{PublicKey: a, Endpoint: ep, AllowedIPs: []netip.Prefix{pfx("10.20.0.0/24"), pfx("100.64.0.2/32")}, Keepalive: 25 * time.Second},
		{PublicKey: c, Endpoint: netip.MustParseAddrPort("198.18.3.2:51820")},
	}
	got := uapiSet(nil, 0, have, want)
	for _, line := range []string{
		"public_key=" + b.HexString() + "\nremove=true\n",
		// A kept peer gains what it did not have, and keeps the rest
		// without a moment in which it is unrouted.
		"public_key=" + a.HexString() + "\npersistent_keepalive_interval=25\nallowed_ip=100.64.0.2/32\n",
		"public_key=" + c.HexString() + "\nendpoint=198.18.3.2:51820\n",
	} {
		if !strings.Contains(got, line) {
			t.Errorf("missing %q in:\n%s", line, got)
		}
	}
	if strings.Contains(got, "public_key="+a.HexString()+"\npersistent_keepalive_interval=25\nreplace_allowed_ips") {
		t.Errorf("a kept peer's prefixes replaced (unrouted for a moment):\n%s", got)
	}
	// An unchanged endpoint must not be rewritten: that would undo roaming.
	if strings.Contains(got, "endpoint=198.18.2.2") {
		t.Errorf("unchanged endpoint rewritten:\n%s", got)
	}
	if strings.Contains(got, "private_key") {
		t.Error("peer-only update touched the private key")
	}
}

// TestUAPIMovePrefix moves a prefix between two kept peers: the gain comes
// before the loss, so the prefix is always routed to one of them.
func TestUAPIMovePrefix(t *testing.T) {
	a, b := mustKey(t), mustKey(t)
	lan, oa, ob := pfx("10.10.0.0/24"), pfx("100.64.0.1/32"), pfx("100.64.0.2/32")
	have := map[wgkey.PublicKey]Peer{
		a: {PublicKey: a, AllowedIPs: []netip.Prefix{oa, lan}},
		b: {PublicKey: b, AllowedIPs: []netip.Prefix{ob}},
	}
	want := []Peer{{PublicKey: a, AllowedIPs: []netip.Prefix{oa}}, {PublicKey: b, AllowedIPs: []netip.Prefix{ob, lan}}}
	got := uapiSet(nil, 0, have, want)
	gain := strings.Index(got, "public_key="+b.HexString()+"\npersistent_keepalive_interval=0\nallowed_ip=10.10.0.0/24\n")
	loss := strings.Index(got, "public_key="+a.HexString()+"\nallowed_ip=-10.10.0.0/24\n")
	if gain < 0 || loss < 0 || loss < gain || strings.Contains(got, "replace_allowed_ips") {
		t.Errorf("move of %s from a to b:\n%s", lan, got)
	}
}

func TestParseUAPIGet(t *testing.T) {
	a, b := mustKey(t), mustKey(t)
	raw := a.Raw()
	in := "private_key=" + strings.Repeat("ab", 32) + "\nlisten_port=51820\n" +
		"public_key=" + hex.EncodeToString(raw[:]) + "\nendpoint=198.18.2.2:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=100\nrx_bytes=200\n" +
		"public_key=" + b.HexString() + "\ntx_bytes=0\nrx_bytes=0\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\nerrno=0\n"
	got, err := parseUAPIGet(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d peers", len(got))
	}
	if got[0].PublicKey != a || got[0].WireTxBytes != 100 || got[0].WireRxBytes != 200 ||
		got[0].Endpoint.String() != "198.18.2.2:51820" || got[0].LastHandshake.Unix() != 1700000000 {
		t.Errorf("peer 0: %+v", got[0])
	}
	if got[1].PublicKey != b || !got[1].LastHandshake.IsZero() {
		t.Errorf("peer 1: %+v", got[1])
	}
	if _, err := parseUAPIGet("public_key=zz\n"); err == nil {
		t.Error("bad key accepted")
	}
	if _, err := parseUAPIGet("public_key=" + b.HexString() + "\ntx_bytes=-1\n"); err == nil {
		t.Error("bad counter accepted")
	}
}

func ipv4Packet(src, dst string, size int) []byte {
	p := make([]byte, size)
	p[0] = 0x45
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	return p
}

func TestPrefixTableLongestMatch(t *testing.T) {
	wide, narrow := &peerCounters{}, &peerCounters{}
	tab := newPrefixTable(map[netip.Prefix]*peerCounters{
		pfx("10.0.0.0/8"):   wide,
		pfx("10.20.0.0/24"): narrow,
	})
	for addr, want := range map[string]*peerCounters{
		"10.20.0.7": narrow, "10.21.0.7": wide, "11.0.0.1": nil, "::1": nil,
	} {
		if got := tab.lookup(netip.MustParseAddr(addr)); got != want {
			t.Errorf("lookup(%s) = %p, want %p", addr, got, want)
		}
	}
	if a := packetAddr([]byte{0x45, 0}, true); a.IsValid() {
		t.Error("short packet yielded an address")
	}
}

func TestCountingTUNAttributesPackets(t *testing.T) {
	inner := tuntest.NewChannelTUN()
	ct := newCountingTUN(inner.TUN())
	a, b := mustKey(t), mustKey(t)
	ct.setPeers([]Peer{
		{PublicKey: a, AllowedIPs: []netip.Prefix{pfx("10.20.0.0/24")}},
		{PublicKey: b, AllowedIPs: []netip.Prefix{pfx("10.30.0.0/24")}},
	})

	// Outbound: the kernel hands us packets for both peers and one for nobody.
	go func() {
		inner.Outbound <- ipv4Packet("10.10.0.10", "10.20.0.10", 100)
		inner.Outbound <- ipv4Packet("10.10.0.10", "10.30.0.10", 60)
		inner.Outbound <- ipv4Packet("10.10.0.10", "10.99.0.1", 40)
	}()
	bufs := [][]byte{make([]byte, 2000)}
	sizes := []int{0}
	for range 3 {
		if _, err := ct.Read(bufs, sizes, 0); err != nil {
			t.Fatal(err)
		}
	}
	// Inbound: decrypted packets from peer a go to the kernel.
	done := make(chan struct{})
	go func() {
		for range 2 {
			<-inner.Inbound
		}
		close(done)
	}()
	if _, err := ct.Write([][]byte{ipv4Packet("10.20.0.10", "10.10.0.10", 1000), ipv4Packet("10.20.0.11", "10.10.0.10", 500)}, 0); err != nil {
		t.Fatal(err)
	}
	<-done

	if got, want := ct.counters(a), (Counters{TxPackets: 1, TxBytes: 100, RxPackets: 2, RxBytes: 1500}); got != want {
		t.Errorf("peer a: %+v, want %+v", got, want)
	}
	if got, want := ct.counters(b), (Counters{TxPackets: 1, TxBytes: 60}); got != want {
		t.Errorf("peer b: %+v, want %+v", got, want)
	}
	if got := ct.unrouted.load(); got.TxPackets != 1 || got.TxBytes != 40 {
		t.Errorf("unrouted: %+v", got)
	}
	// Reconfiguring keeps the counters of a peer that stays.
	ct.setPeers([]Peer{{PublicKey: a, AllowedIPs: []netip.Prefix{pfx("10.20.0.0/16")}}})
	if got := ct.counters(a); got.TxBytes != 100 {
		t.Errorf("counters reset by reconfiguration: %+v", got)
	}
}

// benchTUN is a counting TUN with 50 peers: 10.<i>.0.0/16 and
// 100.64.0.<i>/32 for peer i.
func benchTUN(b *testing.B) *countingTUN {
	ct := newCountingTUN(tuntest.NewChannelTUN().TUN())
	var peers []Peer
	for i := range 50 {
		peers = append(peers, Peer{PublicKey: mustKey(b), AllowedIPs: []netip.Prefix{
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16),
			netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 0, byte(i)}), 32),
		}})
	}
	ct.setPeers(peers)
	return ct
}

func BenchmarkCount(b *testing.B) {
	ct := benchTUN(b)
	bufs := make([][]byte, 64)
	sizes := make([]int, 64)
	for i := range bufs {
		bufs[i] = ipv4Packet("10.10.0.1", "10.7.1.1", 1400)
		sizes[i] = 1400
	}
	b.SetBytes(64 * 1400)
	for b.Loop() {
		ct.count(bufs, sizes, 0, true)
	}
}
