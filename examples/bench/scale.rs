//! `--sizes 1000,10000,100000`: the same engine at growing N (issue 15). For each N, a fresh
//! sandbox with N referrals of history and a SQLite store:
//!
//! 1. **Backfill**: every referral into the CRM, under Dataverse's service-protection limits
//!    (the documented ratios — 20 requests and 4 s of execution per second, 52 concurrent —
//!    with windows shortened so that a run takes minutes, and an emulated execution time per
//!    operation). The ceiling is computed from the emulator's own accounting: the requests and
//!    execution time the backfill used per referral, against those budgets.
//! 2. **Live, at N links**: the live engine's first read of the CRM feeds (N opportunities and
//!    their link rows: our own writes coming back), then `M` new referrals by webhook, then `M`
//!    CRM opportunities by change feed, with the limits at their documented values (windows
//!    reset before each phase): the per-record cost each way with N pairs already in the
//!    store. `COSELL_BENCH_TRACE=1` prints each phase's requests.
//! 3. **Echo round**: one full pass after that; what it costs Dataverse.
//!
//! The emulators run on a runtime of their own; the engine's heap (clients, store, receiver,
//! passes) is counted apart by [`heap`](super::heap). The store's size is its file (and WAL)
//! over the links it holds. With `COSELL_BENCH_TRACE`, the engine's heap is printed after each
//! phase and after each part is dropped at the end (`rest`, `no-backfill-engine`,
//! `no-sandboxed`, `closed`); `COSELL_BENCH_HEAPPROF=65536` samples its allocations and
//! `COSELL_BENCH_DUMP=rest,closed` (or `all`) prints, at those points, where the live heap was
//! allocated (a dump stalls the engine's sampled allocations while it symbolizes: dump only
//! where nothing runs after, or the store may time out); `COSELL_BENCH_REST_WAIT=<s>` keeps
//! watching the heap at rest.

use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::Arc;

use cosell::dataverse::DataverseClient;
use cosell::http::{ClientSecretCredential, PacerConfig};
use cosell::sandbox::Sandbox;
use cosell::sandbox::dataverse::ServiceLimits;
use cosell::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use cosell::sandboxed::{Sandboxed, StoreChoice};
use cosell::sync::EngineConfig;
use cosell::sync::store::SqliteStore;
use cosell::sync::{Crm, DataverseCrm, Engine};
use serde_json::json;

use super::{BoxResult, Calls, Feed, drive, heap, reset, throttled};

/// The limits the backfill runs under: Dataverse's budgets per second, windows of `window`.
pub(crate) fn scaled_limits(window: Duration, operation_cost: Duration) -> ServiceLimits {
    let defaults = ServiceLimits::default();
    let scale = window.as_secs_f64() / defaults.request_window.as_secs_f64();
    ServiceLimits {
        max_requests: ((f64::from(defaults.max_requests) * scale).round() as u32).max(1),
        request_window: window,
        max_execution_time: defaults.max_execution_time.mul_f64(scale),
        execution_window: window,
        operation_cost: Some(operation_cost),
        ..defaults
    }
}

/// What one size measured.
#[derive(Debug)]
pub(crate) struct SizeResult {
    n: usize,
    backfill: Backfill,
    to_crm: Live,
    to_pc: Live,
    echo_dataverse: u64,
    echo_writes: u64,
    heap_peak: usize,
    heap_after: usize,
    links: u64,
    store_bytes: u64,
}

#[derive(Debug)]
struct Backfill {
    elapsed: Duration,
    failures: usize,
    /// Requests counted toward the request limit, per referral.
    requests_per_record: f64,
    /// Emulated execution time per referral.
    execution_per_record: Duration,
    /// Records per second the budgets allow at those costs.
    ceiling: f64,
    throttled: u64,
    requests: u64,
    /// Requests that arrived while a `Retry-After` given to the engine was still running.
    early: u64,
    /// Live referrals delivered by webhook during the backfill, and how long each took from
    /// its creation in Partner Center to its CRM row (sorted).
    probe: Vec<Duration>,
}

#[derive(Debug)]
struct Live {
    records: usize,
    elapsed: Duration,
    calls: Calls,
    failures: usize,
}

impl Live {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs a control call of the emulators off the engine's threads (what they allocate is the
/// emulators', not the engine's).
async fn on_emulator<R: Send + 'static>(
    rt: &tokio::runtime::Handle,
    f: impl FnOnce() -> R + Send + 'static,
) -> BoxResult<R> {
    Ok(rt.spawn_blocking(f).await?)
}

