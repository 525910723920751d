-- Releases of kind app: the ROS application spec (otafleet_k8s::app::AppSpec,
-- as JSON) a cluster agent renders and applies; a rollback re-applies the
-- previous release's. Keep in step with ../postgres/0021_app_spec.sql.
ALTER TABLE releases ADD COLUMN app_spec TEXT;
