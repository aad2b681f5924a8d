//! The operator commands: `check`, `status`, `dead-letters`, `sync`, `audit`, `plan` and
//! `backfill`. Each opens the state store itself (SQLite takes a second process), so they work
//! whether or not the service is running; `status` asks the running service first.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use cosell_mapping::RecordKind;
use cosell_sync::catalogue::{import_catalogue, parse_catalogue_csv};
use cosell_sync::engine::entity_name;
use cosell_sync::provision::ProvisionOptions;
use cosell_sync::store::{AuditEntry, AuditOutcome, AuditQuery, Commit};
use cosell_sync::{
    Action, DEFAULT_BACKFILL_GROUP, Outcome, WebhookState, dataverse_problems,
    partner_center_problems, required_columns,
};
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;

use crate::Error;
use crate::config::Settings;
use crate::wiring::{self, open_store, wire};

/// How long a one-shot command waits for its pair leases to be released before it exits (past
/// it they expire after their TTL).
const RELEASE_WAIT: Duration = Duration::from_secs(5);

fn print_outcome(o: &Outcome) {
    let who = match (&o.referral_id, &o.crm) {
        (Some(r), Some((entity, id))) => format!("referral {r} ↔ {entity} {id}"),
        (Some(r), None) => format!("referral {r}"),
        (None, Some((entity, id))) => format!("{entity} {id}"),
        (None, None) => "(unknown)".into(),
    };
    println!("{:?}  {who}  {}", o.action, o.detail);
    for c in &o.conflicts {
        println!("    conflict: {c}");
    }
    for w in &o.writes {
        println!("    {w}");
    }
}

