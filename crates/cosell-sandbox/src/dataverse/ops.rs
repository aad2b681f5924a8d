//! The operations: routing of one request (plain or a `$batch` part) to CRUD, upsert,
//! queries, change tracking, N:N associations, property and `$ref` operations.

use std::collections::HashMap;

use axum::http::{Method, StatusCode};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::error::{DvError, DvResult, codes};
use super::filter::{self, Literal};
use super::query::{self, ExpandItem, Kind, V};
use super::request::{
    KeySpec, OpBody, OpRequest, OpResponse, Prefer, Segment, header, parse_key, percent_decode,
    percent_encode, query_pairs, query_without, segments,
};
use super::schema::{ColumnDef, ColumnType};
use super::store::{CollectionNav, LOOKUP_LOGICAL_NAME, Model, Row, Store, Table, TableData};
use super::{actions, metadata};

/// Fixed identities answered by `WhoAmI`.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) user_id: Uuid,
    pub(crate) business_unit_id: Uuid,
    pub(crate) organization_id: Uuid,
}

/// What an operation runs against.
pub(crate) struct Ctx<'a> {
    pub(crate) model: &'a Model,
    pub(crate) store: &'a mut Store,
    /// `http://host:port/api/data/v9.2/`
    pub(crate) api_base: &'a str,
    /// `$n` → entity URL, inside a change set.
    pub(crate) content_ids: &'a HashMap<String, String>,
    pub(crate) identity: &'a Identity,
}

const JSON: &str = "application/json; odata.metadata=minimal";
/// Most rows one response (or `$count`) returns.
pub(crate) const MAX_PAGE: usize = 5000;

/// Runs one operation; errors become error responses.
pub(crate) fn execute(ctx: &mut Ctx<'_>, req: &OpRequest) -> OpResponse {
    match dispatch(ctx, req) {
        Ok(r) => r,
        Err(e) => OpResponse::error(&e),
    }
}

fn dispatch(ctx: &mut Ctx<'_>, req: &OpRequest) -> DvResult<OpResponse> {
    let model: &Model = ctx.model;
    let decoded = percent_decode(&req.path);
    let segs = segments(&decoded)?;
    let prefer = Prefer::parse(&req.headers);
    let pairs = query_pairs(&req.query);
    let Some((first, rest)) = segs.split_first() else {
        return only(&req.method, &[Method::GET]).map(|()| service_document(ctx));
    };
    match (first.name.as_str(), first.args.as_deref(), rest) {
        ("$batch", None, []) => {
            return Err(DvError::odata(
                "A $batch request cannot be nested in a batch.",
            ));
        }
        ("$metadata", None, []) => {
            only(&req.method, &[Method::GET])?;
            return Ok(metadata::csdl(model));
        }
        ("WhoAmI", None | Some(""), []) => {
            // Source: "Troubleshoot Dataverse Web API client errors" (D-CLIENTERR): WhoAmI is a
            // function, so `POST WhoAmI` is 404, code "", "No HTTP resource was found …".
            if req.method != Method::GET {
                let url = format!("{}{}", ctx.api_base, req.path);
                return Err(DvError::no_http_resource(&url));
            }
            return Ok(actions::who_am_i(ctx));
        }
        ("WinOpportunity" | "LoseOpportunity", None, []) => {
            only(&req.method, &[Method::POST])?;
            let win = first.name == "WinOpportunity";
            let body = json_body(req, "opportunity")?;
            return atomic(ctx, |ctx| actions::close_opportunity(ctx, &body, win));
        }
        ("EntityDefinitions", args, rest) => {
            let table = args.map(metadata::logical_name_arg).transpose()?;
            return match (&req.method, table.as_deref(), rest) {
                (&Method::GET, _, _) => metadata::entity_definitions(ctx, args, rest, &pairs),
                (&Method::POST, None, []) => metadata::create_table(ctx, req),
                (&Method::POST, Some(t), [seg])
                    if seg.name == "Attributes" && seg.args.is_none() =>
                {
                    metadata::create_column(ctx, t, req)
                }
                (&Method::POST, Some(t), [seg]) if seg.name == "Keys" && seg.args.is_none() => {
                    metadata::create_key(ctx, t, req)
                }
                (&Method::PUT, Some(t), []) => metadata::update_table(ctx, t, req),
                _ => Err(DvError::method_not_allowed(format!(
                    "The HTTP method '{}' is not allowed on this metadata resource.",
                    req.method
                ))),
            };
        }
        ("systemusers", Some(user), [f])
            if f.name == "Microsoft.Dynamics.CRM.RetrievePrincipalAccess" =>
        {
            only(&req.method, &[Method::GET])?;
            return actions::retrieve_principal_access(
                ctx,
                user,
                f.args.as_deref().unwrap_or(""),
                &pairs,
            );
        }
        ("RelationshipDefinitions", None, []) => {
            only(&req.method, &[Method::POST])?;
            return metadata::create_relationship(ctx, req);
        }
        ("PublishXml" | "PublishAllXml", None, []) => {
            only(&req.method, &[Method::POST])?;
            return metadata::publish(ctx, first.name == "PublishAllXml", req);
        }
        ("ReactivateEntityKey", None, []) => {
            only(&req.method, &[Method::POST])?;
            return metadata::reactivate_key(ctx, req);
        }
        _ => {}
    }
    let Some(table) = model.table_by_set(&first.name) else {
        return Err(DvError::unknown_segment(&first.text()));
    };
    let Some(args) = first.args.as_deref() else {
        return match rest {
            [] => match req.method {
                Method::GET => list(ctx, table, req, &pairs, &prefer),
                Method::POST => create(ctx, table, req, &pairs, &prefer),
                _ => Err(DvError::method_not_allowed(format!(
                    "The HTTP method '{}' is not allowed on the entity set '{}'.",
                    req.method,
                    table.set()
                ))),
            },
            [c] if c.name == "$count" && c.args.is_none() => {
                only(&req.method, &[Method::GET])?;
                count(ctx, table, &pairs)
            }
            [other, ..] => Err(DvError::unknown_segment(&other.text())),
        };
    };
    let addr = address(table, args)?;
    ensure_key_active(ctx, table, &addr)?;
    match rest {
        [] => match req.method {
            Method::GET => get_one(ctx, table, &addr, req, &pairs, &prefer),
            Method::PATCH => upsert(ctx, table, &addr, args, req, &pairs, &prefer),
            Method::DELETE => delete(ctx, table, &addr, req),
            _ => Err(DvError::method_not_allowed(format!(
                "The HTTP method '{}' is not allowed on a single {} row; use PATCH to update.",
                req.method,
                table.logical()
            ))),
        },
        [action]
            if action.name == "Microsoft.Dynamics.CRM.QualifyLead" && action.args.is_none() =>
        {
            only(&req.method, &[Method::POST])?;
            if table.logical() != "lead" {
                return Err(DvError::odata(
                    "The bound action QualifyLead is bound to lead, not to this table.",
                ));
            }
            let id = find_or_404(ctx, table, &addr)?;
            let body = json_body(req, "lead")?;
            atomic(ctx, |ctx| actions::qualify_lead(ctx, id, &body))
        }
        [action] if action.name == "QualifyLead" => Err(DvError::odata(
            "Request message has unresolved parameters: bound actions need the 'Microsoft.Dynamics.CRM.' namespace.",
        )),
        [prop] => property_op(ctx, table, &addr, prop, req, &pairs),
        [nav, r] if r.name == "$ref" && r.args.is_none() => {
            ref_op(ctx, table, &addr, nav, req, &pairs)
        }
        [_, other, ..] => Err(DvError::unknown_segment(&other.text())),
    }
}

fn only(method: &Method, allowed: &[Method]) -> DvResult<()> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(DvError::method_not_allowed(format!(
            "The HTTP method '{method}' is not allowed on this resource."
        )))
    }
}

