-- A revision per rollout, raised by every transaction that changes the
-- rollout or one of its actions (WriteTx::touch, applied at commit). The
-- driver steps a rollout again only when its revision moved or the wake-up
-- time the engine asked for has come, so rollouts that cannot progress cost
-- it nothing. A table of its own, not a column of rollouts: status reports
-- raise it without taking the rollout row the driver's step updates.
-- Keep in step with ../postgres/0009_rollout_changes.sql.
CREATE TABLE rollout_changes (
    rollout_id BIGINT PRIMARY KEY REFERENCES rollouts(id) ON DELETE CASCADE,
    rev BIGINT NOT NULL
);
