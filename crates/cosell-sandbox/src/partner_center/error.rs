//! The Partner Center error bodies: the referrals API's `{"error":{"code","message","target",
//! "innerError"}}` and the webhook API's `{code, description, data, source}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::entra::AuthFailure;

/// The `source` of the sandbox's webhook API errors (the page documents the member, not its
/// values).
pub(crate) const WEBHOOK_ERROR_SOURCE: &str = "PartnerCenter.Webhooks";

/// An error answer of the emulated Partner Center APIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) target: &'static str,
    pub(crate) inner: Option<(&'static str, String)>,
    /// The body shape: the referrals API's or the webhook API's.
    pub(crate) shape: Shape,
}

/// Which of the two documented error bodies an answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Partner REST error-codes page (partner-rest `develop/error-codes.md`):
    /// `{"error": {code, message, target, innerError}}`.
    Referrals,
    /// Partner Center REST error-codes page (partner-center-sdk `develop/error-codes.md`), the
    /// webhook API's host: `{code, description, data, source}`.
    Webhooks,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            target: "referral",
            inner: None,
            shape: Shape::Referrals,
        }
    }

    /// The same error in the webhook API's shape, `{code, description, data, source}`.
    pub(crate) fn webhooks(mut self) -> Self {
        self.shape = Shape::Webhooks;
        self.target = "webhook";
        self
    }

    pub(crate) fn target(mut self, target: &'static str) -> Self {
        self.target = target;
        self
    }

    pub(crate) fn inner(mut self, code: &'static str, message: impl Into<String>) -> Self {
        self.inner = Some((code, message.into()));
        self
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalidRequest", message)
    }

    pub(crate) fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            format!("The {what} `{id}` was not found."),
        )
    }

    pub(crate) fn precondition_failed() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "preconditionFailed",
            "The resource has been modified since it was read: the If-Match ETag does not match the current ETag.",
        )
        .inner(
            "resourceModified",
            "Read the referral again and retry with its current eTag.",
        )
    }

    pub(crate) fn unauthenticated(failure: &AuthFailure) -> Self {
        match failure {
            AuthFailure::AppOnly => Self::new(
                StatusCode::UNAUTHORIZED,
                "unAuthorized",
                "Caller is not authorized to access the resource.",
            )
            .inner(
                "innerErrorCode",
                "This API supports only app+user (delegated) tokens; the token is app-only.",
            ),
            other => Self::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication failed: the bearer token is missing, invalid, expired or for another resource.",
            )
            .inner("innerErrorCode", other.to_string()),
        }
    }
}

/// The webhook API's numeric error code (sent as a string: the page types `code` as string) for
/// an answer. Partner Center REST error-codes page: 800002 "Invalid request input" (400), 400
/// "Access denied" (401), 1000 "Not found" (404). No code is documented for a webhook 405 or
/// 409: the HTTP status stands in.
fn webhook_code(status: StatusCode) -> String {
    match status.as_u16() {
        400 => "800002".into(),
        401 => "400".into(),
        404 => "1000".into(),
        other => other.to_string(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.shape == Shape::Webhooks {
            // Partner Center REST error-codes page: code and description "always returned",
            // data "only returned for some error types" (a list), source "always returned".
            let mut description = self.message;
            if let Some((_, inner)) = self.inner {
                description = format!("{description} {inner}");
            }
            let mut resp = (
                self.status,
                axum::Json(json!({
                    "code": webhook_code(self.status),
                    "description": description,
                    "data": [],
                    "source": WEBHOOK_ERROR_SOURCE,
                })),
            )
                .into_response();
            if self.status == StatusCode::UNAUTHORIZED {
                resp.headers_mut()
                    .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            }
            return resp;
        }
        let mut error = json!({
            "code": self.code,
            "message": self.message,
            "target": self.target,
        });
        if let Some((code, message)) = self.inner {
            error["innerError"] = json!({ "code": code, "message": message });
        }
        let mut resp = (self.status, axum::Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
