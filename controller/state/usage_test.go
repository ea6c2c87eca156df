package state_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/controller/store/storetest"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// exportMeters exports three of the four meters: gateway rx stays in the
// ledger only.
var exportMeters = map[string]string{
	"overlay.tx": "causeway.overlay.tx.bytes",
	"overlay.rx": "causeway.overlay.rx.bytes",
	"gateway.tx": "causeway.gateway.tx.bytes",
}

func newUsageState(t *testing.T, dsn string, c *clock) *state.State {
	t.Helper()
	s, err := state.New(ctx, state.Options{Store: storetest.Open(t, dsn), PollInterval: 50 * time.Millisecond,
		TestOnlyNow: c.Now, ExportMeters: exportMeters})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// usageFixture makes tenant acme with sites hq and br, an appliance at
// each, and returns hq's device, the site ids and hq's credential.
type usageFixture struct {
	dev        *state.Device
	cred       string
	hq, br     string
	brDev      *state.Device
	brCred     string
	hour       time.Time
	clock      *clock
	s          *state.State
	adminOther *state.Principal
}

func newUsageFixture(t *testing.T, dsn string) *usageFixture {
	c := &clock{t: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)}
	s := newUsageState(t, dsn, c)
	must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "acme"))
	other := must[*store.Tenant](t)(s.CreateTenant(ctx, operator, "globex"))
	hq := must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "hq", Kind: store.SiteOffice, LANPrefixes: pfx("10.1.0.0/24")}))
	br := must[*store.Site](t)(s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: "br", Kind: store.SiteOffice, LANPrefixes: pfx("10.2.0.0/24")}))
	e := enroll(t, s, "acme", "hq", "hq-1")
	b := enroll(t, s, "acme", "br", "br-1")
	f := &usageFixture{cred: e.Credential, hq: hq.ID, br: br.ID, brCred: b.Credential, hour: c.Now().Truncate(time.Hour), clock: c, s: s,
		adminOther: &state.Principal{TokenID: "at_x", Scope: store.ScopeTenantAdmin, TenantID: other.ID}}
	f.dev = must[*state.Device](t)(s.IdentifyDevice(ctx, e.Credential))
	f.brDev = must[*state.Device](t)(s.IdentifyDevice(ctx, b.Credential))
	// Usage is reported after the fact.
	c.Add(2 * time.Hour)
	return f
}

// record is 10 s of hq's traffic at off into the fixture's hour: overlay
// to br both ways and gateway both ways, the bytes scaled by n.
func (f *usageFixture) record(seq int64, off time.Duration, n int64) state.UsageRecord {
	start := f.hour.Add(off)
	return state.UsageRecord{Seq: seq, Start: start, End: start.Add(10 * time.Second), Usage: []state.UsageCount{
		{Meter: store.MeterOverlay, PeerSite: f.br, Direction: store.DirectionTx, Bytes: 1000 * n, Packets: 10 * n},
		{Meter: store.MeterOverlay, PeerSite: f.br, Direction: store.DirectionRx, Bytes: 2000 * n, Packets: 20 * n},
		{Meter: store.MeterGateway, Direction: store.DirectionTx, Bytes: 300 * n, Packets: 3 * n},
		{Meter: store.MeterGateway, Direction: store.DirectionRx, Bytes: 400 * n, Packets: 4 * n},
	}}
}

// sums returns the ledger's bytes per meter.direction over all time.
func (f *usageFixture) sums(t *testing.T) map[string]int64 {
	t.Helper()
	rep := must[*state.UsageReport](t)(f.s.Usage(ctx, operator, state.UsageQuery{Tenant: "acme", From: f.hour.Add(-24 * time.Hour),
		To: f.hour.Add(24 * time.Hour), By: store.UsageHour}))
	out := map[string]int64{}
	for _, l := range rep.Lines {
		out[state.MeterKey(l.Meter, l.Direction)] += l.Bytes
	}
	return out
}

