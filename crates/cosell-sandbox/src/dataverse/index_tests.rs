//! The store's indexes stay exact under every write, and indexed reads answer what scans do.

use std::collections::{BTreeMap, HashMap};

use axum::http::{HeaderMap, HeaderValue, Method};
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

use super::filter;
use super::ops;
use super::query::{self, V};
use super::request::{OpBody, OpRequest};
use super::store::{IndexKey, Store};
use super::{DataverseEmulator, DataverseSchema};
use crate::Sandbox;

fn emulator() -> (Sandbox, DataverseEmulator) {
    let sandbox = Sandbox::builder().seed(5).start_in_process().unwrap();
    let dv = sandbox.dataverse().clone();
    (sandbox, dv)
}

/// Every index equals one rebuilt from the rows.
fn assert_consistent(store: &Store) {
    for (table, data) in &store.data {
        let mut by_version = BTreeMap::new();
        for (id, row) in &data.rows {
            if let Some(v) = row.get("versionnumber").and_then(Value::as_u64) {
                by_version.insert(v, *id);
            }
        }
        assert_eq!(data.by_version, by_version, "version index of {table}");
        for (prop, ix) in &data.indexes {
            let mut expected: HashMap<IndexKey, Vec<Uuid>> = HashMap::new();
            for (id, row) in &data.rows {
                if let Some(k) = IndexKey::of(&V::from_json(row.get(prop), ix.kind)) {
                    expected.entry(k).or_default().push(*id);
                }
            }
            assert_eq!(ix.postings, expected, "index of {table}.{prop}");
        }
        let versions: Vec<u64> = data.tombstones.iter().map(|(_, v)| *v).collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "tombstones of {table} by version"
        );
    }
}

fn request(
    method: Method,
    path: &str,
    query: &str,
    headers: &[(&'static str, &str)],
    body: Value,
) -> OpRequest {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    OpRequest {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers: h,
        body: if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        },
    }
}

/// Runs one Web API operation; `(status, JSON body)`.
fn call(dv: &DataverseEmulator, req: &OpRequest) -> (u16, Value) {
    let resp = dv.with_ctx(|ctx| ops::execute(ctx, req));
    let body = match resp.body {
        Some(OpBody::Json(v)) => v,
        Some(OpBody::Text(t)) => Value::String(t),
        None => Value::Null,
    };
    (resp.status.as_u16(), body)
}

#[tokio::test]
async fn alternate_key_index_follows_create_update_upsert_and_delete() {
    let (_sb, dv) = emulator();
    let a = dv
        .insert_row(
            "account",
            json!({"name": "Contoso", "accountnumber": "A-1"}),
        )
        .unwrap();
    // Upsert by the key finds the row (case-insensitively, as the scan did).
    let (st, _) = call(
        &dv,
        &request(
            Method::PATCH,
            "accounts(accountnumber='a-1')",
            "",
            &[],
            json!({"telephone1": "1"}),
        ),
    );
    assert_eq!(st, 204);
    assert_eq!(dv.count("account"), 1);
    // Changing the key column moves the row in the index: the old value is free again.
    dv.update_as_user("account", a, json!({"accountnumber": "A-2"}))
        .unwrap();
    let (st, _) = call(
        &dv,
        &request(
            Method::PATCH,
            "accounts(accountnumber='A-1')",
            "",
            &[],
            json!({"name": "New"}),
        ),
    );
    assert_eq!(st, 204, "an upsert on the freed value creates");
    assert_eq!(dv.count("account"), 2);
    // The new value is taken: a create with it is a duplicate key.
    let dup = dv.insert_row("account", json!({"name": "Dup", "accountnumber": "a-2"}));
    assert_eq!(dup.unwrap_err().status(), 412);
    dv.delete_as_user("account", a).unwrap();
    dv.insert_row("account", json!({"name": "Again", "accountnumber": "A-2"}))
        .unwrap();
    assert_consistent(&dv.lock());
    let found = dv.query("account", "accountnumber eq 'A-2'").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["name"], json!("Again"));
}

