// Package ctl is the admin command line for the controller API, run as
// `causeway ctl`. It is a plain client of the REST API: everything it does
// can be done with curl and the OpenAPI document.
package ctl

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// Config is what every command needs.
type Config struct {
	// Server is the controller's base URL, e.g. https://ctl.example:8443.
	Server string
	// Token is the API token.
	Token string
	// CAFile, if set, is the only CA trusted for the server's certificate
	// (the controller's ca.crt in TLS auto mode).
	CAFile string
	// JSON prints lists as JSON instead of tables.
	JSON bool
	Out  io.Writer
	// HTTPClient replaces the client built from CAFile (tests).
	HTTPClient *http.Client
}

// UsageError is a bad command line.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usagef(format string, args ...any) error { return &UsageError{fmt.Sprintf(format, args...)} }

// APIError is a problem document returned by the controller.
type APIError struct {
	Status    int    `json:"status"`
	Type      string `json:"type"`
	Title     string `json:"title"`
	Detail    string `json:"detail"`
	RequestID string `json:"request_id"`
	Errors    []struct {
		Field  string `json:"field"`
		Detail string `json:"detail"`
	} `json:"errors"`
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (HTTP %d)", e.Title, e.Status)
	if e.Detail != "" && len(e.Errors) == 0 {
		b.WriteString(": " + e.Detail)
	}
	for _, f := range e.Errors {
		fmt.Fprintf(&b, "\n  %s: %s", f.Field, f.Detail)
	}
	if e.RequestID != "" {
		fmt.Fprintf(&b, "\n  request id %s", e.RequestID)
	}
	return b.String()
}

// Usage is the command summary.
const Usage = `Commands:
  tenant list
  tenant create NAME
  tenant get TENANT
  tenant delete TENANT
  tenant update TENANT --billing-customer ID   (operator; "" removes it)
  site list TENANT
  site create TENANT NAME --kind office|home|vpc|remote [--prefix CIDR]...
  site get TENANT SITE
  site update TENANT SITE [--name NAME] [--kind KIND] [--prefix CIDR]... [--no-prefixes]
  site delete TENANT SITE
  token create TENANT --site SITE [--ttl 1h] [--description TEXT]   (enrollment token)
  token list TENANT
  token delete TENANT TOKEN-ID
  appliance list TENANT
  appliance get TENANT APPLIANCE
  appliance netmap TENANT APPLIANCE
  appliance endpoints TENANT APPLIANCE [IP:PORT]...
  appliance revoke TENANT APPLIANCE
  apitoken list [--tenant TENANT]
  apitoken create [--tenant TENANT] [--ttl DURATION] [--description TEXT]
  apitoken delete [--tenant TENANT] TOKEN-ID
  sla get TENANT
  sla set TENANT [--max-loss PERCENT] [--max-rtt MS] [--max-jitter MS]   (unset flags keep their value; 0: no limit)
  sla-override list TENANT
  sla-override set TENANT SITE SITE [--max-loss PERCENT] [--max-rtt MS] [--max-jitter MS]   (unset: the pair's or tenant's value)
  sla-override delete TENANT SITE SITE
  probe-key list TENANT
  probe-key rotate TENANT   (first call: a new key spreads as next; a call after the grace makes it current)
  paths TENANT --from SITE --to SITE [--since 24h] [--step 10s|1m]   (loss and latency per path)
  pair status TENANT SITE   (members, active member, term, failovers; pair --help for more)
  pair drain TENANT APPLIANCE
  pair undrain TENANT APPLIANCE
  pair priority TENANT APPLIANCE N   (0-255, higher preferred)
  usage [--tenant TENANT] [--site SITE] [--since 24h] [--by hour|day]   (usage per site, meter and hour)
  metering status   (the usage export's health; operator)
  metering dead-letters [--limit 100]
  metering retry (EVENT-ID... | --all)
TENANT, SITE and APPLIANCE are ids or names.`

