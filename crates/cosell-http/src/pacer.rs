//! A budget pacer: keeps a client under a service's sliding-window budgets (requests and
//! combined execution time) by delaying requests before they are sent, instead of learning the
//! limit from a storm of 429s.
//!
//! It paces from what the client itself knows: the instant each request left and how long each
//! one took. The measured round trip is used as the request's execution time: the server's
//! execution happens inside the round trip, so this is an upper bound and the pacer errs on the
//! cautious side. A request counts from the moment it is sent (at least the window's mean cost
//! while it runs, so requests sent together see each other) and for one window from then, as a
//! steady load is counted by a server that charges requests when they end. Servers that report
//! their own remaining budget (Dataverse's `x-ms-ratelimit-*-remaining-xrm-requests`,
//! documented as "for debugging") may be fed to [`BudgetPacer::observe_remaining`]: a hint
//! reporting more use than the pacer counted adds the difference; one reporting less scales the
//! pacer's round trips down to what the server charged, never below [`MIN_EXECUTION_SCALE`] of
//! them and only for one execution window after the hint, so a missing header restores the
//! round-trip count and a reset one (another web server) is ignored.
//!
//! Two priorities share the budget: [`Priority::Live`] may fill it up to
//! [`PacerConfig::target`], [`Priority::Background`] only up to
//! [`PacerConfig::background_share`], so a backfill leaves headroom for live traffic, and a
//! waiting live request goes first. A received `Retry-After` holds every request of every
//! priority until it has passed.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The least fraction of its measured round trips a pacer charges as execution time when the
/// server's hints report less: a header from another web server (Microsoft says they reset) can
/// at worst let the pacer count half of what it measured.
pub const MIN_EXECUTION_SCALE: f64 = 0.5;

/// Finished requests a window must hold before a server's hint rescales the pacer's count (a
/// ratio over fewer is noise).
const MIN_SAMPLES_TO_SCALE: usize = 8;

/// Which share of the budget a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    /// Interactive or event-driven traffic (webhooks, CRM edits): may use the budget up to
    /// [`PacerConfig::target`], and goes before waiting background requests.
    #[default]
    Live,
    /// Bulk traffic (a backfill, a first reconcile): may use the budget only up to
    /// [`PacerConfig::background_share`].
    Background,
}

/// The budgets a [`BudgetPacer`] keeps to. [`Default`] is Dataverse's documented per-user
/// service-protection limits (6,000 requests and 1,200 s of combined execution time per sliding
/// 300 s), a target of 95 % and a background share of 90 %; tests and benches scale the windows
/// down. A backfill paced at 90 % leaves live traffic a twentieth of each budget (300 requests
/// per 5 minutes) that background work never takes, and the last twentieth absorbs what the
/// client cannot see.
///
/// ```
/// use std::time::Duration;
/// use cosell_http::PacerConfig;
/// let scaled = PacerConfig {
///     max_requests: 200,
///     request_window: Duration::from_secs(2),
///     ..PacerConfig::default()
/// };
/// assert!(scaled.validate().is_ok());
/// assert_eq!(PacerConfig::default().max_requests, 6000);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PacerConfig {
    /// Requests allowed per `request_window` by the service.
    pub max_requests: u32,
    /// The sliding window of the request count.
    pub request_window: Duration,
    /// Combined execution time allowed per `execution_window` by the service.
    pub max_execution_time: Duration,
    /// The sliding window of the execution time.
    pub execution_window: Duration,
    /// Fraction of each budget live traffic may fill (0 < target <= 1); the rest absorbs what the
    /// client cannot see (other processes of the same user, clock differences).
    pub target: f64,
    /// Fraction of each budget background traffic may fill (0 < share <= target).
    pub background_share: f64,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            max_requests: 6000,
            request_window: Duration::from_secs(300),
            max_execution_time: Duration::from_secs(1200),
            execution_window: Duration::from_secs(300),
            target: 0.95,
            background_share: 0.9,
        }
    }
}

/// A [`PacerConfig`] setting that cannot work, naming the setting and its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pacer setting `{field}` = {value}: {reason}")]
pub struct PacerConfigError {
    field: &'static str,
    value: String,
    reason: &'static str,
}

impl PacerConfigError {
    /// The setting's name (`max_requests`, `target`, …).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The refused value, as written.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl PacerConfig {
    /// Checks that every budget is positive and `0 < background_share <= target <= 1`.
    pub fn validate(&self) -> Result<(), PacerConfigError> {
        let err = |field, value: String, reason| {
            Err(PacerConfigError {
                field,
                value,
                reason,
            })
        };
        if self.max_requests == 0 {
            return err("max_requests", "0".into(), "must be at least 1");
        }
        for (field, d) in [
            ("request_window", self.request_window),
            ("max_execution_time", self.max_execution_time),
            ("execution_window", self.execution_window),
        ] {
            if d.is_zero() {
                return err(field, format!("{d:?}"), "must be longer than zero");
            }
        }
        if !(self.target > 0.0 && self.target <= 1.0) {
            return err(
                "target",
                self.target.to_string(),
                "must be in (0, 1], a fraction of the budget",
            );
        }
        if !(self.background_share > 0.0 && self.background_share <= self.target) {
            return err(
                "background_share",
                self.background_share.to_string(),
                "must be in (0, target], a fraction of the budget no larger than the target",
            );
        }
        Ok(())
    }
}

