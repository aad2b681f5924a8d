//! The engine's Dataverse adapter (`DataverseCrm`) against the Dataverse emulator over loopback:
//! the wire shapes the emulator now enforces as Dataverse does.

// Test code: a failed expectation panics.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use cosell::mapping::{FieldMap, RecordKind};
use cosell::partner_center::models::Referral;
use cosell::sandboxed::Sandboxed;
use cosell::sync::{Crm, WriteTarget};
use serde_json::{Map, json};
use uuid::Uuid;

/// R-OPP: an opportunity that replaces a lead is bound to it (`originatingleadid`) in the
/// write that creates it. On main before the fix: `_originatingleadid_value` is null.
#[tokio::test]
async fn an_opportunity_written_by_key_for_a_referral_with_a_lead_is_bound_to_the_lead() {
    let s = Sandboxed::start().await.unwrap();
    let created = s
        .sandbox
        .partner_center()
        .create_incoming_referral(json!({"name": "Accepted later"}))
        .unwrap();
    let referral_id = created["id"].as_str().unwrap().to_string();
    let lead = s
        .sandbox
        .dataverse()
        .insert_row(
            "lead",
            json!({"subject": "Accepted later", "cosell_referralid": referral_id}),
        )
        .unwrap();
    // The referral as it reads once Microsoft accepted it: an opportunity replaces the lead.
    let mut accepted = created;
    accepted["status"] = json!("Active");
    accepted["substatus"] = json!("Accepted");
    let referral: Referral = serde_json::from_value(accepted).unwrap();
    let map = FieldMap::default();
    let payload = map.map_referral(&referral, None).unwrap();
    assert_eq!(payload.kind, RecordKind::Opportunity);
    let written = s
        .crm
        .write(&payload, &Map::new(), WriteTarget::ByKey)
        .await
        .unwrap();
    let opp = s
        .sandbox
        .dataverse()
        .row("opportunity", Uuid::parse_str(&written.id).unwrap())
        .unwrap();
    assert_eq!(
        opp["_originatingleadid_value"],
        json!(lead.to_string()),
        "{opp}"
    );
    // The row reads back with its solutions (a request of their own, not in the N:1 $expand).
    let row = s
        .crm
        .read(RecordKind::Opportunity, &written.id)
        .await
        .unwrap()
        .unwrap();
    assert!(row.records.solutions.is_some());
}

/// Issue 15: more accounts share the customer's postal code than one candidate page held; the
/// right account (created last) is found and reused on every write, never duplicated.
#[tokio::test]
async fn the_customer_account_is_found_among_more_than_a_page_of_same_postal_code_accounts() {
    let s = Sandboxed::start().await.unwrap();
    let dv = s.sandbox.dataverse();
    let created = s
        .sandbox
        .partner_center()
        .create_incoming_referral(json!({"name": "Crowded postal code"}))
        .unwrap();
    let mut accepted = created;
    accepted["status"] = json!("Active");
    accepted["substatus"] = json!("Accepted");
    let referral: Referral = serde_json::from_value(accepted).unwrap();
    let customer = referral.customer_profile.clone().unwrap();
    let postal = customer
        .address
        .as_ref()
        .and_then(|a| a.postal_code.clone())
        .unwrap();
    let name = customer.name.clone().unwrap();
    for n in 0..120 {
        dv.insert_row(
            "account",
            json!({"name": format!("Neighbour {n}"), "address1_postalcode": postal}),
        )
        .unwrap();
    }
    // The customer's own account, in other letter case, after all of them.
    let own = dv
        .insert_row(
            "account",
            json!({"name": name.to_uppercase(), "address1_postalcode": postal}),
        )
        .unwrap();
    let payload = FieldMap::default().map_referral(&referral, None).unwrap();
    for _ in 0..3 {
        let written = s
            .crm
            .write(&payload, &Map::new(), WriteTarget::ByKey)
            .await
            .unwrap();
        let opp = dv
            .row("opportunity", Uuid::parse_str(&written.id).unwrap())
            .unwrap();
        assert_eq!(opp["_customerid_value"], json!(own.to_string()), "{opp}");
    }
    assert_eq!(dv.count("account"), 121, "no duplicate account");
}

