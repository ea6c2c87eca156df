-- Path history: the per-path interval aggregates appliances report (one
-- row per appliance, path and interval, kept 48 h) and their 1-minute
-- rollups (kept 30 days). A path is one local uplink of the reporting
-- appliance to one remote endpoint of a peer appliance. Times are unix
-- milliseconds, RTTs and jitter microseconds. Same rules as 00001: every
-- statement runs unchanged on SQLite and PostgreSQL.

-- +goose Up
-- The primary key is the dedup key: a report sent again (after a lost
-- answer) inserts nothing.
CREATE TABLE path_points (
    appliance_id      TEXT NOT NULL REFERENCES appliances (id) ON DELETE CASCADE,
    peer_appliance_id TEXT NOT NULL REFERENCES appliances (id) ON DELETE CASCADE,
    uplink            TEXT NOT NULL,
    remote            TEXT NOT NULL,
    start_ms          BIGINT NOT NULL,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    site_id           TEXT NOT NULL,
    peer_site_id      TEXT NOT NULL,
    end_ms            BIGINT NOT NULL,
    sent              BIGINT NOT NULL,
    received          BIGINT NOT NULL,
    lost              BIGINT NOT NULL,
    rtt_min_us        BIGINT NOT NULL,
    rtt_mean_us       BIGINT NOT NULL,
    rtt_p50_us        BIGINT NOT NULL,
    rtt_p99_us        BIGINT NOT NULL,
    rtt_max_us        BIGINT NOT NULL,
    jitter_us         BIGINT NOT NULL,
    PRIMARY KEY (appliance_id, peer_appliance_id, uplink, remote, start_ms)
);
CREATE INDEX path_points_pair ON path_points (tenant_id, site_id, peer_site_id, start_ms);
CREATE INDEX path_points_start ON path_points (start_ms);

-- One row per path and minute (minute_ms is the start of the minute the
-- points started in). The RTT percentiles are approximations: p50 is the
-- mean of the points' p50 weighted by replies, p99 the largest p99.
CREATE TABLE path_rollups (
    appliance_id      TEXT NOT NULL REFERENCES appliances (id) ON DELETE CASCADE,
    peer_appliance_id TEXT NOT NULL REFERENCES appliances (id) ON DELETE CASCADE,
    uplink            TEXT NOT NULL,
    remote            TEXT NOT NULL,
    minute_ms         BIGINT NOT NULL,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    site_id           TEXT NOT NULL,
    peer_site_id      TEXT NOT NULL,
    points            BIGINT NOT NULL,
    sent              BIGINT NOT NULL,
    received          BIGINT NOT NULL,
    lost              BIGINT NOT NULL,
    rtt_min_us        BIGINT NOT NULL,
    rtt_mean_us       BIGINT NOT NULL,
    rtt_p50_us        BIGINT NOT NULL,
    rtt_p99_us        BIGINT NOT NULL,
    rtt_max_us        BIGINT NOT NULL,
    jitter_us         BIGINT NOT NULL,
    PRIMARY KEY (appliance_id, peer_appliance_id, uplink, remote, minute_ms)
);
CREATE INDEX path_rollups_pair ON path_rollups (tenant_id, site_id, peer_site_id, minute_ms);
CREATE INDEX path_rollups_minute ON path_rollups (minute_ms);

-- +goose Down
DROP TABLE path_rollups;
DROP TABLE path_points;
