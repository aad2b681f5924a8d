//! Setup: registering the callback URL without taking the webhook from another integration.
//!
//! Partner Center keeps one registration per tenant, so registering blindly can silently move
//! every referral event away from another integration (or from production to a staging
//! install). [`register_callback`] reads the current registration first and replaces a URL that
//! is not ours only when told to.

use partner_center_client::PartnerCenterClient;
use partner_center_client::webhook::registration::{WebhookEvent, WebhookRegistration};

/// What [`register_callback`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// There was no registration; ours was created.
    Created,
    /// Our URL was already registered for the four referral events; nothing sent.
    AlreadyCurrent,
    /// Ours was registered but missed some referral events; they were added.
    EventsAdded,
    /// Another URL held the registration and was replaced, as asked.
    Replaced {
        /// The URL that lost the registration.
        previous_url: String,
    },
    /// Another URL holds the registration; left alone because overwriting was not asked for.
    HeldByAnother {
        /// The URL holding it.
        current_url: String,
    },
}

/// Registers `url` for the four referral events (keeping any other events registered). A
/// registration held by another URL is replaced only when `overwrite_foreign` is true.
pub async fn register_callback(
    client: &PartnerCenterClient,
    url: &str,
    overwrite_foreign: bool,
) -> Result<RegistrationOutcome, partner_center_client::Error> {
    let wanted = WebhookEvent::REFERRAL_EVENTS;
    let Some(current) = client.get_webhook_registration().await? else {
        client
            .create_webhook_registration(&WebhookRegistration::new(url, wanted))
            .await?;
        return Ok(RegistrationOutcome::Created);
    };
    let mut events = current.webhook_events.clone();
    for e in wanted {
        if !events.contains(&e) {
            events.push(e);
        }
    }
    if current.webhook_url == url {
        if events.len() == current.webhook_events.len() {
            return Ok(RegistrationOutcome::AlreadyCurrent);
        }
        let mut next = current.clone();
        next.webhook_events = events;
        client.replace_webhook_registration(&next).await?;
        return Ok(RegistrationOutcome::EventsAdded);
    }
    if !overwrite_foreign {
        return Ok(RegistrationOutcome::HeldByAnother {
            current_url: current.webhook_url,
        });
    }
    let mut next = current.clone();
    next.webhook_url = url.to_string();
    next.webhook_events = events;
    client.replace_webhook_registration(&next).await?;
    Ok(RegistrationOutcome::Replaced {
        previous_url: current.webhook_url,
    })
}

// ----- the complete check -------------------------------------------------------------------

use cosell_mapping::FieldMap;
use dataverse_client::{ColumnInfo, DataverseClient, Query};
use futures::StreamExt;
use std::collections::HashMap;

use crate::dataverse::{mapped_columns, setup_problems};
use crate::provision::{SetupError, definitions, type_fits};

/// One thing the running sync depends on that is missing or wrong, with the config key to
/// change if the configuration, not the environment, is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckProblem {
    /// The config key (`columns.lead.company_name`, `choices.help_required.QuotesOrLicensing`).
    pub config_key: String,
    /// What is wrong, naming the table, column or value.
    pub message: String,
}

impl std::fmt::Display for CheckProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (config key `{}`)", self.message, self.config_key)
    }
}

fn problem(config_key: impl Into<String>, message: impl Into<String>) -> CheckProblem {
    CheckProblem {
        config_key: config_key.into(),
        message: message.into(),
    }
}

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
            problems.push(problem(p.config_key, p.message));
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

/// Who holds the Partner Center webhook registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookState {
    /// Our callback URL, for every referral event.
    Ours,
    /// Our URL, but some referral events are missing.
    OursMissingEvents,
    /// Another URL holds it.
    Another(String),
    /// Nothing is registered.
    None,
    /// It could not be read.
    Unknown,
}

/// What [`partner_center_problems`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerCenterCheck {
    /// Whether a referrals GET (app+user token) answered.
    pub referrals_readable: bool,
    /// The webhook registration (app-only token).
    pub webhook: WebhookState,
    /// Problems, each with its config key.
    pub problems: Vec<CheckProblem>,
}

/// Checks the Partner Center side: a token for each audience works (one referrals GET with
/// the app+user credential, the webhook registration read with the app-only one) and who holds
/// the webhook registration, compared with `callback_url` when given.
pub async fn partner_center_problems(
    client: &PartnerCenterClient,
    callback_url: Option<&str>,
) -> PartnerCenterCheck {
    let mut problems = Vec::new();
    let first = client.list_referrals().top(1).into_pages().next().await;
    let referrals_readable = !matches!(first, Some(Err(_)));
    if let Some(Err(e)) = first {
        problems.push(problem(
            "credentials.refresh_token_env",
            format!(
                "reading referrals failed (the app+user token, consent or the partner's role): {e}"
            ),
        ));
    }
    let webhook = match client.get_webhook_registration().await {
        Err(e) => {
            problems.push(problem(
                "credentials.client_secret_env",
                format!("reading the webhook registration failed (the app-only token): {e}"),
            ));
            WebhookState::Unknown
        }
        Ok(None) => WebhookState::None,
        Ok(Some(r)) => match callback_url {
            Some(url) if r.webhook_url != url => WebhookState::Another(r.webhook_url),
            _ if WebhookEvent::REFERRAL_EVENTS
                .iter()
                .all(|e| r.webhook_events.contains(e)) =>
            {
                WebhookState::Ours
            }
            _ => WebhookState::OursMissingEvents,
        },
    };
    if let Some(url) = callback_url {
        match &webhook {
            WebhookState::None => problems.push(problem(
                "webhook.public_url",
                format!("no webhook is registered; register `{url}`"),
            )),
            WebhookState::Another(other) => problems.push(problem(
                "webhook.public_url",
                format!("the webhook registration belongs to `{other}`, not `{url}`: another integration (or install) receives the referral events"),
            )),
            WebhookState::OursMissingEvents => problems.push(problem(
                "webhook.public_url",
                "our webhook misses some referral events; register again",
            )),
            _ => {}
        }
    }
    PartnerCenterCheck {
        referrals_readable,
        webhook,
        problems,
    }
}
