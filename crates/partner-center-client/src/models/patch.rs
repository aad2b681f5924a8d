//! JSON Patch operations for `PATCH /referrals/{id}` (reference §3.5). The service supports only
//! `add` and `replace`.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::enums::{ReferralStatus, ReferralSubstatus, SalesStage};
use super::referral::{Member, SolutionTag};

/// The operation of a [`PatchOperation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PatchOp {
    /// Add (with a path ending in `/-`, appends to an array).
    Add,
    /// Replace.
    Replace,
}

/// One RFC 6902 operation.
///
/// ```
/// use partner_center_client::models::{PatchOperation, ReferralStatus, ReferralSubstatus};
/// let ops = vec![
///     PatchOperation::set_status(&ReferralStatus::Closed),
///     PatchOperation::set_substatus(&ReferralSubstatus::Won),
///     PatchOperation::set_deal_value(rust_decimal::Decimal::new(1000050, 2)),
/// ];
/// assert_eq!(
///     serde_json::to_string(&ops).unwrap(),
///     r#"[{"op":"replace","path":"/status","value":"Closed"},{"op":"replace","path":"/substatus","value":"Won"},{"op":"replace","path":"/details/dealValue","value":10000.5}]"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchOperation {
    /// The operation.
    pub op: PatchOp,
    /// JSON Pointer into the referral, e.g. `/details/notes`.
    pub path: String,
    /// The new value.
    pub value: Value,
}

/// The paths the service documents as writable (the connector's `UpdateReferralDetails` list).
pub const WRITABLE_PATHS: &[&str] = &[
    "/campaignId",
    "/consent/consentToShareReferralWithMicrosoftSellers",
    "/customerProfile/team",
    "/customerProfile/team/-",
    "/details/closingDateTime",
    "/details/currency",
    "/details/dealValue",
    "/details/notes",
    "/details/requirements/solutions",
    "/details/requirements/solutions/-",
    "/externalReferenceId",
    "/referralProgram",
    "/salesStage",
    "/status",
    "/substatus",
    "/statusReason",
    "/team",
    "/team/-",
];

