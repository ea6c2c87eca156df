package pair

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/causeway-net/causeway/dataplane/bind/bindtest"
	"github.com/vishvananda/netlink"
)

// The namespace tests run each member as a child copy of this test binary
// (so that kill -9 is real) in namespaces they create with bindtest: they
// are unnamed and vanish with the test process and its children, whose
// parent-death signal is SIGKILL.
//
//	        host 10.10.0.100 (default via the VIP 10.10.0.1)
//	          │ ph
//	   lan ── br0 ──────────────┐
//	          │ pa              │ pb
//	   a: lan 10.10.0.2         b: lan 10.10.0.3
//	      wan 198.18.1.2           wan 198.18.2.2
//	          │ ra              │ rb
//	        router ──── rf ── far 198.18.3.2
//
// The members route everything else via the router, so the LAN host's
// datagrams to far go through whichever member its ARP entry for the VIP
// names, and the WAN heartbeat crosses the router.

const memberEnv = "CAUSEWAY_TEST_PAIR_MEMBER" // a JSON Config: run one member

func TestMain(m *testing.M) {
	if spec := os.Getenv(memberEnv); spec != "" {
		os.Exit(runMember(spec))
	}
	os.Exit(m.Run())
}

var (
	vip     = netip.MustParsePrefix("10.10.0.1/24")
	farAddr = netip.MustParseAddrPort("198.18.3.2:9000")
	labKey  = []byte("pair test key, 32 bytes long....")
	members = map[string]struct{ lan, wan netip.Addr }{
		"a": {netip.MustParseAddr("10.10.0.2"), netip.MustParseAddr("198.18.1.2")},
		"b": {netip.MustParseAddr("10.10.0.3"), netip.MustParseAddr("198.18.2.2")},
	}
)

// runMember is the child: it runs a member, prints every OnChange and the
// answers to the commands it reads on stdin, one "<kind> <json>" a line.
func runMember(spec string) int {
	var cfg Config
	if err := json.Unmarshal([]byte(spec), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var mu sync.Mutex
	emit := func(kind string, v any) {
		b, _ := json.Marshal(v)
		mu.Lock()
		fmt.Printf("%s %s\n", kind, b)
		mu.Unlock()
	}
	cfg.OnChange = func(s State) { emit("change", s) }
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	m, err := Start(context.Background(), cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	emit("ready", nil)
	errString := func(err error) string {
		if err == nil {
			return ""
		}
		return err.Error()
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "drain":
			emit("ok", errString(m.Drain(f[1] == "on")))
		case len(f) == 2 && f[0] == "prio":
			var p int
			fmt.Sscan(f[1], &p)
			emit("ok", errString(m.SetPriority(p)))
		case len(f) >= 2 && f[0] == "keys":
			// keys SIGN [ACCEPTED...], each as text
			var accepted [][]byte
			for _, k := range f[2:] {
				accepted = append(accepted, []byte(k))
			}
			emit("ok", errString(m.SetKeys([]byte(f[1]), accepted...)))
		case len(f) == 1 && f[0] == "state":
			emit("state", m.State())
		case len(f) == 1 && f[0] == "metrics":
			emit("metrics", m.Metrics())
		case len(f) == 1 && f[0] == "close":
			err := m.Close()
			emit("closed", errString(err))
			return 0
		default:
			emit("error", "unknown command "+sc.Text())
		}
	}
	m.Close()
	return 0
}

// lab is the topology above.
type lab struct {
	t                      *testing.T
	lan, host, router, far *bindtest.Netns
	ns                     map[string]*bindtest.Netns // the members'
	procs                  map[string]*memberProc
	mac                    map[string]net.HardwareAddr // of each member's lan
	bridge                 netlink.Link
}

func newLab(t *testing.T) *lab {
	t.Helper()
	bindtest.Require(t)
	l := &lab{t: t, lan: bindtest.NewNetns(t), host: bindtest.NewNetns(t), router: bindtest.NewNetns(t),
		far: bindtest.NewNetns(t), ns: map[string]*bindtest.Netns{}, procs: map[string]*memberProc{},
		mac: map[string]net.HardwareAddr{}}
	for _, n := range []*bindtest.Netns{l.router, l.far, l.host} {
		n.Sysctl("net/ipv4/conf/all/rp_filter", "0")
		n.Sysctl("net/ipv4/conf/default/rp_filter", "0")
	}
	l.router.Sysctl("net/ipv4/ip_forward", "1")
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := l.lan.Netlink().LinkAdd(br); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	l.lan.SetUp("br0", true)
	l.bridge = l.link(l.lan, "br0")
	for i, name := range []string{"a", "b"} {
		n := bindtest.NewNetns(t)
		l.ns[name] = n
		n.Sysctl("net/ipv4/ip_forward", "1")
		n.Sysctl("net/ipv4/conf/all/rp_filter", "0")
		n.Sysctl("net/ipv4/conf/default/rp_filter", "0")
		addr := members[name]
		bindtest.Veth(t, n, "lan", netip.PrefixFrom(addr.lan, 24), l.lan, "p"+name, netip.Prefix{})
		l.attach("p"+name, true)
		gw := netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 1})
		bindtest.Veth(t, n, "wan", netip.PrefixFrom(addr.wan, 24), l.router, "r"+name, netip.PrefixFrom(gw, 24))
		n.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), gw, "wan", 0)
		l.mac[name] = l.link(n, "lan").Attrs().HardwareAddr
	}
	bindtest.Veth(t, l.host, "lan", netip.MustParsePrefix("10.10.0.100/24"), l.lan, "ph", netip.Prefix{})
	l.attach("ph", true)
	l.host.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), vip.Addr(), "lan", 0)
	bindtest.Veth(t, l.far, "up", netip.MustParsePrefix("198.18.3.2/24"), l.router, "rf", netip.MustParsePrefix("198.18.3.1/24"))
	l.far.AddRoute(netip.MustParsePrefix("0.0.0.0/0"), netip.MustParseAddr("198.18.3.1"), "up", 0)
	return l
}

