package store

import (
	"context"
	"errors"
	"time"
)

// AppendChange adds c to the change feed and sets c.ID. It must run in a
// Write transaction: the id is MAX(id)+1, which the write lock makes both
// unique and committed in order.
func (t *Tx) AppendChange(ctx context.Context, c *Change) error {
	if !t.write {
		return errors.New("store: AppendChange outside a write transaction")
	}
	var last int64
	if err := t.queryRow(ctx, "SELECT COALESCE(MAX(id), 0) FROM changes").Scan(&last); err != nil {
		return mapErr(err)
	}
	c.ID = last + 1
	_, err := t.exec(ctx, "INSERT INTO changes (id, tenant_id, kind, subject, request_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
		c.ID, c.TenantID, c.Kind, c.Subject, c.RequestID, millis(c.CreatedAt))
	return err
}

// LastChangeID is the id of the newest change, 0 if there is none.
func (t *Tx) LastChangeID(ctx context.Context) (int64, error) {
	var last int64
	err := t.queryRow(ctx, "SELECT COALESCE(MAX(id), 0) FROM changes").Scan(&last)
	return last, mapErr(err)
}

// ChangesSince returns up to limit changes with ids above after, oldest
// first.
func (t *Tx) ChangesSince(ctx context.Context, after int64, limit int) ([]*Change, error) {
	rows, err := t.query(ctx, "SELECT id, tenant_id, kind, subject, request_id, created_at FROM changes WHERE id > $1 ORDER BY id LIMIT $2", after, limit)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc interface{ Scan(...any) error }) (*Change, error) {
		var c Change
		var created int64
		if err := sc.Scan(&c.ID, &c.TenantID, &c.Kind, &c.Subject, &c.RequestID, &created); err != nil {
			return nil, err
		}
		c.CreatedAt = fromMillis(created)
		return &c, nil
	})
}

// PruneChanges deletes changes older than before, always keeping the newest
// so that ids keep growing. It returns how many it deleted.
func (t *Tx) PruneChanges(ctx context.Context, before time.Time) (int64, error) {
	r, err := t.exec(ctx, "DELETE FROM changes WHERE created_at < $1 AND id < (SELECT MAX(id) FROM changes)", millis(before))
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}
