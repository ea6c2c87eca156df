-- Pairs: a site may have two appliances. Each appliance has a priority in
-- its pair (higher preferred) and may be drained (asked to stay standby).
-- The controller keeps each member's latest report, the pair status it
-- derives from them per site, and the history of failovers (kept 30
-- days). Appliances in failovers are named by id. Same rules as 00001:
-- every statement runs unchanged on SQLite and PostgreSQL; this file
-- depends on no migration after 00003.

-- +goose Up
ALTER TABLE appliances ADD COLUMN priority BIGINT NOT NULL DEFAULT 100;
-- drained_at is when the appliance was drained, 0 if it is not.
ALTER TABLE appliances ADD COLUMN drained_at BIGINT NOT NULL DEFAULT 0;

-- The latest report of each pair member: its own view of the pair.
CREATE TABLE pair_reports (
    appliance_id    TEXT PRIMARY KEY REFERENCES appliances (id) ON DELETE CASCADE,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    site_id         TEXT NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    role            TEXT NOT NULL,
    term            BIGINT NOT NULL,
    since_ms        BIGINT NOT NULL,
    partner_alive   BIGINT NOT NULL,
    failover_at     BIGINT NOT NULL DEFAULT 0,
    failover_from   TEXT NOT NULL DEFAULT '',
    failover_to     TEXT NOT NULL DEFAULT '',
    failover_reason TEXT NOT NULL DEFAULT '',
    reported_at     BIGINT NOT NULL
);
CREATE INDEX pair_reports_site ON pair_reports (site_id);

-- One row per site whose members reported: the active member the
-- controller derived (the highest term reported active), since when, and
-- the last failover.
CREATE TABLE pair_status (
    site_id         TEXT PRIMARY KEY REFERENCES sites (id) ON DELETE CASCADE,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    active_id       TEXT NOT NULL,
    term            BIGINT NOT NULL,
    since_ms        BIGINT NOT NULL,
    failover_at     BIGINT NOT NULL DEFAULT 0,
    failover_from   TEXT NOT NULL DEFAULT '',
    failover_to     TEXT NOT NULL DEFAULT '',
    failover_reason TEXT NOT NULL DEFAULT '',
    updated_at      BIGINT NOT NULL
);
CREATE INDEX pair_status_tenant ON pair_status (tenant_id);

-- Each change of a site's active member, once per term (both members may
-- report the same failover).
CREATE TABLE pair_failovers (
    site_id   TEXT NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    term      BIGINT NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    at_ms     BIGINT NOT NULL,
    from_id   TEXT NOT NULL,
    to_id     TEXT NOT NULL,
    reason    TEXT NOT NULL,
    PRIMARY KEY (site_id, term)
);
CREATE INDEX pair_failovers_at ON pair_failovers (at_ms);

-- +goose Down
DROP TABLE pair_failovers;
DROP TABLE pair_status;
DROP TABLE pair_reports;
ALTER TABLE appliances DROP COLUMN drained_at;
ALTER TABLE appliances DROP COLUMN priority;