func TestUsageReport(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		f := newUsageFixture(t, dsn)
		s := f.s
		batch := []state.UsageRecord{f.record(5, 0, 1), f.record(6, 10*time.Second, 2), f.record(7, time.Hour, 4)}
		acked := must[[]int64](t)(s.ReportUsage(ctx, f.dev, batch))
		if fmt.Sprint(acked) != "[5 6 7]" {
			t.Fatalf("acked %v", acked)
		}
		want := map[string]int64{"overlay.tx": 7000, "overlay.rx": 14000, "gateway.tx": 2100, "gateway.rx": 2800}
		if got := f.sums(t); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("ledger %v, want %v", got, want)
		}
		// The ledger by hour, with names.
		rep := must[*state.UsageReport](t)(s.Usage(ctx, operator, state.UsageQuery{Tenant: "acme", Site: "hq",
			From: f.hour, To: f.hour.Add(2 * time.Hour), By: store.UsageHour}))
		if len(rep.Lines) != 8 || !rep.Lines[0].Start.Equal(f.hour) || !rep.Lines[7].Start.Equal(f.hour.Add(time.Hour)) {
			t.Fatalf("hourly lines %d: %+v", len(rep.Lines), rep.Lines)
		}
		l := rep.Lines[2] // first hour, overlay rx to br
		if l.Meter != "overlay" || l.Direction != "rx" || l.PeerSiteID != f.br || l.PeerSiteName != "br" || l.SiteName != "hq" ||
			l.TenantName != "acme" || l.Bytes != 6000 || l.Packets != 60 {
			t.Errorf("line %+v", l)
		}

		// A resend of the batch with one new record counts the new one only.
		acked = must[[]int64](t)(s.ReportUsage(ctx, f.dev, append(batch, f.record(8, 20*time.Second, 8))))
		if fmt.Sprint(acked) != "[5 6 7 8]" {
			t.Fatalf("acked %v", acked)
		}
		want = map[string]int64{"overlay.tx": 15000, "overlay.rx": 30000, "gateway.tx": 4500, "gateway.rx": 6000}
		if got := f.sums(t); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("ledger after a resend %v, want %v", got, want)
		}

		// The outbox: one entry per report, exported meter and hour, for
		// the exported meters only, named by its first record.
		es := must[[]*store.OutboxEntry](t)(s.ClaimExports(ctx, "test", 100, time.Minute))
		type ek struct {
			meter string
			seq   int64
		}
		got := map[ek]*store.OutboxEntry{}
		for _, e := range es {
			got[ek{state.MeterKey(e.Meter, e.Direction), e.FirstSeq}] = e
			if e.EventID != state.UsageEventID(f.dev.ApplianceID, e.FirstSeq, e.Meter, e.Direction) || e.SiteID != f.hq || e.MeterName != exportMeters[state.MeterKey(e.Meter, e.Direction)] {
				t.Errorf("entry %+v", e)
			}
		}
		if len(es) != 9 {
			t.Fatalf("%d outbox entries, want 9 (3 meters x (hour 1 of report 1, hour 2, report 2)): %v", len(es), got)
		}
		if e := got[ek{"overlay.rx", 5}]; e == nil || e.Bytes != 6000 || e.Packets != 60 || e.Records != 2 || !e.Hour.Equal(f.hour) ||
			!e.Start.Equal(f.hour) || !e.End.Equal(f.hour.Add(20*time.Second)) {
			t.Errorf("overlay rx entry of the first report: %+v", e)
		}
		if e := got[ek{"gateway.tx", 8}]; e == nil || e.Bytes != 2400 || e.Records != 1 {
			t.Errorf("gateway tx entry of the resend: %+v", e)
		}
		var exported int64
		for _, e := range es {
			if e.Meter == "overlay" && e.Direction == "tx" {
				exported += e.Bytes
			}
		}
		if exported != want["overlay.tx"] {
			t.Errorf("outbox carries %d overlay tx bytes, ledger %d", exported, want["overlay.tx"])
		}
		// Ids are distinct and deterministic.
		ids := map[string]bool{}
		for _, e := range es {
			ids[e.EventID] = true
		}
		if len(ids) != len(es) || state.UsageEventID("ap_1", 5, "overlay", "tx") != state.UsageEventID("ap_1", 5, "overlay", "tx") ||
			state.UsageEventID("ap_1", 5, "overlay", "tx") == state.UsageEventID("ap_1", 5, "overlay", "rx") {
			t.Error("event ids are not unique and deterministic")
		}

		// By day, everything in one bucket.
		rep = must[*state.UsageReport](t)(s.Usage(ctx, operator, state.UsageQuery{Tenant: "acme", From: f.hour.Add(-time.Hour),
			To: f.hour.Add(time.Hour), By: 24 * time.Hour}))
		if len(rep.Lines) != 4 || !rep.Lines[0].Start.Equal(f.hour.Truncate(24*time.Hour)) || rep.Lines[3].Bytes != 15000 {
			t.Errorf("by day: %+v", rep.Lines)
		}
	})
}

