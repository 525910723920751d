-- A rollout's timeline (its rollout.* events, newest first) without walking
-- its action events, one or more per device: 100,000 on a large rollout.
-- Keep in step with ../sqlite/0011_event_groups.sql.
CREATE INDEX events_rollout_kind ON events (rollout_id, kind, id);
