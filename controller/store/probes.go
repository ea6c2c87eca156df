package store

import (
	"context"
	"encoding/base64"
	"fmt"
)

// SitePair orders two site ids the way sla_overrides stores them.
func SitePair(a, b string) (string, string) {
	if b < a {
		return b, a
	}
	return a, b
}

// PutSLAOverride sets the SLA of a pair of sites, replacing any it had.
func (t *Tx) PutSLAOverride(ctx context.Context, o *SLAOverride) error {
	a, b := SitePair(o.SiteA, o.SiteB)
	_, err := t.exec(ctx, `INSERT INTO sla_overrides (tenant_id, site_a, site_b, max_loss_percent, max_rtt_ms, max_jitter_ms, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (tenant_id, site_a, site_b) DO UPDATE SET max_loss_percent = excluded.max_loss_percent,
    max_rtt_ms = excluded.max_rtt_ms, max_jitter_ms = excluded.max_jitter_ms, updated_at = excluded.updated_at`,
		o.TenantID, a, b, o.SLA.MaxLossPercent, o.SLA.MaxRTTMillis, o.SLA.MaxJitterMillis, millis(o.UpdatedAt))
	return err
}

// DeleteSLAOverride removes the override of a pair of sites.
func (t *Tx) DeleteSLAOverride(ctx context.Context, tenantID, siteA, siteB string) error {
	a, b := SitePair(siteA, siteB)
	r, err := t.exec(ctx, "DELETE FROM sla_overrides WHERE tenant_id = $1 AND site_a = $2 AND site_b = $3", tenantID, a, b)
	return mustAffect(r, err, fmt.Sprintf("SLA override %s/%s", a, b))
}

// ListSLAOverrides returns a tenant's overrides, by site pair.
func (t *Tx) ListSLAOverrides(ctx context.Context, tenantID string) ([]*SLAOverride, error) {
	rows, err := t.query(ctx, `SELECT tenant_id, site_a, site_b, max_loss_percent, max_rtt_ms, max_jitter_ms, updated_at
FROM sla_overrides WHERE tenant_id = $1 ORDER BY site_a, site_b`, tenantID)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (*SLAOverride, error) {
		var o SLAOverride
		var updated int64
		if err := sc.Scan(&o.TenantID, &o.SiteA, &o.SiteB, &o.SLA.MaxLossPercent, &o.SLA.MaxRTTMillis, &o.SLA.MaxJitterMillis, &updated); err != nil {
			return nil, err
		}
		o.UpdatedAt = fromMillis(updated)
		return &o, nil
	})
}

// InsertProbeKey adds a probe key. A second key with the same role (or id)
// in the tenant is ErrConflict.
func (t *Tx) InsertProbeKey(ctx context.Context, k *ProbeKey) error {
	_, err := t.exec(ctx, "INSERT INTO probe_keys (tenant_id, key_id, secret, role, created_at) VALUES ($1, $2, $3, $4, $5)",
		k.TenantID, k.ID, base64.StdEncoding.EncodeToString(k.Secret[:]), string(k.Role), millis(k.CreatedAt))
	return err
}

// SetProbeKeyRole changes the role of one key.
func (t *Tx) SetProbeKeyRole(ctx context.Context, tenantID string, id int64, role ProbeKeyRole) error {
	r, err := t.exec(ctx, "UPDATE probe_keys SET role = $3 WHERE tenant_id = $1 AND key_id = $2", tenantID, id, string(role))
	return mustAffect(r, err, fmt.Sprintf("probe key %d", id))
}

// DeleteProbeKey removes one key.
func (t *Tx) DeleteProbeKey(ctx context.Context, tenantID string, id int64) error {
	r, err := t.exec(ctx, "DELETE FROM probe_keys WHERE tenant_id = $1 AND key_id = $2", tenantID, id)
	return mustAffect(r, err, fmt.Sprintf("probe key %d", id))
}

// ListProbeKeys returns a tenant's probe keys, by id.
func (t *Tx) ListProbeKeys(ctx context.Context, tenantID string) ([]*ProbeKey, error) {
	rows, err := t.query(ctx, "SELECT tenant_id, key_id, secret, role, created_at FROM probe_keys WHERE tenant_id = $1 ORDER BY key_id", tenantID)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (*ProbeKey, error) {
		var k ProbeKey
		var secret, role string
		var created int64
		if err := sc.Scan(&k.TenantID, &k.ID, &secret, &role, &created); err != nil {
			return nil, err
		}
		raw, err := base64.StdEncoding.DecodeString(secret)
		if err != nil || len(raw) != len(k.Secret) {
			return nil, fmt.Errorf("probe key %d of tenant %s: malformed secret", k.ID, k.TenantID)
		}
		k.Secret = [32]byte(raw)
		k.Role, k.CreatedAt = ProbeKeyRole(role), fromMillis(created)
		return &k, nil
	})
}

// TenantsWithoutProbeKey returns the ids of the tenants that have no
// current probe key (those created before probe keys existed).
func (t *Tx) TenantsWithoutProbeKey(ctx context.Context) ([]string, error) {
	rows, err := t.query(ctx, `SELECT id FROM tenants WHERE id NOT IN
    (SELECT tenant_id FROM probe_keys WHERE role = 'current') ORDER BY id`)
	if err != nil {
		return nil, err
	}
	ids, err := collect(rows, func(sc interface{ Scan(...any) error }) (*string, error) {
		var id string
		return &id, sc.Scan(&id)
	})
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = *id
	}
	return out, err
}
