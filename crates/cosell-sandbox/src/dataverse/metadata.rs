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

/// The keys with their index status; each read moves a Pending index on.
// Source: "Work with alternate keys" (D-AKDEF,
// https://learn.microsoft.com/power-apps/developer/data-platform/define-alternate-keys-entity): the index is built asynchronously and
// EntityKeyIndexStatus tells where it is.
fn keys_json(ctx: &mut Ctx<'_>, t: &Table) -> Vec<Value> {
    let out = t
        .def
        .alternate_keys
        .iter()
        .map(|k| {
            json!({
                "MetadataId": metadata_id(&format!("{}#{}", t.logical(), k.name)).to_string(),
                "LogicalName": k.name,
                "SchemaName": k.name,
                "EntityLogicalName": t.logical(),
                "KeyAttributes": k.columns,
                "EntityKeyIndexStatus": ctx.store.meta.key_status(t.logical(), &k.name),
            })
        })
        .collect();
    for k in &t.def.alternate_keys {
        ctx.store.meta.advance_key(t.logical(), &k.name);
    }
    out
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

pub(crate) fn logical_name_arg(args: &str) -> DvResult<String> {
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

fn attribute_not_found(t: &Table, attr: &str) -> DvError {
    DvError::new(
        StatusCode::NOT_FOUND,
        codes::NOT_FOUND,
        format!(
            "Could not find attribute '{attr}' on entity '{}'.",
            t.logical()
        ),
    )
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
    ctx: &mut Ctx<'_>,
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
                            m.insert("Keys".into(), Value::Array(keys_json(ctx, t)));
                        }
                        "ManyToOneRelationships" => {
                            m.insert(
                                "ManyToOneRelationships".into(),
                                Value::Array(many_to_one_json(ctx, t)),
                            );
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
        [seg, cast] if seg.name == "Attributes" && seg.args.is_some() => {
            // `Attributes(LogicalName='x')/Microsoft.Dynamics.CRM.PicklistAttributeMetadata`:
            // the cast reaches the type's own properties (MaxLength, OptionSet).
            let attr = logical_name_arg(seg.args.as_deref().unwrap_or_default())?;
            let c = t
                .column(&attr)
                .ok_or_else(|| attribute_not_found(t, &attr))?;
            let wanted = cast.name.trim_start_matches('#');
            if c.column_type.metadata_type().trim_start_matches('#') != wanted {
                return Err(DvError::new(
                    StatusCode::NOT_FOUND,
                    codes::NOT_FOUND,
                    format!("The attribute '{attr}' is not a {wanted}."),
                ));
            }
            let mut m = select(attribute_json(t, c), sel.as_deref());
            if get("$expand").is_some_and(|e| e.starts_with("OptionSet"))
                && let Some(os) = option_set_json(c)
            {
                m.insert("OptionSet".into(), os);
            }
            Ok(json_response(StatusCode::OK, Value::Object(m)))
        }
        [seg] if seg.name == "ManyToOneRelationships" && seg.args.is_none() => {
            let value = many_to_one_json(ctx, t);
            Ok(json_response(StatusCode::OK, json!({ "value": value })))
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
                let c = t
                    .column(&attr)
                    .ok_or_else(|| attribute_not_found(t, &attr))?;
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
                "value": keys_json(ctx, t),
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

// ----- metadata writes ----------------------------------------------------------------------

use super::request::{OpRequest, header};
use super::schema::{ColumnType, DataverseSchema, StateModel, TableDef};
use super::store::{KEY_INDEX_READS, KeyIndex};

/// The text of a `Label` (`LocalizedLabels[0].Label`), if any.
fn label_text(v: Option<&Value>) -> Option<String> {
    v?.get("LocalizedLabels")?
        .as_array()?
        .first()?
        .get("Label")?
        .as_str()
        .map(str::to_string)
}

fn label_json(text: &str) -> Value {
    let l = json!({"@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel", "Label": text, "LanguageCode": 1033});
    json!({"LocalizedLabels": [l.clone()], "UserLocalizedLabel": l})
}

fn required<'v>(body: &'v Map<String, Value>, name: &str, of: &str) -> DvResult<&'v Value> {
    body.get(name)
        .filter(|v| !v.is_null())
        .ok_or_else(|| DvError::odata(format!("The property '{name}' is required to create {of}.")))
}

fn required_str<'v>(body: &'v Map<String, Value>, name: &str, of: &str) -> DvResult<&'v str> {
    required(body, name, of)?
        .as_str()
        .ok_or_else(|| DvError::odata(format!("The property '{name}' of {of} must be a string.")))
}

