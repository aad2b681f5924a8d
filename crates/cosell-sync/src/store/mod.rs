//! The state store: everything the engine must remember to be correct across restarts.
//!
//! - **Links**: one row per referral, tying it to its CRM record, with the pair's plan (the
//!   target snapshot) and what each side was last known to hold at which version. Links are a
//!   bijection: one referral ↔ one CRM record.
//! - **Create intents**: written *before* a referral is created in Partner Center (which has no
//!   idempotency key), so an unknown outcome can be resolved by looking the referral up instead of
//!   creating it twice.
//! - **Checkpoints**: named cursors (reconcile time, Dataverse delta link).
//! - **Inbox**: webhook hints waiting for a worker, deduplicated by body hash.
//! - **Audit** and **dead letters**.
//!
//! Every write goes through [`StateStore::commit`], which applies a [`Commit`] atomically: the
//! link, the checkpoint that covers it, the audit entry and the inbox acknowledgement become
//! durable together or not at all. That is how a checkpoint never moves ahead of its work.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod compact;
#[cfg(feature = "testing")]
pub mod conformance;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// Which way a change flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Partner Center → CRM.
    ToCrm,
    /// CRM → Partner Center.
    ToPartnerCenter,
}

impl Direction {
    /// The stored name (`to_crm`, `to_partner_center`).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToCrm => "to_crm",
            Direction::ToPartnerCenter => "to_partner_center",
        }
    }

    // Only the SQL stores read these back from text.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    fn parse(s: &str) -> Option<Self> {
        match s {
            "to_crm" => Some(Direction::ToCrm),
            "to_partner_center" => Some(Direction::ToPartnerCenter),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::ToCrm => "Partner Center → CRM",
            Direction::ToPartnerCenter => "CRM → Partner Center",
        })
    }
}

/// The link between one referral and one CRM record, and what the engine knows of the pair.
///
/// The pair's state is kept **per side**: `target` is the durable plan (what both sides should
/// hold, committed before either side is written), and `crm_known` / `pc_known` are what each
/// side was last known to hold (at `crm_etag` / `pc_etag`). After each side's write the engine
/// records that side alone, so a pass that wrote one side and then failed is known for what it
/// is: pending work, never mistaken for a user's edit. When a side holds the target its
/// snapshot is not stored (`None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Partner Center referral id.
    pub referral_id: String,
    /// Engagement id (groups Microsoft's and our referral).
    pub engagement_id: Option<String>,
    /// CRM entity logical name (`opportunity`, `lead`).
    pub crm_entity: String,
    /// CRM record id. `None` while the record being created from the referral is not yet
    /// confirmed (the plan is durable, the create's answer is not): recovery finds it by the
    /// referral id, which the create writes as its alternate key.
    pub crm_id: Option<String>,
    /// The referral's eTag when last read or written.
    pub pc_etag: Option<String>,
    /// The referral's `updatedDateTime` when last read or written.
    pub pc_updated_at: Option<DateTime<Utc>>,
    /// The CRM record's `@odata.etag` when last read or written.
    pub crm_etag: Option<String>,
    /// The plan: the mapped snapshot both sides should hold.
    pub target: serde_json::Value,
    /// What the CRM side held at `crm_etag`, when that differs from `target`.
    pub crm_known: Option<serde_json::Value>,
    /// What Partner Center held at `pc_etag`, when that differs from `target`.
    pub pc_known: Option<serde_json::Value>,
    /// Whether the last pass verified both sides and left nothing to write.
    pub in_sync: bool,
    /// Whether a CRM write with status steps was under way when the link was last written: an
    /// open CRM row is then our interim state (reopened to be written, created before being
    /// closed), not the seller reopening the deal.
    pub crm_status_in_transit: bool,
    /// When the link was last written.
    pub synced_at: DateTime<Utc>,
}

impl Link {
    /// The key of the pair's dead letter (`referral:<id>`).
    pub fn dead_letter_key(&self) -> String {
        format!("referral:{}", self.referral_id)
    }
}

/// A referral create that was decided but whose outcome is not yet known to be durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateIntent {
    /// CRM entity logical name.
    pub crm_entity: String,
    /// CRM record id.
    pub crm_id: String,
    /// The `externalReferenceId` sent with the create (the CRM id), used to find the referral
    /// after an unknown outcome.
    pub external_reference_id: String,
    /// When the intent was recorded (bounds the look-up by `createdDateTime`).
    pub recorded_at: DateTime<Utc>,
    /// How many create attempts were made under this intent.
    pub attempts: u32,
    /// The mapped snapshot the create was made from: once the referral is found, the pair is
    /// merged against what was actually sent, never against the current other side.
    #[serde(default)]
    pub target: Option<serde_json::Value>,
    /// The CRM record's ETag when the create was decided.
    #[serde(default)]
    pub crm_etag: Option<String>,
}

