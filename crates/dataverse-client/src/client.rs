//! The client: configuration, the shared pipeline, request plumbing, rate-limit status and the
//! raw escape hatch.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cosell_http::http::header::{ACCEPT, CONTENT_TYPE, HeaderName, HeaderValue};
use cosell_http::http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use cosell_http::{
    AdaptiveLimiter, BudgetPacer, HttpTransport, LimiterSnapshot, NextLink, PacerConfig,
    PacerSnapshot, Pipeline, Priority, RetryPolicy, SendOptions, ServiceError, TokenCredential,
};
use serde::Serialize;
use url::Url;

use crate::error::{ConfigError, Error, InvalidRequest};
use crate::model::{Key, is_identifier};

/// The default Web API path under the environment URL.
pub const DEFAULT_API_PATH: &str = "api/data/v9.2/";
/// The default ceiling for concurrent requests (Dataverse's per-user concurrency limit).
pub const DEFAULT_MAX_CONCURRENCY: usize = 52;

pub(crate) const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
pub(crate) const DOP_HINT: HeaderName = HeaderName::from_static("x-ms-dop-hint");
pub(crate) const BURST_REMAINING: HeaderName =
    HeaderName::from_static("x-ms-ratelimit-burst-remaining-xrm-requests");
pub(crate) const TIME_REMAINING: HeaderName =
    HeaderName::from_static("x-ms-ratelimit-time-remaining-xrm-requests");
pub(crate) const ODATA_VERSION: HeaderName = HeaderName::from_static("odata-version");
pub(crate) const ODATA_MAX_VERSION: HeaderName = HeaderName::from_static("odata-maxversion");
pub(crate) const IF_NONE_MATCH: HeaderName = HeaderName::from_static("if-none-match");
pub(crate) const IF_MATCH: HeaderName = HeaderName::from_static("if-match");
pub(crate) const PREFER: HeaderName = HeaderName::from_static("prefer");
pub(crate) const ODATA_ENTITY_ID: HeaderName = HeaderName::from_static("odata-entityid");
pub(crate) const JSON_UTF8: HeaderValue =
    HeaderValue::from_static("application/json; charset=utf-8");

/// A typed client for the Dataverse Web API of one environment.
///
/// Cheap to clone (an `Arc` inside); clones share the transport, credential cache, the
/// adaptive concurrency limiter and the budget pacer, so a 429 seen by one task slows all of
/// them.
///
/// Requests are paced under Dataverse's service-protection budgets (6,000 requests and 1,200 s
/// of execution time per sliding 300 s; see [`DataverseClientBuilder::pacing`]). A client sends
/// [`Priority::Live`] traffic; [`background`](Self::background) gives a handle for bulk work
/// (a backfill) that may use only the background share of the budget, so live requests keep
/// their headroom.
///
/// ```no_run
/// # async fn demo() -> Result<(), dataverse_client::Error> {
/// use std::sync::Arc;
/// use dataverse_client::{DataverseClient, Key};
/// let client = DataverseClient::builder()
///     .environment_url("https://contoso.crm.dynamics.com/".parse().unwrap())
///     .credential(Arc::new(cosell_http::StaticTokenCredential::new("token")))
///     .build()?;
/// let id = uuid::Uuid::parse_str("7eb682f1-ca75-e511-80d4-00155d2a68d1").unwrap();
/// let row = client
///     .retrieve::<serde_json::Value>("accounts", &Key::id(id), &Default::default())
///     .await?;
/// println!("{:?} {}", row.etag, row.value);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DataverseClient {
    pub(crate) inner: Arc<Inner>,
    priority: Priority,
}

pub(crate) struct Inner {
    pub(crate) environment_url: Url,
    pub(crate) api_url: Url,
    pub(crate) pipeline: Pipeline,
    pub(crate) limiter: AdaptiveLimiter,
    pub(crate) pacer: Option<BudgetPacer>,
    pub(crate) pacing_hints: bool,
    pub(crate) last: Mutex<LastHeaders>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct LastHeaders {
    burst_remaining: Option<String>,
    time_remaining: Option<String>,
    dop_hint: Option<String>,
}

impl fmt::Debug for DataverseClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataverseClient")
            .field("api_url", &self.inner.api_url.as_str())
            .field("priority", &self.priority)
            .field("pipeline", &self.inner.pipeline)
            .finish()
    }
}

