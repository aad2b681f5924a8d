//! What only the SQLite store must do: stay small per link, read rows written by older
//! versions, and answer per-record questions without a scan.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};

use super::*;
use crate::store::conformance::realistic_link;

/// The audit entries the engine writes when it creates `link`'s pair.
fn creation_audit(link: &Link) -> Vec<AuditEntry> {
    let crm_id = link.crm_id.clone().unwrap();
    let entry = |direction, outcome, message: String| {
        let mut e = AuditEntry::new(direction, outcome, message)
            .referral(&link.referral_id)
            .crm(&link.crm_entity, &crm_id);
        e.at = link.synced_at;
        e
    };
    vec![entry(
        Direction::ToCrm,
        AuditOutcome::Created,
        format!("{} updated", link.crm_entity),
    )]
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The store's size on disk: the database file and its WAL once checkpointed.
async fn bytes_on_disk(store: &SqliteStore, path: &Path) -> u64 {
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&store.pool)
        .await
        .unwrap();
    file_len(path) + file_len(&sidecar(path, "-wal"))
}

/// Bytes per link counts the links and their indexes (and whatever else the store keeps per
/// pair), not the audit trail: the trail grows with every decision over time, not with the
/// number of links, and is bounded by retention, not by the link. Its cost per entry is
/// printed beside (`--nocapture`).
#[tokio::test]
async fn a_realistic_link_takes_under_a_kilobyte() {
    const LINKS: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    let empty = bytes_on_disk(&store, &path).await;
    let links: Vec<Link> = (0..LINKS).map(realistic_link).collect();
    for batch in links.chunks(100) {
        let mut commit = Commit::new();
        for link in batch {
            commit = commit.link(link.clone());
        }
        store.commit(commit).await.unwrap();
    }
    // What was written reads back as it was.
    for link in links.iter().step_by(97) {
        assert_eq!(
            store.link_by_referral(&link.referral_id).await.unwrap(),
            Some(link.clone())
        );
    }
    let with_links = bytes_on_disk(&store, &path).await;
    let per_link = with_links / LINKS as u64;
    assert!(per_link < 1_024, "{per_link} bytes per link");

    for batch in links.chunks(100) {
        let mut commit = Commit::new();
        for link in batch {
            commit.audit.extend(creation_audit(link));
        }
        store.commit(commit).await.unwrap();
    }
    let with_audit = bytes_on_disk(&store, &path).await;
    eprintln!(
        "sqlite, {LINKS} links: {per_link} bytes per link (empty store {empty} bytes), \
         {} per audit entry, {} per link with its creation's entry",
        (with_audit - with_links) / LINKS as u64,
        with_audit / LINKS as u64,
    );
    store.close().await;
}

