//! Backfill: many referrals that are new to the CRM written at once.
//!
//! [`Engine::apply_referral`] creates a new referral's CRM record in several requests (the
//! recovery look-up, the account and contact look-ups and creates, the upsert, the solution
//! links, a re-read). A partner onboarding years of referrals pays that per referral against
//! Dataverse's request limit; [`Engine::apply_referrals`] pays it per *group*: one grouped read
//! of which referrals have a row already, then [`Crm::create_new`](crate::Crm::create_new)
//! (for Dataverse: a `$batch` of reads and a `$batch` with one change set per referral).
//!
//! The per-record path's guarantees hold: each referral's pair is locked and leased while its
//! group is written; the plans (links without a CRM id) are committed, in one store commit,
//! before the CRM is written; a referral whose change set failed, or a group whose answer was
//! lost, goes through the per-record path, whose recovery finds a written row by its referral
//! id (the upsert is keyed by it), so nothing is created twice and nothing is lost. Whatever
//! the batched path is not sure to write exactly as the per-record path would (an existing
//! link, an adoption, a currency the CRM lacks, a Partner Center write, field directions, a
//! dry run) takes the per-record path to begin with. A closed referral's record is created and
//! closed in one change set: it exists closed or not at all.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use futures::{StreamExt, TryStreamExt};

use cosell_mapping::{
    CrmPayload, FieldId, FieldValue, MappedSnapshot, PairState, RecordKind, StatusStep,
    SyncOutcome, merge_sides,
};
use partner_center_client::models::Referral;
use serde_json::{Map, Value};

use super::{
    Action, Engine, EngineError, Outcome, PairGuard, Report, Sides, entity_name, now, plan_link,
};
use crate::RemoteError;
use crate::crm::{CrmWritten, NewRecord};
use crate::partner_center::ReferralPage;
use crate::store::{AuditEntry, AuditOutcome, Commit, Direction, Link};

/// Referrals per group of [`Engine::backfill`]: one `$batch` of writes holds a change set for
/// each (a few requests apiece, well under Dataverse's 1,000 per batch).
pub const DEFAULT_BACKFILL_GROUP: usize = 50;

/// The default of [`EngineConfig::backfill_lanes`](super::EngineConfig::backfill_lanes):
/// enough batches in flight to use Dataverse's execution-time budget, which allows about four
/// operations running at once (1,200 s per 300 s), while each group also spends time in the
/// store and between its `$batch`es; the pacer holds them to the budget (measured at N =
/// 10,000: 8 lanes reach 85 % of the ceiling, 94 % of the background share of 90 %).
pub const BACKFILL_LANES: usize = 8;

/// `referrals` in groups of at most `size`, for groups written side by side: whole customers
/// (by name), in the order they first appear, go to the first of the last `lanes` lanes with
/// room for them, else to a new lane; a lane is cut into groups of `size` (only a customer with
/// more than `size` referrals needs that). Lanes are customer-disjoint, so groups written side
/// by side never wait for each other's customer locks, and they come out nearly full.
pub(super) fn by_customer(
    referrals: Vec<Referral>,
    lanes: usize,
    size: usize,
) -> Vec<Vec<Referral>> {
    let lanes = lanes.max(1);
    let size = size.max(1);
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut customers: Vec<Vec<Referral>> = Vec::new();
    for referral in referrals {
        let name = referral
            .customer_profile
            .as_ref()
            .and_then(|c| c.name.as_deref())
            .unwrap_or("")
            .trim()
            .to_lowercase();
        let next = customers.len();
        let i = *index.entry(name).or_insert(next);
        if i == next {
            customers.push(Vec::new());
        }
        customers[i].push(referral);
    }
    // First fit over the last `lanes` lanes: a customer goes to the first of them with room
    // for all of its referrals, else opens a lane, so lanes come out full (balanced lanes cut
    // at `size` sent a second, nearly empty `$batch` for a lane a customer took over it).
    let mut by_lane: Vec<Vec<Referral>> = Vec::new();
    for customer in customers {
        let open = by_lane.len().saturating_sub(lanes);
        let fits = (open..by_lane.len()).find(|&l| by_lane[l].len() + customer.len() <= size);
        match fits {
            Some(l) => by_lane[l].extend(customer),
            None => by_lane.push(customer),
        }
    }
    let mut groups = Vec::new();
    for lane in by_lane {
        let mut rest = lane.into_iter();
        loop {
            let group: Vec<Referral> = rest.by_ref().take(size).collect();
            if group.is_empty() {
                break;
            }
            groups.push(group);
        }
    }
    groups
}

