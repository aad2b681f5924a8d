//! Provisioning: creates in Dataverse what the configured field map needs, idempotently.
//!
//! Microsoft's co-sell solution installs its columns when it is imported; cosell creates its
//! own through the metadata Web API, from [`definitions`] of the *configured* map (renamed
//! columns included): a publisher and a solution (every create names it, so the whole can be
//! exported or removed as one), the solution catalogue and link tables, the custom columns with
//! their types, the one-to-many relationships of the link table, the alternate keys (waiting
//! until each index is Active), change tracking, and publishing. What exists is left alone; a
//! column of the wrong type is reported as a conflict, never altered.

use std::time::Duration;

use cosell_mapping::FieldMap;
use dataverse_client::{
    ColumnDefinition, ColumnKind, DataverseClient, Filter, LookupRelationship, Query,
    TableDefinition,
};
use futures::TryStreamExt;
use serde_json::{Map, Value, json};

/// The publisher's customization prefix.
pub const PUBLISHER_PREFIX: &str = "cosell";
/// The solution's unique name.
pub const SOLUTION_NAME: &str = "cosell";
/// The publisher's choice value prefix: custom choice values are `prefix * 10000 + n`, so the
/// documented assistance codes start at 100000000.
pub const OPTION_VALUE_PREFIX: i64 = 10_000;

/// An error while provisioning or checking.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A Dataverse request failed.
    #[error("{step}: {source}")]
    Dataverse {
        /// What was being done.
        step: String,
        /// The error.
        #[source]
        source: dataverse_client::Error,
    },
    /// An alternate key's index did not become Active in time.
    #[error("the alternate key `{key}` of `{table}` is still {status} after {polls} reads")]
    KeyNotActive {
        /// Table.
        table: String,
        /// Key.
        key: String,
        /// Last status read.
        status: String,
        /// Reads made.
        polls: u32,
    },
    /// A row of an imported file is invalid.
    #[error("line {line}: {message}")]
    InvalidRow {
        /// 1-based line number.
        line: usize,
        /// What is wrong, naming the field and value.
        message: String,
    },
}

impl SetupError {
    /// Whether running again later may succeed (throttling, a transient failure, an index
    /// still building).
    pub fn is_retryable(&self) -> bool {
        match self {
            SetupError::Dataverse { source, .. } => source.is_retryable(),
            SetupError::KeyNotActive { .. } => true,
            SetupError::InvalidRow { .. } => false,
        }
    }
}

fn dv(step: impl Into<String>) -> impl FnOnce(dataverse_client::Error) -> SetupError {
    let step = step.into();
    move |source| SetupError::Dataverse { step, source }
}

/// A custom column the map needs, with the config key that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    /// Table logical name.
    pub table: String,
    /// Config key of the column name (`columns.opportunity.referral_id`).
    pub config_key: &'static str,
    /// The definition.
    pub column: ColumnDefinition,
}

/// A custom table the map needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// Config key of the table name.
    pub config_key: &'static str,
    /// Config key of its entity set name.
    pub entity_set_key: &'static str,
    /// The entity set name the map uses.
    pub entity_set: String,
    /// The definition.
    pub table: TableDefinition,
}

/// An alternate key the upserts go by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Table logical name.
    pub table: String,
    /// Key schema name.
    pub name: String,
    /// The key column.
    pub column: String,
    /// Config key of the column.
    pub config_key: &'static str,
}

/// A lookup of the link table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationshipSpec {
    /// Config key of the navigation property.
    pub config_key: &'static str,
    /// The lookup column's logical name.
    pub lookup_column: String,
    /// The definition.
    pub relationship: LookupRelationship,
}

/// Everything provisioning creates for a map, in creation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definitions {
    /// Custom tables.
    pub tables: Vec<TableSpec>,
    /// Custom columns.
    pub columns: Vec<ColumnSpec>,
    /// One-to-many relationships (the link table's lookups).
    pub relationships: Vec<RelationshipSpec>,
    /// Alternate keys.
    pub keys: Vec<KeySpec>,
    /// Tables whose changes sync, with the config key of each: change tracking on.
    pub tracked: Vec<(String, &'static str)>,
}

fn col(
    table: &str,
    config_key: &'static str,
    name: &str,
    display: &str,
    description: &str,
    kind: ColumnKind,
) -> ColumnSpec {
    ColumnSpec {
        table: table.to_string(),
        config_key,
        column: ColumnDefinition {
            schema_name: name.to_string(),
            display_name: display.to_string(),
            description: description.to_string(),
            kind,
        },
    }
}

