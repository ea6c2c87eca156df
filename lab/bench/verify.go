package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// reachTimeout bounds how long a freshly started dataplane gets to pass
// its first packet (a WireGuard handshake, plus ARP on the LANs).
const reachTimeout = 20 * time.Second

// verify checks that dp, and nothing else, carries the path: on both
// appliances its interface is up with Causeway's MTU and every peer prefix
// routes into it; then the server host answers the client host, and the
// server appliance's overlay address answers the client appliance.
func (b *bench) verify(ctx context.Context, dp dataplane) error {
	for _, cfg := range b.appliances() {
		iface := dp.iface(cfg.Name)
		l, err := b.link(ctx, cfg.Name, iface)
		if err != nil {
			return err
		}
		if !slices.Contains(l.Flags, "UP") {
			return fmt.Errorf("%s on %s is not up", iface, cfg.Name)
		}
		if want := b.mtu[cfg.Name]; l.MTU != want {
			return fmt.Errorf("%s on %s has MTU %d, want %d (Causeway's)", iface, cfg.Name, l.MTU, want)
		}
		for _, p := range cfg.Peers {
			for _, a := range p.AllowedPrefixes() {
				dev, err := b.routeDev(ctx, cfg.Name, a.Addr())
				if err != nil {
					return err
				}
				if dev != iface {
					return fmt.Errorf("on %s, %s routes via %s, not %s", cfg.Name, a, dev, iface)
				}
			}
		}
	}
	if err := b.waitReachable(ctx, b.path.Client, b.path.ServerAddr); err != nil {
		return fmt.Errorf("%s: no traffic through %s: %w", dp.kind(), dp.iface(b.client.Name), err)
	}
	if err := b.waitReachable(ctx, b.client.Name, b.server.OverlayAddr); err != nil {
		return fmt.Errorf("%s: no traffic through %s: %w", dp.kind(), dp.iface(b.client.Name), err)
	}
	return nil
}

// linkInfo is the part of `ip -j link show` the bench reads.
type linkInfo struct {
	Name  string   `json:"ifname"`
	Flags []string `json:"flags"`
	MTU   int      `json:"mtu"`
}

// link reads interface name in node's namespace.
func (b *bench) link(ctx context.Context, node, name string) (linkInfo, error) {
	out, err := b.output(ctx, node, "ip", "-j", "link", "show", "dev", name)
	if err != nil {
		return linkInfo{}, err
	}
	l, err := parseLink(out)
	if err != nil {
		return linkInfo{}, fmt.Errorf("reading %s on %s: %w", name, node, err)
	}
	return l, nil
}

// parseLink reads the output of `ip -j link show dev NAME`.
func parseLink(out []byte) (linkInfo, error) {
	var ls []linkInfo
	if err := json.Unmarshal(out, &ls); err != nil || len(ls) != 1 || ls[0].Name == "" {
		return linkInfo{}, fmt.Errorf("unexpected output of ip -j link: %.200q", out)
	}
	return ls[0], nil
}

// routeDev returns the interface node's kernel would send a packet to dst
// through.
func (b *bench) routeDev(ctx context.Context, node string, dst netip.Addr) (string, error) {
	out, err := b.output(ctx, node, "ip", "-j", "route", "get", dst.String())
	if err != nil {
		return "", err
	}
	dev, err := parseRouteDev(out)
	if err != nil {
		return "", fmt.Errorf("route to %s on %s: %w", dst, node, err)
	}
	return dev, nil
}

// parseRouteDev reads the output interface from `ip -j route get ADDR`.
func parseRouteDev(out []byte) (string, error) {
	var rs []struct {
		Dev string `json:"dev"`
	}
	if err := json.Unmarshal(out, &rs); err != nil || len(rs) == 0 || rs[0].Dev == "" {
		return "", fmt.Errorf("unexpected output of ip -j route: %.200q", out)
	}
	return rs[0].Dev, nil
}

// waitReachable pings dst from node once a second until it answers.
func (b *bench) waitReachable(ctx context.Context, node string, dst netip.Addr) error {
	ctx, cancel := context.WithTimeout(ctx, reachTimeout)
	defer cancel()
	var last error
	for {
		_, err := b.output(ctx, node, "ping", "-n", "-q", "-c", "1", "-W", "1", dst.String())
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			if last == nil {
				last = err
			}
			return fmt.Errorf("%s does not answer %s after %s: %w", dst, node, reachTimeout, errors.Join(last, ctx.Err()))
		}
		last = err
	}
}

// output runs prog in node's namespace, stopping it if ctx ends, and
// returns its standard output. The error names the command and the node
// and carries the end of what the command wrote to stderr; stdout is
// returned even then.
func (b *bench) output(ctx context.Context, node, prog string, args ...string) ([]byte, error) {
	cmd := b.command(node, prog, args...)
	stdout := &limitedBuffer{max: 16 << 20}
	cmd.Stdout = stdout
	line := prog + " " + strings.Join(args, " ")
	b.log.Debug("run", "node", node, "cmd", line)
	p, err := startProc(prog, cmd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", node, err)
	}
	if err := p.wait(ctx); err != nil {
		if ctx.Err() != nil {
			return stdout.buf.Bytes(), fmt.Errorf("%s: %s: %w", node, line, ctx.Err())
		}
		msg := p.out.String()
		if msg == "" {
			msg = strings.TrimSpace(stdout.buf.String())
			if len(msg) > 300 {
				msg = msg[:300] + "..."
			}
		}
		return stdout.buf.Bytes(), &cmdError{node: node, cmd: line, err: err, stderr: msg}
	}
	return stdout.buf.Bytes(), nil
}

// cmdError is a command that failed inside a node.
type cmdError struct {
	node, cmd string
	err       error
	stderr    string
}

func (e *cmdError) Error() string {
	s := fmt.Sprintf("%s: %s: %v", e.node, e.cmd, e.err)
	if e.stderr != "" {
		s += ": " + e.stderr
	}
	return s
}

func (e *cmdError) Unwrap() error { return e.err }
