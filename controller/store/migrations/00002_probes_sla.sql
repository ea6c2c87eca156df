-- Path probes and SLAs: each tenant's SLA thresholds (with defaults, so
-- existing tenants get them), per-site-pair overrides, and the tenant's
-- probe keys. Same rules as 00001: every statement runs unchanged on SQLite
-- and PostgreSQL.

-- +goose Up
ALTER TABLE tenants ADD COLUMN sla_max_loss_percent DOUBLE PRECISION NOT NULL DEFAULT 2;
ALTER TABLE tenants ADD COLUMN sla_max_rtt_ms BIGINT NOT NULL DEFAULT 150;
ALTER TABLE tenants ADD COLUMN sla_max_jitter_ms BIGINT NOT NULL DEFAULT 30;

-- One row per unordered pair of sites: site_a is the smaller id (the store
-- orders them; no CHECK, since PostgreSQL's collation need not order text
-- the way Go does). Deleting either site deletes the override.
CREATE TABLE sla_overrides (
    tenant_id        TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    site_a           TEXT NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    site_b           TEXT NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    max_loss_percent DOUBLE PRECISION NOT NULL,
    max_rtt_ms       BIGINT NOT NULL,
    max_jitter_ms    BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, site_a, site_b)
);
CREATE INDEX sla_overrides_site_a ON sla_overrides (site_a);
CREATE INDEX sla_overrides_site_b ON sla_overrides (site_b);

-- A tenant's probe keys: one 'current', at most one 'next' (distributed as
-- accepted while a rotation spreads) and one 'previous' (still accepted
-- after it). The secret is standard base64: it is distributed in netmaps,
-- so it cannot be stored hashed. Key ids grow per tenant and are never
-- reused.
CREATE TABLE probe_keys (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_id     BIGINT NOT NULL,
    secret     TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key_id)
);
CREATE UNIQUE INDEX probe_keys_role ON probe_keys (tenant_id, role);

-- +goose Down
DROP TABLE probe_keys;
DROP TABLE sla_overrides;
ALTER TABLE tenants DROP COLUMN sla_max_jitter_ms;
ALTER TABLE tenants DROP COLUMN sla_max_rtt_ms;
ALTER TABLE tenants DROP COLUMN sla_max_loss_percent;
