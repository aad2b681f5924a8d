//! End-to-end: the sync engine against both emulators over real HTTP on loopback, with the real
//! clients, the real Entra credential flows, a verifying webhook receiver and the SQLite store.
//! Every test asserts the final state of both sides, read from the emulators themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use cosell::dataverse::DataverseClient;
use cosell::http::{ClientSecretCredential, RetryPolicy};
use cosell::mapping::FieldMap;
use cosell::partner_center::PartnerCenterClient;
use cosell::partner_center::models::{PatchOperation, Referral};
use cosell::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use cosell::sandbox::{Fault, Sandbox, Service};
use cosell::sandboxed::{Sandboxed, StoreChoice};
use cosell::sync::store::{AuditOutcome, AuditQuery, InboxHint, StateStore};
use cosell::sync::{
    Action, DataverseCrm, Engine, EngineConfig, PartnerCenter, Received, RemoteError,
    RemoteErrorKind, WebhookIntake, register_callback,
};
use serde_json::{Value, json};
use uuid::Uuid;

struct Harness {
    sandbox: Sandbox,
    pc: PartnerCenterClient,
    store: Arc<dyn StateStore>,
    engine: Engine,
    intake: WebhookIntake,
    crm: Arc<DataverseCrm>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// The whole setup from `cosell::sandboxed`, on a SQLite store, with fast client retries.
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let s = Sandboxed::builder()
            .store(StoreChoice::Sqlite(dir.path().join("state.sqlite")))
            .retry(
                RetryPolicy::default()
                    .with_initial_delay(Duration::from_millis(20))
                    .with_max_attempts(4),
            )
            .start()
            .await
            .unwrap();
        Harness {
            sandbox: s.sandbox,
            pc: s.partner_center,
            store: s.store,
            engine: s.engine,
            intake: s.intake,
            crm: s.crm,
            _dir: dir,
        }
    }

    /// A new engine over the same store: what a restart looks like.
    fn restart_with(&self, pc: Arc<dyn PartnerCenter>) -> Engine {
        Engine::new(
            pc,
            self.crm.clone(),
            self.store.clone(),
            EngineConfig::default(),
        )
    }

    async fn deliveries_settled(&self) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.sandbox.partner_center().wait_for_deliveries(),
        )
        .await
        .expect("webhook deliveries did not settle");
    }

    fn dv(&self) -> &cosell::sandbox::DataverseEmulator {
        self.sandbox.dataverse()
    }

    fn opportunity_by_referral(&self, referral_id: &str) -> Option<Value> {
        let rows = self
            .dv()
            .query(
                "opportunity",
                &format!("cosell_referralid eq '{referral_id}'"),
            )
            .unwrap();
        assert!(rows.len() <= 1, "duplicate opportunities for {referral_id}");
        rows.into_iter().next()
    }

    fn referrals_with_external_reference(&self, id: &str) -> Vec<Value> {
        self.sandbox
            .partner_center()
            .referrals()
            .into_iter()
            .filter(|r| r["externalReferenceId"] == json!(id))
            .collect()
    }

    /// A CRM seller's opportunity marked for sync, with account, contact and one solution.
    fn crm_opportunity(&self, name: &str, country: &str, with_contact: bool) -> Uuid {
        let dv = self.dv();
        let account = dv
            .insert_row(
                "account",
                json!({"name": format!("{name} Customer"), "address1_line1": "1 Main St",
                       "address1_city": "Seattle", "address1_postalcode": "98101",
                       "address1_country": country}),
            )
            .unwrap();
        let mut opp = json!({
            "name": name,
            "estimatedvalue": 120000.0,
            "estimatedclosedate": "2027-06-30",
            "description": "Needs a proof of concept.",
            "cosell_syncwithpartnercenter": true,
            "cosell_helprequired": 100000003,
            "cosell_visibletomicrosoft": true,
            "customerid_account@odata.bind": format!("/accounts({account})"),
            "transactioncurrencyid@odata.bind":
                format!("/transactioncurrencies({})", dv.currency_id("USD").unwrap()),
        });
        if with_contact {
            let contact = dv
                .insert_row(
                    "contact",
                    json!({"firstname": "Sue", "lastname": "Smith",
                           "emailaddress1": format!("sue@{}.example", name.to_lowercase().replace(' ', "")),
                           "parentcustomerid_account@odata.bind": format!("/accounts({account})")}),
                )
                .unwrap();
            opp["parentcontactid@odata.bind"] = json!(format!("/contacts({contact})"));
        }
        let id = dv.insert_row("opportunity", opp).unwrap();
        let solution = dv
            .insert_row(
                "cosell_partnercentersolution",
                json!({"cosell_solutionid": "SOL-34104-EBB", "cosell_name": "Contoso Supply Chain Suite"}),
            )
            .or_else(|_| {
                let rows = dv
                    .query("cosell_partnercentersolution", "cosell_solutionid eq 'SOL-34104-EBB'")
                    .unwrap();
                Ok::<_, ()>(
                    Uuid::parse_str(rows[0]["cosell_partnercentersolutionid"].as_str().unwrap())
                        .unwrap(),
                )
            })
            .unwrap();
        dv.insert_row(
            "cosell_opportunitysolution",
            json!({"cosell_OpportunityId@odata.bind": format!("/opportunities({id})"),
                   "cosell_PartnerCenterSolutionId@odata.bind":
                       format!("/cosell_partnercentersolutions({solution})")}),
        )
        .unwrap();
        id
    }

    /// A referral as a partner seller would create it in Partner Center (Active/Accepted).
    async fn pc_referral(&self) -> Referral {
        let body = self.sandbox.partner_center().generate_referral_request();
        let referral: Referral = serde_json::from_value(body).unwrap();
        self.pc.create_referral(&referral).await.unwrap()
    }
}

