//! Contract test: every example exchange of the Dataverse reference notes
//! (`shared/reference/dataverse.md` beside the repository, §10 A–H and the "Corrections") replayed against the
//! Dataverse emulator over loopback, request as documented, answer checked as documented.
//!
//! Requests go through the plain transport (no client pipeline), so what is sent is exactly
//! what the example shows, and every status (412, 429, 400) comes back as it is.

// Test code: a failed expectation panics.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use cosell::http::HttpTransport;
use cosell::http::http::{self, Method, StatusCode};
use cosell::sandbox::{DataverseSchema, Sandbox};
use serde_json::{Value, json};
use uuid::Uuid;

/// One documented exchange's answer.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Env {
    sandbox: Sandbox,
    transport: Arc<dyn HttpTransport>,
    token: String,
    api: String,
}

impl Env {
    async fn start() -> Env {
        Env::start_with(Sandbox::start().await.expect("sandbox"))
    }

    /// An environment whose CRM also has the opportunity <-> solution N:N (cosell links
    /// solutions through a child table; the N:N rules are Dataverse's own).
    async fn start_with_n_to_n() -> Env {
        let sandbox = Sandbox::builder()
            .dataverse_schema(DataverseSchema::cosell().with_many_to_many(
                "cosell_opportunity_partnercentersolution",
                "opportunity",
                "cosell_partnercentersolution",
            ))
            .start()
            .await
            .expect("sandbox");
        Env::start_with(sandbox)
    }

    fn start_with(sandbox: Sandbox) -> Env {
        let token = sandbox
            .entra()
            .issue_access_token(sandbox.urls().dataverse.as_str());
        let api = sandbox.dataverse().api_url();
        Env {
            transport: cosell::http::default_transport().expect("transport"),
            sandbox,
            token,
            api,
        }
    }

    /// Sends `method {api}{path}` with the documented standard headers, `extra` headers and
    /// `body` as given.
    async fn send(&self, method: Method, path: &str, extra: &[(&str, &str)], body: &str) -> Answer {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.api)
        };
        let mut b = http::Request::builder()
            .method(method)
            .uri(url)
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Accept", "application/json")
            .header("OData-MaxVersion", "4.0")
            .header("OData-Version", "4.0");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let resp = self
            .transport
            .send(b.body(Bytes::from(body.to_string())).unwrap())
            .await
            .expect("transport");
        let (parts, body) = resp.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

const JSON: (&str, &str) = ("Content-Type", "application/json; charset=utf-8");
const NO_CACHE: (&str, &str) = ("If-None-Match", "null");

fn entity_id(a: &Answer) -> Uuid {
    let url = a.header("OData-EntityId").expect("OData-EntityId");
    let inner = url.rsplit_once('(').unwrap().1.trim_end_matches(')');
    Uuid::parse_str(inner).expect("guid")
}

