//! Workflows of the original solution as a seller and Microsoft perform them (issue 10), each a
//! user story against both emulators over loopback: the seller's and Microsoft's actions, the
//! service's passes, then both sides' final state read from the emulators themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cosell::http::RetryPolicy;
use cosell::mapping::Side;
use cosell::sandbox::Service;
use cosell::sandboxed::Sandboxed;
use cosell::sync::store::AuditQuery;
use cosell::sync::{Action, Engine, EngineConfig};
use http::Method;
use serde_json::{Value, json};
use uuid::Uuid;

struct Harness {
    s: Sandboxed,
}

impl Harness {
    async fn start() -> Harness {
        Harness::with(Sandboxed::builder()).await
    }

    /// A harness from `builder` (a schema, a field map), with fast client retries.
    async fn with(builder: cosell::sandboxed::SandboxedBuilder) -> Harness {
        let s = builder
            .retry(
                RetryPolicy::default()
                    .with_initial_delay(Duration::from_millis(10))
                    .with_max_attempts(3),
            )
            .start()
            .await
            .unwrap();
        Harness { s }
    }

    /// A harness whose leads have an audit column (the sandbox's leads carry `cosell_audit`;
    /// the default map writes none on a lead).
    async fn start_with_lead_audit() -> Harness {
        let map =
            cosell::mapping::FieldMap::from_toml("[columns.lead]\naudit = \"cosell_audit\"\n")
                .unwrap();
        Harness::with(Sandboxed::builder().field_map(map)).await
    }

    fn dry_run_engine(&self) -> Engine {
        self.s.restart_engine(EngineConfig {
            dry_run: true,
            ..EngineConfig::default()
        })
    }

    async fn settled(&self) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.s.sandbox.partner_center().wait_for_deliveries(),
        )
        .await
        .expect("webhook deliveries did not settle");
    }

    /// What the running service does, once: every pass.
    async fn service_round(&self) {
        self.settled().await;
        self.s.engine.run_once().await.unwrap();
        self.s.engine.replay_dead_letters().await.unwrap();
    }

    /// Writes either emulator has taken (Dataverse and the referrals API), by its own counters.
    fn writes(&self) -> u64 {
        let f = self.s.sandbox.faults();
        [Method::POST, Method::PATCH, Method::PUT, Method::DELETE]
            .iter()
            .map(|m| {
                f.calls_matching(Service::Dataverse, m, "/api/data")
                    + f.calls_matching(Service::Referrals, m, "/v1.0/engagements/referrals")
            })
            .sum()
    }

    fn referral(&self, id: &str) -> Value {
        self.s.sandbox.partner_center().referral(id).unwrap()
    }

    fn opportunity(&self, id: Uuid) -> Value {
        self.s.sandbox.dataverse().row("opportunity", id).unwrap()
    }

    /// The referral created from a CRM opportunity.
    fn referral_of(&self, opp: Uuid) -> String {
        let all: Vec<Value> = self
            .s
            .sandbox
            .partner_center()
            .referrals()
            .into_iter()
            .filter(|r| r["externalReferenceId"] == json!(opp.to_string()))
            .collect();
        assert_eq!(all.len(), 1, "one referral for the opportunity");
        all[0]["id"].as_str().unwrap().to_string()
    }
}

/// Issue 10, item 8. The operator turns on a dry run to see what the sync would do: a new
/// referral from Microsoft and a seller's deal-value change are both listed field by field,
/// with the side each goes to; nothing is written, no webhook hint and no cursor is consumed,
/// and the real service afterwards does exactly that.
#[tokio::test]
async fn a_dry_run_lists_each_records_writes_and_changes_nothing() {
    let h = Harness::start().await;
    // A linked co-sell deal, in sync.
    let opp = h.s.seed_co_sell_opportunity("Dry Run Deal").unwrap();
    h.service_round().await;
    let referral = h.referral_of(opp);
    h.service_round().await;

    // The seller changes the deal value; Microsoft sends a new referral.
    h.s.sandbox
        .dataverse()
        .update_as_user("opportunity", opp, json!({"estimatedvalue": 424242.0}))
        .unwrap();
    let incoming =
        h.s.sandbox
            .partner_center()
            .create_incoming_referral(
                json!({"name": "Planned Incoming", "details": {"currency": "USD"}}),
            )
            .unwrap();
    let incoming = incoming["id"].as_str().unwrap().to_string();
    h.settled().await;

    let hints_before = h.s.store.pending_hints(100).await.unwrap().len();
    assert!(hints_before >= 1, "the new referral's webhook is queued");
    let cursor_before =
        h.s.store
            .checkpoint("crm.changes.opportunity")
            .await
            .unwrap();
    let writes_before = h.writes();
    let links_before = h.s.store.links().await.unwrap();

    let plan = h.dry_run_engine().run_once().await.unwrap();

    // Per record, what would be written to which side.
    let edit = plan
        .outcomes
        .iter()
        .find(|o| o.referral_id.as_deref() == Some(referral.as_str()) && !o.writes.is_empty())
        .unwrap_or_else(|| panic!("the seller's edit is planned: {plan:#?}"));
    assert_eq!(edit.action, Action::Planned);
    assert!(
        edit.writes.iter().any(|w| w.side == Side::PartnerCenter
            && w.field == "/details/dealValue"
            && w.value.as_f64() == Some(424242.0)),
        "{:#?}",
        edit.writes
    );
    let new = plan
        .outcomes
        .iter()
        .find(|o| o.referral_id.as_deref() == Some(incoming.as_str()))
        .unwrap_or_else(|| panic!("the new referral is planned: {plan:#?}"));
    assert_eq!(new.action, Action::Planned);
    assert!(
        new.writes.iter().any(|w| w.side == Side::Crm
            && w.field == "name"
            && w.value == json!("Planned Incoming")),
        "{:#?}",
        new.writes
    );
    // Readable for a CLI.
    assert!(
        edit.writes
            .iter()
            .any(|w| w.to_string() == "Partner Center /details/dealValue = 424242"),
        "{:?}",
        edit.writes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );

    // Nothing changed anywhere.
    assert_eq!(
        h.writes(),
        writes_before,
        "a dry run writes to neither service"
    );
    assert_eq!(
        h.s.store.pending_hints(100).await.unwrap().len(),
        hints_before
    );
    assert_eq!(
        h.s.store
            .checkpoint("crm.changes.opportunity")
            .await
            .unwrap(),
        cursor_before
    );
    assert_eq!(h.s.store.links().await.unwrap(), links_before);
    assert_ne!(
        h.referral(&referral)["details"]["dealValue"].as_f64(),
        Some(424242.0)
    );

    // The real service then does what was planned.
    h.service_round().await;
    assert_eq!(
        h.referral(&referral)["details"]["dealValue"].as_f64(),
        Some(424242.0)
    );
    assert!(
        h.s.store
            .link_by_referral(&incoming)
            .await
            .unwrap()
            .is_some()
    );
}