fn yes_no() -> ColumnKind {
    ColumnKind::YesNo {
        true_label: "Yes".into(),
        false_label: "No".into(),
    }
}

/// Labels of the documented assistance-request codes of "How can Microsoft help?".
fn help_label(code: &str) -> String {
    match code {
        "Unknown" => "No help needed".into(),
        "GeneralOrOther" => "General or other".into(),
        "CustomerTechnicalArchitecture" => "Customer technical architecture".into(),
        "ProofOfConceptOrDemo" => "Proof of concept or demo".into(),
        "QuotesOrLicensing" => "Quotes or licensing".into(),
        "PostSalesCustomerSuccess" => "Post-sales customer success".into(),
        "WorkloadSpecificValueProposition" => "Workload-specific value proposition".into(),
        other => other.to_string(),
    }
}

/// What provisioning creates for `map`: names from the configuration, types from cosell.
pub fn definitions(map: &FieldMap) -> Definitions {
    let cfg = map.config();
    let c = &cfg.columns;
    let (o, l, s) = (&c.opportunity, &c.lead, &c.solution);
    let mut help: Vec<(i64, String)> = cfg
        .choices
        .help_required
        .iter()
        .map(|(code, v)| (*v, help_label(code)))
        .collect();
    help.sort();
    let text = |n: u32| ColumnKind::Text { max_length: n };
    let mut columns = vec![
        col(
            &o.entity,
            "columns.opportunity.sync_with_partner_center",
            &o.sync_with_partner_center,
            "Sync with Partner Center",
            "Whether cosell keeps this opportunity in sync with a Partner Center referral.",
            yes_no(),
        ),
        col(
            &o.entity,
            "columns.opportunity.referral_id",
            &o.referral_id,
            "Referral ID",
            "The Partner Center referral id (the alternate key of every upsert).",
            text(100),
        ),
        col(
            &o.entity,
            "columns.opportunity.engagement_id",
            &o.engagement_id,
            "Engagement ID",
            "The Partner Center engagement id.",
            text(100),
        ),
        col(
            &o.entity,
            "columns.opportunity.referral_link",
            &o.referral_link,
            "Referral link",
            "Link to the referral in Partner Center.",
            ColumnKind::Url { max_length: 2000 },
        ),
        col(
            &o.entity,
            "columns.opportunity.help_required",
            &o.help_required,
            "How can Microsoft help?",
            "The assistance the partner asks of Microsoft.",
            ColumnKind::Choice { options: help },
        ),
        col(
            &o.entity,
            "columns.opportunity.visible_to_microsoft",
            &o.visible_to_microsoft,
            "Visible to Microsoft",
            "Whether Microsoft sellers can see the referral.",
            yes_no(),
        ),
        col(
            &o.entity,
            "columns.opportunity.microsoft_crm_id",
            &o.microsoft_crm_id,
            "Microsoft CRM ID",
            "Microsoft's id of the opportunity.",
            text(100),
        ),
        col(
            &o.entity,
            "columns.opportunity.audit",
            &o.audit,
            "Co-sell audit",
            "What cosell changed and why.",
            ColumnKind::Memo {
                max_length: 100_000,
            },
        ),
        col(
            &l.entity,
            "columns.lead.sync_with_partner_center",
            &l.sync_with_partner_center,
            "Sync with Partner Center",
            "Whether cosell keeps this lead in sync with a Partner Center referral.",
            yes_no(),
        ),
        col(
            &l.entity,
            "columns.lead.referral_id",
            &l.referral_id,
            "Referral ID",
            "The Partner Center referral id (the alternate key of every upsert).",
            text(100),
        ),
        col(
            &l.entity,
            "columns.lead.engagement_id",
            &l.engagement_id,
            "Engagement ID",
            "The Partner Center engagement id.",
            text(100),
        ),
        col(
            &l.entity,
            "columns.lead.referral_link",
            &l.referral_link,
            "Referral link",
            "Link to the referral in Partner Center.",
            ColumnKind::Url { max_length: 2000 },
        ),
    ];
    if let Some(audit) = &l.audit {
        columns.push(col(
            &l.entity,
            "columns.lead.audit",
            audit,
            "Co-sell audit",
            "What cosell changed and why.",
            ColumnKind::Memo {
                max_length: 100_000,
            },
        ));
    }
    columns.extend([
        col(
            &s.entity,
            "columns.solution.solution_id",
            &s.solution_id,
            "Solution ID",
            "The Partner Center solution id (the catalogue's alternate key).",
            text(100),
        ),
        col(
            &s.entity,
            "columns.solution.solution_type",
            &s.solution_type,
            "Solution type",
            "Partner Center solution type.",
            text(100),
        ),
        col(
            &s.entity,
            "columns.solution.publisher",
            &s.publisher,
            "Publisher",
            "The solution's publisher.",
            text(200),
        ),
    ]);
    let primary = |table_key: &'static str| ColumnDefinition {
        schema_name: s.name.clone(),
        display_name: "Name".into(),
        description: format!("Primary name ({table_key})."),
        kind: text(200),
    };
    let tables = vec![
        TableSpec {
            config_key: "columns.solution.entity",
            entity_set_key: "columns.solution.entity_set",
            entity_set: s.entity_set.clone(),
            table: TableDefinition {
                schema_name: s.entity.clone(),
                display_name: "Co-sell solution".into(),
                display_collection_name: "Co-sell solutions".into(),
                description: "Co-sell ready solutions sellers pick for a referral.".into(),
                primary_name: primary("columns.solution.name"),
            },
        },
        TableSpec {
            config_key: "columns.solution.link_entity",
            entity_set_key: "columns.solution.link_entity_set",
            entity_set: s.link_entity_set.clone(),
            table: TableDefinition {
                schema_name: s.link_entity.clone(),
                display_name: "Opportunity solution".into(),
                display_collection_name: "Opportunity solutions".into(),
                description: "One row per co-sell solution on an opportunity.".into(),
                primary_name: primary("columns.solution.name"),
            },
        },
    ];
    let lookup_schema = |column: &str, nav: &str| {
        // The lookup's schema name is the navigation property when they agree in all but case.
        if nav.eq_ignore_ascii_case(column) {
            nav.to_string()
        } else {
            column.to_string()
        }
    };
    let relationships = vec![
        RelationshipSpec {
            config_key: "columns.solution.link_opportunity_bind",
            lookup_column: s.link_opportunity.clone(),
            relationship: LookupRelationship {
                schema_name: format!("{}_{}", s.link_entity, o.entity),
                referenced_table: o.entity.clone(),
                referencing_table: s.link_entity.clone(),
                lookup_schema_name: lookup_schema(&s.link_opportunity, &s.link_opportunity_bind),
                lookup_display_name: "Opportunity".into(),
                navigation_property: s.link_opportunity_bind.clone(),
            },
        },
        RelationshipSpec {
            config_key: "columns.solution.link_solution_bind",
            lookup_column: s.link_solution.clone(),
            relationship: LookupRelationship {
                schema_name: format!("{}_{}", s.link_entity, s.entity),
                referenced_table: s.entity.clone(),
                referencing_table: s.link_entity.clone(),
                lookup_schema_name: lookup_schema(&s.link_solution, &s.link_solution_bind),
                lookup_display_name: "Solution".into(),
                navigation_property: s.link_solution_bind.clone(),
            },
        },
    ];
    let keys = vec![
        KeySpec {
            table: o.entity.clone(),
            name: format!("{}_key", o.referral_id),
            column: o.referral_id.clone(),
            config_key: "columns.opportunity.referral_id",
        },
        KeySpec {
            table: l.entity.clone(),
            name: format!("{}_key", l.referral_id),
            column: l.referral_id.clone(),
            config_key: "columns.lead.referral_id",
        },
        KeySpec {
            table: s.entity.clone(),
            name: format!("{}_key", s.solution_id),
            column: s.solution_id.clone(),
            config_key: "columns.solution.solution_id",
        },
    ];
    let tracked = vec![
        (o.entity.clone(), "columns.opportunity.entity"),
        (l.entity.clone(), "columns.lead.entity"),
        (s.link_entity.clone(), "columns.solution.link_entity"),
    ];
    Definitions {
        tables,
        columns,
        relationships,
        keys,
        tracked,
    }
}

