package state

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/store"
)

// DefaultKeepalive is the persistent keepalive an appliance that may sit
// behind NAT (a home or remote site, or one that publishes no endpoint)
// keeps toward its peers, so that their replies can reach it.
const DefaultKeepalive = 25 * time.Second

// tenantView is the compiled form of one tenant. Views are replaced whole,
// never modified, so a netmap taken from one stays valid.
//
// Every appliance's netmap lists the same peers (all live appliances but
// itself), so the view encodes each peer once (entries), sorts them into one
// shared table, and each netmap refers to that table: a change costs O(N)
// for a tenant of N appliances, not O(N²).
//
// What differs between the netmaps besides the appliance's own part is the
// keepalive (per appliance) and the SLA toward each peer (per pair of
// sites). The SLAs live in one netmap.PeerSLAs per site (slas), shared by
// that site's netmaps and kept outside the shared entries: a site-pair
// override replaces the PeerSLAs of its two sites only, and so recompiles
// and republishes the netmaps of those two sites' appliances only. The
// probe keys are part of every netmap's own part (probes).
type tenantView struct {
	tenant *store.Tenant
	sites  map[string]*store.Site
	// apps holds the live (not revoked) appliances.
	apps map[string]*store.Appliance
	// entries is each live appliance as its peers see it (Keepalive unset:
	// that depends on the viewer), encoded once.
	entries map[string]*netmap.PeerEntry
	// table lists entries sorted by name; index is each appliance's
	// position in it.
	table *netmap.Table
	index map[string]int
	// selves is what, of an appliance's own record, its netmap depends on.
	selves map[string]selfContext
	maps   map[string]*netmap.Netmap
	// history is what changed in the views before this one, for deltas.
	history *history
	// probes is the probes object of every netmap of the tenant.
	probes netmap.Probes
	// sla is the tenant's SLA and overrides; slas the SLAs each site's
	// appliances apply to their peers, shared by the site's netmaps.
	sla  slaConfig
	slas map[string]*netmap.PeerSLAs
	// liveAt counts the live appliances of each site; a site with two is
	// a pair (see pair.go), whose status pairs holds once its members
	// reported.
	liveAt map[string]int
	pairs  map[string]*store.PairStatus
}

type selfContext struct {
	name, site, overlay, prefixes string
	keepalive                     time.Duration
	pair                          netmap.Pair
	paired                        bool
}

func peerOf(a *store.Appliance, site *store.Site, pair *netmap.PeerPair) netmap.Peer {
	return netmap.Peer{
		Name:        a.Name,
		Site:        site.ID,
		PublicKey:   a.PublicKey,
		OverlayAddr: a.OverlayAddr,
		Endpoints:   slices.Clone(a.Endpoints),
		Prefixes:    slices.Clone(site.LANPrefixes),
		Pair:        pair,
	}
}

// keepaliveFor is the keepalive the appliance keeps toward every peer.
func keepaliveFor(a *store.Appliance, site *store.Site) time.Duration {
	if site.Kind == store.SiteHome || site.Kind == store.SiteRemote || len(a.Endpoints) == 0 {
		return DefaultKeepalive
	}
	return 0
}

func selfOf(a *store.Appliance, site *store.Site, pair *netmap.Pair) selfContext {
	ps := make([]string, len(site.LANPrefixes))
	for i, p := range site.LANPrefixes {
		ps[i] = p.String()
	}
	sc := selfContext{
		name: a.Name, site: site.ID, overlay: a.OverlayAddr.String(),
		prefixes: strings.Join(ps, ","), keepalive: keepaliveFor(a, site),
	}
	if pair != nil {
		sc.pair, sc.paired = *pair, true
	}
	return sc
}

