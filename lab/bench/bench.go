// Package bench compares the Causeway dataplane with the stock wireguard-go
// daemon on the same lab path: TCP throughput between two sites' hosts
// (iperf3, one stream and several), and the round-trip time the tunnel adds
// between the two appliances. It runs the two dataplanes in interleaved
// rounds and reports per-round figures, medians and the ratio
// Causeway/stock.
//
// The stock reference runs the wireguard-go daemon built from the
// golang.zx2c4.com/wireguard version that Causeway itself links, on the same
// appliances, with the same private keys, port, peers, allowed IPs,
// endpoints, keepalives, overlay addresses, MTU and routes, configured with
// wg(8) and ip(8). Only that reference setup shells out.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/causeway-net/causeway/appliance"
)

// Topology is what the bench needs from a running lab; *lab.Lab satisfies
// it. The bench expects the lab as lab.Up leaves it: every appliance
// running Causeway.
type Topology interface {
	// Netns is the name of node's network namespace.
	Netns(node string) string
	// Command returns a command that runs prog inside node's network
	// namespace. The bench starts it and stops it by the PID it started.
	Command(ctx context.Context, node, prog string, args ...string) *exec.Cmd
	// ApplianceConfig is the configuration appliance name runs with.
	ApplianceConfig(name string) *appliance.Config
	// StopAppliance stops an appliance; when it returns, the appliance's
	// interface and routes are gone.
	StopAppliance(name string) error
	// StartAppliance starts a stopped appliance and waits until it is
	// healthy.
	StartAppliance(ctx context.Context, name string) error
}

// Path names the nodes the bench measures between: an iperf3 client host
// behind one appliance and an iperf3 server host behind another.
type Path struct {
	Client          string // host that runs the iperf3 client
	ClientAppliance string // the client site's appliance; RTT probes start here
	// ClientPartner, if set, is the other member of the client site's
	// pair: the bench stops it for the whole run (it would take the site
	// over each time the bench stops ClientAppliance) and starts it again
	// at the end.
	ClientPartner   string
	ServerAppliance string     // the server site's appliance; RTT probes go here
	Server          string     // host that runs the iperf3 server
	ServerAddr      netip.Addr // the server host's address, the iperf3 target
}

// LabPath is the lab's office host to VPC backend path, through office-1a,
// the preferred member of office-1's pair.
var LabPath = Path{
	Client:          "office-1-host",
	ClientAppliance: "office-1a",
	ClientPartner:   "office-1b",
	ServerAppliance: "vpc-1",
	Server:          "vpc-1-backend-1",
	ServerAddr:      netip.MustParseAddr("10.20.0.10"),
}

// Defaults for the zero fields of Options.
const (
	DefaultRounds       = 5
	DefaultDuration     = 5 * time.Second
	DefaultPings        = 300
	DefaultPingInterval = 10 * time.Millisecond
)

// DefaultStreams are the iperf3 stream counts measured by default.
var DefaultStreams = []int{1, 4}

