//! An in-memory state store: for tests, dry runs and embedders that keep state elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    AuditEntry, AuditQuery, Commit, CreateIntent, CrmChild, DeadLetter, Direction, InboxHint, Link,
    StateStore, StoreError,
};

#[derive(Debug, Default)]
struct State {
    links: BTreeMap<String, Link>,
    /// (CRM entity, CRM id) -> referral id: `links` looked up from the CRM side.
    by_crm: BTreeMap<(String, String), String>,
    /// Engagement id -> referral ids: the related referrals of one engagement, found without
    /// a scan of every link.
    by_engagement: BTreeMap<String, BTreeSet<String>>,
    intents: BTreeMap<(String, String), CreateIntent>,
    checkpoints: BTreeMap<String, String>,
    audit: Vec<AuditEntry>,
    dead_letters: BTreeMap<String, DeadLetter>,
    inbox: BTreeMap<i64, InboxHint>,
    seen_hashes: BTreeSet<String>,
    next_seq: i64,
    crm_children: BTreeMap<(String, String), CrmChild>,
    /// Lease key -> (holder, expiry): engines sharing this store in one process.
    leases: BTreeMap<String, (String, Instant)>,
    /// Inbox sequence number -> (holder, expiry) of its claim.
    claims: BTreeMap<i64, (String, Instant)>,
}

