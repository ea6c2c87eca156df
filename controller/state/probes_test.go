package state_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/controller/store/storetest"
	"github.com/causeway-net/causeway/probes"
)

// threeSites makes tenant name with sites hq, br and c (one appliance
// each: hq-1, br-1, c-1) and returns the appliances' enrollments by name.
func threeSites(t *testing.T, s *state.State, name string, base byte) map[string]*state.Enrolled {
	t.Helper()
	must[*store.Tenant](t)(s.CreateTenant(ctx, operator, name))
	out := map[string]*state.Enrolled{}
	for i, site := range []string{"hq", "br", "c"} {
		must[*store.Site](t)(s.CreateSite(ctx, operator, name, state.SiteInput{Name: site, Kind: store.SiteOffice,
			LANPrefixes: pfx(netipPrefix(base, byte(i)))}))
		out[site+"-1"] = enroll(t, s, name, site, site+"-1")
	}
	return out
}

func netipPrefix(a, b byte) string { return fmt.Sprintf("10.%d.%d.0/24", a, b) }

func netmapOf(t *testing.T, s *state.State, tenant, app string) *netmap.Netmap {
	t.Helper()
	return must[*netmap.Netmap](t)(s.ApplianceNetmap(ctx, operator, tenant, app))
}

func peerNamed(t *testing.T, m *netmap.Netmap, name string) netmap.Peer {
	t.Helper()
	for _, p := range m.Peers {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("netmap of %s has no peer %s", m.Name, name)
	return netmap.Peer{}
}

func keyIDs(m *netmap.Netmap) []probes.KeyID {
	var ids []probes.KeyID
	for _, k := range m.Probes.Keys {
		ids = append(ids, k.ID())
	}
	return ids
}

// TestProbeKeysInNetmaps: every netmap of a tenant carries the tenant's
// key; another tenant's key differs.
func TestProbeKeysInNetmaps(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := newState(t, dsn, nil)
		threeSites(t, s, "acme", 1)
		threeSites(t, s, "globex", 1)
		secrets := map[string][probes.KeyLen]byte{}
		for _, tenant := range []string{"acme", "globex"} {
			for _, app := range []string{"hq-1", "br-1", "c-1"} {
				m := netmapOf(t, s, tenant, app)
				if len(m.Probes.Keys) != 1 || m.Probes.Interval != state.DefaultProbeInterval {
					t.Fatalf("%s/%s: probes %+v", tenant, app, m.Probes)
				}
				raw := m.Probes.Keys[0].Raw()
				if prev, ok := secrets[tenant]; ok && prev != raw {
					t.Errorf("%s/%s has another key than the rest of its tenant", tenant, app)
				}
				secrets[tenant] = raw
				// The netmap decodes as an appliance gets it.
				enc, _ := m.MarshalJSON()
				if got, err := netmap.Decode(enc); err != nil || !got.SameContent(m) {
					t.Fatalf("%s/%s: Decode: %v", tenant, app, err)
				}
			}
		}
		if secrets["acme"] == secrets["globex"] {
			t.Error("two tenants share a probe key")
		}
	})
}

// TestExistingTenantGetsProbeKey: a tenant stored without a probe key (made
// before keys existed) gets one when the controller starts.
func TestExistingTenantGetsProbeKey(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		st := storetest.Open(t, dsn)
		if _, err := store.Write(ctx, st, func(tx *store.Tx) (struct{}, error) {
			return struct{}{}, tx.InsertTenant(ctx, &store.Tenant{ID: "tn_old", Name: "old", CreatedAt: time.Now(), SLA: state.DefaultSLA})
		}); err != nil {
			t.Fatal(err)
		}
		s := newState(t, dsn, nil)
		ks := must[[]state.ProbeKeyInfo](t)(s.ProbeKeys(ctx, operator, "old"))
		if len(ks) != 1 || ks[0].Role != store.ProbeKeyCurrent {
			t.Fatalf("keys of the old tenant: %+v", ks)
		}
		// A second replica starting makes no second key.
		newState(t, dsn, nil)
		if ks := must[[]state.ProbeKeyInfo](t)(s.ProbeKeys(ctx, operator, "old")); len(ks) != 1 {
			t.Errorf("after a second start: %+v", ks)
		}
	})
}

