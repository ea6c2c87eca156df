package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Usage meters and directions, as appliances report them.
const (
	MeterOverlay = "overlay" // inner IP traffic with one peer site, through the overlay
	MeterGateway = "gateway" // the site's LAN to and from the Internet, through the appliance

	DirectionTx = "tx" // sent by the site (for the gateway meter: LAN -> Internet)
	DirectionRx = "rx" // received by the site
)

// UsageHour is the ledger's bucket.
const UsageHour = time.Hour

// UsageRow is one ledger bucket: what a site sent to (tx) or received
// from (rx) one peer site (or, for the gateway meter, the Internet; then
// PeerSiteID is "") during the hour (or, in a query by day, the day) that
// starts at Start.
type UsageRow struct {
	TenantID, SiteID, PeerSiteID string
	Meter, Direction             string
	Start                        time.Time
	Bytes, Packets               int64
}

// OutboxState is where an outbox entry stands.
type OutboxState string

const (
	// OutboxPending entries wait to be sent (again).
	OutboxPending OutboxState = "pending"
	// OutboxDead entries are dead letters: they will not be sent unless an
	// operator retries them. LastError says why.
	OutboxDead OutboxState = "dead"
)

// OutboxEntry is one event for the metering API: the increment one
// ingest transaction added to one site's ledger for one exported meter,
// direction and hour, summed over peer sites and over the records of that
// report that fell into the hour. Records says how many records those
// were; FirstSeq is the lowest of their sequence numbers, which with
// ApplianceID, Meter and Direction names the entry for good (see
// metering.EventID).
type OutboxEntry struct {
	EventID                       string
	TenantID, SiteID, ApplianceID string
	FirstSeq                      int64
	Meter, Direction, MeterName   string
	Hour, Start, End              time.Time
	Bytes, Packets, Records       int64
	CreatedAt                     time.Time
	State                         OutboxState
	Attempts                      int
	NextAt                        time.Time
	LastError                     string
	DeadAt                        time.Time
	ClaimedBy                     string
	ClaimUntil                    time.Time
}

// OutboxUpdate is what became of one claimed entry that was not sent.
type OutboxUpdate struct {
	EventID  string
	Attempts int
	// NextAt is when it may be sent again; ignored for a dead letter.
	NextAt time.Time
	Dead   bool
	Error  string
}

// OutboxStats sums up the outbox.
type OutboxStats struct {
	Pending int64
	// OldestPending is when the oldest pending entry was written; zero
	// when none is pending.
	OldestPending time.Time
	Dead          int64
}

// WriteUsage runs fn in a write transaction without the store's write
// lock, like WritePaths: usage ingestion and the export's bookkeeping
// need no serialisation with control-plane writes. Exactly-once comes from
// the primary keys (a concurrent duplicate of a record waits on the other
// transaction's row and then inserts nothing), and the callers touch
// ledger rows in one global order, so concurrent transactions cannot
// deadlock.
func WriteUsage[T any](ctx context.Context, s *Store, fn func(*Tx) (T, error)) (T, error) {
	return WritePaths(ctx, s, fn)
}

// MarkUsageSeen records that the appliance's record seq (which started at
// start) was counted, and reports whether it is new; false means it was
// counted before and must not be again.
func (t *Tx) MarkUsageSeen(ctx context.Context, applianceID string, seq int64, start, now time.Time) (bool, error) {
	r, err := t.exec(ctx, `INSERT INTO usage_seen (appliance_id, seq, start_ms, received_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (appliance_id, seq) DO NOTHING`, applianceID, seq, start.UnixMilli(), millis(now))
	if err != nil {
		return false, err
	}
	n, err := r.RowsAffected()
	return n == 1, err
}

