-- Leadership as a row: the replica named in `holder` may act for `name`
-- (the rollout driver: 'driver') until `expires_at` (Unix ms). `token` is the
-- fencing token: it grows by one every time the lease changes hands (or is
-- taken again after it lapsed), and every write the leader makes checks it
-- inside its own transaction. A released lease keeps its row (expires_at = 0),
-- so tokens never repeat. Keep in step with the other engine's 0005_leases.sql.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
