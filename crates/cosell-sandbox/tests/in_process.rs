//! The in-process sandbox: real clients and Entra credentials over [`Sandbox::transport`], no
//! socket, under paused time; faults and counters behave as over loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cosell_http::{
    ClientSecretCredential, RefreshTokenCredential, RetryPolicy, TransportErrorKind,
};
use cosell_sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use cosell_sandbox::{Fault, Sandbox, Service};
use dataverse_client::{DataverseClient, Key, RetrieveOptions};
use http::Method;
use partner_center_client::PartnerCenterClient;
use serde_json::{Value, json};

fn clients(sandbox: &Sandbox, retry: RetryPolicy) -> (PartnerCenterClient, DataverseClient) {
    let urls = sandbox.urls();
    let transport = sandbox.transport();
    let refresh = sandbox.entra().issue_refresh_token(SANDBOX_CLIENT_ID);
    let user = RefreshTokenCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, refresh)
        .client_secret(SANDBOX_CLIENT_SECRET)
        .authority_host(urls.entra.as_str())
        .transport(transport.clone())
        .build()
        .unwrap();
    let app =
        ClientSecretCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
            .authority_host(urls.entra.as_str())
            .transport(transport.clone())
            .build()
            .unwrap();
    let pc = PartnerCenterClient::builder()
        .referrals_endpoint(urls.referrals.clone())
        .webhooks_endpoint(urls.webhooks.clone())
        .credential(Arc::new(user))
        .webhooks_credential(Arc::new(app.clone()))
        .transport(transport.clone())
        .retry(retry.clone())
        .build()
        .unwrap();
    let dv = DataverseClient::builder()
        .environment_url(urls.dataverse.clone())
        .credential(Arc::new(app))
        .transport(transport)
        .retry(retry)
        .build()
        .unwrap();
    (pc, dv)
}

#[tokio::test(start_paused = true)]
async fn clients_read_a_referral_and_a_row_without_sockets() {
    let sandbox = Sandbox::builder().seed(11).start_in_process().unwrap();
    assert_eq!(sandbox.urls().referrals.port(), Some(2));
    let (pc, dv) = clients(&sandbox, RetryPolicy::none());

    let incoming = sandbox
        .partner_center()
        .create_incoming_referral(json!({"name": "In process"}))
        .unwrap();
    let id = incoming["id"].as_str().unwrap();
    let referral = pc.get_referral(id).await.unwrap();
    assert_eq!(referral.name.as_deref(), Some("In process"));

    let account = sandbox
        .dataverse()
        .insert_row("account", json!({"name": "Contoso"}))
        .unwrap();
    let row = dv
        .retrieve::<Value>("accounts", &Key::id(account), &RetrieveOptions::default())
        .await
        .unwrap();
    assert_eq!(row.value["name"], json!("Contoso"));
    assert!(row.etag.is_some());

    // Counted on the server side, token requests included.
    let faults = sandbox.faults();
    assert_eq!(faults.calls(Service::Referrals), 1);
    assert_eq!(faults.calls(Service::Dataverse), 1);
    assert_eq!(faults.calls(Service::Entra), 2);
}

#[tokio::test(start_paused = true)]
async fn faults_apply_and_a_lost_answer_is_an_io_error_that_may_have_been_sent() {
    let sandbox = Sandbox::builder().start_in_process().unwrap();
    let retry = RetryPolicy::default()
        .with_max_attempts(3)
        .with_initial_delay(Duration::from_millis(10))
        .with_jitter(false);
    let (pc, dv) = clients(&sandbox, retry);
    let faults = sandbox.faults();

    // A throttle with Retry-After is waited out (paused time makes it free) and retried.
    faults.inject(
        Service::Referrals,
        Fault::throttle(Duration::from_secs(2)).times(1),
    );
    let body = sandbox.partner_center().generate_referral_request();
    let referral: partner_center_client::models::Referral = serde_json::from_value(body).unwrap();
    let before = tokio::time::Instant::now();
    let created = pc.create_referral(&referral).await.unwrap();
    assert!(
        before.elapsed() >= Duration::from_secs(2),
        "Retry-After honoured"
    );
    let id = created.id.clone().unwrap();

    // The answer of a create is lost after the emulator stored it: not retried (a POST), and
    // reported as a transport failure that may have reached the server.
    faults.inject(
        Service::Referrals,
        Fault::drop_after().on_method(Method::POST).times(1),
    );
    let count = sandbox.partner_center().referral_count();
    let err = pc.create_referral(&referral).await.unwrap_err();
    assert!(err.may_have_been_sent(), "{err}");
    match &err {
        partner_center_client::Error::Transport(t) => {
            assert_eq!(t.kind(), TransportErrorKind::Io);
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert_eq!(
        sandbox.partner_center().referral_count(),
        count + 1,
        "processed: the referral exists although the answer was lost"
    );

    // A read whose connection drops before processing is retried (idempotent).
    faults.inject(
        Service::Referrals,
        Fault::drop_before().on_method(Method::GET).times(1),
    );
    assert_eq!(
        pc.get_referral(&id).await.unwrap().id.as_deref(),
        Some(id.as_str())
    );

    // Dataverse behind the same switch.
    faults.inject(Service::Dataverse, Fault::status(503).times(1));
    let account = sandbox
        .dataverse()
        .insert_row("account", json!({"name": "Fabrikam"}))
        .unwrap();
    dv.retrieve::<Value>("accounts", &Key::id(account), &RetrieveOptions::default())
        .await
        .unwrap();
    assert_eq!(faults.injected(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_url_outside_the_sandbox_is_a_connect_error() {
    let sandbox = Sandbox::builder().start_in_process().unwrap();
    let req = http::Request::get("http://127.0.0.1:9/x")
        .body(bytes::Bytes::new())
        .unwrap();
    let err = sandbox.transport().send(req).await.unwrap_err();
    assert!(err.is_connect() && !err.may_have_been_sent(), "{err}");
}
