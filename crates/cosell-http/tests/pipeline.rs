//! Behaviour of the pipeline and the credentials: retries, `Retry-After`, request ids, the
//! idempotency rule, 401 refresh, token grants and caching.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cosell_http::{
    AccessToken, AdaptiveLimiter, ClientSecretCredential, CredentialError, CredentialErrorKind,
    Error, FnTransport, HttpTransport, Pipeline, RefreshTokenCredential, RetryPolicy, SendOptions,
    StaticTokenCredential, TokenCredential, TransportError,
};
use http::{HeaderName, Method, Request, Response, StatusCode};
use secrecy::ExposeSecret;
use tokio::time::Instant;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

type Answer = Result<Response<Bytes>, TransportError>;

/// A scripted transport: answers from a queue and records every request it saw.
#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<Vec<Answer>>>,
    seen: Arc<Mutex<Vec<Request<Bytes>>>>,
}

impl Script {
    fn new(answers: Vec<Answer>) -> Self {
        let mut answers = answers;
        answers.reverse();
        Script {
            answers: Arc::new(Mutex::new(answers)),
            seen: Arc::default(),
        }
    }

    fn transport(&self) -> Arc<dyn HttpTransport> {
        let me = self.clone();
        Arc::new(FnTransport::new(move |req| {
            let me = me.clone();
            async move {
                me.seen.lock().unwrap().push(req);
                me.answers
                    .lock()
                    .unwrap()
                    .pop()
                    .unwrap_or_else(|| Err(TransportError::connect("script exhausted")))
            }
        }))
    }

