//! Metadata for the schema check: `EntityDefinitions(LogicalName='x')`, its `Attributes` and
//! `Keys`, and a minimal `$metadata` CSDL document.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::error::{DvError, DvResult, codes};
use super::filter::Literal;
use super::ops::{Ctx, json_response};
use super::request::KeySpec;
use super::request::{OpBody, OpResponse, Segment, parse_key};
use super::schema::ColumnDef;
use super::store::{Model, Table};

/// A stable id for a metadata item (FNV-1a of its name).
fn metadata_id(name: &str) -> Uuid {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in name.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    uuid::Builder::from_random_bytes(h.to_be_bytes()).into_uuid()
}

fn entity_json(t: &Table) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "MetadataId".into(),
        json!(metadata_id(t.logical()).to_string()),
    );
    m.insert("LogicalName".into(), json!(t.logical()));
    m.insert("SchemaName".into(), json!(t.logical()));
    m.insert("EntitySetName".into(), json!(t.set()));
    m.insert("LogicalCollectionName".into(), json!(t.set()));
    m.insert("PrimaryIdAttribute".into(), json!(t.pk()));
    m.insert("PrimaryNameAttribute".into(), json!(t.def.primary_name));
    m.insert("ChangeTrackingEnabled".into(), json!(t.def.change_tracking));
    m.insert("IsOptimisticConcurrencyEnabled".into(), json!(true));
    m.insert("IsIntersect".into(), json!(t.def.intersect));
    m.insert("IsCustomEntity".into(), json!(t.logical().contains('_')));
    m
}

fn attribute_json(t: &Table, c: &ColumnDef) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("@odata.type".into(), json!(c.column_type.metadata_type()));
    m.insert(
        "MetadataId".into(),
        json!(metadata_id(&format!("{}.{}", t.logical(), c.logical_name)).to_string()),
    );
    m.insert("LogicalName".into(), json!(c.logical_name));
    m.insert("SchemaName".into(), json!(c.logical_name));
    m.insert("EntityLogicalName".into(), json!(t.logical()));
    m.insert("AttributeType".into(), json!(attribute_type(c)));
    m.insert("IsPrimaryId".into(), json!(c.logical_name == t.pk()));
    m.insert(
        "IsPrimaryName".into(),
        json!(t.def.primary_name.as_deref() == Some(c.logical_name.as_str())),
    );
    m.insert(
        "IsCustomAttribute".into(),
        json!(c.logical_name.contains('_') && !c.logical_name.starts_with("address")),
    );
    m.insert("IsValidForCreate".into(), json!(!c.read_only));
    m.insert(
        "IsValidForUpdate".into(),
        json!(!c.read_only && !c.create_only),
    );
    if let super::schema::ColumnType::Text { max_length }
    | super::schema::ColumnType::Memo { max_length } = c.column_type
    {
        m.insert("MaxLength".into(), json!(max_length));
    }
    if let super::schema::ColumnType::Lookup { targets } = &c.column_type {
        m.insert(
            "Targets".into(),
            json!(targets.iter().map(|t| t.table.clone()).collect::<Vec<_>>()),
        );
    }
    m
}

fn attribute_type(c: &ColumnDef) -> &'static str {
    use super::schema::ColumnType as T;
    match &c.column_type {
        T::Text { .. } => "String",
        T::Memo { .. } => "Memo",
        T::Integer => "Integer",
        T::BigInt => "BigInt",
        T::Decimal => "Decimal",
        T::Double => "Double",
        T::Money => "Money",
        T::Boolean => "Boolean",
        T::DateTime | T::DateOnly => "DateTime",
        T::Choice { .. } => "Picklist",
        T::State => "State",
        T::Status => "Status",
        T::Uniqueidentifier => "Uniqueidentifier",
        T::Lookup { targets } if targets.len() > 1 => "Customer",
        T::Lookup { .. } => "Lookup",
    }
}

fn keys_json(t: &Table) -> Vec<Value> {
    t.def
        .alternate_keys
        .iter()
        .map(|k| {
            json!({
                "MetadataId": metadata_id(&format!("{}#{}", t.logical(), k.name)).to_string(),
                "LogicalName": k.name,
                "SchemaName": k.name,
                "EntityLogicalName": t.logical(),
                "KeyAttributes": k.columns,
                "EntityKeyIndexStatus": "Active",
            })
        })
        .collect()
}

fn select(m: Map<String, Value>, sel: Option<&[String]>) -> Map<String, Value> {
    match sel {
        None => m,
        Some(s) => m
            .into_iter()
            .filter(|(k, _)| k == "MetadataId" || k.starts_with('@') || s.iter().any(|x| x == k))
            .collect(),
    }
}

fn parse_select(s: Option<&String>) -> Option<Vec<String>> {
    s.map(|s| s.split(',').map(|p| p.trim().to_string()).collect())
}

fn not_found(name: &str) -> DvError {
    DvError::new(
        StatusCode::NOT_FOUND,
        codes::NOT_FOUND,
        format!("Could not find entity with logical name '{name}'."),
    )
}

fn logical_name_arg(args: &str) -> DvResult<String> {
    match parse_key(args)? {
        KeySpec::Named(parts) => match parts.as_slice() {
            [(k, Literal::String(v))] if k == "LogicalName" => Ok(v.clone()),
            _ => Err(DvError::odata(
                "Address a metadata item with (LogicalName='name') or its MetadataId.",
            )),
        },
        KeySpec::Bare(Literal::Guid(g)) => Ok(format!("#id:{g}")),
        KeySpec::Bare(_) => Err(DvError::odata("Bad Request - Error in query syntax.")),
    }
}

