package metering

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/causeway-net/causeway/controller/store"
)

// Defaults for Config.
const (
	DefaultBatchSize     = 100
	DefaultMaxAttempts   = 10
	DefaultTimeout       = 30 * time.Second
	DefaultBackoffBase   = time.Second
	DefaultBackoffMax    = 5 * time.Minute
	DefaultMaxRetryAfter = time.Hour
	DefaultPollInterval  = time.Second
	// MaxBatchSize bounds Config.BatchSize.
	MaxBatchSize = 1000
	// snippetLen bounds the part of an answer kept in a dead letter's reason.
	snippetLen = 200
)

// Outbox is the worker's view of the export outbox; *state.State is one.
type Outbox interface {
	// ClaimExports gives owner up to limit due entries for lease.
	ClaimExports(ctx context.Context, owner string, limit int, lease time.Duration) ([]*store.OutboxEntry, error)
	// FinishExports deletes the sent entries and records the others'
	// fate, in one transaction.
	FinishExports(ctx context.Context, sent []string, failed []store.OutboxUpdate) error
	// ExportTenants returns the name and billing customer of each
	// existing tenant among ids.
	ExportTenants(ctx context.Context, ids []string) (map[string]store.TenantBilling, error)
	// OutboxStats sums up the outbox.
	OutboxStats(ctx context.Context) (store.OutboxStats, error)
}

// Config configures a Worker. URL is required.
type Config struct {
	// URL is where events are POSTed, in structured batch mode
	// (application/cloudevents-batch+json), BatchSize at most per request.
	URL string
	// Auth, if set, is sent as the Authorization header ("Bearer …").
	Auth string
	// BatchSize bounds the events of one request; 0 means
	// DefaultBatchSize.
	BatchSize int
	// MaxAttempts is how many failed sends make an entry a dead letter;
	// 0 means DefaultMaxAttempts. Answers 429 do not count.
	MaxAttempts int
	// Timeout bounds one request, answer included; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// The delay after the n-th failure in a row is uniform in [c/2, c],
	// c = min(BackoffMax, BackoffBase·2ⁿ⁻¹) (equal jitter); 0 means the
	// defaults.
	BackoffBase, BackoffMax time.Duration
	// MaxRetryAfter bounds the wait a 429's Retry-After asks for; 0 means
	// DefaultMaxRetryAfter.
	MaxRetryAfter time.Duration
	// Lease is how long a claim keeps other senders off an entry; it must
	// exceed Timeout. 0 means Timeout + 30s.
	Lease time.Duration
	// PollInterval is how often an idle worker looks for new entries; 0
	// means DefaultPollInterval.
	PollInterval time.Duration
	// Owner names this sender in claims; "" makes one from the host name,
	// the process id and a random suffix.
	Owner string
	// HTTPClient replaces the default client (its Timeout is left alone).
	HTTPClient *http.Client
	Logger     *slog.Logger
	// TestOnlyAfterSend, if set, is called after the API accepted a batch
	// and before the entries are recorded as sent; an error stops the
	// worker there, as a crash would.
	TestOnlyAfterSend func(ids []string) error
}

// Status is the worker's view of the export.
type Status struct {
	// Endpoint is Config.URL without user info and query.
	Endpoint string
	Owner    string
	// Queue is the outbox as of QueueAt (refreshed about every second).
	Queue   store.OutboxStats
	QueueAt time.Time
	// Totals since the worker started: events the API accepted, sends
	// that failed and will be retried (per event), events throttled by a
	// 429, and events made dead letters.
	Sent, Retried, Throttled, Dead int64
	// EventsPerSecond is the rate of accepted events over the last minute.
	EventsPerSecond float64
	LastError       string
	LastErrorAt     time.Time
	LastSuccessAt   time.Time
	// PausedUntil is set while a 429's Retry-After holds the worker.
	PausedUntil time.Time
}

