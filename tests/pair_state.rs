//! Regression tests for issue 9: a pair's state after failures, crashes and status changes.
//!
//! One test per item of the issue, each a user story: what the seller does in the CRM, what
//! Microsoft does in Partner Center, the engine's passes as the running service would do them
//! (a restart is a new `Engine` over the same store), then both sides' final state read from the
//! emulators' own data, and the store's dead letters, links and audit where the item is about
//! them. Each test states the failure it showed on the engine before the fix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cosell::dataverse::{OpportunityClose, OpportunityStatus, QualifyLead};
use cosell::http::RetryPolicy;
use cosell::partner_center::models::{PatchOperation, Referral};
use cosell::sandbox::{Fault, Service};
use cosell::sandboxed::{Sandboxed, StoreChoice};
use cosell::sync::store::{
    AuditEntry, AuditQuery, Commit, CreateIntent, DeadLetter, InboxHint, Link, StateStore,
    StoreError,
};
use cosell::sync::{Engine, EngineConfig, PartnerCenter, RemoteError};
use http::Method;
use serde_json::{Value, json};
use uuid::Uuid;

// ---------------------------------------------------------------------------------- harness

/// Delegates to the real store; when armed, the first commit of a link whose CRM row already
/// carries the referral id fails, as if the process died after the remote writes and before the
/// store commit.
#[derive(Debug)]
struct CrashingStore {
    inner: Arc<dyn StateStore>,
    dv: cosell::sandbox::DataverseEmulator,
    armed: AtomicBool,
}

impl CrashingStore {
    fn remote_write_landed(&self, link: &Link) -> bool {
        Uuid::parse_str(link.crm_id.as_deref().unwrap_or_default())
            .ok()
            .and_then(|id| self.dv.row(&link.crm_entity, id))
            .is_some_and(|row| row["cosell_referralid"] == json!(link.referral_id))
    }
}

#[async_trait]
impl StateStore for CrashingStore {
    async fn link_by_referral(&self, referral_id: &str) -> Result<Option<Link>, StoreError> {
        self.inner.link_by_referral(referral_id).await
    }
    async fn link_by_crm(
        &self,
        crm_entity: &str,
        crm_id: &str,
    ) -> Result<Option<Link>, StoreError> {
        self.inner.link_by_crm(crm_entity, crm_id).await
    }
    async fn links(&self) -> Result<Vec<Link>, StoreError> {
        self.inner.links().await
    }
    async fn checkpoint(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.inner.checkpoint(name).await
    }
    async fn intents(&self) -> Result<Vec<CreateIntent>, StoreError> {
        self.inner.intents().await
    }
    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit(query).await
    }
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.dead_letters().await
    }
    async fn push_hint(&self, body_hash: &str, hint: InboxHint) -> Result<bool, StoreError> {
        self.inner.push_hint(body_hash, hint).await
    }
    async fn pending_hints(&self, max: usize) -> Result<Vec<InboxHint>, StoreError> {
        self.inner.pending_hints(max).await
    }
    async fn crm_child(
        &self,
        entity: &str,
        id: &str,
    ) -> Result<Option<cosell::sync::store::CrmChild>, StoreError> {
        self.inner.crm_child(entity, id).await
    }
    async fn intent(
        &self,
        crm_entity: &str,
        crm_id: &str,
    ) -> Result<Option<CreateIntent>, StoreError> {
        self.inner.intent(crm_entity, crm_id).await
    }
    async fn links_by_engagement(&self, engagement_id: &str) -> Result<Vec<Link>, StoreError> {
        self.inner.links_by_engagement(engagement_id).await
    }
    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        if self.armed.load(Ordering::SeqCst)
            && commit.links.iter().any(|l| self.remote_write_landed(l))
            && self.armed.swap(false, Ordering::SeqCst)
        {
            return Err(StoreError::backend("process killed before the commit"));
        }
        self.inner.commit(commit).await
    }
}

/// Forwards to the real client; when armed, the next referral update first loses its access
/// token and meets an Entra ID outage (every token request answers 503 for as long as that
/// update runs), so the write fails on the token, not on Partner Center.
#[derive(Debug)]
struct TokenFailsOnUpdate {
    pc: cosell::partner_center::PartnerCenterClient,
    entra: cosell::sandbox::entra::EntraStandIn,
    faults: cosell::sandbox::faults::Faults,
    armed: AtomicBool,
    updates: AtomicUsize,
}

#[async_trait]
impl PartnerCenter for TokenFailsOnUpdate {
    async fn get_referral(&self, id: &str) -> Result<Referral, RemoteError> {
        PartnerCenter::get_referral(&self.pc, id).await
    }
    async fn referrals_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<Referral>, RemoteError> {
        self.pc.referrals_updated_since(since).await
    }
    async fn find_by_external_reference(
        &self,
        id: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<Referral>, RemoteError> {
        self.pc.find_by_external_reference(id, since).await
    }
    async fn create_referral(&self, referral: &Referral) -> Result<Referral, RemoteError> {
        PartnerCenter::create_referral(&self.pc, referral).await
    }
    async fn update_referral(
        &self,
        id: &str,
        etag: &str,
        ops: Vec<PatchOperation>,
    ) -> Result<Referral, RemoteError> {
        self.updates.fetch_add(1, Ordering::SeqCst);
        if self.armed.swap(false, Ordering::SeqCst) {
            self.entra.revoke_access_tokens();
            self.faults.inject(Service::Entra, Fault::status(503));
            let result = PartnerCenter::update_referral(&self.pc, id, etag, ops).await;
            self.faults.clear();
            return result;
        }
        PartnerCenter::update_referral(&self.pc, id, etag, ops).await
    }
}

struct Harness {
    s: Sandboxed,
    store: Arc<CrashingStore>,
    engine: Engine,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// The whole sandboxed setup on a SQLite store (behind the crash switch), fast client
    /// retries (4 attempts), webhooks on.
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let s = Sandboxed::builder()
            .store(StoreChoice::Sqlite(dir.path().join("state.sqlite")))
            .retry(
                RetryPolicy::default()
                    .with_initial_delay(Duration::from_millis(10))
                    .with_max_attempts(4),
            )
            .start()
            .await
            .unwrap();
        let store = Arc::new(CrashingStore {
            inner: s.store.clone(),
            dv: s.sandbox.dataverse().clone(),
            armed: AtomicBool::new(false),
        });
        let engine = Engine::new(
            Arc::new(s.partner_center.clone()),
            s.crm.clone(),
            store.clone(),
            EngineConfig::default(),
        );
        Harness {
            s,
            store,
            engine,
            _dir: dir,
        }
    }

