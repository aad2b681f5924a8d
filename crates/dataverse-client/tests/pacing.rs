//! Budget pacing against the Dataverse emulator over loopback, with its service-protection
//! limits scaled down (200 requests per 2 s window): a bounded background load plus a trickle of
//! live requests stays under the limits without 429s, fills the background share, and never
//! sends inside a `Retry-After`.
//!
//! The tests run on a current-thread runtime so the recording transport's receive instant and
//! the pacer's reaction to a 429 happen with no other task in between: a send recorded inside a
//! `Retry-After` is the client's fault, not a race of the recorder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cosell_http::{
    ClientSecretCredential, HttpTransport, PacerConfig, TransportError, parse_retry_after,
};
use cosell_sandbox::Sandbox;
use cosell_sandbox::dataverse::ServiceLimits;
use cosell_sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use dataverse_client::DataverseClient;

const WINDOW: Duration = Duration::from_secs(2);
const MAX_REQUESTS: u32 = 200;

/// One exchange as the wire saw it.
#[derive(Debug, Clone)]
struct Exchange {
    path: String,
    sent: Instant,
    received: Instant,
    status: u16,
    retry_after: Option<Duration>,
}

/// Wraps the real transport and records every exchange.
#[derive(Debug)]
struct Recorder {
    inner: Arc<dyn HttpTransport>,
    log: Mutex<Vec<Exchange>>,
}

#[async_trait]
impl HttpTransport for Recorder {
    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, TransportError> {
        let path = request.uri().path().to_string();
        let sent = Instant::now();
        let resp = self.inner.send(request).await?;
        self.log.lock().unwrap().push(Exchange {
            path,
            sent,
            received: Instant::now(),
            status: resp.status().as_u16(),
            retry_after: parse_retry_after(resp.headers()),
        });
        Ok(resp)
    }
}

impl Recorder {
    fn log(&self) -> Vec<Exchange> {
        self.log.lock().unwrap().clone()
    }
}

fn scaled_limits() -> ServiceLimits {
    ServiceLimits {
        max_requests: MAX_REQUESTS,
        request_window: WINDOW,
        // Execution time is charged (5 ms per operation, and each request really takes that
        // long, as Dataverse's execution happens inside the round trip) but does not bind here.
        max_execution_time: Duration::from_secs(60),
        execution_window: WINDOW,
        operation_cost: Some(Duration::from_millis(5)),
        processing_delay: Duration::from_millis(5),
        ..ServiceLimits::default()
    }
}

fn pacing() -> PacerConfig {
    PacerConfig {
        max_requests: MAX_REQUESTS,
        request_window: WINDOW,
        max_execution_time: Duration::from_secs(60),
        execution_window: WINDOW,
        target: 0.9,
        background_share: 0.8,
    }
}

fn client(
    sandbox: &Sandbox,
    recorder: Arc<Recorder>,
    builder: impl FnOnce(
        dataverse_client::DataverseClientBuilder,
    ) -> dataverse_client::DataverseClientBuilder,
) -> DataverseClient {
    let urls = sandbox.urls();
    let credential =
        ClientSecretCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
            .authority_host(urls.entra.as_str())
            .build()
            .unwrap();
    builder(
        DataverseClient::builder()
            .environment_url(urls.dataverse.clone())
            .credential(Arc::new(credential))
            .transport(recorder),
    )
    .build()
    .unwrap()
}

fn recorder() -> Arc<Recorder> {
    Arc::new(Recorder {
        inner: cosell_http::default_transport().unwrap(),
        log: Mutex::default(),
    })
}

/// Every send that started strictly inside a `Retry-After` received earlier.
fn sends_inside_retry_after(log: &[Exchange]) -> Vec<(Exchange, Exchange)> {
    let mut bad = Vec::new();
    for throttled in log.iter().filter(|e| e.status == 429) {
        let until = throttled.received + throttled.retry_after.unwrap_or(Duration::from_secs(1));
        for e in log {
            if e.sent > throttled.received && e.sent < until {
                bad.push((throttled.clone(), e.clone()));
            }
        }
    }
    bad
}

/// Runs `count` requests from `tasks` tasks sharing one counter; returns the failures.
async fn load(client: DataverseClient, path: &'static str, tasks: usize, count: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (client, next, failures) = (client.clone(), next.clone(), failures.clone());
        set.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                if client.raw().get(path).send().await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    failures.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "current_thread")]
