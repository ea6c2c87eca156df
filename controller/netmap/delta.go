package netmap

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"

	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// A Delta turns the netmap an appliance holds (version Base) into a newer
// one (version Version) without sending every peer again: it carries the
// appliance's own part in full, the peers added or changed since Base, and
// the names of the peers removed since. Peers are identified by name, which
// is unique within a netmap. An appliance asks for deltas explicitly (see
// docs/controller.md); the controller still answers with a full netmap
// whenever a delta would not be smaller, or it no longer knows what changed
// since Base.
type Delta struct {
	// Version is the version of the netmap the delta produces; Base the
	// version it applies to (Base < Version).
	Version, Base uint64
	// RequestID, Tenant, Appliance, Site, Name, OverlayAddr and
	// LANPrefixes are those of the resulting netmap (see Netmap). A peer
	// whose SLA alone changed (a site-pair override) is listed in Peers.
	RequestID   string
	Tenant      string
	Appliance   string
	Site        string
	Name        string
	OverlayAddr netip.Addr
	LANPrefixes []netip.Prefix
	// Probes are the resulting netmap's probe settings, in full.
	Probes Probes
	// Pair is the resulting netmap's own pair part.
	Pair *Pair
	// Peers are the peers added or changed since Base, sorted by name.
	Peers []Peer
	// Removed are the names of the peers gone since Base, sorted.
	Removed []string
}

// head is the delta's own part as a Netmap, with Peers set to its peers.
func (d *Delta) head() *Netmap {
	return &Netmap{Version: d.Version, RequestID: d.RequestID, Tenant: d.Tenant, Appliance: d.Appliance,
		Site: d.Site, Name: d.Name, OverlayAddr: d.OverlayAddr, LANPrefixes: d.LANPrefixes, Probes: d.Probes, Pair: d.Pair, Peers: d.Peers}
}

// MarshalJSON encodes the delta in the form DecodeDelta reads.
func (d *Delta) MarshalJSON() ([]byte, error) { return d.AppendJSON(nil), nil }

// AppendJSON appends the delta's encoding to dst: a netmap's fields plus
// "base" and "removed".
func (d *Delta) AppendJSON(dst []byte) []byte {
	n := d.head()
	dst = n.appendHeadBase(dst, d.Base)
	for i := range n.Peers {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendPeer(dst, &n.Peers[i])
	}
	dst = append(dst, `],"removed":[`...)
	for i, name := range d.Removed {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, name)
	}
	return append(dst, "]}"...)
}

// wireDelta is the JSON shape of a Delta.
type wireDelta struct {
	wire
	Base    uint64   `json:"base"`
	Removed []string `json:"removed"`
}

// wireDeltaIn is wireDelta with the peers left raw.
type wireDeltaIn struct {
	wireIn
	Base    uint64   `json:"base"`
	Removed []string `json:"removed"`
}

