package ctl

import (
	"bytes"
	"context"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/api"
	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/controller/store/storetest"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// TestPairCommands runs the pair commands against an in-process
// controller whose pair has failed over once.
func TestPairCommands(t *testing.T) {
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
	run := func(args ...string) (string, error) {
		t.Helper()
		var out bytes.Buffer
		err := Run(ctx, Config{Server: srv.URL, Token: op, Out: &out}, args)
		return out.String(), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		if err != nil {
			t.Fatalf("ctl %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	must("tenant", "create", "acme")
	must("site", "create", "acme", "hq", "--kind", "office", "--prefix", "10.1.0.0/24")
	if out := must("pair", "status", "acme", "hq"); !strings.Contains(out, "site hq is no pair: 0 live appliance(s)") {
		t.Errorf("status of an empty site: %s", out)
	}
	devs := map[string]*state.Device{}
	for _, name := range []string{"hq-a", "hq-b"} {
		_, tok, err := st.CreateEnrollmentToken(ctx, &state.Principal{Scope: store.ScopeOperator}, "acme", state.EnrollmentTokenInput{Site: "hq"})
		if err != nil {
			t.Fatal(err)
		}
		k, _ := wgkey.NewPrivate()
		e, err := st.Enroll(ctx, state.EnrollInput{Token: tok, Name: name, PublicKey: k.Public(),
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:51820")}})
		if err != nil {
			t.Fatal(err)
		}
		devs[name], _ = st.AuthenticateDevice(ctx, e.Credential)
	}
	if out := must("pair", "status", "acme", "hq"); !strings.Contains(out, "pair hq: no active member reported yet") {
		t.Errorf("status before reports: %s", out)
	}
	now := time.Now()
	if _, err := st.ReportPair(ctx, devs["hq-a"], state.PairReportInput{Role: store.PairActive, Term: 1, Since: now.Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ReportPair(ctx, devs["hq-b"], state.PairReportInput{Role: store.PairActive, Term: 2, Since: now, PartnerAlive: true,
		LastFailover: &state.PairFailoverInput{At: now, From: "hq-a", To: "hq-b", Reason: "partner-down: no heartbeat for 900ms"}}); err != nil {
		t.Fatal(err)
	}
	if out := must("pair", "priority", "acme", "hq-a", "150"); !strings.Contains(out, `"priority": 150`) {
		t.Errorf("pair priority: %s", out)
	}
	if out := must("pair", "drain", "acme", "hq-b"); !strings.Contains(out, `"drained": true`) {
		t.Errorf("pair drain: %s", out)
	}
	out := must("pair", "status", "acme", "hq")
	for _, want := range []string{
		"pair hq: active hq-b since ", ", term 2",
		"last failover ", ": hq-a -> hq-b (partner-down: no heartbeat for 900ms)",
		"NAME  PRIORITY  DRAINED  ROLE     CONNECTED",
		"hq-a  150       no       standby  no",
		"hq-b  100       yes      active   no",
		"active, term 2, partner alive",
		"recent failovers", "hq-a  hq-b  2     partner-down",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("pair status lacks %q:\n%s", want, out)
		}
	}
	if out := must("pair", "undrain", "acme", "hq-b"); !strings.Contains(out, `"drained": false`) {
		t.Errorf("pair undrain: %s", out)
	}
	var js bytes.Buffer
	if err := Run(ctx, Config{Server: srv.URL, Token: op, Out: &js, JSON: true}, []string{"pair", "status", "acme", "hq"}); err != nil ||
		!strings.Contains(js.String(), `"active_name": "hq-b"`) {
		t.Errorf("--json: %v\n%s", err, js.String())
	}
	// Mistakes: a usage error, or the API's problem with its field.
	if _, err := run("pair", "priority", "acme", "hq-a", "high"); !IsUsage(err) || !strings.Contains(err.Error(), "want N from 0 to 255") {
		t.Errorf("priority high: %v", err)
	}
	if _, err := run("pair", "status", "acme"); !IsUsage(err) {
		t.Errorf("status without a site: %v", err)
	}
	if _, err := run("pair", "drain", "acme", "nope"); err == nil || !strings.Contains(err.Error(), `appliance "nope" not found`) {
		t.Errorf("drain nope: %v", err)
	}
	// Help needs no server or token.
	for _, args := range [][]string{{"pair"}, {"pair", "--help"}, {"pair", "status", "-h"}} {
		var out bytes.Buffer
		if err := Run(ctx, Config{Out: &out}, args); err != nil || !strings.Contains(out.String(), "pair priority TENANT APPLIANCE N") {
			t.Errorf("ctl %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
	}
	if !strings.Contains(Usage, "pair status TENANT SITE") {
		t.Error("the command summary lacks the pair commands")
	}
}
