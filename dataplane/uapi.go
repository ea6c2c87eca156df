package dataplane

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// Peer is one WireGuard peer as the dataplane sees it.
type Peer struct {
	PublicKey wgkey.PublicKey
	// Endpoint is where to send to the peer; the zero value means "not
	// known until the peer contacts us".
	Endpoint netip.AddrPort
	// Alternates are more endpoints of the peer. With the multipath bind,
	// Endpoint and Alternates on every uplink are the peer's candidate
	// paths; the standard bind uses Endpoint only.
	Alternates []netip.AddrPort
	// AllowedIPs are the inner prefixes routed to, and accepted from, the
	// peer. The device also installs a kernel route for each.
	AllowedIPs []netip.Prefix
	// Keepalive is the persistent keepalive interval; 0 disables it.
	Keepalive time.Duration
}

// candidates is Endpoint followed by the distinct IPv4 Alternates.
func (p Peer) candidates() []netip.AddrPort {
	var out []netip.AddrPort
	for _, ep := range append([]netip.AddrPort{p.Endpoint}, p.Alternates...) {
		if ep.IsValid() && ep.Addr().Is4() && !slices.Contains(out, ep) {
			out = append(out, ep)
		}
	}
	return out
}

// PeerStats is the live state of one peer.
type PeerStats struct {
	PublicKey     wgkey.PublicKey
	Endpoint      netip.AddrPort // current (possibly roamed) endpoint
	LastHandshake time.Time      // zero if none yet
	// WireTxBytes and WireRxBytes are WireGuard's own counters of
	// encrypted bytes (WireGuard header and tag included, UDP/IP not).
	WireTxBytes, WireRxBytes uint64
	// Inner are the inner IP packets attributed to this peer.
	Inner Counters
}

// uapiSet builds a WireGuard UAPI "set" body that turns the device's peer
// set from have into want. Peers that keep their key are updated in place
// (sessions survive); an endpoint is written only when it changed, so that
// a roamed endpoint of a peer without a configured one is kept.
func uapiSet(priv *wgkey.PrivateKey, port uint16, have map[wgkey.PublicKey]Peer, want []Peer) string {
	var b strings.Builder
	if priv != nil {
		fmt.Fprintf(&b, "private_key=%s\nlisten_port=%d\n", priv.HexString(), port)
	}
	wantKeys := make(map[wgkey.PublicKey]bool, len(want))
	for _, p := range want {
		wantKeys[p.PublicKey] = true
	}
	for k := range have {
		if !wantKeys[k] {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.HexString())
		}
	}
	// Allowed prefixes change without a moment in which a kept prefix is
	// nobody's: a new peer gets its list outright; a kept peer first gets
	// the prefixes it gains (an insert takes a prefix over from the peer
	// that had it, atomically), and only once every peer has its gains
	// does it lose what it no longer has ("-prefix" removes a prefix only
	// from the peer that still holds it). A prefix moving from one peer
	// to another is always routed, to one or the other.
	var losses strings.Builder
	for _, p := range want {
		old, existed := have[p.PublicKey]
		fmt.Fprintf(&b, "public_key=%s\n", p.PublicKey.HexString())
		if p.Endpoint.IsValid() && (!existed || old.Endpoint != p.Endpoint) {
			fmt.Fprintf(&b, "endpoint=%s\n", p.Endpoint)
		}
		fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(p.Keepalive/time.Second))
		if !existed {
			b.WriteString("replace_allowed_ips=true\n")
			for _, a := range p.AllowedIPs {
				fmt.Fprintf(&b, "allowed_ip=%s\n", a.Masked())
			}
			continue
		}
		had := make(map[netip.Prefix]bool, len(old.AllowedIPs))
		for _, a := range old.AllowedIPs {
			had[a.Masked()] = true
		}
		keep := make(map[netip.Prefix]bool, len(p.AllowedIPs))
		for _, a := range p.AllowedIPs {
			keep[a.Masked()] = true
			if !had[a.Masked()] {
				fmt.Fprintf(&b, "allowed_ip=%s\n", a.Masked())
			}
		}
		var lost []netip.Prefix
		for _, a := range old.AllowedIPs {
			if !keep[a.Masked()] {
				lost = append(lost, a.Masked())
			}
		}
		if len(lost) > 0 {
			fmt.Fprintf(&losses, "public_key=%s\n", p.PublicKey.HexString())
			for _, a := range lost {
				fmt.Fprintf(&losses, "allowed_ip=-%s\n", a)
			}
		}
	}
	b.WriteString(losses.String())
	return b.String()
}

// parseUAPIGet extracts per-peer state from a UAPI "get" answer. Lines
// it does not use are ignored; the private key line is never kept.
func parseUAPIGet(s string) ([]PeerStats, error) {
	var out []PeerStats
	var cur *PeerStats
	var hsSec, hsNsec int64
	finish := func() {
		if cur != nil && (hsSec != 0 || hsNsec != 0) {
			cur.LastHandshake = time.Unix(hsSec, hsNsec)
		}
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := sc.Text()
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if key == "public_key" {
			finish()
			raw, err := hex.DecodeString(val)
			if err != nil || len(raw) != wgkey.Len {
				return nil, fmt.Errorf("uapi: bad public_key %q", val)
			}
			pk, _ := wgkey.ParsePublic(b64(raw))
			out = append(out, PeerStats{PublicKey: pk})
			cur = &out[len(out)-1]
			hsSec, hsNsec = 0, 0
			continue
		}
		if cur == nil {
			continue
		}
		var err error
		switch key {
		case "endpoint":
			cur.Endpoint, err = netip.ParseAddrPort(val)
		case "tx_bytes":
			cur.WireTxBytes, err = strconv.ParseUint(val, 10, 64)
		case "rx_bytes":
			cur.WireRxBytes, err = strconv.ParseUint(val, 10, 64)
		case "last_handshake_time_sec":
			hsSec, err = strconv.ParseInt(val, 10, 64)
		case "last_handshake_time_nsec":
			hsNsec, err = strconv.ParseInt(val, 10, 64)
		}
		if err != nil {
			return nil, fmt.Errorf("uapi: bad %s %q: %w", key, val, err)
		}
		// The slice may have grown; keep cur pointing at its element.
		cur = &out[len(out)-1]
	}
	finish()
	return out, sc.Err()
}
