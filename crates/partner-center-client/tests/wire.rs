//! The exact wire format of every request, against a local mock server: paths, queries,
//! headers, bodies, retries and error mapping. A catch-all mock fails the test on any request
//! nobody expected.

// Helpers outside #[test] functions panic on setup failures too; that is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cosell_http::{
    AccessToken, CredentialError, RetryPolicy, StaticTokenCredential, TokenCredential,
};
use futures::TryStreamExt;
use partner_center_client::models::*;
use partner_center_client::webhook::registration::{WebhookEvent, WebhookRegistration};
use partner_center_client::{Error, PartnerCenterClient};
use serde_json::{Value, json};
use wiremock::matchers::{
    any, body_json, body_string, header, header_exists, method, path, query_param,
};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "test-token";
const ID: &str = "4111fffc-f9ee-4d53-bba6-569135228642";

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(3)
        .with_initial_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(50))
        .with_max_retry_after(Duration::from_secs(2))
        .with_jitter(false)
}

fn client_for(server: &MockServer) -> PartnerCenterClient {
    PartnerCenterClient::builder()
        .referrals_endpoint(
            format!("{}/v1.0/engagements/", server.uri())
                .parse()
                .unwrap(),
        )
        .webhooks_endpoint(format!("{}/webhooks/v1/", server.uri()).parse().unwrap())
        .credential(Arc::new(StaticTokenCredential::new(TOKEN)))
        .retry(fast_retry())
        .build()
        .unwrap()
}

/// A server whose catch-all answers 599 and must never be hit.
async fn server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(599))
        .with_priority(u8::MAX)
        .expect(0)
        .named("unexpected request")
        .mount(&server)
        .await;
    server
}

/// Headers every Referrals API call carries.
fn referrals_call(m: &str, p: &str) -> wiremock::MockBuilder {
    Mock::given(method(m))
        .and(path(p))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("accept", "application/json"))
        .and(header_exists("client-request-id"))
        .and(header_exists("ms-correlationid"))
}

/// Headers every webhook API call carries.
fn webhooks_call(m: &str, p: &str) -> wiremock::MockBuilder {
    Mock::given(method(m))
        .and(path(p))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("accept", "application/json"))
        .and(header_exists("ms-requestid"))
        .and(header_exists("ms-correlationid"))
}

