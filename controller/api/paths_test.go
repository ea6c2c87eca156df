package api

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/state"
)

// pointBody is one reported interval from uplink wan1 to peer.
func pointBody(peer string, start time.Time, received, lost int, rttMS int) map[string]any {
	return map[string]any{
		"peer": peer, "uplink": "wan1", "remote": "198.18.0.1:51820",
		"start": start.Format(time.RFC3339Nano), "end": start.Add(10 * time.Second).Format(time.RFC3339Nano),
		"sent": received + lost, "received": received, "lost": lost,
		"rtt_min_us": rttMS * 500, "rtt_mean_us": rttMS * 1000, "rtt_p50_us": rttMS * 1000,
		"rtt_p99_us": rttMS * 2000, "rtt_max_us": rttMS * 3000, "jitter_us": rttMS * 100,
	}
}

func TestPathReportAndHistory(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	e.setupTenant("acme", "10.1.0.0/24")
	e.must(201, "POST", "/api/v1/tenants/acme/sites", e.op, map[string]any{"name": "br", "kind": "office", "lan_prefixes": []string{"10.2.0.0/24"}})
	_, cred, _ := e.enroll(e.newToken("acme", "hq"), "hq-1")
	e.enroll(e.newToken("acme", "br"), "br-1")
	_, _, tokB := e.setupTenant("globex", "10.1.0.0/24")
	e.enroll(tokB, "g-1")
	adminA := e.must(201, "POST", "/api/v1/tenants/acme/api-tokens", e.op, nil)["token"].(string)

	start := e.clock.now().Add(-time.Minute).Truncate(time.Minute)
	batch := []any{pointBody("br-1", start, 49, 1, 10), pointBody("br-1", start.Add(10*time.Second), 50, 0, 20), pointBody("nope", start, 50, 0, 1)}
	m := e.must(200, "POST", "/api/v1/paths/report", cred, map[string]any{"points": batch})
	if m["accepted"] != 2.0 || m["duplicate"] != 0.0 || m["ignored"] != 1.0 {
		t.Fatalf("first report: %v", m)
	}
	// The same batch again (its answer was lost): nothing counts twice.
	m = e.must(200, "POST", "/api/v1/paths/report", cred, map[string]any{"points": batch})
	if m["accepted"] != 0.0 || m["duplicate"] != 2.0 {
		t.Fatalf("resend: %v", m)
	}
	// Only a device credential reports.
	problem(t, e.do("POST", "/api/v1/paths/report", adminA, map[string]any{"points": batch}), 401, "unauthenticated")
	// Each problem names its field.
	bad := pointBody("br-1", start, 1, 0, 1)
	bad["remote"] = "nowhere"
	bad["end"] = start.Add(-time.Second).Format(time.RFC3339)
	r := e.do("POST", "/api/v1/paths/report", cred, map[string]any{"points": []any{pointBody("br-1", start, 1, 0, 1), bad}})
	problem(t, r, 422, "invalid")
	for _, f := range []string{`"field":"points[1].remote"`, `"field":"points[1].end"`} {
		if !strings.Contains(string(r.body), f) {
			t.Errorf("report error does not name %s: %s", f, r.body)
		}
	}

	// The 10 s series and its summary.
	h := e.must(200, "GET", "/api/v1/tenants/acme/paths?from=hq&to=br&since=1h", adminA, nil)
	paths := h["paths"].([]any)
	if len(paths) != 1 || h["step"] != "10s" || h["from_name"] != "hq" {
		t.Fatalf("history: %v", h)
	}
	p := paths[0].(map[string]any)
	sum := p["summary"].(map[string]any)
	if p["appliance"] != "hq-1" || p["peer"] != "br-1" || p["uplink"] != "wan1" || p["remote"] != "198.18.0.1:51820" ||
		len(p["series"].([]any)) != 2 || sum["sent"] != 100.0 || sum["lost"] != 1.0 || sum["loss_percent"] != 1.0 ||
		sum["rtt_p50_ms"] != 20.0 || sum["rtt_p99_ms"] != 40.0 || sum["samples"] != 2.0 {
		t.Fatalf("path: %v", p)
	}
	// The other direction has no paths.
	if h := e.must(200, "GET", "/api/v1/tenants/acme/paths?from=br&to=hq", adminA, nil); len(h["paths"].([]any)) != 0 {
		t.Errorf("reverse direction: %v", h)
	}
	// Rollups once the minute is over and upkeep ran.
	e.clock.add(2 * time.Minute)
	if err := e.st.MaintainPaths(context.Background()); err != nil {
		t.Fatal(err)
	}
	h = e.must(200, "GET", "/api/v1/tenants/acme/paths?from=hq&to=br&since=24h&step=1m", adminA, nil)
	if paths := h["paths"].([]any); len(paths) != 1 || h["step"] != "1m" ||
		len(paths[0].(map[string]any)["series"].([]any)) != 1 ||
		paths[0].(map[string]any)["summary"].(map[string]any)["sent"] != 100.0 {
		t.Fatalf("rollups: %v", h)
	}

	// Retention: after 48 h the points are gone, the rollups stay (30 days).
	e.clock.add(state.PointRetention)
	if err := e.st.MaintainPaths(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h := e.must(200, "GET", "/api/v1/tenants/acme/paths?from=hq&to=br&since=48h&step=10s", adminA, nil); len(h["paths"].([]any)) != 0 {
		t.Errorf("points kept past retention: %v", h)
	}
	if h := e.must(200, "GET", "/api/v1/tenants/acme/paths?from=hq&to=br&since=72h", adminA, nil); len(h["paths"].([]any)) != 1 || h["step"] != "1m" {
		t.Errorf("rollups after 48 h: %v", h)
	}
	e.clock.add(state.RollupRetention)
	if err := e.st.MaintainPaths(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h := e.must(200, "GET", "/api/v1/tenants/acme/paths?from=hq&to=br&since=720h", adminA, nil); len(h["paths"].([]any)) != 0 {
		t.Errorf("rollups kept past retention: %v", h)
	}

	// Validation errors name the field.
	for q, field := range map[string]string{
		"to=br":                            "from",
		"from=hq":                          "to",
		"from=hq&to=nope":                  "to",
		"from=hq&to=br&since=forever":      "since",
		"from=hq&to=br&since=1000h":        "since",
		"from=hq&to=br&step=5s":            "step",
		"from=hq&to=br&since=72h&step=10s": "step",
	} {
		r := e.do("GET", "/api/v1/tenants/acme/paths?"+q, adminA, nil)
		problem(t, r, 422, "invalid")
		if !strings.Contains(string(r.body), `"field":"`+field+`"`) {
			t.Errorf("?%s: error does not name %s: %s", q, field, r.body)
		}
	}
	// Another tenant's paths are not found, whatever the query.
	for _, q := range []string{"from=hq&to=hq", "", "step=bad"} {
		problem(t, e.do("GET", "/api/v1/tenants/globex/paths?"+q, adminA, nil), 404, "not-found")
	}
}
