package state

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/causeway-net/causeway/controller/store"
)

// Enrollment token lifetimes.
const (
	DefaultEnrollmentTTL = time.Hour
	MaxEnrollmentTTL     = 30 * 24 * time.Hour
	MaxDescription       = 200
)

// EnrollmentTokenInput describes an enrollment token to create.
type EnrollmentTokenInput struct {
	// Site is the id or name of the site the token enrols into.
	Site string
	// TTL is how long the token stays valid; 0 means DefaultEnrollmentTTL.
	TTL         time.Duration
	Description string
}

// CreateEnrollmentToken makes a one-time token for enrolling one appliance
// into a site. The secret is returned once; only its hash is stored.
func (s *State) CreateEnrollmentToken(ctx context.Context, p *Principal, tenantRef string, in EnrollmentTokenInput) (*store.EnrollmentToken, string, error) {
	var f fields
	ttl := in.TTL
	if ttl == 0 {
		ttl = DefaultEnrollmentTTL
	}
	if ttl < time.Minute || ttl > MaxEnrollmentTTL {
		f.add("ttl", "want 1m to %s, got %s", MaxEnrollmentTTL, ttl)
	}
	if len(in.Description) > MaxDescription {
		f.add("description", "at most %d bytes", MaxDescription)
	}
	if in.Site == "" {
		f.add("site", "required (the id or name of the site to enrol into)")
	}
	if err := f.err(); err != nil {
		return nil, "", err
	}
	secret, hash := newSecret(SecretEnrollment)
	now := s.now()
	et := &store.EnrollmentToken{ID: newID(prefixEnrollment), SecretHash: hash, Description: in.Description,
		CreatedAt: now, ExpiresAt: now.Add(ttl)}
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return 0, err
		}
		site, err := siteFor(ctx, tx, t.ID, in.Site)
		if err != nil {
			return 0, &Error{Code: CodeInvalid, Msg: "invalid input", Fields: []FieldError{{"site", err.Error()}}}
		}
		apps, err := tx.ListAppliances(ctx, t.ID)
		if err != nil {
			return 0, err
		}
		if err := checkPairRoom(apps, site, "site"); err != nil {
			return 0, err
		}
		et.TenantID, et.SiteID = t.ID, site.ID
		if err := tx.InsertEnrollmentToken(ctx, et); err != nil {
			return 0, storeErr(err)
		}
		return s.record(ctx, tx, t.ID, "enrollment-token.create", et.ID)
	})
	if err != nil {
		return nil, "", err
	}
	s.awaitApplied(ctx, seq)
	return et, secret, nil
}

// ListEnrollmentTokens returns a tenant's enrollment tokens (without
// secrets).
func (s *State) ListEnrollmentTokens(ctx context.Context, p *Principal, tenantRef string) ([]*store.EnrollmentToken, error) {
	return store.Read(ctx, s.store, func(tx *store.Tx) ([]*store.EnrollmentToken, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return nil, err
		}
		return tx.ListEnrollmentTokens(ctx, t.ID)
	})
}

// GetEnrollmentToken returns one enrollment token by id.
func (s *State) GetEnrollmentToken(ctx context.Context, p *Principal, tenantRef, id string) (*store.EnrollmentToken, error) {
	return store.Read(ctx, s.store, func(tx *store.Tx) (*store.EnrollmentToken, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return nil, err
		}
		et, err := tx.EnrollmentTokenByID(ctx, t.ID, id)
		if errors.Is(err, store.ErrNotFound) {
			return nil, notFound("enrollment token", id)
		}
		return et, err
	})
}

// DeleteEnrollmentToken withdraws an enrollment token.
func (s *State) DeleteEnrollmentToken(ctx context.Context, p *Principal, tenantRef, id string) error {
	seq, err := store.Write(ctx, s.store, func(tx *store.Tx) (int64, error) {
		t, err := tenantFor(ctx, tx, p, tenantRef)
		if err != nil {
			return 0, err
		}
		if err := tx.DeleteEnrollmentToken(ctx, t.ID, id); errors.Is(err, store.ErrNotFound) {
			return 0, notFound("enrollment token", id)
		} else if err != nil {
			return 0, err
		}
		return s.record(ctx, tx, t.ID, "enrollment-token.delete", id)
	})
	if err != nil {
		return err
	}
	s.awaitApplied(ctx, seq)
	return nil
}

// APITokenInput describes an API token to create.
type APITokenInput struct {
	Description string
	// TTL is how long the token stays valid; 0 means forever.
	TTL time.Duration
}

