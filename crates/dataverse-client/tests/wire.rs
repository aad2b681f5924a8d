//! Wire-format tests: what the client sends and how it reads what Dataverse answers, against a
//! wiremock server on loopback. Every test mounts a catch-all that fails on unexpected requests.

// Helpers outside `#[test]` functions unwrap too; a panic is a test failure here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cosell_http::{RetryPolicy, StaticTokenCredential};
use dataverse_client::{DataverseClient, Error};
use serde_json::{Value, json};
use url::Url;
use uuid::Uuid;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "test-token-do-not-log";
const API: &str = "/api/data/v9.2";

fn fixture(name: &str) -> String {
    let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

fn crlf(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\n', "\r\n")
}

fn id(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_attempts(3)
        .with_initial_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(20))
        .with_jitter(false)
}

/// A mock server with a catch-all that fails the test on any request no other mock matched,
/// and a client pointed at it.
async fn setup_with(retry: RetryPolicy) -> (MockServer, DataverseClient) {
    let server = MockServer::start().await;
    Mock::given(|_: &Request| true)
        .respond_with(ResponseTemplate::new(599))
        .with_priority(u8::MAX)
        .expect(0)
        .named("unexpected request")
        .mount(&server)
        .await;
    let client = DataverseClient::builder()
        .environment_url(Url::parse(&format!("{}/", server.uri())).unwrap())
        .credential(Arc::new(StaticTokenCredential::new(TOKEN)))
        .retry(retry)
        .build()
        .unwrap();
    (server, client)
}

async fn setup() -> (MockServer, DataverseClient) {
    setup_with(fast_retry()).await
}

