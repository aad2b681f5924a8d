//! Error plumbing shared by every client: the service's error body, transport and
//! credential failures, and decoding failures that name the JSON path.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::credential::CredentialError;
use crate::transport::TransportError;

/// How many bytes of an error body are kept for diagnostics. Error bodies can carry customer data,
/// so only a bounded prefix survives into the error value.
pub const MAX_ERROR_BODY: usize = 4096;

/// Everything that can go wrong sending one logical request through the [`Pipeline`](crate::Pipeline).
///
/// The predicates (`is_retryable`, `is_throttled`, …) are what callers branch on; the variants are
/// for reporting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The service answered with a non-success status.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The request could not be sent or the response could not be read.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// No bearer token could be obtained.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The response body did not have the expected shape.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl Error {
    /// The HTTP status of a service error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Service(e) => Some(e.status()),
            _ => None,
        }
    }

    /// The service's error, if the service answered.
    pub fn as_service(&self) -> Option<&ServiceError> {
        match self {
            Error::Service(e) => Some(e),
            _ => None,
        }
    }

    /// Whether trying the same request again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Service(e) => e.is_retryable(),
            Error::Transport(e) => e.is_retryable(),
            Error::Credential(e) => e.is_retryable(),
            Error::Decode(_) => false,
        }
    }

    /// Whether the service throttled the caller (HTTP 429).
    pub fn is_throttled(&self) -> bool {
        self.status() == Some(StatusCode::TOO_MANY_REQUESTS)
    }

    /// The delay the service asked for, if it sent `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.as_service().and_then(ServiceError::retry_after)
    }

    /// HTTP 404.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// HTTP 409.
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(StatusCode::CONFLICT)
    }

    /// HTTP 412: the `If-Match` / `If-None-Match` precondition failed (stale ETag).
    pub fn is_precondition_failed(&self) -> bool {
        self.status() == Some(StatusCode::PRECONDITION_FAILED)
    }

    /// HTTP 401.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(StatusCode::UNAUTHORIZED)
    }

    /// Whether the service may have acted on the request even though no success was seen.
    ///
    /// True for timeouts and lost responses, and for server errors; false when the request
    /// provably never left (connection refused, credential failure) or was rejected.
    pub fn may_have_been_sent(&self) -> bool {
        match self {
            Error::Transport(e) => e.may_have_been_sent(),
            Error::Service(e) => e.status().is_server_error(),
            Error::Credential(_) => false,
            // The service answered 2xx but we could not read the body: it acted.
            Error::Decode(_) => true,
        }
    }

    /// The request id the client sent (same on every retry), when known.
    pub fn client_request_id(&self) -> Option<&str> {
        self.as_service().and_then(ServiceError::client_request_id)
    }
}

/// An error answered by the service: the status, the parsed OData-style error body, and the ids
/// needed to report it.
#[derive(Clone)]
pub struct ServiceError {
    status: StatusCode,
    code: Option<String>,
    message: String,
    target: Option<String>,
    inner: Vec<(Option<String>, Option<String>)>,
    retry_after: Option<Duration>,
    request_id: Option<String>,
    client_request_id: Option<String>,
    body: String,
}

