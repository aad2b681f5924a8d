//! The callback Partner Center posts to a registered webhook URL (reference §4.2).
//!
//! The payload is thin: it names the changed resource and carries no referral data and no event
//! id. Treat a callback as a *hint* that a referral may have changed: take its id with
//! [`WebhookCallback::referral_id`] (which never dereferences `ResourceUri`), read the referral
//! through the authenticated API, and deduplicate deliveries with
//! [`WebhookCallback::dedupe_key`].
//!
//! Parse only bodies whose signature was checked first (see
//! [`WebhookVerifier`](crate::webhook::verify::WebhookVerifier), feature `webhook`), and parse the
//! exact bytes that were verified.
//!
//! ```
//! use partner_center_client::webhook::callback::WebhookCallback;
//! use partner_center_client::webhook::registration::WebhookEvent;
//!
//! let body = br#"{"EventName":"referral-updated","ResourceUri":"https://api.partnercenter.microsoft.com/engagements/v1/referrals/4111fffc-f9ee-4d53-bba6-569135228642","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2024-02-25T09:11:02.1034567+00:00"}"#;
//! let callback = WebhookCallback::parse(body)?;
//! assert_eq!(callback.event_name, WebhookEvent::ReferralUpdated);
//! let id = callback.referral_id(WebhookCallback::DEFAULT_RESOURCE_HOSTS)?;
//! assert_eq!(id, "4111fffc-f9ee-4d53-bba6-569135228642");
//! # Ok::<(), partner_center_client::webhook::callback::CallbackError>(())
//! ```

use chrono::{DateTime, Timelike, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::models::Extra;
use crate::models::wire::parse_datetime;

/// The event named by a callback: the crate's [`WebhookEvent`](super::registration::WebhookEvent),
/// which keeps unknown names in `Other(String)` (a new event name never fails a parse).
pub use super::registration::WebhookEvent as CallbackEvent;

/// Longest referral id [`WebhookCallback::referral_id`] accepts (a GUID is 36 characters).
const MAX_ID_LEN: usize = 64;

/// A Partner Center webhook callback body.
///
/// The wire names are PascalCase (`EventName`, `ResourceUri`, `ResourceName`, `AuditUri`,
/// `ResourceChangeUtcDate`); the camelCase spellings of the swagger model are accepted too.
/// Members this type does not model are kept in [`extra`](Self::extra).
///
/// Serializing writes PascalCase and `ResourceChangeUtcDate` as the service does, with seven
/// fractional digits and a `+00:00` offset (sub-100 ns precision is truncated), so a sandbox can
/// produce realistic bodies with `serde_json::to_vec(&callback)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>", rename_all = "PascalCase")]
pub struct WebhookCallback {
    /// The event, e.g. `referral-updated`.
    pub event_name: CallbackEvent,
    /// The changed resource, e.g.
    /// `https://api.partnercenter.microsoft.com/engagements/v1/referrals/{id}`. Never fetch it;
    /// use [`referral_id`](Self::referral_id).
    pub resource_uri: String,
    /// The resource kind: `referral` for the referral events, `test` for `test-created`.
    pub resource_name: String,
    /// Optional audit record URI (often `null`).
    pub audit_uri: Option<String>,
    /// When the resource changed (the change time, not the delivery time).
    #[serde(serialize_with = "serialize_change_date")]
    pub resource_change_utc_date: DateTime<Utc>,
    /// Members this type does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Why a callback body or its `ResourceUri` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallbackError {
    /// The body is not a JSON object.
    #[error("callback body is not a JSON object: {0}")]
    NotAnObject(String),
    /// A required member is absent (or `null`).
    #[error("callback member `{0}` is missing")]
    MissingField(&'static str),
    /// A member has the wrong type or an unparsable value.
    #[error("callback member `{field}` is invalid: {reason}")]
    InvalidField {
        /// The member, in its PascalCase wire spelling.
        field: &'static str,
        /// What is wrong with it (never the whole body).
        reason: String,
    },
    /// `ResourceUri` is not an absolute URL.
    #[error("ResourceUri is not a valid URL")]
    InvalidResourceUri,
    /// `ResourceUri` points at a host that is not a configured Partner Center host.
    #[error("ResourceUri host `{0}` is not a Partner Center host")]
    ForeignHost(String),
    /// `ResourceUri` does not have the shape `…/referrals/{id}`.
    #[error("ResourceUri does not name a referral")]
    NotAReferral,
    /// The trailing segment is not a safe, GUID-like referral id.
    #[error("ResourceUri carries an invalid referral id")]
    InvalidReferralId,
}

impl WebhookCallback {
    /// The hosts Partner Center uses in `ResourceUri`: the documented
    /// `api.partnercenter.microsoft.com` and the referral API's `api.partner.microsoft.com`.
    pub const DEFAULT_RESOURCE_HOSTS: &'static [&'static str] = &[
        "api.partnercenter.microsoft.com",
        "api.partner.microsoft.com",
    ];

    /// Parses a callback body (the raw bytes, after their signature was verified).
    ///
    /// Total: any input yields a value or a [`CallbackError`] naming the member at fault.
    pub fn parse(body: &[u8]) -> Result<Self, CallbackError> {
        let map: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| CallbackError::NotAnObject(format!("{:?} error", e.classify())))?;
        Self::try_from(map)
    }

    /// The referral id named by `resource_uri`, without dereferencing it.
    ///
    /// `resource_uri` must be an absolute `http`/`https` URL without credentials, query or
    /// fragment, whose host is one of `allowed_hosts` (ASCII case-insensitive; pass
    /// [`DEFAULT_RESOURCE_HOSTS`](Self::DEFAULT_RESOURCE_HOSTS) in production, the emulator's
    /// host such as `127.0.0.1` in the sandbox), and whose path ends in `referrals/{id}` (one
    /// trailing `/` tolerated). The id must be 1–64 characters of `[A-Za-z0-9-]`, which covers
    /// GUIDs and leaves nothing that could change the meaning of a URL it is put into.
    ///
    /// ```
    /// use partner_center_client::webhook::callback::{CallbackError, WebhookCallback};
    /// # let body = br#"{"EventName":"referral-created","ResourceUri":"https://evil.example/engagements/v1/referrals/1","ResourceName":"referral","ResourceChangeUtcDate":"2024-01-01T00:00:00+00:00"}"#;
    /// let callback = WebhookCallback::parse(body)?;
    /// assert_eq!(
    ///     callback.referral_id(WebhookCallback::DEFAULT_RESOURCE_HOSTS),
    ///     Err(CallbackError::ForeignHost("evil.example".into()))
    /// );
    /// # Ok::<(), CallbackError>(())
    /// ```
    pub fn referral_id(&self, allowed_hosts: &[&str]) -> Result<String, CallbackError> {
        referral_id_from_uri(&self.resource_uri, allowed_hosts)
    }

    /// A key to deduplicate deliveries with: the lower-case hex SHA-256 of the raw body.
    ///
    /// Partner Center sends no event id; a retried delivery carries the same bytes, so equal
    /// bodies mean the same event. (Different events about the same referral have different
    /// `ResourceChangeUtcDate`s and so different keys; coalesce those per referral id.)
    #[cfg(feature = "webhook")]
    pub fn dedupe_key(&self, raw_body: &[u8]) -> String {
        body_sha256_hex(raw_body)
    }
}

