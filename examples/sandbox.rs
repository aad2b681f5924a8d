//! Runs the whole sandbox standalone — Entra ID stand-in, Partner Center (referrals, webhooks,
//! certificate host) and Dataverse — and prints what a client needs to talk to it.
//!
//! ```text
//! cargo run --example sandbox                          # the well-known ports 7100–7104
//! cargo run --example sandbox -- --seed-referrals 250  # with generated referrals
//! cargo run --example sandbox -- --entra-port 0 ...    # 0 = any free port
//! ```
//!
//! The fixed ports and the well-known refresh token [`SANDBOX_REFRESH_TOKEN`] are what
//! `examples/sync_service.toml` expects, so `cargo run --example sync_service` in another
//! terminal works with nothing but that file (see `docs/sync-service.md`). Runs until Ctrl-C.

use std::net::IpAddr;

use clap::Parser;
use cosell::sandbox::entra::{
    REFERRALS_AUDIENCE, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_REFRESH_TOKEN,
    SANDBOX_TENANT, WEBHOOKS_AUDIENCE,
};
use cosell::sandbox::{Sandbox, SandboxPorts};

/// Command-line options (0 = any free port). The default ports are the ones
/// `examples/sync_service.toml` names.
#[derive(Debug, Parser)]
#[command(about = "Run the cosell sandbox (Entra ID, Partner Center, Dataverse) on loopback")]
struct Args {
    /// Address to bind (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Port of the Entra ID token endpoint.
    #[arg(long, default_value_t = 7100)]
    entra_port: u16,
    /// Port of the Partner Center referrals API.
    #[arg(long, default_value_t = 7101)]
    referrals_port: u16,
    /// Port of the Partner Center webhook API.
    #[arg(long, default_value_t = 7102)]
    webhooks_port: u16,
    /// Port of the certificate host.
    #[arg(long, default_value_t = 7103)]
    certificates_port: u16,
    /// Port of the Dataverse Web API.
    #[arg(long, default_value_t = 7104)]
    dataverse_port: u16,
    /// Port of the PKI host (the intermediate CA the signing certificate's AIA names).
    #[arg(long, default_value_t = 7105)]
    pki_port: u16,
    /// Seed for generated data and probabilistic faults.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Generated referrals to add at start.
    #[arg(long, default_value_t = 0)]
    seed_referrals: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let sandbox = Sandbox::builder()
        .ip(args.bind)
        .ports(SandboxPorts {
            entra: args.entra_port,
            referrals: args.referrals_port,
            webhooks: args.webhooks_port,
            certificates: args.certificates_port,
            dataverse: args.dataverse_port,
            pki: args.pki_port,
        })
        .seed(args.seed)
        .start()
        .await?;
    let pc = sandbox.partner_center();
    if args.seed_referrals > 0 {
        pc.seed_referrals(args.seed_referrals);
    }
    let urls = sandbox.urls();
    // A fixed token instead of a fresh one, so a service started later needs no copy-paste.
    sandbox
        .entra()
        .register_refresh_token(SANDBOX_CLIENT_ID, SANDBOX_REFRESH_TOKEN);
    let refresh_token = SANDBOX_REFRESH_TOKEN;
    let referrals_token = sandbox.entra().issue_access_token(REFERRALS_AUDIENCE);
    let token_url = format!("{}{SANDBOX_TENANT}/oauth2/v2.0/token", urls.entra);

    println!("cosell sandbox is running (seed {}).", args.seed);
    println!();
    println!("  Entra ID token endpoint  {token_url}");
    println!("  Referrals API            {}", urls.referrals);
    println!("  Webhook API              {}", urls.webhooks);
    println!("  Certificate host         {}", urls.certificates);
    println!("  PKI host                 {}", urls.pki);
    println!("  Dataverse                {}", urls.dataverse);
    println!("  Signing certificate URL  {}", pc.certificate_url());
    println!(
        "  Root CA (PEM)            {}cert/sandbox-root-ca.pem",
        urls.certificates
    );
    println!();
    println!("  client id       {SANDBOX_CLIENT_ID}");
    println!("  client secret   {SANDBOX_CLIENT_SECRET}");
    println!("  tenant          {SANDBOX_TENANT}");
    println!("  refresh token   {refresh_token}   (app+user, for the referrals API)");
    println!("  scopes          {REFERRALS_AUDIENCE}/.default, {WEBHOOKS_AUDIENCE}/.default");
    println!("  referrals       {} stored", pc.referral_count());
    println!();
    println!("Try (an app+user access token valid for an hour is already in the line):");
    println!();
    println!(
        "  curl -s -H 'Authorization: Bearer {referrals_token}' '{}referrals?$top=3&$count=true'",
        urls.referrals
    );
    println!();
    println!("Exchange the refresh token yourself:");
    println!();
    println!(
        "  curl -s {token_url} -d grant_type=refresh_token -d client_id={SANDBOX_CLIENT_ID} \
         -d client_secret={SANDBOX_CLIENT_SECRET} -d refresh_token={refresh_token} \
         -d scope='{REFERRALS_AUDIENCE}/.default offline_access'"
    );
    println!();
    println!("Play Microsoft's side (no auth):");
    println!();
    let origin = urls
        .referrals
        .join("/")
        .map(|u| u.to_string())
        .unwrap_or_default();
    println!("  curl -s -X POST {origin}_sandbox/referrals/incoming");
    println!("  curl -s -X POST {origin}_sandbox/referrals/<id>/accept");
    println!("  curl -s {origin}_sandbox/deliveries");
    println!();
    println!("Run the sync service against it (its config names these ports and this token):");
    println!();
    println!("  cargo run --example sync_service");
    println!();
    println!("Ctrl-C stops it.");

    tokio::signal::ctrl_c().await?;
    sandbox.shutdown().await;
    Ok(())
}