/// A custom component's schema name carries its publisher's customization prefix.
// Source: "Create and update table definitions using the Web API"
// (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-entity-definitions-using-web-api): the SchemaName "should
// include the customization prefix that matches the solution publisher".
fn custom_schema_name(name: &str, of: &str) -> DvResult<String> {
    let Some((prefix, rest)) = name.split_once('_') else {
        return Err(DvError::odata(format!(
            "The schema name '{name}' of {of} has no customization prefix ('prefix_Name')."
        )));
    };
    if prefix.is_empty()
        || rest.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(DvError::odata(format!(
            "'{name}' is not a valid schema name for {of}."
        )));
    }
    Ok(name.to_ascii_lowercase())
}

fn odata_type(body: &Map<String, Value>) -> &str {
    body.get("@odata.type")
        .and_then(Value::as_str)
        .map(|t| t.trim_start_matches('#'))
        .unwrap_or("")
}

fn metadata_exists(what: &str, name: &str) -> DvError {
    DvError::bad_request(
        codes::DUPLICATE_RECORD,
        format!("A {what} with the name '{name}' already exists."),
    )
}

/// The solution named by `MSCRM.SolutionUniqueName`, which must exist.
// Source: "Create and update table definitions using the Web API"
// (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-entity-definitions-using-web-api): the MSCRM.SolutionUniqueName
// header associates the created component with the solution of that unique name.
fn solution_of(ctx: &Ctx<'_>, req: &OpRequest) -> DvResult<Option<String>> {
    let Some(name) = header(&req.headers, "MSCRM.SolutionUniqueName") else {
        return Ok(None);
    };
    let exists = ctx.store.rows("solution").is_some_and(|rows| {
        rows.values()
            .any(|r| r.get("uniquename").and_then(Value::as_str) == Some(name))
    });
    if !exists {
        return Err(DvError::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            format!("The solution '{name}' named by MSCRM.SolutionUniqueName does not exist."),
        ));
    }
    Ok(Some(name.to_string()))
}

/// Stages `schema` as the model's next definition and counts the write.
fn stage(
    ctx: &mut Ctx<'_>,
    solution: Option<String>,
    kind: &str,
    name: &str,
    schema: DataverseSchema,
) {
    ctx.store.meta.schema_change = Some(schema);
    ctx.store.meta.writes += 1;
    if let Some(s) = solution {
        ctx.store
            .meta
            .components
            .push((s, kind.to_string(), name.to_string()));
    }
}

fn current_schema(ctx: &mut Ctx<'_>) -> DataverseSchema {
    ctx.store
        .meta
        .schema_change
        .take()
        .unwrap_or_else(|| ctx.model.schema.clone())
}

fn created(ctx: &Ctx<'_>, path: String) -> OpResponse {
    OpResponse {
        status: StatusCode::NO_CONTENT,
        headers: vec![("OData-EntityId".into(), format!("{}{path}", ctx.api_base))],
        body: None,
    }
}

/// The plural entity set name Dataverse derives from a logical name.
fn plural(logical: &str) -> String {
    if logical.ends_with('s')
        || logical.ends_with('x')
        || logical.ends_with("ch")
        || logical.ends_with("sh")
    {
        format!("{logical}es")
    } else if let Some(stem) = logical.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        format!("{stem}ies")
    } else {
        format!("{logical}s")
    }
}

