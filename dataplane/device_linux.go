// Package dataplane runs an appliance's data path: a userspace WireGuard
// device (golang.zx2c4.com/wireguard) over a Linux TUN with its segmentation
// offloads on, the kernel routes that steer traffic into it (through
// netlink), and per-peer counters for metering.
//
// A Device is configured from typed values only; nothing shells out.
package dataplane

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/causeway-net/causeway/dataplane/bind"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// Options configure New. Interface, MTU, PrivateKey and Address must be set.
type Options struct {
	// Interface is the TUN device name to create. It must not exist yet.
	Interface string
	// MTU of the TUN device (inner packets).
	MTU int
	// PrivateKey is the device's WireGuard identity.
	PrivateKey wgkey.PrivateKey
	// ListenPort is the UDP port; 0 lets the kernel choose.
	ListenPort uint16
	// Address is this device's overlay address. It is assigned as a host
	// address (/32 or /128); reachability comes from per-peer routes.
	Address netip.Addr
	// Uplinks, when set, are the WAN attachments: the device then runs
	// over the multipath bind (dataplane/bind), one socket pinned to each
	// uplink, and every peer's candidate paths are its endpoints on every
	// uplink. Empty means wireguard-go's standard bind (one socket per
	// address family, with UDP GSO/GRO), where routing alone picks the way
	// out.
	Uplinks []bind.Uplink
	// Probes receives the probe datagrams that arrive on the uplinks (see
	// bind.Options.Probes); used only with Uplinks.
	Probes bind.ProbeHandler
	// Logger receives wireguard-go's messages; nil discards them.
	Logger *slog.Logger
}

// Device is a running WireGuard interface. Its methods are safe for
// concurrent use.
type Device struct {
	opts Options
	tun  *countingTUN
	wg   *device.Device
	link netlink.Link
	mp   *bind.Bind // nil with the standard bind

	mu     sync.Mutex // guards the fields below and serializes reconfiguration
	peers  map[wgkey.PublicKey]Peer
	routes map[netip.Prefix]bool
	closed bool
}

// routeProtocol tags the routes the dataplane installs (an unassigned
// number in the rt_protos range, like other daemons use their own).
const routeProtocol netlink.RouteProtocol = 202

// New creates the TUN interface, starts WireGuard on it, assigns the
// overlay address and brings the link up. On error nothing is left behind.
func New(opts Options) (_ *Device, err error) {
	if opts.Interface == "" || opts.MTU <= 0 || opts.PrivateKey.IsZero() || !opts.Address.IsValid() {
		return nil, errors.New("dataplane: Interface, MTU, PrivateKey and Address are required")
	}
	if _, lerr := netlink.LinkByName(opts.Interface); lerr == nil {
		return nil, fmt.Errorf("dataplane: interface %s already exists (is another appliance running here?)", opts.Interface)
	}
	tdev, err := tun.CreateTUN(opts.Interface, opts.MTU)
	if err != nil {
		return nil, fmt.Errorf("dataplane: creating TUN %s: %w", opts.Interface, err)
	}
	ct := newCountingTUN(tdev)
	d := &Device{
		opts:   opts,
		tun:    ct,
		peers:  map[wgkey.PublicKey]Peer{},
		routes: map[netip.Prefix]bool{},
	}
	var b conn.Bind
	if len(opts.Uplinks) > 0 {
		d.mp, err = bind.New(bind.Options{Uplinks: opts.Uplinks, PrivateKey: opts.PrivateKey, Probes: opts.Probes, Logger: opts.Logger})
		if err != nil {
			tdev.Close()
			return nil, fmt.Errorf("dataplane: %w", err)
		}
		b = d.mp
	} else {
		b = conn.NewDefaultBind()
	}
	d.wg = device.NewDevice(ct, b, wgLogger(opts.Logger))
	defer func() {
		if err != nil {
			d.wg.Close() // closes the TUN, which removes the interface
		}
	}()
	if err := d.wg.IpcSet(uapiSet(&opts.PrivateKey, opts.ListenPort, nil, nil)); err != nil {
		return nil, fmt.Errorf("dataplane: configuring WireGuard: %w", err)
	}
	if d.link, err = netlink.LinkByName(opts.Interface); err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	bits := 32
	if opts.Address.Is6() {
		bits = 128
	}
	addr := &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(opts.Address, bits))}
	if err := netlink.AddrReplace(d.link, addr); err != nil {
		return nil, fmt.Errorf("dataplane: assigning %s to %s: %w", opts.Address, opts.Interface, err)
	}
	// No IPv6 link-local address: the overlay is IPv4 and the kernel would
	// otherwise send router and multicast solicitations into the tunnel.
	if err := netlink.LinkSetIP6AddrGenMode(d.link, nl.IN6_ADDR_GEN_MODE_NONE); err != nil {
		return nil, fmt.Errorf("dataplane: configuring %s: %w", opts.Interface, err)
	}
	if err := netlink.LinkSetUp(d.link); err != nil {
		return nil, fmt.Errorf("dataplane: bringing %s up: %w", opts.Interface, err)
	}
	if err := d.wg.Up(); err != nil {
		return nil, fmt.Errorf("dataplane: starting WireGuard: %w", err)
	}
	return d, nil
}

