//! The control API: Microsoft's side of the co-sell, as Rust functions (called by the methods of
//! [`PartnerCenterEmulator`]) and HTTP routes under `/_sandbox/` on the referrals host (no auth,
//! so `curl` works against a standalone sandbox).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde_json::{Map, Value, json};

use super::delivery::DeliveryFaults;
use super::error::ApiError;
use super::referrals::{insert_new, patched, stamp_new, write_update};
use super::seed::{make_incoming, merge, msx_id, request_body};
use super::{
    ControlError, MICROSOFT_ORGANIZATION_ID, PartnerCenterEmulator, Party, SANDBOX_ORGANIZATION_ID,
    SANDBOX_ORGANIZATION_NAME, Stored, format_timestamp, lifecycle,
};

fn as_object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn overrides_object(overrides: &Value) -> Result<(), ControlError> {
    if overrides.is_null() || overrides.is_object() {
        Ok(())
    } else {
        Err(ControlError {
            status: 400,
            message: "overrides must be a JSON object".into(),
        })
    }
}

pub(crate) fn create_incoming(
    pc: &PartnerCenterEmulator,
    overrides: Value,
) -> Result<Value, ControlError> {
    overrides_object(&overrides)?;
    let mut s = pc.lock();
    let mut body = request_body(&mut s.rng);
    body["type"] = json!("Shared");
    merge(&mut body, overrides);
    let mut body = as_object(body);
    let now = s.now();
    stamp_new(pc, &mut s, &mut body, now);
    make_incoming(&mut body, now);
    Ok(insert_new(
        pc,
        &mut s,
        Stored {
            party: Party::Ours,
            body,
        },
    ))
}

fn ours_or_error(pc: &PartnerCenterEmulator, id: &str) -> Result<Map<String, Value>, ControlError> {
    let s = pc.lock();
    match s.get(id) {
        None => Err(ApiError::not_found("referral", id).into()),
        Some(r) if r.party != Party::Ours => Err(ControlError {
            status: 400,
            message: format!("referral {id} is a related referral, not one of ours"),
        }),
        Some(r) => Ok(r.body.clone()),
    }
}

/// Microsoft's referral in an engagement, if there is one.
fn microsoft_referral(pc: &PartnerCenterEmulator, engagement: &str) -> Option<String> {
    let s = pc.lock();
    s.in_engagement(engagement)
        .iter()
        .filter_map(|i| s.referrals.get(*i))
        .find(|r| {
            r.party == Party::Other
                && r.body.get("engagementId").and_then(Value::as_str) == Some(engagement)
                && r.body.get("organizationId").and_then(Value::as_str)
                    == Some(MICROSOFT_ORGANIZATION_ID)
        })
        .and_then(|r| r.body.get("id").and_then(Value::as_str).map(str::to_string))
}