impl ServiceError {
    /// Builds a service error from a response's status, headers and body.
    ///
    /// Understands the OData error shape `{"error":{"code","message","target","innerError"}}`
    /// (both `innerError` and `innererror`), the Entra token-endpoint shape
    /// `{"error":"invalid_grant","error_description":"…"}`, the Partner Center REST shape
    /// `{"code","description","data","source"}` (the webhook API's) and the Partner Center
    /// throttling shape `{"statusCode":429,"message":"…"}`; anything else keeps a bounded copy
    /// of the body text.
    pub fn from_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        let parsed = parse_error_body(body);
        let text = String::from_utf8_lossy(body);
        let body = truncate(&text, MAX_ERROR_BODY);
        let message = parsed
            .message
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("unexpected status")
                    .to_string()
            });
        ServiceError {
            status,
            code: parsed.code.filter(|c| !c.is_empty()),
            message,
            target: parsed.target,
            inner: parsed.inner,
            retry_after: crate::retry::parse_retry_after(headers),
            request_id: header_str(headers, "request-id")
                .or_else(|| header_str(headers, "ms-requestid"))
                .or_else(|| header_str(headers, "x-ms-service-request-id"))
                .or_else(|| header_str(headers, "req_id")),
            client_request_id: header_str(headers, "client-request-id")
                .or_else(|| header_str(headers, "x-ms-client-request-id")),
            body,
        }
    }

    /// Records the client request id the pipeline sent (kept for reporting).
    pub fn with_client_request_id(mut self, id: impl Into<String>) -> Self {
        if self.client_request_id.is_none() {
            self.client_request_id = Some(id.into());
        }
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The service's error code (`preconditionFailed`, `0x80060882`, `invalid_grant`, …).
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The service's message, or the status reason when it sent none.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The OData error `target`, when present.
    pub fn target(&self) -> Option<&str> {
        self.target.as_deref()
    }

    /// Nested inner errors as `(code, message)`, outermost first.
    pub fn inner_errors(&self) -> &[(Option<String>, Option<String>)] {
        &self.inner
    }

    /// The delay the service asked for with `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The service's request id (`request-id`, `MS-RequestId`, …) from the response headers.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The client request id sent with the request.
    pub fn client_request_id(&self) -> Option<&str> {
        self.client_request_id.as_deref()
    }

    /// A bounded copy of the raw body, for diagnostics.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// Whether the same request may succeed later: 408, 429, 500, 502, 503, 504.
    pub fn is_retryable(&self) -> bool {
        matches!(self.status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
    }
}

impl fmt::Debug for ServiceError {
    // The body is left out of Debug on purpose: it may hold customer data, and the parsed code and
    // message are what a log needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceError")
            .field("status", &self.status)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("target", &self.target)
            .field("retry_after", &self.retry_after)
            .field("request_id", &self.request_id)
            .field("client_request_id", &self.client_request_id)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service answered {}", self.status.as_u16())?;
        if let Some(code) = &self.code {
            write!(f, " ({code})")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(target) = &self.target {
            write!(f, " [target: {target}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServiceError {}

/// A response body that could not be decoded into the expected type.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot decode {what} at `{path}`: {message}")]
pub struct DecodeError {
    what: String,
    path: String,
    message: String,
}

impl DecodeError {
    /// Creates a decode error for `what` (a type or resource name) at a JSON `path`.
    pub fn new(
        what: impl Into<String>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DecodeError {
            what: what.into(),
            path: path.into(),
            message: message.into(),
        }
    }

    /// What was being decoded.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The JSON path where decoding failed (`.` for the document root).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The decoder's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Decodes JSON into `T`, naming the JSON path of the first problem.
///
/// ```
/// #[derive(Debug, serde::Deserialize)]
/// struct Referral { _id: String }
/// let err = cosell_http::decode_json::<Referral>(br#"{"_id": 7}"#, "referral").unwrap_err();
/// assert_eq!(err.path(), "_id");
/// ```
pub fn decode_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, DecodeError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json messages quote offending values; keep them short so a huge string in a
        // payload cannot blow up a log line.
        DecodeError::new(what, path, truncate(&inner.to_string(), 300))
    })
}

#[derive(Default)]
struct ParsedErrorBody {
    code: Option<String>,
    message: Option<String>,
    target: Option<String>,
    inner: Vec<(Option<String>, Option<String>)>,
}

#[derive(Deserialize)]
struct ODataInner {
    code: Option<serde_json::Value>,
    message: Option<String>,
    target: Option<String>,
    #[serde(alias = "innererror", alias = "InnerError")]
    #[serde(rename = "innerError")]
    inner_error: Option<Box<ODataInner>>,
}

fn value_to_string(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn parse_error_body(body: &[u8]) -> ParsedErrorBody {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return ParsedErrorBody::default();
    };
    let mut out = ParsedErrorBody::default();
    match value.get("error") {
        Some(serde_json::Value::Object(_)) => {
            if let Ok(e) = serde_json::from_value::<ODataInner>(value["error"].clone()) {
                out.code = e.code.and_then(value_to_string);
                out.message = e.message;
                out.target = e.target;
                let mut next = e.inner_error;
                // Bounded walk: a hostile body must not make us loop forever.
                while let Some(inner) = next.take() {
                    if out.inner.len() >= 8 {
                        break;
                    }
                    out.inner
                        .push((inner.code.and_then(value_to_string), inner.message));
                    next = inner.inner_error;
                }
            }
        }
        Some(serde_json::Value::String(code)) => {
            out.code = Some(code.clone());
            out.message = value
                .get("error_description")
                .and_then(|v| v.as_str())
                .map(str::to_string);
        }
        _ => {
            // `description`: the Partner Center REST error shape `{code, description, data,
            // source}` (partner-center-sdk `develop/error-codes.md`), the webhook API's.
            out.message = value
                .get("message")
                .or_else(|| value.get("Message"))
                .or_else(|| value.get("description"))
                .or_else(|| value.get("Description"))
                .and_then(|v| v.as_str())
                .map(str::to_string);
            out.code = value
                .get("code")
                .cloned()
                .and_then(value_to_string)
                .or_else(|| value.get("statusCode").cloned().and_then(value_to_string));
        }
    }
    out
}

pub(crate) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16, body: &str) -> ServiceError {
        ServiceError::from_response(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn parses_odata_error_with_nested_inner_errors() {
        let e = service(
            412,
            r#"{"error":{"code":"preconditionFailed","message":"stale","target":"referral",
                "innerError":{"code":"a","message":"b","innererror":{"code":"c"}}}}"#,
        );
        assert_eq!(e.code(), Some("preconditionFailed"));
        assert_eq!(e.message(), "stale");
        assert_eq!(e.target(), Some("referral"));
        assert_eq!(
            e.inner_errors(),
            &[
                (Some("a".into()), Some("b".into())),
                (Some("c".into()), None)
            ]
        );
        assert_eq!(
            e.to_string(),
            "service answered 412 (preconditionFailed): stale [target: referral]"
        );
    }

    #[test]
    fn parses_entra_and_throttle_shapes_and_plain_text() {
        let e = service(
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS70008: expired"}"#,
        );
        assert_eq!(e.code(), Some("invalid_grant"));
        assert_eq!(e.message(), "AADSTS70008: expired");

        let e = service(
            429,
            r#"{"statusCode":429,"message":"Rate limit is exceeded."}"#,
        );
        assert_eq!(e.code(), Some("429"));
        assert!(e.is_retryable());

        let e = service(502, "<html>bad gateway</html>");
        assert_eq!(e.code(), None);
        assert_eq!(e.message(), "Bad Gateway");
        assert_eq!(e.body(), "<html>bad gateway</html>");
    }

    #[test]
    fn parses_the_partner_center_rest_shape_of_the_webhook_api() {
        // partner-center-sdk `develop/error-codes.md`: `{code, description, data, source}`.
        let e = service(
            409,
            r#"{"code":"800002","description":"Registration already exists, use the PUT method to update a registration.","data":[],"source":"PartnerCenter.Webhooks"}"#,
        );
        assert_eq!(e.code(), Some("800002"));
        assert_eq!(
            e.message(),
            "Registration already exists, use the PUT method to update a registration."
        );
        assert!(
            e.to_string()
                .contains("(800002): Registration already exists")
        );
        let e = service(404, r#"{"code":1000,"description":"Not found"}"#);
        assert_eq!((e.code(), e.message()), (Some("1000"), "Not found"));
    }

    #[test]
    fn body_is_bounded_and_not_in_debug() {
        let big = format!(
            r#"{{"error":{{"code":"x","message":"{}"}}}}"#,
            "é".repeat(5000)
        );
        let e = service(400, &big);
        assert!(e.body().len() <= MAX_ERROR_BODY + '…'.len_utf8());
        assert!(!format!("{e:?}").contains("body"));
    }

    #[test]
    fn decode_names_the_path() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            details: Inner,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            deal_value: f64,
        }
        let err =
            decode_json::<Outer>(br#"{"details":{"deal_value":"abc"}}"#, "referral").unwrap_err();
        assert_eq!(err.path(), "details.deal_value");
        assert!(
            err.to_string()
                .starts_with("cannot decode referral at `details.deal_value`")
        );
    }
}
