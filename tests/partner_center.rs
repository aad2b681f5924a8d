//! The Partner Center emulator over real HTTP on 127.0.0.1, driven raw (status codes, bodies,
//! headers) and through the real `partner_center_client` with the real credential code path.
//!
//! No test sleeps waiting for a webhook: they wait on the emulator's delivery log
//! (`wait_for_deliveries`) or on a channel, each under a timeout.

// Helpers outside `#[test]` functions panic on failure too: this is test code.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use cosell::http::bytes::Bytes;
use cosell::http::http::{self, HeaderMap, Method};
use cosell::http::{ClientSecretCredential, RefreshTokenCredential, RetryPolicy};
use cosell::http::{HttpTransport, ReqwestTransport};
use cosell::partner_center::PartnerCenterClient;
use cosell::partner_center::models::{PatchOperation, Referral, ReferralStatus, ReferralSubstatus};
use cosell::partner_center::webhook::registration::{WebhookEvent, WebhookRegistration};
use cosell::sandbox::Fault;
use cosell::sandbox::entra::{REFERRALS_AUDIENCE, WEBHOOKS_AUDIENCE};
use cosell::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use cosell::sandbox::partner_center::{DeliveryFaults, DeliveryPolicy, DeliveryState};
use cosell::sandbox::{Sandbox, Service};
use futures::TryStreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

// ----- helpers -------------------------------------------------------------------------------

