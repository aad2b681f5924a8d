//! Metadata writes: custom tables, columns, alternate keys, one-to-many relationships, change
//! tracking and publishing, through the Web API's `EntityDefinitions` and
//! `RelationshipDefinitions`, and the reads a provisioner compares them with.
//!
//! Every create can name a solution (`MSCRM.SolutionUniqueName`), so what is created can be
//! exported and removed as one.

use bytes::Bytes;
use cosell_http::http::{HeaderMap, HeaderValue, Method};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::client::DataverseClient;
use crate::error::Error;
use crate::model::is_identifier;
use crate::ops::decode_body;
use crate::query::escape_string_literal;

/// Label language of everything cosell creates (English, 1033).
const LANGUAGE: u32 = 1033;

fn label(text: &str) -> Value {
    json!({
        "@odata.type": "Microsoft.Dynamics.CRM.Label",
        "LocalizedLabels": [{
            "@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel",
            "Label": text,
            "LanguageCode": LANGUAGE,
        }],
    })
}

/// The type of a custom column and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ColumnKind {
    /// Single line of text.
    Text {
        /// Maximum length in characters (1–4000).
        max_length: u32,
    },
    /// Single line of text formatted as a URL.
    Url {
        /// Maximum length in characters (1–4000).
        max_length: u32,
    },
    /// Multiple lines of text.
    Memo {
        /// Maximum length in characters (1–1048576).
        max_length: u32,
    },
    /// Yes/No with its two labels.
    YesNo {
        /// Label of `true`.
        true_label: String,
        /// Label of `false`.
        false_label: String,
    },
    /// A local choice with its values and labels.
    Choice {
        /// `(value, label)` pairs.
        options: Vec<(i64, String)>,
    },
}

impl ColumnKind {
    /// The `AttributeType` the metadata reports for a column of this kind.
    pub fn attribute_type(&self) -> &'static str {
        match self {
            ColumnKind::Text { .. } | ColumnKind::Url { .. } => "String",
            ColumnKind::Memo { .. } => "Memo",
            ColumnKind::YesNo { .. } => "Boolean",
            ColumnKind::Choice { .. } => "Picklist",
        }
    }

    /// The length a text column needs, if this kind is text.
    pub fn max_length(&self) -> Option<u32> {
        match self {
            ColumnKind::Text { max_length }
            | ColumnKind::Url { max_length }
            | ColumnKind::Memo { max_length } => Some(*max_length),
            _ => None,
        }
    }

    /// A short human description ("Text (100)", "Yes/No", "Choice").
    pub fn describe(&self) -> String {
        match self {
            ColumnKind::Text { max_length } => format!("Text ({max_length})"),
            ColumnKind::Url { max_length } => format!("URL ({max_length})"),
            ColumnKind::Memo { max_length } => format!("Multiline text ({max_length})"),
            ColumnKind::YesNo { .. } => "Yes/No".to_string(),
            ColumnKind::Choice { options } => format!("Choice ({} values)", options.len()),
        }
    }
}

/// A custom column to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDefinition {
    /// Schema name with the publisher prefix (`cosell_ReferralId`); the logical name is its
    /// lower case.
    pub schema_name: String,
    /// Display name.
    pub display_name: String,
    /// Description shown to makers.
    pub description: String,
    /// Type.
    pub kind: ColumnKind,
}

impl ColumnDefinition {
    /// The logical name (the schema name in lower case).
    pub fn logical_name(&self) -> String {
        self.schema_name.to_ascii_lowercase()
    }

