package api

import (
	"strings"
	"testing"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/state"
)

func TestSLAAndProbeKeyAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Options{})
	e.setupTenant("acme", "10.1.0.0/24")
	e.must(201, "POST", "/api/v1/tenants/acme/sites", e.op, map[string]any{"name": "br", "kind": "office", "lan_prefixes": []string{"10.2.0.0/24"}})
	_, cred, _ := e.enroll(e.newToken("acme", "hq"), "hq-1")
	e.enroll(e.newToken("acme", "br"), "br-1")

	if m := e.must(200, "GET", "/api/v1/tenants/acme/sla", e.op, nil); m["max_loss_percent"] != 2.0 || m["max_rtt_ms"] != 150.0 || m["max_jitter_ms"] != 30.0 {
		t.Errorf("default SLA = %v", m)
	}
	// Every field is required, and each problem names its field.
	r := e.do("PUT", "/api/v1/tenants/acme/sla", e.op, map[string]any{"max_loss_percent": 1})
	p := problem(t, r, 422, "invalid")
	if s := string(r.body); !strings.Contains(s, `"max_rtt_ms"`) || !strings.Contains(s, `"max_jitter_ms"`) {
		t.Errorf("missing fields not named: %v", p)
	}
	r = e.do("PUT", "/api/v1/tenants/acme/sla", e.op, map[string]any{"max_loss_percent": 200, "max_rtt_ms": 100, "max_jitter_ms": 10})
	problem(t, r, 422, "invalid")
	if !strings.Contains(string(r.body), `"field":"max_loss_percent"`) {
		t.Errorf("range error not named: %s", r.body)
	}
	r = e.do("PUT", "/api/v1/tenants/acme/sla", e.op, map[string]any{"max_loss_percent": 1, "max_rtt_ms": "100ms", "max_jitter_ms": 10})
	problem(t, r, 400, "bad-request")
	if !strings.Contains(string(r.body), `"field":"max_rtt_ms"`) {
		t.Errorf("type error not named: %s", r.body)
	}
	sla := map[string]any{"max_loss_percent": 1.5, "max_rtt_ms": 100, "max_jitter_ms": 10}
	if m := e.must(200, "PUT", "/api/v1/tenants/acme/sla", e.op, sla); m["max_loss_percent"] != 1.5 {
		t.Errorf("PUT sla = %v", m)
	}

	// An override, by site names, in either order.
	over := map[string]any{"max_loss_percent": 0.5, "max_rtt_ms": 40, "max_jitter_ms": 5}
	o := e.must(200, "PUT", "/api/v1/tenants/acme/sla-overrides/br/hq", e.op, over)
	if o["site_a_name"] == o["site_b_name"] || o["sla"].(map[string]any)["max_rtt_ms"] != 40.0 {
		t.Errorf("override = %v", o)
	}
	problem(t, e.do("PUT", "/api/v1/tenants/acme/sla-overrides/hq/hq", e.op, over), 422, "invalid")
	problem(t, e.do("PUT", "/api/v1/tenants/acme/sla-overrides/hq/nowhere", e.op, over), 404, "not-found")
	if l := e.must(200, "GET", "/api/v1/tenants/acme/sla-overrides", e.op, nil); len(l["items"].([]any)) != 1 {
		t.Errorf("overrides = %v", l)
	}

	// The netmap carries the key and, per peer, the effective SLA.
	r = e.do("GET", "/api/v1/tenants/acme/appliances/hq-1/netmap", e.op, nil)
	nm, err := netmap.Decode(r.body)
	if err != nil {
		t.Fatalf("netmap: %v\n%s", err, r.body)
	}
	if len(nm.Probes.Keys) != 1 || nm.Probes.Interval.Milliseconds() != 200 || nm.Peers[0].SLA.MaxRTT.Milliseconds() != 40 {
		t.Errorf("netmap probes %+v, peer SLA %+v", nm.Probes, nm.Peers[0].SLA)
	}
	// The sync long-poll streams the same netmap (its Content-Length is
	// EncodedLen, which counts the per-site SLAs).
	r = e.do("GET", "/api/v1/sync?wait=0s", cred, nil)
	if r.status != 200 {
		t.Fatalf("sync: %d %s", r.status, r.body)
	}
	if synced, err := netmap.Decode(r.body); err != nil || !synced.SameContent(nm) {
		t.Errorf("sync: %v", err)
	}
	e.must(204, "DELETE", "/api/v1/tenants/acme/sla-overrides/hq/br", e.op, nil)
	problem(t, e.do("DELETE", "/api/v1/tenants/acme/sla-overrides/hq/br", e.op, nil), 404, "not-found")

	// Rotation: next, then refused within the grace, then current.
	ks := e.must(200, "POST", "/api/v1/tenants/acme/probe-key/rotate", e.op, nil)["items"].([]any)
	if len(ks) != 2 || ks[1].(map[string]any)["role"] != "next" || ks[1].(map[string]any)["current_from"] == nil {
		t.Fatalf("after rotate: %v", ks)
	}
	if strings.Contains(string(e.do("GET", "/api/v1/tenants/acme/probe-key", e.op, nil).body), "secret") {
		t.Error("the key listing shows a secret")
	}
	problem(t, e.do("POST", "/api/v1/tenants/acme/probe-key/rotate", e.op, nil), 409, "conflict")
	e.clock.add(state.DefaultProbeKeyGrace)
	ks = e.must(200, "POST", "/api/v1/tenants/acme/probe-key/rotate", e.op, nil)["items"].([]any)
	if ks[0].(map[string]any)["id"] != 2.0 || ks[1].(map[string]any)["role"] != "previous" {
		t.Errorf("after the second rotate: %v", ks)
	}
}