/// What a sync decision came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditOutcome {
    /// A record was created on the target side.
    Created,
    /// A record was updated on the target side.
    Updated,
    /// The change was our own write coming back; nothing done.
    Echo,
    /// Both sides changed; merged by the ownership policy (conflicts listed).
    Merged,
    /// Nothing to do (no mapped field changed, or direction paused).
    Skipped,
    /// The change could not be applied (reason in the message).
    Failed,
    /// A dry run: what would have been written.
    DryRun,
}

impl AuditOutcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Created => "created",
            AuditOutcome::Updated => "updated",
            AuditOutcome::Echo => "echo",
            AuditOutcome::Merged => "merged",
            AuditOutcome::Skipped => "skipped",
            AuditOutcome::Failed => "failed",
            AuditOutcome::DryRun => "dry_run",
        }
    }

    /// Whether the decision wrote to the target side (created, updated or merged).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            AuditOutcome::Created | AuditOutcome::Updated | AuditOutcome::Merged
        )
    }

    // Only the SQL stores read these back from text.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => AuditOutcome::Created,
            "updated" => AuditOutcome::Updated,
            "echo" => AuditOutcome::Echo,
            "merged" => AuditOutcome::Merged,
            "skipped" => AuditOutcome::Skipped,
            "failed" => AuditOutcome::Failed,
            "dry_run" => AuditOutcome::DryRun,
            _ => return None,
        })
    }
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Assigned by the store (0 until stored); increases with every entry.
    pub id: i64,
    /// When the decision was made.
    pub at: DateTime<Utc>,
    /// Which way the change flowed.
    pub direction: Direction,
    /// The referral concerned, when known.
    pub referral_id: Option<String>,
    /// The CRM entity concerned, when known.
    pub crm_entity: Option<String>,
    /// The CRM record concerned, when known.
    pub crm_id: Option<String>,
    /// What it came to.
    pub outcome: AuditOutcome,
    /// A readable account (the error text for failures).
    pub message: String,
    /// Fields changed on both sides and how each was resolved.
    pub conflicts: Vec<String>,
}

impl AuditEntry {
    /// A new entry stamped now.
    pub fn new(direction: Direction, outcome: AuditOutcome, message: impl Into<String>) -> Self {
        AuditEntry {
            id: 0,
            at: Utc::now(),
            direction,
            referral_id: None,
            crm_entity: None,
            crm_id: None,
            outcome,
            message: message.into(),
            conflicts: Vec::new(),
        }
    }

    /// Sets the referral.
    pub fn referral(mut self, id: impl Into<String>) -> Self {
        self.referral_id = Some(id.into());
        self
    }

    /// Sets the CRM record.
    pub fn crm(mut self, entity: impl Into<String>, id: impl Into<String>) -> Self {
        self.crm_entity = Some(entity.into());
        self.crm_id = Some(id.into());
        self
    }

    /// Sets the conflicts.
    pub fn conflicts(mut self, conflicts: Vec<String>) -> Self {
        self.conflicts = conflicts;
        self
    }
}

/// Which audit entries to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries about this referral.
    pub referral_id: Option<String>,
    /// Only entries about this CRM record.
    pub crm_id: Option<String>,
    /// At most this many, newest first (0 = no limit).
    pub limit: usize,
}

/// A record that keeps failing: visible, retryable, never dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// What failed: `referral:<id>` or `<entity>:<id>`.
    pub key: String,
    /// Which way it was flowing.
    pub direction: Direction,
    /// The last error text.
    pub error: String,
    /// Attempts so far.
    pub attempts: u32,
    /// First failure (kept when the letter is updated).
    pub first_failed_at: DateTime<Utc>,
    /// Latest failure.
    pub last_failed_at: DateTime<Utc>,
}

/// Dead letters of one class, counted by the store: what `/status` and the metrics show
/// instead of the letters themselves (whose error text may quote customer data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterClass {
    /// The kind of record: the key's prefix (`referral`, `related`, `opportunity`, `lead`).
    pub class: String,
    /// Which way they were flowing.
    pub direction: Direction,
    /// How many there are.
    pub count: u64,
    /// The oldest first failure among them.
    pub oldest_failed_at: DateTime<Utc>,
}