    /// The `…AttributeMetadata` JSON the Web API takes.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let (odata_type, attribute_type, type_name) = match &self.kind {
            ColumnKind::Text { .. } | ColumnKind::Url { .. } => {
                ("StringAttributeMetadata", "String", "StringType")
            }
            ColumnKind::Memo { .. } => ("MemoAttributeMetadata", "Memo", "MemoType"),
            ColumnKind::YesNo { .. } => ("BooleanAttributeMetadata", "Boolean", "BooleanType"),
            ColumnKind::Choice { .. } => ("PicklistAttributeMetadata", "Picklist", "PicklistType"),
        };
        m.insert(
            "@odata.type".into(),
            json!(format!("Microsoft.Dynamics.CRM.{odata_type}")),
        );
        m.insert("AttributeType".into(), json!(attribute_type));
        m.insert("AttributeTypeName".into(), json!({ "Value": type_name }));
        m.insert("SchemaName".into(), json!(self.schema_name));
        m.insert("DisplayName".into(), label(&self.display_name));
        m.insert("Description".into(), label(&self.description));
        m.insert(
            "RequiredLevel".into(),
            json!({"Value": "None", "CanBeChanged": true}),
        );
        match &self.kind {
            ColumnKind::Text { max_length } => {
                m.insert("MaxLength".into(), json!(max_length));
                m.insert("FormatName".into(), json!({"Value": "Text"}));
            }
            ColumnKind::Url { max_length } => {
                m.insert("MaxLength".into(), json!(max_length));
                m.insert("FormatName".into(), json!({"Value": "Url"}));
            }
            ColumnKind::Memo { max_length } => {
                m.insert("MaxLength".into(), json!(max_length));
                m.insert("Format".into(), json!("TextArea"));
            }
            ColumnKind::YesNo {
                true_label,
                false_label,
            } => {
                m.insert("DefaultValue".into(), json!(false));
                m.insert(
                    "OptionSet".into(),
                    json!({
                        "@odata.type": "Microsoft.Dynamics.CRM.BooleanOptionSetMetadata",
                        "OptionSetType": "Boolean",
                        "TrueOption": {"Value": 1, "Label": label(true_label)},
                        "FalseOption": {"Value": 0, "Label": label(false_label)},
                    }),
                );
            }
            ColumnKind::Choice { options } => {
                m.insert(
                    "OptionSet".into(),
                    json!({
                        "@odata.type": "Microsoft.Dynamics.CRM.OptionSetMetadata",
                        "IsGlobal": false,
                        "OptionSetType": "Picklist",
                        "Options": options
                            .iter()
                            .map(|(v, l)| json!({"Value": v, "Label": label(l)}))
                            .collect::<Vec<_>>(),
                    }),
                );
            }
        }
        Value::Object(m)
    }
}

/// A custom table to create, with its primary name column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDefinition {
    /// Schema name with the publisher prefix (`cosell_PartnerCenterSolution`).
    pub schema_name: String,
    /// Display name.
    pub display_name: String,
    /// Plural display name.
    pub display_collection_name: String,
    /// Description.
    pub description: String,
    /// The primary name column (a text column).
    pub primary_name: ColumnDefinition,
}

impl TableDefinition {
    /// The logical name (the schema name in lower case).
    pub fn logical_name(&self) -> String {
        self.schema_name.to_ascii_lowercase()
    }

    /// The `EntityMetadata` JSON the Web API takes.
    pub fn to_json(&self) -> Value {
        let mut primary = self.primary_name.to_json();
        if let Value::Object(m) = &mut primary {
            m.insert("IsPrimaryName".into(), json!(true));
        }
        json!({
            "@odata.type": "Microsoft.Dynamics.CRM.EntityMetadata",
            "SchemaName": self.schema_name,
            "DisplayName": label(&self.display_name),
            "DisplayCollectionName": label(&self.display_collection_name),
            "Description": label(&self.description),
            "OwnershipType": "UserOwned",
            "IsActivity": false,
            "HasActivities": false,
            "HasNotes": false,
            "Attributes": [primary],
        })
    }
}

/// A one-to-many relationship and the lookup column it creates on the "many" table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupRelationship {
    /// Relationship schema name (`cosell_opportunity_opportunitysolution`).
    pub schema_name: String,
    /// The "one" table (`opportunity`).
    pub referenced_table: String,
    /// The "many" table that gets the lookup.
    pub referencing_table: String,
    /// Lookup column schema name (`cosell_OpportunityId`).
    pub lookup_schema_name: String,
    /// Lookup display name.
    pub lookup_display_name: String,
    /// Single-valued navigation property on the "many" table (what `@odata.bind` names).
    pub navigation_property: String,
}

impl LookupRelationship {
    /// The `OneToManyRelationshipMetadata` JSON the Web API takes.
    pub fn to_json(&self) -> Value {
        json!({
            "@odata.type": "Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
            "SchemaName": self.schema_name,
            "ReferencedEntity": self.referenced_table,
            "ReferencedAttribute": format!("{}id", self.referenced_table),
            "ReferencingEntity": self.referencing_table,
            "ReferencingEntityNavigationPropertyName": self.navigation_property,
            "CascadeConfiguration": {
                "Assign": "NoCascade", "Delete": "RemoveLink", "Merge": "NoCascade",
                "Reparent": "NoCascade", "Share": "NoCascade", "Unshare": "NoCascade",
            },
            "Lookup": {
                "@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
                "AttributeType": "Lookup",
                "AttributeTypeName": {"Value": "LookupType"},
                "SchemaName": self.lookup_schema_name,
                "DisplayName": label(&self.lookup_display_name),
                "RequiredLevel": {"Value": "None", "CanBeChanged": true},
            },
        })
    }
}

