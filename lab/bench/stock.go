package bench

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/causeway-net/causeway/appliance"
)

const (
	// wireguardModule is the module that both Causeway's dataplane and the
	// stock daemon come from; its root package is the daemon.
	wireguardModule = "golang.zx2c4.com/wireguard"
	// causewayModule is this module, whose go.mod pins wireguardModule.
	causewayModule = "github.com/causeway-net/causeway"
	// uapiDir is where wireguard-go puts its UAPI socket, <name>.sock. The
	// directory is shared by every network namespace on the machine, so
	// each stock interface needs a name of its own.
	uapiDir = "/var/run/wireguard"
)

// stockPlane is the stock wireguard-go daemon on both appliances.
type stockPlane struct {
	b     *bench
	bin   string
	nodes []*stockNode
	// checkedUAPIDir is set once start has looked for uapiDir, and
	// madeUAPIDir if it was missing then (so a daemon made it).
	checkedUAPIDir, madeUAPIDir bool
}

// stockNode is the stock daemon on one appliance.
type stockNode struct {
	cfg   *appliance.Config
	iface string
	mtu   int

	proc *proc // the daemon, while it runs
	// started is set once a daemon with iface's name has been started, so
	// that stop knows to look for its interface and socket.
	started bool
	// forwarding is the IPv4 forwarding setting start found, if it had to
	// change it; "" if it did not.
	forwarding string
	// vip is the pair member whose VIP start added, nil if none.
	vip *appliance.PairLocal
}

func newStockPlane(b *bench, bin string) *stockPlane {
	s := &stockPlane{b: b, bin: bin}
	for _, cfg := range b.appliances() {
		s.nodes = append(s.nodes, &stockNode{cfg: cfg, iface: stockIface(b.topo.Netns(cfg.Name)), mtu: b.mtu[cfg.Name]})
	}
	return s
}

// stockIface names the stock interface in namespace netns: "wgref" and a
// hash of the namespace name, unique across lab instances and within the
// 15-byte limit.
func stockIface(netns string) string {
	h := fnv.New32a()
	h.Write([]byte(netns))
	return fmt.Sprintf("wgref%08x", h.Sum32())
}

func (s *stockPlane) kind() Dataplane { return Stock }

func (s *stockPlane) iface(node string) string {
	for _, n := range s.nodes {
		if n.cfg.Name == node {
			return n.iface
		}
	}
	return ""
}

func (s *stockPlane) start(ctx context.Context) error {
	if !s.checkedUAPIDir {
		_, err := os.Stat(uapiDir)
		s.checkedUAPIDir, s.madeUAPIDir = true, errors.Is(err, fs.ErrNotExist)
	}
	for _, n := range s.nodes {
		if err := s.startNode(ctx, n); err != nil {
			return fmt.Errorf("%s: %w", n.cfg.Name, err)
		}
	}
	return nil
}

// startNode configures the daemon the way the appliance configures its
// device: same key, port, peers (allowed IPs, first endpoint, keepalive),
// overlay address as a host address, MTU, and a route per allowed prefix
// with the overlay address as source.
func (s *stockPlane) startNode(ctx context.Context, n *stockNode) error {
	b, node := s.b, n.cfg.Name
	fwd, err := b.output(ctx, node, "sysctl", "-n", "net.ipv4.ip_forward")
	if err != nil {
		return err
	}
	if v := strings.TrimSpace(string(fwd)); v != "1" {
		if _, err := b.output(ctx, node, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
			return err
		}
		n.forwarding = v
	}

	cmd := b.command(node, s.bin, "-f", n.iface)
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error")
	b.log.Debug("starting stock wireguard-go", "node", node, "interface", n.iface)
	n.started = true
	if n.proc, err = startProc("wireguard-go "+n.iface, cmd); err != nil {
		return err
	}
	if err := s.waitUAPI(ctx, n); err != nil {
		return err
	}

	args := []string{"set", n.iface, "listen-port", strconv.Itoa(int(n.cfg.ListenPort)),
		"private-key", filepath.Join(n.cfg.StateDir, appliance.KeyFile)}
	// A remote pair's prefixes go to one member, the controller's choice,
	// as the appliance starts out (the bench keeps the other one stopped).
	standby := n.cfg.PairStandby()
	allowedOf := func(p appliance.PeerConfig) []netip.Prefix {
		if standby[p.PublicKey] {
			return p.AllowedPrefixes()[:1]
		}
		return p.AllowedPrefixes()
	}
	for _, p := range n.cfg.Peers {
		allowed := make([]string, 0, 4)
		for _, a := range allowedOf(p) {
			allowed = append(allowed, a.String())
		}
		args = append(args, "peer", p.PublicKey.String(), "allowed-ips", strings.Join(allowed, ","))
		if len(p.Endpoints) > 0 {
			args = append(args, "endpoint", p.Endpoints[0].String())
		}
		if p.Keepalive > 0 {
			args = append(args, "persistent-keepalive", strconv.Itoa(int(p.Keepalive/time.Second)))
		}
	}
	if _, err := b.output(ctx, node, "wg", args...); err != nil {
		return err
	}

	self := n.cfg.OverlayAddr
	ip := [][]string{
		{"address", "add", fmt.Sprintf("%s/%d", self, self.BitLen()), "dev", n.iface},
		{"link", "set", "dev", n.iface, "mtu", strconv.Itoa(n.mtu), "up"},
	}
	for _, p := range n.cfg.Peers {
		for _, a := range allowedOf(p) {
			r := []string{"route", "replace", a.Masked().String(), "dev", n.iface, "scope", "link"}
			if a.Addr().Is4() == self.Is4() {
				r = append(r, "src", self.String())
			}
			ip = append(ip, r)
		}
	}
	if pm := n.cfg.Pair; pm != nil && pm.Member != nil {
		// The pair member's VIP, which it removes when it stops: the LAN
		// host's default route.
		ip = append(ip, []string{"address", "replace", pm.Member.VIP.String(), "dev", pm.Member.LANInterface})
		n.vip = pm.Member
	}
	for _, args := range ip {
		if _, err := b.output(ctx, node, "ip", args...); err != nil {
			return err
		}
	}
	return nil
}