fn find_table<'m>(model: &'m Model, name: &str) -> Option<&'m Table> {
    match name.strip_prefix("#id:") {
        Some(id) => model
            .tables
            .values()
            .find(|t| metadata_id(t.logical()).to_string() == id),
        None => model.table(name),
    }
}

/// `GET EntityDefinitions…`
pub(crate) fn entity_definitions(
    ctx: &Ctx<'_>,
    args: Option<&str>,
    rest: &[Segment],
    pairs: &[(String, String)],
) -> DvResult<OpResponse> {
    let model = ctx.model;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    let sel = parse_select(get("$select"));
    let base = ctx.api_base;
    let Some(args) = args else {
        if !rest.is_empty() {
            return Err(DvError::unknown_segment(&rest[0].text()));
        }
        // The collection; `$filter=LogicalName eq 'x'` is honoured in its simplest form.
        let wanted = get("$filter").and_then(|f| {
            let f = f.trim();
            f.strip_prefix("LogicalName eq '")
                .and_then(|r| r.strip_suffix('\''))
                .map(|s| s.replace("''", "'"))
        });
        let value: Vec<Value> = model
            .tables
            .values()
            .filter(|t| wanted.as_deref().is_none_or(|w| w == t.logical()))
            .map(|t| Value::Object(select(entity_json(t), sel.as_deref())))
            .collect();
        return Ok(json_response(
            StatusCode::OK,
            json!({"@odata.context": format!("{base}$metadata#EntityDefinitions"), "value": value}),
        ));
    };
    let name = logical_name_arg(args)?;
    let t = find_table(model, &name).ok_or_else(|| not_found(&name))?;
    match rest {
        [] => {
            let mut m = select(entity_json(t), sel.as_deref());
            if let Some(expand) = get("$expand") {
                for item in expand.split(',') {
                    let nav = item.split('(').next().unwrap_or("").trim();
                    match nav {
                        "Attributes" => {
                            let v: Vec<Value> = t
                                .columns
                                .iter()
                                .map(|c| Value::Object(attribute_json(t, c)))
                                .collect();
                            m.insert("Attributes".into(), Value::Array(v));
                        }
                        "Keys" => {
                            m.insert("Keys".into(), Value::Array(keys_json(t)));
                        }
                        other => {
                            return Err(DvError::unknown_property(other, "EntityMetadata"));
                        }
                    }
                }
            }
            m.insert(
                "@odata.context".into(),
                json!(format!("{base}$metadata#EntityDefinitions/$entity")),
            );
            Ok(json_response(StatusCode::OK, Value::Object(m)))
        }
        [seg] if seg.name == "Attributes" => match seg.args.as_deref() {
            None => {
                let value: Vec<Value> = t
                    .columns
                    .iter()
                    .map(|c| Value::Object(select(attribute_json(t, c), sel.as_deref())))
                    .collect();
                Ok(json_response(
                    StatusCode::OK,
                    json!({
                        "@odata.context": format!("{base}$metadata#EntityDefinitions('{}')/Attributes", metadata_id(t.logical())),
                        "value": value,
                    }),
                ))
            }
            Some(a) => {
                let attr = logical_name_arg(a)?;
                let c = t.column(&attr).ok_or_else(|| {
                    DvError::new(
                        StatusCode::NOT_FOUND,
                        codes::NOT_FOUND,
                        format!(
                            "Could not find attribute '{attr}' on entity '{}'.",
                            t.logical()
                        ),
                    )
                })?;
                let mut m = select(attribute_json(t, c), sel.as_deref());
                m.insert(
                    "@odata.context".into(),
                    json!(format!(
                        "{base}$metadata#EntityDefinitions('{}')/Attributes/$entity",
                        metadata_id(t.logical())
                    )),
                );
                Ok(json_response(StatusCode::OK, Value::Object(m)))
            }
        },
        [seg] if seg.name == "Keys" && seg.args.is_none() => Ok(json_response(
            StatusCode::OK,
            json!({
                "@odata.context": format!("{base}$metadata#EntityDefinitions('{}')/Keys", metadata_id(t.logical())),
                "value": keys_json(t),
            }),
        )),
        [seg, ..] => Err(DvError::unknown_segment(&seg.text())),
    }
}

/// A minimal CSDL listing the entity types, their properties and entity sets.
pub(crate) fn csdl(model: &Model) -> OpResponse {
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<edmx:Edmx Version=\"4.0\" xmlns:edmx=\"http://docs.oasis-open.org/odata/ns/edmx\"><edmx:DataServices><Schema Namespace=\"Microsoft.Dynamics.CRM\" Alias=\"mscrm\" xmlns=\"http://docs.oasis-open.org/odata/ns/edm\">",
    );
    for t in model.tables.values() {
        x.push_str(&format!(
            "<EntityType Name=\"{}\"><Key><PropertyRef Name=\"{}\"/></Key>",
            t.logical(),
            t.pk()
        ));
        for c in &t.columns {
            x.push_str(&format!(
                "<Property Name=\"{}\" Type=\"{}\"/>",
                c.property_name(),
                c.column_type.edm_name()
            ));
        }
        x.push_str("</EntityType>");
    }
    x.push_str("<EntityContainer Name=\"System\">");
    for t in model.tables.values() {
        x.push_str(&format!(
            "<EntitySet Name=\"{}\" EntityType=\"Microsoft.Dynamics.CRM.{}\"/>",
            t.set(),
            t.logical()
        ));
    }
    x.push_str("</EntityContainer></Schema></edmx:DataServices></edmx:Edmx>");
    OpResponse {
        status: StatusCode::OK,
        headers: vec![("Content-Type".into(), "application/xml".into())],
        body: Some(OpBody::Text(x)),
    }
}