/// A new referral planned for a batched create.
struct Planned {
    id: String,
    referral: Referral,
    kind: RecordKind,
    target: MappedSnapshot,
    payload: CrmPayload,
    extra: Map<String, Value>,
    steps: Vec<StatusStep>,
    crm_view: MappedSnapshot,
    /// The plan committed before the CRM write.
    link: Link,
    guard: Option<PairGuard>,
}

/// The in-process lock key of a record's customer: the account matching rule's key, folded as
/// the rule compares it (case-insensitively). Two records with different keys never match one
/// account, so only records sharing a key need to be created one after another. `None`: the
/// record has no account to find or create.
pub(super) fn customer_key(payload: &CrmPayload) -> Option<String> {
    let account = payload.account.as_ref()?;
    if account.match_key.is_blank() {
        return None;
    }
    let parts: Vec<String> = account
        .match_key
        .0
        .iter()
        .map(|p| p.trim().to_lowercase())
        .collect();
    Some(format!("customer:{}", parts.join("\u{1f}")))
}

/// The reconcile's listing as chunks of at least `target` referrals (whole pages), each with
/// its newest change. The referrals listed before a page that fails are a chunk of their own,
/// and the failure the item after it (the last).
pub(super) struct Chunking<'a> {
    pages: BoxStream<'a, Result<ReferralPage, RemoteError>>,
    /// Referrals listed so far, and the listing's total (as the pages report it).
    listed: &'a AtomicU64,
    total: &'a AtomicU64,
    target: usize,
    chunk: Vec<Referral>,
    newest: Option<DateTime<Utc>>,
    /// A page that failed after others were taken: reported after their chunk.
    failed: Option<EngineError>,
    ended: bool,
}

impl<'a> Chunking<'a> {
    pub(super) fn new(
        pages: BoxStream<'a, Result<ReferralPage, RemoteError>>,
        (listed, total): (&'a AtomicU64, &'a AtomicU64),
        target: usize,
    ) -> Self {
        Chunking {
            pages,
            listed,
            total,
            target,
            chunk: Vec::new(),
            newest: None,
            failed: None,
            ended: false,
        }
    }

    fn take(&mut self) -> ListedChunk {
        Ok((std::mem::take(&mut self.chunk), self.newest.take()))
    }
}

impl futures::Stream for Chunking<'_> {
    type Item = ListedChunk;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ListedChunk>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            this.ended = true;
            return Poll::Ready(Some(Err(e)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match this.pages.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(page))) => {
                    let n = page.referrals.len() as u64;
                    let listed = this.listed.fetch_add(n, Ordering::Relaxed) + n;
                    this.total
                        .store(page.total.unwrap_or(0).max(listed), Ordering::Relaxed);
                    let newest = page
                        .referrals
                        .iter()
                        .filter_map(|r| r.updated_date_time)
                        .max();
                    this.newest = this.newest.max(newest);
                    this.chunk.extend(page.referrals);
                    if this.chunk.len() >= this.target {
                        return Poll::Ready(Some(this.take()));
                    }
                }
                Poll::Ready(Some(Err(e))) if !this.chunk.is_empty() => {
                    this.failed = Some(e.into());
                    return Poll::Ready(Some(this.take()));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready((!this.chunk.is_empty()).then(|| this.take()));
                }
            }
        }
    }
}

/// A chunk of the listing and its newest change, or the failure that ended the listing.
pub(super) type ListedChunk = Result<(Vec<Referral>, Option<DateTime<Utc>>), EngineError>;

