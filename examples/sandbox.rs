//! Runs the whole sandbox standalone — Entra ID stand-in, Partner Center (referrals, webhooks,
//! certificate and PKI hosts) and Dataverse — on the well-known ports 7100–7105 until Ctrl-C.
//!
//! ```text
//! cargo run --example sandbox
//! ```
//!
//! A template of [`Sandbox::builder`]; `cosell sandbox` (the `cosell` command) is the same with
//! options for ports, seed data and a configuration file for `cosell serve`.

use cosell::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_REFRESH_TOKEN};
use cosell::sandbox::{Sandbox, SandboxPorts};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sandbox = Sandbox::builder()
        .ports(SandboxPorts {
            entra: 7100,
            referrals: 7101,
            webhooks: 7102,
            certificates: 7103,
            dataverse: 7104,
            pki: 7105,
        })
        .start()
        .await?;
    // The published refresh token, so a service started later signs in with no copy-paste.
    sandbox
        .entra()
        .register_refresh_token(SANDBOX_CLIENT_ID, SANDBOX_REFRESH_TOKEN);
    println!("cosell sandbox is running: {:#?}", sandbox.urls());
    println!("Ctrl-C stops it.");
    tokio::signal::ctrl_c().await?;
    sandbox.shutdown().await;
    Ok(())
}