pub(crate) fn accept(
    pc: &PartnerCenterEmulator,
    id: &str,
    accepted: bool,
) -> Result<Value, ControlError> {
    let ours = ours_or_error(pc, id)?;
    let engagement = ours
        .get("engagementId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(existing) = microsoft_referral(pc, &engagement) {
        return Err(ControlError {
            status: 409,
            message: format!(
                "Microsoft already has referral {existing} in engagement {engagement}"
            ),
        });
    }
    let mut s = pc.lock();
    let msx = if accepted {
        let current = ours
            .get("trackingInfo")
            .and_then(|t| t.get("microsoftMsxId"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let msx = current.unwrap_or_else(|| msx_id(&mut s.rng));
        let mut new = ours.clone();
        set_msx(&mut new, &msx);
        write_update(pc, &mut s, id, new).map_err(ControlError::from)?;
        Some(msx)
    } else {
        None
    };
    let mut body = Map::new();
    for k in [
        "name",
        "customerProfile",
        "details",
        "consent",
        "type",
        "qualification",
    ] {
        if let Some(v) = ours.get(k) {
            body.insert(k.to_string(), v.clone());
        }
    }
    body.insert("engagementId".into(), Value::from(engagement));
    let now = s.now();
    stamp_new(pc, &mut s, &mut body, now);
    body.insert(
        "organizationId".into(),
        Value::from(MICROSOFT_ORGANIZATION_ID),
    );
    body.insert("organizationName".into(), Value::from("Microsoft"));
    body.insert("direction".into(), Value::from("Incoming"));
    body.insert(
        "inviteContext".into(),
        json!({ "invitedBy": { "organizationId": SANDBOX_ORGANIZATION_ID, "organizationName": SANDBOX_ORGANIZATION_NAME } }),
    );
    let ts = Value::from(format_timestamp(now));
    if accepted {
        body.insert("status".into(), Value::from("Active"));
        body.insert("substatus".into(), Value::from("Accepted"));
        body.insert("acceptedDateTime".into(), ts);
        if let Some(msx) = &msx {
            set_msx(&mut body, msx);
        }
    } else {
        body.insert("status".into(), Value::from("Closed"));
        body.insert("substatus".into(), Value::from("Declined"));
        body.insert(
            "statusReason".into(),
            Value::from("Microsoft declined the co-sell request."),
        );
        body.insert("closedDateTime".into(), ts);
    }
    Ok(insert_new(
        pc,
        &mut s,
        Stored {
            party: Party::Other,
            body,
        },
    ))
}

fn set_msx(body: &mut Map<String, Value>, msx: &str) {
    let tracking = body.entry("trackingInfo").or_insert(Value::Null);
    if !tracking.is_object() {
        *tracking = json!({});
    }
    if let Some(t) = tracking.as_object_mut() {
        t.insert("microsoftMsxId".into(), Value::from(msx));
    }
}

pub(crate) fn set_msx_id(
    pc: &PartnerCenterEmulator,
    id: &str,
    msx: Option<&str>,
) -> Result<Value, ControlError> {
    let mut s = pc.lock();
    let Some(current) = s.get(id).map(|r| r.body.clone()) else {
        return Err(ApiError::not_found("referral", id).into());
    };
    let msx = match msx {
        Some(m) => m.to_string(),
        None => msx_id(&mut s.rng),
    };
    let mut new = current;
    set_msx(&mut new, &msx);
    write_update(pc, &mut s, id, new)
        .map(Value::Object)
        .map_err(ControlError::from)
}

pub(crate) fn update_as_microsoft(
    pc: &PartnerCenterEmulator,
    id: &str,
    patch: &Value,
) -> Result<Value, ControlError> {
    let mut s = pc.lock();
    let new = patched(&s, id, patch, false)?;
    write_update(pc, &mut s, id, new)
        .map(Value::Object)
        .map_err(ControlError::from)
}

pub(crate) fn add_related(
    pc: &PartnerCenterEmulator,
    engagement: &str,
    overrides: Value,
) -> Result<Value, ControlError> {
    overrides_object(&overrides)?;
    let mut s = pc.lock();
    let known = s.in_engagement(engagement).iter().any(|i| {
        s.referrals.get(*i).is_some_and(|r| {
            r.party == Party::Ours
                && r.body.get("engagementId").and_then(Value::as_str) == Some(engagement)
        })
    });
    if !known {
        return Err(ApiError::not_found("engagement", engagement).into());
    }
    let mut body = request_body(&mut s.rng);
    body["type"] = json!("Shared");
    body["organizationId"] = json!(MICROSOFT_ORGANIZATION_ID);
    body["organizationName"] = json!("Microsoft");
    body["direction"] = json!("Incoming");
    body["status"] = json!("Active");
    body["substatus"] = json!("Accepted");
    merge(&mut body, overrides);
    let mut body = as_object(body);
    body.insert("engagementId".into(), Value::from(engagement));
    let now = s.now();
    let mut status_pair = lifecycle::pair(&body);
    lifecycle::check(&("New".into(), "Pending".into()), &mut body).map_err(|m| ControlError {
        status: 400,
        message: m,
    })?;
    stamp_new(pc, &mut s, &mut body, now);
    status_pair.0 = lifecycle::pair(&body).0;
    if status_pair.0 == "Active" {
        body.insert(
            "acceptedDateTime".into(),
            Value::from(format_timestamp(now)),
        );
    }
    Ok(insert_new(
        pc,
        &mut s,
        Stored {
            party: Party::Other,
            body,
        },
    ))
}

pub(crate) fn expire_pending(pc: &PartnerCenterEmulator) -> Vec<String> {
    let candidates: Vec<(String, Map<String, Value>)> = pc
        .lock()
        .referrals
        .iter()
        .filter(|r| {
            r.party == Party::Ours
                && r.body.get("direction").and_then(Value::as_str) == Some("Incoming")
                && r.body.get("status").and_then(Value::as_str) == Some("New")
        })
        .filter_map(|r| {
            r.body
                .get("id")
                .and_then(Value::as_str)
                .map(|id| (id.to_string(), r.body.clone()))
        })
        .collect();
    let mut s = pc.lock();
    candidates
        .into_iter()
        .filter_map(|(id, mut body)| {
            body.insert("status".into(), Value::from("Closed"));
            body.insert("substatus".into(), Value::from("Expired"));
            write_update(pc, &mut s, &id, body).ok().map(|_| id)
        })
        .collect()
}

// ----- HTTP routes --------------------------------------------------------------------------

pub(crate) fn router(pc: PartnerCenterEmulator) -> Router {
    Router::new()
        .route("/_sandbox/referrals", get(all_referrals))
        .route("/_sandbox/referrals/incoming", post(http_incoming))
        .route(
            "/_sandbox/referrals/{id}",
            get(one_referral).patch(http_update),
        )
        .route("/_sandbox/referrals/{id}/accept", post(http_accept))
        .route("/_sandbox/referrals/{id}/decline", post(http_decline))
        .route("/_sandbox/referrals/{id}/microsoft-crm-id", post(http_msx))
        .route(
            "/_sandbox/engagements/{engagement_id}/related-referrals",
            post(http_related),
        )
        .route("/_sandbox/expire-pending", post(http_expire))
        .route("/_sandbox/seed", post(http_seed))
        .route(
            "/_sandbox/deliveries",
            get(http_deliveries).delete(http_clear_deliveries),
        )
        .route(
            "/_sandbox/delivery-faults",
            get(http_get_faults)
                .put(http_set_faults)
                .delete(http_clear_faults),
        )
        .route("/_sandbox/certificate", get(http_certificate))
        .with_state(pc)
}

fn reply(result: Result<Value, ControlError>, ok: StatusCode) -> Response {
    match result {
        Ok(v) => (ok, axum::Json(v)).into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            let code = match status {
                StatusCode::NOT_FOUND => "itemNotFound",
                _ => "invalidRequest",
            };
            ApiError::new(status, code, e.message)
                .target("sandbox")
                .into_response()
        }
    }
}

/// Refuses a control body with a member other than `known`: a misspelt key must not be
/// silently ignored.
fn only_keys(body: &Value, known: &[&str]) -> Result<(), ControlError> {
    match body {
        Value::Null => Ok(()),
        Value::Object(o) => match o.keys().find(|k| !known.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) => Err(ControlError {
                status: 400,
                message: format!(
                    "unknown key `{k}` in the request body (known: {})",
                    known.join(", ")
                ),
            }),
        },
        other => Err(ControlError {
            status: 400,
            message: format!("the request body must be a JSON object, not `{other}`"),
        }),
    }
}

