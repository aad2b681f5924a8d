//! The request pipeline every client call goes through, in a fixed order:
//! request ids → auth (one forced refresh on 401) → retry loop (classification, `Retry-After`,
//! attempt and time budget, jitter) → budget pacer (requests and execution time per sliding
//! window, by priority) → shared throttle → tracing span and metrics → transport.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use secrecy::ExposeSecret;
use tokio::time::Instant;
use tracing::Instrument;

use crate::credential::{CredentialError, CredentialErrorKind, TokenCredential};
use crate::error::{DecodeError, Error, ServiceError, decode_json};
use crate::pacer::{BudgetPacer, Priority};
use crate::retry::{RetryPolicy, is_idempotent_method, parse_retry_after, status_is_retryable};
use crate::throttle::AdaptiveLimiter;
use crate::transport::{HttpTransport, TransportError};

/// Default wait after a 429 that carried no `Retry-After`.
const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(1);

/// Per-call options: idempotency, a retry override, the ids to send and the pacing priority.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    priority: Priority,
    idempotent: Option<bool>,
    retry: Option<RetryPolicy>,
    request_id: Option<String>,
    correlation_id: Option<String>,
}

impl SendOptions {
    /// Declares whether the request is safe to repeat (default: by HTTP method). A PATCH under
    /// `If-Match` is; a POST that creates something is not.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
        self
    }

    /// The share of the pacer's budget this call may use (default [`Priority::Live`]); without a
    /// [pacer](PipelineBuilder::pacer) it changes nothing.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Overrides the pipeline's retry policy for this call.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Uses this request id instead of a fresh one (for example to tie a retry by the caller to
    /// the original attempt).
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Uses this correlation id (ties several calls of one operation together).
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }
}

/// A configured request pipeline. Cheap to clone; clones share the transport, credential cache
/// and throttle.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    transport: Arc<dyn HttpTransport>,
    credential: Option<(Arc<dyn TokenCredential>, Vec<String>)>,
    retry: RetryPolicy,
    limiter: Option<AdaptiveLimiter>,
    pacer: Option<BudgetPacer>,
    request_id_header: Option<HeaderName>,
    correlation_id_header: Option<HeaderName>,
    default_headers: HeaderMap,
    dop_hint_header: Option<HeaderName>,
    attempt_timeout: Option<Duration>,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("service", &self.inner.service)
            .field("transport", &self.inner.transport)
            .field(
                "credential",
                &self.inner.credential.as_ref().map(|(c, s)| (c, s)),
            )
            .field("retry", &self.inner.retry)
            .field("limiter", &self.inner.limiter)
            .field("pacer", &self.inner.pacer)
            .finish_non_exhaustive()
    }
}

/// Builder for [`Pipeline`].
pub struct PipelineBuilder {
    inner: Inner,
}

impl fmt::Debug for PipelineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

impl PipelineBuilder {
    /// Authenticates every request with a bearer token for `scopes` from `credential`.
    pub fn credential(
        mut self,
        credential: Arc<dyn TokenCredential>,
        scopes: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.inner.credential = Some((credential, scopes.into_iter().map(Into::into).collect()));
        self
    }

    /// The retry policy (default [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.inner.retry = retry;
        self
    }

    /// Shares `limiter` among all calls of this pipeline (and of any other pipeline given the same
    /// limiter).
    pub fn limiter(mut self, limiter: AdaptiveLimiter) -> Self {
        self.inner.limiter = Some(limiter);
        self
    }

    /// Paces every call under `pacer`'s budgets (shared with any other pipeline given the same
    /// pacer): a call waits for its priority's share of the budget before it is sent, and a 429
    /// holds every call until its `Retry-After` has passed.
    pub fn pacer(mut self, pacer: BudgetPacer) -> Self {
        self.inner.pacer = Some(pacer);
        self
    }

    /// The header that carries a per-call request id, generated once and repeated on every retry
    /// (`client-request-id`, `MS-RequestId`, …).
    pub fn request_id_header(mut self, name: HeaderName) -> Self {
        self.inner.request_id_header = Some(name);
        self
    }

    /// The header that carries a correlation id (`MS-CorrelationId`).
    pub fn correlation_id_header(mut self, name: HeaderName) -> Self {
        self.inner.correlation_id_header = Some(name);
        self
    }

    /// A header sent on every request unless the request sets it.
    pub fn default_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.inner.default_headers.insert(name, value);
        self
    }

    /// A response header holding the service's recommended degree of parallelism; its value
    /// becomes the limiter's ceiling.
    pub fn dop_hint_header(mut self, name: HeaderName) -> Self {
        self.inner.dop_hint_header = Some(name);
        self
    }

    /// Time allowed for one attempt, on top of the transport's own timeout.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.inner.attempt_timeout = Some(timeout);
        self
    }

    /// Builds the pipeline.
    pub fn build(self) -> Pipeline {
        Pipeline {
            inner: Arc::new(self.inner),
        }
    }
}

