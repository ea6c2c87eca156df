package api

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/causeway-net/causeway/controller/metering"
	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
)

// Usage report limits.
const (
	// MaxUsageBody bounds the body of POST /api/v1/usage/report.
	MaxUsageBody = 4 << 20
	// MaxUsageValue bounds one count of bytes or packets (2^50: an hour at
	// well over 100 Gbit/s).
	MaxUsageValue = 1 << 50
	// MaxUsageSkew is how far in the future a record may end (clock skew).
	MaxUsageSkew = 5 * time.Minute
	// maxUsageErrors bounds the field errors of one answer.
	maxUsageErrors = 50
)

// usageReportRequest is the body of POST /api/v1/usage/report.
type usageReportRequest struct {
	Records []usageRecordRequest `json:"records"`
}

type usageRecordRequest struct {
	Seq   *int64              `json:"seq"`
	Start string              `json:"start"`
	End   string              `json:"end"`
	Usage []usageCountRequest `json:"usage"`
}

type usageCountRequest struct {
	Meter     string `json:"meter"`
	PeerSite  string `json:"peer_site"`
	Direction string `json:"direction"`
	Bytes     *int64 `json:"bytes"`
	Packets   *int64 `json:"packets"`
}

var siteIDRE = regexp.MustCompile(`^st_[0-9a-z]{1,60}$`)

// decodeUsageReport checks a usage report completely (state only counts
// it): a report with any invalid record is refused whole, with a 400
// problem naming each field at fault (records[3].usage[0].direction).
func decodeUsageReport(data []byte, now time.Time) ([]state.UsageRecord, error) {
	var req usageReportRequest
	if err := decodeJSON(data, &req); err != nil {
		return nil, err
	}
	var f fieldErrs
	if len(req.Records) > state.MaxUsageRecords {
		f.add("records", "at most %d records per report, got %d", state.MaxUsageRecords, len(req.Records))
		return nil, usageProblem(f)
	}
	out := make([]state.UsageRecord, 0, len(req.Records))
	seqs := map[int64]int{}
	for i, r := range req.Records {
		field := func(name string) string { return fmt.Sprintf("records[%d].%s", i, name) }
		var rec state.UsageRecord
		switch {
		case r.Seq == nil:
			f.add(field("seq"), "required: the record's sequence number")
		case *r.Seq < 0:
			f.add(field("seq"), "want a whole number of at least 0, got %d", *r.Seq)
		default:
			rec.Seq = *r.Seq
			if j, dup := seqs[rec.Seq]; dup {
				f.add(field("seq"), "%d is also the seq of records[%d]", rec.Seq, j)
			}
			seqs[rec.Seq] = i
		}
		rec.Start = parseTime(&f, field("start"), r.Start)
		rec.End = parseTime(&f, field("end"), r.End)
		if !rec.Start.IsZero() && !rec.End.IsZero() {
			hourEnd := rec.Start.Truncate(store.UsageHour).Add(store.UsageHour)
			switch {
			case !rec.End.After(rec.Start):
				f.add(field("end"), "must be after start (%s), got %s", r.Start, r.End)
			case rec.End.After(hourEnd):
				f.add(field("end"), "a record ends by the end of the hour it starts in (%s), got %s", hourEnd.UTC().Format(time.RFC3339), r.End)
			case rec.End.After(now.Add(MaxUsageSkew)):
				f.add(field("end"), "%s is in the future", r.End)
			}
		}
		if len(r.Usage) > state.MaxUsageCounts {
			f.add(field("usage"), "at most %d counts per record, got %d", state.MaxUsageCounts, len(r.Usage))
			r.Usage = nil
		}
		seen := map[[3]string]int{}
		for j, u := range r.Usage {
			uf := func(name string) string { return fmt.Sprintf("records[%d].usage[%d].%s", i, j, name) }
			c := state.UsageCount{Meter: u.Meter, PeerSite: u.PeerSite, Direction: u.Direction}
			switch u.Meter {
			case store.MeterOverlay:
				if !siteIDRE.MatchString(u.PeerSite) {
					f.add(uf("peer_site"), "want the peer site's id (st_...), got %q", u.PeerSite)
				}
			case store.MeterGateway:
				if u.PeerSite != "" {
					f.add(uf("peer_site"), "the gateway meter has no peer site, got %q", u.PeerSite)
				}
			default:
				f.add(uf("meter"), "want overlay or gateway, got %q", u.Meter)
			}
			if u.Direction != store.DirectionTx && u.Direction != store.DirectionRx {
				f.add(uf("direction"), "want tx or rx, got %q", u.Direction)
			}
			k := [3]string{u.Meter, u.PeerSite, u.Direction}
			if o, dup := seen[k]; dup {
				f.add(fmt.Sprintf("records[%d].usage[%d]", i, j), "counts the same meter, peer site and direction as usage[%d]", o)
			}
			seen[k] = j
			for _, v := range []struct {
				name string
				p    *int64
				to   *int64
			}{{"bytes", u.Bytes, &c.Bytes}, {"packets", u.Packets, &c.Packets}} {
				switch {
				case v.p == nil:
					f.add(uf(v.name), "required")
				case *v.p < 0 || *v.p > MaxUsageValue:
					f.add(uf(v.name), "want 0 to %d, got %d", int64(MaxUsageValue), *v.p)
				default:
					*v.to = *v.p
				}
			}
			rec.Usage = append(rec.Usage, c)
		}
		out = append(out, rec)
		if len(f) > maxUsageErrors {
			break
		}
	}
	if len(f) > 0 {
		return nil, usageProblem(f)
	}
	return out, nil
}

