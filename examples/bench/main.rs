//! Sync throughput, API cost and webhook-to-CRM latency against the embedded sandbox.
//!
//! ```text
//! cargo run --release --example bench                      # 500 referrals, in-memory store
//! cargo run --release --example bench -- --store sqlite    # the durable store
//! cargo run --release --example bench -- --referrals 2000 --burst 20 --burst-interval-ms 100
//! ```
//!
//! Everything is real except the two services: the engine, both clients (with Entra sign-in),
//! the signed webhook deliveries, their verification and the state store all run as in
//! production, over HTTP on 127.0.0.1. The emulators keep Dataverse's documented
//! service-protection limits; their windows are reset between phases and any 429 is reported.
//!
//! Phases:
//!
//! 1. **Partner Center → CRM.** `N` incoming referrals are created on Microsoft's side; each
//!    fires a signed `referral-created` webhook to the receiver; the engine drains the inbox in a
//!    loop until every referral has its CRM row. Time: first referral created → last CRM row
//!    committed (audit timestamp).
//! 2. **CRM → Partner Center.** `N` opportunities marked *Sync with Partner Center = Yes*
//!    (account, contact, a solution, co-sell) are inserted; the engine reads the change feed in a
//!    loop until every one has its referral. Time: start of the first pass → last pair committed.
//! 3. **Echo round.** Once the webhooks of phase 2 have arrived, one `run_once`: everything it
//!    sees is the echo of the engine's own writes, so it must write nothing.
//! 4. **Latency.** The engine runs as the service does (`Engine::run` with the default
//!    [`Schedule`]) while referrals arrive in bursts. For each referral: from `createdDateTime`
//!    on Microsoft's side (the callback is queued at that instant) to the audit entry the engine
//!    stamps right after writing the CRM row (before its store commit), both from this process's
//!    wall clock; split at the moment the receiver answered the webhook (from the emulator's
//!    delivery log).
//!
//! API calls are counted by the emulators themselves, reset before each phase.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::error::Error;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use cosell::http::PacerConfig;
use cosell::sandbox::{Sandbox, Service};
use cosell::sandboxed::{Sandboxed, StoreChoice};
use cosell::sync::store::{AuditOutcome, AuditQuery, Direction};
use cosell::sync::{Action, Schedule};
use serde_json::{Value, json};

mod heap;
mod scale;

#[global_allocator]
static ALLOCATOR: heap::EngineHeap = heap::EngineHeap;

type BoxResult<T> = Result<T, Box<dyn Error>>;

/// How long any phase may take before the bench gives up.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Memory,
    Sqlite,
}

/// Sync benchmark against the embedded sandbox.
#[derive(Debug, Parser)]
struct Args {
    /// Referrals per phase (each direction, and the latency phase).
    #[arg(long, default_value_t = 500)]
    referrals: usize,
    /// The state store.
    #[arg(long, value_enum, default_value = "memory")]
    store: StoreKind,
    /// Referrals per burst in the latency phase.
    #[arg(long, default_value_t = 10)]
    burst: usize,
    /// Pause between bursts in the latency phase (ms).
    #[arg(long, default_value_t = 200)]
    burst_interval_ms: u64,
    /// The engine's inbox interval in the latency phase (ms; the service default is 250).
    #[arg(long)]
    inbox_ms: Option<u64>,
    /// Also print every API operation counted, per phase.
    #[arg(long)]
    verbose: bool,
    /// Run the scale bench instead: a backfill of N referrals under the service-protection
    /// limits, then live traffic at N links, for each N given (e.g. `1000,10000,100000`).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Scale bench: live records each way at N links.
    #[arg(long, default_value_t = 500)]
    live: usize,
    /// Scale bench: the limits' window (ms; Dataverse's is 300 s, budgets scale with it).
    #[arg(long, default_value_t = 3000)]
    window_ms: u64,
    /// Scale bench: emulated execution time of one Dataverse operation (µs).
    #[arg(long, default_value_t = 2000)]
    operation_us: u64,
    /// Scale bench: the backfill pacer's `target` (fraction of each budget live traffic may fill).
    #[arg(long, default_value_t = PacerConfig::default().target)]
    pacer_target: f64,
    /// Scale bench: the backfill pacer's `background_share` (fraction the backfill may fill).
    #[arg(long, default_value_t = PacerConfig::default().background_share)]
    background_share: f64,
    /// Scale bench: backfill lanes (`EngineConfig::backfill_lanes`).
    #[arg(long, default_value_t = cosell::sync::BACKFILL_LANES)]
    lanes: usize,
    /// Scale bench: the backfill's pacer ignores the emulator's `x-ms-ratelimit-*` hints and
    /// charges its measured round trips (as a client must when its budgets are not the
    /// environment's own).
    #[arg(long)]
    no_pacing_hints: bool,
    /// Scale bench: during the backfill, a new referral by webhook every this many ms, handled
    /// by the backfilling engine (live priority, same pacer); its latency is reported and its
    /// requests are left out of the backfill's cost. 0: none.
    #[arg(long, default_value_t = 5000)]
    probe_every_ms: u64,
}

