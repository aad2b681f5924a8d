//! The in-process transport: every emulated host served without a socket.
//!
//! [`InProcessTransport`] implements [`cosell_http::HttpTransport`] by handing each request to
//! the axum [`Router`] of the host its URL names (matched by port), through the same fault
//! middleware the listeners use, so faults fire and the server-side counters count exactly as
//! over loopback. Nothing is bound and nothing runs in the background, so it is safe under
//! paused tokio time (`tokio::time::pause`, `#[tokio::test(start_paused = true)]`) and a run is
//! as deterministic as the code above it: the basis of the deterministic simulation.
//!
//! A dropped connection ([`FaultKind::DropBeforeProcessing`](crate::FaultKind) or
//! [`DropAfterProcessing`](crate::FaultKind)) reaches the middleware's caller as a response
//! whose body fails mid-stream; this transport turns it into a [`TransportError`] of kind
//! [`Io`](TransportErrorKind::Io) that *may have been sent*, the way reqwest reports a connection
//! broken while reading the response. The retry layer then repeats it only if it is idempotent.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use cosell_http::{HttpTransport, TransportError, TransportErrorKind};
use tower::ServiceExt;

/// Serves requests with the sandbox's routers, in process, by the port of the request's URL.
///
/// Get one from [`Sandbox::transport`](crate::Sandbox::transport); it works for a sandbox started
/// either way (in a listener-mode sandbox it simply skips the sockets).
#[derive(Clone)]
pub struct InProcessTransport {
    host: String,
    routes: BTreeMap<u16, (&'static str, Router)>,
}

impl fmt::Debug for InProcessTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<(u16, &str)> = self.routes.iter().map(|(p, (n, _))| (*p, *n)).collect();
        f.debug_struct("InProcessTransport")
            .field("host", &self.host)
            .field("hosts", &hosts)
            .finish()
    }
}

impl InProcessTransport {
    /// A transport serving `host` (`127.0.0.1`) with one router per `(port, name, router)`.
    pub(crate) fn new(
        host: impl Into<String>,
        routes: impl IntoIterator<Item = (u16, &'static str, Router)>,
    ) -> Self {
        InProcessTransport {
            host: host.into(),
            routes: routes
                .into_iter()
                .map(|(port, name, router)| (port, (name, router)))
                .collect(),
        }
    }

    /// The router of each port (what the listeners serve in socket mode).
    pub(crate) fn routers(&self) -> BTreeMap<u16, Router> {
        self.routes
            .iter()
            .map(|(port, (_, router))| (*port, router.clone()))
            .collect()
    }

    fn router_for(&self, uri: &http::Uri) -> Option<&Router> {
        let host = uri.host()?;
        let same_host = host == self.host || (host == "localhost" && self.host == "127.0.0.1");
        if !same_host {
            return None;
        }
        let port = uri.port_u16().unwrap_or(80);
        self.routes.get(&port).map(|(_, r)| r)
    }
}

#[async_trait]
impl HttpTransport for InProcessTransport {
    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, TransportError> {
        let Some(router) = self.router_for(request.uri()).cloned() else {
            // Nothing listens there: what a refused connection looks like (nothing sent).
            return Err(TransportError::connect(format!(
                "no emulated host at {}",
                request.uri()
            )));
        };
        let response = match router.oneshot(request.map(Body::from)).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => Ok(http::Response::from_parts(parts, bytes)),
            // The fault middleware's broken response: the connection dropped after the request
            // went out, so the server may have acted on it.
            Err(e) => Err(TransportError::new(
                TransportErrorKind::Io,
                true,
                format!("connection dropped while reading the response: {e}"),
            )),
        }
    }
}