/// With `COSELL_BENCH_TRACE`: how long a phase took and what it asked of the emulators.
fn trace_phase(s: &Sandboxed, phase: &str, started: Instant) {
    if std::env::var_os("COSELL_BENCH_TRACE").is_none() {
        return;
    }
    eprintln!(
        "{phase}: {:.1} s, {} throttled so far",
        started.elapsed().as_secs_f64(),
        throttled(s)
    );
    for ((service, method, path), n) in s.sandbox.faults().counters() {
        eprintln!("  {phase} {service:?} {method} {path}: {n}");
    }
}

/// With `COSELL_BENCH_TRACE`: the engine's live heap at `point`, and with `COSELL_BENCH_DUMP`
/// naming it (a comma-separated list of points, or `all`) and `COSELL_BENCH_HEAPPROF` set,
/// where that heap was allocated.
fn heap_point(n: usize, point: &str) {
    if std::env::var_os("COSELL_BENCH_TRACE").is_none() {
        return;
    }
    let live = heap::live();
    eprintln!(
        "heap at {point} (N = {n}): {:.2} MB live, {:.0} B per referral",
        live as f64 / 1_048_576.0,
        live as f64 / n.max(1) as f64
    );
    let dump = std::env::var("COSELL_BENCH_DUMP").unwrap_or_default();
    if dump.split(',').any(|p| p == point || p == "all") {
        heap::dump(&format!("{point} (N = {n})"));
    }
}

fn file_bytes(path: &Path) -> u64 {
    let mut total = 0;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        total += std::fs::metadata(&p).map_or(0, |m| m.len());
    }
    total
}

/// How the backfill is run: the limits it runs under and the engine's settings for it.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    /// The emulated service-protection limits.
    pub(crate) limits: ServiceLimits,
    /// The pacer's `target` and `background_share`.
    pub(crate) shares: (f64, f64),
    /// `EngineConfig::backfill_lanes`.
    pub(crate) lanes: usize,
    /// Whether the backfill's pacer folds in the emulator's `x-ms-ratelimit-*` hints
    /// (`DataverseClientBuilder::pacing_hints`): the budgets are the emulator's own.
    pub(crate) hints: bool,
    /// Live records each way at N links.
    pub(crate) live: usize,
    /// During the backfill, a new referral by webhook this often (`None`: none), handled by
    /// the backfill's own engine as a service's inbox loop would.
    pub(crate) probe_every: Option<Duration>,
}

