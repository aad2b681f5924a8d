//! Retry policy: which failures are retried, how long to wait, and when to give up.
//!
//! The server's `Retry-After` always wins over the computed backoff; backoff is exponential with
//! jitter (via `backon`), bounded by an attempt count and a total time budget.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use http::{HeaderMap, Method, StatusCode};

/// How the pipeline retries one logical request.
///
/// ```
/// use std::time::Duration;
/// let policy = cosell_http::RetryPolicy::default()
///     .with_max_attempts(6)
///     .with_max_elapsed(Duration::from_secs(120));
/// assert_eq!(policy.max_attempts(), 6);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_delay: Duration,
    max_delay: Duration,
    max_elapsed: Duration,
    max_retry_after: Duration,
    jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(300),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// No retries at all: one attempt.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Total attempts including the first (minimum 1; default 5).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// First backoff delay when the server gives no `Retry-After` (default 200 ms).
    pub fn with_initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }

    /// Largest computed backoff delay (default 30 s).
    pub fn with_max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Total time budget across attempts and waits (default 300 s). A wait that would pass the
    /// budget is not started; the last error is returned instead.
    pub fn with_max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = d;
        self
    }

    /// Longest server-requested `Retry-After` the pipeline will sleep through (default 300 s).
    /// A longer one is returned to the caller as a throttled error carrying the delay.
    pub fn with_max_retry_after(mut self, d: Duration) -> Self {
        self.max_retry_after = d;
        self
    }

    /// Randomise computed delays (default on). Off makes delays deterministic for tests.
    pub fn with_jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Total attempts including the first.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Total time budget.
    pub fn max_elapsed(&self) -> Duration {
        self.max_elapsed
    }

    /// Longest honoured `Retry-After`.
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// The computed (server-independent) backoff delays, one per retry.
    pub(crate) fn backoff(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize);
        if self.jitter {
            builder = builder.with_jitter();
        }
        builder.build()
    }
}

/// Whether a request may be repeated without risk of doing its work twice.
///
/// GET, HEAD, OPTIONS, PUT and DELETE are idempotent by HTTP's definition; POST and PATCH are not
/// unless the caller says so (a PATCH under `If-Match` is, since a repeat fails with 412).
pub fn is_idempotent_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// Whether a status may be retried for this request.
///
/// 429 and 503 mean "not processed, come back later" and are retried for every request; 408, 500,
/// 502 and 504 leave the outcome unknown, so only idempotent requests retry them.
pub(crate) fn status_is_retryable(status: StatusCode, idempotent: bool) -> bool {
    match status.as_u16() {
        429 | 503 => true,
        408 | 500 | 502 | 504 => idempotent,
        _ => false,
    }
}

/// Parses `Retry-After` as delta-seconds (fractions tolerated) or an HTTP-date.
///
/// ```
/// let mut h = http::HeaderMap::new();
/// h.insert("retry-after", "7".parse().unwrap());
/// assert_eq!(cosell_http::parse_retry_after(&h), Some(std::time::Duration::from_secs(7)));
/// ```
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        h.insert("retry-after", "0".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", "1.5".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(1500)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
        let future = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(future).parse().unwrap(),
        );
        let d = parse_retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&h), None);
        h.insert("retry-after", "-3".parse().unwrap());
        assert_eq!(parse_retry_after(&h), None);
    }

    #[test]
    fn classification_protects_non_idempotent_requests() {
        for s in [429, 503] {
            assert!(status_is_retryable(StatusCode::from_u16(s).unwrap(), false));
        }
        for s in [408, 500, 502, 504] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(status_is_retryable(s, true));
            assert!(!status_is_retryable(s, false));
        }
        for s in [400, 401, 404, 409, 412] {
            assert!(!status_is_retryable(StatusCode::from_u16(s).unwrap(), true));
        }
        assert!(is_idempotent_method(&Method::PUT));
        assert!(!is_idempotent_method(&Method::POST));
        assert!(!is_idempotent_method(&Method::PATCH));
    }

    #[test]
    fn backoff_without_jitter_doubles_up_to_the_cap() {
        let p = RetryPolicy::default()
            .with_jitter(false)
            .with_max_attempts(6)
            .with_initial_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_millis(500));
        // backon computes in floating point; compare whole milliseconds.
        let delays: Vec<u128> = p.backoff().map(|d| d.as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }
}
