//! Serde helpers for the service's wire quirks: money as a JSON number that may arrive as a
//! string, and .NET-style timestamps (7 fractional digits, sometimes without an offset).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Timelike, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// `Option<Decimal>` written as a JSON number (integers stay integers) and read from a number,
/// a numeric string (`"10000"`), or null.
pub(crate) mod decimal_opt {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Decimal>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            None => serializer.serialize_none(),
            Some(d) => serialize_decimal(d, serializer),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Decimal>, D::Error> {
        deserializer.deserialize_any(DecimalVisitor)
    }
}

fn serialize_decimal<S: Serializer>(d: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
    let n = d.normalize();
    if n.scale() == 0
        && let Some(i) = n.to_i64()
    {
        return serializer.serialize_i64(i);
    }
    match n.to_f64() {
        Some(f) => serializer.serialize_f64(f),
        None => Err(serde::ser::Error::custom(format!(
            "decimal {d} has no JSON number form"
        ))),
    }
}

struct DecimalVisitor;

impl<'de> Visitor<'de> for DecimalVisitor {
    type Value = Option<Decimal>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decimal number, a numeric string or null")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Decimal::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Decimal::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // `Display` for f64 prints the shortest string that round-trips, so 0.1 stays 0.1.
        parse_decimal(&v.to_string()).map(Some).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        parse_decimal(v).map(Some).map_err(E::custom)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(DecimalVisitor)
    }
}

fn parse_decimal(s: &str) -> Result<Decimal, String> {
    Decimal::from_str(s)
        .or_else(|_| Decimal::from_scientific(s))
        .map_err(|_| format!("`{s}` is not a decimal number"))
}

/// `Option<DateTime<Utc>>` read from RFC 3339 (any number of fractional digits, any offset), from a
/// timestamp without offset (taken as UTC), or null; written the way the service writes it:
/// `Z`, and 7 fractional digits when there are any (9 when the value needs them).
pub(crate) mod datetime_opt {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            None => serializer.serialize_none(),
            Some(t) => serializer.serialize_str(&format_datetime(t)),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        deserializer.deserialize_option(OptionalDateTime)
    }
}

/// Formats a timestamp like .NET's round-trip format: `2024-02-23T02:05:23.2931817Z`.
pub(crate) fn format_datetime(t: &DateTime<Utc>) -> String {
    let nanos = t.nanosecond() % 1_000_000_000;
    if nanos == 0 {
        t.to_rfc3339_opts(SecondsFormat::Secs, true)
    } else if nanos.is_multiple_of(100) {
        format!("{}.{:07}Z", t.format("%Y-%m-%dT%H:%M:%S"), nanos / 100)
    } else {
        t.to_rfc3339_opts(SecondsFormat::Nanos, true)
    }
}

/// Parses the timestamp shapes the service sends.
pub(crate) fn parse_datetime(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    Err(format!("`{s}` is not an ISO 8601 date-time"))
}

struct OptionalDateTime;

