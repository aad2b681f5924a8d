//! The crate's one error type and its predicates.

use std::fmt;
use std::time::Duration;

use cosell_http::http::StatusCode;
use cosell_http::{CredentialError, DecodeError, ServiceError, TransportError, TransportErrorKind};

/// Dataverse code for a stale ETag (`ConcurrencyVersionMismatch`).
pub const CODE_CONCURRENCY_VERSION_MISMATCH: &str = "0x80060882";
/// Dataverse code for a duplicate alternate-key value (`DuplicateRecordEntityKey`).
pub const CODE_DUPLICATE_RECORD_ENTITY_KEY: &str = "0x80060892";
/// Dataverse code for a SQL integrity violation (`DuplicateRecord`).
pub const CODE_DUPLICATE_RECORD: &str = "0x80040237";
/// Dataverse code for a row that does not exist (`ObjectDoesNotExist`).
pub const CODE_OBJECT_DOES_NOT_EXIST: &str = "0x80040217";
/// Dataverse code for an alternate key that matches no row (`RecordNotFoundByEntityKey`).
pub const CODE_RECORD_NOT_FOUND_BY_ENTITY_KEY: &str = "0x80060891";
/// Dataverse code for an expired change-tracking token (`ExpiredVersionStamp`).
pub const CODE_EXPIRED_VERSION_STAMP: &str = "0x80044352";
/// Service protection: too many requests in the 300-second window.
pub const CODE_THROTTLE_REQUESTS: &str = "0x80072322";
/// Service protection: combined execution time exceeded in the 300-second window.
pub const CODE_THROTTLE_EXECUTION_TIME: &str = "0x80072321";
/// Service protection: too many concurrent requests.
pub const CODE_THROTTLE_CONCURRENCY: &str = "0x80072326";

/// The message fragment Dataverse uses when a change-tracking token is too old.
const EXPIRED_VERSION_STAMP: &str = "version stamp associated with the client has expired";

/// Everything a [`DataverseClient`](crate::DataverseClient) call can fail with.
///
/// Branch on the predicates ([`is_precondition_failed`](Error::is_precondition_failed),
/// [`is_not_found`](Error::is_not_found), [`throttle_kind`](Error::throttle_kind), …) rather than on
/// the variants where you can.
///
/// ```
/// use dataverse_client::{Error, ThrottleKind};
/// use cosell_http::{ServiceError, http::{HeaderMap, StatusCode}};
///
/// let body = br#"{"error":{"code":"0x80072326","message":"Number of concurrent requests exceeded the limit of 52."}}"#;
/// let err = Error::from_service(ServiceError::from_response(
///     StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body));
/// assert!(err.is_throttled());
/// assert_eq!(err.throttle_kind(), Some(ThrottleKind::Concurrency));
/// assert_eq!(err.dataverse_code(), Some("0x80072326"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The service answered with an error status (other than 412 and an expired change token).
    #[error(transparent)]
    Service(ServiceError),
    /// HTTP 412: an `If-Match` ETag is stale, or an `If-None-Match: *` create found an existing
    /// row. Re-read and merge (or switch to update).
    #[error("precondition failed: {0}")]
    PreconditionFailed(ServiceError),
    /// The change-tracking token is older than the organization keeps changes for
    /// ("Version stamp associated with the client has expired"): run a full resync.
    #[error("change-tracking token expired, a full sync is needed: {0}")]
    ChangeTrackingExpired(ServiceError),
    /// The request could not be sent, or the response could not be read.
    #[error(transparent)]
    Transport(TransportError),
    /// No bearer token could be obtained.
    #[error(transparent)]
    Credential(CredentialError),
    /// A body did not have the expected shape; names the JSON path.
    #[error(transparent)]
    Decode(DecodeError),
    /// A `$batch` response could not be parsed.
    #[error(transparent)]
    Batch(BatchError),
    /// The call's input is unusable; nothing was sent.
    #[error(transparent)]
    InvalidRequest(InvalidRequest),
    /// The client is misconfigured.
    #[error(transparent)]
    Config(ConfigError),
}

/// Which service protection limit answered 429 (reference: "Service protection API limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ThrottleKind {
    /// `0x80072322`: more than 6,000 requests per user in 300 seconds.
    Requests,
    /// `0x80072321`: more than 20 minutes of combined execution time in 300 seconds.
    ExecutionTime,
    /// `0x80072326`: more than 52 concurrent requests (answered immediately).
    Concurrency,
    /// A 429 with another (or no) code.
    Other,
}

impl ThrottleKind {
    /// The kind for a Dataverse error code, if it is one of the three service protection codes.
    pub fn from_code(code: &str) -> Option<ThrottleKind> {
        let code = code.trim();
        if code.eq_ignore_ascii_case(CODE_THROTTLE_REQUESTS) {
            Some(ThrottleKind::Requests)
        } else if code.eq_ignore_ascii_case(CODE_THROTTLE_EXECUTION_TIME) {
            Some(ThrottleKind::ExecutionTime)
        } else if code.eq_ignore_ascii_case(CODE_THROTTLE_CONCURRENCY) {
            Some(ThrottleKind::Concurrency)
        } else {
            None
        }
    }
}

