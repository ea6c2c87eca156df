package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/causeway-net/causeway/appliance"
	"github.com/causeway-net/causeway/controller/metering"
)

// TestMetering: the lab's controller exports usage to the meter sink next
// to it, billed to the lab tenant's customer. Usage reported with
// office-1's own credential arrives at the sink, with sums equal to the
// controller's ledger, also across a controller restart; the sink keeps
// running when the controller stops and goes with the lab.
func TestMetering(t *testing.T) {
	t.Parallel()
	l := upLab(t, "meter", os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	enr, err := appliance.LoadEnrollment(l.applianceDir("office-1a"))
	if err != nil || enr == nil {
		t.Fatalf("office-1's enrollment: %v", err)
	}
	var sites struct {
		Items []struct{ ID, Name string } `json:"items"`
	}
	if err := l.ctlJSON(ctx, &sites, "site", "list", l.Tenant()); err != nil {
		t.Fatal(err)
	}
	var vpc string
	for _, s := range sites.Items {
		if s.Name == "vpc-1" {
			vpc = s.ID
		}
	}
	// Sequence numbers far above any the appliance itself may use.
	seq := 1 << 40
	report := func() {
		t.Helper()
		start := time.Now().UTC().Add(-time.Hour).Truncate(time.Hour).Add(time.Duration(seq%300) * 10 * time.Second)
		body, _ := json.Marshal(map[string]any{"records": []any{map[string]any{"seq": seq, "start": start.Format(time.RFC3339),
			"end": start.Add(10 * time.Second).Format(time.RFC3339), "usage": []any{
				map[string]any{"meter": "overlay", "peer_site": vpc, "direction": "tx", "bytes": 123456, "packets": 100},
				map[string]any{"meter": "gateway", "direction": "rx", "bytes": 789, "packets": 3},
			}}}})
		seq++
		hc, err := l.ControllerClient()
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, l.ControllerURL()+"/api/v1/usage/report", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+enr.Credential)
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("usage report: %s %s", res.Status, b)
		}
	}
	// exported waits until the sink's sums per meter equal the ledger's.
	exported := func() {
		t.Helper()
		var last string
		for ctx.Err() == nil {
			var rep struct {
				Items []struct {
					Meter, Direction string
					Bytes            int64
				}
			}
			if err := l.ctlJSON(ctx, &rep, "usage", "--tenant", l.Tenant(), "--since", "3h"); err != nil {
				t.Fatal(err)
			}
			want := map[string]int64{}
			for _, it := range rep.Items {
				if it.Bytes > 0 {
					want[metering.DefaultMeters[it.Meter+"."+it.Direction]] += it.Bytes
				}
			}
			tot, err := l.MeterSinkTotals(ctx, "customer", "meter")
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]int64{}
			for _, g := range tot.Groups {
				if g.Customer != BillingCustomer {
					t.Fatalf("events for customer %q", g.Customer)
				}
				got[g.Meter] += g.Bytes
			}
			last = fmt.Sprintf("sink %v, ledger %v", got, want)
			if fmt.Sprint(got) == fmt.Sprint(want) && len(want) > 0 {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("the sink never caught up: %s", last)
	}
	report()
	exported()

	sinkRec := func() procRecord {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.reloadLocked()
		r := l.procLocked(meterSinkName)
		if r == nil {
			t.Fatal("no meter sink in the state")
		}
		return *r
	}
	before := sinkRec()
	if err := l.StopController(); err != nil {
		t.Fatal(err)
	}
	if !before.isOurs() {
		t.Fatal("the meter sink stopped with the controller")
	}
	if err := l.StartController(ctx); err != nil {
		t.Fatal(err)
	}
	if r := sinkRec(); r.PID != before.PID {
		t.Errorf("the meter sink was restarted: pid %d, then %d", before.PID, r.PID)
	}
	report()
	exported()
	var st map[string]any
	if err := l.ctlJSON(ctx, &st, "metering", "status"); err != nil {
		t.Fatal(err)
	}
	if st["enabled"] != true || st["endpoint"] != l.MeterSinkURL() || st["dead_letters"] != 0.0 {
		t.Errorf("metering status %v", st)
	}

	if err := l.Down(); err != nil {
		t.Fatal(err)
	}
	if before.isOurs() {
		t.Error("the meter sink outlived the lab")
	}
}
