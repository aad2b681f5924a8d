//! `cosell provision` and `cosell check` as an operator runs them against a Dynamics 365 that
//! has nothing of cosell's yet (the sandbox's Dataverse started bare).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Setup;
use cosell_sandbox::Sandbox;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_then_check_on_a_bare_environment_then_nothing_changes_the_second_time() {
    let setup = Setup::with_sandbox(Sandbox::builder().bare_dataverse(), "", true).await;
    let dataverse = setup.sandbox.dataverse();

    // Before: the check names what is missing, each with its config key, and fails.
    let (status, out) = setup.run(&["check"]).await;
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("config key `columns.opportunity.referral_id`"),
        "{out}"
    );
    assert!(out.contains("referrals readable: yes"), "{out}");

    // A dry run prints the plan and writes nothing.
    let writes = dataverse.write_requests();
    let (status, out) = setup.run(&["provision", "--dry-run"]).await;
    assert!(status.success(), "{out}");
    assert!(out.contains("would create"), "{out}");
    assert!(!out.contains("CONFLICT"), "{out}");
    assert_eq!(dataverse.write_requests(), writes, "a dry run wrote");

    // Provisioning with a catalogue; the keys index while it waits.
    let csv = setup.dir.path().join("solutions.csv");
    std::fs::write(
        &csv,
        "id,name,publisher,type\nSOL-1,Contoso Analytics,Contoso,IP co-sell\nSOL-2,Fabrikam Ops,Fabrikam,Services\n",
    )
    .unwrap();
    let csv = csv.display().to_string();
    let (status, out) = setup
        .run(&["provision", "--catalogue", &csv, "--key-poll-seconds", "0"])
        .await;
    assert!(status.success(), "{out}");
    assert!(out.contains("created"), "{out}");
    assert!(out.contains("published customisations"), "{out}");
    assert!(out.contains("catalogue: created 2"), "{out}");
    assert_eq!(
        dataverse.key_index_status("opportunity", "cosell_referralid_key"),
        "Active"
    );

    // Dataverse is clean now; Partner Center still has no webhook for us until the service
    // registers it when it starts.
    let (status, out) = setup.run(&["check"]).await;
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("everything the field map needs is there"),
        "{out}"
    );
    assert!(out.contains("config key `webhook.public_url`"), "{out}");
    let serve = setup.serve().await;
    assert!(
        common::stop(serve).await.success(),
        "{}",
        setup.log("serve.log")
    );
    let (status, out) = setup.run(&["check"]).await;
    assert!(status.success(), "{out}");
    assert!(out.contains("webhook registration: ours"), "{out}");
    assert!(out.contains("clean: the sync can run"), "{out}");

    // Again: everything exists, no write request, the catalogue unchanged.
    let writes = dataverse.write_requests();
    let (status, out) = setup
        .run(&["provision", "--catalogue", &csv, "--key-poll-seconds", "0"])
        .await;
    assert!(status.success(), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("created")), "{out}");
    assert!(!out.contains("published customisations"), "{out}");
    assert!(
        out.contains("catalogue: created 0, updated 0, unchanged 2"),
        "{out}"
    );
    assert_eq!(dataverse.write_requests(), writes, "a second run wrote");
}