/// One size, end to end.
pub(crate) async fn run_size(
    emulators: &tokio::runtime::Handle,
    sandbox: Sandbox,
    n: usize,
    setup: &Setup,
    dir: &Path,
) -> BoxResult<SizeResult> {
    let Setup {
        limits,
        shares,
        lanes,
        live,
        hints,
        probe_every,
    } = setup.clone();
    let db = dir.join(format!("state-{n}.sqlite"));
    // The live engine: pacing off, the emulator's windows reset between phases (as the
    // classic bench); the backfill gets an engine of its own below, paced to the scaled limits.
    let store = Arc::new(SqliteStore::open(&db).await?);
    let s = Sandboxed::builder()
        .store(StoreChoice::Shared(store.clone()))
        .engine_config(EngineConfig::default())
        .dataverse_pacing(None)
        .start_with(sandbox)
        .await?;
    let pc = s.sandbox.partner_center().clone();
    on_emulator(emulators, move || {
        pc.seed_referrals(n);
    })
    .await?;
    s.deliveries_settled().await;
    heap_point(n, "start");
    heap::reset_peak();

    // 1. Backfill under the scaled limits.
    s.sandbox.dataverse().set_limits(limits.clone());
    reset(&s);
    s.sandbox.dataverse().reset_limit_usage();
    let throttled_before = throttled(&s);
    let (backfill_engine, backfill_client) = paced_engine(&s, &limits, shares, lanes, hints)?;
    let started = Instant::now();
    // Live webhooks while it runs, drained by the same engine (one pacer, live priority).
    let probe = probe_every.map(|every| Probe::start(emulators, &s, &backfill_engine, every));
    // The service's first reconcile over the whole history is the backfill: paged, batched.
    let report = backfill_engine.reconcile().await?;
    let elapsed = started.elapsed();
    let probe = match probe {
        Some(p) => p.finish(&s).await?,
        None => Vec::new(),
    };
    let failures = report.count(cosell::sync::Action::Failed);
    // A pass's report holds an outcome per referral: not the engine's state, so not counted in
    // its heap at rest.
    drop(report);
    heap_point(n, "backfill");
    let counted = s.sandbox.dataverse().limit_usage();
    if std::env::var_os("COSELL_BENCH_TRACE").is_some() {
        eprintln!("backfill pacer: {:?}", backfill_client.pacing_snapshot());
    }
    trace_phase(&s, "backfill", started);
    // The probe's requests are single operations (no `$batch`: a webhook's referral is one
    // lead or opportunity), so what they took of both budgets is known exactly and left out
    // of the backfill's own cost.
    let probe_requests = probe_dataverse_requests(&s);
    let op_cost = limits.operation_cost.unwrap_or_default();
    let per = n.max(1) as f64;
    let requests_per_record = counted.requests.saturating_sub(probe_requests) as f64 / per;
    let execution_per_record = counted
        .execution_time
        .saturating_sub(op_cost.saturating_mul(u32::try_from(probe_requests).unwrap_or(u32::MAX)))
        .div_f64(per);
    let by_requests = f64::from(limits.max_requests)
        / limits.request_window.as_secs_f64()
        / requests_per_record.max(1e-9);
    let by_time = limits.max_execution_time.as_secs_f64()
        / limits.execution_window.as_secs_f64()
        / execution_per_record.as_secs_f64().max(1e-9);
    let backfill = Backfill {
        elapsed,
        failures,
        requests_per_record,
        execution_per_record,
        ceiling: by_requests.min(by_time),
        throttled: throttled(&s) - throttled_before,
        requests: counted.requests,
        early: counted.early_requests,
        probe,
    };

    // 2. Live traffic at N links, under the documented limits.
    s.sandbox.dataverse().set_limits(ServiceLimits::default());
    reset(&s);
    let started = Instant::now();
    s.deliveries_settled().await;
    // The live engine's first read of the CRM feeds: N rows each.
    s.engine.pull_crm_changes().await?;
    trace_phase(&s, "first feed reads", started);
    heap_point(n, "feeds");
    reset(&s);
    let pc = s.sandbox.partner_center().clone();
    let started = Instant::now();
    on_emulator(emulators, move || {
        for i in 0..live {
            let _ = pc.create_incoming_referral(json!({"name": format!("Live incoming {i}")}));
        }
    })
    .await?;
    let failures = drive(&s, Feed::Inbox, live, started).await?;
    let to_crm = Live {
        records: live,
        elapsed: started.elapsed(),
        calls: Calls::read(&s),
        failures,
    };
    trace_phase(&s, "to CRM", started);
    heap_point(n, "to-crm");
    s.deliveries_settled().await;
    s.engine.pull_crm_changes().await?;
    // Written on a thread of its own, so the rows count as the emulator's, not the engine's.
    let seeded: Result<(), String> = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                (0..live).try_for_each(|i| {
                    s.seed_co_sell_opportunity(&format!("Live opportunity {i}"))
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
            })
            .join()
            .unwrap_or_else(|_| Err("seeding panicked".into()))
    });
    seeded?;
    reset(&s);
    let started = Instant::now();
    let failures = drive(&s, Feed::ChangeFeed, live, started).await?;
    let to_pc = Live {
        records: live,
        elapsed: started.elapsed(),
        calls: Calls::read(&s),
        failures,
    };
    trace_phase(&s, "to Partner Center", started);
    heap_point(n, "to-pc");

    // 3. Echo round.
    s.deliveries_settled().await;
    reset(&s);
    s.engine.run_once().await?;
    let echo = Calls::read(&s);

    let links = s.store.link_count().await?;
    let heap_peak = heap::peak();
    let heap_after = heap::live();
    heap_point(n, "rest");
    // What a moment more frees (leases given up, windows past).
    tokio::time::sleep(Duration::from_secs(1)).await;
    heap_point(n, "rest-1s");
    // `COSELL_BENCH_REST_WAIT=<s>`: keep watching the heap at rest that long (what is freed
    // late, and when).
    let wait: u64 = std::env::var("COSELL_BENCH_REST_WAIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for waited in (5..=wait).step_by(5) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        heap_point(n, &format!("rest-{}s", waited + 1));
    }
    // Closed first: closing the last connection checkpoints the WAL into the file.
    drop(backfill_engine);
    drop(backfill_client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    heap_point(n, "no-backfill-engine");
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    heap_point(n, "no-sandboxed");
    store.close().await;
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;
    heap_point(n, "closed");
    let store_bytes = file_bytes(&db);
    if std::env::var_os("COSELL_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_file(&db);
    }
    Ok(SizeResult {
        n,
        backfill,
        to_crm,
        to_pc,
        echo_dataverse: echo.dataverse,
        echo_writes: echo.writes,
        heap_peak,
        heap_after,
        links,
        store_bytes,
    })
}

