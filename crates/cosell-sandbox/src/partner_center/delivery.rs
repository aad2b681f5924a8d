//! Signed webhook callbacks: the registration, the delivery log, retries and delivery faults.
//!
//! Every change to a referral queues one callback per matching registered event. The body is the
//! documented PascalCase payload; it is signed once (RSA PKCS#1 v1.5 SHA-256 over the exact
//! bytes) and the same bytes are sent on every attempt. A delivery succeeds on any 2xx answer; it
//! is attempted up to [`DeliveryPolicy::max_attempts`] times (10, as production documents) with a
//! short doubling backoff, then given up ("moved to the offline queue").
//!
//! First attempts go out one at a time in the order the changes happened (unless the reorder
//! fault holds them back); retries run on their own so a dead receiver does not stall the queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

use super::{PartnerCenterEmulator, State, format_change_date};

/// The event names the webhook API lists at `GET /registration/events` (reference §4.1).
pub const SUPPORTED_EVENTS: &[&str] = &[
    "test-created",
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
    "subscription-updated",
    "usagerecords-thresholdExceeded",
    "invoice-ready",
    "azure-fraud-event-detected",
    "dap-admin-relationship-approved",
    "dap-admin-relationship-terminated",
    "dap-admin-relationship-terminated-by-microsoft",
    "reseller-relationship-accepted-by-customer",
    "indirect-reseller-relationship-accepted-by-customer",
    "granular-admin-relationship-approved",
    "granular-admin-relationship-activated",
    "granular-admin-relationship-terminated",
    "granular-admin-relationship-expired",
    "granular-admin-access-assignment-created",
    "granular-admin-access-assignment-activated",
    "granular-admin-access-assignment-updated",
    "granular-admin-access-assignment-deleted",
    "new-commerce-migration-created",
    "new-commerce-migration-completed",
    "new-commerce-migration-failed",
    "new-commerce-migration-schedule-failed",
];

/// The tenant's single webhook registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WebhookRegistration {
    /// Server-assigned subscriber id.
    pub subscriber_id: String,
    /// Where callbacks are posted.
    pub webhook_url: String,
    /// The registered event names.
    pub webhook_events: Vec<String>,
    /// Whether the signature travels in `x-ms-signature` instead of `Authorization`.
    pub signature_token_to_ms_signature_header: bool,
    /// When it was created or last replaced.
    pub last_modified_timestamp: DateTime<Utc>,
}

/// How deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Attempts per callback before giving up (default 10, as documented).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles after each failure (default 10 ms).
    pub initial_backoff: Duration,
    /// Longest wait between attempts (default 200 ms).
    pub max_backoff: Duration,
    /// Time allowed for one attempt (default 5 s).
    pub timeout: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Webhook delivery faults (HTTP faults of the APIs themselves are in [`crate::faults`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
// Unknown keys are refused: a misspelt fault (`{"drop_next": 1}`) must not silently do nothing.
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DeliveryFaults {
    /// Drop this many of the next deliveries (lost webhooks); counts down.
    pub drop_next: u32,
    /// Deliver every callback twice.
    pub duplicate: bool,
    /// Hold callbacks until this many are queued, then release them in reverse order
    /// (0 or 1: off). [`PartnerCenterEmulator::wait_for_deliveries`] releases a partial burst.
    pub reorder_window: usize,
    /// Turn each `referral-updated` into this many deliveries, as production does when one save
    /// fires several events (0 or 1: off).
    pub burst: u32,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DeliveryState {
    /// Queued, held, or waiting for a retry.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every attempt failed; no further attempts (production's "offline queue").
    Failed,
    /// Dropped by the lost-webhook fault; never sent.
    Dropped,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttempt {
    /// When the attempt finished.
    pub at: DateTime<Utc>,
    /// The receiver's status code, if an answer arrived.
    pub status: Option<u16>,
    /// The transport error, if none did.
    pub error: Option<String>,
}

/// One queued callback and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    /// Position in the log.
    pub id: usize,
    /// `referral-created`, `referral-updated`, `related-referral-*` or `test-created`.
    pub event_name: String,
    /// The `ResourceUri` of the payload.
    pub resource_uri: String,
    /// The referral id (or the test event's correlation id).
    pub resource_id: String,
    /// The URL the callback was sent to.
    pub webhook_url: String,
    /// The exact body sent (and signed).
    pub body: String,
    /// The header carrying the signature (`Authorization` or `x-ms-signature`) and its value.
    pub signature: (String, String),
    /// The attempts so far.
    pub attempts: Vec<DeliveryAttempt>,
    /// The outcome so far.
    pub state: DeliveryState,
    #[serde(skip)]
    pub(crate) hidden: bool,
}

/// A test event sent through `POST /registration/validationEvents`.
#[derive(Debug, Clone)]
pub(crate) struct Validation {
    pub(crate) delivery: Option<usize>,
    pub(crate) callback_url: String,
    pub(crate) created: DateTime<Utc>,
}

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(rename = "EventName")]
    event_name: &'a str,
    #[serde(rename = "ResourceUri")]
    resource_uri: &'a str,
    #[serde(rename = "ResourceName")]
    resource_name: &'a str,
    #[serde(rename = "AuditUri")]
    audit_uri: Option<&'a str>,
    #[serde(rename = "ResourceChangeUtcDate")]
    resource_change_utc_date: &'a str,
}

/// What to deliver.
pub(crate) struct Event<'a> {
    pub(crate) name: &'a str,
    pub(crate) resource_uri: String,
    pub(crate) resource_id: &'a str,
    pub(crate) resource_name: &'a str,
    pub(crate) changed: DateTime<Utc>,
}

