//! Issue 15: "SQLite < 1 KB per link", measured on a store the engine itself wrote. A backfill
//! of generated referrals into the Dataverse emulator (links with their target snapshots,
//! eTags and times, the audit entry of each created pair), then the live engine's first read
//! of the CRM feeds (our own writes coming back, the opportunities' solution link rows as CRM
//! children), then a little live traffic each way: the store's file over the links it holds.
//!
//! `COSELL_STORE_SIZE_KEEP=<dir>` keeps the database there (for `dbstat`);
//! `COSELL_STORE_SIZE_REFERRALS=<n>` backfills n referrals instead of [`REFERRALS`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cosell::http::RetryPolicy;
use cosell::sandbox::Sandbox;
use cosell::sandboxed::{Sandboxed, StoreChoice};
use cosell::sync::store::{SqliteStore, StateStore};
use serde_json::json;

/// The database file and its `-wal` and `-shm` files.
fn file_bytes(path: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(&p).map_or(0, |m| m.len())
        })
        .sum()
}

/// Referrals backfilled: enough that the fixed cost of an empty store (its schema's pages)
/// is under 5 % of the total, few enough to run in seconds in a debug build.
const REFERRALS: usize = 2_000;

/// Live records each way after the backfill.
const LIVE: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_the_engine_wrote_takes_under_a_kilobyte_per_link() {
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("COSELL_STORE_SIZE_KEEP").map(std::path::PathBuf::from);
    let db = keep
        .as_deref()
        .unwrap_or(dir.path())
        .join("state-size.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(&p);
    }
    let store = Arc::new(SqliteStore::open(&db).await.unwrap());
    let s = Sandboxed::builder()
        .sandbox(Sandbox::builder().seed(15))
        .store(StoreChoice::Shared(store.clone()))
        .webhooks(false)
        .dataverse_pacing(None)
        .retry(
            RetryPolicy::default()
                .with_initial_delay(Duration::from_millis(10))
                .with_max_attempts(3),
        )
        .start()
        .await
        .unwrap();
    let referrals = std::env::var("COSELL_STORE_SIZE_REFERRALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(REFERRALS);
    s.sandbox.partner_center().seed_referrals(referrals);

    // The backfill: the service's first reconcile over the whole history.
    let report = s.engine.reconcile().await.unwrap();
    assert_eq!(report.outcomes.len(), referrals);
    let failed: Vec<_> = report.failures().collect();
    assert!(failed.is_empty(), "{failed:#?}");
    // The live engine's first read of the CRM feeds: our own writes coming back.
    s.engine.pull_crm_changes().await.unwrap();
    // A little live traffic each way.
    for i in 0..LIVE {
        s.sandbox
            .partner_center()
            .create_incoming_referral(json!({"name": format!("Live incoming {i}")}))
            .unwrap();
        s.seed_co_sell_opportunity(&format!("Live opportunity {i}"))
            .unwrap();
    }
    s.engine.run_once().await.unwrap();
    s.engine.run_once().await.unwrap();

    // A clean stop: the engine gives its idle leases back (they are not per-link state).
    s.engine.release_leases(Duration::from_secs(5)).await;

    let links = store.link_count().await.unwrap();
    assert!(links >= referrals as u64, "{links} links");
    // What the store wrote reads back (a sample of it, through every look-up).
    let all = store.links().await.unwrap();
    assert_eq!(all.len() as u64, links);
    for link in all.iter().step_by(101) {
        assert_eq!(
            store
                .link_by_referral(&link.referral_id)
                .await
                .unwrap()
                .as_ref(),
            Some(link)
        );
        if let Some(crm_id) = &link.crm_id {
            assert_eq!(
                store
                    .link_by_crm(&link.crm_entity, crm_id)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(link)
            );
        }
    }
    drop(all);
    // Closed first: closing the last connection checkpoints the WAL into the file.
    drop(s);
    store.close().await;
    let bytes = file_bytes(&db);
    let per_link = bytes / links;
    eprintln!("sqlite store after the engine: {links} links, {bytes} bytes, {per_link} per link");
    assert!(
        per_link < 1_000,
        "{per_link} bytes per link ({links} links)"
    );
}
