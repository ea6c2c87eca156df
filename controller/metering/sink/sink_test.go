package sink_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/causeway-net/causeway/controller/metering"
	"github.com/causeway-net/causeway/controller/metering/sink"
)

var ctx = context.Background()

func open(t *testing.T, path string, opts sink.Options) (*sink.Sink, *httptest.Server) {
	t.Helper()
	opts.DB = path
	s, err := sink.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() { srv.Close(); s.Close() })
	return s, srv
}

func usageEvent(t *testing.T, id, tenant, meter string, hour time.Time, bytes int64) event.Event {
	t.Helper()
	ev := event.New()
	ev.SetID(id)
	ev.SetSource("/causeway/tenants/" + tenant + "/sites/st_1")
	ev.SetType(metering.EventType)
	ev.SetSubject("cus_" + tenant)
	ev.SetTime(hour)
	if err := ev.SetData(event.ApplicationJSON, metering.UsageData{Tenant: tenant, Customer: "cus_" + tenant, Site: "st_1",
		Meter: meter, Direction: "tx", Hour: hour, Start: hour, End: hour.Add(10 * time.Second), Bytes: bytes, Packets: bytes / 100, Records: 1}); err != nil {
		t.Fatal(err)
	}
	return ev
}

func post(t *testing.T, req *http.Request, auth string) (int, string) {
	t.Helper()
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func getJSON(t *testing.T, url, auth string, v any) int {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", auth)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if v != nil {
		json.NewDecoder(res.Body).Decode(v)
	}
	return res.StatusCode
}

func TestSink(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sink.db")
	const auth = "Bearer s3cret"
	_, srv := open(t, path, sink.Options{Auth: auth})
	hour := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

	// Structured batch mode.
	batch := []event.Event{usageEvent(t, "e1", "tn_a", "m.tx", hour, 100), usageEvent(t, "e2", "tn_a", "m.tx", hour.Add(time.Hour), 200),
		usageEvent(t, "e3", "tn_b", "m.rx", hour, 400)}
	req, err := cehttp.NewHTTPRequestFromEvents(ctx, srv.URL, batch)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := post(t, req, ""); code != 401 {
		t.Fatalf("without auth: %d %s", code, body)
	}
	req, _ = cehttp.NewHTTPRequestFromEvents(ctx, srv.URL, batch)
	if code, body := post(t, req, auth); code != 200 || !strings.Contains(body, `"accepted":3`) {
		t.Fatalf("batch: %d %s", code, body)
	}
	// Structured mode, a copy of e1 and a new event.
	for _, ev := range []event.Event{batch[0], usageEvent(t, "e4", "tn_a", "m.tx", hour, 1000)} {
		b, _ := json.Marshal(ev)
		req, _ := http.NewRequest("POST", srv.URL+"/events", bytes.NewReader(b))
		req.Header.Set("Content-Type", event.ApplicationCloudEventsJSON)
		if code, body := post(t, req, auth); code != 200 {
			t.Fatalf("structured: %d %s", code, body)
		}
	}
	// Binary mode.
	req, err = cehttp.NewHTTPRequestFromEvent(ctx, srv.URL, usageEvent(t, "e5", "tn_b", "m.rx", hour, 5000))
	if err != nil {
		t.Fatal(err)
	}
	if req.Header.Get("Ce-Id") != "e5" {
		t.Fatalf("not a binary-mode request: %v", req.Header)
	}
	if code, body := post(t, req, auth); code != 200 || !strings.Contains(body, `"accepted":1`) {
		t.Fatalf("binary: %d %s", code, body)
	}
	// Not an event.
	req, _ = http.NewRequest("POST", srv.URL, strings.NewReader(`{"hello": 1}`))
	req.Header.Set("Content-Type", "application/json")
	if code, _ := post(t, req, auth); code != 400 {
		t.Fatalf("not an event: %d", code)
	}

	var tot sink.Totals
	if code := getJSON(t, srv.URL+"/totals?by=tenant,meter", auth, &tot); code != 200 {
		t.Fatalf("totals: %d", code)
	}
	if tot.Events != 5 || tot.Duplicates != 1 || tot.Bytes != 6700 || len(tot.Groups) != 2 ||
		tot.Groups[0] != (sink.Group{Tenant: "tn_a", Meter: "m.tx", Events: 3, Bytes: 1300, Packets: 13}) {
		t.Fatalf("totals %+v", tot)
	}
	getJSON(t, srv.URL+"/totals?by=customer,hour", auth, &tot)
	if len(tot.Groups) != 3 || tot.Groups[0].Customer != "cus_tn_a" || tot.Groups[0].Hour != "2026-03-01T10:00:00Z" || tot.Groups[0].Bytes != 1100 {
		t.Fatalf("totals by customer, hour %+v", tot.Groups)
	}
	if code := getJSON(t, srv.URL+"/totals?by=color", auth, nil); code != 400 {
		t.Fatalf("totals by an unknown dimension: %d", code)
	}
	var evs struct{ Items []sink.Stored }
	getJSON(t, srv.URL+"/events?limit=10", auth, &evs)
	copies := map[string]int64{}
	for _, e := range evs.Items {
		copies[e.ID] = e.Copies
	}
	if len(copies) != 5 || copies["e1"] != 2 || copies["e2"] != 1 {
		t.Fatalf("events %v", copies)
	}

	// Durable: a restart on the same file keeps everything.
	_, srv2 := open(t, path, sink.Options{})
	getJSON(t, srv2.URL+"/totals?by=", "", &tot)
	if tot.Events != 5 || tot.Duplicates != 1 {
		t.Fatalf("after reopening: %+v", tot)
	}
}