// Worker sends the outbox to the metering API. Run it in a goroutine of
// its own; its methods are safe for concurrent use.
type Worker struct {
	cfg    Config
	outbox Outbox
	http   *http.Client
	log    *slog.Logger

	events *prometheus.CounterVec

	mu       sync.Mutex
	st       Status
	recent   []sample // accepted batches of the last minute
	started  time.Time
	failures int // failed sends in a row
}

type sample struct {
	at time.Time
	n  int
}

// New checks cfg and makes a worker.
func New(outbox Outbox, cfg Config) (*Worker, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("metering: URL: want http(s)://host[:port]/path, got %q", cfg.URL)
	}
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.Timeout, DefaultTimeout)
	def(&cfg.BackoffBase, DefaultBackoffBase)
	def(&cfg.BackoffMax, DefaultBackoffMax)
	def(&cfg.MaxRetryAfter, DefaultMaxRetryAfter)
	def(&cfg.PollInterval, DefaultPollInterval)
	def(&cfg.Lease, cfg.Timeout+30*time.Second)
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	switch {
	case cfg.BatchSize > MaxBatchSize:
		return nil, fmt.Errorf("metering: batch size: at most %d, got %d", MaxBatchSize, cfg.BatchSize)
	case cfg.Lease <= cfg.Timeout:
		return nil, fmt.Errorf("metering: the lease (%s) must exceed the request timeout (%s)", cfg.Lease, cfg.Timeout)
	case cfg.BackoffMax < cfg.BackoffBase:
		return nil, fmt.Errorf("metering: the largest backoff (%s) is below the first (%s)", cfg.BackoffMax, cfg.BackoffBase)
	}
	if cfg.Owner == "" {
		host, _ := os.Hostname()
		var b [3]byte
		crand.Read(b[:])
		cfg.Owner = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{
			Timeout: cfg.Timeout,
			// A redirect is not an answer: it counts as a failure.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	w := &Worker{cfg: cfg, outbox: outbox, http: hc, log: log.With("component", "metering"), started: time.Now(),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "causeway_metering_events_total",
			Help: "Usage events by result: sent (accepted by the metering API), retried (a failed send, to be retried), throttled (answered 429), dead_letter.",
		}, []string{"result"}),
	}
	w.st.Endpoint, w.st.Owner = u.String(), cfg.Owner
	for _, r := range []string{"sent", "retried", "throttled", "dead_letter"} {
		w.events.WithLabelValues(r)
	}
	return w, nil
}

// Collectors are the worker's Prometheus metrics: the events counter and
// gauges of the outbox (queue length, oldest pending age, dead letters).
func (w *Worker) Collectors() []prometheus.Collector {
	gauge := func(name, help string, v func(Status) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return v(w.Status()) })
	}
	return []prometheus.Collector{w.events,
		gauge("causeway_metering_queue_length", "Usage events waiting to be sent (all replicas).", func(s Status) float64 { return float64(s.Queue.Pending) }),
		gauge("causeway_metering_oldest_age_seconds", "Age of the oldest usage event not yet sent; 0 when none waits.", func(s Status) float64 {
			return OldestAge(s.Queue, time.Now()).Seconds()
		}),
		gauge("causeway_metering_dead_letters", "Usage events given up on (all replicas).", func(s Status) float64 { return float64(s.Queue.Dead) }),
	}
}

// OldestAge is how long the oldest pending entry has waited.
func OldestAge(q store.OutboxStats, now time.Time) time.Duration {
	if q.Pending == 0 || q.OldestPending.IsZero() {
		return 0
	}
	return max(now.Sub(q.OldestPending), 0)
}

// Status reports the worker's view.
func (w *Worker) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.st
	now := time.Now()
	w.pruneLocked(now)
	var n int
	for _, s := range w.recent {
		n += s.n
	}
	window := min(now.Sub(w.started), time.Minute)
	if window > 0 {
		st.EventsPerSecond = float64(n) / window.Seconds()
	}
	return st
}

func (w *Worker) pruneLocked(now time.Time) {
	i := 0
	for i < len(w.recent) && now.Sub(w.recent[i].at) > time.Minute {
		i++
	}
	w.recent = w.recent[i:]
}

