//! Table-driven unit tests: one `check` helper per area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::{TimeZone, Utc};
use cosell_mapping::*;
use partner_center_client::models::{ReferralStatus as St, ReferralSubstatus as Sub};
use pretty_assertions::assert_eq;
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn text(s: &str) -> FieldValue {
    FieldValue::Text(s.into())
}

fn state(a: St, b: Sub) -> ReferralState {
    ReferralState::new(a, b)
}

fn snap(fields: &[(FieldId, FieldValue)]) -> MappedSnapshot {
    fields.iter().cloned().collect()
}

fn record(v: Value) -> Record {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

// ------------------------------------------------------------------ check marks

mod marks {
    use super::*;
    use pretty_assertions::assert_eq;

    fn check(input: &str, outcome: Option<SyncOutcome>, expected: &str) {
        let got = match outcome {
            Some(o) => apply_mark(input, o),
            None => strip_mark(input).to_string(),
        };
        assert_eq!(got, expected, "input {input:?}");
    }

    #[test]
    fn table() {
        use SyncOutcome::{Failure as F, Success as S};
        check("Contoso", Some(S), "✔ Contoso");
        check("Contoso", Some(F), "✖ Contoso");
        // Idempotent: mark twice, one mark.
        check("✔ Contoso", Some(S), "✔ Contoso");
        check(
            &apply_mark(&apply_mark("Contoso", S), S),
            Some(S),
            "✔ Contoso",
        );
        // Cross then tick: only the tick.
        check("✖ Contoso", Some(S), "✔ Contoso");
        check("✔ Contoso", Some(F), "✖ Contoso");
        // Old doubled marks, emoji variant, missing space.
        check("✖ ✔ Contoso", Some(S), "✔ Contoso");
        check("✔️ Contoso", Some(F), "✖ Contoso");
        check("✔Contoso", Some(S), "✔ Contoso");
        // Marks elsewhere in the name are left intact.
        check("Contoso ✔ deal ✖", Some(S), "✔ Contoso ✔ deal ✖");
        check("A✔B", None, "A✔B");
        check("✖ A ✖ B", None, "A ✖ B");
        check("  spaced", None, "  spaced");
        check("", Some(S), "✔ ");
    }

    #[test]
    fn outcome_columns_follow_display_check_mark() {
        let at = Utc.with_ymd_and_hms(2025, 5, 1, 12, 0, 0).unwrap();
        let row = record(json!({ "name": "✔ Contoso", "cosell_audit": "2025-04-01T00:00:00Z ok" }));
        let on = FieldMap::default();
        let cols = on.outcome_columns(
            RecordKind::Opportunity,
            &row,
            SyncOutcome::Failure,
            "details.currency: \"XYZ\" is not an ISO 4217 currency code",
            at,
        );
        assert_eq!(cols["name"], "✖ Contoso");
        assert_eq!(
            cols["cosell_audit"],
            "2025-05-01T12:00:00Z error: details.currency: \"XYZ\" is not an ISO 4217 currency code\n2025-04-01T00:00:00Z ok"
        );
        // Already marked right: the name is not rewritten.
        let same = on.outcome_columns(RecordKind::Opportunity, &row, SyncOutcome::Success, "", at);
        assert!(!same.contains_key("name"));

        let off = FieldMap::from_toml("display_check_mark = false").unwrap();
        let cols =
            off.outcome_columns(RecordKind::Opportunity, &row, SyncOutcome::Failure, "x", at);
        assert_eq!(
            cols["name"], "Contoso",
            "an old mark is removed when marks are off"
        );
        let payload = off.map_referral(&common::private_outgoing(), None).unwrap();
        assert_eq!(payload.record["name"], "Fabrikam - Dynamics 365 rollout");
    }

    #[test]
    fn a_payload_written_in_part_carries_the_cross() {
        let on = FieldMap::default();
        let mut payload = on.map_referral(&common::private_outgoing(), None).unwrap();
        assert_eq!(payload.record["name"], "✔ Fabrikam - Dynamics 365 rollout");
        on.mark_payload(&mut payload, SyncOutcome::Failure);
        assert_eq!(payload.record["name"], "✖ Fabrikam - Dynamics 365 rollout");
        let off = FieldMap::from_toml("display_check_mark = false").unwrap();
        let mut payload = off.map_referral(&common::private_outgoing(), None).unwrap();
        off.mark_payload(&mut payload, SyncOutcome::Failure);
        assert_eq!(payload.record["name"], "Fabrikam - Dynamics 365 rollout");

        // What the audit says to do.
        let e = MappingError::new("details.currency", "NOK", Rule::CurrencyNotEnabled);
        assert_eq!(
            e.to_string(),
            "details.currency: \"NOK\" is not a currency enabled in Dynamics 365: add it under \
             Settings > Business Management > Currencies"
        );
    }

    #[test]
    fn audit_is_bounded_newest_first() {
        let at = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let mut text = String::new();
        for i in 0..50 {
            text = audit_entry(Some(&text), at, &format!("entry {i}"), 120);
            assert!(text.chars().count() <= 120);
        }
        assert!(text.starts_with("2025-01-01T00:00:00Z entry 49\n"));
        assert_eq!(text.lines().count(), 4);
        // Line breaks inside an entry do not split it.
        let t = audit_entry(None, at, "a\nb", 100);
        assert_eq!(t, "2025-01-01T00:00:00Z a b");
    }
}

// ------------------------------------------------------------------ config

mod config {
    use super::*;
    use pretty_assertions::assert_eq;

    /// Loads `toml`; `expected` is `Ok(())` or the error's text.
    fn check(toml: &str, expected: Result<(), &str>) {
        let got = FieldMap::from_toml(toml)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_string), "toml:\n{toml}");
    }

    #[test]
    fn validation_names_key_and_value() {
        check("", Ok(()));
        check(
            "[columns.opportunity]\nreferral_id = \"\"",
            Err(r#"columns.opportunity.referral_id: "" is not a logical name"#),
        );
        check(
            "deal_value_field = \"Estimated Value\"",
            Err(r#"deal_value_field: "Estimated Value" is not a logical name"#),
        );
        check(
            "country_code_field = \"1country\"",
            Err(r#"country_code_field: "1country" is not a logical name"#),
        );
        check(
            "[columns.contact]\naccount_bind = \"parent-customer\"",
            Err(
                r#"columns.contact.account_bind: "parent-customer" is not a navigation property or schema name"#,
            ),
        );
        check(
            "[columns.opportunity]\nnotes = \"description\"",
            Err(
                "columns.opportunity.notes: unknown field `notes`, expected one of `entity`, `entity_set`, `name`, `description`, `close_date`, `sync_with_partner_center`, `referral_id`, `engagement_id`, `referral_link`, `help_required`, `visible_to_microsoft`, `microsoft_crm_id`, `audit`, `customer_account_bind`, `parent_account_bind`, `parent_contact_bind`, `currency_bind`",
            ),
        );
        check(
            "display_checkmark = true",
            Err(
                "display_checkmark: unknown field `display_checkmark`, expected one of `display_check_mark`, `deal_value_field`, `country_code_field`, `country_lookup`, `money_precision`, `audit_max_chars`, `referral_link_template`, `columns`, `choices`, `status`, `defaults`, `account_matching`, `referral_create`, `ownership`",
            ),
        );
        check(
            "display_check_mark = \"yes\"",
            Err("display_check_mark: invalid type: string \"yes\", expected a boolean"),
        );
        check(
            "[ownership]\nbudget = \"crm\"",
            Err(
                "ownership.budget: unknown field `budget`, expected one of `name`, `status`, `deal_value`, `currency`, `close_date`, `notes`, `help_required`, `visible_to_microsoft`, `microsoft_crm_id`, `customer_name`, `address_line1`, `address_line2`, `city`, `state`, `postal_code`, `country`, `contacts`, `solutions`",
            ),
        );
        check(
            "[ownership]\nnotes = \"furthest\"",
            Err(r#"ownership.notes: "furthest" is only valid for status and visible_to_microsoft"#),
        );
        check(
            "[ownership]\nnotes = \"microsoft\"",
            Err(
                "ownership.notes: unknown variant `microsoft`, expected one of `partner_center`, `crm`, `furthest`",
            ),
        );
        check(
            "deal_value_field = \"description\"",
            Err(
                r#"columns.opportunity.description: "description" is already used by deal_value_field"#,
            ),
        );
        check(
            "[choices.help_required]\nUnknown = 1\nGeneralOrOther = 1",
            Err(r#"choices.help_required.Unknown: "1" is already the value of GeneralOrOther"#),
        );
        check(
            "[status.opportunity]\ncancelled = 5",
            Err(r#"status.opportunity.cancelled: "5" must differ from status.opportunity.lost"#),
        );
        check(
            "[defaults.lead]\n\"Last Name\" = \"x\"",
            Err(r#"defaults.lead: "Last Name" is not a logical name"#),
        );
        check(
            "[defaults.opportunity]\n\"ownerid@odata.bind\" = \"/teams(1)\"",
            Ok(()),
        );
        check(
            "[account_matching]\nfields = []",
            Err(r#"account_matching.fields: "[]" must name at least one field"#),
        );
        check(
            "referral_link_template = \"https://example.com\"",
            Err(
                r#"referral_link_template: "https://example.com" must contain {id} or {engagement_id}"#,
            ),
        );
        check(
            "money_precision = 11",
            Err(r#"money_precision: "11" must be between 0 and 10"#),
        );
        check(
            "[country_lookup]\nnavigation_property = \"cosell_CountryId\"\nentity_set = \"cosell_countries\"\ncode_column = \"cosell_isocode\"",
            Ok(()),
        );
        check(
            "[country_lookup]\nnavigation_property = \"x\"",
            Err("country_lookup: missing field `entity_set`"),
        );
        check("not toml =", Err("line 1: key with no value, expected `=`"));
        check("a = 1\nb = [", Err("line 2: unclosed array, expected `]`"));
    }

    #[test]
    fn every_field_can_be_owned() {
        for f in FieldId::ALL {
            let map =
                FieldMap::from_toml(&format!("[ownership]\n{f} = \"partner_center\"")).unwrap();
            assert_eq!(map.ownership().policy(f), Policy::PartnerCenter);
        }
    }

    #[test]
    fn every_problem_is_listed() {
        let cfg: MappingConfig =
            toml::from_str("deal_value_field = \"\"\ncountry_code_field = \"\"").unwrap();
        let keys: Vec<_> = cfg.problems().iter().map(|e| e.key().to_string()).collect();
        assert_eq!(keys, ["deal_value_field", "country_code_field"]);
    }

    #[test]
    fn a_leads_deal_value_goes_to_the_money_column_estimatedamount() {
        // R-LEAD: lead `estimatedamount` is Money ("Est. Value"); lead `estimatedvalue` is a
        // deprecated Double. The opportunity keeps `estimatedvalue` (Money there).
        let map = FieldMap::default();
        let p = map.map_referral(&common::lead(), None).unwrap();
        assert_eq!(p.kind, RecordKind::Lead);
        assert_eq!(p.record["estimatedamount"], json!(1000));
        assert!(!p.record.contains_key("estimatedvalue"));
        let o = map.map_referral(&common::co_sell_incoming(), None).unwrap();
        assert_eq!(o.record["estimatedvalue"], json!(50000));
    }

    #[test]
    fn deal_value_field_knob() {
        let map = FieldMap::from_toml("deal_value_field = \"cosell_dealvalue\"").unwrap();
        let p = map.map_referral(&common::co_sell_incoming(), None).unwrap();
        assert_eq!(p.record["cosell_dealvalue"], json!(50000));
        assert!(!p.record.contains_key("estimatedvalue"));
    }

    #[test]
    fn country_code_field_knob_and_lookup_helper() {
        let map = FieldMap::from_toml(
            "country_code_field = \"cosell_countrycode\"\n[country_lookup]\nnavigation_property = \"cosell_CountryId\"\nentity_set = \"cosell_countries\"\ncode_column = \"cosell_isocode\"",
        )
        .unwrap();
        let p = map.map_referral(&common::co_sell_incoming(), None).unwrap();
        let account = p.account.as_ref().unwrap();
        assert_eq!(account.record["cosell_countrycode"], "US");
        assert!(!account.record.contains_key("address1_country"));
        let body = account.body().unwrap();
        assert_eq!(
            body["cosell_CountryId@odata.bind"],
            "/cosell_countries(cosell_isocode='US')"
        );
        // Reading goes through the helper column.
        let mut acc = account.record.clone();
        acc.insert("cosell_countrycode".into(), json!("de"));
        let mut records = map.written_records(&p);
        records.account = Some(acc);
        let s = map.snapshot_from_crm(&records, None).unwrap();
        assert_eq!(s.text(FieldId::Country), Some("DE"));
    }

    #[test]
    fn defaults_fill_but_never_override() {
        let map = FieldMap::from_toml(
            "[defaults.opportunity]\nmsdyn_forecastcategory = 100000001\ndescription = \"(none)\"\n[defaults.lead]\nlastname = \"Unknown\"\nleadsourcecode = 8",
        )
        .unwrap();
        let p = map.map_referral(&common::co_sell_incoming(), None).unwrap();
        assert_eq!(p.record["msdyn_forecastcategory"], json!(100000001));
        assert_eq!(
            p.record["description"],
            "Customer wants Dynamics 365 for supply chain."
        );
        assert!(
            !p.record.contains_key("isrevenuesystemcalculated"),
            "a given table replaces the default"
        );
        let mut lead = common::lead();
        lead.customer_profile.as_mut().unwrap().team = Some(vec![]);
        let p = map.map_referral(&lead, None).unwrap();
        assert_eq!(p.record["lastname"], "Unknown");
        assert_eq!(p.record["leadsourcecode"], json!(8));
        let p = FieldMap::default()
            .map_referral(&common::co_sell_incoming(), None)
            .unwrap();
        assert_eq!(p.record["isrevenuesystemcalculated"], json!(false));
    }

    #[test]
    fn every_logical_name_is_configurable() {
        let map = FieldMap::from_toml(
            "[columns.opportunity]\nreferral_id = \"new_refid\"\nhelp_required = \"new_help\"\nvisible_to_microsoft = \"new_visible\"\nmicrosoft_crm_id = \"new_msx\"\nreferral_link = \"new_link\"\nsync_with_partner_center = \"new_sync\"\nengagement_id = \"new_eng\"\n[choices.help_required]\nUnknown = 1\nCustomerTechnicalArchitecture = 2",
        )
        .unwrap();
        let p = map.map_referral(&common::co_sell_incoming(), None).unwrap();
        for (k, v) in [
            ("new_refid", json!("4111fffc-f9ee-4d53-bba6-569135228642")),
            ("new_help", json!(2)),
            ("new_visible", json!(true)),
            ("new_msx", json!("7-3JXK2Q9ABC")),
            (
                "new_link",
                json!(
                    "https://partner.microsoft.com/dashboard/referrals/v2/4111fffc-f9ee-4d53-bba6-569135228642"
                ),
            ),
            ("new_sync", json!(true)),
            ("new_eng", json!("37ef26aa-1d15-4533-9f93-a69bd33ab1e5")),
        ] {
            assert_eq!(p.record[k], v, "{k}");
        }
        assert_eq!(p.key.column, "new_refid");
    }

    #[test]
    fn money_precision_rounds_half_away_from_zero() {
        let map = FieldMap::default();
        let mut r = common::private_outgoing();
        r.details.as_mut().unwrap().deal_value = Some(Decimal::new(1234565, 3)); // 1234.565
        let s = map.snapshot_from_referral(&r).unwrap();
        assert_eq!(
            s.get(FieldId::DealValue),
            Some(&FieldValue::Decimal(Decimal::new(123457, 2)))
        );
        let map0 = FieldMap::from_toml("money_precision = 0").unwrap();
        let s = map0.snapshot_from_referral(&r).unwrap();
        assert_eq!(
            s.get(FieldId::DealValue),
            Some(&FieldValue::Decimal(Decimal::from(1235)))
        );
    }

    #[test]
    fn ownership_overlays_defaults() {
        let map = FieldMap::from_toml("[ownership]\ndeal_value = \"partner_center\"").unwrap();
        assert_eq!(
            map.ownership().policy(FieldId::DealValue),
            Policy::PartnerCenter
        );
        assert_eq!(
            map.ownership().policy(FieldId::Status),
            Policy::PartnerCenter
        );
        assert_eq!(map.ownership().policy(FieldId::Notes), Policy::Crm);
        assert_eq!(
            map.ownership().policy(FieldId::VisibleToMicrosoft),
            Policy::Furthest
        );
    }
}

// ------------------------------------------------------------------ rules

mod rules {
    use super::*;
    use pretty_assertions::assert_eq;

    fn co_sell() -> MappedSnapshot {
        FieldMap::default()
            .snapshot_from_referral(&common::co_sell_incoming())
            .unwrap()
    }

    /// Checks `target` (against `base`) and compares the broken rules, as `field: value rule`.
    fn check(base: Option<&MappedSnapshot>, target: &MappedSnapshot, expected: &[&str]) {
        let got: Vec<String> = FieldMap::default()
            .check_outgoing(target, base)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn co_sell_needs_contact_and_solution() {
        check(None, &co_sell(), &[]);
        let mut s = co_sell();
        s.remove(FieldId::Contacts);
        check(
            None,
            &s,
            &[
                r#"customerProfile.team: "CustomerTechnicalArchitecture" a co-sell referral (Microsoft help requested) needs a customer contact"#,
            ],
        );
        s.remove(FieldId::Solutions);
        check(
            None,
            &s,
            &[
                r#"customerProfile.team: "CustomerTechnicalArchitecture" a co-sell referral (Microsoft help requested) needs a customer contact"#,
                r#"details.requirements.solutions: "CustomerTechnicalArchitecture" a co-sell referral (Microsoft help requested) needs at least one solution"#,
            ],
        );
        // Without a help request, neither is needed.
        s.set(FieldId::HelpRequired, text("Unknown"));
        check(None, &s, &[]);
        s.remove(FieldId::HelpRequired);
        check(None, &s, &[]);
    }

    #[test]
    fn visibility_is_one_way() {
        let visible = snap(&[(FieldId::VisibleToMicrosoft, FieldValue::Bool(true))]);
        let hidden = snap(&[(FieldId::VisibleToMicrosoft, FieldValue::Bool(false))]);
        check(None, &hidden, &[]);
        check(Some(&hidden), &visible, &[]);
        check(Some(&visible), &visible, &[]);
        check(
            Some(&visible),
            &hidden,
            &[
                r#"consent.consentToShareReferralWithMicrosoftSellers: "false" visibility to Microsoft sellers cannot be withdrawn once granted"#,
            ],
        );
        check(
            Some(&visible),
            &MappedSnapshot::new(),
            &[
                r#"consent.consentToShareReferralWithMicrosoftSellers: "" visibility to Microsoft sellers cannot be withdrawn once granted"#,
            ],
        );
        // Help requested implies visibility: an empty column on a co-sell record is no withdrawal.
        let mut implied = co_sell();
        implied.remove(FieldId::VisibleToMicrosoft);
        check(Some(&visible), &implied, &[]);
        // An update that tries is an error, not a silent change.
        let err = FieldMap::default()
            .referral_update(&visible, &hidden)
            .unwrap_err();
        assert_eq!(err.rule(), &Rule::VisibilityIrreversible);
    }

    #[test]
    fn non_co_sell_can_become_co_sell() {
        let mut base = co_sell();
        base.set(FieldId::HelpRequired, text("Unknown"));
        base.set(FieldId::VisibleToMicrosoft, FieldValue::Bool(false));
        let target = co_sell();
        check(Some(&base), &target, &[]);
        let up = FieldMap::default().referral_update(&base, &target).unwrap();
        let ops = serde_json::to_value(&up.operations).unwrap();
        // `inviteContext` is not a writable PATCH path (issue 11, item 10): the help request is
        // audited as not writable; the visibility it implies is written.
        assert_eq!(
            ops,
            json!([
                {"op":"replace","path":"/consent/consentToShareReferralWithMicrosoftSellers","value":true},
            ])
        );
        assert_eq!(up.not_writable, vec![FieldId::HelpRequired]);
    }

    #[test]
    fn country_and_currency_codes() {
        let with = |f, v: &str| snap(&[(f, text(v))]);
        check(None, &with(FieldId::Country, "US"), &[]);
        check(
            None,
            &with(FieldId::Country, "USA"),
            &[
                r#"customerProfile.address.country: "USA" is not an ISO 3166-1 alpha-2 country code"#,
            ],
        );
        check(
            None,
            &with(FieldId::Country, "XX"),
            &[r#"customerProfile.address.country: "XX" is not an ISO 3166-1 alpha-2 country code"#],
        );
        check(None, &with(FieldId::Currency, "EUR"), &[]);
        check(
            None,
            &with(FieldId::Currency, "EURO"),
            &[r#"details.currency: "EURO" is not an ISO 4217 currency code"#],
        );
        check(
            None,
            &with(FieldId::HelpRequired, "CoffeeChat"),
            &[
                r#"customerProfile.team: "CoffeeChat" a co-sell referral (Microsoft help requested) needs a customer contact"#,
                r#"details.requirements.solutions: "CoffeeChat" a co-sell referral (Microsoft help requested) needs at least one solution"#,
                r#"inviteContext.assistanceRequestCode: "CoffeeChat" is not a known choice value"#,
            ],
        );

        // Incoming referrals are checked too, and CRM rows name their column.
        let map = FieldMap::default();
        let mut r = common::private_outgoing();
        r.customer_profile
            .as_mut()
            .unwrap()
            .address
            .as_mut()
            .unwrap()
            .country = Some("Switzerland".into());
        assert_eq!(
            map.map_referral(&r, None).unwrap_err().to_string(),
            r#"customerProfile.address.country: "Switzerland" is not an ISO 3166-1 alpha-2 country code"#
        );
        let mut r = common::private_outgoing();
        r.details.as_mut().unwrap().currency = Some("XYZ".into());
        assert_eq!(
            map.snapshot_from_referral(&r).unwrap_err().rule(),
            &Rule::InvalidCurrency
        );
        let mut rec = CrmRecords::new(
            RecordKind::Opportunity,
            record(json!({"name": "x", "statecode": 0, "statuscode": 1})),
        );
        rec.account = Some(record(
            json!({"name": "Contoso", "address1_country": "Germany"}),
        ));
        assert_eq!(
            map.snapshot_from_crm(&rec, None).unwrap_err().to_string(),
            r#"account.address1_country: "Germany" is not an ISO 3166-1 alpha-2 country code"#
        );
        rec.account = Some(record(json!({"name": "Contoso", "address1_country": "de"})));
        rec.currency_code = Some("DMK".into());
        assert_eq!(
            map.snapshot_from_crm(&rec, None).unwrap_err().to_string(),
            r#"opportunity.transactioncurrencyid: "DMK" is not an ISO 4217 currency code"#
        );
    }

    #[test]
    fn crm_values_of_the_wrong_shape_are_named() {
        let map = FieldMap::default();
        let check_row = |row: Value, expected: &str| {
            let rec = CrmRecords::new(RecordKind::Opportunity, record(row));
            assert_eq!(
                map.snapshot_from_crm(&rec, None).unwrap_err().to_string(),
                expected
            );
        };
        check_row(
            json!({"estimatedvalue": "lots"}),
            r#"opportunity.estimatedvalue: "\"lots\"" should be a decimal number"#,
        );
        check_row(
            json!({"cosell_helprequired": 42}),
            r#"opportunity.cosell_helprequired: "42" is not a known choice value"#,
        );
        check_row(
            json!({"cosell_visibletomicrosoft": "yes"}),
            r#"opportunity.cosell_visibletomicrosoft: "\"yes\"" should be yes/no (a boolean)"#,
        );
        check_row(
            json!({"estimatedclosedate": "soon"}),
            r#"opportunity.estimatedclosedate: "\"soon\"" should be a date (YYYY-MM-DD)"#,
        );
        check_row(
            json!({"statecode": 9, "statuscode": 1}),
            r#"statecode: "9" is not a known choice value"#,
        );
    }

    #[test]
    fn forbidden_transitions_are_refused() {
        let map = FieldMap::default();
        let won = snap(&[(
            FieldId::Status,
            FieldValue::Status(state(St::Closed, Sub::Won)),
        )]);
        let open = snap(&[(
            FieldId::Status,
            FieldValue::Status(state(St::Active, Sub::Accepted)),
        )]);
        assert_eq!(
            map.referral_update(&won, &open).unwrap_err().to_string(),
            r#"status: "Active/Accepted" is not a transition Partner Center allows from Closed/Won"#
        );
        let ops = map.referral_update(&open, &won).unwrap().operations;
        assert_eq!(
            serde_json::to_value(ops).unwrap(),
            json!([
                {"op":"replace","path":"/status","value":"Closed"},
                {"op":"replace","path":"/substatus","value":"Won"},
            ])
        );
    }

    #[test]
    fn missing_name_and_id() {
        let map = FieldMap::default();
        let mut r = common::lead();
        r.id = None;
        assert_eq!(
            map.map_referral(&r, None).unwrap_err().to_string(),
            r#"id: "" is required"#
        );
        let s = snap(&[(FieldId::Notes, text("n"))]);
        assert_eq!(
            map.referral_create(&s, "crm-1").unwrap_err().to_string(),
            r#"name: "" is required"#
        );
    }
}

// ------------------------------------------------------------------ status map

mod status {
    use super::*;
    use pretty_assertions::assert_eq;

    fn check(
        s: ReferralState,
        existing: Option<RecordKind>,
        kind: RecordKind,
        statecode: i64,
        statuscode: i64,
    ) {
        let codes = StatusCodes::default();
        let crm = codes.crm_status(&s, existing).unwrap();
        assert_eq!(
            crm,
            CrmStatus {
                kind,
                statecode,
                statuscode
            },
            "{s}"
        );
        // Reading back with the original as hint gives it back.
        assert_eq!(codes.referral_state(crm, Some(&s)).unwrap(), s);
    }

    #[test]
    fn design_table() {
        use RecordKind::{Lead as L, Opportunity as O};
        check(state(St::New, Sub::Pending), None, L, 0, 1);
        check(state(St::New, Sub::Received), None, L, 0, 1);
        check(state(St::Active, Sub::Accepted), None, O, 0, 1);
        check(state(St::Active, Sub::Accepted), Some(L), O, 0, 1);
        check(state(St::Closed, Sub::Won), Some(O), O, 1, 3);
        check(state(St::Closed, Sub::Lost), Some(O), O, 2, 5);
        check(state(St::Closed, Sub::Declined), None, L, 2, 6);
        check(state(St::Closed, Sub::Declined), Some(L), L, 2, 6);
        check(state(St::Closed, Sub::Expired), Some(L), L, 2, 7);
        check(state(St::Closed, Sub::Declined), Some(O), O, 2, 4);
        check(state(St::Closed, Sub::Expired), Some(O), O, 2, 4);
    }

    fn check_action(
        before: (RecordKind, i64, i64),
        after: (RecordKind, i64, i64),
        expected: Option<ReferralAction>,
    ) {
        let c = |(kind, statecode, statuscode)| CrmStatus {
            kind,
            statecode,
            statuscode,
        };
        let got = StatusCodes::default()
            .action_for_change(c(before), c(after))
            .unwrap();
        assert_eq!(got, expected, "{before:?} -> {after:?}");
    }

    #[test]
    fn crm_changes_mean_accept_decline_win_lose() {
        use RecordKind::{Lead as L, Opportunity as O};
        use ReferralAction::*;
        check_action((L, 0, 1), (L, 1, 3), Some(Accept));
        check_action((L, 0, 1), (O, 0, 1), Some(Accept));
        check_action((L, 0, 1), (L, 2, 4), Some(Decline));
        check_action((L, 0, 2), (L, 2, 7), Some(Decline));
        check_action((O, 0, 1), (O, 1, 3), Some(Win));
        check_action((O, 0, 2), (O, 2, 5), Some(Lose));
        check_action((O, 0, 1), (O, 2, 4), Some(Lose));
        check_action((O, 0, 1), (O, 0, 2), None);
        check_action((O, 1, 3), (O, 0, 1), None);
        check_action((L, 0, 1), (L, 0, 2), None);
    }

    #[test]
    fn canonical_reading_without_a_hint() {
        let codes = StatusCodes::default();
        let read = |kind, statecode, statuscode| {
            codes
                .referral_state(
                    CrmStatus {
                        kind,
                        statecode,
                        statuscode,
                    },
                    None,
                )
                .unwrap()
                .to_string()
        };
        assert_eq!(read(RecordKind::Lead, 0, 2), "New/Received");
        assert_eq!(read(RecordKind::Lead, 1, 3), "Active/Accepted");
        assert_eq!(read(RecordKind::Lead, 2, 7), "Closed/Declined");
        assert_eq!(read(RecordKind::Opportunity, 2, 4), "Closed/Lost");
        // An expired referral stays expired when the CRM still says what we wrote.
        let expired = state(St::Closed, Sub::Expired);
        let crm = codes.crm_status(&expired, None).unwrap();
        assert_eq!(codes.referral_state(crm, Some(&expired)).unwrap(), expired);
    }

    fn check_steps(
        from: Option<(RecordKind, i64, i64)>,
        to: (RecordKind, i64, i64),
        expected: Value,
    ) {
        let c = |(kind, statecode, statuscode)| CrmStatus {
            kind,
            statecode,
            statuscode,
        };
        let steps = StatusCodes::default().steps(from.map(c), c(to));
        assert_eq!(serde_json::to_value(steps).unwrap(), expected);
    }

    #[test]
    fn steps_to_a_state() {
        use RecordKind::{Lead as L, Opportunity as O};
        check_steps(None, (L, 0, 1), json!([]));
        check_steps(
            Some((L, 0, 1)),
            (O, 0, 1),
            json!([{"operation":"qualify_lead","status":3}]),
        );
        check_steps(
            Some((L, 0, 1)),
            (O, 1, 3),
            json!([{"operation":"qualify_lead","status":3},{"operation":"win_opportunity","status":3}]),
        );
        check_steps(
            Some((O, 0, 1)),
            (O, 2, 5),
            json!([{"operation":"lose_opportunity","status":5}]),
        );
        check_steps(
            None,
            (O, 1, 3),
            json!([{"operation":"win_opportunity","status":3}]),
        );
        check_steps(
            Some((L, 0, 1)),
            (L, 2, 6),
            json!([{"operation":"set_state","kind":"lead","statecode":2,"statuscode":6}]),
        );
        check_steps(
            Some((O, 1, 3)),
            (O, 0, 1),
            json!([{"operation":"set_state","kind":"opportunity","statecode":0,"statuscode":1}]),
        );
        check_steps(Some((L, 1, 3)), (O, 0, 1), json!([]));
    }

    #[test]
    fn lead_qualifies_into_opportunity_payload() {
        let map = FieldMap::default();
        let lead = map.map_referral(&common::lead(), None).unwrap();
        assert_eq!(
            (
                lead.kind,
                lead.entity.as_str(),
                lead.key.entity_set.as_str()
            ),
            (RecordKind::Lead, "lead", "leads")
        );
        let mut accepted = common::lead();
        accepted.status = Some(St::Active);
        accepted.substatus = Some(Sub::Accepted);
        let opp = map.map_referral(&accepted, Some(RecordKind::Lead)).unwrap();
        assert_eq!(opp.kind, RecordKind::Opportunity);
        assert_eq!(
            opp.key.value, lead.key.value,
            "the link (referral id) is kept"
        );
    }
}

// ------------------------------------------------------------------ diff and merge

mod merging {
    use super::*;
    use pretty_assertions::assert_eq;

    type Fields = &'static [(FieldId, &'static str)];

    fn s(fields: Fields) -> MappedSnapshot {
        fields.iter().map(|(f, v)| (*f, text(v))).collect()
    }

    /// Merges and compares the merged snapshot and the conflicts as `(field, winner)`.
    fn check(
        base: Fields,
        crm: Fields,
        pc: Fields,
        expected: Fields,
        conflicts: &[(FieldId, Side)],
    ) {
        let m = merge(&s(base), &s(crm), &s(pc), &OwnershipPolicy::default());
        assert_eq!(m.merged, s(expected));
        let got: Vec<_> = m.conflicts.iter().map(|c| (c.field, c.winner)).collect();
        assert_eq!(got, conflicts);
    }

    use FieldId::*;

    #[test]
    fn table() {
        // Nothing changed.
        check(
            &[(Name, "a")],
            &[(Name, "a")],
            &[(Name, "a")],
            &[(Name, "a")],
            &[],
        );
        // One side changed (either side, including removal and addition).
        check(
            &[(Name, "a")],
            &[(Name, "b")],
            &[(Name, "a")],
            &[(Name, "b")],
            &[],
        );
        check(
            &[(Name, "a")],
            &[(Name, "a")],
            &[(Name, "b")],
            &[(Name, "b")],
            &[],
        );
        check(&[(Notes, "a")], &[], &[(Notes, "a")], &[], &[]);
        check(&[], &[], &[(Notes, "n")], &[(Notes, "n")], &[]);
        // Both changed the same way: no conflict.
        check(
            &[(Notes, "a")],
            &[(Notes, "b")],
            &[(Notes, "b")],
            &[(Notes, "b")],
            &[],
        );
        // Both changed differently: ownership decides.
        check(
            &[(Notes, "a")],
            &[(Notes, "crm")],
            &[(Notes, "pc")],
            &[(Notes, "crm")],
            &[(Notes, Side::Crm)],
        );
        check(
            &[(MicrosoftCrmId, "a")],
            &[(MicrosoftCrmId, "crm")],
            &[(MicrosoftCrmId, "pc")],
            &[(MicrosoftCrmId, "pc")],
            &[(MicrosoftCrmId, Side::PartnerCenter)],
        );
        check(
            &[(Notes, "a")],
            &[],
            &[(Notes, "pc")],
            &[],
            &[(Notes, Side::Crm)],
        );
        // Independent fields merge.
        check(
            &[(Name, "a"), (Notes, "a")],
            &[(Name, "b"), (Notes, "a")],
            &[(Name, "a"), (Notes, "c")],
            &[(Name, "b"), (Notes, "c")],
            &[],
        );
    }

    #[test]
    fn status_and_visibility_policies() {
        let st = |a, b| FieldValue::Status(state(a, b));
        let base = snap(&[
            (Status, st(St::Active, Sub::Accepted)),
            (VisibleToMicrosoft, FieldValue::Bool(false)),
            (DealValue, FieldValue::decimal(Decimal::from(10))),
        ]);
        let crm = snap(&[
            (Status, st(St::Closed, Sub::Won)),
            (VisibleToMicrosoft, FieldValue::Bool(true)),
            (DealValue, FieldValue::decimal(Decimal::from(20))),
        ]);
        let pc = snap(&[
            (Status, st(St::Closed, Sub::Expired)),
            (DealValue, FieldValue::decimal(Decimal::from(30))),
        ]);
        let m = merge(&base, &crm, &pc, &OwnershipPolicy::default());
        assert_eq!(
            m.merged.status(),
            Some(&state(St::Closed, Sub::Expired)),
            "status follows Partner Center"
        );
        assert_eq!(
            m.merged.get(VisibleToMicrosoft),
            Some(&FieldValue::Bool(true)),
            "visibility only goes forward"
        );
        assert_eq!(
            m.merged.get(DealValue),
            Some(&FieldValue::decimal(Decimal::from(20))),
            "deal value follows the CRM"
        );
        assert_eq!(m.conflicts.len(), 3);
        let mut furthest = OwnershipPolicy::default();
        furthest.set(Status, Policy::Furthest);
        let base = snap(&[(Status, st(St::New, Sub::Received))]);
        let m = merge(
            &base,
            &snap(&[(Status, st(St::Active, Sub::Accepted))]),
            &snap(&[(Status, st(St::Closed, Sub::Won))]),
            &furthest,
        );
        assert_eq!(m.merged.status(), Some(&state(St::Closed, Sub::Won)));
        assert_eq!(
            m.conflicts[0].to_string(),
            r#"conflict on status: base {"kind":"status","value":{"status":"New","substatus":"Received"}}, crm {"kind":"status","value":{"status":"Active","substatus":"Accepted"}}, partner_center {"kind":"status","value":{"status":"Closed","substatus":"Won"}}; partner_center wins (Furthest)"#
        );
    }

    #[test]
    fn diff_lists_changes_in_field_order() {
        let base = s(&[(Name, "a"), (Notes, "x"), (City, "c")]);
        let cur = s(&[(Name, "a"), (City, "d"), (Currency, "USD")]);
        let fields: Vec<_> = diff(&base, &cur).iter().map(|c| c.field).collect();
        assert_eq!(fields, [Currency, Notes, City]);
        assert!(cur.changes_since(&cur).is_empty());
    }

    #[test]
    fn snapshot_is_stable_json() {
        let map = FieldMap::default();
        let s = map.snapshot_from_referral(&common::won_deal()).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        let back: MappedSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        assert!(
            json.starts_with(
                r#"{"name":{"kind":"text","value":"Northwind Azure migration"},"status":"#
            ),
            "{json}"
        );
        assert!(
            json.contains(r#""deal_value":{"kind":"decimal","value":"250000"}"#),
            "{json}"
        );
    }
}

// ------------------------------------------------------------------ account matching

mod matching {
    use super::*;
    use pretty_assertions::assert_eq;

    fn check(toml: &str, name: &str, postal: &str, candidate: Value, expected: bool) {
        let map = FieldMap::from_toml(toml).unwrap();
        let s = snap(&[
            (FieldId::CustomerName, text(name)),
            (FieldId::PostalCode, text(postal)),
        ]);
        let cands = [
            record(json!({"name": "Someone Else", "address1_postalcode": "1"})),
            record(candidate),
        ];
        let got = map.find_account(&s, cands.iter());
        assert_eq!(got == Some(1), expected, "{name} {postal}");
    }

    #[test]
    fn table() {
        let d = "";
        check(
            d,
            "Contoso Ltd",
            "98052",
            json!({"name": "Contoso Ltd", "address1_postalcode": "98052"}),
            true,
        );
        check(
            d,
            "Contoso Ltd",
            "98052",
            json!({"name": "CONTOSO  ltd ", "address1_postalcode": "98 052"}),
            true,
        );
        check(
            d,
            "Contoso Ltd",
            "98052",
            json!({"name": "Contoso Ltd", "address1_postalcode": "98053"}),
            false,
        );
        check(
            d,
            "Contoso Ltd",
            "98052",
            json!({"name": "Contoso", "address1_postalcode": "98052"}),
            false,
        );
        check(
            d,
            "Contoso Ltd",
            "98052",
            json!({"name": "Contoso Ltd"}),
            false,
        );
        check(
            "[account_matching]\nignore_case = false",
            "Contoso",
            "1",
            json!({"name": "contoso", "address1_postalcode": "1"}),
            false,
        );
        check(
            "[account_matching]\nignore_whitespace = false",
            "Contoso Ltd",
            "1",
            json!({"name": "ContosoLtd", "address1_postalcode": "1"}),
            false,
        );
        check(
            "[account_matching]\nfields = [\"customer_name\"]",
            "Contoso",
            "1",
            json!({"name": "contoso", "address1_postalcode": "2"}),
            true,
        );
    }

    #[test]
    fn blank_key_never_matches_and_hints_name_columns() {
        let map = FieldMap::default();
        let blank = MappedSnapshot::new();
        assert_eq!(map.find_account(&blank, [record(json!({}))].iter()), None);
        let s = map
            .snapshot_from_referral(&common::co_sell_incoming())
            .unwrap();
        assert_eq!(
            map.account_query_hints(&s),
            [
                ("name".to_string(), "Contoso Customer Inc".to_string()),
                ("address1_postalcode".to_string(), "98052".to_string()),
            ]
        );
        let p = map
            .to_crm(
                &s,
                &ReferralIdentity {
                    referral_id: "r".into(),
                    engagement_id: None,
                },
                None,
            )
            .unwrap();
        assert_eq!(
            p.account.unwrap().match_key.0,
            ["contosocustomerinc", "98052"]
        );
        assert_eq!(
            p.contacts[0].match_key.as_deref(),
            Some("sue.smith@contoso.com")
        );
    }
}

// ------------------------------------------------------------------ lookups

#[test]
fn binds_resolve_or_name_the_lookup() {
    let map = FieldMap::default();
    let p = map.map_referral(&common::co_sell_incoming(), None).unwrap();
    let err = p.body(&ResolvedIds::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"customerid_account: "" has not been resolved to a record id"#
    );
    let err = p
        .body(&ResolvedIds {
            account: Some("a".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"transactioncurrencyid: "USD" has not been resolved to a record id"#
    );
    let body = p
        .body(&ResolvedIds {
            account: Some("a".into()),
            currency: Some("c".into()),
            contacts: vec![Some("k".into())],
        })
        .unwrap();
    assert_eq!(body["parentcontactid@odata.bind"], "/contacts(k)");
    assert_eq!(
        body["transactioncurrencyid@odata.bind"],
        "/transactioncurrencies(c)"
    );
    let contact = p.contacts[0].body(Some("a"), "accounts").unwrap();
    assert_eq!(
        contact["parentcustomerid_account@odata.bind"],
        "/accounts(a)"
    );
    let key = AlternateKey {
        entity_set: "accounts".into(),
        column: "name".into(),
        value: "O'Neil".into(),
    };
    assert_eq!(key.path(), "/accounts(name='O''Neil')");
}

#[test]
fn changed_columns_for_a_patch() {
    let map = FieldMap::default();
    let base = map.map_referral(&common::co_sell_incoming(), None).unwrap();
    let mut r = common::co_sell_incoming();
    r.details.as_mut().unwrap().notes = None;
    r.details.as_mut().unwrap().deal_value = Some(Decimal::new(6000050, 2));
    let cur = map.map_referral(&r, None).unwrap();
    assert_eq!(
        Value::Object(cur.changed_columns(&base)),
        json!({"description": null, "estimatedvalue": 60000.5})
    );
    assert!(cur.changed_columns(&cur).is_empty());
}

#[test]
fn sync_flag_and_referral_id_of_rows() {
    let map = FieldMap::default();
    let row = record(json!({"cosell_syncwithpartnercenter": true, "cosell_referralid": "r1"}));
    assert!(map.sync_enabled(RecordKind::Opportunity, &row));
    assert!(!map.sync_enabled(
        RecordKind::Opportunity,
        &record(json!({"cosell_syncwithpartnercenter": null}))
    ));
    assert_eq!(
        map.referral_id_of(RecordKind::Lead, &row).as_deref(),
        Some("r1")
    );
}

#[test]
fn referral_create_from_crm_records() {
    let map = FieldMap::default();
    let mut rec = CrmRecords::new(
        RecordKind::Opportunity,
        record(json!({
            "name": "✖ Contoso expansion", "statecode": 0, "statuscode": 1,
            "estimatedvalue": 1500.25, "estimatedclosedate": "2025-09-30", "description": "Upsell",
            "cosell_helprequired": 100000003, "cosell_syncwithpartnercenter": true,
            "transactioncurrencyid": {"isocurrencycode": "EUR"}
        })),
    );
    rec.account = Some(record(
        json!({"name": "Contoso GmbH", "address1_postalcode": "10115", "address1_city": "Berlin", "address1_country": "DE"}),
    ));
    rec.contacts = Some(vec![record(
        json!({"firstname": "Eva", "lastname": "Klein", "emailaddress1": "eva@contoso.de"}),
    )]);
    rec.solutions = Some(vec![record(
        json!({"cosell_solutionid": "SOL-1", "cosell_name": "Suite"}),
    )]);
    let s = map.snapshot_from_crm(&rec, None).unwrap();
    let referral = map
        .referral_create(&s, "00000000-0000-0000-0000-00000000c0de")
        .unwrap();
    insta::assert_json_snapshot!("create_from_crm", referral);
    // Without a contact the co-sell rule refuses it.
    rec.contacts = Some(vec![]);
    let s = map.snapshot_from_crm(&rec, None).unwrap();
    assert_eq!(
        map.referral_create(&s, "x").unwrap_err().rule(),
        &Rule::CoSellNeedsContact
    );
}
