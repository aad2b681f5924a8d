//! Change tracking: a full read that ends with a delta link, a seller's edits in the CRM, the
//! delta read that returns only those changes and deletions, and the expired-token fallback.
//!
//! ```text
//! cargo run --example dataverse_change_tracking
//! ```

use std::sync::Arc;

use cosell::dataverse::{Change, ChangeTrackingOptions, DataverseClient};
use cosell::http::ClientSecretCredential;
use cosell::sandbox::Sandbox;
use cosell::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use serde_json::{Value, json};

fn show(changes: &[Change<Value>]) {
    for c in changes {
        match c {
            Change::Upserted(e) => println!(
                "    upserted {} {}",
                e.value["opportunityid"], e.value["name"]
            ),
            Change::Deleted { id } => println!("    deleted  {id}"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sandbox = Sandbox::start().await?;
    let credential =
        ClientSecretCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
            .authority_host(sandbox.urls().entra.as_str())
            .build()?;
    let client = DataverseClient::builder()
        .environment_url(sandbox.urls().dataverse.clone())
        .credential(Arc::new(credential))
        .build()?;
    let dv = sandbox.dataverse();
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(dv.insert_row(
            "opportunity",
            json!({"name": format!("Deal {i}"), "cosell_syncwithpartnercenter": i % 2 == 1}),
        )?);
    }
    let select = ["name", "cosell_syncwithpartnercenter", "statecode"];
    let opts = ChangeTrackingOptions::default().max_page_size(2);
    let initial = client
        .track_changes::<Value>("opportunities", &select, &opts)
        .collect()
        .await?;
    println!(
        "initial sync (pages of 2): {} row(s)",
        initial.changes.len()
    );
    println!("delta link: {}", initial.token.as_str());

    dv.update_as_user(
        "opportunity",
        ids[0],
        json!({"name": "Deal 1 (edited by a seller)"}),
    )?;
    dv.delete_as_user("opportunity", ids[1])?;
    dv.insert_row("opportunity", json!({"name": "Deal 6"}))?;
    let delta = client
        .changes_since::<Value>(&initial.token, &opts)
        .collect()
        .await?;
    println!(
        "delta after an edit, a delete and a create: {} change(s)",
        delta.changes.len()
    );
    show(&delta.changes);

    let quiet = client
        .changes_since::<Value>(&delta.token, &opts)
        .collect()
        .await?;
    println!("delta with nothing new: {} change(s)", quiet.changes.len());

    dv.expire_change_tracking_tokens();
    match client
        .changes_since::<Value>(&quiet.token, &opts)
        .collect()
        .await
    {
        Err(e) if e.is_change_tracking_expired() => {
            println!("expired token -> {e}");
            let full = client
                .track_changes::<Value>("opportunities", &select, &opts)
                .collect()
                .await?;
            println!(
                "full resync: {} row(s), new delta link issued",
                full.changes.len()
            );
        }
        other => println!("unexpected: {:?}", other.map(|c| c.changes.len())),
    }
    sandbox.shutdown().await;
    Ok(())
}
