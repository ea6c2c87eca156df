package metering_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/metering"
	"github.com/causeway-net/causeway/controller/metering/sink"
	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/controller/store/storetest"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

var (
	ctx      = context.Background()
	operator = &state.Principal{TokenID: "at_test", Scope: store.ScopeOperator}
)

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// env is a controller state with one tenant (acme, billed to cus_acme)
// of two sites, an appliance at hq reporting usage, and a meter sink.
type env struct {
	t     testing.TB
	dsn   string
	s     *state.State
	dev   *state.Device
	cred  string
	br    string
	hour  time.Time
	seq   atomic.Int64
	sink  *sink.Sink
	sinkH http.Handler
}

func newEnv(t testing.TB, dsn string) *env {
	t.Helper()
	e := &env{t: t, dsn: dsn}
	e.s = e.replica()
	must[*store.Tenant](t)(e.s.CreateTenant(ctx, operator, "acme"))
	c := "cus_acme"
	must[*store.Tenant](t)(e.s.UpdateTenant(ctx, operator, "acme", state.TenantUpdate{BillingCustomer: &c}))
	for i, name := range []string{"hq", "br"} {
		site := must[*store.Site](t)(e.s.CreateSite(ctx, operator, "acme", state.SiteInput{Name: name, Kind: store.SiteOffice,
			LANPrefixes: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/24", i+1))}}))
		if name == "br" {
			e.br = site.ID
		}
	}
	_, tok, err := e.s.CreateEnrollmentToken(ctx, operator, "acme", state.EnrollmentTokenInput{Site: "hq"})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := wgkey.NewPrivate()
	en := must[*state.Enrolled](t)(e.s.Enroll(ctx, state.EnrollInput{Token: tok, Name: "hq-1", PublicKey: k.Public()}))
	e.cred = en.Credential
	e.dev = must[*state.Device](t)(e.s.IdentifyDevice(ctx, en.Credential))
	e.hour = time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Hour)
	e.sink = must[*sink.Sink](t)(sink.Open(ctx, sink.Options{DB: filepath.Join(t.TempDir(), "sink.db")}))
	t.Cleanup(func() { e.sink.Close() })
	e.sinkH = e.sink.Handler()
	return e
}

// replica opens another controller state on the same database.
func (e *env) replica() *state.State {
	s, err := state.New(ctx, state.Options{Store: storetest.Open(e.t, e.dsn), ExportMeters: metering.DefaultMeters})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { s.Close() })
	return s
}

// report sends n records of hq's usage, each in one of the three hours
// after e.hour.
func (e *env) report(n int) {
	e.t.Helper()
	var recs []state.UsageRecord
	for range n {
		seq := e.seq.Add(1)
		start := e.hour.Add(time.Duration(seq%3)*time.Hour + time.Duration(seq%300)*10*time.Second)
		recs = append(recs, state.UsageRecord{Seq: seq, Start: start, End: start.Add(10 * time.Second), Usage: []state.UsageCount{
			{Meter: store.MeterOverlay, PeerSite: e.br, Direction: store.DirectionTx, Bytes: 1000 + seq, Packets: 10},
			{Meter: store.MeterOverlay, PeerSite: e.br, Direction: store.DirectionRx, Bytes: 2000 + seq, Packets: 20},
			{Meter: store.MeterGateway, Direction: store.DirectionTx, Bytes: 300, Packets: 3},
			{Meter: store.MeterGateway, Direction: store.DirectionRx, Bytes: 0, Packets: 0},
		}})
	}
	if _, err := e.s.ReportUsage(ctx, e.dev, recs); err != nil {
		e.t.Fatal(err)
	}
}

// ledger sums the ledger's bytes per exported meter name and hour.
func (e *env) ledger() map[string]int64 {
	e.t.Helper()
	rep := must[*state.UsageReport](e.t)(e.s.Usage(ctx, operator, state.UsageQuery{Tenant: "acme", From: e.hour.Add(-time.Hour),
		To: e.hour.Add(5 * time.Hour), By: store.UsageHour}))
	out := map[string]int64{}
	for _, l := range rep.Lines {
		if l.Bytes > 0 {
			out[metering.DefaultMeters[state.MeterKey(l.Meter, l.Direction)]+" "+l.Start.Format(time.RFC3339)] += l.Bytes
		}
	}
	return out
}

// received sums what the sink stored per meter and hour.
func (e *env) received() (map[string]int64, *sink.Totals) {
	e.t.Helper()
	tot := must[*sink.Totals](e.t)(e.sink.Totals(ctx, []string{"customer", "meter", "hour"}))
	out := map[string]int64{}
	for _, g := range tot.Groups {
		if g.Customer != "cus_acme" {
			e.t.Errorf("group of customer %q", g.Customer)
		}
		out[g.Meter+" "+g.Hour] += g.Bytes
	}
	return out, tot
}

// queue reads the outbox.
func (e *env) queue() store.OutboxStats {
	return must[store.OutboxStats](e.t)(e.s.OutboxStats(ctx))
}

// checkTotals waits until the outbox is empty and checks that the sink's
// sums equal the ledger's.
func (e *env) checkTotals(within time.Duration) *sink.Totals {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for e.queue().Pending > 0 {
		if time.Now().After(deadline) {
			e.t.Fatalf("outbox not empty after %s: %+v", within, e.queue())
		}
		time.Sleep(20 * time.Millisecond)
	}
	got, tot := e.received()
	want := e.ledger()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		e.t.Fatalf("sink sums %v\nledger sums %v", got, want)
	}
	return tot
}

