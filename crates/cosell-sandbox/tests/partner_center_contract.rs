//! The Partner Center emulator against Microsoft's documented exchanges, over HTTP on 127.0.0.1.
//!
//! `contract_*` replays every example exchange of the team's reference notes
//! (`partner-center.md`: the token requests of §1.2-1.3, the referral exchanges of §3 and §6,
//! the webhook registration, callback and error exchanges of §4, §6.5 and the Corrections): the
//! request as documented, and the answer checked against what the documentation shows; the list
//! of exchanges and the test of each is in `docs/fidelity-partner-center.md`. `strict_*` pins the
//! restrictions Microsoft documents, so a client regression cannot hide behind a lenient
//! emulator (issue 11).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use cosell_http::{HttpTransport, ReqwestTransport};
use cosell_sandbox::Sandbox;
use cosell_sandbox::entra::{
    REFERRALS_AUDIENCE, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_PASSWORD, SANDBOX_TENANT,
    SANDBOX_USERNAME, WEBHOOKS_AUDIENCE,
};
use http::{HeaderMap, Method};
use partner_center_client::webhook::callback::WebhookCallback;
use serde_json::{Value, json};
use tokio::sync::mpsc;

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

struct Caller {
    transport: ReqwestTransport,
    token: String,
    webhooks_token: String,
    referrals: String,
    webhooks: String,
}

impl Caller {
    fn new(sandbox: &Sandbox) -> Self {
        Caller {
            transport: ReqwestTransport::new().expect("transport"),
            token: sandbox.entra().issue_access_token(REFERRALS_AUDIENCE),
            webhooks_token: sandbox.entra().issue_access_token(WEBHOOKS_AUDIENCE),
            referrals: sandbox.urls().referrals.to_string(),
            webhooks: sandbox.urls().webhooks.to_string(),
        }
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Answer {
        let token = if url.starts_with(&self.webhooks) {
            &self.webhooks_token
        } else {
            &self.token
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json")
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let resp = self
            .transport
            .send(req.body(Bytes::from(body)).unwrap())
            .await
            .expect("answer");
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: serde_json::from_slice(resp.body()).unwrap_or(Value::Null),
        }
    }

    async fn referrals(&self, method: Method, rest: &str, body: Option<&Value>) -> Answer {
        let url = format!("{}{rest}", self.referrals);
        self.call(method, &url, &[], body).await
    }

    async fn list(&self, query: &str) -> Answer {
        let url = format!(
            "{}referrals?{}",
            self.referrals,
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(query.split('&').filter_map(|kv| kv.split_once('=')))
                .finish()
        );
        self.call(Method::GET, &url, &[], None).await
    }

    async fn webhooks(&self, method: Method, rest: &str, body: Option<&Value>) -> Answer {
        let url = format!("{}{rest}", self.webhooks);
        self.call(method, &url, &[("ms-contract-version", "v1")], body)
            .await
    }
}

/// §6.2, the current documentation's private-deal example ("minimal information required"),
/// with its mixed-case consent flags, as documented.
fn private_deal_example() -> Value {
    json!({
        "name": "Contoso Test Deal - [Private]",
        "qualification": "SalesQualified",
        "type": "Independent",
        "customerProfile": {
            "name": "Contoso Customer Inc",
            "address": { "addressLine1": "One Microsoft Way", "addressLine2": "34", "city": "Redmond",
                         "state": "WA", "postalCode": "98052", "country": "US" },
            "size": "10to50employees",
            "team": [ { "firstName": "Sue", "lastName": "Smith", "phoneNumber": "1234567890", "email": "" } ]
        },
        "consent": { "ConsentToToShareInfoWithOthers": true, "ConsentToContact": true,
                     "ConsentToMicrosoftToContactSpecificPartners": true,
                     "consentToShareReferralWithMicrosoftSellers": false },
        "details": {
            "notes": "Customer is looking to leverage Dynamics 365 to manage their supply chain.",
            "dealValue": 50000, "currency": "USD", "closingDateTime": "2024-11-14T00:00:00Z",
            "requirements": {
                "solutions": [ { "type": "Name", "id": "SOL-15974-MQF", "name": "Contoso-Ale_Test",
                                 "publisherName": "Contoso_Test", "solutionType": "3P" } ],
                "additionalRequirements": { "iot": {}, "attributes": [ { "id": "HaveNotDecided", "type": "CustomerMarketplaceIntent" } ] }
            }
        },
        "team": [ { "firstName": "John", "lastName": "Doe", "phoneNumber": "1231231234", "email": "" } ],
        "target": []
    })
}

/// §6.2, the co-sell example (assembled in the notes from the 2019-2020 shared example).
fn co_sell_example() -> Value {
    json!({
        "name": "Contoso - Azure migration (co-sell)",
        "externalReferenceId": "OPP-00042",
        "status": "New", "substatus": "Pending",
        "qualification": "SalesQualified",
        "type": "Shared",
        "target": [ { "type": "SolutionProfile", "id": "SOL-34104-EBB" } ],
        "customerProfile": { "name": "Contoso Customer Inc",
            "address": { "addressLine1": "One Microsoft Way", "city": "Redmond", "state": "WA", "postalCode": "98052", "country": "US" },
            "team": [ { "firstName": "Sue", "lastName": "Smith", "phoneNumber": "1234567890", "email": "sue.smith@contoso.com" } ],
            "ids": [] },
        "consent": { "consentToToShareInfoWithOthers": true, "consentToContact": true, "consentToShareReferralWithMicrosoftSellers": true },
        "details": { "notes": "Need PoC support from Microsoft.", "dealValue": 120000, "currency": "USD",
                     "closingDateTime": "2025-06-30T00:00:00Z",
                     "requirements": { "solutions": [ { "id": "SOL-34104-EBB", "type": "Name" } ] } },
        "team": [ { "firstName": "John", "lastName": "Doe", "email": "john.doe@contoso.com", "phoneNumber": "1231231234" } ],
        "inviteContext": { "notes": "Requesting a PoC with the Azure team.", "assistanceRequestCode": "ProofOfConceptOrDemo" }
    })
}

fn with_intent(mut body: Value) -> Value {
    body["details"]["requirements"]["additionalRequirements"] = json!({ "attributes": [ { "id": "HaveNotDecided", "type": "CustomerMarketplaceIntent" } ] });
    body
}

async fn create(c: &Caller, body: &Value) -> Value {
    let a = c.referrals(Method::POST, "referrals", Some(body)).await;
    assert!(matches!(a.status, 200 | 201), "{} {}", a.status, a.body);
    a.body
}

// ----- contract: §6.2 create, §6.1 get -----------------------------------------------------

#[tokio::test]
async fn contract_create_and_get_as_documented() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let c = Caller::new(&sandbox);