impl Error {
    /// Classifies a service error: 412, or the code `0x80060882` (ConcurrencyVersionMismatch)
    /// at any status, becomes [`Error::PreconditionFailed`]; the code `0x80044352`
    /// (ExpiredVersionStamp) or the expired change-tracking message becomes
    /// [`Error::ChangeTrackingExpired`]; anything else [`Error::Service`].
    ///
    /// Microsoft's Web API examples print some of these answers with an empty code ("Perform
    /// conditional operations") and the error code reference prints the codes ("Web service
    /// error codes"), so both the status and the code are enough.
    pub fn from_service(err: ServiceError) -> Self {
        let code_is = |k: &str| err.code().is_some_and(|c| c.trim().eq_ignore_ascii_case(k));
        if err.status() == StatusCode::PRECONDITION_FAILED
            || code_is(CODE_CONCURRENCY_VERSION_MISMATCH)
        {
            Error::PreconditionFailed(err)
        } else if code_is(CODE_EXPIRED_VERSION_STAMP)
            || err
                .message()
                .to_ascii_lowercase()
                .contains(EXPIRED_VERSION_STAMP)
        {
            Error::ChangeTrackingExpired(err)
        } else {
            Error::Service(err)
        }
    }

    /// The service's error, if the service answered.
    pub fn as_service(&self) -> Option<&ServiceError> {
        match self {
            Error::Service(e) | Error::PreconditionFailed(e) | Error::ChangeTrackingExpired(e) => {
                Some(e)
            }
            _ => None,
        }
    }

    /// The HTTP status of a service error.
    pub fn status(&self) -> Option<StatusCode> {
        self.as_service().map(ServiceError::status)
    }

    /// The Dataverse error code (`0x80060882`, …) when the service sent a non-empty one.
    pub fn dataverse_code(&self) -> Option<&str> {
        self.as_service()
            .and_then(ServiceError::code)
            .filter(|c| !c.trim().is_empty())
    }

    fn code_is(&self, codes: &[&str]) -> bool {
        self.dataverse_code()
            .is_some_and(|c| codes.iter().any(|k| c.trim().eq_ignore_ascii_case(k)))
    }

    /// Whether trying the same request again later may succeed (408, 429, 500, 502, 503, 504,
    /// retryable transport and credential failures).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Service(e) => e.is_retryable(),
            Error::Transport(e) => e.is_retryable(),
            Error::Credential(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// A duplicate: HTTP 409, or the codes `0x80060892` (DuplicateRecordEntityKey) or
    /// `0x80040237` (DuplicateRecord) at any status.
    ///
    /// A create-only upsert (`If-None-Match: *`) that finds the row answers 412, often with an
    /// empty code; that is [`is_precondition_failed`](Error::is_precondition_failed).
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(StatusCode::CONFLICT)
            || self.code_is(&[CODE_DUPLICATE_RECORD_ENTITY_KEY, CODE_DUPLICATE_RECORD])
    }

    /// HTTP 404, or the codes `0x80040217` (ObjectDoesNotExist) or `0x80060891`
    /// (RecordNotFoundByEntityKey) at any status.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
            || self.code_is(&[
                CODE_OBJECT_DOES_NOT_EXIST,
                CODE_RECORD_NOT_FOUND_BY_ENTITY_KEY,
            ])
    }

    /// HTTP 412 (stale ETag, or a create-only write that found the row).
    pub fn is_precondition_failed(&self) -> bool {
        matches!(self, Error::PreconditionFailed(_))
    }

    /// The change-tracking token expired; the caller must run a full resync.
    pub fn is_change_tracking_expired(&self) -> bool {
        matches!(self, Error::ChangeTrackingExpired(_))
    }

    /// A service protection limit answered (HTTP 429 or one of the three throttle codes).
    pub fn is_throttled(&self) -> bool {
        self.throttle_kind().is_some()
    }

    /// Which service protection limit answered, if any.
    pub fn throttle_kind(&self) -> Option<ThrottleKind> {
        let by_code = self.dataverse_code().and_then(ThrottleKind::from_code);
        match (by_code, self.status()) {
            (Some(kind), _) => Some(kind),
            (None, Some(StatusCode::TOO_MANY_REQUESTS)) => Some(ThrottleKind::Other),
            _ => None,
        }
    }

    /// The delay the service asked for with `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.as_service().and_then(ServiceError::retry_after)
    }

    /// Whether the service may have acted on the request even though no success was seen.
    pub fn may_have_been_sent(&self) -> bool {
        match self {
            Error::Transport(e) => e.may_have_been_sent(),
            Error::Service(e) => e.status().is_server_error(),
            Error::Decode(_) | Error::Batch(_) => true,
            _ => false,
        }
    }

    /// The `x-ms-client-request-id` sent with the request (same on every retry), when known.
    pub fn client_request_id(&self) -> Option<&str> {
        self.as_service().and_then(ServiceError::client_request_id)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidRequest(InvalidRequest::new(message))
    }

    pub(crate) fn decode(what: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Decode(DecodeError::new(what, path, message))
    }
}

