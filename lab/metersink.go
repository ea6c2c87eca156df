package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/causeway-net/causeway/controller/metering/sink"
	"github.com/causeway-net/causeway/internal/atomicfile"
)

const (
	// meterSinkName names the meter sink's process record and log.
	meterSinkName = "meter-sink"
	// meterSinkListen is where the meter sink listens, inside the
	// controller's namespace: only the controller reaches it.
	meterSinkListen = "127.0.0.1:9190"
	// meterSinkDB is its database, in the instance's state directory.
	meterSinkDB = "meter-sink.db"
	// meterSinkAuthFile holds the Authorization value the sink requires
	// and the controller sends (0600).
	meterSinkAuthFile = "meter-sink.auth"
	// BillingCustomer is the billing customer the lab gives its tenant.
	BillingCustomer = "cus_demo"
	// UsageInterval is how often the lab's appliances cut a usage record
	// (the appliance's default is 10 s): short, so that usage reaches the
	// ledger and the sink within seconds.
	UsageInterval = 2 * time.Second
	// meteringBackoffMax and meteringMaxAttempts are the lab controller's
	// retry settings for the metering API: at most 5 s between tries, so
	// that the export catches up within seconds of an outage, and enough
	// tries (at least 4 minutes of them) that a 2-minute outage makes no
	// dead letter.
	meteringBackoffMax  = 5 * time.Second
	meteringMaxAttempts = 100
)

// MeterSinkURL is where the lab's controller sends usage events: the
// meter sink (`causeway meter-sink`) next to it in the controller's
// namespace.
func (l *Lab) MeterSinkURL() string { return "http://" + meterSinkListen + "/events" }

// meterSinkAuth returns the sink's Authorization value, made on first use.
func (l *Lab) meterSinkAuth() (string, error) {
	path := filepath.Join(l.dir, meterSinkAuthFile)
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("lab: meter sink credential: %w", err)
	}
	var k [24]byte
	rand.Read(k[:])
	auth := "Bearer " + base64.RawURLEncoding.EncodeToString(k[:])
	if err := atomicfile.Write(path, []byte(auth+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("lab: meter sink credential: %w", err)
	}
	return auth, nil
}

// startMeterSink starts the meter sink in the controller's namespace
// unless it runs already, and waits until it answers.
func (l *Lab) startMeterSink(ctx context.Context, auth string) error {
	l.mu.Lock()
	l.reloadLocked()
	running := false
	if r := l.procLocked(meterSinkName); r != nil {
		running = r.isOurs()
	}
	l.mu.Unlock()
	if running {
		return nil
	}
	argv := []string{l.binary, "meter-sink", "--listen", meterSinkListen, "--db", filepath.Join(l.dir, meterSinkDB)}
	r, err := l.startRecorded(meterSinkName, kindService, l.t.controller.node, l.LogPath(meterSinkName), argv, "CAUSEWAY_METER_SINK_AUTH="+auth)
	if err != nil {
		return fmt.Errorf("lab: meter sink: %w", err)
	}
	hc := l.meterSinkClient()
	if err := poll(ctx, func(ctx context.Context) error {
		if err := l.exited(meterSinkName, r); err != nil {
			return err
		}
		return httpGet(ctx, hc, "http://"+meterSinkListen+"/healthz", "ok")
	}); err != nil {
		return fmt.Errorf("lab: meter sink not ready: %w%s", err, logTail(r.Log))
	}
	l.log.Info("meter sink ready", "url", l.MeterSinkURL(), "pid", r.PID)
	return nil
}

// meterSinkRecord returns the meter sink's process record.
func (l *Lab) meterSinkRecord() (procRecord, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reloadLocked()
	if r := l.procLocked(meterSinkName); r != nil {
		return *r, true
	}
	return procRecord{}, false
}

// StopMeterSink stops the meter sink (SIGTERM) and waits for it to exit:
// the metering API is down for the controller, which keeps its events in
// the outbox and retries. Its database stays. Stopping a stopped sink is
// not an error.
func (l *Lab) StopMeterSink() error {
	r, ok := l.meterSinkRecord()
	if !ok {
		return nil
	}
	if err := stopProcess(r, stopTimeout); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	l.log.Info("meter sink stopped")
	return nil
}

// StartMeterSink starts the meter sink again on its database (after
// StopMeterSink) and waits until it answers. Starting a running sink is
// not an error.
func (l *Lab) StartMeterSink(ctx context.Context) error {
	auth, err := l.meterSinkAuth()
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	return l.startMeterSink(wctx, auth)
}

// MeterSinkFault is a misbehaviour of the meter sink (see
// `causeway meter-sink`, POST /admin/fault).
type MeterSinkFault struct {
	// Mode is one of sink.Fault500, sink.Fault429, sink.FaultMalformed,
	// sink.FaultGarbage, sink.FaultLostAnswer, or "" to answer normally.
	Mode string
	// For ends the fault by itself after this long; 0 means when changed.
	For time.Duration
	// RetryAfter is the Retry-After value of the 429 fault ("" means "1").
	RetryAfter string
	// Delay holds every answer this long; every call sets it, 0 removes
	// it.
	Delay time.Duration
}

// SetMeterSinkFault makes the lab's meter sink misbehave, or (the zero
// MeterSinkFault) answer normally and at once again.
func (l *Lab) SetMeterSinkFault(ctx context.Context, f MeterSinkFault) error {
	body := map[string]string{"mode": f.Mode, "delay": f.Delay.String(), "retry_after": f.RetryAfter}
	if f.Mode == "" {
		body["mode"] = "ok"
	}
	if f.For > 0 {
		body["for"] = f.For.String()
	}
	b, _ := json.Marshal(body)
	return l.meterSinkDo(ctx, http.MethodPost, "/admin/fault", b, nil)
}

// MeterSinkEvents returns up to limit of the events the meter sink holds,
// newest first, each with the number of copies it received.
func (l *Lab) MeterSinkEvents(ctx context.Context, limit int) ([]sink.Stored, error) {
	var v struct {
		Items []sink.Stored `json:"items"`
	}
	if err := l.meterSinkDo(ctx, http.MethodGet, fmt.Sprintf("/events?limit=%d", limit), nil, &v); err != nil {
		return nil, err
	}
	return v.Items, nil
}

// meterSinkDo makes one request to the sink's own API and decodes its
// JSON answer into v (if not nil).
func (l *Lab) meterSinkDo(ctx context.Context, method, path string, body []byte, v any) error {
	auth, err := l.meterSinkAuth()
	if err != nil {
		return err
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+meterSinkListen+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", auth)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := l.meterSinkClient().Do(req)
	if err != nil {
		return fmt.Errorf("lab: meter sink: %w", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("lab: meter sink %s %s: %s: %s", method, path, res.Status, strings.TrimSpace(string(b)))
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("lab: meter sink %s %s: %w", method, path, err)
	}
	return nil
}

// meterSinkClient is an HTTP client whose connections start in the
// controller's namespace.
func (l *Lab) meterSinkClient() *http.Client {
	node := l.t.controller.node
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return l.DialContext(ctx, node, network, addr)
		},
	}}
}

// MeterSinkTotals asks the lab's meter sink for its totals, grouped by the
// given dimensions (see sink.Dimensions).
func (l *Lab) MeterSinkTotals(ctx context.Context, by ...string) (*sink.Totals, error) {
	var t sink.Totals
	if err := l.meterSinkDo(ctx, http.MethodGet, "/totals?by="+strings.Join(by, ","), nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}