/// A point-in-time view of a pacer, for status pages and benches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacerSnapshot {
    /// Requests sent (or about to be) in the current request window.
    pub requests_in_window: usize,
    /// The request budget per window (the service's limit, not the target).
    pub max_requests: u32,
    /// Execution time counted in the current execution window: finished requests, plus requests
    /// in flight (each at least the window's mean cost), plus server-reported corrections.
    pub execution_in_window: Duration,
    /// The execution budget per window.
    pub max_execution_time: Duration,
    /// The fraction of measured round trips charged as execution time: 1, or less while a
    /// server hint reported charging less (see [`BudgetPacer::observe_remaining`]).
    pub execution_scale: f64,
    /// Requests in flight now.
    pub in_flight: usize,
    /// How long a live request sent now would wait (zero: none).
    pub live_delay: Duration,
    /// How long a background request sent now would wait (zero: none).
    pub background_delay: Duration,
    /// What is left of a received `Retry-After` (zero: none).
    pub retry_after_remaining: Duration,
    /// 429s reported since creation.
    pub throttled: u64,
    /// Live requests sent since creation.
    pub live_sent: u64,
    /// Background requests sent since creation.
    pub background_sent: u64,
    /// Live requests that had to wait for budget or a `Retry-After` since creation.
    pub live_delayed: u64,
    /// Background requests that had to wait since creation.
    pub background_delayed: u64,
}

#[derive(Debug)]
struct Finished {
    /// When the request was sent (a correction: when it was reported). A request's cost is
    /// held for one window from its send, not from its end: see [`InFlight`]'s drop.
    at: Instant,
    cost: Duration,
    /// `None` for a correction taken from a server's remaining-budget hint.
    priority: Option<Priority>,
}

#[derive(Debug)]
struct State {
    cfg: PacerConfig,
    /// Send instants in the request window, oldest first.
    sends: VecDeque<(Instant, Priority)>,
    /// Reserved by requests not sent yet: (live, background).
    pending: [usize; 2],
    finished: VecDeque<Finished>,
    finished_total: Duration,
    /// The part of `finished_total` taken from server hints (entries without a priority).
    corrections_total: Duration,
    finished_requests: usize,
    /// The mean measured round trip when the window last held finished requests: what a
    /// request is expected to cost once they have all left it (else a whole window's worth of
    /// requests would go at once after a pause, each counted at nothing).
    last_mean: Duration,
    /// What the server charged per measured round trip, from its last hint that reported
    /// less than the pacer counted (1: round trips as measured).
    execution_scale: f64,
    /// When `execution_scale` was last set; it lapses an execution window later.
    scaled_at: Option<Instant>,
    in_flight: HashMap<u64, (Instant, Priority)>,
    next_id: u64,
    paused_until: Option<Instant>,
    live_waiting: usize,
    throttled: u64,
    live_sent: u64,
    background_sent: u64,
    live_delayed: u64,
    background_delayed: u64,
}

/// When a refused request should look again.
enum Wait {
    Until(Instant),
    /// Only a state change (a request sent or finished, a live request admitted) can help.
    Notified,
}

/// Which requests a cap applies to: all of them (the target), or background ones only (their
/// share).
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    All,
    Background,
}

impl Scope {
    fn holds(self, priority: Option<Priority>) -> bool {
        match self {
            Scope::All => true,
            Scope::Background => priority == Some(Priority::Background),
        }
    }
}

fn slot(priority: Priority) -> usize {
    match priority {
        Priority::Live => 0,
        Priority::Background => 1,
    }
}

fn later(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.max(b)))
}

impl State {
    fn prune(&mut self, now: Instant) {
        let rw = self.cfg.request_window;
        while self.sends.front().is_some_and(|(t, _)| now - *t >= rw) {
            self.sends.pop_front();
        }
        let ew = self.cfg.execution_window;
        while self.finished.front().is_some_and(|f| now - f.at >= ew) {
            if let Some(f) = self.finished.pop_front() {
                self.finished_total = self.finished_total.saturating_sub(f.cost);
                if f.priority.is_some() {
                    self.finished_requests -= 1;
                } else {
                    self.corrections_total = self.corrections_total.saturating_sub(f.cost);
                }
            }
        }
        if self.scaled_at.is_some_and(|t| now - t >= ew) {
            self.execution_scale = 1.0;
            self.scaled_at = None;
        }
    }

    /// What a finished entry counts toward the budget: a measured round trip scaled by the
    /// server's last hint, a correction as it was reported.
    fn charged(&self, f: &Finished) -> Duration {
        match f.priority {
            Some(_) => f.cost.mul_f64(self.execution_scale),
            None => f.cost,
        }
    }

    /// The window's mean cost per request: what a request in flight or about to go is expected
    /// to cost at least.
    fn mean_cost(&self) -> Duration {
        self.window_mean()
            .unwrap_or(self.last_mean)
            .mul_f64(self.execution_scale)
    }