func (l *lab) link(n *bindtest.Netns, name string) netlink.Link {
	l.t.Helper()
	link, err := n.Netlink().LinkByName(name)
	if err != nil {
		l.t.Fatalf("link %s: %v", name, err)
	}
	return link
}

// attach puts a LAN port on the bridge or takes it off: off, the member's
// link keeps its carrier and its frames go nowhere (a silent LAN fault).
func (l *lab) attach(port string, on bool) {
	l.t.Helper()
	var err error
	if on {
		err = l.lan.Netlink().LinkSetMaster(l.link(l.lan, port), l.bridge)
	} else {
		err = l.lan.Netlink().LinkSetNoMaster(l.link(l.lan, port))
	}
	if err != nil {
		l.t.Fatalf("bridge port %s: %v", port, err)
	}
}

func (l *lab) config(name string, prio int, preempt bool) Config {
	other := "b"
	if name == "b" {
		other = "a"
	}
	return Config{Name: name, Priority: prio, Preempt: preempt, LANInterface: "lan",
		LANAddr: members[name].lan, PartnerLANAddr: members[other].lan,
		WANInterface: "wan", WANAddr: netip.AddrPortFrom(members[name].wan, DefaultHeartbeatPort),
		PartnerWANAddr: netip.AddrPortFrom(members[other].wan, DefaultHeartbeatPort),
		VIP:            vip, Key: labKey}
}

// holds reports whether member name's namespace has the VIP.
func (l *lab) holds(name string) bool {
	l.t.Helper()
	ok, err := l.holdsVIP(name)
	if err != nil {
		l.t.Fatal(err)
	}
	return ok
}

// holdsVIP is holds for goroutines other than the test's.
func (l *lab) holdsVIP(name string) (bool, error) {
	n := l.ns[name]
	link, err := n.Netlink().LinkByName("lan")
	if err != nil {
		return false, err
	}
	addrs, err := n.Netlink().AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		if a.IP.Equal(vip.Addr().AsSlice()) {
			return true, nil
		}
	}
	return false, nil
}

