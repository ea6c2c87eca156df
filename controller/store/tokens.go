package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

const enrollCols = "id, tenant_id, site_id, secret_hash, description, created_at, expires_at, used_at, appliance_id"

func scanEnrollment(sc interface{ Scan(...any) error }) (*EnrollmentToken, error) {
	var e EnrollmentToken
	var created, expires, used int64
	if err := sc.Scan(&e.ID, &e.TenantID, &e.SiteID, &e.SecretHash, &e.Description, &created, &expires, &used, &e.ApplianceID); err != nil {
		return nil, err
	}
	e.CreatedAt, e.ExpiresAt, e.UsedAt = fromMillis(created), fromMillis(expires), fromMillis(used)
	return &e, nil
}

// InsertEnrollmentToken adds an enrollment token.
func (t *Tx) InsertEnrollmentToken(ctx context.Context, e *EnrollmentToken) error {
	_, err := t.exec(ctx, "INSERT INTO enrollment_tokens ("+enrollCols+") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
		e.ID, e.TenantID, e.SiteID, e.SecretHash, e.Description, millis(e.CreatedAt), millis(e.ExpiresAt), millis(e.UsedAt), e.ApplianceID)
	return err
}

// EnrollmentTokenByHash finds an enrollment token by the hash of its secret.
func (t *Tx) EnrollmentTokenByHash(ctx context.Context, hash string) (*EnrollmentToken, error) {
	v, err := scanEnrollment(t.queryRow(ctx, "SELECT "+enrollCols+" FROM enrollment_tokens WHERE secret_hash = $1", hash))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("enrollment token: %w", ErrNotFound)
	}
	return v, err
}

// EnrollmentTokenByID returns one enrollment token of a tenant.
func (t *Tx) EnrollmentTokenByID(ctx context.Context, tenantID, id string) (*EnrollmentToken, error) {
	v, err := scanEnrollment(t.queryRow(ctx, "SELECT "+enrollCols+" FROM enrollment_tokens WHERE tenant_id = $1 AND id = $2", tenantID, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("enrollment token %q: %w", id, ErrNotFound)
	}
	return v, err
}

// ListEnrollmentTokens returns a tenant's enrollment tokens, newest first.
func (t *Tx) ListEnrollmentTokens(ctx context.Context, tenantID string) ([]*EnrollmentToken, error) {
	rows, err := t.query(ctx, "SELECT "+enrollCols+" FROM enrollment_tokens WHERE tenant_id = $1 ORDER BY created_at DESC, id", tenantID)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanEnrollment)
}

// UseEnrollmentToken marks a token used by an appliance. It fails with
// ErrConflict if the token was already used, so that two appliances racing
// on one token cannot both win.
func (t *Tx) UseEnrollmentToken(ctx context.Context, id, applianceID string, at time.Time) error {
	r, err := t.exec(ctx, "UPDATE enrollment_tokens SET used_at = $2, appliance_id = $3 WHERE id = $1 AND used_at = 0", id, millis(at), applianceID)
	if err := mustAffect(r, err, "unused enrollment token "+id); errors.Is(err, ErrNotFound) {
		return fmt.Errorf("enrollment token %s already used: %w", id, ErrConflict)
	} else if err != nil {
		return err
	}
	return nil
}

// DeleteEnrollmentToken removes an enrollment token.
func (t *Tx) DeleteEnrollmentToken(ctx context.Context, tenantID, id string) error {
	r, err := t.exec(ctx, "DELETE FROM enrollment_tokens WHERE tenant_id = $1 AND id = $2", tenantID, id)
	return mustAffect(r, err, "enrollment token "+id)
}

const apiTokenCols = "id, secret_hash, scope, tenant_id, description, created_at, expires_at, last_used_at"

func scanAPIToken(sc interface{ Scan(...any) error }) (*APIToken, error) {
	var a APIToken
	var scope string
	var tenant sql.NullString
	var created, expires, used int64
	if err := sc.Scan(&a.ID, &a.SecretHash, &scope, &tenant, &a.Description, &created, &expires, &used); err != nil {
		return nil, err
	}
	a.Scope, a.TenantID = Scope(scope), tenant.String
	a.CreatedAt, a.ExpiresAt, a.LastUsedAt = fromMillis(created), fromMillis(expires), fromMillis(used)
	return &a, nil
}

// InsertAPIToken adds an API token.
func (t *Tx) InsertAPIToken(ctx context.Context, a *APIToken) error {
	tenant := sql.NullString{String: a.TenantID, Valid: a.TenantID != ""}
	_, err := t.exec(ctx, "INSERT INTO api_tokens ("+apiTokenCols+") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
		a.ID, a.SecretHash, string(a.Scope), tenant, a.Description, millis(a.CreatedAt), millis(a.ExpiresAt), millis(a.LastUsedAt))
	return err
}

// APITokenByHash finds an API token by the hash of its secret.
func (t *Tx) APITokenByHash(ctx context.Context, hash string) (*APIToken, error) {
	v, err := scanAPIToken(t.queryRow(ctx, "SELECT "+apiTokenCols+" FROM api_tokens WHERE secret_hash = $1", hash))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("API token: %w", ErrNotFound)
	}
	return v, err
}

// APITokenByID returns one API token. An empty tenantID matches operator
// tokens only.
func (t *Tx) APITokenByID(ctx context.Context, tenantID, id string) (*APIToken, error) {
	var row *sql.Row
	if tenantID == "" {
		row = t.queryRow(ctx, "SELECT "+apiTokenCols+" FROM api_tokens WHERE tenant_id IS NULL AND id = $1", id)
	} else {
		row = t.queryRow(ctx, "SELECT "+apiTokenCols+" FROM api_tokens WHERE tenant_id = $1 AND id = $2", tenantID, id)
	}
	v, err := scanAPIToken(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("API token %q: %w", id, ErrNotFound)
	}
	return v, err
}

// ListAPITokens returns a tenant's API tokens, or the operator tokens for an
// empty tenantID, newest first.
func (t *Tx) ListAPITokens(ctx context.Context, tenantID string) ([]*APIToken, error) {
	var rows *sql.Rows
	var err error
	if tenantID == "" {
		rows, err = t.query(ctx, "SELECT "+apiTokenCols+" FROM api_tokens WHERE tenant_id IS NULL ORDER BY created_at DESC, id")
	} else {
		rows, err = t.query(ctx, "SELECT "+apiTokenCols+" FROM api_tokens WHERE tenant_id = $1 ORDER BY created_at DESC, id", tenantID)
	}
	if err != nil {
		return nil, err
	}
	return collect(rows, scanAPIToken)
}

// CountAPITokens counts every API token.
func (t *Tx) CountAPITokens(ctx context.Context) (int, error) {
	var n int
	err := t.queryRow(ctx, "SELECT COUNT(*) FROM api_tokens").Scan(&n)
	return n, err
}

// DeleteAPIToken removes an API token (see APITokenByID for tenantID).
func (t *Tx) DeleteAPIToken(ctx context.Context, tenantID, id string) error {
	var r sql.Result
	var err error
	if tenantID == "" {
		r, err = t.exec(ctx, "DELETE FROM api_tokens WHERE tenant_id IS NULL AND id = $1", id)
	} else {
		r, err = t.exec(ctx, "DELETE FROM api_tokens WHERE tenant_id = $1 AND id = $2", tenantID, id)
	}
	return mustAffect(r, err, "API token "+id)
}

// TouchAPIToken records when a token was last used.
func (t *Tx) TouchAPIToken(ctx context.Context, id string, at time.Time) error {
	_, err := t.exec(ctx, "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1", id, millis(at))
	return err
}
