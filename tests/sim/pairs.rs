//! The deals of a seed ("pairs") and how to find their records in the emulators' own state:
//! the checkers and the users both look here, never at the engine's store.

use cosell::sandbox::dataverse::DataverseEmulator;
use cosell::sandbox::partner_center::SANDBOX_ORGANIZATION_ID;
use serde_json::Value;
use uuid::Uuid;

use super::history::{Field, Side};
use super::world::World;

/// One co-sell deal, however it started.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub(crate) origin: Side,
    /// Known from the start for a referral Microsoft sent.
    pub(crate) referral_id: Option<String>,
    /// Known from the start for a CRM seller's opportunity.
    pub(crate) opportunity: Option<Uuid>,
    /// A deliberately invalid CRM record, and why.
    pub(crate) invalid: Option<&'static str>,
    /// A co-sell ("shared, with help") referral or opportunity.
    pub(crate) co_sell: bool,
    pub(crate) label: String,
}

/// The CRM side of a pair as found in the emulator.
#[derive(Debug, Clone)]
pub(crate) struct CrmRecord {
    pub(crate) table: &'static str,
    pub(crate) id: Uuid,
    pub(crate) row: Value,
}

impl CrmRecord {
    pub(crate) fn state(&self) -> i64 {
        self.row["statecode"].as_i64().unwrap_or(-1)
    }
}

/// A pair as found in the emulators: our referrals and CRM rows that belong to it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Found {
    pub(crate) referrals: Vec<Value>,
    pub(crate) opportunities: Vec<CrmRecord>,
    pub(crate) leads: Vec<CrmRecord>,
}

impl Found {
    pub(crate) fn referral(&self) -> Option<&Value> {
        self.referrals.first()
    }

    /// The record a seller works on: the open opportunity, else any opportunity, else the lead.
    pub(crate) fn crm(&self) -> Option<&CrmRecord> {
        self.opportunities
            .iter()
            .find(|o| o.state() == 0)
            .or_else(|| self.opportunities.first())
            .or_else(|| self.leads.first())
    }
}

pub(crate) fn uuid_of(row: &Value, column: &str) -> Option<Uuid> {
    row[column].as_str().and_then(|s| Uuid::parse_str(s).ok())
}

fn records(dv: &DataverseEmulator, table: &'static str, filter: &str) -> Vec<CrmRecord> {
    let pk = format!("{table}id");
    dv.query(table, filter)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|row| uuid_of(&row, &pk).map(|id| CrmRecord { table, id, row }))
        .collect()
}

/// Whether a referral is one of ours (not Microsoft's related referral).
pub(crate) fn is_ours(r: &Value) -> bool {
    r["organizationId"].as_str() == Some(SANDBOX_ORGANIZATION_ID)
}

/// Finds a pair's records in the emulators (their own state, not the engine's).
pub(crate) fn find(world: &World, pair: &Pair) -> Found {
    let pc = world.sandbox.partner_center();
    let dv = world.sandbox.dataverse();
    let mut found = Found::default();
    match pair.origin {
        Side::PartnerCenter => {
            let id = pair.referral_id.clone().unwrap_or_default();
            found.referrals.extend(pc.referral(&id));
        }
        Side::Crm => {
            let opp = pair.opportunity.map(|o| o.to_string()).unwrap_or_default();
            found.referrals = pc
                .referrals()
                .into_iter()
                .filter(|r| is_ours(r) && r["externalReferenceId"].as_str() == Some(&opp))
                .collect();
            found.opportunities.extend(pair.opportunity.and_then(|o| {
                dv.row("opportunity", o).map(|row| CrmRecord {
                    table: "opportunity",
                    id: o,
                    row,
                })
            }));
        }
    }
    for r in found.referrals.clone() {
        let Some(id) = r["id"].as_str() else { continue };
        let filter = format!("cosell_referralid eq '{id}'");
        for rec in records(dv, "opportunity", &filter) {
            if !found.opportunities.iter().any(|o| o.id == rec.id) {
                found.opportunities.push(rec);
            }
        }
        found.leads.extend(records(dv, "lead", &filter));
    }
    // Opportunities a seller made from the pair's lead (before the engine stamped them).
    for lead in found.leads.clone() {
        let filter = format!("_originatingleadid_value eq {}", lead.id);
        for rec in records(dv, "opportunity", &filter) {
            if !found.opportunities.iter().any(|o| o.id == rec.id) {
                found.opportunities.push(rec);
            }
        }
    }
    found
}

/// The raw value of a followed field on the Partner Center side.
pub(crate) fn pc_value(referral: &Value, field: Field) -> Option<String> {
    let d = &referral["details"];
    match field {
        Field::DealValue => d["dealValue"].as_f64().map(money),
        Field::CloseDate => d["closingDateTime"]
            .as_str()
            .map(|s| s.chars().take(10).collect()),
        Field::Notes => d["notes"].as_str().map(str::to_string),
        Field::MicrosoftCrmId => referral["trackingInfo"]["microsoftMsxId"]
            .as_str()
            .map(str::to_string),
        Field::Status => Some(format!(
            "{}/{}",
            referral["status"].as_str().unwrap_or("?"),
            referral["substatus"].as_str().unwrap_or("?")
        )),
    }
}

/// The raw value of a followed field on the CRM side (`None` where the table has no column).
pub(crate) fn crm_value(rec: &CrmRecord, field: Field) -> Option<String> {
    let r = &rec.row;
    match field {
        // A lead's deal value is its Money column `estimatedamount` (R-LEAD).
        Field::DealValue if rec.table == "lead" => r["estimatedamount"].as_f64().map(money),
        Field::DealValue => r["estimatedvalue"].as_f64().map(money),
        Field::CloseDate => r["estimatedclosedate"]
            .as_str()
            .map(|s| s.chars().take(10).collect()),
        Field::Notes => r["description"].as_str().map(str::to_string),
        Field::MicrosoftCrmId if rec.table == "opportunity" => {
            r["cosell_microsoftcrmid"].as_str().map(str::to_string)
        }
        _ => None,
    }
}

pub(crate) fn money(v: f64) -> String {
    format!("{v:.2}")
}
