//! Issue 11 (Partner Center fidelity), the field map's half: a create carries what Microsoft's
//! minimal example requires, and an update patches only the connector's writable paths, never
//! `null` where the model is non-nullable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cosell_mapping::*;
use partner_center_client::models::{CustomerMarketplaceIntent, WRITABLE_PATHS};
use pretty_assertions::assert_eq;

fn co_sell() -> MappedSnapshot {
    FieldMap::default()
        .snapshot_from_referral(&common::co_sell_incoming())
        .unwrap()
}

#[test]
fn a_create_carries_the_marketplace_intent() {
    let body = FieldMap::default()
        .referral_create(&co_sell(), "crm-1")
        .unwrap();
    assert_eq!(
        body.marketplace_intent(),
        Some(CustomerMarketplaceIntent::HaveNotDecided)
    );
    // Not a services co-sell partner: the services fields stay unset.
    assert_eq!(body.partner_role, None);

    let map = FieldMap::from_toml(
        r#"
        [referral_create]
        marketplace_intent = "Yes"
        services_co_sell = true
        partner_role = "SolutionDesign"
        solution_area = "AIBusinessSolutions"
        solution_play = "CopilotAndAgentsAtWork"
        "#,
    )
    .unwrap();
    let body = map.referral_create(&co_sell(), "crm-1").unwrap();
    assert_eq!(
        body.marketplace_intent(),
        Some(CustomerMarketplaceIntent::Yes)
    );
    assert_eq!(body.partner_role.as_deref(), Some("SolutionDesign"));
    assert_eq!(body.solution_area.as_deref(), Some("AIBusinessSolutions"));
    assert_eq!(
        body.solution_play.as_deref(),
        Some("CopilotAndAgentsAtWork")
    );
}

