package state_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/controller/store/storetest"
)

// syncedBuffer is a log sink tests can read while the state writes.
type syncedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncedBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncedBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestPairLimit(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := newState(t, dsn, nil)
		must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "acme"))
		must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "hq", Kind: store.SiteOffice, LANPrefixes: pfx("10.1.0.0/24")}))
		enroll(t, s, "acme", "hq", "hq-a")
		// A token made while there is room, used once there is none.
		_, spare := must2(t)(s.CreateEnrollmentToken(ctx, operator, "acme", state.EnrollmentTokenInput{Site: "hq"}))
		b := enroll(t, s, "acme", "hq", "hq-b")
		if b.Appliance.Priority != netmap.DefaultPriority {
			t.Errorf("priority of a new appliance: %d", b.Appliance.Priority)
		}
		_, _, err := s.CreateEnrollmentToken(ctx, operator, "acme", state.EnrollmentTokenInput{Site: "hq"})
		wantCode(t, err, state.CodeConflict, `site: site "hq" already has 2 live appliances, the most a site may have (a pair)`)
		_, err = s.Enroll(ctx, state.EnrollInput{Token: spare, PublicKey: key(t)})
		wantCode(t, err, state.CodeConflict, `token: site "hq" already has 2 live appliances`)
		// The refusal did not spend the token: with room again, it works.
		must[*state.ApplianceInfo](t)(s.RevokeAppliance(ctx, operator, "acme", "hq-a"))
		must[*state.Enrolled](t)(s.Enroll(ctx, state.EnrollInput{Token: spare, Name: "hq-c", PublicKey: key(t)}))
	})
}

