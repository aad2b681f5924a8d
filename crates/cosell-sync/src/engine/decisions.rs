//! What Microsoft decided, shown in the CRM (issue 10, item 3).
//!
//! Two kinds of decision reach a pair:
//! - a status Partner Center sets on **our** referral (Microsoft declines or expires it, or it is
//!   accepted, won or lost there): the reconcile applies it as the status map says and words it
//!   with [`status_note`] for the record's audit column and the engine's audit trail;
//! - a decision on **Microsoft's own referral** in our engagement (a related referral): Microsoft
//!   accepting, declining or withdrawing from a co-sell the partner shared. Our referral does
//!   not change (the deal goes on without Microsoft), so there is no status to apply; the
//!   decision is written as a line in the CRM record's audit column and an engine audit entry
//!   by [`Engine::record_related_decision`].
//!
//! Where Microsoft's co-sell decision lives in the CRM: the audit column (`cosell_audit` by
//! default, `columns.opportunity.audit` / `columns.lead.audit`) and the engine's audit trail,
//! with the existing columns (status, Microsoft CRM id) where the decision maps onto one. No
//! column of its own: Partner Center defines no field on our referral for it, and a free-text
//! line names what Microsoft did, to which of its referrals and why (its `statusReason`).
//!
//! The last state seen of Microsoft's referral is kept per pair as a store checkpoint
//! (`pc.related.<our referral>.<their referral>`), committed with the audit entry, so a decision
//! is told once however often its webhook comes back.

use cosell_mapping::{RecordKind, ReferralState, SyncOutcome};
use partner_center_client::models::{Referral, ReferralStatus, ReferralSubstatus};
use serde_json::Value;

use super::{Action, Engine, Failure, Outcome, current_status, entity_name, kind_of, now};
use crate::store::{AuditEntry, AuditOutcome, Commit, Direction, Link};

/// The organisation id Microsoft's referrals carry (`inviteContext.invitedBy.organizationId` is
/// `msft` when Microsoft invited, referral-resources).
const MICROSOFT_ORGANIZATION_ID: &str = "msft";

/// The checkpoint holding the last state seen of `theirs` for our pair `ours`.
pub(super) fn related_checkpoint(ours: &str, theirs: &str) -> String {
    format!("pc.related.{ours}.{theirs}")
}

/// The state of a referral, when it has both a status and a substatus.
fn state_of(referral: &Referral) -> Option<ReferralState> {
    Some(ReferralState::new(
        referral.status.clone()?,
        referral.substatus.clone()?,
    ))
}

/// Who owns a related referral, as a name for the audit line: Microsoft (organisation `msft`,
/// or named Microsoft; the docs do not say which Microsoft's own referral carries, so either
/// counts), the organisation's name, or "another party".
fn party_of(referral: &Referral) -> String {
    let id = referral.organization_id.as_deref().unwrap_or_default();
    let name = referral.organization_name.as_deref().unwrap_or_default();
    if id.eq_ignore_ascii_case(MICROSOFT_ORGANIZATION_ID) || name.eq_ignore_ascii_case("Microsoft")
    {
        "Microsoft".to_string()
    } else if !name.trim().is_empty() {
        name.trim().to_string()
    } else {
        "another party".to_string()
    }
}

/// ` : reason` when the referral gives one.
fn reason_suffix(reason: Option<&str>) -> String {
    match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => format!(": {r}"),
        None => String::new(),
    }
}

/// What the owner of a related referral decided, moving it from `seen` (`None`: first seen) to
/// `now`, as a verb phrase; `None` when nothing was decided (a referral still new, or a state
/// the client does not know).
fn related_verb(seen: Option<&ReferralState>, now: &ReferralState) -> Option<&'static str> {
    let was_active = seen.is_some_and(|s| s.status == ReferralStatus::Active);
    Some(match (&now.status, &now.substatus) {
        (ReferralStatus::Active, _) => "accepted the co-sell",
        (ReferralStatus::Closed, ReferralSubstatus::Won) => "closed its side of the co-sell as won",
        (ReferralStatus::Closed, ReferralSubstatus::Lost) => "withdrew from the co-sell",
        (ReferralStatus::Closed, _) if was_active => "withdrew from the co-sell",
        (ReferralStatus::Closed, ReferralSubstatus::Declined) => "declined the co-sell",
        (ReferralStatus::Closed, ReferralSubstatus::Expired) => {
            "let the co-sell request expire unanswered"
        }
        _ => return None,
    })
}

