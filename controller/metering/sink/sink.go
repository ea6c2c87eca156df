// Package sink is a small metering API receiver, run as `causeway
// meter-sink`: it accepts CloudEvents over HTTP (structured, structured
// batch and binary mode), stores each event once in SQLite (by id; a
// copy is acknowledged and counted, not stored again), and reports totals.
// It is the reference receiver of the controller's usage export, for the
// lab and the tests, with knobs to answer slowly or wrongly for a while.
package sink

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/causeway-net/causeway/controller/metering"
)

// Limits on one request.
const (
	MaxBody   = 16 << 20
	MaxEvents = 10000
)

// Fault modes: how the sink misbehaves while a fault is set.
const (
	FaultNone       = ""            // answer normally
	Fault500        = "500"         // 500, nothing stored
	Fault429        = "429"         // 429 with Retry-After, nothing stored
	FaultMalformed  = "malformed"   // 200 with a truncated JSON body, nothing stored
	FaultGarbage    = "garbage"     // bytes that are not HTTP, then the connection closes; nothing stored
	FaultLostAnswer = "lost-answer" // the events are stored, then 500, as if the answer was lost
)

var faultModes = []string{FaultNone, Fault500, Fault429, FaultMalformed, FaultGarbage, FaultLostAnswer}

// Fault is a misbehaviour for a while.
type Fault struct {
	Mode string `json:"mode"`
	// Until is when the fault ends by itself; zero means when changed.
	Until time.Time `json:"until,omitzero"`
	// RetryAfter is the Retry-After value of Fault429 ("" means "1").
	RetryAfter string `json:"retry_after,omitempty"`
}

// Options configures Open. DB is required.
type Options struct {
	// DB is the SQLite file the events are kept in (created if missing).
	DB string
	// Auth, if set, is the Authorization header value every request must
	// carry (the admin endpoint's too).
	Auth string
	// Delay holds every answer to an event request for this long.
	Delay  time.Duration
	Fault  Fault
	Logger *slog.Logger
	// TestOnlyNow replaces time.Now for fault expiry.
	TestOnlyNow func() time.Time
}

// Sink is an open receiver; Handler serves it.
type Sink struct {
	db   *sql.DB
	opts Options
	log  *slog.Logger
	now  func() time.Time

	mu    sync.Mutex
	fault Fault
	delay time.Duration

	reg      *prometheus.Registry
	events   *prometheus.CounterVec
	requests *prometheus.CounterVec
}

const schema = `CREATE TABLE IF NOT EXISTS events (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    type        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    time        TEXT NOT NULL,
    data        BLOB,
    tenant      TEXT NOT NULL,
    customer    TEXT NOT NULL,
    site        TEXT NOT NULL,
    meter       TEXT NOT NULL,
    direction   TEXT NOT NULL,
    hour        TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    packets     INTEGER NOT NULL,
    copies      INTEGER NOT NULL,
    received_at INTEGER NOT NULL
)`

// Open opens (or creates) the database.
func Open(ctx context.Context, opts Options) (*Sink, error) {
	if opts.DB == "" {
		return nil, errors.New("meter-sink: a database path is required")
	}
	if !slices.Contains(faultModes, opts.Fault.Mode) {
		return nil, fmt.Errorf("meter-sink: fault: want one of %q, got %q", faultModes, opts.Fault.Mode)
	}
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "busy_timeout(10000)")
	db, err := sql.Open("sqlite", "file:"+opts.DB+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("meter-sink: %w", err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("meter-sink: opening %s: %w", opts.DB, err)
	}
	s := &Sink{db: db, opts: opts, log: opts.Logger, now: opts.TestOnlyNow, fault: opts.Fault, delay: opts.Delay, reg: prometheus.NewRegistry(),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "causeway_meter_sink_events_total",
			Help: "Events received, by result: stored (new), duplicate (an id stored before), refused (answered with a fault).",
		}, []string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "causeway_meter_sink_requests_total",
			Help: "Event requests by answer status code.",
		}, []string{"code"}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.reg.MustRegister(s.events, s.requests)
	return s, nil
}