/// A bare HTTP caller (the client's transport, no pipeline).
struct Raw {
    transport: ReqwestTransport,
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Raw {
    fn new() -> Self {
        Raw {
            transport: ReqwestTransport::new().expect("transport"),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut req = http::Request::builder().method(method).uri(url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        // The webhook API requires `MS-Contract-Version` (Partner Center REST headers page).
        if url.contains("/webhooks/v1/") {
            req = req.header("ms-contract-version", "v1");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Bytes::from(body.unwrap_or_default()))
            .expect("request");
        let resp = self.transport.send(req).await.expect("response");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn json(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Answer {
        self.send(
            method,
            url,
            token,
            headers,
            Some(serde_json::to_vec(body).expect("json")),
        )
        .await
    }
}

fn referrals_url(sandbox: &Sandbox, rest: &str) -> String {
    format!("{}{rest}", sandbox.urls().referrals)
}

fn webhooks_url(sandbox: &Sandbox, rest: &str) -> String {
    format!("{}{rest}", sandbox.urls().webhooks)
}

/// One callback as a receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A tiny callback receiver on 127.0.0.1:0; answers `status` (settable) and forwards what it got.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    rx: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let status = Arc::new(AtomicU16::new(200));
        let st = status.clone();
        let app = axum::Router::new().route(
            "/partner-center/webhook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                let st = st.clone();
                async move {
                    let _ = tx.send(Received { headers, body });
                    axum::http::StatusCode::from_u16(st.load(Ordering::SeqCst))
                        .unwrap_or(axum::http::StatusCode::OK)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/partner-center/webhook"),
            status,
            rx,
        }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a callback within the timeout")
            .expect("receiver open")
    }

    fn drain(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }
}

async fn wait_deliveries(sandbox: &Sandbox) {
    tokio::time::timeout(WAIT, sandbox.partner_center().wait_for_deliveries())
        .await
        .expect("deliveries idle within the timeout");
}

async fn register(sandbox: &Sandbox, raw: &Raw, url: &str, events: &[&str]) {
    let token = sandbox.entra().issue_access_token(WEBHOOKS_AUDIENCE);
    let a = raw
        .json(
            Method::PUT,
            &webhooks_url(sandbox, "registration"),
            Some(&token),
            &[],
            &json!({ "WebhookUrl": url, "WebhookEvents": events }),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

// ----- raw HTTP: referrals -------------------------------------------------------------------

#[tokio::test]
async fn raw_create_read_patch_put_and_concurrency() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let raw = Raw::new();
    let token = sandbox.entra().issue_access_token(REFERRALS_AUDIENCE);
    let t = Some(token.as_str());
    let mut request = sandbox.partner_center().generate_referral_request();
    request["status"] = json!("New");
    request["substatus"] = json!("Pending");
    request["myExtension"] = json!({ "kept": [1, 2, 3] });

    let created = raw
        .json(
            Method::POST,
            &referrals_url(&sandbox, "referrals"),
            t,
            &[],
            &request,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let r = created.body;
    let id = r["id"].as_str().expect("id").to_string();
    assert_eq!(r["status"], "Active");
    assert_eq!(r["substatus"], "Accepted");
    assert_eq!(r["direction"], "Outgoing");
    assert_eq!(r["acceptedDateTime"], r["createdDateTime"]);
    assert_eq!(r["myExtension"], json!({ "kept": [1, 2, 3] }));
    let created_at = r["createdDateTime"].as_str().expect("timestamp");
    assert_eq!(
        created_at.len(),
        "2024-02-23T02:05:23.2931817Z".len(),
        "{created_at}"
    );
    assert!(
        r["links"]["self"]["uri"]
            .as_str()
            .expect("link")
            .ends_with(&id)
    );
    let etag1 = r["eTag"].as_str().expect("etag").to_string();
    assert!(etag1.starts_with('"') && etag1.ends_with('"'));
    assert_eq!(
        created.headers.get("etag").and_then(|v| v.to_str().ok()),
        Some(etag1.as_str())
    );

    // GET by id carries the context and the same eTag.
    let got = raw
        .send(
            Method::GET,
            &referrals_url(&sandbox, &format!("referrals/{id}")),
            t,
            &[],
            None,
        )
        .await;
    assert_eq!(got.status, 200);
    assert!(got.body["@odata.context"].is_string());
    assert_eq!(got.body["eTag"], json!(etag1));

    // PATCH: numbers sent as strings are coerced; `add …/-` appends every time; 204 by default.
    let url = referrals_url(&sandbox, &format!("referrals/{id}"));
    let team_before = got.body["team"].as_array().map_or(0, Vec::len);
    let ops = json!([
        { "op": "replace", "path": "/details/dealValue", "value": "10000" },
        { "op": "add", "path": "/team/-", "value": { "email": "jane.doe@contoso.com", "firstName": "Jane", "lastName": "Doe" } }
    ]);
    let p = raw
        .json(Method::PATCH, &url, t, &[("if-match", &etag1)], &ops)
        .await;
    assert_eq!(p.status, 204, "{}", p.body);
    let etag2 = p
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("etag")
        .to_string();
    assert_ne!(etag1, etag2);
    let p = raw
        .json(
            Method::PATCH,
            &url,
            t,
            &[("prefer", "return=representation")],
            &ops,
        )
        .await;
    assert_eq!(p.status, 200);
    assert_eq!(p.body["details"]["dealValue"], json!(10000));
    assert_eq!(
        p.body["team"].as_array().map_or(0, Vec::len),
        team_before + 2
    );
    assert_eq!(p.body["myExtension"], json!({ "kept": [1, 2, 3] }));
    let etag3 = p.body["eTag"].as_str().expect("etag").to_string();
    assert_ne!(etag2, etag3);

    // A stale If-Match is refused with 412 and the documented body.
    let stale = raw
        .json(Method::PATCH, &url, t, &[("if-match", &etag1)], &ops)
        .await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.body["error"]["code"], "preconditionFailed");

    // Unsupported operations, server-owned paths, bad JSON: 400 with the error body.
    for (body, needle) in [
        (json!([{ "op": "remove", "path": "/team/0" }]), "replace"),
        (
            json!([{ "op": "replace", "path": "/eTag", "value": "x" }]),
            "set by Partner Center",
        ),
        (json!({ "op": "replace" }), "JSON Patch"),
    ] {
        let a = raw.json(Method::PATCH, &url, t, &[], &body).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.body["error"]["code"], "invalidRequest");
        assert!(
            a.body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{}",
            a.body
        );
    }
    let bad = raw
        .send(Method::PATCH, &url, t, &[], Some(b"[{".to_vec()))
        .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"]["code"], "invalidRequest");

    // Forbidden transition: Active -> New.
    let back = json!([{ "op": "replace", "path": "/status", "value": "New" }, { "op": "replace", "path": "/substatus", "value": "Pending" }]);
    let a = raw.json(Method::PATCH, &url, t, &[], &back).await;
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot move")
    );

    // PUT requires If-Match, replaces the body, keeps server-owned fields.
    let mut full = p.body.clone();
    full["details"]["notes"] = json!("replaced by PUT");
    full["links"] = json!({ "self": { "uri": "elsewhere" } });
    let no_match = raw.json(Method::PUT, &url, t, &[], &full).await;
    assert_eq!(no_match.status, 400);
    let put = raw
        .json(Method::PUT, &url, t, &[("if-match", &etag3)], &full)
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.body["details"]["notes"], "replaced by PUT");
    assert_eq!(put.body["id"], json!(id));
    assert_ne!(put.body["links"]["self"]["uri"], "elsewhere");
    let etag4 = put.body["eTag"].as_str().expect("etag").to_string();

    // Close as Won: terminal, frozen afterwards.
    let won = json!([{ "op": "replace", "path": "/status", "value": "Closed" }, { "op": "replace", "path": "/substatus", "value": "Won" }]);
    let a = raw
        .json(Method::PATCH, &url, t, &[("if-match", &etag4)], &won)
        .await;
    assert_eq!(a.status, 204, "{}", a.body);
    let again = raw
        .json(
            Method::PATCH,
            &url,
            t,
            &[],
            &json!([{ "op": "replace", "path": "/details/notes", "value": "late" }]),
        )
        .await;
    assert_eq!(again.status, 400);
    assert!(
        again.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("terminal")
    );

    // Unknown ids and unknown routes: 404 itemNotFound.
    let missing = raw
        .send(
            Method::GET,
            &referrals_url(&sandbox, "referrals/00000000-0000-0000-0000-000000000000"),
            t,
            &[],
            None,
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["code"], "itemNotFound");

    // Create validation: a three-letter country is refused.
    let mut bad = sandbox.partner_center().generate_referral_request();
    bad["customerProfile"]["address"]["country"] = json!("USA");
    let a = raw
        .json(
            Method::POST,
            &referrals_url(&sandbox, "referrals"),
            t,
            &[],
            &bad,
        )
        .await;
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("country")
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn raw_auth_is_app_plus_user_only() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let raw = Raw::new();
    let url = referrals_url(&sandbox, "referrals");
    let none = raw.send(Method::GET, &url, None, &[], None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.body["error"]["code"], "unauthenticated");
    let wrong = sandbox.entra().issue_access_token(WEBHOOKS_AUDIENCE);
    let a = raw.send(Method::GET, &url, Some(&wrong), &[], None).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.body["error"]["code"], "unauthenticated");
    // The webhook API takes the webhook audience and refuses the referrals one.
    let referrals_token = sandbox.entra().issue_access_token(REFERRALS_AUDIENCE);
    let a = raw
        .send(
            Method::GET,
            &webhooks_url(&sandbox, "registration/events"),
            Some(&referrals_token),
            &[],
            None,
        )
        .await;
    assert_eq!(a.status, 401);
    let a = raw
        .send(
            Method::GET,
            &webhooks_url(&sandbox, "registration/events"),
            Some(&wrong),
            &[],
            None,
        )
        .await;
    assert_eq!(a.status, 200);
    assert!(
        a.body
            .as_array()
            .is_some_and(|e| e.contains(&json!("referral-updated")))
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn raw_list_pages_filters_and_follows_next_links_verbatim() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let raw = Raw::new();
    let token = sandbox.entra().issue_access_token(REFERRALS_AUDIENCE);
    let t = Some(token.as_str());
    let pc = sandbox.partner_center();
    pc.seed_referrals(250);
    let all = pc.referrals();
    let expected_active = all.iter().filter(|r| r["status"] == "Active").count();

    let mut url = format!(
        "{}?$filter=status%20eq%20%27Active%27&$count=true&$orderby=createdDateTime%20desc",
        referrals_url(&sandbox, "referrals")
    );
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let a = raw.send(Method::GET, &url, t, &[], None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        pages += 1;
        assert_eq!(a.body["@odata.count"], json!(expected_active));
        let items = a.body["value"].as_array().cloned().unwrap_or_default();
        assert!(items.len() <= 100);
        seen.extend(items);
        match a.body["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(next.contains("/v1.0/referrals?$skiptoken="), "{next}");
                url = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), expected_active);
    assert_eq!(pages, expected_active.div_ceil(100));
    assert!(seen.iter().all(|r| r["status"] == "Active"));
    let created: Vec<&str> = seen
        .iter()
        .filter_map(|r| r["createdDateTime"].as_str())
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "ordered by createdDateTime desc"
    );

    // $top limits the total across pages; $select trims.
    let a = raw
        .send(
            Method::GET,
            &format!(
                "{}?$top=150&$select=id,status",
                referrals_url(&sandbox, "referrals")
            ),
            t,
            &[],
            None,
        )
        .await;
    assert_eq!(a.body["value"].as_array().map(Vec::len), Some(100));
    assert!(a.body["value"][0].get("customerProfile").is_none());
    let next = a.body["@odata.nextLink"]
        .as_str()
        .expect("next link")
        .to_string();
    let b = raw.send(Method::GET, &next, t, &[], None).await;
    assert_eq!(b.body["value"].as_array().map(Vec::len), Some(50));
    assert!(b.body.get("@odata.nextLink").is_none());

    // Nested paths, any(), dates, unquoted GUIDs.
    let first = &all[0];
    let country = first["customerProfile"]["address"]["country"]
        .as_str()
        .expect("country");
    let email = first["team"][0]["email"].as_str().expect("email");
    let engagement = first["engagementId"].as_str().expect("engagement");
    for (filter, expect_first) in [
        (
            format!("customerProfile/address/country eq '{country}'"),
            true,
        ),
        (format!("team/any(t:t/email eq '{email}')"), true),
        (format!("engagementId eq {engagement}"), true),
        (
            format!("(engagementId eq '{engagement}') and updatedDateTime gt 2000-01-01T00:00:00Z"),
            true,
        ),
        ("updatedDateTime lt 2000-01-01T00:00:00Z".to_string(), false),
    ] {
        let mut u =
            cosell::http::url::Url::parse(&referrals_url(&sandbox, "referrals")).expect("url");
        u.query_pairs_mut().append_pair("$filter", &filter);
        let a = raw.send(Method::GET, u.as_str(), t, &[], None).await;
        assert_eq!(a.status, 200, "{filter}: {}", a.body);
        let ids: Vec<&Value> = a.body["value"]
            .as_array()
            .map(|v| v.iter().map(|r| &r["id"]).collect())
            .unwrap_or_default();
        assert_eq!(ids.contains(&&first["id"]), expect_first, "{filter}");
    }

    // Unsupported syntax: 400 invalidRequest naming it; a forged skiptoken: 400.
    let mut u = cosell::http::url::Url::parse(&referrals_url(&sandbox, "referrals")).expect("url");
    u.query_pairs_mut()
        .append_pair("$filter", "startswith(name,'Con')");
    let a = raw.send(Method::GET, u.as_str(), t, &[], None).await;
    assert_eq!(a.status, 400);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("startswith")
    );
    let a = raw
        .send(
            Method::GET,
            &format!(
                "{}referrals?$skiptoken=garbage",
                sandbox
                    .urls()
                    .referrals
                    .as_str()
                    .replace("engagements/", "")
            ),
            t,
            &[],
            None,
        )
        .await;
    assert_eq!(a.status, 400);
    sandbox.shutdown().await;
}

