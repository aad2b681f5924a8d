//! The credential seam and the Entra ID credentials both APIs need.
//!
//! Partner Center's referrals API accepts only app+user tokens, so cosell ships a refresh-token
//! credential (the Secure Application Model flow); the webhook API and Dataverse take
//! client-credentials tokens. Token grants go through the `oauth2` crate over cosell's own
//! transport, so they can be pointed at the sandbox's Entra stand-in, retried, and faulted like
//! any other call. Tokens are cached per scope set until shortly before they expire, and a refresh
//! is single-flight: concurrent callers wait for the one request in flight.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, ClientId, ClientSecret, RefreshToken, RequestTokenError, Scope, TokenResponse,
    TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::pipeline::{Pipeline, SendOptions};
use crate::retry::RetryPolicy;
use crate::transport::HttpTransport;

/// The public Entra ID authority host.
pub const ENTRA_AUTHORITY: &str = "https://login.microsoftonline.com";

/// Refresh a cached token when it has less than this left.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// A bearer token and its expiry. `Debug` never shows the token.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The bearer token.
    pub token: SecretString,
    /// When it stops being valid.
    pub expires_on: DateTime<Utc>,
}

impl AccessToken {
    /// A token valid until `expires_on`.
    pub fn new(token: impl Into<String>, expires_on: DateTime<Utc>) -> Self {
        AccessToken {
            token: SecretString::from(token.into()),
            expires_on,
        }
    }

    fn is_fresh(&self, margin: Duration) -> bool {
        let margin = chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::zero());
        self.expires_on - margin > Utc::now()
    }
}

/// Returns bearer tokens for a set of scopes (for Entra ID: `https://host/.default`).
///
/// Implement it to plug in another token source (managed identity, a secret vault, a test double).
#[async_trait]
pub trait TokenCredential: Send + Sync + fmt::Debug {
    /// A token valid for `scopes`. Implementations should cache.
    async fn get_token(&self, scopes: &[&str]) -> Result<AccessToken, CredentialError>;

    /// Drops any cached token for `scopes`, so that the next call fetches a new one. The pipeline
    /// calls this once when a service answers 401 to a cached token.
    async fn invalidate(&self, _scopes: &[&str]) {}
}

#[async_trait]
impl<T: TokenCredential + ?Sized> TokenCredential for Arc<T> {
    async fn get_token(&self, scopes: &[&str]) -> Result<AccessToken, CredentialError> {
        (**self).get_token(scopes).await
    }
    async fn invalidate(&self, scopes: &[&str]) {
        (**self).invalidate(scopes).await
    }
}

/// What kind of credential failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialErrorKind {
    /// The credential is misconfigured (bad URL, missing value).
    Config,
    /// The token endpoint refused the grant (`invalid_grant`, `invalid_client`, …).
    Rejected,
    /// The token endpoint could not be reached or failed transiently.
    Unavailable,
    /// The token endpoint answered something that is not a token.
    InvalidResponse,
}

/// No token could be obtained. Never contains a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("credential error ({kind:?}){}: {message}", code.as_deref().map(|c| format!(" [{c}]")).unwrap_or_default())]
pub struct CredentialError {
    kind: CredentialErrorKind,
    code: Option<String>,
    message: String,
}

impl CredentialError {
    /// Creates a credential error.
    pub fn new(kind: CredentialErrorKind, message: impl Into<String>) -> Self {
        CredentialError {
            kind,
            code: None,
            message: message.into(),
        }
    }

    /// Adds the OAuth error code (`invalid_grant`, …).
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> CredentialErrorKind {
        self.kind
    }

    /// The OAuth error code, when the token endpoint sent one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == CredentialErrorKind::Unavailable
    }
}

/// A fixed token, for tests and for tokens obtained elsewhere.
///
/// ```
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// use cosell_http::{StaticTokenCredential, TokenCredential};
/// use secrecy::ExposeSecret;
/// let cred = StaticTokenCredential::new("t0ken");
/// assert_eq!(cred.get_token(&["x/.default"]).await.unwrap().token.expose_secret(), "t0ken");
/// assert!(!format!("{cred:?}").contains("t0ken"));
/// # });
/// ```
#[derive(Clone)]
pub struct StaticTokenCredential {
    token: SecretString,
}

