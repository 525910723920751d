-- Whether a rollout's plan reached every eligible device of its target
-- (core::plan::Plan::covers_target): then its last wave leaves no baseline,
-- and checks relative to one are not measured there. 0 or 1; NULL for a
-- rollout planned before this was stored, read as "the last step is 100%"
-- (core::engine::covers_target_by_steps), which is all that was known.
-- Keep in step with ../sqlite/0019_rollout_covers_target.sql.
ALTER TABLE rollouts ADD COLUMN covers_target BIGINT;
