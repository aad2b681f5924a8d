//! The Referrals API: `POST/GET /v1.0/engagements/referrals`, `GET/PATCH/PUT
//! /v1.0/engagements/referrals/{id}`, and `GET /v1.0/referrals` where `@odata.nextLink` points.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::delivery::{self, Event};
use super::error::ApiError;
use super::filter::{self, Filter};
use super::{
    PartnerCenterEmulator, Party, SANDBOX_MPN_ID, SANDBOX_ORGANIZATION_ID,
    SANDBOX_ORGANIZATION_NAME, State as PcState, Stored, format_timestamp, lifecycle, patch,
};
use crate::entra::REFERRALS_AUDIENCE;

/// Items per page (Partner REST get-a-list-of-referrals: "more than 100 items … use
/// `@odata.nextLink`").
pub(crate) const PAGE_SIZE: usize = 100;

/// The paths a partner may PATCH. Source: Power Platform connector "Partner Center Referrals"
/// (microsoft/PowerPlatformConnectors, `apiDefinition.swagger.json`), PatchReferralById `path`
/// enum. Anything else (`/inviteContext/...`, `/name`, ...) is refused with 400. Kept apart from
/// the client's own list on purpose: the emulator witnesses Microsoft's rule, not the client's.
const WRITABLE_PATHS: &[&str] = &[
    "/campaignId",
    "/consent/consentToShareReferralWithMicrosoftSellers",
    "/customerProfile/team",
    "/customerProfile/team/-",
    "/details/closingDateTime",
    "/details/currency",
    "/details/dealValue",
    "/details/notes",
    "/details/requirements/solutions",
    "/details/requirements/solutions/-",
    "/externalReferenceId",
    "/referralProgram",
    "/salesStage",
    "/status",
    "/substatus",
    "/statusReason",
    "/team",
    "/team/-",
];

/// Deal registrations are written through PATCH under `/registrations/` (same connector:
/// CreateDealRegistration / UpdateDealRegistration operations).
const REGISTRATION_PATHS: &str = "/registrations/";

/// The marketplace-intent attribute a create must carry. Source: learn.microsoft.com
/// partner-center/developer/create-a-referral ("minimal information required" example) and
/// Partner Center's bulk-operations page (the field is required; values Yes, No, Have not decided).
const MARKETPLACE_INTENT_TYPE: &str = "CustomerMarketplaceIntent";
/// The values of the marketplace intent (`HaveNotDecided` as in Microsoft's example).
const MARKETPLACE_INTENTS: &[&str] = &["Yes", "No", "HaveNotDecided"];

/// Top-level properties the server owns: refused in a PATCH, carried over in a PUT.
const SERVER_OWNED: &[&str] = &[
    "id",
    "engagementId",
    "eTag",
    "createdDateTime",
    "updatedDateTime",
    "acceptedDateTime",
    "closedDateTime",
    "expirationDateTime",
    "direction",
    "organizationId",
    "organizationName",
    "mpnId",
    "links",
    "trackingInfo",
    "registrationStatus",
    "quality",
    "isSpam",
    "@odata.context",
];

pub(crate) fn router(pc: PartnerCenterEmulator) -> Router {
    Router::new()
        .route("/v1.0/engagements/referrals", get(list).post(create))
        .route(
            "/v1.0/engagements/referrals/{id}",
            get(get_one).patch(patch_one).put(put_one),
        )
        // Production's next links drop `/engagements/`; serve them so links work verbatim.
        .route("/v1.0/referrals", get(list))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request_ids))
        .with_state(pc)
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "itemNotFound",
        "The requested resource was not found.",
    )
    .into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalidRequest",
        "The HTTP method is not supported on this resource.",
    )
    .into_response()
}

/// Adds `request-id`, echoes `client-request-id` and `MS-CorrelationId`.
async fn request_ids(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let client_request_id = req.headers().get("client-request-id").cloned();
    let correlation = req.headers().get("ms-correlationid").cloned();
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("request-id", v);
    }
    if let Some(v) = client_request_id {
        h.insert("client-request-id", v);
    }
    if let Some(v) = correlation {
        h.insert("ms-correlationid", v);
    }
    resp
}

fn auth(pc: &PartnerCenterEmulator, headers: &HeaderMap) -> Result<(), ApiError> {
    pc.context()
        .entra
        .check_delegated(headers, REFERRALS_AUDIENCE)
        .map_err(|f| ApiError::unauthenticated(&f))
}

/// A stored body as returned to clients.
pub(crate) fn representation(_pc: &PartnerCenterEmulator, body: &Map<String, Value>) -> Value {
    Value::Object(body.clone())
}

fn with_etag(mut resp: Response, body: &Map<String, Value>) -> Response {
    if let Some(tag) = body.get("eTag").and_then(Value::as_str)
        && let Ok(v) = HeaderValue::from_str(tag)
    {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("The request body is empty."));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("The request body is not valid JSON: {e}")))
}

