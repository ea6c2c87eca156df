package api

import (
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
)

func TestPairAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	e.setupTenant("acme", "10.1.0.0/24")
	e.must(201, "POST", "/api/v1/tenants/acme/sites", e.op, map[string]any{"name": "br", "kind": "office", "lan_prefixes": []string{"10.2.0.0/24"}})
	aID, credA, _ := e.enroll(e.newToken("acme", "hq"), "hq-a")
	bID, credB, _ := e.enroll(e.newToken("acme", "hq"), "hq-b")
	_, credBr, _ := e.enroll(e.newToken("acme", "br"), "br-1")
	// A third appliance has no room at hq.
	m := problem(t, e.do("POST", "/api/v1/tenants/acme/enrollment-tokens", e.op, map[string]any{"site": "hq"}), 409, "conflict")
	if errs := m["errors"].([]any); errs[0].(map[string]any)["field"] != "site" ||
		!strings.Contains(errs[0].(map[string]any)["detail"].(string), "already has 2 live appliances") {
		t.Errorf("third token: %v", m)
	}
	if a := e.must(200, "GET", "/api/v1/tenants/acme/appliances/hq-a", e.op, nil); a["priority"] != 100.0 || a["drained"] != false {
		t.Errorf("new appliance: %v", a)
	}

	// Before any report: paired, no active member.
	st := e.must(200, "GET", "/api/v1/tenants/acme/sites/hq/pair", e.op, nil)
	if st["paired"] != true || st["active"] != nil || len(st["members"].([]any)) != 2 || st["members"].([]any)[0].(map[string]any)["role"] != "unknown" {
		t.Fatalf("pair before reports: %v", st)
	}

	now := e.clock.now()
	rfc := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	r := e.must(200, "POST", "/api/v1/pair/report", credA, map[string]any{"role": "active", "term": 1, "since": rfc(now.Add(-time.Minute)), "partner_alive": true})
	if r["active"] != "hq-a" || r["term"] != 1.0 {
		t.Fatalf("report answer %v", r)
	}
	e.must(200, "POST", "/api/v1/pair/report", credB, map[string]any{"role": "standby", "term": 1, "since": rfc(now.Add(-time.Minute)), "partner_alive": true})
	// hq-b takes over; br-1's netmap follows.
	fo := map[string]any{"at": rfc(now), "from": "hq-a", "to": "hq-b", "reason": "partner-down: no heartbeat for 900ms"}
	r = e.must(200, "POST", "/api/v1/pair/report", credB, map[string]any{"role": "active", "term": 2, "since": rfc(now), "last_failover": fo},
		"X-Request-ID", "failover-1")
	if r["active"] != "hq-b" || r["term"] != 2.0 {
		t.Fatalf("after the failover: %v", r)
	}
	res := e.do("GET", "/api/v1/sync?since=0", credBr, nil)
	nm, err := netmap.Decode(res.body)
	if err != nil {
		t.Fatalf("br-1's netmap: %v\n%s", err, res.body)
	}
	for _, p := range nm.Peers {
		if want := p.Name == "hq-b"; p.Pair == nil || p.Pair.Active != want || p.Pair.Term != 2 {
			t.Errorf("br-1 sees %s with %+v", p.Name, p.Pair)
		}
	}
	if nm.RequestID != "failover-1" {
		t.Errorf("netmap request id %q, want the report's", nm.RequestID)
	}

	// PATCH priority, drain and undrain.
	a := e.must(200, "PATCH", "/api/v1/tenants/acme/appliances/hq-a", e.op, map[string]any{"priority": 150})
	if a["priority"] != 150.0 {
		t.Errorf("after PATCH: %v", a)
	}
	m = problem(t, e.do("PATCH", "/api/v1/tenants/acme/appliances/hq-a", e.op, map[string]any{"priority": 256}), 422, "invalid")
	if errs := m["errors"].([]any); errs[0].(map[string]any)["field"] != "priority" {
		t.Errorf("priority 256: %v", m)
	}
	problem(t, e.do("PATCH", "/api/v1/tenants/acme/appliances/hq-a", e.op, map[string]any{"priority": "high"}), 400, "bad-request")
	if d := e.must(200, "POST", "/api/v1/tenants/acme/appliances/hq-b/drain", e.op, nil, "X-Request-ID", "drain-1"); d["drained"] != true || d["drained_at"] == nil {
		t.Errorf("drain: %v", d)
	}
	res = e.do("GET", "/api/v1/sync?since=0", credB, nil)
	if nm, err := netmap.Decode(res.body); err != nil || nm.Pair == nil || !nm.Pair.Drained || nm.RequestID != "drain-1" {
		t.Errorf("hq-b's netmap after the drain: %+v, %v", nm, err)
	}

	st = e.must(200, "GET", "/api/v1/tenants/acme/sites/hq/pair", e.op, nil)
	if st["active"] != bID || st["active_name"] != "hq-b" || st["term"] != 2.0 || st["since"] == nil {
		t.Errorf("pair status: %v", st)
	}
	lf, _ := st["last_failover"].(map[string]any)
	if lf == nil || lf["from"] != aID || lf["from_name"] != "hq-a" || lf["to_name"] != "hq-b" || lf["reason"] != fo["reason"] {
		t.Errorf("last failover: %v", st["last_failover"])
	}
	if fs := st["failovers"].([]any); len(fs) != 1 || fs[0].(map[string]any)["term"] != 2.0 {
		t.Errorf("failovers: %v", fs)
	}
	members := st["members"].([]any)
	ma, mb := members[0].(map[string]any), members[1].(map[string]any)
	if ma["name"] != "hq-a" || ma["role"] != "standby" || ma["priority"] != 150.0 || mb["role"] != "active" || mb["drained"] != true {
		t.Errorf("members: %v", members)
	}
	if rep, _ := mb["last_report"].(map[string]any); rep == nil || rep["role"] != "active" || rep["term"] != 2.0 ||
		rep["last_failover"].(map[string]any)["from_name"] != "hq-a" || rep["reported_at"] == nil {
		t.Errorf("hq-b's last report: %v", mb["last_report"])
	}
	e.must(200, "POST", "/api/v1/tenants/acme/appliances/hq-b/undrain", e.op, nil)
	if b := e.must(200, "GET", "/api/v1/tenants/acme/appliances/hq-b", e.op, nil); b["drained"] != false || b["drained_at"] != nil {
		t.Errorf("after undrain: %v", b)
	}

	metrics := string(e.do("GET", "/metrics", "", nil).body)
	for _, want := range []string{
		`causeway_controller_pair_failovers_total{reason="partner-down"} 1`,
		`causeway_controller_pair_failovers_total{reason="other"} 0`,
		`causeway_controller_pair_members{role="active"} 1`,
		`causeway_controller_pair_members{role="standby"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// Report problems name the field; only a device reports.
	for _, c := range []struct {
		body         any
		status       int
		code, field  string
		detailSubstr string
	}{
		{map[string]any{"role": "leader", "term": 1, "since": rfc(now)}, 422, "invalid", "role", "want active or standby"},
		{map[string]any{"role": "active", "since": rfc(now)}, 422, "invalid", "term", "required"},
		{map[string]any{"role": "active", "term": 1, "since": "yesterday"}, 422, "invalid", "since", "RFC 3339"},
		{map[string]any{"role": "active", "term": 1, "since": rfc(now), "last_failover": map[string]any{"at": rfc(now), "to": "hq-a", "x": 1}}, 400, "bad-request", "last_failover.x", "unknown field"},
		{map[string]any{"role": "active", "term": 1, "since": rfc(now), "last_failover": map[string]any{"at": rfc(now), "to": "br-1"}}, 422, "invalid", "last_failover.to", `no appliance "br-1"`},
		{map[string]any{"role": "active", "term": "one", "since": rfc(now)}, 400, "bad-request", "term", "want a number"},
	} {
		m := problem(t, e.do("POST", "/api/v1/pair/report", credA, c.body), c.status, c.code)
		errs, _ := m["errors"].([]any)
		if len(errs) == 0 || errs[0].(map[string]any)["field"] != c.field || !strings.Contains(errs[0].(map[string]any)["detail"].(string), c.detailSubstr) {
			t.Errorf("report %v: %v", c.body, m)
		}
	}
	problem(t, e.do("POST", "/api/v1/pair/report", e.op, map[string]any{"role": "active", "term": 1, "since": rfc(now)}), 401, "unauthenticated")
}

func FuzzDecodePairReport(f *testing.F) {
	f.Add([]byte(`{"role":"active","term":4,"since":"2026-01-01T00:00:00Z","partner_alive":false,"last_failover":{"at":"2026-01-01T00:00:00Z","from":"office-1-a","to":"office-1-b","reason":"partner-down: no heartbeat for 900ms"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := decodePairReport(data)
		checkDecodeErr(t, err)
		if err == nil && ((in.Role != "active" && in.Role != "standby") || in.Since.IsZero() ||
			(in.LastFailover != nil && in.LastFailover.At.IsZero())) {
			t.Fatalf("accepted a malformed report %+v", in)
		}
	})
}
