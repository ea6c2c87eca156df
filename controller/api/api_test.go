package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store/storetest"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// testClock is a settable time source shared by state and the limiter.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type env struct {
	t     *testing.T
	srv   *httptest.Server
	st    *state.State
	api   *API
	clock *testClock
	op    string // operator token
}

func newEnv(t *testing.T, opts Options) *env {
	t.Helper()
	clock := &testClock{t: time.Now().UTC()}
	st, err := state.New(context.Background(), state.Options{Store: storetest.Open(t, storetest.SQLiteDSN(t)), TestOnlyNow: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	opts.State = st
	opts.TestOnlyNow = clock.now
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(st.Hub().Connected)
	}
	a := New(opts)
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	op, err := st.Bootstrap(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, srv: srv, st: st, api: a, clock: clock, op: op}
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r *resp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response %d is not a JSON object: %v\n%s", r.status, err, r.body)
	}
	return m
}

// do sends a request; body may be a string (sent as is) or a value to
// encode.
func (e *env) do(method, path, token string, body any, hdr ...string) *resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		rd = bytes.NewReader(data)
	}
	req, _ := http.NewRequest(method, e.srv.URL+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	return &resp{status: res.StatusCode, header: res.Header, body: data}
}

// must checks the status and returns the JSON body.
func (e *env) must(status int, method, path, token string, body any, hdr ...string) map[string]any {
	e.t.Helper()
	r := e.do(method, path, token, body, hdr...)
	if r.status != status {
		e.t.Fatalf("%s %s = %d, want %d\n%s", method, path, r.status, status, r.body)
	}
	if len(r.body) == 0 {
		return nil
	}
	return r.json(e.t)
}

// problem checks that r is a problem of the given status and type code.
func problem(t *testing.T, r *resp, status int, code string) map[string]any {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d\n%s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q", ct)
	}
	m := r.json(t)
	if m["type"] != ProblemTypePrefix+code {
		t.Fatalf("problem type %v, want %s\n%s", m["type"], code, r.body)
	}
	if m["request_id"] == "" || m["request_id"] != r.header.Get("X-Request-ID") {
		t.Fatalf("problem request_id %v, header %q", m["request_id"], r.header.Get("X-Request-ID"))
	}
	return m
}

func newPub(t *testing.T) string {
	k, err := wgkey.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public().String()
}

// setupTenant creates a tenant with one site and returns an enrollment
// token for it.
func (e *env) setupTenant(name, prefix string) (tenantID, siteID, token string) {
	t := e.must(201, "POST", "/api/v1/tenants", e.op, map[string]any{"name": name})
	s := e.must(201, "POST", "/api/v1/tenants/"+name+"/sites", e.op, map[string]any{"name": "hq", "kind": "office", "lan_prefixes": []string{prefix}})
	tok := e.must(201, "POST", "/api/v1/tenants/"+name+"/enrollment-tokens", e.op, map[string]any{"site": "hq", "ttl": "10m"})
	return t["id"].(string), s["id"].(string), tok["token"].(string)
}

func (e *env) newToken(tenant, site string) string {
	return e.must(201, "POST", "/api/v1/tenants/"+tenant+"/enrollment-tokens", e.op, map[string]any{"site": site})["token"].(string)
}

func (e *env) enroll(token, name string) (id, credential string, nm map[string]any) {
	m := e.must(201, "POST", "/api/v1/enroll", "", map[string]any{"token": token, "name": name, "public_key": newPub(e.t), "endpoints": []string{"198.18.0.1:51820"}})
	return m["appliance"].(map[string]any)["id"].(string), m["credential"].(string), m["netmap"].(map[string]any)
}

func version(m map[string]any) uint64 { return uint64(m["version"].(float64)) }

