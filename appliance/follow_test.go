package appliance

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/dataplane"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

func pubKey(t *testing.T) wgkey.PublicKey {
	t.Helper()
	k, err := wgkey.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

// pairConfig is a remote appliance's config with the two members of pair
// st_hq (hq-a, the controller's choice, and hq-b) and a peer of its own.
func pairConfig(t *testing.T) *Config {
	lan := []netip.Prefix{netip.MustParsePrefix("10.50.0.0/24")}
	return &Config{Name: "remote-1", Peers: []PeerConfig{
		{Name: "hq-a", PublicKey: pubKey(t), OverlayAddr: netip.MustParseAddr("100.64.30.2"), Prefixes: lan,
			Pair: &PairMember{Site: "st_hq", Priority: 100, Active: true, Term: 1}},
		{Name: "hq-b", PublicKey: pubKey(t), OverlayAddr: netip.MustParseAddr("100.64.30.3"), Prefixes: lan,
			Pair: &PairMember{Site: "st_hq", Priority: 100, Term: 1}},
		{Name: "vpc-1", PublicKey: pubKey(t), OverlayAddr: netip.MustParseAddr("100.64.30.4"),
			Prefixes: []netip.Prefix{netip.MustParsePrefix("10.60.0.0/24")}},
	}}
}

func TestPairConfigFile(t *testing.T) {
	base := func() *Config {
		cfg := pairConfig(t)
		cfg.StateDir, cfg.OverlayAddr, cfg.ListenPort = t.TempDir(), netip.MustParseAddr("100.64.30.1"), DefaultListenPort
		cfg.Pair = &PairSelf{Priority: 120, Drained: true}
		return cfg
	}
	cfg := base()
	b, err := cfg.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseConfig(b)
	if err != nil {
		t.Fatalf("a pair's two members with one prefix: %v\n%s", err, b)
	}
	if *got.Pair != *cfg.Pair || *got.Peers[1].Pair != *cfg.Peers[1].Pair || !got.Peers[0].Pair.Active {
		t.Errorf("round trip: %+v %+v", got.Pair, got.Peers[1].Pair)
	}
	for _, c := range []struct {
		mod  func(c *Config)
		want string
	}{
		// Without the pair marks the two are unrelated peers, and overlap.
		{func(c *Config) { c.Peers[0].Pair, c.Peers[1].Pair = nil, nil }, "peers[1].prefixes[0]: 10.50.0.0/24 overlaps 10.50.0.0/24 (peers[0].prefixes[0])"},
		{func(c *Config) { c.Peers[2].Prefixes = []netip.Prefix{netip.MustParsePrefix("10.50.0.128/25")} },
			"peers[2].prefixes[0]: 10.50.0.128/25 overlaps 10.50.0.0/24 (peers[0].prefixes[0])"},
		{func(c *Config) { c.LANPrefixes = []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16")} },
			"peers[0].prefixes[0]: 10.50.0.0/24 overlaps 10.50.0.0/16 (lan_prefixes[0])"},
		{func(c *Config) { c.Peers[1].Pair.Active = true }, "peers[1].pair.active: pair st_hq has two active members (also peers[0])"},
		{func(c *Config) { c.Peers[1].Prefixes = []netip.Prefix{netip.MustParsePrefix("10.52.0.0/24")} },
			"peers[1].prefixes: the two members of pair st_hq must announce the same prefixes"},
		{func(c *Config) {
			c.Peers[2].Prefixes, c.Peers[2].Pair = c.Peers[0].Prefixes, &PairMember{Site: "st_hq"}
		},
			"peers[2].pair: pair st_hq has more than two members (also peers[0] and peers[1])"},
		{func(c *Config) { c.Peers[1].Pair.Priority = 300 }, "peers[1].pair.priority: want 0 to 255"},
		{func(c *Config) { c.Peers[1].Pair.Site = "" }, "peers[1].pair.site: want the pair's site id"},
		{func(c *Config) { c.Pair.Priority = -1 }, "pair.priority: want 0 to 255"},
	} {
		cfg := base()
		c.mod(cfg)
		b, _ := cfg.MarshalJSON()
		if _, err := ParseConfig(b); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseConfig: %v\nwant %q", err, c.want)
		}
	}
}

func TestConfigFromPairNetmap(t *testing.T) {
	lan := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}
	lan5 := []netip.Prefix{netip.MustParsePrefix("10.5.0.0/24")}
	nm := &netmap.Netmap{Version: 3, Tenant: "tn_1", Appliance: "ap_a", Site: "st_1", Name: "hq-a",
		OverlayAddr: netip.MustParseAddr("100.64.0.1"), LANPrefixes: lan, Pair: &netmap.Pair{Priority: 150, Drained: true},
		Peers: []netmap.Peer{
			{Name: "hq-b", Site: "st_1", PublicKey: pubKey(t), OverlayAddr: netip.MustParseAddr("100.64.0.2"), Prefixes: lan,
				Pair: &netmap.PeerPair{Priority: 100, Active: true, Term: 4}},
			{Name: "vpc-a", Site: "st_5", PublicKey: pubKey(t), OverlayAddr: netip.MustParseAddr("100.64.0.5"), Prefixes: lan5,
				Pair: &netmap.PeerPair{Priority: 100, Term: 2}},
			{Name: "vpc-b", Site: "st_5", PublicKey: pubKey(t), OverlayAddr: netip.MustParseAddr("100.64.0.6"), Prefixes: lan5,
				Pair: &netmap.PeerPair{Priority: 100, Active: true, Term: 2}},
		}}
	cfg, err := ConfigFromNetmap(Local{StateDir: t.TempDir()}, nm)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Pair == nil || *cfg.Pair != (PairSelf{Priority: 150, Drained: true, Site: "st_1"}) {
		t.Errorf("own pair: %+v", cfg.Pair)
	}
	// The partner's prefixes are this site's LAN: not routed to it.
	if p := cfg.Peers[0]; len(p.Prefixes) != 0 || p.Pair == nil || p.Pair.Site != "st_1" {
		t.Errorf("the partner: %+v", p)
	}
	if p := cfg.Peers[2]; !slices.Equal(p.Prefixes, lan5) || *p.Pair != (PairMember{Site: "st_5", Priority: 100, Active: true, Term: 2}) {
		t.Errorf("a remote member: %+v %+v", p, p.Pair)
	}
	sites := pairSitesOf(cfg)
	if len(sites) != 1 || sites[0].site != "st_5" || sites[0].members[sites[0].pref].Name != "vpc-b" {
		t.Fatalf("pairs to follow: %+v", sites)
	}
}

