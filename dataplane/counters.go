package dataplane

import (
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// Counters are one peer's inner-packet counters: IP packets (and their
// bytes, IP header included) that went into the tunnel towards the peer (Tx)
// and came out of it from the peer (Rx). They are monotonic over the life of
// a Device, across reconfiguration.
type Counters struct {
	TxPackets, TxBytes uint64
	RxPackets, RxBytes uint64
}

type peerCounters struct {
	txPackets, txBytes atomic.Uint64
	rxPackets, rxBytes atomic.Uint64
}

func (c *peerCounters) load() Counters {
	return Counters{
		TxPackets: c.txPackets.Load(), TxBytes: c.txBytes.Load(),
		RxPackets: c.rxPackets.Load(), RxBytes: c.rxBytes.Load(),
	}
}

// prefixTable maps an inner IP address to the peer whose allowed prefixes
// contain it (longest match). It is immutable once built; the device swaps
// in a new one on reconfiguration.
type prefixTable struct {
	v4 []lenMap // longest prefix first
	v6 []lenMap
}

type lenMap struct {
	bits int
	m    map[netip.Addr]*peerCounters // keyed by the masked address
}

func newPrefixTable(routes map[netip.Prefix]*peerCounters) *prefixTable {
	byLen := map[int]map[netip.Addr]*peerCounters{}
	byLen6 := map[int]map[netip.Addr]*peerCounters{}
	for p, c := range routes {
		p = p.Masked()
		t := byLen
		if p.Addr().Is6() {
			t = byLen6
		}
		if t[p.Bits()] == nil {
			t[p.Bits()] = map[netip.Addr]*peerCounters{}
		}
		t[p.Bits()][p.Addr()] = c
	}
	flatten := func(t map[int]map[netip.Addr]*peerCounters) []lenMap {
		out := make([]lenMap, 0, len(t))
		for bits, m := range t {
			out = append(out, lenMap{bits, m})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].bits > out[j].bits })
		return out
	}
	return &prefixTable{v4: flatten(byLen), v6: flatten(byLen6)}
}

func (t *prefixTable) lookup(a netip.Addr) *peerCounters {
	ms := t.v4
	if a.Is6() {
		ms = t.v6
	}
	for _, lm := range ms {
		p, _ := a.Prefix(lm.bits)
		if c, ok := lm.m[p.Addr()]; ok {
			return c
		}
	}
	return nil
}

// packetAddr returns the source or destination address of an IP packet, or
// the zero Addr if the packet is too short to carry one.
func packetAddr(pkt []byte, dst bool) netip.Addr {
	if len(pkt) < 1 {
		return netip.Addr{}
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return netip.Addr{}
		}
		off := 12
		if dst {
			off = 16
		}
		return netip.AddrFrom4([4]byte(pkt[off : off+4]))
	case 6:
		if len(pkt) < 40 {
			return netip.Addr{}
		}
		off := 8
		if dst {
			off = 24
		}
		return netip.AddrFrom16([16]byte(pkt[off : off+16]))
	}
	return netip.Addr{}
}

// countingTUN sits between the TUN and the WireGuard device and attributes
// every inner packet to a peer. It never blocks or allocates on the data
// path: a lookup, then atomic adds batched per call.
type countingTUN struct {
	tun.Device
	table    atomic.Pointer[prefixTable]
	unrouted peerCounters // packets that matched no peer

	mu    sync.Mutex
	byKey map[wgkey.PublicKey]*peerCounters // counters outlive reconfiguration
}

func newCountingTUN(dev tun.Device) *countingTUN {
	t := &countingTUN{Device: dev, byKey: map[wgkey.PublicKey]*peerCounters{}}
	t.table.Store(newPrefixTable(nil))
	return t
}

// Read reads packets the kernel routed into the tunnel: the peers' Tx.
func (t *countingTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := t.Device.Read(bufs, sizes, offset)
	if n > 0 {
		t.count(bufs[:n], sizes, offset, true)
	}
	return n, err
}

// Write writes decrypted packets from peers to the kernel: the peers' Rx.
func (t *countingTUN) Write(bufs [][]byte, offset int) (int, error) {
	t.count(bufs, nil, offset, false)
	return t.Device.Write(bufs, offset)
}

func (t *countingTUN) count(bufs [][]byte, sizes []int, offset int, tx bool) {
	table := t.table.Load()
	var last *peerCounters
	var pkts, bytes uint64
	flush := func() {
		if last == nil || pkts == 0 {
			return
		}
		if tx {
			last.txPackets.Add(pkts)
			last.txBytes.Add(bytes)
		} else {
			last.rxPackets.Add(pkts)
			last.rxBytes.Add(bytes)
		}
	}
	for i, b := range bufs {
		var pkt []byte
		if sizes != nil {
			pkt = b[offset : offset+sizes[i]]
		} else {
			pkt = b[offset:]
		}
		c := table.lookup(packetAddr(pkt, tx))
		if c == nil {
			c = &t.unrouted
		}
		if c != last {
			flush()
			last, pkts, bytes = c, 0, 0
		}
		pkts++
		bytes += uint64(len(pkt))
	}
	flush()
}

// setPeers installs the prefix table for the given peers, keeping the
// counters of peers that stay.
func (t *countingTUN) setPeers(peers []Peer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	routes := map[netip.Prefix]*peerCounters{}
	for _, p := range peers {
		c := t.byKey[p.PublicKey]
		if c == nil {
			c = &peerCounters{}
			t.byKey[p.PublicKey] = c
		}
		for _, pfx := range p.AllowedIPs {
			routes[pfx] = c
		}
	}
	t.table.Store(newPrefixTable(routes))
}

// snapshot returns the counters of every peer the TUN has ever counted
// for. It holds only the reconfiguration lock, which the data path never
// takes, and loads atomics.
func (t *countingTUN) snapshot() map[wgkey.PublicKey]Counters {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[wgkey.PublicKey]Counters, len(t.byKey))
	for k, c := range t.byKey {
		out[k] = c.load()
	}
	return out
}

func (t *countingTUN) counters(k wgkey.PublicKey) Counters {
	t.mu.Lock()
	c := t.byKey[k]
	t.mu.Unlock()
	if c == nil {
		return Counters{}
	}
	return c.load()
}
