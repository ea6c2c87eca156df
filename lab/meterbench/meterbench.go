// Package meterbench measures what a slow metering API costs the data
// path: the round-trip time through the overlay of a lab whose meter sink
// answers at once, against the same lab with the sink answering every
// request only after a delay (5 s by default), in interleaved rounds. It
// is `causeway bench metering` (docs/benchmarks.md).
//
// The traffic it measures with is tenant traffic: it is metered, so the
// appliances ship a usage record every interval and the controller
// exports them to the sink throughout, the slow one included.
package meterbench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/causeway-net/causeway/lab"
	"github.com/causeway-net/causeway/lab/bench"
)

// Defaults of Options.
const (
	DefaultRounds       = 4
	DefaultPings        = 1000
	DefaultPingInterval = 10 * time.Millisecond
	DefaultDelay        = 5 * time.Second
)

// Options configure Run. Zero fields take the defaults.
type Options struct {
	// Rounds each measure both phases, the order alternating.
	Rounds int
	// Pings per phase, PingInterval apart.
	Pings        int
	PingInterval time.Duration
	// Delay is how long the slow sink holds every answer.
	Delay time.Duration
	// Progress receives a line per phase; nil discards them.
	Progress io.Writer
}

func (o Options) withDefaults() Options {
	if o.Rounds == 0 {
		o.Rounds = DefaultRounds
	}
	if o.Pings == 0 {
		o.Pings = DefaultPings
	}
	if o.PingInterval == 0 {
		o.PingInterval = DefaultPingInterval
	}
	if o.Delay == 0 {
		o.Delay = DefaultDelay
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o
}

// Check reports the first option out of range, naming its flag.
func (o Options) Check() error {
	o = o.withDefaults()
	switch {
	case o.Rounds < 1 || o.Rounds > 100:
		return fmt.Errorf("--rounds: want 1 to 100, got %d", o.Rounds)
	case o.Pings < 10 || o.Pings > 100000:
		return fmt.Errorf("--pings: want 10 to 100000, got %d", o.Pings)
	case o.PingInterval < time.Millisecond || o.PingInterval > time.Second:
		return fmt.Errorf("--ping-interval: want 1ms to 1s, got %s", o.PingInterval)
	case o.Delay < 0 || o.Delay > time.Minute:
		return fmt.Errorf("--delay: want 0 to 1m, got %s", o.Delay)
	}
	return nil
}

// Phase is one measurement: pings through the overlay while the sink
// answers normally (SlowAPI false) or after the delay.
type Phase struct {
	SlowAPI bool `json:"slow_api"`
	// Round trips of the replies, in milliseconds.
	P50MS   float64 `json:"p50_ms"`
	P99MS   float64 `json:"p99_ms"`
	Samples int     `json:"samples"`
	Lost    int     `json:"lost"`
	// UsageReports are the appliances' usage reports the controller
	// answered during the phase, and how long the slowest took.
	UsageReports     int     `json:"usage_reports"`
	UsageReportMaxMS float64 `json:"usage_report_max_ms"`
	// Exported is how many events the metering API accepted during the
	// phase; QueueAtEnd how many waited in the outbox at its end.
	Exported   int64 `json:"exported"`
	QueueAtEnd int64 `json:"queue_at_end"`
}

// Round is one normal and one slow phase.
type Round struct {
	Normal Phase `json:"normal"`
	Slow   Phase `json:"slow"`
}

// Result is what Run measured.
type Result struct {
	From  string `json:"from"`
	To    string `json:"to"`
	Delay string `json:"delay"`
	Pings int    `json:"pings"`
	// Interval between pings.
	Interval string  `json:"interval"`
	Rounds   []Round `json:"rounds"`
	// Medians over the rounds of each phase's P50 and P99, and the
	// ratios slow/normal.
	NormalP50MS float64 `json:"normal_p50_ms"`
	SlowP50MS   float64 `json:"slow_p50_ms"`
	RatioP50    float64 `json:"ratio_p50"`
	NormalP99MS float64 `json:"normal_p99_ms"`
	SlowP99MS   float64 `json:"slow_p99_ms"`
	RatioP99    float64 `json:"ratio_p99"`
	// UsageReportMaxMS is the slowest usage report answered during any
	// slow phase.
	UsageReportMaxMS float64 `json:"usage_report_max_ms"`
}

// Run measures on a lab that is up, from the first host of site office-1
// to the first host of site vpc-1, and leaves the sink answering normally
// again.
func Run(ctx context.Context, l *lab.Lab, o Options) (*Result, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	from, err := firstHost(l, "office-1")
	if err != nil {
		return nil, err
	}
	to, err := firstHost(l, "vpc-1")
	if err != nil {
		return nil, err
	}
	res := &Result{From: from.Name, To: to.Addrs[0], Delay: o.Delay.String(), Pings: o.Pings, Interval: o.PingInterval.String()}
	defer l.SetMeterSinkFault(context.WithoutCancel(ctx), lab.MeterSinkFault{})
	// Warm up: the tunnel's sessions, the first records and events.
	if _, err := ping(ctx, l, from.Name, to.Addrs[0], 50, o.PingInterval); err != nil {
		return nil, err
	}
	for i := range o.Rounds {
		var r Round
		order := []bool{false, true}
		if i%2 == 1 {
			order = []bool{true, false}
		}
		for _, slow := range order {
			p, err := measure(ctx, l, o, from.Name, to.Addrs[0], slow)
			if err != nil {
				return nil, err
			}
			label := "normal"
			if slow {
				label = "slow API (" + o.Delay.String() + ")"
				r.Slow = p
			} else {
				r.Normal = p
			}
			fmt.Fprintf(o.Progress, "round %d, %s: RTT p50 %.3f ms, p99 %.3f ms, %d lost; %d usage reports, slowest %.1f ms; %d events exported, %d queued\n",
				i+1, label, p.P50MS, p.P99MS, p.Lost, p.UsageReports, p.UsageReportMaxMS, p.Exported, p.QueueAtEnd)
		}
		res.Rounds = append(res.Rounds, r)
	}
	res.summarize()
	return res, nil
}

func (r *Result) summarize() {
	med := func(get func(Round) float64) float64 {
		var xs []float64
		for _, rd := range r.Rounds {
			xs = append(xs, get(rd))
		}
		return bench.Median(xs)
	}
	r.NormalP50MS = med(func(rd Round) float64 { return rd.Normal.P50MS })
	r.SlowP50MS = med(func(rd Round) float64 { return rd.Slow.P50MS })
	r.NormalP99MS = med(func(rd Round) float64 { return rd.Normal.P99MS })
	r.SlowP99MS = med(func(rd Round) float64 { return rd.Slow.P99MS })
	r.RatioP50, _ = bench.Ratio(r.SlowP50MS, r.NormalP50MS)
	r.RatioP99, _ = bench.Ratio(r.SlowP99MS, r.NormalP99MS)
	for _, rd := range r.Rounds {
		r.UsageReportMaxMS = max(r.UsageReportMaxMS, rd.Slow.UsageReportMaxMS)
	}
}

// WriteText prints the rounds and the summary.
func (r *Result) WriteText(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "overlay RTT %s -> %s, %d pings %s apart per phase; slow metering API: every answer after %s\n\n",
		r.From, r.To, r.Pings, r.Interval, r.Delay)
	fmt.Fprintf(bw, "%-6s %-8s %9s %9s %5s %8s %11s %9s %7s\n", "round", "api", "p50 ms", "p99 ms", "lost", "reports", "report max", "exported", "queued")
	for i, rd := range r.Rounds {
		for _, p := range []Phase{rd.Normal, rd.Slow} {
			api := "normal"
			if p.SlowAPI {
				api = "slow"
			}
			fmt.Fprintf(bw, "%-6d %-8s %9.3f %9.3f %5d %8d %8.1f ms %9d %7d\n", i+1, api, p.P50MS, p.P99MS, p.Lost,
				p.UsageReports, p.UsageReportMaxMS, p.Exported, p.QueueAtEnd)
		}
	}
	fmt.Fprintf(bw, "\nmedian over rounds: p50 %.3f ms normal, %.3f ms slow (ratio %.2f); p99 %.3f ms normal, %.3f ms slow (ratio %.2f)\n",
		r.NormalP50MS, r.SlowP50MS, r.RatioP50, r.NormalP99MS, r.SlowP99MS, r.RatioP99)
	fmt.Fprintf(bw, "slowest usage report answered while the API was slow: %.1f ms\n", r.UsageReportMaxMS)
	return bw.Flush()
}