func TestUsageRefusals(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		f := newUsageFixture(t, dsn)
		s := f.s
		// Another tenant's admin sees none of it.
		_, err := s.Usage(ctx, f.adminOther, state.UsageQuery{Tenant: "acme", From: f.hour, To: f.hour.Add(time.Hour), By: store.UsageHour})
		wantCode(t, err, state.CodeNotFound, `tenant "acme" not found`)
		must[[]int64](t)(s.ReportUsage(ctx, f.dev, []state.UsageRecord{f.record(1, 0, 1)}))
		rep := must[*state.UsageReport](t)(s.Usage(ctx, f.adminOther, state.UsageQuery{From: f.hour, To: f.hour.Add(time.Hour), By: store.UsageHour}))
		if len(rep.Lines) != 0 {
			t.Errorf("globex's admin sees %v", rep.Lines)
		}
		_, err = s.Usage(ctx, operator, state.UsageQuery{Site: "hq", From: f.hour, To: f.hour.Add(time.Hour), By: time.Minute})
		wantCode(t, err, state.CodeInvalid, "site: needs a tenant; by: want hour or day")
		_, err = s.Usage(ctx, operator, state.UsageQuery{From: f.hour, To: f.hour.Add(40 * 24 * time.Hour), By: store.UsageHour})
		wantCode(t, err, state.CodeInvalid, "from: at most 744h0m0s by hour")

		// Records older than the dedup retention are acknowledged, not counted.
		f.clock.Add(state.DefaultUsageDedupRetention)
		if acked := must[[]int64](t)(s.ReportUsage(ctx, f.dev, []state.UsageRecord{f.record(1, 0, 1), f.record(2, 0, 1)})); len(acked) != 2 {
			t.Fatalf("acked %v", acked)
		}
		if got := f.sums(t); got["overlay.tx"] != 1000 {
			t.Errorf("ledger after old records: %v", got)
		}
		must[struct{}](t)(struct{}{}, s.PruneUsage(ctx))

		// A revoked appliance is still identified, and its usage refused.
		must[*state.ApplianceInfo](t)(s.RevokeAppliance(ctx, operator, "acme", "hq-1"))
		dev, err := s.IdentifyDevice(ctx, f.cred)
		if err != nil || *dev != *f.dev {
			t.Fatalf("IdentifyDevice of a revoked appliance: %v, %v", dev, err)
		}
		_, err = s.ReportUsage(ctx, dev, []state.UsageRecord{f.record(9, time.Hour, 1)})
		wantCode(t, err, state.CodeForbidden, "was revoked")
		_, err = s.IdentifyDevice(ctx, "cwd_nope")
		wantCode(t, err, state.CodeUnauthenticated, "unknown device credential")

		// The billing customer: operators only, printable.
		admin := &state.Principal{TokenID: "at_a", Scope: store.ScopeTenantAdmin, TenantID: f.dev.TenantID}
		c := "cus_42"
		_, err = s.UpdateTenant(ctx, admin, "acme", state.TenantUpdate{BillingCustomer: &c})
		wantCode(t, err, state.CodeForbidden, "operator")
		_, err = s.UpdateTenant(ctx, f.adminOther, "acme", state.TenantUpdate{BillingCustomer: &c})
		wantCode(t, err, state.CodeNotFound, "not found")
		bad := "a\nb"
		_, err = s.UpdateTenant(ctx, operator, "acme", state.TenantUpdate{BillingCustomer: &bad})
		wantCode(t, err, state.CodeInvalid, "billing_customer")
		tn := must[*store.Tenant](t)(s.UpdateTenant(ctx, operator, "acme", state.TenantUpdate{BillingCustomer: &c}))
		if tn.BillingCustomer != c || must[*store.Tenant](t)(s.GetTenant(ctx, operator, "acme")).BillingCustomer != c {
			t.Errorf("billing customer not set: %+v", tn)
		}
		// Export administration is for operators.
		_, err = s.DeadLetters(ctx, admin, 10)
		wantCode(t, err, state.CodeForbidden, "operator")
		_, err = s.RetryDeadLetters(ctx, admin, nil)
		wantCode(t, err, state.CodeForbidden, "operator")
		_, err = s.ExportQueue(ctx, admin)
		wantCode(t, err, state.CodeForbidden, "operator")
	})
}

