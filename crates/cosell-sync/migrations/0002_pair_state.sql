-- cosell state store, version 2: per-side pair state and a durable plan.
-- `base` becomes `target` (the plan both sides should hold); `crm_known` / `pc_known` hold what
-- each side was last known to hold when that differs from the target; `in_sync` says the last
-- pass verified both sides; `crm_status_in_transit` says a CRM write with status steps was
-- under way. `crm_id` may be NULL while a record created from a referral is not
-- yet confirmed, so the table is rebuilt (SQLite cannot drop NOT NULL in place).

CREATE TABLE links_v2 (
    referral_id   TEXT PRIMARY KEY NOT NULL,
    engagement_id TEXT,
    crm_entity    TEXT NOT NULL,
    crm_id        TEXT,
    pc_etag       TEXT,
    pc_updated_at TEXT,
    crm_etag      TEXT,
    target        TEXT NOT NULL,
    crm_known     TEXT,
    pc_known      TEXT,
    in_sync       INTEGER NOT NULL DEFAULT 1,
    crm_status_in_transit INTEGER NOT NULL DEFAULT 0,
    synced_at     TEXT NOT NULL,
    -- One CRM record belongs to at most one referral: links are a bijection (NULLs are distinct).
    UNIQUE (crm_entity, crm_id)
);

INSERT INTO links_v2 (referral_id, engagement_id, crm_entity, crm_id, pc_etag, pc_updated_at,
                      crm_etag, target, crm_known, pc_known, in_sync, crm_status_in_transit,
                      synced_at)
SELECT referral_id, engagement_id, crm_entity, crm_id, pc_etag, pc_updated_at, crm_etag, base,
       NULL, NULL, 1, 0, synced_at
FROM links;

DROP TABLE links;
ALTER TABLE links_v2 RENAME TO links;

ALTER TABLE create_intents ADD COLUMN target TEXT;
ALTER TABLE create_intents ADD COLUMN crm_etag TEXT;