// Close closes the database.
func (s *Sink) Close() error { return s.db.Close() }

// SetFault replaces the fault (Fault{} ends it).
func (s *Sink) SetFault(f Fault) error {
	if !slices.Contains(faultModes, f.Mode) {
		return fmt.Errorf("mode: want one of %q, got %q", faultModes, f.Mode)
	}
	s.mu.Lock()
	s.fault = f
	s.mu.Unlock()
	s.log.Info("fault set", "mode", f.Mode, "until", f.Until)
	return nil
}

// SetDelay replaces the delay of every answer.
func (s *Sink) SetDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = max(d, 0)
	s.mu.Unlock()
}

// current returns the fault in force and the delay.
func (s *Sink) current() (Fault, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.fault.Until.IsZero() && !s.now().Before(s.fault.Until) {
		s.fault = Fault{}
	}
	return s.fault, s.delay
}

// Handler serves:
//
//	POST /, POST /events   CloudEvents: structured, batch or binary mode
//	GET  /totals?by=tenant,meter,hour   sums (dimensions: tenant, customer, site, meter, direction, hour)
//	GET  /events?limit=N   the newest events stored, with their copies
//	GET  /admin/fault      the fault and delay in force
//	POST /admin/fault      {"mode": "500", "for": "30s", "retry_after": "2", "delay": "5s"}
//	GET  /healthz, GET /metrics
func (s *Sink) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{$}", s.receive)
	mux.HandleFunc("POST /events", s.receive)
	mux.HandleFunc("GET /totals", s.authed(s.serveTotals))
	mux.HandleFunc("GET /events", s.authed(s.serveEvents))
	mux.HandleFunc("GET /admin/fault", s.authed(s.serveFault))
	mux.HandleFunc("POST /admin/fault", s.authed(s.serveFault))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	return mux
}

func (s *Sink) authOK(r *http.Request) bool {
	return s.opts.Auth == "" || subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(s.opts.Auth)) == 1
}

func (s *Sink) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.authOK(r) {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong Authorization"})
			return
		}
		h(w, r)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// receive takes one request of events.
