//! Fault injection and request counting, applied as a middleware in front of every emulated
//! service.
//!
//! Faults are rules: which service (and optionally which method and path), what to do
//! (latency, a throttle with `Retry-After`, an error status, a dropped connection before or after
//! the request was processed), how many times, and with what probability. Probabilistic rules use
//! a seeded generator so a failing run can be replayed. Counters are kept per service, method and
//! path shape (ids replaced by `{id}`), so tests and benches count API calls on the server side
//! rather than trusting client self-reports.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// The emulated services, for targeting faults and reading counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// Partner Center Referrals API (`/v1.0/engagements/referrals`).
    Referrals,
    /// Partner Center webhook registration API (`/webhooks/v1/registration`).
    Webhooks,
    /// Dataverse Web API (`/api/data/v9.2`).
    Dataverse,
    /// The Entra ID token endpoint.
    Entra,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Referrals => "referrals",
            Service::Webhooks => "webhooks",
            Service::Dataverse => "dataverse",
            Service::Entra => "entra",
        })
    }
}

/// What a fault does to a matching request.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FaultKind {
    /// Wait this long, then process the request normally.
    Latency(Duration),
    /// Answer 429 with `Retry-After` (whole seconds, rounded up) and the service's throttle body.
    Throttle(Duration),
    /// Answer this status with the service's error body, without processing the request.
    Status(u16),
    /// Break the connection without processing the request.
    DropBeforeProcessing,
    /// Process the request (its effects are committed), then break the connection so the
    /// response is lost: the "unknown outcome" every create must survive.
    DropAfterProcessing,
}

/// One fault rule. Build with the constructors, refine with the `on_*`/`times`/`probability`
/// methods.
///
/// ```
/// use std::time::Duration;
/// use cosell_sandbox::faults::Fault;
/// let f = Fault::throttle(Duration::from_secs(2)).on_method(http::Method::POST).times(3);
/// assert_eq!(f.remaining(), Some(3));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    kind: FaultKind,
    method: Option<Method>,
    path_contains: Option<String>,
    times: Option<u32>,
    skip: u32,
    probability: f64,
}

impl Fault {
    fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            method: None,
            path_contains: None,
            times: None,
            skip: 0,
            probability: 1.0,
        }
    }

    /// Adds latency.
    pub fn latency(delay: Duration) -> Self {
        Self::new(FaultKind::Latency(delay))
    }

    /// Throttles with `Retry-After`.
    pub fn throttle(retry_after: Duration) -> Self {
        Self::new(FaultKind::Throttle(retry_after))
    }

    /// Answers an error status.
    pub fn status(status: u16) -> Self {
        Self::new(FaultKind::Status(status))
    }

    /// Drops the connection before processing.
    pub fn drop_before() -> Self {
        Self::new(FaultKind::DropBeforeProcessing)
    }

    /// Processes the request, then drops the connection (response lost).
    pub fn drop_after() -> Self {
        Self::new(FaultKind::DropAfterProcessing)
    }

    /// Only requests with this method.
    pub fn on_method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Only requests whose path contains `fragment`.
    pub fn on_path(mut self, fragment: impl Into<String>) -> Self {
        self.path_contains = Some(fragment.into());
        self
    }

    /// Fires at most `n` times (default: until cleared).
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Lets the first `n` matching requests through before it fires: "the second page of a
    /// read fails" is `.after(1)`.
    ///
    /// ```
    /// use cosell_sandbox::faults::Fault;
    /// let f = Fault::status(503).on_path("/leads").after(1).times(1);
    /// assert_eq!(f.remaining(), Some(1));
    /// ```
    pub fn after(mut self, n: u32) -> Self {
        self.skip = n;
        self
    }

    /// Fires with this probability per matching request (default 1.0).
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p.clamp(0.0, 1.0);
        self
    }

    /// How many more times it fires (`None`: unlimited).
    pub fn remaining(&self) -> Option<u32> {
        self.times
    }

    /// What it does.
    pub fn kind(&self) -> &FaultKind {
        &self.kind
    }

    fn matches(&self, method: &Method, path: &str) -> bool {
        self.times != Some(0)
            && self.method.as_ref().is_none_or(|m| m == method)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

struct FaultState {
    rules: Vec<(Service, Fault)>,
    rng: StdRng,
    counts: BTreeMap<(Service, String, String), u64>,
    injected: u64,
}

/// The fault switch and the request counters, shared by every emulated service.
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<FaultState>>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("Faults")
            .field("rules", &s.rules)
            .field("injected", &s.injected)
            .finish_non_exhaustive()
    }
}