fn id_of(r: &Referral) -> String {
    r.id.clone().unwrap()
}

#[tokio::test]
async fn a_partner_center_referral_appears_in_the_crm_and_a_redelivery_changes_nothing() {
    let h = Harness::start().await;
    let referral = h.pc_referral().await;
    let id = id_of(&referral);
    h.deliveries_settled().await;

    let report = h.engine.drain_inbox().await.unwrap();
    assert_eq!(report.count(Action::CreatedInCrm), 1, "{report:#?}");

    let opp = h.opportunity_by_referral(&id).expect("opportunity created");
    assert!(
        opp["name"].as_str().unwrap().starts_with('✔'),
        "check mark: {opp}"
    );
    assert_eq!(opp["cosell_syncwithpartnercenter"], json!(true));
    assert!(
        opp["cosell_referrallink"].as_str().unwrap().contains(&id),
        "referral link"
    );
    assert!(
        opp["_customerid_value"].is_string(),
        "customer account bound: {opp}"
    );
    let account = h
        .dv()
        .row(
            "account",
            Uuid::parse_str(opp["_customerid_value"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
    assert_eq!(
        Some(account["name"].as_str().unwrap()),
        referral.customer_profile.as_ref().unwrap().name.as_deref()
    );
    assert_eq!(h.dv().count("contact"), 1, "the customer contact");
    let opp_id = Uuid::parse_str(opp["opportunityid"].as_str().unwrap()).unwrap();
    let solutions = h
        .dv()
        .query(
            "cosell_opportunitysolution",
            &format!("_cosell_opportunityid_value eq {opp_id}"),
        )
        .unwrap();
    assert_eq!(solutions.len(), referral.solutions().len());
    assert!(opp["cosell_audit"].as_str().unwrap().contains("ok"));

    // The same callback delivered again is dropped at the door; a new delivery for the
    // unchanged referral is recognised by its eTag: no CRM call either way.
    let delivered = h.sandbox.partner_center().deliveries();
    let record = delivered.last().unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::HeaderName::from_bytes(record.signature.0.as_bytes()).unwrap(),
        record.signature.1.parse().unwrap(),
    );
    headers.insert(
        "x-ms-certificate-url",
        h.sandbox
            .partner_center()
            .certificate_url()
            .as_str()
            .parse()
            .unwrap(),
    );
    headers.insert("x-ms-signature-algorithm", "rsa-sha256".parse().unwrap());
    assert!(matches!(
        h.intake
            .receive(&headers, record.body.as_bytes())
            .await
            .unwrap(),
        Received::Duplicate { .. }
    ));
    // A burst: another, different delivery for the same unchanged referral.
    h.store
        .push_hint(
            "another-delivery",
            InboxHint {
                seq: 0,
                referral_id: id.clone(),
                event: "referral-updated".into(),
                change_time: None,
                received_at: Utc::now(),
                payload: None,
            },
        )
        .await
        .unwrap();
    let dv_before = h.sandbox.faults().calls(Service::Dataverse);
    let report = h.engine.drain_inbox().await.unwrap();
    assert!(
        report
            .outcomes
            .iter()
            .all(|o| matches!(o.action, Action::Unchanged | Action::Echo)),
        "{report:#?}"
    );
    assert_eq!(h.dv().count("opportunity"), 1);
    assert_eq!(report.count(Action::Unchanged), 1, "{report:#?}");
    assert_eq!(
        h.sandbox.faults().calls(Service::Dataverse),
        dv_before,
        "an unchanged eTag costs no CRM call"
    );
}

#[tokio::test]
async fn a_crm_opportunity_set_to_sync_becomes_a_referral_and_later_edits_follow() {
    let h = Harness::start().await;
    let opp = h.crm_opportunity("Fabrikam Azure migration", "US", true);

    let report = h.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::CreatedReferral), 1, "{report:#?}");
    let referrals = h.referrals_with_external_reference(&opp.to_string());
    assert_eq!(referrals.len(), 1);
    let referral = &referrals[0];
    assert_eq!(referral["details"]["dealValue"].as_f64(), Some(120000.0));
    assert_eq!(
        referral["inviteContext"]["assistanceRequestCode"],
        json!("ProofOfConceptOrDemo")
    );
    let row = h.dv().row("opportunity", opp).unwrap();
    assert_eq!(row["cosell_referralid"], referral["id"]);
    assert!(row["name"].as_str().unwrap().starts_with('✔'));

    // A later CRM edit reaches Partner Center.
    h.dv()
        .update_as_user("opportunity", opp, json!({"estimatedvalue": 150000.0}))
        .unwrap();
    let report = h.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::UpdatedReferral), 1, "{report:#?}");
    let referral = h
        .sandbox
        .partner_center()
        .referral(referral["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(referral["details"]["dealValue"].as_f64(), Some(150000.0));
    assert_eq!(h.sandbox.partner_center().referral_count(), 1);
}

#[tokio::test]
async fn microsoft_accepting_a_co_sell_referral_brings_its_crm_id_into_the_crm() {
    let h = Harness::start().await;
    let opp = h.crm_opportunity("Northwind data platform", "US", true);
    h.engine.pull_crm_changes().await.unwrap();
    let referral_id = h.referrals_with_external_reference(&opp.to_string())[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.deliveries_settled().await;
    h.engine.drain_inbox().await.unwrap();

    h.sandbox
        .partner_center()
        .microsoft_accept(&referral_id)
        .unwrap();
    h.deliveries_settled().await;
    h.engine.drain_inbox().await.unwrap();

    let msx = h.sandbox.partner_center().referral(&referral_id).unwrap()["trackingInfo"]
        ["microsoftMsxId"]
        .clone();
    assert!(msx.is_string(), "Microsoft set its CRM id");
    assert_eq!(
        h.dv().row("opportunity", opp).unwrap()["cosell_microsoftcrmid"],
        msx
    );
}

#[tokio::test]
async fn an_edit_on_both_sides_is_merged_by_ownership_and_audited() {
    let h = Harness::start().await;
    let referral = h.pc_referral().await;
    let id = id_of(&referral);
    h.engine.sync_referral(&id).await.unwrap();
    let opp_id = Uuid::parse_str(
        h.opportunity_by_referral(&id).unwrap()["opportunityid"]
            .as_str()
            .unwrap(),
    )
    .unwrap();

    // Between two syncs: the seller changes the deal value in the CRM; in Partner Center the
    // deal value changes too (a conflict) and the notes change (one-sided).
    h.dv()
        .update_as_user("opportunity", opp_id, json!({"estimatedvalue": 77777.0}))
        .unwrap();
    h.sandbox
        .partner_center()
        .update_as_microsoft(
            &id,
            json!([
                {"op": "replace", "path": "/details/dealValue", "value": 55555},
                {"op": "replace", "path": "/details/notes", "value": "Customer moved the date."}
            ]),
        )
        .unwrap();
    let outcome = h.engine.sync_referral(&id).await.unwrap();
    assert_eq!(outcome.action, Action::UpdatedBoth, "{outcome:#?}");
    assert!(
        outcome
            .conflicts
            .iter()
            .any(|c| c.starts_with("deal_value")),
        "{outcome:#?}"
    );

    // Deal value is partner-owned: the CRM's value wins on both sides. The one-sided note
    // change is not lost.
    let pc_now = h.sandbox.partner_center().referral(&id).unwrap();
    assert_eq!(pc_now["details"]["dealValue"].as_f64(), Some(77777.0));
    assert_eq!(
        pc_now["details"]["notes"],
        json!("Customer moved the date.")
    );
    let crm_now = h.dv().row("opportunity", opp_id).unwrap();
    assert_eq!(crm_now["estimatedvalue"].as_f64(), Some(77777.0));
    assert_eq!(crm_now["description"], json!("Customer moved the date."));
    let audit = h
        .store
        .audit(&AuditQuery {
            referral_id: Some(id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(audit.iter().any(|e| e.outcome == AuditOutcome::Merged
        && e.conflicts.iter().any(|c| c.starts_with("deal_value"))));
}

#[tokio::test]
async fn a_lost_webhook_is_healed_by_reconcile() {
    let h = Harness::start().await;
    let referral = h.pc_referral().await;
    let id = id_of(&referral);
    h.engine.sync_referral(&id).await.unwrap();
    h.deliveries_settled().await;
    h.engine.drain_inbox().await.unwrap();

    h.sandbox.partner_center().drop_next_deliveries(10);
    h.sandbox
        .partner_center()
        .update_as_microsoft(
            &id,
            json!([{"op": "replace", "path": "/details/notes", "value": "Changed while the webhook was lost."}]),
        )
        .unwrap();
    h.deliveries_settled().await;
    assert!(
        h.store.pending_hints(10).await.unwrap().is_empty(),
        "no hint arrived"
    );

    let report = h.engine.reconcile().await.unwrap();
    assert!(report.count(Action::UpdatedCrm) >= 1, "{report:#?}");
    let opp = h.opportunity_by_referral(&id).unwrap();
    assert_eq!(
        opp["description"],
        json!("Changed while the webhook was lost.")
    );
    assert!(h.store.checkpoint("pc.reconcile").await.unwrap().is_some());
}

#[tokio::test]
async fn a_backfill_checkpoint_moves_the_reconcile_window() {
    let h = Harness::start().await;
    let old = h.pc_referral().await;
    h.deliveries_settled().await;
    // A backfill synced everything up to now: reconcile starts from the checkpoint (minus the
    // overlap), so a referral updated long before it is not listed again.
    let until = Utc::now() + chrono::Duration::hours(1);
    h.engine.set_reconcile_checkpoint(until).await.unwrap();
    let stored = h.store.checkpoint("pc.reconcile").await.unwrap().unwrap();
    assert_eq!(DateTime::parse_from_rfc3339(&stored).unwrap(), until);
    let report = h.engine.reconcile().await.unwrap();
    assert!(
        report
            .outcomes
            .iter()
            .all(|o| o.referral_id.as_deref() != Some(id_of(&old).as_str())),
        "{report:#?}"
    );
    assert!(h.opportunity_by_referral(&id_of(&old)).is_none());

    // A dry-run engine never moves it.
    let dry = h.engine_with(EngineConfig {
        dry_run: true,
        ..EngineConfig::default()
    });
    dry.set_reconcile_checkpoint(Utc::now()).await.unwrap();
    assert_eq!(
        h.store.checkpoint("pc.reconcile").await.unwrap().unwrap(),
        stored
    );
}

#[tokio::test]
async fn invalid_data_gets_a_cross_and_audit_text_while_the_rest_goes_on() {
    let h = Harness::start().await;
    let bad_country = h.crm_opportunity("Bad Country Deal", "USA", true);
    let no_contact = h.crm_opportunity("No Contact Deal", "US", false);
    let good = h.crm_opportunity("Good Deal", "DE", true);

    let report = h.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::CreatedReferral), 1, "{report:#?}");
    assert_eq!(report.failures().count(), 2, "{report:#?}");

    let bad = h.dv().row("opportunity", bad_country).unwrap();
    assert!(bad["name"].as_str().unwrap().starts_with('✖'), "{bad}");
    assert!(
        bad["cosell_audit"].as_str().unwrap().contains("USA"),
        "{bad}"
    );
    let missing = h.dv().row("opportunity", no_contact).unwrap();
    assert!(missing["name"].as_str().unwrap().starts_with('✖'));
    assert!(
        missing["cosell_audit"]
            .as_str()
            .unwrap()
            .contains("contact"),
        "{missing}"
    );
    assert_eq!(
        h.referrals_with_external_reference(&good.to_string()).len(),
        1
    );
    assert_eq!(h.sandbox.partner_center().referral_count(), 1);

    let letters = h.store.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 2);
    // The cross mark is itself a change; the next pass must not loop on it.
    let again = h.engine.pull_crm_changes().await.unwrap();
    assert_eq!(again.count(Action::CreatedReferral), 0);
    assert_eq!(h.store.dead_letters().await.unwrap().len(), 2);
    let failed_audits = h
        .store
        .audit(&AuditQuery::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.outcome == AuditOutcome::Failed)
        .count();
    assert_eq!(failed_audits, 2, "one audit entry per distinct failure");
}

/// Forwards to the real client, but "crashes" right after a create reaches Partner Center:
/// the create happened, the engine never learns the answer.
#[derive(Debug)]
struct CrashAfterCreate(PartnerCenterClient);

#[async_trait]
impl PartnerCenter for CrashAfterCreate {
    async fn get_referral(&self, id: &str) -> Result<Referral, RemoteError> {
        PartnerCenter::get_referral(&self.0, id).await
    }
    async fn referrals_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<Referral>, RemoteError> {
        self.0.referrals_updated_since(since).await
    }
    async fn find_by_external_reference(
        &self,
        _id: &str,
        _since: DateTime<Utc>,
    ) -> Result<Option<Referral>, RemoteError> {
        Err(RemoteError::new(
            RemoteErrorKind::Transient,
            "test",
            "process killed",
        ))
    }
    async fn create_referral(&self, referral: &Referral) -> Result<Referral, RemoteError> {
        PartnerCenter::create_referral(&self.0, referral).await?;
        Err(RemoteError::new(
            RemoteErrorKind::UnknownOutcome,
            "test",
            "process killed",
        ))
    }
    async fn update_referral(
        &self,
        id: &str,
        etag: &str,
        ops: Vec<PatchOperation>,
    ) -> Result<Referral, RemoteError> {
        PartnerCenter::update_referral(&self.0, id, etag, ops).await
    }
}

#[tokio::test]
async fn a_crash_between_create_and_link_leaves_no_duplicate_after_restart() {
    let h = Harness::start().await;
    let opp = h.crm_opportunity("Crashy Deal", "US", true);
    let crashing = h.restart_with(Arc::new(CrashAfterCreate(h.pc.clone())));
    let report = crashing.pull_crm_changes().await.unwrap();
    assert_eq!(report.failures().count(), 1, "{report:#?}");
    assert_eq!(
        h.store.intents().await.unwrap().len(),
        1,
        "the intent survived"
    );
    assert_eq!(
        h.referrals_with_external_reference(&opp.to_string()).len(),
        1
    );
    drop(crashing);

    // Restart: the intent is resolved by looking the referral up, not by posting again.
    let restarted = h.restart_with(Arc::new(h.pc.clone()));
    let posts_before = h.sandbox.faults().calls_matching(
        Service::Referrals,
        &http::Method::POST,
        "/v1.0/engagements/referrals",
    );
    let report = restarted.resolve_intents().await.unwrap();
    assert_eq!(report.count(Action::CreatedReferral), 1, "{report:#?}");
    let posts_after = h.sandbox.faults().calls_matching(
        Service::Referrals,
        &http::Method::POST,
        "/v1.0/engagements/referrals",
    );
    assert_eq!(posts_after, posts_before, "no second POST");
    let referrals = h.referrals_with_external_reference(&opp.to_string());
    assert_eq!(referrals.len(), 1, "exactly one referral");
    assert!(h.store.intents().await.unwrap().is_empty());
    assert_eq!(
        h.dv().row("opportunity", opp).unwrap()["cosell_referralid"],
        referrals[0]["id"]
    );

    // A response lost on the wire (the emulator commits, then drops the connection) is
    // resolved the same way, without a restart.
    let opp2 = h.crm_opportunity("Lost Response Deal", "US", true);
    h.sandbox.faults().inject(
        Service::Referrals,
        Fault::drop_after()
            .on_method(http::Method::POST)
            .on_path("/v1.0/engagements/referrals")
            .times(1),
    );
    let report = h.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::CreatedReferral), 1, "{report:#?}");
    assert_eq!(
        h.referrals_with_external_reference(&opp2.to_string()).len(),
        1
    );
}