/// Requests per service during one phase, and by operation.
#[derive(Debug, Default)]
struct Calls {
    partner_center: u64,
    dataverse: u64,
    entra: u64,
    writes: u64,
    by_operation: BTreeMap<(Service, String, String), u64>,
}

impl Calls {
    fn read(s: &Sandboxed) -> Calls {
        let by_operation = s.sandbox.faults().counters();
        let mut calls = Calls::default();
        for ((service, method, _), n) in &by_operation {
            match service {
                Service::Referrals | Service::Webhooks => calls.partner_center += n,
                Service::Dataverse => calls.dataverse += n,
                Service::Entra => calls.entra += n,
            }
            // A write to either service (`$batch` counts: the engine batches writes only).
            if *service != Service::Entra && method != "GET" {
                calls.writes += n;
            }
        }
        calls.by_operation = by_operation;
        calls
    }

    fn per(&self, n: usize) -> (f64, f64, f64) {
        let n = n.max(1) as f64;
        (
            self.partner_center as f64 / n,
            self.dataverse as f64 / n,
            self.entra as f64 / n,
        )
    }
}

/// One measured phase.
#[derive(Debug)]
struct Throughput {
    records: usize,
    elapsed: Duration,
    calls: Calls,
    throttled: u64,
    failures: usize,
    /// When the last webhook was answered (PC → CRM only).
    delivered: Option<Duration>,
}

