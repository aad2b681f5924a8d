//! The engine's view of the CRM: reading a referral's records, writing a mapped payload, status
//! steps, and a change feed. Expressed in the mapping's types (`CrmPayload`, `CrmRecords`,
//! `StatusStep`), so another CRM needs only another adapter.

use std::collections::HashSet;
use std::fmt;

use async_trait::async_trait;
use cosell_mapping::{CrmPayload, CrmRecords, FieldMap, RecordKind, StatusStep};
use serde_json::{Map, Value};

use crate::remote::RemoteError;

/// A CRM row with what was read around it.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmRow {
    /// Opportunity or lead.
    pub kind: RecordKind,
    /// Row id.
    pub id: String,
    /// The row's ETag when read.
    pub etag: Option<String>,
    /// The row and its related records (account, contacts, solutions, currency).
    pub records: CrmRecords,
}

/// The result of writing a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmWritten {
    /// Row id of the primary record.
    pub id: String,
    /// Its ETag after the write, when known.
    pub etag: Option<String>,
    /// Whether the write created the row.
    pub created: bool,
}

/// A record to create for a referral that has no CRM row yet, as
/// [`Crm::write`]`(payload, extra, WriteTarget::ByKey)` would (see [`Crm::create_new`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    /// What to write (the primary record by its referral-id alternate key, its customer and
    /// solutions).
    pub payload: CrmPayload,
    /// Columns written with the primary record (the outcome mark and audit text).
    pub extra: Map<String, Value>,
    /// Status steps applied to the record once written (a referral closed in Partner Center
    /// is created closed).
    pub steps: Vec<StatusStep>,
}

/// Which row a [`Crm::write`] goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTarget<'a> {
    /// Create or update the record by its alternate key (the referral id): idempotent, for a
    /// record created from a referral.
    ByKey,
    /// Update the existing row `id` (never create it), under `If-Match: etag` when given. The
    /// row need not carry the referral id yet (an opportunity a seller's QualifyLead created,
    /// a record a referral was created from).
    Row {
        /// Row id.
        id: &'a str,
        /// The ETag it was read with.
        etag: Option<&'a str>,
    },
}

/// One entry of the CRM change feed.
#[derive(Debug, Clone, PartialEq)]
pub enum CrmChange {
    /// A row was created or changed; `row` holds its columns.
    Upserted {
        /// Opportunity or lead.
        kind: RecordKind,
        /// Row id.
        id: String,
        /// The row's version (`@odata.etag`) as the feed delivered it: equal to the version
        /// the pair recorded after its own write, the change is that write coming back (an
        /// echo, recognised without reading the row).
        etag: Option<String>,
        /// The row's columns as the feed delivered them.
        row: Map<String, Value>,
    },
    /// A row was deleted.
    Deleted {
        /// Opportunity or lead.
        kind: RecordKind,
        /// Row id.
        id: String,
    },
}

/// A page of changes and the cursor to continue from.
///
/// A CRM may answer a read in several pages (Dataverse pages at 5,000 rows, or its
/// `odata.maxpagesize`): each page's cursor then leads to the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmChanges {
    /// The changes, in the order the CRM reported them.
    pub changes: Vec<CrmChange>,
    /// Where to continue (persist it once the changes are applied): the next page of this
    /// read when [`more`](Self::more), else where the next read starts.
    pub cursor: String,
    /// Whether the read has more pages: the engine applies this one, persists the cursor and
    /// reads on at once, so a large read is held a page at a time.
    pub more: bool,
    /// Whether this page belongs to an initial read (started without a cursor, or resumed from
    /// one of its pages), in which every current row counts as a change.
    pub initial: bool,
}

/// One entry of the change feed of the solution link table (one row per solution on an
/// opportunity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SolutionLinkChange {
    /// A link row was created or changed (a deactivated row counts as a removed solution).
    Linked {
        /// The link row's id.
        link_id: String,
        /// The opportunity it links, when the row names one.
        opportunity_id: Option<String>,
        /// The linked solution's id in the catalogue (its alternate key, the Partner Center
        /// solution id), when the row names a solution and the CRM could tell which. Lets the
        /// engine recognise a link it wrote itself, or a solution the pair already holds,
        /// without reading the opportunity.
        solution_id: Option<String>,
        /// Whether the row is active (an inactive row is a removed solution).
        active: bool,
    },
    /// A link row was deleted. The feed gives only its id: the engine finds the opportunity
    /// from an earlier [`Linked`](Self::Linked) entry of the same row.
    Unlinked {
        /// The link row's id.
        link_id: String,
    },
}

/// A page of solution link changes and the cursor to continue from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolutionLinkChanges {
    /// The changes, in the order the CRM reported them.
    pub changes: Vec<SolutionLinkChange>,
    /// Where to continue (persist it once the changes are applied): the next page of this
    /// read when [`more`](Self::more), else where the next read starts.
    pub cursor: String,
    /// Whether the read has more pages: the engine applies this one, persists the cursor and
    /// reads on at once, so a large read is held a page at a time.
    pub more: bool,
    /// Whether this page belongs to an initial read (started without a cursor, or resumed from
    /// one of its pages), in which every current row counts as a change.
    pub initial: bool,
}

/// What the engine needs from a CRM.
#[async_trait]
pub trait Crm: Send + Sync + fmt::Debug {
    /// The field map this adapter reads and writes rows with. The [`Engine`](crate::Engine)
    /// plans with the same map (it has no map of its own), so the two cannot disagree on a
    /// table or column name.
    fn field_map(&self) -> &FieldMap;