func TestSinkFaults(t *testing.T) {
	t.Parallel()
	now := time.Now()
	clock := func() time.Time { return now }
	s, srv := open(t, filepath.Join(t.TempDir(), "sink.db"), sink.Options{TestOnlyNow: clock})
	hour := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	send := func(id string) (int, http.Header, string, error) {
		req, _ := cehttp.NewHTTPRequestFromEvents(ctx, srv.URL, []event.Event{usageEvent(t, id, "tn_a", "m", hour, 1)})
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, nil, "", err
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, res.Header, string(b), nil
	}
	setFault := func(body string) {
		t.Helper()
		res, err := http.Post(srv.URL+"/admin/fault", "application/json", strings.NewReader(body))
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("setting %s: %v %v", body, err, res)
		}
		res.Body.Close()
	}
	setFault(`{"mode": "429", "retry_after": "7", "for": "10s"}`)
	if code, h, _, _ := send("a"); code != 429 || h.Get("Retry-After") != "7" {
		t.Fatalf("429 fault: %d %v", code, h)
	}
	now = now.Add(11 * time.Second) // the fault has run out
	if code, _, _, _ := send("a"); code != 200 {
		t.Fatalf("after the fault: %d", code)
	}
	setFault(`{"mode": "500"}`)
	if code, _, _, _ := send("b"); code != 500 {
		t.Fatalf("500 fault: %d", code)
	}
	setFault(`{"mode": "malformed"}`)
	if code, h, body, _ := send("b"); code != 200 || h.Get("Content-Type") != "application/json" || json.Valid([]byte(body)) {
		t.Fatalf("malformed fault: %d %q", code, body)
	}
	setFault(`{"mode": "garbage"}`)
	if _, _, _, err := send("b"); err == nil {
		t.Fatal("garbage fault: the client read an answer")
	}
	setFault(`{"mode": "lost-answer"}`)
	if code, _, _, _ := send("c"); code != 500 {
		t.Fatalf("lost-answer fault: %d", code)
	}
	setFault(`{"mode": "ok", "delay": "300ms"}`)
	start := time.Now()
	if code, _, body, _ := send("c"); code != 200 || !strings.Contains(body, `"duplicates":1`) || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("delayed: %d %s after %s", code, body, time.Since(start))
	}
	res, _ := http.Post(srv.URL+"/admin/fault", "application/json", strings.NewReader(`{"mode": "teapot"}`))
	if res.StatusCode != 400 {
		t.Fatalf("unknown mode: %d", res.StatusCode)
	}
	tot, err := s.Totals(ctx, nil)
	if err != nil || tot.Events != 2 || tot.Duplicates != 1 {
		t.Fatalf("totals %+v %v: want a and c, c twice", tot, err)
	}
}
