//! `cosell serve`: webhook intake, CRM change feed and reconcile in one process, with
//! `/healthz` on the webhook listener and `/status`, `/metrics` and the one-record dead-letter
//! view on the admin listener (loopback by default, a bearer token when configured).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use cosell_sync::engine::RECONCILE_CHECKPOINT;
use cosell_sync::store::{Direction, StateStore, StoreError};
use cosell_sync::{Engine, IntakeError, Received, RegistrationOutcome, WebhookIntake};
use dataverse_client::DataverseClient;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::Error;
use crate::config::{ListenerLimits, Settings, is_loopback};
use crate::wiring::{self, Wired};

/// Webhook outcomes since start-up.
#[derive(Debug, Default)]
struct WebhookCounters {
    queued: AtomicU64,
    duplicate: AtomicU64,
    ignored: AtomicU64,
    refused: AtomicU64,
}

/// Who holds the tenant's callback registration, as last seen.
#[derive(Debug, Clone, serde::Serialize)]
struct Registration {
    url: String,
    outcome: &'static str,
    holder: Option<String>,
}

#[derive(Debug, Clone)]
struct AppState {
    intake: WebhookIntake,
    engine: Engine,
    store: Arc<dyn StateStore>,
    dataverse: DataverseClient,
    started_at: DateTime<Utc>,
    running: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
    webhooks: Arc<WebhookCounters>,
    registration: Arc<Mutex<Option<Registration>>>,
    admin_token: Option<Arc<SecretString>>,
    metrics: Option<PrometheusHandle>,
    /// Dead-letter classes given a gauge, so one that empties is set back to 0.
    classes_seen: Arc<Mutex<BTreeSet<(String, &'static str)>>>,
}

impl AppState {
    fn healthy(&self) -> bool {
        self.running.load(Ordering::SeqCst) && !*self.stop.borrow()
    }
}

/// Installs the Prometheus recorder (once per process); `None` if another recorder is set.
fn prometheus() -> Option<PrometheusHandle> {
    match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed; /metrics is empty");
            None
        }
    }
}

