package ctl

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/causeway-net/causeway/controller/api"
	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store/storetest"
)

// TestSLAAndProbeKeyCommands runs the SLA and probe-key commands against
// an in-process controller.
func TestSLAAndProbeKeyCommands(t *testing.T) {
	ctx := context.Background()
	st, err := state.New(ctx, state.Options{Store: storetest.Open(t, storetest.SQLiteDSN(t))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv := httptest.NewServer(api.New(api.Options{State: st}))
	t.Cleanup(srv.Close)
	op, err := st.Bootstrap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := Run(ctx, Config{Server: srv.URL, Token: op, Out: &out}, args); err != nil {
			t.Fatalf("ctl %s: %v", strings.Join(args, " "), err)
		}
		return out.String()
	}
	run("tenant", "create", "acme")
	run("site", "create", "acme", "hq", "--kind", "office", "--prefix", "10.1.0.0/24")
	run("site", "create", "acme", "br", "--kind", "office", "--prefix", "10.2.0.0/24")
	if out := run("sla", "set", "acme", "--max-rtt", "90"); !strings.Contains(out, `"max_rtt_ms": 90`) || !strings.Contains(out, `"max_loss_percent": 2`) {
		t.Errorf("sla set kept the other values? %s", out)
	}
	run("sla-override", "set", "acme", "hq", "br", "--max-loss", "0.5")
	if out := run("sla-override", "set", "acme", "br", "hq", "--max-jitter", "7"); !strings.Contains(out, `"max_loss_percent": 0.5`) ||
		!strings.Contains(out, `"max_jitter_ms": 7`) || !strings.Contains(out, `"max_rtt_ms": 90`) {
		t.Errorf("sla-override set should start from the pair's override: %s", out)
	}
	if out := run("sla-override", "list", "acme"); !strings.Contains(out, "0.5") || !strings.Contains(out, "hq") {
		t.Errorf("sla-override list: %s", out)
	}
	if out := run("probe-key", "rotate", "acme"); !strings.Contains(out, "next") {
		t.Errorf("probe-key rotate: %s", out)
	}
	if out := run("probe-key", "list", "acme"); !strings.Contains(out, "current") || !strings.Contains(out, "next") {
		t.Errorf("probe-key list: %s", out)
	}
	run("sla-override", "delete", "acme", "hq", "br")
	var out bytes.Buffer
	err = Run(ctx, Config{Server: srv.URL, Token: op, Out: &out}, []string{"sla", "set", "acme", "--max-loss", "300"})
	if err == nil || !strings.Contains(err.Error(), "max_loss_percent") {
		t.Errorf("an invalid threshold: %v", err)
	}
}
