-- cosell state store on PostgreSQL, version 1: the schema of the SQLite store's version 4 in
-- PostgreSQL's types, for several workers sharing one database. Snapshots stay JSON text
-- (exactly what was written comes back); times are timestamptz.

CREATE TABLE links (
    referral_id   TEXT PRIMARY KEY,
    engagement_id TEXT,
    crm_entity    TEXT NOT NULL,
    crm_id        TEXT,
    pc_etag       TEXT,
    pc_updated_at TIMESTAMPTZ,
    crm_etag      TEXT,
    target        TEXT NOT NULL,
    crm_known     TEXT,
    pc_known      TEXT,
    in_sync       BOOLEAN NOT NULL DEFAULT TRUE,
    crm_status_in_transit BOOLEAN NOT NULL DEFAULT FALSE,
    synced_at     TIMESTAMPTZ NOT NULL,
    -- One CRM record belongs to at most one referral: links are a bijection (NULLs are distinct).
    UNIQUE (crm_entity, crm_id)
);
CREATE INDEX links_by_engagement ON links (engagement_id);

CREATE TABLE create_intents (
    crm_entity            TEXT NOT NULL,
    crm_id                TEXT NOT NULL,
    external_reference_id TEXT NOT NULL,
    recorded_at           TIMESTAMPTZ NOT NULL,
    attempts              BIGINT NOT NULL,
    target                TEXT,
    crm_etag              TEXT,
    PRIMARY KEY (crm_entity, crm_id)
);
CREATE INDEX create_intents_by_time ON create_intents (recorded_at);

CREATE TABLE checkpoints (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE audit (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL,
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
    key             TEXT PRIMARY KEY,
    direction       TEXT NOT NULL,
    error           TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    first_failed_at TIMESTAMPTZ NOT NULL,
    last_failed_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE inbox (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    referral_id   TEXT NOT NULL,
    event         TEXT NOT NULL,
    change_time   TIMESTAMPTZ,
    received_at   TIMESTAMPTZ NOT NULL,
    -- Which worker took the hint, until when (a dead worker's claim expires).
    claimed_by    TEXT,
    claimed_until TIMESTAMPTZ
);

-- Body hashes of deliveries already taken in (Partner Center callbacks carry no event id).
CREATE TABLE inbox_seen (
    body_hash TEXT PRIMARY KEY,
    seen_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX inbox_seen_by_time ON inbox_seen (seen_at);

CREATE TABLE crm_children (
    entity        TEXT NOT NULL,
    id            TEXT NOT NULL,
    parent_entity TEXT NOT NULL,
    parent_id     TEXT NOT NULL,
    PRIMARY KEY (entity, id)
);

-- Who handles a pair or a pass until when (see ARCHITECTURE.md, "Several workers").
CREATE TABLE leases (
    key        TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
