//! The deterministic simulation (issue 9): seeded workloads from both sides, seeded faults on
//! every service, crashes at seeded requests and commits with a rebuilt engine on the same
//! store, then fault-free quiescence and invariants checked against the emulators' own state.
//! Everything runs in process (no socket) on one thread with paused time, so a seed replays
//! exactly.
//!
//! ```text
//! cargo test --test simulation                                     # 500 seeds from 0
//! COSELL_SIM_SEEDS=5000 COSELL_SIM_START=10000 cargo test --test simulation --release
//! COSELL_SIM_SEED=1234 cargo test --test simulation -- --nocapture # one seed, full log
//! ```
//!
//! The engine is driven only through its public API (`Engine::new`, the passes, the
//! `StateStore` trait), so the harness outlives changes to the engine's internals. See
//! `tests/sim/` for the parts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim;

use std::time::Instant;

/// Seeds that found bugs: they always run, whatever the range. One per engine behaviour found
/// on the engine of 2026-12-01 (see the replay log of each for the story):
const REGRESSION_SEEDS: &[u64] = &[
    34,  // a seller-qualified lead's opportunity lacks the co-sell columns: "visibility withdrawn"
    0,   // lead → opportunity on acceptance mixes the lead's `subject` into the opportunity upsert
    5,   // writes to a Lost opportunity (read-only in Dataverse), every round
    12,  // writes to a Won opportunity, every round
    10,  // writes to a disqualified lead, every round
    16,  // CRM edits PATCHed to a Closed/Won referral (terminal), every round
    63,  // opportunity closed before its referral was linked: identity never written back
    248, // partial write, base not committed: a later single-sided edit loses to ownership
    59,  // adopt takes the current referral as base: Partner Center edits before it are reverted
    213, // a qualified lead stays linked: the opportunity is upserted from the lead's values
    81,  // both sides closed differently: a terminal-state conflict dead-letters
    27,  // a seller-qualified co-sell opportunity has no solution: refused as co-sell
    198, // a dead letter replayed on an unchanged eTag is cleared: the CRM win never syncs
    185, // after a lost link commit, the existing lead is overwritten from the referral
    // Found in the redesigned engine while it was being written:
    2,    // a closed referral cannot take a CRM edit made before the close (checker: frozen)
    30,   // our own reopen of a won opportunity, cut short, read as the seller reopening it
    25,   // the opportunity created for a lead, not yet closed, read as the seller's Active
    92,   // a crash between our reopen and its record: the open row read as the seller's edit
    312,  // a create found after a lost answer taken to hold its solutions: they read as removed
    89,   // a status the seller set after seeing the close was overridden by Partner Center's
    35,   // a seller's edit of the lead during the pass was lost when we made the opportunity
    1592, // an interim-state flag left by a failed pass on the lead masked the seller's opportunity
    1116, // a pending create looked up in the lead table after the referral moved on: upserted again
    521,  // the opportunity our QualifyLead made read as the seller's acceptance
    1208, // a lost-as-cancelled opportunity read as Lost, not as the Declined it stands for
    687,  // our reopen of an adopted opportunity not recognised (the link still on the lead)
    973,  // our conversion's answer lost: its opportunity read as the seller's acceptance
    4619, // a seller's Lost on the opportunity taken for our interim state (only an open one is)
    7349, // a reconcile's listed copy, older than our own later write, read as Microsoft's edit
    // Found with Microsoft's decisions told in the CRM (invariant g):
    37, // Microsoft's decline drained before our referral's create: the decision was dropped
    // Found with updates written without a read (issue 15):
    24, // a blind write's 412 redone as a CRM echo: the referral's change never written (idle loop)
    383, // the same on a lead: Partner Center's notes lost
    // Found after backfill lanes (older bugs; the lanes only moved the faults onto 182):
    182,  // a referral patch resent after its lost answer got 412: the landed write undone
    539,  // the same: the pair put back as before the write, a later PC edit lost to the CRM
    734,  // the same (a later Partner Center write lost to an earlier CRM one)
    724,  // the outcome columns written blind after a referral-only write: a seller's edit as echo
    1736, // the link feed's first read only learned a seller's solution on a pair in sync: lost
    1781, // (in this fix) a 412 taken for our landed patch with Microsoft's CRM id new: never synced
];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn run_and_report(seeds: &[u64], verbose: bool) -> Vec<sim::SeedRun> {
    let started = Instant::now();
    let mut failed = Vec::new();
    for &seed in seeds {
        let run = sim::run_seed(seed);
        if verbose {
            println!(
                "seed {seed}: {} steps, {} pairs, {} crash(es), {} process(es), faults {:?}, {:?}",
                run.steps, run.pairs, run.crashes, run.processes, run.profile, run.elapsed
            );
            for e in &run.events {
                println!("  {e}");
            }
        }
        if !run.passed() {
            eprintln!("{}", run.report());
            failed.push(run);
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "simulation: {} seed(s) in {elapsed:.1?} ({:.0?} per seed), {} failed",
        seeds.len(),
        elapsed / u32::try_from(seeds.len().max(1)).unwrap_or(1),
        failed.len()
    );
    failed
}

/// A violation's kind: its invariant and detail with ids, numbers and quoted values blanked,
/// so one engine behaviour seen in many seeds counts once.
fn signature(v: &sim::check::Violation) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for word in v.detail.split(' ') {
        let w = if quoted || word.starts_with('"') {
            quoted = !(word.ends_with('"') && (word.len() > 1 || quoted));
            "…"
        } else if word.chars().any(|c| c.is_ascii_digit()) {
            "#"
        } else {
            word
        };
        let repeated = (w == "…" && out.ends_with('…')) || (w == "#" && out.ends_with('#'));
        if !repeated {
            out.push_str(w);
            out.push(' ');
        }
    }
    let detail: String = out.trim_end().chars().take(140).collect();
    format!("{}: {detail}", v.invariant)
}