func TestPairPreference(t *testing.T) {
	cfg := pairConfig(t)
	pref := func() string { ps := pairSitesOf(cfg)[0]; return ps.members[ps.pref].Name }
	if got := pref(); got != "hq-a" {
		t.Errorf("active hq-a: prefer %s", got)
	}
	cfg.Peers[0].Pair.Active, cfg.Peers[1].Pair.Active = false, true
	if got := pref(); got != "hq-b" {
		t.Errorf("active hq-b: prefer %s", got)
	}
	// No active member reported: priority, then name.
	cfg.Peers[1].Pair.Active = false
	if got := pref(); got != "hq-a" {
		t.Errorf("no active, same priority: prefer %s", got)
	}
	cfg.Peers[1].Pair.Priority = 200
	if got := pref(); got != "hq-b" {
		t.Errorf("no active, hq-b 200: prefer %s", got)
	}
}

// fakePair is the follower's world: the prober's verdicts and what the
// follower set.
type fakePair struct {
	health  map[wgkey.PublicKey]memberHealth
	sets    [][]dataplane.Peer
	rekeyed []wgkey.PublicKey
}

func newFakeFollower(t *testing.T) (*follower, *fakePair) {
	fp := &fakePair{health: map[wgkey.PublicKey]memberHealth{}}
	f := newFollower(slog.New(slog.DiscardHandler))
	f.set = func(ps []dataplane.Peer) error { fp.sets = append(fp.sets, ps); return nil }
	f.rehandshake = func(k wgkey.PublicKey) error { fp.rekeyed = append(fp.rekeyed, k); return nil }
	f.health = func() map[wgkey.PublicKey]memberHealth { return fp.health }
	return f, fp
}

// holder is the member whose AllowedIPs carry 10.50.0.0/24 in the last
// set, and checks that exactly one does.
func (fp *fakePair) holder(t *testing.T, cfg *Config) string {
	t.Helper()
	last := fp.sets[len(fp.sets)-1]
	var names []string
	for i, p := range last {
		if slices.Contains(p.AllowedIPs, netip.MustParsePrefix("10.50.0.0/24")) {
			names = append(names, cfg.Peers[i].Name)
		}
		if p.AllowedIPs[0] != netip.PrefixFrom(cfg.Peers[i].OverlayAddr, 32) {
			t.Fatalf("%s lost its overlay address: %v", cfg.Peers[i].Name, p.AllowedIPs)
		}
	}
	if len(names) != 1 {
		t.Fatalf("10.50.0.0/24 on %v, want exactly one member", names)
	}
	return names[0]
}

