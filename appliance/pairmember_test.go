package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/appliance/pair"
	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/probes"
)

// memberConfig is a pair member's config file: office-1a of the lab, its
// partner office-1b a peer of its own site.
func memberConfig(pairFields string) string {
	return `{
  "name": "office-1a", "state_dir": "/var/lib/causeway", "overlay_addr": "100.64.0.1",
  "lan_prefixes": ["10.10.0.0/24"],
  "uplinks": [{"name": "wan1", "interface": "wan1"}],
  "gateway": {"lan_interface": "lan0"},
  "probe_key": {"id": 7, "secret": "` + probeSecret1 + `"},
  "probe_accepted_keys": [{"id": 8, "secret": "` + probeSecret2 + `"}],
  "pair": {"priority": 200, "site": "st_1"` + pairFields + `},
  "peers": [
    {"name": "office-1b", "public_key": "` + keyA + `", "overlay_addr": "100.64.0.2",
     "endpoints": ["198.18.4.2:51820", "198.18.1.2:51821"], "pair": {"site": "st_1", "priority": 100, "term": 3}},
    {"name": "vpc-1", "public_key": "` + keyB + `", "overlay_addr": "100.64.0.3",
     "endpoints": ["198.18.2.2:51820"], "prefixes": ["10.20.0.0/24"]}
  ]
}`
}

const memberFields = `, "preempt": true, "lan_interface": "lan0", "lan_addr": "10.10.0.2", "partner_lan_addr": "10.10.0.3",
    "vip": "10.10.0.1/24", "wan_addr": "198.18.1.2", "partner_wan_addr": "198.18.4.2", "borrowed_uplink": "wan2"`

func TestPairMemberConfig(t *testing.T) {
	c, err := ParseConfig([]byte(memberConfig(memberFields)))
	if err != nil {
		t.Fatal(err)
	}
	want := PairLocal{Preempt: true, LANInterface: "lan0", LANAddr: netip.MustParseAddr("10.10.0.2"),
		PartnerLANAddr: netip.MustParseAddr("10.10.0.3"), VIP: netip.MustParsePrefix("10.10.0.1/24"),
		WANInterface: "wan1", WANAddr: netip.MustParseAddr("198.18.1.2"), PartnerWANAddr: netip.MustParseAddr("198.18.4.2"),
		BorrowedUplink: "wan2", LendPort: DefaultLendPort}
	if c.Pair == nil || c.Pair.Priority != 200 || c.Pair.Site != "st_1" || c.Pair.Member == nil || *c.Pair.Member != want {
		t.Fatalf("pair: %+v %+v", c.Pair, c.Pair.Member)
	}
	ups := c.bindUplinks()
	if len(ups) != 2 || ups[1] != (Uplink{Name: "wan2", Interface: "lan0", Addr: want.LANAddr}) || len(c.Uplinks) != 1 {
		t.Errorf("bind uplinks %+v (configured %+v)", ups, c.Uplinks)
	}
	// The file form reads back the same.
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ParseConfig(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if *c2.Pair.Member != want || c2.Pair.Priority != 200 || c2.Pair.Site != "st_1" {
		t.Errorf("round trip: %+v", c2.Pair)
	}
	// The pair's place without member settings stays as it was.
	c3, err := ParseConfig([]byte(memberConfig("")))
	if err != nil || c3.Pair == nil || c3.Pair.Member != nil || len(c3.bindUplinks()) != 1 {
		t.Errorf("without member settings: %+v %v", c3.Pair, err)
	}
}

func TestPairMemberConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		field, mod string
	}{
		{"pair.lan_interface", `"lan_interface": "wan1"`},
		{"pair.lan_addr", `"lan_addr": "10.10.0"`},
		{"pair.lan_addr", `"lan_addr": "10.11.0.2"`},
		{"pair.partner_lan_addr", `"partner_lan_addr": "10.10.0.2"`},
		{"pair.vip", `"vip": "10.10.0.1"`},
		{"pair.vip", `"vip": "10.10.0.2/24"`},
		{"pair.partner_lan_addr", `"partner_lan_addr": "10.10.1.3"`},
		{"pair.wan_interface", `"wan_interface": "wan9"`},
		{"pair.wan_addr", `"wan_addr": "fd00::1"`},
		{"pair.partner_wan_addr", `"partner_wan_addr": "198.18.1.2"`},
		{"pair.borrowed_uplink", `"borrowed_uplink": "wan1"`},
		{"pair.borrowed_uplink", `"borrowed_uplink": "WAN 2"`},
		{"pair.lend_port", `"lend_port": 51820`},
		{"pair.lend_port", `"lend_port": 70000`},
	} {
		// Replace the field in the valid settings.
		key := tc.mod[:strings.Index(tc.mod, ":")]
		fields := memberFields
		if i := strings.Index(fields, key); i >= 0 {
			end := i + strings.IndexAny(fields[i:], ",\n")
			if end < i {
				end = len(fields)
			}
			fields = fields[:i] + tc.mod + fields[end:]
		} else {
			fields += ", " + tc.mod
		}
		_, err := ParseConfig([]byte(memberConfig(fields)))
		if err == nil || !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("%s: want an error naming %s, got %v", tc.mod, tc.field, err)
		}
	}
	// A member is its LAN's gateway and needs the probe keys.
	noGateway := strings.Replace(memberConfig(memberFields), `"gateway": {"lan_interface": "lan0"},`, "", 1)
	if _, err := ParseConfig([]byte(noGateway)); err == nil || !strings.Contains(err.Error(), "pair: a pair member is its LAN's gateway") {
		t.Errorf("without a gateway: %v", err)
	}
	noKey := strings.Replace(memberConfig(memberFields), `"probe_key": {"id": 7, "secret": "`+probeSecret1+`"},
  "probe_accepted_keys": [{"id": 8, "secret": "`+probeSecret2+`"}],`, "", 1)
	if _, err := ParseConfig([]byte(noKey)); err == nil || !strings.Contains(err.Error(), "pair: needs probe_key") {
		t.Errorf("without probe keys: %v", err)
	}
}

