//! Issue 12: installing into a Dynamics 365 that has nothing of cosell's. Provisioning through
//! the metadata Web API against the emulator started bare, the complete check, and the
//! solution catalogue import, over real HTTP on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cosell::mapping::FieldMap;
use cosell::sandbox::{DataverseSchema, Sandbox};
use cosell::sandboxed::Sandboxed;
use cosell::sync::provision::{ItemStatus, ProvisionOptions, definitions};
use cosell::sync::{Action, dataverse_problems, provision};
use serde_json::json;
use uuid::Uuid;

fn quick() -> ProvisionOptions {
    // Key indexes advance per read in the emulator: no need to wait between reads.
    ProvisionOptions::default().key_wait(10, Duration::from_millis(1))
}

async fn bare() -> Sandboxed {
    Sandboxed::builder()
        .sandbox(Sandbox::builder().bare_dataverse())
        .webhooks(false)
        .start()
        .await
        .unwrap()
}

async fn start(schema: DataverseSchema) -> Sandboxed {
    Sandboxed::builder()
        .sandbox(Sandbox::builder().dataverse_schema(schema))
        .webhooks(false)
        .start()
        .await
        .unwrap()
}

fn keys_of(problems: &[cosell::sync::CheckProblem]) -> Vec<&str> {
    problems.iter().map(|p| p.config_key.as_str()).collect()
}

#[tokio::test]
async fn a_bare_environment_is_provisioned_checked_clean_and_syncs_both_ways() {
    let s = bare().await;
    let dv = s.sandbox.dataverse();
    let map = FieldMap::default();

    // Bare: the check names what is missing, with config keys.
    let before = dataverse_problems(&s.dataverse, &map).await.unwrap();
    let keys = keys_of(&before);
    assert!(
        keys.contains(&"columns.opportunity.referral_id"),
        "{before:#?}"
    );
    assert!(keys.contains(&"columns.solution.entity"), "{before:#?}");
    assert!(
        keys.contains(&"columns.opportunity.entity"),
        "change tracking: {before:#?}"
    );

    // A dry run prints the plan and changes nothing.
    let writes = dv.write_requests();
    let plan = provision(&s.dataverse, &map, &quick().dry_run(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(dv.write_requests(), writes, "a dry run writes nothing");
    assert_eq!(plan.created(), 0);
    assert!(plan.planned() > 20, "{plan}");
    assert!(dv.schema().table("cosell_partnercentersolution").is_none());

    // Provision: everything created, keys waited for (with progress), then published.
    let mut progress = Vec::new();
    let report = provision(&s.dataverse, &map, &quick(), &mut |p| {
        progress.push(p.to_string())
    })
    .await
    .unwrap();
    assert!(report.conflicts().is_empty(), "{report}");
    assert_eq!(report.created(), plan.planned(), "{report}");
    assert!(report.published);
    assert!(dv.publishes() >= 1);
    assert!(
        progress.iter().any(|p| p.contains("Pending"))
            && progress.iter().any(|p| p.contains("Active")),
        "key progress: {progress:#?}"
    );
    let d = definitions(&map);
    // Every component was created inside the solution.
    let components = dv.solution_components();
    assert!(components.iter().all(|(sol, _, _)| sol == "cosell"));
    assert_eq!(
        components.iter().filter(|(_, k, _)| k == "column").count(),
        d.columns.len()
    );
    assert_eq!(components.iter().filter(|(_, k, _)| k == "key").count(), 3);
    assert_eq!(
        components
            .iter()
            .filter(|(_, k, _)| k == "relationship")
            .count(),
        2
    );

    // The check is clean.
    let problems = dataverse_problems(&s.dataverse, &map).await.unwrap();
    assert!(problems.is_empty(), "{problems:#?}");

    // Provision again: nothing changes, not one write request.
    let writes = dv.write_requests();
    let metadata = dv.metadata_writes();
    let again = provision(&s.dataverse, &map, &quick(), &mut |_| {})
        .await
        .unwrap();
    assert!(again.all_exist(), "{again}");
    assert!(!again.published);
    assert_eq!(dv.write_requests(), writes);
    assert_eq!(dv.metadata_writes(), metadata);

    // Partner Center -> CRM.
    let created = s
        .sandbox
        .partner_center()
        .create_incoming_referral(json!({"name": "Provisioned inbound"}))
        .unwrap();
    let referral_id = created["id"].as_str().unwrap().to_string();
    let report = s.engine.reconcile().await.unwrap();
    assert_eq!(report.count(Action::CreatedInCrm), 1, "{report:#?}");
    let rows = dv
        .query("lead", &format!("cosell_referralid eq '{referral_id}'"))
        .unwrap();
    let rows = if rows.is_empty() {
        dv.query(
            "opportunity",
            &format!("cosell_referralid eq '{referral_id}'"),
        )
        .unwrap()
    } else {
        rows
    };
    assert_eq!(rows.len(), 1, "the referral's record");

    // CRM -> Partner Center.
    let account = dv
        .insert_row(
            "account",
            json!({"name": "Provisioned Customer", "address1_line1": "1 Main St",
                   "address1_city": "Seattle", "address1_postalcode": "98101",
                   "address1_country": "US"}),
        )
        .unwrap();
    let opp = dv
        .insert_row(
            "opportunity",
            json!({
                "name": "Provisioned outbound",
                "estimatedvalue": 50000.0,
                "estimatedclosedate": "2027-06-30",
                "description": "Created after provisioning.",
                "cosell_syncwithpartnercenter": true,
                // No help asked of Microsoft: a private deal needs no contact or solution.
                "cosell_helprequired": 100000000,
                "cosell_visibletomicrosoft": false,
                "customerid_account@odata.bind": format!("/accounts({account})"),
                "transactioncurrencyid@odata.bind":
                    format!("/transactioncurrencies({})", dv.currency_id("USD").unwrap()),
            }),
        )
        .unwrap();
    let report = s.engine.pull_crm_changes().await.unwrap();
    assert_eq!(report.count(Action::CreatedReferral), 1, "{report:#?}");
    let row = dv.row("opportunity", opp).unwrap();
    assert!(row["cosell_referralid"].is_string(), "{row}");
}

#[tokio::test]
async fn a_failed_key_index_is_reactivated_and_waited_for() {
    let s = bare().await;
    let dv = s.sandbox.dataverse();
    dv.fail_next_key_index();
    let mut progress = Vec::new();
    provision(&s.dataverse, &FieldMap::default(), &quick(), &mut |p| {
        progress.push(p.to_string())
    })
    .await
    .unwrap();
    assert!(
        progress.iter().any(|p| p.contains("Failed")),
        "{progress:#?}"
    );
    assert!(
        progress.iter().any(|p| p.starts_with("reactivating")),
        "{progress:#?}"
    );
    for (table, key) in [
        ("opportunity", "cosell_referralid_key"),
        ("lead", "cosell_referralid_key"),
        ("cosell_partnercentersolution", "cosell_solutionid_key"),
    ] {
        assert_eq!(dv.key_index_status(table, key), "Active", "{table}");
    }
}

#[tokio::test]
async fn a_column_of_the_wrong_type_is_a_conflict_never_altered() {
    // Someone made the referral id a whole number.
    let schema = DataverseSchema::bare().with_column(
        "opportunity",
        cosell::sandbox::dataverse::ColumnDef::integer("cosell_referralid"),
    );
    let s = start(schema).await;
    let plan = provision(&s.dataverse, &FieldMap::default(), &quick(), &mut |_| {})
        .await
        .unwrap();
    let conflict = plan
        .items
        .iter()
        .find(|i| {
            i.config_key == "columns.opportunity.referral_id" && i.component.starts_with("column")
        })
        .unwrap();
    assert!(
        matches!(&conflict.status, ItemStatus::Conflict(why) if why.contains("Integer")),
        "{plan}"
    );
    let col = s
        .sandbox
        .dataverse()
        .schema()
        .table("opportunity")
        .unwrap()
        .declared_column("cosell_referralid")
        .cloned()
        .unwrap();
    assert_eq!(
        col.column_type,
        cosell::sandbox::dataverse::ColumnType::Integer
    );
    let problems = dataverse_problems(&s.dataverse, &FieldMap::default())
        .await
        .unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.config_key == "columns.opportunity.referral_id"
                && p.message.contains("Integer")),
        "{problems:#?}"
    );
}

#[tokio::test]
async fn an_upsert_by_a_key_still_indexing_fails_as_dataverse_does() {
    let s = bare().await;
    let dv = s.sandbox.dataverse();
    provision(&s.dataverse, &FieldMap::default(), &quick(), &mut |_| {})
        .await
        .unwrap();
    dv.set_key_index_failed("lead", "cosell_referralid_key");
    let err = s
        .dataverse
        .upsert(
            "leads",
            &cosell::dataverse::Key::alternate("cosell_referralid", "r-1"),
            &json!({"subject": "x"}),
            &Default::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("The key in the request URI is not valid"),
        "{err}"
    );
    let problems = dataverse_problems(&s.dataverse, &FieldMap::default())
        .await
        .unwrap();
    assert_eq!(
        keys_of(&problems),
        ["columns.lead.referral_id"],
        "{problems:#?}"
    );
    assert!(problems[0].message.contains("Failed"));
    let _ = Uuid::nil();
}

#[tokio::test]
async fn the_catalogue_imports_once_and_a_referral_naming_a_known_solution_keeps_its_row() {
    use cosell::mapping::RecordKind;
    use cosell::partner_center::models::Referral;
    use cosell::sync::catalogue::{import_catalogue, parse_catalogue_csv};
    use cosell::sync::{Crm, WriteTarget};

    let s = bare().await;
    let dv = s.sandbox.dataverse();
    let map = FieldMap::default();
    provision(&s.dataverse, &map, &quick(), &mut |_| {})
        .await
        .unwrap();

    let csv = "id,name,publisher,type\n\
               sol-analytics,\"Contoso Analytics, Enterprise\",Contoso,IP co-sell\n\
               sol-backup,Fabrikam Backup,Fabrikam,Services\n\
               ,Nameless,X,Y\n";
    let (entries, errors) = parse_catalogue_csv(csv);
    assert_eq!(entries.len(), 2);
    assert_eq!(
        errors.len(),
        1,
        "the bad line is reported, the rest imported"
    );
    let first = import_catalogue(&s.dataverse, &map, &entries).await;
    assert_eq!(
        (first.created, first.updated, first.unchanged),
        (2, 0, 0),
        "{:?}",
        first.failed
    );
    assert_eq!(dv.count("cosell_partnercentersolution"), 2);

    // Re-import: nothing written.
    let writes = dv.write_requests();
    let again = import_catalogue(&s.dataverse, &map, &entries).await;
    assert_eq!((again.created, again.updated, again.unchanged), (0, 0, 2));
    assert_eq!(dv.write_requests(), writes);

    // A changed publisher updates that row only.
    let mut changed = entries.clone();
    changed[1].publisher = "Fabrikam Ltd".into();
    let third = import_catalogue(&s.dataverse, &map, &changed).await;
    assert_eq!((third.created, third.updated, third.unchanged), (0, 1, 1));

    // An accepted referral that names the known solution by id alone.
    let created = s
        .sandbox
        .partner_center()
        .create_incoming_referral(json!({"name": "Names a catalogue solution"}))
        .unwrap();
    let mut accepted = created;
    accepted["status"] = json!("Active");
    accepted["substatus"] = json!("Accepted");
    accepted["details"]["requirements"]["solutions"] = json!([{"id": "sol-analytics"}]);
    let referral: Referral = serde_json::from_value(accepted).unwrap();
    let payload = map.map_referral(&referral, None).unwrap();
    assert_eq!(payload.kind, RecordKind::Opportunity);
    let written = s
        .crm
        .write(&payload, &serde_json::Map::new(), WriteTarget::ByKey)
        .await
        .unwrap();
    let rows = dv
        .query(
            "cosell_partnercentersolution",
            "cosell_solutionid eq 'sol-analytics'",
        )
        .unwrap();
    assert_eq!(rows.len(), 1, "no second row for a known solution");
    assert_eq!(
        rows[0]["cosell_name"],
        json!("Contoso Analytics, Enterprise")
    );
    assert_eq!(rows[0]["cosell_publishername"], json!("Contoso"));
    assert_eq!(rows[0]["cosell_solutiontype"], json!("IP co-sell"));
    let opp = Uuid::parse_str(&written.id).unwrap();
    let links = dv
        .query(
            "cosell_opportunitysolution",
            &format!("_cosell_opportunityid_value eq {opp}"),
        )
        .unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(
        links[0]["cosell_name"],
        json!("Contoso Analytics, Enterprise"),
        "the link is named after the catalogue row"
    );
}

/// Each way a provisioned environment or a map can be wrong, found by the check and named by
/// the config key to change.
#[tokio::test]
async fn the_check_names_each_problem_with_its_config_key() {
    use cosell::sandbox::dataverse::ColumnDef;
    let cosell_schema = DataverseSchema::cosell;
    let problems_of = |schema: DataverseSchema, map: FieldMap| async move {
        let s = start(schema).await;
        dataverse_problems(&s.dataverse, &map).await.unwrap()
    };

    // The provisioned default and the default map: clean.
    let clean = problems_of(cosell_schema(), FieldMap::default()).await;
    assert!(clean.is_empty(), "{clean:#?}");

    // A misspelt mapped column.
    let typo = FieldMap::from_toml("[columns.lead]\ncompany_name = \"companynam\"\n").unwrap();
    let p = problems_of(cosell_schema(), typo).await;
    assert_eq!(keys_of(&p), ["columns.lead.company_name"], "{p:#?}");
    assert!(p[0].message.contains("lead.companynam"));

    // A text column too short for what cosell writes.
    let short = cosell_schema().with_column("lead", ColumnDef::text("cosell_referralid", 20));
    let p = problems_of(short, FieldMap::default()).await;
    assert_eq!(keys_of(&p), ["columns.lead.referral_id"], "{p:#?}");
    assert!(p[0].message.contains("at most 20"), "{p:#?}");

    // A choice value the map writes is missing from the column.
    let short_help = cosell_schema().with_column(
        "opportunity",
        ColumnDef::choice(
            "cosell_helprequired",
            &[(100000000, "No help needed"), (100000001, "General")],
        ),
    );
    let p = problems_of(short_help, FieldMap::default()).await;
    let keys = keys_of(&p);
    assert_eq!(keys.len(), 5, "{p:#?}");
    assert!(
        keys.contains(&"choices.help_required.QuotesOrLicensing"),
        "{p:#?}"
    );
    assert!(p.iter().any(|x| x.message.contains("100000004")));

    // A missing alternate key.
    let p = problems_of(
        cosell_schema().without_alternate_key("opportunity", "cosell_referralid_key"),
        FieldMap::default(),
    )
    .await;
    assert_eq!(keys_of(&p), ["columns.opportunity.referral_id"], "{p:#?}");

    // A missing relationship (the link table has no lookup to the solution).
    let p = problems_of(
        cosell_schema().without_column(
            "cosell_opportunitysolution",
            "cosell_partnercentersolutionid",
        ),
        FieldMap::default(),
    )
    .await;
    assert_eq!(
        keys_of(&p),
        [
            "columns.solution.link_solution",
            "columns.solution.link_solution_bind"
        ],
        "{p:#?}"
    );
    // A relationship whose navigation property is not the one the map binds.
    let nav =
        FieldMap::from_toml("[columns.solution]\nlink_opportunity_bind = \"cosell_opportunity\"\n")
            .unwrap();
    let p = problems_of(cosell_schema(), nav).await;
    assert_eq!(
        keys_of(&p),
        ["columns.solution.link_opportunity_bind"],
        "{p:#?}"
    );
    assert!(p[0].message.contains("cosell_OpportunityId"));

    // Change tracking off where changes sync.
    let p = problems_of(
        cosell_schema().with_change_tracking("lead", false),
        FieldMap::default(),
    )
    .await;
    assert_eq!(keys_of(&p), ["columns.lead.entity"], "{p:#?}");

    // The configured country lookup table does not exist.
    let lookup = FieldMap::from_toml(
        "[country_lookup]\nnavigation_property = \"new_CountryId\"\nentity_set = \"new_countries\"\ncode_column = \"new_isocode\"\n",
    )
    .unwrap();
    let p = problems_of(cosell_schema(), lookup).await;
    assert_eq!(keys_of(&p), ["country_lookup.entity_set"], "{p:#?}");

    // A configured default names a column the CRM lacks.
    let defaults = FieldMap::from_toml("[defaults.opportunity]\nnew_region = \"EMEA\"\n").unwrap();
    let p = problems_of(cosell_schema(), defaults).await;
    assert_eq!(keys_of(&p), ["defaults.opportunity.new_region"], "{p:#?}");
}

#[tokio::test]
async fn the_partner_center_check_reads_referrals_and_tells_whose_webhook_it_is() {
    use cosell::sync::{WebhookState, partner_center_problems};
    let s = Sandboxed::builder().start().await.unwrap();
    let ours = s.webhook_url.clone().unwrap();
    let check = partner_center_problems(&s.partner_center, Some(&ours)).await;
    assert!(check.referrals_readable);
    assert_eq!(check.webhook, WebhookState::Ours);
    assert!(check.problems.is_empty(), "{:#?}", check.problems);

    // Another install's URL: named, never taken over by the check.
    let check =
        partner_center_problems(&s.partner_center, Some("https://staging.example/webhook")).await;
    assert_eq!(check.webhook, WebhookState::Another(ours.clone()));
    assert_eq!(check.problems.len(), 1);
    assert_eq!(check.problems[0].config_key, "webhook.public_url");
    assert!(check.problems[0].message.contains(&ours));

    // Nothing registered.
    let quiet = bare().await;
    let check =
        partner_center_problems(&quiet.partner_center, Some("https://prod.example/webhook")).await;
    assert_eq!(check.webhook, WebhookState::None);
    assert_eq!(check.problems[0].config_key, "webhook.public_url");
}

#[tokio::test]
async fn a_delta_on_a_table_without_change_tracking_fails_until_provisioning_enables_it() {
    use cosell::dataverse::ChangeTrackingOptions;
    let s = bare().await;
    let options = ChangeTrackingOptions::default();
    let err = s
        .dataverse
        .track_changes::<serde_json::Value>("opportunities", &["opportunityid"], &options)
        .collect()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Change tracking is not enabled"),
        "{err}"
    );
    provision(&s.dataverse, &FieldMap::default(), &quick(), &mut |_| {})
        .await
        .unwrap();
    let changes = s
        .dataverse
        .track_changes::<serde_json::Value>("opportunities", &["opportunityid"], &options)
        .collect()
        .await
        .unwrap();
    assert!(changes.changes.is_empty());
}