/// The markdown table of the custom columns and tables provisioning creates for `map` (the
/// one docs/going-live.md shows for the default map).
pub fn columns_markdown(map: &FieldMap) -> String {
    let d = definitions(map);
    let mut out = String::from("| Table | Column | Type | Config key |\n|---|---|---|---|\n");
    for t in &d.tables {
        out.push_str(&format!(
            "| `{}` (new table) | `{}` (primary name) | {} | `{}` |\n",
            t.table.logical_name(),
            t.table.primary_name.logical_name(),
            t.table.primary_name.kind.describe(),
            t.config_key
        ));
    }
    for c in &d.columns {
        out.push_str(&format!(
            "| `{}` | `{}` | {} | `{}` |\n",
            c.table,
            c.column.logical_name(),
            c.column.kind.describe(),
            c.config_key
        ));
    }
    for r in &d.relationships {
        out.push_str(&format!(
            "| `{}` | `{}` | Lookup to `{}` (navigation `{}`) | `{}` |\n",
            r.relationship.referencing_table,
            r.lookup_column,
            r.relationship.referenced_table,
            r.relationship.navigation_property,
            r.config_key
        ));
    }
    for k in &d.keys {
        out.push_str(&format!(
            "| `{}` | alternate key `{}` on `{}` | Key | `{}` |\n",
            k.table, k.name, k.column, k.config_key
        ));
    }
    for c in &d.columns {
        if let ColumnKind::Choice { options } = &c.column.kind {
            out.push_str(&format!(
                "\nValues of `{}.{}`:\n\n| Value | Label |\n|---|---|\n",
                c.table,
                c.column.logical_name()
            ));
            for (v, l) in options {
                out.push_str(&format!("| {v} | {l} |\n"));
            }
        }
    }
    out
}

