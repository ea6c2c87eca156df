// Package netmap is the wire form of what the controller pushes to one
// appliance: its own overlay identity and every peer it should have.
//
// The controller encodes a Netmap with json.Marshal; the appliance decodes
// it with Decode, which is strict (unknown fields, trailing data and invalid
// values are refused, each error naming its field) so that a netmap the
// appliance has accepted is one it can apply. Applying is idempotent: the
// same Version always carries the same content.
package netmap

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/causeway-net/causeway/dataplane/wgkey"
	"github.com/causeway-net/causeway/probes"
)

// MaxSize bounds an encoded netmap; Decode refuses anything larger.
const MaxSize = 8 << 20

// MaxKeepalive is the largest persistent keepalive WireGuard accepts.
const MaxKeepalive = 65535 * time.Second

// OverlayRange is where every overlay address lives.
var OverlayRange = netip.MustParsePrefix("100.64.0.0/10")

// Netmap is the configuration of one appliance at one version.
type Netmap struct {
	// Version grows with every change to the content. An appliance that
	// holds version v asks for anything newer than v.
	Version uint64
	// RequestID identifies the API request whose change produced this
	// version, so the appliance can log it when applying; empty after a
	// controller restart or for changes with no request behind them.
	RequestID string
	// Tenant, Appliance and Site are the ids of the appliance's tenant,
	// itself and its site; Name is its own name.
	Tenant    string
	Appliance string
	Site      string
	Name      string
	// OverlayAddr is the appliance's address in OverlayRange.
	OverlayAddr netip.Addr
	// LANPrefixes are the prefixes of the appliance's own site.
	LANPrefixes []netip.Prefix
	// Probes are the tenant's probe keys and the probe interval; zero when
	// the controller distributes none.
	Probes Probes
	// Pair is the appliance's place in its site's pair; nil unless the
	// site has two appliances (see pair.go).
	Pair *Pair
	// Peers are the other appliances of the tenant, sorted by name. A
	// netmap made by Shared leaves it nil: see Full.
	Peers []Peer

	shared *shared
}

// Peer is one remote appliance.
type Peer struct {
	Name        string
	Site        string
	PublicKey   wgkey.PublicKey
	OverlayAddr netip.Addr
	// Endpoints are the peer's underlay addresses; empty when the peer is
	// behind NAT and only dials out.
	Endpoints []netip.AddrPort
	// Prefixes are the LAN prefixes the peer announces.
	Prefixes []netip.Prefix
	// Pair is set when the peer is one of the two appliances of its site.
	Pair *PeerPair
	// Keepalive is the persistent keepalive toward this peer; 0 disables it.
	Keepalive time.Duration
	// SLA is what the paths toward this peer must meet (probes.Selector):
	// the override for the pair of sites if there is one, else the
	// tenant's. Durations are whole milliseconds; the zero SLA (no limits)
	// is left out of the encoding.
	SLA probes.SLA
}

// AllowedPrefixes is what WireGuard accepts from, and routes to, the peer:
// its overlay address and its LAN prefixes.
func (p *Peer) AllowedPrefixes() []netip.Prefix {
	out := make([]netip.Prefix, 0, 1+len(p.Prefixes))
	out = append(out, netip.PrefixFrom(p.OverlayAddr, p.OverlayAddr.BitLen()))
	return append(out, p.Prefixes...)
}

// Equal reports whether two peers are the same.
func (p *Peer) Equal(q *Peer) bool {
	return p.Name == q.Name && p.Site == q.Site && p.PublicKey == q.PublicKey && p.OverlayAddr == q.OverlayAddr &&
		slices.Equal(p.Endpoints, q.Endpoints) && slices.Equal(p.Prefixes, q.Prefixes) && equalPtr(p.Pair, q.Pair) &&
		p.Keepalive == q.Keepalive && p.SLA == q.SLA
}

// SameContent reports whether two netmaps configure the same thing,
// ignoring Version and RequestID.
func (n *Netmap) SameContent(m *Netmap) bool {
	if n.Tenant != m.Tenant || n.Appliance != m.Appliance || n.Site != m.Site || n.Name != m.Name ||
		n.OverlayAddr != m.OverlayAddr || !slices.Equal(n.LANPrefixes, m.LANPrefixes) || !n.Probes.Equal(&m.Probes) ||
		!equalPtr(n.Pair, m.Pair) || n.NumPeers() != m.NumPeers() {
		return false
	}
	if n.shared != nil && m.shared != nil && *n.shared == *m.shared {
		return true
	}
	for i := range n.NumPeers() {
		p, q := n.PeerAt(i), m.PeerAt(i)
		if !p.Equal(&q) {
			return false
		}
	}
	return true
}

