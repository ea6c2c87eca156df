// Package appliance is the site agent: it turns an appliance configuration
// into a running dataplane (WireGuard device, routes, forwarding), serves
// its health and metrics, and undoes everything it did on shutdown.
package appliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/causeway-net/causeway/dataplane"
	"github.com/causeway-net/causeway/dataplane/bind"
	"github.com/causeway-net/causeway/dataplane/wgkey"
	"github.com/causeway-net/causeway/probes"
)

// Appliance is a running site appliance. Create it with Start; stop it
// with Close.
type Appliance struct {
	log  *slog.Logger
	key  wgkey.PrivateKey
	dev  *dataplane.Device
	http *http.Server
	mtu  int
	// paths probes the paths of the multipath bind and picks each peer's
	// active one; nil without uplinks (the standard bind).
	paths *prober
	// follow puts each remote pair's prefixes on one of its members and
	// configures the device's peers (follow.go).
	follow *follower
	// gw is the Internet gateway; nil unless cfg.Gateway is set.
	gw *gatewayRunner
	// pair runs the appliance as a member of its site's pair; nil unless
	// cfg.Pair.Member is set (pairmember.go).
	pair *pairRunner

	mu  sync.Mutex // guards cfg
	cfg *Config
	// sites is the metered site of every peer key configured (usage.go).
	sites peerSites
	// metrics are further collectors served on /metrics (http.go).
	metrics extraCollectors

	// undo holds what Start changed outside the device, newest last.
	undo []func() error
}

// Start brings the site up from cfg: it loads (or on first start creates)
// the private key, creates the overlay interface, configures peers and
// routes, enables forwarding, starts the path prober (with uplinks; it
// probes once cfg has a probe key) and starts the HTTP endpoint. It is
// all-or-nothing: on error everything already done is undone.
func Start(cfg *Config, log *slog.Logger) (_ *Appliance, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Appliance{log: log, cfg: cfg, follow: newFollower(log)}
	defer func() {
		if err != nil {
			if uerr := a.runUndo(); uerr != nil {
				log.Error("rolling back a failed start", "err", uerr)
			}
		}
	}()
	if a.key, err = LoadOrCreateKey(cfg.StateDir); err != nil {
		return nil, err
	}
	pub := a.key.Public()
	for i, p := range cfg.Peers {
		if p.PublicKey == pub {
			return nil, &ConfigError{Errs: []error{&FieldError{
				Field: fmt.Sprintf("peers[%d].public_key", i), Msg: "is this appliance's own key"}}}
		}
	}
	a.mtu = cfg.MTU
	if a.mtu == 0 {
		a.mtu = AutoMTU(cfg)
	}
	restore, err := enableForwarding()
	if err != nil {
		return nil, err
	}
	a.undo = append(a.undo, restore)

	var uplinks []bind.Uplink
	var names []string
	for _, u := range cfg.bindUplinks() {
		uplinks = append(uplinks, bind.Uplink{Name: u.Name, Interface: u.Interface, Addr: u.Addr})
		names = append(names, u.Name)
	}
	opts := dataplane.Options{
		Interface:  cfg.Interface,
		MTU:        a.mtu,
		PrivateKey: a.key,
		ListenPort: cfg.ListenPort,
		Address:    cfg.OverlayAddr,
		Uplinks:    uplinks,
		Logger:     log,
	}
	if len(uplinks) > 0 {
		// The prober answers probes as soon as the bind receives any; it
		// sends its own once it has the bind (start, below).
		a.paths = newProber(proberOptions{Uplinks: names, Probe: probes.Options{Interval: cfg.ProbeInterval}, Logger: log,
			OnChange: a.follow.poke})
		if err := a.paths.setKeys(cfg); err != nil {
			return nil, err
		}
		opts.Probes = a.paths
	}
	a.dev, err = dataplane.New(opts)
	if err != nil {
		return nil, err
	}
	a.undo = append(a.undo, a.dev.Close)
	a.sites.note(cfg)
	a.follow.bind(a.dev, a.paths)
	if err := a.follow.apply(cfg); err != nil {
		return nil, err
	}
	switch {
	case a.paths != nil:
		if err := a.paths.start(bindPaths{a.dev.Multipath()}, cfg); err != nil {
			return nil, err
		}
		a.undo = append(a.undo, a.paths.close)
		if cfg.ProbeKey.IsZero() {
			log.Info("path probing off: no probe_key; each peer stays on its first path")
		}
	case !cfg.ProbeKey.IsZero():
		log.Info("path probing off: no uplinks, so one kernel-routed socket and no paths to choose from")
	}
	if cfg.Gateway != nil {
		if err := a.startGateway(cfg); err != nil {
			return nil, err
		}
	}
	if cfg.pairMember() != nil {
		if err := a.startPair(cfg); err != nil {
			return nil, err
		}
	}
	if cfg.HTTPListen != "" {
		ln, err := net.Listen("tcp", cfg.HTTPListen)
		if err != nil {
			return nil, fmt.Errorf("http_listen: %w", err)
		}
		a.http = &http.Server{Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := a.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server stopped", "err", err)
			}
		}()
		a.undo = append(a.undo, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return a.http.Shutdown(ctx)
		})
	}
	log.Info("appliance up",
		"name", cfg.Name, "interface", cfg.Interface, "overlay_addr", cfg.OverlayAddr.String(),
		"listen_port", cfg.ListenPort, "mtu", a.mtu, "offloads", a.dev.Offloads(), "uplinks", len(cfg.Uplinks), "peers", len(cfg.Peers),
		"public_key", pub.String(), "http_listen", cfg.HTTPListen)
	return a, nil
}