/// The audit line for a decision on a related referral, e.g. `Microsoft declined the co-sell
/// (engagement E, Microsoft's referral R Closed/Declined: reason)`; `None` when nothing was
/// decided.
pub(super) fn related_decision(
    related: &Referral,
    seen: Option<&ReferralState>,
    now: &ReferralState,
) -> Option<String> {
    let verb = related_verb(seen, now)?;
    let party = party_of(related);
    Some(format!(
        "{party} {verb} (engagement {}, {party}'s referral {} {now}{})",
        related.engagement_id.as_deref().unwrap_or("?"),
        related.id.as_deref().unwrap_or("?"),
        reason_suffix(related.status_reason.as_deref()),
    ))
}

/// The audit line for a status Partner Center set on our referral, e.g. `Referral declined in
/// Partner Center (Closed/Declined, was Active/Accepted): reason`.
pub(super) fn status_note(
    was: &ReferralState,
    now: &ReferralState,
    reason: Option<&str>,
) -> String {
    let verb = match now.substatus {
        ReferralSubstatus::Accepted => "accepted".to_string(),
        ReferralSubstatus::Declined => "declined".to_string(),
        ReferralSubstatus::Expired => "expired".to_string(),
        ReferralSubstatus::Won => "closed as won".to_string(),
        ReferralSubstatus::Lost => "closed as lost".to_string(),
        _ => format!("moved to {now}"),
    };
    format!(
        "Referral {verb} in Partner Center ({now}, was {was}){}",
        reason_suffix(reason)
    )
}

impl Engine {
    /// Records what the owner of `related` (Microsoft's referral, or another party's, in the
    /// engagement of our pair `ours`) decided since it was last seen: a line in the pair's CRM
    /// audit column (when the row is open and its table has one: a closed row is read-only) and
    /// an engine audit entry, then the state seen. `None` when there is nothing to tell.
    pub(super) async fn record_related_decision(
        &self,
        ours: &str,
        related: &Referral,
    ) -> Result<Option<Outcome>, Failure> {
        let inner = &self.inner;
        let (Some(theirs), Some(state)) = (related.id.as_deref(), state_of(related)) else {
            return Ok(None);
        };
        let key = related_checkpoint(ours, theirs);
        let Some(link) = inner.store.link_by_referral(ours).await? else {
            return Ok(None);
        };
        let _guard = self.lock_pair(link.crm_id.as_deref(), Some(ours)).await?;
        // Re-read under the lock: the pair may have moved on (a lead became an opportunity).
        let Some(link) = inner.store.link_by_referral(ours).await? else {
            return Ok(None);
        };
        let seen = inner.store.checkpoint(&key).await?;
        if seen.as_deref() == Some(state.to_string().as_str()) {
            return Ok(None);
        }
        let seen = seen.as_deref().and_then(ReferralState::parse);
        let Some(message) = related_decision(related, seen.as_ref(), &state) else {
            // Nothing decided yet (a referral still new): remember the state, tell nothing.
            self.commit(Commit::new().checkpoint(key, state.to_string()))
                .await?;
            return Ok(None);
        };
        let crm = kind_of(&link.crm_entity).zip(link.crm_id.clone());
        if inner.config.dry_run {
            let mut o =
                Outcome::new(Action::Planned, format!("would record: {message}")).referral(ours);
            if let Some((kind, id)) = &crm {
                o = o.crm(*kind, id);
            }
            return Ok(Some(o));
        }
        let written = match &crm {
            Some((kind, id)) => self.write_audit_line(&link, *kind, id, &message).await?,
            None => false,
        };
        let mut entry =
            AuditEntry::new(Direction::ToCrm, AuditOutcome::Updated, &message).referral(ours);
        if let Some((kind, id)) = &crm {
            entry = entry.crm(entity_name(*kind), id);
        }
        self.commit(
            Commit::new()
                .checkpoint(key, state.to_string())
                .audit(entry),
        )
        .await?;
        let detail = if written {
            message
        } else {
            format!(
                "{message} (in the audit trail only: the CRM record is closed or has no audit column)"
            )
        };
        let mut o = Outcome::new(
            if written {
                Action::UpdatedCrm
            } else {
                Action::Unchanged
            },
            detail,
        )
        .referral(ours);
        if let Some((kind, id)) = &crm {
            o = o.crm(*kind, id);
        }
        Ok(Some(o))
    }