func (s *Sink) receive(w http.ResponseWriter, r *http.Request) {
	status := http.StatusOK
	defer func() { s.requests.WithLabelValues(fmt.Sprint(status)).Inc() }()
	fail := func(code int, msg string) {
		status = code
		writeJSON(w, code, map[string]string{"error": msg})
	}
	if !s.authOK(r) {
		fail(http.StatusUnauthorized, "missing or wrong Authorization")
		return
	}
	fault, delay := s.current()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
	events, err := decode(r)
	if err != nil {
		fail(http.StatusBadRequest, err.Error())
		return
	}
	switch fault.Mode {
	case Fault500:
		s.events.WithLabelValues("refused").Add(float64(len(events)))
		fail(http.StatusInternalServerError, "fault injected: 500")
		return
	case Fault429:
		s.events.WithLabelValues("refused").Add(float64(len(events)))
		w.Header().Set("Retry-After", cmpOr(fault.RetryAfter, "1"))
		fail(http.StatusTooManyRequests, "fault injected: 429")
		return
	case FaultMalformed:
		s.events.WithLabelValues("refused").Add(float64(len(events)))
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"accepted": `)
		return
	case FaultGarbage:
		s.events.WithLabelValues("refused").Add(float64(len(events)))
		status = 0
		if hj, ok := w.(http.Hijacker); ok {
			if conn, buf, err := hj.Hijack(); err == nil {
				buf.WriteString("\x00\x01 this is not HTTP\r\n\r\n")
				buf.Flush()
				conn.Close()
				return
			}
		}
		fail(http.StatusInternalServerError, "fault injected: garbage")
		return
	}
	stored, dups, err := s.store(r.Context(), events)
	if err != nil {
		s.log.Error("storing events", "err", err)
		fail(http.StatusInternalServerError, "storing: "+err.Error())
		return
	}
	s.events.WithLabelValues("stored").Add(float64(stored))
	s.events.WithLabelValues("duplicate").Add(float64(dups))
	s.log.Info("events", "stored", stored, "duplicates", dups, "remote", r.RemoteAddr)
	if fault.Mode == FaultLostAnswer {
		fail(http.StatusInternalServerError, "fault injected: stored, then 500")
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"accepted": stored, "duplicates": dups})
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// decode reads the events of a request in any of the three modes.
func decode(r *http.Request) ([]event.Event, error) {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var events []event.Event
	if mt == event.ApplicationCloudEventsBatchJSON {
		evs, err := cehttp.NewEventsFromHTTPRequest(r)
		if err != nil {
			return nil, fmt.Errorf("decoding a batch: %w", err)
		}
		events = evs
	} else {
		ev, err := cehttp.NewEventFromHTTPRequest(r)
		if err != nil {
			return nil, fmt.Errorf("decoding an event: %w", err)
		}
		events = []event.Event{*ev}
	}
	if len(events) == 0 {
		return nil, errors.New("no event in the request")
	}
	if len(events) > MaxEvents {
		return nil, fmt.Errorf("at most %d events per request, got %d", MaxEvents, len(events))
	}
	for i, ev := range events {
		if err := ev.Validate(); err != nil {
			return nil, fmt.Errorf("event %d: %w", i, err)
		}
	}
	return events, nil
}

// store adds the events not stored before, and counts a copy of each one
// that was.
func (s *Sink) store(ctx context.Context, events []event.Event) (stored, dups int, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback()
	now := s.now().UnixMilli()
	for _, ev := range events {
		var d metering.UsageData
		if ev.Type() == metering.EventType {
			// Another type's data, or a malformed one, is stored as is.
			json.Unmarshal(ev.Data(), &d)
		}
		hour := ""
		if !d.Hour.IsZero() {
			hour = d.Hour.UTC().Format(time.RFC3339)
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO events (id, source, type, subject, time, data, tenant, customer, site, meter,
    direction, hour, bytes, packets, copies, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)
ON CONFLICT (id) DO NOTHING`, ev.ID(), ev.Source(), ev.Type(), ev.Subject(), ev.Time().UTC().Format(time.RFC3339Nano), ev.Data(),
			d.Tenant, d.Customer, d.Site, d.Meter, d.Direction, hour, d.Bytes, d.Packets, now)
		if err != nil {
			return 0, 0, err
		}
		if n, _ := res.RowsAffected(); n == 1 {
			stored++
			continue
		}
		dups++
		if _, err := tx.ExecContext(ctx, "UPDATE events SET copies = copies + 1 WHERE id = ?", ev.ID()); err != nil {
			return 0, 0, err
		}
	}
	return stored, dups, tx.Commit()
}

// Dimensions totals may be grouped by.
var Dimensions = []string{"tenant", "customer", "site", "meter", "direction", "hour"}

// Group is one line of Totals.
type Group struct {
	Tenant    string `json:"tenant,omitempty"`
	Customer  string `json:"customer,omitempty"`
	Site      string `json:"site,omitempty"`
	Meter     string `json:"meter,omitempty"`
	Direction string `json:"direction,omitempty"`
	Hour      string `json:"hour,omitempty"`
	Events    int64  `json:"events"`
	Bytes     int64  `json:"bytes"`
	Packets   int64  `json:"packets"`
}

// Totals sums up what the sink stored.
type Totals struct {
	By []string `json:"by"`
	// Events counts the events stored (each id once), Duplicates the
	// copies received of events already stored.
	Events     int64   `json:"events"`
	Duplicates int64   `json:"duplicates"`
	Bytes      int64   `json:"bytes"`
	Packets    int64   `json:"packets"`
	Groups     []Group `json:"groups"`
}

