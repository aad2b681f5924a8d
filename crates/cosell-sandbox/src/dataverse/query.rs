//! Binding a parsed `$filter` to a table (property and type checks) and evaluating it;
//! `$select`, `$orderby` and `$expand` parsing; value comparison.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::error::{DvError, DvResult};
use super::filter::{CmpOp, Expr, Literal, Operand, StrFn};
use super::request::split_outside_quotes;
use super::schema::ColumnType;
use super::store::{Row, Table, TableData};
use uuid::Uuid as RowId;

/// How a property's values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Num,
    Bool,
    Guid,
    Date,
    DateTime,
}

impl Kind {
    pub(crate) fn of(t: &ColumnType) -> Kind {
        match t {
            ColumnType::Boolean => Kind::Bool,
            ColumnType::Uniqueidentifier | ColumnType::Lookup { .. } => Kind::Guid,
            ColumnType::DateOnly => Kind::Date,
            ColumnType::DateTime => Kind::DateTime,
            t if t.is_text() => Kind::Text,
            _ => Kind::Num,
        }
    }

    fn edm(self) -> &'static str {
        match self {
            Kind::Text => "Edm.String",
            Kind::Num => "Edm.Decimal",
            Kind::Bool => "Edm.Boolean",
            Kind::Guid => "Edm.Guid",
            Kind::Date => "Edm.Date",
            Kind::DateTime => "Edm.DateTimeOffset",
        }
    }
}

/// A comparable value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum V {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Guid(Uuid),
    Date(NaiveDate),
    DateTime(DateTime<Utc>),
}

