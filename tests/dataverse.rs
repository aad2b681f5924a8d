//! The real `dataverse_client` (with the real client-credentials grant against the Entra
//! stand-in) against the Dataverse emulator over HTTP on 127.0.0.1: CRUD, upsert by alternate
//! key, ETags, queries and paging, `$batch` with rolled-back change sets, change tracking,
//! service-protection limits, actions, metadata, and a property test of literal escaping.

// Helpers outside `#[test]` functions panic on failure too: this is test code.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cosell::dataverse::{
    Batch, BatchRequest, DataverseClient, Filter, Key, Order, Query, RetrieveOptions,
    UpdateOptions, UpsertMode, UpsertOptions, UpsertOutcome,
};
use cosell::http::http::Method;
use cosell::http::{ClientSecretCredential, RetryPolicy};
use cosell::sandbox::dataverse::ServiceLimits;
use cosell::sandbox::dataverse::filter::{self as emu_filter, CmpOp, Expr, Literal, Operand};
use cosell::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use cosell::sandbox::{DataverseSchema, Sandbox};
use futures::TryStreamExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

// ----- helpers -------------------------------------------------------------------------------

fn retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_initial_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(50))
}

fn client_with(sandbox: &Sandbox, retry: RetryPolicy) -> DataverseClient {
    let credential =
        ClientSecretCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
            .authority_host(sandbox.urls().entra.as_str())
            .build()
            .expect("credential");
    DataverseClient::builder()
        .environment_url(sandbox.urls().dataverse.clone())
        .credential(Arc::new(credential))
        .retry(retry)
        .build()
        .expect("client")
}

async fn setup() -> (Sandbox, DataverseClient) {
    let sandbox = Sandbox::start().await.expect("sandbox");
    let client = client_with(&sandbox, retry());
    (sandbox, client)
}

fn id_of(row: &Value, pk: &str) -> Uuid {
    Uuid::parse_str(row[pk].as_str().expect("pk")).expect("guid")
}

async fn all(client: &DataverseClient, set: &str, q: &Query) -> Vec<Value> {
    client
        .query::<Value>(set, q)
        .into_stream()
        .map_ok(|e| e.value)
        .try_collect()
        .await
        .expect("query")
}

// ----- CRUD ----------------------------------------------------------------------------------

#[tokio::test]
async fn create_retrieve_update_delete_with_lookups() {
    let (sandbox, client) = setup().await;
    let dv = sandbox.dataverse();
    let account = client
        .create(
            "accounts",
            &json!({"name": "Contoso", "address1_country": "US"}),
        )
        .await
        .unwrap();
    let eur = dv.currency_id("EUR").expect("seeded EUR");
    let opp = client
        .create(
            "opportunities",
            &json!({
                "name": "Contoso – Azure migration",
                "estimatedvalue": 120000,
                "estimatedclosedate": "2026-09-30",
                "customerid_account@odata.bind": format!("/accounts({account})"),
                "transactioncurrencyid@odata.bind": format!("/transactioncurrencies({eur})"),
            }),
        )
        .await
        .unwrap();
    let row = client
        .retrieve::<Value>(
            "opportunities",
            &Key::id(opp),
            &RetrieveOptions::default()
                .select([
                    "name",
                    "_customerid_value",
                    "estimatedclosedate",
                    "statecode",
                ])
                .include_annotations("*"),
        )
        .await
        .unwrap();
    assert_eq!(row.value["_customerid_value"], json!(account.to_string()));
    assert_eq!(
        row.value["_customerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"],
        json!("account")
    );
    assert_eq!(
        row.value["_customerid_value@OData.Community.Display.V1.FormattedValue"],
        json!("Contoso")
    );
    assert_eq!(row.value["estimatedclosedate"], json!("2026-09-30"));
    assert_eq!(row.value["statecode"], json!(0));
    assert_eq!(
        row.value["statecode@OData.Community.Display.V1.FormattedValue"],
        json!("Open")
    );
    assert!(
        row.value.get("description").is_none(),
        "only selected columns"
    );
    let etag = row.etag.clone().expect("etag");

    client
        .update(
            "opportunities",
            &Key::id(opp),
            &json!({"description": "From Partner Center"}),
            &UpdateOptions::default().if_match(etag.clone()),
        )
        .await
        .unwrap();
    let after = dv.row("opportunity", opp).unwrap();
    assert_eq!(after["description"], json!("From Partner Center"));
    assert_ne!(after["@odata.etag"], json!(etag.as_str()), "version bumped");
    // The base currency is the default on rows that name none.
    let other = client
        .create("opportunities", &json!({"name": "no currency"}))
        .await
        .unwrap();
    let usd = dv.currency_id("USD").unwrap().to_string();
    assert_eq!(
        dv.row("opportunity", other).unwrap()["_transactioncurrencyid_value"],
        json!(usd)
    );

    client
        .delete("opportunities", &Key::id(opp), None)
        .await
        .unwrap();
    assert!(
        client
            .try_retrieve::<Value>("opportunities", &Key::id(opp), &Default::default())
            .await
            .unwrap()
            .is_none()
    );
    let err = client
        .delete("opportunities", &Key::id(opp), None)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(err.dataverse_code(), Some("0x80040217"));
}

