//! The `$filter` subset the Partner Center referrals API documents (reference §3.3), parsed by
//! hand (recursive descent) and evaluated against referrals stored as JSON.
//!
//! Grammar (case-insensitive keywords):
//!
//! ```text
//! expr       := or
//! or         := and ( "or" and )*
//! and        := unary ( "and" unary )*
//! unary      := "not" unary | primary
//! primary    := "(" expr ")" | path "/any(" ident ":" expr ")" | path op literal | literal op path
//! op         := eq | ne | gt | ge | lt | le
//! path       := ident ( "/" ident )*
//! literal    := 'string' (with '' escaping) | GUID | date-time | number | true | false | null
//! ```
//!
//! Anything else is refused with a [`FilterError`] naming what was not understood and where.
//! String comparisons ignore ASCII case (enum values, e-mail addresses and GUIDs all compare
//! that way in practice; the service's exact collation is not documented). Values that both read
//! as date-times compare as instants, numbers compare numerically.

use std::cmp::Ordering;
use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate};
use serde_json::Value;

/// Deepest nesting of parentheses, `not` and lambdas accepted (keeps recursion bounded).
const MAX_DEPTH: usize = 64;
/// Longest filter accepted, in characters.
const MAX_LEN: usize = 8 * 1024;

/// Why a `$filter` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// Character offset where the problem was found.
    pub position: usize,
    /// What was not understood.
    pub message: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$filter not understood at position {}: {}",
            self.position, self.message
        )
    }
}

impl std::error::Error for FilterError {}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
    /// `gt`
    Gt,
    /// `ge`
    Ge,
    /// `lt`
    Lt,
    /// `le`
    Le,
}

impl CompareOp {
    fn parse(word: &str) -> Option<Self> {
        Some(match word.to_ascii_lowercase().as_str() {
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            _ => return None,
        })
    }

    /// The operator with its operands swapped (`5 lt x` is `x gt 5`).
    fn flipped(self) -> Self {
        match self {
            CompareOp::Gt => CompareOp::Lt,
            CompareOp::Ge => CompareOp::Le,
            CompareOp::Lt => CompareOp::Gt,
            CompareOp::Le => CompareOp::Ge,
            other => other,
        }
    }
}

/// A literal in a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A quoted string (quotes removed, `''` unescaped).
    String(String),
    /// An unquoted GUID.
    Guid(String),
    /// An unquoted date-time (or date).
    DateTime(DateTime<FixedOffset>),
    /// A number.
    Number(f64),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
}

/// A parsed `$filter` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Both hold.
    And(Box<Filter>, Box<Filter>),
    /// Either holds.
    Or(Box<Filter>, Box<Filter>),
    /// Does not hold.
    Not(Box<Filter>),
    /// `path op literal`.
    Compare {
        /// Property path, segments split on `/` (a lambda variable may be the first segment).
        path: Vec<String>,
        /// The operator.
        op: CompareOp,
        /// The right-hand side.
        value: Literal,
    },
    /// `path/any(var: body)`: some element of the collection at `path` satisfies `body`.
    Any {
        /// The collection's path.
        path: Vec<String>,
        /// The lambda variable.
        var: String,
        /// The condition on each element.
        body: Box<Filter>,
    },
}

