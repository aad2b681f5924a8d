//! The per-record paths of `sync.rs`, and the store's point lookups, on stores already holding
//! many links: the cost of one record must not grow with the number of pairs.
//!
//! ```text
//! cargo bench --bench scale                          # 1,000 and 100,000 links
//! COSELL_BENCH_LINKS=100000 cargo bench --bench scale -- sqlite
//! ```
//!
//! For each size and store (in memory, SQLite), the store is filled straight through
//! `StateStore::commit` (1,000 realistic links per transaction, a dead letter per 100 links, a
//! create intent per 1,000), then the groups run under `{store}/{n}_links/…`:
//!
//! - `lookup/{link_by_referral, link_by_crm, links_by_engagement, intent, dead_letter,
//!   link_count}`: one point lookup of a key spread over the whole range;
//! - `pc_to_crm/*`, `crm_to_pc/*`, `echo/*`: the engine's paths, as in `sync.rs`, on a fresh
//!   sandbox whose engine uses the filled store.
//!
//! The fill's time, the process's RSS after it and the SQLite file's size are printed first.

mod paths;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cosell::sandboxed::StoreChoice;
use cosell::sync::store::{MemoryStore, SqliteStore, StateStore};
use criterion::{Criterion, criterion_group, criterion_main};
use paths::fill::{Filled, fill, rss_bytes};
use paths::{BoxResult, bench_paths};
use tokio::runtime::Runtime;

/// The store sizes to measure: `COSELL_BENCH_LINKS` (comma-separated), else 1,000 and 100,000.
fn sizes() -> BoxResult<Vec<usize>> {
    match std::env::var("COSELL_BENCH_LINKS") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .replace('_', "")
                    .parse()
                    .map_err(|e| format!("COSELL_BENCH_LINKS `{n}`: {e}").into())
            })
            .collect(),
        Err(_) => Ok(vec![1_000, 100_000]),
    }
}

/// The next of `keys`, round and round.
fn cycle<T: Clone>(keys: &[T], at: &AtomicUsize) -> T {
    keys[at.fetch_add(1, Ordering::Relaxed) % keys.len()].clone()
}

fn bench_lookups(
    c: &mut Criterion,
    rt: &Runtime,
    name: &str,
    store: &Arc<dyn StateStore>,
    filled: &Filled,
) {
    let mut g = c.benchmark_group(format!("{name}/lookup"));
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let at = AtomicUsize::new(0);
    g.bench_function("link_by_referral", |b| {
        b.to_async(rt).iter(|| {
            let id = cycle(&filled.referrals, &at);
            async move { black_box(store.link_by_referral(&id).await.is_ok()) }
        });
    });
    g.bench_function("link_by_crm", |b| {
        b.to_async(rt).iter(|| {
            let (entity, id) = cycle(&filled.crm, &at);
            async move { black_box(store.link_by_crm(&entity, &id).await.is_ok()) }
        });
    });
    g.bench_function("links_by_engagement", |b| {
        b.to_async(rt).iter(|| {
            let id = cycle(&filled.engagements, &at);
            async move { black_box(store.links_by_engagement(&id).await.is_ok()) }
        });
    });
    g.bench_function("intent", |b| {
        b.to_async(rt).iter(|| {
            let (entity, id) = cycle(&filled.intents, &at);
            async move { black_box(store.intent(&entity, &id).await.is_ok()) }
        });
    });
    g.bench_function("dead_letter", |b| {
        b.to_async(rt).iter(|| {
            let key = cycle(&filled.dead_letters, &at);
            async move { black_box(store.dead_letter(&key).await.is_ok()) }
        });
    });
    g.bench_function("link_count", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(store.link_count().await.is_ok()) });
    });
    g.finish();
}

/// Checks the lookups find what the fill wrote before they are timed.
async fn check_lookups(store: &dyn StateStore, filled: &Filled) -> BoxResult<()> {
    let found = store
        .link_by_referral(&filled.referrals[0])
        .await?
        .is_some()
        && store
            .link_by_crm(&filled.crm[0].0, &filled.crm[0].1)
            .await?
            .is_some()
        && store
            .links_by_engagement(&filled.engagements[0])
            .await?
            .len()
            == 1
        && store
            .intent(&filled.intents[0].0, &filled.intents[0].1)
            .await?
            .is_some()
        && store.dead_letter(&filled.dead_letters[0]).await?.is_some()
        && store.link_count().await? == filled.links as u64;
    if found {
        Ok(())
    } else {
        Err("a lookup missed what the fill wrote".into())
    }
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn at_scale(c: &mut Criterion) {
    let result = (|| -> BoxResult<()> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        for n in sizes()? {
            for kind in ["memory", "sqlite"] {
                let dir = tempfile::tempdir()?;
                let path = dir.path().join("state.sqlite");
                let store: Arc<dyn StateStore> = match kind {
                    "memory" => Arc::new(MemoryStore::new()),
                    _ => Arc::new(rt.block_on(SqliteStore::open(&path))?),
                };
                let filled = rt.block_on(fill(store.as_ref(), n))?;
                rt.block_on(check_lookups(store.as_ref(), &filled))?;
                let size = match kind {
                    "sqlite" => {
                        let bytes =
                            file_len(&path) + file_len(&dir.path().join("state.sqlite-wal"));
                        format!(", file + WAL {} bytes per link", bytes / n as u64)
                    }
                    _ => String::new(),
                };
                eprintln!(
                    "{kind}: {n} links filled in {:.2?}, process RSS {} MB{size}",
                    filled.took,
                    rss_bytes().map_or("?".into(), |b| (b / (1024 * 1024)).to_string()),
                );
                let name = format!("{kind}/{n}_links");
                bench_lookups(c, &rt, &name, &store, &filled);
                bench_paths(c, &rt, &name, StoreChoice::Shared(store.clone()))?;
                drop(store);
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("benches/scale: {e}");
        std::process::exit(1);
    }
}

criterion_group!(benches, at_scale);
criterion_main!(benches);
