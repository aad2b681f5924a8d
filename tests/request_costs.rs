//! Issue 15: what an update and an echo cost, counted by the emulators themselves. A pair in
//! sync is written on the side that did not change under `If-Match` with the version the pair
//! recorded, with only the changed columns and without reading that side first; a stale
//! version costs a 412, a read and the write again, and loses nothing; an echo of our own
//! write is recognised from its version, without a read.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::http::Method;
use cosell::partner_center::models::Referral;
use cosell::sandbox::{Fault, Service};
use cosell::sandboxed::Sandboxed;
use cosell::sync::Action;
use serde_json::{Value, json};
use uuid::Uuid;

struct Harness {
    s: Sandboxed,
}

impl Harness {
    async fn start() -> Harness {
        Harness {
            s: Sandboxed::builder().start().await.unwrap(),
        }
    }

    async fn deliveries_settled(&self) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.s.sandbox.partner_center().wait_for_deliveries(),
        )
        .await
        .expect("webhook deliveries did not settle");
    }

    fn calls(&self, service: Service) -> u64 {
        self.s.sandbox.faults().calls(service)
    }

    fn calls_of(&self, service: Service, method: Method) -> u64 {
        let path = match service {
            Service::Dataverse => "/api/data",
            _ => "/v1.0/engagements/referrals",
        };
        self.s
            .sandbox
            .faults()
            .calls_matching(service, &method, path)
    }

    fn reset(&self) {
        self.s.sandbox.faults().reset_counters();
    }

    fn opportunity(&self, referral_id: &str) -> Value {
        let rows = self
            .s
            .sandbox
            .dataverse()
            .query(
                "opportunity",
                &format!("cosell_referralid eq '{referral_id}'"),
            )
            .unwrap();
        assert_eq!(rows.len(), 1, "one opportunity for {referral_id}");
        rows.into_iter().next().unwrap()
    }

    fn opportunity_id(&self, referral_id: &str) -> Uuid {
        Uuid::parse_str(
            self.opportunity(referral_id)["opportunityid"]
                .as_str()
                .unwrap(),
        )
        .unwrap()
    }

    fn referral(&self, id: &str) -> Value {
        self.s.sandbox.partner_center().referral(id).unwrap()
    }

    /// Our referral created in Partner Center, synced to a CRM opportunity, and every echo of
    /// that (the change feed, the webhooks) absorbed: a pair in sync at rest.
    async fn synced_pair(&self) -> String {
        let body = self.s.sandbox.partner_center().generate_referral_request();
        let referral: Referral = serde_json::from_value(body).unwrap();
        let created = self
            .s
            .partner_center
            .create_referral(&referral)
            .await
            .unwrap();
        let id = created.id.unwrap();
        self.settle().await;
        let opp = self.opportunity(&id);
        assert!(opp["name"].as_str().unwrap().starts_with('✔'), "{opp}");
        id
    }

    /// Runs the engine until a round writes nothing.
    async fn settle(&self) {
        for _ in 0..4 {
            self.deliveries_settled().await;
            self.s.engine.drain_inbox().await.unwrap();
            self.s.engine.pull_crm_changes().await.unwrap();
        }
        self.deliveries_settled().await;
        self.s.engine.drain_inbox().await.unwrap();
    }
}

fn description_patch(text: &str) -> Value {
    json!([{"op": "replace", "path": "/details/notes", "value": text}])
}

