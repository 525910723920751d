-- Alert rules and the alerts they raise (otafleet_server::service::alerts).
-- A rule is core::alert::AlertRule as JSON with a name and the selector of
-- the devices it watches. An alert is one rule on one device (subject: the
-- device id) or on the rule's group (subject ''); only alerts that are not
-- inactive have a row (core::alert::AlertState as JSON), so the firing ones
-- are a short read. Every transition is an alert.* event: the history.
-- Keep in step with ../postgres/0015_alerts.sql.
CREATE TABLE alert_rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    selector TEXT NOT NULL,
    rule TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE alerts (
    rule_id INTEGER NOT NULL REFERENCES alert_rules(id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    state TEXT NOT NULL,
    firing INTEGER NOT NULL,
    value REAL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (rule_id, subject)
);
CREATE INDEX alerts_firing ON alerts (firing, rule_id);
