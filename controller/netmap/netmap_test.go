package netmap

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/dataplane/wgkey"
	"github.com/causeway-net/causeway/probes"
)

func testKey(t testing.TB, b byte) wgkey.PublicKey {
	var raw [32]byte
	raw[0] = b
	k, err := wgkey.ParsePublic(strings.Repeat("A", 0) + b64(raw))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func b64(raw [32]byte) string {
	k, _ := json.Marshal(raw[:])
	return strings.Trim(string(k), `"`)
}

// testProbeKey is a probe key whose secret is 32 times the byte b.
func testProbeKey(t testing.TB, id probes.KeyID, b byte) probes.Key {
	k, err := probes.NewKey(id, bytes.Repeat([]byte{b}, probes.KeyLen))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func sample(t testing.TB) *Netmap {
	return &Netmap{
		Version: 7, RequestID: "req-1", Tenant: "tn_1", Appliance: "ap_1", Site: "st_1", Name: "hq-1",
		OverlayAddr: netip.MustParseAddr("100.64.0.1"),
		LANPrefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")},
		Probes:      Probes{Keys: []probes.Key{testProbeKey(t, 4, 0x41), testProbeKey(t, 5, 0x42)}, Interval: 200 * time.Millisecond},
		Peers: []Peer{{
			Name: "br-1", Site: "st_2", PublicKey: testKey(t, 2), OverlayAddr: netip.MustParseAddr("100.64.0.2"),
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:51820")},
			Prefixes:  []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24"), netip.MustParsePrefix("fd00:2::/64")},
			Keepalive: 25 * time.Second,
			SLA:       probes.SLA{MaxLossPercent: 2.5, MaxRTT: 150 * time.Millisecond, MaxJitter: 30 * time.Millisecond},
		}, {
			Name: "home-1", Site: "st_3", PublicKey: testKey(t, 3), OverlayAddr: netip.MustParseAddr("100.64.0.3"),
		}},
	}
}

func TestRoundTrip(t *testing.T) {
	n := sample(t)
	data, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(data)
	if err != nil {
		t.Fatalf("Decode(%s): %v", data, err)
	}
	if !got.SameContent(n) || got.Version != n.Version || got.RequestID != n.RequestID {
		t.Errorf("round trip changed the netmap:\n got %+v\nwant %+v", got, n)
	}
	if !strings.Contains(string(data), `"endpoints":[]`) {
		t.Errorf("empty lists should encode as []: %s", data)
	}
	if a := got.Peers[0].AllowedPrefixes(); len(a) != 3 || a[0] != netip.MustParsePrefix("100.64.0.2/32") {
		t.Errorf("AllowedPrefixes = %v", a)
	}
}

func TestDecodeErrors(t *testing.T) {
	good, _ := json.Marshal(sample(t))
	edit := func(from, to string) string {
		s := strings.Replace(string(good), from, to, 1)
		if s == string(good) {
			t.Fatalf("edit %q not found", from)
		}
		return s
	}
	cases := []struct{ in, want string }{
		{``, "empty document"},
		{`{"version":1`, "truncated"},
		{`[]`, "want a JSON object"},
		{string(good) + `{}`, "unexpected data after the JSON value"},
		{edit(`"version":7`, `"version":0`), "version: must be 1 or more"},
		{edit(`"version":7`, `"version":"7"`), "version: want a number"},
		{edit(`"name":"hq-1"`, `"name":"hq-1","color":"red"`), "color: unknown field"},
		{edit(`"100.64.0.1"`, `"10.0.0.1"`), "overlay_addr: 10.0.0.1 is outside the overlay range"},
		{edit(`"10.1.0.0/24"`, `"10.1.0.1/24"`), "lan_prefixes[0]: 10.1.0.1/24 has host bits set"},
		{edit(`"198.18.0.2:51820"`, `"198.18.0.2"`), "peers[0].endpoints[0]: want IP:port"},
		{edit(`"fd00:2::/64"`, `"0.0.0.0/0"`), "peers[0].prefixes[1]: a default route"},
		{edit(`"keepalive_seconds":25`, `"keepalive_seconds":70000`), "peers[0].keepalive_seconds: want 0 to 65535"},
		{edit(`"keepalive_seconds":25`, `"keepalive_seconds":"25s"`), "peers[0].keepalive_seconds: want a number"},
		{edit(`"100.64.0.3"`, `"100.64.0.2"`), "peers[1].overlay_addr: 100.64.0.2 is already used by peers[0]"},
		{edit(`"name":"home-1"`, `"name":""`), "peers[1].name: required"},
		{edit(`"peers":[`, `"peers":[{"publickey":"x"},`), "peers[0].publickey: unknown field"},
		{edit(`"interval_ms":200`, `"interval_ms":5`), "probes.interval_ms: want 10 to 60000, got 5"},
		{edit(`"interval_ms":200`, `"interval_ms":"200"`), "probes.interval_ms: want a number"},
		{edit(`"interval_ms":200`, `"interval_ms":200,"x":1`), "probes.x: unknown field"},
		{edit(`"keys":[`, `"keys":[{"id":1,"secret":"AAAA","y":2},`), "probes.keys[0].y: unknown field"},
		{edit(`"keys":[`, `"keys":[{"id":1,"secret":"AAAA"},`), "probes.keys[0].secret: not a probe key: want 44 base64 characters, got 4"},
		{edit(`"keys":[`, `"keys":[{"id":-1,"secret":"AAAA"},`), "probes.keys[0].id: want a number"},
		{edit(`"id":5`, `"id":4`), "probes.keys[1].id: key id 4 is also probes.keys[0]"},
		{edit(`"keys":[`, `"keys":[],"k":[`), "k: unknown field"},
		{edit(`"keys":[`, `"keys":[{"id":7,"secret":"`+b64([32]byte{7})+`"},{"id":8,"secret":"`+b64([32]byte{8})+`"},`), "probes.keys: want 1 to 3 keys"},
		{edit(`"max_loss_percent":2.5`, `"max_loss_percent":101`), "peers[0].sla.max_loss_percent: want 0 to 100, got 101"},
		{edit(`"max_rtt_ms":150`, `"max_rtt_ms":-1`), "peers[0].sla.max_rtt_ms: want 0 to 60000, got -1"},
		{edit(`"max_jitter_ms":30`, `"max_jitter_ms":60001`), "peers[0].sla.max_jitter_ms: want 0 to 60000, got 60001"},
		{edit(`"max_jitter_ms":30`, `"max_jitter_ms":30,"z":0`), "peers[0].sla.z: unknown field"},
		{edit(`"max_rtt_ms":150`, `"max_rtt_ms":"150ms"`), "peers[0].sla.max_rtt_ms: want a number"},
	}
	for _, c := range cases {
		_, err := Decode([]byte(c.in))
		var de *DecodeError
		if !errors.As(err, &de) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Decode(%.60q...) = %v; want a DecodeError containing %q", c.in, err, c.want)
		}
	}
	k := b64([32]byte{2})
	dup := edit(`"`+testKey(t, 3).String()+`"`, `"`+k+`"`)
	if _, err := Decode([]byte(dup)); err == nil || !strings.Contains(err.Error(), "peers[1].public_key: same key as peers[0]") {
		t.Errorf("duplicate key: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	good, _ := json.Marshal(sample(f))
	f.Add(good)
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := Decode(data)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error is not a *DecodeError: %v", err)
			}
			return
		}
		// Whatever Decode accepts must survive a round trip unchanged.
		again, err := json.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		m, err := Decode(again)
		if err != nil {
			t.Fatalf("re-decoding %s: %v", again, err)
		}
		if !m.SameContent(n) || m.Version != n.Version || m.RequestID != n.RequestID {
			t.Fatalf("round trip changed the netmap: %+v vs %+v", n, m)
		}
	})
}