impl From<cosell_http::Error> for Error {
    fn from(err: cosell_http::Error) -> Self {
        match err {
            cosell_http::Error::Service(e) => Error::from_service(e),
            cosell_http::Error::Transport(e) => Error::Transport(e),
            cosell_http::Error::Credential(e) => Error::Credential(e),
            cosell_http::Error::Decode(e) => Error::Decode(e),
            // cosell_http::Error is non-exhaustive; a future variant is reported as a transport
            // failure that may have reached the server (the cautious reading).
            other => Error::Transport(TransportError::new(
                TransportErrorKind::Other,
                true,
                other.to_string(),
            )),
        }
    }
}

impl From<DecodeError> for Error {
    fn from(err: DecodeError) -> Self {
        Error::Decode(err)
    }
}

impl From<BatchError> for Error {
    fn from(err: BatchError) -> Self {
        Error::Batch(err)
    }
}

impl From<InvalidRequest> for Error {
    fn from(err: InvalidRequest) -> Self {
        Error::InvalidRequest(err)
    }
}

impl From<ConfigError> for Error {
    fn from(err: ConfigError) -> Self {
        Error::Config(err)
    }
}

macro_rules! message_error {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            message: String,
        }

        impl $name {
            /// Creates one.
            pub fn new(message: impl Into<String>) -> Self {
                $name {
                    message: message.into(),
                }
            }

            /// What is wrong.
            pub fn message(&self) -> &str {
                &self.message
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, ": {}"), self.message)
            }
        }

        impl std::error::Error for $name {}
    };
}

message_error!(
    /// The input of a call is unusable (bad entity set name, header with a line break, empty key);
    /// nothing was sent.
    InvalidRequest,
    "invalid request"
);
message_error!(
    /// The client cannot be built as configured.
    ConfigError,
    "invalid configuration"
);
message_error!(
    /// A `$batch` body (multipart/mixed) is malformed.
    BatchError,
    "malformed $batch response"
);

#[cfg(test)]
mod tests {
    use super::*;
    use cosell_http::http::HeaderMap;

    fn service(status: u16, body: &str) -> Error {
        Error::from_service(ServiceError::from_response(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        ))
    }

    #[test]
    fn classification() {
        let e = service(
            412,
            r#"{"error":{"code":"0x80060882","message":"The version of the existing record doesn't match the RowVersion property provided."}}"#,
        );
        assert!(e.is_precondition_failed());
        assert_eq!(e.dataverse_code(), Some("0x80060882"));
        assert!(!e.is_conflict());

        let e = service(
            412,
            r#"{"error":{"code":"","message":"A record with matching key values already exists."}}"#,
        );
        assert!(e.is_precondition_failed());
        assert_eq!(e.dataverse_code(), None);

        let e = service(
            400,
            r#"{"error":{"code":"0x80060892","message":"Entity Key k violated."}}"#,
        );
        assert!(e.is_conflict());

        let e = service(
            400,
            r#"{"error":{"code":"0x80044153","message":"Version stamp associated with the client has expired. Please perform a full sync."}}"#,
        );
        assert!(e.is_change_tracking_expired());
        assert!(!e.is_retryable());

        let e = service(
            404,
            r#"{"error":{"code":"","message":"account With Id = 0000 Does Not Exist"}}"#,
        );
        assert!(e.is_not_found());
        assert_eq!(e.throttle_kind(), None);

        // The documented codes alone are enough, whatever the status (Web service error codes).
        for (status, code) in [(400, "0x80040217"), (400, "0x80060891")] {
            let e = service(
                status,
                &format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#),
            );
            assert!(e.is_not_found(), "{code}");
        }
        let e = service(400, r#"{"error":{"code":"0x80044352","message":"m"}}"#);
        assert!(e.is_change_tracking_expired());
        let e = service(400, r#"{"error":{"code":"0x80060882","message":"m"}}"#);
        assert!(e.is_precondition_failed());
        let e = service(400, r#"{"error":{"code":"0x80040237","message":"m"}}"#);
        assert!(e.is_conflict());

        for (code, kind) in [
            ("0x80072322", ThrottleKind::Requests),
            ("0x80072321", ThrottleKind::ExecutionTime),
            ("0x80072326", ThrottleKind::Concurrency),
            ("0x1", ThrottleKind::Other),
        ] {
            let e = service(
                429,
                &format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#),
            );
            assert_eq!(e.throttle_kind(), Some(kind));
            assert!(e.is_retryable());
        }
    }
}