async fn account(env: &Env, name: &str) -> Uuid {
    let a = env
        .send(
            Method::POST,
            "accounts",
            &[JSON],
            &json!({ "name": name }).to_string(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text());
    entity_id(&a)
}

/// A: create an opportunity (204 + `OData-EntityId`); with representation, 201 and no
/// `OData-EntityId`.
#[tokio::test]
async fn a_create_opportunity() {
    let env = Env::start().await;
    let acct = account(&env, "Contoso").await;
    let contact = env
        .send(
            Method::POST,
            "contacts",
            &[JSON],
            r#"{"firstname":"Ann","lastname":"Lee"}"#,
        )
        .await;
    let contact = entity_id(&contact);
    let usd = env.sandbox.dataverse().currency_id("USD").unwrap();
    let body = json!({"name":"Contoso – Azure migration","description":"From Partner Center referral",
        "estimatedvalue":120000,"estimatedclosedate":"2026-09-30","closeprobability":50,
        "isrevenuesystemcalculated":false,
        "customerid_account@odata.bind": format!("/accounts({acct})"),
        "parentcontactid@odata.bind": format!("/contacts({contact})"),
        "transactioncurrencyid@odata.bind": format!("/transactioncurrencies({usd})")});
    let a = env
        .send(
            Method::POST,
            "opportunities",
            &[JSON, NO_CACHE],
            &body.to_string(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text());
    assert_eq!(a.header("OData-Version"), Some("4.0"));
    let url = a.header("OData-EntityId").unwrap();
    assert!(
        url.starts_with(&format!("{}opportunities(", env.api)),
        "{url}"
    );

    let a = env
        .send(
            Method::POST,
            "opportunities?$select=opportunityid,name",
            &[JSON, ("Prefer", "return=representation")],
            &body.to_string(),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert_eq!(
        a.header("Preference-Applied"),
        Some("return=representation")
    );
    assert!(a.header("OData-EntityId").is_none());
    let v = a.json();
    assert!(
        v["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("$metadata#opportunities(opportunityid,name)/$entity")
    );
    assert!(v["@odata.etag"].as_str().unwrap().starts_with("W/\""));
    assert_eq!(v["name"], json!("Contoso – Azure migration"));
}

/// B: upsert by alternate key: 201 then 200 with representation (ETag header and
/// `@odata.etag`); without `Prefer`, 204 and `OData-EntityId` echoing the key URL.
#[tokio::test]
async fn b_upsert_account_by_alternate_key() {
    let env = Env::start().await;
    let body = r#"{"name":"Contoso Ltd","address1_city":"Redmond","address1_postalcode":"98052","address1_country":"US"}"#;
    let path = "accounts(accountnumber='PC-000123')?$select=accountid";
    let prefer = ("Prefer", "return=representation");
    let ct = ("Content-Type", "application/json");
    for expected in [StatusCode::CREATED, StatusCode::OK] {
        let a = env
            .send(Method::PATCH, path, &[ct, NO_CACHE, prefer], body)
            .await;
        assert_eq!(a.status, expected, "{}", a.text());
        assert_eq!(
            a.header("Preference-Applied"),
            Some("return=representation")
        );
        let etag = a.header("ETag").expect("ETag").to_string();
        let v = a.json();
        assert_eq!(v["@odata.etag"], json!(etag));
        assert!(
            v["@odata.context"]
                .as_str()
                .unwrap()
                .ends_with("$metadata#accounts(accountid)/$entity")
        );
        assert!(Uuid::parse_str(v["accountid"].as_str().unwrap()).is_ok());
    }
    for key in ["PC-000123", "PC-000124"] {
        let a = env
            .send(
                Method::PATCH,
                &format!("accounts(accountnumber='{key}')"),
                &[ct],
                body,
            )
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text());
        assert_eq!(
            a.header("OData-EntityId"),
            Some(format!("{}accounts(accountnumber='{key}')", env.api).as_str())
        );
    }
}

/// C: create-only upsert on an existing row: 412 "A record with matching key values already
/// exists."
#[tokio::test]
async fn c_create_only_upsert_hits_an_existing_row() {
    let env = Env::start().await;
    let ct = ("Content-Type", "application/json");
    let path = "accounts(accountnumber='PC-000123')";
    let a = env
        .send(Method::PATCH, path, &[ct], r#"{"name":"Contoso Ltd"}"#)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = env
        .send(
            Method::PATCH,
            path,
            &[ct, ("If-None-Match", "*")],
            r#"{"name":"Contoso Ltd"}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED);
    assert!(
        a.header("Content-Type")
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(
        a.json()["error"]["message"],
        json!("A record with matching key values already exists.")
    );
}

/// D: a stale `If-Match`: 412 with ConcurrencyVersionMismatch.
#[tokio::test]
async fn d_stale_etag() {
    let env = Env::start().await;
    let a = env
        .send(Method::POST, "opportunities", &[JSON], r#"{"name":"Deal"}"#)
        .await;
    let opp = entity_id(&a);
    let a = env
        .send(
            Method::PATCH,
            &format!("opportunities({opp})"),
            &[
                ("Content-Type", "application/json"),
                ("If-Match", "W/\"1\""),
            ],
            r#"{"estimatedvalue":150000}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED, "{}", a.text());
    let e = a.json();
    assert_eq!(e["error"]["code"], json!("0x80060882"));
    assert_eq!(
        e["error"]["message"],
        json!("The version of the existing record doesn't match the RowVersion property provided.")
    );
}

/// E: throttled: 429 with `Retry-After` and the request-count code and message.
#[tokio::test]
async fn e_throttled() {
    let env = Env::start().await;
    let mut limits = env.sandbox.dataverse().limits();
    limits.max_requests = 2;
    env.sandbox.dataverse().set_limits(limits);
    let mut last = None;
    for _ in 0..3 {
        last = Some(env.send(Method::GET, "accounts?$top=1", &[], "").await);
    }
    let a = last.unwrap();
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text());
    assert!(a.header("Retry-After").unwrap().parse::<u64>().is_ok());
    let e = a.json();
    assert_eq!(e["error"]["code"], json!("0x80072322"));
    assert!(e["error"]["message"].as_str().unwrap().starts_with(
        "Number of requests exceeded the limit of 2 over time window of 300 seconds."
    ));
}

/// The `$batch` request of example F, verbatim (CRLF line endings, the GET part written as
/// request line, then blank lines, then the closing boundary).
fn example_f() -> String {
    [
        "--batch_a1",
        "Content-Type: multipart/mixed; boundary=\"changeset_c1\"",
        "",
        "--changeset_c1",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "Content-ID: 1",
        "",
        "POST /api/data/v9.2/accounts HTTP/1.1",
        "Content-Type: application/json; type=entry",
        "",
        "{\"name\":\"Fabrikam\"}",
        "--changeset_c1",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "Content-ID: 2",
        "",
        "POST /api/data/v9.2/opportunities HTTP/1.1",
        "Content-Type: application/json; type=entry",
        "",
        "{\"name\":\"Fabrikam deal\",\"customerid_account@odata.bind\":\"$1\"}",
        "--changeset_c1--",
        "",
        "--batch_a1",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "",
        "GET /api/data/v9.2/opportunities?$select=name&$top=1 HTTP/1.1",
        "",
        "",
        "--batch_a1--",
        "",
    ]
    .join("\r\n")
}

/// F: a `$batch` with a change set and a GET: one `batchresponse_` body, the change set's two
/// 204s with `Location`/`OData-EntityId`, then the GET's 200 with the created deal.
#[tokio::test]
async fn f_batch_with_a_change_set_and_a_get() {
    let env = Env::start().await;
    let a = env
        .send(
            Method::POST,
            "$batch",
            &[
                NO_CACHE,
                ("Content-Type", "multipart/mixed; boundary=\"batch_a1\""),
            ],
            &example_f(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let text = a.text();
    assert!(text.starts_with("--batchresponse_"), "{text}");
    assert!(text.contains("boundary=changesetresponse_"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 204 No Content").count(), 2, "{text}");
    assert!(text.contains("Location: "), "{text}");
    assert!(text.contains("OData-EntityId: "), "{text}");
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("\"name\":\"Fabrikam deal\""), "{text}");
    assert_eq!(env.sandbox.dataverse().count("opportunity"), 1);
    let opp = &env.sandbox.dataverse().rows("opportunity")[0];
    assert!(opp["_customerid_value"].is_string(), "{opp}");
}

/// F (failure): without `odata.continue-on-error`, a failing part answers 400 whose body is a
/// `batchresponse_` part with the inner 400 and its JSON error.
#[tokio::test]
async fn f_batch_failure_without_continue_on_error() {
    let env = Env::start().await;
    let long = "x".repeat(400);
    let body = [
        "--batch_a1",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "",
        "POST /api/data/v9.2/opportunities HTTP/1.1",
        "Content-Type: application/json; type=entry",
        "",
        &format!("{{\"name\":\"{long}\"}}"),
        "--batch_a1--",
        "",
    ]
    .join("\r\n");
    let a = env
        .send(
            Method::POST,
            "$batch",
            &[("Content-Type", "multipart/mixed; boundary=\"batch_a1\"")],
            &body,
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    let text = a.text();
    assert!(text.starts_with("--batchresponse_"), "{text}");
    assert!(text.contains("HTTP/1.1 400 Bad Request"), "{text}");
    assert!(text.contains("\"code\":\"0x80044331\""), "{text}");
}

/// G: delta sync: the initial read with `Prefer: odata.track-changes` and `$select` gives the
/// rows and a delta link; the delta link, called as given without that `Prefer`, gives the
/// changed row and the deletion.
#[tokio::test]
async fn g_delta_sync() {
    let env = Env::start().await;
    let dv = env.sandbox.dataverse();
    let kept = dv
        .insert_row(
            "opportunity",
            json!({"name": "Fabrikam deal", "estimatedvalue": 50000}),
        )
        .unwrap();
    let gone = dv
        .insert_row("opportunity", json!({"name": "Doomed"}))
        .unwrap();
    let select = "opportunities?$select=name,estimatedvalue,statecode,statuscode";
    let a = env
        .send(
            Method::GET,
            select,
            &[("Prefer", "odata.track-changes")],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.header("Preference-Applied"), Some("odata.track-changes"));
    let v = a.json();
    assert!(
        v["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("$metadata#opportunities(name,estimatedvalue,statecode,statuscode)")
    );
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    let delta = v["@odata.deltaLink"].as_str().unwrap().to_string();
    assert!(
        delta.contains("$select=name,estimatedvalue,statecode,statuscode"),
        "{delta}"
    );
    assert!(delta.contains("$deltatoken="), "{delta}");

    dv.update_as_user("opportunity", kept, json!({"estimatedvalue": 65000}))
        .unwrap();
    dv.delete_as_user("opportunity", gone).unwrap();
    let a = env.send(Method::GET, &delta, &[], "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let v = a.json();
    assert!(v["@odata.context"].as_str().unwrap().ends_with("/$delta"));
    let items = v["value"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{v}");
    assert_eq!(items[0]["opportunityid"], json!(kept.to_string()));
    assert_eq!(items[0]["estimatedvalue"].as_f64(), Some(65000.0));
    assert_eq!(items[1]["id"], json!(gone.to_string()));
    assert_eq!(items[1]["reason"], json!("deleted"));
    assert!(
        items[1]["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("$metadata#opportunities/$deletedEntity")
    );

    // D-CT: `$count` with a `$deltatoken` counts the changes since it, not the rows.
    let token = delta.split("$deltatoken=").nth(1).unwrap();
    dv.insert_row("opportunity", json!({"name": "Third"}))
        .unwrap();
    let a = env
        .send(
            Method::GET,
            &format!("opportunities/$count?$deltatoken={token}"),
            &[],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.text(), "3", "one update, one deletion, one create");
    let a = env.send(Method::GET, "opportunities/$count", &[], "").await;
    assert_eq!(a.text(), "2");
}

/// H: WinOpportunity: 204, then the row reads Won (statecode 1, statuscode 3).
#[tokio::test]
async fn h_win_an_opportunity() {
    let env = Env::start().await;
    let opp = env
        .sandbox
        .dataverse()
        .insert_row("opportunity", json!({"name": "Deal"}))
        .unwrap();
    let body = json!({"Status":3,"OpportunityClose":{"subject":"Won Opportunity",
        "opportunityid@odata.bind": format!("{}opportunities({opp})", env.api)}});
    let a = env
        .send(Method::POST, "WinOpportunity", &[JSON], &body.to_string())
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text());
    let row = env.sandbox.dataverse().row("opportunity", opp).unwrap();
    assert_eq!(
        (row["statecode"].clone(), row["statuscode"].clone()),
        (json!(1), json!(3))
    );
}

/// Corrections: `POST WhoAmI` answers 404 (D-CLIENTERR); `GET WhoAmI` answers the ids.
#[tokio::test]
async fn correction_post_who_am_i_is_404() {
    let env = Env::start().await;
    let a = env.send(Method::POST, "WhoAmI", &[JSON], "{}").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], json!(""));
    assert_eq!(
        a.json()["error"]["message"],
        json!(format!(
            "No HTTP resource was found that matches the request URI '{}WhoAmI'.",
            env.api
        ))
    );
    let a = env.send(Method::GET, "WhoAmI", &[], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.json()["UserId"].is_string());
}

/// Corrections: an N:N expanded together with N:1 navigations is refused (D-JOIN); each alone
/// is answered.
#[tokio::test]
async fn correction_n_to_n_with_n_to_1_expand_is_400() {
    let env = Env::start_with_n_to_n().await;
    let opp = env
        .sandbox
        .dataverse()
        .insert_row("opportunity", json!({"name": "Deal"}))
        .unwrap();
    let both = format!(
        "opportunities({opp})?$expand=parentcontactid($select=fullname),cosell_opportunity_partnercentersolution"
    );
    let a = env.send(Method::GET, &both, &[], "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    let list =
        "opportunities?$expand=transactioncurrencyid,cosell_opportunity_partnercentersolution";
    let a = env.send(Method::GET, list, &[], "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    for one in [
        format!(
            "opportunities({opp})?$expand=parentcontactid($select=fullname),transactioncurrencyid"
        ),
        format!("opportunities({opp})?$expand=cosell_opportunity_partnercentersolution"),
        format!("opportunities({opp})/cosell_opportunity_partnercentersolution"),
    ] {
        let a = env.send(Method::GET, &one, &[], "").await;
        assert_eq!(a.status, StatusCode::OK, "{one}: {}", a.text());
    }
}

/// Corrections: `OpportunityClose.actualend` is an `Edm.DateTimeOffset` (R-OPPCLOSE): a full
/// date-time is taken, a bare date refused, and `$metadata` types it so.
#[tokio::test]
async fn correction_actualend_is_a_date_time_offset() {
    let env = Env::start().await;
    let dv = env.sandbox.dataverse();
    let win = |opp: Uuid, end: &str| {
        json!({"Status":3,"OpportunityClose":{"subject":"Won","actualend": end,
            "opportunityid@odata.bind": format!("/opportunities({opp})")}})
        .to_string()
    };
    let opp = dv.insert_row("opportunity", json!({"name": "A"})).unwrap();
    let a = env
        .send(
            Method::POST,
            "WinOpportunity",
            &[JSON],
            &win(opp, "2026-09-30"),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert!(a.text().contains("Edm.DateTimeOffset"), "{}", a.text());
    let a = env
        .send(
            Method::POST,
            "WinOpportunity",
            &[JSON],
            &win(opp, "2026-09-30T17:00:00Z"),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text());
    assert_eq!(
        dv.row("opportunity", opp).unwrap()["actualclosedate"],
        json!("2026-09-30")
    );
    let m = env.send(Method::GET, "$metadata", &[], "").await.text();
    assert!(
        m.contains(r#"<Property Name="actualend" Type="Edm.DateTimeOffset""#),
        "{}",
        m.lines()
            .filter(|l| l.contains("actualend"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Corrections: a lead's deal value is the Money column `estimatedamount` (with its base);
/// `estimatedvalue` stays on lead as a Double (R-LEAD).
#[tokio::test]
async fn correction_lead_estimatedamount_is_money() {
    let env = Env::start().await;
    let m = env.send(Method::GET, "$metadata", &[], "").await.text();
    let lead = m
        .split("<EntityType Name=\"lead\"")
        .nth(1)
        .and_then(|s| s.split("</EntityType>").next())
        .expect("lead in $metadata");
    assert!(
        lead.contains(r#"<Property Name="estimatedamount" Type="Edm.Decimal""#),
        "{lead}"
    );
    assert!(
        lead.contains(r#"<Property Name="estimatedamount_base" Type="Edm.Decimal""#),
        "{lead}"
    );
    assert!(
        lead.contains(r#"<Property Name="estimatedvalue" Type="Edm.Double""#),
        "{lead}"
    );
}

/// Corrections, `$batch` grammar: a body-less part written as request line, headers, one blank
/// line, boundary (Microsoft's "Use FetchXML within a batch request" example) parses.
#[tokio::test]
async fn correction_batch_body_less_part_with_one_blank_line() {
    let env = Env::start().await;
    env.sandbox
        .dataverse()
        .insert_row("account", json!({"name": "Fabrikam"}))
        .unwrap();
    let body = [
        "--batch_f1",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "",
        "GET /api/data/v9.2/accounts?$select=name HTTP/1.1",
        "Accept: application/json",
        "",
        "--batch_f1--",
        "",
    ]
    .join("\r\n");
    let a = env
        .send(
            Method::POST,
            "$batch",
            &[("Content-Type", "multipart/mixed; boundary=batch_f1")],
            &body,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert!(a.text().contains("\"name\":\"Fabrikam\""), "{}", a.text());
}

/// Corrections, `$batch` grammar: an LF-only body that ends with two line endings is accepted
/// (D-CLIENTERR).
#[tokio::test]
async fn correction_batch_lf_only_with_two_trailing_line_endings() {
    let env = Env::start().await;
    let body = [
        "--batch_l1",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "",
        "POST /api/data/v9.2/accounts HTTP/1.1",
        "Content-Type: application/json; type=entry",
        "",
        "{\"name\":\"Lf Only\"}",
        "--batch_l1--",
        "",
        "",
    ]
    .join("\n");
    let a = env
        .send(
            Method::POST,
            "$batch",
            &[("Content-Type", "multipart/mixed; boundary=batch_l1")],
            &body,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(env.sandbox.dataverse().count("account"), 1);
}

/// Corrections, `$batch`: a batch-level parse error is answered as a `batchresponse_`
/// multipart body whose inner error part is OData JSON.
#[tokio::test]
async fn correction_batch_parse_error_is_a_batchresponse() {
    let env = Env::start().await;
    let body = "--batch_x1\r\nContent-Type: application/http\r\n\r\nNOT A REQUEST LINE\r\n--batch_x1--\r\n";
    let a = env
        .send(
            Method::POST,
            "$batch",
            &[("Content-Type", "multipart/mixed; boundary=batch_x1")],
            body,
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    let text = a.text();
    assert!(text.starts_with("--batchresponse_"), "{text}");
    assert!(
        a.header("Content-Type")
            .unwrap()
            .starts_with("multipart/mixed; boundary=batchresponse_"),
        "{:?}",
        a.header("Content-Type")
    );
    assert!(
        text.contains("Content-Type: application/json; odata.metadata=minimal"),
        "{text}"
    );
    assert!(text.contains("\"error\""), "{text}");
}

/// One row of the error table: what, method, path, headers, body, status, code.
type ErrorCase<'a> = (
    &'a str,
    Method,
    String,
    Vec<(&'a str, &'a str)>,
    String,
    u16,
    &'a str,
);

/// Every error the emulator answers, with the status and code Microsoft's pages print for it
/// (`docs/fidelity-dataverse.md` names each page; a case no page prints a code for is listed
/// there under "Only a real tenant can confirm").
#[tokio::test]
async fn errors_carry_the_documented_status_and_code() {
    let env = Env::start().await;
    let acct = account(&env, "Contoso").await;
    let a = env
        .send(
            Method::PATCH,
            "accounts(accountnumber='K-1')",
            &[JSON],
            r#"{"name":"Keyed"}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text());
    let a = env
        .send(Method::POST, "opportunities", &[JSON], r#"{"name":"Deal"}"#)
        .await;
    let opp = entity_id(&a);
    let closed = env
        .send(
            Method::POST,
            "opportunities",
            &[JSON],
            r#"{"name":"Won deal"}"#,
        )
        .await;
    let closed = entity_id(&closed);
    let win = json!({"Status": 3, "OpportunityClose": {
        "subject": "won",
        "opportunityid@odata.bind": format!("/opportunities({closed})"),
    }})
    .to_string();
    let a = env
        .send(Method::POST, "WinOpportunity", &[JSON], &win)
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text());
    let missing = Uuid::new_v4();
    let dup_id = json!({"accountid": acct, "name": "again"}).to_string();
    let stale = ("If-Match", "W/\"1\"");
    let track = ("Prefer", "odata.track-changes");
    let cases: Vec<ErrorCase<'_>> = vec![
        // D-CLIENTERR: wrong case in an entity set name.
        (
            "unknown entity set",
            Method::GET,
            "Account".into(),
            vec![],
            String::new(),
            404,
            "0x8006088a",
        ),
        // D-CLIENTERR: wrong case in a property name.
        (
            "unknown property",
            Method::GET,
            "accounts?$select=Name".into(),
            vec![],
            String::new(),
            400,
            "0x0",
        ),
        // D-CLIENTERR: a function called with POST.
        (
            "POST WhoAmI",
            Method::POST,
            "WhoAmI".into(),
            vec![JSON],
            "{}".into(),
            404,
            "",
        ),
        // D-ERR ObjectDoesNotExist (D-COND prints the message).
        (
            "missing row",
            Method::GET,
            format!("accounts({missing})"),
            vec![],
            String::new(),
            404,
            "0x80040217",
        ),
        // D-ERR RecordNotFoundByEntityKey.
        (
            "missing row by key",
            Method::GET,
            "accounts(accountnumber='NOPE')".into(),
            vec![],
            String::new(),
            404,
            "0x80060891",
        ),
        // D-COND "Prevent update in upsert".
        (
            "create-only upsert",
            Method::PATCH,
            "accounts(accountnumber='K-1')".into(),
            vec![JSON, ("If-None-Match", "*")],
            r#"{"name":"x"}"#.into(),
            412,
            "",
        ),
        // D-ERR ConcurrencyVersionMismatch (D-COND prints the message).
        (
            "stale If-Match",
            Method::PATCH,
            format!("opportunities({opp})"),
            vec![JSON, stale],
            r#"{"name":"y"}"#.into(),
            412,
            "0x80060882",
        ),
        // D-ERR DuplicateRecord.
        (
            "duplicate primary key",
            Method::POST,
            "accounts".into(),
            vec![JSON],
            dup_id,
            412,
            "0x80040237",
        ),
        // D-ERR DuplicateRecordEntityKey.
        (
            "duplicate alternate key",
            Method::POST,
            "accounts".into(),
            vec![JSON],
            r#"{"name":"z","accountnumber":"K-1"}"#.into(),
            412,
            "0x80060892",
        ),
        // D-AKDEF message; the emulator's code.
        (
            "invalid key",
            Method::GET,
            "accounts(nosuchkey='x')".into(),
            vec![],
            String::new(),
            400,
            "0x0",
        ),
        // D-CT message; the emulator's status and code.
        (
            "$filter with track-changes",
            Method::GET,
            "accounts?$select=name&$filter=name%20eq%20'x'".into(),
            vec![track],
            String::new(),
            400,
            "0x0",
        ),
        // D-ERR / D-CLIENTERR ODataClientPayloadError.
        (
            "wrong type",
            Method::PATCH,
            format!("opportunities({opp})"),
            vec![JSON],
            r#"{"estimatedvalue":"lots"}"#.into(),
            400,
            "0x80048d19",
        ),
        // D-ERR OpportunityIsAlreadyClosed.
        (
            "win a closed opportunity",
            Method::POST,
            "WinOpportunity".into(),
            vec![JSON],
            win.clone(),
            400,
            "0x80040515",
        ),
    ];
    for (what, method, path, headers, body, status, code) in cases {
        let a = env.send(method, &path, &headers, &body).await;
        assert_eq!(a.status.as_u16(), status, "{what}: {}", a.text());
        assert!(
            a.header("Content-Type")
                .unwrap()
                .starts_with("application/json"),
            "{what}"
        );
        assert_eq!(
            a.json()["error"]["code"],
            json!(code),
            "{what}: {}",
            a.text()
        );
    }

    // D-ERR ExpiredVersionStamp: a delta link older than the organization keeps changes for.
    let a = env
        .send(Method::GET, "accounts?$select=name", &[track], "")
        .await;
    let delta = a.json()["@odata.deltaLink"].as_str().unwrap().to_string();
    env.sandbox.dataverse().expire_change_tracking_tokens();
    let a = env.send(Method::GET, &delta, &[], "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], json!("0x80044352"));
    assert_eq!(
        a.json()["error"]["message"],
        json!("Version stamp associated with the client has expired. Please perform a full sync.")
    );

    // A failing `$batch` part carries the same code inside the part (D-BATCH).
    let batch = [
        "--batch_e1",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "",
        &format!("GET {}accounts({missing}) HTTP/1.1", env.api),
        "Accept: application/json",
        "",
        "",
        "--batch_e1--",
        "",
    ]
    .join("\r\n");
    let a = env
        .send(
            Method::POST,
            "$batch",
            &[("Content-Type", "multipart/mixed; boundary=batch_e1")],
            &batch,
        )
        .await;
    assert!(a.text().contains("HTTP/1.1 404"), "{}", a.text());
    assert!(a.text().contains("\"code\":\"0x80040217\""), "{}", a.text());
}

/// Money columns are written with four decimals in every row body
/// (D-CREATE / D-UPDATE "… with data returned": `"revenue": 5000000.0000`).
#[tokio::test]
async fn money_is_written_with_four_decimals() {
    let env = Env::start().await;
    let rep = ("Prefer", "return=representation");
    let a = env
        .send(
            Method::POST,
            "opportunities?$select=name,estimatedvalue",
            &[JSON, rep],
            r#"{"name":"Deal","estimatedvalue":250000}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text());
    assert!(
        a.text().contains(r#""estimatedvalue":250000.0000"#),
        "{}",
        a.text()
    );
    let opp = Uuid::parse_str(a.json()["opportunityid"].as_str().unwrap()).unwrap();

    let a = env
        .send(
            Method::GET,
            &format!("opportunities({opp})?$select=estimatedvalue"),
            &[],
            "",
        )
        .await;
    assert!(
        a.text().contains(r#""estimatedvalue":250000.0000"#),
        "{}",
        a.text()
    );

    let track = ("Prefer", "odata.track-changes");
    let a = env
        .send(
            Method::GET,
            "opportunities?$select=estimatedvalue",
            &[track],
            "",
        )
        .await;
    let delta = a.json()["@odata.deltaLink"].as_str().unwrap().to_string();
    let a = env
        .send(
            Method::PATCH,
            &format!("opportunities({opp})"),
            &[JSON],
            r#"{"estimatedvalue":1234.5678}"#,
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.text());
    let a = env.send(Method::GET, &delta, &[], "").await;
    assert!(
        a.text().contains(r#""estimatedvalue":1234.5678"#),
        "{}",
        a.text()
    );
    assert_eq!(
        a.json()["value"][0]["estimatedvalue"].as_f64(),
        Some(1234.5678)
    );

    let a = env
        .send(Method::GET, "opportunities?$select=estimatedvalue", &[], "")
        .await;
    assert!(
        a.text().contains(r#""estimatedvalue":1234.5678"#),
        "{}",
        a.text()
    );

    let a = env
        .send(
            Method::GET,
            &format!("opportunities({opp})/estimatedvalue"),
            &[],
            "",
        )
        .await;
    assert!(a.text().contains(r#""value":1234.5678"#), "{}", a.text());

    let batch = [
        "--batch_m1",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "",
        &format!(
            "GET {}opportunities({opp})?$select=estimatedvalue HTTP/1.1",
            env.api
        ),
        "Accept: application/json",
        "",
        "",
        "--batch_m1--",
        "",
    ]
    .join("\r\n");
    let a = env
        .send(
            Method::POST,
            "$batch",
            &[("Content-Type", "multipart/mixed; boundary=batch_m1")],
            &batch,
        )
        .await;
    assert!(
        a.text().contains(r#""estimatedvalue":1234.5678"#),
        "{}",
        a.text()
    );
}
