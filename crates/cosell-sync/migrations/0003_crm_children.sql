-- cosell state store, version 3: CRM child rows (an opportunity's solution link rows), and
-- links found by engagement without a scan (a related referral's event names only that).
-- Dataverse's change feed reports a deleted row by id alone; this index names the parent
-- record whose state the deletion changes.
CREATE TABLE crm_children (
    entity        TEXT NOT NULL,
    id            TEXT NOT NULL,
    parent_entity TEXT NOT NULL,
    parent_id     TEXT NOT NULL,
    PRIMARY KEY (entity, id)
);

CREATE INDEX links_by_engagement ON links (engagement_id);