    fn seen(&self) -> Vec<Request<Bytes>> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn status(code: u16) -> Answer {
    Ok(Response::builder()
        .status(code)
        .body(Bytes::from_static(b"{}"))
        .unwrap())
}

fn throttled(retry_after: &str) -> Answer {
    Ok(Response::builder()
        .status(429)
        .header("retry-after", retry_after)
        .body(Bytes::from_static(
            br#"{"error":{"code":"0x80072322","message":"Number of requests exceeded the limit"}}"#,
        ))
        .unwrap())
}

fn pipeline(script: &Script) -> Pipeline {
    Pipeline::builder("test", script.transport())
        .request_id_header(HeaderName::from_static("client-request-id"))
        .correlation_id_header(HeaderName::from_static("ms-correlationid"))
        .retry(
            RetryPolicy::default()
                .with_jitter(false)
                .with_initial_delay(Duration::from_millis(100)),
        )
        .build()
}

fn get() -> Request<Bytes> {
    Request::get("https://svc.example/items")
        .body(Bytes::new())
        .unwrap()
}

fn post() -> Request<Bytes> {
    Request::post("https://svc.example/items")
        .body(Bytes::from_static(b"{\"name\":\"x\"}"))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_ids_repeat_on_every_attempt() {
    let script = Script::new(vec![throttled("7"), throttled("3"), status(200)]);
    let started = Instant::now();
    let resp = pipeline(&script)
        .send(get(), &SendOptions::default())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The server's delays win over the 100 ms computed backoff.
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let seen = script.seen();
    assert_eq!(seen.len(), 3);
    let ids: Vec<_> = seen
        .iter()
        .map(|r| r.headers()["client-request-id"].clone())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one request id per logical call"
    );
    let corr: Vec<_> = seen
        .iter()
        .map(|r| r.headers()["ms-correlationid"].clone())
        .collect();
    assert!(corr.iter().all(|c| *c == corr[0]));
    assert_eq!(seen[2].body(), &Bytes::new());
}

#[tokio::test(start_paused = true)]
async fn each_logical_call_gets_a_new_request_id() {
    let script = Script::new(vec![status(200), status(200)]);
    let p = pipeline(&script);
    p.send(get(), &SendOptions::default()).await.unwrap();
    p.send(get(), &SendOptions::default().with_request_id("fixed-id"))
        .await
        .unwrap();
    let seen = script.seen();
    assert_ne!(seen[0].headers()["client-request-id"], "fixed-id");
    assert_eq!(seen[1].headers()["client-request-id"], "fixed-id");
}

#[tokio::test(start_paused = true)]
async fn a_create_is_never_repeated_when_its_outcome_is_unknown() {
    // 500: the server may have created it. Timeout: the request may have arrived.
    for answer in [status(500), Err(TransportError::timeout("slow"))] {
        let script = Script::new(vec![answer, status(201)]);
        let err = pipeline(&script)
            .send(post(), &SendOptions::default())
            .await
            .unwrap_err();
        assert!(err.may_have_been_sent(), "{err}");
        assert_eq!(script.seen().len(), 1, "no blind retry of a POST");
    }
}

#[tokio::test(start_paused = true)]
async fn a_create_is_retried_when_the_server_provably_did_nothing() {
    // 429/503 mean "not processed"; a refused connection means nothing was sent.
    for answer in [
        throttled("1"),
        status(503),
        Err(TransportError::connect("refused")),
    ] {
        let script = Script::new(vec![answer, status(201)]);
        let resp = pipeline(&script)
            .send(post(), &SendOptions::default())
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(script.seen().len(), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn idempotent_requests_retry_unknown_outcomes() {
    let script = Script::new(vec![
        Err(TransportError::timeout("slow")),
        status(502),
        status(200),
    ]);
    pipeline(&script)
        .send(get(), &SendOptions::default())
        .await
        .unwrap();
    assert_eq!(script.seen().len(), 3);

    // A PATCH under If-Match is declared idempotent by its caller.
    let script = Script::new(vec![status(500), status(204)]);
    let patch = Request::patch("https://svc.example/items/1")
        .header("if-match", "\"e1\"")
        .body(Bytes::from_static(b"[]"))
        .unwrap();
    pipeline(&script)
        .send(patch, &SendOptions::default().idempotent(true))
        .await
        .unwrap();
    assert_eq!(script.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn attempts_and_long_retry_after_are_bounded() {
    let script = Script::new(vec![status(503); 10]);
    let p = Pipeline::builder("test", script.transport())
        .retry(
            RetryPolicy::default()
                .with_max_attempts(3)
                .with_jitter(false),
        )
        .build();
    let err = p.send(get(), &SendOptions::default()).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(err.is_retryable());
    assert_eq!(script.seen().len(), 3);

    // A Retry-After past the policy's ceiling is handed back, not slept through.
    let script = Script::new(vec![throttled("3600"), status(200)]);
    let err = pipeline(&script)
        .send(get(), &SendOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_throttled());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert_eq!(err.as_service().unwrap().code(), Some("0x80072322"));
    assert_eq!(script.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn errors_carry_the_parsed_body_and_the_request_id() {
    let script = Script::new(vec![Ok(Response::builder()
        .status(412)
        .header("request-id", "srv-1")
        .body(Bytes::from_static(
            br#"{"error":{"code":"preconditionFailed","message":"eTag mismatch","target":"referral"}}"#,
        ))
        .unwrap())]);
    let err = pipeline(&script)
        .send(get(), &SendOptions::default().with_request_id("cli-1"))
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed());
    assert!(!err.is_retryable());
    let se = err.as_service().unwrap();
    assert_eq!(se.code(), Some("preconditionFailed"));
    assert_eq!(se.request_id(), Some("srv-1"));
    assert_eq!(err.client_request_id(), Some("cli-1"));
}

#[derive(Debug, Default)]
struct CountingCredential {
    issued: AtomicUsize,
    invalidated: AtomicUsize,
}

#[async_trait]
impl TokenCredential for CountingCredential {
    async fn get_token(&self, scopes: &[&str]) -> Result<AccessToken, CredentialError> {
        assert_eq!(scopes, ["https://svc.example/.default"]);
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        Ok(AccessToken::new(
            format!("token-{n}"),
            chrono::Utc::now() + chrono::Duration::hours(1),
        ))
    }
    async fn invalidate(&self, _scopes: &[&str]) {
        self.invalidated.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_401_forces_one_token_refresh_and_no_more() {
    let cred = Arc::new(CountingCredential::default());
    let script = Script::new(vec![status(401), status(200)]);
    let p = Pipeline::builder("test", script.transport())
        .credential(cred.clone(), ["https://svc.example/.default"])
        .build();
    p.send(get(), &SendOptions::default()).await.unwrap();
    let seen = script.seen();
    assert_eq!(seen[0].headers()["authorization"], "Bearer token-0");
    assert_eq!(seen[1].headers()["authorization"], "Bearer token-1");
    assert!(seen[0].headers()["authorization"].is_sensitive());
    assert_eq!(cred.invalidated.load(Ordering::SeqCst), 1);

    let script = Script::new(vec![status(401), status(401), status(200)]);
    let p = Pipeline::builder("test", script.transport())
        .credential(cred.clone(), ["https://svc.example/.default"])
        .build();
    let err = p.send(get(), &SendOptions::default()).await.unwrap_err();
    assert!(err.is_unauthorized());
    assert_eq!(script.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_shared_limiter_learns_the_dop_hint_and_throttles() {
    let limiter = AdaptiveLimiter::new(52);
    let script = Script::new(vec![
        Ok(Response::builder()
            .status(200)
            .header("x-ms-dop-hint", "4")
            .body(Bytes::new())
            .unwrap()),
        throttled("2"),
        status(200),
    ]);
    let p = Pipeline::builder("test", script.transport())
        .limiter(limiter.clone())
        .dop_hint_header(HeaderName::from_static("x-ms-dop-hint"))
        .build();
    p.send(get(), &SendOptions::default()).await.unwrap();
    assert_eq!(limiter.snapshot().max, 4);
    p.send(get(), &SendOptions::default()).await.unwrap();
    let snap = limiter.snapshot();
    assert_eq!(snap.throttled, 1);
    assert_eq!(snap.limit, 2, "halved from 4");
}

#[tokio::test]
async fn client_credentials_are_granted_once_and_cached() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/contoso.onmicrosoft.com/oauth2/v2.0/token"))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains("client_id=app-1"))
        .and(body_string_contains("client_secret=s3cret"))
        .and(body_string_contains(
            "scope=https%3A%2F%2Forg.crm.dynamics.com%2F.default",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "token_type": "Bearer", "expires_in": 3599, "access_token": "at-1"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let cred = Arc::new(
        ClientSecretCredential::builder("contoso.onmicrosoft.com", "app-1", "s3cret")
            .authority_host(server.uri())
            .transport(Arc::new(cosell_http::ReqwestTransport::new().unwrap()))
            .build()
            .unwrap(),
    );
    // Ten concurrent callers: one grant (single flight), then cache hits.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let cred = cred.clone();
        tasks.push(tokio::spawn(async move {
            cred.get_token(&["https://org.crm.dynamics.com/.default"])
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().token.expose_secret(), "at-1");
    }
    assert!(!format!("{cred:?}").contains("s3cret"));
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reach_the_sink() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("refresh_token=rt-0"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "token_type": "Bearer", "expires_in": 60, "access_token": "at-1", "refresh_token": "rt-1"
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(body_string_contains("refresh_token=rt-1"))
        .and(body_string_contains("grant_type=refresh_token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "token_type": "Bearer", "expires_in": 60, "access_token": "at-2", "refresh_token": "rt-2"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let rotated = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = rotated.clone();
    let cred = RefreshTokenCredential::builder("tenant", "app-1", "rt-0")
        .client_secret("s3cret")
        .authority_host(server.uri())
        // A 60-second token is inside the 5-minute margin, so every call refreshes.
        .on_rotated(Arc::new(move |t| {
            sink.lock().unwrap().push(t.expose_secret().to_string())
        }))
        .build()
        .unwrap();
    let scopes = ["https://api.partner.microsoft.com/.default"];
    assert_eq!(
        cred.get_token(&scopes).await.unwrap().token.expose_secret(),
        "at-1"
    );
    assert_eq!(
        cred.get_token(&scopes).await.unwrap().token.expose_secret(),
        "at-2"
    );
    assert_eq!(*rotated.lock().unwrap(), ["rt-1", "rt-2"]);
    let shown = format!("{cred:?}");
    assert!(!shown.contains("rt-") && !shown.contains("s3cret"));
}

#[tokio::test]
async fn a_refused_grant_is_a_typed_error_without_secrets() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(serde_json::json!({
            "error": "invalid_grant",
            "error_description": "AADSTS70008: The refresh token has expired."
        })))
        .mount(&server)
        .await;
    let cred = RefreshTokenCredential::builder("tenant", "app-1", "rt-secret-value")
        .authority_host(server.uri())
        .build()
        .unwrap();
    let err = cred.get_token(&["x/.default"]).await.unwrap_err();
    assert_eq!(err.kind(), CredentialErrorKind::Rejected);
    assert_eq!(err.code(), Some("invalid_grant"));
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains("rt-secret-value"));

    // Through a pipeline, the credential failure is the call's error and nothing is sent.
    let script = Script::new(vec![status(200)]);
    let p = Pipeline::builder("test", script.transport())
        .credential(Arc::new(cred), ["x/.default"])
        .build();
    let err = p.send(get(), &SendOptions::default()).await.unwrap_err();
    assert!(matches!(err, Error::Credential(_)));
    assert!(!err.may_have_been_sent());
    assert!(script.seen().is_empty());
}

#[tokio::test]
async fn static_credential_and_json_helpers() {
    let script = Script::new(vec![Ok(Response::builder()
        .status(200)
        .body(Bytes::from_static(
            br#"{"value":[{"id":"a"}],"@odata.nextLink":"n"}"#,
        ))
        .unwrap())]);
    let p = Pipeline::builder("test", script.transport())
        .credential(Arc::new(StaticTokenCredential::new("t")), ["s"])
        .build();
    let page: cosell_http::ODataPage<serde_json::Value> = p
        .send_json(get(), &SendOptions::default(), "page")
        .await
        .unwrap();
    assert_eq!(page.value.len(), 1);
    assert_eq!(page.next_link.unwrap().as_str(), "n");
    assert_eq!(script.seen()[0].method(), Method::GET);

    let script = Script::new(vec![Ok(Response::builder()
        .status(200)
        .body(Bytes::from_static(b"{\"value\": 3}"))
        .unwrap())]);
    let p = Pipeline::builder("test", script.transport()).build();
    let err = p
        .send_json::<cosell_http::ODataPage<serde_json::Value>>(
            get(),
            &SendOptions::default(),
            "page",
        )
        .await
        .unwrap_err();
    match err {
        Error::Decode(d) => assert_eq!(d.path(), "value"),
        other => panic!("expected a decode error, got {other}"),
    }
}