/// Parses a `$filter` value.
pub fn parse(input: &str) -> Result<Filter, FilterError> {
    if input.chars().count() > MAX_LEN {
        return Err(FilterError {
            position: MAX_LEN,
            message: format!("the filter is longer than {MAX_LEN} characters"),
        });
    }
    let tokens = lex(input)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
        vars: Vec::new(),
    };
    let expr = p.or()?;
    match p.peek() {
        None => Ok(expr),
        Some(t) => Err(p.error_at(t.pos, format!("unexpected {}", t.kind))),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Word(String),
    Str(String),
    Guid(String),
    DateTime(DateTime<FixedOffset>),
    Number(f64),
    Slash,
    Open,
    Close,
    Colon,
    Comma,
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKind::Word(w) => write!(f, "`{w}`"),
            TokenKind::Str(s) => write!(f, "string '{s}'"),
            TokenKind::Guid(g) => write!(f, "GUID {g}"),
            TokenKind::DateTime(d) => write!(f, "date-time {}", d.to_rfc3339()),
            TokenKind::Number(n) => write!(f, "number {n}"),
            TokenKind::Slash => f.write_str("`/`"),
            TokenKind::Open => f.write_str("`(`"),
            TokenKind::Close => f.write_str("`)`"),
            TokenKind::Colon => f.write_str("`:`"),
            TokenKind::Comma => f.write_str("`,`"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    pos: usize,
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '@' || c == '$'
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '@' || c == '.' || c == '$'
}

/// Reads a GUID (8-4-4-4-12 hex digits) starting at `i`, if there is one ending on a boundary.
fn guid_at(chars: &[char], i: usize) -> Option<String> {
    let candidate: String = chars.get(i..i + 36)?.iter().collect();
    let boundary = chars
        .get(i + 36)
        .is_none_or(|c| !is_word_char(*c) && *c != '-');
    let shaped = candidate.char_indices().all(|(k, c)| {
        if matches!(k, 8 | 13 | 18 | 23) {
            c == '-'
        } else {
            c.is_ascii_hexdigit()
        }
    });
    (boundary && shaped).then_some(candidate)
}

fn parse_datetime(s: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d);
    }
    // A bare date means midnight UTC.
    let date = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().fixed_offset())
}

