//! The state-store conformance suite: what every [`StateStore`] must do, as one async function
//! to call with a factory of fresh stores. cosell runs it against the memory, SQLite and
//! PostgreSQL stores; a store of your own passes it before an engine relies on it.
//!
//! ```
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! use cosell_sync::store::{MemoryStore, StateStore, conformance};
//! conformance::run(async || Box::new(MemoryStore::new()) as Box<dyn StateStore>).await;
//! # });
//! ```
//!
//! A check that fails panics with what the store did wrong, like any test assertion.

// A test suite: a failed expectation is a panic, by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "postgres")]
mod server;

use std::time::Duration as StdDuration;

use chrono::{Duration, TimeZone, Utc};
use serde_json::json;

use super::{
    AuditEntry, AuditOutcome, AuditQuery, Commit, CreateIntent, CrmChild, DeadLetter, Direction,
    InboxHint, Link, StateStore, StoreError,
};
#[cfg(feature = "postgres")]
pub use server::{TestPostgres, URL_VAR};

/// A fixed instant plus `secs`.
fn t(secs: i64) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(secs)
}

/// A link in sync, as the suite writes it.
pub fn link(referral: &str, entity: &str, crm: &str) -> Link {
    Link {
        referral_id: referral.into(),
        engagement_id: Some(format!("eng-{referral}")),
        crm_entity: entity.into(),
        crm_id: Some(crm.into()),
        pc_etag: Some("\"e1\"".into()),
        pc_updated_at: Some(t(10)),
        crm_etag: Some("W/\"100\"".into()),
        target: json!({"name": "Contoso", "deal_value": "50000.00", "solutions": ["SOL-1"]}),
        crm_known: None,
        pc_known: None,
        in_sync: true,
        crm_status_in_transit: false,
        synced_at: t(11),
    }
}

/// Link number `i` as the engine writes it for a typical referral, for measuring a store: the
/// mapped snapshot (customer, address, one contact, one solution, status; an opportunity for
/// even `i`, a lead for odd), fresh UUIDs, eTags in the services' formats, both sides in sync.
pub fn realistic_link(i: usize) -> Link {
    let id = || uuid::Uuid::new_v4().to_string();
    let opportunity = i.is_multiple_of(2);
    let at = t(0) + Duration::microseconds(i as i64 * 7_919_311);
    let text = |v: String| json!({"kind": "text", "value": v});
    let mut target = json!({
        "address_line1": text(format!("{} Market Street", 100 + i % 900)),
        "city": text(["Singapore", "Seattle", "Contoso City", "München"][i % 4].into()),
        "close_date": {"kind": "date", "value": format!("2027-{:02}-{:02}", 1 + i % 12, 1 + i % 28)},
        "contacts": {"kind": "contacts", "value": [{
            "email": format!("aisha.tanaka{i}@wingtiptoysltd.example"),
            "first_name": "Aisha",
            "last_name": "Tanaka",
            "phone": format!("57102{:05}", i % 100_000),
        }]},
        "country": text(["SG", "US", "GB", "DE"][i % 4].into()),
        "currency": text(["SGD", "USD", "GBP", "EUR"][i % 4].into()),
        "customer_name": text(format!("Wingtip Toys Ltd {i}")),
        "deal_value": {"kind": "decimal", "value": format!("{}", 10_000 + (i * 7_919) % 990_000)},
        "name": text(format!("Referral {i}")),
        "notes": text(format!("Wingtip Toys Ltd {i} is evaluating Supply Chain Suite.")),
        "postal_code": text(format!("{:06}", (i * 104_729) % 1_000_000)),
        "solutions": {"kind": "solutions", "value": [{
            "id": format!("SOL-{:05}-DSS", i % 100_000),
            "name": "Fabrikam Supply Chain Suite",
            "publisher": "Fabrikam Sandbox Partner",
            "solution_type": "Name",
        }]},
        "status": {"kind": "status", "value": {"status": "Active", "substatus": "Accepted"}},
        "visible_to_microsoft": {"kind": "bool", "value": i.is_multiple_of(3)},
    });
    if opportunity {
        target["help_required"] = text("ProofOfConceptOrDemo".into());
    }
    Link {
        referral_id: id(),
        engagement_id: Some(id()),
        crm_entity: if opportunity { "opportunity" } else { "lead" }.into(),
        crm_id: Some(id()),
        pc_etag: Some(format!("\"{:08x}-0000-0200-0000-00006b0f136b\"", i)),
        pc_updated_at: Some(at),
        crm_etag: Some(format!("W/\"{}\"", 1_000_000 + i)),
        target,
        crm_known: None,
        pc_known: None,
        in_sync: true,
        crm_status_in_transit: false,
        synced_at: at + Duration::milliseconds(15),
    }
}