/// A column definition from `…AttributeMetadata` JSON.
// Source: "Create and update column definitions using the Web API"
// (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-column-definitions-using-web-api): each column type is posted
// with its `@odata.type` (StringAttributeMetadata with MaxLength, MemoAttributeMetadata,
// BooleanAttributeMetadata with an OptionSet of TrueOption/FalseOption, PicklistAttributeMetadata
// with OptionSet.Options, …); lookups are created with their relationship instead.
fn column_from_json(body: &Map<String, Value>) -> DvResult<ColumnDef> {
    let what = "a column";
    let schema_name = required_str(body, "SchemaName", what)?;
    let logical = custom_schema_name(schema_name, what)?;
    required(body, "DisplayName", what)?;
    let max_length = |lo: u64, hi: u64| -> DvResult<usize> {
        let n = required(body, "MaxLength", what)?
            .as_u64()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| {
                DvError::odata(format!(
                    "MaxLength of '{schema_name}' must be between {lo} and {hi}."
                ))
            })?;
        Ok(n as usize)
    };
    let t = match odata_type(body) {
        "Microsoft.Dynamics.CRM.StringAttributeMetadata" => ColumnType::Text {
            max_length: max_length(1, 4000)?,
        },
        "Microsoft.Dynamics.CRM.MemoAttributeMetadata" => ColumnType::Memo {
            max_length: max_length(1, 1_048_576)?,
        },
        "Microsoft.Dynamics.CRM.BooleanAttributeMetadata" => {
            let os = required(body, "OptionSet", what)?;
            if os.get("TrueOption").is_none() || os.get("FalseOption").is_none() {
                return Err(DvError::odata(format!(
                    "The OptionSet of the Yes/No column '{schema_name}' needs a TrueOption and a FalseOption."
                )));
            }
            ColumnType::Boolean
        }
        "Microsoft.Dynamics.CRM.PicklistAttributeMetadata" => {
            let os = required(body, "OptionSet", what)?;
            let options = os.get("Options").and_then(Value::as_array).ok_or_else(|| {
                DvError::odata(format!(
                    "The choice column '{schema_name}' needs OptionSet.Options."
                ))
            })?;
            let mut out = Vec::new();
            for o in options {
                let v = o.get("Value").and_then(Value::as_i64).ok_or_else(|| {
                    DvError::odata(format!("An option of '{schema_name}' has no Value."))
                })?;
                if out.iter().any(|(x, _)| *x == v) {
                    return Err(DvError::odata(format!(
                        "The option value {v} of '{schema_name}' is used twice."
                    )));
                }
                out.push((v, label_text(o.get("Label")).unwrap_or_default()));
            }
            ColumnType::Choice { options: out }
        }
        "Microsoft.Dynamics.CRM.IntegerAttributeMetadata" => ColumnType::Integer,
        "Microsoft.Dynamics.CRM.DecimalAttributeMetadata" => ColumnType::Decimal,
        "Microsoft.Dynamics.CRM.DoubleAttributeMetadata" => ColumnType::Double,
        "Microsoft.Dynamics.CRM.MoneyAttributeMetadata" => ColumnType::Money,
        "Microsoft.Dynamics.CRM.DateTimeAttributeMetadata" => {
            if body.get("Format").and_then(Value::as_str) == Some("DateOnly") {
                ColumnType::DateOnly
            } else {
                ColumnType::DateTime
            }
        }
        "Microsoft.Dynamics.CRM.LookupAttributeMetadata" => {
            return Err(DvError::odata(
                "A lookup column is created with its relationship: POST a OneToManyRelationshipMetadata to RelationshipDefinitions.",
            ));
        }
        other => {
            return Err(DvError::odata(format!(
                "The column '{schema_name}' needs an @odata.type naming its attribute metadata type (got '{other}')."
            )));
        }
    };
    Ok(ColumnDef::new(logical, t))
}

