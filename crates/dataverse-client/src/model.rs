//! Row values: ETags, entities with their ETag, keys, `@odata.bind` references, choices and
//! DateOnly columns.

use std::fmt;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{Error, InvalidRequest};
use crate::query::escape_string_literal;

/// An opaque row version as Dataverse sends it in `@odata.etag` (for example `W/"536530"`).
///
/// Only equality is meaningful. Send it back in `If-Match` to make a write conditional.
///
/// ```
/// let etag = dataverse_client::ETag::new(r#"W/"536530""#);
/// assert_eq!(etag.as_str(), r#"W/"536530""#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ETag(String);

impl ETag {
    /// Wraps an ETag as the service sent it.
    pub fn new(etag: impl Into<String>) -> Self {
        ETag(etag.into())
    }

    /// The ETag as the service sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A row with the ETag it was read at.
///
/// `T` is any deserializable type: a serde struct with the columns you selected, or
/// `serde_json::Map<String, Value>` / `serde_json::Value` for untyped access. The
/// `@odata.etag` and `@odata.context` annotations are taken out before `T` sees the row; other
/// annotations (formatted values, lookup names) stay in.
///
/// ```
/// use dataverse_client::Entity;
/// #[derive(serde::Deserialize)]
/// struct Account { name: String }
/// let row: Entity<Account> = serde_json::from_str(
///     r#"{"@odata.etag":"W/\"1\"","accountid":"7eb682f1-ca75-e511-80d4-00155d2a68d1","name":"Contoso"}"#,
/// ).unwrap();
/// assert_eq!(row.etag.unwrap().as_str(), "W/\"1\"");
/// assert_eq!(row.value.name, "Contoso");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Entity<T> {
    /// The row version, when the service sent one.
    pub etag: Option<ETag>,
    /// The row.
    pub value: T,
}

const ETAG_ANNOTATION: &str = "@odata.etag";
const CONTEXT_ANNOTATION: &str = "@odata.context";

impl<T: DeserializeOwned> Entity<T> {
    /// Builds an entity from a JSON row, naming the JSON path (prefixed with `path`, for example
    /// `value[3]`) of the first problem. `what` names the thing being decoded in errors.
    pub fn from_json(row: Value, what: &str, path: &str) -> Result<Self, Error> {
        let Value::Object(mut map) = row else {
            return Err(Error::decode(
                what,
                display_path(path, ""),
                format!("expected a JSON object, found {}", json_kind(&row)),
            ));
        };
        let etag = match map.remove(ETAG_ANNOTATION) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(ETag(s)),
            Some(other) => {
                return Err(Error::decode(
                    what,
                    display_path(path, ETAG_ANNOTATION),
                    format!("expected a string, found {}", json_kind(&other)),
                ));
            }
        };
        map.remove(CONTEXT_ANNOTATION);
        let value = decode_value(Value::Object(map), what, path)?;
        Ok(Entity { etag, value })
    }
}

/// Deserializes `value` into `T` with the JSON path of the first problem in the error.
pub(crate) fn decode_value<T: DeserializeOwned>(
    value: Value,
    what: &str,
    path: &str,
) -> Result<T, Error> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner_path = e.path().to_string();
        let inner_path = if inner_path == "." {
            String::new()
        } else {
            inner_path
        };
        let message = e.into_inner().to_string();
        Error::decode(
            what,
            display_path(path, &inner_path),
            truncate(&message, 300),
        )
    })
}

pub(crate) fn display_path(prefix: &str, inner: &str) -> String {
    match (prefix.is_empty(), inner.is_empty()) {
        (true, true) => ".".to_string(),
        (true, false) => inner.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if inner.starts_with('[') => format!("{prefix}{inner}"),
        (false, false) => format!("{prefix}.{inner}"),
    }
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Entity<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Entity::from_json(value, "entity", "").map_err(D::Error::custom)
    }
}

impl<T: Serialize> Serialize for Entity<T> {
    /// Writes the row with its `@odata.etag` (when `T` serializes to an object), so an
    /// `Entity` survives a round trip through a cache or a state store.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let value = serde_json::to_value(&self.value).map_err(S::Error::custom)?;
        match (value, &self.etag) {
            (Value::Object(mut map), Some(etag)) => {
                map.insert(ETAG_ANNOTATION.into(), Value::String(etag.0.clone()));
                map.serialize(serializer)
            }
            (value, _) => value.serialize(serializer),
        }
    }
}

