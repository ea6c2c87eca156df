package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The usage shipper sends the spool's oldest records to the controller
// (POST /api/v1/usage/report, device credential) and deletes what it
// acknowledges. It runs in its own goroutine: the meter only appends to
// the spool and pokes it. A failed request is retried with exponential
// backoff and jitter (backoff, as the sync loop uses); a batch the
// controller refuses (400, 413) is a bug on one side or the other: it is
// logged with the problem and counted, the records stay in the spool,
// and the batch is halved until the refused record is alone, which is
// then held back (retried after a minute, doubling to an hour) so that
// the records behind it flow.
//
// Traffic class: like the path reports, usage reports travel to the
// controller's API over the underlay, never through the overlay or the
// gateway, so they are never counted as the tenant's usage.

// Shipper limits.
const (
	// usageBatchRecords is the most records one request carries (the
	// controller's limit).
	usageBatchRecords = 500
	// usageBatchBytes bounds a request's records (a record alone may be
	// larger; it is sent alone).
	usageBatchBytes  = 1 << 20
	usageShipTimeout = 30 * time.Second
	// usageMaxBackoff caps the retry delay.
	usageMaxBackoff = time.Minute
	usageHoldMin    = time.Minute
	usageHoldMax    = time.Hour
)

// usageAnswer is the controller's answer to a usage report: every seq of
// the request it now stores, duplicates included.
type usageAnswer struct {
	Acked []uint64
}

