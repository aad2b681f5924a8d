//! Create, read, update and delete Dataverse rows with the typed client against an embedded
//! sandbox (the Entra ID stand-in issues the client-credentials token).
//!
//! ```text
//! cargo run --example dataverse_crud
//! ```

use std::sync::Arc;

use cosell::dataverse::{DataverseClient, Key, Query, RetrieveOptions, UpdateOptions};
use cosell::http::ClientSecretCredential;
use cosell::sandbox::Sandbox;
use cosell::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use futures::TryStreamExt;
use serde_json::{Value, json};

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
    println!("Dataverse emulator at {}", client.api_url());

    let account = client
        .create(
            "accounts",
            &json!({"name": "Contoso", "address1_postalcode": "98052", "address1_country": "US"}),
        )
        .await?;
    println!("POST accounts                      -> 204, id {account}");

    let eur = sandbox
        .dataverse()
        .currency_id("EUR")
        .ok_or("EUR is seeded")?;
    let opportunity = client
        .create(
            "opportunities",
            &json!({
                "name": "Contoso – Azure migration",
                "estimatedvalue": 120000,
                "estimatedclosedate": "2026-09-30",
                "customerid_account@odata.bind": format!("/accounts({account})"),
                "transactioncurrencyid@odata.bind": format!("/transactioncurrencies({eur})"),
            }),
        )
        .await?;
    println!("POST opportunities (with binds)    -> 204, id {opportunity}");

    let row = client
        .retrieve::<Value>(
            "opportunities",
            &Key::id(opportunity),
            &RetrieveOptions::default()
                .select(["name", "estimatedvalue", "_customerid_value", "statecode"])
                .include_annotations("OData.Community.Display.V1.FormattedValue"),
        )
        .await?;
    let etag = row.etag.clone().ok_or("every row has an ETag")?;
    println!(
        "GET opportunities(id)              -> {} (ETag {})",
        row.value,
        etag.as_str()
    );

    client
        .update(
            "opportunities",
            &Key::id(opportunity),
            &json!({"estimatedvalue": 150000}),
            &UpdateOptions::default().if_match(etag.clone()),
        )
        .await?;
    println!("PATCH with If-Match: {}     -> 204", etag.as_str());

    let stale = client
        .update(
            "opportunities",
            &Key::id(opportunity),
            &json!({"estimatedvalue": 1}),
            &UpdateOptions::default().if_match(etag),
        )
        .await;
    match stale {
        Err(e) if e.is_precondition_failed() => {
            println!(
                "PATCH with the old ETag            -> 412 {}",
                e.dataverse_code().unwrap_or("")
            );
        }
        other => println!("unexpected: {other:?}"),
    }

    let listed: Vec<Value> = client
        .query::<Value>(
            "opportunities",
            &Query::new().select(["name", "estimatedvalue"]),
        )
        .into_stream()
        .map_ok(|e| e.value)
        .try_collect()
        .await?;
    println!(
        "GET opportunities?$select=…        -> {} row(s)",
        listed.len()
    );

    client
        .delete("opportunities", &Key::id(opportunity), None)
        .await?;
    println!("DELETE opportunities(id)           -> 204");
    let gone = client
        .try_retrieve::<Value>("opportunities", &Key::id(opportunity), &Default::default())
        .await?;
    println!(
        "GET after delete                   -> {}",
        if gone.is_none() {
            "404"
        } else {
            "still there?"
        }
    );
    println!(
        "rows left: {} account(s), {} opportunity(ies)",
        sandbox.dataverse().count("account"),
        sandbox.dataverse().count("opportunity")
    );
    sandbox.shutdown().await;
    Ok(())
}