impl V {
    /// A stored JSON value read as `kind`.
    pub(crate) fn from_json(v: Option<&Value>, kind: Kind) -> V {
        let Some(v) = v else { return V::Null };
        match (kind, v) {
            (_, Value::Null) => V::Null,
            (Kind::Bool, Value::Bool(b)) => V::Bool(*b),
            (Kind::Num, Value::Number(n)) => n.as_f64().map_or(V::Null, V::Num),
            (Kind::Text, Value::String(s)) => V::Str(s.clone()),
            (Kind::Guid, Value::String(s)) => Uuid::parse_str(s).map_or(V::Null, V::Guid),
            (Kind::Date, Value::String(s)) => {
                NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d")
                    .map_or(V::Null, V::Date)
            }
            (Kind::DateTime, Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map_or(V::Null, |d| V::DateTime(d.with_timezone(&Utc))),
            (_, Value::String(s)) => V::Str(s.clone()),
            (_, Value::Number(n)) => n.as_f64().map_or(V::Null, V::Num),
            (_, Value::Bool(b)) => V::Bool(*b),
            _ => V::Null,
        }
    }

    fn from_literal(l: &Literal) -> V {
        match l {
            Literal::Null => V::Null,
            Literal::Bool(b) => V::Bool(*b),
            Literal::Number(n) => V::Num(*n),
            Literal::String(s) => V::Str(s.clone()),
            Literal::Guid(g) => V::Guid(*g),
            Literal::Date(d) => V::Date(*d),
            Literal::DateTime(d) => V::DateTime(*d),
        }
    }

    /// Ordering for `$orderby` and comparisons; `None` when not comparable. Text compares
    /// case-insensitively, as Dataverse's collation does.
    pub(crate) fn compare(&self, other: &V) -> Option<Ordering> {
        match (self, other) {
            (V::Null, V::Null) => Some(Ordering::Equal),
            (V::Null, _) => Some(Ordering::Less),
            (_, V::Null) => Some(Ordering::Greater),
            (V::Bool(a), V::Bool(b)) => Some(a.cmp(b)),
            (V::Num(a), V::Num(b)) => a.partial_cmp(b),
            (V::Str(a), V::Str(b)) => Some(fold(a).cmp(&fold(b))),
            (V::Guid(a), V::Guid(b)) => Some(a.cmp(b)),
            (V::Date(a), V::Date(b)) => Some(a.cmp(b)),
            (V::DateTime(a), V::DateTime(b)) => Some(a.cmp(b)),
            (V::Date(a), V::DateTime(b)) => Some(a.cmp(&b.date_naive())),
            (V::DateTime(a), V::Date(b)) => Some(a.date_naive().cmp(b)),
            _ => None,
        }
    }
}

/// Case folding for comparisons.
pub(crate) fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// Coerces a literal to the kind of the property it is compared with.
fn coerce(l: &Literal, kind: Kind, property: &str) -> DvResult<V> {
    let mismatch = |found: &str| {
        DvError::odata(format!(
            "A binary operator with incompatible types was detected. Found operand types '{}' and '{found}' for the property '{property}'.",
            kind.edm()
        ))
    };
    Ok(match (kind, l) {
        (_, Literal::Null) => V::Null,
        (Kind::Text, Literal::String(s)) => V::Str(s.clone()),
        (Kind::Text, Literal::Guid(g)) => V::Str(g.to_string()),
        (Kind::Text, Literal::Date(d)) => V::Str(d.to_string()),
        (Kind::Num, Literal::Number(n)) => V::Num(*n),
        (Kind::Bool, Literal::Bool(b)) => V::Bool(*b),
        (Kind::Guid, Literal::Guid(g)) => V::Guid(*g),
        (Kind::Guid, Literal::String(s)) => V::Guid(
            Uuid::parse_str(s.trim_start_matches('{').trim_end_matches('}'))
                .map_err(|_| mismatch("Edm.String"))?,
        ),
        (Kind::Date, Literal::Date(d)) => V::Date(*d),
        (Kind::Date, Literal::DateTime(d)) => V::Date(d.date_naive()),
        (Kind::Date, Literal::String(s)) => V::Date(
            NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d")
                .map_err(|_| mismatch("Edm.String"))?,
        ),
        (Kind::DateTime, Literal::DateTime(d)) => V::DateTime(*d),
        (Kind::DateTime, Literal::Date(d)) => {
            V::DateTime(d.and_time(chrono::NaiveTime::MIN).and_utc())
        }
        (Kind::DateTime, Literal::String(s)) => V::DateTime(
            DateTime::parse_from_rfc3339(s)
                .map_err(|_| mismatch("Edm.String"))?
                .with_timezone(&Utc),
        ),
        (_, Literal::String(_)) => return Err(mismatch("Edm.String")),
        (_, Literal::Number(_)) => return Err(mismatch("Edm.Decimal")),
        (_, Literal::Bool(_)) => return Err(mismatch("Edm.Boolean")),
        (_, Literal::Guid(_)) => return Err(mismatch("Edm.Guid")),
        (_, Literal::Date(_)) => return Err(mismatch("Edm.Date")),
        (_, Literal::DateTime(_)) => return Err(mismatch("Edm.DateTimeOffset")),
    })
}

#[derive(Debug, Clone)]
pub(crate) enum BOperand {
    Prop(String, Kind),
    Const(V),
}

/// A `$filter` checked against a table, literals coerced to the compared properties' types.
#[derive(Debug, Clone)]
pub(crate) enum Bound {
    And(Box<Bound>, Box<Bound>),
    Or(Box<Bound>, Box<Bound>),
    Not(Box<Bound>),
    Cmp(BOperand, CmpOp, BOperand),
    Str(StrFn, String, String),
    In(String, Kind, Vec<V>, bool),
    Between(String, Kind, V, V, bool),
    Value(BOperand),
}

fn prop_kind(table: &Table, p: &str) -> DvResult<Kind> {
    table
        .prop(p)
        .map(|c| Kind::of(&c.column_type))
        .ok_or_else(|| DvError::unknown_property(p, table.logical()))
}

/// Checks every property exists and every literal fits.
pub(crate) fn bind(table: &Table, e: &Expr) -> DvResult<Bound> {
    Ok(match e {
        Expr::And(a, b) => Bound::And(Box::new(bind(table, a)?), Box::new(bind(table, b)?)),
        Expr::Or(a, b) => Bound::Or(Box::new(bind(table, a)?), Box::new(bind(table, b)?)),
        Expr::Not(a) => Bound::Not(Box::new(bind(table, a)?)),
        Expr::Compare(l, op, r) => {
            let (l, r) = match (l, r) {
                (Operand::Property(a), Operand::Property(b)) => {
                    let (ka, kb) = (prop_kind(table, a)?, prop_kind(table, b)?);
                    if ka != kb {
                        return Err(DvError::odata(format!(
                            "A binary operator with incompatible types was detected. Found operand types '{}' and '{}'.",
                            ka.edm(),
                            kb.edm()
                        )));
                    }
                    (BOperand::Prop(a.clone(), ka), BOperand::Prop(b.clone(), kb))
                }
                (Operand::Property(a), Operand::Literal(lit)) => {
                    let k = prop_kind(table, a)?;
                    (
                        BOperand::Prop(a.clone(), k),
                        BOperand::Const(coerce(lit, k, a)?),
                    )
                }
                (Operand::Literal(lit), Operand::Property(b)) => {
                    let k = prop_kind(table, b)?;
                    (
                        BOperand::Const(coerce(lit, k, b)?),
                        BOperand::Prop(b.clone(), k),
                    )
                }
                (Operand::Literal(a), Operand::Literal(b)) => (
                    BOperand::Const(V::from_literal(a)),
                    BOperand::Const(V::from_literal(b)),
                ),
            };
            Bound::Cmp(l, *op, r)
        }
        Expr::StrFn(f, p, v) => {
            if prop_kind(table, p)? != Kind::Text {
                return Err(DvError::odata(format!(
                    "The function '{}' needs a string property; '{p}' is not one.",
                    match f {
                        StrFn::Contains => "contains",
                        StrFn::StartsWith => "startswith",
                        StrFn::EndsWith => "endswith",
                    }
                )));
            }
            Bound::Str(*f, p.clone(), fold(v))
        }
        Expr::In {
            property,
            values,
            negated,
        } => {
            let k = prop_kind(table, property)?;
            let vs = values
                .iter()
                .map(|v| coerce_in_value(v, k, property))
                .collect::<DvResult<Vec<_>>>()?;
            Bound::In(property.clone(), k, vs, *negated)
        }
        Expr::Between {
            property,
            low,
            high,
            negated,
        } => {
            let k = prop_kind(table, property)?;
            Bound::Between(
                property.clone(),
                k,
                coerce_in_value(low, k, property)?,
                coerce_in_value(high, k, property)?,
                *negated,
            )
        }
        Expr::Value(Operand::Property(p)) => {
            let k = prop_kind(table, p)?;
            if k != Kind::Bool {
                return Err(DvError::odata(format!(
                    "The $filter expression must evaluate to a boolean; '{p}' is not a Yes/No property."
                )));
            }
            Bound::Value(BOperand::Prop(p.clone(), k))
        }
        Expr::Value(Operand::Literal(Literal::Bool(b))) => {
            Bound::Value(BOperand::Const(V::Bool(*b)))
        }
        Expr::Value(Operand::Literal(_)) => {
            return Err(DvError::odata(
                "The $filter expression must evaluate to a boolean.",
            ));
        }
    })
}

/// `PropertyValues` are JSON strings even for numbers (`["5","2000"]`).
fn coerce_in_value(l: &Literal, kind: Kind, property: &str) -> DvResult<V> {
    match (kind, l) {
        (Kind::Num, Literal::String(s)) => {
            s.trim().parse::<f64>().map(V::Num).map_err(|_| {
                DvError::odata(format!("'{s}' is not a valid value for '{property}'."))
            })
        }
        (Kind::Bool, Literal::String(s)) => match s.as_str() {
            "true" | "1" => Ok(V::Bool(true)),
            "false" | "0" => Ok(V::Bool(false)),
            _ => Err(DvError::odata(format!(
                "'{s}' is not a valid value for '{property}'."
            ))),
        },
        _ => coerce(l, kind, property),
    }
}

fn operand(row: &Row, o: &BOperand) -> V {
    match o {
        BOperand::Prop(p, k) => V::from_json(row.get(p), *k),
        BOperand::Const(v) => v.clone(),
    }
}

fn equal(a: &V, b: &V) -> bool {
    match (a, b) {
        (V::Null, V::Null) => true,
        (V::Null, _) | (_, V::Null) => false,
        _ => a.compare(b) == Some(Ordering::Equal),
    }
}

/// Evaluates a bound filter on a row.
pub(crate) fn eval(row: &Row, e: &Bound) -> bool {
    match e {
        Bound::And(a, b) => eval(row, a) && eval(row, b),
        Bound::Or(a, b) => eval(row, a) || eval(row, b),
        Bound::Not(a) => !eval(row, a),
        Bound::Cmp(l, op, r) => {
            let (a, b) = (operand(row, l), operand(row, r));
            match op {
                CmpOp::Eq => equal(&a, &b),
                CmpOp::Ne => !equal(&a, &b),
                _ if a == V::Null || b == V::Null => false,
                CmpOp::Gt => a.compare(&b) == Some(Ordering::Greater),
                CmpOp::Ge => matches!(a.compare(&b), Some(Ordering::Greater | Ordering::Equal)),
                CmpOp::Lt => a.compare(&b) == Some(Ordering::Less),
                CmpOp::Le => matches!(a.compare(&b), Some(Ordering::Less | Ordering::Equal)),
            }
        }
        Bound::Str(f, p, needle) => match row.get(p) {
            Some(Value::String(s)) => {
                let hay = fold(s);
                match f {
                    StrFn::Contains => hay.contains(needle.as_str()),
                    StrFn::StartsWith => hay.starts_with(needle.as_str()),
                    StrFn::EndsWith => hay.ends_with(needle.as_str()),
                }
            }
            _ => false,
        },
        Bound::In(p, k, vs, negated) => {
            let v = V::from_json(row.get(p), *k);
            vs.iter().any(|x| equal(&v, x)) != *negated
        }
        Bound::Between(p, k, lo, hi, negated) => {
            let v = V::from_json(row.get(p), *k);
            let inside = v != V::Null
                && matches!(v.compare(lo), Some(Ordering::Greater | Ordering::Equal))
                && matches!(v.compare(hi), Some(Ordering::Less | Ordering::Equal));
            inside != *negated
        }
        Bound::Value(o) => operand(row, o) == V::Bool(true),
    }
}

/// Ids (ascending) of the rows that can satisfy `e` by the table's equality indexes, or `None`
/// when the indexes cannot narrow it down and the table must be scanned. A superset: callers
/// still evaluate the whole filter on each candidate, so indexed and scanned results agree.
pub(crate) fn candidates(data: &TableData, e: &Bound) -> Option<Vec<RowId>> {
    let eq =
        |p: &str, v: &V| -> Option<Vec<RowId>> { Some(data.indexes.get(p)?.lookup(v)?.to_vec()) };
    match e {
        Bound::And(a, b) => match (candidates(data, a), candidates(data, b)) {
            (Some(x), Some(y)) => Some(intersect(&x, &y)),
            (Some(x), None) | (None, Some(x)) => Some(x),
            (None, None) => None,
        },
        Bound::Or(a, b) => Some(union(&candidates(data, a)?, &candidates(data, b)?)),
        Bound::Cmp(BOperand::Prop(p, _), CmpOp::Eq, BOperand::Const(v))
        | Bound::Cmp(BOperand::Const(v), CmpOp::Eq, BOperand::Prop(p, _)) => eq(p, v),
        Bound::In(p, _, vs, false) => vs
            .iter()
            .try_fold(Vec::new(), |acc, v| Some(union(&acc, &eq(p, v)?))),
        _ => None,
    }
}

/// The properties `e` compares for equality where [`candidates`] could use an index (the
/// store indexes them on first use, so what a client actually looks up stays flat in N).
pub(crate) fn eq_properties(e: &Bound, out: &mut Vec<(String, Kind)>) {
    match e {
        Bound::And(a, b) | Bound::Or(a, b) => {
            eq_properties(a, out);
            eq_properties(b, out);
        }
        Bound::Cmp(BOperand::Prop(p, k), CmpOp::Eq, BOperand::Const(_))
        | Bound::Cmp(BOperand::Const(_), CmpOp::Eq, BOperand::Prop(p, k))
        | Bound::In(p, k, _, false)
            if !out.iter().any(|(q, _)| q == p) =>
        {
            out.push((p.clone(), *k));
        }
        _ => {}
    }
}

fn intersect(a: &[RowId], b: &[RowId]) -> Vec<RowId> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small
        .iter()
        .filter(|id| large.binary_search(id).is_ok())
        .copied()
        .collect()
}

