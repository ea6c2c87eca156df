// Package state is the controller's business layer: it owns the store and
// the in-memory netmaps, enforces the rules (names, prefix overlap, address
// allocation, token life cycles, tenant isolation) and compiles and
// publishes a netmap per appliance.
//
// Every write that can change what an appliance sees appends to the
// store's change feed in the same transaction. One goroutine per State, the
// follower, reads the feed (woken at once by local writes, and polling
// every PollInterval for writes made by other replicas), reloads the tenants
// it names and recompiles only the netmaps whose content changed. All
// replicas on one database therefore converge on the same netmaps, and a
// netmap's version is the id of the change that last altered it.
package state

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/push"
	"github.com/causeway-net/causeway/controller/store"
)

// Options configures New. Store is required; the rest may be left zero.
type Options struct {
	Store *store.Store
	// Logger receives the state's logs; nil discards them.
	Logger *slog.Logger
	// PollInterval is how often the follower polls the change feed for
	// writes made by other replicas. 0 means 100ms.
	PollInterval time.Duration
	// ChangeRetention is how long change-feed rows are kept. 0 means an
	// hour. A replica cut off for longer reloads everything.
	ChangeRetention time.Duration
	// OnPush, if set, is called once per tenant change applied, with the
	// time from the change's commit to its netmaps being published here.
	OnPush func(lag time.Duration)
	// ProbeKeyGrace is how long a new probe key spreads as "next" before
	// a rotation may make it current (see RotateProbeKey). 0 means
	// DefaultProbeKeyGrace; negative means no wait (tests).
	ProbeKeyGrace time.Duration
	// ExportMeters names the meters whose usage is exported to the
	// metering API, by MeterKey ("overlay.tx" -> "causeway.overlay.tx.bytes").
	// Usage of other meters is kept in the ledger only; nil exports
	// nothing (no outbox entries are written).
	ExportMeters map[string]string
	// UsageDedupRetention is how long counted usage records are
	// remembered; 0 means DefaultUsageDedupRetention.
	UsageDedupRetention time.Duration
	// TestOnlyNow replaces time.Now.
	TestOnlyNow func() time.Time
}

// State is safe for concurrent use.
type State struct {
	store *store.Store
	log   *slog.Logger
	hub   *push.Hub
	opts  Options
	now   func() time.Time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{}

	mu sync.Mutex
	// tenants holds the compiled view of every tenant, by id.
	tenants map[string]*tenantView
	// devices maps a device credential hash to its live appliance.
	devices map[string]deviceRef
	// applied is the id of the newest change applied to the views;
	// appliedCh is closed (and replaced) whenever it advances.
	applied   int64
	appliedCh chan struct{}
	// lastPoll is when the follower last read the feed successfully.
	lastPoll time.Time
	// seen is when each appliance was last recorded as heard from.
	seen map[string]time.Time
	// failovers counts the pair failovers recorded here, by label.
	failovers map[string]uint64
}

type deviceRef struct{ tenantID, applianceID string }

