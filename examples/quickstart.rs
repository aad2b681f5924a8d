//! Quickstart: a full two-way sync between Partner Center and Dynamics 365, against the embedded
//! sandbox.
//!
//! ```text
//! cargo run --example quickstart
//! RUST_LOG=cosell_sync=debug cargo run --example quickstart   # with the engine's decisions
//! ```
//!
//! Everything runs in this process over real HTTP on 127.0.0.1, with no network, in seconds:
//! both emulators start, the real clients sign in through the emulated Entra ID, a verifying
//! webhook receiver is registered, and the engine syncs:
//!
//! 1. Microsoft sends two co-sell referrals, one shared with Microsoft sellers: they arrive by
//!    webhook and become CRM leads;
//! 2. a seller qualifies the shared one in the CRM: the referral is accepted in Partner Center
//!    and keeps Microsoft's data, and the opportunity shows it visible to Microsoft sellers;
//! 3. a seller marks an opportunity for sync: it becomes a co-sell referral;
//! 4. an opportunity with invalid data (co-sell without a customer contact) gets ✖ and the
//!    error in its audit column, while everything else goes on;
//! 5. Microsoft accepts the co-sell referral: its CRM id reaches the opportunity;
//! 6. both sides edit the same deal between two syncs: merged field by field, the conflict
//!    resolved by ownership and audited, nothing lost;
//! 7. a seller adds a solution to the opportunity (a row in its Solutions subgrid, no other
//!    column touched): the change feed carries it to the referral;
//! 8. another round finds only echoes of its own writes: nothing is written;
//! 9. a summary of the API calls, counted by the emulators.
//!
//! To run against real services, wire the same pieces from configuration: see
//! `examples/sync_service.rs`.

use std::error::Error;
use std::time::Instant;

use cosell::dataverse::QualifyLead;
use cosell::sandbox::Service;
use cosell::sandboxed::Sandboxed;
use cosell::sync::store::{AuditOutcome, AuditQuery};
use cosell::sync::{Action, Report};
use serde_json::{Value, json};
use uuid::Uuid;

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_string()
}

fn show(report: &Report) {
    for o in &report.outcomes {
        let who = match (&o.referral_id, &o.crm) {
            (Some(r), Some((entity, id))) => {
                format!("referral {} ↔ {entity} {}", short(r), short(id))
            }
            (Some(r), None) => format!("referral {}", short(r)),
            (None, Some((entity, id))) => format!("{entity} {}", short(id)),
            (None, None) => "-".to_string(),
        };
        println!(
            "   {:<16} {who:<48} {}",
            format!("{:?}", o.action),
            o.detail
        );
        for c in &o.conflicts {
            println!("   {:<16} conflict: {c}", "");
        }
    }
}

