package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// PairRole is what a pair member says it is.
type PairRole string

const (
	PairActive  PairRole = "active"
	PairStandby PairRole = "standby"
)

// Failover is one change of a pair's active member. From and To are
// appliance ids (From is empty for a first election); the zero value means
// none.
type Failover struct {
	At       time.Time
	From, To string
	Reason   string
}

// PairReport is the latest view one pair member reported of its pair.
type PairReport struct {
	ApplianceID, TenantID, SiteID string
	Role                          PairRole
	Term                          int64
	// Since is when the member took its role.
	Since        time.Time
	PartnerAlive bool
	LastFailover Failover
	ReportedAt   time.Time
}

// PairStatus is what the controller derived for one site from its
// members' reports.
type PairStatus struct {
	SiteID, TenantID string
	// ActiveID is the active member's appliance id, empty if none.
	ActiveID     string
	Term         int64
	Since        time.Time
	LastFailover Failover
	UpdatedAt    time.Time
}

// PairFailover is one entry of a site's failover history.
type PairFailover struct {
	SiteID, TenantID string
	Term             int64
	Failover
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// UpdateAppliancePriority sets an appliance's pair priority.
func (t *Tx) UpdateAppliancePriority(ctx context.Context, tenantID, id string, priority int) error {
	r, err := t.exec(ctx, "UPDATE appliances SET priority = $3 WHERE tenant_id = $1 AND id = $2", tenantID, id, int64(priority))
	return mustAffect(r, err, "appliance "+id)
}

// SetApplianceDrained drains an appliance as of at, or undrains it when at
// is zero.
func (t *Tx) SetApplianceDrained(ctx context.Context, tenantID, id string, at time.Time) error {
	r, err := t.exec(ctx, "UPDATE appliances SET drained_at = $3 WHERE tenant_id = $1 AND id = $2", tenantID, id, millis(at))
	return mustAffect(r, err, "appliance "+id)
}

const pairReportCols = `appliance_id, tenant_id, site_id, role, term, since_ms, partner_alive,
    failover_at, failover_from, failover_to, failover_reason, reported_at`

// PutPairReport stores an appliance's report, replacing its previous one.
func (t *Tx) PutPairReport(ctx context.Context, r *PairReport) error {
	_, err := t.exec(ctx, `INSERT INTO pair_reports (`+pairReportCols+`)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (appliance_id) DO UPDATE SET tenant_id = excluded.tenant_id, site_id = excluded.site_id,
    role = excluded.role, term = excluded.term, since_ms = excluded.since_ms, partner_alive = excluded.partner_alive,
    failover_at = excluded.failover_at, failover_from = excluded.failover_from, failover_to = excluded.failover_to,
    failover_reason = excluded.failover_reason, reported_at = excluded.reported_at`,
		r.ApplianceID, r.TenantID, r.SiteID, string(r.Role), r.Term, millis(r.Since), boolInt(r.PartnerAlive),
		millis(r.LastFailover.At), r.LastFailover.From, r.LastFailover.To, r.LastFailover.Reason, millis(r.ReportedAt))
	return err
}

// ListPairReports returns the reports of a site's appliances (revoked ones
// included), by appliance id.
func (t *Tx) ListPairReports(ctx context.Context, tenantID, siteID string) ([]*PairReport, error) {
	rows, err := t.query(ctx, "SELECT "+pairReportCols+" FROM pair_reports WHERE tenant_id = $1 AND site_id = $2 ORDER BY appliance_id", tenantID, siteID)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (*PairReport, error) {
		var r PairReport
		var role string
		var since, alive, fat, reported int64
		if err := sc.Scan(&r.ApplianceID, &r.TenantID, &r.SiteID, &role, &r.Term, &since, &alive,
			&fat, &r.LastFailover.From, &r.LastFailover.To, &r.LastFailover.Reason, &reported); err != nil {
			return nil, err
		}
		r.Role, r.Since, r.PartnerAlive = PairRole(role), fromMillis(since), alive != 0
		r.LastFailover.At, r.ReportedAt = fromMillis(fat), fromMillis(reported)
		return &r, nil
	})
}