fn guid_ok(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

// ----- validation shared by create, PATCH and PUT --------------------------------------------

/// Consent flags arrive in camelCase or PascalCase (the docs mix them); store camelCase.
fn normalise_consent(body: &mut Map<String, Value>) {
    let Some(Value::Object(consent)) = body.get_mut("consent") else {
        return;
    };
    let keys: Vec<String> = consent.keys().cloned().collect();
    for k in keys {
        let mut chars = k.chars();
        let Some(first) = chars.next() else { continue };
        if first.is_ascii_uppercase() {
            let camel = format!("{}{}", first.to_ascii_lowercase(), chars.as_str());
            if let Some(v) = consent.remove(&k) {
                consent.entry(camel).or_insert(v);
            }
        }
    }
}

fn canonical(value: &str, allowed: &[&'static str], field: &str) -> Result<&'static str, ApiError> {
    allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(value))
        .copied()
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "`{field}` has the value `{value}`; allowed values are {}.",
                allowed.join(", ")
            ))
        })
}

/// Checks the fields the API validates and normalises their spelling.
fn validate(body: &mut Map<String, Value>, create: bool) -> Result<(), ApiError> {
    normalise_consent(body);
    if create {
        // create-a-referral: `type`, `customerProfile`, `consent` and `details` are "Required".
        for field in ["customerProfile", "consent", "details"] {
            if !body.get(field).is_some_and(Value::is_object) {
                return Err(ApiError::invalid(format!(
                    "`{field}` is required and must be an object."
                )));
            }
        }
        if !body.get("type").is_some_and(Value::is_string) {
            return Err(ApiError::invalid(
                "`type` is required (Independent or Shared).",
            ));
        }
        let name_ok = body
            .get("customerProfile")
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .is_some_and(|n| !n.trim().is_empty());
        if !name_ok {
            return Err(ApiError::invalid("`customerProfile.name` is required."));
        }
        check_marketplace_intent(body)?;
    }
    if let Some(Value::String(t)) = body.get("type") {
        let t = canonical(t, &["None", "Independent", "Shared"], "type")?;
        body.insert("type".into(), Value::from(t));
    } else if body.get("type").is_some_and(|t| !t.is_null()) {
        return Err(ApiError::invalid("`type` must be a string."));
    }
    if let Some(Value::String(q)) = body.get("qualification") {
        let q = canonical(
            q,
            &["None", "Direct", "MarketingQualified", "SalesQualified"],
            "qualification",
        )?;
        body.insert("qualification".into(), Value::from(q));
    }
    if let Some(profile) = body.get("customerProfile")
        && !profile.is_null()
    {
        // referral-resources (ISO 3166 alpha-2) and the co-sell connector troubleshooting page
        // ("two-letter country code is required").
        let country = profile.get("address").and_then(|a| a.get("country"));
        match country {
            Some(Value::String(c)) if celes::Country::from_alpha2(c).is_ok() => {}
            Some(Value::String(c)) => {
                return Err(ApiError::invalid(format!(
                    "`customerProfile.address.country` is `{c}`; a two-letter ISO 3166 country code is required."
                )));
            }
            _ if create => {
                return Err(ApiError::invalid(
                    "`customerProfile.address.country` is required: a two-letter ISO 3166 country code.",
                ));
            }
            _ => {}
        }
    }
    if let Some(Value::Object(details)) = body.get_mut("details") {
        match details.get("dealValue") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_f64().is_some_and(|v| v >= 0.0) => {}
            Some(Value::String(s)) => match s.trim().parse::<f64>() {
                Ok(v) if v >= 0.0 && v.is_finite() => {
                    let n = if v.fract() == 0.0 && v < 9.0e15 {
                        Value::from(v as i64)
                    } else {
                        serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
                    };
                    details.insert("dealValue".into(), n);
                }
                _ => {
                    return Err(ApiError::invalid(format!(
                        "`details.dealValue` is `{s}`; a non-negative number is required."
                    )));
                }
            },
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "`details.dealValue` is `{other}`; a non-negative number is required."
                )));
            }
        }
        if let Some(Value::String(c)) = details.get("currency")
            && !(c.len() == 3 && c.chars().all(|ch| ch.is_ascii_alphabetic()))
        {
            return Err(ApiError::invalid(format!(
                "`details.currency` is `{c}`; an ISO 4217 currency code is required."
            )));
        }
    }
    Ok(())
}