fn lex(input: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let start = i;
        let kind = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '/' => {
                i += 1;
                TokenKind::Slash
            }
            '(' => {
                i += 1;
                TokenKind::Open
            }
            ')' => {
                i += 1;
                TokenKind::Close
            }
            ':' => {
                i += 1;
                TokenKind::Colon
            }
            ',' => {
                i += 1;
                TokenKind::Comma
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(FilterError {
                                position: start,
                                message: "unterminated string literal".into(),
                            });
                        }
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                TokenKind::Str(s)
            }
            _ => {
                if let Some(g) = guid_at(&chars, i) {
                    i += 36;
                    TokenKind::Guid(g)
                } else if c.is_ascii_digit() || c == '-' || c == '+' {
                    // A number or a date-time: digits and the punctuation both use.
                    let mut j = i + 1;
                    while chars.get(j).is_some_and(|ch| {
                        ch.is_ascii_alphanumeric() || matches!(ch, '-' | '+' | ':' | '.')
                    }) {
                        j += 1;
                    }
                    let text: String = chars.get(i..j).unwrap_or_default().iter().collect();
                    i = j;
                    if let Some(d) = parse_datetime(&text) {
                        TokenKind::DateTime(d)
                    } else if let Ok(n) = text.parse::<f64>() {
                        if !n.is_finite() {
                            return Err(FilterError {
                                position: start,
                                message: format!("number `{text}` is out of range"),
                            });
                        }
                        TokenKind::Number(n)
                    } else {
                        return Err(FilterError {
                            position: start,
                            message: format!("`{text}` is neither a number nor a date-time"),
                        });
                    }
                } else if is_word_start(c) {
                    let mut j = i + 1;
                    while chars.get(j).is_some_and(|ch| is_word_char(*ch)) {
                        j += 1;
                    }
                    let text: String = chars.get(i..j).unwrap_or_default().iter().collect();
                    i = j;
                    TokenKind::Word(text)
                } else {
                    return Err(FilterError {
                        position: start,
                        message: format!("unexpected character `{c}`"),
                    });
                }
            }
        };
        out.push(Token { kind, pos: start });
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    /// Lambda variables in scope.
    vars: Vec<String>,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_kind(&self, ahead: usize) -> Option<&TokenKind> {
        self.tokens.get(self.pos + ahead).map(|t| &t.kind)
    }

    fn end_pos(&self) -> usize {
        self.tokens
            .last()
            .map_or(0, |t| t.pos + t.kind.to_string().len())
    }

    fn error_at(&self, position: usize, message: impl Into<String>) -> FilterError {
        FilterError {
            position,
            message: message.into(),
        }
    }

    fn next_token(&mut self, what: &str) -> Result<Token, FilterError> {
        match self.tokens.get(self.pos) {
            Some(t) => {
                self.pos += 1;
                Ok(t.clone())
            }
            None => Err(self.error_at(self.end_pos(), format!("expected {what}, found the end"))),
        }
    }

    fn expect(&mut self, kind: &TokenKind, what: &str) -> Result<(), FilterError> {
        let t = self.next_token(what)?;
        if &t.kind == kind {
            Ok(())
        } else {
            Err(self.error_at(t.pos, format!("expected {what}, found {}", t.kind)))
        }
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek_kind(0), Some(TokenKind::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn enter(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let pos = self.peek().map_or(self.end_pos(), |t| t.pos);
            return Err(self.error_at(pos, format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.pos += 1;
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, FilterError> {
        if self.keyword("not") {
            self.pos += 1;
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Filter, FilterError> {
        let Some(first) = self.peek().cloned() else {
            return Err(self.error_at(self.end_pos(), "expected a condition, found the end"));
        };
        match &first.kind {
            TokenKind::Open => {
                self.pos += 1;
                self.enter()?;
                let inner = self.or()?;
                self.depth -= 1;
                self.expect(&TokenKind::Close, "`)`")?;
                Ok(inner)
            }
            TokenKind::Word(w) if !is_literal_word(w) => {
                // A function call such as `contains(` is not part of the documented subset.
                if matches!(self.peek_kind(1), Some(TokenKind::Open)) {
                    return Err(self.error_at(
                        first.pos,
                        format!("function `{w}` is not supported (supported: eq, ne, gt, ge, lt, le, and, or, not, any)"),
                    ));
                }
                let (path, any) = self.path()?;
                if any {
                    return self.lambda(path, first.pos);
                }
                let op = self.operator()?;
                let value = self.literal()?;
                Ok(Filter::Compare { path, op, value })
            }
            _ => {
                // `literal op path`: accepted, normalised to `path op' literal`.
                let value = self.literal()?;
                let op = self.operator()?.flipped();
                let (path, any) = self.path()?;
                if any {
                    return Err(self.error_at(first.pos, "`any` cannot be compared to a literal"));
                }
                Ok(Filter::Compare { path, op, value })
            }
        }
    }

    /// Reads `seg(/seg)*`; returns whether it ended in `/any` (the `(` not yet consumed).
    fn path(&mut self) -> Result<(Vec<String>, bool), FilterError> {
        let mut segs = Vec::new();
        loop {
            let t = self.next_token("a property name")?;
            match t.kind {
                TokenKind::Word(w) if !is_literal_word(&w) && CompareOp::parse(&w).is_none() => {
                    let is_any = w.eq_ignore_ascii_case("any") || w.eq_ignore_ascii_case("all");
                    if is_any
                        && !segs.is_empty()
                        && matches!(self.peek_kind(0), Some(TokenKind::Open))
                    {
                        if w.eq_ignore_ascii_case("all") {
                            return Err(self.error_at(
                                t.pos,
                                "the `all` lambda is not supported (only `any`)",
                            ));
                        }
                        return Ok((segs, true));
                    }
                    segs.push(w);
                }
                other => {
                    return Err(
                        self.error_at(t.pos, format!("expected a property name, found {other}"))
                    );
                }
            }
            if matches!(self.peek_kind(0), Some(TokenKind::Slash)) {
                self.pos += 1;
            } else {
                return Ok((segs, false));
            }
        }
    }

    fn lambda(&mut self, path: Vec<String>, pos: usize) -> Result<Filter, FilterError> {
        self.expect(&TokenKind::Open, "`(` after `any`")?;
        self.enter()?;
        let var = match self.next_token("a lambda variable")? {
            Token {
                kind: TokenKind::Word(w),
                ..
            } if !is_literal_word(&w) => w,
            t => {
                return Err(self.error_at(
                    t.pos,
                    format!("expected a lambda variable, found {}", t.kind),
                ));
            }
        };
        if matches!(self.peek_kind(0), Some(TokenKind::Close)) {
            // `team/any()` (is the collection non-empty) — not in the documented subset.
            return Err(self.error_at(pos, "`any` needs a condition: `any(t: t/... eq ...)`"));
        }
        self.expect(&TokenKind::Colon, "`:` after the lambda variable")?;
        self.vars.push(var.clone());
        let body = self.or()?;
        self.vars.pop();
        self.depth -= 1;
        self.expect(&TokenKind::Close, "`)` closing `any(`")?;
        Ok(Filter::Any {
            path,
            var,
            body: Box::new(body),
        })
    }

    fn operator(&mut self) -> Result<CompareOp, FilterError> {
        let t = self.next_token("a comparison operator")?;
        match &t.kind {
            TokenKind::Word(w) => CompareOp::parse(w).ok_or_else(|| {
                self.error_at(
                    t.pos,
                    format!("operator `{w}` is not supported (supported: eq, ne, gt, ge, lt, le)"),
                )
            }),
            other => Err(self.error_at(
                t.pos,
                format!("expected a comparison operator, found {other}"),
            )),
        }
    }

    fn literal(&mut self) -> Result<Literal, FilterError> {
        let t = self.next_token("a literal value")?;
        Ok(match t.kind {
            TokenKind::Str(s) => Literal::String(s),
            TokenKind::Guid(g) => Literal::Guid(g),
            TokenKind::DateTime(d) => Literal::DateTime(d),
            TokenKind::Number(n) => Literal::Number(n),
            TokenKind::Word(w) if w.eq_ignore_ascii_case("true") => Literal::Bool(true),
            TokenKind::Word(w) if w.eq_ignore_ascii_case("false") => Literal::Bool(false),
            TokenKind::Word(w) if w.eq_ignore_ascii_case("null") => Literal::Null,
            other => {
                return Err(self.error_at(
                    t.pos,
                    format!("expected a literal value (a 'quoted string', GUID, number, date-time, true, false or null), found {other}"),
                ));
            }
        })
    }
}

fn is_literal_word(w: &str) -> bool {
    ["true", "false", "null"]
        .iter()
        .any(|k| w.eq_ignore_ascii_case(k))
}

/// Evaluates `filter` against one referral.
pub fn matches(filter: &Filter, referral: &Value) -> bool {
    let mut scope = Vec::new();
    eval(filter, Root::Value(referral), &mut scope)
}

/// [`matches()`] on a stored referral's members, without building a `Value` around them.
pub fn matches_object(filter: &Filter, referral: &serde_json::Map<String, Value>) -> bool {
    let mut scope = Vec::new();
    eval(filter, Root::Object(referral), &mut scope)
}

/// The referral a filter is evaluated on.
#[derive(Debug, Clone, Copy)]
enum Root<'a> {
    Value(&'a Value),
    Object(&'a serde_json::Map<String, Value>),
}

fn eval<'a>(filter: &Filter, root: Root<'a>, scope: &mut Vec<(String, &'a Value)>) -> bool {
    match filter {
        Filter::And(a, b) => eval(a, root, scope) && eval(b, root, scope),
        Filter::Or(a, b) => eval(a, root, scope) || eval(b, root, scope),
        Filter::Not(a) => !eval(a, root, scope),
        Filter::Compare { path, op, value } => {
            let found = resolve(path, root, scope);
            compare(found, *op, value)
        }
        Filter::Any { path, var, body } => {
            let Some(Value::Array(items)) = resolve(path, root, scope) else {
                return false;
            };
            items.iter().any(|item| {
                scope.push((var.clone(), item));
                let hit = eval(body, root, scope);
                scope.pop();
                hit
            })
        }
    }
}

fn resolve<'a>(
    path: &[String],
    root: Root<'a>,
    scope: &[(String, &'a Value)],
) -> Option<&'a Value> {
    let Some((first, rest)) = path.split_first() else {
        return match root {
            Root::Value(v) => Some(v),
            // The parser never yields an empty path; an object root has no `Value` to give.
            Root::Object(_) => None,
        };
    };
    let start = match scope.iter().rev().find(|(v, _)| v == first) {
        Some((_, bound)) => *bound,
        None => match root {
            Root::Value(v) => get_ci(v, first)?,
            Root::Object(m) => get_ci_map(m, first)?,
        },
    };
    rest.iter().try_fold(start, |v, seg| get_ci(v, seg))
}

fn get_ci_map<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// The lower bound a top-level conjunct `field ge|gt <date-time>` puts on `field` (`true` when
/// strict), for listing through the timestamp index; `None` when the filter has none.
pub(crate) fn lower_bound(filter: &Filter, field: &str) -> Option<(DateTime<FixedOffset>, bool)> {
    match filter {
        Filter::And(a, b) => match (lower_bound(a, field), lower_bound(b, field)) {
            (Some(x), Some(y)) => Some(if (x.0, x.1) >= (y.0, y.1) { x } else { y }),
            (x, y) => x.or(y),
        },
        Filter::Compare { path, op, value } => {
            let [name] = path.as_slice() else { return None };
            if !name.eq_ignore_ascii_case(field) {
                return None;
            }
            let at = match value {
                Literal::DateTime(d) => *d,
                Literal::String(s) => parse_datetime(s)?,
                _ => return None,
            };
            match op {
                CompareOp::Ge => Some((at, false)),
                CompareOp::Gt => Some((at, true)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The engagement a top-level conjunct `engagementId eq '<id>'` names (an id that is not a
/// date, since two dates compare as dates), for listing through the engagement index.
pub(crate) fn engagement(filter: &Filter) -> Option<&str> {
    match filter {
        Filter::And(a, b) => engagement(a).or_else(|| engagement(b)),
        Filter::Compare {
            path,
            op: CompareOp::Eq,
            value: Literal::String(id) | Literal::Guid(id),
        } if path.len() == 1
            && path[0].eq_ignore_ascii_case("engagementId")
            && parse_datetime(id).is_none()
            && id.trim().parse::<f64>().is_err() =>
        {
            Some(id)
        }
        _ => None,
    }
}

/// Whether `filter` is nothing but one `field ge|gt <date-time>` comparison.
pub(crate) fn is_only_lower_bound(filter: &Filter, field: &str) -> bool {
    matches!(filter, Filter::Compare { .. }) && lower_bound(filter, field).is_some()
}

/// Object member lookup: exact name first, then ignoring ASCII case.
fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn compare(found: Option<&Value>, op: CompareOp, lit: &Literal) -> bool {
    let found = found.unwrap_or(&Value::Null);
    let ord = match (found, lit) {
        (Value::Null, Literal::Null) => Some(Ordering::Equal),
        (Value::Null, _) | (_, Literal::Null) => None,
        (Value::Bool(a), Literal::Bool(b)) => Some(a.cmp(b)),
        (Value::Number(n), Literal::Number(b)) => n.as_f64().and_then(|a| a.partial_cmp(b)),
        (Value::Number(n), Literal::String(s)) => n
            .as_f64()
            .zip(s.trim().parse::<f64>().ok())
            .and_then(|(a, b)| a.partial_cmp(&b)),
        (Value::String(s), Literal::Number(b)) => {
            s.trim().parse::<f64>().ok().and_then(|a| a.partial_cmp(b))
        }
        (Value::String(s), Literal::DateTime(d)) => parse_datetime(s).map(|a| a.cmp(d)),
        (Value::String(s), Literal::String(b)) => match (parse_datetime(s), parse_datetime(b)) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => Some(cmp_ci(s, b)),
        },
        (Value::String(s), Literal::Guid(g)) => Some(cmp_ci(s, g)),
        (Value::String(s), Literal::Bool(b)) => Some(cmp_ci(s, if *b { "true" } else { "false" })),
        _ => None,
    };
    match (op, ord) {
        (CompareOp::Ne, None) => true,
        (_, None) => false,
        (CompareOp::Eq, Some(o)) => o == Ordering::Equal,
        (CompareOp::Ne, Some(o)) => o != Ordering::Equal,
        (CompareOp::Gt, Some(o)) => o == Ordering::Greater,
        (CompareOp::Ge, Some(o)) => o != Ordering::Less,
        (CompareOp::Lt, Some(o)) => o == Ordering::Less,
        (CompareOp::Le, Some(o)) => o != Ordering::Greater,
    }
}

fn cmp_ci(a: &str, b: &str) -> Ordering {
    a.chars()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.chars().map(|c| c.to_ascii_lowercase()))
}

/// The members Microsoft documents for `$filter` on referrals (get-a-list-of-referrals:
/// "supported filter parameters" and its examples). `externalReferenceId` and `createdDateTime`
/// are not among them (`createdDateTime` is documented for `$orderby` only).
pub const DOCUMENTED_MEMBERS: &[&str] = &[
    "engagementId",
    "status",
    "substatus",
    "updatedDateTime",
    "email",
    "qualification",
    "customerProfile/address/country",
    "direction",
    "type",
    "team/any(t: t/email ...)",
];

/// Refuses a filter on a member Microsoft does not document (get-a-list-of-referrals), so a
/// client relying on an undocumented filter fails here as it may on the service.
pub fn check_documented_members(filter: &Filter) -> Result<(), FilterError> {
    check_members(filter, None)
}

fn check_members(filter: &Filter, lambda_var: Option<&str>) -> Result<(), FilterError> {
    let refuse = |path: &[String]| FilterError {
        position: 0,
        message: format!(
            "filtering on `{}` is not supported; the documented members are {}",
            path.join("/"),
            DOCUMENTED_MEMBERS.join(", ")
        ),
    };
    let eq = |path: &[String], wanted: &[&str]| {
        path.len() == wanted.len()
            && path
                .iter()
                .zip(wanted)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    };
    match filter {
        Filter::And(a, b) | Filter::Or(a, b) => {
            check_members(a, lambda_var)?;
            check_members(b, lambda_var)
        }
        Filter::Not(a) => check_members(a, lambda_var),
        Filter::Compare { path, .. } => {
            let ok = match lambda_var {
                // Inside `team/any(t: ...)`: the documented example compares `t/email`.
                Some(var) => {
                    path.len() == 2 && path[0] == var && path[1].eq_ignore_ascii_case("email")
                }
                None => DOCUMENTED_MEMBERS
                    .iter()
                    .filter(|m| !m.contains('('))
                    .any(|m| eq(path, &m.split('/').collect::<Vec<_>>())),
            };
            if ok { Ok(()) } else { Err(refuse(path)) }
        }
        Filter::Any { path, var, body } => {
            if lambda_var.is_some() || !eq(path, &["team"]) {
                return Err(refuse(path));
            }
            check_members(body, Some(var))
        }
    }
}

/// Whether `filter` mentions the property `name` anywhere (top-level paths only).
pub fn mentions(filter: &Filter, name: &str) -> bool {
    match filter {
        Filter::And(a, b) | Filter::Or(a, b) => mentions(a, name) || mentions(b, name),
        Filter::Not(a) => mentions(a, name),
        Filter::Compare { path, .. } => path.first().is_some_and(|p| p.eq_ignore_ascii_case(name)),
        Filter::Any { path, .. } => path.first().is_some_and(|p| p.eq_ignore_ascii_case(name)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn referral() -> Value {
        json!({
            "id": "4111fffc-f9ee-4d53-bba6-569135228642",
            "engagementId": "37ef26aa-1d15-4533-9f93-a69bd33ab1e5",
            "status": "Active",
            "substatus": "Accepted",
            "direction": "Outgoing",
            "type": "Shared",
            "qualification": "SalesQualified",
            "externalReferenceId": "O'Brien-42",
            "updatedDateTime": "2024-02-25T09:11:02.1034567Z",
            "createdDateTime": "2024-02-23T02:05:23.2931817Z",
            "details": { "dealValue": 50000, "currency": "USD" },
            "customerProfile": { "name": "Contoso", "address": { "country": "US" } },
            "team": [
                { "email": "john.doe@contoso.com" },
                { "email": "r2d2@contoso.com" }
            ]
        })
    }

    fn check(filter: &str, expected: bool) {
        let f = parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        assert_eq!(matches(&f, &referral()), expected, "{filter} => {f:?}");
    }

    fn refused(filter: &str, needle: &str) {
        let e = parse(filter).expect_err(filter);
        assert!(
            e.to_string().contains(needle),
            "{filter}: `{e}` does not mention `{needle}`"
        );
    }

    #[test]
    fn documented_examples() {
        check(
            "engagementId eq '37ef26aa-1d15-4533-9f93-a69bd33ab1e5'",
            true,
        );
        check("engagementId eq 37ef26aa-1d15-4533-9f93-a69bd33ab1e5", true);
        check(
            "engagementId eq 37ef26aa-1d15-4533-9f93-a69bd33ab1e6",
            false,
        );
        check(
            "status eq 'Active' and qualification eq 'SalesQualified'",
            true,
        );
        check(
            "customerProfile/address/country eq 'US' and direction eq 'Incoming'",
            false,
        );
        check("(type eq 'Shared' and direction eq 'Outgoing')", true);
        check(
            "status eq 'Active' and direction eq 'Outgoing' and type eq 'Shared' and team/any(t:t/email eq 'r2d2@contoso.com')",
            true,
        );
        check("team/any(t: t/email eq 'nobody@contoso.com')", false);
    }

    #[test]
    fn operators_and_precedence() {
        check("status eq 'New' or status eq 'Active'", true);
        check("status ne 'Active'", false);
        check("status eq 'active'", true);
        check(
            "status eq 'New' or status eq 'Active' and type eq 'Independent'",
            false,
        );
        check(
            "(status eq 'New' or status eq 'Active') and type eq 'Shared'",
            true,
        );
        check("not (status eq 'New')", true);
        check(
            "details/dealValue gt 40000 and details/dealValue le 50000",
            true,
        );
        check("details/dealValue lt 50000", false);
        check("50000 ge details/dealValue", true);
        check("missing/field eq null", true);
        check("missing/field ne 'x'", true);
        check("STATUS EQ 'Active' AND Direction eq 'Outgoing'", true);
    }

    #[test]
    fn dates_and_escapes() {
        check("updatedDateTime gt 2024-02-25T00:00:00Z", true);
        check("updatedDateTime ge 2024-02-25T09:11:02.1034567Z", true);
        check("updatedDateTime gt 2024-02-25T09:11:02.1034567Z", false);
        check("updatedDateTime lt '2024-03-01T00:00:00+01:00'", true);
        check("createdDateTime le 2024-02-23", false);
        check("createdDateTime gt 2024-02-23", true);
        check("externalReferenceId eq 'O''Brien-42'", true);
    }

    #[test]
    fn unsupported_syntax_is_named() {
        refused("contains(name,'x')", "function `contains`");
        refused("status has 'x'", "operator `has`");
        refused("status eq", "expected a literal");
        refused("status eq 'x", "unterminated string");
        refused("(status eq 'x'", "`)`");
        refused("status eq 'x')", "unexpected `)`");
        refused("team/all(t:t/email eq 'x')", "`all`");
        refused("status eq 'x' xor y", "unexpected `xor`");
        refused("status # 'x'", "unexpected character `#`");
        refused("", "found the end");
        refused(&"(".repeat(500), "nesting");
    }

    #[test]
    fn never_panics_on_odd_input() {
        let samples = [
            "'",
            "''",
            "((",
            "))",
            "/",
            "a/",
            "/a",
            "a//b eq 1",
            "a eq 1e999",
            "a eq --1",
            "any(",
            "a/any(",
            "a/any(t",
            "a/any(t:",
            "a/any(t:t",
            "a/any()",
            "é eq 'ü'",
            "a eq 'ü''",
            "12345678-1234-1234-1234-12345678901",
            "a eq 2024-13-45",
            "not",
            "not not not",
            "a eq 1 and",
            "and",
            "or or",
            "a eq true or",
            "t/email eq 'x'",
            ":",
            ",",
            "a eq 'x',",
            "\u{0}",
            "a\u{2028}eq 1",
        ];
        for s in samples {
            if let Ok(f) = parse(s) {
                let _ = matches(&f, &referral());
            }
        }
        for len in 0..40 {
            let s: String = "a/any(t:t eq 'x' and (b ne 1))".chars().take(len).collect();
            let _ = parse(&s);
        }
    }

    #[test]
    fn random_token_soup_never_panics() {
        use rand::{Rng, SeedableRng};
        let pieces = [
            "status",
            "eq",
            "ne",
            "gt",
            "and",
            "or",
            "not",
            "(",
            ")",
            "'",
            "''",
            "/",
            "any",
            ":",
            "t",
            "team",
            "email",
            "2024-01-01T00:00:00Z",
            "12",
            "-",
            "37ef26aa-1d15-4533-9f93-a69bd33ab1e5",
            " ",
            "null",
            "true",
            ",",
            "é",
            "\\",
            "$",
            "@",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..5_000 {
            let n = rng.random_range(0..14);
            let s: String = (0..n)
                .map(|_| pieces[rng.random_range(0..pieces.len())])
                .collect::<Vec<_>>()
                .join(if rng.random_bool(0.5) { " " } else { "" });
            if let Ok(f) = parse(&s) {
                let _ = matches(&f, &referral());
            }
        }
    }

    #[test]
    fn mentions_engagement_id() {
        let f = parse("engagementId eq 'x' and status eq 'New'").unwrap();
        assert!(mentions(&f, "engagementid"));
        assert!(!mentions(&f, "direction"));
    }
}
