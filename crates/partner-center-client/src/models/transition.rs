//! The status/substatus transition table (reference §2.6), as a pure function.
//!
//! | from status | may move to | with substatus |
//! |---|---|---|
//! | New | New, Active, Closed | New: Pending, Received |
//! | Active | Active, Closed | Active: Accepted |
//! | Closed | Closed | Closed: Won, Lost, Declined, Expired |
//!
//! Won, Lost, Declined and Expired are terminal: nothing may change after them.

use std::fmt;

use super::enums::{ReferralStatus, ReferralSubstatus};

/// Why a transition is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransitionRule {
    /// The current substatus is terminal (Won, Lost, Declined, Expired).
    Terminal,
    /// The target status cannot be reached from the current status.
    StatusNotAllowed,
    /// The target substatus does not belong to the target status.
    SubstatusNotAllowed,
    /// The target status or substatus is not a value this client knows, so it cannot vouch for it.
    UnknownTarget,
}

/// A status change the transition table forbids. Names both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTransition {
    from: (ReferralStatus, ReferralSubstatus),
    to: (ReferralStatus, ReferralSubstatus),
    rule: TransitionRule,
}

impl InvalidTransition {
    /// The current status and substatus.
    pub fn from(&self) -> &(ReferralStatus, ReferralSubstatus) {
        &self.from
    }

    /// The requested status and substatus.
    pub fn to(&self) -> &(ReferralStatus, ReferralSubstatus) {
        &self.to
    }

    /// The rule that refused it.
    pub fn rule(&self) -> TransitionRule {
        self.rule
    }
}

impl fmt::Display for InvalidTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.rule {
            TransitionRule::Terminal => format!("{} is terminal", self.from.1),
            TransitionRule::StatusNotAllowed => {
                format!("status {} cannot become {}", self.from.0, self.to.0)
            }
            TransitionRule::SubstatusNotAllowed => {
                format!(
                    "substatus {} does not go with status {}",
                    self.to.1, self.to.0
                )
            }
            TransitionRule::UnknownTarget => "the target is not a known status/substatus".into(),
        };
        write!(
            f,
            "referral cannot move from {}/{} to {}/{}: {why}",
            self.from.0, self.from.1, self.to.0, self.to.1
        )
    }
}

impl std::error::Error for InvalidTransition {}

/// The substatuses allowed with `status`.
pub fn allowed_substatuses(status: &ReferralStatus) -> &'static [ReferralSubstatus] {
    use ReferralSubstatus as S;
    match status {
        ReferralStatus::New => &[S::Pending, S::Received],
        ReferralStatus::Active => &[S::Accepted],
        ReferralStatus::Closed => &[S::Won, S::Lost, S::Declined, S::Expired],
        _ => &[],
    }
}

/// The statuses reachable from `status` (`None` for an unknown or empty current status: the
/// service decides those).
pub fn allowed_next_statuses(status: &ReferralStatus) -> Option<&'static [ReferralStatus]> {
    use ReferralStatus as St;
    match status {
        St::New => Some(&[St::New, St::Active, St::Closed]),
        St::Active => Some(&[St::Active, St::Closed]),
        St::Closed => Some(&[St::Closed]),
        _ => None,
    }
}

/// Checks a status change against the transition table.
///
/// The target must be a known, consistent pair; the current state must not be terminal; and the
/// target status must be reachable from the current one. A current status the client does not
/// know (`None`, `Other`) is left for the service to judge.
///
/// ```
/// use partner_center_client::models::{check_transition, ReferralStatus as St, ReferralSubstatus as Sub};
/// assert!(check_transition((St::New, Sub::Pending), (St::Active, Sub::Accepted)).is_ok());
/// let err = check_transition((St::Closed, Sub::Won), (St::Active, Sub::Accepted)).unwrap_err();
/// assert_eq!(err.to_string(), "referral cannot move from Closed/Won to Active/Accepted: Won is terminal");
/// ```
pub fn check_transition(
    from: (ReferralStatus, ReferralSubstatus),
    to: (ReferralStatus, ReferralSubstatus),
) -> Result<(), InvalidTransition> {
    let fail = |rule| {
        Err(InvalidTransition {
            from: from.clone(),
            to: to.clone(),
            rule,
        })
    };
    if !to.0.is_known() || !to.1.is_known() {
        return fail(TransitionRule::UnknownTarget);
    }
    if from.1.is_terminal() {
        return fail(TransitionRule::Terminal);
    }
    if let Some(next) = allowed_next_statuses(&from.0)
        && !next.contains(&to.0)
    {
        return fail(TransitionRule::StatusNotAllowed);
    }
    if !allowed_substatuses(&to.0).contains(&to.1) {
        return fail(TransitionRule::SubstatusNotAllowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReferralStatus as St;
    use ReferralSubstatus as Sub;

    fn ok(from: (St, Sub), to: (St, Sub)) -> bool {
        check_transition(from, to).is_ok()
    }

    #[test]
    fn table() {
        let pairs = [
            (St::New, Sub::Pending),
            (St::New, Sub::Received),
            (St::Active, Sub::Accepted),
            (St::Closed, Sub::Won),
            (St::Closed, Sub::Lost),
            (St::Closed, Sub::Declined),
            (St::Closed, Sub::Expired),
        ];
        for from in &pairs {
            for to in &pairs {
                let expected = match (&from.0, &to.0) {
                    _ if from.1.is_terminal() => false,
                    (St::New, _) => true,
                    (St::Active, St::Active | St::Closed) => true,
                    _ => false,
                };
                assert_eq!(ok(from.clone(), to.clone()), expected, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn rules_are_named() {
        let rule = |f, t| check_transition(f, t).unwrap_err().rule();
        assert_eq!(
            rule((St::Active, Sub::Accepted), (St::New, Sub::Pending)),
            TransitionRule::StatusNotAllowed
        );
        assert_eq!(
            rule((St::Active, Sub::Accepted), (St::Active, Sub::Won)),
            TransitionRule::SubstatusNotAllowed
        );
        assert_eq!(
            rule((St::Closed, Sub::Lost), (St::Closed, Sub::Lost)),
            TransitionRule::Terminal
        );
        assert_eq!(
            rule(
                (St::New, Sub::Pending),
                (St::Other("Paused".into()), Sub::None)
            ),
            TransitionRule::UnknownTarget
        );
        // An unknown current state is the service's call.
        assert!(ok(
            (St::Other("Draft".into()), Sub::None),
            (St::Active, Sub::Accepted)
        ));
        assert!(ok((St::None, Sub::None), (St::New, Sub::Pending)));
        let e = check_transition((St::Active, Sub::Accepted), (St::New, Sub::Pending)).unwrap_err();
        assert_eq!(e.from(), &(St::Active, Sub::Accepted));
        assert_eq!(e.to(), &(St::New, Sub::Pending));
    }
}