impl DeadLetter {
    /// The class of the letter: its key's prefix (`referral:…` → `referral`).
    pub fn class(&self) -> &str {
        self.key
            .split_once(':')
            .map_or(self.key.as_str(), |(c, _)| c)
    }
}

/// A webhook hint waiting in the inbox: "referral X may have changed".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxHint {
    /// Assigned by the store; acknowledge with it.
    pub seq: i64,
    /// The referral the callback named.
    pub referral_id: String,
    /// The event name (`referral-updated`, …).
    pub event: String,
    /// `ResourceChangeUtcDate` of the callback.
    pub change_time: Option<DateTime<Utc>>,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// The referral as listed (its JSON), when the hint carries it: a reconcile sharing its
    /// listing (`EngineConfig::share_reconcile`) queues what it listed, so the worker that
    /// takes the hint writes it without reading it again. `None` for a webhook hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

/// A CRM row that belongs to another record's state (a solution link row of an opportunity),
/// remembered so that a deletion the change feed reports by id alone can be traced to its
/// parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmChild {
    /// The child row's table (`cosell_opportunitysolution`).
    pub entity: String,
    /// The child row's id.
    pub id: String,
    /// The parent's table (`opportunity`).
    pub parent_entity: String,
    /// The parent's row id.
    pub parent_id: String,
}

/// A set of writes applied atomically by [`StateStore::commit`].
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use = "a commit does nothing until passed to StateStore::commit"]
pub struct Commit {
    /// Links to insert or replace (keyed by referral id).
    pub links: Vec<Link>,
    /// Links to remove (by referral id).
    pub remove_links: Vec<String>,
    /// Create intents to record or replace.
    pub intents: Vec<CreateIntent>,
    /// Create intents resolved (by CRM entity and id).
    pub resolved_intents: Vec<(String, String)>,
    /// Checkpoints to set (name, value).
    pub checkpoints: Vec<(String, String)>,
    /// Audit entries to append.
    pub audit: Vec<AuditEntry>,
    /// Dead letters to put (an existing key keeps its first failure time).
    pub dead_letters: Vec<DeadLetter>,
    /// Dead letters to clear (by key).
    pub clear_dead_letters: Vec<String>,
    /// Inbox hints processed (by sequence number).
    pub ack_hints: Vec<i64>,
    /// CRM child rows to remember (keyed by entity and id).
    pub crm_children: Vec<CrmChild>,
    /// CRM child rows to forget (entity, id).
    pub forget_crm_children: Vec<(String, String)>,
}

impl Commit {
    /// An empty commit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces a link.
    pub fn link(mut self, link: Link) -> Self {
        self.links.push(link);
        self
    }

    /// Removes a link.
    pub fn remove_link(mut self, referral_id: impl Into<String>) -> Self {
        self.remove_links.push(referral_id.into());
        self
    }

    /// Records a create intent.
    pub fn intent(mut self, intent: CreateIntent) -> Self {
        self.intents.push(intent);
        self
    }

    /// Resolves a create intent.
    pub fn resolve_intent(
        mut self,
        crm_entity: impl Into<String>,
        crm_id: impl Into<String>,
    ) -> Self {
        self.resolved_intents
            .push((crm_entity.into(), crm_id.into()));
        self
    }

    /// Sets a checkpoint.
    pub fn checkpoint(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.checkpoints.push((name.into(), value.into()));
        self
    }

    /// Appends an audit entry.
    pub fn audit(mut self, entry: AuditEntry) -> Self {
        self.audit.push(entry);
        self
    }

    /// Puts a dead letter.
    pub fn dead_letter(mut self, letter: DeadLetter) -> Self {
        self.dead_letters.push(letter);
        self
    }

    /// Clears a dead letter.
    pub fn clear_dead_letter(mut self, key: impl Into<String>) -> Self {
        self.clear_dead_letters.push(key.into());
        self
    }

    /// Acknowledges inbox hints.
    pub fn ack(mut self, seqs: impl IntoIterator<Item = i64>) -> Self {
        self.ack_hints.extend(seqs);
        self
    }

    /// Remembers a CRM child row and its parent.
    pub fn crm_child(mut self, child: CrmChild) -> Self {
        self.crm_children.push(child);
        self
    }

    /// Forgets a CRM child row.
    pub fn forget_crm_child(mut self, entity: impl Into<String>, id: impl Into<String>) -> Self {
        self.forget_crm_children.push((entity.into(), id.into()));
        self
    }

    /// Whether the commit writes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Commit::default()
    }
}