/// What provisioning did (or, in a dry run, would do) with one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemStatus {
    /// Created now.
    Created,
    /// Would be created (dry run).
    Planned,
    /// Already there as needed; nothing sent.
    Exists,
    /// There, but not as needed; left alone.
    Conflict(String),
}

/// One component of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionItem {
    /// What (`column opportunity.cosell_referralid`).
    pub component: String,
    /// The config key that names it.
    pub config_key: &'static str,
    /// What happened.
    pub status: ItemStatus,
}

/// What [`provision`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvisionReport {
    /// Every component, in order.
    pub items: Vec<ProvisionItem>,
    /// Whether customisations were published.
    pub published: bool,
}

impl ProvisionReport {
    fn push(&mut self, component: String, config_key: &'static str, status: ItemStatus) {
        self.items.push(ProvisionItem {
            component,
            config_key,
            status,
        });
    }

    fn count(&self, f: impl Fn(&ItemStatus) -> bool) -> usize {
        self.items.iter().filter(|i| f(&i.status)).count()
    }

    /// How many components were created.
    pub fn created(&self) -> usize {
        self.count(|s| *s == ItemStatus::Created)
    }

    /// How many would be created (dry run).
    pub fn planned(&self) -> usize {
        self.count(|s| *s == ItemStatus::Planned)
    }

    /// The conflicts.
    pub fn conflicts(&self) -> Vec<&ProvisionItem> {
        self.items
            .iter()
            .filter(|i| matches!(i.status, ItemStatus::Conflict(_)))
            .collect()
    }

    /// Whether everything already existed as needed.
    pub fn all_exist(&self) -> bool {
        self.items.iter().all(|i| i.status == ItemStatus::Exists)
    }
}

impl std::fmt::Display for ProvisionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for i in &self.items {
            let s = match &i.status {
                ItemStatus::Created => "created".to_string(),
                ItemStatus::Planned => "would create".to_string(),
                ItemStatus::Exists => "exists".to_string(),
                ItemStatus::Conflict(why) => format!("CONFLICT: {why}"),
            };
            writeln!(f, "{:<14} {} ({})", s, i.component, i.config_key)?;
        }
        if self.published {
            writeln!(f, "published customisations")?;
        }
        Ok(())
    }
}

/// How [`provision`] runs.
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    /// Read and report only; change nothing.
    pub dry_run: bool,
    /// Reads of a key's status before giving up on its index.
    pub key_polls: u32,
    /// Pause between reads of key status.
    pub key_poll_interval: Duration,
    /// The solution's unique name.
    pub solution: String,
    /// The publisher's prefix.
    pub publisher_prefix: String,
}

impl Default for ProvisionOptions {
    fn default() -> Self {
        ProvisionOptions {
            dry_run: false,
            key_polls: 60,
            key_poll_interval: Duration::from_secs(5),
            solution: SOLUTION_NAME.into(),
            publisher_prefix: PUBLISHER_PREFIX.into(),
        }
    }
}

