//! Schema check: which `(table, column)` pairs the environment lacks, and how a table is set
//! up (change tracking, alternate keys and their index status).

use std::collections::{BTreeSet, HashMap};

use cosell_http::http::{HeaderMap, Method};
use futures::TryStreamExt;
use serde::Deserialize;

use crate::client::DataverseClient;
use crate::error::Error;
use crate::model::is_identifier;
use crate::query::escape_string_literal;

/// What [`DataverseClient::check_schema`] found missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaReport {
    /// `(table, column)` pairs that do not exist, in input order (every column of a missing
    /// table is listed).
    pub missing: Vec<(String, String)>,
    /// Tables that do not exist at all.
    pub missing_tables: Vec<String>,
}

impl SchemaReport {
    /// Whether nothing is missing.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// An alternate key as the table's metadata describes it (`EntityKeyMetadata`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct AlternateKeyInfo {
    /// The key's logical name.
    #[serde(rename = "LogicalName")]
    pub logical_name: String,
    /// The columns it covers.
    #[serde(rename = "KeyAttributes", default)]
    pub columns: Vec<String>,
    /// `Active` once its index is built; `Pending`, `InProgress` or `Failed` before (an upsert
    /// by a key that is not Active fails).
    #[serde(rename = "EntityKeyIndexStatus", default)]
    pub index_status: String,
}

impl AlternateKeyInfo {
    /// Whether its index is built, so upserts by it work.
    pub fn is_active(&self) -> bool {
        self.index_status.eq_ignore_ascii_case("active")
    }

    /// Whether it covers exactly `columns` (in any order, names compared case-insensitively).
    pub fn covers(&self, columns: &[&str]) -> bool {
        let mut a: Vec<String> = self
            .columns
            .iter()
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let mut b: Vec<String> = columns.iter().map(|c| c.to_ascii_lowercase()).collect();
        a.sort();
        b.sort();
        a == b
    }
}

/// How a table is set up, from `EntityDefinitions(LogicalName='x')?$expand=Keys`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct TableSetup {
    /// The table's logical name.
    #[serde(rename = "LogicalName")]
    pub logical_name: String,
    /// Whether change tracking is on (needed for a delta link on the table).
    #[serde(rename = "ChangeTrackingEnabled", default)]
    pub change_tracking_enabled: bool,
    /// Its alternate keys.
    #[serde(rename = "Keys", default)]
    pub keys: Vec<AlternateKeyInfo>,
}

impl TableSetup {
    /// The alternate key covering exactly `columns`, if any.
    pub fn key_covering(&self, columns: &[&str]) -> Option<&AlternateKeyInfo> {
        self.keys.iter().find(|k| k.covers(columns))
    }
}

#[derive(Deserialize)]
struct Attribute {
    #[serde(rename = "LogicalName")]
    logical_name: String,
}

impl DataverseClient {
    /// Reports which `(table logical name, column logical name)` pairs are missing, reading
    /// `EntityDefinitions(LogicalName='x')/Attributes?$select=LogicalName` once per table; a table
    /// that answers 404 has all its columns missing. Names compare case-insensitively.
    ///
    /// ```no_run
    /// # async fn demo(client: dataverse_client::DataverseClient) -> Result<(), dataverse_client::Error> {
    /// let report = client
    ///     .check_schema(&[("opportunity", "cosell_referralid"), ("lead", "cosell_referralid")])
    ///     .await?;
    /// for (table, column) in &report.missing {
    ///     println!("missing {table}.{column}");
    /// }
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(skip_all, fields(pairs = pairs.len()))]
    pub async fn check_schema(&self, pairs: &[(&str, &str)]) -> Result<SchemaReport, Error> {
        let mut tables: Vec<&str> = Vec::new();
        for (table, _) in pairs {
            if !is_identifier(table) {
                return Err(Error::invalid(format!(
                    "`{table}` is not a valid table logical name"
                )));
            }
            if !tables.contains(table) {
                tables.push(table);
            }
        }
        let mut found: HashMap<&str, Option<BTreeSet<String>>> = HashMap::new();
        for table in tables {
            let segment = format!(
                "EntityDefinitions(LogicalName={})",
                escape_string_literal(table)
            );
            let url = self.url_for(&[&segment, "Attributes"], Some("$select=LogicalName"));
            let rows: Result<Vec<_>, Error> = self
                .pager::<Attribute>(url, None, "EntityDefinitions")
                .into_stream()
                .try_collect()
                .await;
            match rows {
                Ok(rows) => {
                    let names = rows
                        .into_iter()
                        .map(|e| e.value.logical_name.to_ascii_lowercase())
                        .collect();
                    found.insert(table, Some(names));
                }
                Err(e) if e.is_not_found() => {
                    found.insert(table, None);
                }
                Err(e) => return Err(e),
            }
        }
        let mut report = SchemaReport::default();
        for (table, column) in pairs {
            let present = match found.get(table) {
                Some(Some(names)) => names.contains(&column.to_ascii_lowercase()),
                _ => false,
            };
            if !present {
                report.missing.push((table.to_string(), column.to_string()));
            }
            if matches!(found.get(table), Some(None))
                && !report.missing_tables.iter().any(|t| t == table)
            {
                report.missing_tables.push(table.to_string());
            }
        }
        Ok(report)
    }

    /// How `table` is set up (change tracking, alternate keys with their index status);
    /// `None` when the table does not exist.
    ///
    /// ```no_run
    /// # async fn demo(client: dataverse_client::DataverseClient) -> Result<(), dataverse_client::Error> {
    /// if let Some(t) = client.table_setup("opportunity").await? {
    ///     let key = t.key_covering(&["cosell_referralid"]);
    ///     println!("tracked: {}, key active: {:?}", t.change_tracking_enabled, key.map(|k| k.is_active()));
    /// }
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(skip(self))]
    pub async fn table_setup(&self, table: &str) -> Result<Option<TableSetup>, Error> {
        if !is_identifier(table) {
            return Err(Error::invalid(format!(
                "`{table}` is not a valid table logical name"
            )));
        }
        let segment = format!(
            "EntityDefinitions(LogicalName={})",
            escape_string_literal(table)
        );
        let url = self.url_for(
            &[&segment],
            Some("$select=LogicalName,ChangeTrackingEnabled&$expand=Keys"),
        )?;
        match self
            .execute(Method::GET, &url, HeaderMap::new(), None, None)
            .await
        {
            Ok(resp) => serde_json::from_slice(resp.body())
                .map(Some)
                .map_err(|e| Error::decode("EntityDefinitions", ".", e.to_string())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `EntityDefinitions(LogicalName='lead')?$expand=Keys` answers with (Microsoft's
    /// `EntityMetadata` / `EntityKeyMetadata` members).
    #[test]
    fn a_pending_key_is_found_but_not_active() {
        let setup: TableSetup = serde_json::from_value(serde_json::json!({
            "LogicalName": "lead",
            "ChangeTrackingEnabled": true,
            "MetadataId": "00000000-0000-0000-0000-000000000001",
            "Keys": [{
                "LogicalName": "cosell_referralid_key",
                "KeyAttributes": ["cosell_referralid"],
                "EntityKeyIndexStatus": "Pending"
            }]
        }))
        .unwrap();
        assert!(setup.change_tracking_enabled);
        let key = setup.key_covering(&["COSELL_REFERRALID"]).unwrap();
        assert!(!key.is_active());
        assert!(setup.key_covering(&["cosell_referralid", "name"]).is_none());
    }
}
