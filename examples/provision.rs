//! Provisioning a Dynamics 365 environment for cosell, then checking it — here against a
//! sandbox Dataverse started bare (the standard tables only, as a new environment).
//!
//! ```text
//! cargo run --example provision                         # dry run, provision, re-run, check
//! cargo run --example provision -- --catalogue solutions.csv   # and import a catalogue
//! cargo run --example provision -- --mapping my-map.toml       # a customised field map
//! ```
//!
//! Against a real environment the same library calls run with a `DataverseClient` built for
//! it (see docs/going-live.md): `cosell::sync::provision`, `cosell::sync::dataverse_problems`,
//! `cosell::sync::partner_center_problems`, `cosell::sync::catalogue::import_catalogue`.

use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use cosell::mapping::FieldMap;
use cosell::sandbox::{DataverseSchema, Sandbox};
use cosell::sandboxed::Sandboxed;
use cosell::sync::catalogue::{import_catalogue, parse_catalogue_csv};
use cosell::sync::provision::{ProvisionOptions, columns_markdown};
use cosell::sync::{dataverse_problems, partner_center_problems, provision};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Provision and check a (sandbox) Dynamics 365 environment for cosell")]
struct Args {
    /// A field map (TOML); default: the original solution's names.
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// A solution catalogue to import (CSV with the columns id, name, publisher, type).
    #[arg(long)]
    catalogue: Option<PathBuf>,
    /// The partner's own schema file (JSON) loaded into the bare sandbox.
    #[arg(long)]
    schema_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let map = match &args.mapping {
        Some(path) => FieldMap::from_toml(&std::fs::read_to_string(path)?)?,
        None => FieldMap::default(),
    };
    let mut schema = DataverseSchema::bare();
    if let Some(path) = &args.schema_file {
        schema = schema.with_schema_file(path)?;
    }
    let s = Sandboxed::builder()
        .sandbox(Sandbox::builder().dataverse_schema(schema))
        .field_map(map.clone())
        .start()
        .await?;
    // The sandbox's key indexes finish after a few reads; a real one takes seconds to minutes.
    let options = ProvisionOptions::default().key_wait(20, Duration::from_millis(50));

    println!(
        "What provisioning creates for this map:\n\n{}",
        columns_markdown(&map)
    );
    println!("-- dry run (changes nothing)");
    let plan = provision(&s.dataverse, &map, &options.clone().dry_run(), &mut |_| {}).await?;
    print!("{plan}");

    println!("\n-- provisioning");
    let report = provision(&s.dataverse, &map, &options, &mut |step| {
        println!("  .. {step}")
    })
    .await?;
    print!("{report}");

    println!("\n-- provisioning again (nothing changes)");
    let writes = s.sandbox.dataverse().write_requests();
    let again = provision(&s.dataverse, &map, &options, &mut |_| {}).await?;
    println!(
        "  all exist: {}; write requests sent: {}",
        again.all_exist(),
        s.sandbox.dataverse().write_requests() - writes
    );

    if let Some(path) = &args.catalogue {
        println!("\n-- importing the solution catalogue");
        let (entries, errors) = parse_catalogue_csv(&std::fs::read_to_string(path)?);
        for e in &errors {
            println!("  skipped: {e}");
        }
        let r = import_catalogue(&s.dataverse, &map, &entries).await;
        println!(
            "  created {}, updated {}, unchanged {}",
            r.created, r.updated, r.unchanged
        );
        for e in &r.failed {
            println!("  failed: {e}");
        }
    }

    println!("\n-- check");
    let mut problems = dataverse_problems(&s.dataverse, &map).await?;
    let pc = partner_center_problems(&s.partner_center, s.webhook_url.as_deref()).await;
    println!(
        "  Partner Center: referrals readable {}, webhook {:?}",
        pc.referrals_readable, pc.webhook
    );
    problems.extend(pc.problems);
    if problems.is_empty() {
        println!("  clean: the sync can run");
    }
    for p in &problems {
        println!("  {p}");
    }
    Ok(())
}