#[test]
fn create_settings_are_validated_naming_the_field() {
    let err = FieldMap::from_toml("[referral_create]\nmarketplace_intent = \"Maybe\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("referral_create.marketplace_intent") && err.contains("Maybe"),
        "{err}"
    );
    let err = FieldMap::from_toml(
        "[referral_create]\nservices_co_sell = true\npartner_role = \"SolutionDesign\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("referral_create.solution_area"), "{err}");
}

/// Issue 11 item 9: the create values come from CRM columns when the map names them, with the
/// configured value as the default for a row that leaves a column empty.
#[test]
fn create_values_come_from_crm_columns_with_the_configured_default() {
    let map = FieldMap::from_toml(
        r#"
        [referral_create]
        marketplace_intent = "No"
        marketplace_intent_column = "new_marketplaceintent"
        marketplace_intent_choices = { Yes = 100000000, No = 100000001, HaveNotDecided = 100000002 }
        services_co_sell = true
        partner_role_column = "new_partnerrole"
        solution_area = "AIBusinessSolutions"
        solution_area_column = "new_solutionarea"
        solution_play_column = "new_solutionplay"
        "#,
    )
    .unwrap();
    let row = |pairs: serde_json::Value| pairs.as_object().unwrap().clone();

    // A choice column and text columns.
    let body = map
        .referral_create_from_row(
            &co_sell(),
            "crm-1",
            &row(serde_json::json!({
                "new_marketplaceintent": 100000000,
                "new_partnerrole": "SolutionDesign",
                "new_solutionarea": "",
                "new_solutionplay": " CopilotAndAgentsAtWork ",
            })),
        )
        .unwrap();
    assert_eq!(
        body.marketplace_intent(),
        Some(CustomerMarketplaceIntent::Yes)
    );
    assert_eq!(body.partner_role.as_deref(), Some("SolutionDesign"));
    // Empty in the row: the configured default.
    assert_eq!(body.solution_area.as_deref(), Some("AIBusinessSolutions"));
    assert_eq!(
        body.solution_play.as_deref(),
        Some("CopilotAndAgentsAtWork")
    );

    // The intent as text, and a row without the column: the configured default.
    let text = map
        .referral_create_from_row(
            &co_sell(),
            "crm-1",
            &row(
                serde_json::json!({"new_marketplaceintent": "HaveNotDecided",
                "new_partnerrole": "r", "new_solutionplay": "p"}),
            ),
        )
        .unwrap();
    assert_eq!(
        text.marketplace_intent(),
        Some(CustomerMarketplaceIntent::HaveNotDecided)
    );
    let absent = map
        .referral_create_from_row(
            &co_sell(),
            "crm-1",
            &row(serde_json::json!({"new_partnerrole": "r", "new_solutionplay": "p"})),
        )
        .unwrap();
    assert_eq!(
        absent.marketplace_intent(),
        Some(CustomerMarketplaceIntent::No)
    );

    // An option value the map does not name, and a required value neither the row nor the
    // config has: errors naming the field, the column and the value.
    let err = map
        .referral_create_from_row(
            &co_sell(),
            "crm-1",
            &row(
                serde_json::json!({"new_marketplaceintent": 7, "new_partnerrole": "r",
                "new_solutionplay": "p"}),
            ),
        )
        .unwrap_err();
    assert_eq!(err.rule(), &Rule::UnknownChoice);
    assert!(
        err.to_string().contains("new_marketplaceintent = 7"),
        "{err}"
    );
    let err = map
        .referral_create_from_row(
            &co_sell(),
            "crm-1",
            &row(serde_json::json!({"new_partnerrole": "r"})),
        )
        .unwrap_err();
    assert_eq!(err.rule(), &Rule::Missing);
    assert!(
        err.to_string().contains("solutionPlay") && err.to_string().contains("new_solutionplay"),
        "{err}"
    );
}

#[test]
fn create_columns_are_validated_naming_the_key() {
    let err =
        FieldMap::from_toml("[referral_create]\nmarketplace_intent_choices = { Maybe = 1 }\n")
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("referral_create.marketplace_intent_choices") && err.contains("Maybe"),
        "{err}"
    );
    let err = FieldMap::from_toml("[referral_create]\npartner_role_column = \"bad column\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("referral_create.partner_role_column"), "{err}");
    // A column can stand in for a configured services value.
    assert!(
        FieldMap::from_toml(
            "[referral_create]\nservices_co_sell = true\npartner_role_column = \"new_role\"\n\
             solution_area_column = \"new_area\"\nsolution_play_column = \"new_play\"\n",
        )
        .is_ok()
    );
}

#[test]
fn help_requested_is_audited_not_patched() {
    let base = co_sell();
    let mut target = co_sell();
    target.set(
        FieldId::HelpRequired,
        FieldValue::Text("ProofOfConceptOrDemo".into()),
    );
    let up = FieldMap::default().referral_update(&base, &target).unwrap();
    assert!(
        up.operations
            .iter()
            .all(|op| !op.path.starts_with("/inviteContext")),
        "{:?}",
        up.operations
    );
    assert_eq!(up.not_writable, vec![FieldId::HelpRequired]);
}

#[test]
fn removed_values_are_never_written_as_null() {
    let base = co_sell();
    let mut target = co_sell();
    target.remove(FieldId::DealValue);
    target.remove(FieldId::CloseDate);
    target.remove(FieldId::Currency);
    target.remove(FieldId::Notes);
    let up = FieldMap::default().referral_update(&base, &target).unwrap();
    for op in &up.operations {
        assert!(!op.value.is_null(), "{op:?}");
        assert!(WRITABLE_PATHS.contains(&op.path.as_str()), "{op:?}");
    }
    let mut audited = up.not_writable.clone();
    audited.sort();
    assert_eq!(
        audited,
        vec![FieldId::DealValue, FieldId::Currency, FieldId::CloseDate]
    );
}

#[test]
fn every_patch_the_map_makes_uses_a_writable_path() {
    let base = FieldMap::default()
        .snapshot_from_referral(&common::private_outgoing())
        .unwrap();
    let target = co_sell();
    let up = FieldMap::default().referral_update(&base, &target);
    if let Ok(up) = up {
        for op in &up.operations {
            assert!(WRITABLE_PATHS.contains(&op.path.as_str()), "{op:?}");
            assert!(!op.value.is_null(), "{op:?}");
        }
    }
}
