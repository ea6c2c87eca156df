package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller/ctl"
	"github.com/causeway-net/causeway/controller/metering"
	"github.com/causeway-net/causeway/controller/metering/sink"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

const sinkAuth = "Bearer sink-secret"

// startSink runs a meter sink on a loopback port until the test ends.
func startSink(t *testing.T, opts sink.Options) (*sink.Sink, string) {
	t.Helper()
	opts.DB = filepath.Join(t.TempDir(), "sink.db")
	s, err := sink.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- sink.Serve(ctx, "127.0.0.1:0", s, func(a net.Addr) { addr <- a }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sink: %v", err)
		}
		s.Close()
	})
	select {
	case a := <-addr:
		return s, "http://" + a.String() + "/events"
	case err := <-done:
		t.Fatal(err)
	}
	return nil, ""
}

// meteredController is a controller (TLS off) exporting to a sink, with
// tenant acme (billed to cus_acme) of sites hq and br, and an appliance
// at hq.
type meteredController struct {
	t      *testing.T
	r      *running
	cfg    ctl.Config
	sink   *sink.Sink
	cred   string
	br     string
	nextSq int
}

func newMeteredController(t *testing.T, sinkOpts sink.Options, mc metering.Config) *meteredController {
	t.Helper()
	sinkOpts.Auth = sinkAuth
	sk, url := startSink(t, sinkOpts)
	mc.URL, mc.Auth = url, sinkAuth
	dir := t.TempDir()
	r := start(t, Options{Listen: "127.0.0.1:0", DataDir: dir, TLS: TLSOff, Metering: mc})
	m := &meteredController{t: t, r: r, sink: sk, nextSq: 1}
	m.cfg = ctl.Config{Server: r.srv.URL(), Token: readToken(t, dir)}
	runCtl(t, m.cfg, "tenant", "create", "acme")
	runCtl(t, m.cfg, "site", "create", "acme", "hq", "--kind", "office", "--prefix", "10.1.0.0/24")
	var br struct{ ID string }
	json.Unmarshal([]byte(runCtl(t, m.cfg, "site", "create", "acme", "br", "--kind", "office", "--prefix", "10.2.0.0/24")), &br)
	m.br = br.ID
	if out := runCtl(t, m.cfg, "tenant", "update", "acme", "--billing-customer", "cus_acme"); !strings.Contains(out, `"billing_customer": "cus_acme"`) {
		t.Fatalf("tenant update: %s", out)
	}
	var tok struct{ Token string }
	json.Unmarshal([]byte(runCtl(t, m.cfg, "token", "create", "acme", "--site", "hq")), &tok)
	k, _ := wgkey.NewPrivate()
	var en struct{ Credential string }
	m.post("/api/v1/enroll", "", map[string]any{"token": tok.Token, "name": "hq-1", "public_key": k.Public().String()}, &en)
	m.cred = en.Credential
	return m
}

func readToken(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, OperatorTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// post sends a JSON request and decodes the answer; it returns the
// status and how long the call took.
func (m *meteredController) post(path, token string, body, out any) (int, time.Duration) {
	m.t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", m.r.srv.URL()+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	start := time.Now()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		m.t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	took := time.Since(start)
	if res.StatusCode >= 300 {
		m.t.Fatalf("POST %s: %d %s", path, res.StatusCode, data)
	}
	if out != nil {
		json.Unmarshal(data, out)
	}
	return res.StatusCode, took
}

// report sends n usage records (10 s each, in the hour before last) and
// returns how long the call took.
func (m *meteredController) report(n int) time.Duration {
	m.t.Helper()
	hour := time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Hour)
	var recs []any
	for range n {
		start := hour.Add(time.Duration(m.nextSq%360) * 10 * time.Second)
		recs = append(recs, map[string]any{"seq": m.nextSq, "start": start.Format(time.RFC3339), "end": start.Add(10 * time.Second).Format(time.RFC3339),
			"usage": []any{
				map[string]any{"meter": "overlay", "peer_site": m.br, "direction": "tx", "bytes": 1000 * m.nextSq, "packets": m.nextSq},
				map[string]any{"meter": "overlay", "peer_site": m.br, "direction": "rx", "bytes": 3000, "packets": 3},
				map[string]any{"meter": "gateway", "direction": "tx", "bytes": 50, "packets": 1},
				map[string]any{"meter": "gateway", "direction": "rx", "bytes": 70, "packets": 1},
			}})
		m.nextSq++
	}
	var ack struct{ Acked []int }
	_, took := m.post("/api/v1/usage/report", m.cred, map[string]any{"records": recs}, &ack)
	if len(ack.Acked) != n {
		m.t.Fatalf("acked %v of %d", ack.Acked, n)
	}
	return took
}

// ledger sums the API's usage per exported meter name.
func (m *meteredController) ledger() map[string]int64 {
	m.t.Helper()
	var rep struct {
		Items []struct {
			Meter, Direction string
			Bytes            int64
		}
	}
	cfg := m.cfg
	cfg.JSON = true
	if err := json.Unmarshal([]byte(runCtl(m.t, cfg, "usage", "--tenant", "acme", "--since", "6h")), &rep); err != nil {
		m.t.Fatal(err)
	}
	out := map[string]int64{}
	for _, it := range rep.Items {
		out[metering.DefaultMeters[it.Meter+"."+it.Direction]] += it.Bytes
	}
	return out
}

