//! The crate's one error type.

use std::fmt;
use std::time::Duration;

use cosell_http::http::StatusCode;
use cosell_http::{CredentialError, DecodeError, ServiceError, TransportError, TransportErrorKind};

use crate::models::InvalidTransition;

/// Everything a [`PartnerCenterClient`](crate::PartnerCenterClient) call can fail with.
///
/// Branch on the predicates (`is_precondition_failed`, `is_retryable`, …) rather than on the
/// variants where you can.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The service answered with an error status (other than 412).
    #[error(transparent)]
    Service(ServiceError),
    /// HTTP 412: the `If-Match` eTag is stale; re-read the referral and merge.
    #[error("precondition failed (the eTag is stale): {0}")]
    PreconditionFailed(ServiceError),
    /// The request could not be sent, or the response could not be read.
    #[error(transparent)]
    Transport(TransportError),
    /// No bearer token could be obtained.
    #[error(transparent)]
    Credential(CredentialError),
    /// A body (response or request) did not have the expected shape; names the JSON path.
    #[error(transparent)]
    Decode(DecodeError),
    /// A status change the transition table forbids; nothing was sent.
    #[error(transparent)]
    InvalidTransition(InvalidTransition),
    /// The call's input is unusable (empty id, empty patch, bad URL); nothing was sent.
    #[error(transparent)]
    InvalidRequest(InvalidRequest),
    /// The client is misconfigured.
    #[error(transparent)]
    Config(ConfigError),
}

/// The input of a call is unusable; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest {
    message: String,
}

impl InvalidRequest {
    /// Creates one.
    pub fn new(message: impl Into<String>) -> Self {
        InvalidRequest {
            message: message.into(),
        }
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid request: {}", self.message)
    }
}

impl std::error::Error for InvalidRequest {}

/// The client cannot be built as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    /// Creates one.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
        }
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration error: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl From<cosell_http::Error> for Error {
    fn from(e: cosell_http::Error) -> Self {
        match e {
            cosell_http::Error::Service(s) if s.status() == StatusCode::PRECONDITION_FAILED => {
                Error::PreconditionFailed(s)
            }
            cosell_http::Error::Service(s) => Error::Service(s),
            cosell_http::Error::Transport(t) => Error::Transport(t),
            cosell_http::Error::Credential(c) => Error::Credential(c),
            cosell_http::Error::Decode(d) => Error::Decode(d),
            // A variant added to the pipeline later: report it as a failed request that may have
            // gone out, the cautious reading.
            other => Error::Transport(TransportError::new(
                TransportErrorKind::Request,
                true,
                other.to_string(),
            )),
        }
    }
}

impl From<InvalidTransition> for Error {
    fn from(e: InvalidTransition) -> Self {
        Error::InvalidTransition(e)
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Decode(e)
    }
}

impl From<InvalidRequest> for Error {
    fn from(e: InvalidRequest) -> Self {
        Error::InvalidRequest(e)
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl Error {
    /// The service's error (including a 412), if the service answered.
    pub fn service_error(&self) -> Option<&ServiceError> {
        match self {
            Error::Service(e) | Error::PreconditionFailed(e) => Some(e),
            _ => None,
        }
    }

    /// The HTTP status, if the service answered.
    pub fn status(&self) -> Option<StatusCode> {
        self.service_error().map(ServiceError::status)
    }

    /// Whether the same call may succeed later (408, 429, 5xx; transient transport and
    /// credential failures).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Service(e) => e.is_retryable(),
            Error::Transport(e) => e.is_retryable(),
            Error::Credential(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// HTTP 429.
    pub fn is_throttled(&self) -> bool {
        self.status() == Some(StatusCode::TOO_MANY_REQUESTS)
    }

    /// The delay the service asked for with `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.service_error().and_then(ServiceError::retry_after)
    }

    /// HTTP 404.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// HTTP 409 (for example: a webhook registration already exists).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(StatusCode::CONFLICT)
    }

    /// HTTP 412: the eTag sent in `If-Match` is stale.
    pub fn is_precondition_failed(&self) -> bool {
        matches!(self, Error::PreconditionFailed(_))
    }

    /// HTTP 401.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(StatusCode::UNAUTHORIZED)
    }

    /// Whether the service may have acted although no success was seen (timeouts, lost
    /// responses, 5xx, unreadable 2xx bodies). A create that fails this way must be reconciled
    /// (look the referral up by `externalReferenceId`) before it is tried again.
    pub fn may_have_been_sent(&self) -> bool {
        match self {
            Error::Service(e) => e.status().is_server_error(),
            Error::Transport(e) => e.may_have_been_sent(),
            Error::Decode(_) => true,
            _ => false,
        }
    }

    /// The client request id sent with the call (the same on every retry), when known.
    pub fn client_request_id(&self) -> Option<&str> {
        self.service_error()
            .and_then(ServiceError::client_request_id)
    }
}