// waitUAPI waits until the daemon answers on its UAPI socket.
func (s *stockPlane) waitUAPI(ctx context.Context, n *stockNode) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		if n.proc.exited() {
			return fmt.Errorf("wireguard-go exited: %v: %s", n.proc.err, n.proc.out)
		}
		_, err := s.b.output(ctx, n.cfg.Name, "wg", "show", n.iface, "listen-port")
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wireguard-go on %s did not open its UAPI socket: %w", n.iface, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *stockPlane) stop() error {
	var errs []error
	for _, n := range s.nodes {
		if err := s.stopNode(n); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.cfg.Name, err))
		}
	}
	if len(errs) == 0 && s.madeUAPIDir {
		// The next start's daemon makes it again. Remove fails,
		// harmlessly, if someone else's socket has appeared there.
		os.Remove(uapiDir)
	}
	return errors.Join(errs...)
}

// stopNode stops the daemon (its TUN, and with it the address and routes,
// goes when it exits), then removes whatever a daemon killed before it
// could clean up left behind, and restores IPv4 forwarding.
func (s *stockPlane) stopNode(n *stockNode) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, node := s.b, n.cfg.Name
	var errs []error
	if n.proc != nil {
		b.log.Debug("stopping stock wireguard-go", "node", node, "pid", n.proc.pid())
		if err := n.proc.stop(); err != nil {
			errs = append(errs, err)
		} else {
			n.proc = nil
		}
	}
	if n.started && n.proc == nil {
		if _, err := b.output(ctx, node, "ip", "link", "show", "dev", n.iface); err == nil {
			if _, err := b.output(ctx, node, "ip", "link", "del", "dev", n.iface); err != nil {
				errs = append(errs, err)
			}
		}
		sock := filepath.Join(uapiDir, n.iface+".sock")
		if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		n.started = false
	}
	if pm := n.vip; pm != nil {
		if _, err := b.output(ctx, node, "ip", "address", "del", pm.VIP.String(), "dev", pm.LANInterface); err != nil {
			errs = append(errs, err)
		} else {
			n.vip = nil
		}
	}
	if n.forwarding != "" {
		if _, err := b.output(ctx, node, "sysctl", "-qw", "net.ipv4.ip_forward="+n.forwarding); err != nil {
			errs = append(errs, err)
		} else {
			n.forwarding = ""
		}
	}
	return errors.Join(errs...)
}

// buildStock builds the wireguard-go daemon into dir from the module root,
// so that it is the golang.zx2c4.com/wireguard version go.mod pins.
func buildStock(ctx context.Context, root, dir string, log *slog.Logger) (string, error) {
	if root == "" {
		wd, err := os.Getwd()
		if err != nil {
			return "", err
		}
		if root, err = findModuleRoot(wd); err != nil {
			return "", err
		}
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", errors.New("building the stock wireguard-go needs the go command; or pass a prebuilt daemon")
	}
	out := filepath.Join(dir, "wireguard-go")
	cmd := exec.CommandContext(ctx, gobin, "build", "-o", out, wireguardModule)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	log.Debug("building stock wireguard-go", "module_root", root)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the stock wireguard-go: %w: %s", err, strings.TrimSpace(string(msg)))
	}
	return out, nil
}

// findModuleRoot returns the nearest directory at or above dir whose go.mod
// declares the Causeway module.
func findModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if modulePath(filepath.Join(d, "go.mod")) == causewayModule {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod of %s at or above %s: run inside the Causeway source tree, or pass a prebuilt stock wireguard-go", causewayModule, dir)
		}
	}
}

// modulePath returns the module path a go.mod file declares, or "".
func modulePath(gomod string) string {
	f, err := os.Open(gomod)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// linkedWireGuard returns the golang.zx2c4.com/wireguard version linked into
// the Go program at path (the running program if path is empty).
func linkedWireGuard(path string) (string, error) {
	var bi *debug.BuildInfo
	if path == "" {
		var ok bool
		if bi, ok = debug.ReadBuildInfo(); !ok {
			return "", errors.New("the running program has no build information")
		}
	} else {
		var err error
		if bi, err = buildinfo.ReadFile(path); err != nil {
			return "", fmt.Errorf("reading the build information of %s: %w", path, err)
		}
	}
	if bi.Main.Path == wireguardModule {
		return bi.Main.Version, nil
	}
	for _, m := range bi.Deps {
		if m.Path != wireguardModule {
			continue
		}
		if m.Replace != nil {
			return m.Replace.Path + " " + m.Replace.Version, nil
		}
		return m.Version, nil
	}
	return "", fmt.Errorf("%s does not link %s", bi.Path, wireguardModule)
}
