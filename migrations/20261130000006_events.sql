-- Events (issue 16): geofences, the events derived from the fix log, the per-device state the
-- evaluator resumes from, and the webhook tables the delivery work builds on.
--
-- Events are a projection of the log like positions: the processor computes them in fix-time
-- order per device (`gps_domain::events`), writes them in the same transaction as the positions
-- and the device's `device_event_state`, and a replay recomputes identical rows (the event id is
-- a UUIDv5 of device, type, fix time and fence; the unique key below absorbs a redelivery).
-- See docs/events.md.
--
-- Both storage paths: these are plain tables (no hypertable, no partitioning), no extension and
-- no superuser rights needed.

-- 1. Geofences. The geometry is the GeoJSON the client sent (validated by
--    `gps_domain::events::fence`); the bounding box is computed from it on write, with
--    `bbox_min_lon > bbox_max_lon` meaning the fence crosses the antimeridian (the rule of
--    `gps_domain::geo::BBox`), so that a coarse SQL prefilter can use the same predicate as
--    every other box (`gps_store::geo`).
CREATE TABLE geofences (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- GeoJSON Polygon, MultiPolygon or Point (a circle of radius_m around it).
    geometry        jsonb NOT NULL CHECK (geometry ->> 'type' IN ('Polygon', 'MultiPolygon', 'Point')),
    radius_m        double precision CHECK (radius_m > 0),
    bbox_min_lon    double precision NOT NULL CHECK (bbox_min_lon BETWEEN -180 AND 180),
    bbox_min_lat    double precision NOT NULL CHECK (bbox_min_lat BETWEEN -90 AND 90),
    bbox_max_lon    double precision NOT NULL CHECK (bbox_max_lon BETWEEN -180 AND 180),
    bbox_max_lat    double precision NOT NULL CHECK (bbox_max_lat BETWEEN -90 AND 90),
    -- The fence's own speed limit, m/s (overspeed inside it); NULL: the device's limit applies.
    speed_limit_mps double precision CHECK (speed_limit_mps > 0),
    -- When the fence is active (weekly windows with a UTC offset); NULL: always.
    schedule        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((geometry ->> 'type' = 'Point') = (radius_m IS NOT NULL)),
    CHECK (bbox_min_lat <= bbox_max_lat)
);
CREATE INDEX geofences_tenant_idx ON geofences (tenant_id, name);

-- The groups a fence applies to: a fence without rows here applies to every device of its
-- tenant, else only to the devices of these groups.
CREATE TABLE geofence_groups (
    geofence_id uuid NOT NULL REFERENCES geofences (id) ON DELETE CASCADE,
    group_id    uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    PRIMARY KEY (geofence_id, group_id)
);
CREATE INDEX geofence_groups_group_idx ON geofence_groups (group_id);

-- 2. Events. No foreign key to devices or geofences, like `positions`: an event derived from
--    the log must never make a batch fail because its device or fence was deleted since; readers
--    join `devices` on id and tenant.
CREATE TABLE events (
    id           uuid PRIMARY KEY,
    tenant_id    uuid        NOT NULL,
    device_id    uuid        NOT NULL,
    type         text        NOT NULL CHECK (type IN ('geofence_enter', 'geofence_exit', 'overspeed',
                                                      'alarm', 'device_online', 'device_offline',
                                                      'motion_start', 'motion_stop')),
    -- The fix time of the fix (or status report) that raised it; for device_offline the instant
    -- the device became overdue (last seen + timeout).
    fix_time     timestamptz NOT NULL,
    -- Where the device was (NULL when it never reported a position).
    lat          double precision CHECK (lat BETWEEN -90 AND 90),
    lon          double precision CHECK (lon BETWEEN -180 AND 180),
    geofence_id  uuid,
    details      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- One event per (device, type, fix time, fence): a replayed or redelivered batch inserts
    -- nothing new (`ON CONFLICT DO NOTHING`).
    fence_key    text GENERATED ALWAYS AS (coalesce(geofence_id::text, '')) STORED,
    UNIQUE (device_id, type, fix_time, fence_key)
);
CREATE INDEX events_tenant_device_time_idx ON events (tenant_id, device_id, fix_time);
CREATE INDEX events_tenant_time_idx ON events (tenant_id, fix_time);

-- 3. The evaluator's state per device (`gps_domain::events::DeviceEventState`, serialized as
--    `state`): the fences it is inside, overspeed and motion state, the last fix and last seen
--    times, online. Written in the same transaction as the batch's events. The columns beside
--    the document serve the offline timer ("online devices not seen since ...") without
--    reading every document.
CREATE TABLE device_event_state (
    device_id       uuid PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    state           jsonb       NOT NULL,
    last_fix_time   timestamptz,
    last_seen       timestamptz,
    online          boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_event_state_online_idx ON device_event_state (last_seen) WHERE online;
CREATE INDEX device_event_state_tenant_idx ON device_event_state (tenant_id);

-- 4. Webhooks (delivery is the next round's work; the tables exist now so that the schema of
--    events is complete). The secret signs deliveries (HMAC-SHA256), so it is kept readable like
--    `devices.payload_secret`: write-only in the API, never logged or returned.
CREATE TABLE webhooks (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url          text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    -- Event type names; empty: every type.
    event_types  text[] NOT NULL DEFAULT '{}',
    secret       text NOT NULL CHECK (length(secret) BETWEEN 16 AND 256),
    disabled     boolean NOT NULL DEFAULT false,
    created_by   uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_tenant_idx ON webhooks (tenant_id);

-- One row per (webhook, event): idempotent by event id, with the attempt count, the next try
-- (retries with backoff) and the last outcome.
CREATE TABLE webhook_deliveries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id     uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    tenant_id      uuid NOT NULL,
    event_id       uuid NOT NULL,
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts       integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    response_status integer,
    error           text CHECK (error IS NULL OR length(error) <= 1000),
    created_at     timestamptz NOT NULL DEFAULT now(),
    delivered_at   timestamptz,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_webhook_idx ON webhook_deliveries (webhook_id, created_at DESC);

-- 5. Permissions: admins and managers write fences and webhooks, every reading role reads
--    fences and events (a viewer only its groups' devices' events, enforced by the API).
INSERT INTO permissions (name, description) VALUES
    ('geofences:read',  'list and read geofences'),
    ('geofences:write', 'create, change and delete geofences'),
    ('events:read',     'read events'),
    ('webhooks:write',  'create, change and delete webhooks and read their deliveries');

INSERT INTO role_permissions (role, permission) VALUES
    ('admin', 'geofences:read'), ('admin', 'geofences:write'), ('admin', 'events:read'),
    ('admin', 'webhooks:write'),
    ('manager', 'geofences:read'), ('manager', 'geofences:write'), ('manager', 'events:read'),
    ('manager', 'webhooks:write'),
    ('analyst', 'geofences:read'), ('analyst', 'events:read'),
    ('viewer', 'geofences:read'), ('viewer', 'events:read');
