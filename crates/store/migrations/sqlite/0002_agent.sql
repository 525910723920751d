-- Device agent: enrollment tokens. Keep in step with ../postgres/0002_agent.sql.
CREATE TABLE enrollment_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    max_uses INTEGER,
    uses INTEGER NOT NULL,
    expires_at INTEGER,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
