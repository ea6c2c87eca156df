package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/causeway-net/causeway/dataplane"
)

// contractServer implements the controller's side of POST
// /api/v1/usage/report as the design fixes it: the device credential; at
// most 500 records; each record valid (every field checked, at most an
// hour, inside one hour) or the whole request refused with a 400 problem
// naming the field; stored once per seq; answered with every seq of the
// request, duplicates included. Knobs make it fail the ways a controller
// can.
type contractServer struct {
	*httptest.Server
	cred string

	mu       sync.Mutex
	stored   map[uint64]UsageRecord
	received map[uint64]int // times a seq arrived
	requests int

	down      atomic.Bool                       // 503 without storing
	loseReply atomic.Bool                       // store, then answer 500 (the answer is lost)
	malformed atomic.Value                      // string: a 200 answer that is not the contract's
	extraAcks atomic.Bool                       // add stored seqs (duplicates) and unknown ones to the answer
	refuse    atomic.Pointer[func(uint64) bool] // records refused as invalid
}

func newContractServer(t *testing.T) *contractServer { return newContractServerOn(t, nil) }

// newContractServerOn serves on ln (nil: a new loopback listener).
func newContractServerOn(t *testing.T, ln net.Listener) *contractServer {
	s := &contractServer{cred: "cwd_test-credential", stored: map[uint64]UsageRecord{}, received: map[uint64]int{}}
	s.malformed.Store("")
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	if ln != nil {
		s.Server.Listener.Close()
		s.Server.Listener = ln
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// records is what the server stored, by seq.
func (s *contractServer) records() []UsageRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var recs []UsageRecord
	for _, r := range s.stored {
		recs = append(recs, r)
	}
	sortRecords(recs)
	return recs
}

func problemJSON(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": title, "status": status, "detail": detail})
}

func (s *contractServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/api/v1/usage/report" {
		problemJSON(w, 404, "not found", r.URL.Path)
		return
	}
	s.mu.Lock()
	cred := s.cred
	s.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+cred {
		problemJSON(w, 401, "unauthenticated", "")
		return
	}
	s.mu.Lock()
	s.requests++
	s.mu.Unlock()
	if s.down.Load() {
		problemJSON(w, 503, "unavailable", "")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 2<<20))
	if err != nil {
		problemJSON(w, 413, "request too large", "")
		return
	}
	var req struct {
		Records []struct {
			Seq   *uint64 `json:"seq"`
			Start string  `json:"start"`
			End   string  `json:"end"`
			Usage []struct {
				Meter     string  `json:"meter"`
				PeerSite  *string `json:"peer_site"`
				Direction string  `json:"direction"`
				Bytes     *uint64 `json:"bytes"`
				Packets   *uint64 `json:"packets"`
			} `json:"usage"`
		} `json:"records"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		problemJSON(w, 400, "invalid request", err.Error())
		return
	}
	if len(req.Records) == 0 || len(req.Records) > 500 {
		problemJSON(w, 400, "invalid request", fmt.Sprintf("records: want 1 to 500, got %d", len(req.Records)))
		return
	}
	refuse := s.refuse.Load()
	var recs []UsageRecord
	for i, rr := range req.Records {
		field := func(f string, args ...any) string { return fmt.Sprintf("records[%d]."+f, append([]any{i}, args...)...) }
		if rr.Seq == nil || *rr.Seq == 0 {
			problemJSON(w, 400, "invalid request", field("seq")+": required, above 0")
			return
		}
		if refuse != nil && (*refuse)(*rr.Seq) {
			problemJSON(w, 400, "invalid request", field("usage[0].direction")+`: want "tx" or "rx"`)
			return
		}
		start, err1 := time.Parse(time.RFC3339, rr.Start)
		end, err2 := time.Parse(time.RFC3339, rr.End)
		switch {
		case err1 != nil:
			problemJSON(w, 400, "invalid request", field("start")+": want RFC 3339")
			return
		case err2 != nil:
			problemJSON(w, 400, "invalid request", field("end")+": want RFC 3339")
			return
		case !end.After(start) || end.Sub(start) > time.Hour || end.After(hourEnd(start)):
			problemJSON(w, 400, "invalid request", field("end")+": at most an hour after start, within its hour")
			return
		}
		rec := UsageRecord{Seq: *rr.Seq, Start: start, End: end}
		for j, u := range rr.Usage {
			uf := func(f string) string { return field("usage[%d]."+f, j) }
			switch {
			case u.Meter != MeterOverlay && u.Meter != MeterGateway:
				problemJSON(w, 400, "invalid request", uf("meter")+`: want "overlay" or "gateway"`)
				return
			case u.Direction != DirTx && u.Direction != DirRx:
				problemJSON(w, 400, "invalid request", uf("direction")+`: want "tx" or "rx"`)
				return
			case u.Meter == MeterOverlay && (u.PeerSite == nil || *u.PeerSite == ""):
				problemJSON(w, 400, "invalid request", uf("peer_site")+": required for overlay")
				return
			case u.Meter == MeterGateway && u.PeerSite != nil:
				problemJSON(w, 400, "invalid request", uf("peer_site")+": only for overlay")
				return
			case u.Bytes == nil || u.Packets == nil:
				problemJSON(w, 400, "invalid request", uf("bytes")+": bytes and packets are required")
				return
			}
			e := UsageEntry{Meter: u.Meter, Direction: u.Direction, Bytes: *u.Bytes, Packets: *u.Packets}
			if u.PeerSite != nil {
				e.PeerSite = *u.PeerSite
			}
			rec.Usage = append(rec.Usage, e)
		}
		recs = append(recs, rec)
	}
	s.mu.Lock()
	acked := []uint64{}
	for _, rec := range recs {
		s.received[rec.Seq]++
		if _, dup := s.stored[rec.Seq]; !dup {
			s.stored[rec.Seq] = rec
		}
		acked = append(acked, rec.Seq)
	}
	if s.extraAcks.Load() {
		for q := range s.stored {
			acked = append(acked, q) // duplicates of earlier batches
		}
		acked = append(acked, acked[0], 1<<40)
	}
	s.mu.Unlock()
	if s.loseReply.Load() {
		problemJSON(w, 500, "internal error", "")
		return
	}
	if m := s.malformed.Load().(string); m != "" {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, m)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"acked": acked})
}

// ledger is what the server stored, as totals, and how often it stored
// each seq.
func (s *contractServer) ledger() (map[usageKey]usageSum, []uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var recs []UsageRecord
	for _, r := range s.stored {
		recs = append(recs, r)
	}
	seqs := make([]uint64, 0, len(s.stored))
	for q := range s.stored {
		seqs = append(seqs, q)
	}
	slices.Sort(seqs)
	return totals(recs), seqs
}

func (s *contractServer) requestCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

func (s *contractServer) client(t *testing.T) *Client {
	t.Helper()
	c, err := NewClient(ClientOptions{Controller: s.URL, Credential: s.cred})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pipeline is the meter, spool and shipper of one appliance run, over a
// fake device, at a fast interval.
type pipeline struct {
	dev *fakeCounters
	u   *usage
}

func startPipeline(t *testing.T, dir string, send usageSender, interval time.Duration) *pipeline {
	t.Helper()
	u, err := startUsage(usageOptions{StateDir: dir, Send: send, Interval: interval, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	p := &pipeline{dev: newFakeCounters(), u: u}
	u.meter.attach(p.dev)
	return p
}

// TestUsageShipOutage: the controller is down, then loses its answers
// (it stores, the appliance never hears), then comes back; the appliance
// restarts in the middle. Every record reaches the ledger exactly once
// and the ledger's totals are exactly what was counted.
func TestUsageShipOutage(t *testing.T) {
	srv := newContractServer(t)
	dir := t.TempDir()
	send := srv.client(t).ReportUsage
	srv.down.Store(true)
	p := startPipeline(t, dir, send, 20*time.Millisecond)
	var sent uint64
	k1, k2 := testKey(t), testKey(t)
	// traffic counts for at least d and until cond holds (10 s at most).
	traffic := func(d time.Duration, cond func() bool) {
		min, end := time.Now().Add(d), time.Now().Add(10*time.Second)
		for time.Now().Before(min) || (!cond() && time.Now().Before(end)) {
			p.dev.add(k1, "st_b", 1400, 60)
			p.dev.add(k2, "st_c", 0, 900)
			sent += 1400 + 60 + 900
			time.Sleep(3 * time.Millisecond)
		}
	}
	traffic(300*time.Millisecond, func() bool { return p.u.spool.stats().Records >= 5 })
	st := p.u.spool.stats()
	if st.Records < 5 {
		t.Fatalf("controller down: %d records spooled, want several", st.Records)
	}
	if _, seqs := srv.ledger(); len(seqs) != 0 {
		t.Fatalf("stored while down: %v", seqs)
	}
	if p.u.ship.errored.Load() == 0 {
		t.Error("no failed send counted while the controller was down")
	}
	// Answers lost: the controller stores, the appliance resends.
	srv.down.Store(false)
	srv.loseReply.Store(true)
	traffic(200*time.Millisecond, func() bool { _, seqs := srv.ledger(); return len(seqs) > 0 })
	// The appliance restarts (graceful: a final record), with records
	// still unacknowledged.
	p.u.close()
	left := p.u.spool.stats().Records
	if left == 0 {
		t.Fatal("nothing left in the spool across the restart")
	}
	p = startPipeline(t, dir, send, 20*time.Millisecond)
	if got := p.u.spool.stats().Records; got != left {
		t.Errorf("restart: %d records in the spool, want %d", got, left)
	}
	srv.loseReply.Store(false)
	traffic(200*time.Millisecond, func() bool { return true })
	p.u.close()
	// The final record is in the spool; one more start ships it.
	p = startPipeline(t, dir, send, 20*time.Millisecond)
	if !waitFor(5*time.Second, func() bool { return p.u.spool.stats().Records == 0 }) {
		t.Fatalf("spool not drained: %+v", p.u.spool.stats())
	}
	p.u.close()

	got, seqs := srv.ledger()
	var total uint64
	for _, s := range got {
		total += s.bytes
	}
	if total != sent {
		t.Errorf("ledger holds %d bytes, %d were counted", total, sent)
	}
	if got[ov("st_b", DirTx)].bytes == 0 || got[ov("st_c", DirRx)].bytes == 0 {
		t.Errorf("ledger %v", got)
	}
	// The seqs are 1..n without a gap: no record was lost.
	for i, q := range seqs {
		if q != uint64(i+1) {
			t.Fatalf("ledger seqs %v: a gap at %d", seqs, i+1)
		}
	}
	srv.mu.Lock()
	resent := 0
	for _, n := range srv.received {
		if n > 1 {
			resent++
		}
	}
	srv.mu.Unlock()
	if resent == 0 {
		t.Error("no record was sent twice: the lost answers were not exercised")
	}
	t.Logf("%d records, %d of them sent again after a lost answer, %d requests", len(seqs), resent, srv.requestCount())
}

// TestUsageShipDuplicateAcks: an answer listing seqs twice, seqs of
// earlier batches and seqs the appliance never sent deletes exactly the
// spooled records it names.
func TestUsageShipDuplicateAcks(t *testing.T) {
	srv := newContractServer(t)
	srv.extraAcks.Store(true)
	sp := testSpool(t, t.TempDir(), 0)
	appendN(t, sp, 30)
	sh := newUsageShipper(usageShipperOptions{Spool: sp, Send: srv.client(t).ReportUsage, BatchRecords: 7})
	ctx := context.Background()
	for range 10 {
		if _, idle := sh.step(ctx); idle {
			break
		}
	}
	if st := sp.stats(); st.Records != 0 {
		t.Errorf("%d records left", st.Records)
	}
	if n := sh.acked.Load(); n != 30 {
		t.Errorf("acked %d, want 30", n)
	}
	if _, seqs := srv.ledger(); len(seqs) != 30 {
		t.Errorf("ledger %v", seqs)
	}
}

// TestUsageShipRefused: the controller refuses one record as invalid. The
// shipper logs and counts it, keeps it in the spool, ships the others
// around it (halving the batch until the record is alone, then holding it
// back) and does not loop: a bounded number of requests.
func TestUsageShipRefused(t *testing.T) {
	srv := newContractServer(t)
	bad := func(q uint64) bool { return q == 37 }
	srv.refuse.Store(&bad)
	sp := testSpool(t, t.TempDir(), 0)
	appendN(t, sp, 100)
	sh := newUsageShipper(usageShipperOptions{Spool: sp, Send: srv.client(t).ReportUsage, MaxBackoff: 20 * time.Millisecond, HoldMin: time.Hour})
	sh.run()
	if !waitFor(5*time.Second, func() bool { return sp.stats().Records == 1 }) {
		t.Fatalf("spool %+v", sp.stats())
	}
	time.Sleep(300 * time.Millisecond) // it must now be idle
	reqs := srv.requestCount()
	time.Sleep(300 * time.Millisecond)
	sh.close()
	if srv.requestCount() != reqs {
		t.Errorf("requests went on while only the held record was left: %d -> %d", reqs, srv.requestCount())
	}
	if reqs > 20 {
		t.Errorf("%d requests to isolate one refused record among 100", reqs)
	}
	if b := spooled(t, sp); len(b) != 1 || b[0].Seq != 37 {
		t.Errorf("spool holds %v, want the refused record 37", seqsOf(b))
	}
	if sh.refused.Load() == 0 || sh.heldCount() != 1 {
		t.Errorf("refused %d, held %d", sh.refused.Load(), sh.heldCount())
	}
	// Once the controller takes it (fixed), it goes out after its hold.
	srv.refuse.Store(nil)
	sh2 := newUsageShipper(usageShipperOptions{Spool: sp, Send: srv.client(t).ReportUsage})
	if _, idle := sh2.step(context.Background()); idle || sp.stats().Records != 0 {
		t.Errorf("the fixed record was not shipped: %+v", sp.stats())
	}
	t.Logf("%d requests to ship 99 records around a refused one", reqs)
}

// TestUsageShipErrors: 500s, answers that are not the contract's and a
// wrong credential keep the records (counted as failed) and back off;
// then everything goes out.
func TestUsageShipErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(*contractServer)
	}{
		{"500", func(s *contractServer) { s.loseReply.Store(true) }},
		{"not json", func(s *contractServer) { s.malformed.Store("<html>oops</html>") }},
		{"no acked", func(s *contractServer) { s.malformed.Store(`{"ok":true}`) }},
		{"acked not numbers", func(s *contractServer) { s.malformed.Store(`{"acked":["1"]}`) }},
		{"negative", func(s *contractServer) { s.malformed.Store(`{"acked":[-1]}`) }},
		{"401", func(s *contractServer) { s.mu.Lock(); s.cred = "cwd_other"; s.mu.Unlock() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newContractServer(t)
			c := srv.client(t)
			tc.setup(srv)
			sp := testSpool(t, t.TempDir(), 0)
			appendN(t, sp, 10)
			sh := newUsageShipper(usageShipperOptions{Spool: sp, Send: c.ReportUsage, MaxBackoff: 50 * time.Millisecond})
			sh.run()
			time.Sleep(400 * time.Millisecond)
			if st := sp.stats(); st.Records != 10 {
				t.Errorf("records %d, want all 10 kept", st.Records)
			}
			if sh.errored.Load() == 0 {
				t.Error("no failure counted")
			}
			if n := srv.requestCount(); n > 30 {
				t.Errorf("%d requests in 400 ms: not backing off", n)
			}
			srv.loseReply.Store(false)
			srv.malformed.Store("")
			srv.mu.Lock()
			srv.cred = "cwd_test-credential"
			srv.mu.Unlock()
			if !waitFor(3*time.Second, func() bool { return sp.stats().Records == 0 }) {
				t.Errorf("not shipped after the controller recovered: %+v", sp.stats())
			}
			sh.close()
			if _, seqs := srv.ledger(); len(seqs) != 10 {
				t.Errorf("ledger %v", seqs)
			}
		})
	}
}

// TestUsageMetrics: the pipeline's series, as a running appliance serves
// them (through its extra collectors), with the figures they must show.
func TestUsageMetrics(t *testing.T) {
	srv := newContractServer(t)
	srv.down.Store(true)
	p := startPipeline(t, t.TempDir(), srv.client(t).ReportUsage, 20*time.Millisecond)
	defer p.u.close()
	p.dev.add(testKey(t), "st_b", 4000, 1000)
	p.u.meter.setGateway(func() (dataplane.Counters, bool) { return dataplane.Counters{TxBytes: 70, TxPackets: 1}, true })
	if !waitFor(3*time.Second, func() bool { return p.u.spool.stats().Records >= 1 && p.u.ship.errored.Load() > 0 }) {
		t.Fatal("no record spooled and failed to send")
	}
	time.Sleep(30 * time.Millisecond)
	reg := prometheus.NewRegistry()
	var extra extraCollectors
	extra.cs = append(extra.cs, p.u)
	reg.MustRegister(&extra)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "," + l.GetName() + "=" + l.GetValue()
			}
			got[name] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	for name, want := range map[string]float64{
		"causeway_usage_bytes_total,direction=tx,meter=overlay":   4000,
		"causeway_usage_bytes_total,direction=rx,meter=overlay":   1000,
		"causeway_usage_bytes_total,direction=tx,meter=gateway":   70,
		"causeway_usage_packets_total,direction=tx,meter=gateway": 1,
		"causeway_usage_bytes_total,direction=rx,meter=gateway":   0,
		"causeway_usage_shipped_total,result=acked":               0,
		"causeway_usage_shipped_total,result=refused":             0,
		"causeway_usage_dropped_total":                            0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (%v), want %v", name, v, ok, want)
		}
	}
	if got["causeway_usage_spool_records"] < 1 || got["causeway_usage_records_total"] < 1 || got["causeway_usage_shipped_total,result=failed"] < 1 {
		t.Errorf("spool/records/failed: %v", got)
	}
	if age := got["causeway_usage_spool_oldest_age_seconds"]; age <= 0 || age > 5 {
		t.Errorf("oldest age %v", age)
	}
}
