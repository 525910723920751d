-- The current wave's analysis runs (core::analysis::AnalysisRun, one per
-- check of the strategy's analysis, as JSON): how many measurements passed,
-- failed and were inconclusive, and when the next is due. Cleared when a
-- wave's gate passes, when the next wave starts and when a paused rollout
-- resumes. Keep in step with ../sqlite/0014_analysis.sql.
ALTER TABLE rollouts ADD COLUMN analysis TEXT NOT NULL DEFAULT '[]';
