-- The first schema. Every statement here must run unchanged on SQLite and
-- PostgreSQL: text ids, BIGINT unix milliseconds for times, TEXT for
-- addresses and lists (canonical, comma-separated), no engine-specific types.

-- +goose Up
CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE sites (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    lan_prefixes TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE appliances (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    site_id         TEXT NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    public_key      TEXT NOT NULL,
    overlay_addr    TEXT NOT NULL,
    endpoints       TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    created_at      BIGINT NOT NULL,
    last_seen_at    BIGINT NOT NULL DEFAULT 0,
    revoked_at      BIGINT NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, overlay_addr)
);
CREATE INDEX appliances_site ON appliances (site_id);
CREATE UNIQUE INDEX appliances_live_name ON appliances (tenant_id, name) WHERE state <> 'revoked';
CREATE UNIQUE INDEX appliances_live_key ON appliances (public_key) WHERE state <> 'revoked';

CREATE TABLE enrollment_tokens (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    site_id      TEXT NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    secret_hash  TEXT NOT NULL UNIQUE,
    description  TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT NOT NULL DEFAULT 0,
    appliance_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX enrollment_tokens_tenant ON enrollment_tokens (tenant_id);

-- tenant_id is NULL for operator tokens.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL UNIQUE,
    scope        TEXT NOT NULL,
    tenant_id    TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    description  TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL DEFAULT 0,
    last_used_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id);

-- changes is the change feed every replica follows. A write that alters what
-- any appliance should see appends one row in the same transaction; ids are
-- assigned as MAX(id)+1 under the store's write lock, so they commit in order.
CREATE TABLE changes (
    id         BIGINT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    subject    TEXT NOT NULL DEFAULT '',
    request_id TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL
);
CREATE INDEX changes_created ON changes (created_at);

-- +goose Down
DROP TABLE changes;
DROP TABLE api_tokens;
DROP TABLE enrollment_tokens;
DROP TABLE appliances;
DROP TABLE sites;
DROP TABLE tenants;