fn to_json<T: Serialize>(value: &T) -> Value {
    // Serializing the model types cannot fail (string keys, finite numbers); Null is unreachable.
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl PatchOperation {
    /// `replace` at `path`.
    pub fn replace(path: impl Into<String>, value: impl Into<Value>) -> Self {
        PatchOperation {
            op: PatchOp::Replace,
            path: path.into(),
            value: value.into(),
        }
    }

    /// `add` at `path`.
    pub fn add(path: impl Into<String>, value: impl Into<Value>) -> Self {
        PatchOperation {
            op: PatchOp::Add,
            path: path.into(),
            value: value.into(),
        }
    }

    /// Whether `path` is one of [`WRITABLE_PATHS`] or a deal-registration path (`/registrations/…`).
    pub fn is_documented_path(&self) -> bool {
        WRITABLE_PATHS.contains(&self.path.as_str()) || self.path.starts_with("/registrations/")
    }

    /// `/status`.
    pub fn set_status(status: &ReferralStatus) -> Self {
        Self::replace("/status", status.as_str())
    }

    /// `/substatus`.
    pub fn set_substatus(substatus: &ReferralSubstatus) -> Self {
        Self::replace("/substatus", substatus.as_str())
    }

    /// `/statusReason`.
    pub fn set_status_reason(reason: impl Into<String>) -> Self {
        Self::replace("/statusReason", reason.into())
    }

    /// `/details/dealValue`, written as a JSON number.
    pub fn set_deal_value(value: Decimal) -> Self {
        Self::replace("/details/dealValue", super::wire::decimal_to_json(&value))
    }

    /// `/details/currency` (ISO 4217).
    pub fn set_currency(currency: impl Into<String>) -> Self {
        Self::replace("/details/currency", currency.into())
    }

    /// `/details/closingDateTime`.
    pub fn set_closing_date_time(at: DateTime<Utc>) -> Self {
        Self::replace(
            "/details/closingDateTime",
            super::wire::format_datetime(&at),
        )
    }

    /// `/details/notes`.
    pub fn set_notes(notes: impl Into<String>) -> Self {
        Self::replace("/details/notes", notes.into())
    }

    /// `/externalReferenceId`.
    pub fn set_external_reference_id(id: impl Into<String>) -> Self {
        Self::replace("/externalReferenceId", id.into())
    }

    /// `/campaignId`.
    pub fn set_campaign_id(id: impl Into<String>) -> Self {
        Self::replace("/campaignId", id.into())
    }

    /// `/referralProgram`.
    pub fn set_referral_program(program: impl Into<String>) -> Self {
        Self::replace("/referralProgram", program.into())
    }

    /// `/salesStage`.
    pub fn set_sales_stage(stage: &SalesStage) -> Self {
        Self::replace("/salesStage", stage.as_str())
    }

    /// `/consent/consentToShareReferralWithMicrosoftSellers` (one-way: cannot go back to false
    /// once true).
    pub fn set_share_with_microsoft_sellers(share: bool) -> Self {
        Self::replace("/consent/consentToShareReferralWithMicrosoftSellers", share)
    }

    /// Replaces the whole sales team (`/team`). Prefer this over appending when retrying.
    pub fn set_team(team: &[Member]) -> Self {
        Self::replace("/team", to_json(&team))
    }

    /// Appends one sales-team member (`/team/-`). Not idempotent: a retry appends again.
    pub fn add_team_member(member: &Member) -> Self {
        Self::add("/team/-", to_json(member))
    }

    /// Replaces the customer contacts (`/customerProfile/team`).
    pub fn set_customer_contacts(contacts: &[Member]) -> Self {
        Self::replace("/customerProfile/team", to_json(&contacts))
    }

    /// Appends one customer contact (`/customerProfile/team/-`).
    pub fn add_customer_contact(contact: &Member) -> Self {
        Self::add("/customerProfile/team/-", to_json(contact))
    }

    /// Replaces the solutions (`/details/requirements/solutions`).
    pub fn set_solutions(solutions: &[SolutionTag]) -> Self {
        Self::replace("/details/requirements/solutions", to_json(&solutions))
    }

    /// Appends one solution (`/details/requirements/solutions/-`).
    pub fn add_solution(solution: &SolutionTag) -> Self {
        Self::add("/details/requirements/solutions/-", to_json(solution))
    }
}

/// The status and substatus a patch sets, if it sets either (the last write wins, as on the
/// service). Values that are not strings are reported as `Other` with their JSON text.
pub fn requested_status(
    ops: &[PatchOperation],
) -> Option<(Option<ReferralStatus>, Option<ReferralSubstatus>)> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut status = None;
    let mut substatus = None;
    for op in ops {
        match op.path.as_str() {
            "/status" => status = Some(ReferralStatus::from(text(&op.value))),
            "/substatus" => substatus = Some(ReferralSubstatus::from(text(&op.value))),
            _ => {}
        }
    }
    (status.is_some() || substatus.is_some()).then_some((status, substatus))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_serializes() {
        let ops = vec![
            PatchOperation::set_status(&ReferralStatus::Closed),
            PatchOperation::set_substatus(&ReferralSubstatus::Won),
            PatchOperation::add_team_member(&Member {
                email: Some("jane.doe@contoso.com".into()),
                first_name: Some("Jane".into()),
                last_name: Some("Doe".into()),
                phone_number: Some("0000000001".into()),
                ..Default::default()
            }),
        ];
        assert_eq!(
            serde_json::to_value(&ops).unwrap(),
            serde_json::json!([
                {"op":"replace","path":"/status","value":"Closed"},
                {"op":"replace","path":"/substatus","value":"Won"},
                {"op":"add","path":"/team/-","value":{"email":"jane.doe@contoso.com","firstName":"Jane","lastName":"Doe","phoneNumber":"0000000001"}}
            ])
        );
        assert!(ops.iter().all(PatchOperation::is_documented_path));
        assert_eq!(
            requested_status(&ops),
            Some((Some(ReferralStatus::Closed), Some(ReferralSubstatus::Won)))
        );
        assert_eq!(requested_status(&[PatchOperation::set_notes("x")]), None);
    }

    #[test]
    fn only_add_and_replace_decode() {
        let ok: PatchOperation =
            serde_json::from_str(r#"{"op":"add","path":"/team/-","value":{}}"#).unwrap();
        assert_eq!(ok.op, PatchOp::Add);
        assert!(
            serde_json::from_str::<PatchOperation>(
                r#"{"op":"remove","path":"/team/0","value":null}"#
            )
            .is_err()
        );
    }

    #[test]
    fn dates_and_money_use_wire_forms() {
        let at = DateTime::parse_from_rfc3339("2025-06-30T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            PatchOperation::set_closing_date_time(at).value,
            "2025-06-30T00:00:00Z"
        );
        assert_eq!(
            PatchOperation::set_deal_value(Decimal::from(10000)).value,
            serde_json::json!(10000)
        );
    }
}