#[tokio::test]
async fn snapshots_written_as_json_text_still_read_and_are_compacted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let link = {
        let mut link = realistic_link(7);
        link.pc_known = Some(json!({"name": {"kind": "text", "value": "Before"}}));
        link.in_sync = false;
        link
    };
    let intent_target = json!({"name": {"kind": "text", "value": "Planned"}});
    // A store as version 4 left it, snapshots in JSON text.
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.close().await;
        std::fs::remove_file(&path).unwrap();
        let _ = std::fs::remove_file(sidecar(&path, "-wal"));
        let _ = std::fs::remove_file(sidecar(&path, "-shm"));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        MIGRATOR.run_to(4, &pool).await.unwrap();
        let json = |v: &Value| serde_json::to_string(v).unwrap();
        sqlx::query(
            "INSERT INTO links (referral_id, engagement_id, crm_entity, crm_id, pc_etag, \
             pc_updated_at, crm_etag, target, crm_known, pc_known, in_sync, \
             crm_status_in_transit, synced_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, 0, 0, ?)",
        )
        .bind(&link.referral_id)
        .bind(link.engagement_id.as_deref())
        .bind(&link.crm_entity)
        .bind(link.crm_id.as_deref())
        .bind(link.pc_etag.as_deref())
        .bind(link.pc_updated_at.as_ref().map(ts))
        .bind(link.crm_etag.as_deref())
        .bind(json(&link.target))
        .bind(json(link.pc_known.as_ref().unwrap()))
        .bind(ts(&link.synced_at))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO create_intents (crm_entity, crm_id, external_reference_id, recorded_at, \
             attempts, target, crm_etag) VALUES ('opportunity', 'o9', 'o9', ?, 1, ?, NULL)",
        )
        .bind(ts(&link.synced_at))
        .bind(json(&intent_target))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO inbox_seen (body_hash, seen_at) VALUES ('h1', ?)")
            .bind(ts(&Utc::now()))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 7);
    assert_eq!(
        store.link_by_referral(&link.referral_id).await.unwrap(),
        Some(link.clone())
    );
    let intent = store.intent("opportunity", "o9").await.unwrap().unwrap();
    assert_eq!(intent.target, Some(intent_target));
    // Re-encoded in place: no JSON text left, and the task is done.
    let text_left: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM links WHERE typeof(target) = 'text' \
         OR typeof(pc_known) = 'text') + \
         (SELECT COUNT(*) FROM create_intents WHERE typeof(target) = 'text')",
    )
    .fetch_one(&store.pool)
    .await
    .unwrap();
    assert_eq!(text_left, 0);
    let tasks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM store_tasks")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(tasks, 0);
    // The hashes seen before the rebuild of `inbox_seen` still deduplicate.
    let hint = InboxHint {
        seq: 0,
        referral_id: link.referral_id.clone(),
        event: "referral-updated".into(),
        change_time: None,
        received_at: Utc::now(),
        payload: None,
    };
    assert!(!store.push_hint("h1", hint.clone()).await.unwrap());
    assert!(store.push_hint("h2", hint).await.unwrap());
    store.close().await;
}