impl ProvisionOptions {
    /// A dry run: the plan, nothing changed.
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    /// Key status reads: at most `polls`, `interval` apart.
    pub fn key_wait(mut self, polls: u32, interval: Duration) -> Self {
        self.key_polls = polls;
        self.key_poll_interval = interval;
        self
    }
}

async fn find_row(
    client: &DataverseClient,
    set: &str,
    column: &str,
    value: &str,
) -> Result<Option<Map<String, Value>>, SetupError> {
    let rows: Vec<Map<String, Value>> = client
        .query::<Map<String, Value>>(set, &Query::new().filter(Filter::eq(column, value)).top(1))
        .into_stream()
        .map_ok(|e| e.value)
        .try_collect()
        .await
        .map_err(dv(format!("reading {set}")))?;
    Ok(rows.into_iter().next())
}

/// Whether a column's metadata type fits what cosell needs.
pub fn type_fits(kind: &ColumnKind, attribute_type: &str) -> bool {
    match kind {
        // Text either way: a multiline column holds what a single line does.
        ColumnKind::Text { .. } | ColumnKind::Url { .. } | ColumnKind::Memo { .. } => {
            matches!(attribute_type, "String" | "Memo")
        }
        ColumnKind::YesNo { .. } => attribute_type == "Boolean",
        ColumnKind::Choice { .. } => attribute_type == "Picklist",
        _ => false,
    }
}

