-- otafleet schema, SQLite dialect. Keep in step with ../postgres/0001_init.sql.
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    current_version TEXT,
    previous_version TEXT,
    desired_version TEXT,
    health TEXT NOT NULL,
    last_seen INTEGER,
    token_hash TEXT UNIQUE,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE device_labels (
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (device_id, key)
);
CREATE INDEX device_labels_kv ON device_labels (key, value);

CREATE TABLE releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    compatible TEXT NOT NULL,
    signature TEXT,
    created_at INTEGER NOT NULL
);

CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id INTEGER NOT NULL REFERENCES releases(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    uri TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    signature TEXT
);
CREATE INDEX artifacts_release ON artifacts (release_id);

CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id INTEGER NOT NULL REFERENCES releases(id),
    version TEXT NOT NULL,
    kind TEXT NOT NULL,
    wave TEXT NOT NULL,
    target TEXT NOT NULL,
    strategy TEXT NOT NULL,
    state TEXT NOT NULL,
    current_wave INTEGER NOT NULL,
    waves INTEGER NOT NULL,
    start_at INTEGER,
    gate_passed_at INTEGER,
    last_release_at INTEGER,
    promote INTEGER NOT NULL,
    rollback_requested INTEGER NOT NULL,
    reason TEXT,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX rollouts_state ON rollouts (state);

CREATE TABLE actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    wave INTEGER NOT NULL,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    from_version TEXT,
    to_version TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    not_before INTEGER NOT NULL,
    deadline INTEGER,
    error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX actions_rollout_wave ON actions (rollout_id, wave, state, position);
CREATE INDEX actions_device_state ON actions (device_id, state);
CREATE INDEX actions_deadline ON actions (deadline) WHERE deadline IS NOT NULL;

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    rollout_id INTEGER,
    device_id TEXT,
    action_id INTEGER,
    actor TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_rollout ON events (rollout_id, id);