/// Builder for [`DataverseClient`].
#[derive(Default)]
pub struct DataverseClientBuilder {
    environment_url: Option<Url>,
    api_path: Option<String>,
    credential: Option<Arc<dyn TokenCredential>>,
    scope: Option<String>,
    transport: Option<Arc<dyn HttpTransport>>,
    retry: Option<RetryPolicy>,
    max_concurrency: Option<usize>,
    limiter: Option<AdaptiveLimiter>,
    pacing: Pacing,
    pacing_hints: bool,
    attempt_timeout: Option<Duration>,
}

/// How a built client paces its requests.
#[derive(Debug, Default)]
enum Pacing {
    /// A new pacer with Dataverse's documented budgets.
    #[default]
    Documented,
    /// A new pacer with these budgets.
    Config(PacerConfig),
    /// A pacer shared with other clients.
    Shared(BudgetPacer),
    /// No pacing (only the concurrency limiter and `Retry-After`).
    Off,
}

impl fmt::Debug for DataverseClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataverseClientBuilder")
            .field(
                "environment_url",
                &self.environment_url.as_ref().map(Url::as_str),
            )
            .field("api_path", &self.api_path)
            .field("credential", &self.credential)
            .field("retry", &self.retry)
            .field("max_concurrency", &self.max_concurrency)
            .field("pacing", &self.pacing)
            .finish_non_exhaustive()
    }
}

impl DataverseClientBuilder {
    /// The environment URL, such as `https://contoso.crm.dynamics.com/` (required).
    pub fn environment_url(mut self, url: Url) -> Self {
        self.environment_url = Some(url);
        self
    }

    /// The Web API path under the environment URL (default [`DEFAULT_API_PATH`],
    /// `api/data/v9.2/`).
    pub fn api_path(mut self, path: impl Into<String>) -> Self {
        self.api_path = Some(path.into());
        self
    }

