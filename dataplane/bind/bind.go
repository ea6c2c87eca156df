package bind

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/cpu"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// Uplink is one WAN attachment of the appliance.
type Uplink struct {
	// Name identifies the uplink in logs and counters, e.g. "wan1".
	Name string
	// Interface is the network interface the uplink's socket is pinned to
	// with SO_BINDTODEVICE. Empty means not pinned: routing alone decides
	// where the socket's datagrams leave (then Addr must be set).
	Interface string
	// Addr is the local IPv4 address the socket binds to. The zero value
	// binds to any address, which needs Interface to tell the uplinks'
	// sockets apart; datagrams then leave with the source address the
	// kernel picks for the interface.
	Addr netip.Addr
}

// Options configure New. Uplinks must be set; every other field has a
// usable zero value.
type Options struct {
	// Uplinks are the uplinks, one socket each. A PathID's Uplink is an
	// index into this slice. At least one is required.
	Uplinks []Uplink
	// Port, when not zero, is the UDP port every uplink socket binds to,
	// whatever port WireGuard passes to Open (its listen_port). Zero means
	// the port WireGuard asks for, and if that is zero too, one the kernel
	// picks for the first uplink and the others then share.
	Port uint16
	// PrivateKey is the device's WireGuard private key. With it, the bind
	// tells which peer sent a handshake initiation from a source it does
	// not know (a NAT-ed peer, or one whose address changed) by decrypting
	// the initiator's static key. The zero value leaves such sources
	// anonymous: WireGuard then answers them on the path they came in on,
	// as with its standard bind, but the bind cannot attribute the path.
	PrivateKey wgkey.PrivateKey
	// Probes receives every datagram for which probes.IsProbe is true; such
	// datagrams never reach WireGuard. Nil drops them (they are counted).
	Probes ProbeHandler
	// Logger receives the bind's messages; nil discards them.
	Logger *slog.Logger
}

// ProbeHandler handles the probes a bind receives.
type ProbeHandler interface {
	// HandleProbe is called with every received datagram for which
	// probes.IsProbe is true, and the path it came in on. It is called
	// from the receive goroutine of that path's uplink, so concurrently
	// for different uplinks, and must not block or retain pkt. A non-nil
	// reply is sent back on the same path (socket, source address and
	// port) before the receive goroutine continues.
	HandleProbe(pkt []byte, path PathID) (reply []byte)
}

// ProbeFunc adapts a function to ProbeHandler.
type ProbeFunc func(pkt []byte, path PathID) (reply []byte)

// HandleProbe calls f.
func (f ProbeFunc) HandleProbe(pkt []byte, path PathID) []byte { return f(pkt, path) }

// PathID names a path: an uplink of this appliance and an endpoint of the
// peer. The zero value is "no path" (its Remote is invalid).
type PathID struct {
	Uplink int            // index into Options.Uplinks
	Remote netip.AddrPort // the far end's address and port
}

// IsValid reports whether p names a path.
func (p PathID) IsValid() bool { return p.Remote.IsValid() }

func (p PathID) String() string { return fmt.Sprintf("%d/%s", p.Uplink, p.Remote) }

// UplinkCounters count the datagrams of one uplink since New. WireGuard
// datagrams and probes are counted apart.
type UplinkCounters struct {
	TxPackets, TxBytes uint64 // WireGuard datagrams sent (GSO segments counted one by one)
	RxPackets, RxBytes uint64 // WireGuard datagrams received
	ProbesTx, ProbesRx uint64 // probes sent (requests and replies) and received
	SendErrors         uint64 // WireGuard sends that failed, and probe sends that failed
}

// uplinkCounters keeps what senders and the receive goroutine update on
// separate cache lines.
type uplinkCounters struct {
	txPackets, txBytes atomic.Uint64
	probesTx           atomic.Uint64
	sendErrors         atomic.Uint64
	_                  cpu.CacheLinePad
	rxPackets, rxBytes atomic.Uint64
	probesRx           atomic.Uint64
	_                  cpu.CacheLinePad
}

// Errors returned by the bind.
var (
	// ErrNoPath is returned by Send for a peer that has no path yet.
	ErrNoPath = errors.New("bind: peer has no path")
	// ErrUnknownPath is returned by SetActive for a path that is not one
	// of the peer's, and by SendProbe for an uplink that does not exist.
	ErrUnknownPath = errors.New("bind: unknown path")
)

