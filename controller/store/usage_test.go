package store_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/controller/store/storetest"
)

func writeUsage[T any](t *testing.T, s *store.Store, fn func(tx *store.Tx) (T, error)) T {
	t.Helper()
	v, err := store.WriteUsage(ctx, s, fn)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func outboxEntry(id string, seq int64, hour time.Time, bytes int64) *store.OutboxEntry {
	return &store.OutboxEntry{EventID: id, TenantID: "tn_1", SiteID: "st_a", ApplianceID: "ap_a", FirstSeq: seq,
		Meter: store.MeterOverlay, Direction: store.DirectionTx, MeterName: "causeway.overlay.tx.bytes",
		Hour: hour, Start: hour, End: hour.Add(10 * time.Second), Bytes: bytes, Packets: bytes / 100, Records: 1, CreatedAt: hour}
}

func TestUsageLedger(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		pathFixture(t, s)
		hour := t0.Truncate(time.Hour)
		row := func(site, peer, dir string, start time.Time, bytes int64) *store.UsageRow {
			return &store.UsageRow{TenantID: "tn_1", SiteID: site, PeerSiteID: peer, Meter: store.MeterOverlay, Direction: dir,
				Start: start, Bytes: bytes, Packets: bytes / 100}
		}

		// Dedup: a sequence number counts once per appliance.
		seen := func(app string, seq int64) bool {
			return writeUsage(t, s, func(tx *store.Tx) (bool, error) { return tx.MarkUsageSeen(ctx, app, seq, hour, t0) })
		}
		if !seen("ap_a", 1) || !seen("ap_a", 2) || seen("ap_a", 1) || !seen("ap_b", 1) {
			t.Fatal("MarkUsageSeen: want new, new, seen, new")
		}

		// Hour buckets: increments add up within the hour they start in.
		writeUsage(t, s, func(tx *store.Tx) (any, error) {
			return nil, tx.AddUsage(ctx, []*store.UsageRow{
				row("st_a", "st_b", "tx", hour.Add(10*time.Second), 1000),
				row("st_a", "st_b", "tx", hour.Add(59*time.Minute), 500),
				row("st_a", "st_b", "tx", hour.Add(time.Hour), 7000),
				row("st_a", "st_b", "rx", hour, 300),
				row("st_b", "st_a", "tx", hour.Add(25*time.Hour), 200),
			}, t0)
		})
		list := func(q store.UsageQuery) []*store.UsageRow {
			return read(t, s, func(tx *store.Tx) ([]*store.UsageRow, error) { return tx.ListUsage(ctx, q) })
		}
		got := list(store.UsageQuery{TenantID: "tn_1", SiteID: "st_a", From: hour, To: hour.Add(48 * time.Hour), Step: store.UsageHour})
		want := []store.UsageRow{
			*row("st_a", "st_b", "rx", hour, 300),
			{TenantID: "tn_1", SiteID: "st_a", PeerSiteID: "st_b", Meter: "overlay", Direction: "tx", Start: hour, Bytes: 1500, Packets: 15},
			*row("st_a", "st_b", "tx", hour.Add(time.Hour), 7000),
		}
		if len(got) != len(want) {
			t.Fatalf("by hour: %d rows, want %d: %v", len(got), len(want), got)
		}
		for i := range want {
			if *got[i] != want[i] {
				t.Errorf("by hour row %d = %+v, want %+v", i, *got[i], want[i])
			}
		}
		day := hour.Truncate(24 * time.Hour)
		got = list(store.UsageQuery{TenantID: "tn_1", From: day, To: day.Add(72 * time.Hour), Step: 24 * time.Hour})
		var sum int64
		for _, r := range got {
			if r.Start.Truncate(24*time.Hour) != r.Start {
				t.Errorf("day row starts at %s", r.Start)
			}
			sum += r.Bytes
		}
		if sum != 9000 || len(got) < 3 {
			t.Errorf("by day: %d rows summing to %d bytes, want 9000: %v", len(got), sum, got)
		}
		// Another tenant sees none of it; an empty range nothing.
		if n := len(list(store.UsageQuery{TenantID: "tn_2", From: day, To: day.Add(72 * time.Hour), Step: store.UsageHour})); n != 0 {
			t.Errorf("tn_2 has %d rows", n)
		}
		if n := len(list(store.UsageQuery{From: hour.Add(-time.Hour), To: hour, Step: store.UsageHour})); n != 0 {
			t.Errorf("the hour before has %d rows", n)
		}

		// Prune: dedup rows of records that started before the cut go.
		n := writeUsage(t, s, func(tx *store.Tx) (int64, error) { return tx.PruneUsageSeen(ctx, hour.Add(time.Second)) })
		if n != 3 || !seen("ap_a", 1) {
			t.Errorf("pruned %d dedup rows, want 3, and seq 1 is new again", n)
		}
	})
}

