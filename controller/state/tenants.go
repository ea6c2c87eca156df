package state

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/store"
)

// Principal is an authenticated API caller.
type Principal struct {
	TokenID string
	Scope   store.Scope
	// TenantID is the one tenant a tenant-admin may see; empty for an
	// operator.
	TenantID string
}

// IsOperator reports whether p may act across tenants.
func (p *Principal) IsOperator() bool { return p != nil && p.Scope == store.ScopeOperator }

func (p *Principal) canSee(tenantID string) bool {
	return p.IsOperator() || (p != nil && p.Scope == store.ScopeTenantAdmin && p.TenantID == tenantID)
}

func requireOperator(p *Principal) error {
	if !p.IsOperator() {
		return errorf(CodeForbidden, "this needs an operator token")
	}
	return nil
}

// tenantFor resolves a tenant id or name that p may see. A tenant p may not
// see is reported exactly like one that does not exist.
func tenantFor(ctx context.Context, tx *store.Tx, p *Principal, ref string) (*store.Tenant, error) {
	var t *store.Tenant
	var err error
	if isID(ref, prefixTenant) {
		t, err = tx.TenantByID(ctx, ref)
	} else {
		t, err = tx.TenantByName(ctx, ref)
	}
	if errors.Is(err, store.ErrNotFound) || (err == nil && !p.canSee(t.ID)) {
		return nil, notFound("tenant", ref)
	}
	return t, err
}

// CreateTenant adds a tenant, with DefaultSLA and a new probe key.
// Operators only.
func (s *State) CreateTenant(ctx context.Context, p *Principal, name string) (*store.Tenant, error) {
	if err := requireOperator(p); err != nil {
		return nil, err
	}
	var f fields
	if !validName(name) {
		f.add("name", nameRule, name)
	}
	if err := f.err(); err != nil {
		return nil, err
	}
	t := &store.Tenant{ID: newID(prefixTenant), Name: name, CreatedAt: s.now(), SLA: DefaultSLA}
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		if _, err := tx.TenantByName(ctx, name); err == nil {
			return 0, &Error{Code: CodeConflict, Msg: "tenant exists", Fields: []FieldError{{"name", fmt.Sprintf("a tenant named %q exists", name)}}}
		}
		if err := tx.InsertTenant(ctx, t); err != nil {
			return 0, storeErr(err)
		}
		if _, err := insertProbeKey(ctx, tx, t.ID, 1, store.ProbeKeyCurrent, t.CreatedAt); err != nil {
			return 0, err
		}
		return s.record(ctx, tx, t.ID, "tenant.create", t.ID)
	})
	if err != nil {
		return nil, err
	}
	s.awaitApplied(ctx, seq)
	return t, nil
}

// ListTenants returns the tenants p may see.
func (s *State) ListTenants(ctx context.Context, p *Principal) ([]*store.Tenant, error) {
	ts, err := store.Read(ctx, s.store, func(tx *store.Tx) ([]*store.Tenant, error) { return tx.ListTenants(ctx) })
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(ts, func(t *store.Tenant) bool { return !p.canSee(t.ID) }), nil
}

// GetTenant returns one tenant by id or name.
func (s *State) GetTenant(ctx context.Context, p *Principal, ref string) (*store.Tenant, error) {
	return store.Read(ctx, s.store, func(tx *store.Tx) (*store.Tenant, error) { return tenantFor(ctx, tx, p, ref) })
}

// DeleteTenant removes a tenant with all its sites, appliances and tokens.
// Operators only. Its appliances lose their netmaps and credentials at once.
func (s *State) DeleteTenant(ctx context.Context, p *Principal, ref string) error {
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		// Resolve first, so that another tenant's admin hears "not found".
		t, err := tenantFor(ctx, tx, p, ref)
		if err != nil {
			return 0, err
		}
		if err := requireOperator(p); err != nil {
			return 0, err
		}
		if err := tx.DeleteTenant(ctx, t.ID); err != nil {
			return 0, storeErr(err)
		}
		return s.record(ctx, tx, t.ID, "tenant.delete", t.ID)
	})
	if err != nil {
		return err
	}
	s.awaitApplied(ctx, seq)
	return nil
}

// Limits on what one site may hold.
const (
	MaxSitePrefixes = 64
	MaxEndpoints    = 16
)

// SiteInput describes a site to create.
type SiteInput struct {
	Name        string
	Kind        store.SiteKind
	LANPrefixes []netip.Prefix
}

// SiteUpdate changes a site; nil fields are left as they are.
type SiteUpdate struct {
	Name        *string
	Kind        *store.SiteKind
	LANPrefixes *[]netip.Prefix
}

func siteFor(ctx context.Context, tx *store.Tx, tenantID, ref string) (*store.Site, error) {
	var site *store.Site
	var err error
	if isID(ref, prefixSite) {
		site, err = tx.SiteByID(ctx, tenantID, ref)
	} else {
		site, err = tx.SiteByName(ctx, tenantID, ref)
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("site", ref)
	}
	return site, err
}

