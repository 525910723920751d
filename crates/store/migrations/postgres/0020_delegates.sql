-- Delegates: a cluster agent or a site gateway that speaks the device
-- protocol for many devices at once (/delegate/v1). Its token is scoped to
-- the devices it registered (devices.delegate_id); it can check in and report
-- for them, in batches, and call nothing else. A device it no longer finds
-- is marked gone (devices.gone_at), never deleted, and is no rollout's
-- target while gone. Releases for such targets name what the delegate
-- applies: a container image, or a firmware image and the pod that flashes it.
-- Keep in step with ../sqlite/0020_delegates.sql.
CREATE TABLE delegates (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen BIGINT,
    revoked_at BIGINT
);
ALTER TABLE devices ADD COLUMN delegate_id TEXT;
ALTER TABLE devices ADD COLUMN gone_at BIGINT;
CREATE INDEX devices_delegate ON devices (delegate_id, id) WHERE delegate_id IS NOT NULL;
ALTER TABLE releases ADD COLUMN image TEXT;
ALTER TABLE releases ADD COLUMN firmware TEXT;
ALTER TABLE releases ADD COLUMN flash_pod_image TEXT;