#[tokio::test]
async fn a_failed_change_set_rolls_the_indexes_back() {
    let (_sb, dv) = emulator();
    dv.insert_row("account", json!({"name": "Kept", "accountnumber": "K"}))
        .unwrap();
    let before_rows = dv.rows("account");
    // The second write fails (duplicate key) after the first changed an indexed column.
    let id = Uuid::parse_str(before_rows[0]["accountid"].as_str().unwrap()).unwrap();
    let result = dv.with_ctx(|ctx| {
        ops::atomic(ctx, |ctx| {
            let t = ctx.model.table("account").unwrap().clone();
            let mut body = serde_json::Map::new();
            body.insert("name".into(), json!("Renamed"));
            ops::update_row(ctx, &t, id, &body, &[])?;
            let mut dup = serde_json::Map::new();
            dup.insert("accountnumber".into(), json!("K"));
            ops::create_row(ctx, &t, &dup, None, &[])
        })
    });
    assert!(result.is_err());
    assert_consistent(&dv.lock());
    assert_eq!(dv.query("account", "name eq 'Renamed'").unwrap().len(), 0);
    assert_eq!(dv.query("account", "name eq 'kept'").unwrap().len(), 1);
}

#[tokio::test]
async fn intersect_lookups_follow_associate_and_disassociate() {
    let schema =
        DataverseSchema::cosell().with_many_to_many("cosell_account_contact", "account", "contact");
    let _sb = Sandbox::builder()
        .dataverse_schema(schema)
        .start_in_process()
        .unwrap();
    let dv = _sb.dataverse().clone();
    let model = dv.model();
    let table = model.table("account").unwrap().clone();
    let name = "cosell_account_contact".to_string();
    let n = table.collections[&name].clone();
    let body = |t: &str| match t {
        "account" => json!({"name": "x"}),
        "contact" => json!({"lastname": "x"}),
        _ => json!({}),
    };
    let me = dv
        .insert_row(table.logical(), body(table.logical()))
        .unwrap();
    let others: Vec<Uuid> = (0..3)
        .map(|_| dv.insert_row(&n.other_table, body(&n.other_table)).unwrap())
        .collect();
    for o in &others {
        dv.associate(table.logical(), me, &name, *o).unwrap();
    }
    let mut related = dv.related(table.logical(), me, &name);
    related.sort();
    let mut want = others.clone();
    want.sort();
    assert_eq!(related, want);
    // A second association of the same pair is refused, as before.
    assert!(dv.associate(table.logical(), me, &name, others[0]).is_err());
    dv.delete_as_user(&n.other_table, others[1]).unwrap();
    assert_eq!(dv.related(table.logical(), me, &name).len(), 2);
    assert_consistent(&dv.lock());
}

#[tokio::test]
async fn delta_reads_by_version_report_changes_then_deletions_across_pages() {
    let (_sb, dv) = emulator();
    let ids: Vec<Uuid> = (0..6)
        .map(|i| {
            dv.insert_row("account", json!({"name": format!("A{i}")}))
                .unwrap()
        })
        .collect();
    let track = [("prefer", "odata.track-changes,odata.maxpagesize=2")];
    let mut link = None;
    let mut seen = 0;
    let mut next = Some(request(
        Method::GET,
        "accounts",
        "$select=name",
        &track,
        Value::Null,
    ));
    while let Some(req) = next.take() {
        let (st, body) = call(&dv, &req);
        assert_eq!(st, 200, "{body}");
        seen += body["value"].as_array().unwrap().len();
        if let Some(n) = body["@odata.nextLink"].as_str() {
            let q = n.split_once('?').unwrap().1.to_string();
            next = Some(request(Method::GET, "accounts", &q, &track, Value::Null));
        } else {
            link = body["@odata.deltaLink"].as_str().map(str::to_string);
        }
    }
    assert_eq!(seen, 6);
    let delta_query = link.unwrap().split_once('?').unwrap().1.to_string();
    // Two updates, two deletions, one create (and a row deleted then created again is live).
    dv.update_as_user("account", ids[4], json!({"name": "changed"}))
        .unwrap();
    dv.update_as_user("account", ids[0], json!({"name": "changed too"}))
        .unwrap();
    dv.delete_as_user("account", ids[1]).unwrap();
    dv.delete_as_user("account", ids[2]).unwrap();
    let created = dv.insert_row("account", json!({"name": "new"})).unwrap();
    let mut changed = Vec::new();
    let mut deleted = Vec::new();
    let mut next = Some(request(
        Method::GET,
        "accounts",
        &delta_query,
        &track,
        Value::Null,
    ));
    while let Some(req) = next.take() {
        let (st, body) = call(&dv, &req);
        assert_eq!(st, 200, "{body}");
        for item in body["value"].as_array().unwrap() {
            match item["reason"].as_str() {
                Some("deleted") => deleted.push(item["id"].as_str().unwrap().to_string()),
                _ => changed.push(item["accountid"].as_str().unwrap().to_string()),
            }
        }
        next = body["@odata.nextLink"].as_str().map(|n| {
            request(
                Method::GET,
                "accounts",
                n.split_once('?').unwrap().1,
                &track,
                Value::Null,
            )
        });
    }
    // Changes in version order, then deletions in version order.
    assert_eq!(changed, [ids[4], ids[0], created].map(|u| u.to_string()));
    assert_eq!(deleted, [ids[1], ids[2]].map(|u| u.to_string()));
    let (_, n) = call(
        &dv,
        &request(
            Method::GET,
            "accounts/$count",
            &delta_query,
            &[],
            Value::Null,
        ),
    );
    assert_eq!(n, json!("5"));
    // A token from the future is answered, not a panic.
    let (st, _) = call(
        &dv,
        &request(
            Method::GET,
            "accounts",
            "$deltatoken=999999999999!01/01/2030 00:00:00",
            &track,
            Value::Null,
        ),
    );
    assert_eq!(st, 200);
    assert_consistent(&dv.lock());
}

