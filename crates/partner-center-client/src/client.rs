//! The client: configuration, the two pipelines (one per host), and request plumbing.

use std::fmt;
use std::sync::Arc;

use cosell_http::bytes::Bytes;
use cosell_http::http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use cosell_http::http::{Method, Request, Uri};
use cosell_http::url::Url;
use cosell_http::{HttpTransport, Pipeline, RetryPolicy, TokenCredential};

use crate::error::{ConfigError, Error, InvalidRequest};

/// Default Referrals API endpoint.
pub const DEFAULT_REFERRALS_ENDPOINT: &str = "https://api.partner.microsoft.com/v1.0/engagements/";
/// Default webhook registration API endpoint (a different host from the Referrals API).
pub const DEFAULT_WEBHOOKS_ENDPOINT: &str = "https://api.partnercenter.microsoft.com/webhooks/v1/";
/// Token scope for the Referrals API (App+User).
pub const REFERRALS_SCOPE: &str = "https://api.partner.microsoft.com/.default";
/// Token scope for the webhook registration API (App-only or App+User).
pub const WEBHOOKS_SCOPE: &str = "https://api.partnercenter.microsoft.com/.default";

const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");
const MS_REQUEST_ID: HeaderName = HeaderName::from_static("ms-requestid");
const MS_CORRELATION_ID: HeaderName = HeaderName::from_static("ms-correlationid");
/// The webhook API's contract version header (Partner Center REST headers page: required).
const MS_CONTRACT_VERSION: HeaderName = HeaderName::from_static("ms-contract-version");
/// The contract version the webhook API documents (`api-version: v1`).
const CONTRACT_VERSION_V1: HeaderValue = HeaderValue::from_static("v1");
pub(crate) const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A typed client for the Partner Center Referrals API and the webhook registration API.
///
/// Cheap to clone (an `Arc` inside); clones share the transport and the credential.
///
/// ```no_run
/// # async fn demo() -> Result<(), partner_center_client::Error> {
/// use std::sync::Arc;
/// use partner_center_client::PartnerCenterClient;
/// let client = PartnerCenterClient::builder()
///     .credential(Arc::new(cosell_http::StaticTokenCredential::new("token")))
///     .build()?;
/// let referral = client.get_referral("4111fffc-f9ee-4d53-bba6-569135228642").await?;
/// println!("{:?}", referral.status);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PartnerCenterClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) referrals_endpoint: Url,
    pub(crate) webhooks_endpoint: Url,
    pub(crate) referrals: Pipeline,
    pub(crate) webhooks: Pipeline,
}

impl fmt::Debug for PartnerCenterClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartnerCenterClient")
            .field(
                "referrals_endpoint",
                &self.inner.referrals_endpoint.as_str(),
            )
            .field("webhooks_endpoint", &self.inner.webhooks_endpoint.as_str())
            .field("referrals", &self.inner.referrals)
            .field("webhooks", &self.inner.webhooks)
            .finish()
    }
}

/// Builder for [`PartnerCenterClient`].
#[derive(Default)]
pub struct PartnerCenterClientBuilder {
    referrals_endpoint: Option<Url>,
    webhooks_endpoint: Option<Url>,
    credential: Option<Arc<dyn TokenCredential>>,
    webhooks_credential: Option<Arc<dyn TokenCredential>>,
    transport: Option<Arc<dyn HttpTransport>>,
    retry: Option<RetryPolicy>,
}