/// Runs the service until a signal (or the engine stopping on its own); the exit code says
/// whether it stopped cleanly.
pub async fn serve(s: Settings) -> Result<std::process::ExitCode, Error> {
    let metrics = prometheus();
    let Wired {
        partner_center,
        dataverse,
        store,
        engine,
    } = wiring::wire(&s).await?;
    let admin_token = s.admin_token()?.map(Arc::new);
    let verifier = wiring::verifier(&s).await?;
    let mut intake = WebhookIntake::new(Arc::new(verifier), store.clone());
    if !s.resource_hosts.is_empty() {
        intake = intake.with_resource_hosts(s.resource_hosts.iter().cloned());
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState {
        intake,
        engine: engine.clone(),
        store,
        dataverse,
        started_at: Utc::now(),
        running: Arc::new(AtomicBool::new(true)),
        stop: stop_rx.clone(),
        webhooks: Arc::default(),
        registration: Arc::default(),
        admin_token,
        metrics,
        classes_seen: Arc::default(),
    };
    let public = Router::new()
        .route("/webhook", post(webhook))
        .route("/healthz", get(healthz))
        .with_state(state.clone());
    let admin = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .route("/dead-letters/{key}", get(dead_letter))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorise))
        .route("/healthz", get(healthz))
        .with_state(state.clone());

    // Bound before registering, so the first callback finds us listening.
    let listener = tokio::net::TcpListener::bind(s.listen).await.map_err(|e| {
        Error::Message(format!("server.listen: cannot listen on {}: {e}", s.listen))
    })?;
    let admin_listener = tokio::net::TcpListener::bind(s.admin_listen)
        .await
        .map_err(|e| {
            Error::Message(format!(
                "server.admin_listen: cannot listen on {}: {e}",
                s.admin_listen
            ))
        })?;
    let local = listener.local_addr()?;
    let admin_local = admin_listener.local_addr()?;
    if s.listens_publicly() {
        tracing::info!(%local, "listening on all interfaces; put TLS in front (a reverse proxy)");
    }
    tracing::info!(
        %local, admin = %admin_local, store = %s.store_path.display(), dry_run = s.engine.dry_run,
        "cosell serve listening: POST /webhook, GET /healthz; admin: GET /status, /metrics"
    );

    // The listeners close once the engine has stopped, not at the signal: until then
    // `/healthz` answers 503 so a load balancer moves away, and callbacks are still queued.
    let (closed_tx, closed_rx) = watch::channel(false);
    tokio::spawn(watch_signals(stop_tx.clone()));
    let server = tokio::spawn(crate::listener::serve(
        listener,
        public,
        s.limits,
        stopped(closed_rx.clone()),
    ));
    let admin_limits = ListenerLimits {
        max_connections: 64,
        ..s.limits
    };
    let admin_server = tokio::spawn(crate::listener::serve(
        admin_listener,
        admin,
        admin_limits,
        stopped(closed_rx),
    ));

    if s.register {
        let seen = register(&partner_center, &s).await;
        *state.registration.lock().unwrap_or_else(|p| p.into_inner()) = seen;
    } else {
        tracing::info!("webhook.register = false: the callback registration is left as it is");
    }

    let run = engine.run(s.schedule, stopped(stop_rx.clone()));
    tokio::pin!(run);
    let result = tokio::select! {
        result = &mut run => Some(result),
        () = grace_over(stop_rx, s.shutdown_grace) => None,
    };
    state.running.store(false, Ordering::SeqCst);
    // Leases given up at the end of the last pass reach the store before the process ends, so
    // another worker need not wait out their TTL.
    engine.release_leases(Duration::from_secs(5)).await;
    let _ = stop_tx.send(true);
    let _ = closed_tx.send(true);
    for task in [server, admin_server] {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "HTTP server task failed");
        }
    }
    Ok(match result {
        Some(Ok(())) => {
            tracing::info!(stats = ?engine.stats(), "stopped cleanly");
            std::process::ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "the engine stopped");
            std::process::ExitCode::FAILURE
        }
        None => {
            // Safe: every commit is atomic and checkpoints only move after their work.
            tracing::warn!(
                grace = ?s.shutdown_grace,
                "the pass in flight did not finish within shutdown.grace; abandoned, it is redone on the next start"
            );
            std::process::ExitCode::FAILURE
        }
    })
}

/// Resolves `grace` after a stop was asked for (never, when `grace` is zero).
async fn grace_over(stop: watch::Receiver<bool>, grace: Duration) {
    stopped(stop).await;
    if grace.is_zero() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}

/// Registers the callback and says what happened; a failure is logged, not fatal (the
/// reconcile pass still finds every change, only later).
async fn register(
    partner_center: &partner_center_client::PartnerCenterClient,
    s: &Settings,
) -> Option<Registration> {
    let url = s.public_url.as_str();
    if !is_loopback(&s.public_url) && s.public_url.scheme() != "https" {
        tracing::warn!(%url, "Partner Center only calls https URLs");
    }
    match cosell_sync::register_callback(partner_center, url, s.take_over_registration).await {
        Ok(outcome) => {
            let (text, code, holder) = match &outcome {
                RegistrationOutcome::Created => (
                    "registered (there was no registration)".to_string(),
                    "registered",
                    None,
                ),
                RegistrationOutcome::AlreadyCurrent => {
                    ("already registered".into(), "registered", None)
                }
                RegistrationOutcome::EventsAdded => (
                    "already registered; referral events added".into(),
                    "registered",
                    None,
                ),
                RegistrationOutcome::Replaced { previous_url } => (
                    format!("registered, replacing {previous_url} (take-over was asked for)"),
                    "registered",
                    None,
                ),
                RegistrationOutcome::HeldByAnother { current_url } => (
                    format!(
                        "NOT registered: {current_url} holds the registration; changes arrive by \
                         the reconcile pass only. Set webhook.take_over_registration if that URL is yours"
                    ),
                    "held_by_another",
                    Some(current_url.clone()),
                ),
                // A kind this version does not know yet: say so rather than guess.
                other => (format!("{other:?}"), "unknown", None),
            };
            if holder.is_some() {
                tracing::warn!(%url, "callback not registered: {text}");
            } else {
                tracing::info!(%url, "webhook registration: {text}");
            }
            Some(Registration {
                url: url.to_string(),
                outcome: code,
                holder: holder.or_else(|| Some(url.to_string())),
            })
        }
        Err(e) => {
            tracing::warn!(%url, error = %e, "callback registration failed; continuing");
            Some(Registration {
                url: url.to_string(),
                outcome: "failed",
                holder: None,
            })
        }
    }
}

