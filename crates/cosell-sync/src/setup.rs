//! Setup: registering the callback URL without taking the webhook from another integration.
//!
//! Partner Center keeps one registration per tenant, so registering blindly can silently move
//! every referral event away from another integration (or from production to a staging
//! install). [`register_callback`] reads the current registration first and replaces a URL that
//! is not ours only when told to.

use partner_center_client::PartnerCenterClient;
use partner_center_client::webhook::registration::{WebhookEvent, WebhookRegistration};

/// What [`register_callback`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationOutcome {
    /// There was no registration; ours was created.
    Created,
    /// Our URL was already registered for the four referral events; nothing sent.
    AlreadyCurrent,
    /// Ours was registered but missed some referral events; they were added.
    EventsAdded,
    /// Another URL held the registration and was replaced, as asked.
    Replaced {
        /// The URL that lost the registration.
        previous_url: String,
    },
    /// Another URL holds the registration; left alone because overwriting was not asked for.
    HeldByAnother {
        /// The URL holding it.
        current_url: String,
    },
}

/// Registers `url` for the four referral events (keeping any other events registered). A
/// registration held by another URL is replaced only when `overwrite_foreign` is true.
pub async fn register_callback(
    client: &PartnerCenterClient,
    url: &str,
    overwrite_foreign: bool,
) -> Result<RegistrationOutcome, partner_center_client::Error> {
    let wanted = WebhookEvent::REFERRAL_EVENTS;
    let Some(current) = client.get_webhook_registration().await? else {
        client
            .create_webhook_registration(&WebhookRegistration::new(url, wanted))
            .await?;
        return Ok(RegistrationOutcome::Created);
    };
    let mut events = current.webhook_events.clone();
    for e in wanted {
        if !events.contains(&e) {
            events.push(e);
        }
    }
    if current.webhook_url == url {
        if events.len() == current.webhook_events.len() {
            return Ok(RegistrationOutcome::AlreadyCurrent);
        }
        let mut next = current.clone();
        next.webhook_events = events;
        client.replace_webhook_registration(&next).await?;
        return Ok(RegistrationOutcome::EventsAdded);
    }
    if !overwrite_foreign {
        return Ok(RegistrationOutcome::HeldByAnother {
            current_url: current.webhook_url,
        });
    }
    let mut next = current.clone();
    next.webhook_url = url.to_string();
    next.webhook_events = events;
    client.replace_webhook_registration(&next).await?;
    Ok(RegistrationOutcome::Replaced {
        previous_url: current.webhook_url,
    })
}
