package ctl

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"
)

// pathHistory is the answer of GET /api/v1/tenants/{t}/paths, as far as
// the report needs it.
type pathHistory struct {
	FromName string `json:"from_name"`
	ToName   string `json:"to_name"`
	Start    string `json:"start"`
	End      string `json:"end"`
	Step     string `json:"step"`
	Paths    []struct {
		Appliance string `json:"appliance"`
		Peer      string `json:"peer"`
		Uplink    string `json:"uplink"`
		Remote    string `json:"remote"`
		Summary   struct {
			Samples     int     `json:"samples"`
			Sent        int64   `json:"sent"`
			Lost        int64   `json:"lost"`
			LossPercent float64 `json:"loss_percent"`
			RTTP50MS    float64 `json:"rtt_p50_ms"`
			RTTP99MS    float64 `json:"rtt_p99_ms"`
			JitterMS    float64 `json:"jitter_ms"`
		} `json:"summary"`
	} `json:"paths"`
}

// paths prints a loss and latency report of every path from one site to
// another: one table per pair of appliances, one row per path.
func paths(ctx context.Context, c *client, args []string) error {
	fs := flag.NewFlagSet("paths", flag.ContinueOnError)
	from := fs.String("from", "", "site the paths start at")
	to := fs.String("to", "", "site the paths lead to")
	since := fs.String("since", "24h", "how far back")
	step := fs.String("step", "", "10s or 1m (default: 10s up to 6h, else 1m)")
	pos, err := parse(fs, args, 1, 1, "TENANT")
	if err != nil {
		return err
	}
	if *from == "" || *to == "" {
		return usagef("paths: --from and --to are required")
	}
	q := url.Values{"from": {*from}, "to": {*to}, "since": {*since}}
	if *step != "" {
		q.Set("step", *step)
	}
	path := "/api/v1/tenants/" + esc(pos[0]) + "/paths?" + q.Encode()
	if c.cfg.JSON {
		var raw map[string]any
		if err := c.do(ctx, "GET", path, nil, &raw); err != nil {
			return err
		}
		return c.printJSON(raw)
	}
	var h pathHistory
	if err := c.do(ctx, "GET", path, nil, &h); err != nil {
		return err
	}
	fmt.Fprintf(c.cfg.Out, "paths %s -> %s, %s to %s, step %s\n", h.FromName, h.ToName, shortTime(h.Start), shortTime(h.End), h.Step)
	if len(h.Paths) == 0 {
		fmt.Fprintln(c.cfg.Out, "no reports in this range")
		return nil
	}
	var tw *tabwriter.Writer
	pair := ""
	for _, p := range h.Paths {
		if p.Appliance+" -> "+p.Peer != pair {
			if tw != nil {
				tw.Flush()
			}
			pair = p.Appliance + " -> " + p.Peer
			fmt.Fprintf(c.cfg.Out, "\n%s\n", pair)
			tw = tabwriter.NewWriter(c.cfg.Out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "UPLINK\tREMOTE\tLOSS %\tRTT P50 MS\tRTT P99 MS\tJITTER MS\tSENT\tLOST\tSAMPLES")
		}
		s := p.Summary
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.1f\t%.1f\t%.1f\t%d\t%d\t%d\n", p.Uplink, p.Remote, s.LossPercent,
			s.RTTP50MS, s.RTTP99MS, s.JitterMS, s.Sent, s.Lost, s.Samples)
	}
	return tw.Flush()
}

// shortTime prints an RFC 3339 time to the second.
func shortTime(s string) string {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return s
	}
	return t.Truncate(time.Second).Format(time.RFC3339)
}

func init() { commands["paths"] = paths }
