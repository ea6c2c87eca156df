package bind

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// maxLearned bounds the paths a peer keeps that the bind learned from
// datagrams rather than from SetPaths.
const maxLearned = 8

// Peer is one WireGuard peer as the bind sees it: its candidate paths and
// the active one. Its methods are safe for concurrent use.
type Peer struct {
	b   *Bind
	key wgkey.PublicKey

	// active is the route Send uses; nil while the peer has no configured
	// path, and then Send follows WireGuard.
	active atomic.Pointer[route]
	// roamed is the endpoint WireGuard last sent through for this peer.
	roamed atomic.Pointer[Endpoint]

	mu      sync.Mutex  // guards the fields below
	paths   []*Endpoint // configured, in SetPaths order
	learned []*Endpoint // learned from datagrams, oldest first
	removed bool
}

// route is an immutable path with its socket address.
type route struct {
	id  PathID
	src netip.Addr // the uplink's configured address
	sa  rawSockaddr
}

func newRoute(id PathID, uplinks []Uplink) *route {
	return &route{id: id, src: uplinks[id.Uplink].Addr, sa: newRawSockaddr(id.Remote)}
}

// Endpoint is the conn.Endpoint of this bind. It names one path, the one a
// datagram came in on or the one ParseEndpoint was given, and the peer it
// belongs to if the bind knows. Send prefers the peer's active path to the
// endpoint's own, so WireGuard adopting another endpoint of the same peer
// (roaming) does not move its traffic.
type Endpoint struct {
	peer  *Peer  // nil: a source of no known peer
	route *route // never nil
	// learned is set for an endpoint created for a source that was not a
	// configured path; confirmed once WireGuard has sent through it.
	learned   bool
	confirmed atomic.Bool
}

var _ conn.Endpoint = (*Endpoint)(nil)

// Path is the path the endpoint names.
func (e *Endpoint) Path() PathID { return e.route.id }

// Peer is the peer the endpoint belongs to, or nil.
func (e *Endpoint) Peer() *Peer { return e.peer }

// ClearSrc does nothing: the source is the uplink's socket.
func (e *Endpoint) ClearSrc() {}

// sendRoute is the route Send takes for e (cookie replies aside).
func (e *Endpoint) sendRoute() *route {
	if e.peer != nil {
		if a := e.peer.active.Load(); a != nil {
			return a
		}
	}
	return e.route
}

// SrcToString returns the local address of the uplink Send uses.
func (e *Endpoint) SrcToString() string { return e.SrcIP().String() }

// SrcIP returns the configured local address of the uplink Send uses (the
// zero Addr for an uplink bound to any address).
func (e *Endpoint) SrcIP() netip.Addr { return e.sendRoute().src }

// DstToString returns the remote address Send uses: the peer's active
// path, or the endpoint's own. It is what the UAPI reports as the peer's
// endpoint.
func (e *Endpoint) DstToString() string { return e.sendRoute().id.Remote.String() }

// DstToBytes returns the endpoint's own remote address, the source of the
// datagram it came with (WireGuard binds cookies to it).
func (e *Endpoint) DstToBytes() []byte {
	b, _ := e.route.id.Remote.MarshalBinary()
	return b
}

// DstIP returns the endpoint's own remote address (WireGuard rate-limits
// handshakes by it).
func (e *Endpoint) DstIP() netip.Addr { return e.route.id.Remote.Addr() }

func (e *Endpoint) peerName() string {
	if e.peer == nil {
		return ""
	}
	return e.peer.key.String()
}

// AddPeer returns the peer with key, adding it with no paths if it is new.
func (b *Bind) AddPeer(key wgkey.PublicKey) *Peer {
	b.mu.Lock()
	defer b.mu.Unlock()
	raw := key.Raw()
	if p := b.peers[raw]; p != nil {
		return p
	}
	p := &Peer{b: b, key: key}
	b.peers[raw] = p
	b.rebuildLocked()
	return p
}