/// `POST EntityDefinitions`: a custom table with its primary name column.
// Source: "Create and update table definitions using the Web API"
// (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-entity-definitions-using-web-api): the posted EntityMetadata
// needs SchemaName, DisplayName, DisplayCollectionName, OwnershipType and the primary name
// attribute (a StringAttributeMetadata with IsPrimaryName true); the answer is 204 with the
// definition's URI in OData-EntityId. New tables do not track changes until enabled.
pub(crate) fn create_table(ctx: &mut Ctx<'_>, req: &OpRequest) -> DvResult<OpResponse> {
    let body = super::ops::json_body(req, "EntityMetadata")?;
    let what = "a table";
    let solution = solution_of(ctx, req)?;
    let schema_name = required_str(&body, "SchemaName", what)?;
    let logical = custom_schema_name(schema_name, what)?;
    for p in ["DisplayName", "DisplayCollectionName", "OwnershipType"] {
        required(&body, p, what)?;
    }
    if ctx.model.table(&logical).is_some() {
        return Err(metadata_exists("table", &logical));
    }
    let attributes = body
        .get("Attributes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut columns = Vec::new();
    let mut primary = None;
    for a in &attributes {
        let Value::Object(a) = a else {
            return Err(DvError::odata("Each item of Attributes must be an object."));
        };
        let c = column_from_json(a)?;
        if a.get("IsPrimaryName").and_then(Value::as_bool) == Some(true) {
            if !matches!(c.column_type, ColumnType::Text { .. }) {
                return Err(DvError::odata(
                    "The primary name attribute must be a StringAttributeMetadata.",
                ));
            }
            primary = Some(c.logical_name.clone());
        }
        columns.push(c);
    }
    let Some(primary) = primary else {
        return Err(DvError::odata(format!(
            "The table '{schema_name}' must include its primary name attribute (IsPrimaryName: true)."
        )));
    };
    let mut def = TableDef::new(logical.clone(), plural(&logical))
        .primary_name(primary)
        .state_model(StateModel::active_inactive())
        .change_tracking(body.get("ChangeTrackingEnabled").and_then(Value::as_bool) == Some(true));
    for c in columns {
        def = def.column(c);
    }
    let schema = current_schema(ctx).with_table(def);
    stage(ctx, solution, "table", &logical, schema);
    Ok(created(
        ctx,
        format!("EntityDefinitions({})", metadata_id(&logical)),
    ))
}

/// `POST EntityDefinitions(…)/Attributes`.
// Source: "Create and update column definitions using the Web API"
// (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-column-definitions-using-web-api): POST the attribute's JSON
// to the table's Attributes collection; 204 with the column's URI.
pub(crate) fn create_column(
    ctx: &mut Ctx<'_>,
    table: &str,
    req: &OpRequest,
) -> DvResult<OpResponse> {
    let body = super::ops::json_body(req, "AttributeMetadata")?;
    let solution = solution_of(ctx, req)?;
    let t = find_table(ctx.model, table).ok_or_else(|| not_found(table))?;
    let c = column_from_json(&body)?;
    if t.column(&c.logical_name).is_some() {
        return Err(metadata_exists(
            "column",
            &format!("{}.{}", t.logical(), c.logical_name),
        ));
    }
    let (tl, cl) = (t.logical().to_string(), c.logical_name.clone());
    let schema = current_schema(ctx).with_column(&tl, c);
    stage(ctx, solution, "column", &format!("{tl}.{cl}"), schema);
    Ok(created(
        ctx,
        format!(
            "EntityDefinitions({})/Attributes({})",
            metadata_id(&tl),
            metadata_id(&format!("{tl}.{cl}"))
        ),
    ))
}

/// `POST EntityDefinitions(…)/Keys`: the key is created Pending and indexed asynchronously.
// Source: "Work with alternate keys" (D-AKDEF,
// https://learn.microsoft.com/power-apps/developer/data-platform/define-alternate-keys-entity): at most 10 keys per table and 16 columns per
// key; the index is built by a system job, EntityKeyIndexStatus Pending, InProgress, Active or
// Failed.
pub(crate) fn create_key(ctx: &mut Ctx<'_>, table: &str, req: &OpRequest) -> DvResult<OpResponse> {
    let body = super::ops::json_body(req, "EntityKeyMetadata")?;
    let what = "an alternate key";
    let solution = solution_of(ctx, req)?;
    let t = find_table(ctx.model, table).ok_or_else(|| not_found(table))?;
    let name = custom_schema_name(required_str(&body, "SchemaName", what)?, what)?;
    required(&body, "DisplayName", what)?;
    let columns: Vec<String> = required(&body, "KeyAttributes", what)?
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if columns.is_empty() || columns.len() > 16 {
        return Err(DvError::odata(
            "An alternate key covers between 1 and 16 columns.",
        ));
    }
    for c in &columns {
        if t.column(c).is_none() {
            return Err(DvError::odata(format!(
                "The key column '{c}' does not exist on '{}'.",
                t.logical()
            )));
        }
    }
    if t.def.alternate_keys.len() >= 10 {
        return Err(DvError::odata(format!(
            "The table '{}' already has 10 alternate keys.",
            t.logical()
        )));
    }
    if t.def.alternate_keys.iter().any(|k| k.name == name) {
        return Err(metadata_exists("key", &name));
    }
    let tl = t.logical().to_string();
    let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
    let schema = current_schema(ctx).with_alternate_key(&tl, &name, &cols);
    let state = if std::mem::take(&mut ctx.store.meta.fail_next_key) {
        KeyIndex::Failed
    } else {
        KeyIndex::Pending {
            reads_left: KEY_INDEX_READS,
        }
    };
    ctx.store.meta.keys.insert(format!("{tl}#{name}"), state);
    stage(ctx, solution, "key", &format!("{tl}.{name}"), schema);
    Ok(created(
        ctx,
        format!(
            "EntityDefinitions({})/Keys({})",
            metadata_id(&tl),
            metadata_id(&format!("{tl}#{name}"))
        ),
    ))
}

/// `POST ReactivateEntityKey`: queues a Failed key's index again.
// Source: ReactivateEntityKeyRequest
// (https://learn.microsoft.com/dotnet/api/microsoft.xrm.sdk.messages.reactivateentitykeyrequest): "submit a new
// asynchronous system job to create the index for the key"; the Web API has the
// ReactivateEntityKey action.
pub(crate) fn reactivate_key(ctx: &mut Ctx<'_>, req: &OpRequest) -> DvResult<OpResponse> {
    let body = super::ops::json_body(req, "ReactivateEntityKey")?;
    let table = required_str(&body, "EntityLogicalName", "ReactivateEntityKey")?.to_string();
    let key = required_str(&body, "EntityKeyLogicalName", "ReactivateEntityKey")?.to_string();
    let t = ctx.model.table(&table).ok_or_else(|| not_found(&table))?;
    if !t.def.alternate_keys.iter().any(|k| k.name == key) {
        return Err(DvError::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            format!("The alternate key '{key}' does not exist on '{table}'."),
        ));
    }
    let name = format!("{table}#{key}");
    if ctx.store.meta.keys.get(&name) == Some(&KeyIndex::Failed) {
        ctx.store.meta.keys.insert(
            name,
            KeyIndex::Pending {
                reads_left: KEY_INDEX_READS,
            },
        );
    }
    ctx.store.meta.writes += 1;
    Ok(OpResponse {
        status: StatusCode::NO_CONTENT,
        headers: Vec::new(),
        body: None,
    })
}