// fastConfig retries quickly.
func fastConfig(url string) metering.Config {
	return metering.Config{URL: url, BatchSize: 10, MaxAttempts: 5, Timeout: 10 * time.Second,
		BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, PollInterval: 20 * time.Millisecond}
}

// worker is a running Worker.
type worker struct {
	*metering.Worker
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// Stop cancels the worker and returns what Run returned.
func (w *worker) Stop() error { w.cancel(); return w.Wait() }

// Wait waits for Run to return by itself.
func (w *worker) Wait() error { <-w.done; return w.err }

// run starts a worker until the test ends.
func run(t testing.TB, ob metering.Outbox, cfg metering.Config) *worker {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	mw, err := metering.New(ob, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	w := &worker{Worker: mw, cancel: cancel, done: make(chan struct{})}
	go func() {
		w.err = mw.Run(rctx)
		close(w.done)
	}()
	t.Cleanup(func() { w.Stop() })
	return w
}

// recorder is a stand-in for the metering API: it answers with script's
// status for the n-th request (0 = pass to the sink) and records when
// each request came.
type recorder struct {
	mu     sync.Mutex
	times  []time.Time
	script func(n int, w http.ResponseWriter) bool // true: answered
	next   http.Handler
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	n := len(r.times)
	r.times = append(r.times, time.Now())
	r.mu.Unlock()
	if r.script != nil && r.script(n, w) {
		return
	}
	r.next.ServeHTTP(w, req)
}

func (r *recorder) requests() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.times...)
}

func TestExportRetries(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		e := newEnv(t, dsn)
		e.report(25)
		rec := &recorder{next: e.sinkH, script: func(n int, w http.ResponseWriter) bool {
			switch n {
			case 0, 1:
				http.Error(w, "upstream down", http.StatusServiceUnavailable)
			case 2:
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, `{"accepted": 3`) // malformed
			case 3:
				w.WriteHeader(http.StatusRequestTimeout)
			case 4:
				hj, _ := w.(http.Hijacker)
				conn, buf, _ := hj.Hijack()
				buf.WriteString("definitely not HTTP\r\n\r\n")
				buf.Flush()
				conn.Close()
			default:
				return false
			}
			return true
		}}
		srv := httptest.NewServer(rec)
		defer srv.Close()
		cfg := fastConfig(srv.URL)
		cfg.MaxAttempts = 10
		w := run(t, e.s, cfg)
		tot := e.checkTotals(10 * time.Second)
		if tot.Duplicates != 0 || tot.Events == 0 {
			t.Errorf("sink totals %+v", tot)
		}
		st := w.Status()
		if st.Retried < 5 || st.Sent != tot.Events || st.Dead != 0 || st.LastError == "" {
			t.Errorf("status %+v", st)
		}
		if q := e.queue(); q.Dead != 0 {
			t.Errorf("queue %+v", q)
		}
		// The failed requests carried the same batch as the one accepted.
		if n := len(rec.requests()); int64(n) < 5+tot.Events/int64(cfg.BatchSize) {
			t.Errorf("%d requests for %d events", n, tot.Events)
		}
	})
}

