package appliance

import (
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkUsageForwarding measures what metering costs the forwarding
// path: bulk UDP from site a's overlay address to site b's through two
// real appliances, with and without load in a: a usage pipeline asked to
// cut a record every millisecond (reading the counters, building the
// record, fsyncing it into its own spool, shipping it to an in-process
// sender that acknowledges everything; fsync bounds the rate it reaches)
// and a reader of the counters every millisecond, 10,000 times the default
// rate. Each
// iteration measures both for one second, in alternating order; the
// figures are medians. Run as root with e.g. -benchtime=6x.
func BenchmarkUsageForwarding(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root (namespaces, TUN)")
	}
	nsA, nsB, cfgA, cfgB := usageSites(b)
	cfgA.HTTPListen, cfgB.HTTPListen = "", ""
	a := startUsageChild(b, nsA, cfgA, "", 0)
	bc := startUsageChild(b, nsB, cfgB, "", 0)
	defer bc.stop(b)
	defer a.stop(b)
	var send, recv net.PacketConn
	inNetns(b, nsA, func() (err error) { send, err = net.ListenPacket("udp4", "100.64.21.1:0"); return })
	inNetns(b, nsB, func() (err error) { recv, err = net.ListenPacket("udp4", "100.64.21.2:7000"); return })
	defer send.Close()
	defer recv.Close()
	if c, ok := recv.(*net.UDPConn); ok {
		c.SetReadBuffer(4 << 20)
	}
	var got atomic.Uint64
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := recv.ReadFrom(buf)
			if err != nil {
				return
			}
			got.Add(uint64(n))
		}
	}()
	payload := make([]byte, 1340-28)
	var stop atomic.Bool
	blast := func() {
		for !stop.Load() {
			send.WriteTo(payload, recv.LocalAddr())
		}
	}
	measure := func() float64 {
		stop.Store(false)
		done := make(chan struct{})
		go func() { blast(); close(done) }()
		time.Sleep(200 * time.Millisecond) // steady state
		g0, t0 := got.Load(), time.Now()
		time.Sleep(time.Second)
		g1, el := got.Load(), time.Since(t0)
		stop.Store(true)
		<-done
		time.Sleep(50 * time.Millisecond) // drain
		return float64(g1-g0) * 8 / el.Seconds() / 1e6
	}
	var readRates []float64
	withLoad := func() (float64, float64) {
		a.signal(b, syscall.SIGUSR2, "load on")
		t0 := time.Now()
		mbit := measure()
		f := strings.Fields(a.signal(b, syscall.SIGUSR2, "load off"))
		el := time.Since(t0).Seconds()
		recs, _ := strconv.ParseFloat(f[2], 64)
		reads, _ := strconv.ParseFloat(f[3], 64)
		readRates = append(readRates, reads/el)
		return mbit, recs / el
	}
	measure() // handshake, warm-up
	var off, on, ratios, rates []float64
	for i := 0; i < b.N; i++ {
		var x, y, r float64
		if i%2 == 0 {
			x = measure()
			y, r = withLoad()
		} else {
			y, r = withLoad()
			x = measure()
		}
		off, on, ratios, rates = append(off, x), append(on, y), append(ratios, y/x), append(rates, r)
		b.Logf("round %d: without metering %.0f Mbit/s, metered %.0f Mbit/s (%.0f records/s spooled, %.0f counter reads/s), ratio %.3f",
			i+1, x, y, r, readRates[len(readRates)-1], y/x)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(medianOf(off), "off-Mbit/s")
	b.ReportMetric(medianOf(on), "metered-Mbit/s")
	b.ReportMetric(medianOf(rates), "records/s")
	b.ReportMetric(medianOf(readRates), "reads/s")
	b.ReportMetric(medianOf(ratios), "ratio")
}

func medianOf(v []float64) float64 {
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
