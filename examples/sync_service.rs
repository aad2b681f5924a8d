//! The long-running cosell sync service: a starting template for running cosell in production.
//!
//! ```text
//! # terminal 1: the emulators on their well-known ports
//! cargo run --example sandbox
//! # terminal 2: the service, configured by examples/sync_service.toml (the sandbox config)
//! cargo run --example sync_service
//! cargo run --example sync_service -- --check            # CRM schema check only
//! cargo run --example sync_service -- --plan             # what a sync would write, per record
//! cargo run --example sync_service -- --config prod.toml # real endpoints, same binary
//! ```
//!
//! One process, configured by a TOML file (every key: `docs/sync-service.md`):
//!
//! - `POST /webhook`: Partner Center callbacks, verified and queued by `WebhookIntake`;
//! - the engine's loop (`Engine::run`): inbox drain, CRM change feed, reconcile, dead-letter
//!   replay, each on its own interval;
//! - `GET /healthz` (200 while the engine runs) and `GET /status` (links, last sync per
//!   direction, checkpoints, dead letters, counters, as JSON);
//! - the callback registered at start-up, never taking over another URL's registration unless
//!   `webhook.take_over_registration` or `--take-over-registration` says so;
//! - Ctrl-C or SIGTERM: no new work starts, the pass in flight and open HTTP requests finish,
//!   then the process exits 0. A pass still running after `shutdown.grace` (a throttled
//!   backfill) is abandoned and the exit code is 1; a second signal exits at once. Both are
//!   safe: every commit is atomic, so abandoned work is redone on the next start.
//!
//! Secrets (client secret, refresh token) come from environment variables named in the file and
//! are never printed. Logs go to stderr, filtered by `RUST_LOG` (default `info`).

#[path = "sync_service/config.rs"]
mod config;

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use clap::Parser;
use cosell::dataverse::DataverseClient;
use cosell::http::{ClientSecretCredential, RefreshTokenCredential};
use cosell::mapping::RecordKind;
use cosell::partner_center::PartnerCenterClient;
use cosell::partner_center::webhook::verify::{CertificateUrlRule, WebhookVerifier};
use cosell::sync::engine::{RECONCILE_CHECKPOINT, crm_checkpoint};
use cosell::sync::store::{AuditOutcome, AuditQuery, Direction, SqliteStore, StateStore};
use cosell::sync::{
    DataverseCrm, Engine, IntakeError, Received, RegistrationOutcome, WebhookIntake,
    register_callback, required_columns, setup_problems,
};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::config::{Settings, is_loopback};

