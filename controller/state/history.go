package state

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sort"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/push"
)

// Bounds on a tenant's history: the steps kept, and the peer names they
// name in all. Older steps are dropped; an appliance holding a netmap from
// before the oldest step kept gets a full netmap.
const (
	maxHistorySteps = 1024
	maxHistoryNames = 1 << 16
	// minDeltaLimit is how many changed peers a delta may always carry; it
	// carries more only if they are at most half the netmap's peers.
	minDeltaLimit = 8
)

// history records, step by step, which peers changed in a tenant's views
// and which appliances' own parts did, so that a sync can answer with a
// delta: what changed since the version the appliance holds.
//
// A step at version v covers every change after the step before it, up to
// v. So whatever version since an appliance holds (even one another
// replica, batching changes differently, labelled), the steps after since
// name every peer that changed after since, and perhaps a few that did not,
// which the delta then repeats unchanged.
//
// A history is never modified once a view holds it: add returns a new one
// (which may share the old one's array, appending beyond its length; a
// view has one successor, so that is safe).
type history struct {
	// floor is the oldest version a delta can start from: the steps name
	// everything that changed after it.
	floor uint64
	steps []step
	// names counts the names in steps.
	names int
}

type step struct {
	version uint64
	// peers are the names of the peer entries added, changed or removed
	// (for a renamed appliance, both names).
	peers []string
	// selves are the appliances whose own part of their netmap changed.
	selves map[string]bool
}

func newHistory(version uint64) *history { return &history{floor: version} }

// add returns the history with one more step.
func (h *history) add(version uint64, peers, selves []string) *history {
	if len(peers) == 0 && len(selves) == 0 {
		return h
	}
	st := step{version: version, peers: peers}
	if len(selves) > 0 {
		st.selves = make(map[string]bool, len(selves))
		for _, id := range selves {
			st.selves[id] = true
		}
	}
	nh := &history{floor: h.floor, steps: append(h.steps, st), names: h.names + len(peers) + len(selves)}
	drop := 0
	for len(nh.steps)-drop > maxHistorySteps || (nh.names > maxHistoryNames && drop < len(nh.steps)-1) {
		nh.names -= len(nh.steps[drop].peers) + len(nh.steps[drop].selves)
		nh.floor = max(nh.floor, nh.steps[drop].version)
		drop++
	}
	if drop > 0 {
		nh.steps = slices.Clone(nh.steps[drop:])
	}
	return nh
}

// raiseFloor returns the history with its floor at least v.
func (h *history) raiseFloor(v uint64) *history {
	if v <= h.floor {
		return h
	}
	nh := *h
	nh.floor = v
	return &nh
}

// delta returns what turns the netmap of appliance appID at version since
// into its current one, or nil when only the full netmap will do: since is
// older than the history, the appliance's own part changed, or so many
// peers changed that the delta would not be much smaller. The probe keys
// need no step of their own: every delta carries them in full.
func (v *tenantView) delta(appID string, since uint64) *netmap.Delta {
	m, self := v.maps[appID], v.selves[appID]
	h := v.history
	if m == nil || since < h.floor || since >= m.Version {
		return nil
	}
	i := sort.Search(len(h.steps), func(i int) bool { return h.steps[i].version > since })
	limit := max(m.NumPeers()/2, minDeltaLimit)
	names := map[string]bool{}
	for _, st := range h.steps[i:] {
		if st.selves[appID] {
			return nil
		}
		for _, name := range st.peers {
			names[name] = true
		}
		if len(names) > limit {
			return nil
		}
	}
	d := &netmap.Delta{Version: m.Version, Base: since, RequestID: m.RequestID, Tenant: m.Tenant, Appliance: m.Appliance,
		Site: m.Site, Name: m.Name, OverlayAddr: m.OverlayAddr, LANPrefixes: m.LANPrefixes, Probes: m.Probes, Pair: m.Pair}
	slas := v.slas[m.Site]
	for name := range names {
		if name == m.Name {
			continue // the appliance itself is no peer of its own
		}
		if e, ok := v.table.Lookup(name); ok {
			p := e.Peer()
			p.Keepalive = self.keepalive
			p.SLA = slas.For(p.Site)
			d.Peers = append(d.Peers, p)
		} else {
			d.Removed = append(d.Removed, name)
		}
	}
	slices.SortFunc(d.Peers, func(a, b netmap.Peer) int { return cmp.Compare(a.Name, b.Name) })
	slices.Sort(d.Removed)
	return d
}

// Update is what a sync request answers with.
type Update struct {
	// Netmap is the appliance's current netmap. It may share its peers
	// with other netmaps (see netmap.Shared): encode it with its
	// WriteJSON or AppendJSON, or call Full for a copy with Peers set.
	Netmap *netmap.Netmap
	// Delta, when set, turns the netmap at the version the request held
	// into Netmap, and is what to send.
	Delta *netmap.Delta
}

// SyncUpdate is Sync for the API: it waits as Sync does, and when wantDelta
// is set and the controller knows what changed since the version the
// appliance holds, it answers with a delta instead of the whole netmap.
func (s *State) SyncUpdate(ctx context.Context, d *Device, since uint64, wantDelta bool) (*Update, error) {
	nm, since, err := s.wait(ctx, d, since)
	if err != nil {
		return nil, err
	}
	u := &Update{Netmap: nm}
	if !wantDelta || since == 0 {
		return u, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The view is at least as new as what the hub returned: both change
	// under s.mu, the view last.
	if v := s.tenants[d.TenantID]; v != nil {
		if m := v.maps[d.ApplianceID]; m != nil && m.Version >= nm.Version {
			u.Netmap = m
			u.Delta = v.delta(d.ApplianceID, since)
		}
	}
	return u, nil
}

// wait is Sync without copying the netmap's peers. It also returns the
// since it waited on, 0 when the one asked for was beyond the feed.
func (s *State) wait(ctx context.Context, d *Device, since uint64) (*netmap.Netmap, uint64, error) {
	if since > uint64(s.lastApplied()) {
		s.awaitApplied(ctx, min(int64(since), 1<<62))
		if since > uint64(s.lastApplied()) && ctx.Err() == nil {
			since = 0
		}
	}
	nm, err := s.hub.Wait(ctx, d.ApplianceID, since)
	if errors.Is(err, push.ErrGone) {
		return nil, 0, errorf(CodeUnauthenticated, "appliance %s is no longer active", d.ApplianceID)
	}
	return nm, since, err
}