// Run sends until ctx ends. It returns nil then, or the error of
// TestOnlyAfterSend.
func (w *Worker) Run(ctx context.Context) error {
	w.log.Info("exporting usage", "endpoint", w.st.Endpoint, "owner", w.cfg.Owner, "batch", w.cfg.BatchSize, "max_attempts", w.cfg.MaxAttempts)
	var lastStats time.Time
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		if time.Since(lastStats) >= time.Second {
			lastStats = time.Now()
			if q, err := w.outbox.OutboxStats(ctx); err == nil {
				w.mu.Lock()
				w.st.Queue, w.st.QueueAt = q, lastStats
				w.mu.Unlock()
			} else if ctx.Err() == nil {
				w.log.Warn("reading the outbox", "err", err)
			}
		}
		wait, err := w.step(ctx)
		if err != nil {
			return err
		}
		timer.Reset(wait)
	}
}

// outcome is what a send came to.
type outcome int

const (
	sent      outcome = iota
	retry             // failed; try again after a backoff (counts as an attempt)
	throttled         // 429: try again after Retry-After (does not count)
	permanent         // refused for good: dead letters
	later             // not sent for a reason of ours: again after a backoff (does not count)
)

type answer struct {
	outcome    outcome
	reason     string
	retryAfter time.Duration // for throttled (0 if the answer named none) and later
}

// step sends one batch and returns how long to wait before the next.
func (w *Worker) step(ctx context.Context) (time.Duration, error) {
	entries, err := w.outbox.ClaimExports(ctx, w.cfg.Owner, w.cfg.BatchSize, w.cfg.Lease)
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("claiming usage events", "err", err)
		}
		return w.cfg.PollInterval, nil
	}
	if len(entries) == 0 {
		return w.cfg.PollInterval, nil
	}
	// Whatever happens from here, the claimed entries are released or
	// deleted, also when ctx ends meanwhile.
	fctx := context.WithoutCancel(ctx)
	seen := map[string]bool{}
	var tenantIDs []string
	for _, e := range entries {
		if !seen[e.TenantID] {
			seen[e.TenantID] = true
			tenantIDs = append(tenantIDs, e.TenantID)
		}
	}
	tenants, err := w.outbox.ExportTenants(ctx, tenantIDs)
	if err != nil {
		w.log.Warn("reading billing customers", "err", err)
		return w.release(fctx, entries, answer{outcome: later, reason: "reading billing customers: " + err.Error(), retryAfter: w.backoff(1)}), nil
	}
	var dead []store.OutboxUpdate
	var batch []*store.OutboxEntry
	var events []event.Event
	for _, e := range entries {
		tb, ok := tenants[e.TenantID]
		if !ok || tb.Customer == "" {
			name := tb.Name
			if !ok {
				name = "(deleted)"
			}
			dead = append(dead, store.OutboxUpdate{EventID: e.EventID, Attempts: e.Attempts, Dead: true,
				Error: fmt.Sprintf("no billing customer for tenant %s %s", e.TenantID, name)})
			continue
		}
		ev, err := NewEvent(e, tb)
		if err != nil {
			dead = append(dead, store.OutboxUpdate{EventID: e.EventID, Attempts: e.Attempts, Dead: true, Error: "building the event: " + err.Error()})
			continue
		}
		batch, events = append(batch, e), append(events, ev)
	}
	if len(dead) > 0 {
		w.count("dead_letter", len(dead), dead[0].Error)
		w.log.Warn("usage events made dead letters", "events", len(dead), "reason", dead[0].Error)
	}
	if len(batch) == 0 {
		if err := w.outbox.FinishExports(fctx, nil, dead); err != nil {
			w.log.Warn("recording dead letters", "err", err)
		}
		return 0, nil
	}
	ans := w.send(ctx, events)
	if ans.outcome != sent && ctx.Err() != nil {
		// Shutting down mid-send: not the API's failure.
		ans = answer{outcome: later, reason: "the controller stopped while sending"}
	}
	if ans.outcome != sent {
		return w.release(fctx, batch, ans, dead...), nil
	}
	ids := sortedIDs(batch)
	if w.cfg.TestOnlyAfterSend != nil {
		if err := w.cfg.TestOnlyAfterSend(ids); err != nil {
			return 0, err
		}
	}
	if err := w.outbox.FinishExports(fctx, ids, dead); err != nil {
		// They go again after the lease; the receiver drops the copies.
		w.log.Warn("recording sent usage events; they will be sent again", "err", err)
	}
	now := time.Now()
	w.mu.Lock()
	w.failures = 0
	w.st.Sent += int64(len(batch))
	w.st.LastSuccessAt = now
	w.recent = append(w.recent, sample{now, len(batch)})
	w.pruneLocked(now)
	w.mu.Unlock()
	w.events.WithLabelValues("sent").Add(float64(len(batch)))
	w.log.Debug("usage events sent", "events", len(batch))
	return 0, nil
}

