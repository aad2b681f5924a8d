-- cosell state store, version 4: work distribution between engines sharing one store.
-- A lease names who handles a pair or a pass until when; an expired lease (its worker died or
-- stalled) is taken over. An inbox hint is claimed by one worker until it is acknowledged or
-- its claim expires. Timestamps are RFC 3339 UTC text, so text order is time order.
CREATE TABLE leases (
    key        TEXT PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

ALTER TABLE inbox ADD COLUMN claimed_by TEXT;
ALTER TABLE inbox ADD COLUMN claimed_until TEXT;