/// A create must say the customer's marketplace purchase intent (create-a-referral "minimal
/// information required" example; bulk-operations page: required, Yes / No / Have not decided).
fn check_marketplace_intent(body: &Map<String, Value>) -> Result<(), ApiError> {
    let attributes = body
        .get("details")
        .and_then(|d| d.get("requirements"))
        .and_then(|r| r.get("additionalRequirements"))
        .and_then(|a| a.get("attributes"))
        .and_then(Value::as_array);
    let intent = attributes.into_iter().flatten().find(|a| {
        a.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case(MARKETPLACE_INTENT_TYPE))
    });
    let Some(intent) = intent else {
        return Err(ApiError::invalid(format!(
            "`details.requirements.additionalRequirements.attributes` must include the customer's marketplace intent: {{\"type\": \"{MARKETPLACE_INTENT_TYPE}\", \"id\": one of {}}}.",
            MARKETPLACE_INTENTS.join(", ")
        ))
        .inner("marketplaceIntentRequired", MARKETPLACE_INTENT_TYPE));
    };
    match intent.get("id").and_then(Value::as_str) {
        Some(v)
            if MARKETPLACE_INTENTS
                .iter()
                .any(|k| k.eq_ignore_ascii_case(v)) =>
        {
            Ok(())
        }
        other => Err(ApiError::invalid(format!(
            "The `{MARKETPLACE_INTENT_TYPE}` attribute has the id `{}`; allowed values are {}.",
            other.unwrap_or("null"),
            MARKETPLACE_INTENTS.join(", ")
        ))),
    }
}

fn links(pc: &PartnerCenterEmulator, id: &str, engagement_id: &str) -> Value {
    let base = pc.referrals_origin();
    json!({
        "relatedReferrals": {
            "uri": format!("{base}/v1.0/engagements/referrals?$filter=engagementId eq '{engagement_id}'"),
            "method": "GET"
        },
        "self": {
            "uri": format!("{base}/v1.0/engagements/referrals/{id}"),
            "method": "GET"
        }
    })
}

/// Fills the server-generated parts of a new referral: ids, eTag, timestamps, links, defaults.
pub(crate) fn stamp_new(
    pc: &PartnerCenterEmulator,
    s: &mut PcState,
    body: &mut Map<String, Value>,
    now: chrono::DateTime<chrono::Utc>,
) {
    let id = s.new_guid();
    let engagement = match body.get("engagementId").and_then(Value::as_str) {
        Some(e) if guid_ok(e) => e.to_string(),
        _ => s.new_guid(),
    };
    let ts = Value::from(format_timestamp(now));
    body.insert("id".into(), Value::from(id.clone()));
    body.insert("engagementId".into(), Value::from(engagement.clone()));
    body.insert("eTag".into(), Value::from(s.next_etag()));
    body.insert("createdDateTime".into(), ts.clone());
    body.insert("updatedDateTime".into(), ts);
    body.insert("links".into(), links(pc, &id, &engagement));
    let defaults = [
        ("name", Value::Null),
        ("externalReferenceId", Value::Null),
        ("statusReason", Value::Null),
        ("expirationDateTime", Value::Null),
        ("acceptedDateTime", Value::Null),
        ("closedDateTime", Value::Null),
        ("salesStage", Value::Null),
        ("campaignId", Value::Null),
        ("referralProgram", Value::Null),
        ("favorite", Value::Bool(false)),
        ("quality", Value::from("Unknown")),
        ("isSpam", Value::Bool(false)),
        ("dealSensitivity", Value::from("None")),
        ("registrationStatus", Value::from("None")),
        ("tags", json!([])),
        ("registrations", json!([])),
        ("team", json!([])),
        ("target", json!([])),
        (
            "trackingInfo",
            json!({
                "microsoftMsxId": null, "microsoftUSFedOpportunityId": null,
                "microsoftUSFedLeadId": null, "migratedPSCDealId": null,
                "migratedPSCPartnerDealId": null
            }),
        ),
    ];
    for (k, v) in defaults {
        let entry = body.entry(k.to_string()).or_insert(Value::Null);
        if entry.is_null() {
            *entry = v;
        }
    }
}

/// The event a change to a referral owned by `party` fires.
fn event_name(party: &Party, created: bool) -> &'static str {
    match (party, created) {
        (Party::Ours, true) => "referral-created",
        (Party::Ours, false) => "referral-updated",
        (Party::Other, true) => "related-referral-created",
        (Party::Other, false) => "related-referral-updated",
    }
}

/// Stores a new referral and fires its `*-created` event.
pub(crate) fn insert_new(pc: &PartnerCenterEmulator, s: &mut PcState, stored: Stored) -> Value {
    let id = stored
        .body
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let changed = s.now();
    let name = event_name(&stored.party, true);
    let out = Value::Object(stored.body.clone());
    s.insert(stored);
    delivery::emit(
        pc,
        s,
        &Event {
            name,
            resource_uri: pc.referral_url(&id),
            resource_id: &id,
            resource_name: "referral",
            changed,
        },
        true,
    );
    out
}