/// Command-line options; everything else is in the configuration file.
#[derive(Debug, Parser)]
#[command(about = "Two-way sync of Partner Center co-sell referrals with Dynamics 365")]
struct Args {
    /// The configuration file.
    #[arg(long, default_value = "examples/sync_service.toml")]
    config: PathBuf,
    /// Check the CRM schema against the field map, print what is missing, and exit (1 if
    /// anything is missing).
    #[arg(long)]
    check: bool,
    /// Register the callback even if another URL holds the tenant's registration (it is
    /// replaced); same as `webhook.take_over_registration = true`.
    #[arg(long)]
    take_over_registration: bool,
    /// Dry run once and print, per record, what would be written to which side (field and
    /// value); consumes nothing (no webhook hint, no cursor) and writes nothing.
    #[arg(long)]
    plan: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sync_service: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Errors are printed with Display: the clients redact secrets from theirs.
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sync_service: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn Error>> {
    let mut settings = Settings::load(&args.config)?;
    settings.take_over_registration |= args.take_over_registration;
    tracing::info!(config = %args.config.display(), "configuration loaded");
    if args.check {
        return check_schema(&settings).await;
    }
    if args.plan {
        settings.engine.dry_run = true;
        return plan(settings).await;
    }
    serve(settings).await
}

/// `--plan`: one dry-run round, printed per record.
async fn plan(s: Settings) -> Result<ExitCode, Box<dyn Error>> {
    let (_, _, engine) = build_engine(&s).await?;
    let report = engine.run_once().await?;
    let mut writes = 0;
    for o in &report.outcomes {
        let who = match (&o.referral_id, &o.crm) {
            (Some(r), Some((entity, id))) => format!("referral {r} ↔ {entity} {id}"),
            (Some(r), None) => format!("referral {r}"),
            (None, Some((entity, id))) => format!("{entity} {id}"),
            (None, None) => "(unknown)".into(),
        };
        println!("{:?}  {who}  {}", o.action, o.detail);
        for w in &o.writes {
            println!("    {w}");
        }
        writes += o.writes.len();
    }
    println!(
        "plan: {} record(s), {writes} field write(s); nothing was written or consumed",
        report.outcomes.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// The app-only credential (webhook API, Dataverse).
fn app_credential(s: &Settings) -> Result<ClientSecretCredential, Box<dyn Error>> {
    let secret = s.client_secret()?;
    Ok(ClientSecretCredential::builder(
        s.tenant.as_str(),
        s.credentials.client_id.as_str(),
        secret.expose_secret(),
    )
    .authority_host(s.authority_host.as_str())
    .build()?)
}

fn dataverse_client(
    s: &Settings,
    app: ClientSecretCredential,
) -> Result<DataverseClient, Box<dyn Error>> {
    Ok(DataverseClient::builder()
        .environment_url(s.dataverse.clone())
        .credential(Arc::new(app))
        .build()?)
}

/// `--check`: every column the field map needs, looked up in the CRM's metadata.
async fn check_schema(s: &Settings) -> Result<ExitCode, Box<dyn Error>> {
    let dataverse = dataverse_client(s, app_credential(s)?)?;
    let pairs = required_columns(&s.map);
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(t, c)| (t.as_str(), c.as_str()))
        .collect();
    let report = dataverse.check_schema(&refs).await?;
    let problems = setup_problems(&dataverse, &s.map).await?;
    println!(
        "CRM schema check of {} ({} columns in {} tables)",
        s.dataverse,
        pairs.len(),
        count_tables(&pairs)
    );
    // Keys and change tracking: what every upsert and the change feed depend on.
    for p in &problems {
        println!("  {} (config key `{}`)", p.message, p.config_key);
    }
    if report.is_complete() && problems.is_empty() {
        println!("  everything the field map needs is there");
        return Ok(ExitCode::SUCCESS);
    }
    if report.is_complete() {
        return Ok(ExitCode::FAILURE);
    }
    for table in &report.missing_tables {
        println!("  table `{table}` does not exist");
    }
    let mut tables: Vec<&str> = Vec::new();
    for (t, _) in &report.missing {
        if !tables.contains(&t.as_str()) && !report.missing_tables.contains(t) {
            tables.push(t);
        }
    }
    for table in tables {
        println!("  table `{table}` lacks:");
        for (_, column) in report.missing.iter().filter(|(t, _)| t == table) {
            println!("    - {column}");
        }
    }
    println!(
        "{} column(s) missing: add them to the CRM (the co-sell customisation) or change the field map",
        report.missing.len()
    );
    Ok(ExitCode::FAILURE)
}

fn count_tables(pairs: &[(String, String)]) -> usize {
    let mut tables: Vec<&str> = pairs.iter().map(|(t, _)| t.as_str()).collect();
    tables.sort_unstable();
    tables.dedup();
    tables.len()
}

/// Reads a PEM from a file or, for a URL, over HTTP (the sandbox serves its root CA).
async fn read_pem(source: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        return std::fs::read(source).map_err(|e| format!("cannot read `{source}`: {e}").into());
    }
    let transport = cosell::http::transport::default_transport()?;
    let request = axum::http::Request::get(source).body(cosell::http::bytes::Bytes::new())?;
    let response = transport
        .send(request)
        .await
        .map_err(|e| format!("cannot fetch `{source}`: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("cannot fetch `{source}`: HTTP {}", response.status()).into());
    }
    Ok(response.into_body().to_vec())
}

async fn build_verifier(s: &Settings) -> Result<WebhookVerifier, Box<dyn Error>> {
    let v = &s.verification;
    // The production defaults (Microsoft's certificate host, Microsoft/DigiCert issuer hosts,
    // Mozilla roots, organization on the issuer), then what the file adds.
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

/// Webhook outcomes since start-up, for `/status`.
#[derive(Debug, Default)]
struct WebhookCounters {
    queued: AtomicU64,
    duplicate: AtomicU64,
    ignored: AtomicU64,
    refused: AtomicU64,
}

#[derive(Debug, Clone)]
struct AppState {
    intake: WebhookIntake,
    engine: Engine,
    store: Arc<dyn StateStore>,
    started_at: DateTime<Utc>,
    /// False once the engine loop has returned.
    running: Arc<AtomicBool>,
    /// True once a stop was asked for.
    stop: watch::Receiver<bool>,
    webhooks: Arc<WebhookCounters>,
}

impl AppState {
    fn healthy(&self) -> bool {
        self.running.load(Ordering::SeqCst) && !*self.stop.borrow()
    }
}

/// The clients, the state store and the engine of a configuration.
async fn build_engine(
    s: &Settings,
) -> Result<(PartnerCenterClient, Arc<dyn StateStore>, Engine), Box<dyn Error>> {
    let app = app_credential(s)?;
    let refresh = s.refresh_token()?;
    let user = RefreshTokenCredential::builder(
        s.tenant.as_str(),
        s.credentials.client_id.as_str(),
        refresh.expose_secret(),
    )
    .client_secret(s.client_secret()?.expose_secret())
    .authority_host(s.authority_host.as_str())
    // Entra ID rotates the token; the old one stays valid until it expires. A production
    // service would persist the new one here (a secret store), so restarts keep working.
    .on_rotated(Arc::new(|_| tracing::debug!("refresh token rotated")))
    .build()?;
    let partner_center = PartnerCenterClient::builder()
        .referrals_endpoint(s.referrals.clone())
        .webhooks_endpoint(s.webhooks.clone())
        .credential(Arc::new(user))
        .webhooks_credential(Arc::new(app.clone()))
        .build()?;
    let dataverse = dataverse_client(s, app)?;

    if let Some(dir) = s.store_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("store.path: cannot create `{}`: {e}", dir.display()))?;
    }
    let store: Arc<dyn StateStore> = Arc::new(SqliteStore::open(&s.store_path).await?);
    let crm = Arc::new(DataverseCrm::new(dataverse, s.map.clone()));
    let engine = Engine::new(
        Arc::new(partner_center.clone()),
        crm,
        store.clone(),
        s.engine.clone(),
    );
    Ok((partner_center, store, engine))
}

async fn serve(s: Settings) -> Result<ExitCode, Box<dyn Error>> {
    let (partner_center, store, engine) = build_engine(&s).await?;
    let verifier = build_verifier(&s).await?;
    let mut intake = WebhookIntake::new(Arc::new(verifier), store.clone());
    if !s.resource_hosts.is_empty() {
        intake = intake.with_resource_hosts(s.resource_hosts.iter().cloned());
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState {
        intake,
        engine: engine.clone(),
        store,
        started_at: Utc::now(),
        running: Arc::new(AtomicBool::new(true)),
        stop: stop_rx.clone(),
        webhooks: Arc::default(),
    };
    let router = Router::new()
        .route("/webhook", post(webhook))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .with_state(state.clone());

    // Bound before registering, so the first callback finds us listening.
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .map_err(|e| format!("server.listen: cannot listen on {}: {e}", s.listen))?;
    let local = listener.local_addr()?;
    if s.listens_publicly() {
        tracing::info!(%local, "listening on all interfaces; put TLS in front (a reverse proxy)");
    }
    tracing::info!(
        %local,
        store = %s.store_path.display(),
        dry_run = s.engine.dry_run,
        "cosell sync service listening: POST /webhook, GET /healthz, GET /status"
    );

    tokio::spawn(watch_signals(stop_tx.clone()));
    let server = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );

    if s.register {
        register(&partner_center, &s).await;
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
    // The engine may have stopped on its own (a state-store failure): stop the server too.
    let _ = stop_tx.send(true);
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server failed"),
        Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
    }
    match result {
        Some(Ok(())) => {
            tracing::info!(stats = ?engine.stats(), "stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "the engine stopped");
            Ok(ExitCode::FAILURE)
        }
        None => {
            // Safe: every commit is atomic and checkpoints only move after their work.
            tracing::warn!(
                grace = ?s.shutdown_grace,
                "the pass in flight did not finish within shutdown.grace; abandoned, it is redone on the next start"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Resolves `grace` after a stop was asked for (never, when `grace` is zero).
async fn grace_over(stop: watch::Receiver<bool>, grace: Duration) {
    stopped(stop).await;
    if grace.is_zero() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}

/// Registers the callback and says what happened. A failure is logged, not fatal: the reconcile
/// pass still finds every change, only later.
async fn register(partner_center: &PartnerCenterClient, s: &Settings) {
    let url = s.public_url.as_str();
    if !is_loopback(&s.public_url) && s.public_url.scheme() != "https" {
        tracing::warn!(%url, "Partner Center only calls https URLs");
    }
    match register_callback(partner_center, url, s.take_over_registration).await {
        Ok(outcome) => {
            let text = match &outcome {
                RegistrationOutcome::Created => "registered (there was no registration)".into(),
                RegistrationOutcome::AlreadyCurrent => "already registered".into(),
                RegistrationOutcome::EventsAdded => {
                    "already registered; referral events added".into()
                }
                RegistrationOutcome::Replaced { previous_url } => {
                    format!("registered, replacing {previous_url} (take-over was asked for)")
                }
                RegistrationOutcome::HeldByAnother { current_url } => format!(
                    "NOT registered: {current_url} holds the registration; changes arrive by the \
                     reconcile pass only. Use --take-over-registration if that URL is yours"
                ),
                // `RegistrationOutcome` is non-exhaustive: a later cosell may report more.
                other => format!("{other:?}"),
            };
            println!("webhook registration {url}: {text}");
            if matches!(outcome, RegistrationOutcome::HeldByAnother { .. }) {
                tracing::warn!(%url, "callback not registered: {text}");
            }
        }
        Err(e) => tracing::warn!(%url, error = %e, "callback registration failed; continuing"),
    }
}

/// Resolves once the stop flag is set.
async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone: nobody can ask for a stop any more, so stop too.
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

async fn signal() {
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
                // `Received` is non-exhaustive: count what a later cosell adds as ignored.
                _ => &counters.ignored,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(?received, "callback taken in");
            StatusCode::OK
        }
        Err(e) => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            log_refused(&e);
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST)
        }
    }
}

fn log_refused(e: &IntakeError) {
    match e {
        IntakeError::Store(_) => tracing::error!(error = %e, "callback not stored; answered 503"),
        // The verifier already logged it, with a reason code and the body's hash.
        IntakeError::Verification(_) => {
            tracing::debug!(error = %e, status = e.http_status(), "callback refused");
        }
        _ => tracing::warn!(error = %e, status = e.http_status(), "callback refused"),
    }
}

/// `GET /healthz`: 200 while the engine runs, 503 once stopping (a load balancer stops
/// sending callbacks here; Partner Center redelivers those that fail).
async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.healthy() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    }
}