    /// A new engine over the same store and clients: what a restarted process builds.
    fn restart(&self) -> Engine {
        self.engine_with(
            Arc::new(self.s.partner_center.clone()),
            EngineConfig::default(),
        )
    }

    fn engine_with(&self, pc: Arc<dyn PartnerCenter>, config: EngineConfig) -> Engine {
        Engine::new(pc, self.s.crm.clone(), self.store.clone(), config)
    }

    /// The process dies after the next create's remote writes, before its link is committed.
    fn crash_before_the_link_commit(&self) {
        self.store.armed.store(true, Ordering::SeqCst);
    }

    fn pc(&self) -> &cosell::sandbox::PartnerCenterEmulator {
        self.s.sandbox.partner_center()
    }

    fn dv(&self) -> &cosell::sandbox::DataverseEmulator {
        self.s.sandbox.dataverse()
    }

    fn faults(&self) -> &cosell::sandbox::faults::Faults {
        self.s.sandbox.faults()
    }

    async fn deliveries_settled(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.pc().wait_for_deliveries())
            .await
            .expect("webhook deliveries did not settle");
    }

    /// The webhook pass of the running service: wait for the callbacks, drain the inbox.
    async fn drain(&self, engine: &Engine) {
        self.deliveries_settled().await;
        engine.drain_inbox().await.unwrap();
    }

    /// Every pass the running service makes, `rounds` times: intents, inbox, CRM changes,
    /// reconcile, dead-letter replay.
    async fn passes(&self, engine: &Engine, rounds: usize) {
        for _ in 0..rounds {
            self.deliveries_settled().await;
            engine.run_once().await.unwrap();
            engine.replay_dead_letters().await.unwrap();
        }
        self.deliveries_settled().await;
        engine.drain_inbox().await.unwrap();
    }

    // ----- Partner Center side

    fn referral(&self, id: &str) -> Value {
        self.pc().referral(id).expect("referral exists")
    }

    fn status(&self, id: &str) -> (String, String) {
        let r = self.referral(id);
        (
            r["status"].as_str().unwrap_or_default().to_string(),
            r["substatus"].as_str().unwrap_or_default().to_string(),
        )
    }

    fn referrals_with_external_reference(&self, id: &str) -> Vec<Value> {
        self.pc()
            .referrals()
            .into_iter()
            .filter(|r| r["externalReferenceId"] == json!(id))
            .collect()
    }

    /// A referral a partner seller created in Partner Center (ours, Active/Accepted).
    async fn pc_referral(&self) -> String {
        let mut body = self.pc().generate_referral_request();
        // A currency the CRM has (the generator picks from several).
        body["details"]["currency"] = json!("USD");
        let referral: Referral = serde_json::from_value(body).unwrap();
        let created = self
            .s
            .partner_center
            .create_referral(&referral)
            .await
            .unwrap();
        created.id.unwrap()
    }

    /// An incoming referral from Microsoft (New/Pending) with `overrides`.
    fn incoming(&self, overrides: Value) -> String {
        let r = self.pc().create_incoming_referral(overrides).unwrap();
        r["id"].as_str().unwrap().to_string()
    }

    /// An incoming referral that is not co-sell: no help requested, not shared.
    fn incoming_not_co_sell(&self, name: &str) -> String {
        let id = self.incoming(json!({
            "name": name,
            "type": "Independent",
            "consent": {"consentToShareReferralWithMicrosoftSellers": false},
        }));
        if self.referral(&id)["inviteContext"]["assistanceRequestCode"].is_string() {
            self.pc()
                .update_as_microsoft(
                    &id,
                    json!([{"op": "remove", "path": "/inviteContext/assistanceRequestCode"}]),
                )
                .unwrap();
        }
        id
    }

    /// Someone accepts an incoming referral in Partner Center (New/Pending → Active/Accepted).
    fn accept_in_partner_center(&self, id: &str) {
        self.pc()
            .update_as_microsoft(
                id,
                json!([
                    {"op": "replace", "path": "/status", "value": "Active"},
                    {"op": "replace", "path": "/substatus", "value": "Accepted"}
                ]),
            )
            .unwrap();
    }

    fn microsoft_sets_notes(&self, id: &str, notes: &str) {
        self.pc()
            .update_as_microsoft(
                id,
                json!([{"op": "replace", "path": "/details/notes", "value": notes}]),
            )
            .unwrap();
    }

    // ----- CRM side

    fn opportunities_of(&self, referral_id: &str) -> Vec<Value> {
        self.dv()
            .query(
                "opportunity",
                &format!("cosell_referralid eq '{referral_id}'"),
            )
            .unwrap()
    }

    fn opportunity_by_referral(&self, referral_id: &str) -> Option<Value> {
        let rows = self.opportunities_of(referral_id);
        assert!(rows.len() <= 1, "duplicate opportunities: {rows:#?}");
        rows.into_iter().next()
    }

    fn lead_by_referral(&self, referral_id: &str) -> Option<Value> {
        self.dv()
            .query("lead", &format!("cosell_referralid eq '{referral_id}'"))
            .unwrap()
            .pop()
    }

    fn opportunity(&self, id: Uuid) -> Value {
        self.dv()
            .row("opportunity", id)
            .expect("opportunity exists")
    }

    fn lead(&self, id: Uuid) -> Value {
        self.dv().row("lead", id).expect("lead exists")
    }

    /// The solution rows linked to `opportunity` (through active link rows).
    fn solutions_of(&self, opportunity: Uuid) -> Vec<Uuid> {
        self.dv()
            .query(
                "cosell_opportunitysolution",
                &format!("_cosell_opportunityid_value eq {opportunity} and statecode eq 0"),
            )
            .unwrap()
            .iter()
            .map(|r| uuid_of(r, "_cosell_partnercentersolutionid_value"))
            .collect()
    }

    /// Syncs a Partner Center referral into the CRM and lets the echoes settle; returns the
    /// opportunity.
    async fn linked_pc_referral(&self) -> (String, Uuid) {
        let id = self.pc_referral().await;
        self.passes(&self.engine, 1).await;
        let opp = self
            .opportunity_by_referral(&id)
            .expect("the referral reached the CRM");
        (id, uuid_of(&opp, "opportunityid"))
    }

    async fn win(&self, opportunity: Uuid) {
        self.s
            .crm
            .client()
            .win_opportunity(
                opportunity,
                &OpportunityClose::new("Won by the seller"),
                OpportunityStatus::Won,
            )
            .await
            .unwrap();
    }

    async fn lose(&self, opportunity: Uuid) {
        self.s
            .crm
            .client()
            .lose_opportunity(
                opportunity,
                &OpportunityClose::new("Lost by the seller"),
                OpportunityStatus::OutSold,
            )
            .await
            .unwrap();
    }

    /// The seller qualifies a lead in the CRM, creating its opportunity; returns it.
    async fn seller_qualifies(&self, lead: Uuid) -> Uuid {
        self.s
            .crm
            .client()
            .qualify_lead(
                lead,
                &QualifyLead {
                    create_opportunity: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .opportunity_id
            .expect("QualifyLead created the opportunity")
    }

    // ----- store

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.store.dead_letters().await.unwrap()
    }

    async fn link(&self, referral_id: &str) -> Option<Link> {
        self.store.link_by_referral(referral_id).await.unwrap()
    }

    /// Writes (POST, PATCH, PUT, DELETE) either emulator received, counted on their side.
    fn writes(&self) -> u64 {
        let f = self.faults();
        [Method::POST, Method::PATCH, Method::PUT, Method::DELETE]
            .iter()
            .map(|m| {
                f.calls_matching(Service::Dataverse, m, "/api/data")
                    + f.calls_matching(Service::Referrals, m, "/v1.0/engagements/referrals")
            })
            .sum()
    }
}

