package store_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/controller/store/storetest"
)

// pathFixture makes two tenants; tn_1 has sites st_a and st_b with one
// appliance each (ap_a, ap_b), tn_2 the same as st_x/ap_x and st_y/ap_y.
func pathFixture(t *testing.T, s *store.Store) {
	t.Helper()
	mustWrite(t, s, func(tx *store.Tx) error {
		n := 0
		for tn, sites := range map[string][]string{"tn_1": {"a", "b"}, "tn_2": {"x", "y"}} {
			if err := tx.InsertTenant(ctx, &store.Tenant{ID: tn, Name: tn[3:] + "t", CreatedAt: t0}); err != nil {
				return err
			}
			for _, st := range sites {
				n++
				if err := tx.InsertSite(ctx, &store.Site{ID: "st_" + st, TenantID: tn, Name: st, Kind: store.SiteOffice, CreatedAt: t0}); err != nil {
					return err
				}
				if err := tx.InsertAppliance(ctx, &store.Appliance{ID: "ap_" + st, TenantID: tn, SiteID: "st_" + st, Name: st + "-1",
					PublicKey: newKey(t), OverlayAddr: netip.AddrFrom4([4]byte{100, 64, 0, byte(n)}), State: store.ApplianceActive,
					CredentialHash: "h" + st, CreatedAt: t0}); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// point is a 10 s point of the path ap_a wan1 -> ap_b at start.
func point(start time.Time, sent, received, lost int64, mean time.Duration) *store.PathPoint {
	return &store.PathPoint{
		PathKey:  store.PathKey{ApplianceID: "ap_a", PeerApplianceID: "ap_b", Uplink: "wan1", Remote: "198.18.0.2:51820"},
		TenantID: "tn_1", SiteID: "st_a", PeerSiteID: "st_b",
		Start: start, End: start.Add(10 * time.Second), Points: 1,
		Sent: sent, Received: received, Lost: lost,
		RTTMin: mean / 2, RTTMean: mean, RTTP50: mean, RTTP99: 2 * mean, RTTMax: 3 * mean, Jitter: mean / 10,
	}
}

func TestPathHistory(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		pathFixture(t, s)
		minute := t0.Truncate(time.Minute)
		insert := func(pts ...*store.PathPoint) int64 {
			t.Helper()
			n, err := store.WritePaths(ctx, s, func(tx *store.Tx) (int64, error) { return tx.InsertPathPoints(ctx, pts) })
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		// Six points in the first minute, one in the next.
		var pts []*store.PathPoint
		for i := range 6 {
			mean := 10 * time.Millisecond
			if i%2 == 1 {
				mean = 20 * time.Millisecond
			}
			pts = append(pts, point(minute.Add(time.Duration(i)*10*time.Second), 50, 49, 1, mean))
		}
		if n := insert(pts...); n != 6 {
			t.Fatalf("inserted %d, want 6", n)
		}
		// A resend of the same intervals adds nothing.
		if n := insert(pts[2], pts[4]); n != 0 {
			t.Fatalf("a resend inserted %d", n)
		}
		insert(point(minute.Add(time.Minute), 50, 0, 50, 0))

		got := read(t, s, func(tx *store.Tx) ([]*store.PathPoint, error) {
			return tx.ListPathPoints(ctx, "tn_1", "st_a", "st_b", minute, minute.Add(time.Hour))
		})
		if len(got) != 7 || *got[1] != *pts[1] {
			t.Fatalf("points: %d, second %+v, want %+v", len(got), got[1], pts[1])
		}
		// Scoped by tenant and direction.
		for _, q := range [][3]string{{"tn_2", "st_a", "st_b"}, {"tn_1", "st_b", "st_a"}} {
			if n := len(read(t, s, func(tx *store.Tx) ([]*store.PathPoint, error) {
				return tx.ListPathPoints(ctx, q[0], q[1], q[2], minute, minute.Add(time.Hour))
			})); n != 0 {
				t.Errorf("points listed for %v: %d", q, n)
			}
		}

		// Rolling up the first two minutes, twice: the same rows.
		for range 2 {
			n, err := store.Write(ctx, s, func(tx *store.Tx) (int64, error) {
				return tx.RollupPaths(ctx, minute.Add(time.Second), minute.Add(2*time.Minute+time.Second))
			})
			if err != nil || n != 2 {
				t.Fatalf("rollup: %d, %v", n, err)
			}
		}
		ru := read(t, s, func(tx *store.Tx) ([]*store.PathPoint, error) {
			return tx.ListPathRollups(ctx, "tn_1", "st_a", "st_b", minute, minute.Add(time.Hour))
		})
		if len(ru) != 2 {
			t.Fatalf("%d rollups", len(ru))
		}
		r := ru[0]
		if !r.Start.Equal(minute) || !r.End.Equal(minute.Add(time.Minute)) || r.Points != 6 || r.Sent != 300 || r.Received != 294 || r.Lost != 6 ||
			r.RTTMin != 5*time.Millisecond || r.RTTMean != 15*time.Millisecond || r.RTTP50 != 15*time.Millisecond ||
			r.RTTP99 != 40*time.Millisecond || r.RTTMax != 60*time.Millisecond || r.Jitter != 1500*time.Microsecond {
			t.Errorf("first minute rollup = %+v", r)
		}
		if r := ru[1]; r.Points != 1 || r.Received != 0 || r.Lost != 50 || r.RTTMin != 0 || r.RTTMean != 0 {
			t.Errorf("second minute rollup (all lost) = %+v", r)
		}
		// A late point recomputes its minute.
		insert(point(minute.Add(55*time.Second), 50, 50, 0, 15*time.Millisecond))
		mustWrite(t, s, func(tx *store.Tx) error {
			_, err := tx.RollupPaths(ctx, minute, minute.Add(time.Minute))
			return err
		})
		ru = read(t, s, func(tx *store.Tx) ([]*store.PathPoint, error) {
			return tx.ListPathRollups(ctx, "tn_1", "st_a", "st_b", minute, minute.Add(time.Minute))
		})
		if len(ru) != 1 || ru[0].Points != 7 || ru[0].Sent != 350 || ru[0].Lost != 6 {
			t.Errorf("rollup after a late point = %+v", ru)
		}

		// Pruning: points of the first minute, rollups of the first minute.
		type pruned struct{ points, rollups int64 }
		p, err := store.Write(ctx, s, func(tx *store.Tx) (pruned, error) {
			a, b, err := tx.PrunePaths(ctx, minute.Add(time.Minute), minute.Add(time.Minute))
			return pruned{a, b}, err
		})
		if err != nil || p != (pruned{7, 1}) {
			t.Fatalf("prune: %+v, %v", p, err)
		}
		left := read(t, s, func(tx *store.Tx) ([]*store.PathPoint, error) {
			return tx.ListPathPoints(ctx, "tn_1", "st_a", "st_b", minute, minute.Add(time.Hour))
		})
		if len(left) != 1 || !left[0].Start.Equal(minute.Add(time.Minute)) {
			t.Errorf("after prune: %+v", left)
		}

		// Deleting the tenant takes its history with it.
		mustWrite(t, s, func(tx *store.Tx) error { return tx.DeleteTenant(ctx, "tn_1") })
		if n := len(read(t, s, func(tx *store.Tx) ([]*store.PathPoint, error) {
			return tx.ListPathRollups(ctx, "tn_1", "st_a", "st_b", minute, minute.Add(time.Hour))
		})); n != 0 {
			t.Errorf("%d rollups left after the tenant was deleted", n)
		}
	})
}
