-- Keep the processor's per-batch write of `device_event_state` cheap (docs/events.md, "Cost on
-- the batch path"). Every fix moves a device's `last_fix_time` / `last_seen`, so every batch
-- updates the state row of every device it folds. With `last_seen` indexed, none of those
-- updates could be HOT: each wrote a new entry into every index of the table. Without it, the
-- indexed columns (`device_id`, `tenant_id`) never change on update, and with free room on the
-- page (fillfactor) the update stays on the page and touches no index.
--
-- The offline timer's query (`WHERE online AND last_seen < $1 ORDER BY last_seen LIMIT 500 FOR
-- UPDATE SKIP LOCKED`, every 30 s) scans the table instead: one sequential pass over ~100-byte
-- tuples plus a top-N sort, a few tens of milliseconds at 100,000 devices.
--
-- Plain DDL on a table the application owns: no superuser, the same on both storage paths (the
-- table is not partitioned on either). The fillfactor applies to pages written from now on.
DROP INDEX IF EXISTS device_event_state_online_idx;
ALTER TABLE device_event_state SET (fillfactor = 70);