/// Queues callbacks for `event` if the registration asks for it; applies the delivery faults
/// unless `with_faults` is false. Returns the ids of the records created.
pub(crate) fn emit(
    pc: &PartnerCenterEmulator,
    s: &mut State,
    event: &Event<'_>,
    with_faults: bool,
) -> Vec<usize> {
    let Some(reg) = s.registration.clone() else {
        return Vec::new();
    };
    if !reg
        .webhook_events
        .iter()
        .any(|e| e.eq_ignore_ascii_case(event.name))
    {
        return Vec::new();
    }
    let change = format_change_date(event.changed);
    let payload = Payload {
        event_name: event.name,
        resource_uri: &event.resource_uri,
        resource_name: event.resource_name,
        audit_uri: None,
        resource_change_utc_date: &change,
    };
    let body = match serde_json::to_string(&payload) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a callback");
            return Vec::new();
        }
    };
    let signature = match pc.inner.identity.as_ref() {
        Ok(identity) => identity.sign_base64(body.as_bytes()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let header = if reg.signature_token_to_ms_signature_header {
        "x-ms-signature"
    } else {
        "Authorization"
    };
    let mut copies: u32 = 1;
    if with_faults {
        if event.name == "referral-updated" && s.faults.burst > 1 {
            copies = s.faults.burst;
        }
        if s.faults.duplicate {
            copies = copies.saturating_mul(2);
        }
    }
    let mut ids = Vec::new();
    for _ in 0..copies {
        let id = s.deliveries.len();
        let dropped = with_faults && s.faults.drop_next > 0;
        if dropped {
            s.faults.drop_next -= 1;
        }
        s.deliveries.push(DeliveryRecord {
            id,
            event_name: event.name.to_string(),
            resource_uri: event.resource_uri.clone(),
            resource_id: event.resource_id.to_string(),
            webhook_url: reg.webhook_url.clone(),
            body: body.clone(),
            signature: (header.to_string(), format!("Signature {signature}")),
            attempts: Vec::new(),
            state: if dropped {
                DeliveryState::Dropped
            } else {
                DeliveryState::Pending
            },
            hidden: false,
        });
        ids.push(id);
        if dropped {
            continue;
        }
        pc.inner.pending.send_modify(|n| *n += 1);
        let window = if with_faults {
            s.faults.reorder_window
        } else {
            0
        };
        if window >= 2 {
            s.held.push(id);
            if s.held.len() >= window {
                release(pc, s);
            }
        } else {
            let _ = pc.inner.queue.send(id);
        }
    }
    ids
}

/// Releases held deliveries, newest first.
fn release(pc: &PartnerCenterEmulator, s: &mut State) {
    for id in s.held.drain(..).rev() {
        let _ = pc.inner.queue.send(id);
    }
}

/// Releases whatever the reorder fault is holding.
pub(crate) fn flush_held(pc: &PartnerCenterEmulator) {
    let mut s = pc.lock();
    release(pc, &mut s);
}

fn transport(
    pc: &PartnerCenterEmulator,
    timeout: Duration,
) -> Option<Arc<dyn cosell_http::HttpTransport>> {
    let mut slot = pc.inner.transport.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        match cosell_http::ReqwestTransport::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent("cosell-sandbox-webhooks")
            .build()
        {
            Ok(t) => *slot = Some(Arc::new(t)),
            Err(e) => tracing::error!(error = %e, "cannot build the delivery transport"),
        }
    }
    slot.clone()
}