// usageProblem is the 400 problem of an invalid usage report.
func usageProblem(f fieldErrs) *Problem {
	if len(f) > maxUsageErrors {
		f = f[:maxUsageErrors]
	}
	p := newProblem(codeBadRequest, "")
	p.Errors = f
	p.Detail = f.err().Error()
	return p
}

type usageAckView struct {
	Acked []int64 `json:"acked"`
}

// reportUsage is POST /api/v1/usage/report: an appliance's usage records.
func (a *API) reportUsage(c *call) (any, error) {
	data, err := readBody(c.r, MaxUsageBody)
	if err != nil {
		return nil, err
	}
	recs, err := decodeUsageReport(data, a.now())
	if err != nil {
		return nil, err
	}
	acked, err := a.state.ReportUsage(c.r.Context(), c.dev, recs)
	if err != nil {
		return nil, err
	}
	return usageAckView{Acked: acked}, nil
}

// decodeUsageQuery reads the query of GET /api/v1/usage.
func decodeUsageQuery(c *call, now time.Time) (state.UsageQuery, error) {
	q := c.r.URL.Query()
	var f fieldErrs
	in := state.UsageQuery{Tenant: q.Get("tenant"), Site: q.Get("site"), By: store.UsageHour, To: now}
	switch by := q.Get("by"); by {
	case "", "hour":
	case "day":
		in.By = 24 * time.Hour
	default:
		f.add("by", "want hour or day, got %q", by)
	}
	if s := q.Get("to"); s != "" {
		in.To = parseTime(&f, "to", s)
	}
	in.From = in.To.Add(-24 * time.Hour)
	if s := q.Get("from"); s != "" {
		in.From = parseTime(&f, "from", s)
	}
	return in, f.err()
}

type usageLineView struct {
	Tenant       string     `json:"tenant"`
	TenantName   string     `json:"tenant_name"`
	Site         string     `json:"site"`
	SiteName     string     `json:"site_name"`
	PeerSite     string     `json:"peer_site,omitempty"`
	PeerSiteName string     `json:"peer_site_name,omitempty"`
	Meter        string     `json:"meter"`
	Direction    string     `json:"direction"`
	Start        *time.Time `json:"start"`
	Bytes        int64      `json:"bytes"`
	Packets      int64      `json:"packets"`
}

type usageView struct {
	From  *time.Time      `json:"from"`
	To    *time.Time      `json:"to"`
	By    string          `json:"by"`
	Items []usageLineView `json:"items"`
}

