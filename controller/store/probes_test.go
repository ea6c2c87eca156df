package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/controller/store/storetest"
)

// TestMigrationKeepsTenants migrates a database holding a tenant made
// under the first schema: the tenant gets the default SLA and is reported
// as having no probe key yet.
func TestMigrationKeepsTenants(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		if err := store.MigrateDownTo(s, ctx, 1); err != nil {
			t.Fatalf("down to 1: %v", err)
		}
		if err := store.Exec(s, ctx, "INSERT INTO tenants (id, name, created_at) VALUES ('tn_old', 'old', 1)"); err != nil {
			t.Fatal(err)
		}
		s2 := storetest.Open(t, dsn)
		got := read(t, s2, func(tx *store.Tx) (*store.Tenant, error) { return tx.TenantByID(ctx, "tn_old") })
		if want := (store.SLA{MaxLossPercent: 2, MaxRTTMillis: 150, MaxJitterMillis: 30}); got.SLA != want {
			t.Errorf("migrated tenant's SLA = %+v, want %+v", got.SLA, want)
		}
		ids := read(t, s2, func(tx *store.Tx) ([]string, error) { return tx.TenantsWithoutProbeKey(ctx) })
		if len(ids) != 1 || ids[0] != "tn_old" {
			t.Errorf("TenantsWithoutProbeKey = %v", ids)
		}
	})
}

func TestSLAOverrides(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		sla := store.SLA{MaxLossPercent: 0.5, MaxRTTMillis: 80, MaxJitterMillis: 10}
		mustWrite(t, s, func(tx *store.Tx) error {
			for _, tn := range []string{"tn_1", "tn_2"} {
				if err := tx.InsertTenant(ctx, &store.Tenant{ID: tn, Name: tn[3:] + "x", CreatedAt: t0, SLA: sla}); err != nil {
					return err
				}
			}
			for _, st := range []string{"st_a", "st_b", "st_c"} {
				if err := tx.InsertSite(ctx, &store.Site{ID: st, TenantID: "tn_1", Name: st[3:], Kind: store.SiteOffice, CreatedAt: t0}); err != nil {
					return err
				}
			}
			// Given in either order, stored once, as (smaller, larger).
			if err := tx.PutSLAOverride(ctx, &store.SLAOverride{TenantID: "tn_1", SiteA: "st_b", SiteB: "st_a", SLA: sla, UpdatedAt: t0}); err != nil {
				return err
			}
			up := sla
			up.MaxRTTMillis = 300
			if err := tx.PutSLAOverride(ctx, &store.SLAOverride{TenantID: "tn_1", SiteA: "st_a", SiteB: "st_b", SLA: up, UpdatedAt: t0}); err != nil {
				return err
			}
			return tx.PutSLAOverride(ctx, &store.SLAOverride{TenantID: "tn_1", SiteA: "st_c", SiteB: "st_a", SLA: sla, UpdatedAt: t0})
		})
		tn := read(t, s, func(tx *store.Tx) (*store.Tenant, error) { return tx.TenantByID(ctx, "tn_1") })
		if tn.SLA != sla {
			t.Errorf("tenant SLA = %+v, want %+v", tn.SLA, sla)
		}
		os := read(t, s, func(tx *store.Tx) ([]*store.SLAOverride, error) { return tx.ListSLAOverrides(ctx, "tn_1") })
		if len(os) != 2 || os[0].SiteA != "st_a" || os[0].SiteB != "st_b" || os[0].SLA.MaxRTTMillis != 300 ||
			os[1].SiteA != "st_a" || os[1].SiteB != "st_c" || !os[0].UpdatedAt.Equal(t0) {
			t.Fatalf("overrides = %+v %+v", os[0], os[1])
		}
		// Scoped by tenant.
		if n := len(read(t, s, func(tx *store.Tx) ([]*store.SLAOverride, error) { return tx.ListSLAOverrides(ctx, "tn_2") })); n != 0 {
			t.Errorf("tenant 2 lists %d overrides", n)
		}
		if err := write(t, s, func(tx *store.Tx) error { return tx.DeleteSLAOverride(ctx, "tn_2", "st_a", "st_b") }); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("deleting another tenant's override: %v", err)
		}
		mustWrite(t, s, func(tx *store.Tx) error { return tx.DeleteSLAOverride(ctx, "tn_1", "st_b", "st_a") })
		// Deleting a site takes its overrides with it.
		mustWrite(t, s, func(tx *store.Tx) error { return tx.DeleteSite(ctx, "tn_1", "st_c") })
		if n := len(read(t, s, func(tx *store.Tx) ([]*store.SLAOverride, error) { return tx.ListSLAOverrides(ctx, "tn_1") })); n != 0 {
			t.Errorf("%d overrides left", n)
		}
		mustWrite(t, s, func(tx *store.Tx) error {
			return tx.UpdateTenantSLA(ctx, "tn_1", store.SLA{MaxLossPercent: 5})
		})
		if got := read(t, s, func(tx *store.Tx) (*store.Tenant, error) { return tx.TenantByID(ctx, "tn_1") }); got.SLA != (store.SLA{MaxLossPercent: 5}) {
			t.Errorf("updated SLA = %+v", got.SLA)
		}
	})
}