// ----- raw HTTP: webhooks ---------------------------------------------------------------------

#[tokio::test]
async fn raw_registration_lifecycle_and_test_event() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let raw = Raw::new();
    let mut receiver = Receiver::start().await;
    let token = sandbox.entra().issue_access_token(WEBHOOKS_AUDIENCE);
    let t = Some(token.as_str());
    let url = webhooks_url(&sandbox, "registration");

    let a = raw.send(Method::GET, &url, t, &[], None).await;
    assert_eq!(a.status, 404);
    let body = json!({ "WebhookUrl": receiver.url, "WebhookEvents": ["referral-created", "test-created"] });
    let a = raw.json(Method::POST, &url, t, &[], &body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body["SubscriberId"].is_string());
    let a = raw.json(Method::POST, &url, t, &[], &body).await;
    assert_eq!(a.status, 409);
    // The webhook API's error body: `{code, description, data, source}`.
    assert_eq!(
        a.body["description"],
        "Registration already exists, use the PUT method to update a registration."
    );
    assert!(a.body.get("error").is_none(), "{}", a.body);
    let a = raw
        .json(Method::PUT, &url, t, &[], &json!({ "WebhookUrl": receiver.url, "WebhookEvents": ["test-created", "referral-updated"], "SignatureTokenToMsSignatureHeader": true }))
        .await;
    assert_eq!(a.status, 200);
    let a = raw.send(Method::GET, &url, t, &[], None).await;
    assert_eq!(
        a.body["WebhookEvents"],
        json!(["test-created", "referral-updated"])
    );
    let a = raw
        .json(
            Method::PUT,
            &url,
            t,
            &[],
            &json!({ "WebhookUrl": receiver.url, "WebhookEvents": ["no-such-event"] }),
        )
        .await;
    assert_eq!(a.status, 400);

    let a = raw
        .send(
            Method::POST,
            &webhooks_url(&sandbox, "registration/validationEvents"),
            t,
            &[],
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let correlation = a.body["correlationId"]
        .as_str()
        .expect("correlation id")
        .to_string();
    let got = receiver.next().await;
    assert!(got.headers.get("x-ms-signature").is_some());
    assert!(got.headers.get("authorization").is_none());
    let payload: Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(payload["EventName"], "test-created");
    assert_eq!(payload["ResourceName"], "test");
    wait_deliveries(&sandbox).await;
    let a = raw
        .send(
            Method::GET,
            &webhooks_url(
                &sandbox,
                &format!("registration/validationEvents/{correlation}"),
            ),
            t,
            &[],
            None,
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["status"], "completed");
    assert_eq!(a.body["results"][0]["responseCode"], "OK");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn deliveries_on_every_change_with_retries_and_faults() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let raw = Raw::new();
    let pc = sandbox.partner_center();
    let mut receiver = Receiver::start().await;
    register(
        &sandbox,
        &raw,
        &receiver.url,
        &[
            "referral-created",
            "referral-updated",
            "related-referral-created",
            "related-referral-updated",
        ],
    )
    .await;

    // Microsoft sends an incoming referral, we accept it, Microsoft joins the engagement.
    let incoming = pc
        .create_incoming_referral(json!({ "name": "From Microsoft" }))
        .expect("incoming");
    let id = incoming["id"].as_str().expect("id").to_string();
    assert_eq!(incoming["direction"], "Incoming");
    assert_eq!(incoming["substatus"], "Pending");
    let token = sandbox.entra().issue_access_token(REFERRALS_AUDIENCE);
    let accept = json!([{ "op": "replace", "path": "/status", "value": "Active" }, { "op": "replace", "path": "/substatus", "value": "Accepted" }]);
    let a = raw
        .json(
            Method::PATCH,
            &referrals_url(&sandbox, &format!("referrals/{id}")),
            Some(&token),
            &[],
            &accept,
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.body);
    let related = pc
        .add_related_referral(incoming["engagementId"].as_str().expect("eid"), json!({}))
        .expect("related");
    wait_deliveries(&sandbox).await;
    let events: Vec<String> = receiver
        .drain()
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).expect("json")["EventName"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        events,
        [
            "referral-created",
            "referral-updated",
            "related-referral-created"
        ]
    );
    let log = pc.deliveries();
    assert!(
        log.iter()
            .all(|d| d.state == DeliveryState::Delivered && d.attempts.len() == 1)
    );
    assert!(
        log[0]
            .resource_uri
            .ends_with(&format!("/v1.0/engagements/referrals/{id}"))
    );
    assert!(
        log[2]
            .resource_uri
            .ends_with(related["id"].as_str().expect("id"))
    );
    // Related referrals are listed only when the filter names the engagement.
    let a = raw
        .send(
            Method::GET,
            &referrals_url(&sandbox, "referrals"),
            Some(&token),
            &[],
            None,
        )
        .await;
    assert_eq!(a.body["value"].as_array().map(Vec::len), Some(1));

    // A failing receiver: retried until it recovers; the log has one entry per attempt.
    pc.clear_deliveries();
    receiver.status.store(503, Ordering::SeqCst);
    pc.set_microsoft_crm_id(&id, Some("7-TESTMSX001"))
        .expect("msx");
    let first = receiver.next().await;
    assert!(!first.body.is_empty());
    let second = receiver.next().await;
    assert_eq!(first.body, second.body, "retries resend the same bytes");
    receiver.status.store(200, Ordering::SeqCst);
    wait_deliveries(&sandbox).await;
    let log = pc.deliveries();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].state, DeliveryState::Delivered);
    assert!(log[0].attempts.len() >= 3);
    assert_eq!(log[0].attempts[0].status, Some(503));
    receiver.drain();

    // Lost, duplicated, reordered and bursty deliveries.
    pc.clear_deliveries();
    pc.drop_next_deliveries(1);
    let notes = |n: &str| json!([{ "op": "replace", "path": "/details/notes", "value": n }]);
    pc.update_as_microsoft(&id, notes("a")).expect("update");
    wait_deliveries(&sandbox).await;
    assert_eq!(pc.deliveries()[0].state, DeliveryState::Dropped);
    assert!(receiver.drain().is_empty());

    pc.clear_deliveries();
    pc.set_delivery_faults(DeliveryFaults {
        duplicate: true,
        ..Default::default()
    });
    pc.update_as_microsoft(&id, notes("b")).expect("update");
    wait_deliveries(&sandbox).await;
    let got = receiver.drain();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, got[1].body);

    pc.clear_deliveries();
    pc.set_delivery_faults(DeliveryFaults {
        burst: 3,
        ..Default::default()
    });
    pc.update_as_microsoft(&id, notes("c")).expect("update");
    wait_deliveries(&sandbox).await;
    assert_eq!(receiver.drain().len(), 3);

    pc.clear_deliveries();
    pc.set_delivery_faults(DeliveryFaults {
        reorder_window: 3,
        ..Default::default()
    });
    for n in ["d", "e", "f"] {
        pc.update_as_microsoft(&id, notes(n)).expect("update");
    }
    wait_deliveries(&sandbox).await;
    let dates: Vec<String> = receiver
        .drain()
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).expect("json")["ResourceChangeUtcDate"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(dates.len(), 3);
    assert!(
        dates[0] > dates[1] && dates[1] > dates[2],
        "newest first: {dates:?}"
    );
    pc.clear_delivery_faults();

    // A receiver that never recovers: 10 attempts, then given up.
    pc.set_delivery_policy(DeliveryPolicy {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..DeliveryPolicy::default()
    });
    pc.clear_deliveries();
    receiver.status.store(500, Ordering::SeqCst);
    pc.update_as_microsoft(&id, notes("g")).expect("update");
    wait_deliveries(&sandbox).await;
    let log = pc.deliveries();
    assert_eq!(log[0].state, DeliveryState::Failed);
    assert_eq!(log[0].attempts.len(), 10);

    // Expiring pending referrals fires updates; faults on the API are counted server-side.
    assert!(
        sandbox
            .faults()
            .calls_matching(Service::Referrals, &Method::PATCH, "/referrals/{id}")
            >= 1
    );
    sandbox.shutdown().await;
}

