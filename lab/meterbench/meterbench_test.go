package meterbench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/lab"
)

func TestOptionsCheck(t *testing.T) {
	if err := (Options{}).Check(); err != nil {
		t.Errorf("defaults: %v", err)
	}
	for _, c := range []struct {
		o    Options
		flag string
	}{
		{Options{Rounds: -1}, "--rounds"},
		{Options{Pings: 5}, "--pings"},
		{Options{PingInterval: time.Microsecond}, "--ping-interval"},
		{Options{Delay: time.Hour}, "--delay"},
	} {
		if err := c.o.Check(); err == nil || !strings.HasPrefix(err.Error(), c.flag+":") {
			t.Errorf("%+v: %v, want an error naming %s", c.o, err, c.flag)
		}
	}
}

func TestPercentile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	if p := percentile(xs, 0.5); p != 5 {
		t.Errorf("p50 = %v", p)
	}
	if p := percentile(xs, 0.99); p != 10 {
		t.Errorf("p99 = %v", p)
	}
	if p := percentile(xs, 0); p != 1 {
		t.Errorf("p0 = %v", p)
	}
}

// TestRunLab runs a short bench on a real lab: two rounds of 300 pings.
// The round trips with the metering API answering after 5 s stay within
// a sane bound of those with it answering at once (the figures of a full
// run are in docs/benchmarks.md), and the appliances' usage reports are
// answered in well under a second throughout.
func TestRunLab(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test builds network namespaces and must run as root in CI")
		}
		t.Skip("needs root (network namespaces)")
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "causeway")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/causeway")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building causeway: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, lab.Options{Instance: lab.UniqueInstance("mbn"), Binary: bin, OwnerPID: os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("taking the lab down: %v", err)
		}
	})
	res, err := Run(ctx, l, Options{Rounds: 2, Pings: 300, Progress: t.Output()})
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	res.WriteText(&text)
	t.Logf("\n%s", text.String())
	if len(res.Rounds) != 2 {
		t.Fatalf("%d rounds", len(res.Rounds))
	}
	for i, rd := range res.Rounds {
		for _, p := range []Phase{rd.Normal, rd.Slow} {
			if p.Samples < 285 {
				t.Errorf("round %d (slow API %v): %d of 300 replies", i+1, p.SlowAPI, p.Samples)
			}
			if p.UsageReports == 0 || p.UsageReportMaxMS > 1000 {
				t.Errorf("round %d (slow API %v): %d usage reports, the slowest %.1f ms", i+1, p.SlowAPI, p.UsageReports, p.UsageReportMaxMS)
			}
		}
	}
	if res.SlowP50MS > 2*res.NormalP50MS+1 {
		t.Errorf("median RTT %.3f ms with the slow metering API, %.3f ms without", res.SlowP50MS, res.NormalP50MS)
	}
	if f, err := l.MeterSinkTotals(ctx); err != nil || f.Events == 0 {
		t.Errorf("the sink got no events (%v)", err)
	}
}