fn uuid_of(row: &Value, column: &str) -> Uuid {
    Uuid::parse_str(row[column].as_str().expect("id column")).unwrap()
}

fn name_of(row: &Value, column: &str) -> String {
    row[column].as_str().unwrap_or_default().to_string()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

fn date_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().chars().take(10).collect()
}

// ------------------------------------------------------------------------------------ item 1

/// The seller edits a linked opportunity while Partner Center answers every PATCH with 503;
/// the engine's change-feed passes dead-letter it (twice: the service retries while Partner
/// Center is still down, which moves the feed past the row).
async fn a_crm_edit_meets_a_partner_center_outage(h: &Harness) -> (String, Uuid) {
    let (id, opp) = h.linked_pc_referral().await;
    h.dv()
        .update_as_user(
            "opportunity",
            opp,
            json!({"estimatedvalue": 424242.0, "estimatedclosedate": "2028-03-31",
                   "description": "The seller's new note."}),
        )
        .unwrap();
    h.faults().inject(
        Service::Referrals,
        Fault::status(503)
            .on_method(Method::PATCH)
            .on_path("/v1.0/engagements/referrals"),
    );
    let first = h.engine.pull_crm_changes().await.unwrap();
    assert_eq!(first.failures().count(), 1, "{first:#?}");
    h.engine.pull_crm_changes().await.unwrap();
    assert_eq!(h.dead_letters().await.len(), 1);
    h.faults().clear();
    (id, opp)
}

async fn assert_the_seller_edit_reached_partner_center(h: &Harness, id: &str, opp: Uuid) {
    let r = h.referral(id);
    assert_eq!(r["details"]["dealValue"].as_f64(), Some(424242.0));
    assert_eq!(r["details"]["notes"], json!("The seller's new note."));
    assert_eq!(date_of(&r["details"]["closingDateTime"]), "2028-03-31");
    let row = h.opportunity(opp);
    assert_eq!(row["estimatedvalue"].as_f64(), Some(424242.0));
    assert!(name_of(&row, "name").starts_with('✔'), "{}", row["name"]);
    assert!(
        h.dead_letters().await.is_empty(),
        "{:#?}",
        h.dead_letters().await
    );
}

// On main before the fix: the replay answers Unchanged ("eTag unchanged since last sync"),
// clears the dead letter and never sends the edit: `left: Some(1733500.0)` (the referral's
// generated deal value), `right: Some(424242.0)` on the referral's dealValue.
#[tokio::test]
async fn a_crm_edit_whose_partner_center_write_failed_reaches_partner_center_on_replay() {
    let h = Harness::start().await;
    let (id, opp) = a_crm_edit_meets_a_partner_center_outage(&h).await;
    h.engine.replay_dead_letters().await.unwrap();
    assert_the_seller_edit_reached_partner_center(&h, &id, opp).await;
}

// On main before the fix: no later pass sends the edit either (the change feed has moved past
// the row, the reconcile pass sees an unchanged eTag): `left: Some(1733500.0)`,
// `right: Some(424242.0)` on the referral's dealValue.
#[tokio::test]
async fn a_crm_edit_whose_partner_center_write_failed_reaches_partner_center_on_a_later_pass() {
    let h = Harness::start().await;
    let (id, opp) = a_crm_edit_meets_a_partner_center_outage(&h).await;
    h.deliveries_settled().await;
    h.engine.run_once().await.unwrap();
    h.drain(&h.engine).await;
    assert_the_seller_edit_reached_partner_center(&h, &id, opp).await;
}

