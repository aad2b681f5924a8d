//! Schema check: which `(table, column)` pairs the environment lacks.

use std::collections::{BTreeSet, HashMap};

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
}
