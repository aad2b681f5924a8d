//! The engine on the in-memory fakes: each story drives real passes and checks both sides and
//! the store afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cosell_mapping::{FieldMap, RecordKind};
use partner_center_client::models::{Referral, ReferralStatus, ReferralSubstatus};
use serde_json::{Value, json};

use super::*;
use crate::store::{MemoryStore, StateStore};
use crate::{Action, Engine, EngineConfig};

struct World {
    pc: MemoryPartnerCenter,
    crm: MemoryCrm,
    store: Arc<MemoryStore>,
    engine: Engine,
}

fn world() -> World {
    let pc = MemoryPartnerCenter::new();
    let crm = MemoryCrm::new(FieldMap::default());
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::new(
        Arc::new(pc.clone()),
        Arc::new(crm.clone()),
        store.clone(),
        EngineConfig::default(),
    );
    World {
        pc,
        crm,
        store,
        engine,
    }
}

/// A co-sell referral Microsoft sent and the partner accepted.
fn co_sell(name: &str, country: &str) -> Referral {
    serde_json::from_value(json!({
        "name": name,
        "status": "Active", "substatus": "Accepted",
        "type": "Shared", "qualification": "SalesQualified", "direction": "Incoming",
        "customerProfile": {
            "name": "Contoso Customer Inc",
            "address": { "addressLine1": "One Microsoft Way", "city": "Redmond",
                         "state": "WA", "postalCode": "98052", "country": country },
            "team": [ { "firstName": "Sue", "lastName": "Smith",
                        "email": "sue.smith@contoso.com" } ]
        },
        "consent": { "consentToShareReferralWithMicrosoftSellers": true },
        "details": {
            "notes": "Customer wants Dynamics 365.",
            "dealValue": 50000, "currency": "USD", "closingDateTime": "2030-11-14T00:00:00Z"
        },
        "inviteContext": { "assistanceRequestCode": "CustomerTechnicalArchitecture" }
    }))
    .unwrap()
}

fn opportunity_of(w: &World, referral_id: &str) -> crate::CrmRow {
    w.crm
        .rows(RecordKind::Opportunity)
        .into_iter()
        .find(|r| {
            r.records
                .primary
                .get("cosell_referralid")
                .and_then(Value::as_str)
                == Some(referral_id)
        })
        .expect("an opportunity carries the referral id")
}

fn column<'a>(row: &'a crate::CrmRow, name: &str) -> &'a Value {
    row.records.primary.get(name).unwrap_or(&Value::Null)
}

/// A referral synced into the CRM, with its id.
async fn synced(w: &World, name: &str) -> String {
    let referral = w.pc.insert(co_sell(name, "US"));
    let id = referral.id.clone().unwrap();
    let outcome = Box::pin(w.engine.apply_referral(referral)).await.unwrap();
    assert_eq!(outcome.action, Action::CreatedInCrm, "{}", outcome.detail);
    // The create comes back on the change feed: taken as our own write, not an edit.
    let echo = Box::pin(w.engine.pull_crm_changes()).await.unwrap();
    assert_eq!(echo.failures().count(), 0, "{echo:?}");
    id
}

#[tokio::test]
async fn a_referral_creates_one_linked_opportunity() {
    let w = world();
    let id = synced(&w, "Contoso rollout").await;

    let rows = w.crm.rows(RecordKind::Opportunity);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(column(row, "cosell_referralid"), &json!(id));
    assert!(
        column(row, "name")
            .as_str()
            .unwrap()
            .contains("Contoso rollout")
    );
    assert_eq!(column(row, "estimatedvalue").as_f64(), Some(50000.0));
    assert_eq!(row.records.currency_code.as_deref(), Some("USD"));
    assert_eq!(
        row.records.account.as_ref().and_then(|a| a.get("name")),
        Some(&json!("Contoso Customer Inc"))
    );

    let link = w.store.link_by_referral(&id).await.unwrap().unwrap();
    assert_eq!(link.crm_id.as_deref(), Some(row.id.as_str()));
    assert_eq!(link.crm_entity, "opportunity");
    assert!(link.in_sync);
    // A second pass over the same referral is an echo: nothing is written anywhere.
    let writes = w.crm.calls(CrmCall::Write);
    let again = w.engine.sync_referral(&id).await.unwrap();
    assert!(
        matches!(again.action, Action::Echo | Action::Unchanged),
        "{again:?}"
    );
    assert_eq!(w.crm.calls(CrmCall::Write), writes);
    assert_eq!(w.pc.calls(PcCall::Update), 0);
}

