package netmap

import (
	"bufio"
	"encoding/json"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/causeway-net/causeway/probes"
)

// The controller holds one netmap per appliance, and in a full mesh every
// one of them lists (almost) every appliance of the tenant. Copying and
// re-encoding each peer once per netmap costs O(N²) per change; instead a
// peer is encoded once into a PeerEntry, the entries of a tenant form one
// Table, and each appliance's netmap refers to the table (see Shared). The
// encoding below produces exactly what json.Marshal of the wire type does.
//
// Two parts of a peer depend on the appliance receiving the netmap, not on
// the peer alone, and so stay out of the shared entry: the keepalive (one
// per receiving appliance) and the SLA (one per pair of sites: the
// receiver's and the peer's). Both come last in a peer's object, after the
// shared bytes: the netmap appends the keepalive, then the SLA its PeerSLAs
// gives the peer's site (pre-encoded once per distinct SLA), then the
// closing brace. A site-pair override therefore changes only the PeerSLAs
// of the two sites' appliances; the shared entries stay as they are.

// PeerEntry is one peer with its JSON encoding, made once and shared by
// every netmap that lists the peer. Its Keepalive and SLA are not part of
// it: they depend on the appliance receiving the netmap. A PeerEntry is
// immutable.
type PeerEntry struct {
	peer Peer
	// enc is the peer's JSON object up to and including
	// `"keepalive_seconds":`; the number, the SLA and the closing brace
	// follow.
	enc []byte
}

// NewPeerEntry encodes p (ignoring its Keepalive and SLA).
func NewPeerEntry(p Peer) *PeerEntry {
	p.Keepalive = 0
	p.SLA = probes.SLA{}
	return &PeerEntry{peer: p, enc: appendPeerHead(nil, &p)}
}

// Peer returns the peer, with Keepalive 0 and the zero SLA; the zero Peer
// for a nil entry.
// The caller must not modify the slices it shares with the entry.
func (e *PeerEntry) Peer() Peer {
	if e == nil {
		return Peer{}
	}
	return e.peer
}

// Table is an immutable list of peer entries sorted by name: the peers of
// one tenant as every netmap of the tenant lists them.
type Table struct {
	entries []*PeerEntry
	// size is the sum of the entries' encoded heads.
	size int
	// sites counts the entries per site id, for EncodedLen.
	sites map[string]int
}

// NewTable returns a table of entries, which must be sorted by name. It
// keeps the slice: the caller must not change it afterwards.
func NewTable(entries []*PeerEntry) *Table {
	t := &Table{entries: entries, sites: map[string]int{}}
	for _, e := range entries {
		t.size += len(e.enc)
		t.sites[e.peer.Site]++
	}
	return t
}

// Len is the number of entries.
func (t *Table) Len() int { return len(t.entries) }

// Lookup returns the entry named name, if there is one.
func (t *Table) Lookup(name string) (*PeerEntry, bool) {
	i, found := slices.BinarySearchFunc(t.entries, name, func(e *PeerEntry, name string) int {
		return strings.Compare(e.peer.Name, name)
	})
	if !found {
		return nil, false
	}
	return t.entries[i], true
}

// shared is how a Netmap made by Shared lists its peers: every entry of
// table except the one at skip, each with keepalive and the SLA slas gives
// its site.
type shared struct {
	table     *Table
	skip      int
	keepalive time.Duration
	slas      *PeerSLAs
}

// Shared returns head (whose Peers must be nil) listing as its peers every
// entry of t except the one at index skip (the appliance itself; -1 for
// none), each with the given keepalive and the SLA slas gives the peer's
// site (nil: none). It takes O(1) time and memory: the netmap refers to t
// and slas. Such a netmap reports its peers through Full, PeerAt,
// NumPeers, SameContent and its encodings, not through the Peers field,
// which stays nil.
func Shared(head Netmap, t *Table, skip int, keepalive time.Duration, slas *PeerSLAs) *Netmap {
	if skip < 0 || skip >= t.Len() {
		skip = -1
	}
	head.Peers = nil
	head.shared = &shared{table: t, skip: skip, keepalive: keepalive, slas: slas}
	return &head
}

// NumPeers is the number of peers.
func (n *Netmap) NumPeers() int {
	if s := n.shared; s != nil {
		if s.skip >= 0 {
			return s.table.Len() - 1
		}
		return s.table.Len()
	}
	return len(n.Peers)
}

// PeerAt returns peer i (0 <= i < NumPeers). The peer shares its slices
// with the netmap: do not modify them.
func (n *Netmap) PeerAt(i int) Peer {
	s := n.shared
	if s == nil {
		return n.Peers[i]
	}
	if s.skip >= 0 && i >= s.skip {
		i++
	}
	p := s.table.entries[i].peer
	p.Keepalive = s.keepalive
	p.SLA = s.slas.For(p.Site)
	return p
}

// entryAt is PeerAt's entry, for shared netmaps.
func (s *shared) entryAt(i int) *PeerEntry {
	if s.skip >= 0 && i >= s.skip {
		i++
	}
	return s.table.entries[i]
}

// Full returns n with its Peers filled in: n itself unless it was made by
// Shared, else a copy.
func (n *Netmap) Full() *Netmap {
	if n.shared == nil {
		return n
	}
	m := *n
	m.shared = nil
	m.Peers = make([]Peer, n.NumPeers())
	for i := range m.Peers {
		m.Peers[i] = n.PeerAt(i)
	}
	return &m
}

// MarshalJSON encodes the netmap in the form Decode reads. Empty lists are
// written as [] rather than null.
func (n *Netmap) MarshalJSON() ([]byte, error) {
	return n.AppendJSON(make([]byte, 0, n.EncodedLen())), nil
}

