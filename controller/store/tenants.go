package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

const tenantCols = "id, name, created_at, sla_max_loss_percent, sla_max_rtt_ms, sla_max_jitter_ms, billing_customer"

func scanTenant(sc interface{ Scan(...any) error }) (*Tenant, error) {
	var t Tenant
	var created int64
	if err := sc.Scan(&t.ID, &t.Name, &created, &t.SLA.MaxLossPercent, &t.SLA.MaxRTTMillis, &t.SLA.MaxJitterMillis, &t.BillingCustomer); err != nil {
		return nil, err
	}
	t.CreatedAt = fromMillis(created)
	return &t, nil
}

// InsertTenant adds a tenant.
func (t *Tx) InsertTenant(ctx context.Context, v *Tenant) error {
	_, err := t.exec(ctx, "INSERT INTO tenants ("+tenantCols+") VALUES ($1, $2, $3, $4, $5, $6, $7)", v.ID, v.Name, millis(v.CreatedAt),
		v.SLA.MaxLossPercent, v.SLA.MaxRTTMillis, v.SLA.MaxJitterMillis, v.BillingCustomer)
	return err
}

// UpdateTenantSLA replaces a tenant's SLA.
func (t *Tx) UpdateTenantSLA(ctx context.Context, id string, sla SLA) error {
	r, err := t.exec(ctx, "UPDATE tenants SET sla_max_loss_percent = $2, sla_max_rtt_ms = $3, sla_max_jitter_ms = $4 WHERE id = $1",
		id, sla.MaxLossPercent, sla.MaxRTTMillis, sla.MaxJitterMillis)
	return mustAffect(r, err, "tenant "+id)
}

// UpdateTenantBillingCustomer sets the customer a tenant's usage is billed
// to at the metering API ("" for none).
func (t *Tx) UpdateTenantBillingCustomer(ctx context.Context, id, customer string) error {
	r, err := t.exec(ctx, "UPDATE tenants SET billing_customer = $2 WHERE id = $1", id, customer)
	return mustAffect(r, err, "tenant "+id)
}

// TenantByID returns one tenant.
func (t *Tx) TenantByID(ctx context.Context, id string) (*Tenant, error) {
	return oneTenant(t.queryRow(ctx, "SELECT "+tenantCols+" FROM tenants WHERE id = $1", id), id)
}

// TenantByName returns one tenant.
func (t *Tx) TenantByName(ctx context.Context, name string) (*Tenant, error) {
	return oneTenant(t.queryRow(ctx, "SELECT "+tenantCols+" FROM tenants WHERE name = $1", name), name)
}

func oneTenant(row *sql.Row, key string) (*Tenant, error) {
	v, err := scanTenant(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("tenant %q: %w", key, ErrNotFound)
	}
	return v, err
}

// ListTenants returns every tenant, by name.
func (t *Tx) ListTenants(ctx context.Context) ([]*Tenant, error) {
	rows, err := t.query(ctx, "SELECT "+tenantCols+" FROM tenants ORDER BY name")
	if err != nil {
		return nil, err
	}
	return collect(rows, scanTenant)
}

// DeleteTenant removes a tenant and, by cascade, everything it owns.
func (t *Tx) DeleteTenant(ctx context.Context, id string) error {
	r, err := t.exec(ctx, "DELETE FROM tenants WHERE id = $1", id)
	return mustAffect(r, err, "tenant "+id)
}

// collect scans every row.
func collect[T any](rows *sql.Rows, scan func(interface{ Scan(...any) error }) (*T, error)) ([]*T, error) {
	defer rows.Close()
	var out []*T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, mapErr(rows.Err())
}