// count adds n events to a result and records the error.
func (w *Worker) count(result string, n int, reason string) {
	w.events.WithLabelValues(result).Add(float64(n))
	w.mu.Lock()
	defer w.mu.Unlock()
	switch result {
	case "retried":
		w.st.Retried += int64(n)
	case "throttled":
		w.st.Throttled += int64(n)
	case "dead_letter":
		w.st.Dead += int64(n)
	}
	w.st.LastError, w.st.LastErrorAt = reason, time.Now()
}

// release records a failed send of entries (plus already decided dead
// letters) and returns how long the worker waits before the next batch.
func (w *Worker) release(ctx context.Context, entries []*store.OutboxEntry, ans answer, dead ...store.OutboxUpdate) time.Duration {
	now := time.Now()
	var wait time.Duration
	switch ans.outcome {
	case throttled:
		wait = ans.retryAfter
		if wait <= 0 {
			wait = w.backoff(1)
		}
		w.mu.Lock()
		w.st.PausedUntil = now.Add(wait)
		w.mu.Unlock()
	case later:
		wait = ans.retryAfter
	case retry:
		w.mu.Lock()
		w.failures++
		n := w.failures
		w.mu.Unlock()
		wait = w.backoff(n)
	}
	ups := dead
	var retried, gaveUp int
	for _, e := range entries {
		u := store.OutboxUpdate{EventID: e.EventID, Attempts: e.Attempts, NextAt: now.Add(wait), Error: ans.reason}
		switch ans.outcome {
		case retry:
			u.Attempts++
			if u.Attempts >= w.cfg.MaxAttempts {
				u.Dead, u.Error = true, fmt.Sprintf("gave up after %d attempts: %s", u.Attempts, ans.reason)
				gaveUp++
			} else {
				retried++
			}
		case permanent:
			u.Attempts++
			u.Dead = true
			gaveUp++
		}
		ups = append(ups, u)
	}
	switch ans.outcome {
	case throttled:
		w.count("throttled", len(entries), ans.reason)
		w.log.Info("metering API asked to slow down", "events", len(entries), "wait", wait.Round(time.Millisecond), "reason", ans.reason)
	case retry:
		w.count("retried", retried, ans.reason)
		w.log.Warn("sending usage events failed; retrying", "events", len(entries), "wait", wait.Round(time.Millisecond), "reason", ans.reason)
	}
	if gaveUp > 0 {
		w.count("dead_letter", gaveUp, ans.reason)
		w.log.Warn("usage events made dead letters", "events", gaveUp, "reason", ans.reason)
	}
	if err := w.outbox.FinishExports(ctx, nil, ups); err != nil {
		w.log.Warn("recording a failed send; the events go again after their lease", "err", err)
	}
	return wait
}

// backoff is the delay after the n-th failure in a row: equal jitter over
// an exponentially growing, capped range.
func (w *Worker) backoff(n int) time.Duration {
	return Backoff(w.cfg.BackoffBase, w.cfg.BackoffMax, n)
}

