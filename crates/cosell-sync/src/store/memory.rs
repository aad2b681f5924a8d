//! An in-memory state store: for tests, dry runs and embedders that keep state elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    AuditEntry, AuditQuery, Commit, CreateIntent, DeadLetter, InboxHint, Link, StateStore,
    StoreError,
};

#[derive(Debug, Default, Clone)]
struct State {
    links: BTreeMap<String, Link>,
    intents: BTreeMap<(String, String), CreateIntent>,
    checkpoints: BTreeMap<String, String>,
    audit: Vec<AuditEntry>,
    dead_letters: BTreeMap<String, DeadLetter>,
    inbox: BTreeMap<i64, InboxHint>,
    seen_hashes: BTreeSet<String>,
    next_seq: i64,
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
    // Work on a copy so a conflict found half-way leaves nothing applied.
    let mut next = state.clone();
    for id in &commit.remove_links {
        next.links.remove(id);
    }
    for link in commit.links {
        if let Some(other) = next.links.values().find(|l| {
            l.crm_entity == link.crm_entity
                && l.crm_id == link.crm_id
                && l.referral_id != link.referral_id
        }) {
            return Err(StoreError::Conflict(format!(
                "{} {} is already linked to referral {}, cannot link it to {}",
                link.crm_entity, link.crm_id, other.referral_id, link.referral_id
            )));
        }
        next.links.insert(link.referral_id.clone(), link);
    }
    for key in &commit.resolved_intents {
        next.intents.remove(key);
    }
    for intent in commit.intents {
        next.intents
            .insert((intent.crm_entity.clone(), intent.crm_id.clone()), intent);
    }
    for (name, value) in commit.checkpoints {
        next.checkpoints.insert(name, value);
    }
    for mut entry in commit.audit {
        entry.id = next.audit.len() as i64 + 1;
        next.audit.push(entry);
    }
    for key in &commit.clear_dead_letters {
        next.dead_letters.remove(key);
    }
    for mut letter in commit.dead_letters {
        if let Some(existing) = next.dead_letters.get(&letter.key) {
            letter.first_failed_at = existing.first_failed_at;
        }
        next.dead_letters.insert(letter.key.clone(), letter);
    }
    for seq in &commit.ack_hints {
        next.inbox.remove(seq);
    }
    *state = next;
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
        Ok(self
            .lock()
            .links
            .values()
            .find(|l| l.crm_entity == crm_entity && l.crm_id == crm_id)
            .cloned())
    }

    async fn links(&self) -> Result<Vec<Link>, StoreError> {
        Ok(self.lock().links.values().cloned().collect())
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

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        apply(&mut self.lock(), commit)
    }
}