#[tokio::test]
async fn our_own_writes_coming_back_are_echoes() {
    let h = Harness::start().await;
    // Partner Center → CRM: our CRM write comes back through change tracking.
    let referral = h.pc_referral().await;
    h.engine.sync_referral(&id_of(&referral)).await.unwrap();
    // CRM → Partner Center: our referral create comes back as a webhook.
    let opp = h.crm_opportunity("Echo Deal", "US", true);
    let report = h.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::CreatedReferral), 1, "{report:#?}");
    h.deliveries_settled().await;

    let pc_before = h.sandbox.faults().calls(Service::Referrals);
    let dv_writes_before = h.dv_write_calls();
    let echoes = h.engine.pull_crm_changes().await.unwrap();
    let hints = h.engine.drain_inbox().await.unwrap();
    assert!(
        echoes
            .outcomes
            .iter()
            .chain(hints.outcomes.iter())
            .all(|o| matches!(o.action, Action::Echo | Action::Unchanged | Action::Skipped)),
        "{echoes:#?} {hints:#?}"
    );
    assert!(echoes.count(Action::Echo) >= 1, "{echoes:#?}");
    assert_eq!(
        h.dv_write_calls(),
        dv_writes_before,
        "no CRM write for an echo"
    );
    // Echoes from the CRM cost no Partner Center call; the webhook echo costs one GET each.
    let pc_calls = h.sandbox.faults().calls(Service::Referrals) - pc_before;
    assert!(pc_calls <= hints.outcomes.len() as u64, "{pc_calls} calls");
    assert_eq!(
        h.referrals_with_external_reference(&opp.to_string()).len(),
        1
    );
    assert_eq!(h.dv().count("opportunity"), 2);
}

