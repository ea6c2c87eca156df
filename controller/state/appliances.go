package state

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/controller/store"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// EnrollInput is what an appliance sends to enrol.
type EnrollInput struct {
	// Token is the enrollment token's secret.
	Token string
	// Tenant and Site, if set, are the id or name of the tenant and site the
	// appliance was told to join; a token for another one is refused.
	Tenant, Site string
	// Name is the appliance's name; empty picks "<site>-<n>".
	Name string
	// PublicKey is the WireGuard key the appliance generated.
	PublicKey wgkey.PublicKey
	Endpoints []netip.AddrPort
}

// Enrolled is the result of a successful enrollment.
type Enrolled struct {
	Appliance *store.Appliance
	// Credential is the device credential, shown this once; the appliance
	// presents it on every sync.
	Credential string
	Netmap     *netmap.Netmap
}

func checkEndpoints(f *fields, eps []netip.AddrPort) {
	if len(eps) > MaxEndpoints {
		f.add("endpoints", "at most %d endpoints, got %d", MaxEndpoints, len(eps))
		return
	}
	for i, ep := range eps {
		if _, err := netmap.ParseEndpoint(ep.String()); err != nil || !ep.IsValid() {
			f.add(fmt.Sprintf("endpoints[%d]", i), "%v", err)
		}
		if slices.Contains(eps[:i], ep) {
			f.add(fmt.Sprintf("endpoints[%d]", i), "%s is listed twice", ep)
		}
	}
}

// Enroll spends an enrollment token and creates the appliance.
func (s *State) Enroll(ctx context.Context, in EnrollInput) (*Enrolled, error) {
	if in.Token == "" {
		return nil, &Error{Code: CodeTokenInvalid, Msg: "enrollment token missing", Fields: []FieldError{{"token", "required"}}}
	}
	var f fields
	if in.PublicKey.IsZero() {
		f.add("public_key", "required (the WireGuard public key generated on the appliance)")
	}
	if in.Name != "" && !validName(in.Name) {
		f.add("name", nameRule, in.Name)
	}
	checkEndpoints(&f, in.Endpoints)
	if err := f.err(); err != nil {
		return nil, err
	}
	credential, credHash := newSecret(SecretDevice)
	now := s.now()
	a := &store.Appliance{ID: newID(prefixAppliance), Name: in.Name, PublicKey: in.PublicKey, Endpoints: slices.Clone(in.Endpoints),
		State: store.ApplianceActive, CredentialHash: credHash, CreatedAt: now, Priority: netmap.DefaultPriority}
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		et, err := tx.EnrollmentTokenByHash(ctx, hashSecret(in.Token))
		if errors.Is(err, store.ErrNotFound) {
			return 0, errorf(CodeTokenInvalid, "enrollment token not recognised")
		}
		if err != nil {
			return 0, err
		}
		if !et.UsedAt.IsZero() {
			return 0, errorf(CodeTokenUsed, "enrollment token %s was already used at %s; ask for a new one", et.ID, et.UsedAt.Format(time.RFC3339))
		}
		if !now.Before(et.ExpiresAt) {
			return 0, errorf(CodeTokenExpired, "enrollment token %s expired at %s; ask for a new one", et.ID, et.ExpiresAt.Format(time.RFC3339))
		}
		t, err := tx.TenantByID(ctx, et.TenantID)
		if err != nil {
			return 0, err
		}
		site, err := tx.SiteByID(ctx, et.TenantID, et.SiteID)
		if err != nil {
			return 0, err
		}
		if in.Tenant != "" && in.Tenant != t.ID && in.Tenant != t.Name {
			return 0, &Error{Code: CodeTokenScope, Msg: "enrollment token is for another tenant", Fields: []FieldError{{"tenant", fmt.Sprintf("the token is not for tenant %q", in.Tenant)}}}
		}
		if in.Site != "" && in.Site != site.ID && in.Site != site.Name {
			return 0, &Error{Code: CodeTokenScope, Msg: "enrollment token is for another site", Fields: []FieldError{{"site", fmt.Sprintf("the token is not for site %q", in.Site)}}}
		}
		live, err := tx.ListAppliances(ctx, t.ID)
		if err != nil {
			return 0, err
		}
		if err := checkPairRoom(live, site, "token"); err != nil {
			return 0, err
		}
		names := map[string]bool{}
		for _, o := range live {
			if o.State == store.ApplianceRevoked {
				continue
			}
			names[o.Name] = true
			if o.PublicKey == in.PublicKey {
				return 0, &Error{Code: CodeConflict, Msg: "key in use", Fields: []FieldError{{"public_key", fmt.Sprintf("appliance %q already has this key", o.Name)}}}
			}
		}
		if a.Name == "" {
			base := site.Name
			if len(base) > 50 {
				base = strings.TrimRight(base[:50], "-")
			}
			for n := 1; ; n++ {
				if c := fmt.Sprintf("%s-%d", base, n); !names[c] {
					a.Name = c
					break
				}
			}
		} else if names[a.Name] {
			return 0, &Error{Code: CodeConflict, Msg: "name in use", Fields: []FieldError{{"name", fmt.Sprintf("the tenant already has an appliance named %q", a.Name)}}}
		}
		used, err := tx.ApplianceAddrs(ctx, t.ID)
		if err != nil {
			return 0, err
		}
		addr, ok := allocAddr(used)
		if !ok {
			return 0, errorf(CodeConflict, "tenant %q has no overlay address left", t.Name)
		}
		a.TenantID, a.SiteID, a.OverlayAddr = t.ID, site.ID, addr
		if err := tx.InsertAppliance(ctx, a); err != nil {
			return 0, storeErr(err)
		}
		if err := tx.UseEnrollmentToken(ctx, et.ID, a.ID, now); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return 0, errorf(CodeTokenUsed, "enrollment token %s was already used", et.ID)
			}
			return 0, err
		}
		return s.record(ctx, tx, t.ID, "appliance.enroll", a.ID)
	})
	if err != nil {
		return nil, err
	}
	s.awaitApplied(ctx, seq)
	return &Enrolled{Appliance: a, Credential: credential, Netmap: s.currentNetmap(a.ID)}, nil
}

