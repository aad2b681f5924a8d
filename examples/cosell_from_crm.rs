//! Creating a co-sell referral from a CRM opportunity, "sync this record now" style, and what
//! happens to one with invalid data until it is fixed.
//!
//! ```text
//! cargo run --example cosell_from_crm
//! ```
//!
//! A seller fills in an opportunity in Dynamics 365, sets **Sync with Partner Center** to Yes
//! and asks Microsoft for help (**How can Microsoft help?**). Co-sell needs a customer contact
//! and at least one solution. Here:
//!
//! 1. a complete opportunity is synced at once with `Engine::sync_crm_record` (the operator's
//!    "sync now", no waiting for the change feed): the referral is created with
//!    `externalReferenceId` = the opportunity id, and the identifier, link, ✔ mark and audit
//!    text are written back;
//! 2. a second one lacks the customer contact and has a bad country code on its account: it
//!    gets ✖, the reason in its audit column and a dead letter; nothing is sent to Microsoft;
//! 3. the seller fixes both; replaying the dead letters creates its referral.
//!
//! Runs against the embedded sandbox; in production the same engine calls run inside the sync
//! service (`examples/sync_service.rs`).

use std::error::Error;

use cosell::mapping::RecordKind;
use cosell::sandboxed::Sandboxed;
use cosell::sync::Outcome;
use serde_json::{Value, json};

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_string()
}

fn show(o: &Outcome) {
    println!("   outcome: {:?} — {}", o.action, o.detail);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let s = Sandboxed::builder().webhooks(false).start().await?;
    let dv = s.sandbox.dataverse();
    let pc = s.sandbox.partner_center();
    let usd = dv.currency_id("USD").ok_or("no USD currency in the CRM")?;

    println!("1. A complete co-sell opportunity, synced now");
    let account = dv.insert_row(
        "account",
        json!({"name": "Adventure Works Cycles", "address1_line1": "8 Kings Road",
               "address1_city": "London", "address1_postalcode": "SW3 4RY",
               "address1_country": "GB"}),
    )?;
    let contact = dv.insert_row(
        "contact",
        json!({"firstname": "Rob", "lastname": "Walters", "emailaddress1": "rob@adventure-works.example",
               "telephone1": "+44 20 7946 0000",
               "parentcustomerid_account@odata.bind": format!("/accounts({account})")}),
    )?;
    let opportunity = dv.insert_row(
        "opportunity",
        json!({"name": "Adventure Works — Dynamics 365 Sales rollout", "estimatedvalue": 180000.0,
               "estimatedclosedate": "2027-06-30",
               "description": "1,200 seats across EMEA; wants a Microsoft-led architecture review.",
               "cosell_syncwithpartnercenter": true, "cosell_helprequired": 100000001,
               "cosell_visibletomicrosoft": true,
               "customerid_account@odata.bind": format!("/accounts({account})"),
               "parentcontactid@odata.bind": format!("/contacts({contact})"),
               "transactioncurrencyid@odata.bind": format!("/transactioncurrencies({usd})")}),
    )?;
    let solution = dv.insert_row(
        "cosell_partnercentersolution",
        json!({"cosell_solutionid": "SOL-77213-QRS", "cosell_name": "Adventure Works Sales Accelerator"}),
    )?;
    s.link_solution(opportunity, solution)?;
    let outcome = s
        .engine
        .sync_crm_record(RecordKind::Opportunity, &opportunity.to_string())
        .await?;
    show(&outcome);
    let row = dv
        .row("opportunity", opportunity)
        .ok_or("opportunity missing")?;
    let referral_id = text(&row, "cosell_referralid");
    let referral = pc
        .referral(&referral_id)
        .ok_or("the referral was not created")?;
    println!("   CRM opportunity  \"{}\"", text(&row, "name"));
    println!("                    referral id   {referral_id}");
    println!(
        "                    link          {}",
        text(&row, "cosell_referrallink")
    );
    println!(
        "   Partner Center   \"{}\"  {}/{}  externalReferenceId {}",
        text(&referral, "name"),
        text(&referral, "status"),
        text(&referral, "substatus"),
        text(&referral, "externalReferenceId")
    );
    println!(
        "                    help requested: {}   solutions: {}   contacts: {}",
        text(&referral["inviteContext"], "assistanceRequestCode"),
        referral["details"]["requirements"]["solutions"]
            .as_array()
            .map_or(0, Vec::len),
        referral["customerProfile"]["team"]
            .as_array()
            .map_or(0, Vec::len)
    );

    println!("\n2. One without a customer contact, on an account with a bad country code");
    let bad_account = dv.insert_row(
        "account",
        json!({"name": "Wide World Importers", "address1_city": "Springfield",
               "address1_postalcode": "62701", "address1_country": "USA"}),
    )?;
    let invalid = dv.insert_row(
        "opportunity",
        json!({"name": "Wide World Importers — Copilot pilot", "estimatedvalue": 45000.0,
               "cosell_syncwithpartnercenter": true, "cosell_helprequired": 100000002,
               "customerid_account@odata.bind": format!("/accounts({bad_account})"),
               "transactioncurrencyid@odata.bind": format!("/transactioncurrencies({usd})")}),
    )?;
    s.link_solution(invalid, solution)?;
    let outcome = s
        .engine
        .sync_crm_record(RecordKind::Opportunity, &invalid.to_string())
        .await?;
    show(&outcome);
    let row = dv
        .row("opportunity", invalid)
        .ok_or("opportunity missing")?;
    println!("   CRM opportunity  \"{}\"", text(&row, "name"));
    for line in text(&row, "cosell_audit").lines().take(3) {
        println!("                    audit: {line}");
    }
    for letter in s.store.dead_letters().await? {
        println!(
            "   dead letter      {} after {} attempt(s): {}",
            letter.key, letter.attempts, letter.error
        );
    }
    println!(
        "   Partner Center   {} referral(s): nothing was sent for the invalid one",
        pc.referral_count()
    );

    println!("\n3. The seller fixes the data; the operator replays the dead letters");
    dv.update_as_user("account", bad_account, json!({"address1_country": "US"}))?;
    let fixed_contact = dv.insert_row(
        "contact",
        json!({"firstname": "Kim", "lastname": "Abercrombie", "emailaddress1": "kim@wideworldimporters.example",
               "parentcustomerid_account@odata.bind": format!("/accounts({bad_account})")}),
    )?;
    dv.update_as_user(
        "opportunity",
        invalid,
        json!({"parentcontactid@odata.bind": format!("/contacts({fixed_contact})")}),
    )?;
    let report = s.engine.replay_dead_letters().await?;
    for o in &report.outcomes {
        show(o);
    }
    let row = dv
        .row("opportunity", invalid)
        .ok_or("opportunity missing")?;
    println!(
        "   CRM opportunity  \"{}\"  referral {}",
        text(&row, "name"),
        text(&row, "cosell_referralid")
    );
    println!(
        "   dead letters     {}   referrals in Partner Center {}",
        s.store.dead_letters().await?.len(),
        pc.referral_count()
    );
    Ok(())
}