// On main before the fix: the win dead-letters on the token error, the replay answers
// Unchanged (the referral's eTag did not move) and clears it; the referral stays
// Active/Accepted: `left: ("Active", "Accepted")`, `right: ("Closed", "Won")`.
#[tokio::test]
async fn a_crm_win_whose_partner_center_write_failed_on_a_token_error_closes_the_referral() {
    let h = Harness::start().await;
    let (id, opp) = h.linked_pc_referral().await;
    let pc = Arc::new(TokenFailsOnUpdate {
        pc: h.s.partner_center.clone(),
        entra: h.s.sandbox.entra().clone(),
        faults: h.faults().clone(),
        armed: AtomicBool::new(true),
        updates: AtomicUsize::new(0),
    });
    let engine = h.engine_with(pc.clone(), EngineConfig::default());
    h.win(opp).await;
    let report = engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.failures().count(), 1, "{report:#?}");
    assert_eq!(
        pc.updates.load(Ordering::SeqCst),
        1,
        "the win was sent once"
    );
    assert!(
        report.failures().any(|o| o.detail.contains("credential")),
        "{report:#?}"
    );
    assert_eq!(
        h.status(&id),
        pair("Active", "Accepted"),
        "the write failed"
    );
    h.passes(&engine, 2).await;
    assert_eq!(h.status(&id), pair("Closed", "Won"));
    assert!(
        h.dead_letters().await.is_empty(),
        "{:#?}",
        h.dead_letters().await
    );
}

// ------------------------------------------------------------------------------------ item 2

// On main before the fix: the failed pass had already written Microsoft's first note into the
// opportunity; the next pass takes that partial write for a seller edit, which wins the
// conflict over Microsoft's newer note and is written back to Partner Center:
// `left: String("Microsoft's first note.")`, `right: "Microsoft's newest note."`.
#[tokio::test]
async fn a_half_finished_sync_does_not_revert_microsofts_newer_edit() {
    let h = Harness::start().await;
    let (id, opp) = h.linked_pc_referral().await;
    assert!(!h.solutions_of(opp).is_empty(), "the solutions are linked");

    // Microsoft edits the notes and adds a solution; the engine's CRM write lands, then
    // linking the new solution fails (every link-row write answers 503).
    h.microsoft_sets_notes(&id, "Microsoft's first note.");
    h.pc()
        .update_as_microsoft(
            &id,
            json!([{"op": "add", "path": "/details/requirements/solutions/-", "value": {
                "id": "SOL-55501-HLF", "name": "Half-Finished Suite", "type": "Name",
                "publisherName": "Fabrikam", "solutionType": "3P"}}]),
        )
        .unwrap();
    h.faults().inject(
        Service::Dataverse,
        Fault::status(503)
            .on_method(Method::PATCH)
            .on_path("cosell_opportunitysolutions"),
    );
    h.drain(&h.engine).await;
    // On main the upsert has landed (the opportunity holds the first note) and the pass fails.
    assert!(h.faults().injected() > 0, "linking the solutions failed");
    h.faults().clear();

    // Microsoft edits the same field again before the engine runs.
    h.microsoft_sets_notes(&id, "Microsoft's newest note.");
    h.passes(&h.engine, 2).await;

    assert_eq!(
        h.referral(&id)["details"]["notes"],
        json!("Microsoft's newest note.")
    );
    assert_eq!(
        h.opportunity(opp)["description"],
        json!("Microsoft's newest note.")
    );
    assert!(
        h.dead_letters().await.is_empty(),
        "{:#?}",
        h.dead_letters().await
    );
}

// ------------------------------------------------------------------------------------ item 3

// On main before the fix: the drained webhook reconciles the pair through the lead's link; the
// lead maps to an opportunity payload which is upserted on the referral id, straight over the
// seller's new opportunity, with the lead's values: `left: Some(1733500.0)` (the referral's
// generated deal value), `right: Some(98765.0)` on the opportunity's estimatedvalue. (Without a
// Partner Center change before the change-feed pass, the opportunity is adopted and the
// seller's values survive; that order passes on main.)
#[tokio::test]
async fn qualifying_a_lead_keeps_the_sellers_edits_on_the_new_opportunity() {
    let h = Harness::start().await;
    let id = h.incoming_not_co_sell("Incoming, not co-sell");
    h.passes(&h.engine, 1).await;
    let lead = uuid_of(&h.lead_by_referral(&id).expect("a lead"), "leadid");

    // The seller qualifies the lead and, before the engine runs, sets the deal value and the
    // close date on the new opportunity.
    let opp = h.seller_qualifies(lead).await;
    h.dv()
        .update_as_user(
            "opportunity",
            opp,
            json!({"estimatedvalue": 98765.0, "estimatedclosedate": "2028-01-15"}),
        )
        .unwrap();
    // Meanwhile Microsoft records its CRM id on the referral: its webhook is drained before
    // the next change-feed pass, as in the running service (inbox every 250 ms, feed every 2 s).
    h.pc().set_microsoft_crm_id(&id, Some("MSX-7001")).unwrap();
    h.passes(&h.engine, 2).await;

    let row = h.opportunity(opp);
    assert_eq!(row["estimatedvalue"].as_f64(), Some(98765.0));
    assert_eq!(date_of(&row["estimatedclosedate"]), "2028-01-15");
    let r = h.referral(&id);
    assert_eq!(r["details"]["dealValue"].as_f64(), Some(98765.0));
    assert_eq!(date_of(&r["details"]["closingDateTime"]), "2028-01-15");
    assert_eq!(h.status(&id), pair("Active", "Accepted"));
    assert_eq!(row["cosell_microsoftcrmid"], json!("MSX-7001"));
    assert_eq!(h.opportunities_of(&id).len(), 1);
    assert_eq!(h.link(&id).await.unwrap().crm_id, Some(opp.to_string()));
}

// ------------------------------------------------------------------------------------ item 4

/// An incoming co-sell referral: Microsoft asks for help and shares it with its sellers.
fn incoming_co_sell(h: &Harness, name: &str) -> String {
    h.incoming(json!({
        "name": name,
        "type": "Shared",
        "consent": {"consentToShareReferralWithMicrosoftSellers": true},
        "inviteContext": {"assistanceRequestCode": "ProofOfConceptOrDemo"},
    }))
}