// ApplianceInfo is an appliance as the API shows it.
type ApplianceInfo struct {
	*store.Appliance
	// Connected reports whether the appliance holds a sync request on this
	// controller replica.
	Connected bool
	// NetmapVersion is the version of its current netmap, 0 if it has none.
	NetmapVersion uint64
}

func (s *State) info(a *store.Appliance) *ApplianceInfo {
	ai := &ApplianceInfo{Appliance: a, Connected: s.hub.IsConnected(a.ID)}
	if nm := s.hub.Current(a.ID); nm != nil {
		ai.NetmapVersion = nm.Version
	}
	return ai
}

func applianceFor(ctx context.Context, tx *store.Tx, tenantID, ref string) (*store.Appliance, error) {
	var a *store.Appliance
	var err error
	if isID(ref, prefixAppliance) {
		a, err = tx.ApplianceByID(ctx, tenantID, ref)
	} else {
		a, err = tx.ApplianceByName(ctx, tenantID, ref)
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, notFound("appliance", ref)
	}
	return a, err
}

// ListAppliances returns a tenant's appliances, revoked ones included.
func (s *State) ListAppliances(ctx context.Context, p *Principal, tenantRef string) ([]*ApplianceInfo, error) {
	apps, err := store.Read(ctx, s.store, func(tx *store.Tx) ([]*store.Appliance, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return nil, err
		}
		return tx.ListAppliances(ctx, t.ID)
	})
	if err != nil {
		return nil, err
	}
	out := make([]*ApplianceInfo, len(apps))
	for i, a := range apps {
		out[i] = s.info(a)
	}
	return out, nil
}

// GetAppliance returns one appliance by id or name.
func (s *State) GetAppliance(ctx context.Context, p *Principal, tenantRef, ref string) (*ApplianceInfo, error) {
	a, err := store.Read(ctx, s.store, func(tx *store.Tx) (*store.Appliance, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return nil, err
		}
		return applianceFor(ctx, tx, t.ID, ref)
	})
	if err != nil {
		return nil, err
	}
	return s.info(a), nil
}

// ApplianceUpdate changes an appliance; nil fields are left as they are.
type ApplianceUpdate struct {
	Endpoints *[]netip.AddrPort
	// Priority is the appliance's priority in its site's pair, 0 to
	// netmap.MaxPriority, higher preferred.
	Priority *int
}

// UpdateAppliance changes a live appliance; every peer sees the change.
func (s *State) UpdateAppliance(ctx context.Context, p *Principal, tenantRef, ref string, up ApplianceUpdate) (*ApplianceInfo, error) {
	var f fields
	if up.Endpoints != nil {
		checkEndpoints(&f, *up.Endpoints)
	}
	if up.Priority != nil {
		checkPriority(&f, *up.Priority)
	}
	if err := f.err(); err != nil {
		return nil, err
	}
	var a *store.Appliance
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return 0, err
		}
		if a, err = applianceFor(ctx, tx, t.ID, ref); err != nil {
			return 0, err
		}
		if a.State == store.ApplianceRevoked {
			return 0, errorf(CodeConflict, "appliance %q is revoked", a.Name)
		}
		if up.Endpoints != nil {
			a.Endpoints = slices.Clone(*up.Endpoints)
			if err := tx.UpdateApplianceEndpoints(ctx, t.ID, a.ID, a.Endpoints); err != nil {
				return 0, err
			}
		}
		if up.Priority != nil {
			a.Priority = *up.Priority
			if err := tx.UpdateAppliancePriority(ctx, t.ID, a.ID, a.Priority); err != nil {
				return 0, err
			}
		}
		return s.record(ctx, tx, t.ID, "appliance.update", a.ID)
	})
	if err != nil {
		return nil, err
	}
	s.awaitApplied(ctx, seq)
	return s.info(a), nil
}

