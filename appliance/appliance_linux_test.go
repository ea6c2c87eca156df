package appliance

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// The root tests below run the appliance in network namespaces they create
// (named cwt-<pid>-<n>), as a child copy of this test binary. TestMain
// removes namespaces left by test processes that died.

const (
	childEnv    = "CAUSEWAY_TEST_APPLIANCE_CONFIG"
	childLogEnv = "CAUSEWAY_TEST_APPLIANCE_LOG" // "1": the child logs JSON lines to stderr
	udpEnv      = "CAUSEWAY_TEST_UDP"           // "send ADDR COUNT SIZE" or "recv ADDR TOTAL"
)

func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		os.Exit(runChild(path))
	}
	if spec := os.Getenv(udpEnv); spec != "" {
		os.Exit(runUDP(strings.Fields(spec)))
	}
	if os.Geteuid() == 0 {
		sweepTestNetns()
	}
	os.Exit(m.Run())
}

// runChild is the appliance process: start, report, wait for SIGTERM, stop.
func runChild(path string) int {
	cfg, err := LoadConfig(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var log *slog.Logger
	if os.Getenv(childLogEnv) == "1" {
		log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	a, err := Start(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready", a.MTU())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGHUP)
	for s := range sig {
		if s == syscall.SIGHUP {
			next, err := LoadConfig(path)
			if err == nil {
				err = a.Apply(next)
			}
			fmt.Println("reload", err)
			continue
		}
		break
	}
	if err := a.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// runUDP sends COUNT datagrams of SIZE bytes, 2 ms apart, or receives
// until TOTAL bytes arrived and prints the total.
func runUDP(f []string) int {
	if len(f) < 3 {
		return 2
	}
	switch f[0] {
	case "send":
		n, _ := strconv.Atoi(f[2])
		size, _ := strconv.Atoi(f[3])
		c, err := net.Dial("udp", f[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		buf := make([]byte, size)
		for range n {
			if _, err := c.Write(buf); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			time.Sleep(2 * time.Millisecond)
		}
	case "recv":
		total, _ := strconv.Atoi(f[2])
		c, err := net.ListenPacket("udp", f[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("listening")
		c.SetDeadline(time.Now().Add(20 * time.Second))
		buf := make([]byte, 65536)
		got := 0
		for got < total {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			got += n
		}
		fmt.Println(got)
	}
	return 0
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("these tests need root (network namespaces, TUN)")
		}
		t.Skip("needs root")
	}
}

var nsCounter int

// newNetns creates a named network namespace for this test and removes it
// when the test ends.
func newNetns(t testing.TB) string {
	t.Helper()
	nsCounter++
	name := fmt.Sprintf("cwt-%d-%d", os.Getpid(), nsCounter)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

func sweepTestNetns() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		parts := strings.Split(name, "-")
		if len(parts) != 3 || parts[0] != "cwt" {
			continue
		}
		pid, err := strconv.Atoi(parts[1])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			exec.Command("ip", "netns", "del", name).Run()
		}
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

type child struct {
	config string // the config file, rewritten by reload tests
	cmd    *exec.Cmd
	stdout *bufio.Reader
	stderr strings.Builder
}

// startChild runs the appliance from cfg inside ns and waits for "ready".
func startChild(t *testing.T, ns string, cfg *Config) (*child, error) {
	return spawnChild(t, ns, cfg, childEnv)
}

// spawnChild runs this test binary inside ns with env set to a file
// holding cfg (and extra in its environment), and waits for "ready".
func spawnChild(t testing.TB, ns string, cfg *Config, env string, extra ...string) (*child, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.json")
	writeConfig(t, path, cfg)
	c := &child{config: path, cmd: exec.Command("ip", "netns", "exec", ns, os.Args[0])}
	c.cmd.Env = append(append(os.Environ(), env+"="+path), extra...)
	c.cmd.Stderr = &c.stderr
	out, _ := c.cmd.StdoutPipe()
	c.stdout = bufio.NewReader(out)
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	line, err := c.stdout.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready") {
		c.cmd.Wait()
		return nil, fmt.Errorf("appliance did not start: %s", strings.TrimSpace(c.stderr.String()))
	}
	return c, nil
}

func (c *child) stop(t testing.TB) {
	t.Helper()
	c.cmd.Process.Signal(syscall.SIGTERM)
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("appliance exit: %v\n%s", err, c.stderr.String())
	}
}

func writeConfig(t testing.TB, path string, cfg *Config) {
	t.Helper()
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func siteConfig(t *testing.T, name string, overlay string, lan string) *Config {
	return &Config{
		Name: name, StateDir: filepath.Join(t.TempDir(), name), Interface: "cw0",
		OverlayAddr: netip.MustParseAddr(overlay), ListenPort: 51820,
		LANPrefixes: []netip.Prefix{netip.MustParsePrefix(lan)}, HTTPListen: "127.0.0.1:9180",
	}
}

func nsState(t *testing.T, ns string) (links, routes, forward string) {
	links = run(t, "ip", "-n", ns, "-o", "link")
	routes = run(t, "ip", "-4", "-n", ns, "route", "show", "table", "all")
	forward = strings.TrimSpace(run(t, "ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"))
	return
}

// TestFailedStartLeavesNothing makes the last step of Start fail (an HTTP
// address that is not on this host) and checks that the interface,
// routes and forwarding setting it had already changed are back.
func TestFailedStartLeavesNothing(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	l0, r0, f0 := nsState(t, ns)
	cfg := siteConfig(t, "office-1", "100.64.0.1", "10.10.0.0/24")
	peer, _ := wgkey.NewPrivate()
	cfg.Peers = []PeerConfig{{Name: "vpc-1", PublicKey: peer.Public(), OverlayAddr: netip.MustParseAddr("100.64.0.2"),
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/24")}}}
	cfg.HTTPListen = "198.18.77.1:9180"
	_, err := startChild(t, ns, cfg)
	if err == nil || !strings.Contains(err.Error(), "http_listen") {
		t.Fatalf("want a start error naming http_listen, got %v", err)
	}
	l1, r1, f1 := nsState(t, ns)
	if l0 != l1 || r0 != r1 || f0 != f1 {
		t.Fatalf("failed start left changes behind:\nlinks %q -> %q\nroutes %q -> %q\nforward %s -> %s", l0, l1, r0, r1, f0, f1)
	}
}

// TestTwoSitesCountAndClean runs two appliances on a shared underlay,
// sends a known number of bytes through the tunnel, checks the peer
// counters, reloads a config, and checks SIGTERM removes everything.
func TestTwoSitesCountAndClean(t *testing.T) {
	requireRoot(t)
	nsA, nsB := newNetns(t), newNetns(t)
	run(t, "ip", "-n", nsA, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0", "netns", nsB)
	run(t, "ip", "-n", nsA, "addr", "add", "198.18.9.1/24", "dev", "wan0")
	run(t, "ip", "-n", nsB, "addr", "add", "198.18.9.2/24", "dev", "wan0")
	run(t, "ip", "-n", nsA, "link", "set", "wan0", "up")
	run(t, "ip", "-n", nsB, "link", "set", "wan0", "up")
	l0, r0, f0 := nsState(t, nsA)

	a := siteConfig(t, "site-a", "100.64.9.1", "10.91.0.0/24")
	b := siteConfig(t, "site-b", "100.64.9.2", "10.92.0.0/24")
	// Site a runs over the multipath bind, site b over the standard one.
	a.Uplinks = []Uplink{{Name: "wan0", Interface: "wan0"}}
	ka, err := LoadOrCreateKey(a.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := LoadOrCreateKey(b.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	a.Peers = []PeerConfig{{Name: "site-b", PublicKey: kb.Public(), OverlayAddr: b.OverlayAddr,
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.9.2:51820")}, Prefixes: b.LANPrefixes}}
	b.Peers = []PeerConfig{{Name: "site-a", PublicKey: ka.Public(), OverlayAddr: a.OverlayAddr,
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.9.1:51820")}, Prefixes: a.LANPrefixes}}
	ca, err := startChild(t, nsA, a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := startChild(t, nsB, b)
	if err != nil {
		t.Fatal(err)
	}
	routes := run(t, "ip", "-n", nsA, "route")
	for _, want := range []string{"10.92.0.0/24 dev cw0", "100.64.9.2 dev cw0", "src 100.64.9.1"} {
		if !strings.Contains(routes, want) {
			t.Errorf("route %q missing:\n%s", want, routes)
		}
	}

	// 50 UDP datagrams of 1000 payload bytes = 1028-byte IP packets each,
	// from site-a's overlay address to site-b's, received by a listener.
	const n, payload = 50, 1000
	recv := exec.Command("ip", "netns", "exec", nsB, os.Args[0])
	recv.Env = append(os.Environ(), fmt.Sprintf("%s=recv 100.64.9.2:7000 %d", udpEnv, n*payload))
	rout, _ := recv.StdoutPipe()
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	rr := bufio.NewReader(rout)
	rr.ReadString('\n')
	send := exec.Command("ip", "netns", "exec", nsA, os.Args[0])
	send.Env = append(os.Environ(), fmt.Sprintf("%s=send 100.64.9.2:7000 %d %d", udpEnv, n, payload))
	if out, err := send.CombinedOutput(); err != nil {
		t.Fatalf("sender: %v\n%s", err, out)
	}
	total, _ := rr.ReadString('\n')
	if err := recv.Wait(); err != nil || strings.TrimSpace(total) != strconv.Itoa(n*payload) {
		t.Fatalf("receiver got %q (%v), want %d bytes", total, err, n*payload)
	}
	// The first datagram may be sent before the handshake completes; WireGuard
	// queues it, so every datagram counts exactly once on both sides.
	txA := metric(t, nsA, `causeway_peer_inner_packets_total{direction="tx",peer="site-b"}`)
	rxB := metric(t, nsB, `causeway_peer_inner_packets_total{direction="rx",peer="site-a"}`)
	bytesB := metric(t, nsB, `causeway_peer_inner_bytes_total{direction="rx",peer="site-a"}`)
	if txA != n || rxB != n || bytesB != n*(payload+28) {
		t.Errorf("counters: a tx %d packets, b rx %d packets / %d bytes; want %d / %d", txA, rxB, bytesB, n, n*(payload+28))
	}

	// Reload with one more announced prefix: the route appears in place.
	a.Peers[0].Prefixes = append(a.Peers[0].Prefixes, netip.MustParsePrefix("172.16.92.0/24"))
	writeConfig(t, ca.config, a)
	ca.cmd.Process.Signal(syscall.SIGHUP)
	if line, _ := ca.stdout.ReadString('\n'); strings.TrimSpace(line) != "reload <nil>" {
		t.Fatalf("reload: %q", line)
	}
	if !strings.Contains(run(t, "ip", "-n", nsA, "route"), "172.16.92.0/24 dev cw0") {
		t.Error("reloaded prefix has no route")
	}

	ca.stop(t)
	cb.stop(t)
	l1, r1, f1 := nsState(t, nsA)
	if l0 != l1 || r0 != r1 || f0 != f1 {
		t.Fatalf("SIGTERM left changes behind:\nlinks %q -> %q\nroutes %q -> %q\nforward %s -> %s", l0, l1, r0, r1, f0, f1)
	}
}

// metric scrapes one sample from the appliance's /metrics inside ns.
func metric(t *testing.T, ns, series string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "curl", "-sf", "http://127.0.0.1:9180/metrics").Output()
	if err != nil {
		t.Fatalf("scraping metrics in %s: %v", ns, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return int(f)
		}
	}
	t.Fatalf("%s not in metrics:\n%s", series, out)
	return 0
}
