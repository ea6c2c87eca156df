package state

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/probes"
)

// DefaultSLA is the SLA a new tenant starts with.
var DefaultSLA = store.SLA{MaxLossPercent: 2, MaxRTTMillis: 150, MaxJitterMillis: 30}

// DefaultProbeInterval is the probe interval every netmap carries.
const DefaultProbeInterval = 200 * time.Millisecond

// DefaultProbeKeyGrace is how long a rotation leaves a new probe key
// "next" (accepted, not signing) before the following rotation may make it
// current; see RotateProbeKey.
const DefaultProbeKeyGrace = time.Minute

// checkSLA validates an SLA; field names are those of the API.
func checkSLA(f *fields, s store.SLA) {
	if math.IsNaN(s.MaxLossPercent) || s.MaxLossPercent < 0 || s.MaxLossPercent > 100 {
		f.add("max_loss_percent", "want 0 to 100 (0: no limit), got %v", s.MaxLossPercent)
	}
	maxMS := netmap.MaxSLADelay.Milliseconds()
	if s.MaxRTTMillis < 0 || s.MaxRTTMillis > maxMS {
		f.add("max_rtt_ms", "want 0 to %d (0: no limit), got %d", maxMS, s.MaxRTTMillis)
	}
	if s.MaxJitterMillis < 0 || s.MaxJitterMillis > maxMS {
		f.add("max_jitter_ms", "want 0 to %d (0: no limit), got %d", maxMS, s.MaxJitterMillis)
	}
}

func probeSLA(s store.SLA) probes.SLA {
	return probes.SLA{MaxLossPercent: s.MaxLossPercent, MaxRTT: time.Duration(s.MaxRTTMillis) * time.Millisecond,
		MaxJitter: time.Duration(s.MaxJitterMillis) * time.Millisecond}
}

// GetSLA returns a tenant's SLA, which applies to every pair of its sites
// without an override.
func (s *State) GetSLA(ctx context.Context, p *Principal, tenantRef string) (store.SLA, error) {
	t, err := s.GetTenant(ctx, p, tenantRef)
	if err != nil {
		return store.SLA{}, err
	}
	return t.SLA, nil
}

// SetSLA replaces a tenant's SLA. Every appliance of the tenant gets the
// new thresholds for the peers without an override.
func (s *State) SetSLA(ctx context.Context, p *Principal, tenantRef string, sla store.SLA) (store.SLA, error) {
	var f fields
	checkSLA(&f, sla)
	if err := f.err(); err != nil {
		return store.SLA{}, err
	}
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return 0, err
		}
		if t.SLA == sla {
			return 0, nil
		}
		if err := tx.UpdateTenantSLA(ctx, t.ID, sla); err != nil {
			return 0, storeErr(err)
		}
		return s.record(ctx, tx, t.ID, "tenant.sla", t.ID)
	})
	if err != nil {
		return store.SLA{}, err
	}
	s.awaitApplied(ctx, seq)
	return sla, nil
}

// SLAOverride is the SLA of one pair of sites, with the sites' names.
type SLAOverride struct {
	*store.SLAOverride
	SiteAName, SiteBName string
}

// ListSLAOverrides returns a tenant's site-pair overrides.
func (s *State) ListSLAOverrides(ctx context.Context, p *Principal, tenantRef string) ([]*SLAOverride, error) {
	return store.Read(ctx, s.store, func(tx *store.Tx) ([]*SLAOverride, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return nil, err
		}
		os, err := tx.ListSLAOverrides(ctx, t.ID)
		if err != nil {
			return nil, err
		}
		sites, err := tx.ListSites(ctx, t.ID)
		if err != nil {
			return nil, err
		}
		names := make(map[string]string, len(sites))
		for _, st := range sites {
			names[st.ID] = st.Name
		}
		out := make([]*SLAOverride, len(os))
		for i, o := range os {
			out[i] = &SLAOverride{SLAOverride: o, SiteAName: names[o.SiteA], SiteBName: names[o.SiteB]}
		}
		return out, nil
	})
}