/// Runs `f` atomically unless a change set already does.
pub(crate) fn atomic<T>(
    ctx: &mut Ctx<'_>,
    f: impl FnOnce(&mut Ctx<'_>) -> DvResult<T>,
) -> DvResult<T> {
    if ctx.store.in_transaction() {
        return f(ctx);
    }
    ctx.store.begin();
    match f(ctx) {
        Ok(v) => {
            ctx.store.commit();
            Ok(v)
        }
        Err(e) => {
            ctx.store.rollback();
            Err(e)
        }
    }
}

fn service_document(ctx: &Ctx<'_>) -> OpResponse {
    let value: Vec<Value> = ctx
        .model
        .tables
        .values()
        .map(|t| json!({"name": t.set(), "kind": "EntitySet", "url": t.set()}))
        .collect();
    json_response(
        StatusCode::OK,
        json!({"@odata.context": format!("{}$metadata", ctx.api_base), "value": value}),
    )
}

pub(crate) fn json_response(status: StatusCode, body: Value) -> OpResponse {
    OpResponse::json(status, body).header("Content-Type", JSON)
}

/// The request body as a JSON object.
pub(crate) fn json_body(req: &OpRequest, entity: &str) -> DvResult<Map<String, Value>> {
    if req.body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(DvError::payload(
            entity,
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(DvError::payload(entity, format!("Invalid JSON. {e}"))),
    }
}

// ----- keys -------------------------------------------------------------------------------

/// How a URL addresses a row.
#[derive(Debug, Clone)]
pub(crate) enum Addr {
    Id(Uuid),
    /// `(property, value)` pairs of an alternate key.
    Alt(Vec<(String, Value)>),
}

fn key_invalid(table: &Table) -> DvError {
    DvError::odata(format!(
        "The key in the request URI is not valid for resource 'Microsoft.Dynamics.CRM.{}'. Ensure that the names and number of key properties match the declared or alternate key properties for the resource 'Microsoft.Dynamics.CRM.{}'.",
        table.logical(),
        table.logical()
    ))
}

fn literal_to_json(l: &Literal, kind: Kind) -> Option<Value> {
    Some(match (kind, l) {
        (_, Literal::Null) => return None,
        (Kind::Text, Literal::String(s)) => Value::String(s.clone()),
        (Kind::Text, Literal::Number(n)) => Value::String(n.to_string()),
        (Kind::Num, Literal::Number(n)) => json_number(*n),
        (Kind::Guid, Literal::Guid(g)) => Value::String(g.to_string()),
        (Kind::Guid, Literal::String(s)) => Value::String(Uuid::parse_str(s).ok()?.to_string()),
        (Kind::Bool, Literal::Bool(b)) => Value::Bool(*b),
        (Kind::Date, Literal::String(s)) => Value::String(s.clone()),
        (Kind::DateTime, Literal::String(s)) => Value::String(s.clone()),
        _ => return None,
    })
}

fn json_number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// Parses the key segment of `table`.
pub(crate) fn address(table: &Table, args: &str) -> DvResult<Addr> {
    match parse_key(args)? {
        KeySpec::Bare(Literal::Guid(g)) => Ok(Addr::Id(g)),
        KeySpec::Bare(_) => Err(key_invalid(table)),
        KeySpec::Named(parts) => {
            if let [(name, lit)] = parts.as_slice()
                && name == table.pk()
            {
                return match lit {
                    Literal::Guid(g) => Ok(Addr::Id(*g)),
                    _ => Err(key_invalid(table)),
                };
            }
            // Map each name (column logical name, or `_x_value` for a lookup) to its column.
            let mut cols = Vec::new();
            for (name, lit) in &parts {
                let col = table
                    .column(name)
                    .or_else(|| table.prop(name))
                    .ok_or_else(|| key_invalid(table))?;
                let value = literal_to_json(lit, Kind::of(&col.column_type))
                    .ok_or_else(|| key_invalid(table))?;
                cols.push((col.logical_name.clone(), col.property_name(), value));
            }
            let matches_key = table.def.alternate_keys.iter().any(|k| {
                k.columns.len() == cols.len()
                    && k.columns
                        .iter()
                        .all(|c| cols.iter().any(|(l, _, _)| l == c))
            });
            if !matches_key {
                return Err(key_invalid(table));
            }
            Ok(Addr::Alt(
                cols.into_iter().map(|(_, p, v)| (p, v)).collect(),
            ))
        }
    }
}

/// A row addressed by an alternate key whose index is not Active cannot be used.
// Source: "Work with alternate keys" (D-AKDEF,
// https://learn.microsoft.com/power-apps/developer/data-platform/define-alternate-keys-entity): a key is usable once its index is Active; until
// then (or when it Failed) Dataverse refuses the key in the URI.
fn ensure_key_active(ctx: &Ctx<'_>, table: &Table, addr: &Addr) -> DvResult<()> {
    let Addr::Alt(parts) = addr else {
        return Ok(());
    };
    let key = table.def.alternate_keys.iter().find(|k| {
        k.columns.len() == parts.len()
            && k.columns.iter().all(|c| {
                table
                    .column(c)
                    .is_some_and(|col| parts.iter().any(|(p, _)| *p == col.property_name()))
            })
    });
    match key {
        Some(k) if ctx.store.meta.key_status(table.logical(), &k.name) != "Active" => {
            Err(key_invalid(table))
        }
        _ => Ok(()),
    }
}

fn same_value(table: &Table, prop: &str, a: Option<&Value>, b: Option<&Value>) -> bool {
    let kind = table
        .prop(prop)
        .map_or(Kind::Text, |c| Kind::of(&c.column_type));
    let (a, b) = (V::from_json(a, kind), V::from_json(b, kind));
    a != V::Null && b != V::Null && a.compare(&b) == Some(std::cmp::Ordering::Equal)
}

/// The row a URL addresses, if it exists.
pub(crate) fn find(store: &Store, table: &Table, addr: &Addr) -> Option<Uuid> {
    let data = store.table_data(table.logical())?;
    match addr {
        Addr::Id(id) => data.rows.contains_key(id).then_some(*id),
        Addr::Alt(parts) => {
            let matches = |row: &Row| {
                parts
                    .iter()
                    .all(|(p, v)| same_value(table, p, row.get(p), Some(v)))
            };
            let values: Vec<(&str, Option<&Value>)> =
                parts.iter().map(|(p, v)| (p.as_str(), Some(v))).collect();
            match key_candidates(data, table, &values) {
                Some(ids) => ids
                    .into_iter()
                    .find(|id| data.rows.get(id).is_some_and(matches)),
                None => data
                    .rows
                    .iter()
                    .find_map(|(id, row)| matches(row).then_some(*id)),
            }
        }
    }
}

/// Ids (ascending) of the rows that may hold every `(property, value)` of an alternate key,
/// from the equality indexes; `None` when a property is not indexed (the caller scans).
fn key_candidates(
    data: &TableData,
    table: &Table,
    values: &[(&str, Option<&Value>)],
) -> Option<Vec<Uuid>> {
    let mut best: Option<&[Uuid]> = None;
    for (p, v) in values {
        let ix = data.indexes.get(*p)?;
        let kind = table
            .prop(p)
            .map_or(Kind::Text, |c| Kind::of(&c.column_type));
        let ids = ix.lookup(&V::from_json(*v, kind))?;
        if best.is_none_or(|b| ids.len() < b.len()) {
            best = Some(ids);
        }
    }
    best.map(<[Uuid]>::to_vec)
}

fn not_found(table: &Table, addr: &Addr) -> DvError {
    match addr {
        Addr::Id(id) => DvError::row_not_found(table.logical(), &id.to_string()),
        Addr::Alt(_) => DvError::key_not_found(table.logical()),
    }
}

fn find_or_404(ctx: &Ctx<'_>, table: &Table, addr: &Addr) -> DvResult<Uuid> {
    find(ctx.store, table, addr).ok_or_else(|| not_found(table, addr))
}

/// Resolves an entity reference (`/accounts(id)`, a full URL, `accounts(key='v')`, `$1`).
pub(crate) fn resolve_ref<'m>(ctx: &Ctx<'m>, reference: &str) -> DvResult<(&'m Table, Uuid)> {
    let model: &'m Model = ctx.model;
    let mut r = reference.trim().to_string();
    if r.starts_with('$') {
        let (name, tail) = match r.find('/') {
            Some(i) => (r[..i].to_string(), r[i..].to_string()),
            None => (r.clone(), String::new()),
        };
        let Some(url) = ctx.content_ids.get(&name) else {
            return Err(DvError::odata(format!(
                "Content-ID Reference: '{name}' does not exist in the batch context."
            )));
        };
        r = format!("{url}{tail}");
    }
    let path = strip_api_root(&r);
    let decoded = percent_decode(path);
    let segs = segments(&decoded)?;
    let [seg] = segs.as_slice() else {
        return Err(DvError::odata(format!(
            "The entity reference '{reference}' is not a single entity URL."
        )));
    };
    let table = model
        .table_by_set(&seg.name)
        .ok_or_else(|| DvError::unknown_segment(&seg.name))?;
    let args = seg
        .args
        .as_deref()
        .ok_or_else(|| DvError::odata(format!("The entity reference '{reference}' has no key.")))?;
    let addr = address(table, args)?;
    let id = find_or_404(ctx, table, &addr)?;
    Ok((table, id))
}

/// `https://host/api/data/v9.2/accounts(1)` / `/api/data/v9.2/accounts(1)` / `/accounts(1)` →
/// `accounts(1)`.
pub(crate) fn strip_api_root(url: &str) -> &str {
    let mut s = url;
    if let Some(i) = s.find("://") {
        let after = &s[i + 3..];
        s = after.find('/').map_or("", |j| &after[j..]);
    }
    let s = s.trim_start_matches('/');
    if let Some(rest) = s.strip_prefix("api/data/")
        && let Some(j) = rest.find('/')
    {
        return &rest[j + 1..];
    }
    s
}

// ----- rendering ----------------------------------------------------------------------------

pub(crate) fn etag(row: &Row) -> String {
    format!(
        "W/\"{}\"",
        row.get("versionnumber")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    )
}

const FORMATTED: &str = "OData.Community.Display.V1.FormattedValue";
const LOOKUPNAME: &str = "Microsoft.Dynamics.CRM.lookuplogicalname";
const ASSOCNAV: &str = "Microsoft.Dynamics.CRM.associatednavigationproperty";

/// A row as the API returns it.
pub(crate) fn render(
    model: &Model,
    store: &Store,
    table: &Table,
    row: &Row,
    select: Option<&[String]>,
    prefer: &Prefer,
) -> Map<String, Value> {
    render_row(model, store, table, row, select, prefer, false)
}

/// [`render`] for a response body: Money values are marked to be written with four decimals
/// (see [`money`](super::money)).
fn render_wire(
    model: &Model,
    store: &Store,
    table: &Table,
    row: &Row,
    select: Option<&[String]>,
    prefer: &Prefer,
) -> Map<String, Value> {
    render_row(model, store, table, row, select, prefer, true)
}

fn render_row(
    model: &Model,
    store: &Store,
    table: &Table,
    row: &Row,
    select: Option<&[String]>,
    prefer: &Prefer,
    wire: bool,
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("@odata.etag".into(), Value::String(etag(row)));
    let emit = |col: &ColumnDef, out: &mut Map<String, Value>| {
        let p = col.property_name();
        let v = row.get(&p).cloned().unwrap_or(Value::Null);
        if !v.is_null() {
            match &col.column_type {
                ColumnType::Lookup { targets } => {
                    let target = row
                        .get(&format!("{p}{LOOKUP_LOGICAL_NAME}"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    if prefer.wants(LOOKUPNAME) {
                        out.insert(format!("{p}@{LOOKUPNAME}"), Value::String(target.clone()));
                    }
                    if prefer.wants(ASSOCNAV)
                        && let Some(t) = targets.iter().find(|t| t.table == target)
                    {
                        out.insert(
                            format!("{p}@{ASSOCNAV}"),
                            Value::String(t.navigation_property.clone()),
                        );
                    }
                    if prefer.wants(FORMATTED)
                        && let (Some(tt), Some(id)) = (
                            model.table(&target),
                            v.as_str().and_then(|s| Uuid::parse_str(s).ok()),
                        )
                        && let Some(name) = tt
                            .def
                            .primary_name
                            .as_ref()
                            .and_then(|pn| store.get(&target, &id)?.get(pn).cloned())
                    {
                        out.insert(format!("{p}@{FORMATTED}"), name);
                    }
                }
                ColumnType::State | ColumnType::Status if prefer.wants(FORMATTED) => {
                    if let (Some(m), Some(n)) = (table.state_model(), v.as_i64()) {
                        let label = if col.column_type == ColumnType::State {
                            m.state_label(n)
                        } else {
                            m.status_label(n)
                        };
                        if let Some(l) = label {
                            out.insert(format!("{p}@{FORMATTED}"), Value::String(l.to_string()));
                        }
                    }
                }
                ColumnType::Choice { options } if prefer.wants(FORMATTED) => {
                    if let Some((_, l)) = options.iter().find(|(o, _)| Some(*o) == v.as_i64()) {
                        out.insert(format!("{p}@{FORMATTED}"), Value::String(l.clone()));
                    }
                }
                ColumnType::Boolean if prefer.wants(FORMATTED) => {
                    let l = if v.as_bool() == Some(true) {
                        "Yes"
                    } else {
                        "No"
                    };
                    out.insert(format!("{p}@{FORMATTED}"), Value::String(l.into()));
                }
                _ => {}
            }
        }
        let v = if wire && col.column_type == ColumnType::Money {
            super::money::mark(v)
        } else {
            v
        };
        out.insert(p, v);
    };
    match select {
        None => {
            for col in &table.columns {
                emit(col, &mut out);
            }
        }
        Some(props) => {
            for p in props {
                if let Some(col) = table.prop(p) {
                    emit(col, &mut out);
                }
            }
            if let Some(col) = table.column(table.pk()) {
                emit(col, &mut out);
            }
        }
    }
    out
}

fn context_url(api_base: &str, table: &Table, select: Option<&[String]>, suffix: &str) -> String {
    match select {
        Some(s) if !s.is_empty() => format!(
            "{api_base}$metadata#{}({}){suffix}",
            table.set(),
            s.join(",")
        ),
        _ => format!("{api_base}$metadata#{}{suffix}", table.set()),
    }
}

fn render_with_expand(
    ctx: &Ctx<'_>,
    table: &Table,
    row: &Row,
    select: Option<&[String]>,
    expand: &[ExpandItem],
    prefer: &Prefer,
) -> DvResult<Map<String, Value>> {
    let model = ctx.model;
    let store: &Store = ctx.store;
    let mut out = render_wire(model, store, table, row, select, prefer);
    for item in expand {
        if let Some((column, target)) = table.navs.get(&item.nav) {
            let tt = model
                .table(target)
                .ok_or_else(|| DvError::unknown_property(&item.nav, table.logical()))?;
            let sel = item
                .select
                .as_deref()
                .map(|s| query::parse_select(tt, s))
                .transpose()?;
            let p = format!("_{column}_value");
            let related = row
                .get(&p)
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                .filter(|_| {
                    row.get(&format!("{p}{LOOKUP_LOGICAL_NAME}"))
                        .and_then(Value::as_str)
                        .is_none_or(|l| l == target)
                })
                .and_then(|id| store.get(target, &id));
            out.insert(
                item.nav.clone(),
                related.map_or(Value::Null, |r| {
                    Value::Object(render_wire(model, store, tt, r, sel.as_deref(), prefer))
                }),
            );
        } else if let Some(nav) = table.collections.get(&item.nav) {
            let tt = model
                .table(&nav.other_table)
                .ok_or_else(|| DvError::unknown_property(&item.nav, table.logical()))?;
            let sel = item
                .select
                .as_deref()
                .map(|s| query::parse_select(tt, s))
                .transpose()?;
            let id = row_id(table, row);
            let value: Vec<Value> = related_ids(store, nav, id)
                .into_iter()
                .filter_map(|oid| store.get(&nav.other_table, &oid))
                .map(|r| Value::Object(render_wire(model, store, tt, r, sel.as_deref(), prefer)))
                .collect();
            out.insert(item.nav.clone(), Value::Array(value));
        } else {
            return Err(DvError::unknown_property(&item.nav, table.logical()));
        }
    }
    Ok(out)
}

/// Refuses an `$expand` that names an N:N collection together with any other navigation.
// Source: "Join tables using OData" (D-JOIN), table of relationship types supported by multiple
// `$expand`s: combinations with N:N are not supported.
fn check_expand_combination(table: &Table, expand: &[ExpandItem]) -> DvResult<()> {
    if expand.len() < 2 {
        return Ok(());
    }
    if let Some(n) = expand
        .iter()
        .find(|i| table.collections.contains_key(&i.nav))
    {
        let others: Vec<&str> = expand
            .iter()
            .filter(|i| i.nav != n.nav)
            .map(|i| i.nav.as_str())
            .collect();
        return Err(DvError::odata(format!(
            "Expanding the N:N navigation property '{}' together with '{}' in one query is not supported; expand the N:N in a request of its own.",
            n.nav,
            others.join("', '")
        )));
    }
    Ok(())
}

fn row_id(table: &Table, row: &Row) -> Option<Uuid> {
    row.get(table.pk())
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// Ids on the other side of an N:N for `id`, in the order of the intersect rows' ids.
pub(crate) fn related_ids(store: &Store, nav: &CollectionNav, id: Option<Uuid>) -> Vec<Uuid> {
    let Some(id) = id else { return Vec::new() };
    intersect_rows(store, nav, id)
        .filter_map(|(_, r)| r.get(&nav.other_column).and_then(Value::as_str))
        .filter_map(|s| Uuid::parse_str(s).ok())
        .collect()
}

/// The intersect rows of an N:N whose column for this side holds `id`: an index lookup.
fn intersect_rows<'s>(
    store: &'s Store,
    nav: &CollectionNav,
    id: Uuid,
) -> impl Iterator<Item = (Uuid, &'s Row)> + 's {
    let data = store.table_data(&nav.intersect);
    let idv = id.to_string();
    let column = nav.self_column.clone();
    let ids: Vec<Uuid> = match data.and_then(|d| d.indexes.get(&nav.self_column)) {
        Some(ix) => ix
            .lookup(&V::Guid(id))
            .map(<[Uuid]>::to_vec)
            .unwrap_or_default(),
        // Every intersect column is indexed; a scan is kept for safety only.
        None => data
            .map(|d| {
                d.rows
                    .iter()
                    .filter(|(_, r)| r.get(&column).and_then(Value::as_str) == Some(idv.as_str()))
                    .map(|(k, _)| *k)
                    .collect()
            })
            .unwrap_or_default(),
    };
    ids.into_iter()
        .filter_map(move |k| data.and_then(|d| d.rows.get(&k)).map(|r| (k, r)))
}

// ----- query options --------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Options {
    select: Option<String>,
    filter: Option<String>,
    orderby: Option<String>,
    top: Option<String>,
    count: Option<String>,
    expand: Option<String>,
    skiptoken: Option<String>,
    deltatoken: Option<String>,
}

fn options(pairs: &[(String, String)]) -> DvResult<Options> {
    let mut o = Options::default();
    for (k, v) in pairs {
        let slot = match k.as_str() {
            "$select" => &mut o.select,
            "$filter" => &mut o.filter,
            "$orderby" => &mut o.orderby,
            "$top" => &mut o.top,
            "$count" => &mut o.count,
            "$expand" => &mut o.expand,
            "$skiptoken" => &mut o.skiptoken,
            "$deltatoken" => &mut o.deltatoken,
            "$skip" | "$search" | "$format" | "$apply" => {
                return Err(DvError::odata(format!(
                    "The query parameter {k} is not supported."
                )));
            }
            other if other.starts_with('$') => {
                return Err(DvError::odata(format!(
                    "The query parameter '{other}' is not supported. Query option names are case-sensitive."
                )));
            }
            _ => continue,
        };
        if slot.is_some() {
            return Err(DvError::odata(format!(
                "The query parameter '{k}' is specified more than once."
            )));
        }
        *slot = Some(v.clone());
    }
    Ok(o)
}

fn cookie(token: &str, page: usize, tracking: bool) -> String {
    format!(
        "<cookie pagenumber=\"{page}\" pagingcookie=\"{token}\" istracking=\"{}\" />",
        if tracking { "True" } else { "False" }
    )
}

fn cookie_token(skiptoken: &str) -> DvResult<(String, usize)> {
    let bad = || DvError::odata("The $skiptoken is not valid.");
    let start = skiptoken.find("pagingcookie=\"").ok_or_else(bad)? + 14;
    let end = skiptoken[start..].find('"').ok_or_else(bad)? + start;
    let page = skiptoken
        .find("pagenumber=\"")
        .and_then(|i| skiptoken[i + 12..].split('"').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(2);
    Ok((skiptoken[start..end].to_string(), page))
}

fn link(ctx: &Ctx<'_>, req: &OpRequest, drop: &[&str], extra: (&str, &str)) -> String {
    let mut q = query_without(&req.query, drop);
    q.push(format!("{}={}", extra.0, percent_encode(extra.1)));
    format!("{}{}?{}", ctx.api_base, req.path, q.join("&"))
}

fn page_size(prefer: &Prefer) -> usize {
    prefer
        .max_page_size
        .map_or(MAX_PAGE, |n| n.clamp(1, MAX_PAGE))
}

fn applied(prefer: &Prefer) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(n) = prefer.max_page_size {
        v.push(format!("odata.maxpagesize={}", n.clamp(1, MAX_PAGE)));
    }
    if let Some(a) = &prefer.include_annotations {
        v.push(format!("odata.include-annotations=\"{a}\""));
    }
    v
}

/// Parses and binds a `$filter`, indexing the properties it looks up by equality.
fn bind_filter(
    store: &mut Store,
    table: &Table,
    pairs: &[(String, String)],
    filter: Option<&str>,
) -> DvResult<Option<query::Bound>> {
    let Some(f) = filter else { return Ok(None) };
    let expr = filter::parse(f, &super::request::aliases(pairs))
        .map_err(|e| DvError::odata(e.message().to_string()))?;
    let bound = query::bind(table, &expr)?;
    store.index_filter(table.logical(), &bound);
    Ok(Some(bound))
}

fn matching<'s>(store: &'s Store, table: &Table, bound: Option<&query::Bound>) -> Vec<&'s Row> {
    store
        .table_data(table.logical())
        .map(|d| query::filter_rows(d, bound))
        .unwrap_or_default()
}

fn list(
    ctx: &mut Ctx<'_>,
    table: &Table,
    req: &OpRequest,
    pairs: &[(String, String)],
    prefer: &Prefer,
) -> DvResult<OpResponse> {
    let o = options(pairs)?;
    let select = o
        .select
        .as_deref()
        .map(|s| query::parse_select(table, s))
        .transpose()?;
    if prefer.track_changes || o.deltatoken.is_some() {
        return delta(ctx, table, req, &o, select.as_deref(), prefer);
    }
    let expand = o
        .expand
        .as_deref()
        .map(query::parse_expand)
        .transpose()?
        .unwrap_or_default();
    check_expand_combination(table, &expand)?;
    let orderby = o
        .orderby
        .as_deref()
        .map(|s| query::parse_orderby(table, s))
        .transpose()?
        .unwrap_or_default();
    let top = o
        .top
        .as_deref()
        .map(|t| {
            t.trim().parse::<usize>().map_err(|_| {
                DvError::odata(format!("Invalid value '{t}' for $top query option found."))
            })
        })
        .transpose()?;
    let want_count = match o.count.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(DvError::odata(format!(
                "'{other}' is not a valid value for $count; use true or false."
            )));
        }
    };
    let bound = bind_filter(ctx.store, table, pairs, o.filter.as_deref())?;
    let store: &Store = ctx.store;
    let mut rows = matching(store, table, bound.as_ref());
    query::sort_rows(&mut rows, &orderby);
    let total = rows.len();
    if prefer.max_page_size.is_none()
        && let Some(top) = top
    {
        rows.truncate(top);
    }
    let size = page_size(prefer);
    let (offset, page_no) = match o.skiptoken.as_deref() {
        Some(t) => {
            let (tok, page) = cookie_token(t)?;
            let off = tok
                .strip_prefix('o')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| DvError::odata("The $skiptoken is not valid."))?;
            (off, page)
        }
        None => (0, 1),
    };
    let end = (offset + size).min(rows.len());
    let page = rows.get(offset.min(rows.len())..end).unwrap_or_default();
    let value = page
        .iter()
        .map(|r| {
            render_with_expand(ctx, table, r, select.as_deref(), &expand, prefer).map(Value::Object)
        })
        .collect::<DvResult<Vec<_>>>()?;
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        Value::String(context_url(ctx.api_base, table, select.as_deref(), "")),
    );
    if want_count {
        body.insert("@odata.count".into(), Value::from(total.min(MAX_PAGE)));
    }
    if prefer.wants("Microsoft.Dynamics.CRM.totalrecordcount") {
        body.insert(
            "@Microsoft.Dynamics.CRM.totalrecordcount".into(),
            Value::from(if want_count {
                total.min(MAX_PAGE) as i64
            } else {
                -1
            }),
        );
        body.insert(
            "@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded".into(),
            Value::Bool(want_count && total > MAX_PAGE),
        );
    }
    body.insert("value".into(), Value::Array(value));
    if end < rows.len() {
        let next = link(
            ctx,
            req,
            &["$skiptoken"],
            (
                "$skiptoken",
                &cookie(&format!("o{end}"), page_no + 1, false),
            ),
        );
        body.insert("@odata.nextLink".into(), Value::String(next));
    }
    let mut resp = json_response(StatusCode::OK, Value::Object(body));
    let applied = applied(prefer);
    if !applied.is_empty() {
        resp = resp.header("Preference-Applied", applied.join(","));
    }
    Ok(resp)
}