/// Validates and stores a new version of referral `id` (rules: terminal states are frozen, the
/// transition table, visibility is one-way), stamps it and fires its `*-updated` event.
pub(crate) fn write_update(
    pc: &PartnerCenterEmulator,
    s: &mut PcState,
    id: &str,
    mut new: Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    let Some(old) = s.get(id).cloned() else {
        return Err(ApiError::not_found("referral", id));
    };
    let from = lifecycle::pair(&old.body);
    // manage-co-sell-opportunities: "Expired, declined, won, and lost are terminal states".
    if lifecycle::is_terminal(&from.1) {
        return Err(ApiError::invalid(format!(
            "The referral is {}/{}, a terminal state: no further updates are possible.",
            from.0, from.1
        ))
        .inner(
            "referralClosed",
            "Expired, declined, won and lost are terminal states.",
        ));
    }
    validate(&mut new, false)?;
    lifecycle::check(&from, &mut new).map_err(|m| {
        ApiError::invalid(m).inner(
            "invalidStatusTransition",
            "Status and substatus must follow the allowed transitions.",
        )
    })?;
    let shared = |b: &Map<String, Value>| {
        b.get("consent")
            .and_then(|c| c.get("consentToShareReferralWithMicrosoftSellers"))
            .and_then(Value::as_bool)
    };
    // partner/develop/create-a-referral: visibility to Microsoft sellers cannot be revoked.
    if shared(&old.body) == Some(true) && shared(&new) == Some(false) {
        return Err(ApiError::invalid(
            "Visibility to Microsoft sellers cannot be revoked once granted (consentToShareReferralWithMicrosoftSellers).",
        ));
    }
    let now = s.now();
    let ts = Value::from(format_timestamp(now));
    let to = lifecycle::pair(&new);
    if to.0 == "Closed" && from.0 != "Closed" {
        new.insert("closedDateTime".into(), ts.clone());
    }
    if to.0 == "Active" && from.0 != "Active" {
        new.insert("acceptedDateTime".into(), ts.clone());
    }
    new.insert("updatedDateTime".into(), ts);
    new.insert("eTag".into(), Value::from(s.next_etag()));
    let engagement = new
        .get("engagementId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    new.insert("links".into(), links(pc, id, &engagement));
    s.replace_body(id, new.clone());
    delivery::emit(
        pc,
        s,
        &Event {
            name: event_name(&old.party, false),
            resource_uri: pc.referral_url(id),
            resource_id: id,
            resource_name: "referral",
            changed: now,
        },
        true,
    );
    Ok(new)
}

/// Applies a JSON Patch document to a copy of referral `id`; `guard` refuses server-owned paths.
pub(crate) fn patched(
    s: &PcState,
    id: &str,
    doc: &Value,
    guard: bool,
) -> Result<Map<String, Value>, ApiError> {
    let Some(old) = s.get(id) else {
        return Err(ApiError::not_found("referral", id));
    };
    let ops = patch::parse(doc).map_err(ApiError::invalid)?;
    if guard {
        for op in &ops {
            if let Some(first) = op.pointer.first()
                && let Some(owned) = SERVER_OWNED.iter().find(|k| k.eq_ignore_ascii_case(first))
            {
                return Err(ApiError::invalid(format!(
                    "`{}` cannot be changed: `{owned}` is set by Partner Center.",
                    op.path
                )));
            }
            // Connector PatchReferralById `path` enum: only these paths are writable.
            let writable = WRITABLE_PATHS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(&op.path))
                || op.path.starts_with(REGISTRATION_PATHS);
            if !writable {
                return Err(ApiError::invalid(format!(
                    "`{}` cannot be changed after creation; the writable paths are {}.",
                    op.path,
                    WRITABLE_PATHS.join(", ")
                ))
                .inner("pathNotWritable", op.path.clone()));
            }
            // Connector schema: `dealValue` is a decimal without `x-nullable`.
            if op.path.eq_ignore_ascii_case("/details/dealValue") && op.value.is_null() {
                return Err(ApiError::invalid(
                    "`/details/dealValue` cannot be null; a non-negative number is required.",
                ));
            }
        }
    }
    let mut value = Value::Object(old.body.clone());
    patch::apply(&mut value, &ops).map_err(ApiError::invalid)?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid("The patch did not produce an object.")),
    }
}

/// Whether an `If-Match` header value matches the current eTag (`*`, lists, weak tags and
/// missing quotes are tolerated).
fn etag_matches(header: &str, current: &str) -> bool {
    let norm = |t: &str| {
        let t = t.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        t.trim_matches('"').to_string()
    };
    let current = norm(current);
    header
        .split(',')
        .any(|t| t.trim() == "*" || norm(t) == current)
}

fn if_match(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| ApiError::invalid("The If-Match header is not valid text.")),
    }
}

// ----- handlers ---------------------------------------------------------------------------

async fn create(
    State(pc): State<PartnerCenterEmulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match create_inner(&pc, &headers, &body) {
        Ok(body) => {
            let id = body.get("id").and_then(Value::as_str).unwrap_or_default();
            let location = pc.referral_url(id);
            let mut resp =
                (StatusCode::CREATED, axum::Json(Value::Object(body.clone()))).into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            with_etag(resp, &body)
        }
        Err(e) => e.into_response(),
    }
}

