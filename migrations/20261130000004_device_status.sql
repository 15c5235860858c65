-- Device status and invalid fixes (issue 15, real devices).
--
-- * `device_status`: one row per device, what the device last said about itself (a heartbeat, a
--   cell/Wi-Fi-only report, the battery or alarm a fix report carried) and when it was last
--   heard from. Written by the processor in the same transaction as the batch's positions;
--   the status fields only move forward in report time (`status_time`), `last_seen` only moves
--   forward too (the newest of status time and stored fix time). No foreign key to `devices`,
--   like `last_positions`: a record of a deleted device still in the log must never make a batch
--   fail; readers join `devices` on id and tenant.
-- * `positions.valid`: whether the device itself called the fix valid (Traccar `valid=false`, a
--   Teltonika record without satellites). An invalid fix is history, never the latest or live
--   position, so `last_positions` only ever holds `true`; it gets the column too because both
--   tables share one column list (`gps_store::positions::COLUMNS`).
--
-- Both storage paths: `ADD COLUMN .. NOT NULL DEFAULT` on a native partitioned table is a
-- catalog-only change in PostgreSQL 11+ and propagates to every partition; on a TimescaleDB
-- hypertable with compression it is supported from TimescaleDB 2.6. No superuser rights needed.

ALTER TABLE positions ADD COLUMN valid boolean NOT NULL DEFAULT true;
ALTER TABLE last_positions ADD COLUMN valid boolean NOT NULL DEFAULT true;

CREATE TABLE device_status (
    device_id    uuid PRIMARY KEY,
    tenant_id    uuid        NOT NULL,
    -- The newest of the status report time and the fix times stored for the device.
    last_seen    timestamptz NOT NULL,
    -- Time of the newest status report applied (NULL while the device only sent fixes).
    status_time  timestamptz,
    battery_pct  double precision CHECK (battery_pct BETWEEN 0 AND 100),
    charging     boolean,
    -- The newest alarm the device raised and the time of the report that carried it; a later
    -- report without an alarm does not clear it.
    alarm        text,
    alarm_time   timestamptz,
    motion       boolean,
    -- Other things the reports carried (cell towers, Wi-Fi, push token, IO elements): the
    -- newest report's keys over the older ones.
    attributes   jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_status_tenant_idx ON device_status (tenant_id);
