-- Position storage. Two paths, chosen once, here, and recorded in gps_storage:
--   * TimescaleDB (when the extension is usable by the migrating role): `positions` is a hypertable
--     with daily chunks, compression after 7 days, retention after 365 days, and
--     `positions_hourly` is a continuous aggregate.
--   * Native PostgreSQL (the fallback, e.g. on Debian where TimescaleDB is not packaged):
--     `positions` is range-partitioned by day; partitions are created ahead and dropped by
--     retention through gps_ensure_position_partitions / gps_drop_position_partitions (the
--     processor calls them), and `positions_hourly` is a plain view.
-- Both paths share one column list (positions_columns below) and the same table, view and
-- function names, so every query works on both. Set `gps.disable_timescaledb = on` on the
-- database to force the fallback.
--
-- Detection needs no superuser: it never reads `shared_preload_libraries` (a plain role may not,
-- SQLSTATE 42501 on a server with TimescaleDB). The extension is used when it is already
-- created in this database, or when `CREATE EXTENSION timescaledb` succeeds here; any error
-- of that attempt (not preloaded, no right to create it) is caught and the fallback taken, with
-- a warning naming the reason. This text was corrected on 2026-11-30 (issue 18); the migrator
-- accepts the checksum of the earlier text for this version (`gps_runtime::db::migrate`).

CREATE TABLE gps_storage (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    mode      text NOT NULL CHECK (mode IN ('timescaledb', 'partitioned'))
);

CREATE FUNCTION gps_storage_mode() RETURNS text
LANGUAGE sql STABLE AS $$ SELECT mode FROM gps_storage $$;

DO $migration$
DECLARE
    -- The one column list of `positions`, shared by both storage paths.
    positions_columns constant text := $cols$
        tenant_id    uuid             NOT NULL,
        device_id    uuid             NOT NULL,
        fix_time     timestamptz      NOT NULL,
        received_at  timestamptz      NOT NULL,
        lat          double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
        lon          double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
        altitude_m   double precision,
        speed_mps    double precision,
        heading_deg  double precision,
        accuracy_m   double precision,
        battery_pct  double precision,
        satellites   smallint,
        hdop         double precision,
        protocol     text             NOT NULL,
        attributes   jsonb,
        PRIMARY KEY (device_id, fix_time)
    $cols$;
    use_timescale boolean := false;
BEGIN
    IF coalesce(current_setting('gps.disable_timescaledb', true), '') = 'on' THEN
        RAISE NOTICE 'gps.disable_timescaledb is on: native partitioning';
    ELSIF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        use_timescale := true;
    ELSIF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        -- A sub-block: its error rolls back only the attempt ("must be preloaded", "permission
        -- denied to create extension"), and the fallback is taken.
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            use_timescale := true;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'timescaledb is installed but not usable here (%: %): native partitioning',
                SQLSTATE, SQLERRM;
        END;
    END IF;

    IF use_timescale THEN
        -- TimescaleDB path ------------------------------------------------------------------
        INSERT INTO gps_storage (mode) VALUES ('timescaledb');
        EXECUTE format('CREATE TABLE positions (%s)', positions_columns);
        PERFORM create_hypertable('positions', 'fix_time',
                                  chunk_time_interval => INTERVAL '1 day');
        ALTER TABLE positions SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'device_id',
            timescaledb.compress_orderby = 'fix_time DESC'
        );
        PERFORM add_compression_policy('positions', INTERVAL '7 days');
        PERFORM add_retention_policy('positions', INTERVAL '365 days');
        EXECUTE $view$
            CREATE MATERIALIZED VIEW positions_hourly WITH (timescaledb.continuous) AS
            SELECT tenant_id,
                   device_id,
                   time_bucket(INTERVAL '1 hour', fix_time) AS bucket,
                   count(*)        AS fixes,
                   min(fix_time)   AS first_fix_time,
                   max(fix_time)   AS last_fix_time,
                   avg(speed_mps)  AS avg_speed_mps,
                   max(speed_mps)  AS max_speed_mps,
                   min(lat) AS min_lat, max(lat) AS max_lat,
                   min(lon) AS min_lon, max(lon) AS max_lon
            FROM positions
            GROUP BY tenant_id, device_id, bucket
            WITH NO DATA
        $view$;
        PERFORM add_continuous_aggregate_policy('positions_hourly',
            start_offset => INTERVAL '3 days',
            end_offset => INTERVAL '1 hour',
            schedule_interval => INTERVAL '30 minutes');
    ELSE
        -- Native partitioning path ----------------------------------------------------------
        INSERT INTO gps_storage (mode) VALUES ('partitioned');
        EXECUTE format('CREATE TABLE positions (%s) PARTITION BY RANGE (fix_time)',
                       positions_columns);
        EXECUTE $view$
            CREATE VIEW positions_hourly AS
            SELECT tenant_id,
                   device_id,
                   date_trunc('hour', fix_time, 'UTC') AS bucket,
                   count(*)        AS fixes,
                   min(fix_time)   AS first_fix_time,
                   max(fix_time)   AS last_fix_time,
                   avg(speed_mps)  AS avg_speed_mps,
                   max(speed_mps)  AS max_speed_mps,
                   min(lat) AS min_lat, max(lat) AS max_lat,
                   min(lon) AS min_lon, max(lon) AS max_lon
            FROM positions
            GROUP BY tenant_id, device_id, bucket
        $view$;
    END IF;