impl StaticTokenCredential {
    /// A credential that always returns `token`.
    pub fn new(token: impl Into<String>) -> Self {
        StaticTokenCredential {
            token: SecretString::from(token.into()),
        }
    }
}

impl fmt::Debug for StaticTokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokenCredential")
            .field("token", &"[REDACTED]")
            .finish()
    }
}

#[async_trait]
impl TokenCredential for StaticTokenCredential {
    async fn get_token(&self, _scopes: &[&str]) -> Result<AccessToken, CredentialError> {
        Ok(AccessToken {
            token: self.token.clone(),
            expires_on: Utc::now() + chrono::Duration::hours(1),
        })
    }
}

/// Per-scope-set token cache with single-flight refresh.
#[derive(Debug)]
struct TokenCache {
    entries: tokio::sync::Mutex<HashMap<String, AccessToken>>,
    margin: Duration,
}

impl TokenCache {
    fn new(margin: Duration) -> Self {
        TokenCache {
            entries: tokio::sync::Mutex::new(HashMap::new()),
            margin,
        }
    }

    fn key(scopes: &[&str]) -> String {
        let mut s: Vec<&str> = scopes.to_vec();
        s.sort_unstable();
        s.join(" ")
    }

    async fn get_or_fetch<F, Fut>(
        &self,
        scopes: &[&str],
        fetch: F,
    ) -> Result<AccessToken, CredentialError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<AccessToken, CredentialError>>,
    {
        let key = Self::key(scopes);
        // The lock is held across the fetch on purpose: that is the single flight.
        let mut entries = self.entries.lock().await;
        if let Some(token) = entries.get(&key)
            && token.is_fresh(self.margin)
        {
            return Ok(token.clone());
        }
        let token = fetch().await?;
        entries.insert(key, token.clone());
        Ok(token)
    }

    async fn invalidate(&self, scopes: &[&str]) {
        self.entries.lock().await.remove(&Self::key(scopes));
    }
}

/// Where an Entra credential gets its tokens: authority host and tenant.
#[derive(Debug, Clone)]
struct Authority {
    token_url: Url,
}

impl Authority {
    fn new(authority_host: &str, tenant_id: &str) -> Result<Self, CredentialError> {
        let mut url = Url::parse(authority_host).map_err(|e| {
            CredentialError::new(
                CredentialErrorKind::Config,
                format!("authority host `{authority_host}` is not a URL: {e}"),
            )
        })?;
        if tenant_id.is_empty() || tenant_id.contains(['/', '?', '#']) {
            return Err(CredentialError::new(
                CredentialErrorKind::Config,
                format!("tenant id `{tenant_id}` is not a tenant id or domain"),
            ));
        }
        url.path_segments_mut()
            .map_err(|()| {
                CredentialError::new(
                    CredentialErrorKind::Config,
                    format!("authority host `{authority_host}` cannot have a path"),
                )
            })?
            .pop_if_empty()
            .extend([tenant_id, "oauth2", "v2.0", "token"]);
        Ok(Authority { token_url: url })
    }
}

/// The token endpoint call, shared by the grants: oauth2 builds and parses, our pipeline sends.
#[derive(Debug, Clone)]
struct TokenEndpoint {
    pipeline: Pipeline,
}

impl TokenEndpoint {
    fn new(transport: Arc<dyn HttpTransport>) -> Self {
        TokenEndpoint {
            pipeline: Pipeline::builder("entra-id", transport)
                .retry(RetryPolicy::default().with_max_attempts(3))
                .build(),
        }
    }

    async fn exchange(
        &self,
        req: oauth2::HttpRequest,
    ) -> Result<oauth2::HttpResponse, crate::Error> {
        let (parts, body) = req.into_parts();
        let req = http::Request::from_parts(parts, Bytes::from(body));
        // A token request creates nothing server-side, so repeating it is safe.
        let resp = self
            .pipeline
            .send_raw(req, &SendOptions::default().idempotent(true))
            .await?;
        let (parts, body) = resp.into_parts();
        Ok(http::Response::from_parts(parts, body.to_vec()))
    }
}

