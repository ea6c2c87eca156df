package api

import (
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/causeway-net/causeway/controller/state"
	"github.com/causeway-net/causeway/controller/store"
)

// MaxReportBody bounds the body of POST /api/v1/paths/report (a batch of
// up to state.MaxPathReports points).
const MaxReportBody = 1 << 20

// pathReportRequest is the body of POST /api/v1/paths/report.
type pathReportRequest struct {
	Points []pathPointRequest `json:"points"`
}

// pathPointRequest is one interval of one path. Times are RFC 3339;
// figures are counts and microseconds.
type pathPointRequest struct {
	Peer      string `json:"peer"`
	Uplink    string `json:"uplink"`
	Remote    string `json:"remote"`
	Start     string `json:"start"`
	End       string `json:"end"`
	Sent      int64  `json:"sent"`
	Received  int64  `json:"received"`
	Lost      int64  `json:"lost"`
	RTTMinUS  int64  `json:"rtt_min_us"`
	RTTMeanUS int64  `json:"rtt_mean_us"`
	RTTP50US  int64  `json:"rtt_p50_us"`
	RTTP99US  int64  `json:"rtt_p99_us"`
	RTTMaxUS  int64  `json:"rtt_max_us"`
	JitterUS  int64  `json:"jitter_us"`
}

// maxRTTMicros bounds every RTT figure of a report (an hour).
const maxRTTMicros = int64(time.Hour / time.Microsecond)

// decodePathReport checks the shape of a report; state checks it against
// the tenant.
func decodePathReport(data []byte) ([]state.PathReport, error) {
	var req pathReportRequest
	if err := decodeJSON(data, &req); err != nil {
		return nil, err
	}
	var f fieldErrs
	if len(req.Points) > state.MaxPathReports {
		f.add("points", "at most %d points per report, got %d", state.MaxPathReports, len(req.Points))
		return nil, f.err()
	}
	out := make([]state.PathReport, 0, len(req.Points))
	for i, p := range req.Points {
		field := func(name string) string { return fmt.Sprintf("points[%d].%s", i, name) }
		r := state.PathReport{Peer: p.Peer, Uplink: p.Uplink, Sent: p.Sent, Received: p.Received, Lost: p.Lost}
		if p.Peer == "" {
			f.add(field("peer"), "required: the peer appliance's name")
		}
		if p.Uplink == "" || len(p.Uplink) > 64 {
			f.add(field("uplink"), "want the uplink's name, 1 to 64 bytes, got %q", p.Uplink)
		}
		var err error
		if r.Remote, err = netip.ParseAddrPort(p.Remote); err != nil {
			f.add(field("remote"), "want IP:port, got %q", p.Remote)
		}
		r.Start = parseTime(&f, field("start"), p.Start)
		r.End = parseTime(&f, field("end"), p.End)
		if !r.Start.IsZero() && !r.End.IsZero() && !r.End.After(r.Start) {
			f.add(field("end"), "must be after start (%s), got %s", p.Start, p.End)
		}
		for _, c := range []struct {
			name string
			v    int64
		}{{"sent", p.Sent}, {"received", p.Received}, {"lost", p.Lost}} {
			if c.v < 0 || c.v > math.MaxInt32 {
				f.add(field(c.name), "want a count from 0 to %d, got %d", math.MaxInt32, c.v)
			}
		}
		rtts := []struct {
			name string
			v    int64
			d    *time.Duration
		}{{"rtt_min_us", p.RTTMinUS, &r.RTTMin}, {"rtt_mean_us", p.RTTMeanUS, &r.RTTMean}, {"rtt_p50_us", p.RTTP50US, &r.RTTP50},
			{"rtt_p99_us", p.RTTP99US, &r.RTTP99}, {"rtt_max_us", p.RTTMaxUS, &r.RTTMax}, {"jitter_us", p.JitterUS, &r.Jitter}}
		for _, c := range rtts {
			if c.v < 0 || c.v > maxRTTMicros {
				f.add(field(c.name), "want microseconds from 0 to %d, got %d", maxRTTMicros, c.v)
				continue
			}
			*c.d = time.Duration(c.v) * time.Microsecond
		}
		out = append(out, r)
	}
	return out, f.err()
}

func parseTime(f *fieldErrs, field, s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil || t.IsZero() {
		f.add(field, "want an RFC 3339 time, got %q", s)
		return time.Time{}
	}
	return t
}

// reportPaths is POST /api/v1/paths/report: an appliance's path
// aggregates.
func (a *API) reportPaths(c *call) (any, error) {
	data, err := readBody(c.r, MaxReportBody)
	if err != nil {
		return nil, err
	}
	reports, err := decodePathReport(data)
	if err != nil {
		return nil, err
	}
	res, err := a.state.ReportPaths(c.r.Context(), c.dev, reports)
	if err != nil {
		return nil, err
	}
	return reportResultView{Accepted: res.Accepted, Duplicate: res.Duplicate, Ignored: res.Ignored}, nil
}

type reportResultView struct {
	Accepted  int64 `json:"accepted"`
	Duplicate int64 `json:"duplicate"`
	Ignored   int64 `json:"ignored"`
}