func TestFlow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	_, _, tok := e.setupTenant("acme", "10.1.0.0/24")
	e.must(201, "POST", "/api/v1/tenants/acme/sites", e.op, map[string]any{"name": "br", "kind": "home", "lan_prefixes": []string{"10.2.0.0/24"}})
	hqID, hqCred, hqMap := e.enroll(tok, "hq-1")
	if hqMap["overlay_addr"] != "100.64.0.1" || len(hqMap["peers"].([]any)) != 0 {
		t.Fatalf("first netmap %v", hqMap)
	}

	// The first sync answers at once with the current netmap, which decodes
	// strictly.
	r := e.do("GET", "/api/v1/sync?since=0", hqCred, nil)
	if r.status != 200 || r.header.Get(NetmapVersionHeader) == "" {
		t.Fatalf("first sync: %d %s", r.status, r.body)
	}
	nm, err := netmap.Decode(r.body)
	if err != nil {
		t.Fatalf("sync body does not decode: %v\n%s", err, r.body)
	}
	// Nothing newer: 204 after the wait.
	if r := e.do("GET", "/api/v1/sync?wait=50ms&since="+r.header.Get(NetmapVersionHeader), hqCred, nil); r.status != 204 {
		t.Fatalf("idle sync: %d %s", r.status, r.body)
	}

	// A waiting sync gets the change made by an API call within a second,
	// carrying that call's request id.
	type result struct {
		r     *resp
		taken time.Duration
	}
	wait := func(since uint64) chan result {
		ch := make(chan result, 1)
		go func() {
			start := time.Now()
			r := e.do("GET", "/api/v1/sync?wait=10s&since="+itoa(since), hqCred, nil)
			ch <- result{r, time.Since(start)}
		}()
		waitFor(t, func() bool { return e.st.Hub().IsConnected(hqID) })
		return ch
	}
	ch := wait(nm.Version)
	start := time.Now()
	brTok := e.newToken("acme", "br")
	// Creating a token changes no netmap: the sync keeps waiting.
	select {
	case res := <-ch:
		t.Fatalf("sync answered after an unrelated change: %d %s", res.r.status, res.r.body)
	case <-time.After(50 * time.Millisecond):
	}
	brID, brCred, _ := e.enroll(brTok, "")
	res := <-ch
	if res.r.status != 200 || time.Since(start) > time.Second {
		t.Fatalf("sync after enroll: %d in %s\n%s", res.r.status, time.Since(start), res.r.body)
	}
	nm2, err := netmap.Decode(res.r.body)
	if err != nil || len(nm2.Peers) != 1 || nm2.Peers[0].Name != "br-1" || nm2.Version <= nm.Version {
		t.Fatalf("netmap after enroll: %+v, %v", nm2, err)
	}

	ch = wait(nm2.Version)
	e.must(200, "PATCH", "/api/v1/tenants/acme/sites/br", e.op, map[string]any{"lan_prefixes": []string{"10.2.0.0/24", "10.3.0.0/24"}},
		"Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	res = <-ch
	nm3, _ := netmap.Decode(res.r.body)
	if nm3 == nil || nm3.RequestID != "4bf92f3577b34da6a3ce929d0e0e4736" || len(nm3.Peers[0].Prefixes) != 2 {
		t.Fatalf("netmap after site update: %+v", nm3)
	}
	ch = wait(nm3.Version)
	e.must(200, "PATCH", "/api/v1/tenants/acme/appliances/br-1", e.op, map[string]any{"endpoints": []string{"203.0.113.7:51820"}},
		"X-Request-ID", "change-77")
	res = <-ch
	nm4, _ := netmap.Decode(res.r.body)
	if nm4 == nil || nm4.RequestID != "change-77" || nm4.Peers[0].Endpoints[0].String() != "203.0.113.7:51820" {
		t.Fatalf("netmap after endpoint update: %+v", nm4)
	}

	// The admin view of the netmap matches.
	got := e.must(200, "GET", "/api/v1/tenants/acme/appliances/"+hqID+"/netmap", e.op, nil)
	if version(got) != nm4.Version {
		t.Errorf("admin netmap version %v, sync %d", got["version"], nm4.Version)
	}
	app := e.must(200, "GET", "/api/v1/tenants/acme/appliances/hq-1", e.op, nil)
	if app["state"] != "active" || app["netmap_version"].(float64) != float64(nm4.Version) {
		t.Errorf("appliance view %v", app)
	}

	// Revocation: the peer's waiting sync sees it within a second; the
	// revoked appliance is refused.
	ch = wait(nm4.Version)
	start = time.Now()
	rv := e.must(200, "POST", "/api/v1/tenants/acme/appliances/"+brID+"/revoke", e.op, nil)
	if rv["state"] != "revoked" {
		t.Fatalf("revoke: %v", rv)
	}
	res = <-ch
	nm5, _ := netmap.Decode(res.r.body)
	if nm5 == nil || len(nm5.Peers) != 0 || time.Since(start) > time.Second {
		t.Fatalf("after revoke (%s): %s", time.Since(start), res.r.body)
	}
	problem(t, e.do("GET", "/api/v1/sync", brCred, nil), 401, "unauthenticated")
	// Revoking again is a no-op.
	e.must(200, "POST", "/api/v1/tenants/acme/appliances/br-1/revoke", e.op, nil)

	lst := e.must(200, "GET", "/api/v1/tenants/acme/appliances", e.op, nil)
	if n := len(lst["items"].([]any)); n != 2 {
		t.Errorf("%d appliances listed", n)
	}
	// Delete the site now that it has no live appliance.
	if r := e.do("DELETE", "/api/v1/tenants/acme/sites/br", e.op, nil); r.status != 204 {
		t.Errorf("delete site: %d %s", r.status, r.body)
	}
}