/// The plan SQLite chooses for `sql`, one line per step.
async fn plan(store: &SqliteStore, sql: &str) -> String {
    // The statements are the test's own constants.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
        .fetch_all(&store.pool)
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.get::<String, _>("detail"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn per_record_statements_search_an_index_instead_of_scanning() {
    let store = SqliteStore::in_memory().await.unwrap();
    for (sql, index) in [
        // Every delivery forgets the hashes past the retention.
        (
            "DELETE FROM inbox_seen WHERE seen_at < '2026'",
            "inbox_seen_by_time",
        ),
        (
            "SELECT key FROM dead_letters WHERE key = 'referral:1'",
            "sqlite_autoindex_dead_letters_1",
        ),
        (
            "SELECT crm_id FROM create_intents WHERE crm_entity = 'lead' AND crm_id = 'c1'",
            "sqlite_autoindex_create_intents_1",
        ),
        (
            "SELECT referral_id FROM links WHERE engagement_id = 'e1'",
            "links_by_engagement",
        ),
        (
            "SELECT id FROM audit WHERE referral_id = 'r1' AND NULL IS NULL ORDER BY id DESC LIMIT 5",
            "audit_by_referral",
        ),
        (
            "SELECT id FROM audit WHERE NULL IS NULL AND crm_id = 'c1' ORDER BY id DESC LIMIT 5",
            "audit_by_crm",
        ),
    ] {
        let plan = plan(&store, sql).await;
        assert!(
            plan.contains("SEARCH") && plan.contains(index),
            "{sql}\n{plan}"
        );
    }
    // The point lookups the store runs are those statements.
    let letter = DeadLetter {
        key: "referral:1".into(),
        direction: Direction::ToCrm,
        error: "boom".into(),
        attempts: 1,
        first_failed_at: Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap(),
        last_failed_at: Utc.with_ymd_and_hms(2026, 3, 1, 9, 5, 0).unwrap(),
    };
    store
        .commit(Commit::new().dead_letter(letter.clone()))
        .await
        .unwrap();
    assert_eq!(store.dead_letter("referral:1").await.unwrap(), Some(letter));
    assert_eq!(store.dead_letter("referral:2").await.unwrap(), None);
}

/// A store as version 5 left it: every per-link table written in text (ids, times, names,
/// eTags), snapshots compact. Some values have a compact form in version 6, some do not.
async fn version_5_store(path: &Path, links: &[Link], audit: &[AuditEntry], children: &[CrmChild]) {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    MIGRATOR.run_to(5, &pool).await.unwrap();
    for link in links {
        sqlx::query(
            "INSERT INTO links (referral_id, engagement_id, crm_entity, crm_id, pc_etag, \
             pc_updated_at, crm_etag, target, crm_known, pc_known, in_sync, \
             crm_status_in_transit, synced_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&link.referral_id)
        .bind(link.engagement_id.as_deref())
        .bind(&link.crm_entity)
        .bind(link.crm_id.as_deref())
        .bind(link.pc_etag.as_deref())
        .bind(link.pc_updated_at.as_ref().map(ts))
        .bind(link.crm_etag.as_deref())
        .bind(compact::encode(&link.target))
        .bind(link.crm_known.as_ref().map(compact::encode))
        .bind(link.pc_known.as_ref().map(compact::encode))
        .bind(link.in_sync)
        .bind(link.crm_status_in_transit)
        .bind(ts(&link.synced_at))
        .execute(&pool)
        .await
        .unwrap();
    }
    for e in audit {
        sqlx::query(
            "INSERT INTO audit (id, at, direction, referral_id, crm_entity, crm_id, outcome, \
             message, conflicts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(e.id)
        .bind(ts(&e.at))
        .bind(e.direction.as_str())
        .bind(e.referral_id.as_deref())
        .bind(e.crm_entity.as_deref())
        .bind(e.crm_id.as_deref())
        .bind(e.outcome.as_str())
        .bind(&e.message)
        .bind(serde_json::to_string(&e.conflicts).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    }
    for c in children {
        sqlx::query(
            "INSERT INTO crm_children (entity, id, parent_entity, parent_id) VALUES (?, ?, ?, ?)",
        )
        .bind(&c.entity)
        .bind(&c.id)
        .bind(&c.parent_entity)
        .bind(&c.parent_id)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO create_intents (crm_entity, crm_id, external_reference_id, recorded_at, \
         attempts, target, crm_etag) VALUES ('opportunity', 'o9', 'o9', ?, 2, ?, 'W/\"7\"')",
    )
    .bind(ts(&Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()))
    .bind(compact::encode(
        &json!({"name": {"kind": "text", "value": "Planned"}}),
    ))
    .execute(&pool)
    .await
    .unwrap();
    // A live lease on a pair and an expired one on a pass.
    sqlx::query(
        "INSERT INTO leases (key, holder, expires_at) VALUES \
         ('crm:0e5a4f1c-2b3d-4e5f-8a9b-0c1d2e3f4a5b', 'w1', ?), \
         ('pass:reconcile', 'w1', '2026-03-01T09:00:00.000000Z')",
    )
    .bind(ts(&(Utc::now() + chrono::Duration::hours(1))))
    .execute(&pool)
    .await
    .unwrap();
    // The newest entry was deleted: its id must not be given again.
    sqlx::query("INSERT INTO audit (id, at, direction, outcome, message, conflicts) VALUES (99, '2026-03-02T00:00:00.000000Z', 'to_crm', 'failed', 'gone', '[]')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit WHERE id = 99")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn a_version_5_store_opens_at_version_6_with_every_row_equal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let at = |micros: i64| {
        Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap() + chrono::Duration::microseconds(micros)
    };
    // Engine-shaped links (UUIDs, `"<uuid>"` and `W/"<n>"` eTags), and links whose values have
    // no compact form: other ids (upper case, braces, plain), eTags, entities, missing values.
    let mut links: Vec<Link> = (0..4).map(realistic_link).collect();
    links[1].crm_known = Some(json!({"name": {"kind": "text", "value": "CRM side"}}));
    links[1].pc_known = Some(json!({"deal_value": {"kind": "decimal", "value": "12"}}));
    links[1].in_sync = false;
    links[1].crm_status_in_transit = true;
    links.push(Link {
        referral_id: "R-1".into(),
        engagement_id: Some("0E5A4F1C-2B3D-4E5F-8A9B-0C1D2E3F4A5B".into()),
        crm_entity: "cosell_custom".into(),
        crm_id: Some("{0e5a4f1c-2b3d-4e5f-8a9b-0c1d2e3f4a5b}".into()),
        pc_etag: Some("W/\"0\"".into()),
        pc_updated_at: None,
        crm_etag: Some("\"0e5a4f1c-2b3d-4e5f-8a9b-0c1d2e3f4a5b\"".into()),
        target: json!({"notes": {"kind": "text", "value": ""}}),
        crm_known: None,
        pc_known: None,
        in_sync: true,
        crm_status_in_transit: false,
        synced_at: at(-5),
    });
    links.push(Link {
        referral_id: "zz".into(),
        engagement_id: None,
        crm_entity: "lead".into(),
        crm_id: None,
        pc_etag: None,
        pc_updated_at: Some(Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap()),
        crm_etag: Some("W/\"01\"".into()),
        target: json!({}),
        crm_known: None,
        pc_known: None,
        in_sync: true,
        crm_status_in_transit: false,
        synced_at: at(1),
    });
    let entry = |id, direction, outcome, link: Option<&Link>, conflicts: Vec<String>| AuditEntry {
        id,
        at: at(id * 1_000_001),
        direction,
        referral_id: link.map(|l| l.referral_id.clone()),
        crm_entity: link.map(|l| l.crm_entity.clone()),
        crm_id: link.and_then(|l| l.crm_id.clone()),
        outcome,
        message: format!("entry {id}"),
        conflicts,
    };
    let audit = vec![
        entry(
            1,
            Direction::ToCrm,
            AuditOutcome::Created,
            Some(&links[0]),
            vec![],
        ),
        entry(
            2,
            Direction::ToPartnerCenter,
            AuditOutcome::Merged,
            Some(&links[1]),
            vec!["name: CRM won".into()],
        ),
        entry(
            3,
            Direction::ToCrm,
            AuditOutcome::DryRun,
            Some(&links[4]),
            vec![],
        ),
        entry(
            4,
            Direction::ToPartnerCenter,
            AuditOutcome::Failed,
            None,
            vec![],
        ),
    ];
    let children = vec![
        CrmChild {
            entity: "cosell_opportunitysolution".into(),
            id: "00251b32-a7f3-4446-bbf8-142d62865175".into(),
            parent_entity: "opportunity".into(),
            parent_id: links[0].crm_id.clone().unwrap(),
        },
        CrmChild {
            entity: "cosell_other".into(),
            id: "child-1".into(),
            parent_entity: "cosell_custom".into(),
            parent_id: "P-1".into(),
        },
    ];
    version_5_store(&path, &links, &audit, &children).await;

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 7);
    let mut by_id = links.clone();
    by_id.sort_by(|a, b| a.referral_id.cmp(&b.referral_id));
    assert_eq!(store.links().await.unwrap(), by_id);
    for link in &links {
        assert_eq!(
            store
                .link_by_referral(&link.referral_id)
                .await
                .unwrap()
                .as_ref(),
            Some(link)
        );
        if let Some(crm_id) = &link.crm_id {
            assert_eq!(
                store
                    .link_by_crm(&link.crm_entity, crm_id)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(link)
            );
        }
        if let Some(engagement) = &link.engagement_id {
            assert_eq!(
                store.links_by_engagement(engagement).await.unwrap(),
                vec![link.clone()]
            );
        }
    }
    let mut newest_first = audit.clone();
    newest_first.reverse();
    assert_eq!(
        store.audit(&AuditQuery::default()).await.unwrap(),
        newest_first
    );
    for e in &audit {
        if let Some(referral) = &e.referral_id {
            let q = AuditQuery {
                referral_id: Some(referral.clone()),
                ..AuditQuery::default()
            };
            assert_eq!(store.audit(&q).await.unwrap(), vec![e.clone()]);
        }
        if let Some(crm_id) = &e.crm_id {
            let q = AuditQuery {
                crm_id: Some(crm_id.clone()),
                ..AuditQuery::default()
            };
            assert_eq!(store.audit(&q).await.unwrap(), vec![e.clone()]);
        }
    }
    assert_eq!(
        store
            .last_synced_at(Direction::ToPartnerCenter)
            .await
            .unwrap(),
        Some(audit[1].at)
    );
    for child in &children {
        assert_eq!(
            store
                .crm_child(&child.entity, &child.id)
                .await
                .unwrap()
                .as_ref(),
            Some(child)
        );
    }
    let long = std::time::Duration::from_secs(60);
    let leased = "crm:0e5a4f1c-2b3d-4e5f-8a9b-0c1d2e3f4a5b";
    assert!(
        !store.try_lease(leased, "w2", long).await.unwrap(),
        "still held"
    );
    assert!(
        store.try_lease(leased, "w1", long).await.unwrap(),
        "renewed"
    );
    assert!(
        store.try_lease("pass:reconcile", "w2", long).await.unwrap(),
        "expired"
    );
    let intent = store.intent("opportunity", "o9").await.unwrap().unwrap();
    assert_eq!(intent.attempts, 2);
    assert_eq!(intent.crm_etag.as_deref(), Some("W/\"7\""));
    // Converted, not only readable: the engine's values in their compact forms.
    let forms: (String, String, String, String, String) = sqlx::query_as(
        "SELECT typeof(referral_id), typeof(crm_entity), typeof(pc_etag), typeof(crm_etag), \
         typeof(synced_at) FROM links WHERE referral_id = ?",
    )
    .bind(packed::id(&links[0].referral_id))
    .fetch_one(&store.pool)
    .await
    .unwrap();
    assert_eq!(
        forms,
        (
            "blob".into(),
            "integer".into(),
            "blob".into(),
            "integer".into(),
            "integer".into()
        )
    );
    // The trail's ids go on past the deleted one, and the old tables' pages were given back.
    store
        .commit(Commit::new().audit(AuditEntry::new(
            Direction::ToCrm,
            AuditOutcome::Updated,
            "after",
        )))
        .await
        .unwrap();
    let newest = store.audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(newest[0].id, 100);
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    let tasks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM store_tasks")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!((free, tasks), (0, 0));
    store.close().await;
    // A second open finds nothing left to do.
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.links().await.unwrap(), by_id);
    store.close().await;
}

/// Ids in and out of their compact forms, written by a commit: every look-up finds them, and
/// `links` orders them as strings (SQLite would put all text before all bytes).
#[tokio::test]
async fn ids_of_any_shape_are_found_and_ordered_as_strings() {
    let store = SqliteStore::in_memory().await.unwrap();
    let mut links: Vec<Link> = [
        "ffffffff-0000-4000-8000-000000000000",
        "R-1",
        "zz",
        "00000000-0000-4000-8000-000000000001",
        "A3F2C1D0-0000-4000-8000-000000000000",
    ]
    .iter()
    .enumerate()
    .map(|(i, id)| {
        let mut link = realistic_link(i);
        link.referral_id = (*id).to_string();
        if i % 2 == 1 {
            link.crm_id = Some(format!("crm-{i}"));
            link.engagement_id = Some(id.to_uppercase());
            link.crm_entity = "cosell_custom".into();
            link.pc_etag = Some(format!("etag-{i}"));
            link.crm_etag = Some("W/\"007\"".into());
        }
        link
    })
    .collect();
    let mut commit = Commit::new();
    for link in &links {
        commit = commit.link(link.clone()).audit(
            AuditEntry::new(Direction::ToCrm, AuditOutcome::Created, "made")
                .referral(&link.referral_id)
                .crm(&link.crm_entity, link.crm_id.as_deref().unwrap()),
        );
    }
    store.commit(commit).await.unwrap();
    links.sort_by(|a, b| a.referral_id.cmp(&b.referral_id));
    let truncated = |mut l: Link| {
        // The store keeps microseconds.
        l.synced_at = DateTime::from_timestamp_micros(l.synced_at.timestamp_micros()).unwrap();
        l
    };
    let expected: Vec<Link> = links.into_iter().map(truncated).collect();
    assert_eq!(store.links().await.unwrap(), expected);
    for link in &expected {
        let crm_id = link.crm_id.as_deref().unwrap();
        assert_eq!(
            store
                .link_by_referral(&link.referral_id)
                .await
                .unwrap()
                .as_ref(),
            Some(link)
        );
        assert_eq!(
            store
                .link_by_crm(&link.crm_entity, crm_id)
                .await
                .unwrap()
                .as_ref(),
            Some(link)
        );
        assert_eq!(
            store
                .links_by_engagement(link.engagement_id.as_deref().unwrap())
                .await
                .unwrap(),
            vec![link.clone()]
        );
        let q = AuditQuery {
            referral_id: Some(link.referral_id.clone()),
            crm_id: Some(crm_id.into()),
            limit: 0,
        };
        assert_eq!(store.audit(&q).await.unwrap().len(), 1);
    }
    // A UUID in another case is another id, as it is to the other stores.
    assert_eq!(
        store
            .link_by_referral("FFFFFFFF-0000-4000-8000-000000000000")
            .await
            .unwrap(),
        None
    );
}

/// Expired leases are rows nobody holds: closing the store deletes them, live ones stay.
#[tokio::test]
async fn expired_leases_are_deleted_at_close_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    let short = std::time::Duration::from_millis(1);
    let long = std::time::Duration::from_secs(600);
    assert!(store.try_lease("crm:gone", "w1", short).await.unwrap());
    assert!(store.try_lease("referral:kept", "w1", long).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    store.close().await;
    let options = SqliteConnectOptions::new().filename(&path);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM leases")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys, vec!["referral:kept".to_string()]);
    pool.close().await;
    // The live lease is still held against others.
    let store = SqliteStore::open(&path).await.unwrap();
    assert!(!store.try_lease("referral:kept", "w2", long).await.unwrap());
    store.close().await;
}

/// Migration 0007 adds the inbox payload: a version 6 store opens at version 7 with its links,
/// checkpoints and waiting hints intact (a hint written before has no payload), and a hint
/// with a payload then round trips.
#[tokio::test]
async fn a_version_6_store_opens_at_version_7_with_its_inbox_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let link = realistic_link(3);
    {
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        MIGRATOR.run_to(6, &pool).await.unwrap();
        // The store's own commit writes the version 6 per-link tables (it touches no inbox
        // column); the hint is written as version 6 wrote it, without a payload column.
        let v6 = SqliteStore {
            leases: pool.clone(),
            pool: pool.clone(),
            writes: Arc::default(),
        };
        v6.commit(
            Commit::new()
                .link(link.clone())
                .checkpoint("pc.reconcile", "2026-03-01T09:00:00+00:00"),
        )
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO inbox (referral_id, event, change_time, received_at) \
             VALUES (?, 'referral-updated', NULL, ?)",
        )
        .bind(&link.referral_id)
        .bind(ts(&Utc::now()))
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO inbox_seen (body_hash, seen_at) VALUES ('h-v6', ?)")
            .bind(ts(&Utc::now()))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 7);
    assert_eq!(
        store.link_by_referral(&link.referral_id).await.unwrap(),
        Some(link.clone())
    );
    assert_eq!(
        store.checkpoint("pc.reconcile").await.unwrap().as_deref(),
        Some("2026-03-01T09:00:00+00:00")
    );
    let waiting = store.pending_hints(10).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].referral_id, link.referral_id);
    assert_eq!(waiting[0].payload, None);
    let hint = |payload: Option<&str>| InboxHint {
        seq: 0,
        referral_id: link.referral_id.clone(),
        event: "reconcile-listed".into(),
        change_time: None,
        received_at: Utc::now(),
        payload: payload.map(str::to_string),
    };
    assert!(!store.push_hint("h-v6", hint(None)).await.unwrap());
    assert!(
        store
            .push_hint("h-v7", hint(Some("{\"id\":\"x\"}")))
            .await
            .unwrap()
    );
    let claimed = store
        .claim_hints("w1", 10, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        claimed
            .iter()
            .map(|h| h.payload.as_deref())
            .collect::<Vec<_>>(),
        vec![None, Some("{\"id\":\"x\"}")]
    );
    store.close().await;
}