/// Where the reconcile's checkpoint may move, with groups finishing in any order: a group's
/// newest change counts once every group listed before it has finished too (the listing comes
/// oldest change first). Groups are written side by side without waiting for each other, so one
/// slow group holds no lane idle (in listing order, a finished group kept its lane until the
/// group before it finished).
#[derive(Debug)]
pub(super) struct GroupProgress {
    state: std::sync::Mutex<ProgressState>,
    /// How many groups, from the first, have all finished.
    finished: tokio::sync::watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct ProgressState {
    /// Finished groups past the first unfinished one, with their newest change.
    ahead: std::collections::BTreeMap<usize, Option<DateTime<Utc>>>,
    /// Groups finished from the first on.
    prefix: usize,
    /// The newest change of those groups.
    newest: Option<DateTime<Utc>>,
}

impl Default for GroupProgress {
    fn default() -> Self {
        GroupProgress {
            state: std::sync::Mutex::default(),
            finished: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl GroupProgress {
    /// Group `index` finished; returns the newest change of the groups finished from the first
    /// on, when this moved it (the checkpoint may go there).
    pub(super) fn finish(
        &self,
        index: usize,
        newest: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.ahead.insert(index, newest);
        let before = s.newest;
        loop {
            let next = s.prefix;
            let Some(t) = s.ahead.remove(&next) else {
                break;
            };
            s.prefix += 1;
            s.newest = s.newest.max(t);
        }
        let prefix = s.prefix;
        let moved = (s.newest > before).then_some(s.newest).flatten();
        drop(s);
        self.finished.send_replace(prefix);
        moved
    }

    /// Waits until every group before `index` has finished (one that fails never does: the
    /// pass ends with it).
    pub(super) async fn before(&self, index: usize) {
        let mut rx = self.finished.subscribe();
        let _ = rx.wait_for(|done| *done >= index).await;
    }
}

/// Customers whose account exists because a create of ours that committed made or found it.
/// Their records are created without the customer's lock: the account matching rule finds that
/// account, and the lock only keeps two creators of a *new* customer from each making one (a
/// backfill whose customers recur held its lanes in line on them: 672 ms of a group's
/// 1.7 s). Bounded: past [`KNOWN_CUSTOMERS_CAP`] keys it starts over and learns them again.
#[derive(Debug, Default)]
pub(super) struct KnownCustomers {
    keys: std::sync::Mutex<HashSet<String>>,
}

/// Most keys [`KnownCustomers`] holds (about 4 MB of keys).
const KNOWN_CUSTOMERS_CAP: usize = 50_000;

impl KnownCustomers {
    fn keys(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key`'s account is known to exist.
    pub(super) fn contains(&self, key: &str) -> bool {
        self.keys().contains(key)
    }

    /// Records that these customers' accounts exist.
    pub(super) fn learn(&self, keys: impl IntoIterator<Item = String>) {
        let mut known = self.keys();
        for key in keys {
            if known.len() >= KNOWN_CUSTOMERS_CAP {
                known.clear();
            }
            known.insert(key);
        }
    }
}

impl Engine {
    /// Applies `referrals` as [`apply_referral`](Self::apply_referral) would, in groups of
    /// [`DEFAULT_BACKFILL_GROUP`]: the new ones are created in the CRM a group at a time (see
    /// [`apply_referrals`](Self::apply_referrals)), the rest one by one. For a first start
    /// over a partner's history.
    pub async fn backfill(&self, referrals: Vec<Referral>) -> Result<Report, EngineError> {
        self.backfill_in_groups(referrals, DEFAULT_BACKFILL_GROUP)
            .await
    }

    /// [`backfill`](Self::backfill) with groups of `group_size` referrals (at least one).
    ///
    /// Up to [`EngineConfig::backfill_lanes`](super::EngineConfig) groups are written side by
    /// side: Dataverse runs a `$batch` one operation after another, so one batch in flight uses
    /// a fraction of its execution-time budget. A group holds the locks of its customers while
    /// it writes (see [`apply_referrals`](Self::apply_referrals)), so two groups never create
    /// one new customer twice.
    pub async fn backfill_in_groups(
        &self,
        referrals: Vec<Referral>,
        group_size: usize,
    ) -> Result<Report, EngineError> {
        let lanes = self.inner.config.backfill_lanes.max(1);
        let groups = by_customer(referrals, lanes, group_size);
        let reports: Vec<Report> = futures::stream::iter(groups)
            .map(|group| self.apply_referrals(group))
            .buffered(lanes)
            .try_collect()
            .await?;
        let mut report = Report::default();
        for r in reports {
            report.extend(r);
        }
        Ok(report)
    }

    /// Applies a group of referrals with one outcome each, as
    /// [`apply_referral`](Self::apply_referral) would for each: referrals new to the CRM are
    /// created together (one grouped read of which have a row already, one
    /// [`Crm::create_new`](crate::Crm::create_new) for the group; for Dataverse about three
    /// requests for the whole group), everything else and anything whose batched write failed
    /// goes through `apply_referral`, several at a time.
    #[tracing::instrument(skip_all, fields(referrals = referrals.len()))]
    pub async fn apply_referrals(&self, referrals: Vec<Referral>) -> Result<Report, EngineError> {
        let store = self.inner.store.clone();
        let mut one_by_one: Vec<Referral> = Vec::new();
        let mut candidates: Vec<Planned> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for referral in referrals {
            let id = referral.id.clone().filter(|s| !s.is_empty());
            let Some(id) = id.filter(|id| {
                !self.inner.config.dry_run
                    && seen.insert(id.clone())
                    // A referral made from a CRM record is adopted, not created.
                    && referral.external_reference_id.is_none()
            }) else {
                one_by_one.push(referral);
                continue;
            };
            if store.link_by_referral(&id).await?.is_some() {
                one_by_one.push(referral);
                continue;
            }
            match self.plan_new(&id, &referral).await {
                Some(p) => candidates.push(Planned { referral, ..p }),
                None => one_by_one.push(referral),
            }
        }
        // Locked in one order (by referral id), so two groups never wait on each other.
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        let mut locked: Vec<Planned> = Vec::new();
        for mut c in candidates {
            let Ok(guard) = self.lock_pair(None, Some(&c.id)).await else {
                // Held by another worker: the per-record path waits for it its own way.
                one_by_one.push(c.referral);
                continue;
            };
            // Under the lock: another task may have linked it meanwhile.
            if store.link_by_referral(&c.id).await?.is_some() {
                drop(guard);
                one_by_one.push(c.referral);
                continue;
            }
            c.guard = Some(guard);
            locked.push(c);
        }
        // Then the customers' locks, in one order (after every pair lock, as the per-record
        // create takes them): a group creating a new customer's account, and anything else
        // creating that customer's records, go one after the other.
        let mut customers: Vec<String> = locked
            .iter()
            .filter_map(|c| customer_key(&c.payload))
            .filter(|key| !self.inner.known_customers.contains(key))
            .collect();
        customers.sort();
        customers.dedup();
        // Leases in the store as well as locks in process: a worker sharing the store creating
        // one of these customers' records waits too (each worker's lock alone let two workers
        // make one new customer's account twice).
        let customer_guards = self.lease_keys(customers).await?;
        let mut report = Report::default();
        let mut retry: Vec<Planned> = Vec::new();
        if !locked.is_empty() {
            // A row already carrying the referral id (state lost, a crash before the link was
            // first committed) is merged by the per-record path, never overwritten.
            let ids: Vec<String> = locked.iter().map(|c| c.id.clone()).collect();
            match self.inner.crm.referrals_with_rows(&ids).await {
                Ok(with_rows) => {
                    let (has_row, new): (Vec<Planned>, Vec<Planned>) =
                        locked.into_iter().partition(|c| with_rows.contains(&c.id));
                    retry.extend(has_row);
                    locked = new;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "grouped look-up failed; one by one instead");
                    retry.append(&mut locked);
                }
            }
        }
        if !locked.is_empty() {
            // The plans are durable before the CRM is written: a crash or a lost answer is
            // recovered by finding the rows by their referral ids.
            let plans = locked
                .iter()
                .fold(Commit::new(), |commit, c| commit.link(c.link.clone()));
            store.commit(plans).await?;
            let records: Vec<NewRecord> = locked
                .iter()
                .map(|c| NewRecord {
                    payload: c.payload.clone(),
                    extra: c.extra.clone(),
                    steps: c.steps.clone(),
                })
                .collect();
            match self.inner.crm.create_new(&records).await {
                Ok(results) if results.len() == locked.len() => {
                    let mut done = Commit::new();
                    let mut written: Vec<Planned> = Vec::new();
                    for (c, result) in locked.into_iter().zip(results) {
                        match result {
                            Ok(w) => {
                                let outcome;
                                (done, outcome) = self.created(&c, &w, done);
                                report.push(outcome);
                                written.push(c);
                            }
                            Err(e) => {
                                tracing::debug!(referral_id = %c.id, error = %e,
                                    "batched create failed; one by one instead");
                                retry.push(c);
                            }
                        }
                    }
                    store.commit(done).await?;
                    for _ in &written {
                        self.count_synced(Direction::ToCrm);
                    }
                    self.inner
                        .known_customers
                        .learn(written.iter().filter_map(|c| customer_key(&c.payload)));
                    // The guards go with `written`, after the commit.
                    drop(written);
                }
                Ok(_) | Err(_) => retry.append(&mut locked),
            }
        }
        // Released before the per-record path takes the same locks.
        drop(customer_guards);
        for c in retry {
            drop(c.guard);
            one_by_one.push(c.referral);
        }
        // Several at a time; a create takes its customer's lock (two referrals of a new
        // customer written side by side would each find no account and create one).
        let items: Vec<_> = one_by_one
            .into_iter()
            .map(|r| move || self.apply_referral(r))
            .collect();
        report.extend(self.run_parallel(items).await?);
        Ok(report)
    }

    /// What the per-record path would write for a new referral, when the batched path can
    /// write exactly that: no Partner Center write, no currency the CRM lacks,
    /// no field direction. `None`: the per-record path handles it (and reports any failure).
    async fn plan_new(&self, id: &str, referral: &Referral) -> Option<Planned> {
        let inner = &self.inner;
        let map = &inner.map;
        if !inner.config.directions.is_empty() {
            return None;
        }
        let snapshot = map.snapshot_from_referral(referral).ok()?;
        let identity = self.identity(referral).ok()?;
        // The per-record pass over a pair whose CRM side is not created yet: every side holds
        // the plan, so the merge keeps it.
        let state = PairState {
            target: &snapshot,
            crm_known: &snapshot,
            partner_center_known: &snapshot,
        };
        let merged = merge_sides(&state, &snapshot, &snapshot, map.ownership());
        if !merged.conflicts.is_empty() || merged.merged != snapshot {
            return None;
        }
        let mut target = merged.merged;
        if let Some(code) = target.text(FieldId::Currency)
            && !inner.crm.has_currency(code).await.ok()?
        {
            return None;
        }
        // As the per-record pass: help requested, or visibility granted, shows visible; a
        // target that then differs from the referral is a Partner Center write.
        let visible = FieldValue::Bool(true);
        if target.is_co_sell() || snapshot.get(FieldId::VisibleToMicrosoft) == Some(&visible) {
            target.set(FieldId::VisibleToMicrosoft, visible);
        }
        if target != snapshot {
            return None;
        }
        let payload = map.to_crm(&target, &identity, None).ok()?;
        // A closed referral's record is created open and closed in the same unit.
        let steps = map.config().status.steps(None, payload.status);
        let crm_view = map
            .snapshot_from_crm(&map.written_records(&payload), Some(&target))
            .ok()?;
        let mut extra = map.outcome_columns(
            payload.kind,
            &payload.record,
            SyncOutcome::Success,
            "synced",
            now(),
        );
        // The payload carries the name with its mark already.
        extra.retain(|k, _| !payload.record.contains_key(k));
        let kind = payload.kind;
        let link = plan_link(id, referral, kind, &snapshot);
        Some(Planned {
            id: id.to_string(),
            referral: Referral::default(),
            kind,
            target,
            payload,
            extra,
            steps,
            crm_view,
            link,
            guard: None,
        })
    }

    /// Adds to `commit` the link, audit entry and cleared letters a created record leaves, as
    /// the per-record pass commits them; returns it with the record's outcome.
    fn created(&self, c: &Planned, written: &CrmWritten, commit: Commit) -> (Commit, Outcome) {
        let entity = entity_name(c.kind);
        let mut link = c.link.clone();
        link.crm_entity = entity.to_string();
        link.crm_id = Some(written.id.clone());
        link.crm_etag = written.etag.clone();
        // Both sides hold the plan: Partner Center as read, the CRM as far as it can hold it.
        let sides = Sides {
            target: c.target.clone(),
            crm: c.crm_view.clone(),
            pc: c.target.clone(),
        };
        sides.store_in(&mut link);
        link.in_sync = true;
        link.crm_status_in_transit = false;
        link.synced_at = now();
        let detail = format!("{entity} updated");
        let commit = commit
            .clear_dead_letter(c.link.dead_letter_key())
            .clear_dead_letter(format!("{entity}:{}", written.id))
            .audit(
                AuditEntry::new(Direction::ToCrm, AuditOutcome::Created, &detail)
                    .referral(&c.id)
                    .crm(entity, &written.id),
            )
            .link(link);
        let outcome = Outcome::new(Action::CreatedInCrm, detail)
            .referral(&c.id)
            .crm(c.kind, &written.id);
        (commit, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use partner_center_client::models::CustomerProfile;

    fn referral(id: usize, customer: &str) -> Referral {
        Referral {
            id: Some(format!("r{id}")),
            customer_profile: Some(CustomerProfile {
                name: Some(customer.to_string()),
                ..CustomerProfile::default()
            }),
            updated_date_time: Some(
                DateTime::from_timestamp(1_700_000_000 + id as i64, 0).unwrap_or_default(),
            ),
            ..Referral::default()
        }
    }

    fn customer_of(r: &Referral) -> String {
        r.customer_profile
            .as_ref()
            .and_then(|c| c.name.clone())
            .unwrap_or_default()
            .to_lowercase()
    }

    #[test]
    fn groups_are_full_customer_disjoint_and_keep_every_referral() {
        // 400 referrals of customers with 1 to 4 referrals each, named in two cases.
        let mut referrals = Vec::new();
        let mut c = 0;
        while referrals.len() < 400 {
            for _ in 0..(c % 4 + 1) {
                let name = if referrals.len() % 2 == 0 {
                    format!("Customer {c}")
                } else {
                    format!("CUSTOMER {c}")
                };
                referrals.push(referral(referrals.len(), &name));
            }
            c += 1;
        }
        let n = referrals.len();
        let groups = by_customer(referrals, 8, 50);
        assert!(groups.iter().all(|g| g.len() <= 50), "{:?}", sizes(&groups));
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), n);
        // Nearly full: at most one group more than the referrals need.
        assert!(groups.len() <= n.div_ceil(50) + 1, "{:?}", sizes(&groups));
        let mut owner: HashMap<String, usize> = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            for r in g {
                let was = *owner.entry(customer_of(r)).or_insert(i);
                assert_eq!(was, i, "customer {} in two groups", customer_of(r));
            }
        }
    }

    #[test]
    fn a_customer_with_more_referrals_than_a_group_is_cut_at_the_group_size() {
        let referrals: Vec<Referral> = (0..120).map(|i| referral(i, "Big Customer")).collect();
        let groups = by_customer(referrals, 8, 50);
        assert_eq!(sizes(&groups), [50, 50, 20]);
    }

    fn sizes(groups: &[Vec<Referral>]) -> Vec<usize> {
        groups.iter().map(Vec::len).collect()
    }

    fn page(from: usize, n: usize) -> Result<ReferralPage, RemoteError> {
        Ok(ReferralPage {
            referrals: (from..from + n)
                .map(|i| referral(i, &format!("c{i}")))
                .collect(),
            total: Some(1000),
        })
    }

    #[tokio::test]
    async fn the_checkpoint_moves_only_past_groups_finished_from_the_first_on() {
        let t = |m: i64| Some(DateTime::<Utc>::from_timestamp(m * 60, 0).unwrap());
        let progress = GroupProgress::default();
        // Groups 1 and 2 finish before group 0: the checkpoint may not move yet.
        assert_eq!(progress.finish(2, t(3)), None);
        assert_eq!(progress.finish(1, None), None);
        let waiting = progress.before(3);
        let mut waiting = std::pin::pin!(waiting);
        assert!(futures::FutureExt::now_or_never(waiting.as_mut()).is_none());
        // Group 0 finishes: 0..3 are done, and the newest change among them is group 2's.
        assert_eq!(progress.finish(0, t(1)), t(3));
        assert!(futures::FutureExt::now_or_never(waiting.as_mut()).is_some());
        // An older change later on does not move it back; a newer one moves it on.
        assert_eq!(progress.finish(3, t(2)), None);
        assert_eq!(progress.finish(5, t(9)), None, "group 4 is not finished");
        assert_eq!(progress.finish(4, None), t(9));
    }

    #[tokio::test]
    async fn the_listing_comes_in_chunks_of_whole_pages_and_a_failed_page_after_its_chunk() {
        let listed = AtomicU64::new(0);
        let total = AtomicU64::new(0);
        let failure = RemoteError::new(
            crate::RemoteErrorKind::Transient,
            "partner center",
            "page 6 failed",
        );
        let pages = stream::iter(vec![
            page(0, 100),
            page(100, 100),
            page(200, 100),
            page(300, 100),
            page(400, 100),
            page(500, 30),
            Err(failure),
            page(530, 100),
        ])
        .boxed();
        let chunks: Vec<ListedChunk> = Chunking::new(pages, (&listed, &total), 400).collect().await;
        assert_eq!(
            chunks.len(),
            3,
            "a chunk, the rest before the failure, the failure"
        );
        let (first, newest) = chunks[0].as_ref().unwrap();
        assert_eq!(first.len(), 400);
        assert_eq!(newest, &first[399].updated_date_time);
        let (second, newest) = chunks[1].as_ref().unwrap();
        assert_eq!(second.len(), 130);
        assert_eq!(newest, &second[129].updated_date_time);
        assert!(chunks[2].is_err(), "the listing ends at the failed page");
        assert_eq!(listed.load(Ordering::Relaxed), 530);
        assert_eq!(total.load(Ordering::Relaxed), 1000);
    }
}
