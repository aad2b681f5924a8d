//! The webhook registration API (`/webhooks/v1/registration…`) and the certificate host.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::delivery::{self, DeliveryState, Event, Validation, WebhookRegistration};
use super::error::ApiError;
use super::{CERTIFICATE_FILE, PartnerCenterEmulator, format_timestamp};
use crate::entra::WEBHOOKS_AUDIENCE;

const REGISTRATION_EXISTS: &str =
    "Registration already exists, use the PUT method to update a registration.";

pub(crate) fn router(pc: PartnerCenterEmulator) -> Router {
    Router::new()
        .route(
            "/webhooks/v1/registration",
            get(get_registration)
                .post(post_registration)
                .put(put_registration),
        )
        .route("/webhooks/v1/registration/events", get(events))
        .route(
            "/webhooks/v1/registration/validationEvents",
            post(send_test_event),
        )
        .route(
            "/webhooks/v1/registration/validationEvents/{correlation_id}",
            get(test_event_status),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(correlation_headers))
        .with_state(pc)
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "itemNotFound",
        "The requested resource was not found.",
    )
    .webhooks()
    .into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalidRequest",
        "The HTTP method is not supported on this resource.",
    )
    .webhooks()
    .into_response()
}

/// Echoes `MS-CorrelationId` and `MS-RequestId` (or makes them up), as the API does.
async fn correlation_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (correlation, request) = {
        let headers = req.headers();
        let pick = |name: &str| {
            headers.get(name).cloned().unwrap_or_else(|| {
                HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                    .unwrap_or(HeaderValue::from_static("0"))
            })
        };
        (pick("ms-correlationid"), pick("ms-requestid"))
    };
    let mut resp = next.run(req).await;
    resp.headers_mut().insert("ms-correlationid", correlation);
    resp.headers_mut().insert("ms-requestid", request);
    resp
}

fn auth(pc: &PartnerCenterEmulator, headers: &HeaderMap) -> Result<(), ApiError> {
    pc.context()
        .entra
        .check(headers, WEBHOOKS_AUDIENCE)
        .map_err(|f| ApiError::unauthenticated(&f).webhooks())?;
    // Partner Center REST headers page: `MS-Contract-Version` is required (`api-version: v1`).
    if headers.get("ms-contract-version").is_none() {
        return Err(
            ApiError::invalid("The MS-Contract-Version header is required (v1).").webhooks(),
        );
    }
    Ok(())
}

fn registration_body(reg: &WebhookRegistration) -> Value {
    json!({
        "SubscriberId": reg.subscriber_id,
        "WebhookUrl": reg.webhook_url,
        "WebhookEvents": reg.webhook_events,
        "SignatureTokenToMsSignatureHeader": reg.signature_token_to_ms_signature_header,
        "LastModifiedTimestamp": format_timestamp(reg.last_modified_timestamp),
    })
}

/// The validated content of a POST/PUT body.
struct RegistrationInput {
    url: String,
    events: Vec<String>,
    ms_signature_header: bool,
}

fn parse_registration(body: &[u8]) -> Result<RegistrationInput, ApiError> {
    let invalid = |m: String| ApiError::invalid(m).webhooks();
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("The request body is not valid JSON: {e}")))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| invalid("The request body must be a JSON object.".into()))?;
    let field = |name: &str| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let url = field("WebhookUrl")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("`WebhookUrl` is required.".into()))?;
    let parsed = url::Url::parse(url)
        .map_err(|e| invalid(format!("`WebhookUrl` is not an absolute URL: {e}")))?;
    // Production requires public HTTPS; the sandbox also accepts http (loopback receivers).
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(invalid("`WebhookUrl` must be an https URL.".into()));
    }
    let events = field("WebhookEvents")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`WebhookEvents` must be an array of event names.".into()))?;
    if events.is_empty() {
        return Err(invalid(
            "`WebhookEvents` must name at least one event.".into(),
        ));
    }
    let mut names = Vec::new();
    for e in events {
        let name = e
            .as_str()
            .ok_or_else(|| invalid("`WebhookEvents` must contain strings.".into()))?;
        let known = delivery::SUPPORTED_EVENTS
            .iter()
            .find(|k| k.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                invalid(format!(
                    "`{name}` is not a supported event; GET /webhooks/v1/registration/events lists them."
                ))
            })?;
        if !names.iter().any(|n: &String| n == known) {
            names.push((*known).to_string());
        }
    }
    let ms_signature_header = match field("SignatureTokenToMsSignatureHeader") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(invalid(
                "`SignatureTokenToMsSignatureHeader` must be a boolean.".into(),
            ));
        }
    };
    Ok(RegistrationInput {
        url: url.to_string(),
        events: names,
        ms_signature_header,
    })
}

