//! The Partner Center emulator against Microsoft's documented exchanges, over HTTP on 127.0.0.1.
//!
//! `contract_*` replays every example exchange of the team's reference notes
//! (`partner-center.md` §6 and the documented `$filter` examples of §3.3): the request as
//! documented, and the answer checked against what the documentation shows. `strict_*` pins the
//! restrictions Microsoft documents, so a client regression cannot hide behind a lenient
//! emulator (issue 11).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use bytes::Bytes;
use cosell_http::{HttpTransport, ReqwestTransport};
use cosell_sandbox::Sandbox;
use cosell_sandbox::entra::{REFERRALS_AUDIENCE, WEBHOOKS_AUDIENCE};
use http::Method;
use serde_json::{Value, json};

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
