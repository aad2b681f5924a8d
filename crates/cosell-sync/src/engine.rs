//! The sync engine.
//!
//! Both triggers — a Partner Center change (webhook or reconcile) and a CRM change (the change
//! feed) — end in the same place for a linked pair: read both sides, map both into snapshots,
//! three-way merge against the link's base, write each side only what it lacks, and commit the
//! new base with the audit entry in one store transaction. Our own writes come back as changes
//! whose snapshot equals the base: echoes, recognised without writing anything.
//!
//! Creation is where duplicates are born, so it gets the most care:
//! - Partner Center → CRM upserts by the alternate key over the referral id: idempotent.
//! - CRM → Partner Center records a create intent (with `externalReferenceId` = CRM id) before
//!   the POST; an unknown outcome is resolved by looking the referral up, never by posting again
//!   blindly. A referral that arrives carrying an `externalReferenceId` we know is adopted, not
//!   copied.
//!
//! Locks: one per CRM row and one per referral, always taken in that order, so events for one
//! pair apply one at a time while different pairs run in parallel.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use cosell_mapping::{
    CrmStatus, FieldId, FieldMap, MappedSnapshot, MappingError, RecordKind, ReferralIdentity,
    StatusStep, SyncOutcome, merge,
};
use futures::stream::{self, StreamExt};
use partner_center_client::models::{Referral, check_transition};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::OwnedMutexGuard;

use crate::crm::{Crm, CrmChange, CrmRow};
use crate::partner_center::PartnerCenter;
use crate::remote::{RemoteError, RemoteErrorKind};
use crate::store::{
    AuditEntry, AuditOutcome, Commit, CreateIntent, DeadLetter, Direction, Link, StateStore,
    StoreError,
};

/// Checkpoint holding the `updatedDateTime` the Partner Center reconcile has covered.
pub const RECONCILE_CHECKPOINT: &str = "pc.reconcile";

/// The checkpoint name of the CRM change feed of `kind`.
pub fn crm_checkpoint(kind: RecordKind) -> String {
    format!("crm.changes.{}", entity_name(kind))
}

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
}

/// The result of syncing one referral or CRM record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

impl Outcome {
    fn new(action: Action, detail: impl Into<String>) -> Self {
        Outcome {
            referral_id: None,
            crm: None,
            action,
            conflicts: Vec::new(),
            detail: detail.into(),
        }
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

/// The outcomes of a pass (reconcile, change feed, inbox drain).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// One outcome per referral or record touched.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// How many outcomes had `action`.
    pub fn count(&self, action: Action) -> usize {
        self.outcomes.iter().filter(|o| o.action == action).count()
    }

    /// Outcomes that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.action == Action::Failed)
    }