/// The request parts kept so each attempt can be rebuilt from the same bytes.
struct Parts {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Parts {
    fn to_request(&self) -> Request<Bytes> {
        let mut req = Request::new(self.body.clone());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

impl Pipeline {
    /// Starts a pipeline for `service` (used in spans and metrics labels) over `transport`.
    pub fn builder(
        service: impl Into<String>,
        transport: Arc<dyn HttpTransport>,
    ) -> PipelineBuilder {
        PipelineBuilder {
            inner: Inner {
                service: service.into(),
                transport,
                credential: None,
                retry: RetryPolicy::default(),
                limiter: None,
                pacer: None,
                request_id_header: None,
                correlation_id_header: None,
                default_headers: HeaderMap::new(),
                dop_hint_header: None,
                attempt_timeout: None,
            },
        }
    }

    /// The service name given at build time.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The shared limiter, if any.
    pub fn limiter(&self) -> Option<&AdaptiveLimiter> {
        self.inner.limiter.as_ref()
    }

    /// The shared pacer, if any.
    pub fn pacer(&self) -> Option<&BudgetPacer> {
        self.inner.pacer.as_ref()
    }

    /// Sends `request` and returns the response if its status is a success (2xx); any other
    /// final status becomes [`Error::Service`] with the parsed error body.
    pub async fn send(
        &self,
        request: Request<Bytes>,
        options: &SendOptions,
    ) -> Result<Response<Bytes>, Error> {
        let (resp, request_id) = self.execute(request, options).await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            let (parts, body) = resp.into_parts();
            let mut err = ServiceError::from_response(parts.status, &parts.headers, &body);
            if let Some(id) = request_id {
                err = err.with_client_request_id(id);
            }
            Err(Error::Service(err))
        }
    }

    /// Sends `request` and decodes a successful JSON response into `T` (`what` names it in
    /// decode errors).
    pub async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        request: Request<Bytes>,
        options: &SendOptions,
        what: &str,
    ) -> Result<T, Error> {
        let resp = self.send(request, options).await?;
        decode_json(resp.body(), what).map_err(Error::Decode)
    }

    /// Sends `request` and returns the final response whatever its status (after retries).
    pub async fn send_raw(
        &self,
        request: Request<Bytes>,
        options: &SendOptions,
    ) -> Result<Response<Bytes>, Error> {
        self.execute(request, options).await.map(|(r, _)| r)
    }