fn create_inner(
    pc: &PartnerCenterEmulator,
    headers: &HeaderMap,
    raw: &[u8],
) -> Result<Map<String, Value>, ApiError> {
    auth(pc, headers)?;
    let Value::Object(mut body) = parse_json(raw)? else {
        return Err(ApiError::invalid(
            "The request body must be a referral (a JSON object).",
        ));
    };
    for k in ["links", "@odata.context", "eTag", "id"] {
        body.remove(k);
    }
    if let Some(e) = body.get("engagementId").and_then(Value::as_str)
        && !guid_ok(e)
    {
        return Err(ApiError::invalid(format!(
            "`engagementId` is `{e}`; a GUID is required."
        )));
    }
    validate(&mut body, true)?;
    // An outgoing referral is accepted on creation (the documented create example sends
    // New/Pending and gets Active/Accepted back); one created already closed stays closed.
    let (status, substatus) = lifecycle::pair(&body);
    let closed = lifecycle::is_closed(&status);
    if closed {
        lifecycle::check(&("New".into(), "Pending".into()), &mut body)
            .map_err(ApiError::invalid)?;
    } else {
        let _ = substatus;
        body.insert("status".into(), Value::from("Active"));
        body.insert("substatus".into(), Value::from("Accepted"));
    }
    let mut s = pc.lock();
    let now = s.now();
    stamp_new(pc, &mut s, &mut body, now);
    let ts = Value::from(format_timestamp(now));
    body.insert("acceptedDateTime".into(), ts.clone());
    if closed {
        body.insert("closedDateTime".into(), ts);
    }
    body.insert("direction".into(), Value::from("Outgoing"));
    body.insert(
        "organizationId".into(),
        Value::from(SANDBOX_ORGANIZATION_ID),
    );
    body.insert(
        "organizationName".into(),
        Value::from(SANDBOX_ORGANIZATION_NAME),
    );
    body.insert("mpnId".into(), Value::from(SANDBOX_MPN_ID));
    let invite = body.entry("inviteContext").or_insert_with(|| json!({}));
    if !invite.is_object() {
        *invite = json!({});
    }
    if let Some(invite) = invite.as_object_mut() {
        let by = invite.entry("invitedBy").or_insert(Value::Null);
        if by.is_null() {
            *by = json!({
                "organizationId": SANDBOX_ORGANIZATION_ID,
                "organizationName": SANDBOX_ORGANIZATION_NAME
            });
        }
    }
    let stored = Stored {
        party: Party::Ours,
        body: body.clone(),
    };
    insert_new(pc, &mut s, stored);
    Ok(body)
}

async fn get_one(
    State(pc): State<PartnerCenterEmulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = auth(&pc, &headers) {
        return e.into_response();
    }
    let Some(mut body) = pc.lock().get(&id).map(|s| s.body.clone()) else {
        return ApiError::not_found("referral", &id).into_response();
    };
    body.insert(
        "@odata.context".into(),
        Value::from(format!(
            "{}/v1.0/engagments/referrals/$metadata#Referrals/$entity",
            pc.referrals_origin()
        )),
    );
    with_etag(
        (StatusCode::OK, axum::Json(Value::Object(body.clone()))).into_response(),
        &body,
    )
}

fn check_writable(
    s: &PcState,
    id: &str,
    headers: &HeaderMap,
    require_if_match: bool,
) -> Result<(), ApiError> {
    let Some(stored) = s.get(id) else {
        return Err(ApiError::not_found("referral", id));
    };
    if stored.party != Party::Ours {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "accessDenied",
            "This referral belongs to another party of the engagement and cannot be changed.",
        ));
    }
    match if_match(headers)? {
        None if require_if_match => Err(ApiError::invalid(
            "The If-Match header is required: send the referral's eTag.",
        )),
        None => Ok(()),
        Some(tag) => {
            let current = stored
                .body
                .get("eTag")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if etag_matches(&tag, current) {
                Ok(())
            } else {
                Err(ApiError::precondition_failed())
            }
        }
    }
}

fn wants_representation(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("return=representation"))
}

async fn patch_one(
    State(pc): State<PartnerCenterEmulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result = (|| {
        auth(&pc, &headers)?;
        let doc = parse_json(&body)?;
        let mut s = pc.lock();
        check_writable(&s, &id, &headers, false)?;
        let new = patched(&s, &id, &doc, true)?;
        write_update(&pc, &mut s, &id, new)
    })();
    match result {
        Ok(body) if wants_representation(&headers) => with_etag(
            (StatusCode::OK, axum::Json(Value::Object(body.clone()))).into_response(),
            &body,
        ),
        Ok(body) => with_etag(StatusCode::NO_CONTENT.into_response(), &body),
        Err(e) => e.into_response(),
    }
}