/// A state store in process memory. Nothing survives the process.
///
/// ```
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// use cosell_sync::store::{Commit, MemoryStore, StateStore};
/// let store = MemoryStore::new();
/// store.commit(Commit::new().checkpoint("reconcile", "2024-01-01T00:00:00Z")).await.unwrap();
/// assert_eq!(store.checkpoint("reconcile").await.unwrap().as_deref(), Some("2024-01-01T00:00:00Z"));
/// # });
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl State {
    fn remove_link(&mut self, referral_id: &str) {
        let Some(old) = self.links.remove(referral_id) else {
            return;
        };
        if let Some(engagement) = &old.engagement_id
            && let Some(ids) = self.by_engagement.get_mut(engagement)
        {
            ids.remove(referral_id);
            if ids.is_empty() {
                self.by_engagement.remove(engagement);
            }
        }
        if let Some(crm_id) = old.crm_id {
            self.by_crm.remove(&(old.crm_entity, crm_id));
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Applies `commit` to `state` or leaves it untouched and reports the conflict.
fn apply(state: &mut State, commit: Commit) -> Result<(), StoreError> {
    // Check first, then change in place: a CRM record already linked to another referral is
    // the only way a commit can fail, and copying the whole state per commit made every write
    // cost O(state).
    let mut claimed: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for link in &commit.links {
        // A link whose CRM record is not yet confirmed claims nothing.
        let Some(crm_id) = link.crm_id.as_deref() else {
            continue;
        };
        let key = (link.crm_entity.as_str(), crm_id);
        let holder = claimed.get(&key).copied().or_else(|| {
            state
                .by_crm
                .get(&(link.crm_entity.clone(), crm_id.to_string()))
                .map(String::as_str)
                .filter(|r| !commit.remove_links.iter().any(|x| x == r))
        });
        if let Some(other) = holder
            && other != link.referral_id
        {
            return Err(StoreError::Conflict(format!(
                "{} {crm_id} is already linked to referral {other}, cannot link it to {}",
                link.crm_entity, link.referral_id
            )));
        }
        claimed.insert(key, &link.referral_id);
    }
    for id in &commit.remove_links {
        state.remove_link(id);
    }
    for link in commit.links {
        state.remove_link(&link.referral_id);
        if let Some(crm_id) = &link.crm_id {
            state.by_crm.insert(
                (link.crm_entity.clone(), crm_id.clone()),
                link.referral_id.clone(),
            );
        }
        if let Some(engagement) = &link.engagement_id {
            state
                .by_engagement
                .entry(engagement.clone())
                .or_default()
                .insert(link.referral_id.clone());
        }
        state.links.insert(link.referral_id.clone(), link);
    }
    for key in &commit.resolved_intents {
        state.intents.remove(key);
    }
    for intent in commit.intents {
        state
            .intents
            .insert((intent.crm_entity.clone(), intent.crm_id.clone()), intent);
    }
    for (name, value) in commit.checkpoints {
        state.checkpoints.insert(name, value);
    }
    for key in commit.forget_crm_children {
        state.crm_children.remove(&key);
    }
    for child in commit.crm_children {
        state
            .crm_children
            .insert((child.entity.clone(), child.id.clone()), child);
    }
    for mut entry in commit.audit {
        entry.id = state.audit.len() as i64 + 1;
        state.audit.push(entry);
    }
    for key in &commit.clear_dead_letters {
        state.dead_letters.remove(key);
    }
    for mut letter in commit.dead_letters {
        if let Some(existing) = state.dead_letters.get(&letter.key) {
            letter.first_failed_at = existing.first_failed_at;
        }
        state.dead_letters.insert(letter.key.clone(), letter);
    }
    for seq in &commit.ack_hints {
        state.inbox.remove(seq);
        state.claims.remove(seq);
    }
    Ok(())
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn link_by_referral(&self, referral_id: &str) -> Result<Option<Link>, StoreError> {
        Ok(self.lock().links.get(referral_id).cloned())
    }

    async fn link_by_crm(
        &self,
        crm_entity: &str,
        crm_id: &str,
    ) -> Result<Option<Link>, StoreError> {
        let state = self.lock();
        Ok(state
            .by_crm
            .get(&(crm_entity.to_string(), crm_id.to_string()))
            .and_then(|r| state.links.get(r))
            .cloned())
    }

    async fn links(&self) -> Result<Vec<Link>, StoreError> {
        Ok(self.lock().links.values().cloned().collect())
    }

    async fn links_by_engagement(&self, engagement_id: &str) -> Result<Vec<Link>, StoreError> {
        let state = self.lock();
        Ok(state
            .by_engagement
            .get(engagement_id)
            .into_iter()
            .flatten()
            .filter_map(|id| state.links.get(id).cloned())
            .collect())
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().checkpoints.get(name).cloned())
    }

    async fn intents(&self) -> Result<Vec<CreateIntent>, StoreError> {
        let mut all: Vec<_> = self.lock().intents.values().cloned().collect();
        all.sort_by_key(|i| i.recorded_at);
        Ok(all)
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let state = self.lock();
        let matching = state.audit.iter().rev().filter(|e| {
            query
                .referral_id
                .as_ref()
                .is_none_or(|r| e.referral_id.as_ref() == Some(r))
                && query
                    .crm_id
                    .as_ref()
                    .is_none_or(|c| e.crm_id.as_ref() == Some(c))
        });
        Ok(if query.limit == 0 {
            matching.cloned().collect()
        } else {
            matching.take(query.limit).cloned().collect()
        })
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut all: Vec<_> = self.lock().dead_letters.values().cloned().collect();
        all.sort_by_key(|d| d.first_failed_at);
        Ok(all)
    }

    async fn dead_letter(&self, key: &str) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.lock().dead_letters.get(key).cloned())
    }

    async fn push_hint(&self, body_hash: &str, mut hint: InboxHint) -> Result<bool, StoreError> {
        let mut state = self.lock();
        if !state.seen_hashes.insert(body_hash.to_string()) {
            return Ok(false);
        }
        state.next_seq += 1;
        hint.seq = state.next_seq;
        state.inbox.insert(hint.seq, hint);
        Ok(true)
    }

    async fn pending_hints(&self, max: usize) -> Result<Vec<InboxHint>, StoreError> {
        Ok(self.lock().inbox.values().take(max).cloned().collect())
    }

    async fn intent(
        &self,
        crm_entity: &str,
        crm_id: &str,
    ) -> Result<Option<CreateIntent>, StoreError> {
        Ok(self
            .lock()
            .intents
            .get(&(crm_entity.to_string(), crm_id.to_string()))
            .cloned())
    }

    async fn link_count(&self) -> Result<u64, StoreError> {
        Ok(self.lock().links.len() as u64)
    }

    async fn inbox_depth(&self) -> Result<u64, StoreError> {
        Ok(self.lock().inbox.len() as u64)
    }

    async fn last_synced_at(
        &self,
        direction: Direction,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .lock()
            .audit
            .iter()
            .rev()
            .find(|e| e.direction == direction && e.outcome.is_write())
            .map(|e| e.at))
    }

    async fn crm_child(&self, entity: &str, id: &str) -> Result<Option<CrmChild>, StoreError> {
        Ok(self
            .lock()
            .crm_children
            .get(&(entity.to_string(), id.to_string()))
            .cloned())
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        apply(&mut self.lock(), commit)
    }

    async fn try_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        let free = state
            .leases
            .get(key)
            .is_none_or(|(h, until)| h == holder || *until <= now);
        if free {
            state
                .leases
                .insert(key.to_string(), (holder.to_string(), now + ttl));
        }
        Ok(free)
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state.leases.get(key).is_some_and(|(h, _)| h == holder) {
            state.leases.remove(key);
        }
        Ok(())
    }

    async fn claim_hints(
        &self,
        holder: &str,
        max: usize,
        ttl: Duration,
    ) -> Result<Vec<InboxHint>, StoreError> {
        let now = Instant::now();
        let state = &mut *self.lock();
        let claimable: Vec<InboxHint> = state
            .inbox
            .values()
            .filter(|h| {
                state
                    .claims
                    .get(&h.seq)
                    .is_none_or(|(_, until)| *until <= now)
            })
            .take(max)
            .cloned()
            .collect();
        for h in &claimable {
            state.claims.insert(h.seq, (holder.to_string(), now + ttl));
        }
        Ok(claimable)
    }
}
