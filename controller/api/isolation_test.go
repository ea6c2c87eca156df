package api

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTenantIsolation walks every route with a tenant-admin token of tenant
// A against tenant B's resources: everything of B's is 404, and no answer
// mentions B. A route added without a case here fails the test.
func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	_, _, tokA := e.setupTenant("acme", "10.1.0.0/24")
	bID, bSite, tokB := e.setupTenant("globex", "10.1.0.0/24")
	_, credA, _ := e.enroll(tokA, "a-1")
	bApp, bCred, _ := e.enroll(tokB, "b-1")
	// B has usage, to a peer site of its own.
	e.must(200, "POST", "/api/v1/usage/report", bCred, usageReport(e.clock.now(), 1, bSite))
	bET := e.must(201, "POST", "/api/v1/tenants/globex/enrollment-tokens", e.op, map[string]any{"site": "hq"})["id"].(string)
	bAT := e.must(201, "POST", "/api/v1/tenants/globex/api-tokens", e.op, nil)["id"].(string)
	adminA := e.must(201, "POST", "/api/v1/tenants/acme/api-tokens", e.op, nil)["token"].(string)
	secretsOfB := []string{bID, bSite, bApp, bET, bAT, "globex", "b-1"}

	// What a tenant-scoped route gets for each of B's path parameters.
	params := map[string]string{"{site}": bSite, "{siteA}": bSite, "{siteB}": bSite, "{appliance}": bApp, "{token}": bET, "{apitoken}": bAT}
	sla := map[string]any{"max_loss_percent": 1, "max_rtt_ms": 100, "max_jitter_ms": 10}
	bodies := map[string]any{
		"POST /api/v1/tenants/{tenant}/sites":                        map[string]any{"name": "x", "kind": "home"},
		"PATCH /api/v1/tenants/{tenant}/sites/{site}":                map[string]any{"kind": "home"},
		"POST /api/v1/tenants/{tenant}/enrollment-tokens":            map[string]any{"site": "hq"},
		"PATCH /api/v1/tenants/{tenant}/appliances/{appliance}":      map[string]any{"endpoints": []string{}, "priority": 120},
		"PUT /api/v1/tenants/{tenant}/sla":                           sla,
		"PUT /api/v1/tenants/{tenant}/sla-overrides/{siteA}/{siteB}": sla,
		"PATCH /api/v1/tenants/{tenant}":                             map[string]any{"billing_customer": "cus_stolen"},
	}
	// Routes without a tenant in the path, and what A's token gets there.
	unscoped := map[string]int{
		"GET /healthz":                             200,
		"GET /readyz":                              200,
		"GET /metrics":                             200,
		"GET /api/v1/openapi.json":                 200,
		"GET /api/v1/tenants":                      200, // lists A only: checked below
		"POST /api/v1/tenants":                     403,
		"GET /api/v1/api-tokens":                   403,
		"POST /api/v1/api-tokens":                  403,
		"DELETE /api/v1/api-tokens/{apitoken}":     403,
		"POST /api/v1/enroll":                      422, // no API token involved
		"GET /api/v1/sync":                         401, // device credential only
		"POST /api/v1/paths/report":                401, // device credential only
		"POST /api/v1/usage/report":                401, // device credential only
		"GET /api/v1/usage":                        200, // A's usage only: checked below
		"GET /api/v1/metering/status":              403,
		"GET /api/v1/metering/dead-letters":        403,
		"POST /api/v1/metering/dead-letters/retry": 403,
		"POST /api/v1/pair/report":                 401, // device credential only
	}

	checked := 0
	for _, rt := range e.api.routes() {
		method, path, _ := strings.Cut(rt.pattern, " ")
		if !strings.Contains(path, "{tenant}") {
			want, ok := unscoped[rt.pattern]
			if !ok {
				t.Errorf("route %s has no isolation case", rt.pattern)
				continue
			}
			p := strings.ReplaceAll(path, "{apitoken}", bAT)
			r := e.do(method, p, adminA, map[string]any{})
			if r.status != want {
				t.Errorf("%s with A's token: %d, want %d\n%s", rt.pattern, r.status, want, r.body)
			}
			if method != "GET" || (!strings.HasPrefix(path, "/api/v1/tenants") && path != "/api/v1/usage") {
				continue
			}
			for _, s := range secretsOfB {
				if strings.Contains(string(r.body), s) {
					t.Errorf("%s with A's token mentions %q", rt.pattern, s)
				}
			}
			continue
		}
		body := bodies[rt.pattern]
		// B's tenant by id and by name; and A's own tenant with B's
		// sub-resources.
		sub := strings.Contains(strings.TrimPrefix(path, "/api/v1/tenants/{tenant}"), "{")
		for _, tenant := range []string{bID, "globex", "acme"} {
			if tenant == "acme" && !sub {
				continue // nothing of B's left in the path
			}
			p := strings.ReplaceAll(path, "{tenant}", tenant)
			for k, v := range params {
				p = strings.ReplaceAll(p, k, v)
			}
			checked++
			r := e.do(method, p, adminA, body)
			if r.status != http.StatusNotFound {
				t.Errorf("%s %s with A's token: %d, want 404\n%s", method, p, r.status, r.body)
				continue
			}
			problem(t, r, 404, "not-found")
			for _, s := range secretsOfB {
				if strings.Contains(string(r.body), s) && !strings.Contains(p, s) {
					t.Errorf("%s %s: 404 mentions %q", method, p, s)
				}
			}
		}
	}
	if checked < 40 {
		t.Errorf("only %d tenant-scoped requests checked", checked)
	}
	// Usage: B's tenant by id or name is 404, and B's site does not help.
	for _, q := range []string{"?tenant=globex", "?tenant=" + bID, "?tenant=globex&site=hq", "?site=" + bSite} {
		r := e.do("GET", "/api/v1/usage"+q, adminA, nil)
		if r.status != 404 && !(strings.HasPrefix(q, "?site=") && r.status == 422) {
			t.Errorf("GET /api/v1/usage%s with A's token: %d\n%s", q, r.status, r.body)
		}
		for _, s := range secretsOfB {
			if strings.Contains(string(r.body), s) && !strings.Contains(q, s) {
				t.Errorf("GET /api/v1/usage%s mentions %q", q, s)
			}
		}
	}
	if items := e.must(200, "GET", "/api/v1/usage", e.op, nil)["items"].([]any); len(items) == 0 {
		t.Error("the operator sees no usage")
	}
	if m := e.must(200, "GET", "/api/v1/tenants/globex", e.op, nil); m["billing_customer"] != "" {
		t.Errorf("B's billing customer changed: %v", m)
	}
	lst := e.must(200, "GET", "/api/v1/tenants", adminA, nil)
	if items := lst["items"].([]any); len(items) != 1 || items[0].(map[string]any)["name"] != "acme" {
		t.Errorf("A lists tenants %v", items)
	}
	// And nothing of B's changed.
	if m := e.must(200, "GET", "/api/v1/tenants/globex/sites/hq", e.op, nil); m["kind"] != "office" {
		t.Errorf("B's site changed: %v", m)
	}
	if m := e.must(200, "GET", "/api/v1/tenants/globex/appliances/b-1", e.op, nil); m["state"] != "active" {
		t.Errorf("B's appliance changed: %v", m)
	}
	if m := e.must(200, "GET", "/api/v1/tenants/globex/sla", e.op, nil); m["max_rtt_ms"] != 150.0 {
		t.Errorf("B's SLA changed: %v", m)
	}
	if m := e.must(200, "GET", "/api/v1/tenants/globex/probe-key", e.op, nil); len(m["items"].([]any)) != 1 {
		t.Errorf("B's probe keys changed: %v", m)
	}
	if m := e.must(200, "GET", "/api/v1/tenants/globex/appliances/b-1", e.op, nil); m["priority"] != 100.0 || m["drained"] != false {
		t.Errorf("B's appliance's pair settings changed: %v", m)
	}

	// A device reports for its own site only: naming another tenant's
	// appliance in a failover is refused, and B's pair stays untouched.
	now := e.clock.now().UTC().Format(time.RFC3339)
	r := e.do("POST", "/api/v1/pair/report", credA, map[string]any{"role": "active", "term": 9, "since": now,
		"last_failover": map[string]any{"at": now, "from": "b-1", "to": "a-1"}})
	problem(t, r, 422, "invalid")
	if !strings.Contains(string(r.body), `"field":"last_failover.from"`) {
		t.Errorf("a failover naming B's appliance: %s", r.body)
	}
	e.must(200, "POST", "/api/v1/pair/report", credA, map[string]any{"role": "active", "term": 9, "since": now})
	if m := e.must(200, "GET", "/api/v1/tenants/globex/sites/hq/pair", e.op, nil); m["active"] != nil || len(m["failovers"].([]any)) != 0 {
		t.Errorf("B's pair changed by A's report: %v", m)
	}
	if m := e.must(200, "GET", "/api/v1/tenants/acme/sites/hq/pair", e.op, nil); m["active_name"] != "a-1" {
		t.Errorf("A's pair after its report: %v", m)
	}
}
