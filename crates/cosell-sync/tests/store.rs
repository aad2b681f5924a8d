//! The conformance suite (`cosell_sync::store::conformance`), run against every state store,
//! and what only a durable store must do (survive reopening).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cosell_sync::store::conformance::{self, TestPostgres, hint, link};
use cosell_sync::store::{
    AuditEntry, AuditOutcome, AuditQuery, Commit, Direction, MemoryStore, SqliteStore, StateStore,
};
use pretty_assertions::assert_eq;

#[tokio::test]
async fn memory_store_conforms() {
    conformance::run(async || Box::new(MemoryStore::new()) as Box<dyn StateStore>).await;
}

#[tokio::test]
async fn sqlite_store_conforms() {
    conformance::run(async || {
        Box::new(SqliteStore::in_memory().await.unwrap()) as Box<dyn StateStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let Some(pg) = TestPostgres::for_test("postgres_store_conforms") else {
        return;
    };
    conformance::run(async || {
        Box::new(pg.store("conformance").await.unwrap()) as Box<dyn StateStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_survives_reconnecting_and_migrates_once() {
    let Some(pg) = TestPostgres::for_test("postgres_store_survives_reconnecting") else {
        return;
    };
    let store = pg.store("reconnect").await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 3);
    store
        .commit(
            Commit::new()
                .link(link("r1", "opportunity", "o1"))
                .checkpoint("pc.reconcile", "c1"),
        )
        .await
        .unwrap();
    assert!(store.push_hint("h", hint("r1", 1)).await.unwrap());
    // The store's Debug shows no connection string (it may hold a password).
    assert!(!format!("{store:?}").contains("postgres://"), "{store:?}");
    // Several workers connecting at once to one schema: migrations run once, all see the data.
    let name = store.schema().unwrap().to_string();
    store.close().await;
    let again = futures::future::join_all(
        (0..3).map(|_| cosell_sync::store::PostgresStore::connect_in_schema(pg.url(), &name)),
    )
    .await;
    for store in again {
        let store = store.unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            3,
            "migrations run once"
        );
        assert_eq!(
            store.link_by_referral("r1").await.unwrap(),
            Some(link("r1", "opportunity", "o1"))
        );
        assert_eq!(store.pending_hints(10).await.unwrap().len(), 1);
        assert!(!store.push_hint("h", hint("r1", 1)).await.unwrap());
    }
}

#[tokio::test]
async fn a_bad_postgres_url_or_schema_is_named_without_the_password() {
    let err =
        cosell_sync::store::PostgresStore::connect("postgres://u:s3cret@127.0.0.1:notaport/db")
            .await
            .unwrap_err();
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(err.to_string().contains("URL"), "{err}");
    let err = cosell_sync::store::PostgresStore::connect_in_schema(
        "postgres://u@127.0.0.1:1/db",
        "Robert'); DROP",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("Robert"), "{err}");
}

#[tokio::test]
async fn sqlite_file_is_created_on_first_use_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested-name.sqlite");
    assert!(!path.exists());
    {
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), 7);
        store
            .commit(
                Commit::new()
                    .link(link("r1", "opportunity", "o1"))
                    .checkpoint("pc.reconcile", "c1")
                    .audit(AuditEntry::new(
                        Direction::ToPartnerCenter,
                        AuditOutcome::Updated,
                        "u",
                    )),
            )
            .await
            .unwrap();
        assert!(store.push_hint("h", hint("r1", 1)).await.unwrap());
        store.close().await;
    }
    assert!(path.exists());
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store.schema_version().await.unwrap(),
        7,
        "migrations run once"
    );
    assert_eq!(
        store.link_by_referral("r1").await.unwrap(),
        Some(link("r1", "opportunity", "o1"))
    );
    assert_eq!(
        store.checkpoint("pc.reconcile").await.unwrap().as_deref(),
        Some("c1")
    );
    assert_eq!(
        store.audit(&AuditQuery::default()).await.unwrap()[0].message,
        "u"
    );
    assert_eq!(store.pending_hints(10).await.unwrap().len(), 1);
    assert!(!store.push_hint("h", hint("r1", 1)).await.unwrap());
    store.close().await;
}

#[cfg(unix)]
#[tokio::test]
async fn sqlite_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let path = state.join("cosell.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .commit(Commit::new().link(link("r1", "opportunity", "o1")))
        .await
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "the directory");
    for name in ["cosell.sqlite", "cosell.sqlite-wal", "cosell.sqlite-shm"] {
        let file = state.join(name);
        assert!(file.exists(), "{name}");
        assert_eq!(mode(&file), 0o600, "{name}");
    }
    store.close().await;

    // A file left world-readable (made by hand, or by an older version) is narrowed at open.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(mode(&path), 0o600);
    store.close().await;
}

#[tokio::test]
async fn a_backend_failure_keeps_the_drivers_error_as_its_source() {
    use std::error::Error as _;
    let dir = tempfile::tempdir().unwrap();
    // A directory where the database file should be: SQLite cannot open it.
    let path = dir.path().join("is-a-directory");
    std::fs::create_dir(&path).unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(
        matches!(err, cosell_sync::store::StoreError::Backend { .. }),
        "{err}"
    );
    assert!(err.source().is_some(), "no source under {err}");
    assert!(err.is_retryable());
}

/// What 2,000 realistic links take in PostgreSQL: the schema's tables with their indexes and
/// TOAST, links only (the audit trail grows with decisions over time, not with links).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bytes_per_link() {
    const LINKS: usize = 2_000;
    let Some(pg) = TestPostgres::for_test("postgres_bytes_per_link") else {
        return;
    };
    let store = pg.store("size").await.unwrap();
    let bytes = async || -> i64 {
        let pool = sqlx::PgPool::connect(pg.url()).await.unwrap();
        let bytes = sqlx::query_scalar(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r'",
        )
        .bind(store.schema().unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        bytes
    };
    // Counted from the empty schema, whose tables and indexes take a page or two each.
    let empty = bytes().await;
    let links: Vec<_> = (0..LINKS).map(conformance::realistic_link).collect();
    for batch in links.chunks(100) {
        let mut commit = Commit::new();
        commit.links.extend(batch.iter().cloned());
        store.commit(commit).await.unwrap();
    }
    assert_eq!(
        store.link_by_referral(&links[5].referral_id).await.unwrap(),
        Some(links[5].clone())
    );
    let per_link = (bytes().await - empty) / LINKS as i64;
    eprintln!("postgres, {LINKS} links: {per_link} bytes per link (empty schema {empty} bytes)");
    assert!(per_link < 1_024, "{per_link} bytes per link");
    store.close().await;
}