/// Resolves once the flag is set (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Ctrl-C or SIGTERM sets the stop flag; a second one exits at once.
async fn watch_signals(stop: watch::Sender<bool>) {
    signal().await;
    tracing::info!("stopping: finishing the work in flight (signal again to exit at once)");
    let _ = stop.send(true);
    signal().await;
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// Resolves on Ctrl-C or SIGTERM (Ctrl-C only where SIGTERM cannot be watched).
pub(crate) async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `POST /webhook`: verify, queue, answer; the engine does the work.
async fn webhook(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let counters = &state.webhooks;
    match state.intake.receive(&headers, &body).await {
        Ok(received) => {
            let counter = match &received {
                Received::Queued { .. } => &counters.queued,
                Received::Duplicate { .. } => &counters.duplicate,
                Received::Ignored { .. } => &counters.ignored,
                // A kind this version does not know yet: counted as taken in, not queued.
                _ => &counters.ignored,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(?received, "callback taken in");
            StatusCode::OK
        }
        Err(e) => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            match &e {
                IntakeError::Store(_) => {
                    tracing::error!(error = %e, "callback not stored; answered 503");
                }
                // The verifier already logged it, with a reason code and the body's hash.
                IntakeError::Verification(_) => {
                    tracing::debug!(error = %e, status = e.http_status(), "callback refused");
                }
                _ => tracing::warn!(error = %e, status = e.http_status(), "callback refused"),
            }
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
        }
    }
}

/// `GET /healthz`: 200 while the engine runs, 503 from the stop signal until the listener
/// closes (a load balancer stops sending callbacks here; Partner Center redelivers).
async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.healthy() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    }
}

