package ctlbench

import (
	"bytes"
	"context"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestRun runs the benchmark at N=50 against a controller built from this
// tree and checks that the figures are sane.
func TestRun(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	if testing.Short() {
		t.Skip("builds the causeway binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	bin := binary(t, ctx)
	for _, mode := range []string{SyncDelta, SyncFull} {
		t.Run(mode, func(t *testing.T) {
			res, err := Run(ctx, Options{Appliances: 50, Changes: 3, Sync: mode, Binary: bin,
				Timeout: 20 * time.Second, Progress: &progress})
			if err != nil {
				t.Fatalf("%v\n%s", err, progress.String())
			}
			if len(res.Changes) != 3 {
				t.Fatalf("%d changes measured", len(res.Changes))
			}
			for i, c := range res.Changes {
				if c.Applied != 50 || c.P99Millis <= 0 || c.P50Millis > c.P99Millis || c.P99Millis > c.MaxMillis || c.Bytes <= 0 {
					t.Errorf("change %d: %+v", i+1, c)
				}
				if mode == SyncDelta && c.Deltas != 50 {
					t.Errorf("change %d: %d of 50 answers were deltas", i+1, c.Deltas)
				}
				if mode == SyncFull && c.Deltas != 0 {
					t.Errorf("change %d: %d deltas without asking", i+1, c.Deltas)
				}
			}
			if res.ControllerPeakRSSBytes < 1<<20 || res.ControllerRSSBytes <= 0 || res.SetupControllerCPUSeconds <= 0 {
				t.Errorf("controller figures not read: %+v", res)
			}
			var out bytes.Buffer
			if err := res.WriteText(&out); err != nil || !strings.Contains(out.String(), "median") {
				t.Errorf("WriteText: %v\n%s", err, out.String())
			}
		})
	}
}

// binary builds the causeway binary for t.
func binary(t *testing.T, ctx context.Context) string {
	t.Helper()
	root, err := moduleRoot(ctx)
	if err != nil {
		t.Skip(err)
	}
	dir, err := os.MkdirTemp("", "ctlbench-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := dir + "/causeway"
	if err := buildBinary(ctx, root, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestQuantile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	if quantile(d, 0.5) != 50*time.Millisecond || quantile(d, 0.99) != 99*time.Millisecond || quantile(d[:1], 0.99) != time.Millisecond {
		t.Errorf("quantiles: %v %v", quantile(d, 0.5), quantile(d, 0.99))
	}
}

func TestHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := mainIO(context.Background(), []string{"--help"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"--appliances", "-db", "-json", "-sync"} {
		if !strings.Contains(errOut.String(), strings.TrimLeft(f, "-")) {
			t.Errorf("--help does not mention %s:\n%s", f, errOut.String())
		}
	}
}
