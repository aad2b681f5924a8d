//! The Partner Center emulator: the Referrals API, the webhook registration API, signed callback
//! deliveries, the certificate host and a control API playing Microsoft's side.
//!
//! # Hosts and routes
//!
//! | host | routes |
//! |---|---|
//! | referrals ([`SandboxUrls::referrals`](crate::SandboxUrls)) | `POST/GET /v1.0/engagements/referrals`, `GET/PATCH/PUT /v1.0/engagements/referrals/{id}`, `GET /v1.0/referrals?$skiptoken=…` (where `@odata.nextLink` points, as in production), control routes under `/_sandbox/` (no auth) |
//! | webhooks | `GET/POST/PUT /webhooks/v1/registration`, `GET /webhooks/v1/registration/events`, `POST /webhooks/v1/registration/validationEvents`, `GET /webhooks/v1/registration/validationEvents/{correlationId}` |
//! | certificates | `GET /cert/pcnotifications-dispatch.microsoft.com.cer` (the leaf alone, DER), `GET /cert/sandbox-root-ca.pem` |
//! | PKI ([`SandboxUrls::pki`](crate::SandboxUrls)) | `GET /pkiops/certs/cosell-sandbox-issuing-ca-01.crt` (the intermediate, DER: the leaf's AIA `caIssuers` URL) |
//!
//! The referrals API accepts only app+user tokens for `https://api.partner.microsoft.com`; the
//! webhook API accepts app-only and app+user tokens for `https://api.partnercenter.microsoft.com`.
//!
//! # Listing cost
//!
//! Referrals are indexed by id and by `createdDateTime`/`updatedDateTime`: `$orderby` on one of
//! them and a `updatedDateTime ge|gt …` filter walk the index rather than sorting every stored
//! referral for each page. Pages stay skip-based, as the `$skiptoken` of the documented pager.
//!
//! # Parties
//!
//! The sandbox's tenant ("ours", [`SANDBOX_ORGANIZATION_ID`]) is the only webhook subscriber.
//! Referrals created through the API, incoming referrals created by the control API and seeded
//! referrals are ours; Microsoft's (and other partners') referrals in one of our engagements are
//! *related referrals*: readable by id and listed only when the `$filter` names `engagementId`
//! (as `links.relatedReferrals` does), never writable through the API. A change to ours fires
//! `referral-created`/`referral-updated`; a change to a related referral fires
//! `related-referral-created`/`related-referral-updated`.
//!
//! # Control API (Microsoft's side)
//!
//! Rust methods on [`PartnerCenterEmulator`] and HTTP routes on the referrals host:
//!
//! | method | route |
//! |---|---|
//! | [`create_incoming_referral`](PartnerCenterEmulator::create_incoming_referral) | `POST /_sandbox/referrals/incoming` (body: fields to override, optional) |
//! | [`microsoft_accept`](PartnerCenterEmulator::microsoft_accept) | `POST /_sandbox/referrals/{id}/accept` |
//! | [`microsoft_decline`](PartnerCenterEmulator::microsoft_decline) | `POST /_sandbox/referrals/{id}/decline` |
//! | [`set_microsoft_crm_id`](PartnerCenterEmulator::set_microsoft_crm_id) | `POST /_sandbox/referrals/{id}/microsoft-crm-id` (`{"microsoftMsxId": "…"}`, optional) |
//! | [`update_as_microsoft`](PartnerCenterEmulator::update_as_microsoft) | `PATCH /_sandbox/referrals/{id}` (JSON Patch) |
//! | [`add_related_referral`](PartnerCenterEmulator::add_related_referral) | `POST /_sandbox/engagements/{engagementId}/related-referrals` |
//! | [`expire_pending`](PartnerCenterEmulator::expire_pending) | `POST /_sandbox/expire-pending` |
//! | [`seed_referrals`](PartnerCenterEmulator::seed_referrals) | `POST /_sandbox/seed` (`{"count": 250}`) |
//! | [`referral`](PartnerCenterEmulator::referral) / [`referrals`](PartnerCenterEmulator::referrals) | `GET /_sandbox/referrals/{id}`, `GET /_sandbox/referrals` |
//! | [`deliveries`](PartnerCenterEmulator::deliveries) / [`clear_deliveries`](PartnerCenterEmulator::clear_deliveries) | `GET`/`DELETE /_sandbox/deliveries` |
//! | [`set_delivery_faults`](PartnerCenterEmulator::set_delivery_faults) | `PUT /_sandbox/delivery-faults` (`{"dropNext":1,"duplicate":true,"reorderWindow":3,"burst":3}`) |
//! | [`certificate_url`](PartnerCenterEmulator::certificate_url), [`root_ca_pem`](PartnerCenterEmulator::root_ca_pem) | `GET /_sandbox/certificate` |