// On main before the fix: the opportunity QualifyLead created has no help choice, visibility,
// contact or solutions; adopting it reads those as the seller's removals, and the referral is
// refused: dead letter `consent.consentToShareReferralWithMicrosoftSellers: "" visibility to
// Microsoft sellers cannot be withdrawn once granted`; the referral stays
// `left: ("New", "Pending")`, `right: ("Active", "Accepted")`.
#[tokio::test]
async fn qualifying_a_co_sell_lead_accepts_the_referral() {
    let h = Harness::start().await;
    let id = incoming_co_sell(&h, "Incoming co-sell");
    h.passes(&h.engine, 1).await;
    let lead = uuid_of(&h.lead_by_referral(&id).expect("a lead"), "leadid");

    h.seller_qualifies(lead).await;
    h.passes(&h.engine, 3).await;

    let letters = h.dead_letters().await;
    assert_eq!(h.status(&id), pair("Active", "Accepted"), "{letters:#?}");
    assert!(
        h.dead_letters().await.is_empty(),
        "{:#?}",
        h.dead_letters().await
    );
    assert_eq!(h.opportunities_of(&id).len(), 1);
}

// ------------------------------------------------------------------------------------ item 5

// On main before the fix: the empty help choice and solutions of the opportunity QualifyLead
// created are sent to Partner Center as removals along with the acceptance:
// `left: Null`, `right: String("ProofOfConceptOrDemo")` on inviteContext.assistanceRequestCode
// (and the solutions are emptied).
#[tokio::test]
async fn qualifying_a_lead_keeps_microsofts_help_request_and_solutions() {
    let h = Harness::start().await;
    // Microsoft asks for help (a proof of concept) and names solutions, without sharing the
    // referral with its sellers.
    let id = h.incoming(json!({
        "name": "Incoming with a help request",
        "consent": {"consentToShareReferralWithMicrosoftSellers": false},
        "inviteContext": {"assistanceRequestCode": "ProofOfConceptOrDemo"},
    }));
    let before = h.referral(&id);
    let solutions = before["details"]["requirements"]["solutions"].clone();
    assert!(
        solutions.as_array().is_some_and(|s| !s.is_empty()),
        "{before:#}"
    );
    h.passes(&h.engine, 1).await;
    let lead = uuid_of(&h.lead_by_referral(&id).expect("a lead"), "leadid");

    let opp = h.seller_qualifies(lead).await;
    h.passes(&h.engine, 3).await;

    let after = h.referral(&id);
    assert_eq!(
        after["inviteContext"]["assistanceRequestCode"],
        json!("ProofOfConceptOrDemo")
    );
    assert_eq!(after["details"]["requirements"]["solutions"], solutions);
    let row = h.opportunity(opp);
    assert_eq!(row["cosell_helprequired"], json!(100000003), "{row:#}");
    assert_eq!(
        h.solutions_of(opp).len(),
        solutions.as_array().unwrap().len()
    );
    assert_eq!(h.status(&id), pair("Active", "Accepted"));
}

// ------------------------------------------------------------------------------------ item 6

// On main before the fix: the ✔ written with the opportunity payload is computed on the lead's
// row, so the payload carries the lead's `subject` column and Dataverse refuses it every time:
// dead letter `… The property 'subject' does not exist on type
// 'Microsoft.Dynamics.CRM.opportunity' …` (7 attempts), no opportunity.
#[tokio::test]
async fn an_accepted_referral_reaches_the_crm_after_the_seller_renamed_its_lead() {
    let h = Harness::start().await;
    let id = h.incoming_not_co_sell("Incoming to rename");
    h.passes(&h.engine, 1).await;
    let lead = uuid_of(&h.lead_by_referral(&id).expect("a lead"), "leadid");
    assert!(name_of(&h.lead(lead), "subject").starts_with('✔'));

    // The seller renames the lead's topic (the ✔ goes with it); the engine syncs that.
    h.dv()
        .update_as_user("lead", lead, json!({"subject": "Renamed by the seller"}))
        .unwrap();
    h.passes(&h.engine, 1).await;

    // The referral is accepted in Partner Center.
    h.accept_in_partner_center(&id);
    h.passes(&h.engine, 3).await;
    assert_the_accepted_referral_has_its_open_opportunity(&h, &id).await;
}

async fn assert_the_accepted_referral_has_its_open_opportunity(h: &Harness, id: &str) {
    let id = id.to_string();
    let letters = h.dead_letters().await;
    let opp = h
        .opportunity_by_referral(&id)
        .unwrap_or_else(|| panic!("no opportunity for the accepted referral: {letters:#?}"));
    assert_eq!(opp["statecode"], json!(0), "open");
    let link = h.link(&id).await.unwrap();
    assert_eq!(
        (
            link.crm_entity.as_str(),
            link.crm_id.as_deref().unwrap_or_default()
        ),
        ("opportunity", opp["opportunityid"].as_str().unwrap())
    );
    assert!(
        h.dead_letters().await.is_empty(),
        "{:#?}",
        h.dead_letters().await
    );
}

// On main before the fix: the same refusal once a failed write left ✖ on the lead's topic:
// dead letter `… The property 'subject' does not exist on type
// 'Microsoft.Dynamics.CRM.opportunity' …`, no opportunity.
#[tokio::test]
async fn an_accepted_referral_reaches_the_crm_after_a_failure_marked_its_lead() {
    let h = Harness::start().await;
    let id = h.incoming_not_co_sell("Incoming to mark");
    h.passes(&h.engine, 1).await;
    let lead = uuid_of(&h.lead_by_referral(&id).expect("a lead"), "leadid");

    // Microsoft edits the notes; writing them to the lead fails on every attempt (the ✖ and
    // the error text still land).
    h.microsoft_sets_notes(&id, "A note the lead did not get.");
    h.faults().inject(
        Service::Dataverse,
        Fault::status(503)
            .on_method(Method::PATCH)
            .on_path("leads(")
            .times(4),
    );
    h.drain(&h.engine).await;
    assert!(name_of(&h.lead(lead), "subject").starts_with('✖'));
    h.faults().clear();

    // The referral is accepted in Partner Center before the next pass.
    h.accept_in_partner_center(&id);
    h.passes(&h.engine, 3).await;
    assert_the_accepted_referral_has_its_open_opportunity(&h, &id).await;
}