    // POST the private-deal example: "returns the populated Referral resource".
    let created = create(&c, &private_deal_example()).await;
    let id = created["id"].as_str().expect("id").to_string();
    // Outgoing New/Pending comes back Active/Accepted; acceptedDateTime = createdDateTime.
    assert_eq!(created["status"], "Active");
    assert_eq!(created["substatus"], "Accepted");
    assert_eq!(created["direction"], "Outgoing");
    assert_eq!(created["acceptedDateTime"], created["createdDateTime"]);
    assert!(created["engagementId"].is_string());
    assert!(created["eTag"].as_str().is_some_and(|t| t.starts_with('"')));
    // PascalCase consent on input, camelCase on output (the real, doubled "ToTo" name).
    assert_eq!(created["consent"]["consentToToShareInfoWithOthers"], true);
    assert_eq!(
        created["consent"]["consentToShareReferralWithMicrosoftSellers"],
        false
    );
    assert_eq!(
        created["details"]["requirements"]["additionalRequirements"]["attributes"][0]["type"],
        "CustomerMarketplaceIntent"
    );

    // GET by id (§6.1): the referral with `@odata.context` (sic "engagments"), ETag header, links.
    let got = c
        .referrals(Method::GET, &format!("referrals/{id}"), None)
        .await;
    assert_eq!(got.status, 200);
    assert!(
        got.body["@odata.context"]
            .as_str()
            .is_some_and(|s| s.ends_with("/v1.0/engagments/referrals/$metadata#Referrals/$entity")),
        "{}",
        got.body["@odata.context"]
    );
    assert_eq!(
        got.headers.get("etag").and_then(|v| v.to_str().ok()),
        got.body["eTag"].as_str()
    );
    for member in [
        "id",
        "engagementId",
        "name",
        "organizationId",
        "organizationName",
        "mpnId",
        "createdDateTime",
        "updatedDateTime",
        "status",
        "substatus",
        "qualification",
        "type",
        "direction",
        "customerProfile",
        "consent",
        "details",
        "team",
        "inviteContext",
        "target",
        "eTag",
        "links",
        "trackingInfo",
        "registrations",
    ] {
        assert!(got.body.get(member).is_some(), "GET lacks `{member}`");
    }
    assert_eq!(got.body["links"]["self"]["method"], "GET");

    // Following `links.relatedReferrals` verbatim lists the engagement (§2.7).
    let related = got.body["links"]["relatedReferrals"]["uri"]
        .as_str()
        .unwrap()
        .replace(' ', "%20")
        .replace('\'', "%27");
    let a = c.call(Method::GET, &related, &[], None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["value"][0]["id"], id.as_str());

    // The co-sell example as the notes assemble it lacks the marketplace intent that the
    // Corrections make required: refused, and accepted once the intent is added.
    let a = c
        .referrals(Method::POST, "referrals", Some(&co_sell_example()))
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let shared = create(&c, &with_intent(co_sell_example())).await;
    assert_eq!(shared["type"], "Shared");
    assert_eq!(shared["externalReferenceId"], "OPP-00042");
    assert_eq!(
        shared["inviteContext"]["assistanceRequestCode"],
        "ProofOfConceptOrDemo"
    );
    sandbox.shutdown().await;
}

// ----- contract: §6.3 PATCH, §6.6 error, §3.5 examples -------------------------------------