fn union(a: &[RowId], b: &[RowId]) -> Vec<RowId> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The rows of a table matching `filter` (all rows without one), in primary-key order: through
/// the equality indexes when they narrow the filter, else by a scan.
pub(crate) fn filter_rows<'d>(data: &'d TableData, filter: Option<&Bound>) -> Vec<&'d Row> {
    let Some(b) = filter else {
        return data.rows.values().collect();
    };
    match candidates(data, b) {
        Some(ids) => ids
            .iter()
            .filter_map(|id| data.rows.get(id))
            .filter(|r| eval(r, b))
            .collect(),
        None => scan_rows(data, b),
    }
}

/// [`filter_rows`] without the indexes (the reference the indexed path must agree with).
pub(crate) fn scan_rows<'d>(data: &'d TableData, filter: &Bound) -> Vec<&'d Row> {
    data.rows.values().filter(|r| eval(r, filter)).collect()
}

/// `$select`: property names, checked.
pub(crate) fn parse_select(table: &Table, s: &str) -> DvResult<Vec<String>> {
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if table.prop(p).is_none() {
            return Err(DvError::unknown_property(p, table.logical()));
        }
        if !out.iter().any(|x: &String| x == p) {
            out.push(p.to_string());
        }
    }
    Ok(out)
}