impl<'de> Visitor<'de> for OptionalDateTime {
    type Value = Option<DateTime<Utc>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an ISO 8601 date-time string or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if v.trim().is_empty() {
            return Ok(None);
        }
        parse_datetime(v).map(Some).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct W {
        #[serde(default, with = "decimal_opt", skip_serializing_if = "Option::is_none")]
        d: Option<Decimal>,
        #[serde(
            default,
            with = "datetime_opt",
            skip_serializing_if = "Option::is_none"
        )]
        t: Option<DateTime<Utc>>,
    }

    #[test]
    fn decimals_from_numbers_and_strings() {
        for (json, expect) in [
            (r#"{"d":50000}"#, "50000"),
            (r#"{"d":"10000"}"#, "10000"),
            (r#"{"d":" 12.5 "}"#, "12.5"),
            (r#"{"d":0.1}"#, "0.1"),
            (r#"{"d":-3}"#, "-3"),
        ] {
            let w: W = serde_json::from_str(json).unwrap();
            assert_eq!(w.d.unwrap().to_string(), expect, "{json}");
        }
        let w: W = serde_json::from_str(r#"{"d":null}"#).unwrap();
        assert_eq!(w.d, None);
        assert!(serde_json::from_str::<W>(r#"{"d":"ten"}"#).is_err());
        assert!(serde_json::from_str::<W>(r#"{"d":true}"#).is_err());
    }

    #[test]
    fn decimals_are_written_as_numbers() {
        let w = W {
            d: Some(Decimal::new(5_000_000, 2)),
            t: None,
        };
        assert_eq!(serde_json::to_string(&w).unwrap(), r#"{"d":50000}"#);
        let w = W {
            d: Some(Decimal::new(1234567, 2)),
            t: None,
        };
        assert_eq!(serde_json::to_string(&w).unwrap(), r#"{"d":12345.67}"#);
    }

    #[test]
    fn timestamps_keep_seven_digits() {
        for s in [
            "2024-02-23T02:05:23.2931817Z",
            "2024-11-14T00:00:00Z",
            "2024-11-14T00:00:00.123456789Z",
        ] {
            let t = parse_datetime(s).unwrap();
            assert_eq!(format_datetime(&t), s);
        }
        let t = parse_datetime("2018-02-17T00:05:39.5485487+00:00").unwrap();
        assert_eq!(format_datetime(&t), "2018-02-17T00:05:39.5485487Z");
        let t = parse_datetime("2017-12-08T21:39:48.2386997").unwrap();
        assert_eq!(format_datetime(&t), "2017-12-08T21:39:48.2386997Z");
        assert!(parse_datetime("yesterday").is_err());
        let w: W = serde_json::from_str(r#"{"t":null}"#).unwrap();
        assert_eq!(w.t, None);
    }
}

/// `Option<u64>` read from a number, a numeric string or null; written as a number.
pub(crate) mod u64_opt {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_u64(*n),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match decimal_opt::deserialize(d)? {
            None => Ok(None),
            Some(n) if n.fract().is_zero() => n
                .to_u64()
                .map(Some)
                .ok_or_else(|| de::Error::custom(format!("{n} is not a count"))),
            Some(n) => Err(de::Error::custom(format!("{n} is not a count"))),
        }
    }
}

/// A decimal as a JSON number value (integers stay integers).
pub(crate) fn decimal_to_json(d: &Decimal) -> serde_json::Value {
    serialize_decimal(d, serde_json::value::Serializer).unwrap_or(serde_json::Value::Null)
}

/// A nested id read tolerantly: real list payloads carry `"id": null` and `"id": ""` in nested
/// items (reference "Corrections"); both read as the empty string instead of failing the page.
pub(crate) mod lenient_id {
    use serde::Deserialize;

    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s,
            // A number or other scalar where a string id was expected: keep its JSON text.
            other => other.to_string(),
        })
    }
}

/// An `Option<Vec<T>>` that also reads an object (real payloads send `"ids": {}`) as no items
/// and `null` as absent. Elements are decoded as usual, so a malformed one still names its path.
pub(crate) mod lenient_vec {
    use std::marker::PhantomData;

    use serde::Serialize;
    use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess};

    use super::*;

    pub(crate) fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Vec<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Option<Vec<T>>, D::Error> {
        d.deserialize_any(ListVisitor(PhantomData))
    }

    struct ListVisitor<T>(PhantomData<T>);

    impl<'de, T: DeserializeOwned> Visitor<'de> for ListVisitor<T> {
        type Value = Option<Vec<T>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array, an empty object or null")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
            while let Some(item) = seq.next_element::<T>()? {
                out.push(item);
            }
            Ok(Some(out))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            // `{}` (seen for `customerProfile.ids`): no items; members of a non-empty object are
            // not list items either, so they are skipped.
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Some(Vec::new()))
        }
    }
}

/// An observed-only string member (`quality`, `registrationStatus`, …) whose type Microsoft does
/// not document: a string is kept, `null` is absent, any other JSON value keeps its JSON text.
pub(crate) mod lenient_string {
    use serde::{Deserialize, Serialize};

    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s),
            other => Some(other.to_string()),
        })
    }
}

/// An observed-only flag (`favorite`, `isSpam`): a boolean or a `"true"`/`"false"` string is
/// read; any other JSON value reads as absent rather than failing the referral.
pub(crate) mod lenient_bool {
    use serde::{Deserialize, Serialize};

    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &Option<bool>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        Ok(match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(b) => Some(b),
            serde_json::Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
            serde_json::Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        })
    }
}