    /// The credential (required). Tokens are requested for `{environment_url}/.default` unless
    /// [`scope`](Self::scope) says otherwise.
    pub fn credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credential = Some(credential);
        self
    }

    /// Overrides the token scope.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The HTTP transport (default [`cosell_http::default_transport`]).
    pub fn transport(mut self, transport: Arc<dyn HttpTransport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The retry policy (default [`RetryPolicy::default`]); `Retry-After` always wins over the
    /// computed backoff.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// The ceiling for concurrent requests (default [`DEFAULT_MAX_CONCURRENCY`], 52). The server's
    /// `x-ms-dop-hint` lowers or raises it at run time.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n);
        self
    }

    /// Shares an existing limiter (for several clients of one environment and user). Overrides
    /// [`max_concurrency`](Self::max_concurrency).
    pub fn limiter(mut self, limiter: AdaptiveLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Time allowed for one attempt, on top of the transport's own timeout.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The service-protection budgets to pace under: requests and execution time per sliding
    /// window, the target fraction live traffic may fill and the background share. By default
    /// the client paces under [`PacerConfig::default`], Dataverse's documented per-user limits
    /// (6,000 requests and 1,200 s per 300 s, target 95 %, background 90 %); set this when an
    /// environment has other limits, or to scale the windows down for tests and benches.
    /// [`build`](Self::build) refuses settings that cannot work, naming the setting.
    ///
    /// The pacer counts the requests it sends and charges each its measured round trip as
    /// execution time (an upper bound of the server's share), so it does not depend on the
    /// `x-ms-ratelimit-*` headers Microsoft documents as debugging aids (see
    /// [`pacing_hints`](Self::pacing_hints)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use dataverse_client::{DataverseClient, cosell_http::PacerConfig};
    /// let client = DataverseClient::builder()
    ///     .environment_url("https://contoso.crm.dynamics.com/".parse().unwrap())
    ///     .credential(std::sync::Arc::new(cosell_http::StaticTokenCredential::new("token")))
    ///     .pacing(PacerConfig {
    ///         max_requests: 200,
    ///         request_window: Duration::from_secs(2),
    ///         background_share: 0.7,
    ///         ..PacerConfig::default()
    ///     })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(client.pacing_snapshot().unwrap().max_requests, 200);
    /// ```
    pub fn pacing(mut self, config: PacerConfig) -> Self {
        self.pacing = Pacing::Config(config);
        self
    }

    /// Shares an existing pacer: every client of one environment and user should pace under one
    /// budget. Overrides [`pacing`](Self::pacing).
    pub fn pacer(mut self, pacer: BudgetPacer) -> Self {
        self.pacing = Pacing::Shared(pacer);
        self
    }

    /// Feeds the `x-ms-ratelimit-burst-remaining-xrm-requests` and `…-time-remaining-…` headers
    /// to the pacer ([`BudgetPacer::observe_remaining`](cosell_http::BudgetPacer::observe_remaining)):
    /// they tighten it when they report more use than it counted (another process of the same
    /// user), and let it charge less than its measured round trips when the server charged
    /// less (never below half of them), so a backfill can fill the execution budget instead of
    /// the round trips' upper bound. Off by default: Microsoft says not to depend on them, they
    /// reset when the balancer picks another web server, and they are relative to the server's
    /// limits, so they mislead a pacer configured with other budgets. Turn it on only when the
    /// [pacing](Self::pacing) budgets are the environment's own.
    pub fn pacing_hints(mut self, on: bool) -> Self {
        self.pacing_hints = on;
        self
    }

    /// Sends without budget pacing: requests go as fast as the concurrency limiter allows and
    /// only a 429's `Retry-After` holds them.
    pub fn no_pacing(mut self) -> Self {
        self.pacing = Pacing::Off;
        self
    }

    /// Builds the client.
    ///
    /// Fails when the environment URL or credential is missing, the URL is not an absolute
    /// `http(s)` URL without query, a [pacing](Self::pacing) setting cannot work, or the default
    /// transport cannot be created.
    pub fn build(self) -> Result<DataverseClient, Error> {
        let mut environment_url = self
            .environment_url
            .ok_or_else(|| ConfigError::new("an environment URL is required"))?;
        let credential = self
            .credential
            .ok_or_else(|| ConfigError::new("a credential is required"))?;
        if !matches!(environment_url.scheme(), "http" | "https")
            || environment_url.cannot_be_a_base()
            || environment_url.host_str().is_none()
        {
            return Err(ConfigError::new(format!(
                "environment URL {environment_url} must be an absolute http(s) URL"
            ))
            .into());
        }
        if environment_url.query().is_some() || environment_url.fragment().is_some() {
            return Err(ConfigError::new(format!(
                "environment URL {environment_url} must not carry a query or fragment"
            ))
            .into());
        }
        if !environment_url.path().ends_with('/') {
            let path = format!("{}/", environment_url.path());
            environment_url.set_path(&path);
        }
        let api_path = self
            .api_path
            .unwrap_or_else(|| DEFAULT_API_PATH.to_string());
        let api_path = api_path.trim_start_matches('/');
        let api_path = if api_path.ends_with('/') || api_path.is_empty() {
            api_path.to_string()
        } else {
            format!("{api_path}/")
        };
        let api_url = environment_url
            .join(&api_path)
            .map_err(|e| ConfigError::new(format!("API path {api_path}: {e}")))?;
        if api_url.query().is_some() || api_url.origin() != environment_url.origin() {
            return Err(ConfigError::new(format!(
                "API path {api_path} must be a relative path without a query"
            ))
            .into());
        }
        let scope = self.scope.unwrap_or_else(|| {
            format!(
                "{}/.default",
                environment_url.as_str().trim_end_matches('/')
            )
        });
        let pacer = match self.pacing {
            Pacing::Documented => Some(BudgetPacer::default()),
            Pacing::Config(config) => Some(
                BudgetPacer::new(config).map_err(|e| ConfigError::new(format!("pacing: {e}")))?,
            ),
            Pacing::Shared(pacer) => Some(pacer),
            Pacing::Off => None,
        };
        let transport = match self.transport {
            Some(t) => t,
            None => cosell_http::default_transport().map_err(Error::Transport)?,
        };
        let limiter = self.limiter.unwrap_or_else(|| {
            AdaptiveLimiter::new(self.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY))
        });
        let mut builder = Pipeline::builder("dataverse", transport)
            .credential(credential, [scope])
            .retry(self.retry.unwrap_or_default())
            .limiter(limiter.clone())
            .dop_hint_header(DOP_HINT)
            .request_id_header(CLIENT_REQUEST_ID)
            .default_header(ACCEPT, HeaderValue::from_static("application/json"))
            .default_header(ODATA_MAX_VERSION, HeaderValue::from_static("4.0"))
            .default_header(ODATA_VERSION, HeaderValue::from_static("4.0"))
            .default_header(IF_NONE_MATCH, HeaderValue::from_static("null"));
        if let Some(t) = self.attempt_timeout {
            builder = builder.attempt_timeout(t);
        }
        if let Some(p) = &pacer {
            builder = builder.pacer(p.clone());
        }
        Ok(DataverseClient {
            inner: Arc::new(Inner {
                environment_url,
                api_url,
                pipeline: builder.build(),
                limiter,
                pacer,
                pacing_hints: self.pacing_hints,
                last: Mutex::new(LastHeaders::default()),
            }),
            priority: Priority::Live,
        })
    }
}