impl fmt::Debug for PartnerCenterClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartnerCenterClientBuilder")
            .field(
                "referrals_endpoint",
                &self.referrals_endpoint.as_ref().map(Url::as_str),
            )
            .field(
                "webhooks_endpoint",
                &self.webhooks_endpoint.as_ref().map(Url::as_str),
            )
            .field("credential", &self.credential)
            .field("webhooks_credential", &self.webhooks_credential)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl PartnerCenterClientBuilder {
    /// The Referrals API base, up to and including `/engagements/` (default
    /// [`DEFAULT_REFERRALS_ENDPOINT`]).
    pub fn referrals_endpoint(mut self, url: Url) -> Self {
        self.referrals_endpoint = Some(url);
        self
    }

    /// The webhook API base, up to and including `/webhooks/v1/` (default
    /// [`DEFAULT_WEBHOOKS_ENDPOINT`]).
    pub fn webhooks_endpoint(mut self, url: Url) -> Self {
        self.webhooks_endpoint = Some(url);
        self
    }

    /// The credential for both APIs (each asked for its own scope). The Referrals API needs an
    /// App+User token.
    pub fn credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credential = Some(credential);
        self
    }

    /// A different credential for the webhook API (which also accepts App-only tokens).
    pub fn webhooks_credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.webhooks_credential = Some(credential);
        self
    }

    /// The HTTP transport (default [`cosell_http::default_transport`]).
    pub fn transport(mut self, transport: Arc<dyn HttpTransport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The retry policy for both pipelines (default [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Builds the client.
    ///
    /// Fails when no credential is set, an endpoint is not an absolute `http(s)` URL, or the
    /// default transport cannot be created.
    pub fn build(self) -> Result<PartnerCenterClient, Error> {
        let credential = self
            .credential
            .ok_or_else(|| ConfigError::new("a credential is required"))?;
        let webhooks_credential = self
            .webhooks_credential
            .unwrap_or_else(|| credential.clone());
        let referrals_endpoint = endpoint(self.referrals_endpoint, DEFAULT_REFERRALS_ENDPOINT)?;
        let webhooks_endpoint = endpoint(self.webhooks_endpoint, DEFAULT_WEBHOOKS_ENDPOINT)?;
        let transport = match self.transport {
            Some(t) => t,
            None => cosell_http::default_transport().map_err(Error::Transport)?,
        };
        let retry = self.retry.unwrap_or_default();

        let referrals = Pipeline::builder("partner-center-referrals", transport.clone())
            .credential(credential, [REFERRALS_SCOPE])
            .retry(retry.clone())
            .request_id_header(CLIENT_REQUEST_ID)
            .correlation_id_header(MS_CORRELATION_ID)
            .default_header(ACCEPT, APPLICATION_JSON)
            .build();
        let webhooks = Pipeline::builder("partner-center-webhooks", transport)
            .credential(webhooks_credential, [WEBHOOKS_SCOPE])
            .retry(retry)
            .request_id_header(MS_REQUEST_ID)
            .correlation_id_header(MS_CORRELATION_ID)
            .default_header(ACCEPT, APPLICATION_JSON)
            .default_header(MS_CONTRACT_VERSION, CONTRACT_VERSION_V1)
            .build();
        Ok(PartnerCenterClient {
            inner: Arc::new(Inner {
                referrals_endpoint,
                webhooks_endpoint,
                referrals,
                webhooks,
            }),
        })
    }
}

fn endpoint(given: Option<Url>, default: &str) -> Result<Url, ConfigError> {
    let mut url = match given {
        Some(u) => u,
        None => Url::parse(default)
            .map_err(|e| ConfigError::new(format!("default endpoint {default}: {e}")))?,
    };
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(ConfigError::new(format!(
            "endpoint {url} must be an absolute http(s) URL"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(format!(
            "endpoint {url} must not carry a query or fragment"
        )));
    }
    // A base without a trailing slash would lose its last segment when joined.
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

impl PartnerCenterClient {
    /// Starts a builder.
    pub fn builder() -> PartnerCenterClientBuilder {
        PartnerCenterClientBuilder::default()
    }

    /// The configured Referrals API base.
    pub fn referrals_endpoint(&self) -> &Url {
        &self.inner.referrals_endpoint
    }

    /// The configured webhook API base.
    pub fn webhooks_endpoint(&self) -> &Url {
        &self.inner.webhooks_endpoint
    }

    /// `base` with `segments` appended, each percent-encoded as one path segment.
    pub(crate) fn url(base: &Url, segments: &[&str]) -> Result<Url, Error> {
        let mut url = base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| ConfigError::new(format!("endpoint {base} cannot be a base")))?;
            path.pop_if_empty();
            for s in segments {
                path.push(s);
            }
        }
        Ok(url)
    }
}

/// Builds a request. Every request carries `Content-Type: application/json`, GETs included: the
/// Partner Center Referrals connector marks the header required on every operation.
pub(crate) fn request(
    method: Method,
    url: &Url,
    body: Option<Bytes>,
) -> Result<Request<Bytes>, Error> {
    let uri: Uri = url
        .as_str()
        .parse()
        .map_err(|e| InvalidRequest::new(format!("URL {url} is not usable: {e}")))?;
    let mut req = Request::new(body.clone().unwrap_or_default());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    req.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON);
    Ok(req)
}

/// Refuses an empty or blank id before anything is sent.
pub(crate) fn non_empty<'a>(value: &'a str, what: &str) -> Result<&'a str, Error> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(InvalidRequest::new(format!("{what} is empty")).into());
    }
    Ok(trimmed)
}