// Bind is a conn.Bind over one UDP socket per uplink. Its methods are safe
// for concurrent use.
//
// Life cycle: New creates a closed bind; WireGuard calls Open (device Up
// or a listen port change) and Close (device Down, Close, or before
// reopening). Peers and their paths outlive Close and Open. SendProbe and
// Send fail with net.ErrClosed while the bind is closed.
type Bind struct {
	opts     Options
	log      *slog.Logger
	opener   *initiationOpener // nil without Options.PrivateKey
	counters []uplinkCounters  // per uplink, for the life of the bind

	state atomic.Pointer[openState] // nil while closed
	table atomic.Pointer[table]     // receive lookup; replaced on change
	index indexTable
	anon  anonSet

	mu    sync.Mutex // guards the fields below; serializes Open, Close, SetMark and path changes
	mark  uint32
	peers map[[wgkey.Len]byte]*Peer
}

// openState is what Open creates and Close tears down.
type openState struct {
	socks []*sock // one per uplink, in Options.Uplinks order
}

var _ conn.Bind = (*Bind)(nil)

// New returns a closed bind for opts.
func New(opts Options) (*Bind, error) {
	if len(opts.Uplinks) == 0 {
		return nil, errors.New("bind: at least one uplink is required")
	}
	seen := map[Uplink]bool{}
	for i, u := range opts.Uplinks {
		if u.Addr.IsValid() && !u.Addr.Is4() {
			return nil, fmt.Errorf("bind: uplink %d (%s): address %s is not IPv4", i, u.Name, u.Addr)
		}
		if u.Interface == "" && !u.Addr.IsValid() {
			return nil, fmt.Errorf("bind: uplink %d (%s): an interface or an address is required", i, u.Name)
		}
		k := Uplink{Interface: u.Interface, Addr: u.Addr}
		if seen[k] {
			return nil, fmt.Errorf("bind: uplink %d (%s): same interface and address as another uplink", i, u.Name)
		}
		seen[k] = true
	}
	if err := supported(); err != nil {
		return nil, err
	}
	b := &Bind{
		opts:     opts,
		log:      opts.Logger,
		counters: make([]uplinkCounters, len(opts.Uplinks)),
		peers:    map[[wgkey.Len]byte]*Peer{},
	}
	b.opts.Uplinks = append([]Uplink(nil), opts.Uplinks...)
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	b.log = b.log.With("component", "bind")
	if !opts.PrivateKey.IsZero() {
		o, err := newInitiationOpener(opts.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("bind: %w", err)
		}
		b.opener = o
	}
	b.index.init()
	b.anon.init(b.opts.Uplinks)
	b.table.Store(newTable(len(opts.Uplinks)))
	return b, nil
}

// Open opens one socket per uplink, all on the same port, and returns one
// receive function per uplink. See Options.Port for the port.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state.Load() != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	if b.opts.Port != 0 {
		port = b.opts.Port
	}
	var (
		socks  []*sock
		actual uint16
		err    error
	)
	for tries := 0; ; tries++ {
		socks, actual, err = b.listenAll(port)
		if err == nil {
			break
		}
		// A random port the first uplink got may be taken on another.
		if port == 0 && errors.Is(err, syscall.EADDRINUSE) && tries < 100 {
			continue
		}
		return nil, 0, err
	}
	fns := make([]conn.ReceiveFunc, len(socks))
	for i, s := range socks {
		fns[i] = newReceiver(b, s).receive
	}
	b.state.Store(&openState{socks: socks})
	b.log.Debug("open", "port", actual, "uplinks", len(socks))
	return fns, actual, nil
}

func (b *Bind) listenAll(port uint16) ([]*sock, uint16, error) {
	var socks []*sock
	for i, u := range b.opts.Uplinks {
		s, p, err := listenUplink(i, u, port, b.mark, &b.counters[i], b.log)
		if err != nil {
			for _, s := range socks {
				s.close()
			}
			return nil, 0, fmt.Errorf("bind: uplink %d (%s): %w", i, u.Name, err)
		}
		port = p
		socks = append(socks, s)
	}
	return socks, port, nil
}

