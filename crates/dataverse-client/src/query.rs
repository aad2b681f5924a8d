//! Queries: a `$filter` expression builder with correct literal escaping, and the other query
//! options (`$select`, `$orderby`, `$top`, `$expand`, `$count`, page size).

use std::fmt::{self, Write as _};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use uuid::Uuid;

/// Escapes `value` as an OData string literal: wrapped in single quotes, each `'` doubled.
///
/// Nothing else is changed: non-ASCII text passes through and is percent-encoded (as UTF-8) when
/// the URL is built, as are `&`, `+`, `#` and `%`.
///
/// ```
/// use dataverse_client::escape_string_literal;
/// assert_eq!(escape_string_literal("Men's Shoes"), "'Men''s Shoes'");
/// assert_eq!(escape_string_literal("Zoë & Co"), "'Zoë & Co'");
/// ```
pub fn escape_string_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A literal value in a filter.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Literal {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A whole number (also choice values: `statecode eq 0`).
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A decimal written as given (`12.50`).
    Decimal(String),
    /// A string, quoted and escaped.
    String(String),
    /// A GUID, written unquoted (`_parentaccountid_value eq 7eb682f1-…`).
    Guid(Uuid),
    /// A date (`2026-09-30`), for DateOnly columns.
    Date(NaiveDate),
    /// A UTC date-time (`2026-09-30T10:00:00Z`).
    DateTime(DateTime<Utc>),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("null"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) if x.is_finite() => {
                if x.fract() == 0.0 && x.abs() < 1e15 {
                    write!(f, "{x:.1}")
                } else {
                    write!(f, "{x}")
                }
            }
            // OData has no literal for NaN/infinity that Dataverse accepts; null never matches.
            Literal::Float(_) => f.write_str("null"),
            Literal::Decimal(d) => f.write_str(d),
            Literal::String(s) => f.write_str(&escape_string_literal(s)),
            Literal::Guid(g) => write!(f, "{}", g.hyphenated()),
            Literal::Date(d) => write!(f, "{}", d.format("%Y-%m-%d")),
            Literal::DateTime(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        }
    }
}

macro_rules! literal_from {
    ($($t:ty => $v:ident $(as $conv:ty)?),+ $(,)?) => {
        $(impl From<$t> for Literal {
            fn from(x: $t) -> Self {
                Literal::$v(x $(as $conv)? .into())
            }
        })+
    };
}
literal_from!(
    bool => Bool,
    i64 => Int,
    i32 => Int,
    u32 => Int,
    f64 => Float,
    &str => String,
    String => String,
    Uuid => Guid,
    NaiveDate => Date,
    DateTime<Utc> => DateTime,
);

impl From<&String> for Literal {
    fn from(s: &String) -> Self {
        Literal::String(s.clone())
    }
}