    async fn execute(
        &self,
        request: Request<Bytes>,
        options: &SendOptions,
    ) -> Result<(Response<Bytes>, Option<String>), Error> {
        let inner = &self.inner;
        let (head, body) = request.into_parts();
        let mut parts = Parts {
            method: head.method,
            uri: head.uri,
            version: head.version,
            headers: head.headers,
            body,
        };
        for (name, value) in &inner.default_headers {
            if !parts.headers.contains_key(name) {
                parts.headers.insert(name.clone(), value.clone());
            }
        }
        let request_id = match &inner.request_id_header {
            Some(name) => Some(ensure_id(
                &mut parts.headers,
                name,
                options.request_id.as_deref(),
            )),
            None => None,
        };
        if let Some(name) = &inner.correlation_id_header {
            ensure_id(&mut parts.headers, name, options.correlation_id.as_deref());
        }

        let idempotent = options
            .idempotent
            .unwrap_or_else(|| is_idempotent_method(&parts.method));
        let policy = options.retry.as_ref().unwrap_or(&inner.retry);
        let mut backoff = policy.backoff();
        let started = Instant::now();
        let mut attempt: u32 = 0;
        let mut reauthenticated = false;

        let span = tracing::info_span!(
            "http.call",
            service = %inner.service,
            http.method = %parts.method,
            url.path = %parts.uri.path(),
            request_id = request_id.as_deref().unwrap_or(""),
            attempts = tracing::field::Empty,
            http.status = tracing::field::Empty,
        );

        async move {
            loop {
                attempt += 1;
                tracing::Span::current().record("attempts", attempt);
                let mut req = parts.to_request();
                if let Some((credential, scopes)) = &inner.credential {
                    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
                    let token = credential.get_token(&scopes).await?;
                    let mut value =
                        HeaderValue::from_str(&format!("Bearer {}", token.token.expose_secret()))
                            .map_err(|_| {
                                CredentialError::new(
                                    CredentialErrorKind::InvalidResponse,
                                    "token has characters not allowed in a header",
                                )
                            })?;
                    value.set_sensitive(true);
                    req.headers_mut().insert(AUTHORIZATION, value);
                }

                // Budget first, then a concurrency slot, then the send instant: a request waiting
                // for budget holds no slot, and the instant counted is the real one.
                let reservation = match &inner.pacer {
                    Some(p) => Some(p.reserve(options.priority).await),
                    None => None,
                };
                let permit = match &inner.limiter {
                    Some(l) => Some(l.acquire().await),
                    None => None,
                };
                let flight = match reservation {
                    Some(r) => Some(r.start().await),
                    None => None,
                };
                let result = match inner.attempt_timeout {
                    Some(limit) => match tokio::time::timeout(limit, inner.transport.send(req)).await {
                        Ok(r) => r,
                        Err(_) => Err(TransportError::timeout(format!(
                            "no response within {limit:?}"
                        ))),
                    },
                    None => inner.transport.send(req).await,
                };
                // The round trip is charged to the execution budget.
                drop(flight);
                drop(permit);

                let within_budget = |delay: Duration| started.elapsed() + delay <= policy.max_elapsed();
                match result {
                    Ok(resp) => {
                        let status = resp.status();
                        tracing::Span::current().record("http.status", status.as_u16());
                        metrics::counter!(
                            "cosell_http_requests_total",
                            "service" => inner.service.clone(),
                            "status" => status.as_u16().to_string()
                        )
                        .increment(1);
                        self.apply_dop_hint(resp.headers());

                        if status == StatusCode::UNAUTHORIZED
                            && !reauthenticated
                            && let Some((credential, scopes)) = &inner.credential
                        {
                            // One forced refresh: the cached token may have been revoked early.
                            reauthenticated = true;
                            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
                            credential.invalidate(&scopes).await;
                            attempt -= 1;
                            continue;
                        }

                        let retry_after = parse_retry_after(resp.headers());
                        if status == StatusCode::TOO_MANY_REQUESTS {
                            metrics::counter!("cosell_http_throttled_total", "service" => inner.service.clone())
                                .increment(1);
                            // An operator must see why a run went quiet (a backfill behind a
                            // long Retry-After), not only a counter.
                            tracing::warn!(
                                service = %inner.service,
                                wait = ?retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE),
                                "throttled by the service; pausing requests"
                            );
                            let pause = retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE);
                            if let Some(l) = &inner.limiter {
                                l.on_throttled(pause);
                            }
                            if let Some(p) = &inner.pacer {
                                p.on_throttled(pause);
                            }
                        } else if status.is_success()
                            && let Some(l) = &inner.limiter
                        {
                            l.on_success();
                        }

                        if status_is_retryable(status, idempotent) && attempt < policy.max_attempts() {
                            let delay = match retry_after {
                                Some(d) if d > policy.max_retry_after() => None,
                                Some(d) => Some(d),
                                None => backoff.next(),
                            };
                            if let Some(delay) = delay.filter(|d| within_budget(*d)) {
                                tracing::debug!(status = status.as_u16(), ?delay, attempt, "retrying");
                                metrics::counter!("cosell_http_retries_total", "service" => inner.service.clone())
                                    .increment(1);
                                // With a limiter the pause is already shared; sleeping here too
                                // keeps the Retry-After promise when no limiter is configured.
                                tokio::time::sleep(delay).await;
                                continue;
                            }
                        }
                        return Ok((resp, request_id.clone()));
                    }
                    Err(err) => {
                        metrics::counter!(
                            "cosell_http_requests_total",
                            "service" => inner.service.clone(),
                            "status" => "transport_error"
                        )
                        .increment(1);
                        let safe = idempotent || !err.may_have_been_sent();
                        if err.is_retryable() && safe && attempt < policy.max_attempts()
                            && let Some(delay) = backoff.next().filter(|d| within_budget(*d))
                        {
                            tracing::debug!(error = %err, ?delay, attempt, "retrying after transport error");
                            metrics::counter!("cosell_http_retries_total", "service" => inner.service.clone())
                                .increment(1);
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        return Err(Error::Transport(err));
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    fn apply_dop_hint(&self, headers: &HeaderMap) {
        if let (Some(name), Some(limiter)) = (&self.inner.dop_hint_header, &self.inner.limiter)
            && let Some(hint) = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<usize>().ok())
            && hint > 0
        {
            limiter.set_max(hint);
        }
    }
}

fn ensure_id(headers: &mut HeaderMap, name: &HeaderName, given: Option<&str>) -> String {
    if let Some(existing) = headers.get(name).and_then(|v| v.to_str().ok()) {
        return existing.to_string();
    }
    let id = given
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(name.clone(), value);
    }
    id
}

/// Builds a JSON request body, naming the type in the error if it cannot be serialized.
pub fn json_body<T: serde::Serialize + ?Sized>(
    value: &T,
    what: &str,
) -> Result<Bytes, DecodeError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| DecodeError::new(what, ".", format!("cannot serialize: {e}")))
}