fn code_of(o: &Outcome) -> ExitCode {
    if o.action == Action::Failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `cosell check`: everything the running sync depends on, in Dataverse (mapped columns and
/// their types, choice values, alternate keys Active, the link table's lookups, change tracking,
/// the country lookup, the application user's access) and in Partner Center (both tokens, one
/// referrals GET, who holds the webhook registration). Each problem names the config key to
/// change; exit 1 when there is any.
pub async fn check(s: &Settings) -> Result<ExitCode, Error> {
    let dataverse = wiring::dataverse_client(s)?;
    let columns = required_columns(&s.map);
    println!(
        "Dataverse check of {} ({} mapped columns)",
        s.dataverse,
        columns.len()
    );
    let mut problems = dataverse_problems(&dataverse, &s.map).await?;
    let dataverse_count = problems.len();
    for p in &problems {
        println!("  {p}");
    }
    if dataverse_count == 0 {
        println!("  everything the field map needs is there");
    }

    println!("Partner Center check");
    let partner_center = wiring::partner_center_client(s)?;
    let pc = partner_center_problems(&partner_center, Some(s.public_url.as_str())).await;
    println!(
        "  referrals readable: {}; webhook registration: {}",
        if pc.referrals_readable { "yes" } else { "no" },
        match &pc.webhook {
            WebhookState::Ours => "ours".to_string(),
            WebhookState::OursMissingEvents => "ours, some referral events missing".into(),
            WebhookState::Another(url) => format!("held by {url}"),
            WebhookState::None => "none".into(),
            WebhookState::Unknown => "could not be read".into(),
        }
    );
    for p in &pc.problems {
        println!("  {p}");
    }
    problems.extend(pc.problems);
    if problems.is_empty() {
        println!("clean: the sync can run");
        return Ok(ExitCode::SUCCESS);
    }
    if dataverse_count > 0 {
        println!(
            "{dataverse_count} Dataverse problem(s): `cosell provision` creates what is missing, \
             or change the config key named"
        );
    }
    Ok(ExitCode::FAILURE)
}

/// `cosell provision`: creates in Dataverse what the configured field map needs (publisher and
/// solution, the catalogue and link tables, typed columns, lookups, alternate keys waited for
/// until Active, change tracking, publishing), idempotently; conflicts are reported, never
/// altered. `--dry-run` prints the plan and changes nothing; `--catalogue` imports the co-sell
/// solution catalogue (CSV: id, name, publisher, type) afterwards. Exit 1 on a conflict or a
/// catalogue line that failed.
pub async fn provision(
    s: &Settings,
    dry_run: bool,
    catalogue: Option<&std::path::Path>,
    key_poll: Duration,
) -> Result<ExitCode, Error> {
    let dataverse = wiring::dataverse_client(s)?;
    let mut options = ProvisionOptions::default().key_wait(60, key_poll);
    if dry_run {
        options = options.dry_run();
    }
    println!(
        "{} {}",
        if dry_run { "Plan for" } else { "Provisioning" },
        s.dataverse
    );
    let report = cosell_sync::provision(&dataverse, &s.map, &options, &mut |step| {
        eprintln!("  .. {step}")
    })
    .await?;
    print!("{report}");
    let mut failed = !report.conflicts().is_empty();
    if let Some(path) = catalogue {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Message(format!("cannot read `{}`: {e}", path.display())))?;
        let (entries, errors) = parse_catalogue_csv(&text);
        for e in &errors {
            println!("  catalogue: skipped {e}");
        }
        failed |= !errors.is_empty();
        if dry_run {
            println!(
                "  catalogue: {} solution(s) would be imported",
                entries.len()
            );
        } else {
            let r = import_catalogue(&dataverse, &s.map, &entries).await;
            println!(
                "  catalogue: created {}, updated {}, unchanged {}",
                r.created, r.updated, r.unchanged
            );
            for e in &r.failed {
                println!("  catalogue: failed {e}");
            }
            failed |= !r.failed.is_empty();
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `cosell status`: the running service's `/status` (admin listener); the store's counts when
/// nothing answers there.
pub async fn status(s: &Settings) -> Result<ExitCode, Error> {
    let url = format!("http://{}/status", s.admin_listen);
    let token = s.admin_token().ok().flatten();
    match crate::http_get(&url, token.as_ref().map(|t| t.expose_secret())).await {
        Ok((200, body)) => {
            let value: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| Error::Message(format!("{url}: not JSON: {e}")))?;
            println!("{}", pretty(&value));
            Ok(ExitCode::SUCCESS)
        }
        Ok((code, _)) => Err(Error::Message(format!(
            "{url} answered HTTP {code}{}",
            if code == 401 {
                " (set the variable server.admin_token_env names)"
            } else {
                ""
            }
        ))),
        Err(e) => {
            eprintln!("cosell: no service answers on {url} ({e}); showing the state store only");
            let store = open_store(s).await?;
            let value = crate::service::store_status(store.as_ref()).await?;
            println!("{}", pretty(&value));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// What `cosell dead-letters` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// Every dead letter: key, direction, attempts, when it first and last failed.
    List,
    /// One dead letter in full, with its error.
    Show {
        /// The key (`referral:<id>`, `opportunity:<id>`, `lead:<id>`, `related:<id>`).
        key: String,
    },
    /// Sync the record again now; the letter is cleared when it succeeds.
    Replay {
        /// The key.
        key: String,
    },
    /// Give up on the record: the letter is removed (and the drop audited). The record syncs
    /// again when it next changes.
    Drop {
        /// The key.
        key: String,
    },
}

/// `cosell dead-letters …`.
pub async fn dead_letters(s: &Settings, command: DeadLetterCommand) -> Result<ExitCode, Error> {
    match command {
        DeadLetterCommand::List => {
            let store = open_store(s).await?;
            let letters = store.dead_letters().await?;
            for d in &letters {
                println!(
                    "{}  {}  attempts {}  first failed {}  last failed {}",
                    d.key,
                    d.direction.as_str(),
                    d.attempts,
                    d.first_failed_at.to_rfc3339(),
                    d.last_failed_at.to_rfc3339()
                );
            }
            println!("{} dead letter(s)", letters.len());
            Ok(ExitCode::SUCCESS)
        }
        DeadLetterCommand::Show { key } => {
            let store = open_store(s).await?;
            match store.dead_letter(&key).await? {
                Some(d) => {
                    println!("key              {}", d.key);
                    println!("direction        {}", d.direction);
                    println!("attempts         {}", d.attempts);
                    println!("first failed at  {}", d.first_failed_at.to_rfc3339());
                    println!("last failed at   {}", d.last_failed_at.to_rfc3339());
                    println!("error            {}", d.error);
                    Ok(ExitCode::SUCCESS)
                }
                None => Err(no_letter(&key)),
            }
        }
        DeadLetterCommand::Replay { key } => {
            let w = wire(s).await?;
            if w.store.dead_letter(&key).await?.is_none() {
                return Err(no_letter(&key));
            }
            let replayed = w.engine.replay_dead_letter(&key).await;
            w.engine.release_leases(RELEASE_WAIT).await;
            match replayed? {
                Some(outcome) => {
                    print_outcome(&outcome);
                    if outcome.action != Action::Failed {
                        println!("dead letter {key} cleared");
                    }
                    Ok(code_of(&outcome))
                }
                None => Err(Error::Message(format!(
                    "dead letter `{key}`: its key names no record kind cosell syncs"
                ))),
            }
        }
        DeadLetterCommand::Drop { key } => {
            let store = open_store(s).await?;
            let Some(letter) = store.dead_letter(&key).await? else {
                return Err(no_letter(&key));
            };
            let mut entry = AuditEntry::new(
                letter.direction,
                AuditOutcome::Skipped,
                format!("dead letter {key} dropped by an operator"),
            );
            if let Some((class, id)) = key.split_once(':') {
                entry = match class {
                    "referral" | "related" => entry.referral(id),
                    entity => entry.crm(entity, id),
                };
            }
            store
                .commit(Commit::new().clear_dead_letter(&key).audit(entry))
                .await?;
            println!("dead letter {key} dropped");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn no_letter(key: &str) -> Error {
    Error::Message(format!(
        "no dead letter `{key}` (see `cosell dead-letters list`)"
    ))
}

/// `cosell sync referral <id>`.
pub async fn sync_referral(s: &Settings, id: &str) -> Result<ExitCode, Error> {
    let w = wire(s).await?;
    let outcome = w.engine.sync_referral(id).await;
    w.engine.release_leases(RELEASE_WAIT).await;
    let outcome = outcome?;
    print_outcome(&outcome);
    Ok(code_of(&outcome))
}

/// `cosell sync crm <table> <id>`: `table` is the opportunity or lead table of the field map.
pub async fn sync_crm(s: &Settings, table: &str, id: &str) -> Result<ExitCode, Error> {
    let columns = &s.map.config().columns;
    let kind =
        if table == columns.opportunity.entity || table == entity_name(RecordKind::Opportunity) {
            RecordKind::Opportunity
        } else if table == columns.lead.entity || table == entity_name(RecordKind::Lead) {
            RecordKind::Lead
        } else {
            return Err(Error::Message(format!(
                "table `{table}`: cosell syncs `{}` (opportunities) and `{}` (leads)",
                columns.opportunity.entity, columns.lead.entity
            )));
        };
    let w = wire(s).await?;
    let outcome = w.engine.sync_crm_record(kind, id).await;
    w.engine.release_leases(RELEASE_WAIT).await;
    let outcome = outcome?;
    print_outcome(&outcome);
    Ok(code_of(&outcome))
}

/// `cosell audit <id>`: the decision history of a referral or CRM record, oldest first.
pub async fn audit(s: &Settings, id: &str) -> Result<ExitCode, Error> {
    let store = open_store(s).await?;
    let mut entries = store
        .audit(&AuditQuery {
            referral_id: Some(id.to_string()),
            ..AuditQuery::default()
        })
        .await?;
    if entries.is_empty() {
        entries = store
            .audit(&AuditQuery {
                crm_id: Some(id.to_string()),
                ..AuditQuery::default()
            })
            .await?;
    }
    if entries.is_empty() {
        println!("no audit entries for `{id}` (a referral id or a CRM record id)");
        return Ok(ExitCode::FAILURE);
    }
    for e in entries.iter().rev() {
        let crm = match (&e.crm_entity, &e.crm_id) {
            (Some(entity), Some(id)) => format!("{entity} {id}"),
            _ => "-".into(),
        };
        println!(
            "{}  {:<17}  {:<8}  referral {}  {}  {}",
            e.at.to_rfc3339(),
            e.direction.as_str(),
            e.outcome.as_str(),
            e.referral_id.as_deref().unwrap_or("-"),
            crm,
            e.message
        );
        for c in &e.conflicts {
            println!("    conflict: {c}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cosell plan`: one dry-run round, printed per record (what would be written to which side);
/// writes and consumes nothing.
pub async fn plan(s: &Settings) -> Result<ExitCode, Error> {
    let mut config = s.engine.clone();
    config.dry_run = true;
    let w = wiring::wire_with(s, config).await?;
    let report = w.engine.run_once().await?;
    let mut writes = 0;
    for o in &report.outcomes {
        print_outcome(o);
        writes += o.writes.len();
    }
    if report.omitted() > 0 {
        println!(
            "({} more record(s) not listed: a report lists the first {})",
            report.omitted(),
            cosell_sync::Report::DETAIL_LIMIT
        );
    }
    println!(
        "plan: {} record(s), {writes} field write(s) in those listed; nothing was written or \
         consumed",
        report.total()
    );
    Ok(ExitCode::SUCCESS)
}

/// `cosell backfill`: every referral in Partner Center applied, the new ones written to the CRM
/// a group at a time (`Engine::apply_referrals`: for Dataverse one `$batch` change set per
/// referral, a few requests per group), the rest (already linked, adopted) `concurrency` at a
/// time, with a progress bar whose message says when Dataverse throttling holds it up; then the
/// reconcile checkpoint is set so the service continues from there. Groups run one after
/// another, so no new customer is created twice. Safe to interrupt and rerun.
pub async fn backfill(s: &Settings, concurrency: usize) -> Result<ExitCode, Error> {
    let mut config = s.engine.clone();
    config.parallelism = concurrency.max(1);
    let w = wiring::wire_with(s, config).await?;
    let listing = ProgressBar::new_spinner().with_message("listing referrals");
    listing.enable_steady_tick(Duration::from_millis(100));
    let referrals: Vec<_> = w
        .partner_center
        .list_referrals()
        .into_stream()
        .inspect_ok(|_| listing.inc(1))
        .try_collect()
        .await?;
    listing.finish_with_message(format!("listed {} referrals", referrals.len()));
    let newest = referrals.iter().filter_map(|r| r.updated_date_time).max();
    let style = ProgressStyle::with_template(
        "{spinner} syncing [{bar:40}] {pos}/{len} {per_sec} eta {eta} {msg}",
    )
    .map_err(|e| Error::Message(e.to_string()))?
    .progress_chars("=> ");
    let bar = ProgressBar::new(referrals.len() as u64).with_style(style);
    // The throttle's pause is the part of the ETA the rate cannot know: say it.
    let limiter = w.dataverse.limiter().clone();
    let ticker_bar = bar.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            match limiter.pause_remaining() {
                Some(d) => ticker_bar.set_message(format!(
                    "Dataverse throttling: resuming in {}s",
                    d.as_secs() + 1
                )),
                None => ticker_bar.set_message(""),
            }
        }
    });
    let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let engine = &w.engine;
    let mut rest = referrals.into_iter();
    loop {
        let group: Vec<_> = rest.by_ref().take(DEFAULT_BACKFILL_GROUP).collect();
        if group.is_empty() {
            break;
        }
        // A state-store failure stops the run: continuing would sync records whose links
        // cannot be saved.
        let report = engine.apply_referrals(group).await?;
        for outcome in &report.outcomes {
            if outcome.action == Action::Failed {
                *failures.entry(outcome.detail.clone()).or_default() += 1;
            }
            *by_action
                .entry(format!("{:?}", outcome.action))
                .or_default() += 1;
        }
        bar.inc(report.total() as u64);
    }
    engine.release_leases(RELEASE_WAIT).await;
    ticker.abort();
    bar.finish_with_message("");
    if let Some(t) = newest {
        engine.set_reconcile_checkpoint(t).await?;
    }
    for (action, n) in &by_action {
        println!("   {action:<16} {n}");
    }
    for (reason, n) in &failures {
        println!("   failed ×{n:<4} {reason}");
    }
    let letters = w.store.dead_letter_classes().await?;
    let dead: u64 = letters.iter().map(|c| c.count).sum();
    println!("   dead letters: {dead} (`cosell dead-letters list`, then `replay` after a fix)");
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
