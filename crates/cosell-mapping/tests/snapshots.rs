//! Snapshots of the CRM payload for realistic referrals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cosell_mapping::{FieldMap, RecordKind, ResolvedIds};
use partner_center_client::models::Referral;
use serde_json::json;

fn payload(referral: &Referral, existing: Option<RecordKind>) -> serde_json::Value {
    let map = FieldMap::default();
    let p = map.map_referral(referral, existing).unwrap();
    let ids = ResolvedIds {
        account: Some("00000000-0000-0000-0000-0000000000a1".into()),
        contacts: (0..p.contacts.len())
            .map(|i| Some(format!("00000000-0000-0000-0000-0000000000c{i}")))
            .collect(),
        currency: Some("00000000-0000-0000-0000-0000000000f1".into()),
    };
    let body = p.body(&ids).unwrap();
    json!({ "payload": p, "body": body })
}

#[test]
fn co_sell_incoming_from_microsoft() {
    insta::assert_json_snapshot!(payload(&common::co_sell_incoming(), None));
}

#[test]
fn private_outgoing_deal() {
    insta::assert_json_snapshot!(payload(
        &common::private_outgoing(),
        Some(RecordKind::Opportunity)
    ));
}

#[test]
fn won_deal() {
    insta::assert_json_snapshot!(payload(&common::won_deal(), Some(RecordKind::Opportunity)));
}

#[test]
fn lead_not_yet_accepted() {
    insta::assert_json_snapshot!(payload(&common::lead(), None));
}
