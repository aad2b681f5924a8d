//! The engine's view of Partner Center: the few operations sync needs, behind a trait so the
//! engine can be tested against a double and could face another referral source.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use partner_center_client::PartnerCenterClient;
use partner_center_client::models::{PatchOperation, Referral};

use crate::remote::{RemoteError, RemoteErrorKind};

/// Most referrals a lost-create look-up reads before giving up (the window since the intent was
/// recorded normally holds a handful).
pub const LOST_CREATE_SCAN_LIMIT: usize = 2_000;

/// What the engine needs from Partner Center.
#[async_trait]
pub trait PartnerCenter: Send + Sync + fmt::Debug {
    /// Reads a referral.
    async fn get_referral(&self, id: &str) -> Result<Referral, RemoteError>;

    /// Every referral updated at or after `since`, oldest change first. Inclusive on purpose:
    /// a checkpoint equal to a change time must not skip it.
    async fn referrals_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<Referral>, RemoteError>;

    /// The same referrals as [`referrals_updated_since`](Self::referrals_updated_since), a
    /// page at a time as the service pages them (oldest change first), so a reconcile over a
    /// year of history holds one page and moves its checkpoint after each. The default is one
    /// page of everything.
    fn referral_pages_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> BoxStream<'_, Result<ReferralPage, RemoteError>> {
        stream::once(async move {
            let referrals = self.referrals_updated_since(since).await?;
            Ok(ReferralPage {
                referrals,
                total: None,
            })
        })
        .boxed()
    }

    /// The referral created with `external_reference_id` (the CRM id), if any: how an unknown
    /// create outcome is resolved. The service cannot filter on the field, so `created_since`
    /// bounds a scan of our outgoing referrals updated since then (a documented filter).
    async fn find_by_external_reference(
        &self,
        external_reference_id: &str,
        created_since: DateTime<Utc>,
    ) -> Result<Option<Referral>, RemoteError>;

    /// Creates a referral. Not idempotent: the caller records its intent first.
    async fn create_referral(&self, referral: &Referral) -> Result<Referral, RemoteError>;

    /// Applies JSON Patch operations under `If-Match: etag` and returns the updated referral.
    async fn update_referral(
        &self,
        id: &str,
        etag: &str,
        operations: Vec<PatchOperation>,
    ) -> Result<Referral, RemoteError>;
}

/// One page of a referral listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReferralPage {
    /// The referrals on this page, in the listing's order.
    pub referrals: Vec<Referral>,
    /// How many referrals the whole listing holds, when the service says (`@odata.count`).
    pub total: Option<u64>,
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[async_trait]
impl PartnerCenter for PartnerCenterClient {
    async fn get_referral(&self, id: &str) -> Result<Referral, RemoteError> {
        Ok(PartnerCenterClient::get_referral(self, id).await?)
    }

    async fn referrals_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<Referral>, RemoteError> {
        let referrals = self
            .list_referrals()
            .filter(format!("updatedDateTime ge {}", timestamp(since)))
            .order_by("updatedDateTime asc")
            .into_stream()
            .try_collect()
            .await?;
        Ok(referrals)
    }

    fn referral_pages_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> BoxStream<'_, Result<ReferralPage, RemoteError>> {
        self.list_referrals()
            .filter(format!("updatedDateTime ge {}", timestamp(since)))
            .order_by("updatedDateTime asc")
            .into_pages()
            .map(|page| {
                let page = page?;
                Ok(ReferralPage {
                    referrals: page.items,
                    total: page.count,
                })
            })
            .boxed()
    }

    async fn find_by_external_reference(
        &self,
        external_reference_id: &str,
        created_since: DateTime<Utc>,
    ) -> Result<Option<Referral>, RemoteError> {
        // Microsoft documents `$filter` on `direction` and `updatedDateTime` but not on
        // `externalReferenceId` nor `createdDateTime` (get-a-list-of-referrals). A referral
        // created after the intent was recorded was last updated at or after that instant too,
        // so our outgoing referrals updated since then, oldest first, hold it; the CRM id is
        // matched here. The scan is bounded: past the limit the outcome stays unknown.
        let mut recent = self
            .list_referrals()
            .filter(format!(
                "direction eq 'Outgoing' and updatedDateTime ge {}",
                timestamp(created_since)
            ))
            .order_by("updatedDateTime asc")
            .into_stream();
        let mut seen = 0usize;
        while let Some(referral) = recent.try_next().await? {
            if referral.external_reference_id.as_deref() == Some(external_reference_id) {
                return Ok(Some(referral));
            }
            seen += 1;
            if seen >= LOST_CREATE_SCAN_LIMIT {
                return Err(RemoteError::new(
                    RemoteErrorKind::UnknownOutcome,
                    "partner-center",
                    format!(
                        "looking for the referral with externalReferenceId {external_reference_id}: \
                         more than {LOST_CREATE_SCAN_LIMIT} outgoing referrals were updated since \
                         {}; the create's outcome is still unknown",
                        timestamp(created_since)
                    ),
                ));
            }
        }
        Ok(None)
    }

    async fn create_referral(&self, referral: &Referral) -> Result<Referral, RemoteError> {
        Ok(PartnerCenterClient::create_referral(self, referral).await?)
    }

    async fn update_referral(
        &self,
        id: &str,
        etag: &str,
        operations: Vec<PatchOperation>,
    ) -> Result<Referral, RemoteError> {
        let updated = PartnerCenterClient::update_referral(self, id, operations)
            .if_match(etag)
            .return_representation()
            .send()
            .await?;
        match updated {
            Some(referral) => Ok(referral),
            // A service that ignores Prefer answers 204: read the result back.
            None => Ok(PartnerCenterClient::get_referral(self, id).await?),
        }
    }
}