/// One value of an alternate key.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum KeyValue {
    /// A text column: written as an OData string literal (`'O''Brien'`).
    String(String),
    /// A whole-number or choice column.
    Int(i64),
    /// A lookup or unique-identifier column (written unquoted).
    Guid(Uuid),
    /// A decimal column, written as given (for example `12.50`).
    Decimal(String),
}

impl KeyValue {
    fn write(&self, out: &mut String) {
        match self {
            KeyValue::String(s) => out.push_str(&escape_string_literal(s)),
            KeyValue::Int(i) => out.push_str(&i.to_string()),
            KeyValue::Guid(g) => out.push_str(&g.hyphenated().to_string()),
            KeyValue::Decimal(d) => out.push_str(d),
        }
    }
}

impl From<&str> for KeyValue {
    fn from(s: &str) -> Self {
        KeyValue::String(s.to_string())
    }
}
impl From<String> for KeyValue {
    fn from(s: String) -> Self {
        KeyValue::String(s)
    }
}
impl From<&String> for KeyValue {
    fn from(s: &String) -> Self {
        KeyValue::String(s.clone())
    }
}
impl From<i64> for KeyValue {
    fn from(i: i64) -> Self {
        KeyValue::Int(i)
    }
}
impl From<i32> for KeyValue {
    fn from(i: i32) -> Self {
        KeyValue::Int(i.into())
    }
}
impl From<Uuid> for KeyValue {
    fn from(g: Uuid) -> Self {
        KeyValue::Guid(g)
    }
}

/// How a row is addressed: its primary key, or an alternate key (one or more columns).
///
/// ```
/// use dataverse_client::Key;
/// let id = uuid::Uuid::parse_str("7eb682f1-ca75-e511-80d4-00155d2a68d1").unwrap();
/// assert_eq!(Key::id(id).to_string(), "7eb682f1-ca75-e511-80d4-00155d2a68d1");
/// assert_eq!(Key::alternate("accountnumber", "O'Neil").to_string(), "accountnumber='O''Neil'");
/// assert_eq!(
///     Key::composite([("k1", "a".into()), ("k2", 2.into())]).to_string(),
///     "k1='a',k2=2"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    /// The primary key.
    Id(Uuid),
    /// An alternate key: `(column, value)` pairs in the key's order.
    Alternate(Vec<(String, KeyValue)>),
}

impl Key {
    /// The primary key.
    pub fn id(id: Uuid) -> Self {
        Key::Id(id)
    }

    /// A single-column alternate key.
    pub fn alternate(column: impl Into<String>, value: impl Into<KeyValue>) -> Self {
        Key::Alternate(vec![(column.into(), value.into())])
    }

