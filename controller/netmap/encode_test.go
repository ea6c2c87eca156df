package netmap

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/dataplane/wgkey"
	"github.com/causeway-net/causeway/probes"
)

// reference is the plain encoding/json form of the wire type, which the
// hand-written encoder must reproduce byte for byte.
func reference(n *Netmap) []byte {
	w := wire{
		Version: n.Version, RequestID: n.RequestID, Tenant: n.Tenant, Appliance: n.Appliance, Site: n.Site, Name: n.Name,
		OverlayAddr: n.OverlayAddr.String(), LANPrefixes: refStrs(n.LANPrefixes), Peers: make([]wirePeer, n.NumPeers()),
	}
	for i := range n.NumPeers() {
		p := n.PeerAt(i)
		w.Peers[i] = wirePeer{
			Name: p.Name, Site: p.Site, PublicKey: p.PublicKey.String(), OverlayAddr: p.OverlayAddr.String(),
			Endpoints: refStrs(p.Endpoints), Prefixes: refStrs(p.Prefixes), Keepalive: int64(p.Keepalive / time.Second),
		}
		if pp := p.Pair; pp != nil {
			w.Peers[i].Pair = &wirePeerPair{Priority: pp.Priority, Active: pp.Active, Term: pp.Term}
		}
		if p.SLA != (probes.SLA{}) {
			w.Peers[i].SLA = &wireSLA{MaxLossPercent: p.SLA.MaxLossPercent, MaxRTTMS: p.SLA.MaxRTT.Milliseconds(),
				MaxJitterMS: p.SLA.MaxJitter.Milliseconds()}
		}
	}
	if n.Pair != nil {
		w.Pair = &wirePair{Priority: n.Pair.Priority, Drained: n.Pair.Drained}
	}
	if !n.Probes.IsZero() {
		w.Probes = &wireProbes{IntervalMS: n.Probes.Interval.Milliseconds()}
		for _, k := range n.Probes.Keys {
			raw := k.Raw()
			w.Probes.Keys = append(w.Probes.Keys, wireKey{ID: uint32(k.ID()), Secret: base64.StdEncoding.EncodeToString(raw[:])})
		}
	}
	b, _ := json.Marshal(w)
	return b
}

func refStrs[T fmt.Stringer](vs []T) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.String()
	}
	return out
}

func TestEncodingMatchesEncodingJSON(t *testing.T) {
	n := sample(t)
	n.RequestID = `odd "<id>" & \ é`
	n.Peers[1].Name = "tab\there"
	for _, m := range []*Netmap{n, {Version: 1, Tenant: "t", Appliance: "a", Name: "x"}} {
		got, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if want := reference(m); !bytes.Equal(got, want) {
			t.Errorf("encoding differs:\n got %s\nwant %s", got, want)
		}
		if len(got) != m.EncodedLen() {
			t.Errorf("EncodedLen = %d, encoding has %d bytes", m.EncodedLen(), len(got))
		}
	}
}

