//! A compact, exact binary form of the JSON snapshots the SQL stores keep (a link's target and
//! per-side snapshots, an intent's target).
//!
//! A mapped snapshot spells every field as `{"name":{"kind":"text","value":"…"}}`: most of its
//! bytes are the same keys on every row. This form writes each JSON value as a tag byte and its
//! payload, and a string found in [`WORDS`] (field names, value kinds, statuses) as one byte, so a
//! typical referral's snapshot takes about 40 % of its JSON text. It is a plain encoding of a
//! `serde_json::Value`, not of the snapshot's schema: any JSON round-trips exactly, so a field
//! added to the map later is stored correctly, only less compactly.
//!
//! The first byte is the format (`FORMAT`); JSON text never starts with it, so a column may hold
//! rows written before this form (JSON text) beside compact ones, and both read back.

use serde_json::{Map, Number, Value};

/// The first byte of a compact snapshot (format 1). JSON text starts with `{`, `[`, `"`, a
/// digit, `-`, a letter or white space, never with a control byte.
pub(super) const FORMAT: u8 = 0x01;

/// Strings written as one byte. Append only: a stored snapshot refers to these by position.
const WORDS: &[&str] = &[
    // value kinds (`FieldValue`'s tag)
    "kind",
    "value",
    "text",
    "decimal",
    "date",
    "bool",
    "status",
    "contacts",
    "solutions",
    // field names (`FieldId`)
    "name",
    "deal_value",
    "currency",
    "close_date",
    "notes",
    "help_required",
    "visible_to_microsoft",
    "microsoft_crm_id",
    "customer_name",
    "address_line1",
    "address_line2",
    "city",
    "state",
    "postal_code",
    "country",
    // contact and solution members, the state's members
    "first_name",
    "last_name",
    "email",
    "phone",
    "title",
    "id",
    "solution_type",
    "publisher",
    "substatus",
    // referral statuses and substatuses
    "None",
    "New",
    "Active",
    "Closed",
    "Pending",
    "Received",
    "Accepted",
    "Won",
    "Lost",
    "Declined",
    "Expired",
];

// Tags. A tag at or above `WORD` is the word `tag - WORD`.
const NULL: u8 = 0x00;
const FALSE: u8 = 0x02;
const TRUE: u8 = 0x03;
const UINT: u8 = 0x04;
const NEG_INT: u8 = 0x05;
const FLOAT: u8 = 0x06;
const STRING: u8 = 0x07;
const ARRAY: u8 = 0x08;
const OBJECT: u8 = 0x09;
/// `{"kind": <string>, "value": <any>}`, the shape of every mapped field: the kind, then the
/// value, with no keys.
const KINDED: u8 = 0x0a;
/// `{"kind": "text" | "decimal" | "date", "value": <string>}` (the most common fields, their
/// value not a word): the tag names the kind, then the string's length and bytes. Added after
/// the first rows were written in this format; those never hold these tags, so they still read.
const KINDED_LITERAL: u8 = 0x0b;
/// The kinds of [`KINDED_LITERAL`]'s tags, in tag order. Append only (up to `WORD`).
const LITERAL_KINDS: &[&str] = &["text", "decimal", "date"];
const WORD: u8 = 0x20;

// Checked at compile time: every word has a one-byte tag, and the literal kinds' tags end
// before the words'.
const _: () = assert!(WORDS.len() <= (u8::MAX - WORD) as usize + 1);
const _: () = assert!(KINDED_LITERAL as usize + LITERAL_KINDS.len() <= WORD as usize);

/// `value` in the compact form.
pub(super) fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.push(FORMAT);
    write(&mut out, value);
    out
}

/// Reads a snapshot column: the compact form, or JSON text written before it.
pub(super) fn decode(bytes: &[u8]) -> Result<Value, String> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => {
            let mut reader = Reader { rest };
            let value = reader.value(0)?;
            if reader.rest.is_empty() {
                Ok(value)
            } else {
                Err(format!(
                    "{} bytes after the compact snapshot",
                    reader.rest.len()
                ))
            }
        }
        _ => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    match WORDS.iter().position(|w| *w == s) {
        Some(i) => out.push(WORD + i as u8),
        None => {
            out.push(STRING);
            write_literal(out, s);
        }
    }
}

/// A string's length and bytes.
fn write_literal(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The [`KINDED_LITERAL`] tag for a field of `kind` holding `value`, when it has one: a word
/// is one byte already, so it keeps the general form.
fn literal_tag<'a>(kind: &str, value: &'a Value) -> Option<(u8, &'a str)> {
    let i = LITERAL_KINDS.iter().position(|k| *k == kind)?;
    let s = value.as_str().filter(|s| !WORDS.contains(s))?;
    Some((KINDED_LITERAL + i as u8, s))
}

