package store_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/controller/store/storetest"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

var ctx = context.Background()

func write(t *testing.T, s *store.Store, fn func(tx *store.Tx) error) error {
	t.Helper()
	_, err := store.Write(ctx, s, func(tx *store.Tx) (struct{}, error) { return struct{}{}, fn(tx) })
	return err
}

func mustWrite(t *testing.T, s *store.Store, fn func(tx *store.Tx) error) {
	t.Helper()
	if err := write(t, s, fn); err != nil {
		t.Fatal(err)
	}
}

func read[T any](t *testing.T, s *store.Store, fn func(tx *store.Tx) (T, error)) T {
	t.Helper()
	v, err := store.Read(ctx, s, fn)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func newKey(t *testing.T) wgkey.PublicKey {
	k, err := wgkey.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

var t0 = time.UnixMilli(1_760_000_000_000).UTC()

func TestMigrations(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		v, err := s.SchemaVersion(ctx)
		if err != nil || v < 4 {
			t.Fatalf("SchemaVersion = %d, %v; want at least 4", v, err)
		}
		// Opening an up-to-date database again is a no-op.
		storetest.Open(t, dsn)
		// The down migration removes everything; up again restores it.
		if err := store.MigrateDownTo(s, ctx, 0); err != nil {
			t.Fatalf("down: %v", err)
		}
		if v, _ := s.SchemaVersion(ctx); v != 0 {
			t.Fatalf("after down, version %d", v)
		}
		s2 := storetest.Open(t, dsn)
		mustWrite(t, s2, func(tx *store.Tx) error {
			return tx.InsertTenant(ctx, &store.Tenant{ID: "tn_1", Name: "acme", CreatedAt: t0})
		})
	})
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		key := newKey(t)
		tn := &store.Tenant{ID: "tn_1", Name: "acme", CreatedAt: t0}
		site := &store.Site{ID: "st_1", TenantID: "tn_1", Name: "hq", Kind: store.SiteOffice,
			LANPrefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("fd00:1::/64")}, CreatedAt: t0}
		app := &store.Appliance{ID: "ap_1", TenantID: "tn_1", SiteID: "st_1", Name: "hq-1", PublicKey: key,
			OverlayAddr: netip.MustParseAddr("100.64.0.1"),
			Endpoints:   []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:51820"), netip.MustParseAddrPort("[2001:db8::1]:51820")},
			State:       store.ApplianceActive, CredentialHash: "h1", CreatedAt: t0}
		mustWrite(t, s, func(tx *store.Tx) error {
			if err := tx.InsertTenant(ctx, tn); err != nil {
				return err
			}
			if err := tx.InsertSite(ctx, site); err != nil {
				return err
			}
			return tx.InsertAppliance(ctx, app)
		})
		gotT := read(t, s, func(tx *store.Tx) (*store.Tenant, error) { return tx.TenantByName(ctx, "acme") })
		if *gotT != *tn {
			t.Errorf("tenant = %+v, want %+v", gotT, tn)
		}
		gotS := read(t, s, func(tx *store.Tx) (*store.Site, error) { return tx.SiteByName(ctx, "tn_1", "hq") })
		if fmt.Sprint(gotS) != fmt.Sprint(site) {
			t.Errorf("site = %+v, want %+v", gotS, site)
		}
		gotA := read(t, s, func(tx *store.Tx) (*store.Appliance, error) { return tx.ApplianceByCredential(ctx, "h1") })
		if fmt.Sprint(gotA) != fmt.Sprint(app) {
			t.Errorf("appliance = %+v, want %+v", gotA, app)
		}

		// Every tenant-owned lookup is scoped by tenant.
		mustWrite(t, s, func(tx *store.Tx) error {
			return tx.InsertTenant(ctx, &store.Tenant{ID: "tn_2", Name: "other", CreatedAt: t0})
		})
		_, err := store.Read(ctx, s, func(tx *store.Tx) (*store.Site, error) { return tx.SiteByID(ctx, "tn_2", "st_1") })
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("site of another tenant: err = %v, want ErrNotFound", err)
		}
		_, err = store.Read(ctx, s, func(tx *store.Tx) (*store.Appliance, error) { return tx.ApplianceByID(ctx, "tn_2", "ap_1") })
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("appliance of another tenant: err = %v, want ErrNotFound", err)
		}

		// Updates.
		site.LANPrefixes = []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}
		site.Kind = store.SiteVPC
		mustWrite(t, s, func(tx *store.Tx) error {
			if err := tx.UpdateSite(ctx, site); err != nil {
				return err
			}
			if err := tx.UpdateApplianceEndpoints(ctx, "tn_1", "ap_1", nil); err != nil {
				return err
			}
			return tx.RevokeAppliance(ctx, "tn_1", "ap_1", t0.Add(time.Hour))
		})
		gotS = read(t, s, func(tx *store.Tx) (*store.Site, error) { return tx.SiteByID(ctx, "tn_1", "st_1") })
		if fmt.Sprint(gotS) != fmt.Sprint(site) {
			t.Errorf("updated site = %+v, want %+v", gotS, site)
		}
		gotA = read(t, s, func(tx *store.Tx) (*store.Appliance, error) { return tx.ApplianceByID(ctx, "tn_1", "ap_1") })
		if gotA.State != store.ApplianceRevoked || len(gotA.Endpoints) != 0 || !gotA.RevokedAt.Equal(t0.Add(time.Hour)) {
			t.Errorf("revoked appliance = %+v", gotA)
		}
		if err := write(t, s, func(tx *store.Tx) error { return tx.RevokeAppliance(ctx, "tn_1", "ap_1", t0) }); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("revoking twice: err = %v, want ErrNotFound", err)
		}

		// Deleting the tenant takes everything with it.
		mustWrite(t, s, func(tx *store.Tx) error { return tx.DeleteTenant(ctx, "tn_1") })
		apps := read(t, s, func(tx *store.Tx) ([]*store.Appliance, error) { return tx.ListAppliances(ctx, "tn_1") })
		sites := read(t, s, func(tx *store.Tx) ([]*store.Site, error) { return tx.ListSites(ctx, "tn_1") })
		if len(apps)+len(sites) != 0 {
			t.Errorf("after tenant delete: %d appliances, %d sites", len(apps), len(sites))
		}
	})
}

