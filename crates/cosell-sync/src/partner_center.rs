//! The engine's view of Partner Center: the few operations sync needs, behind a trait so the
//! engine can be tested against a double and could face another referral source.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use partner_center_client::models::{PatchOperation, Referral};
use partner_center_client::{PartnerCenterClient, odata_string};

use crate::remote::RemoteError;

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

    /// The referral created with `external_reference_id` (the CRM id), if any: how an unknown
    /// create outcome is resolved. `created_since` bounds a client-side scan when the service
    /// cannot filter on the field.
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

    async fn find_by_external_reference(
        &self,
        external_reference_id: &str,
        created_since: DateTime<Utc>,
    ) -> Result<Option<Referral>, RemoteError> {
        let matches =
            |r: &Referral| r.external_reference_id.as_deref() == Some(external_reference_id);
        // Filtering on externalReferenceId is not documented; try it, and fall back to a
        // bounded scan of our own recent outgoing referrals if the service refuses it.
        let filtered: Result<Vec<Referral>, _> = self
            .list_referrals()
            .filter(format!(
                "externalReferenceId eq {}",
                odata_string(external_reference_id)
            ))
            .into_stream()
            .try_collect()
            .await;
        match filtered {
            Ok(found) => return Ok(found.into_iter().find(matches)),
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 400) => {
                tracing::debug!("service cannot filter on externalReferenceId; scanning");
            }
            Err(e) => return Err(e.into()),
        }
        let recent: Vec<Referral> = self
            .list_referrals()
            .filter(format!(
                "direction eq 'Outgoing' and createdDateTime ge {}",
                timestamp(created_since)
            ))
            .into_stream()
            .try_collect()
            .await?;
        Ok(recent.into_iter().find(matches))
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
