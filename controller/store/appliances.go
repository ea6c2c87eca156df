package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/causeway-net/causeway/dataplane/wgkey"
)

const applianceCols = "id, tenant_id, site_id, name, public_key, overlay_addr, endpoints, state, credential_hash, created_at, last_seen_at, revoked_at, priority, drained_at"

func scanAppliance(sc interface{ Scan(...any) error }) (*Appliance, error) {
	var a Appliance
	var key, addr, endpoints, state string
	var created, seen, revoked, priority, drained int64
	if err := sc.Scan(&a.ID, &a.TenantID, &a.SiteID, &a.Name, &key, &addr, &endpoints, &state,
		&a.CredentialHash, &created, &seen, &revoked, &priority, &drained); err != nil {
		return nil, err
	}
	var err error
	if a.PublicKey, err = wgkey.ParsePublic(key); err != nil {
		return nil, fmt.Errorf("appliance %s: public_key: %w", a.ID, err)
	}
	if a.OverlayAddr, err = netip.ParseAddr(addr); err != nil {
		return nil, fmt.Errorf("appliance %s: overlay_addr: %w", a.ID, err)
	}
	if a.Endpoints, err = splitList(endpoints, netip.ParseAddrPort); err != nil {
		return nil, fmt.Errorf("appliance %s: endpoints: %w", a.ID, err)
	}
	a.State = ApplianceState(state)
	a.CreatedAt, a.LastSeenAt, a.RevokedAt = fromMillis(created), fromMillis(seen), fromMillis(revoked)
	a.Priority, a.DrainedAt = int(priority), fromMillis(drained)
	return &a, nil
}

// InsertAppliance adds an appliance.
func (t *Tx) InsertAppliance(ctx context.Context, a *Appliance) error {
	_, err := t.exec(ctx, "INSERT INTO appliances ("+applianceCols+") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
		a.ID, a.TenantID, a.SiteID, a.Name, a.PublicKey.String(), a.OverlayAddr.String(), joinList(a.Endpoints),
		string(a.State), a.CredentialHash, millis(a.CreatedAt), millis(a.LastSeenAt), millis(a.RevokedAt),
		int64(a.Priority), millis(a.DrainedAt))
	return err
}

// ApplianceByID returns one appliance of a tenant.
func (t *Tx) ApplianceByID(ctx context.Context, tenantID, id string) (*Appliance, error) {
	return oneAppliance(t.queryRow(ctx, "SELECT "+applianceCols+" FROM appliances WHERE tenant_id = $1 AND id = $2", tenantID, id), id)
}

// ApplianceByName returns the live (not revoked) appliance of that name,
// or else the most recently revoked one.
func (t *Tx) ApplianceByName(ctx context.Context, tenantID, name string) (*Appliance, error) {
	return oneAppliance(t.queryRow(ctx, "SELECT "+applianceCols+` FROM appliances WHERE tenant_id = $1 AND name = $2
		ORDER BY CASE WHEN state = 'revoked' THEN 1 ELSE 0 END, revoked_at DESC LIMIT 1`, tenantID, name), name)
}

// ApplianceByCredential finds the appliance holding a device credential,
// whatever its state.
func (t *Tx) ApplianceByCredential(ctx context.Context, hash string) (*Appliance, error) {
	return oneAppliance(t.queryRow(ctx, "SELECT "+applianceCols+" FROM appliances WHERE credential_hash = $1", hash), "by credential")
}

func oneAppliance(row *sql.Row, key string) (*Appliance, error) {
	v, err := scanAppliance(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("appliance %q: %w", key, ErrNotFound)
	}
	return v, err
}

// ListAppliances returns a tenant's appliances, revoked ones included, by
// name.
func (t *Tx) ListAppliances(ctx context.Context, tenantID string) ([]*Appliance, error) {
	rows, err := t.query(ctx, "SELECT "+applianceCols+" FROM appliances WHERE tenant_id = $1 ORDER BY name, created_at", tenantID)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanAppliance)
}

// ApplianceAddrs returns every overlay address a tenant has handed out,
// revoked appliances included.
func (t *Tx) ApplianceAddrs(ctx context.Context, tenantID string) ([]netip.Addr, error) {
	rows, err := t.query(ctx, "SELECT overlay_addr FROM appliances WHERE tenant_id = $1", tenantID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []netip.Addr
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("overlay_addr %q: %w", s, err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// CountLiveAppliances counts the site's appliances that are not revoked.
func (t *Tx) CountLiveAppliances(ctx context.Context, tenantID, siteID string) (int, error) {
	var n int
	err := t.queryRow(ctx, "SELECT COUNT(*) FROM appliances WHERE tenant_id = $1 AND site_id = $2 AND state <> 'revoked'", tenantID, siteID).Scan(&n)
	return n, err
}

// UpdateApplianceEndpoints replaces an appliance's endpoints.
func (t *Tx) UpdateApplianceEndpoints(ctx context.Context, tenantID, id string, eps []netip.AddrPort) error {
	r, err := t.exec(ctx, "UPDATE appliances SET endpoints = $3 WHERE tenant_id = $1 AND id = $2", tenantID, id, joinList(eps))
	return mustAffect(r, err, "appliance "+id)
}

// RevokeAppliance marks an appliance revoked.
func (t *Tx) RevokeAppliance(ctx context.Context, tenantID, id string, at time.Time) error {
	r, err := t.exec(ctx, "UPDATE appliances SET state = 'revoked', revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND state <> 'revoked'",
		tenantID, id, millis(at))
	return mustAffect(r, err, "live appliance "+id)
}

// TouchAppliance records when an appliance was last heard from.
func (t *Tx) TouchAppliance(ctx context.Context, id string, at time.Time) error {
	_, err := t.exec(ctx, "UPDATE appliances SET last_seen_at = $2 WHERE id = $1", id, millis(at))
	return err
}
