//! The compact column forms of migration 0006: what the per-link tables (`links`, `audit`,
//! `crm_children`) store for ids, times, eTags and names, and how each reads back.
//!
//! Every form is chosen by the value alone and is exact: a value with a compact form is written
//! in it, any other keeps its text, and reading either gives the string that was written. So an
//! equality on a column (a look-up, a UNIQUE constraint) holds exactly when it holds on the
//! strings, as long as the bound value is packed by the same function; the migration's SQL
//! applies the same rules to the rows it converts.

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{SqliteRow, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Database, Decode, Encode, Row, Sqlite, Type, TypeInfo, ValueRef};

use crate::store::StoreError;

/// Names stored as their position. Append only: stored rows refer to these by position
/// (migration 0006 spells the same list in SQL).
pub(super) const NAMES: &[&str] = &[
    // CRM entities
    "lead",
    "opportunity",
    "cosell_opportunitysolution",
    "account",
    "contact",
    // directions (`Direction::as_str`)
    "to_crm",
    "to_partner_center",
    // audit outcomes (`AuditOutcome::as_str`)
    "created",
    "updated",
    "echo",
    "merged",
    "skipped",
    "failed",
    "dry_run",
];

/// A value bound to an untyped column: whichever storage class its form takes.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Packed {
    /// No compact form: the text as given.
    Text(String),
    /// 16 bytes of a UUID.
    Blob(Vec<u8>),
    /// A time's microseconds, a name's position, an eTag's number.
    Int(i64),
}

impl Type<Sqlite> for Packed {
    fn type_info() -> SqliteTypeInfo {
        <Vec<u8> as Type<Sqlite>>::type_info()
    }

    fn compatible(_: &SqliteTypeInfo) -> bool {
        true
    }
}

impl Encode<'_, Sqlite> for Packed {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        match self {
            Packed::Text(s) => <String as Encode<Sqlite>>::encode_by_ref(s, buf),
            Packed::Blob(b) => <Vec<u8> as Encode<Sqlite>>::encode_by_ref(b, buf),
            Packed::Int(n) => <i64 as Encode<Sqlite>>::encode_by_ref(n, buf),
        }
    }
}

/// The 16 bytes of `s` when it is a UUID in its canonical text (lowercase, hyphenated), the
/// form that reads back as exactly `s`.
fn canonical_uuid(s: &str) -> Option<[u8; 16]> {
    let u = uuid::Uuid::try_parse(s).ok()?;
    (s.len() == 36 && u.hyphenated().to_string() == s).then(|| *u.as_bytes())
}

/// An id (referral, engagement, CRM record): a canonical UUID as its 16 bytes.
pub(super) fn id(s: &str) -> Packed {
    match canonical_uuid(s) {
        Some(bytes) => Packed::Blob(bytes.to_vec()),
        None => Packed::Text(s.to_string()),
    }
}

/// A Partner Center eTag: `"<canonical uuid>"` as the UUID's 16 bytes.
pub(super) fn pc_etag(s: &str) -> Packed {
    match s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .and_then(canonical_uuid)
    {
        Some(bytes) => Packed::Blob(bytes.to_vec()),
        None => Packed::Text(s.to_string()),
    }
}