fn count(ctx: &mut Ctx<'_>, table: &Table, pairs: &[(String, String)]) -> DvResult<OpResponse> {
    let o = options(pairs)?;
    let n = match o.deltatoken.as_deref() {
        // Source: "Use change tracking to synchronize data with external systems" (D-CT):
        // `GET {set}/$count?$deltatoken=…` counts the changes since the token, not the rows.
        Some(t) => {
            if !table.def.change_tracking {
                return Err(DvError::odata(format!(
                    "Change tracking is not enabled for the table '{}'.",
                    table.logical()
                )));
            }
            let since =
                token_version(t).ok_or_else(|| DvError::odata("The $deltatoken is not valid."))?;
            if since < ctx.store.token_floor {
                return Err(expired_token());
            }
            changes_since(ctx.store, table, since)
        }
        None => {
            let bound = bind_filter(ctx.store, table, pairs, o.filter.as_deref())?;
            matching(ctx.store, table, bound.as_ref()).len()
        }
    };
    Ok(OpResponse {
        status: StatusCode::OK,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: Some(OpBody::Text(n.min(MAX_PAGE).to_string())),
    })
}

/// How many changes (rows created or updated, and rows deleted) `table` has had after version
/// `since`.
fn changes_since(store: &Store, table: &Table, since: u64) -> usize {
    let Some(data) = store.table_data(table.logical()) else {
        return 0;
    };
    data.changed_between(since, u64::MAX).count() + data.deleted_between(since, u64::MAX).count()
}