fn header_of(req: &Request, name: &str) -> Option<String> {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn referral_json(id: &str) -> Value {
    json!({ "id": id, "status": "Active", "substatus": "Accepted", "eTag": "\"e-1\"" })
}

fn sample_referral() -> Referral {
    serde_json::from_value(fixture("create_cosell.json")).unwrap()
}

mod referrals {
    use super::*;
    use pretty_assertions::assert_eq;

    #[tokio::test]
    async fn get_sends_auth_ids_and_accept() {
        let server = server().await;
        referrals_call("GET", &format!("/v1.0/engagements/referrals/{ID}"))
            .respond_with(ResponseTemplate::new(200).set_body_json(fixture("get_referral.json")))
            .expect(1)
            .mount(&server)
            .await;
        let r = client_for(&server).get_referral(ID).await.unwrap();
        assert_eq!(r.id.as_deref(), Some(ID));
        assert_eq!(
            r.e_tag.as_deref(),
            Some("\"00006d10-0000-0000-0000-5c70aa630000\"")
        );
        let reqs = server.received_requests().await.unwrap();
        // The connector marks `Content-Type` required on GETs too (issue 11, item 14).
        assert_eq!(
            header_of(&reqs[0], "content-type").as_deref(),
            Some("application/json")
        );
    }

    #[tokio::test]
    async fn retry_repeats_the_same_client_request_id() {
        let server = server().await;
        referrals_call("GET", &format!("/v1.0/engagements/referrals/{ID}"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(1)
            .with_priority(1)
            .expect(1)
            .mount(&server)
            .await;
        referrals_call("GET", &format!("/v1.0/engagements/referrals/{ID}"))
            .respond_with(ResponseTemplate::new(200).set_body_json(referral_json(ID)))
            .expect(1)
            .mount(&server)
            .await;
        client_for(&server).get_referral(ID).await.unwrap();
        let reqs = server.received_requests().await.unwrap();
        assert_eq!(reqs.len(), 2);
        let first = header_of(&reqs[0], "client-request-id").unwrap();
        assert_eq!(header_of(&reqs[1], "client-request-id").unwrap(), first);
        assert!(uuid::Uuid::parse_str(&first).is_ok());
    }

    #[tokio::test]
    async fn ids_are_fresh_per_call() {
        let server = server().await;
        referrals_call("GET", &format!("/v1.0/engagements/referrals/{ID}"))
            .respond_with(ResponseTemplate::new(200).set_body_json(referral_json(ID)))
            .expect(2)
            .mount(&server)
            .await;
        let client = client_for(&server);
        client.get_referral(ID).await.unwrap();
        client.get_referral(ID).await.unwrap();
        let reqs = server.received_requests().await.unwrap();
        assert_ne!(
            header_of(&reqs[0], "client-request-id"),
            header_of(&reqs[1], "client-request-id")
        );
    }

    #[tokio::test]
    async fn create_posts_the_referral_json() {
        let server = server().await;
        let referral = sample_referral();
        referrals_call("POST", "/v1.0/engagements/referrals")
            .and(header("content-type", "application/json"))
            .and(body_json(fixture("create_cosell.json")))
            .respond_with(ResponseTemplate::new(201).set_body_json(referral_json("new-id")))
            .expect(1)
            .mount(&server)
            .await;
        let created = client_for(&server)
            .create_referral(&referral)
            .await
            .unwrap();
        assert_eq!(created.id.as_deref(), Some("new-id"));
        assert_eq!(
            created.status_pair(),
            (ReferralStatus::Active, ReferralSubstatus::Accepted)
        );
    }

    #[tokio::test]
    async fn create_accepts_200_too() {
        let server = server().await;
        referrals_call("POST", "/v1.0/engagements/referrals")
            .respond_with(ResponseTemplate::new(200).set_body_json(referral_json("new-id")))
            .expect(1)
            .mount(&server)
            .await;
        let created = client_for(&server)
            .create_referral(&sample_referral())
            .await
            .unwrap();
        assert_eq!(created.id.as_deref(), Some("new-id"));
    }

    #[tokio::test]
    async fn create_is_not_retried_after_a_500() {
        let server = server().await;
        referrals_call("POST", "/v1.0/engagements/referrals")
            .respond_with(ResponseTemplate::new(500).set_body_json(json!({
                "error": { "code": "generalException", "message": "try later" }
            })))
            .expect(1)
            .mount(&server)
            .await;
        let err = client_for(&server)
            .create_referral(&sample_referral())
            .await
            .unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(500));
        assert!(err.may_have_been_sent(), "outcome unknown");
        assert!(err.is_retryable());
        assert_eq!(
            err.service_error().unwrap().code(),
            Some("generalException")
        );
    }

    #[tokio::test]
    async fn create_is_retried_after_503_and_after_429_with_retry_after() {
        let server = server().await;
        referrals_call("POST", "/v1.0/engagements/referrals")
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(1)
            .with_priority(1)
            .expect(1)
            .mount(&server)
            .await;
        referrals_call("POST", "/v1.0/engagements/referrals")
            .respond_with(
                ResponseTemplate::new(429)
                    .insert_header("Retry-After", "1")
                    .set_body_json(
                        json!({"statusCode": 429, "message": "Rate limit is exceeded."}),
                    ),
            )
            .up_to_n_times(1)
            .with_priority(2)
            .expect(1)
            .mount(&server)
            .await;
        referrals_call("POST", "/v1.0/engagements/referrals")
            .respond_with(ResponseTemplate::new(201).set_body_json(referral_json("new-id")))
            .expect(1)
            .mount(&server)
            .await;
        let started = Instant::now();
        let created = client_for(&server)
            .create_referral(&sample_referral())
            .await
            .unwrap();
        assert_eq!(created.id.as_deref(), Some("new-id"));
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "Retry-After honoured"
        );
        let reqs = server.received_requests().await.unwrap();
        let ids: Vec<_> = reqs
            .iter()
            .map(|r| header_of(r, "client-request-id"))
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.iter().all(|i| i == &ids[0]));
    }

    #[tokio::test]
    async fn throttling_beyond_the_budget_is_reported_with_its_delay() {
        let server = server().await;
        referrals_call("GET", &format!("/v1.0/engagements/referrals/{ID}"))
            .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "120"))
            .expect(1)
            .mount(&server)
            .await;
        let err = client_for(&server).get_referral(ID).await.unwrap_err();
        assert!(err.is_throttled());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    }

    #[tokio::test]
    async fn list_follows_http_next_links_on_another_path_across_three_pages() {
        let server = server().await;
        let filter = "status eq 'Active' and direction eq 'Outgoing'";
        referrals_call("GET", "/v1.0/engagements/referrals")
            .and(query_param("$filter", filter))
            .and(query_param("$orderby", "updatedDateTime desc"))
            .and(query_param("$top", "2"))
            .and(query_param("$select", "id,status"))
            .and(query_param("$count", "true"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "@odata.context": "http://api.partner.microsoft.com/v1.0/$metadata#Referrals",
                "@odata.count": 5,
                "value": [ { "id": "r1" }, { "id": "r2" } ],
                "@odata.nextLink": "http://api.partner.microsoft.com/v1.0/referrals?$skiptoken=k181pEdP0ykypkieJfcxX%3D%3D"
            })))
            .expect(1)
            .mount(&server)
            .await;
        referrals_call("GET", "/v1.0/referrals")
            .and(query_param("$skiptoken", "k181pEdP0ykypkieJfcxX=="))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "value": [ { "id": "r3" }, { "id": "r4" } ],
                "@odata.nextLink": "http://api.partner.microsoft.com/v1.0/referrals?$skiptoken=page3"
            })))
            .expect(1)
            .mount(&server)
            .await;
        referrals_call("GET", "/v1.0/referrals")
            .and(query_param("$skiptoken", "page3"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({ "value": [ { "id": "r5" } ] })),
            )
            .expect(1)
            .mount(&server)
            .await;

        let pages: Vec<_> = client_for(&server)
            .list_referrals()
            .filter(filter)
            .order_by("updatedDateTime desc")
            .top(2)
            .select(["id", "status"])
            .count(true)
            .into_pages()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(pages.len(), 3);
        assert_eq!(pages[0].count, Some(5));
        assert!(pages[2].next_link.is_none());
        let ids: Vec<_> = pages
            .iter()
            .flat_map(|p| p.items.iter().map(|r| r.id.clone().unwrap()))
            .collect();
        assert_eq!(ids, ["r1", "r2", "r3", "r4", "r5"]);
        // The token is only ever sent to the configured host.
        let host = server.address().to_string();
        for req in server.received_requests().await.unwrap() {
            assert_eq!(header_of(&req, "host").as_deref(), Some(host.as_str()));
        }
    }

    #[tokio::test]
    async fn list_stream_and_resume_from_a_saved_link() {
        let server = server().await;
        referrals_call("GET", "/v1.0/referrals")
            .and(query_param("$skiptoken", "saved"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "value": [ { "id": "r9" } ]
            })))
            .expect(1)
            .mount(&server)
            .await;
        let items: Vec<Referral> = client_for(&server)
            .list_referrals()
            .resume_from(cosell_http::NextLink::new(
                "http://api.partner.microsoft.com/v1.0/referrals?$skiptoken=saved",
            ))
            .into_stream()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(items[0].id.as_deref(), Some("r9"));
    }

    #[tokio::test]
    async fn plain_list_has_no_query_and_a_bad_page_is_a_decode_error() {
        let server = server().await;
        referrals_call("GET", "/v1.0/engagements/referrals")
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "value": [ { "id": "ok" }, { "id": "bad", "target": [ { "type": "SolutionProfile" } ] } ]
            })))
            .expect(1)
            .mount(&server)
            .await;
        let result: Result<Vec<Referral>, Error> = client_for(&server)
            .list_referrals()
            .into_stream()
            .try_collect()
            .await;
        match result {
            Err(Error::Decode(e)) => assert_eq!(e.path(), "value[1].target[0]"),
            other => panic!("expected a decode error, got {other:?}"),
        }
        let reqs = server.received_requests().await.unwrap();
        assert_eq!(reqs[0].url.query(), None);
    }

    #[tokio::test]
    async fn related_referrals_filter_by_engagement_with_escaped_literal() {
        let server = server().await;
        referrals_call("GET", "/v1.0/engagements/referrals")
            .and(query_param("$filter", "engagementId eq 'abc''; drop'"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "value": [] })))
            .expect(1)
            .mount(&server)
            .await;
        let items: Vec<Referral> = client_for(&server)
            .related_referrals("abc'; drop")
            .into_stream()
            .try_collect()
            .await
            .unwrap();
        assert!(items.is_empty());
    }

    #[tokio::test]
    async fn patch_sends_if_match_verbatim_prefer_and_the_patch_array() {
        let server = server().await;
        referrals_call("PATCH", &format!("/v1.0/engagements/referrals/{ID}"))
            .and(header("content-type", "application/json"))
            .and(header("if-match", "\"00006d10-0000-0000-0000-5c70aa630000\""))
            .and(header("prefer", "return=representation"))
            .and(body_json(json!([
                { "op": "replace", "path": "/details/notes", "value": "Workshop booked" },
                { "op": "replace", "path": "/details/dealValue", "value": 10000 },
                { "op": "add", "path": "/team/-", "value": { "email": "jane.doe@contoso.com", "firstName": "Jane" } }
            ])))
            .respond_with(ResponseTemplate::new(200).set_body_json(referral_json(ID)))
            .expect(1)
            .mount(&server)
            .await;
        let updated = client_for(&server)
            .update_referral(
                ID,
                vec![
                    PatchOperation::set_notes("Workshop booked"),
                    PatchOperation::set_deal_value(10000.into()),
                ],
            )
            .op(PatchOperation::add_team_member(&Member {
                email: Some("jane.doe@contoso.com".into()),
                first_name: Some("Jane".into()),
                ..Default::default()
            }))
            .if_match("\"00006d10-0000-0000-0000-5c70aa630000\"")
            .return_representation()
            .send()
            .await
            .unwrap();
        assert_eq!(updated.unwrap().id.as_deref(), Some(ID));
    }

    #[tokio::test]
    async fn patch_without_prefer_gets_204_and_none() {
        let server = server().await;
        referrals_call("PATCH", &format!("/v1.0/engagements/referrals/{ID}"))
            .and(body_string(
                r#"[{"op":"replace","path":"/statusReason","value":"budget"}]"#,
            ))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        let out = client_for(&server)
            .update_referral(ID, vec![PatchOperation::set_status_reason("budget")])
            .send()
            .await
            .unwrap();
        assert_eq!(out, None);
        let reqs = server.received_requests().await.unwrap();
        assert!(reqs[0].headers.get("if-match").is_none());
        assert!(reqs[0].headers.get("prefer").is_none());
    }

    #[tokio::test]
    async fn patch_without_if_match_is_not_retried_after_a_500_but_with_it_is() {
        let server = server().await;
        referrals_call("PATCH", &format!("/v1.0/engagements/referrals/{ID}"))
            .respond_with(ResponseTemplate::new(500))
            .up_to_n_times(2)
            .with_priority(1)
            .expect(2)
            .mount(&server)
            .await;
        referrals_call("PATCH", &format!("/v1.0/engagements/referrals/{ID}"))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        let client = client_for(&server);
        let err = client
            .update_referral(ID, vec![PatchOperation::set_notes("x")])
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(500));
        // Under If-Match: 500 once more, then 204.
        client
            .update_referral(ID, vec![PatchOperation::set_notes("x")])
            .if_match("\"e\"")
            .send()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn stale_etag_is_precondition_failed() {
        let server = server().await;
        referrals_call("PATCH", &format!("/v1.0/engagements/referrals/{ID}"))
            .and(header("if-match", "\"old\""))
            .respond_with(
                ResponseTemplate::new(412).set_body_json(fixture("error_precondition_failed.json")),
            )
            .expect(1)
            .mount(&server)
            .await;
        let err = client_for(&server)
            .update_referral(ID, vec![PatchOperation::set_notes("x")])
            .if_match("\"old\"")
            .send()
            .await
            .unwrap_err();
        assert!(err.is_precondition_failed());
        assert!(!err.is_retryable());
        assert!(!err.may_have_been_sent());
        match &err {
            Error::PreconditionFailed(e) => {
                assert_eq!(e.code(), Some("preconditionFailed"));
                assert_eq!(e.target(), Some("referral"));
            }
            other => panic!("expected PreconditionFailed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn forbidden_transitions_send_nothing() {
        let server = server().await;
        let client = client_for(&server);
        let won: Referral = serde_json::from_value(json!({
            "id": ID, "status": "Closed", "substatus": "Won", "eTag": "\"e\""
        }))
        .unwrap();
        let err = client
            .transition_referral(&won, ReferralStatus::Active, ReferralSubstatus::Accepted)
            .send()
            .await
            .unwrap_err();
        match err {
            Error::InvalidTransition(t) => {
                assert_eq!(t.from(), &(ReferralStatus::Closed, ReferralSubstatus::Won));
                assert_eq!(t.rule(), TransitionRule::Terminal);
            }
            other => panic!("expected InvalidTransition, got {other:?}"),
        }

        let err = client
            .update_referral(ID, vec![PatchOperation::set_status(&ReferralStatus::New)])
            .expect_current(ReferralStatus::Active, ReferralSubstatus::Accepted)
            .send()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidTransition(_)), "{err:?}");

        let err = client.update_referral(ID, vec![]).send().await.unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
        let err = client.get_referral("  ").await.unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
        // The catch-all (expect 0) proves nothing reached the server.
    }

    #[tokio::test]
    async fn allowed_transition_sends_status_pair_under_if_match() {
        let server = server().await;
        referrals_call("PATCH", &format!("/v1.0/engagements/referrals/{ID}"))
            .and(header("if-match", "\"e-1\""))
            .and(header("prefer", "return=representation"))
            .and(body_json(json!([
                { "op": "replace", "path": "/status", "value": "Closed" },
                { "op": "replace", "path": "/substatus", "value": "Won" }
            ])))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": ID, "status": "Closed", "substatus": "Won"
            })))
            .expect(1)
            .mount(&server)
            .await;
        let current: Referral = serde_json::from_value(referral_json(ID)).unwrap();
        let won = client_for(&server)
            .transition_referral(&current, ReferralStatus::Closed, ReferralSubstatus::Won)
            .send()
            .await
            .unwrap()
            .unwrap();
        assert!(won.is_terminal());
    }

    #[tokio::test]
    async fn unauthorized_with_the_partner_center_body_is_a_typed_service_error() {
        let server = server().await;
        // The pipeline refreshes the token once on 401, so two attempts.
        referrals_call("GET", &format!("/v1.0/engagements/referrals/{ID}"))
            .respond_with(ResponseTemplate::new(401).set_body_json(json!({
                "error": {
                    "code": "unAuthorized",
                    "message": "Caller is not authorized to access the resource.",
                    "target": "referral",
                    "innerError": { "code": "innerErrorCode", "message": "Unauthorized referral access" }
                }
            })))
            .expect(2)
            .mount(&server)
            .await;
        let err = client_for(&server).get_referral(ID).await.unwrap_err();
        assert!(err.is_unauthorized());
        match &err {
            Error::Service(e) => {
                assert_eq!(e.code(), Some("unAuthorized"));
                assert_eq!(
                    e.message(),
                    "Caller is not authorized to access the resource."
                );
                assert_eq!(e.inner_errors()[0].0.as_deref(), Some("innerErrorCode"));
                assert!(e.client_request_id().is_some());
            }
            other => panic!("expected Service, got {other:?}"),
        }
        assert!(!err.to_string().contains(TOKEN));
        assert!(!format!("{err:?}").contains(TOKEN));
    }

    #[tokio::test]
    async fn not_found_and_bad_bodies() {
        let server = server().await;
        referrals_call("GET", "/v1.0/engagements/referrals/missing")
            .respond_with(ResponseTemplate::new(404).set_body_json(json!({
                "error": { "code": "itemNotFound", "message": "no such referral" }
            })))
            .expect(1)
            .mount(&server)
            .await;
        referrals_call("GET", "/v1.0/engagements/referrals/garbled")
            .respond_with(ResponseTemplate::new(200).set_body_string("{\"id\": \"garbled\", "))
            .expect(1)
            .mount(&server)
            .await;
        referrals_call("GET", "/v1.0/engagements/referrals/anonymous")
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "status": "New" })))
            .expect(1)
            .mount(&server)
            .await;
        let client = client_for(&server);
        assert!(
            client
                .get_referral("missing")
                .await
                .unwrap_err()
                .is_not_found()
        );
        match client.get_referral("garbled").await.unwrap_err() {
            Error::Decode(e) => assert_eq!(e.what(), "referral"),
            other => panic!("expected Decode, got {other:?}"),
        }
        match client.get_referral("anonymous").await.unwrap_err() {
            Error::Decode(e) => assert_eq!(e.path(), "id"),
            other => panic!("expected Decode, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn ids_are_escaped_as_one_path_segment() {
        let server = server().await;
        referrals_call("GET", "/v1.0/engagements/referrals/a%2Fb%3Fc")
            .respond_with(ResponseTemplate::new(200).set_body_json(referral_json("a/b?c")))
            .expect(1)
            .mount(&server)
            .await;
        client_for(&server).get_referral("a/b?c").await.unwrap();
    }
}