// AddUsage adds each row's bytes and packets to its hour of the ledger
// (row.Start is rounded down to the hour). Callers pass rows sorted by
// key (SortUsageRows) so that concurrent transactions lock in one order.
func (t *Tx) AddUsage(ctx context.Context, rows []*UsageRow, now time.Time) error {
	for _, u := range rows {
		if _, err := t.exec(ctx, `INSERT INTO usage_ledger (tenant_id, site_id, peer_site_id, meter, direction, hour_ms, bytes, packets, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (tenant_id, site_id, peer_site_id, meter, direction, hour_ms) DO UPDATE SET
    bytes = usage_ledger.bytes + excluded.bytes, packets = usage_ledger.packets + excluded.packets,
    updated_at = excluded.updated_at`,
			u.TenantID, u.SiteID, u.PeerSiteID, u.Meter, u.Direction, u.Start.Truncate(UsageHour).UnixMilli(),
			u.Bytes, u.Packets, millis(now)); err != nil {
			return err
		}
	}
	return nil
}

// UsageQuery selects ledger rows; empty fields do not filter.
type UsageQuery struct {
	TenantID, SiteID string
	// From and To bound the hours: those starting in [From, To).
	From, To time.Time
	// Step is UsageHour or 24h: rows of one step are summed, Start being
	// the step's start (UTC days).
	Step time.Duration
}

// ListUsage returns the ledger rows q selects, summed per step, ordered by
// start, tenant, site, meter, direction and peer site.
func (t *Tx) ListUsage(ctx context.Context, q UsageQuery) ([]*UsageRow, error) {
	step := max(q.Step, UsageHour).Milliseconds()
	args := []any{step, q.From.UnixMilli(), q.To.UnixMilli()}
	where := "hour_ms >= $2 AND hour_ms < $3"
	if q.TenantID != "" {
		args = append(args, q.TenantID)
		where += fmt.Sprintf(" AND tenant_id = $%d", len(args))
	}
	if q.SiteID != "" {
		args = append(args, q.SiteID)
		where += fmt.Sprintf(" AND site_id = $%d", len(args))
	}
	// PostgreSQL's SUM of BIGINT is NUMERIC, hence the casts.
	rows, err := t.query(ctx, `SELECT tenant_id, site_id, peer_site_id, meter, direction, hour_ms - hour_ms % $1 AS bucket,
    CAST(SUM(bytes) AS BIGINT), CAST(SUM(packets) AS BIGINT)
FROM usage_ledger WHERE `+where+`
GROUP BY tenant_id, site_id, peer_site_id, meter, direction, hour_ms - hour_ms % $1
ORDER BY bucket, tenant_id, site_id, meter, direction, peer_site_id`, args...)
	if err != nil {
		return nil, err
	}
	out, err := collect(rows, func(sc interface{ Scan(...any) error }) (*UsageRow, error) {
		var u UsageRow
		var start int64
		if err := sc.Scan(&u.TenantID, &u.SiteID, &u.PeerSiteID, &u.Meter, &u.Direction, &start, &u.Bytes, &u.Packets); err != nil {
			return nil, err
		}
		u.Start = time.UnixMilli(start).UTC()
		return &u, nil
	})
	if err != nil {
		return nil, err
	}
	SortUsageRows(out)
	return out, nil
}

// SortUsageRows orders rows by start, tenant, site, meter, direction and
// peer site (byte order, the same on both engines).
func SortUsageRows(rows []*UsageRow) {
	slices.SortFunc(rows, func(a, b *UsageRow) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		for _, p := range [][2]string{{a.TenantID, b.TenantID}, {a.SiteID, b.SiteID}, {a.Meter, b.Meter},
			{a.Direction, b.Direction}, {a.PeerSiteID, b.PeerSiteID}} {
			if c := strings.Compare(p[0], p[1]); c != 0 {
				return c
			}
		}
		return 0
	})
}

// PruneUsageSeen deletes the dedup rows of records that started before
// before, and returns how many.
func (t *Tx) PruneUsageSeen(ctx context.Context, before time.Time) (int64, error) {
	r, err := t.exec(ctx, "DELETE FROM usage_seen WHERE start_ms < $1", before.UnixMilli())
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}