#[tokio::test]
async fn contract_patch_examples_and_precondition_failed() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let c = Caller::new(&sandbox);
    let created = create(&c, &private_deal_example()).await;
    let id = created["id"].as_str().unwrap();
    let url = format!("{}referrals/{id}", c.referrals);

    // §3.5: dealValue sent as a string is coerced; notes replaced; 204 without Prefer.
    let etag = created["eTag"].as_str().unwrap().to_string();
    let a = c
        .call(
            Method::PATCH,
            &url,
            &[("if-match", &etag)],
            Some(&json!([
                {"op":"replace","path":"/details/dealValue","value":"10000"},
                {"op":"replace","path":"/details/notes","value":"Workshop booked"}
            ])),
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.body);
    let now = c
        .referrals(Method::GET, &format!("referrals/{id}"), None)
        .await;
    assert_eq!(now.body["details"]["dealValue"], 10000);
    assert_eq!(now.body["details"]["notes"], "Workshop booked");

    // §6.6: the old eTag is stale now: 412 with the documented error shape.
    let a = c
        .call(
            Method::PATCH,
            &url,
            &[("if-match", &etag)],
            Some(&json!([{"op":"replace","path":"/details/notes","value":"x"}])),
        )
        .await;
    assert_eq!(a.status, 412);
    assert_eq!(a.body["error"]["code"], "preconditionFailed");
    assert!(a.body["error"]["message"].is_string());

    // §6.3, as documented: Prefer: return=representation, If-Match, Closed/Won + a team member.
    let etag = now.body["eTag"].as_str().unwrap().to_string();
    let a = c
        .call(
            Method::PATCH,
            &url,
            &[("if-match", &etag), ("prefer", "return=representation")],
            Some(&json!([
                {"op":"replace","path":"/status","value":"Closed"},
                {"op":"replace","path":"/substatus","value":"Won"},
                {"op":"add","path":"/team/-","value":{"email":"jane.doe@contoso.com","firstName":"Jane","lastName":"Doe","phoneNumber":"0000000001"}}
            ])),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["status"], "Closed");
    assert_eq!(a.body["substatus"], "Won");
    let team = a.body["team"].as_array().unwrap();
    assert_eq!(team.last().unwrap()["email"], "jane.doe@contoso.com");
    // "Won, lost, declined, expired are terminal": no further updates.
    let a = c
        .call(
            Method::PATCH,
            &url,
            &[],
            Some(&json!([{"op":"replace","path":"/details/notes","value":"after"}])),
        )
        .await;
    assert_eq!(a.status, 400);
    sandbox.shutdown().await;
}

// ----- contract: §6.4 list and the documented $filter examples ----------------------------

#[tokio::test]
async fn contract_list_and_documented_filters() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let c = Caller::new(&sandbox);
    let created = create(&c, &with_intent(co_sell_example())).await;
    let engagement = created["engagementId"].as_str().unwrap();

    // §6.4: `@odata.context`, `@odata.count` (without `$count`), `value`.
    let a = c.referrals(Method::GET, "referrals", None).await;
    assert_eq!(a.status, 200);
    assert!(
        a.body["@odata.context"]
            .as_str()
            .is_some_and(|s| s.ends_with("/v1.0/$metadata#Referrals"))
    );
    assert_eq!(a.body["@odata.count"], 1);
    assert_eq!(a.body["value"].as_array().unwrap().len(), 1);

    // §3.3: every documented filter example is understood.
    let examples = [
        (format!("engagementId eq '{engagement}'"), 1),
        (format!("engagementId eq {engagement}"), 1),
        ("status eq 'New' and qualification eq 'SalesQualified'".into(), 0),
        ("customerProfile/address/country eq 'US' and direction eq 'Incoming'".into(), 0),
        ("(type eq 'Shared' and direction eq 'Incoming')".into(), 0),
        ("(direction eq 'Incoming' and substatus eq 'Pending')".into(), 0),
        (
            "status eq 'Active' and direction eq 'Outgoing' and type eq 'Shared' and team/any(t:t/email eq 'john.doe@contoso.com')".into(),
            1,
        ),
        ("updatedDateTime ge 2020-01-01T00:00:00Z".into(), 1),
    ];
    for (filter, hits) in examples {
        let a = c.list(&format!("$filter={filter}")).await;
        assert_eq!(a.status, 200, "{filter}: {}", a.body);
        assert_eq!(a.body["value"].as_array().unwrap().len(), hits, "{filter}");
    }
    // `$select`, `$orderby` on both documented members, `$top`.
    let a = c
        .list("$select=id,status,customerProfile&$orderby=createdDateTime desc&$top=10")
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let first = a.body["value"][0].as_object().unwrap();
    assert_eq!(first.len(), 3, "{first:?}");
    let a = c.list("$orderby=updatedDateTime asc").await;
    assert_eq!(a.status, 200);
    sandbox.shutdown().await;
}

// ----- contract: §4.4 webhook registration --------------------------------------------------

