//! A one-off backfill: every referral in Partner Center synced into the CRM, with a progress
//! bar. The first thing to run when cosell replaces the Power Automate solution on a tenant that
//! already has years of referrals.
//!
//! ```text
//! cargo run --release --example backfill -- --referrals 1000 --group 50
//! ```
//!
//! Against the embedded sandbox seeded with generated referrals (mixed directions, statuses,
//! countries and currencies). The listing follows `@odata.nextLink` page by page; the referrals
//! then go through `Engine::apply_referrals` a group at a time: those new to the CRM are written
//! together (for Dataverse a `$batch` with one change set per referral, so a group of 50 costs a
//! few requests), the others through `Engine::apply_referral`, several at a time. It is safe to
//! interrupt and run again: linked referrals whose eTag has not moved are skipped without a CRM
//! write, and failures land in the dead-letter list instead of stopping the run. Afterwards the
//! reconcile checkpoint is set so the running service continues from here.
//!
//! The sandbox CRM has every currency the generator uses; one referral from Microsoft in a
//! currency it lacks (NOK) is added to show the usual fix: it becomes a lead marked ✖ holding
//! everything but its currency and deal value, the run lists what to enable, the CRM admin
//! enables NOK and the dead-letter replay completes the lead.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::error::Error;
use std::time::{Duration, Instant};

use clap::Parser;
use cosell::sandbox::{Sandbox, Service};
use cosell::sandboxed::Sandboxed;
use cosell::sync::Action;
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Backfill every Partner Center referral into the CRM (against the sandbox)")]
struct Args {
    /// Generated referrals to seed in the emulated Partner Center.
    #[arg(long, default_value_t = 400)]
    referrals: usize,
    /// Referrals per batched group.
    #[arg(long, default_value_t = cosell::sync::DEFAULT_BACKFILL_GROUP)]
    group: usize,
    /// Seed for the generated data.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let s = Sandboxed::builder()
        .sandbox(Sandbox::builder().seed(args.seed))
        .webhooks(false)
        .start()
        .await?;
    s.sandbox.partner_center().seed_referrals(args.referrals);
    // A referral in a currency the CRM does not have.
    s.sandbox.partner_center().create_incoming_referral(json!({
        "name": "Nordic Freight AS - Route Planning",
        "customerProfile": {"name": "Nordic Freight AS",
                            "address": {"city": "Oslo", "state": "", "postalCode": "0150",
                                        "country": "NO"}},
        "details": {"currency": "NOK", "dealValue": 1_250_000},
    }))?;
    let started = Instant::now();

    // Phase 1: list everything (pages of 100, the nextLink followed by the client).
    let listing = ProgressBar::new_spinner().with_message("listing referrals");
    listing.enable_steady_tick(Duration::from_millis(100));
    let referrals: Vec<_> = s
        .partner_center
        .list_referrals()
        .into_stream()
        .inspect_ok(|_| listing.inc(1))
        .try_collect()
        .await?;
    listing.finish_with_message(format!("listed {} referrals", referrals.len()));

    // Phase 2: sync them a group at a time; per-referral order is the engine's job.
    let bar = ProgressBar::new(referrals.len() as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} syncing [{bar:40}] {pos}/{len} {per_sec} eta {eta} {msg}",
        )?
        .progress_chars("=> "),
    );
    let newest = referrals.iter().filter_map(|r| r.updated_date_time).max();
    let currency_of: HashMap<String, String> = referrals
        .iter()
        .filter_map(|r| {
            let currency = r.details.as_ref()?.currency.clone()?;
            Some((r.id.clone()?, currency))
        })
        .collect();
    let engine = &s.engine;
    let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let dataverse_before = s.sandbox.faults().calls(Service::Dataverse);
    for group in referrals.chunks(args.group.max(1)) {
        // An engine error (the state store failing) stops the run: continuing would sync
        // records whose links cannot be saved.
        let report = engine.apply_referrals(group.to_vec()).await?;
        for outcome in &report.outcomes {
            if outcome.action == Action::Failed {
                failures.push(outcome.clone());
                bar.set_message(format!("{} failed", failures.len()));
            }
            *by_action
                .entry(format!("{:?}", outcome.action))
                .or_default() += 1;
        }
        bar.inc(report.total() as u64);
    }
    bar.finish();
    let dataverse_used = s.sandbox.faults().calls(Service::Dataverse) - dataverse_before;

    // The running service's reconcile pass picks up from the newest change seen here.
    if let Some(t) = newest {
        engine.set_reconcile_checkpoint(t).await?;
    }

    let elapsed = started.elapsed().as_secs_f64();
    println!("\nBackfill finished in {elapsed:.1} s");
    println!(
        "   Dataverse requests: {dataverse_used} ({:.2} per referral)",
        dataverse_used as f64 / referrals.len().max(1) as f64
    );
    for (action, n) in &by_action {
        println!("   {action:<14} {n}");
    }
    // Failures grouped by reason: one line per thing to fix, not one per referral.
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &failures {
        *reasons.entry(f.detail.as_str()).or_default() += 1;
    }
    for (reason, n) in &reasons {
        println!("   failed ×{n:<4} {reason}");
    }

    // The usual fix in a real org: enable the currencies the referrals use (their leads are in
    // the CRM already, marked ✖). Then the dead letters are replayed, and only what failed is
    // retried.
    let dv = s.sandbox.dataverse();
    // The currencies of the failed referrals that the CRM does not have.
    let missing: BTreeSet<&str> = failures
        .iter()
        .filter_map(|f| currency_of.get(f.referral_id.as_deref()?))
        .map(String::as_str)
        .filter(|code| dv.currency_id(code).is_none())
        .collect();
    if !missing.is_empty() {
        let list: Vec<&str> = missing.iter().copied().collect();
        println!(
            "\nThe CRM admin enables {}; replaying the dead letters",
            list.join(", ")
        );
        for code in &missing {
            let (name, symbol, rate) = match *code {
                "NOK" => ("Norwegian Krone", "kr", 10.8),
                other => (other, other, 1.0),
            };
            dv.insert_row(
                "transactioncurrency",
                json!({"isocurrencycode": code, "currencyname": name, "currencysymbol": symbol,
                       "exchangerate": rate, "currencyprecision": 2}),
            )?;
        }
        let replay = engine.replay_dead_letters().await?;
        let failing = replay.count(Action::Failed);
        println!(
            "   replayed {}: {} now synced, {} still failing",
            replay.total(),
            replay.total() - failing,
            failing
        );
    }
    println!(
        "\n   CRM now holds {} opportunities, {} leads, {} accounts, {} contacts",
        dv.count("opportunity"),
        dv.count("lead"),
        dv.count("account"),
        dv.count("contact")
    );
    let faults = s.sandbox.faults();
    println!(
        "   API calls: Partner Center {}, Dataverse {}, Entra ID {}",
        faults.calls(Service::Referrals),
        faults.calls(Service::Dataverse),
        faults.calls(Service::Entra)
    );
    println!(
        "   dead letters: {} (replay with Engine::replay_dead_letters after a fix)",
        s.store.dead_letters().await?.len()
    );
    Ok(())
}