mod certs;
mod control;
mod delivery;
mod error;
pub mod filter;
mod lifecycle;
#[cfg(test)]
mod list_tests;
mod patch;
mod referrals;
mod seed;
mod webhooks;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::Router;
use chrono::{DateTime, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use url::Url;

pub use certs::{
    CERTIFICATE_COMMON_NAME, CERTIFICATE_FILE, CERTIFICATE_ORGANIZATION,
    INTERMEDIATE_CA_COMMON_NAME, INTERMEDIATE_FILE, IdentityError, PKI_CERTS_PATH,
    ROOT_CA_COMMON_NAME,
};
pub use delivery::{
    DeliveryAttempt, DeliveryFaults, DeliveryPolicy, DeliveryRecord, DeliveryState,
    SUPPORTED_EVENTS, WebhookRegistration,
};

use crate::EmulatorContext;
use certs::SigningIdentity;
use error::ApiError;

/// Organization id of the sandbox's own partner tenant ("ours").
pub const SANDBOX_ORGANIZATION_ID: &str = "5b1f6a3e-8c2d-4e7a-9f10-2a6b7c8d9e01";
/// Organization name of the sandbox's partner tenant.
pub const SANDBOX_ORGANIZATION_NAME: &str = "Fabrikam Sandbox Partner";
/// Partner (MPN) id of the sandbox's partner tenant.
pub const SANDBOX_MPN_ID: &str = "6543210";
/// Organization id Microsoft's referrals carry (as in `inviteContext.invitedBy`).
pub const MICROSOFT_ORGANIZATION_ID: &str = "msft";
/// Days an incoming referral stays pending before it expires.
pub const PENDING_EXPIRY_DAYS: i64 = 14;

/// Who owns a stored referral.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Party {
    /// The sandbox's tenant: the webhook subscriber.
    Ours,
    /// Microsoft or another partner: a related referral.
    Other,
}

#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) party: Party,
    pub(crate) body: Map<String, Value>,
}

/// Mutable state of the emulator (one lock; never held across an await).
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) referrals: Vec<Stored>,
    pub(crate) index: HashMap<String, usize>,
    /// `(createdDateTime, position)` of every referral: `$orderby`/`$filter` on it without a
    /// sort or a scan per page.
    pub(crate) by_created: BTreeSet<(String, usize)>,
    /// `(updatedDateTime, position)` of every referral.
    pub(crate) by_updated: BTreeSet<(String, usize)>,
    /// Positions of the referrals of each engagement (by `engagementId`, ASCII lower case, as
    /// `engagementId eq '…'` compares it), ascending.
    pub(crate) by_engagement: HashMap<String, Vec<usize>>,
    /// Bumped by every write to a referral: a cached listing is valid for one generation.
    pub(crate) generation: u64,
    /// The last listing's matches (positions in order), reused by its next pages.
    pub(crate) list_cache: Option<(referrals::ListKey, Arc<Vec<usize>>)>,
    /// Whether some stored timestamp is not in the fixed format, or some engagement id not a
    /// string (then listing does not narrow through the indexes).
    pub(crate) odd_timestamps: bool,
    pub(crate) rng: StdRng,
    etag_counter: u64,
    last_tick: i64,
    pub(crate) registration: Option<WebhookRegistration>,
    pub(crate) validations: HashMap<String, delivery::Validation>,
    pub(crate) test_events: VecDeque<Instant>,
    pub(crate) deliveries: Vec<DeliveryRecord>,
    pub(crate) faults: DeliveryFaults,
    pub(crate) held: Vec<usize>,
    pub(crate) policy: DeliveryPolicy,
    pub(crate) test_event_limit: bool,
}