// ----- the real client, with the real credential code path ----------------------------------

fn retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_initial_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(50))
}

/// A client signed in as a user (refresh-token grant against the Entra stand-in).
fn client(sandbox: &Sandbox) -> PartnerCenterClient {
    let refresh = sandbox.entra().issue_refresh_token(SANDBOX_CLIENT_ID);
    let credential = RefreshTokenCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, refresh)
        .client_secret(SANDBOX_CLIENT_SECRET)
        .authority_host(sandbox.urls().entra.as_str())
        .build()
        .expect("credential");
    PartnerCenterClient::builder()
        .referrals_endpoint(sandbox.urls().referrals.clone())
        .webhooks_endpoint(sandbox.urls().webhooks.clone())
        .credential(Arc::new(credential))
        .retry(retry())
        .build()
        .expect("client")
}

/// A client with an app-only token (client-credentials grant).
fn app_only_client(sandbox: &Sandbox) -> PartnerCenterClient {
    let credential =
        ClientSecretCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
            .authority_host(sandbox.urls().entra.as_str())
            .build()
            .expect("credential");
    PartnerCenterClient::builder()
        .referrals_endpoint(sandbox.urls().referrals.clone())
        .webhooks_endpoint(sandbox.urls().webhooks.clone())
        .credential(Arc::new(credential))
        .retry(retry())
        .build()
        .expect("client")
}