#[tokio::test]
async fn a_partner_center_edit_updates_the_crm_and_its_echo_writes_nothing_back() {
    let w = world();
    let id = synced(&w, "Fabrikam deal").await;

    w.pc.edit(&id, |r| {
        r.details.get_or_insert_with(Default::default).notes = Some("Budget approved.".into());
    })
    .unwrap();
    let report = w.engine.reconcile().await.unwrap();
    assert_eq!(report.count(Action::UpdatedCrm), 1, "{report:?}");
    let row = opportunity_of(&w, &id);
    assert!(
        column(&row, "description")
            .as_str()
            .unwrap()
            .contains("Budget approved."),
        "{row:?}"
    );

    // The CRM reports the engine's write in its feed; it must not travel back as an edit.
    let updates = w.pc.calls(PcCall::Update);
    let echo = w.engine.pull_crm_changes().await.unwrap();
    assert!(
        echo.outcomes
            .iter()
            .all(|o| o.action != Action::UpdatedReferral),
        "{echo:?}"
    );
    assert_eq!(w.pc.calls(PcCall::Update), updates);
    assert_eq!(w.engine.stats().failures, 0);
}

#[tokio::test]
async fn a_seller_edit_in_the_crm_is_written_to_partner_center_under_its_etag() {
    let w = world();
    let id = synced(&w, "Northwind migration").await;
    let before = w.pc.get(&id).unwrap();
    let row = opportunity_of(&w, &id);

    assert!(w.crm.edit(
        RecordKind::Opportunity,
        &row.id,
        serde_json::from_value(json!({ "estimatedvalue": 75000.0 })).unwrap(),
    ));
    let report = w.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::UpdatedReferral), 1, "{report:?}");

    let after = w.pc.get(&id).unwrap();
    let deal_value = after.details.as_ref().and_then(|d| d.deal_value).unwrap();
    assert_eq!(deal_value.to_string().parse::<f64>().unwrap(), 75000.0);
    assert_ne!(after.e_tag, before.e_tag);
    let link = w.store.link_by_referral(&id).await.unwrap().unwrap();
    assert_eq!(link.pc_etag, after.e_tag, "the link follows the new eTag");
    assert!(link.in_sync);
}

#[tokio::test]
async fn edits_of_one_field_on_both_sides_are_a_conflict_both_sides_end_agreeing_on() {
    let w = world();
    let id = synced(&w, "Tailspin expansion").await;
    let row = opportunity_of(&w, &id);

    w.pc.edit(&id, |r| {
        r.details.get_or_insert_with(Default::default).deal_value =
            serde_json::from_value(json!(60000)).unwrap();
    })
    .unwrap();
    assert!(w.crm.edit(
        RecordKind::Opportunity,
        &row.id,
        serde_json::from_value(json!({ "estimatedvalue": 70000.0 })).unwrap(),
    ));
    let report = w.engine.pull_crm_changes().await.unwrap();
    let outcome = report
        .outcomes
        .iter()
        .find(|o| o.referral_id.as_deref() == Some(id.as_str()))
        .expect("the pair was synced");
    assert!(
        outcome.conflicts.iter().any(|c| c.contains("deal_value")),
        "{outcome:?}"
    );
    assert_eq!(w.engine.stats().conflicts, 1);

    let pc_value = w.pc.get(&id).unwrap().details.unwrap().deal_value.unwrap();
    let crm_value = column(&opportunity_of(&w, &id), "estimatedvalue")
        .as_f64()
        .unwrap();
    assert_eq!(pc_value.to_string().parse::<f64>().unwrap(), crm_value);
    assert!([60000.0, 70000.0].contains(&crm_value), "{crm_value}");
}

