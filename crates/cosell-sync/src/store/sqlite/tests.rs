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
    assert_eq!(store.schema_version().await.unwrap(), 5);
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