async fn put_one(
    State(pc): State<PartnerCenterEmulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result = (|| {
        auth(&pc, &headers)?;
        let Value::Object(mut new) = parse_json(&body)? else {
            return Err(ApiError::invalid(
                "The request body must be a referral (a JSON object).",
            ));
        };
        if let Some(given) = new.get("id").and_then(Value::as_str)
            && !given.eq_ignore_ascii_case(&id)
        {
            return Err(ApiError::invalid(format!(
                "The body's `id` ({given}) does not match the URL ({id})."
            )));
        }
        let mut s = pc.lock();
        check_writable(&s, &id, &headers, true)?;
        let old = s.get(&id).map(|o| o.body.clone()).unwrap_or_default();
        for k in SERVER_OWNED {
            new.remove(*k);
            if let Some(v) = old.get(*k) {
                new.insert((*k).to_string(), v.clone());
            }
        }
        new.remove("@odata.context");
        write_update(&pc, &mut s, &id, new)
    })();
    match result {
        Ok(body) => with_etag(
            (StatusCode::OK, axum::Json(Value::Object(body.clone()))).into_response(),
            &body,
        ),
        Err(e) => e.into_response(),
    }
}

// ----- list -------------------------------------------------------------------------------

/// Stable sort of positions by `$orderby` keys (storage order among equals).
fn sort_by_keys(s: &PcState, hits: &mut [usize], keys: &[SortKey]) {
    let field = |i: usize, f: &str| -> &str {
        s.referrals
            .get(i)
            .and_then(|r| r.body.get(f))
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    hits.sort_by(|a, b| {
        for k in keys {
            // The fixed 7-digit UTC format sorts correctly as text.
            let ord = field(*a, k.field).cmp(field(*b, k.field));
            let ord = if k.desc { ord.reverse() } else { ord };
            if ord.is_ne() {
                return ord;
            }
        }
        std::cmp::Ordering::Equal
    });
}

/// What one listing's matches were computed from; while the referrals have not changed since,
/// the next page reuses them instead of evaluating the filter on every referral again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListKey {
    filter: Option<String>,
    orderby: Option<String>,
    show_related: bool,
    generation: u64,
}

/// [`matching_referrals`] through the state's one-entry cache.
fn cached_matches(
    s: &mut PcState,
    key: ListKey,
    filter: Option<&Filter>,
    keys: &[SortKey],
) -> std::sync::Arc<Vec<usize>> {
    if let Some((k, hits)) = &s.list_cache
        && *k == key
    {
        return hits.clone();
    }
    let hits = std::sync::Arc::new(matching_referrals(s, filter, keys, key.show_related));
    s.list_cache = Some((key, hits.clone()));
    hits
}

/// The positions of the referrals a listing returns, in its order. With no `$orderby` that is
/// storage order; with one key it walks the timestamp index (from the lower bound a
/// `… ge <date-time>` filter sets on that key, when there is one) instead of sorting; with more
/// it sorts, as before. An `engagementId eq …` filter starts from that engagement's referrals.
/// Every candidate is still checked against the whole filter, except where the filter is one
/// timestamp bound and the index answers it exactly.
fn matching_referrals(
    s: &PcState,
    filter: Option<&Filter>,
    keys: &[SortKey],
    show_related: bool,
) -> Vec<usize> {
    let visible = |i: &usize| {
        s.referrals
            .get(*i)
            .is_some_and(|r| r.party == Party::Ours || show_related)
    };
    let check = |i: &usize| {
        filter.is_none_or(|f| {
            s.referrals
                .get(*i)
                .is_some_and(|r| filter::matches_object(f, &r.body))
        })
    };
    // An engagement's referrals (what `links.relatedReferrals` lists) come from its index.
    if let Some(e) = filter
        .filter(|_| !s.odd_timestamps)
        .and_then(filter::engagement)
    {
        let mut hits: Vec<usize> = s
            .in_engagement(e)
            .iter()
            .copied()
            .filter(|i| visible(i) && check(i))
            .collect();
        sort_by_keys(s, &mut hits, keys);
        return hits;
    }
    // The index field to walk and the bound (as index text) the filter puts on it.
    let field = match keys {
        [] => "updatedDateTime",
        [k] => k.field,
        _ => "",
    };
    let bound = filter
        .filter(|_| !s.odd_timestamps && !field.is_empty())
        .and_then(|f| filter::lower_bound(f, field))
        .map(|(at, strict)| {
            let at = at.with_timezone(&chrono::Utc);
            // Truncating to the 100 ns grid only widens the range; the filter decides.
            let exact = at.timestamp_subsec_nanos() % 100 == 0;
            (format_timestamp(at), strict, exact)
        });
    let index = if field == "createdDateTime" {
        &s.by_created
    } else {
        &s.by_updated
    };
    let range =
        |b: &Option<(String, bool, bool)>| -> Box<dyn DoubleEndedIterator<Item = usize> + '_> {
            match b {
                Some((text, strict, _)) => {
                    let from = if *strict {
                        std::ops::Bound::Excluded((text.clone(), usize::MAX))
                    } else {
                        std::ops::Bound::Included((text.clone(), 0))
                    };
                    Box::new(
                        index
                            .range((from, std::ops::Bound::Unbounded))
                            .map(|(_, i)| *i),
                    )
                }
                None => Box::new(index.iter().map(|(_, i)| *i)),
            }
        };
    // The index answers a lone bound exactly: no need to evaluate it on each referral.
    let trusted = bound.as_ref().is_some_and(|(_, _, exact)| *exact)
        && filter.is_some_and(|f| filter::is_only_lower_bound(f, field));
    let keep = |i: &usize| visible(i) && (trusted || check(i));
    match keys {
        [] if bound.is_some() => {
            let mut positions: Vec<usize> = range(&bound).filter(keep).collect();
            positions.sort_unstable();
            positions
        }
        [] => (0..s.referrals.len())
            .filter(|i| visible(i) && check(i))
            .collect(),
        [k] if !k.desc => range(&bound).filter(keep).collect(),
        [_] => {
            // Descending, ties in storage order (as the stable sort this replaces kept them).
            let key_of = |i: usize| {
                s.referrals
                    .get(i)
                    .and_then(|r| r.body.get(field))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            };
            let mut out: Vec<usize> = Vec::new();
            let mut run: Vec<usize> = Vec::new();
            let mut run_key: Option<&str> = None;
            let flush = |run: &mut Vec<usize>, out: &mut Vec<usize>| {
                run.reverse();
                out.extend(run.drain(..).filter(keep));
            };
            for i in range(&bound).rev() {
                let k = key_of(i);
                if run_key != Some(k) {
                    flush(&mut run, &mut out);
                    run_key = Some(k);
                }
                run.push(i);
            }
            flush(&mut run, &mut out);
            out
        }
        _ => {
            let mut hits: Vec<usize> = (0..s.referrals.len())
                .filter(|i| visible(i) && check(i))
                .collect();
            sort_by_keys(s, &mut hits, keys);
            hits
        }
    }
}

