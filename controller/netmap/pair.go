package netmap

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// A site may have two live appliances, a pair: both are peers of every
// other appliance of the tenant and both announce the site's LAN prefixes.
// The netmap says so in two places:
//
//	own part:  "pair": {"priority": 100, "drained": false}
//	each peer: "pair": {"priority": 100, "active": true, "term": 3}
//
// The own part is there when the appliance's own site has two appliances;
// a peer's when the peer's site has. active is the member the controller
// derived from the members' reports as the active one (at most one per
// site), term the term it holds. A receiving appliance routes a pair's LAN
// prefixes to exactly one member (see the appliance's pair follow).

// Pair priorities: higher is preferred.
const (
	DefaultPriority = 100
	MaxPriority     = 255
)

// Pair is an appliance's own place in a pair.
type Pair struct {
	// Priority is the appliance's priority in the pair (0 to MaxPriority,
	// higher preferred).
	Priority int
	// Drained asks the appliance to give up the active role and stay
	// standby.
	Drained bool
}

// PeerPair marks a peer as one of the two appliances of its site.
type PeerPair struct {
	Priority int
	// Active is set on the member the controller holds to be active.
	Active bool
	// Term is the term of the site's active member.
	Term uint64
}

type wirePair struct {
	Priority int  `json:"priority"`
	Drained  bool `json:"drained"`
}

type wirePeerPair struct {
	Priority int    `json:"priority"`
	Active   bool   `json:"active"`
	Term     uint64 `json:"term"`
}

func equalPtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func (v *validator) priority(field string, p int) int {
	if p < 0 || p > MaxPriority {
		v.fail(field, "want 0 to %d, got %d", MaxPriority, p)
		return 0
	}
	return p
}

func (v *validator) ownPair(w *wirePair) *Pair {
	if w == nil {
		return nil
	}
	return &Pair{Priority: v.priority("pair.priority", w.Priority), Drained: w.Drained}
}

func (v *validator) peerPair(field string, w *wirePeerPair) *PeerPair {
	if w == nil {
		return nil
	}
	return &PeerPair{Priority: v.priority(field+".priority", w.Priority), Active: w.Active, Term: w.Term}
}

// appendOwnPair appends `,"pair":{...}` unless p is nil.
func appendOwnPair(dst []byte, p *Pair) []byte {
	if p == nil {
		return dst
	}
	dst = append(dst, `,"pair":{"priority":`...)
	dst = strconv.AppendInt(dst, int64(p.Priority), 10)
	dst = append(dst, `,"drained":`...)
	dst = strconv.AppendBool(dst, p.Drained)
	return append(dst, '}')
}

// appendPeerPair appends `,"pair":{...}` unless p is nil.
func appendPeerPair(dst []byte, p *PeerPair) []byte {
	if p == nil {
		return dst
	}
	dst = append(dst, `,"pair":{"priority":`...)
	dst = strconv.AppendInt(dst, int64(p.Priority), 10)
	dst = append(dst, `,"active":`...)
	dst = strconv.AppendBool(dst, p.Active)
	dst = append(dst, `,"term":`...)
	dst = strconv.AppendUint(dst, p.Term, 10)
	return append(dst, '}')
}

// lanConflicts checks the LAN prefixes of a netmap: no two of them may
// overlap, whoever announces them, with one exception: the two members of
// a pair announce the same prefixes (their site's), and a partner of the
// appliance's own site announces the appliance's own lan_prefixes. Pairs
// must be well formed: at most two members per site, at most one of them
// active, the same prefixes on both. peerName names peer i in the errors
// ("peers[3]").
//
// It takes O(P log P) for P prefixes in all.
func lanConflicts(own []netip.Prefix, ownSite string, ownPair *Pair, peers []Peer, peerName func(int) string) []error {
	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	type claim struct {
		p     netip.Prefix
		field string
		order int // document order, to blame the later of two
	}
	var claims []claim
	add := func(field string, ps []netip.Prefix) {
		for j, p := range ps {
			claims = append(claims, claim{p: p, field: fmt.Sprintf("%s[%d]", field, j), order: len(claims)})
		}
	}
	add("lan_prefixes", own)
	members := map[string][]int{} // pair members by site, in document order
	for i := range peers {
		p := &peers[i]
		name := peerName(i)
		if p.Pair == nil {
			add(name+".prefixes", p.Prefixes)
			continue
		}
		switch {
		case p.Site == "":
			fail(name+".site", "required for a pair member (the pair is the two appliances of one site)")
			continue
		case p.Site == ownSite && ownPair == nil:
			fail(name+".pair", "a pair member of the appliance's own site %s, but the netmap has no pair of its own", ownSite)
			continue
		}
		prev := members[p.Site]
		limit := 2
		if p.Site == ownSite {
			limit = 1 // the appliance itself is the other member
		}
		if len(prev) >= limit {
			fail(name+".pair", "site %s has more than two pair members (also %s)", p.Site, peerName(prev[0]))
			continue
		}
		members[p.Site] = append(prev, i)
		switch {
		case p.Site == ownSite:
			if !SamePrefixes(p.Prefixes, own) {
				fail(name+".prefixes", "a pair member of the appliance's own site must announce its lan_prefixes %v, got %v", own, p.Prefixes)
			}
		case len(prev) == 1:
			other := &peers[prev[0]]
			if !SamePrefixes(p.Prefixes, other.Prefixes) {
				fail(name+".prefixes", "the two members of site %s must announce the same prefixes: %v here, %v at %s", p.Site, p.Prefixes, other.Prefixes, peerName(prev[0]))
			}
			if p.Pair.Active && other.Pair.Active {
				fail(name+".pair.active", "site %s has two active members (also %s)", p.Site, peerName(prev[0]))
			}
		default:
			add(name+".prefixes", p.Prefixes) // the pair's prefixes, claimed once
		}
	}
	// Prefixes either nest or are disjoint. Sorted by address and then by
	// length, a prefix overlaps an earlier one exactly when it lies inside
	// the last prefix that was not itself inside an earlier one.
	slices.SortStableFunc(claims, func(a, b claim) int {
		return cmp.Or(a.p.Addr().Compare(b.p.Addr()), cmp.Compare(a.p.Bits(), b.p.Bits()))
	})
	var top *claim
	for i := range claims {
		c := &claims[i]
		if top == nil || top.p.Addr().BitLen() != c.p.Addr().BitLen() || !top.p.Contains(c.p.Addr()) {
			top = c
			continue
		}
		later, earlier := c, top
		if later.order < earlier.order {
			later, earlier = earlier, later
		}
		fail(later.field, "%s overlaps %s (%s)", later.p, earlier.p, earlier.field)
	}
	return errs
}

// SamePrefixes reports whether a and b hold the same prefixes, in any
// order: what the two members of a pair must announce.
func SamePrefixes(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	sa, sb := slices.Clone(a), slices.Clone(b)
	order := func(x, y netip.Prefix) int {
		return cmp.Or(x.Addr().Compare(y.Addr()), cmp.Compare(x.Bits(), y.Bits()))
	}
	slices.SortFunc(sa, order)
	slices.SortFunc(sb, order)
	return slices.Equal(sa, sb)
}