fn write(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.push(UINT);
                varint(out, u);
            } else if let Some(i) = n.as_i64() {
                // Negative (a non-negative one is a u64): -1 is stored as 0.
                out.push(NEG_INT);
                varint(out, !(i as u64));
            } else {
                out.push(FLOAT);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(ARRAY);
            varint(out, items.len() as u64);
            for item in items {
                write(out, item);
            }
        }
        Value::Object(map) => match kinded(map) {
            Some((kind, inner)) => match literal_tag(kind, inner) {
                Some((tag, s)) => {
                    out.push(tag);
                    write_literal(out, s);
                }
                None => {
                    out.push(KINDED);
                    write_str(out, kind);
                    write(out, inner);
                }
            },
            None => {
                out.push(OBJECT);
                varint(out, map.len() as u64);
                for (key, item) in map {
                    write_str(out, key);
                    write(out, item);
                }
            }
        },
    }
}

/// The kind and value of a `{"kind": <string>, "value": …}` object with no other member.
fn kinded(map: &Map<String, Value>) -> Option<(&str, &Value)> {
    if map.len() != 2 {
        return None;
    }
    Some((map.get("kind")?.as_str()?, map.get("value")?))
}

/// Deeper than any snapshot nests; bounds the recursion on a damaged row.
const MAX_DEPTH: usize = 64;

struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| "compact snapshot ends early".to_string())?;
        self.rest = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("compact snapshot has an overlong number".into())
    }

    fn take(&mut self, len: u64) -> Result<&[u8], String> {
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= self.rest.len())
            .ok_or_else(|| "compact snapshot ends inside a string".to_string())?;
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    /// A string: a word or a literal.
    fn string(&mut self) -> Result<String, String> {
        match self.byte()? {
            STRING => self.literal(),
            tag if tag >= WORD => word(tag),
            tag => Err(format!(
                "compact snapshot has tag {tag:#04x} where a string belongs"
            )),
        }
    }

    fn literal(&mut self) -> Result<String, String> {
        let len = self.varint()?;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|e| format!("compact snapshot string: {e}"))
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("compact snapshot nests too deep".into());
        }
        Ok(match self.byte()? {
            NULL => Value::Null,
            FALSE => Value::Bool(false),
            TRUE => Value::Bool(true),
            UINT => Value::Number(self.varint()?.into()),
            NEG_INT => {
                let n = self.varint()?;
                if n > i64::MAX as u64 {
                    return Err("compact snapshot holds an out-of-range integer".into());
                }
                Value::Number((!n as i64).into())
            }
            FLOAT => {
                let bytes: [u8; 8] = self
                    .take(8)?
                    .try_into()
                    .map_err(|_| "compact snapshot ends inside a number".to_string())?;
                Value::Number(
                    Number::from_f64(f64::from_le_bytes(bytes))
                        .ok_or_else(|| "compact snapshot holds a non-finite number".to_string())?,
                )
            }
            STRING => Value::String(self.literal()?),
            ARRAY => {
                let n = self.varint()?;
                // Each item takes a byte at least: a damaged count cannot reserve more.
                let mut items = Vec::with_capacity(n.min(self.rest.len() as u64) as usize);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            OBJECT => {
                let n = self.varint()?;
                let mut map = Map::new();
                for _ in 0..n {
                    let key = self.string()?;
                    map.insert(key, self.value(depth + 1)?);
                }
                Value::Object(map)
            }
            KINDED => {
                let kind = self.string()?;
                let inner = self.value(depth + 1)?;
                kinded_object(kind, inner)
            }
            tag if (KINDED_LITERAL..KINDED_LITERAL + LITERAL_KINDS.len() as u8).contains(&tag) => {
                let kind = LITERAL_KINDS[usize::from(tag - KINDED_LITERAL)];
                kinded_object(kind.to_string(), Value::String(self.literal()?))
            }
            tag if tag >= WORD => Value::String(word(tag)?),
            tag => return Err(format!("compact snapshot has unknown tag {tag:#04x}")),
        })
    }
}

fn kinded_object(kind: String, value: Value) -> Value {
    let mut map = Map::new();
    map.insert("kind".into(), Value::String(kind));
    map.insert("value".into(), value);
    Value::Object(map)
}

