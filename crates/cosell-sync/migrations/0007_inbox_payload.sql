-- cosell state store, version 7: an inbox hint may carry the referral as listed (JSON text).
-- A reconcile shared between workers (`EngineConfig::share_reconcile`) queues each referral it
-- lists as a hint with its payload, so whichever worker claims it writes it without reading it
-- again. A webhook hint has none (NULL), as every row written before this version.
ALTER TABLE inbox ADD COLUMN payload TEXT;