// TestUsageOneTransaction: the dedup row, the ledger increment and the
// outbox entry commit together or not at all.
func TestUsageOneTransaction(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		pathFixture(t, s)
		hour := t0.Truncate(time.Hour)
		boom := errors.New("boom")
		ingest := func(fail bool) error {
			_, err := store.WriteUsage(ctx, s, func(tx *store.Tx) (any, error) {
				if _, err := tx.MarkUsageSeen(ctx, "ap_a", 7, hour, t0); err != nil {
					return nil, err
				}
				if err := tx.AddUsage(ctx, []*store.UsageRow{{TenantID: "tn_1", SiteID: "st_a", PeerSiteID: "st_b",
					Meter: "overlay", Direction: "tx", Start: hour, Bytes: 100, Packets: 1}}, t0); err != nil {
					return nil, err
				}
				if err := tx.InsertOutbox(ctx, []*store.OutboxEntry{outboxEntry("ev-7", 7, hour, 100)}); err != nil {
					return nil, err
				}
				if fail {
					return nil, boom
				}
				return nil, nil
			})
			return err
		}
		if err := ingest(true); !errors.Is(err, boom) {
			t.Fatalf("failing ingest: %v", err)
		}
		stats := read(t, s, func(tx *store.Tx) (store.OutboxStats, error) { return tx.OutboxStats(ctx) })
		rows := read(t, s, func(tx *store.Tx) ([]*store.UsageRow, error) {
			return tx.ListUsage(ctx, store.UsageQuery{From: hour, To: hour.Add(time.Hour)})
		})
		if stats.Pending != 0 || len(rows) != 0 {
			t.Fatalf("after a rolled back ingest: %+v, %d ledger rows", stats, len(rows))
		}
		if err := ingest(false); err != nil {
			t.Fatal(err)
		}
		stats = read(t, s, func(tx *store.Tx) (store.OutboxStats, error) { return tx.OutboxStats(ctx) })
		if stats.Pending != 1 || !stats.OldestPending.Equal(hour) {
			t.Fatalf("after an ingest: %+v", stats)
		}
		// The same event twice is refused by its key.
		if err := ingest(false); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("second insert of ev-7: %v", err)
		}
	})
}

