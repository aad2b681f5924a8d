//! The webhook registration resource (`/webhooks/v1/registration`, reference §4.4).
//!
//! The documentation's samples use PascalCase (`WebhookUrl`); the OpenAPI file uses camelCase.
//! Both are accepted; PascalCase is written.

use chrono::{DateTime, Utc};
#[cfg(feature = "client")]
use cosell_http::http::Method;
#[cfg(feature = "client")]
use cosell_http::url::Url;
#[cfg(feature = "client")]
use cosell_http::{SendOptions, json_body};
use serde::{Deserialize, Serialize};

#[cfg(feature = "client")]
use crate::client::{PartnerCenterClient, non_empty, request};
#[cfg(feature = "client")]
use crate::error::Error;
use crate::models::Extra;
use crate::models::enums::string_enum;

string_enum! {
    /// A Partner Center webhook event name.
    ///
    /// ```
    /// use partner_center_client::webhook::registration::WebhookEvent;
    /// assert_eq!(WebhookEvent::from("referral-created"), WebhookEvent::ReferralCreated);
    /// assert_eq!(WebhookEvent::from("invoice-ready").as_str(), "invoice-ready");
    /// ```
    WebhookEvent, default = ReferralUpdated {
        /// A referral of the caller was created.
        ReferralCreated => "referral-created",
        /// A referral of the caller was updated.
        ReferralUpdated => "referral-updated",
        /// Another party's referral in the same engagement was created.
        RelatedReferralCreated => "related-referral-created",
        /// Another party's referral in the same engagement was updated.
        RelatedReferralUpdated => "related-referral-updated",
        /// The validation event sent by `POST /registration/validationEvents`.
        TestCreated => "test-created",
    }
}

impl WebhookEvent {
    /// The four referral events cosell subscribes to.
    pub const REFERRAL_EVENTS: [WebhookEvent; 4] = [
        WebhookEvent::ReferralCreated,
        WebhookEvent::ReferralUpdated,
        WebhookEvent::RelatedReferralCreated,
        WebhookEvent::RelatedReferralUpdated,
    ];
}

/// The partner's (single) webhook registration.
///
/// ```
/// use partner_center_client::webhook::registration::{WebhookEvent, WebhookRegistration};
/// let r = WebhookRegistration::new("https://sync.example.com/hook", WebhookEvent::REFERRAL_EVENTS);
/// let json = serde_json::to_value(&r).unwrap();
/// assert_eq!(json["WebhookUrl"], "https://sync.example.com/hook");
/// assert_eq!(json["WebhookEvents"][0], "referral-created");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct WebhookRegistration {
    /// The callback URL (public HTTPS).
    #[serde(alias = "webhookUrl", default)]
    pub webhook_url: String,
    /// The events delivered to it.
    #[serde(alias = "webhookEvents", default)]
    pub webhook_events: Vec<WebhookEvent>,
    /// Send the signature in `x-ms-signature` instead of `Authorization`. The documented
    /// read-back (`GET /registration`) does not return it; an unset flag is written as `true`.
    #[serde(
        alias = "signatureTokenToMsSignatureHeader",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub signature_token_to_ms_signature_header: Option<bool>,
    /// Subscriber id (returned by the service).
    #[serde(
        alias = "subscriberId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub subscriber_id: Option<String>,
    /// Free-form properties (swagger `map<string,string>`).
    #[serde(alias = "properties", default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Extra>,
    /// Last change (returned by the service).
    #[serde(
        alias = "lastModifiedTimestamp",
        default,
        with = "crate::models::wire::datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_modified_timestamp: Option<DateTime<Utc>>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl WebhookRegistration {
    /// A registration of `url` for `events`, with the signature in `x-ms-signature`.
    pub fn new(url: impl Into<String>, events: impl IntoIterator<Item = WebhookEvent>) -> Self {
        WebhookRegistration {
            webhook_url: url.into(),
            webhook_events: events.into_iter().collect(),
            signature_token_to_ms_signature_header: Some(true),
            ..Default::default()
        }
    }
}

/// The answer to `POST /registration/validationEvents`.
///
/// The webhooks OpenAPI file declares the answer as a bare JSON string (the correlation id);
/// the documentation's sample shows `{"correlationId": "…"}`. Both are read.
///
/// ```
/// use partner_center_client::webhook::registration::TestEventReceipt;
/// let bare: TestEventReceipt = serde_json::from_str(r#""8a1b""#).unwrap();
/// let object: TestEventReceipt = serde_json::from_str(r#"{"correlationId":"8a1b"}"#).unwrap();
/// assert_eq!(bare.correlation_id, object.correlation_id);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TestEventReceipt {
    /// Correlation id to ask for the delivery status with.
    pub correlation_id: String,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ReceiptWire {
    Bare(String),
    Object {
        #[serde(rename = "correlationId", alias = "CorrelationId")]
        correlation_id: String,
        #[serde(flatten)]
        extra: Extra,
    },
}