// usage is GET /api/v1/usage.
func (a *API) usage(c *call) (any, error) {
	// The tenant first: a tenant the caller may not see is 404 whatever
	// the query says.
	if t := c.r.URL.Query().Get("tenant"); t != "" {
		if _, err := a.state.GetTenant(c.r.Context(), c.p, t); err != nil {
			return nil, err
		}
	}
	q, err := decodeUsageQuery(c, a.now())
	if err != nil {
		return nil, err
	}
	rep, err := a.state.Usage(c.r.Context(), c.p, q)
	if err != nil {
		return nil, err
	}
	v := usageView{From: ts(rep.From), To: ts(rep.To), By: "hour", Items: make([]usageLineView, len(rep.Lines))}
	if rep.By == 24*time.Hour {
		v.By = "day"
	}
	for i, l := range rep.Lines {
		v.Items[i] = usageLineView{Tenant: l.TenantID, TenantName: l.TenantName, Site: l.SiteID, SiteName: l.SiteName,
			PeerSite: l.PeerSiteID, PeerSiteName: l.PeerSiteName, Meter: l.Meter, Direction: l.Direction, Start: ts(l.Start),
			Bytes: l.Bytes, Packets: l.Packets}
	}
	return v, nil
}

// updateTenantRequest is the body of PATCH /api/v1/tenants/{tenant}.
type updateTenantRequest struct {
	BillingCustomer *string `json:"billing_customer"`
}

func decodeUpdateTenant(data []byte) (state.TenantUpdate, error) {
	var req updateTenantRequest
	if err := decodeJSON(data, &req); err != nil {
		return state.TenantUpdate{}, err
	}
	return state.TenantUpdate{BillingCustomer: req.BillingCustomer}, nil
}

// updateTenant is PATCH /api/v1/tenants/{tenant}.
func (a *API) updateTenant(c *call) (any, error) {
	up, err := decodeBody(a, c, decodeUpdateTenant)
	if err != nil {
		return nil, err
	}
	t, err := a.state.UpdateTenant(c.r.Context(), c.p, c.path("tenant"), up)
	if err != nil {
		return nil, err
	}
	return viewTenant(t), nil
}

type meteringStatusView struct {
	// Enabled says whether this replica exports (a metering URL is set).
	Enabled  bool   `json:"enabled"`
	Endpoint string `json:"endpoint,omitempty"`
	Replica  string `json:"replica,omitempty"`
	// The outbox, for all replicas.
	QueueLength      int64      `json:"queue_length"`
	OldestAgeSeconds float64    `json:"oldest_age_seconds"`
	OldestPendingAt  *time.Time `json:"oldest_pending_at,omitempty"`
	DeadLetters      int64      `json:"dead_letters"`
	// This replica's worker since it started.
	EventsPerSecond float64    `json:"events_per_second"`
	Sent            int64      `json:"sent"`
	Retried         int64      `json:"retried"`
	Throttled       int64      `json:"throttled"`
	DeadLettered    int64      `json:"dead_lettered"`
	LastError       string     `json:"last_error,omitempty"`
	LastErrorAt     *time.Time `json:"last_error_at,omitempty"`
	LastSuccessAt   *time.Time `json:"last_success_at,omitempty"`
	PausedUntil     *time.Time `json:"paused_until,omitempty"`
}

// meteringStatus is GET /api/v1/metering/status.
func (a *API) meteringStatus(c *call) (any, error) {
	q, err := a.state.ExportQueue(c.r.Context(), c.p)
	if err != nil {
		return nil, err
	}
	now := a.now()
	v := meteringStatusView{QueueLength: q.Pending, DeadLetters: q.Dead, OldestPendingAt: ts(q.OldestPending),
		OldestAgeSeconds: metering.OldestAge(q, now).Seconds()}
	if a.metering != nil {
		st := a.metering.Status()
		v.Enabled, v.Endpoint, v.Replica = true, st.Endpoint, st.Owner
		v.EventsPerSecond, v.Sent, v.Retried, v.Throttled, v.DeadLettered = st.EventsPerSecond, st.Sent, st.Retried, st.Throttled, st.Dead
		v.LastError, v.LastErrorAt, v.LastSuccessAt = st.LastError, ts(st.LastErrorAt), ts(st.LastSuccessAt)
		if st.PausedUntil.After(now) {
			v.PausedUntil = ts(st.PausedUntil)
		}
	}
	return v, nil
}