func itoa(v uint64) string { b, _ := json.Marshal(v); return string(b) }

func TestEnrollRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{MaxFailures: 5, FailWindow: time.Minute})
	_, _, tok := e.setupTenant("acme", "10.1.0.0/24")
	e.setupTenant("globex", "10.1.0.0/24")
	enroll := func(body map[string]any) *resp {
		if _, ok := body["public_key"]; !ok {
			body["public_key"] = newPub(t)
		}
		return e.do("POST", "/api/v1/enroll", "", body)
	}
	e.enroll(tok, "")
	m := problem(t, enroll(map[string]any{"token": tok}), 409, "token-used")
	if !strings.Contains(m["detail"].(string), "already used") {
		t.Errorf("reused token detail %q", m["detail"])
	}
	short := e.must(201, "POST", "/api/v1/tenants/acme/enrollment-tokens", e.op, map[string]any{"site": "hq", "ttl": "1m"})["token"].(string)
	e.clock.add(2 * time.Minute)
	problem(t, enroll(map[string]any{"token": short}), 401, "token-expired")
	other := e.newToken("acme", "hq")
	m = problem(t, enroll(map[string]any{"token": other, "tenant": "globex"}), 403, "token-wrong-site")
	if errs := m["errors"].([]any); errs[0].(map[string]any)["field"] != "tenant" {
		t.Errorf("wrong-tenant errors %v", errs)
	}
	problem(t, enroll(map[string]any{"token": "cwe_guess"}), 401, "token-invalid")
	// Malformed key: names the field, is not a token failure.
	m = problem(t, enroll(map[string]any{"token": other, "public_key": "short"}), 422, "invalid")
	if errs := m["errors"].([]any); errs[0].(map[string]any)["field"] != "public_key" {
		t.Errorf("bad key errors %v", errs)
	}
	// Three failures in this window so far; two more lock the address
	// out, even for a good token.
	problem(t, enroll(map[string]any{"token": "cwe_guess2"}), 401, "token-invalid")
	problem(t, enroll(map[string]any{"token": "cwe_guess3"}), 401, "token-invalid")
	r := enroll(map[string]any{"token": other})
	problem(t, r, 429, "rate-limited")
	if r.header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	// Bad API tokens count too.
	problem(t, e.do("GET", "/api/v1/tenants", "cwa_nope", nil), 429, "rate-limited")
	e.clock.add(time.Minute)
	e.must(201, "POST", "/api/v1/enroll", "", map[string]any{"token": other, "public_key": newPub(t)})
}

func TestProblems(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{MaxBody: 1024})
	e.setupTenant("acme", "10.1.0.0/24")

	m := problem(t, e.do("POST", "/api/v1/tenants/acme/sites", e.op, `{"name":"x","kind":"home","colour":"red"}`), 400, "bad-request")
	if errs := m["errors"].([]any); errs[0].(map[string]any)["field"] != "colour" {
		t.Errorf("unknown field errors %v", errs)
	}
	m = problem(t, e.do("POST", "/api/v1/tenants/acme/sites", e.op, `{"name":"x","kind":"home","lan_prefixes":"10.0.0.0/8"}`), 400, "bad-request")
	if errs := m["errors"].([]any); errs[0].(map[string]any)["field"] != "lan_prefixes" {
		t.Errorf("type error errors %v", errs)
	}
	problem(t, e.do("POST", "/api/v1/tenants/acme/sites", e.op, `{"name":`), 400, "bad-request")
	m = problem(t, e.do("POST", "/api/v1/tenants/acme/sites", e.op, map[string]any{"name": "br", "kind": "home", "lan_prefixes": []string{"10.9.0.0/16", "10.1.0.1/24"}}), 422, "invalid")
	if errs := m["errors"].([]any); len(errs) != 1 || errs[0].(map[string]any)["field"] != "lan_prefixes[1]" ||
		!strings.Contains(errs[0].(map[string]any)["detail"].(string), "host bits") {
		t.Errorf("bad prefix errors %v", errs)
	}
	m = problem(t, e.do("POST", "/api/v1/tenants/acme/sites", e.op, map[string]any{"name": "br", "kind": "home", "lan_prefixes": []string{"10.1.0.128/25"}}), 422, "invalid")
	if d := m["errors"].([]any)[0].(map[string]any)["detail"].(string); !strings.Contains(d, `overlaps 10.1.0.0/24 of site "hq"`) {
		t.Errorf("overlap detail %q", d)
	}
	problem(t, e.do("POST", "/api/v1/tenants/acme/sites", e.op, `{"name":"`+strings.Repeat("a", 2000)+`"}`), 413, "body-too-large")
	r := e.do("POST", "/api/v1/tenants", e.op, nil, "Content-Type", "text/plain")
	problem(t, r, 415, "unsupported-media-type")
	r = e.do("GET", "/api/v1/tenants", "", nil)
	problem(t, r, 401, "unauthenticated")
	if r.header.Get("WWW-Authenticate") == "" {
		t.Error("401 without WWW-Authenticate")
	}
	problem(t, e.do("GET", "/api/v1/nothing", e.op, nil), 404, "no-route")
	problem(t, e.do("POST", "/api/v1/tenants", e.op, map[string]any{"name": "acme"}), 409, "conflict")
	problem(t, e.do("GET", "/api/v1/sync?since=x", "cwd_nope", nil), 401, "unauthenticated")

	// The request id: taken from X-Request-ID or traceparent, else made.
	r = e.do("GET", "/api/v1/tenants/nope", e.op, nil, "X-Request-ID", "abc-123")
	if problem(t, r, 404, "not-found")["request_id"] != "abc-123" {
		t.Error("X-Request-ID not carried")
	}
	r = e.do("GET", "/api/v1/tenants/nope", e.op, nil, "X-Request-ID", "bad id with spaces")
	if id := r.header.Get("X-Request-ID"); len(id) != 32 {
		t.Errorf("malformed X-Request-ID replaced by %q", id)
	}
}