// TestProbeKeyRotation walks two full rotations. After every step, an
// appliance that has the new netmap and one that still has the previous
// one accept each other's probes, in both directions.
func TestProbeKeyRotation(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		c := &clock{t: time.Now().UTC()}
		s := newState(t, dsn, c)
		threeSites(t, s, "acme", 1)
		held := netmapOf(t, s, "acme", "hq-1")
		check := func(step string, wantIDs ...probes.KeyID) {
			t.Helper()
			m := netmapOf(t, s, "acme", "hq-1")
			if got := keyIDs(m); !equalIDs(got, wantIDs) {
				t.Fatalf("%s: keys %v, want %v", step, got, wantIDs)
			}
			// Every netmap of the tenant has the same keys.
			if o := netmapOf(t, s, "acme", "c-1"); !o.Probes.Equal(&m.Probes) {
				t.Fatalf("%s: c-1 has keys %v", step, keyIDs(o))
			}
			mutualProbes(t, step, held, m)
			held = m
		}
		rotate := func() []state.ProbeKeyInfo {
			t.Helper()
			return must[[]state.ProbeKeyInfo](t)(s.RotateProbeKey(ctx, operator, "acme"))
		}
		check("start", 1)
		ks := rotate()
		if len(ks) != 2 || ks[1].Role != store.ProbeKeyNext || !ks[1].CurrentFrom.Equal(ks[1].CreatedAt.Add(state.DefaultProbeKeyGrace)) {
			t.Fatalf("after the first step: %+v", ks)
		}
		check("new key spreads as next", 1, 2)
		_, err := s.RotateProbeKey(ctx, operator, "acme")
		wantCode(t, err, state.CodeConflict, "can become current from")
		c.Add(state.DefaultProbeKeyGrace)
		rotate()
		check("next key becomes current", 2, 1)
		rotate()
		check("second rotation starts", 2, 3, 1)
		c.Add(state.DefaultProbeKeyGrace)
		rotate()
		check("second rotation ends", 3, 2)
		// Another tenant's keys are untouched.
		must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "globex"))
		if ks := must[[]state.ProbeKeyInfo](t)(s.ProbeKeys(ctx, operator, "globex")); len(ks) != 1 || ks[0].ID != 1 {
			t.Errorf("globex keys: %+v", ks)
		}
	})
}

