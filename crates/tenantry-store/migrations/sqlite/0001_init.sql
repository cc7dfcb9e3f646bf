-- Tenantry control-plane schema, SQLite flavour. Keep it in step with ../postgres/0001_init.sql:
-- the same tables, columns and constraints; PostgreSQL adds row-level security on top.
-- Timestamps are unix milliseconds (BIGINT); JSON is TEXT; no BOOLEAN columns (the Any driver
-- decodes them differently per backend).

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    managed_by  TEXT NOT NULL DEFAULT 'api' CHECK (managed_by IN ('api', 'file')),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE plans (
    name        TEXT PRIMARY KEY NOT NULL,
    limits      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE subscriptions (
    tenant_id     TEXT PRIMARY KEY NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    plan          TEXT NOT NULL REFERENCES plans (name),
    status        TEXT NOT NULL DEFAULT 'active',
    period_start  BIGINT NOT NULL,
    period_end    BIGINT NOT NULL,
    overrides     TEXT NOT NULL DEFAULT '{}',
    updated_at    BIGINT NOT NULL
);
CREATE INDEX subscriptions_plan ON subscriptions (plan);

CREATE TABLE users (
    id             TEXT PRIMARY KEY NOT NULL,
    tenant_id      TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    email          TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('viewer', 'member', 'owner', 'platform_admin')),
    token_version  BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    CHECK ((tenant_id IS NULL AND role = 'platform_admin') OR (tenant_id IS NOT NULL AND role <> 'platform_admin'))
);
CREATE INDEX users_tenant ON users (tenant_id);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL,
    hash          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'member', 'owner')),
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    last_used_at  BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE routes (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id            TEXT NOT NULL,
    host          TEXT NOT NULL,
    path_prefix   TEXT,
    algorithm     TEXT,
    tls           TEXT,
    health_check  TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
-- One route per host and path prefix within a tenant (a missing prefix means '/').
CREATE UNIQUE INDEX routes_host_path ON routes (tenant_id, lower(host), coalesce(path_prefix, '/'));

CREATE TABLE backends (
    tenant_id  TEXT NOT NULL,
    route_id   TEXT NOT NULL,
    position   BIGINT NOT NULL,
    address    TEXT NOT NULL,
    weight     BIGINT,
    state      TEXT,
    PRIMARY KEY (tenant_id, route_id, address),
    FOREIGN KEY (tenant_id, route_id) REFERENCES routes (tenant_id, id) ON DELETE CASCADE
);

-- The global host registry: a host (lowercased) belongs to one tenant.
CREATE TABLE domains (
    host       TEXT PRIMARY KEY NOT NULL,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE
);
CREATE INDEX domains_tenant ON domains (tenant_id);

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    actor      TEXT NOT NULL,
    tenant_id  TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    before     TEXT,
    after      TEXT,
    ip         TEXT,
    at         BIGINT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
