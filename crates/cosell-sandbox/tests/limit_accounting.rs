//! The service-protection accounting a bench reads from the Dataverse emulator: requests
//! counted toward the request limit (a `$batch` once), execution time per operation, 429s by
//! limit, and requests sent before an earlier 429's `Retry-After` ran out. Real client, in
//! process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cosell_http::HttpTransport as _;
use cosell_http::{ClientSecretCredential, RetryPolicy};
use cosell_sandbox::Sandbox;
use cosell_sandbox::dataverse::{LimitUsage, ServiceLimits, ThrottleCounts};
use cosell_sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use dataverse_client::{Batch, BatchRequest, DataverseClient, Key, RetrieveOptions};
use serde_json::{Value, json};

fn client(sandbox: &Sandbox) -> DataverseClient {
    let urls = sandbox.urls();
    let app =
        ClientSecretCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
            .authority_host(urls.entra.as_str())
            .transport(sandbox.transport())
            .build()
            .unwrap();
    DataverseClient::builder()
        .environment_url(urls.dataverse.clone())
        .credential(Arc::new(app))
        .transport(sandbox.transport())
        .retry(RetryPolicy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_batch_of_five_counts_one_request_and_five_operations_of_execution_time() {
    let sandbox = Sandbox::builder().seed(21).start_in_process().unwrap();
    let dv = sandbox.dataverse();
    dv.set_limits(ServiceLimits {
        operation_cost: Some(Duration::from_millis(40)),
        ..ServiceLimits::default()
    });
    let client = client(&sandbox);
    let creates = (0..5)
        .map(|i| {
            BatchRequest::post("accounts")
                .json(&json!({"name": format!("Batched {i}")}))
                .unwrap()
        })
        .collect();
    let result = client
        .execute_batch(&Batch::new().change_set(creates))
        .await
        .unwrap();
    assert!(result.all_succeeded());
    assert_eq!(dv.count("account"), 5);
    assert_eq!(
        dv.limit_usage(),
        LimitUsage {
            requests: 1,
            operations: 5,
            execution_time: Duration::from_millis(200),
            throttled: ThrottleCounts::default(),
            early_requests: 0,
        }
    );

    // A plain request adds one of each; resetting the usage keeps the limits' windows.
    let id = dv.insert_row("account", json!({"name": "Plain"})).unwrap();
    client
        .retrieve::<Value>("accounts", &Key::id(id), &RetrieveOptions::default())
        .await
        .unwrap();
    let usage = dv.limit_usage();
    assert_eq!((usage.requests, usage.operations), (2, 6));
    assert_eq!(usage.execution_time, Duration::from_millis(240));
    dv.reset_limit_usage();
    assert_eq!(dv.limit_usage(), LimitUsage::default());
}

/// Sends `GET accounts(id)` straight through the transport: the real client paces itself by a
/// `Retry-After` it was given, so only a raw request can arrive inside one.
async fn raw_read(sandbox: &Sandbox, token: &str, id: uuid::Uuid) -> (u16, Option<String>) {
    let url = format!("{}accounts({id})", sandbox.dataverse().api_url());
    let request = http::Request::builder()
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .body(bytes::Bytes::new())
        .unwrap();
    let response = sandbox.transport().send(request).await.unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (response.status().as_u16(), retry_after)
}

#[tokio::test]
async fn a_request_inside_a_retry_after_is_counted_as_early() {
    let sandbox = Sandbox::builder().seed(22).start_in_process().unwrap();
    let dv = sandbox.dataverse();
    let id = dv
        .insert_row("account", json!({"name": "Read me"}))
        .unwrap();
    dv.set_limits(ServiceLimits {
        max_requests: 2,
        // Long enough that the next request certainly arrives inside it.
        retry_after: Some(Duration::from_secs(300)),
        ..ServiceLimits::default()
    });
    let token = sandbox
        .entra()
        .issue_access_token(sandbox.urls().dataverse.as_str());
    assert_eq!(raw_read(&sandbox, &token, id).await.0, 200);
    assert_eq!(raw_read(&sandbox, &token, id).await.0, 200);
    assert_eq!(
        raw_read(&sandbox, &token, id).await,
        (429, Some("300".to_string()))
    );
    let usage = dv.limit_usage();
    assert_eq!(
        usage.requests, 2,
        "a refused request is not counted toward the limit"
    );
    assert_eq!(usage.throttled.requests, 1);
    assert_eq!(usage.early_requests, 0, "the first 429 itself is not early");

    // Sent while the 300 s Retry-After runs: counted, and refused again.
    assert_eq!(raw_read(&sandbox, &token, id).await.0, 429);
    let usage = dv.limit_usage();
    assert_eq!(usage.early_requests, 1);
    assert_eq!(usage.throttled, dv.throttle_counts());
    assert_eq!(usage.throttled.requests, 2);

    // Forgetting the windows forgets the Retry-After too.
    dv.reset_limit_windows();
    assert_eq!(raw_read(&sandbox, &token, id).await.0, 200);
    assert_eq!(dv.limit_usage().early_requests, 0);
}