impl Throughput {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn reset(s: &Sandboxed) {
    s.sandbox.faults().reset_counters();
    s.sandbox.dataverse().reset_limit_windows();
}

fn throttled(s: &Sandboxed) -> u64 {
    let t = s.sandbox.dataverse().throttle_counts();
    t.requests + t.execution_time + t.concurrency
}

fn str_of<'a>(v: &'a Value, key: &str) -> BoxResult<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{key}` missing in {v}").into())
}

fn timestamp(v: &Value, key: &str) -> BoxResult<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(str_of(v, key)?)?.with_timezone(&Utc))
}

fn since(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

/// When the engine wrote each referral's CRM row (its `Created` audit entry towards the CRM).
async fn crm_written_at(
    s: &Sandboxed,
    direction: Direction,
) -> BoxResult<HashMap<String, DateTime<Utc>>> {
    let entries = s.store.audit(&AuditQuery::default()).await?;
    Ok(entries
        .into_iter()
        .filter(|e| e.direction == direction && e.outcome == AuditOutcome::Created)
        .filter_map(|e| e.referral_id.map(|r| (r, e.at)))
        .collect())
}

/// Where a throughput phase's work comes from.
#[derive(Debug, Clone, Copy)]
enum Feed {
    /// Webhook hints: `drain_inbox`, records to the CRM.
    Inbox,
    /// The CRM change feed: `pull_crm_changes`, records to Partner Center.
    ChangeFeed,
}

/// Runs `feed`'s pass until `n` more records are synced or failed; returns the failures.
/// Failed records count as done (they are dead-lettered and reported), so a bad record cannot
/// hang the bench.
async fn drive(s: &Sandboxed, feed: Feed, n: usize, started: Instant) -> BoxResult<usize> {
    let synced = |s: &Sandboxed| match feed {
        Feed::Inbox => s.engine.stats().synced_to_crm,
        Feed::ChangeFeed => s.engine.stats().synced_to_partner_center,
    };
    let target = synced(s) + n as u64;
    let mut failures = 0;
    while synced(s) + (failures as u64) < target {
        let report = match feed {
            Feed::Inbox => s.engine.drain_inbox().await?,
            Feed::ChangeFeed => s.engine.pull_crm_changes().await?,
        };
        failures += report.count(Action::Failed);
        if report.outcomes.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if started.elapsed() > PHASE_TIMEOUT {
            return Err(format!("{feed:?}: timed out").into());
        }
    }
    Ok(failures)
}

/// Phase 1: N incoming referrals, delivered by webhook, drained until all are in the CRM.
async fn pc_to_crm(s: &Sandboxed, n: usize) -> BoxResult<Throughput> {
    let pc = s.sandbox.partner_center();
    reset(s);
    let throttled_before = throttled(s);
    let started = Instant::now();
    let mut first = None;
    let mut ids = HashSet::with_capacity(n);
    for i in 0..n {
        let r = pc.create_incoming_referral(json!({"name": format!("Bench incoming {i}")}))?;
        first.get_or_insert(timestamp(&r, "createdDateTime")?);
        ids.insert(str_of(&r, "id")?.to_string());
    }
    let first = first.ok_or("no referral created")?;
    let failures = drive(s, Feed::Inbox, n, started).await?;
    let calls = Calls::read(s);
    let delivered = pc
        .deliveries()
        .into_iter()
        .filter(|d| ids.contains(&d.resource_id))
        .filter_map(|d| {
            d.attempts
                .iter()
                .find(|a| a.status == Some(200))
                .map(|a| a.at)
        })
        .max()
        .map(|t| since(first, t));
    let written = crm_written_at(s, Direction::ToCrm).await?;
    let last = ids
        .iter()
        .filter_map(|id| written.get(id))
        .max()
        .copied()
        .ok_or("no CRM row written")?;
    Ok(Throughput {
        records: n,
        elapsed: since(first, last),
        calls,
        throttled: throttled(s) - throttled_before,
        failures,
        delivered,
    })
}

/// Phase 2: N opportunities marked for sync, pulled from the change feed until all are
/// referrals.
async fn crm_to_pc(s: &Sandboxed, n: usize) -> BoxResult<Throughput> {
    for i in 0..n {
        s.seed_co_sell_opportunity(&format!("Bench opportunity {i}"))?;
    }
    reset(s);
    let throttled_before = throttled(s);
    let first = Utc::now();
    let failures = drive(s, Feed::ChangeFeed, n, Instant::now()).await?;
    let calls = Calls::read(s);
    let last = crm_written_at(s, Direction::ToPartnerCenter)
        .await?
        .values()
        .max()
        .copied()
        .ok_or("no referral created")?;
    Ok(Throughput {
        records: n,
        elapsed: since(first, last),
        calls,
        throttled: throttled(s) - throttled_before,
        failures,
        delivered: None,
    })
}

/// Phase 3: a full round after the sync; returns (outcomes by action, calls).
async fn echo_round(s: &Sandboxed) -> BoxResult<(BTreeMap<String, usize>, Calls)> {
    s.deliveries_settled().await;
    reset(s);
    let report = s.engine.run_once().await?;
    let mut actions = BTreeMap::new();
    for o in &report.outcomes {
        *actions.entry(format!("{:?}", o.action)).or_insert(0) += 1;
    }
    Ok((actions, Calls::read(s)))
}

/// Latency percentiles of one series.
#[derive(Debug)]
struct Percentiles {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn percentiles(mut v: Vec<Duration>) -> Option<Percentiles> {
    v.sort();
    let rank = |q: f64| {
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    Some(Percentiles {
        p50: rank(0.50),
        p99: rank(0.99),
        max: *v.last()?,
    })
}

#[derive(Debug)]
struct Latency {
    n: usize,
    schedule: Schedule,
    total: Percentiles,
    delivery: Percentiles,
    engine: Percentiles,
    elapsed: Duration,
    calls: Calls,
}

/// Phase 4: the engine running on its schedule while referrals arrive in bursts.
async fn latency(s: &Sandboxed, args: &Args) -> BoxResult<Latency> {
    let pc = s.sandbox.partner_center();
    let n = args.referrals;
    let mut schedule = Schedule::default();
    if let Some(ms) = args.inbox_ms {
        schedule.inbox = Duration::from_millis(ms);
    }
    pc.clear_deliveries();
    reset(s);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = s.engine.clone();
    let running = tokio::spawn(async move {
        engine
            .run(schedule, async {
                let _ = stopped.await;
            })
            .await
    });
    // Let the first full round (intents, inbox, change feed, reconcile) pass.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = s.engine.stats().synced_to_crm;
    let failed_before = s.engine.stats().failures;
    let started = Instant::now();
    let mut created: HashMap<String, DateTime<Utc>> = HashMap::with_capacity(n);
    let burst = args.burst.max(1);
    let mut i = 0;
    while i < n {
        for _ in 0..burst.min(n - i) {
            let r = pc.create_incoming_referral(json!({"name": format!("Bench latency {i}")}))?;
            created.insert(
                str_of(&r, "id")?.to_string(),
                timestamp(&r, "createdDateTime")?,
            );
            i += 1;
        }
        if i < n {
            tokio::time::sleep(Duration::from_millis(args.burst_interval_ms)).await;
        }
    }
    while s.engine.stats().synced_to_crm + (s.engine.stats().failures - failed_before)
        < base + n as u64
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if started.elapsed() > PHASE_TIMEOUT {
            return Err("latency: timed out".into());
        }
    }
    let elapsed = started.elapsed();
    let _ = stop.send(());
    running.await??;
    let calls = Calls::read(s);
    let written = crm_written_at(s, Direction::ToCrm).await?;
    let mut answered: HashMap<String, DateTime<Utc>> = HashMap::new();
    for d in pc.deliveries() {
        if d.event_name == "referral-created"
            && let Some(a) = d.attempts.iter().find(|a| a.status == Some(200))
        {
            answered.entry(d.resource_id).or_insert(a.at);
        }
    }
    let (mut total, mut delivery, mut engine) = (Vec::new(), Vec::new(), Vec::new());
    for (id, at) in &created {
        let done = *written
            .get(id)
            .ok_or_else(|| format!("referral {id} has no CRM row"))?;
        total.push(since(*at, done));
        if let Some(sent) = answered.get(id) {
            delivery.push(since(*at, *sent));
            engine.push(since(*sent, done));
        }
    }
    Ok(Latency {
        n,
        schedule,
        total: percentiles(total).ok_or("no latency measured")?,
        delivery: percentiles(delivery).ok_or("no delivery measured")?,
        engine: percentiles(engine).ok_or("no engine latency measured")?,
        elapsed,
        calls,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn print_operations(title: &str, calls: &Calls, n: usize) {
    println!("\n  {title}: requests by operation (per record)");
    for ((service, method, path), count) in &calls.by_operation {
        println!(
            "    {:<10} {:<6} {:<58} {:>7} {:>7.2}",
            service.to_string(),
            method,
            path,
            count,
            *count as f64 / n.max(1) as f64
        );
    }
}

fn main() -> BoxResult<()> {
    let args = Args::parse();
    // `COSELL_BENCH_HEAPPROF=<bytes>`: sample the engine's allocations about once per that many
    // bytes, to print where its heap was allocated (`COSELL_BENCH_DUMP`, see `scale.rs`).
    if let Some(every) = std::env::var("COSELL_BENCH_HEAPPROF")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        heap::sample_every(every);
    }
    // The emulators on a runtime of their own; the engine on one whose threads count as the
    // engine's heap (and the thread driving it).
    let emulators = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let engine = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(heap::mark_engine_thread)
        .build()?;
    if args.sizes.is_empty() {
        let sandbox = emulators.block_on(Sandbox::builder().start())?;
        heap::mark_engine_thread();
        return engine.block_on(classic(&args, sandbox));
    }
    let limits = scale::scaled_limits(
        Duration::from_millis(args.window_ms),
        Duration::from_micros(args.operation_us),
    );
    let setup = scale::Setup {
        limits: limits.clone(),
        shares: (args.pacer_target, args.background_share),
        lanes: args.lanes,
        live: args.live,
        hints: !args.no_pacing_hints,
        probe_every: (args.probe_every_ms > 0).then(|| Duration::from_millis(args.probe_every_ms)),
    };
    let dir = std::env::temp_dir().join(format!("cosell-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut results = Vec::new();
    for &n in &args.sizes {
        let sandbox = emulators.block_on(Sandbox::builder().start())?;
        heap::mark_engine_thread();
        let result = engine.block_on(scale::run_size(
            emulators.handle(),
            sandbox,
            n,
            &setup,
            &dir,
        ));
        results.push(result?);
    }
    // `COSELL_BENCH_KEEP=1` keeps the stores, to look inside them.
    if std::env::var_os("COSELL_BENCH_KEEP").is_some() {
        eprintln!("stores kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    scale::print(
        &results,
        &limits,
        args.live,
        (args.pacer_target, args.background_share),
        !args.no_pacing_hints,
    );
    Ok(())
}

/// The classic phases (one N, in-memory or SQLite store).
async fn classic(args: &Args, sandbox: Sandbox) -> BoxResult<()> {
    let n = args.referrals;
    let dir = std::env::temp_dir().join(format!("cosell-bench-{}", std::process::id()));
    let store = match args.store {
        StoreKind::Memory => StoreChoice::Memory,
        StoreKind::Sqlite => {
            std::fs::create_dir_all(&dir)?;
            StoreChoice::Sqlite(dir.join("state.sqlite"))
        }
    };
    // The emulator's windows are reset between phases, so the client does not pace itself.
    let s = Sandboxed::builder()
        .store(store)
        .dataverse_pacing(None)
        .start_with(sandbox)
        .await?;
    let cores = std::thread::available_parallelism().map_or(0, usize::from);

    let a = pc_to_crm(&s, n).await?;
    // A running service reads the change feed all along; catch its cursor up (the CRM rows
    // phase 1 wrote) so that phase 2 measures only the new opportunities.
    s.deliveries_settled().await;
    let catch_up = s.engine.pull_crm_changes().await?;
    let b = crm_to_pc(&s, n).await?;
    let (echo_actions, echo_calls) = echo_round(&s).await?;
    let l = latency(&s, args).await?;
    if args.store == StoreKind::Sqlite {
        let _ = std::fs::remove_dir_all(&dir);
    }

    println!(
        "cosell sync bench — N = {n} referrals per phase, store = {:?}, {cores} cores, engine parallelism {}",
        args.store,
        s.engine.config().parallelism
    );
    println!();
    println!(
        "{:<24} {:>8} {:>10} {:>11} {:>11} {:>9} {:>6} {:>6}",
        "phase", "records", "time", "records/s", "PC calls/r", "DV calls/r", "Entra", "429s"
    );
    for (name, t) in [("PC → CRM (webhooks)", &a), ("CRM → PC (change feed)", &b)] {
        let (p, d, e) = t.calls.per(t.records);
        println!(
            "{:<24} {:>8} {:>10} {:>11.1} {:>11.2} {:>9.2} {:>6.3} {:>6}",
            name,
            t.records,
            format!("{:.2} s", t.elapsed.as_secs_f64()),
            t.rate(),
            p,
            d,
            e,
            t.throttled
        );
    }
    println!(
        "failures: PC → CRM {}, CRM → PC {}; PC → CRM: last webhook answered after {}",
        a.failures,
        b.failures,
        a.delivered
            .map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
    );
    println!();
    let echoes: Vec<String> = echo_actions
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    println!(
        "echo round (run_once after the sync): {}; writes = {}; reads: PC {}, DV {}",
        echoes.join(", "),
        echo_calls.writes,
        echo_calls.partner_center,
        echo_calls.dataverse
    );
    println!();
    println!(
        "webhook → CRM latency: {} referrals in bursts of {} every {} ms, engine on its schedule (inbox every {} ms), {:.1} s",
        l.n,
        args.burst,
        args.burst_interval_ms,
        l.schedule.inbox.as_millis(),
        l.elapsed.as_secs_f64()
    );
    println!("{:<36} {:>10} {:>10} {:>10}", "", "p50", "p99", "max");
    for (name, p) in [
        ("created → CRM row written", &l.total),
        ("  created → webhook answered", &l.delivery),
        ("  webhook answered → CRM row", &l.engine),
    ] {
        println!(
            "{:<36} {:>10} {:>10} {:>10}",
            name,
            ms(p.p50),
            ms(p.p99),
            ms(p.max)
        );
    }
    let (p, d, e) = l.calls.per(l.n);
    println!("calls per record while running: PC {p:.2}, DV {d:.2}, Entra {e:.3}");
    if args.verbose {
        println!(
            "\n  change-feed catch-up after phase 1 (not timed): {} outcomes",
            catch_up.outcomes.len()
        );
        for o in &catch_up.outcomes {
            if !matches!(o.action, Action::Echo | Action::Unchanged) {
                println!("    {:?} {:?} {}", o.action, o.referral_id, o.detail);
            }
        }
        print_operations("PC → CRM", &a.calls, a.records);
        print_operations("CRM → PC", &b.calls, b.records);
        print_operations("echo round", &echo_calls, 1);
        print_operations("latency phase", &l.calls, l.n);
    }
    Ok(())
}