    /// The row of `kind` whose referral id column holds `referral_id`, with its related records.
    async fn find_by_referral(
        &self,
        kind: RecordKind,
        referral_id: &str,
    ) -> Result<Option<CrmRow>, RemoteError>;

    /// A row by id, with its related records.
    async fn read(&self, kind: RecordKind, id: &str) -> Result<Option<CrmRow>, RemoteError>;

    /// Writes a mapped payload: finds or creates the account and contacts, resolves the
    /// currency, writes the primary record to `target`, links the solutions. `extra` columns
    /// (the outcome mark and audit text) are written with the primary record. A row written
    /// under `If-Match` that changed meanwhile answers
    /// [`PreconditionFailed`](crate::RemoteErrorKind::PreconditionFailed) (the engine re-reads
    /// and merges again). Does not apply status steps.
    async fn write(
        &self,
        payload: &CrmPayload,
        extra: &Map<String, Value>,
        target: WriteTarget<'_>,
    ) -> Result<CrmWritten, RemoteError>;

    /// The referral ids among `referral_ids` that some CRM row (opportunity or lead) already
    /// carries. Default: [`find_by_referral`](Self::find_by_referral) for each id and kind; an
    /// adapter that can ask for many at once should.
    async fn referrals_with_rows(
        &self,
        referral_ids: &[String],
    ) -> Result<HashSet<String>, RemoteError> {
        let mut found = HashSet::new();
        for id in referral_ids {
            for kind in [RecordKind::Opportunity, RecordKind::Lead] {
                if self.find_by_referral(kind, id).await?.is_some() {
                    found.insert(id.clone());
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Creates the records of referrals that have no CRM row yet, each by its alternate key
    /// (idempotent), each on its own: one record's failure is its own result and never undoes
    /// or stops another. One result per record, in order. `Err` means the outcome of the whole
    /// call is unknown (some records may have been written): the caller finds them by referral
    /// id. Each record's [`steps`](NewRecord::steps) are applied after its write; the ETag
    /// answered is then `None` (the row moved on since the write).
    ///
    /// Default: [`write`](Self::write) with [`WriteTarget::ByKey`] and
    /// [`apply_status`](Self::apply_status) for each record in turn; the Dataverse adapter sends
    /// the group as one `$batch` with a change set per record.
    async fn create_new(
        &self,
        records: &[NewRecord],
    ) -> Result<Vec<Result<CrmWritten, RemoteError>>, RemoteError> {
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let mut written = self.write(&r.payload, &r.extra, WriteTarget::ByKey).await;
            if let Ok(w) = &mut written
                && !r.steps.is_empty()
            {
                let mut failed = None;
                for step in &r.steps {
                    if let Err(e) = self.apply_status(r.payload.kind, &w.id, step).await {
                        failed = Some(e);
                        break;
                    }
                }
                w.etag = None;
                if let Some(e) = failed {
                    written = Err(e);
                }
            }
            out.push(written);
        }
        Ok(out)
    }

    /// Patches columns of a row, under `If-Match` when `etag` is given; returns the new ETag.
    async fn update_columns(
        &self,
        kind: RecordKind,
        id: &str,
        columns: &Map<String, Value>,
        etag: Option<&str>,
    ) -> Result<Option<String>, RemoteError>;

    /// Applies one status step to a row. `QualifyLead` returns the id of the opportunity that
    /// replaces the lead.
    async fn apply_status(
        &self,
        kind: RecordKind,
        id: &str,
        step: &StatusStep,
    ) -> Result<Option<String>, RemoteError>;

    /// Qualifies an open lead and lets the CRM create the opportunity that replaces it from the
    /// lead's current values (atomically: an edit made to the lead a moment ago is carried
    /// over, and the opportunity keeps the lead as its origin). Returns the opportunity's id
    /// when the CRM reports it.
    async fn convert_lead(
        &self,
        lead_id: &str,
        qualified_status: i64,
    ) -> Result<Option<String>, RemoteError>;

    /// Changes to rows of `kind` since `cursor` (`None`: start tracking; every current row
    /// counts as a change), one page of them: a page with [`CrmChanges::more`] has a cursor
    /// that reads the next page of the same read.
    async fn changes(
        &self,
        kind: RecordKind,
        cursor: Option<&str>,
    ) -> Result<CrmChanges, RemoteError>;

    /// Changes to the links between opportunities and solutions since `cursor` (`None`: start
    /// tracking; every current link counts), a page at a time as [`Self::changes`]. `Ok(None)`
    /// from a CRM whose solutions change only
    /// with the opportunity's own row (the default), so its row feed covers them.
    async fn solution_link_changes(
        &self,
        cursor: Option<&str>,
    ) -> Result<Option<SolutionLinkChanges>, RemoteError> {
        let _ = cursor;
        Ok(None)
    }

    /// Whether the CRM has the currency `code` (ISO 4217), so a record can be written in it. A
    /// currency it lacks makes the engine write the record without its currency and deal value
    /// (never in another currency) until an administrator adds it. Default: every currency.
    async fn has_currency(&self, code: &str) -> Result<bool, RemoteError> {
        let _ = code;
        Ok(true)
    }

    /// Whether a cursor failure means the cursor expired and a full read is needed.
    fn is_cursor_expired(&self, error: &RemoteError) -> bool {
        let _ = error;
        false
    }
}