// TestUsageExactlyOnceAcrossReplicas: two replicas receive the same
// batches at the same time (an appliance that retried on another replica
// while the first still worked); each record counts once.
func TestUsageExactlyOnceAcrossReplicas(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		f := newUsageFixture(t, dsn)
		s2 := newUsageState(t, dsn, f.clock)
		var wg sync.WaitGroup
		const batches, size = 6, 20
		for _, s := range []*state.State{f.s, s2, f.s, s2} {
			wg.Go(func() {
				for b := range batches {
					var recs []state.UsageRecord
					for i := range size {
						seq := int64(b*size + i + 1)
						recs = append(recs, f.record(seq, time.Duration(seq)*10*time.Second, 1))
					}
					// The other appliance of the tenant reports too,
					// to the same ledger rows in the other direction.
					if _, err := s.ReportUsage(ctx, f.dev, recs); err != nil {
						t.Error(err)
						return
					}
					if _, err := s.ReportUsage(ctx, f.brDev, recs[:size/2]); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		n := int64(batches * size)
		got := f.sums(t)
		if got["overlay.tx"] != 1000*n+1000*n/2 || got["gateway.rx"] != 400*n+400*n/2 {
			t.Fatalf("ledger %v after %d records of hq and %d of br sent four times each", got, n, n/2)
		}
		var entries, bytes int64
		for {
			es := must[[]*store.OutboxEntry](t)(f.s.ClaimExports(ctx, "test", 100, time.Minute))
			if len(es) == 0 {
				break
			}
			for _, e := range es {
				entries++
				if e.Meter == "overlay" && e.Direction == "tx" {
					bytes += e.Bytes
				}
			}
		}
		if bytes != got["overlay.tx"] {
			t.Errorf("outbox carries %d overlay tx bytes in %d entries, ledger %d", bytes, entries, got["overlay.tx"])
		}
	})
}

// TestUsageEventIDStable pins the id derivation: receivers deduplicate by
// it, so it must never change. (Python: uuid.uuid5(uuid.uuid5(
// uuid.NAMESPACE_URL, "https://causeway.dev/ns/metering/usage"),
// "ap_5f0c2a9e8b1d4c37/1042/overlay/tx").)
func TestUsageEventIDStable(t *testing.T) {
	if id := state.UsageEventID("ap_5f0c2a9e8b1d4c37", 1042, "overlay", "tx"); id != "f94bd545-0bac-55be-8122-48146c5ceea5" {
		t.Fatalf("UsageEventID = %s", id)
	}
}

// BenchmarkReportUsage measures ingest: one report of 500 records of 4
// counts each, all exported, per iteration.
func BenchmarkReportUsage(b *testing.B) {
	for _, engine := range []string{"sqlite", "postgres"} {
		b.Run(engine, func(b *testing.B) {
			dsn := storetest.SQLiteDSN(b)
			if engine == "postgres" {
				dsn = storetest.PostgresDSN(b)
			}
			s, err := state.New(ctx, state.Options{Store: storetest.Open(b, dsn), ExportMeters: map[string]string{
				"overlay.tx": "a", "overlay.rx": "b", "gateway.tx": "c", "gateway.rx": "d"}})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			if _, err := s.CreateTenant(ctx, operator, "acme"); err != nil {
				b.Fatal(err)
			}
			for i, n := range []string{"hq", "br"} {
				if _, err := s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: n, Kind: store.SiteOffice, LANPrefixes: pfx(fmt.Sprintf("10.%d.0.0/24", i+1))}); err != nil {
					b.Fatal(err)
				}
			}
			_, tok, err := s.CreateEnrollmentToken(ctx, operator, "acme", state.EnrollmentTokenInput{Site: "hq"})
			if err != nil {
				b.Fatal(err)
			}
			k, _ := wgkey.NewPrivate()
			en, err := s.Enroll(ctx, state.EnrollInput{Token: tok, PublicKey: k.Public()})
			if err != nil {
				b.Fatal(err)
			}
			dev, _ := s.IdentifyDevice(ctx, en.Credential)
			br, _ := s.GetSite(ctx, operator, "acme", "br")
			f := &usageFixture{br: br.ID, hour: time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Hour)}
			seq := int64(0)
			b.ResetTimer()
			for range b.N {
				recs := make([]state.UsageRecord, 500)
				for i := range recs {
					seq++
					recs[i] = f.record(seq, time.Duration(seq%300)*10*time.Second, 1)
				}
				if _, err := s.ReportUsage(ctx, dev, recs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*500)/b.Elapsed().Seconds(), "records/s")
		})
	}
}
