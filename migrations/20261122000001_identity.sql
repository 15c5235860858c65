-- Identity and access: tenants, roles and their permissions, users, groups, devices, API keys,
-- refresh tokens and the audit log. Every tenant-owned row carries tenant_id so that every query
-- of the data layer can be scoped by the credential's tenant.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    -- Per-tenant validation thresholds and other settings; see processor docs for keys.
    settings    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE roles (
    name        text PRIMARY KEY,
    description text NOT NULL
);

CREATE TABLE permissions (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z_]+:[a-z_]+$'),
    description text NOT NULL
);

-- Role grants: which permission each role carries (resource:action).
CREATE TABLE role_permissions (
    role        text NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    permission  text NOT NULL REFERENCES permissions (name) ON DELETE CASCADE,
    PRIMARY KEY (role, permission)
);

INSERT INTO roles (name, description) VALUES
    ('admin',   'everything in its tenant: users, roles, keys, devices, groups, audit, all data'),
    ('manager', 'devices and groups, all data of the tenant'),
    ('analyst', 'read and export history and summaries of all tenant devices, live view'),
    ('viewer',  'live view and history of the devices in its groups only'),
    ('device',  'ingest its own fixes, nothing else');

INSERT INTO permissions (name, description) VALUES
    ('users:read',       'list and read users'),
    ('users:write',      'create, change and disable users'),
    ('roles:write',      'assign roles to users'),
    ('keys:read',        'list API keys'),
    ('keys:write',       'create and revoke API keys'),
    ('devices:read',     'list and read devices'),
    ('devices:write',    'create, change, disable devices and rotate their credentials'),
    ('groups:read',      'list and read groups'),
    ('groups:write',     'create, change groups and their members'),
    ('audit:read',       'read the audit log'),
    ('positions:read',   'read history, latest positions and summaries'),
    ('positions:export', 'export history as GeoJSON, GPX or CSV'),
    ('live:read',        'watch live positions'),
    ('fixes:write',      'ingest fixes');

INSERT INTO role_permissions (role, permission) VALUES
    ('admin', 'users:read'), ('admin', 'users:write'), ('admin', 'roles:write'),
    ('admin', 'keys:read'), ('admin', 'keys:write'), ('admin', 'devices:read'),
    ('admin', 'devices:write'), ('admin', 'groups:read'), ('admin', 'groups:write'),
    ('admin', 'audit:read'), ('admin', 'positions:read'), ('admin', 'positions:export'),
    ('admin', 'live:read'), ('admin', 'fixes:write'),
    ('manager', 'devices:read'), ('manager', 'devices:write'), ('manager', 'groups:read'),
    ('manager', 'groups:write'), ('manager', 'positions:read'), ('manager', 'positions:export'),
    ('manager', 'live:read'),
    ('analyst', 'devices:read'), ('analyst', 'groups:read'), ('analyst', 'positions:read'),
    ('analyst', 'positions:export'), ('analyst', 'live:read'),
    ('viewer', 'devices:read'), ('viewer', 'groups:read'), ('viewer', 'positions:read'),
    ('viewer', 'live:read'),
    ('device', 'fixes:write');

CREATE TABLE users (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email          text NOT NULL CHECK (position('@' IN email) > 1),
    display_name   text NOT NULL DEFAULT '',
    password_hash  text NOT NULL,               -- argon2id PHC string
    role           text NOT NULL REFERENCES roles (name),
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- Login is by email alone, so an address names one user across all tenants.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_tenant_idx ON users (tenant_id);

CREATE TABLE devices (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- The device's own identifier (IMEI, Traccar Client id, OwnTracks user/device). Devices speaking
    -- OsmAnd identify by it alone, so it is unique across tenants.
    uid           text NOT NULL UNIQUE CHECK (length(uid) BETWEEN 1 AND 128),
    name          text NOT NULL DEFAULT '',
    token_hash    text UNIQUE,                  -- sha256 hex of the ingest bearer token
    udp_key       bytea CHECK (udp_key IS NULL OR length(udp_key) = 32), -- HMAC-SHA256 key for UDP
    disabled      boolean NOT NULL DEFAULT false,
    attributes    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_tenant_idx ON devices (tenant_id);

CREATE TABLE groups (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

-- Users in a group (a viewer sees the devices of its groups).
CREATE TABLE group_members (
    group_id    uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user_idx ON group_members (user_id);

-- Devices in a group.
CREATE TABLE group_devices (
    group_id    uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    device_id   uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX group_devices_device_idx ON group_devices (device_id);

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL DEFAULT '',
    prefix        text NOT NULL UNIQUE,         -- the visible lookup id inside the key
    key_hash      text NOT NULL,                -- sha256 hex of the whole key
    scopes        text[] NOT NULL DEFAULT '{}', -- permission names
    created_by    uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

CREATE TABLE refresh_tokens (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash    text NOT NULL UNIQUE,
    -- Tokens of one login share a family; reuse of a rotated token revokes the whole family.
    family_id     uuid NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    replaced_by   uuid
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    at           timestamptz NOT NULL DEFAULT now(),
    actor_kind   text NOT NULL CHECK (actor_kind IN ('user', 'api_key', 'device', 'system')),
    actor_id     uuid,
    action       text NOT NULL,                 -- e.g. auth.login, devices.create, positions.read
    object_kind  text,
    object_id    text,
    ip           inet,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_tenant_at_idx ON audit_log (tenant_id, at DESC);