// Close closes the uplink sockets. Receive functions blocked in, or
// called after, Close return net.ErrClosed.
func (b *Bind) Close() error {
	b.mu.Lock()
	st := b.state.Swap(nil)
	b.mu.Unlock()
	if st == nil {
		return nil
	}
	var errs []error
	for _, s := range st.socks {
		if err := s.close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SetMark sets SO_MARK on every uplink socket, now and after reopening.
func (b *Bind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.mark = mark
	if st := b.state.Load(); st != nil {
		for _, s := range st.socks {
			if err := s.setMark(mark); err != nil {
				return fmt.Errorf("bind: setting mark on %s: %w", s.name, err)
			}
		}
	}
	return nil
}

// BatchSize is conn.IdealBatchSize.
func (b *Bind) BatchSize() int { return conn.IdealBatchSize }

// ParseEndpoint returns the endpoint for an "ip:port" string (an IPv4
// address). If a peer has a configured path to that address, it is that
// path's endpoint, so that WireGuard's endpoint for the peer is the peer's
// from the start: call SetPaths before configuring the endpoint. Otherwise
// it is an endpoint of no peer that sends on the first uplink.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if !ap.Addr().Is4() {
		return nil, fmt.Errorf("bind: endpoint %s: only IPv4 is supported", s)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.peers {
		if e := p.configuredTo(ap); e != nil {
			return e, nil
		}
	}
	e, _ := b.anon.get(PathID{Uplink: 0, Remote: ap})
	return e, nil
}

// Send sends bufs to ep: on the active path of ep's peer if it has one,
// else on the path ep names. A failed GSO send is retried without GSO,
// which then stays off for the uplink, and reported as
// conn.ErrUDPGSODisabled.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*Endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	st := b.state.Load()
	if st == nil {
		return net.ErrClosed
	}
	if len(bufs) == 0 {
		return nil
	}
	r := e.route
	if isCookieReply(bufs) {
		// An answer to one datagram under load: back where it came from.
	} else {
		if p := e.peer; p != nil {
			if a := p.active.Load(); a != nil {
				r = a
			}
			if p.roamed.Load() != e {
				p.roamed.Store(e)
			}
			if idx, ok := handshakeSenderIndex(bufs); ok {
				b.index.add(idx, p)
			}
		}
		if e.learned && !e.confirmed.Load() && e.confirmed.CompareAndSwap(false, true) {
			// WireGuard adopted an endpoint learned from an unknown
			// source: it authenticated a datagram from there.
			b.log.Info("path learned", "path", e.route.id, "peer", e.peerName())
			b.rebuild()
		}
	}
	if r == nil {
		return ErrNoPath
	}
	return st.socks[r.id.Uplink].send(bufs, r)
}

// SendProbe sends one probe (or any datagram) on path: from the path's
// uplink socket to its remote endpoint.
func (b *Bind) SendProbe(path PathID, pkt []byte) error {
	st := b.state.Load()
	if st == nil {
		return net.ErrClosed
	}
	if path.Uplink < 0 || path.Uplink >= len(st.socks) || !path.Remote.Addr().Is4() {
		return fmt.Errorf("%w: %v", ErrUnknownPath, path)
	}
	return st.socks[path.Uplink].sendProbe(pkt, path.Remote)
}

// Counters returns the counters of uplink i (an index into
// Options.Uplinks); the zero value for an index out of range.
func (b *Bind) Counters(i int) UplinkCounters {
	if i < 0 || i >= len(b.counters) {
		return UplinkCounters{}
	}
	c := &b.counters[i]
	return UplinkCounters{
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
		ProbesTx: c.probesTx.Load(), ProbesRx: c.probesRx.Load(),
		SendErrors: c.sendErrors.Load(),
	}
}

// LocalAddr returns the address and port uplink i's socket is bound to,
// or false while the bind is closed.
func (b *Bind) LocalAddr(i int) (netip.AddrPort, bool) {
	st := b.state.Load()
	if st == nil || i < 0 || i >= len(st.socks) {
		return netip.AddrPort{}, false
	}
	return st.socks[i].local, true
}

// handleProbe passes a received probe to the handler and sends its reply.
func (b *Bind) handleProbe(s *sock, pkt []byte, src netip.AddrPort) {
	s.ctr.probesRx.Add(1)
	if b.opts.Probes == nil {
		return
	}
	if reply := b.opts.Probes.HandleProbe(pkt, PathID{Uplink: s.index, Remote: src}); reply != nil {
		_ = s.sendProbe(reply, src) // counted
	}
}
