package dataplane

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
)

func TestSnapshotKeepsRemovedPeers(t *testing.T) {
	ct := newCountingTUN(tuntest.NewChannelTUN().TUN())
	a, b := mustKey(t), mustKey(t)
	ct.setPeers([]Peer{{PublicKey: a, AllowedIPs: []netip.Prefix{pfx("10.20.0.0/24")}}, {PublicKey: b, AllowedIPs: []netip.Prefix{pfx("10.30.0.0/24")}}})
	ct.count([][]byte{ipv4Packet("10.10.0.1", "10.20.0.1", 100), ipv4Packet("10.10.0.1", "10.30.0.1", 60)}, []int{100, 60}, 0, true)
	ct.setPeers([]Peer{{PublicKey: a, AllowedIPs: []netip.Prefix{pfx("10.20.0.0/24")}}})
	s := ct.snapshot()
	if s[a].TxBytes != 100 || s[b].TxBytes != 60 || len(s) != 2 {
		t.Errorf("snapshot %+v: want a 100 and the removed b 60", s)
	}
}

// BenchmarkCountWhileRead is the per-packet cost of counting (a batch of
// 64 packets over 50 peers, as BenchmarkCount) alone, with a reader
// taking a snapshot of every counter each millisecond (10,000 times the
// usage meter's default rate), and with one taking snapshots in a tight
// loop on the other core (the worst any reader can do: the cache lines
// the data path adds to bounce between the cores). Each iteration
// measures all three; the figures are medians.
func BenchmarkCountWhileRead(b *testing.B) {
	ct := benchTUN(b)
	bufs := make([][]byte, 64)
	sizes := make([]int, 64)
	for i := range bufs {
		// Spread over the peers, so that the reader touches the lines
		// the writer adds to.
		bufs[i] = ipv4Packet("10.99.0.1", netip.AddrFrom4([4]byte{10, byte(i % 50), 1, 1}).String(), 1400)
		sizes[i] = 1400
	}
	const batches = 20000
	perPacket := func() float64 {
		t0 := time.Now()
		for range batches {
			ct.count(bufs, sizes, 0, true)
		}
		return float64(time.Since(t0).Nanoseconds()) / (batches * 64)
	}
	withReader := func(pause time.Duration) (nsPkt, readsPerSec float64) {
		var stop atomic.Bool
		var reads atomic.Uint64
		done := make(chan struct{})
		go func() {
			for !stop.Load() {
				ct.snapshot()
				reads.Add(1)
				if pause > 0 {
					time.Sleep(pause)
				}
			}
			close(done)
		}()
		t0 := time.Now()
		x := perPacket()
		stop.Store(true)
		<-done
		return x, float64(reads.Load()) / time.Since(t0).Seconds()
	}
	var alone, paced, spin, pacedRatio, spinRatio, spinRate []float64
	for b.Loop() {
		a := perPacket()
		p, _ := withReader(time.Millisecond)
		s, r := withReader(0)
		alone, paced, spin = append(alone, a), append(paced, p), append(spin, s)
		pacedRatio, spinRatio, spinRate = append(pacedRatio, p/a), append(spinRatio, s/a), append(spinRate, r)
	}
	med := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(med(alone), "ns/pkt-alone")
	b.ReportMetric(med(paced), "ns/pkt-1kHz-reader")
	b.ReportMetric(med(pacedRatio), "ratio-1kHz")
	b.ReportMetric(med(spin), "ns/pkt-spinning-reader")
	b.ReportMetric(med(spinRatio), "ratio-spinning")
	b.ReportMetric(med(spinRate), "spinning-reads/s")
}
