-- Webhooks: HTTP callbacks for events (otafleet_server::service::webhooks).
-- The leader reads the events table after webhook_cursor.event_id and writes
-- one delivery per (webhook, matching event); UNIQUE (webhook_id, event_id)
-- makes reading an event twice (after a takeover, or an id committed late)
-- harmless. A webhook gets the events after after_event_id: none from before
-- it existed. The secret is kept as is: it is the HMAC key every delivery is
-- signed with.
-- Keep in step with ../postgres/0010_webhooks.sql.
CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    after_event_id BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id BIGINT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id BIGINT NOT NULL,
    event_kind TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT,
    last_attempt_at BIGINT,
    last_status BIGINT,
    last_error TEXT,
    last_duration_ms BIGINT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (webhook_id, id);

CREATE TABLE webhook_cursor (
    id BIGINT PRIMARY KEY,
    event_id BIGINT NOT NULL
);
INSERT INTO webhook_cursor (id, event_id) VALUES (1, COALESCE((SELECT MAX(id) FROM events), 0));
