package store_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/controller/store/storetest"
)

// newestMigration is the version of the newest migration file.
func newestMigration(t *testing.T) int64 {
	t.Helper()
	ents, err := os.ReadDir("migrations")
	if err != nil {
		t.Fatal(err)
	}
	var newest int64
	for _, e := range ents {
		num, _, _ := strings.Cut(e.Name(), "_")
		v, err := strconv.ParseInt(num, 10, 64)
		if err != nil {
			t.Fatalf("migration %s: no version number", e.Name())
		}
		newest = max(newest, v)
	}
	return newest
}

func TestPairStore(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		mustWrite(t, s, func(tx *store.Tx) error {
			for _, tn := range []string{"tn_1", "tn_2"} {
				if err := tx.InsertTenant(ctx, &store.Tenant{ID: tn, Name: "t" + tn, CreatedAt: t0}); err != nil {
					return err
				}
			}
			if err := tx.InsertSite(ctx, &store.Site{ID: "st_1", TenantID: "tn_1", Name: "hq", Kind: store.SiteOffice, CreatedAt: t0}); err != nil {
				return err
			}
			for i, id := range []string{"ap_a", "ap_b"} {
				a := &store.Appliance{ID: id, TenantID: "tn_1", SiteID: "st_1", Name: "hq-" + id, PublicKey: newKey(t),
					OverlayAddr: netip.AddrFrom4([4]byte{100, 64, 0, byte(i + 1)}), State: store.ApplianceActive,
					CredentialHash: "h" + id, CreatedAt: t0, Priority: 100 + i}
				if err := tx.InsertAppliance(ctx, a); err != nil {
					return err
				}
			}
			return nil
		})
		app := func(id string) *store.Appliance {
			return read(t, s, func(tx *store.Tx) (*store.Appliance, error) { return tx.ApplianceByID(ctx, "tn_1", id) })
		}
		if a := app("ap_b"); a.Priority != 101 || !a.DrainedAt.IsZero() {
			t.Fatalf("appliance as inserted: priority %d, drained %v", a.Priority, a.DrainedAt)
		}
		mustWrite(t, s, func(tx *store.Tx) error {
			if err := tx.UpdateAppliancePriority(ctx, "tn_1", "ap_a", 200); err != nil {
				return err
			}
			return tx.SetApplianceDrained(ctx, "tn_1", "ap_b", t0.Add(time.Minute))
		})
		if a, b := app("ap_a"), app("ap_b"); a.Priority != 200 || !b.DrainedAt.Equal(t0.Add(time.Minute)) {
			t.Fatalf("after priority and drain: %d, %v", a.Priority, b.DrainedAt)
		}
		mustWrite(t, s, func(tx *store.Tx) error { return tx.SetApplianceDrained(ctx, "tn_1", "ap_b", time.Time{}) })
		if b := app("ap_b"); !b.DrainedAt.IsZero() {
			t.Fatalf("undrained: %v", b.DrainedAt)
		}
		// Scoped by tenant.
		if err := write(t, s, func(tx *store.Tx) error { return tx.UpdateAppliancePriority(ctx, "tn_2", "ap_a", 1) }); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("priority of another tenant's appliance: %v", err)
		}
		if err := write(t, s, func(tx *store.Tx) error { return tx.SetApplianceDrained(ctx, "tn_2", "ap_a", t0) }); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("draining another tenant's appliance: %v", err)
		}

		// Reports: the latest per appliance.
		fo := store.Failover{At: t0.Add(2 * time.Second), From: "ap_a", To: "ap_b", Reason: "partner-down: no heartbeat for 900ms"}
		for _, r := range []*store.PairReport{
			{ApplianceID: "ap_a", TenantID: "tn_1", SiteID: "st_1", Role: store.PairActive, Term: 1, Since: t0, PartnerAlive: true, ReportedAt: t0},
			{ApplianceID: "ap_b", TenantID: "tn_1", SiteID: "st_1", Role: store.PairStandby, Term: 1, Since: t0, PartnerAlive: true, ReportedAt: t0},
			{ApplianceID: "ap_b", TenantID: "tn_1", SiteID: "st_1", Role: store.PairActive, Term: 2, Since: fo.At, LastFailover: fo, ReportedAt: fo.At},
		} {
			mustWrite(t, s, func(tx *store.Tx) error { return tx.PutPairReport(ctx, r) })
		}
		reps := read(t, s, func(tx *store.Tx) ([]*store.PairReport, error) { return tx.ListPairReports(ctx, "tn_1", "st_1") })
		if len(reps) != 2 || reps[0].Role != store.PairActive || !reps[0].PartnerAlive || reps[0].LastFailover != (store.Failover{}) {
			t.Fatalf("reports: %+v", reps)
		}
		if b := reps[1]; b.Role != store.PairActive || b.Term != 2 || b.PartnerAlive || b.LastFailover != fo || !b.Since.Equal(fo.At) {
			t.Fatalf("replaced report: %+v", b)
		}
		if n := len(read(t, s, func(tx *store.Tx) ([]*store.PairReport, error) { return tx.ListPairReports(ctx, "tn_2", "st_1") })); n != 0 {
			t.Errorf("another tenant lists %d reports", n)
		}

		// Status: one per site.
		_, err := store.Read(ctx, s, func(tx *store.Tx) (*store.PairStatus, error) { return tx.PairStatusOf(ctx, "tn_1", "st_1") })
		if !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("status before any: %v", err)
		}
		st := &store.PairStatus{SiteID: "st_1", TenantID: "tn_1", ActiveID: "ap_a", Term: 1, Since: t0, UpdatedAt: t0}
		mustWrite(t, s, func(tx *store.Tx) error { return tx.PutPairStatus(ctx, st) })
		st.ActiveID, st.Term, st.Since, st.LastFailover, st.UpdatedAt = "ap_b", 2, fo.At, fo, fo.At
		mustWrite(t, s, func(tx *store.Tx) error { return tx.PutPairStatus(ctx, st) })
		got := read(t, s, func(tx *store.Tx) (*store.PairStatus, error) { return tx.PairStatusOf(ctx, "tn_1", "st_1") })
		if fmt.Sprint(got) != fmt.Sprint(st) {
			t.Fatalf("status = %+v, want %+v", got, st)
		}
		if l := read(t, s, func(tx *store.Tx) ([]*store.PairStatus, error) { return tx.ListPairStatus(ctx, "tn_1") }); len(l) != 1 {
			t.Errorf("ListPairStatus: %d", len(l))
		}
		if _, err := store.Read(ctx, s, func(tx *store.Tx) (*store.PairStatus, error) { return tx.PairStatusOf(ctx, "tn_2", "st_1") }); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("status of another tenant's site: %v", err)
		}

		// Failovers: one per term, newest first, pruned by age.
		for i := range 5 {
			f := &store.PairFailover{SiteID: "st_1", TenantID: "tn_1", Term: int64(i + 2),
				Failover: store.Failover{At: t0.Add(time.Duration(i) * time.Hour), From: "ap_a", To: "ap_b", Reason: fmt.Sprint("r", i)}}
			var added bool
			if err := write(t, s, func(tx *store.Tx) (err error) { added, err = tx.InsertPairFailover(ctx, f); return }); err != nil || !added {
				t.Fatalf("failover %d: %v, %v", i, added, err)
			}
		}
		var again bool
		mustWrite(t, s, func(tx *store.Tx) (err error) {
			again, err = tx.InsertPairFailover(ctx, &store.PairFailover{SiteID: "st_1", TenantID: "tn_1", Term: 2, Failover: fo})
			return
		})
		if again {
			t.Error("a second failover for term 2 was added")
		}
		fs := read(t, s, func(tx *store.Tx) ([]*store.PairFailover, error) { return tx.ListPairFailovers(ctx, "tn_1", "st_1", 3) })
		if len(fs) != 3 || fs[0].Term != 6 || fs[2].Term != 4 || fs[0].Reason != "r4" || !fs[0].At.Equal(t0.Add(4*time.Hour)) {
			t.Fatalf("failovers: %+v", fs)
		}
		var pruned int64
		mustWrite(t, s, func(tx *store.Tx) (err error) {
			pruned, err = tx.PrunePairFailovers(ctx, t0.Add(150*time.Minute))
			return
		})
		if left := read(t, s, func(tx *store.Tx) ([]*store.PairFailover, error) {
			return tx.ListPairFailovers(ctx, "tn_1", "st_1", 10)
		}); pruned != 3 || len(left) != 2 {
			t.Fatalf("pruned %d, left %d", pruned, len(left))
		}

		// Deleting the site takes its pair with it.
		mustWrite(t, s, func(tx *store.Tx) error { return tx.DeleteSite(ctx, "tn_1", "st_1") })
		if n := len(read(t, s, func(tx *store.Tx) ([]*store.PairStatus, error) { return tx.ListPairStatus(ctx, "tn_1") })); n != 0 {
			t.Errorf("%d statuses after deleting the site", n)
		}
		if n := len(read(t, s, func(tx *store.Tx) ([]*store.PairFailover, error) {
			return tx.ListPairFailovers(ctx, "tn_1", "st_1", 10)
		})); n != 0 {
			t.Errorf("%d failovers after deleting the site", n)
		}
	})
}