/// Refuses admin requests without the configured bearer token.
async fn authorise(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.admin_token {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same(given.as_bytes(), expected.expose_secret().as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required (server.admin_token_env)\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference (the time says nothing of the token).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unavailable(e: &StoreError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": e.to_string() })),
    )
        .into_response()
}

/// `GET /status`: counts and reason codes, never customer text.
async fn status(State(state): State<AppState>) -> Response {
    match live_status(&state).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => unavailable(&e),
    }
}

async fn live_status(state: &AppState) -> Result<Value, StoreError> {
    let mut body = store_status(state.store.as_ref()).await?;
    let w = &state.webhooks;
    let limiter = state.dataverse.limiter();
    let snapshot = limiter.snapshot();
    let registration = state
        .registration
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let extra = json!({
        "state": if state.healthy() { "running" } else { "stopping" },
        "started_at": state.started_at,
        "uptime_seconds": (Utc::now() - state.started_at).num_seconds(),
        "registration": registration,
        "throttle": {
            "dataverse": {
                "paused": snapshot.paused,
                "pause_remaining_seconds": limiter.pause_remaining().map(|d| d.as_secs_f64()),
                "concurrency": snapshot.limit,
                "max_concurrency": snapshot.max,
                "throttled_total": snapshot.throttled,
            }
        },
        "reconcile": reconcile_json(&state.engine),
        "engine": state.engine.stats(),
        "webhooks": {
            "queued": w.queued.load(Ordering::Relaxed),
            "duplicate": w.duplicate.load(Ordering::Relaxed),
            "ignored": w.ignored.load(Ordering::Relaxed),
            "refused": w.refused.load(Ordering::Relaxed),
        },
    });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    Ok(body)
}

fn reconcile_json(engine: &Engine) -> Value {
    match engine.reconcile_progress() {
        Some((done, total)) => json!({"in_progress": true, "done": done, "total": total}),
        None => json!({"in_progress": false}),
    }
}

/// What the store alone says (also `cosell status` when the service is not running): counts
/// from the store's own queries, never a load of every row.
pub async fn store_status(store: &dyn StateStore) -> Result<Value, StoreError> {
    let now = Utc::now();
    let classes: Vec<Value> = store
        .dead_letter_classes()
        .await?
        .into_iter()
        .map(|c| {
            json!({
                "class": c.class,
                "direction": c.direction,
                "count": c.count,
                "oldest_failed_at": c.oldest_failed_at,
                "oldest_age_seconds": (now - c.oldest_failed_at).num_seconds(),
            })
        })
        .collect();
    Ok(json!({
        "links": store.link_count().await?,
        "inbox_depth": store.inbox_depth().await?,
        "last_sync": {
            "to_crm": store.last_synced_at(Direction::ToCrm).await?,
            "to_partner_center": store.last_synced_at(Direction::ToPartnerCenter).await?,
        },
        "reconcile_checkpoint": store.checkpoint(RECONCILE_CHECKPOINT).await?,
        "dead_letters": classes,
    }))
}

/// `GET /dead-letters/{key}`: one letter in full, error text included (an authorised caller
/// asking for one record).
async fn dead_letter(State(state): State<AppState>, Path(key): Path<String>) -> Response {
    match state.store.dead_letter(&key).await {
        Ok(Some(letter)) => Json(letter).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such dead letter\n").into_response(),
        Err(e) => unavailable(&e),
    }
}

/// `GET /metrics`: the counters the library emits, plus gauges read now.
async fn metrics_text(State(state): State<AppState>) -> Response {
    let Some(handle) = &state.metrics else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no metrics recorder\n").into_response();
    };
    if let Err(e) = set_gauges(&state).await {
        tracing::warn!(error = %e, "gauges not updated");
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

async fn set_gauges(state: &AppState) -> Result<(), StoreError> {
    let store = state.store.as_ref();
    metrics::gauge!("cosell_inbox_depth").set(store.inbox_depth().await? as f64);
    metrics::gauge!("cosell_links").set(store.link_count().await? as f64);
    let mut present = BTreeSet::new();
    for c in store.dead_letter_classes().await? {
        let key = (c.class.clone(), c.direction.as_str());
        metrics::gauge!("cosell_dead_letters", "class" => c.class, "direction" => key.1)
            .set(c.count as f64);
        present.insert(key);
    }
    {
        let mut seen = state.classes_seen.lock().unwrap_or_else(|p| p.into_inner());
        for (class, direction) in seen.difference(&present) {
            metrics::gauge!("cosell_dead_letters", "class" => class.clone(), "direction" => *direction)
                .set(0.0);
        }
        seen.extend(present);
    }
    let pause = state
        .dataverse
        .limiter()
        .pause_remaining()
        .unwrap_or_default();
    metrics::gauge!("cosell_throttle_pause_remaining_seconds", "service" => "dataverse")
        .set(pause.as_secs_f64());
    let (done, total) = state.engine.reconcile_progress().unwrap_or((0, 0));
    metrics::gauge!("cosell_reconcile_done").set(done as f64);
    metrics::gauge!("cosell_reconcile_total").set(total as f64);
    for direction in [Direction::ToCrm, Direction::ToPartnerCenter] {
        if let Some(at) = store.last_synced_at(direction).await? {
            metrics::gauge!("cosell_last_sync_timestamp_seconds", "direction" => direction.as_str())
                .set(at.timestamp() as f64);
        }
    }
    Ok(())
}