func TestConstraints(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		key := newKey(t)
		mustWrite(t, s, func(tx *store.Tx) error {
			if err := tx.InsertTenant(ctx, &store.Tenant{ID: "tn_1", Name: "acme", CreatedAt: t0}); err != nil {
				return err
			}
			return tx.InsertSite(ctx, &store.Site{ID: "st_1", TenantID: "tn_1", Name: "hq", Kind: store.SiteOffice, CreatedAt: t0})
		})
		app := func(id, name, addr, cred string) *store.Appliance {
			return &store.Appliance{ID: id, TenantID: "tn_1", SiteID: "st_1", Name: name, PublicKey: key,
				OverlayAddr: netip.MustParseAddr(addr), State: store.ApplianceActive, CredentialHash: cred, CreatedAt: t0}
		}
		cases := []struct {
			name string
			fn   func(tx *store.Tx) error
		}{
			{"duplicate tenant name", func(tx *store.Tx) error {
				return tx.InsertTenant(ctx, &store.Tenant{ID: "tn_2", Name: "acme", CreatedAt: t0})
			}},
			{"duplicate site name", func(tx *store.Tx) error {
				return tx.InsertSite(ctx, &store.Site{ID: "st_2", TenantID: "tn_1", Name: "hq", Kind: store.SiteHome, CreatedAt: t0})
			}},
			{"site of missing tenant", func(tx *store.Tx) error {
				return tx.InsertSite(ctx, &store.Site{ID: "st_3", TenantID: "tn_x", Name: "x", Kind: store.SiteHome, CreatedAt: t0})
			}},
			{"duplicate live key", func(tx *store.Tx) error {
				if err := tx.InsertAppliance(ctx, app("ap_1", "a", "100.64.0.1", "c1")); err != nil {
					return err
				}
				return tx.InsertAppliance(ctx, app("ap_2", "b", "100.64.0.2", "c2"))
			}},
			{"duplicate overlay address", func(tx *store.Tx) error {
				a := app("ap_3", "c", "100.64.0.1", "c3")
				a.PublicKey = newKey(t)
				if err := tx.InsertAppliance(ctx, app("ap_1", "a", "100.64.0.1", "c1")); err != nil {
					return err
				}
				return tx.InsertAppliance(ctx, a)
			}},
		}
		for _, c := range cases {
			if err := write(t, s, c.fn); !errors.Is(err, store.ErrConflict) {
				t.Errorf("%s: err = %v, want ErrConflict", c.name, err)
			}
		}
		// A revoked appliance's key may enrol again.
		mustWrite(t, s, func(tx *store.Tx) error {
			if err := tx.InsertAppliance(ctx, app("ap_1", "a", "100.64.0.1", "c1")); err != nil {
				return err
			}
			if err := tx.RevokeAppliance(ctx, "tn_1", "ap_1", t0); err != nil {
				return err
			}
			return tx.InsertAppliance(ctx, app("ap_2", "a", "100.64.0.2", "c2"))
		})
		got := read(t, s, func(tx *store.Tx) (*store.Appliance, error) { return tx.ApplianceByName(ctx, "tn_1", "a") })
		if got.ID != "ap_2" {
			t.Errorf("ApplianceByName picked %s, want the live ap_2", got.ID)
		}
		addrs := read(t, s, func(tx *store.Tx) ([]netip.Addr, error) { return tx.ApplianceAddrs(ctx, "tn_1") })
		if len(addrs) != 2 {
			t.Errorf("ApplianceAddrs = %v, want both (revoked addresses stay taken)", addrs)
		}
	})
}

