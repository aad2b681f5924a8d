//! A shared, adaptive concurrency limiter.
//!
//! One limiter per client, shared by every task using that client, so that a 429 slows all of
//! them down together instead of each retrying alone. Additive increase, multiplicative decrease:
//! every throttle halves the concurrency and pauses new requests until the server's
//! `Retry-After` has passed; a run of successes adds one slot back, up to the ceiling (which a
//! service can lower with a hint such as Dataverse's `x-ms-dop-hint`).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// A point-in-time view of a limiter, for status pages and benches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterSnapshot {
    /// Requests allowed in flight now.
    pub limit: usize,
    /// Requests in flight now.
    pub in_flight: usize,
    /// The ceiling the limit grows back to.
    pub max: usize,
    /// Throttle signals seen since creation.
    pub throttled: u64,
    /// Whether new requests are paused for a `Retry-After` right now.
    pub paused: bool,
}

#[derive(Debug)]
struct State {
    limit: usize,
    max: usize,
    min: usize,
    in_flight: usize,
    successes: usize,
    paused_until: Option<Instant>,
    throttled: u64,
}

/// Adaptive concurrency limiter shared across tasks (cheap to clone).
///
/// ```
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
/// # rt.block_on(async {
/// let limiter = cosell_http::AdaptiveLimiter::new(8);
/// let permit = limiter.acquire().await;
/// assert_eq!(limiter.snapshot().in_flight, 1);
/// limiter.on_throttled(std::time::Duration::from_millis(10));
/// assert_eq!(limiter.snapshot().limit, 4);
/// drop(permit);
/// # });
/// ```
#[derive(Clone)]
pub struct AdaptiveLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    notify: Notify,
}

impl fmt::Debug for AdaptiveLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AdaptiveLimiter")
            .field(&self.snapshot())
            .finish()
    }
}

/// A slot in the limiter; dropping it frees the slot.
#[derive(Debug)]
pub struct LimiterPermit {
    limiter: AdaptiveLimiter,
}

impl Drop for LimiterPermit {
    fn drop(&mut self) {
        {
            let mut s = self.limiter.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        self.limiter.inner.notify.notify_waiters();
    }
}

impl AdaptiveLimiter {
    /// A limiter starting at (and capped by) `max` concurrent requests (minimum 1).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        AdaptiveLimiter {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    limit: max,
                    max,
                    min: 1,
                    in_flight: 0,
                    successes: 0,
                    paused_until: None,
                    throttled: 0,
                }),
                notify: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another task panicked mid-update of plain counters; the
        // counters are still usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a free slot (and for any `Retry-After` pause to end).
    pub async fn acquire(&self) -> LimiterPermit {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let pause = {
                let mut s = self.lock();
                let now = Instant::now();
                match s.paused_until {
                    Some(until) if until > now => Some(until),
                    _ => {
                        s.paused_until = None;
                        if s.in_flight < s.limit {
                            s.in_flight += 1;
                            return LimiterPermit {
                                limiter: self.clone(),
                            };
                        }
                        None
                    }
                }
            };
            match pause {
                Some(until) => tokio::time::sleep_until(until).await,
                None => notified.await,
            }
        }
    }

    /// Records a success; enough of them in a row widen the limit by one.
    pub fn on_success(&self) {
        let grew = {
            let mut s = self.lock();
            s.successes += 1;
            if s.successes >= s.limit && s.limit < s.max {
                s.limit += 1;
                s.successes = 0;
                true
            } else {
                false
            }
        };
        if grew {
            self.inner.notify.notify_waiters();
        }
    }

    /// Records a throttle: halves the limit and pauses new requests for `retry_after`.
    pub fn on_throttled(&self, retry_after: Duration) {
        let mut s = self.lock();
        s.throttled += 1;
        s.successes = 0;
        s.limit = (s.limit / 2).max(s.min);
        let until = Instant::now() + retry_after;
        s.paused_until = Some(match s.paused_until {
            Some(existing) if existing > until => existing,
            _ => until,
        });
    }

    /// Applies a server hint for the recommended degree of parallelism (e.g. `x-ms-dop-hint`):
    /// the ceiling becomes the hint, and the current limit is clamped to it.
    pub fn set_max(&self, max: usize) {
        let mut s = self.lock();
        s.max = max.max(s.min);
        s.limit = s.limit.min(s.max);
    }

    /// How long new requests stay paused for a `Retry-After` (`None`: not paused). For status
    /// pages, gauges and progress estimates.
    pub fn pause_remaining(&self) -> Option<Duration> {
        let now = Instant::now();
        self.lock()
            .paused_until
            .filter(|u| *u > now)
            .map(|u| u - now)
    }

    /// The current state.
    pub fn snapshot(&self) -> LimiterSnapshot {
        let s = self.lock();
        LimiterSnapshot {
            limit: s.limit,
            in_flight: s.in_flight,
            max: s.max,
            throttled: s.throttled,
            paused: s.paused_until.is_some_and(|u| u > Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limit_bounds_concurrency_and_grows_back() {
        let l = AdaptiveLimiter::new(2);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        // A third caller waits until a slot frees.
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        let _c = waiter.await.unwrap();
        assert_eq!(l.snapshot().in_flight, 2);

        l.on_throttled(Duration::from_secs(1));
        assert_eq!(l.snapshot().limit, 1);
        l.on_success();
        assert_eq!(l.snapshot().limit, 2, "one success at limit 1 widens to 2");
        l.on_success();
        assert_eq!(l.snapshot().limit, 2, "never past the ceiling");
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_pauses_everyone_until_retry_after() {
        let l = AdaptiveLimiter::new(4);
        l.on_throttled(Duration::from_secs(5));
        let start = Instant::now();
        let p = l.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(5));
        drop(p);
        assert!(!l.snapshot().paused);
        assert_eq!(l.snapshot().throttled, 1);
    }

    #[test]
    fn dop_hint_clamps() {
        let l = AdaptiveLimiter::new(52);
        l.set_max(8);
        let s = l.snapshot();
        assert_eq!((s.limit, s.max), (8, 8));
        l.set_max(0);
        assert_eq!(l.snapshot().max, 1);
    }
}
