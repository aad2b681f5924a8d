-- cosell state store, version 1.
-- Timestamps are RFC 3339 UTC text with microseconds, so text order is time order.

CREATE TABLE links (
    referral_id   TEXT PRIMARY KEY NOT NULL,
    engagement_id TEXT,
    crm_entity    TEXT NOT NULL,
    crm_id        TEXT NOT NULL,
    pc_etag       TEXT,
    pc_updated_at TEXT,
    crm_etag      TEXT,
    base          TEXT NOT NULL,
    synced_at     TEXT NOT NULL,
    -- One CRM record belongs to at most one referral: links are a bijection.
    UNIQUE (crm_entity, crm_id)
);

CREATE TABLE create_intents (
    crm_entity            TEXT NOT NULL,
    crm_id                TEXT NOT NULL,
    external_reference_id TEXT NOT NULL,
    recorded_at           TEXT NOT NULL,
    attempts              INTEGER NOT NULL,
    PRIMARY KEY (crm_entity, crm_id)
);

CREATE TABLE checkpoints (
    name       TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    direction   TEXT NOT NULL,
    referral_id TEXT,
    crm_entity  TEXT,
    crm_id      TEXT,
    outcome     TEXT NOT NULL,
    message     TEXT NOT NULL,
    conflicts   TEXT NOT NULL
);
CREATE INDEX audit_by_referral ON audit (referral_id, id);
CREATE INDEX audit_by_crm ON audit (crm_id, id);

CREATE TABLE dead_letters (
    key             TEXT PRIMARY KEY NOT NULL,
    direction       TEXT NOT NULL,
    error           TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_at TEXT NOT NULL,
    last_failed_at  TEXT NOT NULL
);

CREATE TABLE inbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    referral_id TEXT NOT NULL,
    event       TEXT NOT NULL,
    change_time TEXT,
    received_at TEXT NOT NULL
);

-- Body hashes of deliveries already taken in (Partner Center callbacks carry no event id).
CREATE TABLE inbox_seen (
    body_hash   TEXT PRIMARY KEY NOT NULL,
    seen_at     TEXT NOT NULL
);