#[tokio::test]
async fn a_partner_center_edit_of_one_field_costs_one_dataverse_write_and_no_read() {
    let h = Harness::start().await;
    let id = h.synced_pair().await;
    let before = h.opportunity(&id);

    h.s.sandbox
        .partner_center()
        .update_as_microsoft(&id, description_patch("Microsoft changed the notes."))
        .unwrap();
    h.deliveries_settled().await;
    h.reset();
    let report = h.s.engine.drain_inbox().await.unwrap();
    assert_eq!(report.count(Action::UpdatedCrm), 1, "{report:#?}");

    let f = h.s.sandbox.faults();
    assert_eq!(
        h.calls(Service::Dataverse),
        1,
        "one PATCH, nothing else: {:#?}",
        f.counters()
    );
    assert_eq!(h.calls_of(Service::Dataverse, Method::PATCH), 1);
    assert_eq!(h.calls_of(Service::Dataverse, Method::GET), 0);

    let after = h.opportunity(&id);
    assert_eq!(after["description"], json!("Microsoft changed the notes."));
    // Only the changed column moved: the rest of the row is as it was.
    for column in [
        "name",
        "estimatedvalue",
        "estimatedclosedate",
        "_customerid_value",
        "_parentcontactid_value",
        "cosell_audit",
    ] {
        assert_eq!(after[column], before[column], "{column}");
    }
}

#[tokio::test]
async fn a_crm_edit_of_one_field_costs_one_partner_center_patch_and_no_referral_read() {
    let h = Harness::start().await;
    let id = h.synced_pair().await;
    let opp = h.opportunity_id(&id);

    h.s.sandbox
        .dataverse()
        .update_as_user(
            "opportunity",
            opp,
            json!({"description": "The seller changed the notes."}),
        )
        .unwrap();
    h.reset();
    let report = h.s.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::UpdatedReferral), 1, "{report:#?}");

    assert_eq!(
        h.calls(Service::Referrals),
        1,
        "{:#?}",
        h.s.sandbox.faults().counters()
    );
    assert_eq!(h.calls_of(Service::Referrals, Method::PATCH), 1);
    assert_eq!(h.calls_of(Service::Referrals, Method::GET), 0);
    assert_eq!(
        h.referral(&id)["details"]["notes"],
        json!("The seller changed the notes.")
    );
}

#[tokio::test]
async fn a_crm_row_edited_meanwhile_costs_a_412_a_read_and_a_write_and_both_edits_stay() {
    let h = Harness::start().await;
    let id = h.synced_pair().await;
    let opp = h.opportunity_id(&id);

    // The seller edits the close date; before the change feed is read, Microsoft edits the
    // notes. The write for Microsoft's edit goes under the version the pair knows: stale.
    h.s.sandbox
        .dataverse()
        .update_as_user(
            "opportunity",
            opp,
            json!({"estimatedclosedate": "2027-09-30"}),
        )
        .unwrap();
    h.s.sandbox
        .partner_center()
        .update_as_microsoft(&id, description_patch("Microsoft's notes."))
        .unwrap();
    h.deliveries_settled().await;
    h.reset();
    let report = h.s.engine.drain_inbox().await.unwrap();
    assert!(report.failures().next().is_none(), "{report:#?}");

    // The 412, then the read (row and solution links), then the write again.
    let f = h.s.sandbox.faults();
    assert_eq!(
        h.calls_of(Service::Dataverse, Method::PATCH),
        2,
        "{:#?}",
        f.counters()
    );
    assert!(h.calls_of(Service::Dataverse, Method::GET) >= 1);
    let row = h.opportunity(&id);
    assert_eq!(row["description"], json!("Microsoft's notes."));
    assert_eq!(row["estimatedclosedate"], json!("2027-09-30"));

    // The seller's edit reaches Partner Center too: nothing was lost on either side.
    h.settle().await;
    let referral = h.referral(&id);
    assert_eq!(referral["details"]["notes"], json!("Microsoft's notes."));
    assert!(
        referral["details"]["closingDateTime"]
            .as_str()
            .unwrap()
            .starts_with("2027-09-30"),
        "{referral}"
    );
}