/// A hint as the intake stores it.
pub fn hint(referral: &str, secs: i64) -> InboxHint {
    InboxHint {
        seq: 0,
        referral_id: referral.into(),
        event: "referral-updated".into(),
        change_time: Some(t(secs)),
        received_at: t(secs + 1),
        payload: None,
    }
}

async fn links_are_a_bijection_and_commits_are_atomic(store: &dyn StateStore) {
    store
        .commit(Commit::new().link(link("r1", "lead", "c1")))
        .await
        .unwrap();
    assert_eq!(
        store.link_by_referral("r1").await.unwrap(),
        Some(link("r1", "lead", "c1"))
    );
    assert_eq!(
        store
            .link_by_crm("lead", "c1")
            .await
            .unwrap()
            .unwrap()
            .referral_id,
        "r1"
    );
    assert_eq!(store.link_by_crm("opportunity", "c1").await.unwrap(), None);

    // The lead is qualified into an opportunity: the same referral now points elsewhere.
    store
        .commit(Commit::new().link(link("r1", "opportunity", "o1")))
        .await
        .unwrap();
    assert_eq!(store.link_by_crm("lead", "c1").await.unwrap(), None);
    assert_eq!(
        store
            .link_by_crm("opportunity", "o1")
            .await
            .unwrap()
            .unwrap()
            .referral_id,
        "r1"
    );

    // A second referral may not claim the same record; the whole commit is refused, so the
    // checkpoint and audit entry in it do not move either.
    let err = store
        .commit(
            Commit::new()
                .checkpoint("pc.reconcile", "later")
                .audit(AuditEntry::new(
                    Direction::ToCrm,
                    AuditOutcome::Created,
                    "x",
                ))
                .link(link("r2", "opportunity", "o1")),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("o1"));
    assert_eq!(store.checkpoint("pc.reconcile").await.unwrap(), None);
    assert!(
        store
            .audit(&AuditQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.link_by_referral("r2").await.unwrap(), None);

    // Two referrals claiming one record in the same commit: refused as well.
    let err = store
        .commit(
            Commit::new()
                .link(link("r3", "opportunity", "o9"))
                .link(link("r4", "opportunity", "o9")),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(store.link_by_crm("opportunity", "o9").await.unwrap(), None);

    // Unlinking the holder in the same commit frees the record for another referral.
    store
        .commit(
            Commit::new()
                .remove_link("r1")
                .link(link("r5", "opportunity", "o1")),
        )
        .await
        .unwrap();
    assert_eq!(store.link_by_referral("r1").await.unwrap(), None);
    assert_eq!(
        store
            .link_by_crm("opportunity", "o1")
            .await
            .unwrap()
            .unwrap()
            .referral_id,
        "r5"
    );
    store
        .commit(
            Commit::new()
                .remove_link("r5")
                .link(link("r1", "opportunity", "o1")),
        )
        .await
        .unwrap();

    store
        .commit(Commit::new().link(link("r0", "opportunity", "o0")))
        .await
        .unwrap();
    let ids: Vec<_> = store
        .links()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.referral_id)
        .collect();
    assert_eq!(ids, ["r0", "r1"]);
    store.commit(Commit::new().remove_link("r0")).await.unwrap();
    assert_eq!(store.links().await.unwrap().len(), 1);
}

async fn a_pair_keeps_its_per_side_state_and_a_pending_create(store: &dyn StateStore) {
    // A plan whose sides differ (one written, the other not) comes back exactly.
    let mut partial = link("r1", "opportunity", "o1");
    partial.target = json!({"notes": "b"});
    partial.crm_known = Some(json!({"notes": "b", "deal_value": "1.00"}));
    partial.pc_known = Some(json!({"notes": "a"}));
    partial.in_sync = false;
    partial.crm_status_in_transit = true;
    store
        .commit(Commit::new().link(partial.clone()))
        .await
        .unwrap();
    assert_eq!(store.link_by_referral("r1").await.unwrap(), Some(partial));

    // Two creates whose CRM records are not confirmed yet claim no CRM record.
    for r in ["r2", "r3"] {
        let mut pending = link(r, "lead", "unused");
        pending.crm_id = None;
        store.commit(Commit::new().link(pending)).await.unwrap();
    }
    assert_eq!(
        store.link_by_referral("r2").await.unwrap().unwrap().crm_id,
        None
    );
    assert_eq!(store.links().await.unwrap().len(), 3);
    // Confirming one claims its record like any link.
    store
        .commit(Commit::new().link(link("r2", "lead", "l2")))
        .await
        .unwrap();
    assert_eq!(
        store
            .link_by_crm("lead", "l2")
            .await
            .unwrap()
            .unwrap()
            .referral_id,
        "r2"
    );
    let err = store
        .commit(Commit::new().link(link("r3", "lead", "l2")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
}

async fn intents_resolve_with_their_link(store: &dyn StateStore) {
    let intent = |id: &str, secs| CreateIntent {
        crm_entity: "opportunity".into(),
        crm_id: id.into(),
        external_reference_id: id.into(),
        recorded_at: t(secs),
        attempts: 1,
        target: Some(json!({"name": format!("deal {id}")})),
        crm_etag: Some("W/\"7\"".into()),
    };
    store
        .commit(
            Commit::new()
                .intent(intent("o2", 20))
                .intent(intent("o1", 10)),
        )
        .await
        .unwrap();
    let pending: Vec<_> = store
        .intents()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.crm_id)
        .collect();
    assert_eq!(pending, ["o1", "o2"], "oldest first");

    let mut retried = intent("o2", 20);
    retried.attempts = 2;
    store
        .commit(Commit::new().intent(retried.clone()))
        .await
        .unwrap();
    assert_eq!(store.intents().await.unwrap()[1], retried);

    store
        .commit(
            Commit::new()
                .link(link("r1", "opportunity", "o1"))
                .resolve_intent("opportunity", "o1"),
        )
        .await
        .unwrap();
    assert_eq!(store.intents().await.unwrap(), vec![retried]);
    assert!(
        store
            .link_by_crm("opportunity", "o1")
            .await
            .unwrap()
            .is_some()
    );
}

async fn checkpoints_audit_and_dead_letters(store: &dyn StateStore) {
    store
        .commit(
            Commit::new()
                .checkpoint("pc.reconcile", "2026-01-01T00:00:00Z")
                .checkpoint(
                    "crm.delta.opportunity",
                    "https://x/opportunities?$deltatoken=1",
                ),
        )
        .await
        .unwrap();
    store
        .commit(Commit::new().checkpoint("pc.reconcile", "2026-01-02T00:00:00Z"))
        .await
        .unwrap();
    assert_eq!(
        store.checkpoint("pc.reconcile").await.unwrap().as_deref(),
        Some("2026-01-02T00:00:00Z")
    );
    assert_eq!(store.checkpoint("missing").await.unwrap(), None);

    for (i, (referral, outcome)) in [
        ("r1", AuditOutcome::Created),
        ("r2", AuditOutcome::Failed),
        ("r1", AuditOutcome::Merged),
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = AuditEntry::new(Direction::ToCrm, outcome, format!("step {i}"))
            .referral(referral)
            .crm("opportunity", format!("o-{referral}"));
        if outcome == AuditOutcome::Merged {
            e = e.conflicts(vec!["deal_value: CRM wins".into()]);
        }
        store.commit(Commit::new().audit(e)).await.unwrap();
    }
    let all = store.audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
        ["step 2", "step 1", "step 0"],
        "newest first"
    );
    assert!(all[0].id > all[1].id && all[1].id > all[2].id);
    assert_eq!(all[0].conflicts, ["deal_value: CRM wins"]);
    let r1 = store
        .audit(&AuditQuery {
            referral_id: Some("r1".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r1.len(), 1);
    assert_eq!(r1[0].outcome, AuditOutcome::Merged);
    let by_crm = store
        .audit(&AuditQuery {
            crm_id: Some("o-r2".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_crm.len(), 1);
    assert_eq!(by_crm[0].direction, Direction::ToCrm);

    let letter = |attempts, secs| DeadLetter {
        key: "referral:r9".into(),
        direction: Direction::ToCrm,
        error: format!("attempt {attempts} failed"),
        attempts,
        first_failed_at: t(secs),
        last_failed_at: t(secs),
    };
    store
        .commit(Commit::new().dead_letter(letter(1, 100)))
        .await
        .unwrap();
    store
        .commit(Commit::new().dead_letter(letter(2, 200)))
        .await
        .unwrap();
    let letters = store.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 2);
    assert_eq!(letters[0].first_failed_at, t(100), "first failure is kept");
    assert_eq!(letters[0].last_failed_at, t(200));
    assert_eq!(
        store
            .dead_letter("referral:r9")
            .await
            .unwrap()
            .unwrap()
            .attempts,
        2
    );
    assert_eq!(store.dead_letter("referral:nope").await.unwrap(), None);
    store
        .commit(Commit::new().clear_dead_letter("referral:r9"))
        .await
        .unwrap();
    assert!(store.dead_letters().await.unwrap().is_empty());
}

async fn the_inbox_deduplicates_deliveries(store: &dyn StateStore) {
    assert!(store.push_hint("hash-a", hint("r1", 1)).await.unwrap());
    assert!(
        !store.push_hint("hash-a", hint("r1", 1)).await.unwrap(),
        "same body again"
    );
    assert!(store.push_hint("hash-b", hint("r2", 2)).await.unwrap());
    assert!(store.push_hint("hash-c", hint("r1", 3)).await.unwrap());
    let pending = store.pending_hints(10).await.unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|h| h.referral_id.as_str())
            .collect::<Vec<_>>(),
        ["r1", "r2", "r1"]
    );
    assert_eq!(pending[0].change_time, Some(t(1)));
    assert_eq!(store.pending_hints(1).await.unwrap().len(), 1);
    store
        .commit(Commit::new().ack([pending[0].seq, pending[2].seq]))
        .await
        .unwrap();
    let left = store.pending_hints(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].referral_id, "r2");
    // An acknowledged delivery that arrives again is still recognised.
    assert!(!store.push_hint("hash-a", hint("r1", 1)).await.unwrap());
}

/// A solution link row is remembered with its opportunity, replaced, forgotten; a commit that
/// fails takes its child rows with it.
async fn crm_children_name_their_parent(store: &dyn StateStore) {
    let child = |id: &str, parent: &str| CrmChild {
        entity: "cosell_opportunitysolution".into(),
        id: id.into(),
        parent_entity: "opportunity".into(),
        parent_id: parent.into(),
    };
    assert_eq!(
        store
            .crm_child("cosell_opportunitysolution", "l1")
            .await
            .unwrap(),
        None
    );
    store
        .commit(
            Commit::new()
                .crm_child(child("l1", "o1"))
                .crm_child(child("l2", "o1")),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .crm_child("cosell_opportunitysolution", "l1")
            .await
            .unwrap(),
        Some(child("l1", "o1"))
    );
    // Another table's row with the same id is another row.
    assert_eq!(store.crm_child("other", "l1").await.unwrap(), None);
    store
        .commit(
            Commit::new()
                .forget_crm_child("cosell_opportunitysolution", "l1")
                .crm_child(child("l2", "o2")),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .crm_child("cosell_opportunitysolution", "l1")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .crm_child("cosell_opportunitysolution", "l2")
            .await
            .unwrap(),
        Some(child("l2", "o2"))
    );
    // Atomic: a commit refused for a broken link invariant remembers no child row.
    store
        .commit(Commit::new().link(link("r1", "opportunity", "o1")))
        .await
        .unwrap();
    let refused = store
        .commit(
            Commit::new()
                .crm_child(child("l3", "o1"))
                .link(link("r2", "opportunity", "o1")),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(
        store
            .crm_child("cosell_opportunitysolution", "l3")
            .await
            .unwrap(),
        None
    );
}

/// The point lookups answer what the full lists hold.
async fn point_lookups_agree_with_the_lists(store: &dyn StateStore) {
    assert_eq!(store.link_count().await.unwrap(), 0);
    let mut other = link("r2", "opportunity", "o2");
    other.engagement_id = Some("eng-r1".into());
    store
        .commit(
            Commit::new()
                .link(link("r1", "opportunity", "o1"))
                .link(other)
                .link(link("r3", "lead", "l3"))
                .intent(CreateIntent {
                    crm_entity: "opportunity".into(),
                    crm_id: "o9".into(),
                    external_reference_id: "o9".into(),
                    recorded_at: t(1),
                    attempts: 1,
                    target: None,
                    crm_etag: None,
                }),
        )
        .await
        .unwrap();
    assert_eq!(store.link_count().await.unwrap(), 3);
    let in_engagement: Vec<String> = store
        .links_by_engagement("eng-r1")
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.referral_id)
        .collect();
    assert_eq!(in_engagement, ["r1", "r2"]);
    assert!(
        store
            .links_by_engagement("eng-none")
            .await
            .unwrap()
            .is_empty()
    );
    // Several records of one table at once: only linked ones, only of that table.
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut found: Vec<String> = store
        .links_by_crm_ids("opportunity", &ids(&["o2", "o1", "l3", "o404"]))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.referral_id)
        .collect();
    found.sort();
    assert_eq!(found, ["r1", "r2"]);
    assert!(
        store
            .links_by_crm_ids("lead", &ids(&[]))
            .await
            .unwrap()
            .is_empty()
    );
    // More ids than one SQL statement binds (SQLite's default limit is 32,766 parameters, a
    // store chunks them).
    let many: Vec<String> = (0..40_000).map(|i| format!("o{i}")).collect();
    assert_eq!(
        store
            .links_by_crm_ids("opportunity", &many)
            .await
            .unwrap()
            .len(),
        2
    );
    let intent = store.intent("opportunity", "o9").await.unwrap().unwrap();
    assert_eq!(intent.external_reference_id, "o9");
    assert_eq!(store.intent("lead", "o9").await.unwrap(), None);
    assert_eq!(store.intent("opportunity", "o1").await.unwrap(), None);
}

