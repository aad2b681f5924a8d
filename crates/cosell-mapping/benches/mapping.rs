//! Mapping throughput: referrals mapped per second (referral → snapshot → CRM payload), and
//! the read-back + merge the engine does per event.

#![allow(missing_docs)]

use std::hint::black_box;

use cosell_mapping::{FieldMap, RecordKind, merge};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use partner_center_client::models::Referral;

fn referral(i: usize) -> Referral {
    serde_json::from_value(serde_json::json!({
        "id": format!("4111fffc-f9ee-4d53-bba6-{i:012}"),
        "engagementId": "37ef26aa-1d15-4533-9f93-a69bd33ab1e5",
        "name": format!("Contoso deal {i}"),
        "status": "Active", "substatus": "Accepted",
        "customerProfile": {
            "name": "Contoso Customer Inc",
            "address": { "addressLine1": "One Microsoft Way", "city": "Redmond", "state": "WA",
                         "postalCode": "98052", "country": "US" },
            "team": [ { "firstName": "Sue", "lastName": "Smith", "email": "sue.smith@contoso.com" } ]
        },
        "consent": { "consentToShareReferralWithMicrosoftSellers": true },
        "details": { "notes": "Customer wants Dynamics 365.", "dealValue": 50000.25, "currency": "USD",
                     "closingDateTime": "2024-11-14T00:00:00Z",
                     "requirements": { "solutions": [ { "id": "SOL-34104-EBB", "name": "Suite", "type": "Name" } ] } },
        "inviteContext": { "assistanceRequestCode": "CustomerTechnicalArchitecture" }
    }))
    .unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let map = FieldMap::default();
    let referrals: Vec<Referral> = (0..100).map(referral).collect();
    let mut group = c.benchmark_group("mapping");
    group.throughput(Throughput::Elements(referrals.len() as u64));
    group.bench_function("referral_to_crm_payload", |b| {
        b.iter(|| {
            for r in &referrals {
                black_box(
                    map.map_referral(black_box(r), Some(RecordKind::Opportunity))
                        .ok(),
                );
            }
        })
    });
    let snapshots: Vec<_> = referrals
        .iter()
        .filter_map(|r| map.snapshot_from_referral(r).ok())
        .collect();
    let records: Vec<_> = referrals
        .iter()
        .filter_map(|r| map.map_referral(r, Some(RecordKind::Opportunity)).ok())
        .map(|p| map.written_records(&p))
        .collect();
    group.bench_function("crm_read_back_and_merge", |b| {
        b.iter(|| {
            for (rec, base) in records.iter().zip(&snapshots) {
                if let Ok(crm) = map.snapshot_from_crm(black_box(rec), Some(base)) {
                    black_box(merge(base, &crm, base, map.ownership()));
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