#[tokio::test]
async fn an_index_added_on_first_use_and_by_a_new_key_stays_exact() {
    let (_sb, dv) = emulator();
    for i in 0..30 {
        dv.insert_row(
            "account",
            json!({"name": format!("N{}", i % 4), "telephone1": format!("T{}", i % 3)}),
        )
        .unwrap();
    }
    let scanned = dv.query("account", "telephone1 eq 't1'").unwrap();
    assert!(dv.lock().data["account"].indexes.contains_key("telephone1"));
    assert_eq!(scanned.len(), 10);
    let id = Uuid::parse_str(scanned[0]["accountid"].as_str().unwrap()).unwrap();
    dv.update_as_user("account", id, json!({"telephone1": "T2"}))
        .unwrap();
    assert_eq!(dv.query("account", "telephone1 eq 'T1'").unwrap().len(), 9);
    assert_consistent(&dv.lock());
}

fn bound(dv: &DataverseEmulator, table: &str, f: &str) -> query::Bound {
    let model = dv.model();
    let t = model.table(table).unwrap();
    query::bind(t, &filter::parse(f, &HashMap::new()).unwrap()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Indexed and scanned filters return the same rows in the same order.
    #[test]
    fn indexed_filters_agree_with_scans(
        rows in prop::collection::vec((0u8..5, 0u8..4, any::<bool>(), 0u8..3), 1..40),
        deletes in prop::collection::vec(any::<prop::sample::Index>(), 0..5),
        q in (0u8..5, 0u8..4, any::<bool>(), 0u8..3),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let (_sb, dv) = emulator();
        let name = |n: u8, upper: bool| {
            let s = format!("name{n}");
            if upper { s.to_uppercase() } else { s }
        };
        let mut ids = Vec::new();
        for (n, num, upper, emp) in &rows {
            let mut body = json!({"name": name(*n, *upper), "numberofemployees": i64::from(*emp)});
            if *num > 0 {
                body["accountnumber"] = json!(format!("AN{n}{num}{}", ids.len()));
            }
            ids.push(dv.insert_row("account", body).unwrap());
        }
        for d in &deletes {
            let id = ids[d.index(ids.len())];
            let _ = dv.delete_as_user("account", id);
        }
        let (n, num, upper, emp) = q;
        let filters = [
            format!("name eq '{}'", name(n, upper)),
            format!("name eq '{}' and numberofemployees eq {emp}", name(n, !upper)),
            format!("name eq '{}' or name eq '{}'", name(n, upper), name((n + 1) % 5, !upper)),
            format!("accountnumber eq 'AN{n}{num}{}' or name eq 'none'", usize::from(emp)),
            format!("Microsoft.Dynamics.CRM.In(PropertyName='name',PropertyValues=[\"{}\",\"{}\"])", name(n, upper), name(num, !upper)),
            format!("numberofemployees eq {emp} and not (name eq '{}')", name(n, upper)),
            "name eq null".to_string(),
        ];
        for f in &filters {
            let b = bound(&dv, "account", f);
            let mut store = dv.lock();
            store.index_filter("account", &b);
            let data = store.table_data("account").unwrap();
            let pk = |r: &&serde_json::Map<String, Value>| r["accountid"].clone();
            let indexed: Vec<Value> = query::filter_rows(data, Some(&b)).iter().map(pk).collect();
            let scanned: Vec<Value> = query::scan_rows(data, &b).iter().map(pk).collect();
            prop_assert_eq!(indexed, scanned, "filter {}", f);
        }
        assert_consistent(&dv.lock());
    }
}
