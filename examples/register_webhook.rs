//! Registering cosell's callback URL for the four referral events without silently taking the
//! webhook away from another integration.
//!
//! ```text
//! cargo run --example register_webhook
//! ```
//!
//! Partner Center keeps one webhook registration per tenant. A tool that simply `PUT`s its own
//! URL moves every referral event away from whatever held it before (another integration, or
//! production when you meant to register staging) and nobody notices until deals go missing.
//! `cosell::sync::register_callback` reads the registration first:
//!
//! 1. nothing registered: ours is created;
//! 2. another integration holds it: left alone, and the caller is told who holds it;
//! 3. the operator explicitly asks to take it over: replaced, and the previous URL reported so
//!    it can be put back;
//! 4. ours already, for all four events: nothing is sent.
//!
//! This runs against the embedded sandbox. Against the real service, build the
//! `PartnerCenterClient` with a client-credentials `ClientSecretCredential` as the webhook
//! credential (see `examples/sync_service.rs`); the calls are the same.

use std::error::Error;

use cosell::partner_center::webhook::registration::{WebhookEvent, WebhookRegistration};
use cosell::sandboxed::Sandboxed;
use cosell::sync::{RegistrationOutcome, register_callback};

fn describe(outcome: &RegistrationOutcome) -> String {
    match outcome {
        RegistrationOutcome::Created => "created: there was no registration".into(),
        RegistrationOutcome::AlreadyCurrent => "already current: nothing sent".into(),
        RegistrationOutcome::EventsAdded => "ours, missing events were added".into(),
        RegistrationOutcome::Replaced { previous_url } => {
            format!("replaced, as asked; the previous holder was {previous_url}")
        }
        RegistrationOutcome::HeldByAnother { current_url } => {
            format!("left alone: held by {current_url} (pass overwrite to take it)")
        }
        // Non-exhaustive: a later cosell may report more.
        other => format!("{other:?}"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // No receiver of our own: this example is only about the registration.
    let s = Sandboxed::builder().webhooks(false).start().await?;
    let client = &s.partner_center;
    let ours = "https://cosell.contoso.example/webhook";
    let theirs = "https://other-integration.example/hooks/partner-center";

    println!(
        "Webhook registration against {}",
        client.webhooks_endpoint()
    );

    println!("\n1. A fresh tenant");
    let outcome = register_callback(client, ours, false).await?;
    println!("   {}", describe(&outcome));

    println!("\n2. Another integration takes the registration (as a blind PUT would)");
    client
        .replace_webhook_registration(&WebhookRegistration::new(
            theirs,
            [WebhookEvent::ReferralCreated, WebhookEvent::ReferralUpdated],
        ))
        .await?;
    let outcome = register_callback(client, ours, false).await?;
    println!("   {}", describe(&outcome));

    println!("\n3. The operator decides cosell should own it");
    let outcome = register_callback(client, ours, true).await?;
    println!("   {}", describe(&outcome));

    println!("\n4. Registering again is a no-op");
    let outcome = register_callback(client, ours, false).await?;
    println!("   {}", describe(&outcome));

    let current = client
        .get_webhook_registration()
        .await?
        .ok_or("the registration disappeared")?;
    let events: Vec<String> = current
        .webhook_events
        .iter()
        .map(|e| e.as_str().to_string())
        .collect();
    println!("\nNow registered: {}", current.webhook_url);
    println!("   events: {}", events.join(", "));
    Ok(())
}
