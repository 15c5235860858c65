-- Issue 16: a device's own speed limit (m/s) for `overspeed` events. NULL: no limit of its own
-- (a fence's limit may still apply). Read by the processor's event evaluation, written through
-- the device API (`speed_limit_mps`).
ALTER TABLE devices
    ADD COLUMN speed_limit_mps double precision
        CHECK (speed_limit_mps IS NULL OR (speed_limit_mps > 0 AND speed_limit_mps <= 150));