impl<'de> Deserialize<'de> for TestEventReceipt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match ReceiptWire::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected the correlation id as a string or as {\"correlationId\": \"…\"}",
            )
        })? {
            ReceiptWire::Bare(correlation_id) => Ok(TestEventReceipt {
                correlation_id,
                extra: Extra::new(),
            }),
            ReceiptWire::Object {
                correlation_id,
                extra,
            } => Ok(TestEventReceipt {
                correlation_id,
                extra,
            }),
        }
    }
}

/// The webhook API's error body, `{code, description, data, source}` (the Partner Center REST
/// error shape, which differs from the Referrals API's OData `{"error": {...}}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookApiError {
    /// Error code (a number on the wire, e.g. `2000`; kept as its text).
    #[serde(
        default,
        alias = "Code",
        with = "crate::models::wire::lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub code: Option<String>,
    /// What went wrong.
    #[serde(
        default,
        alias = "Description",
        skip_serializing_if = "Option::is_none"
    )]
    pub description: Option<String>,
    /// Extra data (usually an empty list).
    #[serde(default, alias = "Data", skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// The component that failed, e.g. `PartnerCenter.Webhooks`.
    #[serde(default, alias = "Source", skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl WebhookApiError {
    /// Parses a webhook API error body; `None` when it has neither a code nor a description.
    pub fn parse(body: &str) -> Option<Self> {
        let e: WebhookApiError = serde_json::from_str(body).ok()?;
        (e.code.is_some() || e.description.is_some()).then_some(e)
    }
}

#[cfg(feature = "client")]
impl Error {
    /// The webhook API's `{code, description, data, source}` error body, when the service
    /// answered with one.
    pub fn webhook_error(&self) -> Option<WebhookApiError> {
        self.service_error()
            .and_then(|e| WebhookApiError::parse(e.body()))
    }
}