// sitePairFor resolves the two sites of a pair, each by id or name.
func sitePairFor(ctx context.Context, tx *store.Tx, tenantID, refA, refB string) (a, b *store.Site, err error) {
	if a, err = siteFor(ctx, tx, tenantID, refA); err != nil {
		return nil, nil, err
	}
	if b, err = siteFor(ctx, tx, tenantID, refB); err != nil {
		return nil, nil, err
	}
	if a.ID == b.ID {
		return nil, nil, &Error{Code: CodeInvalid, Msg: "invalid site pair",
			Fields: []FieldError{{"site_b", fmt.Sprintf("a site pair needs two different sites, got %q twice", a.Name)}}}
	}
	if a.ID > b.ID {
		a, b = b, a
	}
	return a, b, nil
}

// PutSLAOverride sets the SLA of a pair of sites (in both directions),
// replacing the tenant's for that pair. Only the appliances of the two
// sites see the change.
func (s *State) PutSLAOverride(ctx context.Context, p *Principal, tenantRef, siteA, siteB string, sla store.SLA) (*SLAOverride, error) {
	var out *SLAOverride
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return 0, err
		}
		a, b, err := sitePairFor(ctx, tx, t.ID, siteA, siteB)
		if err != nil {
			return 0, err
		}
		var f fields
		checkSLA(&f, sla)
		if err := f.err(); err != nil {
			return 0, err
		}
		o := &store.SLAOverride{TenantID: t.ID, SiteA: a.ID, SiteB: b.ID, SLA: sla, UpdatedAt: s.now()}
		if err := tx.PutSLAOverride(ctx, o); err != nil {
			return 0, storeErr(err)
		}
		out = &SLAOverride{SLAOverride: o, SiteAName: a.Name, SiteBName: b.Name}
		return s.record(ctx, tx, t.ID, "sla-override.put", a.ID+"/"+b.ID)
	})
	if err != nil {
		return nil, err
	}
	s.awaitApplied(ctx, seq)
	return out, nil
}

// DeleteSLAOverride removes the override of a pair of sites, which then
// gets the tenant's SLA again.
func (s *State) DeleteSLAOverride(ctx context.Context, p *Principal, tenantRef, siteA, siteB string) error {
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return 0, err
		}
		a, b, err := sitePairFor(ctx, tx, t.ID, siteA, siteB)
		if err != nil {
			return 0, err
		}
		if err := tx.DeleteSLAOverride(ctx, t.ID, a.ID, b.ID); errors.Is(err, store.ErrNotFound) {
			return 0, errorf(CodeNotFound, "sites %q and %q have no SLA override", a.Name, b.Name)
		} else if err != nil {
			return 0, err
		}
		return s.record(ctx, tx, t.ID, "sla-override.delete", a.ID+"/"+b.ID)
	})
	if err != nil {
		return err
	}
	s.awaitApplied(ctx, seq)
	return nil
}

// ProbeKeyInfo describes one probe key without its secret.
type ProbeKeyInfo struct {
	ID        probes.KeyID
	Role      store.ProbeKeyRole
	CreatedAt time.Time
	// CurrentFrom is, for the next key, when a rotation may make it
	// current; zero otherwise.
	CurrentFrom time.Time
}

// ProbeKeys returns a tenant's probe keys, the current one first.
func (s *State) ProbeKeys(ctx context.Context, p *Principal, tenantRef string) ([]ProbeKeyInfo, error) {
	keys, err := store.Read(ctx, s.store, func(tx *store.Tx) ([]*store.ProbeKey, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return nil, err
		}
		return tx.ListProbeKeys(ctx, t.ID)
	})
	if err != nil {
		return nil, err
	}
	return s.keyInfos(keys), nil
}

func (s *State) keyInfos(keys []*store.ProbeKey) []ProbeKeyInfo {
	out := make([]ProbeKeyInfo, 0, len(keys))
	for _, k := range orderKeys(keys) {
		ki := ProbeKeyInfo{ID: probes.KeyID(k.ID), Role: k.Role, CreatedAt: k.CreatedAt}
		if k.Role == store.ProbeKeyNext {
			ki.CurrentFrom = k.CreatedAt.Add(s.opts.ProbeKeyGrace)
		}
		out = append(out, ki)
	}
	return out
}