// LookupPeer returns the peer with key, or nil.
func (b *Bind) LookupPeer(key wgkey.PublicKey) *Peer {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peers[key.Raw()]
}

// RemovePeer forgets the peer with key and its paths. Endpoints of it that
// WireGuard still holds keep sending on its last active path.
func (b *Bind) RemovePeer(key wgkey.PublicKey) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.peers[key.Raw()]
	if p == nil {
		return
	}
	delete(b.peers, key.Raw())
	p.mu.Lock()
	p.removed = true
	p.mu.Unlock()
	b.index.removePeer(p)
	b.rebuildLocked()
}

// SetPaths makes paths the peer's configured candidate paths. The active
// path stays if it is among them; otherwise the first becomes active, or,
// with no paths, the peer follows WireGuard (see Peer.Active). A path may
// belong to one peer only. Endpoints WireGuard holds stay valid.
func (b *Bind) SetPaths(p *Peer, paths []PathID) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.peers[p.key.Raw()] != p {
		return errors.New("bind: SetPaths on a removed peer")
	}
	for i, id := range paths {
		if id.Uplink < 0 || id.Uplink >= len(b.opts.Uplinks) {
			return fmt.Errorf("%w: %v: no uplink %d", ErrUnknownPath, id, id.Uplink)
		}
		if !id.Remote.Addr().Is4() || id.Remote.Port() == 0 {
			return fmt.Errorf("%w: %v: want an IPv4 address and a port", ErrUnknownPath, id)
		}
		if slices.Contains(paths[:i], id) {
			return fmt.Errorf("bind: path %v given twice", id)
		}
		for _, q := range b.peers {
			if q != p && q.hasConfigured(id) {
				return fmt.Errorf("bind: path %v belongs to peer %s", id, q.key)
			}
		}
	}
	p.mu.Lock()
	old := p.paths
	next := make([]*Endpoint, 0, len(paths))
	for _, id := range paths {
		i := slices.IndexFunc(old, func(e *Endpoint) bool { return e.route.id == id })
		if i >= 0 {
			next = append(next, old[i])
		} else {
			next = append(next, &Endpoint{peer: p, route: newRoute(id, b.opts.Uplinks)})
		}
	}
	p.paths = next
	p.learned = slices.DeleteFunc(p.learned, func(e *Endpoint) bool { return slices.Contains(paths, e.route.id) })
	var active *route
	if a := p.active.Load(); a != nil {
		if i := slices.IndexFunc(next, func(e *Endpoint) bool { return e.route.id == a.id }); i >= 0 {
			active = next[i].route
		}
	}
	if active == nil && len(next) > 0 {
		active = next[0].route
	}
	p.active.Store(active)
	p.mu.Unlock()
	b.rebuildLocked()
	return nil
}

// SetActive makes path, one of the peer's configured paths, the one its
// traffic takes. The swap is atomic: the next Send for the peer, from any
// goroutine, uses the new path; nothing is reconfigured and no handshake
// is needed.
func (b *Bind) SetActive(p *Peer, path PathID) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.paths {
		if e.route.id == path {
			p.active.Store(e.route)
			return nil
		}
	}
	return fmt.Errorf("%w: %v is not a path of peer %s", ErrUnknownPath, path, p.key)
}

// Key is the peer's public key.
func (p *Peer) Key() wgkey.PublicKey { return p.key }

// Active returns the path the peer's traffic takes, false while it has no
// configured paths (its traffic then takes the path of the endpoint
// WireGuard uses for it, see Roamed).
func (p *Peer) Active() (PathID, bool) {
	if a := p.active.Load(); a != nil {
		return a.id, true
	}
	return PathID{}, false
}

// Paths returns the peer's configured paths.
func (p *Peer) Paths() []PathID {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]PathID, len(p.paths))
	for i, e := range p.paths {
		out[i] = e.route.id
	}
	return out
}