impl<T: Into<Literal>> From<Option<T>> for Literal {
    fn from(v: Option<T>) -> Self {
        v.map_or(Literal::Null, Into::into)
    }
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Cmp {
    fn as_str(self) -> &'static str {
        match self {
            Cmp::Eq => "eq",
            Cmp::Ne => "ne",
            Cmp::Gt => "gt",
            Cmp::Ge => "ge",
            Cmp::Lt => "lt",
            Cmp::Le => "le",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Cmp(String, Cmp, Literal),
    Func(&'static str, String, String),
    In(String, Vec<String>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Group(Box<Node>),
    Raw(String),
}

/// A `$filter` expression.
///
/// Property names are written as given (they are case-sensitive logical names or lookup
/// properties such as `_parentaccountid_value`); literals are escaped. `and` binds tighter than
/// `or`, and the builder adds parentheses where the tree needs them.
///
/// ```
/// use dataverse_client::Filter;
/// let f = Filter::eq("statecode", 0)
///     .and(Filter::contains("name", "O'Neil").or(Filter::is_null("description")))
///     .and(Filter::is_in("address1_country", ["US", "CA"]).not());
/// assert_eq!(
///     f.to_string(),
///     "statecode eq 0 and (contains(name,'O''Neil') or description eq null) and \
///      not (Microsoft.Dynamics.CRM.In(PropertyName='address1_country',PropertyValues=[\"US\",\"CA\"]))"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(Node);

impl Filter {
    fn cmp(property: &str, op: Cmp, value: impl Into<Literal>) -> Self {
        Filter(Node::Cmp(property.to_string(), op, value.into()))
    }

    /// `property eq value`.
    pub fn eq(property: &str, value: impl Into<Literal>) -> Self {
        Self::cmp(property, Cmp::Eq, value)
    }

    /// `property ne value`.
    pub fn ne(property: &str, value: impl Into<Literal>) -> Self {
        Self::cmp(property, Cmp::Ne, value)
    }

    /// `property gt value`.
    pub fn gt(property: &str, value: impl Into<Literal>) -> Self {
        Self::cmp(property, Cmp::Gt, value)
    }

    /// `property ge value`.
    pub fn ge(property: &str, value: impl Into<Literal>) -> Self {
        Self::cmp(property, Cmp::Ge, value)
    }

    /// `property lt value`.
    pub fn lt(property: &str, value: impl Into<Literal>) -> Self {
        Self::cmp(property, Cmp::Lt, value)
    }

    /// `property le value`.
    pub fn le(property: &str, value: impl Into<Literal>) -> Self {
        Self::cmp(property, Cmp::Le, value)
    }

    /// `property eq null`.
    pub fn is_null(property: &str) -> Self {
        Self::eq(property, Literal::Null)
    }

    /// `property ne null`.
    pub fn is_not_null(property: &str) -> Self {
        Self::ne(property, Literal::Null)
    }

    /// `contains(property,'text')` (case-insensitive in Dataverse).
    pub fn contains(property: &str, text: &str) -> Self {
        Filter(Node::Func(
            "contains",
            property.to_string(),
            escape_string_literal(text),
        ))
    }

    /// `startswith(property,'text')`.
    pub fn starts_with(property: &str, text: &str) -> Self {
        Filter(Node::Func(
            "startswith",
            property.to_string(),
            escape_string_literal(text),
        ))
    }

    /// `endswith(property,'text')`.
    pub fn ends_with(property: &str, text: &str) -> Self {
        Filter(Node::Func(
            "endswith",
            property.to_string(),
            escape_string_literal(text),
        ))
    }

    /// `Microsoft.Dynamics.CRM.In(PropertyName='property',PropertyValues=["a","b"])`; values are
    /// JSON strings, so a `'` in a value needs no doubling.
    pub fn is_in<I, S>(property: &str, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Filter(Node::In(
            property.to_string(),
            values.into_iter().map(Into::into).collect(),
        ))
    }

    /// A hand-written expression, inserted as is (for functions the builder lacks, such as
    /// `Microsoft.Dynamics.CRM.LastXDays(PropertyName='createdon',PropertyValue=7)`). Escape string
    /// literals in it with [`escape_string_literal`].
    pub fn raw(expression: impl Into<String>) -> Self {
        Filter(Node::Raw(expression.into()))
    }

    /// `self and other`.
    pub fn and(self, other: Filter) -> Self {
        Filter(Node::And(Box::new(self.0), Box::new(other.0)))
    }

    /// `self or other`.
    pub fn or(self, other: Filter) -> Self {
        Filter(Node::Or(Box::new(self.0), Box::new(other.0)))
    }

    /// `not (self)`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Self {
        Filter(Node::Not(Box::new(self.0)))
    }

    /// `(self)`: explicit parentheses.
    pub fn group(self) -> Self {
        Filter(Node::Group(Box::new(self.0)))
    }

    /// All of `filters` joined with `and` (`None` when empty).
    pub fn all(filters: impl IntoIterator<Item = Filter>) -> Option<Self> {
        filters.into_iter().reduce(Filter::and)
    }

    /// Any of `filters` joined with `or` (`None` when empty).
    pub fn any(filters: impl IntoIterator<Item = Filter>) -> Option<Self> {
        filters.into_iter().reduce(Filter::or)
    }
}

fn write_node(node: &Node, out: &mut String) {
    match node {
        Node::Cmp(p, op, lit) => {
            let _ = write!(out, "{p} {} {lit}", op.as_str());
        }
        Node::Func(name, p, lit) => {
            let _ = write!(out, "{name}({p},{lit})");
        }
        Node::In(p, values) => {
            let _ = write!(
                out,
                "Microsoft.Dynamics.CRM.In(PropertyName={},PropertyValues=[",
                escape_string_literal(p)
            );
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // A JSON string: serde_json escapes `"` and `\`; it cannot fail for a &str.
                out.push_str(&serde_json::Value::String(v.clone()).to_string());
            }
            out.push_str("])");
        }
        Node::And(a, b) => {
            write_operand(a, out, true);
            out.push_str(" and ");
            write_operand(b, out, true);
        }
        Node::Or(a, b) => {
            write_operand(a, out, false);
            out.push_str(" or ");
            write_operand(b, out, false);
        }
        Node::Not(inner) => {
            out.push_str("not (");
            write_node(inner, out);
            out.push(')');
        }
        Node::Group(inner) => {
            out.push('(');
            write_node(inner, out);
            out.push(')');
        }
        Node::Raw(s) => out.push_str(s),
    }
}

fn write_operand(node: &Node, out: &mut String, inside_and: bool) {
    let needs_parens = match node {
        Node::Or(..) => inside_and,
        // A raw expression could contain `or`; keep its meaning.
        Node::Raw(_) => true,
        _ => false,
    };
    if needs_parens {
        out.push('(');
        write_node(node, out);
        out.push(')');
    } else {
        write_node(node, out);
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        write_node(&self.0, &mut out);
        f.write_str(&out)
    }
}

/// Sort direction for `$orderby`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Ascending (the default).
    #[default]
    Asc,
    /// Descending.
    Desc,
}

/// The options of a collection query.
///
/// ```
/// use dataverse_client::{Filter, Order, Query};
/// let q = Query::new()
///     .select(["name", "estimatedvalue"])
///     .filter(Filter::eq("statecode", 0))
///     .order_by("createdon", Order::Desc)
///     .top(10)
///     .expand("parentaccountid($select=name)");
/// assert_eq!(
///     q.to_query_string(),
///     "$select=name,estimatedvalue&$filter=statecode%20eq%200&$orderby=createdon%20desc&$top=10&$expand=parentaccountid($select=name)"
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    select: Vec<String>,
    filter: Option<Filter>,
    order_by: Vec<(String, Order)>,
    top: Option<u32>,
    expand: Vec<String>,
    count: bool,
    max_page_size: Option<u32>,
    annotations: Option<String>,
}