    /// A multi-column alternate key.
    pub fn composite<I, S>(parts: I) -> Self
    where
        I: IntoIterator<Item = (S, KeyValue)>,
        S: Into<String>,
    {
        Key::Alternate(parts.into_iter().map(|(c, v)| (c.into(), v)).collect())
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidRequest> {
        if let Key::Alternate(parts) = self {
            if parts.is_empty() {
                return Err(InvalidRequest::new(
                    "an alternate key needs at least one column",
                ));
            }
            for (column, _) in parts {
                if !is_identifier(column) {
                    return Err(InvalidRequest::new(format!(
                        "`{column}` is not a valid key column name"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Key {
    /// The text between the parentheses of the key segment (unencoded).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Id(id) => write!(f, "{}", id.hyphenated()),
            Key::Alternate(parts) => {
                let mut out = String::new();
                for (i, (column, value)) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(column);
                    out.push('=');
                    value.write(&mut out);
                }
                f.write_str(&out)
            }
        }
    }
}

impl From<Uuid> for Key {
    fn from(id: Uuid) -> Self {
        Key::Id(id)
    }
}

/// Whether `s` is a plain OData identifier (letters, digits, `_`), as entity set, column and
/// navigation property names are.
pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A reference to a row for `@odata.bind`: serializes as `/accounts(<id>)` or
/// `/accounts(accountnumber='X')`.
///
/// ```
/// use dataverse_client::EntityRef;
/// let id = uuid::Uuid::parse_str("7eb682f1-ca75-e511-80d4-00155d2a68d1").unwrap();
/// let r = EntityRef::new("accounts", id);
/// assert_eq!(r.to_string(), "/accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)");
/// assert_eq!(
///     r.bind("parentcustomerid_account"),
///     ("parentcustomerid_account@odata.bind".to_string(),
///      serde_json::json!("/accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)"))
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EntityRef {
    /// The entity set (`accounts`).
    pub entity_set: String,
    /// The row's key.
    pub key: Key,
}

impl EntityRef {
    /// A reference to the row `key` of `entity_set`.
    pub fn new(entity_set: impl Into<String>, key: impl Into<Key>) -> Self {
        EntityRef {
            entity_set: entity_set.into(),
            key: key.into(),
        }
    }

    /// The `"<navigation_property>@odata.bind": "/set(key)"` member that sets a lookup.
    pub fn bind(&self, navigation_property: &str) -> (String, Value) {
        (
            bind_property(navigation_property),
            Value::String(self.to_string()),
        )
    }

    /// Inserts the bind member into a JSON object.
    pub fn bind_into(&self, row: &mut Map<String, Value>, navigation_property: &str) {
        let (k, v) = self.bind(navigation_property);
        row.insert(k, v);
    }
}

impl fmt::Display for EntityRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}({})", self.entity_set, self.key)
    }
}

impl Serialize for EntityRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The member name that binds `navigation_property`: `<nav>@odata.bind`.
pub fn bind_property(navigation_property: &str) -> String {
    format!("{navigation_property}@odata.bind")
}

/// The `"<nav>@odata.bind": null` member that clears a lookup on update.
pub fn unbind(navigation_property: &str) -> (String, Value) {
    (bind_property(navigation_property), Value::Null)
}

/// The target of a Customer-type lookup (opportunity `customerid`, contact `parentcustomerid`),
/// which Dataverse binds through one navigation property per target table
/// (`customerid_account` / `customerid_contact`).
///
/// ```
/// use dataverse_client::CustomerRef;
/// let id = uuid::Uuid::parse_str("7eb682f1-ca75-e511-80d4-00155d2a68d1").unwrap();
/// let (name, value) = CustomerRef::Account(id).bind("customerid");
/// assert_eq!(name, "customerid_account@odata.bind");
/// assert_eq!(value, "/accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CustomerRef {
    /// An account.
    Account(Uuid),
    /// A contact.
    Contact(Uuid),
}

impl CustomerRef {
    /// The row as an [`EntityRef`].
    pub fn entity_ref(&self) -> EntityRef {
        match *self {
            CustomerRef::Account(id) => EntityRef::new("accounts", id),
            CustomerRef::Contact(id) => EntityRef::new("contacts", id),
        }
    }

    /// The navigation property for a customer column: `customerid` → `customerid_account`.
    pub fn navigation_property(&self, column: &str) -> String {
        match self {
            CustomerRef::Account(_) => format!("{column}_account"),
            CustomerRef::Contact(_) => format!("{column}_contact"),
        }
    }

    /// The bind member for the customer column `column` (`customerid`, `parentcustomerid`).
    pub fn bind(&self, column: &str) -> (String, Value) {
        self.entity_ref().bind(&self.navigation_property(column))
    }

    /// The logical name of the target table (`account` / `contact`).
    pub fn logical_name(&self) -> &'static str {
        match self {
            CustomerRef::Account(_) => "account",
            CustomerRef::Contact(_) => "contact",
        }
    }

    /// The target row's id.
    pub fn id(&self) -> Uuid {
        match *self {
            CustomerRef::Account(id) | CustomerRef::Contact(id) => id,
        }
    }
}

macro_rules! choice {
    (
        $(#[$doc:meta])*
        $name:ident { $( $(#[$vdoc:meta])* $variant:ident = $code:literal ),+ $(,)? }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vdoc])* $variant, )+
            /// A value this crate does not name (custom status reasons).
            Other(i32),
        }

        impl $name {
            /// The option value.
            pub fn code(self) -> i32 {
                match self {
                    $( $name::$variant => $code, )+
                    $name::Other(c) => c,
                }
            }

            /// The named value for `code`, or [`Other`](Self::Other).
            pub fn from_code(code: i32) -> Self {
                match code {
                    $( $code => $name::$variant, )+
                    other => $name::Other(other),
                }
            }
        }

        impl From<i32> for $name {
            fn from(code: i32) -> Self {
                Self::from_code(code)
            }
        }

        impl From<$name> for i32 {
            fn from(v: $name) -> i32 {
                v.code()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_i32(self.code())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let code = i64::deserialize(deserializer)?;
                let code = i32::try_from(code)
                    .map_err(|_| D::Error::custom(format!("option value {code} is out of range")))?;
                Ok(Self::from_code(code))
            }
        }
    };
}

choice!(
    /// Opportunity `statecode`.
    ///
    /// ```
    /// use dataverse_client::OpportunityState;
    /// assert_eq!(serde_json::to_string(&OpportunityState::Won).unwrap(), "1");
    /// assert_eq!(serde_json::from_str::<OpportunityState>("7").unwrap(), OpportunityState::Other(7));
    /// ```
    OpportunityState {
        /// 0 Open.
        Open = 0,
        /// 1 Won (read-only until reopened).
        Won = 1,
        /// 2 Lost (read-only until reopened).
        Lost = 2,
    }
);

choice!(
    /// Opportunity `statuscode` (status reason).
    OpportunityStatus {
        /// 1 In Progress (Open).
        InProgress = 1,
        /// 2 On Hold (Open).
        OnHold = 2,
        /// 3 Won (Won).
        Won = 3,
        /// 4 Canceled (Lost).
        Canceled = 4,
        /// 5 Out-Sold (Lost).
        OutSold = 5,
    }
);

choice!(
    /// Lead `statecode`.
    LeadState {
        /// 0 Open.
        Open = 0,
        /// 1 Qualified.
        Qualified = 1,
        /// 2 Disqualified.
        Disqualified = 2,
    }
);

choice!(
    /// Lead `statuscode` (status reason).
    LeadStatus {
        /// 1 New (Open).
        New = 1,
        /// 2 Contacted (Open).
        Contacted = 2,
        /// 3 Qualified (Qualified).
        Qualified = 3,
        /// 4 Lost (Disqualified).
        Lost = 4,
        /// 5 Cannot Contact (Disqualified).
        CannotContact = 5,
        /// 6 No Longer Interested (Disqualified).
        NoLongerInterested = 6,
        /// 7 Canceled (Disqualified).
        Canceled = 7,
    }
);

impl OpportunityState {
    /// The status reason Dataverse uses when the state is set without one.
    pub fn default_status(self) -> Option<OpportunityStatus> {
        match self {
            OpportunityState::Open => Some(OpportunityStatus::InProgress),
            OpportunityState::Won => Some(OpportunityStatus::Won),
            OpportunityState::Lost => Some(OpportunityStatus::Canceled),
            OpportunityState::Other(_) => None,
        }
    }
}

impl OpportunityStatus {
    /// The state this built-in status reason belongs to (`None` for custom values).
    pub fn state(self) -> Option<OpportunityState> {
        match self {
            OpportunityStatus::InProgress | OpportunityStatus::OnHold => {
                Some(OpportunityState::Open)
            }
            OpportunityStatus::Won => Some(OpportunityState::Won),
            OpportunityStatus::Canceled | OpportunityStatus::OutSold => {
                Some(OpportunityState::Lost)
            }
            OpportunityStatus::Other(_) => None,
        }
    }
}

impl LeadState {
    /// The status reason Dataverse uses when the state is set without one.
    pub fn default_status(self) -> Option<LeadStatus> {
        match self {
            LeadState::Open => Some(LeadStatus::New),
            LeadState::Qualified => Some(LeadStatus::Qualified),
            LeadState::Disqualified => Some(LeadStatus::Lost),
            LeadState::Other(_) => None,
        }
    }
}

impl LeadStatus {
    /// The state this built-in status reason belongs to (`None` for custom values).
    pub fn state(self) -> Option<LeadState> {
        match self {
            LeadStatus::New | LeadStatus::Contacted => Some(LeadState::Open),
            LeadStatus::Qualified => Some(LeadState::Qualified),
            LeadStatus::Lost
            | LeadStatus::CannotContact
            | LeadStatus::NoLongerInterested
            | LeadStatus::Canceled => Some(LeadState::Disqualified),
            LeadStatus::Other(_) => None,
        }
    }
}

/// Serde helpers for DateOnly columns (`estimatedclosedate`, `actualclosedate`) as
/// [`chrono::NaiveDate`]: written as `YYYY-MM-DD`; read from `YYYY-MM-DD` and, tolerantly, from a
/// date-time whose date part is taken (`2026-09-30T00:00:00Z`).
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Opp {
///     #[serde(with = "dataverse_client::date_only::option", default)]
///     estimatedclosedate: Option<chrono::NaiveDate>,
/// }
/// let o: Opp = serde_json::from_str(r#"{"estimatedclosedate":"2026-09-30T00:00:00Z"}"#).unwrap();
/// assert_eq!(serde_json::to_string(&o).unwrap(), r#"{"estimatedclosedate":"2026-09-30"}"#);
/// ```
pub mod date_only {
    use chrono::NaiveDate;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses `YYYY-MM-DD`, or the date part of `YYYY-MM-DDT…`.
    pub fn parse(s: &str) -> Option<NaiveDate> {
        let s = s.trim();
        let date = s.split_once('T').map_or(s, |(d, _)| d);
        NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()
    }

    /// Writes `YYYY-MM-DD`.
    pub fn serialize<S: Serializer>(date: &NaiveDate, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&date.format("%Y-%m-%d"))
    }

    /// Reads `YYYY-MM-DD` (or a date-time's date part).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NaiveDate, D::Error> {
        let s = String::deserialize(deserializer)?;
        parse(&s).ok_or_else(|| D::Error::custom(format!("`{s}` is not a YYYY-MM-DD date")))
    }

    /// The same for `Option<NaiveDate>` (null ↔ `None`).
    pub mod option {
        use super::*;

        /// Writes `YYYY-MM-DD` or null.
        pub fn serialize<S: Serializer>(
            date: &Option<NaiveDate>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match date {
                Some(d) => super::serialize(d, serializer),
                None => serializer.serialize_none(),
            }
        }

        /// Reads `YYYY-MM-DD`, a date-time's date part, or null.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<NaiveDate>, D::Error> {
            match Option::<String>::deserialize(deserializer)? {
                None => Ok(None),
                Some(s) => parse(&s)
                    .map(Some)
                    .ok_or_else(|| D::Error::custom(format!("`{s}` is not a YYYY-MM-DD date"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entity_decode_names_path_and_strips_annotations() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Opp {
            estimatedvalue: f64,
        }
        let err = Entity::<Opp>::from_json(
            json!({"@odata.etag": "W/\"1\"", "estimatedvalue": "x"}),
            "opportunity",
            "value[2]",
        )
        .unwrap_err();
        let Error::Decode(d) = err else {
            panic!("{err:?}")
        };
        assert_eq!(d.path(), "value[2].estimatedvalue");

        let e = Entity::<Map<String, Value>>::from_json(
            json!({"@odata.context": "c", "@odata.etag": "W/\"1\"", "a": 1}),
            "row",
            "",
        )
        .unwrap();
        assert_eq!(e.value, json!({"a": 1}).as_object().unwrap().clone());
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"a":1,"@odata.etag":"W/\"1\""})
        );

        let err = Entity::<Value>::from_json(json!([1]), "row", "").unwrap_err();
        assert!(err.to_string().contains("expected a JSON object"));
        let err = Entity::<Value>::from_json(json!({"@odata.etag": 5}), "row", "").unwrap_err();
        assert!(err.to_string().contains("@odata.etag"));
    }

    #[test]
    fn keys_render() {
        let k = Key::composite([
            ("k1", KeyValue::from("a'b")),
            ("k2", 2.into()),
            ("k3", Uuid::nil().into()),
        ]);
        assert_eq!(
            k.to_string(),
            "k1='a''b',k2=2,k3=00000000-0000-0000-0000-000000000000"
        );
        assert!(Key::Alternate(vec![]).validate().is_err());
        assert!(Key::alternate("bad name", "x").validate().is_err());
    }

    #[test]
    fn choices_round_trip() {
        for c in 0..10 {
            assert_eq!(OpportunityStatus::from_code(c).code(), c);
            assert_eq!(LeadStatus::from_code(c).code(), c);
        }
        assert_eq!(
            OpportunityStatus::OutSold.state(),
            Some(OpportunityState::Lost)
        );
        assert_eq!(LeadStatus::Canceled.state(), Some(LeadState::Disqualified));
        assert!(serde_json::from_str::<LeadStatus>("99999999999").is_err());
        assert!(serde_json::from_str::<LeadStatus>("\"x\"").is_err());
    }

    #[test]
    fn date_only_parse() {
        assert_eq!(
            date_only::parse("2026-09-30"),
            chrono::NaiveDate::from_ymd_opt(2026, 9, 30)
        );
        assert_eq!(date_only::parse("30/09/2026"), None);
    }
}
