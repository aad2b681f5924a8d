//! A hand-written parser for the `$filter` subset Dataverse documents, and the literal
//! (un)escaping the key-segment parser shares.
//!
//! Grammar (precedence low to high): `or`, `and`, `not`, comparison (`eq ne gt ge lt le`),
//! primary (`( … )`, `contains/startswith/endswith(prop,'lit')`,
//! `Microsoft.Dynamics.CRM.In|NotIn|Between|NotBetween(PropertyName='p',PropertyValues=["a","b"])`,
//! property, literal, `@alias`). Literals: `'text'` (a quote doubled inside), numbers, `true`,
//! `false`, `null`, GUIDs, dates (`2026-09-30`) and date-times (`2026-09-30T10:00:00Z`).
//! Anything else is a [`FilterError`] (the emulator answers 400); nothing here panics.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

/// A `$filter` (or key segment) that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    message: String,
}

impl FilterError {
    fn new(message: impl Into<String>) -> Self {
        FilterError {
            message: message.into(),
        }
    }

    /// What went wrong, for the 400 body.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FilterError {}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number (kept as `f64`; Dataverse money and decimals fit for comparison purposes).
    Number(f64),
    /// A quoted string, unescaped.
    String(String),
    /// An unquoted GUID.
    Guid(Uuid),
    /// An unquoted date.
    Date(NaiveDate),
    /// An unquoted date-time.
    DateTime(DateTime<Utc>),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
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

/// String functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrFn {
    /// `contains`
    Contains,
    /// `startswith`
    StartsWith,
    /// `endswith`
    EndsWith,
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A property of the row.
    Property(String),
    /// A literal.
    Literal(Literal),
}

/// A parsed `$filter` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `a and b`
    And(Box<Expr>, Box<Expr>),
    /// `a or b`
    Or(Box<Expr>, Box<Expr>),
    /// `not a`
    Not(Box<Expr>),
    /// `left op right`
    Compare(Operand, CmpOp, Operand),
    /// `contains(prop,'x')` and friends.
    StrFn(StrFn, String, String),
    /// `Microsoft.Dynamics.CRM.In` (or `NotIn` when negated).
    In {
        /// The property.
        property: String,
        /// The values.
        values: Vec<Literal>,
        /// `NotIn`.
        negated: bool,
    },
    /// `Microsoft.Dynamics.CRM.Between` (or `NotBetween` when negated).
    Between {
        /// The property.
        property: String,
        /// Lower bound (inclusive).
        low: Literal,
        /// Upper bound (inclusive).
        high: Literal,
        /// `NotBetween`.
        negated: bool,
    },
    /// A boolean property or literal on its own (`cosell_syncwithpartnercenter`, `true`).
    Value(Operand),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    JsonStr(String),
    Lit(Literal),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Equals,
}

/// Unescapes an OData string literal: `'O''Brien'` → `O'Brien`. The quotes are required.
///
/// ```
/// use cosell_sandbox::dataverse::filter::unescape_string_literal;
/// assert_eq!(unescape_string_literal("'Men''s Shoes'").unwrap(), "Men's Shoes");
/// assert!(unescape_string_literal("'open").is_err());
/// ```
pub fn unescape_string_literal(literal: &str) -> Result<String, FilterError> {
    let chars: Vec<char> = literal.chars().collect();
    let (s, end) = read_quoted(&chars, 0)?;
    if end != chars.len() {
        return Err(FilterError::new(format!(
            "Unexpected text after the string literal in `{literal}`."
        )));
    }
    Ok(s)
}

/// Escapes a value as an OData string literal (quotes added, `'` doubled).
///
/// ```
/// use cosell_sandbox::dataverse::filter::escape_string_literal;
/// assert_eq!(escape_string_literal("O'Brien"), "'O''Brien'");
/// ```
pub fn escape_string_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Reads a quoted literal starting at `start` (which must be `'`); returns the value and the
/// index after the closing quote.
fn read_quoted(chars: &[char], start: usize) -> Result<(String, usize), FilterError> {
    if chars.get(start) != Some(&'\'') {
        return Err(FilterError::new("A string literal must start with `'`."));
    }
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => {
                return Err(FilterError::new(
                    "Unterminated string literal: a closing `'` is missing.",
                ));
            }
            Some('\'') => {
                if chars.get(i + 1) == Some(&'\'') {
                    out.push('\'');
                    i += 2;
                } else {
                    return Ok((out, i + 1));
                }
            }
            Some(c) => {
                out.push(*c);
                i += 1;
            }
        }
    }
}

