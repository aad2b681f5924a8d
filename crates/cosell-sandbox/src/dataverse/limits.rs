//! Service-protection limits as documented (reference §6.1): requests per sliding window,
//! combined execution time per sliding window, concurrent requests; 429 with `Retry-After`
//! and the three distinct codes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::error::codes;

/// The limits. Tests set tiny numbers; [`Default`] is Dataverse's documented defaults.
///
/// ```
/// use std::time::Duration;
/// use cosell_sandbox::dataverse::ServiceLimits;
/// let tight = ServiceLimits {
///     max_requests: 5,
///     request_window: Duration::from_secs(1),
///     ..ServiceLimits::default()
/// };
/// assert_eq!(ServiceLimits::default().max_concurrent, 52);
/// assert_eq!(tight.max_requests, 5);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceLimits {
    /// Whether limits are enforced at all (default true).
    pub enabled: bool,
    /// Requests allowed per `request_window` (default 6000). A `$batch` counts once.
    pub max_requests: u32,
    /// Sliding window of the request count (default 300 s).
    pub request_window: Duration,
    /// Combined execution time allowed per `execution_window` (default 1200 s).
    pub max_execution_time: Duration,
    /// Sliding window of the execution time (default 300 s).
    pub execution_window: Duration,
    /// Requests in flight at once (default 52); the 53rd is refused immediately.
    pub max_concurrent: u32,
    /// Emulated execution time of each operation (a `$batch` accrues it once per part), also
    /// spent as a real delay before the answer; `None` (default) measures the real handling
    /// time instead.
    pub operation_cost: Option<Duration>,
    /// A real delay added to every request while it holds a concurrency slot (default zero):
    /// makes the concurrency limit reachable in tests.
    pub processing_delay: Duration,
    /// A fixed `Retry-After`; `None` (default) computes it from the window.
    pub retry_after: Option<Duration>,
    /// The `x-ms-dop-hint` header value (recommended degree of parallelism, default 4).
    pub dop_hint: u32,
    /// Most operations in one `$batch` (default 1000).
    pub max_batch_operations: usize,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            enabled: true,
            max_requests: 6000,
            request_window: Duration::from_secs(300),
            max_execution_time: Duration::from_secs(1200),
            execution_window: Duration::from_secs(300),
            max_concurrent: 52,
            operation_cost: None,
            processing_delay: Duration::ZERO,
            retry_after: None,
            dop_hint: 4,
            max_batch_operations: 1000,
        }
    }
}

impl ServiceLimits {
    /// No limits enforced (headers are still sent).
    pub fn unlimited() -> Self {
        ServiceLimits {
            enabled: false,
            ..Self::default()
        }
    }
}

/// Which limit answered a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Number of requests (`0x80072322`).
    Requests,
    /// Combined execution time (`0x80072321`).
    ExecutionTime,
    /// Concurrent requests (`0x80072326`).
    Concurrency,
}

impl LimitKind {
    /// The hex error code.
    pub fn code(self) -> &'static str {
        match self {
            LimitKind::Requests => codes::THROTTLE_REQUESTS,
            LimitKind::ExecutionTime => codes::THROTTLE_TIME,
            LimitKind::Concurrency => codes::THROTTLE_CONCURRENCY,
        }
    }
}

/// Counts of 429s answered, per limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleCounts {
    /// Request-count refusals.
    pub requests: u64,
    /// Execution-time refusals.
    pub execution_time: u64,
    /// Concurrency refusals.
    pub concurrency: u64,
}

/// What the limiter has counted since it was created or last reset: the server-side numbers a
/// bench needs to compare a client's traffic with the ceiling the limits allow.
///
/// ```
/// use std::time::Duration;
/// use cosell_sandbox::dataverse::{LimitUsage, ServiceLimits};
/// let limits = ServiceLimits::default();
/// let usage = LimitUsage { requests: 6000, execution_time: Duration::from_secs(600), ..LimitUsage::default() };
/// // Half the execution-time budget for the whole request budget of one window.
/// assert!(usage.execution_time * 2 == limits.max_execution_time);
/// assert_eq!(usage.early_requests, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitUsage {
    /// Requests admitted, each counted toward the request limit (a `$batch` counts once).
    pub requests: u64,
    /// Operations executed by admitted requests (a `$batch` counts each part it ran).
    pub operations: u64,
    /// Execution time accrued toward the execution-time limit: `operations × operation_cost`
    /// when [`ServiceLimits::operation_cost`] is set, else the measured handling time.
    pub execution_time: Duration,
    /// 429s answered, per limit.
    pub throttled: ThrottleCounts,
    /// Requests (admitted or refused) that arrived before the `Retry-After` of an earlier 429
    /// had run out: a well-behaved client sends none. The emulator has one application user,
    /// so every request is that user's.
    pub early_requests: u64,
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Throttled {
    pub(crate) kind: LimitKind,
    pub(crate) message: String,
    pub(crate) retry_after: u64,
}