/// Parses `919042!08/22/2017 08:10:44` → 919042.
fn token_version(token: &str) -> Option<u64> {
    token.split('!').next()?.trim().parse().ok()
}

/// The error for an expired change-tracking token (code and message from D-ERR; the status is
/// the emulator's choice, listed in `docs/fidelity-dataverse.md`).
fn expired_token() -> DvError {
    DvError::bad_request(
        codes::EXPIRED_VERSION_STAMP,
        "Version stamp associated with the client has expired. Please perform a full sync.",
    )
}

fn delta(
    ctx: &mut Ctx<'_>,
    table: &Table,
    req: &OpRequest,
    o: &Options,
    select: Option<&[String]>,
    prefer: &Prefer,
) -> DvResult<OpResponse> {
    for (name, present) in [
        ("filter", o.filter.is_some()),
        ("orderby", o.orderby.is_some()),
        ("expand", o.expand.is_some()),
        ("top", o.top.is_some()),
    ] {
        if present {
            return Err(DvError::odata(format!(
                "The \"${name}\" query parameter isn't supported when Change Tracking is enabled."
            )));
        }
    }
    if !table.def.change_tracking {
        return Err(DvError::odata(format!(
            "Change tracking is not enabled for the table '{}'.",
            table.logical()
        )));
    }
    let store: &Store = ctx.store;
    let since = match o.deltatoken.as_deref() {
        Some(t) => {
            let v =
                token_version(t).ok_or_else(|| DvError::odata("The $deltatoken is not valid."))?;
            if v < store.token_floor {
                return Err(expired_token());
            }
            Some(v)
        }
        None => None,
    };
    // Continuation: `i{snapshot}:{last id}` (initial sync, by id) or
    // `d{snapshot}:{phase}:{last version}` (changes by version, then deletions).
    let size = page_size(prefer);
    let (snapshot, cursor, page_no) = match o.skiptoken.as_deref() {
        Some(t) => {
            let (tok, page) = cookie_token(t)?;
            let bad = || DvError::odata("The $skiptoken is not valid.");
            let body = tok.get(1..).ok_or_else(bad)?;
            let (snap, rest) = body.split_once(':').ok_or_else(bad)?;
            (
                snap.parse::<u64>().map_err(|_| bad())?,
                rest.to_string(),
                page,
            )
        }
        None => (store.version, String::new(), 1),
    };
    let empty = TableData::default();
    let data = store.table_data(table.logical()).unwrap_or(&empty);
    let mut items: Vec<Value> = Vec::new();
    let mut next_cursor = None;
    let render_row =
        |r: &Row| Value::Object(render_wire(ctx.model, store, table, r, select, prefer));
    match since {
        None => {
            let from = Uuid::parse_str(&cursor)
                .ok()
                .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
            let mut iter = data
                .rows
                .range((from, std::ops::Bound::Unbounded))
                .peekable();
            while let Some((id, r)) = iter.next() {
                items.push(render_row(r));
                if items.len() == size && iter.peek().is_some() {
                    next_cursor = Some(format!("i{snapshot}:{id}"));
                    break;
                }
            }
        }
        Some(since) => {
            let (phase, last) = match cursor.split_once(':') {
                Some((p, l)) => (p.parse::<u8>().unwrap_or(0), l.parse::<u64>().unwrap_or(0)),
                None => (0, 0),
            };
            // Phase 0: rows changed in (since, snapshot] by version; phase 1: deletions. The
            // cursor resumes after `(phase, last version)`, reading only what is left.
            let changed = data
                .changed_between(
                    if phase == 0 {
                        since.max(last)
                    } else {
                        u64::MAX
                    },
                    snapshot,
                )
                .map(|(v, r)| (0u8, v, Some(r), None));
            let deleted = data
                .deleted_between(if phase == 1 { since.max(last) } else { since }, snapshot)
                .map(|(v, id)| (1u8, v, None, Some(id)));
            let mut iter = changed.chain(deleted).peekable();
            while let Some((p, v, row, gone)) = iter.next() {
                match (row, gone) {
                    (Some(r), _) => items.push(render_row(r)),
                    (None, Some(id)) => items.push(json!({
                        "@odata.context": format!("{}$metadata#{}/$deletedEntity", ctx.api_base, table.set()),
                        "id": id.to_string(),
                        "reason": "deleted",
                    })),
                    (None, None) => {}
                }
                if items.len() == size && iter.peek().is_some() {
                    next_cursor = Some(format!("d{snapshot}:{p}:{v}"));
                    break;
                }
            }
        }
    }
    let suffix = if since.is_some() { "/$delta" } else { "" };
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        Value::String(context_url(ctx.api_base, table, select, suffix)),
    );
    body.insert("value".into(), Value::Array(items));
    match next_cursor {
        Some(c) => {
            let next = link(
                ctx,
                req,
                &["$skiptoken"],
                ("$skiptoken", &cookie(&c, page_no + 1, true)),
            );
            body.insert("@odata.nextLink".into(), Value::String(next));
        }
        None => {
            let token = format!("{snapshot}!{}", Utc::now().format("%m/%d/%Y %H:%M:%S"));
            let delta = link(
                ctx,
                req,
                &["$skiptoken", "$deltatoken"],
                ("$deltatoken", &token),
            );
            body.insert("@odata.deltaLink".into(), Value::String(delta));
        }
    }
    let mut applied = applied(prefer);
    applied.insert(0, "odata.track-changes".into());
    Ok(json_response(StatusCode::OK, Value::Object(body))
        .header("Preference-Applied", applied.join(",")))
}