/// The lower-case hex SHA-256 of `bytes` (aws-lc-rs). Used for dedupe keys, log lines and
/// certificate thumbprints.
#[cfg(feature = "webhook")]
pub fn body_sha256_hex(bytes: &[u8]) -> String {
    to_hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// Lower-case hex of `bytes`.
#[cfg(feature = "webhook")]
fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn referral_id_from_uri(uri: &str, allowed_hosts: &[&str]) -> Result<String, CallbackError> {
    let url = url::Url::parse(uri.trim()).map_err(|_| CallbackError::InvalidResourceUri)?;
    if !matches!(url.scheme(), "https" | "http") || url.cannot_be_a_base() {
        return Err(CallbackError::InvalidResourceUri);
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(CallbackError::InvalidResourceUri);
    }
    let host = url.host_str().ok_or(CallbackError::InvalidResourceUri)?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let allowed = allowed_hosts.iter().any(|h| {
        let h = h.trim().trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case(bare_host)
    });
    if !allowed {
        return Err(CallbackError::ForeignHost(truncate(host, 255)));
    }
    let mut segments: Vec<&str> = url
        .path_segments()
        .ok_or(CallbackError::NotAReferral)?
        .collect();
    if segments.last() == Some(&"") {
        segments.pop();
    }
    let (id, parent) = match segments.as_slice() {
        [.., parent, id] => (*id, *parent),
        _ => return Err(CallbackError::NotAReferral),
    };
    if !parent.eq_ignore_ascii_case("referrals") {
        return Err(CallbackError::NotAReferral);
    }
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(CallbackError::InvalidReferralId);
    }
    Ok(id.to_string())
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Takes the first present, non-null member among `names`.
fn take(map: &mut Map<String, Value>, names: [&str; 2]) -> Option<Value> {
    let mut found = None;
    for name in names {
        if let Some(v) = map.remove(name)
            && found.is_none()
            && !v.is_null()
        {
            found = Some(v);
        }
    }
    found
}

fn required_string(
    map: &mut Map<String, Value>,
    field: &'static str,
    camel: &str,
) -> Result<String, CallbackError> {
    match take(map, [field, camel]) {
        None => Err(CallbackError::MissingField(field)),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(CallbackError::InvalidField {
            field,
            reason: format!("expected a string, found {}", json_kind(&other)),
        }),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl TryFrom<Map<String, Value>> for WebhookCallback {
    type Error = CallbackError;

    fn try_from(mut map: Map<String, Value>) -> Result<Self, Self::Error> {
        let event_name = required_string(&mut map, "EventName", "eventName")?;
        if event_name.trim().is_empty() {
            return Err(CallbackError::InvalidField {
                field: "EventName",
                reason: "empty".into(),
            });
        }
        let resource_uri = required_string(&mut map, "ResourceUri", "resourceUri")?;
        let resource_name = required_string(&mut map, "ResourceName", "resourceName")?;
        let audit_uri = match take(&mut map, ["AuditUri", "auditUri"]) {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                return Err(CallbackError::InvalidField {
                    field: "AuditUri",
                    reason: format!("expected a string or null, found {}", json_kind(&other)),
                });
            }
        };
        let date = required_string(&mut map, "ResourceChangeUtcDate", "resourceChangeUtcDate")?;
        let resource_change_utc_date =
            parse_datetime(&date).map_err(|_| CallbackError::InvalidField {
                field: "ResourceChangeUtcDate",
                reason: "not an ISO 8601 date-time".into(),
            })?;
        Ok(WebhookCallback {
            event_name: CallbackEvent::from(event_name),
            resource_uri,
            resource_name,
            audit_uri,
            resource_change_utc_date,
            extra: map,
        })
    }
}

/// `2018-02-17T00:05:39.5485487+00:00`: seven fractional digits and an explicit `+00:00`.
fn serialize_change_date<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let ticks = (t.nanosecond() % 1_000_000_000) / 100;
    s.serialize_str(&format!(
        "{}.{ticks:07}+00:00",
        t.format("%Y-%m-%dT%H:%M:%S")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC_SAMPLE: &str = r#"{"EventName":"related-referral-updated","ResourceUri":"https://api.partnercenter.microsoft.com/engagements/v1/referrals/4111fffc-f9ee-4d53-bba6-569135228642","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2024-02-25T09:11:02.1034567+00:00"}"#;

    fn with_uri(uri: &str) -> WebhookCallback {
        let mut c = WebhookCallback::parse(DOC_SAMPLE.as_bytes()).unwrap();
        c.resource_uri = uri.into();
        c
    }

    #[test]
    fn parses_documented_sample() {
        let c = WebhookCallback::parse(DOC_SAMPLE.as_bytes()).unwrap();
        assert_eq!(c.event_name, CallbackEvent::RelatedReferralUpdated);
        assert_eq!(c.resource_name, "referral");
        assert_eq!(c.audit_uri, None);
        assert_eq!(c.resource_change_utc_date.nanosecond(), 103_456_700);
        assert!(c.extra.is_empty());
    }

    #[test]
    fn serializes_pascal_case_with_seven_digits_and_offset() {
        let c = WebhookCallback::parse(DOC_SAMPLE.as_bytes()).unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["ResourceChangeUtcDate"],
            "2024-02-25T09:11:02.1034567+00:00"
        );
        assert_eq!(v["EventName"], "related-referral-updated");
        assert!(v["AuditUri"].is_null());
        let back: WebhookCallback = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn accepts_camel_case_unknown_events_and_keeps_unknown_members() {
        let c = WebhookCallback::parse(
            br#"{"eventName":"invoice-ready","resourceUri":"https://x/y","resourceName":"invoice","auditUri":"https://a/b","resourceChangeUtcDate":"2024-02-25T09:11:02Z","New":1}"#,
        )
        .unwrap();
        assert_eq!(c.event_name, CallbackEvent::Other("invoice-ready".into()));
        assert_eq!(c.audit_uri.as_deref(), Some("https://a/b"));
        assert_eq!(c.extra["New"], 1);
        for (name, event) in [
            ("referral-created", CallbackEvent::ReferralCreated),
            ("referral-updated", CallbackEvent::ReferralUpdated),
            (
                "related-referral-created",
                CallbackEvent::RelatedReferralCreated,
            ),
            (
                "related-referral-updated",
                CallbackEvent::RelatedReferralUpdated,
            ),
            ("test-created", CallbackEvent::TestCreated),
        ] {
            assert_eq!(CallbackEvent::from(name), event);
        }
    }

    #[test]
    fn typed_errors_name_the_member() {
        let cases: &[(&[u8], CallbackError)] = &[
            (b"", CallbackError::NotAnObject("Eof error".into())),
            (b"[]", CallbackError::NotAnObject("Data error".into())),
            (b"{}", CallbackError::MissingField("EventName")),
            (
                br#"{"EventName":"referral-created"}"#,
                CallbackError::MissingField("ResourceUri"),
            ),
            (
                br#"{"EventName":"referral-created","ResourceUri":"u","ResourceName":"referral"}"#,
                CallbackError::MissingField("ResourceChangeUtcDate"),
            ),
            (
                br#"{"EventName":"referral-created","ResourceUri":"u","ResourceName":"referral","ResourceChangeUtcDate":"soon"}"#,
                CallbackError::InvalidField {
                    field: "ResourceChangeUtcDate",
                    reason: "not an ISO 8601 date-time".into(),
                },
            ),
            (
                br#"{"EventName":7}"#,
                CallbackError::InvalidField {
                    field: "EventName",
                    reason: "expected a string, found a number".into(),
                },
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(&WebhookCallback::parse(body).unwrap_err(), expected);
        }
    }

    #[test]
    fn referral_id_from_documented_shapes() {
        let hosts = WebhookCallback::DEFAULT_RESOURCE_HOSTS;
        for uri in [
            "https://api.partnercenter.microsoft.com/engagements/v1/referrals/4111fffc-f9ee-4d53-bba6-569135228642",
            "https://api.partner.microsoft.com/v1.0/engagements/referrals/4111fffc-f9ee-4d53-bba6-569135228642",
            "https://API.Partner.Microsoft.com/v1.0/engagements/referrals/4111fffc-f9ee-4d53-bba6-569135228642/",
        ] {
            assert_eq!(
                with_uri(uri).referral_id(hosts).unwrap(),
                "4111fffc-f9ee-4d53-bba6-569135228642",
                "{uri}"
            );
        }
        assert_eq!(
            with_uri("http://127.0.0.1:8081/v1.0/engagements/referrals/abc-1")
                .referral_id(&["127.0.0.1"])
                .unwrap(),
            "abc-1"
        );
    }

    #[test]
    fn referral_id_refuses_everything_else() {
        let hosts = WebhookCallback::DEFAULT_RESOURCE_HOSTS;
        let cases = [
            (
                "https://evil.example/engagements/v1/referrals/1",
                CallbackError::ForeignHost("evil.example".into()),
            ),
            (
                "https://api.partner.microsoft.com.evil.example/v1.0/engagements/referrals/1",
                CallbackError::ForeignHost("api.partner.microsoft.com.evil.example".into()),
            ),
            (
                "https://user:pw@api.partner.microsoft.com/v1.0/engagements/referrals/1",
                CallbackError::InvalidResourceUri,
            ),
            (
                "https://api.partner.microsoft.com/v1.0/engagements/referrals/1?x=1",
                CallbackError::InvalidResourceUri,
            ),
            ("not a url", CallbackError::InvalidResourceUri),
            (
                "ftp://api.partner.microsoft.com/referrals/1",
                CallbackError::InvalidResourceUri,
            ),
            (
                "https://api.partnercenter.microsoft.com/webhooks/v1/registration/validationEvents/1",
                CallbackError::NotAReferral,
            ),
            (
                "https://api.partner.microsoft.com/",
                CallbackError::NotAReferral,
            ),
            (
                "https://api.partner.microsoft.com/v1.0/engagements/referrals/a%2Fb",
                CallbackError::InvalidReferralId,
            ),
            (
                "https://api.partner.microsoft.com/v1.0/engagements/referrals/..",
                CallbackError::NotAReferral,
            ),
        ];
        for (uri, expected) in cases {
            assert_eq!(with_uri(uri).referral_id(hosts), Err(expected), "{uri}");
        }
    }

    #[cfg(feature = "webhook")]
    #[test]
    fn dedupe_key_is_sha256_hex_of_the_raw_body() {
        let c = WebhookCallback::parse(DOC_SAMPLE.as_bytes()).unwrap();
        assert_eq!(
            c.dedupe_key(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