#[derive(Debug)]
struct State {
    cfg: ServiceLimits,
    requests: VecDeque<Instant>,
    executions: VecDeque<(Instant, Duration)>,
    in_flight: u32,
    counts: ThrottleCounts,
    /// Cumulative counters (requests, operations, execution time, early requests).
    usage: LimitUsage,
    /// When the latest `Retry-After` handed out runs out.
    retry_until: Option<Instant>,
}

/// The limiter (cheap to clone; clones share state).
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    state: Arc<Mutex<State>>,
}

/// A concurrency slot; released on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    limiter: Limiter,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.limiter.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

fn thousands(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl Limiter {
    pub(crate) fn new(cfg: ServiceLimits) -> Self {
        Limiter {
            state: Arc::new(Mutex::new(State {
                cfg,
                requests: VecDeque::new(),
                executions: VecDeque::new(),
                in_flight: 0,
                counts: ThrottleCounts::default(),
                usage: LimitUsage::default(),
                retry_until: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn config(&self) -> ServiceLimits {
        self.lock().cfg.clone()
    }

    pub(crate) fn set_config(&self, cfg: ServiceLimits) {
        self.lock().cfg = cfg;
    }

    /// Forgets the windows (not the configuration).
    pub(crate) fn reset(&self) {
        let mut s = self.lock();
        s.requests.clear();
        s.executions.clear();
        s.counts = ThrottleCounts::default();
        s.usage = LimitUsage::default();
        s.retry_until = None;
    }

    pub(crate) fn counts(&self) -> ThrottleCounts {
        self.lock().counts
    }

    pub(crate) fn usage(&self) -> LimitUsage {
        let s = self.lock();
        LimitUsage {
            throttled: s.counts,
            ..s.usage
        }
    }

    /// Zeroes the cumulative counters and throttle counts; the windows and a running
    /// `Retry-After` stay.
    pub(crate) fn reset_usage(&self) {
        let mut s = self.lock();
        s.usage = LimitUsage::default();
        s.counts = ThrottleCounts::default();
    }

    fn prune(s: &mut State, now: Instant) {
        let rw = s.cfg.request_window;
        while s
            .requests
            .front()
            .is_some_and(|t| now.duration_since(*t) >= rw)
        {
            s.requests.pop_front();
        }
        let ew = s.cfg.execution_window;
        while s
            .executions
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= ew)
        {
            s.executions.pop_front();
        }
    }

    /// Admits a request or says which limit refuses it.
    pub(crate) fn admit(&self) -> Result<Permit, Throttled> {
        let now = Instant::now();
        let mut s = self.lock();
        if s.retry_until.is_some_and(|until| now < until) {
            s.usage.early_requests += 1;
        }
        match Self::decide(&mut s, now) {
            Ok(()) => {
                s.usage.requests += 1;
                drop(s);
                Ok(Permit {
                    limiter: self.clone(),
                })
            }
            Err(t) => {
                // The client is told to wait `retry_after` whole seconds from now.
                let until = now + Duration::from_secs(t.retry_after);
                s.retry_until = Some(s.retry_until.map_or(until, |u| u.max(until)));
                Err(t)
            }
        }
    }

    fn decide(s: &mut State, now: Instant) -> Result<(), Throttled> {
        Self::prune(s, now);
        if s.cfg.enabled {
            let fixed = s.cfg.retry_after.map(ceil_secs);
            if s.in_flight >= s.cfg.max_concurrent {
                s.counts.concurrency += 1;
                return Err(Throttled {
                    kind: LimitKind::Concurrency,
                    message: format!(
                        "Number of concurrent requests exceeded the limit of {}.",
                        s.cfg.max_concurrent
                    ),
                    retry_after: fixed.unwrap_or(1),
                });
            }
            if s.requests.len() >= s.cfg.max_requests as usize {
                s.counts.requests += 1;
                let wait = s
                    .requests
                    .front()
                    .map(|t| (*t + s.cfg.request_window).saturating_duration_since(now))
                    .unwrap_or(s.cfg.request_window);
                return Err(Throttled {
                    kind: LimitKind::Requests,
                    message: format!(
                        "Number of requests exceeded the limit of {} over time window of {} seconds.",
                        s.cfg.max_requests,
                        s.cfg.request_window.as_secs()
                    ),
                    retry_after: fixed.unwrap_or_else(|| ceil_secs(wait)),
                });
            }
            let used: Duration = s.executions.iter().map(|(_, d)| *d).sum();
            if used > s.cfg.max_execution_time {
                s.counts.execution_time += 1;
                // Wait until enough of the window has slid out to get under the limit.
                let mut left = used;
                let mut wait = s.cfg.execution_window;
                for (t, d) in &s.executions {
                    left = left.saturating_sub(*d);
                    if left <= s.cfg.max_execution_time {
                        wait = (*t + s.cfg.execution_window).saturating_duration_since(now);
                        break;
                    }
                }
                return Err(Throttled {
                    kind: LimitKind::ExecutionTime,
                    message: format!(
                        "Combined execution time of incoming requests exceeded limit of {}  milliseconds over time window of {} seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later.",
                        thousands(s.cfg.max_execution_time.as_millis()),
                        s.cfg.execution_window.as_secs()
                    ),
                    retry_after: fixed.unwrap_or_else(|| ceil_secs(wait)),
                });
            }
        }
        s.requests.push_back(now);
        s.in_flight += 1;
        Ok(())
    }

    /// Records the execution time of a finished request: `operations × operation_cost` when a
    /// cost is configured, else `measured`.
    pub(crate) fn record(&self, operations: usize, measured: Duration) {
        let mut s = self.lock();
        let cost = match s.cfg.operation_cost {
            Some(c) => c.saturating_mul(u32::try_from(operations).unwrap_or(u32::MAX)),
            None => measured,
        };
        s.usage.operations += operations as u64;
        s.usage.execution_time = s.usage.execution_time.saturating_add(cost);
        s.executions.push_back((Instant::now(), cost));
    }

    /// The `x-ms-ratelimit-*` and `x-ms-dop-hint` header values.
    pub(crate) fn headers(&self) -> [(&'static str, String); 3] {
        let now = Instant::now();
        let mut s = self.lock();
        Self::prune(&mut s, now);
        let burst = (s.cfg.max_requests as usize).saturating_sub(s.requests.len());
        let used: Duration = s.executions.iter().map(|(_, d)| *d).sum();
        let left = s.cfg.max_execution_time.saturating_sub(used);
        let secs = left.as_secs_f64();
        let time = format!(
            "{}.{:02}",
            thousands(u128::from(left.as_secs())),
            ((secs.fract() * 100.0).floor() as u64).min(99)
        );
        [
            (
                "x-ms-ratelimit-burst-remaining-xrm-requests",
                burst.to_string(),
            ),
            ("x-ms-ratelimit-time-remaining-xrm-requests", time),
            ("x-ms-dop-hint", s.cfg.dop_hint.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_count_then_concurrency_then_time() {
        let l = Limiter::new(ServiceLimits {
            max_requests: 2,
            request_window: Duration::from_secs(1),
            ..ServiceLimits::default()
        });
        let a = l.admit().unwrap();
        drop(a);
        let _b = l.admit().unwrap();
        let e = l.admit().unwrap_err();
        assert_eq!(e.kind, LimitKind::Requests);
        assert_eq!(e.retry_after, 1);
        assert!(
            e.message
                .contains("limit of 2 over time window of 1 seconds")
        );

        let l = Limiter::new(ServiceLimits {
            max_concurrent: 1,
            ..ServiceLimits::default()
        });
        let p = l.admit().unwrap();
        assert_eq!(l.admit().unwrap_err().kind, LimitKind::Concurrency);
        drop(p);
        assert!(l.admit().is_ok());

        let l = Limiter::new(ServiceLimits {
            max_execution_time: Duration::from_secs(1),
            execution_window: Duration::from_secs(1),
            operation_cost: Some(Duration::from_millis(600)),
            ..ServiceLimits::default()
        });
        for _ in 0..2 {
            drop(l.admit().unwrap());
            l.record(1, Duration::ZERO);
        }
        let e = l.admit().unwrap_err();
        assert_eq!(e.kind, LimitKind::ExecutionTime);
        assert!(e.message.contains("1,000  milliseconds"), "{}", e.message);
        assert_eq!(l.counts().execution_time, 1);
    }

    #[test]
    fn headers_format() {
        let l = Limiter::new(ServiceLimits::default());
        let h = l.headers();
        assert_eq!(h[0].1, "6000");
        assert_eq!(h[1].1, "1,200.00");
        assert_eq!(h[2].1, "4");
    }
}