/// Takes queued deliveries in order and makes their first attempt; failures retry on their own.
pub(crate) async fn worker(pc: PartnerCenterEmulator, mut rx: mpsc::UnboundedReceiver<usize>) {
    while let Some(id) = rx.recv().await {
        let done = attempt(&pc, id).await;
        if !done {
            let pc = pc.clone();
            tokio::spawn(async move { retry(pc, id).await });
        }
    }
}

async fn retry(pc: PartnerCenterEmulator, id: usize) {
    let policy = pc.lock().policy;
    let mut wait = policy.initial_backoff;
    loop {
        tokio::time::sleep(wait).await;
        if attempt(&pc, id).await {
            return;
        }
        wait = (wait * 2).min(policy.max_backoff);
    }
}

/// One attempt; returns whether the delivery is finished (delivered or given up).
async fn attempt(pc: &PartnerCenterEmulator, id: usize) -> bool {
    let (request, policy) = {
        let s = pc.lock();
        let Some(rec) = s.deliveries.get(id) else {
            return true;
        };
        if rec.state != DeliveryState::Pending {
            return true;
        }
        let cert_url = pc.certificate_url().to_string();
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(rec.webhook_url.as_str())
            // partner-center-webhooks, the sample delivery: `Content-Type: application/json`.
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(rec.signature.0.as_str(), rec.signature.1.as_str())
            .header("X-MS-Certificate-Url", cert_url)
            .header("X-MS-Signature-Algorithm", "rsa-sha256")
            .body(Bytes::from(rec.body.clone()));
        (request, s.policy)
    };
    let outcome: Result<u16, String> = match request {
        Err(e) => Err(format!("cannot build the request: {e}")),
        Ok(request) => match transport(pc, policy.timeout) {
            None => Err("no delivery transport".into()),
            Some(t) => match tokio::time::timeout(policy.timeout, t.send(request)).await {
                Err(_) => Err("timed out".into()),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(resp)) => Ok(resp.status().as_u16()),
            },
        },
    };
    let mut s = pc.lock();
    let max = policy.max_attempts.max(1) as usize;
    let Some(rec) = s.deliveries.get_mut(id) else {
        return true;
    };
    rec.attempts.push(DeliveryAttempt {
        at: Utc::now(),
        status: outcome.as_ref().ok().copied(),
        error: outcome.as_ref().err().cloned(),
    });
    let finished = match outcome {
        Ok(code) if (200..300).contains(&code) => {
            rec.state = DeliveryState::Delivered;
            true
        }
        _ if rec.attempts.len() >= max => {
            rec.state = DeliveryState::Failed;
            tracing::warn!(
                delivery = id,
                event = %rec.event_name,
                "callback given up after {max} attempts"
            );
            true
        }
        _ => false,
    };
    if finished {
        pc.inner.pending.send_modify(|n| *n = n.saturating_sub(1));
    }
    finished
}

/// The .NET `HttpStatusCode` name of a status, as the validation-event results report it.
pub(crate) fn status_name(code: u16) -> String {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "NoContent",
        301 => "MovedPermanently",
        302 => "Redirect",
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        408 => "RequestTimeout",
        409 => "Conflict",
        410 => "Gone",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        other => return other.to_string(),
    }
    .to_string()
}
