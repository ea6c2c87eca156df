package ctl

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// usageReport is the answer of GET /api/v1/usage.
type usageReport struct {
	From  string `json:"from"`
	To    string `json:"to"`
	By    string `json:"by"`
	Items []struct {
		Tenant       string `json:"tenant"`
		TenantName   string `json:"tenant_name"`
		Site         string `json:"site"`
		SiteName     string `json:"site_name"`
		PeerSite     string `json:"peer_site"`
		PeerSiteName string `json:"peer_site_name"`
		Meter        string `json:"meter"`
		Direction    string `json:"direction"`
		Start        string `json:"start"`
		Bytes        int64  `json:"bytes"`
		Packets      int64  `json:"packets"`
	} `json:"items"`
}

// usage prints the ledger: one row per site, peer site, meter, direction
// and hour (or day), then the totals per meter and direction.
func usage(ctx context.Context, c *client, args []string) error {
	fs := flag.NewFlagSet("usage", flag.ContinueOnError)
	tenant := fs.String("tenant", "", "tenant id or name (default: the token's tenant, or all for an operator)")
	site := fs.String("site", "", "site id or name (needs --tenant for an operator)")
	since := fs.Duration("since", 24*time.Hour, "how far back")
	by := fs.String("by", "hour", "hour or day")
	if _, err := parse(fs, args, 0, 0, "no arguments"); err != nil {
		return err
	}
	if *since <= 0 {
		return usagef("usage: --since: want a positive duration, got %s", *since)
	}
	now := time.Now().UTC()
	q := url.Values{"from": {now.Add(-*since).Format(time.RFC3339)}, "to": {now.Format(time.RFC3339)}, "by": {*by}}
	if *tenant != "" {
		q.Set("tenant", *tenant)
	}
	if *site != "" {
		q.Set("site", *site)
	}
	path := "/api/v1/usage?" + q.Encode()
	if c.cfg.JSON {
		var raw map[string]any
		if err := c.do(ctx, "GET", path, nil, &raw); err != nil {
			return err
		}
		return c.printJSON(raw)
	}
	var rep usageReport
	if err := c.do(ctx, "GET", path, nil, &rep); err != nil {
		return err
	}
	fmt.Fprintf(c.cfg.Out, "usage %s to %s by %s (inner IP bytes)\n\n", shortTime(rep.From), shortTime(rep.To), rep.By)
	if len(rep.Items) == 0 {
		fmt.Fprintln(c.cfg.Out, "no usage in this range")
		return nil
	}
	tw := tabwriter.NewWriter(c.cfg.Out, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "START\tTENANT\tSITE\tMETER\tDIR\tPEER\tBYTES\tPACKETS\t")
	type key struct{ meter, dir string }
	var order []key
	totals := map[key][2]int64{}
	for _, it := range rep.Items {
		peer := or(it.PeerSiteName, it.PeerSite)
		if it.Meter != "overlay" {
			peer = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t\n", shortTime(it.Start), or(it.TenantName, it.Tenant), or(it.SiteName, it.Site),
			it.Meter, it.Direction, peer, it.Bytes, it.Packets)
		k := key{it.Meter, it.Direction}
		if _, ok := totals[k]; !ok {
			order = append(order, k)
		}
		t := totals[k]
		totals[k] = [2]int64{t[0] + it.Bytes, t[1] + it.Packets}
	}
	slices.SortFunc(order, func(a, b key) int { return strings.Compare(a.meter+a.dir, b.meter+b.dir) })
	for _, k := range order {
		fmt.Fprintf(tw, "total\t\t\t%s\t%s\t\t%d\t%d\t\n", k.meter, k.dir, totals[k][0], totals[k][1])
	}
	return tw.Flush()
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// meteringStatus prints the export's health.
func meteringStatus(ctx context.Context, c *client, args []string) error {
	if _, err := parse(flag.NewFlagSet("metering status", flag.ContinueOnError), args, 0, 0, "no arguments"); err != nil {
		return err
	}
	var st map[string]any
	if err := c.do(ctx, "GET", "/api/v1/metering/status", nil, &st); err != nil {
		return err
	}
	if c.cfg.JSON {
		return c.printJSON(st)
	}
	tw := tabwriter.NewWriter(c.cfg.Out, 2, 4, 2, ' ', 0)
	row := func(label, k string) {
		if v, ok := st[k]; ok {
			if f, isNum := v.(float64); isNum && f != float64(int64(f)) {
				fmt.Fprintf(tw, "%s\t%.2f\n", label, f)
				return
			}
			fmt.Fprintf(tw, "%s\t%s\n", label, cell(v))
		}
	}
	row("export enabled", "enabled")
	row("endpoint", "endpoint")
	row("replica", "replica")
	row("queue length", "queue_length")
	row("oldest unexported age (s)", "oldest_age_seconds")
	row("dead letters", "dead_letters")
	row("events/s (last minute)", "events_per_second")
	row("sent", "sent")
	row("retried", "retried")
	row("throttled", "throttled")
	row("made dead letters", "dead_lettered")
	row("last success", "last_success_at")
	row("last error", "last_error")
	row("last error at", "last_error_at")
	row("paused until", "paused_until")
	return tw.Flush()
}

func init() {
	commands["usage"] = usage
	commands["metering status"] = meteringStatus
	commands["metering dead-letters"] = func(ctx context.Context, c *client, args []string) error {
		fs := flag.NewFlagSet("metering dead-letters", flag.ContinueOnError)
		limit := fs.Int("limit", 100, "at most this many, newest first")
		if _, err := parse(fs, args, 0, 0, "no arguments"); err != nil {
			return err
		}
		return c.list(ctx, fmt.Sprintf("/api/v1/metering/dead-letters?limit=%d", *limit),
			"id", "tenant", "site", "meter_name", "hour", "bytes", "attempts", "dead_at", "reason")
	}
	commands["metering retry"] = func(ctx context.Context, c *client, args []string) error {
		fs := flag.NewFlagSet("metering retry", flag.ContinueOnError)
		all := fs.Bool("all", false, "retry every dead letter")
		pos, err := parse(fs, args, 0, 1000, "EVENT-ID... or --all")
		if err != nil {
			return err
		}
		if *all == (len(pos) > 0) {
			return usagef("metering retry: give event ids or --all")
		}
		body := map[string]any{"all": true}
		if !*all {
			body = map[string]any{"ids": pos}
		}
		return c.show(ctx, "POST", "/api/v1/metering/dead-letters/retry", body)
	}
	commands["tenant update"] = func(ctx context.Context, c *client, args []string) error {
		fs := flag.NewFlagSet("tenant update", flag.ContinueOnError)
		customer := fs.String("billing-customer", "", "the tenant's customer at the metering API (\"\" removes it)")
		pos, err := parse(fs, args, 1, 1, "TENANT")
		if err != nil {
			return err
		}
		body := map[string]any{}
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "billing-customer" {
				body["billing_customer"] = *customer
			}
		})
		if len(body) == 0 {
			return usagef("tenant update: nothing to change (--billing-customer)")
		}
		return c.show(ctx, "PATCH", "/api/v1/tenants/"+esc(pos[0]), body)
	}
}
