-- A window's max, min and latest sample time as columns beside its JSON
-- aggregate (which stays the truth), so an alert rule's candidates are a
-- comparison of columns: casting every window's JSON to jsonb cost a 100,000-
-- device evaluation 2.8 s. Written with the aggregate by every merge. Keep in
-- step with ../sqlite/0017_telemetry_extremes.sql.
ALTER TABLE telemetry_windows ADD COLUMN max_value DOUBLE PRECISION;
ALTER TABLE telemetry_windows ADD COLUMN min_value DOUBLE PRECISION;
ALTER TABLE telemetry_windows ADD COLUMN last_ts BIGINT;
UPDATE telemetry_windows SET
    max_value = CAST(agg::jsonb ->> 'max' AS DOUBLE PRECISION),
    min_value = CAST(agg::jsonb ->> 'min' AS DOUBLE PRECISION),
    last_ts = CAST(agg::jsonb ->> 'last_ts' AS BIGINT);
