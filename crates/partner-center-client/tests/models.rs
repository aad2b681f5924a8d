//! The documented example bodies (reference §6) decode into the models without loss, and the
//! models tolerate what the service may send.

use partner_center_client::models::*;
use pretty_assertions::assert_eq;
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `null` members read as `None` and `None` is not written, so the expected output of a round
/// trip is the input without its `null` members. Returns how many were dropped.
fn without_nulls(v: &mut Value) -> usize {
    match v {
        Value::Object(map) => {
            let before = map.len();
            map.retain(|_, v| !v.is_null());
            let mut n = before - map.len();
            for v in map.values_mut() {
                n += without_nulls(v);
            }
            n
        }
        Value::Array(items) => items.iter_mut().map(without_nulls).sum(),
        _ => 0,
    }
}

#[test]
fn get_body_round_trips() {
    let text = fixture("get_referral.json");
    let referral: Referral = serde_json::from_str(&text).unwrap();
    let mut expected: Value = serde_json::from_str(&text).unwrap();
    let nulls = without_nulls(&mut expected);
    assert!(nulls > 20, "the fixture is null-heavy: {nulls}");
    assert_eq!(serde_json::to_value(&referral).unwrap(), expected);

    // Everything landed in typed fields; nothing fell through to `extra`.
    assert!(referral.extra.is_empty(), "{:?}", referral.extra.keys());
    assert_eq!(
        referral.id.as_deref(),
        Some("4111fffc-f9ee-4d53-bba6-569135228642")
    );
    assert_eq!(
        referral.status_pair(),
        (ReferralStatus::Active, ReferralSubstatus::Accepted)
    );
    assert_eq!(referral.r#type, Some(ReferralType::Shared));
    assert_eq!(referral.direction, Some(ReferralDirection::Outgoing));
    assert_eq!(
        referral.qualification,
        Some(ReferralQualification::SalesQualified)
    );
    assert_eq!(
        referral.e_tag.as_deref(),
        Some("\"00006d10-0000-0000-0000-5c70aa630000\"")
    );
    assert_eq!(
        referral.created_date_time.unwrap().to_rfc3339(),
        "2024-02-23T02:05:23.293181700+00:00"
    );
    assert_eq!(referral.expiration_date_time, None);
    let consent = referral.consent.as_ref().unwrap();
    assert_eq!(consent.consent_to_to_share_info_with_others, Some(true));
    assert_eq!(
        consent.consent_to_share_referral_with_microsoft_sellers,
        Some(true)
    );
    let details = referral.details.as_ref().unwrap();
    assert_eq!(details.deal_value, Some(Decimal::from(50000)));
    assert_eq!(details.currency.as_deref(), Some("USD"));
    assert_eq!(referral.solutions()[0].id, "SOL-34104-EBB");
    assert_eq!(referral.solutions()[0].r#type, Some(SolutionType::Name));
    let invite = referral.invite_context.as_ref().unwrap();
    assert_eq!(
        invite.assistance_request_code,
        Some(AssistanceRequestCode::CustomerTechnicalArchitecture)
    );
    assert!(!invite.invited_by_microsoft());
    let profile = referral.customer_profile.as_ref().unwrap();
    assert_eq!(
        profile.ids.as_ref().unwrap()[0].profile_type,
        Some(CustomerProfileType::Duns)
    );
    assert_eq!(
        profile.address.as_ref().unwrap().country.as_deref(),
        Some("US")
    );
    assert_eq!(
        referral.target.as_ref().unwrap()[0].r#type,
        Some(TargetType::SolutionProfile)
    );
    assert!(
        referral
            .links
            .as_ref()
            .unwrap()
            .self_link
            .as_ref()
            .unwrap()
            .uri
            .ends_with("569135228642")
    );
    assert_eq!(referral.tags.as_deref(), Some(&[][..]));
    assert_eq!(referral.registrations.as_deref(), Some(&[][..]));
    assert!(referral.odata_context.is_some());
}

#[test]
fn cosell_create_body_round_trips_exactly() {
    let text = fixture("create_cosell.json");
    let referral: Referral = serde_json::from_str(&text).unwrap();
    let input: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(serde_json::to_value(&referral).unwrap(), input);
    assert_eq!(
        referral.status_pair(),
        (ReferralStatus::New, ReferralSubstatus::Pending)
    );
    assert_eq!(
        referral.details.as_ref().unwrap().deal_value,
        Some(Decimal::from(120000))
    );
    assert_eq!(
        referral.customer_profile.as_ref().unwrap().ids.as_deref(),
        Some(&[][..])
    );
}

#[test]
fn private_create_body_lands_pascal_case_consent_in_typed_fields() {
    let text = fixture("create_private_deal.json");
    let referral: Referral = serde_json::from_str(&text).unwrap();
    let consent = referral.consent.as_ref().unwrap();
    assert_eq!(consent.consent_to_to_share_info_with_others, Some(true));
    assert_eq!(consent.consent_to_contact, Some(true));
    assert_eq!(
        consent.consent_to_microsoft_to_contact_specific_partners,
        Some(true)
    );
    assert_eq!(
        consent.consent_to_share_referral_with_microsoft_sellers,
        Some(false)
    );
    assert!(consent.extra.is_empty());

    // Apart from the consent spelling (always camelCase on output), the body is unchanged.
    let mut expected: Value = serde_json::from_str(&text).unwrap();
    expected["consent"] = json!({
        "consentToToShareInfoWithOthers": true,
        "consentToContact": true,
        "consentToMicrosoftToContactSpecificPartners": true,
        "consentToShareReferralWithMicrosoftSellers": false
    });
    assert_eq!(serde_json::to_value(&referral).unwrap(), expected);
    assert_eq!(referral.target.as_deref(), Some(&[][..]));
    let additional = referral
        .details
        .as_ref()
        .and_then(|d| d.requirements.as_ref())
        .and_then(|r| r.additional_requirements.as_ref())
        .unwrap();
    assert_eq!(additional.iot, Some(IotRequirements::default()));
    assert_eq!(
        additional.attributes.as_ref().unwrap()[0].r#type.as_deref(),
        Some("CustomerMarketplaceIntent")
    );
}

#[test]
fn list_page_round_trips_exactly() {
    let text = fixture("list_referrals_page.json");
    let page: ReferralCollection = serde_json::from_str(&text).unwrap();
    let input: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(serde_json::to_value(&page).unwrap(), input);
    assert_eq!(page.odata_count, Some(1));
    assert_eq!(page.value.len(), 1);
    assert_eq!(page.value[0].direction, Some(ReferralDirection::Incoming));
    assert_eq!(
        page.next_link.as_deref(),
        Some("http://api.partner.microsoft.com/v1.0/referrals?$skiptoken=k181pEdP0ykypkieJfcxX")
    );
}

#[test]
fn error_body_round_trips_and_parses_as_service_error() {
    let text = fixture("error_precondition_failed.json");
    let body: ErrorResponse = serde_json::from_str(&text).unwrap();
    let input: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(serde_json::to_value(&body).unwrap(), input);
    assert_eq!(body.error.code.as_deref(), Some("preconditionFailed"));
    assert_eq!(body.error.target.as_deref(), Some("referral"));
    assert!(body.error.inner_error.is_some());

    let e = cosell_http::ServiceError::from_response(
        http::StatusCode::PRECONDITION_FAILED,
        &http::HeaderMap::new(),
        text.as_bytes(),
    );
    assert_eq!(e.code(), Some("preconditionFailed"));
    assert_eq!(e.target(), Some("referral"));
}

#[test]
fn unknown_members_and_enum_values_survive() {
    let input = json!({
        "id": "r1",
        "status": "Paused",
        "substatus": "OnHold",
        "type": "Consortium",
        "qualification": "AiQualified",
        "direction": "Sideways",
        "salesStage": "100",
        "solutionArea": "AI Business Solutions",
        "customerProfile": { "name": "X", "segment": "SMB", "address": { "country": "DE", "county": "Bayern" } },
        "consent": { "consentToContact": false, "consentToBeNice": true },
        "details": { "requirements": { "solutions": [ { "id": "S", "type": "Bundle", "tier": 2 } ] } },
        "inviteContext": { "assistanceRequestCode": "CoffeeChat", "invitedBy": { "organizationId": "msft", "region": "EU" } },
        "target": [ { "type": "Galaxy", "id": "x", "weight": 1.5 } ],
        "team": [ { "email": "a@b.c", "emailValidationStatus": "Valid" } ],
        "trackingInfo": { "microsoftMsxId": "7-ABC", "futureId": "f" }
    });
    let r: Referral = serde_json::from_value(input.clone()).unwrap();
    assert_eq!(r.status, Some(ReferralStatus::Other("Paused".into())));
    assert_eq!(r.substatus, Some(ReferralSubstatus::Other("OnHold".into())));
    assert_eq!(r.r#type, Some(ReferralType::Other("Consortium".into())));
    assert_eq!(r.sales_stage, Some(SalesStage::Other("100".into())));
    assert_eq!(r.solution_area.as_deref(), Some("AI Business Solutions"));
    let invite = r.invite_context.as_ref().unwrap();
    assert!(invite.invited_by_microsoft());
    assert_eq!(
        invite.assistance_request_code,
        Some(AssistanceRequestCode::Other("CoffeeChat".into()))
    );
    assert_eq!(
        r.tracking_info
            .as_ref()
            .unwrap()
            .microsoft_msx_id
            .as_deref(),
        Some("7-ABC")
    );
    assert_eq!(serde_json::to_value(&r).unwrap(), input);
}

#[test]
fn numbers_may_arrive_as_strings() {
    let r: Referral = serde_json::from_value(json!({
        "details": {
            "dealValue": "10000",
            "requirements": { "solutions": [ { "id": "S", "price": "12.50", "quantity": "3" } ] }
        }
    }))
    .unwrap();
    assert_eq!(
        r.details.as_ref().unwrap().deal_value,
        Some(Decimal::from(10000))
    );
    assert_eq!(r.solutions()[0].price, Some(Decimal::new(1250, 2)));
    assert_eq!(r.solutions()[0].quantity, Some(Decimal::from(3)));
    // Written back as numbers.
    let out = serde_json::to_value(&r).unwrap();
    assert_eq!(out["details"]["dealValue"], json!(10000));
    assert_eq!(
        out["details"]["requirements"]["solutions"][0]["price"],
        json!(12.5)
    );

    let page: ReferralCollection =
        serde_json::from_value(json!({ "@odata.count": "42", "value": [] })).unwrap();
    assert_eq!(page.odata_count, Some(42));
}

#[test]
fn timestamps_tolerate_precision_offsets_and_null() {
    let r: Referral = serde_json::from_value(json!({
        "createdDateTime": "2022-02-28T17:27:47.8754901Z",
        "updatedDateTime": "2018-02-17T00:05:39.5485487+00:00",
        "acceptedDateTime": "2017-12-08T21:39:48.2386997",
        "closedDateTime": null,
        "expirationDateTime": ""
    }))
    .unwrap();
    assert!(r.created_date_time.is_some());
    assert_eq!(
        r.updated_date_time,
        Some("2018-02-17T00:05:39.5485487Z".parse().unwrap())
    );
    assert!(r.accepted_date_time.is_some());
    assert_eq!(r.closed_date_time, None);
    assert_eq!(r.expiration_date_time, None);
    let out = serde_json::to_value(&r).unwrap();
    assert_eq!(out["createdDateTime"], "2022-02-28T17:27:47.8754901Z");
}

#[test]
fn bad_input_is_a_typed_error_naming_the_path() {
    let err = cosell_http::decode_json::<Referral>(
        br#"{"id":"r1","target":[{"type":"SolutionProfile"}]}"#,
        "referral",
    )
    .unwrap_err();
    assert_eq!(err.path(), "target[0]");
    assert!(
        err.message().contains("missing field `id`"),
        "{}",
        err.message()
    );

    let err =
        cosell_http::decode_json::<Referral>(br#"{"details":{"dealValue":"lots"}}"#, "referral")
            .unwrap_err();
    assert_eq!(err.path(), "details.dealValue");

    let err =
        cosell_http::decode_json::<Referral>(br#"{"createdDateTime":"last tuesday"}"#, "referral")
            .unwrap_err();
    assert_eq!(err.path(), "createdDateTime");

    let err = cosell_http::decode_json::<Referral>(br#"{"id": "r1", "#, "referral").unwrap_err();
    assert_eq!(err.what(), "referral");

    let err = cosell_http::decode_json::<ReferralCollection>(
        br#"{"value":[{"id":"a"},{"id":"b","customerProfile":{"ids":[{"profileType":"Duns"}]}}]}"#,
        "referrals",
    )
    .unwrap_err();
    assert_eq!(err.path(), "value[1].customerProfile.ids[0]");
}