// applyLocked replaces the view of tenant id with one built from snap and
// publishes the netmaps that changed, labelled with version and requestID.
//
// Only what the change touched is recompiled: an appliance's netmap is
// rebuilt when its own record changed or when some other appliance's peer
// entry changed. A change that alters no peer (an enrollment token, an
// empty site) recompiles nothing, and no change ever touches another
// tenant. Rebuilding a netmap is O(1): it refers to the tenant's table.
func (s *State) applyLocked(id string, snap *snapshot, version uint64, requestID string) {
	old := s.tenants[id]
	if old != nil {
		for appID, a := range old.apps {
			delete(s.devices, a.CredentialHash)
			if snap.tenant == nil {
				s.hub.Publish(appID, nil)
			}
		}
	}
	if snap.tenant == nil {
		delete(s.tenants, id)
		return
	}
	nv := &tenantView{
		tenant:  snap.tenant,
		sites:   make(map[string]*store.Site, len(snap.sites)),
		apps:    make(map[string]*store.Appliance, len(snap.apps)),
		entries: make(map[string]*netmap.PeerEntry, len(snap.apps)),
		selves:  make(map[string]selfContext, len(snap.apps)),
		maps:    make(map[string]*netmap.Netmap, len(snap.apps)),
		probes:  probesOf(snap.keys),
		sla:     slaConfigOf(snap.tenant, snap.overrides),
		liveAt:  map[string]int{},
		pairs:   make(map[string]*store.PairStatus, len(snap.pairs)),
	}
	for _, site := range snap.sites {
		nv.sites[site.ID] = site
	}
	for _, a := range snap.apps {
		if a.State == store.ApplianceActive && nv.sites[a.SiteID] != nil {
			nv.liveAt[a.SiteID]++
		}
	}
	for _, st := range snap.pairs {
		nv.pairs[st.SiteID] = st
	}
	var oldSLAs map[string]*netmap.PeerSLAs
	if old != nil {
		oldSLAs = old.slas
	}
	nv.slas = buildSLAs(nv.sla, nv.sites, oldSLAs)
	probesChanged := old == nil || !old.probes.Equal(&nv.probes)
	// Which peer entries differ from the old view? Unchanged ones keep
	// their encoding. changed lists the appliances whose entry changed;
	// changedNames the names their peers knew them by, before and after.
	var changed, changedNames []string
	for _, a := range snap.apps {
		site := nv.sites[a.SiteID]
		if a.State != store.ApplianceActive || site == nil {
			continue
		}
		nv.apps[a.ID] = a
		p := peerOf(a, site, nv.peerPairOf(a))
		var oe *netmap.PeerEntry
		if old != nil {
			oe = old.entries[a.ID]
		}
		switch op := oe.Peer(); {
		case oe != nil && op.Equal(&p):
			nv.entries[a.ID] = oe
		case oe != nil && op.Name != p.Name:
			changedNames = append(changedNames, op.Name)
			fallthrough
		default:
			nv.entries[a.ID] = netmap.NewPeerEntry(p)
			changed = append(changed, a.ID)
			changedNames = append(changedNames, p.Name)
		}
		nv.selves[a.ID] = selfOf(a, site, nv.ownPairOf(a))
		s.devices[a.CredentialHash] = deviceRef{tenantID: id, applianceID: a.ID}
	}
	if old != nil {
		for appID, e := range old.entries {
			if nv.apps[appID] == nil {
				changed = append(changed, appID)
				changedNames = append(changedNames, e.Peer().Name)
			}
		}
	}
	if old != nil && len(changed) == 0 {
		nv.table, nv.index = old.table, old.index
	} else {
		nv.table, nv.index = buildTable(nv.apps, nv.entries)
	}
	// A change of SLA changes the peer entries as the appliances of some
	// sites see them: the history names the appliances of every site whose
	// SLA toward some peer changed, so that deltas carry them again.
	if old != nil {
		if sites, all := slaChangedSites(old.sla, nv.sla); all || len(sites) > 0 {
			seen := map[string]bool{}
			for _, v := range []*tenantView{old, nv} {
				for _, a := range v.apps {
					if name := v.entries[a.ID].Peer().Name; (all || sites[a.SiteID]) && !seen[name] {
						seen[name] = true
						changedNames = append(changedNames, name)
					}
				}
			}
		}
	}

	var selvesChanged []string
	for appID, a := range nv.apps {
		var om *netmap.Netmap
		if old != nil {
			om = old.maps[appID]
		}
		selfSame := old != nil && old.selves[appID] == nv.selves[appID]
		othersChanged := len(changed) > 1 || (len(changed) == 1 && changed[0] != appID)
		slasSame := old != nil && old.slas[a.SiteID] == nv.slas[a.SiteID]
		if om != nil && selfSame && !othersChanged && slasSame && !probesChanged {
			nv.maps[appID] = om
			continue
		}
		m := nv.compile(a)
		if om != nil && !othersChanged && om.SameContent(m) {
			// Its own record changed in a way its netmap does not show
			// (a keepalive with no peer to keep alive).
			nv.maps[appID] = om
			continue
		}
		if !selfSame {
			selvesChanged = append(selvesChanged, appID)
		}
		m.Version, m.RequestID = version, requestID
		nv.maps[appID] = m
		s.hub.Publish(appID, m)
	}
	if old != nil {
		for appID := range old.apps {
			if nv.apps[appID] == nil {
				s.hub.Publish(appID, nil)
			}
		}
	}
	if old == nil {
		nv.history = newHistory(version)
	} else {
		nv.history = old.history.add(version, changedNames, selvesChanged)
	}
	s.tenants[id] = nv
}

// buildTable sorts the entries of the live appliances by name.
func buildTable(apps map[string]*store.Appliance, entries map[string]*netmap.PeerEntry) (*netmap.Table, map[string]int) {
	ids := make([]string, 0, len(apps))
	for id := range apps {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b string) int {
		return cmp.Or(cmp.Compare(apps[a].Name, apps[b].Name), cmp.Compare(a, b))
	})
	list := make([]*netmap.PeerEntry, len(ids))
	index := make(map[string]int, len(ids))
	for i, id := range ids {
		list[i] = entries[id]
		index[id] = i
	}
	return netmap.NewTable(list), index
}

// compile builds the netmap of appliance a (without version): its own part
// and a reference to the tenant's table, less itself.
func (v *tenantView) compile(a *store.Appliance) *netmap.Netmap {
	site := v.sites[a.SiteID]
	head := netmap.Netmap{
		Tenant:      v.tenant.ID,
		Appliance:   a.ID,
		Site:        site.ID,
		Name:        a.Name,
		OverlayAddr: a.OverlayAddr,
		LANPrefixes: slices.Clone(site.LANPrefixes),
		Probes:      v.probes,
		Pair:        v.ownPairOf(a),
	}
	return netmap.Shared(head, v.table, v.index[a.ID], keepaliveFor(a, site), v.slas[site.ID])
}

// allocAddr returns the lowest overlay address not in used.
func allocAddr(used []netip.Addr) (netip.Addr, bool) {
	taken := make(map[netip.Addr]bool, len(used))
	for _, a := range used {
		taken[a] = true
	}
	// Skip the range's first and last addresses.
	last := netip.MustParseAddr("100.127.255.255")
	for a := netmap.OverlayRange.Addr().Next(); a.Less(last); a = a.Next() {
		if !taken[a] {
			return a, true
		}
	}
	return netip.Addr{}, false
}
