package netmap

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// pairSample is the netmap of office-1-a, one of the two appliances of
// site st_1, which sees its partner office-1-b and the two appliances of
// site st_5, a pair announcing 10.5.0.0/24, plus an unrelated peer.
func pairSample(t testing.TB) *Netmap {
	n := sample(t)
	n.Name, n.Appliance = "office-1-a", "ap_1"
	n.Pair = &Pair{Priority: 150, Drained: false}
	lan5 := []netip.Prefix{netip.MustParsePrefix("10.5.0.0/24")}
	n.Peers = append(n.Peers,
		Peer{Name: "office-1-b", Site: "st_1", PublicKey: testKey(t, 4), OverlayAddr: netip.MustParseAddr("100.64.0.4"),
			Prefixes: n.LANPrefixes, Pair: &PeerPair{Priority: 100, Term: 3}},
		Peer{Name: "vpc-5-a", Site: "st_5", PublicKey: testKey(t, 5), OverlayAddr: netip.MustParseAddr("100.64.0.5"),
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.5.1:51820")}, Prefixes: lan5,
			Pair: &PeerPair{Priority: 100, Active: true, Term: 7}},
		Peer{Name: "vpc-5-b", Site: "st_5", PublicKey: testKey(t, 6), OverlayAddr: netip.MustParseAddr("100.64.0.6"),
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.5.2:51820")}, Prefixes: lan5,
			Pair: &PeerPair{Priority: 100, Active: false, Term: 7}},
	)
	return n
}

func TestPairWire(t *testing.T) {
	n := pairSample(t)
	enc, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	if ref := reference(n); !bytes.Equal(enc, ref) {
		t.Fatalf("encoding differs from encoding/json:\n got %s\nwant %s", enc, ref)
	}
	if len(enc) != n.EncodedLen() {
		t.Errorf("EncodedLen %d, encoding %d bytes", n.EncodedLen(), len(enc))
	}
	for _, want := range []string{
		`"interval_ms":200},"pair":{"priority":150,"drained":false},"peers":[`,
		`"prefixes":["10.5.0.0/24"],"pair":{"priority":100,"active":true,"term":7},"keepalive_seconds":0}`,
		`"prefixes":["10.5.0.0/24"],"pair":{"priority":100,"active":false,"term":7},"keepalive_seconds":0}`,
	} {
		if !bytes.Contains(enc, []byte(want)) {
			t.Errorf("encoding lacks %s:\n%s", want, enc)
		}
	}
	got, err := Decode(enc)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if !got.SameContent(n) || *got.Pair != *n.Pair || !got.Peers[3].Pair.Active || got.Peers[4].Pair.Active || got.Peers[3].Pair.Term != 7 {
		t.Errorf("round trip: %+v", got)
	}
	// A netmap without pairs has no pair fields at all.
	plain, _ := json.Marshal(sample(t))
	if bytes.Contains(plain, []byte(`"pair"`)) {
		t.Errorf("pair fields without a pair: %s", plain)
	}
	// The shared encoding carries a peer's pair in its entry.
	var entries []*PeerEntry
	for _, p := range n.Peers {
		entries = append(entries, NewPeerEntry(p))
	}
	head := *n
	head.Peers = nil
	s := Shared(head, NewTable(entries), -1, 0, nil)
	senc, _ := json.Marshal(s)
	if ref := reference(s); !bytes.Equal(senc, ref) || len(senc) != s.EncodedLen() || !bytes.Contains(senc, []byte(`"active":true,"term":7}`)) {
		t.Errorf("shared encoding differs:\n got %s\nwant %s", senc, ref)
	}
}