async fn get_registration(State(pc): State<PartnerCenterEmulator>, headers: HeaderMap) -> Response {
    if let Err(r) = auth(&pc, &headers) {
        return r.into_response();
    }
    match pc.registration() {
        // "View a registration" (partner-center-webhooks page) returns the URL and the events
        // only: not the signature flag, so a client that writes the read-back again loses it.
        Some(reg) => (
            StatusCode::OK,
            axum::Json(json!({
                "WebhookUrl": reg.webhook_url,
                "WebhookEvents": reg.webhook_events,
            })),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "No webhook registration exists for this partner.",
        )
        .webhooks()
        .into_response(),
    }
}

async fn post_registration(
    State(pc): State<PartnerCenterEmulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_registration(pc, headers, body, false)
}

async fn put_registration(
    State(pc): State<PartnerCenterEmulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_registration(pc, headers, body, true)
}

fn write_registration(
    pc: PartnerCenterEmulator,
    headers: HeaderMap,
    body: Bytes,
    replace: bool,
) -> Response {
    if let Err(r) = auth(&pc, &headers) {
        return r.into_response();
    }
    let input = match parse_registration(&body) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let mut s = pc.lock();
    // partner-center-webhooks: one registration per partner; a second POST is 409.
    if !replace && s.registration.is_some() {
        return ApiError::new(StatusCode::CONFLICT, "invalidRequest", REGISTRATION_EXISTS)
            .webhooks()
            .into_response();
    }
    // PUT replaces (and, tolerantly, creates when none exists); the subscriber id is kept.
    let subscriber_id = match &s.registration {
        Some(r) => r.subscriber_id.clone(),
        None => s.new_guid(),
    };
    let now = s.now();
    let reg = WebhookRegistration {
        subscriber_id,
        webhook_url: input.url,
        webhook_events: input.events,
        signature_token_to_ms_signature_header: input.ms_signature_header,
        last_modified_timestamp: now,
    };
    s.registration = Some(reg.clone());
    (StatusCode::OK, axum::Json(registration_body(&reg))).into_response()
}

async fn events(State(pc): State<PartnerCenterEmulator>, headers: HeaderMap) -> Response {
    if let Err(r) = auth(&pc, &headers) {
        return r.into_response();
    }
    axum::Json(delivery::SUPPORTED_EVENTS).into_response()
}