// ----- reads --------------------------------------------------------------------------------

fn get_one(
    ctx: &mut Ctx<'_>,
    table: &Table,
    addr: &Addr,
    req: &OpRequest,
    pairs: &[(String, String)],
    prefer: &Prefer,
) -> DvResult<OpResponse> {
    let o = options(pairs)?;
    if o.filter.is_some() || o.orderby.is_some() || o.top.is_some() {
        return Err(DvError::odata(
            "The query options $filter, $orderby and $top apply to collections only.",
        ));
    }
    let select = o
        .select
        .as_deref()
        .map(|s| query::parse_select(table, s))
        .transpose()?;
    let expand = o
        .expand
        .as_deref()
        .map(query::parse_expand)
        .transpose()?
        .unwrap_or_default();
    check_expand_combination(table, &expand)?;
    let id = find_or_404(ctx, table, addr)?;
    let store: &Store = ctx.store;
    let Some(row) = store.get(table.logical(), &id) else {
        return Err(not_found(table, addr));
    };
    let tag = etag(row);
    if expand.is_empty()
        && prefer.include_annotations.is_none()
        && let Some(inm) = header(&req.headers, "if-none-match")
        && inm.split(',').any(|t| t.trim() == tag)
    {
        return Ok(OpResponse::new(StatusCode::NOT_MODIFIED).header("ETag", tag));
    }
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        Value::String(context_url(
            ctx.api_base,
            table,
            select.as_deref(),
            "/$entity",
        )),
    );
    body.extend(render_with_expand(
        ctx,
        table,
        row,
        select.as_deref(),
        &expand,
        prefer,
    )?);
    Ok(json_response(StatusCode::OK, Value::Object(body)).header("ETag", tag))
}

// ----- writes -------------------------------------------------------------------------------

/// What applying a body changed besides plain columns.
#[derive(Debug, Default)]
struct Applied {
    state: Option<i64>,
    status: Option<i64>,
    associate: Vec<(String, Uuid)>,
}

fn type_error(table: &Table, v: &Value, col: &ColumnDef) -> DvError {
    DvError::payload(
        table.set(),
        format!(
            "Cannot convert the literal '{v}' to the expected type '{}' of the property '{}'.",
            col.column_type.edm_name(),
            col.logical_name
        ),
    )
}

fn min_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(1753, 1, 1).unwrap_or_default()
}

/// Validates and normalises one column value.
pub(crate) fn convert(table: &Table, col: &ColumnDef, v: &Value) -> DvResult<Value> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let err = || type_error(table, v, col);
    let too_early = |d: NaiveDate| {
        (d < min_date()).then(|| {
            DvError::bad_request(
                codes::VALIDATION,
                format!(
                    "A validation error occurred. The value of '{}' is earlier than the minimum date 1/1/1753.",
                    col.logical_name
                ),
            )
        })
    };
    Ok(match &col.column_type {
        ColumnType::Text { max_length } | ColumnType::Memo { max_length } => {
            let s = v.as_str().ok_or_else(err)?;
            if s.chars().count() > *max_length {
                return Err(DvError::bad_request(
                    codes::VALIDATION,
                    format!(
                        "A validation error occurred.  The length of the '{}' attribute of the '{}' entity exceeded the maximum allowed length of '{max_length}'.",
                        col.logical_name,
                        table.logical()
                    ),
                ));
            }
            Value::String(s.to_string())
        }
        ColumnType::Integer | ColumnType::State | ColumnType::Status => {
            let n = int_of(v).ok_or_else(err)?;
            if i32::try_from(n).is_err() {
                return Err(err());
            }
            Value::from(n)
        }
        ColumnType::BigInt => Value::from(int_of(v).ok_or_else(err)?),
        ColumnType::Decimal | ColumnType::Double | ColumnType::Money => {
            let n = v.as_f64().ok_or_else(err)?;
            if ColumnType::Money == col.column_type && n.abs() > 922_337_203_685_477.0 {
                return Err(DvError::bad_request(
                    codes::VALIDATION,
                    format!(
                        "A validation error occurred. The value of '{}' is out of range.",
                        col.logical_name
                    ),
                ));
            }
            v.clone()
        }
        ColumnType::Boolean => Value::Bool(v.as_bool().ok_or_else(err)?),
        ColumnType::DateTime => {
            let s = v.as_str().ok_or_else(err)?;
            // Source: "Behavior and format of the date and time column": a UserLocal or
            // TimeZoneIndependent column is an Edm.DateTimeOffset, so a bare date is refused.
            let dt = DateTime::parse_from_rfc3339(s)
                .map_err(|_| {
                    DvError::payload(
                        table.set(),
                        format!(
                            "Cannot convert the literal '{s}' to the expected type 'Edm.DateTimeOffset' (property '{}').",
                            col.logical_name
                        ),
                    )
                })?
                .with_timezone(&Utc);
            if let Some(e) = too_early(dt.date_naive()) {
                return Err(e);
            }
            Value::String(dt.to_rfc3339_opts(SecondsFormat::Secs, true))
        }
        ColumnType::DateOnly => {
            let s = v.as_str().ok_or_else(err)?;
            let d = NaiveDate::parse_from_str(s.get(..10).ok_or_else(err)?, "%Y-%m-%d")
                .map_err(|_| err())?;
            if s.len() > 10 && DateTime::parse_from_rfc3339(s).is_err() {
                return Err(err());
            }
            if let Some(e) = too_early(d) {
                return Err(e);
            }
            Value::String(d.format("%Y-%m-%d").to_string())
        }
        ColumnType::Choice { options } => {
            let n = int_of(v).ok_or_else(err)?;
            if !options.is_empty() && !options.iter().any(|(o, _)| *o == n) {
                let accepted: Vec<String> = options.iter().map(|(o, _)| o.to_string()).collect();
                return Err(DvError::bad_request(
                    codes::OPTION_OUT_OF_RANGE,
                    format!(
                        "A validation error occurred. The value {n} of '{}' on record of type '{}' is outside the valid range. Accepted Values: {}",
                        col.logical_name,
                        table.logical(),
                        accepted.join(",")
                    ),
                ));
            }
            Value::from(n)
        }
        ColumnType::Uniqueidentifier => {
            let s = v.as_str().ok_or_else(err)?;
            Value::String(Uuid::parse_str(s).map_err(|_| err())?.to_string())
        }
        ColumnType::Lookup { .. } => return Err(err()),
    })
}