/// What a `$skiptoken` carries: the query and the position (opaque to clients).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct Cursor {
    #[serde(rename = "f", default, skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    orderby: Option<String>,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    top: Option<usize>,
    #[serde(rename = "s", default)]
    skip: usize,
    #[serde(rename = "c", default)]
    count: bool,
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    select: Option<String>,
}

fn encode_cursor(c: &Cursor) -> String {
    let json = serde_json::to_vec(c).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(token: &str) -> Result<Cursor, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| ApiError::invalid("The $skiptoken is not valid."))
}

#[derive(Debug, Clone, Copy)]
struct SortKey {
    field: &'static str,
    desc: bool,
}

fn parse_orderby(raw: &str) -> Result<Vec<SortKey>, ApiError> {
    raw.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let mut words = part.split_whitespace();
            let field = words.next().unwrap_or_default();
            // get-a-list-of-referrals: `$orderby` on createdDateTime and updatedDateTime.
            let field = ["createdDateTime", "updatedDateTime"]
                .into_iter()
                .find(|f| f.eq_ignore_ascii_case(field))
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "$orderby on `{field}` is not supported (supported: createdDateTime, updatedDateTime)."
                    ))
                })?;
            let desc = match words.next() {
                None => false,
                Some(d) if d.eq_ignore_ascii_case("asc") => false,
                Some(d) if d.eq_ignore_ascii_case("desc") => true,
                Some(other) => {
                    return Err(ApiError::invalid(format!(
                        "$orderby direction `{other}` is not understood (asc or desc)."
                    )));
                }
            };
            if let Some(extra) = words.next() {
                return Err(ApiError::invalid(format!(
                    "$orderby: unexpected `{extra}`."
                )));
            }
            Ok(SortKey { field, desc })
        })
        .collect()
}

fn parse_query(raw: Option<&str>) -> Result<Cursor, ApiError> {
    let mut c = Cursor::default();
    let Some(raw) = raw else { return Ok(c) };
    let mut token = None;
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.to_ascii_lowercase().as_str() {
            "$filter" => c.filter = Some(v.into_owned()),
            "$orderby" => c.orderby = Some(v.into_owned()),
            "$select" => c.select = Some(v.into_owned()),
            "$top" => {
                c.top = Some(v.trim().parse().map_err(|_| {
                    ApiError::invalid(format!(
                        "$top is `{v}`; a non-negative integer is required."
                    ))
                })?)
            }
            "$skip" => {
                c.skip = v.trim().parse().map_err(|_| {
                    ApiError::invalid(format!(
                        "$skip is `{v}`; a non-negative integer is required."
                    ))
                })?
            }
            "$count" => {
                c.count = match v.trim() {
                    t if t.eq_ignore_ascii_case("true") => true,
                    t if t.eq_ignore_ascii_case("false") => false,
                    other => {
                        return Err(ApiError::invalid(format!(
                            "$count is `{other}`; true or false is required."
                        )));
                    }
                }
            }
            "$skiptoken" => token = Some(v.into_owned()),
            // $expand, $format and anything else: accepted and ignored.
            _ => {}
        }
    }
    match token {
        Some(t) => decode_cursor(&t),
        None => Ok(c),
    }
}