// Roamed returns the path of the endpoint WireGuard last sent through for
// the peer: the path its last authenticated datagram came in on, which is
// where WireGuard's own roaming would send. False before the first send.
// For a peer without configured paths this is where its traffic goes, and
// the way to learn the path a NAT-ed peer contacted us on.
func (p *Peer) Roamed() (PathID, bool) {
	if e := p.roamed.Load(); e != nil {
		return e.route.id, true
	}
	return PathID{}, false
}

// Learned returns the paths the bind learned for the peer from datagrams
// (sources that are not configured paths), oldest first.
func (p *Peer) Learned() []PathID {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]PathID, len(p.learned))
	for i, e := range p.learned {
		out[i] = e.route.id
	}
	return out
}

func (p *Peer) hasConfigured(id PathID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.ContainsFunc(p.paths, func(e *Endpoint) bool { return e.route.id == id })
}

// configuredTo returns the endpoint of the peer's first configured path to
// remote, or nil.
func (p *Peer) configuredTo(remote netip.AddrPort) *Endpoint {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.paths {
		if e.route.id.Remote == remote {
			return e
		}
	}
	return nil
}

// learnedEndpoint returns the peer's endpoint for id, creating a learned
// one if the peer has none. evicted reports that a confirmed learned
// endpoint was dropped to make room (the table then needs a rebuild).
func (p *Peer) learnedEndpoint(id PathID) (e *Endpoint, evicted bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.paths {
		if e.route.id == id {
			return e, false
		}
	}
	for _, e := range p.learned {
		if e.route.id == id {
			return e, false
		}
	}
	if len(p.learned) >= maxLearned {
		evicted = p.learned[0].confirmed.Load()
		p.learned = slices.Delete(p.learned, 0, 1)
	}
	e = &Endpoint{peer: p, route: newRoute(id, p.b.opts.Uplinks), learned: true}
	if !p.removed {
		p.learned = append(p.learned, e)
	}
	return e, evicted
}

// table maps a datagram's source, per uplink, to its endpoint: configured
// paths and learned paths WireGuard confirmed. It is immutable; the bind
// swaps in a new one on change.
type table struct {
	byUplink []map[netip.AddrPort]*Endpoint
	peers    map[[wgkey.Len]byte]*Peer // for handshake initiations
}

func newTable(uplinks int) *table {
	t := &table{byUplink: make([]map[netip.AddrPort]*Endpoint, uplinks), peers: map[[wgkey.Len]byte]*Peer{}}
	for i := range t.byUplink {
		t.byUplink[i] = map[netip.AddrPort]*Endpoint{}
	}
	return t
}

func (t *table) add(e *Endpoint) {
	m := t.byUplink[e.route.id.Uplink]
	if _, ok := m[e.route.id.Remote]; !ok {
		m[e.route.id.Remote] = e
	}
}

func (b *Bind) rebuild() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rebuildLocked()
}

// rebuildLocked installs a new table. Configured paths come first, so they
// shadow learned ones.
func (b *Bind) rebuildLocked() {
	t := newTable(len(b.opts.Uplinks))
	var learned []*Endpoint
	for raw, p := range b.peers {
		t.peers[raw] = p
		p.mu.Lock()
		for _, e := range p.paths {
			t.add(e)
		}
		for _, e := range p.learned {
			if e.confirmed.Load() {
				learned = append(learned, e)
			}
		}
		p.mu.Unlock()
	}
	for _, e := range learned {
		t.add(e)
	}
	for _, e := range b.anon.confirmed() {
		t.add(e)
	}
	b.table.Store(t)
}

// lookupSlow finds the endpoint for a datagram from a source that is not
// in the table: the peer's, if the message tells, else an anonymous one.
func (b *Bind) lookupSlow(uplink int, src netip.AddrPort, pkt []byte) *Endpoint {
	id := PathID{Uplink: uplink, Remote: src}
	p := b.identify(pkt)
	if p != nil {
		e, evicted := p.learnedEndpoint(id)
		if evicted {
			b.rebuild()
		}
		return e
	}
	e, evicted := b.anon.get(id)
	if evicted {
		b.rebuild()
	}
	return e
}