fn int_of(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

/// Applies a request body to `row`.
fn apply_body(
    ctx: &mut Ctx<'_>,
    table: &Table,
    row: &mut Row,
    body: &Map<String, Value>,
    creating: bool,
) -> DvResult<Applied> {
    let model: &Model = ctx.model;
    let mut out = Applied::default();
    for (key, value) in body {
        if key.starts_with('@') {
            continue;
        }
        if let Some((prop, annotation)) = key.split_once('@') {
            if annotation != "odata.bind" {
                continue;
            }
            if let Some((column, target)) = table.navs.get(prop) {
                let p = format!("_{column}_value");
                match value {
                    Value::Null => {
                        row.insert(p.clone(), Value::Null);
                        row.remove(&format!("{p}{LOOKUP_LOGICAL_NAME}"));
                    }
                    Value::String(url) => {
                        let (tt, id) = resolve_ref(ctx, url)?;
                        if tt.logical() != target {
                            return Err(DvError::payload(
                                table.set(),
                                format!(
                                    "The navigation property '{prop}' binds to '{target}', not to '{}'.",
                                    tt.logical()
                                ),
                            ));
                        }
                        row.insert(p.clone(), Value::String(id.to_string()));
                        row.insert(
                            format!("{p}{LOOKUP_LOGICAL_NAME}"),
                            Value::String(target.clone()),
                        );
                    }
                    _ => {
                        return Err(DvError::payload(
                            table.set(),
                            format!("The value of '{key}' must be an entity URL or null."),
                        ));
                    }
                }
                continue;
            }
            if let Some(nav) = table.collections.get(prop) {
                let Value::Array(urls) = value else {
                    return Err(DvError::payload(
                        table.set(),
                        format!("The value of '{key}' must be an array of entity URLs."),
                    ));
                };
                for u in urls {
                    let url = u.as_str().ok_or_else(|| {
                        DvError::payload(
                            table.set(),
                            format!("The value of '{key}' must be an array of entity URLs."),
                        )
                    })?;
                    let (tt, id) = resolve_ref(ctx, url)?;
                    if tt.logical() != nav.other_table {
                        return Err(DvError::payload(
                            table.set(),
                            format!(
                                "'{prop}' relates '{}' rows, not '{}'.",
                                nav.other_table,
                                tt.logical()
                            ),
                        ));
                    }
                    out.associate.push((prop.to_string(), id));
                }
                continue;
            }
            return Err(DvError::payload(
                table.set(),
                format!(
                    "An undeclared property '{prop}' which only has property annotations in the payload but no property value was found in the payload. In OData, only declared navigation properties and declared named streams can be represented as properties without values."
                ),
            ));
        }
        // Deep insert through a single-valued navigation property.
        if let Some((column, target)) = table.navs.get(key.as_str())
            && let Value::Object(nested) = value
        {
            let tt = model
                .table(target)
                .ok_or_else(|| DvError::unknown_property(key, table.logical()))?;
            let id = create_row(ctx, tt, nested, None, &[])?;
            let p = format!("_{column}_value");
            row.insert(p.clone(), Value::String(id.to_string()));
            row.insert(
                format!("{p}{LOOKUP_LOGICAL_NAME}"),
                Value::String(target.clone()),
            );
            continue;
        }
        let Some(col) = table.column(key) else {
            return Err(DvError::payload(
                table.set(),
                format!(
                    "The property '{key}' does not exist on type 'Microsoft.Dynamics.CRM.{}'. Make sure to only use property names that are defined by the type.",
                    table.logical()
                ),
            ));
        };
        if let ColumnType::Lookup { .. } = col.column_type {
            if value.is_null() {
                let p = col.property_name();
                row.insert(p.clone(), Value::Null);
                row.remove(&format!("{p}{LOOKUP_LOGICAL_NAME}"));
                continue;
            }
            return Err(DvError::payload(
                table.set(),
                format!(
                    "A 'PrimitiveValue' node with non-null value was found when trying to read the value of the navigation property '{key}'; set lookups with '{key}@odata.bind'."
                ),
            ));
        }
        if col.logical_name == table.pk() {
            let v = convert(table, col, value)?;
            if !creating && row.get(table.pk()) != Some(&v) {
                return Err(DvError::odata(format!(
                    "The primary key '{}' cannot be changed.",
                    table.pk()
                )));
            }
            row.insert(key.clone(), v);
            continue;
        }
        if col.read_only || (col.create_only && !creating) {
            // System and computed columns are ignored on write, as Dataverse does.
            continue;
        }
        let v = convert(table, col, value)?;
        match col.column_type {
            ColumnType::State => out.state = v.as_i64(),
            ColumnType::Status => out.status = v.as_i64(),
            _ => {
                row.insert(key.clone(), v);
            }
        }
    }
    Ok(out)
}

fn state_of(row: &Row) -> Option<i64> {
    row.get("statecode").and_then(Value::as_i64)
}

/// Applies `statecode`/`statuscode` per the table's state model.
fn resolve_state(
    table: &Table,
    row: &mut Row,
    state: Option<i64>,
    status: Option<i64>,
    creating: bool,
) -> DvResult<()> {
    let Some(model) = table.state_model() else {
        return Ok(());
    };
    let Some(initial) = model.states.first() else {
        return Ok(());
    };
    let current = if creating {
        initial.value
    } else {
        state_of(row).unwrap_or(initial.value)
    };
    let (s, st) = match (state, status) {
        (None, None) if creating => (initial.value, initial.default_status),
        (None, None) => return Ok(()),
        (Some(s), None) => {
            let so = model.state(s).ok_or_else(|| invalid_state(table, s))?;
            (s, so.default_status)
        }
        (s, Some(st)) => {
            let s = s.unwrap_or(current);
            let so = model.state(s).ok_or_else(|| invalid_state(table, s))?;
            if !so.statuses.iter().any(|(v, _)| *v == st) {
                return Err(DvError::bad_request(
                    codes::INVALID_ARGUMENT,
                    format!(
                        "{st} is not a valid status code for state code {}State.{} on {} .",
                        table.logical(),
                        so.label,
                        table.logical()
                    ),
                ));
            }
            (s, st)
        }
    };
    if creating && s != initial.value && model.closed_states_read_only {
        return Err(DvError::bad_request(
            codes::INVALID_ARGUMENT,
            format!(
                "A new {} must be created in the {} state.",
                table.logical(),
                initial.label
            ),
        ));
    }
    if !creating && s != current && s != initial.value && table.logical() == "opportunity" {
        return Err(DvError::bad_request(
            codes::OPPORTUNITY_CANNOT_BE_CLOSED,
            "Use the WinOpportunity or LoseOpportunity action to close an opportunity.",
        ));
    }
    row.insert("statecode".into(), Value::from(s));
    row.insert("statuscode".into(), Value::from(st));
    Ok(())
}

fn invalid_state(table: &Table, s: i64) -> DvError {
    DvError::bad_request(
        codes::VALIDATION,
        format!(
            "A validation error occurred. The value {s} of 'statecode' on record of type '{}' is outside the valid range.",
            table.logical()
        ),
    )
}

fn computed(table: &Table, row: &mut Row) {
    if table.column("fullname").is_some_and(|c| c.read_only)
        && (table.column("firstname").is_some() || table.column("lastname").is_some())
    {
        let parts: Vec<&str> = ["firstname", "lastname"]
            .iter()
            .filter_map(|c| row.get(*c).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .collect();
        let full = parts.join(" ");
        row.insert(
            "fullname".into(),
            if full.is_empty() {
                Value::Null
            } else {
                Value::String(full)
            },
        );
    }
}

/// The id of the base currency row.
pub(crate) fn base_currency(ctx: &Ctx<'_>) -> Option<Uuid> {
    let iso = ctx.model.schema.base_currency()?;
    currency_by_iso(ctx.store, iso)
}

pub(crate) fn currency_by_iso(store: &Store, iso: &str) -> Option<Uuid> {
    store
        .rows("transactioncurrency")?
        .iter()
        .find_map(|(id, r)| {
            (r.get("isocurrencycode").and_then(Value::as_str) == Some(iso)).then_some(*id)
        })
}

fn check_alternate_keys(ctx: &Ctx<'_>, table: &Table, id: Uuid, row: &Row) -> DvResult<()> {
    let Some(data) = ctx.store.table_data(table.logical()) else {
        return Ok(());
    };
    let rows = &data.rows;
    for key in &table.def.alternate_keys {
        let props: Vec<String> = key
            .columns
            .iter()
            .filter_map(|c| table.column(c).map(ColumnDef::property_name))
            .collect();
        if props.len() != key.columns.len()
            || props.iter().any(|p| row.get(p).is_none_or(Value::is_null))
        {
            continue;
        }
        let same = |oid: &Uuid, other: &Row| {
            *oid != id
                && props
                    .iter()
                    .all(|p| same_value(table, p, row.get(p), other.get(p)))
        };
        let values: Vec<(&str, Option<&Value>)> =
            props.iter().map(|p| (p.as_str(), row.get(p))).collect();
        let dup = match key_candidates(data, table, &values) {
            Some(ids) => ids
                .iter()
                .any(|oid| rows.get(oid).is_some_and(|other| same(oid, other))),
            None => rows.iter().any(|(oid, other)| same(oid, other)),
        };
        if dup {
            return Err(DvError::new(
                StatusCode::PRECONDITION_FAILED,
                codes::DUPLICATE_KEY,
                // Source: D-ERR: DuplicateRecordEntityKey's message.
                format!(
                    "Entity Key {} violated. A record with the same value for {} already exists. A duplicate record cannot be created. Select one or more unique values and try again.",
                    key.name,
                    key.columns.join(","),
                ),
            ));
        }
    }
    Ok(())
}

/// Creates a row from a body; `preset` is the id from an upsert URL, `key_defaults` the
/// alternate-key values from an upsert URL (the body wins when it has them).
pub(crate) fn create_row(
    ctx: &mut Ctx<'_>,
    table: &Table,
    body: &Map<String, Value>,
    preset: Option<Uuid>,
    key_defaults: &[(String, Value)],
) -> DvResult<Uuid> {
    if table.def.intersect {
        return Err(DvError::method_not_allowed(
            "Rows of an intersect table are created by associating the two rows.",
        ));
    }
    let id = match body.get(table.pk()) {
        Some(Value::String(s)) => Uuid::parse_str(s).map_err(|_| {
            DvError::payload(
                table.set(),
                format!("'{s}' is not a valid value for '{}'.", table.pk()),
            )
        })?,
        _ => match preset {
            Some(id) => id,
            None => ctx.store.new_id(),
        },
    };
    if ctx.store.get(table.logical(), &id).is_some() {
        // Source: D-ERR: DuplicateRecord 0x80040237 (status: only a real tenant can confirm).
        return Err(DvError::duplicate_record());
    }
    let mut row = Row::new();
    row.insert(table.pk().to_string(), Value::String(id.to_string()));
    for (p, v) in key_defaults {
        let column = table
            .prop(p)
            .map(|c| c.logical_name.clone())
            .unwrap_or_default();
        if !body.contains_key(&column) {
            row.insert(p.clone(), v.clone());
        }
    }
    let applied = apply_body(ctx, table, &mut row, body, true)?;
    resolve_state(table, &mut row, applied.state, applied.status, true)?;
    if table
        .column("transactioncurrencyid")
        .is_some_and(|c| matches!(c.column_type, ColumnType::Lookup { .. }))
        && row
            .get("_transactioncurrencyid_value")
            .is_none_or(Value::is_null)
        && let Some(cur) = base_currency(ctx)
    {
        row.insert(
            "_transactioncurrencyid_value".into(),
            Value::String(cur.to_string()),
        );
        row.insert(
            format!("_transactioncurrencyid_value{LOOKUP_LOGICAL_NAME}"),
            Value::String("transactioncurrency".into()),
        );
    }
    computed(table, &mut row);
    check_alternate_keys(ctx, table, id, &row)?;
    ctx.store.put(table.logical(), id, row);
    for (nav, other) in applied.associate {
        associate(ctx, table, id, &nav, other)?;
    }
    Ok(id)
}

/// Updates a row from a body, dropping `drop` columns (the key columns of an upsert URL).
pub(crate) fn update_row(
    ctx: &mut Ctx<'_>,
    table: &Table,
    id: Uuid,
    body: &Map<String, Value>,
    drop: &[String],
) -> DvResult<()> {
    let Some(mut row) = ctx.store.get(table.logical(), &id).cloned() else {
        return Err(DvError::row_not_found(table.logical(), &id.to_string()));
    };
    let body: Map<String, Value> = body
        .iter()
        .filter(|(k, _)| !drop.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(model) = table.state_model()
        && model.closed_states_read_only
        && let (Some(cur), Some(initial)) = (state_of(&row), model.states.first())
        && cur != initial.value
    {
        let reopening = body.get("statecode").and_then(Value::as_i64) == Some(initial.value);
        if !reopening {
            return Err(DvError::bad_request(
                codes::RECORD_READ_ONLY,
                format!(
                    "This {} is {} and read-only; reactivate it (statecode {}) before editing.",
                    table.logical(),
                    model.state_label(cur).unwrap_or("closed"),
                    initial.value
                ),
            ));
        }
    }
    let applied = apply_body(ctx, table, &mut row, &body, false)?;
    resolve_state(table, &mut row, applied.state, applied.status, false)?;
    computed(table, &mut row);
    check_alternate_keys(ctx, table, id, &row)?;
    ctx.store.put(table.logical(), id, row);
    for (nav, other) in applied.associate {
        associate(ctx, table, id, &nav, other)?;
    }
    Ok(())
}

/// Adds an N:N association.
pub(crate) fn associate(
    ctx: &mut Ctx<'_>,
    table: &Table,
    id: Uuid,
    nav: &str,
    other: Uuid,
) -> DvResult<()> {
    let Some(n) = table.collections.get(nav) else {
        return Err(DvError::unknown_property(nav, table.logical()));
    };
    if related_ids(ctx.store, n, Some(id)).contains(&other) {
        // Source: D-ERR: DuplicateRecord 0x80040237 (status: only a real tenant can confirm).
        return Err(DvError::duplicate_record());
    }
    let Some(it) = ctx.model.table(&n.intersect) else {
        return Err(DvError::unknown_property(nav, table.logical()));
    };
    let iid = ctx.store.new_id();
    let mut row = Row::new();
    row.insert(it.pk().to_string(), Value::String(iid.to_string()));
    row.insert(n.self_column.clone(), Value::String(id.to_string()));
    row.insert(n.other_column.clone(), Value::String(other.to_string()));
    ctx.store.put(&n.intersect, iid, row);
    Ok(())
}

/// Removes an N:N association (no error when absent).
fn disassociate(ctx: &mut Ctx<'_>, n: &CollectionNav, id: Uuid, other: Uuid) {
    let ov = other.to_string();
    let victims: Vec<Uuid> = intersect_rows(ctx.store, n, id)
        .filter(|(_, r)| r.get(&n.other_column).and_then(Value::as_str) == Some(ov.as_str()))
        .map(|(k, _)| k)
        .collect();
    for v in victims {
        ctx.store.remove(&n.intersect, &v);
    }
}

fn check_if_match(req: &OpRequest, row: Option<&Row>, table: &Table, addr: &Addr) -> DvResult<()> {
    if let Some(im) = header(&req.headers, "if-match") {
        let Some(row) = row else {
            return Err(not_found(table, addr));
        };
        let tag = etag(row);
        if !im.split(',').map(str::trim).any(|t| t == "*" || t == tag) {
            return Err(DvError::concurrency_mismatch());
        }
    }
    Ok(())
}

fn entity_url(ctx: &Ctx<'_>, table: &Table, key: &str) -> String {
    format!("{}{}({key})", ctx.api_base, table.set())
}

/// The answer to a successful write.
#[allow(clippy::too_many_arguments)]
fn write_response(
    ctx: &Ctx<'_>,
    table: &Table,
    id: Uuid,
    created: bool,
    entity_id: String,
    pairs: &[(String, String)],
    prefer: &Prefer,
) -> DvResult<OpResponse> {
    if !prefer.return_representation {
        return Ok(OpResponse::new(StatusCode::NO_CONTENT).header("OData-EntityId", entity_id));
    }
    let o = options(pairs)?;
    let select = o
        .select
        .as_deref()
        .map(|s| query::parse_select(table, s))
        .transpose()?;
    let Some(row) = ctx.store.get(table.logical(), &id) else {
        return Err(DvError::row_not_found(table.logical(), &id.to_string()));
    };
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        Value::String(context_url(
            ctx.api_base,
            table,
            select.as_deref(),
            "/$entity",
        )),
    );
    body.extend(render_wire(
        ctx.model,
        ctx.store,
        table,
        row,
        select.as_deref(),
        prefer,
    ));
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut applied = vec!["return=representation".to_string()];
    applied.extend(self::applied(prefer));
    Ok(json_response(status, Value::Object(body))
        .header("ETag", etag(row))
        .header("Preference-Applied", applied.join(",")))
}

fn create(
    ctx: &mut Ctx<'_>,
    table: &Table,
    req: &OpRequest,
    pairs: &[(String, String)],
    prefer: &Prefer,
) -> DvResult<OpResponse> {
    let body = json_body(req, table.set())?;
    // Validate $select before writing anything.
    options(pairs)?
        .select
        .as_deref()
        .map(|s| query::parse_select(table, s))
        .transpose()?;
    let id = atomic(ctx, |ctx| create_row(ctx, table, &body, None, &[]))?;
    let url = entity_url(ctx, table, &id.to_string());
    write_response(ctx, table, id, true, url, pairs, prefer)
}

fn upsert(
    ctx: &mut Ctx<'_>,
    table: &Table,
    addr: &Addr,
    args: &str,
    req: &OpRequest,
    pairs: &[(String, String)],
    prefer: &Prefer,
) -> DvResult<OpResponse> {
    let body = json_body(req, table.set())?;
    options(pairs)?
        .select
        .as_deref()
        .map(|s| query::parse_select(table, s))
        .transpose()?;
    let existing = find(ctx.store, table, addr);
    let row = existing.and_then(|id| ctx.store.get(table.logical(), &id));
    check_if_match(req, row, table, addr)?;
    if let Some(inm) = header(&req.headers, "if-none-match")
        && inm == "*"
        && existing.is_some()
    {
        return Err(DvError::already_exists());
    }
    // Echo the key URL as requested (`accounts(accountnumber='X')` stays that way).
    let url = entity_url(ctx, table, &percent_decode(args));
    let (id, created) = match (existing, addr) {
        (Some(id), Addr::Id(_)) => {
            atomic(ctx, |ctx| update_row(ctx, table, id, &body, &[]))?;
            (id, false)
        }
        (Some(id), Addr::Alt(parts)) => {
            // Body values for the key columns are dropped when the row exists.
            let drop: Vec<String> = parts
                .iter()
                .filter_map(|(p, _)| table.prop(p).map(|c| c.logical_name.clone()))
                .collect();
            atomic(ctx, |ctx| update_row(ctx, table, id, &body, &drop))?;
            (id, false)
        }
        (None, Addr::Id(id)) => {
            let id = atomic(ctx, |ctx| create_row(ctx, table, &body, Some(*id), &[]))?;
            (id, true)
        }
        (None, Addr::Alt(parts)) => {
            let id = atomic(ctx, |ctx| create_row(ctx, table, &body, None, parts))?;
            (id, true)
        }
    };
    write_response(ctx, table, id, created, url, pairs, prefer)
}

fn delete(ctx: &mut Ctx<'_>, table: &Table, addr: &Addr, req: &OpRequest) -> DvResult<OpResponse> {
    let id = find_or_404(ctx, table, addr)?;
    check_if_match(req, ctx.store.get(table.logical(), &id), table, addr)?;
    if table.def.intersect {
        return Err(DvError::method_not_allowed(
            "Rows of an intersect table are deleted by disassociating the two rows.",
        ));
    }
    atomic(ctx, |ctx| {
        delete_row(ctx, table, id);
        Ok(())
    })?;
    Ok(OpResponse::new(StatusCode::NO_CONTENT))
}

/// Deletes a row and its N:N associations.
pub(crate) fn delete_row(ctx: &mut Ctx<'_>, table: &Table, id: Uuid) {
    for n in table.collections.values() {
        for other in related_ids(ctx.store, n, Some(id)) {
            disassociate(ctx, n, id, other);
        }
    }
    ctx.store.remove(table.logical(), &id);
}

// ----- single properties, navigation properties and $ref ------------------------------------

fn property_op(
    ctx: &mut Ctx<'_>,
    table: &Table,
    addr: &Addr,
    prop: &Segment,
    req: &OpRequest,
    pairs: &[(String, String)],
) -> DvResult<OpResponse> {
    let model: &Model = ctx.model;
    let prefer = Prefer::parse(&req.headers);
    let id = find_or_404(ctx, table, addr)?;
    // A collection-valued navigation property: the related rows.
    if let Some(nav) = table.collections.get(&prop.name) {
        only(&req.method, &[Method::GET])?;
        let other = model
            .table(&nav.other_table)
            .ok_or_else(|| DvError::unknown_segment(&prop.text()))?;
        let o = options(pairs)?;
        let select = o
            .select
            .as_deref()
            .map(|s| query::parse_select(other, s))
            .transpose()?;
        let store: &Store = ctx.store;
        let value: Vec<Value> = related_ids(store, nav, Some(id))
            .into_iter()
            .filter_map(|oid| store.get(other.logical(), &oid))
            .map(|r| {
                Value::Object(render_wire(
                    model,
                    store,
                    other,
                    r,
                    select.as_deref(),
                    &prefer,
                ))
            })
            .collect();
        return Ok(json_response(
            StatusCode::OK,
            json!({"@odata.context": context_url(ctx.api_base, other, select.as_deref(), ""), "value": value}),
        ));
    }
    // A single-valued navigation property: the related row.
    if let Some((column, target)) = table.navs.get(&prop.name) {
        only(&req.method, &[Method::GET])?;
        let tt = model
            .table(target)
            .ok_or_else(|| DvError::unknown_segment(&prop.text()))?;
        let store: &Store = ctx.store;
        let p = format!("_{column}_value");
        let related = store
            .get(table.logical(), &id)
            .filter(|r| {
                r.get(&format!("{p}{LOOKUP_LOGICAL_NAME}"))
                    .and_then(Value::as_str)
                    .is_none_or(|l| l == target)
            })
            .and_then(|r| r.get(&p))
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .and_then(|oid| store.get(target, &oid));
        return Ok(match related {
            None => OpResponse::new(StatusCode::NO_CONTENT),
            Some(r) => {
                let mut body = Map::new();
                body.insert(
                    "@odata.context".into(),
                    Value::String(context_url(ctx.api_base, tt, None, "/$entity")),
                );
                body.extend(render_wire(model, store, tt, r, None, &prefer));
                json_response(StatusCode::OK, Value::Object(body))
            }
        });
    }
    let Some(col) = table.prop(&prop.name) else {
        return Err(DvError::unknown_segment(&prop.text()));
    };
    match req.method {
        Method::GET => {
            let v = ctx
                .store
                .get(table.logical(), &id)
                .and_then(|r| r.get(&prop.name))
                .cloned()
                .unwrap_or(Value::Null);
            if v.is_null() {
                return Ok(OpResponse::new(StatusCode::NO_CONTENT));
            }
            let v = if col.column_type == ColumnType::Money {
                super::money::mark(v)
            } else {
                v
            };
            Ok(json_response(
                StatusCode::OK,
                json!({
                    "@odata.context": format!("{}$metadata#{}({id})/{}", ctx.api_base, table.set(), prop.name),
                    "value": v,
                }),
            ))
        }
        Method::PUT | Method::DELETE => {
            if matches!(col.column_type, ColumnType::Lookup { .. }) {
                return Err(DvError::odata(format!(
                    "Set the lookup '{}' through its navigation property's $ref.",
                    col.logical_name
                )));
            }
            let value = if req.method == Method::PUT {
                let body = json_body(req, table.set())?;
                body.get("value").cloned().ok_or_else(|| {
                    DvError::payload(
                        table.set(),
                        "The body of a property PUT must be {\"value\": …}.",
                    )
                })?
            } else {
                Value::Null
            };
            let mut body = Map::new();
            body.insert(col.logical_name.clone(), value);
            atomic(ctx, |ctx| update_row(ctx, table, id, &body, &[]))?;
            Ok(OpResponse::new(StatusCode::NO_CONTENT))
        }
        _ => Err(DvError::method_not_allowed(format!(
            "The HTTP method '{}' is not allowed on a property.",
            req.method
        ))),
    }
}

fn ref_op(
    ctx: &mut Ctx<'_>,
    table: &Table,
    addr: &Addr,
    nav: &Segment,
    req: &OpRequest,
    pairs: &[(String, String)],
) -> DvResult<OpResponse> {
    let id = find_or_404(ctx, table, addr)?;
    let reference = || -> DvResult<String> {
        let body = json_body(req, table.set())?;
        body.get("@odata.id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                DvError::payload(
                    table.set(),
                    "The body of a $ref request must be {\"@odata.id\": \"…\"}.",
                )
            })
    };
    if table.navs.contains_key(&nav.name) && nav.args.is_none() {
        let value = match req.method {
            Method::PUT => Value::String(reference()?),
            Method::DELETE => Value::Null,
            _ => {
                return Err(DvError::method_not_allowed(
                    "Use PUT or DELETE on a single-valued $ref.",
                ));
            }
        };
        let mut body = Map::new();
        body.insert(format!("{}@odata.bind", nav.name), value);
        atomic(ctx, |ctx| update_row(ctx, table, id, &body, &[]))?;
        return Ok(OpResponse::new(StatusCode::NO_CONTENT));
    }
    if let Some(n) = table.collections.get(&nav.name) {
        let n = n.clone();
        match (req.method.clone(), nav.args.as_deref()) {
            (Method::POST, None) => {
                let r = reference()?;
                let (tt, other) = resolve_ref(ctx, &r)?;
                if tt.logical() != n.other_table {
                    return Err(DvError::odata(format!(
                        "'{}' relates '{}' rows, not '{}'.",
                        nav.name,
                        n.other_table,
                        tt.logical()
                    )));
                }
                atomic(ctx, |ctx| associate(ctx, table, id, &nav.name, other))?;
            }
            (Method::DELETE, args) => {
                let other = match args {
                    Some(a) => {
                        let tt = ctx
                            .model
                            .table(&n.other_table)
                            .ok_or_else(|| DvError::unknown_segment(&nav.text()))?;
                        let addr = address(tt, a)?;
                        find_or_404(ctx, tt, &addr)?
                    }
                    None => {
                        let r = pairs
                            .iter()
                            .find(|(k, _)| k == "$id")
                            .map(|(_, v)| v.clone())
                            .ok_or_else(|| {
                                DvError::odata(
                                    "Name the row to disassociate: /{nav}(id)/$ref or ?$id=…",
                                )
                            })?;
                        resolve_ref(ctx, &r)?.1
                    }
                };
                atomic(ctx, |ctx| {
                    disassociate(ctx, &n, id, other);
                    Ok(())
                })?;
            }
            _ => {
                return Err(DvError::method_not_allowed(
                    "Use POST to associate or DELETE to disassociate a collection $ref.",
                ));
            }
        }
        return Ok(OpResponse::new(StatusCode::NO_CONTENT));
    }
    Err(DvError::unknown_segment(&nav.text()))
}
