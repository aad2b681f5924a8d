//! The transport seam: one buffered HTTP exchange, in `http` crate types.
//!
//! Bodies are buffered [`Bytes`]: the payloads these APIs exchange are small and bounded, and a
//! buffered request can be re-sent by the retry loop without cloning streams.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

/// Sends one HTTP request and returns the whole response.
///
/// Implement this to swap the HTTP stack, inject faults or record traffic. The default is
/// [`ReqwestTransport`] (feature `reqwest`, on by default). A transport must not retry on its
/// own: retries belong to the [`Pipeline`](crate::Pipeline), which knows which requests are safe
/// to repeat.
#[async_trait]
pub trait HttpTransport: Send + Sync + fmt::Debug + 'static {
    /// Sends `request` and returns the response, whatever its status.
    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, TransportError>;

    /// Like [`send`](Self::send), but a body longer than `max_body` bytes fails with
    /// [`TransportErrorKind::BodyTooLarge`]. Streaming transports stop reading at the limit
    /// (a download a remote party chooses, such as a certificate URL, cannot make the caller
    /// buffer more); the default checks the buffered body.
    async fn send_limited(
        &self,
        request: http::Request<Bytes>,
        max_body: usize,
    ) -> Result<http::Response<Bytes>, TransportError> {
        let response = self.send(request).await?;
        if response.body().len() > max_body {
            return Err(TransportError::body_too_large(max_body));
        }
        Ok(response)
    }
}

#[async_trait]
impl<T: HttpTransport + ?Sized> HttpTransport for Arc<T> {
    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, TransportError> {
        (**self).send(request).await
    }

    async fn send_limited(
        &self,
        request: http::Request<Bytes>,
        max_body: usize,
    ) -> Result<http::Response<Bytes>, TransportError> {
        (**self).send_limited(request, max_body).await
    }
}

/// What kind of transport failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// The connection could not be established; nothing was sent.
    Connect,
    /// No complete response arrived in time.
    Timeout,
    /// The connection broke while sending or receiving.
    Io,
    /// The request could not be built (bad URL, bad header); nothing was sent.
    Request,
    /// The response body was longer than the caller's limit; reading stopped there.
    BodyTooLarge,
    /// Anything else.
    Other,
}

/// A failure below HTTP: no status was received.
///
/// Records whether the request may have reached the server, which decides whether a
/// non-idempotent request (a referral create) may be retried blindly: it may not.
#[derive(Debug, Clone, thiserror::Error)]
#[error("transport error ({kind:?}): {message}")]
pub struct TransportError {
    kind: TransportErrorKind,
    may_have_been_sent: bool,
    message: String,
    /// The HTTP stack's own error (hyper, I/O, TLS), for `source()` chains; shared so the
    /// error stays `Clone`. Never a reqwest type in a signature: it is only `dyn Error`.
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl TransportError {
    /// Creates a transport error. `may_have_been_sent` must be true unless it is certain that no
    /// byte of the request reached the server.
    pub fn new(
        kind: TransportErrorKind,
        may_have_been_sent: bool,
        message: impl Into<String>,
    ) -> Self {
        TransportError {
            kind,
            may_have_been_sent,
            message: message.into(),
            source: None,
        }
    }

    /// Keeps the failure below (the HTTP stack's error) as this error's `source()`.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// A connection that could not be established (nothing sent).
    pub fn connect(message: impl Into<String>) -> Self {
        Self::new(TransportErrorKind::Connect, false, message)
    }

    /// A body over `max` bytes (see [`HttpTransport::send_limited`]).
    pub fn body_too_large(max: usize) -> Self {
        TransportError::new(
            TransportErrorKind::BodyTooLarge,
            true,
            format!("the response body is over {max} bytes"),
        )
    }

    /// A timeout after the request was sent.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(TransportErrorKind::Timeout, true, message)
    }

    /// The kind of failure.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// Whether the server may have received (and acted on) the request.
    pub fn may_have_been_sent(&self) -> bool {
        self.may_have_been_sent
    }

    /// A timeout.
    pub fn is_timeout(&self) -> bool {
        self.kind == TransportErrorKind::Timeout
    }

    /// A connection failure.
    pub fn is_connect(&self) -> bool {
        self.kind == TransportErrorKind::Connect
    }