func equalIDs(a, b []probes.KeyID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// mutualProbes checks that an appliance configured from netmap a and one
// configured from netmap b answer each other's requests and accept the
// replies.
func mutualProbes(t *testing.T, step string, a, b *netmap.Netmap) {
	t.Helper()
	ring := func(m *netmap.Netmap) *probes.Keyring {
		r, err := probes.NewKeyring(m.Probes.Keys[0], m.Probes.Keys[1:]...)
		if err != nil {
			t.Fatalf("%s: keyring: %v", step, err)
		}
		return r
	}
	ra, rb := ring(a), ring(b)
	for _, dir := range []struct {
		name     string
		from, to *probes.Keyring
	}{{"old to new", ra, rb}, {"new to old", rb, ra}} {
		req, err := probes.Marshal(nil, probes.Packet{Kind: probes.KindRequest, Path: 1, Seq: 1, Timestamp: 7}, dir.from)
		if err != nil {
			t.Fatal(err)
		}
		reply, _, err := probes.NewReflector(dir.to).Handle(req)
		if err != nil || reply == nil {
			t.Fatalf("%s: %s: request refused: %v", step, dir.name, err)
		}
		if _, err := probes.Parse(reply, dir.from); err != nil {
			t.Fatalf("%s: %s: reply refused: %v", step, dir.name, err)
		}
	}
}

// TestSLAs: each peer carries the tenant's SLA unless its pair of sites
// has an override, which changes the netmaps of those two sites only.
func TestSLAs(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := newState(t, dsn, nil)
		threeSites(t, s, "acme", 1)
		def := probes.SLA{MaxLossPercent: 2, MaxRTT: 150 * time.Millisecond, MaxJitter: 30 * time.Millisecond}
		for _, app := range []string{"hq-1", "br-1", "c-1"} {
			for _, p := range netmapOf(t, s, "acme", app).Peers {
				if p.SLA != def {
					t.Fatalf("%s sees %s with SLA %+v, want the default %+v", app, p.Name, p.SLA, def)
				}
			}
		}
		cBefore := netmapOf(t, s, "acme", "c-1").Version

		over := store.SLA{MaxLossPercent: 0.5, MaxRTTMillis: 40, MaxJitterMillis: 5}
		o := must[*state.SLAOverride](t)(s.PutSLAOverride(ctx, operator, "acme", "hq", "br", over))
		if o.SiteAName == "" || o.SiteBName == "" || o.SiteA > o.SiteB {
			t.Errorf("override = %+v", o)
		}
		want := probes.SLA{MaxLossPercent: 0.5, MaxRTT: 40 * time.Millisecond, MaxJitter: 5 * time.Millisecond}
		if got := peerNamed(t, netmapOf(t, s, "acme", "hq-1"), "br-1").SLA; got != want {
			t.Errorf("hq-1 sees br-1 with %+v, want the override", got)
		}
		if got := peerNamed(t, netmapOf(t, s, "acme", "br-1"), "hq-1").SLA; got != want {
			t.Errorf("br-1 sees hq-1 with %+v, want the override (symmetric)", got)
		}
		if got := peerNamed(t, netmapOf(t, s, "acme", "hq-1"), "c-1").SLA; got != def {
			t.Errorf("hq-1 sees c-1 with %+v, want the default", got)
		}
		cm := netmapOf(t, s, "acme", "c-1")
		if cm.Version != cBefore || peerNamed(t, cm, "hq-1").SLA != def || peerNamed(t, cm, "br-1").SLA != def {
			t.Errorf("c-1's netmap changed: version %d -> %d, %+v", cBefore, cm.Version, cm.Peers)
		}
		// Given the other way round, it is the same pair.
		over.MaxRTTMillis = 60
		must[*state.SLAOverride](t)(s.PutSLAOverride(ctx, operator, "acme", "br", "hq", over))
		if os := must[[]*state.SLAOverride](t)(s.ListSLAOverrides(ctx, operator, "acme")); len(os) != 1 || os[0].SLA.MaxRTTMillis != 60 {
			t.Errorf("overrides = %+v", os)
		}

		// The tenant's SLA changes the rest.
		must[store.SLA](t)(s.SetSLA(ctx, operator, "acme", store.SLA{MaxLossPercent: 5, MaxRTTMillis: 300}))
		if got := peerNamed(t, netmapOf(t, s, "acme", "c-1"), "hq-1").SLA; got != (probes.SLA{MaxLossPercent: 5, MaxRTT: 300 * time.Millisecond}) {
			t.Errorf("after the tenant's change c-1 sees hq-1 with %+v", got)
		}
		if got := peerNamed(t, netmapOf(t, s, "acme", "hq-1"), "br-1").SLA; got.MaxRTT != 60*time.Millisecond {
			t.Errorf("the override should still hold: %+v", got)
		}
		// Removing the override gives the pair the tenant's SLA again.
		if err := s.DeleteSLAOverride(ctx, operator, "acme", "hq", "br"); err != nil {
			t.Fatal(err)
		}
		if got := peerNamed(t, netmapOf(t, s, "acme", "hq-1"), "br-1").SLA; got.MaxLossPercent != 5 {
			t.Errorf("after delete hq-1 sees br-1 with %+v", got)
		}
		wantCode(t, s.DeleteSLAOverride(ctx, operator, "acme", "hq", "br"), state.CodeNotFound, "no SLA override")

		// Validation names the field.
		_, err := s.SetSLA(ctx, operator, "acme", store.SLA{MaxLossPercent: 101, MaxRTTMillis: -1})
		wantCode(t, err, state.CodeInvalid, "max_loss_percent: want 0 to 100")
		wantCode(t, err, state.CodeInvalid, "max_rtt_ms: want 0 to 60000")
		_, err = s.PutSLAOverride(ctx, operator, "acme", "hq", "br", store.SLA{MaxJitterMillis: 70000})
		wantCode(t, err, state.CodeInvalid, "max_jitter_ms")
		_, err = s.PutSLAOverride(ctx, operator, "acme", "hq", "hq", over)
		wantCode(t, err, state.CodeInvalid, "site_b: a site pair needs two different sites")
		_, err = s.PutSLAOverride(ctx, operator, "acme", "hq", "nowhere", over)
		wantCode(t, err, state.CodeNotFound, "nowhere")
	})
}