// New loads every tenant, compiles its netmaps and starts the follower.
func New(ctx context.Context, opts Options) (*State, error) {
	if opts.Store == nil {
		return nil, errors.New("state: Options.Store is required")
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 100 * time.Millisecond
	}
	if opts.ChangeRetention <= 0 {
		opts.ChangeRetention = time.Hour
	}
	if opts.UsageDedupRetention <= 0 {
		opts.UsageDedupRetention = DefaultUsageDedupRetention
	}
	switch {
	case opts.ProbeKeyGrace == 0:
		opts.ProbeKeyGrace = DefaultProbeKeyGrace
	case opts.ProbeKeyGrace < 0:
		opts.ProbeKeyGrace = 0
	}
	s := &State{
		store:     opts.Store,
		log:       opts.Logger,
		hub:       push.New(),
		opts:      opts,
		now:       opts.TestOnlyNow,
		kick:      make(chan struct{}, 1),
		appliedCh: make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.now == nil {
		s.now = time.Now
	}
	if err := s.ensureProbeKeys(ctx); err != nil {
		return nil, fmt.Errorf("state: probe keys: %w", err)
	}
	if err := s.reloadAll(ctx); err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.follow()
	return s, nil
}

// Close stops the follower and wakes every waiting sync request (they see
// push.ErrClosed). It does not close the store.
func (s *State) Close() error {
	s.cancel()
	s.wg.Wait()
	s.hub.Close()
	return nil
}

// Hub is where netmaps are published; the API's sync handler waits on it.
func (s *State) Hub() *push.Hub { return s.hub }

// Ping checks the store; /readyz uses it.
func (s *State) Ping(ctx context.Context) error { return s.store.Ping(ctx) }

// snapshot is one tenant as read from the store; nil tenant means deleted.
type snapshot struct {
	tenant    *store.Tenant
	sites     []*store.Site
	apps      []*store.Appliance
	overrides []*store.SLAOverride
	keys      []*store.ProbeKey
	pairs     []*store.PairStatus
}

func loadTenant(ctx context.Context, tx *store.Tx, id string) (*snapshot, error) {
	t, err := tx.TenantByID(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return &snapshot{}, nil
	}
	if err != nil {
		return nil, err
	}
	sites, err := tx.ListSites(ctx, id)
	if err != nil {
		return nil, err
	}
	apps, err := tx.ListAppliances(ctx, id)
	if err != nil {
		return nil, err
	}
	overrides, err := tx.ListSLAOverrides(ctx, id)
	if err != nil {
		return nil, err
	}
	keys, err := tx.ListProbeKeys(ctx, id)
	if err != nil {
		return nil, err
	}
	pairs, err := tx.ListPairStatus(ctx, id)
	if err != nil {
		return nil, err
	}
	return &snapshot{tenant: t, sites: sites, apps: apps, overrides: overrides, keys: keys, pairs: pairs}, nil
}

// reloadAll rebuilds every view from the store. Netmaps whose content is
// unchanged keep their version.
func (s *State) reloadAll(ctx context.Context) error {
	type all struct {
		last  int64
		snaps map[string]*snapshot
	}
	a, err := store.Read(ctx, s.store, func(tx *store.Tx) (*all, error) {
		last, err := tx.LastChangeID(ctx)
		if err != nil {
			return nil, err
		}
		ts, err := tx.ListTenants(ctx)
		if err != nil {
			return nil, err
		}
		a := &all{last: last, snaps: map[string]*snapshot{}}
		for _, t := range ts {
			if a.snaps[t.ID], err = loadTenant(ctx, tx, t.ID); err != nil {
				return nil, err
			}
		}
		return a, nil
	})
	if err != nil {
		return fmt.Errorf("state: loading: %w", err)
	}
	version := uint64(max(a.last, 1))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tenants == nil {
		s.tenants, s.devices = map[string]*tenantView{}, map[string]deviceRef{}
	}
	for id := range s.tenants {
		if a.snaps[id] == nil {
			a.snaps[id] = &snapshot{}
		}
	}
	for id, snap := range a.snaps {
		s.applyLocked(id, snap, version, "")
	}
	s.advanceLocked(a.last)
	s.lastPoll = s.now()
	return nil
}

func (s *State) advanceLocked(to int64) {
	if to > s.applied {
		s.applied = to
		close(s.appliedCh)
		s.appliedCh = make(chan struct{})
	}
}

// follow is the follower goroutine.
func (s *State) follow() {
	defer s.wg.Done()
	tick := time.NewTicker(s.opts.PollInterval)
	defer tick.Stop()
	prune := time.NewTicker(s.opts.ChangeRetention / 6)
	defer prune.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		case <-s.kick:
		case <-prune.C:
			s.prune()
			continue
		}
		if err := s.poll(s.ctx); err != nil && s.ctx.Err() == nil {
			s.log.Warn("following the change feed", "err", err)
		}
	}
}

const pollBatch = 500

// awaitTimeout bounds how long a caller waits for the follower.
const awaitTimeout = 2 * time.Second