impl Harness {
    fn dv_write_calls(&self) -> u64 {
        [
            http::Method::POST,
            http::Method::PATCH,
            http::Method::DELETE,
        ]
        .iter()
        .map(|m| {
            self.sandbox
                .faults()
                .calls_matching(Service::Dataverse, m, "/api/data")
        })
        .sum()
    }
}

impl Harness {
    fn engine_with(&self, config: EngineConfig) -> Engine {
        Engine::new(
            Arc::new(self.pc.clone()),
            self.crm.clone(),
            self.store.clone(),
            config,
        )
    }

    fn all_writes(&self) -> u64 {
        let f = self.sandbox.faults();
        [
            http::Method::POST,
            http::Method::PATCH,
            http::Method::PUT,
            http::Method::DELETE,
        ]
        .iter()
        .map(|m| {
            f.calls_matching(Service::Dataverse, m, "/api/data")
                + f.calls_matching(Service::Referrals, m, "/v1.0/engagements/referrals")
        })
        .sum()
    }
}

#[tokio::test]
async fn a_currency_id_is_looked_up_once() {
    let h = Harness::start().await;
    let mut ids = Vec::new();
    for name in ["First in euros", "Second in euros", "Third in euros"] {
        let r = h
            .sandbox
            .partner_center()
            .create_incoming_referral(json!({"name": name, "details": {"currency": "EUR"}}))
            .unwrap();
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    // One after the other: concurrent first lookups may each miss the cache, which is harmless.
    for id in &ids {
        let outcome = h.engine.sync_referral(id).await.unwrap();
        assert_eq!(outcome.action, Action::CreatedInCrm, "{outcome:#?}");
    }
    let lookups = h.sandbox.faults().calls_matching(
        Service::Dataverse,
        &http::Method::GET,
        "transactioncurrencies",
    );
    assert_eq!(lookups, 1);
}

#[tokio::test]
async fn a_currency_the_crm_lacks_fails_visibly_and_is_never_written_back() {
    let h = Harness::start().await;
    // NOK: a valid ISO 4217 code the sandbox CRM does not have.
    let incoming = h
        .sandbox
        .partner_center()
        .create_incoming_referral(json!({"details": {"currency": "NOK", "dealValue": 500000}}))
        .unwrap();
    let id = incoming["id"].as_str().unwrap().to_string();
    h.deliveries_settled().await;
    let report = h.engine.drain_inbox().await.unwrap();
    let failed: Vec<_> = report.failures().collect();
    assert_eq!(failed.len(), 1, "{report:#?}");
    assert!(failed[0].detail.contains("\"NOK\""), "{}", failed[0].detail);
    // The lead is there, with ✖, in no currency of its own and without a deal value (in the
    // base currency it would misstate the deal).
    let lead = h
        .dv()
        .query("lead", &format!("cosell_referralid eq '{id}'"))
        .unwrap()
        .pop()
        .expect("a lead for the referral");
    assert!(
        lead["subject"].as_str().unwrap().starts_with('✖'),
        "{}",
        lead["subject"]
    );
    assert_eq!(lead["estimatedamount"], Value::Null);
    let usd = h.dv().currency_id("USD").unwrap().to_string();
    assert!(
        lead["_transactioncurrencyid_value"].is_null()
            || lead["_transactioncurrencyid_value"] == json!(usd),
        "left to the CRM's default: {}",
        lead["_transactioncurrencyid_value"]
    );
    assert_eq!(h.store.dead_letters().await.unwrap().len(), 1);

    // Nothing the CRM did can move Microsoft's currency or deal value.
    let etag = h.sandbox.partner_center().referral(&id).unwrap()["eTag"].clone();
    h.engine.run_once().await.unwrap();
    h.engine.replay_dead_letters().await.unwrap();
    let referral = h.sandbox.partner_center().referral(&id).unwrap();
    assert_eq!(referral["details"]["currency"], json!("NOK"));
    assert_eq!(referral["details"]["dealValue"].as_f64(), Some(500000.0));
    assert_eq!(referral["eTag"], etag, "no write to Partner Center");

    // The admin enables NOK; the replay completes the lead in NOK.
    h.dv()
        .insert_row(
            "transactioncurrency",
            json!({"isocurrencycode": "NOK", "currencyname": "Norwegian Krone",
                   "currencysymbol": "kr", "exchangerate": 10.8, "currencyprecision": 2}),
        )
        .unwrap();
    let replay = h.engine.replay_dead_letters().await.unwrap();
    assert_eq!(replay.count(Action::UpdatedCrm), 1, "{replay:#?}");
    let lead = h
        .dv()
        .query("lead", &format!("cosell_referralid eq '{id}'"))
        .unwrap()
        .pop()
        .unwrap();
    let nok = h.dv().currency_id("NOK").unwrap().to_string();
    assert_eq!(lead["_transactioncurrencyid_value"], json!(nok));
    assert_eq!(lead["estimatedamount"].as_f64(), Some(500000.0));
    assert!(lead["subject"].as_str().unwrap().starts_with('✔'));
    assert!(h.store.dead_letters().await.unwrap().is_empty());
    h.engine.run_once().await.unwrap();
    let referral = h.sandbox.partner_center().referral(&id).unwrap();
    assert_eq!(referral["details"]["currency"], json!("NOK"));
    assert_eq!(referral["eTag"], etag);
}

#[tokio::test]
async fn qualifying_an_incoming_lead_accepts_the_referral_and_related_referrals_stay_out() {
    let h = Harness::start().await;
    let incoming = h
        .sandbox
        .partner_center()
        .create_incoming_referral(json!({"name": "Incoming from Microsoft"}))
        .unwrap();
    let id = incoming["id"].as_str().unwrap().to_string();
    h.deliveries_settled().await;
    h.engine.drain_inbox().await.unwrap();
    let lead = h
        .dv()
        .query("lead", &format!("cosell_referralid eq '{id}'"))
        .unwrap()
        .pop()
        .expect("a referral not yet accepted is a lead");
    assert_eq!(h.dv().count("opportunity"), 0);

    // The seller qualifies the lead in the CRM.
    let lead_id = Uuid::parse_str(lead["leadid"].as_str().unwrap()).unwrap();
    h.crm
        .client()
        .qualify_lead(
            lead_id,
            &cosell::dataverse::QualifyLead {
                create_opportunity: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    h.engine.pull_crm_changes().await.unwrap();
    let referral = h.sandbox.partner_center().referral(&id).unwrap();
    assert_eq!(
        (referral["status"].as_str(), referral["substatus"].as_str()),
        (Some("Active"), Some("Accepted")),
        "qualifying the lead accepts the referral"
    );
    let link = h.store.link_by_referral(&id).await.unwrap().unwrap();
    assert_eq!(link.crm_entity, "opportunity");
    assert_eq!(
        h.dv().count("opportunity"),
        1,
        "one opportunity, no duplicate"
    );

    // Microsoft's own referral in the engagement arrives as a related referral: it is not
    // copied into the CRM.
    let engagement = referral["engagementId"].as_str().unwrap();
    h.sandbox
        .partner_center()
        .add_related_referral(engagement, json!({}))
        .unwrap();
    h.deliveries_settled().await;
    h.engine.drain_inbox().await.unwrap();
    assert_eq!(h.dv().count("opportunity"), 1);
    assert_eq!(h.store.links().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_dry_run_reports_and_writes_nothing() {
    let h = Harness::start().await;
    h.pc_referral().await;
    h.crm_opportunity("Dry Run Deal", "US", true);
    h.deliveries_settled().await;
    let writes = h.all_writes();
    let dry = h.engine_with(EngineConfig {
        dry_run: true,
        ..EngineConfig::default()
    });
    let report = dry.run_once().await.unwrap();
    assert!(report.count(Action::Planned) >= 2, "{report:#?}");
    assert_eq!(h.all_writes(), writes, "nothing written on either side");
    assert!(h.store.links().await.unwrap().is_empty());
    assert!(h.store.intents().await.unwrap().is_empty());
    assert_eq!(h.store.checkpoint("pc.reconcile").await.unwrap(), None);
}

#[tokio::test]
async fn a_field_can_flow_one_way_or_be_paused() {
    use cosell::mapping::FieldId;
    use cosell::sync::FieldDirection;
    let h = Harness::start().await;
    let referral = h.pc_referral().await;
    let id = id_of(&referral);
    h.engine.sync_referral(&id).await.unwrap();
    let opp_id = Uuid::parse_str(
        h.opportunity_by_referral(&id).unwrap()["opportunityid"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let engine = h.engine_with(EngineConfig {
        directions: [
            (FieldId::Notes, FieldDirection::Paused),
            (FieldId::DealValue, FieldDirection::ToCrm),
        ]
        .into_iter()
        .collect(),
        ..EngineConfig::default()
    });
    // The CRM changes notes (paused) and the deal value (flows only Partner Center → CRM);
    // Partner Center changes nothing.
    h.dv()
        .update_as_user(
            "opportunity",
            opp_id,
            json!({"description": "CRM-only note", "estimatedvalue": 1.0}),
        )
        .unwrap();
    engine.pull_crm_changes().await.unwrap();
    let pc_now = h.sandbox.partner_center().referral(&id).unwrap();
    assert_ne!(pc_now["details"]["notes"], json!("CRM-only note"));
    assert_ne!(pc_now["details"]["dealValue"].as_f64(), Some(1.0));
    // The CRM keeps its own values: a held-back field is not reverted either.
    let crm_now = h.dv().row("opportunity", opp_id).unwrap();
    assert_eq!(crm_now["description"], json!("CRM-only note"));

    // Partner Center changes the deal value: it flows to the CRM.
    h.sandbox
        .partner_center()
        .update_as_microsoft(
            &id,
            json!([{"op": "replace", "path": "/details/dealValue", "value": 4242}]),
        )
        .unwrap();
    engine.sync_referral(&id).await.unwrap();
    let crm_now = h.dv().row("opportunity", opp_id).unwrap();
    assert_eq!(crm_now["estimatedvalue"].as_f64(), Some(4242.0));
    assert_eq!(crm_now["description"], json!("CRM-only note"));
}

#[tokio::test]
async fn dead_letters_replay_after_the_data_is_fixed() {
    let h = Harness::start().await;
    let opp = h.crm_opportunity("Needs A Contact", "US", false);
    // Visibility left empty: help requested implies it, so the created referral (visible) and
    // the row must not look like a withdrawal afterwards.
    h.dv()
        .update_as_user(
            "opportunity",
            opp,
            json!({"cosell_visibletomicrosoft": null}),
        )
        .unwrap();
    let report = h.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.failures().count(), 1);
    assert_eq!(h.store.dead_letters().await.unwrap().len(), 1);

    // The seller adds the contact; replaying the dead letter now succeeds and clears it.
    let account = h.dv().row("opportunity", opp).unwrap()["_customerid_value"]
        .as_str()
        .unwrap()
        .to_string();
    let contact = h
        .dv()
        .insert_row(
            "contact",
            json!({"firstname": "Ada", "lastname": "Lovelace", "emailaddress1": "ada@example.com",
                   "parentcustomerid_account@odata.bind": format!("/accounts({account})")}),
        )
        .unwrap();
    h.dv()
        .update_as_user(
            "opportunity",
            opp,
            json!({"parentcontactid@odata.bind": format!("/contacts({contact})")}),
        )
        .unwrap();
    let replay = h.engine.replay_dead_letters().await.unwrap();
    assert_eq!(replay.count(Action::CreatedReferral), 1, "{replay:#?}");
    assert!(h.store.dead_letters().await.unwrap().is_empty());
    assert_eq!(
        h.referrals_with_external_reference(&opp.to_string()).len(),
        1
    );
    let row = h.dv().row("opportunity", opp).unwrap();
    assert!(row["name"].as_str().unwrap().starts_with('✔'), "{row}");
}

#[tokio::test]
async fn registration_never_silently_takes_another_integrations_webhook() {
    use cosell::sync::RegistrationOutcome;
    let h = Harness::start().await;
    let ours = h
        .sandbox
        .partner_center()
        .registration()
        .unwrap()
        .webhook_url;
    assert_eq!(
        register_callback(&h.pc, &ours, false).await.unwrap(),
        RegistrationOutcome::AlreadyCurrent
    );
    let other = "http://127.0.0.1:9/another-integration";
    assert_eq!(
        register_callback(&h.pc, other, false).await.unwrap(),
        RegistrationOutcome::HeldByAnother {
            current_url: ours.clone()
        }
    );
    assert_eq!(
        h.sandbox
            .partner_center()
            .registration()
            .unwrap()
            .webhook_url,
        ours
    );
    assert_eq!(
        register_callback(&h.pc, other, true).await.unwrap(),
        RegistrationOutcome::Replaced { previous_url: ours }
    );
    assert_eq!(
        h.sandbox
            .partner_center()
            .registration()
            .unwrap()
            .webhook_url,
        other
    );
}

#[tokio::test]
async fn the_schema_check_lists_missing_columns() {
    let h = Harness::start().await;
    let pairs = cosell::sync::required_columns(&FieldMap::default());
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(t, c)| (t.as_str(), c.as_str()))
        .collect();
    let report = h.crm.client().check_schema(&refs).await.unwrap();
    assert!(report.missing.is_empty(), "{report:?}");

    // A typo in a column outside the co-sell ones is caught by the check, not by every record.
    let typo = FieldMap::from_toml("[columns.lead]\ncompany_name = \"companynam\"\n").unwrap();
    let pairs = cosell::sync::required_columns(&typo);
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(t, c)| (t.as_str(), c.as_str()))
        .collect();
    let report = h.crm.client().check_schema(&refs).await.unwrap();
    assert!(
        report
            .missing
            .contains(&("lead".to_string(), "companynam".to_string())),
        "{report:?}"
    );

    // A CRM without the co-sell customisation.
    let plain = Sandbox::builder()
        .dataverse_schema(cosell::sandbox::DataverseSchema::standard())
        .start()
        .await
        .unwrap();
    let app =
        ClientSecretCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
            .authority_host(plain.urls().entra.as_str())
            .build()
            .unwrap();
    let dv = DataverseClient::builder()
        .environment_url(plain.urls().dataverse.clone())
        .credential(Arc::new(app))
        .build()
        .unwrap();
    let report = dv.check_schema(&refs).await.unwrap();
    assert!(
        report
            .missing
            .iter()
            .any(|(t, c)| t == "opportunity" && c == "cosell_referralid"),
        "{report:?}"
    );
    assert!(!report.missing.iter().any(|(_, c)| c == "estimatedvalue"));
}

#[tokio::test]
async fn the_running_engine_syncs_on_its_own_and_stops_cleanly() {
    use cosell::sync::Schedule;
    let h = Harness::start().await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = h.engine.clone();
    let running = tokio::spawn(async move {
        engine
            .run(
                Schedule {
                    inbox: Duration::from_millis(20),
                    crm_changes: Duration::from_millis(50),
                    reconcile: Duration::from_secs(3600),
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await
    });
    let referral = h.pc_referral().await;
    let id = id_of(&referral);
    let synced = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if h.opportunity_by_referral(&id).is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        synced.is_ok(),
        "the webhook reached the CRM without any call from the test"
    );
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("run returns after shutdown")
        .unwrap();
    assert!(result.is_ok());
}

/// Issue 15: Microsoft changing one field of a linked deal costs no customer or solution work
/// in the CRM: the opportunity already has its account, contact and solutions, so none is
/// looked up or linked again; a change of the customer's contacts still is.
#[tokio::test]
async fn an_update_of_one_field_resolves_no_customer_and_links_no_solution() {
    let h = Harness::start().await;
    let referral = h.pc_referral().await;
    let id = id_of(&referral);
    h.deliveries_settled().await;
    h.engine.drain_inbox().await.unwrap();
    h.deliveries_settled().await;
    h.engine.drain_inbox().await.unwrap();
    let opp = h.opportunity_by_referral(&id).unwrap();
    assert!(opp["_customerid_value"].is_string());

    h.sandbox
        .partner_center()
        .update_as_microsoft(
            &id,
            json!([{"op": "replace", "path": "/details/notes", "value": "One field changed."}]),
        )
        .unwrap();
    h.deliveries_settled().await;
    h.sandbox.faults().reset_counters();
    let report = h.engine.drain_inbox().await.unwrap();
    assert_eq!(report.count(Action::UpdatedCrm), 1, "{report:#?}");
    let f = h.sandbox.faults();
    use axum::http::Method;
    let customer_calls: u64 = [Method::GET, Method::POST, Method::PATCH]
        .iter()
        .map(|m| {
            f.calls_matching(Service::Dataverse, m, "/api/data/v9.2/accounts")
                + f.calls_matching(Service::Dataverse, m, "/api/data/v9.2/contacts")
                + f.calls_matching(Service::Dataverse, m, "cosell_partnercentersolutions")
                + f.calls_matching(Service::Dataverse, m, "/cosell_opportunitysolutions(")
        })
        .sum();
    assert_eq!(customer_calls, 0, "{:#?}", f.counters());
    let opp = h.opportunity_by_referral(&id).unwrap();
    assert_eq!(opp["description"], json!("One field changed."));
    assert_eq!(h.dv().count("account"), 1);
    assert_eq!(h.dv().count("contact"), 1);
}

/// Issue 12: the check also names what every upsert and the change feed depend on: the
/// alternate keys on the referral id and change tracking, each with the config key to change.
#[tokio::test]
async fn the_setup_check_names_missing_keys_and_change_tracking() {
    let h = Harness::start().await;
    let problems = cosell::sync::setup_problems(h.crm.client(), &FieldMap::default())
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:#?}");

    // A CRM where the lead's key was never created and the link table is not tracked.
    let cosell_schema = cosell::sandbox::DataverseSchema::cosell();
    let mut lead = cosell_schema.table("lead").unwrap().clone();
    lead.alternate_keys.clear();
    let link = cosell_schema
        .table("cosell_opportunitysolution")
        .unwrap()
        .clone()
        .change_tracking(false);
    let schema = cosell_schema.with_table(lead).with_table(link);
    let s = Sandboxed::builder()
        .sandbox(Sandbox::builder().dataverse_schema(schema))
        .webhooks(false)
        .start()
        .await
        .unwrap();
    let problems = cosell::sync::setup_problems(s.crm.client(), &FieldMap::default())
        .await
        .unwrap();
    let keys: Vec<&str> = problems.iter().map(|p| p.config_key.as_str()).collect();
    assert_eq!(
        keys,
        ["columns.lead.referral_id", "columns.solution.link_entity"],
        "{problems:#?}"
    );
    assert!(
        problems[0]
            .message
            .contains("no alternate key on `cosell_referralid`")
    );
    assert!(problems[1].message.contains("change tracking is off"));
}