fn token_from_response(
    resp: &oauth2::basic::BasicTokenResponse,
) -> (AccessToken, Option<SecretString>) {
    let expires_in = resp.expires_in().unwrap_or(Duration::from_secs(3600));
    let expires_on =
        Utc::now() + chrono::Duration::from_std(expires_in).unwrap_or(chrono::Duration::hours(1));
    let token = AccessToken {
        token: SecretString::from(resp.access_token().secret().clone()),
        expires_on,
    };
    let refresh = resp
        .refresh_token()
        .map(|r| SecretString::from(r.secret().clone()));
    (token, refresh)
}

fn map_grant_error(
    e: RequestTokenError<crate::Error, oauth2::StandardErrorResponse<BasicErrorResponseType>>,
) -> CredentialError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let code = r.error().to_string();
            let message = r
                .error_description()
                .cloned()
                .unwrap_or_else(|| "token request refused".to_string());
            CredentialError::new(CredentialErrorKind::Rejected, message).with_code(code)
        }
        RequestTokenError::Request(err) => {
            let kind = if err.is_retryable() {
                CredentialErrorKind::Unavailable
            } else {
                CredentialErrorKind::Rejected
            };
            CredentialError::new(kind, format!("token endpoint: {err}"))
        }
        RequestTokenError::Parse(err, _body) => CredentialError::new(
            CredentialErrorKind::InvalidResponse,
            format!(
                "token endpoint answered an unreadable body at `{}`",
                err.path()
            ),
        ),
        RequestTokenError::Other(msg) => {
            CredentialError::new(CredentialErrorKind::InvalidResponse, msg)
        }
    }
}

fn scopes_of(scopes: &[&str]) -> Vec<Scope> {
    scopes
        .iter()
        .map(|s| Scope::new((*s).to_string()))
        .collect()
}

/// Client-credentials grant (app-only): Dataverse S2S and the Partner Center webhook API.
///
/// ```
/// use cosell_http::ClientSecretCredential;
/// let cred = ClientSecretCredential::builder("contoso.onmicrosoft.com", "app-id", "s3cret")
///     .build()
///     .unwrap();
/// assert!(!format!("{cred:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct ClientSecretCredential {
    inner: Arc<ClientSecretInner>,
}

struct ClientSecretInner {
    authority: Authority,
    client_id: String,
    client_secret: SecretString,
    endpoint: TokenEndpoint,
    cache: TokenCache,
}

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretCredential")
            .field("token_url", &self.inner.authority.token_url.as_str())
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &"[REDACTED]")
            .finish()
    }
}

/// Builder for the Entra ID credentials.
pub struct EntraCredentialBuilder<T> {
    authority_host: String,
    tenant_id: String,
    client_id: String,
    client_secret: Option<SecretString>,
    transport: Option<Arc<dyn HttpTransport>>,
    refresh_margin: Duration,
    extra: T,
}