// TestPairMemberFromNetmap: the lab's local settings and a netmap make the
// member's config; the netmap's priority and drain win over the local
// default once the site has its pair.
func TestPairMemberFromNetmap(t *testing.T) {
	key, err := probes.ParseKey(1, probeSecret1)
	if err != nil {
		t.Fatal(err)
	}
	pm := &PairLocal{LANInterface: "lan0", LANAddr: netip.MustParseAddr("10.10.0.2"), PartnerLANAddr: netip.MustParseAddr("10.10.0.3"),
		VIP: netip.MustParsePrefix("10.10.0.1/24"), WANInterface: "wan1", WANAddr: netip.MustParseAddr("198.18.1.2"),
		PartnerWANAddr: netip.MustParseAddr("198.18.4.2"), BorrowedUplink: "wan2", LendPort: DefaultLendPort}
	local := Local{StateDir: t.TempDir(), Uplinks: []Uplink{{Name: "wan1", Interface: "wan1"}},
		Gateway: &GatewayConfig{LANInterface: "lan0"}, Pair: pm, PairPriority: 180}
	lan := []netip.Prefix{netip.MustParsePrefix("10.10.0.0/24")}
	nm := &netmap.Netmap{Version: 3, Tenant: "tn_1", Appliance: "ap_1", Site: "st_1", Name: "office-1a",
		OverlayAddr: netip.MustParseAddr("100.64.0.1"), LANPrefixes: lan,
		Probes: netmap.Probes{Keys: []probes.Key{key}, Interval: 200 * time.Millisecond}}
	c, err := ConfigFromNetmap(local, nm)
	if err != nil {
		t.Fatal(err)
	}
	if c.Pair == nil || c.Pair.Priority != 180 || c.Pair.Drained || c.Pair.Member == nil || *c.Pair.Member != *pm || c.pairChoice() != "" {
		t.Errorf("alone at the site: %+v", c.Pair)
	}
	nm.Pair = &netmap.Pair{Priority: 200, Drained: true}
	nm.Peers = []netmap.Peer{{Name: "office-1b", Site: "st_1", PublicKey: pubKey(t), OverlayAddr: netip.MustParseAddr("100.64.0.2"),
		Prefixes: lan, Pair: &netmap.PeerPair{Priority: 100, Active: true, Term: 2}}}
	if c, err = ConfigFromNetmap(local, nm); err != nil {
		t.Fatal(err)
	}
	if c.Pair.Priority != 200 || !c.Pair.Drained || c.pairChoice() != "office-1b" {
		t.Errorf("paired: %+v, the controller's choice %q", c.Pair, c.pairChoice())
	}
	if p, ok := c.partnerPeer(); !ok || p.Name != "office-1b" || len(p.Prefixes) != 0 {
		t.Errorf("partner %+v %v", p, ok)
	}
}