type deadLetterView struct {
	ID        string     `json:"id"`
	Tenant    string     `json:"tenant"`
	Site      string     `json:"site"`
	Appliance string     `json:"appliance"`
	Meter     string     `json:"meter"`
	MeterName string     `json:"meter_name"`
	Direction string     `json:"direction"`
	Hour      *time.Time `json:"hour"`
	Start     *time.Time `json:"start"`
	End       *time.Time `json:"end"`
	Bytes     int64      `json:"bytes"`
	Packets   int64      `json:"packets"`
	Records   int64      `json:"records"`
	Attempts  int        `json:"attempts"`
	Reason    string     `json:"reason"`
	CreatedAt *time.Time `json:"created_at"`
	DeadAt    *time.Time `json:"dead_at"`
}

func viewDeadLetter(e *store.OutboxEntry) deadLetterView {
	return deadLetterView{ID: e.EventID, Tenant: e.TenantID, Site: e.SiteID, Appliance: e.ApplianceID, Meter: e.Meter,
		MeterName: e.MeterName, Direction: e.Direction, Hour: ts(e.Hour), Start: ts(e.Start), End: ts(e.End),
		Bytes: e.Bytes, Packets: e.Packets, Records: e.Records, Attempts: e.Attempts, Reason: e.LastError,
		CreatedAt: ts(e.CreatedAt), DeadAt: ts(e.DeadAt)}
}

// deadLetters is GET /api/v1/metering/dead-letters?limit=N.
func (a *API) deadLetters(c *call) (any, error) {
	limit := 100
	if s := c.r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			var f fieldErrs
			f.add("limit", "want 1 to 1000, got %q", s)
			return nil, f.err()
		}
		limit = n
	}
	es, err := a.state.DeadLetters(c.r.Context(), c.p, limit)
	if err != nil {
		return nil, err
	}
	return listOf(es, viewDeadLetter), nil
}

// retryRequest is the body of POST /api/v1/metering/dead-letters/retry.
type retryRequest struct {
	IDs []string `json:"ids"`
	All bool     `json:"all"`
}

func decodeRetry(data []byte) ([]string, error) {
	var req retryRequest
	if err := decodeJSON(data, &req); err != nil {
		return nil, err
	}
	var f fieldErrs
	switch {
	case req.All && len(req.IDs) > 0:
		f.add("ids", "give ids or all, not both")
	case req.All:
		return nil, nil
	case len(req.IDs) == 0:
		f.add("ids", `required: the dead letters to retry, or "all": true`)
	case len(req.IDs) > 1000:
		f.add("ids", "at most 1000 ids, got %d", len(req.IDs))
	}
	for i, id := range req.IDs {
		if id == "" || len(id) > 64 || strings.ContainsFunc(id, func(r rune) bool { return r < '!' || r > '~' }) {
			f.add(fmt.Sprintf("ids[%d]", i), "want an event id, got %q", id)
		}
	}
	if err := f.err(); err != nil {
		return nil, err
	}
	return req.IDs, nil
}

// retryDeadLetters is POST /api/v1/metering/dead-letters/retry.
func (a *API) retryDeadLetters(c *call) (any, error) {
	if !c.p.IsOperator() {
		return nil, &state.Error{Code: state.CodeForbidden, Msg: "this needs an operator token"}
	}
	ids, err := decodeBody(a, c, decodeRetry)
	if err != nil {
		return nil, err
	}
	n, err := a.state.RetryDeadLetters(c.r.Context(), c.p, ids)
	if err != nil {
		return nil, err
	}
	return map[string]int64{"retried": n}, nil
}