// PublicKey is the appliance's WireGuard public key.
func (a *Appliance) PublicKey() wgkey.PublicKey { return a.key.Public() }

// MTU is the overlay interface's MTU.
func (a *Appliance) MTU() int { return a.mtu }

// Device is the running dataplane.
func (a *Appliance) Device() *dataplane.Device { return a.dev }

// Apply moves a running appliance to a new config. Peers (with their
// endpoints and prefixes), the name, the LAN prefixes, the probe keys and
// the SLAs change in place (paths that stay keep their statistics); a
// change of state directory, interface, overlay address, port, MTU, HTTP
// address, uplinks, probe interval or gateway (or of the LAN prefixes of
// an appliance that is the gateway) needs a restart and is refused,
// leaving the running config untouched.
func (a *Appliance) Apply(cfg *Config) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.cfg
	var errs []error
	fixed := func(field string, same bool) {
		if !same {
			errs = append(errs, &FieldError{Field: field, Msg: "cannot change while running; restart the appliance"})
		}
	}
	fixed("state_dir", old.StateDir == cfg.StateDir)
	fixed("interface", old.Interface == cfg.Interface)
	fixed("overlay_addr", old.OverlayAddr == cfg.OverlayAddr)
	fixed("listen_port", old.ListenPort == cfg.ListenPort)
	fixed("mtu", old.MTU == cfg.MTU)
	fixed("http_listen", old.HTTPListen == cfg.HTTPListen)
	fixed("uplinks", slices.Equal(old.Uplinks, cfg.Uplinks))
	fixed("probe_interval", old.ProbeInterval == cfg.ProbeInterval)
	errs = append(errs, gatewayFixed(old, cfg)...)
	if om, nm := old.pairMember(), cfg.pairMember(); (om == nil) != (nm == nil) || (om != nil && *om != *nm) {
		errs = append(errs, &FieldError{Field: "pair", Msg: "the member settings cannot change while running; restart the appliance"})
	}
	if len(errs) > 0 {
		return &ConfigError{Errs: errs}
	}
	a.sites.note(cfg)
	if err := a.follow.apply(cfg); err != nil {
		return err
	}
	if a.paths != nil {
		if err := a.paths.sync(cfg); err != nil {
			return err
		}
	}
	if a.pair != nil {
		if err := a.pair.apply(cfg); err != nil {
			return err
		}
	}
	a.cfg = cfg
	a.log.Info("config applied", "peers", len(cfg.Peers))
	return nil
}