async fn send_test_event(State(pc): State<PartnerCenterEmulator>, headers: HeaderMap) -> Response {
    if let Err(r) = auth(&pc, &headers) {
        return r.into_response();
    }
    let mut s = pc.lock();
    let Some(reg) = s.registration.clone() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "No webhook registration exists for this partner.",
        )
        .webhooks()
        .into_response();
    };
    // partner-center-webhooks: a test event needs the registration to include `test-created`.
    if !reg.webhook_events.iter().any(|e| e == "test-created") {
        return ApiError::invalid(
            "The registration does not include the `test-created` event; add it to send a test event.",
        )
        .webhooks()
        .into_response();
    }
    // partner-center-webhooks: test events have "a throttle limit of 2 requests per minute".
    if s.test_event_limit {
        let now = Instant::now();
        while s
            .test_events
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            s.test_events.pop_front();
        }
        if s.test_events.len() >= 2 {
            let wait = s
                .test_events
                .front()
                .map_or(60, |t| 60 - now.duration_since(*t).as_secs().min(59));
            let mut resp = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({
                    "statusCode": 429,
                    "message": format!("Rate limit is exceeded. Try again in {wait} seconds.")
                })),
            )
                .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return resp;
        }
        s.test_events.push_back(now);
    }
    let correlation_id = s.new_guid();
    let changed = s.now();
    let resource_uri = format!(
        "{}/webhooks/v1/registration/validationEvents/{correlation_id}",
        pc.webhooks_origin()
    );
    let ids = delivery::emit(
        &pc,
        &mut s,
        &Event {
            name: "test-created",
            resource_uri,
            resource_id: &correlation_id,
            resource_name: "test",
            changed,
        },
        false,
    );
    s.validations.insert(
        correlation_id.clone(),
        Validation {
            delivery: ids.first().copied(),
            callback_url: reg.webhook_url.clone(),
            created: changed,
        },
    );
    (
        StatusCode::OK,
        axum::Json(json!({ "correlationId": correlation_id })),
    )
        .into_response()
}

async fn test_event_status(
    State(pc): State<PartnerCenterEmulator>,
    headers: HeaderMap,
    Path(correlation_id): Path<String>,
) -> Response {
    if let Err(r) = auth(&pc, &headers) {
        return r.into_response();
    }
    let s = pc.lock();
    let Some(v) = s.validations.get(&correlation_id) else {
        return ApiError::not_found("validation event", &correlation_id)
            .webhooks()
            .into_response();
    };
    let record = v.delivery.and_then(|i| s.deliveries.get(i));
    let status = match record.map(|r| r.state) {
        Some(DeliveryState::Delivered) => "completed",
        Some(DeliveryState::Failed | DeliveryState::Dropped) | None => "failed",
        Some(DeliveryState::Pending) => "inProgress",
    };
    let results: Vec<Value> = record
        .map(|r| {
            r.attempts
                .iter()
                .map(|a| {
                    json!({
                        "responseCode": a.status.map_or_else(|| "None".to_string(), delivery::status_name),
                        "responseMessage": a.error.clone().unwrap_or_default(),
                        "systemError": a.status.is_none(),
                        "dateTimeUtc": format_timestamp(a.at).trim_end_matches('Z').to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    axum::Json(json!({
        "correlationId": correlation_id,
        "partnerId": super::SANDBOX_ORGANIZATION_ID,
        "status": status,
        "callbackUrl": v.callback_url,
        "createdDateTimeUtc": format_timestamp(v.created),
        "results": results,
    }))
    .into_response()
}

// ----- certificate host -------------------------------------------------------------------

/// The root CA's file names on the certificate host.
const ROOT_CA_PEM_FILE: &str = "sandbox-root-ca.pem";
const ROOT_CA_DER_FILE: &str = "sandbox-root-ca.cer";

pub(crate) fn certificates_router(pc: PartnerCenterEmulator) -> Router {
    Router::new()
        .route("/cert/{file}", get(certificate))
        .with_state(pc)
}

async fn certificate(
    State(pc): State<PartnerCenterEmulator>,
    Path(file): Path<String>,
) -> Response {
    let Ok(identity) = pc.inner.identity.as_ref() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no signing identity").into_response();
    };
    let (content_type, body) = match file.as_str() {
        CERTIFICATE_FILE => ("application/pkix-cert", identity.certificate_der().to_vec()),
        ROOT_CA_DER_FILE => ("application/pkix-cert", identity.ca_der().to_vec()),
        ROOT_CA_PEM_FILE => (
            "application/x-pem-file",
            identity.ca_pem().as_bytes().to_vec(),
        ),
        _ => return (StatusCode::NOT_FOUND, "The specified blob does not exist.").into_response(),
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