fn new_referral(sandbox: &Sandbox) -> Referral {
    serde_json::from_value(sandbox.partner_center().generate_referral_request()).expect("referral")
}

const PATCH_SHAPE: &str = "/v1.0/engagements/referrals/{id}";

#[tokio::test]
async fn client_creates_reads_updates_and_gets_412_on_a_stale_etag() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let client = client(&sandbox);
    let mut request = new_referral(&sandbox);
    request.external_reference_id = Some("OPP-00042".into());
    let created = client.create_referral(&request).await.expect("create");
    let id = created.id.clone().expect("id");
    assert_eq!(
        created.status_pair(),
        (ReferralStatus::Active, ReferralSubstatus::Accepted)
    );
    assert_eq!(created.accepted_date_time, created.created_date_time);
    assert!(
        sandbox.entra().grants() >= 1,
        "the token came from the refresh-token grant"
    );

    let read = client.get_referral(&id).await.expect("get");
    assert_eq!(read.e_tag, created.e_tag);
    assert_eq!(read.external_reference_id.as_deref(), Some("OPP-00042"));

    let updated = client
        .update_referral(&id, vec![PatchOperation::set_notes("Workshop booked")])
        .if_match(read.e_tag.clone().expect("etag"))
        .return_representation()
        .send()
        .await
        .expect("patch")
        .expect("representation");
    assert_eq!(
        updated.details.as_ref().and_then(|d| d.notes.as_deref()),
        Some("Workshop booked")
    );
    assert_ne!(updated.e_tag, read.e_tag);

    let stale = client
        .update_referral(&id, vec![PatchOperation::set_notes("from a stale copy")])
        .if_match(read.e_tag.clone().expect("etag"))
        .send()
        .await
        .expect_err("stale eTag");
    assert!(stale.is_precondition_failed(), "{stale}");
    assert_eq!(
        sandbox.partner_center().referral(&id).expect("stored")["details"]["notes"],
        "Workshop booked"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn client_lists_250_referrals_across_pages_with_a_filter() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let client = client(&sandbox);
    let pc = sandbox.partner_center();
    pc.seed_referrals(250);
    for _ in 0..3 {
        pc.create_incoming_referral(
            json!({ "customerProfile": { "address": { "country": "US" } } }),
        )
        .expect("incoming");
    }
    let all = pc.referrals();
    let outgoing = all.iter().filter(|r| r["direction"] == "Outgoing").count();
    assert!(outgoing > 100, "enough for two pages: {outgoing}");

    sandbox.faults().reset_counters();
    let got: Vec<Referral> = client
        .list_referrals()
        .filter("direction eq 'Outgoing'")
        .order_by("createdDateTime asc")
        .into_stream()
        .try_collect()
        .await
        .expect("list");
    assert_eq!(got.len(), outgoing);
    let mut ids: Vec<&str> = got.iter().filter_map(|r| r.id.as_deref()).collect();
    ids.dedup();
    assert_eq!(ids.len(), outgoing, "no duplicates across pages");
    assert!(
        got.windows(2)
            .all(|w| w[0].created_date_time <= w[1].created_date_time)
    );
    let pages = sandbox
        .faults()
        .calls_matching(Service::Referrals, &Method::GET, "referrals");
    assert_eq!(pages, outgoing.div_ceil(100) as u64);

    let us_incoming: Vec<Referral> = client
        .list_referrals()
        .filter("customerProfile/address/country eq 'US' and (direction eq 'Incoming' and substatus eq 'Pending')")
        .into_stream()
        .try_collect()
        .await
        .expect("list");
    let expected = all
        .iter()
        .filter(|r| {
            r["customerProfile"]["address"]["country"] == "US"
                && r["direction"] == "Incoming"
                && r["substatus"] == "Pending"
        })
        .count();
    assert!(expected >= 3);
    assert_eq!(us_incoming.len(), expected);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn client_rides_out_a_429_then_succeeds() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let client = client(&sandbox);
    let id = sandbox.partner_center().seed_referrals(1).remove(0);
    sandbox.faults().inject(
        Service::Referrals,
        Fault::throttle(Duration::from_millis(10))
            .on_method(Method::GET)
            .times(1),
    );
    let got = client.get_referral(&id).await.expect("retried after 429");
    assert_eq!(got.id.as_deref(), Some(id.as_str()));
    assert_eq!(sandbox.faults().injected(), 1);
    assert_eq!(
        sandbox
            .faults()
            .calls_matching(Service::Referrals, &Method::GET, PATCH_SHAPE),
        2
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn client_refuses_a_forbidden_transition_before_sending() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let client = client(&sandbox);
    let created = client
        .create_referral(&new_referral(&sandbox))
        .await
        .expect("create");
    let won = client
        .transition_referral(&created, ReferralStatus::Closed, ReferralSubstatus::Won)
        .send()
        .await
        .expect("won")
        .expect("representation");
    assert!(won.is_terminal());
    assert_eq!(
        sandbox
            .faults()
            .calls_matching(Service::Referrals, &Method::PATCH, PATCH_SHAPE),
        1
    );
    sandbox.faults().reset_counters();

    let refused = client
        .transition_referral(&won, ReferralStatus::Active, ReferralSubstatus::Accepted)
        .send()
        .await
        .expect_err("Won is terminal");
    assert!(refused.to_string().contains("terminal"), "{refused}");
    let refused = client
        .transition_referral(&created, ReferralStatus::New, ReferralSubstatus::Pending)
        .send()
        .await
        .expect_err("Active cannot go back to New");
    assert!(refused.to_string().contains("cannot become"), "{refused}");
    assert_eq!(
        sandbox
            .faults()
            .calls_matching(Service::Referrals, &Method::PATCH, PATCH_SHAPE),
        0,
        "nothing reached the emulator"
    );
    sandbox.shutdown().await;
}

#[tokio::test]
async fn client_registration_create_conflict_replace() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let client = client(&sandbox);
    assert_eq!(client.get_webhook_registration().await.expect("get"), None);
    let events = client.list_webhook_events().await.expect("events");
    assert!(events.contains(&WebhookEvent::ReferralUpdated));

    let first =
        WebhookRegistration::new("https://sync.example.com/a", WebhookEvent::REFERRAL_EVENTS);
    let created = client
        .create_webhook_registration(&first)
        .await
        .expect("create");
    assert!(created.subscriber_id.is_some());
    let again = client
        .create_webhook_registration(&first)
        .await
        .expect_err("409");
    assert!(again.is_conflict(), "{again}");
    assert!(again.to_string().contains("use the PUT method"), "{again}");

    let second = WebhookRegistration::new(
        "https://sync.example.com/b",
        [WebhookEvent::ReferralCreated],
    );
    let replaced = client
        .replace_webhook_registration(&second)
        .await
        .expect("replace");
    assert_eq!(replaced.subscriber_id, created.subscriber_id);
    let now = client
        .get_webhook_registration()
        .await
        .expect("get")
        .expect("some");
    assert_eq!(now.webhook_url, "https://sync.example.com/b");
    assert_eq!(now.webhook_events, vec![WebhookEvent::ReferralCreated]);
    let stored = sandbox.partner_center().registration().expect("stored");
    assert_eq!(stored.webhook_url, "https://sync.example.com/b");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn an_app_only_token_is_refused_by_the_referrals_api() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let id = sandbox.partner_center().seed_referrals(1).remove(0);
    let app_only = app_only_client(&sandbox);
    let err = app_only.get_referral(&id).await.expect_err("app-only");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401), "{err}");
    assert!(err.is_unauthorized());
    // The webhook API accepts app-only tokens.
    assert!(app_only.list_webhook_events().await.is_ok());
    // The same app signed in as a user is let in.
    assert!(client(&sandbox).get_referral(&id).await.is_ok());
    sandbox.shutdown().await;
}