/// The service protection state seen on the most recent response.
///
/// The `x-ms-ratelimit-*` values are for diagnostics only (Microsoft: "Don't depend on these
/// values"), and they reset when the load balancer picks another server.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitStatus {
    /// `x-ms-ratelimit-burst-remaining-xrm-requests`: requests left in the window on this
    /// connection, as a number.
    pub burst_remaining: Option<u64>,
    /// `x-ms-ratelimit-time-remaining-xrm-requests` as sent (combined execution time left).
    pub time_remaining: Option<String>,
    /// `x-ms-dop-hint` as last seen: the recommended degree of parallelism.
    pub dop_hint: Option<usize>,
    /// The shared limiter (its `max` follows the DOP hint).
    pub limiter: LimiterSnapshot,
    /// The budget pacer (`None` when built with
    /// [`no_pacing`](DataverseClientBuilder::no_pacing)).
    pub pacer: Option<PacerSnapshot>,
}

/// A response from [`DataverseClient::send_raw`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status (always a success; errors come back as [`Error`]).
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl RawResponse {
    /// Decodes the body as JSON into `T`, naming the JSON path of the first problem.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        cosell_http::decode_json(&self.body, "response").map_err(Error::Decode)
    }
}

/// A request for the escape hatch, made with [`DataverseClient::raw`].
#[derive(Debug)]
pub struct RawRequest<'a> {
    client: &'a DataverseClient,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Option<Result<Bytes, Error>>,
    idempotent: Option<bool>,
}

impl RawRequest<'_> {
    /// Adds a header (for example `Prefer`, `MSCRM.SuppressDuplicateDetection`).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                self.headers.append(n, v);
            }
            _ => {
                self.body = Some(Err(Error::invalid(format!(
                    "header `{name}` has characters not allowed in a header"
                ))));
            }
        }
        self
    }

    /// A JSON body.
    pub fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Self {
        if !matches!(self.body, Some(Err(_))) {
            self.body = Some(cosell_http::json_body(body, "request body").map_err(Error::Decode));
        }
        self
    }

    /// Declares whether repeating the request is safe (default: by method).
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
        self
    }

    /// Sends the request. A non-success status comes back as [`Error`].
    pub async fn send(self) -> Result<RawResponse, Error> {
        let body = self.body.transpose()?;
        let url = self.client.resolve_relative(&self.path)?;
        let resp = self
            .client
            .execute(self.method, &url, self.headers, body, self.idempotent)
            .await?;
        let (parts, body) = resp.into_parts();
        Ok(RawResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// Builds requests to any path under the Web API: actions, functions and tables the typed API
/// does not cover.
#[derive(Debug, Clone, Copy)]
pub struct Raw<'a> {
    client: &'a DataverseClient,
}

impl<'a> Raw<'a> {
    /// A request with `method` to `relative_path` (relative to the API URL, may carry a query).
    pub fn request(self, method: Method, relative_path: impl Into<String>) -> RawRequest<'a> {
        RawRequest {
            client: self.client,
            method,
            path: relative_path.into(),
            headers: HeaderMap::new(),
            body: None,
            idempotent: None,
        }
    }

    /// `GET relative_path`.
    pub fn get(self, relative_path: impl Into<String>) -> RawRequest<'a> {
        self.request(Method::GET, relative_path)
    }

    /// `POST relative_path`.
    pub fn post(self, relative_path: impl Into<String>) -> RawRequest<'a> {
        self.request(Method::POST, relative_path)
    }

    /// `PATCH relative_path`.
    pub fn patch(self, relative_path: impl Into<String>) -> RawRequest<'a> {
        self.request(Method::PATCH, relative_path)
    }

    /// `DELETE relative_path`.
    pub fn delete(self, relative_path: impl Into<String>) -> RawRequest<'a> {
        self.request(Method::DELETE, relative_path)
    }
}

impl DataverseClient {
    /// Starts a builder.
    pub fn builder() -> DataverseClientBuilder {
        DataverseClientBuilder::default()
    }

    /// The environment URL.
    pub fn environment_url(&self) -> &Url {
        &self.inner.environment_url
    }