/// Provisions what `map` needs, reporting each component; `progress` hears every step (key
/// index status included). Idempotent: a second run sends no write.
pub async fn provision(
    client: &DataverseClient,
    map: &FieldMap,
    options: &ProvisionOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<ProvisionReport, SetupError> {
    let defs = definitions(map);
    let dry = options.dry_run;
    let solution = Some(options.solution.as_str());
    let mut report = ProvisionReport::default();
    let mut touched: Vec<String> = Vec::new();
    let status = |exists: bool| {
        if exists {
            ItemStatus::Exists
        } else if dry {
            ItemStatus::Planned
        } else {
            ItemStatus::Created
        }
    };

    // 1. Publisher and solution.
    let publisher = find_row(
        client,
        "publishers",
        "uniquename",
        &options.publisher_prefix,
    )
    .await?;
    let publisher_id = match &publisher {
        Some(p) => p
            .get("publisherid")
            .and_then(Value::as_str)
            .map(str::to_string),
        None if dry => None,
        None => {
            progress(&format!(
                "creating publisher `{}`",
                options.publisher_prefix
            ));
            let id = client
                .create(
                    "publishers",
                    &json!({
                        "uniquename": options.publisher_prefix,
                        "friendlyname": "cosell",
                        "customizationprefix": options.publisher_prefix,
                        "customizationoptionvalueprefix": OPTION_VALUE_PREFIX,
                    }),
                )
                .await
                .map_err(dv("creating the publisher"))?;
            Some(id.to_string())
        }
    };
    if let Some(p) = &publisher
        && p.get("customizationprefix").and_then(Value::as_str)
            != Some(options.publisher_prefix.as_str())
    {
        report.push(
            format!("publisher {}", options.publisher_prefix),
            "publisher",
            ItemStatus::Conflict("its customization prefix differs".into()),
        );
    } else {
        report.push(
            format!("publisher {}", options.publisher_prefix),
            "publisher",
            status(publisher.is_some()),
        );
    }
    let existing_solution = find_row(client, "solutions", "uniquename", &options.solution).await?;
    if existing_solution.is_none() && !dry {
        progress(&format!("creating solution `{}`", options.solution));
        let mut body = json!({
            "uniquename": options.solution,
            "friendlyname": "cosell co-sell sync",
            "version": "1.0.0.0",
            "description": "Columns, tables and keys the cosell sync needs.",
        });
        if let Some(id) = &publisher_id {
            body["publisherid@odata.bind"] = json!(format!("/publishers({id})"));
        }
        client
            .create("solutions", &body)
            .await
            .map_err(dv("creating the solution"))?;
    }
    report.push(
        format!("solution {}", options.solution),
        "solution",
        status(existing_solution.is_some()),
    );

    // 2. Custom tables.
    for t in &defs.tables {
        let name = t.table.logical_name();
        let exists = client
            .table_setup(&name)
            .await
            .map_err(dv(format!("reading {name}")))?
            .is_some();
        if !exists && !dry {
            progress(&format!("creating table `{name}`"));
            client
                .create_table(&t.table, solution)
                .await
                .map_err(dv(format!("creating table {name}")))?;
            touched.push(name.clone());
        }
        report.push(format!("table {name}"), t.config_key, status(exists));
    }

    // 3. Custom columns, one read of each table's columns.
    let mut tables: Vec<&str> = defs.columns.iter().map(|c| c.table.as_str()).collect();
    tables.dedup();
    for table in tables {
        let existing = client
            .columns(table)
            .await
            .map_err(dv(format!("reading columns of {table}")))?;
        for c in defs.columns.iter().filter(|c| c.table == table) {
            let name = c.column.logical_name();
            let component = format!("column {table}.{name}");
            let found = existing.as_ref().and_then(|cols| {
                cols.iter()
                    .find(|x| x.logical_name.eq_ignore_ascii_case(&name))
            });
            match found {
                Some(x) if !type_fits(&c.column.kind, &x.attribute_type) => {
                    report.push(
                        component,
                        c.config_key,
                        ItemStatus::Conflict(format!(
                            "it is a {} column, cosell needs {}",
                            x.attribute_type,
                            c.column.kind.describe()
                        )),
                    );
                }
                Some(_) => {
                    let mut st = ItemStatus::Exists;
                    if let ColumnKind::Choice { options: wanted } = &c.column.kind {
                        let have = client
                            .choice_values(table, &name)
                            .await
                            .map_err(dv(format!("reading choices of {table}.{name}")))?;
                        let missing: Vec<String> = wanted
                            .iter()
                            .filter(|(v, _)| !have.contains(v))
                            .map(|(v, _)| v.to_string())
                            .collect();
                        if !missing.is_empty() {
                            st = ItemStatus::Conflict(format!(
                                "choice values {} are missing",
                                missing.join(", ")
                            ));
                        }
                    }
                    report.push(component, c.config_key, st);
                }
                None => {
                    if !dry {
                        progress(&format!("creating {component}"));
                        client
                            .create_column(table, &c.column, solution)
                            .await
                            .map_err(dv(format!("creating {component}")))?;
                        touched.push(table.to_string());
                    }
                    report.push(component, c.config_key, status(false));
                }
            }
        }
    }

    // 4. The link table's lookups (one-to-many relationships).
    for r in &defs.relationships {
        let rel = &r.relationship;
        let component = format!(
            "relationship {} ({}.{})",
            rel.schema_name, rel.referencing_table, r.lookup_column
        );
        let existing = if dry
            && client
                .table_setup(&rel.referencing_table)
                .await
                .map_err(dv("reading the link table"))?
                .is_none()
        {
            Vec::new()
        } else {
            client
                .many_to_one_relationships(&rel.referencing_table)
                .await
                .map_err(dv(format!(
                    "reading relationships of {}",
                    rel.referencing_table
                )))?
        };
        match existing
            .iter()
            .find(|x| x.lookup_column.eq_ignore_ascii_case(&r.lookup_column))
        {
            Some(x)
                if !x
                    .referenced_table
                    .eq_ignore_ascii_case(&rel.referenced_table) =>
            {
                report.push(
                    component,
                    r.config_key,
                    ItemStatus::Conflict(format!(
                        "the lookup points at `{}`, not `{}`",
                        x.referenced_table, rel.referenced_table
                    )),
                )
            }
            Some(x) if x.navigation_property != rel.navigation_property => report.push(
                component,
                r.config_key,
                ItemStatus::Conflict(format!(
                    "its navigation property is `{}`, the map binds `{}`",
                    x.navigation_property, rel.navigation_property
                )),
            ),
            Some(_) => report.push(component, r.config_key, ItemStatus::Exists),
            None => {
                if !dry {
                    progress(&format!("creating {component}"));
                    client
                        .create_lookup_relationship(rel, solution)
                        .await
                        .map_err(dv(format!("creating {component}")))?;
                    touched.push(rel.referencing_table.clone());
                }
                report.push(component, r.config_key, status(false));
            }
        }
    }

    // 5. Alternate keys, then wait until each index is Active.
    let mut waiting: Vec<&KeySpec> = Vec::new();
    for k in &defs.keys {
        let component = format!("alternate key {}.{} on {}", k.table, k.name, k.column);
        let setup = client
            .table_setup(&k.table)
            .await
            .map_err(dv(format!("reading keys of {}", k.table)))?;
        match setup.as_ref().and_then(|s| s.key_covering(&[&k.column])) {
            Some(found) => {
                if !found.is_active() {
                    waiting.push(k);
                }
                report.push(component, k.config_key, ItemStatus::Exists);
            }
            None => {
                if !dry {
                    progress(&format!("creating {component}"));
                    client
                        .create_alternate_key(
                            &k.table,
                            &k.name,
                            &format!("Referral key ({})", k.column),
                            &[&k.column],
                            solution,
                        )
                        .await
                        .map_err(dv(format!("creating {component}")))?;
                    waiting.push(k);
                }
                report.push(component, k.config_key, status(false));
            }
        }
    }
    if !dry {
        wait_for_keys(client, &waiting, options, progress).await?;
    }

    // 6. Change tracking on the tables whose changes sync.
    for (table, key) in &defs.tracked {
        let component = format!("change tracking on {table}");
        let on = client
            .table_setup(table)
            .await
            .map_err(dv(format!("reading {table}")))?
            .is_some_and(|s| s.change_tracking_enabled);
        if !on && !dry {
            progress(&format!("enabling {component}"));
            client
                .enable_change_tracking(table)
                .await
                .map_err(dv(format!("enabling {component}")))?;
            touched.push(table.clone());
        }
        report.push(component, key, status(on));
    }

    // 7. Publish what changed.
    if !touched.is_empty() {
        touched.sort();
        touched.dedup();
        progress("publishing customisations");
        let names: Vec<&str> = touched.iter().map(String::as_str).collect();
        client
            .publish_customizations(&names)
            .await
            .map_err(dv("publishing customisations"))?;
        report.published = true;
    }
    Ok(report)
}

async fn wait_for_keys(
    client: &DataverseClient,
    keys: &[&KeySpec],
    options: &ProvisionOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), SetupError> {
    for k in keys {
        let mut reactivated = false;
        let mut polls = 0;
        loop {
            polls += 1;
            let setup = client
                .table_setup(&k.table)
                .await
                .map_err(dv(format!("reading keys of {}", k.table)))?;
            let status = setup
                .as_ref()
                .and_then(|s| s.key_covering(&[&k.column]))
                .map(|x| (x.index_status.clone(), x.logical_name.clone()));
            let Some((status, name)) = status else {
                return Err(SetupError::KeyNotActive {
                    table: k.table.clone(),
                    key: k.name.clone(),
                    status: "missing".into(),
                    polls,
                });
            };
            progress(&format!("alternate key {}.{}: {status}", k.table, name));
            if status.eq_ignore_ascii_case("active") {
                break;
            }
            if status.eq_ignore_ascii_case("failed") && !reactivated {
                progress(&format!("reactivating alternate key {}.{}", k.table, name));
                client
                    .reactivate_alternate_key(&k.table, &name)
                    .await
                    .map_err(dv(format!("reactivating {}", name)))?;
                reactivated = true;
            } else if polls >= options.key_polls || status.eq_ignore_ascii_case("failed") {
                return Err(SetupError::KeyNotActive {
                    table: k.table.clone(),
                    key: name,
                    status,
                    polls,
                });
            }
            tokio::time::sleep(options.key_poll_interval).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renamed_columns_are_provisioned_under_their_configured_names() {
        let map =
            FieldMap::from_toml("[columns.opportunity]\nreferral_id = \"contoso_pcreferral\"\n")
                .unwrap();
        let d = definitions(&map);
        assert!(
            d.columns
                .iter()
                .any(|c| c.column.logical_name() == "contoso_pcreferral"
                    && c.config_key == "columns.opportunity.referral_id")
        );
        assert!(
            d.keys
                .iter()
                .any(|k| k.table == "opportunity" && k.column == "contoso_pcreferral")
        );
    }

    #[test]
    fn the_help_choice_has_the_configured_values() {
        let d = definitions(&FieldMap::default());
        let help = d
            .columns
            .iter()
            .find(|c| c.config_key == "columns.opportunity.help_required")
            .unwrap();
        let ColumnKind::Choice { options } = &help.column.kind else {
            panic!("not a choice")
        };
        assert_eq!(options.first().map(|o| o.0), Some(100_000_000));
        assert_eq!(options.len(), 7);
    }
}