// ------------------------------------------------------------------------------------ item 7

// On main before the fix: after the restart the pair is adopted with the current referral as
// the base, so the opportunity's older notes look like a seller edit and overwrite Microsoft's:
// `left: String("Needs a proof of concept.")`, `right: String("Microsoft's note from the crash
// window.")` on the referral's notes.
#[tokio::test]
async fn microsofts_edit_made_while_a_crm_create_was_unlinked_survives_the_restart() {
    let h = Harness::start().await;
    let opp = h.s.seed_co_sell_opportunity("Crash Window Deal").unwrap();
    // The referral is created and its id written back to the opportunity; the process dies
    // before the link is committed.
    h.crash_before_the_link_commit();
    assert!(h.engine.pull_crm_changes().await.is_err(), "the crash");
    let referrals = h.referrals_with_external_reference(&opp.to_string());
    assert_eq!(referrals.len(), 1);
    let id = referrals[0]["id"].as_str().unwrap().to_string();
    // The crash left the pair unverified: at most a plan or an unconfirmed link survived.
    assert!(h.link(&id).await.is_none_or(|l| !l.in_sync));

    // While the service is down, Microsoft edits the notes.
    h.microsoft_sets_notes(&id, "Microsoft's note from the crash window.");
    let restarted = h.restart();
    h.passes(&restarted, 3).await;

    assert_eq!(
        h.referral(&id)["details"]["notes"],
        json!("Microsoft's note from the crash window.")
    );
    assert_eq!(
        h.opportunity(opp)["description"],
        json!("Microsoft's note from the crash window.")
    );
    assert_eq!(
        h.referrals_with_external_reference(&opp.to_string()).len(),
        1
    );
    assert!(h.link(&id).await.is_some());
}

// On main before the fix: after the restart the referral is created in the CRM again (upsert
// on the referral id) over the seller's edit: `left: Some(1733500.0)`, `right: Some(31337.0)`
// on the opportunity's estimatedvalue.
#[tokio::test]
async fn the_sellers_edit_made_while_a_partner_center_create_was_unlinked_survives_the_restart() {
    let h = Harness::start().await;
    let id = h.pc_referral().await;
    h.deliveries_settled().await;
    // The opportunity is upserted; the process dies before the link is committed.
    h.crash_before_the_link_commit();
    assert!(h.engine.drain_inbox().await.is_err(), "the crash");
    let opp = uuid_of(&h.opportunity_by_referral(&id).unwrap(), "opportunityid");
    // The crash left the pair unverified: at most a plan or an unconfirmed link survived.
    assert!(h.link(&id).await.is_none_or(|l| !l.in_sync));

    // While the service is down, the seller sets the deal value.
    h.dv()
        .update_as_user("opportunity", opp, json!({"estimatedvalue": 31337.0}))
        .unwrap();
    let restarted = h.restart();
    h.passes(&restarted, 3).await;

    assert_eq!(h.opportunity(opp)["estimatedvalue"].as_f64(), Some(31337.0));
    assert_eq!(
        h.referral(&id)["details"]["dealValue"].as_f64(),
        Some(31337.0)
    );
    assert!(h.link(&id).await.is_some());
}

// ------------------------------------------------------------------------------------ item 8

// On main before the fix: the change feed adopts the opportunity the failed pass had written,
// the link moves to it, and nothing ever qualifies the lead: `the lead is still open: []`,
// `left: Number(0)`, `right: Number(1)` on the lead's statecode.
#[tokio::test]
async fn a_failed_qualify_lead_is_finished_by_a_later_pass() {
    let h = Harness::start().await;
    let id = h.incoming_not_co_sell("Incoming to accept");
    h.passes(&h.engine, 1).await;
    let lead = uuid_of(&h.lead_by_referral(&id).expect("a lead"), "leadid");

    // The referral is accepted in Partner Center; the engine writes the opportunity, then its
    // QualifyLead call fails (503 on every attempt).
    h.accept_in_partner_center(&id);
    h.faults().inject(
        Service::Dataverse,
        Fault::status(503)
            .on_method(Method::POST)
            .on_path("QualifyLead"),
    );
    h.drain(&h.engine).await;
    assert!(h.faults().injected() > 0, "QualifyLead was refused");
    h.faults().clear();
    h.passes(&h.engine, 3).await;

    let letters = h.dead_letters().await;
    assert_eq!(
        h.lead(lead)["statecode"],
        json!(1),
        "the lead is still open: {letters:#?}"
    );
    let opps = h.opportunities_of(&id);
    assert_eq!(opps.len(), 1, "exactly one opportunity");
    let opp = uuid_of(&opps[0], "opportunityid");
    let link = h.link(&id).await.unwrap();
    assert_eq!(
        (link.crm_entity.as_str(), link.crm_id.clone()),
        ("opportunity", Some(opp.to_string()))
    );
    assert!(
        h.dead_letters().await.is_empty(),
        "{:#?}",
        h.dead_letters().await
    );

    // The pair goes on syncing.
    h.dv()
        .update_as_user("opportunity", opp, json!({"estimatedvalue": 55000.0}))
        .unwrap();
    h.passes(&h.engine, 1).await;
    assert_eq!(
        h.referral(&id)["details"]["dealValue"].as_f64(),
        Some(55000.0)
    );
}

// ------------------------------------------------------------------------------------ item 9