#[tokio::test]
async fn contract_webhook_registration_exchanges() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    sandbox.partner_center().set_test_event_limit(false);
    let c = Caller::new(&sandbox);
    let body = json!({
        "WebhookUrl": "http://127.0.0.1:9/hook",
        "WebhookEvents": ["referral-created", "referral-updated", "test-created"],
        "SignatureTokenToMsSignatureHeader": true
    });
    let a = c.webhooks(Method::GET, "registration/events", None).await;
    assert_eq!(a.status, 200);
    assert!(a.body.as_array().unwrap().iter().all(Value::is_string));
    let a = c.webhooks(Method::POST, "registration", Some(&body)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body["SubscriberId"].is_string());
    assert_eq!(a.body["WebhookUrl"], body["WebhookUrl"]);
    let a = c.webhooks(Method::POST, "registration", Some(&body)).await;
    assert_eq!(a.status, 409);
    let a = c.webhooks(Method::PUT, "registration", Some(&body)).await;
    assert_eq!(a.status, 200);
    // "View a registration": the URL and the events.
    let a = c.webhooks(Method::GET, "registration", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["WebhookEvents"], body["WebhookEvents"]);
    // Test event: `{correlationId}` (the docs' sample), then its status.
    let a = c
        .webhooks(Method::POST, "registration/validationEvents", None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let corr = a.body["correlationId"].as_str().unwrap().to_string();
    let a = c
        .webhooks(
            Method::GET,
            &format!("registration/validationEvents/{corr}"),
            None,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["correlationId"], corr.as_str());
    assert!(a.body["results"].is_array());
    sandbox.shutdown().await;
}

// ----- strict rules ----------------------------------------------------------------------

#[tokio::test]
async fn strict_patch_only_on_writable_paths() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let c = Caller::new(&sandbox);
    let created = create(&c, &with_intent(co_sell_example())).await;
    let url = format!("referrals/{}", created["id"].as_str().unwrap());
    for (path, value) in [
        (
            "/inviteContext/assistanceRequestCode",
            json!("QuotesOrLicensing"),
        ),
        ("/inviteContext", json!({ "notes": "x" })),
        ("/name", json!("Renamed")),
        ("/customerProfile/name", json!("Other Inc")),
        ("/details/requirements/additionalRequirements", json!({})),
    ] {
        let a = c
            .referrals(
                Method::PATCH,
                &url,
                Some(&json!([{ "op": "replace", "path": path, "value": value }])),
            )
            .await;
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        assert!(
            a.body["error"]["message"].as_str().unwrap().contains(path),
            "{}",
            a.body
        );
    }
    let a = c
        .referrals(
            Method::PATCH,
            &url,
            Some(&json!([{ "op": "replace", "path": "/details/dealValue", "value": null }])),
        )
        .await;
    assert_eq!(a.status, 400, "dealValue is not nullable: {}", a.body);
    for (op, path, value) in [
        ("replace", "/campaignId", json!("C-1")),
        (
            "replace",
            "/consent/consentToShareReferralWithMicrosoftSellers",
            json!(true),
        ),
        (
            "replace",
            "/customerProfile/team",
            json!([{ "email": "a@b.example" }]),
        ),
        (
            "add",
            "/customerProfile/team/-",
            json!({ "email": "c@d.example" }),
        ),
        (
            "replace",
            "/details/closingDateTime",
            json!("2026-01-01T00:00:00Z"),
        ),
        ("replace", "/details/currency", json!("EUR")),
        ("replace", "/details/dealValue", json!(5)),
        ("replace", "/details/notes", json!("n")),
        (
            "replace",
            "/details/requirements/solutions",
            json!([{ "id": "SOL-1-AAA" }]),
        ),
        (
            "add",
            "/details/requirements/solutions/-",
            json!({ "id": "SOL-2-BBB" }),
        ),
        ("replace", "/externalReferenceId", json!("OPP-1")),
        ("replace", "/referralProgram", json!("p")),
        ("replace", "/salesStage", json!("Develop")),
        ("replace", "/statusReason", json!("r")),
        ("replace", "/team", json!([{ "email": "e@f.example" }])),
        ("add", "/team/-", json!({ "email": "g@h.example" })),
    ] {
        let a = c
            .referrals(
                Method::PATCH,
                &url,
                Some(&json!([{ "op": op, "path": path, "value": value }])),
            )
            .await;
        assert_eq!(a.status, 204, "{path}: {}", a.body);
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn strict_create_needs_the_marketplace_intent() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let c = Caller::new(&sandbox);
    let mut body = private_deal_example();
    body["details"]["requirements"]["additionalRequirements"] = json!({ "iot": {} });
    let a = c.referrals(Method::POST, "referrals", Some(&body)).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CustomerMarketplaceIntent"),
        "{}",
        a.body
    );
    body["details"]["requirements"]["additionalRequirements"] =
        json!({ "attributes": [ { "id": "Perhaps", "type": "CustomerMarketplaceIntent" } ] });
    let a = c.referrals(Method::POST, "referrals", Some(&body)).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Perhaps")
    );
    for intent in ["Yes", "No", "HaveNotDecided"] {
        body["details"]["requirements"]["additionalRequirements"] =
            json!({ "attributes": [ { "id": intent, "type": "CustomerMarketplaceIntent" } ] });
        create(&c, &body).await;
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn strict_filters_only_on_documented_members() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let c = Caller::new(&sandbox);
    for filter in [
        "externalReferenceId eq 'OPP-00042'",
        "createdDateTime ge 2020-01-01T00:00:00Z",
        "direction eq 'Outgoing' and createdDateTime ge 2020-01-01T00:00:00Z",
        "customerProfile/name eq 'Contoso'",
        "team/any(t: t/firstName eq 'John')",
        "details/dealValue gt 5",
    ] {
        let a = c.list(&format!("$filter={filter}")).await;
        assert_eq!(a.status, 400, "{filter}: {}", a.body);
        assert!(
            a.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("is not supported"),
            "{}",
            a.body
        );
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn strict_skip_applies_before_top_and_count_is_always_there() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let c = Caller::new(&sandbox);
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut body = private_deal_example();
        body["name"] = json!(format!("Deal {i}"));
        ids.push(create(&c, &body).await["id"].as_str().unwrap().to_string());
    }
    let a = c.list("$orderby=createdDateTime asc&$skip=1&$top=2").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let got: Vec<&str> = a.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[1].as_str(), ids[2].as_str()]);
    assert_eq!(a.body["@odata.count"], 5);
    sandbox.shutdown().await;
}