/// A state-store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The commit would break an invariant (e.g. two referrals linked to one CRM record); nothing
    /// of it was applied.
    #[error("state store conflict: {0}")]
    Conflict(String),
    /// Stored data could not be read back.
    #[error("state store holds unreadable {what}: {detail}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Why it failed.
        detail: String,
    },
    /// The backend failed (I/O, SQL); the driver's error, when there is one, is the
    /// [`source`](std::error::Error::source).
    #[error("state store backend: {message}")]
    Backend {
        /// What failed, in words.
        message: String,
        /// The driver's or the file system's error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Another worker held the lease `key` for longer than this worker would wait; nothing was
    /// done under it, so the work is simply done again later.
    #[error("lease `{key}` is held by another worker")]
    LeaseBusy {
        /// The lease (`crm:<id>`, `referral:<id>`, `pass:<name>`).
        key: String,
    },
}

impl StoreError {
    /// Whether trying again later may succeed (another worker's lease, a backend hiccup).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::LeaseBusy { .. } | StoreError::Backend { .. }
        )
    }

    /// A backend failure said in words, with no underlying error (a refused setting, an
    /// injected fault in a test store).
    pub fn backend(message: impl Into<String>) -> Self {
        StoreError::Backend {
            message: message.into(),
            source: None,
        }
    }

    /// A backend failure caused by `source` (its text is the message; the error stays
    /// reachable through [`source`](std::error::Error::source)).
    pub fn backend_caused_by(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Backend {
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

/// Durable state of the engine. Implementations must apply each [`Commit`] atomically.
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug {
    /// The link of a referral.
    async fn link_by_referral(&self, referral_id: &str) -> Result<Option<Link>, StoreError>;
    /// The link of a CRM record.
    async fn link_by_crm(&self, crm_entity: &str, crm_id: &str)
    -> Result<Option<Link>, StoreError>;
    /// The links of several CRM records of one table, in no particular order (a record
    /// without a link is left out). The change feed looks up a page of rows (up to 5,000) at
    /// once; the default asks [`link_by_crm`](Self::link_by_crm) for each, and the SQL stores
    /// answer in a few queries.
    async fn links_by_crm_ids(
        &self,
        crm_entity: &str,
        crm_ids: &[String],
    ) -> Result<Vec<Link>, StoreError> {
        let mut links = Vec::new();
        for id in crm_ids {
            if let Some(link) = self.link_by_crm(crm_entity, id).await? {
                links.push(link);
            }
        }
        Ok(links)
    }
    /// Every link, ordered by referral id.
    async fn links(&self) -> Result<Vec<Link>, StoreError>;
    /// The links in an engagement (Microsoft's and the partner's referrals share one). The
    /// default scans [`links`](Self::links); stores override it with an indexed lookup.
    async fn links_by_engagement(&self, engagement_id: &str) -> Result<Vec<Link>, StoreError> {
        Ok(self
            .links()
            .await?
            .into_iter()
            .filter(|l| l.engagement_id.as_deref() == Some(engagement_id))
            .collect())
    }
    /// How many links there are. The default counts [`links`](Self::links); stores override
    /// it without loading them.
    async fn link_count(&self) -> Result<u64, StoreError> {
        Ok(self.links().await?.len() as u64)
    }
    /// A checkpoint's value.
    async fn checkpoint(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Every unresolved create intent, oldest first.
    async fn intents(&self) -> Result<Vec<CreateIntent>, StoreError>;
    /// The unresolved create intent of a CRM record, if any. The default scans
    /// [`intents`](Self::intents); stores override it with a point lookup.
    async fn intent(
        &self,
        crm_entity: &str,
        crm_id: &str,
    ) -> Result<Option<CreateIntent>, StoreError> {
        Ok(self
            .intents()
            .await?
            .into_iter()
            .find(|i| i.crm_entity == crm_entity && i.crm_id == crm_id))
    }
    /// Audit entries, newest first.
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
    /// Every dead letter, oldest failure first.
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError>;
    /// The dead letter with `key`, if any. The default scans [`dead_letters`](Self::dead_letters);
    /// stores override it with a point lookup.
    async fn dead_letter(&self, key: &str) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self
            .dead_letters()
            .await?
            .into_iter()
            .find(|d| d.key == key))
    }
    /// Dead letters counted by class and direction, ordered by class then direction. The
    /// default groups [`dead_letters`](Self::dead_letters); stores override it with a query.
    async fn dead_letter_classes(&self) -> Result<Vec<DeadLetterClass>, StoreError> {
        let mut classes: Vec<DeadLetterClass> = Vec::new();
        for d in self.dead_letters().await? {
            match classes
                .iter_mut()
                .find(|c| c.class == d.class() && c.direction == d.direction)
            {
                Some(c) => {
                    c.count += 1;
                    c.oldest_failed_at = c.oldest_failed_at.min(d.first_failed_at);
                }
                None => classes.push(DeadLetterClass {
                    class: d.class().to_string(),
                    direction: d.direction,
                    count: 1,
                    oldest_failed_at: d.first_failed_at,
                }),
            }
        }
        classes.sort_by(|a, b| {
            (a.class.as_str(), a.direction.as_str()).cmp(&(b.class.as_str(), b.direction.as_str()))
        });
        Ok(classes)
    }
    /// How many webhook hints wait in the inbox. The default counts
    /// [`pending_hints`](Self::pending_hints); stores override it without loading them.
    async fn inbox_depth(&self) -> Result<u64, StoreError> {
        Ok(self.pending_hints(usize::MAX).await?.len() as u64)
    }
    /// When a record was last written to the side `direction` leads to (the newest audit entry
    /// created, updated or merged that way). The default scans the audit trail; stores
    /// override it with a query.
    async fn last_synced_at(
        &self,
        direction: Direction,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .audit(&AuditQuery::default())
            .await?
            .into_iter()
            .find(|e| e.direction == direction && e.outcome.is_write())
            .map(|e| e.at))
    }
    /// Adds a webhook hint unless a delivery with the same body hash was seen before; returns
    /// whether it was new.
    async fn push_hint(&self, body_hash: &str, hint: InboxHint) -> Result<bool, StoreError>;
    /// Adds several hints as [`push_hint`](Self::push_hint) adds one, each unless its body
    /// hash was seen before (in an earlier push or earlier in `hints`); returns how many were
    /// new. The reconcile queues a chunk of its listing at once (see
    /// `EngineConfig::share_reconcile`). The default pushes them one by one; a store with
    /// transactions should override it with one.
    async fn push_hints(&self, hints: Vec<(String, InboxHint)>) -> Result<usize, StoreError> {
        let mut fresh = 0;
        for (body_hash, hint) in hints {
            if self.push_hint(&body_hash, hint).await? {
                fresh += 1;
            }
        }
        Ok(fresh)
    }
    /// Unacknowledged hints, oldest first, at most `max`.
    async fn pending_hints(&self, max: usize) -> Result<Vec<InboxHint>, StoreError>;
    /// The remembered CRM child row `entity`/`id`, if any.
    async fn crm_child(&self, entity: &str, id: &str) -> Result<Option<CrmChild>, StoreError>;
    /// Applies every write in `commit`, atomically.
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;

    // ------------------------------------------------------------ work distribution

    /// Takes the lease `key` for `holder` until `ttl` from now, or extends it if `holder`
    /// already holds it; returns whether `holder` holds it now. A lease held by another
    /// holder is taken over only once it has expired (its holder died or stalled), so several
    /// workers sharing one store never handle the same pair or pass at once.
    ///
    /// The default grants every lease: right for a store that only one engine (one process)
    /// uses, where the engine's in-process locks already serialize. A store several processes
    /// share must override the three lease methods (the conformance suite checks them).
    async fn try_lease(
        &self,
        key: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let _ = (key, holder, ttl);
        Ok(true)
    }
    /// Gives the lease `key` up if `holder` holds it (another holder's lease is left alone).
    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        let _ = (key, holder);
        Ok(())
    }
    /// Gives up each lease of `keys` that `holder` holds, as
    /// [`release_lease`](Self::release_lease) does one: a worker gives its idle leases up
    /// together, so a pass over many pairs does not leave one lease per pair waiting for a
    /// store call of its own. The default releases them one by one; a store with transactions
    /// should override it with one.
    async fn release_leases(&self, keys: &[String], holder: &str) -> Result<(), StoreError> {
        for key in keys {
            self.release_lease(key, holder).await?;
        }
        Ok(())
    }
    /// Claims up to `max` unacknowledged hints, oldest first, for `holder` until `ttl` from
    /// now: hints no one has claimed, or whose claim expired (a worker that died before
    /// acknowledging them). A claimed hint is not handed to another holder until its claim
    /// expires; acknowledging it ([`Commit::ack`]) removes it for good.
    ///
    /// The default hands out [`pending_hints`](Self::pending_hints) (one engine per store).
    async fn claim_hints(
        &self,
        holder: &str,
        max: usize,
        ttl: std::time::Duration,
    ) -> Result<Vec<InboxHint>, StoreError> {
        let _ = (holder, ttl);
        self.pending_hints(max).await
    }
}
