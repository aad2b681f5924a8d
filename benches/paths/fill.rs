//! Filling a store with many realistic links straight through `StateStore::commit` (no
//! remote calls), and what to look up in it afterwards.

use std::time::{Duration, Instant};

use chrono::Utc;
use cosell::sync::store::conformance::realistic_link;
use cosell::sync::store::{Commit, CreateIntent, DeadLetter, Direction, StateStore};

use super::BoxResult;

/// Links written per commit (one transaction each on SQL stores).
const BATCH: usize = 1_000;

/// Keys that exist in a filled store, for point lookups.
#[derive(Debug, Clone)]
pub struct Filled {
    /// How many links were written.
    pub links: usize,
    /// How long the fill took.
    pub took: Duration,
    /// Referral ids, CRM ids and engagement ids of some of the links.
    pub referrals: Vec<String>,
    /// CRM `(entity, id)` of the same links.
    pub crm: Vec<(String, String)>,
    /// Engagement ids of the same links.
    pub engagements: Vec<String>,
    /// Keys of dead letters written (one per 100 links).
    pub dead_letters: Vec<String>,
    /// CRM `(entity, id)` of create intents written (one per 1,000 links).
    pub intents: Vec<(String, String)>,
}

/// Writes `n` links (and a dead letter per 100, an intent per 1,000) to `store`, a batch per
/// commit, and returns keys to look up.
pub async fn fill(store: &dyn StateStore, n: usize) -> BoxResult<Filled> {
    let started = Instant::now();
    let mut filled = Filled {
        links: n,
        took: Duration::ZERO,
        referrals: Vec::new(),
        crm: Vec::new(),
        engagements: Vec::new(),
        dead_letters: Vec::new(),
        intents: Vec::new(),
    };
    let now = Utc::now();
    for start in (0..n).step_by(BATCH) {
        let mut commit = Commit::new();
        for i in start..(start + BATCH).min(n) {
            let link = realistic_link(i);
            // Spread the sample over the whole key range.
            if i.is_multiple_of((n / 100).max(1)) {
                filled.referrals.push(link.referral_id.clone());
                filled.crm.push((
                    link.crm_entity.clone(),
                    link.crm_id.clone().unwrap_or_default(),
                ));
                filled
                    .engagements
                    .push(link.engagement_id.clone().unwrap_or_default());
            }
            if i.is_multiple_of(100) {
                let letter = DeadLetter {
                    key: link.dead_letter_key(),
                    direction: Direction::ToCrm,
                    error: "HTTP 503 from Dataverse".into(),
                    attempts: 3,
                    first_failed_at: now,
                    last_failed_at: now,
                };
                filled.dead_letters.push(letter.key.clone());
                commit = commit.dead_letter(letter);
            }
            if i.is_multiple_of(1_000) {
                let crm_id = uuid::Uuid::new_v4().to_string();
                filled.intents.push(("opportunity".into(), crm_id.clone()));
                commit = commit.intent(CreateIntent {
                    crm_entity: "opportunity".into(),
                    crm_id: crm_id.clone(),
                    external_reference_id: crm_id,
                    recorded_at: now,
                    attempts: 1,
                    target: Some(link.target.clone()),
                    crm_etag: Some("W/\"1\"".into()),
                });
            }
            commit = commit.link(link);
        }
        store.commit(commit).await?;
    }
    filled.took = started.elapsed();
    Ok(filled)
}

/// This process's resident set size in bytes (Linux `/proc/self/status`), if known.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