/// Dataverse requests during the backfill that are not the backfill's: everything but its
/// `$batch`es and currency look-ups (the probe's webhooks are handled one request at a time).
fn probe_dataverse_requests(s: &Sandboxed) -> u64 {
    s.sandbox
        .faults()
        .counters()
        .into_iter()
        .filter(|((service, method, path), _)| {
            *service == cosell::sandbox::Service::Dataverse
                && !(method == "POST" && path.ends_with("$batch"))
                && !path.ends_with("transactioncurrencies")
        })
        .map(|(_, n)| n)
        .sum()
}

/// A probe referral's id and when Partner Center created it.
type Created = (String, chrono::DateTime<chrono::Utc>);

/// Live traffic during the backfill: a new referral by webhook every `every`, drained from
/// the inbox by the backfilling engine itself, as a service's inbox loop does beside its
/// reconcile.
struct Probe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    created: tokio::task::JoinHandle<Result<Vec<Created>, String>>,
    drained: tokio::task::JoinHandle<Result<(), String>>,
}

impl Probe {
    fn start(
        emulators: &tokio::runtime::Handle,
        s: &Sandboxed,
        engine: &Engine,
        every: Duration,
    ) -> Probe {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pc = s.sandbox.partner_center().clone();
        let (rt, flag) = (emulators.clone(), stop.clone());
        let created = tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            while !flag.load(Ordering::Relaxed) {
                let i = ids.len();
                let pc = pc.clone();
                let r = rt
                    .spawn_blocking(move || {
                        pc.create_incoming_referral(json!({"name": format!("Probe {i}")}))
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                let id = r["id"]
                    .as_str()
                    .ok_or("probe referral without id")?
                    .to_string();
                let at = chrono::DateTime::parse_from_rfc3339(
                    r["createdDateTime"].as_str().ok_or("no createdDateTime")?,
                )
                .map_err(|e| e.to_string())?
                .with_timezone(&chrono::Utc);
                ids.push((id, at));
                tick.tick().await;
            }
            Ok(ids)
        });
        let (engine, flag) = (engine.clone(), stop.clone());
        let drained = tokio::spawn(async move {
            while !flag.load(Ordering::Relaxed) {
                engine.drain_inbox().await.map_err(|e| e.to_string())?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        });
        Probe {
            stop,
            created,
            drained,
        }
    }

    /// Stops the probe once the backfill is done: what it created is drained (by then with the
    /// whole budget), and each referral's time to its CRM row is returned, sorted.
    async fn finish(self, s: &Sandboxed) -> BoxResult<Vec<Duration>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let ids = self.created.await??;
        self.drained.await??;
        s.deliveries_settled().await;
        let started = Instant::now();
        let mut latencies = Vec::with_capacity(ids.len());
        for (id, created) in &ids {
            loop {
                let audit = s
                    .store
                    .audit(&cosell::sync::store::AuditQuery {
                        referral_id: Some(id.clone()),
                        ..Default::default()
                    })
                    .await?;
                let written = audit.iter().find(|e| {
                    e.direction == cosell::sync::store::Direction::ToCrm
                        && e.outcome == cosell::sync::store::AuditOutcome::Created
                });
                if let Some(e) = written {
                    latencies.push((e.at - *created).to_std().unwrap_or_default());
                    break;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    return Err(format!("probe referral {id} never reached the CRM").into());
                }
                s.engine.drain_inbox().await?;
            }
        }
        latencies.sort();
        Ok(latencies)
    }
}