fn summary(failed: &[sim::SeedRun]) -> String {
    let mut kinds: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for run in failed {
        for v in &run.violations {
            let seeds = kinds.entry(signature(v)).or_default();
            if seeds.last() != Some(&run.seed) {
                seeds.push(run.seed);
            }
        }
    }
    kinds
        .iter()
        .map(|(kind, seeds)| {
            let shown: Vec<String> = seeds.iter().take(6).map(u64::to_string).collect();
            format!(
                "  [{} seed(s), e.g. {}] {kind}",
                seeds.len(),
                shown.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `COSELL_SIM_SEED` runs one seed verbosely; otherwise `COSELL_SIM_SEEDS` seeds (default 500)
/// from `COSELL_SIM_START` (default 0).
#[test]
fn simulation() {
    let (seeds, verbose): (Vec<u64>, bool) = match env_u64("COSELL_SIM_SEED") {
        Some(seed) => (vec![seed], true),
        None => {
            let start = env_u64("COSELL_SIM_START").unwrap_or(0);
            let n = env_u64("COSELL_SIM_SEEDS").unwrap_or(500);
            ((start..start + n).collect(), false)
        }
    };
    let failed = run_and_report(&seeds, verbose);
    assert!(
        failed.is_empty(),
        "{} of {} seed(s) broke an invariant:\n{}\nreplay one with COSELL_SIM_SEED=<seed> cargo test --test simulation -- --nocapture",
        failed.len(),
        seeds.len(),
        summary(&failed)
    );
}

#[test]
fn regression_seeds() {
    let failed = run_and_report(REGRESSION_SEEDS, false);
    assert!(
        failed.is_empty(),
        "regression seeds failed:\n{}",
        summary(&failed)
    );
}

/// The same seed twice: the same requests in the same order and the same history.
#[test]
fn a_seed_replays_identically() {
    // Fault-free, faulty, crashing (59: two crashes), faulty with lost answers (248).
    for seed in [3, 17, 59, 248] {
        let (a, b) = (sim::run_seed(seed), sim::run_seed(seed));
        assert_eq!(
            a.trace, b.trace,
            "seed {seed}: the engine's requests differ"
        );
        assert_eq!(a.events, b.events, "seed {seed}: the histories differ");
    }
}
