//! Referral status/substatus ↔ lead/opportunity state and status reason (DESIGN §6).

use partner_center_client::models::{ReferralStatus as St, ReferralSubstatus as Sub};
use serde::{Deserialize, Serialize};

use crate::config::StatusCodes;
use crate::error::{MappingError, Rule};
use crate::snapshot::ReferralState;

/// Which CRM table holds the referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A lead: the referral has not been accepted.
    Lead,
    /// An opportunity: the referral was accepted (and may since have closed).
    Opportunity,
}

/// `statecode` of an open lead or opportunity.
pub const STATE_OPEN: i64 = 0;
/// `statecode` of a won opportunity or a qualified lead.
pub const STATE_WON: i64 = 1;
/// `statecode` of a lost opportunity or a disqualified lead.
pub const STATE_LOST: i64 = 2;

/// Where a record stands in the CRM: its table, `statecode` and `statuscode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CrmStatus {
    /// The table.
    pub kind: RecordKind,
    /// `statecode` (0 open, 1 won/qualified, 2 lost/disqualified).
    pub statecode: i64,
    /// `statuscode` (status reason).
    pub statuscode: i64,
}

impl CrmStatus {
    /// Whether the record is open.
    pub fn is_open(&self) -> bool {
        self.statecode == STATE_OPEN
    }
}

/// What a CRM-side status change asks of Partner Center.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferralAction {
    /// Qualifying the lead accepts the referral (New → Active/Accepted).
    Accept,
    /// Disqualifying the lead declines it (New → Closed/Declined).
    Decline,
    /// Winning the opportunity closes it as won.
    Win,
    /// Losing the opportunity closes it as lost.
    Lose,
}

impl ReferralAction {
    /// The referral state the action leads to.
    pub fn target(self) -> ReferralState {
        match self {
            ReferralAction::Accept => ReferralState::new(St::Active, Sub::Accepted),
            ReferralAction::Decline => ReferralState::new(St::Closed, Sub::Declined),
            ReferralAction::Win => ReferralState::new(St::Closed, Sub::Won),
            ReferralAction::Lose => ReferralState::new(St::Closed, Sub::Lost),
        }
    }

    /// The action that moves `from` to `to`, if it is one of the four.
    pub fn between(from: &ReferralState, to: &ReferralState) -> Option<ReferralAction> {
        match (from.rank(), &to.substatus) {
            (0 | 1, Sub::Accepted) => Some(ReferralAction::Accept),
            (0 | 1, Sub::Declined) => Some(ReferralAction::Decline),
            (0..=2, Sub::Won) => Some(ReferralAction::Win),
            (0..=2, Sub::Lost) => Some(ReferralAction::Lose),
            _ => None,
        }
    }
}

/// One CRM operation the engine performs to move a record to a state (reference dataverse
/// §2.9–2.10). Record creation and column updates are not listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub enum StatusStep {
    /// `QualifyLead` with `Status` = the qualified statuscode; the opportunity that replaces the
    /// lead keeps the referral link (`originatingleadid`).
    QualifyLead {
        /// Lead statuscode to qualify with.
        status: i64,
    },
    /// `WinOpportunity` with `Status` = the won statuscode.
    WinOpportunity {
        /// Opportunity statuscode to close with.
        status: i64,
    },
    /// `LoseOpportunity` with `Status` = a lost statuscode.
    LoseOpportunity {
        /// Opportunity statuscode to close with.
        status: i64,
    },
    /// `PATCH` `statecode`/`statuscode` (disqualify a lead, reopen a record).
    SetState {
        /// Table.
        kind: RecordKind,
        /// New statecode.
        statecode: i64,
        /// New statuscode.
        statuscode: i64,
    },
}

impl StatusCodes {
    /// The CRM status for a referral state. Declined and Expired land on a disqualified lead
    /// unless the referral already has an opportunity (`existing`), which is then lost as
    /// cancelled.
    pub fn crm_status(
        &self,
        state: &ReferralState,
        existing: Option<RecordKind>,
    ) -> Result<CrmStatus, MappingError> {
        let opp = |statecode, statuscode| CrmStatus {
            kind: RecordKind::Opportunity,
            statecode,
            statuscode,
        };
        let lead = |statecode, statuscode| CrmStatus {
            kind: RecordKind::Lead,
            statecode,
            statuscode,
        };
        let o = &self.opportunity;
        let l = &self.lead;
        let on_opportunity = existing == Some(RecordKind::Opportunity);
        Ok(match (&state.status, &state.substatus) {
            (St::New, Sub::Pending | Sub::Received | Sub::None) => lead(STATE_OPEN, l.open),
            (St::Active, Sub::Accepted | Sub::None) => opp(STATE_OPEN, o.open),
            (St::Closed, Sub::Won) => opp(STATE_WON, o.won),
            (St::Closed, Sub::Lost) => opp(STATE_LOST, o.lost),
            (St::Closed, Sub::Declined | Sub::Expired) if on_opportunity => {
                opp(STATE_LOST, o.cancelled)
            }
            (St::Closed, Sub::Declined) => lead(STATE_LOST, l.declined),
            (St::Closed, Sub::Expired) => lead(STATE_LOST, l.expired),
            _ => {
                return Err(MappingError::new(
                    "status",
                    state.to_string(),
                    Rule::UnknownChoice,
                ));
            }
        })
    }