/// An engine over the same Partner Center client and store whose Dataverse client paces itself
/// to `limits` (as a production client does to Dataverse's documented budgets).
fn paced_engine(
    s: &Sandboxed,
    limits: &ServiceLimits,
    (target, background_share): (f64, f64),
    lanes: usize,
    hints: bool,
) -> BoxResult<(Engine, DataverseClient)> {
    let urls = s.sandbox.urls();
    let app =
        ClientSecretCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
            .authority_host(urls.entra.as_str())
            .build()?;
    let pacing = PacerConfig {
        max_requests: limits.max_requests,
        request_window: limits.request_window,
        max_execution_time: limits.max_execution_time,
        execution_window: limits.execution_window,
        target,
        background_share,
    };
    pacing.validate()?;
    let client = DataverseClient::builder()
        .environment_url(urls.dataverse.clone())
        .credential(Arc::new(app))
        .pacing(pacing)
        .pacing_hints(hints)
        .build()?;
    Ok((
        Engine::new(
            Arc::new(s.partner_center.clone()),
            Arc::new(DataverseCrm::new(client.clone(), s.crm.field_map().clone())),
            s.store.clone(),
            EngineConfig {
                backfill_lanes: lanes,
                ..EngineConfig::default()
            },
        ),
        client,
    ))
}

fn mb(bytes: usize) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

/// Prints the table of all sizes.
pub(crate) fn print(
    results: &[SizeResult],
    limits: &ServiceLimits,
    live: usize,
    (target, background_share): (f64, f64),
    hints: bool,
) {
    println!(
        "cosell scale bench: backfill under scaled limits ({} requests and {:.0} s execution per {:.0} s window, {:.1} ms emulated per operation), paced to {:.0} % of each budget (live {:.0} %, server hints {}), then {live} live records each way at N links",
        limits.max_requests,
        limits.max_execution_time.as_secs_f64(),
        limits.request_window.as_secs_f64(),
        limits.operation_cost.unwrap_or_default().as_secs_f64() * 1000.0,
        background_share * 100.0,
        target * 100.0,
        if hints { "on" } else { "off" },
    );
    println!();
    println!(
        "{:>7} | {:>9} {:>8} {:>7} {:>8} {:>6} | {:>8} {:>5} {:>5} | {:>8} {:>5} {:>5} | {:>5} | {:>9} {:>9} | {:>6}",
        "N",
        "backfill/s",
        "ceiling",
        "of ceil",
        "DV req/r",
        "429 %",
        "→CRM/s",
        "PC/r",
        "DV/r",
        "→PC/s",
        "PC/r",
        "DV/r",
        "echo",
        "heap peak",
        "heap now",
        "B/link",
    );
    for r in results {
        let b = &r.backfill;
        let rate = r.n as f64 / b.elapsed.as_secs_f64().max(1e-9);
        let (tp, td, _) = r.to_crm.calls.per(r.to_crm.records);
        let (pp, pd, _) = r.to_pc.calls.per(r.to_pc.records);
        println!(
            "{:>7} | {:>10.1} {:>8.1} {:>6.0}% {:>8.3} {:>5.2}% | {:>8.1} {:>5.2} {:>5.2} | {:>8.1} {:>5.2} {:>5.2} | {:>5} | {:>9} {:>9} | {:>6}",
            r.n,
            rate,
            b.ceiling,
            100.0 * rate / b.ceiling.max(1e-9),
            b.requests_per_record,
            100.0 * b.throttled as f64 / (b.requests.max(1) as f64),
            r.to_crm.rate(),
            tp,
            td,
            r.to_pc.rate(),
            pp,
            pd,
            r.echo_dataverse,
            mb(r.heap_peak),
            mb(r.heap_after),
            r.store_bytes / r.links.max(1),
        );
        if b.failures + r.to_crm.failures + r.to_pc.failures > 0 || r.echo_writes > 0 {
            println!(
                "        failures: backfill {}, → CRM {}, → PC {}; echo-round writes {}",
                b.failures, r.to_crm.failures, r.to_pc.failures, r.echo_writes
            );
        }
        println!(
            "        backfill {:.1} s, {:.2} ms execution per referral, {} requests sent inside a Retry-After; {} links",
            b.elapsed.as_secs_f64(),
            b.execution_per_record.as_secs_f64() * 1000.0,
            b.early,
            r.links
        );
        if let (Some(first), Some(last)) = (b.probe.first(), b.probe.last()) {
            let p50 = b.probe[b.probe.len() / 2];
            println!(
                "        live during the backfill: {} webhooks, referral to CRM row min {:.2} s, p50 {:.2} s, max {:.2} s",
                b.probe.len(),
                first.as_secs_f64(),
                p50.as_secs_f64(),
                last.as_secs_f64()
            );
        }
    }
}