// Options configure Run. The zero value runs the default bench on LabPath,
// building the stock daemon from the Causeway module found above the
// working directory.
type Options struct {
	// Rounds is how many times each dataplane is measured; zero means
	// DefaultRounds. Rounds alternate which dataplane goes first.
	Rounds int
	// Duration is the measured length of each iperf3 test, in whole
	// seconds; zero means DefaultDuration.
	Duration time.Duration
	// Omit is how long each iperf3 test runs before it starts counting
	// (iperf3 --omit, to leave out TCP slow start), in whole seconds; zero
	// omits nothing.
	Omit time.Duration
	// Streams are the parallel TCP stream counts to measure, one iperf3
	// test each; nil means DefaultStreams.
	Streams []int
	// Pings is the number of echo requests per RTT measurement; zero
	// means DefaultPings.
	Pings int
	// PingInterval is the time between echo requests; zero means
	// DefaultPingInterval.
	PingInterval time.Duration

	// WireGuardGo is a prebuilt stock wireguard-go daemon. Empty means
	// build one from ModuleRoot into a temporary directory.
	WireGuardGo string
	// ModuleRoot is the Causeway source tree whose go.mod pins the
	// wireguard-go version to build. Empty means the nearest directory at
	// or above the working directory that holds Causeway's go.mod.
	ModuleRoot string
	// CausewayBinary is the causeway binary the lab's appliances run; it is
	// only read, for the wireguard-go version it links. Empty means the
	// running program.
	CausewayBinary string

	// Path is what to measure; the zero value means LabPath.
	Path Path
	// Progress, if not nil, receives one human-readable line per
	// measurement while the bench runs.
	Progress io.Writer
	// Logger receives debug detail (every command run); nil discards it.
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.Rounds == 0 {
		o.Rounds = DefaultRounds
	}
	if o.Duration == 0 {
		o.Duration = DefaultDuration
	}
	if o.Streams == nil {
		o.Streams = DefaultStreams
	}
	if o.Pings == 0 {
		o.Pings = DefaultPings
	}
	if o.PingInterval == 0 {
		o.PingInterval = DefaultPingInterval
	}
	if o.Path == (Path{}) {
		o.Path = LabPath
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	var errs []error
	if o.Rounds < 1 {
		errs = append(errs, fmt.Errorf("rounds: want at least 1, got %d", o.Rounds))
	}
	if o.Duration < time.Second || o.Duration%time.Second != 0 {
		errs = append(errs, fmt.Errorf("duration: want whole seconds, at least 1s, got %s", o.Duration))
	}
	if o.Omit < 0 || o.Omit%time.Second != 0 {
		errs = append(errs, fmt.Errorf("omit: want whole seconds, got %s", o.Omit))
	}
	if len(o.Streams) == 0 {
		errs = append(errs, errors.New("streams: want at least one stream count"))
	}
	for _, n := range o.Streams {
		if n < 1 || n > 128 {
			errs = append(errs, fmt.Errorf("streams: want 1-128, got %d", n))
		}
	}
	if o.Pings < 10 {
		errs = append(errs, fmt.Errorf("pings: want at least 10, got %d", o.Pings))
	}
	if o.PingInterval < 2*time.Millisecond {
		errs = append(errs, fmt.Errorf("ping interval: want at least 2ms, got %s", o.PingInterval))
	}
	p := o.Path
	if p.Client == "" || p.ClientAppliance == "" || p.ServerAppliance == "" || p.Server == "" || !p.ServerAddr.IsValid() {
		errs = append(errs, errors.New("path: every field must be set"))
	}
	return o, errors.Join(errs...)
}

// Check reports the problems Run would find before it touches the lab:
// invalid options, missing programs, a WireGuardGo that is not a Go binary
// linking wireguard-go, or no source tree to build the stock daemon from.
func (o Options) Check() error {
	o, err := o.withDefaults()
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := checkTools(); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if o.WireGuardGo != "" {
		if _, err := linkedWireGuard(o.WireGuardGo); err != nil {
			return fmt.Errorf("bench: stock wireguard-go: %w", err)
		}
		return nil
	}
	if o.ModuleRoot == "" {
		wd, err := os.Getwd()
		if err == nil {
			_, err = findModuleRoot(wd)
		}
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	if _, err := exec.LookPath("go"); err != nil {
		return errors.New("bench: building the stock wireguard-go needs the go command; or pass a prebuilt daemon")
	}
	return nil
}

// Programs the bench runs, and the Debian packages they come from.
var tools = []struct{ prog, pkg string }{
	{"iperf3", "iperf3"},
	{"ping", "iputils-ping"},
	{"wg", "wireguard-tools"},
	{"ip", "iproute2"},
	{"sysctl", "procps"},
	{"setpriv", "util-linux"},
}

// checkTools reports the programs in tools that are not installed.
func checkTools() error {
	var missing []string
	for _, t := range tools {
		if _, err := exec.LookPath(t.prog); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", t.prog, t.pkg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing programs: %s", strings.Join(missing, ", "))
	}
	return nil
}

// bench is one Run.
type bench struct {
	topo Topology
	opts Options
	path Path
	log  *slog.Logger

	client, server *appliance.Config // the two appliances' configs
	underlay       netip.Addr        // the server appliance's underlay address
	mtu            map[string]int    // Causeway's overlay MTU per appliance

	causeway *causewayPlane
	stock    *stockPlane
	// partnerStopped: the bench stopped Path.ClientPartner.
	partnerStopped bool
	// current is the dataplane that is (or is being) brought up.
	current dataplane
	tmpDir  string
}

// Run measures both dataplanes, opts.Rounds times each, and returns the
// figures. It leaves the lab as it found it, with Causeway on both
// appliances, and removes everything it created: the stock daemons, their
// interfaces and UAPI sockets, the forwarding setting it changed and its
// temporary files. If ctx is cancelled it still removes what it created,
// but does not wait to restart the Causeway appliances it stopped.
//
// On error, Run also returns the rounds completed so far, if any.
func Run(ctx context.Context, topo Topology, opts Options) (*Result, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	b := &bench{topo: topo, opts: o, path: o.Path, log: o.Logger, mtu: map[string]int{}}
	res := &Result{
		Path: o.Path.String(),
		Settings: Settings{
			Rounds: o.Rounds, Streams: o.Streams,
			DurationSeconds: o.Duration.Seconds(), OmitSeconds: o.Omit.Seconds(),
			Pings: o.Pings, PingIntervalMS: ms(o.PingInterval),
		},
	}
	err = b.run(ctx, res)
	if err != nil && ctx.Err() != nil {
		// Whatever failed, failed because the bench was told to stop.
		err = fmt.Errorf("interrupted: %w", context.Cause(ctx))
	}
	if cerr := b.cleanup(ctx); cerr != nil {
		err = errors.Join(err, cerr)
	}
	res.summarize()
	if err != nil {
		if len(res.Rounds) == 0 {
			return nil, fmt.Errorf("bench: %w", err)
		}
		return res, fmt.Errorf("bench: %w", err)
	}
	return res, nil
}

func (b *bench) run(ctx context.Context, res *Result) error {
	if err := b.prepare(ctx, res); err != nil {
		return err
	}
	if p := b.path.ClientPartner; p != "" {
		b.log.Debug("stopping the client's pair partner for the run", "appliance", p)
		b.partnerStopped = true
		if err := b.topo.StopAppliance(p); err != nil {
			return fmt.Errorf("stopping the client's pair partner %s: %w", p, err)
		}
	}
	planes := map[Dataplane]dataplane{Causeway: b.causeway, Stock: b.stock}
	for i := range b.opts.Rounds {
		round := Round{Round: i + 1}
		for _, name := range roundOrder(i) {
			dp := planes[name]
			if err := b.switchTo(ctx, dp); err != nil {
				return fmt.Errorf("round %d: %w", i+1, err)
			}
			m, err := b.measure(ctx, dp)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", i+1, dp.kind(), err)
			}
			round.Order = append(round.Order, dp.kind())
			if dp.kind() == Causeway {
				round.Causeway = m
			} else {
				round.Stock = m
			}
			fmt.Fprintf(b.opts.Progress, "round %d/%d  %s\n", i+1, b.opts.Rounds, m.line())
		}
		res.Rounds = append(res.Rounds, round)
	}
	return nil
}

