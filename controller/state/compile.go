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
type tenantView struct {
	tenant *store.Tenant
	sites  map[string]*store.Site
	// apps holds the live (not revoked) appliances.
	apps map[string]*store.Appliance
	// peers is each live appliance as its peers see it (Keepalive unset:
	// that depends on the viewer).
	peers map[string]netmap.Peer
	// selves is what, of an appliance's own record, its netmap depends on.
	selves map[string]selfContext
	maps   map[string]*netmap.Netmap
}

type selfContext struct {
	name, site, overlay, prefixes string
	keepalive                     time.Duration
}

func peerOf(a *store.Appliance, site *store.Site) netmap.Peer {
	return netmap.Peer{
		Name:        a.Name,
		Site:        site.ID,
		PublicKey:   a.PublicKey,
		OverlayAddr: a.OverlayAddr,
		Endpoints:   slices.Clone(a.Endpoints),
		Prefixes:    slices.Clone(site.LANPrefixes),
	}
}

// keepaliveFor is the keepalive the appliance keeps toward every peer.
func keepaliveFor(a *store.Appliance, site *store.Site) time.Duration {
	if site.Kind == store.SiteHome || site.Kind == store.SiteRemote || len(a.Endpoints) == 0 {
		return DefaultKeepalive
	}
	return 0
}

func selfOf(a *store.Appliance, site *store.Site) selfContext {
	ps := make([]string, len(site.LANPrefixes))
	for i, p := range site.LANPrefixes {
		ps[i] = p.String()
	}
	return selfContext{
		name: a.Name, site: site.ID, overlay: a.OverlayAddr.String(),
		prefixes: strings.Join(ps, ","), keepalive: keepaliveFor(a, site),
	}
}

// applyLocked replaces the view of tenant id with one built from snap and
// publishes the netmaps that changed, labelled with version and requestID.
//
// Only what the change touched is recompiled: an appliance's netmap is
// rebuilt when its own record changed or when some other appliance's peer
// entry changed, and republished only when the result differs. A change
// that alters no peer (an enrollment token, an empty site) recompiles
// nothing, and no change ever touches another tenant.
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
		tenant: snap.tenant,
		sites:  map[string]*store.Site{},
		apps:   map[string]*store.Appliance{},
		peers:  map[string]netmap.Peer{},
		selves: map[string]selfContext{},
		maps:   map[string]*netmap.Netmap{},
	}
	for _, site := range snap.sites {
		nv.sites[site.ID] = site
	}
	for _, a := range snap.apps {
		site := nv.sites[a.SiteID]
		if a.State != store.ApplianceActive || site == nil {
			continue
		}
		nv.apps[a.ID] = a
		nv.peers[a.ID] = peerOf(a, site)
		nv.selves[a.ID] = selfOf(a, site)
		s.devices[a.CredentialHash] = deviceRef{tenantID: id, applianceID: a.ID}
	}

	// Which peer entries differ from the old view?
	changed := map[string]bool{}
	for appID, p := range nv.peers {
		if old == nil {
			changed[appID] = true
		} else if op, ok := old.peers[appID]; !ok || !op.Equal(&p) {
			changed[appID] = true
		}
	}
	if old != nil {
		for appID := range old.peers {
			if _, ok := nv.peers[appID]; !ok {
				changed[appID] = true
			}
		}
	}

	var sorted []string // live appliance ids by name
	for appID, a := range nv.apps {
		var om *netmap.Netmap
		if old != nil {
			om = old.maps[appID]
		}
		othersChanged := len(changed) > 1 || (len(changed) == 1 && !changed[appID])
		if om != nil && old.selves[appID] == nv.selves[appID] && !othersChanged {
			nv.maps[appID] = om
			continue
		}
		if sorted == nil {
			sorted = sortedByName(nv.apps)
		}
		m := nv.compile(a, sorted)
		if om != nil && om.SameContent(m) {
			nv.maps[appID] = om
			continue
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
	s.tenants[id] = nv
}

func sortedByName(apps map[string]*store.Appliance) []string {
	ids := make([]string, 0, len(apps))
	for id := range apps {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b string) int {
		return cmp.Or(cmp.Compare(apps[a].Name, apps[b].Name), cmp.Compare(a, b))
	})
	return ids
}

// compile builds the netmap of appliance a (without version).
func (v *tenantView) compile(a *store.Appliance, sorted []string) *netmap.Netmap {
	site := v.sites[a.SiteID]
	keepalive := keepaliveFor(a, site)
	m := &netmap.Netmap{
		Tenant:      v.tenant.ID,
		Appliance:   a.ID,
		Site:        site.ID,
		Name:        a.Name,
		OverlayAddr: a.OverlayAddr,
		LANPrefixes: slices.Clone(site.LANPrefixes),
		Peers:       make([]netmap.Peer, 0, max(len(sorted)-1, 0)),
	}
	for _, id := range sorted {
		if id == a.ID {
			continue
		}
		p := v.peers[id]
		p.Keepalive = keepalive
		m.Peers = append(m.Peers, p)
	}
	return m
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