    /// Whether retrying could help (every kind but a malformed request).
    pub fn is_retryable(&self) -> bool {
        self.kind != TransportErrorKind::Request
    }

    /// The underlying message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

type BoxedResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, TransportError>> + Send>>;

/// A transport backed by a closure: for tests and for wrapping another transport with fault
/// injection or recording.
///
/// ```
/// use bytes::Bytes;
/// use cosell_http::{FnTransport, HttpTransport};
///
/// # tokio_test();
/// # fn tokio_test() { let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// let transport = FnTransport::new(|_req| async {
///     Ok(http::Response::builder().status(204).body(Bytes::new()).unwrap())
/// });
/// let req = http::Request::get("http://127.0.0.1/x").body(Bytes::new()).unwrap();
/// assert_eq!(transport.send(req).await.unwrap().status(), 204);
/// # }); }
/// ```
#[derive(Clone)]
pub struct FnTransport {
    f: Arc<dyn Fn(http::Request<Bytes>) -> BoxedResponseFuture + Send + Sync>,
}

impl FnTransport {
    /// Wraps a closure returning a future of the response.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(http::Request<Bytes>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<http::Response<Bytes>, TransportError>> + Send + 'static,
    {
        FnTransport {
            f: Arc::new(move |req| Box::pin(f(req))),
        }
    }
}

impl fmt::Debug for FnTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTransport").finish_non_exhaustive()
    }
}

#[async_trait]
impl HttpTransport for FnTransport {
    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, TransportError> {
        (self.f)(request).await
    }
}

/// The default transport: [`ReqwestTransport`] with its defaults when the `reqwest` feature is on,
/// otherwise an error asking for one.
pub fn default_transport() -> Result<Arc<dyn HttpTransport>, TransportError> {
    #[cfg(feature = "reqwest")]
    {
        ReqwestTransport::new().map(|t| Arc::new(t) as Arc<dyn HttpTransport>)
    }
    #[cfg(not(feature = "reqwest"))]
    {
        Err(TransportError::new(
            TransportErrorKind::Request,
            false,
            "no transport configured and the `reqwest` feature is off",
        ))
    }
}

#[cfg(feature = "reqwest")]
pub use reqwest_impl::{ReqwestTransport, ReqwestTransportBuilder};

#[cfg(feature = "reqwest")]
mod reqwest_impl {
    use std::time::Duration;

    use super::*;

    /// The default transport: reqwest with rustls (aws-lc-rs), HTTP/2, connection pooling.
    ///
    /// reqwest types stay inside this type; configure it through [`ReqwestTransport::builder`].
    #[derive(Debug, Clone)]
    pub struct ReqwestTransport {
        client: reqwest::Client,
    }

    /// Builder for [`ReqwestTransport`].
    #[derive(Debug, Clone)]
    pub struct ReqwestTransportBuilder {
        timeout: Duration,
        connect_timeout: Duration,
        user_agent: String,
        max_idle_per_host: usize,
    }

    impl Default for ReqwestTransportBuilder {
        fn default() -> Self {
            ReqwestTransportBuilder {
                timeout: Duration::from_secs(60),
                connect_timeout: Duration::from_secs(10),
                user_agent: concat!("cosell/", env!("CARGO_PKG_VERSION")).to_string(),
                max_idle_per_host: 32,
            }
        }
    }

    impl ReqwestTransportBuilder {
        /// Total time allowed for one attempt (default 60 s).
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.timeout = timeout;
            self
        }

        /// Time allowed to establish a connection (default 10 s).
        pub fn connect_timeout(mut self, timeout: Duration) -> Self {
            self.connect_timeout = timeout;
            self
        }

