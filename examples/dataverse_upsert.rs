//! Upsert by the `cosell_referralid` alternate key — the idempotent write the sync uses for rows
//! that come from Partner Center — with its create-only and update-only variants.
//!
//! ```text
//! cargo run --example dataverse_upsert
//! ```

use std::sync::Arc;

use cosell::dataverse::{DataverseClient, Key, UpsertMode, UpsertOptions};
use cosell::http::ClientSecretCredential;
use cosell::sandbox::Sandbox;
use cosell::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use serde_json::json;

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

    let key = Key::alternate("cosell_referralid", "8f1c2a3b-0d4e-4f50-9a6b-7c8d9e0f1a2b");
    let with_id = UpsertOptions::default().return_representation(["opportunityid"]);
    for (round, name) in [
        "Northwind – Dynamics rollout",
        "Northwind – Dynamics rollout (v2)",
    ]
    .iter()
    .enumerate()
    {
        let up = client
            .upsert(
                "opportunities",
                &key,
                &json!({"name": name, "cosell_syncwithpartnercenter": true}),
                &with_id,
            )
            .await?;
        println!(
            "upsert #{} PATCH opportunities(cosell_referralid='…') -> {:?}, id {:?}, ETag {:?}",
            round + 1,
            up.outcome,
            up.id("opportunityid"),
            up.etag.as_ref().map(|e| e.as_str().to_string())
        );
    }

    let plain = client
        .upsert(
            "opportunities",
            &key,
            &json!({"estimatedvalue": 50000}),
            &Default::default(),
        )
        .await?;
    println!(
        "upsert without Prefer -> 204, OData-EntityId echoes the key URL: {}",
        plain.entity_id_url.unwrap_or_default()
    );

    let create_only = client
        .upsert(
            "opportunities",
            &key,
            &json!({"name": "again"}),
            &UpsertOptions::default().mode(UpsertMode::CreateOnly),
        )
        .await;
    if let Err(e) = create_only {
        println!(
            "If-None-Match: * on an existing row -> {:?} ({})",
            e.status(),
            e
        );
    }
    let update_only = client
        .upsert(
            "opportunities",
            &Key::alternate("cosell_referralid", "no-such-referral"),
            &json!({"name": "nobody"}),
            &UpsertOptions::default().mode(UpsertMode::UpdateOnly),
        )
        .await;
    if let Err(e) = update_only {
        println!(
            "If-Match: * on a missing row        -> {:?} ({})",
            e.status(),
            e
        );
    }
    let duplicate = client
        .create(
            "opportunities",
            &json!({"name": "dup", "cosell_referralid": "8F1C2A3B-0D4E-4F50-9A6B-7C8D9E0F1A2B"}),
        )
        .await;
    if let Err(e) = duplicate {
        println!(
            "second row with the same key value  -> {}",
            e.dataverse_code().unwrap_or("")
        );
    }
    println!(
        "opportunities stored: {}",
        sandbox.dataverse().count("opportunity")
    );
    sandbox.shutdown().await;
    Ok(())
}