impl<T> fmt::Debug for EntraCredentialBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraCredentialBuilder")
            .field("authority_host", &self.authority_host)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl<T> EntraCredentialBuilder<T> {
    /// The authority host (default `https://login.microsoftonline.com`; the sandbox's stand-in or a
    /// sovereign cloud's authority otherwise).
    pub fn authority_host(mut self, host: impl Into<String>) -> Self {
        self.authority_host = host.into();
        self
    }

    /// The transport token requests go over (default: reqwest).
    pub fn transport(mut self, transport: Arc<dyn HttpTransport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// How long before expiry a cached token is refreshed (default 5 minutes).
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    fn parts(self) -> Result<BuiltParts<T>, CredentialError> {
        let authority = Authority::new(&self.authority_host, &self.tenant_id)?;
        if self.client_id.is_empty() {
            return Err(CredentialError::new(
                CredentialErrorKind::Config,
                "client id is empty",
            ));
        }
        let transport = match self.transport {
            Some(t) => t,
            None => default_transport()?,
        };
        Ok(BuiltParts {
            authority,
            client_id: self.client_id,
            client_secret: self.client_secret,
            endpoint: TokenEndpoint::new(transport),
            cache: TokenCache::new(self.refresh_margin),
            extra: self.extra,
        })
    }
}

/// What every Entra credential is built from.
struct BuiltParts<T> {
    authority: Authority,
    client_id: String,
    client_secret: Option<SecretString>,
    endpoint: TokenEndpoint,
    cache: TokenCache,
    extra: T,
}

fn default_transport() -> Result<Arc<dyn HttpTransport>, CredentialError> {
    crate::transport::default_transport()
        .map_err(|e| CredentialError::new(CredentialErrorKind::Config, e.to_string()))
}

impl ClientSecretCredential {
    /// Starts a builder for `tenant_id` (GUID or domain), app `client_id` and its secret.
    pub fn builder(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> EntraCredentialBuilder<()> {
        EntraCredentialBuilder {
            authority_host: ENTRA_AUTHORITY.to_string(),
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            client_secret: Some(SecretString::from(client_secret.into())),
            transport: None,
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            extra: (),
        }
    }

    async fn fetch(&self, scopes: &[&str]) -> Result<AccessToken, CredentialError> {
        let inner = &self.inner;
        let client = BasicClient::new(ClientId::new(inner.client_id.clone()))
            .set_client_secret(ClientSecret::new(
                inner.client_secret.expose_secret().to_string(),
            ))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(TokenUrl::from_url(inner.authority.token_url.clone()));
        let endpoint = inner.endpoint.clone();
        let http = move |req: oauth2::HttpRequest| {
            let endpoint = endpoint.clone();
            async move { endpoint.exchange(req).await }
        };
        let resp = client
            .exchange_client_credentials()
            .add_scopes(scopes_of(scopes))
            .request_async(&http)
            .await
            .map_err(map_grant_error)?;
        Ok(token_from_response(&resp).0)
    }
}

impl EntraCredentialBuilder<()> {
    /// Builds the client-credentials credential.
    pub fn build(self) -> Result<ClientSecretCredential, CredentialError> {
        let BuiltParts {
            authority,
            client_id,
            client_secret,
            endpoint,
            cache,
            extra: (),
        } = self.parts()?;
        let client_secret = client_secret.ok_or_else(|| {
            CredentialError::new(CredentialErrorKind::Config, "client secret is missing")
        })?;
        Ok(ClientSecretCredential {
            inner: Arc::new(ClientSecretInner {
                authority,
                client_id,
                client_secret,
                endpoint,
                cache,
            }),
        })
    }
}

#[async_trait]
impl TokenCredential for ClientSecretCredential {
    async fn get_token(&self, scopes: &[&str]) -> Result<AccessToken, CredentialError> {
        self.inner
            .cache
            .get_or_fetch(scopes, || self.fetch(scopes))
            .await
    }

    async fn invalidate(&self, scopes: &[&str]) {
        self.inner.cache.invalidate(scopes).await;
    }
}

/// Called with the new refresh token whenever Entra ID rotates it, so it can be persisted.
pub type RefreshTokenSink = Arc<dyn Fn(SecretString) + Send + Sync>;

/// Refresh-token grant (app+user, the Secure Application Model): what Partner Center's referrals
/// API requires. The refresh token is obtained once interactively (outside this crate) and
/// rotated on every use; register [`RefreshTokenOptions::on_rotated`] to persist the new one.
#[derive(Clone)]
pub struct RefreshTokenCredential {
    inner: Arc<RefreshInner>,
}

struct RefreshInner {
    authority: Authority,
    client_id: String,
    client_secret: Option<SecretString>,
    refresh_token: Mutex<SecretString>,
    on_rotated: Option<RefreshTokenSink>,
    endpoint: TokenEndpoint,
    cache: TokenCache,
}

impl fmt::Debug for RefreshTokenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenCredential")
            .field("token_url", &self.inner.authority.token_url.as_str())
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("refresh_token", &"[REDACTED]")
            .finish()
    }
}

/// Extra settings of the refresh-token credential.
#[derive(Default)]
pub struct RefreshTokenOptions {
    refresh_token: Option<SecretString>,
    on_rotated: Option<RefreshTokenSink>,
}

impl fmt::Debug for RefreshTokenOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenOptions")
            .finish_non_exhaustive()
    }
}

impl RefreshTokenOptions {
    /// Registers a sink for rotated refresh tokens.
    pub fn on_rotated(mut self, sink: RefreshTokenSink) -> Self {
        self.on_rotated = Some(sink);
        self
    }
}

