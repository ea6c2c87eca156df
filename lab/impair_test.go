package lab

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestImpairLink(t *testing.T) {
	for _, tc := range []struct {
		node, dev, inet, subnet string
	}{
		{"office-1a", "wan1", "office-1a-wan1", "198.18.1.0/24"},
		{"office-1b", "wan2", "office-1b-wan2", "198.18.4.0/24"},
		{"vpc-1", "wan0", "vpc-1", "198.18.2.0/24"},
		{"inet", "office-1b-wan2", "office-1b-wan2", "198.18.4.0/24"},
	} {
		k, err := labTopology.impairLink(tc.node, tc.dev)
		if err != nil || k.inet != tc.inet || k.subnet != pfx(tc.subnet) || len(k.tun()) >= unix.IFNAMSIZ {
			t.Errorf("%s/%s: %+v, %v", tc.node, tc.dev, k, err)
		}
	}
	for _, bad := range [][2]string{{"home-1", "wan0"}, {"office-1a", "lan0"}, {"office-1a", "wan2"}, {"office-1", "wan1"}, {"nope", "wan1"}} {
		if _, err := labTopology.impairLink(bad[0], bad[1]); err == nil {
			t.Errorf("%s/%s is not a link to inet", bad[0], bad[1])
		}
	}
	for _, s := range []string{"office-1a", "office-1a/", "/wan1", "a/b/c"} {
		if _, _, err := ParseLink(s); err == nil {
			t.Errorf("ParseLink(%q) succeeded", s)
		}
	}
	for _, im := range []Impairment{{Loss: -1}, {Loss: 101}, {Loss: math.NaN()}, {Delay: -1}, {Jitter: 11 * time.Second}} {
		if im.Check() == nil {
			t.Errorf("%+v passed Check", im)
		}
	}
	if s := (Impairment{Loss: 5, Delay: 30 * time.Millisecond, Jitter: 5 * time.Millisecond}).String(); s != "loss 5%, delay 30ms, jitter 5ms" {
		t.Errorf("String: %q", s)
	}
}

// TestDelayQueue checks release times and order: FIFO without jitter,
// every hold within delay ± jitter with it.
func TestDelayQueue(t *testing.T) {
	t0 := time.Now()
	q := newDelayQueue(30*time.Millisecond, 0)
	for i := range 100 {
		q.push([]byte{byte(i)}, t0.Add(time.Duration(i)*time.Microsecond))
	}
	if _, ok := q.popDue(t0.Add(29 * time.Millisecond)); ok {
		t.Fatal("released early")
	}
	for i := range 100 {
		p, ok := q.popDue(t0.Add(time.Second))
		if !ok || p[0] != byte(i) {
			t.Fatalf("packet %d: %v %v", i, p, ok)
		}
	}
	q = newDelayQueue(30*time.Millisecond, 5*time.Millisecond)
	for range 10000 {
		if d := q.releaseAfter(); d < 25*time.Millisecond || d > 35*time.Millisecond {
			t.Fatalf("hold %v outside 30ms ± 5ms", d)
		}
	}
	q = newDelayQueue(time.Millisecond, 5*time.Millisecond)
	for range 1000 {
		if q.releaseAfter() < 0 {
			t.Fatal("negative hold")
		}
	}
}

// udpIn listens on addr inside the namespace.
func udpIn(t *testing.T, ns, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := inNetns(ns, func() error {
		ua, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp4", ua)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	bigReceiveBuffer(t, c)
	return c
}

// bigReceiveBuffer gives c a 4 MiB receive buffer, past the sysctl cap
// (root may), so that a test process the scheduler holds off for a moment
// loses no datagram that the network delivered.
func bigReceiveBuffer(t *testing.T, c *net.UDPConn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	}); err != nil || serr != nil {
		t.Fatal(errors.Join(err, serr))
	}
}

// udpDial connects from inside the namespace, pinned to dev if it is set.
func udpDial(t *testing.T, ns, dev, addr string) *net.UDPConn {
	t.Helper()
	var c net.Conn
	err := inNetns(ns, func() error {
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				if dev != "" {
					serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, dev)
				}
			})
			return errors.Join(err, serr)
		}}
		var err error
		c, err = d.Dial("udp4", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	bigReceiveBuffer(t, c.(*net.UDPConn))
	return c.(*net.UDPConn)
}