// SetPeers makes the device's peers, and the kernel routes to their allowed
// prefixes, exactly peers. It is idempotent; peers whose key stays keep
// their sessions and counters. On error the previous peer set may be
// partly replaced; calling SetPeers again with the same input converges.
func (d *Device) SetPeers(peers []Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("dataplane: device closed")
	}
	if err := d.setPathsLocked(peers); err != nil {
		return err
	}
	if err := d.wg.IpcSet(uapiSet(nil, 0, d.peers, peers)); err != nil {
		return fmt.Errorf("dataplane: configuring peers: %w", err)
	}
	d.tun.setPeers(peers)
	d.removeGonePathsLocked(peers)
	next := make(map[wgkey.PublicKey]Peer, len(peers))
	want := map[netip.Prefix]bool{}
	for _, p := range peers {
		next[p.PublicKey] = p
		for _, a := range p.AllowedIPs {
			want[a.Masked()] = true
		}
	}
	d.peers = next
	return d.setRoutesLocked(want)
}

// setPathsLocked gives every peer its candidate paths on the multipath
// bind (each endpoint on each uplink) before WireGuard learns about the
// peer, so that the endpoint WireGuard is given maps to a path of it.
func (d *Device) setPathsLocked(peers []Peer) error {
	if d.mp == nil {
		return nil
	}
	for _, p := range peers {
		bp := d.mp.LookupPeer(p.PublicKey)
		if bp == nil {
			bp = d.mp.AddPeer(p.PublicKey)
		}
		var paths []bind.PathID
		for _, ep := range p.candidates() {
			for u := range d.opts.Uplinks {
				paths = append(paths, bind.PathID{Uplink: u, Remote: ep})
			}
		}
		if err := d.mp.SetPaths(bp, paths); err != nil {
			return fmt.Errorf("dataplane: paths of peer %s: %w", p.PublicKey, err)
		}
	}
	return nil
}

func (d *Device) removeGonePathsLocked(peers []Peer) {
	if d.mp == nil {
		return
	}
	keep := make(map[wgkey.PublicKey]bool, len(peers))
	for _, p := range peers {
		keep[p.PublicKey] = true
	}
	for k := range d.peers {
		if !keep[k] {
			d.mp.RemovePeer(k)
		}
	}
}

// Multipath is the multipath bind, or nil when the device runs over the
// standard bind. The probe loop uses it to send probes and move peers
// between paths.
func (d *Device) Multipath() *bind.Bind { return d.mp }