// RotateProbeKey takes a tenant's probe keys one step through a rotation,
// so that no appliance ever refuses a valid probe (see docs/probes.md):
//
//   - with no key being rotated in, it makes a new key "next": every netmap
//     lists it as accepted, after the current key, which still signs;
//   - with a next key at least ProbeKeyGrace old (time for every connected
//     appliance to have it), it makes that key current and the current one
//     "previous", still accepted; the key previous before is dropped.
//
// A second call within the grace is refused as a conflict that says when
// it will be allowed. A full rotation is therefore two calls at least a
// grace apart. A tenant with no key gets one.
func (s *State) RotateProbeKey(ctx context.Context, p *Principal, tenantRef string) ([]ProbeKeyInfo, error) {
	var keys []*store.ProbeKey
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return 0, err
		}
		if keys, err = tx.ListProbeKeys(ctx, t.ID); err != nil {
			return 0, err
		}
		now := s.now()
		byRole := map[store.ProbeKeyRole]*store.ProbeKey{}
		var last int64
		for _, k := range keys {
			byRole[k.Role] = k
			last = max(last, k.ID)
		}
		cur, next, prev := byRole[store.ProbeKeyCurrent], byRole[store.ProbeKeyNext], byRole[store.ProbeKeyPrevious]
		switch {
		case cur == nil || next == nil:
			role := store.ProbeKeyNext
			if cur == nil {
				role = store.ProbeKeyCurrent
			}
			if _, err := insertProbeKey(ctx, tx, t.ID, last+1, role, now); err != nil {
				return 0, err
			}
		case now.Before(next.CreatedAt.Add(s.opts.ProbeKeyGrace)):
			return 0, errorf(CodeConflict, "probe key %d is spreading as the next key since %s; it can become current from %s",
				next.ID, next.CreatedAt.UTC().Format(time.RFC3339), next.CreatedAt.Add(s.opts.ProbeKeyGrace).UTC().Format(time.RFC3339))
		default:
			if prev != nil {
				if err := tx.DeleteProbeKey(ctx, t.ID, prev.ID); err != nil {
					return 0, err
				}
			}
			if err := tx.SetProbeKeyRole(ctx, t.ID, cur.ID, store.ProbeKeyPrevious); err != nil {
				return 0, err
			}
			if err := tx.SetProbeKeyRole(ctx, t.ID, next.ID, store.ProbeKeyCurrent); err != nil {
				return 0, err
			}
		}
		if keys, err = tx.ListProbeKeys(ctx, t.ID); err != nil {
			return 0, err
		}
		return s.record(ctx, tx, t.ID, "probe-key.rotate", t.ID)
	})
	if err != nil {
		return nil, err
	}
	s.awaitApplied(ctx, seq)
	return s.keyInfos(keys), nil
}

// insertProbeKey generates a key with the given id and role.
func insertProbeKey(ctx context.Context, tx *store.Tx, tenantID string, id int64, role store.ProbeKeyRole, now time.Time) (*store.ProbeKey, error) {
	if id <= 0 || id > math.MaxUint32 {
		return nil, fmt.Errorf("state: probe key ids of tenant %s are used up", tenantID)
	}
	k, err := probes.GenerateKey(probes.KeyID(id))
	if err != nil {
		return nil, err
	}
	sk := &store.ProbeKey{TenantID: tenantID, ID: id, Secret: k.Raw(), Role: role, CreatedAt: now}
	if err := tx.InsertProbeKey(ctx, sk); err != nil {
		return nil, storeErr(err)
	}
	return sk, nil
}

// ensureProbeKeys gives every tenant without a current probe key (one
// created before probe keys existed) a new one. It runs at start; the
// check repeats under the write lock, so replicas starting together make
// one key per tenant.
func (s *State) ensureProbeKeys(ctx context.Context) error {
	ids, err := store.Read(ctx, s.store, func(tx *store.Tx) ([]string, error) { return tx.TenantsWithoutProbeKey(ctx) })
	if err != nil || len(ids) == 0 {
		return err
	}
	_, err = store.Write(ctx, s.store, func(tx *store.Tx) (struct{}, error) {
		ids, err := tx.TenantsWithoutProbeKey(ctx)
		if err != nil {
			return struct{}{}, err
		}
		for _, id := range ids {
			keys, err := tx.ListProbeKeys(ctx, id)
			if err != nil {
				return struct{}{}, err
			}
			var last int64
			for _, k := range keys {
				last = max(last, k.ID)
			}
			if _, err := insertProbeKey(ctx, tx, id, last+1, store.ProbeKeyCurrent, s.now()); err != nil {
				return struct{}{}, err
			}
			if _, err := s.record(ctx, tx, id, "probe-key.create", id); err != nil {
				return struct{}{}, err
			}
		}
		s.log.Info("made probe keys for tenants that had none", "tenants", len(ids))
		return struct{}{}, nil
	})
	return err
}