impl Query {
    /// An empty query (all columns, default page size).
    pub fn new() -> Self {
        Self::default()
    }

    /// `$select`: the columns to return (the primary key always comes back).
    pub fn select<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.select.extend(columns.into_iter().map(Into::into));
        self
    }

    /// `$filter` (replaces an earlier one; combine with [`Filter::and`]).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Adds a `$orderby` term.
    pub fn order_by(mut self, column: impl Into<String>, order: Order) -> Self {
        self.order_by.push((column.into(), order));
        self
    }

    /// `$top`. Dataverse ignores it when a page size is also set.
    pub fn top(mut self, n: u32) -> Self {
        self.top = Some(n);
        self
    }

    /// Adds a `$expand` item, written as given (`primarycontactid($select=fullname)`).
    pub fn expand(mut self, item: impl Into<String>) -> Self {
        self.expand.push(item.into());
        self
    }

    /// `$count=true`: pages carry `@odata.count` (capped at 5,000 by Dataverse).
    pub fn count(mut self, count: bool) -> Self {
        self.count = count;
        self
    }

    /// `Prefer: odata.maxpagesize=n` (at most 5,000); later pages are fetched from
    /// `@odata.nextLink` with the same preference.
    pub fn max_page_size(mut self, n: u32) -> Self {
        self.max_page_size = Some(n);
        self
    }

    /// `Prefer: odata.include-annotations="…"` (`*`, or a comma list such as
    /// `OData.Community.Display.V1.FormattedValue`).
    pub fn include_annotations(mut self, annotations: impl Into<String>) -> Self {
        self.annotations = Some(annotations.into());
        self
    }

    /// The query string, without the leading `?`, with values percent-encoded.
    pub fn to_query_string(&self) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if !self.select.is_empty() {
            pairs.push(("$select", self.select.join(",")));
        }
        if let Some(f) = &self.filter {
            pairs.push(("$filter", f.to_string()));
        }
        if !self.order_by.is_empty() {
            let terms: Vec<String> = self
                .order_by
                .iter()
                .map(|(c, o)| match o {
                    Order::Asc => format!("{c} asc"),
                    Order::Desc => format!("{c} desc"),
                })
                .collect();
            pairs.push(("$orderby", terms.join(",")));
        }
        if let Some(top) = self.top {
            pairs.push(("$top", top.to_string()));
        }
        if !self.expand.is_empty() {
            pairs.push(("$expand", self.expand.join(",")));
        }
        if self.count {
            pairs.push(("$count", "true".to_string()));
        }
        encode_pairs(&pairs)
    }

    /// The `Prefer` header value this query needs, if any.
    pub fn prefer(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(n) = self.max_page_size {
            parts.push(format!("odata.maxpagesize={n}"));
        }
        if let Some(a) = &self.annotations {
            parts.push(format!("odata.include-annotations=\"{a}\""));
        }
        (!parts.is_empty()).then(|| parts.join(","))
    }
}