func (d *Device) setRoutesLocked(want map[netip.Prefix]bool) error {
	var errs []error
	for p := range d.routes {
		if want[p] {
			continue
		}
		if err := netlink.RouteDel(d.route(p)); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("removing route %s: %w", p, err))
			continue
		}
		delete(d.routes, p)
	}
	for p := range want {
		if d.routes[p] {
			continue
		}
		if err := netlink.RouteReplace(d.route(p)); err != nil {
			errs = append(errs, fmt.Errorf("adding route %s via %s: %w", p, d.opts.Interface, err))
			continue
		}
		d.routes[p] = true
	}
	if len(errs) > 0 {
		return fmt.Errorf("dataplane: %w", errors.Join(errs...))
	}
	return nil
}

func (d *Device) route(p netip.Prefix) *netlink.Route {
	r := &netlink.Route{
		LinkIndex: d.link.Attrs().Index,
		Dst:       prefixToIPNet(p),
		Scope:     netlink.SCOPE_LINK,
		Protocol:  routeProtocol,
	}
	// Traffic the appliance itself originates must leave with its overlay
	// address: that is the only source the peers accept from it.
	if p.Addr().Is4() == d.opts.Address.Is4() {
		r.Src = d.opts.Address.AsSlice()
	}
	return r
}

// Stats returns every peer's live state and counters.
func (d *Device) Stats() ([]PeerStats, error) {
	get, err := d.wg.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("dataplane: reading WireGuard state: %w", err)
	}
	stats, err := parseUAPIGet(get)
	if err != nil {
		return nil, err
	}
	for i := range stats {
		stats[i].Inner = d.tun.counters(stats[i].PublicKey)
	}
	return stats, nil
}

// Rehandshake starts a new session with a peer at once: its current keys
// stop being used to send and a handshake initiation goes out (unless one
// went out in the last 5 s). For a peer that may have restarted and lost
// its keys while this side still holds a session: traffic sent with the
// old keys would go unanswered until WireGuard's own rekey, up to 15 s.
// Packets sent meanwhile wait for the new session.
func (d *Device) Rehandshake(key wgkey.PublicKey) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("dataplane: device closed")
	}
	p := d.wg.LookupPeer(device.NoisePublicKey(key.Raw()))
	if p == nil {
		return fmt.Errorf("dataplane: no peer %s", key)
	}
	p.ExpireCurrentKeypairs()
	return p.SendHandshakeInitiation(false)
}

// InnerCounters returns the inner counters of every peer this device has
// had, by key; a removed peer keeps its last values. Unlike Stats it does
// not go through WireGuard (no UAPI, none of its locks): it loads the
// counting TUN's atomics, so a reader at any rate costs the data path
// nothing but the cache lines it reads. The counters stay readable after
// Close, so a final reading takes everything the device counted.
func (d *Device) InnerCounters() map[wgkey.PublicKey]Counters { return d.tun.snapshot() }

// Offloads reports whether the TUN runs with segmentation offloads (TSO/
// GRO through virtio headers), which lets it move many packets per call.
func (d *Device) Offloads() bool { return d.tun.BatchSize() > 1 }

// Unrouted counts inner packets that matched no peer (WireGuard drops them).
func (d *Device) Unrouted() Counters { return d.tun.unrouted.load() }

// Close stops WireGuard and removes the interface, and with it the
// address and the routes the device installed. It is safe to call twice.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.wg.Close()
	// The kernel deletes a non-persistent TUN when its descriptor closes;
	// make sure of it in case something else still holds the device.
	if l, err := netlink.LinkByName(d.opts.Interface); err == nil && l.Attrs().Index == d.link.Attrs().Index {
		if err := netlink.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("dataplane: removing %s: %w", d.opts.Interface, err)
		}
	}
	return nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// isNotFound reports whether a netlink error means "already gone".
func isNotFound(err error) bool {
	var le netlink.LinkNotFoundError
	return errors.As(err, &le) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)
}

func wgLogger(l *slog.Logger) *device.Logger {
	if l == nil {
		return &device.Logger{Verbosef: device.DiscardLogf, Errorf: device.DiscardLogf}
	}
	return &device.Logger{
		Verbosef: func(format string, args ...any) { l.Debug(fmt.Sprintf(format, args...), "component", "wireguard") },
		Errorf:   func(format string, args ...any) { l.Error(fmt.Sprintf(format, args...), "component", "wireguard") },
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