func TestServiceEndpoints(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{Version: "v-test"})
	if m := e.must(200, "GET", "/healthz", "", nil); m["version"] != "v-test" {
		t.Errorf("healthz %v", m)
	}
	e.must(200, "GET", "/readyz", "", nil)
	e.must(200, "GET", "/api/v1/tenants", e.op, nil)
	r := e.do("GET", "/metrics", "", nil)
	for _, want := range []string{
		`causeway_http_requests_total{code="200",method="GET",route="GET /api/v1/tenants"} 1`,
		`causeway_http_request_duration_seconds_bucket{method="GET",route="GET /readyz"`,
		"causeway_connected_appliances 0",
		"causeway_push_lag_seconds_count",
	} {
		if !strings.Contains(string(r.body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if r := e.do("GET", "/api/v1/openapi.json", "", nil); r.status != 200 || !json.Valid(r.body) {
		t.Errorf("openapi: %d", r.status)
	}
	New(Options{State: e.st}).SetDraining()
	a := New(Options{State: e.st})
	a.SetDraining()
	rec := httptest.NewRecorder()
	a.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != 503 {
		t.Errorf("readyz while draining: %d", rec.Code)
	}
}

func TestTenantAdminToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	e.setupTenant("acme", "10.1.0.0/24")
	at := e.must(201, "POST", "/api/v1/tenants/acme/api-tokens", e.op, map[string]any{"description": "acme admin"})
	tok := at["token"].(string)
	if at["scope"] != "tenant-admin" || !strings.HasPrefix(tok, state.SecretAPIToken) {
		t.Fatalf("token %v", at)
	}
	e.must(201, "POST", "/api/v1/tenants/acme/sites", tok, map[string]any{"name": "br", "kind": "remote"})
	problem(t, e.do("POST", "/api/v1/tenants", tok, map[string]any{"name": "mine"}), 403, "forbidden")
	problem(t, e.do("GET", "/api/v1/api-tokens", tok, nil), 403, "forbidden")
	// A device credential is not an API token.
	_, cred, _ := e.enroll(e.newToken("acme", "br"), "")
	problem(t, e.do("GET", "/api/v1/tenants", cred, nil), 401, "unauthenticated")
	// Deleting the token takes effect at once.
	if r := e.do("DELETE", "/api/v1/tenants/acme/api-tokens/"+at["id"].(string), e.op, nil); r.status != 204 {
		t.Fatalf("delete token: %d %s", r.status, r.body)
	}
	problem(t, e.do("GET", "/api/v1/tenants", tok, nil), 401, "unauthenticated")
	op2 := e.must(201, "POST", "/api/v1/api-tokens", e.op, map[string]any{"ttl": "1h"})
	if op2["scope"] != "operator" {
		t.Errorf("operator token %v", op2)
	}
	if n := len(e.must(200, "GET", "/api/v1/api-tokens", e.op, nil)["items"].([]any)); n != 2 {
		t.Errorf("%d operator tokens", n)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(2 * time.Millisecond)
	}
}
