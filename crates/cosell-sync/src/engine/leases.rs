//! Work distribution between engines sharing one state store (several workers on PostgreSQL).
//!
//! Every engine is a *worker* with an id of its own. Before it handles a pair it takes the
//! pair's leases in the store (`crm:<id>`, then `referral:<id>`, the order of the in-process
//! locks), after those locks; before a change-feed page or a reconcile it takes that pass's
//! lease (`pass:<checkpoint>`), and a worker that finds it held skips the pass (another worker
//! is reading that feed); inbox hints are claimed in small batches, so workers draining at the
//! same time take different hints. A lease lives `ttl` and is renewed while the worker holds
//! it; a killed worker's leases and claims expire and another worker takes its pairs over.
//!
//! A worker keeps the leases it holds in one table: a task done with a pair hands its lease
//! back to the table (no store call), a background task gives leases idle for a moment up in
//! the store (in one batch) and renews the rest, a task finding the table full gives the idle
//! ones up itself (the table stays bounded over a pass of any size), and a task taking a pair
//! the worker still holds (the webhook about its own write) reuses the lease. A lease being
//! given up is waited for, so a task of the same engine never works on a pair whose lease a
//! release is about to delete.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedMutexGuard};

use super::{Engine, EngineError};
use crate::store::{InboxHint, StateStore, StoreError};

/// How engines sharing a store split the work (see [`EngineConfig::leases`](super::EngineConfig)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease or an inbox claim lasts without renewal: how soon a killed worker's
    /// pairs and hints are taken over. Leases are renewed every third of it while their work
    /// runs.
    pub ttl: Duration,
    /// How long a worker waits for a pair another worker is handling before giving the pass
    /// up (it is done again on the next tick). More than `ttl`, so a dead holder's lease always
    /// expires within the wait.
    pub wait: Duration,
    /// Inbox hints claimed at a time: small batches spread a burst over the workers.
    pub inbox_batch: usize,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(30),
            wait: Duration::from_secs(75),
            inbox_batch: 32,
        }
    }
}

/// This engine's identity as a worker, and the store leases it holds.
pub(super) struct Worker {
    id: String,
    table: Arc<LeaseTable>,
    /// Dropped with the engine: the janitor then gives every lease up and ends.
    alive: Arc<()>,
}

impl Default for Worker {
    fn default() -> Self {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        Worker {
            id: format!("worker-{}-{}", std::process::id(), &uuid[..12]),
            table: Arc::default(),
            alive: Arc::new(()),
        }
    }
}

/// How long a lease this worker no longer uses is kept before it is given up in the store. A
/// pair handled again within it (the webhook about the engine's own write, a retry) takes no
/// store call at all; other workers wait at most this long more for it.
const IDLE_GRACE: Duration = Duration::from_millis(50);

/// Leases a worker's table keeps before a task taking one more first gives the idle ones up
/// itself. A pass over pairs in sync (a reconcile of the whole history, all echoes) takes
/// leases far faster than the janitor's ticks give them up; without a cap the table, and the
/// janitor's batch, held one lease per pair of the pass (about 300 bytes a pair in the scale
/// bench: 9 MB at 30,000 pairs) until the janitor caught up, and kept the map's room after.
const TABLE_CAP: usize = 1024;

/// Where a store lease of this worker stands.
enum LeaseState {
    /// Held in the store; `in_use` while a task has it, otherwise idle since the instant.
    Held { in_use: bool, idle_since: Instant },
    /// Being given up in the store; a task wanting it again waits for this, then leases anew.
    Releasing(Arc<Notify>),
}

/// The store leases one worker holds, shared by all its tasks. Taking a lease the worker
/// already holds costs nothing; a lease given up is released in the store by one background
/// task (`janitor`), which also renews every held lease, instead of a task per pair.
#[derive(Default)]
struct LeaseTable {
    leases: Mutex<HashMap<String, LeaseState>>,
    /// Whether the janitor task runs (started with the first lease).
    janitor: AtomicBool,
    /// Woken when a release finishes (for [`Engine::release_leases`]).
    released: Notify,
}