#[tokio::test]
async fn a_referral_edited_meanwhile_costs_a_412_a_read_and_a_patch_and_both_edits_stay() {
    let h = Harness::start().await;
    let id = h.synced_pair().await;
    let opp = h.opportunity_id(&id);

    // Microsoft edits the notes (its webhook not drained yet); the seller edits the close
    // date. The patch for the seller's edit goes under the eTag the pair knows: stale.
    h.s.sandbox
        .partner_center()
        .update_as_microsoft(&id, description_patch("Microsoft's notes."))
        .unwrap();
    h.s.sandbox
        .dataverse()
        .update_as_user(
            "opportunity",
            opp,
            json!({"estimatedclosedate": "2027-10-31"}),
        )
        .unwrap();
    h.reset();
    let report = h.s.engine.pull_crm_changes().await.unwrap();
    assert!(report.failures().next().is_none(), "{report:#?}");
    let f = h.s.sandbox.faults();
    assert_eq!(
        h.calls_of(Service::Referrals, Method::PATCH),
        2,
        "{:#?}",
        f.counters()
    );
    assert_eq!(h.calls_of(Service::Referrals, Method::GET), 1);

    let referral = h.referral(&id);
    assert_eq!(referral["details"]["notes"], json!("Microsoft's notes."));
    assert!(
        referral["details"]["closingDateTime"]
            .as_str()
            .unwrap()
            .starts_with("2027-10-31"),
        "{referral}"
    );
    let row = h.opportunity(&id);
    assert_eq!(row["description"], json!("Microsoft's notes."));
    assert_eq!(row["estimatedclosedate"], json!("2027-10-31"));
}

#[tokio::test]
async fn a_patch_whose_answer_was_lost_and_whose_repeat_got_412_costs_one_read_and_no_redo() {
    let h = Harness::start().await;
    let id = h.synced_pair().await;
    let opp = h.opportunity_id(&id);

    h.s.sandbox
        .dataverse()
        .update_as_user(
            "opportunity",
            opp,
            json!({"description": "The seller's notes, answer lost."}),
        )
        .unwrap();
    // The patch lands, its answer is lost; its repeat under the same If-Match gets 412.
    h.s.sandbox.faults().inject(
        Service::Referrals,
        Fault::drop_after()
            .on_method(Method::PATCH)
            .on_path("/v1.0/engagements/referrals")
            .times(1),
    );
    h.reset();
    let report = h.s.engine.pull_crm_changes().await.unwrap();
    assert!(report.failures().next().is_none(), "{report:#?}");
    // The referral holds the plan: the write landed, and the pass records it as written
    // rather than putting the pair back and redoing it.
    assert_eq!(report.count(Action::UpdatedReferral), 1, "{report:#?}");
    assert_eq!(h.calls_of(Service::Referrals, Method::PATCH), 2);
    assert_eq!(h.calls_of(Service::Referrals, Method::GET), 1);
    assert_eq!(
        h.referral(&id)["details"]["notes"],
        json!("The seller's notes, answer lost.")
    );
    let link =
        h.s.engine
            .store()
            .link_by_referral(&id)
            .await
            .unwrap()
            .unwrap();
    assert!(link.in_sync && link.pc_known.is_none(), "{link:#?}");

    // Microsoft's later edit of the same field is its edit, not a conflict with the seller's.
    h.s.sandbox
        .partner_center()
        .update_as_microsoft(&id, description_patch("Microsoft's later notes."))
        .unwrap();
    h.settle().await;
    assert_eq!(
        h.opportunity(&id)["description"],
        json!("Microsoft's later notes.")
    );
}