/// Leases: exclusive while live, renewed by their holder, released only by it (one at a time or
/// in a batch), taken over once expired, and won by exactly one of several holders racing for
/// a free one.
async fn leases_are_exclusive_and_expire(store: &dyn StateStore) {
    let long = StdDuration::from_secs(60);
    assert!(
        store
            .try_lease("referral:r1", "worker-a", long)
            .await
            .unwrap()
    );
    assert!(
        !store
            .try_lease("referral:r1", "worker-b", long)
            .await
            .unwrap(),
        "a live lease is not taken by another holder"
    );
    assert!(
        store
            .try_lease("referral:r1", "worker-a", long)
            .await
            .unwrap(),
        "its holder renews it"
    );
    // Another key is another lease.
    assert!(store.try_lease("crm:o1", "worker-b", long).await.unwrap());
    // Only the holder releases it.
    store
        .release_lease("referral:r1", "worker-b")
        .await
        .unwrap();
    assert!(
        !store
            .try_lease("referral:r1", "worker-b", long)
            .await
            .unwrap()
    );
    store
        .release_lease("referral:r1", "worker-a")
        .await
        .unwrap();
    assert!(
        store
            .try_lease("referral:r1", "worker-b", long)
            .await
            .unwrap()
    );

    // Several at once: only the holder's own are given up.
    let keys: Vec<String> = (0..600)
        .map(|i| format!("referral:00000000-0000-0000-0000-{i:012}"))
        .collect();
    for key in &keys {
        assert!(store.try_lease(key, "worker-a", long).await.unwrap());
    }
    assert!(store.try_lease("crm:o2", "worker-a", long).await.unwrap());
    let mut theirs = keys.clone();
    theirs.push("crm:o1".into());
    store.release_leases(&theirs, "worker-a").await.unwrap();
    assert!(
        !store.try_lease("crm:o1", "worker-a", long).await.unwrap(),
        "worker-b's lease is left alone"
    );
    assert!(
        store.try_lease(&keys[599], "worker-b", long).await.unwrap(),
        "past the first 500 keys too"
    );
    assert!(store.try_lease(&keys[0], "worker-b", long).await.unwrap());
    assert!(
        !store.try_lease("crm:o2", "worker-b", long).await.unwrap(),
        "a key not named stays held"
    );
    store.release_leases(&[], "worker-a").await.unwrap();

    // A holder that dies keeps its lease only until it expires.
    let short = StdDuration::from_millis(300);
    assert!(
        store
            .try_lease("pass:reconcile", "dead", short)
            .await
            .unwrap()
    );
    assert!(
        !store
            .try_lease("pass:reconcile", "alive", long)
            .await
            .unwrap()
    );
    tokio::time::sleep(StdDuration::from_millis(700)).await;
    assert!(
        store
            .try_lease("pass:reconcile", "alive", long)
            .await
            .unwrap(),
        "an expired lease is taken over"
    );
    assert!(
        !store
            .try_lease("pass:reconcile", "dead", long)
            .await
            .unwrap()
    );

    // Several holders racing for one free lease: exactly one wins.
    let wins = futures::future::join_all(
        (0..6).map(|i| async move { store.try_lease("crm:race", &format!("w{i}"), long).await }),
    )
    .await
    .into_iter()
    .filter(|r| *r.as_ref().unwrap())
    .count();
    assert_eq!(wins, 1, "exactly one holder wins a free lease");

    // A batch release gives up the holder's leases of the batch, and only those.
    for key in ["crm:b1", "crm:b2", "crm:b3"] {
        assert!(store.try_lease(key, "worker-a", long).await.unwrap());
    }
    assert!(store.try_lease("crm:b4", "worker-b", long).await.unwrap());
    let batch: Vec<String> = ["crm:b1", "crm:b2", "crm:b4", "crm:absent"]
        .map(String::from)
        .to_vec();
    store.release_leases(&batch, "worker-a").await.unwrap();
    for key in ["crm:b1", "crm:b2"] {
        assert!(
            store.try_lease(key, "worker-c", long).await.unwrap(),
            "{key} was released with the batch"
        );
    }
    assert!(
        !store.try_lease("crm:b3", "worker-c", long).await.unwrap(),
        "a lease outside the batch is kept"
    );
    assert!(
        !store.try_lease("crm:b4", "worker-c", long).await.unwrap(),
        "another holder's lease in the batch is left alone"
    );
    store.release_leases(&[], "worker-a").await.unwrap();
}

