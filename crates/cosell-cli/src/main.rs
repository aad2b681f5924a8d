//! `cosell`: two-way sync of Partner Center co-sell referrals with Dynamics 365, as a service
//! and the commands an operator needs around it. Every command reads one TOML configuration
//! file (`--config`, default `cosell.toml`); every key: `docs/sync-service.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cosell_cli::commands::{self, DeadLetterCommand};
use cosell_cli::config::Settings;
use cosell_cli::logging::{self, LogFormat};
use cosell_cli::sandbox::SandboxArgs;
use cosell_cli::{Error, login, service};

#[derive(Debug, Parser)]
#[command(
    name = "cosell",
    version,
    about = "Two-way sync of Partner Center co-sell referrals with Dynamics 365"
)]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "COSELL_CONFIG",
        default_value = "cosell.toml"
    )]
    config: PathBuf,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "COSELL_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: webhook intake, CRM change feed, reconcile; stops gracefully on
    /// Ctrl-C or SIGTERM.
    Serve {
        /// Register the callback even if another URL holds the tenant's registration.
        #[arg(long)]
        take_over_registration: bool,
    },
    /// Sign the Referrals admin in (device code) and save the refresh token for the service.
    Login,
    /// Check everything the sync depends on in Dataverse and Partner Center, naming the config
    /// key of each problem.
    Check,
    /// Create in Dataverse what the field map needs (idempotent; conflicts are reported, never
    /// altered).
    Provision {
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Import the co-sell solution catalogue from this CSV (id, name, publisher, type).
        #[arg(long, value_name = "CSV")]
        catalogue: Option<std::path::PathBuf>,
        /// Seconds between reads of a new alternate key's index status (Dataverse builds the
        /// index in a system job; up to 60 reads).
        #[arg(long, default_value_t = 5)]
        key_poll_seconds: u64,
    },
    /// Sync every referral in Partner Center into the CRM, with progress.
    Backfill {
        /// Referrals synced one by one at the same time (already linked ones; new ones go to
        /// the CRM in batched groups).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// What the service is doing: registration, throttling, reconcile progress, dead letters.
    Status,
    /// Records that keep failing.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Sync one record now.
    #[command(subcommand)]
    Sync(SyncCommand),
    /// The decision history of a referral or CRM record.
    Audit {
        /// A referral id or a CRM record id.
        id: String,
    },
    /// A dry run: per record, what would be written to which side.
    Plan,
    /// Run the emulators (Entra ID, Partner Center, Dataverse) on loopback.
    Sandbox(SandboxArgs),
}

#[derive(Debug, Subcommand)]
enum SyncCommand {
    /// A referral, by id.
    Referral {
        /// The referral id.
        id: String,
    },
    /// A CRM row: its table (`opportunity`, `lead`) and id.
    Crm {
        /// The table.
        table: String,
        /// The row id.
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cosell: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Errors are shown with Display: the clients redact secrets from theirs.
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cosell: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    if let Command::Sandbox(args) = cli.command {
        return cosell_cli::sandbox::run(args).await;
    }
    let mut settings = Settings::load(&cli.config)?;
    tracing::debug!(config = %cli.config.display(), "configuration loaded");
    match cli.command {
        Command::Serve {
            take_over_registration,
        } => {
            settings.take_over_registration |= take_over_registration;
            Box::pin(service::serve(settings)).await
        }
        Command::Login => login::login(&settings).await,
        Command::Check => commands::check(&settings).await,
        Command::Provision {
            dry_run,
            catalogue,
            key_poll_seconds,
        } => {
            let poll = std::time::Duration::from_secs(key_poll_seconds);
            commands::provision(&settings, dry_run, catalogue.as_deref(), poll).await
        }
        Command::Backfill { concurrency } => commands::backfill(&settings, concurrency).await,
        Command::Status => commands::status(&settings).await,
        Command::DeadLetters(c) => commands::dead_letters(&settings, c).await,
        Command::Sync(SyncCommand::Referral { id }) => {
            commands::sync_referral(&settings, &id).await
        }
        Command::Sync(SyncCommand::Crm { table, id }) => {
            commands::sync_crm(&settings, &table, &id).await
        }
        Command::Audit { id } => commands::audit(&settings, &id).await,
        Command::Plan => commands::plan(&settings).await,
        Command::Sandbox(_) => Ok(ExitCode::SUCCESS),
    }
}