/// `GET /status`: what the service has done and what needs attention, as JSON.
async fn status(State(state): State<AppState>) -> Response {
    match status_json(&state).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn status_json(state: &AppState) -> Result<Value, cosell::sync::store::StoreError> {
    let store = &state.store;
    // Counted by the store, without loading the links.
    let links = store.link_count().await?;
    // The newest write each way, from the audit trail (newest first).
    let audit = store
        .audit(&AuditQuery {
            limit: 1000,
            ..AuditQuery::default()
        })
        .await?;
    let last = |direction: Direction| {
        audit
            .iter()
            .find(|e| {
                e.direction == direction
                    && matches!(
                        e.outcome,
                        AuditOutcome::Created | AuditOutcome::Updated | AuditOutcome::Merged
                    )
            })
            .map(|e| e.at)
    };
    let mut crm_cursors = serde_json::Map::new();
    for kind in [RecordKind::Opportunity, RecordKind::Lead] {
        let name = crm_checkpoint(kind);
        // A delta link: only whether it is there means anything to a reader.
        let set = store.checkpoint(&name).await?.is_some();
        crm_cursors.insert(name, json!(set));
    }
    let dead_letters: Vec<Value> = store
        .dead_letters()
        .await?
        .into_iter()
        .map(|d| {
            json!({
                "key": d.key,
                "direction": d.direction,
                "reason": d.error,
                "attempts": d.attempts,
                "first_failed_at": d.first_failed_at,
                "last_failed_at": d.last_failed_at,
            })
        })
        .collect();
    let w = &state.webhooks;
    let now = Utc::now();
    Ok(json!({
        "state": if state.healthy() { "running" } else { "stopping" },
        "started_at": state.started_at,
        "uptime_seconds": (now - state.started_at).num_seconds(),
        "links": links,
        "last_sync": {
            "to_crm": last(Direction::ToCrm),
            "to_partner_center": last(Direction::ToPartnerCenter),
        },
        "checkpoints": {
            RECONCILE_CHECKPOINT: store.checkpoint(RECONCILE_CHECKPOINT).await?,
            "crm_change_cursors": crm_cursors,
        },
        "engine": state.engine.stats(),
        "webhooks": {
            "queued": w.queued.load(Ordering::Relaxed),
            "duplicate": w.duplicate.load(Ordering::Relaxed),
            "ignored": w.ignored.load(Ordering::Relaxed),
            "refused": w.refused.load(Ordering::Relaxed),
        },
        "dead_letters": dead_letters,
    }))
}
