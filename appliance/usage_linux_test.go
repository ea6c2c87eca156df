package appliance

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The tests below run each appliance as a child copy of this test binary
// inside its namespace (so that every thread of it, WireGuard's included,
// is there), with its usage pipeline. A child ships to a contract server
// whose listening socket the test opens inside the child's namespace.

const (
	usageChildEnv    = "CAUSEWAY_TEST_USAGE_CHILD"    // the config file
	usageURLEnv      = "CAUSEWAY_TEST_USAGE_URL"      // contract server; empty: no usage pipeline
	usageIntervalEnv = "CAUSEWAY_TEST_USAGE_INTERVAL" // the pipeline's interval
)

func init() {
	if path := os.Getenv(usageChildEnv); path != "" {
		os.Exit(runUsageChild(path))
	}
}

// runUsageChild runs an appliance with its usage pipeline. SIGUSR1
// restarts the appliance in place (a new device, counters from 0);
// SIGUSR2 starts or stops the benchmark's load: a second meter cutting a
// record every millisecond into its own spool, and a reader of the
// counters every 100 µs; SIGTERM stops the appliance, cuts the final record
// and waits (5 s at most) until the spool is shipped.
func runUsageChild(path string) int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	cfg, err := LoadConfig(path)
	if err != nil {
		return fail(err)
	}
	var u *usage
	if url := os.Getenv(usageURLEnv); url != "" {
		c, err := NewClient(ClientOptions{Controller: url, Credential: "cwd_test-credential"})
		if err != nil {
			return fail(err)
		}
		iv, _ := time.ParseDuration(os.Getenv(usageIntervalEnv))
		if u, err = startUsage(usageOptions{StateDir: cfg.StateDir, Send: c.ReportUsage, Interval: iv, MaxBackoff: 100 * time.Millisecond}); err != nil {
			return fail(err)
		}
	}
	a, err := Start(cfg, nil)
	if err != nil {
		return fail(err)
	}
	if u != nil {
		u.attach(a)
	}
	fmt.Println("ready")
	var load *usage
	var stopReader chan struct{}
	var reads atomic.Uint64
	reader := func(a *Appliance, stop chan struct{}) {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				a.usageCounters()
				reads.Add(1)
			}
		}
	}
	ackAll := func(_ context.Context, recs []UsageRecord) ([]uint64, error) { return seqsOf(recs), nil }
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGUSR1, syscall.SIGUSR2)
	for s := range sig {
		switch s {
		case syscall.SIGUSR1:
			a.Close()
			if a, err = Start(cfg, nil); err != nil {
				return fail(err)
			}
			if u != nil {
				u.attach(a)
			}
			fmt.Println("restarted")
		case syscall.SIGUSR2:
			if load == nil {
				if load, err = startUsage(usageOptions{StateDir: filepath.Join(cfg.StateDir, "load"), Send: ackAll, Interval: time.Millisecond}); err != nil {
					return fail(err)
				}
				load.meter.attach(a)
				stopReader = make(chan struct{})
				reads.Store(0)
				go reader(a, stopReader)
				fmt.Println("load on")
			} else {
				close(stopReader)
				load.close()
				st := load.spool.stats()
				load = nil
				fmt.Println("load off", st.Appended, reads.Load())
			}
		case syscall.SIGTERM:
			err := a.Close()
			if u != nil {
				u.meter.close()
				waitFor(5*time.Second, func() bool { return u.spool.stats().Records == 0 })
				u.close()
			}
			if err != nil {
				return fail(err)
			}
			return 0
		}
	}
	return 0
}

func startUsageChild(t testing.TB, ns string, cfg *Config, url string, interval time.Duration) *child {
	t.Helper()
	c, err := spawnChild(t, ns, cfg, usageChildEnv, usageURLEnv+"="+url, usageIntervalEnv+"="+interval.String())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// signal sends s to the child and waits for its answer line, which it
// returns.
func (c *child) signal(t testing.TB, s syscall.Signal, want string) string {
	t.Helper()
	c.cmd.Process.Signal(s)
	line, err := c.stdout.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, want) {
		c.cmd.Process.Kill()
		c.cmd.Wait()
		t.Fatalf("child: got %q (%v), want %q\n%s", line, err, want, c.stderr.String())
	}
	return strings.TrimSpace(line)
}

