//! The engine's per-record paths, timed by `sync.rs` on an empty store and by `scale.rs` on
//! stores already holding many links.

// Each bench target uses part of this module.
#![allow(dead_code, unreachable_pub)]

pub mod fill;

use std::error::Error;
use std::hint::black_box;
use std::time::Duration;

use cosell::mapping::RecordKind;
use cosell::partner_center::models::Referral;
use cosell::sandbox::dataverse::ServiceLimits;
use cosell::sandboxed::{Sandboxed, StoreChoice};
use cosell::sync::{Action, Outcome};
use criterion::{BatchSize, Criterion};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

/// What the benches return.
pub type BoxResult<T> = Result<T, Box<dyn Error>>;

/// An incoming referral created on Microsoft's side, as the engine would read it.
fn new_referral(s: &Sandboxed) -> BoxResult<Referral> {
    let v = s
        .sandbox
        .partner_center()
        .create_incoming_referral(json!({"name": "Bench referral"}))?;
    Ok(serde_json::from_value(v)?)
}

fn id_of(v: &Value, key: &str) -> BoxResult<String> {
    Ok(v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{key}` missing"))?
        .to_string())
}

fn expect(outcome: &Outcome, action: Action) -> BoxResult<()> {
    if outcome.action == action {
        Ok(())
    } else {
        Err(format!("expected {action:?}, got {outcome:?}").into())
    }
}

/// Times the per-record paths on a fresh sandbox whose engine uses `store`, under groups
/// named `{name}/pc_to_crm`, `{name}/crm_to_pc` and `{name}/echo`.
pub fn bench_paths(
    c: &mut Criterion,
    rt: &Runtime,
    name: &str,
    store: StoreChoice,
) -> BoxResult<()> {
    let s = rt.block_on(
        Sandboxed::builder()
            .store(store)
            .webhooks(false)
            // The emulator's limits are off for thousands of iterations; so is the client's pacing.
            .dataverse_pacing(None)
            .start(),
    )?;
    s.sandbox.dataverse().set_limits(ServiceLimits::unlimited());
    let engine = s.engine.clone();

    // Check each path does what its name says before timing it.
    let linked = new_referral(&s)?;
    let linked_id = linked.id.clone().ok_or("referral without an id")?;
    expect(
        &rt.block_on(engine.apply_referral(linked.clone()))?,
        Action::CreatedInCrm,
    )?;
    expect(
        &rt.block_on(engine.apply_referral(linked.clone()))?,
        Action::Unchanged,
    )?;
    expect(
        &rt.block_on(engine.sync_referral(&linked_id))?,
        Action::Unchanged,
    )?;
    let link = rt
        .block_on(s.store.link_by_referral(&linked_id))?
        .ok_or("no link")?;
    expect(
        &rt.block_on(engine.reconcile_link(link.clone()))?,
        Action::Echo,
    )?;
    let opportunity = s.seed_co_sell_opportunity("Bench opportunity")?.to_string();
    expect(
        &rt.block_on(engine.sync_crm_record(RecordKind::Opportunity, &opportunity))?,
        Action::CreatedReferral,
    )?;

    let mut g = c.benchmark_group(format!("{name}/pc_to_crm"));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("apply_new_referral", |b| {
        b.to_async(rt).iter_batched(
            || new_referral(&s).map_err(|e| e.to_string()),
            |r| {
                let e = engine.clone();
                async move {
                    match r {
                        Ok(r) => black_box(
                            Box::pin(e.apply_referral(r))
                                .await
                                .map_err(|e| e.to_string()),
                        ),
                        Err(e) => Err(e),
                    }
                }
            },
            BatchSize::SmallInput,
        );
    });
    g.bench_function("sync_new_referral", |b| {
        b.to_async(rt).iter_batched(
            || {
                s.sandbox
                    .partner_center()
                    .create_incoming_referral(json!({"name": "Bench referral"}))
                    .map_err(|e| e.to_string())
                    .and_then(|v| id_of(&v, "id").map_err(|e| e.to_string()))
            },
            |id| {
                let e = engine.clone();
                async move {
                    match id {
                        Ok(id) => black_box(e.sync_referral(&id).await.map_err(|e| e.to_string())),
                        Err(e) => Err(e),
                    }
                }
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();

    let mut g = c.benchmark_group(format!("{name}/crm_to_pc"));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("sync_new_opportunity", |b| {
        b.to_async(rt).iter_batched(
            || {
                s.seed_co_sell_opportunity("Bench opportunity")
                    .map(|id| id.to_string())
                    .map_err(|e| e.to_string())
            },
            |id| {
                let e = engine.clone();
                async move {
                    match id {
                        Ok(id) => black_box(
                            e.sync_crm_record(RecordKind::Opportunity, &id)
                                .await
                                .map_err(|e| e.to_string()),
                        ),
                        Err(e) => Err(e),
                    }
                }
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();

    let mut g = c.benchmark_group(format!("{name}/echo"));
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("apply_unchanged", |b| {
        b.to_async(rt).iter(|| async {
            black_box(
                Box::pin(engine.apply_referral(linked.clone()))
                    .await
                    .is_ok(),
            )
        });
    });
    g.bench_function("sync_unchanged", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(engine.sync_referral(&linked_id).await.is_ok()) });
    });
    g.bench_function("reconcile_link", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(engine.reconcile_link(link.clone()).await.is_ok()) });
    });
    g.finish();
    Ok(())
}