/// An optional JSON body: empty means `null`.
fn optional_json(body: &[u8]) -> Result<Value, ControlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| ControlError {
        status: 400,
        message: format!("The request body is not valid JSON: {e}"),
    })
}

async fn all_referrals(State(pc): State<PartnerCenterEmulator>) -> Response {
    axum::Json(pc.referrals()).into_response()
}

async fn one_referral(State(pc): State<PartnerCenterEmulator>, Path(id): Path<String>) -> Response {
    reply(
        pc.referral(&id)
            .ok_or_else(|| ApiError::not_found("referral", &id).into()),
        StatusCode::OK,
    )
}

async fn http_incoming(State(pc): State<PartnerCenterEmulator>, body: Bytes) -> Response {
    reply(
        optional_json(&body).and_then(|o| pc.create_incoming_referral(o)),
        StatusCode::CREATED,
    )
}

async fn http_update(
    State(pc): State<PartnerCenterEmulator>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    reply(
        optional_json(&body).and_then(|p| pc.update_as_microsoft(&id, p)),
        StatusCode::OK,
    )
}

async fn http_accept(State(pc): State<PartnerCenterEmulator>, Path(id): Path<String>) -> Response {
    reply(pc.microsoft_accept(&id), StatusCode::OK)
}

async fn http_decline(State(pc): State<PartnerCenterEmulator>, Path(id): Path<String>) -> Response {
    reply(pc.microsoft_decline(&id), StatusCode::OK)
}