// On main before the fix: every later pass tries to write the identity back to the won (read-
// only) row and fails: `the pair is not linked`, dead letters `opportunity:…` `This opportunity
// is Won and read-only; reactivate it (statecode 0) before editing.` (and `referral:…`), and the
// referral stays Active/Accepted.
#[tokio::test]
async fn an_opportunity_won_before_its_first_sync_completed_is_linked_and_closes_the_referral() {
    let h = Harness::start().await;
    let opp = h.s.seed_co_sell_opportunity("Quick Win Deal").unwrap();
    // The referral is created, but writing its id back to the opportunity fails.
    h.faults().inject(
        Service::Dataverse,
        Fault::status(503)
            .on_method(Method::PATCH)
            .on_path("opportunities("),
    );
    h.engine.pull_crm_changes().await.unwrap();
    assert!(h.faults().injected() > 0, "the write-back was refused");
    let referrals = h.referrals_with_external_reference(&opp.to_string());
    assert_eq!(referrals.len(), 1);
    let id = referrals[0]["id"].as_str().unwrap().to_string();

    // Meanwhile the seller wins the opportunity; then the CRM recovers.
    h.win(opp).await;
    h.faults().clear();
    h.passes(&h.engine, 3).await;

    let letters = h.dead_letters().await;
    assert!(
        h.link(&id).await.is_some(),
        "the pair is not linked: {letters:#?}"
    );
    assert_eq!(
        h.referrals_with_external_reference(&opp.to_string()).len(),
        1
    );
    assert_eq!(h.status(&id), pair("Closed", "Won"));
    assert!(
        h.dead_letters().await.is_empty(),
        "{:#?}",
        h.dead_letters().await
    );
}

// ----------------------------------------------------------------------------------- item 10