// ----- signed callbacks and the real verifier ------------------------------------------------

/// A transport that counts the requests it forwards (certificate fetches of the verifier).
fn counting_transport() -> (Arc<dyn HttpTransport>, Arc<AtomicU16>) {
    let count = Arc::new(AtomicU16::new(0));
    let inner = Arc::new(ReqwestTransport::new().expect("transport"));
    let c = count.clone();
    let t = cosell::http::FnTransport::new(move |req| {
        c.fetch_add(1, Ordering::SeqCst);
        let inner = inner.clone();
        async move { inner.send(req).await }
    });
    (Arc::new(t), count)
}

fn with_header(mut headers: HeaderMap, name: &'static str, value: &str) -> HeaderMap {
    headers.insert(name, value.parse().expect("header value"));
    headers
}

#[tokio::test]
async fn callbacks_pass_the_real_verifier_and_forgeries_do_not() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let pc = sandbox.partner_center();
    let mut receiver = Receiver::start().await;
    let client = client(&sandbox);
    client
        .register_referral_webhook(&receiver.url, true)
        .await
        .expect("register");

    // Microsoft sends an incoming referral: one signed `referral-created`.
    let incoming = pc.create_incoming_referral(json!({})).expect("incoming");
    let id = incoming["id"].as_str().expect("id").to_string();
    let got = receiver.next().await;
    assert_eq!(
        got.headers
            .get("x-ms-signature-algorithm")
            .and_then(|v| v.to_str().ok()),
        Some("rsa-sha256")
    );
    assert_eq!(
        got.headers
            .get("x-ms-certificate-url")
            .and_then(|v| v.to_str().ok()),
        Some(pc.certificate_url().as_str())
    );
    // `register_referral_webhook` asks for the signature in `x-ms-signature`.
    assert!(got.headers.get("x-ms-signature").is_some());

    let (transport, fetches) = counting_transport();
    let verifier = pc
        .webhook_verifier_builder()
        .expect("rules")
        .transport(transport.clone())
        .build()
        .expect("verifier");
    let verified = verifier
        .verify(&got.headers, &got.body)
        .await
        .expect("verified");
    assert_eq!(verified.callback.event_name, WebhookEvent::ReferralCreated);
    let host = sandbox
        .urls()
        .referrals
        .host_str()
        .expect("host")
        .to_string();
    assert_eq!(
        verified.callback.referral_id(&[host.as_str()]).expect("id"),
        id
    );
    // The leaf from the certificate host, then its intermediate through the leaf's AIA URL on
    // the sandbox's PKI host, as with Microsoft's certificates.
    assert_eq!(fetches.load(Ordering::SeqCst), 2);

    // The PascalCase body, exactly as documented.
    let payload: Value = serde_json::from_slice(&got.body).expect("json");
    let keys: Vec<&str> = payload
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "EventName",
        "ResourceUri",
        "ResourceName",
        "AuditUri",
        "ResourceChangeUtcDate",
    ] {
        assert!(keys.contains(&k), "{k} in {keys:?}");
    }
    assert!(
        payload["ResourceChangeUtcDate"]
            .as_str()
            .expect("date")
            .ends_with("+00:00")
    );

    // Tampered: one byte of the body flipped.
    let mut tampered = got.body.to_vec();
    if let Some(b) = tampered.iter_mut().find(|b| b.is_ascii_digit()) {
        *b = if *b == b'9' { b'8' } else { *b + 1 };
    }
    let err = verifier
        .verify(&got.headers, &tampered)
        .await
        .expect_err("tampered");
    assert_eq!(err.reason_code(), "bad_signature");
    assert_eq!(err.http_status(), 401);

    // Forged: a well-formed signature made without the key.
    let forged = format!("Signature {}", "QUJD".repeat(86));
    let headers = with_header(got.headers.clone(), "x-ms-signature", &forged);
    let err = verifier
        .verify(&headers, &got.body)
        .await
        .expect_err("forged");
    assert!(err.is_unauthorized(), "{err}");

    // The emulator's signing helper produces what the verifier accepts, for any body…
    let body = br#"{"EventName":"referral-updated","ResourceUri":"http://127.0.0.1/v1.0/engagements/referrals/4111fffc-f9ee-4d53-bba6-569135228642","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2024-02-25T09:11:02.1034567+00:00"}"#;
    let mut signed = HeaderMap::new();
    for (k, v) in pc.sign_callback(body, false).expect("sign") {
        signed.insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    assert!(verifier.verify(&signed, body).await.is_ok());

    // …but a certificate URL off the allow-list is refused before anything is fetched.
    let before = fetches.load(Ordering::SeqCst);
    for url in [
        "https://evil.example/cert/pcnotifications-dispatch.microsoft.com.cer".to_string(),
        format!(
            "{}other/pcnotifications-dispatch.microsoft.com.cer",
            sandbox.urls().certificates
        ),
        "http://127.0.0.1:1/cert/pcnotifications-dispatch.microsoft.com.cer".to_string(),
    ] {
        let headers = with_header(signed.clone(), "x-ms-certificate-url", &url);
        let err = verifier
            .verify(&headers, body)
            .await
            .expect_err("off the list");
        assert_eq!(err.reason_code(), "certificate_url_not_allowed", "{url}");
    }
    // The production defaults (Microsoft's blob host only) refuse the sandbox's URL too.
    let production = cosell::partner_center::webhook::verify::WebhookVerifier::builder()
        .transport(transport)
        .build()
        .expect("verifier");
    let err = production
        .verify(&got.headers, &got.body)
        .await
        .expect_err("not Microsoft's host");
    assert_eq!(err.reason_code(), "certificate_url_not_allowed");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        before,
        "no fetch for refused URLs"
    );

    // Every delivery of the run is in the log, delivered on the first attempt.
    wait_deliveries(&sandbox).await;
    let log = pc.deliveries();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].state, DeliveryState::Delivered);
    assert_eq!(log[0].attempts.len(), 1);
    sandbox.shutdown().await;
}