// hostARP is the LAN host's neighbour entry for the VIP ("" if none).
func (l *lab) hostARP() string {
	neighs, err := l.host.Netlink().NeighList(l.link(l.host, "lan").Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		l.t.Fatalf("host neighbours: %v", err)
	}
	for _, n := range neighs {
		if n.IP.Equal(vip.Addr().AsSlice()) && n.State&(netlink.NUD_FAILED|netlink.NUD_INCOMPLETE) == 0 {
			return n.HardwareAddr.String()
		}
	}
	return ""
}

// arpPointsAt reports whether the host's entry for the VIP is member name's MAC.
func (l *lab) arpPointsAt(name string) bool { return l.hostARP() == l.mac[name].String() }

// memberProc is a member running as a child process.
type memberProc struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	in      io.WriteCloser
	replies chan string
	exited  chan struct{}
	mu      sync.Mutex
	changes []State
	stderr  lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// start runs member name in its namespace and waits until it is up.
func (l *lab) start(cfg Config) *memberProc {
	t := l.t
	t.Helper()
	spec, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := &memberProc{t: t, name: cfg.Name, replies: make(chan string, 16), exited: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^$")
	p.cmd.Env = append(os.Environ(), memberEnv+"="+string(spec))
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p.cmd.Stderr = &p.stderr
	p.in, _ = p.cmd.StdinPipe()
	out, _ := p.cmd.StdoutPipe()
	// A child inherits the namespace of the thread that starts it.
	l.ns[cfg.Name].MustDo(p.cmd.Start)
	l.procs[cfg.Name] = p
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if strings.Contains(p.stderr.String(), "DATA RACE") {
			t.Errorf("member %s: the race detector found a data race", p.name)
		}
		if t.Failed() {
			t.Logf("member %s log:\n%s", p.name, p.stderr.String())
		}
	})
	go func() {
		defer close(p.exited)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			kind, body, _ := strings.Cut(sc.Text(), " ")
			if kind == "change" {
				var s State
				json.Unmarshal([]byte(body), &s)
				p.mu.Lock()
				p.changes = append(p.changes, s)
				p.mu.Unlock()
				continue
			}
			p.replies <- sc.Text()
		}
		p.cmd.Wait()
	}()
	select {
	case line := <-p.replies:
		if !strings.HasPrefix(line, "ready") {
			t.Fatalf("member %s: %q", p.name, line)
		}
	case <-p.exited:
		t.Fatalf("member %s did not start:\n%s", p.name, p.stderr.String())
	case <-time.After(10 * time.Second):
		t.Fatalf("member %s did not start in 10 s:\n%s", p.name, p.stderr.String())
	}
	return p
}

// call sends a command and returns the JSON of the answer.
func (p *memberProc) call(cmd string) []byte {
	p.t.Helper()
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		p.t.Fatalf("member %s: %v", p.name, err)
	}
	select {
	case line := <-p.replies:
		kind, body, _ := strings.Cut(line, " ")
		if kind == "error" {
			p.t.Fatalf("member %s: %s", p.name, body)
		}
		if kind == "ok" || kind == "closed" {
			var msg string
			json.Unmarshal([]byte(body), &msg)
			if msg != "" {
				p.t.Fatalf("member %s: %s: %s", p.name, cmd, msg)
			}
		}
		return []byte(body)
	case <-p.exited:
		p.t.Fatalf("member %s exited:\n%s", p.name, p.stderr.String())
	case <-time.After(10 * time.Second):
		p.t.Fatalf("member %s: no answer to %q", p.name, cmd)
	}
	return nil
}

func (p *memberProc) state() (s State) {
	p.t.Helper()
	p.callJSON("state", &s)
	return s
}

func (p *memberProc) metrics() (m Metrics) {
	p.t.Helper()
	p.callJSON("metrics", &m)
	return m
}

func (p *memberProc) callJSON(cmd string, v any) {
	p.t.Helper()
	if err := json.Unmarshal(p.call(cmd), v); err != nil {
		p.t.Fatalf("member %s: %s: %v", p.name, cmd, err)
	}
}

