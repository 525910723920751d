-- The retention index carries the whole key: PostgreSQL, before its first
-- ANALYZE of a fresh table, picked the (width_ms, bucket) index over the
-- primary key to look up a flush's windows, and filtered every row of the
-- bucket for each key (a 2,000-window lookup took 0.35 s at 20,000 rows
-- and grew with the table). With every key column in it, either index
-- finds a window directly. Keep in step with ../sqlite/0016_telemetry_age_index.sql.
DROP INDEX telemetry_windows_age;
CREATE INDEX telemetry_windows_age ON telemetry_windows (width_ms, bucket, metric, device_id, version);
