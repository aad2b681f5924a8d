//! The clients, the state store, the engine and the callback verifier of a configuration.

use std::sync::Arc;

use cosell_http::{ClientSecretCredential, RefreshTokenCredential};
use cosell_sync::store::{SqliteStore, StateStore};
use cosell_sync::{DataverseCrm, Engine};
use dataverse_client::DataverseClient;
use partner_center_client::PartnerCenterClient;
use partner_center_client::webhook::verify::{CertificateUrlRule, WebhookVerifier};
use secrecy::ExposeSecret;

use crate::Error;
use crate::config::Settings;

/// What a command works with: both clients, the store and the engine over them.
#[derive(Debug, Clone)]
pub struct Wired {
    /// The Partner Center client (referrals app+user, webhooks app-only).
    pub partner_center: PartnerCenterClient,
    /// The Dataverse client (its limiter shows throttling).
    pub dataverse: DataverseClient,
    /// The state store.
    pub store: Arc<dyn StateStore>,
    /// The engine.
    pub engine: Engine,
}

/// The app-only credential (webhook API, Dataverse).
pub fn app_credential(s: &Settings) -> Result<ClientSecretCredential, Error> {
    let secret = s.client_secret()?;
    Ok(ClientSecretCredential::builder(
        s.tenant.as_str(),
        s.credentials.client_id.as_str(),
        secret.expose_secret(),
    )
    .authority_host(s.authority_host.as_str())
    .build()?)
}

/// The Dataverse client of a configuration.
pub fn dataverse_client(s: &Settings) -> Result<DataverseClient, Error> {
    Ok(DataverseClient::builder()
        .environment_url(s.dataverse.clone())
        .credential(Arc::new(app_credential(s)?))
        .build()?)
}

/// Opens the state store (its directory `0700`, its files `0600`).
pub async fn open_store(s: &Settings) -> Result<Arc<dyn StateStore>, Error> {
    let store = SqliteStore::open(&s.store_path)
        .await
        .map_err(|e| Error::Message(format!("store.path `{}`: {e}", s.store_path.display())))?;
    Ok(Arc::new(store))
}

/// Both clients, the store and the engine. Every refresh token Entra ID rotates in is written
/// to `credentials.refresh_token_file`, so a restart months later still signs in.
pub async fn wire(s: &Settings) -> Result<Wired, Error> {
    wire_with(s, s.engine.clone()).await
}

/// The Partner Center client of a configuration: referrals with the refresh token (app+user),
/// webhook registrations app-only. Every refresh token Entra ID rotates in is written to
/// `credentials.refresh_token_file`.
pub fn partner_center_client(s: &Settings) -> Result<PartnerCenterClient, Error> {
    let app = app_credential(s)?;
    let refresh = s.refresh_token()?;
    let file = s.refresh_token_file.clone();
    let user = RefreshTokenCredential::builder(
        s.tenant.as_str(),
        s.credentials.client_id.as_str(),
        refresh.expose_secret(),
    )
    .client_secret(s.client_secret()?.expose_secret())
    .authority_host(s.authority_host.as_str())
    .on_rotated(Arc::new(move |token: secrecy::SecretString| match crate::token::write(&file, token.expose_secret()) {
        Ok(()) => tracing::debug!(file = %file.display(), "rotated refresh token saved"),
        // The old token stays valid until it expires: loud, not fatal.
        Err(e) => tracing::error!(
            file = %file.display(), error = %e,
            "cannot save the rotated refresh token; the service stops signing in once the old one expires"
        ),
    }))
    .build()?;
    Ok(PartnerCenterClient::builder()
        .referrals_endpoint(s.referrals.clone())
        .webhooks_endpoint(s.webhooks.clone())
        .credential(Arc::new(user))
        .webhooks_credential(Arc::new(app))
        .build()?)
}

/// [`wire`] with other engine settings (`cosell plan`'s dry run).
pub async fn wire_with(s: &Settings, config: cosell_sync::EngineConfig) -> Result<Wired, Error> {
    let partner_center = partner_center_client(s)?;
    let dataverse = dataverse_client(s)?;
    let store = open_store(s).await?;
    let crm = Arc::new(DataverseCrm::new(dataverse.clone(), s.map.clone()));
    let engine = Engine::new(Arc::new(partner_center.clone()), crm, store.clone(), config);
    Ok(Wired {
        partner_center,
        dataverse,
        store,
        engine,
    })
}

/// Reads a PEM from a file or, for a URL, over HTTP (the sandbox serves its root CA).
async fn read_pem(source: &str) -> Result<Vec<u8>, Error> {
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        return std::fs::read(source)
            .map_err(|e| Error::Message(format!("cannot read `{source}`: {e}")));
    }
    let (status, body) = crate::http_get(source, None).await?;
    if !(200..300).contains(&status) {
        return Err(Error::Message(format!(
            "cannot fetch `{source}`: HTTP {status}"
        )));
    }
    Ok(body)
}

/// The callback verifier: production defaults, then what `[webhook.verification]` adds.
pub async fn verifier(s: &Settings) -> Result<WebhookVerifier, Error> {
    let v = &s.verification;
    let mut builder = WebhookVerifier::builder().expected_organization(&v.expected_organization);
    if !v.certificate_hosts.is_empty() {
        builder = builder.certificate_hosts(&v.certificate_hosts);
    }
    let mut http = false;
    for prefix in &v.certificate_url_prefixes {
        builder = builder.allow_certificate_url(CertificateUrlRule::from_prefix(prefix)?);
        http |= prefix.starts_with("http://");
    }
    for prefix in &v.issuer_url_prefixes {
        builder = builder.allow_issuer_url(CertificateUrlRule::from_prefix(prefix)?);
    }
    // The config check admitted plain http certificate URLs only on loopback.
    builder = builder.allow_http_loopback(http);
    for source in &v.trust_anchors {
        let pem = read_pem(source).await?;
        builder = if v.default_roots {
            builder.additional_trust_anchors_pem(pem)
        } else {
            builder.trust_anchors_pem(pem)
        };
    }
    for source in &v.intermediates {
        builder = builder.intermediates_pem(read_pem(source).await?);
    }
    Ok(builder.build()?)
}
