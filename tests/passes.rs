//! Issue 15, items 2 and 3, as an operator sees them: a long reconcile never holds webhooks
//! back, and a reconcile cut off part-way resumes after the last page it finished instead of
//! starting over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cosell::partner_center::PartnerCenterClient;
use cosell::partner_center::models::{PatchOperation, Referral};
use cosell::sandboxed::Sandboxed;
use cosell::sync::{
    EngineConfig, PartnerCenter, ReferralPage, RemoteError, RemoteErrorKind, Schedule,
};
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::Value;
use tokio::sync::Notify;

/// What the test does to the reconcile's listing of referrals.
#[derive(Debug, Default)]
struct Listing {
    /// Set when a listing starts.
    started: AtomicBool,
    /// While set, a listing waits before its first page (a reconcile in flight, stuck on a
    /// slow Partner Center).
    parked: AtomicBool,
    opened: Notify,
    /// A listing fails on this page (1-based; 0 = never): a reconcile cut off part-way.
    fail_on_page: AtomicUsize,
}

/// Partner Center as the engine sees it, with the listing under the test's control.
#[derive(Debug)]
struct Controlled {
    client: PartnerCenterClient,
    listing: Arc<Listing>,
}

#[async_trait]
impl PartnerCenter for Controlled {
    async fn get_referral(&self, id: &str) -> Result<Referral, RemoteError> {
        self.client.get_referral(id).await.map_err(Into::into)
    }

    async fn referrals_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<Referral>, RemoteError> {
        PartnerCenter::referrals_updated_since(&self.client, since).await
    }

    fn referral_pages_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> BoxStream<'_, Result<ReferralPage, RemoteError>> {
        let listing = self.listing.clone();
        let fail_on = listing.fail_on_page.load(Ordering::SeqCst);
        stream::once(async move {
            let opened = listing.opened.notified();
            listing.started.store(true, Ordering::SeqCst);
            if listing.parked.load(Ordering::SeqCst) {
                opened.await;
            }
        })
        .flat_map(move |()| self.client.referral_pages_updated_since(since))
        .enumerate()
        .map(move |(i, page)| {
            if i + 1 == fail_on {
                Err(RemoteError::new(
                    RemoteErrorKind::Transient,
                    "partner-center",
                    "the listing broke off",
                ))
            } else {
                page
            }
        })
        .boxed()
    }

    async fn find_by_external_reference(
        &self,
        external_reference_id: &str,
        created_since: DateTime<Utc>,
    ) -> Result<Option<Referral>, RemoteError> {
        self.client
            .find_by_external_reference(external_reference_id, created_since)
            .await
    }

    async fn create_referral(&self, referral: &Referral) -> Result<Referral, RemoteError> {
        PartnerCenter::create_referral(&self.client, referral).await
    }

    async fn update_referral(
        &self,
        id: &str,
        etag: &str,
        operations: Vec<PatchOperation>,
    ) -> Result<Referral, RemoteError> {
        PartnerCenter::update_referral(&self.client, id, etag, operations).await
    }
}

fn rows_with_referral(s: &Sandboxed, table: &str, id: &str) -> usize {
    s.sandbox
        .dataverse()
        .query(table, &format!("cosell_referralid eq '{id}'"))
        .unwrap()
        .len()
}

/// The CRM's open opportunities that carry a referral id.
fn open_linked_opportunities(s: &Sandboxed) -> Vec<Value> {
    s.sandbox
        .dataverse()
        .query(
            "opportunity",
            "cosell_referralid ne null and statecode eq 0",
        )
        .unwrap()
}

fn in_crm(s: &Sandboxed, id: &str) -> bool {
    rows_with_referral(s, "opportunity", id) + rows_with_referral(s, "lead", id) > 0
}