// roundOrder is the order the dataplanes go in, in round i (from 0):
// alternating, so that neither always runs on a lab that has been up for
// longer, and so that a round needs only one swap.
func roundOrder(i int) []Dataplane {
	if i%2 == 0 {
		return []Dataplane{Causeway, Stock}
	}
	return []Dataplane{Stock, Causeway}
}

// prepare checks the tools and the topology, records Causeway's interfaces
// and gets the stock daemon.
func (b *bench) prepare(ctx context.Context, res *Result) error {
	if err := checkTools(); err != nil {
		return err
	}
	b.client = b.topo.ApplianceConfig(b.path.ClientAppliance)
	b.server = b.topo.ApplianceConfig(b.path.ServerAppliance)
	if b.client == nil || b.server == nil {
		return fmt.Errorf("the lab has no appliance %q or %q", b.path.ClientAppliance, b.path.ServerAppliance)
	}
	i := slices.IndexFunc(b.client.Peers, func(p appliance.PeerConfig) bool { return p.OverlayAddr == b.server.OverlayAddr })
	if i < 0 || len(b.client.Peers[i].Endpoints) == 0 {
		return fmt.Errorf("%s has no peer %s with an endpoint", b.client.Name, b.server.Name)
	}
	b.underlay = b.client.Peers[i].Endpoints[0].Addr()

	b.causeway = &causewayPlane{b: b}
	var err error
	res.Causeway.Name = Causeway
	if res.Causeway.WireGuardVersion, err = linkedWireGuard(b.opts.CausewayBinary); err != nil {
		return err
	}
	for _, cfg := range b.appliances() {
		l, err := b.link(ctx, cfg.Name, cfg.Interface)
		if err != nil {
			return fmt.Errorf("reading Causeway's interface (is the appliance running?): %w", err)
		}
		b.mtu[cfg.Name] = l.MTU
		res.Causeway.Interfaces = append(res.Causeway.Interfaces, Interface{Node: cfg.Name, Name: cfg.Interface, MTU: l.MTU})
	}

	bin := b.opts.WireGuardGo
	res.Stock.Name = Stock
	res.Stock.Built = bin == ""
	if bin == "" {
		if b.tmpDir, err = os.MkdirTemp("", "causeway-bench-"); err != nil {
			return err
		}
		if bin, err = buildStock(ctx, b.opts.ModuleRoot, b.tmpDir, b.log); err != nil {
			return err
		}
	}
	if res.Stock.WireGuardVersion, err = linkedWireGuard(bin); err != nil {
		return fmt.Errorf("stock wireguard-go: %w", err)
	}
	if res.Stock.WireGuardVersion != res.Causeway.WireGuardVersion {
		res.Warnings = append(res.Warnings, fmt.Sprintf(
			"the stock daemon is wireguard-go %s but Causeway links %s: the comparison is not like for like",
			res.Stock.WireGuardVersion, res.Causeway.WireGuardVersion))
	}
	b.stock = newStockPlane(b, bin)
	for _, n := range b.stock.nodes {
		res.Stock.Interfaces = append(res.Stock.Interfaces, Interface{Node: n.cfg.Name, Name: n.iface, MTU: n.mtu})
	}
	b.current = b.causeway
	return nil
}