// wire is the JSON shape. Every field is a plain string or number so that
// each error can name the field it came from.
type wire struct {
	Version     uint64      `json:"version"`
	RequestID   string      `json:"request_id,omitempty"`
	Tenant      string      `json:"tenant"`
	Appliance   string      `json:"appliance"`
	Site        string      `json:"site"`
	Name        string      `json:"name"`
	OverlayAddr string      `json:"overlay_addr"`
	LANPrefixes []string    `json:"lan_prefixes"`
	Probes      *wireProbes `json:"probes,omitempty"`
	Pair        *wirePair   `json:"pair,omitempty"`
	Peers       []wirePeer  `json:"peers"`
}

type wirePeer struct {
	Name        string        `json:"name"`
	Site        string        `json:"site"`
	PublicKey   string        `json:"public_key"`
	OverlayAddr string        `json:"overlay_addr"`
	Endpoints   []string      `json:"endpoints"`
	Prefixes    []string      `json:"prefixes"`
	Pair        *wirePeerPair `json:"pair,omitempty"`
	Keepalive   int64         `json:"keepalive_seconds"`
	SLA         *wireSLA      `json:"sla,omitempty"`
}

// FieldError is one problem with one field.
type FieldError struct {
	Field string // JSON path, e.g. "peers[1].public_key"
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// DecodeError lists every problem Decode found.
type DecodeError struct{ Errs []error }

func (e *DecodeError) Error() string {
	parts := make([]string, len(e.Errs))
	for i, err := range e.Errs {
		parts[i] = err.Error()
	}
	return "invalid netmap: " + strings.Join(parts, "; ")
}

func (e *DecodeError) Unwrap() []error { return e.Errs }

// Decode parses and validates an encoded netmap. The error, if any, is a
// *DecodeError.
func Decode(data []byte) (*Netmap, error) {
	if len(data) > MaxSize {
		return nil, &DecodeError{[]error{fmt.Errorf("larger than %d bytes", MaxSize)}}
	}
	// The common case, a valid document, is decoded in one pass. When that
	// fails, the peers are decoded one by one so that an error inside one
	// can name its index, which encoding/json leaves out.
	var whole wire
	if DecodeStrict(data, &whole, "") == nil {
		v := &validator{}
		n := v.netmap(&whole, whole.Peers)
		if len(v.errs) > 0 {
			return nil, &DecodeError{v.errs}
		}
		return n, nil
	}
	var w wireIn
	if err := DecodeStrict(data, &w, ""); err != nil {
		return nil, &DecodeError{[]error{err}}
	}
	v := &validator{}
	ww := w.wire
	ww.Probes = decodeProbesRaw(v, w.Probes)
	ww.Pair = decodeRaw[wirePair](v, w.Pair, "pair")
	peers := decodePeersRaw(v, w.Peers)
	if len(v.errs) > 0 {
		return nil, &DecodeError{v.errs}
	}
	n := v.netmap(&ww, peers)
	if len(v.errs) > 0 {
		return nil, &DecodeError{v.errs}
	}
	return n, nil
}

// wireIn is wire with the probes, the pair and the peers left raw.
type wireIn struct {
	wire
	Probes json.RawMessage   `json:"probes"`
	Pair   json.RawMessage   `json:"pair"`
	Peers  []json.RawMessage `json:"peers"`
}

// wirePeerIn is wirePeer with the pair and the SLA left raw.
type wirePeerIn struct {
	wirePeer
	Pair json.RawMessage `json:"pair"`
	SLA  json.RawMessage `json:"sla"`
}

// wireProbesIn is wireProbes with the keys left raw.
type wireProbesIn struct {
	wireProbes
	Keys []json.RawMessage `json:"keys"`
}

// decodePeersRaw decodes each peer on its own, and its SLA on its own, so
// that every error names the peer (encoding/json leaves the index and the
// enclosing object out of some errors). Errors go to v.
func decodePeersRaw(v *validator, raws []json.RawMessage) []wirePeer {
	peers := make([]wirePeer, len(raws))
	for i, raw := range raws {
		base := fmt.Sprintf("peers[%d]", i)
		var in wirePeerIn
		if err := DecodeStrict(raw, &in, base); err != nil {
			v.errs = append(v.errs, err)
			continue
		}
		peers[i] = in.wirePeer
		peers[i].Pair = decodeRaw[wirePeerPair](v, in.Pair, base+".pair")
		peers[i].SLA = decodeRaw[wireSLA](v, in.SLA, base+".sla")
	}
	return peers
}

// decodeRaw decodes an optional object on its own, so that its errors
// name it; nil when it is absent. Errors go to v.
func decodeRaw[T any](v *validator, raw json.RawMessage, field string) *T {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	out := new(T)
	if err := DecodeStrict(raw, out, field); err != nil {
		v.errs = append(v.errs, err)
	}
	return out
}

// decodeProbesRaw is decodePeersRaw for the probes object.
func decodeProbesRaw(v *validator, raw json.RawMessage) *wireProbes {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var in wireProbesIn
	if err := DecodeStrict(raw, &in, "probes"); err != nil {
		v.errs = append(v.errs, err)
		return nil
	}
	p := &in.wireProbes
	p.Keys = make([]wireKey, len(in.Keys))
	for i, k := range in.Keys {
		if err := DecodeStrict(k, &p.Keys[i], fmt.Sprintf("probes.keys[%d]", i)); err != nil {
			v.errs = append(v.errs, err)
		}
	}
	return p
}

// DecodeStrict decodes one JSON value into v, refusing unknown fields and
// trailing data. Errors name the field, prefixed with prefix (the path of
// the value inside a larger document, "" at the top).
func DecodeStrict(data []byte, v any, prefix string) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return JSONError(err, prefix)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}