// poll applies every change after s.applied.
func (s *State) poll(ctx context.Context) error {
	s.mu.Lock()
	from, last := s.applied, s.lastPoll
	s.mu.Unlock()
	if s.now().Sub(last) > s.opts.ChangeRetention/2 {
		// Cut off from the feed for long enough that rows we never saw may
		// have been pruned: start again from the tables.
		s.log.Warn("change feed not read for a long time; reloading everything", "since", last)
		return s.reloadAll(ctx)
	}
	for {
		type batch struct {
			changes []*store.Change
			snaps   map[string]*snapshot
			// last is the newest change in the snapshot when the batch
			// is full (it may then run ahead of the batch), else 0.
			last int64
		}
		b, err := store.Read(ctx, s.store, func(tx *store.Tx) (*batch, error) {
			cs, err := tx.ChangesSince(ctx, from, pollBatch)
			if err != nil {
				return nil, err
			}
			b := &batch{changes: cs, snaps: map[string]*snapshot{}}
			if len(cs) == pollBatch {
				if b.last, err = tx.LastChangeID(ctx); err != nil {
					return nil, err
				}
			}
			for _, c := range cs {
				if b.snaps[c.TenantID] == nil {
					if b.snaps[c.TenantID], err = loadTenant(ctx, tx, c.TenantID); err != nil {
						return nil, err
					}
				}
			}
			return b, nil
		})
		if err != nil {
			return err
		}
		// The last change per tenant labels the netmaps it produces.
		lastOf := map[string]*store.Change{}
		for _, c := range b.changes {
			lastOf[c.TenantID] = c
		}
		now := s.now()
		s.mu.Lock()
		s.lastPoll = now
		for id, c := range lastOf {
			s.applyLocked(id, b.snaps[id], uint64(c.ID), c.RequestID)
			if v := s.tenants[id]; v != nil && b.last > 0 {
				// The view may hold changes after its label, up to
				// b.last: a delta from before that could miss them.
				v.history = v.history.raiseFloor(uint64(b.last))
			}
		}
		if n := len(b.changes); n > 0 {
			from = b.changes[n-1].ID
			s.advanceLocked(from)
		}
		s.mu.Unlock()
		if s.opts.OnPush != nil {
			for _, c := range lastOf {
				s.opts.OnPush(now.Sub(c.CreatedAt))
			}
		}
		if len(b.changes) < pollBatch {
			return nil
		}
	}
}

func (s *State) prune() {
	n, err := store.Write(s.ctx, s.store, func(tx *store.Tx) (int64, error) {
		return tx.PruneChanges(s.ctx, s.now().Add(-s.opts.ChangeRetention))
	})
	if err != nil {
		s.log.Warn("pruning the change feed", "err", err)
	} else if n > 0 {
		s.log.Debug("pruned the change feed", "rows", n)
	}
}

// awaitApplied wakes the follower and waits until it has applied change
// seq, so that a caller reads its own writes from the netmaps. It gives up
// quietly after a few seconds or when ctx ends: the write is committed and
// will be applied regardless.
func (s *State) awaitApplied(ctx context.Context, seq int64) {
	select {
	case s.kick <- struct{}{}:
	default:
	}
	timeout := time.NewTimer(awaitTimeout)
	defer timeout.Stop()
	for {
		s.mu.Lock()
		applied, ch := s.applied, s.appliedCh
		s.mu.Unlock()
		if applied >= seq {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		case <-timeout.C:
			s.log.Warn("change not applied in time", "change", seq)
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// lastApplied reports the newest change applied here.
func (s *State) lastApplied() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied
}

// record appends a change for tenantID within tx.
func (s *State) record(ctx context.Context, tx *store.Tx, tenantID, kind, subject string) (int64, error) {
	c := &store.Change{TenantID: tenantID, Kind: kind, Subject: subject, RequestID: RequestID(ctx), CreatedAt: s.now()}
	if err := tx.AppendChange(ctx, c); err != nil {
		return 0, err
	}
	return c.ID, nil
}

// currentNetmap returns an appliance's compiled netmap, with its Peers
// filled in, if it has one.
func (s *State) currentNetmap(applianceID string) *netmap.Netmap {
	if nm := s.hub.Current(applianceID); nm != nil {
		return nm.Full()
	}
	return nil
}

type requestIDKey struct{}

// WithRequestID returns a context carrying the id of the API request it
// serves; changes made with it record the id, and the netmaps they produce
// carry it to the appliances.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestID returns the request id carried by ctx, or "".
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}