fn read_json_string(chars: &[char], start: usize) -> Result<(String, usize), FilterError> {
    // Find the closing quote honouring backslash escapes, then let serde_json decode it.
    let mut i = start + 1;
    let mut raw = String::from("\"");
    loop {
        match chars.get(i) {
            None => return Err(FilterError::new("Unterminated JSON string literal.")),
            Some('\\') => {
                raw.push('\\');
                match chars.get(i + 1) {
                    Some(c) => raw.push(*c),
                    None => return Err(FilterError::new("Unterminated JSON string literal.")),
                }
                i += 2;
            }
            Some('"') => {
                raw.push('"');
                let s: String = serde_json::from_str(&raw)
                    .map_err(|e| FilterError::new(format!("Invalid JSON string literal: {e}")))?;
                return Ok((s, i + 1));
            }
            Some(c) => {
                raw.push(*c);
                i += 1;
            }
        }
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '@' | '$')
}

/// Parses a bare (unquoted) token as a literal, if it is one.
fn bare_literal(word: &str) -> Option<Literal> {
    match word {
        "null" => return Some(Literal::Null),
        "true" => return Some(Literal::Bool(true)),
        "false" => return Some(Literal::Bool(false)),
        _ => {}
    }
    if word.len() == 36
        && let Ok(g) = Uuid::parse_str(word)
    {
        return Some(Literal::Guid(g));
    }
    if let Ok(d) = NaiveDate::parse_from_str(word, "%Y-%m-%d")
        && word.len() == 10
    {
        return Some(Literal::Date(d));
    }
    if word.contains('T')
        && let Ok(dt) = DateTime::parse_from_rfc3339(word)
    {
        return Some(Literal::DateTime(dt.with_timezone(&Utc)));
    }
    let first = word.chars().next()?;
    if first.is_ascii_digit() || first == '-' || first == '+' {
        let trimmed = word.trim_end_matches(['M', 'm', 'L', 'l', 'd', 'D', 'f', 'F']);
        if let Ok(n) = trimmed.parse::<f64>()
            && n.is_finite()
        {
            return Some(Literal::Number(n));
        }
    }
    None
}

fn tokenize(input: &str) -> Result<Vec<Tok>, FilterError> {
    let chars: Vec<char> = input.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                toks.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                toks.push(Tok::RParen);
                i += 1;
            }
            '[' => {
                toks.push(Tok::LBracket);
                i += 1;
            }
            ']' => {
                toks.push(Tok::RBracket);
                i += 1;
            }
            ',' => {
                toks.push(Tok::Comma);
                i += 1;
            }
            '=' => {
                toks.push(Tok::Equals);
                i += 1;
            }
            '\'' => {
                let (s, next) = read_quoted(&chars, i)?;
                toks.push(Tok::Str(s));
                i = next;
            }
            '"' => {
                let (s, next) = read_json_string(&chars, i)?;
                toks.push(Tok::JsonStr(s));
                i = next;
            }
            c if is_ident_char(c) || c == '-' || c == '+' || c == ':' => {
                let start = i;
                // Words may contain `-`, `:` and `+` so that GUIDs, dates and date-times stay
                // one token; identifiers never contain them.
                while i < chars.len()
                    && (is_ident_char(chars[i]) || matches!(chars[i], '-' | ':' | '+'))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                match bare_literal(&word) {
                    Some(lit) => toks.push(Tok::Lit(lit)),
                    None => {
                        if word.contains(['-', ':', '+']) {
                            return Err(FilterError::new(format!(
                                "Syntax error at position {start} in '{input}': unrecognized token `{word}`."
                            )));
                        }
                        toks.push(Tok::Ident(word));
                    }
                }
            }
            other => {
                return Err(FilterError::new(format!(
                    "Syntax error: character '{other}' is not valid at position {i} in '{input}'."
                )));
            }
        }
    }
    Ok(toks)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    aliases: &'a HashMap<String, String>,
    depth: usize,
}