mod registration {
    use super::*;
    use pretty_assertions::assert_eq;

    const HOOK: &str = "https://sync.example.com/partner-center/webhook";

    fn registration_body() -> Value {
        json!({
            "WebhookUrl": HOOK,
            "WebhookEvents": ["referral-created", "referral-updated", "related-referral-created", "related-referral-updated"],
            "SignatureTokenToMsSignatureHeader": true
        })
    }

    #[tokio::test]
    async fn overwrite_helper_puts_after_a_409() {
        let server = server().await;
        webhooks_call("POST", "/webhooks/v1/registration")
            .and(header("content-type", "application/json"))
            .and(body_json(registration_body()))
            .respond_with(ResponseTemplate::new(409).set_body_json(json!({
                "error": { "code": "conflict", "message": "Registration already exists, use the PUT method to update a registration." }
            })))
            .expect(1)
            .mount(&server)
            .await;
        let mut answer = registration_body();
        answer["SubscriberId"] = json!("b1bd2a5c-5a8b-4f49-96f3-2f8c1e3c1c10");
        webhooks_call("PUT", "/webhooks/v1/registration")
            .and(header("content-type", "application/json"))
            .and(body_json(registration_body()))
            .respond_with(ResponseTemplate::new(200).set_body_json(answer))
            .expect(1)
            .mount(&server)
            .await;
        let reg = client_for(&server)
            .register_referral_webhook(HOOK, true)
            .await
            .unwrap();
        assert_eq!(
            reg.subscriber_id.as_deref(),
            Some("b1bd2a5c-5a8b-4f49-96f3-2f8c1e3c1c10")
        );
        assert_eq!(reg.webhook_events, WebhookEvent::REFERRAL_EVENTS);
        let reqs = server.received_requests().await.unwrap();
        assert!(
            reqs.iter()
                .all(|r| r.headers.get("client-request-id").is_none())
        );
    }

