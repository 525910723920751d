-- A window's max, min and latest sample time as columns beside its JSON
-- aggregate (which stays the truth), so an alert rule's candidates are a
-- comparison of columns, not a JSON extraction per window. Written with the
-- aggregate by every merge. Keep in step with ../postgres/0017_telemetry_extremes.sql.
ALTER TABLE telemetry_windows ADD COLUMN max_value REAL;
ALTER TABLE telemetry_windows ADD COLUMN min_value REAL;
ALTER TABLE telemetry_windows ADD COLUMN last_ts INTEGER;
UPDATE telemetry_windows SET
    max_value = json_extract(agg, '$.max'),
    min_value = json_extract(agg, '$.min'),
    last_ts = json_extract(agg, '$.last_ts');
