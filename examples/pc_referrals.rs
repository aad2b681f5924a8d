//! The Partner Center Referrals API through `partner_center_client`, against the in-process
//! sandbox: sign in as a user (refresh-token grant), create a co-sell referral, let Microsoft
//! accept it, read the related referrals of the engagement, page through a filtered list, update
//! under `If-Match`, and close the deal as won.
//!
//! ```text
//! cargo run --example pc_referrals -- --seed-referrals 250
//! ```

use std::sync::Arc;

use clap::Parser;
use cosell::http::RefreshTokenCredential;
use cosell::partner_center::PartnerCenterClient;
use cosell::partner_center::models::{PatchOperation, Referral, ReferralStatus, ReferralSubstatus};
use cosell::sandbox::Sandbox;
use cosell::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use futures::TryStreamExt;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Walk through the Partner Center Referrals API against the sandbox")]
struct Args {
    /// Seed for generated data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Generated referrals to add before the walk-through.
    #[arg(long, default_value_t = 250)]
    seed_referrals: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let sandbox = Sandbox::builder().seed(args.seed).start().await?;
    let pc = sandbox.partner_center();
    pc.seed_referrals(args.seed_referrals);

    // A user signed in once interactively; the app keeps their refresh token.
    let refresh_token = sandbox.entra().issue_refresh_token(SANDBOX_CLIENT_ID);
    let credential =
        RefreshTokenCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, refresh_token)
            .client_secret(SANDBOX_CLIENT_SECRET)
            .authority_host(sandbox.urls().entra.as_str())
            .build()?;
    let client = PartnerCenterClient::builder()
        .referrals_endpoint(sandbox.urls().referrals.clone())
        .webhooks_endpoint(sandbox.urls().webhooks.clone())
        .credential(Arc::new(credential))
        .build()?;

    // 1. Create a co-sell referral (the sandbox generates a realistic body).
    let mut request: Referral = serde_json::from_value(pc.generate_referral_request())?;
    request.external_reference_id = Some("OPP-00042".into());
    let created = client.create_referral(&request).await?;
    let id = created.id.clone().unwrap_or_default();
    println!(
        "created {id}: {:?} {}/{} (engagement {})",
        created.name.as_deref().unwrap_or_default(),
        created.status.clone().unwrap_or_default(),
        created.substatus.clone().unwrap_or_default(),
        created.engagement_id.as_deref().unwrap_or_default(),
    );

    // 2. Microsoft accepts: our referral gets an MSX id, Microsoft's joins the engagement.
    pc.microsoft_accept(&id)?;
    let ours = client.get_referral(&id).await?;
    println!(
        "Microsoft accepted; MSX id {}",
        ours.tracking_info
            .as_ref()
            .and_then(|t| t.microsoft_msx_id.as_deref())
            .unwrap_or("-")
    );
    let related: Vec<Referral> = client
        .related_referrals(ours.engagement_id.as_deref().unwrap_or_default())
        .into_stream()
        .try_collect()
        .await?;
    for r in &related {
        println!(
            "  engagement member {} from {}",
            r.id.as_deref().unwrap_or_default(),
            r.organization_name.as_deref().unwrap_or_default()
        );
    }

    // 3. Page through a filtered list (100 per page, next links followed by the client).
    let incoming: Vec<Referral> = client
        .list_referrals()
        .filter("direction eq 'Incoming' and status eq 'New'")
        .order_by("createdDateTime desc")
        .into_stream()
        .try_collect()
        .await?;
    println!("{} incoming referrals wait for an answer", incoming.len());

    // 4. Update under If-Match, then close as won (the transition is checked client-side first).
    let updated = client
        .update_referral(
            &id,
            vec![PatchOperation::set_notes("Architecture workshop booked")],
        )
        .if_match(ours.e_tag.clone().unwrap_or_default())
        .return_representation()
        .send()
        .await?
        .unwrap_or(ours);
    let won = client
        .transition_referral(&updated, ReferralStatus::Closed, ReferralSubstatus::Won)
        .send()
        .await?
        .unwrap_or(updated);
    println!(
        "closed: {}/{}",
        won.status.clone().unwrap_or_default(),
        won.substatus.clone().unwrap_or_default()
    );

    // 5. A terminal referral takes no more changes; the client refuses before sending.
    let again = client
        .transition_referral(&won, ReferralStatus::Active, ReferralSubstatus::Accepted)
        .send()
        .await;
    if let Err(e) = again {
        println!("refused as expected: {e}");
    }
    sandbox.shutdown().await;
    Ok(())
}