func TestExportRetryAfter(t *testing.T) {
	t.Parallel()
	for _, form := range []string{"seconds", "http-date"} {
		t.Run(form, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, storetest.SQLiteDSN(t))
			e.report(3)
			var until time.Time
			rec := &recorder{next: e.sinkH}
			rec.script = func(n int, w http.ResponseWriter) bool {
				if n > 0 {
					return false
				}
				if form == "seconds" {
					until = time.Now().Add(time.Second)
					w.Header().Set("Retry-After", "1")
				} else {
					until = time.Now().Add(2 * time.Second).Truncate(time.Second).Add(time.Second)
					w.Header().Set("Retry-After", until.Format(http.TimeFormat))
				}
				http.Error(w, "slow down", http.StatusTooManyRequests)
				return true
			}
			srv := httptest.NewServer(rec)
			defer srv.Close()
			cfg := fastConfig(srv.URL)
			cfg.MaxAttempts = 1 // a 429 is not an attempt
			w := run(t, e.s, cfg)
			e.checkTotals(10 * time.Second)
			reqs := rec.requests()
			if len(reqs) < 2 {
				t.Fatalf("%d requests", len(reqs))
			}
			// The second request waited for Retry-After, and not much longer.
			if early := until.Sub(reqs[1]); early > 20*time.Millisecond {
				t.Errorf("second request %s before Retry-After", early)
			}
			if late := reqs[1].Sub(until); late > 1500*time.Millisecond {
				t.Errorf("second request %s after Retry-After", late)
			}
			if st := w.Status(); st.Throttled == 0 || st.Dead != 0 || st.PausedUntil.IsZero() {
				t.Errorf("status %+v", st)
			}
		})
	}
}

func TestExportDeadLetters(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		e := newEnv(t, dsn)
		e.report(2)
		var mode atomic.Value
		mode.Store("503")
		rec := &recorder{next: e.sinkH, script: func(n int, w http.ResponseWriter) bool {
			switch mode.Load() {
			case "503":
				http.Error(w, "still down", http.StatusServiceUnavailable)
			case "400":
				http.Error(w, `{"error": "meter causeway.overlay.tx.bytes unknown"}`, http.StatusBadRequest)
			default:
				return false
			}
			return true
		}}
		srv := httptest.NewServer(rec)
		defer srv.Close()
		cfg := fastConfig(srv.URL)
		cfg.MaxAttempts = 3
		w := run(t, e.s, cfg)
		waitFor(t, 10*time.Second, func() bool { return e.queue().Pending == 0 })
		q := e.queue()
		dl := must[[]*store.OutboxEntry](t)(e.s.DeadLetters(ctx, operator, 100))
		if q.Dead == 0 || int64(len(dl)) != q.Dead {
			t.Fatalf("queue %+v, %d dead letters", q, len(dl))
		}
		for _, d := range dl {
			if d.Attempts != 3 || d.LastError != "gave up after 3 attempts: HTTP 503 Service Unavailable: still down" {
				t.Errorf("dead letter %+v", d)
			}
		}
		if n := len(rec.requests()); n != 3*int((q.Dead+int64(cfg.BatchSize)-1)/int64(cfg.BatchSize)) {
			t.Errorf("%d requests for %d dead letters in batches of %d", n, q.Dead, cfg.BatchSize)
		}
		if st := w.Status(); st.Dead != q.Dead || st.Sent != 0 {
			t.Errorf("status %+v", st)
		}

		// A 4xx other than 408 and 429 is final at once, with the answer.
		mode.Store("400")
		if n := must[int64](t)(e.s.RetryDeadLetters(ctx, operator, nil)); n != q.Dead {
			t.Fatalf("retried %d of %d", n, q.Dead)
		}
		waitFor(t, 10*time.Second, func() bool { return e.queue().Pending == 0 })
		dl = must[[]*store.OutboxEntry](t)(e.s.DeadLetters(ctx, operator, 100))
		for _, d := range dl {
			if d.Attempts != 1 || !strings.HasPrefix(d.LastError, `HTTP 400 Bad Request: {"error": "meter causeway.overlay.tx.bytes unknown"}`) {
				t.Errorf("dead letter after a 400: %+v", d)
			}
		}

		// Retried once the API is fixed, they arrive.
		mode.Store("ok")
		w.Stop()
		run(t, e.s, cfg)
		must[int64](t)(e.s.RetryDeadLetters(ctx, operator, []string{dl[0].EventID}))
		waitFor(t, 10*time.Second, func() bool { return e.queue().Pending == 0 })
		if q := e.queue(); q.Dead != int64(len(dl))-1 {
			t.Errorf("after retrying one: %+v", q)
		}
		must[int64](t)(e.s.RetryDeadLetters(ctx, operator, nil))
		tot := e.checkTotals(10 * time.Second)
		if tot.Duplicates != 0 {
			t.Errorf("duplicates %d", tot.Duplicates)
		}
	})
}