// Backoff returns a delay uniform in [c/2, c], c = min(maxDelay,
// base·2ⁿ⁻¹), for the n-th failure in a row (n >= 1). The lower half
// bounds how fast failures can add up: with the defaults, the 10th failed
// attempt of an entry comes at least 255 s after its first (the sum of
// the lower bounds, 0.5 s + 1 s + … + 128 s), so an outage of the API
// shorter than that makes no dead letter. Full jitter ([0, c]) would let
// ten attempts fit in two minutes about one time in twenty.
func Backoff(base, maxDelay time.Duration, n int) time.Duration {
	ceil := maxDelay
	if n < 1 {
		n = 1
	}
	if n-1 < 62 {
		if d := base << (n - 1); d > 0 && d < maxDelay && d>>(n-1) == base {
			ceil = d
		}
	}
	half := ceil / 2
	return half + time.Duration(rand.Int64N(int64(ceil-half)+1))
}

// send POSTs one batch and judges the answer.
func (w *Worker) send(ctx context.Context, events []event.Event) answer {
	rctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := cehttp.NewHTTPRequestFromEvents(rctx, w.cfg.URL, events)
	if err != nil {
		return answer{outcome: retry, reason: "building the request: " + err.Error()}
	}
	if w.cfg.Auth != "" {
		req.Header.Set("Authorization", w.cfg.Auth)
	}
	req.Header.Set("User-Agent", "causeway-controller")
	res, err := w.http.Do(req)
	if err != nil {
		return answer{outcome: retry, reason: "sending: " + redact(err.Error(), w.cfg.URL, w.st.Endpoint)}
	}
	defer res.Body.Close()
	body, rerr := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	status := fmt.Sprintf("HTTP %d %s", res.StatusCode, http.StatusText(res.StatusCode))
	switch c := res.StatusCode; {
	case c >= 200 && c < 300:
		if rerr != nil {
			return answer{outcome: retry, reason: "malformed answer: " + status + ", reading the body: " + rerr.Error()}
		}
		if isJSON(res.Header.Get("Content-Type")) && len(bytes.TrimSpace(body)) > 0 && !json.Valid(body) {
			return answer{outcome: retry, reason: "malformed answer: " + status + " with a body that is not JSON: " + snippet(body)}
		}
		return answer{outcome: sent}
	case c == http.StatusTooManyRequests:
		ra, _ := RetryAfter(res.Header.Get("Retry-After"), time.Now())
		return answer{outcome: throttled, reason: status + withSnippet(body), retryAfter: min(ra, w.cfg.MaxRetryAfter)}
	case c == http.StatusRequestTimeout || c >= 500:
		return answer{outcome: retry, reason: status + withSnippet(body)}
	case c >= 400:
		return answer{outcome: permanent, reason: status + withSnippet(body)}
	default:
		return answer{outcome: retry, reason: "malformed answer: unexpected " + status}
	}
}

// RetryAfter reads a Retry-After header: delay-seconds or an HTTP-date.
// ok is false if it says neither.
func RetryAfter(v string, now time.Time) (d time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		return time.Duration(min(n, int64(1<<33))) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

func withSnippet(body []byte) string {
	if s := snippet(body); s != "" {
		return ": " + s
	}
	return ""
}

// snippet is the start of an answer's body, printable, for a reason.
func snippet(body []byte) string {
	s := strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, string(bytes.TrimSpace(body)))
	if r := []rune(s); len(r) > snippetLen {
		s = string(r[:snippetLen]) + "…"
	}
	return strings.TrimSpace(s)
}

// redact keeps the full URL (which may hold credentials) out of errors.
func redact(msg, full, safe string) string {
	if full == safe {
		return msg
	}
	return strings.ReplaceAll(msg, full, safe)
}

// ErrStopped is what TestOnlyAfterSend hooks may return to stop a worker.
var ErrStopped = errors.New("metering: worker stopped")
