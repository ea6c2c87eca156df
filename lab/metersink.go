package lab

import (
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
	r, err := l.startRecorded(meterSinkName, kindService, l.t.controller.node, argv, "CAUSEWAY_METER_SINK_AUTH="+auth)
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
	auth, err := l.meterSinkAuth()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+meterSinkListen+"/totals?by="+strings.Join(by, ","), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", auth)
	res, err := l.meterSinkClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("lab: meter sink: %w", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("lab: meter sink totals: %s: %s", res.Status, strings.TrimSpace(string(b)))
	}
	var t sink.Totals
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("lab: meter sink totals: %w", err)
	}
	return &t, nil
}