impl LeaseTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LeaseState>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `key` idle: the task using it is done.
    fn put_back(&self, key: &str) {
        if let Some(LeaseState::Held { in_use, idle_since }) = self.lock().get_mut(key) {
            *in_use = false;
            *idle_since = Instant::now();
        }
    }

    /// Marks the idle leases (older than `grace`) as being released and returns them.
    fn take_idle(&self, grace: Duration) -> Vec<(String, Arc<Notify>)> {
        let mut leases = self.lock();
        self.mark_releasing(&mut leases, grace)
    }

    fn mark_releasing(
        &self,
        leases: &mut HashMap<String, LeaseState>,
        grace: Duration,
    ) -> Vec<(String, Arc<Notify>)> {
        let mut out = Vec::new();
        for (key, state) in leases.iter_mut() {
            if let LeaseState::Held {
                in_use: false,
                idle_since,
            } = state
                && idle_since.elapsed() >= grace
            {
                let notify = Arc::new(Notify::new());
                *state = LeaseState::Releasing(notify.clone());
                out.push((key.clone(), notify));
            }
        }
        out
    }

    /// Gives up `keys` in the store now, if they are idle (not taken again meanwhile).
    async fn release_keys(&self, store: &dyn StateStore, holder: &str, keys: &[String]) {
        let idle: Vec<(String, Arc<Notify>)> = {
            let mut leases = self.lock();
            keys.iter()
                .filter_map(|key| {
                    let state = leases.get_mut(key)?;
                    matches!(state, LeaseState::Held { in_use: false, .. }).then(|| {
                        let notify = Arc::new(Notify::new());
                        *state = LeaseState::Releasing(notify.clone());
                        (key.clone(), notify)
                    })
                })
                .collect()
        };
        self.finish_release(store, holder, idle).await;
    }

    /// Whether no lease is held or being released.
    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Leases held or being released.
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Gives up the idle leases (older than `grace`) in the store.
    async fn release_idle(&self, store: &dyn StateStore, holder: &str, grace: Duration) {
        let idle = self.take_idle(grace);
        self.finish_release(store, holder, idle).await;
    }

    /// Releases leases marked as being released, then forgets them and wakes their waiters.
    async fn finish_release(
        &self,
        store: &dyn StateStore,
        holder: &str,
        idle: Vec<(String, Arc<Notify>)>,
    ) {
        if idle.is_empty() {
            return;
        }
        let (keys, notifies): (Vec<String>, Vec<Arc<Notify>>) = idle.into_iter().unzip();
        // One store call for the lot: one at a time, a pass's worth of leases took the janitor
        // longer to give up than the pass took to take them.
        if let Err(e) = store.release_leases(&keys, holder).await {
            tracing::warn!(leases = keys.len(), error = %e, "lease release failed; they will expire");
        }
        let mut leases = self.lock();
        for key in &keys {
            leases.remove(key);
        }
        // A map keeps its largest size: after a burst past the cap, give the room back.
        if leases.capacity() > 2 * TABLE_CAP && leases.len() < leases.capacity() / 4 {
            leases.shrink_to(TABLE_CAP);
        }
        drop(leases);
        for notify in notifies {
            notify.notify_waiters();
        }
        self.released.notify_waiters();
    }

    /// Renews every lease held (in use or idle): a renewal that finds the lease gone (this
    /// worker stalled past `ttl` and another took over) is logged; the pair's preconditions
    /// (eTags on both sides) then refuse the stale write.
    async fn renew(&self, store: &dyn StateStore, holder: &str, ttl: Duration) {
        let held: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, s)| matches!(s, LeaseState::Held { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            match store.try_lease(&key, holder, ttl).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(%key, "lease lost to another worker"),
                Err(e) => tracing::warn!(%key, error = %e, "lease renewal failed"),
            }
        }
    }
}

/// The worker's background task: gives idle leases up every [`IDLE_GRACE`] and renews the held
/// ones every third of `ttl`. Once the engine is gone (`alive` dropped: no task of it runs any
/// more) it gives every lease up, so a restarted engine need not wait for them to expire, and
/// ends.
fn start_janitor(worker: &Worker, store: Arc<dyn StateStore>, ttl: Duration) {
    let table = worker.table.clone();
    if table.janitor.swap(true, Ordering::SeqCst) {
        return;
    }
    let (alive, holder) = (Arc::downgrade(&worker.alive), worker.id.clone());
    let renew_every = (ttl / 3).max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(IDLE_GRACE).await;
            if alive.upgrade().is_none() {
                for state in table.lock().values_mut() {
                    if let LeaseState::Held { in_use, .. } = state {
                        *in_use = false;
                    }
                }
                table
                    .release_idle(store.as_ref(), &holder, Duration::ZERO)
                    .await;
                return;
            }
            table
                .release_idle(store.as_ref(), &holder, IDLE_GRACE)
                .await;
            if renewed.elapsed() >= renew_every {
                table.renew(store.as_ref(), &holder, ttl).await;
                renewed = Instant::now();
            }
        }
    });
}

/// Leases held in the store, with the in-process locks of the same keys; given back to the
/// worker's table (leases first, then the locks) when dropped, without a store call.
pub(super) struct Held {
    table: Arc<LeaseTable>,
    keys: Vec<String>,
    local: Vec<OwnedMutexGuard<()>>,
    /// A pass lease: given up in the store at once when dropped (the next worker's pass need
    /// not wait for the janitor), with the store and holder to do it.
    release_now: Option<(Arc<dyn StateStore>, String)>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for key in self.keys.iter().rev() {
            self.table.put_back(key);
        }
        if let Some((store, holder)) = self.release_now.take()
            && !self.keys.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let table = self.table.clone();
            let keys = std::mem::take(&mut self.keys);
            runtime.spawn(async move { table.release_keys(store.as_ref(), &holder, &keys).await });
        }
        // The in-process locks go after: a task of this engine taking one of these keys next
        // finds the lease idle in the table and reuses it.
        self.local.clear();
    }
}

impl Engine {
    /// This engine's worker id (the holder of its leases and inbox claims).
    pub fn worker_id(&self) -> &str {
        &self.inner.worker.id
    }

    /// Gives up in the store (waiting at most `limit`) every lease this engine no longer
    /// uses. Call it before a short-lived process exits, so its leases do not outlive it by a
    /// TTL; a long-running service need not (idle leases are given up within moments).
    pub async fn release_leases(&self, limit: Duration) {
        let inner = &self.inner;
        let table = &inner.worker.table;
        let _ = tokio::time::timeout(limit, async {
            loop {
                let released = table.released.notified();
                table
                    .release_idle(inner.store.as_ref(), &inner.worker.id, Duration::ZERO)
                    .await;
                if table.is_empty() {
                    return;
                }
                // Leases still in use: wait for their tasks, then give them up too.
                let _ = tokio::time::timeout(IDLE_GRACE, released).await;
            }
        })
        .await;
    }

    /// Takes `keys` in order, each first in process and then in the store, waiting (up to
    /// [`LeaseConfig::wait`]) for another worker to finish with it. A lease this worker still
    /// holds from an earlier task is reused without a store call. A dry run takes the
    /// in-process locks only: it writes nothing another worker could race.
    pub(super) async fn lease_keys(&self, keys: Vec<String>) -> Result<Held, StoreError> {
        let mut held = self.held();
        for key in keys {
            held.local.push(self.inner.locks.lock(key.clone()).await);
            if self.inner.config.dry_run {
                continue;
            }
            if !self.take_lease(&key, true).await? {
                return Err(StoreError::LeaseBusy { key });
            }
            held.keys.push(key);
        }
        Ok(held)
    }