// Run runs one command: args are the noun, the verb and their arguments.
func Run(ctx context.Context, cfg Config, args []string) error {
	if help, ok := helpFor(args); ok {
		out := cfg.Out
		if out == nil {
			out = os.Stdout
		}
		_, err := io.WriteString(out, help)
		return err
	}
	if len(args) == 0 || (len(args) < 2 && commands[args[0]] == nil) {
		return usagef("want a command\n%s", Usage)
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	c, err := newClient(cfg)
	if err != nil {
		return err
	}
	if cmd, ok := commands[args[0]]; ok {
		return cmd(ctx, c, args[1:]) // a command of one word
	}
	noun, verb, rest := args[0], args[1], args[2:]
	cmd, ok := commands[noun+" "+verb]
	if !ok {
		return usagef("unknown command %q\n%s", noun+" "+verb, Usage)
	}
	return cmd(ctx, c, rest)
}

type client struct {
	cfg  Config
	base *url.URL
	http *http.Client
}

func newClient(cfg Config) (*client, error) {
	u, err := url.Parse(strings.TrimRight(cfg.Server, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usagef("--server: want http(s)://host:port, got %q", cfg.Server)
	}
	if cfg.Token == "" {
		return nil, usagef("no API token: set --token, --token-file, CAUSEWAY_TOKEN or CAUSEWAY_TOKEN_FILE")
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		if cfg.CAFile != "" {
			pemData, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("reading the CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pemData) {
				return nil, fmt.Errorf("%s holds no PEM certificate", cfg.CAFile)
			}
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		hc = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	return &client{cfg: cfg, base: u, http: hc}, nil
}

// do sends a request and decodes a JSON answer into out (if non-nil).
func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	req.Header.Set("Accept", "application/json")
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return err
	}
	if res.StatusCode >= 400 {
		ae := &APIError{Status: res.StatusCode, Title: res.Status}
		if json.Unmarshal(data, ae) != nil {
			ae.Detail = strings.TrimSpace(string(data))
		}
		return ae
	}
	if out != nil && len(data) > 0 {
		return json.Unmarshal(data, out)
	}
	return nil
}

func esc(s string) string { return url.PathEscape(s) }

// parse parses flags anywhere among the arguments and checks the number of
// positional ones.
func parse(fs *flag.FlagSet, args []string, min, max int, names string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usagef("%v", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) < min || len(pos) > max {
		return nil, usagef("want %s, got %d argument(s)", names, len(pos))
	}
	return pos, nil
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func (c *client) printJSON(v any) error {
	enc := json.NewEncoder(c.cfg.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printList prints items as a table of the given columns, or as JSON.
func (c *client) printList(items []map[string]any, cols ...string) error {
	if c.cfg.JSON {
		return c.printJSON(map[string]any{"items": items})
	}
	tw := tabwriter.NewWriter(c.cfg.Out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.ToUpper(strings.Join(cols, "\t")))
	for _, it := range items {
		vals := make([]string, len(cols))
		for i, col := range cols {
			vals[i] = cell(it[col])
		}
		fmt.Fprintln(tw, strings.Join(vals, "\t"))
	}
	return tw.Flush()
}

func cell(v any) string {
	switch x := v.(type) {
	case nil:
		return "-"
	case []any:
		parts := make([]string, len(x))
		for i, p := range x {
			parts[i] = cell(p)
		}
		if len(parts) == 0 {
			return "-"
		}
		return strings.Join(parts, ",")
	case float64:
		return fmt.Sprint(int64(x))
	}
	return fmt.Sprint(v)
}

type listResp struct {
	Items []map[string]any `json:"items"`
}

func (c *client) list(ctx context.Context, path string, cols ...string) error {
	var l listResp
	if err := c.do(ctx, "GET", path, nil, &l); err != nil {
		return err
	}
	return c.printList(l.Items, cols...)
}

func (c *client) show(ctx context.Context, method, path string, body any) error {
	var out map[string]any
	if err := c.do(ctx, method, path, body, &out); err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	return c.printJSON(out)
}

var commands map[string]func(ctx context.Context, c *client, args []string) error

func init() {
	commands = map[string]func(ctx context.Context, c *client, args []string) error{
		"tenant list": func(ctx context.Context, c *client, args []string) error {
			if _, err := parse(flag.NewFlagSet("tenant list", flag.ContinueOnError), args, 0, 0, "no arguments"); err != nil {
				return err
			}
			return c.list(ctx, "/api/v1/tenants", "id", "name", "created_at")
		},
		"tenant create": func(ctx context.Context, c *client, args []string) error {
			pos, err := parse(flag.NewFlagSet("tenant create", flag.ContinueOnError), args, 1, 1, "NAME")
			if err != nil {
				return err
			}
			return c.show(ctx, "POST", "/api/v1/tenants", map[string]any{"name": pos[0]})
		},
		"tenant get": oneRef("/api/v1/tenants/%s", "GET", "TENANT"),
		"tenant delete": func(ctx context.Context, c *client, args []string) error {
			pos, err := parse(flag.NewFlagSet("tenant delete", flag.ContinueOnError), args, 1, 1, "TENANT")
			if err != nil {
				return err
			}
			return c.do(ctx, "DELETE", "/api/v1/tenants/"+esc(pos[0]), nil, nil)
		},
		"site list": func(ctx context.Context, c *client, args []string) error {
			pos, err := parse(flag.NewFlagSet("site list", flag.ContinueOnError), args, 1, 1, "TENANT")
			if err != nil {
				return err
			}
			return c.list(ctx, "/api/v1/tenants/"+esc(pos[0])+"/sites", "id", "name", "kind", "lan_prefixes")
		},
		"site create": func(ctx context.Context, c *client, args []string) error {
			fs := flag.NewFlagSet("site create", flag.ContinueOnError)
			kind := fs.String("kind", "", "office, home, vpc or remote")
			var prefixes multi
			fs.Var(&prefixes, "prefix", "LAN prefix (repeatable)")
			pos, err := parse(fs, args, 2, 2, "TENANT NAME")
			if err != nil {
				return err
			}
			return c.show(ctx, "POST", "/api/v1/tenants/"+esc(pos[0])+"/sites",
				map[string]any{"name": pos[1], "kind": *kind, "lan_prefixes": []string(append(multi{}, prefixes...))})
		},
		"site get": twoRef("/api/v1/tenants/%s/sites/%s", "GET", "TENANT SITE"),
		"site update": func(ctx context.Context, c *client, args []string) error {
			fs := flag.NewFlagSet("site update", flag.ContinueOnError)
			name := fs.String("name", "", "new name")
			kind := fs.String("kind", "", "new kind")
			none := fs.Bool("no-prefixes", false, "remove every LAN prefix")
			var prefixes multi
			fs.Var(&prefixes, "prefix", "LAN prefix (repeatable; replaces the list)")
			pos, err := parse(fs, args, 2, 2, "TENANT SITE")
			if err != nil {
				return err
			}
			body := map[string]any{}
			if *name != "" {
				body["name"] = *name
			}
			if *kind != "" {
				body["kind"] = *kind
			}
			if len(prefixes) > 0 || *none {
				body["lan_prefixes"] = append([]string{}, prefixes...)
			}
			return c.show(ctx, "PATCH", "/api/v1/tenants/"+esc(pos[0])+"/sites/"+esc(pos[1]), body)
		},
		"site delete": twoRefDelete("/api/v1/tenants/%s/sites/%s", "TENANT SITE"),
		"token create": func(ctx context.Context, c *client, args []string) error {
			fs := flag.NewFlagSet("token create", flag.ContinueOnError)
			site := fs.String("site", "", "site to enrol into")
			ttl := fs.String("ttl", "", "validity, e.g. 1h (default 1h)")
			desc := fs.String("description", "", "note")
			pos, err := parse(fs, args, 1, 1, "TENANT")
			if err != nil {
				return err
			}
			return c.show(ctx, "POST", "/api/v1/tenants/"+esc(pos[0])+"/enrollment-tokens",
				map[string]any{"site": *site, "ttl": *ttl, "description": *desc})
		},
		"token list": func(ctx context.Context, c *client, args []string) error {
			pos, err := parse(flag.NewFlagSet("token list", flag.ContinueOnError), args, 1, 1, "TENANT")
			if err != nil {
				return err
			}
			return c.list(ctx, "/api/v1/tenants/"+esc(pos[0])+"/enrollment-tokens", "id", "site_id", "expires_at", "used_at", "appliance_id")
		},
		"token delete": twoRefDelete("/api/v1/tenants/%s/enrollment-tokens/%s", "TENANT TOKEN-ID"),
		"appliance list": func(ctx context.Context, c *client, args []string) error {
			pos, err := parse(flag.NewFlagSet("appliance list", flag.ContinueOnError), args, 1, 1, "TENANT")
			if err != nil {
				return err
			}
			return c.list(ctx, "/api/v1/tenants/"+esc(pos[0])+"/appliances", "id", "name", "site_id", "overlay_addr", "state", "connected", "netmap_version")
		},
		"appliance get":    twoRef("/api/v1/tenants/%s/appliances/%s", "GET", "TENANT APPLIANCE"),
		"appliance netmap": twoRef("/api/v1/tenants/%s/appliances/%s/netmap", "GET", "TENANT APPLIANCE"),
		"appliance revoke": twoRef("/api/v1/tenants/%s/appliances/%s/revoke", "POST", "TENANT APPLIANCE"),
		"appliance endpoints": func(ctx context.Context, c *client, args []string) error {
			pos, err := parse(flag.NewFlagSet("appliance endpoints", flag.ContinueOnError), args, 2, 1<<10, "TENANT APPLIANCE [IP:PORT]...")
			if err != nil {
				return err
			}
			return c.show(ctx, "PATCH", "/api/v1/tenants/"+esc(pos[0])+"/appliances/"+esc(pos[1]),
				map[string]any{"endpoints": append([]string{}, pos[2:]...)})
		},
		"apitoken list": func(ctx context.Context, c *client, args []string) error {
			fs := flag.NewFlagSet("apitoken list", flag.ContinueOnError)
			tenant := fs.String("tenant", "", "list this tenant's tokens instead of the operator tokens")
			if _, err := parse(fs, args, 0, 0, "no arguments"); err != nil {
				return err
			}
			return c.list(ctx, apiTokenPath(*tenant), "id", "scope", "tenant_id", "description", "expires_at", "last_used_at")
		},
		"apitoken create": func(ctx context.Context, c *client, args []string) error {
			fs := flag.NewFlagSet("apitoken create", flag.ContinueOnError)
			tenant := fs.String("tenant", "", "make a tenant-admin token for this tenant (default: an operator token)")
			ttl := fs.String("ttl", "", "validity (default: no expiry)")
			desc := fs.String("description", "", "note")
			if _, err := parse(fs, args, 0, 0, "no arguments"); err != nil {
				return err
			}
			return c.show(ctx, "POST", apiTokenPath(*tenant), map[string]any{"ttl": *ttl, "description": *desc})
		},
		"apitoken delete": func(ctx context.Context, c *client, args []string) error {
			fs := flag.NewFlagSet("apitoken delete", flag.ContinueOnError)
			tenant := fs.String("tenant", "", "the token's tenant (default: an operator token)")
			pos, err := parse(fs, args, 1, 1, "TOKEN-ID")
			if err != nil {
				return err
			}
			return c.do(ctx, "DELETE", apiTokenPath(*tenant)+"/"+esc(pos[0]), nil, nil)
		},
	}
}

// slaFlags are the threshold flags of sla set and sla-override set.
type slaFlags struct {
	fs          *flag.FlagSet
	loss        *float64
	rtt, jitter *int64
}

func newSLAFlags(name string) *slaFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	return &slaFlags{fs: fs,
		loss:   fs.Float64("max-loss", 0, "largest loss, in percent (0: no limit)"),
		rtt:    fs.Int64("max-rtt", 0, "largest mean round-trip time, in milliseconds (0: no limit)"),
		jitter: fs.Int64("max-jitter", 0, "largest jitter, in milliseconds (0: no limit)")}
}

// merge returns base with the flags that were given applied.
func (f *slaFlags) merge(base map[string]any) map[string]any {
	out := map[string]any{"max_loss_percent": base["max_loss_percent"], "max_rtt_ms": base["max_rtt_ms"], "max_jitter_ms": base["max_jitter_ms"]}
	f.fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "max-loss":
			out["max_loss_percent"] = *f.loss
		case "max-rtt":
			out["max_rtt_ms"] = *f.rtt
		case "max-jitter":
			out["max_jitter_ms"] = *f.jitter
		}
	})
	return out
}

func slaPath(tenant string) string { return "/api/v1/tenants/" + esc(tenant) + "/sla" }

func overridePath(tenant, a, b string) string {
	return "/api/v1/tenants/" + esc(tenant) + "/sla-overrides/" + esc(a) + "/" + esc(b)
}

func init() {
	commands["sla get"] = oneRef("/api/v1/tenants/%s/sla", "GET", "TENANT")
	commands["sla set"] = func(ctx context.Context, c *client, args []string) error {
		f := newSLAFlags("sla set")
		pos, err := parse(f.fs, args, 1, 1, "TENANT")
		if err != nil {
			return err
		}
		var cur map[string]any
		if err := c.do(ctx, "GET", slaPath(pos[0]), nil, &cur); err != nil {
			return err
		}
		return c.show(ctx, "PUT", slaPath(pos[0]), f.merge(cur))
	}
	commands["sla-override list"] = func(ctx context.Context, c *client, args []string) error {
		pos, err := parse(flag.NewFlagSet("sla-override list", flag.ContinueOnError), args, 1, 1, "TENANT")
		if err != nil {
			return err
		}
		var l listResp
		if err := c.do(ctx, "GET", "/api/v1/tenants/"+esc(pos[0])+"/sla-overrides", nil, &l); err != nil {
			return err
		}
		if c.cfg.JSON {
			return c.printJSON(l)
		}
		for _, it := range l.Items {
			sla, _ := it["sla"].(map[string]any)
			for k, v := range sla {
				it[k] = fmt.Sprint(v)
			}
		}
		return c.printList(l.Items, "site_a_name", "site_b_name", "max_loss_percent", "max_rtt_ms", "max_jitter_ms", "updated_at")
	}
	commands["sla-override set"] = func(ctx context.Context, c *client, args []string) error {
		f := newSLAFlags("sla-override set")
		pos, err := parse(f.fs, args, 3, 3, "TENANT SITE SITE")
		if err != nil {
			return err
		}
		// Start from the pair's override if it has one, else the tenant's SLA.
		var base map[string]any
		if err := c.do(ctx, "GET", slaPath(pos[0]), nil, &base); err != nil {
			return err
		}
		var l listResp
		if err := c.do(ctx, "GET", "/api/v1/tenants/"+esc(pos[0])+"/sla-overrides", nil, &l); err != nil {
			return err
		}
		for _, it := range l.Items {
			ids := []any{it["site_a"], it["site_a_name"], it["site_b"], it["site_b_name"]}
			has := func(ref string) bool {
				for _, v := range ids {
					if v == ref {
						return true
					}
				}
				return false
			}
			if has(pos[1]) && has(pos[2]) {
				base, _ = it["sla"].(map[string]any)
			}
		}
		return c.show(ctx, "PUT", overridePath(pos[0], pos[1], pos[2]), f.merge(base))
	}
	commands["sla-override delete"] = func(ctx context.Context, c *client, args []string) error {
		pos, err := parse(flag.NewFlagSet("sla-override delete", flag.ContinueOnError), args, 3, 3, "TENANT SITE SITE")
		if err != nil {
			return err
		}
		return c.do(ctx, "DELETE", overridePath(pos[0], pos[1], pos[2]), nil, nil)
	}
	commands["probe-key list"] = func(ctx context.Context, c *client, args []string) error {
		pos, err := parse(flag.NewFlagSet("probe-key list", flag.ContinueOnError), args, 1, 1, "TENANT")
		if err != nil {
			return err
		}
		return c.list(ctx, "/api/v1/tenants/"+esc(pos[0])+"/probe-key", "id", "role", "created_at", "current_from")
	}
	commands["probe-key rotate"] = func(ctx context.Context, c *client, args []string) error {
		pos, err := parse(flag.NewFlagSet("probe-key rotate", flag.ContinueOnError), args, 1, 1, "TENANT")
		if err != nil {
			return err
		}
		var l listResp
		if err := c.do(ctx, "POST", "/api/v1/tenants/"+esc(pos[0])+"/probe-key/rotate", nil, &l); err != nil {
			return err
		}
		return c.printList(l.Items, "id", "role", "created_at", "current_from")
	}
}

func apiTokenPath(tenant string) string {
	if tenant == "" {
		return "/api/v1/api-tokens"
	}
	return "/api/v1/tenants/" + esc(tenant) + "/api-tokens"
}

func oneRef(format, method, names string) func(ctx context.Context, c *client, args []string) error {
	return func(ctx context.Context, c *client, args []string) error {
		pos, err := parse(flag.NewFlagSet(names, flag.ContinueOnError), args, 1, 1, names)
		if err != nil {
			return err
		}
		return c.show(ctx, method, fmt.Sprintf(format, esc(pos[0])), nil)
	}
}

func twoRef(format, method, names string) func(ctx context.Context, c *client, args []string) error {
	return func(ctx context.Context, c *client, args []string) error {
		pos, err := parse(flag.NewFlagSet(names, flag.ContinueOnError), args, 2, 2, names)
		if err != nil {
			return err
		}
		return c.show(ctx, method, fmt.Sprintf(format, esc(pos[0]), esc(pos[1])), nil)
	}
}

func twoRefDelete(format, names string) func(ctx context.Context, c *client, args []string) error {
	return func(ctx context.Context, c *client, args []string) error {
		pos, err := parse(flag.NewFlagSet(names, flag.ContinueOnError), args, 2, 2, names)
		if err != nil {
			return err
		}
		return c.do(ctx, "DELETE", fmt.Sprintf(format, esc(pos[0]), esc(pos[1])), nil, nil)
	}
}

// IsUsage reports whether err is a command-line mistake.
func IsUsage(err error) bool {
	var ue *UsageError
	return errors.As(err, &ue)
}
