//! The sandbox's control API refuses what it does not understand: a tester who misspells a
//! fault (`{"drop_next": 1}` for `{"dropNext": 1}`) gets a 400 naming the key, instead of a 200
//! that silently injects nothing and a test that proves nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cosell_http::bytes::Bytes;
use cosell_sandbox::Sandbox;
use serde_json::{Value, json};

async fn send(sandbox: &Sandbox, method: http::Method, path: &str, body: Value) -> (u16, Value) {
    let url = sandbox.urls().referrals.join(path).unwrap();
    let request = http::Request::builder()
        .method(method)
        .uri(url.as_str())
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap();
    let response = sandbox.transport().send(request).await.unwrap();
    let status = response.status().as_u16();
    let body = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    (status, body)
}

async fn post(sandbox: &Sandbox, path: &str, body: Value) -> (u16, Value) {
    send(sandbox, http::Method::POST, path, body).await
}

async fn put(sandbox: &Sandbox, path: &str, body: Value) -> (u16, Value) {
    send(sandbox, http::Method::PUT, path, body).await
}

#[tokio::test]
async fn misspelt_control_keys_are_refused_and_the_right_ones_work() {
    let sandbox = Sandbox::builder().start_in_process().unwrap();
    let pc = sandbox.partner_center();

    // Delivery faults: snake_case is refused, nothing is set.
    let (status, body) = put(
        &sandbox,
        "/_sandbox/delivery-faults",
        json!({"drop_next": 1}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("drop_next"), "{body}");
    assert_eq!(pc.delivery_faults().drop_next, 0);
    let (status, body) = put(
        &sandbox,
        "/_sandbox/delivery-faults",
        json!({"dropNext": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(pc.delivery_faults().drop_next, 1);

    // Seeding: an unknown key is refused and seeds nothing; `count` works.
    let before = pc.referral_count();
    let (status, body) = post(&sandbox, "/_sandbox/seed", json!({"cnt": 3})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("cnt"), "{body}");
    assert_eq!(pc.referral_count(), before);
    let (status, _) = post(&sandbox, "/_sandbox/seed", json!({"count": 3})).await;
    assert_eq!(status, 201);
    assert_eq!(pc.referral_count(), before + 3);

    // Microsoft's CRM id: the one documented key.
    let incoming = pc.create_incoming_referral(json!({})).unwrap();
    let id = incoming["id"].as_str().unwrap();
    let path = format!("/_sandbox/referrals/{id}/microsoft-crm-id");
    let (status, body) = post(&sandbox, &path, json!({"msxId": "7-X"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(&sandbox, &path, json!({"microsoftMsxId": "7-ABC"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        pc.referral(id).unwrap()["trackingInfo"]["microsoftMsxId"],
        json!("7-ABC")
    );
}
