//! `cosell serve` and the operator commands, driven as a user would: a spawned binary, a real
//! configuration file, the sandbox over loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Setup, eventually, request, stop};
use cosell_sandbox::Service;
use serde_json::{Value, json};

/// Sums the samples of `name` whose labels contain `label` in Prometheus text.
fn sample_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_syncs_a_referral_and_the_commands_see_and_fix_what_failed() {
    let setup = Setup::new("", true).await;
    let pc = setup.sandbox.partner_center();
    let dv = setup.sandbox.dataverse();
    let service = setup.serve().await;

    // Microsoft sends a referral: the webhook reaches the service, the CRM gets a lead.
    let referral = pc
        .create_incoming_referral(json!({"name": "Spawned Pharma - data platform"}))
        .unwrap();
    let referral_id = referral["id"].as_str().unwrap().to_string();
    eventually("the lead in the CRM", || async {
        (dv.count("lead") == 1).then_some(())
    })
    .await;

    // /status: counts from the store, the registration, the throttle, no customer text.
    // (The link holds the plan a moment before the CRM write lands and stamps the sync.)
    let status: Value = eventually("a status with the link and its sync", || async {
        let (code, body) = request(setup.admin, "GET /status", &[], "").await.ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["links"] == 1 && v["last_sync"]["to_crm"].is_string()).then_some(v)
    })
    .await;
    assert_eq!(status["state"], "running");
    assert_eq!(status["registration"]["outcome"], "registered");
    assert_eq!(status["throttle"]["dataverse"]["paused"], false);
    assert!(!status.to_string().contains("Spawned Pharma"));
    // The admin routes are not on the webhook listener.
    let (code, _) = request(setup.listen, "GET /status", &[], "").await.unwrap();
    assert_eq!(code, 404);

    // /metrics: once quiet, the service counted exactly the Dataverse calls the emulator
    // answered, and the gauges say one link and an empty inbox.
    let faults = setup.sandbox.faults();
    let metrics = eventually("metrics matching the emulator's counters", || async {
        let (code, text) = request(setup.admin, "GET /metrics", &[], "").await.ok()?;
        let counted = sample_sum(&text, "cosell_http_requests_total", "service=\"dataverse\"");
        let answered = faults.calls(Service::Dataverse) as f64;
        let synced = sample_sum(
            &text,
            "cosell_sync_records_synced_total",
            "direction=\"to_crm\"",
        );
        // Quiet: every callback drained (a later one may still be arriving).
        let drained = sample_sum(&text, "cosell_inbox_depth", "") == 0.0;
        (code == 200 && counted > 0.0 && counted == answered && synced == 1.0 && drained)
            .then_some(text)
    })
    .await;
    assert_eq!(sample_sum(&metrics, "cosell_links", ""), 1.0, "{metrics}");
    assert!(sample_sum(&metrics, "cosell_last_sync_timestamp_seconds", "to_crm") > 0.0);
    assert!(metrics.contains("cosell_throttle_pause_remaining_seconds"));

    // SIGTERM: a clean stop, exit 0; the log has one line for the synced record.
    let exit = stop(service).await;
    assert!(exit.success(), "{exit}\n{}", setup.log("serve.log"));
    let log = setup.log("serve.log");
    assert!(
        log.lines()
            .any(|l| l.contains("record synced") && l.contains(&referral_id)),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "no ANSI codes in a redirected log");

    // The decision history of the referral.
    let (ok, audit) = setup.run(&["audit", &referral_id]).await;
    assert!(ok.success());
    assert!(
        audit.contains("to_crm") && audit.contains("created"),
        "{audit}"
    );

    // A referral in a currency the CRM lacks: `sync referral` fails and leaves a dead letter.
    let nok = pc
        .create_incoming_referral(json!({
            "name": "Nordic Freight AS - Route Planning",
            "details": {"currency": "NOK", "dealValue": 1_250_000},
        }))
        .unwrap();
    let nok_id = nok["id"].as_str().unwrap().to_string();
    let key = format!("referral:{nok_id}");
    let (failed, out) = setup.run(&["sync", "referral", &nok_id]).await;
    assert!(!failed.success(), "{out}");
    assert!(out.contains("Failed"), "{out}");
    let (_, list) = setup.run(&["dead-letters", "list"]).await;
    assert!(
        list.contains(&key) && list.contains("1 dead letter(s)"),
        "{list}"
    );
    let (_, shown) = setup.run(&["dead-letters", "show", &key]).await;
    assert!(shown.contains("NOK"), "{shown}");

    // The plan shows nothing would be written for the synced referral.
    let (planned, plan) = setup.run(&["plan"]).await;
    assert!(planned.success(), "{plan}");
    assert!(plan.contains("nothing was written or consumed"), "{plan}");

    // The CRM admin enables NOK; the replay completes the lead and clears the letter.
    dv.insert_row(
        "transactioncurrency",
        json!({"isocurrencycode": "NOK", "currencyname": "Norwegian Krone",
               "currencysymbol": "kr", "exchangerate": 10.8, "currencyprecision": 2}),
    )
    .unwrap();
    let (replayed, out) = setup.run(&["dead-letters", "replay", &key]).await;
    assert!(replayed.success(), "{out}");
    assert!(out.contains("cleared"), "{out}");
    let (_, list) = setup.run(&["dead-letters", "list"]).await;
    assert!(list.contains("0 dead letter(s)"), "{list}");

    // Another failure, dropped by the operator: gone, and the drop is in the audit trail.
    let isk = pc
        .create_incoming_referral(json!({
            "name": "Islensk ehf", "details": {"currency": "ISK", "dealValue": 10},
        }))
        .unwrap();
    let sek_id = isk["id"].as_str().unwrap().to_string();
    setup.run(&["sync", "referral", &sek_id]).await;
    let sek_key = format!("referral:{sek_id}");
    let (dropped, _) = setup.run(&["dead-letters", "drop", &sek_key]).await;
    assert!(dropped.success());
    let (_, list) = setup.run(&["dead-letters", "list"]).await;
    assert!(!list.contains(&sek_key), "{list}");
    let (_, audit) = setup.run(&["audit", &sek_id]).await;
    assert!(audit.contains("dropped by an operator"), "{audit}");
    let (missing, _) = setup
        .run(&["dead-letters", "replay", "referral:nope"])
        .await;
    assert!(!missing.success());

    // A CRM row synced on demand: the lead of the first referral, already in sync.
    let lead = dv
        .rows("lead")
        .into_iter()
        .find(|row| row.to_string().contains(&referral_id))
        .unwrap()["leadid"]
        .as_str()
        .unwrap()
        .to_string();
    let (synced, out) = setup.run(&["sync", "crm", "lead", &lead]).await;
    assert!(synced.success(), "{out}");
    let (bad, _) = setup.run(&["sync", "crm", "invoice", &lead]).await;
    assert!(!bad.success());
}
