-- cosell state store on PostgreSQL, version 2: snapshots in the compact binary form
-- (`src/store/compact.rs`, about 40 % of the JSON text; PostgreSQL compresses only values past
-- ~2 kB, so a snapshot's keys were stored in full on every row). The columns become bytes; a row
-- written before keeps its JSON text as bytes, which still reads, and is compacted when it is
-- next written.
ALTER TABLE links
    ALTER COLUMN target TYPE BYTEA USING convert_to(target, 'UTF8'),
    ALTER COLUMN crm_known TYPE BYTEA USING convert_to(crm_known, 'UTF8'),
    ALTER COLUMN pc_known TYPE BYTEA USING convert_to(pc_known, 'UTF8');
ALTER TABLE create_intents
    ALTER COLUMN target TYPE BYTEA USING convert_to(target, 'UTF8');