// RevokeAppliance refuses the appliance's credential from now on and
// removes it from every peer's netmap. Revoking twice is a no-op.
func (s *State) RevokeAppliance(ctx context.Context, p *Principal, tenantRef, ref string) (*ApplianceInfo, error) {
	var a *store.Appliance
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return 0, err
		}
		if a, err = applianceFor(ctx, tx, t.ID, ref); err != nil {
			return 0, err
		}
		if a.State == store.ApplianceRevoked {
			return 0, nil
		}
		a.State, a.RevokedAt = store.ApplianceRevoked, s.now()
		if err := tx.RevokeAppliance(ctx, t.ID, a.ID, a.RevokedAt); err != nil {
			return 0, storeErr(err)
		}
		return s.record(ctx, tx, t.ID, "appliance.revoke", a.ID)
	})
	if err != nil {
		return nil, err
	}
	s.awaitApplied(ctx, seq)
	return s.info(a), nil
}

// ApplianceNetmap returns the netmap currently compiled for an appliance.
func (s *State) ApplianceNetmap(ctx context.Context, p *Principal, tenantRef, ref string) (*netmap.Netmap, error) {
	ai, err := s.GetAppliance(ctx, p, tenantRef, ref)
	if err != nil {
		return nil, err
	}
	nm := s.currentNetmap(ai.ID)
	if nm == nil {
		return nil, errorf(CodeNotFound, "appliance %q has no netmap (state %s)", ai.Name, ai.State)
	}
	return nm, nil
}

// Device is an authenticated appliance.
type Device struct {
	TenantID, ApplianceID string
}

// AuthenticateDevice checks a device credential. An appliance enrolled
// through another replica moments ago is found in the store and waited
// for.
func (s *State) AuthenticateDevice(ctx context.Context, credential string) (*Device, error) {
	hash := hashSecret(credential)
	s.mu.Lock()
	ref, ok := s.devices[hash]
	s.mu.Unlock()
	if !ok {
		type found struct {
			a    *store.Appliance
			last int64
		}
		fd, err := store.Read(ctx, s.store, func(tx *store.Tx) (*found, error) {
			a, err := tx.ApplianceByCredential(ctx, hash)
			if errors.Is(err, store.ErrNotFound) {
				return &found{}, nil
			}
			if err != nil {
				return nil, err
			}
			last, err := tx.LastChangeID(ctx)
			return &found{a, last}, err
		})
		if err != nil {
			return nil, err
		}
		if fd.a == nil {
			return nil, errorf(CodeUnauthenticated, "unknown device credential")
		}
		if fd.a.State == store.ApplianceRevoked {
			return nil, errorf(CodeUnauthenticated, "appliance %s is revoked", fd.a.ID)
		}
		s.awaitApplied(ctx, fd.last)
		s.mu.Lock()
		ref, ok = s.devices[hash]
		s.mu.Unlock()
		if !ok {
			return nil, errorf(CodeUnauthenticated, "appliance %s is not active", fd.a.ID)
		}
	}
	s.touch(ctx, ref.applianceID)
	return &Device{TenantID: ref.tenantID, ApplianceID: ref.applianceID}, nil
}

// touch records, at most once a minute per appliance, that it was heard
// from. It writes no change: nothing a peer sees depends on it.
func (s *State) touch(ctx context.Context, id string) {
	now := s.now()
	s.mu.Lock()
	if s.seen == nil {
		s.seen = map[string]time.Time{}
	}
	if now.Sub(s.seen[id]) < time.Minute {
		s.mu.Unlock()
		return
	}
	s.seen[id] = now
	s.mu.Unlock()
	if _, err := store.Write(ctx, s.store, func(tx *store.Tx) (struct{}, error) {
		return struct{}{}, tx.TouchAppliance(ctx, id, now)
	}); err != nil {
		s.log.Warn("recording last seen", "appliance", id, "err", err)
	}
}

// Sync returns the device's netmap once its version is above since, or
// ctx.Err() when ctx ends first. A device revoked while waiting gets
// CodeUnauthenticated; a closing controller push.ErrClosed.
//
// Versions are change-feed ids, so no netmap is newer than the feed. A
// since beyond it means this replica lags (it catches up within a poll) or
// the database was restored from a backup; in the second case the
// appliance gets the current netmap rather than waiting for the feed to
// catch up with a version it will never see again.
func (s *State) Sync(ctx context.Context, d *Device, since uint64) (*netmap.Netmap, error) {
	nm, _, err := s.wait(ctx, d, since)
	if err != nil {
		return nil, err
	}
	return nm.Full(), nil
}
