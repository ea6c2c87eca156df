package state

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/causeway-net/causeway/controller/store"
)

// Path history retention and limits.
const (
	// PointRetention is how long 10 s points are kept.
	PointRetention = 48 * time.Hour
	// RollupRetention is how long 1-minute rollups are kept.
	RollupRetention = 30 * 24 * time.Hour
	// RollupLookback is how far back each maintenance pass recomputes
	// rollups, so that points an appliance resends from its backlog (up to
	// 30 minutes old) still count in their minute.
	RollupLookback = 35 * time.Minute
	// MaxPathReports bounds the points of one report.
	MaxPathReports = 500
	// MaxReportSkew is how far in the future a point may end (clock skew).
	MaxReportSkew = 5 * time.Minute
	// PointStep is the interval appliances report at.
	PointStep = 10 * time.Second
	// autoRollupAfter is the range beyond which a query without a step
	// gets rollups.
	autoRollupAfter = 6 * time.Hour
)

// PathReport is one interval aggregate of one path, as an appliance
// reports it: from a local uplink to an endpoint of a peer appliance.
type PathReport struct {
	Peer   string // the peer appliance's name
	Uplink string
	Remote netip.AddrPort

	Start, End time.Time

	Sent, Received, Lost int64

	RTTMin, RTTMean, RTTP50, RTTP99, RTTMax time.Duration
	Jitter                                  time.Duration
}

// ReportResult says what became of a report's points.
type ReportResult struct {
	Accepted  int64 // stored
	Duplicate int64 // stored before (a resend)
	Ignored   int64 // of an unknown peer, or older than PointRetention
}

// ReportPaths stores what a device measured on its paths. Points of peers
// the tenant does not have (any more) and points past retention are
// ignored rather than refused, since sending them again cannot help; a
// point already stored (same path and start) is counted as a duplicate.
func (s *State) ReportPaths(ctx context.Context, d *Device, reports []PathReport) (ReportResult, error) {
	var res ReportResult
	now := s.now()
	var f fields
	if len(reports) > MaxPathReports {
		f.add("points", "at most %d points per report, got %d", MaxPathReports, len(reports))
	}
	for i, r := range reports {
		if r.End.After(now.Add(MaxReportSkew)) {
			f.add(fmt.Sprintf("points[%d].end", i), "%s is in the future", r.End.UTC().Format(time.RFC3339))
		}
	}
	if err := f.err(); err != nil {
		return res, err
	}
	s.mu.Lock()
	tv := s.tenants[d.TenantID]
	var self *store.Appliance
	peers := map[string]*store.Appliance{}
	if tv != nil {
		self = tv.apps[d.ApplianceID]
		for _, a := range tv.apps {
			peers[a.Name] = a
		}
	}
	s.mu.Unlock()
	if self == nil {
		return res, errorf(CodeUnauthenticated, "appliance %s is not active", d.ApplianceID)
	}
	pts := make([]*store.PathPoint, 0, len(reports))
	for _, r := range reports {
		peer := peers[r.Peer]
		if peer == nil || peer.ID == self.ID || now.Sub(r.Start) > PointRetention {
			res.Ignored++
			continue
		}
		pts = append(pts, &store.PathPoint{
			PathKey:  store.PathKey{ApplianceID: self.ID, PeerApplianceID: peer.ID, Uplink: r.Uplink, Remote: r.Remote.String()},
			TenantID: d.TenantID, SiteID: self.SiteID, PeerSiteID: peer.SiteID,
			Start: r.Start, End: r.End, Points: 1,
			Sent: r.Sent, Received: r.Received, Lost: r.Lost,
			RTTMin: r.RTTMin, RTTMean: r.RTTMean, RTTP50: r.RTTP50, RTTP99: r.RTTP99, RTTMax: r.RTTMax, Jitter: r.Jitter,
		})
	}
	if len(pts) == 0 {
		return res, nil
	}
	added, err := store.WritePaths(ctx, s.store, func(tx *store.Tx) (int64, error) { return tx.InsertPathPoints(ctx, pts) })
	if err != nil {
		return res, storeErr(err)
	}
	res.Accepted, res.Duplicate = added, int64(len(pts))-added
	return res, nil
}