#[tokio::test]
async fn a_failed_pass_leaves_the_pair_out_of_sync_so_no_side_is_taken_from_its_state() {
    let h = Harness::start().await;
    let id = h.synced_pair().await;
    let opp = h.opportunity_id(&id);

    // The seller's edit comes through the feed, but its pass cannot read the row.
    h.s.sandbox
        .dataverse()
        .update_as_user(
            "opportunity",
            opp,
            json!({"description": "The seller's notes, pass failed."}),
        )
        .unwrap();
    h.s.sandbox.faults().inject(
        Service::Dataverse,
        Fault::status(400)
            .on_method(Method::GET)
            .on_path(format!("opportunities({opp})"))
            .times(1),
    );
    let report = h.s.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.failures().count(), 1, "{report:#?}");
    // The feed has moved past the edit, which no state knows: the pair is not in sync, so
    // the next pass reads the row rather than assume it unchanged.
    let link =
        h.s.engine
            .store()
            .link_by_referral(&id)
            .await
            .unwrap()
            .unwrap();
    assert!(!link.in_sync, "{link:#?}");

    h.s.sandbox
        .partner_center()
        .update_as_microsoft(
            &id,
            json!([{"op": "replace", "path": "/details/closingDateTime",
                    "value": "2027-11-30T00:00:00Z"}]),
        )
        .unwrap();
    h.settle().await;
    assert_eq!(
        h.referral(&id)["details"]["notes"],
        json!("The seller's notes, pass failed.")
    );
    assert_eq!(
        h.opportunity(&id)["estimatedclosedate"],
        json!("2027-11-30")
    );
}

#[tokio::test]
async fn an_echo_from_the_change_feed_costs_no_dataverse_request_beyond_the_feed() {
    let h = Harness::start().await;
    let id = h.synced_pair().await;
    h.s.sandbox
        .partner_center()
        .update_as_microsoft(&id, description_patch("Written by the engine."))
        .unwrap();
    h.deliveries_settled().await;
    let report = h.s.engine.drain_inbox().await.unwrap();
    assert_eq!(report.count(Action::UpdatedCrm), 1, "{report:#?}");

    // The feed now shows our own write. One page per feed (opportunities, leads, solution
    // links), and nothing else: no read of the row.
    h.reset();
    let report = h.s.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::Echo), 1, "{report:#?}");
    assert_eq!(report.outcomes.len(), 1, "{report:#?}");
    let f = h.s.sandbox.faults();
    assert_eq!(
        h.calls(Service::Dataverse),
        3,
        "the three feed pages only: {:#?}",
        f.counters()
    );
    assert_eq!(h.calls(Service::Referrals), 0);
}

#[tokio::test]
async fn a_webhook_echo_costs_no_dataverse_request() {
    let h = Harness::start().await;
    let id = h.synced_pair().await;
    let opp = h.opportunity_id(&id);
    h.s.sandbox
        .dataverse()
        .update_as_user(
            "opportunity",
            opp,
            json!({"description": "The seller's notes."}),
        )
        .unwrap();
    let report = h.s.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::UpdatedReferral), 1, "{report:#?}");

    // Partner Center tells us of our own patch: the referral is read (the callback carries only
    // its id), its eTag is the one the pair recorded, and the CRM is not asked anything.
    h.deliveries_settled().await;
    h.reset();
    let report = h.s.engine.drain_inbox().await.unwrap();
    assert!(!report.outcomes.is_empty(), "a webhook arrived");
    assert!(
        report
            .outcomes
            .iter()
            .all(|o| matches!(o.action, Action::Unchanged | Action::Echo)),
        "{report:#?}"
    );
    assert_eq!(
        h.calls(Service::Dataverse),
        0,
        "{:#?}",
        h.s.sandbox.faults().counters()
    );
    assert_eq!(h.calls_of(Service::Referrals, Method::PATCH), 0);
}

