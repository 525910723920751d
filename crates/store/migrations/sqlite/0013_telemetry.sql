-- Telemetry: one row per device, metric, version and window of a resolution,
-- holding the window's mergeable aggregate (count, sum, min, max, last and a
-- quantile sketch) as JSON. Groups are computed by merging their devices'
-- rows. Keep in step with ../postgres/0013_telemetry.sql.
CREATE TABLE telemetry_windows (
    metric TEXT NOT NULL,
    width_ms INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    version TEXT NOT NULL,
    agg TEXT NOT NULL,
    PRIMARY KEY (metric, width_ms, bucket, device_id, version)
);
-- Retention deletes by resolution and age.
CREATE INDEX telemetry_windows_age ON telemetry_windows (width_ms, bucket);
