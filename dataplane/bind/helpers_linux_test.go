package bind

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/causeway-net/causeway/dataplane/bind/bindtest"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

const wgPort = 51820

// leakCheck fails t if goroutines started during the test outlive it.
// Register it first, so that it runs after every other cleanup.
func leakCheck(t *testing.T) {
	start := runtime.NumGoroutine()
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		for range 500 {
			if runtime.NumGoroutine() <= start {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		var b bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Fatalf("goroutine leak: %d at start, %d at end:\n%s", start, runtime.NumGoroutine(), b.String())
	})
}

func newKey(t testing.TB) wgkey.PrivateKey {
	t.Helper()
	k, err := wgkey.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// wgLog collects what a WireGuard device logs.
type wgLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *wgLog) logger(prefix string) *device.Logger {
	f := func(format string, args ...any) {
		l.mu.Lock()
		l.lines = append(l.lines, prefix+fmt.Sprintf(format, args...))
		l.mu.Unlock()
	}
	return &device.Logger{Verbosef: f, Errorf: f}
}

func (l *wgLog) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, substr) {
			n++
		}
	}
	return n
}

// node is a WireGuard device over a channel TUN.
type node struct {
	dev *device.Device
	tun *tuntest.ChannelTUN
	key wgkey.PrivateKey
	ip  netip.Addr // overlay address
}

// startNode starts a device with b in ns (so that the bind's sockets are
// created there), listening on wgPort.
func startNode(t *testing.T, ns *bindtest.Netns, b conn.Bind, key wgkey.PrivateKey, ip netip.Addr, log *device.Logger) *node {
	t.Helper()
	n := &node{tun: tuntest.NewChannelTUN(), key: key, ip: ip}
	n.dev = startDevice(t, ns, n.tun.TUN(), b, key, log)
	return n
}

func startDevice(t testing.TB, ns *bindtest.Netns, td tun.Device, b conn.Bind, key wgkey.PrivateKey, log *device.Logger) *device.Device {
	t.Helper()
	if log == nil {
		log = device.NewLogger(device.LogLevelError, "")
	}
	dev := device.NewDevice(&quietTUN{Device: td, events: make(chan tun.Event)}, b, log)
	t.Cleanup(dev.Close)
	ns.MustDo(func() error {
		if err := dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", key.HexString(), wgPort)); err != nil {
			return err
		}
		return dev.Up()
	})
	return dev
}

// addPeer configures other as a peer of n, with an endpoint if ep is valid.
func (n *node) addPeer(t *testing.T, other *node, ep netip.AddrPort) {
	t.Helper()
	cfg := fmt.Sprintf("public_key=%s\nallowed_ip=%s/32\n", other.key.Public().HexString(), other.ip)
	if ep.IsValid() {
		cfg += fmt.Sprintf("endpoint=%s\n", ep)
	}
	if err := n.dev.IpcSet(cfg); err != nil {
		t.Fatal(err)
	}
}

// packet is an IPv4/UDP packet from src to dst whose payload starts with
// seq.
func packet(src, dst netip.Addr, seq uint32) []byte {
	p := make([]byte, 100)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8], p[9] = 64, 17
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint32(p[28:], seq)
	return p
}

func seqOf(p []byte) uint32 { return binary.BigEndian.Uint32(p[28:]) }

// stream sends packets first..first+n-1 from a to b, calling between(i)
// before packet i (to act mid-stream), and returns the sequence numbers b
// received within the deadline.
func stream(t *testing.T, a, b *node, first uint32, n int, gap time.Duration, between func(i int)) map[uint32]bool {
	t.Helper()
	got := map[uint32]bool{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		timeout := time.NewTimer(5 * time.Second)
		defer timeout.Stop()
		for len(got) < n {
			select {
			case p := <-b.tun.Inbound:
				if s := seqOf(p); s >= first && s < first+uint32(n) {
					got[s] = true
				}
			case <-timeout.C:
				return
			}
		}
	}()
	for i := range n {
		if between != nil {
			between(i)
		}
		a.tun.Outbound <- packet(a.ip, b.ip, first+uint32(i))
		if gap > 0 {
			time.Sleep(gap)
		}
	}
	<-done
	return got
}

// exchange sends n packets from a to b and requires all of them.
func exchange(t *testing.T, a, b *node, first uint32, n int) {
	t.Helper()
	if got := stream(t, a, b, first, n, 0, nil); len(got) != n {
		t.Fatalf("%d of %d packets from %s arrived", len(got), n, a.ip)
	}
}

// waitFor polls cond for up to 3 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 300 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// quietTUN hides the TUN's events from WireGuard, which would otherwise
// bring the device up (and open the bind) on one of its own goroutines,
// outside the namespace; the test brings it up in the namespace instead.
type quietTUN struct {
	tun.Device
	events chan tun.Event
	once   sync.Once
}

func (q *quietTUN) Events() <-chan tun.Event { return q.events }

func (q *quietTUN) Close() error {
	err := q.Device.Close()
	q.once.Do(func() { close(q.events) })
	return err
}