    fn extend(&mut self, other: Report) {
        self.outcomes.extend(other.outcomes);
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

/// Lock guards for one pair, released together.
struct PairGuard {
    _crm: Option<OwnedMutexGuard<()>>,
    _referral: Option<OwnedMutexGuard<()>>,
}

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
    stats: Stats,
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

fn base_of(link: &Link) -> Result<MappedSnapshot, Failure> {
    serde_json::from_value(link.base.clone()).map_err(|e| {
        Failure::Store(StoreError::Corrupt {
            what: "link base snapshot",
            detail: e.to_string(),
        })
    })
}

fn snapshot_value(s: &MappedSnapshot) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

impl Engine {
    /// An engine over the given Partner Center, CRM, state store and field map.
    pub fn new(
        pc: Arc<dyn PartnerCenter>,
        crm: Arc<dyn Crm>,
        store: Arc<dyn StateStore>,
        map: FieldMap,
        config: EngineConfig,
    ) -> Self {
        Engine {
            inner: Arc::new(Inner {
                pc,
                crm,
                store,
                map,
                config,
                locks: KeyedLocks::default(),
                stats: Stats::default(),
            }),
        }
    }

    /// The state store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.inner.store
    }

    /// The field map.
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

    async fn lock_pair(&self, crm_id: Option<&str>, referral_id: Option<&str>) -> PairGuard {
        // Always CRM first, then referral: a consistent order cannot deadlock.
        let crm = match crm_id {
            Some(id) => Some(self.inner.locks.lock(format!("crm:{id}")).await),
            None => None,
        };
        let referral = match referral_id {
            Some(id) => Some(self.inner.locks.lock(format!("referral:{id}")).await),
            None => None,
        };
        PairGuard {
            _crm: crm,
            _referral: referral,
        }
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
    /// pair. An unchanged eTag costs no CRM call.
    pub async fn apply_referral(&self, referral: Referral) -> Result<Outcome, EngineError> {
        let Some(id) = referral.id.clone().filter(|s| !s.is_empty()) else {
            return Ok(Outcome::new(Action::Failed, "referral without an id"));
        };
        let store = &self.inner.store;
        let link = store.link_by_referral(&id).await?;
        let crm_key = link
            .as_ref()
            .map(|l| l.crm_id.clone())
            .or_else(|| referral.external_reference_id.clone());
        let _guard = self.lock_pair(crm_key.as_deref(), Some(&id)).await;
        // Re-read under the lock: another task may have linked it meanwhile.
        let link = store.link_by_referral(&id).await?;
        let result = match link {
            Some(link) if link.pc_etag.is_some() && link.pc_etag == referral.e_tag => {
                return Ok(
                    Outcome::new(Action::Unchanged, "eTag unchanged since last sync").referral(&id),
                );
            }
            Some(link) => self.reconcile_locked(link, Some(referral)).await,
            None => Box::pin(self.create_in_crm(&id, referral)).await,
        };
        match result {
            Ok(outcome) => Ok(outcome),
            Err(Failure::Store(e)) => Err(e.into()),
            Err(failure) => self.fail_referral(&id, None, failure).await,
        }
    }

    async fn create_in_crm(&self, id: &str, referral: Referral) -> Result<Outcome, Failure> {
        let inner = &self.inner;
        let map = &inner.map;
        // A referral created from one of our CRM records carries its id: adopt the pair.
        if let Some(ext) = referral.external_reference_id.as_deref()
            && let Some(row) = inner.crm.read(RecordKind::Opportunity, ext).await?
            && map
                .referral_id_of(row.kind, &row.records.primary)
                .is_none_or(|r| r == id)
        {
            return self.adopt(referral, row).await;
        }
        let snapshot = map.snapshot_from_referral(&referral)?;
        let identity = ReferralIdentity::of(&referral)
            .ok_or_else(|| Failure::Rule("referral without an id".into()))?;
        // A row may exist from an earlier attempt whose link write was lost.
        let existing = match inner
            .crm
            .find_by_referral(RecordKind::Opportunity, id)
            .await?
        {
            Some(row) => Some(row),
            None => inner.crm.find_by_referral(RecordKind::Lead, id).await?,
        };
        let payload = map.to_crm(&snapshot, &identity, existing.as_ref().map(|r| r.kind))?;
        let at = now();
        let extra = map.outcome_columns(
            payload.kind,
            &payload.record,
            SyncOutcome::Success,
            "synced from Partner Center",
            at,
        );
        if inner.config.dry_run {
            return Ok(Outcome::new(
                Action::Planned,
                format!(
                    "would create a CRM {} for the referral",
                    entity_name(payload.kind)
                ),
            )
            .referral(id));
        }
        let written = inner.crm.write(&payload, &extra, None).await?;
        let kind = payload.kind;
        let crm_id = written.id.clone();
        let mut etag = written.etag.clone();
        let from = existing.as_ref().and_then(current_status);
        if self
            .apply_steps(existing.as_ref(), kind, &crm_id, from, payload.status)
            .await?
        {
            etag = None;
        }
        if etag.is_none()
            && let Some(row) = inner.crm.read(kind, &crm_id).await?
        {
            etag = row.etag;
        }
        let link = Link {
            referral_id: id.to_string(),
            engagement_id: referral.engagement_id.clone(),
            crm_entity: entity_name(kind).to_string(),
            crm_id: crm_id.clone(),
            pc_etag: referral.e_tag.clone(),
            pc_updated_at: referral.updated_date_time,
            crm_etag: etag,
            base: snapshot_value(&snapshot),
            synced_at: at,
        };
        let message = format!(
            "{} {} {} from referral",
            if written.created {
                "created"
            } else {
                "updated"
            },
            entity_name(kind),
            crm_id
        );
        inner
            .store
            .commit(
                Commit::new()
                    .link(link)
                    .clear_dead_letter(format!("referral:{id}"))
                    .audit(
                        AuditEntry::new(Direction::ToCrm, AuditOutcome::Created, &message)
                            .referral(id)
                            .crm(entity_name(kind), &crm_id),
                    ),
            )
            .await?;
        inner.stats.to_crm.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cosell_sync_records_synced_total", "direction" => "to_crm").increment(1);
        Ok(Outcome::new(Action::CreatedInCrm, message)
            .referral(id)
            .crm(kind, &crm_id))
    }

    /// Links a referral to the CRM row it was created from (after a lost link write or a
    /// create whose response was lost).
    async fn adopt(&self, referral: Referral, row: CrmRow) -> Result<Outcome, Failure> {
        let inner = &self.inner;
        let id = referral.id.clone().unwrap_or_default();
        let snapshot = inner.map.snapshot_from_referral(&referral)?;
        let identity = ReferralIdentity::of(&referral)
            .ok_or_else(|| Failure::Rule("referral without an id".into()))?;
        // Write the referral's identity back to the CRM row, then reconcile from the referral
        // as the base: whatever the CRM holds differently is merged on the next pass.
        // The identity columns (referral id, link, engagement, Microsoft's CRM id) are what
        // ties the row to the referral; the rest is merged on the next pass.
        let payload = inner.map.to_crm(&snapshot, &identity, Some(row.kind))?;
        let cfg = &inner.map.config().columns;
        let identity_columns: Vec<&String> = match row.kind {
            RecordKind::Opportunity => vec![
                &cfg.opportunity.referral_id,
                &cfg.opportunity.referral_link,
                &cfg.opportunity.engagement_id,
                &cfg.opportunity.microsoft_crm_id,
            ],
            RecordKind::Lead => vec![&cfg.lead.referral_id],
        };
        let mut columns: Map<String, Value> = identity_columns
            .into_iter()
            .filter_map(|c| {
                payload
                    .record
                    .get(c)
                    .filter(|v| !v.is_null() && row.records.primary.get(c) != Some(*v))
                    .map(|v| (c.clone(), v.clone()))
            })
            .collect();
        columns.extend(inner.map.outcome_columns(
            row.kind,
            &row.records.primary,
            SyncOutcome::Success,
            "linked to Partner Center referral",
            now(),
        ));
        if inner.config.dry_run {
            return Ok(
                Outcome::new(Action::Planned, "would link the CRM record to the referral")
                    .referral(&id)
                    .crm(row.kind, &row.id),
            );
        }
        let etag = inner
            .crm
            .update_columns(row.kind, &row.id, &columns, None)
            .await?;
        let link = Link {
            referral_id: id.clone(),
            engagement_id: referral.engagement_id.clone(),
            crm_entity: entity_name(row.kind).to_string(),
            crm_id: row.id.clone(),
            pc_etag: referral.e_tag.clone(),
            pc_updated_at: referral.updated_date_time,
            crm_etag: etag,
            base: snapshot_value(&snapshot),
            synced_at: now(),
        };
        let message = format!("linked referral to {} {}", entity_name(row.kind), row.id);
        inner
            .store
            .commit(
                Commit::new()
                    .link(link)
                    .resolve_intent(entity_name(row.kind), &row.id)
                    .clear_dead_letter(format!("{}:{}", entity_name(row.kind), row.id))
                    .audit(
                        AuditEntry::new(
                            Direction::ToPartnerCenter,
                            AuditOutcome::Created,
                            &message,
                        )
                        .referral(&id)
                        .crm(entity_name(row.kind), &row.id),
                    ),
            )
            .await?;
        let adopted = Outcome::new(Action::CreatedReferral, message.clone())
            .referral(&id)
            .crm(row.kind, &row.id);
        // The row may already differ from the referral (the opportunity of a qualified lead is
        // open while the referral is still pending): reconcile the new pair right away rather
        // than one pass later.
        let Some(link_now) = inner.store.link_by_referral(&id).await? else {
            return Ok(adopted);
        };
        let followed = self.reconcile_once(&link_now, Some(referral)).await?;
        Ok(match followed.action {
            Action::UpdatedReferral | Action::UpdatedCrm | Action::UpdatedBoth => Outcome {
                detail: format!("{message}; {}", followed.detail),
                conflicts: followed.conflicts,
                ..adopted
            },
            _ => adopted,
        })
    }

    /// Moves a record's status with the CRM's actions. `existing` is the row that was there
    /// before the write (a lead being converted); steps on the lead go to it, the rest to the
    /// written record. Returns whether any step ran (the ETag changed).
    async fn apply_steps(
        &self,
        existing: Option<&CrmRow>,
        kind: RecordKind,
        id: &str,
        from: Option<CrmStatus>,
        to: CrmStatus,
    ) -> Result<bool, Failure> {
        let steps = self.inner.map.config().status.steps(from, to);
        let ran = !steps.is_empty();
        for step in steps {
            let lead_step = matches!(step, StatusStep::QualifyLead { .. })
                || matches!(
                    step,
                    StatusStep::SetState {
                        kind: RecordKind::Lead,
                        ..
                    }
                );
            let (k, target) = match existing {
                Some(row) if lead_step && row.kind == RecordKind::Lead => {
                    (RecordKind::Lead, row.id.as_str())
                }
                _ => (kind, id),
            };
            self.inner.crm.apply_status(k, target, &step).await?;
        }
        Ok(ran)
    }

    // ------------------------------------------------------------------ the pair

    /// Reconciles a linked pair (both sides read fresh). Locks the pair.
    pub async fn reconcile_link(&self, link: Link) -> Result<Outcome, EngineError> {
        let _guard = self
            .lock_pair(Some(&link.crm_id), Some(&link.referral_id))
            .await;
        let link = match self.inner.store.link_by_referral(&link.referral_id).await? {
            Some(l) => l,
            None => return Ok(Outcome::new(Action::Skipped, "link removed meanwhile")),
        };
        let referral_id = link.referral_id.clone();
        let kind = kind_of(&link.crm_entity);
        let crm_id = link.crm_id.clone();
        match self.reconcile_locked(link, None).await {
            Ok(o) => Ok(o),
            Err(Failure::Store(e)) => Err(e.into()),
            Err(f) => {
                self.fail_referral(&referral_id, kind.map(|k| (k, crm_id)), f)
                    .await
            }
        }
    }

    /// The three-way merge of a linked pair, redone on a 412 from either side.
    async fn reconcile_locked(
        &self,
        link: Link,
        referral: Option<Referral>,
    ) -> Result<Outcome, Failure> {
        let mut referral = referral;
        let mut attempt = 0;
        loop {
            let link_now = self
                .inner
                .store
                .link_by_referral(&link.referral_id)
                .await?
                .unwrap_or_else(|| link.clone());
            match self.reconcile_once(&link_now, referral.take()).await {
                Err(Failure::Remote(e))
                    if e.kind() == RemoteErrorKind::PreconditionFailed
                        && attempt < self.inner.config.max_precondition_retries =>
                {
                    attempt += 1;
                    tracing::debug!(attempt, "concurrent edit (412); re-reading both sides");
                }
                other => return other,
            }
        }
    }

    fn apply_directions(
        &self,
        base: &MappedSnapshot,
        crm: &mut MappedSnapshot,
        pc: &mut MappedSnapshot,
    ) {
        for (field, direction) in &self.inner.config.directions {
            let keep = base.get(*field).cloned();
            match direction {
                FieldDirection::Both => {}
                FieldDirection::ToCrm => crm.set_opt(*field, keep),
                FieldDirection::ToPartnerCenter => pc.set_opt(*field, keep),
                FieldDirection::Paused => {
                    crm.set_opt(*field, keep.clone());
                    pc.set_opt(*field, keep);
                }
            }
        }
    }

    async fn reconcile_once(
        &self,
        link: &Link,
        referral: Option<Referral>,
    ) -> Result<Outcome, Failure> {
        let inner = &self.inner;
        let map = &inner.map;
        let kind = kind_of(&link.crm_entity)
            .ok_or_else(|| Failure::Rule(format!("unknown CRM entity `{}`", link.crm_entity)))?;
        let base = base_of(link)?;
        let Some(row) = inner.crm.read(kind, &link.crm_id).await? else {
            return Ok(Outcome::new(
                Action::Skipped,
                "the CRM record was deleted; Partner Center referrals cannot be deleted, left as is",
            )
            .referral(&link.referral_id)
            .crm(kind, &link.crm_id));
        };
        let raw_crm = map.snapshot_from_crm(&row.records, Some(&base))?;
        let crm_unchanged = raw_crm == base;
        // An echo of our own CRM write costs no Partner Center call.
        let referral = match referral {
            Some(r) => r,
            None if crm_unchanged => {
                inner.stats.echoes.fetch_add(1, Ordering::Relaxed);
                return Ok(
                    Outcome::new(Action::Echo, "CRM change matches what was last synced")
                        .referral(&link.referral_id)
                        .crm(kind, &row.id),
                );
            }
            None => inner.pc.get_referral(&link.referral_id).await?,
        };
        let raw_pc = map.snapshot_from_referral(&referral)?;
        let mut crm_snap = raw_crm.clone();
        let mut pc_snap = raw_pc.clone();
        self.apply_directions(&base, &mut crm_snap, &mut pc_snap);
        if crm_snap == base && pc_snap == base {
            inner.stats.echoes.fetch_add(1, Ordering::Relaxed);
            // Remember the versions so the next identical event short-circuits on the eTag.
            if !inner.config.dry_run
                && (link.pc_etag != referral.e_tag || link.crm_etag != row.etag)
            {
                let mut updated = link.clone();
                updated.pc_etag = referral.e_tag.clone();
                updated.pc_updated_at = referral.updated_date_time;
                updated.crm_etag = row.etag.clone();
                inner.store.commit(Commit::new().link(updated)).await?;
            }
            return Ok(
                Outcome::new(Action::Echo, "no mapped field changed since last sync")
                    .referral(&link.referral_id)
                    .crm(kind, &row.id),
            );
        }
        let merged = merge(&base, &crm_snap, &pc_snap, map.ownership());
        // Fields held back by direction keep each side's own value on that side.
        let mut crm_target = merged.merged.clone();
        let mut pc_target = merged.merged.clone();
        for (field, direction) in &inner.config.directions {
            if matches!(
                direction,
                FieldDirection::ToPartnerCenter | FieldDirection::Paused
            ) {
                crm_target.set_opt(*field, raw_crm.get(*field).cloned());
            }
            if matches!(direction, FieldDirection::ToCrm | FieldDirection::Paused) {
                pc_target.set_opt(*field, raw_pc.get(*field).cloned());
            }
        }
        let conflicts: Vec<String> = merged
            .conflicts
            .iter()
            .map(|c| format!("{}: {:?} wins ({:?})", c.field.as_str(), c.winner, c.policy))
            .collect();
        let write_crm = crm_target != raw_crm;
        let write_pc = pc_target != raw_pc;

        // Partner Center side first: it is the side with rules that can refuse the change.
        let mut pc_update = None;
        if write_pc {
            let errors = map.check_outgoing(&pc_target, Some(&base));
            if !errors.is_empty() {
                return Err(Failure::Mapping(errors));
            }
            let update = map.referral_update(&raw_pc, &pc_target)?;
            if let (Some(from), Some(to)) = (raw_pc.status(), pc_target.status())
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
            if !update.is_empty() {
                pc_update = Some(update);
            }
        }
        let identity = ReferralIdentity::of(&referral)
            .ok_or_else(|| Failure::Rule("referral without an id".into()))?;
        let crm_payload = if write_crm {
            Some(map.to_crm(&crm_target, &identity, Some(kind))?)
        } else {
            None
        };

        let mut wrote = Vec::new();
        if inner.config.dry_run {
            if let Some(u) = &pc_update {
                wrote.push(format!(
                    "would patch the referral ({} operations)",
                    u.operations.len()
                ));
            }
            if crm_payload.is_some() {
                wrote.push(format!("would update the CRM {}", entity_name(kind)));
            }
            let mut o = Outcome::new(Action::Planned, wrote.join("; "))
                .referral(&link.referral_id)
                .crm(kind, &row.id);
            o.conflicts = conflicts;
            return Ok(o);
        }

        let mut referral_after = referral.clone();
        if let Some(update) = pc_update {
            let etag = referral.e_tag.clone().unwrap_or_default();
            referral_after = inner
                .pc
                .update_referral(&link.referral_id, &etag, update.operations)
                .await?;
            wrote.push("referral updated".to_string());
            inner.stats.to_pc.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("cosell_sync_records_synced_total", "direction" => "to_partner_center")
                .increment(1);
        }
        let mut crm_kind = kind;
        let mut crm_id = row.id.clone();
        let mut crm_etag = row.etag.clone();
        let message = if conflicts.is_empty() {
            "synced".to_string()
        } else {
            format!("synced; conflicts resolved: {}", conflicts.join(", "))
        };
        if let Some(payload) = crm_payload {
            let extra = map.outcome_columns(
                kind,
                &row.records.primary,
                SyncOutcome::Success,
                &message,
                now(),
            );
            // The row's ETag guards the write only when it is the same row (a lead being
            // turned into an opportunity writes a different table).
            let guard = if payload.kind == kind {
                row.etag.as_deref()
            } else {
                None
            };
            let written = inner.crm.write(&payload, &extra, guard).await?;
            crm_etag = written.etag;
            crm_kind = payload.kind;
            crm_id = written.id.clone();
            if self
                .apply_steps(
                    Some(&row),
                    crm_kind,
                    &crm_id,
                    current_status(&row),
                    payload.status,
                )
                .await?
            {
                crm_etag = None;
            }
            wrote.push(format!("{} updated", entity_name(crm_kind)));
            inner.stats.to_crm.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("cosell_sync_records_synced_total", "direction" => "to_crm")
                .increment(1);
        } else if !wrote.is_empty() {
            // Only Partner Center changed: record the outcome on the CRM row (mark and audit).
            let columns = map.outcome_columns(
                kind,
                &row.records.primary,
                SyncOutcome::Success,
                &message,
                now(),
            );
            crm_etag = inner
                .crm
                .update_columns(kind, &row.id, &columns, None)
                .await?;
        }
        if crm_etag.is_none()
            && let Some(r) = inner.crm.read(crm_kind, &crm_id).await?
        {
            crm_etag = r.etag;
        }
        if !conflicts.is_empty() {
            inner
                .stats
                .conflicts
                .fetch_add(conflicts.len() as u64, Ordering::Relaxed);
            metrics::counter!("cosell_sync_conflicts_total").increment(conflicts.len() as u64);
        }
        // The new base is what both sides hold for the fields that flow; held-back fields keep
        // the old base so their side-local changes stay side-local.
        let mut new_base = merged.merged;
        for (field, direction) in &inner.config.directions {
            if *direction != FieldDirection::Both {
                new_base.set_opt(*field, base.get(*field).cloned());
            }
        }
        let updated_link = Link {
            referral_id: link.referral_id.clone(),
            engagement_id: referral_after
                .engagement_id
                .clone()
                .or(link.engagement_id.clone()),
            crm_entity: entity_name(crm_kind).to_string(),
            crm_id: crm_id.clone(),
            pc_etag: referral_after.e_tag.clone(),
            pc_updated_at: referral_after.updated_date_time,
            crm_etag,
            base: snapshot_value(&new_base),
            synced_at: now(),
        };
        let outcome = if conflicts.is_empty() {
            AuditOutcome::Updated
        } else {
            AuditOutcome::Merged
        };
        let direction = if write_pc && !write_crm {
            Direction::ToPartnerCenter
        } else {
            Direction::ToCrm
        };
        let detail = if wrote.is_empty() {
            "nothing to write".to_string()
        } else {
            wrote.join("; ")
        };
        inner
            .store
            .commit(
                Commit::new()
                    .link(updated_link)
                    .clear_dead_letter(format!("referral:{}", link.referral_id))
                    .audit(
                        AuditEntry::new(direction, outcome, &detail)
                            .referral(&link.referral_id)
                            .crm(entity_name(crm_kind), &crm_id)
                            .conflicts(conflicts.clone()),
                    ),
            )
            .await?;
        let action = match (write_pc, write_crm) {
            (true, true) => Action::UpdatedBoth,
            (true, false) => Action::UpdatedReferral,
            (false, true) => Action::UpdatedCrm,
            (false, false) => Action::Unchanged,
        };
        let mut o = Outcome::new(action, detail)
            .referral(&link.referral_id)
            .crm(crm_kind, &crm_id);
        o.conflicts = conflicts;
        Ok(o)
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
        let _guard = self.lock_pair(Some(id), None).await;
        if let Some(link) = self.inner.store.link_by_crm(entity_name(kind), id).await? {
            drop(_guard);
            return Box::pin(self.reconcile_link(link)).await;
        }
        match Box::pin(self.create_referral_from_crm(kind, id)).await {
            Ok(o) => Ok(o),
            Err(Failure::Store(e)) => Err(e.into()),
            Err(f) => self.fail_crm(kind, id, f).await,
        }
    }

    async fn create_referral_from_crm(
        &self,
        kind: RecordKind,
        id: &str,
    ) -> Result<Outcome, Failure> {
        let inner = &self.inner;
        let map = &inner.map;
        let Some(row) = inner.crm.read(kind, id).await? else {
            return Ok(Outcome::new(Action::Skipped, "CRM record not found").crm(kind, id));
        };
        if !map.sync_enabled(kind, &row.records.primary) {
            return Ok(
                Outcome::new(Action::Skipped, "Sync with Partner Center is off").crm(kind, id),
            );
        }
        if kind == RecordKind::Lead {
            // Leads only come from Partner Center; a lead with sync on and no link is not ours.
            return Ok(
                Outcome::new(Action::Skipped, "leads are created by Partner Center only")
                    .crm(kind, id),
            );
        }
        if let Some(referral_id) = map.referral_id_of(kind, &row.records.primary) {
            // It names a referral but has no link (state lost or restored): adopt the pair.
            let referral = inner.pc.get_referral(&referral_id).await?;
            return self.adopt(referral, row).await;
        }
        // An earlier attempt may have created the referral before we lost track of it.
        let pending = inner
            .store
            .intents()
            .await?
            .into_iter()
            .find(|i| i.crm_entity == entity_name(kind) && i.crm_id == id);
        if let Some(intent) = &pending {
            let since = intent.recorded_at - chrono::Duration::minutes(10);
            if let Some(found) = inner
                .pc
                .find_by_external_reference(&intent.external_reference_id, since)
                .await?
            {
                return self.adopt(found, row).await;
            }
        }
        let snapshot = map.snapshot_from_crm(&row.records, None)?;
        let errors = map.check_outgoing(&snapshot, None);
        if !errors.is_empty() {
            return Err(Failure::Mapping(errors));
        }
        let body = map.referral_create(&snapshot, id)?;
        if inner.config.dry_run {
            return Ok(Outcome::new(Action::Planned, "would create a referral").crm(kind, id));
        }
        let intent = CreateIntent {
            crm_entity: entity_name(kind).to_string(),
            crm_id: id.to_string(),
            external_reference_id: id.to_string(),
            recorded_at: pending.as_ref().map(|i| i.recorded_at).unwrap_or_else(now),
            attempts: pending.as_ref().map(|i| i.attempts).unwrap_or(0) + 1,
        };
        let recorded_at = intent.recorded_at;
        // Durable before the POST: this is what makes the create recoverable.
        inner.store.commit(Commit::new().intent(intent)).await?;
        let created = match inner.pc.create_referral(&body).await {
            Ok(r) => r,
            Err(e) if e.kind() == RemoteErrorKind::UnknownOutcome => {
                tracing::warn!(error = %e, "create outcome unknown; looking the referral up");
                let since = recorded_at - chrono::Duration::minutes(10);
                match inner.pc.find_by_external_reference(id, since).await? {
                    Some(found) => found,
                    // Not there: the intent stays, and the next pass tries again.
                    None => return Err(Failure::Remote(e)),
                }
            }
            Err(e) => {
                if !e.is_retryable() {
                    inner
                        .store
                        .commit(Commit::new().resolve_intent(entity_name(kind), id))
                        .await?;
                }
                return Err(Failure::Remote(e));
            }
        };
        inner.stats.to_pc.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cosell_sync_records_synced_total", "direction" => "to_partner_center")
            .increment(1);
        self.adopt(created, row).await
    }

    // ------------------------------------------------------------------ failures

    async fn record_failure(
        &self,
        key: String,
        direction: Direction,
        referral_id: Option<&str>,
        crm: Option<(RecordKind, String)>,
        failure: &Failure,
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
        let previous = inner
            .store
            .dead_letters()
            .await?
            .into_iter()
            .find(|d| d.key == key);
        let repeated = previous.as_ref().is_some_and(|d| d.error == message);
        // The same error again (the record is unchanged in substance) is not a new failure.
        if !repeated {
            inner.stats.failures.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("cosell_sync_failures_total", "direction" => direction.as_str())
                .increment(1);
            tracing::warn!(%key, error = %message, "sync failed");
        }
        // Mark the CRM row (✖ and the error in the audit column), once per distinct error: the
        // mark is itself a change that comes back through the feed.
        if let Some((kind, id)) = &crm
            && !repeated
            && let Ok(Some(row)) = inner.crm.read(*kind, id).await
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
        let crm = match crm {
            Some(c) => Some(c),
            None => self
                .inner
                .store
                .link_by_referral(referral_id)
                .await?
                .and_then(|l| kind_of(&l.crm_entity).map(|k| (k, l.crm_id))),
        };
        self.record_failure(
            format!("referral:{referral_id}"),
            Direction::ToCrm,
            Some(referral_id),
            crm,
            &failure,
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
            report.outcomes.push(r?);
        }
        Ok(report)
    }

    /// Lists referrals updated since the checkpoint (minus the overlap), applies each, then
    /// moves the checkpoint: the pass that heals lost webhooks.
    #[tracing::instrument(skip(self))]
    pub async fn reconcile(&self) -> Result<Report, EngineError> {
        let inner = &self.inner;
        let checkpoint = inner
            .store
            .checkpoint(RECONCILE_CHECKPOINT)
            .await?
            .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| t.with_timezone(&Utc));
        let started = now();
        let since = match checkpoint {
            Some(t) => t - inner.config.reconcile_overlap,
            None => started - inner.config.initial_lookback,
        };
        let referrals = inner.pc.referrals_updated_since(since).await?;
        let newest = referrals
            .iter()
            .filter_map(|r| r.updated_date_time)
            .max()
            .or(checkpoint);
        let report = self
            .run_parallel(
                referrals
                    .into_iter()
                    .map(|r| move || self.apply_referral(r))
                    .collect(),
            )
            .await?;
        // Every referral above is now linked, unchanged or dead-lettered: all durable.
        if let Some(t) = newest {
            self.set_reconcile_checkpoint(t).await?;
        }
        Ok(report)
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
    /// the cursors. An expired cursor falls back to a full read.
    #[tracing::instrument(skip(self))]
    pub async fn pull_crm_changes(&self) -> Result<Report, EngineError> {
        let mut report = Report::default();
        for kind in [RecordKind::Opportunity, RecordKind::Lead] {
            report.extend(self.pull_crm_changes_of(kind).await?);
        }
        Ok(report)
    }

    async fn pull_crm_changes_of(&self, kind: RecordKind) -> Result<Report, EngineError> {
        let inner = &self.inner;
        let name = crm_checkpoint(kind);
        let cursor = inner.store.checkpoint(&name).await?;
        let changes = match inner.crm.changes(kind, cursor.as_deref()).await {
            Ok(c) => c,
            Err(e) if cursor.is_some() && inner.crm.is_cursor_expired(&e) => {
                tracing::warn!("CRM change cursor expired; reading everything again");
                inner.crm.changes(kind, None).await?
            }
            Err(e) => return Err(e.into()),
        };
        // Several changes of one row in a page collapse to one sync.
        let mut ids: Vec<String> = Vec::new();
        let mut deleted = Vec::new();
        for change in changes.changes {
            match change {
                CrmChange::Upserted { id, row, .. } => {
                    let linked = inner
                        .store
                        .link_by_crm(entity_name(kind), &id)
                        .await?
                        .is_some();
                    if (linked || inner.map.sync_enabled(kind, &row)) && !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                CrmChange::Deleted { id, .. } => deleted.push(id),
            }
        }
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
            report.outcomes.push(
                Outcome::new(
                    Action::Skipped,
                    "deleted in the CRM; the referral is left as is",
                )
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
        let inner = &self.inner;
        let hints = inner.store.pending_hints(1000).await?;
        // Per referral: the hints' sequence numbers, and whether every one was a
        // related-referral event (another party's referral in one of our engagements).
        let mut by_referral: BTreeMap<String, (Vec<i64>, bool)> = BTreeMap::new();
        for h in hints {
            let entry = by_referral
                .entry(h.referral_id)
                .or_insert((Vec::new(), true));
            entry.0.push(h.seq);
            entry.1 &= h.event.starts_with("related-referral");
        }
        let report = self
            .run_parallel(
                by_referral
                    .into_iter()
                    .map(|(id, (seqs, related_only))| {
                        move || async move {
                            let outcome = if related_only {
                                Box::pin(self.sync_related(&id)).await?
                            } else {
                                Box::pin(self.sync_referral(&id)).await?
                            };
                            // Failures are dead-lettered above, so the hint can go.
                            self.inner.store.commit(Commit::new().ack(seqs)).await?;
                            Ok(outcome)
                        }
                    })
                    .collect(),
            )
            .await?;
        Ok(report)
    }

    /// A related referral changed (Microsoft's or another party's, in one of our engagements):
    /// it is not ours to copy into the CRM, but our referral in that engagement may have changed
    /// with it, so that one is synced.
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
        let ours: Vec<Link> = inner
            .store
            .links()
            .await?
            .into_iter()
            .filter(|l| l.engagement_id.as_deref() == Some(engagement.as_str()))
            .collect();
        let mut last = Outcome::new(
            Action::Skipped,
            "another party's referral in an engagement we do not sync",
        )
        .referral(id);
        for link in ours {
            last = Box::pin(self.sync_referral(&link.referral_id)).await?;
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
            let outcome = match letter.key.split_once(':') {
                Some(("referral", id)) => Box::pin(self.sync_referral(id)).await?,
                Some((entity, id)) => match kind_of(entity) {
                    Some(kind) => Box::pin(self.sync_crm_record(kind, id)).await?,
                    None => continue,
                },
                None => continue,
            };
            if outcome.action != Action::Failed && !self.inner.config.dry_run {
                self.inner
                    .store
                    .commit(Commit::new().clear_dead_letter(letter.key.clone()))
                    .await?;
            }
            report.outcomes.push(outcome);
        }
        Ok(report)
    }

    /// Runs the passes on `schedule` until `shutdown` completes, then returns after the pass in
    /// flight finishes (nothing is cut off half-way). Starts with a full round; dead letters are
    /// replayed with every reconcile. A failed pass
    /// (for example Partner Center unreachable) is logged and retried on the next tick; only a
    /// state-store failure stops the loop.
    pub async fn run(
        &self,
        schedule: Schedule,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), EngineError> {
        use tokio::time::{MissedTickBehavior, interval};
        let mut inbox = interval(schedule.inbox);
        let mut crm = interval(schedule.crm_changes);
        let mut reconcile = interval(schedule.reconcile);
        for t in [&mut inbox, &mut crm, &mut reconcile] {
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        tokio::pin!(shutdown);
        self.tolerate(self.resolve_intents().await)?;
        loop {
            // Shutdown is looked at first; among the passes that are due, the pick is fair
            // (not biased): under load a drain can outlast the inbox interval, and a fixed order
            // would then never let the change feed or reconcile run.
            let due = async {
                tokio::select! {
                    _ = inbox.tick() => Pass::Inbox,
                    _ = crm.tick() => Pass::CrmChanges,
                    _ = reconcile.tick() => Pass::Reconcile,
                }
            };
            let pass = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                pass = due => pass,
            };
            // The pass runs outside the select, so shutdown never cuts it off half-way.
            match pass {
                Pass::Inbox => self.tolerate(self.drain_inbox().await)?,
                Pass::CrmChanges => self.tolerate(self.pull_crm_changes().await)?,
                Pass::Reconcile => {
                    self.tolerate(self.resolve_intents().await)?;
                    self.tolerate(self.reconcile().await)?;
                    // Transient failures heal here; an unchanged invalid record fails the same
                    // way again and writes nothing.
                    self.tolerate(self.replay_dead_letters().await)?;
                }
            }
        }
    }

    /// Keeps the loop alive through remote failures; a store failure ends it.
    fn tolerate(&self, result: Result<Report, EngineError>) -> Result<(), EngineError> {
        match result {
            Ok(report) => {
                if !report.outcomes.is_empty() {
                    tracing::debug!(outcomes = report.outcomes.len(), "pass done");
                }
                Ok(())
            }
            Err(EngineError::Remote(e)) => {
                tracing::warn!(error = %e, "pass failed; retrying on the next tick");
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