/// Joins `name=value` pairs with `&`, percent-encoding the values (names are `$`-options and
/// stay literal).
pub(crate) fn encode_pairs(pairs: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(&encode_query_value(v));
    }
    out
}

/// Percent-encodes the ASCII characters that would change a query value's meaning or that an
/// HTTP request line cannot carry (space, `&`, `+`, `#`, `%`, quotes, brackets, controls, …).
/// Non-ASCII text is left for the `url` crate, which encodes it as UTF-8 when the URL is parsed.
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let keep = !c.is_ascii()
            || c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.'
                    | '_'
                    | '~'
                    | '$'
                    | '\''
                    | '('
                    | ')'
                    | '*'
                    | ','
                    | ';'
                    | ':'
                    | '@'
                    | '/'
                    | '!'
                    | '='
                    | '?'
            );
        if keep {
            out.push(c);
        } else {
            let _ = write!(out, "%{:02X}", c as u32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The inverse of [`escape_string_literal`], for the round-trip property.
    fn unescape(literal: &str) -> Option<String> {
        let inner = literal.strip_prefix('\'')?.strip_suffix('\'')?;
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                // Inside the quotes a `'` must be doubled.
                if chars.next() != Some('\'') {
                    return None;
                }
            }
            out.push(c);
        }
        Some(out)
    }

    #[test]
    fn escaping() {
        assert_eq!(escape_string_literal(""), "''");
        assert_eq!(escape_string_literal("'"), "''''");
        assert_eq!(escape_string_literal("O'Brien's"), "'O''Brien''s'");
        assert_eq!(escape_string_literal("日本"), "'日本'");
        assert_eq!(unescape("'a''b'").as_deref(), Some("a'b"));
        assert_eq!(unescape("'a'b'"), None);
    }

    #[test]
    fn literals() {
        let id = Uuid::parse_str("7eb682f1-ca75-e511-80d4-00155d2a68d1").unwrap();
        assert_eq!(
            Filter::eq("_parentaccountid_value", id).to_string(),
            "_parentaccountid_value eq 7eb682f1-ca75-e511-80d4-00155d2a68d1"
        );
        assert_eq!(
            Filter::ge(
                "estimatedclosedate",
                NaiveDate::from_ymd_opt(2026, 9, 30).unwrap()
            )
            .to_string(),
            "estimatedclosedate ge 2026-09-30"
        );
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            Filter::lt("modifiedon", t).to_string(),
            "modifiedon lt 2026-01-02T03:04:05Z"
        );
        assert_eq!(Filter::eq("x", 2.0).to_string(), "x eq 2.0");
        assert_eq!(Filter::eq("x", 2.5).to_string(), "x eq 2.5");
        assert_eq!(Filter::eq("x", f64::NAN).to_string(), "x eq null");
        assert_eq!(Filter::eq("x", true).to_string(), "x eq true");
        assert_eq!(Filter::ne("x", None::<i64>).to_string(), "x ne null");
        assert_eq!(
            Filter::starts_with("name", "a").to_string(),
            "startswith(name,'a')"
        );
        assert_eq!(
            Filter::ends_with("name", "a").to_string(),
            "endswith(name,'a')"
        );
        assert_eq!(
            Filter::is_in("lastname", ["OBrian", "O'Brian", "say \"hi\""]).to_string(),
            r#"Microsoft.Dynamics.CRM.In(PropertyName='lastname',PropertyValues=["OBrian","O'Brian","say \"hi\""])"#
        );
    }

    #[test]
    fn grouping() {
        let a = || Filter::eq("a", 1);
        let b = || Filter::eq("b", 2);
        let c = || Filter::eq("c", 3);
        assert_eq!(
            a().or(b()).and(c()).to_string(),
            "(a eq 1 or b eq 2) and c eq 3"
        );
        assert_eq!(
            a().and(b()).or(c()).to_string(),
            "a eq 1 and b eq 2 or c eq 3"
        );
        assert_eq!(
            a().or(b().and(c())).to_string(),
            "a eq 1 or b eq 2 and c eq 3"
        );
        assert_eq!(a().and(b()).group().to_string(), "(a eq 1 and b eq 2)");
        assert_eq!(
            Filter::raw("x or y").and(a()).to_string(),
            "(x or y) and a eq 1"
        );
        assert_eq!(a().not().to_string(), "not (a eq 1)");
        assert_eq!(Filter::all([]), None);
        assert_eq!(
            Filter::any([a(), b(), c()]).unwrap().to_string(),
            "a eq 1 or b eq 2 or c eq 3"
        );
    }

    #[test]
    fn query_string_encoding() {
        let q = Query::new()
            .filter(Filter::eq("name", "A&B+C #1 100% ü"))
            .count(true);
        assert_eq!(
            q.to_query_string(),
            "$filter=name%20eq%20'A%26B%2BC%20%231%20100%25%20ü'&$count=true"
        );
        // The url crate takes it from there: non-ASCII becomes UTF-8 percent-encoding.
        let mut url = url::Url::parse("https://x.crm.dynamics.com/api/data/v9.2/accounts").unwrap();
        url.set_query(Some(&q.to_query_string()));
        assert!(url.as_str().contains("%C3%BC"), "{url}");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs[0].1, "name eq 'A&B+C #1 100% ü'");
        assert_eq!(
            Query::new()
                .max_page_size(50)
                .include_annotations("*")
                .prefer(),
            Some("odata.maxpagesize=50,odata.include-annotations=\"*\"".into())
        );
        assert_eq!(Query::new().prefer(), None);
    }

    proptest! {
        #[test]
        fn escape_round_trips(s in any::<String>()) {
            let lit = escape_string_literal(&s);
            prop_assert_eq!(unescape(&lit), Some(s.clone()));
            // And through the URL: encode, parse back with a form decoder, unescape.
            let mut url = url::Url::parse("https://x.example/api/data/v9.2/a").unwrap();
            url.set_query(Some(&format!("$filter={}", encode_query_value(&format!("name eq {lit}")))));
            let decoded: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            prop_assert_eq!(decoded.len(), 1);
            let expr = decoded[0].1.strip_prefix("name eq ").map(str::to_string);
            prop_assert_eq!(expr.as_deref().and_then(unescape), Some(s));
        }
    }
}