func TestOutbox(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s := storetest.Open(t, dsn)
		pathFixture(t, s)
		hour := t0.Truncate(time.Hour)
		var es []*store.OutboxEntry
		for i := range 10 {
			e := outboxEntry(fmt.Sprintf("ev-%02d", i), int64(i+1), hour, int64(100*(i+1)))
			e.CreatedAt = hour.Add(time.Duration(i) * time.Second)
			es = append(es, e)
		}
		writeUsage(t, s, func(tx *store.Tx) (any, error) { return nil, tx.InsertOutbox(ctx, es) })
		claim := func(owner string, n int, now time.Time) []*store.OutboxEntry {
			return writeUsage(t, s, func(tx *store.Tx) ([]*store.OutboxEntry, error) {
				return tx.ClaimOutbox(ctx, owner, n, now, time.Minute)
			})
		}
		now := hour.Add(time.Hour)
		a := claim("a", 4, now)
		if len(a) != 4 || a[0].EventID != "ev-00" || a[3].EventID != "ev-03" || a[0].ClaimedBy != "a" || *a[1] == *es[1] {
			t.Fatalf("first claim: %v", a)
		}
		if e := a[2]; e.Bytes != 300 || e.MeterName != "causeway.overlay.tx.bytes" || !e.Hour.Equal(hour) || e.State != store.OutboxPending {
			t.Errorf("claimed entry %+v", e)
		}
		b := claim("b", 100, now)
		if len(b) != 6 || b[0].EventID != "ev-04" {
			t.Fatalf("second claim got %d, first %v", len(b), b)
		}
		if c := claim("c", 100, now.Add(30*time.Second)); len(c) != 0 {
			t.Fatalf("claimed %d entries others hold", len(c))
		}
		// a sends two, fails one (retry later) and dead-letters one.
		if n := writeUsage(t, s, func(tx *store.Tx) (int64, error) { return tx.DeleteOutbox(ctx, []string{"ev-00", "ev-01"}) }); n != 2 {
			t.Fatalf("deleted %d", n)
		}
		writeUsage(t, s, func(tx *store.Tx) (any, error) {
			return nil, tx.UpdateOutbox(ctx, []store.OutboxUpdate{
				{EventID: "ev-02", Attempts: 1, NextAt: now.Add(10 * time.Second), Error: "HTTP 503"},
				{EventID: "ev-03", Attempts: 1, Dead: true, Error: "HTTP 400: bad"},
			}, now)
		})
		if c := claim("c", 100, now.Add(5*time.Second)); len(c) != 0 {
			t.Fatalf("claimed %v before it is due", c)
		}
		if c := claim("c", 100, now.Add(11*time.Second)); len(c) != 1 || c[0].EventID != "ev-02" || c[0].Attempts != 1 || c[0].LastError != "HTTP 503" {
			t.Fatalf("claim once due: %v", c)
		}
		// b's lease runs out: its entries go to whoever claims next.
		if c := claim("c", 100, now.Add(61*time.Second)); len(c) != 6 {
			t.Fatalf("after b's lease, claimed %d", len(c))
		}
		stats := read(t, s, func(tx *store.Tx) (store.OutboxStats, error) { return tx.OutboxStats(ctx) })
		if stats.Pending != 7 || stats.Dead != 1 || !stats.OldestPending.Equal(es[2].CreatedAt) {
			t.Errorf("stats %+v", stats)
		}
		dead := read(t, s, func(tx *store.Tx) ([]*store.OutboxEntry, error) { return tx.ListOutbox(ctx, store.OutboxDead, 10) })
		if len(dead) != 1 || dead[0].EventID != "ev-03" || dead[0].LastError != "HTTP 400: bad" || !dead[0].DeadAt.Equal(now) {
			t.Fatalf("dead letters %v", dead)
		}
		if n := writeUsage(t, s, func(tx *store.Tx) (int64, error) { return tx.RetryOutbox(ctx, []string{"ev-04"}, now) }); n != 0 {
			t.Errorf("retried %d pending entries", n)
		}
		if n := writeUsage(t, s, func(tx *store.Tx) (int64, error) { return tx.RetryOutbox(ctx, nil, now) }); n != 1 {
			t.Errorf("retried %d dead letters, want 1", n)
		}
		stats = read(t, s, func(tx *store.Tx) (store.OutboxStats, error) { return tx.OutboxStats(ctx) })
		if stats.Pending != 8 || stats.Dead != 0 {
			t.Errorf("stats after retry %+v", stats)
		}
		if c := claim("d", 100, now.Add(3*time.Minute)); len(c) != 8 || c[1].EventID != "ev-03" || c[1].Attempts != 0 {
			t.Errorf("after the retry: %v", c)
		}

		// Billing customers.
		mustWrite(t, s, func(tx *store.Tx) error { return tx.UpdateTenantBillingCustomer(ctx, "tn_1", "cus_42") })
		cs := read(t, s, func(tx *store.Tx) (map[string]store.TenantBilling, error) {
			return tx.BillingCustomers(ctx, []string{"tn_1", "tn_2", "tn_gone"})
		})
		if len(cs) != 2 || cs["tn_1"] != (store.TenantBilling{Name: "1t", Customer: "cus_42"}) || cs["tn_2"].Customer != "" {
			t.Errorf("billing customers %v", cs)
		}
		if tn := read(t, s, func(tx *store.Tx) (*store.Tenant, error) { return tx.TenantByID(ctx, "tn_1") }); tn.BillingCustomer != "cus_42" {
			t.Errorf("tenant %+v", tn)
		}
	})
}

// TestOutboxConcurrentClaims: replicas claiming at once never get the same
// entry (PostgreSQL: SKIP LOCKED; SQLite: one writer).
func TestOutboxConcurrentClaims(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		s1, s2 := storetest.Open(t, dsn), storetest.Open(t, dsn)
		hour := t0.Truncate(time.Hour)
		var es []*store.OutboxEntry
		for i := range 200 {
			es = append(es, outboxEntry(fmt.Sprintf("ev-%03d", i), int64(i+1), hour, 100))
		}
		writeUsage(t, s1, func(tx *store.Tx) (any, error) { return nil, tx.InsertOutbox(ctx, es) })
		var mu sync.Mutex
		got := map[string]string{}
		var wg sync.WaitGroup
		for w := range 6 {
			s := []*store.Store{s1, s2}[w%2]
			owner := fmt.Sprintf("w%d", w)
			wg.Go(func() {
				for {
					c, err := store.WriteUsage(ctx, s, func(tx *store.Tx) ([]*store.OutboxEntry, error) {
						return tx.ClaimOutbox(ctx, owner, 7, hour.Add(time.Hour), time.Minute)
					})
					if err != nil {
						t.Error(err)
						return
					}
					if len(c) == 0 {
						return
					}
					mu.Lock()
					for _, e := range c {
						if prev, ok := got[e.EventID]; ok {
							t.Errorf("%s claimed by %s and %s", e.EventID, prev, owner)
						}
						got[e.EventID] = owner
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(got) != len(es) {
			t.Errorf("claimed %d of %d", len(got), len(es))
		}
	})
}