func TestExportNoCustomer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, storetest.SQLiteDSN(t))
	none := ""
	must[*store.Tenant](t)(e.s.UpdateTenant(ctx, operator, "acme", state.TenantUpdate{BillingCustomer: &none}))
	// Ingestion does not care.
	e.report(4)
	srv := httptest.NewServer(e.sinkH)
	defer srv.Close()
	run(t, e.s, fastConfig(srv.URL))
	waitFor(t, 10*time.Second, func() bool { return e.queue().Pending == 0 })
	dl := must[[]*store.OutboxEntry](t)(e.s.DeadLetters(ctx, operator, 100))
	if len(dl) == 0 {
		t.Fatal("no dead letters")
	}
	for _, d := range dl {
		if d.LastError != "no billing customer for tenant "+e.dev.TenantID+" acme" {
			t.Errorf("dead letter %+v", d)
		}
	}
	if tot := must[*sink.Totals](t)(e.sink.Totals(ctx, nil)); tot.Events != 0 {
		t.Errorf("the sink got %d events", tot.Events)
	}
	c := "cus_acme"
	must[*store.Tenant](t)(e.s.UpdateTenant(ctx, operator, "acme", state.TenantUpdate{BillingCustomer: &c}))
	must[int64](t)(e.s.RetryDeadLetters(ctx, operator, nil))
	e.checkTotals(10 * time.Second)
}

// TestExportRestartMidSend: the worker stops between the API accepting a
// batch and recording it as sent. The next worker (after the lease) sends
// the same events again with the same ids; the sink keeps one copy, and
// its sums equal the ledger's.
func TestExportRestartMidSend(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		e := newEnv(t, dsn)
		e.report(30)
		srv := httptest.NewServer(e.sinkH)
		defer srv.Close()
		cfg := fastConfig(srv.URL)
		// A timeout long enough that no send times out on a busy machine
		// (the sink may have stored a batch whose answer came too late,
		// which would make another copy), and a lease just above it.
		cfg.Timeout, cfg.Lease = 3*time.Second, 3500*time.Millisecond
		var crashed []string
		cfg.TestOnlyAfterSend = func(ids []string) error {
			if crashed == nil {
				crashed = ids
				return metering.ErrStopped
			}
			return nil
		}
		if err := run(t, e.s, cfg).Wait(); !errors.Is(err, metering.ErrStopped) {
			t.Fatalf("worker ended with %v", err)
		}
		if tot := must[*sink.Totals](t)(e.sink.Totals(ctx, nil)); tot.Events != int64(len(crashed)) {
			t.Fatalf("sink has %d events, the crashed batch %d", tot.Events, len(crashed))
		}
		// A restarted controller (another replica's worker, for that
		// matter) with a fresh owner.
		start := time.Now()
		cfg.TestOnlyAfterSend = nil
		run(t, e.replica(), cfg)
		tot := e.checkTotals(10 * time.Second)
		if time.Since(start) < 2*time.Second {
			t.Errorf("the claimed batch was sent again %s after the crash, before its lease ran out", time.Since(start))
		}
		if tot.Duplicates != int64(len(crashed)) {
			t.Errorf("sink saw %d copies, want the %d events of the crashed batch", tot.Duplicates, len(crashed))
		}
		twice := map[string]bool{}
		for _, ev := range must[[]sink.Stored](t)(e.sink.Events(ctx, 1000)) {
			if ev.Copies > 1 {
				twice[ev.ID] = true
			}
			if ev.Copies > 2 {
				t.Errorf("event %s received %d times", ev.ID, ev.Copies)
			}
		}
		for _, id := range crashed {
			if !twice[id] {
				t.Errorf("event %s of the crashed batch was not sent again under its id", id)
			}
		}
		if len(twice) != len(crashed) {
			t.Errorf("%d events received twice, the crashed batch had %d", len(twice), len(crashed))
		}
	})
}