END
$migration$;

-- Indexes on the parent propagate to every partition or chunk.
CREATE INDEX positions_tenant_time_idx ON positions (tenant_id, fix_time DESC);
CREATE INDEX positions_device_received_idx ON positions (device_id, received_at);

-- Create the daily partitions covering [from_day, to_day] (UTC days) that do not exist yet.
-- Returns how many it created. A no-op under TimescaleDB, which makes chunks by itself.
CREATE FUNCTION gps_ensure_position_partitions(from_day date, to_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    part text;
    created integer := 0;
BEGIN
    IF gps_storage_mode() <> 'partitioned' THEN
        RETURN 0;
    END IF;
    IF to_day - from_day > 3660 THEN
        RAISE EXCEPTION 'refusing to create % partitions at once', to_day - from_day + 1;
    END IF;
    -- Serialize concurrent callers (several processors) instead of racing on the catalog.
    PERFORM pg_advisory_xact_lock(hashtext('gps_position_partitions'));
    day := from_day;
    WHILE day <= to_day LOOP
        part := 'positions_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF positions FOR VALUES FROM (%L) TO (%L)',
                part,
                (day::timestamp AT TIME ZONE 'UTC'),
                ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        END IF;
        day := day + 1;
    END LOOP;
    RETURN created;
END
$$;

-- Drop the partitions (or, under TimescaleDB, chunks) whose whole day lies before `older_than`.
-- Returns how many it dropped.
CREATE FUNCTION gps_drop_position_partitions(older_than timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    IF gps_storage_mode() = 'timescaledb' THEN
        EXECUTE 'SELECT count(*) FROM drop_chunks(''positions'', older_than => $1)'
            INTO dropped USING older_than;
        RETURN dropped;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('gps_position_partitions'));
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'positions'::regclass
          AND c.relname ~ '^positions_p[0-9]{8}$'
    LOOP
        IF ((to_date(substr(part.relname, 12), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC')
               <= older_than THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$$;

-- Partitions for the recent past and the week ahead, so a new install takes fixes at once.
SELECT gps_ensure_position_partitions(
    (now() AT TIME ZONE 'UTC')::date - 30,
    (now() AT TIME ZONE 'UTC')::date + 7);

-- The newest fix of each device by fix time (the processor only ever moves it forward).
CREATE TABLE last_positions (
    LIKE positions INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id)
);
CREATE INDEX last_positions_tenant_idx ON last_positions (tenant_id);
