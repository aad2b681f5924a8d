//! Request plumbing shared by plain requests and `$batch` parts: the operation request and
//! response types, `Prefer` parsing, path segmentation, key segments, percent-coding.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method, StatusCode};
use bytes::Bytes;
use serde_json::Value;

use super::error::{DvError, DvResult};
use super::filter::{Literal, unescape_string_literal};

/// One operation: a plain request or a `$batch` part, relative to the API root.
#[derive(Debug, Clone)]
pub(crate) struct OpRequest {
    pub(crate) method: Method,
    /// The path after `/api/data/v9.x/`, still percent-encoded.
    pub(crate) path: String,
    /// The raw query string (no `?`).
    pub(crate) query: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// A response body.
#[derive(Debug, Clone)]
pub(crate) enum OpBody {
    Json(Value),
    Text(String),
}

/// The answer to one operation.
#[derive(Debug, Clone)]
pub(crate) struct OpResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Option<OpBody>,
}

impl OpResponse {
    pub(crate) fn new(status: StatusCode) -> Self {
        OpResponse {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    pub(crate) fn json(status: StatusCode, body: Value) -> Self {
        OpResponse {
            status,
            headers: Vec::new(),
            body: Some(OpBody::Json(body)),
        }
    }

    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub(crate) fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn error(e: &DvError) -> Self {
        // Source: "Compose HTTP requests and handle errors" (D-COMPOSE) and the batch example
        // of D-BATCH: error bodies, top-level or inside a batch part, are OData JSON.
        Self::json(e.status, e.body())
            .header("Content-Type", "application/json; odata.metadata=minimal")
    }

    /// Number of operations whose work this response stands for (1 unless a batch).
    pub(crate) fn is_success(&self) -> bool {
        self.status.is_success() || self.status == StatusCode::NOT_MODIFIED
    }
}

/// The `Prefer` preferences the emulator understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Prefer {
    pub(crate) return_representation: bool,
    pub(crate) max_page_size: Option<usize>,
    pub(crate) track_changes: bool,
    pub(crate) include_annotations: Option<String>,
    pub(crate) continue_on_error: bool,
}

impl Prefer {
    pub(crate) fn parse(headers: &HeaderMap) -> Prefer {
        let mut p = Prefer::default();
        for value in headers.get_all("prefer") {
            let Ok(value) = value.to_str() else { continue };
            for item in split_outside_quotes(value, ',') {
                let item = item.trim();
                let (name, arg) = match item.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (item, None),
                };
                match (name.to_ascii_lowercase().as_str(), arg) {
                    ("return", Some("representation")) => p.return_representation = true,
                    ("odata.maxpagesize", Some(n)) => p.max_page_size = n.parse().ok(),
                    ("odata.track-changes", _) => p.track_changes = true,
                    ("odata.continue-on-error", _) => p.continue_on_error = true,
                    ("odata.include-annotations", Some(a)) => {
                        p.include_annotations = Some(a.to_string())
                    }
                    _ => {}
                }
            }
        }
        p
    }

    /// Whether an annotation (e.g. `OData.Community.Display.V1.FormattedValue`) was asked for.
    pub(crate) fn wants(&self, annotation: &str) -> bool {
        let Some(list) = &self.include_annotations else {
            return false;
        };
        list.split(',').map(str::trim).any(|pat| {
            pat == "*"
                || pat == annotation
                || pat
                    .strip_suffix('*')
                    .is_some_and(|prefix| annotation.starts_with(prefix))
        })
    }
}

/// Splits on `sep` outside `'…'`, `"…"`, `(…)` and `[…]`.
pub(crate) fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                c if c == sep && depth == 0 => {
                    out.push(&s[start..i]);
                    start = i + c.len_utf8();
                }
                _ => {}
            },
        }
    }
    out.push(&s[start..]);
    out
}

/// Percent-decodes (`+` stays `+`), replacing invalid UTF-8.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes everything but unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Query string pairs, decoded as forms are (`+` is a space), in order.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The raw query without the named options (for building next/delta links).
pub(crate) fn query_without(query: &str, drop: &[&str]) -> Vec<String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = percent_decode(p.split('=').next().unwrap_or(""));
            !drop.contains(&name.as_str())
        })
        .map(str::to_string)
        .collect()
}

/// One path segment: `name` or `name(args)` plus anything after the `)` (kept for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) name: String,
    pub(crate) args: Option<String>,
}

impl Segment {
    pub(crate) fn text(&self) -> String {
        match &self.args {
            Some(a) => format!("{}({a})", self.name),
            None => self.name.clone(),
        }
    }
}