async fn http_msx(
    State(pc): State<PartnerCenterEmulator>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result = optional_json(&body).and_then(|b| {
        only_keys(&b, &["microsoftMsxId"])?;
        let msx = b
            .get("microsoftMsxId")
            .and_then(Value::as_str)
            .map(str::to_string);
        pc.set_microsoft_crm_id(&id, msx.as_deref())
    });
    reply(result, StatusCode::OK)
}

async fn http_related(
    State(pc): State<PartnerCenterEmulator>,
    Path(engagement_id): Path<String>,
    body: Bytes,
) -> Response {
    reply(
        optional_json(&body).and_then(|o| pc.add_related_referral(&engagement_id, o)),
        StatusCode::CREATED,
    )
}

async fn http_expire(State(pc): State<PartnerCenterEmulator>) -> Response {
    axum::Json(json!({ "expired": pc.expire_pending() })).into_response()
}

async fn http_seed(State(pc): State<PartnerCenterEmulator>, body: Bytes) -> Response {
    let result = optional_json(&body).and_then(|b| {
        only_keys(&b, &["count"])?;
        let n = match b.get("count") {
            None => 10,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n <= 100_000)
                .ok_or_else(|| ControlError {
                    status: 400,
                    message: "`count` must be an integer from 0 to 100000".into(),
                })?,
        };
        Ok(json!({ "ids": pc.seed_referrals(n) }))
    });
    reply(result, StatusCode::CREATED)
}

async fn http_deliveries(State(pc): State<PartnerCenterEmulator>) -> Response {
    axum::Json(pc.deliveries()).into_response()
}

async fn http_clear_deliveries(State(pc): State<PartnerCenterEmulator>) -> Response {
    pc.clear_deliveries();
    StatusCode::NO_CONTENT.into_response()
}

async fn http_get_faults(State(pc): State<PartnerCenterEmulator>) -> Response {
    axum::Json(pc.delivery_faults()).into_response()
}

async fn http_set_faults(State(pc): State<PartnerCenterEmulator>, body: Bytes) -> Response {
    match serde_json::from_slice::<DeliveryFaults>(&body) {
        Ok(f) => {
            pc.set_delivery_faults(f);
            axum::Json(pc.delivery_faults()).into_response()
        }
        Err(e) => ApiError::invalid(format!("The body is not a delivery-fault object: {e}"))
            .target("sandbox")
            .into_response(),
    }
}

async fn http_clear_faults(State(pc): State<PartnerCenterEmulator>) -> Response {
    pc.clear_delivery_faults();
    StatusCode::NO_CONTENT.into_response()
}

async fn http_certificate(State(pc): State<PartnerCenterEmulator>) -> Response {
    axum::Json(json!({
        "certificateUrl": pc.certificate_url().to_string(),
        "rootCaPem": pc.root_ca_pem(),
        "checkedAt": format_timestamp(Utc::now()),
    }))
    .into_response()
}
