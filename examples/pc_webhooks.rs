//! Partner Center webhooks against the in-process sandbox: a callback receiver (axum) that
//! verifies every signed delivery with the real verifier before trusting it, registration of the
//! four referral events through `partner_center_client`, Microsoft's side changing referrals, a
//! test event, and the duplicate-delivery fault handled by deduplication.
//!
//! ```text
//! cargo run --example pc_webhooks
//! ```

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use cosell::http::{HttpTransport, RefreshTokenCredential};
use cosell::partner_center::PartnerCenterClient;
use cosell::partner_center::webhook::verify::WebhookVerifier;
use cosell::sandbox::Sandbox;
use cosell::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use cosell::sandbox::partner_center::DeliveryFaults;
use serde_json::json;

/// What the receiver needs: the verifier, the hosts a `ResourceUri` may name, and the
/// deliveries already seen (callbacks carry no event id; the body hash is the dedupe key).
struct Receiver {
    verifier: WebhookVerifier,
    resource_host: String,
    seen: Mutex<HashSet<String>>,
}

async fn callback(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    match rx.verifier.verify(&headers, &body).await {
        Ok(v) => {
            let fresh = rx
                .seen
                .lock()
                .map(|mut s| s.insert(v.body_sha256.clone()))
                .unwrap_or(true);
            let id = v
                .callback
                .referral_id(&[rx.resource_host.as_str()])
                .unwrap_or_else(|_| "(not a referral)".into());
            println!(
                "  verified {:<26} {id}{}",
                v.callback.event_name.to_string(),
                if fresh { "" } else { "  (duplicate, ignored)" }
            );
            StatusCode::OK
        }
        Err(e) => {
            println!("  refused: {} ({})", e, e.reason_code());
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED)
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    let sandbox = Sandbox::start().await?;
    let pc = sandbox.partner_center();
    pc.set_test_event_limit(false);

    // The receiver: verify first (sandbox CA, sandbox certificate URL), then parse.
    let receiver = Arc::new(Receiver {
        verifier: pc.webhook_verifier_builder()?.build()?,
        resource_host: sandbox
            .urls()
            .referrals
            .host_str()
            .unwrap_or("127.0.0.1")
            .to_string(),
        seen: Mutex::new(HashSet::new()),
    });
    let app = axum::Router::new()
        .route("/partner-center/webhook", axum::routing::post(callback))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let callback_url = format!("http://{}/partner-center/webhook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // Register through the client (signed in as a user, like the referrals calls).
    let refresh_token = sandbox.entra().issue_refresh_token(SANDBOX_CLIENT_ID);
    let credential =
        RefreshTokenCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, refresh_token)
            .client_secret(SANDBOX_CLIENT_SECRET)
            .authority_host(sandbox.urls().entra.as_str())
            .build()?;
    let client = PartnerCenterClient::builder()
        .referrals_endpoint(sandbox.urls().referrals.clone())
        .webhooks_endpoint(sandbox.urls().webhooks.clone())
        .credential(Arc::new(credential))
        .build()?;
    let mut registration = client
        .register_referral_webhook(&callback_url, true)
        .await?;
    registration
        .webhook_events
        .push(cosell::partner_center::webhook::registration::WebhookEvent::TestCreated);
    client.replace_webhook_registration(&registration).await?;
    println!(
        "registered {callback_url} (certificate at {})",
        pc.certificate_url()
    );

    println!("Microsoft sends a referral, we accept it, Microsoft joins and sets its CRM id:");
    let incoming = pc.create_incoming_referral(json!({}))?;
    let id = incoming["id"].as_str().unwrap_or_default().to_string();
    pc.update_as_microsoft(
        &id,
        json!([{ "op": "replace", "path": "/details/notes", "value": "Customer call booked" }]),
    )?;
    let our_referral = client.get_referral(&id).await?;
    client
        .transition_referral(
            &our_referral,
            cosell::partner_center::models::ReferralStatus::Active,
            cosell::partner_center::models::ReferralSubstatus::Accepted,
        )
        .send()
        .await?;
    pc.microsoft_accept(&id)?;
    pc.wait_for_deliveries().await;

    println!("A test event:");
    let correlation = client.send_test_event().await?;
    pc.wait_for_deliveries().await;
    println!("  correlation id {correlation}");

    println!("Duplicate deliveries (a fault production also has): deduplicated by body hash:");
    pc.set_delivery_faults(DeliveryFaults {
        duplicate: true,
        ..Default::default()
    });
    pc.set_microsoft_crm_id(&id, None)?;
    pc.wait_for_deliveries().await;
    pc.clear_delivery_faults();

    println!("A forged callback (a signature not made with the signing key):");
    let forged_body = br#"{"EventName":"referral-updated","ResourceUri":"http://127.0.0.1/v1.0/engagements/referrals/00000000-0000-0000-0000-000000000000","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2024-02-25T09:11:02.1034567+00:00"}"#;
    let mut headers = HeaderMap::new();
    for (k, v) in pc.sign_callback(forged_body, true)? {
        headers.insert(
            axum::http::HeaderName::from_bytes(k.as_bytes())?,
            v.parse()?,
        );
    }
    headers.insert(
        "x-ms-signature",
        format!("Signature {}", "QUJD".repeat(86)).parse()?,
    );
    let transport = cosell::http::default_transport()?;
    let mut req = cosell::http::http::Request::post(callback_url.as_str())
        .body(cosell::http::bytes::Bytes::from_static(forged_body))?;
    *req.headers_mut() = headers;
    let answer = transport.send(req).await?;
    println!("  receiver answered {}", answer.status());

    println!("Delivery log:");
    for d in pc.deliveries() {
        println!(
            "  #{:<2} {:<26} {:?} after {} attempt(s)",
            d.id,
            d.event_name,
            d.state,
            d.attempts.len()
        );
    }
    sandbox.shutdown().await;
    Ok(())
}