// echo answers every datagram on c until it is closed.
func echo(c *net.UDPConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			return
		}
		c.WriteToUDP(buf[:n], from)
	}
}

// stream sends n numbered datagrams from src, gap apart, and returns how
// many distinct ones dst received (waiting 200 ms after the last).
func stream(src, dst *net.UDPConn, n int, gap time.Duration) int {
	seen := make([]bool, n)
	var got int
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			m, err := dst.Read(buf)
			if err != nil {
				return
			}
			if i := int(binary.BigEndian.Uint32(buf[:m])); m >= 4 && i < n && !seen[i] {
				seen[i] = true
				got++
			}
		}
	}()
	pkt := make([]byte, 64)
	start := time.Now()
	for i := range n {
		binary.BigEndian.PutUint32(pkt, uint32(i))
		src.Write(pkt)
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * gap)))
	}
	time.Sleep(200 * time.Millisecond)
	dst.SetReadDeadline(time.Now())
	<-done
	dst.SetReadDeadline(time.Time{})
	return got
}

// rtts sends n echo requests on c, gap apart, and returns the round trips
// of those answered within timeout.
func rtts(c *net.UDPConn, n int, gap, timeout time.Duration) []time.Duration {
	sent := make([]time.Time, n)
	var mu sync.Mutex
	var out []time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			m, err := c.Read(buf)
			if err != nil {
				return
			}
			now := time.Now()
			if i := int(binary.BigEndian.Uint32(buf[:m])); m >= 4 && i < n {
				mu.Lock()
				out = append(out, now.Sub(sent[i]))
				mu.Unlock()
			}
		}
	}()
	pkt := make([]byte, 64)
	start := time.Now()
	for i := range n {
		binary.BigEndian.PutUint32(pkt, uint32(i))
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		c.Write(pkt)
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * gap)))
	}
	time.Sleep(timeout)
	c.SetReadDeadline(time.Now())
	<-done
	c.SetReadDeadline(time.Time{})
	return out
}