/// A customised map tried before going live: the sandbox starts bare plus the partner's own
/// schema file (a country lookup table), provisioning creates the renamed columns under their
/// configured names, and the check is clean.
#[tokio::test]
async fn a_customised_map_is_tried_on_a_bare_sandbox_with_the_partners_schema_file() {
    let dir = std::env::temp_dir().join(format!("cosell-schema-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("schema.json");
    std::fs::write(
        &file,
        r#"{
          "tables": [{
            "logical_name": "contoso_country", "entity_set_name": "contoso_countries",
            "primary_name": "contoso_name",
            "columns": [{"name": "contoso_name", "type": "text", "max_length": 100},
                        {"name": "contoso_isocode", "type": "text", "max_length": 2}]
          }],
          "columns": [{"table": "account", "name": "contoso_countryid", "type": "lookup",
                       "target": "contoso_country", "navigation_property": "contoso_CountryId"}]
        }"#,
    )
    .unwrap();
    let schema = DataverseSchema::bare().with_schema_file(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let map = FieldMap::from_toml(
        "[columns.opportunity]\nreferral_id = \"contoso_pcreferralid\"\n\
         [country_lookup]\nnavigation_property = \"contoso_CountryId\"\n\
         entity_set = \"contoso_countries\"\ncode_column = \"contoso_isocode\"\n",
    )
    .unwrap();
    let s = Sandboxed::builder()
        .sandbox(Sandbox::builder().dataverse_schema(schema))
        .field_map(map.clone())
        .webhooks(false)
        .start()
        .await
        .unwrap();
    let report = provision(&s.dataverse, &map, &quick(), &mut |_| {})
        .await
        .unwrap();
    assert!(report.conflicts().is_empty(), "{report}");
    let dv = s.sandbox.dataverse();
    let opportunity = dv.schema().table("opportunity").unwrap().clone();
    assert!(
        opportunity
            .declared_column("contoso_pcreferralid")
            .is_some()
    );
    assert!(opportunity.declared_column("cosell_referralid").is_none());
    assert!(
        opportunity
            .alternate_keys
            .iter()
            .any(|k| k.columns == ["contoso_pcreferralid"])
    );
    let problems = dataverse_problems(&s.dataverse, &map).await.unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
}

/// docs/going-live.md lists the columns from the definitions the provisioner uses.
#[test]
fn the_going_live_guide_lists_exactly_what_provisioning_creates() {
    let doc = include_str!("../docs/going-live.md");
    let table = cosell::sync::provision::columns_markdown(&FieldMap::default());
    if !doc.contains(&table) {
        // Print the table to paste, so a changed definition is one copy away from the doc.
        panic!("docs/going-live.md must contain this table, verbatim:\n\n{table}");
    }
}

/// The emulator's metadata rules, seen through raw requests: a key indexes Pending, InProgress,
/// Active; a partial definition PUT and an unknown solution are refused; change tracking
/// cannot be turned off again.
#[tokio::test]
async fn the_emulator_enforces_the_metadata_rules() {
    use cosell::dataverse::cosell_http::http::Method;
    let s = bare().await;
    let dv = s.sandbox.dataverse();
    let raw = |m: Method, p: &str| s.dataverse.raw().request(m, p.to_string());

    // A column created under a solution that does not exist.
    let column = json!({
        "@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata",
        "SchemaName": "contoso_Code", "DisplayName": {"LocalizedLabels": []}, "MaxLength": 20,
    });
    let err = raw(
        Method::POST,
        "EntityDefinitions(LogicalName='account')/Attributes",
    )
    .header("MSCRM.SolutionUniqueName", "nosuch")
    .json(&column)
    .send()
    .await
    .unwrap_err();
    assert!(err.to_string().contains("nosuch"), "{err}");
    // Without a solution it is created; a lookup cannot be created as a plain column.
    raw(
        Method::POST,
        "EntityDefinitions(LogicalName='account')/Attributes",
    )
    .json(&column)
    .send()
    .await
    .unwrap();
    let lookup = json!({"@odata.type": "Microsoft.Dynamics.CRM.LookupAttributeMetadata",
                        "SchemaName": "contoso_X", "DisplayName": {}});
    let err = raw(
        Method::POST,
        "EntityDefinitions(LogicalName='account')/Attributes",
    )
    .json(&lookup)
    .send()
    .await
    .unwrap_err();
    assert!(err.to_string().contains("RelationshipDefinitions"), "{err}");

    // A key: Pending, then InProgress, then Active, one read of the definition each.
    raw(Method::POST, "EntityDefinitions(LogicalName='account')/Keys")
        .json(&json!({"SchemaName": "contoso_code_key", "DisplayName": {}, "KeyAttributes": ["contoso_code"]}))
        .send()
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let setup = s.dataverse.table_setup("account").await.unwrap().unwrap();
        let key = setup.key_covering(&["contoso_code"]).unwrap();
        seen.push(key.index_status.clone());
    }
    assert_eq!(seen, ["Pending", "InProgress", "Active"]);
    assert_eq!(dv.key_index_status("account", "contoso_code_key"), "Active");

    // A PUT of part of a definition would reset the rest: refused.
    let err = raw(Method::PUT, "EntityDefinitions(LogicalName='lead')")
        .json(&json!({"ChangeTrackingEnabled": true}))
        .send()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("whole definition"), "{err}");
    assert!(s.dataverse.enable_change_tracking("lead").await.unwrap());
    assert!(
        !s.dataverse.enable_change_tracking("lead").await.unwrap(),
        "already on: no PUT"
    );
    // Once on, change tracking cannot be turned off.
    let resp = raw(Method::GET, "EntityDefinitions(LogicalName='lead')")
        .send()
        .await
        .unwrap();
    let mut def: serde_json::Map<String, serde_json::Value> = resp.json().unwrap();
    def.insert("ChangeTrackingEnabled".into(), json!(false));
    let err = raw(Method::PUT, "EntityDefinitions(LogicalName='lead')")
        .json(&def)
        .send()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot be disabled"), "{err}");
}

/// The application user's access rights, asked of Dataverse (RetrievePrincipalAccess) on a row
/// of each table: a role without Write on accounts is named with the entity-set config key.
#[tokio::test]
async fn a_missing_privilege_of_the_application_user_is_named() {
    let s = start(DataverseSchema::cosell()).await;
    let dv = s.sandbox.dataverse();
    dv.insert_row("account", json!({"name": "Existing customer"}))
        .unwrap();
    let clean = dataverse_problems(&s.dataverse, &FieldMap::default())
        .await
        .unwrap();
    assert!(clean.is_empty(), "{clean:#?}");
    dv.deny_access("account", "WriteAccess");
    let p = dataverse_problems(&s.dataverse, &FieldMap::default())
        .await
        .unwrap();
    assert_eq!(keys_of(&p), ["columns.account.entity_set"], "{p:#?}");
    assert!(p[0].message.contains("WriteAccess"));
}