/// Splits a decoded path into segments (`/` inside parentheses or quotes does not split).
pub(crate) fn segments(path: &str) -> DvResult<Vec<Segment>> {
    let mut out = Vec::new();
    for raw in split_outside_quotes(path, '/') {
        if raw.is_empty() {
            continue;
        }
        match raw.find('(') {
            Some(open) => {
                if !raw.ends_with(')') {
                    return Err(DvError::unknown_segment(raw));
                }
                out.push(Segment {
                    name: raw[..open].to_string(),
                    args: Some(raw[open + 1..raw.len() - 1].to_string()),
                });
            }
            None => out.push(Segment {
                name: raw.to_string(),
                args: None,
            }),
        }
    }
    Ok(out)
}

/// A key segment's content.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeySpec {
    /// `(guid)`
    Bare(Literal),
    /// `(name='v',other=1)`
    Named(Vec<(String, Literal)>),
}

/// Parses the inside of `set(...)`.
pub(crate) fn parse_key(args: &str) -> DvResult<KeySpec> {
    let parse_lit = |v: &str| -> DvResult<Literal> {
        let v = v.trim();
        if v.starts_with('\'') {
            return unescape_string_literal(v)
                .map(Literal::String)
                .map_err(|e| DvError::odata(format!("Bad Request - Error in query syntax: {e}")));
        }
        if let Ok(g) = uuid::Uuid::parse_str(v.trim_start_matches('{').trim_end_matches('}')) {
            return Ok(Literal::Guid(g));
        }
        match v {
            "null" => return Ok(Literal::Null),
            "true" => return Ok(Literal::Bool(true)),
            "false" => return Ok(Literal::Bool(false)),
            _ => {}
        }
        v.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(Literal::Number)
            .ok_or_else(|| DvError::odata("Bad Request - Error in query syntax."))
    };
    let parts = split_outside_quotes(args, ',');
    if parts.len() == 1 && !has_top_level_equals(parts[0]) {
        return Ok(KeySpec::Bare(parse_lit(parts[0])?));
    }
    let mut out = Vec::new();
    for p in parts {
        let Some(eq) = top_level_equals(p) else {
            return Err(DvError::odata("Bad Request - Error in query syntax."));
        };
        out.push((p[..eq].trim().to_string(), parse_lit(&p[eq + 1..])?));
    }
    Ok(KeySpec::Named(out))
}

fn top_level_equals(s: &str) -> Option<usize> {
    let mut quote = false;
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quote = !quote,
            '=' if !quote => return Some(i),
            _ => {}
        }
    }
    None
}

fn has_top_level_equals(s: &str) -> bool {
    top_level_equals(s).is_some()
}

/// A header's value as text.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Parameter aliases (`@p1=...`) among the query pairs.
pub(crate) fn aliases(pairs: &[(String, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .filter(|(k, _)| k.starts_with('@'))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_with_escapes() {
        assert_eq!(
            parse_key("cosell_referralid='a''b,c'").unwrap(),
            KeySpec::Named(vec![(
                "cosell_referralid".into(),
                Literal::String("a'b,c".into())
            )])
        );
        assert!(matches!(
            parse_key("7eb682f1-ca75-e511-80d4-00155d2a68d1").unwrap(),
            KeySpec::Bare(Literal::Guid(_))
        ));
        let KeySpec::Named(parts) = parse_key("firstname='Joe',emailaddress1='a=b@x.com'").unwrap()
        else {
            panic!()
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].1, Literal::String("a=b@x.com".into()));
        assert!(parse_key("name='open").is_err());
    }

    #[test]
    fn segments_respect_quotes() {
        let s = segments("accounts(accountnumber='a/b')/name").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].args.as_deref(), Some("accountnumber='a/b'"));
        assert_eq!(percent_decode("a%27%27b%2Fc%ZZ"), "a''b/c%ZZ");
    }

    #[test]
    fn prefer_parses_lists() {
        let mut h = HeaderMap::new();
        h.append(
            "prefer",
            "odata.include-annotations=\"OData.Community.Display.V1.FormattedValue,Microsoft.Dynamics.CRM.*\", return=representation"
                .parse()
                .unwrap(),
        );
        h.append("prefer", "odata.maxpagesize=10".parse().unwrap());
        let p = Prefer::parse(&h);
        assert!(p.return_representation);
        assert_eq!(p.max_page_size, Some(10));
        assert!(p.wants("OData.Community.Display.V1.FormattedValue"));
        assert!(p.wants("Microsoft.Dynamics.CRM.lookuplogicalname"));
        assert!(!p.wants("Other"));
    }
}