func TestShared(t *testing.T) {
	n := sample(t)
	self := Peer{Name: "hq-1", Site: "st_1", PublicKey: testKey(t, 1), OverlayAddr: n.OverlayAddr}
	var entries []*PeerEntry
	for _, p := range []Peer{n.Peers[0], self, n.Peers[1]} {
		entries = append(entries, NewPeerEntry(p))
	}
	table := NewTable(entries)
	head := *n
	head.Peers = nil
	// The tenant's SLA for every peer, an override for the pair with st_2
	// (br-1), and one with the appliance's own site, which it does not list.
	def := probes.SLA{MaxLossPercent: 1e-7, MaxRTT: time.Second}
	slas := NewPeerSLAs(def, map[string]probes.SLA{"st_2": n.Peers[0].SLA, "st_1": {MaxJitter: time.Millisecond}, "st_9": def})
	for _, keepalive := range []time.Duration{0, 25 * time.Second} {
		want := *n
		want.Peers = []Peer{n.Peers[0], n.Peers[1]}
		want.Peers[0].Keepalive, want.Peers[1].Keepalive = keepalive, keepalive
		want.Peers[1].SLA = def
		s := Shared(head, table, 1, keepalive, slas)
		if s.Peers != nil || s.NumPeers() != 2 || !s.SameContent(&want) || !want.SameContent(s) {
			t.Fatalf("keepalive %v: shared netmap %+v differs from %+v", keepalive, s.Full(), want)
		}
		if full := s.Full(); !full.SameContent(&want) || len(full.Peers) != 2 {
			t.Errorf("Full() = %+v", full)
		}
		enc, _ := json.Marshal(s)
		if ref := reference(&want); !bytes.Equal(enc, ref) {
			t.Errorf("shared encoding differs:\n got %s\nwant %s", enc, ref)
		}
		if len(enc) != s.EncodedLen() {
			t.Errorf("EncodedLen = %d, encoding has %d bytes", s.EncodedLen(), len(enc))
		}
		var buf bytes.Buffer
		if k, err := s.WriteJSON(&buf); err != nil || k != int64(len(enc)) || !bytes.Equal(buf.Bytes(), enc) {
			t.Errorf("WriteJSON wrote %d bytes (%v), differing from MarshalJSON", k, err)
		}
		if got, err := Decode(enc); err != nil || !got.SameContent(s) {
			t.Errorf("Decode(shared) = %v, %v", got, err)
		}
	}
	if all := Shared(head, table, -1, 0, nil); all.NumPeers() != 3 || all.PeerAt(1).Name != "hq-1" {
		t.Errorf("skip -1 should list every entry, got %d peers", all.NumPeers())
	}
	all := Shared(head, table, -1, 0, slas)
	if enc, _ := json.Marshal(all); len(enc) != all.EncodedLen() || !bytes.Equal(enc, reference(all)) {
		t.Errorf("skip -1 with SLAs: EncodedLen %d, encoding %s", all.EncodedLen(), enc)
	}
	if got := all.PeerAt(1).SLA; got != (probes.SLA{MaxJitter: time.Millisecond}) {
		t.Errorf("SLA toward its own site: %+v", got)
	}
	// Shared entries know nothing of SLAs: another site's netmap over the
	// same table gives br-1 the default.
	other := Shared(head, table, 2, 0, NewPeerSLAs(def, nil))
	if got := other.PeerAt(0).SLA; got != def {
		t.Errorf("SLA of br-1 at another site: %+v, want the default", got)
	}
	if !slas.Equal(NewPeerSLAs(def, map[string]probes.SLA{"st_2": n.Peers[0].SLA, "st_1": {MaxJitter: time.Millisecond}})) ||
		slas.Equal(NewPeerSLAs(def, nil)) || !(*PeerSLAs)(nil).Equal(NewPeerSLAs(probes.SLA{}, nil)) {
		t.Error("PeerSLAs.Equal")
	}
}

func TestWriteJSONLarge(t *testing.T) {
	var entries []*PeerEntry
	for i := range 2000 {
		var raw [32]byte
		raw[0], raw[1] = byte(i), byte(i>>8)
		k := testKeyRaw(t, raw)
		entries = append(entries, NewPeerEntry(Peer{
			Name: fmt.Sprintf("p-%05d", i), Site: "st_1", PublicKey: k,
			OverlayAddr: netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}),
		}))
	}
	m := Shared(Netmap{Version: 3, Tenant: "t", Appliance: "a", Name: "p-00007", OverlayAddr: netip.MustParseAddr("100.64.0.7")},
		NewTable(entries), 7, 0, nil)
	var buf bytes.Buffer
	if _, err := m.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != m.EncodedLen() || !bytes.Equal(buf.Bytes(), reference(m)) {
		t.Fatalf("WriteJSON: %d bytes, EncodedLen %d", buf.Len(), m.EncodedLen())
	}
	got, err := Decode(buf.Bytes())
	if err != nil || got.NumPeers() != 1999 || !got.SameContent(m) {
		t.Fatalf("Decode: %v", err)
	}
}