// orderKeys returns the keys current first, then next, then previous.
func orderKeys(keys []*store.ProbeKey) []*store.ProbeKey {
	rank := map[store.ProbeKeyRole]int{store.ProbeKeyCurrent: 0, store.ProbeKeyNext: 1, store.ProbeKeyPrevious: 2}
	out := slices.Clone(keys)
	slices.SortStableFunc(out, func(a, b *store.ProbeKey) int { return rank[a.Role] - rank[b.Role] })
	return out
}

// probesOf is the probes object of a tenant's netmaps: the current key,
// then the accepted ones. A tenant without a current key has none.
func probesOf(keys []*store.ProbeKey) netmap.Probes {
	var np netmap.Probes
	ordered := orderKeys(keys)
	if len(ordered) == 0 || ordered[0].Role != store.ProbeKeyCurrent {
		return np
	}
	for _, k := range ordered {
		pk, err := probes.NewKey(probes.KeyID(k.ID), k.Secret[:])
		if err != nil || len(np.Keys) == 1+probes.MaxAccepted {
			continue
		}
		np.Keys = append(np.Keys, pk)
	}
	np.Interval = DefaultProbeInterval
	return np
}

// sitePair names an unordered pair of sites, smaller id first.
type sitePair struct{ a, b string }

// slaConfig is what the SLAs of a tenant's netmaps are made of.
type slaConfig struct {
	def       store.SLA
	overrides map[sitePair]store.SLA
}

func slaConfigOf(t *store.Tenant, os []*store.SLAOverride) slaConfig {
	c := slaConfig{def: t.SLA, overrides: make(map[sitePair]store.SLA, len(os))}
	for _, o := range os {
		a, b := store.SitePair(o.SiteA, o.SiteB)
		c.overrides[sitePair{a, b}] = o.SLA
	}
	return c
}

// buildSLAs makes the PeerSLAs of every site, keeping old's where they
// are unchanged (so that netmaps referring to them stay the same).
func buildSLAs(c slaConfig, sites map[string]*store.Site, old map[string]*netmap.PeerSLAs) map[string]*netmap.PeerSLAs {
	bySite := map[string]map[string]probes.SLA{}
	for pair, sla := range c.overrides {
		for _, ab := range [][2]string{{pair.a, pair.b}, {pair.b, pair.a}} {
			if bySite[ab[0]] == nil {
				bySite[ab[0]] = map[string]probes.SLA{}
			}
			bySite[ab[0]][ab[1]] = probeSLA(sla)
		}
	}
	def := probeSLA(c.def)
	out := make(map[string]*netmap.PeerSLAs, len(sites))
	for id := range sites {
		ps := netmap.NewPeerSLAs(def, bySite[id])
		if o := old[id]; o != nil && o.Equal(ps) {
			ps = o
		}
		out[id] = ps
	}
	return out
}

// slaChangedSites returns the sites whose appliances are seen with a
// different SLA by some peer after the change from old to c; all reports
// that the tenant's default changed, which may affect every site.
func slaChangedSites(old, c slaConfig) (sites map[string]bool, all bool) {
	if old.def != c.def {
		return nil, true
	}
	sites = map[string]bool{}
	for pair, sla := range c.overrides {
		if o, ok := old.overrides[pair]; !ok || o != sla {
			sites[pair.a], sites[pair.b] = true, true
		}
	}
	for pair := range old.overrides {
		if _, ok := c.overrides[pair]; !ok {
			sites[pair.a], sites[pair.b] = true, true
		}
	}
	return sites, false
}