    /// Prepends `message` to the audit column of the pair's open CRM row, leaving its name and
    /// mark alone (a decision says nothing about the sync's health). Whether it was written.
    async fn write_audit_line(
        &self,
        link: &Link,
        kind: RecordKind,
        id: &str,
        message: &str,
    ) -> Result<bool, Failure> {
        let inner = &self.inner;
        let map = &inner.map;
        let columns = &map.config().columns;
        let audit = match kind {
            RecordKind::Opportunity => Some(&columns.opportunity.audit),
            RecordKind::Lead => columns.lead.audit.as_ref(),
        };
        let Some(audit) = audit else {
            return Ok(false);
        };
        let Some(row) = inner.crm.read(kind, id).await? else {
            return Ok(false);
        };
        if !current_status(&row).is_none_or(|s| s.is_open()) {
            return Ok(false);
        }
        let mut update = map.outcome_columns(
            kind,
            &row.records.primary,
            SyncOutcome::Success,
            message,
            now(),
        );
        update.retain(|k, _| k == audit);
        let Some(Value::String(_)) = update.get(audit) else {
            return Ok(false);
        };
        tracing::debug!(referral_id = %link.referral_id, "recording a decision on the CRM row");
        inner.crm.update_columns(kind, id, &update, None).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(status: ReferralStatus, substatus: ReferralSubstatus) -> ReferralState {
        ReferralState::new(status, substatus)
    }

    fn microsoft(status: &str, substatus: &str, reason: Option<&str>) -> Referral {
        Referral {
            id: Some("R".into()),
            engagement_id: Some("E".into()),
            organization_id: Some("msft".into()),
            organization_name: Some("Microsoft".into()),
            status: Some(ReferralStatus::from(status)),
            substatus: Some(ReferralSubstatus::from(substatus)),
            status_reason: reason.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn related_decisions_in_words() {
        use ReferralStatus as S;
        use ReferralSubstatus as U;
        let declined = microsoft("Closed", "Declined", None);
        let now = state_of(&declined).unwrap();
        assert_eq!(
            related_decision(&declined, None, &now).as_deref(),
            Some(
                "Microsoft declined the co-sell (engagement E, Microsoft's referral R Closed/Declined)"
            )
        );
        let active = st(S::Active, U::Accepted);
        assert_eq!(
            related_decision(&declined, Some(&active), &now).as_deref(),
            Some(
                "Microsoft withdrew from the co-sell (engagement E, Microsoft's referral R Closed/Declined)"
            )
        );
        let lost = microsoft("Closed", "Lost", Some("No capacity. "));
        assert_eq!(
            related_decision(&lost, Some(&active), &state_of(&lost).unwrap()).as_deref(),
            Some(
                "Microsoft withdrew from the co-sell (engagement E, Microsoft's referral R Closed/Lost: No capacity.)"
            )
        );
        let accepted = microsoft("Active", "Accepted", None);
        assert!(
            related_decision(&accepted, None, &active)
                .unwrap()
                .starts_with("Microsoft accepted the co-sell")
        );
        let expired = microsoft("Closed", "Expired", None);
        assert!(
            related_decision(&expired, None, &state_of(&expired).unwrap())
                .unwrap()
                .contains("let the co-sell request expire")
        );
        let pending = st(S::New, U::Pending);
        assert_eq!(related_decision(&accepted, None, &pending), None);
        let mut partner = microsoft("Closed", "Declined", None);
        partner.organization_id = Some("7d23e5ca".into());
        partner.organization_name = Some("Contoso".into());
        assert!(
            related_decision(&partner, None, &now)
                .unwrap()
                .starts_with("Contoso declined the co-sell (engagement E, Contoso's referral R")
        );
    }

    #[test]
    fn states_round_trip_through_the_checkpoint() {
        let s = st(ReferralStatus::Closed, ReferralSubstatus::Declined);
        assert_eq!(ReferralState::parse(&s.to_string()), Some(s));
        assert_eq!(ReferralState::parse("garbage"), None);
        assert_eq!(related_checkpoint("a", "b"), "pc.related.a.b");
    }

    #[test]
    fn our_referrals_status_in_words() {
        use ReferralStatus as S;
        use ReferralSubstatus as U;
        assert_eq!(
            status_note(
                &st(S::Active, U::Accepted),
                &st(S::Closed, U::Declined),
                Some("Duplicate.")
            ),
            "Referral declined in Partner Center (Closed/Declined, was Active/Accepted): Duplicate."
        );
        assert_eq!(
            status_note(&st(S::New, U::Pending), &st(S::Closed, U::Expired), None),
            "Referral expired in Partner Center (Closed/Expired, was New/Pending)"
        );
        assert_eq!(
            status_note(
                &st(S::Active, U::Accepted),
                &st(S::Closed, U::Won),
                Some(" ")
            ),
            "Referral closed as won in Partner Center (Closed/Won, was Active/Accepted)"
        );
    }
}