/// Inbox claims: each hint goes to one holder until acknowledged or its claim expires; the
/// pending list still shows every unacknowledged hint.
async fn hints_are_claimed_by_one_worker(store: &dyn StateStore) {
    for (i, r) in ["r1", "r2", "r3", "r4"].into_iter().enumerate() {
        assert!(
            store
                .push_hint(&format!("claim-{i}"), hint(r, i as i64))
                .await
                .unwrap()
        );
    }
    let short = StdDuration::from_millis(300);
    let long = StdDuration::from_secs(60);
    let ids = |hints: &[InboxHint]| -> Vec<String> {
        hints.iter().map(|h| h.referral_id.clone()).collect()
    };
    let a = store.claim_hints("worker-a", 2, short).await.unwrap();
    assert_eq!(ids(&a), ["r1", "r2"], "oldest first, at most max");
    let b = store.claim_hints("worker-b", 10, long).await.unwrap();
    assert_eq!(
        ids(&b),
        ["r3", "r4"],
        "claimed hints are not handed out twice"
    );
    assert!(
        store
            .claim_hints("worker-c", 10, long)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.pending_hints(10).await.unwrap().len(), 4);

    // worker-a acknowledges one hint and dies holding the other.
    store.commit(Commit::new().ack([a[0].seq])).await.unwrap();
    tokio::time::sleep(StdDuration::from_millis(700)).await;
    let c = store.claim_hints("worker-c", 10, long).await.unwrap();
    assert_eq!(
        ids(&c),
        ["r2"],
        "an expired claim is handed to another worker"
    );
    store
        .commit(Commit::new().ack(b.iter().chain(&c).map(|h| h.seq)))
        .await
        .unwrap();
    assert!(store.pending_hints(10).await.unwrap().is_empty());
    assert!(
        store
            .claim_hints("worker-a", 10, long)
            .await
            .unwrap()
            .is_empty()
    );
}