// command returns a command that runs prog in node's namespace and gets
// SIGTERM if the bench dies (setpriv --pdeathsig). Its context is never
// cancelled: the bench stops what it started itself, by PID, SIGTERM
// first (see proc).
func (b *bench) command(node, prog string, args ...string) *exec.Cmd {
	argv := append([]string{"--pdeathsig", "TERM", "--", prog}, args...)
	return b.topo.Command(context.Background(), node, "setpriv", argv...)
}

// appliances are the two appliances whose dataplane the bench swaps.
func (b *bench) appliances() []*appliance.Config { return []*appliance.Config{b.client, b.server} }

// switchTo stops the current dataplane and brings up dp.
func (b *bench) switchTo(ctx context.Context, dp dataplane) error {
	if b.current == dp {
		return nil
	}
	if b.current != nil {
		if err := b.current.stop(); err != nil {
			return fmt.Errorf("stopping %s: %w", b.current.kind(), err)
		}
	}
	b.current = dp
	if err := dp.start(ctx); err != nil {
		return fmt.Errorf("starting %s: %w", dp.kind(), err)
	}
	return nil
}

// cleanup removes the stock dataplane and puts Causeway back.
func (b *bench) cleanup(ctx context.Context) error {
	var errs []error
	if b.stock != nil {
		if err := b.stock.stop(); err != nil {
			errs = append(errs, fmt.Errorf("removing the stock dataplane: %w", err))
		}
	}
	if b.causeway != nil && ctx.Err() == nil {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		if err := b.causeway.start(sctx); err != nil {
			errs = append(errs, fmt.Errorf("restarting Causeway: %w", err))
		}
		if b.partnerStopped {
			if err := b.topo.StartAppliance(sctx, b.path.ClientPartner); err != nil {
				errs = append(errs, fmt.Errorf("restarting the client's pair partner: %w", err))
			}
		}
		cancel()
	}
	if b.tmpDir != "" {
		if err := os.RemoveAll(b.tmpDir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// measure checks that dp carries the path's traffic, then takes the RTT
// and throughput figures.
func (b *bench) measure(ctx context.Context, dp dataplane) (Measurement, error) {
	m := Measurement{Dataplane: dp.kind(), Start: time.Now().UTC()}
	if err := b.verify(ctx, dp); err != nil {
		return m, err
	}
	var err error
	if m.RTT, err = b.measureRTT(ctx); err != nil {
		return m, err
	}
	for _, n := range b.opts.Streams {
		t, err := b.iperf(ctx, n)
		if err != nil {
			return m, err
		}
		m.Throughput = append(m.Throughput, t)
	}
	return m, nil
}
