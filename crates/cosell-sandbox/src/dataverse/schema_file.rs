//! A user's own schema as a JSON file, loaded on top of a base schema, so a customised field
//! map (renamed or extra columns, a country lookup table) can be tried before going live.
//!
//! ```
//! use cosell_sandbox::dataverse::DataverseSchema;
//! let schema = DataverseSchema::cosell()
//!     .with_schema_json(r#"{
//!       "tables": [{
//!         "logical_name": "new_country", "entity_set_name": "new_countries",
//!         "primary_name": "new_name",
//!         "columns": [{"name": "new_name", "type": "text", "max_length": 100},
//!                     {"name": "new_isocode", "type": "text", "max_length": 2}],
//!         "keys": [{"name": "new_isocode_key", "columns": ["new_isocode"]}]
//!       }],
//!       "columns": [
//!         {"table": "account", "name": "new_countryid", "type": "lookup", "target": "new_country",
//!          "navigation_property": "new_CountryId"},
//!         {"table": "opportunity", "name": "new_region", "type": "choice",
//!          "options": [{"value": 1, "label": "EMEA"}, {"value": 2, "label": "Americas"}]}
//!       ]
//!     }"#)
//!     .unwrap();
//! assert!(schema.table("new_country").is_some());
//! assert!(schema.table("account").unwrap().declared_column("new_countryid").is_some());
//! ```

use serde::Deserialize;

use super::schema::{ColumnDef, DataverseSchema, TableDef};

/// A schema file that cannot be used, naming the item and the value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaFileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not the expected JSON.
    #[error("schema file: {0}")]
    Json(#[from] serde_json::Error),
    /// An item is invalid.
    #[error("schema file: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchema {
    #[serde(default)]
    tables: Vec<FileTable>,
    #[serde(default)]
    columns: Vec<FileColumn>,
    #[serde(default)]
    keys: Vec<FileKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTable {
    logical_name: String,
    entity_set_name: String,
    primary_name: Option<String>,
    #[serde(default = "yes")]
    change_tracking: bool,
    #[serde(default)]
    columns: Vec<FileColumn>,
    #[serde(default)]
    keys: Vec<FileKey>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileColumn {
    /// Only for top-level columns: the existing table they are added to.
    table: Option<String>,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    max_length: Option<usize>,
    #[serde(default)]
    options: Vec<FileOption>,
    target: Option<String>,
    navigation_property: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOption {
    value: i64,
    label: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    table: Option<String>,
    name: String,
    columns: Vec<String>,
}

fn column(c: &FileColumn) -> Result<ColumnDef, SchemaFileError> {
    let len = |default: usize| c.max_length.unwrap_or(default);
    Ok(match c.kind.as_str() {
        "text" => ColumnDef::text(&c.name, len(100)),
        "memo" => ColumnDef::memo(&c.name, len(2000)),
        "integer" => ColumnDef::integer(&c.name),
        "decimal" => ColumnDef::decimal(&c.name),
        "double" => ColumnDef::double(&c.name),
        "money" => ColumnDef::money(&c.name),
        "boolean" => ColumnDef::boolean(&c.name),
        "datetime" => ColumnDef::date_time(&c.name),
        "dateonly" => ColumnDef::date_only(&c.name),
        "choice" => {
            let options: Vec<(i64, &str)> = c
                .options
                .iter()
                .map(|o| (o.value, o.label.as_str()))
                .collect();
            ColumnDef::choice(&c.name, &options)
        }
        "lookup" => {
            let target = c.target.as_deref().ok_or_else(|| {
                SchemaFileError::Invalid(format!(
                    "lookup column `{}` needs a `target` table",
                    c.name
                ))
            })?;
            let nav = c.navigation_property.as_deref().unwrap_or(&c.name);
            ColumnDef::lookup_with_navigation(&c.name, &[(nav, target)])
        }
        other => {
            return Err(SchemaFileError::Invalid(format!(
                "column `{}` has type `{other}`; expected text, memo, integer, decimal, double, money, boolean, datetime, dateonly, choice or lookup",
                c.name
            )));
        }
    })
}

impl DataverseSchema {
    /// Adds the tables, columns and keys of a JSON schema document (see the module example):
    /// `tables` are new tables with their columns and keys, `columns` and `keys` name the
    /// existing `table` they go on.
    pub fn with_schema_json(mut self, json: &str) -> Result<Self, SchemaFileError> {
        let file: FileSchema = serde_json::from_str(json)?;
        for t in &file.tables {
            let mut def = TableDef::new(&t.logical_name, &t.entity_set_name)
                .change_tracking(t.change_tracking);
            if let Some(p) = &t.primary_name {
                def = def.primary_name(p);
            }
            for c in &t.columns {
                def = def.column(column(c)?);
            }
            for k in &t.keys {
                let cols: Vec<&str> = k.columns.iter().map(String::as_str).collect();
                def = def.alternate_key(&k.name, &cols);
            }
            self = self.with_table(def);
        }
        for c in &file.columns {
            let table = c.table.as_deref().ok_or_else(|| {
                SchemaFileError::Invalid(format!(
                    "column `{}` needs the `table` it goes on",
                    c.name
                ))
            })?;
            if self.table(table).is_none() {
                return Err(SchemaFileError::Invalid(format!(
                    "column `{}` goes on table `{table}`, which the schema lacks",
                    c.name
                )));
            }
            self = self.with_column(table, column(c)?);
        }
        for k in &file.keys {
            let table = k.table.as_deref().ok_or_else(|| {
                SchemaFileError::Invalid(format!("key `{}` needs the `table` it goes on", k.name))
            })?;
            if self.table(table).is_none() {
                return Err(SchemaFileError::Invalid(format!(
                    "key `{}` goes on unknown table `{table}`",
                    k.name
                )));
            }
            let cols: Vec<&str> = k.columns.iter().map(String::as_str).collect();
            self = self.with_alternate_key(table, &k.name, &cols);
        }
        Ok(self)
    }

    /// [`with_schema_json`](Self::with_schema_json) from a file.
    pub fn with_schema_file(
        self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Self, SchemaFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SchemaFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        self.with_schema_json(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_type_names_the_column_and_the_type() {
        let e = DataverseSchema::bare()
            .with_schema_json(r#"{"columns":[{"table":"lead","name":"new_x","type":"txt"}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("`new_x` has type `txt`"), "{e}");
        let e = DataverseSchema::bare()
            .with_schema_json(r#"{"columns":[{"table":"nope","name":"new_x","type":"text"}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("table `nope`"), "{e}");
    }
}