// TestPairMigrationDown takes the pair migration back and forth over a
// database with appliances in it.
func TestPairMigrationDown(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		mustWrite(t, s, func(tx *store.Tx) error {
			if err := tx.InsertTenant(ctx, &store.Tenant{ID: "tn_1", Name: "acme", CreatedAt: t0}); err != nil {
				return err
			}
			if err := tx.InsertSite(ctx, &store.Site{ID: "st_1", TenantID: "tn_1", Name: "hq", Kind: store.SiteOffice, CreatedAt: t0}); err != nil {
				return err
			}
			return tx.InsertAppliance(ctx, &store.Appliance{ID: "ap_1", TenantID: "tn_1", SiteID: "st_1", Name: "hq-1", PublicKey: newKey(t),
				OverlayAddr: netip.MustParseAddr("100.64.0.1"), State: store.ApplianceActive, CredentialHash: "h", CreatedAt: t0, Priority: 7})
		})
		if err := store.MigrateDownTo(s, ctx, 3); err != nil {
			t.Fatalf("down to 3: %v", err)
		}
		if err := store.Exec(s, ctx, "SELECT priority FROM appliances"); err == nil {
			t.Error("the priority column survived the down migration")
		}
		if err := store.Exec(s, ctx, "SELECT 1 FROM pair_status"); err == nil {
			t.Error("pair_status survived the down migration")
		}
		s2 := storetest.Open(t, dsn)
		a := read(t, s2, func(tx *store.Tx) (*store.Appliance, error) { return tx.ApplianceByID(ctx, "tn_1", "ap_1") })
		if a.Priority != 100 || !a.DrainedAt.IsZero() {
			t.Errorf("an appliance from before the migration: priority %d, drained %v; want 100 and not drained", a.Priority, a.DrainedAt)
		}
	})
}