// Totals sums the stored events, grouped by the given dimensions.
func (s *Sink) Totals(ctx context.Context, by []string) (*Totals, error) {
	for _, d := range by {
		if !slices.Contains(Dimensions, d) {
			return nil, fmt.Errorf("by: want some of %s, got %q", strings.Join(Dimensions, ","), d)
		}
	}
	t := &Totals{By: slices.Clone(by), Groups: []Group{}}
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(copies - 1), 0), COALESCE(SUM(bytes), 0), COALESCE(SUM(packets), 0)
FROM events`).Scan(&t.Events, &t.Duplicates, &t.Bytes, &t.Packets); err != nil {
		return nil, err
	}
	cols := strings.Join(by, ", ")
	q := "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(packets), 0)"
	if len(by) > 0 {
		q = "SELECT " + cols + ", COUNT(*), SUM(bytes), SUM(packets) FROM events GROUP BY " + cols + " ORDER BY " + cols
	} else {
		q += " FROM events"
	}
	rows, err := s.db.QueryContext(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var g Group
		dest := make([]any, 0, len(by)+3)
		for _, d := range by {
			dest = append(dest, map[string]*string{"tenant": &g.Tenant, "customer": &g.Customer, "site": &g.Site,
				"meter": &g.Meter, "direction": &g.Direction, "hour": &g.Hour}[d])
		}
		dest = append(dest, &g.Events, &g.Bytes, &g.Packets)
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		t.Groups = append(t.Groups, g)
	}
	return t, rows.Err()
}

func (s *Sink) serveTotals(w http.ResponseWriter, r *http.Request) {
	by := []string{"tenant", "meter"}
	if v := r.URL.Query().Get("by"); v != "" {
		by = strings.Split(v, ",")
	}
	t, err := s.Totals(r.Context(), by)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// Stored is one stored event.
type Stored struct {
	ID      string          `json:"id"`
	Source  string          `json:"source"`
	Type    string          `json:"type"`
	Subject string          `json:"subject"`
	Time    string          `json:"time"`
	Data    json.RawMessage `json:"data"`
	// Copies is how many times the event was received.
	Copies int64 `json:"copies"`
}

// Events returns up to limit stored events, newest first.
func (s *Sink) Events(ctx context.Context, limit int) ([]Stored, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT id, source, type, subject, time, data, copies FROM events ORDER BY received_at DESC, id LIMIT ?", limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Stored{}
	for rows.Next() {
		var e Stored
		var data []byte
		if err := rows.Scan(&e.ID, &e.Source, &e.Type, &e.Subject, &e.Time, &data, &e.Copies); err != nil {
			return nil, err
		}
		if json.Valid(data) {
			e.Data = data
		} else {
			e.Data, _ = json.Marshal(data) // base64 of binary data
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func (s *Sink) serveEvents(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		if _, err := fmt.Sscan(v, &limit); err != nil || limit < 1 || limit > 100000 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "limit: want 1 to 100000"})
			return
		}
	}
	es, err := s.Events(r.Context(), limit)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": es})
}

// faultRequest is the body of POST /admin/fault.
type faultRequest struct {
	Mode       string `json:"mode"`
	For        string `json:"for"`
	RetryAfter string `json:"retry_after"`
	Delay      string `json:"delay"`
}

func (s *Sink) serveFault(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		var req faultRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body: " + err.Error()})
			return
		}
		if req.Mode == "ok" {
			req.Mode = FaultNone
		}
		f := Fault{Mode: req.Mode, RetryAfter: req.RetryAfter}
		if req.For != "" {
			d, err := time.ParseDuration(req.For)
			if err != nil || d <= 0 {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("for: want a positive duration, got %q", req.For)})
				return
			}
			f.Until = s.now().Add(d)
		}
		if req.Delay != "" {
			d, err := time.ParseDuration(req.Delay)
			if err != nil || d < 0 {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("delay: want a duration, got %q", req.Delay)})
				return
			}
			s.SetDelay(d)
		}
		if err := s.SetFault(f); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
	}
	f, d := s.current()
	writeJSON(w, http.StatusOK, map[string]any{"fault": f, "delay": d.String()})
}

// Serve runs the sink's handler on listen until ctx ends, then shuts down
// gracefully. ready, if set, gets the bound address.
func Serve(ctx context.Context, listen string, s *Sink, ready func(net.Addr)) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("meter-sink listening", "addr", ln.Addr().String(), "db", s.opts.DB, "auth", s.opts.Auth != "")
	if ready != nil {
		ready(ln.Addr())
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	if e := <-errc; !errors.Is(e, http.ErrServerClosed) && err == nil {
		err = e
	}
	return err
}
