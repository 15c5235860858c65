-- Device identity (issue 14): a device proves itself with a secret on every protocol, naming a
-- device by its uid alone becomes an explicit opt-in, and uids and emails are unique per tenant
-- only, so that creating one never discloses another tenant's.

-- 1. Device uids are unique within their tenant. The uid no longer names a device across
--    tenants: a device is found by its secret (token digest, UDP key id), and the uid it reports
--    must match. Lookups by uid alone (uid-only devices) use the plain index.
ALTER TABLE devices DROP CONSTRAINT IF EXISTS devices_uid_key;
ALTER TABLE devices ADD CONSTRAINT devices_tenant_uid_key UNIQUE (tenant_id, uid);
CREATE INDEX devices_uid_idx ON devices (uid);

-- 2. Per-device settings; NULL means "the tenant's default" (tenants.settings):
--    uid_only       true: the device may report by its uid alone, without a token (legacy
--                   OsmAnd / Traccar Client set-ups, Teltonika by IMEI). Tenant default
--                   settings->'uid_only_devices' (a JSON boolean), else false.
--    speed_unit     the unit the OsmAnd endpoint reads `speed` in. Tenant default
--                   settings->>'osmand_speed_unit', else 'kn' (Traccar's unit).
--    payload_secret the OwnTracks payload-encryption secret (the app's "encryption key"). Kept
--                   readable because the server must decrypt with it; write-only in the API,
--                   never logged or returned.
ALTER TABLE devices
    ADD COLUMN uid_only boolean,
    ADD COLUMN speed_unit text CHECK (speed_unit IN ('kn', 'mps', 'kmh', 'mph')),
    ADD COLUMN payload_secret text CHECK (payload_secret IS NULL OR length(payload_secret) BETWEEN 1 AND 256);

-- A device without an ingest token could only ever report by uid (OsmAnd): keep such legacy
-- devices working by opting them in explicitly, visible and revocable in the API. Devices with a
-- token must present it from now on.
UPDATE devices SET uid_only = true WHERE token_hash IS NULL AND uid_only IS NULL;

-- The one place the effective settings are computed (device default, then tenant default, then
-- the built-in default): the credential lookups and the management API read this view, so the
-- rule cannot diverge between them. A malformed tenant setting counts as absent.
CREATE VIEW device_identity AS
SELECT d.id,
       d.tenant_id,
       d.uid,
       d.disabled,
       d.token_hash,
       d.udp_key,
       coalesce(d.uid_only,
                CASE WHEN jsonb_typeof(t.settings -> 'uid_only_devices') = 'boolean'
                     THEN (t.settings ->> 'uid_only_devices')::boolean END,
                false) AS uid_only,
       coalesce(d.speed_unit,
                CASE WHEN t.settings ->> 'osmand_speed_unit' IN ('kn', 'mps', 'kmh', 'mph')
                     THEN t.settings ->> 'osmand_speed_unit' END,
                'kn') AS speed_unit,
       d.payload_secret
FROM devices d
JOIN tenants t ON t.id = d.tenant_id;

-- 3. Emails are unique per tenant (case-insensitive). Login finds candidates by email across
--    tenants (see the query API's login), hence the plain index.
DROP INDEX IF EXISTS users_email_key;
CREATE UNIQUE INDEX users_tenant_email_key ON users (tenant_id, lower(email));
CREATE INDEX users_email_idx ON users (lower(email));