    #[tokio::test]
    async fn without_overwrite_a_409_is_returned() {
        let server = server().await;
        webhooks_call("POST", "/webhooks/v1/registration")
            .respond_with(ResponseTemplate::new(409))
            .expect(1)
            .mount(&server)
            .await;
        let err = client_for(&server)
            .register_referral_webhook(HOOK, false)
            .await
            .unwrap_err();
        assert!(err.is_conflict());
    }

    #[tokio::test]
    async fn create_when_none_exists() {
        let server = server().await;
        webhooks_call("POST", "/webhooks/v1/registration")
            .and(body_json(registration_body()))
            .respond_with(ResponseTemplate::new(200).set_body_json(registration_body()))
            .expect(1)
            .mount(&server)
            .await;
        let reg = client_for(&server)
            .register_referral_webhook(HOOK, true)
            .await
            .unwrap();
        assert_eq!(reg.webhook_url, HOOK);
    }

    #[tokio::test]
    async fn missing_registration_is_none_and_camel_case_reads() {
        let server = server().await;
        webhooks_call("GET", "/webhooks/v1/registration")
            .respond_with(ResponseTemplate::new(404))
            .up_to_n_times(1)
            .with_priority(1)
            .expect(1)
            .mount(&server)
            .await;
        webhooks_call("GET", "/webhooks/v1/registration")
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "webhookUrl": HOOK, "webhookEvents": ["referral-created", "invoice-ready"],
                "lastModifiedTimestamp": "2024-02-25T09:11:02.1034567Z"
            })))
            .expect(1)
            .mount(&server)
            .await;
        let client = client_for(&server);
        assert_eq!(client.get_webhook_registration().await.unwrap(), None);
        let reg = client.get_webhook_registration().await.unwrap().unwrap();
        assert_eq!(
            reg.webhook_events,
            [
                WebhookEvent::ReferralCreated,
                WebhookEvent::Other("invoice-ready".into())
            ]
        );
    }

    #[tokio::test]
    async fn events_and_test_events() {
        let server = server().await;
        webhooks_call("GET", "/webhooks/v1/registration/events")
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([
                "referral-created",
                "test-created",
                "usagerecords-thresholdExceeded"
            ])))
            .expect(1)
            .mount(&server)
            .await;
        webhooks_call("POST", "/webhooks/v1/registration/validationEvents")
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({ "correlationId": "c-1" })),
            )
            .expect(1)
            .mount(&server)
            .await;
        webhooks_call("GET", "/webhooks/v1/registration/validationEvents/c-1")
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "correlationId": "c-1", "partnerId": "p", "status": "completed",
                "callbackUrl": HOOK,
                "results": [ { "responseCode": "OK", "responseMessage": "", "systemError": false,
                               "dateTimeUtc": "2017-12-08T21:39:48.2386997" } ]
            })))
            .expect(1)
            .mount(&server)
            .await;
        let client = client_for(&server);
        let events = client.list_webhook_events().await.unwrap();
        assert_eq!(events[1], WebhookEvent::TestCreated);
        let correlation = client.send_test_event().await.unwrap();
        assert_eq!(correlation, "c-1");
        let status = client.get_test_event_status(&correlation).await.unwrap();
        assert_eq!(status.status.as_deref(), Some("completed"));
        assert_eq!(status.results[0].response_code.as_deref(), Some("OK"));
    }

    #[tokio::test]
    async fn replace_puts_the_given_registration() {
        let server = server().await;
        webhooks_call("PUT", "/webhooks/v1/registration")
            .and(body_json(json!({
                "WebhookUrl": HOOK, "WebhookEvents": ["test-created"], "SignatureTokenToMsSignatureHeader": true
            })))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "WebhookUrl": HOOK, "WebhookEvents": ["test-created"]
            })))
            .expect(1)
            .mount(&server)
            .await;
        let reg = WebhookRegistration::new(HOOK, [WebhookEvent::TestCreated]);
        client_for(&server)
            .replace_webhook_registration(&reg)
            .await
            .unwrap();
    }
}