func TestPairDecodeRules(t *testing.T) {
	good, _ := json.Marshal(pairSample(t))
	edit := func(pairs ...string) string {
		s := string(good)
		for i := 0; i < len(pairs); i += 2 {
			next := strings.Replace(s, pairs[i], pairs[i+1], 1)
			if next == s {
				t.Fatalf("edit %q not found", pairs[i])
			}
			s = next
		}
		return s
	}
	pairB := `"pair":{"priority":100,"active":false,"term":7}`
	cases := []struct{ in, want string }{
		// Two peers of one site announcing the same prefixes are fine as a
		// pair, refused without the pair marks.
		{edit(`,"pair":{"priority":100,"active":true,"term":7}`, ``, `,`+pairB, ``),
			"peers[4].prefixes[0]: 10.5.0.0/24 overlaps 10.5.0.0/24 (peers[3].prefixes[0])"},
		// Unrelated peers never overlap.
		{edit(`"10.2.0.0/24"`, `"10.5.0.0/25"`), "peers[3].prefixes[0]: 10.5.0.0/24 overlaps 10.5.0.0/25 (peers[0].prefixes[0])"},
		{edit(`"prefixes":[],"keepalive_seconds":0}`, `"prefixes":["10.1.0.128/25"],"keepalive_seconds":0}`),
			"peers[1].prefixes[0]: 10.1.0.128/25 overlaps 10.1.0.0/24 (lan_prefixes[0])"},
		{edit(`"fd00:2::/64"`, `"10.2.0.0/16"`), "peers[0].prefixes[1]: 10.2.0.0/16 overlaps 10.2.0.0/24 (peers[0].prefixes[0])"},
		// A pair is well formed.
		{edit(`"prefixes":["10.5.0.0/24"],`+pairB, `"prefixes":["10.5.1.0/24"],`+pairB),
			"peers[4].prefixes: the two members of site st_5 must announce the same prefixes"},
		{edit(pairB, `"pair":{"priority":100,"active":true,"term":7}`), "peers[4].pair.active: site st_5 has two active members (also peers[3])"},
		{edit(`"site":"st_3"`, `"site":"st_5"`, `"prefixes":[],"keepalive_seconds":0}`, `"prefixes":["10.5.0.0/24"],"pair":{"priority":1,"active":false,"term":0},"keepalive_seconds":0}`),
			"peers[4].pair: site st_5 has more than two pair members (also peers[1])"},
		{edit(`"site":"st_5"`, `"site":""`), "peers[3].site: required for a pair member"},
		{edit(`,"pair":{"priority":150,"drained":false}`, ``), "peers[2].pair: a pair member of the appliance's own site st_1, but the netmap has no pair of its own"},
		{edit(`"prefixes":["10.1.0.0/24"],"pair"`, `"prefixes":["10.1.0.0/25"],"pair"`),
			"peers[2].prefixes: a pair member of the appliance's own site must announce its lan_prefixes"},
		// Field errors name the field.
		{edit(`"priority":150`, `"priority":256`), "pair.priority: want 0 to 255, got 256"},
		{edit(`"drained":false`, `"drained":false,"x":1`), "pair.x: unknown field"},
		{edit(`"drained":false`, `"drained":"no"`), "pair.drained: want a boolean"},
		{edit(`"term":7`, `"term":-7`), "peers[3].pair.term: want a number"},
		{edit(`"term":7`, `"term":7,"y":2`), "peers[3].pair.y: unknown field"},
		{edit(`"priority":100,"active":true`, `"priority":-1,"active":true`), "peers[3].pair.priority: want 0 to 255, got -1"},
	}
	for _, c := range cases {
		_, err := Decode([]byte(c.in))
		var de *DecodeError
		if !errors.As(err, &de) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Decode: %v\nwant a DecodeError containing %q", err, c.want)
		}
	}
}

func TestPairDelta(t *testing.T) {
	base := pairSample(t)
	// The controller's derived active moves from vpc-5-a to vpc-5-b with
	// a new term: the delta carries both members again.
	a, b := base.Peers[3], base.Peers[4]
	a.Pair = &PeerPair{Priority: 100, Term: 8}
	b.Pair = &PeerPair{Priority: 100, Active: true, Term: 8}
	d := &Delta{Version: 9, Base: base.Version, Tenant: base.Tenant, Appliance: base.Appliance, Site: base.Site, Name: base.Name,
		OverlayAddr: base.OverlayAddr, LANPrefixes: base.LANPrefixes, Probes: base.Probes, Pair: &Pair{Priority: 150, Drained: true},
		Peers: []Peer{a, b}}
	enc, _ := json.Marshal(d)
	got, err := DecodeDelta(enc)
	if err != nil {
		t.Fatalf("DecodeDelta(%s): %v", enc, err)
	}
	m, err := base.Apply(got)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Pair.Drained || m.Peers[3].Pair.Active || !m.Peers[4].Pair.Active || m.Peers[4].Pair.Term != 8 {
		t.Errorf("applied: pair %+v, peers %+v %+v", m.Pair, m.Peers[3].Pair, m.Peers[4].Pair)
	}
	// A delta whose member disagrees with the one the netmap holds is
	// refused when applied.
	b.Prefixes = []netip.Prefix{netip.MustParsePrefix("10.5.9.0/24")}
	d.Peers = []Peer{b}
	if _, err := base.Apply(d); err == nil || !strings.Contains(err.Error(), "must announce the same prefixes") {
		t.Errorf("a member with other prefixes: %v", err)
	}
	b.Prefixes, b.Pair = base.Peers[0].Prefixes, nil
	b.Name, b.PublicKey, b.OverlayAddr = "vpc-5-c", testKey(t, 7), netip.MustParseAddr("100.64.0.7")
	d.Peers = []Peer{b}
	if _, err := base.Apply(d); err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Errorf("an unrelated peer with another's prefixes: %v", err)
	}
}
