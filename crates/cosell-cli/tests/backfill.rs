//! `cosell backfill` as an operator runs it on first start: every referral already in Partner
//! Center brought into the CRM once, the failures counted, a second run changing nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Setup;

fn dead_letters(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("dead letters: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dead-letter count in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_brings_every_referral_in_once_and_a_rerun_changes_nothing() {
    let setup = Setup::new("", true).await;
    let seeded = setup.sandbox.partner_center().seed_referrals(30);
    let dataverse = setup.sandbox.dataverse();
    let crm_rows = || dataverse.count("lead") + dataverse.count("opportunity");
    let before = crm_rows();

    let (_, out) = setup.run(&["backfill", "--concurrency", "4"]).await;
    let dead = dead_letters(&out);
    let created = crm_rows() - before;
    // Every referral is a CRM row or a dead letter naming why (a record written in part is
    // both), and none is a CRM row twice.
    assert!(created as u64 + dead >= seeded.len() as u64, "{out}");
    assert!(
        created <= seeded.len(),
        "{created} rows for {} referrals",
        seeded.len()
    );
    assert!(created > 0, "{out}");

    // The store has a link per row the backfill wrote (status reads the store's counts when no
    // service runs).
    let (status, json) = setup.run(&["status"]).await;
    assert!(status.success(), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["links"], created as u64, "{v:#}");

    // Run again: nothing new in the CRM, the same dead letters.
    let (_, again) = setup.run(&["backfill"]).await;
    assert_eq!(crm_rows() - before, created, "{again}");
    assert_eq!(dead_letters(&again), dead, "{again}");
}