func TestProbeKeys(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		key := func(tenant string, id int64, role store.ProbeKeyRole) *store.ProbeKey {
			k := &store.ProbeKey{TenantID: tenant, ID: id, Role: role, CreatedAt: t0.Add(time.Duration(id) * time.Second)}
			k.Secret[0], k.Secret[31] = byte(id), 0xff
			return k
		}
		mustWrite(t, s, func(tx *store.Tx) error {
			for _, tn := range []string{"tn_1", "tn_2"} {
				if err := tx.InsertTenant(ctx, &store.Tenant{ID: tn, Name: tn[3:] + "x", CreatedAt: t0}); err != nil {
					return err
				}
			}
			if err := tx.InsertProbeKey(ctx, key("tn_1", 1, store.ProbeKeyCurrent)); err != nil {
				return err
			}
			if err := tx.InsertProbeKey(ctx, key("tn_1", 2, store.ProbeKeyNext)); err != nil {
				return err
			}
			// Another tenant may use the same id.
			return tx.InsertProbeKey(ctx, key("tn_2", 1, store.ProbeKeyCurrent))
		})
		if err := write(t, s, func(tx *store.Tx) error { return tx.InsertProbeKey(ctx, key("tn_1", 3, store.ProbeKeyCurrent)) }); !errors.Is(err, store.ErrConflict) {
			t.Errorf("two current keys: %v, want ErrConflict", err)
		}
		if err := write(t, s, func(tx *store.Tx) error { return tx.InsertProbeKey(ctx, key("tn_1", 2, store.ProbeKeyPrevious)) }); !errors.Is(err, store.ErrConflict) {
			t.Errorf("a reused id: %v, want ErrConflict", err)
		}
		ks := read(t, s, func(tx *store.Tx) ([]*store.ProbeKey, error) { return tx.ListProbeKeys(ctx, "tn_1") })
		if len(ks) != 2 || *ks[0] != *key("tn_1", 1, store.ProbeKeyCurrent) || *ks[1] != *key("tn_1", 2, store.ProbeKeyNext) {
			t.Fatalf("keys = %+v", ks)
		}
		// A promotion, in the order the unique role index needs.
		mustWrite(t, s, func(tx *store.Tx) error {
			if err := tx.SetProbeKeyRole(ctx, "tn_1", 1, store.ProbeKeyPrevious); err != nil {
				return err
			}
			return tx.SetProbeKeyRole(ctx, "tn_1", 2, store.ProbeKeyCurrent)
		})
		ks = read(t, s, func(tx *store.Tx) ([]*store.ProbeKey, error) { return tx.ListProbeKeys(ctx, "tn_1") })
		if ks[0].Role != store.ProbeKeyPrevious || ks[1].Role != store.ProbeKeyCurrent {
			t.Errorf("after promotion: %s, %s", ks[0].Role, ks[1].Role)
		}
		if err := write(t, s, func(tx *store.Tx) error { return tx.DeleteProbeKey(ctx, "tn_2", 2) }); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("deleting another tenant's key: %v", err)
		}
		mustWrite(t, s, func(tx *store.Tx) error { return tx.DeleteProbeKey(ctx, "tn_1", 1) })
		if ids := read(t, s, func(tx *store.Tx) ([]string, error) { return tx.TenantsWithoutProbeKey(ctx) }); len(ids) != 0 {
			t.Errorf("TenantsWithoutProbeKey = %v", ids)
		}
		mustWrite(t, s, func(tx *store.Tx) error { return tx.DeleteTenant(ctx, "tn_1") })
		if n := len(read(t, s, func(tx *store.Tx) ([]*store.ProbeKey, error) { return tx.ListProbeKeys(ctx, "tn_1") })); n != 0 {
			t.Errorf("after tenant delete, %d keys", n)
		}
	})
}