#[tokio::test]
async fn strict_webhook_api_contract() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let c = Caller::new(&sandbox);
    // MS-Contract-Version is required.
    let url = format!("{}registration/events", c.webhooks);
    let a = c.call(Method::GET, &url, &[], None).await;
    assert_eq!(a.status, 400, "{}", a.body);
    // The read-back does not carry the signature flag.
    let body = json!({
        "WebhookUrl": "http://127.0.0.1:9/hook",
        "WebhookEvents": ["referral-created"],
        "SignatureTokenToMsSignatureHeader": true
    });
    let a = c.webhooks(Method::POST, "registration", Some(&body)).await;
    assert_eq!(a.status, 200);
    let a = c.webhooks(Method::GET, "registration", None).await;
    assert_eq!(a.status, 200);
    let keys: Vec<&String> = a.body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(a.body.get("SignatureTokenToMsSignatureHeader").is_none());
    sandbox.shutdown().await;
}

// ----- contract: §1.2-1.3 token exchanges -------------------------------------------------

/// POSTs `form` (urlencoded) to `url`.
async fn post_form(url: &str, form: &[(&str, &str)]) -> Answer {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let req = http::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Bytes::from(body))
        .unwrap();
    let resp = ReqwestTransport::new()
        .unwrap()
        .send(req)
        .await
        .expect("answer");
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: serde_json::from_slice(resp.body()).unwrap_or(Value::Null),
    }
}

/// GETs `url` with `token`, as the given API expects it.
async fn get_with(c: &Caller, url: &str, token: &str) -> Answer {
    let req = http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .header("ms-contract-version", "v1")
        .body(Bytes::new())
        .unwrap();
    let resp = c.transport.send(req).await.expect("answer");
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: serde_json::from_slice(resp.body()).unwrap_or(Value::Null),
    }
}

