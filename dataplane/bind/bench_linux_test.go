package bind

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"

	"github.com/causeway-net/causeway/dataplane/bind/bindtest"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

const (
	benchMTU    = 1420 // inner MTU: 1420 + 32 (WireGuard) + 28 (UDP/IPv4) = 1480 on the veth
	benchWindow = time.Second
)

// benchPair is two WireGuard devices, A in pair.A sending bulk traffic to
// B in pair.B, over the given binds.
type benchPair struct {
	name   string
	tx, rx *bindtest.BulkTUN
}

func newBenchPair(b *testing.B, pair *bindtest.Pair, name string, bindA, bindB conn.Bind, port uint16) *benchPair {
	b.Helper()
	keyA, keyB := newKey(b), newKey(b)
	p := &benchPair{
		name: name,
		tx:   bindtest.NewBulkTUN(benchMTU, benchMTU, conn.IdealBatchSize, overlayA, overlayB),
		rx:   bindtest.NewBulkTUN(benchMTU, benchMTU, conn.IdealBatchSize, overlayB, overlayA),
	}
	// With this bind, each side's peer is on a configured path, as in
	// production (Send then goes through the peer's active path).
	for _, c := range []struct {
		bind   conn.Bind
		peer   wgkey.PublicKey
		remote netip.Addr
	}{{bindA, keyB.Public(), pair.AddrB}, {bindB, keyA.Public(), pair.AddrA}} {
		if mb, ok := c.bind.(*Bind); ok {
			if err := mb.SetPaths(mb.AddPeer(c.peer), []PathID{{Uplink: 0, Remote: netip.AddrPortFrom(c.remote, port)}}); err != nil {
				b.Fatal(err)
			}
		}
	}
	devA := startBenchDevice(b, pair.A, p.tx, bindA, keyA, port)
	devB := startBenchDevice(b, pair.B, p.rx, bindB, keyB, port)
	peer := func(key interface{ HexString() string }, ip, ep netip.Addr) string {
		return fmt.Sprintf("public_key=%s\nallowed_ip=%s/32\nendpoint=%s\n", key.HexString(), ip, netip.AddrPortFrom(ep, port))
	}
	if err := devA.IpcSet(peer(keyB.Public(), overlayB, pair.AddrB)); err != nil {
		b.Fatal(err)
	}
	if err := devB.IpcSet(peer(keyA.Public(), overlayA, pair.AddrA)); err != nil {
		b.Fatal(err)
	}
	// Handshake, and check that traffic flows.
	p.tx.Start()
	deadline := time.Now().Add(5 * time.Second)
	for n, _ := p.rx.Received(); n < 1000; n, _ = p.rx.Received() {
		if time.Now().After(deadline) {
			b.Fatalf("%s: no traffic", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.tx.Stop()
	return p
}

func startBenchDevice(b *testing.B, ns *bindtest.Netns, tun *bindtest.BulkTUN, bind conn.Bind, key wgkey.PrivateKey, port uint16) *device.Device {
	b.Helper()
	dev := device.NewDevice(tun, bind, device.NewLogger(device.LogLevelError, ""))
	b.Cleanup(dev.Close)
	ns.MustDo(func() error {
		if err := dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", key.HexString(), port)); err != nil {
			return err
		}
		return dev.Up()
	})
	return dev
}

// measure runs bulk traffic for one window and returns the goodput
// (inner bytes delivered to B) in Mbit/s.
func (p *benchPair) measure() float64 {
	p.tx.Start()
	time.Sleep(100 * time.Millisecond) // reach a steady state
	_, b0 := p.rx.Received()
	t0 := time.Now()
	time.Sleep(benchWindow)
	_, b1 := p.rx.Received()
	el := time.Since(t0)
	p.tx.Stop()
	time.Sleep(50 * time.Millisecond) // drain
	return float64(b1-b0) * 8 / el.Seconds() / 1e6
}

// BenchmarkThroughput pushes bulk traffic between two WireGuard devices
// over a veth between two namespaces, with wireguard-go's StdNetBind and
// with this bind (one uplink, the peer on a configured path) on both
// ends. Each iteration measures both for one second each, in alternating
// order; the metrics are medians over the iterations. Run with e.g.
// -benchtime=7x.
func BenchmarkThroughput(b *testing.B) {
	bindtest.Require(b)
	pair := bindtest.NewPair(b)
	std := newBenchPair(b, pair, "std", conn.NewStdNetBind(), conn.NewStdNetBind(), 51820)

	bindA := mustNew(b, Options{Uplinks: []Uplink{{Name: "a", Interface: "a", Addr: pair.AddrA}}})
	bindB := mustNew(b, Options{Uplinks: []Uplink{{Name: "b", Interface: "b", Addr: pair.AddrB}}})
	mp := newBenchPair(b, pair, "multipath", bindA, bindB, 51821)

	var stdR, oursR, ratios []float64
	for i := 0; i < b.N; i++ {
		var s, o float64
		if i%2 == 0 {
			s, o = std.measure(), mp.measure()
		} else {
			o, s = mp.measure(), std.measure()
		}
		stdR, oursR, ratios = append(stdR, s), append(oursR, o), append(ratios, o/s)
		b.Logf("round %d: std %.0f Mbit/s, multipath %.0f Mbit/s, ratio %.3f", i+1, s, o, o/s)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(stdR), "std-Mbit/s")
	b.ReportMetric(median(oursR), "multipath-Mbit/s")
	b.ReportMetric(median(ratios), "ratio")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