// TestExportShutdownMidSend: a worker stopped while it waits for an
// answer releases its batch at once, without counting an attempt.
func TestExportShutdownMidSend(t *testing.T) {
	t.Parallel()
	e := newEnv(t, storetest.SQLiteDSN(t))
	e.report(3)
	e.sink.SetDelay(3 * time.Second)
	srv := httptest.NewServer(e.sinkH)
	defer srv.Close()
	cfg := fastConfig(srv.URL)
	w := run(t, e.s, cfg)
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("stopping took %s", d)
	}
	es := must[[]*store.OutboxEntry](t)(e.s.ClaimExports(ctx, "test", 100, time.Minute))
	if len(es) != int(e.queue().Pending) || len(es) == 0 {
		t.Fatalf("claimable after the stop: %d of %+v", len(es), e.queue())
	}
	for _, en := range es {
		if en.Attempts != 0 {
			t.Errorf("entry %s has %d attempts", en.EventID, en.Attempts)
		}
	}
}

// TestExportOutage: the API is down for a while as usage keeps coming,
// then back: every event arrives once, and the sums agree.
func TestExportOutage(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		e := newEnv(t, dsn)
		srv := httptest.NewServer(e.sinkH)
		defer srv.Close()
		if err := e.sink.SetFault(sink.Fault{Mode: sink.Fault500, Until: time.Now().Add(1500 * time.Millisecond)}); err != nil {
			t.Fatal(err)
		}
		cfg := fastConfig(srv.URL)
		cfg.MaxAttempts = 1000
		cfg.BackoffMax = 200 * time.Millisecond
		w := run(t, e.s, cfg)
		for range 10 {
			e.report(7)
			time.Sleep(100 * time.Millisecond)
		}
		if q := e.queue(); q.Pending == 0 {
			t.Fatalf("nothing queued during the outage: %+v", q)
		}
		tot := e.checkTotals(15 * time.Second)
		if tot.Duplicates != 0 {
			t.Errorf("%d duplicates", tot.Duplicates)
		}
		for _, ev := range must[[]sink.Stored](t)(e.sink.Events(ctx, 1000)) {
			if ev.Copies != 1 {
				t.Errorf("event %s received %d times", ev.ID, ev.Copies)
			}
		}
		if st := w.Status(); st.Retried == 0 || st.Sent != tot.Events || st.EventsPerSecond <= 0 {
			t.Errorf("status %+v", st)
		}
	})
}

// TestExportReplicas: workers of two replicas on one database never send
// an event twice.
func TestExportReplicas(t *testing.T) {
	t.Parallel()
	storetest.Engines(t, func(t *testing.T, dsn string) {
		t.Parallel()
		e := newEnv(t, dsn)
		e.report(200)
		srv := httptest.NewServer(e.sinkH)
		defer srv.Close()
		cfg := fastConfig(srv.URL)
		cfg.BatchSize = 7
		w1 := run(t, e.s, cfg)
		w2 := run(t, e.replica(), cfg)
		tot := e.checkTotals(20 * time.Second)
		if tot.Duplicates != 0 {
			t.Errorf("%d events sent twice", tot.Duplicates)
		}
		s1, s2 := w1.Status(), w2.Status()
		if s1.Sent+s2.Sent != tot.Events {
			t.Errorf("workers sent %d + %d, sink has %d", s1.Sent, s2.Sent, tot.Events)
		}
	})
}

