package ctl

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
)

// PairUsage is the help of the pair commands (causeway ctl pair --help).
const PairUsage = `Pair commands: a site may have two appliances, a pair; one of them is active.

  pair status TENANT SITE
      The site's members (priority, drained, role as the controller holds it,
      connected, last report), the active member, since when and its term, the
      last failover and its reason, and the recent failovers. --json for the
      API's answer.
  pair drain TENANT APPLIANCE
      Ask a member to give up the active role and stay standby (its netmap says
      drained: true). Logged by the controller with the request id.
  pair undrain TENANT APPLIANCE
      Let a drained member take the active role again.
  pair priority TENANT APPLIANCE N
      Set a member's priority, 0 to 255; higher is preferred. New appliances
      have 100.

TENANT, SITE and APPLIANCE are ids or names.
`

// helpFor returns the help of a command line that asks for it (only the
// pair commands have help of their own); ok is false otherwise.
func helpFor(args []string) (string, bool) {
	if len(args) == 0 || args[0] != "pair" {
		return "", false
	}
	if len(args) == 1 {
		return PairUsage, true
	}
	for _, a := range args[1:] {
		switch a {
		case "-h", "-help", "--help", "help":
			return PairUsage, true
		}
	}
	return "", false
}

// pairStatus is the answer of GET …/sites/{site}/pair, as far as the
// table needs it.
type pairStatus struct {
	Site         string       `json:"site"`
	SiteName     string       `json:"site_name"`
	Paired       bool         `json:"paired"`
	ActiveName   string       `json:"active_name"`
	Since        string       `json:"since"`
	Term         int64        `json:"term"`
	LastFailover *failover    `json:"last_failover"`
	Members      []pairMember `json:"members"`
	Failovers    []failover   `json:"failovers"`
}

type pairMember struct {
	Name       string `json:"name"`
	Priority   int    `json:"priority"`
	Drained    bool   `json:"drained"`
	Role       string `json:"role"`
	Connected  bool   `json:"connected"`
	LastReport *struct {
		Role         string `json:"role"`
		Term         int64  `json:"term"`
		PartnerAlive bool   `json:"partner_alive"`
		ReportedAt   string `json:"reported_at"`
	} `json:"last_report"`
}

type failover struct {
	At       string `json:"at"`
	FromName string `json:"from_name"`
	ToName   string `json:"to_name"`
	Reason   string `json:"reason"`
	Term     int64  `json:"term"`
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (f *failover) String() string {
	return fmt.Sprintf("%s: %s -> %s (%s)", shortTime(f.At), orDash(f.FromName), f.ToName, f.Reason)
}

func pairStatusCmd(ctx context.Context, c *client, args []string) error {
	pos, err := parse(flag.NewFlagSet("pair status", flag.ContinueOnError), args, 2, 2, "TENANT SITE")
	if err != nil {
		return err
	}
	path := "/api/v1/tenants/" + esc(pos[0]) + "/sites/" + esc(pos[1]) + "/pair"
	if c.cfg.JSON {
		var raw map[string]any
		if err := c.do(ctx, "GET", path, nil, &raw); err != nil {
			return err
		}
		return c.printJSON(raw)
	}
	var st pairStatus
	if err := c.do(ctx, "GET", path, nil, &st); err != nil {
		return err
	}
	out := c.cfg.Out
	switch {
	case !st.Paired:
		fmt.Fprintf(out, "site %s is no pair: %d live appliance(s)\n", st.SiteName, len(st.Members))
	case st.ActiveName == "":
		fmt.Fprintf(out, "pair %s: no active member reported yet\n", st.SiteName)
	default:
		fmt.Fprintf(out, "pair %s: active %s since %s, term %d\n", st.SiteName, st.ActiveName, shortTime(st.Since), st.Term)
	}
	if st.LastFailover != nil {
		fmt.Fprintf(out, "last failover %s\n", st.LastFailover)
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPRIORITY\tDRAINED\tROLE\tCONNECTED\tREPORTED\tLAST REPORT")
	for _, m := range st.Members {
		reported, last := "-", "-"
		if r := m.LastReport; r != nil {
			reported = shortTime(r.ReportedAt)
			last = fmt.Sprintf("%s, term %d, partner %s", r.Role, r.Term, map[bool]string{true: "alive", false: "not seen"}[r.PartnerAlive])
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Priority, yesNo(m.Drained), m.Role, yesNo(m.Connected), reported, last)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.Failovers) == 0 {
		return nil
	}
	fmt.Fprintln(out, "\nrecent failovers")
	tw = tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AT\tFROM\tTO\tTERM\tREASON")
	for _, f := range st.Failovers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", shortTime(f.At), orDash(f.FromName), f.ToName, f.Term, f.Reason)
	}
	return tw.Flush()
}

func pairPriorityCmd(ctx context.Context, c *client, args []string) error {
	pos, err := parse(flag.NewFlagSet("pair priority", flag.ContinueOnError), args, 3, 3, "TENANT APPLIANCE N")
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(strings.TrimSpace(pos[2]))
	if err != nil || n < 0 || n > 255 {
		return usagef("pair priority: want N from 0 to 255 (higher is preferred), got %q", pos[2])
	}
	return c.show(ctx, "PATCH", "/api/v1/tenants/"+esc(pos[0])+"/appliances/"+esc(pos[1]), map[string]any{"priority": n})
}

func init() {
	commands["pair status"] = pairStatusCmd
	commands["pair drain"] = twoRef("/api/v1/tenants/%s/appliances/%s/drain", "POST", "TENANT APPLIANCE")
	commands["pair undrain"] = twoRef("/api/v1/tenants/%s/appliances/%s/undrain", "POST", "TENANT APPLIANCE")
	commands["pair priority"] = pairPriorityCmd
}