/// Delivery status of a test event (`GET /registration/validationEvents/{correlationId}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestEventStatus {
    /// The correlation id.
    #[serde(alias = "CorrelationId", default)]
    pub correlation_id: String,
    /// Partner id.
    #[serde(alias = "PartnerId", default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
    /// Status, e.g. `completed`.
    #[serde(alias = "Status", default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The URL delivered to.
    #[serde(
        alias = "CallbackUrl",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub callback_url: Option<String>,
    /// One entry per delivery attempt.
    #[serde(alias = "Results", default)]
    pub results: Vec<TestEventResult>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One delivery attempt of a test event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestEventResult {
    /// Response code of the callback, e.g. `OK`.
    #[serde(
        alias = "ResponseCode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub response_code: Option<String>,
    /// Response message.
    #[serde(
        alias = "ResponseMessage",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub response_message: Option<String>,
    /// Whether the failure was on Microsoft's side.
    #[serde(
        alias = "SystemError",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub system_error: Option<bool>,
    /// When (UTC; sent without an offset).
    #[serde(
        alias = "DateTimeUtc",
        default,
        with = "crate::models::wire::datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub date_time_utc: Option<DateTime<Utc>>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

#[cfg(feature = "client")]
impl PartnerCenterClient {
    fn registration_url(&self, tail: &[&str]) -> Result<Url, Error> {
        let mut segments = vec!["registration"];
        segments.extend_from_slice(tail);
        Self::url(&self.inner.webhooks_endpoint, &segments)
    }

    /// The events the partner can subscribe to (`GET /registration/events`).
    pub async fn list_webhook_events(&self) -> Result<Vec<WebhookEvent>, Error> {
        let req = request(Method::GET, &self.registration_url(&["events"])?, None)?;
        Ok(self
            .inner
            .webhooks
            .send_json(req, &SendOptions::default(), "webhook events")
            .await?)
    }

    /// Reads the registration (`GET /registration`); `None` when there is none (404).
    pub async fn get_webhook_registration(&self) -> Result<Option<WebhookRegistration>, Error> {
        let req = request(Method::GET, &self.registration_url(&[])?, None)?;
        match self
            .inner
            .webhooks
            .send_json(req, &SendOptions::default(), "webhook registration")
            .await
            .map_err(Error::from)
        {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Registers (`POST /registration`). Fails with [`Error::is_conflict`] when a registration
    /// already exists (one per partner tenant); replace it instead.
    #[tracing::instrument(skip_all, fields(webhook_url = %registration.webhook_url))]
    pub async fn create_webhook_registration(
        &self,
        registration: &WebhookRegistration,
    ) -> Result<WebhookRegistration, Error> {
        self.write_registration(Method::POST, registration).await
    }

    /// Replaces the registration (`PUT /registration`).
    #[tracing::instrument(skip_all, fields(webhook_url = %registration.webhook_url))]
    pub async fn replace_webhook_registration(
        &self,
        registration: &WebhookRegistration,
    ) -> Result<WebhookRegistration, Error> {
        self.write_registration(Method::PUT, registration).await
    }

    async fn write_registration(
        &self,
        method: Method,
        registration: &WebhookRegistration,
    ) -> Result<WebhookRegistration, Error> {
        non_empty(&registration.webhook_url, "webhook URL")?;
        // The documented read-back of a registration (`GET /registration`) carries only the URL
        // and the events: a registration read back and written again must not silently move the
        // signature back to `Authorization`, so an unset flag is written as true.
        let mut registration = registration.clone();
        registration
            .signature_token_to_ms_signature_header
            .get_or_insert(true);
        let body = json_body(&registration, "webhook registration")?;
        let req = request(method, &self.registration_url(&[])?, Some(body))?;
        Ok(self
            .inner
            .webhooks
            .send_json(req, &SendOptions::default(), "webhook registration")
            .await?)
    }

    /// Registers `url` for `events`: creates the registration, and when one already exists
    /// (409) replaces it if `overwrite` is true, or returns the conflict otherwise.
    ///
    /// Replacing drops whatever URL and events the existing registration had: Partner Center
    /// allows one URL per partner tenant.
    pub async fn register_webhook(
        &self,
        url: &str,
        events: impl IntoIterator<Item = WebhookEvent>,
        overwrite: bool,
    ) -> Result<WebhookRegistration, Error> {
        let registration = WebhookRegistration::new(url, events);
        match self.create_webhook_registration(&registration).await {
            Err(e) if e.is_conflict() && overwrite => {
                tracing::info!("a webhook registration exists; replacing it");
                self.replace_webhook_registration(&registration).await
            }
            other => other,
        }
    }

    /// Registers `url` for the four referral events ([`WebhookEvent::REFERRAL_EVENTS`]),
    /// overwriting an existing registration only when `overwrite` is true.
    ///
    /// ```no_run
    /// # async fn demo(client: partner_center_client::PartnerCenterClient) -> Result<(), partner_center_client::Error> {
    /// let reg = client.register_referral_webhook("https://sync.example.com/partner-center/webhook", true).await?;
    /// println!("subscriber {:?}", reg.subscriber_id);
    /// # Ok(()) }
    /// ```
    pub async fn register_referral_webhook(
        &self,
        url: &str,
        overwrite: bool,
    ) -> Result<WebhookRegistration, Error> {
        self.register_webhook(url, WebhookEvent::REFERRAL_EVENTS, overwrite)
            .await
    }

    /// Asks Partner Center to send a `test-created` event to the registered URL
    /// (`POST /registration/validationEvents`; the registration must include `test-created`;
    /// throttled to 2 per minute). Returns the correlation id.
    pub async fn send_test_event(&self) -> Result<String, Error> {
        let req = request(
            Method::POST,
            &self.registration_url(&["validationEvents"])?,
            None,
        )?;
        let receipt: TestEventReceipt = self
            .inner
            .webhooks
            .send_json(req, &SendOptions::default(), "test event receipt")
            .await?;
        Ok(receipt.correlation_id)
    }

    /// The delivery status of a test event
    /// (`GET /registration/validationEvents/{correlationId}`).
    pub async fn get_test_event_status(
        &self,
        correlation_id: &str,
    ) -> Result<TestEventStatus, Error> {
        let id = non_empty(correlation_id, "correlation id")?;
        let req = request(
            Method::GET,
            &self.registration_url(&["validationEvents", id])?,
            None,
        )?;
        Ok(self
            .inner
            .webhooks
            .send_json(req, &SendOptions::default(), "test event status")
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_accepts_both_casings() {
        let pascal: WebhookRegistration = serde_json::from_str(
            r#"{"SubscriberId":"s1","WebhookUrl":"https://x/h","WebhookEvents":["referral-created","granular-admin-access-assignment-created"]}"#,
        )
        .unwrap();
        let camel: WebhookRegistration = serde_json::from_str(
            r#"{"subscriberId":"s1","webhookUrl":"https://x/h","webhookEvents":["referral-created","granular-admin-access-assignment-created"],"lastModifiedTimestamp":"2024-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(pascal.subscriber_id.as_deref(), Some("s1"));
        assert_eq!(camel.webhook_url, "https://x/h");
        assert_eq!(pascal.webhook_events, camel.webhook_events);
        assert_eq!(
            pascal.webhook_events[1],
            WebhookEvent::Other("granular-admin-access-assignment-created".into())
        );
        assert!(camel.last_modified_timestamp.is_some());
    }

    #[test]
    fn test_event_status_decodes_documented_sample() {
        let s: TestEventStatus = serde_json::from_str(
            r#"{"correlationId":"c1","partnerId":"p","status":"completed","callbackUrl":"https://x",
                "results":[{"responseCode":"OK","responseMessage":"","systemError":false,"dateTimeUtc":"2017-12-08T21:39:48.2386997"}]}"#,
        )
        .unwrap();
        assert_eq!(s.results[0].response_code.as_deref(), Some("OK"));
        assert!(s.results[0].date_time_utc.is_some());
    }
}