#[tokio::test]
async fn contract_token_exchanges_as_documented() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let c = Caller::new(&sandbox);
    let entra = sandbox.urls().entra.to_string();
    let entra = entra.trim_end_matches('/');
    let list = format!("{}referrals", c.referrals);
    let events = format!("{}registration/events", c.webhooks);

    // §1.2, "Referrals API authentication": the v1 ROPC request as documented (the page uses
    // `common`), and its answer, whose numbers are strings.
    let a = post_form(
        &format!("{entra}/common/oauth2/token"),
        &[
            ("resource", REFERRALS_AUDIENCE),
            ("grant_type", "password"),
            ("scope", "openid"),
            ("client_id", SANDBOX_CLIENT_ID),
            ("client_secret", SANDBOX_CLIENT_SECRET),
            ("username", SANDBOX_USERNAME),
            ("password", SANDBOX_PASSWORD),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["token_type"], "Bearer");
    assert_eq!(a.body["resource"], REFERRALS_AUDIENCE);
    for member in ["expires_in", "ext_expires_in", "expires_on", "not_before"] {
        let v = a.body[member]
            .as_str()
            .unwrap_or_else(|| panic!("{member}: {}", a.body));
        assert!(v.parse::<u64>().is_ok(), "{member} = {v}");
    }
    let ropc = a.body["access_token"].as_str().unwrap().to_string();
    // An app+user token: the referrals API takes it.
    assert_eq!(get_with(&c, &list, &ropc).await.status, 200);
    // A wrong password is refused.
    let a = post_form(
        &format!("{entra}/common/oauth2/token"),
        &[
            ("resource", REFERRALS_AUDIENCE),
            ("grant_type", "password"),
            ("client_id", SANDBOX_CLIENT_ID),
            ("client_secret", SANDBOX_CLIENT_SECRET),
            ("username", SANDBOX_USERNAME),
            ("password", "wrong"),
        ],
    )
    .await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // §1.3: an app token for the webhook API (client credentials, v2 scope `/.default`).
    let v2 = format!("{entra}/{SANDBOX_TENANT}/oauth2/v2.0/token");
    let scope = format!("{WEBHOOKS_AUDIENCE}/.default");
    let a = post_form(
        &v2,
        &[
            ("client_id", SANDBOX_CLIENT_ID),
            ("client_secret", SANDBOX_CLIENT_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", &scope),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["token_type"], "Bearer");
    assert!(a.body["expires_in"].is_u64(), "{}", a.body);
    assert!(a.body.get("refresh_token").is_none(), "{}", a.body);
    let app = a.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(get_with(&c, &events, &app).await.status, 200);
    // The same grant for the referrals API gives an app-only token, which it refuses with the
    // error-codes page's example (§3.8): `unAuthorized`, "Caller is not authorized…".
    let scope = format!("{REFERRALS_AUDIENCE}/.default");
    let a = post_form(
        &v2,
        &[
            ("client_id", SANDBOX_CLIENT_ID),
            ("client_secret", SANDBOX_CLIENT_SECRET),
            ("grant_type", "client_credentials"),
            ("scope", &scope),
        ],
    )
    .await;
    let app_only = a.body["access_token"].as_str().unwrap().to_string();
    let a = get_with(&c, &list, &app_only).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "unAuthorized");
    assert_eq!(
        a.body["error"]["message"],
        "Caller is not authorized to access the resource."
    );
    assert_eq!(a.body["error"]["target"], "referral");
    assert_eq!(a.body["error"]["innerError"]["code"], "innerErrorCode");

    // §1.2, the Secure Application Model: app+user through a refresh token (v2).
    let refresh = sandbox.entra().issue_refresh_token(SANDBOX_CLIENT_ID);
    let scope = format!("{REFERRALS_AUDIENCE}/.default offline_access");
    let a = post_form(
        &v2,
        &[
            ("client_id", SANDBOX_CLIENT_ID),
            ("client_secret", SANDBOX_CLIENT_SECRET),
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("scope", &scope),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["token_type"], "Bearer");
    assert_eq!(a.body["scope"], scope.as_str());
    assert!(a.body["expires_in"].is_u64());
    assert!(a.body["refresh_token"].is_string(), "{}", a.body);
    let user = a.body["access_token"].as_str().unwrap().to_string();
    assert_eq!(get_with(&c, &list, &user).await.status, 200);
    sandbox.shutdown().await;
}

// ----- contract: webhook API errors (Corrections; Partner Center REST error codes) ----------

/// The webhook API's error body as the Partner Center REST error-codes page documents it:
/// `code` and `description` always (strings), `data` a list, `source` always; nothing else.
fn assert_webhook_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    let obj = a.body.as_object().unwrap_or_else(|| panic!("{}", a.body));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "data", "description", "source"],
        "{}",
        a.body
    );
    assert_eq!(a.body["code"], code, "{}", a.body);
    assert!(
        a.body["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );
    assert!(a.body["data"].is_array());
    assert!(a.body["source"].is_string());
}

#[tokio::test]
async fn contract_webhook_api_errors_in_the_documented_shape() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let c = Caller::new(&sandbox);
    let body =
        json!({ "WebhookUrl": "http://127.0.0.1:9/hook", "WebhookEvents": ["referral-created"] });
    assert_webhook_error(
        &c.webhooks(Method::GET, "registration", None).await,
        404,
        "1000",
    );
    let a = c
        .webhooks(Method::POST, "registration/validationEvents", None)
        .await;
    assert_webhook_error(&a, 404, "1000");
    let url = format!("{}registration/events", c.webhooks);
    assert_webhook_error(&c.call(Method::GET, &url, &[], None).await, 400, "800002");
    let a = get_with(&c, &url, &c.token).await;
    assert_webhook_error(&a, 401, "400");
    assert_eq!(
        c.webhooks(Method::POST, "registration", Some(&body))
            .await
            .status,
        200
    );
    let a = c.webhooks(Method::POST, "registration", Some(&body)).await;
    assert_webhook_error(&a, 409, "409");
    assert_eq!(
        a.body["description"],
        "Registration already exists, use the PUT method to update a registration."
    );
    let a = c
        .webhooks(
            Method::PUT,
            "registration",
            Some(&json!({ "WebhookUrl": "x" })),
        )
        .await;
    assert_webhook_error(&a, 400, "800002");
    // A test event needs `test-created` in the registration.
    let a = c
        .webhooks(Method::POST, "registration/validationEvents", None)
        .await;
    assert_webhook_error(&a, 400, "800002");
    let a = c
        .webhooks(Method::GET, "registration/validationEvents/nope", None)
        .await;
    assert_webhook_error(&a, 404, "1000");
    // An injected failure on the webhook host answers in the same shape.
    sandbox.faults().inject(
        cosell_sandbox::Service::Webhooks,
        cosell_sandbox::Fault::status(503).times(1),
    );
    assert_webhook_error(
        &c.webhooks(Method::GET, "registration", None).await,
        503,
        "503",
    );
    // The referrals API keeps its own documented shape.
    let a = c
        .referrals(
            Method::GET,
            "referrals/00000000-0000-0000-0000-000000000000",
            None,
        )
        .await;
    assert_eq!(a.status, 404);
    assert_eq!(a.body["error"]["code"], "itemNotFound");
    sandbox.faults().inject(
        cosell_sandbox::Service::Referrals,
        cosell_sandbox::Fault::status(503).times(1),
    );
    let a = c.referrals(Method::GET, "referrals", None).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.body["error"]["code"], "serviceNotAvailable");
    sandbox.shutdown().await;
}