impl State {
    /// A new instant, strictly after the previous one, on a 100 ns grid (7 fractional digits).
    pub(crate) fn now(&mut self) -> DateTime<Utc> {
        let wall = Utc::now()
            .timestamp_nanos_opt()
            .map_or(self.last_tick + 1, |n| n / 100);
        let tick = wall.max(self.last_tick + 1);
        self.last_tick = tick;
        DateTime::from_timestamp_nanos(tick.saturating_mul(100))
    }

    /// A new quoted opaque ETag, different from every earlier one.
    pub(crate) fn next_etag(&mut self) -> String {
        self.etag_counter += 1;
        let stamp = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
        format!(
            "\"{:08x}-0000-0200-0000-{:012x}\"",
            self.etag_counter,
            stamp & 0xffff_ffff_ffff
        )
    }

    /// A GUID drawn from the seeded generator.
    pub(crate) fn new_guid(&mut self) -> String {
        use rand::Rng;
        let bytes: [u8; 16] = self.rng.random();
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .to_string()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Stored> {
        self.index.get(id).and_then(|i| self.referrals.get(*i))
    }

    /// Replaces the body of referral `id`, keeping the timestamp indexes exact.
    pub(crate) fn replace_body(&mut self, id: &str, body: Map<String, Value>) {
        let Some(&i) = self.index.get(id) else { return };
        if let Some(old) = self.referrals.get(i).map(|r| r.body.clone()) {
            self.unindex_times(i, &old);
        }
        self.index_times(i, &body);
        if let Some(slot) = self.referrals.get_mut(i) {
            slot.body = body;
        }
    }

    pub(crate) fn insert(&mut self, stored: Stored) {
        let id = stored
            .body
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let i = self.referrals.len();
        self.index.insert(id, i);
        self.index_times(i, &stored.body);
        self.referrals.push(stored);
    }

    fn index_times(&mut self, i: usize, body: &Map<String, Value>) {
        self.generation += 1;
        self.list_cache = None;
        let (created, updated) = (
            timestamp(body, "createdDateTime"),
            timestamp(body, "updatedDateTime"),
        );
        self.odd_timestamps |= !fixed_format(&created) || !fixed_format(&updated);
        self.by_created.insert((created, i));
        self.by_updated.insert((updated, i));
        match body.get("engagementId") {
            Some(Value::String(e)) => {
                let ids = self
                    .by_engagement
                    .entry(e.to_ascii_lowercase())
                    .or_default();
                if let Err(at) = ids.binary_search(&i) {
                    ids.insert(at, i);
                }
            }
            // Only string ids are indexed; anything else turns the narrowing off.
            _ => self.odd_timestamps = true,
        }
    }

    /// Positions of the referrals of engagement `id` (any case), ascending.
    pub(crate) fn in_engagement(&self, id: &str) -> &[usize] {
        self.by_engagement
            .get(&id.to_ascii_lowercase())
            .map_or(&[], Vec::as_slice)
    }

    fn unindex_times(&mut self, i: usize, body: &Map<String, Value>) {
        self.by_created
            .remove(&(timestamp(body, "createdDateTime"), i));
        self.by_updated
            .remove(&(timestamp(body, "updatedDateTime"), i));
    }
}

/// A timestamp member as listing sorts it (text; absent or not a string sorts as empty).
pub(crate) fn timestamp(body: &Map<String, Value>, field: &str) -> String {
    body.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// `2026-09-30T10:00:00.1234567Z`: [`format_timestamp`]'s fixed width, where text order is time
/// order.
pub(crate) fn fixed_format(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 28 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && b[27] == b'Z'
}

/// Formats an instant as the API does: UTC, 7 fractional digits, `Z`.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

/// Formats an instant as webhook payloads do: 7 fractional digits, `+00:00`.
pub(crate) fn format_change_date(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}+00:00",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

pub(crate) struct Inner {
    pub(crate) ctx: EmulatorContext,
    state: Mutex<State>,
    pub(crate) identity: Result<SigningIdentity, IdentityError>,
    pub(crate) queue: mpsc::UnboundedSender<usize>,
    queue_rx: Mutex<Option<mpsc::UnboundedReceiver<usize>>>,
    pub(crate) pending: watch::Sender<usize>,
    pub(crate) transport: Mutex<Option<Arc<dyn cosell_http::HttpTransport>>>,
}

/// Why a control-API call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ControlError {
    /// The HTTP status the control route answers with.
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

impl From<ApiError> for ControlError {
    fn from(e: ApiError) -> Self {
        ControlError {
            status: e.status.as_u16(),
            message: e.message,
        }
    }
}

/// The Partner Center emulator (cheap to clone; clones share state).
///
/// Built by the [`Sandbox`](crate::Sandbox) launcher; reach it with
/// [`Sandbox::partner_center`](crate::Sandbox::partner_center).
#[derive(Clone)]
pub struct PartnerCenterEmulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PartnerCenterEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("PartnerCenterEmulator")
            .field("referrals", &s.referrals.len())
            .field("registration", &s.registration)
            .field("deliveries", &s.deliveries.len())
            .finish_non_exhaustive()
    }
}