func testKeyRaw(t testing.TB, raw [32]byte) wgkey.PublicKey {
	t.Helper()
	k, err := wgkey.ParsePublic(b64(raw))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestDelta(t *testing.T) {
	base := sample(t)
	changed := base.Peers[1]
	changed.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("203.0.113.9:51820")}
	added := Peer{Name: "a-new", Site: "st_9", PublicKey: testKey(t, 9), OverlayAddr: netip.MustParseAddr("100.64.0.9")}
	d := &Delta{Version: 9, Base: base.Version, RequestID: "req-2", Tenant: base.Tenant, Appliance: base.Appliance,
		Site: base.Site, Name: base.Name, OverlayAddr: base.OverlayAddr, LANPrefixes: base.LANPrefixes,
		Probes: Probes{Keys: base.Probes.Keys[1:], Interval: time.Second}, Peers: []Peer{added, changed}, Removed: []string{"br-1"}}
	enc, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeDelta(enc)
	if err != nil {
		t.Fatalf("DecodeDelta(%s): %v", enc, err)
	}
	m, err := base.Apply(got)
	if err != nil {
		t.Fatal(err)
	}
	want := &Netmap{Version: 9, RequestID: "req-2", Tenant: base.Tenant, Appliance: base.Appliance, Site: base.Site,
		Name: base.Name, OverlayAddr: base.OverlayAddr, LANPrefixes: base.LANPrefixes, Probes: d.Probes, Peers: []Peer{added, changed}}
	if !m.SameContent(want) || m.Version != 9 || m.RequestID != "req-2" {
		t.Errorf("Apply = %+v\nwant %+v", m, want)
	}
	if base.NumPeers() != 2 || base.Peers[0].Name != "br-1" {
		t.Errorf("Apply changed its receiver: %+v", base.Peers)
	}
	if _, err := m.Apply(got); err == nil || !strings.Contains(err.Error(), "applies to version 7") {
		t.Errorf("applying to the wrong version: %v", err)
	}
	clash := *got
	clash.Removed = nil
	clash.Peers = []Peer{{Name: "zz", PublicKey: base.Peers[0].PublicKey, OverlayAddr: netip.MustParseAddr("100.64.0.99")}}
	if _, err := base.Apply(&clash); err == nil || !strings.Contains(err.Error(), "same key") {
		t.Errorf("duplicate key after applying: %v", err)
	}

	edit := func(from, to string) []byte {
		s := strings.Replace(string(enc), from, to, 1)
		if s == string(enc) {
			t.Fatalf("edit %q not found", from)
		}
		return []byte(s)
	}
	for _, c := range []struct {
		in   []byte
		want string
	}{
		{edit(`"base":7`, `"base":9`), "base: must be below the version"},
		{edit(`"base":7,`, ``), "base: must be 1 or more"},
		{edit(`"removed":["br-1"]`, `"removed":["home-1"]`), `removed[0]: "home-1" is also peers[1]`},
		{edit(`"removed":["br-1"]`, `"removed":[""]`), "removed[0]: required"},
		{edit(`"name":"a-new"`, `"name":"a-new","x":1`), "peers[0].x: unknown field"},
		{edit(`"100.64.0.9"`, `"10.0.0.9"`), "peers[0].overlay_addr: 10.0.0.9 is outside"},
		{edit(`"interval_ms":1000`, `"interval_ms":1000,"q":1`), "probes.q: unknown field"},
		{edit(`"keepalive_seconds":0`, `"keepalive_seconds":0,"sla":{"max_rtt_ms":1,"w":1}`), "peers[0].sla.w: unknown field"},
	} {
		_, err := DecodeDelta(c.in)
		var de *DecodeError
		if !errors.As(err, &de) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("DecodeDelta(%.70q...) = %v; want %q", c.in, err, c.want)
		}
	}
}

func FuzzDecodeDelta(f *testing.F) {
	n := sample(f)
	d := &Delta{Version: 9, Base: 7, Tenant: n.Tenant, Appliance: n.Appliance, Name: n.Name, OverlayAddr: n.OverlayAddr,
		LANPrefixes: n.LANPrefixes, Peers: n.Peers[:1], Removed: []string{"gone-1"}}
	good, _ := json.Marshal(d)
	f.Add(good)
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := DecodeDelta(data)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error is not a *DecodeError: %v", err)
			}
			return
		}
		// Whatever DecodeDelta accepts must survive a round trip unchanged.
		again, _ := json.Marshal(d)
		e, err := DecodeDelta(again)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", again, err)
		}
		if !e.head().SameContent(d.head()) || e.Version != d.Version || e.Base != d.Base || !slices.Equal(e.Removed, d.Removed) {
			t.Fatalf("round trip changed the delta: %+v vs %+v", d, e)
		}
	})
}