/// The solution link feed knows our own links. A backfill creates opportunities with their
/// solutions; the feed's first read then lists every link row, and a later read the rows of
/// the next creates. Neither reads a referral or an opportunity: each row links a solution
/// its pair already holds on both sides (one catalogue query per page names the rows'
/// solutions; over 100 of them, a `$batch` of such queries). A seller linking a solution the deal already has (a second row) costs nothing
/// either; a new solution is synced and reaches the referral.
#[tokio::test]
async fn our_own_solution_links_cost_the_link_feed_no_read_and_a_sellers_new_one_is_synced() {
    let h = Harness::start().await;
    let seeded = h.s.sandbox.partner_center().seed_referrals(12);
    let report = h.s.engine.reconcile().await.unwrap();
    assert!(report.count(Action::CreatedInCrm) >= 1, "{report:#?}");
    let with_solutions: Vec<&String> = seeded
        .iter()
        .filter(|id| {
            h.referral(id)["details"]["requirements"]["solutions"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
                && h.s
                    .sandbox
                    .dataverse()
                    .query("opportunity", &format!("cosell_referralid eq '{id}'"))
                    .unwrap()
                    .len()
                    == 1
        })
        .collect();
    assert!(
        with_solutions.len() >= 3,
        "the seed makes opportunities with solutions"
    );

    // The first read of every feed: the opportunities are our creates coming back, the link
    // rows our links.
    h.reset();
    let report = h.s.engine.pull_crm_changes().await.unwrap();
    let touched: Vec<_> = report
        .outcomes
        .iter()
        .filter(|o| !matches!(o.action, Action::Echo))
        .collect();
    assert!(touched.is_empty(), "{touched:#?}");
    assert_eq!(h.calls(Service::Referrals), 0);
    // Nothing is read: not the opportunities (a record created closed is read back inside its
    // `$batch`, so the pair knows the version its status steps left), nor their link rows.
    let f = h.s.sandbox.faults();
    assert_eq!(
        h.calls(Service::Dataverse),
        4,
        "three feed pages and one catalogue query naming the link rows' solutions: {:#?}",
        f.counters()
    );
    assert_eq!(
        f.calls_matching(
            Service::Dataverse,
            &Method::GET,
            "/api/data/v9.2/cosell_partnercentersolutions"
        ),
        1,
        "{:#?}",
        f.counters()
    );

    // A later read, after more creates (webhooks of our own new referrals).
    let id = h.synced_pair().await;
    let opp = h.opportunity_id(&id);
    h.s.engine.pull_crm_changes().await.unwrap();
    h.reset();
    let report = h.s.engine.pull_crm_changes().await.unwrap();
    assert!(report.outcomes.is_empty(), "{report:#?}");
    assert_eq!(h.calls(Service::Referrals), 0);

    // The seller links the deal's first solution a second time: nothing new to sync.
    let dv = h.s.sandbox.dataverse();
    let link = |solution_row: &str| {
        json!({"cosell_OpportunityId@odata.bind": format!("/opportunities({opp})"),
               "cosell_PartnerCenterSolutionId@odata.bind":
                   format!("/cosell_partnercentersolutions({solution_row})")})
    };
    let first_solution = h.referral(&id)["details"]["requirements"]["solutions"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let catalogue_row = dv
        .query(
            "cosell_partnercentersolution",
            &format!("cosell_solutionid eq '{first_solution}'"),
        )
        .unwrap()[0]["cosell_partnercentersolutionid"]
        .as_str()
        .unwrap()
        .to_string();
    h.s.dataverse
        .create("cosell_opportunitysolutions", &link(&catalogue_row))
        .await
        .unwrap();
    h.reset();
    let report = h.s.engine.pull_crm_changes().await.unwrap();
    assert!(report.outcomes.is_empty(), "{report:#?}");
    assert_eq!(h.calls(Service::Referrals), 0);

    // A solution the deal lacks: synced, and on the referral.
    let added = h
        .s
        .dataverse
        .create(
            "cosell_partnercentersolutions",
            &json!({"cosell_solutionid": "SOL-55555-NEW", "cosell_name": "Added by the seller"}),
        )
        .await
        .unwrap();
    h.s.dataverse
        .create("cosell_opportunitysolutions", &link(&added.to_string()))
        .await
        .unwrap();
    let report = h.s.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::UpdatedReferral), 1, "{report:#?}");
    let solutions: Vec<String> = h.referral(&id)["details"]["requirements"]["solutions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect();
    assert!(
        solutions.contains(&"SOL-55555-NEW".to_string()),
        "{solutions:?}"
    );
    assert!(solutions.contains(&first_solution), "{solutions:?}");
}
