package store

import (
	"context"
	"fmt"
	"time"
)

// PathKey names one path: a local uplink of an appliance to one remote
// endpoint of a peer appliance.
type PathKey struct {
	ApplianceID     string
	PeerApplianceID string
	Uplink          string // the uplink's name on the appliance
	Remote          string // the peer's endpoint, IP:port
}

// PathPoint is what a path did during one interval: a point as an
// appliance reported it (Points is 1), or a 1-minute rollup of points
// (Start is the minute, End a minute later, Points how many were merged).
// RTT figures are zero for an interval without replies.
type PathPoint struct {
	PathKey
	TenantID, SiteID, PeerSiteID string

	Start, End time.Time
	Points     int64

	Sent, Received, Lost int64

	RTTMin, RTTMean, RTTP50, RTTP99, RTTMax time.Duration
	Jitter                                  time.Duration
}

// RollupStep is the length of a rollup interval.
const RollupStep = time.Minute

// WritePaths runs fn in a write transaction without the store's write
// lock: for path history, which no rule reads back and no change records,
// so concurrent reports need not queue behind each other (on SQLite the
// single writer still serialises them).
func WritePaths[T any](ctx context.Context, s *Store, fn func(*Tx) (T, error)) (T, error) {
	var zero T
	tx, err := s.rw.BeginTx(ctx, nil)
	if err != nil {
		return zero, fmt.Errorf("store: begin: %w", err)
	}
	defer tx.Rollback()
	v, err := fn(&Tx{tx: tx, engine: s.engine, write: true})
	if err != nil {
		return zero, err
	}
	if err := tx.Commit(); err != nil {
		return zero, fmt.Errorf("store: commit: %w", mapErr(err))
	}
	return v, nil
}

func us(d time.Duration) int64 { return d.Microseconds() }

func fromUS(v int64) time.Duration { return time.Duration(v) * time.Microsecond }

// InsertPathPoints adds points, skipping any whose path and start are
// already stored (a report sent again), and returns how many it added.
func (t *Tx) InsertPathPoints(ctx context.Context, pts []*PathPoint) (int64, error) {
	var added int64
	for _, p := range pts {
		r, err := t.exec(ctx, `INSERT INTO path_points (appliance_id, peer_appliance_id, uplink, remote, start_ms,
    tenant_id, site_id, peer_site_id, end_ms, sent, received, lost,
    rtt_min_us, rtt_mean_us, rtt_p50_us, rtt_p99_us, rtt_max_us, jitter_us)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
ON CONFLICT (appliance_id, peer_appliance_id, uplink, remote, start_ms) DO NOTHING`,
			p.ApplianceID, p.PeerApplianceID, p.Uplink, p.Remote, millis(p.Start),
			p.TenantID, p.SiteID, p.PeerSiteID, millis(p.End), p.Sent, p.Received, p.Lost,
			us(p.RTTMin), us(p.RTTMean), us(p.RTTP50), us(p.RTTP99), us(p.RTTMax), us(p.Jitter))
		if err != nil {
			return added, err
		}
		n, err := r.RowsAffected()
		if err != nil {
			return added, err
		}
		added += n
	}
	return added, nil
}

// RollupPaths (re)computes the 1-minute rollups of every minute that
// starts in [from, to), both rounded down to the minute, from the points
// that started in it. It is idempotent, so it may run again over minutes
// that got late points. It returns how many rollups it wrote.
func (t *Tx) RollupPaths(ctx context.Context, from, to time.Time) (int64, error) {
	step := RollupStep.Milliseconds()
	f, e := from.UnixMilli(), to.UnixMilli()
	f, e = f-f%step, e-e%step
	if e <= f {
		return 0, nil
	}
	// Weighted means are computed in SQL on both engines; PostgreSQL's
	// SUM of BIGINT is NUMERIC, hence the casts.
	r, err := t.exec(ctx, `INSERT INTO path_rollups (appliance_id, peer_appliance_id, uplink, remote, minute_ms,
    tenant_id, site_id, peer_site_id, points, sent, received, lost,
    rtt_min_us, rtt_mean_us, rtt_p50_us, rtt_p99_us, rtt_max_us, jitter_us)
SELECT appliance_id, peer_appliance_id, uplink, remote, start_ms - start_ms % 60000,
    MIN(tenant_id), MIN(site_id), MIN(peer_site_id), COUNT(*), SUM(sent), SUM(received), SUM(lost),
    COALESCE(MIN(CASE WHEN received > 0 THEN rtt_min_us END), 0),
    CASE WHEN SUM(received) > 0 THEN CAST(SUM(rtt_mean_us * received) / SUM(received) AS BIGINT) ELSE 0 END,
    CASE WHEN SUM(received) > 0 THEN CAST(SUM(rtt_p50_us * received) / SUM(received) AS BIGINT) ELSE 0 END,
    MAX(rtt_p99_us), MAX(rtt_max_us), CAST(SUM(jitter_us) / COUNT(*) AS BIGINT)
FROM path_points WHERE start_ms >= $1 AND start_ms < $2
GROUP BY appliance_id, peer_appliance_id, uplink, remote, start_ms - start_ms % 60000
ON CONFLICT (appliance_id, peer_appliance_id, uplink, remote, minute_ms) DO UPDATE SET
    points = excluded.points, sent = excluded.sent, received = excluded.received, lost = excluded.lost,
    rtt_min_us = excluded.rtt_min_us, rtt_mean_us = excluded.rtt_mean_us, rtt_p50_us = excluded.rtt_p50_us,
    rtt_p99_us = excluded.rtt_p99_us, rtt_max_us = excluded.rtt_max_us, jitter_us = excluded.jitter_us`, f, e)
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}