func (a *usageAnswer) UnmarshalJSON(b []byte) error {
	var w struct {
		Acked *[]uint64 `json:"acked"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if w.Acked == nil {
		return errors.New(`no "acked" list`)
	}
	a.Acked = *w.Acked
	return nil
}

// ReportUsage sends usage records with the device credential and returns
// the seqs the controller acknowledged (it stores each seq once, so
// sending a record again is harmless).
func (c *Client) ReportUsage(ctx context.Context, recs []UsageRecord) ([]uint64, error) {
	var ans usageAnswer
	err := c.postDevice(ctx, "/api/v1/usage/report", map[string]any{"records": recs}, &ans)
	return ans.Acked, err
}

// usageSender sends one batch and returns the acknowledged seqs.
type usageSender func(ctx context.Context, recs []UsageRecord) ([]uint64, error)

// usageShipperOptions configure newUsageShipper. Spool and Send must be
// set; zero limits mean the defaults above.
type usageShipperOptions struct {
	Spool        *usageSpool
	Send         usageSender
	MaxBackoff   time.Duration
	BatchRecords int
	BatchBytes   int64
	HoldMin      time.Duration
	Logger       *slog.Logger
}

// usageShipper moves records from the spool to the controller. step runs
// in its goroutine only (or in tests, which do not run it).
type usageShipper struct {
	opts usageShipperOptions
	log  *slog.Logger
	wake chan struct{}

	limit    int   // records in the next batch (halved after a refusal)
	budget   int64 // bytes in the next batch
	suspect  int   // records from the head among which a refused one is
	failures int
	failing  bool

	mu   sync.Mutex
	held map[uint64]heldRecord // refused alone: not sent before until

	requests                atomic.Uint64
	acked, refused, errored atomic.Uint64 // records

	cancel context.CancelFunc
	done   chan struct{}
}

type heldRecord struct {
	until time.Time
	times int
}

func newUsageShipper(o usageShipperOptions) *usageShipper {
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = usageMaxBackoff
	}
	if o.BatchRecords <= 0 || o.BatchRecords > usageBatchRecords {
		o.BatchRecords = usageBatchRecords
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = usageBatchBytes
	}
	if o.HoldMin <= 0 {
		o.HoldMin = usageHoldMin
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &usageShipper{opts: o, log: log.With("component", "usage-ship"), wake: make(chan struct{}, 1),
		limit: o.BatchRecords, budget: o.BatchBytes, held: map[uint64]heldRecord{}}
}

// poke tells the shipper that a record was appended. It never blocks.
func (s *usageShipper) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run ships until close.
func (s *usageShipper) run() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	go func() {
		defer close(s.done)
		for ctx.Err() == nil {
			wait, idle := s.step(ctx)
			switch {
			case idle:
				var due <-chan time.Time
				var t *time.Timer
				if d, ok := s.nextHeldDue(time.Now()); ok {
					t = time.NewTimer(time.Until(d))
					due = t.C
				}
				select {
				case <-ctx.Done():
				case <-s.wake:
				case <-due:
				}
				if t != nil {
					t.Stop()
				}
			case wait > 0:
				// Not woken by new records: a failing controller is
				// retried on the backoff, not on every append.
				sleep(ctx, wait)
			}
		}
	}()
}

// close stops the shipper; a request in flight is cancelled (its records
// stay in the spool). Safe to call more than once and without run.
func (s *usageShipper) close() {
	if s.cancel != nil {
		s.cancel()
		<-s.done
		s.cancel = nil
	}
}

// step sends one batch. It returns how long to wait before the next
// step, or idle when there is nothing to send.
func (s *usageShipper) step(ctx context.Context) (wait time.Duration, idle bool) {
	now := time.Now()
	recs, err := s.opts.Spool.batch(s.limit, s.budget, func(seq uint64) bool { return s.isHeld(seq, now) })
	if err != nil {
		s.log.Error("reading the usage spool", "err", err)
		return s.fail(), false
	}
	if len(recs) == 0 {
		return 0, true
	}
	first, last := recs[0].Seq, recs[len(recs)-1].Seq
	sctx, cancel := context.WithTimeout(ctx, usageShipTimeout)
	acked, err := s.opts.Send(sctx, recs)
	cancel()
	s.requests.Add(1)
	if ctx.Err() != nil {
		return 0, false
	}
	if err != nil {
		var ae *APIError
		if errors.As(err, &ae) && (ae.Status == http.StatusBadRequest || ae.Status == http.StatusRequestEntityTooLarge) {
			s.refused.Add(uint64(len(recs)))
			s.log.Error("controller refused usage records; keeping them in the spool", "records", len(recs),
				"first_seq", first, "last_seq", last, "status", ae.Status, "problem", ae.Title, "detail", ae.Detail)
			// Bisect: the refused record is among these; send the first
			// half, then (if that went through) the second.
			if len(recs) > 1 {
				s.suspect, s.limit, s.budget = len(recs), len(recs)/2, max(s.budget/2, 1)
			} else {
				s.hold(first, now)
				s.suspect, s.limit, s.budget = 0, s.opts.BatchRecords, s.opts.BatchBytes
			}
			return s.fail(), false
		}
		s.errored.Add(uint64(len(recs)))
		if !s.failing {
			s.log.Warn("sending usage records failed; they stay in the spool", "err", err, "records", len(recs), "first_seq", first)
		}
		s.failing = true
		return s.fail(), false
	}
	n, aerr := s.opts.Spool.ack(acked)
	s.acked.Add(uint64(n))
	inBatch := 0
	sent := make(map[uint64]bool, len(recs))
	for _, r := range recs {
		sent[r.Seq] = true
	}
	s.mu.Lock()
	for _, q := range acked {
		delete(s.held, q)
		if sent[q] {
			inBatch++
			sent[q] = false // duplicates in the answer count once
		}
	}
	s.mu.Unlock()
	if aerr != nil {
		// Acknowledged but still on disk: sent again later, harmless.
		s.log.Error("deleting acknowledged usage records", "err", aerr)
		return s.fail(), false
	}
	if inBatch == 0 {
		s.log.Warn("controller acknowledged none of the usage records sent", "records", len(recs), "first_seq", first)
		return s.fail(), false
	}
	if s.failing {
		s.log.Info("sending usage records again", "after_failures", s.failures)
		s.failing = false
	}
	s.failures = 0
	if s.suspect -= len(recs); s.suspect <= 0 {
		s.suspect, s.limit, s.budget = 0, s.opts.BatchRecords, s.opts.BatchBytes
	}
	return 0, false
}

func (s *usageShipper) fail() time.Duration {
	s.failures++
	return backoff(s.failures, s.opts.MaxBackoff)
}

// hold keeps a refused record back for a while, longer each time.
func (s *usageShipper) hold(seq uint64, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.held[seq]
	d := min(s.opts.HoldMin<<min(h.times, 16), usageHoldMax)
	s.held[seq] = heldRecord{until: now.Add(d), times: h.times + 1}
}

func (s *usageShipper) isHeld(seq uint64, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.held[seq]
	return ok && now.Before(h.until)
}

// nextHeldDue is when the next held record may be sent again (after now).
func (s *usageShipper) nextHeldDue(now time.Time) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var due time.Time
	for _, h := range s.held {
		if h.until.After(now) && (due.IsZero() || h.until.Before(due)) {
			due = h.until
		}
	}
	return due, !due.IsZero()
}

// heldCount is the number of records held back now.
func (s *usageShipper) heldCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, now := 0, time.Now()
	for _, h := range s.held {
		if now.Before(h.until) {
			n++
		}
	}
	return n
}