    /// The mean measured round trip of the finished requests in the window (`None`: none).
    fn window_mean(&self) -> Option<Duration> {
        let n = u32::try_from(self.finished_requests)
            .ok()
            .filter(|n| *n > 0)?;
        Some(self.finished_total.saturating_sub(self.corrections_total) / n)
    }

    fn pending_in(&self, scope: Scope) -> usize {
        match scope {
            Scope::All => self.pending[0] + self.pending[1],
            Scope::Background => self.pending[1],
        }
    }

    fn execution_used(&self, now: Instant, scope: Scope) -> Duration {
        let mean = self.mean_cost();
        let scale = self.execution_scale;
        let finished: Duration = match scope {
            Scope::All => {
                self.finished_total
                    .saturating_sub(self.corrections_total)
                    .mul_f64(scale)
                    + self.corrections_total
            }
            Scope::Background => self
                .finished
                .iter()
                .filter(|f| scope.holds(f.priority))
                .map(|f| self.charged(f))
                .sum(),
        };
        let flying: Duration = self
            .in_flight
            .values()
            .filter(|(_, p)| scope.holds(Some(*p)))
            .map(|(t, _)| (now - *t).mul_f64(scale).max(mean))
            .sum();
        let pending = u32::try_from(self.pending_in(scope)).unwrap_or(u32::MAX);
        finished + flying + mean * pending
    }

    /// When one more request in `scope` fits under `fraction` of both budgets (`None`: now).
    fn wait_in(&self, now: Instant, scope: Scope, fraction: f64) -> Option<Wait> {
        let cfg = &self.cfg;
        let idle = self.pending_in(Scope::All) == 0 && self.in_flight.is_empty();
        let mut until: Option<Instant> = None;

        // At least one request, or a tiny budget would stall forever.
        let cap = ((f64::from(cfg.max_requests) * fraction).floor() as usize).max(1);
        let mut sent = self.sends.iter().filter(|(_, p)| scope.holds(Some(*p)));
        let count = self
            .sends
            .iter()
            .filter(|(_, p)| scope.holds(Some(*p)))
            .count()
            + self.pending_in(scope);
        if count >= cap {
            // The (count - cap + 1)-th oldest send must leave the window first.
            match sent.nth(count - cap) {
                Some((t, _)) => until = later(until, *t + cfg.request_window),
                None => return Some(Wait::Notified),
            }
        }

        let cap = cfg.max_execution_time.mul_f64(fraction);
        let used = self.execution_used(now, scope) + self.mean_cost();
        if used > cap && !(idle && self.finished.is_empty()) {
            let mut excess = used - cap;
            let mut at = None;
            for f in self.finished.iter().filter(|f| scope.holds(f.priority)) {
                let cost = self.charged(f);
                if cost >= excess {
                    at = Some(f.at + cfg.execution_window);
                    break;
                }
                excess -= cost;
            }
            match at {
                Some(t) => until = later(until, t),
                // Only requests in flight finishing (and later leaving the window) can help.
                None if !idle => return Some(Wait::Notified),
                None => {}
            }
        }
        until.filter(|u| *u > now).map(Wait::Until)
    }

    /// `None`: a request of `priority` may go now.
    fn wait(&self, now: Instant, priority: Priority) -> Option<Wait> {
        if let Some(until) = self.paused_until.filter(|u| *u > now) {
            return Some(Wait::Until(until));
        }
        if priority == Priority::Background && self.live_waiting > 0 {
            return Some(Wait::Notified);
        }
        let all = self.wait_in(now, Scope::All, self.cfg.target);
        if priority == Priority::Live {
            return all;
        }
        let own = self.wait_in(now, Scope::Background, self.cfg.background_share);
        match (all, own) {
            (None, w) | (w, None) => w,
            (Some(Wait::Until(a)), Some(Wait::Until(b))) => Some(Wait::Until(a.max(b))),
            _ => Some(Wait::Notified),
        }
    }

    fn delay(&self, now: Instant, priority: Priority) -> Duration {
        match self.wait(now, priority) {
            None => Duration::ZERO,
            Some(Wait::Until(t)) => t - now,
            // Unknown until something finishes; the window is the honest upper bound.
            Some(Wait::Notified) => self.cfg.request_window.min(self.cfg.execution_window),
        }
    }
}

/// Paces requests under sliding-window budgets (cheap to clone; clones share the budget, so give
/// every client of one service account the same pacer).
///
/// ```
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
/// # rt.block_on(async {
/// use std::time::Duration;
/// use cosell_http::{BudgetPacer, PacerConfig, Priority};
/// let pacer = BudgetPacer::new(PacerConfig {
///     max_requests: 20,
///     request_window: Duration::from_secs(1),
///     ..PacerConfig::default()
/// })
/// .unwrap();
/// // Background traffic may fill 90 % of the 20 requests: 18 go at once.
/// for _ in 0..18 {
///     drop(pacer.admit(Priority::Background).await);
/// }
/// let s = pacer.snapshot();
/// assert_eq!(s.requests_in_window, 18);
/// assert!(s.background_delay > Duration::ZERO, "the 19th background request waits");
/// assert_eq!(s.live_delay, Duration::ZERO, "a live one still goes at once");
/// # });
/// ```
#[derive(Clone)]
pub struct BudgetPacer {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    notify: Notify,
}