/// A CRM eTag: `W/"<n>"` (digits, no leading zero, at most 18 of them) as n.
pub(super) fn crm_etag(s: &str) -> Packed {
    let number = s
        .strip_prefix("W/\"")
        .and_then(|s| s.strip_suffix('"'))
        .filter(|d| {
            (1..=18).contains(&d.len())
                && !d.starts_with('0')
                && d.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|d| d.parse::<i64>().ok());
    match number {
        Some(n) => Packed::Int(n),
        None => Packed::Text(s.to_string()),
    }
}

/// The lease key prefixes with a compact form, by their first byte's value (1, 2).
const LEASE_PREFIXES: &[&str] = &["referral:", "crm:"];

/// A lease key: `referral:<canonical uuid>` as the byte 1 and the UUID's 16 bytes, `crm:<…>` as
/// 2 and the 16 bytes. Keys are only compared, never read back.
pub(super) fn lease_key(s: &str) -> Packed {
    for (i, prefix) in LEASE_PREFIXES.iter().enumerate() {
        if let Some(bytes) = s.strip_prefix(prefix).and_then(canonical_uuid) {
            let mut out = Vec::with_capacity(17);
            out.push(i as u8 + 1);
            out.extend_from_slice(&bytes);
            return Packed::Blob(out);
        }
    }
    Packed::Text(s.to_string())
}

/// A name (entity, direction, outcome): one of [`NAMES`] as its position.
pub(super) fn name(s: &str) -> Packed {
    match NAMES.iter().position(|n| *n == s) {
        Some(i) => Packed::Int(i as i64),
        None => Packed::Text(s.to_string()),
    }
}

/// A time as microseconds since the Unix epoch (the precision the RFC 3339 text kept).
pub(super) fn time(t: &DateTime<Utc>) -> Packed {
    Packed::Int(t.timestamp_micros())
}

fn corrupt(what: &'static str, column: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: format!("{column}: {detail}"),
    }
}

/// A column's value as stored (`None` for NULL).
fn stored<'r>(
    row: &'r SqliteRow,
    what: &'static str,
    column: &str,
) -> Result<Option<SqliteValueRef<'r>>, StoreError> {
    let raw = row
        .try_get_raw(column)
        .map_err(|e| corrupt(what, column, e))?;
    Ok((!raw.is_null()).then_some(raw))
}

/// Reads an optional column: NULL is `None`, any other value goes to `decode` by its storage
/// class (each reader below says what each class means for its column).
fn read_stored<T>(
    row: &SqliteRow,
    what: &'static str,
    column: &str,
    decode: impl FnOnce(Class) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    match stored(row, what, column)? {
        Some(raw) => decode(class(what, column, raw)?).map(Some),
        None => Ok(None),
    }
}

/// The storage class of a stored value.
enum Class {
    Text(String),
    Blob(Vec<u8>),
    Int(i64),
}

fn class(what: &'static str, column: &str, raw: SqliteValueRef<'_>) -> Result<Class, StoreError> {
    let ty = raw.type_info().name().to_string();
    let bad = |e: BoxDynError| corrupt(what, column, e);
    Ok(match ty.as_str() {
        "TEXT" => Class::Text(<String as Decode<Sqlite>>::decode(raw).map_err(bad)?),
        "BLOB" => Class::Blob(<Vec<u8> as Decode<Sqlite>>::decode(raw).map_err(bad)?),
        "INTEGER" => Class::Int(<i64 as Decode<Sqlite>>::decode(raw).map_err(bad)?),
        other => return Err(corrupt(what, column, format!("a {other} value"))),
    })
}

fn uuid_text(what: &'static str, column: &str, bytes: &[u8]) -> Result<String, StoreError> {
    uuid::Uuid::from_slice(bytes)
        .map(|u| u.hyphenated().to_string())
        .map_err(|e| corrupt(what, column, e))
}

/// Reads an optional id column written by [`id`] (or as text before migration 0006).
pub(super) fn read_id(
    row: &SqliteRow,
    what: &'static str,
    column: &str,
) -> Result<Option<String>, StoreError> {
    read_stored(row, what, column, |value| match value {
        Class::Text(s) => Ok(s),
        Class::Blob(b) => uuid_text(what, column, &b),
        Class::Int(n) => Err(corrupt(what, column, format!("integer {n} for an id"))),
    })
}

/// Reads an optional Partner Center eTag written by [`pc_etag`].
pub(super) fn read_pc_etag(
    row: &SqliteRow,
    what: &'static str,
    column: &str,
) -> Result<Option<String>, StoreError> {
    read_stored(row, what, column, |value| match value {
        Class::Text(s) => Ok(s),
        Class::Blob(b) => Ok(format!("\"{}\"", uuid_text(what, column, &b)?)),
        Class::Int(n) => Err(corrupt(what, column, format!("integer {n} for an eTag"))),
    })
}

