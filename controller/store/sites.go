package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

const siteCols = "id, tenant_id, name, kind, lan_prefixes, created_at"

func scanSite(sc interface{ Scan(...any) error }) (*Site, error) {
	var s Site
	var kind, prefixes string
	var created int64
	if err := sc.Scan(&s.ID, &s.TenantID, &s.Name, &kind, &prefixes, &created); err != nil {
		return nil, err
	}
	s.Kind = SiteKind(kind)
	s.CreatedAt = fromMillis(created)
	var err error
	if s.LANPrefixes, err = splitList(prefixes, netip.ParsePrefix); err != nil {
		return nil, fmt.Errorf("site %s: lan_prefixes: %w", s.ID, err)
	}
	return &s, nil
}

// InsertSite adds a site.
func (t *Tx) InsertSite(ctx context.Context, s *Site) error {
	_, err := t.exec(ctx, "INSERT INTO sites ("+siteCols+") VALUES ($1, $2, $3, $4, $5, $6)",
		s.ID, s.TenantID, s.Name, string(s.Kind), joinList(s.LANPrefixes), millis(s.CreatedAt))
	return err
}

// UpdateSite rewrites a site's name, kind and prefixes.
func (t *Tx) UpdateSite(ctx context.Context, s *Site) error {
	r, err := t.exec(ctx, "UPDATE sites SET name = $3, kind = $4, lan_prefixes = $5 WHERE tenant_id = $1 AND id = $2",
		s.TenantID, s.ID, s.Name, string(s.Kind), joinList(s.LANPrefixes))
	return mustAffect(r, err, "site "+s.ID)
}

// SiteByID returns one site of a tenant.
func (t *Tx) SiteByID(ctx context.Context, tenantID, id string) (*Site, error) {
	return oneSite(t.queryRow(ctx, "SELECT "+siteCols+" FROM sites WHERE tenant_id = $1 AND id = $2", tenantID, id), id)
}

// SiteByName returns one site of a tenant.
func (t *Tx) SiteByName(ctx context.Context, tenantID, name string) (*Site, error) {
	return oneSite(t.queryRow(ctx, "SELECT "+siteCols+" FROM sites WHERE tenant_id = $1 AND name = $2", tenantID, name), name)
}

func oneSite(row *sql.Row, key string) (*Site, error) {
	v, err := scanSite(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("site %q: %w", key, ErrNotFound)
	}
	return v, err
}

// ListSites returns a tenant's sites, by name.
func (t *Tx) ListSites(ctx context.Context, tenantID string) ([]*Site, error) {
	rows, err := t.query(ctx, "SELECT "+siteCols+" FROM sites WHERE tenant_id = $1 ORDER BY name", tenantID)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanSite)
}

// DeleteSite removes a site, its enrollment tokens and (revoked) appliance
// records.
func (t *Tx) DeleteSite(ctx context.Context, tenantID, id string) error {
	r, err := t.exec(ctx, "DELETE FROM sites WHERE tenant_id = $1 AND id = $2", tenantID, id)
	return mustAffect(r, err, "site "+id)
}

// joinList stores a list as canonical, comma-separated text.
func joinList[T fmt.Stringer](vs []T) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = v.String()
	}
	return strings.Join(parts, ",")
}

func splitList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	out := make([]T, 0, len(parts))
	for _, p := range parts {
		v, err := parse(p)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