    /// The Web API base URL (`https://contoso.crm.dynamics.com/api/data/v9.2/`).
    pub fn api_url(&self) -> &Url {
        &self.inner.api_url
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &AdaptiveLimiter {
        &self.inner.limiter
    }

    /// The service protection state seen on the most recent response.
    pub fn rate_limit_status(&self) -> RateLimitStatus {
        let last = self
            .inner
            .last
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        RateLimitStatus {
            burst_remaining: last.burst_remaining.as_deref().and_then(parse_count),
            time_remaining: last.time_remaining,
            dop_hint: last.dop_hint.as_deref().and_then(|v| v.trim().parse().ok()),
            limiter: self.inner.limiter.snapshot(),
            pacer: self.pacing_snapshot(),
        }
    }

    /// The shared budget pacer (`None` when built with
    /// [`no_pacing`](DataverseClientBuilder::no_pacing)).
    pub fn pacer(&self) -> Option<&BudgetPacer> {
        self.inner.pacer.as_ref()
    }

    /// The pacer's state, for status pages and benches: requests and execution time counted in
    /// the window, the delay a live or background request would wait now, the `Retry-After`
    /// left, and the 429s seen.
    pub fn pacing_snapshot(&self) -> Option<PacerSnapshot> {
        self.inner.pacer.as_ref().map(BudgetPacer::snapshot)
    }

    /// A handle on the same client (transport, credential, limiter, pacer) whose requests are
    /// [`Priority::Background`]: they may fill only the pacer's background share of the budget,
    /// and wait while a live request waits. Cheap (an `Arc` clone); give it to a backfill or a
    /// first reconcile and keep `self` for webhooks and CRM edits.
    ///
    /// ```
    /// use dataverse_client::{DataverseClient, cosell_http::Priority};
    /// let live = DataverseClient::builder()
    ///     .environment_url("https://contoso.crm.dynamics.com/".parse().unwrap())
    ///     .credential(std::sync::Arc::new(cosell_http::StaticTokenCredential::new("token")))
    ///     .build()
    ///     .unwrap();
    /// let backfill = live.background();
    /// assert_eq!(backfill.priority(), Priority::Background);
    /// assert_eq!(live.priority(), Priority::Live);
    /// // Both pace under one budget.
    /// assert!(std::ptr::eq(live.pacer().unwrap(), backfill.pacer().unwrap()));
    /// ```
    pub fn background(&self) -> DataverseClient {
        self.with_priority(Priority::Background)
    }

    /// A handle on the same client whose requests have `priority`.
    pub fn with_priority(&self, priority: Priority) -> DataverseClient {
        DataverseClient {
            inner: self.inner.clone(),
            priority,
        }
    }

    /// The priority of this handle's requests ([`Priority::Live`] unless made by
    /// [`background`](Self::background)).
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The escape hatch: requests to any path under the Web API.
    ///
    /// ```no_run
    /// # async fn demo(client: dataverse_client::DataverseClient) -> Result<(), dataverse_client::Error> {
    /// let who: serde_json::Value = client.raw().get("WhoAmI").send().await?.json()?;
    /// println!("{}", who["UserId"]);
    /// # Ok(()) }
    /// ```
    pub fn raw(&self) -> Raw<'_> {
        Raw { client: self }
    }

