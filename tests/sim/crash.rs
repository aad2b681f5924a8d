//! Process crashes, injected at a chosen HTTP request or store commit.
//!
//! Both wrappers share one [`Crasher`]. It counts every request the engine sends and every
//! commit it makes; when the armed index is reached it "kills the process": the chosen variant
//! happens (the request is not sent, or is processed and its answer lost; the commit is not
//! applied, or is applied), the shared flag flips, and from then on every transport and store
//! call of the dead engine returns a future that never completes. The harness runs each pass
//! under `select!` with [`Crasher::crashed`], drops the pass future, and builds a new engine on
//! the same store, as a restarted process would.
//!
//! The crasher also carries the *concurrent edit* hook: a user action scheduled to happen just
//! before the engine's n-th request, so an edit can land between the engine's read and its write.

use std::fmt;
use std::future::pending;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Bytes;
use cosell::http::{HttpTransport, TransportError};
use cosell::sync::store::{
    AuditEntry, AuditQuery, Commit, CreateIntent, DeadLetter, InboxHint, Link, MemoryStore,
    StateStore, StoreError,
};
use tokio::sync::watch;

/// Where the next crash happens (indices count from the engine's start of the whole run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    /// At request `n`: `processed` = the emulator handles it and the answer is lost; otherwise
    /// the request never leaves.
    Request { n: u64, processed: bool },
    /// At commit `n`: `applied` = the commit is durable and the process dies right after;
    /// otherwise it dies before the commit.
    Commit { n: u64, applied: bool },
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CrashPoint::Request { n, processed: true } => {
                write!(f, "request #{n} processed, answer lost")
            }
            CrashPoint::Request {
                n,
                processed: false,
            } => write!(f, "request #{n} not sent"),
            CrashPoint::Commit { n, applied: true } => write!(f, "after commit #{n}"),
            CrashPoint::Commit { n, applied: false } => write!(f, "before commit #{n}"),
        }
    }
}

type Hook = Box<dyn FnOnce() + Send>;

/// The shared crash switch, counters, request trace and concurrent-edit hook.
#[derive(Clone)]
pub(crate) struct Crasher {
    inner: Arc<Inner>,
}

struct Inner {
    crashed: watch::Sender<bool>,
    armed: Mutex<Option<CrashPoint>>,
    requests: AtomicU64,
    commits: AtomicU64,
    hook: Mutex<Option<(u64, Hook)>>,
    trace: Mutex<Vec<String>>,
    last_crash: Mutex<Option<String>>,
}

impl fmt::Debug for Crasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crasher")
            .field("requests", &self.requests())
            .field("commits", &self.commits())
            .field("armed", &self.armed())
            .finish_non_exhaustive()
    }
}

impl Crasher {
    pub(crate) fn new() -> Self {
        Crasher {
            inner: Arc::new(Inner {
                crashed: watch::Sender::new(false),
                armed: Mutex::new(None),
                requests: AtomicU64::new(0),
                commits: AtomicU64::new(0),
                hook: Mutex::new(None),
                trace: Mutex::new(Vec::new()),
                last_crash: Mutex::new(None),
            }),
        }
    }