// checkSite validates a site's fields against the rules and against the
// tenant's other sites (names unique, LAN prefixes disjoint).
func checkSite(f *fields, site *store.Site, others []*store.Site) {
	if !validName(site.Name) {
		f.add("name", nameRule, site.Name)
	}
	if !site.Kind.Valid() {
		f.add("kind", "want one of %v, got %q", store.SiteKinds, site.Kind)
	}
	if len(site.LANPrefixes) > MaxSitePrefixes {
		f.add("lan_prefixes", "at most %d prefixes, got %d", MaxSitePrefixes, len(site.LANPrefixes))
		return
	}
	for i, p := range site.LANPrefixes {
		field := fmt.Sprintf("lan_prefixes[%d]", i)
		if _, err := netmap.ParseLANPrefix(p.String()); err != nil || !p.IsValid() {
			f.add(field, "%v", err)
			continue
		}
		for j, q := range site.LANPrefixes[:i] {
			if p.Overlaps(q) {
				f.add(field, "%s overlaps %s (lan_prefixes[%d])", p, q, j)
			}
		}
	}
	for _, o := range others {
		if o.ID == site.ID {
			continue
		}
		if o.Name == site.Name {
			f.add("name", "the tenant already has a site named %q", site.Name)
		}
		for i, p := range site.LANPrefixes {
			for _, q := range o.LANPrefixes {
				if p.Overlaps(q) {
					f.add(fmt.Sprintf("lan_prefixes[%d]", i), "%s overlaps %s of site %q", p, q, o.Name)
				}
			}
		}
	}
}

// validateSite checks site against the tenant's other sites (checkSite).
func validateSite(ctx context.Context, tx *store.Tx, site *store.Site) error {
	others, err := tx.ListSites(ctx, site.TenantID)
	if err != nil {
		return err
	}
	var f fields
	checkSite(&f, site, others)
	return f.err()
}

// CreateSite adds a site to a tenant.
func (s *State) CreateSite(ctx context.Context, p *Principal, tenantRef string, in SiteInput) (*store.Site, error) {
	site := &store.Site{ID: newID(prefixSite), Name: in.Name, Kind: in.Kind, LANPrefixes: slices.Clone(in.LANPrefixes), CreatedAt: s.now()}
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return 0, err
		}
		site.TenantID = t.ID
		if err := validateSite(ctx, tx, site); err != nil {
			return 0, err
		}
		if err := tx.InsertSite(ctx, site); err != nil {
			return 0, storeErr(err)
		}
		return s.record(ctx, tx, t.ID, "site.create", site.ID)
	})
	if err != nil {
		return nil, err
	}
	s.awaitApplied(ctx, seq)
	return site, nil
}

// ListSites returns a tenant's sites.
func (s *State) ListSites(ctx context.Context, p *Principal, tenantRef string) ([]*store.Site, error) {
	return store.Read(ctx, s.store, func(tx *store.Tx) ([]*store.Site, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return nil, err
		}
		return tx.ListSites(ctx, t.ID)
	})
}

// GetSite returns one site by id or name.
func (s *State) GetSite(ctx context.Context, p *Principal, tenantRef, siteRef string) (*store.Site, error) {
	return store.Read(ctx, s.store, func(tx *store.Tx) (*store.Site, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return nil, err
		}
		return siteFor(ctx, tx, t.ID, siteRef)
	})
}

// UpdateSite changes a site. A change of LAN prefixes reaches every
// appliance of the tenant.
func (s *State) UpdateSite(ctx context.Context, p *Principal, tenantRef, siteRef string, up SiteUpdate) (*store.Site, error) {
	var site *store.Site
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return 0, err
		}
		if site, err = siteFor(ctx, tx, t.ID, siteRef); err != nil {
			return 0, err
		}
		if up.Name != nil {
			site.Name = *up.Name
		}
		if up.Kind != nil {
			site.Kind = *up.Kind
		}
		if up.LANPrefixes != nil {
			site.LANPrefixes = slices.Clone(*up.LANPrefixes)
		}
		if err := validateSite(ctx, tx, site); err != nil {
			return 0, err
		}
		if err := tx.UpdateSite(ctx, site); err != nil {
			return 0, storeErr(err)
		}
		return s.record(ctx, tx, t.ID, "site.update", site.ID)
	})
	if err != nil {
		return nil, err
	}
	s.awaitApplied(ctx, seq)
	return site, nil
}

// DeleteSite removes a site. A site with live appliances is refused:
// revoke them first.
func (s *State) DeleteSite(ctx context.Context, p *Principal, tenantRef, siteRef string) error {
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return 0, err
		}
		site, err := siteFor(ctx, tx, t.ID, siteRef)
		if err != nil {
			return 0, err
		}
		n, err := tx.CountLiveAppliances(ctx, t.ID, site.ID)
		if err != nil {
			return 0, err
		}
		if n > 0 {
			return 0, errorf(CodeConflict, "site %q still has %d live appliance(s); revoke them first", site.Name, n)
		}
		if err := tx.DeleteSite(ctx, t.ID, site.ID); err != nil {
			return 0, storeErr(err)
		}
		return s.record(ctx, tx, t.ID, "site.delete", site.ID)
	})
	if err != nil {
		return err
	}
	s.awaitApplied(ctx, seq)
	return nil
}