    /// Sends `method` to `relative_path` (under the API URL) with an optional JSON body.
    pub async fn send_raw(
        &self,
        method: Method,
        relative_path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<RawResponse, Error> {
        let mut req = self.raw().request(method, relative_path);
        if let Some(b) = body {
            req = req.json(b);
        }
        req.send().await
    }

    /// Resolves a path relative to the API URL, refusing anything that would leave it.
    pub(crate) fn resolve_relative(&self, path: &str) -> Result<Url, Error> {
        if path.starts_with('/') || path.contains("://") || path.starts_with("//") {
            return Err(Error::invalid(format!(
                "`{path}` must be relative to the Web API URL"
            )));
        }
        let url = self
            .inner
            .api_url
            .join(path)
            .map_err(|e| Error::invalid(format!("`{path}`: {e}")))?;
        if url.origin() != self.inner.api_url.origin()
            || !url.path().starts_with(self.inner.api_url.path())
        {
            return Err(Error::invalid(format!("`{path}` leaves the Web API URL")));
        }
        Ok(url)
    }

    /// `{api}/{segments...}` with each segment percent-encoded as a path segment.
    pub(crate) fn url_for(&self, segments: &[&str], query: Option<&str>) -> Result<Url, Error> {
        let mut url = self.inner.api_url.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| Error::invalid("the API URL cannot take path segments"))?;
            path.pop_if_empty();
            for s in segments {
                path.push(s);
            }
        }
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            url.set_query(Some(q));
        }
        Ok(url)
    }

    /// The URL of an entity set.
    pub(crate) fn set_url(&self, entity_set: &str, query: Option<&str>) -> Result<Url, Error> {
        check_set(entity_set)?;
        self.url_for(&[entity_set], query)
    }

    /// The URL of one row: `{set}({key})`.
    pub(crate) fn row_url(
        &self,
        entity_set: &str,
        key: &Key,
        query: Option<&str>,
    ) -> Result<Url, Error> {
        check_set(entity_set)?;
        key.validate()?;
        self.url_for(&[&format!("{entity_set}({key})")], query)
    }

    /// A link the service sent (next/delta link), pinned to the configured scheme and host so the
    /// token never goes elsewhere.
    pub(crate) fn resolve_link(&self, link: &str) -> Result<Url, Error> {
        NextLink::new(link)
            .rebased_on(&self.inner.api_url)
            .map_err(|e| Error::decode("link", ".", format!("cannot follow `{link}`: {e}")))
    }

    /// Sends one request through the pipeline. Records rate-limit headers; a non-success status
    /// becomes an [`Error`] (412 → `PreconditionFailed`).
    pub(crate) async fn execute(
        &self,
        method: Method,
        url: &Url,
        mut headers: HeaderMap,
        body: Option<Bytes>,
        idempotent: Option<bool>,
    ) -> Result<Response<Bytes>, Error> {
        let (resp, request_id) = self
            .execute_any(method, url, &mut headers, body, idempotent)
            .await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            let (parts, body) = resp.into_parts();
            Err(Error::from_service(
                ServiceError::from_response(parts.status, &parts.headers, &body)
                    .with_client_request_id(request_id),
            ))
        }
    }

    /// Sends one request and returns the final response whatever its status.
    pub(crate) async fn execute_any(
        &self,
        method: Method,
        url: &Url,
        headers: &mut HeaderMap,
        body: Option<Bytes>,
        idempotent: Option<bool>,
    ) -> Result<(Response<Bytes>, String), Error> {
        let uri: Uri = url
            .as_str()
            .parse()
            .map_err(|e| Error::invalid(format!("URL {url}: {e}")))?;
        let has_body = body.is_some();
        let mut req = Request::new(body.unwrap_or_default());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        if has_body && !headers.contains_key(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, JSON_UTF8);
        }
        *req.headers_mut() = std::mem::take(headers);
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut options = SendOptions::default()
            .with_request_id(request_id.clone())
            .priority(self.priority);
        if let Some(i) = idempotent {
            options = options.idempotent(i);
        }
        let resp = self.inner.pipeline.send_raw(req, &options).await?;
        self.record(resp.headers());
        Ok((resp, request_id))
    }

    fn record(&self, headers: &HeaderMap) {
        let get = |name: &HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (burst, time, dop) = (get(&BURST_REMAINING), get(&TIME_REMAINING), get(&DOP_HINT));
        if let Some(pacer) = self
            .inner
            .pacer
            .as_ref()
            .filter(|_| self.inner.pacing_hints)
        {
            pacer.observe_remaining(
                burst.as_deref().and_then(parse_count),
                time.as_deref().and_then(parse_seconds),
            );
        }
        let mut last = self.inner.last.lock().unwrap_or_else(|p| p.into_inner());
        if burst.is_some() {
            last.burst_remaining = burst;
        }
        if time.is_some() {
            last.time_remaining = time;
        }
        if dop.is_some() {
            last.dop_hint = dop;
        }
    }
}

pub(crate) fn check_set(entity_set: &str) -> Result<(), InvalidRequest> {
    if is_identifier(entity_set) {
        Ok(())
    } else {
        Err(InvalidRequest::new(format!(
            "`{entity_set}` is not a valid entity set name"
        )))
    }
}

pub(crate) fn header_value(value: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(value)
        .map_err(|_| Error::invalid(format!("`{value}` is not a valid header value")))
}

/// A header count such as `5,999`.
fn parse_count(v: &str) -> Option<u64> {
    v.trim().replace(',', "").parse().ok()
}

/// `x-ms-ratelimit-time-remaining-xrm-requests`: seconds with thousands separators, such as
/// `1,199.98`.
fn parse_seconds(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().replace(',', "").parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}