fn project(body: &Map<String, Value>, select: &str) -> Value {
    let wanted: Vec<&str> = select
        .split(',')
        .map(|f| f.trim().split('/').next().unwrap_or_default())
        .filter(|f| !f.is_empty())
        .collect();
    if wanted.is_empty() || wanted.contains(&"*") {
        return Value::Object(body.clone());
    }
    Value::Object(
        body.iter()
            .filter(|(k, _)| wanted.iter().any(|w| w.eq_ignore_ascii_case(k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

async fn list(
    State(pc): State<PartnerCenterEmulator>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    match list_inner(&pc, &headers, query.as_deref()) {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) fn list_inner(
    pc: &PartnerCenterEmulator,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Value, ApiError> {
    auth(pc, headers)?;
    let cursor = parse_query(query)?;
    let filter: Option<Filter> = match cursor.filter.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(f) => Some(
            filter::parse(f)
                .and_then(|parsed| filter::check_documented_members(&parsed).map(|()| parsed))
                .map_err(|e| {
                    ApiError::invalid(e.to_string()).inner("invalidFilter", format!("$filter={f}"))
                })?,
        ),
    };
    let keys = match cursor.orderby.as_deref() {
        Some(o) => parse_orderby(o)?,
        None => Vec::new(),
    };
    // Related referrals (other parties') show only when the filter names the engagement.
    let show_related = filter
        .as_ref()
        .is_some_and(|f| filter::mentions(f, "engagementId"));
    let mut s = pc.lock();
    let key = ListKey {
        filter: cursor.filter.clone(),
        orderby: cursor.orderby.clone(),
        show_related,
        generation: s.generation,
    };
    let positions = cached_matches(&mut s, key, filter.as_ref(), &keys);
    let hits: Vec<&Map<String, Value>> = positions
        .iter()
        .filter_map(|i| s.referrals.get(*i).map(|r| &r.body))
        .collect();
    let total = hits.len();
    // OData (and the connector's `$skip`/`$top` pair): skip first, then take `$top`.
    let start = cursor.skip.min(total);
    let end = cursor
        .top
        .map_or(total, |t| total.min(start.saturating_add(t)));
    let page_end = end.min(start.saturating_add(PAGE_SIZE));
    let value: Vec<Value> = hits
        .get(start..page_end)
        .unwrap_or_default()
        .iter()
        .map(|b| match cursor.select.as_deref() {
            Some(sel) => project(b, sel),
            None => Value::Object((*b).clone()),
        })
        .collect();
    let origin = pc.referrals_origin();
    let mut out = Map::new();
    out.insert(
        "@odata.context".into(),
        Value::from(format!("{origin}/v1.0/$metadata#Referrals")),
    );
    // Microsoft's list examples (get-a-list-of-referrals) carry `@odata.count` without `$count`.
    out.insert("@odata.count".into(), Value::from(total));
    out.insert("value".into(), Value::Array(value));
    if page_end < end {
        // The rest of the same window: from the end of this page, `$top` less what was sent.
        let next = Cursor {
            skip: page_end,
            top: cursor.top.map(|t| t.saturating_sub(page_end - start)),
            ..cursor
        };
        out.insert(
            "@odata.nextLink".into(),
            Value::from(format!(
                "{origin}/v1.0/referrals?$skiptoken={}",
                encode_cursor(&next)
            )),
        );
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_compare_tolerantly() {
        let cur = "\"00000001-0000-0200-0000-000000000001\"";
        assert!(etag_matches(cur, cur));
        assert!(etag_matches("00000001-0000-0200-0000-000000000001", cur));
        assert!(etag_matches(
            "W/\"00000001-0000-0200-0000-000000000001\"",
            cur
        ));
        assert!(etag_matches("*", cur));
        assert!(etag_matches(
            "\"x\", \"00000001-0000-0200-0000-000000000001\"",
            cur
        ));
        assert!(!etag_matches(
            "\"00000002-0000-0200-0000-000000000001\"",
            cur
        ));
    }

    #[test]
    fn cursors_round_trip_and_bad_tokens_are_refused() {
        let c = Cursor {
            filter: Some("status eq 'New'".into()),
            orderby: Some("createdDateTime desc".into()),
            top: Some(250),
            skip: 100,
            count: true,
            select: None,
        };
        assert_eq!(decode_cursor(&encode_cursor(&c)).unwrap(), c);
        assert!(decode_cursor("not a token!").is_err());
        assert!(decode_cursor("").is_err());
    }

    #[test]
    fn orderby_and_query_parsing() {
        assert!(parse_orderby("createdDateTime desc, updatedDateTime").is_ok());
        assert!(parse_orderby("name").is_err());
        assert!(parse_orderby("createdDateTime sideways").is_err());
        assert!(parse_query(Some("$top=abc")).is_err());
        assert!(parse_query(Some("$count=maybe")).is_err());
        let c = parse_query(Some("%24filter=status%20eq%20%27New%27&$top=5&$expand=x")).unwrap();
        assert_eq!(c.filter.as_deref(), Some("status eq 'New'"));
        assert_eq!(c.top, Some(5));
    }
}
