//! Property tests: round trips and merge laws.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{NaiveDate, TimeZone, Utc};
use cosell_mapping::*;
use partner_center_client::models::{
    Address, AssistanceRequestCode, Consent, CustomerProfile, InviteContext, Member, Referral,
    ReferralDetails, ReferralStatus as St, ReferralSubstatus as Sub, Requirements, SolutionTag,
    SolutionType, TrackingInfo,
};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::Value;

fn text() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[A-Za-z0-9][A-Za-z0-9 ,.'&-]{0,20}")
}

fn state() -> impl Strategy<Value = (St, Sub)> {
    prop::sample::select(vec![
        (St::New, Sub::Pending),
        (St::New, Sub::Received),
        (St::Active, Sub::Accepted),
        (St::Closed, Sub::Won),
        (St::Closed, Sub::Lost),
        (St::Closed, Sub::Declined),
        (St::Closed, Sub::Expired),
    ])
}

fn money() -> impl Strategy<Value = Decimal> {
    // Up to 10^12 with two decimals: Dataverse's Money range.
    (0i64..100_000_000_000_000).prop_map(|cents| Decimal::new(cents, 2))
}

fn member() -> impl Strategy<Value = Member> {
    (
        text(),
        text(),
        prop::option::of("[a-z]{1,8}@[a-z]{1,8}\\.com"),
        text(),
    )
        .prop_map(|(first_name, last_name, email, phone_number)| Member {
            first_name: first_name.or(Some("X".into())),
            last_name,
            email,
            phone_number,
            ..Default::default()
        })
}

fn solution() -> impl Strategy<Value = SolutionTag> {
    ("SOL-[0-9]{3,6}-[A-Z]{3}", text(), text()).prop_map(|(id, name, publisher_name)| SolutionTag {
        id,
        name,
        r#type: Some(SolutionType::Name),
        publisher_name,
        ..Default::default()
    })
}

