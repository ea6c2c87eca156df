package api

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
)

// pairReportRequest is the body of POST /api/v1/pair/report: one pair
// member's view of its pair. Times are RFC 3339; from and to are
// appliance names.
type pairReportRequest struct {
	Role         string          `json:"role"`
	Term         *int64          `json:"term"`
	Since        string          `json:"since"`
	PartnerAlive bool            `json:"partner_alive"`
	LastFailover json.RawMessage `json:"last_failover"`
}

type pairFailoverRequest struct {
	At     string `json:"at"`
	From   string `json:"from"`
	To     string `json:"to"`
	Reason string `json:"reason"`
}

// decodePairReport checks the shape of a report; state checks it against
// the site.
func decodePairReport(data []byte) (state.PairReportInput, error) {
	var req pairReportRequest
	if err := decodeJSON(data, &req); err != nil {
		return state.PairReportInput{}, err
	}
	var f fieldErrs
	in := state.PairReportInput{Role: store.PairRole(req.Role), PartnerAlive: req.PartnerAlive}
	if req.Role != string(store.PairActive) && req.Role != string(store.PairStandby) {
		f.add("role", "want active or standby, got %q", req.Role)
	}
	if req.Term == nil {
		f.add("term", "required: the term the member's role belongs to")
	} else {
		in.Term = *req.Term
	}
	in.Since = parseTime(&f, "since", req.Since)
	if len(req.LastFailover) > 0 && string(req.LastFailover) != "null" {
		var fo pairFailoverRequest
		if err := decodeJSONAt(req.LastFailover, &fo, "last_failover"); err != nil {
			return in, err
		}
		in.LastFailover = &state.PairFailoverInput{From: fo.From, To: fo.To, Reason: fo.Reason,
			At: parseTime(&f, "last_failover.at", fo.At)}
	}
	return in, f.err()
}

// reportPair is POST /api/v1/pair/report.
func (a *API) reportPair(c *call) (any, error) {
	in, err := decodeBody(a, c, decodePairReport)
	if err != nil {
		return nil, err
	}
	res, err := a.state.ReportPair(c.r.Context(), c.dev, in)
	if err != nil {
		return nil, err
	}
	return pairReportResultView{Active: res.Active, Term: res.Term}, nil
}

type pairReportResultView struct {
	// Active is the member the controller holds active ("" if none).
	Active string `json:"active"`
	Term   int64  `json:"term"`
}

// pairStatus is GET /api/v1/tenants/{tenant}/sites/{site}/pair.
func (a *API) pairStatus(c *call) (any, error) {
	v, err := a.state.PairStatus(c.r.Context(), c.p, c.path("tenant"), c.path("site"))
	if err != nil {
		return nil, err
	}
	return viewPair(v), nil
}

func (a *API) drainAppliance(c *call) (any, error) {
	ap, err := a.state.DrainAppliance(c.r.Context(), c.p, c.path("tenant"), c.path("appliance"))
	if err != nil {
		return nil, err
	}
	return viewAppliance(ap), nil
}

func (a *API) undrainAppliance(c *call) (any, error) {
	ap, err := a.state.UndrainAppliance(c.r.Context(), c.p, c.path("tenant"), c.path("appliance"))
	if err != nil {
		return nil, err
	}
	return viewAppliance(ap), nil
}

type pairStatusView struct {
	Site     string `json:"site"`
	SiteName string `json:"site_name"`
	// Paired: the site has two live appliances.
	Paired bool `json:"paired"`
	// Active, ActiveName, Since and Term are the active member the
	// controller derived from the reports; absent before any.
	Active       string           `json:"active,omitempty"`
	ActiveName   string           `json:"active_name,omitempty"`
	Since        *time.Time       `json:"since,omitempty"`
	Term         int64            `json:"term"`
	LastFailover *failoverView    `json:"last_failover,omitempty"`
	Members      []pairMemberView `json:"members"`
	Failovers    []failoverView   `json:"failovers"`
}

type pairMemberView struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Priority  int        `json:"priority"`
	Drained   bool       `json:"drained"`
	DrainedAt *time.Time `json:"drained_at,omitempty"`
	// Role is the member's role as the controller holds it: active,
	// standby, or unknown before any member reported active.
	Role       string          `json:"role"`
	Connected  bool            `json:"connected"`
	LastSeenAt *time.Time      `json:"last_seen_at,omitempty"`
	LastReport *pairReportView `json:"last_report,omitempty"`
}

