//! Status and substatus rules applied on every write (reference §2.6).

use partner_center_client::models::{
    ReferralStatus, ReferralSubstatus, TransitionRule, allowed_substatuses, check_transition,
};
use serde_json::{Map, Value};

/// Whether `status` is `Closed` (any casing).
pub(crate) fn is_closed(status: &str) -> bool {
    ReferralStatus::from(status) == ReferralStatus::Closed
}

/// The `(status, substatus)` of a stored or proposed referral.
pub(crate) fn pair(body: &Map<String, Value>) -> (String, String) {
    let get = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or("None")
            .to_string()
    };
    (get("status"), get("substatus"))
}

/// Whether a referral with this substatus is frozen.
pub(crate) fn is_terminal(substatus: &str) -> bool {
    ReferralSubstatus::from(substatus).is_terminal()
}

/// Checks that moving from `from` to the pair in `body` is allowed by the transition table of
/// `partner_center_client::models` (terminal states frozen, reachable status, matching
/// substatus), and normalises the casing of the new pair in `body`. The message names the rule.
pub(crate) fn check(from: &(String, String), body: &mut Map<String, Value>) -> Result<(), String> {
    let to = pair(body);
    let from_pair = (
        ReferralStatus::from(from.0.as_str()),
        ReferralSubstatus::from(from.1.as_str()),
    );
    let to_pair = (
        ReferralStatus::from(to.0.as_str()),
        ReferralSubstatus::from(to.1.as_str()),
    );
    // referral-resources / create-a-referral: the status transition table.
    if let Err(e) = check_transition(from_pair, to_pair.clone()) {
        let hint = match e.rule() {
            TransitionRule::SubstatusNotAllowed => {
                let allowed: Vec<&str> = allowed_substatuses(&to_pair.0)
                    .iter()
                    .map(ReferralSubstatus::as_str)
                    .collect();
                format!(" Allowed with {}: {}.", to_pair.0, allowed.join(", "))
            }
            TransitionRule::UnknownTarget => " Statuses: New, Active, Closed; substatuses: \
                Pending, Received, Accepted, Won, Lost, Declined, Expired."
                .to_string(),
            _ => String::new(),
        };
        return Err(format!(
            "The status {}.{hint}",
            e.to_string().trim_start_matches("referral ")
        ));
    }
    body.insert("status".into(), Value::from(to_pair.0.as_str()));
    body.insert("substatus".into(), Value::from(to_pair.1.as_str()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(from: (&str, &str), to: (&str, &str)) -> Result<(), String> {
        let mut body = json!({"status": to.0, "substatus": to.1})
            .as_object()
            .cloned()
            .unwrap_or_default();
        check(&(from.0.to_string(), from.1.to_string()), &mut body)
    }

    #[test]
    fn table() {
        assert!(run(("New", "Pending"), ("Active", "Accepted")).is_ok());
        assert!(run(("New", "Pending"), ("Closed", "Declined")).is_ok());
        assert!(run(("Active", "Accepted"), ("Closed", "Won")).is_ok());
        assert!(run(("active", "accepted"), ("closed", "lost")).is_ok());
        assert!(run(("Active", "Accepted"), ("New", "Pending")).is_err());
        assert!(run(("Active", "Accepted"), ("Active", "Won")).is_err());
        assert!(run(("Closed", "Won"), ("Active", "Accepted")).is_err());
        assert!(run(("New", "Pending"), ("Engaged", "Pending")).is_err());
        assert!(is_terminal("expired"));
        assert!(!is_terminal("Accepted"));
    }
}
