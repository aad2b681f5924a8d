//! The counters an operator scrapes: emitted through the `metrics` facade by the HTTP pipeline
//! and the engine, read here with a debugging recorder while a sync runs against the sandbox.
//! Its own test binary: a recorder is process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use cosell::sandbox::{Fault, Service};
use cosell::sandboxed::Sandboxed;
use cosell::sync::Action;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::json;

/// Counter totals by `name{label=value,…}`.
fn counters(snapshotter: &Snapshotter) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            *out.entry(format!("{}{{{}}}", key.name(), labels.join(",")))
                .or_default() += n;
        }
    }
    out
}

fn total(counters: &BTreeMap<String, u64>, prefix: &str) -> u64 {
    counters
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_is_counted_per_direction_with_api_calls_throttling_and_failures() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let s = Sandboxed::start().await.unwrap();
    // Microsoft sends a referral: a webhook in, a record to the CRM.
    s.sandbox
        .partner_center()
        .create_incoming_referral(json!({"name": "Counted"}))
        .unwrap();
    s.deliveries_settled().await;
    let report = s.engine.drain_inbox().await.unwrap();
    assert_eq!(report.count(Action::CreatedInCrm), 1, "{report:#?}");

    // A seller's opportunity: a record to Partner Center, through one throttled Dataverse call.
    s.seed_co_sell_opportunity("Counted opportunity").unwrap();
    s.sandbox.faults().inject(
        Service::Dataverse,
        Fault::throttle(Duration::from_millis(20)).times(1),
    );
    // And one that breaks a rule: a failure.
    let broken = s.seed_co_sell_opportunity("Broken opportunity").unwrap();
    s.sandbox
        .dataverse()
        .update_as_user(
            "account",
            account_of(&s, broken),
            json!({"address1_country": "USA"}),
        )
        .unwrap();
    let report = s.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::CreatedReferral), 1, "{report:#?}");
    assert_eq!(report.failures().count(), 1, "{report:#?}");

    let c = counters(&snapshotter);
    assert!(
        c.get("cosell_sync_webhooks_received_total{}").copied() >= Some(1),
        "{c:#?}"
    );
    assert_eq!(
        c.get("cosell_sync_records_synced_total{direction=to_crm}"),
        Some(&1),
        "{c:#?}"
    );
    assert_eq!(
        c.get("cosell_sync_records_synced_total{direction=to_partner_center}"),
        Some(&1),
        "{c:#?}"
    );
    assert_eq!(
        total(&c, "cosell_sync_failures_total{direction=to_partner_center"),
        1,
        "{c:#?}"
    );
    assert_eq!(
        total(&c, "cosell_http_throttled_total{service=dataverse"),
        1,
        "{c:#?}"
    );
    // Every API call is counted, by service and status; the emulators agree on the totals.
    let faults = s.sandbox.faults();
    assert_eq!(
        total(&c, "cosell_http_requests_total{service=dataverse"),
        faults.calls(Service::Dataverse),
        "{c:#?}"
    );
    assert_eq!(
        total(
            &c,
            "cosell_http_requests_total{service=partner-center-referrals"
        ),
        faults.calls(Service::Referrals),
        "{c:#?}"
    );
}

fn account_of(s: &Sandboxed, opportunity: uuid::Uuid) -> uuid::Uuid {
    let row = s
        .sandbox
        .dataverse()
        .row("opportunity", opportunity)
        .unwrap();
    uuid::Uuid::parse_str(row["_customerid_value"].as_str().unwrap()).unwrap()
}