/// `POST RelationshipDefinitions`: a one-to-many relationship and its lookup column.
// Source: "Create and update table relationships using the Web API"
// (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-entity-relationships-using-web-api): a
// OneToManyRelationshipMetadata with ReferencedEntity, ReferencedAttribute, ReferencingEntity
// and the Lookup (LookupAttributeMetadata) created with it by deep insert;
// ReferencingEntityNavigationPropertyName names the single-valued navigation property.
pub(crate) fn create_relationship(ctx: &mut Ctx<'_>, req: &OpRequest) -> DvResult<OpResponse> {
    let body = super::ops::json_body(req, "RelationshipMetadataBase")?;
    let what = "a relationship";
    let solution = solution_of(ctx, req)?;
    if odata_type(&body) != "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata" {
        return Err(DvError::odata(
            "The emulator creates one-to-many relationships (@odata.type Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata).",
        ));
    }
    let name = required_str(&body, "SchemaName", what)?.to_string();
    custom_schema_name(&name, what)?;
    let referenced = required_str(&body, "ReferencedEntity", what)?;
    let referencing = required_str(&body, "ReferencingEntity", what)?;
    let referenced_attribute = required_str(&body, "ReferencedAttribute", what)?;
    let one = ctx
        .model
        .table(referenced)
        .ok_or_else(|| not_found(referenced))?;
    let many = ctx
        .model
        .table(referencing)
        .ok_or_else(|| not_found(referencing))?;
    if referenced_attribute != one.pk() {
        return Err(DvError::odata(format!(
            "ReferencedAttribute must be the primary key of '{referenced}' ('{}').",
            one.pk()
        )));
    }
    if ctx
        .store
        .meta
        .relationship_names
        .values()
        .any(|n| n.eq_ignore_ascii_case(&name))
    {
        return Err(metadata_exists("relationship", &name));
    }
    let Some(Value::Object(lookup)) = body.get("Lookup") else {
        return Err(DvError::odata(
            "The relationship needs its Lookup (LookupAttributeMetadata).",
        ));
    };
    if odata_type(lookup) != "Microsoft.Dynamics.CRM.LookupAttributeMetadata" {
        return Err(DvError::odata(
            "Lookup must be a Microsoft.Dynamics.CRM.LookupAttributeMetadata.",
        ));
    }
    let lookup_schema = required_str(lookup, "SchemaName", "a lookup column")?;
    required(lookup, "DisplayName", "a lookup column")?;
    let column = custom_schema_name(lookup_schema, "a lookup column")?;
    if many.column(&column).is_some() {
        return Err(metadata_exists(
            "column",
            &format!("{referencing}.{column}"),
        ));
    }
    let nav = body
        .get("ReferencingEntityNavigationPropertyName")
        .and_then(Value::as_str)
        .unwrap_or(lookup_schema)
        .to_string();
    let (one_l, many_l) = (one.logical().to_string(), many.logical().to_string());
    let schema = current_schema(ctx).with_column(
        &many_l,
        ColumnDef::lookup_with_navigation(column.clone(), &[(nav.as_str(), one_l.as_str())]),
    );
    ctx.store
        .meta
        .relationship_names
        .insert(format!("{many_l}.{column}"), name.clone());
    stage(ctx, solution, "relationship", &name, schema);
    Ok(created(
        ctx,
        format!("RelationshipDefinitions({})", metadata_id(&name)),
    ))
}