#[tokio::test]
async fn a_broken_referral_is_dead_lettered_and_the_others_still_sync() {
    let w = world();
    let good = w.pc.insert(co_sell("Good deal", "US"));
    // Not an ISO 3166 country: the mapping refuses the record.
    let broken = w.pc.insert(co_sell("Broken deal", "Atlantis"));
    let later = w.pc.insert(co_sell("Later deal", "DE"));

    let report = w.engine.reconcile().await.unwrap();
    assert_eq!(report.count(Action::CreatedInCrm), 2, "{report:?}");
    let failed: Vec<_> = report.failures().collect();
    assert_eq!(failed.len(), 1, "{report:?}");
    assert_eq!(failed[0].referral_id, broken.id);
    assert!(
        failed[0].detail.contains("Atlantis"),
        "{}",
        failed[0].detail
    );

    for ok in [&good, &later] {
        opportunity_of(&w, ok.id.as_deref().unwrap());
    }
    let letters = w.store.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].key.contains(broken.id.as_deref().unwrap()),
        "{letters:?}"
    );
    assert!(
        w.crm
            .rows(RecordKind::Opportunity)
            .iter()
            .all(|r| { column(r, "cosell_referralid").as_str() != broken.id.as_deref() })
    );

    // Fixed in Partner Center: the replay creates it and clears the dead letter.
    w.pc.edit(broken.id.as_deref().unwrap(), |r| {
        if let Some(a) = r.customer_profile.as_mut().and_then(|c| c.address.as_mut()) {
            a.country = Some("FR".into());
        }
    })
    .unwrap();
    let replay = w.engine.replay_dead_letters().await.unwrap();
    assert_eq!(replay.count(Action::CreatedInCrm), 1, "{replay:?}");
    assert!(w.store.dead_letters().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_crm_write_is_not_taken_for_done() {
    let w = world();
    let referral = w.pc.insert(co_sell("Flaky deal", "US"));
    let id = referral.id.clone().unwrap();
    w.crm.fail_next(
        CrmCall::Write,
        RemoteError::new(RemoteErrorKind::Transient, "crm", "503 from the CRM"),
    );
    let first = w.engine.apply_referral(referral).await.unwrap();
    assert_eq!(first.action, Action::Failed, "{first:?}");
    assert!(w.crm.rows(RecordKind::Opportunity).is_empty());
    assert!(w.store.dead_letters().await.unwrap().len() == 1);

    let retry = w.engine.replay_dead_letters().await.unwrap();
    assert_eq!(retry.count(Action::CreatedInCrm), 1, "{retry:?}");
    opportunity_of(&w, &id);
    assert!(w.store.dead_letters().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_stale_crm_etag_is_refused_by_the_fake() {
    let crm = MemoryCrm::new(FieldMap::default());
    let mut records = CrmRecords::new(RecordKind::Opportunity, Record::new());
    records.primary.insert("name".into(), json!("Seed"));
    let id = crm.insert(records);
    let etag = crm.row(RecordKind::Opportunity, &id).unwrap().etag.unwrap();
    let columns: Record = serde_json::from_value(json!({ "name": "One" })).unwrap();
    let new = crm
        .update_columns(RecordKind::Opportunity, &id, &columns, Some(&etag))
        .await
        .unwrap();
    assert_ne!(new.as_deref(), Some(etag.as_str()));
    let stale = crm
        .update_columns(RecordKind::Opportunity, &id, &columns, Some(&etag))
        .await
        .unwrap_err();
    assert_eq!(stale.kind(), RemoteErrorKind::PreconditionFailed);
}

/// Issue 15: the batched backfill, on a CRM with only the default `create_new` (a write per
/// record, its status steps after it), leaves each pair exactly as `apply_referral` leaves it:
/// the same link state and the same CRM record, open or closed.
#[tokio::test]
async fn a_batched_backfill_leaves_each_pair_as_apply_referral_does() {
    // (status, substatus); `None`: the co-sell referral as it is (accepted).
    let variants = [
        None,
        Some((ReferralStatus::New, ReferralSubstatus::Pending)),
        Some((ReferralStatus::Closed, ReferralSubstatus::Won)),
        Some((ReferralStatus::Closed, ReferralSubstatus::Lost)),
    ];
    let batched = world();
    let single = world();
    let mut pairs = Vec::new();
    for (i, variant) in variants.iter().enumerate() {
        let mut r = co_sell(&format!("Deal {i}"), "US");
        if let Some((status, substatus)) = variant {
            r.status = Some(status.clone());
            r.substatus = Some(substatus.clone());
        }
        pairs.push((batched.pc.insert(r.clone()), single.pc.insert(r)));
    }
    let report = batched
        .engine
        .backfill(pairs.iter().map(|(b, _)| b.clone()).collect())
        .await
        .unwrap();
    assert_eq!(report.outcomes.len(), pairs.len());
    for (b, s) in &pairs {
        let one = single.engine.apply_referral(s.clone()).await.unwrap();
        let many = report
            .outcomes
            .iter()
            .find(|o| o.referral_id == b.id)
            .unwrap();
        assert_eq!(many.action, one.action, "{many:?} / {one:?}");
        let lb = batched
            .store
            .link_by_referral(b.id.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap();
        let ls = single
            .store
            .link_by_referral(s.id.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                &lb.crm_entity,
                &lb.target,
                &lb.crm_known,
                &lb.pc_known,
                lb.in_sync
            ),
            (
                &ls.crm_entity,
                &ls.target,
                &ls.crm_known,
                &ls.pc_known,
                ls.in_sync
            ),
            "the link of {:?}",
            b.status
        );
        let kind = if lb.crm_entity == "lead" {
            RecordKind::Lead
        } else {
            RecordKind::Opportunity
        };
        let rb = batched
            .crm
            .row(kind, lb.crm_id.as_deref().unwrap())
            .unwrap();
        let rs = single.crm.row(kind, ls.crm_id.as_deref().unwrap()).unwrap();
        let map = FieldMap::default();
        assert_eq!(
            map.snapshot_from_crm(&rb.records, None).unwrap(),
            map.snapshot_from_crm(&rs.records, None).unwrap()
        );
        for c in ["statecode", "statuscode"] {
            assert_eq!(column(&rb, c), column(&rs, c), "{c} of {:?}", b.status);
        }
    }
    // Every one was created by the batched path (which reads no row back), none twice.
    assert_eq!(
        report.count(Action::CreatedInCrm),
        pairs.len(),
        "{report:#?}"
    );
    assert_eq!(batched.crm.calls(CrmCall::Read), 0);
    assert!(single.crm.calls(CrmCall::Read) > 0);
    assert_eq!(
        batched.crm.rows(RecordKind::Opportunity).len() + batched.crm.rows(RecordKind::Lead).len(),
        pairs.len()
    );
}

/// A world whose engine shares its reconcile through the inbox, with one lane (so the inbox
/// counts as full at 100 hints) and inbox batches of 32.
fn sharing_world() -> World {
    let mut w = world();
    w.engine = Engine::new(
        Arc::new(w.pc.clone()),
        Arc::new(w.crm.clone()),
        w.store.clone(),
        EngineConfig {
            share_reconcile: true,
            backfill_lanes: 1,
            leases: crate::LeaseConfig {
                inbox_batch: 32,
                ..crate::LeaseConfig::default()
            },
            ..EngineConfig::default()
        },
    );
    w
}

/// Every referral is one linked CRM row, in sync, and the inbox is empty.
async fn assert_each_once(w: &World, ids: &[String]) {
    let rows: Vec<String> = w
        .crm
        .rows(RecordKind::Opportunity)
        .into_iter()
        .chain(w.crm.rows(RecordKind::Lead))
        .filter_map(|r| {
            r.records
                .primary
                .get("cosell_referralid")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    for id in ids {
        assert_eq!(
            rows.iter().filter(|r| *r == id).count(),
            1,
            "CRM rows of {id}"
        );
        let link = w.store.link_by_referral(id).await.unwrap().unwrap();
        assert!(link.in_sync && link.crm_id.is_some(), "{link:?}");
    }
    assert_eq!(rows.len(), ids.len(), "no CRM row of anything else");
    assert_eq!(w.store.inbox_depth().await.unwrap(), 0);
}

/// Issue 15: a lone worker whose reconcile is shared still finishes it. Its inbox is full
/// (100 webhooks waiting, the bound for one lane): the lister drains them before it queues
/// its listing, then drains its own listing, writing each listed copy without reading it again.
#[tokio::test]
async fn a_lone_worker_sharing_its_reconcile_drains_a_full_inbox_and_its_own_listing() {
    let w = sharing_world();
    let mut ids = Vec::new();
    for i in 0..130 {
        let referral = w.pc.insert(co_sell(&format!("Deal {i}"), "US"));
        ids.push(referral.id.unwrap());
    }
    // Webhooks for the first 100: the inbox is at its bound.
    for (i, id) in ids.iter().take(100).enumerate() {
        let hint = crate::store::InboxHint {
            seq: 0,
            referral_id: id.clone(),
            event: "referral-updated".into(),
            change_time: None,
            received_at: chrono::Utc::now(),
            payload: None,
        };
        assert!(
            w.store
                .push_hint(&format!("webhook-{i}"), hint)
                .await
                .unwrap()
        );
    }
    let report = w.engine.reconcile().await.unwrap();
    assert_eq!(report.failures().count(), 0, "{report:#?}");
    // The webhooks first (each read afresh), then the listing queued as one chunk, then the
    // listing written: the 100 already written are unchanged, the 30 others created.
    let queued: Vec<usize> = report
        .outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.action == Action::Queued)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(queued, [100], "{report:#?}");
    assert_eq!(
        report.outcomes[queued[0]].detail,
        "queued 130 listed referrals for any worker"
    );
    assert!(
        report.outcomes[..100]
            .iter()
            .all(|o| o.action == Action::CreatedInCrm),
        "the full inbox was drained before the listing was queued"
    );
    assert_eq!(report.count(Action::CreatedInCrm), 130, "{report:#?}");
    assert_eq!(
        report.count(Action::Unchanged) + report.count(Action::Echo),
        100
    );
    // Only the webhooks were read afresh; the listed copies were written as listed.
    assert_eq!(w.pc.calls(PcCall::Get), 100);
    assert_each_once(&w, &ids).await;
    let newest =
        w.pc.get_referral(ids.last().unwrap())
            .await
            .unwrap()
            .updated_date_time
            .unwrap();
    assert_eq!(
        w.store
            .checkpoint(crate::engine::RECONCILE_CHECKPOINT)
            .await
            .unwrap()
            .as_deref(),
        Some(newest.to_rfc3339().as_str())
    );
}

/// Issue 15: a lister that crashed after queueing a chunk and before moving the checkpoint
/// leaves the chunk queued; the next pass lists it again and queues it again (its hints name
/// their pass), and the second copy of each referral is harmless: unchanged.
#[tokio::test]
async fn a_crash_between_queueing_and_the_checkpoint_only_queues_again() {
    let w = sharing_world();
    let mut listed = Vec::new();
    for i in 0..40 {
        listed.push(w.pc.insert(co_sell(&format!("Deal {i}"), "US")));
    }
    let ids: Vec<String> = listed.iter().map(|r| r.id.clone().unwrap()).collect();
    // What the crashed pass left: its chunk queued, no checkpoint.
    let hints = listed
        .iter()
        .map(|r| {
            let id = r.id.clone().unwrap();
            let changed = r.updated_date_time.unwrap().to_rfc3339();
            (
                format!("reconcile:2026-12-01T00:00:00+00:00:{id}:{changed}"),
                crate::store::InboxHint {
                    seq: 0,
                    referral_id: id,
                    event: crate::engine::RECONCILE_LISTED.into(),
                    change_time: r.updated_date_time,
                    received_at: chrono::Utc::now(),
                    payload: Some(serde_json::to_string(r).unwrap()),
                },
            )
        })
        .collect();
    assert_eq!(w.store.push_hints(hints).await.unwrap(), 40);
    assert_eq!(
        w.store
            .checkpoint(crate::engine::RECONCILE_CHECKPOINT)
            .await
            .unwrap(),
        None
    );
    let report = w.engine.reconcile().await.unwrap();
    assert_eq!(report.failures().count(), 0, "{report:#?}");
    assert_eq!(report.count(Action::Queued), 1, "listed and queued again");
    // Batches of 32 in queue order: the 40 first copies are created, and the 40 second ones
    // (a few coalesced with their first copy in one batch, the rest on their own) change
    // nothing.
    assert_eq!(report.count(Action::CreatedInCrm), 40, "{report:#?}");
    assert_eq!(
        report.count(Action::Unchanged) + report.count(Action::Echo),
        report.total() - 41,
        "{report:#?}"
    );
    assert!(
        report.total() > 41,
        "some second copies applied on their own"
    );
    assert_eq!(w.pc.calls(PcCall::Get), 0, "every copy written as listed");
    assert_each_once(&w, &ids).await;
    assert!(
        w.store
            .checkpoint(crate::engine::RECONCILE_CHECKPOINT)
            .await
            .unwrap()
            .is_some()
    );
}