impl fmt::Debug for BudgetPacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BudgetPacer")
            .field(&self.snapshot())
            .finish()
    }
}

impl Default for BudgetPacer {
    /// A pacer with Dataverse's documented budgets ([`PacerConfig::default`]).
    fn default() -> Self {
        Self::from_valid(PacerConfig::default())
    }
}

impl BudgetPacer {
    /// A pacer keeping to `config`; fails naming the setting that cannot work.
    pub fn new(config: PacerConfig) -> Result<Self, PacerConfigError> {
        config.validate()?;
        Ok(Self::from_valid(config))
    }

    fn from_valid(cfg: PacerConfig) -> Self {
        BudgetPacer {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    cfg,
                    sends: VecDeque::new(),
                    pending: [0, 0],
                    finished: VecDeque::new(),
                    finished_total: Duration::ZERO,
                    corrections_total: Duration::ZERO,
                    finished_requests: 0,
                    last_mean: Duration::ZERO,
                    execution_scale: 1.0,
                    scaled_at: None,
                    in_flight: HashMap::new(),
                    next_id: 0,
                    paused_until: None,
                    live_waiting: 0,
                    throttled: 0,
                    live_sent: 0,
                    background_sent: 0,
                    live_delayed: 0,
                    background_delayed: 0,
                }),
                notify: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Poisoning only means a panic mid-update of plain counters; they stay usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The budgets in force.
    pub fn config(&self) -> PacerConfig {
        self.lock().cfg.clone()
    }

    /// Waits until a request of `priority` fits its share of the budget, and reserves its place.
    /// Never refuses: a request that cannot fit waits. Call [`Reservation::start`] right before
    /// sending (after any other wait, such as a concurrency slot), so the send instant counted is
    /// the real one.
    pub async fn reserve(&self, priority: Priority) -> Reservation {
        let mut waited = false;
        let mut live_guard = None;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let mut s = self.lock();
                let now = Instant::now();
                s.prune(now);
                match s.wait(now, priority) {
                    None => {
                        s.pending[slot(priority)] += 1;
                        if waited {
                            match priority {
                                Priority::Live => s.live_delayed += 1,
                                Priority::Background => s.background_delayed += 1,
                            }
                        }
                        drop(s);
                        // Dropping the guard lets background waiters look again.
                        drop(live_guard);
                        return Reservation {
                            pacer: self.clone(),
                            priority,
                            open: true,
                        };
                    }
                    Some(w) => {
                        if priority == Priority::Live && live_guard.is_none() {
                            s.live_waiting += 1;
                            live_guard = Some(LiveWaiting {
                                pacer: self.clone(),
                            });
                        }
                        w
                    }
                }
            };
            waited = true;
            match wait {
                Wait::Until(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => {}
                        _ = notified => {}
                    }
                }
                Wait::Notified => notified.await,
            }
        }
    }

    /// [`reserve`](Self::reserve) and [`Reservation::start`] in one step, for callers with no
    /// other wait between them.
    pub async fn admit(&self, priority: Priority) -> InFlight {
        self.reserve(priority).await.start().await
    }

    /// Records a 429: no request of any priority is sent until `retry_after` has passed (a later
    /// end wins over an earlier one).
    pub fn on_throttled(&self, retry_after: Duration) {
        {
            let mut s = self.lock();
            s.throttled += 1;
            let until = Instant::now() + retry_after;
            s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
        }
        self.inner.notify.notify_waiters();
    }

    /// Folds in the server's own view of what is left of its budgets (for Dataverse the
    /// `x-ms-ratelimit-burst-remaining-xrm-requests` and `…-time-remaining-…` headers).
    ///
    /// - When the server has counted more than the pacer (another process of the same user, a
    ///   server that charges more than the round trip), the difference is added to the current
    ///   window.
    /// - When it has charged less execution time than the pacer's round trips (the network and
    ///   the client's own time are in a round trip, not in the server's count), the pacer scales
    ///   its round trips by the server's ratio, never below [`MIN_EXECUTION_SCALE`], for one
    ///   execution window. It needs a few finished requests in the window first, and a hint
    ///   reporting the whole budget left while the pacer counted use (a reset: another web
    ///   server) is ignored.
    /// - A request count reported lower than the pacer's own is ignored (the pacer counts its
    ///   sends exactly).
    pub fn observe_remaining(
        &self,
        requests_remaining: Option<u64>,
        execution_remaining: Option<Duration>,
    ) {
        let mut s = self.lock();
        let now = Instant::now();
        s.prune(now);
        if let Some(left) = requests_remaining {
            let server_used = u64::from(s.cfg.max_requests).saturating_sub(left);
            let ours = s.sends.len() as u64;
            let missing = server_used.saturating_sub(ours);
            // Counted as live: foreign traffic takes from the whole budget, not the
            // background share.
            for _ in 0..missing.min(u64::from(s.cfg.max_requests)) {
                s.sends.push_back((now, Priority::Live));
            }
        }
        if let Some(left) = execution_remaining {
            let server_used = s.cfg.max_execution_time.saturating_sub(left);
            let flying: Duration = s.in_flight.values().map(|(t, _)| now - *t).sum();
            let measured = s.finished_total.saturating_sub(s.corrections_total);
            let ours = s.finished_total + flying;
            if server_used > ours {
                let cost = server_used - ours;
                s.finished.push_back(Finished {
                    at: now,
                    cost,
                    priority: None,
                });
                s.finished_total += cost;
                s.corrections_total += cost;
                s.execution_scale = 1.0;
                s.scaled_at = None;
            } else if server_used > Duration::ZERO
                && s.finished_requests >= MIN_SAMPLES_TO_SCALE
                && !measured.is_zero()
            {
                // Requests in flight are not in the server's count yet, nor in `measured`.
                let charged = server_used.saturating_sub(s.corrections_total);
                let ratio = charged.as_secs_f64() / measured.as_secs_f64();
                s.execution_scale = ratio.clamp(MIN_EXECUTION_SCALE, 1.0);
                s.scaled_at = Some(now);
            }
        }
        drop(s);
        // A lower count may let waiting requests go.
        self.inner.notify.notify_waiters();
    }

    /// The current state.
    pub fn snapshot(&self) -> PacerSnapshot {
        let mut s = self.lock();
        let now = Instant::now();
        s.prune(now);
        PacerSnapshot {
            requests_in_window: s.sends.len() + s.pending_in(Scope::All),
            max_requests: s.cfg.max_requests,
            execution_in_window: s.execution_used(now, Scope::All),
            max_execution_time: s.cfg.max_execution_time,
            execution_scale: s.execution_scale,
            in_flight: s.in_flight.len(),
            live_delay: s.delay(now, Priority::Live),
            background_delay: s.delay(now, Priority::Background),
            retry_after_remaining: s
                .paused_until
                .map_or(Duration::ZERO, |u| u.saturating_duration_since(now)),
            throttled: s.throttled,
            live_sent: s.live_sent,
            background_sent: s.background_sent,
            live_delayed: s.live_delayed,
            background_delayed: s.background_delayed,
        }
    }
}