// identify returns the peer a WireGuard message belongs to: by the session
// index for responses, cookie replies and transport data, by the
// initiator's static key for initiations. Nil if it cannot tell.
func (b *Bind) identify(pkt []byte) *Peer {
	if idx, ok := receiverIndex(pkt); ok {
		return b.index.lookup(idx)
	}
	if b.opener != nil && isInitiation(pkt) {
		if key, ok := b.opener.open(pkt); ok {
			return b.table.Load().peers[key]
		}
	}
	return nil
}

// maxAnon bounds the anonymous endpoints the bind keeps.
const maxAnon = 1024

// anonSet holds endpoints of sources that belong to no known peer, so that
// repeated datagrams from one get the same endpoint without allocating.
type anonSet struct {
	uplinks []Uplink // read only

	mu sync.Mutex // guards m
	m  map[PathID]*Endpoint
}

func (s *anonSet) init(uplinks []Uplink) {
	s.uplinks = uplinks
	s.m = map[PathID]*Endpoint{}
}

// get returns the anonymous endpoint for id, creating it; evicted reports
// that confirmed endpoints were dropped to make room.
func (s *anonSet) get(id PathID) (e *Endpoint, evicted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[id]; e != nil {
		return e, false
	}
	if len(s.m) >= maxAnon {
		// Drop about half, unconfirmed first: a flood of spoofed sources
		// must not push out the few that WireGuard uses.
		n := 0
		for k, v := range s.m {
			if !v.confirmed.Load() {
				delete(s.m, k)
				if n++; n >= maxAnon/2 {
					break
				}
			}
		}
		for k := range s.m {
			if n >= maxAnon/2 {
				break
			}
			delete(s.m, k)
			n++
			evicted = true
		}
	}
	e = &Endpoint{route: newRoute(id, s.uplinks), learned: true}
	s.m[id] = e
	return e, evicted
}

func (s *anonSet) confirmed() []*Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*Endpoint
	for _, e := range s.m {
		if e.confirmed.Load() {
			out = append(out, e)
		}
	}
	return out
}

// indexRing is how many of a peer's session indices are remembered: the
// current, previous and next keypair, plus a handshake in flight.
const indexRing = 4

// indexTable maps the session indices this side chose (the sender index
// of the handshakes WireGuard sends) to peers, so that a transport,
// response or cookie message from an unknown source, which carries that
// index as its receiver, can be attributed.
type indexTable struct {
	mu      sync.Mutex // guards the fields below
	byIndex map[uint32]*Peer
	rings   map[*Peer]*ring
}

type ring struct {
	idx  [indexRing]uint32
	next int
	n    int
}

func (t *indexTable) init() {
	t.byIndex = map[uint32]*Peer{}
	t.rings = map[*Peer]*ring{}
}

func (t *indexTable) add(idx uint32, p *Peer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byIndex[idx] == p {
		return
	}
	r := t.rings[p]
	if r == nil {
		r = &ring{}
		t.rings[p] = r
	}
	if r.n == indexRing {
		if old := r.idx[r.next]; t.byIndex[old] == p {
			delete(t.byIndex, old)
		}
	} else {
		r.n++
	}
	r.idx[r.next] = idx
	r.next = (r.next + 1) % indexRing
	t.byIndex[idx] = p
}

func (t *indexTable) lookup(idx uint32) *Peer {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byIndex[idx]
}

func (t *indexTable) removePeer(p *Peer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r := t.rings[p]; r != nil {
		for _, idx := range r.idx[:r.n] {
			if t.byIndex[idx] == p {
				delete(t.byIndex, idx)
			}
		}
		delete(t.rings, p)
	}
}