#[tokio::test]
async fn create_returning_gives_201_representation_and_etag() {
    let (_sandbox, client) = setup().await;
    let e = client
        .create_returning::<_, Value>(
            "contacts",
            &json!({"firstname": "Ada", "lastname": "Lovelace"}),
            &["fullname", "contactid"],
        )
        .await
        .unwrap();
    assert_eq!(e.value["fullname"], json!("Ada Lovelace"));
    assert!(e.etag.is_some());
    assert!(e.value["contactid"].is_string());
}

// ----- upsert and concurrency ---------------------------------------------------------------

#[tokio::test]
async fn upsert_by_alternate_key_creates_then_updates() {
    let (sandbox, client) = setup().await;
    let key = Key::alternate("cosell_referralid", "ref-'quoted'-001");
    let opts = UpsertOptions::default().return_representation(["opportunityid"]);
    let first = client
        .upsert("opportunities", &key, &json!({"name": "Deal v1"}), &opts)
        .await
        .unwrap();
    assert_eq!(first.outcome, UpsertOutcome::Created);
    let id = first.id("opportunityid").expect("id");
    let second = client
        .upsert("opportunities", &key, &json!({"name": "Deal v2"}), &opts)
        .await
        .unwrap();
    assert_eq!(second.outcome, UpsertOutcome::Updated);
    assert_eq!(second.id("opportunityid"), Some(id));
    assert_ne!(first.etag, second.etag);
    // Without a representation: 204 both ways, OData-EntityId echoes the key URL.
    let third = client
        .upsert(
            "opportunities",
            &key,
            &json!({"name": "Deal v3"}),
            &Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(third.outcome, UpsertOutcome::Unknown);
    let url = third.entity_id_url.expect("OData-EntityId");
    assert!(
        url.ends_with("opportunities(cosell_referralid='ref-''quoted''-001')"),
        "{url}"
    );
    let dv = sandbox.dataverse();
    assert_eq!(dv.count("opportunity"), 1);
    let row = dv.row("opportunity", id).unwrap();
    assert_eq!(row["name"], json!("Deal v3"));
    assert_eq!(row["cosell_referralid"], json!("ref-'quoted'-001"));
}

#[tokio::test]
async fn upsert_preconditions_404_and_412() {
    let (sandbox, client) = setup().await;
    let missing = Key::alternate("cosell_referralid", "nope");
    let err = client
        .upsert(
            "opportunities",
            &missing,
            &json!({"name": "x"}),
            &UpsertOptions::default().mode(UpsertMode::UpdateOnly),
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(
        sandbox.dataverse().count("opportunity"),
        0,
        "nothing created"
    );

    let key = Key::alternate("cosell_referralid", "r-1");
    let create_only = UpsertOptions::default().mode(UpsertMode::CreateOnly);
    client
        .upsert("opportunities", &key, &json!({"name": "x"}), &create_only)
        .await
        .unwrap();
    let err = client
        .upsert("opportunities", &key, &json!({"name": "y"}), &create_only)
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err}");

    // A second row may not take the same alternate-key value.
    let err = client
        .create(
            "opportunities",
            &json!({"name": "dup", "cosell_referralid": "R-1"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.dataverse_code(), Some("0x80060892"), "{err}");
}

#[tokio::test]
async fn stale_etag_is_412_concurrency_mismatch() {
    let (sandbox, client) = setup().await;
    let id = client
        .create("accounts", &json!({"name": "Fabrikam"}))
        .await
        .unwrap();
    let read = client
        .retrieve::<Value>("accounts", &Key::id(id), &Default::default())
        .await
        .unwrap();
    let stale = read.etag.unwrap();
    // A seller edits the row in the CRM meanwhile.
    sandbox
        .dataverse()
        .update_as_user("account", id, json!({"telephone1": "555-0100"}))
        .unwrap();
    let err = client
        .update(
            "accounts",
            &Key::id(id),
            &json!({"name": "Fabrikam Inc"}),
            &UpdateOptions::default().if_match(stale.clone()),
        )
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err}");
    assert_eq!(err.dataverse_code(), Some("0x80060882"));
    let err = client
        .upsert(
            "accounts",
            &Key::id(id),
            &json!({"name": "x"}),
            &UpsertOptions::default().mode(UpsertMode::UpdateIfMatch(stale)),
        )
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed());
    assert_eq!(
        sandbox.dataverse().row("account", id).unwrap()["name"],
        json!("Fabrikam")
    );
}

#[tokio::test]
async fn wrong_names_answer_documented_errors() {
    let (_sandbox, client) = setup().await;
    let err = client
        .send_raw(Method::GET, "Opportunities", None)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));
    assert_eq!(err.dataverse_code(), Some("0x8006088a"));
    let err = client
        .send_raw(Method::GET, "accounts?$select=Name", None)
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
    assert_eq!(err.dataverse_code(), Some("0x0"));
    let err = client
        .create(
            "contacts",
            &json!({"lastname": "x", "parentcustomerid@odata.bind": "/accounts(00000000-0000-0000-0000-000000000001)"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.dataverse_code(), Some("0x80048d19"), "{err}");
    let err = client
        .create("accounts", &json!({"nmae": "typo"}))
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
}

// ----- queries --------------------------------------------------------------------------------

#[tokio::test]
async fn filter_orderby_paging_and_count() {
    let (sandbox, client) = setup().await;
    let dv = sandbox.dataverse();
    for i in 0..25 {
        dv.insert_row(
            "account",
            json!({"name": format!("Acme {i:02}"), "numberofemployees": i * 10}),
        )
        .unwrap();
    }
    dv.insert_row("account", json!({"name": "Other"})).unwrap();
    let q = Query::new()
        .select(["name", "numberofemployees"])
        .filter(Filter::starts_with("name", "acme").and(Filter::ge("numberofemployees", 30)))
        .order_by("numberofemployees", Order::Desc)
        .count(true)
        .max_page_size(10);
    let pages: Vec<_> = client
        .query::<Value>("accounts", &q)
        .into_pages()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0].count, Some(22));
    let names: Vec<String> = pages
        .iter()
        .flat_map(|p| p.items.iter())
        .map(|e| e.value["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 22);
    assert_eq!(names[0], "Acme 24");
    assert_eq!(names[21], "Acme 03");
    // $top without paging.
    let top = all(
        &client,
        "accounts",
        &Query::new()
            .select(["name"])
            .order_by("name", Order::Asc)
            .top(2),
    )
    .await;
    assert_eq!(top.len(), 2);
    assert_eq!(top[0]["name"], json!("Acme 00"));
    // In(), null and not.
    let q = Query::new().filter(Filter::is_in("name", ["Acme 01", "Other", "nobody"]));
    assert_eq!(all(&client, "accounts", &q).await.len(), 2);
    let q = Query::new().filter(Filter::is_null("numberofemployees"));
    assert_eq!(all(&client, "accounts", &q).await.len(), 1);
    let q = Query::new().filter(Filter::contains("name", "cme 1").not());
    assert_eq!(all(&client, "accounts", &q).await.len(), 16);
    // The documented In() form with JSON values, sent verbatim; and bad syntax is a 400.
    let raw =
        r#"Microsoft.Dynamics.CRM.In(PropertyName='name',PropertyValues=["Acme 02","Acme 03"])"#;
    let q = Query::new().filter(Filter::raw(raw));
    assert_eq!(all(&client, "accounts", &q).await.len(), 2);
    let err = client
        .query::<Value>(
            "accounts",
            &Query::new().filter(Filter::raw("name eq 'open")),
        )
        .into_stream()
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
}

#[tokio::test]
async fn filter_values_with_quotes_and_non_ascii() {
    let (sandbox, client) = setup().await;
    let tricky = "O'Brien & Söhne – «北京» 'quoted'' ?#%+/";
    let id = sandbox
        .dataverse()
        .insert_row("account", json!({"name": tricky}))
        .unwrap();
    sandbox
        .dataverse()
        .insert_row("account", json!({"name": "O'Brien"}))
        .unwrap();
    let rows = all(
        &client,
        "accounts",
        &Query::new().filter(Filter::eq("name", tricky)),
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(id_of(&rows[0], "accountid"), id);
    assert_eq!(rows[0]["name"], json!(tricky));
    let rows = all(
        &client,
        "accounts",
        &Query::new().filter(Filter::contains("name", "'quoted''")),
    )
    .await;
    assert_eq!(rows.len(), 1);
}

// ----- $batch ----------------------------------------------------------------------------------

#[tokio::test]
async fn batch_change_set_with_references_commits_and_a_failing_one_rolls_back() {
    let (sandbox, client) = setup().await;
    let dv = sandbox.dataverse();
    let good = Batch::new()
        .change_set(vec![
            BatchRequest::post("accounts")
                .json(&json!({"name": "Fabrikam"}))
                .unwrap(),
            BatchRequest::post("opportunities")
                .json(&json!({"name": "Fabrikam deal", "customerid_account@odata.bind": "$1"}))
                .unwrap(),
        ])
        .request(BatchRequest::get("opportunities?$select=name&$top=1"));
    let result = client.execute_batch(&good).await.unwrap();
    assert!(result.all_succeeded(), "{result:?}");
    assert_eq!(result.responses.len(), 3);
    let account = result.responses[0].entity_id().expect("account id");
    let opp = result.responses[1].entity_id().expect("opportunity id");
    assert_eq!(
        dv.row("opportunity", opp).unwrap()["_customerid_value"],
        json!(account.to_string())
    );
    let listed: Value = result.responses[2].json().unwrap();
    assert_eq!(listed["value"][0]["name"], json!("Fabrikam deal"));

    let bad = Batch::new().change_set(vec![
        BatchRequest::post("accounts")
            .json(&json!({"name": "Rolled back"}))
            .unwrap(),
        BatchRequest::post("opportunities")
            .json(&json!({"name": "Rolled back deal", "customerid_account@odata.bind": "$1"}))
            .unwrap(),
        BatchRequest::post("opportunities")
            .json(&json!({"name": "bad", "no_such_column": 1}))
            .unwrap(),
    ]);
    let result = client.execute_batch(&bad).await.unwrap();
    assert!(!result.all_succeeded());
    assert_eq!(result.failures().count(), 1);
    assert!(
        dv.query("account", "name eq 'Rolled back'")
            .unwrap()
            .is_empty()
    );
    assert!(
        dv.query("opportunity", "name eq 'Rolled back deal'")
            .unwrap()
            .is_empty()
    );
    assert_eq!(dv.count("account"), 1);
    assert_eq!(dv.count("opportunity"), 1);
}

#[tokio::test]
async fn batch_stops_at_first_error_unless_continue_on_error() {
    let (sandbox, client) = setup().await;
    let missing = Uuid::new_v4();
    let parts = |b: Batch| {
        b.request(
            BatchRequest::patch(format!("accounts({missing})"))
                .header("If-Match", "*")
                .unwrap()
                .json(&json!({"name": "x"}))
                .unwrap(),
        )
        .request(
            BatchRequest::post("accounts")
                .json(&json!({"name": "after"}))
                .unwrap(),
        )
    };
    let stopped = client.execute_batch(&parts(Batch::new())).await.unwrap();
    assert_eq!(stopped.responses.len(), 1);
    assert_eq!(stopped.responses[0].status.as_u16(), 404);
    assert_eq!(sandbox.dataverse().count("account"), 0);
    let went_on = client
        .execute_batch(&parts(Batch::new().continue_on_error(true)))
        .await
        .unwrap();
    assert_eq!(went_on.responses.len(), 2);
    assert_eq!(went_on.responses[1].status.as_u16(), 204);
    assert_eq!(sandbox.dataverse().count("account"), 1);
}

// ----- change tracking ---------------------------------------------------------------------

async fn track(client: &DataverseClient, path: &str) -> Result<Value, cosell::dataverse::Error> {
    client
        .raw()
        .get(path)
        .header("Prefer", "odata.track-changes")
        .send()
        .await?
        .json()
}

fn relative(client: &DataverseClient, link: &str) -> String {
    link.strip_prefix(client.api_url().as_str())
        .expect("link under the API")
        .to_string()
}

#[tokio::test]
async fn delta_link_returns_only_changes_and_deletions() {
    let (sandbox, client) = setup().await;
    let dv = sandbox.dataverse();
    let a = dv.insert_row("account", json!({"name": "A"})).unwrap();
    let b = dv.insert_row("account", json!({"name": "B"})).unwrap();
    let c = dv.insert_row("account", json!({"name": "C"})).unwrap();
    let first = track(&client, "accounts?$select=name").await.unwrap();
    assert_eq!(first["value"].as_array().unwrap().len(), 3);
    let delta = relative(
        &client,
        first["@odata.deltaLink"].as_str().expect("deltaLink"),
    );

    let d = client
        .create("accounts", &json!({"name": "D"}))
        .await
        .unwrap();
    dv.update_as_user("account", a, json!({"name": "A2"}))
        .unwrap();
    dv.delete_as_user("account", b).unwrap();

    let changes = track(&client, &delta).await.unwrap();
    assert!(
        changes["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("/$delta")
    );
    let value = changes["value"].as_array().unwrap();
    assert_eq!(value.len(), 3, "{value:?}");
    let changed: Vec<Uuid> = value
        .iter()
        .filter(|v| v.get("accountid").is_some())
        .map(|v| id_of(v, "accountid"))
        .collect();
    assert!(changed.contains(&a) && changed.contains(&d) && !changed.contains(&c));
    let deleted: Vec<&Value> = value
        .iter()
        .filter(|v| v["reason"] == json!("deleted"))
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["id"], json!(b.to_string()));
    // Nothing since: an empty value and a fresh link.
    let next = relative(&client, changes["@odata.deltaLink"].as_str().unwrap());
    let quiet = track(&client, &next).await.unwrap();
    assert!(quiet["value"].as_array().unwrap().is_empty());
    // Change tracking rejects $filter.
    let err = track(&client, "accounts?$filter=name eq 'A'")
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
}

#[tokio::test]
async fn delta_pages_then_link_and_expired_token() {
    let (sandbox, client) = setup().await;
    let dv = sandbox.dataverse();
    for i in 0..7 {
        dv.insert_row("contact", json!({"lastname": format!("C{i}")}))
            .unwrap();
    }
    let mut rows = 0;
    let mut path = "contacts?$select=lastname".to_string();
    let delta = loop {
        let page: Value = client
            .raw()
            .get(&path)
            .header("Prefer", "odata.track-changes,odata.maxpagesize=3")
            .send()
            .await
            .unwrap()
            .json()
            .unwrap();
        rows += page["value"].as_array().unwrap().len();
        match (
            page["@odata.nextLink"].as_str(),
            page["@odata.deltaLink"].as_str(),
        ) {
            (Some(next), _) => path = relative(&client, next),
            (None, Some(delta)) => break relative(&client, delta),
            _ => panic!("neither link: {page}"),
        }
    };
    assert_eq!(rows, 7);
    dv.expire_change_tracking_tokens();
    let err = track(&client, &delta).await.unwrap_err();
    assert!(err.is_change_tracking_expired(), "{err}");
    assert!(err.to_string().contains("Please perform a full sync"));
}

// ----- service protection limits -----------------------------------------------------------

async fn throttled_then_honoured(limits: ServiceLimits, code: &str, concurrent: bool) {
    let (sandbox, client) = setup().await;
    let dv = sandbox.dataverse();
    let id = dv.insert_row("account", json!({"name": "hot"})).unwrap();
    let no_retry = client_with(&sandbox, RetryPolicy::none());
    // Warm both credentials before the limits apply (token grants are not Dataverse calls).
    for c in [&client, &no_retry] {
        c.retrieve::<Value>("accounts", &Key::id(id), &Default::default())
            .await
            .unwrap();
    }
    dv.reset_limit_windows();
    dv.set_limits(limits);
    let get = |c: &DataverseClient| {
        let c = c.clone();
        async move {
            c.retrieve::<Value>("accounts", &Key::id(id), &Default::default())
                .await
        }
    };
    // Answered: a client that does not retry sees the 429 with the documented code.
    let err = if concurrent {
        let (a, b) = tokio::join!(get(&no_retry), get(&no_retry));
        a.err()
            .or(b.err())
            .expect("one of two concurrent calls refused")
    } else {
        let mut last = None;
        for _ in 0..6 {
            if let Err(e) = get(&no_retry).await {
                last = Some(e);
                break;
            }
        }
        last.expect("a call refused")
    };
    assert!(err.is_throttled(), "{err}");
    assert_eq!(err.dataverse_code(), Some(code));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    // Honoured: the retrying client waits Retry-After and gets through.
    let started = Instant::now();
    if concurrent {
        let (a, b) = tokio::join!(get(&client), get(&client));
        a.unwrap();
        b.unwrap();
    } else {
        for _ in 0..4 {
            get(&client).await.unwrap();
        }
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    let counts = dv.throttle_counts();
    assert!(
        counts.requests + counts.execution_time + counts.concurrency >= 2,
        "{counts:?}"
    );
}

#[tokio::test]
async fn request_count_limit_answers_0x80072322_then_retry_succeeds() {
    throttled_then_honoured(
        ServiceLimits {
            max_requests: 2,
            request_window: Duration::from_secs(1),
            ..ServiceLimits::default()
        },
        "0x80072322",
        false,
    )
    .await;
}

#[tokio::test]
async fn execution_time_limit_answers_0x80072321_then_retry_succeeds() {
    throttled_then_honoured(
        ServiceLimits {
            max_execution_time: Duration::from_secs(1),
            execution_window: Duration::from_secs(1),
            operation_cost: Some(Duration::from_millis(600)),
            ..ServiceLimits::default()
        },
        "0x80072321",
        false,
    )
    .await;
}

#[tokio::test]
async fn concurrency_limit_answers_0x80072326_then_retry_succeeds() {
    throttled_then_honoured(
        ServiceLimits {
            max_concurrent: 1,
            processing_delay: Duration::from_millis(300),
            ..ServiceLimits::default()
        },
        "0x80072326",
        true,
    )
    .await;
}

#[tokio::test]
async fn a_batch_counts_once_toward_the_request_limit() {
    let (sandbox, client) = setup().await;
    let dv = sandbox.dataverse();
    client.send_raw(Method::GET, "WhoAmI", None).await.unwrap();
    dv.reset_limit_windows();
    dv.set_limits(ServiceLimits {
        max_requests: 2,
        request_window: Duration::from_secs(60),
        ..ServiceLimits::default()
    });
    let batch = (0..20).fold(Batch::new(), |b, i| {
        b.request(
            BatchRequest::post("accounts")
                .json(&json!({"name": format!("n{i}")}))
                .unwrap(),
        )
    });
    let result = client.execute_batch(&batch).await.unwrap();
    assert!(result.all_succeeded());
    assert_eq!(dv.count("account"), 20);
    // One more plain request fits; the next one is refused.
    client.send_raw(Method::GET, "WhoAmI", None).await.unwrap();
    assert_eq!(dv.throttle_counts().requests, 0);
}

// ----- actions, metadata, N:N ----------------------------------------------------------------

#[tokio::test]
async fn win_lose_and_qualify_lead() {
    let (sandbox, client) = setup().await;
    let dv = sandbox.dataverse();
    let won = client
        .create(
            "opportunities",
            &json!({"name": "W", "estimatedvalue": 500}),
        )
        .await
        .unwrap();
    let lost = client
        .create("opportunities", &json!({"name": "L"}))
        .await
        .unwrap();
    let close = |id: Uuid, status: i64| {
        json!({"Status": status, "OpportunityClose": {
            "subject": "closed",
            "opportunityid@odata.bind": format!("{}opportunities({id})", client.api_url()),
        }})
    };
    client
        .send_raw(Method::POST, "WinOpportunity", Some(&close(won, 3)))
        .await
        .unwrap();
    client
        .send_raw(Method::POST, "LoseOpportunity", Some(&close(lost, 5)))
        .await
        .unwrap();
    let w = dv.row("opportunity", won).unwrap();
    assert_eq!(
        (w["statecode"].clone(), w["statuscode"].clone()),
        (json!(1), json!(3))
    );
    assert_eq!(w["actualvalue"], json!(500));
    let l = dv.row("opportunity", lost).unwrap();
    assert_eq!(
        (l["statecode"].clone(), l["statuscode"].clone()),
        (json!(2), json!(5))
    );
    assert_eq!(dv.count("opportunityclose"), 2);
    // Closed rows are read-only until reopened; winning twice is refused.
    let err = client
        .update(
            "opportunities",
            &Key::id(won),
            &json!({"name": "edit"}),
            &Default::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
    let err = client
        .send_raw(Method::POST, "WinOpportunity", Some(&close(won, 3)))
        .await
        .unwrap_err();
    assert_eq!(err.dataverse_code(), Some("0x80040515"));
    client
        .update(
            "opportunities",
            &Key::id(won),
            &json!({"statecode": 0, "statuscode": 1}),
            &Default::default(),
        )
        .await
        .unwrap();

    let lead = client
        .create(
            "leads",
            &json!({"subject": "Co-sell", "firstname": "Ana", "lastname": "Diaz",
                    "companyname": "Northwind", "cosell_referralid": "ref-lead-1"}),
        )
        .await
        .unwrap();
    let resp = client
        .send_raw(
            Method::POST,
            &format!("leads({lead})/Microsoft.Dynamics.CRM.QualifyLead"),
            Some(&json!({"CreateAccount": true, "CreateContact": true, "CreateOpportunity": true, "Status": 3})),
        )
        .await
        .unwrap();
    let created: Value = resp.json().unwrap();
    assert_eq!(created["value"].as_array().unwrap().len(), 3);
    let l = dv.row("lead", lead).unwrap();
    assert_eq!(
        (l["statecode"].clone(), l["statuscode"].clone()),
        (json!(1), json!(3))
    );
    let opp = dv
        .query("opportunity", "cosell_referralid eq 'ref-lead-1'")
        .unwrap();
    assert_eq!(opp.len(), 1);
    assert_eq!(opp[0]["name"], json!("Co-sell"));
    assert_eq!(opp[0]["_originatingleadid_value"], json!(lead.to_string()));
    assert_eq!(l["_qualifyingopportunityid_value"], opp[0]["opportunityid"]);
}

#[tokio::test]
async fn metadata_answers_the_schema_check() {
    let (_sandbox, client) = setup().await;
    let attrs: Value = client
        .send_raw(
            Method::GET,
            "EntityDefinitions(LogicalName='opportunity')/Attributes?$select=LogicalName",
            None,
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let names: Vec<&str> = attrs["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["LogicalName"].as_str().unwrap())
        .collect();
    for c in [
        "cosell_referralid",
        "cosell_syncwithpartnercenter",
        "cosell_audit",
        "estimatedvalue",
    ] {
        assert!(names.contains(&c), "{c} missing");
    }
    let entity: Value = client
        .send_raw(
            Method::GET,
            "EntityDefinitions(LogicalName='lead')?$select=EntitySetName",
            None,
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(entity["EntitySetName"], json!("leads"));
    let err = client
        .send_raw(
            Method::GET,
            "EntityDefinitions(LogicalName='new_nothing')",
            None,
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found());
}

#[tokio::test]
async fn solutions_associate_through_n_to_n() {
    // cosell links solutions through a child table; the emulator still models an N:N as
    // Dataverse does, for a schema that has one.
    let sandbox = Sandbox::builder()
        .dataverse_schema(DataverseSchema::cosell().with_many_to_many(
            "cosell_opportunity_partnercentersolution",
            "opportunity",
            "cosell_partnercentersolution",
        ))
        .start()
        .await
        .expect("sandbox");
    let client = client_with(&sandbox, retry());
    let dv = sandbox.dataverse();
    let sol = client
        .create(
            "cosell_partnercentersolutions",
            &json!({"cosell_name": "Azure Landing Zone", "cosell_solutionid": "SOL-1"}),
        )
        .await
        .unwrap();
    let opp = client
        .create(
            "opportunities",
            &json!({"name": "with solution",
                    "cosell_opportunity_partnercentersolution@odata.bind": ["/cosell_partnercentersolutions(cosell_solutionid='SOL-1')"]}),
        )
        .await
        .unwrap();
    assert_eq!(
        dv.related(
            "opportunity",
            opp,
            "cosell_opportunity_partnercentersolution"
        ),
        vec![sol]
    );
    let related: Value = client
        .send_raw(
            Method::GET,
            &format!(
                "opportunities({opp})/cosell_opportunity_partnercentersolution?$select=cosell_name"
            ),
            None,
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        related["value"][0]["cosell_name"],
        json!("Azure Landing Zone")
    );
    client
        .send_raw(
            Method::DELETE,
            &format!("opportunities({opp})/cosell_opportunity_partnercentersolution({sol})/$ref"),
            None,
        )
        .await
        .unwrap();
    assert!(
        dv.related(
            "opportunity",
            opp,
            "cosell_opportunity_partnercentersolution"
        )
        .is_empty()
    );
}

// ----- escaping round trip ---------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// What the client escapes, the emulator's parser reads back unchanged.
    #[test]
    fn client_escaping_round_trips_through_the_emulator_parser(s in any::<String>()) {
        let escaped = cosell::dataverse::escape_string_literal(&s);
        prop_assert_eq!(emu_filter::unescape_string_literal(&escaped).unwrap(), s.clone());
        let filter = Filter::eq("name", s.as_str()).to_string();
        let expr = emu_filter::parse(&filter, &Default::default()).unwrap();
        prop_assert_eq!(
            expr,
            Expr::Compare(Operand::Property("name".into()), CmpOp::Eq, Operand::Literal(Literal::String(s)))
        );
    }
}

#[test]
fn any_string_is_found_by_an_eq_filter_over_http() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (sandbox, client) = rt.block_on(setup());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&"\\PC{0,60}", |s| {
            rt.block_on(async {
                let dv = sandbox.dataverse();
                let id = dv.insert_row("account", json!({"name": s})).unwrap();
                let rows = all(
                    &client,
                    "accounts",
                    &Query::new().filter(Filter::eq("name", s.as_str())),
                )
                .await;
                dv.delete_as_user("account", id).unwrap();
                prop_assert_eq!(rows.len(), 1);
                prop_assert_eq!(id_of(&rows[0], "accountid"), id);
                prop_assert_eq!(rows[0]["name"].as_str(), Some(s.as_str()));
                Ok(())
            })
        })
        .unwrap();
}

// ----- the client's typed change tracking, actions and schema check -------------------------

#[tokio::test]
async fn typed_change_tracking_actions_and_schema_check() {
    use cosell::dataverse::{
        Change, ChangeTrackingOptions, LeadStatus, OpportunityClose, OpportunityStatus, QualifyLead,
    };
    let (sandbox, client) = setup().await;
    let dv = sandbox.dataverse();
    let opts = ChangeTrackingOptions::default().max_page_size(2);
    let a = dv.insert_row("opportunity", json!({"name": "A"})).unwrap();
    let b = dv.insert_row("opportunity", json!({"name": "B"})).unwrap();
    let _c = dv.insert_row("opportunity", json!({"name": "C"})).unwrap();
    let initial = client
        .track_changes::<Value>("opportunities", &["name", "statecode"], &opts)
        .collect()
        .await
        .unwrap();
    assert_eq!(initial.changes.len(), 3);

    client
        .win_opportunity(a, &OpportunityClose::new("Won"), OpportunityStatus::Won)
        .await
        .unwrap();
    dv.delete_as_user("opportunity", b).unwrap();
    let delta = client
        .changes_since::<Value>(&initial.token, &opts)
        .collect()
        .await
        .unwrap();
    assert_eq!(delta.changes.len(), 2, "{:?}", delta.changes);
    assert!(matches!(&delta.changes[0], Change::Upserted(e) if e.value["statecode"] == json!(1)));
    assert!(matches!(delta.changes[1], Change::Deleted { id } if id == b));

    let lead = dv
        .insert_row(
            "lead",
            json!({"subject": "S", "lastname": "L", "companyname": "Co"}),
        )
        .unwrap();
    let qualified = client
        .qualify_lead(
            lead,
            &QualifyLead {
                create_account: true,
                create_opportunity: true,
                status: LeadStatus::Qualified,
                ..QualifyLead::default()
            },
        )
        .await
        .unwrap();
    assert!(qualified.account_id.is_some() && qualified.opportunity_id.is_some());
    assert!(qualified.contact_id.is_none());

    let report = client
        .check_schema(&[
            ("opportunity", "cosell_referralid"),
            ("lead", "cosell_referralid"),
            ("opportunity", "new_missing"),
            ("new_table", "x"),
        ])
        .await
        .unwrap();
    assert!(
        report
            .missing
            .contains(&("opportunity".into(), "new_missing".into()))
    );
    assert!(!report.missing.iter().any(|(_, c)| c == "cosell_referralid"));
    assert_eq!(report.missing_tables, vec!["new_table".to_string()]);
}

/// A change-tracking read taken one page at a time, its page links persisted as strings and
/// read back (as a restarted process would), sees every row once, then only what changed.
#[tokio::test]
async fn change_tracking_page_by_page_resumes_from_a_persisted_page() {
    use cosell::dataverse::{Change, ChangeNext, ChangePageLink, ChangeTrackingOptions};
    let (sandbox, client) = setup().await;
    let dv = sandbox.dataverse();
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            dv.insert_row("lead", json!({"subject": format!("L{i}"), "lastname": "X"}))
                .unwrap(),
        );
    }
    let opts = ChangeTrackingOptions::default().max_page_size(3);
    let mut seen: Vec<Uuid> = Vec::new();
    let mut pages = 0;
    let mut page = client
        .track_changes::<Value>("leads", &["leadid", "subject"], &opts)
        .next_page()
        .await
        .unwrap();
    let token = loop {
        pages += 1;
        assert!(page.changes.len() <= 3, "a page of {}", page.changes.len());
        for c in &page.changes {
            let Change::Upserted(e) = c else {
                panic!("an initial read lists rows, not deletions: {c:?}")
            };
            seen.push(id_of(&e.value, "leadid"));
        }
        match page.next {
            ChangeNext::Page(link) => {
                assert!(link.is_initial_read());
                // Persisted and read back: the string form is the whole state.
                let cursor = link.to_cursor();
                let link = ChangePageLink::from_cursor(&cursor).unwrap();
                // A row changed while the read is under way is not lost: it shows in this
                // read (if its page is still ahead) or in the next delta read.
                if pages == 1 {
                    dv.update_as_user("lead", ids[6], json!({"subject": "L6 edited"}))
                        .unwrap();
                }
                page = client
                    .changes_from::<Value>(&link, &opts)
                    .next_page()
                    .await
                    .unwrap();
            }
            ChangeNext::Done(token) => break token,
        }
    };
    assert_eq!(pages, 3, "7 rows in pages of 3");
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected, "every row once");
    assert!(ChangePageLink::from_cursor(token.as_str()).is_none());

    // The delta read after it, also page by page.
    dv.update_as_user("lead", ids[0], json!({"subject": "L0 edited"}))
        .unwrap();
    dv.delete_as_user("lead", ids[1]).unwrap();
    let page = client
        .changes_since::<Value>(&token, &opts)
        .next_page()
        .await
        .unwrap();
    let ChangeNext::Done(_) = page.next else {
        panic!("two changes fit one page: {:?}", page.next)
    };
    let ids_changed: Vec<Uuid> = page
        .changes
        .iter()
        .map(|c| match c {
            Change::Upserted(e) => id_of(&e.value, "leadid"),
            Change::Deleted { id } => *id,
        })
        .collect();
    assert!(ids_changed.contains(&ids[0]) && ids_changed.contains(&ids[1]));
    assert!(
        ids_changed.len() <= 3,
        "only the rows changed since the token (and L6's edit if the initial read had passed \
         it): {ids_changed:?}"
    );
}
