package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/causeway-net/causeway/appliance"
)

func runAppliance(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "pubkey" {
		return runAppliancePubkey(args[1:])
	}
	fs := newFlagSet("appliance", `appliance --controller URL --state-dir DIR [--token T] [flags]
       causeway appliance --config FILE [--check]
       causeway appliance pubkey --state-dir DIR

Runs the site appliance in the foreground (see docs/appliance.md). It
generates its WireGuard private key in the state directory on first start
(mode 0600); the key never leaves the device and is never printed.

Managed by a controller (--controller): the first start enrolls with the
one-time --token and keeps the device credential in the state directory;
later starts need no token. The appliance follows the controller over one
long-poll and keeps the overlay running on the last netmap it applied when
the controller is unreachable, also across its own restart. It meters the
traffic it carries per peer site (and as the site's Internet gateway) in
usage records every --usage-interval, spooled in the state directory and
sent to the controller (docs/usage-spool.md).

With --gateway (or "gateway" in the config file) the appliance is also the
LAN's Internet gateway: traffic from the site's LAN prefixes to the
Internet is NATed and balanced per flow over the uplinks whose probed
paths are up (docs/gateway.md).

With --pair-vip (or "pair" with "lan_interface" in the config file) the
appliance is one of the two members of its site's PAIR (docs/pair.md): the
member that is active holds the LAN's gateway address (the VIP) and
announces it with gratuitous ARP; each member lends its WAN link to the
other and borrows the other's over the LAN, so its overlay paths and the
Internet gateway use both ISPs. A pair member needs --gateway (its LAN)
and --uplinks. Priority and drain come from the controller once the site
has both members (causeway ctl pair ...); --pair-priority is the priority
until then. GET /pair on --http-listen shows the member's state.

From a static file (--config): SIGHUP reloads the file (peers and prefixes
change in place; a bad file is logged and the running config kept).

SIGTERM or SIGINT removes everything the appliance added and exits. Logs are
JSON on stdout.

'pubkey' prints the public key of the appliance that uses DIR, creating the
key if there is none yet.

Flags:`)
	configPath := fs.String("config", envDefault("CAUSEWAY_CONFIG", ""), "static config file (env CAUSEWAY_CONFIG)")
	check := fs.Bool("check", false, "with --config: validate the file and exit")
	controller := fs.String("controller", envDefault("CAUSEWAY_CONTROLLER", ""), "controller base URL, e.g. https://ctl.example:8443 (env CAUSEWAY_CONTROLLER)")
	token := fs.String("token", envDefault("CAUSEWAY_ENROLL_TOKEN", ""), "one-time enrollment token, needed on the first start only (env CAUSEWAY_ENROLL_TOKEN)")
	caPin := fs.String("ca-fingerprint", envDefault("CAUSEWAY_CA_FINGERPRINT", ""), "SHA-256 of the controller's CA certificate, hex; empty trusts the system roots (env CAUSEWAY_CA_FINGERPRINT)")
	stateDir := fs.String("state-dir", envDefault("CAUSEWAY_STATE_DIR", "/var/lib/causeway"), "with --controller: directory for the key, credential and last netmap (env CAUSEWAY_STATE_DIR)")
	name := fs.String("name", envDefault("CAUSEWAY_NAME", ""), "with --controller: appliance name to ask for at enrollment (env CAUSEWAY_NAME)")
	endpoints := fs.String("endpoints", envDefault("CAUSEWAY_ENDPOINTS", ""), "with --controller: comma-separated IP:port where peers reach this appliance; empty if it only dials out (env CAUSEWAY_ENDPOINTS)")
	uplinks := fs.String("uplinks", envDefault("CAUSEWAY_UPLINKS", ""), "with --controller: comma-separated WAN interface names; each gets a WireGuard socket pinned to it (multipath bind); empty uses one kernel-routed socket (env CAUSEWAY_UPLINKS)")
	gw := fs.String("gateway", envDefault("CAUSEWAY_GATEWAY", ""), "with --controller: be the Internet gateway of the LAN on this interface (e.g. lan0), over every --uplinks uplink via its default route; needs --uplinks (env CAUSEWAY_GATEWAY)")
	pairVIP := fs.String("pair-vip", envDefault("CAUSEWAY_PAIR_VIP", ""), "with --controller: be a pair member; the LAN's gateway address with its prefix length, e.g. 10.10.0.1/24 (env CAUSEWAY_PAIR_VIP)")
	pairLANIf := fs.String("pair-lan-interface", envDefault("CAUSEWAY_PAIR_LAN_INTERFACE", ""), "with --pair-vip: the LAN interface (the VIP, the LAN heartbeat, the borrowed uplink); default --gateway (env CAUSEWAY_PAIR_LAN_INTERFACE)")
	pairLANAddr := fs.String("pair-lan-addr", envDefault("CAUSEWAY_PAIR_LAN_ADDR", ""), "with --pair-vip: this member's own address on the LAN, e.g. 10.10.0.2 (env CAUSEWAY_PAIR_LAN_ADDR)")
	pairPartnerLAN := fs.String("pair-partner-lan-addr", envDefault("CAUSEWAY_PAIR_PARTNER_LAN_ADDR", ""), "with --pair-vip: the partner's address on the LAN (env CAUSEWAY_PAIR_PARTNER_LAN_ADDR)")
	pairWANIf := fs.String("pair-wan-interface", envDefault("CAUSEWAY_PAIR_WAN_INTERFACE", ""), "with --pair-vip: the uplink lent to the partner and used for the WAN heartbeat; default the first of --uplinks (env CAUSEWAY_PAIR_WAN_INTERFACE)")
	pairWANAddr := fs.String("pair-wan-addr", envDefault("CAUSEWAY_PAIR_WAN_ADDR", ""), "with --pair-vip: this member's address on that uplink (env CAUSEWAY_PAIR_WAN_ADDR)")
	pairPartnerWAN := fs.String("pair-partner-wan", envDefault("CAUSEWAY_PAIR_PARTNER_WAN", ""), "with --pair-vip: the partner's WAN address (env CAUSEWAY_PAIR_PARTNER_WAN)")
	pairBorrowed := fs.String("pair-borrowed-uplink", envDefault("CAUSEWAY_PAIR_BORROWED_UPLINK", appliance.DefaultBorrowedUplink), "with --pair-vip: the name of the partner's uplink as this member uses it (logs, metrics, path reports) (env CAUSEWAY_PAIR_BORROWED_UPLINK)")
	pairLendPort := fs.Uint("pair-lend-port", appliance.DefaultLendPort, "with --pair-vip: the UDP port on --pair-wan-addr forwarded to the partner's WireGuard socket (env CAUSEWAY_PAIR_LEND_PORT)")
	pairPriority := fs.Int("pair-priority", 100, "with --pair-vip: priority (0-255, higher preferred) until the controller's netmap has one (env CAUSEWAY_PAIR_PRIORITY)")
	pairPreempt := fs.Bool("pair-preempt", false, "with --pair-vip: with the higher priority, take the active role back once eligible for 1 s (env CAUSEWAY_PAIR_PREEMPT)")
	iface := fs.String("interface", envDefault("CAUSEWAY_INTERFACE", appliance.DefaultInterface), "with --controller: overlay interface name (env CAUSEWAY_INTERFACE)")
	port := fs.Uint("listen-port", appliance.DefaultListenPort, "with --controller: WireGuard UDP port (env CAUSEWAY_LISTEN_PORT)")
	mtu := fs.Int("mtu", 0, "with --controller: overlay MTU, 0 derives it (env CAUSEWAY_MTU)")
	httpListen := fs.String("http-listen", envDefault("CAUSEWAY_HTTP_LISTEN", appliance.DefaultHTTPListen), "with --controller: address for /healthz and /metrics, empty disables (env CAUSEWAY_HTTP_LISTEN)")
	usageInterval := fs.Duration("usage-interval", appliance.UsageInterval, "with --controller: how often a usage record is cut, 1s-1h; records never cross an hour boundary (env CAUSEWAY_USAGE_INTERVAL)")
	usageSpool := fs.Int64("usage-spool-max", appliance.DefaultUsageSpoolBytes, "with --controller: bound of the usage spool in the state directory, in bytes (env CAUSEWAY_USAGE_SPOOL_MAX)")
	logLevel := fs.String("log-level", envDefault("CAUSEWAY_LOG_LEVEL", "info"), "debug, info, warn or error (env CAUSEWAY_LOG_LEVEL)")
	if err := flagsFromEnv(fs, map[string]string{"listen-port": "CAUSEWAY_LISTEN_PORT", "mtu": "CAUSEWAY_MTU",
		"usage-interval": "CAUSEWAY_USAGE_INTERVAL", "usage-spool-max": "CAUSEWAY_USAGE_SPOOL_MAX",
		"pair-lend-port": "CAUSEWAY_PAIR_LEND_PORT", "pair-priority": "CAUSEWAY_PAIR_PRIORITY", "pair-preempt": "CAUSEWAY_PAIR_PREEMPT"}); err != nil {
		return err
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if (*configPath == "") == (*controller == "") {
		return usagef("give exactly one of --controller or --config")
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		return err
	}
	if n, set := applianceProcs(); set {
		log.Info("Go threads limited to leave the kernel's packet processing a core", "gomaxprocs", n, "cpus", runtime.NumCPU())
	}
	if *controller != "" {
		if *port == 0 || *port > 65535 {
			return usagef("--listen-port: want 1-65535, got %d", *port)
		}
		if *usageInterval < appliance.MinUsageInterval || *usageInterval > appliance.MaxUsageInterval {
			return usagef("--usage-interval: want %v to %v, got %v", appliance.MinUsageInterval, appliance.MaxUsageInterval, *usageInterval)
		}
		if *usageSpool < appliance.MinUsageSpoolBytes {
			return usagef("--usage-spool-max: want at least %d bytes, got %d", appliance.MinUsageSpoolBytes, *usageSpool)
		}
		var eps []netip.AddrPort
		for _, s := range strings.Split(*endpoints, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			ep, err := netip.ParseAddrPort(s)
			if err != nil {
				return usagef("--endpoints: want IP:port, got %q", s)
			}
			eps = append(eps, ep)
		}
		var ups []appliance.Uplink
		for _, s := range strings.Split(*uplinks, ",") {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			if len(s) > 15 || strings.ContainsAny(s, "/ ") {
				return usagef("--uplinks: %q is not an interface name", s)
			}
			ups = append(ups, appliance.Uplink{Name: s, Interface: s})
		}
		var gateway *appliance.GatewayConfig
		if *gw != "" {
			if len(*gw) > 15 || strings.ContainsAny(*gw, "/ ,") {
				return usagef("--gateway: %q is not an interface name", *gw)
			}
			if len(ups) == 0 {
				return usagef("--gateway needs --uplinks: the WAN interfaces it forwards over")
			}
			gateway = &appliance.GatewayConfig{LANInterface: *gw}
		}
		local := appliance.Local{StateDir: *stateDir, Interface: *iface, ListenPort: uint16(*port), MTU: *mtu,
			HTTPListen: *httpListen, Uplinks: ups, Gateway: gateway}
		if *pairVIP != "" {
			pm, err := pairFlags(pairFlagValues{vip: *pairVIP, lanIf: *pairLANIf, lanAddr: *pairLANAddr, partnerLAN: *pairPartnerLAN,
				wanIf: *pairWANIf, wanAddr: *pairWANAddr, partnerWAN: *pairPartnerWAN, borrowed: *pairBorrowed,
				lendPort: *pairLendPort, preempt: *pairPreempt}, gateway, ups)
			if err != nil {
				return err
			}
			if *pairPriority < 0 || *pairPriority > 255 {
				return usagef("--pair-priority: want 0-255, got %d", *pairPriority)
			}
			local.Pair, local.PairPriority = pm, *pairPriority
		}
		return appliance.RunManaged(ctx, appliance.ManagedOptions{
			Local:      local,
			Controller: *controller, CAFingerprint: *caPin, Token: *token, Name: *name, Endpoints: eps,
			UsageInterval: *usageInterval, UsageSpoolBytes: *usageSpool, Logger: log,
		})
	}
	cfg, err := appliance.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	if *check {
		fmt.Printf("%s: ok (%d peers)\n", *configPath, len(cfg.Peers))
		return nil
	}
	log = log.With("appliance", cfg.Name)
	a, err := appliance.Start(cfg, log)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down", "reason", "signal")
			return a.Close()
		case <-hup:
			next, err := appliance.LoadConfig(*configPath)
			if err == nil {
				err = a.Apply(next)
			}
			if err != nil {
				log.Error("reload refused; keeping the running config", "err", err)
			}
		}
	}
}

