-- Usage metering: the ledger of what each site sent and received per hour,
-- the dedup table that makes usage records count exactly once, the outbox
-- of events for the external metering API, and each tenant's billing
-- customer. Same rules as 00001: every statement runs unchanged on SQLite
-- and PostgreSQL.
--
-- The ledger and the outbox have no foreign keys: they are billing records
-- and outlive a deleted tenant, site or appliance.

-- +goose Up
ALTER TABLE tenants ADD COLUMN billing_customer TEXT NOT NULL DEFAULT '';

-- One row per tenant, site, peer site ('' for the gateway meter), meter,
-- direction and hour (hour_ms is the start of the UTC hour).
CREATE TABLE usage_ledger (
    tenant_id    TEXT NOT NULL,
    site_id      TEXT NOT NULL,
    peer_site_id TEXT NOT NULL,
    meter        TEXT NOT NULL,
    direction    TEXT NOT NULL,
    hour_ms      BIGINT NOT NULL,
    bytes        BIGINT NOT NULL,
    packets      BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, site_id, peer_site_id, meter, direction, hour_ms)
);
CREATE INDEX usage_ledger_hour ON usage_ledger (hour_ms);

-- Every usage record counted, by appliance and sequence number: a record
-- sent again inserts nothing here and adds nothing to the ledger. Rows go
-- once the record's start is older than the dedup retention; records that
-- old are no longer counted at all.
CREATE TABLE usage_seen (
    appliance_id TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    start_ms     BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    PRIMARY KEY (appliance_id, seq)
);
CREATE INDEX usage_seen_start ON usage_seen (start_ms);

-- Events waiting for the metering API, written in the same transaction as
-- the ledger increment they carry. state is 'pending' or 'dead'; a sent
-- event is deleted. A sender owns a pending row while claim_until is in
-- the future.
CREATE TABLE usage_outbox (
    event_id     TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    site_id      TEXT NOT NULL,
    appliance_id TEXT NOT NULL,
    first_seq    BIGINT NOT NULL,
    meter        TEXT NOT NULL,
    direction    TEXT NOT NULL,
    meter_name   TEXT NOT NULL,
    hour_ms      BIGINT NOT NULL,
    start_ms     BIGINT NOT NULL,
    end_ms       BIGINT NOT NULL,
    bytes        BIGINT NOT NULL,
    packets      BIGINT NOT NULL,
    records      BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    state        TEXT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    next_at      BIGINT NOT NULL,
    claimed_by   TEXT NOT NULL DEFAULT '',
    claim_until  BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT NOT NULL DEFAULT '',
    dead_at      BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX usage_outbox_due ON usage_outbox (state, next_at);
CREATE INDEX usage_outbox_created ON usage_outbox (state, created_at);

-- +goose Down
DROP TABLE usage_outbox;
DROP TABLE usage_seen;
DROP TABLE usage_ledger;
ALTER TABLE tenants DROP COLUMN billing_customer;
