-- cosell state store, version 6: the per-link tables in compact column forms (issue 15, "SQLite
-- < 1 KB per link"). A store of N links held about 1.5 KB per link, most of it the same few
-- shapes spelt out as text on every row and again in every index: UUIDs (36 characters),
-- RFC 3339 times (27), entity names, quoted eTags. The store now writes (`src/store/sqlite/packed.rs`):
--
-- * a canonical (lowercase, hyphenated) UUID id as its 16 bytes, any other id as its text;
-- * a time as INTEGER microseconds since the Unix epoch (the precision the text had);
-- * a Partner Center eTag `"<uuid>"` as the UUID's 16 bytes, a CRM eTag `W/"<n>"` as n;
-- * an entity name, direction or outcome among `packed::NAMES` as its position, others as text;
-- * an audit entry's empty conflict list as NULL;
-- * a lease's key and expiry likewise (below).
--
-- Each form is decided by the value alone and read back exactly; the columns have no type, so a
-- value that has no compact form keeps its text. The rows below are converted here, in SQL, by
-- the same rules. `crm_children` and `leases` become WITHOUT ROWID tables (small rows keyed by
-- their primary key: no rowid table beside the key's index). Dropping the old tables leaves their
-- pages free in the file: the store VACUUMs once at its next open (the task row below), which
-- also turns on incremental auto-vacuum, so pages freed later are given back at open and close.
--
-- Every process sharing the file must run this version or later: an older one would write the
-- text forms, which a look-up by the packed form does not find.

CREATE TABLE links_v6 (
    referral_id   NOT NULL,
    engagement_id,
    crm_entity    NOT NULL,
    crm_id,
    pc_etag,
    pc_updated_at,
    crm_etag,
    target        NOT NULL,
    crm_known,
    pc_known,
    in_sync       INTEGER NOT NULL DEFAULT 1,
    crm_status_in_transit INTEGER NOT NULL DEFAULT 0,
    synced_at     NOT NULL,
    PRIMARY KEY (referral_id),
    -- One CRM record belongs to at most one referral: links are a bijection (NULLs are distinct).
    UNIQUE (crm_entity, crm_id)
);
INSERT INTO links_v6 (referral_id, engagement_id, crm_entity, crm_id, pc_etag, pc_updated_at,
                      crm_etag, target, crm_known, pc_known, in_sync, crm_status_in_transit,
                      synced_at)
SELECT CASE WHEN referral_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' THEN unhex(replace(referral_id, '-', '')) ELSE referral_id END,
       CASE WHEN engagement_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' THEN unhex(replace(engagement_id, '-', '')) ELSE engagement_id END,
       CASE crm_entity WHEN 'lead' THEN 0 WHEN 'opportunity' THEN 1 WHEN 'cosell_opportunitysolution' THEN 2 WHEN 'account' THEN 3 WHEN 'contact' THEN 4 WHEN 'to_crm' THEN 5 WHEN 'to_partner_center' THEN 6 WHEN 'created' THEN 7 WHEN 'updated' THEN 8 WHEN 'echo' THEN 9 WHEN 'merged' THEN 10 WHEN 'skipped' THEN 11 WHEN 'failed' THEN 12 WHEN 'dry_run' THEN 13 ELSE crm_entity END,
       CASE WHEN crm_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' THEN unhex(replace(crm_id, '-', '')) ELSE crm_id END,
       CASE WHEN length(pc_etag) = 38 AND pc_etag GLOB '"*"' AND substr(pc_etag, 2, 36) GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' THEN unhex(replace(substr(pc_etag, 2, 36), '-', '')) ELSE pc_etag END,
       CASE WHEN pc_updated_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z' THEN CAST(strftime('%s', substr(pc_updated_at, 1, 19)) AS INTEGER) * 1000000 + CAST(substr(pc_updated_at, 21, 6) AS INTEGER) ELSE pc_updated_at END,
       CASE WHEN crm_etag GLOB 'W/"[1-9]*"' AND length(crm_etag) <= 22 AND substr(crm_etag, 4, length(crm_etag) - 4) NOT GLOB '*[^0-9]*' THEN CAST(substr(crm_etag, 4, length(crm_etag) - 4) AS INTEGER) ELSE crm_etag END,
       target, crm_known, pc_known, in_sync, crm_status_in_transit,
       CASE WHEN synced_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z' THEN CAST(strftime('%s', substr(synced_at, 1, 19)) AS INTEGER) * 1000000 + CAST(substr(synced_at, 21, 6) AS INTEGER) ELSE synced_at END
FROM links ORDER BY rowid;
DROP TABLE links;
ALTER TABLE links_v6 RENAME TO links;
CREATE INDEX links_by_engagement ON links (engagement_id);

CREATE TABLE audit_v6 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          NOT NULL,
    direction   NOT NULL,
    referral_id,
    crm_entity,
    crm_id,
    outcome     NOT NULL,
    message     TEXT NOT NULL,
    conflicts   TEXT
);
INSERT INTO audit_v6 (id, at, direction, referral_id, crm_entity, crm_id, outcome, message, conflicts)
SELECT id,
       CASE WHEN at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z' THEN CAST(strftime('%s', substr(at, 1, 19)) AS INTEGER) * 1000000 + CAST(substr(at, 21, 6) AS INTEGER) ELSE at END,
       CASE direction WHEN 'lead' THEN 0 WHEN 'opportunity' THEN 1 WHEN 'cosell_opportunitysolution' THEN 2 WHEN 'account' THEN 3 WHEN 'contact' THEN 4 WHEN 'to_crm' THEN 5 WHEN 'to_partner_center' THEN 6 WHEN 'created' THEN 7 WHEN 'updated' THEN 8 WHEN 'echo' THEN 9 WHEN 'merged' THEN 10 WHEN 'skipped' THEN 11 WHEN 'failed' THEN 12 WHEN 'dry_run' THEN 13 ELSE direction END,
       CASE WHEN referral_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' THEN unhex(replace(referral_id, '-', '')) ELSE referral_id END,
       CASE crm_entity WHEN 'lead' THEN 0 WHEN 'opportunity' THEN 1 WHEN 'cosell_opportunitysolution' THEN 2 WHEN 'account' THEN 3 WHEN 'contact' THEN 4 WHEN 'to_crm' THEN 5 WHEN 'to_partner_center' THEN 6 WHEN 'created' THEN 7 WHEN 'updated' THEN 8 WHEN 'echo' THEN 9 WHEN 'merged' THEN 10 WHEN 'skipped' THEN 11 WHEN 'failed' THEN 12 WHEN 'dry_run' THEN 13 ELSE crm_entity END,
       CASE WHEN crm_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' THEN unhex(replace(crm_id, '-', '')) ELSE crm_id END,
       CASE outcome WHEN 'lead' THEN 0 WHEN 'opportunity' THEN 1 WHEN 'cosell_opportunitysolution' THEN 2 WHEN 'account' THEN 3 WHEN 'contact' THEN 4 WHEN 'to_crm' THEN 5 WHEN 'to_partner_center' THEN 6 WHEN 'created' THEN 7 WHEN 'updated' THEN 8 WHEN 'echo' THEN 9 WHEN 'merged' THEN 10 WHEN 'skipped' THEN 11 WHEN 'failed' THEN 12 WHEN 'dry_run' THEN 13 ELSE outcome END,
       message,
       NULLIF(conflicts, '[]')
FROM audit ORDER BY id;
-- Ids keep increasing past the ones deleted: the new table's sequence is the old one's.
DELETE FROM sqlite_sequence WHERE name = 'audit_v6';
INSERT INTO sqlite_sequence (name, seq) SELECT 'audit_v6', seq FROM sqlite_sequence WHERE name = 'audit';
DROP TABLE audit;
ALTER TABLE audit_v6 RENAME TO audit;
CREATE INDEX audit_by_referral ON audit (referral_id, id);
CREATE INDEX audit_by_crm ON audit (crm_id, id);

CREATE TABLE crm_children_v6 (
    entity        NOT NULL,
    id            NOT NULL,
    parent_entity NOT NULL,
    parent_id     NOT NULL,
    PRIMARY KEY (entity, id)
) WITHOUT ROWID;
INSERT INTO crm_children_v6 (entity, id, parent_entity, parent_id)
SELECT CASE entity WHEN 'lead' THEN 0 WHEN 'opportunity' THEN 1 WHEN 'cosell_opportunitysolution' THEN 2 WHEN 'account' THEN 3 WHEN 'contact' THEN 4 WHEN 'to_crm' THEN 5 WHEN 'to_partner_center' THEN 6 WHEN 'created' THEN 7 WHEN 'updated' THEN 8 WHEN 'echo' THEN 9 WHEN 'merged' THEN 10 WHEN 'skipped' THEN 11 WHEN 'failed' THEN 12 WHEN 'dry_run' THEN 13 ELSE entity END,
       CASE WHEN id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' THEN unhex(replace(id, '-', '')) ELSE id END,
       CASE parent_entity WHEN 'lead' THEN 0 WHEN 'opportunity' THEN 1 WHEN 'cosell_opportunitysolution' THEN 2 WHEN 'account' THEN 3 WHEN 'contact' THEN 4 WHEN 'to_crm' THEN 5 WHEN 'to_partner_center' THEN 6 WHEN 'created' THEN 7 WHEN 'updated' THEN 8 WHEN 'echo' THEN 9 WHEN 'merged' THEN 10 WHEN 'skipped' THEN 11 WHEN 'failed' THEN 12 WHEN 'dry_run' THEN 13 ELSE parent_entity END,
       CASE WHEN parent_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' THEN unhex(replace(parent_id, '-', '')) ELSE parent_id END
FROM crm_children;
DROP TABLE crm_children;
ALTER TABLE crm_children_v6 RENAME TO crm_children;

-- A lease key `referral:<uuid>` / `crm:<uuid>` is the byte 1 / 2 and the UUID's 16 bytes; an
-- expiry is integer microseconds (one that is not a time the store wrote is taken as expired).
CREATE TABLE leases_v6 (
    key        NOT NULL PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO leases_v6 (key, holder, expires_at)
SELECT CASE WHEN key GLOB 'referral:[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' THEN unhex('01' || replace(substr(key, 10), '-', ''))
            WHEN key GLOB 'crm:[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' THEN unhex('02' || replace(substr(key, 5), '-', ''))
            ELSE key END,
       holder,
       CASE WHEN expires_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]Z' THEN CAST(strftime('%s', substr(expires_at, 1, 19)) AS INTEGER) * 1000000 + CAST(substr(expires_at, 21, 6) AS INTEGER) ELSE 0 END
FROM leases;
DROP TABLE leases;
ALTER TABLE leases_v6 RENAME TO leases;

INSERT INTO store_tasks (name) VALUES ('vacuum');
