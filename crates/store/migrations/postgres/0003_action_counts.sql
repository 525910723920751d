-- The driver's and the progress API's counts read only this index (kind and
-- not_before were table lookups: 100,000 of them per count on a large wave).
-- Keep in step with ../sqlite/0003_action_counts.sql.
DROP INDEX actions_rollout_wave;
CREATE INDEX actions_rollout_wave ON actions (rollout_id, wave, kind, state, position, not_before);