// roles is the sequence of roles OnChange reported, repeats folded.
func (p *memberProc) roles() []Role {
	p.mu.Lock()
	defer p.mu.Unlock()
	var rs []Role
	for _, s := range p.changes {
		if len(rs) == 0 || rs[len(rs)-1] != s.Role {
			rs = append(rs, s.Role)
		}
	}
	return rs
}

// kill ends the member with SIGKILL: no release, no goodbye.
func (p *memberProc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// waitFor polls cond every 2 ms until it holds or d passed, and returns
// how long it took.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(start)
}

// stream sends sequence-numbered datagrams from the LAN host to far
// through the gateway and records their arrival.
type stream struct {
	t       *testing.T
	every   time.Duration
	rx, tx  *net.UDPConn
	stop    chan struct{}
	sending sync.WaitGroup
	reading sync.WaitGroup
	mu      sync.Mutex
	sent    uint64
	arrived map[uint64]time.Time
	times   []time.Time // arrivals in order
}

func (l *lab) startStream(every time.Duration) *stream {
	s := &stream{t: l.t, every: every, stop: make(chan struct{}), arrived: map[uint64]time.Time{}}
	l.far.MustDo(func() (err error) {
		s.rx, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(farAddr))
		return err
	})
	s.rx.SetReadBuffer(1 << 20)
	l.host.MustDo(func() (err error) {
		s.tx, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(farAddr))
		return err
	})
	s.reading.Add(1)
	go func() {
		defer s.reading.Done()
		buf := make([]byte, 64)
		for {
			n, err := s.rx.Read(buf)
			if err != nil {
				return
			}
			if n >= 8 {
				now := time.Now()
				s.mu.Lock()
				seq := binary.BigEndian.Uint64(buf)
				if _, dup := s.arrived[seq]; !dup {
					s.arrived[seq] = now
					s.times = append(s.times, now)
				}
				s.mu.Unlock()
			}
		}
	}()
	s.sending.Add(1)
	go func() {
		defer s.sending.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		buf := make([]byte, 64)
		for seq := uint64(1); ; seq++ {
			binary.BigEndian.PutUint64(buf, seq)
			s.tx.Write(buf) // an error (no ARP answer yet) is a loss like any other
			s.mu.Lock()
			s.sent = seq
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	l.t.Cleanup(s.close)
	return s
}

func (s *stream) close() {
	select {
	case <-s.stop:
		return
	default:
	}
	close(s.stop)
	s.sending.Wait()
	time.Sleep(100 * time.Millisecond) // the last datagrams in flight
	s.rx.Close()
	s.tx.Close()
	s.reading.Wait()
}

// result stops the stream and returns what was sent, how many never
// arrived and the longest time between two arrivals.
func (s *stream) result() (sent, lost int, maxGap time.Duration) {
	s.close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 1; i < len(s.times); i++ {
		maxGap = max(maxGap, s.times[i].Sub(s.times[i-1]))
	}
	return int(s.sent), int(s.sent) - len(s.arrived), maxGap
}

// received counts the datagrams that arrived so far.
func (s *stream) received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.arrived)
}

// holderSampler checks both members' namespaces for the VIP every few
// milliseconds. It reads b before a: the moves it watches for go from a to
// b, so a sample cannot see a hand-over that did not overlap as an
// overlap.
type holderSampler struct {
	l       *lab
	stop    chan struct{}
	done    chan struct{}
	samples int
	both    int
	none    int
	first   time.Time // of an overlap
	err     error
}

func (l *lab) sampleHolders(every time.Duration) *holderSampler {
	h := &holderSampler{l: l, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			b, err := l.holdsVIP("b")
			a, err2 := l.holdsVIP("a")
			if err != nil || err2 != nil {
				h.err = errors.Join(err, err2)
				return
			}
			h.samples++
			switch {
			case a && b:
				if h.both == 0 {
					h.first = time.Now()
				}
				h.both++
			case !a && !b:
				h.none++
			}
			select {
			case <-h.stop:
				return
			case <-time.After(every):
			}
		}
	}()
	return h
}

func (h *holderSampler) finish() *holderSampler {
	h.l.t.Helper()
	close(h.stop)
	<-h.done
	if h.err != nil {
		h.l.t.Fatal(h.err)
	}
	return h
}