const MAX_DEPTH: usize = 64;

/// Parses a `$filter` value. `aliases` holds parameter aliases (`@p1` → its raw value).
pub fn parse(input: &str, aliases: &HashMap<String, String>) -> Result<Expr, FilterError> {
    let toks = tokenize(input)?;
    if toks.is_empty() {
        return Err(FilterError::new("The $filter expression is empty."));
    }
    let mut p = Parser {
        toks,
        pos: 0,
        aliases,
        depth: 0,
    };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err(FilterError::new(format!(
            "Syntax error: unexpected token at position {} of the $filter expression.",
            p.pos
        )));
    }
    Ok(e)
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, want: &Tok, what: &str) -> Result<(), FilterError> {
        match self.next() {
            Some(ref t) if t == want => Ok(()),
            _ => Err(FilterError::new(format!("Syntax error: {what} expected."))),
        }
    }

    fn peek_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w == kw)
    }

    fn enter(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FilterError::new(
                "The $filter expression is nested too deeply.",
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        self.enter()?;
        let mut left = self.and()?;
        while self.peek_keyword("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.unary()?;
        while self.peek_keyword("and") {
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        if self.peek_keyword("not") {
            self.pos += 1;
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, FilterError> {
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            self.expect(&Tok::RParen, "`)`")?;
            return Ok(e);
        }
        // Function calls.
        if let Some(Tok::Ident(name)) = self.peek().cloned()
            && self.toks.get(self.pos + 1) == Some(&Tok::LParen)
        {
            self.pos += 2;
            return self.function(&name);
        }
        let left = self.operand()?;
        let op = match self.peek() {
            Some(Tok::Ident(w)) => match w.as_str() {
                "eq" => Some(CmpOp::Eq),
                "ne" => Some(CmpOp::Ne),
                "gt" => Some(CmpOp::Gt),
                "ge" => Some(CmpOp::Ge),
                "lt" => Some(CmpOp::Lt),
                "le" => Some(CmpOp::Le),
                "and" | "or" => None,
                other => {
                    return Err(FilterError::new(format!(
                        "Syntax error: unknown operator '{other}'."
                    )));
                }
            },
            _ => None,
        };
        match op {
            Some(op) => {
                self.pos += 1;
                let right = self.operand()?;
                Ok(Expr::Compare(left, op, right))
            }
            None => Ok(Expr::Value(left)),
        }
    }

    fn operand(&mut self) -> Result<Operand, FilterError> {
        match self.next() {
            Some(Tok::Ident(w)) if w.starts_with('@') => {
                let raw = self.aliases.get(&w).ok_or_else(|| {
                    FilterError::new(format!("The parameter alias '{w}' has no value."))
                })?;
                Ok(Operand::Literal(alias_literal(raw)?))
            }
            Some(Tok::Ident(w)) => {
                if w.contains('/') {
                    return Err(FilterError::new(format!(
                        "Filtering on the related property path '{w}' is not supported by the emulator."
                    )));
                }
                if w.contains(['.', '$']) || w.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                    return Err(FilterError::new(format!(
                        "Syntax error: '{w}' is not a valid property name."
                    )));
                }
                Ok(Operand::Property(w))
            }
            Some(Tok::Str(s)) => Ok(Operand::Literal(Literal::String(s))),
            Some(Tok::Lit(l)) => Ok(Operand::Literal(l)),
            _ => Err(FilterError::new(
                "Syntax error: a property name or a literal was expected.",
            )),
        }
    }

    fn string_arg(&mut self) -> Result<String, FilterError> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(s),
            Some(Tok::Ident(w)) if w.starts_with('@') => {
                let raw = self.aliases.get(&w).ok_or_else(|| {
                    FilterError::new(format!("The parameter alias '{w}' has no value."))
                })?;
                unescape_string_literal(raw.trim())
            }
            _ => Err(FilterError::new("A string literal was expected.")),
        }
    }

    fn function(&mut self, name: &str) -> Result<Expr, FilterError> {
        let str_fn = match name {
            "contains" => Some(StrFn::Contains),
            "startswith" => Some(StrFn::StartsWith),
            "endswith" => Some(StrFn::EndsWith),
            _ => None,
        };
        if let Some(f) = str_fn {
            let prop = match self.next() {
                Some(Tok::Ident(p)) if !p.starts_with('@') && !p.contains(['/', '.', '$']) => p,
                _ => {
                    return Err(FilterError::new(format!(
                        "The first argument of '{name}' must be a property name."
                    )));
                }
            };
            self.expect(&Tok::Comma, "`,`")?;
            let value = self.string_arg()?;
            self.expect(&Tok::RParen, "`)`")?;
            return Ok(Expr::StrFn(f, prop, value));
        }
        let (kind, negated) = match name {
            "Microsoft.Dynamics.CRM.In" => ("In", false),
            "Microsoft.Dynamics.CRM.NotIn" => ("In", true),
            "Microsoft.Dynamics.CRM.Between" => ("Between", false),
            "Microsoft.Dynamics.CRM.NotBetween" => ("Between", true),
            "In" | "NotIn" | "Between" | "NotBetween" => {
                return Err(FilterError::new(format!(
                    "Query functions must be fully qualified: use 'Microsoft.Dynamics.CRM.{name}'."
                )));
            }
            other => {
                return Err(FilterError::new(format!(
                    "The function '{other}' is not supported by the emulator."
                )));
            }
        };
        let mut property = None;
        let mut values = None;
        loop {
            let pname = match self.next() {
                Some(Tok::Ident(p)) => p,
                Some(Tok::RParen) if property.is_some() && values.is_some() => break,
                _ => return Err(FilterError::new(format!("Syntax error in '{name}'."))),
            };
            self.expect(&Tok::Equals, "`=`")?;
            match pname.as_str() {
                "PropertyName" => property = Some(self.string_arg()?),
                "PropertyValues" => values = Some(self.values_arg()?),
                other => {
                    return Err(FilterError::new(format!(
                        "'{other}' is not a parameter of '{name}'."
                    )));
                }
            }
            match self.next() {
                Some(Tok::Comma) => continue,
                Some(Tok::RParen) => break,
                _ => return Err(FilterError::new(format!("Syntax error in '{name}'."))),
            }
        }
        let (Some(property), Some(values)) = (property, values) else {
            return Err(FilterError::new(format!(
                "'{name}' needs PropertyName and PropertyValues."
            )));
        };
        if kind == "In" {
            if values.is_empty() {
                return Err(FilterError::new("PropertyValues must not be empty."));
            }
            return Ok(Expr::In {
                property,
                values,
                negated,
            });
        }
        let [low, high] = <[Literal; 2]>::try_from(values)
            .map_err(|_| FilterError::new(format!("'{name}' needs exactly two values.")))?;
        Ok(Expr::Between {
            property,
            low,
            high,
            negated,
        })
    }

    fn values_arg(&mut self) -> Result<Vec<Literal>, FilterError> {
        if let Some(Tok::Ident(w)) = self.peek().cloned()
            && w.starts_with('@')
        {
            self.pos += 1;
            let raw = self.aliases.get(&w).ok_or_else(|| {
                FilterError::new(format!("The parameter alias '{w}' has no value."))
            })?;
            let toks = tokenize(raw)?;
            let mut sub = Parser {
                toks,
                pos: 0,
                aliases: self.aliases,
                depth: self.depth,
            };
            let v = sub.values_arg()?;
            if sub.pos != sub.toks.len() {
                return Err(FilterError::new(format!("Invalid value of alias '{w}'.")));
            }
            return Ok(v);
        }
        self.expect(&Tok::LBracket, "`[`")?;
        let mut out = Vec::new();
        if self.peek() == Some(&Tok::RBracket) {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            match self.next() {
                Some(Tok::JsonStr(s)) | Some(Tok::Str(s)) => out.push(Literal::String(s)),
                Some(Tok::Lit(l)) => out.push(l),
                _ => return Err(FilterError::new("PropertyValues must be a list of values.")),
            }
            match self.next() {
                Some(Tok::Comma) => continue,
                Some(Tok::RBracket) => return Ok(out),
                _ => return Err(FilterError::new("Syntax error in PropertyValues.")),
            }
        }
    }
}