/// `PUT EntityDefinitions(…)`: replaces the table definition (change tracking here).
// Source: "Create and update table definitions using the Web API" (Update table definitions):
// the whole EntityMetadata is PUT back, properties left out reset to their defaults, and
// MSCRM.MergeLabels: true keeps labels in other languages; "Use change tracking to synchronize
// data with external systems" (D-CT,
// https://learn.microsoft.com/power-apps/developer/data-platform/use-change-tracking-synchronize-data-external-systems): ChangeTrackingEnabled, which cannot be turned off again.
pub(crate) fn update_table(
    ctx: &mut Ctx<'_>,
    table: &str,
    req: &OpRequest,
) -> DvResult<OpResponse> {
    let body = super::ops::json_body(req, "EntityMetadata")?;
    let t = find_table(ctx.model, table).ok_or_else(|| not_found(table))?;
    // The whole definition, as read: a body with only the changed property would reset the
    // others, so the emulator refuses one that lacks what a GET returns.
    for p in [
        "MetadataId",
        "LogicalName",
        "SchemaName",
        "EntitySetName",
        "PrimaryIdAttribute",
        "ChangeTrackingEnabled",
    ] {
        if !body.contains_key(p) {
            return Err(DvError::odata(format!(
                "The PUT of the definition of '{}' lacks '{p}': send the whole definition as read.",
                t.logical()
            )));
        }
    }
    if body.get("LogicalName").and_then(Value::as_str) != Some(t.logical()) {
        return Err(DvError::odata("LogicalName cannot be changed."));
    }
    let tracking = body
        .get("ChangeTrackingEnabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if t.def.change_tracking && !tracking {
        return Err(DvError::odata(format!(
            "Change tracking cannot be disabled on '{}' once enabled.",
            t.logical()
        )));
    }
    if tracking != t.def.change_tracking {
        let tl = t.logical().to_string();
        let schema = current_schema(ctx).with_change_tracking(&tl, tracking);
        stage(ctx, None, "table", &tl, schema);
    }
    Ok(OpResponse {
        status: StatusCode::NO_CONTENT,
        headers: Vec::new(),
        body: None,
    })
}