async fn a_background_load_fills_its_share_without_429s_while_live_requests_flow() {
    let sandbox = Sandbox::start().await.unwrap();
    sandbox.dataverse().set_limits(scaled_limits());
    let rec = recorder();
    let live = client(&sandbox, rec.clone(), |b| b.pacing(pacing()));
    let backfill = live.background();
    // Fetch the token before the clock of the run starts.
    live.raw().get("WhoAmI").send().await.unwrap();
    tokio::time::sleep(WINDOW).await;
    let before = rec.log().len();

    // Background: 480 requests (three windows' worth of the 160-request share) from 8 tasks.
    // Live: a trickle of up to 15 requests, one every 100 ms, sent only while the background
    // load runs: a loaded machine slows both, so the trickle stops when the load does rather
    // than racing it.
    const BACKGROUND: usize = 480;
    const LIVE: usize = 15;
    const LIVE_AT_LEAST: usize = 5;
    let bg = tokio::spawn(load(backfill.clone(), "WhoAmI", 8, BACKGROUND));
    let mut live_ok = 0;
    let mut live_during_load = 0;
    while live_ok < LIVE && !bg.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        live.raw().get("accounts?$top=1").send().await.unwrap();
        live_ok += 1;
        if !bg.is_finished() {
            live_during_load += 1;
        }
    }
    let bg_failures = tokio::time::timeout(Duration::from_secs(60), bg)
        .await
        .expect("the bounded background load finishes")
        .unwrap();

    let log: Vec<Exchange> = rec.log().split_off(before);
    let total = log.len();
    let throttled = log.iter().filter(|e| e.status == 429).count();
    let server = sandbox.dataverse().throttle_counts();
    let pacer = live.pacing_snapshot().unwrap();
    let bg_sends: Vec<Instant> = log
        .iter()
        .filter(|e| e.path.ends_with("/WhoAmI"))
        .map(|e| e.sent)
        .collect();
    // Background throughput over the whole windows the load ran: from its first send, count
    // its sends per window against the 160-request share.
    let t0 = bg_sends.iter().min().copied().unwrap();
    let last = bg_sends.iter().max().copied().unwrap();
    let windows = ((last - t0).as_secs_f64() / WINDOW.as_secs_f64()).floor() as u32;
    let in_windows = bg_sends
        .iter()
        .filter(|t| **t - t0 < WINDOW * windows)
        .count();
    let share = (f64::from(MAX_REQUESTS) * 0.8).floor() as usize;
    let fill = in_windows as f64 / (share * windows as usize) as f64;
    println!(
        "requests {total}, 429s {throttled} (server {server:?}), background {} in {:.2} s, \
         {windows} whole windows at {:.1} % of the background share, live {live_ok}, \
         pacer {pacer:?}",
        bg_sends.len(),
        (last - t0).as_secs_f64(),
        fill * 100.0
    );

    assert_eq!(bg_failures, 0);
    assert_eq!(bg_sends.len(), BACKGROUND);
    assert!(
        live_during_load >= LIVE_AT_LEAST,
        "only {live_during_load} live requests completed while the background load ran"
    );
    assert!(
        (throttled as f64) < 0.01 * total as f64,
        "{throttled} 429s of {total}"
    );
    assert_eq!(
        server.requests + server.execution_time + server.concurrency,
        throttled as u64
    );
    assert!(sends_inside_retry_after(&log).is_empty());
    assert!(windows >= 2, "the load spans at least two whole windows");
    assert!(
        fill >= 0.9,
        "background filled {:.1} % of its share",
        fill * 100.0
    );
    assert_eq!(
        pacer.live_delayed, 0,
        "no live request waited for budget behind the background load"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn every_task_waits_out_a_retry_after_caused_by_another_process() {
    let sandbox = Sandbox::start().await.unwrap();
    sandbox.dataverse().set_limits(ServiceLimits {
        max_requests: 60,
        ..scaled_limits()
    });
    // Another process of the same user, unpaced, fills the server's window: the paced client
    // cannot know until the server answers 429.
    let other = client(&sandbox, recorder(), |b| b.no_pacing());
    assert_eq!(load(other, "WhoAmI", 4, 60).await, 0);

    let rec = recorder();
    let paced = client(&sandbox, rec.clone(), |b| {
        b.pacing(PacerConfig {
            max_requests: 60,
            ..pacing()
        })
    });
    let backfill = paced.background();
    let bg = tokio::spawn(load(backfill, "WhoAmI", 6, 30));
    // Live requests start after the first 429s are in: they have seen none themselves, and
    // must still wait out the shared Retry-After.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live_failures = load(paced.clone(), "accounts", 2, 10).await;
    let bg_failures = tokio::time::timeout(Duration::from_secs(60), bg)
        .await
        .expect("the bounded load finishes")
        .unwrap();

    let log = rec.log();
    let throttled = log.iter().filter(|e| e.status == 429).count();
    println!(
        "requests {}, 429s {throttled}, pacer {:?}",
        log.len(),
        paced.pacing_snapshot()
    );
    assert!(throttled > 0, "the foreign load made the server refuse");
    assert!(
        log.iter()
            .all(|e| e.status != 429 || e.retry_after.is_some()),
        "the emulator sends Retry-After"
    );
    let bad = sends_inside_retry_after(&log);
    assert!(bad.is_empty(), "{bad:#?}");
    assert_eq!(
        (bg_failures, live_failures),
        (0, 0),
        "every request got through"
    );
    let pacer = paced.pacing_snapshot().unwrap();
    assert_eq!(pacer.throttled, throttled as u64);
    assert!(
        pacer.live_delayed > 0,
        "live requests waited for the Retry-After"
    );
}
