//! A reconcile shared between workers on one store ([`EngineConfig::share_reconcile`]).
//!
//! Splitting the reconcile by time ranges would need an upper bound on Partner Center's
//! `updatedDateTime` filter, which Microsoft does not document; so the listing is shared
//! instead. The worker holding the reconcile's pass lease lists as the plain reconcile does (a
//! chunk of whole pages at a time) and queues each chunk's referrals in the inbox as
//! `reconcile-listed` hints carrying the referral, in one [`StateStore::push_hints`]; the
//! checkpoint then moves past the chunk, as it may once the referrals are durably queued (as a
//! webhook is once its hint is stored). Every worker draining the inbox takes them: a
//! referral known only from such hints is written from the listed copy through the backfill
//! groups ([`Engine::apply_referrals`]), each group's hints acknowledged once it is written;
//! one that also has a webhook in the batch, or whose copy does not decode, is read afresh.
//!
//! A crash between the push and the checkpoint lists the chunk again on the next pass (under
//! new body hashes, since each names its pass): the second copy finds the pair in sync and is
//! `Unchanged`.
//!
//! [`EngineConfig::share_reconcile`]: super::EngineConfig::share_reconcile
//! [`StateStore::push_hints`]: crate::store::StateStore::push_hints

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use partner_center_client::models::Referral;

use super::{Action, Engine, EngineError, Outcome, Report, backfill, now};
use crate::store::{Commit, InboxHint};

/// The event of a hint a shared reconcile queued (its payload is the referral as listed).
pub const RECONCILE_LISTED: &str = "reconcile-listed";

/// How long the lister waits before looking at a full inbox again when every hint in it is
/// claimed by other workers (it has none to drain itself).
const FULL_INBOX_WAIT: Duration = Duration::from_millis(100);

/// The referral a `reconcile-listed` hint carries, when its payload decodes to the referral
/// the hint names; `None` for any other hint (the referral is then read afresh).
pub(super) fn listed_copy(hint: &InboxHint) -> Option<Referral> {
    if hint.event != RECONCILE_LISTED {
        return None;
    }
    let referral: Referral = serde_json::from_str(hint.payload.as_deref()?).ok()?;
    (referral.id.as_deref() == Some(hint.referral_id.as_str())).then_some(referral)
}

/// What is known of a referral from two of its hints: the newer listed copy while both are
/// listed copies, else nothing (a webhook, or a copy that did not decode, asks for a read).
pub(super) fn newer_copy(a: Option<Referral>, b: Option<Referral>) -> Option<Referral> {
    let (a, b) = (a?, b?);
    Some(if b.updated_date_time >= a.updated_date_time {
        b
    } else {
        a
    })
}

/// The body hash of a listed referral's hint: one per pass, referral and change, so a referral
/// listed twice in one pass (paging under changes) is queued once.
fn body_hash(pass: &str, referral: &Referral, id: &str) -> String {
    let changed = referral
        .updated_date_time
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    format!("reconcile:{pass}:{id}:{changed}")
}

impl Engine {
    /// The reconcile of [`EngineConfig::share_reconcile`](super::EngineConfig::share_reconcile):
    /// lists from `since` a chunk at a time, queues each chunk for any worker and moves the
    /// checkpoint (from `checkpoint`) past it; drains the inbox itself while it is full and
    /// once the listing is done. Called under the reconcile's pass lease.
    pub(super) async fn reconcile_shared(
        &self,
        since: DateTime<Utc>,
        checkpoint: Option<DateTime<Utc>>,
    ) -> Result<Report, EngineError> {
        let inner = &self.inner;
        let pass = now().to_rfc3339();
        let lanes = inner.config.backfill_lanes.max(1);
        let size = backfill::DEFAULT_BACKFILL_GROUP;
        // More than this many hints waiting: the workers are behind, so the lister helps
        // rather than queue the whole history (the inbox stays bounded).
        let bound = (lanes * size * 2) as u64;
        let pages = inner.pc.referral_pages_updated_since(since);
        let mut chunks = std::pin::pin!(backfill::Chunking::new(
            pages,
            (&inner.reconcile_listed, &inner.reconcile_total),
            lanes * size,
        ));
        let mut report = Report::default();
        let mut at = checkpoint;
        // A page that fails to list ends the pass; the chunks before it are queued and the
        // checkpoint is past them.
        while let Some(chunk) = chunks.next().await {
            let (referrals, newest) = chunk?;
            self.drain_while_full(bound, &mut report).await?;
            let count = referrals.len() as u64;
            let mut hints = Vec::with_capacity(referrals.len());
            // A referral without an id (or one that will not serialize) cannot be queued: the
            // lister writes it itself, as the plain reconcile would.
            let mut unqueued = Vec::new();
            for referral in referrals {
                let Some(id) = referral.id.clone().filter(|id| !id.is_empty()) else {
                    unqueued.push(referral);
                    continue;
                };
                let Ok(payload) = serde_json::to_string(&referral) else {
                    unqueued.push(referral);
                    continue;
                };
                hints.push((
                    body_hash(&pass, &referral, &id),
                    InboxHint {
                        seq: 0,
                        referral_id: id,
                        event: RECONCILE_LISTED.to_string(),
                        change_time: referral.updated_date_time,
                        received_at: now(),
                        payload: Some(payload),
                    },
                ));
            }
            if !unqueued.is_empty() {
                report.extend(self.apply_referrals(unqueued).await?);
            }
            let queued = hints.len();
            let new = inner.store.push_hints(hints).await?;
            if queued > 0 {
                let again = queued - new.min(queued);
                let detail = if again == 0 {
                    format!("queued {queued} listed referrals for any worker")
                } else {
                    format!(
                        "queued {queued} listed referrals for any worker ({again} queued \
                         already in this pass)"
                    )
                };
                report.push(Outcome::new(Action::Queued, detail));
            }
            // Every referral of the chunk is durably queued (or written): the checkpoint may
            // pass them, as it passes a written chunk.
            if let Some(t) = newest
                && at.is_none_or(|a| t > a)
            {
                self.set_reconcile_checkpoint(t).await?;
                at = Some(t);
            }
            inner.reconcile_done.fetch_add(count, Ordering::Relaxed);
        }
        // The listing is queued; the lister works on it too until nothing is left to claim,
        // so a lone worker's reconcile ends with its listing written.
        loop {
            let drained = self.drain_inbox().await?;
            if drained.total() == 0 {
                break;
            }
            report.extend(drained);
        }
        Ok(report)
    }