/// Keeps background requests back while a live one waits; released on drop (also when the
/// waiting future is cancelled).
struct LiveWaiting {
    pacer: BudgetPacer,
}

impl Drop for LiveWaiting {
    fn drop(&mut self) {
        self.pacer.lock().live_waiting -= 1;
        self.pacer.inner.notify.notify_waiters();
    }
}

/// A place in the budget, reserved by [`BudgetPacer::reserve`]; dropping it unsent gives the
/// place back.
#[derive(Debug)]
pub struct Reservation {
    pacer: BudgetPacer,
    priority: Priority,
    open: bool,
}

impl Reservation {
    /// Marks the request as sent now, first waiting out any `Retry-After` received since the
    /// reservation was made. Returns the request's [`InFlight`] record, which measures its cost.
    pub async fn start(mut self) -> InFlight {
        loop {
            let pause = {
                let mut s = self.pacer.lock();
                let now = Instant::now();
                match s.paused_until.filter(|u| *u > now) {
                    Some(until) => until,
                    None => {
                        s.pending[slot(self.priority)] -= 1;
                        s.sends.push_back((now, self.priority));
                        let id = s.next_id;
                        s.next_id += 1;
                        s.in_flight.insert(id, (now, self.priority));
                        match self.priority {
                            Priority::Live => s.live_sent += 1,
                            Priority::Background => s.background_sent += 1,
                        }
                        self.open = false;
                        return InFlight {
                            pacer: self.pacer.clone(),
                            id,
                            sent_at: now,
                        };
                    }
                }
            };
            tokio::time::sleep_until(pause).await;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.open {
            self.pacer.lock().pending[slot(self.priority)] -= 1;
            self.pacer.inner.notify.notify_waiters();
        }
    }
}

/// A request on the wire. Dropping it (when the response has arrived, or the call was
/// abandoned) charges the elapsed time to the execution budget.
#[derive(Debug)]
pub struct InFlight {
    pacer: BudgetPacer,
    id: u64,
    sent_at: Instant,
}

impl InFlight {
    /// When the request was counted as sent.
    pub fn sent_at(&self) -> Instant {
        self.sent_at
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut s = self.pacer.lock();
            let now = Instant::now();
            if let Some((start, priority)) = s.in_flight.remove(&self.id) {
                let cost = now - start;
                // Held from the send: the request counted (at least the mean) from the moment
                // it went, so holding it a window from its end held it for a round trip more
                // than the server does, and a round trip of every window went unused (measured:
                // 90 % of the share with 3 s windows and 0.2 s batches). A steady load is
                // counted as the server counts it, one round trip earlier; sends after a pause
                // see the server's count at most what finished within a round trip of the
                // window's edge above the pacer's, which the target's margin absorbs. A request
                // that ran long is still held at least nine tenths of a window after its end.
                let at = now
                    .checked_sub(s.cfg.execution_window / 10)
                    .map_or(start, |edge| start.max(edge));
                let pos = s.finished.partition_point(|f| f.at <= at);
                s.finished.insert(
                    pos,
                    Finished {
                        at,
                        cost,
                        priority: Some(priority),
                    },
                );
                s.finished_total += cost;
                s.finished_requests += 1;
                if let Some(mean) = s.window_mean() {
                    s.last_mean = mean;
                }
            }
        }
        self.pacer.inner.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(max_requests: u32, window_ms: u64, exec_ms: u64) -> BudgetPacer {
        BudgetPacer::new(PacerConfig {
            max_requests,
            request_window: Duration::from_millis(window_ms),
            max_execution_time: Duration::from_millis(exec_ms),
            execution_window: Duration::from_millis(window_ms),
            target: 0.9,
            background_share: 0.5,
        })
        .unwrap()
    }