mod config {
    use super::*;
    use pretty_assertions::assert_eq;

    /// Records the scopes each call asked for.
    #[derive(Debug, Default)]
    struct Recording(Mutex<Vec<String>>);

    #[async_trait]
    impl TokenCredential for Recording {
        async fn get_token(&self, scopes: &[&str]) -> Result<AccessToken, CredentialError> {
            self.0.lock().unwrap().push(scopes.join(" "));
            Ok(AccessToken::new(
                TOKEN,
                chrono::Utc::now() + chrono::Duration::hours(1),
            ))
        }
    }

    #[tokio::test]
    async fn each_host_gets_its_own_scope_and_credential() {
        let server = server().await;
        referrals_call("GET", &format!("/v1.0/engagements/referrals/{ID}"))
            .respond_with(ResponseTemplate::new(200).set_body_json(referral_json(ID)))
            .expect(2)
            .mount(&server)
            .await;
        webhooks_call("GET", "/webhooks/v1/registration/events")
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
            .expect(2)
            .mount(&server)
            .await;
        let make = |cred: Arc<Recording>, hooks: Option<Arc<Recording>>| {
            let mut b = PartnerCenterClient::builder()
                .referrals_endpoint(
                    format!("{}/v1.0/engagements", server.uri())
                        .parse()
                        .unwrap(),
                )
                .webhooks_endpoint(format!("{}/webhooks/v1", server.uri()).parse().unwrap())
                .credential(cred)
                .retry(fast_retry());
            if let Some(h) = hooks {
                b = b.webhooks_credential(h);
            }
            b.build().unwrap()
        };

        let shared = Arc::new(Recording::default());
        let client = make(shared.clone(), None);
        client.get_referral(ID).await.unwrap();
        client.list_webhook_events().await.unwrap();
        assert_eq!(
            *shared.0.lock().unwrap(),
            [
                "https://api.partner.microsoft.com/.default",
                "https://api.partnercenter.microsoft.com/.default"
            ]
        );

        let user = Arc::new(Recording::default());
        let app = Arc::new(Recording::default());
        let client = make(user.clone(), Some(app.clone()));
        client.get_referral(ID).await.unwrap();
        client.list_webhook_events().await.unwrap();
        assert_eq!(user.0.lock().unwrap().len(), 1);
        assert_eq!(
            *app.0.lock().unwrap(),
            ["https://api.partnercenter.microsoft.com/.default"]
        );
    }

    #[test]
    fn builder_validates() {
        let err = PartnerCenterClient::builder().build().unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        let err = PartnerCenterClient::builder()
            .credential(Arc::new(StaticTokenCredential::new(TOKEN)))
            .referrals_endpoint("mailto:pc@example.com".parse().unwrap())
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        let client = PartnerCenterClient::builder()
            .credential(Arc::new(StaticTokenCredential::new(TOKEN)))
            .build()
            .unwrap();
        assert_eq!(
            client.referrals_endpoint().as_str(),
            "https://api.partner.microsoft.com/v1.0/engagements/"
        );
        assert_eq!(
            client.webhooks_endpoint().as_str(),
            "https://api.partnercenter.microsoft.com/webhooks/v1/"
        );
        assert!(!format!("{client:?}").contains(TOKEN));
    }
}