/// Reads an optional CRM eTag written by [`crm_etag`].
pub(super) fn read_crm_etag(
    row: &SqliteRow,
    what: &'static str,
    column: &str,
) -> Result<Option<String>, StoreError> {
    read_stored(row, what, column, |value| match value {
        Class::Text(s) => Ok(s),
        Class::Int(n) => Ok(format!("W/\"{n}\"")),
        Class::Blob(_) => Err(corrupt(what, column, "bytes for a CRM eTag")),
    })
}

/// Reads an optional name written by [`name`].
pub(super) fn read_name(
    row: &SqliteRow,
    what: &'static str,
    column: &str,
) -> Result<Option<String>, StoreError> {
    read_stored(row, what, column, |value| match value {
        Class::Text(s) => Ok(s),
        Class::Int(n) => usize::try_from(n)
            .ok()
            .and_then(|i| NAMES.get(i))
            .map(|s| (*s).to_string())
            .ok_or_else(|| corrupt(what, column, format!("unknown name {n}"))),
        Class::Blob(_) => Err(corrupt(what, column, "bytes for a name")),
    })
}

/// Reads an optional time written by [`time`] (or as RFC 3339 text before migration 0006).
pub(super) fn read_time(
    row: &SqliteRow,
    what: &'static str,
    column: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    read_stored(row, what, column, |value| match value {
        Class::Int(n) => DateTime::from_timestamp_micros(n)
            .ok_or_else(|| corrupt(what, column, format!("time {n} out of range"))),
        Class::Text(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| corrupt(what, column, format!("timestamp `{s}`: {e}"))),
        Class::Blob(_) => Err(corrupt(what, column, "bytes for a time")),
    })
}

/// A required column: `None` is a damaged row.
pub(super) fn required<T>(
    what: &'static str,
    column: &str,
    value: Option<T>,
) -> Result<T, StoreError> {
    value.ok_or_else(|| corrupt(what, column, "missing"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_canonical_values_take_a_compact_form() {
        let uuid = "0e5a4f1c-2b3d-4e5f-8a9b-0c1d2e3f4a5b";
        assert!(matches!(id(uuid), Packed::Blob(b) if b.len() == 16));
        for other in [
            "0E5A4F1C-2B3D-4E5F-8A9B-0C1D2E3F4A5B",
            "0e5a4f1c2b3d4e5f8a9b0c1d2e3f4a5b",
            "{0e5a4f1c-2b3d-4e5f-8a9b-0c1d2e3f4a5b}",
            "urn:uuid:0e5a4f1c-2b3d-4e5f-8a9b-0c1d2e3f4a5b",
            "r1",
            "",
        ] {
            assert_eq!(id(other), Packed::Text(other.into()), "{other}");
        }
        assert!(matches!(pc_etag(&format!("\"{uuid}\"")), Packed::Blob(_)));
        assert_eq!(pc_etag(uuid), Packed::Text(uuid.into()));
        assert_eq!(crm_etag("W/\"1000015\""), Packed::Int(1_000_015));
        for other in [
            "W/\"0\"",
            "W/\"01\"",
            "W/\"\"",
            "W/\"1234567890123456789\"",
            "W/\"12a\"",
            "\"12\"",
            "W/\"-1\"",
        ] {
            assert_eq!(crm_etag(other), Packed::Text(other.into()), "{other}");
        }
        assert!(
            matches!(lease_key(&format!("crm:{uuid}")), Packed::Blob(b) if b.len() == 17 && b[0] == 2)
        );
        assert!(matches!(lease_key(&format!("referral:{uuid}")), Packed::Blob(b) if b[0] == 1));
        assert_eq!(
            lease_key("pass:reconcile"),
            Packed::Text("pass:reconcile".into())
        );
        assert_eq!(lease_key(uuid), Packed::Text(uuid.into()));
        assert_eq!(name("opportunity"), Packed::Int(1));
        assert_eq!(name("Opportunity"), Packed::Text("Opportunity".into()));
    }
}
