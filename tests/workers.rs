//! Several workers on PostgreSQL (issue 15): engines sharing one `PostgresStore` (each with a
//! connection pool of its own, as separate processes have) and one sandbox over loopback. A
//! workload from both sides; the verdict is read from the emulators themselves: no duplicate
//! CRM row or referral, no lost write, work spread over the workers, and a killed worker's
//! hints and pairs taken over once its leases expire.
//!
//! PostgreSQL comes from `COSELL_TEST_POSTGRES_URL` (set by `.ci/run`) or is started from the
//! binaries on this machine; without either the tests say loudly that they skipped (and fail on
//! CI). Never mocked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cosell::http::RetryPolicy;
use cosell::partner_center::models::Referral;
use cosell::sandbox::{Fault, Service};
use cosell::sandboxed::{Sandboxed, StoreChoice};
use cosell::sync::engine::RECONCILE_CHECKPOINT;
use cosell::sync::store::conformance::TestPostgres;
use cosell::sync::store::{PostgresStore, StateStore};
use cosell::sync::{Action, Engine, EngineConfig, LeaseConfig, Report};
use serde_json::{Value, json};

struct Harness {
    s: Sandboxed,
    /// The server and schema of the shared PostgreSQL store; `None`: one shared memory store.
    pg: Option<(TestPostgres, String)>,
}

impl Harness {
    async fn start(test: &str) -> Option<Harness> {
        let pg = TestPostgres::for_test(test)?;
        let store = pg.store("workers").await.unwrap();
        let schema = store.schema().unwrap().to_string();
        Some(Harness::with(StoreChoice::Shared(Arc::new(store)), Some((pg, schema))).await)
    }

    async fn with(store: StoreChoice, pg: Option<(TestPostgres, String)>) -> Harness {
        let s = Sandboxed::builder()
            .store(store)
            .retry(
                RetryPolicy::default()
                    .with_initial_delay(Duration::from_millis(20))
                    .with_max_attempts(4),
            )
            .start()
            .await
            .unwrap();
        Harness { s, pg }
    }

    /// A worker: an engine over a store connection of its own to the shared schema (or over
    /// the shared memory store).
    async fn worker(&self, leases: LeaseConfig) -> (Engine, Option<PostgresStore>) {
        self.worker_with(EngineConfig {
            leases,
            ..EngineConfig::default()
        })
        .await
    }

    /// A worker with `config`.
    async fn worker_with(&self, config: EngineConfig) -> (Engine, Option<PostgresStore>) {
        let (store, pool): (Arc<dyn StateStore>, _) = match &self.pg {
            Some((pg, schema)) => {
                let store = PostgresStore::connect_in_schema(pg.url(), schema)
                    .await
                    .unwrap();
                (Arc::new(store.clone()), Some(store))
            }
            None => (self.s.store.clone(), None),
        };
        let engine = Engine::new(
            Arc::new(self.s.partner_center.clone()),
            self.s.crm.clone(),
            store,
            config,
        );
        (engine, pool)
    }

    async fn settled(&self) {
        tokio::time::timeout(Duration::from_secs(20), self.s.deliveries_settled())
            .await
            .expect("webhook deliveries did not settle");
    }

    /// A referral as a partner seller creates it in Partner Center (fires a webhook).
    async fn pc_referral(&self) -> String {
        let body = self.s.sandbox.partner_center().generate_referral_request();
        let referral: Referral = serde_json::from_value(body).unwrap();
        let created = self
            .s
            .partner_center
            .create_referral(&referral)
            .await
            .unwrap();
        created.id.unwrap()
    }

    /// The CRM rows (opportunities and leads) carrying `referral_id`.
    fn crm_rows_of(&self, referral_id: &str) -> Vec<Value> {
        let dv = self.s.sandbox.dataverse();
        ["opportunity", "lead"]
            .into_iter()
            .flat_map(|t| {
                dv.query(t, &format!("cosell_referralid eq '{referral_id}'"))
                    .unwrap()
            })
            .collect()
    }

    fn referrals_from(&self, crm_id: &str) -> Vec<Value> {
        self.s
            .sandbox
            .partner_center()
            .referrals()
            .into_iter()
            .filter(|r| r["externalReferenceId"] == json!(crm_id))
            .collect()
    }
}

/// Work that wrote something (not an echo, not unchanged or skipped).
fn writes(report: &Report) -> usize {
    [
        Action::CreatedInCrm,
        Action::CreatedReferral,
        Action::UpdatedCrm,
        Action::UpdatedReferral,
        Action::UpdatedBoth,
    ]
    .into_iter()
    .map(|a| report.count(a))
    .sum()
}

