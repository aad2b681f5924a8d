//! Webhook intake without a web framework: `(headers, raw body)` in, a verified hint in the
//! durable inbox out. Answer the HTTP request with [`IntakeError::http_status`] (or 200), and let
//! [`Engine::drain_inbox`](crate::Engine::drain_inbox) do the work.
//!
//! A Partner Center callback carries no event id and no data, and one CRM save can cause several
//! `referral-updated` deliveries. So a callback is only a hint — "referral X may have changed":
//! duplicates (same body) are dropped here, bursts for one referral coalesce in the inbox, and
//! the worker re-reads the referral and compares its eTag with the link before doing any work.
//! No "wait a minute between saves" is needed.

use std::sync::Arc;

use chrono::Utc;
use partner_center_client::webhook::callback::{CallbackError, WebhookCallback};
use partner_center_client::webhook::registration::WebhookEvent;
use partner_center_client::webhook::verify::{VerificationError, WebhookVerifier};

use crate::store::{InboxHint, StateStore, StoreError};

/// What the intake did with a callback.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// A new hint for this referral is in the inbox.
    Queued {
        /// The referral the callback named.
        referral_id: String,
    },
    /// The same delivery was seen before; nothing queued.
    Duplicate {
        /// The referral the callback named.
        referral_id: String,
    },
    /// A verified callback that is not about a referral (a test event); nothing queued.
    Ignored {
        /// Its event name.
        event: String,
    },
}

/// Why a callback was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntakeError {
    /// Signature, certificate or header check failed.
    #[error(transparent)]
    Verification(#[from] VerificationError),
    /// Verified, but its `ResourceUri` is not a referral on a Partner Center host.
    #[error(transparent)]
    Callback(#[from] CallbackError),
    /// The inbox could not be written; Partner Center should deliver again.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntakeError {
    /// The HTTP status to answer: 400/401 for a bad callback (no redelivery helps), 503 when
    /// the failure is ours and a redelivery should be attempted.
    pub fn http_status(&self) -> u16 {
        match self {
            IntakeError::Verification(e) => e.http_status(),
            IntakeError::Callback(_) => 400,
            IntakeError::Store(_) => 503,
        }
    }
}

/// Verifies callbacks and queues them as hints.
#[derive(Debug, Clone)]
pub struct WebhookIntake {
    verifier: Arc<WebhookVerifier>,
    store: Arc<dyn StateStore>,
    allowed_hosts: Vec<String>,
}

impl WebhookIntake {
    /// An intake verifying with `verifier` and queuing into `store`. `ResourceUri`s are
    /// accepted only on Partner Center's hosts; see [`with_resource_hosts`](Self::with_resource_hosts).
    pub fn new(verifier: Arc<WebhookVerifier>, store: Arc<dyn StateStore>) -> Self {
        WebhookIntake {
            verifier,
            store,
            allowed_hosts: WebhookCallback::DEFAULT_RESOURCE_HOSTS
                .iter()
                .map(|h| (*h).to_string())
                .collect(),
        }
    }

    /// The hosts a callback's `ResourceUri` may name (the sandbox's is `127.0.0.1`).
    pub fn with_resource_hosts(
        mut self,
        hosts: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.allowed_hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// Verifies one delivery and queues its hint. Call with the raw body, before any parsing.
    #[tracing::instrument(skip_all)]
    pub async fn receive(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Received, IntakeError> {
        metrics::counter!("cosell_sync_webhooks_received_total").increment(1);
        let verified = self.verifier.verify(headers, body).await?;
        let callback = verified.callback;
        let referral_event = matches!(
            callback.event_name,
            WebhookEvent::ReferralCreated
                | WebhookEvent::ReferralUpdated
                | WebhookEvent::RelatedReferralCreated
                | WebhookEvent::RelatedReferralUpdated
        );
        if !referral_event {
            return Ok(Received::Ignored {
                event: callback.event_name.to_string(),
            });
        }
        let hosts: Vec<&str> = self.allowed_hosts.iter().map(String::as_str).collect();
        let referral_id = callback.referral_id(&hosts)?;
        let fresh = self
            .store
            .push_hint(
                &verified.body_sha256,
                InboxHint {
                    seq: 0,
                    referral_id: referral_id.clone(),
                    event: callback.event_name.to_string(),
                    change_time: Some(callback.resource_change_utc_date),
                    received_at: Utc::now(),
                    payload: None,
                },
            )
            .await?;
        tracing::debug!(%referral_id, fresh, "callback taken in");
        Ok(if fresh {
            Received::Queued { referral_id }
        } else {
            Received::Duplicate { referral_id }
        })
    }
}
