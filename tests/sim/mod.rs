//! The deterministic simulation of issue 9: one seed = one in-process sandbox, one state store,
//! a seeded workload from both sides with seeded faults and crashes, then fault-free
//! quiescence and the invariants, checked on the emulators' own state.
//!
//! - [`crash`]: the crash-injecting transport and store wrappers.
//! - [`world`]: sandbox + store + fault profile + the engine factory (one engine per process).
//! - [`history`]: what users wrote, what both sides were seen agreeing on, the event log.
//! - [`pairs`]: the seed's deals and how to find their records in the emulators.
//! - [`workload`]: the users, the webhooks, the passes, restarts.
//! - [`check`]: the invariants.

pub(crate) mod check;
pub(crate) mod crash;
pub(crate) mod history;
pub(crate) mod pairs;
pub(crate) mod workload;
pub(crate) mod world;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use check::Violation;
use cosell::sync::store::{AuditQuery, StateStore};
use workload::{PassKind, Sim};
use world::FaultProfile;

/// The most fault-free rounds quiescence may take.
const MAX_QUIET_ROUNDS: usize = 8;

/// What one seed came to.
#[derive(Debug)]
pub(crate) struct SeedRun {
    pub(crate) seed: u64,
    pub(crate) steps: usize,
    pub(crate) pairs: usize,
    pub(crate) crashes: usize,
    pub(crate) processes: u32,
    pub(crate) profile: FaultProfile,
    pub(crate) violations: Vec<Violation>,
    /// The engine's requests, in order (for the determinism check).
    pub(crate) trace: Vec<String>,
    pub(crate) events: Vec<String>,
    pub(crate) elapsed: Duration,
    report: String,
}

impl SeedRun {
    pub(crate) fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The failure report: how to replay, what broke, and the history of the pairs concerned.
    pub(crate) fn report(&self) -> &str {
        &self.report
    }
}

/// One full round of every pass, as `Engine::run` does them over time.
async fn full_round(sim: &mut Sim) {
    for kind in [
        PassKind::ResolveIntents,
        PassKind::DrainInbox,
        PassKind::PullCrmChanges,
        PassKind::Reconcile,
        PassKind::ReplayDeadLetters,
    ] {
        sim.pass(kind).await;
    }
}

/// Runs one seed on a current-thread runtime with paused time.
pub(crate) fn run_seed(seed: u64) -> SeedRun {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let mut run = rt.block_on(simulate(seed));
    run.elapsed = started.elapsed();
    run
}

async fn simulate(seed: u64) -> SeedRun {
    let steps = StdRng::seed_from_u64(seed).random_range(20..=50);
    let mut sim = Sim::new(seed);
    sim.run_workload(steps).await;

    // Quiescence: no faults, no crashes, late webhooks delivered; rounds until one writes
    // nothing on either emulator.
    sim.history.set_step(steps);
    sim.history.event("---- faults off, quiescence");
    sim.world.profile = FaultProfile::NONE;
    sim.world.sandbox.faults().clear();
    sim.world.crasher.arm(None);
    sim.world.crasher.clear_hook();
    sim.flush_hints().await;
    let mut quiet = false;
    for _ in 0..MAX_QUIET_ROUNDS {
        let before = sim.world.writes();
        full_round(&mut sim).await;
        if sim.world.writes() == before {
            quiet = true;
            break;
        }
    }
    // (f): a "write" is any POST/PATCH/PUT/DELETE either emulator receives, refused ones
    // included: an engine that retries a write it can never make is not idle.
    sim.history.event("---- idle round");
    let before = sim.world.write_counters();
    full_round(&mut sim).await;
    let after = sim.world.write_counters();
    let idle: Vec<String> = after.into_iter().filter(|c| !before.contains(c)).collect();
    let violations = check::check(&sim, quiet, &idle).await;

    let mut run = SeedRun {
        seed,
        steps,
        pairs: sim.pairs.len(),
        crashes: sim.crashes().len(),
        processes: sim.world.processes,
        profile: sim.world.profile,
        violations,
        trace: sim.world.crasher.trace(),
        events: sim.history.events(),
        elapsed: Duration::ZERO,
        report: String::new(),
    };
    if !run.passed() {
        run.report = failure_report(&sim, &run).await;
    }
    run
}

async fn failure_report(sim: &Sim, run: &SeedRun) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "seed {} FAILED ({} steps, {} pairs, {} crash(es)). Replay:\n    COSELL_SIM_SEED={} cargo test --test simulation -- --nocapture",
        run.seed, run.steps, run.pairs, run.crashes, run.seed
    );
    for v in &run.violations {
        let _ = writeln!(s, "  ✗ {v}");
    }
    let mut pairs: Vec<usize> = run.violations.iter().filter_map(|v| v.pair).collect();
    pairs.sort_unstable();
    pairs.dedup();
    for p in pairs {
        let pair = &sim.pairs[p];
        let _ = writeln!(s, "  history of pair {p} ({}):", pair.label);
        let tag = format!("pair {p}:");
        for e in run.events.iter().filter(|e| e.contains(&tag)) {
            let _ = writeln!(s, "    {e}");
        }
        // The engine's own account of the pair (its audit trail, oldest first).
        let referral = pairs::find(&sim.world, pair)
            .referral()
            .and_then(|r| r["id"].as_str().map(str::to_string));
        if let Some(referral_id) = referral {
            let query = AuditQuery {
                referral_id: Some(referral_id),
                ..AuditQuery::default()
            };
            let mut audit = sim.world.store.audit(&query).await.unwrap_or_default();
            audit.reverse();
            let _ = writeln!(s, "  engine audit of pair {p}:");
            for a in audit.iter().take(40) {
                let conflicts = if a.conflicts.is_empty() {
                    String::new()
                } else {
                    format!(" [conflicts: {}]", a.conflicts.join(", "))
                };
                let message: String = a.message.chars().take(160).collect();
                let _ = writeln!(
                    s,
                    "    {:?} {:?}: {message}{conflicts}",
                    a.direction, a.outcome
                );
            }
        }
    }
    if !sim.crashes().is_empty() {
        let _ = writeln!(s, "  crashes:");
        for c in sim.crashes() {
            let _ = writeln!(s, "    {c}");
        }
    }
    s
}
