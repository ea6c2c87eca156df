package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteText writes r for people: the setup, a line per dataplane and
// round, and the medians with their ratios against the targets.
func (r *Result) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	s := r.Settings
	streams := make([]string, len(s.Streams))
	for i, n := range s.Streams {
		streams[i] = fmt.Sprint(n)
	}
	omit := ""
	if s.OmitSeconds > 0 {
		omit = fmt.Sprintf(" after %g s warm-up", s.OmitSeconds)
	}
	fmt.Fprintf(tw, "path\t%s\n", r.Path)
	fmt.Fprintf(tw, "throughput\tiperf3 TCP with %s parallel streams, %g s per test%s, receiver side\n", strings.Join(streams, " and "), s.DurationSeconds, omit)
	fmt.Fprintf(tw, "added RTT\tmedian of %d pings every %g ms between the appliances: tunnel minus underlay\n", s.Pings, s.PingIntervalMS)
	fmt.Fprintf(tw, "rounds\t%d completed of %d, alternating which dataplane goes first\n", len(r.Rounds), s.Rounds)
	for _, d := range []DataplaneInfo{r.Causeway, r.Stock} {
		fmt.Fprintf(tw, "%s\t%s\n", d.Name, d.describe())
	}
	fmt.Fprintln(tw)

	fmt.Fprint(tw, "round\tdataplane")
	for _, n := range s.Streams {
		fmt.Fprintf(tw, "\t%s", streamsLabel(n))
	}
	fmt.Fprint(tw, "\tadded RTT\ttunnel RTT\tunderlay RTT\tretransmits\n")
	for _, rd := range r.Rounds {
		for _, name := range rd.Order {
			m := rd.Causeway
			if name == Stock {
				m = rd.Stock
			}
			fmt.Fprintf(tw, "%d\t%s", rd.Round, name)
			var retr []string
			for _, t := range m.Throughput {
				fmt.Fprintf(tw, "\t%s", bitrate(t.BitsPerSecond))
				retr = append(retr, fmt.Sprint(t.Retransmits))
			}
			fmt.Fprintf(tw, "\t%s\t%s\t%s\t%s\n", millis(m.RTT.AddedMS), millis(m.RTT.TunnelMS), millis(m.RTT.UnderlayMS), strings.Join(retr, " / "))
		}
	}
	if len(r.Summary) > 0 {
		fmt.Fprintln(tw)
		fmt.Fprint(tw, "median\tcauseway\tstock\tratio\tpaired ratio\ttarget\t\n")
		for _, c := range r.Summary {
			f := bitrate
			if c.Unit == "ms" {
				f = millis
			}
			met := "not met"
			if c.Met {
				met = "met"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Label, f(c.Causeway), f(c.Stock), ratio(c.Ratio), ratio(c.PairedRatio), c.Target, met)
		}
		fmt.Fprintln(tw, "(ratio: causeway/stock of the medians; paired ratio: median of the per-round ratios)")
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(tw, "\nWARNING: %s\n", warn)
	}
	return tw.Flush()
}

func (d DataplaneInfo) describe() string {
	var b strings.Builder
	b.WriteString("wireguard-go " + d.WireGuardVersion)
	if d.Built {
		b.WriteString(" (daemon built from go.mod)")
	}
	for _, i := range d.Interfaces {
		fmt.Fprintf(&b, "; %s: %s MTU %d", i.Node, i.Name, i.MTU)
	}
	return b.String()
}

// line is the measurement on one line, for progress output.
func (m Measurement) line() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-8s", m.Dataplane)
	for _, t := range m.Throughput {
		fmt.Fprintf(&b, "  %s %s", streamsLabel(t.Streams), bitrate(t.BitsPerSecond))
	}
	fmt.Fprintf(&b, "  added RTT %s (tunnel %s, underlay %s)", millis(m.RTT.AddedMS), millis(m.RTT.TunnelMS), millis(m.RTT.UnderlayMS))
	return b.String()
}

func bitrate(bps float64) string { return fmt.Sprintf("%.2f Gbit/s", bps/1e9) }

func millis(v float64) string { return fmt.Sprintf("%.3f ms", v) }

func ratio(r *float64) string {
	if r == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", *r)
}