// usageSites are two sites joined by a veth underlay (198.18.21.0/24).
// a knows b's site id (as from a netmap); b's static config does not say,
// so b meters a's traffic against the peer's name.
func usageSites(t testing.TB) (nsA, nsB string, a, b *Config) {
	t.Helper()
	nsA, nsB = newNetns(t), newNetns(t)
	run(t, "ip", "-n", nsA, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0", "netns", nsB)
	run(t, "ip", "-n", nsA, "addr", "add", "198.18.21.1/24", "dev", "wan0")
	run(t, "ip", "-n", nsB, "addr", "add", "198.18.21.2/24", "dev", "wan0")
	run(t, "ip", "-n", nsA, "link", "set", "wan0", "up")
	run(t, "ip", "-n", nsB, "link", "set", "wan0", "up")
	mk := func(name, overlay, lan string) *Config {
		return &Config{Name: name, StateDir: filepath.Join(t.TempDir(), name), Interface: "cw0",
			OverlayAddr: netip.MustParseAddr(overlay), ListenPort: 51820,
			LANPrefixes: []netip.Prefix{netip.MustParsePrefix(lan)}, HTTPListen: "127.0.0.1:9180"}
	}
	a, b = mk("site-a", "100.64.21.1", "10.121.0.0/24"), mk("site-b", "100.64.21.2", "10.122.0.0/24")
	ka, err := LoadOrCreateKey(a.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := LoadOrCreateKey(b.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	a.Peers = []PeerConfig{{Name: "site-b", Site: "st_b", PublicKey: kb.Public(), OverlayAddr: b.OverlayAddr,
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.21.2:51820")}, Prefixes: b.LANPrefixes}}
	b.Peers = []PeerConfig{{Name: "site-a", PublicKey: ka.Public(), OverlayAddr: a.OverlayAddr,
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.21.1:51820")}, Prefixes: a.LANPrefixes}}
	return nsA, nsB, a, b
}

// listenIn opens a socket inside ns (sockets keep their namespace
// whatever thread uses them later).
func listenIn(t *testing.T, ns, network, addr string) (pc net.PacketConn, ln net.Listener) {
	t.Helper()
	inNetns(t, ns, func() (err error) {
		if network == "tcp" {
			ln, err = net.Listen(network, addr)
		} else {
			pc, err = net.ListenPacket(network, addr)
		}
		return
	})
	t.Cleanup(func() {
		if pc != nil {
			pc.Close()
		}
	})
	return pc, ln
}

// stream sends n datagrams of payload bytes from src to dst, 1 ms apart,
// and waits until dst has received them all. It returns the IP bytes
// sent: n * (payload + 28).
func stream(t *testing.T, src, dst net.PacketConn, n, payload int) uint64 {
	t.Helper()
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for got.Load() < int64(n*payload) {
			dst.SetReadDeadline(time.Now().Add(10 * time.Second))
			k, _, err := dst.ReadFrom(buf)
			if err != nil {
				return
			}
			got.Add(int64(k))
		}
	}()
	buf := make([]byte, payload)
	for range n {
		if _, err := src.WriteTo(buf, dst.LocalAddr()); err != nil {
			t.Fatalf("sending to %s: %v", dst.LocalAddr(), err)
		}
		time.Sleep(time.Millisecond)
	}
	<-done
	if got.Load() != int64(n*payload) {
		t.Fatalf("%s received %d of %d bytes", dst.LocalAddr(), got.Load(), n*payload)
	}
	return uint64(n * (payload + 28))
}

// TestUsageRealDataplane meters two real appliances (WireGuard over a
// TUN) while known datagrams cross the overlay both ways, restarts one of
// them in place in the middle (a new device whose counters start at 0),
// and ships to contract servers: each ledger holds exactly the IP bytes
// sent, per peer site and direction.
func TestUsageRealDataplane(t *testing.T) {
	requireRoot(t)
	nsA, nsB, cfgA, cfgB := usageSites(t)
	_, lnA := listenIn(t, nsA, "tcp", "127.0.0.1:0")
	_, lnB := listenIn(t, nsB, "tcp", "127.0.0.1:0")
	srvA, srvB := newContractServerOn(t, lnA), newContractServerOn(t, lnB)
	a := startUsageChild(t, nsA, cfgA, srvA.URL, 100*time.Millisecond)
	b := startUsageChild(t, nsB, cfgB, srvB.URL, 100*time.Millisecond)

	var aToB, bToA uint64
	sendA, _ := listenIn(t, nsA, "udp4", "100.64.21.1:0")
	recvB, _ := listenIn(t, nsB, "udp4", "100.64.21.2:7000")
	sendB, _ := listenIn(t, nsB, "udp4", "100.64.21.2:0")
	recvA, _ := listenIn(t, nsA, "udp4", "100.64.21.1:7001")
	aToB += stream(t, sendA, recvB, 200, 1000)
	bToA += stream(t, sendB, recvA, 80, 500)

	// a restarts in place: the old device's last counts are read when
	// the new one is attached; the new one counts from 0. a's sockets
	// bound to its overlay address went with the old interface.
	a.signal(t, syscall.SIGUSR1, "restarted")
	sendA, _ = listenIn(t, nsA, "udp4", "100.64.21.1:0")
	recvA, _ = listenIn(t, nsA, "udp4", "100.64.21.1:7002")
	aToB += stream(t, sendA, recvB, 120, 1200)
	bToA += stream(t, sendB, recvA, 60, 300)

	// /metrics of the running appliance shows the meter.
	time.Sleep(250 * time.Millisecond) // a cut or two
	m := scrape(t, nsA)
	if v := m[`causeway_usage_bytes_total{direction="tx",meter="overlay"}`]; v <= 0 || v > float64(aToB) {
		t.Errorf("causeway_usage_bytes_total tx = %v, want up to %d", v, aToB)
	}
	if v := m[`causeway_usage_records_total`]; v < 1 {
		t.Errorf("causeway_usage_records_total = %v", v)
	}
	if _, ok := m[`causeway_usage_shipped_total{result="acked"}`]; !ok {
		t.Errorf("no usage series on /metrics: %v", m)
	}

	a.stop(t)
	b.stop(t)

	ledgerA, _ := srvA.ledger()
	ledgerB, _ := srvB.ledger()
	for _, c := range []struct {
		name string
		got  usageSum
		want uint64
	}{
		{"a: overlay tx to st_b", ledgerA[ov("st_b", DirTx)], aToB},
		{"a: overlay rx from st_b", ledgerA[ov("st_b", DirRx)], bToA},
		{"b: overlay rx from site-a", ledgerB[ov("site-a", DirRx)], aToB},
		{"b: overlay tx to site-a", ledgerB[ov("site-a", DirTx)], bToA},
	} {
		if c.got.bytes != c.want {
			t.Errorf("%s: %d bytes recorded, %d sent", c.name, c.got.bytes, c.want)
		}
	}
	if p := ledgerA[ov("st_b", DirTx)].packets; p != 200+120 {
		t.Errorf("a: %d packets to st_b, want 320", p)
	}
	if len(ledgerA) != 2 || len(ledgerB) != 2 {
		t.Errorf("ledgers hold more than the streams: %v / %v", ledgerA, ledgerB)
	}
	recsA, recsB := srvA.records(), srvB.records()
	checkRecords(t, recsA)
	checkRecords(t, recsB)
	t.Logf("a: %d records, b: %d records; a->b %d bytes, b->a %d bytes", len(recsA), len(recsB), aToB, bToA)
}