// AppendJSON appends the netmap's encoding to dst.
func (n *Netmap) AppendJSON(dst []byte) []byte {
	dst = n.appendHead(dst)
	for i := range n.NumPeers() {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = n.appendPeer(dst, i)
	}
	return append(dst, "]}"...)
}

// WriteJSON writes the netmap's encoding, EncodedLen bytes, to w without
// building it in memory first.
func (n *Netmap) WriteJSON(w io.Writer) (int64, error) {
	bw := bufio.NewWriterSize(w, 32<<10)
	buf := n.appendHead(make([]byte, 0, 1024))
	var total int64
	flush := func() error {
		k, err := bw.Write(buf)
		total += int64(k)
		buf = buf[:0]
		return err
	}
	for i := range n.NumPeers() {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = n.appendPeer(buf, i)
		if len(buf) >= 16<<10 {
			if err := flush(); err != nil {
				return total, err
			}
		}
	}
	buf = append(buf, "]}"...)
	if err := flush(); err != nil {
		return total, err
	}
	return total, bw.Flush()
}

// EncodedLen is the length of the netmap's encoding.
func (n *Netmap) EncodedLen() int {
	size := len(n.appendHead(nil)) + len("]}")
	count := n.NumPeers()
	if count > 0 {
		size += count - 1 // commas
	}
	if s := n.shared; s != nil {
		size += s.table.size
		if s.skip >= 0 {
			size -= len(s.table.entries[s.skip].enc)
		}
		size += count * (len(strconv.FormatInt(int64(s.keepalive/time.Second), 10)) + 1)
		if sl := s.slas; sl != nil {
			size += count * len(sl.defEnc)
			for site, enc := range sl.enc {
				n := s.table.sites[site]
				if s.skip >= 0 && s.table.entries[s.skip].peer.Site == site {
					n--
				}
				size += n * (len(enc) - len(sl.defEnc))
			}
		}
		return size
	}
	for i := range n.Peers {
		size += len(appendPeer(nil, &n.Peers[i]))
	}
	return size
}

// appendHead appends everything up to and including `"peers":[`.
func (n *Netmap) appendHead(dst []byte) []byte { return n.appendHeadBase(dst, 0) }

// appendHeadBase is appendHead with, unless base is 0, a delta's "base".
func (n *Netmap) appendHeadBase(dst []byte, base uint64) []byte {
	dst = append(dst, `{"version":`...)
	dst = strconv.AppendUint(dst, n.Version, 10)
	if base != 0 {
		dst = append(dst, `,"base":`...)
		dst = strconv.AppendUint(dst, base, 10)
	}
	if n.RequestID != "" {
		dst = appendField(dst, ',', "request_id", n.RequestID)
	}
	dst = appendField(dst, ',', "tenant", n.Tenant)
	dst = appendField(dst, ',', "appliance", n.Appliance)
	dst = appendField(dst, ',', "site", n.Site)
	dst = appendField(dst, ',', "name", n.Name)
	dst = appendField(dst, ',', "overlay_addr", n.OverlayAddr.String())
	dst = appendList(dst, ',', "lan_prefixes", n.LANPrefixes)
	dst = appendProbes(dst, &n.Probes)
	dst = appendOwnPair(dst, n.Pair)
	return append(dst, `,"peers":[`...)
}

func (n *Netmap) appendPeer(dst []byte, i int) []byte {
	if s := n.shared; s != nil {
		e := s.entryAt(i)
		dst = append(dst, e.enc...)
		dst = strconv.AppendInt(dst, int64(s.keepalive/time.Second), 10)
		dst = append(dst, s.slas.encFor(e.peer.Site)...)
		return append(dst, '}')
	}
	return appendPeer(dst, &n.Peers[i])
}

// appendPeer appends the encoding of p.
func appendPeer(dst []byte, p *Peer) []byte {
	dst = appendPeerHead(dst, p)
	dst = strconv.AppendInt(dst, int64(p.Keepalive/time.Second), 10)
	dst = appendSLA(dst, p.SLA)
	return append(dst, '}')
}

// appendPeerHead appends p's encoding up to and including
// `"keepalive_seconds":`.
func appendPeerHead(dst []byte, p *Peer) []byte {
	dst = appendField(dst, '{', "name", p.Name)
	dst = appendField(dst, ',', "site", p.Site)
	dst = appendField(dst, ',', "public_key", p.PublicKey.String())
	dst = appendField(dst, ',', "overlay_addr", p.OverlayAddr.String())
	dst = appendList(dst, ',', "endpoints", p.Endpoints)
	dst = appendList(dst, ',', "prefixes", p.Prefixes)
	dst = appendPeerPair(dst, p.Pair)
	return append(dst, `,"keepalive_seconds":`...)
}

func appendField(dst []byte, sep byte, name, value string) []byte {
	dst = append(dst, sep, '"')
	dst = append(dst, name...)
	dst = append(dst, '"', ':')
	return appendString(dst, value)
}

func appendList[T interface {
	AppendTo([]byte) []byte
	IsValid() bool
	String() string
}](dst []byte, sep byte, name string, vs []T) []byte {
	dst = append(dst, sep, '"')
	dst = append(dst, name...)
	dst = append(dst, `":[`...)
	for i, v := range vs {
		if i > 0 {
			dst = append(dst, ',')
		}
		// Addresses, ports and prefixes never need escaping.
		dst = append(dst, '"')
		if v.IsValid() {
			dst = v.AppendTo(dst)
		} else {
			dst = append(dst, v.String()...)
		}
		dst = append(dst, '"')
	}
	return append(dst, ']')
}

// appendString appends s as a JSON string, escaped exactly as json.Marshal
// escapes it.
func appendString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