/// Referral ids ordered by last change, oldest first (the reconcile's listing order).
fn by_last_change(s: &Sandboxed) -> Vec<(DateTime<Utc>, String)> {
    let mut all: Vec<(DateTime<Utc>, String)> = s
        .sandbox
        .partner_center()
        .referrals()
        .iter()
        .map(|r| {
            let at = r["updatedDateTime"].as_str().unwrap();
            (
                DateTime::parse_from_rfc3339(at)
                    .unwrap()
                    .with_timezone(&Utc),
                r["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    all.sort();
    all
}

/// A seller's webhook is synced while the first reconcile after a restart is still listing a
/// year of history: the passes do not wait for each other.
#[tokio::test]
async fn a_webhook_is_synced_while_a_long_reconcile_runs() {
    let s = Sandboxed::builder().start().await.unwrap();
    let listing = Arc::new(Listing::default());
    listing.parked.store(true, Ordering::SeqCst);
    let engine = s.engine.clone();
    let engine = cosell::sync::Engine::new(
        Arc::new(Controlled {
            client: s.partner_center.clone(),
            listing: listing.clone(),
        }),
        s.crm.clone(),
        s.store.clone(),
        engine.config().clone(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .run(
                    Schedule {
                        inbox: Duration::from_millis(20),
                        crm_changes: Duration::from_millis(200),
                        reconcile: Duration::from_secs(3600),
                    },
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
        })
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while !listing.started.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the reconcile starts");

    // Microsoft sends a referral while the reconcile is stuck in its listing.
    let body = s.sandbox.partner_center().generate_referral_request();
    let referral: Referral = serde_json::from_value(body).unwrap();
    let created = s.partner_center.create_referral(&referral).await.unwrap();
    let id = created.id.clone().unwrap();
    let synced = tokio::time::timeout(Duration::from_secs(15), async {
        while !in_crm(&s, &id) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        synced.is_ok(),
        "the webhook's referral reached the CRM while the reconcile was still listing"
    );
    assert!(
        listing.parked.load(Ordering::SeqCst),
        "the reconcile had not finished"
    );

    // Shutdown waits for the reconcile in flight, which finishes once Partner Center answers.
    stop.send(()).unwrap();
    listing.parked.store(false, Ordering::SeqCst);
    listing.opened.notify_waiters();
    let result = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("run returns after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        rows_with_referral(&s, "opportunity", &id) + rows_with_referral(&s, "lead", &id),
        1
    );
}

/// A first reconcile over 250 referrals (three pages of 100) that breaks off on its third page
/// keeps what it did: the checkpoint stands at the newest change of page two, and the next
/// reconcile lists from there, not from the start.
#[tokio::test]
async fn a_reconcile_cut_off_resumes_after_the_last_finished_page() {
    let s = Sandboxed::builder().webhooks(false).start().await.unwrap();
    s.sandbox.partner_center().seed_referrals(250);
    let order = by_last_change(&s);
    let listing = Arc::new(Listing::default());
    listing.fail_on_page.store(3, Ordering::SeqCst);
    let config = EngineConfig {
        reconcile_overlap: chrono::Duration::zero(),
        ..EngineConfig::default()
    };
    let engine = cosell::sync::Engine::new(
        Arc::new(Controlled {
            client: s.partner_center.clone(),
            listing: listing.clone(),
        }),
        s.crm.clone(),
        s.store.clone(),
        config.clone(),
    );

    let cut_off = engine.reconcile().await;
    assert!(cut_off.is_err(), "the third page failed: {cut_off:?}");
    let checkpoint = s.store.checkpoint("pc.reconcile").await.unwrap().unwrap();
    let checkpoint = DateTime::parse_from_rfc3339(&checkpoint)
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(checkpoint, order[199].0, "the newest change on page two");
    let done: Vec<&String> = order
        .iter()
        .filter(|(_, id)| in_crm(&s, id))
        .map(|(_, id)| id)
        .collect();
    assert_eq!(done.len(), 200, "pages one and two were synced");
    assert!(order[..200].iter().all(|(_, id)| in_crm(&s, id)));

    // Partner Center answers again: the next reconcile lists only what it had not finished.
    listing.fail_on_page.store(0, Ordering::SeqCst);
    let report = engine.reconcile().await.unwrap();
    let listed: Vec<&str> = report
        .outcomes
        .iter()
        .filter_map(|o| o.referral_id.as_deref())
        .collect();
    assert!(
        listed.len() <= 51,
        "listed {} referrals again, not just page three",
        listed.len()
    );
    assert!(
        order[200..]
            .iter()
            .all(|(_, id)| listed.contains(&id.as_str()))
    );
    assert!(order.iter().all(|(_, id)| in_crm(&s, id)));
    let opportunities = open_linked_opportunities(&s);
    let leads = s
        .sandbox
        .dataverse()
        .query("lead", "cosell_referralid ne null")
        .unwrap();
    let mut ids: Vec<&Value> = opportunities
        .iter()
        .chain(leads.iter())
        .map(|r| &r["cosell_referralid"])
        .collect();
    let rows = ids.len();
    ids.sort_by_key(|v| v.as_str().map(str::to_string));
    ids.dedup();
    assert_eq!(ids.len(), rows, "no referral has two CRM rows");
}

/// The CRM change feed's first read over every row is applied a page at a time, each page
/// checkpointed: a read cut off on a page resumes at that page (the pages before it are not
/// read again), and a seller's edit made while it was stuck is synced by the next read.
#[tokio::test]
async fn a_crm_feed_read_cut_off_resumes_at_the_page_it_stopped_on() {
    use cosell::sandbox::{Fault, Service};
    use cosell::sync::Action;
    let page = 4;
    let s = Sandboxed::builder()
        .webhooks(false)
        .crm_change_page_size(page)
        .start()
        .await
        .unwrap();
    s.sandbox.partner_center().seed_referrals(14);
    let report = s.engine.reconcile().await.unwrap();
    assert_eq!(report.count(Action::Failed), 0, "{:?}", report.outcomes);
    let opportunities = s.sandbox.dataverse().count("opportunity");
    assert!(
        opportunities > 2 * page as usize,
        "{opportunities} opportunities"
    );

    // The read's second page fails however often it is retried: the pass fails.
    s.sandbox.faults().inject(
        Service::Dataverse,
        Fault::status(503)
            .on_method(axum::http::Method::GET)
            .on_path("/opportunities")
            .after(1),
    );
    assert!(s.engine.pull_crm_changes().await.is_err());
    s.sandbox.faults().clear();
    // The engine's checkpoint of the opportunity feed.
    let name = "crm.changes.opportunity";
    let cursor = s.store.checkpoint(name).await.unwrap().unwrap();
    assert!(cursor.starts_with("initial-page "), "{cursor}");

    // A seller edits one of the opportunities meanwhile.
    let (id, referral_id) = {
        let rows = open_linked_opportunities(&s);
        let row = &rows[0];
        (
            uuid::Uuid::parse_str(row["opportunityid"].as_str().unwrap()).unwrap(),
            row["cosell_referralid"].as_str().unwrap().to_string(),
        )
    };
    s.sandbox
        .dataverse()
        .update_as_user(
            "opportunity",
            id,
            serde_json::json!({"description": "Edited while the feed was stuck"}),
        )
        .unwrap();

    // The next read goes on from the page it stopped at: the rest of the pages, each row an
    // echo of what the reconcile wrote, and no Partner Center call.
    s.sandbox.faults().reset_counters();
    let report = s.engine.pull_crm_changes().await.unwrap();
    let pages_left = opportunities.div_ceil(page as usize) - 1;
    let feed_reads = s.sandbox.faults().calls_matching(
        Service::Dataverse,
        &axum::http::Method::GET,
        "/opportunities",
    );
    assert_eq!(
        feed_reads, pages_left as u64,
        "only the pages not applied yet"
    );
    let echoes = report
        .outcomes
        .iter()
        .filter(|o| {
            o.action == Action::Echo && o.crm.as_ref().is_some_and(|c| c.0 == "opportunity")
        })
        .count();
    assert_eq!(
        echoes,
        opportunities - page as usize,
        "{:?}",
        report.outcomes
    );
    assert_eq!(s.sandbox.faults().calls(Service::Referrals), 0);
    let cursor = s.store.checkpoint(name).await.unwrap().unwrap();
    assert!(
        !cursor.starts_with("initial-page "),
        "the read is complete: {cursor}"
    );

    // The edit comes with the delta read that follows, and reaches Partner Center.
    let report = s.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::Failed), 0, "{:?}", report.outcomes);
    let referral = s.sandbox.partner_center().referral(&referral_id).unwrap();
    assert_eq!(
        referral["details"]["notes"],
        Value::String("Edited while the feed was stuck".into()),
        "{referral}"
    );
}
