// Package api is the controller's REST+JSON interface under /api/v1: a thin
// net/http adapter over the state package. Handlers decode and check the
// shape of a request, call state, and encode the result; they never touch
// the store. Errors are RFC 9457 problem documents carrying the request id.
//
// Three kinds of caller authenticate with a bearer token: admins with an
// API token (operator or tenant-admin scope), appliances with the device
// credential they got at enrollment (for /api/v1/sync), and appliances
// enrolling, whose enrollment token travels in the body.
package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/causeway-net/causeway/controller/metering"
	"github.com/causeway-net/causeway/controller/state"
)

// Defaults for Options.
const (
	DefaultMaxBody     = 64 << 10
	DefaultSyncWait    = 30 * time.Second
	MaxSyncWait        = 120 * time.Second
	DefaultMaxFailures = 10
	DefaultFailWindow  = time.Minute
)

// Options configures New. State is required.
type Options struct {
	State *state.State
	// Logger gets one line per request; nil discards.
	Logger *slog.Logger
	// Metrics, if set, are updated per request and served on /metrics.
	Metrics *Metrics
	// MaxBody bounds request bodies; 0 means DefaultMaxBody.
	MaxBody int64
	// MaxFailures failed authentications or enrollments from one client
	// address within FailWindow lock it out for the rest of the window.
	// 0 means DefaultMaxFailures and DefaultFailWindow.
	MaxFailures int
	FailWindow  time.Duration
	// Version is reported by /healthz.
	Version string
	// Metering, if set, is this replica's usage export worker, reported
	// by GET /api/v1/metering/status.
	Metering *metering.Worker
	// TestOnlyNow replaces time.Now for the rate limiter.
	TestOnlyNow func() time.Time
}

// API is an http.Handler serving the controller's API, /healthz, /readyz
// and /metrics.
type API struct {
	state    *state.State
	log      *slog.Logger
	metrics  *Metrics
	maxBody  int64
	version  string
	limiter  *failLimiter
	metering *metering.Worker
	now      func() time.Time
	mux      *http.ServeMux
	draining atomic.Bool
}

// New builds the handler.
func New(opts Options) *API {
	a := &API{state: opts.State, log: opts.Logger, metrics: opts.Metrics, maxBody: opts.MaxBody, version: opts.Version,
		metering: opts.Metering, mux: http.NewServeMux()}
	if a.log == nil {
		a.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if a.maxBody <= 0 {
		a.maxBody = DefaultMaxBody
	}
	now := opts.TestOnlyNow
	if now == nil {
		now = time.Now
	}
	if opts.MaxFailures <= 0 {
		opts.MaxFailures, opts.FailWindow = DefaultMaxFailures, DefaultFailWindow
	}
	a.now = now
	a.limiter = newFailLimiter(opts.MaxFailures, opts.FailWindow, now)
	if a.metrics != nil && a.state != nil {
		a.metrics.watchPairs(a.state)
	}
	for _, rt := range a.routes() {
		a.mux.Handle(rt.pattern, a.wrap(rt))
	}
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, newProblem(codeNoRoute, "no route for "+r.Method+" "+r.URL.Path))
	})
	return a
}

// SetDraining makes /readyz fail, so that load balancers stop sending new
// work while the server shuts down.
func (a *API) SetDraining() { a.draining.Store(true) }

// authKind says how a route authenticates its caller.
type authKind int

const (
	authNone   authKind = iota
	authAdmin           // API token
	authDevice          // device credential
	// authDeviceAny is a device credential, also of a revoked appliance:
	// the handler refuses it with a reason (the usage report).
	authDeviceAny
)

// call is what a handler knows about its request.
type call struct {
	r      *http.Request
	p      *state.Principal
	dev    *state.Device
	status int // response status; 0 means 200
}

func (c *call) path(name string) string { return c.r.PathValue(name) }