/// Every worker runs one full round at the same time; returns what each wrote.
async fn concurrent_round(workers: &[Engine]) -> Vec<usize> {
    let tasks: Vec<_> = workers
        .iter()
        .cloned()
        .map(|w| tokio::spawn(async move { w.run_once().await }))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        let report = t.await.unwrap().unwrap();
        assert_eq!(report.failures().count(), 0, "{report:#?}");
        out.push(writes(&report));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_the_work_without_duplicates_or_lost_writes() {
    let Some(h) = Harness::start("three_workers_share_the_work").await else {
        return;
    };
    three_workers_share_the_work(h).await;
}

/// The same engines on one memory store (one process): the lease code path every store shares,
/// run even where there is no PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_engines_on_one_memory_store_share_the_work_the_same_way() {
    three_workers_share_the_work(Harness::with(StoreChoice::Memory, None).await).await;
}

async fn three_workers_share_the_work(h: Harness) {
    // Small inbox batches, so a burst of callbacks is spread over the workers.
    let leases = LeaseConfig {
        inbox_batch: 2,
        ..LeaseConfig::default()
    };
    let mut workers = Vec::new();
    let mut stores = Vec::new();
    for _ in 0..3 {
        let (engine, store) = h.worker(leases.clone()).await;
        workers.push(engine);
        stores.push(store);
    }
    let ids: Vec<&str> = workers.iter().map(Engine::worker_id).collect();
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );

    // Both sides at once: partner sellers create referrals (callbacks into the shared inbox),
    // CRM sellers mark opportunities for co-sell (the change feed).
    const REFERRALS: usize = 12;
    const CRM_ROWS: usize = 4;
    let mut referrals = Vec::new();
    for _ in 0..REFERRALS {
        referrals.push(h.pc_referral().await);
    }
    let mut opportunities = Vec::new();
    for i in 0..CRM_ROWS {
        opportunities.push(
            h.s.seed_co_sell_opportunity(&format!("Worker deal {i}"))
                .unwrap(),
        );
    }
    h.settled().await;

    let mut done = vec![0usize; workers.len()];
    for _ in 0..6 {
        for (d, n) in done.iter_mut().zip(concurrent_round(&workers).await) {
            *d += n;
        }
        h.settled().await;
        if h.s.store.pending_hints(10).await.unwrap().is_empty()
            && h.s.store.link_count().await.unwrap() as usize == REFERRALS + CRM_ROWS
        {
            break;
        }
    }
    assert_eq!(
        h.s.store.link_count().await.unwrap() as usize,
        REFERRALS + CRM_ROWS
    );
    // Spread: every worker wrote something.
    eprintln!("writes per worker: {done:?}");
    assert!(done.iter().all(|&n| n > 0), "work per worker: {done:?}");

    // Then edits from both sides: Microsoft changes notes, sellers change deal values.
    for (i, id) in referrals.iter().enumerate().take(6) {
        h.s.sandbox
            .partner_center()
            .update_as_microsoft(
                id,
                json!([{"op": "replace", "path": "/details/notes", "value": format!("Microsoft note {i}")}]),
            )
            .unwrap();
    }
    for (i, id) in opportunities.iter().enumerate() {
        h.s.sandbox
            .dataverse()
            .update_as_user(
                "opportunity",
                *id,
                json!({"estimatedvalue": 200000.0 + i as f64}),
            )
            .unwrap();
    }
    h.settled().await;
    for _ in 0..4 {
        concurrent_round(&workers).await;
        h.settled().await;
    }

    // The emulators' own state: one CRM row per referral, one referral per CRM row, every
    // edit on the other side.
    for (i, id) in referrals.iter().enumerate() {
        let rows = h.crm_rows_of(id);
        assert_eq!(rows.len(), 1, "CRM rows of referral {id}: {rows:#?}");
        if i < 6 {
            assert_eq!(
                rows[0]["description"],
                json!(format!("Microsoft note {i}")),
                "Microsoft's edit of {id} reached the CRM"
            );
        }
    }
    for (i, id) in opportunities.iter().enumerate() {
        let found = h.referrals_from(&id.to_string());
        assert_eq!(found.len(), 1, "referrals of opportunity {id}: {found:#?}");
        assert_eq!(
            found[0]["details"]["dealValue"].as_f64(),
            Some(200000.0 + i as f64),
            "the seller's edit of {id} reached Partner Center"
        );
    }
    assert_eq!(
        h.s.sandbox.partner_center().referral_count(),
        REFERRALS + CRM_ROWS,
        "no duplicate referral"
    );
    assert!(h.s.store.dead_letters().await.unwrap().is_empty());
    assert!(h.s.store.pending_hints(10).await.unwrap().is_empty());
    for store in stores.iter().flatten() {
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_workers_hints_and_pairs_are_taken_over() {
    let Some(h) = Harness::start("a_killed_workers_pairs").await else {
        return;
    };
    // Short leases, so the dead worker's claims and pairs expire within the test.
    let leases = LeaseConfig {
        ttl: Duration::from_secs(1),
        wait: Duration::from_secs(10),
        inbox_batch: 50,
    };
    const REFERRALS: usize = 6;
    let mut referrals = Vec::new();
    for _ in 0..REFERRALS {
        referrals.push(h.pc_referral().await);
    }
    h.settled().await;

    // The first worker claims every hint and starts on the pairs; Dataverse answers slowly,
    // so it is mid-pass, holding claims and pair leases, when it is killed.
    let faults = h.s.sandbox.faults();
    faults.inject(
        Service::Dataverse,
        Fault::latency(Duration::from_secs(3)).times(REFERRALS as u32),
    );
    let (doomed, doomed_store) = h.worker(leases.clone()).await;
    let running = tokio::spawn(async move { doomed.drain_inbox().await });
    tokio::time::timeout(Duration::from_secs(20), async {
        while faults.injected() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the first worker never reached Dataverse");
    // The kill: the task is gone and its database connections with it, so nothing it held
    // is given back; only expiry frees it.
    running.abort();
    doomed_store.expect("a PostgreSQL worker").close().await;
    faults.clear();

    // Straight after the kill every hint is still claimed: the survivor finds nothing to take.
    let (survivor, survivor_store) = h.worker(leases).await;
    let mut handled = 0;
    for _ in 0..40 {
        let report = survivor.drain_inbox().await.unwrap();
        assert_eq!(report.failures().count(), 0, "{report:#?}");
        handled += writes(&report);
        if h.s.store.pending_hints(10).await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        h.s.store.pending_hints(10).await.unwrap().is_empty(),
        "the dead worker's hints were taken over"
    );
    assert!(handled > 0, "the survivor did the dead worker's work");
    for id in &referrals {
        let rows = h.crm_rows_of(id);
        assert_eq!(rows.len(), 1, "CRM rows of referral {id}: {rows:#?}");
        let link = h.s.store.link_by_referral(id).await.unwrap();
        assert!(
            link.as_ref()
                .is_some_and(|l| l.in_sync && l.crm_id.is_some()),
            "pair of {id}: {link:#?}"
        );
    }
    survivor_store.expect("a PostgreSQL worker").close().await;
}

/// Dataverse `$batch` requests the emulator received.
fn dataverse_batches(h: &Harness) -> u64 {
    h.s.sandbox
        .faults()
        .calls_matching(Service::Dataverse, &http::Method::POST, "$batch")
}

/// What one worker did in a shared reconcile: chunks queued, CRM rows created, writes.
#[derive(Debug, Default, Clone, Copy)]
struct Share {
    queued: usize,
    created: usize,
    writes: usize,
}

impl Share {
    fn add(&mut self, report: &Report) {
        assert_eq!(report.failures().count(), 0, "{report:#?}");
        self.queued += report.count(Action::Queued);
        self.created += report.count(Action::CreatedInCrm);
        self.writes += writes(report);
    }
}

/// Until the shared reconcile is done (its checkpoint set, the inbox empty): every worker
/// runs the reconcile (one lists, the others find the pass taken) and drains the inbox,
/// waiting a moment whenever there was nothing to take. Returns what each worker did.
async fn share_until_done(workers: &[Engine]) -> Vec<Share> {
    let tasks: Vec<_> = workers
        .iter()
        .cloned()
        .map(|w| {
            tokio::spawn(async move {
                let mut share = Share::default();
                share.add(&w.reconcile().await.unwrap());
                for _ in 0..800 {
                    let drained = w.drain_inbox().await.unwrap();
                    share.add(&drained);
                    if drained.total() == 0 {
                        let store = w.store();
                        if store
                            .checkpoint(RECONCILE_CHECKPOINT)
                            .await
                            .unwrap()
                            .is_some()
                            && store.inbox_depth().await.unwrap() == 0
                        {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
                share
            })
        })
        .collect();
    let mut shares = Vec::new();
    for t in tasks {
        shares.push(t.await.unwrap());
    }
    shares
}

/// Issue 15, item 4: three workers share one reconcile of a history that produced no
/// webhooks. One lists and queues the referrals in the inbox; all three write them, in
/// backfill groups: one CRM row per referral, the work spread, a few `$batch`es.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_a_reconcile_without_duplicates() {
    let Some(h) = Harness::start("three_workers_share_a_reconcile").await else {
        return;
    };
    share_a_reconcile(h).await;
}

/// The same on one memory store (one process, three engines).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_engines_on_one_memory_store_share_a_reconcile_the_same_way() {
    share_a_reconcile(Harness::with(StoreChoice::Memory, None).await).await;
}

async fn share_a_reconcile(h: Harness) {
    const HISTORY: usize = 150;
    let ids = h.s.sandbox.partner_center().seed_referrals(HISTORY);
    // Seeding fires no webhooks: the reconcile is the only way these reach the CRM.
    h.settled().await;
    assert_eq!(h.s.store.inbox_depth().await.unwrap(), 0);
    let config = EngineConfig {
        share_reconcile: true,
        // Batches of 20 hints: the listing is taken by several workers.
        leases: LeaseConfig {
            inbox_batch: 20,
            ..LeaseConfig::default()
        },
        ..EngineConfig::default()
    };
    let mut workers = Vec::new();
    let mut stores = Vec::new();
    for _ in 0..3 {
        let (engine, store) = h.worker_with(config.clone()).await;
        workers.push(engine);
        stores.push(store);
    }
    h.s.sandbox.faults().reset_counters();

    let shares = share_until_done(&workers).await;
    let queued: Vec<usize> = shares.iter().map(|s| s.queued).collect();
    let created: Vec<usize> = shares.iter().map(|s| s.created).collect();
    eprintln!(
        "chunks queued per worker: {queued:?}; created per worker: {created:?}; $batch: {}; \
         Dataverse requests: {}",
        dataverse_batches(&h),
        h.s.sandbox.faults().calls(Service::Dataverse)
    );
    assert_eq!(queued.iter().sum::<usize>(), 1, "one lister, one chunk");
    assert_eq!(created.iter().sum::<usize>(), HISTORY);
    assert!(
        created.iter().all(|&n| n > 0),
        "work per worker: {created:?}"
    );

    // The emulators' state: one CRM row per referral.
    for id in &ids {
        let rows = h.crm_rows_of(id);
        assert_eq!(rows.len(), 1, "CRM rows of referral {id}: {rows:#?}");
    }
    // No customer twice: two workers creating one new customer's referrals side by side
    // would each find no account and make one.
    let mut accounts: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for a in h.s.sandbox.dataverse().rows("account") {
        let part = |c: &str| a[c].as_str().unwrap_or("").trim().to_lowercase();
        *accounts
            .entry((part("name"), part("address1_postalcode")))
            .or_default() += 1;
    }
    let twice: Vec<_> = accounts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "duplicate accounts: {twice:?}");
    // The batched path: a few `$batch`es for the whole history, not requests per referral.
    let batches = dataverse_batches(&h);
    assert!(
        batches > 0 && batches <= (HISTORY / 4) as u64,
        "{batches} $batch requests for {HISTORY} referrals"
    );
    assert_eq!(h.s.store.link_count().await.unwrap() as usize, HISTORY);
    assert_eq!(h.s.store.inbox_depth().await.unwrap(), 0);
    assert!(
        h.s.store
            .checkpoint(RECONCILE_CHECKPOINT)
            .await
            .unwrap()
            .is_some()
    );
    assert!(h.s.store.dead_letters().await.unwrap().is_empty());
    // A second round lists the same referrals again (the overlap) and writes nothing.
    let again = share_until_done(&workers).await;
    assert_eq!(
        again.iter().map(|s| s.writes).sum::<usize>(),
        0,
        "a second reconcile wrote: {again:?}"
    );
    for store in stores.iter().flatten() {
        store.close().await;
    }
}

/// Issue 15, item 4: the worker that listed a shared reconcile claims the first hints and is
/// killed while it writes them (Dataverse answering slowly); once its claims expire, another
/// worker writes them: nothing lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_workers_reconcile_hints_are_taken_over() {
    let Some(h) = Harness::start("a_killed_workers_reconcile_hints").await else {
        return;
    };
    const HISTORY: usize = 60;
    let ids = h.s.sandbox.partner_center().seed_referrals(HISTORY);
    let config = EngineConfig {
        share_reconcile: true,
        leases: LeaseConfig {
            ttl: Duration::from_secs(1),
            wait: Duration::from_secs(10),
            inbox_batch: 25,
        },
        ..EngineConfig::default()
    };
    let faults = h.s.sandbox.faults();
    faults.inject(
        Service::Dataverse,
        Fault::latency(Duration::from_secs(3)).times(HISTORY as u32),
    );
    let (doomed, doomed_store) = h.worker_with(config.clone()).await;
    let running = tokio::spawn(async move { doomed.reconcile().await });
    tokio::time::timeout(Duration::from_secs(20), async {
        while faults.injected() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the lister never reached Dataverse");
    // The listing is queued and the checkpoint past it before the lister writes anything.
    assert!(
        h.s.store
            .checkpoint(RECONCILE_CHECKPOINT)
            .await
            .unwrap()
            .is_some()
    );
    running.abort();
    doomed_store.expect("a PostgreSQL worker").close().await;
    faults.clear();
    assert_eq!(h.s.store.inbox_depth().await.unwrap() as usize, HISTORY);

    let (survivor, survivor_store) = h.worker_with(config).await;
    let mut created = 0;
    for _ in 0..40 {
        let report = survivor.drain_inbox().await.unwrap();
        assert_eq!(report.failures().count(), 0, "{report:#?}");
        created += report.count(Action::CreatedInCrm);
        if h.s.store.inbox_depth().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        h.s.store.inbox_depth().await.unwrap(),
        0,
        "the dead worker's hints were taken over"
    );
    assert!(created > 0, "the survivor did the dead worker's work");
    for id in &ids {
        let rows = h.crm_rows_of(id);
        assert_eq!(rows.len(), 1, "CRM rows of referral {id}: {rows:#?}");
        let link = h.s.store.link_by_referral(id).await.unwrap();
        assert!(
            link.as_ref()
                .is_some_and(|l| l.in_sync && l.crm_id.is_some()),
            "pair of {id}: {link:#?}"
        );
    }
    assert!(h.s.store.dead_letters().await.unwrap().is_empty());
    survivor_store.expect("a PostgreSQL worker").close().await;
}

/// Two workers creating referrals of one new customer at the same time (a webhook each, and a
/// group of a shared reconcile on a third) make one account: the customer's lock is a lease in
/// the store as well as a lock in process, so creates of one new customer on different
/// workers go one after another, as they do within one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_creating_one_new_customer_side_by_side_make_one_account() {
    let h = Harness::with(StoreChoice::Memory, None).await;
    let pc = h.s.sandbox.partner_center();
    let ids: Vec<String> = (0..4)
        .map(|i| {
            let r = pc
                .create_incoming_referral(json!({
                    "name": "Nod Publishers - Analytics",
                    "customerProfile": {
                        "name": "Nod Publishers",
                        "address": {"postalCode": "98101", "country": "US", "city": "Seattle",
                                    "state": "WA"},
                        "team": [{"firstName": "Pat", "lastName": "Lee",
                                  "email": format!("pat{i}@nod.example"),
                                  "phoneNumber": "+1 206 555 0100"}],
                    },
                    "details": {"currency": "USD", "dealValue": 50_000},
                }))
                .unwrap();
            let id = r["id"].as_str().unwrap().to_string();
            pc.update_as_microsoft(
                &id,
                json!([
                    {"op": "replace", "path": "/status", "value": "Active"},
                    {"op": "replace", "path": "/substatus", "value": "Accepted"},
                ]),
            )
            .unwrap();
            id
        })
        .collect();
    h.settled().await;
    let mut listed: Vec<Referral> = Vec::new();
    for id in &ids[2..] {
        listed.push(h.s.partner_center.get_referral(id).await.unwrap());
    }
    let (a, _) = h.worker(LeaseConfig::default()).await;
    let (b, _) = h.worker(LeaseConfig::default()).await;
    let (c, _) = h.worker(LeaseConfig::default()).await;
    let (ra, rb, rc) = tokio::join!(
        a.sync_referral(&ids[0]),
        b.sync_referral(&ids[1]),
        c.apply_referrals(listed),
    );
    assert_eq!(ra.unwrap().action, Action::CreatedInCrm);
    assert_eq!(rb.unwrap().action, Action::CreatedInCrm);
    assert_eq!(rc.unwrap().count(Action::CreatedInCrm), 2);
    let accounts: Vec<Value> =
        h.s.sandbox
            .dataverse()
            .rows("account")
            .into_iter()
            .filter(|a| a["name"] == json!("Nod Publishers"))
            .collect();
    assert_eq!(accounts.len(), 1, "accounts: {accounts:#?}");
    for id in &ids {
        assert_eq!(h.crm_rows_of(id).len(), 1, "CRM rows of {id}");
    }
}
