-- One name per concept: the preset a rollout was asked for (canary, blue,
-- green, custom) is `preset`; `wave` is only ever a wave index (actions.wave,
-- rollouts.current_wave). Keep in step with the other engine's 0004_preset.sql.
ALTER TABLE rollouts RENAME COLUMN wave TO preset;