fn letter(key: &str, direction: Direction, first: i64) -> DeadLetter {
    DeadLetter {
        key: key.into(),
        direction,
        error: "customer text that status must not show".into(),
        attempts: 1,
        first_failed_at: t(first),
        last_failed_at: t(first + 5),
    }
}

/// The counts `/status` and the metrics show, queried without loading the rows.
async fn status_counts_come_from_the_store(store: &dyn StateStore) {
    assert_eq!(store.dead_letter_classes().await.unwrap(), []);
    assert_eq!(store.inbox_depth().await.unwrap(), 0);
    assert_eq!(store.last_synced_at(Direction::ToCrm).await.unwrap(), None);
    store
        .commit(
            Commit::new()
                .dead_letter(letter("referral:r2", Direction::ToCrm, 30))
                .dead_letter(letter("referral:r1", Direction::ToCrm, 20))
                .dead_letter(letter("opportunity:o1", Direction::ToPartnerCenter, 40))
                .dead_letter(letter("no-colon", Direction::ToCrm, 50)),
        )
        .await
        .unwrap();
    let classes = store.dead_letter_classes().await.unwrap();
    let summary: Vec<(&str, Direction, u64, chrono::DateTime<Utc>)> = classes
        .iter()
        .map(|c| (c.class.as_str(), c.direction, c.count, c.oldest_failed_at))
        .collect();
    assert_eq!(
        summary,
        [
            ("no-colon", Direction::ToCrm, 1, t(50)),
            ("opportunity", Direction::ToPartnerCenter, 1, t(40)),
            ("referral", Direction::ToCrm, 2, t(20)),
        ]
    );

    assert!(store.push_hint("a", hint("r1", 1)).await.unwrap());
    assert!(store.push_hint("b", hint("r2", 2)).await.unwrap());
    assert_eq!(store.inbox_depth().await.unwrap(), 2);
    let first = store.pending_hints(1).await.unwrap()[0].seq;
    store.commit(Commit::new().ack([first])).await.unwrap();
    assert_eq!(store.inbox_depth().await.unwrap(), 1);

    let mut written = AuditEntry::new(Direction::ToCrm, AuditOutcome::Updated, "w");
    written.at = t(100);
    let mut later_failure = AuditEntry::new(Direction::ToCrm, AuditOutcome::Failed, "f");
    later_failure.at = t(200);
    let mut other_way = AuditEntry::new(Direction::ToPartnerCenter, AuditOutcome::Echo, "e");
    other_way.at = t(300);
    store
        .commit(
            Commit::new()
                .audit(written)
                .audit(later_failure)
                .audit(other_way),
        )
        .await
        .unwrap();
    // A failure or an echo is not a sync.
    assert_eq!(
        store.last_synced_at(Direction::ToCrm).await.unwrap(),
        Some(t(100))
    );
    assert_eq!(
        store
            .last_synced_at(Direction::ToPartnerCenter)
            .await
            .unwrap(),
        None
    );
}