func (m *meteredController) received() (map[string]int64, *sink.Totals) {
	m.t.Helper()
	tot, err := m.sink.Totals(context.Background(), []string{"customer", "meter"})
	if err != nil {
		m.t.Fatal(err)
	}
	out := map[string]int64{}
	for _, g := range tot.Groups {
		if g.Customer != "cus_acme" {
			m.t.Errorf("events of customer %q", g.Customer)
		}
		out[g.Meter] += g.Bytes
	}
	return out, tot
}

// waitExported waits until the sink's sums equal the ledger's.
func (m *meteredController) waitExported(within time.Duration) *sink.Totals {
	m.t.Helper()
	want := m.ledger()
	deadline := time.Now().Add(within)
	for {
		got, tot := m.received()
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return tot
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("after %s the sink has %v, the ledger %v", within, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (m *meteredController) get(path string) string {
	m.t.Helper()
	req, _ := http.NewRequest("GET", m.r.srv.URL()+path, nil)
	req.Header.Set("Authorization", "Bearer "+m.cfg.Token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		m.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// TestMeteringExport runs the export end to end: usage reported over the
// API reaches the meter sink as CloudEvents, the sums agree, and ctl, the
// status API and /metrics say so.
func TestMeteringExport(t *testing.T) {
	t.Parallel()
	m := newMeteredController(t, sink.Options{}, metering.Config{BatchSize: 4, PollInterval: 20 * time.Millisecond})
	m.report(10)
	m.report(5)
	tot := m.waitExported(10 * time.Second)
	if tot.Duplicates != 0 || tot.Events != 8 { // 2 reports x 4 meters, one hour
		t.Errorf("sink totals %+v", tot)
	}
	waitUntil(t, 5*time.Second, func() bool { return regexpMatch(`queue length\s+0\n`, runCtl(t, m.cfg, "metering", "status")) })
	out := runCtl(t, m.cfg, "metering", "status")
	for _, want := range []string{`export enabled\s+true\n`, `\ndead letters\s+0\n`, `\nsent\s+8\n`, `endpoint\s+http://127.0.0.1:\d+/events\n`} {
		if !regexpMatch(want, out) {
			t.Errorf("metering status lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "sink-secret") {
		t.Errorf("metering status shows the credential:\n%s", out)
	}
	out = runCtl(t, m.cfg, "usage", "--tenant", "acme", "--since", "6h", "--by", "day")
	if !strings.Contains(out, "by day") || !regexpMatch(`total\s+overlay\s+tx\s+120000\s+120`, out) || !regexpMatch(`hq\s+overlay\s+tx\s+br\s+120000`, out) {
		t.Errorf("ctl usage:\n%s", out)
	}
	metrics := m.get("/metrics")
	for _, want := range []string{"causeway_metering_queue_length 0", `causeway_metering_events_total{result="sent"} 8`,
		"causeway_metering_dead_letters 0", "causeway_metering_oldest_age_seconds 0"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Events carry what docs/metering.md says.
	evs, err := m.sink.Events(context.Background(), 100)
	if err != nil || len(evs) != 8 {
		t.Fatalf("events %d, %v", len(evs), err)
	}
	for _, ev := range evs {
		var d metering.UsageData
		if err := json.Unmarshal(ev.Data, &d); err != nil || ev.Type != metering.EventType || ev.Subject != "cus_acme" ||
			!strings.HasPrefix(ev.Source, "/causeway/tenants/tn_") || d.Customer != "cus_acme" || d.TenantName != "acme" || d.Records == 0 {
			t.Errorf("event %+v (data %+v, %v)", ev, d, err)
		}
	}
}

// TestMeteringSlowAPI: the metering API answers after 5 s. Ingest and
// the other API calls do not wait for it.
func TestMeteringSlowAPI(t *testing.T) {
	t.Parallel()
	m := newMeteredController(t, sink.Options{Delay: 5 * time.Second}, metering.Config{Timeout: 15 * time.Second, PollInterval: 20 * time.Millisecond})
	start := time.Now()
	m.report(3)
	time.Sleep(500 * time.Millisecond) // the worker is waiting for its answer now
	var slowest time.Duration
	for range 5 {
		slowest = max(slowest, m.report(2))
		s := time.Now()
		m.get("/api/v1/tenants")
		runCtl(t, m.cfg, "usage", "--tenant", "acme")
		slowest = max(slowest, time.Since(s))
	}
	if slowest > time.Second {
		t.Errorf("an API call took %s while the metering API was slow", slowest)
	}
	if tot, _ := m.sink.Totals(context.Background(), nil); tot.Events != 0 && time.Since(start) < 5*time.Second {
		t.Fatalf("the sink answered early")
	}
	tot := m.waitExported(30 * time.Second)
	if tot.Duplicates != 0 {
		t.Errorf("%d duplicates", tot.Duplicates)
	}
	t.Logf("slowest API call while the metering API took 5 s: %s; exported after %s", slowest, time.Since(start).Round(time.Millisecond))
}

func waitUntil(t *testing.T, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s", within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }
