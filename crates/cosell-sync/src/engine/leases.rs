//! Work distribution between engines sharing one state store (several workers on PostgreSQL).
//!
//! Every engine is a *worker* with an id of its own. Before it handles a pair it takes the
//! pair's leases in the store (`crm:<id>`, then `referral:<id>`, the order of the in-process
//! locks), after those locks; before a change-feed page or a reconcile it takes that pass's
//! lease (`pass:<checkpoint>`), and a worker that finds it held skips the pass (another worker
//! is reading that feed); inbox hints are claimed in small batches, so workers draining at the
//! same time take different hints. A lease lives `ttl` and is renewed while its work runs; a
//! killed worker's leases and claims expire and another worker takes its pairs over. Leases are
//! released after the work's commit, before the in-process locks, so a task of the same engine
//! never starts on a pair whose lease is still being given up.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::task::JoinHandle;

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

/// This engine's identity as a worker, and the lease releases it has under way.
pub(super) struct Worker {
    id: String,
    releasing: Arc<Releasing>,
}

impl Default for Worker {
    fn default() -> Self {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        Worker {
            id: format!("worker-{}-{}", std::process::id(), &uuid[..12]),
            releasing: Arc::default(),
        }
    }
}

/// Releases spawned by dropped [`Held`]s and not finished yet. A short-lived process (`cosell
/// sync referral`) waits for them before it exits, or its leases would outlive it by a TTL
/// and hold every other worker off its pairs meanwhile.
#[derive(Default)]
struct Releasing {
    count: AtomicUsize,
    done: Notify,
}

/// Leases held in the store, with the in-process locks of the same keys; given up (leases
/// first, then the locks) when dropped.
pub(super) struct Held {
    store: Arc<dyn StateStore>,
    releasing: Arc<Releasing>,
    holder: String,
    keys: Vec<String>,
    local: Vec<OwnedMutexGuard<()>>,
    renew: Option<JoinHandle<()>>,
}

impl Held {
    fn new(store: Arc<dyn StateStore>, worker: &Worker) -> Self {
        Held {
            store,
            releasing: worker.releasing.clone(),
            holder: worker.id.clone(),
            keys: Vec::new(),
            local: Vec::new(),
            renew: None,
        }
    }

    /// Keeps the leases alive while the work runs: renewed every third of `ttl`. A renewal
    /// that finds the lease gone (this worker stalled past `ttl` and another took over) is
    /// logged; the pair's preconditions (eTags on both sides) then refuse the stale write.
    fn keep_alive(&mut self, ttl: Duration) {
        if self.keys.is_empty() {
            return;
        }
        let (store, holder, keys) = (self.store.clone(), self.holder.clone(), self.keys.clone());
        self.renew = Some(tokio::spawn(async move {
            let every = (ttl / 3).max(Duration::from_millis(10));
            loop {
                tokio::time::sleep(every).await;
                for key in &keys {
                    match store.try_lease(key, &holder, ttl).await {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(%key, "lease lost to another worker"),
                        Err(e) => tracing::warn!(%key, error = %e, "lease renewal failed"),
                    }
                }
            }
        }));
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(renew) = self.renew.take() {
            renew.abort();
        }
        if self.keys.is_empty() {
            return;
        }
        let (store, holder) = (self.store.clone(), std::mem::take(&mut self.holder));
        let keys = std::mem::take(&mut self.keys);
        let local = std::mem::take(&mut self.local);
        // Outside a runtime (shutting down) the leases simply expire.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let releasing = self.releasing.clone();
            releasing.count.fetch_add(1, Ordering::SeqCst);
            runtime.spawn(async move {
                for key in keys.iter().rev() {
                    if let Err(e) = store.release_lease(key, &holder).await {
                        tracing::warn!(%key, error = %e, "lease release failed; it will expire");
                    }
                }
                drop(local);
                if releasing.count.fetch_sub(1, Ordering::SeqCst) == 1 {
                    releasing.done.notify_waiters();
                }
            });
        }
    }
}

impl Engine {
    /// This engine's worker id (the holder of its leases and inbox claims).
    pub fn worker_id(&self) -> &str {
        &self.inner.worker.id
    }

    /// Waits (at most `limit`) until every lease this engine gave up has been released in the
    /// store. Call it before a short-lived process exits, so its leases do not outlive it by a
    /// TTL; a long-running service need not.
    pub async fn release_leases(&self, limit: Duration) {
        let releasing = &self.inner.worker.releasing;
        let _ = tokio::time::timeout(limit, async {
            loop {
                let done = releasing.done.notified();
                if releasing.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                done.await;
            }
        })
        .await;
    }

    /// Takes `keys` in order, each first in process and then in the store, waiting (up to
    /// [`LeaseConfig::wait`]) for another worker to finish with it. A dry run takes the
    /// in-process locks only: it writes nothing another worker could race.
    pub(super) async fn lease_keys(&self, keys: Vec<String>) -> Result<Held, StoreError> {
        let inner = &self.inner;
        let config = &inner.config.leases;
        let mut held = Held::new(inner.store.clone(), &inner.worker);
        for key in keys {
            held.local.push(inner.locks.lock(key.clone()).await);
            if inner.config.dry_run {
                continue;
            }
            let started = tokio::time::Instant::now();
            let mut pause = Duration::from_millis(10);
            while !inner
                .store
                .try_lease(&key, &held.holder, config.ttl)
                .await?
            {
                if started.elapsed() >= config.wait {
                    tracing::warn!(%key, "pair held by another worker; leaving it for later");
                    return Err(StoreError::LeaseBusy { key });
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            held.keys.push(key);
        }
        held.keep_alive(config.ttl);
        Ok(held)
    }

    /// The lease of the pass `name`, or `None` when another worker is running it (this
    /// worker skips it: that worker moves its checkpoint).
    pub(super) async fn lease_pass(&self, name: &str) -> Result<Option<Held>, StoreError> {
        let inner = &self.inner;
        let key = format!("pass:{name}");
        let mut held = Held::new(inner.store.clone(), &inner.worker);
        held.local.push(inner.locks.lock(key.clone()).await);
        if inner.config.dry_run {
            // Reads only: it moves no checkpoint, so it need not keep other workers off.
            return Ok(Some(held));
        }
        if !inner
            .store
            .try_lease(&key, &held.holder, inner.config.leases.ttl)
            .await?
        {
            tracing::debug!(%key, "pass running on another worker");
            return Ok(None);
        }
        held.keys.push(key);
        held.keep_alive(inner.config.leases.ttl);
        Ok(Some(held))
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