    /// The lease of the pass `name`, or `None` when another worker is running it (this
    /// worker skips it: that worker moves its checkpoint).
    pub(super) async fn lease_pass(&self, name: &str) -> Result<Option<Held>, StoreError> {
        let key = format!("pass:{name}");
        let mut held = self.held();
        held.local.push(self.inner.locks.lock(key.clone()).await);
        if self.inner.config.dry_run {
            // Reads only: it moves no checkpoint, so it need not keep other workers off.
            return Ok(Some(held));
        }
        if !self.take_lease(&key, false).await? {
            tracing::debug!(%key, "pass running on another worker");
            return Ok(None);
        }
        held.keys.push(key);
        held.release_now = Some((self.inner.store.clone(), self.inner.worker.id.clone()));
        Ok(Some(held))
    }

    fn held(&self) -> Held {
        Held {
            table: self.inner.worker.table.clone(),
            keys: Vec::new(),
            local: Vec::new(),
            release_now: None,
        }
    }

    /// Takes the store lease `key` (its in-process lock is held): from the worker's table when
    /// it still holds it, else from the store, waiting for another worker when `wait`.
    /// Returns whether it is held.
    async fn take_lease(&self, key: &str, wait: bool) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let worker = &inner.worker;
        let config = &inner.config.leases;
        start_janitor(worker, inner.store.clone(), config.ttl);
        loop {
            let releasing = match worker.table.lock().get_mut(key) {
                Some(LeaseState::Held { in_use, .. }) => {
                    *in_use = true;
                    return Ok(true);
                }
                Some(LeaseState::Releasing(notify)) => Some(notify.clone()),
                None => None,
            };
            match releasing {
                // Being given up right now: lease it anew once that is done.
                Some(notify) => {
                    let done = notify.notified();
                    if matches!(worker.table.lock().get(key), Some(LeaseState::Releasing(_))) {
                        let _ = tokio::time::timeout(IDLE_GRACE, done).await;
                    }
                }
                None => break,
            }
        }
        // A full table: the idle leases go now rather than at the janitor's next tick, so the
        // table holds at most about the cap plus the leases in use.
        if worker.table.len() >= TABLE_CAP {
            worker
                .table
                .release_idle(inner.store.as_ref(), &worker.id, Duration::ZERO)
                .await;
        }
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(10);
        while !inner.store.try_lease(key, &worker.id, config.ttl).await? {
            if !wait {
                return Ok(false);
            }
            if started.elapsed() >= config.wait {
                tracing::warn!(%key, "pair held by another worker; leaving it for later");
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        worker.table.lock().insert(
            key.to_string(),
            LeaseState::Held {
                in_use: true,
                idle_since: Instant::now(),
            },
        );
        Ok(true)
    }

    /// The next batch of inbox hints for this worker (claimed until acknowledged or expired).
    pub(super) async fn claim_hints(&self) -> Result<Vec<InboxHint>, StoreError> {
        let inner = &self.inner;
        let leases = &inner.config.leases;
        if inner.config.dry_run {
            // A dry run consumes nothing, claims included: it looks at what is waiting.
            return inner.store.pending_hints(1000).await;
        }
        inner
            .store
            .claim_hints(&inner.worker.id, leases.inbox_batch.max(1), leases.ttl)
            .await
    }
}

/// Whether a pass failed only because another worker held a pair for too long (done again on
/// the next tick, nothing lost).
pub(super) fn is_lease_busy(e: &EngineError) -> bool {
    matches!(e, EngineError::Store(StoreError::LeaseBusy { .. }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use cosell_mapping::FieldMap;

    use super::{LeaseState, TABLE_CAP};
    use crate::store::{MemoryStore, StateStore};
    use crate::testing::{MemoryCrm, MemoryPartnerCenter};
    use crate::{Engine, EngineConfig};

    fn engine(store: &Arc<MemoryStore>) -> Engine {
        Engine::new(
            Arc::new(MemoryPartnerCenter::new()),
            Arc::new(MemoryCrm::new(FieldMap::default())),
            store.clone(),
            EngineConfig::default(),
        )
    }

    const TTL: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_pass_over_many_pairs_keeps_the_table_within_its_cap() {
        let store = Arc::new(MemoryStore::new());
        let engine = engine(&store);
        let table = engine.inner.worker.table.clone();
        // Many tasks side by side, each taking and handing back pair after pair, far faster
        // than the janitor's ticks (as a reconcile over pairs in sync does).
        let tasks = 8;
        let per_task = TABLE_CAP;
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let runs = (0..tasks).map(|t| {
            let (engine, table, most) = (engine.clone(), table.clone(), most.clone());
            async move {
                for i in 0..per_task {
                    let held = engine
                        .lease_keys(vec![format!("referral:{t}-{i}")])
                        .await
                        .unwrap();
                    most.fetch_max(table.len(), Ordering::Relaxed);
                    drop(held);
                }
            }
        });
        futures::future::join_all(runs).await;
        let most = most.load(Ordering::Relaxed);
        assert!(
            most <= TABLE_CAP + tasks,
            "{most} leases in the table (cap {TABLE_CAP}, {tasks} in use at most)"
        );
        assert!(table.lock().capacity() <= 2 * TABLE_CAP);
        // What went over the cap was given up in the store, not just forgotten.
        assert!(store.try_lease("referral:0-0", "other", TTL).await.unwrap());
        engine.release_leases(Duration::from_secs(5)).await;
        assert!(table.is_empty());
        assert!(
            store
                .try_lease(&format!("referral:7-{}", per_task - 1), "other", TTL)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_table_gives_its_room_back_once_its_leases_are_released() {
        let store = Arc::new(MemoryStore::new());
        let engine = engine(&store);
        let table = engine.inner.worker.table.clone();
        {
            let mut leases = table.lock();
            for i in 0..20 * TABLE_CAP {
                leases.insert(
                    format!("crm:{i}"),
                    LeaseState::Held {
                        in_use: false,
                        idle_since: std::time::Instant::now(),
                    },
                );
            }
        }
        table
            .release_idle(store.as_ref(), engine.worker_id(), Duration::ZERO)
            .await;
        let leases = table.lock();
        assert!(leases.is_empty());
        assert!(
            leases.capacity() <= 2 * TABLE_CAP,
            "capacity {} after the release",
            leases.capacity()
        );
    }

    #[tokio::test]
    async fn a_lease_handed_back_stays_the_workers_until_given_up() {
        let store = Arc::new(MemoryStore::new());
        let engine = engine(&store);
        let held = engine.lease_keys(vec!["crm:1".into()]).await.unwrap();
        assert!(!store.try_lease("crm:1", "other", TTL).await.unwrap());
        drop(held);
        // The same worker takes it again (from its table); another worker still cannot.
        let again = engine.lease_keys(vec!["crm:1".into()]).await.unwrap();
        assert!(!store.try_lease("crm:1", "other", TTL).await.unwrap());
        drop(again);
        engine.release_leases(Duration::from_secs(5)).await;
        assert!(store.try_lease("crm:1", "other", TTL).await.unwrap());
    }

    #[tokio::test]
    async fn an_idle_lease_is_given_up_soon_and_a_dropped_engine_gives_up_all() {
        let store = Arc::new(MemoryStore::new());
        let engine = engine(&store);
        drop(engine.lease_keys(vec!["crm:1".into()]).await.unwrap());
        let busy = engine.lease_keys(vec!["crm:2".into()]).await.unwrap();
        let free = |key: &'static str| {
            let store = store.clone();
            async move {
                for _ in 0..200 {
                    if store.try_lease(key, "other", TTL).await.unwrap() {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                false
            }
        };
        assert!(
            free("crm:1").await,
            "an idle lease is released in the store"
        );
        assert!(
            !store.try_lease("crm:2", "other", TTL).await.unwrap(),
            "a lease in use is kept"
        );
        // The engine goes away with its task (a restart in the same process).
        std::mem::forget(busy);
        drop(engine);
        assert!(
            free("crm:2").await,
            "a dropped engine's leases are given up"
        );
    }
}