func TestPairStatusAndNetmaps(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		c := &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
		logs := &syncedBuffer{}
		s, err := state.New(ctx, state.Options{Store: storetest.Open(t, dsn), PollInterval: 50 * time.Millisecond, TestOnlyNow: c.Now,
			Logger: slog.New(slog.NewJSONHandler(logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "acme"))
		must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "hq", Kind: store.SiteOffice, LANPrefixes: pfx("10.1.0.0/24")}))
		must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "br", Kind: store.SiteOffice, LANPrefixes: pfx("10.2.0.0/24")}))
		a := enroll(t, s, "acme", "hq", "hq-a")
		br := enroll(t, s, "acme", "br", "br-1")
		devA := must[*state.Device](t)(s.AuthenticateDevice(ctx, a.Credential))
		devBr := must[*state.Device](t)(s.AuthenticateDevice(ctx, br.Credential))
		netmapOf := func(d *state.Device) *netmap.Netmap {
			t.Helper()
			nm := must[*netmap.Netmap](t)(s.Sync(ctx, d, 0))
			// Every netmap is one its appliance accepts.
			enc, _ := json.Marshal(nm)
			if _, err := netmap.Decode(enc); err != nil {
				t.Fatalf("netmap of %s does not decode: %v\n%s", nm.Name, err, enc)
			}
			return nm
		}
		peer := func(nm *netmap.Netmap, name string) netmap.Peer {
			t.Helper()
			for _, p := range nm.Peers {
				if p.Name == name {
					return p
				}
			}
			t.Fatalf("%s has no peer %s", nm.Name, name)
			return netmap.Peer{}
		}
		// One appliance at hq: no pair anywhere.
		if nm := netmapOf(devA); nm.Pair != nil || peer(netmapOf(devBr), "hq-a").Pair != nil {
			t.Fatalf("pair fields for a site with one appliance: %+v", nm.Pair)
		}
		b := enroll(t, s, "acme", "hq", "hq-b")
		devB := must[*state.Device](t)(s.AuthenticateDevice(ctx, b.Credential))
		nmA, nmBr := netmapOf(devA), netmapOf(devBr)
		if nmA.Pair == nil || *nmA.Pair != (netmap.Pair{Priority: 100}) {
			t.Fatalf("own pair of hq-a: %+v", nmA.Pair)
		}
		if p := peer(nmA, "hq-b"); p.Pair == nil || len(p.Prefixes) != 1 {
			t.Fatalf("hq-a's partner: %+v", p)
		}
		for _, name := range []string{"hq-a", "hq-b"} {
			if pp := peer(nmBr, name).Pair; pp == nil || *pp != (netmap.PeerPair{Priority: 100}) {
				t.Fatalf("br-1 sees %s with pair %+v, want priority 100, no active", name, pp)
			}
		}

		// hq-a reports active: br-1 learns it, by a delta of the two
		// members.
		held := nmBr
		since := c.Now().Add(-time.Second)
		res := must[*state.PairReportResult](t)(s.ReportPair(ctx, devA, state.PairReportInput{Role: store.PairActive, Term: 1, Since: since, PartnerAlive: true}))
		if res.Active != "hq-a" || res.Term != 1 {
			t.Fatalf("report result %+v", res)
		}
		u := must[*state.Update](t)(s.SyncUpdate(ctx, devBr, held.Version, true))
		if u.Delta == nil || len(u.Delta.Peers) != 2 || u.Delta.Peers[0].Name != "hq-a" || !u.Delta.Peers[0].Pair.Active ||
			u.Delta.Peers[0].Pair.Term != 1 || u.Delta.Peers[1].Pair.Active {
			t.Fatalf("delta after the first report: %+v", u.Delta)
		}
		held = must[*netmap.Netmap](t)(held.Apply(u.Delta))
		// A standby report changes nothing peers see.
		must[*state.PairReportResult](t)(s.ReportPair(ctx, devB, state.PairReportInput{Role: store.PairStandby, Term: 1, Since: since, PartnerAlive: true}))
		if nm := netmapOf(devBr); nm.Version != held.Version {
			t.Errorf("a standby report re-versioned br-1's netmap: %d -> %d", held.Version, nm.Version)
		}

		// hq-b takes over with term 2: a failover, counted by its reason.
		c.Add(10 * time.Second)
		fo := &state.PairFailoverInput{At: c.Now().Add(-time.Second), From: "hq-a", To: "hq-b", Reason: "partner-down: no heartbeat for 900ms"}
		res = must[*state.PairReportResult](t)(s.ReportPair(ctx, devB, state.PairReportInput{Role: store.PairActive, Term: 2, Since: fo.At, LastFailover: fo}))
		if res.Active != "hq-b" || res.Term != 2 {
			t.Fatalf("after the failover: %+v", res)
		}
		nmBr = netmapOf(devBr)
		if pa, pb := peer(nmBr, "hq-a").Pair, peer(nmBr, "hq-b").Pair; pa.Active || !pb.Active || pb.Term != 2 || pa.Term != 2 {
			t.Fatalf("br-1 after the failover: %+v %+v", pa, pb)
		}
		// hq-a still says active with its old term: hq-b stays.
		res = must[*state.PairReportResult](t)(s.ReportPair(ctx, devA, state.PairReportInput{Role: store.PairActive, Term: 1, Since: since}))
		if res.Active != "hq-b" {
			t.Errorf("an older term took over: %+v", res)
		}
		v := must[*state.PairView](t)(s.PairStatus(ctx, operator, "acme", "hq"))
		if !v.Paired || len(v.Members) != 2 || v.ActiveName != "hq-b" || v.Status.Term != 2 || !v.Status.Since.Equal(fo.At) {
			t.Fatalf("pair status: %+v", v)
		}
		if lf := v.LastFailover; lf == nil || lf.FromName != "hq-a" || lf.ToName != "hq-b" || lf.Reason != fo.Reason || !lf.At.Equal(fo.At) {
			t.Fatalf("last failover: %+v", lf)
		}
		if len(v.Failovers) != 1 || v.Failovers[0].Term != 2 || v.Failovers[0].ToName != "hq-b" {
			t.Fatalf("failovers: %+v", v.Failovers)
		}
		if r := v.Members[0].Report; r == nil || v.Members[0].Name != "hq-a" || r.Role != store.PairActive || r.Term != 1 {
			t.Errorf("hq-a's report: %+v", r)
		}
		if n := s.PairFailoverCounts(); n["partner-down"] != 1 || n["other"] != 0 || len(n) != len(state.FailoverReasons) {
			t.Errorf("failover counts: %v", n)
		}
		if n := s.PairMemberCounts(); n["active"] != 1 || n["standby"] != 1 || n["unknown"] != 0 {
			t.Errorf("member counts: %v", n)
		}

		// hq-b falls silent; hq-a's fresh report wins over its stale one,
		// whatever the terms.
		c.Add(state.PairReportFresh + time.Second)
		res = must[*state.PairReportResult](t)(s.ReportPair(ctx, devA, state.PairReportInput{Role: store.PairActive, Term: 1, Since: c.Now()}))
		if res.Active != "hq-a" {
			t.Fatalf("a fresh report against a stale one: %+v", res)
		}
		v = must[*state.PairView](t)(s.PairStatus(ctx, operator, "acme", "hq"))
		if len(v.Failovers) != 2 || v.Failovers[0].ToName != "hq-a" || !strings.Contains(v.Failovers[0].Reason, "hq-a reported active with term 1") {
			t.Fatalf("failovers: %+v", v.Failovers)
		}
		if n := s.PairFailoverCounts(); n["other"] != 1 {
			t.Errorf("failover counts: %v", n)
		}

		// Bad reports name the field.
		_, err = s.ReportPair(ctx, devA, state.PairReportInput{Role: "boss", Term: -1, Since: c.Now().Add(time.Hour)})
		wantCode(t, err, state.CodeInvalid, "role: want active or standby")
		for _, want := range []string{"term: want 0 to", "since: 2030-01-01T01:"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%v lacks %q", err, want)
			}
		}
		_, err = s.ReportPair(ctx, devA, state.PairReportInput{Role: store.PairActive, Term: 3, Since: c.Now(),
			LastFailover: &state.PairFailoverInput{At: c.Now(), From: "br-1", To: "hq-a"}})
		wantCode(t, err, state.CodeInvalid, `last_failover.from: no appliance "br-1" at this appliance's site`)
		_, err = s.ReportPair(ctx, devA, state.PairReportInput{Role: store.PairActive, Term: 3, Since: c.Now(),
			LastFailover: &state.PairFailoverInput{At: c.Now(), To: "hq-a", Reason: "bad\nline"}})
		wantCode(t, err, state.CodeInvalid, "last_failover.reason: want at most 200 bytes of printable UTF-8")

		// Priority: in the own part and in every peer's view.
		prio := 150
		must[*state.ApplianceInfo](t)(s.UpdateAppliance(ctx, operator, "acme", "hq-a", state.ApplianceUpdate{Priority: &prio}))
		if nm := netmapOf(devA); nm.Pair.Priority != 150 || peer(netmapOf(devBr), "hq-a").Pair.Priority != 150 || peer(netmapOf(devB), "hq-a").Pair.Priority != 150 {
			t.Errorf("priority 150 not in the netmaps: %+v", nm.Pair)
		}
		prio = 300
		_, err = s.UpdateAppliance(ctx, operator, "acme", "hq-a", state.ApplianceUpdate{Priority: &prio})
		wantCode(t, err, state.CodeInvalid, "priority: want 0 to 255 (higher is preferred in the pair), got 300")

		// Drain and undrain: the member's own part, audited with the
		// request id.
		rctx := state.WithRequestID(ctx, "req-drain-1")
		info := must[*state.ApplianceInfo](t)(s.DrainAppliance(rctx, operator, "acme", "hq-b"))
		if info.DrainedAt.IsZero() {
			t.Errorf("drained appliance %+v", info.Appliance)
		}
		nmB := netmapOf(devB)
		if !nmB.Pair.Drained || nmB.RequestID != "req-drain-1" || netmapOf(devA).Pair.Drained {
			t.Errorf("after drain: hq-b %+v (request %q)", nmB.Pair, nmB.RequestID)
		}
		if !strings.Contains(logs.String(), `"msg":"appliance drained","audit":true`) || !strings.Contains(logs.String(), `"request_id":"req-drain-1"`) {
			t.Errorf("no audit line for the drain:\n%s", logs)
		}
		must[*state.ApplianceInfo](t)(s.DrainAppliance(ctx, operator, "acme", "hq-b"))
		if again := netmapOf(devB); again.Version != nmB.Version {
			t.Errorf("draining twice re-versioned the netmap")
		}
		must[*state.ApplianceInfo](t)(s.UndrainAppliance(state.WithRequestID(ctx, "req-undrain-1"), operator, "acme", "hq-b"))
		if netmapOf(devB).Pair.Drained || !strings.Contains(logs.String(), `"msg":"appliance undrained","audit":true`) {
			t.Errorf("undrain")
		}

		// Revoking a member ends the pair: no pair fields anywhere.
		must[*state.ApplianceInfo](t)(s.RevokeAppliance(ctx, operator, "acme", "hq-b"))
		if nm := netmapOf(devA); nm.Pair != nil || peer(netmapOf(devBr), "hq-a").Pair != nil {
			t.Errorf("pair fields after the revocation: %+v", nm.Pair)
		}
		if v := must[*state.PairView](t)(s.PairStatus(ctx, operator, "acme", "hq")); v.Paired || len(v.Members) != 1 {
			t.Errorf("pair status after the revocation: %+v", v)
		}
		_, err = s.DrainAppliance(ctx, operator, "acme", "hq-b")
		wantCode(t, err, state.CodeConflict, `appliance "hq-b" is revoked`)
		// A failover away from the revoked member still names it.
		res = must[*state.PairReportResult](t)(s.ReportPair(ctx, devA, state.PairReportInput{Role: store.PairActive, Term: 5, Since: c.Now(),
			LastFailover: &state.PairFailoverInput{At: c.Now(), From: "hq-b", To: "hq-a", Reason: "partner-down"}}))
		if res.Active != "hq-a" || res.Term != 5 {
			t.Errorf("report after the revocation: %+v", res)
		}

		// Failovers are kept 30 days.
		c.Add(state.FailoverRetention + time.Hour)
		if err := s.MaintainPairs(context.Background()); err != nil {
			t.Fatal(err)
		}
		if v := must[*state.PairView](t)(s.PairStatus(ctx, operator, "acme", "hq")); len(v.Failovers) != 0 || v.LastFailover == nil {
			t.Errorf("after the retention: %d failovers (the status keeps the last: %v)", len(v.Failovers), v.LastFailover)
		}
	})
}