prop_compose! {
    fn referral()(
        name in "[A-Za-z][A-Za-z0-9 ]{0,30}",
        st in state(),
        deal in prop::option::of(money()),
        currency in prop::option::of(prop::sample::select(vec!["USD", "EUR", "GBP", "CHF", "JPY"])),
        close in prop::option::of(0u32..3650),
        notes in text(),
        help in prop::option::of(prop::sample::select(AssistanceRequestCode::KNOWN.to_vec())),
        visible in prop::option::of(any::<bool>()),
        msx in prop::option::of("[0-9]-[A-Z0-9]{8}"),
        customer in text(),
        line1 in text(), line2 in text(), city in text(), st_ in text(), postal in text(),
        country in prop::option::of(prop::sample::select(vec!["US", "DE", "FR", "CH", "GB", "JP"])),
        team in prop::collection::vec(member(), 0..3),
        solutions in prop::collection::vec(solution(), 0..3),
    ) -> Referral {
        Referral {
            id: Some("11111111-2222-3333-4444-555555555555".into()),
            engagement_id: Some("eng-1".into()),
            name: Some(name),
            status: Some(st.0),
            substatus: Some(st.1),
            details: Some(ReferralDetails {
                deal_value: deal,
                currency: currency.map(str::to_string),
                closing_date_time: close.map(|d| {
                    Utc.from_utc_datetime(&(NaiveDate::from_ymd_opt(2024, 1, 1).unwrap() + chrono::Days::new(d.into())).and_hms_opt(0, 0, 0).unwrap())
                }),
                notes,
                requirements: Some(Requirements { solutions: Some(solutions), ..Default::default() }),
                ..Default::default()
            }),
            invite_context: help.map(|h| InviteContext { assistance_request_code: Some(h), ..Default::default() }),
            consent: Some(Consent { consent_to_share_referral_with_microsoft_sellers: visible, ..Default::default() }),
            tracking_info: msx.map(|m| TrackingInfo { microsoft_msx_id: Some(m), ..Default::default() }),
            customer_profile: Some(CustomerProfile {
                name: customer,
                address: Some(Address {
                    address_line1: line1, address_line2: line2, city, state: st_, postal_code: postal,
                    country: country.map(str::to_string), ..Default::default()
                }),
                team: Some(team),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Applies `replace` operations to a referral's JSON (the subset of RFC 6902 the mapping emits).
fn apply_patch(
    referral: &Referral,
    ops: &[partner_center_client::models::PatchOperation],
) -> Referral {
    let mut v = serde_json::to_value(referral).unwrap();
    for op in ops {
        let mut parts: Vec<&str> = op.path.trim_start_matches('/').split('/').collect();
        let last = parts.pop().unwrap();
        let mut at = &mut v;
        for p in parts {
            if at.get(p).is_none_or(Value::is_null) {
                at[p] = Value::Object(Default::default());
            }
            at = at.get_mut(p).unwrap();
        }
        at[last] = op.value.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn snapshot_value() -> impl Strategy<Value = Option<FieldValue>> {
    prop::option::of(prop::sample::select(vec![
        FieldValue::Text("a".into()),
        FieldValue::Text("b".into()),
        FieldValue::Text("c".into()),
    ]))
}

fn status_value() -> impl Strategy<Value = Option<FieldValue>> {
    prop::option::of(state().prop_map(|(a, b)| FieldValue::Status(ReferralState::new(a, b))))
}

fn bool_value() -> impl Strategy<Value = Option<FieldValue>> {
    prop::option::of(any::<bool>().prop_map(FieldValue::Bool))
}

fn snapshot() -> impl Strategy<Value = MappedSnapshot> {
    (
        snapshot_value(),
        status_value(),
        snapshot_value(),
        bool_value(),
        snapshot_value(),
        snapshot_value(),
    )
        .prop_map(|(name, status, notes, visible, msx, city)| {
            let mut s = MappedSnapshot::new();
            s.set_opt(FieldId::Name, name);
            s.set_opt(FieldId::Status, status);
            s.set_opt(FieldId::Notes, notes);
            s.set_opt(FieldId::VisibleToMicrosoft, visible);
            s.set_opt(FieldId::MicrosoftCrmId, msx);
            s.set_opt(FieldId::City, city);
            s
        })
}

fn policy() -> impl Strategy<Value = OwnershipPolicy> {
    prop::collection::vec(
        prop::sample::select(vec![Policy::Crm, Policy::PartnerCenter]),
        18,
    )
    .prop_map(|ps| {
        let mut p = OwnershipPolicy::default();
        for (f, pol) in FieldId::ALL.iter().zip(ps) {
            if !matches!(f, FieldId::Status | FieldId::VisibleToMicrosoft) {
                p.set(*f, pol);
            }
        }
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Referral -> CRM -> referral keeps every mapped field.
    #[test]
    fn referral_crm_round_trip(r in referral()) {
        let map = FieldMap::default();
        let s = map.snapshot_from_referral(&r).unwrap();
        let existing = match s.status().map(|s| s.substatus.clone()) {
            Some(Sub::Declined | Sub::Expired) => None,
            _ => Some(RecordKind::Opportunity),
        };
        let payload = map.to_crm(&s, &ReferralIdentity::of(&r).unwrap(), existing).unwrap();
        let back = map.snapshot_from_crm(&map.written_records(&payload), Some(&s)).unwrap();
        // An opportunity is bound to one contact: the first comes back, the others do not.
        let mut s = s;
        if payload.kind == RecordKind::Opportunity && s.contacts().len() > 1 {
            let first = s.contacts()[..1].to_vec();
            s.set(FieldId::Contacts, FieldValue::Contacts(first));
        }
        prop_assert_eq!(&back, &s);
        // With no base at all, everything an opportunity carries still comes back, and the
        // status reads back canonically.
        if payload.kind == RecordKind::Opportunity {
            let fresh = map.snapshot_from_crm(&map.written_records(&payload), None).unwrap();
            let mut a = fresh.clone();
            let mut b = s.clone();
            a.remove(FieldId::Status);
            b.remove(FieldId::Status);
            prop_assert_eq!(a, b);
        }
    }

    /// CRM -> referral (create) keeps every mapped field but the status (created New/Pending),
    /// and visibility, which a help request implies.
    #[test]
    fn create_round_trip(r in referral()) {
        let map = FieldMap::default();
        let mut s = map.snapshot_from_referral(&r).unwrap();
        prop_assume!(map.check_outgoing(&s, None).is_empty());
        let created = map.referral_create(&s, "crm-id").unwrap();
        prop_assert_eq!(created.external_reference_id.as_deref(), Some("crm-id"));
        let mut back = map.snapshot_from_referral(&created).unwrap();
        s.remove(FieldId::Status);
        back.remove(FieldId::Status);
        s.remove(FieldId::VisibleToMicrosoft);
        back.remove(FieldId::VisibleToMicrosoft);
        prop_assert_eq!(back, s);
    }

    /// Patching a referral from `base` to `target` gives `target` on every writable field.
    #[test]
    fn patch_round_trip(a in referral(), b in referral()) {
        let map = FieldMap::default();
        let base = map.snapshot_from_referral(&a).unwrap();
        let target = map.snapshot_from_referral(&b).unwrap();
        if let Ok(up) = map.referral_update(&base, &target) {
            let patched = map.snapshot_from_referral(&apply_patch(&a, &up.operations)).unwrap();
            for f in FieldId::ALL {
                if up.not_writable.contains(&f) || f == FieldId::VisibleToMicrosoft {
                    continue;
                }
                prop_assert_eq!(patched.get(f), target.get(f), "{}", f);
            }
        }
    }

    /// merge(b, x, x) == x.
    #[test]
    fn merge_is_idempotent(b in snapshot(), x in snapshot(), p in policy()) {
        let m = merge(&b, &x, &x, &p);
        prop_assert_eq!(m.merged, x);
        prop_assert!(m.conflicts.is_empty());
    }

    /// Swapping the sides and mirroring the policy mirrors the result.
    #[test]
    fn merge_is_symmetric(b in snapshot(), x in snapshot(), y in snapshot(), p in policy()) {
        let m = merge(&b, &x, &y, &p);
        let n = merge(&b, &y, &x, &p.mirrored());
        prop_assert_eq!(&m.merged, &n.merged);
        let mirrored: Vec<_> = n.conflicts.iter().map(Conflict::mirrored).collect();
        prop_assert_eq!(m.conflicts, mirrored);
    }

    /// A field changed on one side only always takes that side's value; unchanged stays.
    #[test]
    fn merge_never_loses_a_one_sided_change(b in snapshot(), x in snapshot(), y in snapshot(), p in policy()) {
        let m = merge(&b, &x, &y, &p);
        for f in FieldId::ALL {
            let (bv, xv, yv) = (b.get(f), x.get(f), y.get(f));
            if xv != bv && yv == bv {
                prop_assert_eq!(m.merged.get(f), xv);
            }
            if yv != bv && xv == bv {
                prop_assert_eq!(m.merged.get(f), yv);
            }
            if xv != yv && xv != bv && yv != bv {
                prop_assert!(m.conflicts.iter().any(|c| c.field == f));
            }
            // Visibility never goes back.
            if f == FieldId::VisibleToMicrosoft && (xv == Some(&FieldValue::Bool(true)) || yv == Some(&FieldValue::Bool(true))) && bv != Some(&FieldValue::Bool(true)) {
                prop_assert_eq!(m.merged.get(f), Some(&FieldValue::Bool(true)));
            }
        }
    }

    /// With the pair in sync (target and both sides equal) the per-side merge is the
    /// three-way merge.
    #[test]
    fn merge_sides_of_a_settled_pair_is_merge(b in snapshot(), x in snapshot(), y in snapshot(), p in policy()) {
        let m = merge_sides(&PairState::settled(&b), &x, &y, &p);
        prop_assert_eq!(m, merge(&b, &x, &y, &p));
    }

    /// After a partial write (one side holds the target, the other its old value), a side
    /// that is read back unchanged from what it was known to hold has made no edit: the target
    /// stands and no conflict is reported. This is what keeps the engine's own half-finished
    /// write from beating a newer edit.
    #[test]
    fn pending_work_is_not_an_edit(t in snapshot(), old in snapshot(), p in policy()) {
        let state = PairState { target: &t, crm_known: &t, partner_center_known: &old };
        let m = merge_sides(&state, &t, &old, &p);
        prop_assert_eq!(&m.merged, &t);
        prop_assert!(m.conflicts.is_empty());
        // The answer of the pending write was lost but it landed: still nothing to decide.
        let m = merge_sides(&state, &t, &t, &p);
        prop_assert_eq!(&m.merged, &t);
        prop_assert!(m.conflicts.is_empty());
    }

    /// A field edited on one side only (differs from what that side was known to hold and from
    /// the target) always takes that side's value, whatever state the pair was in.
    #[test]
    fn merge_sides_never_loses_a_one_sided_edit(
        t in snapshot(), kc in snapshot(), kp in snapshot(), x in snapshot(), y in snapshot(), p in policy()
    ) {
        let state = PairState { target: &t, crm_known: &kc, partner_center_known: &kp };
        let m = merge_sides(&state, &x, &y, &p);
        for f in FieldId::ALL {
            let crm_edit = x.get(f) != kc.get(f) && x.get(f) != t.get(f);
            let pc_edit = y.get(f) != kp.get(f) && y.get(f) != t.get(f);
            match (crm_edit, pc_edit) {
                (true, false) => prop_assert_eq!(m.merged.get(f), x.get(f)),
                (false, true) => prop_assert_eq!(m.merged.get(f), y.get(f)),
                (false, false) => prop_assert_eq!(m.merged.get(f), t.get(f)),
                (true, true) => prop_assert!(
                    m.merged.get(f) == x.get(f) || m.merged.get(f) == y.get(f)
                ),
            }
        }
    }

    /// Snapshots survive storage.
    #[test]
    fn snapshot_serde_round_trip(r in referral()) {
        let s = FieldMap::default().snapshot_from_referral(&r).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        prop_assert_eq!(serde_json::from_str::<MappedSnapshot>(&json).unwrap(), s);
    }

    /// Marking is idempotent and keeps the bare name.
    #[test]
    fn marks_are_idempotent(name in "[A-Za-z✔✖ ]{0,12}", o1 in any::<bool>(), o2 in any::<bool>()) {
        let out = |b| if b { SyncOutcome::Success } else { SyncOutcome::Failure };
        let once = apply_mark(&name, out(o1));
        let twice = apply_mark(&once, out(o2));
        prop_assert_eq!(strip_mark(&twice), strip_mark(&once));
        prop_assert_eq!(strip_mark(&once).trim_start(), strip_mark(&name).trim_start());
        prop_assert_eq!(twice.chars().next(), Some(out(o2).mark()));
        prop_assert_eq!(apply_mark(&twice, out(o2)), twice.clone());
    }
}