// ----- the control API over HTTP (what `curl` against a standalone sandbox does) -------------

#[tokio::test]
async fn raw_control_routes_play_microsofts_side() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let raw = Raw::new();
    let origin = sandbox
        .urls()
        .referrals
        .join("/")
        .expect("origin")
        .to_string();
    let ctl = |path: &str| format!("{origin}_sandbox/{path}");

    let a = raw
        .json(
            Method::POST,
            &ctl("seed"),
            None,
            &[],
            &json!({ "count": 5 }),
        )
        .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.body["ids"].as_array().map(Vec::len), Some(5));

    let a = raw
        .json(
            Method::POST,
            &ctl("referrals/incoming"),
            None,
            &[],
            &json!({ "name": "Lead from Microsoft", "details": { "currency": "EUR" } }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["name"], "Lead from Microsoft");
    assert_eq!(a.body["details"]["currency"], "EUR");
    assert_eq!(
        a.body["inviteContext"]["invitedBy"]["organizationId"],
        "msft"
    );
    assert!(a.body["expirationDateTime"].is_string());
    let lead = a.body["id"].as_str().expect("id").to_string();

    // An outgoing co-sell referral of ours, accepted by Microsoft; another declined.
    let created = sandbox.partner_center().seed_referrals(2);
    let a = raw
        .send(
            Method::POST,
            &ctl(&format!("referrals/{}/accept", created[0])),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["organizationId"], "msft");
    let ours = raw
        .send(
            Method::GET,
            &ctl(&format!("referrals/{}", created[0])),
            None,
            &[],
            None,
        )
        .await;
    assert!(
        ours.body["trackingInfo"]["microsoftMsxId"]
            .as_str()
            .is_some_and(|m| m.starts_with("7-"))
    );
    assert_eq!(ours.body["engagementId"], a.body["engagementId"]);
    let again = raw
        .send(
            Method::POST,
            &ctl(&format!("referrals/{}/accept", created[0])),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(again.status, 409);
    let d = raw
        .send(
            Method::POST,
            &ctl(&format!("referrals/{}/decline", created[1])),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(d.status, 200);
    assert_eq!(d.body["substatus"], "Declined");

    // Related referrals are listed when the filter names the engagement.
    let token = sandbox.entra().issue_access_token(REFERRALS_AUDIENCE);
    let mut u = cosell::http::url::Url::parse(&referrals_url(&sandbox, "referrals")).expect("url");
    u.query_pairs_mut().append_pair(
        "$filter",
        &format!(
            "engagementId eq '{}'",
            ours.body["engagementId"].as_str().expect("eid")
        ),
    );
    let related = raw
        .send(Method::GET, u.as_str(), Some(&token), &[], None)
        .await;
    assert_eq!(related.body["value"].as_array().map(Vec::len), Some(2));
    // …and cannot be changed through the API.
    let ms_id = a.body["id"].as_str().expect("id");
    let w = raw
        .json(
            Method::PATCH,
            &referrals_url(&sandbox, &format!("referrals/{ms_id}")),
            Some(&token),
            &[],
            &json!([{ "op": "replace", "path": "/details/notes", "value": "x" }]),
        )
        .await;
    assert_eq!(w.status, 403);
    assert_eq!(w.body["error"]["code"], "accessDenied");

    let m = raw
        .json(
            Method::POST,
            &ctl(&format!("referrals/{lead}/microsoft-crm-id")),
            None,
            &[],
            &json!({ "microsoftMsxId": "7-ABCDEFGHJK" }),
        )
        .await;
    assert_eq!(m.body["trackingInfo"]["microsoftMsxId"], "7-ABCDEFGHJK");
    let p = raw
        .json(
            Method::PATCH,
            &ctl(&format!("referrals/{lead}")),
            None,
            &[],
            &json!([{ "op": "replace", "path": "/details/dealValue", "value": "125000" }]),
        )
        .await;
    assert_eq!(p.body["details"]["dealValue"], json!(125000));

    let e = raw
        .send(Method::POST, &ctl("expire-pending"), None, &[], None)
        .await;
    let expired = e.body["expired"].as_array().cloned().unwrap_or_default();
    assert!(expired.contains(&json!(lead)));
    let gone = raw
        .send(
            Method::GET,
            &ctl(&format!("referrals/{lead}")),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(
        (
            gone.body["status"].as_str(),
            gone.body["substatus"].as_str()
        ),
        (Some("Closed"), Some("Expired"))
    );

    let f = raw
        .json(
            Method::PUT,
            &ctl("delivery-faults"),
            None,
            &[],
            &json!({ "duplicate": true, "burst": 2 }),
        )
        .await;
    assert_eq!(
        f.body,
        json!({ "dropNext": 0, "duplicate": true, "reorderWindow": 0, "burst": 2 })
    );
    let f = raw
        .json(
            Method::PUT,
            &ctl("delivery-faults"),
            None,
            &[],
            &json!({ "burst": "many" }),
        )
        .await;
    assert_eq!(f.status, 400);
    let c = raw
        .send(Method::GET, &ctl("certificate"), None, &[], None)
        .await;
    assert_eq!(
        c.body["certificateUrl"],
        json!(sandbox.partner_center().certificate_url().to_string())
    );
    assert!(
        c.body["rootCaPem"]
            .as_str()
            .is_some_and(|p| p.contains("BEGIN CERTIFICATE"))
    );
    let pem = raw
        .send(
            Method::GET,
            &format!("{}cert/sandbox-root-ca.pem", sandbox.urls().certificates),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(pem.status, 200);
    let missing = raw
        .send(
            Method::GET,
            &ctl("referrals/00000000-0000-0000-0000-000000000000"),
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["code"], "itemNotFound");
    sandbox.shutdown().await;
}

// ----- issue 11: lost-create recovery with documented filters only ----------------------------

/// The engine's look-up of a create whose answer was lost works against an emulator that, like
/// Microsoft's documentation, allows `$filter` on `direction` and `updatedDateTime` but not on
/// `externalReferenceId` nor `createdDateTime`.
#[tokio::test]
async fn lost_create_is_found_with_documented_filters_only() {
    use cosell::sync::PartnerCenter as _;

    let sandbox = Sandbox::start().await.expect("sandbox");
    let pc = client(&sandbox);
    let since = chrono::Utc::now() - chrono::Duration::seconds(5);
    let mut body = sandbox.partner_center().generate_referral_request();
    body["externalReferenceId"] = json!("crm-lost-1");
    let referral: Referral = serde_json::from_value(body.clone()).expect("referral");
    let created = pc.create_referral(&referral).await.expect("created");
    // Other outgoing referrals in the window are scanned past.
    for i in 0..3 {
        body["externalReferenceId"] = json!(format!("crm-other-{i}"));
        let other: Referral = serde_json::from_value(body.clone()).expect("referral");
        pc.create_referral(&other).await.expect("created");
    }
    let found = cosell::sync::PartnerCenter::find_by_external_reference(&pc, "crm-lost-1", since)
        .await
        .expect("look-up");
    assert_eq!(found.and_then(|r| r.id), created.id);
    let none = pc
        .find_by_external_reference("crm-never-created", since)
        .await
        .expect("look-up");
    assert!(none.is_none());
    sandbox.shutdown().await;
}
