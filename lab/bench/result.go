package bench

import (
	"fmt"
	"time"
)

// Result is what Run measured. It marshals to the JSON that
// `causeway bench dataplane --json` prints.
type Result struct {
	Path     string        `json:"path"`
	Settings Settings      `json:"settings"`
	Causeway DataplaneInfo `json:"causeway"`
	Stock    DataplaneInfo `json:"stock"`
	// Rounds are the completed rounds; a round interrupted half-way is
	// left out.
	Rounds []Round `json:"rounds"`
	// Summary compares the medians over Rounds.
	Summary  []Comparison `json:"summary"`
	Warnings []string     `json:"warnings,omitempty"`
}

// Settings are the options a Result was measured with.
type Settings struct {
	Rounds          int     `json:"rounds"`
	Streams         []int   `json:"streams"`
	DurationSeconds float64 `json:"duration_seconds"`
	OmitSeconds     float64 `json:"omit_seconds"`
	Pings           int     `json:"pings"`
	PingIntervalMS  float64 `json:"ping_interval_ms"`
}

// DataplaneInfo describes one dataplane under test.
type DataplaneInfo struct {
	Name Dataplane `json:"name"`
	// WireGuardVersion is the golang.zx2c4.com/wireguard version linked in.
	WireGuardVersion string `json:"wireguard_version"`
	// Built is set for a stock daemon the bench built itself.
	Built      bool        `json:"built,omitempty"`
	Interfaces []Interface `json:"interfaces"`
}

// Interface is a dataplane's overlay interface on one appliance.
type Interface struct {
	Node string `json:"node"`
	Name string `json:"name"`
	MTU  int    `json:"mtu"`
}

// Round is one measurement of each dataplane.
type Round struct {
	Round    int         `json:"round"` // from 1
	Order    []Dataplane `json:"order"` // which went first
	Causeway Measurement `json:"causeway"`
	Stock    Measurement `json:"stock"`
}

// Measurement is one dataplane's figures in one round.
type Measurement struct {
	Dataplane  Dataplane    `json:"dataplane"`
	Start      time.Time    `json:"start"`
	Throughput []Throughput `json:"throughput"` // one per stream count, in Settings order
	RTT        RTT          `json:"rtt"`
}

// Comparison is one figure's medians over the rounds, and their ratio.
type Comparison struct {
	// Metric is "throughput_<n>_streams" or "added_rtt".
	Metric string `json:"metric"`
	// Label is the human name of the metric, e.g. "1 stream".
	Label string `json:"label"`
	// Unit is "bit/s" or "ms".
	Unit     string  `json:"unit"`
	Causeway float64 `json:"causeway_median"`
	Stock    float64 `json:"stock_median"`
	// Ratio is Causeway/Stock; nil if it means nothing (Stock <= 0).
	Ratio *float64 `json:"ratio"`
	// PairedRatio is the median over the rounds of each round's
	// Causeway/stock ratio, which cancels drift between rounds.
	PairedRatio *float64 `json:"paired_ratio"`
	// Target is the goal for Ratio, e.g. ">= 1.0"; Met says whether
	// Ratio reaches it.
	Target string `json:"target"`
	Met    bool   `json:"met"`
}

// Throughput targets and RTT targets, as ratios Causeway/stock.
const (
	targetThroughput = 1.0 // at least
	targetAddedRTT   = 1.0 // at most
)

// summarize fills in r.Summary from r.Rounds.
func (r *Result) summarize() {
	r.Summary = nil
	if len(r.Rounds) == 0 {
		return
	}
	for i, n := range r.Settings.Streams {
		c := r.compare(func(m Measurement) float64 { return m.Throughput[i].BitsPerSecond })
		c.Metric = fmt.Sprintf("throughput_%d_streams", n)
		c.Label = streamsLabel(n)
		c.Unit = "bit/s"
		c.Target = fmt.Sprintf(">= %.1f", targetThroughput)
		c.Met = c.Ratio != nil && *c.Ratio >= targetThroughput
		r.Summary = append(r.Summary, c)
	}
	c := r.compare(func(m Measurement) float64 { return m.RTT.AddedMS })
	c.Metric = "added_rtt"
	c.Label = "added RTT"
	c.Unit = "ms"
	c.Target = fmt.Sprintf("<= %.1f", targetAddedRTT)
	c.Met = c.Ratio != nil && *c.Ratio <= targetAddedRTT
	r.Summary = append(r.Summary, c)
}

// compare takes the medians of one figure over the rounds.
func (r *Result) compare(get func(Measurement) float64) Comparison {
	var cs, ss, ratios []float64
	for _, rd := range r.Rounds {
		c, s := get(rd.Causeway), get(rd.Stock)
		cs = append(cs, c)
		ss = append(ss, s)
		if q, ok := Ratio(c, s); ok {
			ratios = append(ratios, q)
		}
	}
	out := Comparison{Causeway: Median(cs), Stock: Median(ss)}
	if q, ok := Ratio(out.Causeway, out.Stock); ok {
		out.Ratio = &q
	}
	if len(ratios) > 0 {
		q := Median(ratios)
		out.PairedRatio = &q
	}
	return out
}

func streamsLabel(n int) string {
	if n == 1 {
		return "1 stream"
	}
	return fmt.Sprintf("%d streams", n)
}

// String is the path in one line, e.g. "office-1-host -> vpc-1-backend-1
// (10.20.0.10) via office-1, vpc-1".
func (p Path) String() string {
	return fmt.Sprintf("%s -> %s (%s) via %s, %s", p.Client, p.Server, p.ServerAddr, p.ClientAppliance, p.ServerAppliance)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
