// Package push holds the latest netmap of every appliance and lets sync
// requests wait for a newer one.
//
// The state package publishes into a Hub whenever it recompiles a netmap;
// each appliance's sync request (a long-poll, see docs/controller.md) waits
// in Wait until the netmap's version passes the one the appliance holds.
package push

import (
	"context"
	"errors"
	"sync"

	"github.com/causeway-net/causeway/controller/netmap"
)

var (
	// ErrGone means the appliance no longer has a netmap: it was revoked,
	// or its site or tenant deleted.
	ErrGone = errors.New("push: appliance has no netmap")
	// ErrClosed means the hub was closed (the controller is shutting down).
	ErrClosed = errors.New("push: hub closed")
)

// Hub is safe for concurrent use. The zero value is not usable; call New.
type Hub struct {
	mu      sync.Mutex
	closed  bool
	entries map[string]*entry
	// waiting counts, per appliance id, the Wait calls in progress.
	waiting map[string]int
}

type entry struct {
	nm *netmap.Netmap // nil once the appliance is gone
	// changed is closed when nm is replaced; the replacement has a fresh
	// channel.
	changed chan struct{}
}

// New returns an empty hub.
func New() *Hub {
	return &Hub{entries: map[string]*entry{}, waiting: map[string]int{}}
}

// Publish makes nm the current netmap of the appliance id and wakes its
// waiters. A nil nm removes the appliance: its waiters get ErrGone.
func (h *Hub) Publish(id string, nm *netmap.Netmap) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	old := h.entries[id]
	if nm == nil {
		if old != nil {
			delete(h.entries, id)
			close(old.changed)
		}
		return
	}
	h.entries[id] = &entry{nm: nm, changed: make(chan struct{})}
	if old != nil {
		close(old.changed)
	}
}

// Current returns the appliance's netmap, or nil if it has none.
func (h *Hub) Current(id string) *netmap.Netmap {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := h.entries[id]; e != nil {
		return e.nm
	}
	return nil
}

// Wait returns the appliance's netmap as soon as its version is above
// since. It returns ctx.Err() when ctx ends first (the long-poll timed out),
// ErrGone if the appliance has, or comes to have, no netmap, and ErrClosed
// when the hub closes.
func (h *Hub) Wait(ctx context.Context, id string, since uint64) (*netmap.Netmap, error) {
	h.mu.Lock()
	h.waiting[id]++
	defer func() {
		h.mu.Lock()
		if h.waiting[id]--; h.waiting[id] <= 0 {
			delete(h.waiting, id)
		}
		h.mu.Unlock()
	}()
	for {
		if h.closed {
			h.mu.Unlock()
			return nil, ErrClosed
		}
		e := h.entries[id]
		if e == nil {
			h.mu.Unlock()
			return nil, ErrGone
		}
		if e.nm.Version > since {
			h.mu.Unlock()
			return e.nm, nil
		}
		ch := e.changed
		h.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		h.mu.Lock()
	}
}

// Connected reports how many appliances have a sync request waiting.
func (h *Hub) Connected() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.waiting)
}

// IsConnected reports whether the appliance has a sync request waiting.
func (h *Hub) IsConnected(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.waiting[id] > 0
}

// Close wakes every waiter with ErrClosed; Publish does nothing afterwards.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.closed = true
	for _, e := range h.entries {
		close(e.changed)
	}
	h.entries = map[string]*entry{}
}