impl RefreshTokenCredential {
    /// Starts a builder for `tenant_id`, app `client_id` and the user's refresh token.
    ///
    /// ```
    /// use cosell_http::RefreshTokenCredential;
    /// let cred = RefreshTokenCredential::builder("contoso.onmicrosoft.com", "app-id", "0.AAAA-refresh")
    ///     .client_secret("s3cret")
    ///     .on_rotated(std::sync::Arc::new(|_new_token| { /* persist it */ }))
    ///     .build()
    ///     .unwrap();
    /// let shown = format!("{cred:?}");
    /// assert!(!shown.contains("s3cret") && !shown.contains("0.AAAA"));
    /// ```
    pub fn builder(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        refresh_token: impl Into<String>,
    ) -> EntraCredentialBuilder<RefreshTokenOptions> {
        EntraCredentialBuilder {
            authority_host: ENTRA_AUTHORITY.to_string(),
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            client_secret: None,
            transport: None,
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            extra: RefreshTokenOptions {
                refresh_token: Some(SecretString::from(refresh_token.into())),
                on_rotated: None,
            },
        }
    }

    async fn fetch(&self, scopes: &[&str]) -> Result<AccessToken, CredentialError> {
        let inner = &self.inner;
        let mut client = BasicClient::new(ClientId::new(inner.client_id.clone()))
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(TokenUrl::from_url(inner.authority.token_url.clone()));
        if let Some(secret) = &inner.client_secret {
            client =
                client.set_client_secret(ClientSecret::new(secret.expose_secret().to_string()));
        }
        let current = {
            let guard = inner
                .refresh_token
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            RefreshToken::new(guard.expose_secret().to_string())
        };
        let endpoint = inner.endpoint.clone();
        let http = move |req: oauth2::HttpRequest| {
            let endpoint = endpoint.clone();
            async move { endpoint.exchange(req).await }
        };
        let resp = client
            .exchange_refresh_token(&current)
            .add_scopes(scopes_of(scopes))
            .request_async(&http)
            .await
            .map_err(map_grant_error)?;
        let (token, rotated) = token_from_response(&resp);
        if let Some(new_refresh) = rotated {
            *inner
                .refresh_token
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = new_refresh.clone();
            if let Some(sink) = &inner.on_rotated {
                sink(new_refresh);
            }
        }
        Ok(token)
    }
}

impl EntraCredentialBuilder<RefreshTokenOptions> {
    /// The app's client secret (confidential clients; omit for public clients).
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(secret.into()));
        self
    }

    /// Registers a sink called with each rotated refresh token.
    pub fn on_rotated(mut self, sink: RefreshTokenSink) -> Self {
        self.extra = std::mem::take(&mut self.extra).on_rotated(sink);
        self
    }

    /// Builds the refresh-token credential.
    pub fn build(self) -> Result<RefreshTokenCredential, CredentialError> {
        let BuiltParts {
            authority,
            client_id,
            client_secret,
            endpoint,
            cache,
            extra,
        } = self.parts()?;
        let refresh_token = extra
            .refresh_token
            .filter(|t| !t.expose_secret().is_empty())
            .ok_or_else(|| {
                CredentialError::new(CredentialErrorKind::Config, "refresh token is empty")
            })?;
        Ok(RefreshTokenCredential {
            inner: Arc::new(RefreshInner {
                authority,
                client_id,
                client_secret,
                refresh_token: Mutex::new(refresh_token),
                on_rotated: extra.on_rotated,
                endpoint,
                cache,
            }),
        })
    }
}

#[async_trait]
impl TokenCredential for RefreshTokenCredential {
    async fn get_token(&self, scopes: &[&str]) -> Result<AccessToken, CredentialError> {
        self.inner
            .cache
            .get_or_fetch(scopes, || self.fetch(scopes))
            .await
    }

    async fn invalidate(&self, scopes: &[&str]) {
        self.inner.cache.invalidate(scopes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_url_shape() {
        let a = Authority::new("http://127.0.0.1:9000/", "contoso.onmicrosoft.com").unwrap();
        assert_eq!(
            a.token_url.as_str(),
            "http://127.0.0.1:9000/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert!(Authority::new("http://x", "a/b").is_err());
        assert!(Authority::new("not a url", "t").is_err());
    }
}
