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
