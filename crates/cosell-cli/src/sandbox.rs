//! `cosell sandbox`: the emulators standalone on their well-known ports — Entra ID stand-in
//! (with the device-code sign-in), Partner Center (referrals, webhooks, certificate and PKI
//! hosts) and Dataverse — so anyone with the binary can try `cosell serve` and every other
//! command without an account.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use cosell_sandbox::entra::{
    REFERRALS_AUDIENCE, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_REFRESH_TOKEN,
    SANDBOX_TENANT,
};
use cosell_sandbox::{DataverseSchema, Sandbox, SandboxPorts};

use crate::Error;

/// The configuration that talks to `cosell sandbox` on its default ports.
pub const SANDBOX_CONFIG: &str = include_str!("../cosell.sandbox.toml");

/// Options of `cosell sandbox` (0 = any free port).
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Address to bind (keep it on loopback).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Port of the Entra ID stand-in.
    #[arg(long, default_value_t = 7100)]
    pub entra_port: u16,
    /// Port of the Partner Center referrals API.
    #[arg(long, default_value_t = 7101)]
    pub referrals_port: u16,
    /// Port of the Partner Center webhook API.
    #[arg(long, default_value_t = 7102)]
    pub webhooks_port: u16,
    /// Port of the certificate host.
    #[arg(long, default_value_t = 7103)]
    pub certificates_port: u16,
    /// Port of the Dataverse Web API.
    #[arg(long, default_value_t = 7104)]
    pub dataverse_port: u16,
    /// Port of the PKI host (the intermediate CA the signing certificate's AIA names).
    #[arg(long, default_value_t = 7105)]
    pub pki_port: u16,
    /// Seed for generated data and probabilistic faults.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Generated referrals to add at start.
    #[arg(long, default_value_t = 0)]
    pub seed_referrals: usize,
    /// Start Dataverse bare, as a new environment (standard tables only), to try
    /// `cosell provision` and `cosell check` before going live.
    #[arg(long)]
    pub bare: bool,
    /// Load your own Dataverse schema file (JSON: custom columns, lookup tables) on top of the
    /// bare or the provisioned schema, to try a customised field map.
    #[arg(long, value_name = "JSON")]
    pub dataverse_schema: Option<PathBuf>,
    /// Write the configuration for `cosell serve` against this sandbox to this file, then run.
    #[arg(long)]
    pub write_config: Option<PathBuf>,
}

/// Runs the sandbox until Ctrl-C or SIGTERM.
pub async fn run(args: SandboxArgs) -> Result<ExitCode, Error> {
    if let Some(path) = &args.write_config {
        std::fs::write(path, SANDBOX_CONFIG)
            .map_err(|e| Error::Message(format!("cannot write `{}`: {e}", path.display())))?;
        println!("wrote {}", path.display());
    }
    let mut schema = if args.bare {
        DataverseSchema::bare()
    } else {
        DataverseSchema::cosell()
    };
    if let Some(path) = &args.dataverse_schema {
        schema = schema
            .with_schema_file(path)
            .map_err(|e| Error::Message(format!("--dataverse-schema: {e}")))?;
    }
    let sandbox = Sandbox::builder()
        .dataverse_schema(schema)
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
    // A fixed, published token, so a service started later needs no copy-paste.
    sandbox
        .entra()
        .register_refresh_token(SANDBOX_CLIENT_ID, SANDBOX_REFRESH_TOKEN);
    let urls = sandbox.urls();
    let token_url = format!("{}{SANDBOX_TENANT}/oauth2/v2.0/token", urls.entra);
    let origin = urls
        .referrals
        .join("/")
        .map(|u| u.to_string())
        .unwrap_or_default();
    println!("cosell sandbox is running (seed {}).", args.seed);
    println!();
    println!("  Entra ID token endpoint  {token_url}");
    println!("  Device-code sign-in      {}devicelogin", urls.entra);
    println!("  Referrals API            {}", urls.referrals);
    println!("  Webhook API              {}", urls.webhooks);
    println!("  Certificate host         {}", urls.certificates);
    println!("  PKI host                 {}", urls.pki);
    println!("  Dataverse                {}", urls.dataverse);
    println!();
    println!(
        "  client id {SANDBOX_CLIENT_ID}, client secret {SANDBOX_CLIENT_SECRET}, tenant {SANDBOX_TENANT}"
    );
    println!(
        "  refresh token {SANDBOX_REFRESH_TOKEN} (app+user, scope {REFERRALS_AUDIENCE}/.default)"
    );
    println!("  referrals {} stored", pc.referral_count());
    println!();
    println!("Run the service against it (in another terminal):");
    println!("  cosell sandbox --write-config cosell.toml   # once, or copy cosell.sandbox.toml");
    println!("  cosell serve --config cosell.toml");
    println!();
    println!("Play Microsoft's side (no auth):");
    println!("  curl -s -X POST {origin}_sandbox/referrals/incoming");
    println!("  curl -s -X POST {origin}_sandbox/referrals/<id>/accept");
    println!();
    println!("Ctrl-C stops it.");
    crate::service::signal().await;
    sandbox.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