const outboxCols = `event_id, tenant_id, site_id, appliance_id, first_seq, meter, direction, meter_name,
    hour_ms, start_ms, end_ms, bytes, packets, records, created_at, state, attempts, next_at,
    claimed_by, claim_until, last_error, dead_at`

func scanOutbox(sc interface{ Scan(...any) error }) (*OutboxEntry, error) {
	var e OutboxEntry
	var hour, start, end, created, next, claim, dead int64
	var state string
	if err := sc.Scan(&e.EventID, &e.TenantID, &e.SiteID, &e.ApplianceID, &e.FirstSeq, &e.Meter, &e.Direction, &e.MeterName,
		&hour, &start, &end, &e.Bytes, &e.Packets, &e.Records, &created, &state, &e.Attempts, &next,
		&e.ClaimedBy, &claim, &e.LastError, &dead); err != nil {
		return nil, err
	}
	e.State = OutboxState(state)
	e.Hour, e.Start, e.End = time.UnixMilli(hour).UTC(), time.UnixMilli(start).UTC(), time.UnixMilli(end).UTC()
	e.CreatedAt, e.NextAt, e.ClaimUntil, e.DeadAt = fromMillis(created), fromMillis(next), fromMillis(claim), fromMillis(dead)
	return &e, nil
}

// InsertOutbox adds pending entries, due at once.
func (t *Tx) InsertOutbox(ctx context.Context, es []*OutboxEntry) error {
	for _, e := range es {
		if _, err := t.exec(ctx, `INSERT INTO usage_outbox (`+outboxCols+`)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 0, $15, '', 0, '', 0)`,
			e.EventID, e.TenantID, e.SiteID, e.ApplianceID, e.FirstSeq, e.Meter, e.Direction, e.MeterName,
			e.Hour.UnixMilli(), e.Start.UnixMilli(), e.End.UnixMilli(), e.Bytes, e.Packets, e.Records,
			millis(e.CreatedAt), string(OutboxPending)); err != nil {
			return err
		}
	}
	return nil
}

// ClaimOutbox gives owner up to limit pending entries that are due and
// not claimed by anyone else, oldest first, for lease: until now+lease no
// other claim returns them. On PostgreSQL, rows another transaction is
// claiming at the same moment are skipped (FOR UPDATE SKIP LOCKED), so
// replicas claiming together get disjoint entries; SQLite has one writer.
func (t *Tx) ClaimOutbox(ctx context.Context, owner string, limit int, now time.Time, lease time.Duration) ([]*OutboxEntry, error) {
	lock := ""
	if t.engine == Postgres {
		lock = " FOR UPDATE SKIP LOCKED"
	}
	rows, err := t.query(ctx, `UPDATE usage_outbox SET claimed_by = $1, claim_until = $2
WHERE event_id IN (SELECT event_id FROM usage_outbox
    WHERE state = 'pending' AND next_at <= $3 AND claim_until <= $3
    ORDER BY created_at, event_id LIMIT $4`+lock+`)
RETURNING `+outboxCols, owner, now.Add(lease).UnixMilli(), now.UnixMilli(), limit)
	if err != nil {
		return nil, err
	}
	out, err := collect(rows, scanOutbox)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b *OutboxEntry) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.EventID, b.EventID)
	})
	return out, nil
}

// inList returns "$n, $n+1, ..." for len(ids) placeholders starting at n,
// and the ids as arguments.
func inList(n int, ids []string) (string, []any) {
	ph := make([]string, len(ids))
	args := make([]any, len(ids))
	for i, id := range ids {
		ph[i] = fmt.Sprintf("$%d", n+i)
		args[i] = id
	}
	return strings.Join(ph, ", "), args
}

