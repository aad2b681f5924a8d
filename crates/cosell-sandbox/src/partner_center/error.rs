//! The Partner Center error body, `{"error":{"code","message","target","innerError"}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::entra::AuthFailure;

/// An error answer of the emulated Partner Center APIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) target: &'static str,
    pub(crate) inner: Option<(&'static str, String)>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            target: "referral",
            inner: None,
        }
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
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