/// `POST PublishXml` / `POST PublishAllXml`.
// Source: "Publish customizations", publish request schema
// (https://learn.microsoft.com/power-apps/developer/model-driven-apps/publish-request-schema): PublishXml takes ParameterXml (an `<importexportxml>`
// naming the entities); PublishAllXml publishes everything.
pub(crate) fn publish(ctx: &mut Ctx<'_>, all: bool, req: &OpRequest) -> DvResult<OpResponse> {
    if !all {
        let body = super::ops::json_body(req, "PublishXml")?;
        let xml = required_str(&body, "ParameterXml", "PublishXml")?;
        if !xml.trim_start().starts_with("<importexportxml>") {
            return Err(DvError::odata(
                "ParameterXml must be an <importexportxml> document.",
            ));
        }
    }
    ctx.store.meta.publishes += 1;
    Ok(OpResponse {
        status: StatusCode::NO_CONTENT,
        headers: Vec::new(),
        body: None,
    })
}

/// `GET EntityDefinitions(…)/ManyToOneRelationships`: one per lookup target.
fn many_to_one_json(ctx: &Ctx<'_>, t: &Table) -> Vec<Value> {
    let mut out = Vec::new();
    for c in &t.columns {
        let ColumnType::Lookup { targets } = &c.column_type else {
            continue;
        };
        for target in targets {
            let name = ctx
                .store
                .meta
                .relationship_names
                .get(&format!("{}.{}", t.logical(), c.logical_name))
                .cloned()
                .unwrap_or_else(|| format!("{}_{}_{}", target.table, t.logical(), c.logical_name));
            out.push(json!({
                "MetadataId": metadata_id(&name).to_string(),
                "SchemaName": name,
                "RelationshipType": "OneToManyRelationship",
                "ReferencedEntity": target.table,
                "ReferencedAttribute": format!("{}id", target.table),
                "ReferencingEntity": t.logical(),
                "ReferencingAttribute": c.logical_name,
                "ReferencingEntityNavigationPropertyName": target.navigation_property,
            }));
        }
    }
    out
}

/// The attribute JSON with the option set a cast to Picklist/Boolean metadata expands.
fn option_set_json(c: &ColumnDef) -> Option<Value> {
    match &c.column_type {
        ColumnType::Choice { options } => Some(json!({
            "OptionSetType": "Picklist",
            "Options": options.iter().map(|(v, l)| json!({"Value": v, "Label": label_json(l)})).collect::<Vec<_>>(),
        })),
        ColumnType::Boolean => Some(json!({
            "OptionSetType": "Boolean",
            "TrueOption": {"Value": 1, "Label": label_json("Yes")},
            "FalseOption": {"Value": 0, "Label": label_json("No")},
        })),
        _ => None,
    }
}
