//! Errors: [`MappingError`] for data that breaks a rule, [`ConfigError`] for a bad field map.

use std::fmt;

/// The rule a value broke. Each rule comes from the original Power Automate solution or from the
/// Partner Center / Dataverse contracts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// A co-sell referral (Microsoft help requested) needs at least one customer contact.
    CoSellNeedsContact,
    /// A co-sell referral (Microsoft help requested) needs at least one solution.
    CoSellNeedsSolution,
    /// Visibility to Microsoft sellers, once granted, cannot be withdrawn.
    VisibilityIrreversible,
    /// A country must be an ISO 3166-1 alpha-2 code.
    InvalidCountry,
    /// A currency must be an ISO 4217 code.
    InvalidCurrency,
    /// A value is not one of the choices the map knows (for example an assistance request code
    /// without a configured option value, or an unmapped `statuscode`).
    UnknownChoice,
    /// A CRM column holds a value of the wrong JSON type or shape.
    WrongType {
        /// What the column should hold.
        expected: &'static str,
    },
    /// A required value is missing.
    Missing,
    /// Partner Center does not allow this status transition.
    ForbiddenTransition {
        /// The state the referral is in, as `Status/Substatus`.
        from: String,
    },
    /// A lookup the payload needs has not been resolved to a record id.
    UnresolvedLookup,
    /// The currency (ISO 4217, valid) is not one of the CRM's currencies: the record is written
    /// without its currency and deal value until an administrator adds it.
    CurrencyNotEnabled,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::CoSellNeedsContact => f.write_str(
                "a co-sell referral (Microsoft help requested) needs a customer contact",
            ),
            Rule::CoSellNeedsSolution => f.write_str(
                "a co-sell referral (Microsoft help requested) needs at least one solution",
            ),
            Rule::VisibilityIrreversible => {
                f.write_str("visibility to Microsoft sellers cannot be withdrawn once granted")
            }
            Rule::InvalidCountry => f.write_str("is not an ISO 3166-1 alpha-2 country code"),
            Rule::InvalidCurrency => f.write_str("is not an ISO 4217 currency code"),
            Rule::UnknownChoice => f.write_str("is not a known choice value"),
            Rule::WrongType { expected } => write!(f, "should be {expected}"),
            Rule::Missing => f.write_str("is required"),
            Rule::ForbiddenTransition { from } => {
                write!(f, "is not a transition Partner Center allows from {from}")
            }
            Rule::UnresolvedLookup => f.write_str("has not been resolved to a record id"),
            Rule::CurrencyNotEnabled => f.write_str(
                "is not a currency enabled in Dynamics 365: add it under Settings > Business \
                 Management > Currencies",
            ),
        }
    }
}

/// A referral or CRM record that cannot be mapped: names the field, the offending value and the
/// rule it breaks. The engine writes it to the audit column and marks the record with a cross.
///
/// ```
/// use cosell_mapping::{MappingError, Rule};
/// let e = MappingError::new("customerProfile.address.country", "USA", Rule::InvalidCountry);
/// assert_eq!(
///     e.to_string(),
///     r#"customerProfile.address.country: "USA" is not an ISO 3166-1 alpha-2 country code"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {value:?} {rule}")]
pub struct MappingError {
    field: String,
    value: String,
    rule: Rule,
}

impl MappingError {
    /// Builds an error for `field` holding `value` that breaks `rule`.
    pub fn new(field: impl Into<String>, value: impl Into<String>, rule: Rule) -> Self {
        Self {
            field: field.into(),
            value: value.into(),
            rule,
        }
    }

    /// The field: a Partner Center JSON path (`details.currency`) or a CRM logical name
    /// (`opportunity.cosell_helprequired`), whichever side held the value.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The offending value as text (empty when the value is missing).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The rule that was broken.
    pub fn rule(&self) -> &Rule {
        &self.rule
    }
}

/// A field map that failed to load: names the key path, the bad value and what is wrong.
///
/// ```
/// use cosell_mapping::FieldMap;
/// let err = FieldMap::from_toml("[columns.opportunity]\nreferral_id = \"\"\n").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     r#"columns.opportunity.referral_id: "" is not a logical name"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {}", detail(.value, .message))]
pub struct ConfigError {
    key: String,
    value: Option<String>,
    message: String,
}

fn detail(value: &Option<String>, message: &str) -> String {
    match value {
        Some(v) => format!("{v:?} {message}"),
        None => message.to_string(),
    }
}

impl ConfigError {
    pub(crate) fn invalid(
        key: impl Into<String>,
        value: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            value: Some(value.into()),
            message: message.into(),
        }
    }

    pub(crate) fn syntax(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: None,
            message: message.into(),
        }
    }

    /// Dotted path of the offending key (`columns.opportunity.referral_id`); empty for a
    /// document-level syntax error.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The offending value, when there is one.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}