func TestFollowerChoice(t *testing.T) {
	cfg := pairConfig(t)
	a, b := cfg.Peers[0].PublicKey, cfg.Peers[1].PublicKey
	f, fp := newFakeFollower(t)
	up := memberHealth{probed: true, up: true}
	down := memberHealth{probed: true, down: true}
	unknown := memberHealth{probed: true}
	step := func(what string, ha, hb memberHealth, want string) {
		t.Helper()
		fp.health[a], fp.health[b] = ha, hb
		f.poke()
		if got := fp.holder(t, cfg); got != want {
			t.Fatalf("%s: prefixes on %s, want %s", what, got, want)
		}
	}
	if err := f.apply(cfg); err != nil {
		t.Fatal(err)
	}
	if got := fp.holder(t, cfg); got != "hq-a" {
		t.Fatalf("initial: %s", got)
	}
	step("both unknown", unknown, unknown, "hq-a")
	step("hq-b up first", unknown, up, "hq-a") // not a reason to move
	step("both up", up, up, "hq-a")
	sets := len(fp.sets)
	step("hq-a down", down, up, "hq-b")
	if len(fp.sets) != sets+1 {
		t.Errorf("%d sets for one move", len(fp.sets)-sets)
	}
	step("hq-a still down", down, up, "hq-b")
	step("both down", down, down, "hq-b") // nobody better: keep
	step("hq-a back, unknown", unknown, down, "hq-b")
	if len(fp.rekeyed) != 0 {
		t.Errorf("rehandshake before any came back: %v", fp.rekeyed)
	}
	step("hq-a up again", up, down, "hq-a")
	if len(fp.rekeyed) != 1 || fp.rekeyed[0] != a {
		t.Errorf("hq-a came back from down: rehandshakes %v", fp.rekeyed)
	}
	step("hq-b down, hq-a up", up, down, "hq-a")
	step("hq-b up again", up, up, "hq-a")
	if len(fp.rekeyed) != 2 || fp.rekeyed[1] != b {
		t.Errorf("hq-b came back from down: rehandshakes %v", fp.rekeyed)
	}
	// The controller moves the active role to hq-b: it follows at once.
	cfg2 := pairConfig(t)
	for i := range cfg2.Peers {
		cfg2.Peers[i].PublicKey, cfg2.Peers[i].OverlayAddr = cfg.Peers[i].PublicKey, cfg.Peers[i].OverlayAddr
	}
	cfg2.Peers[0].Pair.Active, cfg2.Peers[1].Pair.Active = false, true
	if err := f.apply(cfg2); err != nil {
		t.Fatal(err)
	}
	cfg = cfg2
	if got := fp.holder(t, cfg); got != "hq-b" {
		t.Fatalf("controller moved to hq-b: %s", got)
	}
	// Probing off: the controller's choice, whatever happened.
	fp.health = map[wgkey.PublicKey]memberHealth{}
	f.poke()
	if got := fp.holder(t, cfg); got != "hq-b" {
		t.Fatalf("unprobed: %s", got)
	}
	_, counts := f.status()
	if counts[followDown] != 1 || counts[followRecovered] != 1 || counts[followController] != 1 || counts[followUnprobed] != 0 {
		t.Errorf("switch counts %v", counts)
	}
	// The unrelated peer keeps its prefix throughout.
	last := fp.sets[len(fp.sets)-1]
	if !slices.Contains(last[2].AllowedIPs, netip.MustParsePrefix("10.60.0.0/24")) {
		t.Errorf("vpc-1: %v", last[2].AllowedIPs)
	}
}

// TestClientReportPair reports both members of a pair to a real
// controller and reads back what it derived.
func TestClientReportPair(t *testing.T) {
	e := startController(t)
	e.ctl(t, "tenant", "create", "acme")
	e.ctl(t, "site", "create", "acme", "hq", "--kind", "office", "--prefix", "10.10.0.0/24")
	ctx := context.Background()
	clients := map[string]*Client{}
	for _, name := range []string{"hq-a", "hq-b"} {
		c, _ := NewClient(ClientOptions{Controller: e.srv.URL(), CAFingerprint: e.srv.CAFingerprint()})
		k, _ := wgkey.NewPrivate()
		enr, nm, err := c.Enroll(ctx, EnrollRequest{Token: e.token(t, "acme", "hq"), Name: name, PublicKey: k.Public()})
		if err != nil {
			t.Fatal(err)
		}
		if name == "hq-b" && (nm.Pair == nil || len(nm.Peers) != 1 || nm.Peers[0].Pair == nil) {
			t.Fatalf("the second member's netmap has no pair: %+v", nm)
		}
		clients[name], _ = NewClient(ClientOptions{Controller: e.srv.URL(), CAFingerprint: e.srv.CAFingerprint(), Credential: enr.Credential})
	}
	now := time.Now().UTC()
	res, err := clients["hq-a"].ReportPair(ctx, PairReport{Role: "active", Term: 1, Since: now.Add(-time.Minute), PartnerAlive: true})
	if err != nil || res.Active != "hq-a" || res.Term != 1 {
		t.Fatalf("first report: %+v, %v", res, err)
	}
	res, err = clients["hq-b"].ReportPair(ctx, PairReport{Role: "active", Term: 2, Since: now,
		LastFailover: &PairFailover{At: now, From: "hq-a", To: "hq-b", Reason: "partner-down: no heartbeat"}})
	if err != nil || res.Active != "hq-b" || res.Term != 2 {
		t.Fatalf("failover report: %+v, %v", res, err)
	}
	_, err = clients["hq-b"].ReportPair(ctx, PairReport{Role: "leader", Since: now})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 422 || !ae.Permanent() {
		t.Errorf("a bad report: %v", err)
	}
	if out := e.ctl(t, "pair", "status", "acme", "hq"); !strings.Contains(out, "active hq-b") || !strings.Contains(out, "hq-a -> hq-b (partner-down: no heartbeat)") {
		t.Errorf("pair status:\n%s", out)
	}
}
