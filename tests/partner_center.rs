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
use cosell::http::{HttpTransport, ReqwestTransport};
use cosell::sandbox::entra::{REFERRALS_AUDIENCE, WEBHOOKS_AUDIENCE};
use cosell::sandbox::partner_center::{DeliveryFaults, DeliveryPolicy, DeliveryState};
use cosell::sandbox::{Sandbox, Service};
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
    assert_eq!(
        a.body["error"]["message"],
        "Registration already exists, use the PUT method to update a registration."
    );
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
