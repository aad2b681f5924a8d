//! Listing through the timestamp indexes answers what a filter-then-stable-sort of every stored
//! referral answers, page by page, and pages by skip as the documented pager does.

use axum::http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use super::referrals::list_inner;
use super::{PartnerCenterEmulator, filter};
use crate::Sandbox;
use crate::entra::REFERRALS_AUDIENCE;

fn emulator(n: usize) -> (Sandbox, PartnerCenterEmulator) {
    let sandbox = Sandbox::builder().seed(9).start_in_process().unwrap();
    let pc = sandbox.partner_center().clone();
    pc.seed_referrals(n);
    (sandbox, pc)
}

fn headers(pc: &PartnerCenterEmulator) -> HeaderMap {
    let token = pc.context().entra.issue_access_token(REFERRALS_AUDIENCE);
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn page(pc: &PartnerCenterEmulator, query: &str) -> (Vec<String>, Option<String>, u64) {
    let v = list_inner(pc, &headers(pc), Some(query)).unwrap();
    let ids = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let next = v["@odata.nextLink"]
        .as_str()
        .map(|n| n.split_once('?').unwrap().1.to_string());
    (ids, next, v["@odata.count"].as_u64().unwrap())
}

/// Every page of a listing, following `@odata.nextLink`.
fn all_pages(pc: &PartnerCenterEmulator, query: &str) -> (Vec<String>, u64) {
    let (mut ids, mut next, count) = page(pc, query);
    while let Some(q) = next {
        let (more, n, _) = page(pc, &q);
        ids.extend(more);
        next = n;
    }
    (ids, count)
}

/// The reference: filter every stored referral of ours, then a stable sort.
fn reference(pc: &PartnerCenterEmulator, f: Option<&str>, keys: &[(&str, bool)]) -> Vec<String> {
    let f = f.map(|f| filter::parse(f).unwrap());
    let mut rows: Vec<Value> = pc
        .referrals()
        .into_iter()
        .filter(|r| r["organizationId"] != json!(super::MICROSOFT_ORGANIZATION_ID))
        .filter(|r| f.as_ref().is_none_or(|f| filter::matches(f, r)))
        .collect();
    rows.sort_by(|a, b| {
        for (k, desc) in keys {
            let o = a[k]
                .as_str()
                .unwrap_or_default()
                .cmp(b[k].as_str().unwrap_or_default());
            let o = if *desc { o.reverse() } else { o };
            if o.is_ne() {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    });
    rows.iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

fn encode(q: &str) -> String {
    url::form_urlencoded::byte_serialize(q.as_bytes()).collect()
}

#[tokio::test]
async fn indexed_listings_match_filter_then_sort_on_every_page() {
    let (_sb, pc) = emulator(260);
    // Cut the updated times in the middle, at a stored value (`ge` includes it, `gt` not).
    let mut updated: Vec<String> = pc
        .referrals()
        .iter()
        .map(|r| r["updatedDateTime"].as_str().unwrap().to_string())
        .collect();
    updated.sort();
    let mid = updated[updated.len() / 2].clone();
    let created_mid = pc.referrals()[100]["createdDateTime"]
        .as_str()
        .unwrap()
        .to_string();
    type Case = (Option<String>, Vec<(&'static str, bool)>);
    let cases: Vec<Case> = vec![
        (None, vec![]),
        (None, vec![("updatedDateTime", false)]),
        (None, vec![("createdDateTime", true)]),
        (
            Some(format!("updatedDateTime ge {mid}")),
            vec![("updatedDateTime", false)],
        ),
        (
            Some(format!("updatedDateTime gt {mid}")),
            vec![("updatedDateTime", false)],
        ),
        (
            Some(format!("updatedDateTime ge {mid}")),
            vec![("updatedDateTime", true)],
        ),
        (Some(format!("updatedDateTime ge {mid}")), vec![]),
        (
            Some(format!("updatedDateTime ge '{mid}'")),
            vec![("createdDateTime", false)],
        ),
        (
            Some(format!("status eq 'Active' and updatedDateTime ge {mid}")),
            vec![("updatedDateTime", false)],
        ),
        (
            Some(format!(
                "direction eq 'Incoming' and updatedDateTime gt {created_mid}"
            )),
            vec![("createdDateTime", true)],
        ),
        (
            Some(format!("updatedDateTime ge {mid} or status eq 'New'")),
            vec![("updatedDateTime", true)],
        ),
        (
            Some("updatedDateTime ge 2000-01-01".to_string()),
            vec![("updatedDateTime", false), ("createdDateTime", true)],
        ),
    ];
    for (f, keys) in cases {
        let mut q = Vec::new();
        if let Some(f) = &f {
            q.push(format!("$filter={}", encode(f)));
        }
        if !keys.is_empty() {
            let o: Vec<String> = keys
                .iter()
                .map(|(k, d)| format!("{k} {}", if *d { "desc" } else { "asc" }))
                .collect();
            q.push(format!("$orderby={}", encode(&o.join(","))));
        }
        let (ids, count) = all_pages(&pc, &q.join("&"));
        let want = reference(&pc, f.as_deref(), &keys);
        assert!(!want.is_empty(), "{f:?} selects something");
        assert_eq!(count, want.len() as u64, "count of {f:?} {keys:?}");
        assert_eq!(ids, want, "listing of {f:?} {keys:?}");
    }
}

#[tokio::test]
async fn a_referral_updated_during_a_listing_moves_as_a_skip_pager_moves_it() {
    let (_sb, pc) = emulator(230);
    let q = format!(
        "$filter={}&$orderby={}",
        encode("updatedDateTime ge 2000-01-01T00:00:00Z"),
        encode("updatedDateTime asc")
    );
    let before = reference(&pc, None, &[("updatedDateTime", false)]);
    let (first, next, _) = page(&pc, &q);
    assert_eq!(first, before[..100]);
    // Microsoft updates a referral already listed: it moves to the end of the order.
    let moved = first
        .iter()
        .find(|id| {
            pc.referral(id)
                .is_some_and(|r| r["status"] == json!("Active"))
        })
        .unwrap()
        .clone();
    pc.update_as_microsoft(
        &moved,
        json!([{"op": "replace", "path": "/name", "value": "Renamed"}]),
    )
    .unwrap();
    let after = reference(&pc, None, &[("updatedDateTime", false)]);
    assert_eq!(after.last(), Some(&moved));
    // The next page skips 100 of the new order: one referral shifts onto the page already read
    // (a skip pager misses it this pass), and the moved one comes again at the end.
    let (second, next, _) = page(&pc, &next.unwrap());
    assert_eq!(second, after[100..200]);
    let (third, end, _) = page(&pc, &next.unwrap());
    assert_eq!(third, after[200..]);
    assert!(end.is_none());
    let missed = &before[100];
    assert!(!first.contains(missed) && !second.contains(missed) && !third.contains(missed));
    assert_eq!(third.last(), Some(&moved));
}

#[tokio::test]
async fn point_reads_and_seeding_keep_the_indexes() {
    let (_sb, pc) = emulator(50);
    let s = pc.lock();
    assert_eq!(s.by_updated.len(), 50);
    assert_eq!(s.by_created.len(), 50);
    assert!(!s.odd_timestamps);
    for (i, r) in s.referrals.iter().enumerate() {
        let id = r.body["id"].as_str().unwrap();
        assert_eq!(s.index.get(id), Some(&i));
        assert!(
            s.by_updated
                .contains(&(super::timestamp(&r.body, "updatedDateTime"), i))
        );
    }
}

#[tokio::test]
async fn an_engagement_listing_comes_from_the_engagement_index() {
    let (_sb, pc) = emulator(40);
    let ours = pc.referrals()[7].clone();
    let engagement = ours["engagementId"].as_str().unwrap().to_string();
    let related = pc.add_related_referral(&engagement, json!({})).unwrap();
    pc.seed_referrals(5);
    for f in [
        format!("engagementId eq '{}'", engagement.to_uppercase()),
        format!("engagementId eq {engagement} and status eq 'Active'"),
    ] {
        let (ids, count) = all_pages(&pc, &format!("$filter={}", encode(&f)));
        let parsed = filter::parse(&f).unwrap();
        let want: Vec<String> = pc
            .referrals()
            .iter()
            .filter(|r| filter::matches(&parsed, r))
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, want, "{f}");
        assert_eq!(count, want.len() as u64);
        assert!(
            ids.contains(&related["id"].as_str().unwrap().to_string()),
            "{f}"
        );
    }
}