        /// The `User-Agent` header (default `cosell/<version>`).
        pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
            self.user_agent = user_agent.into();
            self
        }

        /// Idle pooled connections kept per host (default 32).
        pub fn max_idle_per_host(mut self, n: usize) -> Self {
            self.max_idle_per_host = n;
            self
        }

        /// Builds the transport.
        pub fn build(self) -> Result<ReqwestTransport, TransportError> {
            let client = reqwest::Client::builder()
                .timeout(self.timeout)
                .connect_timeout(self.connect_timeout)
                .user_agent(self.user_agent)
                .pool_max_idle_per_host(self.max_idle_per_host)
                // Redirects are never followed: a redirect from either API is unexpected, and
                // following one could carry the bearer token elsewhere.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| {
                    TransportError::new(TransportErrorKind::Request, false, e.to_string())
                        .with_source(e)
                })?;
            Ok(ReqwestTransport { client })
        }
    }

    impl ReqwestTransport {
        /// A builder with the defaults.
        pub fn builder() -> ReqwestTransportBuilder {
            ReqwestTransportBuilder::default()
        }

        /// A transport with the defaults.
        pub fn new() -> Result<Self, TransportError> {
            Self::builder().build()
        }
    }

    fn classify(e: reqwest::Error) -> TransportError {
        // reqwest's Display includes the URL; our URLs carry no secrets (tokens travel in headers).
        let msg = e.to_string();
        let error = if e.is_builder() {
            TransportError::new(TransportErrorKind::Request, false, msg)
        } else if e.is_connect() {
            TransportError::new(TransportErrorKind::Connect, false, msg)
        } else if e.is_timeout() {
            TransportError::new(TransportErrorKind::Timeout, true, msg)
        } else if e.is_request() || e.is_body() || e.is_decode() {
            TransportError::new(TransportErrorKind::Io, true, msg)
        } else {
            TransportError::new(TransportErrorKind::Other, true, msg)
        };
        error.with_source(e)
    }

    #[async_trait]
    impl HttpTransport for ReqwestTransport {
        async fn send(
            &self,
            request: http::Request<Bytes>,
        ) -> Result<http::Response<Bytes>, TransportError> {
            let request = reqwest::Request::try_from(request).map_err(|e| {
                TransportError::new(TransportErrorKind::Request, false, e.to_string())
                    .with_source(e)
            })?;
            let response = self.client.execute(request).await.map_err(classify)?;
            let status = response.status();
            let version = response.version();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(classify)?;
            let mut out = http::Response::new(body);
            *out.status_mut() = status;
            *out.version_mut() = version;
            *out.headers_mut() = headers;
            Ok(out)
        }

        async fn send_limited(
            &self,
            request: http::Request<Bytes>,
            max_body: usize,
        ) -> Result<http::Response<Bytes>, TransportError> {
            let request = reqwest::Request::try_from(request).map_err(|e| {
                TransportError::new(TransportErrorKind::Request, false, e.to_string())
            })?;
            let mut response = self.client.execute(request).await.map_err(classify)?;
            if response
                .content_length()
                .is_some_and(|n| n > max_body as u64)
            {
                return Err(TransportError::body_too_large(max_body));
            }
            let status = response.status();
            let version = response.version();
            let headers = response.headers().clone();
            // Chunk by chunk, so a body without (or lying about) its length stops at the limit.
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(classify)? {
                if body.len() + chunk.len() > max_body {
                    return Err(TransportError::body_too_large(max_body));
                }
                body.extend_from_slice(&chunk);
            }
            let mut out = http::Response::new(Bytes::from(body));
            *out.status_mut() = status;
            *out.version_mut() = version;
            *out.headers_mut() = headers;
            Ok(out)
        }
    }
}

#[cfg(all(test, feature = "reqwest"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_keeps_the_stack_error_as_source() {
        // Bind and drop a listener: its port is free and nothing accepts on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let transport = ReqwestTransport::new().unwrap_or_else(|e| panic!("{e}"));
        let request = http::Request::get(format!("http://127.0.0.1:{port}/"))
            .body(Bytes::new())
            .unwrap_or_else(|e| panic!("{e}"));
        let Err(e) = transport.send(request).await else {
            panic!("nothing listens on {port}");
        };
        assert_eq!(e.kind(), TransportErrorKind::Connect);
        assert!(!e.may_have_been_sent());
        let source = std::error::Error::source(&e).unwrap_or_else(|| panic!("no source: {e}"));
        // The chain goes on below reqwest, down to the refused connection.
        let mut depth = 1;
        let mut next = source.source();
        while let Some(s) = next {
            depth += 1;
            next = s.source();
        }
        assert!(depth >= 2, "only {depth} level(s) below: {source}");
    }
}