/// A hint carries the referral as listed: the payload round trips through push, pending and
/// claim; `push_hints` deduplicates by body hash within the call and against earlier pushes,
/// and says how many hints were new.
async fn hints_carry_their_payload_and_are_pushed_together(store: &dyn StateStore) {
    let listed = |referral: &str, secs: i64| InboxHint {
        event: "reconcile-listed".into(),
        payload: Some(format!(
            "{{\"id\":\"{referral}\",\"name\":\"Contoso \u{e9}\"}}"
        )),
        ..hint(referral, secs)
    };
    assert!(store.push_hint("single", listed("r0", 0)).await.unwrap());
    let fresh = store
        .push_hints(vec![
            ("many-1".into(), listed("r1", 1)),
            ("single".into(), listed("r0", 0)),
            ("many-2".into(), hint("r2", 2)),
            ("many-1".into(), listed("r1", 1)),
            ("many-3".into(), listed("r3", 3)),
        ])
        .await
        .unwrap();
    assert_eq!(
        fresh, 3,
        "a hash seen before, in the call or earlier, is not new"
    );
    assert_eq!(store.push_hints(Vec::new()).await.unwrap(), 0);
    assert_eq!(store.inbox_depth().await.unwrap(), 4);
    let pending = store.pending_hints(10).await.unwrap();
    let shown: Vec<(&str, &str, Option<&str>)> = pending
        .iter()
        .map(|h| {
            (
                h.referral_id.as_str(),
                h.event.as_str(),
                h.payload.as_deref(),
            )
        })
        .collect();
    let payload = |r: &str| format!("{{\"id\":\"{r}\",\"name\":\"Contoso \u{e9}\"}}");
    let (p0, p1, p3) = (payload("r0"), payload("r1"), payload("r3"));
    assert_eq!(
        shown,
        vec![
            ("r0", "reconcile-listed", Some(p0.as_str())),
            ("r1", "reconcile-listed", Some(p1.as_str())),
            ("r2", "referral-updated", None),
            ("r3", "reconcile-listed", Some(p3.as_str())),
        ],
        "in push order, each with its payload"
    );
    assert_eq!(pending[1].change_time, Some(t(1)));
    let claimed = store
        .claim_hints("worker-a", 10, StdDuration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        claimed, pending,
        "a claim hands out the same hints, payloads included"
    );
    store
        .commit(Commit::new().ack(claimed.iter().map(|h| h.seq)))
        .await
        .unwrap();
    assert_eq!(store.inbox_depth().await.unwrap(), 0);
    // Acknowledged hashes still deduplicate.
    assert_eq!(
        store
            .push_hints(vec![("many-3".into(), listed("r3", 3))])
            .await
            .unwrap(),
        0
    );
}

/// Runs every check of the suite, each against a fresh store from `make`. Panics on the first
/// check the store fails.
pub async fn run(make: impl AsyncFn() -> Box<dyn StateStore>) {
    status_counts_come_from_the_store(&*make().await).await;
    point_lookups_agree_with_the_lists(&*make().await).await;
    crm_children_name_their_parent(&*make().await).await;
    links_are_a_bijection_and_commits_are_atomic(&*make().await).await;
    a_pair_keeps_its_per_side_state_and_a_pending_create(&*make().await).await;
    intents_resolve_with_their_link(&*make().await).await;
    checkpoints_audit_and_dead_letters(&*make().await).await;
    the_inbox_deduplicates_deliveries(&*make().await).await;
    leases_are_exclusive_and_expire(&*make().await).await;
    hints_are_claimed_by_one_worker(&*make().await).await;
    hints_carry_their_payload_and_are_pushed_together(&*make().await).await;
}