// ----- contract: §4.2-4.3 and §6.5 signed callbacks -----------------------------------------

struct Received {
    headers: HeaderMap,
    body: Bytes,
}

/// A callback receiver on 127.0.0.1 answering 200.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/partner-center/webhook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Received { headers, body });
                http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/partner-center/webhook"), rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a callback within 10 s")
        .expect("receiver open")
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The body is the documented PascalCase payload, exactly those five members.
fn assert_documented_payload(body: &[u8], event: &str, resource: &str) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "AuditUri",
            "EventName",
            "ResourceChangeUtcDate",
            "ResourceName",
            "ResourceUri"
        ]
    );
    assert_eq!(v["EventName"], event);
    assert_eq!(v["ResourceName"], resource);
    assert_eq!(v["AuditUri"], Value::Null);
    // "2018-02-17T00:05:39.5485487+00:00": seven fractional digits, offset +00:00.
    let date = v["ResourceChangeUtcDate"].as_str().unwrap();
    let (_, frac) = date.split_once('.').unwrap();
    assert_eq!(frac.len(), 7 + "+00:00".len(), "{date}");
    assert!(date.ends_with("+00:00"), "{date}");
    chrono::DateTime::parse_from_rfc3339(date).unwrap();
    v
}

#[tokio::test]
async fn contract_signed_callback_as_documented() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    sandbox.partner_center().set_test_event_limit(false);
    let pc = sandbox.partner_center();
    let c = Caller::new(&sandbox);
    let verifier = pc.webhook_verifier_builder().unwrap().build().unwrap();
    let (url, mut rx) = receiver().await;

    // §6.5 with the signature in `Authorization` (no `SignatureTokenToMsSignatureHeader`).
    let reg = json!({ "WebhookUrl": url, "WebhookEvents": ["referral-created", "test-created"] });
    assert_eq!(
        c.webhooks(Method::POST, "registration", Some(&reg))
            .await
            .status,
        200
    );
    let created = create(&c, &private_deal_example()).await;
    let got = next(&mut rx).await;
    let h = &got.headers;
    assert_eq!(header(h, "content-type"), Some("application/json"));
    let auth = header(h, "authorization").expect("Authorization");
    let signature = auth.strip_prefix("Signature ").expect("scheme `Signature`");
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .expect("base64 signature");
    assert_eq!(raw.len(), 256, "an RSA-2048 PKCS#1 v1.5 signature");
    assert!(h.get("x-ms-signature").is_none());
    assert_eq!(
        header(h, "x-ms-certificate-url"),
        Some(pc.certificate_url().as_str())
    );
    assert_eq!(header(h, "x-ms-signature-algorithm"), Some("rsa-sha256"));
    assert_documented_payload(&got.body, "referral-created", "referral");
    // The real verifier accepts it, over the raw body; one flipped byte is refused.
    verifier.verify(h, &got.body).await.expect("verified");
    let mut forged = got.body.to_vec();
    forged[2] ^= 1;
    assert!(verifier.verify(h, &forged).await.is_err());
    let callback = WebhookCallback::parse(&got.body).unwrap();
    assert_eq!(
        callback.referral_id(&["127.0.0.1"]).unwrap(),
        created["id"].as_str().unwrap()
    );

    // With `SignatureTokenToMsSignatureHeader: true` the token moves to `x-ms-signature`;
    // the test event's resource is `test`, its URI the validation event.
    let reg = json!({ "WebhookUrl": url, "WebhookEvents": ["referral-created", "test-created"],
                      "SignatureTokenToMsSignatureHeader": true });
    assert_eq!(
        c.webhooks(Method::PUT, "registration", Some(&reg))
            .await
            .status,
        200
    );
    let a = c
        .webhooks(Method::POST, "registration/validationEvents", None)
        .await;
    let corr = a.body["correlationId"].as_str().unwrap().to_string();
    let got = next(&mut rx).await;
    assert!(got.headers.get("authorization").is_none());
    assert!(header(&got.headers, "x-ms-signature").is_some_and(|s| s.starts_with("Signature ")));
    let v = assert_documented_payload(&got.body, "test-created", "test");
    assert!(v["ResourceUri"].as_str().unwrap().ends_with(&format!(
        "/webhooks/v1/registration/validationEvents/{corr}"
    )));
    verifier
        .verify(&got.headers, &got.body)
        .await
        .expect("verified");

    // The documented body of §6.5 itself, signed as the sandbox signs, verifies and names its
    // referral on the documented host.
    const DOC: &[u8] = br#"{"EventName":"related-referral-updated","ResourceUri":"https://api.partnercenter.microsoft.com/engagements/v1/referrals/4111fffc-f9ee-4d53-bba6-569135228642","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2024-02-25T09:11:02.1034567+00:00"}"#;
    let mut h = HeaderMap::new();
    for (k, v) in pc.sign_callback(DOC, false).unwrap() {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    assert_eq!(header(&h, "content-type"), Some("application/json"));
    verifier.verify(&h, DOC).await.expect("verified");
    let callback = WebhookCallback::parse(DOC).unwrap();
    assert_eq!(
        callback
            .referral_id(WebhookCallback::DEFAULT_RESOURCE_HOSTS)
            .unwrap(),
        "4111fffc-f9ee-4d53-bba6-569135228642"
    );
    sandbox.shutdown().await;
}

