package api

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// usageReport is a report of n 10 s records from seq first on, in the
// hour before now, with overlay traffic to peer and gateway traffic.
func usageReport(now time.Time, first int, peer string, n ...int) map[string]any {
	count := 1
	if len(n) > 0 {
		count = n[0]
	}
	hour := now.Add(-time.Hour).Truncate(time.Hour)
	var recs []any
	for i := range count {
		start := hour.Add(time.Duration(first+i) * 10 * time.Second)
		recs = append(recs, map[string]any{"seq": first + i, "start": start.Format(time.RFC3339Nano),
			"end": start.Add(10 * time.Second).Format(time.RFC3339Nano), "usage": []any{
				map[string]any{"meter": "overlay", "peer_site": peer, "direction": "tx", "bytes": 1000, "packets": 10},
				map[string]any{"meter": "overlay", "peer_site": peer, "direction": "rx", "bytes": 2000, "packets": 20},
				map[string]any{"meter": "gateway", "direction": "tx", "bytes": 300, "packets": 3},
			}})
	}
	return map[string]any{"records": recs}
}

func TestUsageAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	_, hq, tok := e.setupTenant("acme", "10.1.0.0/24")
	br := e.must(201, "POST", "/api/v1/tenants/acme/sites", e.op, map[string]any{"name": "br", "kind": "office", "lan_prefixes": []string{"10.2.0.0/24"}})["id"].(string)
	_, cred, _ := e.enroll(tok, "hq-1")
	admin := e.must(201, "POST", "/api/v1/tenants/acme/api-tokens", e.op, nil)["token"].(string)

	m := e.must(200, "POST", "/api/v1/usage/report", cred, usageReport(e.clock.now(), 1, br, 3))
	if fmt.Sprint(m["acked"]) != "[1 2 3]" {
		t.Fatalf("acked %v", m)
	}
	// Sent again with one more: all acknowledged, the new one counted.
	m = e.must(200, "POST", "/api/v1/usage/report", cred, usageReport(e.clock.now(), 1, br, 4))
	if fmt.Sprint(m["acked"]) != "[1 2 3 4]" {
		t.Fatalf("acked %v", m)
	}
	// An empty report is fine.
	if m := e.must(200, "POST", "/api/v1/usage/report", cred, map[string]any{}); fmt.Sprint(m["acked"]) != "[]" {
		t.Fatalf("empty report: %v", m)
	}

	u := e.must(200, "GET", "/api/v1/usage?by=day", admin, nil)
	items := u["items"].([]any)
	if len(items) != 3 || u["by"] != "day" {
		t.Fatalf("usage by day: %v", u)
	}
	sum := map[string]float64{}
	for _, it := range items {
		l := it.(map[string]any)
		sum[l["meter"].(string)+"."+l["direction"].(string)] += l["bytes"].(float64)
		if l["site"] != hq || l["site_name"] != "hq" || l["tenant_name"] != "acme" {
			t.Errorf("line %v", l)
		}
		if l["meter"] == "overlay" && (l["peer_site"] != br || l["peer_site_name"] != "br") {
			t.Errorf("overlay line %v", l)
		}
	}
	if sum["overlay.tx"] != 4000 || sum["overlay.rx"] != 8000 || sum["gateway.tx"] != 1200 {
		t.Errorf("sums %v", sum)
	}
	from := e.clock.now().Add(-3 * time.Hour).UTC().Format(time.RFC3339)
	u = e.must(200, "GET", "/api/v1/usage?tenant=acme&site=hq&by=hour&from="+from, e.op, nil)
	if len(u["items"].([]any)) != 3 {
		t.Errorf("usage by hour: %v", u)
	}
	r := e.do("GET", "/api/v1/usage?by=week&from=yesterday", admin, nil)
	problem(t, r, 422, "invalid")
	for _, f := range []string{`"field":"by"`, `"field":"from"`} {
		if !strings.Contains(string(r.body), f) {
			t.Errorf("usage query error does not name %s: %s", f, r.body)
		}
	}

	// Each problem of a report names its field, and nothing of it counts.
	bad := usageReport(e.clock.now(), 10, br, 3)
	recs := bad["records"].([]any)
	recs[1].(map[string]any)["usage"].([]any)[0].(map[string]any)["direction"] = "sideways"
	recs[2].(map[string]any)["seq"] = 10
	delete(recs[0].(map[string]any)["usage"].([]any)[2].(map[string]any), "bytes")
	r = e.do("POST", "/api/v1/usage/report", cred, bad)
	problem(t, r, 400, "bad-request")
	for _, f := range []string{`"field":"records[1].usage[0].direction"`, `"field":"records[2].seq"`, `"field":"records[0].usage[2].bytes"`} {
		if !strings.Contains(string(r.body), f) {
			t.Errorf("report error does not name %s: %s", f, r.body)
		}
	}
	now := e.clock.now()
	for name, rec := range map[string]map[string]any{
		"records[0].end":                {"seq": 50, "start": now.Truncate(time.Hour).Add(-10 * time.Second).Format(time.RFC3339), "end": now.Truncate(time.Hour).Add(10 * time.Second).Format(time.RFC3339)},
		"records[0].usage[0].meter":     {"seq": 50, "start": now.Add(-time.Minute).Format(time.RFC3339), "end": now.Add(-time.Minute + time.Second).Format(time.RFC3339), "usage": []any{map[string]any{"meter": "wifi", "direction": "tx", "bytes": 1, "packets": 1}}},
		"records[0].usage[0].peer_site": {"seq": 50, "start": now.Add(-time.Minute).Format(time.RFC3339), "end": now.Add(-time.Minute + time.Second).Format(time.RFC3339), "usage": []any{map[string]any{"meter": "overlay", "direction": "tx", "bytes": 1, "packets": 1}}},
		"records[0].usage[1]":           {"seq": 50, "start": now.Add(-time.Minute).Format(time.RFC3339), "end": now.Add(-time.Minute + time.Second).Format(time.RFC3339), "usage": []any{map[string]any{"meter": "gateway", "direction": "tx", "bytes": 1, "packets": 1}, map[string]any{"meter": "gateway", "direction": "tx", "bytes": 1, "packets": 1}}},
		"records[0].usage[0].packets":   {"seq": 50, "start": now.Add(-time.Minute).Format(time.RFC3339), "end": now.Add(-time.Minute + time.Second).Format(time.RFC3339), "usage": []any{map[string]any{"meter": "gateway", "direction": "rx", "bytes": 1, "packets": -1}}},
		"records[0].seq":                {"start": now.Add(-time.Minute).Format(time.RFC3339), "end": now.Add(-time.Minute + time.Second).Format(time.RFC3339)},
	} {
		r := e.do("POST", "/api/v1/usage/report", cred, map[string]any{"records": []any{rec}})
		problem(t, r, 400, "bad-request")
		if !strings.Contains(string(r.body), `"field":"`+name+`"`) {
			t.Errorf("want an error naming %s: %s", name, r.body)
		}
	}
	future := map[string]any{"seq": 60, "start": now.Add(10 * time.Minute).Format(time.RFC3339), "end": now.Add(11 * time.Minute).Format(time.RFC3339)}
	if now.Add(10*time.Minute).Truncate(time.Hour) == now.Add(11*time.Minute).Truncate(time.Hour) {
		if r := e.do("POST", "/api/v1/usage/report", cred, map[string]any{"records": []any{future}}); !strings.Contains(string(r.body), "is in the future") {
			t.Errorf("a record from the future: %d %s", r.status, r.body)
		}
	}
	r = e.do("POST", "/api/v1/usage/report", cred, map[string]any{"records": make([]any, 501)})
	problem(t, r, 400, "bad-request")
	if !strings.Contains(string(r.body), `"field":"records"`) {
		t.Errorf("501 records: %s", r.body)
	}
	problem(t, e.do("POST", "/api/v1/usage/report", cred, strings.Repeat(" ", MaxUsageBody+1)), 413, "body-too-large")
	u = e.must(200, "GET", "/api/v1/usage?by=day", admin, nil)
	if len(u["items"].([]any)) != 3 || u["items"].([]any)[0].(map[string]any)["bytes"].(float64) > 1200 {
		t.Errorf("a refused report counted: %v", u)
	}

	// Only a device credential reports; a revoked appliance is refused.
	problem(t, e.do("POST", "/api/v1/usage/report", admin, usageReport(now, 90, br)), 401, "unauthenticated")
	problem(t, e.do("POST", "/api/v1/usage/report", "cwd_unknown", usageReport(now, 90, br)), 401, "unauthenticated")
	e.must(200, "POST", "/api/v1/tenants/acme/appliances/hq-1/revoke", e.op, nil)
	r = e.do("POST", "/api/v1/usage/report", cred, usageReport(now, 90, br))
	problem(t, r, 403, "forbidden")
	if !strings.Contains(string(r.body), "revoked") {
		t.Errorf("revoked: %s", r.body)
	}

	// The billing customer: operators set it, tenant admins see it.
	problem(t, e.do("PATCH", "/api/v1/tenants/acme", admin, map[string]any{"billing_customer": "cus_1"}), 403, "forbidden")
	problem(t, e.do("PATCH", "/api/v1/tenants/acme", e.op, map[string]any{"billing_customer": "x\ty"}), 422, "invalid")
	problem(t, e.do("PATCH", "/api/v1/tenants/acme", e.op, map[string]any{"billing": "cus_1"}), 400, "bad-request")
	if m := e.must(200, "PATCH", "/api/v1/tenants/acme", e.op, map[string]any{"billing_customer": "cus_1"}); m["billing_customer"] != "cus_1" {
		t.Errorf("PATCH tenant: %v", m)
	}
	if m := e.must(200, "GET", "/api/v1/tenants/acme", admin, nil); m["billing_customer"] != "cus_1" {
		t.Errorf("GET tenant: %v", m)
	}

	// Export administration: operators only; without a worker, disabled.
	st := e.must(200, "GET", "/api/v1/metering/status", e.op, nil)
	if st["enabled"] != false || st["queue_length"].(float64) != 0 || st["dead_letters"].(float64) != 0 {
		t.Errorf("status without export: %v", st)
	}
	problem(t, e.do("GET", "/api/v1/metering/status", admin, nil), 403, "forbidden")
	if m := e.must(200, "GET", "/api/v1/metering/dead-letters?limit=5", e.op, nil); len(m["items"].([]any)) != 0 {
		t.Errorf("dead letters %v", m)
	}
	problem(t, e.do("GET", "/api/v1/metering/dead-letters?limit=0", e.op, nil), 422, "invalid")
	problem(t, e.do("POST", "/api/v1/metering/dead-letters/retry", e.op, map[string]any{}), 422, "invalid")
	problem(t, e.do("POST", "/api/v1/metering/dead-letters/retry", admin, map[string]any{"all": true}), 403, "forbidden")
	if m := e.must(200, "POST", "/api/v1/metering/dead-letters/retry", e.op, map[string]any{"all": true}); m["retried"] != 0.0 {
		t.Errorf("retry: %v", m)
	}
}