func TestTokens(t *testing.T) {
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
			if err := tx.InsertEnrollmentToken(ctx, &store.EnrollmentToken{ID: "et_1", TenantID: "tn_1", SiteID: "st_1",
				SecretHash: "eh", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
				return err
			}
			if err := tx.InsertAPIToken(ctx, &store.APIToken{ID: "at_op", SecretHash: "oh", Scope: store.ScopeOperator, CreatedAt: t0}); err != nil {
				return err
			}
			return tx.InsertAPIToken(ctx, &store.APIToken{ID: "at_t", SecretHash: "th", Scope: store.ScopeTenantAdmin, TenantID: "tn_1", CreatedAt: t0})
		})
		// Only one of two racing uses wins.
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = write(t, s, func(tx *store.Tx) error { return tx.UseEnrollmentToken(ctx, "et_1", fmt.Sprint("ap_", i), t0) })
			}()
		}
		wg.Wait()
		if (errs[0] == nil) == (errs[1] == nil) || !errors.Is(errors.Join(errs...), store.ErrConflict) {
			t.Errorf("two uses of one token: %v", errs)
		}
		et := read(t, s, func(tx *store.Tx) (*store.EnrollmentToken, error) { return tx.EnrollmentTokenByHash(ctx, "eh") })
		if et.UsedAt.IsZero() || et.ApplianceID == "" {
			t.Errorf("used token = %+v", et)
		}

		op := read(t, s, func(tx *store.Tx) (*store.APIToken, error) { return tx.APITokenByHash(ctx, "oh") })
		if op.Scope != store.ScopeOperator || op.TenantID != "" {
			t.Errorf("operator token = %+v", op)
		}
		if n := read(t, s, func(tx *store.Tx) (int, error) { return tx.CountAPITokens(ctx) }); n != 2 {
			t.Errorf("CountAPITokens = %d", n)
		}
		ops := read(t, s, func(tx *store.Tx) ([]*store.APIToken, error) { return tx.ListAPITokens(ctx, "") })
		if len(ops) != 1 || ops[0].ID != "at_op" {
			t.Errorf("operator tokens = %v", ops)
		}
		// A tenant cannot delete the operator's token.
		if err := write(t, s, func(tx *store.Tx) error { return tx.DeleteAPIToken(ctx, "tn_1", "at_op") }); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("tenant deleting an operator token: %v", err)
		}
		mustWrite(t, s, func(tx *store.Tx) error { return tx.DeleteTenant(ctx, "tn_1") })
		if n := read(t, s, func(tx *store.Tx) (int, error) { return tx.CountAPITokens(ctx) }); n != 1 {
			t.Errorf("after tenant delete, CountAPITokens = %d, want 1", n)
		}
	})
}

func TestChangeFeed(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		// A second handle on the same database, as a replica would have.
		s2 := storetest.Open(t, dsn)
		const writers, each = 4, 10
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				db := s
				if w%2 == 1 {
					db = s2
				}
				for i := range each {
					if err := write(t, db, func(tx *store.Tx) error {
						return tx.AppendChange(ctx, &store.Change{TenantID: "tn_1", Kind: "test", Subject: fmt.Sprint(w, "/", i),
							CreatedAt: t0.Add(time.Duration(i) * time.Minute)})
					}); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		all := read(t, s, func(tx *store.Tx) ([]*store.Change, error) { return tx.ChangesSince(ctx, 0, 1000) })
		if len(all) != writers*each {
			t.Fatalf("%d changes, want %d", len(all), writers*each)
		}
		for i, c := range all {
			if c.ID != int64(i+1) {
				t.Fatalf("change %d has id %d; want dense ids 1..%d", i, c.ID, len(all))
			}
		}
		page := read(t, s2, func(tx *store.Tx) ([]*store.Change, error) { return tx.ChangesSince(ctx, 10, 5) })
		if len(page) != 5 || page[0].ID != 11 {
			t.Errorf("ChangesSince(10, 5) = %d rows from %d", len(page), page[0].ID)
		}
		n, err := store.Write(ctx, s, func(tx *store.Tx) (int64, error) { return tx.PruneChanges(ctx, t0.Add(time.Hour)) })
		if err != nil || n != writers*each-1 {
			t.Errorf("PruneChanges = %d, %v; want all but the newest", n, err)
		}
		if last := read(t, s, func(tx *store.Tx) (int64, error) { return tx.LastChangeID(ctx) }); last != writers*each {
			t.Errorf("LastChangeID after prune = %d", last)
		}
		if _, err := store.Read(ctx, s, func(tx *store.Tx) (int, error) {
			return 0, tx.AppendChange(ctx, &store.Change{TenantID: "x"})
		}); err == nil {
			t.Error("AppendChange in a read transaction succeeded")
		}
	})
}