type pairFlagValues struct {
	vip, lanIf, lanAddr, partnerLAN, wanIf, wanAddr, partnerWAN, borrowed string
	lendPort                                                              uint
	preempt                                                               bool
}

// pairFlags turns the --pair-* flags into the member settings; the
// appliance validates them again with the rest of its config.
func pairFlags(f pairFlagValues, gw *appliance.GatewayConfig, ups []appliance.Uplink) (*appliance.PairLocal, error) {
	if gw == nil {
		return nil, usagef("--pair-vip needs --gateway: a pair member is its LAN's gateway")
	}
	pm := &appliance.PairLocal{Preempt: f.preempt, LANInterface: cmp.Or(f.lanIf, gw.LANInterface), WANInterface: f.wanIf,
		BorrowedUplink: f.borrowed}
	if pm.LANInterface != gw.LANInterface {
		return nil, usagef("--pair-lan-interface %q: want --gateway's LAN interface %q", pm.LANInterface, gw.LANInterface)
	}
	if pm.WANInterface == "" {
		pm.WANInterface = ups[0].Interface
	}
	vip, err := netip.ParsePrefix(f.vip)
	if err != nil {
		return nil, usagef("--pair-vip: want the gateway address with its prefix length, e.g. 10.10.0.1/24, got %q", f.vip)
	}
	pm.VIP = vip
	for _, a := range []struct {
		flag, v string
		dst     *netip.Addr
	}{{"--pair-lan-addr", f.lanAddr, &pm.LANAddr}, {"--pair-partner-lan-addr", f.partnerLAN, &pm.PartnerLANAddr},
		{"--pair-wan-addr", f.wanAddr, &pm.WANAddr}, {"--pair-partner-wan", f.partnerWAN, &pm.PartnerWANAddr}} {
		ip, err := netip.ParseAddr(a.v)
		if err != nil || !ip.Is4() {
			return nil, usagef("%s: want an IPv4 address, got %q", a.flag, a.v)
		}
		*a.dst = ip
	}
	if f.lendPort == 0 || f.lendPort > 65535 {
		return nil, usagef("--pair-lend-port: want 1-65535, got %d", f.lendPort)
	}
	pm.LendPort = uint16(f.lendPort)
	return pm, nil
}