// PrunePaths deletes the points that started before pointsBefore and the
// rollups of minutes before rollupsBefore, and returns how many of each.
func (t *Tx) PrunePaths(ctx context.Context, pointsBefore, rollupsBefore time.Time) (points, rollups int64, err error) {
	r, err := t.exec(ctx, "DELETE FROM path_points WHERE start_ms < $1", pointsBefore.UnixMilli())
	if err != nil {
		return 0, 0, err
	}
	if points, err = r.RowsAffected(); err != nil {
		return 0, 0, err
	}
	r, err = t.exec(ctx, "DELETE FROM path_rollups WHERE minute_ms < $1", rollupsBefore.UnixMilli())
	if err != nil {
		return points, 0, err
	}
	rollups, err = r.RowsAffected()
	return points, rollups, err
}

const pathCols = `appliance_id, peer_appliance_id, uplink, remote, tenant_id, site_id, peer_site_id,
    sent, received, lost, rtt_min_us, rtt_mean_us, rtt_p50_us, rtt_p99_us, rtt_max_us, jitter_us`

// ListPathPoints returns a tenant's points from the appliances of site to
// those of peerSite that started in [from, to), by path and start.
func (t *Tx) ListPathPoints(ctx context.Context, tenantID, site, peerSite string, from, to time.Time) ([]*PathPoint, error) {
	rows, err := t.query(ctx, `SELECT `+pathCols+`, start_ms, end_ms, 1 FROM path_points
WHERE tenant_id = $1 AND site_id = $2 AND peer_site_id = $3 AND start_ms >= $4 AND start_ms < $5
ORDER BY appliance_id, peer_appliance_id, uplink, remote, start_ms`, tenantID, site, peerSite, from.UnixMilli(), to.UnixMilli())
	if err != nil {
		return nil, err
	}
	return collect(rows, scanPathPoint)
}

// ListPathRollups is ListPathPoints over the 1-minute rollups: those of the
// minutes that start in [from, to).
func (t *Tx) ListPathRollups(ctx context.Context, tenantID, site, peerSite string, from, to time.Time) ([]*PathPoint, error) {
	rows, err := t.query(ctx, `SELECT `+pathCols+`, minute_ms, minute_ms + 60000, points FROM path_rollups
WHERE tenant_id = $1 AND site_id = $2 AND peer_site_id = $3 AND minute_ms >= $4 AND minute_ms < $5
ORDER BY appliance_id, peer_appliance_id, uplink, remote, minute_ms`, tenantID, site, peerSite, from.UnixMilli(), to.UnixMilli())
	if err != nil {
		return nil, err
	}
	return collect(rows, scanPathPoint)
}

func scanPathPoint(sc interface{ Scan(...any) error }) (*PathPoint, error) {
	var p PathPoint
	var rtt [6]int64
	var start, end int64
	if err := sc.Scan(&p.ApplianceID, &p.PeerApplianceID, &p.Uplink, &p.Remote, &p.TenantID, &p.SiteID, &p.PeerSiteID,
		&p.Sent, &p.Received, &p.Lost, &rtt[0], &rtt[1], &rtt[2], &rtt[3], &rtt[4], &rtt[5], &start, &end, &p.Points); err != nil {
		return nil, err
	}
	p.RTTMin, p.RTTMean, p.RTTP50, p.RTTP99, p.RTTMax, p.Jitter =
		fromUS(rtt[0]), fromUS(rtt[1]), fromUS(rtt[2]), fromUS(rtt[3]), fromUS(rtt[4]), fromUS(rtt[5])
	p.Start, p.End = time.UnixMilli(start).UTC(), time.UnixMilli(end).UTC()
	return &p, nil
}