// On main before the fix: the referral is closed as Won, then every pass tries to write
// Microsoft's note to the won row: dead letter `referral:…` `This opportunity is Won and
// read-only; reactivate it (statecode 0) before editing.` with 9 attempts after the passes.
#[tokio::test]
async fn an_edit_racing_a_win_settles_instead_of_retrying_forever() {
    let h = Harness::start().await;
    let (id, opp) = h.linked_pc_referral().await;
    // Microsoft edits the notes while the seller wins the opportunity, before the engine runs.
    h.microsoft_sets_notes(&id, "Microsoft's note racing the win.");
    h.win(opp).await;
    h.passes(&h.engine, 3).await;

    assert!(
        h.dead_letters().await.is_empty(),
        "{:#?}",
        h.dead_letters().await
    );
    assert_eq!(h.status(&id), pair("Closed", "Won"));
    let before = h.writes();
    h.passes(&h.engine, 1).await;
    assert_eq!(h.writes(), before, "a settled pair writes nothing");

    let row = h.opportunity(opp);
    let applied = row["description"] == json!("Microsoft's note racing the win.");
    let audit = h
        .store
        .audit(&AuditQuery {
            referral_id: Some(id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let explained = audit.iter().any(|e| {
        e.outcome != cosell::sync::store::AuditOutcome::Failed
            && e.message.to_lowercase().contains("closed")
    });
    assert!(
        applied || explained,
        "the CRM holds Microsoft's note or the audit says why not: {row:#} {audit:#?}"
    );
    assert_eq!(row["statecode"], json!(1), "still won");
}

// ----------------------------------------------------------------------------------- item 11

// On main before the fix: every round after the sync writes nothing (that part holds), but the
// sync itself leaves the sides apart: Partner Center was made visible (help requested implies
// it) while the base and the CRM got `false` from the merge, so the write is left pending until
// some unrelated change comes: `left: Bool(false)`, `right: Bool(true)` on the CRM's
// visibility column after the sync, and Microsoft's later note edit rewrites it.
#[tokio::test]
async fn an_empty_visibility_column_leaves_no_write_pending() {
    let h = Harness::start().await;
    // The seller's opportunity, not co-sell, with "Referral Visibility" left empty.
    let opp =
        h.s.seed_co_sell_opportunity("Empty Visibility Deal")
            .unwrap();
    h.dv()
        .update_as_user(
            "opportunity",
            opp,
            json!({"cosell_visibletomicrosoft": null, "cosell_helprequired": null}),
        )
        .unwrap();
    h.passes(&h.engine, 1).await;
    let id = h.referrals_with_external_reference(&opp.to_string())[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Later the seller asks for Microsoft's help, still leaving visibility empty.
    h.dv()
        .update_as_user(
            "opportunity",
            opp,
            json!({"cosell_helprequired": 100000003}),
        )
        .unwrap();
    h.passes(&h.engine, 1).await;
    let referral = h.referral(&id);
    assert_eq!(
        referral["consent"]["consentToShareReferralWithMicrosoftSellers"],
        json!(true),
        "help requested makes the referral visible"
    );

    // A second full round writes nothing.
    let before = h.writes();
    h.passes(&h.engine, 1).await;
    assert_eq!(h.writes(), before, "a second round writes nothing");

    // Both sides already agree: the CRM does not say "not visible" while Partner Center
    // shares the referral, so nothing is left to write when something unrelated changes.
    let visibility = h.opportunity(opp)["cosell_visibletomicrosoft"].clone();
    assert_ne!(
        visibility,
        json!(false),
        "the CRM contradicts Partner Center"
    );
    h.microsoft_sets_notes(&id, "An unrelated note.");
    h.passes(&h.engine, 1).await;
    let row = h.opportunity(opp);
    assert_eq!(row["description"], json!("An unrelated note."));
    assert_eq!(
        row["cosell_visibletomicrosoft"], visibility,
        "a write was left pending"
    );
}

// ----------------------------------------------------------------------------------- item 12

// On main before the fix: the retry finds both sides equal, writes nothing, and so never
// replaces the mark: the name stays `"✖ VanArsdel Ltd - Supply Chain Suite"` (the dead letter
// is cleared).
#[tokio::test]
async fn the_cross_goes_once_the_pair_is_back_in_sync() {
    let h = Harness::start().await;
    let (id, opp) = h.linked_pc_referral().await;
    // The seller edits the notes; Partner Center applies the PATCH, but its response (and those
    // of the client's retries) is lost.
    h.dv()
        .update_as_user(
            "opportunity",
            opp,
            json!({"description": "The seller's note, response lost."}),
        )
        .unwrap();
    h.faults().inject(
        Service::Referrals,
        Fault::drop_after()
            .on_method(Method::PATCH)
            .on_path("/v1.0/engagements/referrals")
            .times(4),
    );
    // On main this pass fails (unknown outcome) and marks the opportunity ✖.
    h.engine.pull_crm_changes().await.unwrap();
    assert_eq!(
        h.referral(&id)["details"]["notes"],
        json!("The seller's note, response lost."),
        "the PATCH was applied"
    );

    h.passes(&h.engine, 2).await;
    let row = h.opportunity(opp);
    assert!(name_of(&row, "name").starts_with('✔'), "{}", row["name"]);
    assert!(
        h.dead_letters().await.is_empty(),
        "{:#?}",
        h.dead_letters().await
    );
}

// ----------------------------------------------------------------------------------- item 13

/// The seller closes a linked opportunity; the service's passes run. Checked right after the
/// change-feed pass that closes the referral, and again after several more passes.
async fn a_close_syncs_without_a_dead_letter(won: bool) {
    let h = Harness::start().await;
    let (id, opp) = h.linked_pc_referral().await;
    if won {
        h.win(opp).await;
    } else {
        h.lose(opp).await;
    }
    let closed = if won {
        pair("Closed", "Won")
    } else {
        pair("Closed", "Lost")
    };
    let report = h.engine.pull_crm_changes().await.unwrap();
    let failed: Vec<&str> = report.failures().map(|o| o.detail.as_str()).collect();
    assert_eq!(h.status(&id), closed, "{failed:?}");
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        h.dead_letters().await.is_empty(),
        "{:#?}",
        h.dead_letters().await
    );

    h.passes(&h.engine, 3).await;
    assert_eq!(h.status(&id), closed);
    assert!(
        h.dead_letters().await.is_empty(),
        "{:#?}",
        h.dead_letters().await
    );
    assert_eq!(
        h.opportunity(opp)["statecode"],
        json!(if won { 1 } else { 2 })
    );
}

// On main before the fix: the pass that closes the referral then writes the ✔ and audit text
// to the won row and fails: `Failed, "dataverse (Rejected): service answered 400 (0x80043b1b):
// This opportunity is Won and read-only; reactivate it (statecode 0) before editing."`, with a
// dead letter. In the emulator the letter is cleared by the next webhook drain (Partner Center
// now equals the CRM, nothing is left to write), so it is not permanent here; the test pins the
// pass that closes the referral.
#[tokio::test]
async fn winning_a_linked_opportunity_closes_the_referral_without_a_dead_letter() {
    a_close_syncs_without_a_dead_letter(true).await;
}

// On main before the fix: as for the win, `This opportunity is Lost and read-only; …` after the
// pass that closes the referral (cleared by the next webhook drain in the emulator). The
// `…Closed/Lost, a terminal state` letter of the issue was not reproduced.
#[tokio::test]
async fn losing_a_linked_opportunity_closes_the_referral_without_a_dead_letter() {
    a_close_syncs_without_a_dead_letter(false).await;
}

// ----------------------------------------------------------------------------------- item 14

// On main before the fix: an ordinary pass adopts the pair and clears `opportunity:…`, but the
// letter the webhook drain left under the referral's key stays listed although the pair is
// linked and in sync: `[DeadLetter { key: "referral:…", error: "dataverse (Transient): service
// answered 503 (0x80040216): Service Unavailable", … }]`.
#[tokio::test]
async fn a_dead_letter_healed_by_another_pass_is_gone() {
    let h = Harness::start().await;
    let opp =
        h.s.seed_co_sell_opportunity("Healed Elsewhere Deal")
            .unwrap();
    // The referral is created, but writing its id back to the opportunity fails, in the
    // change-feed pass and again when its referral-created webhook is drained.
    h.faults().inject(
        Service::Dataverse,
        Fault::status(503)
            .on_method(Method::PATCH)
            .on_path("opportunities("),
    );
    h.engine.pull_crm_changes().await.unwrap();
    h.drain(&h.engine).await;
    assert!(!h.dead_letters().await.is_empty());
    h.faults().clear();
    let id = h.referrals_with_external_reference(&opp.to_string())[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The CRM is back; the service's ordinary passes (not the dead-letter replay) link the pair.
    for _ in 0..2 {
        h.deliveries_settled().await;
        h.engine.run_once().await.unwrap();
    }
    h.drain(&h.engine).await;
    assert!(h.link(&id).await.is_some(), "the pair is linked");
    assert_eq!(h.opportunity(opp)["cosell_referralid"], json!(id));
    assert!(
        h.dead_letters().await.is_empty(),
        "{:#?}",
        h.dead_letters().await
    );
}

// ----------------------------------------------------------------------------------- item 15

// On main before the fix: the dry run acknowledges the hints it only planned:
// `a dry run acknowledges nothing`, `left: 0`, `right: 1` pending hints.
#[tokio::test]
async fn a_dry_run_leaves_the_webhook_hints_for_the_real_engine() {
    let h = Harness::start().await;
    let id = h.pc_referral().await;
    h.deliveries_settled().await;
    let pending = h.store.pending_hints(100).await.unwrap().len();
    assert!(pending > 0, "the referral-created webhook is in the inbox");

    let dry = h.engine_with(
        Arc::new(h.s.partner_center.clone()),
        EngineConfig {
            dry_run: true,
            ..EngineConfig::default()
        },
    );
    dry.drain_inbox().await.unwrap();
    assert_eq!(
        h.store.pending_hints(100).await.unwrap().len(),
        pending,
        "a dry run acknowledges nothing"
    );
    assert!(
        h.opportunity_by_referral(&id).is_none(),
        "and writes nothing"
    );

    h.engine.drain_inbox().await.unwrap();
    assert!(
        h.opportunity_by_referral(&id).is_some(),
        "the real engine syncs the hint"
    );
    assert!(h.store.pending_hints(100).await.unwrap().is_empty());
}