type pairReportView struct {
	Role         string        `json:"role"`
	Term         int64         `json:"term"`
	Since        *time.Time    `json:"since"`
	PartnerAlive bool          `json:"partner_alive"`
	LastFailover *failoverView `json:"last_failover,omitempty"`
	ReportedAt   *time.Time    `json:"reported_at"`
}

type failoverView struct {
	At       *time.Time `json:"at"`
	From     string     `json:"from,omitempty"`
	FromName string     `json:"from_name,omitempty"`
	To       string     `json:"to"`
	ToName   string     `json:"to_name"`
	Reason   string     `json:"reason"`
	// Term is the term the failover started (in the history).
	Term int64 `json:"term,omitempty"`
}

func viewFailover(f *state.NamedFailover) *failoverView {
	return &failoverView{At: ts(f.At), From: f.From, FromName: f.FromName, To: f.To, ToName: f.ToName, Reason: f.Reason, Term: f.Term}
}

func viewPair(v *state.PairView) pairStatusView {
	out := pairStatusView{Site: v.Site.ID, SiteName: v.Site.Name, Paired: v.Paired, Members: []pairMemberView{}, Failovers: []failoverView{}}
	names := map[string]string{}
	for _, m := range v.Members {
		names[m.ID] = m.Name
	}
	if st := v.Status; st != nil {
		out.Active, out.ActiveName, out.Since, out.Term = st.ActiveID, v.ActiveName, ts(st.Since), st.Term
		if out.ActiveName == "" {
			out.Active = ""
		}
	}
	if v.LastFailover != nil {
		out.LastFailover = viewFailover(v.LastFailover)
	}
	for _, m := range v.Members {
		mv := pairMemberView{ID: m.ID, Name: m.Name, Priority: m.Priority, Drained: !m.DrainedAt.IsZero(), DrainedAt: ts(m.DrainedAt),
			Role: "unknown", Connected: m.Connected, LastSeenAt: ts(m.LastSeenAt)}
		switch {
		case out.Active == m.ID:
			mv.Role = "active"
		case out.Active != "":
			mv.Role = "standby"
		}
		if r := m.Report; r != nil {
			rv := &pairReportView{Role: string(r.Role), Term: r.Term, Since: ts(r.Since), PartnerAlive: r.PartnerAlive, ReportedAt: ts(r.ReportedAt)}
			if lf := r.LastFailover; !lf.At.IsZero() {
				rv.LastFailover = viewFailover(&state.NamedFailover{PairFailover: store.PairFailover{Failover: lf},
					FromName: names[lf.From], ToName: names[lf.To]})
			}
			mv.LastReport = rv
		}
		out.Members = append(out.Members, mv)
	}
	for _, f := range v.Failovers {
		out.Failovers = append(out.Failovers, *viewFailover(f))
	}
	return out
}

// Pair metrics, read from the state at scrape time.
var (
	descPairFailovers = prometheus.NewDesc("causeway_controller_pair_failovers_total",
		"Failovers (a change of a pair's active member) this replica recorded, by reason: the leading word of the reason the new active member gave (partner-down, drain, preempt, priority, manual), else other.",
		[]string{"reason"}, nil)
	descPairMembers = prometheus.NewDesc("causeway_controller_pair_members",
		"Live appliances of two-appliance sites by the role the controller holds (active, standby; unknown before a member reported active).",
		[]string{"role"}, nil)
)

type pairCollector struct{ st *state.State }

func (c *pairCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPairFailovers
	ch <- descPairMembers
}

func (c *pairCollector) Collect(ch chan<- prometheus.Metric) {
	for reason, n := range c.st.PairFailoverCounts() {
		ch <- prometheus.MustNewConstMetric(descPairFailovers, prometheus.CounterValue, float64(n), reason)
	}
	for role, n := range c.st.PairMemberCounts() {
		ch <- prometheus.MustNewConstMetric(descPairMembers, prometheus.GaugeValue, float64(n), role)
	}
}

// watchPairs adds the pair metrics of st to m (once: a second API on the
// same metrics adds nothing).
func (m *Metrics) watchPairs(st *state.State) {
	err := m.reg.Register(&pairCollector{st: st})
	var are prometheus.AlreadyRegisteredError
	if err != nil && !errors.As(err, &are) {
		panic(err)
	}
}