func stats(ds []time.Duration) (mean, sd, p50, lo, hi time.Duration) {
	if len(ds) == 0 {
		return
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum, sq float64
	for _, d := range s {
		sum += float64(d)
	}
	m := sum / float64(len(s))
	for _, d := range s {
		sq += (float64(d) - m) * (float64(d) - m)
	}
	return time.Duration(m), time.Duration(math.Sqrt(sq / float64(len(s)))), s[len(s)/2], s[0], s[len(s)-1]
}

// TestImpair impairs office-1a's wan1 (the office's ISP 1) on the inet side
// and measures the link with plain UDP sockets on both ends, independently
// of the appliance: loss towards the appliance only, delay and jitter of
// round trips, a cut link (with office-1b's wan2, ISP 2, still working),
// and clearing.
func TestImpair(t *testing.T) {
	t.Parallel()
	l := upLab(t, "imp", os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	inet, office, office2, vpc := l.Netns("inet"), l.Netns("office-1a"), l.Netns("office-1b"), l.Netns("vpc-1")

	// office-1a -> inet and inet -> office-1a over wan1; echoes on inet's
	// address of the link and on vpc-1's, across inet.
	upRx := udpIn(t, inet, "198.18.1.1:9001")
	upTx := udpDial(t, office, "wan1", "198.18.1.1:9001")
	downRx := udpIn(t, office, "198.18.1.2:9002")
	downTx := udpDial(t, inet, "", "198.18.1.2:9002")
	go echo(udpIn(t, inet, "198.18.1.1:9007"))
	go echo(udpIn(t, vpc, "198.18.2.2:9007"))
	echoInet := udpDial(t, office, "wan1", "198.18.1.1:9007")
	echoVPC1 := udpDial(t, office, "wan1", "198.18.2.2:9007")
	echoVPC2 := udpDial(t, office2, "wan2", "198.18.2.2:9007")

	_, _, base, _, _ := stats(rtts(echoInet, 200, time.Millisecond, 50*time.Millisecond))
	t.Logf("baseline RTT over wan1: median %v", base)

	t.Run("loss", func(t *testing.T) {
		if err := l.Impair(ctx, "office-1a", "wan1", Impairment{Loss: 5}); err != nil {
			t.Fatal(err)
		}
		const n = 2000
		var up, down int
		var wg sync.WaitGroup
		wg.Go(func() { up = stream(upTx, upRx, n, 500*time.Microsecond) })
		wg.Go(func() { down = stream(downTx, downRx, n, 500*time.Microsecond) })
		wg.Wait()
		ctr, err := l.ImpairCounters("office-1a", "wan1")
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range []struct {
			name string
			got  int
			ctr  DirectionCounters
			want float64
		}{{"office-1a -> inet", up, ctr.In, 0}, {"inet -> office-1a", down, ctr.Out, 5}} {
			lost := 100 * float64(n-d.got) / n
			t.Logf("%s: %d of %d datagrams lost (%.2f%%); counters %+v", d.name, n-d.got, n, lost, d.ctr)
			if math.Abs(lost-d.want) > 1.5 {
				t.Errorf("%s: lost %.2f%%, want %.0f%% ± 1.5", d.name, lost, d.want)
			}
			// The appliance's own traffic crosses the link too.
			if d.ctr.Dropped < uint64(n-d.got) || d.ctr.Packets < n {
				t.Errorf("%s: counters %+v, %d datagrams lost", d.name, d.ctr, n-d.got)
			}
		}
	})

	t.Run("delay", func(t *testing.T) {
		if err := l.Impair(ctx, "office-1a", "wan1", Impairment{Delay: 30 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		// 4000 requests/s: the stage holds about 120 packets at a time.
		// Late answers (a stalled machine) still count: wait a second.
		rs := rtts(echoInet, 2000, 250*time.Microsecond, time.Second)
		mean, sd, p50, lo, hi := stats(rs)
		t.Logf("delay 30ms: %d RTTs, mean %v, median %v, sd %v, min %v, max %v; median added by the stage %v",
			len(rs), mean, p50, sd, lo, hi, p50-base-30*time.Millisecond)
		if len(rs) != 2000 {
			t.Errorf("%d of 2000 echoes answered", len(rs))
		}
		if d := mean - base - 30*time.Millisecond; d.Abs() > 3*time.Millisecond {
			t.Errorf("RTT up by %v, want 30ms ± 3ms", mean-base)
		}
		if lo < 30*time.Millisecond {
			t.Errorf("an RTT of %v, below the delay", lo)
		}
		if over := p50 - base - 30*time.Millisecond; over > time.Millisecond {
			t.Errorf("the stage adds %v to the median", over)
		}
		// The same over wan1 to vpc-1, across inet.
		_, _, p50, _, _ = stats(rtts(echoVPC1, 100, time.Millisecond, 100*time.Millisecond))
		if (p50 - 30*time.Millisecond).Abs() > 3*time.Millisecond {
			t.Errorf("office-1a -> vpc-1 over wan1: median RTT %v, want about 30ms", p50)
		}
		// office-1b's wan2 is another link: not delayed.
		if _, _, p50, _, _ = stats(rtts(echoVPC2, 50, time.Millisecond, 100*time.Millisecond)); p50 > 5*time.Millisecond {
			t.Errorf("office-1b -> vpc-1 over wan2: median RTT %v, want no delay", p50)
		}
	})

	t.Run("jitter", func(t *testing.T) {
		const d, j = 30 * time.Millisecond, 5 * time.Millisecond
		if err := l.Impair(ctx, "office-1a", "wan1", Impairment{Delay: d, Jitter: j}); err != nil {
			t.Fatal(err)
		}
		rs := rtts(echoInet, 1000, time.Millisecond, 100*time.Millisecond)
		mean, sd, p50, lo, hi := stats(rs)
		t.Logf("delay 30ms jitter 5ms: %d RTTs, mean %v, median %v, sd %v (uniform: %v), min %v, max %v",
			len(rs), mean, p50, sd, time.Duration(float64(j)/math.Sqrt(3)), lo, hi)
		// Median and interquartile range, not mean and deviation: on a busy
		// machine a few echoes wait for a CPU, and those outliers say
		// nothing about the stage. Uniform jitter of ±j has an IQR of j.
		sorted := slices.Clone(rs)
		slices.Sort(sorted)
		iqr := sorted[len(sorted)*3/4] - sorted[len(sorted)/4]
		t.Logf("interquartile range %v (uniform: %v)", iqr, j)
		if (p50 - base - d).Abs() > 3*time.Millisecond {
			t.Errorf("median RTT up by %v, want 30ms ± 3ms", p50-base)
		}
		if iqr < j*7/10 || iqr > j*13/10 {
			t.Errorf("RTT interquartile range %v, want about %v", iqr, j)
		}
		if lo < d-j || lo > d-j+time.Millisecond {
			t.Errorf("shortest RTT %v, want just above %v", lo, d-j)
		}
	})

	t.Run("down", func(t *testing.T) {
		if err := l.Impair(ctx, "office-1a", "wan1", Impairment{Down: true}); err != nil {
			t.Fatal(err)
		}
		if up := stream(upTx, upRx, 50, time.Millisecond); up != 0 {
			t.Errorf("%d datagrams passed a cut link to inet", up)
		}
		if down := stream(downTx, downRx, 50, time.Millisecond); down != 0 {
			t.Errorf("%d datagrams passed a cut link from inet", down)
		}
		if rs := rtts(echoVPC1, 20, time.Millisecond, 100*time.Millisecond); len(rs) != 0 {
			t.Errorf("%d echoes to vpc-1 over the cut wan1", len(rs))
		}
		// The carrier stays up: the appliance cannot tell from its link.
		h, err := netlinkHandle(office)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if wan1, err := h.LinkByName("wan1"); err != nil || wan1.Attrs().OperState != netlink.OperUp {
			t.Errorf("wan1: %v", err)
		}
		// The other ISP is untouched: a socket pinned to office-1b's wan2
		// reaches vpc-1 and hears back.
		if rs := rtts(echoVPC2, 50, time.Millisecond, 100*time.Millisecond); len(rs) != 50 {
			t.Errorf("%d of 50 echoes to vpc-1 over wan2 with wan1 cut", len(rs))
		}
	})

	t.Run("clear", func(t *testing.T) {
		if err := l.Impair(ctx, "office-1a", "wan1", Impairment{Delay: 10 * time.Millisecond, Loss: 1}); err != nil {
			t.Fatal(err)
		}
		if err := l.Clear("office-1a", "wan1"); err != nil {
			t.Fatal(err)
		}
		if err := l.Clear("office-1a", "wan1"); err != nil {
			t.Errorf("clearing twice: %v", err)
		}
		if up := stream(upTx, upRx, 200, 200*time.Microsecond); up != 200 {
			t.Errorf("%d of 200 datagrams after clearing", up)
		}
		if _, _, p50, _, _ := stats(rtts(echoInet, 100, time.Millisecond, 50*time.Millisecond)); p50 > 2*time.Millisecond {
			t.Errorf("median RTT %v after clearing", p50)
		}
		if _, err := l.ImpairCounters("office-1a", "wan1"); err == nil {
			t.Error("counters of a cleared link")
		}
		out, _ := l.Command(ctx, "inet", "ip", "rule").CombinedOutput()
		if strings.Contains(string(out), "dly") || strings.Contains(string(out), "198.18.1.0") {
			t.Errorf("rules left after clearing:\n%s", out)
		}
		h, err := netlinkHandle(inet)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		k, _ := l.t.impairLink("office-1a", "wan1")
		if _, err := h.LinkByName(k.tun()); err == nil {
			t.Errorf("%s still exists after clearing", k.tun())
		}
		l.mu.Lock()
		l.reloadLocked()
		left := l.procLocked("delay-office-1a-wan1")
		l.mu.Unlock()
		if left != nil {
			t.Errorf("delay stage still recorded: %+v", left)
		}
	})

	// The overlay still works over the two ISPs.
	if _, err := fetch(ctx, l, "office-1-host", "http://"+backendAddr.String()+"/"); err != nil {
		t.Errorf("office-1-host -> backend after the impairments: %v", err)
	}
}