// JSONError turns an encoding/json decoder error into one that names the
// field, where the decoder knows it, prefixed with prefix.
func JSONError(err error, prefix string) error {
	join := func(field string) string {
		switch {
		case prefix == "":
			return field
		case field == "":
			return prefix
		}
		return prefix + "." + field
	}
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		field := join(JSONPath(te.Field))
		if field == "" {
			return fmt.Errorf("want a JSON object, got JSON %s", te.Value)
		}
		return &FieldError{Field: field, Msg: fmt.Sprintf("want %s, got JSON %s", jsonType(te.Type.Kind().String()), te.Value)}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return &FieldError{Field: join(strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)), Msg: "unknown field"}
	case errors.Is(err, io.EOF):
		return errors.New("empty document")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("truncated document")
	case prefix != "":
		return fmt.Errorf("%s: %v", prefix, err)
	}
	return err
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "slice", "array":
		return "an array"
	case "struct", "map":
		return "an object"
	case "bool":
		return "a boolean"
	}
	return "a number"
}

// JSONPath turns encoding/json's "peers.1.public_key" into
// "peers[1].public_key". It drops the names encoding/json gives the
// embedded structs of this package's decoding types ("wirePeer"), which
// are no part of the document.
func JSONPath(p string) string {
	parts := strings.Split(p, ".")
	var b strings.Builder
	for _, s := range parts {
		if embeddedWire[s] {
			continue
		}
		if s != "" && strings.Trim(s, "0123456789") == "" {
			b.WriteString("[" + s + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(s)
	}
	return b.String()
}

// embeddedWire names the structs embedded in wireIn, wirePeerIn,
// wireProbesIn and wireDelta(In).
var embeddedWire = map[string]bool{"wire": true, "wireIn": true, "wirePeer": true, "wireProbes": true}

type validator struct{ errs []error }

func (v *validator) fail(field, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) netmap(w *wire, peers []wirePeer) *Netmap {
	n := &Netmap{Version: w.Version, RequestID: w.RequestID, Tenant: w.Tenant, Appliance: w.Appliance, Site: w.Site, Name: w.Name}
	if w.Version == 0 {
		v.fail("version", "must be 1 or more")
	}
	for _, f := range []struct{ name, val string }{{"tenant", w.Tenant}, {"appliance", w.Appliance}, {"name", w.Name}} {
		if f.val == "" {
			v.fail(f.name, "required")
		}
	}
	if len(w.RequestID) > 128 {
		v.fail("request_id", "longer than 128 bytes")
	}
	n.OverlayAddr = v.overlayAddr("overlay_addr", w.OverlayAddr)
	n.LANPrefixes = v.prefixes("lan_prefixes", w.LANPrefixes)
	n.Probes = v.probes(w.Probes)
	n.Pair = v.ownPair(w.Pair)
	if len(peers) > 0 {
		n.Peers = make([]Peer, 0, len(peers))
	}
	keys := make(map[wgkey.PublicKey]string, len(peers))
	addrs := make(map[netip.Addr]string, len(peers)+1)
	if n.OverlayAddr.IsValid() {
		addrs[n.OverlayAddr] = "overlay_addr"
	}
	for i := range peers {
		wp := &peers[i]
		base := fmt.Sprintf("peers[%d]", i)
		p := Peer{Name: wp.Name, Site: wp.Site}
		if wp.Name == "" {
			v.fail(base+".name", "required")
		}
		if k, err := wgkey.ParsePublic(wp.PublicKey); err != nil {
			v.fail(base+".public_key", "%v", err)
		} else if prev, dup := keys[k]; dup {
			v.fail(base+".public_key", "same key as %s", prev)
		} else {
			keys[k] = base
			p.PublicKey = k
		}
		p.OverlayAddr = v.overlayAddr(base+".overlay_addr", wp.OverlayAddr)
		if p.OverlayAddr.IsValid() {
			if prev, dup := addrs[p.OverlayAddr]; dup {
				v.fail(base+".overlay_addr", "%s is already used by %s", p.OverlayAddr, prev)
			} else {
				addrs[p.OverlayAddr] = base
			}
		}
		for j, s := range wp.Endpoints {
			field := fmt.Sprintf("%s.endpoints[%d]", base, j)
			if ap, err := ParseEndpoint(s); err != nil {
				v.fail(field, "%v", err)
			} else {
				p.Endpoints = append(p.Endpoints, ap)
			}
		}
		p.Prefixes = v.prefixes(base+".prefixes", wp.Prefixes)
		p.Pair = v.peerPair(base+".pair", wp.Pair)
		if wp.Keepalive < 0 || time.Duration(wp.Keepalive)*time.Second > MaxKeepalive {
			v.fail(base+".keepalive_seconds", "want 0 to 65535, got %d", wp.Keepalive)
		} else {
			p.Keepalive = time.Duration(wp.Keepalive) * time.Second
		}
		p.SLA = v.sla(base+".sla", wp.SLA)
		n.Peers = append(n.Peers, p)
	}
	v.errs = append(v.errs, lanConflicts(n.LANPrefixes, n.Site, n.Pair, n.Peers, func(i int) string { return fmt.Sprintf("peers[%d]", i) })...)
	return n
}

func (v *validator) overlayAddr(field, s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	switch {
	case s == "":
		v.fail(field, "required (an address in %s)", OverlayRange)
	case err != nil:
		v.fail(field, "want an IP address, got %q", s)
	case !OverlayRange.Contains(a):
		v.fail(field, "%s is outside the overlay range %s", a, OverlayRange)
	default:
		return a
	}
	return netip.Addr{}
}

func (v *validator) prefixes(field string, ss []string) []netip.Prefix {
	var out []netip.Prefix
	for i, s := range ss {
		f := fmt.Sprintf("%s[%d]", field, i)
		p, err := ParseLANPrefix(s)
		if err != nil {
			v.fail(f, "%v", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

// ParseLANPrefix parses a LAN prefix and checks that it is one: masked, not
// a default route, clear of the overlay range. The controller's API uses
// the same rules.
func ParseLANPrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		return netip.Prefix{}, fmt.Errorf("want a prefix such as 10.1.0.0/24, got %q", s)
	case p.Addr().Zone() != "":
		return netip.Prefix{}, fmt.Errorf("%q has a zone", s)
	case p.Masked() != p:
		return netip.Prefix{}, fmt.Errorf("%s has host bits set; did you mean %s?", p, p.Masked())
	case p.Bits() == 0:
		return netip.Prefix{}, fmt.Errorf("a default route (%s) is not a LAN prefix", p)
	case p.Addr().Is4In6():
		return netip.Prefix{}, fmt.Errorf("%s is an IPv4-mapped IPv6 prefix; write it as IPv4", p)
	case p.Overlaps(OverlayRange):
		return netip.Prefix{}, fmt.Errorf("%s overlaps the overlay range %s", p, OverlayRange)
	}
	return p, nil
}

// ParseEndpoint parses an underlay endpoint (IP:port) and checks that it can
// be sent to.
func ParseEndpoint(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	switch {
	case err != nil:
		return ap, fmt.Errorf("want IP:port (e.g. 198.18.0.1:51820 or [2001:db8::1]:51820), got %q", s)
	case ap.Port() == 0:
		return ap, errors.New("port 0 is not a valid destination")
	case !ap.Addr().IsGlobalUnicast() || ap.Addr().Zone() != "":
		return ap, fmt.Errorf("%s is not a unicast address", ap.Addr())
	case ap.Addr().Is4In6():
		return ap, fmt.Errorf("%s is an IPv4-mapped IPv6 address; write it as IPv4", ap.Addr())
	}
	return ap, nil
}