/// A column as the metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ColumnInfo {
    /// Logical name.
    #[serde(rename = "LogicalName")]
    pub logical_name: String,
    /// `String`, `Memo`, `Boolean`, `Picklist`, `Lookup`, `Money`, …
    #[serde(rename = "AttributeType", default)]
    pub attribute_type: String,
}

/// A many-to-one relationship of a table (one of its lookups).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct RelationshipInfo {
    /// Relationship schema name.
    #[serde(rename = "SchemaName")]
    pub schema_name: String,
    /// The "one" table.
    #[serde(rename = "ReferencedEntity")]
    pub referenced_table: String,
    /// The lookup column.
    #[serde(rename = "ReferencingAttribute")]
    pub lookup_column: String,
    /// The navigation property `@odata.bind` uses.
    #[serde(rename = "ReferencingEntityNavigationPropertyName", default)]
    pub navigation_property: String,
}

#[derive(Deserialize)]
struct Collection<T> {
    value: Vec<T>,
}

#[derive(Deserialize)]
struct OptionSetHolder {
    #[serde(rename = "OptionSet")]
    option_set: Option<OptionSet>,
}

#[derive(Deserialize)]
struct OptionSet {
    #[serde(rename = "Options", default)]
    options: Vec<OptionValue>,
}

#[derive(Deserialize)]
struct OptionValue {
    #[serde(rename = "Value")]
    value: i64,
}

fn check_name(name: &str, what: &str) -> Result<(), Error> {
    if is_identifier(name) {
        Ok(())
    } else {
        Err(Error::invalid(format!("`{name}` is not a valid {what}")))
    }
}

fn entity_segment(table: &str) -> String {
    format!(
        "EntityDefinitions(LogicalName={})",
        escape_string_literal(table)
    )
}

fn solution_headers(solution: Option<&str>) -> Result<HeaderMap, Error> {
    let mut h = HeaderMap::new();
    if let Some(s) = solution {
        h.insert(
            "MSCRM.SolutionUniqueName",
            HeaderValue::from_str(s)
                .map_err(|_| Error::invalid(format!("`{s}` is not a valid solution name")))?,
        );
    }
    Ok(h)
}

