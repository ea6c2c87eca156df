package state_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/controller/store/storetest"
)

// TestSyncDelta follows one appliance through enrollments, an update and a
// revocation with deltas, and checks that applying each delta gives the
// full netmap.
func TestSyncDelta(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := newState(t, dsn, nil)
		must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "acme"))
		must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "hq", Kind: store.SiteOffice, LANPrefixes: pfx("10.1.0.0/24")}))
		must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "br", Kind: store.SiteOffice, LANPrefixes: pfx("10.2.0.0/24")}))
		hq := enroll(t, s, "acme", "hq", "hq-1")
		enroll(t, s, "acme", "br", "br-1")
		d := must[*state.Device](t)(s.AuthenticateDevice(ctx, hq.Credential))
		held := must[*netmap.Netmap](t)(s.Sync(ctx, d, 0))

		// step syncs with a delta, applies it, and checks the result.
		step := func(what string, wantDelta bool) {
			t.Helper()
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			u, err := s.SyncUpdate(wctx, d, held.Version, true)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			full := u.Netmap.Full()
			if (u.Delta != nil) != wantDelta {
				t.Fatalf("%s: delta %v, want %v", what, u.Delta != nil, wantDelta)
			}
			if u.Delta == nil {
				held = full
				return
			}
			dd, err := netmap.DecodeDelta(u.Delta.AppendJSON(nil))
			if err != nil {
				t.Fatalf("%s: the delta does not decode: %v", what, err)
			}
			got, err := held.Apply(dd)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if !got.SameContent(full) || got.Version != full.Version || got.RequestID != full.RequestID {
				t.Fatalf("%s: delta gives\n%+v\nwant\n%+v", what, got, full)
			}
			held = got
		}

		// A site holds at most two appliances: the others get sites of
		// their own.
		sites := 2
		newSite := func() string {
			t.Helper()
			sites++
			name := fmt.Sprintf("s%d", sites)
			must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: name, Kind: store.SiteOffice,
				LANPrefixes: pfx(fmt.Sprintf("10.%d.0.0/24", sites))}))
			return name
		}
		enroll(t, s, "acme", "br", "br-2")
		step("enrollment", true)
		enroll(t, s, "acme", newSite(), "br-3")
		eps := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.9:51820")}
		must[*state.ApplianceInfo](t)(s.UpdateAppliance(ctx, operator, "acme", "br-2", state.ApplianceUpdate{Endpoints: &eps}))
		step("enrollment and update", true)
		must[*state.ApplianceInfo](t)(s.RevokeAppliance(ctx, operator, "acme", "br-1"))
		step("revocation", true)
		// A change to its own site changes the appliance's own part: full.
		moved := pfx("10.1.1.0/24")
		must[*store.Site](t)(s.UpdateSite(ctx, operator, "acme", "hq", state.SiteUpdate{LANPrefixes: &moved}))
		step("own site", false)
		// Most peers changed: a delta would not be much smaller. (Two
		// per site: ten pairs.)
		for i := range 20 {
			site := fmt.Sprintf("s%d", sites)
			if i%2 == 0 {
				site = newSite()
			}
			enroll(t, s, "acme", site, fmt.Sprintf("br-1%d", i))
		}
		step("20 enrollments", false)
		must[store.SLA](t)(s.SetSLA(ctx, operator, "acme", store.SLA{MaxLossPercent: 1, MaxRTTMillis: 90, MaxJitterMillis: 9}))
		step("every peer", false)

		// Without asking, or from version 0, the answer is the full netmap.
		enroll(t, s, "acme", newSite(), "br-4")
		if u := must[*state.Update](t)(s.SyncUpdate(ctx, d, held.Version, false)); u.Delta != nil {
			t.Errorf("a delta without asking")
		}
		if u := must[*state.Update](t)(s.SyncUpdate(ctx, d, 0, true)); u.Delta != nil || u.Netmap.NumPeers() != 23 {
			t.Errorf("since 0: delta %v, %d peers", u.Delta != nil, u.Netmap.NumPeers())
		}
		step("enrollment", true)
	})
}
