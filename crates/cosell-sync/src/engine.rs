//! The sync engine.
//!
//! Both triggers — a Partner Center change (webhook or reconcile) and a CRM change (the change
//! feed) — end in the same place for a linked pair: read both sides, map both into snapshots and
//! merge them against the pair's **per-side state** (the target both sides should hold, and what
//! each side was last known to hold). The merged target is committed as the pair's plan *before*
//! either side is written; each side is recorded as soon as it is written; the pair is marked in
//! sync once both sides were verified. A pass that wrote one side and then failed (or crashed) is
//! therefore known for what it is, pending work, and the next pass finishes it; it is never
//! mistaken for a user's edit. Our own writes come back as changes equal to what we recorded:
//! echoes, recognised without writing anything.
//!
//! A lead becoming an opportunity is a transition of the pair: the opportunity a seller's
//! QualifyLead created is found by the referral id and adopted with its own ETag (what it lacks
//! is carried over from the target, not read as a removal), or the engine creates it and closes
//! the lead; a failure at any step is resumed by the next pass. A closed CRM row that must take a
//! change is reopened, written and closed again; a closed referral takes no more changes, and a
//! CRM edit it cannot take is audited as such.
//!
//! Creation is where duplicates are born, so it gets the most care:
//! - Partner Center → CRM upserts by the alternate key over the referral id: idempotent.
//! - CRM → Partner Center records a create intent (with `externalReferenceId` = CRM id) before
//!   the POST; an unknown outcome is resolved by looking the referral up, never by posting again
//!   blindly. A referral that arrives carrying an `externalReferenceId` we know is adopted, not
//!   copied.
//!
//! Locks: one per CRM row and one per referral, always taken in that order, so events for one
//! pair apply one at a time while different pairs run in parallel. Each is also a lease in the
//! state store, so several engines sharing one store (workers) never handle one pair at once
//! (`engine/leases.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use cosell_mapping::{
    CrmPayload, CrmStatus, FieldId, FieldMap, FieldValue, MappedSnapshot, MappingError, PairState,
    RecordKind, ReferralIdentity, ReferralState, ReferralUpdate, Rule, Side, StatusStep,
    SyncOutcome, diff, merge_sides,
};
use futures::TryStreamExt;
use futures::stream::{self, StreamExt};
use partner_center_client::models::{
    Referral, ReferralStatus, ReferralSubstatus, check_transition,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::OwnedMutexGuard;

use crate::crm::{
    Crm, CrmChange, CrmChanges, CrmRow, SolutionLinkChange, SolutionLinkChanges, WriteTarget,
};
use crate::partner_center::PartnerCenter;
use crate::remote::{RemoteError, RemoteErrorKind};
use crate::store::{
    AuditEntry, AuditOutcome, Commit, CreateIntent, CrmChild, DeadLetter, Direction, Link,
    StateStore, StoreError,
};

mod backfill;
mod decisions;
mod leases;
mod shared;

pub use backfill::{BACKFILL_LANES, DEFAULT_BACKFILL_GROUP};
pub use leases::LeaseConfig;
pub use shared::RECONCILE_LISTED;

/// Checkpoint holding the `updatedDateTime` the Partner Center reconcile has covered.
pub const RECONCILE_CHECKPOINT: &str = "pc.reconcile";

/// The checkpoint name of the CRM change feed of `kind`.
pub fn crm_checkpoint(kind: RecordKind) -> String {
    format!("crm.changes.{}", entity_name(kind))
}

/// Rows of a change feed page whose links are looked up in one store call.
const LINK_LOOKUP_CHUNK: usize = 500;

/// Checkpoint of the CRM change feed of the solution link table.
pub const SOLUTION_LINKS_CHECKPOINT: &str = "crm.changes.solution_links";

/// The CRM logical name of a record kind.
pub fn entity_name(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Opportunity => "opportunity",
        RecordKind::Lead => "lead",
    }
}

fn kind_of(entity: &str) -> Option<RecordKind> {
    match entity {
        "opportunity" => Some(RecordKind::Opportunity),
        "lead" => Some(RecordKind::Lead),
        _ => None,
    }
}

/// Which way a mapped field may flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldDirection {
    /// Both ways, conflicts by ownership (default).
    #[default]
    Both,
    /// Only Partner Center → CRM; CRM edits of the field are left alone, not sent.
    ToCrm,
    /// Only CRM → Partner Center; Partner Center edits of the field are left alone.
    ToPartnerCenter,
    /// Neither way, until resumed.
    Paused,
}

/// Engine settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// How far before the checkpoint a reconcile starts again (clock skew and late commits).
    pub reconcile_overlap: chrono::Duration,
    /// Where a first reconcile starts when there is no checkpoint.
    pub initial_lookback: chrono::Duration,
    /// Referrals processed in parallel.
    pub parallelism: usize,
    /// How many times a reconcile is redone after a 412 before giving up.
    pub max_precondition_retries: u32,
    /// Per-field direction (fields not listed flow both ways).
    pub directions: BTreeMap<FieldId, FieldDirection>,
    /// Compute and report, write nothing.
    pub dry_run: bool,
    /// How engines sharing one store split the work (leases, inbox claims).
    pub leases: LeaseConfig,
    /// Backfill groups written side by side (see [`Engine::backfill_in_groups`]); one
    /// customer's referrals always share a lane. Default [`BACKFILL_LANES`].
    pub backfill_lanes: usize,
    /// Whether the reconcile's listing is shared with the other workers on this store (for
    /// several workers on one store; default `false`). The worker holding the reconcile's pass
    /// lease still lists alone, but queues each listed referral in the inbox as a
    /// `reconcile-listed` hint carrying the referral, a chunk in one
    /// [`push_hints`](StateStore::push_hints), and moves the checkpoint once the chunk is
    /// queued; every worker draining the inbox then writes them in backfill groups. The
    /// lister drains the inbox itself while it holds more than twice a lane's worth of groups
    /// per lane, and at the end of its pass, so a lone worker still finishes the reconcile.
    /// Ignored in a dry run (which queues nothing).
    pub share_reconcile: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            reconcile_overlap: chrono::Duration::minutes(5),
            initial_lookback: chrono::Duration::days(365),
            parallelism: 8,
            max_precondition_retries: 3,
            directions: BTreeMap::new(),
            dry_run: false,
            leases: LeaseConfig::default(),
            backfill_lanes: BACKFILL_LANES,
            share_reconcile: false,
        }
    }
}

/// A pass of [`Engine::run`] that is due.
#[derive(Debug, Clone, Copy)]
enum Pass {
    Inbox,
    CrmChanges,
    Reconcile,
}

/// How often [`Engine::run`] does each pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// How often the webhook inbox is drained (a cheap local query when empty).
    pub inbox: std::time::Duration,
    /// How often the CRM change feed is read.
    pub crm_changes: std::time::Duration,
    /// How often Partner Center is reconciled (heals lost webhooks).
    pub reconcile: std::time::Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            inbox: std::time::Duration::from_millis(250),
            crm_changes: std::time::Duration::from_secs(2),
            reconcile: std::time::Duration::from_secs(600),
        }
    }
}

/// What one sync decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// A CRM record was created from a referral.
    CreatedInCrm,
    /// A referral was created from a CRM record.
    CreatedReferral,
    /// Changes were written to the CRM.
    UpdatedCrm,
    /// Changes were written to Partner Center.
    UpdatedReferral,
    /// Changes were written to both sides.
    UpdatedBoth,
    /// Our own write came back; nothing to do.
    Echo,
    /// Nothing changed.
    Unchanged,
    /// Not synced (sync switched off, deleted, or not ours).
    Skipped,
    /// It failed; see the detail, the audit trail and the dead letters.
    Failed,
    /// A dry run: the detail says what would be written.
    Planned,
    /// Queued for any worker to write (a chunk of a shared reconcile's listing, see
    /// [`EngineConfig::share_reconcile`]); the detail says how many referrals.
    Queued,
}

/// One write a dry run would make (see [`EngineConfig::dry_run`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedWrite {
    /// The side written.
    pub side: Side,
    /// The mapped field (`deal_value`), or for Partner Center the JSON Patch path
    /// (`/details/dealValue`) that would be sent.
    pub field: String,
    /// The value it would hold (`null`: cleared).
    pub value: Value,
}

impl fmt::Display for PlannedWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.side {
            Side::PartnerCenter => "Partner Center",
            Side::Crm => "CRM",
        };
        write!(f, "{side} {} = {}", self.field, self.value)
    }
}

/// The result of syncing one referral or CRM record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Outcome {
    /// The referral, when known.
    pub referral_id: Option<String>,
    /// The CRM record (`entity`, id), when known.
    pub crm: Option<(String, String)>,
    /// What was done.
    pub action: Action,
    /// Conflicts resolved by ownership (`field: winner`).
    pub conflicts: Vec<String>,
    /// A readable account (the error text on failure).
    pub detail: String,
    /// In a dry run, what would be written to which side, field by field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<PlannedWrite>,
}

impl Outcome {
    fn new(action: Action, detail: impl Into<String>) -> Self {
        Outcome {
            referral_id: None,
            crm: None,
            action,
            conflicts: Vec::new(),
            detail: detail.into(),
            writes: Vec::new(),
        }
    }

    fn planning(mut self, writes: Vec<PlannedWrite>) -> Self {
        self.writes = writes;
        self
    }

    fn referral(mut self, id: &str) -> Self {
        self.referral_id = Some(id.to_string());
        self
    }

    fn crm(mut self, kind: RecordKind, id: &str) -> Self {
        self.crm = Some((entity_name(kind).to_string(), id.to_string()));
        self
    }
}

/// One referral's hints in an inbox batch.
struct Hinted {
    /// The hints' sequence numbers (acknowledged together).
    seqs: Vec<i64>,
    /// Whether every one was a related-referral event (another party's referral in one of
    /// our engagements).
    related_only: bool,
    /// The referral as a shared reconcile listed it, while every hint is such a listing whose
    /// copy decodes (`shared.rs`); `None` asks for a fresh read.
    listed: Option<Referral>,
}

/// The outcomes of a pass (reconcile, change feed, inbox drain).
///
/// A pass over a large history touches every referral, so the report keeps the first
/// [`Report::DETAIL_LIMIT`] outcomes in full and, past them, only failures (up to as many
/// again); the rest are counted, not kept, so a 100,000-referral backfill's report stays a few
/// MB. [`Report::count`] and [`Report::total`] include the counted ones; the audit trail holds
/// every outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// The outcomes kept in full, in the order they happened.
    pub outcomes: Vec<Outcome>,
    /// Outcomes past the limit, counted by action.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    omitted: Vec<(Action, usize)>,
}

impl Report {
    /// How many outcomes a report keeps in full before it keeps only failures.
    pub const DETAIL_LIMIT: usize = 10_000;

    /// How many outcomes had `action` (kept or only counted).
    pub fn count(&self, action: Action) -> usize {
        self.outcomes.iter().filter(|o| o.action == action).count()
            + self
                .omitted
                .iter()
                .find(|(a, _)| *a == action)
                .map_or(0, |(_, n)| *n)
    }

    /// How many outcomes the pass had (kept or only counted).
    pub fn total(&self) -> usize {
        self.outcomes.len() + self.omitted()
    }

    /// How many outcomes were counted but not kept.
    pub fn omitted(&self) -> usize {
        self.omitted.iter().map(|(_, n)| n).sum()
    }

    /// Outcomes that failed (those kept).
    pub fn failures(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.action == Action::Failed)
    }

    /// Adds one outcome: kept while under the limit (a failure under twice the limit),
    /// otherwise counted.
    pub fn push(&mut self, outcome: Outcome) {
        let room = if outcome.action == Action::Failed {
            2 * Self::DETAIL_LIMIT
        } else {
            Self::DETAIL_LIMIT
        };
        if self.outcomes.len() < room {
            self.outcomes.push(outcome);
        } else {
            self.count_omitted(outcome.action, 1);
        }
    }

    fn count_omitted(&mut self, action: Action, n: usize) {
        match self.omitted.iter_mut().find(|(a, _)| *a == action) {
            Some((_, count)) => *count += n,
            None => self.omitted.push((action, n)),
        }
    }

    fn extend(&mut self, other: Report) {
        for outcome in other.outcomes {
            self.push(outcome);
        }
        for (action, n) in other.omitted {
            self.count_omitted(action, n);
        }
    }
}

/// Engine-level failures (a single record's failure is an [`Outcome`], not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The state store failed; the engine stops rather than lose track of what it did.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A remote call that a whole pass depends on failed (listing referrals, reading changes).
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// Counters of what the engine did since it started.
#[derive(Debug, Default)]
struct Stats {
    to_crm: AtomicU64,
    to_pc: AtomicU64,
    echoes: AtomicU64,
    conflicts: AtomicU64,
    failures: AtomicU64,
}

/// A snapshot of the engine's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EngineStats {
    /// Records written to the CRM.
    pub synced_to_crm: u64,
    /// Referrals written to Partner Center.
    pub synced_to_partner_center: u64,
    /// Echoes recognised.
    pub echoes: u64,
    /// Conflicts resolved.
    pub conflicts: u64,
    /// Failures.
    pub failures: u64,
}

#[derive(Default)]
struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    async fn lock(&self, key: String) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            if locks.len() > 4096 {
                // Forget locks nobody holds or waits for.
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks.entry(key).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Lock guards and store leases for one pair, released together (see `engine/leases.rs`).
type PairGuard = leases::Held;

/// The sync engine (cheap to clone; clones share everything).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    pc: Arc<dyn PartnerCenter>,
    crm: Arc<dyn Crm>,
    store: Arc<dyn StateStore>,
    map: FieldMap,
    config: EngineConfig,
    locks: KeyedLocks,
    /// Customers whose account a committed create of ours made or found (no lock needed).
    known_customers: backfill::KnownCustomers,
    stats: Stats,
    worker: leases::Worker,
    /// The reconcile pass in flight: referrals done and listed (0 of 0 when none runs).
    reconcile_done: AtomicU64,
    /// Referrals listed so far by the running reconcile.
    reconcile_listed: AtomicU64,
    reconcile_total: AtomicU64,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Why a single pair could not be synced (becomes a failed outcome).
#[derive(Debug)]
enum Failure {
    Mapping(Vec<MappingError>),
    Remote(RemoteError),
    Store(StoreError),
    Rule(String),
    /// The pair moved on under the pass (a lead became an opportunity): run it again now,
    /// saying what the interrupted pass had to say (its audit notes).
    Again(Vec<String>),
    /// A pass that took a side from the pair's state instead of reading it found the plan
    /// needs more than that side's known version can vouch for: run it again reading both.
    NeedsRead,
    /// Partner Center refused our patch with a 412 and the referral, read after it, does not
    /// hold the plan (a concurrent edit): the pair is put back as before the plan; the pass
    /// runs again from this copy, reading the CRM side.
    Stale {
        error: RemoteError,
        referral: Box<Referral>,
    },
    /// The CRM record was written with everything it can hold; these fields it cannot (a
    /// currency it lacks), and Partner Center keeps them. `marked`: the pass already wrote ✖
    /// and this text on the CRM row.
    Partial {
        errors: Vec<MappingError>,
        marked: bool,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Mapping(errors) => {
                let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
                f.write_str(&parts.join("; "))
            }
            Failure::Remote(e) => write!(f, "{e}"),
            Failure::Store(e) => write!(f, "{e}"),
            Failure::Rule(s) => f.write_str(s),
            Failure::Again(_) => f.write_str("the pair changed during the pass; not finished"),
            Failure::NeedsRead => f.write_str("the pass needs both sides read; not finished"),
            Failure::Stale { error, .. } => write!(f, "{error}"),
            Failure::Partial { errors, .. } => {
                let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "{}; written without its currency and deal value until then (Partner \
                     Center keeps both)",
                    parts.join("; ")
                )
            }
        }
    }
}

impl From<MappingError> for Failure {
    fn from(e: MappingError) -> Self {
        Failure::Mapping(vec![e])
    }
}