// DeleteOutbox removes entries (sent ones) and returns how many it
// removed.
func (t *Tx) DeleteOutbox(ctx context.Context, ids []string) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	ph, args := inList(1, ids)
	r, err := t.exec(ctx, "DELETE FROM usage_outbox WHERE event_id IN ("+ph+")", args...)
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}

// UpdateOutbox records failed sends: each entry is released with its new
// attempt count and due time, or made a dead letter.
func (t *Tx) UpdateOutbox(ctx context.Context, ups []OutboxUpdate, now time.Time) error {
	for _, u := range ups {
		state, next, dead := OutboxPending, u.NextAt.UnixMilli(), int64(0)
		if u.Dead {
			state, next, dead = OutboxDead, millis(now), millis(now)
		}
		if _, err := t.exec(ctx, `UPDATE usage_outbox SET state = $2, attempts = $3, next_at = $4, last_error = $5, dead_at = $6,
    claimed_by = '', claim_until = 0 WHERE event_id = $1`, u.EventID, string(state), u.Attempts, next, u.Error, dead); err != nil {
			return err
		}
	}
	return nil
}

// ListOutbox returns up to limit entries in state, newest dead letters
// first for OutboxDead, oldest first for OutboxPending.
func (t *Tx) ListOutbox(ctx context.Context, state OutboxState, limit int) ([]*OutboxEntry, error) {
	order := "created_at, event_id"
	if state == OutboxDead {
		order = "dead_at DESC, event_id"
	}
	rows, err := t.query(ctx, "SELECT "+outboxCols+" FROM usage_outbox WHERE state = $1 ORDER BY "+order+" LIMIT $2", string(state), limit)
	if err != nil {
		return nil, err
	}
	return collect(rows, scanOutbox)
}

// RetryOutbox makes dead letters pending again with no attempts, due at
// now: those named, or every one when ids is nil. It returns how many.
func (t *Tx) RetryOutbox(ctx context.Context, ids []string, now time.Time) (int64, error) {
	q := `UPDATE usage_outbox SET state = 'pending', attempts = 0, next_at = $1, last_error = '', dead_at = 0,
    claimed_by = '', claim_until = 0 WHERE state = 'dead'`
	args := []any{millis(now)}
	if ids != nil {
		if len(ids) == 0 {
			return 0, nil
		}
		ph, more := inList(2, ids)
		q += " AND event_id IN (" + ph + ")"
		args = append(args, more...)
	}
	r, err := t.exec(ctx, q, args...)
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}

// OutboxStats counts pending entries and dead letters.
func (t *Tx) OutboxStats(ctx context.Context) (OutboxStats, error) {
	var s OutboxStats
	var oldest int64
	if err := t.queryRow(ctx, "SELECT COUNT(*), COALESCE(MIN(created_at), 0) FROM usage_outbox WHERE state = 'pending'").Scan(&s.Pending, &oldest); err != nil {
		return s, mapErr(err)
	}
	s.OldestPending = fromMillis(oldest)
	err := t.queryRow(ctx, "SELECT COUNT(*) FROM usage_outbox WHERE state = 'dead'").Scan(&s.Dead)
	return s, mapErr(err)
}

// TenantBilling is what the export needs of a tenant.
type TenantBilling struct {
	Name, Customer string
}

// BillingCustomers returns the name and billing customer of each of the
// tenants that exist among ids (Customer "" for one without).
func (t *Tx) BillingCustomers(ctx context.Context, ids []string) (map[string]TenantBilling, error) {
	out := map[string]TenantBilling{}
	if len(ids) == 0 {
		return out, nil
	}
	ph, args := inList(1, ids)
	rows, err := t.query(ctx, "SELECT id, name, billing_customer FROM tenants WHERE id IN ("+ph+")", args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var b TenantBilling
		if err := rows.Scan(&id, &b.Name, &b.Customer); err != nil {
			return nil, err
		}
		out[id] = b
	}
	return out, mapErr(rows.Err())
}