    /// Sends recorded as (instant, priority) by tasks that hold each request `cost` long.
    type Log = Arc<Mutex<Vec<(Instant, Priority)>>>;

    fn spawn_load(
        p: &BudgetPacer,
        log: &Log,
        priority: Priority,
        tasks: usize,
        each: usize,
        cost: Duration,
        gap: Duration,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..tasks)
            .map(|_| {
                let (p, log) = (p.clone(), log.clone());
                tokio::spawn(async move {
                    for _ in 0..each {
                        let f = p.admit(priority).await;
                        log.lock().unwrap().push((f.sent_at(), priority));
                        tokio::time::sleep(cost).await;
                        drop(f);
                        tokio::time::sleep(gap).await;
                    }
                })
            })
            .collect()
    }

    /// Most sends of `priority` (None: any) in any window of `w` ending at a send.
    fn max_in_window(
        log: &[(Instant, Priority)],
        w: Duration,
        priority: Option<Priority>,
    ) -> usize {
        let mut ts: Vec<Instant> = log
            .iter()
            .filter(|(_, p)| priority.is_none_or(|x| x == *p))
            .map(|(t, _)| *t)
            .collect();
        ts.sort();
        (0..ts.len())
            .map(|i| ts[..=i].iter().filter(|t| ts[i] - **t < w).count())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn bad_settings_name_the_setting_and_value() {
        let e = BudgetPacer::new(PacerConfig {
            target: 1.5,
            ..PacerConfig::default()
        })
        .unwrap_err();
        assert_eq!((e.field(), e.value()), ("target", "1.5"));
        let e = PacerConfig {
            background_share: 0.97,
            ..PacerConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field(), "background_share");
        assert!(e.to_string().contains("0.97"), "{e}");
        let e = PacerConfig {
            request_window: Duration::ZERO,
            ..PacerConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field(), "request_window");
        assert_eq!(
            PacerConfig {
                max_requests: 0,
                ..PacerConfig::default()
            }
            .validate()
            .unwrap_err()
            .field(),
            "max_requests"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn request_budget_holds_in_every_window_and_is_filled() {
        // 20 requests per second; live target 90 % = 18.
        let p = pacer(20, 1000, 1_000_000);
        let log: Log = Arc::default();
        let tasks = spawn_load(
            &p,
            &log,
            Priority::Live,
            4,
            25,
            Duration::from_millis(5),
            Duration::ZERO,
        );
        let start = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 100);
        assert_eq!(max_in_window(&log, Duration::from_secs(1), None), 18);
        // 100 requests at 18 per window: the 91st..100th go in the sixth window, no later.
        assert!(
            start.elapsed() < Duration::from_millis(5100),
            "{:?}",
            start.elapsed()
        );
        assert!(start.elapsed() >= Duration::from_secs(5));
        assert!(p.snapshot().live_delayed > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn execution_budget_holds_and_is_filled() {
        // Requests are plentiful (1000/s) but execution time is 1 s per second; each request
        // takes 100 ms, so at most 9 per window at the 90 % target.
        let p = pacer(1000, 1000, 1000);
        let log: Log = Arc::default();
        let tasks = spawn_load(
            &p,
            &log,
            Priority::Live,
            6,
            10,
            Duration::from_millis(100),
            Duration::ZERO,
        );
        let start = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed();
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 60);
        // Execution time charged in any window: a request costs 100 ms, so at most 9 (plus
        // the ones already in flight when the window's mean was still unknown, at the start)
        // may start per window.
        let late: Vec<_> = log
            .iter()
            .filter(|(t, _)| *t - start >= Duration::from_secs(1))
            .cloned()
            .collect();
        assert!(
            max_in_window(&late, Duration::from_secs(1), None) <= 9,
            "{}",
            max_in_window(&late, Duration::from_secs(1), None)
        );
        // What a server charging each request when it finishes (as the emulator does) had
        // counted in its window when each request arrived: never over the 90 % target.
        let cost = Duration::from_millis(100);
        let charged_at = |t: Instant| -> Duration {
            log.iter()
                .map(|(sent, _)| *sent + cost)
                .filter(|done| *done <= t && t - *done < Duration::from_secs(1))
                .map(|_| cost)
                .sum()
        };
        for (sent, _) in &log {
            let charged = charged_at(*sent);
            assert!(
                charged <= Duration::from_millis(900),
                "{charged:?} at a send"
            );
        }
        // ...and the budget is used: 60 requests of 100 ms at 0.9 s per second, the first
        // window's at once, take 6.2 s (6.8 s when a request's cost was held a window from
        // its end: a round trip of every window went unused).
        assert!(elapsed <= Duration::from_millis(6300), "{elapsed:?}");
        assert!(p.snapshot().execution_in_window <= Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn background_execution_is_held_to_its_share_as_the_server_counts_it() {
        // Execution time binds: 1 s per second, background share 50 %. Eight background tasks
        // of 100 ms each, more than the share allows at once.
        let p = pacer(1000, 1000, 1000);
        let log: Log = Arc::default();
        let cost = Duration::from_millis(100);
        let tasks = spawn_load(&p, &log, Priority::Background, 8, 10, cost, Duration::ZERO);
        let start = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed();
        let log = log.lock().unwrap().clone();
        // The server's count (each request charged when it finishes) at every finish after
        // the first two windows (the first one's requests went before any cost was known):
        // never over the share.
        let window = Duration::from_secs(1);
        let finishes: Vec<Instant> = log.iter().map(|(t, _)| *t + cost).collect();
        let charged_at = |t: Instant| -> Duration {
            finishes
                .iter()
                .filter(|done| **done <= t && t - **done < window)
                .map(|_| cost)
                .sum()
        };
        let most = finishes
            .iter()
            .filter(|t| **t - start >= 2 * window)
            .map(|t| charged_at(*t))
            .max()
            .unwrap();
        assert!(most <= Duration::from_millis(500), "{most:?} in one window");
        // ...and the share is used: 80 requests of 100 ms at 0.5 s per second, 15.1 s (17.6
        // s when a request's cost was held a window from its end; a window's worth went at
        // once after each pause when the cost of the requests that had left it was forgotten).
        assert!(elapsed <= Duration::from_millis(15_500), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn background_is_capped_and_live_is_not_starved() {
        // 40 per second: background may fill 50 % (20), live 90 % (36).
        let p = pacer(40, 1000, 1_000_000);
        let log: Log = Arc::default();
        let bg = spawn_load(
            &p,
            &log,
            Priority::Background,
            8,
            20,
            Duration::from_millis(5),
            Duration::ZERO,
        );
        // A live trickle: one request every ~100 ms (about 10 per second).
        let live = spawn_load(
            &p,
            &log,
            Priority::Live,
            1,
            30,
            Duration::from_millis(5),
            Duration::from_millis(100),
        );
        for t in live {
            t.await.unwrap();
        }
        let live_done = Instant::now();
        let bg_running = bg.iter().any(|t| !t.is_finished());
        for t in bg {
            t.await.unwrap();
        }
        let log = log.lock().unwrap().clone();
        assert!(
            bg_running,
            "the live trickle finished while background load ran"
        );
        assert!(max_in_window(&log, Duration::from_secs(1), Some(Priority::Background)) <= 20);
        assert!(max_in_window(&log, Duration::from_secs(1), None) <= 36);
        let s = p.snapshot();
        assert_eq!(s.live_sent, 30);
        assert_eq!(s.background_sent, 160);
        assert_eq!(
            s.live_delayed, 0,
            "no live request waited behind background load"
        );
        // Background throughput: 160 requests at 20 per window take 8 windows, not more.
        assert!(
            live_done.elapsed() < Duration::from_secs(6),
            "{:?}",
            live_done.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_live_request_goes_before_waiting_background_ones() {
        // 10 per second, both priorities capped at 9: live and background compete for slots.
        let p = BudgetPacer::new(PacerConfig {
            max_requests: 10,
            request_window: Duration::from_secs(1),
            background_share: 0.9,
            ..PacerConfig::default()
        })
        .unwrap();
        // One place frees every 10 ms from t = 1 s.
        for _ in 0..9 {
            drop(p.admit(Priority::Background).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let log: Log = Arc::default();
        let bg = spawn_load(
            &p,
            &log,
            Priority::Background,
            5,
            1,
            Duration::ZERO,
            Duration::ZERO,
        );
        tokio::task::yield_now().await;
        let live = spawn_load(
            &p,
            &log,
            Priority::Live,
            1,
            1,
            Duration::ZERO,
            Duration::ZERO,
        );
        for t in live.into_iter().chain(bg) {
            t.await.unwrap();
        }
        let log = log.lock().unwrap().clone();
        let first = log.iter().min_by_key(|(t, _)| *t).unwrap();
        assert_eq!(first.1, Priority::Live, "{log:?}");
        assert_eq!(log.iter().filter(|(_, p)| *p == Priority::Live).count(), 1);
        assert_eq!(
            log.iter()
                .filter(|(t, p)| *p == Priority::Background && *t == first.0)
                .count(),
            0,
            "no background request took the live one's place"
        );
        assert_eq!(log.len(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_every_task_of_every_priority() {
        let p = pacer(1000, 1000, 1_000_000);
        let start = Instant::now();
        // A request reserved before the 429 arrives still waits it out.
        let reserved = p.reserve(Priority::Live).await;
        p.on_throttled(Duration::from_secs(3));
        p.on_throttled(Duration::from_secs(1)); // an earlier end does not shorten the pause
        let log: Log = Arc::default();
        let tasks: Vec<_> = [Priority::Live, Priority::Background]
            .into_iter()
            .flat_map(|pr| spawn_load(&p, &log, pr, 3, 2, Duration::ZERO, Duration::ZERO))
            .collect();
        let flight = reserved.start().await;
        assert!(flight.sent_at() - start >= Duration::from_secs(3));
        for t in tasks {
            t.await.unwrap();
        }
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 12);
        assert!(
            log.iter()
                .all(|(t, _)| *t - start >= Duration::from_secs(3)),
            "{log:?}"
        );
        let s = p.snapshot();
        assert_eq!(s.throttled, 2);
        assert_eq!(s.retry_after_remaining, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn server_hints_only_tighten() {
        let p = pacer(100, 1000, 10_000);
        drop(p.admit(Priority::Live).await);
        // The server saw 60 requests (another process of the same user) and 5 s of execution.
        p.observe_remaining(Some(40), Some(Duration::from_secs(5)));
        let s = p.snapshot();
        assert_eq!(s.requests_in_window, 60);
        assert!(s.execution_in_window >= Duration::from_secs(5));
        // A server that saw less (another web server behind the balancer) changes nothing.
        p.observe_remaining(Some(100), Some(Duration::from_secs(10)));
        assert_eq!(p.snapshot().requests_in_window, 60);
        // The corrections leave with the window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = p.snapshot();
        assert_eq!(s.requests_in_window, 0);
        assert_eq!(s.execution_in_window, Duration::ZERO);
    }

    /// Ten requests of 100 ms each, finished one after the other.
    async fn ten_round_trips_of_100_ms(p: &BudgetPacer) {
        for _ in 0..10 {
            let flight = p.admit(Priority::Background).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(flight);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_charging_less_than_the_round_trips_scales_them_down_for_one_window() {
        let p = pacer(1000, 10_000, 100_000);
        ten_round_trips_of_100_ms(&p).await;
        assert_eq!(p.snapshot().execution_in_window, Duration::from_secs(1));
        // The server charged 0.6 s of the 1 s the pacer measured.
        p.observe_remaining(None, Some(Duration::from_millis(99_400)));
        let s = p.snapshot();
        assert!((s.execution_scale - 0.6).abs() < 1e-9, "{s:?}");
        assert_eq!(s.execution_in_window, Duration::from_millis(600));
        // Never below half of the round trips, whatever the server says.
        p.observe_remaining(None, Some(Duration::from_millis(99_900)));
        assert_eq!(p.snapshot().execution_scale, MIN_EXECUTION_SCALE);
        assert_eq!(p.snapshot().execution_in_window, Duration::from_millis(500));
        // The whole budget left while the pacer counted use is a reset header: ignored.
        p.observe_remaining(None, Some(Duration::from_secs(100)));
        assert_eq!(p.snapshot().execution_scale, MIN_EXECUTION_SCALE);
        // Without a new hint the scale lapses with the window: round trips count in full again.
        tokio::time::sleep(Duration::from_secs(10)).await;
        ten_round_trips_of_100_ms(&p).await;
        let s = p.snapshot();
        assert_eq!(s.execution_scale, 1.0);
        assert_eq!(s.execution_in_window, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_scaled_count_admits_more_requests_when_execution_time_binds() {
        // 4 s of execution per window, half of it for background: 20 round trips of 100 ms.
        let p = pacer(1000, 10_000, 4_000);
        ten_round_trips_of_100_ms(&p).await;
        ten_round_trips_of_100_ms(&p).await;
        assert!(
            p.snapshot().background_delay > Duration::ZERO,
            "2 s measured: the background share is spent"
        );
        // The server charged half of the 2 s measured, so background may go again.
        p.observe_remaining(None, Some(Duration::from_secs(3)));
        assert_eq!(p.snapshot().background_delay, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_requests_are_too_few_to_scale_by() {
        let p = pacer(1000, 10_000, 100_000);
        for _ in 0..3 {
            let flight = p.admit(Priority::Live).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(flight);
        }
        p.observe_remaining(None, Some(Duration::from_millis(99_900)));
        assert_eq!(p.snapshot().execution_scale, 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waits_give_their_place_back() {
        let p = pacer(10, 1000, 1_000_000);
        for _ in 0..9 {
            drop(p.admit(Priority::Live).await);
        }
        // A live request that gives up waiting must not keep background requests back.
        let waiting =
            tokio::time::timeout(Duration::from_millis(10), p.admit(Priority::Live)).await;
        assert!(waiting.is_err());
        let r = p.reserve(Priority::Live);
        drop(r);
        assert_eq!(p.lock().live_waiting, 0);
        let unsent = {
            tokio::time::sleep(Duration::from_secs(1)).await;
            p.reserve(Priority::Live).await
        };
        assert_eq!(p.snapshot().requests_in_window, 1);
        drop(unsent);
        assert_eq!(p.snapshot().requests_in_window, 0);
    }
}
