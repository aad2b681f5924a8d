//! The webhook registration resource (`/webhooks/v1/registration`, reference §4.4).
//!
//! The documentation's samples use PascalCase (`WebhookUrl`); the OpenAPI file uses camelCase.
//! Both are accepted; PascalCase is written.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    /// Send the signature in `x-ms-signature` instead of `Authorization`.
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestEventReceipt {
    /// Correlation id to ask for the delivery status with.
    #[serde(alias = "CorrelationId")]
    pub correlation_id: String,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
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
