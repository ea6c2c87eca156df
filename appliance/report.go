package appliance

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// This file ships the path prober's interval aggregates to the controller
// (managed mode only), for its path history:
//
//	every ReportInterval: prober.aggregates ─▶ backlog ─▶ Client.ReportPaths (batches)
//
// The reporter runs in its own goroutine with its own context. It takes
// the aggregates (a short critical section of the tracker) and never waits
// on the network while holding anything the data path or the prober use.
// Points the controller did not take stay in a bounded backlog and are
// sent again later; the controller stores each point once, so a resend of
// points it did take (the answer was lost) counts nothing twice.
//
// Traffic class: reports travel to the controller's API over the
// underlay, outside the overlay, as control-plane traffic. Usage
// accounting must never count them as the tenant's traffic.

// Defaults of reporterOptions.
const (
	// ReportInterval is how often aggregates are taken and sent.
	ReportInterval = 10 * time.Second
	// ReportBacklog is how long unsent points are kept.
	ReportBacklog = 30 * time.Minute
	// reportBatch is the most points one request carries (well under
	// the controller's limit of 500).
	reportBatch = 200
	// reportMaxPoints bounds the backlog whatever the number of paths.
	reportMaxPoints = 50_000
	// reportTimeout bounds one request.
	reportTimeout = 10 * time.Second
)

// aggregateSource returns every path's aggregate since the previous call
// and starts a new interval.
type aggregateSource func(now time.Time) []pathAggregate

// reportSender sends one batch of points.
type reportSender func(ctx context.Context, pts []PathPoint) (ReportResult, error)

// reporterOptions configure newReporter. Source and Send must be set.
type reporterOptions struct {
	Source aggregateSource
	Send   reportSender
	// Interval is how often to report; 0 means ReportInterval.
	Interval time.Duration
	// Backlog is how long unsent points are kept; 0 means ReportBacklog.
	Backlog time.Duration
	// MaxPoints bounds the backlog; 0 means 50000.
	MaxPoints int
	// Batch is the most points per request; 0 means 200.
	Batch  int
	Logger *slog.Logger
}

// reporter sends path aggregates to the controller. Its methods other
// than start and close are called from its own goroutine only (and from
// tests, which do not start it).
type reporter struct {
	opts reporterOptions
	log  *slog.Logger

	backlog []PathPoint // oldest first
	failing bool        // the last send failed
	dropped uint64      // points given up (too old, too many, refused)

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

func newReporter(o reporterOptions) *reporter {
	if o.Interval <= 0 {
		o.Interval = ReportInterval
	}
	if o.Backlog <= 0 {
		o.Backlog = ReportBacklog
	}
	if o.MaxPoints <= 0 {
		o.MaxPoints = reportMaxPoints
	}
	if o.Batch <= 0 {
		o.Batch = reportBatch
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &reporter{opts: o, log: log.With("component", "path-report")}
}

// start runs the reporter until close.
func (r *reporter) start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		t := time.NewTicker(r.opts.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				r.tick(ctx, now)
			}
		}
	}()
}

// close stops the reporter and waits for its goroutine; a request in
// flight is cancelled. Unsent points are dropped. It is safe to call
// without start and more than once.
func (r *reporter) close() {
	r.once.Do(func() {
		if r.cancel != nil {
			r.cancel()
			<-r.done
		}
	})
}

// tick takes the aggregates of the interval ending at now, adds them to the
// backlog and sends what it can.
func (r *reporter) tick(ctx context.Context, now time.Time) {
	for _, a := range r.opts.Source(now) {
		if p, ok := pointOf(a); ok {
			r.backlog = append(r.backlog, p)
		}
	}
	r.trim(now)
	r.flush(ctx)
}

// pointOf turns an aggregate into a point; an interval in which nothing
// happened on the path is not worth sending.
func pointOf(a pathAggregate) (PathPoint, bool) {
	g := a.Agg
	if g.Sent+g.Received+g.Lost == 0 || !g.End.After(g.Start) {
		return PathPoint{}, false
	}
	return PathPoint{
		Peer: a.Peer, Uplink: a.Uplink, Remote: a.Remote.String(),
		Start: g.Start.UTC(), End: g.End.UTC(),
		Sent: g.Sent, Received: g.Received, Lost: g.Lost,
		RTTMinUS: g.RTTMin.Microseconds(), RTTMeanUS: g.RTTMean.Microseconds(), RTTP50US: g.RTTP50.Microseconds(),
		RTTP99US: g.RTTP99.Microseconds(), RTTMaxUS: g.RTTMax.Microseconds(), JitterUS: g.Jitter.Microseconds(),
	}, true
}

// trim drops the points older than the backlog allows and, beyond
// MaxPoints, the oldest.
func (r *reporter) trim(now time.Time) {
	cut := 0
	for cut < len(r.backlog) && now.Sub(r.backlog[cut].End) > r.opts.Backlog {
		cut++
	}
	cut = max(cut, len(r.backlog)-r.opts.MaxPoints)
	r.drop(cut)
}

// drop forgets the n oldest points.
func (r *reporter) drop(n int) {
	if n <= 0 {
		return
	}
	r.dropped += uint64(n)
	r.backlog = append(r.backlog[:0], r.backlog[n:]...)
}

// flush sends the backlog in batches, oldest first, until it is empty or a
// send fails; what failed stays for the next tick.
func (r *reporter) flush(ctx context.Context) {
	for len(r.backlog) > 0 && ctx.Err() == nil {
		n := min(len(r.backlog), r.opts.Batch)
		sctx, cancel := context.WithTimeout(ctx, reportTimeout)
		res, err := r.opts.Send(sctx, r.backlog[:n])
		cancel()
		if err != nil {
			var ae *APIError
			if errors.As(err, &ae) && ae.Permanent() && ae.Status != http.StatusUnauthorized {
				// The controller refuses these points for what they are;
				// sending them again cannot help.
				r.log.Error("controller refused path points; dropping them", "points", n, "err", err)
				r.drop(n)
				continue
			}
			if !r.failing && ctx.Err() == nil {
				r.log.Warn("sending path points failed; keeping them to send again", "err", err, "backlog", len(r.backlog))
			}
			r.failing = true
			return
		}
		if r.failing {
			r.log.Info("sending path points again", "backlog", len(r.backlog))
			r.failing = false
		}
		r.log.Debug("path points sent", "accepted", res.Accepted, "duplicate", res.Duplicate, "ignored", res.Ignored)
		r.backlog = append(r.backlog[:0], r.backlog[n:]...)
	}
}

// pathAggregates is the source of a running appliance: its prober's
// aggregates; none without uplinks (no prober).
func (a *Appliance) pathAggregates(now time.Time) []pathAggregate {
	if a == nil || a.paths == nil {
		return nil
	}
	return a.paths.aggregates(now)
}
