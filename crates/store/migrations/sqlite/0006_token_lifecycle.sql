-- Token lifecycle: expiry, last use, who made it, which one is the bootstrap
-- admin token (OTAFLEET_ADMIN_TOKEN); enrollment tokens' last use. Existing
-- rows keep working: no expiry, never used. (0005 is the driver's leadership,
-- developed alongside; the two touch different tables.)
-- Keep in step with ../postgres/0006_token_lifecycle.sql.
ALTER TABLE tokens ADD COLUMN expires_at INTEGER;
ALTER TABLE tokens ADD COLUMN last_used_at INTEGER;
ALTER TABLE tokens ADD COLUMN created_by TEXT;
ALTER TABLE tokens ADD COLUMN bootstrap INTEGER NOT NULL DEFAULT 0;
UPDATE tokens SET bootstrap = 1 WHERE name = 'bootstrap-admin';
ALTER TABLE enrollment_tokens ADD COLUMN last_used_at INTEGER;