fn word(tag: u8) -> Result<String, String> {
    WORDS
        .get(usize::from(tag - WORD))
        .map(|w| (*w).to_string())
        .ok_or_else(|| format!("compact snapshot names unknown word {tag:#04x}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn referral() -> Value {
        json!({
            "address_line1": {"kind": "text", "value": "364 Market Street"},
            "city": {"kind": "text", "value": "Singapore"},
            "close_date": {"kind": "date", "value": "2027-03-28"},
            "contacts": {"kind": "contacts", "value": [{
                "email": "aisha.tanaka@wingtiptoysltd.example", "first_name": "Aisha",
                "last_name": "Tanaka", "phone": "5710230783"}]},
            "country": {"kind": "text", "value": "SG"},
            "currency": {"kind": "text", "value": "SGD"},
            "customer_name": {"kind": "text", "value": "Wingtip Toys Ltd"},
            "deal_value": {"kind": "decimal", "value": "674500"},
            "name": {"kind": "text", "value": "Referral 42"},
            "notes": {"kind": "text", "value": "Wingtip Toys Ltd is evaluating Supply Chain Suite."},
            "postal_code": {"kind": "text", "value": "018956"},
            "solutions": {"kind": "solutions", "value": [{"id": "SOL-37348-DSS",
                "name": "Fabrikam Supply Chain Suite", "publisher": "Fabrikam Sandbox Partner",
                "solution_type": "Name"}]},
            "status": {"kind": "status", "value": {"status": "New", "substatus": "Pending"}},
            "visible_to_microsoft": {"kind": "bool", "value": false}
        })
    }

    #[test]
    fn a_referral_snapshot_round_trips_in_under_half_its_json() {
        let v = referral();
        let bytes = encode(&v);
        assert_eq!(decode(&bytes).unwrap(), v);
        let text = serde_json::to_string(&v).unwrap();
        assert!(
            bytes.len() * 2 < text.len(),
            "{} vs {}",
            bytes.len(),
            text.len()
        );
    }

    #[test]
    fn json_text_written_before_the_compact_form_still_reads() {
        let v = referral();
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(decode(text.as_bytes()).unwrap(), v);
    }

    #[test]
    fn shapes_that_only_look_kinded_keep_their_members() {
        for v in [
            json!({"kind": 1, "value": 2}),
            json!({"kind": "text"}),
            json!({"kind": "text", "value": "x", "extra": true}),
            json!({"value": "x", "other": "text"}),
            json!({}),
            json!([]),
            json!(""),
            json!(null),
            json!(-1),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(0.1),
            json!(-2.5e300),
        ] {
            assert_eq!(decode(&encode(&v)).unwrap(), v, "{v}");
        }
    }

    #[test]
    fn damaged_bytes_are_an_error_not_a_panic() {
        let bytes = encode(&referral());
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(&[FORMAT, 0x1f]).is_err());
        assert!(decode(&[FORMAT, 0xff]).is_err(), "a word past the table");
        assert!(decode(&[FORMAT, ARRAY, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        let mut trailing = encode(&json!(1));
        trailing.push(NULL);
        assert!(decode(&trailing).is_err());
    }

    /// A small deterministic generator (xorshift), so the round trip is checked on many
    /// shapes without a property-testing dependency.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn string(&mut self) -> String {
            match self.below(3) {
                0 => WORDS[self.below(WORDS.len() as u64) as usize].to_string(),
                1 => (0..self.below(12))
                    .map(|_| char::from(b'a' + self.below(26) as u8))
                    .collect(),
                _ => (0..self.below(8))
                    .filter_map(|_| char::from_u32(self.below(0x11_0000) as u32))
                    .collect(),
            }
        }

        fn json(&mut self, depth: u32) -> Value {
            match self.below(if depth == 0 { 7 } else { 10 }) {
                0 => Value::Null,
                1 => Value::Bool(self.below(2) == 1),
                2 => json!(self.next() as i64),
                3 => json!(self.next()),
                4 => json!((self.next() as i64) as f64 / 1e6),
                5 | 6 => Value::String(self.string()),
                7 => Value::Array((0..self.below(5)).map(|_| self.json(depth - 1)).collect()),
                8 => {
                    let mut map = Map::new();
                    map.insert("kind".into(), Value::String(self.string()));
                    map.insert("value".into(), self.json(depth - 1));
                    Value::Object(map)
                }
                _ => Value::Object(
                    (0..self.below(5))
                        .map(|_| (self.string(), self.json(depth - 1)))
                        .collect(),
                ),
            }
        }
    }

    #[test]
    fn any_json_round_trips_exactly() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let v = g.json(4);
            assert_eq!(decode(&encode(&v)).unwrap(), v, "{v}");
        }
    }
}