fn bytes_of(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

impl DataverseClient {
    async fn metadata_post(
        &self,
        segments: &[&str],
        body: &Value,
        solution: Option<&str>,
    ) -> Result<(), Error> {
        let url = self.url_for(segments, None)?;
        self.execute(
            Method::POST,
            &url,
            solution_headers(solution)?,
            Some(bytes_of(body)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// The columns of `table` with their types; `None` when the table does not exist.
    #[tracing::instrument(skip(self))]
    pub async fn columns(&self, table: &str) -> Result<Option<Vec<ColumnInfo>>, Error> {
        check_name(table, "table logical name")?;
        let url = self.url_for(
            &[&entity_segment(table), "Attributes"],
            Some("$select=LogicalName,AttributeType"),
        )?;
        match self
            .execute(Method::GET, &url, HeaderMap::new(), None, None)
            .await
        {
            Ok(resp) => Ok(Some(
                decode_body::<Collection<ColumnInfo>>(resp.body(), "Attributes")?.value,
            )),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The values of a choice column (`Picklist`), read through the
    /// `PicklistAttributeMetadata` cast with its option set expanded.
    #[tracing::instrument(skip(self))]
    pub async fn choice_values(&self, table: &str, column: &str) -> Result<Vec<i64>, Error> {
        check_name(table, "table logical name")?;
        check_name(column, "column logical name")?;
        let attr = format!("Attributes(LogicalName={})", escape_string_literal(column));
        let url = self.url_for(
            &[
                &entity_segment(table),
                &attr,
                "Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
            ],
            Some("$select=LogicalName&$expand=OptionSet($select=Options)"),
        )?;
        let resp = self
            .execute(Method::GET, &url, HeaderMap::new(), None, None)
            .await?;
        let holder: OptionSetHolder = decode_body(resp.body(), "PicklistAttributeMetadata")?;
        Ok(holder
            .option_set
            .map(|o| o.options.into_iter().map(|v| v.value).collect())
            .unwrap_or_default())
    }

    /// The maximum length of a text column (`String` or `Memo`), read through its metadata
    /// type's cast.
    #[tracing::instrument(skip(self))]
    pub async fn text_max_length(
        &self,
        table: &str,
        column: &str,
        attribute_type: &str,
    ) -> Result<Option<u32>, Error> {
        #[derive(Deserialize)]
        struct Length {
            #[serde(rename = "MaxLength")]
            max_length: Option<u32>,
        }
        check_name(table, "table logical name")?;
        check_name(column, "column logical name")?;
        let cast = match attribute_type {
            "String" => "Microsoft.Dynamics.CRM.StringAttributeMetadata",
            "Memo" => "Microsoft.Dynamics.CRM.MemoAttributeMetadata",
            _ => return Ok(None),
        };
        let attr = format!("Attributes(LogicalName={})", escape_string_literal(column));
        let url = self.url_for(
            &[&entity_segment(table), &attr, cast],
            Some("$select=LogicalName,MaxLength"),
        )?;
        let resp = self
            .execute(Method::GET, &url, HeaderMap::new(), None, None)
            .await?;
        Ok(decode_body::<Length>(resp.body(), cast)?.max_length)
    }

    /// The many-to-one relationships of `table` (its lookups and their navigation properties).
    #[tracing::instrument(skip(self))]
    pub async fn many_to_one_relationships(
        &self,
        table: &str,
    ) -> Result<Vec<RelationshipInfo>, Error> {
        check_name(table, "table logical name")?;
        let url = self.url_for(&[&entity_segment(table), "ManyToOneRelationships"], None)?;
        let resp = self
            .execute(Method::GET, &url, HeaderMap::new(), None, None)
            .await?;
        Ok(
            decode_body::<Collection<RelationshipInfo>>(resp.body(), "ManyToOneRelationships")?
                .value,
        )
    }

    /// The id of the calling user (`WhoAmI`): for an app, its application user.
    #[tracing::instrument(skip(self))]
    pub async fn caller_id(&self) -> Result<uuid::Uuid, Error> {
        #[derive(Deserialize)]
        struct WhoAmI {
            #[serde(rename = "UserId")]
            user_id: uuid::Uuid,
        }
        let url = self.url_for(&["WhoAmI"], None)?;
        let resp = self
            .execute(Method::GET, &url, HeaderMap::new(), None, None)
            .await?;
        Ok(decode_body::<WhoAmI>(resp.body(), "WhoAmI")?.user_id)
    }

    /// The access rights `user` has to one row (`RetrievePrincipalAccess`): `ReadAccess`,
    /// `WriteAccess`, `AppendAccess`, `AppendToAccess`, `CreateAccess`, `DeleteAccess`, …
    #[tracing::instrument(skip(self))]
    pub async fn principal_access(
        &self,
        user: uuid::Uuid,
        entity_set: &str,
        id: uuid::Uuid,
    ) -> Result<Vec<String>, Error> {
        #[derive(Deserialize)]
        struct Access {
            #[serde(rename = "AccessRights")]
            rights: String,
        }
        check_name(entity_set, "entity set name")?;
        let target = json!({ "@odata.id": format!("{entity_set}({id})") }).to_string();
        let url = self.url_for(
            &[
                &format!("systemusers({user})"),
                "Microsoft.Dynamics.CRM.RetrievePrincipalAccess(Target=@target)",
            ],
            Some(&format!(
                "@target={}",
                crate::query::encode_query_value(&target)
            )),
        )?;
        let resp = self
            .execute(Method::GET, &url, HeaderMap::new(), None, None)
            .await?;
        let access: Access = decode_body(resp.body(), "RetrievePrincipalAccess")?;
        Ok(access
            .rights
            .split(',')
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty() && r != "None")
            .collect())
    }

    /// Creates a custom table with its primary name column.
    #[tracing::instrument(skip_all, fields(table = %table.schema_name))]
    pub async fn create_table(
        &self,
        table: &TableDefinition,
        solution: Option<&str>,
    ) -> Result<(), Error> {
        self.metadata_post(&["EntityDefinitions"], &table.to_json(), solution)
            .await
    }

    /// Adds a custom column to `table`.
    #[tracing::instrument(skip(self, column, solution), fields(column = %column.schema_name))]
    pub async fn create_column(
        &self,
        table: &str,
        column: &ColumnDefinition,
        solution: Option<&str>,
    ) -> Result<(), Error> {
        check_name(table, "table logical name")?;
        self.metadata_post(
            &[&entity_segment(table), "Attributes"],
            &column.to_json(),
            solution,
        )
        .await
    }

    /// Defines an alternate key on `table` over `columns`; its index is built asynchronously
    /// (watch it with [`DataverseClient::table_setup`]).
    #[tracing::instrument(skip(self, solution))]
    pub async fn create_alternate_key(
        &self,
        table: &str,
        schema_name: &str,
        display_name: &str,
        columns: &[&str],
        solution: Option<&str>,
    ) -> Result<(), Error> {
        check_name(table, "table logical name")?;
        let body = json!({
            "SchemaName": schema_name,
            "DisplayName": label(display_name),
            "KeyAttributes": columns,
        });
        self.metadata_post(&[&entity_segment(table), "Keys"], &body, solution)
            .await
    }

    /// Queues the index of a Failed alternate key again (`ReactivateEntityKey`).
    #[tracing::instrument(skip(self))]
    pub async fn reactivate_alternate_key(&self, table: &str, key: &str) -> Result<(), Error> {
        let body = json!({"EntityLogicalName": table, "EntityKeyLogicalName": key});
        self.metadata_post(&["ReactivateEntityKey"], &body, None)
            .await
    }

    /// Creates a one-to-many relationship and its lookup column.
    #[tracing::instrument(skip_all, fields(relationship = %relationship.schema_name))]
    pub async fn create_lookup_relationship(
        &self,
        relationship: &LookupRelationship,
        solution: Option<&str>,
    ) -> Result<(), Error> {
        self.metadata_post(
            &["RelationshipDefinitions"],
            &relationship.to_json(),
            solution,
        )
        .await
    }

    /// Turns change tracking on for `table`: reads the whole definition and PUTs it back with
    /// `ChangeTrackingEnabled: true` and `MSCRM.MergeLabels: true` (the metadata API replaces
    /// the definition; merging keeps labels in other languages). Returns whether it changed.
    #[tracing::instrument(skip(self))]
    pub async fn enable_change_tracking(&self, table: &str) -> Result<bool, Error> {
        check_name(table, "table logical name")?;
        let url = self.url_for(&[&entity_segment(table)], None)?;
        let resp = self
            .execute(Method::GET, &url, HeaderMap::new(), None, None)
            .await?;
        let mut def: Map<String, Value> = decode_body(resp.body(), "EntityDefinitions")?;
        if def.get("ChangeTrackingEnabled").and_then(Value::as_bool) == Some(true) {
            return Ok(false);
        }
        def.retain(|k, _| !k.starts_with("@odata.context"));
        def.insert("ChangeTrackingEnabled".into(), Value::Bool(true));
        let id = def
            .get("MetadataId")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::decode("EntityDefinitions", "MetadataId", "missing"))?
            .to_string();
        let put = self.url_for(&[&format!("EntityDefinitions({id})")], None)?;
        let mut headers = HeaderMap::new();
        headers.insert("MSCRM.MergeLabels", HeaderValue::from_static("true"));
        self.execute(
            Method::PUT,
            &put,
            headers,
            Some(bytes_of(&Value::Object(def))),
            None,
        )
        .await?;
        Ok(true)
    }

    /// Publishes the customisations of `tables` (`PublishXml`), or all (`PublishAllXml`) when
    /// `tables` is empty.
    #[tracing::instrument(skip(self))]
    pub async fn publish_customizations(&self, tables: &[&str]) -> Result<(), Error> {
        if tables.is_empty() {
            return self
                .metadata_post(&["PublishAllXml"], &json!({}), None)
                .await;
        }
        let mut xml = String::from("<importexportxml><entities>");
        for t in tables {
            check_name(t, "table logical name")?;
            xml.push_str(&format!("<entity>{t}</entity>"));
        }
        xml.push_str("</entities></importexportxml>");
        self.metadata_post(&["PublishXml"], &json!({ "ParameterXml": xml }), None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_yes_no_column_carries_both_options() {
        let c = ColumnDefinition {
            schema_name: "cosell_SyncWithPartnerCenter".into(),
            display_name: "Sync with Partner Center".into(),
            description: String::new(),
            kind: ColumnKind::YesNo {
                true_label: "Yes".into(),
                false_label: "No".into(),
            },
        };
        let j = c.to_json();
        assert_eq!(
            j["@odata.type"],
            "Microsoft.Dynamics.CRM.BooleanAttributeMetadata"
        );
        assert_eq!(j["OptionSet"]["TrueOption"]["Value"], 1);
        assert_eq!(j["OptionSet"]["FalseOption"]["Value"], 0);
        assert_eq!(c.logical_name(), "cosell_syncwithpartnercenter");
    }
}