// MaintainPaths makes one pass of path history upkeep: it rolls up the
// finished minutes of the last RollupLookback and deletes points older
// than PointRetention and rollups older than RollupRetention. It is
// idempotent, so replicas may all run it.
func (s *State) MaintainPaths(ctx context.Context) error {
	now := s.now()
	end := now.Truncate(store.RollupStep)
	_, err := store.Write(ctx, s.store, func(tx *store.Tx) (struct{}, error) {
		if _, err := tx.RollupPaths(ctx, end.Add(-RollupLookback), end); err != nil {
			return struct{}{}, fmt.Errorf("rolling up path points: %w", err)
		}
		if _, _, err := tx.PrunePaths(ctx, now.Add(-PointRetention), now.Add(-RollupRetention)); err != nil {
			return struct{}{}, fmt.Errorf("pruning path history: %w", err)
		}
		return struct{}{}, nil
	})
	return err
}

// RunPathMaintenance calls MaintainPaths every interval (a minute if 0)
// until ctx ends. Failures are logged and tried again at the next tick.
func (s *State) RunPathMaintenance(ctx context.Context, interval time.Duration) {
	s.runEvery(ctx, cmp.Or(interval, time.Minute), "path history upkeep", s.MaintainPaths)
}

// runEvery calls fn at once and then every interval until ctx ends,
// logging failures (what names the job). A negative interval means a
// minute.
func (s *State) runEvery(ctx context.Context, interval time.Duration, what string, fn func(context.Context) error) {
	if interval <= 0 {
		interval = time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := fn(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn(what+" failed; retrying at the next tick", "err", err)
		}
		if err := s.MaintainPairs(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("pair history upkeep failed; retrying at the next tick", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// PathQuery asks for the path history from the appliances of one site to
// those of another.
type PathQuery struct {
	From, To string        // site ids or names
	Since    time.Duration // how far back from now
	// Step is PointStep (points) or store.RollupStep (rollups); 0 picks
	// points for ranges up to 6 h, rollups beyond.
	Step time.Duration
}

// PathSummary sums up a series. LossPercent is lost among settled
// (received + lost) probes; RTTP50 and RTTP99 approximate the range's
// percentiles by the reply-weighted percentiles of the series' p50 and
// p99; Jitter is the reply-weighted mean of the series' jitter.
type PathSummary struct {
	Samples              int // points (or rollups) in the series
	Sent, Received, Lost int64
	LossPercent          float64
	RTTMin, RTTMean      time.Duration
	RTTP50, RTTP99       time.Duration
	RTTMax, Jitter       time.Duration
}

// PathSeries is the history of one path.
type PathSeries struct {
	Appliance, Peer string // names
	Uplink, Remote  string
	Summary         PathSummary
	Points          []*store.PathPoint
}

// PathHistory is the answer to a PathQuery.
type PathHistory struct {
	From, To   *store.Site
	Start, End time.Time
	Step       time.Duration
	Paths      []*PathSeries // by appliance, peer, uplink, remote
}

// PathHistory returns the history of every path from the appliances of
// q.From to those of q.To.
func (s *State) PathHistory(ctx context.Context, p *Principal, tenantRef string, q PathQuery) (*PathHistory, error) {
	return store.Read(ctx, s.store, func(tx *store.Tx) (*PathHistory, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return nil, err
		}
		var f fields
		from, to := pathSite(ctx, tx, &f, t.ID, "from", q.From), pathSite(ctx, tx, &f, t.ID, "to", q.To)
		switch {
		case q.Since <= 0:
			f.add("since", "want a positive duration such as 24h, got %s", q.Since)
		case q.Since > RollupRetention:
			f.add("since", "history is kept for %s, got %s", RollupRetention, q.Since)
		}
		step := q.Step
		switch {
		case step == 0 && q.Since > autoRollupAfter:
			step = store.RollupStep
		case step == 0:
			step = PointStep
		case step != PointStep && step != store.RollupStep:
			f.add("step", "want 10s or 1m, got %s", q.Step)
		case step == PointStep && q.Since > PointRetention:
			f.add("step", "10s points are kept for %s; use 1m for since %s", PointRetention, q.Since)
		}
		if err := f.err(); err != nil {
			return nil, err
		}
		end := s.now()
		h := &PathHistory{From: from, To: to, Start: end.Add(-q.Since), End: end, Step: step}
		list := tx.ListPathPoints
		if step == store.RollupStep {
			list = tx.ListPathRollups
		}
		pts, err := list(ctx, t.ID, from.ID, to.ID, h.Start, end)
		if err != nil {
			return nil, err
		}
		apps, err := tx.ListAppliances(ctx, t.ID)
		if err != nil {
			return nil, err
		}
		names := make(map[string]string, len(apps))
		for _, a := range apps {
			names[a.ID] = a.Name
		}
		var cur *PathSeries
		var key store.PathKey
		for _, pt := range pts {
			if cur == nil || pt.PathKey != key {
				key = pt.PathKey
				cur = &PathSeries{Appliance: names[key.ApplianceID], Peer: names[key.PeerApplianceID], Uplink: key.Uplink, Remote: key.Remote}
				h.Paths = append(h.Paths, cur)
			}
			cur.Points = append(cur.Points, pt)
		}
		for _, ps := range h.Paths {
			ps.Summary = summarize(ps.Points)
		}
		slices.SortStableFunc(h.Paths, func(a, b *PathSeries) int {
			return cmp.Or(cmp.Compare(a.Appliance, b.Appliance), cmp.Compare(a.Peer, b.Peer),
				cmp.Compare(a.Uplink, b.Uplink), cmp.Compare(a.Remote, b.Remote))
		})
		return h, nil
	})
}

// pathSite resolves a site of a path query, naming the field if it fails.
func pathSite(ctx context.Context, tx *store.Tx, f *fields, tenantID, field, ref string) *store.Site {
	if ref == "" {
		f.add(field, "required: a site id or name")
		return nil
	}
	site, err := siteFor(ctx, tx, tenantID, ref)
	if err != nil {
		f.add(field, "no site %q", ref)
		return nil
	}
	return site
}

// summarize sums up a series; see PathSummary.
func summarize(pts []*store.PathPoint) PathSummary {
	var sum PathSummary
	sum.Samples = len(pts)
	var meanW, jitW int64 // reply-weighted sums, in microseconds
	for _, p := range pts {
		sum.Sent += p.Sent
		sum.Received += p.Received
		sum.Lost += p.Lost
		if p.Received == 0 {
			continue
		}
		if sum.RTTMin == 0 || p.RTTMin < sum.RTTMin {
			sum.RTTMin = p.RTTMin
		}
		sum.RTTMax = max(sum.RTTMax, p.RTTMax)
		meanW += p.RTTMean.Microseconds() * p.Received
		jitW += p.Jitter.Microseconds() * p.Received
	}
	if settled := sum.Received + sum.Lost; settled > 0 {
		sum.LossPercent = 100 * float64(sum.Lost) / float64(settled)
	}
	if sum.Received > 0 {
		sum.RTTMean = time.Duration(meanW/sum.Received) * time.Microsecond
		sum.Jitter = time.Duration(jitW/sum.Received) * time.Microsecond
		sum.RTTP50 = weightedPercentile(pts, 50, func(p *store.PathPoint) time.Duration { return p.RTTP50 })
		sum.RTTP99 = weightedPercentile(pts, 99, func(p *store.PathPoint) time.Duration { return p.RTTP99 })
	}
	return sum
}

// weightedPercentile is the nearest-rank q-th percentile of v over the
// points with replies, each weighted by its replies.
func weightedPercentile(pts []*store.PathPoint, q float64, v func(*store.PathPoint) time.Duration) time.Duration {
	type wv struct {
		v time.Duration
		w int64
	}
	var vals []wv
	var total int64
	for _, p := range pts {
		if p.Received > 0 {
			vals = append(vals, wv{v(p), p.Received})
			total += p.Received
		}
	}
	if total == 0 {
		return 0
	}
	slices.SortFunc(vals, func(a, b wv) int { return cmp.Compare(a.v, b.v) })
	rank := int64(q / 100 * float64(total))
	if float64(rank) < q/100*float64(total) {
		rank++
	}
	var acc int64
	for _, x := range vals {
		acc += x.w
		if acc >= rank {
			return x.v
		}
	}
	return vals[len(vals)-1].v
}