    /// The referral state a CRM status stands for. When `previous` maps to the same CRM status
    /// it is kept (so an expired referral stays expired, a pending one pending); otherwise: an
    /// open lead is New/Received, a qualified lead or open opportunity Active/Accepted, a
    /// disqualified lead Closed/Declined, a won opportunity Closed/Won and a lost one
    /// Closed/Lost.
    pub fn referral_state(
        &self,
        crm: CrmStatus,
        previous: Option<&ReferralState>,
    ) -> Result<ReferralState, MappingError> {
        if let Some(prev) = previous {
            let existing = Some(crm.kind);
            if self.crm_status(prev, existing).ok() == Some(crm) {
                return Ok(prev.clone());
            }
        }
        let state = |a, b| Ok(ReferralState::new(a, b));
        match (crm.kind, crm.statecode) {
            (RecordKind::Lead, STATE_OPEN) => state(St::New, Sub::Received),
            (RecordKind::Lead, STATE_WON) | (RecordKind::Opportunity, STATE_OPEN) => {
                state(St::Active, Sub::Accepted)
            }
            (RecordKind::Lead, STATE_LOST) => state(St::Closed, Sub::Declined),
            (RecordKind::Opportunity, STATE_WON) => state(St::Closed, Sub::Won),
            (RecordKind::Opportunity, STATE_LOST) => state(St::Closed, Sub::Lost),
            (_, other) => Err(MappingError::new(
                "statecode",
                other.to_string(),
                Rule::UnknownChoice,
            )),
        }
    }

    /// What a CRM status change means for the referral: qualifying the lead accepts,
    /// disqualifying declines, winning or losing the opportunity closes as Won or Lost.
    pub fn action_for_change(
        &self,
        before: CrmStatus,
        after: CrmStatus,
    ) -> Result<Option<ReferralAction>, MappingError> {
        if before == after {
            return Ok(None);
        }
        let from = self.referral_state(before, None)?;
        let to = self.referral_state(after, None)?;
        Ok(ReferralAction::between(&from, &to))
    }

    /// The CRM operations that move a record from `from` (`None`: just created, open) to `to`.
    pub fn steps(&self, from: Option<CrmStatus>, to: CrmStatus) -> Vec<StatusStep> {
        let mut steps = Vec::new();
        let from = from.unwrap_or(CrmStatus {
            kind: to.kind,
            statecode: STATE_OPEN,
            statuscode: match to.kind {
                RecordKind::Lead => self.lead.open,
                RecordKind::Opportunity => self.opportunity.open,
            },
        });
        if from == to {
            return steps;
        }
        let mut at = from;
        // A closed record is reopened first.
        let qualified_lead = at.kind == RecordKind::Lead && at.statecode == STATE_WON;
        if !at.is_open() && !qualified_lead {
            let statuscode = match at.kind {
                RecordKind::Lead => self.lead.open,
                RecordKind::Opportunity => self.opportunity.open,
            };
            steps.push(StatusStep::SetState {
                kind: at.kind,
                statecode: STATE_OPEN,
                statuscode,
            });
            at = CrmStatus {
                kind: at.kind,
                statecode: STATE_OPEN,
                statuscode,
            };
        }
        if at.kind == RecordKind::Lead && to.kind == RecordKind::Opportunity {
            if at.statecode != STATE_WON {
                steps.push(StatusStep::QualifyLead {
                    status: self.lead.qualified,
                });
            }
            at = CrmStatus {
                kind: RecordKind::Opportunity,
                statecode: STATE_OPEN,
                statuscode: self.opportunity.open,
            };
        }
        if at == to {
            return steps;
        }
        match (to.kind, to.statecode) {
            (RecordKind::Opportunity, STATE_WON) => steps.push(StatusStep::WinOpportunity {
                status: to.statuscode,
            }),
            (RecordKind::Opportunity, STATE_LOST) => steps.push(StatusStep::LoseOpportunity {
                status: to.statuscode,
            }),
            _ => steps.push(StatusStep::SetState {
                kind: to.kind,
                statecode: to.statecode,
                statuscode: to.statuscode,
            }),
        }
        steps
    }
}
