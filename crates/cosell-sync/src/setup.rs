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

// ----- the complete check -------------------------------------------------------------------

use futures::StreamExt;

/// One thing the running sync depends on that is missing or wrong, with the config key to
/// change if the configuration, not the environment, is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckProblem {
    /// The config key (`columns.lead.company_name`, `choices.help_required.QuotesOrLicensing`).
    pub config_key: String,
    /// What is wrong, naming the table, column or value.
    pub message: String,
}

impl std::fmt::Display for CheckProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (config key `{}`)", self.message, self.config_key)
    }
}

fn problem(config_key: impl Into<String>, message: impl Into<String>) -> CheckProblem {
    CheckProblem {
        config_key: config_key.into(),
        message: message.into(),
    }
}

#[cfg(feature = "dataverse")]
mod dataverse;
#[cfg(feature = "dataverse")]
#[cfg_attr(docsrs, doc(cfg(feature = "dataverse")))]
pub use dataverse::dataverse_problems;

/// Who holds the Partner Center webhook registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookState {
    /// Our callback URL, for every referral event.
    Ours,
    /// Our URL, but some referral events are missing.
    OursMissingEvents,
    /// Another URL holds it.
    Another(String),
    /// Nothing is registered.
    None,
    /// It could not be read.
    Unknown,
}

/// What [`partner_center_problems`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerCenterCheck {
    /// Whether a referrals GET (app+user token) answered.
    pub referrals_readable: bool,
    /// The webhook registration (app-only token).
    pub webhook: WebhookState,
    /// Problems, each with its config key.
    pub problems: Vec<CheckProblem>,
}

/// Checks the Partner Center side: a token for each audience works (one referrals GET with
/// the app+user credential, the webhook registration read with the app-only one) and who holds
/// the webhook registration, compared with `callback_url` when given.
pub async fn partner_center_problems(
    client: &PartnerCenterClient,
    callback_url: Option<&str>,
) -> PartnerCenterCheck {
    let mut problems = Vec::new();
    let first = client.list_referrals().top(1).into_pages().next().await;
    let referrals_readable = !matches!(first, Some(Err(_)));
    if let Some(Err(e)) = first {
        problems.push(problem(
            "credentials.refresh_token_env",
            format!(
                "reading referrals failed (the app+user token, consent or the partner's role): {e}"
            ),
        ));
    }
    let webhook = match client.get_webhook_registration().await {
        Err(e) => {
            problems.push(problem(
                "credentials.client_secret_env",
                format!("reading the webhook registration failed (the app-only token): {e}"),
            ));
            WebhookState::Unknown
        }
        Ok(None) => WebhookState::None,
        Ok(Some(r)) => match callback_url {
            Some(url) if r.webhook_url != url => WebhookState::Another(r.webhook_url),
            _ if WebhookEvent::REFERRAL_EVENTS
                .iter()
                .all(|e| r.webhook_events.contains(e)) =>
            {
                WebhookState::Ours
            }
            _ => WebhookState::OursMissingEvents,
        },
    };
    if let Some(url) = callback_url {
        match &webhook {
            WebhookState::None => problems.push(problem(
                "webhook.public_url",
                format!("no webhook is registered; register `{url}`"),
            )),
            WebhookState::Another(other) => problems.push(problem(
                "webhook.public_url",
                format!("the webhook registration belongs to `{other}`, not `{url}`: another integration (or install) receives the referral events"),
            )),
            WebhookState::OursMissingEvents => problems.push(problem(
                "webhook.public_url",
                "our webhook misses some referral events; register again",
            )),
            _ => {}
        }
    }
    PartnerCenterCheck {
        referrals_readable,
        webhook,
        problems,
    }
}
