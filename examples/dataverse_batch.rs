//! `$batch` with change sets: an account and its opportunity created atomically through a
//! `$1` Content-ID reference, then a change set that fails and is rolled back entirely.
//!
//! ```text
//! cargo run --example dataverse_batch
//! ```

use std::sync::Arc;

use cosell::dataverse::{Batch, BatchRequest, DataverseClient};
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
    let dv = sandbox.dataverse();

    let batch = Batch::new()
        .change_set(vec![
            BatchRequest::post("accounts").json(&json!({"name": "Fabrikam"}))?,
            BatchRequest::post("opportunities")
                .json(&json!({"name": "Fabrikam deal", "customerid_account@odata.bind": "$1"}))?,
        ])
        .request(BatchRequest::get("opportunities?$select=name&$top=1"));
    let result = client.execute_batch(&batch).await?;
    println!(
        "batch 1: {} request(s) in {} HTTP call(s)",
        result.requests, result.http_batches
    );
    for r in &result.responses {
        println!(
            "  {} content-id {:?} entity {:?}",
            r.status,
            r.content_id,
            r.entity_id()
        );
    }

    let failing = Batch::new().change_set(vec![
        BatchRequest::post("accounts").json(&json!({"name": "Never stored"}))?,
        BatchRequest::post("opportunities")
            .json(&json!({"name": "Never stored deal", "customerid_account@odata.bind": "$1"}))?,
        BatchRequest::post("opportunities").json(&json!({"name": "x", "no_such_column": 1}))?,
    ]);
    let result = client.execute_batch(&failing).await?;
    for f in result.failures() {
        println!(
            "batch 2: change set failed with {}: {}",
            f.status,
            f.error().map(|e| e.to_string()).unwrap_or_default()
        );
    }
    println!(
        "after the rollback: {} account(s), {} opportunity(ies) — the first batch's only",
        dv.count("account"),
        dv.count("opportunity")
    );

    let independent = Batch::new()
        .request(BatchRequest::delete(format!(
            "accounts({})",
            uuid::Uuid::new_v4()
        )))
        .request(BatchRequest::post("accounts").json(&json!({"name": "Kept"}))?)
        .continue_on_error(true);
    let result = client.execute_batch(&independent).await?;
    let statuses: Vec<u16> = result.responses.iter().map(|r| r.status.as_u16()).collect();
    println!("batch 3 (odata.continue-on-error): statuses {statuses:?}");
    sandbox.shutdown().await;
    Ok(())
}