// decodePathQuery reads the query of GET …/paths; state checks the values
// against the tenant and the retention.
func decodePathQuery(c *call) (state.PathQuery, error) {
	q := c.r.URL.Query()
	var f fieldErrs
	in := state.PathQuery{From: q.Get("from"), To: q.Get("to")}
	if in.From == "" {
		f.add("from", "required: the site the paths start at")
	}
	if in.To == "" {
		f.add("to", "required: the site the paths lead to")
	}
	in.Since = 24 * time.Hour
	if s := q.Get("since"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			f.add("since", "want a positive duration such as 24h, got %q", s)
		}
		in.Since = d
	}
	switch s := q.Get("step"); s {
	case "":
	case "10s":
		in.Step = state.PointStep
	case "1m":
		in.Step = store.RollupStep
	default:
		f.add("step", "want 10s or 1m, got %q", s)
	}
	return in, f.err()
}

// pathHistory is GET /api/v1/tenants/{tenant}/paths.
func (a *API) pathHistory(c *call) (any, error) {
	// The tenant first: a tenant the caller may not see is 404 whatever
	// the query says.
	if _, err := a.state.GetTenant(c.r.Context(), c.p, c.path("tenant")); err != nil {
		return nil, err
	}
	q, err := decodePathQuery(c)
	if err != nil {
		return nil, err
	}
	h, err := a.state.PathHistory(c.r.Context(), c.p, c.path("tenant"), q)
	if err != nil {
		return nil, err
	}
	return viewPathHistory(h), nil
}

type pathHistoryView struct {
	From     string           `json:"from"`
	FromName string           `json:"from_name"`
	To       string           `json:"to"`
	ToName   string           `json:"to_name"`
	Start    *time.Time       `json:"start"`
	End      *time.Time       `json:"end"`
	Step     string           `json:"step"`
	Paths    []pathSeriesView `json:"paths"`
}

type pathSeriesView struct {
	Appliance string          `json:"appliance"`
	Peer      string          `json:"peer"`
	Uplink    string          `json:"uplink"`
	Remote    string          `json:"remote"`
	Summary   pathSummaryView `json:"summary"`
	Series    []pathPointView `json:"series"`
}

type pathSummaryView struct {
	Samples int `json:"samples"`
	pathFigures
}

type pathPointView struct {
	Start *time.Time `json:"start"`
	End   *time.Time `json:"end"`
	pathFigures
}

// pathFigures are what a summary and a point both report; embedded, they
// encode inline.
type pathFigures struct {
	Sent        int64   `json:"sent"`
	Received    int64   `json:"received"`
	Lost        int64   `json:"lost"`
	LossPercent float64 `json:"loss_percent"`
	RTTMinMS    float64 `json:"rtt_min_ms"`
	RTTMeanMS   float64 `json:"rtt_mean_ms"`
	RTTP50MS    float64 `json:"rtt_p50_ms"`
	RTTP99MS    float64 `json:"rtt_p99_ms"`
	RTTMaxMS    float64 `json:"rtt_max_ms"`
	JitterMS    float64 `json:"jitter_ms"`
}

func figures(sent, received, lost int64, loss float64, rttMin, rttMean, rttP50, rttP99, rttMax, jitter time.Duration) pathFigures {
	return pathFigures{Sent: sent, Received: received, Lost: lost, LossPercent: loss,
		RTTMinMS: ms(rttMin), RTTMeanMS: ms(rttMean), RTTP50MS: ms(rttP50), RTTP99MS: ms(rttP99),
		RTTMaxMS: ms(rttMax), JitterMS: ms(jitter)}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func lossPercent(received, lost int64) float64 {
	if received+lost == 0 {
		return 0
	}
	return 100 * float64(lost) / float64(received+lost)
}

func viewPathHistory(h *state.PathHistory) pathHistoryView {
	v := pathHistoryView{From: h.From.ID, FromName: h.From.Name, To: h.To.ID, ToName: h.To.Name,
		Start: ts(h.Start), End: ts(h.End), Step: fmtStep(h.Step), Paths: []pathSeriesView{}}
	for _, ps := range h.Paths {
		s := ps.Summary
		sv := pathSeriesView{Appliance: ps.Appliance, Peer: ps.Peer, Uplink: ps.Uplink, Remote: ps.Remote,
			Summary: pathSummaryView{Samples: s.Samples, pathFigures: figures(s.Sent, s.Received, s.Lost, s.LossPercent,
				s.RTTMin, s.RTTMean, s.RTTP50, s.RTTP99, s.RTTMax, s.Jitter)},
			Series: make([]pathPointView, len(ps.Points))}
		for i, p := range ps.Points {
			sv.Series[i] = pathPointView{Start: ts(p.Start), End: ts(p.End), pathFigures: figures(p.Sent, p.Received, p.Lost,
				lossPercent(p.Received, p.Lost), p.RTTMin, p.RTTMean, p.RTTP50, p.RTTP99, p.RTTMax, p.Jitter)}
		}
		v.Paths = append(v.Paths, sv)
	}
	return v
}

// fmtStep prints a step the way the query takes it.
func fmtStep(d time.Duration) string {
	if d == store.RollupStep {
		return "1m"
	}
	return "10s"
}