/// D-CREATE: Dataverse writes Money with four decimals (`250000.0000`, `1234.5678`); the
/// adapter reads both, and the mapping rounds the deal value to `money_precision` (2).
#[tokio::test]
async fn money_with_four_decimals_reads_as_the_deal_value() {
    use cosell::mapping::FieldId;
    let s = Sandboxed::start().await.unwrap();
    let map = FieldMap::default();
    for (value, expected) in [(250000.0, "250000"), (1234.5678, "1234.57")] {
        let id = s
            .sandbox
            .dataverse()
            .insert_row(
                "opportunity",
                json!({"name": "Deal", "estimatedvalue": value}),
            )
            .unwrap();
        let row = s
            .crm
            .read(RecordKind::Opportunity, &id.to_string())
            .await
            .unwrap()
            .unwrap();
        let snapshot = map.snapshot_from_crm(&row.records, None).unwrap();
        let deal = snapshot
            .get(FieldId::DealValue)
            .and_then(|v| v.as_decimal())
            .unwrap();
        assert_eq!(deal.to_string(), expected, "{value}");
    }
}

/// Issue 15: the solution link feed names each row's solution by its catalogue key, active or
/// not, also when a page names more catalogue rows than one query holds (150 here: a `$batch`
/// of queries), and a later page from the cache.
#[tokio::test]
async fn the_solution_link_feed_names_each_rows_solution_across_a_batch_of_lookups() {
    use cosell::sync::SolutionLinkChange;
    let s = Sandboxed::start().await.unwrap();
    let dv = s.sandbox.dataverse();
    let opp = dv
        .insert_row("opportunity", json!({"name": "Many solutions"}))
        .unwrap();
    let mut expected = std::collections::HashMap::new();
    for i in 0..150 {
        let key = format!("SOL-{:05}-ABC", 10_000 + i);
        let solution = dv
            .insert_row(
                "cosell_partnercentersolution",
                json!({"cosell_solutionid": key, "cosell_name": format!("Solution {i}")}),
            )
            .unwrap();
        let link = dv
            .insert_row(
                "cosell_opportunitysolution",
                json!({
                    "cosell_OpportunityId@odata.bind": format!("/opportunities({opp})"),
                    "cosell_PartnerCenterSolutionId@odata.bind":
                        format!("/cosell_partnercentersolutions({solution})"),
                }),
            )
            .unwrap();
        if i == 7 {
            // The seller deactivates one: a removed solution.
            dv.update_as_user(
                "cosell_opportunitysolution",
                link,
                json!({"statecode": 1, "statuscode": 2}),
            )
            .unwrap();
        }
        expected.insert(link.to_string(), (key, i != 7));
    }
    let calls_before = s
        .sandbox
        .faults()
        .calls(cosell::sandbox::Service::Dataverse);
    let first = s.crm.solution_link_changes(None).await.unwrap().unwrap();
    assert_eq!(first.changes.len(), 150);
    for change in &first.changes {
        let SolutionLinkChange::Linked {
            link_id,
            opportunity_id,
            solution_id,
            active,
        } = change
        else {
            panic!("{change:?}");
        };
        let (key, is_active) = &expected[link_id];
        assert_eq!(opportunity_id.as_deref(), Some(opp.to_string().as_str()));
        assert_eq!(solution_id.as_deref(), Some(key.as_str()), "{link_id}");
        assert_eq!(active, is_active);
    }
    let f = s.sandbox.faults();
    assert_eq!(
        f.calls(cosell::sandbox::Service::Dataverse) - calls_before,
        2,
        "the feed page and one `$batch` of two queries: {:#?}",
        f.counters()
    );

    // A row changed later is named from the cache: the feed page alone.
    let (link, _) = expected.iter().next().unwrap();
    dv.update_as_user(
        "cosell_opportunitysolution",
        Uuid::parse_str(link).unwrap(),
        json!({"cosell_name": "renamed"}),
    )
    .unwrap();
    let calls_before = f.calls(cosell::sandbox::Service::Dataverse);
    let next = s
        .crm
        .solution_link_changes(Some(&first.cursor))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.changes.len(), 1);
    assert!(
        matches!(
            &next.changes[0],
            SolutionLinkChange::Linked {
                solution_id: Some(_),
                ..
            }
        ),
        "{:?}",
        next.changes
    );
    assert_eq!(
        f.calls(cosell::sandbox::Service::Dataverse) - calls_before,
        1
    );
}