func TestPairChoice(t *testing.T) {
	for _, tc := range []struct {
		name          string
		self, other   int
		active        bool
		term          uint64
		partner, want string
	}{
		{"partner active", 200, 100, true, 4, "b", "b"},
		{"a term and the partner not active: this member", 100, 200, false, 4, "b", "a"},
		{"no report yet: priority", 100, 200, false, 0, "b", "b"},
		{"no report yet: priority (self)", 200, 100, false, 0, "b", "a"},
		{"no report, equal priority: the lower name", 100, 100, false, 0, "0", "0"},
	} {
		c := &Config{Name: "a", Pair: &PairSelf{Priority: tc.self, Site: "st_1"},
			Peers: []PeerConfig{{Name: tc.partner, Pair: &PairMember{Site: "st_1", Priority: tc.other, Active: tc.active, Term: tc.term}}}}
		if got := c.pairChoice(); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestPairKeys(t *testing.T) {
	k1, _ := probes.ParseKey(1, probeSecret1)
	k2, _ := probes.ParseKey(2, probeSecret2)
	a, b := pairKey(k1), pairKey(k2)
	raw := k1.Raw()
	if len(a) != 32 || string(a) == string(b) || string(a) == string(raw[:]) {
		t.Fatalf("pair keys %x %x", a, b)
	}
	key, accepted := pairKeys(&Config{ProbeKey: k2, ProbeAccepted: []probes.Key{k1}})
	if string(key) != string(b) || len(accepted) != 1 || string(accepted[0]) != string(a) {
		t.Errorf("pairKeys: %x %x", key, accepted)
	}
}

func TestPairReportOf(t *testing.T) {
	at := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		s      pair.State
		role   string
		reason string
	}{
		{pair.State{Role: pair.RoleActive, Term: 4, Since: at,
			LastFailover: &pair.Failover{At: at, From: "a", To: "b", Reason: pair.ReasonPartnerDead}}, "active", "partner-down: no heartbeat from a"},
		{pair.State{Role: pair.RoleActive, LastFailover: &pair.Failover{At: at, From: "a", To: "b", Reason: pair.ReasonPartnerDrained}}, "active", "drain:"},
		{pair.State{Role: pair.RoleActive, LastFailover: &pair.Failover{At: at, From: "b", To: "a", Reason: pair.ReasonPreempt}}, "active", "preempt:"},
		{pair.State{Role: pair.RoleActive, LastFailover: &pair.Failover{At: at, From: "a", To: "b", Reason: pair.ReasonPartnerLeft}}, "active", "manual: a stopped"},
		{pair.State{Role: pair.RoleActive, LastFailover: &pair.Failover{At: at, To: "a", Reason: pair.ReasonStartup}}, "active", "startup"},
		{pair.State{Role: pair.RoleStandby, LastFailover: &pair.Failover{At: at, From: "a", To: "", Reason: pair.ReasonStop}}, "standby", ""},
		{pair.State{Role: pair.RoleStopped}, "standby", ""},
	} {
		r := reportOf(tc.s)
		got := ""
		if r.LastFailover != nil {
			got = r.LastFailover.Reason
		}
		if r.Role != tc.role || !strings.HasPrefix(got, tc.reason) || (tc.reason == "") != (r.LastFailover == nil) {
			t.Errorf("%+v: report %+v, reason %q; want %s, %q", tc.s, r, got, tc.role, tc.reason)
		}
	}
}

// TestPairReporter: a report on every change and again after a failure,
// none while nothing changes.
func TestPairReporter(t *testing.T) {
	var mu sync.Mutex
	state := pair.State{Role: pair.RoleStandby, Term: 1, Since: time.Now()}
	var sent []PairReport
	fail := true
	src := func() (pair.State, bool) {
		mu.Lock()
		defer mu.Unlock()
		return state, true
	}
	send := func(_ context.Context, r PairReport) (PairReportResult, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			fail = false
			return PairReportResult{}, errors.New("controller away")
		}
		sent = append(sent, r)
		return PairReportResult{Active: "x", Term: int64(r.Term)}, nil
	}
	p := newPairReporter(src, send, slog.New(slog.DiscardHandler))
	p.start()
	defer p.close()
	waitSent := func(n int) []PairReport {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			got := append([]PairReport(nil), sent...)
			mu.Unlock()
			if len(got) >= n {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d reports, want %d", len(got), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	got := waitSent(1) // after the failure, retried
	if got[0].Role != "standby" || got[0].Term != 1 {
		t.Errorf("first report %+v", got[0])
	}
	mu.Lock()
	state = pair.State{Role: pair.RoleActive, Term: 2, Since: time.Now(),
		LastFailover: &pair.Failover{At: time.Now(), From: "b", To: "a", Reason: pair.ReasonPartnerDead}}
	mu.Unlock()
	start := time.Now()
	p.poke()
	got = waitSent(2)
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("the change was reported %v after the poke", d)
	}
	if got[1].Role != "active" || got[1].Term != 2 || got[1].LastFailover == nil || got[1].LastFailover.To != "a" {
		t.Errorf("second report %+v", got[1])
	}
	time.Sleep(1500 * time.Millisecond)
	if n := len(waitSent(2)); n != 2 {
		t.Errorf("%d reports without a change", n)
	}
}