func runAppliancePubkey(args []string) error {
	fs := newFlagSet("appliance pubkey", "appliance pubkey --state-dir DIR\n\nFlags:")
	dir := fs.String("state-dir", envDefault("CAUSEWAY_STATE_DIR", ""), "the appliance's state directory (env CAUSEWAY_STATE_DIR)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return usagef("--state-dir is required")
	}
	k, err := appliance.LoadOrCreateKey(*dir)
	if err != nil {
		return err
	}
	fmt.Println(k.Public())
	return nil
}

// applianceProcs leaves one CPU to the kernel, unless GOMAXPROCS is set
// in the environment. Every packet the appliance forwards also costs the
// kernel softirq time (the LAN side, the TUN, the UDP sockets); with Go
// threads on every core the two fight over the same CPUs, and on a small
// box that costs throughput (see docs/benchmarks.md).
func applianceProcs() (int, bool) {
	if _, ok := os.LookupEnv("GOMAXPROCS"); ok || runtime.NumCPU() < 2 {
		return runtime.GOMAXPROCS(0), false
	}
	n := runtime.NumCPU() - 1
	runtime.GOMAXPROCS(n)
	return n, true
}

// newLogger returns a JSON logger on stdout at the named level.
func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level: want debug, info, warn or error, got %q", level)
	}
	return slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: l})), nil
}
