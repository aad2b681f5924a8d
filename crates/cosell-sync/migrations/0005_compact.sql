-- cosell state store, version 5: compact snapshots, and inbox deduplication without a scan.
-- Snapshots (`links.target`, `crm_known`, `pc_known`, `create_intents.target`) are now written
-- in a compact binary form (`src/store/sqlite/compact.rs`, about 40 % of the JSON text); a row
-- written before still holds JSON text and still reads. The store re-encodes those rows once,
-- in Rust, at its next open: the task row below says that is still to do.
CREATE TABLE store_tasks (
    name TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;
INSERT INTO store_tasks (name) VALUES ('compact_snapshots');

-- Every delivery deletes the hashes older than the retention, so that delete needs an index on
-- the time; a hash is its own key (no rowid table beside the key's index).
CREATE TABLE inbox_seen_v5 (
    body_hash TEXT PRIMARY KEY NOT NULL,
    seen_at   TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO inbox_seen_v5 (body_hash, seen_at) SELECT body_hash, seen_at FROM inbox_seen;
DROP TABLE inbox_seen;
ALTER TABLE inbox_seen_v5 RENAME TO inbox_seen;
CREATE INDEX inbox_seen_by_time ON inbox_seen (seen_at);