// ----- contract: §3.6 deal registration, §3.7 PUT (obsolete) --------------------------------

#[tokio::test]
async fn contract_deal_registration_and_obsolete_put() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let c = Caller::new(&sandbox);
    let created = create(&c, &private_deal_example()).await;
    let id = created["id"].as_str().unwrap();
    let url = format!("referrals/{id}");

    // §3.6, the connector's deal-registration create: 204.
    let a = c
        .referrals(
            Method::PATCH,
            &url,
            Some(&json!([{ "op": "add", "path": "/registrations/-", "value": {
                "type": "AzureIPCoSell",
                "solutionDetails": [ { "id": "SOL-15974-MQF", "currency": "USD", "value": 50000,
                    "isDeployedOnAzure": true, "primaryDeploymentOn": "Customer", "pricingModel": "PayAsYouGo",
                    "marketplaceTransactionDetails": { "isMarketplaceTransacted": false,
                                                       "marketplaceTransactionDateTime": "2024-10-01T00:00:00Z" } } ],
                "contract": { "currency": "USD", "endDateTime": "2025-10-01T00:00:00Z", "term": "Finite",
                              "value": 50000, "signDateTime": "2024-09-01T00:00:00Z", "startDateTime": "2024-10-01T00:00:00Z" }
            } }])),
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.body);
    // …and its update path.
    let a = c
        .referrals(
            Method::PATCH,
            &url,
            Some(&json!([{ "op": "replace", "path": "/registrations/0/contract/value", "value": 60000 }])),
        )
        .await;
    assert_eq!(a.status, 204, "{}", a.body);
    let got = c.referrals(Method::GET, &url, None).await;
    assert_eq!(got.body["registrations"][0]["type"], "AzureIPCoSell");
    assert_eq!(got.body["registrations"][0]["contract"]["value"], 60000);

    // §3.7: PUT the full referral without `links`, If-Match set: 200 with the referral.
    let mut full = got.body.clone();
    let etag = full["eTag"].as_str().unwrap().to_string();
    full.as_object_mut().unwrap().remove("links");
    full["details"]["notes"] = json!("Replaced by the obsolete PUT.");
    let a = c.referrals(Method::PUT, &url, Some(&full)).await;
    assert_eq!(a.status, 400, "If-Match is required on PUT: {}", a.body);
    let a = c
        .call(
            Method::PUT,
            &format!("{}{url}", c.referrals),
            &[("if-match", &etag)],
            Some(&full),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["details"]["notes"], "Replaced by the obsolete PUT.");
    assert_ne!(a.body["eTag"].as_str(), Some(etag.as_str()));
    sandbox.shutdown().await;
}

// ----- contract: §1.4 headers, §3.9 test-event throttling -----------------------------------

#[tokio::test]
async fn contract_documented_headers_and_test_event_throttle() {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let c = Caller::new(&sandbox);
    // Webhooks: MS-CorrelationId and MS-RequestId come back.
    let url = format!("{}registration/events", c.webhooks);
    let a = c
        .call(
            Method::GET,
            &url,
            &[
                ("ms-contract-version", "v1"),
                ("ms-correlationid", "0b6c5e0e-9e6b-4a51-9c27-1f1d3a3b7c11"),
                ("ms-requestid", "6c0e5d9a-2f4b-4b9e-8f0e-3f6d5b7c9a21"),
            ],
            None,
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        header(&a.headers, "ms-correlationid"),
        Some("0b6c5e0e-9e6b-4a51-9c27-1f1d3a3b7c11")
    );
    assert_eq!(
        header(&a.headers, "ms-requestid"),
        Some("6c0e5d9a-2f4b-4b9e-8f0e-3f6d5b7c9a21")
    );
    // Test events: "a throttle limit of 2 requests per minute", 429 with Retry-After and the
    // throttling guidance's body.
    let reg = json!({ "WebhookUrl": "http://127.0.0.1:9/hook", "WebhookEvents": ["test-created"] });
    assert_eq!(
        c.webhooks(Method::POST, "registration", Some(&reg))
            .await
            .status,
        200
    );
    for _ in 0..2 {
        let a = c
            .webhooks(Method::POST, "registration/validationEvents", None)
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let a = c
        .webhooks(Method::POST, "registration/validationEvents", None)
        .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(header(&a.headers, "retry-after").is_some_and(|s| s.parse::<u64>().is_ok()));
    assert_eq!(a.body["statusCode"], 429);
    assert!(
        a.body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Rate limit is exceeded."))
    );
    sandbox.shutdown().await;
}