// Config returns the config in force.
func (a *Appliance) Config() *Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg
}

// Close stops the HTTP endpoint, then the pair member (which hands the
// active role over to the partner first), the gateway, the path prober
// (its goroutine joined), then the dataplane (removing the interface with
// its address and routes), then restores IP forwarding to what it was.
func (a *Appliance) Close() error {
	err := a.runUndo()
	a.log.Info("appliance stopped", "name", a.cfg.Name)
	return err
}

func (a *Appliance) runUndo() error {
	var errs []error
	for i := len(a.undo) - 1; i >= 0; i-- {
		if err := a.undo[i](); err != nil {
			errs = append(errs, err)
		}
	}
	a.undo = nil
	return errors.Join(errs...)
}

// devicePeers is the dataplane's view of cfg's peers. The pair members in
// standby get their overlay address only: their pair's prefixes go to the
// other member.
func devicePeers(cfg *Config, standby map[wgkey.PublicKey]bool) []dataplane.Peer {
	out := make([]dataplane.Peer, 0, len(cfg.Peers))
	for _, p := range cfg.Peers {
		dp := dataplane.Peer{PublicKey: p.PublicKey, AllowedIPs: p.AllowedPrefixes(), Keepalive: p.Keepalive}
		if standby[p.PublicKey] {
			dp.AllowedIPs = dp.AllowedIPs[:1]
		}
		if len(p.Endpoints) > 0 {
			dp.Endpoint = p.Endpoints[0]
			dp.Alternates = p.Endpoints[1:]
		}
		out = append(out, dp)
	}
	return out
}

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// enableForwarding turns on IPv4 forwarding in this network namespace and
// returns a function that puts back the previous setting.
func enableForwarding() (func() error, error) {
	prev, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return nil, fmt.Errorf("reading IPv4 forwarding setting: %w", err)
	}
	if strings.TrimSpace(string(prev)) == "1" {
		return func() error { return nil }, nil
	}
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		return nil, fmt.Errorf("enabling IPv4 forwarding: %w", err)
	}
	return func() error {
		if err := os.WriteFile(ipForwardPath, prev, 0o644); err != nil {
			return fmt.Errorf("restoring IPv4 forwarding: %w", err)
		}
		return nil
	}, nil
}

// Underlay sizes for AutoMTU.
const (
	// assumedPathMTU is the smallest underlay MTU the overlay must fit
	// without configuration: common for PPPoE, some cloud and mobile paths.
	assumedPathMTU = 1400
	overheadIPv4   = 20 + 8 + 32 // IPv4 + UDP + WireGuard data header and tag
	overheadIPv6   = 40 + 8 + 32
	minMTU         = 1280
)

// AutoMTU picks the overlay MTU so that an encapsulated full-size inner
// packet fits, unfragmented, in min(1400, the MTU of every local link
// towards a peer endpoint): 1340 over an IPv4 underlay, 1320 if any
// endpoint is IPv6.
func AutoMTU(cfg *Config) int {
	under := assumedPathMTU
	overhead := overheadIPv4
	for _, p := range cfg.Peers {
		for _, ep := range p.Endpoints {
			if ep.Addr().Is6() {
				overhead = overheadIPv6
			}
			if m := linkMTUTowards(ep.Addr()); m > 0 && m < under {
				under = m
			}
		}
	}
	return max(under-overhead, minMTU)
}

// linkMTUTowards returns the MTU of the link the kernel would use to
// reach dst, or 0 if there is no route.
func linkMTUTowards(dst netip.Addr) int {
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil || len(routes) == 0 {
		return 0
	}
	if routes[0].MTU > 0 {
		return routes[0].MTU
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return 0
	}
	return l.Attrs().MTU
}
