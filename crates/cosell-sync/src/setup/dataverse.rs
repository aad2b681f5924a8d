//! The Dataverse half of the complete check.

use crate::dataverse::{mapped_columns, setup_problems};
use crate::provision::{SetupError, definitions, type_fits};
use cosell_mapping::FieldMap;
use dataverse_client::{ColumnInfo, DataverseClient, Query};
use futures::StreamExt;
use std::collections::HashMap;

use super::{CheckProblem, problem};

fn dv(step: &str) -> impl FnOnce(dataverse_client::Error) -> SetupError + '_ {
    move |source| SetupError::Dataverse {
        step: step.to_string(),
        source,
    }
}

/// Checks everything the running sync needs of Dataverse, naming each problem with its config
/// key: every mapped column (defaults and `[referral_create]` included) exists, cosell's own
/// columns have a compatible type and length, every choice value the map writes exists, the
/// alternate keys exist on the right column and are Active, the link table's lookups exist with the
/// navigation properties the map binds, change tracking is on where changes sync, the country
/// lookup table answers, and the application user can read every table it syncs.
pub async fn dataverse_problems(
    client: &DataverseClient,
    map: &FieldMap,
) -> Result<Vec<CheckProblem>, SetupError> {
    let cfg = map.config();
    let c = &cfg.columns;
    let table_keys: HashMap<&str, (&str, &str)> = [
        (
            c.opportunity.entity.as_str(),
            (
                "columns.opportunity.entity",
                c.opportunity.entity_set.as_str(),
            ),
        ),
        (
            c.lead.entity.as_str(),
            ("columns.lead.entity", c.lead.entity_set.as_str()),
        ),
        (
            c.account.entity.as_str(),
            ("columns.account.entity", c.account.entity_set.as_str()),
        ),
        (
            c.contact.entity.as_str(),
            ("columns.contact.entity", c.contact.entity_set.as_str()),
        ),
        (
            c.solution.entity.as_str(),
            ("columns.solution.entity", c.solution.entity_set.as_str()),
        ),
        (
            c.solution.link_entity.as_str(),
            (
                "columns.solution.link_entity",
                c.solution.link_entity_set.as_str(),
            ),
        ),
    ]
    .into_iter()
    .collect();
    let mut problems = Vec::new();
    let mapped = mapped_columns(map);
    let mut columns: HashMap<String, Option<Vec<ColumnInfo>>> = HashMap::new();
    for m in &mapped {
        if !columns.contains_key(&m.table) {
            let found = client
                .columns(&m.table)
                .await
                .map_err(dv("reading table columns"))?;
            if found.is_none() {
                let key = table_keys
                    .get(m.table.as_str())
                    .map_or(m.config_key.as_str(), |k| k.0);
                problems.push(problem(key, format!("table `{}` does not exist", m.table)));
            }
            columns.insert(m.table.clone(), found);
        }
    }
    let find = |table: &str, column: &str| -> Option<&ColumnInfo> {
        columns
            .get(table)?
            .as_ref()?
            .iter()
            .find(|x| x.logical_name.eq_ignore_ascii_case(column))
    };
    for m in &mapped {
        if matches!(columns.get(&m.table), Some(Some(_))) && find(&m.table, &m.column).is_none() {
            problems.push(problem(
                &m.config_key,
                format!("column `{}.{}` does not exist", m.table, m.column),
            ));
        }
    }
    let defs = definitions(map);
    for spec in &defs.columns {
        let name = spec.column.logical_name();
        let Some(found) = find(&spec.table, &name) else {
            continue;
        };
        if !type_fits(&spec.column.kind, &found.attribute_type) {
            problems.push(problem(
                spec.config_key,
                format!(
                    "column `{}.{name}` is a {} column; cosell writes {}",
                    spec.table,
                    found.attribute_type,
                    spec.column.kind.describe()
                ),
            ));
            continue;
        }
        if let Some(needed) = spec.column.kind.max_length() {
            let length = client
                .text_max_length(&spec.table, &name, &found.attribute_type)
                .await
                .map_err(dv("reading a column's length"))?;
            if let Some(have) = length.filter(|have| *have < needed) {
                problems.push(problem(
                    spec.config_key,
                    format!(
                        "column `{}.{name}` holds at most {have} characters; cosell writes up to {needed}",
                        spec.table
                    ),
                ));
            }
        }
        if spec.config_key == "columns.opportunity.help_required" {
            let have = client
                .choice_values(&spec.table, &name)
                .await
                .map_err(dv("reading choice values"))?;
            for (code, value) in &cfg.choices.help_required {
                if !have.contains(value) {
                    problems.push(problem(
                        format!("choices.help_required.{code}"),
                        format!(
                            "choice `{}.{name}` has no value {value} (for {code})",
                            spec.table
                        ),
                    ));
                }
            }
        }
    }
    // Keys and change tracking.
    for p in setup_problems(client, map)
        .await
        .map_err(dv("reading table setup"))?
    {
        // A missing table is reported once, above.
        if !p.message.contains("does not exist") {
            problems.push(p);
        }
    }
    // The link table's lookups, with the navigation properties the map binds.
    if matches!(columns.get(&c.solution.link_entity), Some(Some(_))) {
        let rels = client
            .many_to_one_relationships(&c.solution.link_entity)
            .await
            .map_err(dv("reading relationships"))?;
        for r in &defs.relationships {
            let want = &r.relationship;
            match rels
                .iter()
                .find(|x| x.lookup_column.eq_ignore_ascii_case(&r.lookup_column))
            {
                None => problems.push(problem(
                    r.config_key,
                    format!(
                        "no relationship from `{}` to `{}` through the lookup `{}`",
                        want.referencing_table, want.referenced_table, r.lookup_column
                    ),
                )),
                Some(x)
                    if !x
                        .referenced_table
                        .eq_ignore_ascii_case(&want.referenced_table) =>
                {
                    problems.push(problem(
                        r.config_key,
                        format!(
                            "the lookup `{}` points at `{}`, not `{}`",
                            r.lookup_column, x.referenced_table, want.referenced_table
                        ),
                    ))
                }
                Some(x) if x.navigation_property != want.navigation_property => {
                    problems.push(problem(
                        r.config_key,
                        format!(
                            "the lookup `{}` binds through `{}`, the map names `{}`",
                            r.lookup_column, x.navigation_property, want.navigation_property
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    // The country lookup table, when configured: a read of one row proves the set and column.
    if let Some(lookup) = &cfg.country_lookup {
        let probe = client
            .query::<serde_json::Value>(
                &lookup.entity_set,
                &Query::new().select([lookup.code_column.as_str()]).top(1),
            )
            .into_stream()
            .next()
            .await;
        if let Some(Err(e)) = probe {
            problems.push(problem(
                "country_lookup.entity_set",
                format!(
                    "the country lookup `{}`.`{}` cannot be read: {e}",
                    lookup.entity_set, lookup.code_column
                ),
            ));
        }
    }
    // The application user's privileges: one row of every table it syncs is read (a 403 is a
    // missing Read privilege), and its access rights to that row are asked of Dataverse
    // (RetrievePrincipalAccess). A table without rows yet is checked for Read only.
    let user = client.caller_id().await.map_err(dv("WhoAmI"))?;
    let mut tables: Vec<(&str, (&str, &str))> = table_keys.iter().map(|(t, k)| (*t, *k)).collect();
    tables.sort();
    for (table, (key, set)) in tables {
        if !matches!(columns.get(table), Some(Some(_))) {
            continue;
        }
        let entity_set_key = key.replace(".entity", ".entity_set");
        let pk = format!("{table}id");
        let probe = client
            .query::<serde_json::Value>(set, &Query::new().select([pk.as_str()]).top(1))
            .into_stream()
            .next()
            .await;
        let row = match probe {
            Some(Err(e)) => {
                problems.push(problem(
                    entity_set_key,
                    format!("the application user cannot read `{set}`: {e}"),
                ));
                continue;
            }
            Some(Ok(e)) => e
                .value
                .get(&pk)
                .and_then(|v| v.as_str())
                .and_then(|v| uuid::Uuid::parse_str(v).ok()),
            None => None,
        };
        let Some(row) = row else { continue };
        let rights = client
            .principal_access(user, set, row)
            .await
            .map_err(dv("RetrievePrincipalAccess"))?;
        let mut needed = vec![
            "ReadAccess",
            "WriteAccess",
            "CreateAccess",
            "AppendAccess",
            "AppendToAccess",
        ];
        if table == c.solution.link_entity {
            needed.push("DeleteAccess");
        }
        let missing: Vec<&str> = needed
            .into_iter()
            .filter(|r| !rights.iter().any(|x| x == r))
            .collect();
        if !missing.is_empty() {
            problems.push(problem(
                entity_set_key,
                format!(
                    "the application user lacks {} on `{set}`: give its security role the privileges",
                    missing.join(", ")
                ),
            ));
        }
    }
    Ok(problems)
}