// route is one entry of the routing table. A handler returns the body to
// encode as JSON (nil for 204) or an error; raw handlers write the
// response themselves.
type route struct {
	pattern string // Go 1.22 ServeMux pattern, "METHOD /path/{param}"
	auth    authKind
	handle  func(c *call) (any, error)
	raw     http.HandlerFunc
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// ServeHTTP assigns the request id and logs and measures every request.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := requestIDFromHeaders(r.Header)
	w.Header().Set("X-Request-ID", id)
	r = r.WithContext(state.WithRequestID(r.Context(), id))
	rec := &statusRecorder{ResponseWriter: w}
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			a.log.Error("handler panic", "request_id", id, "panic", v)
			if rec.status == 0 {
				writeProblem(rec, r, newProblem(codeInternal, "internal error; quote the request id when reporting it"))
			}
		}
		d := time.Since(start)
		route := r.Pattern
		if route == "" || route == "/" {
			route = "unmatched"
		}
		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		if a.metrics != nil {
			a.metrics.observe(route, r.Method, status, d)
		}
		level := slog.LevelInfo
		if route == "GET /healthz" || route == "GET /readyz" || route == "GET /metrics" {
			level = slog.LevelDebug
		}
		a.log.Log(r.Context(), level, "request", "request_id", id, "method", r.Method, "route", route, "path", r.URL.Path,
			"status", status, "duration_ms", float64(d.Microseconds())/1000, "remote", r.RemoteAddr)
	}()
	a.mux.ServeHTTP(rec, r)
}

func (a *API) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &call{r: r}
		if rt.auth != authNone {
			if err := a.authenticate(c, rt.auth); err != nil {
				p, _ := problemFor(err)
				writeProblem(w, r, p)
				return
			}
		}
		if rt.raw != nil {
			rt.raw(w, r.WithContext(context.WithValue(r.Context(), callKey{}, c)))
			return
		}
		body, err := rt.handle(c)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		if body == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, max(c.status, http.StatusOK), body)
	})
}

type callKey struct{}

func callFrom(r *http.Request) *call { c, _ := r.Context().Value(callKey{}).(*call); return c }

func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	p, internal := problemFor(err)
	if internal {
		a.log.Error("request failed", "request_id", requestIDFrom(r.Context()), "route", r.Pattern, "err", err)
	}
	writeProblem(w, r, p)
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(body)
}

// clientOf is the key the failure limiter counts by: the peer address.
// X-Forwarded-For is not trusted.
func clientOf(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

func (a *API) rateLimited(r *http.Request) error {
	if left, blocked := a.limiter.blocked(clientOf(r)); blocked {
		p := newProblem(codeRateLimited, "too many failed attempts from this address; wait and retry")
		p.retryAfter = int(left/time.Second) + 1
		return p
	}
	return nil
}

// authFailed counts a failure against the client if err is one.
func (a *API) authFailed(r *http.Request, err error) {
	switch state.ErrorCode(err) {
	case state.CodeUnauthenticated, state.CodeTokenInvalid, state.CodeTokenExpired, state.CodeTokenUsed, state.CodeTokenScope:
		a.limiter.fail(clientOf(r))
	}
}

func (a *API) authenticate(c *call, kind authKind) error {
	if err := a.rateLimited(c.r); err != nil {
		return err
	}
	tok, ok := bearer(c.r)
	if !ok {
		return &state.Error{Code: state.CodeUnauthenticated, Msg: "send Authorization: Bearer <token>"}
	}
	var err error
	switch kind {
	case authAdmin:
		if strings.HasPrefix(tok, state.SecretDevice) {
			err = &state.Error{Code: state.CodeUnauthenticated, Msg: "a device credential is not an API token"}
		} else {
			c.p, err = a.state.AuthenticateAPIToken(c.r.Context(), tok)
		}
	case authDevice:
		c.dev, err = a.state.AuthenticateDevice(c.r.Context(), tok)
	case authDeviceAny:
		c.dev, err = a.state.IdentifyDevice(c.r.Context(), tok)
	}
	a.authFailed(c.r, err)
	return err
}

func requestIDFrom(ctx context.Context) string { return state.RequestID(ctx) }

var (
	traceparentRE = regexp.MustCompile(`^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$`)
	requestIDRE   = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)
)

// requestIDFromHeaders takes the trace id of a W3C traceparent header, or
// else a well-formed X-Request-ID, or else makes a new id in the form of a
// trace id.
func requestIDFromHeaders(h http.Header) string {
	if m := traceparentRE.FindStringSubmatch(strings.TrimSpace(h.Get("Traceparent"))); m != nil && m[1] != strings.Repeat("0", 32) {
		return m[1]
	}
	if id := strings.TrimSpace(h.Get("X-Request-ID")); requestIDRE.MatchString(id) {
		return id
	}
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