const pairStatusCols = `site_id, tenant_id, active_id, term, since_ms,
    failover_at, failover_from, failover_to, failover_reason, updated_at`

func scanPairStatus(sc interface{ Scan(...any) error }) (*PairStatus, error) {
	var s PairStatus
	var since, fat, updated int64
	if err := sc.Scan(&s.SiteID, &s.TenantID, &s.ActiveID, &s.Term, &since,
		&fat, &s.LastFailover.From, &s.LastFailover.To, &s.LastFailover.Reason, &updated); err != nil {
		return nil, err
	}
	s.Since, s.LastFailover.At, s.UpdatedAt = fromMillis(since), fromMillis(fat), fromMillis(updated)
	return &s, nil
}

// PutPairStatus stores a site's pair status, replacing the previous one.
func (t *Tx) PutPairStatus(ctx context.Context, s *PairStatus) error {
	_, err := t.exec(ctx, `INSERT INTO pair_status (`+pairStatusCols+`)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (site_id) DO UPDATE SET tenant_id = excluded.tenant_id, active_id = excluded.active_id,
    term = excluded.term, since_ms = excluded.since_ms, failover_at = excluded.failover_at,
    failover_from = excluded.failover_from, failover_to = excluded.failover_to,
    failover_reason = excluded.failover_reason, updated_at = excluded.updated_at`,
		s.SiteID, s.TenantID, s.ActiveID, s.Term, millis(s.Since),
		millis(s.LastFailover.At), s.LastFailover.From, s.LastFailover.To, s.LastFailover.Reason, millis(s.UpdatedAt))
	return err
}

// PairStatusOf returns a site's pair status; ErrNotFound if its members
// never reported.
func (t *Tx) PairStatusOf(ctx context.Context, tenantID, siteID string) (*PairStatus, error) {
	s, err := scanPairStatus(t.queryRow(ctx, "SELECT "+pairStatusCols+" FROM pair_status WHERE tenant_id = $1 AND site_id = $2", tenantID, siteID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("pair status of site %q: %w", siteID, ErrNotFound)
	}
	return s, err
}

// ListPairStatus returns the pair status of every site of a tenant that
// has one, by site id.
func (t *Tx) ListPairStatus(ctx context.Context, tenantID string) ([]*PairStatus, error) {
	rows, err := t.query(ctx, "SELECT "+pairStatusCols+" FROM pair_status WHERE tenant_id = $1 ORDER BY site_id", tenantID)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanPairStatus)
}

// InsertPairFailover adds a failover to the history, unless the site
// already has one for that term, and reports whether it added it.
func (t *Tx) InsertPairFailover(ctx context.Context, f *PairFailover) (bool, error) {
	r, err := t.exec(ctx, `INSERT INTO pair_failovers (site_id, term, tenant_id, at_ms, from_id, to_id, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (site_id, term) DO NOTHING`,
		f.SiteID, f.Term, f.TenantID, millis(f.At), f.From, f.To, f.Reason)
	if err != nil {
		return false, err
	}
	n, err := r.RowsAffected()
	return n > 0, err
}

// ListPairFailovers returns up to limit of a site's failovers, newest
// first.
func (t *Tx) ListPairFailovers(ctx context.Context, tenantID, siteID string, limit int) ([]*PairFailover, error) {
	rows, err := t.query(ctx, `SELECT site_id, tenant_id, term, at_ms, from_id, to_id, reason FROM pair_failovers
WHERE tenant_id = $1 AND site_id = $2 ORDER BY at_ms DESC, term DESC LIMIT $3`, tenantID, siteID, limit)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (*PairFailover, error) {
		var f PairFailover
		var at int64
		if err := sc.Scan(&f.SiteID, &f.TenantID, &f.Term, &at, &f.From, &f.To, &f.Reason); err != nil {
			return nil, err
		}
		f.At = fromMillis(at)
		return &f, nil
	})
}

// PrunePairFailovers deletes the failovers that happened before before and
// returns how many.
func (t *Tx) PrunePairFailovers(ctx context.Context, before time.Time) (int64, error) {
	r, err := t.exec(ctx, "DELETE FROM pair_failovers WHERE at_ms < $1", before.UnixMilli())
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}