fn heading(n: u32, title: &str) {
    println!("\n{n}. {title}");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let s = Sandboxed::start().await?;
    let pc = s.sandbox.partner_center();
    let dv = s.sandbox.dataverse();
    println!("cosell quickstart: Partner Center ⇄ Dynamics 365, against the embedded sandbox");
    println!("   Partner Center  {}", s.sandbox.urls().referrals);
    println!("   Dataverse       {}", s.sandbox.urls().dataverse);
    println!(
        "   webhook         {}",
        s.webhook_url.as_deref().unwrap_or("-")
    );

    heading(1, "Microsoft sends two co-sell referrals");
    let incoming: Vec<Value> = vec![
        pc.create_incoming_referral(json!({"name": "Contoso Pharmaceuticals — data platform",
            "consent": {"consentToShareReferralWithMicrosoftSellers": true}}))?,
        pc.create_incoming_referral(json!({"name": "Tailspin Toys — cloud migration"}))?,
    ];
    s.deliveries_settled().await;
    show(&s.engine.drain_inbox().await?);
    let first = text(&incoming[0], "id");
    let lead = dv
        .query("lead", &format!("cosell_referralid eq '{first}'"))?
        .into_iter()
        .next()
        .ok_or("the lead was not created")?;
    println!(
        "   CRM lead        \"{}\"  company {}  ({} leads in the CRM)",
        text(&lead, "subject"),
        text(&lead, "companyname"),
        dv.count("lead")
    );

    heading(
        2,
        "A seller accepts the shared referral: qualifies its lead in the CRM",
    );
    let sent = pc.referral(&first).ok_or("referral missing")?;
    let lead_id = Uuid::parse_str(&text(&lead, "leadid"))?;
    s.dataverse
        .qualify_lead(
            lead_id,
            &QualifyLead {
                create_opportunity: true,
                ..QualifyLead::default()
            },
        )
        .await?;
    show(&s.engine.pull_crm_changes().await?);
    s.deliveries_settled().await;
    show(&s.engine.drain_inbox().await?);
    let referral = pc.referral(&first).ok_or("referral missing")?;
    println!(
        "   Partner Center  referral {} is now {}/{}, still shared with Microsoft sellers: {}",
        short(&first),
        text(&referral, "status"),
        text(&referral, "substatus"),
        referral["consent"]["consentToShareReferralWithMicrosoftSellers"]
    );
    let kept = referral["customerProfile"] == sent["customerProfile"]
        && referral["inviteContext"] == sent["inviteContext"]
        && referral["details"]["requirements"] == sent["details"]["requirements"];
    println!("                   Microsoft's customer, request and solutions kept: {kept}");
    let accepted = dv
        .query("opportunity", &format!("cosell_referralid eq '{first}'"))?
        .into_iter()
        .next()
        .ok_or("no opportunity for the accepted referral")?;
    println!(
        "   CRM opportunity \"{}\"  visible to Microsoft sellers: {}",
        text(&accepted, "name"),
        accepted["cosell_visibletomicrosoft"]
    );

    heading(3, "A seller marks an opportunity for sync");
    let account = dv.insert_row(
        "account",
        json!({"name": "Northwind Traders", "address1_line1": "1 Harbour Way", "address1_city": "Seattle",
               "address1_postalcode": "98101", "address1_country": "US"}),
    )?;
    let contact = dv.insert_row(
        "contact",
        json!({"firstname": "Nancy", "lastname": "Davolio", "emailaddress1": "nancy@northwind.example",
               "parentcustomerid_account@odata.bind": format!("/accounts({account})")}),
    )?;
    let usd = dv.currency_id("USD").ok_or("no USD currency")?;
    let opportunity = dv.insert_row(
        "opportunity",
        json!({"name": "Northwind — Azure landing zone", "estimatedvalue": 250000.0,
               "estimatedclosedate": "2027-03-31", "description": "Landing zone and migration of 40 VMs.",
               "cosell_syncwithpartnercenter": true, "cosell_helprequired": 100000003,
               "cosell_visibletomicrosoft": true,
               "customerid_account@odata.bind": format!("/accounts({account})"),
               "parentcontactid@odata.bind": format!("/contacts({contact})"),
               "transactioncurrencyid@odata.bind": format!("/transactioncurrencies({usd})")}),
    )?;
    let solution = dv.insert_row(
        "cosell_partnercentersolution",
        json!({"cosell_solutionid": "SOL-34104-EBB", "cosell_name": "Northwind Landing Zone Accelerator"}),
    )?;
    s.link_solution(opportunity, solution)?;

    heading(4, "…and another, co-sell but without a customer contact");
    let invalid = dv.insert_row(
        "opportunity",
        json!({"name": "Fabrikam — security review", "estimatedvalue": 40000.0,
               "cosell_syncwithpartnercenter": true, "cosell_helprequired": 100000002,
               "customerid_account@odata.bind": format!("/accounts({account})"),
               "transactioncurrencyid@odata.bind": format!("/transactioncurrencies({usd})")}),
    )?;
    show(&s.engine.pull_crm_changes().await?);
    let row = dv.row("opportunity", opportunity).ok_or("row missing")?;
    let referral_id = text(&row, "cosell_referralid");
    println!(
        "   CRM opportunity \"{}\"  referral {}  link {}",
        text(&row, "name"),
        short(&referral_id),
        text(&row, "cosell_referrallink")
    );
    let bad = dv.row("opportunity", invalid).ok_or("row missing")?;
    println!("   invalid record  \"{}\"", text(&bad, "name"));
    println!(
        "                   audit: {}",
        text(&bad, "cosell_audit").lines().next().unwrap_or("-")
    );

    heading(5, "Microsoft accepts the co-sell referral");
    s.deliveries_settled().await;
    s.engine.drain_inbox().await?;
    pc.microsoft_accept(&referral_id)?;
    s.deliveries_settled().await;
    show(&s.engine.drain_inbox().await?);
    let row = dv.row("opportunity", opportunity).ok_or("row missing")?;
    println!(
        "   CRM opportunity Microsoft CRM id = {}",
        text(&row, "cosell_microsoftcrmid")
    );

    heading(6, "Both sides edit the same deal between two syncs");
    dv.update_as_user(
        "opportunity",
        opportunity,
        json!({"estimatedvalue": 275000.0}),
    )?;
    pc.update_as_microsoft(
        &referral_id,
        json!([
            {"op": "replace", "path": "/details/dealValue", "value": 260000},
            {"op": "replace", "path": "/details/notes", "value": "Customer asked for a PoC in March."}
        ]),
    )?;
    println!(
        "   CRM: deal value 250000 → 275000   Partner Center: deal value → 260000, notes changed"
    );
    s.deliveries_settled().await;
    show(&s.engine.run_once().await?);
    let referral = pc.referral(&referral_id).ok_or("referral missing")?;
    let row = dv.row("opportunity", opportunity).ok_or("row missing")?;
    println!(
        "   now: Partner Center deal value {}, notes \"{}\"",
        referral["details"]["dealValue"],
        text(&referral["details"], "notes")
    );
    println!(
        "        CRM deal value {}, description \"{}\"",
        row["estimatedvalue"],
        text(&row, "description")
    );
    let merged = s
        .store
        .audit(&AuditQuery {
            referral_id: Some(referral_id.clone()),
            ..AuditQuery::default()
        })
        .await?
        .into_iter()
        .find(|e| e.outcome == AuditOutcome::Merged);
    if let Some(entry) = merged {
        println!(
            "   audit: {} — {}",
            entry.message,
            entry.conflicts.join("; ")
        );
    }

    heading(7, "A seller adds a solution to the opportunity");
    let added = s
        .dataverse
        .create(
            "cosell_partnercentersolutions",
            &json!({"cosell_solutionid": "SOL-61002-MIG", "cosell_name": "Northwind Migration Factory"}),
        )
        .await?;
    s.dataverse
        .create(
            "cosell_opportunitysolutions",
            &json!({"cosell_OpportunityId@odata.bind": format!("/opportunities({opportunity})"),
                    "cosell_PartnerCenterSolutionId@odata.bind":
                        format!("/cosell_partnercentersolutions({added})")}),
        )
        .await?;
    show(&s.engine.pull_crm_changes().await?);
    let referral = pc.referral(&referral_id).ok_or("referral missing")?;
    let solutions: Vec<String> = referral["details"]["requirements"]["solutions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| text(s, "id"))
        .collect();
    println!(
        "   Partner Center  referral {} solutions: {}",
        short(&referral_id),
        solutions.join(", ")
    );

    heading(8, "Another round: only echoes of our own writes");
    let calls_before = s.sandbox.faults().counters();
    s.deliveries_settled().await;
    let report = s.engine.run_once().await?;
    show(&report);
    let writes: u64 = s
        .sandbox
        .faults()
        .counters()
        .iter()
        .filter(|((svc, method, _), _)| {
            *svc != Service::Entra && matches!(method.as_str(), "POST" | "PATCH" | "PUT" | "DELETE")
        })
        .map(|(k, n)| n - calls_before.get(k).copied().unwrap_or(0))
        .sum();
    println!(
        "   {} echoes, {} unchanged, {} writes to either service",
        report.count(Action::Echo),
        report.count(Action::Unchanged),
        writes
    );

    heading(9, "Summary");
    let stats = s.engine.stats();
    println!(
        "   synced          {} to the CRM, {} to Partner Center, {} conflicts resolved, {} failure(s), {} echoes",
        stats.synced_to_crm,
        stats.synced_to_partner_center,
        stats.conflicts,
        stats.failures,
        stats.echoes
    );
    println!(
        "   emulators hold  {} referrals; {} opportunities, {} leads, {} accounts, {} contacts",
        pc.referral_count(),
        dv.count("opportunity"),
        dv.count("lead"),
        dv.count("account"),
        dv.count("contact")
    );
    let faults = s.sandbox.faults();
    println!(
        "   API calls       Partner Center {} (+{} webhook API), Dataverse {}, Entra ID {}",
        faults.calls(Service::Referrals),
        faults.calls(Service::Webhooks),
        faults.calls(Service::Dataverse),
        faults.calls(Service::Entra)
    );
    println!("   dead letters    {}", s.store.dead_letters().await?.len());
    println!(
        "   elapsed         {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