/// Issue 10, item 2. The seller renames the deal in the CRM. Partner Center cannot take a new
/// name after creation, so the referral keeps its name; the CRM keeps the seller's name (it is
/// never written back over), and the audit trail says the change is not writable in Partner
/// Center.
#[tokio::test]
async fn a_rename_in_the_crm_stays_the_sellers_and_is_audited_as_not_writable() {
    let h = Harness::start().await;
    let opp = h.s.seed_co_sell_opportunity("Original Name").unwrap();
    h.service_round().await;
    let referral = h.referral_of(opp);
    let pc_name = h.referral(&referral)["name"].clone();

    h.s.sandbox
        .dataverse()
        .update_as_user("opportunity", opp, json!({"name": "Renamed by the seller"}))
        .unwrap();
    for _ in 0..3 {
        h.service_round().await;
    }

    let crm_name = h.opportunity(opp)["name"].as_str().unwrap().to_string();
    assert!(
        crm_name.ends_with("Renamed by the seller"),
        "the seller's name stays: {crm_name}"
    );
    assert_eq!(
        h.referral(&referral)["name"],
        pc_name,
        "Partner Center keeps its name"
    );
    let audit =
        h.s.store
            .audit(&AuditQuery {
                referral_id: Some(referral.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.message.contains("not writable in Partner Center: name")),
        "{audit:#?}"
    );
    // Settled: another round writes nothing.
    let before = h.writes();
    h.service_round().await;
    assert_eq!(h.writes(), before);
}

/// Issue 10, item 5. Microsoft sends a referral not yet accepted: the seller's lead links to it
/// like an opportunity does, with the Referral Link to open it in Partner Center and the
/// engagement id, and keeps them when Microsoft updates the referral.
#[tokio::test]
async fn a_lead_carries_the_referral_link_and_engagement_id() {
    let h = Harness::start().await;
    let incoming = h
        .s
        .sandbox
        .partner_center()
        .create_incoming_referral(json!({"name": "Linked Lead", "details": {"currency": "USD"}}))
        .unwrap();
    let id = incoming["id"].as_str().unwrap().to_string();
    h.service_round().await;

    let leads =
        h.s.sandbox
            .dataverse()
            .query("lead", &format!("cosell_referralid eq '{id}'"))
            .unwrap();
    assert_eq!(leads.len(), 1, "one lead for the referral");
    let lead = &leads[0];
    let link = lead["cosell_referrallink"].as_str().unwrap_or_default();
    assert!(
        link.ends_with(&id),
        "the Referral Link opens the referral: {link:?}"
    );
    let engagement = h.referral(&id)["engagementId"].clone();
    assert!(engagement.is_string(), "the referral has an engagement");
    assert_eq!(lead["cosell_engagementid"], engagement);

    // Microsoft updates the referral; the lead keeps its link.
    h.s.sandbox
        .partner_center()
        .update_as_microsoft(
            &id,
            json!([{"op": "replace", "path": "/details/notes", "value": "More detail."}]),
        )
        .unwrap();
    h.service_round().await;
    let lead =
        h.s.sandbox
            .dataverse()
            .query("lead", &format!("cosell_referralid eq '{id}'"))
            .unwrap()
            .pop()
            .unwrap();
    assert_eq!(lead["description"], json!("More detail."));
    assert_eq!(lead["cosell_engagementid"], engagement);
    assert!(
        lead["cosell_referrallink"]
            .as_str()
            .unwrap_or_default()
            .ends_with(&id)
    );
}

/// An incoming referral shared with Microsoft sellers or not, with or without solutions.
fn incoming_kind(shared: bool, solutions: bool, name: &str) -> Value {
    let mut body = json!({
        "name": name,
        "type": if shared { "Shared" } else { "Independent" },
        "consent": {"consentToShareReferralWithMicrosoftSellers": shared},
        "details": {"currency": "USD"},
    });
    if !solutions {
        body["details"]["requirements"] = json!({"solutions": []});
    }
    body
}

/// Issue 10, item 6. For every kind of incoming referral (shared with Microsoft sellers or not,
/// with or without a help request, with or without solutions), the seller accepts one by
/// qualifying its lead and declines another by disqualifying it: Partner Center shows Accepted /
/// Declined, keeps Microsoft's data (help request, solutions, notes, customer contacts), and
/// nothing is dead-lettered.
#[tokio::test]
async fn accept_and_decline_from_the_crm_work_for_every_kind_of_incoming_referral() {
    let h = Harness::start().await;
    // The generator decides whether Microsoft asks for help; draw referrals until every kind
    // has one to accept and one to decline (bounded).
    let mut kinds: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for n in 0..400 {
        if kinds.len() == 8 && kinds.values().all(|ids| ids.len() >= 2) {
            break;
        }
        let (shared, solutions) = (n % 2 == 0, n % 4 < 2);
        let r =
            h.s.sandbox
                .partner_center()
                .create_incoming_referral(incoming_kind(shared, solutions, &format!("Kind {n}")))
                .unwrap();
        let help = r["inviteContext"]["assistanceRequestCode"].is_string();
        let tag = format!("shared={shared} help={help} solutions={solutions}");
        let ids = kinds.entry(tag).or_default();
        if ids.len() < 2 {
            ids.push(r["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(kinds.len(), 8, "every kind drawn: {:?}", kinds.keys());
    let cases: Vec<(String, Vec<String>)> = kinds.into_iter().collect();
    h.service_round().await;
    let before: Vec<(String, Value)> = cases
        .iter()
        .flat_map(|(_, ids)| ids.iter())
        .map(|id| (id.clone(), h.referral(id)))
        .collect();

    let dv = h.s.sandbox.dataverse();
    let lead_of = |id: &str| -> Uuid {
        let lead = dv
            .query("lead", &format!("cosell_referralid eq '{id}'"))
            .unwrap()
            .pop()
            .unwrap_or_else(|| panic!("a lead for {id}"));
        Uuid::parse_str(lead["leadid"].as_str().unwrap()).unwrap()
    };
    for (_, ids) in &cases {
        // The seller qualifies the first lead (creating its opportunity) and disqualifies the
        // second.
        h.s.crm
            .client()
            .qualify_lead(
                lead_of(&ids[0]),
                &cosell::dataverse::QualifyLead {
                    create_opportunity: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        dv.update_as_user(
            "lead",
            lead_of(&ids[1]),
            json!({"statecode": 2, "statuscode": 6}),
        )
        .unwrap();
    }
    for _ in 0..2 {
        h.service_round().await;
    }

    for (tag, ids) in &cases {
        let accepted = h.referral(&ids[0]);
        let declined = h.referral(&ids[1]);
        assert_eq!(
            (accepted["status"].as_str(), accepted["substatus"].as_str()),
            (Some("Active"), Some("Accepted")),
            "{tag}: qualifying the lead accepts"
        );
        assert_eq!(
            (declined["status"].as_str(), declined["substatus"].as_str()),
            (Some("Closed"), Some("Declined")),
            "{tag}: disqualifying the lead declines"
        );
        // Microsoft's data is kept.
        for (id, now) in [(&ids[0], &accepted), (&ids[1], &declined)] {
            let was = &before.iter().find(|(b, _)| b == id).unwrap().1;
            for path in [
                "/inviteContext/assistanceRequestCode",
                "/details/requirements/solutions",
                "/details/notes",
                "/customerProfile/team",
                "/consent/consentToShareReferralWithMicrosoftSellers",
            ] {
                assert_eq!(
                    now.pointer(path),
                    was.pointer(path),
                    "{tag} {id}: {path} kept"
                );
            }
        }
    }
    let letters = h.s.store.dead_letters().await.unwrap();
    assert!(letters.is_empty(), "{letters:#?}");
    assert_eq!(
        h.s.store.links().await.unwrap().len(),
        h.s.sandbox
            .partner_center()
            .referrals()
            .iter()
            .filter(|r| r["direction"] == json!("Incoming"))
            .count(),
        "every incoming referral is linked"
    );
}

/// Issue 10, item 7. The partner's CRM keeps the deal value in a custom column and requires a
/// "sales team" column on opportunities, filled by a configured default. Microsoft sends a
/// referral; the seller qualifies its lead in the CRM (Dataverse's QualifyLead makes the
/// opportunity). The opportunity gets the configured default and the deal value in the custom
/// column, and Partner Center keeps the deal value.
#[tokio::test]
async fn a_sellers_qualified_lead_gets_the_configured_defaults_and_keeps_its_deal_value() {
    use cosell::mapping::FieldMap;
    use cosell::sandbox::dataverse::ColumnDef;
    use cosell::sandbox::{DataverseSchema, Sandbox};

    let schema = DataverseSchema::default().with_columns(
        "opportunity",
        [
            ColumnDef::money("new_dealvalue"),
            ColumnDef::text("new_salesteam", 100),
        ],
    );
    let map = FieldMap::from_toml(
        r#"
deal_value_field = "new_dealvalue"

[defaults.opportunity]
isrevenuesystemcalculated = false
new_salesteam = "Co-sell desk"
"#,
    )
    .unwrap();
    let h = Harness::with(
        Sandboxed::builder()
            .sandbox(Sandbox::builder().dataverse_schema(schema))
            .field_map(map),
    )
    .await;
    let incoming = h
        .s
        .sandbox
        .partner_center()
        .create_incoming_referral(
            json!({"name": "Custom Columns", "details": {"currency": "USD", "dealValue": 98765.0}}),
        )
        .unwrap();
    let id = incoming["id"].as_str().unwrap().to_string();
    h.service_round().await;
    let dv = h.s.sandbox.dataverse();
    let lead = dv
        .query("lead", &format!("cosell_referralid eq '{id}'"))
        .unwrap()
        .pop()
        .expect("a lead");
    h.s.crm
        .client()
        .qualify_lead(
            Uuid::parse_str(lead["leadid"].as_str().unwrap()).unwrap(),
            &cosell::dataverse::QualifyLead {
                create_opportunity: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for _ in 0..2 {
        h.service_round().await;
    }

    let opps = dv
        .query("opportunity", &format!("cosell_referralid eq '{id}'"))
        .unwrap();
    assert_eq!(opps.len(), 1, "one opportunity");
    let opp = &opps[0];
    assert_eq!(
        opp["new_salesteam"],
        json!("Co-sell desk"),
        "the configured default"
    );
    assert_eq!(
        opp["new_dealvalue"].as_f64(),
        Some(98765.0),
        "the deal value column"
    );
    let referral = h.referral(&id);
    assert_eq!(referral["details"]["dealValue"].as_f64(), Some(98765.0));
    assert_eq!(
        (referral["status"].as_str(), referral["substatus"].as_str()),
        (Some("Active"), Some("Accepted"))
    );
    assert!(h.s.store.dead_letters().await.unwrap().is_empty());
}

// ------------------------------------------------------------------------------------ item 1

impl Harness {
    /// The solution ids on a referral, sorted.
    fn referral_solutions(&self, id: &str) -> Vec<String> {
        let mut ids: Vec<String> = self.referral(id)["details"]["requirements"]["solutions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    }

    /// The solution ids linked to an opportunity (active link rows), sorted, read from the
    /// emulator's own tables.
    fn crm_solutions(&self, opp: Uuid) -> Vec<String> {
        let dv = self.s.sandbox.dataverse();
        let mut ids: Vec<String> = dv
            .query(
                "cosell_opportunitysolution",
                &format!("_cosell_opportunityid_value eq {opp} and statecode eq 0"),
            )
            .unwrap()
            .iter()
            .map(|link| {
                let sol = Uuid::parse_str(
                    link["_cosell_partnercentersolutionid_value"]
                        .as_str()
                        .unwrap(),
                )
                .unwrap();
                dv.row("cosell_partnercentersolution", sol).unwrap()["cosell_solutionid"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        ids.sort();
        ids
    }

    /// The link row of `solution_id` on `opp`.
    fn link_row(&self, opp: Uuid, solution_id: &str) -> Uuid {
        let dv = self.s.sandbox.dataverse();
        let sol = dv
            .query(
                "cosell_partnercentersolution",
                &format!("cosell_solutionid eq '{solution_id}'"),
            )
            .unwrap()[0]["cosell_partnercentersolutionid"]
            .as_str()
            .unwrap()
            .to_string();
        let links = dv
            .query(
                "cosell_opportunitysolution",
                &format!(
                    "_cosell_opportunityid_value eq {opp} and _cosell_partnercentersolutionid_value eq {sol}"
                ),
            )
            .unwrap();
        Uuid::parse_str(links[0]["cosell_opportunitysolutionid"].as_str().unwrap()).unwrap()
    }
}

/// Issue 10, item 1. A seller adds a solution to a synced opportunity (a row in the form's
/// Solutions subgrid, written through the Web API) and later removes another; each reaches the
/// referral from the change feed alone, with no other column edited, and a removal stays
/// removed through later passes. Microsoft replacing the referral's solutions reaches the CRM
/// the same way: the solution it dropped is unlinked.
#[tokio::test]
async fn solutions_added_or_removed_in_the_crm_reach_the_referral_on_their_own() {
    let h = Harness::start().await;
    let web = &h.s.dataverse;
    let opp = h.s.seed_co_sell_opportunity("Solutions Deal").unwrap();
    h.service_round().await;
    let referral = h.referral_of(opp);
    h.service_round().await;
    assert_eq!(h.referral_solutions(&referral), ["SOL-34104-EBB"]);
    let version_before = h.opportunity(opp)["versionnumber"].clone();

    // The seller adds a second solution: a solution row and a link row, nothing else.
    let added = web
        .create(
            "cosell_partnercentersolutions",
            &json!({"cosell_solutionid": "SOL-90210-ADD", "cosell_name": "Northwind Analytics"}),
        )
        .await
        .unwrap();
    web.create(
        "cosell_opportunitysolutions",
        &json!({"cosell_OpportunityId@odata.bind": format!("/opportunities({opp})"),
                "cosell_PartnerCenterSolutionId@odata.bind":
                    format!("/cosell_partnercentersolutions({added})")}),
    )
    .await
    .unwrap();
    assert_eq!(
        h.opportunity(opp)["versionnumber"],
        version_before,
        "linking a solution leaves the opportunity row as it was"
    );
    h.s.engine.pull_crm_changes().await.unwrap();
    assert_eq!(
        h.referral_solutions(&referral),
        ["SOL-34104-EBB", "SOL-90210-ADD"],
        "the added solution reached Partner Center from the change feed"
    );

    // The seller removes the first solution (deletes its link row).
    let link = h.link_row(opp, "SOL-34104-EBB");
    web.delete(
        "cosell_opportunitysolutions",
        &cosell::dataverse::Key::id(link),
        None,
    )
    .await
    .unwrap();
    h.s.engine.pull_crm_changes().await.unwrap();
    assert_eq!(h.referral_solutions(&referral), ["SOL-90210-ADD"]);
    // Later passes keep the removal.
    h.service_round().await;
    h.service_round().await;
    assert_eq!(h.referral_solutions(&referral), ["SOL-90210-ADD"]);
    assert_eq!(h.crm_solutions(opp), ["SOL-90210-ADD"]);

    // Partner Center's side replaces the solutions: the dropped one is unlinked in the CRM.
    h.s.sandbox
        .partner_center()
        .update_as_microsoft(
            &referral,
            json!([{"op": "replace", "path": "/details/requirements/solutions", "value": [{
                "id": "SOL-31337-NEW", "name": "Contoso Copilot Pack", "type": "Name",
                "publisherName": "Contoso", "solutionType": "3P"}]}]),
        )
        .unwrap();
    h.service_round().await;
    h.service_round().await;
    assert_eq!(h.crm_solutions(opp), ["SOL-31337-NEW"]);
    assert_eq!(h.referral_solutions(&referral), ["SOL-31337-NEW"]);
    assert!(h.s.store.dead_letters().await.unwrap().is_empty());
}

// =============================================================================================
// Issue 10, items 4 and 9: a referral that cannot be fully mapped, and seed data the user can
// see. (Kept together at the end of the file.)
// =============================================================================================

/// What the audit says to do about a currency the CRM lacks.
const ENABLE_NOK: &str = "\"NOK\" is not a currency enabled in Dynamics 365: add it under \
                          Settings > Business Management > Currencies";

/// Issue 10, item 4. Microsoft sends a referral in a currency the partner's CRM does not have
/// (NOK). The seller sees it at once: a lead with everything that can be mapped, marked ✖, its
/// audit line saying exactly what to enable, no deal value in a currency it is not in; Partner
/// Center keeps NOK and its deal value (nothing guessed is written back) and the plan keeps
/// them too. The seller accepts the deal meanwhile by qualifying the lead: Partner Center shows
/// it accepted, the opportunity carries ✖ and the same explanation. The admin adds NOK in the
/// CRM; the next round completes the opportunity on its own (NOK, the deal value, ✔), with
/// Microsoft's data kept and nothing left to retry.
#[tokio::test]
async fn a_referral_in_a_currency_the_crm_lacks_reaches_the_seller_and_syncs_once_enabled() {
    use cosell::mapping::{FieldId, FieldValue, MappedSnapshot};
    use cosell::sync::store::AuditOutcome;

    let h = Harness::start_with_lead_audit().await;
    let dv = h.s.sandbox.dataverse();
    assert!(dv.currency_id("NOK").is_none(), "the sandbox CRM lacks NOK");
    let incoming = h
        .s
        .sandbox
        .partner_center()
        .create_incoming_referral(json!({
            "name": "Fjord Logistics - Fleet Insights",
            "customerProfile": {"name": "Fjord Logistics AS",
                                "address": {"city": "Oslo", "state": "", "postalCode": "0150",
                                            "country": "NO"}},
            "details": {"currency": "NOK", "dealValue": 750000, "notes": "Fleet telemetry rollout."},
        }))
        .unwrap();
    let id = incoming["id"].as_str().unwrap().to_string();
    let sent = h.referral(&id);
    h.service_round().await;

    // The seller sees the lead, with everything that could be mapped.
    let lead_of = || {
        let mut leads = dv
            .query("lead", &format!("cosell_referralid eq '{id}'"))
            .unwrap();
        assert_eq!(leads.len(), 1, "one lead for the referral");
        leads.pop().unwrap()
    };
    let lead = lead_of();
    assert_eq!(lead["subject"], json!("✖ Fjord Logistics - Fleet Insights"));
    assert_eq!(lead["companyname"], json!("Fjord Logistics AS"));
    assert_eq!(lead["address1_city"], json!("Oslo"));
    assert_eq!(lead["address1_country"], json!("NO"));
    assert_eq!(lead["description"], json!("Fleet telemetry rollout."));
    assert_eq!(
        lead["emailaddress1"],
        sent["customerProfile"]["team"][0]["email"]
    );
    assert!(
        lead["cosell_referrallink"]
            .as_str()
            .is_some_and(|l| l.ends_with(&id))
    );
    // No deal value in a currency it is not in; the currency is the CRM's default.
    assert_eq!(lead["estimatedamount"], Value::Null);
    let usd = dv.currency_id("USD").unwrap().to_string();
    assert!(
        lead["_transactioncurrencyid_value"].is_null()
            || lead["_transactioncurrencyid_value"] == json!(usd),
        "{}",
        lead["_transactioncurrencyid_value"]
    );
    // The audit column and the engine's audit trail say what to enable.
    let audit_text = lead["cosell_audit"].as_str().unwrap_or_default();
    assert!(audit_text.contains(ENABLE_NOK), "{audit_text}");
    let trail =
        h.s.store
            .audit(&AuditQuery {
                referral_id: Some(id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
    assert!(
        trail
            .iter()
            .any(|e| e.outcome == AuditOutcome::Failed && e.message.contains(ENABLE_NOK)),
        "{trail:#?}"
    );
    // Partner Center is untouched, and the plan keeps its values.
    assert_eq!(h.referral(&id), sent, "nothing written to Partner Center");
    let link = h.s.store.link_by_referral(&id).await.unwrap().unwrap();
    let plan: MappedSnapshot = serde_json::from_value(link.target).unwrap();
    assert_eq!(plan.text(FieldId::Currency), Some("NOK"));
    assert_eq!(
        plan.get(FieldId::DealValue)
            .and_then(FieldValue::as_decimal),
        Some(750000.into())
    );
    // Until the currency is added, further rounds write nothing (no churn, no second ✖).
    let before = h.writes();
    h.service_round().await;
    assert_eq!(h.writes(), before);

    // The seller accepts the deal meanwhile.
    h.s.crm
        .client()
        .qualify_lead(
            Uuid::parse_str(lead["leadid"].as_str().unwrap()).unwrap(),
            &cosell::dataverse::QualifyLead {
                create_opportunity: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for _ in 0..2 {
        h.service_round().await;
    }
    let accepted = h.referral(&id);
    assert_eq!(
        (accepted["status"].as_str(), accepted["substatus"].as_str()),
        (Some("Active"), Some("Accepted"))
    );
    assert_eq!(accepted["details"]["currency"], json!("NOK"));
    assert_eq!(accepted["details"]["dealValue"].as_f64(), Some(750000.0));
    let opportunity_of = || {
        let mut opps = dv
            .query("opportunity", &format!("cosell_referralid eq '{id}'"))
            .unwrap();
        assert_eq!(opps.len(), 1, "one opportunity for the referral");
        opps.pop().unwrap()
    };
    let opp = opportunity_of();
    assert!(
        opp["name"].as_str().unwrap().starts_with('✖'),
        "{}",
        opp["name"]
    );
    assert_eq!(opp["estimatedvalue"], Value::Null);
    assert!(
        opp["cosell_audit"]
            .as_str()
            .unwrap_or_default()
            .contains(ENABLE_NOK),
        "{}",
        opp["cosell_audit"]
    );

    // The admin adds NOK; the next round completes the deal on its own.
    let nok =
        h.s.crm
            .client()
            .create(
                "transactioncurrencies",
                &json!({"isocurrencycode": "NOK", "currencyname": "Norwegian Krone",
                        "currencysymbol": "kr", "exchangerate": 10.8, "currencyprecision": 2}),
            )
            .await
            .unwrap();
    h.service_round().await;

    let opp = opportunity_of();
    assert_eq!(opp["_transactioncurrencyid_value"], json!(nok.to_string()));
    assert_eq!(opp["estimatedvalue"].as_f64(), Some(750000.0));
    assert_eq!(opp["name"], json!("✔ Fjord Logistics - Fleet Insights"));
    assert!(
        opp["cosell_audit"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .next()
            .is_some_and(|l| l.contains(" ok")),
        "{}",
        opp["cosell_audit"]
    );
    let now = h.referral(&id);
    assert_eq!(now["details"]["currency"], json!("NOK"));
    assert_eq!(now["details"]["dealValue"].as_f64(), Some(750000.0));
    for path in [
        "/name",
        "/details/notes",
        "/details/requirements/solutions",
        "/customerProfile",
        "/inviteContext/assistanceRequestCode",
        "/consent/consentToShareReferralWithMicrosoftSellers",
    ] {
        assert_eq!(now.pointer(path), sent.pointer(path), "{path} kept");
    }
    assert!(h.s.store.dead_letters().await.unwrap().is_empty());
    assert!(
        h.s.store
            .link_by_referral(&id)
            .await
            .unwrap()
            .unwrap()
            .in_sync
    );
    // Settled.
    let before = h.writes();
    h.service_round().await;
    assert_eq!(h.writes(), before);
}

/// Issue 10, item 9. The service is running and has synced a first referral (its reconcile
/// checkpoint is now recent). The operator seeds generated referrals through the sandbox's
/// control API (`POST /_sandbox/seed`), as docs/sync-service.md says; the service's next round
/// finds every one of them and syncs each cleanly into the CRM, in its own currency (the
/// generator's currencies are all the sandbox CRM's), with nothing failing.
#[tokio::test]
async fn seeded_referrals_reach_a_running_service_and_sync_cleanly() {
    use cosell::http::bytes::Bytes;
    use cosell::http::{HttpTransport, ReqwestTransport};

    let h = Harness::start().await;
    h.s.sandbox
        .partner_center()
        .create_incoming_referral(json!({"name": "First", "details": {"currency": "USD"}}))
        .unwrap();
    h.service_round().await;
    assert!(
        h.s.store
            .checkpoint(cosell::sync::engine::RECONCILE_CHECKPOINT)
            .await
            .unwrap()
            .is_some(),
        "the service has reconciled"
    );

    let origin = h.s.sandbox.urls().referrals.join("/").unwrap();
    let request = http::Request::builder()
        .method(Method::POST)
        .uri(format!("{origin}_sandbox/seed"))
        .header("content-type", "application/json")
        .body(Bytes::from(r#"{"count": 60}"#))
        .unwrap();
    let answer = ReqwestTransport::new()
        .unwrap()
        .send(request)
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 201);
    let seeded: Vec<String> = serde_json::from_slice::<Value>(answer.body()).unwrap()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(seeded.len(), 60);
    let currencies: std::collections::BTreeSet<String> = seeded
        .iter()
        .map(|id| {
            h.referral(id)["details"]["currency"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        ["SEK", "SGD", "ZAR", "MXN"]
            .iter()
            .any(|c| currencies.contains(*c)),
        "the generator's wider currencies are among them: {currencies:?}"
    );

    h.service_round().await;

    let dv = h.s.sandbox.dataverse();
    for id in &seeded {
        let referral = h.referral(id);
        let link =
            h.s.store
                .link_by_referral(id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("seeded referral {id} found by the running service"));
        let row = dv
            .row(
                &link.crm_entity,
                Uuid::parse_str(link.crm_id.as_deref().unwrap()).unwrap(),
            )
            .unwrap();
        let code = referral["details"]["currency"].as_str().unwrap();
        let currency = dv
            .currency_id(code)
            .unwrap_or_else(|| panic!("{id}: the sandbox CRM lacks {code}"));
        assert_eq!(
            row["_transactioncurrencyid_value"],
            json!(currency.to_string()),
            "{id}: the CRM row is in {code}"
        );
        let deal = if link.crm_entity == "lead" {
            "estimatedamount"
        } else {
            "estimatedvalue"
        };
        assert_eq!(
            row[deal].as_f64(),
            referral["details"]["dealValue"].as_f64(),
            "{id}"
        );
        let name = row[if link.crm_entity == "lead" {
            "subject"
        } else {
            "name"
        }]
        .as_str()
        .unwrap_or_default();
        assert!(
            name.starts_with('✔') || referral["status"] == json!("Closed"),
            "{id}: {name}"
        );
    }
    let letters = h.s.store.dead_letters().await.unwrap();
    assert!(letters.is_empty(), "{letters:#?}");
}

// ================================================================================================
// Issue 10, item 3: Microsoft's decisions show in the CRM.
//
// Microsoft's side of a co-sell the partner shared is Microsoft's own referral in the same
// engagement (a related referral: `related-referral-*` webhooks); a status Microsoft sets on
// the partner's referral itself comes as `referral-updated`. Either way the CRM record shows
// it: the status the status map gives (DESIGN §6), a line in the record's audit column and an
// entry in the engine's audit trail.
// ================================================================================================

impl Harness {
    /// A harness whose map also writes the lead's audit column (`columns.lead.audit`; the
    /// default lead schema of DESIGN §6 has none).
    /// A co-sell opportunity the seller shared, synced and settled: (opportunity, referral).
    async fn shared_co_sell(&self, name: &str) -> (Uuid, String) {
        let opp = self.s.seed_co_sell_opportunity(name).unwrap();
        self.service_round().await;
        let referral = self.referral_of(opp);
        self.service_round().await;
        (opp, referral)
    }

    fn status(&self, id: &str) -> (String, String) {
        let r = self.referral(id);
        (
            r["status"].as_str().unwrap_or_default().to_string(),
            r["substatus"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// The engine's audit trail of a referral.
    async fn audit_of(&self, referral: &str) -> Vec<cosell::sync::store::AuditEntry> {
        self.s
            .store
            .audit(&AuditQuery {
                referral_id: Some(referral.to_string()),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// The lines of a CRM row's audit column that contain `needle`.
    fn audit_lines(row: &Value, needle: &str) -> Vec<String> {
        row["cosell_audit"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

fn state(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

/// Microsoft declines the co-sell the seller shared: Microsoft's referral in the engagement is
/// Closed/Declined, the partner's own referral stays Active/Accepted (the deal goes on without
/// Microsoft). The opportunity stays open and its audit column, like the engine's audit trail,
/// says that Microsoft declined, naming the engagement and Microsoft's referral. Said once: the
/// next rounds write nothing.
#[tokio::test]
async fn microsoft_declining_a_co_sell_shows_on_the_opportunity() {
    let h = Harness::start().await;
    let (opp, id) = h.shared_co_sell("Declined Co-sell Deal").await;
    let engagement = h.referral(&id)["engagementId"]
        .as_str()
        .unwrap()
        .to_string();

    let theirs = h.s.sandbox.partner_center().microsoft_decline(&id).unwrap();
    let theirs = theirs["id"].as_str().unwrap().to_string();
    h.service_round().await;

    // Partner Center: Microsoft's referral declined, ours untouched.
    assert_eq!(h.status(&theirs), state("Closed", "Declined"));
    assert_eq!(h.referral(&theirs)["engagementId"], json!(engagement));
    assert_eq!(h.status(&id), state("Active", "Accepted"));
    // The CRM: the deal is still open, and says what Microsoft decided.
    let row = h.opportunity(opp);
    assert_eq!(row["statecode"], json!(0), "the deal goes on");
    let lines = Harness::audit_lines(&row, "Microsoft declined the co-sell");
    assert_eq!(lines.len(), 1, "{}", row["cosell_audit"]);
    assert!(
        lines[0].contains(&engagement) && lines[0].contains(&theirs),
        "{lines:?}"
    );
    assert!(lines[0].contains("Closed/Declined"), "{lines:?}");
    let audit = h.audit_of(&id).await;
    assert!(
        audit
            .iter()
            .any(|e| e.message.contains("Microsoft declined the co-sell")
                && e.message.contains(&theirs)
                && e.crm_id.as_deref() == Some(opp.to_string().as_str())),
        "{audit:#?}"
    );
    assert!(h.s.store.dead_letters().await.unwrap().is_empty());

    // Settled: the decision is not written again.
    let before = h.writes();
    h.service_round().await;
    h.service_round().await;
    assert_eq!(h.writes(), before, "a settled pair writes nothing");
    let row = h.opportunity(opp);
    assert_eq!(
        Harness::audit_lines(&row, "Microsoft declined the co-sell").len(),
        1
    );
}

/// Microsoft accepts the co-sell, edits its own referral (nothing to tell the seller), then
/// withdraws: its referral closes while the partner's stays Active/Accepted. The opportunity
/// keeps Microsoft's CRM id, stays open, and its audit column says Microsoft accepted and then
/// withdrew, once each.
#[tokio::test]
async fn microsoft_withdrawing_from_a_co_sell_shows_on_the_opportunity() {
    let h = Harness::start().await;
    let (opp, id) = h.shared_co_sell("Withdrawn Co-sell Deal").await;
    let pc = h.s.sandbox.partner_center();
    let theirs = pc.microsoft_accept(&id).unwrap();
    let theirs = theirs["id"].as_str().unwrap().to_string();
    h.service_round().await;
    let msx = h.referral(&id)["trackingInfo"]["microsoftMsxId"].clone();
    assert!(msx.is_string());
    let row = h.opportunity(opp);
    assert_eq!(row["cosell_microsoftcrmid"], msx);
    assert_eq!(
        Harness::audit_lines(&row, "Microsoft accepted the co-sell").len(),
        1,
        "{}",
        row["cosell_audit"]
    );

    // An edit of Microsoft's own referral that decides nothing.
    pc.update_as_microsoft(
        &theirs,
        json!([{"op": "replace", "path": "/details/notes", "value": "Microsoft's seller notes."}]),
    )
    .unwrap();
    h.service_round().await;
    // Microsoft withdraws.
    pc.update_as_microsoft(
        &theirs,
        json!([
            {"op": "replace", "path": "/status", "value": "Closed"},
            {"op": "replace", "path": "/substatus", "value": "Lost"},
            {"op": "replace", "path": "/statusReason", "value": "No Microsoft capacity."}
        ]),
    )
    .unwrap();
    h.service_round().await;

    assert_eq!(h.status(&theirs), state("Closed", "Lost"));
    assert_eq!(h.status(&id), state("Active", "Accepted"));
    let row = h.opportunity(opp);
    assert_eq!(row["statecode"], json!(0), "the deal goes on");
    assert_eq!(row["cosell_microsoftcrmid"], msx);
    let accepted = Harness::audit_lines(&row, "Microsoft accepted the co-sell");
    let withdrew = Harness::audit_lines(&row, "Microsoft withdrew from the co-sell");
    assert_eq!(accepted.len(), 1, "{}", row["cosell_audit"]);
    assert_eq!(withdrew.len(), 1, "{}", row["cosell_audit"]);
    assert!(
        withdrew[0].contains(&theirs)
            && withdrew[0].contains("Closed/Lost")
            && withdrew[0].contains("No Microsoft capacity."),
        "{withdrew:?}"
    );
    let audit = h.audit_of(&id).await;
    assert!(
        audit
            .iter()
            .any(|e| e.message.contains("Microsoft withdrew from the co-sell")),
        "{audit:#?}"
    );
    assert!(h.s.store.dead_letters().await.unwrap().is_empty());
    let before = h.writes();
    h.service_round().await;
    assert_eq!(h.writes(), before, "a settled pair writes nothing");
}

/// Microsoft closes the partner's own co-sell referral as Declined (with a reason). The status
/// map loses the opportunity as cancelled; its audit column and the engine's audit trail say
/// the referral was declined in Partner Center, from which state, and why.
#[tokio::test]
async fn microsoft_declining_the_referral_loses_the_opportunity_as_cancelled_and_says_why() {
    let h = Harness::start().await;
    let (opp, id) = h.shared_co_sell("Referral Declined Deal").await;
    h.s.sandbox
        .partner_center()
        .update_as_microsoft(
            &id,
            json!([
                {"op": "replace", "path": "/status", "value": "Closed"},
                {"op": "replace", "path": "/substatus", "value": "Declined"},
                {"op": "replace", "path": "/statusReason", "value": "Duplicate of another deal."}
            ]),
        )
        .unwrap();
    h.service_round().await;

    assert_eq!(h.status(&id), state("Closed", "Declined"));
    let row = h.opportunity(opp);
    assert_eq!(
        (row["statecode"].clone(), row["statuscode"].clone()),
        (json!(2), json!(4)),
        "lost as cancelled"
    );
    let lines = Harness::audit_lines(&row, "declined in Partner Center");
    assert_eq!(lines.len(), 1, "{}", row["cosell_audit"]);
    assert!(
        lines[0].contains("Closed/Declined")
            && lines[0].contains("Active/Accepted")
            && lines[0].contains("Duplicate of another deal."),
        "{lines:?}"
    );
    let audit = h.audit_of(&id).await;
    assert!(
        audit
            .iter()
            .any(|e| e.message.contains("declined in Partner Center")),
        "{audit:#?}"
    );
    assert!(h.s.store.dead_letters().await.unwrap().is_empty());
    let before = h.writes();
    h.service_round().await;
    assert_eq!(h.writes(), before, "a settled pair writes nothing");
}

/// An incoming referral nobody answered expires in Partner Center (Closed/Expired). The status
/// map disqualifies its lead with the Expired status reason; the lead's audit column (when the
/// map has one) and the engine's audit trail say it expired.
#[tokio::test]
async fn an_incoming_referral_expiring_disqualifies_its_lead_and_says_so() {
    let h = Harness::start_with_lead_audit().await;
    let incoming =
        h.s.sandbox
            .partner_center()
            .create_incoming_referral(
                json!({"name": "Unanswered Lead", "details": {"currency": "USD"}}),
            )
            .unwrap();
    let id = incoming["id"].as_str().unwrap().to_string();
    h.service_round().await;
    let expired = h.s.sandbox.partner_center().expire_pending();
    assert!(expired.contains(&id));
    h.service_round().await;

    assert_eq!(h.status(&id), state("Closed", "Expired"));
    let lead =
        h.s.sandbox
            .dataverse()
            .query("lead", &format!("cosell_referralid eq '{id}'"))
            .unwrap()
            .pop()
            .expect("the lead");
    assert_eq!(
        (lead["statecode"].clone(), lead["statuscode"].clone()),
        (json!(2), json!(7)),
        "disqualified as expired"
    );
    let lines = Harness::audit_lines(&lead, "expired in Partner Center");
    assert_eq!(lines.len(), 1, "{}", lead["cosell_audit"]);
    assert!(
        lines[0].contains("Closed/Expired") && lines[0].contains("New/Pending"),
        "{lines:?}"
    );
    let audit = h.audit_of(&id).await;
    assert!(
        audit
            .iter()
            .any(|e| e.message.contains("expired in Partner Center")),
        "{audit:#?}"
    );
    assert!(h.s.store.dead_letters().await.unwrap().is_empty());
    let before = h.writes();
    h.service_round().await;
    assert_eq!(h.writes(), before, "a settled pair writes nothing");
}

/// The referral's visibility as Partner Center holds it. A private deal (no help, not shared) is
/// shared with Microsoft sellers in Partner Center: the CRM shows it visible. The seller then
/// sets "not visible" in the CRM: visibility cannot be withdrawn once granted, so Partner Center
/// keeps sharing it, and the CRM is put back to visible instead of contradicting Partner Center
/// (with a refusal retried on every pass); its audit column and the engine's audit trail say
/// why.
#[tokio::test]
async fn the_crm_shows_the_visibility_partner_center_holds() {
    let h = Harness::start().await;
    let opp = h.s.seed_co_sell_opportunity("Private Deal").unwrap();
    let dv = h.s.sandbox.dataverse();
    dv.update_as_user(
        "opportunity",
        opp,
        json!({"cosell_visibletomicrosoft": false, "cosell_helprequired": 100000000}),
    )
    .unwrap();
    h.service_round().await;
    let id = h.referral_of(opp);
    h.service_round().await;
    let shared = |h: &Harness| {
        h.referral(&id)["consent"]["consentToShareReferralWithMicrosoftSellers"].clone()
    };
    assert_eq!(shared(&h), json!(false), "a private deal");

    // Shared with Microsoft sellers in Partner Center.
    h.s.sandbox
        .partner_center()
        .update_as_microsoft(
            &id,
            json!([{"op": "replace",
                    "path": "/consent/consentToShareReferralWithMicrosoftSellers",
                    "value": true}]),
        )
        .unwrap();
    h.service_round().await;
    assert_eq!(h.opportunity(opp)["cosell_visibletomicrosoft"], json!(true));

    // The seller tries to take it back.
    dv.update_as_user(
        "opportunity",
        opp,
        json!({"cosell_visibletomicrosoft": false}),
    )
    .unwrap();
    h.service_round().await;
    h.service_round().await;

    assert_eq!(shared(&h), json!(true), "Partner Center keeps sharing it");
    let row = h.opportunity(opp);
    assert_eq!(
        row["cosell_visibletomicrosoft"],
        json!(true),
        "the CRM shows it shared"
    );
    let why = "visibility to Microsoft sellers cannot be withdrawn once granted";
    assert_eq!(
        Harness::audit_lines(&row, why).len(),
        1,
        "{}",
        row["cosell_audit"]
    );
    assert!(!row["cosell_audit"].as_str().unwrap().contains("error"));
    assert!(name_starts_with_check(&row));
    let audit = h.audit_of(&id).await;
    assert!(audit.iter().any(|e| e.message.contains(why)), "{audit:#?}");
    let letters = h.s.store.dead_letters().await.unwrap();
    assert!(letters.is_empty(), "{letters:#?}");
    let before = h.writes();
    h.service_round().await;
    assert_eq!(h.writes(), before, "a settled pair writes nothing");
}

fn name_starts_with_check(row: &Value) -> bool {
    row["name"].as_str().is_some_and(|n| n.starts_with('✔'))
}

/// Microsoft declines while the CRM refuses writes: the decision is dead-lettered under
/// Microsoft's referral (the webhook hint is consumed) and written by the service's replay once
/// the CRM is back, once.
#[tokio::test]
async fn microsofts_decision_met_by_a_crm_outage_is_written_once_the_crm_is_back() {
    let h = Harness::start().await;
    let (opp, id) = h.shared_co_sell("Outage Declined Deal").await;
    h.s.sandbox.faults().inject(
        Service::Dataverse,
        cosell::sandbox::Fault::status(503)
            .on_method(Method::PATCH)
            .on_path("opportunities("),
    );
    let theirs = h.s.sandbox.partner_center().microsoft_decline(&id).unwrap();
    let theirs = theirs["id"].as_str().unwrap().to_string();
    h.settled().await;
    h.s.engine.drain_inbox().await.unwrap();
    assert!(
        h.s.sandbox.faults().injected() > 0,
        "the CRM refused the write"
    );
    let letters = h.s.store.dead_letters().await.unwrap();
    assert!(
        letters.iter().any(|d| d.key == format!("related:{theirs}")),
        "{letters:#?}"
    );
    assert!(h.s.store.pending_hints(100).await.unwrap().is_empty());
    h.s.sandbox.faults().clear();

    h.service_round().await;
    h.service_round().await;
    let row = h.opportunity(opp);
    assert_eq!(
        Harness::audit_lines(&row, "Microsoft declined the co-sell").len(),
        1,
        "{}",
        row["cosell_audit"]
    );
    assert!(name_starts_with_check(&row), "{}", row["name"]);
    let letters = h.s.store.dead_letters().await.unwrap();
    assert!(letters.is_empty(), "{letters:#?}");
    assert_eq!(h.status(&id), state("Active", "Accepted"));
}

/// Microsoft's answer can arrive before the referral it answers is in the CRM: here the
/// webhook of Microsoft's co-sell referral is lost, and Microsoft declines before the service
/// ran. The decision waits (under Microsoft's referral) until the reconcile has brought the
/// referral in as a lead, then the lead's audit column and the audit trail tell it, once.
#[tokio::test]
async fn microsofts_decision_before_its_referral_reached_the_crm_is_told_once_it_has() {
    let h = Harness::start_with_lead_audit().await;
    let pc = h.s.sandbox.partner_center();
    pc.drop_next_deliveries(1);
    let incoming = pc
        .create_incoming_referral(json!({"name": "Early Answer", "details": {"currency": "USD"}}))
        .unwrap();
    let id = incoming["id"].as_str().unwrap().to_string();
    let theirs = pc.microsoft_decline(&id).unwrap();
    let theirs = theirs["id"].as_str().unwrap().to_string();
    h.service_round().await;

    let lead =
        h.s.sandbox
            .dataverse()
            .query("lead", &format!("cosell_referralid eq '{id}'"))
            .unwrap()
            .pop()
            .expect("the reconcile brought the referral in");
    let lines = Harness::audit_lines(&lead, "Microsoft declined the co-sell");
    assert_eq!(lines.len(), 1, "{}", lead["cosell_audit"]);
    assert!(lines[0].contains(&theirs), "{lines:?}");
    let told = h
        .audit_of(&id)
        .await
        .into_iter()
        .filter(|e| e.message.contains("Microsoft declined the co-sell"))
        .count();
    assert_eq!(told, 1);
    let letters = h.s.store.dead_letters().await.unwrap();
    assert!(letters.is_empty(), "{letters:#?}");
    let before = h.writes();
    h.service_round().await;
    assert_eq!(h.writes(), before, "a settled pair writes nothing");
}

// ---------------------------------------------------------------------- issue 11, item 9

/// Issue 11, item 9. A partner keeps the customer's marketplace intent in a choice column and
/// its services co-sell role, area and play in text columns of the opportunity; a seller fills
/// them in (one left empty) and marks the deal for sync. The referral Partner Center creates
/// carries the seller's values, the configured default where the column was empty.
#[tokio::test]
async fn a_referral_create_takes_its_intent_and_services_fields_from_crm_columns() {
    use cosell::mapping::FieldMap;
    use cosell::sandbox::dataverse::ColumnDef;
    use cosell::sandbox::{DataverseSchema, Sandbox};

    let schema = DataverseSchema::default().with_columns(
        "opportunity",
        [
            ColumnDef::choice(
                "new_marketplaceintent",
                &[
                    (100000000, "Yes"),
                    (100000001, "No"),
                    (100000002, "Have not decided"),
                ],
            ),
            ColumnDef::text("new_partnerrole", 100),
            ColumnDef::text("new_solutionarea", 100),
            ColumnDef::text("new_solutionplay", 100),
        ],
    );
    let map = FieldMap::from_toml(
        r#"
[referral_create]
marketplace_intent_column = "new_marketplaceintent"
marketplace_intent_choices = { Yes = 100000000, No = 100000001, HaveNotDecided = 100000002 }
services_co_sell = true
partner_role_column = "new_partnerrole"
solution_area = "AIBusinessSolutions"
solution_area_column = "new_solutionarea"
solution_play_column = "new_solutionplay"
"#,
    )
    .unwrap();
    let h = Harness::with(
        Sandboxed::builder()
            .sandbox(Sandbox::builder().dataverse_schema(schema))
            .field_map(map),
    )
    .await;
    let opp = h.s.seed_co_sell_opportunity("Services Deal").unwrap();
    h.s.sandbox
        .dataverse()
        .update_as_user(
            "opportunity",
            opp,
            json!({"new_marketplaceintent": 100000000, "new_partnerrole": "SolutionDesign",
                   "new_solutionplay": "CopilotAndAgentsAtWork"}),
        )
        .unwrap();
    h.service_round().await;

    let referral = h.referral(&h.referral_of(opp));
    let intent = referral["details"]["requirements"]["additionalRequirements"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == json!("CustomerMarketplaceIntent"))
        .cloned()
        .expect("the intent attribute");
    assert_eq!(intent["id"], json!("Yes"), "the seller's choice");
    assert_eq!(referral["partnerRole"], json!("SolutionDesign"));
    assert_eq!(
        referral["solutionArea"],
        json!("AIBusinessSolutions"),
        "the configured default for the empty column"
    );
    assert_eq!(referral["solutionPlay"], json!("CopilotAndAgentsAtWork"));
    assert!(
        h.opportunity(opp)["name"]
            .as_str()
            .unwrap()
            .starts_with('✔'),
        "{}",
        h.opportunity(opp)
    );
    assert!(h.s.store.dead_letters().await.unwrap().is_empty());
}