impl From<RemoteError> for Failure {
    fn from(e: RemoteError) -> Self {
        Failure::Remote(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

/// The link of a referral about to be created in the CRM: the plan (`target`), no CRM row yet.
/// Committed before the CRM write, so a crash after it is recovered by the referral id.
fn plan_link(id: &str, referral: &Referral, kind: RecordKind, target: &MappedSnapshot) -> Link {
    Link {
        referral_id: id.to_string(),
        engagement_id: referral.engagement_id.clone(),
        crm_entity: entity_name(kind).to_string(),
        crm_id: None,
        pc_etag: referral.e_tag.clone(),
        pc_updated_at: referral.updated_date_time,
        crm_etag: None,
        target: encode(target),
        crm_known: None,
        pc_known: None,
        in_sync: false,
        crm_status_in_transit: false,
        synced_at: now(),
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn current_status(row: &CrmRow) -> Option<CrmStatus> {
    let get = |c: &str| row.records.primary.get(c).and_then(Value::as_i64);
    Some(CrmStatus {
        kind: row.kind,
        statecode: get("statecode")?,
        statuscode: get("statuscode")?,
    })
}

fn decode(what: &'static str, v: &Value) -> Result<MappedSnapshot, Failure> {
    serde_json::from_value(v.clone()).map_err(|e| {
        Failure::Store(StoreError::Corrupt {
            what,
            detail: e.to_string(),
        })
    })
}

/// Whether a pair holds `solution` on both sides: the plan has it and the CRM row had it when
/// last read or written. A link state that cannot be decoded holds nothing (the caller syncs).
fn pair_holds(pair: &Link, solution: &str) -> bool {
    let Ok(sides) = Sides::of(pair) else {
        return false;
    };
    let has = |s: &MappedSnapshot| {
        s.solutions()
            .iter()
            .any(|v| v.id.eq_ignore_ascii_case(solution))
    };
    has(&sides.target) && has(&sides.crm)
}

fn encode(s: &MappedSnapshot) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// A side's snapshot as stored on the link: nothing when it holds the target.
fn known_value(known: &MappedSnapshot, target: &MappedSnapshot) -> Option<Value> {
    (known != target).then(|| encode(known))
}

/// The pair's state decoded from its link.
#[derive(Debug, Clone)]
struct Sides {
    target: MappedSnapshot,
    crm: MappedSnapshot,
    pc: MappedSnapshot,
}

impl Sides {
    fn of(link: &Link) -> Result<Sides, Failure> {
        let target = decode("link target snapshot", &link.target)?;
        let side = |v: &Option<Value>, what| match v {
            Some(v) => decode(what, v),
            None => Ok(target.clone()),
        };
        Ok(Sides {
            crm: side(&link.crm_known, "link CRM snapshot")?,
            pc: side(&link.pc_known, "link Partner Center snapshot")?,
            target,
        })
    }

    fn state(&self) -> PairState<'_> {
        PairState {
            target: &self.target,
            crm_known: &self.crm,
            partner_center_known: &self.pc,
        }
    }

    /// Writes this state into `link` (sides equal to the target are not stored).
    fn store_in(&self, link: &mut Link) {
        link.target = encode(&self.target);
        link.crm_known = known_value(&self.crm, &self.target);
        link.pc_known = known_value(&self.pc, &self.target);
    }
}

/// The CRM writes that take `from` to `to`, field by field.
fn crm_writes(from: &MappedSnapshot, to: &MappedSnapshot) -> Vec<PlannedWrite> {
    diff(from, to)
        .into_iter()
        .map(|c| PlannedWrite {
            side: Side::Crm,
            field: c.field.as_str().to_string(),
            value: c.after.as_ref().map_or(Value::Null, plain),
        })
        .collect()
}

/// A mapped value as plain JSON (`"Active/Accepted"`, `120000`, `"2027-06-30"`).
fn plain(v: &FieldValue) -> Value {
    match v {
        FieldValue::Status(s) => Value::String(s.to_string()),
        other => {
            let tagged = serde_json::to_value(other).unwrap_or(Value::Null);
            match tagged {
                Value::Object(mut o) => o.remove("value").unwrap_or(Value::Null),
                v => v,
            }
        }
    }
}

/// The Partner Center writes of a patch.
fn pc_writes(update: &ReferralUpdate) -> Vec<PlannedWrite> {
    update
        .operations
        .iter()
        .map(|op| PlannedWrite {
            side: Side::PartnerCenter,
            field: op.path.clone(),
            value: op.value.clone(),
        })
        .collect()
}

/// Whether two snapshots differ in anything but the status (which moves by status steps).
fn differs_beyond_status(a: &MappedSnapshot, b: &MappedSnapshot) -> bool {
    FieldId::ALL
        .iter()
        .any(|&f| f != FieldId::Status && a.get(f) != b.get(f))
}

/// Whether a value is empty (absent, blank text, an empty list).
fn is_empty_value(v: Option<&FieldValue>) -> bool {
    match v {
        None => true,
        Some(FieldValue::Text(t)) => t.trim().is_empty(),
        Some(FieldValue::Contacts(c)) => c.is_empty(),
        Some(FieldValue::Solutions(s)) => s.is_empty(),
        Some(_) => false,
    }
}

/// What a currency the CRM lacks keeps from the CRM record: the currency, and the deal value
/// (in another currency it would misstate the deal).
const CURRENCY_FIELDS: [FieldId; 2] = [FieldId::Currency, FieldId::DealValue];

/// What one pass writes to the CRM side.
struct CrmWrite<'a> {
    /// The CRM side's row (`None`: create it by its alternate key).
    row: Option<&'a CrmRow>,
    /// What to write.
    payload: &'a CrmPayload,
    /// An open lead the written opportunity replaces.
    lead_to_close: Option<&'a CrmRow>,
    /// Whether columns are written (or only the status moved).
    write_fields: bool,
    /// Whether the columns to write are only the referral's identity.
    identity_only: bool,
    /// The outcome for the mark and the audit column (✖ for a record written in part).
    outcome: SyncOutcome,
    /// The outcome text for the audit column.
    message: &'a str,
    /// What the CRM holds once written.
    crm_view: &'a MappedSnapshot,
    /// Whether `row` is the pair's known state rather than a read: its audit column's text is
    /// unknown, so the write leaves that column as it is.
    row_assumed: bool,
}

/// Where an adopted referral came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The answer of our own create: exactly what Partner Center holds.
    Created,
    /// Found afterwards (a lost answer, a crash, lost state): it may have changed since.
    Found,
}

/// The CRM side of a pass: the row (if it exists yet) and what it was last known to hold.
struct CrmSide {
    /// The row the pair's CRM side is now (`None`: not created yet).
    row: Option<CrmRow>,
    /// What that row was last known to hold (for a row not created yet: the target).
    known: MappedSnapshot,
    /// An open lead the opportunity replaces, to be closed once the opportunity is written.
    lead_to_close: Option<CrmRow>,
    /// The lead the pair was on, when it is becoming an opportunity.
    lead: Option<CrmRow>,
}

impl CrmSide {
    /// A CRM side that is its own row (no lead being replaced).
    fn plain(row: Option<CrmRow>, known: MappedSnapshot) -> Self {
        CrmSide {
            row,
            known,
            lead_to_close: None,
            lead: None,
        }
    }
}

impl Engine {
    /// An engine over the given Partner Center, CRM and state store. It maps with the CRM's
    /// field map ([`Crm::field_map`]), so the columns it plans and the columns the adapter reads
    /// and writes cannot differ.
    pub fn new(
        pc: Arc<dyn PartnerCenter>,
        crm: Arc<dyn Crm>,
        store: Arc<dyn StateStore>,
        config: EngineConfig,
    ) -> Self {
        let map = crm.field_map().clone();
        Engine {
            inner: Arc::new(Inner {
                pc,
                crm,
                store,
                map,
                config,
                locks: KeyedLocks::default(),
                known_customers: backfill::KnownCustomers::default(),
                stats: Stats::default(),
                worker: leases::Worker::default(),
                reconcile_done: AtomicU64::new(0),
                reconcile_listed: AtomicU64::new(0),
                reconcile_total: AtomicU64::new(0),
            }),
        }
    }

    /// The state store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.inner.store
    }

    /// The field map (the CRM adapter's, taken when the engine was built).
    pub fn field_map(&self) -> &FieldMap {
        &self.inner.map
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// What the engine did since it started.
    pub fn stats(&self) -> EngineStats {
        let s = &self.inner.stats;
        EngineStats {
            synced_to_crm: s.to_crm.load(Ordering::Relaxed),
            synced_to_partner_center: s.to_pc.load(Ordering::Relaxed),
            echoes: s.echoes.load(Ordering::Relaxed),
            conflicts: s.conflicts.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
        }
    }

    /// The reconcile pass in flight, as (referrals done, referrals listed); `None` when no
    /// reconcile is running (or it is still listing).
    pub fn reconcile_progress(&self) -> Option<(u64, u64)> {
        let total = self.inner.reconcile_total.load(Ordering::Relaxed);
        (total > 0).then(|| (self.inner.reconcile_done.load(Ordering::Relaxed), total))
    }

    /// Locks a pair in this process and leases it in the store (other workers).
    async fn lock_pair(
        &self,
        crm_id: Option<&str>,
        referral_id: Option<&str>,
    ) -> Result<PairGuard, StoreError> {
        // Always CRM first, then referral: a consistent order cannot deadlock.
        let keys = crm_id
            .map(|id| format!("crm:{id}"))
            .into_iter()
            .chain(referral_id.map(|id| format!("referral:{id}")))
            .collect();
        self.lease_keys(keys).await
    }

    async fn commit(&self, commit: Commit) -> Result<(), Failure> {
        if self.inner.config.dry_run || commit.is_empty() {
            return Ok(());
        }
        Ok(self.inner.store.commit(commit).await?)
    }

    fn count_synced(&self, direction: Direction) {
        let s = &self.inner.stats;
        match direction {
            Direction::ToCrm => s.to_crm.fetch_add(1, Ordering::Relaxed),
            Direction::ToPartnerCenter => s.to_pc.fetch_add(1, Ordering::Relaxed),
        };
        metrics::counter!("cosell_sync_records_synced_total", "direction" => direction.as_str())
            .increment(1);
    }

    // ------------------------------------------------------------------ Partner Center side

    /// Syncs one referral now ("sync this referral now"): reads it and applies it.
    #[tracing::instrument(skip(self), fields(referral_id = %referral_id))]
    pub async fn sync_referral(&self, referral_id: &str) -> Result<Outcome, EngineError> {
        match self.inner.pc.get_referral(referral_id).await {
            Ok(referral) => Box::pin(self.apply_referral(referral)).await,
            Err(e) if e.is_not_found() => {
                Ok(Outcome::new(Action::Skipped, "referral not found").referral(referral_id))
            }
            Err(e) => Ok(self
                .fail_referral(referral_id, None, Failure::Remote(e))
                .await?),
        }
    }

    /// Applies a referral read from Partner Center: creates its CRM record, or reconciles the
    /// pair. A pair in sync whose referral eTag did not move costs no CRM call (CRM-side edits
    /// arrive through the change feed).
    pub async fn apply_referral(&self, referral: Referral) -> Result<Outcome, EngineError> {
        let Some(id) = referral.id.clone().filter(|s| !s.is_empty()) else {
            return Ok(Outcome::new(Action::Failed, "referral without an id"));
        };
        let store = &self.inner.store;
        let link = store.link_by_referral(&id).await?;
        let crm_key = link
            .as_ref()
            .and_then(|l| l.crm_id.clone())
            .or_else(|| referral.external_reference_id.clone());
        let _guard = self.lock_pair(crm_key.as_deref(), Some(&id)).await?;
        // Re-read under the lock: another task may have linked it meanwhile.
        let link = store.link_by_referral(&id).await?;
        // A referral listed before our own later write is older than what we know: read it
        // again rather than take its old values for Microsoft's edits.
        let referral = match &link {
            Some(l)
                if l.pc_updated_at.is_some()
                    && referral.updated_date_time.is_some()
                    && referral.updated_date_time < l.pc_updated_at =>
            {
                match self.inner.pc.get_referral(&id).await {
                    Ok(fresh) => fresh,
                    Err(e) => return self.fail_pair(&id, None, Failure::Remote(e)).await,
                }
            }
            _ => referral,
        };
        let result = match link {
            // Only a pair verified in sync may take the short-cut: a pair with pending work
            // (a side written, the other not) is reconciled whatever the referral's eTag says.
            Some(link)
                if link.in_sync && link.pc_etag.is_some() && link.pc_etag == referral.e_tag =>
            {
                return Ok(
                    Outcome::new(Action::Unchanged, "eTag unchanged since last sync").referral(&id),
                );
            }
            Some(link) => Box::pin(self.reconcile_locked(link, Some(referral))).await,
            None => Box::pin(self.create_in_crm(&id, referral)).await,
        };
        match result {
            Ok(outcome) => Ok(outcome),
            Err(Failure::Store(e)) => Err(e.into()),
            Err(failure) => self.fail_pair(&id, None, failure).await,
        }
    }

    /// A referral with no link: adopt the CRM record it came from, or create its CRM record.
    async fn create_in_crm(&self, id: &str, referral: Referral) -> Result<Outcome, Failure> {
        let inner = &self.inner;
        let map = &inner.map;
        // A referral created from one of our CRM records carries its id: adopt the pair,
        // merging against what was sent when we still know it.
        if let Some(ext) = referral.external_reference_id.as_deref()
            && let Some(row) = inner.crm.read(RecordKind::Opportunity, ext).await?
            && map
                .referral_id_of(row.kind, &row.records.primary)
                .is_none_or(|r| r == id)
        {
            let intent = self.intent_of(row.kind, &row.id).await?;
            return self
                .adopt(referral, row, intent.as_ref(), Origin::Found)
                .await;
        }
        let snapshot = map.snapshot_from_referral(&referral)?;
        let payload = map.to_crm(&snapshot, &self.identity(&referral)?, None)?;
        let kind = payload.kind;
        if inner.config.dry_run {
            return Ok(Outcome::new(
                Action::Planned,
                format!("would create a CRM {} for the referral", entity_name(kind)),
            )
            .referral(id)
            .planning(crm_writes(&MappedSnapshot::new(), &snapshot)));
        }
        // The plan is durable before the CRM is written: a crash after the upsert is recovered
        // by finding the row by its referral id and merging against what was sent.
        let link = plan_link(id, &referral, kind, &snapshot);
        self.commit(Commit::new().link(link.clone())).await?;
        Box::pin(self.reconcile_locked(link, Some(referral))).await
    }

    /// The create intent recorded for a CRM record, if any.
    async fn intent_of(
        &self,
        kind: RecordKind,
        id: &str,
    ) -> Result<Option<CreateIntent>, StoreError> {
        self.inner.store.intent(entity_name(kind), id).await
    }

    fn identity(&self, referral: &Referral) -> Result<ReferralIdentity, Failure> {
        ReferralIdentity::of(referral).ok_or_else(|| Failure::Rule("referral without an id".into()))
    }

    /// Links a referral to the CRM row it was created from (after a lost link write or a
    /// create whose response was lost), then reconciles the new pair at once. With the create
    /// intent's plan, both sides are taken to hold what was sent, so whatever changed since on
    /// either side is that side's edit; without one (state lost), every difference is decided
    /// by ownership.
    async fn adopt(
        &self,
        referral: Referral,
        row: CrmRow,
        intent: Option<&CreateIntent>,
        origin: Origin,
    ) -> Result<Outcome, Failure> {
        let id = referral.id.clone().unwrap_or_default();
        let plan = match intent.and_then(|i| i.target.as_ref()) {
            Some(t) => decode("intent target snapshot", t)?,
            None => MappedSnapshot::new(),
        };
        // What Partner Center held once the create was done. Straight from the create's answer
        // it is exact (Partner Center sets a new referral's status itself: that is not
        // Microsoft's edit). Found later, it is what was sent, with the status Partner Center
        // gave it unless Microsoft has since closed it.
        let pc_known = match origin {
            Origin::Created => self.inner.map.snapshot_from_referral(&referral)?,
            Origin::Found => {
                let mut known = plan.clone();
                let status = self.inner.map.snapshot_from_referral(&referral)?;
                if let Some(st) = status.status().filter(|s| !s.is_terminal()) {
                    known.set(FieldId::Status, FieldValue::Status(st.clone()));
                }
                known
            }
        };
        if self.inner.config.dry_run {
            return Ok(
                Outcome::new(Action::Planned, "would link the CRM record to the referral")
                    .referral(&id)
                    .crm(row.kind, &row.id),
            );
        }
        let link = Link {
            referral_id: id.clone(),
            engagement_id: referral.engagement_id.clone(),
            crm_entity: entity_name(row.kind).to_string(),
            crm_id: Some(row.id.clone()),
            pc_etag: None,
            pc_updated_at: referral.updated_date_time,
            crm_etag: intent.and_then(|i| i.crm_etag.clone()),
            target: encode(&plan),
            crm_known: None,
            pc_known: known_value(&pc_known, &plan),
            in_sync: false,
            crm_status_in_transit: false,
            synced_at: now(),
        };
        let message = format!("linked referral to {} {}", entity_name(row.kind), row.id);
        self.commit(
            Commit::new()
                .link(link.clone())
                .resolve_intent(entity_name(row.kind), &row.id)
                .clear_dead_letter(format!("{}:{}", entity_name(row.kind), row.id))
                .audit(
                    AuditEntry::new(Direction::ToPartnerCenter, AuditOutcome::Created, &message)
                        .referral(&id)
                        .crm(entity_name(row.kind), &row.id),
                ),
        )
        .await?;
        let adopted = Outcome::new(Action::CreatedReferral, message.clone())
            .referral(&id)
            .crm(row.kind, &row.id);
        // The row may differ from the referral (identity columns to write back, edits made
        // while the create was in flight): reconcile the new pair right away.
        let followed = Box::pin(self.reconcile_locked(link, Some(referral))).await?;
        Ok(match followed.action {
            Action::UpdatedReferral | Action::UpdatedCrm | Action::UpdatedBoth => Outcome {
                detail: format!("{message}; {}", followed.detail),
                conflicts: followed.conflicts,
                ..adopted
            },
            _ => adopted,
        })
    }

    // ------------------------------------------------------------------ the pair

    /// Reconciles a linked pair (both sides read fresh, no short-cut). Locks the pair.
    pub async fn reconcile_link(&self, link: Link) -> Result<Outcome, EngineError> {
        let _guard = self
            .lock_pair(link.crm_id.as_deref(), Some(&link.referral_id))
            .await?;
        let link = match self.inner.store.link_by_referral(&link.referral_id).await? {
            Some(l) => l,
            None => return Ok(Outcome::new(Action::Skipped, "link removed meanwhile")),
        };
        let referral_id = link.referral_id.clone();
        let crm = kind_of(&link.crm_entity).zip(link.crm_id.clone());
        match self.reconcile_locked(link, None).await {
            Ok(o) => Ok(o),
            Err(Failure::Store(e)) => Err(e.into()),
            Err(f) => self.fail_pair(&referral_id, crm, f).await,
        }
    }

    /// Reconciles a pair, redone on a 412 from either side.
    async fn reconcile_locked(
        &self,
        link: Link,
        referral: Option<Referral>,
    ) -> Result<Outcome, Failure> {
        let mut referral = referral;
        let mut attempt = 0;
        // Notes of a pass cut short by the pair moving on, said by the pass that finishes.
        let mut carried: Vec<String> = Vec::new();
        // The first pass over a pair in sync may take the side that did not change from the
        // pair's state (its version vouches for it, its write goes under If-Match); after a
        // 412, or a plan that needs more, both sides are read.
        let mut assume = !self.inner.config.dry_run;
        // A pass for a CRM change may end as an echo without reading the referral; a pass for
        // a referral redone after a 412 reads it again instead (the change it was given must
        // not be taken for an echo of the CRM's).
        let crm_trigger = referral.is_none();
        loop {
            let link_now = self
                .inner
                .store
                .link_by_referral(&link.referral_id)
                .await?
                .unwrap_or_else(|| link.clone());
            let given = referral.take();
            // Boxed: kept across the pass, it would make every caller's future larger.
            let kept = if assume {
                given.clone().map(Box::new)
            } else {
                None
            };
            let res =
                Box::pin(self.reconcile_once(&link_now, given, &carried, assume, crm_trigger))
                    .await;
            match res {
                Err(Failure::NeedsRead) if assume => {
                    // Nothing was written: the same pass again, reading what it assumed.
                    assume = false;
                    referral = kept.map(|r| *r);
                }
                Err(Failure::Remote(e))
                    if e.kind() == RemoteErrorKind::PreconditionFailed
                        && attempt < self.inner.config.max_precondition_retries =>
                {
                    attempt += 1;
                    assume = false;
                    tracing::debug!(attempt, "concurrent edit (412); re-reading both sides");
                }
                Err(Failure::Stale {
                    referral: fresh, ..
                }) if attempt < self.inner.config.max_precondition_retries => {
                    attempt += 1;
                    assume = false;
                    // Read just now, after the 412: the redo need not read it again.
                    referral = Some(*fresh);
                    tracing::debug!(attempt, "concurrent edit (412); re-reading the CRM side");
                }
                Err(Failure::Stale { error, .. }) => return Err(Failure::Remote(error)),
                Err(Failure::Again(notes))
                    if attempt < self.inner.config.max_precondition_retries =>
                {
                    attempt += 1;
                    assume = false;
                    for note in notes {
                        if !carried.contains(&note) {
                            carried.push(note);
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// Finds the CRM side of a pair: its row, or the opportunity that replaces its lead, and
    /// what that row was last known to hold.
    async fn crm_side(&self, link: &Link, sides: &Sides) -> Result<CrmSide, Failure> {
        let inner = &self.inner;
        let map = &inner.map;
        let kind = kind_of(&link.crm_entity)
            .ok_or_else(|| Failure::Rule(format!("unknown CRM entity `{}`", link.crm_entity)))?;
        let row = match &link.crm_id {
            Some(id) => inner.crm.read(kind, id).await?,
            // The plan was committed but the create's answer never recorded: the upsert is
            // keyed by the referral id, so the row is found by it if it was written, in the
            // table the plan was made for or the one the referral has moved to since.
            None => match inner.crm.find_by_referral(kind, &link.referral_id).await? {
                Some(row) => Some(row),
                None => {
                    let other = match kind {
                        RecordKind::Lead => RecordKind::Opportunity,
                        RecordKind::Opportunity => RecordKind::Lead,
                    };
                    inner.crm.find_by_referral(other, &link.referral_id).await?
                }
            },
        };
        let Some(row) = row else {
            return Ok(CrmSide::plain(None, sides.target.clone()));
        };
        if link.crm_id.is_none() {
            // Our create landed but its answer was lost, maybe part-way (the row written, its
            // solutions not yet linked): take the row to have held nothing, in the state a
            // create starts in (open). What it holds of the target is then no edit, what it
            // lacks is still to write, and anything else is the seller's edit.
            let mut known = MappedSnapshot::new();
            let open = self.open_status(row.kind);
            let state = map
                .config()
                .status
                .referral_state(open, sides.target.status())?;
            known.set(FieldId::Status, FieldValue::Status(state));
            return Ok(CrmSide::plain(Some(row), known));
        }
        if row.kind != RecordKind::Lead {
            return Ok(CrmSide::plain(Some(row), sides.crm.clone()));
        }
        // A lead becomes an opportunity when the seller qualifies it, or when the plan says
        // the referral was accepted (an earlier pass may have created the opportunity).
        let status = current_status(&row);
        let qualified = status.is_some_and(|s| s.statecode == cosell_mapping::STATE_WON);
        let planned_opportunity = map
            .config()
            .status
            .crm_status(
                sides.target.status().unwrap_or(&ReferralState::new(
                    ReferralStatus::New,
                    ReferralSubstatus::Pending,
                )),
                Some(RecordKind::Lead),
            )
            .is_ok_and(|s| s.kind == RecordKind::Opportunity);
        if !qualified && !planned_opportunity {
            return Ok(CrmSide::plain(Some(row), sides.crm.clone()));
        }
        let mut opportunity = inner
            .crm
            .find_by_referral(RecordKind::Opportunity, &link.referral_id)
            .await?;
        if opportunity.is_none()
            && let Some(opp_id) = row
                .records
                .primary
                .get("_qualifyingopportunityid_value")
                .and_then(Value::as_str)
        {
            opportunity = inner.crm.read(RecordKind::Opportunity, opp_id).await?;
        }
        let lead_to_close =
            (!qualified && status.is_some_and(|s| s.is_open())).then(|| row.clone());
        let Some(opp) = opportunity else {
            // No opportunity yet: the lead stays the CRM side; the pass creates the opportunity
            // if the merged target still asks for one.
            return Ok(CrmSide {
                row: Some(row.clone()),
                known: sides.crm.clone(),
                lead_to_close,
                lead: Some(row),
            });
        };
        // The opportunity is new to the pair. What it holds that the lead held too is compared
        // with what the lead was last known to hold (a seller's edit after qualifying shows);
        // what it lacks (help, visibility, solutions, Microsoft's CRM id, a customer the
        // qualification did not copy) is not a removal: the target carries Microsoft's values
        // over.
        let opp_snapshot = map.snapshot_from_crm(&opp.records, Some(&sides.crm))?;
        let mut known = sides.crm.clone();
        for field in FieldId::ALL {
            if is_empty_value(opp_snapshot.get(field)) {
                known.set_opt(field, opp_snapshot.get(field).cloned());
            }
        }
        let opp_open = current_status(&opp).is_some_and(|s| s.is_open());
        if lead_to_close.is_some()
            || (planned_opportunity && link.crm_status_in_transit && opp_open)
        {
            // The lead is still open, so no seller qualified it; or our conversion of it was
            // under way (its answer maybe lost): the opportunity is ours, and where its status
            // stands is our pending work.
            known.set_opt(FieldId::Status, opp_snapshot.get(FieldId::Status).cloned());
        }
        Ok(CrmSide {
            row: Some(opp),
            known,
            lead_to_close,
            lead: Some(row),
        })
    }

    /// One pass over a pair: read both sides, merge against the per-side state, commit the
    /// plan, write each side what it lacks (recording each side as soon as it is written),
    /// then record the pair as verified.
    ///
    /// With `assume`, a pair in sync takes the side that did not trigger the pass from its
    /// state rather than reading it: the CRM row as the pair last wrote or read it (a Partner
    /// Center change), the referral as the pair last wrote or read it (a CRM change). The
    /// writes to an assumed side go under `If-Match` with its recorded version, so a change
    /// made there meanwhile is a 412 and a pass that reads; a plan that needs more than a
    /// plain field write to the assumed side (status steps, a refusal, notes) is
    /// [`Failure::NeedsRead`] before anything is written.
    async fn reconcile_once(
        &self,
        link: &Link,
        referral: Option<Referral>,
        carried: &[String],
        assume: bool,
        crm_trigger: bool,
    ) -> Result<Outcome, Failure> {
        let inner = &self.inner;
        let map = &inner.map;
        let dry_run = inner.config.dry_run;
        let mut sides = Sides::of(link)?;
        let assumed_row = if assume && referral.is_some() {
            self.known_crm_row(link, &sides)
        } else {
            None
        };
        let crm_assumed = assumed_row.is_some();
        let crm_side = match assumed_row {
            Some(row) => CrmSide::plain(Some(row), sides.crm.clone()),
            None => self.crm_side(link, &sides).await?,
        };
        if link.crm_id.is_some() && crm_side.row.is_none() {
            return Ok(Outcome::new(
                Action::Skipped,
                "the CRM record was deleted; Partner Center referrals cannot be deleted, left as is",
            )
            .referral(&link.referral_id));
        }
        let CrmSide {
            row,
            known: crm_known,
            lead_to_close,
            lead,
        } = crm_side;
        let switched = lead.is_some()
            && row
                .as_ref()
                .is_some_and(|r| r.kind == RecordKind::Opportunity);
        sides.crm = crm_known;
        let mut raw_crm = match &row {
            Some(r) => map.snapshot_from_crm(&r.records, Some(&sides.crm))?,
            // Not created yet: nothing on the CRM side to merge; the target is what it gets.
            None => sides.target.clone(),
        };
        // The CRM status stands for several referral states (a lost opportunity is Lost, or a
        // Declined or Expired referral's opportunity): when it is the target's, it holds the
        // target's state.
        if let (Some(r), Some(t)) = (&row, sides.target.status())
            && raw_crm.status() != Some(t)
            && current_status(r)
                .is_some_and(|st| map.config().status.crm_status(t, Some(r.kind)).ok() == Some(st))
        {
            raw_crm.set(FieldId::Status, FieldValue::Status(t.clone()));
        }
        // A write with status steps was cut short: the linked row, open, is where our steps
        // left it. (Another row, such as the opportunity a seller made of the lead since, is
        // the seller's.)
        if link.crm_status_in_transit
            && row.as_ref().is_some_and(|r| {
                link.crm_id.as_deref() == Some(r.id.as_str())
                    && current_status(r).is_some_and(|s| s.is_open())
            })
        {
            sides
                .crm
                .set_opt(FieldId::Status, raw_crm.get(FieldId::Status).cloned());
        }
        // An echo of our own CRM write costs no Partner Center call.
        let mut pc_assumed = false;
        let referral = match referral {
            Some(r) => r,
            None if crm_trigger
                && link.in_sync
                && raw_crm == sides.crm
                && !switched
                && row.is_some() =>
            {
                inner.stats.echoes.fetch_add(1, Ordering::Relaxed);
                let mut o = Outcome::new(Action::Echo, "CRM change matches what was last synced")
                    .referral(&link.referral_id);
                if let Some(r) = &row {
                    o = o.crm(r.kind, &r.id);
                    // The row holds what the pair knows at this version: recorded, so its next
                    // echo is known by the version alone and a write can go under it.
                    if link.crm_id.as_deref() == Some(r.id.as_str())
                        && r.etag.is_some()
                        && r.etag != link.crm_etag
                        && !dry_run
                    {
                        let mut updated = link.clone();
                        updated.crm_etag = r.etag.clone();
                        self.commit(Commit::new().link(updated)).await?;
                    }
                }
                return Ok(o);
            }
            // A CRM edit of a pair in sync: the referral is what the pair last knew at its
            // eTag, and a patch goes under If-Match with it (a 412 if Microsoft changed it).
            None if assume
                && link.in_sync
                && !link.crm_status_in_transit
                && link.pc_etag.is_some()
                && !switched
                && row.is_some() =>
            {
                pc_assumed = true;
                Referral {
                    id: Some(link.referral_id.clone()),
                    engagement_id: link.engagement_id.clone(),
                    e_tag: link.pc_etag.clone(),
                    updated_date_time: link.pc_updated_at,
                    ..Referral::default()
                }
            }
            None => inner.pc.get_referral(&link.referral_id).await?,
        };
        let identity = self.identity(&referral)?;
        let raw_pc = if pc_assumed {
            sides.pc.clone()
        } else {
            map.snapshot_from_referral(&referral)?
        };

        // Per-field direction: a held side's edits are masked from the merge.
        let mut crm_in = raw_crm.clone();
        let mut pc_in = raw_pc.clone();
        for (field, direction) in &inner.config.directions {
            if matches!(direction, FieldDirection::ToCrm | FieldDirection::Paused) {
                crm_in.set_opt(*field, sides.crm.get(*field).cloned());
            }
            if matches!(
                direction,
                FieldDirection::ToPartnerCenter | FieldDirection::Paused
            ) {
                pc_in.set_opt(*field, sides.pc.get(*field).cloned());
            }
        }
        let mut merged = merge_sides(&sides.state(), &crm_in, &pc_in, map.ownership());
        // A currency the CRM lacks: the row holds the CRM's default currency and no deal value,
        // neither of them the seller's word on the deal, so the CRM's are held (not merged,
        // never written to Partner Center) and the plan keeps Partner Center's.
        let mut missing_currency = self
            .missing_currency(&merged.merged, row.as_ref(), &raw_crm)
            .await?;
        if let Some(code) = missing_currency.clone() {
            for field in CURRENCY_FIELDS {
                crm_in.set_opt(field, sides.crm.get(field).cloned());
            }
            merged = merge_sides(&sides.state(), &crm_in, &pc_in, map.ownership());
            if merged.merged.text(FieldId::Currency) != Some(code.as_str()) {
                missing_currency = self
                    .missing_currency(&merged.merged, row.as_ref(), &raw_crm)
                    .await?;
            }
        }
        let mut target = merged.merged;
        // What the pass has to say beyond its writes (the audit trail and, when the CRM row is
        // written, its audit column).
        let mut notes: Vec<String> = carried.to_vec();
        // Help requested makes a referral visible to Microsoft sellers (Partner Center shares it):
        // the CRM shows it so rather than contradict Partner Center with an empty or "No" column.
        if target.is_co_sell() {
            target.set(FieldId::VisibleToMicrosoft, FieldValue::Bool(true));
        }
        // Visibility is one-way (DESIGN §4): once Partner Center shares the referral, the CRM
        // shows it shared. A seller's "No" cannot be written to Partner Center, so the CRM is put
        // back and the audit says why (rather than leave the CRM saying "not visible" while the
        // referral is shared, with a refusal retried forever).
        let visible = Some(&FieldValue::Bool(true));
        if raw_pc.get(FieldId::VisibleToMicrosoft) == visible
            && target.get(FieldId::VisibleToMicrosoft) != visible
        {
            if row
                .as_ref()
                .is_some_and(|r| r.kind == RecordKind::Opportunity)
                && raw_crm.get(FieldId::VisibleToMicrosoft)
                    != sides.crm.get(FieldId::VisibleToMicrosoft)
            {
                notes.push(
                    "not written to Partner Center: visibility to Microsoft sellers cannot be \
                     withdrawn once granted"
                        .to_string(),
                );
            }
            target.set(FieldId::VisibleToMicrosoft, FieldValue::Bool(true));
        }
        // An opportunity never goes back to being a lead.
        let crm_kind_now = row
            .as_ref()
            .map(|r| r.kind)
            .unwrap_or(kind_of(&link.crm_entity).unwrap_or(RecordKind::Opportunity));
        if crm_kind_now == RecordKind::Opportunity
            && let Some(st) = target.status().cloned()
            && map
                .config()
                .status
                .crm_status(&st, Some(RecordKind::Opportunity))?
                .kind
                == RecordKind::Lead
        {
            target.set_opt(FieldId::Status, raw_crm.get(FieldId::Status).cloned());
        }
        let mut crm_target = target.clone();
        let mut pc_target = target.clone();
        for (field, direction) in &inner.config.directions {
            let moved = target.get(*field) != sides.target.get(*field);
            match direction {
                FieldDirection::Both => {}
                FieldDirection::ToCrm => {
                    pc_target.set_opt(*field, raw_pc.get(*field).cloned());
                    if !moved {
                        crm_target.set_opt(*field, raw_crm.get(*field).cloned());
                    }
                }
                FieldDirection::ToPartnerCenter => {
                    crm_target.set_opt(*field, raw_crm.get(*field).cloned());
                    if !moved {
                        pc_target.set_opt(*field, raw_pc.get(*field).cloned());
                    }
                }
                FieldDirection::Paused => {
                    crm_target.set_opt(*field, raw_crm.get(*field).cloned());
                    pc_target.set_opt(*field, raw_pc.get(*field).cloned());
                }
            }
        }
        // Nor are they written to the CRM: a new record gets neither (the CRM gives it its
        // default currency), an existing one keeps what it holds. The rest is written, with ✖
        // and the text that says what to enable.
        let partial: Option<Vec<MappingError>> = missing_currency
            .filter(|c| crm_target.text(FieldId::Currency) == Some(c.as_str()))
            .map(|code| {
                for field in CURRENCY_FIELDS {
                    crm_target.set_opt(
                        field,
                        row.as_ref().and_then(|_| raw_crm.get(field)).cloned(),
                    );
                }
                vec![MappingError::new(
                    FieldId::Currency.referral_path(),
                    code,
                    Rule::CurrencyNotEnabled,
                )]
            });
        let partial_text = partial.as_ref().map(|errors| {
            Failure::Partial {
                errors: errors.clone(),
                marked: false,
            }
            .to_string()
        });
        let conflicts: Vec<String> = merged
            .conflicts
            .iter()
            .map(|c| format!("{}: {:?} wins ({:?})", c.field.as_str(), c.winner, c.policy))
            .collect();

        // ---- what Partner Center lacks
        let mut pc_update = None;
        let mut pc_refusal: Option<Failure> = None;
        let pc_terminal = raw_pc.status().is_some_and(ReferralState::is_terminal);
        if pc_target != raw_pc {
            let fresh_crm_edit = raw_crm != sides.crm;
            if pc_terminal {
                // A closed referral takes no more changes: a deliberate, audited drop.
                if fresh_crm_edit {
                    notes.push("not written to Partner Center: the referral is closed".to_string());
                }
            } else {
                match self.referral_update(&raw_pc, &pc_target) {
                    Ok(update) => {
                        if !update.not_writable.is_empty() && fresh_crm_edit {
                            let fields: Vec<&str> =
                                update.not_writable.iter().map(|f| f.as_str()).collect();
                            notes.push(format!(
                                "not writable in Partner Center: {}",
                                fields.join(", ")
                            ));
                        }
                        if !update.is_empty() {
                            pc_update = Some(update);
                        }
                    }
                    Err(f) => pc_refusal = Some(f),
                }
            }
        }

        // ---- what the CRM lacks
        let creating = row.is_none();
        let current_kind = row.as_ref().map(|r| r.kind);
        let mut payload = map.to_crm(&crm_target, &identity, current_kind)?;
        if partial.is_some() {
            map.mark_payload(&mut payload, SyncOutcome::Failure);
        }
        let row_status = row.as_ref().and_then(current_status);
        let needs_identity = row.as_ref().is_some_and(|r| {
            map.referral_id_of(r.kind, &r.records.primary).as_deref()
                != Some(link.referral_id.as_str())
        });
        // What the CRM would hold once written: the target as far as the CRM can represent it
        // (an opportunity keeps one contact, a lead no solutions), so an unrepresentable
        // difference is never written again and again.
        let crm_view = map.snapshot_from_crm(&map.written_records(&payload), Some(&crm_target))?;
        let write_fields = creating
            || differs_beyond_status(&crm_view, &raw_crm)
            || needs_identity
            || current_kind != Some(payload.kind);
        // A lead the new opportunity replaces is closed once the opportunity is written.
        let lead_to_close = lead_to_close.or_else(|| {
            row.as_ref()
                .filter(|r| {
                    r.kind == RecordKind::Lead
                        && payload.kind == RecordKind::Opportunity
                        && current_status(r).is_some_and(|s| s.is_open())
                })
                .cloned()
        });
        let status_moves = row_status.is_some_and(|s| s != payload.status);
        let write_crm = write_fields || status_moves || lead_to_close.is_some();
        // A status set in Partner Center (Microsoft declining or expiring the referral, or it
        // being accepted, won or lost there) that the CRM row is now moved to, as the status map
        // says: the record's audit column and the audit trail say so. Told from where the CRM
        // row stands, so a pass that retries the move says it too.
        if let (Some(_), Some(now_state), Some(was)) = (&row, raw_pc.status(), raw_crm.status())
            && (status_moves || current_kind != Some(payload.kind))
            && crm_target.status() == Some(now_state)
            && was != now_state
        {
            notes.push(decisions::status_note(
                was,
                now_state,
                referral.status_reason.as_deref(),
            ));
        }

        // What an assumed side can take unread: a plain field write under its version. Anything
        // more is decided on both sides read.
        let plain_crm_write = pc_update.is_none()
            && pc_refusal.is_none()
            && notes.is_empty()
            && conflicts.is_empty()
            && partial.is_none()
            && lead_to_close.is_none()
            && !status_moves
            && !needs_identity
            && current_kind == Some(payload.kind);
        let plain_pc_write = pc_refusal.is_none() && notes.is_empty() && conflicts.is_empty();
        if (crm_assumed && !plain_crm_write) || (pc_assumed && !plain_pc_write) {
            return Err(Failure::NeedsRead);
        }

        if dry_run {
            let mut planned = Vec::new();
            let mut writes = Vec::new();
            if let Some(u) = &pc_update {
                planned.push(format!(
                    "would patch the referral ({} operations)",
                    u.operations.len()
                ));
                writes.extend(pc_writes(u));
            }
            if write_crm {
                planned.push(format!("would write the CRM {}", entity_name(payload.kind)));
                let from = if creating {
                    MappedSnapshot::new()
                } else {
                    raw_crm.clone()
                };
                writes.extend(crm_writes(&from, &crm_view));
            }
            if planned.is_empty() {
                planned.push("nothing to write".into());
            }
            planned.extend(notes.iter().cloned());
            planned.extend(partial_text.iter().cloned());
            let mut o = Outcome::new(Action::Planned, planned.join("; "))
                .referral(&link.referral_id)
                .planning(writes);
            if let Some(r) = &row {
                o = o.crm(r.kind, &r.id);
            }
            o.conflicts = conflicts;
            return Ok(o);
        }

        let mut updated = link.clone();
        updated.engagement_id = referral
            .engagement_id
            .clone()
            .or(link.engagement_id.clone());
        updated.pc_etag = referral.e_tag.clone();
        updated.pc_updated_at = referral.updated_date_time;
        // The link follows the CRM side at once, unless a lead it replaces is still to close
        // (the link stays on the lead until then, so a failed step is resumed).
        if let Some(r) = &row
            && (!switched || lead_to_close.is_none())
        {
            updated.crm_entity = entity_name(r.kind).to_string();
            updated.crm_id = Some(r.id.clone());
            updated.crm_etag = r.etag.clone();
        }
        let mut now_sides = Sides {
            target: target.clone(),
            // What the CRM side was read holding (for a lead becoming an opportunity: the
            // opportunity); its edits are in the target now.
            crm: raw_crm.clone(),
            pc: raw_pc.clone(),
        };
        let writes_pending = pc_update.is_some() || write_crm;
        if writes_pending {
            // The plan: durable before either side is written.
            updated.in_sync = false;
            updated.crm_status_in_transit = write_crm;
            now_sides.store_in(&mut updated);
            updated.synced_at = now();
            self.commit(Commit::new().link(updated.clone())).await?;
        }

        // ---- Partner Center first: it is the side with rules that can refuse.
        let mut wrote = Vec::new();
        let mut referral_after = referral.clone();
        if let Some(update) = pc_update {
            let etag = referral.e_tag.clone().unwrap_or_default();
            referral_after = match inner
                .pc
                .update_referral(&link.referral_id, &etag, update.operations)
                .await
            {
                Ok(r) => r,
                Err(e) if e.kind() == RemoteErrorKind::PreconditionFailed => {
                    // Sent under If-Match, the patch is sent again after a lost answer: the 412
                    // may be that repeat refused because the first one landed. The referral
                    // as it stands tells: holding the plan, the patch is written.
                    let fresh = match inner.pc.get_referral(&link.referral_id).await {
                        Ok(fresh) => fresh,
                        Err(_) => return Err(self.undo_plan(link, e).await),
                    };
                    if self.holds_plan(&fresh, &raw_pc, &pc_target) {
                        fresh
                    } else {
                        return Err(match self.undo_plan(link, e).await {
                            Failure::Remote(error) => Failure::Stale {
                                error,
                                referral: Box::new(fresh),
                            },
                            f => f,
                        });
                    }
                }
                Err(e) => return Err(self.undo_plan(link, e).await),
            };
            wrote.push("referral updated".to_string());
            self.count_synced(Direction::ToPartnerCenter);
            now_sides.pc = map.snapshot_from_referral(&referral_after)?;
            updated.pc_etag = referral_after.e_tag.clone();
            updated.pc_updated_at = referral_after.updated_date_time;
            updated.engagement_id = referral_after
                .engagement_id
                .clone()
                .or(updated.engagement_id.clone());
            // Recorded at once: a CRM failure next (the record's write, or only its outcome
            // columns) must not make this write look like Microsoft's edit.
            now_sides.store_in(&mut updated);
            self.commit(Commit::new().link(updated.clone())).await?;
        }

        // ---- then the CRM
        let said = if notes.is_empty() {
            "synced".to_string()
        } else {
            notes.join("; ")
        };
        let message = match (&pc_refusal, &partial_text) {
            (Some(f), None) => format!("Partner Center refuses the change: {f}"),
            (Some(f), Some(t)) => format!("Partner Center refuses the change: {f}; {t}"),
            (None, Some(t)) => t.clone(),
            (None, None) if conflicts.is_empty() => said,
            (None, None) => format!("{said}; conflicts resolved: {}", conflicts.join(", ")),
        };
        let outcome = if partial.is_some() {
            SyncOutcome::Failure
        } else {
            SyncOutcome::Success
        };
        // Whether this pass wrote the outcome (mark and text) on the CRM row.
        let mut crm_marked = false;
        let mut crm_written: Option<(RecordKind, String, Option<String>)> = None;
        if write_crm
            && !switched
            && let Some(lead) = lead_to_close
                .as_ref()
                .filter(|l| row.as_ref().is_some_and(|r| r.id == l.id))
        {
            // The lead becomes an opportunity: QualifyLead makes it from the lead's current
            // values (a seller's edit of a moment ago included); the pass then starts again
            // and adopts it with its own ETag, writing what it lacks.
            let qualified = map.config().status.lead.qualified;
            inner.crm.convert_lead(&lead.id, qualified).await?;
            self.count_synced(Direction::ToCrm);
            // The opportunity starts open: our step, not the seller accepting the deal.
            let open = self.open_status(RecordKind::Opportunity);
            self.record_crm(&mut updated, &mut now_sides, open, None)
                .await?;
            return Err(Failure::Again(notes));
        }
        if write_crm {
            let written = Box::pin(self.write_crm_side(
                CrmWrite {
                    row: row.as_ref(),
                    payload: &payload,
                    lead_to_close: lead_to_close.as_ref(),
                    write_fields,
                    identity_only: needs_identity
                        && !creating
                        && current_kind == Some(payload.kind)
                        && !differs_beyond_status(&crm_view, &raw_crm),
                    outcome,
                    message: &message,
                    crm_view: &crm_view,
                    row_assumed: crm_assumed,
                },
                (&mut updated, &mut now_sides),
            ))
            .await;
            let written = match written {
                Ok(w) => w,
                // A 412 there comes from the CRM side's first write (after a reopen the row is
                // written without If-Match): with Partner Center not written either, nothing
                // was, unless it is the write's repeat after a lost answer, refused because
                // the first one landed. A row holding the plan tells: the plan stays (it is
                // what the row holds) and the pass is redone reading both sides.
                Err(Failure::Remote(e)) if wrote.is_empty() => {
                    if e.kind() == RemoteErrorKind::PreconditionFailed
                        && let Some(r) = row.as_ref().filter(|r| r.kind == payload.kind)
                        && self.row_holds(r, &crm_view).await
                    {
                        return Err(Failure::Remote(e));
                    }
                    return Err(self.undo_plan(link, e).await);
                }
                Err(f) => return Err(f),
            };
            wrote.push(format!("{} updated", entity_name(written.0)));
            // Writing back only the referral's identity is linking, not syncing a change.
            if creating || crm_view != raw_crm || lead_to_close.is_some() {
                self.count_synced(Direction::ToCrm);
            }
            now_sides.crm = crm_view.clone();
            if partial.is_some() && crm_view.get(FieldId::Currency).is_none() {
                // The CRM gave the row its default currency: what the row holds, not the
                // seller's edit once the referral's currency is added.
                if let Some(back) = inner.crm.read(written.0, &written.1).await? {
                    let held = map.snapshot_from_crm(&back.records, Some(&crm_view))?;
                    now_sides
                        .crm
                        .set_opt(FieldId::Currency, held.get(FieldId::Currency).cloned());
                }
            }
            crm_marked = true;
            crm_written = Some(written);
        } else if !wrote.is_empty()
            && let Some(r) = &row
            && row_status.is_none_or(|s| s.is_open())
        {
            // Only Partner Center changed: record the outcome on the open CRM row (mark and
            // audit text), under If-Match with the version it was read at. Its new version is
            // recorded as the pair's: written blind, a seller's edit made since the read would
            // hide behind it (its change taken for our echo). A 412 redoes the pass, with
            // Partner Center's write recorded already.
            let columns = map.outcome_columns(r.kind, &r.records.primary, outcome, &message, now());
            let etag = inner
                .crm
                .update_columns(r.kind, &r.id, &columns, r.etag.as_deref())
                .await?;
            updated.crm_etag = etag;
            crm_marked = true;
        } else if pc_refusal.is_none()
            && partial.is_none()
            && let Some(r) = &row
            && row_status.is_none_or(|s| s.is_open())
            && self.mark_is_stale(r)
        {
            // In sync, but an earlier failure left ✖ (or a rename dropped ✔): mark it.
            let columns = map.outcome_columns(
                r.kind,
                &r.records.primary,
                SyncOutcome::Success,
                "in sync",
                now(),
            );
            updated.crm_etag = inner
                .crm
                .update_columns(r.kind, &r.id, &columns, r.etag.as_deref())
                .await?;
        }
        if let Some((kind, id, etag)) = &crm_written {
            updated.crm_entity = entity_name(*kind).to_string();
            updated.crm_id = Some(id.clone());
            updated.crm_etag = etag.clone();
        } else if switched && let Some(r) = &row {
            updated.crm_entity = entity_name(r.kind).to_string();
            updated.crm_id = Some(r.id.clone());
            updated.crm_etag = r.etag.clone();
        }
        if !conflicts.is_empty() {
            inner
                .stats
                .conflicts
                .fetch_add(conflicts.len() as u64, Ordering::Relaxed);
            metrics::counter!("cosell_sync_conflicts_total").increment(conflicts.len() as u64);
        }

        // ---- the pair as verified
        now_sides.target = target;
        now_sides.store_in(&mut updated);
        updated.in_sync = pc_refusal.is_none() && partial.is_none();
        updated.crm_status_in_transit = false;
        updated.synced_at = now();
        let crm_entity = updated.crm_entity.clone();
        let crm_id = updated.crm_id.clone().unwrap_or_default();
        let action = match (
            referral_after.e_tag != referral.e_tag,
            crm_written.is_some(),
        ) {
            (true, true) => Action::UpdatedBoth,
            (true, false) => Action::UpdatedReferral,
            (false, true) if creating => Action::CreatedInCrm,
            (false, true) => Action::UpdatedCrm,
            (false, false) => Action::Unchanged,
        };
        let mut detail = if wrote.is_empty() {
            "nothing to write".to_string()
        } else {
            wrote.join("; ")
        };
        for n in notes.iter().chain(&partial_text) {
            detail.push_str("; ");
            detail.push_str(n);
        }
        let mut commit = Commit::new().link(updated.clone());
        let changed_something = !wrote.is_empty() || !notes.is_empty() || !conflicts.is_empty();
        if changed_something {
            let direction = if action == Action::UpdatedReferral {
                Direction::ToPartnerCenter
            } else {
                Direction::ToCrm
            };
            let outcome = match action {
                Action::CreatedInCrm => AuditOutcome::Created,
                _ if !conflicts.is_empty() => AuditOutcome::Merged,
                Action::Unchanged => AuditOutcome::Skipped,
                _ => AuditOutcome::Updated,
            };
            commit = commit.audit(
                AuditEntry::new(direction, outcome, &detail)
                    .referral(&link.referral_id)
                    .crm(&crm_entity, &crm_id)
                    .conflicts(conflicts.clone()),
            );
        }
        // Verified in sync: the pair's letters go, whichever path left them (the pair's, or the
        // record's from before it was linked).
        let letters = [link.dead_letter_key(), format!("{crm_entity}:{crm_id}")];
        let mut heals = false;
        if pc_refusal.is_none() && partial.is_none() {
            for key in &letters {
                commit = commit.clear_dead_letter(key.clone());
            }
            // A pure echo commits nothing, unless it heals a letter left by an earlier pass.
            if updated == *link && !changed_something {
                for key in &letters {
                    heals |= inner.store.dead_letter(key).await?.is_some();
                }
            }
        }
        if updated != *link || changed_something || heals {
            self.commit(commit).await?;
        }
        if let Some(f) = pc_refusal {
            return Err(f);
        }
        if let Some(errors) = partial {
            return Err(Failure::Partial {
                errors,
                marked: crm_marked,
            });
        }
        if action == Action::Unchanged && !writes_pending {
            inner.stats.echoes.fetch_add(1, Ordering::Relaxed);
        }
        let action = if action == Action::Unchanged && !writes_pending && notes.is_empty() {
            Action::Echo
        } else {
            action
        };
        let mut o = Outcome::new(action, detail).referral(&link.referral_id);
        if let Some(kind) = kind_of(&crm_entity) {
            o = o.crm(kind, &crm_id);
        }
        o.conflicts = conflicts;
        Ok(o)
    }

    /// A failed first write of a pass. On a 412 nothing was written, so the pair is put back as
    /// it was before this pass's plan: the pass that follows reads both sides and merges them
    /// against that state, so an edit on each side is still a conflict for the ownership
    /// policy, not one side's edit already taken into a plan.
    async fn undo_plan(&self, link: &Link, e: RemoteError) -> Failure {
        if e.kind() == RemoteErrorKind::PreconditionFailed
            && let Err(f) = self.commit(Commit::new().link(link.clone())).await
        {
            return f;
        }
        Failure::Remote(e)
    }

    /// Whether the CRM row `row` names holds `crm_view` now (read again; its status aside).
    async fn row_holds(&self, row: &CrmRow, crm_view: &MappedSnapshot) -> bool {
        let Ok(Some(now)) = self.inner.crm.read(row.kind, &row.id).await else {
            return false;
        };
        self.inner
            .map
            .snapshot_from_crm(&now.records, Some(crm_view))
            .is_ok_and(|held| !differs_beyond_status(crm_view, &held))
    }

    /// Whether `referral` holds `pc_target` (nothing left to patch) and nothing else new: each
    /// field as planned or as read before the patch (`raw_pc`). A field changed to anything
    /// else is Microsoft's edit, which a pass recording this copy would take for known.
    fn holds_plan(
        &self,
        referral: &Referral,
        raw_pc: &MappedSnapshot,
        pc_target: &MappedSnapshot,
    ) -> bool {
        let Ok(held) = self.inner.map.snapshot_from_referral(referral) else {
            return false;
        };
        let nothing_new = FieldId::ALL
            .into_iter()
            .all(|f| held.get(f) == pc_target.get(f) || held.get(f) == raw_pc.get(f));
        nothing_new
            && self
                .referral_update(&held, pc_target)
                .is_ok_and(|rest| rest.is_empty())
    }

    /// The target's currency when the CRM lacks it (a row holding that currency has it).
    async fn missing_currency(
        &self,
        target: &MappedSnapshot,
        row: Option<&CrmRow>,
        raw_crm: &MappedSnapshot,
    ) -> Result<Option<String>, Failure> {
        let Some(code) = target.text(FieldId::Currency) else {
            return Ok(None);
        };
        if row.is_some() && raw_crm.text(FieldId::Currency) == Some(code) {
            return Ok(None);
        }
        Ok((!self.inner.crm.has_currency(code).await?).then(|| code.to_string()))
    }

    /// The patch that takes the referral from what it holds to `target`, after the rules of
    /// the original solution and Partner Center's transition table.
    fn referral_update(
        &self,
        raw_pc: &MappedSnapshot,
        target: &MappedSnapshot,
    ) -> Result<ReferralUpdate, Failure> {
        let map = &self.inner.map;
        // Only a violation the change introduces refuses it: a co-sell referral Microsoft sent
        // without a contact must still take the seller's acceptance or deal value.
        let already = map.check_outgoing(raw_pc, Some(raw_pc));
        let errors: Vec<MappingError> = map
            .check_outgoing(target, Some(raw_pc))
            .into_iter()
            .filter(|e| !already.contains(e))
            .collect();
        if !errors.is_empty() {
            return Err(Failure::Mapping(errors));
        }
        if let (Some(from), Some(to)) = (raw_pc.status(), target.status())
            && from != to
            && let Err(e) = check_transition(
                (from.status.clone(), from.substatus.clone()),
                (to.status.clone(), to.substatus.clone()),
            )
        {
            return Err(Failure::Rule(format!(
                "Partner Center refuses this change: {e}"
            )));
        }
        Ok(map.referral_update(raw_pc, target)?)
    }

    /// Whether an open row's name carries the wrong mark for a pair in sync.
    fn mark_is_stale(&self, row: &CrmRow) -> bool {
        let cfg = self.inner.map.config();
        if !cfg.display_check_mark {
            return false;
        }
        let name_col = match row.kind {
            RecordKind::Opportunity => &cfg.columns.opportunity.name,
            RecordKind::Lead => &cfg.columns.lead.subject,
        };
        row.records
            .primary
            .get(name_col)
            .and_then(Value::as_str)
            .is_some_and(|n| !n.starts_with(cosell_mapping::SUCCESS_MARK))
    }

    /// Writes the CRM side: reopens a closed row that must take field changes, writes the
    /// payload (created by its alternate key when there is no row, or when a lead becomes an
    /// opportunity; otherwise to the row under `If-Match`), then moves the status (closing a
    /// replaced lead, re-closing a reopened row). Returns the record written and its ETag.
    async fn write_crm_side(
        &self,
        w: CrmWrite<'_>,
        progress: (&mut Link, &mut Sides),
    ) -> Result<(RecordKind, String, Option<String>), Failure> {
        let inner = &self.inner;
        let map = &inner.map;
        let (link, sides) = progress;
        let CrmWrite {
            row,
            payload,
            lead_to_close,
            write_fields,
            identity_only,
            outcome,
            message,
            crm_view,
            row_assumed,
        } = w;
        let open = |kind| self.open_status(kind);
        let same_row = row.filter(|r| r.kind == payload.kind);
        let mut from = same_row.and_then(current_status);
        let mut etag = same_row.and_then(|r| r.etag.clone());
        let mut id = same_row.map(|r| r.id.clone());
        if write_fields {
            // A closed row is read-only: reopen, write, close again (the status table allows it).
            if let (Some(r), Some(st)) = (same_row, from)
                && !st.is_open()
            {
                let reopen = open(r.kind);
                inner
                    .crm
                    .apply_status(
                        r.kind,
                        &r.id,
                        &StatusStep::SetState {
                            kind: r.kind,
                            statecode: reopen.statecode,
                            statuscode: reopen.statuscode,
                        },
                    )
                    .await?;
                from = Some(reopen);
                etag = None;
                self.record_crm(link, sides, reopen, None).await?;
            }
            let basis = match same_row {
                Some(r) => &r.records.primary,
                None => &payload.record,
            };
            let mut extra = map.outcome_columns(payload.kind, basis, outcome, message, now());
            // The payload carries the name with its mark already.
            extra.retain(|k, _| !payload.record.contains_key(k));
            if row_assumed && let Some(audit) = self.audit_column(payload.kind) {
                // The audit column is a running log: rewritten without its earlier lines it
                // would lose them. An unread row keeps it (the store's audit trail has the
                // entry).
                extra.remove(audit);
            }
            let target = match &id {
                Some(id) => WriteTarget::Row {
                    id,
                    etag: etag.as_deref(),
                },
                None => WriteTarget::ByKey,
            };
            match (target, identity_only) {
                // Only the referral's identity is missing (a record a referral was created
                // from): write those columns alone, not the whole record with its lookups.
                (
                    WriteTarget::Row {
                        id: row_id,
                        etag: guard,
                    },
                    true,
                ) => {
                    let mut columns = self.identity_columns(payload);
                    columns.extend(map.outcome_columns(
                        payload.kind,
                        basis,
                        outcome,
                        message,
                        now(),
                    ));
                    etag = inner
                        .crm
                        .update_columns(payload.kind, row_id, &columns, guard)
                        .await?;
                }
                (target, _) => {
                    let trimmed = self.trimmed_payload(same_row, payload, crm_view);
                    let nothing_to_send = extra.is_empty()
                        && trimmed.as_ref().is_some_and(|t| {
                            t.record.is_empty()
                                && t.binds.is_empty()
                                && t.account.is_none()
                                && t.contacts.is_empty()
                                && t.solutions.is_empty()
                                && t.solutions_removed.is_empty()
                        });
                    // The row holds every column already (a difference it cannot represent,
                    // such as a field a lead has no column for): no request.
                    if !nothing_to_send {
                        let sent = trimmed.as_ref().unwrap_or(payload);
                        // A write that resolves an account (finds it, or creates it) goes one
                        // customer at a time (after the pair's lock, as every create takes
                        // them), in the store too, so across workers: two referrals of a new
                        // customer written side by side would each find no account and make
                        // one. Every path that creates goes through here, a referral's first
                        // create as much as the retry of a plan a lost `$batch` left (which
                        // once took no lock and made the account twice).
                        let customer = backfill::customer_key(sent);
                        let _customer = match &customer {
                            Some(key) if !inner.known_customers.contains(key) => {
                                Some(self.lease_keys(vec![key.clone()]).await?)
                            }
                            _ => None,
                        };
                        let written = inner.crm.write(sent, &extra, target).await?;
                        inner.known_customers.learn(customer);
                        etag = written.etag;
                        id = Some(written.id);
                    }
                }
            }
        }
        let id = id.ok_or_else(|| Failure::Rule("no CRM record to write".into()))?;
        // Status: from where the written row stands (a new opportunity starts open; a replaced
        // lead is closed by QualifyLead, which never creates a second opportunity).
        let from = match (same_row, lead_to_close) {
            (Some(_), _) => from,
            (None, Some(lead)) => current_status(lead),
            (None, None) => None,
        };
        let steps = map.config().status.steps(from, payload.status);
        // Only the status moves: the outcome (mark and audit text, saying what moved it) is
        // written first, while the row is open and writable.
        if !write_fields
            && !steps.is_empty()
            && let Some(r) = same_row
            && from.is_some_and(|s| s.is_open())
        {
            let columns = map.outcome_columns(
                r.kind,
                &r.records.primary,
                SyncOutcome::Success,
                message,
                now(),
            );
            if !columns.is_empty() {
                etag = inner
                    .crm
                    .update_columns(r.kind, &r.id, &columns, etag.as_deref())
                    .await?;
            }
        }
        let close_lead_after = same_row.is_some() && lead_to_close.is_some();
        let ran = !steps.is_empty() || close_lead_after;
        // Where the written row stands now, recorded whenever more steps follow: if one of them
        // fails, the next pass must see the row's interim state as our pending work, never as
        // the seller reopening, qualifying or closing the deal.
        let mut at = from
            .filter(|s| s.kind == payload.kind)
            .unwrap_or_else(|| open(payload.kind));
        if write_fields && ran {
            self.record_crm(link, sides, at, Some(crm_view)).await?;
        }
        let last = steps.len();
        for (i, step) in steps.into_iter().enumerate() {
            let lead_step = matches!(step, StatusStep::QualifyLead { .. })
                || matches!(
                    step,
                    StatusStep::SetState {
                        kind: RecordKind::Lead,
                        ..
                    }
                );
            match lead_to_close {
                Some(lead) if lead_step => {
                    inner
                        .crm
                        .apply_status(RecordKind::Lead, &lead.id, &step)
                        .await?;
                    if matches!(step, StatusStep::QualifyLead { .. }) {
                        at = open(RecordKind::Opportunity);
                    }
                }
                _ if lead_step && payload.kind == RecordKind::Opportunity => {
                    // The lead is already closed (qualified by the seller).
                }
                _ => {
                    inner.crm.apply_status(payload.kind, &id, &step).await?;
                    at = match step {
                        StatusStep::QualifyLead { .. } => open(RecordKind::Opportunity),
                        StatusStep::WinOpportunity { status } => CrmStatus {
                            kind: RecordKind::Opportunity,
                            statecode: cosell_mapping::STATE_WON,
                            statuscode: status,
                        },
                        StatusStep::LoseOpportunity { status } => CrmStatus {
                            kind: RecordKind::Opportunity,
                            statecode: cosell_mapping::STATE_LOST,
                            statuscode: status,
                        },
                        StatusStep::SetState {
                            kind,
                            statecode,
                            statuscode,
                        } => CrmStatus {
                            kind,
                            statecode,
                            statuscode,
                        },
                    };
                }
            }
            if i + 1 < last || close_lead_after {
                self.record_crm(link, sides, at, None).await?;
            }
        }
        if close_lead_after && let Some(lead) = lead_to_close {
            // The opportunity existed already (a seller's QualifyLead, or an earlier attempt):
            // close the lead it replaces.
            inner
                .crm
                .apply_status(
                    RecordKind::Lead,
                    &lead.id,
                    &StatusStep::QualifyLead {
                        status: map.config().status.lead.qualified,
                    },
                )
                .await?;
        }
        if ran || etag.is_none() {
            etag = inner
                .crm
                .read(payload.kind, &id)
                .await?
                .and_then(|r| r.etag);
        }
        Ok((payload.kind, id, etag))
    }

    /// What an update of an existing row needs of `payload`, when that is less: only the
    /// columns the row does not already hold (and no currency lookup for an unchanged
    /// currency); for an opportunity, the solutions to unlink, no account or contacts to
    /// resolve when the row already has the customer the plan names, no solutions to link
    /// when the row has them all. `None`: write it whole.
    fn trimmed_payload(
        &self,
        row: Option<&CrmRow>,
        payload: &CrmPayload,
        planned: &MappedSnapshot,
    ) -> Option<CrmPayload> {
        let row = row.filter(|r| r.kind == payload.kind)?;
        let read = self.inner.map.snapshot_from_crm(&row.records, None).ok()?;
        let same = |fields: &[FieldId]| fields.iter().all(|f| read.get(*f) == planned.get(*f));
        let mut trimmed = payload.clone();
        // Changed columns only: a column the row already holds is not sent again (a value
        // written in another form, say 1.0 for 1, is merely sent again).
        trimmed
            .record
            .retain(|column, value| row.records.primary.get(column) != Some(value));
        if same(&[FieldId::Currency]) {
            trimmed
                .binds
                .retain(|b| !matches!(b.target, cosell_mapping::BindTarget::Currency { .. }));
        }
        if payload.kind != RecordKind::Opportunity {
            return (trimmed != *payload).then_some(trimmed);
        }
        trimmed.solutions_removed = self.solutions_removed(Some(row), payload);
        // The customer is resolved (found or created) only when it changed, or the row lacks
        // the account or a contact it should have.
        let customer = [
            FieldId::CustomerName,
            FieldId::AddressLine1,
            FieldId::AddressLine2,
            FieldId::City,
            FieldId::State,
            FieldId::PostalCode,
            FieldId::Country,
            FieldId::Contacts,
        ];
        let has_customer = row.records.account.is_some()
            && (payload.contacts.is_empty()
                || row.records.contacts.as_ref().is_some_and(|c| !c.is_empty()));
        if has_customer && same(&customer) {
            trimmed.account = None;
            trimmed.contacts.clear();
            trimmed.binds.retain(|b| {
                !matches!(
                    b.target,
                    cosell_mapping::BindTarget::Account
                        | cosell_mapping::BindTarget::Contact { .. }
                )
            });
        }
        if trimmed.solutions_removed.is_empty() && same(&[FieldId::Solutions]) {
            trimmed.solutions.clear();
        }
        (trimmed != *payload).then_some(trimmed)
    }

    /// The CRM row of a pair in sync as the pair last wrote or read it, without reading it: its
    /// known snapshot mapped back to columns, at its recorded version. `None` when the pair's
    /// state cannot vouch for the row (not in sync, a write under way, no version, or a
    /// snapshot the mapping does not give back exactly).
    fn known_crm_row(&self, link: &Link, sides: &Sides) -> Option<CrmRow> {
        let map = &self.inner.map;
        if !link.in_sync || link.crm_status_in_transit {
            return None;
        }
        let kind = kind_of(&link.crm_entity)?;
        let id = link.crm_id.clone()?;
        let etag = link.crm_etag.clone()?;
        let identity = ReferralIdentity {
            referral_id: link.referral_id.clone(),
            engagement_id: link.engagement_id.clone(),
        };
        let payload = map.to_crm(&sides.crm, &identity, Some(kind)).ok()?;
        if payload.kind != kind {
            return None;
        }
        let mut records = map.written_records(&payload);
        records.primary.insert(
            payload.key.column.clone(),
            Value::String(payload.key.value.clone()),
        );
        // Read back, it must be what the pair knows, or the assumption would look like an edit.
        if map.snapshot_from_crm(&records, Some(&sides.crm)).ok()? != sides.crm {
            return None;
        }
        Some(CrmRow {
            kind,
            id,
            etag: Some(etag),
            records,
        })
    }

    /// The audit column of a record kind, when the map has one.
    fn audit_column(&self, kind: RecordKind) -> Option<&String> {
        let c = &self.inner.map.config().columns;
        match kind {
            RecordKind::Opportunity => Some(&c.opportunity.audit),
            RecordKind::Lead => c.lead.audit.as_ref(),
        }
    }

    /// The solutions `row` holds that `payload` (the plan) no longer has: the ones the write
    /// unlinks. Read from the row, so a solution linked after the read is never unlinked.
    fn solutions_removed(&self, row: Option<&CrmRow>, payload: &CrmPayload) -> Vec<String> {
        if payload.kind != RecordKind::Opportunity {
            return Vec::new();
        }
        let column = &self.inner.map.config().columns.solution.solution_id;
        row.filter(|r| r.kind == RecordKind::Opportunity)
            .and_then(|r| r.records.solutions.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|s| s.get(column).and_then(Value::as_str))
            .filter(|id| !payload.solutions.iter().any(|p| p.key.value == *id))
            .map(str::to_string)
            .collect()
    }

    /// The identity columns of a payload: what ties the CRM record to its referral.
    fn identity_columns(&self, payload: &CrmPayload) -> serde_json::Map<String, Value> {
        let c = &self.inner.map.config().columns;
        let names: Vec<&String> = match payload.kind {
            RecordKind::Opportunity => vec![
                &c.opportunity.referral_id,
                &c.opportunity.referral_link,
                &c.opportunity.engagement_id,
                &c.opportunity.sync_with_partner_center,
            ],
            RecordKind::Lead => vec![
                &c.lead.referral_id,
                &c.lead.referral_link,
                &c.lead.engagement_id,
                &c.lead.sync_with_partner_center,
            ],
        };
        names
            .into_iter()
            .filter_map(|n| payload.record.get(n).map(|v| (n.clone(), v.clone())))
            .collect()
    }

    /// The open status of a record kind (where a create lands, what a reopen sets).
    fn open_status(&self, kind: RecordKind) -> CrmStatus {
        let codes = &self.inner.map.config().status;
        CrmStatus {
            kind,
            statecode: cosell_mapping::STATE_OPEN,
            statuscode: match kind {
                RecordKind::Lead => codes.lead.open,
                RecordKind::Opportunity => codes.opportunity.open,
            },
        }
    }

    /// Records what the CRM side holds part-way through its writes: `fields` once written, and
    /// the status the row stands at.
    async fn record_crm(
        &self,
        link: &mut Link,
        sides: &mut Sides,
        status: CrmStatus,
        fields: Option<&MappedSnapshot>,
    ) -> Result<(), Failure> {
        if let Some(f) = fields {
            sides.crm = f.clone();
        }
        let state = self
            .inner
            .map
            .config()
            .status
            .referral_state(status, sides.target.status())?;
        sides.crm.set(FieldId::Status, FieldValue::Status(state));
        sides.store_in(link);
        link.crm_etag = None;
        self.commit(Commit::new().link(link.clone())).await
    }

    // ------------------------------------------------------------------ CRM side

    /// Syncs one CRM row now: reconciles its link, or creates its referral when sync is on.
    #[tracing::instrument(skip(self), fields(entity = entity_name(kind), crm_id = %id))]
    pub async fn sync_crm_record(
        &self,
        kind: RecordKind,
        id: &str,
    ) -> Result<Outcome, EngineError> {
        // Boxed: a caller's future stays small (the reconcile future is several KB).
        if let Some(link) = self.inner.store.link_by_crm(entity_name(kind), id).await? {
            return Box::pin(self.reconcile_link(link)).await;
        }
        let guard = self.lock_pair(Some(id), None).await?;
        if let Some(link) = self.inner.store.link_by_crm(entity_name(kind), id).await? {
            drop(guard);
            return Box::pin(self.reconcile_link(link)).await;
        }
        match Box::pin(self.create_referral_from_crm(kind, id)).await {
            Ok(Some(o)) => Ok(o),
            Ok(None) => {
                // The row belongs to a pair linked elsewhere (the opportunity a seller's
                // QualifyLead made of a linked lead): that pair takes it over.
                drop(guard);
                let referral_id = match self.inner.crm.read(kind, id).await {
                    Ok(Some(row)) => self.inner.map.referral_id_of(kind, &row.records.primary),
                    _ => None,
                };
                match referral_id {
                    Some(r) => match self.inner.store.link_by_referral(&r).await? {
                        Some(link) => Box::pin(self.reconcile_link(link)).await,
                        None => Ok(Outcome::new(Action::Skipped, "link removed meanwhile")),
                    },
                    None => Ok(Outcome::new(Action::Skipped, "CRM record not found")),
                }
            }
            Err(Failure::Store(e)) => Err(e.into()),
            Err(f) => {
                // Once the record is linked (the referral was created and adopted, then a
                // later step failed), the failure belongs to the pair.
                match self.inner.store.link_by_crm(entity_name(kind), id).await? {
                    Some(link) => {
                        let crm = Some((kind, id.to_string()));
                        self.fail_referral(&link.referral_id, crm, f).await
                    }
                    None => self.fail_crm(kind, id, f).await,
                }
            }
        }
    }

    /// Creates the referral of a CRM record with sync on (or adopts the one it names).
    /// `None`: the record names a referral whose pair is linked to another record.
    async fn create_referral_from_crm(
        &self,
        kind: RecordKind,
        id: &str,
    ) -> Result<Option<Outcome>, Failure> {
        let inner = &self.inner;
        let map = &inner.map;
        let Some(row) = inner.crm.read(kind, id).await? else {
            return Ok(Some(
                Outcome::new(Action::Skipped, "CRM record not found").crm(kind, id),
            ));
        };
        if let Some(referral_id) = map.referral_id_of(kind, &row.records.primary)
            && inner.store.link_by_referral(&referral_id).await?.is_some()
        {
            return Ok(None);
        }
        if !map.sync_enabled(kind, &row.records.primary) {
            return Ok(Some(
                Outcome::new(Action::Skipped, "Sync with Partner Center is off").crm(kind, id),
            ));
        }
        if kind == RecordKind::Lead {
            // Leads only come from Partner Center; a lead with sync on and no link is not ours.
            return Ok(Some(
                Outcome::new(Action::Skipped, "leads are created by Partner Center only")
                    .crm(kind, id),
            ));
        }
        let pending = self.intent_of(kind, id).await?;
        if let Some(referral_id) = map.referral_id_of(kind, &row.records.primary) {
            // It names a referral but has no link (state lost or restored): adopt the pair.
            let referral = inner.pc.get_referral(&referral_id).await?;
            return self
                .adopt(referral, row, pending.as_ref(), Origin::Found)
                .await
                .map(Some);
        }
        // An earlier attempt may have created the referral before we lost track of it.
        if let Some(intent) = &pending {
            let since = intent.recorded_at - chrono::Duration::minutes(10);
            if let Some(found) = inner
                .pc
                .find_by_external_reference(&intent.external_reference_id, since)
                .await?
            {
                return self
                    .adopt(found, row, Some(intent), Origin::Found)
                    .await
                    .map(Some);
            }
        }
        let snapshot = map.snapshot_from_crm(&row.records, None)?;
        let errors = map.check_outgoing(&snapshot, None);
        if !errors.is_empty() {
            return Err(Failure::Mapping(errors));
        }
        let body = map.referral_create_from_row(&snapshot, id, &row.records.primary)?;
        if inner.config.dry_run {
            let writes = crm_writes(&MappedSnapshot::new(), &snapshot)
                .into_iter()
                .map(|w| PlannedWrite {
                    side: Side::PartnerCenter,
                    ..w
                })
                .collect();
            return Ok(Some(
                Outcome::new(Action::Planned, "would create a referral")
                    .crm(kind, id)
                    .planning(writes),
            ));
        }
        let intent = CreateIntent {
            crm_entity: entity_name(kind).to_string(),
            crm_id: id.to_string(),
            external_reference_id: id.to_string(),
            recorded_at: pending.as_ref().map(|i| i.recorded_at).unwrap_or_else(now),
            attempts: pending.as_ref().map(|i| i.attempts).unwrap_or(0) + 1,
            target: Some(encode(&snapshot)),
            crm_etag: row.etag.clone(),
        };
        let recorded_at = intent.recorded_at;
        // Durable before the POST: this is what makes the create recoverable.
        self.commit(Commit::new().intent(intent.clone())).await?;
        let (created, origin) = match inner.pc.create_referral(&body).await {
            Ok(r) => (r, Origin::Created),
            Err(e) if e.kind() == RemoteErrorKind::UnknownOutcome => {
                tracing::warn!(error = %e, "create outcome unknown; looking the referral up");
                let since = recorded_at - chrono::Duration::minutes(10);
                match inner.pc.find_by_external_reference(id, since).await? {
                    Some(found) => (found, Origin::Found),
                    // Not there: the intent stays, and the next pass tries again.
                    None => return Err(Failure::Remote(e)),
                }
            }
            Err(e) => {
                if !e.is_retryable() {
                    self.commit(Commit::new().resolve_intent(entity_name(kind), id))
                        .await?;
                }
                return Err(Failure::Remote(e));
            }
        };
        self.count_synced(Direction::ToPartnerCenter);
        self.adopt(created, row, Some(&intent), origin)
            .await
            .map(Some)
    }

    // ------------------------------------------------------------------ failures

    async fn record_failure(
        &self,
        key: String,
        direction: Direction,
        referral_id: Option<&str>,
        crm: Option<(RecordKind, String)>,
        failure: &Failure,
        unsync: Option<Link>,
    ) -> Result<Outcome, EngineError> {
        let inner = &self.inner;
        let message = failure.to_string();
        let mut outcome = Outcome::new(Action::Failed, &message);
        if let Some(r) = referral_id {
            outcome = outcome.referral(r);
        }
        if let Some((k, id)) = &crm {
            outcome = outcome.crm(*k, id);
        }
        if inner.config.dry_run {
            inner.stats.failures.fetch_add(1, Ordering::Relaxed);
            return Ok(outcome);
        }
        let previous = inner.store.dead_letter(&key).await?;
        let repeated = previous.as_ref().is_some_and(|d| d.error == message);
        // The same error again (the record is unchanged in substance) is not a new failure.
        if !repeated {
            inner.stats.failures.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("cosell_sync_failures_total", "direction" => direction.as_str())
                .increment(1);
            tracing::warn!(%key, error = %message, "sync failed");
        }
        // Mark the CRM row (✖ and the error in the audit column), once per distinct error: the
        // mark is itself a change that comes back through the feed. A record written in part
        // may carry it already.
        let marked = matches!(failure, Failure::Partial { marked: true, .. });
        if let Some((kind, id)) = &crm
            && !repeated
            && !marked
            && let Ok(Some(row)) = inner.crm.read(*kind, id).await
            && current_status(&row).is_none_or(|s| s.is_open())
        {
            let columns = inner.map.outcome_columns(
                *kind,
                &row.records.primary,
                SyncOutcome::Failure,
                &message,
                now(),
            );
            if let Err(e) = inner.crm.update_columns(*kind, id, &columns, None).await {
                tracing::warn!(error = %e, "could not write the failure to the CRM record");
            }
        }
        let at = now();
        let mut entry = AuditEntry::new(direction, AuditOutcome::Failed, &message);
        if let Some(r) = referral_id {
            entry = entry.referral(r);
        }
        if let Some((k, id)) = &crm {
            entry = entry.crm(entity_name(*k), id);
        }
        let letter = DeadLetter {
            key,
            direction,
            error: message,
            attempts: previous.as_ref().map(|d| d.attempts).unwrap_or(0) + 1,
            first_failed_at: previous.map(|d| d.first_failed_at).unwrap_or(at),
            last_failed_at: at,
        };
        let mut commit = Commit::new().dead_letter(letter);
        if let Some(link) = unsync {
            commit = commit.link(link);
        }
        if !repeated {
            commit = commit.audit(entry);
        }
        inner.store.commit(commit).await?;
        Ok(outcome)
    }

    async fn fail_referral(
        &self,
        referral_id: &str,
        crm: Option<(RecordKind, String)>,
        failure: Failure,
    ) -> Result<Outcome, EngineError> {
        self.fail_referral_marking(referral_id, crm, failure, false)
            .await
    }

    /// [`fail_referral`](Self::fail_referral) for a pass that holds the pair's lock: a pair
    /// in sync is no longer. The failed pass verified nothing, and the change it was given (a
    /// CRM row's, from a feed that has moved on) may be known to no state: the next pass must
    /// read both sides, never take one from the state or stop at an unchanged eTag (an
    /// assumed CRM row with nothing to write there would clear the letter and lose the edit).
    async fn fail_pair(
        &self,
        referral_id: &str,
        crm: Option<(RecordKind, String)>,
        failure: Failure,
    ) -> Result<Outcome, EngineError> {
        self.fail_referral_marking(referral_id, crm, failure, true)
            .await
    }

    /// Records a referral's failure; with `unsync_pair`, a linked pair in sync is marked out
    /// of sync in the same commit.
    async fn fail_referral_marking(
        &self,
        referral_id: &str,
        crm: Option<(RecordKind, String)>,
        failure: Failure,
        unsync_pair: bool,
    ) -> Result<Outcome, EngineError> {
        let link = if crm.is_none() || unsync_pair {
            self.inner.store.link_by_referral(referral_id).await?
        } else {
            None
        };
        let crm = crm.or_else(|| {
            link.as_ref()
                .and_then(|l| kind_of(&l.crm_entity).zip(l.crm_id.clone()))
        });
        let unsync = link.filter(|l| unsync_pair && l.in_sync).map(|mut l| {
            l.in_sync = false;
            l
        });
        self.record_failure(
            format!("referral:{referral_id}"),
            Direction::ToCrm,
            Some(referral_id),
            crm,
            &failure,
            unsync,
        )
        .await
    }

    async fn fail_crm(
        &self,
        kind: RecordKind,
        id: &str,
        failure: Failure,
    ) -> Result<Outcome, EngineError> {
        self.record_failure(
            format!("{}:{id}", entity_name(kind)),
            Direction::ToPartnerCenter,
            None,
            Some((kind, id.to_string())),
            &failure,
            None,
        )
        .await
    }

    // ------------------------------------------------------------------ passes

    async fn run_parallel<F, Fut>(&self, items: Vec<F>) -> Result<Report, EngineError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Outcome, EngineError>>,
    {
        let results: Vec<Result<Outcome, EngineError>> =
            stream::iter(items.into_iter().map(|f| f()))
                .buffer_unordered(self.inner.config.parallelism.max(1))
                .collect()
                .await;
        let mut report = Report::default();
        for r in results {
            report.push(r?);
        }
        Ok(report)
    }

    /// Lists referrals updated since the checkpoint (minus the overlap), oldest change first,
    /// a page at a time: applies the page's referrals in groups, up to
    /// [`EngineConfig::backfill_lanes`] groups side by side, and moves the checkpoint to a
    /// page's newest change once it and every page before it are written. The pass that heals
    /// lost webhooks; it holds a few pages in memory, and a pass cut off (a crash, a failure)
    /// resumes after the last finished page.
    #[tracing::instrument(skip(self))]
    pub async fn reconcile(&self) -> Result<Report, EngineError> {
        let Some(_pass) = self.lease_pass(RECONCILE_CHECKPOINT).await? else {
            return Ok(Report::default());
        };
        let inner = &self.inner;
        let checkpoint = inner
            .store
            .checkpoint(RECONCILE_CHECKPOINT)
            .await?
            .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| t.with_timezone(&Utc));
        let since = match checkpoint {
            Some(t) => t - inner.config.reconcile_overlap,
            None => now() - inner.config.initial_lookback,
        };
        inner.reconcile_done.store(0, Ordering::Relaxed);
        inner.reconcile_listed.store(0, Ordering::Relaxed);
        inner.reconcile_total.store(0, Ordering::Relaxed);
        if inner.config.share_reconcile && !inner.config.dry_run {
            let result = self.reconcile_shared(since, checkpoint).await;
            inner.reconcile_total.store(0, Ordering::Relaxed);
            return result;
        }
        let result = async {
            let mut report = Report::default();
            let pages = inner.pc.referral_pages_updated_since(since);
            let lanes = inner.config.backfill_lanes.max(1);
            let size = backfill::DEFAULT_BACKFILL_GROUP;
            // Pages (100 referrals each) are taken together until a lane's worth of groups is
            // at hand, then split by customer: the groups written side by side share no
            // customer, so none waits on another's customer lock (page by page, groups of
            // adjacent pages creating one new customer held each other up: 576 ms of a 1.7 s
            // group). The chunk's last group carries its newest change, where the checkpoint
            // may move once that group (and every one before it) is written.
            let chunks = backfill::Chunking::new(
                pages,
                (&inner.reconcile_listed, &inner.reconcile_total),
                lanes * size,
            );
            let groups = chunks
                .map_ok(|(referrals, newest)| {
                    let split = referrals.len().div_ceil(size);
                    let groups = backfill::by_customer(referrals, split, size);
                    let last = groups.len().saturating_sub(1);
                    let tagged: Vec<_> = groups
                        .into_iter()
                        .enumerate()
                        .map(|(i, g)| Ok((g, if i == last { newest } else { None })))
                        .collect();
                    stream::iter(tagged)
                })
                .try_flatten();
            // New referrals are created in the CRM a group at a time (a first start over a
            // year of history is a backfill), several groups side by side, the rest one by
            // one. The next pages are listed while groups are written, and a group starts as
            // soon as a lane is free: groups finish in any order, and the checkpoint moves past
            // a group once every group listed before it has finished too (`GroupProgress`). A
            // page that fails to list waits for the groups before it, so they finish (and move
            // the checkpoint) before the pass ends.
            //
            // The checkpoint is written inside the groups' futures: the loop below must await
            // nothing but the stream, or the groups in flight stop being polled, one of them
            // perhaps inside a store transaction that the checkpoint's commit would then wait
            // for. Commits of it are taken one at a time, and only forward.
            let progress = backfill::GroupProgress::default();
            let progress = &progress;
            let newest = tokio::sync::Mutex::new(checkpoint);
            let newest = &newest;
            let written = groups
                .enumerate()
                .map(|(index, item): (usize, backfill::ListedChunk)| {
                    async move {
                        let (group, page_newest) = match item {
                            Ok(listed) => listed,
                            Err(e) => {
                                progress.before(index).await;
                                return Err(e);
                            }
                        };
                        let count = group.len() as u64;
                        let outcomes = self.apply_referrals(group).await?;
                        // Every referral of the groups up to this one is now linked,
                        // unchanged or dead-lettered (durable), and they came oldest change
                        // first: the checkpoint may pass them. One changed meanwhile lists
                        // again after the overlap. A group that failed never finishes, so
                        // the checkpoint stops before it.
                        if let Some(t) = progress.finish(index, page_newest) {
                            let mut at = newest.lock().await;
                            if at.is_none_or(|n| t > n) {
                                self.set_reconcile_checkpoint(t).await?;
                                *at = Some(t);
                            }
                        }
                        Ok::<_, EngineError>((outcomes, count))
                    }
                })
                .buffer_unordered(lanes);
            let mut written = std::pin::pin!(written);
            while let Some(item) = written.next().await {
                let (outcomes, count) = item?;
                inner.reconcile_done.fetch_add(count, Ordering::Relaxed);
                report.extend(outcomes);
            }
            Ok(report)
        }
        .await;
        inner.reconcile_total.store(0, Ordering::Relaxed);
        result
    }

    /// Records that every referral updated up to `until` has been synced, so the next
    /// [`reconcile`](Self::reconcile) lists from there (minus the overlap). For a backfill that
    /// applied referrals itself; moving it forward past unsynced referrals would skip them, so
    /// call it only after the work is done. Ignored in a dry run.
    pub async fn set_reconcile_checkpoint(&self, until: DateTime<Utc>) -> Result<(), EngineError> {
        if self.inner.config.dry_run {
            return Ok(());
        }
        self.inner
            .store
            .commit(Commit::new().checkpoint(RECONCILE_CHECKPOINT, until.to_rfc3339()))
            .await?;
        Ok(())
    }

    /// Reads the CRM change feed of opportunities and leads, syncs every changed row, then moves
    /// the cursors; then the feed of the solution link table, syncing every opportunity that
    /// gained or lost a solution. An expired cursor falls back to a full read.
    #[tracing::instrument(skip(self))]
    pub async fn pull_crm_changes(&self) -> Result<Report, EngineError> {
        let mut report = Report::default();
        for kind in [RecordKind::Opportunity, RecordKind::Lead] {
            report.extend(self.pull_crm_changes_of(kind).await?);
        }
        report.extend(self.pull_solution_link_changes().await?);
        Ok(report)
    }

    /// The solution link feed. A link row names its opportunity only while it exists (a
    /// deletion is reported by id alone), so every link row seen is remembered in the store
    /// with its opportunity, and a deletion is traced back through it. The first read only
    /// learns the rows: the opportunity feed's own first read syncs every opportunity.
    async fn pull_solution_link_changes(&self) -> Result<Report, EngineError> {
        let Some(_pass) = self.lease_pass(SOLUTION_LINKS_CHECKPOINT).await? else {
            return Ok(Report::default());
        };
        let inner = &self.inner;
        let mut cursor = inner.store.checkpoint(SOLUTION_LINKS_CHECKPOINT).await?;
        let mut report = Report::default();
        let mut restarted = false;
        // A page at a time, as the row feeds.
        loop {
            let changes = match inner.crm.solution_link_changes(cursor.as_deref()).await {
                Ok(Some(c)) => c,
                Ok(None) => return Ok(report),
                Err(e) if cursor.is_some() && !restarted && inner.crm.is_cursor_expired(&e) => {
                    tracing::warn!("solution link cursor expired; reading every link again");
                    restarted = true;
                    match inner.crm.solution_link_changes(None).await? {
                        Some(c) => c,
                        None => return Ok(report),
                    }
                }
                Err(e) => return Err(e.into()),
            };
            // An initial read only learns the rows, except the one read after an expired
            // cursor: deletions since the cursor are lost with it, so the opportunities of
            // the rows it lists are synced too.
            let learn_only = changes.initial && !restarted;
            let more = changes.more;
            let next = changes.cursor.clone();
            report.extend(
                self.apply_solution_link_changes(changes, learn_only)
                    .await?,
            );
            if !more {
                break;
            }
            cursor = Some(next);
        }
        Ok(report)
    }

    /// Applies one page of the solution link feed, then persists its cursor.
    async fn apply_solution_link_changes(
        &self,
        changes: SolutionLinkChanges,
        learn_only: bool,
    ) -> Result<Report, EngineError> {
        let inner = &self.inner;
        let link_entity = inner.map.config().columns.solution.link_entity.clone();
        let opportunity = entity_name(RecordKind::Opportunity);
        let mut commit = Commit::new();
        // This page's rows, so a row linked and deleted within one page is traced too.
        let mut seen: HashMap<String, String> = HashMap::new();
        // In the order first touched, each once (a set beside the list: a first read over many
        // links touched thousands, and `Vec::contains` made that quadratic).
        let mut parents: Vec<String> = Vec::new();
        let mut touched: HashSet<String> = HashSet::new();
        let mut touch = |parents: &mut Vec<String>, id: String| {
            if touched.insert(id.clone()) {
                parents.push(id);
            }
        };
        for change in changes.changes {
            let (link_id, now_parent, linked) = match change {
                SolutionLinkChange::Linked {
                    link_id,
                    opportunity_id,
                    solution_id,
                    active,
                } => (link_id, opportunity_id, Some((solution_id, active))),
                SolutionLinkChange::Unlinked { link_id } => (link_id, None, None),
            };
            let before = match seen.get(&link_id) {
                Some(p) => Some(p.clone()),
                None => inner
                    .store
                    .crm_child(&link_entity, &link_id)
                    .await?
                    .map(|c| c.parent_id),
            };
            let seen_before = before.is_some();
            // The opportunity the row left (deleted, or moved to another one) lost a solution.
            if let Some(before) = before
                && now_parent.as_deref() != Some(before.as_str())
            {
                touch(&mut parents, before);
            }
            match now_parent {
                Some(parent) => {
                    // A row seen before changed: synced. A row seen for the first time on a
                    // linked opportunity is synced unless the pair already holds its solution
                    // on both sides (our own link coming back, or a solution linked twice,
                    // which counts once): a link row leaves the opportunity's version as it
                    // was, so the opportunity feed takes a seller's new solution for our echo
                    // and only this feed brings it. The first read skips the rows of
                    // opportunities not linked yet: the opportunity feed syncs those anyway.
                    let sync = if seen_before {
                        true
                    } else {
                        match inner.store.link_by_crm(opportunity, &parent).await? {
                            Some(pair) => !linked.as_ref().is_some_and(|(solution, active)| {
                                *active && solution.as_deref().is_some_and(|s| pair_holds(&pair, s))
                            }),
                            None => !learn_only,
                        }
                    };
                    if sync {
                        touch(&mut parents, parent.clone());
                    }
                    seen.insert(link_id.clone(), parent.clone());
                    commit = commit.crm_child(CrmChild {
                        entity: link_entity.clone(),
                        id: link_id,
                        parent_entity: opportunity.to_string(),
                        parent_id: parent,
                    });
                }
                None => {
                    seen.remove(&link_id);
                    commit = commit.forget_crm_child(link_entity.clone(), link_id);
                }
            }
        }
        let report = self
            .run_parallel(
                parents
                    .into_iter()
                    .map(|id| {
                        move || async move {
                            Box::pin(self.sync_crm_record(RecordKind::Opportunity, &id)).await
                        }
                    })
                    .collect(),
            )
            .await?;
        if !inner.config.dry_run {
            inner
                .store
                .commit(commit.checkpoint(SOLUTION_LINKS_CHECKPOINT, changes.cursor))
                .await?;
        }
        Ok(report)
    }

    async fn pull_crm_changes_of(&self, kind: RecordKind) -> Result<Report, EngineError> {
        let inner = &self.inner;
        let name = crm_checkpoint(kind);
        let Some(_pass) = self.lease_pass(&name).await? else {
            return Ok(Report::default());
        };
        let mut cursor = inner.store.checkpoint(&name).await?;
        let mut report = Report::default();
        let mut restarted = false;
        // A page at a time: each is applied and its cursor persisted before the next is read,
        // so a first read over every row holds one page, and a restart goes on from the page
        // it stopped at.
        loop {
            let changes = match inner.crm.changes(kind, cursor.as_deref()).await {
                Ok(c) => c,
                Err(e) if cursor.is_some() && !restarted && inner.crm.is_cursor_expired(&e) => {
                    tracing::warn!("CRM change cursor expired; reading everything again");
                    restarted = true;
                    inner.crm.changes(kind, None).await?
                }
                Err(e) => return Err(e.into()),
            };
            let more = changes.more;
            let next = changes.cursor.clone();
            report.extend(self.apply_crm_changes(kind, &name, changes).await?);
            if !more {
                break;
            }
            cursor = Some(next);
        }
        Ok(report)
    }

    /// Applies one page of a CRM change feed, then persists its cursor.
    async fn apply_crm_changes(
        &self,
        kind: RecordKind,
        name: &str,
        changes: CrmChanges,
    ) -> Result<Report, EngineError> {
        let inner = &self.inner;
        // Several changes of one row in a page collapse to one sync (a set beside the list:
        // a page holds up to 5,000 rows, and `Vec::contains` made that quadratic).
        let mut ids: Vec<String> = Vec::new();
        let mut queued: HashSet<String> = HashSet::new();
        let mut deleted = Vec::new();
        let mut echoes = Vec::new();
        // The links of the page's rows, 500 rows at a time: a store read per row took 86 s
        // of a first read over 100,000 pairs, and a whole page of 5,000 links with their
        // snapshots at once took some 60 MB.
        let mut rows = changes.changes.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<CrmChange> = rows.by_ref().take(LINK_LOOKUP_CHUNK).collect();
            let upserted: Vec<String> = chunk
                .iter()
                .filter_map(|c| match c {
                    CrmChange::Upserted { id, .. } => Some(id.clone()),
                    CrmChange::Deleted { .. } => None,
                })
                .collect();
            let links: HashMap<String, Link> = inner
                .store
                .links_by_crm_ids(entity_name(kind), &upserted)
                .await?
                .into_iter()
                .filter_map(|l| Some((l.crm_id.clone()?, l)))
                .collect();
            for change in chunk {
                match change {
                    CrmChange::Upserted { id, row, etag, .. } => {
                        let link = links.get(&id);
                        // Our own write coming back: the row is at the version the pair
                        // recorded after writing (or reading) it, so it holds what the pair
                        // knows. No read.
                        if let Some(l) = link
                            && l.in_sync
                            && !l.crm_status_in_transit
                            && etag.is_some()
                            && l.crm_etag == etag
                        {
                            echoes.push((l.referral_id.clone(), id));
                            continue;
                        }
                        if (link.is_some() || inner.map.sync_enabled(kind, &row))
                            && queued.insert(id.clone())
                        {
                            ids.push(id);
                        }
                    }
                    CrmChange::Deleted { id, .. } => deleted.push(id),
                }
            }
        }
        // A row that also changed since (a later entry of the page) is synced instead.
        echoes.retain(|(_, id)| !queued.contains(id));
        let mut report = self
            .run_parallel(
                ids.into_iter()
                    .map(
                        |id| move || async move { Box::pin(self.sync_crm_record(kind, &id)).await },
                    )
                    .collect(),
            )
            .await?;
        for id in deleted {
            report.push(
                Outcome::new(
                    Action::Skipped,
                    "deleted in the CRM; the referral is left as is",
                )
                .crm(kind, &id),
            );
        }
        for (referral_id, id) in echoes {
            inner.stats.echoes.fetch_add(1, Ordering::Relaxed);
            report.push(
                Outcome::new(Action::Echo, "CRM change is the version last synced")
                    .referral(&referral_id)
                    .crm(kind, &id),
            );
        }
        if !inner.config.dry_run {
            inner
                .store
                .commit(Commit::new().checkpoint(name, changes.cursor))
                .await?;
        }
        Ok(report)
    }

    /// Processes the webhook inbox: coalesces hints per referral, syncs each referral once
    /// (re-reading it: a callback is only a hint), and acknowledges the hints.
    #[tracing::instrument(skip(self))]
    pub async fn drain_inbox(&self) -> Result<Report, EngineError> {
        let mut report = Report::default();
        let mut taken = 0;
        // Batch after batch, each claimed for this worker (workers draining at once take
        // different hints), up to 1000 hints a call.
        while taken < 1000 {
            let hints = self.claim_hints().await?;
            if hints.is_empty() {
                break;
            }
            taken += hints.len();
            report.extend(self.drain_hints(hints).await?);
            if self.inner.config.dry_run {
                break;
            }
        }
        Ok(report)
    }

    /// One batch of the inbox, acknowledged as each referral is done.
    async fn drain_hints(
        &self,
        hints: Vec<crate::store::InboxHint>,
    ) -> Result<Report, EngineError> {
        let mut by_referral: BTreeMap<String, Hinted> = BTreeMap::new();
        for h in hints {
            let copy = shared::listed_copy(&h);
            let related = h.event.starts_with("related-referral");
            match by_referral.entry(h.referral_id) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(Hinted {
                        seqs: vec![h.seq],
                        related_only: related,
                        listed: copy,
                    });
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let hinted = o.get_mut();
                    hinted.seqs.push(h.seq);
                    hinted.related_only &= related;
                    hinted.listed = shared::newer_copy(hinted.listed.take(), copy);
                }
            }
        }
        // Our referrals first, then the related ones: a related referral's decision is told on
        // our pair, which the first batch may be creating.
        let (related, own): (Vec<_>, Vec<_>) =
            by_referral.into_iter().partition(|(_, h)| h.related_only);
        // Referrals known only from a shared reconcile's listing are written from it, in
        // groups; any other (a webhook among its hints, a payload that did not decode) is read
        // afresh.
        let (listed, own): (Vec<_>, Vec<_>) =
            own.into_iter().partition(|(_, h)| h.listed.is_some());
        let listed: Vec<(Referral, Vec<i64>)> = listed
            .into_iter()
            .filter_map(|(_, h)| h.listed.map(|r| (r, h.seqs)))
            .collect();
        let per_record = |batch: Vec<(String, Hinted)>| {
            self.run_parallel(
                batch
                    .into_iter()
                    .map(|(id, hinted)| {
                        move || async move {
                            let outcome = if hinted.related_only {
                                Box::pin(self.sync_related(&id)).await?
                            } else {
                                Box::pin(self.sync_referral(&id)).await?
                            };
                            // Failures are dead-lettered above, so the hint can go; a dry
                            // run consumes nothing.
                            if !self.inner.config.dry_run {
                                self.inner
                                    .store
                                    .commit(Commit::new().ack(hinted.seqs))
                                    .await?;
                            }
                            Ok(outcome)
                        }
                    })
                    .collect(),
            )
        };
        let (mut report, fresh) =
            futures::future::try_join(Box::pin(self.apply_listed(listed)), per_record(own)).await?;
        report.extend(fresh);
        report.extend(per_record(related).await?);
        Ok(report)
    }

    /// A related referral changed (Microsoft's or another party's, in one of our engagements):
    /// it is not ours to copy into the CRM, but our referral in that engagement may have changed
    /// with it, so that one is synced, and what its owner decided (accepting, declining or
    /// withdrawing from the co-sell) is told on our pair's CRM record and in the audit trail.
    async fn sync_related(&self, id: &str) -> Result<Outcome, EngineError> {
        let inner = &self.inner;
        if inner.store.link_by_referral(id).await?.is_some() {
            return Box::pin(self.sync_referral(id)).await;
        }
        let referral = match inner.pc.get_referral(id).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => {
                return Ok(Outcome::new(Action::Skipped, "related referral not found").referral(id));
            }
            Err(e) => return Err(e.into()),
        };
        let Some(engagement) = referral.engagement_id.clone() else {
            return Ok(
                Outcome::new(Action::Skipped, "related referral without an engagement")
                    .referral(id),
            );
        };
        let ours: Vec<Link> = inner.store.links_by_engagement(&engagement).await?;
        if ours.is_empty() {
            // Partner Center raises related-referral events for referrals related to ours, so
            // ours in that engagement is not linked yet (its own event not applied yet, or lost
            // and left to the reconcile): the decision waits under the related referral's key,
            // and a replay tells it once our pair exists.
            return self
                .record_failure(
                    format!("related:{id}"),
                    Direction::ToCrm,
                    None,
                    None,
                    &Failure::Rule(format!(
                        "related referral {id}: our referral in engagement {engagement} is not \
                         linked yet"
                    )),
                    None,
                )
                .await;
        }
        let mut last = None;
        for link in ours {
            let synced = Box::pin(self.sync_referral(&link.referral_id)).await?;
            let last = last.insert(synced);
            // What Microsoft (or the other party) decided on its referral shows on our pair's
            // CRM record: our referral does not change with it.
            match Box::pin(self.record_related_decision(&link.referral_id, &referral)).await {
                Ok(Some(told)) if last.action != Action::Failed => *last = told,
                Ok(_) => {}
                Err(Failure::Store(e)) => return Err(e.into()),
                // Kept under the related referral's key, so a replay tells it again.
                Err(failure) => {
                    return self
                        .record_failure(
                            format!("related:{id}"),
                            Direction::ToCrm,
                            Some(&link.referral_id),
                            None,
                            &failure,
                            None,
                        )
                        .await;
                }
            }
        }
        // Every decision is told (whatever became of our pairs, whose failures have their own
        // letters): a letter left under the related referral's key goes.
        let last = last.unwrap_or_else(|| Outcome::new(Action::Skipped, "no pair").referral(id));
        let letter = format!("related:{id}");
        if !self.inner.config.dry_run && self.inner.store.dead_letter(&letter).await?.is_some() {
            self.inner
                .store
                .commit(Commit::new().clear_dead_letter(letter))
                .await?;
        }
        Ok(last)
    }

    /// Resolves create intents left by a crash or an unknown outcome: adopts referrals that
    /// were created, retries the ones that were not.
    pub async fn resolve_intents(&self) -> Result<Report, EngineError> {
        let intents = self.inner.store.intents().await?;
        self
            .run_parallel(
                intents
                    .into_iter()
                    .filter_map(|i| kind_of(&i.crm_entity).map(|k| (k, i.crm_id)))
                    .map(|(kind, id)| {
                        move || async move { Box::pin(self.sync_crm_record(kind, &id)).await }
                    })
                    .collect(),
            )
            .await
    }

    /// Retries every dead letter (after a fix); those that succeed are cleared.
    pub async fn replay_dead_letters(&self) -> Result<Report, EngineError> {
        let letters = self.inner.store.dead_letters().await?;
        let mut report = Report::default();
        for letter in letters {
            if let Some(outcome) = Box::pin(self.replay_dead_letter(&letter.key)).await? {
                report.push(outcome);
            }
        }
        Ok(report)
    }

    /// Retries the dead letter `key` (an operator's "replay this one"); cleared when it
    /// succeeds. `None` when the key names no kind of record the engine knows.
    pub async fn replay_dead_letter(&self, key: &str) -> Result<Option<Outcome>, EngineError> {
        let outcome = match key.split_once(':') {
            // A linked pair is reconciled in full: its referral's eTag may not have moved
            // while a write to it is still pending.
            Some(("referral", id)) => match self.inner.store.link_by_referral(id).await? {
                Some(link) => Box::pin(self.reconcile_link(link)).await?,
                None => Box::pin(self.sync_referral(id)).await?,
            },
            // A decision on a related referral that could not be written yet.
            Some(("related", id)) => Box::pin(self.sync_related(id)).await?,
            Some((entity, id)) => match kind_of(entity) {
                Some(kind) => Box::pin(self.sync_crm_record(kind, id)).await?,
                None => return Ok(None),
            },
            None => return Ok(None),
        };
        if outcome.action != Action::Failed && !self.inner.config.dry_run {
            self.inner
                .store
                .commit(Commit::new().clear_dead_letter(key))
                .await?;
        }
        Ok(Some(outcome))
    }

    /// Runs the passes on `schedule` until `shutdown` completes, then returns after the passes
    /// in flight finish (nothing is cut off half-way). The three passes run side by side, each
    /// on its own interval: the inbox is drained while a long reconcile or change-feed read runs
    /// (the per-pair locks keep each pair's work in order). Starts by resolving create intents;
    /// dead letters are replayed with every reconcile. A failed pass (for example Partner
    /// Center unreachable) is logged and retried on its next tick; only a state-store failure
    /// stops the loops, and the first such error is returned once all of them have stopped.
    pub async fn run(
        &self,
        schedule: Schedule,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), EngineError> {
        // Boxed: the three pass loops make a large future, kept off the caller's stack.
        Box::pin(self.run_passes(schedule, shutdown)).await
    }

    async fn run_passes(
        &self,
        schedule: Schedule,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), EngineError> {
        self.tolerate(Box::pin(self.resolve_intents()).await)?;
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let watch_shutdown = async {
            let mut stopped = stopping.clone();
            tokio::select! {
                () = shutdown => {}
                // Every pass loop ended by itself (a store failure): nothing left to stop.
                _ = stopped.wait_for(|s| *s) => {}
            }
            let _ = stop.send(true);
        };
        let passes = async {
            let results = tokio::join!(
                self.every(schedule.inbox, Pass::Inbox, &stop, stopping.clone()),
                self.every(
                    schedule.crm_changes,
                    Pass::CrmChanges,
                    &stop,
                    stopping.clone()
                ),
                self.every(schedule.reconcile, Pass::Reconcile, &stop, stopping.clone()),
            );
            let _ = stop.send(true);
            results
        };
        let ((), (inbox, crm, reconcile)) = tokio::join!(watch_shutdown, passes);
        inbox.and(crm).and(reconcile)
    }

    /// One pass of [`run`](Self::run), every `period` until `stopping` turns true. A store
    /// failure sets `stop` (the other loops finish their pass and end too) and is returned.
    async fn every(
        &self,
        period: std::time::Duration,
        pass: Pass,
        stop: &tokio::sync::watch::Sender<bool>,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), EngineError> {
        use tokio::time::{MissedTickBehavior, interval};
        let mut tick = interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stopping.wait_for(|s| *s) => return Ok(()),
                _ = tick.tick() => {}
            }
            // The pass runs outside the select, so a stop never cuts it off half-way.
            let result = match pass {
                Pass::Inbox => self.tolerate(self.drain_inbox().await),
                Pass::CrmChanges => self.tolerate(self.pull_crm_changes().await),
                Pass::Reconcile => {
                    async {
                        self.tolerate(self.resolve_intents().await)?;
                        self.tolerate(self.reconcile().await)?;
                        // Transient failures heal here; an unchanged invalid record fails the
                        // same way again and writes nothing.
                        self.tolerate(self.replay_dead_letters().await)
                    }
                    .await
                }
            };
            if let Err(e) = result {
                let _ = stop.send(true);
                return Err(e);
            }
        }
    }

    /// Keeps the loop alive through remote failures; a store failure ends it.
    fn tolerate(&self, result: Result<Report, EngineError>) -> Result<(), EngineError> {
        match result {
            Ok(report) => {
                for o in &report.outcomes {
                    log_outcome(o);
                }
                if !report.outcomes.is_empty() {
                    tracing::debug!(outcomes = report.outcomes.len(), "pass done");
                }
                Ok(())
            }
            Err(EngineError::Remote(e)) => {
                tracing::warn!(error = %e, "pass failed; retrying on the next tick");
                Ok(())
            }
            Err(e) if leases::is_lease_busy(&e) => {
                tracing::warn!(error = %e, "pass cut short; retrying on the next tick");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// One full round: resolve intents, drain the inbox, pull CRM changes, reconcile.
    pub async fn run_once(&self) -> Result<Report, EngineError> {
        let mut report = self.resolve_intents().await?;
        report.extend(self.drain_inbox().await?);
        report.extend(self.pull_crm_changes().await?);
        report.extend(self.reconcile().await?);
        Ok(report)
    }
}

/// One log line per record the running engine wrote or failed on (an operator sees every sync
/// without the audit trail); echoes and unchanged records stay at debug.
fn log_outcome(o: &Outcome) {
    let referral = o.referral_id.as_deref().unwrap_or("-");
    let (entity, crm_id) = o
        .crm
        .as_ref()
        .map_or(("-", "-"), |(e, i)| (e.as_str(), i.as_str()));
    let direction = match o.action {
        Action::CreatedInCrm | Action::UpdatedCrm => "to_crm",
        Action::CreatedReferral | Action::UpdatedReferral => "to_partner_center",
        Action::UpdatedBoth => "both",
        _ => "-",
    };
    match o.action {
        Action::Failed => tracing::warn!(
            referral_id = referral, entity, crm_id, error = %o.detail, "record not synced"
        ),
        Action::Echo | Action::Unchanged | Action::Skipped | Action::Queued => tracing::debug!(
            referral_id = referral, entity, crm_id, action = ?o.action, "record checked"
        ),
        _ => tracing::info!(
            direction,
            referral_id = referral,
            entity,
            crm_id,
            action = ?o.action,
            written = %o.detail,
            conflicts = ?o.conflicts,
            "record synced"
        ),
    }
}

#[cfg(test)]
mod report_tests {
    use super::{Action, Outcome, Report};

    #[test]
    fn a_report_keeps_the_first_outcomes_and_failures_and_counts_the_rest() {
        let limit = Report::DETAIL_LIMIT;
        let mut report = Report::default();
        for i in 0..limit + 500 {
            report.push(Outcome::new(Action::Echo, "echo").referral(&i.to_string()));
        }
        for i in 0..300 {
            report.push(Outcome::new(Action::Failed, "broken").referral(&format!("f{i}")));
        }
        // Past the limit, echoes are counted and failures still kept.
        assert_eq!(report.outcomes.len(), limit + 300);
        assert_eq!(report.omitted(), 500);
        assert_eq!(report.count(Action::Echo), limit + 500);
        assert_eq!(report.count(Action::Failed), 300);
        assert_eq!(report.failures().count(), 300);
        assert_eq!(report.total(), limit + 800);

        // Merging two reports keeps both sides' counts.
        let mut other = Report::default();
        other.push(Outcome::new(Action::Unchanged, "same"));
        let mut merged = Report::default();
        merged.extend(report.clone());
        merged.extend(other);
        assert_eq!(merged.total(), limit + 801);
        assert_eq!(merged.count(Action::Echo), limit + 500);
        assert_eq!(merged.count(Action::Unchanged), 1);

        // Failures past twice the limit are counted too: memory stays bounded.
        for _ in 0..2 * limit {
            report.push(Outcome::new(Action::Failed, "broken"));
        }
        assert_eq!(report.outcomes.len(), 2 * limit);
        assert_eq!(report.count(Action::Failed), 300 + 2 * limit);

        // The counts survive a round trip through JSON (the service's `/status` and logs).
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }
}