// CreateAPIToken makes an API token. With an empty tenantRef it makes an
// operator token, which only an operator may do; otherwise a tenant-admin
// token for that tenant. The secret is returned once.
func (s *State) CreateAPIToken(ctx context.Context, p *Principal, tenantRef string, in APITokenInput) (*store.APIToken, string, error) {
	var f fields
	if in.TTL < 0 || (in.TTL > 0 && in.TTL < time.Minute) {
		f.add("ttl", "want at least 1m, or 0 for no expiry, got %s", in.TTL)
	}
	if len(in.Description) > MaxDescription {
		f.add("description", "at most %d bytes", MaxDescription)
	}
	if err := f.err(); err != nil {
		return nil, "", err
	}
	if tenantRef == "" {
		if err := requireOperator(p); err != nil {
			return nil, "", err
		}
	}
	secret, hash := newSecret(SecretAPIToken)
	now := s.now()
	at := &store.APIToken{ID: newID(prefixAPIToken), SecretHash: hash, Scope: store.ScopeOperator, Description: in.Description, CreatedAt: now}
	if in.TTL > 0 {
		at.ExpiresAt = now.Add(in.TTL)
	}
	_, err := store.Write(ctx, s.store, func(tx *store.Tx) (struct{}, error) {
		if tenantRef != "" {
			t, err := tenantFor(ctx, tx, p, tenantRef)
			if err != nil {
				return struct{}{}, err
			}
			at.Scope, at.TenantID = store.ScopeTenantAdmin, t.ID
		}
		return struct{}{}, storeErr(tx.InsertAPIToken(ctx, at))
	})
	if err != nil {
		return nil, "", err
	}
	return at, secret, nil
}

// ListAPITokens returns a tenant's API tokens, or with an empty tenantRef
// the operator tokens (operators only).
func (s *State) ListAPITokens(ctx context.Context, p *Principal, tenantRef string) ([]*store.APIToken, error) {
	if tenantRef == "" {
		if err := requireOperator(p); err != nil {
			return nil, err
		}
	}
	return store.Read(ctx, s.store, func(tx *store.Tx) ([]*store.APIToken, error) {
		id := ""
		if tenantRef != "" {
			t, err := tenantFor(ctx, tx, p, tenantRef)
			if err != nil {
				return nil, err
			}
			id = t.ID
		}
		return tx.ListAPITokens(ctx, id)
	})
}

// DeleteAPIToken revokes an API token (see ListAPITokens for tenantRef).
// It takes effect on the next request.
func (s *State) DeleteAPIToken(ctx context.Context, p *Principal, tenantRef, id string) error {
	if tenantRef == "" {
		if err := requireOperator(p); err != nil {
			return err
		}
	}
	_, err := store.Write(ctx, s.store, func(tx *store.Tx) (struct{}, error) {
		tid := ""
		if tenantRef != "" {
			t, err := tenantFor(ctx, tx, p, tenantRef)
			if err != nil {
				return struct{}{}, err
			}
			tid = t.ID
		}
		if err := tx.DeleteAPIToken(ctx, tid, id); errors.Is(err, store.ErrNotFound) {
			return struct{}{}, notFound("API token", id)
		} else if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, nil
	})
	return err
}

// AuthenticateAPIToken checks an API token's secret.
func (s *State) AuthenticateAPIToken(ctx context.Context, secret string) (*Principal, error) {
	at, err := store.Read(ctx, s.store, func(tx *store.Tx) (*store.APIToken, error) {
		return tx.APITokenByHash(ctx, hashSecret(secret))
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, errorf(CodeUnauthenticated, "unknown API token")
	}
	if err != nil {
		return nil, err
	}
	now := s.now()
	if !at.ExpiresAt.IsZero() && !now.Before(at.ExpiresAt) {
		return nil, errorf(CodeUnauthenticated, "API token %s expired at %s", at.ID, at.ExpiresAt.Format(time.RFC3339))
	}
	if now.Sub(at.LastUsedAt) > time.Minute {
		store.Write(ctx, s.store, func(tx *store.Tx) (struct{}, error) {
			return struct{}{}, tx.TouchAPIToken(ctx, at.ID, now)
		})
	}
	return &Principal{TokenID: at.ID, Scope: at.Scope, TenantID: at.TenantID}, nil
}

// Bootstrap creates the first operator token when the store has no API
// token at all, and returns its secret; it returns "" when tokens exist.
// Replicas racing on an empty store create one token between them.
func (s *State) Bootstrap(ctx context.Context) (string, error) {
	secret, hash := newSecret(SecretAPIToken)
	created, err := store.Write(ctx, s.store, func(tx *store.Tx) (bool, error) {
		n, err := tx.CountAPITokens(ctx)
		if err != nil || n > 0 {
			return false, err
		}
		return true, tx.InsertAPIToken(ctx, &store.APIToken{ID: newID(prefixAPIToken), SecretHash: hash, Scope: store.ScopeOperator,
			Description: "bootstrap operator token", CreatedAt: s.now()})
	})
	if err != nil {
		return "", fmt.Errorf("state: bootstrap: %w", err)
	}
	if !created {
		return "", nil
	}
	return secret, nil
}
