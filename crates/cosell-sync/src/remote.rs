//! How the engine sees a failed remote call: a small classification it can branch on, whatever
//! service (or test double) produced it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// What kind of failure a remote call had, from the engine's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemoteErrorKind {
    /// The record does not exist.
    NotFound,
    /// The record changed since we read it (HTTP 412): re-read, merge, retry.
    PreconditionFailed,
    /// The write conflicts with existing data (duplicate key, registration exists).
    Conflict,
    /// The service throttled us; wait `retry_after`.
    Throttled,
    /// A transient failure that did not act on the request; retrying is safe.
    Transient,
    /// The request may or may not have taken effect (timeout, lost response, 5xx on a create):
    /// look before retrying.
    UnknownOutcome,
    /// The service refused the request as invalid (4xx); retrying the same request will fail.
    Rejected,
    /// Authentication or authorisation failed.
    Unauthorized,
    /// A change-feed cursor expired; a full read is needed.
    CursorExpired,
}

/// A failed remote call, classified.
#[derive(Debug, Clone)]
pub struct RemoteError {
    kind: RemoteErrorKind,
    service: &'static str,
    message: String,
    retry_after: Option<Duration>,
    /// The client error this was classified from, for `source()` chains (shared: `RemoteError`
    /// is `Clone`, the client errors are not).
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// Equal when kind, service, message and `retry_after` are; the source is not compared (the
/// message already carries its text).
impl PartialEq for RemoteError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.service == other.service
            && self.message == other.message
            && self.retry_after == other.retry_after
    }
}

impl Eq for RemoteError {}

impl RemoteError {
    /// A classified error from `service` (`partner-center`, `dataverse`, …).
    pub fn new(kind: RemoteErrorKind, service: &'static str, message: impl Into<String>) -> Self {
        RemoteError {
            kind,
            service,
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    /// Keeps `source` as the error's [`source()`](std::error::Error::source), so a report of
    /// the failure can walk down to the client's error (status, service error body, transport).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Adds the delay the service asked for.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> RemoteErrorKind {
        self.kind
    }

    /// The service that failed.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The message (the service's own text where it sent one).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The delay the service asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether this is a "not found".
    pub fn is_not_found(&self) -> bool {
        self.kind == RemoteErrorKind::NotFound
    }

    /// Whether trying again later may succeed (throttles, transient and unknown outcomes).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            RemoteErrorKind::Throttled
                | RemoteErrorKind::Transient
                | RemoteErrorKind::UnknownOutcome
        )
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?}): {}", self.service, self.kind, self.message)
    }
}

impl std::error::Error for RemoteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<partner_center_client::Error> for RemoteError {
    fn from(e: partner_center_client::Error) -> Self {
        use partner_center_client::Error as E;
        let kind = match &e {
            E::PreconditionFailed(_) => RemoteErrorKind::PreconditionFailed,
            E::InvalidTransition(_) | E::InvalidRequest(_) | E::Config(_) => {
                RemoteErrorKind::Rejected
            }
            E::Credential(_) => RemoteErrorKind::Unauthorized,
            _ if e.is_not_found() => RemoteErrorKind::NotFound,
            _ if e.is_conflict() => RemoteErrorKind::Conflict,
            _ if e.is_throttled() => RemoteErrorKind::Throttled,
            _ if e.is_unauthorized() || e.status().is_some_and(|s| s.as_u16() == 403) => {
                RemoteErrorKind::Unauthorized
            }
            _ if e.may_have_been_sent() => RemoteErrorKind::UnknownOutcome,
            _ if e.is_retryable() => RemoteErrorKind::Transient,
            _ => RemoteErrorKind::Rejected,
        };
        let retry_after = e.retry_after();
        RemoteError::new(kind, "partner-center", e.to_string())
            .with_retry_after(retry_after)
            .with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_error_stays_reachable_through_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e =
            RemoteError::new(RemoteErrorKind::Transient, "crm", "connection reset").with_source(io);
        let source = std::error::Error::source(&e).expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the io error itself");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
        // Cloning shares the source; equality ignores it.
        let copy = e.clone();
        assert!(std::error::Error::source(&copy).is_some());
        assert_eq!(
            copy,
            RemoteError::new(RemoteErrorKind::Transient, "crm", "connection reset")
        );
    }
}