    pub(crate) fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::SeqCst)
    }

    pub(crate) fn is_crashed(&self) -> bool {
        *self.inner.crashed.borrow()
    }

    /// Completes once the process has crashed.
    pub(crate) async fn crashed(&self) {
        let mut rx = self.inner.crashed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub(crate) fn armed(&self) -> Option<CrashPoint> {
        *lock(&self.inner.armed)
    }

    /// Arms (or with `None` disarms) the next crash.
    pub(crate) fn arm(&self, point: Option<CrashPoint>) {
        *lock(&self.inner.armed) = point;
    }

    /// A new process: alive again, nothing armed.
    pub(crate) fn restart(&self) {
        self.arm(None);
        self.inner.crashed.send_replace(false);
    }

    fn crash(&self, at: String) {
        if let Some(point) = lock(&self.inner.armed).take() {
            *lock(&self.inner.last_crash) = Some(format!("{point}: {at}"));
        }
        self.inner.crashed.send_replace(true);
    }

    /// Where the last crash hit (`request #n processed, answer lost: PATCH /…`).
    pub(crate) fn last_crash(&self) -> Option<String> {
        lock(&self.inner.last_crash).clone()
    }

    /// Runs `hook` just before the engine's request `n` goes out (once).
    pub(crate) fn before_request(&self, n: u64, hook: Hook) {
        *lock(&self.inner.hook) = Some((n, hook));
    }

    /// Drops a hook that did not fire.
    pub(crate) fn clear_hook(&self) -> bool {
        lock(&self.inner.hook).take().is_some()
    }

    /// `METHOD path` of every request so far (the determinism check compares these).
    pub(crate) fn trace(&self) -> Vec<String> {
        lock(&self.inner.trace).clone()
    }

    fn take_hook(&self, n: u64) -> Option<Hook> {
        let mut h = lock(&self.inner.hook);
        if h.as_ref().is_some_and(|(at, _)| *at <= n) {
            h.take().map(|(_, f)| f)
        } else {
            None
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the engine's HTTP goes through: counts, runs the hook, crashes when armed.
#[derive(Debug)]
pub(crate) struct CrashTransport {
    pub(crate) inner: Arc<dyn HttpTransport>,
    pub(crate) crasher: Crasher,
}

#[async_trait]
impl HttpTransport for CrashTransport {
    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, TransportError> {
        let c = &self.crasher;
        if c.is_crashed() {
            return pending().await;
        }
        let n = c.inner.requests.fetch_add(1, Ordering::SeqCst);
        let line = format!(
            "{} {}",
            request.method(),
            cosell::sandbox::faults::path_shape(request.uri().path())
        );
        lock(&c.inner.trace).push(line.clone());
        if let Some(hook) = c.take_hook(n) {
            hook();
        }
        match c.armed() {
            Some(CrashPoint::Request { n: at, processed }) if at <= n => {
                if processed {
                    let _ = self.inner.send(request).await;
                }
                c.crash(line);
                pending().await
            }
            _ => {
                let result = self.inner.send(request).await;
                // Another task of the same process crashed it meanwhile: this answer is lost too.
                if c.is_crashed() {
                    return pending().await;
                }
                result
            }
        }
    }
}

/// The engine's state store: the one [`MemoryStore`] that outlives every crash, behind the
/// crash switch.
#[derive(Debug)]
pub(crate) struct CrashStore {
    pub(crate) inner: Arc<MemoryStore>,
    pub(crate) crasher: Crasher,
}

impl CrashStore {
    async fn alive(&self) {
        if self.crasher.is_crashed() {
            pending::<()>().await;
        }
    }
}

#[async_trait]
impl StateStore for CrashStore {
    async fn link_by_referral(&self, referral_id: &str) -> Result<Option<Link>, StoreError> {
        self.alive().await;
        self.inner.link_by_referral(referral_id).await
    }

    async fn link_by_crm(
        &self,
        crm_entity: &str,
        crm_id: &str,
    ) -> Result<Option<Link>, StoreError> {
        self.alive().await;
        self.inner.link_by_crm(crm_entity, crm_id).await
    }

    async fn links(&self) -> Result<Vec<Link>, StoreError> {
        self.alive().await;
        self.inner.links().await
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.alive().await;
        self.inner.checkpoint(name).await
    }

    async fn intents(&self) -> Result<Vec<CreateIntent>, StoreError> {
        self.alive().await;
        self.inner.intents().await
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.alive().await;
        self.inner.audit(query).await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.alive().await;
        self.inner.dead_letters().await
    }

    async fn push_hint(&self, body_hash: &str, hint: InboxHint) -> Result<bool, StoreError> {
        self.alive().await;
        self.inner.push_hint(body_hash, hint).await
    }

    async fn pending_hints(&self, max: usize) -> Result<Vec<InboxHint>, StoreError> {
        self.alive().await;
        self.inner.pending_hints(max).await
    }

    async fn crm_child(
        &self,
        entity: &str,
        id: &str,
    ) -> Result<Option<cosell::sync::store::CrmChild>, StoreError> {
        self.alive().await;
        self.inner.crm_child(entity, id).await
    }

    async fn intent(
        &self,
        crm_entity: &str,
        crm_id: &str,
    ) -> Result<Option<cosell::sync::store::CreateIntent>, StoreError> {
        self.alive().await;
        self.inner.intent(crm_entity, crm_id).await
    }

    async fn links_by_engagement(
        &self,
        engagement_id: &str,
    ) -> Result<Vec<cosell::sync::store::Link>, StoreError> {
        self.alive().await;
        self.inner.links_by_engagement(engagement_id).await
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        self.alive().await;
        let c = &self.crasher;
        let n = c.inner.commits.fetch_add(1, Ordering::SeqCst);
        match c.armed() {
            Some(CrashPoint::Commit { n: at, applied }) if at <= n => {
                let what = describe(&commit);
                if applied {
                    let _ = self.inner.commit(commit).await;
                }
                c.crash(what);
                pending().await
            }
            _ => self.inner.commit(commit).await,
        }
    }
}

/// A commit in a few words, for the crash log.
fn describe(c: &Commit) -> String {
    let mut parts = Vec::new();
    if !c.links.is_empty() {
        parts.push(format!("{} link(s)", c.links.len()));
    }
    if !c.intents.is_empty() {
        parts.push("create intent".to_string());
    }
    if !c.resolved_intents.is_empty() {
        parts.push("intent resolved".to_string());
    }
    for (name, _) in &c.checkpoints {
        parts.push(format!("checkpoint {name}"));
    }
    if !c.dead_letters.is_empty() {
        parts.push("dead letter".to_string());
    }
    if !c.ack_hints.is_empty() {
        parts.push("inbox ack".to_string());
    }
    if parts.is_empty() {
        parts.push("audit only".to_string());
    }
    format!("commit of {}", parts.join(", "))
}
