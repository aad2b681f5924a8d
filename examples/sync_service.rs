//! A starting template for embedding the sync service in your own program, using the library
//! directly: the clients, a SQLite state store, the engine's loop and a webhook endpoint, wired
//! by hand against the standalone sandbox. For a ready service with a TOML configuration,
//! hardened listeners, `/status`, `/metrics` and the operator commands, install the `cosell`
//! command instead (`cargo install --path crates/cosell-cli`; see `docs/sync-service.md`).
//!
//! ```text
//! cargo run --example sandbox        # terminal 1: the emulators on ports 7100–7105
//! cargo run --example sync_service   # terminal 2: webhook on 127.0.0.1:7110; Ctrl-C stops it
//! ```

use std::error::Error;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use cosell::dataverse::DataverseClient;
use cosell::http::url::Url;
use cosell::http::{ClientSecretCredential, RefreshTokenCredential};
use cosell::mapping::FieldMap;
use cosell::partner_center::PartnerCenterClient;
use cosell::partner_center::webhook::verify::{CertificateUrlRule, WebhookVerifier};
use cosell::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_REFRESH_TOKEN};
use cosell::sync::store::{SqliteStore, StateStore};
use cosell::sync::{DataverseCrm, Engine, EngineConfig, Schedule, WebhookIntake};

// The standalone sandbox's well-known addresses; a real tenant has its own.
const AUTHORITY: &str = "http://127.0.0.1:7100/";
const TENANT: &str = "sandbox.onmicrosoft.com";
const LISTEN: &str = "127.0.0.1:7110";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    // App-only for Dataverse and the webhook API; app+user for the referrals API. A real
    // service keeps secrets out of the source and persists the rotated refresh token.
    let app = ClientSecretCredential::builder(TENANT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
        .authority_host(AUTHORITY)
        .build()?;
    let user = RefreshTokenCredential::builder(TENANT, SANDBOX_CLIENT_ID, SANDBOX_REFRESH_TOKEN)
        .client_secret(SANDBOX_CLIENT_SECRET)
        .authority_host(AUTHORITY)
        .build()?;
    let partner_center = PartnerCenterClient::builder()
        .referrals_endpoint(Url::parse("http://127.0.0.1:7101/v1.0/engagements/")?)
        .webhooks_endpoint(Url::parse("http://127.0.0.1:7102/webhooks/v1/")?)
        .credential(Arc::new(user))
        .webhooks_credential(Arc::new(app.clone()))
        .build()?;
    let dataverse = DataverseClient::builder()
        .environment_url(Url::parse("http://127.0.0.1:7104/")?)
        .credential(Arc::new(app))
        .build()?;
    let map = FieldMap::default();
    let store: Arc<dyn StateStore> =
        Arc::new(SqliteStore::open("target/sync-service-example.sqlite").await?);
    let engine = Engine::new(
        Arc::new(partner_center.clone()),
        Arc::new(DataverseCrm::new(dataverse, map)),
        store.clone(),
        EngineConfig::default(),
    );

    // Callbacks are verified against the sandbox's PKI (production: Microsoft's, the default).
    let root = fetch_pem("http://127.0.0.1:7103/cert/sandbox-root-ca.pem").await?;
    let verifier = WebhookVerifier::builder()
        .expected_organization("cosell sandbox")
        .allow_certificate_url(CertificateUrlRule::from_prefix(
            "http://127.0.0.1:7103/cert/",
        )?)
        .allow_issuer_url(CertificateUrlRule::from_prefix(
            "http://127.0.0.1:7105/pkiops/certs/",
        )?)
        .allow_http_loopback(true)
        .additional_trust_anchors_pem(root)
        .build()?;
    let intake = WebhookIntake::new(Arc::new(verifier), store)
        .with_resource_hosts(["127.0.0.1".to_string()]);
    let router = Router::new()
        .route("/webhook", post(webhook))
        .with_state(intake);
    let listener = tokio::net::TcpListener::bind(LISTEN).await?;
    cosell::sync::register_callback(&partner_center, &format!("http://{LISTEN}/webhook"), false)
        .await?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    println!("listening on {LISTEN}; Ctrl-C stops");

    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    engine.run(Schedule::default(), stop).await?;
    println!("stopped: {:?}", engine.stats());
    Ok(())
}

/// `POST /webhook`: verify and queue; the engine's inbox pass does the work.
async fn webhook(
    State(intake): State<WebhookIntake>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    match intake.receive(&headers, &body).await {
        Ok(_) => StatusCode::OK,
        Err(e) => StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
    }
}

/// The sandbox's root CA, fetched with the library's own transport.
async fn fetch_pem(url: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    let transport = cosell::http::transport::default_transport()?;
    let request = axum::http::Request::get(url).body(cosell::http::bytes::Bytes::new())?;
    Ok(transport.send(request).await?.into_body().to_vec())
}
