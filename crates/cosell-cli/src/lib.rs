//! The `cosell` command, as a library: the configuration file, the service (`cosell serve`)
//! with its hardened listeners, `/status` and `/metrics`, and the operator commands. The binary
//! (`src/main.rs`) only parses the command line and calls in here.
//!
//! Every key of the configuration file: `docs/sync-service.md`.

pub mod commands;
pub mod config;
pub mod listener;
pub mod logging;
pub mod login;
pub mod sandbox;
pub mod service;
pub mod token;
pub mod wiring;

use std::sync::Arc;

use cosell_http::HttpTransport;
use cosell_http::bytes::Bytes;
use cosell_http::http;

/// Everything a `cosell` command can fail with. Secrets never appear in it: the clients redact
/// their own errors, and the configuration names variables, not values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration problem, naming its key.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] cosell_sync::store::StoreError),
    /// The engine failed (its store, or a call a whole pass needs).
    #[error(transparent)]
    Engine(Box<cosell_sync::EngineError>),
    /// A Partner Center call or client setting failed.
    #[error(transparent)]
    PartnerCenter(Box<partner_center_client::Error>),
    /// A Dataverse call or client setting failed.
    #[error(transparent)]
    Dataverse(Box<dataverse_client::Error>),
    /// A credential could not be built or a token obtained.
    #[error(transparent)]
    Credential(#[from] cosell_http::CredentialError),
    /// The callback verifier's settings are invalid.
    #[error(transparent)]
    Verifier(#[from] partner_center_client::webhook::verify::VerifierConfigError),
    /// An HTTP request of the command itself failed (login, status, a PEM download).
    #[error(transparent)]
    Transport(#[from] cosell_http::TransportError),
    /// Provisioning or the setup check could not finish (a metadata call failed).
    #[error(transparent)]
    Setup(Box<cosell_sync::SetupError>),
    /// A local file or socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Anything else, said in words.
    #[error("{0}")]
    Message(String),
}

// Boxed: the clients' errors are large, and every command returns this.
impl From<cosell_sync::EngineError> for Error {
    fn from(e: cosell_sync::EngineError) -> Self {
        Error::Engine(Box::new(e))
    }
}

impl From<cosell_sync::SetupError> for Error {
    fn from(e: cosell_sync::SetupError) -> Self {
        Error::Setup(Box::new(e))
    }
}

impl From<partner_center_client::Error> for Error {
    fn from(e: partner_center_client::Error) -> Self {
        Error::PartnerCenter(Box::new(e))
    }
}

impl From<dataverse_client::Error> for Error {
    fn from(e: dataverse_client::Error) -> Self {
        Error::Dataverse(Box::new(e))
    }
}

impl Error {
    /// Whether running the command again later may succeed (a service unreachable or
    /// throttling) rather than needing a fix.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(e) => e.is_retryable(),
            Error::Credential(e) => e.is_retryable(),
            Error::Engine(e) => match e.as_ref() {
                cosell_sync::EngineError::Remote(e) => e.is_retryable(),
                _ => false,
            },
            _ => false,
        }
    }
}

fn transport() -> Result<Arc<dyn HttpTransport>, Error> {
    Ok(cosell_http::transport::default_transport()?)
}

/// `GET url` (with a bearer token): the status and the body.
pub(crate) async fn http_get(url: &str, bearer: Option<&str>) -> Result<(u16, Vec<u8>), Error> {
    let mut request = http::Request::get(url);
    if let Some(token) = bearer {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Bytes::new())
        .map_err(|e| Error::Message(format!("`{url}`: {e}")))?;
    let response = transport()?.send(request).await?;
    Ok((response.status().as_u16(), response.into_body().to_vec()))
}

/// `POST url` with a form body: the status and the body.
pub(crate) async fn http_post_form(
    url: &str,
    form: &[(&str, &str)],
) -> Result<(u16, Vec<u8>), Error> {
    let body = serde_urlencoded::to_string(form).map_err(|e| Error::Message(e.to_string()))?;
    let request = http::Request::post(url)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(Bytes::from(body))
        .map_err(|e| Error::Message(format!("`{url}`: {e}")))?;
    let response = transport()?.send(request).await?;
    Ok((response.status().as_u16(), response.into_body().to_vec()))
}