impl Faults {
    /// A fault switch whose probabilistic rules draw from a generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Faults {
            state: Arc::new(Mutex::new(FaultState {
                rules: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
                counts: BTreeMap::new(),
                injected: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a rule for `service`. Rules are tried in the order they were added; the first that
    /// matches and fires applies.
    pub fn inject(&self, service: Service, fault: Fault) {
        self.lock().rules.push((service, fault));
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// How many faults fired so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// Requests received by `service` (faulted ones included).
    pub fn calls(&self, service: Service) -> u64 {
        self.lock()
            .counts
            .iter()
            .filter(|((s, _, _), _)| *s == service)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests received by `service` with `method` whose path shape contains `fragment`.
    pub fn calls_matching(&self, service: Service, method: &Method, fragment: &str) -> u64 {
        self.lock()
            .counts
            .iter()
            .filter(|((s, m, p), _)| *s == service && m == method.as_str() && p.contains(fragment))
            .map(|(_, n)| n)
            .sum()
    }

    /// Every counter: `(service, method, path shape) -> requests`.
    pub fn counters(&self) -> BTreeMap<(Service, String, String), u64> {
        self.lock().counts.clone()
    }

    /// Resets the counters (not the rules).
    pub fn reset_counters(&self) {
        self.lock().counts.clear();
    }

    /// Counts the request and picks the fault to apply, if any.
    fn admit(&self, service: Service, method: &Method, path: &str) -> Option<FaultKind> {
        let mut s = self.lock();
        *s.counts
            .entry((service, method.as_str().to_string(), path_shape(path)))
            .or_insert(0) += 1;
        let FaultState { rules, rng, .. } = &mut *s;
        let mut fired = None;
        for (svc, rule) in rules.iter_mut() {
            if *svc != service || !rule.matches(method, path) {
                continue;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
                continue;
            }
            if rule.probability < 1.0 && !rng.random_bool(rule.probability) {
                continue;
            }
            if let Some(n) = rule.times.as_mut() {
                *n -= 1;
            }
            fired = Some(rule.kind.clone());
            break;
        }
        if fired.is_some() {
            s.injected += 1;
        }
        fired
    }
}

/// Replaces ids in a path with placeholders so counters group by operation:
/// GUID segments become `{id}`, and `set(key)` becomes `set({key})`.
pub fn path_shape(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if uuid::Uuid::parse_str(seg).is_ok() {
                "{id}".to_string()
            } else if let Some(open) = seg.find('(') {
                format!(
                    "{}({{key}}){}",
                    &seg[..open],
                    seg.rfind(')').map_or("", |i| &seg[i + 1..])
                )
            } else {
                seg.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The body a service sends with a 429, as each documents it.
fn throttle_body(service: Service, retry_after: u64) -> serde_json::Value {
    match service {
        Service::Dataverse => json!({"error": {
            "code": "0x80072322",
            "message": "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
        }}),
        Service::Entra => json!({
            "error": "temporarily_unavailable",
            "error_description": "AADSTS50196: The server is throttling requests."
        }),
        Service::Referrals | Service::Webhooks => json!({
            "statusCode": 429,
            "message": format!("Rate limit is exceeded. Try again in {retry_after} seconds.")
        }),
    }
}

fn status_body(service: Service, status: StatusCode) -> serde_json::Value {
    let message = status.canonical_reason().unwrap_or("error");
    match service {
        Service::Dataverse => json!({"error": {"code": "0x80040216", "message": message}}),
        Service::Entra => json!({"error": "temporarily_unavailable", "error_description": message}),
        Service::Referrals => json!({"error": {
            "code": if status.is_server_error() { "serviceNotAvailable" } else { "invalidRequest" },
            "message": message,
            "target": "sandbox-fault"
        }}),
        // Partner Center REST error-codes page: the webhook API's host answers
        // `{code, description, data, source}`.
        Service::Webhooks => json!({
            "code": status.as_u16().to_string(),
            "description": message,
            "data": [],
            "source": "sandbox-fault"
        }),
    }
}

/// A response whose body fails mid-stream: the client sees the connection break.
fn broken_response() -> Response {
    let body = Body::from_stream(futures::stream::once(async {
        Err::<bytes::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "sandbox fault: connection dropped",
        ))
    }));
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// State of the fault middleware for one service.
#[derive(Debug, Clone)]
pub struct FaultLayerState {
    /// The service the middleware fronts.
    pub service: Service,
    /// The shared switch.
    pub faults: Faults,
}

/// The middleware: counts the request, then applies the first matching fault.
///
/// Mount it with `axum::middleware::from_fn_with_state(FaultLayerState { .. }, faults::middleware)`.
pub async fn middleware(
    State(layer): State<FaultLayerState>,
    request: Request,
    next: Next,
) -> Response {
    let fault = layer
        .faults
        .admit(layer.service, request.method(), request.uri().path());
    match fault {
        None => next.run(request).await,
        Some(FaultKind::Latency(d)) => {
            tokio::time::sleep(d).await;
            next.run(request).await
        }
        Some(FaultKind::Throttle(d)) => {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            let mut resp = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(throttle_body(layer.service, secs)),
            )
                .into_response();
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
            resp
        }
        Some(FaultKind::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, axum::Json(status_body(layer.service, status))).into_response()
        }
        Some(FaultKind::DropBeforeProcessing) => broken_response(),
        Some(FaultKind::DropAfterProcessing) => {
            let _committed = next.run(request).await;
            broken_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_group_ids() {
        assert_eq!(
            path_shape("/v1.0/engagements/referrals/4111fffc-f9ee-4d53-bba6-569135228642"),
            "/v1.0/engagements/referrals/{id}"
        );
        assert_eq!(
            path_shape("/api/data/v9.2/opportunities(cosell_referralid='x')"),
            "/api/data/v9.2/opportunities({key})"
        );
        assert_eq!(
            path_shape("/api/data/v9.2/leads(1)/Microsoft.Dynamics.CRM.QualifyLead"),
            "/api/data/v9.2/leads({key})/Microsoft.Dynamics.CRM.QualifyLead"
        );
    }

    #[test]
    fn rules_fire_in_order_and_run_out() {
        let f = Faults::new(7);
        f.inject(
            Service::Dataverse,
            Fault::status(503).on_method(Method::POST).times(1),
        );
        f.inject(
            Service::Dataverse,
            Fault::throttle(Duration::from_secs(1)).times(2),
        );
        assert_eq!(f.admit(Service::Referrals, &Method::POST, "/x"), None);
        assert_eq!(
            f.admit(Service::Dataverse, &Method::POST, "/x"),
            Some(FaultKind::Status(503))
        );
        for _ in 0..2 {
            assert_eq!(
                f.admit(Service::Dataverse, &Method::POST, "/x"),
                Some(FaultKind::Throttle(Duration::from_secs(1)))
            );
        }
        assert_eq!(f.admit(Service::Dataverse, &Method::POST, "/x"), None);
        assert_eq!(f.calls(Service::Dataverse), 4);
        assert_eq!(f.calls(Service::Referrals), 1);
        assert_eq!(f.injected(), 3);
    }

    #[test]
    fn probability_is_seeded() {
        let run = |seed| {
            let f = Faults::new(seed);
            f.inject(Service::Referrals, Fault::status(500).probability(0.5));
            (0..64)
                .map(|_| f.admit(Service::Referrals, &Method::GET, "/").is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        let fired = run(1).iter().filter(|b| **b).count();
        assert!((16..=48).contains(&fired), "{fired}");
    }
}