// measure runs one phase.
func measure(ctx context.Context, l *lab.Lab, o Options, from, to string, slow bool) (Phase, error) {
	f := lab.MeterSinkFault{}
	if slow {
		f.Delay = o.Delay
	}
	if err := l.SetMeterSinkFault(ctx, f); err != nil {
		return Phase{}, err
	}
	// Normal: the slow request of the phase before has ended and the
	// outbox is empty. Slow: events wait behind a request the sink holds
	// (with a delay under a second, which makes a control run of two
	// nearly equal phases, that is not waited for).
	// Without traffic there are no events: a slow phase waiting for one
	// makes some.
	var st0 meteringStatus
	waitFrom := time.Now()
	deadline := waitFrom.Add(o.Delay + 10*time.Second)
	for {
		var err error
		if st0, err = status(ctx, l); err != nil {
			return Phase{}, err
		}
		if (st0.QueueLength == 0) != slow || (slow && o.Delay < time.Second) {
			break
		}
		if slow && time.Since(waitFrom) > lab.UsageInterval {
			ping(ctx, l, from, to, 5, o.PingInterval)
		}
		if time.Now().After(deadline) {
			return Phase{}, fmt.Errorf("the metering export did not settle for the phase (slow API %v): %d events queued", slow, st0.QueueLength)
		}
		select {
		case <-ctx.Done():
			return Phase{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	start := time.Now()
	p, err := ping(ctx, l, from, to, o.Pings, o.PingInterval)
	if err != nil {
		return Phase{}, err
	}
	end := time.Now()
	st1, err := status(ctx, l)
	if err != nil {
		return Phase{}, err
	}
	ph := Phase{SlowAPI: slow, P50MS: p.Median(), P99MS: percentile(p.RTTs, 0.99), Samples: len(p.RTTs), Lost: p.Sent - p.Received,
		Exported: st1.Sent - st0.Sent, QueueAtEnd: st1.QueueLength}
	reports, err := usageReports(l.LogPath("controller"), start, end)
	if err != nil {
		return Phase{}, err
	}
	for _, d := range reports {
		ph.UsageReports++
		ph.UsageReportMaxMS = max(ph.UsageReportMaxMS, d)
	}
	return ph, nil
}

// ping runs ping(8) in the host's namespace.
func ping(ctx context.Context, l *lab.Lab, host, addr string, n int, interval time.Duration) (bench.Ping, error) {
	out, err := l.Command(ctx, host, "ping", "-n", "-c", strconv.Itoa(n), "-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64),
		"-W", "1", addr).Output()
	if err != nil && len(out) == 0 {
		return bench.Ping{}, fmt.Errorf("ping %s from %s: %w", addr, host, err)
	}
	p, perr := bench.ParsePing(out)
	if perr != nil {
		return bench.Ping{}, fmt.Errorf("ping %s from %s: %w", addr, host, errors.Join(perr, err))
	}
	if p.Received == 0 {
		return p, fmt.Errorf("ping %s from %s: no replies", addr, host)
	}
	return p, nil
}

// percentile is the q-quantile of xs (nearest rank), NaN if empty.
func percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

type meteringStatus struct {
	QueueLength int64 `json:"queue_length"`
	Sent        int64 `json:"sent"`
}

func status(ctx context.Context, l *lab.Lab) (meteringStatus, error) {
	var st meteringStatus
	out, err := l.Ctl(ctx, "metering", "status")
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal([]byte(out), &st)
}

// usageReports returns how long the controller took for each usage report
// it answered between from and to, in milliseconds, from its log.
func usageReports(logPath string, from, to time.Time) ([]float64, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []float64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Time     time.Time `json:"time"`
			Msg      string    `json:"msg"`
			Route    string    `json:"route"`
			Duration float64   `json:"duration_ms"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Msg != "request" || line.Route != "POST /api/v1/usage/report" {
			continue
		}
		if !line.Time.Before(from) && !line.Time.After(to) {
			out = append(out, line.Duration)
		}
	}
	return out, sc.Err()
}

// firstHost is the first host of the site in the lab's status.
func firstHost(l *lab.Lab, site string) (lab.HostStatus, error) {
	for _, h := range l.Status().Hosts {
		if h.Site == site && len(h.Addrs) > 0 {
			return h, nil
		}
	}
	return lab.HostStatus{}, fmt.Errorf("the lab has no host at site %s", site)
}