/// Matches the request path exactly as sent (percent-encoding included).
fn raw_path(expected: &'static str) -> impl Fn(&Request) -> bool + Send + Sync + 'static {
    move |req: &Request| req.url.path() == expected
}

/// Matches the raw query string exactly as sent.
fn raw_query(expected: &'static str) -> impl Fn(&Request) -> bool + Send + Sync + 'static {
    move |req: &Request| req.url.query() == Some(expected)
}

/// Matches a header's whole value (wiremock's `header` splits values at commas).
fn header_is(
    name: &'static str,
    value: &'static str,
) -> impl Fn(&Request) -> bool + Send + Sync + 'static {
    move |req: &Request| {
        req.headers
            .get(name)
            .is_some_and(|v| v.as_bytes() == value.as_bytes())
    }
}

fn no_header(name: &'static str) -> impl Fn(&Request) -> bool + Send + Sync + 'static {
    move |req: &Request| !req.headers.contains_key(name)
}

fn json_response(status: u16, body: Value) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_raw(body.to_string(), "application/json; odata.metadata=minimal")
}

mod headers_and_crud {
    use super::*;
    use dataverse_client::{CustomerRef, ETag, EntityRef, Key, RetrieveOptions, UpdateOptions};

    #[tokio::test]
    async fn every_request_carries_the_odata_headers_and_the_token() {
        let (server, client) = setup().await;
        let acc = id("7eb682f1-ca75-e511-80d4-00155d2a68d1");
        Mock::given(method("GET"))
            .and(path(format!("{API}/accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)")))
            .and(query_param("$select", "name,revenue"))
            .and(query_param("$expand", "primarycontactid($select=fullname)"))
            .and(header("accept", "application/json"))
            .and(header("odata-maxversion", "4.0"))
            .and(header("odata-version", "4.0"))
            .and(header("if-none-match", "null"))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(header("prefer", "odata.include-annotations=\"*\""))
            .and(|r: &Request| r.headers.contains_key("x-ms-client-request-id"))
            .respond_with(json_response(
                200,
                json!({"@odata.context": "c", "@odata.etag": "W/\"42\"", "accountid": acc, "name": "Contoso"}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        let row = client
            .retrieve::<Value>(
                "accounts",
                &Key::id(acc),
                &RetrieveOptions::default()
                    .select(["name", "revenue"])
                    .expand("primarycontactid($select=fullname)")
                    .include_annotations("*"),
            )
            .await
            .unwrap();
        assert_eq!(row.etag, Some(ETag::new("W/\"42\"")));
        assert_eq!(row.value, json!({"accountid": acc, "name": "Contoso"}));
    }

    #[tokio::test]
    async fn create_posts_json_and_reads_odata_entity_id() {
        let (server, client) = setup().await;
        let account = id("7eb682f1-ca75-e511-80d4-00155d2a68d1");
        let contact = id("70bf4d48-34cb-ed11-b596-0022481d68cd");
        let mut body = serde_json::Map::new();
        body.insert("name".into(), json!("Contoso – Azure migration"));
        body.insert("estimatedclosedate".into(), json!("2026-09-30"));
        let (k, v) = CustomerRef::Account(account).bind("customerid");
        body.insert(k, v);
        EntityRef::new("contacts", contact).bind_into(&mut body, "parentcontactid");
        Mock::given(method("POST"))
            .and(path(format!("{API}/opportunities")))
            .and(header("content-type", "application/json; charset=utf-8"))
            .and(no_header("prefer"))
            .and(body_json(json!({
                "name": "Contoso – Azure migration",
                "estimatedclosedate": "2026-09-30",
                "customerid_account@odata.bind": "/accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)",
                "parentcontactid@odata.bind": "/contacts(70bf4d48-34cb-ed11-b596-0022481d68cd)"
            })))
            .respond_with(ResponseTemplate::new(204).insert_header(
                "OData-EntityId",
                "https://contoso.crm.dynamics.com/api/data/v9.2/opportunities(b3828ac8-917a-e511-80d2-00155d2a68d2)",
            ))
            .expect(1)
            .mount(&server)
            .await;
        let created = client.create("opportunities", &body).await.unwrap();
        assert_eq!(created, id("b3828ac8-917a-e511-80d2-00155d2a68d2"));
    }

    #[tokio::test]
    async fn create_without_entity_id_is_a_decode_error_naming_the_header() {
        let (server, client) = setup().await;
        Mock::given(method("POST"))
            .and(path(format!("{API}/accounts")))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        let err = client
            .create("accounts", &json!({"name": "x"}))
            .await
            .unwrap_err();
        let Error::Decode(d) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(d.path(), "OData-EntityId");
    }

    #[tokio::test]
    async fn create_returning_asks_for_the_representation() {
        let (server, client) = setup().await;
        Mock::given(method("POST"))
            .and(path(format!("{API}/opportunities")))
            .and(raw_query("$select=opportunityid,name"))
            .and(header("prefer", "return=representation"))
            .respond_with(
                ResponseTemplate::new(201)
                    .insert_header("Preference-Applied", "return=representation")
                    .set_body_raw(fixture("create_representation.json"), "application/json"),
            )
            .expect(1)
            .mount(&server)
            .await;
        #[derive(Debug, serde::Deserialize)]
        struct Opp {
            opportunityid: Uuid,
            name: String,
        }
        let row = client
            .create_returning::<_, Opp>(
                "opportunities",
                &json!({"name": "Contoso – Azure migration"}),
                &["opportunityid", "name"],
            )
            .await
            .unwrap();
        assert_eq!(row.etag.unwrap().as_str(), "W/\"536530\"");
        assert_eq!(
            row.value.opportunityid,
            id("b3828ac8-917a-e511-80d2-00155d2a68d2")
        );
        assert_eq!(row.value.name, "Contoso – Azure migration");
    }

    #[tokio::test]
    async fn update_sends_if_match_star_by_default_and_the_etag_when_given() {
        let (server, client) = setup().await;
        let opp = id("b3828ac8-917a-e511-80d2-00155d2a68d2");
        Mock::given(method("PATCH"))
            .and(path(format!(
                "{API}/opportunities(b3828ac8-917a-e511-80d2-00155d2a68d2)"
            )))
            .and(header("if-match", "*"))
            .and(body_json(json!({"estimatedvalue": 150000})))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("PATCH"))
            .and(path(format!(
                "{API}/opportunities(b3828ac8-917a-e511-80d2-00155d2a68d2)"
            )))
            .and(header("if-match", "W/\"470867\""))
            .respond_with(ResponseTemplate::new(412).set_body_raw(
                fixture("stale_etag_412.json"),
                "application/json; odata.metadata=minimal",
            ))
            .expect(1)
            .mount(&server)
            .await;
        let body = json!({"estimatedvalue": 150000});
        client
            .update(
                "opportunities",
                &Key::id(opp),
                &body,
                &UpdateOptions::default(),
            )
            .await
            .unwrap();
        let err = client
            .update(
                "opportunities",
                &Key::id(opp),
                &body,
                &UpdateOptions::default().if_match(ETag::new("W/\"470867\"")),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PreconditionFailed(_)), "{err:?}");
        assert!(err.is_precondition_failed());
        assert_eq!(err.dataverse_code(), Some("0x80060882"));
        assert_eq!(err.status().map(|s| s.as_u16()), Some(412));
        assert!(!err.is_retryable());
        assert!(err.client_request_id().is_some());
    }

    #[tokio::test]
    async fn delete_and_not_found() {
        let (server, client) = setup().await;
        let acc = id("7eb682f1-ca75-e511-80d4-00155d2a68d1");
        Mock::given(method("DELETE"))
            .and(path(format!(
                "{API}/accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)"
            )))
            .and(header("if-match", "W/\"1\""))
            .respond_with(ResponseTemplate::new(204))
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path(format!("{API}/accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)")))
            .respond_with(json_response(
                404,
                json!({"error": {"code": "0x80040217", "message": "account With Id = 7eb682f1-ca75-e511-80d4-00155d2a68d1 Does Not Exist"}}),
            ))
            .expect(2)
            .mount(&server)
            .await;
        client
            .delete("accounts", &Key::id(acc), Some(&ETag::new("W/\"1\"")))
            .await
            .unwrap();
        let err = client
            .delete("accounts", &Key::id(acc), None)
            .await
            .unwrap_err();
        assert!(err.is_not_found());
        let none = client
            .try_retrieve::<Value>("accounts", &Key::id(acc), &RetrieveOptions::default())
            .await
            .unwrap();
        assert!(none.is_none());
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_sending() {
        let (_server, client) = setup().await;
        let err = client.create("accounts?x=1", &json!({})).await.unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
        let err = client
            .update(
                "accounts",
                &Key::Alternate(vec![]),
                &json!({}),
                &UpdateOptions::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
        let err = client
            .raw()
            .get("https://evil.example/x")
            .send()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
        let err = client
            .raw()
            .get("/api/data/v9.0/x")
            .send()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
    }

    #[tokio::test]
    async fn malformed_json_names_the_path() {
        let (server, client) = setup().await;
        Mock::given(method("GET"))
            .and(path(format!(
                "{API}/accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)"
            )))
            .respond_with(json_response(200, json!({"name": 5})))
            .mount(&server)
            .await;
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Account {
            name: String,
        }
        let err = client
            .retrieve::<Account>(
                "accounts",
                &Key::id(id("7eb682f1-ca75-e511-80d4-00155d2a68d1")),
                &RetrieveOptions::default(),
            )
            .await
            .unwrap_err();
        let Error::Decode(d) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(d.path(), "name");
    }

    #[tokio::test]
    async fn the_token_stays_out_of_debug_and_errors() {
        let (server, client) = setup().await;
        Mock::given(method("GET"))
            .respond_with(json_response(401, json!({"error": {"code": "0x8005F101", "message": "The requested resource requires authentication."}})))
            .mount(&server)
            .await;
        let err = client.raw().get("WhoAmI").send().await.unwrap_err();
        assert_eq!(err.status().map(|s| s.as_u16()), Some(401));
        for text in [format!("{client:?}"), format!("{err:?}"), err.to_string()] {
            assert!(!text.contains(TOKEN), "{text}");
        }
    }
}

mod upsert {
    use super::*;
    use dataverse_client::{Key, KeyValue, UpsertMode, UpsertOptions, UpsertOutcome};

    #[tokio::test]
    async fn alternate_key_values_are_escaped_in_the_url() {
        let (server, client) = setup().await;
        // `'` doubled, space and non-ASCII percent-encoded (UTF-8).
        Mock::given(method("PATCH"))
            .and(raw_path(
                "/api/data/v9.2/accounts(accountnumber='O''Neil%20M%C3%BCller')",
            ))
            .and(no_header("if-match"))
            .and(header("if-none-match", "null"))
            .and(no_header("prefer"))
            .and(body_json(json!({"name": "Contoso Ltd"})))
            .respond_with(ResponseTemplate::new(204).insert_header(
                "OData-EntityId",
                "https://contoso.crm.dynamics.com/api/data/v9.2/accounts(accountnumber='O''Neil M\u{fc}ller')",
            ))
            .expect(1)
            .mount(&server)
            .await;
        let r = client
            .upsert(
                "accounts",
                &Key::alternate("accountnumber", "O'Neil Müller"),
                &json!({"name": "Contoso Ltd"}),
                &UpsertOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(r.outcome, UpsertOutcome::Unknown);
        assert_eq!(r.id("accountid"), None, "a key URL carries no GUID");
        assert!(r.entity_id_url.unwrap().contains("accountnumber="));
    }

    #[tokio::test]
    async fn the_body_does_not_repeat_the_alternate_key_columns() {
        // D-UPSERT guidance: key data goes in the URL only.
        let (server, client) = setup().await;
        Mock::given(method("PATCH"))
            .and(raw_path(
                "/api/data/v9.2/opportunities(cosell_referralid='r-1',example_key2=2)",
            ))
            .and(body_json(
                json!({"name": "Deal", "cosell_engagementid": "e-1"}),
            ))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        let key = Key::composite([
            ("cosell_referralid", KeyValue::from("r-1")),
            ("example_key2", 2.into()),
        ]);
        client
            .upsert(
                "opportunities",
                &key,
                &json!({"name": "Deal", "cosell_referralid": "r-1", "example_key2": 2,
                        "cosell_engagementid": "e-1"}),
                &UpsertOptions::default(),
            )
            .await
            .unwrap();
        // A body that contradicts the key is refused before sending, naming column and value.
        let err = client
            .upsert(
                "opportunities",
                &key,
                &json!({"name": "Deal", "cosell_referralid": "r-2"}),
                &UpsertOptions::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("cosell_referralid") && text.contains("r-2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn multi_part_keys() {
        let (server, client) = setup().await;
        Mock::given(method("PATCH"))
            .and(raw_path(
                "/api/data/v9.2/example_records(example_key1='a',example_key2=2)",
            ))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        client
            .upsert(
                "example_records",
                &Key::composite([
                    ("example_key1", KeyValue::from("a")),
                    ("example_key2", 2.into()),
                ]),
                &json!({"example_name": "x"}),
                &UpsertOptions::default(),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn representation_tells_created_from_updated() {
        let (server, client) = setup().await;
        for status in [201u16, 200] {
            Mock::given(method("PATCH"))
                .and(raw_path(
                    "/api/data/v9.2/accounts(accountnumber='PC-000123')",
                ))
                .and(raw_query("$select=accountid"))
                .and(header("prefer", "return=representation"))
                .respond_with(
                    ResponseTemplate::new(status)
                        .insert_header("ETag", "W/\"71004878\"")
                        .set_body_raw(
                            fixture("upsert_representation.json"),
                            "application/json; odata.metadata=minimal",
                        ),
                )
                .up_to_n_times(1)
                .expect(1)
                .mount(&server)
                .await;
        }
        let key = Key::alternate("accountnumber", "PC-000123");
        let opts = UpsertOptions::default().return_representation(["accountid"]);
        let body = json!({"name": "Contoso Ltd", "address1_city": "Redmond", "address1_postalcode": "98052", "address1_country": "US"});
        let first = client.upsert("accounts", &key, &body, &opts).await.unwrap();
        let second = client.upsert("accounts", &key, &body, &opts).await.unwrap();
        assert_eq!(first.outcome, UpsertOutcome::Created);
        assert_eq!(second.outcome, UpsertOutcome::Updated);
        assert_eq!(first.etag.as_ref().unwrap().as_str(), "W/\"71004878\"");
        assert_eq!(
            first.id("accountid"),
            Some(id("ef0d112e-d70e-ed11-82e5-00224822577b"))
        );
        assert_eq!(
            first.representation.unwrap().get("accountid"),
            Some(&json!("ef0d112e-d70e-ed11-82e5-00224822577b"))
        );
    }

    #[tokio::test]
    async fn update_only_is_if_match_star_and_a_missing_row_is_404() {
        let (server, client) = setup().await;
        Mock::given(method("PATCH"))
            .and(header("if-match", "*"))
            .respond_with(json_response(
                404,
                json!({"error": {"code": "", "message": "account With Id = 00000000-0000-0000-0000-000000000000 Does Not Exist"}}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        let err = client
            .upsert(
                "accounts",
                &Key::alternate("accountnumber", "X"),
                &json!({"name": "x"}),
                &UpsertOptions::default().mode(UpsertMode::UpdateOnly),
            )
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{err:?}");
        assert_eq!(err.dataverse_code(), None);
    }

    #[tokio::test]
    async fn create_only_is_if_none_match_star_and_an_existing_row_is_412() {
        let (server, client) = setup().await;
        Mock::given(method("PATCH"))
            .and(header("if-none-match", "*"))
            .and(no_header("if-match"))
            .respond_with(ResponseTemplate::new(412).set_body_raw(
                fixture("upsert_create_only_412.json"),
                "application/json; odata.metadata=minimal",
            ))
            .expect(1)
            .mount(&server)
            .await;
        let err = client
            .upsert(
                "accounts",
                &Key::alternate("accountnumber", "PC-000123"),
                &json!({"name": "Contoso Ltd"}),
                &UpsertOptions::default().mode(UpsertMode::CreateOnly),
            )
            .await
            .unwrap_err();
        assert!(err.is_precondition_failed());
        assert_eq!(
            err.as_service().unwrap().message(),
            "A record with matching key values already exists."
        );
    }
}

mod query {
    use super::*;
    use dataverse_client::{Filter, Order, Query};
    use futures::TryStreamExt;

    #[tokio::test]
    async fn filter_is_escaped_and_next_links_are_followed_verbatim() {
        let (server, client) = setup().await;
        let next = format!(
            "https://contoso.crm.dynamics.com{API}/accounts?$select=name&$skiptoken=%3Ccookie%20pagenumber=%222%22%20istracking=%22False%22%20/%3E"
        );
        Mock::given(method("GET"))
            .and(path(format!("{API}/accounts")))
            .and(query_param("$select", "name"))
            .and(query_param(
                "$filter",
                "(name eq 'O''Brien & Søn' or startswith(name,'100%')) and statecode eq 0",
            ))
            .and(query_param("$orderby", "name asc,createdon desc"))
            .and(query_param("$count", "true"))
            .and(|r: &Request| r.url.query_pairs().all(|(k, _)| k != "$skiptoken"))
            .and(header("prefer", "odata.maxpagesize=2"))
            .respond_with(json_response(
                200,
                json!({"@odata.count": 3, "@odata.nextLink": next, "value": [
                    {"@odata.etag": "W/\"1\"", "name": "a"}, {"@odata.etag": "W/\"2\"", "name": "b"}]}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("{API}/accounts")))
            .and(raw_query(
                "$select=name&$skiptoken=%3Ccookie%20pagenumber=%222%22%20istracking=%22False%22%20/%3E",
            ))
            .and(header("prefer", "odata.maxpagesize=2"))
            .respond_with(json_response(200, json!({"value": [{"name": "c"}]})))
            .expect(1)
            .mount(&server)
            .await;
        let q = Query::new()
            .select(["name"])
            .filter(
                Filter::eq("name", "O'Brien & Søn")
                    .or(Filter::starts_with("name", "100%"))
                    .and(Filter::eq("statecode", 0)),
            )
            .order_by("name", Order::Asc)
            .order_by("createdon", Order::Desc)
            .count(true)
            .max_page_size(2);
        let rows: Vec<_> = client
            .query::<Value>("accounts", &q)
            .into_stream()
            .try_collect()
            .await
            .unwrap();
        let names: Vec<&str> = rows
            .iter()
            .map(|r| r.value["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(rows[1].etag.as_ref().unwrap().as_str(), "W/\"2\"");
        assert_eq!(rows[2].etag, None);
    }

    #[tokio::test]
    async fn in_function_guid_and_dates_on_the_wire() {
        let (server, client) = setup().await;
        Mock::given(method("GET"))
            .and(query_param(
                "$filter",
                "Microsoft.Dynamics.CRM.In(PropertyName='lastname',PropertyValues=[\"OBrian\",\"O'Brian\"]) and _parentaccountid_value eq 7eb682f1-ca75-e511-80d4-00155d2a68d1 and estimatedclosedate le 2026-09-30",
            ))
            .respond_with(json_response(200, json!({"value": []})))
            .expect(1)
            .mount(&server)
            .await;
        let q = Query::new().filter(
            Filter::is_in("lastname", ["OBrian", "O'Brian"])
                .and(Filter::eq(
                    "_parentaccountid_value",
                    id("7eb682f1-ca75-e511-80d4-00155d2a68d1"),
                ))
                .and(Filter::le(
                    "estimatedclosedate",
                    chrono::NaiveDate::from_ymd_opt(2026, 9, 30).unwrap(),
                )),
        );
        let rows: Vec<_> = client
            .query::<Value>("contacts", &q)
            .into_stream()
            .try_collect()
            .await
            .unwrap();
        assert!(rows.is_empty());
    }

    #[tokio::test]
    async fn a_bad_row_names_its_index() {
        let (server, client) = setup().await;
        Mock::given(method("GET"))
            .respond_with(json_response(
                200,
                json!({"value": [{"name": "a"}, {"name": 7}]}),
            ))
            .mount(&server)
            .await;
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Row {
            name: String,
        }
        let err = client
            .query::<Row>("accounts", &Query::new())
            .into_stream()
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        let Error::Decode(d) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(d.path(), "value[1].name");
    }
}

mod batch {
    use super::*;
    use dataverse_client::{Batch, BatchRequest, Key};

    fn multipart(body: &str) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_raw(
            crlf(body),
            "multipart/mixed; boundary=batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2f",
        )
    }

    #[tokio::test]
    async fn the_exact_multipart_layout() {
        let (server, client) = setup().await;
        Mock::given(method("POST"))
            .and(path(format!("{API}/$batch")))
            .and(header("odata-version", "4.0"))
            .and(header("accept", "application/json"))
            .and(no_header("prefer"))
            .respond_with(multipart(&fixture("batch_response.txt")))
            .expect(1)
            .mount(&server)
            .await;
        let batch =
            Batch::new()
                .change_set(vec![
                BatchRequest::post("accounts").json(&json!({"name": "Fabrikam"})).unwrap(),
                BatchRequest::post("opportunities")
                    .json(&json!({"customerid_account@odata.bind": "$1", "name": "Fabrikam deal"}))
                    .unwrap(),
            ])
                .request(BatchRequest::get("opportunities?$select=name&$top=1"));
        let result = client.execute_batch(&batch).await.unwrap();

        let requests = server.received_requests().await.unwrap();
        let sent = requests
            .iter()
            .find(|r| r.url.path().ends_with("$batch"))
            .unwrap();
        let ct = sent.headers.get("content-type").unwrap().to_str().unwrap();
        let batch_id = ct
            .strip_prefix("multipart/mixed; boundary=\"batch_")
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or_else(|| panic!("{ct}"));
        let expected = format!(
            "--batch_{b}\r\n\
Content-Type: multipart/mixed; boundary=\"changeset_{b}_1\"\r\n\
\r\n\
--changeset_{b}_1\r\n\
Content-Type: application/http\r\n\
Content-Transfer-Encoding: binary\r\n\
Content-ID: 1\r\n\
\r\n\
POST /api/data/v9.2/accounts HTTP/1.1\r\n\
Content-Type: application/json; type=entry\r\n\
\r\n\
{{\"name\":\"Fabrikam\"}}\r\n\
--changeset_{b}_1\r\n\
Content-Type: application/http\r\n\
Content-Transfer-Encoding: binary\r\n\
Content-ID: 2\r\n\
\r\n\
POST /api/data/v9.2/opportunities HTTP/1.1\r\n\
Content-Type: application/json; type=entry\r\n\
\r\n\
{{\"customerid_account@odata.bind\":\"$1\",\"name\":\"Fabrikam deal\"}}\r\n\
--changeset_{b}_1--\r\n\
\r\n\
--batch_{b}\r\n\
Content-Type: application/http\r\n\
Content-Transfer-Encoding: binary\r\n\
\r\n\
GET /api/data/v9.2/opportunities?$select=name&$top=1 HTTP/1.1\r\n\
\r\n\
\r\n\
--batch_{b}--\r\n",
            b = batch_id
        );
        pretty_assertions::assert_eq!(String::from_utf8(sent.body.clone()).unwrap(), expected);

        assert_eq!(result.requests, 3);
        assert_eq!(result.http_batches, 1);
        assert!(result.all_succeeded());
        let r = &result.responses;
        assert_eq!(r[0].content_id.as_deref(), Some("1"));
        assert_eq!(r[0].change_set, Some(0));
        assert_eq!(
            r[0].entity_id(),
            Some(id("e73ffc82-e292-ed11-aad1-000d3a9933c9"))
        );
        assert_eq!(
            r[1].entity_id(),
            Some(id("e83ffc82-e292-ed11-aad1-000d3a9933c9"))
        );
        let page: Value = r[2].json().unwrap();
        assert_eq!(page["value"][0]["name"], "Fabrikam deal");
    }

    #[tokio::test]
    async fn continue_on_error_header_and_per_part_failures() {
        let (server, client) = setup().await;
        let body = "--batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2f
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 400 Bad Request
REQ_ID: 5ecd1cb3-1730-4ffc-909c-d44c22270026
Content-Type: application/json; odata.metadata=minimal
OData-Version: 4.0

{\"error\":{\"code\":\"0x80044331\",\"message\":\"A validation error occurred.\"}}
--batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2f
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 204 No Content
OData-Version: 4.0


--batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2f--
";
        Mock::given(method("POST"))
            .and(path(format!("{API}/$batch")))
            .and(header("prefer", "odata.continue-on-error"))
            .respond_with(multipart(body))
            .expect(1)
            .mount(&server)
            .await;
        let batch = Batch::new()
            .request(
                BatchRequest::post("tasks")
                    .json(&json!({"subject": "x".repeat(201)}))
                    .unwrap(),
            )
            .request(
                BatchRequest::update(
                    "accounts",
                    &Key::id(id("7eb682f1-ca75-e511-80d4-00155d2a68d1")),
                    &json!({"name": "y"}),
                    None,
                )
                .unwrap(),
            )
            .continue_on_error(true);
        let result = client.execute_batch(&batch).await.unwrap();
        assert!(!result.all_succeeded());
        let failures: Vec<_> = result.failures().collect();
        assert_eq!(failures.len(), 1);
        assert_eq!(
            failures[0].error().unwrap().dataverse_code(),
            Some("0x80044331")
        );
        assert!(result.responses[1].is_success());
    }

    #[tokio::test]
    async fn a_stopped_batch_answers_400_with_a_multipart_body() {
        let (server, client) = setup().await;
        let body = crlf(
            "--batchresponse_1
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 400 Bad Request
Content-Type: application/json; odata.metadata=minimal

{\"error\":{\"code\":\"0x80044331\",\"message\":\"A validation error occurred.\"}}
--batchresponse_1--
",
        );
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(400)
                    .set_body_raw(body, "multipart/mixed; boundary=batchresponse_1"),
            )
            .expect(1)
            .mount(&server)
            .await;
        // Two HTTP batches' worth of requests; the second is not sent after the first fails.
        let mut batch = Batch::new().max_requests_per_batch(2);
        for i in 0..4 {
            batch = batch.request(
                BatchRequest::post("tasks")
                    .json(&json!({"subject": i}))
                    .unwrap(),
            );
        }
        let result = client.execute_batch(&batch).await.unwrap();
        assert_eq!(result.http_batches, 1);
        assert_eq!(result.responses.len(), 1);
        assert_eq!(result.requests, 4);
        assert!(!result.all_succeeded());
    }

    #[tokio::test]
    async fn more_than_the_limit_is_split_into_several_batches() {
        let (server, client) = setup().await;
        let ok = "--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\r\n--b--\r\n";
        Mock::given(method("POST"))
            .and(path(format!("{API}/$batch")))
            .respond_with(
                ResponseTemplate::new(200).set_body_raw(ok, "multipart/mixed; boundary=b"),
            )
            .expect(2)
            .mount(&server)
            .await;
        let mut batch = Batch::new().continue_on_error(true);
        for _ in 0..1001 {
            batch = batch.request(BatchRequest::delete(
                "accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)",
            ));
        }
        let result = client.execute_batch(&batch).await.unwrap();
        assert_eq!(result.http_batches, 2);
        let requests = server.received_requests().await.unwrap();
        let parts: Vec<usize> = requests
            .iter()
            .map(|r| {
                String::from_utf8_lossy(&r.body)
                    .matches("DELETE /api/data/v9.2/accounts(")
                    .count()
            })
            .collect();
        assert_eq!(parts, [1000, 1]);
    }

    #[tokio::test]
    async fn a_non_multipart_error_is_a_service_error() {
        let (server, client) = setup().await;
        Mock::given(method("POST"))
            .respond_with(json_response(
                400,
                json!({"error": {"code": "0x80048d19", "message": "Stream was not readable."}}),
            ))
            .mount(&server)
            .await;
        let err = client
            .execute_batch(&Batch::new().request(BatchRequest::get("WhoAmI")))
            .await
            .unwrap_err();
        assert_eq!(err.dataverse_code(), Some("0x80048d19"));
    }
}

mod change_tracking {
    use super::*;
    use dataverse_client::{
        Change, ChangeToken, ChangeTrackingOptions, OpportunityState, OpportunityStatus,
    };

    #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
    struct Opp {
        opportunityid: Uuid,
        name: String,
        estimatedvalue: f64,
        statecode: OpportunityState,
        statuscode: OpportunityStatus,
    }

    #[tokio::test]
    async fn initial_read_then_delta_with_deletions() {
        let (server, client) = setup().await;
        Mock::given(method("GET"))
            .and(path(format!("{API}/opportunities")))
            .and(raw_query(
                "$select=name,estimatedvalue,statecode,statuscode",
            ))
            .and(header("prefer", "odata.track-changes"))
            .respond_with(
                json_response(200, fixture_json("delta_initial.json"))
                    .insert_header("Preference-Applied", "odata.track-changes"),
            )
            .expect(1)
            .mount(&server)
            .await;
        // The delta link is followed verbatim (host pinned to the configured environment).
        Mock::given(method("GET"))
            .and(path(format!("{API}/opportunities")))
            .and(raw_query(
                "$select=name,estimatedvalue,statecode,statuscode&$deltatoken=919042%2108%2f22%2f2017%2008%3a10%3a44",
            ))
            // D-CT: the delta link is called as given, without `Prefer: odata.track-changes`.
            .and(no_header("prefer"))
            .respond_with(json_response(200, fixture_json("delta_changes.json")))
            .expect(1)
            .mount(&server)
            .await;

        let first = client
            .track_changes::<Opp>(
                "opportunities",
                &["name", "estimatedvalue", "statecode", "statuscode"],
                &ChangeTrackingOptions::default(),
            )
            .collect()
            .await
            .unwrap();
        assert_eq!(first.changes.len(), 1);
        let Change::Upserted(row) = &first.changes[0] else {
            panic!()
        };
        assert_eq!(row.value.estimatedvalue, 50000.0);
        assert_eq!(row.value.statecode, OpportunityState::Open);
        assert_eq!(row.value.statuscode, OpportunityStatus::InProgress);

        // The token survives a round trip through a store.
        let stored = serde_json::to_string(&first.token).unwrap();
        let token: ChangeToken = serde_json::from_str(&stored).unwrap();

        let delta = client
            .changes_since::<Opp>(&token, &ChangeTrackingOptions::default())
            .collect()
            .await
            .unwrap();
        assert_eq!(delta.changes.len(), 2);
        let Change::Upserted(won) = &delta.changes[0] else {
            panic!()
        };
        assert_eq!(won.etag.as_ref().unwrap().as_str(), "W/\"915260\"");
        assert_eq!(
            won.value.opportunityid,
            id("60c4e274-0d87-e711-80e5-00155db19e6d")
        );
        assert_eq!(won.value.name, "Fabrikam deal");
        assert_eq!(won.value.statecode, OpportunityState::Won);
        assert_eq!(won.value.statuscode, OpportunityStatus::Won);
        assert_eq!(
            delta.changes[1],
            Change::Deleted {
                id: id("2e451703-c686-e711-80e5-00155db19e6d")
            }
        );
        assert!(
            delta
                .token
                .as_str()
                .ends_with("$deltatoken=919058%2108%2f22%2f2017%2008%3a21%3a20")
        );
    }

    #[tokio::test]
    async fn pages_keep_the_prefer_header_until_the_delta_link() {
        let (server, client) = setup().await;
        let next = format!("{}{API}/accounts?$select=name&$skiptoken=p2", server.uri());
        let delta = format!("{}{API}/accounts?$select=name&$deltatoken=7", server.uri());
        Mock::given(method("GET"))
            .and(raw_query("$select=name"))
            .and(header_is(
                "prefer",
                "odata.track-changes,odata.maxpagesize=1",
            ))
            .respond_with(json_response(
                200,
                json!({"@odata.nextLink": next, "value": [{"name": "a"}]}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(raw_query("$select=name&$skiptoken=p2"))
            .and(header_is(
                "prefer",
                "odata.track-changes,odata.maxpagesize=1",
            ))
            .respond_with(json_response(
                200,
                json!({"@odata.deltaLink": delta, "value": [{"name": "b"}]}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        let r = client
            .track_changes::<Value>(
                "accounts",
                &["name"],
                &ChangeTrackingOptions::default().max_page_size(1),
            )
            .collect()
            .await;
        let r = r.unwrap();
        assert_eq!(r.changes.len(), 2);
        assert_eq!(r.token.as_str(), delta);
    }

    #[tokio::test]
    async fn an_expired_token_asks_for_a_full_resync() {
        let (server, client) = setup().await;
        Mock::given(method("GET"))
            .respond_with(json_response(
                400,
                json!({"error": {"code": "0x80044352", "message": "Version stamp associated with the client has expired. Please perform a full sync."}}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        let token = ChangeToken::new(format!("{}{API}/accounts?$deltatoken=1", server.uri()));
        let err = client
            .changes_since::<Value>(&token, &ChangeTrackingOptions::default())
            .collect()
            .await
            .unwrap_err();
        assert!(err.is_change_tracking_expired(), "{err:?}");
        assert!(matches!(err, Error::ChangeTrackingExpired(_)));
    }

    #[tokio::test]
    async fn no_delta_link_is_an_error() {
        let (server, client) = setup().await;
        Mock::given(method("GET"))
            .respond_with(json_response(200, json!({"value": []})))
            .mount(&server)
            .await;
        let err = client
            .track_changes::<Value>("accounts", &[], &ChangeTrackingOptions::default())
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("@odata.deltaLink"), "{err}");
    }
}

mod limits {
    use super::*;
    use dataverse_client::ThrottleKind;

    #[tokio::test]
    async fn each_429_code_has_its_throttle_kind() {
        for (code, kind) in [
            ("0x80072322", ThrottleKind::Requests),
            ("0x80072321", ThrottleKind::ExecutionTime),
            ("0x80072326", ThrottleKind::Concurrency),
        ] {
            let (server, client) = setup_with(RetryPolicy::none()).await;
            Mock::given(method("GET"))
                .respond_with(
                    json_response(429, json!({"error": {"code": code, "message": "limit"}}))
                        .insert_header("Retry-After", "0"),
                )
                .expect(1)
                .mount(&server)
                .await;
            let err = client.raw().get("WhoAmI").send().await.unwrap_err();
            assert!(err.is_throttled());
            assert_eq!(err.throttle_kind(), Some(kind));
            assert_eq!(err.retry_after(), Some(Duration::ZERO));
            assert!(err.is_retryable());
        }
    }

    #[tokio::test]
    async fn the_documented_429_body_and_retry_after() {
        let (server, client) = setup_with(RetryPolicy::none()).await;
        Mock::given(method("GET"))
            .respond_with(
                ResponseTemplate::new(429)
                    .insert_header("Retry-After", "27")
                    .set_body_raw(fixture("throttled_429.json"), "application/json"),
            )
            .expect(1)
            .mount(&server)
            .await;
        let err = client.raw().get("WhoAmI").send().await.unwrap_err();
        assert_eq!(err.throttle_kind(), Some(ThrottleKind::Requests));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(27)));
        assert!(client.rate_limit_status().limiter.paused);
    }

    #[tokio::test]
    async fn retry_after_is_honoured_then_the_call_succeeds() {
        let (server, client) = setup().await;
        Mock::given(method("GET"))
            .and(path(format!("{API}/WhoAmI")))
            .respond_with(
                json_response(429, json!({"error": {"code": "0x80072326", "message": "Number of concurrent requests exceeded the limit of 52."}}))
                    .insert_header("Retry-After", "0.2"),
            )
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("{API}/WhoAmI")))
            .respond_with(
                json_response(200, json!({"UserId": "u"}))
                    .insert_header("x-ms-dop-hint", "8")
                    .insert_header("x-ms-ratelimit-burst-remaining-xrm-requests", "3999")
                    .insert_header("x-ms-ratelimit-time-remaining-xrm-requests", "1,199,937.50"),
            )
            .expect(1)
            .mount(&server)
            .await;
        let started = std::time::Instant::now();
        let who: Value = client
            .raw()
            .get("WhoAmI")
            .send()
            .await
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(who["UserId"], "u");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );

        let requests = server.received_requests().await.unwrap();
        let ids: Vec<_> = requests
            .iter()
            .map(|r| r.headers.get("x-ms-client-request-id").unwrap().clone())
            .collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], ids[1], "same request id on the retry");

        let status = client.rate_limit_status();
        assert_eq!(status.burst_remaining, Some(3999));
        assert_eq!(status.time_remaining.as_deref(), Some("1,199,937.50"));
        assert_eq!(status.dop_hint, Some(8));
        assert_eq!(status.limiter.max, 8);
        assert_eq!(status.limiter.throttled, 1);
        // Clones share the limiter.
        assert_eq!(client.clone().rate_limit_status().limiter.max, 8);
    }
}

mod actions {
    use super::*;
    use dataverse_client::{CustomerRef, OpportunityClose, OpportunityStatus, QualifyLead};

    #[tokio::test]
    async fn win_and_lose_opportunity_bodies() {
        let (server, client) = setup().await;
        let opp = id("b3828ac8-917a-e511-80d2-00155d2a68d2");
        Mock::given(method("POST"))
            .and(path(format!("{API}/WinOpportunity")))
            .and(header("content-type", "application/json; charset=utf-8"))
            .and(body_json(fixture_json("win_opportunity_request.json")))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(format!("{API}/LoseOpportunity")))
            .and(body_json(json!({"Status": 5, "OpportunityClose": {
                "subject": "Lost to a competitor", "actualend": "2026-09-30T17:00:00Z", "actualrevenue": 0.0,
                "opportunityid@odata.bind": "/opportunities(b3828ac8-917a-e511-80d2-00155d2a68d2)"}})))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        client
            .win_opportunity(
                opp,
                &OpportunityClose::new("Won Opportunity"),
                OpportunityStatus::Won,
            )
            .await
            .unwrap();
        let close = OpportunityClose {
            // UserLocal date-time (R-OPPCLOSE): an Edm.DateTimeOffset, not a bare date.
            actual_end: "2026-09-30T17:00:00Z".parse().ok(),
            actual_revenue: Some(0.0),
            ..OpportunityClose::new("Lost to a competitor")
        };
        client
            .lose_opportunity(opp, &close, OpportunityStatus::OutSold)
            .await
            .unwrap();
        // A status of the wrong state is refused before sending.
        let err = client
            .win_opportunity(opp, &close, OpportunityStatus::Canceled)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)));
    }

    #[tokio::test]
    async fn an_already_closed_opportunity() {
        let (server, client) = setup().await;
        Mock::given(method("POST"))
            .respond_with(json_response(400, json!({"error": {"code": "0x80040515", "message": "The opportunity is already closed."}})))
            .expect(1)
            .mount(&server)
            .await;
        let err = client
            .win_opportunity(
                Uuid::nil(),
                &OpportunityClose::new("Won"),
                OpportunityStatus::Won,
            )
            .await
            .unwrap_err();
        assert_eq!(err.dataverse_code(), Some("0x80040515"));
    }

    #[tokio::test]
    async fn qualify_lead_returns_the_created_ids() {
        let (server, client) = setup().await;
        Mock::given(method("POST"))
            .and(raw_path(
                "/api/data/v9.2/leads(b3828ac8-917a-e511-80d2-00155d2a68d2)/Microsoft.Dynamics.CRM.QualifyLead",
            ))
            .and(body_json(json!({
                "CreateAccount": true, "CreateContact": true, "CreateOpportunity": true, "Status": 3,
                "OpportunityCustomerId": {"@odata.type": "Microsoft.Dynamics.CRM.account",
                    "accountid": "7eb682f1-ca75-e511-80d4-00155d2a68d1"}
            })))
            .respond_with(json_response(200, fixture_json("qualify_lead_response.json")))
            .expect(1)
            .mount(&server)
            .await;
        let q = QualifyLead {
            create_account: true,
            create_contact: true,
            opportunity_customer: Some(CustomerRef::Account(id(
                "7eb682f1-ca75-e511-80d4-00155d2a68d1",
            ))),
            ..QualifyLead::default()
        };
        let r = client
            .qualify_lead(id("b3828ac8-917a-e511-80d2-00155d2a68d2"), &q)
            .await
            .unwrap();
        assert_eq!(
            r.account_id,
            Some(id("e73ffc82-e292-ed11-aad1-000d3a9933c9"))
        );
        assert_eq!(
            r.contact_id,
            Some(id("70bf4d48-34cb-ed11-b596-0022481d68cd"))
        );
        assert_eq!(
            r.opportunity_id,
            Some(id("e83ffc82-e292-ed11-aad1-000d3a9933c9"))
        );
        assert_eq!(r.records.len(), 3);
    }
}

mod schema {
    use super::*;

    #[tokio::test]
    async fn a_missing_table_and_a_missing_column() {
        let (server, client) = setup().await;
        Mock::given(method("GET"))
            .and(raw_path(
                "/api/data/v9.2/EntityDefinitions(LogicalName='opportunity')/Attributes",
            ))
            .and(query_param("$select", "LogicalName"))
            .respond_with(json_response(
                200,
                json!({"value": [
                    {"LogicalName": "name", "MetadataId": "1"},
                    {"LogicalName": "cosell_referralid", "MetadataId": "2"}]}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(raw_path(
                "/api/data/v9.2/EntityDefinitions(LogicalName='cosell_partnercentersolution')/Attributes",
            ))
            .respond_with(json_response(
                404,
                json!({"error": {"code": "0x80040217", "message": "Could not find entity with name 'cosell_partnercentersolution'."}}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        let report = client
            .check_schema(&[
                ("opportunity", "cosell_referralid"),
                ("opportunity", "cosell_audit"),
                ("cosell_partnercentersolution", "cosell_name"),
                ("opportunity", "Name"),
                ("cosell_partnercentersolution", "cosell_type"),
            ])
            .await
            .unwrap();
        assert_eq!(
            report.missing,
            [
                ("opportunity".to_string(), "cosell_audit".to_string()),
                ("cosell_partnercentersolution".into(), "cosell_name".into()),
                ("cosell_partnercentersolution".into(), "cosell_type".into()),
            ]
        );
        assert_eq!(report.missing_tables, ["cosell_partnercentersolution"]);
        assert!(!report.is_complete());
    }
}

mod raw {
    use super::*;
    use cosell_http::http::Method;

    #[tokio::test]
    async fn send_raw_and_the_raw_builder() {
        let (server, client) = setup().await;
        Mock::given(method("POST"))
            .and(path(format!(
                "{API}/accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)/Microsoft.Dynamics.CRM.Merge"
            )))
            .and(header("mscrm.suppressduplicatedetection", "false"))
            .and(body_json(json!({"a": 1})))
            .respond_with(json_response(200, json!({"ok": true})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("{API}/WhoAmI")))
            .respond_with(json_response(200, json!({"UserId": "u"})))
            .expect(1)
            .mount(&server)
            .await;
        let r = client
            .raw()
            .post("accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)/Microsoft.Dynamics.CRM.Merge")
            .header("MSCRM.SuppressDuplicateDetection", "false")
            .json(&json!({"a": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().unwrap(), json!({"ok": true}));
        let r = client.send_raw(Method::GET, "WhoAmI", None).await.unwrap();
        assert_eq!(r.status, 200);
    }
}

/// The §10 example response bodies parse without loss.
mod documented_examples {
    use super::*;
    use dataverse_client::{Entity, parse_batch_response};

    #[test]
    fn representation_bodies_keep_every_field() {
        for name in ["create_representation.json", "upsert_representation.json"] {
            let original = fixture_json(name);
            let e: Entity<serde_json::Map<String, Value>> =
                serde_json::from_value(original.clone()).unwrap();
            assert!(e.etag.is_some());
            let mut back = serde_json::to_value(&e).unwrap();
            back["@odata.context"] = original["@odata.context"].clone();
            assert_eq!(back, original, "{name}");
        }
    }

    #[test]
    fn error_bodies() {
        use cosell_http::ServiceError;
        use cosell_http::http::{HeaderMap, StatusCode};
        for (name, status, code, message) in [
            (
                "upsert_create_only_412.json",
                412,
                None,
                "A record with matching key values already exists.",
            ),
            (
                "stale_etag_412.json",
                412,
                Some("0x80060882"),
                "The version of the existing record doesn't match the RowVersion property provided.",
            ),
            (
                "throttled_429.json",
                429,
                Some("0x80072322"),
                "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
            ),
        ] {
            let err = Error::from_service(ServiceError::from_response(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                fixture(name).as_bytes(),
            ));
            assert_eq!(err.dataverse_code(), code, "{name}");
            assert_eq!(err.as_service().unwrap().message(), message, "{name}");
        }
    }

    #[test]
    fn batch_response_as_stored_and_as_on_the_wire() {
        let stored = fixture("batch_response.txt");
        for body in [crlf(&stored), stored.clone()] {
            let parts = parse_batch_response(
                "multipart/mixed; boundary=batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2f",
                body.as_bytes(),
            )
            .unwrap();
            assert_eq!(parts.len(), 3);
            assert_eq!(
                parts[0].headers.get("location").unwrap(),
                "https://contoso.crm.dynamics.com/api/data/v9.2/accounts(e73ffc82-e292-ed11-aad1-000d3a9933c9)"
            );
            assert_eq!(parts[1].headers.get("odata-version").unwrap(), "4.0");
            assert_eq!(
                parts[2].headers.get("content-type").unwrap(),
                "application/json; odata.metadata=minimal; odata.streaming=true"
            );
            let page: Value = parts[2].json().unwrap();
            assert_eq!(page["value"][0]["@odata.etag"], "W/\"77181173\"");
            // The embedded body is exactly the JSON line, nothing of the delimiter.
            assert!(parts[2].body.ends_with(b"}]}"));
        }
    }
}

mod builder {
    use super::*;
    use cosell_http::{AccessToken, CredentialError, TokenCredential};
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    struct Recording(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl TokenCredential for Recording {
        async fn get_token(&self, scopes: &[&str]) -> Result<AccessToken, CredentialError> {
            self.0
                .lock()
                .unwrap()
                .extend(scopes.iter().map(|s| s.to_string()));
            Ok(AccessToken::new(
                "t",
                chrono::Utc::now() + chrono::Duration::hours(1),
            ))
        }
    }

    #[tokio::test]
    async fn scope_and_api_path() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/data/v9.0/WhoAmI"))
            .respond_with(json_response(200, json!({})))
            .expect(1)
            .mount(&server)
            .await;
        let cred = Arc::new(Recording::default());
        let client = DataverseClient::builder()
            .environment_url(Url::parse(&server.uri()).unwrap())
            .api_path("/api/data/v9.0")
            .credential(cred.clone())
            .build()
            .unwrap();
        assert_eq!(
            client.api_url().as_str(),
            format!("{}/api/data/v9.0/", server.uri())
        );
        client.raw().get("WhoAmI").send().await.unwrap();
        assert_eq!(
            *cred.0.lock().unwrap(),
            [format!("{}/.default", server.uri())]
        );
    }

    #[test]
    fn configuration_errors() {
        let cred = Arc::new(StaticTokenCredential::new("t"));
        let no_url = DataverseClient::builder().credential(cred.clone()).build();
        assert!(matches!(no_url, Err(Error::Config(_))));
        let no_cred = DataverseClient::builder()
            .environment_url(Url::parse("https://contoso.crm.dynamics.com/").unwrap())
            .build();
        assert!(matches!(no_cred, Err(Error::Config(_))));
        for bad in ["ftp://contoso/", "https://contoso.crm.dynamics.com/?a=b"] {
            let r = DataverseClient::builder()
                .environment_url(Url::parse(bad).unwrap())
                .credential(cred.clone())
                .build();
            assert!(matches!(r, Err(Error::Config(_))), "{bad}");
        }
        let r = DataverseClient::builder()
            .environment_url(Url::parse("https://contoso.crm.dynamics.com/").unwrap())
            .api_path("https://evil.example/api/")
            .credential(cred)
            .build();
        assert!(matches!(r, Err(Error::Config(_))));
    }
}
