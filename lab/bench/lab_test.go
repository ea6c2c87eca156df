package bench

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/lab"
)

// testInstance is the lab instance the root tests build: one per test
// process, so that two runs of the suite on one machine do not collide.
var testInstance = "bu" + strconv.FormatInt(int64(os.Getpid()), 36)

// needRoot skips a test that builds a lab when not root, except in CI,
// where it must run.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test builds network namespaces and must run as root in CI")
	}
	t.Skip("needs root (network namespaces)")
}

// upLab builds the causeway binary and a lab instance that the test
// takes down at its end.
func upLab(t *testing.T) (*lab.Lab, string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool.prog); err != nil {
			t.Fatalf("%s is missing (Debian package %s)", tool.prog, tool.pkg)
		}
	}
	root, err := findModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "causeway")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/causeway")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building causeway: %v\n%s", err, out)
	}
	l, err := lab.Up(context.Background(), lab.Options{Instance: testInstance, Binary: bin, OwnerPID: os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("taking the lab down: %v", err)
		}
	})
	return l, bin
}

// TestRunLab runs a short bench in a real lab, then cancels one half-way
// through bringing up the stock daemons, and checks that both leave the
// lab with Causeway running and nothing of the stock reference behind.
func TestRunLab(t *testing.T) {
	needRoot(t)
	l, bin := upLab(t)
	ctx := context.Background()
	opts := Options{Rounds: 1, Duration: time.Second, Pings: 50, CausewayBinary: bin}

	start := time.Now()
	res, err := Run(ctx, l, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("one round of 1 s tests took %s", time.Since(start).Round(time.Millisecond))
	if len(res.Rounds) != 1 || len(res.Summary) != 3 || len(res.Warnings) != 0 {
		t.Fatalf("result: %d rounds, %d comparisons, warnings %v", len(res.Rounds), len(res.Summary), res.Warnings)
	}
	for _, m := range []Measurement{res.Rounds[0].Causeway, res.Rounds[0].Stock} {
		if len(m.Throughput) != 2 || m.Throughput[0].Streams != 1 || m.Throughput[1].Streams != 4 {
			t.Errorf("%s: throughput %+v", m.Dataplane, m.Throughput)
		}
		for _, tp := range m.Throughput {
			if tp.BitsPerSecond < 1e6 {
				t.Errorf("%s: %d streams at %.0f bit/s", m.Dataplane, tp.Streams, tp.BitsPerSecond)
			}
		}
		if r := m.RTT; r.TunnelSamples < 45 || r.UnderlaySamples < 45 || r.TunnelMS <= 0 || r.UnderlayMS <= 0 {
			t.Errorf("%s: RTT %+v", m.Dataplane, r)
		}
	}
	if res.Causeway.WireGuardVersion == "" || res.Stock.WireGuardVersion != res.Causeway.WireGuardVersion {
		t.Errorf("versions: causeway %q, stock %q", res.Causeway.WireGuardVersion, res.Stock.WireGuardVersion)
	}
	for _, i := range append(res.Causeway.Interfaces, res.Stock.Interfaces...) {
		if i.MTU != 1340 {
			t.Errorf("%s on %s: MTU %d, want the lab's 1340", i.Name, i.Node, i.MTU)
		}
	}
	stock := res.Stock.Interfaces
	checkRestored(t, l, stock)
	var text strings.Builder
	res.WriteText(&text)
	t.Logf("\n%s", text.String())

	// Cancel once the second stock daemon is starting.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opts.Logger = slog.New(&cancelOn{msg: "starting stock wireguard-go", n: 2, cancel: cancel})
	res, err = Run(cctx, l, opts)
	if !errors.Is(err, context.Canceled) || res != nil {
		t.Errorf("cancelled Run = %v, %v; want no result and context.Canceled", res, err)
	}
	// Run does not restart Causeway after a cancellation: the caller is
	// on its way out. Put it back, then check.
	for _, a := range []string{"office-1a", "office-1b", "vpc-1"} {
		if err := l.StartAppliance(ctx, a); err != nil {
			t.Errorf("restarting %s: %v", a, err)
		}
	}
	checkRestored(t, l, stock)
}

// checkRestored checks that Causeway carries the path again and that no
// stock interface, UAPI socket or daemon is left.
func checkRestored(t *testing.T, l *lab.Lab, stock []Interface) {
	t.Helper()
	for _, node := range []string{"office-1a", "vpc-1"} {
		iface := stockIface(l.Netns(node))
		if out, err := l.Command(context.Background(), node, "ip", "-o", "link", "show").Output(); err != nil {
			t.Errorf("%s: %v", node, err)
		} else if s := string(out); !strings.Contains(s, " cw0: ") || strings.Contains(s, iface) {
			t.Errorf("%s after the bench:\n%s", node, s)
		}
		if _, err := os.Stat(filepath.Join(uapiDir, iface+".sock")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: UAPI socket of %s left behind (%v)", node, iface, err)
		}
	}
	if out, err := l.Command(context.Background(), "office-1-host", "ping", "-n", "-q", "-c", "1", "-w", "10", "10.20.0.10").CombinedOutput(); err != nil {
		t.Errorf("office-1-host cannot reach 10.20.0.10 through Causeway after the bench: %v\n%s", err, out)
	}
	out, _ := exec.Command("ps", "-eo", "args").Output()
	for _, line := range strings.Split(string(out), "\n") {
		for _, i := range stock {
			if strings.Contains(line, "wireguard-go -f "+i.Name) {
				t.Errorf("stock daemon still running: %s", line)
			}
		}
	}
}

// cancelOn is a slog handler that calls cancel when it sees msg the n-th
// time.
type cancelOn struct {
	msg    string
	n      int
	cancel func()

	mu   sync.Mutex
	seen int
}

func (c *cancelOn) Enabled(context.Context, slog.Level) bool { return true }

func (c *cancelOn) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.Message == c.msg {
		if c.seen++; c.seen == c.n {
			c.cancel()
		}
	}
	return nil
}

func (c *cancelOn) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *cancelOn) WithGroup(string) slog.Handler      { return c }