    /// Drains the inbox while it holds `bound` hints or more; waits a moment when every one
    /// of them is claimed by another worker.
    async fn drain_while_full(&self, bound: u64, report: &mut Report) -> Result<(), EngineError> {
        while self.inner.store.inbox_depth().await? >= bound {
            let drained = self.drain_inbox().await?;
            if drained.total() == 0 {
                tokio::time::sleep(FULL_INBOX_WAIT).await;
            }
            report.extend(drained);
        }
        Ok(())
    }

    /// Writes referrals a shared reconcile listed, each with the sequence numbers of its
    /// hints: in backfill groups (by customer, see [`Engine::apply_referrals`]), up to
    /// [`EngineConfig::backfill_lanes`](super::EngineConfig::backfill_lanes) side by side,
    /// each group's hints acknowledged once it is written (its failures dead-lettered).
    pub(super) async fn apply_listed(
        &self,
        listed: Vec<(Referral, Vec<i64>)>,
    ) -> Result<Report, EngineError> {
        if listed.is_empty() {
            return Ok(Report::default());
        }
        let lanes = self.inner.config.backfill_lanes.max(1);
        let size = backfill::DEFAULT_BACKFILL_GROUP;
        let mut seqs_of: HashMap<String, Vec<i64>> = HashMap::new();
        let mut referrals = Vec::with_capacity(listed.len());
        for (referral, seqs) in listed {
            if let Some(id) = referral.id.clone() {
                seqs_of.entry(id).or_default().extend(seqs);
            }
            referrals.push(referral);
        }
        let split = referrals.len().div_ceil(size);
        let groups: Vec<(Vec<Referral>, Vec<i64>)> = backfill::by_customer(referrals, split, size)
            .into_iter()
            .map(|group| {
                let seqs = group
                    .iter()
                    .filter_map(|r| r.id.as_deref())
                    .filter_map(|id| seqs_of.remove(id))
                    .flatten()
                    .collect();
                (group, seqs)
            })
            .collect();
        let reports: Vec<Report> = stream::iter(groups)
            .map(|(group, seqs)| async move {
                let report = self.apply_referrals(group).await?;
                // Every referral of the group is written, unchanged or dead-lettered; a dry
                // run consumes nothing.
                if !self.inner.config.dry_run && !seqs.is_empty() {
                    self.inner.store.commit(Commit::new().ack(seqs)).await?;
                }
                Ok::<_, EngineError>(report)
            })
            .buffer_unordered(lanes)
            .try_collect()
            .await?;
        let mut report = Report::default();
        for r in reports {
            report.extend(r);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(event: &str, referral_id: &str, payload: Option<String>) -> InboxHint {
        InboxHint {
            seq: 1,
            referral_id: referral_id.to_string(),
            event: event.to_string(),
            change_time: None,
            received_at: Utc::now(),
            payload,
        }
    }

    fn listed(id: &str, minute: i64) -> Referral {
        Referral {
            id: Some(id.to_string()),
            updated_date_time: DateTime::from_timestamp(minute * 60, 0),
            ..Referral::default()
        }
    }

    #[test]
    fn only_a_listing_whose_payload_decodes_to_its_referral_is_taken_as_is() {
        let copy = listed("r1", 1);
        let json = serde_json::to_string(&copy).ok();
        assert_eq!(
            listed_copy(&hint(RECONCILE_LISTED, "r1", json.clone())),
            Some(copy)
        );
        // A webhook, a listing without a payload, a payload that is not a referral, or one
        // naming another referral: read afresh.
        assert_eq!(
            listed_copy(&hint("referral-updated", "r1", json.clone())),
            None
        );
        assert_eq!(listed_copy(&hint(RECONCILE_LISTED, "r1", None)), None);
        assert_eq!(
            listed_copy(&hint(RECONCILE_LISTED, "r1", Some("{not json".into()))),
            None
        );
        assert_eq!(
            listed_copy(&hint(RECONCILE_LISTED, "r1", Some("[1, 2]".into()))),
            None
        );
        assert_eq!(listed_copy(&hint(RECONCILE_LISTED, "r2", json)), None);
    }

    #[test]
    fn two_listings_keep_the_newer_copy_and_anything_else_asks_for_a_read() {
        let (old, new) = (listed("r1", 1), listed("r1", 2));
        assert_eq!(
            newer_copy(Some(old.clone()), Some(new.clone())),
            Some(new.clone())
        );
        assert_eq!(newer_copy(Some(new.clone()), Some(old)), Some(new.clone()));
        assert_eq!(newer_copy(None, Some(new.clone())), None);
        assert_eq!(newer_copy(Some(new), None), None);
    }
}
