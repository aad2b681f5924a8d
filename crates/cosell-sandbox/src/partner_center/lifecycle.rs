//! Status and substatus rules applied on every write (reference §2.6).

use serde_json::{Map, Value};

/// Substatuses after which a referral can no longer change.
const TERMINAL: &[&str] = &["Won", "Lost", "Declined", "Expired"];

/// Canonical spelling of a status, if it is one.
pub(crate) fn canonical_status(s: &str) -> Option<&'static str> {
    ["None", "New", "Active", "Closed"]
        .into_iter()
        .find(|k| k.eq_ignore_ascii_case(s))
}

/// Canonical spelling of a substatus, if it is one.
pub(crate) fn canonical_substatus(s: &str) -> Option<&'static str> {
    [
        "None", "Pending", "Received", "Accepted", "Won", "Lost", "Declined", "Expired",
    ]
    .into_iter()
    .find(|k| k.eq_ignore_ascii_case(s))
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
    TERMINAL.iter().any(|t| t.eq_ignore_ascii_case(substatus))
}

/// Checks that moving from `from` to `to` is allowed, and normalises the casing of `to` in
/// `body`. The message names the rule broken.
pub(crate) fn check(from: &(String, String), body: &mut Map<String, Value>) -> Result<(), String> {
    let to = pair(body);
    let Some(status) = canonical_status(&to.0) else {
        return Err(format!(
            "`{}` is not a referral status (New, Active, Closed).",
            to.0
        ));
    };
    let Some(substatus) = canonical_substatus(&to.1) else {
        return Err(format!(
            "`{}` is not a referral substatus (Pending, Received, Accepted, Won, Lost, Declined, Expired).",
            to.1
        ));
    };
    let allowed_sub: &[&str] = match status {
        "New" => &["Pending", "Received"],
        "Active" => &["Accepted"],
        "Closed" => &["Won", "Lost", "Declined", "Expired"],
        _ => &[],
    };
    if !allowed_sub.contains(&substatus) {
        return Err(format!(
            "Substatus `{substatus}` is not allowed with status `{status}` (allowed: {}).",
            if allowed_sub.is_empty() {
                "none".to_string()
            } else {
                allowed_sub.join(", ")
            }
        ));
    }
    let from_status = canonical_status(&from.0).unwrap_or("None");
    let allowed_status: &[&str] = match from_status {
        "New" | "None" => &["New", "Active", "Closed"],
        "Active" => &["Active", "Closed"],
        _ => &["Closed"],
    };
    if !allowed_status.contains(&status) {
        return Err(format!(
            "The status cannot change from `{from_status}` to `{status}` (allowed: {}).",
            allowed_status.join(", ")
        ));
    }
    body.insert("status".into(), Value::from(status));
    body.insert("substatus".into(), Value::from(substatus));
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
