package bench

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// measurement builds a Measurement with one and four stream figures (in
// Gbit/s) and an added RTT (in ms).
func measurement(dp Dataplane, one, four, added float64) Measurement {
	return Measurement{
		Dataplane: dp,
		Throughput: []Throughput{
			{Streams: 1, BitsPerSecond: one * 1e9},
			{Streams: 4, BitsPerSecond: four * 1e9},
		},
		RTT: RTT{AddedMS: added, TunnelMS: added + 0.02, UnderlayMS: 0.02},
	}
}

func testResult() *Result {
	r := &Result{Settings: Settings{Rounds: 3, Streams: []int{1, 4}, DurationSeconds: 5, OmitSeconds: 1, Pings: 300, PingIntervalMS: 10}}
	for i, f := range [][6]float64{
		// causeway 1, 4, added; stock 1, 4, added
		{2.2, 2.6, 0.40, 2.0, 2.5, 0.44},
		{1.8, 2.4, 0.46, 2.4, 2.9, 0.42},
		{2.0, 2.8, 0.42, 1.6, 2.0, 0.50},
	} {
		r.Rounds = append(r.Rounds, Round{
			Round: i + 1, Order: roundOrder(i),
			Causeway: measurement(Causeway, f[0], f[1], f[2]),
			Stock:    measurement(Stock, f[3], f[4], f[5]),
		})
	}
	r.summarize()
	return r
}

func TestSummarize(t *testing.T) {
	r := testResult()
	if len(r.Summary) != 3 {
		t.Fatalf("got %d comparisons, want 3", len(r.Summary))
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	for i, want := range []struct {
		metric                 string
		causeway, stock, ratio float64
		paired                 float64
		met                    bool
	}{
		// Medians 2.0 and 2.0; per-round ratios 1.1, 0.75, 1.25.
		{"throughput_1_streams", 2.0e9, 2.0e9, 1.0, 1.1, true},
		// Medians 2.6 and 2.5; per-round ratios 1.04, 0.8276, 1.4.
		{"throughput_4_streams", 2.6e9, 2.5e9, 1.04, 1.04, true},
		// Medians 0.42 and 0.44; per-round ratios 0.909, 1.095, 0.84.
		{"added_rtt", 0.42, 0.44, 0.42 / 0.44, 0.40 / 0.44, true},
	} {
		c := r.Summary[i]
		if c.Metric != want.metric || !near(c.Causeway, want.causeway) || !near(c.Stock, want.stock) ||
			c.Ratio == nil || !near(*c.Ratio, want.ratio) || c.PairedRatio == nil || !near(*c.PairedRatio, want.paired) || c.Met != want.met {
			t.Errorf("summary[%d] = %+v (ratio %v, paired %v), want %+v", i, c, deref(c.Ratio), deref(c.PairedRatio), want)
		}
	}

	// A slower Causeway misses the throughput target; a larger added RTT
	// misses the RTT target.
	r.Rounds = r.Rounds[:1]
	r.Rounds[0].Causeway = measurement(Causeway, 1.9, 2.4, 0.45)
	r.summarize()
	for _, c := range r.Summary {
		if c.Met {
			t.Errorf("%s: met with ratio %v, want not met", c.Metric, deref(c.Ratio))
		}
	}
}

func TestSummarizeMeaninglessRatio(t *testing.T) {
	r := testResult()
	for i := range r.Rounds {
		r.Rounds[i].Stock.RTT.AddedMS = 0 // the tunnel added nothing: no ratio
	}
	r.summarize()
	c := r.Summary[2]
	if c.Ratio != nil || c.PairedRatio != nil || c.Met {
		t.Errorf("added RTT with stock 0: ratio %v, paired %v, met %v; want none, none, false", deref(c.Ratio), deref(c.PairedRatio), c.Met)
	}
	if _, err := json.Marshal(r); err != nil {
		t.Errorf("JSON: %v", err)
	}

	r.Rounds = nil
	r.summarize()
	if len(r.Summary) != 0 {
		t.Errorf("no rounds: got summary %+v", r.Summary)
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestResultJSON(t *testing.T) {
	b, err := json.Marshal(testResult())
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Rounds []struct {
			Round    int
			Order    []string
			Causeway struct {
				Throughput []struct {
					Streams       int     `json:"streams"`
					BitsPerSecond float64 `json:"bits_per_second"`
				}
				RTT struct {
					AddedMS float64 `json:"added_ms"`
				}
			}
		}
		Summary []struct {
			Metric string   `json:"metric"`
			Ratio  *float64 `json:"ratio"`
			Met    bool     `json:"met"`
		}
	}
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Rounds) != 3 || back.Rounds[1].Order[0] != "stock" || back.Rounds[0].Causeway.Throughput[1].BitsPerSecond != 2.6e9 ||
		back.Rounds[0].Causeway.RTT.AddedMS != 0.40 || len(back.Summary) != 3 || back.Summary[2].Metric != "added_rtt" || back.Summary[2].Ratio == nil {
		t.Errorf("JSON does not carry the result: %s", b)
	}
}

func TestWriteText(t *testing.T) {
	r := testResult()
	r.Path = LabPath.String()
	r.Causeway = DataplaneInfo{Name: Causeway, WireGuardVersion: "v0.0.0-x", Interfaces: []Interface{{"office-1", "cw0", 1340}}}
	r.Stock = DataplaneInfo{Name: Stock, WireGuardVersion: "v0.0.0-x", Built: true, Interfaces: []Interface{{"office-1", "wgref0", 1340}}}
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"office-1-host -> vpc-1-backend-1 (10.20.0.10) via office-1a, vpc-1",
		"1 and 4 parallel streams, 5 s per test after 1 s warm-up",
		"median of 300 pings every 10 ms",
		"3 completed of 3",
		"office-1: cw0 MTU 1340",
		"(daemon built from go.mod)",
		"2      stock      2.40 Gbit/s  2.90 Gbit/s  0.420 ms",
		"1 stream   2.00 Gbit/s  2.00 Gbit/s  1.00   1.10",
		"added RTT  0.420 ms     0.440 ms     0.95   0.91          <= 1.0  met",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
	// Rounds list the dataplanes in the order they ran.
	if i, j := strings.Index(out, "2      stock"), strings.Index(out, "2      causeway"); i < 0 || j < i {
		t.Errorf("round 2 should list stock first:\n%s", out)
	}
}

func TestRoundOrder(t *testing.T) {
	for i, want := range []string{"causeway stock", "stock causeway", "causeway stock", "stock causeway"} {
		o := roundOrder(i)
		if got := string(o[0]) + " " + string(o[1]); got != want {
			t.Errorf("round %d: order %s, want %s", i, got, want)
		}
	}
}