impl PartnerCenterEmulator {
    /// Creates the emulator, generating its webhook signing certificate.
    pub fn new(ctx: EmulatorContext) -> Self {
        let (queue, queue_rx) = mpsc::unbounded_channel();
        let identity = SigningIdentity::generate(Self::issuer_url_in(&ctx).as_str());
        if let Err(e) = &identity {
            tracing::error!(error = %e, "webhook deliveries will fail");
        }
        let state = State {
            referrals: Vec::new(),
            by_created: BTreeSet::new(),
            by_updated: BTreeSet::new(),
            by_engagement: HashMap::new(),
            generation: 0,
            list_cache: None,
            odd_timestamps: false,
            index: HashMap::new(),
            rng: StdRng::seed_from_u64(ctx.seed),
            etag_counter: 0,
            last_tick: 0,
            registration: None,
            validations: HashMap::new(),
            test_events: VecDeque::new(),
            deliveries: Vec::new(),
            faults: DeliveryFaults::default(),
            held: Vec::new(),
            policy: DeliveryPolicy::default(),
            test_event_limit: true,
        };
        PartnerCenterEmulator {
            inner: Arc::new(Inner {
                ctx,
                state: Mutex::new(state),
                identity,
                queue,
                queue_rx: Mutex::new(Some(queue_rx)),
                pending: watch::Sender::new(0),
                transport: Mutex::new(None),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared context.
    pub fn context(&self) -> &EmulatorContext {
        &self.inner.ctx
    }

    /// Routes of the referrals host (API, the production-style next-link path, control routes).
    pub fn referrals_router(&self) -> Router {
        referrals::router(self.clone()).merge(control::router(self.clone()))
    }

    /// Routes of the webhook API host.
    pub fn webhooks_router(&self) -> Router {
        webhooks::router(self.clone())
    }

    /// Routes of the certificate host.
    pub fn certificates_router(&self) -> Router {
        webhooks::certificates_router(self.clone())
    }

    /// Routes of the PKI host (the intermediate CA the leaf's AIA names).
    pub fn pki_router(&self) -> Router {
        certs::pki_router(self.clone())
    }

    /// Starts background work (webhook delivery) on the sandbox's task set. Deliveries queued
    /// before this is called are sent once it runs; calling it twice does nothing.
    pub fn start_background(&self, tasks: &mut JoinSet<()>) {
        let rx = self
            .inner
            .queue_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rx) = rx {
            let me = self.clone();
            tasks.spawn(async move { delivery::worker(me, rx).await });
        }
    }

    // ----- URLs and certificate ---------------------------------------------------------

    fn origin(url: &Url) -> String {
        let mut s = format!(
            "{}://{}",
            url.scheme(),
            url.host_str().unwrap_or("127.0.0.1")
        );
        if let Some(port) = url.port() {
            s.push_str(&format!(":{port}"));
        }
        s
    }

    /// `scheme://host:port` of the referrals host.
    pub(crate) fn referrals_origin(&self) -> String {
        Self::origin(&self.inner.ctx.urls.referrals)
    }

    /// `scheme://host:port` of the webhook API host.
    pub(crate) fn webhooks_origin(&self) -> String {
        Self::origin(&self.inner.ctx.urls.webhooks)
    }

    /// The URL of one referral on the referrals host (what callbacks carry as `ResourceUri`).
    pub fn referral_url(&self, id: &str) -> String {
        format!(
            "{}/v1.0/engagements/referrals/{id}",
            self.referrals_origin()
        )
    }

    /// Where the signing certificate is served (sent as `X-MS-Certificate-Url`).
    pub fn certificate_url(&self) -> Url {
        let base = &self.inner.ctx.urls.certificates;
        base.join(&format!("cert/{CERTIFICATE_FILE}"))
            .unwrap_or_else(|_| base.clone())
    }

    /// The prefix of every certificate URL the sandbox sends, `http://127.0.0.1:<port>/cert/`:
    /// the entry a verifier's certificate allow-list needs for sandbox callbacks.
    pub fn certificate_url_prefix(&self) -> String {
        format!("{}cert/", self.inner.ctx.urls.certificates)
    }

    fn issuer_url_in(ctx: &EmulatorContext) -> Url {
        let base = &ctx.urls.pki;
        base.join(&format!("{PKI_CERTS_PATH}{INTERMEDIATE_FILE}"))
            .unwrap_or_else(|_| base.clone())
    }

    /// Where the intermediate CA is served: the leaf's AIA `caIssuers` URL,
    /// `http://127.0.0.1:<pki port>/pkiops/certs/cosell-sandbox-issuing-ca-01.crt`.
    pub fn issuer_url(&self) -> Url {
        Self::issuer_url_in(&self.inner.ctx)
    }

    /// The prefix of the issuer URL, `http://127.0.0.1:<pki port>/pkiops/certs/`: the entry a
    /// verifier's issuer allow-list needs for sandbox certificates.
    pub fn issuer_url_prefix(&self) -> String {
        format!("{}{PKI_CERTS_PATH}", self.inner.ctx.urls.pki)
    }

    /// The real callback verifier with the **production defaults** (Microsoft's certificate
    /// host, Microsoft/DigiCert issuer hosts, Mozilla roots, organization on the issuer, caches,
    /// rate limit) plus what sandbox callbacks need: the sandbox's certificate host
    /// ([`certificate_url_prefix`](Self::certificate_url_prefix)) and PKI host
    /// ([`issuer_url_prefix`](Self::issuer_url_prefix)) on the allow-lists (plain http on
    /// loopback allowed), its root CA added to the trust anchors, and
    /// [`CERTIFICATE_ORGANIZATION`] as the expected issuer organization. The leaf is fetched
    /// alone and its intermediate through AIA, as with Microsoft's. Add a transport or a clock
    /// before `build()` if needed.
    ///
    /// ```
    /// # let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    /// # rt.block_on(async {
    /// let sandbox = cosell_sandbox::Sandbox::start().await.unwrap();
    /// let verifier = sandbox.partner_center().webhook_verifier_builder().unwrap().build().unwrap();
    /// # drop(verifier);
    /// # });
    /// ```
    pub fn webhook_verifier_builder(
        &self,
    ) -> Result<
        partner_center_client::webhook::verify::WebhookVerifierBuilder,
        partner_center_client::webhook::verify::VerifierConfigError,
    > {
        use partner_center_client::webhook::verify::{CertificateUrlRule, WebhookVerifier};
        let certificates = CertificateUrlRule::from_prefix(&self.certificate_url_prefix())?;
        let issuers = CertificateUrlRule::from_prefix(&self.issuer_url_prefix())?;
        Ok(WebhookVerifier::builder()
            .allow_http_loopback(true)
            .allow_certificate_url(certificates)
            .allow_issuer_url(issuers)
            .additional_trust_anchors_pem(self.root_ca_pem())
            .expected_organization(CERTIFICATE_ORGANIZATION))
    }

    /// The sandbox's intermediate (issuing) CA, DER, as the PKI host serves it.
    pub fn intermediate_ca_der(&self) -> Vec<u8> {
        self.inner
            .identity
            .as_ref()
            .map(|i| i.intermediate_der().to_vec())
            .unwrap_or_default()
    }

    /// The sandbox's test root CA (PEM): the trust anchor to configure in the callback verifier.
    /// Empty if the signing identity could not be generated (an error was logged at start).
    pub fn root_ca_pem(&self) -> String {
        self.inner
            .identity
            .as_ref()
            .map(|i| i.ca_pem().to_string())
            .unwrap_or_default()
    }

    /// The sandbox's test root CA (DER).
    pub fn root_ca_der(&self) -> Vec<u8> {
        self.inner
            .identity
            .as_ref()
            .map(|i| i.ca_der().to_vec())
            .unwrap_or_default()
    }

    /// The signing (leaf) certificate, DER, as the certificate host serves it (alone).
    pub fn signing_certificate_der(&self) -> Vec<u8> {
        self.inner
            .identity
            .as_ref()
            .map(|i| i.certificate_der().to_vec())
            .unwrap_or_default()
    }

    /// The signing (leaf) certificate, PEM.
    pub fn signing_certificate_pem(&self) -> String {
        self.inner
            .identity
            .as_ref()
            .map(|i| i.certificate_pem().to_string())
            .unwrap_or_default()
    }

    /// The headers the sandbox would send with a callback whose body is `body` (for building
    /// forged or replayed callbacks in tests): `Authorization: Signature <base64>` (or
    /// `x-ms-signature` when `ms_signature_header`), `X-MS-Certificate-Url`,
    /// `X-MS-Signature-Algorithm: rsa-sha256`, `Content-Type`.
    pub fn sign_callback(
        &self,
        body: &[u8],
        ms_signature_header: bool,
    ) -> Result<Vec<(String, String)>, IdentityError> {
        let identity = self.inner.identity.as_ref().map_err(Clone::clone)?;
        let sig = identity.sign_base64(body)?;
        let sig_header = if ms_signature_header {
            "x-ms-signature"
        } else {
            "Authorization"
        };
        Ok(vec![
            ("Content-Type".into(), "application/json".into()),
            (sig_header.into(), format!("Signature {sig}")),
            (
                "X-MS-Certificate-Url".into(),
                self.certificate_url().to_string(),
            ),
            ("X-MS-Signature-Algorithm".into(), "rsa-sha256".into()),
        ])
    }

    // ----- reading ------------------------------------------------------------------------

    /// One referral (ours or related) as stored, without auth.
    pub fn referral(&self, id: &str) -> Option<Value> {
        self.lock()
            .get(id)
            .map(|s| referrals::representation(self, &s.body))
    }

    /// Every stored referral (ours and related), in creation order.
    pub fn referrals(&self) -> Vec<Value> {
        self.lock()
            .referrals
            .iter()
            .map(|s| referrals::representation(self, &s.body))
            .collect()
    }

    /// How many referrals are stored (ours and related).
    pub fn referral_count(&self) -> usize {
        self.lock().referrals.len()
    }

    /// The current webhook registration, if any.
    pub fn registration(&self) -> Option<WebhookRegistration> {
        self.lock().registration.clone()
    }

    /// Enables or disables the documented limit of two test events per minute (default on).
    pub fn set_test_event_limit(&self, enabled: bool) {
        self.lock().test_event_limit = enabled;
    }

    // ----- deliveries -----------------------------------------------------------------------

    /// The delivery log: every callback queued, with its attempts and outcome.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.lock()
            .deliveries
            .iter()
            .filter(|d| !d.hidden)
            .cloned()
            .collect()
    }

    /// Forgets the delivery log (records still in flight keep being delivered but are no
    /// longer listed).
    pub fn clear_deliveries(&self) {
        let mut s = self.lock();
        s.deliveries.iter_mut().for_each(|d| d.hidden = true);
    }

    /// Waits until no callback is queued, held or being retried. Callbacks held back by the
    /// reorder fault are released first. Wrap it in `tokio::time::timeout` in tests.
    pub async fn wait_for_deliveries(&self) {
        delivery::flush_held(self);
        let mut rx = self.inner.pending.subscribe();
        // The sender lives as long as `self`, so this only ends when the count reaches zero.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Sets the retry policy of deliveries (attempts, backoff, timeout).
    pub fn set_delivery_policy(&self, policy: DeliveryPolicy) {
        self.lock().policy = policy;
    }

    /// Replaces the HTTP transport deliveries use (default: reqwest with the policy's timeout).
    pub fn set_delivery_transport(&self, transport: Arc<dyn cosell_http::HttpTransport>) {
        *self
            .inner
            .transport
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(transport);
    }

    /// Sets the webhook delivery faults (replacing the current ones).
    pub fn set_delivery_faults(&self, faults: DeliveryFaults) {
        self.lock().faults = faults;
        if faults.reorder_window < 2 {
            delivery::flush_held(self);
        }
    }

    /// The current webhook delivery faults (`drop_next` counts down as deliveries are dropped).
    pub fn delivery_faults(&self) -> DeliveryFaults {
        self.lock().faults
    }

    /// Drops the next `n` deliveries (lost webhooks: logged as [`DeliveryState::Dropped`]).
    pub fn drop_next_deliveries(&self, n: u32) {
        self.lock().faults.drop_next = n;
    }

    /// Removes every delivery fault and releases held deliveries.
    pub fn clear_delivery_faults(&self) {
        self.set_delivery_faults(DeliveryFaults::default());
    }

    // ----- Microsoft's side -------------------------------------------------------------------

    /// Creates an incoming referral from Microsoft (`direction: Incoming`, `New`/`Pending`,
    /// expiring in 14 days), generated with realistic data and then overridden by the members of
    /// `overrides` (a JSON object, merged deeply; `null` keeps the generated data). Fires
    /// `referral-created`.
    pub fn create_incoming_referral(&self, overrides: Value) -> Result<Value, ControlError> {
        control::create_incoming(self, overrides)
    }

    /// Microsoft accepts our co-sell referral: sets `trackingInfo.microsoftMsxId` (fires
    /// `referral-updated`) and creates Microsoft's referral in the same engagement (fires
    /// `related-referral-created`). Returns Microsoft's referral.
    pub fn microsoft_accept(&self, id: &str) -> Result<Value, ControlError> {
        control::accept(self, id, true)
    }

    /// Microsoft declines our co-sell referral: creates Microsoft's referral in the same
    /// engagement as `Closed`/`Declined` (fires `related-referral-created`). Returns it.
    pub fn microsoft_decline(&self, id: &str) -> Result<Value, ControlError> {
        control::accept(self, id, false)
    }

    /// Sets the Microsoft CRM id (`trackingInfo.microsoftMsxId`) of a referral; `None` generates
    /// one. Fires `referral-updated` (or `related-referral-updated`). Returns the referral.
    pub fn set_microsoft_crm_id(
        &self,
        id: &str,
        msx_id: Option<&str>,
    ) -> Result<Value, ControlError> {
        control::set_msx_id(self, id, msx_id)
    }

    /// Applies a JSON Patch to a referral as Microsoft (no `If-Match`; the transition table and
    /// terminal states still apply). Fires `referral-updated` or `related-referral-updated`.
    pub fn update_as_microsoft(&self, id: &str, patch: Value) -> Result<Value, ControlError> {
        control::update_as_microsoft(self, id, &patch)
    }

    /// Adds another party's referral (Microsoft's by default) to one of our engagements,
    /// overridden by `overrides`. Fires `related-referral-created`. Returns it.
    pub fn add_related_referral(
        &self,
        engagement_id: &str,
        overrides: Value,
    ) -> Result<Value, ControlError> {
        control::add_related(self, engagement_id, overrides)
    }

    /// Expires every incoming referral still `New`/`Pending` (as if 14 days had passed):
    /// `Closed`/`Expired`, each firing `referral-updated`. Returns their ids.
    pub fn expire_pending(&self) -> Vec<String> {
        control::expire_pending(self)
    }

    /// Adds `n` generated referrals of ours (mixed directions, statuses, countries, currencies,
    /// deal values) from the seeded generator: created over the past ten days in creation
    /// order, each updated within the minute before the call, so a running service's next
    /// reconcile lists them (its window starts at its checkpoint minus a five-minute overlap).
    /// Seeding fires no webhooks. Returns their ids.
    pub fn seed_referrals(&self, n: usize) -> Vec<String> {
        seed::seed(self, n)
    }

    /// A generated referral body as a client would send it to `POST /referrals` (not stored).
    pub fn generate_referral_request(&self) -> Value {
        let mut s = self.lock();
        seed::request_body(&mut s.rng)
    }
}