func waitFor(t *testing.T, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBackoff(t *testing.T) {
	base, ceil := 100*time.Millisecond, 2*time.Second
	limit := base
	for n := 1; n <= 70; n++ {
		if n > 1 {
			limit = min(ceil, 2*limit)
		}
		var most time.Duration
		seen := map[time.Duration]bool{}
		for range 200 {
			d := metering.Backoff(base, ceil, n)
			if d < limit/2 || d > limit {
				t.Fatalf("Backoff(n=%d) = %s, outside [%s, %s]", n, d, limit/2, limit)
			}
			most = max(most, d)
			seen[d] = true
		}
		// Equal jitter: spread over the upper half, not a fixed delay.
		if len(seen) < 100 || most < limit*3/4 {
			t.Errorf("n=%d: %d distinct delays, largest %s of %s", n, len(seen), most, limit)
		}
	}
}

// TestBackoffOutlastsAnOutage: with the default settings, the failed
// attempts that make an entry a dead letter span more than four minutes
// however the jitter falls, so a metering API down for two minutes
// leaves no dead letter.
func TestBackoffOutlastsAnOutage(t *testing.T) {
	shortest := time.Duration(1 << 62)
	for range 2000 {
		var span time.Duration
		for n := 1; n < metering.DefaultMaxAttempts; n++ {
			span += metering.Backoff(metering.DefaultBackoffBase, metering.DefaultBackoffMax, n)
		}
		shortest = min(shortest, span)
	}
	if shortest < 4*time.Minute {
		t.Errorf("%d failed attempts fit in %s", metering.DefaultMaxAttempts, shortest)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"3", 3 * time.Second, true},
		{" 0 ", 0, true},
		{"Sun, 01 Mar 2026 10:00:07 GMT", 7 * time.Second, true},
		{"Sun, 01 Mar 2026 09:00:00 GMT", 0, true},
		{"-1", 0, false},
		{"soon", 0, false},
		{"", 0, false},
	} {
		d, ok := metering.RetryAfter(c.in, now)
		if d != c.want || ok != c.ok {
			t.Errorf("RetryAfter(%q) = %s, %v; want %s, %v", c.in, d, ok, c.want, c.ok)
		}
	}
}

func TestParseMeters(t *testing.T) {
	m, err := metering.ParseMeters(metering.FormatMeters(metering.DefaultMeters))
	if err != nil || fmt.Sprint(m) != fmt.Sprint(metering.DefaultMeters) {
		t.Fatalf("round trip: %v, %v", m, err)
	}
	if m, err := metering.ParseMeters("none"); err != nil || len(m) != 0 {
		t.Errorf("none: %v, %v", m, err)
	}
	for _, bad := range []string{"", "overlay=x", "overlay.up=x", "wifi.tx=x", "overlay.tx=", "overlay.tx=a b", "overlay.tx=a,overlay.tx=b"} {
		if _, err := metering.ParseMeters(bad); err == nil {
			t.Errorf("ParseMeters(%q) accepted", bad)
		}
	}
	for _, cfg := range []metering.Config{{URL: "ftp://x"}, {URL: "http://x", BatchSize: 5000}, {URL: "http://x", Timeout: time.Minute, Lease: time.Second}} {
		if _, err := metering.New(nil, cfg); err == nil {
			t.Errorf("New accepted %+v", cfg)
		}
	}
}

// BenchmarkExport measures the export into the meter sink (SQLite with
// synchronous writes on both sides), batches of 100: events per second.
func BenchmarkExport(b *testing.B) {
	e := newEnv(b, storetest.SQLiteDSN(b))
	srv := httptest.NewServer(e.sinkH)
	defer srv.Close()
	for range b.N {
		e.report(500) // 9 events: 3 hours x the 3 meters that carry bytes
	}
	q := e.queue()
	b.ResetTimer()
	start := time.Now()
	cfg := fastConfig(srv.URL)
	cfg.BatchSize = 100
	w := run(b, e.s, cfg)
	for e.queue().Pending > 0 {
		time.Sleep(time.Millisecond)
	}
	w.Stop()
	b.ReportMetric(float64(q.Pending)/time.Since(start).Seconds(), "events/s")
}