/// `$orderby`: `(property, descending)` pairs, checked.
pub(crate) fn parse_orderby(table: &Table, s: &str) -> DvResult<Vec<(String, Kind, bool)>> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut words = item.split_whitespace();
        let p = words.next().unwrap_or("");
        let desc = match words.next() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => {
                return Err(DvError::odata(format!(
                    "Syntax error: '{other}' is not valid in $orderby; use asc or desc."
                )));
            }
        };
        if words.next().is_some() {
            return Err(DvError::odata(format!(
                "Syntax error in $orderby at '{item}'."
            )));
        }
        let col = table
            .prop(p)
            .ok_or_else(|| DvError::unknown_property(p, table.logical()))?;
        out.push((p.to_string(), Kind::of(&col.column_type), desc));
    }
    Ok(out)
}

/// Sorts rows by `$orderby` (stable; nulls first ascending).
pub(crate) fn sort_rows(rows: &mut [&Row], order: &[(String, Kind, bool)]) {
    rows.sort_by(|a, b| {
        for (p, k, desc) in order {
            let o = V::from_json(a.get(p), *k)
                .compare(&V::from_json(b.get(p), *k))
                .unwrap_or(Ordering::Equal);
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
}

/// One `$expand` item.
#[derive(Debug, Clone)]
pub(crate) struct ExpandItem {
    pub(crate) nav: String,
    pub(crate) select: Option<String>,
}

/// `$expand=nav($select=a,b),other`; only `$select` is supported inside.
pub(crate) fn parse_expand(s: &str) -> DvResult<Vec<ExpandItem>> {
    let mut out = Vec::new();
    for item in split_outside_quotes(s, ',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (nav, opts) = match item.find('(') {
            Some(i) if item.ends_with(')') => (&item[..i], Some(&item[i + 1..item.len() - 1])),
            Some(_) => {
                return Err(DvError::odata(format!(
                    "Syntax error in $expand at '{item}'."
                )));
            }
            None => (item, None),
        };
        let mut select = None;
        if let Some(opts) = opts {
            for opt in split_outside_quotes(opts, ';') {
                match opt.trim().split_once('=') {
                    Some(("$select", v)) => select = Some(v.to_string()),
                    Some((name, _)) => {
                        return Err(DvError::odata(format!(
                            "The query option '{name}' inside $expand is not supported by the emulator."
                        )));
                    }
                    None if opt.trim().is_empty() => {}
                    None => {
                        return Err(DvError::odata(format!(
                            "Syntax error in $expand at '{opt}'."
                        )));
                    }
                }
            }
        }
        out.push(ExpandItem {
            nav: nav.trim().to_string(),
            select,
        });
    }
    if out.len() > 15 {
        return Err(DvError::odata(
            "A query can include at most 15 $expand options.",
        ));
    }
    Ok(out)
}