// TestPairAcrossReplicas: a report made through one replica reaches a sync
// waiting on another within a second, with the new active member.
func TestPairAcrossReplicas(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		r1, r2 := newState(t, dsn, nil), newState(t, dsn, nil)
		must[*store.Tenant](t)(r1.CreateTenant(ctx, operator, "acme"))
		must[*store.Site](t)(r1.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "hq", Kind: store.SiteOffice, LANPrefixes: pfx("10.1.0.0/24")}))
		must[*store.Site](t)(r1.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "br", Kind: store.SiteOffice, LANPrefixes: pfx("10.2.0.0/24")}))
		enroll(t, r1, "acme", "hq", "hq-a")
		b := enroll(t, r1, "acme", "hq", "hq-b")
		br := enroll(t, r1, "acme", "br", "br-1")
		devB := must[*state.Device](t)(r1.AuthenticateDevice(ctx, b.Credential))
		devBr := must[*state.Device](t)(r2.AuthenticateDevice(ctx, br.Credential))
		held := must[*netmap.Netmap](t)(r2.Sync(ctx, devBr, 0))
		got := make(chan *netmap.Netmap, 1)
		go func() {
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			m, err := r2.Sync(wctx, devBr, held.Version)
			if err != nil {
				t.Error(err)
			}
			got <- m
		}()
		waitFor(t, func() bool { return r2.Hub().IsConnected(devBr.ApplianceID) })
		start := time.Now()
		must[*state.PairReportResult](t)(r1.ReportPair(ctx, devB, state.PairReportInput{Role: store.PairActive, Term: 3, Since: time.Now()}))
		m := <-got
		if lag := time.Since(start); lag > time.Second {
			t.Errorf("the report took %s to reach the other replica", lag)
		}
		if m == nil {
			t.FailNow()
		}
		for _, p := range m.Peers {
			if want := p.Name == "hq-b"; p.Pair == nil || p.Pair.Active != want || p.Pair.Term != 3 {
				t.Errorf("br-1 on r2 sees %s with %+v", p.Name, p.Pair)
			}
		}
		if v := must[*state.PairView](t)(r2.PairStatus(ctx, operator, "acme", "hq")); v.ActiveName != "hq-b" {
			t.Errorf("pair status on r2: %+v", v)
		}
		if n := r2.PairMemberCounts(); n["active"] != 1 || n["standby"] != 1 {
			t.Errorf("member counts on r2: %v", n)
		}
	})
}