// TestSLAAndKeyDeltas: an override and a key rotation reach an appliance
// as deltas that give the full netmap.
func TestSLAAndKeyDeltas(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		c := &clock{t: time.Now().UTC()}
		s := newState(t, dsn, c)
		apps := threeSites(t, s, "acme", 1)
		for _, name := range []string{"hq-1", "c-1"} {
			d := must[*state.Device](t)(s.AuthenticateDevice(ctx, apps[name].Credential))
			held := must[*netmap.Netmap](t)(s.Sync(ctx, d, 0))
			for i, change := range []func(){
				func() {
					must[*state.SLAOverride](t)(s.PutSLAOverride(ctx, operator, "acme", "hq", "br",
						store.SLA{MaxLossPercent: 1 + float64(len(name)), MaxRTTMillis: 10}))
				},
				func() {
					c.Add(state.DefaultProbeKeyGrace)
					must[[]state.ProbeKeyInfo](t)(s.RotateProbeKey(ctx, operator, "acme"))
				},
				func() {
					must[store.SLA](t)(s.SetSLA(ctx, operator, "acme", store.SLA{MaxLossPercent: float64(len(name))}))
				},
			} {
				change()
				full := must[*netmap.Netmap](t)(s.ApplianceNetmap(ctx, operator, "acme", name))
				if full.Version == held.Version {
					if name == "c-1" && i == 0 {
						continue // an override of hq/br does not concern c-1
					}
					t.Fatalf("%s: change %d did not reach the netmap", name, i)
				}
				u := must[*state.Update](t)(s.SyncUpdate(ctx, d, held.Version, true))
				if u.Delta == nil {
					t.Fatalf("%s: change %d: no delta", name, i)
				}
				dd, err := netmap.DecodeDelta(u.Delta.AppendJSON(nil))
				if err != nil {
					t.Fatalf("%s: change %d: %v", name, i, err)
				}
				got, err := held.Apply(dd)
				if err != nil {
					t.Fatal(err)
				}
				if !got.SameContent(full) || got.Version != full.Version {
					t.Fatalf("%s: change %d: delta gives\n%+v\nwant\n%+v", name, i, got, full)
				}
				held = got
			}
		}
	})
}

// TestSLAAndKeyReachLongPoller: an SLA override and a key rotation made
// through one replica reach an appliance long-polling another within a
// second.
func TestSLAAndKeyReachLongPoller(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		r1 := newState(t, dsn, nil)
		r2 := newState(t, dsn, nil)
		apps := threeSites(t, r1, "acme", 1)
		d := must[*state.Device](t)(r2.AuthenticateDevice(ctx, apps["hq-1"].Credential))
		for i, change := range []func(){
			func() {
				must[*state.SLAOverride](t)(r1.PutSLAOverride(ctx, operator, "acme", "hq", "br", store.SLA{MaxRTTMillis: 42}))
			},
			func() { must[[]state.ProbeKeyInfo](t)(r1.RotateProbeKey(ctx, operator, "acme")) },
		} {
			// r2 has caught up with r1 (it may lag by a poll).
			waitFor(t, func() bool {
				m2 := r2.Hub().Current(d.ApplianceID)
				return m2 != nil && m2.Version == r1.Hub().Current(d.ApplianceID).Version
			})
			cur := r2.Hub().Current(d.ApplianceID).Version
			got := make(chan *netmap.Netmap, 1)
			go func() {
				wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				m, err := r2.Sync(wctx, d, cur)
				if err != nil {
					t.Error(err)
				}
				got <- m
			}()
			waitFor(t, func() bool { return r2.Hub().IsConnected(d.ApplianceID) })
			start := time.Now()
			change()
			m := <-got
			if lag := time.Since(start); lag > time.Second {
				t.Errorf("change %d took %s to reach the long-poller", i, lag)
			}
			if m == nil {
				t.FailNow()
			}
			switch i {
			case 0:
				if got := peerNamed(t, m, "br-1").SLA; got.MaxRTT != 42*time.Millisecond {
					t.Errorf("override not in the netmap: %+v", got)
				}
			case 1:
				if ids := keyIDs(m); !equalIDs(ids, []probes.KeyID{1, 2}) {
					t.Errorf("keys after rotating: %v", ids)
				}
			}
		}
	})
}