// DecodeDelta parses and validates an encoded delta, as strictly as Decode
// does a netmap. The error, if any, is a *DecodeError.
func DecodeDelta(data []byte) (*Delta, error) {
	if len(data) > MaxSize {
		return nil, &DecodeError{[]error{fmt.Errorf("larger than %d bytes", MaxSize)}}
	}
	var w wireDelta
	if err := DecodeStrict(data, &w, ""); err != nil {
		// Decode again, peer by peer, to name the peer at fault.
		var in wireDeltaIn
		if err := DecodeStrict(data, &in, ""); err != nil {
			return nil, &DecodeError{[]error{err}}
		}
		v := &validator{}
		decodeProbesRaw(v, in.Probes)
		decodeRaw[wirePair](v, in.Pair, "pair")
		decodePeersRaw(v, in.Peers)
		if len(v.errs) == 0 {
			v.errs = append(v.errs, err)
		}
		return nil, &DecodeError{v.errs}
	}
	v := &validator{}
	n := v.netmap(&w.wire, w.Peers)
	if w.Base == 0 {
		v.fail("base", "must be 1 or more")
	} else if w.Base >= w.Version {
		v.fail("base", "must be below the version (%d), got %d", w.Version, w.Base)
	}
	names := make(map[string]string, len(n.Peers)+len(w.Removed))
	for i := range n.Peers {
		field := fmt.Sprintf("peers[%d]", i)
		if prev, dup := names[n.Peers[i].Name]; dup && n.Peers[i].Name != "" {
			v.fail(field+".name", "%q is also %s", n.Peers[i].Name, prev)
		}
		names[n.Peers[i].Name] = field
	}
	for i, name := range w.Removed {
		field := fmt.Sprintf("removed[%d]", i)
		if name == "" {
			v.fail(field, "required")
		} else if prev, dup := names[name]; dup {
			v.fail(field, "%q is also %s", name, prev)
		}
		names[name] = field
	}
	if len(v.errs) > 0 {
		return nil, &DecodeError{v.errs}
	}
	return &Delta{Version: n.Version, Base: w.Base, RequestID: n.RequestID, Tenant: n.Tenant, Appliance: n.Appliance,
		Site: n.Site, Name: n.Name, OverlayAddr: n.OverlayAddr, LANPrefixes: n.LANPrefixes, Probes: n.Probes, Pair: n.Pair,
		Peers: n.Peers, Removed: w.Removed}, nil
}

// Apply returns the netmap d makes of n, which must be the netmap of the
// same appliance at version d.Base. n is left as it is. The result is
// checked as Decode checks a netmap (no two peers with one key or address).
func (n *Netmap) Apply(d *Delta) (*Netmap, error) {
	if d.Base != n.Version {
		return nil, fmt.Errorf("netmap delta: applies to version %d, the netmap is at %d", d.Base, n.Version)
	}
	if d.Appliance != n.Appliance || d.Tenant != n.Tenant {
		return nil, fmt.Errorf("netmap delta: for appliance %s of tenant %s, the netmap is %s of %s", d.Appliance, d.Tenant, n.Appliance, n.Tenant)
	}
	gone := make(map[string]bool, len(d.Removed)+len(d.Peers))
	for _, name := range d.Removed {
		gone[name] = true
	}
	for i := range d.Peers {
		gone[d.Peers[i].Name] = true
	}
	m := d.head()
	m.Peers = make([]Peer, 0, n.NumPeers()+len(d.Peers))
	for i := range n.NumPeers() {
		if p := n.PeerAt(i); !gone[p.Name] {
			m.Peers = append(m.Peers, p)
		}
	}
	m.Peers = append(m.Peers, d.Peers...)
	slices.SortFunc(m.Peers, func(a, b Peer) int { return cmp.Compare(a.Name, b.Name) })
	keys := make(map[wgkey.PublicKey]string, len(m.Peers))
	addrs := make(map[netip.Addr]string, len(m.Peers)+1)
	addrs[m.OverlayAddr] = "the appliance itself"
	for i := range m.Peers {
		p := &m.Peers[i]
		if prev, dup := keys[p.PublicKey]; dup {
			return nil, fmt.Errorf("netmap delta: peers %s and %s would have the same key", prev, p.Name)
		}
		keys[p.PublicKey] = p.Name
		if prev, dup := addrs[p.OverlayAddr]; dup {
			return nil, fmt.Errorf("netmap delta: peer %s would have the overlay address of %s", p.Name, prev)
		}
		addrs[p.OverlayAddr] = p.Name
	}
	if errs := lanConflicts(m.LANPrefixes, m.Site, m.Pair, m.Peers, func(i int) string { return "peer " + m.Peers[i].Name }); len(errs) > 0 {
		return nil, fmt.Errorf("netmap delta: %w", errs[0])
	}
	return m, nil
}

var _ json.Marshaler = (*Delta)(nil)