fn alias_literal(raw: &str) -> Result<Literal, FilterError> {
    let toks = tokenize(raw)?;
    match toks.as_slice() {
        [Tok::Str(s)] => Ok(Literal::String(s.clone())),
        [Tok::Lit(l)] => Ok(l.clone()),
        _ => Err(FilterError::new(format!(
            "The parameter alias value '{raw}' is not a literal."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Expr, FilterError> {
        parse(s, &HashMap::new())
    }

    #[test]
    fn parses_comparisons_and_logic() {
        let e = p("name eq 'O''Brien' and (estimatedvalue gt 10.5 or not statecode eq 1)").unwrap();
        let Expr::And(l, r) = e else { panic!() };
        assert_eq!(
            *l,
            Expr::Compare(
                Operand::Property("name".into()),
                CmpOp::Eq,
                Operand::Literal(Literal::String("O'Brien".into()))
            )
        );
        assert!(matches!(*r, Expr::Or(_, _)));
    }

    #[test]
    fn parses_guids_dates_and_null() {
        let e = p("_parentaccountid_value eq 7eb682f1-ca75-e511-80d4-00155d2a68d1").unwrap();
        assert!(matches!(
            e,
            Expr::Compare(_, CmpOp::Eq, Operand::Literal(Literal::Guid(_)))
        ));
        let e =
            p("estimatedclosedate le 2026-09-30 and modifiedon gt 2026-01-01T10:00:00Z").unwrap();
        assert!(matches!(e, Expr::And(_, _)));
        assert!(matches!(
            p("description eq null").unwrap(),
            Expr::Compare(_, _, Operand::Literal(Literal::Null))
        ));
        assert!(matches!(
            p("closeprobability ge -5").unwrap(),
            Expr::Compare(_, _, Operand::Literal(Literal::Number(n))) if n == -5.0
        ));
    }

    #[test]
    fn parses_in_with_json_values_and_aliases() {
        let e = p(r#"Microsoft.Dynamics.CRM.In(PropertyName='lastname',PropertyValues=["OBrian","O'Brian"])"#)
            .unwrap();
        assert_eq!(
            e,
            Expr::In {
                property: "lastname".into(),
                values: vec![
                    Literal::String("OBrian".into()),
                    Literal::String("O'Brian".into())
                ],
                negated: false
            }
        );
        let mut aliases = HashMap::new();
        aliases.insert("@p1".to_string(), "'lastname'".to_string());
        aliases.insert("@p2".to_string(), r#"["a","b"]"#.to_string());
        let e = parse(
            "Microsoft.Dynamics.CRM.In(PropertyName=@p1,PropertyValues=@p2)",
            &aliases,
        )
        .unwrap();
        assert!(matches!(e, Expr::In { ref values, .. } if values.len() == 2));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "",
            "name eq",
            "name eq 'x",
            "(name eq 'x'",
            "name xx 'a'",
            "contains(name)",
            "Microsoft.Dynamics.CRM.Above(PropertyName='x',PropertyValues=[\"1\"])",
            "In(PropertyName='x',PropertyValues=[\"1\"])",
            "primarycontactid/fullname eq 'x'",
            "name eq 'a' #",
            "))))",
            "not",
            "name eq 12-34",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        let deep = "(".repeat(500) + "a eq 1" + &")".repeat(500);
        assert!(p(&deep).is_err());
    }

    #[test]
    fn literal_round_trip() {
        for s in ["", "'", "''", "a'b''c", "ünïcødé ✓", "x eq 'y'"] {
            assert_eq!(
                unescape_string_literal(&escape_string_literal(s)).unwrap(),
                s
            );
        }
        assert!(unescape_string_literal("'a'b'").is_err());
    }
}
