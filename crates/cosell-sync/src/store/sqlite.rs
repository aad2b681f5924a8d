//! The embedded default: one SQLite file, created on first use, schema under versioned
//! migrations (`migrations/` in this crate, applied by sqlx at open).
//!
//! Durability: WAL journal with `synchronous=FULL`, so a commit that returned survives power loss,
//! not only a process crash; the inbox, intents and links depend on that.
//!
//! Size: the per-link tables (`links`, `audit`, `crm_children`) keep ids, times, eTags and names
//! in the compact forms of [`packed`] (migration 0006), and snapshots in [`compact`]'s; so every
//! statement binds those columns through `packed`, never as plain text.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use super::{
    AuditEntry, AuditOutcome, AuditQuery, Commit, CreateIntent, CrmChild, DeadLetter,
    DeadLetterClass, Direction, InboxHint, Link, StateStore, StoreError, compact,
};

mod packed;
#[cfg(all(test, feature = "testing"))]
mod tests;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a delivery's body hash is remembered for deduplication.
const SEEN_RETENTION: chrono::Duration = chrono::Duration::days(7);

/// The SQLite state store (cheap to clone; clones share the pool).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Leases and inbox claims: the same file without an fsync per write. They only matter
    /// among processes on this machine, which a power loss takes down with them, and a lost
    /// lease row is a lease nobody holds; so they need not cost a commit's fsync each.
    leases: SqlitePool,
    /// Taken by every write of this store, in turn (tokio's mutex is fair). SQLite lets one
    /// connection write at a time; without this, the pools' connections each wait for its lock
    /// in SQLite's busy handler, which sleeps and retries rather than queueing, so under load
    /// one writer waited past the busy timeout and a backfill stopped on "database is locked".
    /// The busy timeout is now left for other processes on the same file.
    writes: Arc<tokio::sync::Mutex<()>>,
}

/// Most values one `IN (…)` list binds: well under SQLite's bound-parameter limit, so a long
/// list takes a statement per this many.
const IN_LIST_MAX: usize = 500;

/// `statement` (ending in the column compared) followed by `IN (?, …)` with `n` placeholders.
/// Only placeholders are formatted in; the values are bound.
fn in_list(statement: &str, n: usize) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("{statement} IN ({})", vec!["?"; n].join(",")))
}

/// A write transaction and this store's turn to write, released together.
struct WriteTransaction {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

// Derefs to the connection, as the transaction does, so `&mut *tx` is an executor.
impl std::ops::Deref for WriteTransaction {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTransaction {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl WriteTransaction {
    async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::backend_caused_by(e)
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(what: &'static str, s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt {
            what,
            detail: format!("timestamp `{s}`: {e}"),
        })
}

fn opt_ts(what: &'static str, s: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    s.map(|s| parse_ts(what, &s)).transpose()
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    ///
    /// Must run inside a Tokio runtime with timers enabled (sqlx uses them for pool timeouts).
    ///
    /// The store holds personal data (customers' names, e-mails, phones, deal values): on Unix
    /// a missing directory is created `0700` and the database file `0600` (SQLite gives its
    /// `-wal` and `-shm` files the database file's mode); an existing file is narrowed to
    /// `0600`.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        private_file(path).map_err(|e| StoreError::Backend {
            message: format!("cannot prepare `{}`: {e}", path.display()),
            source: Some(Box::new(e)),
        })?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // A WAL file keeps its largest size unless limited: a backfill left a 7 MB `-wal`
            // beside a 13 MB database. Truncated to 1 MB whenever a checkpoint resets it.
            .pragma("journal_size_limit", "1048576")
            // Pages freed by deletes (leases, resolved intents, a migration's old tables) are
            // given back to the file system at open and close, not kept in the file.
            .auto_vacuum(SqliteAutoVacuum::Incremental);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .map_err(backend)?;
        let mut store = Self::migrate(pool).await?;
        store.leases = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options.synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(backend)?;
        Ok(store)
    }

    /// A store in SQLite's memory (one connection), for tests.
    pub async fn in_memory() -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(backend)?
            .auto_vacuum(SqliteAutoVacuum::Incremental);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            // An in-memory database lives as long as its connection: never let it idle out.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(backend)?;
        Self::migrate(pool).await
    }

    async fn migrate(pool: SqlitePool) -> Result<Self, StoreError> {
        MIGRATOR.run(&pool).await.map_err(backend)?;
        compact_old_snapshots(&pool).await?;
        vacuum_once(&pool).await?;
        forget_expired_leases(&pool).await?;
        give_back_free_pages(&pool).await?;
        Ok(SqliteStore {
            leases: pool.clone(),
            pool,
            writes: Arc::default(),
        })
    }

    /// A transaction that holds SQLite's write lock from its start (`BEGIN IMMEDIATE`): a
    /// deferred one that reads first cannot take the lock once another connection has written
    /// meanwhile and fails at once with "database is locked", whatever the busy timeout; an
    /// immediate one waits its turn (the busy timeout) instead.
    async fn write_transaction(&self) -> Result<WriteTransaction, StoreError> {
        let turn = self.writes.clone().lock_owned().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        Ok(WriteTransaction { tx, _turn: turn })
    }

    /// The schema version (the latest applied migration).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }

    /// Create intents, all of them or the one of `key` (entity, id), oldest first.
    async fn intents_where(
        &self,
        key: Option<(&str, &str)>,
    ) -> Result<Vec<CreateIntent>, StoreError> {
        // Two statements, not one with `?1 IS NULL OR …`: SQLite plans before it sees the
        // parameters, so the combined form scans the table even for one key.
        let sql = if key.is_some() {
            "SELECT crm_entity, crm_id, external_reference_id, recorded_at, attempts, target, crm_etag \
             FROM create_intents WHERE crm_entity = ?1 AND crm_id = ?2"
        } else {
            "SELECT crm_entity, crm_id, external_reference_id, recorded_at, attempts, target, crm_etag \
             FROM create_intents ORDER BY recorded_at"
        };
        let mut query = sqlx::query(sql);
        if let Some((entity, id)) = key {
            query = query.bind(entity).bind(id);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter()
            .map(|row| {
                let get = |c: &str| row.try_get::<String, _>(c).map_err(backend);
                Ok(CreateIntent {
                    crm_entity: get("crm_entity")?,
                    crm_id: get("crm_id")?,
                    external_reference_id: get("external_reference_id")?,
                    recorded_at: parse_ts("intent", &get("recorded_at")?)?,
                    attempts: row.try_get::<i64, _>("attempts").map_err(backend)?.max(0) as u32,
                    target: json_column(row, "intent", "target")?,
                    crm_etag: row
                        .try_get::<Option<String>, _>("crm_etag")
                        .map_err(backend)?,
                })
            })
            .collect()
    }

    /// Dead letters, all of them or the one with `key`.
    async fn dead_letters_where(&self, key: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        // Two statements for the reason `intents_where` gives.
        let sql = if key.is_some() {
            "SELECT key, direction, error, attempts, first_failed_at, last_failed_at \
             FROM dead_letters WHERE key = ?1"
        } else {
            "SELECT key, direction, error, attempts, first_failed_at, last_failed_at \
             FROM dead_letters ORDER BY first_failed_at"
        };
        let mut query = sqlx::query(sql);
        if let Some(key) = key {
            query = query.bind(key);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter()
            .map(|row| {
                let get = |c: &str| row.try_get::<String, _>(c).map_err(backend);
                let direction = get("direction")?;
                Ok(DeadLetter {
                    key: get("key")?,
                    direction: Direction::parse(&direction).ok_or_else(|| StoreError::Corrupt {
                        what: "dead letter",
                        detail: format!("direction `{direction}`"),
                    })?,
                    error: get("error")?,
                    attempts: row.try_get::<i64, _>("attempts").map_err(backend)?.max(0) as u32,
                    first_failed_at: parse_ts("dead letter", &get("first_failed_at")?)?,
                    last_failed_at: parse_ts("dead letter", &get("last_failed_at")?)?,
                })
            })
            .collect()
    }

    /// Closes the pool (waits for connections to finish), first deleting the expired leases and
    /// giving the pages freed since the open back to the file system.
    pub async fn close(&self) {
        // Best effort: a store that cannot tidy up now does so at its next open.
        let _turn = self.writes.lock().await;
        if forget_expired_leases(&self.pool).await.is_ok() {
            let _ = give_back_free_pages(&self.pool).await;
        }
        self.leases.close().await;
        self.pool.close().await;
    }
}

/// Rows re-encoded per transaction by [`compact_old_snapshots`].
const COMPACT_BATCH: i64 = 500;

/// Re-encodes the snapshots written as JSON text before migration 0005 in the compact form,
/// a batch per transaction, once: the task row migration 0005 left is deleted with the last
/// batch. Each batch takes the write lock first (`BEGIN IMMEDIATE`), so a writer on another
/// connection waits instead of interleaving; re-encoding a row twice gives the same bytes.
async fn compact_old_snapshots(pool: &SqlitePool) -> Result<(), StoreError> {
    let pending: Option<String> =
        sqlx::query_scalar("SELECT name FROM store_tasks WHERE name = 'compact_snapshots'")
            .fetch_optional(pool)
            .await
            .map_err(backend)?;
    if pending.is_none() {
        return Ok(());
    }
    let recode =
        |row: &sqlx::sqlite::SqliteRow, column: &str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(json_column(row, "snapshot", column)?.map(|v| compact::encode(&v)))
        };
    let mut after = 0i64;
    loop {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend)?;
        let rows = sqlx::query(
            "SELECT rowid, target, crm_known, pc_known FROM links WHERE rowid > ? \
             ORDER BY rowid LIMIT ?",
        )
        .bind(after)
        .bind(COMPACT_BATCH)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        for row in &rows {
            sqlx::query("UPDATE links SET target = ?, crm_known = ?, pc_known = ? WHERE rowid = ?")
                .bind(recode(row, "target")?)
                .bind(recode(row, "crm_known")?)
                .bind(recode(row, "pc_known")?)
                .bind(row.try_get::<i64, _>("rowid").map_err(backend)?)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        let Some(last) = rows.last() else {
            // Intents are few (each is resolved within a pass): one statement each, then done.
            let intents = sqlx::query("SELECT rowid, target FROM create_intents")
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
            for row in &intents {
                sqlx::query("UPDATE create_intents SET target = ? WHERE rowid = ?")
                    .bind(recode(row, "target")?)
                    .bind(row.try_get::<i64, _>("rowid").map_err(backend)?)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
            sqlx::query("DELETE FROM store_tasks WHERE name = 'compact_snapshots'")
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            return tx.commit().await.map_err(backend);
        };
        after = last.try_get("rowid").map_err(backend)?;
        tx.commit().await.map_err(backend)?;
    }
}

/// Rewrites the whole file once, when migration 0006 asked for it (its task row): its table
/// rebuilds left the old tables' pages free in the file, and only a VACUUM turns on the
/// incremental auto-vacuum (`open`'s options) for a file created before it. VACUUM cannot run
/// in a transaction; if the process stops before the task row is deleted, the next open
/// VACUUMs again, which is harmless.
async fn vacuum_once(pool: &SqlitePool) -> Result<(), StoreError> {
    let pending: Option<String> =
        sqlx::query_scalar("SELECT name FROM store_tasks WHERE name = 'vacuum'")
            .fetch_optional(pool)
            .await
            .map_err(backend)?;
    if pending.is_none() {
        return Ok(());
    }
    let mut conn = pool.acquire().await.map_err(backend)?;
    sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    sqlx::query("VACUUM")
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    sqlx::query("DELETE FROM store_tasks WHERE name = 'vacuum'")
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Deletes the leases past their expiry: an expired lease is one nobody holds (`try_lease` takes
/// it over, `release_lease` of it changes nothing), so the row is only bytes. A worker that
/// stops without giving its leases up leaves one row per pair it handled (about 100 bytes
/// each); without an index on the expiry this is a scan, so it runs at open and close only.
async fn forget_expired_leases(pool: &SqlitePool) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM leases WHERE expires_at <= ?")
        .bind(packed::time(&Utc::now()))
        .execute(pool)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Truncates the file by its free pages (incremental auto-vacuum; a no-op on a file without
/// it).
async fn give_back_free_pages(pool: &SqlitePool) -> Result<(), StoreError> {
    sqlx::query("PRAGMA incremental_vacuum")
        .execute(pool)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Creates `path`'s missing directories (`0700`) and the file itself (`0600`) before SQLite
/// does, so the personal data in it is never readable by other users, not even briefly.
fn private_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    drop(options.open(path)?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A file created before this version (or by hand) may be wider.
        for file in [
            path.to_path_buf(),
            sidecar(path, "-wal"),
            sidecar(path, "-shm"),
        ] {
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

#[cfg(unix)]
fn sidecar(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// An optional snapshot column of `row`, decoded: the compact form, or the JSON text of rows
/// written before it (migration 0005).
fn json_column(
    row: &sqlx::sqlite::SqliteRow,
    what: &'static str,
    column: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    row.try_get::<Option<Vec<u8>>, _>(column)
        .map_err(backend)?
        .map(|bytes| {
            compact::decode(&bytes).map_err(|e| StoreError::Corrupt {
                what,
                detail: format!("{column} snapshot: {e}"),
            })
        })
        .transpose()
}

fn link_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Link, StoreError> {
    let snapshot = |c: &str| json_column(row, "link", c);
    Ok(Link {
        referral_id: packed::required(
            "link",
            "referral_id",
            packed::read_id(row, "link", "referral_id")?,
        )?,
        engagement_id: packed::read_id(row, "link", "engagement_id")?,
        crm_entity: packed::required(
            "link",
            "crm_entity",
            packed::read_name(row, "link", "crm_entity")?,
        )?,
        crm_id: packed::read_id(row, "link", "crm_id")?,
        pc_etag: packed::read_pc_etag(row, "link", "pc_etag")?,
        pc_updated_at: packed::read_time(row, "link", "pc_updated_at")?,
        crm_etag: packed::read_crm_etag(row, "link", "crm_etag")?,
        target: snapshot("target")?.ok_or_else(|| StoreError::Corrupt {
            what: "link",
            detail: "no target snapshot".into(),
        })?,
        crm_known: snapshot("crm_known")?,
        pc_known: snapshot("pc_known")?,
        in_sync: row.try_get::<bool, _>("in_sync").map_err(backend)?,
        crm_status_in_transit: row
            .try_get::<bool, _>("crm_status_in_transit")
            .map_err(backend)?,
        synced_at: packed::required(
            "link",
            "synced_at",
            packed::read_time(row, "link", "synced_at")?,
        )?,
    })
}

/// Links in referral id order. Sorted here, not by SQL: a UUID id is stored as bytes and any
/// other as text, and SQLite orders all text before all bytes, not as the strings order.
fn sorted_links(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<Link>, StoreError> {
    let mut links = rows
        .iter()
        .map(link_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    links.sort_by(|a, b| a.referral_id.cmp(&b.referral_id));
    Ok(links)
}

/// The link columns, as a macro so queries stay `&'static str` (sqlx refuses dynamic SQL).
macro_rules! link_columns {
    () => {
        "referral_id, engagement_id, crm_entity, crm_id, pc_etag, pc_updated_at, crm_etag, target, crm_known, pc_known, in_sync, crm_status_in_transit, synced_at"
    };
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn link_by_referral(&self, referral_id: &str) -> Result<Option<Link>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            link_columns!(),
            " FROM links WHERE referral_id = ?"
        ))
        .bind(packed::id(referral_id))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(link_from_row).transpose()
    }

    async fn link_by_crm(
        &self,
        crm_entity: &str,
        crm_id: &str,
    ) -> Result<Option<Link>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            link_columns!(),
            " FROM links WHERE crm_entity = ? AND crm_id = ?"
        ))
        .bind(packed::name(crm_entity))
        .bind(packed::id(crm_id))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.as_ref().map(link_from_row).transpose()
    }

    async fn links_by_crm_ids(
        &self,
        crm_entity: &str,
        crm_ids: &[String],
    ) -> Result<Vec<Link>, StoreError> {
        // Each statement a walk of the (crm_entity, crm_id) index.
        let mut links = Vec::new();
        for chunk in crm_ids.chunks(IN_LIST_MAX) {
            let sql = in_list(
                concat!(
                    "SELECT ",
                    link_columns!(),
                    " FROM links WHERE crm_entity = ? AND crm_id"
                ),
                chunk.len(),
            );
            let mut query = sqlx::query(sql).bind(packed::name(crm_entity));
            for id in chunk {
                query = query.bind(packed::id(id));
            }
            let rows = query.fetch_all(&self.pool).await.map_err(backend)?;
            for row in &rows {
                links.push(link_from_row(row)?);
            }
        }
        Ok(links)
    }

    async fn links(&self) -> Result<Vec<Link>, StoreError> {
        let rows = sqlx::query(concat!("SELECT ", link_columns!(), " FROM links"))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        sorted_links(&rows)
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM checkpoints WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
    }

    async fn crm_child(&self, entity: &str, id: &str) -> Result<Option<CrmChild>, StoreError> {
        let row = sqlx::query(
            "SELECT parent_entity, parent_id FROM crm_children WHERE entity = ? AND id = ?",
        )
        .bind(packed::name(entity))
        .bind(packed::id(id))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| {
            let what = "CRM child";
            Ok(CrmChild {
                entity: entity.to_string(),
                id: id.to_string(),
                parent_entity: packed::required(
                    what,
                    "parent_entity",
                    packed::read_name(&r, what, "parent_entity")?,
                )?,
                parent_id: packed::required(
                    what,
                    "parent_id",
                    packed::read_id(&r, what, "parent_id")?,
                )?,
            })
        })
        .transpose()
    }

    async fn intents(&self) -> Result<Vec<CreateIntent>, StoreError> {
        self.intents_where(None).await
    }

    async fn intent(
        &self,
        crm_entity: &str,
        crm_id: &str,
    ) -> Result<Option<CreateIntent>, StoreError> {
        Ok(self
            .intents_where(Some((crm_entity, crm_id)))
            .await?
            .into_iter()
            .next())
    }

    async fn links_by_engagement(&self, engagement_id: &str) -> Result<Vec<Link>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            link_columns!(),
            " FROM links WHERE engagement_id = ?"
        ))
        .bind(packed::id(engagement_id))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        sorted_links(&rows)
    }

    async fn link_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM links")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n.max(0) as u64)
    }

    async fn dead_letter_classes(&self) -> Result<Vec<DeadLetterClass>, StoreError> {
        // The class is the key's prefix, up to its first `:`.
        let rows = sqlx::query(
            "SELECT CASE WHEN instr(key, ':') > 0 THEN substr(key, 1, instr(key, ':') - 1) \
             ELSE key END AS class, direction, COUNT(*) AS n, MIN(first_failed_at) AS oldest \
             FROM dead_letters GROUP BY class, direction ORDER BY class, direction",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let get = |c: &str| row.try_get::<String, _>(c).map_err(backend);
                let direction = get("direction")?;
                Ok(DeadLetterClass {
                    class: get("class")?,
                    direction: Direction::parse(&direction).ok_or_else(|| StoreError::Corrupt {
                        what: "dead letter",
                        detail: format!("direction `{direction}`"),
                    })?,
                    count: row.try_get::<i64, _>("n").map_err(backend)?.max(0) as u64,
                    oldest_failed_at: parse_ts("dead letter", &get("oldest")?)?,
                })
            })
            .collect()
    }

    async fn inbox_depth(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n.max(0) as u64)
    }

    async fn last_synced_at(
        &self,
        direction: Direction,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = sqlx::query(
            "SELECT at FROM audit WHERE direction = ? AND outcome IN (?, ?, ?) \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(packed::name(direction.as_str()))
        .bind(packed::name(AuditOutcome::Created.as_str()))
        .bind(packed::name(AuditOutcome::Updated.as_str()))
        .bind(packed::name(AuditOutcome::Merged.as_str()))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(match row {
            Some(row) => packed::read_time(&row, "audit entry", "at")?,
            None => None,
        })
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = if query.limit == 0 {
            -1
        } else {
            query.limit as i64
        };
        // One statement per filter, so each searches its index (`audit_by_referral`,
        // `audit_by_crm`): with `?1 IS NULL OR …` SQLite plans a walk of the whole trail.
        macro_rules! audit_select {
            ($where:literal) => {
                concat!(
                    "SELECT id, at, direction, referral_id, crm_entity, crm_id, outcome, message, conflicts \
                     FROM audit ",
                    $where,
                    " ORDER BY id DESC LIMIT ?3"
                )
            };
        }
        let sql = match (&query.referral_id, &query.crm_id) {
            (Some(_), Some(_)) => audit_select!("WHERE referral_id = ?1 AND crm_id = ?2"),
            (Some(_), None) => audit_select!("WHERE referral_id = ?1 AND ?2 IS NULL"),
            (None, Some(_)) => audit_select!("WHERE ?1 IS NULL AND crm_id = ?2"),
            (None, None) => audit_select!("WHERE ?1 IS NULL AND ?2 IS NULL"),
        };
        let rows = sqlx::query(sql)
            .bind(query.referral_id.as_deref().map(packed::id))
            .bind(query.crm_id.as_deref().map(packed::id))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.dead_letters_where(None).await
    }

    async fn dead_letter(&self, key: &str) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.dead_letters_where(Some(key)).await?.into_iter().next())
    }

    async fn push_hint(&self, body_hash: &str, hint: InboxHint) -> Result<bool, StoreError> {
        Ok(self.push_hints(vec![(body_hash.to_string(), hint)]).await? == 1)
    }

    async fn push_hints(&self, hints: Vec<(String, InboxHint)>) -> Result<usize, StoreError> {
        let mut tx = self.write_transaction().await?;
        // Retention runs on the store's clock, not on the timestamps a caller supplies.
        let now = Utc::now();
        let cutoff = ts(&(now - SEEN_RETENTION));
        sqlx::query("DELETE FROM inbox_seen WHERE seen_at < ?")
            .bind(cutoff)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let mut new = 0;
        for (body_hash, hint) in &hints {
            // A hash seen before, in an earlier push or earlier in this one, is a duplicate.
            let fresh = sqlx::query(
                "INSERT INTO inbox_seen (body_hash, seen_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(body_hash)
            .bind(ts(&now))
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected()
                == 1;
            if fresh {
                sqlx::query(
                    "INSERT INTO inbox (referral_id, event, change_time, received_at, payload) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(&hint.referral_id)
                .bind(&hint.event)
                .bind(hint.change_time.as_ref().map(ts))
                .bind(ts(&hint.received_at))
                .bind(hint.payload.as_deref())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                new += 1;
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(new)
    }

    async fn pending_hints(&self, max: usize) -> Result<Vec<InboxHint>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, referral_id, event, change_time, received_at, payload FROM inbox \
             ORDER BY seq LIMIT ?",
        )
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(hint_from_row).collect()
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let mut tx = self.write_transaction().await?;
        for id in &commit.remove_links {
            sqlx::query("DELETE FROM links WHERE referral_id = ?")
                .bind(packed::id(id))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        for link in &commit.links {
            let result = sqlx::query(
                "INSERT INTO links (referral_id, engagement_id, crm_entity, crm_id, pc_etag, pc_updated_at, crm_etag, target, crm_known, pc_known, in_sync, crm_status_in_transit, synced_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (referral_id) DO UPDATE SET engagement_id = excluded.engagement_id, \
                 crm_entity = excluded.crm_entity, crm_id = excluded.crm_id, pc_etag = excluded.pc_etag, \
                 pc_updated_at = excluded.pc_updated_at, crm_etag = excluded.crm_etag, target = excluded.target, \
                 crm_known = excluded.crm_known, pc_known = excluded.pc_known, in_sync = excluded.in_sync, \
                 crm_status_in_transit = excluded.crm_status_in_transit, \
                 synced_at = excluded.synced_at",
            )
            .bind(packed::id(&link.referral_id))
            .bind(link.engagement_id.as_deref().map(packed::id))
            .bind(packed::name(&link.crm_entity))
            .bind(link.crm_id.as_deref().map(packed::id))
            .bind(link.pc_etag.as_deref().map(packed::pc_etag))
            .bind(link.pc_updated_at.as_ref().map(packed::time))
            .bind(link.crm_etag.as_deref().map(packed::crm_etag))
            .bind(compact::encode(&link.target))
            .bind(link.crm_known.as_ref().map(compact::encode))
            .bind(link.pc_known.as_ref().map(compact::encode))
            .bind(link.in_sync)
            .bind(link.crm_status_in_transit)
            .bind(packed::time(&link.synced_at))
            .execute(&mut *tx)
            .await;
            if let Err(e) = result {
                // Dropping `tx` rolls everything back.
                return Err(match e.as_database_error() {
                    Some(db) if db.is_unique_violation() => StoreError::Conflict(format!(
                        "{} {} is already linked to another referral, cannot link it to {}",
                        link.crm_entity,
                        link.crm_id.as_deref().unwrap_or("?"),
                        link.referral_id
                    )),
                    _ => backend(e),
                });
            }
        }
        for (entity, id) in &commit.resolved_intents {
            sqlx::query("DELETE FROM create_intents WHERE crm_entity = ? AND crm_id = ?")
                .bind(entity)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        for intent in &commit.intents {
            sqlx::query(
                "INSERT INTO create_intents (crm_entity, crm_id, external_reference_id, recorded_at, attempts, target, crm_etag) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (crm_entity, crm_id) DO UPDATE SET \
                 external_reference_id = excluded.external_reference_id, recorded_at = excluded.recorded_at, \
                 attempts = excluded.attempts, target = excluded.target, crm_etag = excluded.crm_etag",
            )
            .bind(&intent.crm_entity)
            .bind(&intent.crm_id)
            .bind(&intent.external_reference_id)
            .bind(ts(&intent.recorded_at))
            .bind(i64::from(intent.attempts))
            .bind(intent.target.as_ref().map(compact::encode))
            .bind(intent.crm_etag.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        let now = ts(&Utc::now());
        for (name, value) in &commit.checkpoints {
            sqlx::query(
                "INSERT INTO checkpoints (name, value, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(value)
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        for (entity, id) in &commit.forget_crm_children {
            sqlx::query("DELETE FROM crm_children WHERE entity = ? AND id = ?")
                .bind(packed::name(entity))
                .bind(packed::id(id))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        for child in &commit.crm_children {
            sqlx::query(
                "INSERT INTO crm_children (entity, id, parent_entity, parent_id) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (entity, id) DO UPDATE SET parent_entity = excluded.parent_entity, \
                 parent_id = excluded.parent_id",
            )
            .bind(packed::name(&child.entity))
            .bind(packed::id(&child.id))
            .bind(packed::name(&child.parent_entity))
            .bind(packed::id(&child.parent_id))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        for entry in &commit.audit {
            sqlx::query(
                "INSERT INTO audit (at, direction, referral_id, crm_entity, crm_id, outcome, message, conflicts) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(packed::time(&entry.at))
            .bind(packed::name(entry.direction.as_str()))
            .bind(entry.referral_id.as_deref().map(packed::id))
            .bind(entry.crm_entity.as_deref().map(packed::name))
            .bind(entry.crm_id.as_deref().map(packed::id))
            .bind(packed::name(entry.outcome.as_str()))
            .bind(&entry.message)
            .bind(if entry.conflicts.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&entry.conflicts).map_err(backend)?)
            })
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        for key in &commit.clear_dead_letters {
            sqlx::query("DELETE FROM dead_letters WHERE key = ?")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        for letter in &commit.dead_letters {
            sqlx::query(
                "INSERT INTO dead_letters (key, direction, error, attempts, first_failed_at, last_failed_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET direction = excluded.direction, \
                 error = excluded.error, attempts = excluded.attempts, last_failed_at = excluded.last_failed_at",
            )
            .bind(&letter.key)
            .bind(letter.direction.as_str())
            .bind(&letter.error)
            .bind(i64::from(letter.attempts))
            .bind(ts(&letter.first_failed_at))
            .bind(ts(&letter.last_failed_at))
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        for seq in &commit.ack_hints {
            sqlx::query("DELETE FROM inbox WHERE seq = ?")
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn try_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(ttl).map_err(backend)?;
        // One statement: taken when free, expired or ours; otherwise the row is left alone.
        let _turn = self.writes.lock().await;
        let taken = sqlx::query(
            "INSERT INTO leases (key, holder, expires_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4",
        )
        .bind(packed::lease_key(key))
        .bind(holder)
        .bind(packed::time(&until))
        .bind(packed::time(&now))
        .execute(&self.leases)
        .await
        .map_err(backend)?
        .rows_affected();
        Ok(taken == 1)
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        let _turn = self.writes.lock().await;
        sqlx::query("DELETE FROM leases WHERE key = ? AND holder = ?")
            .bind(packed::lease_key(key))
            .bind(holder)
            .execute(&self.leases)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn release_leases(&self, keys: &[String], holder: &str) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let _turn = self.writes.lock().await;
        let mut tx = self
            .leases
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        for chunk in keys.chunks(IN_LIST_MAX) {
            let sql = in_list("DELETE FROM leases WHERE holder = ? AND key", chunk.len());
            let mut query = sqlx::query(sql).bind(holder);
            for key in chunk {
                query = query.bind(packed::lease_key(key));
            }
            query.execute(&mut *tx).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn claim_hints(
        &self,
        holder: &str,
        max: usize,
        ttl: Duration,
    ) -> Result<Vec<InboxHint>, StoreError> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(ttl).map_err(backend)?;
        // SQLite serializes writers, so the sub-select and the update cannot interleave with
        // another worker's claim.
        let turn = self.writes.lock().await;
        let rows = sqlx::query(
            "UPDATE inbox SET claimed_by = ?1, claimed_until = ?2 WHERE seq IN ( \
               SELECT seq FROM inbox WHERE claimed_until IS NULL OR claimed_until <= ?3 \
               ORDER BY seq LIMIT ?4) \
             RETURNING seq, referral_id, event, change_time, received_at, payload",
        )
        .bind(holder)
        .bind(ts(&until))
        .bind(ts(&now))
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.leases)
        .await
        .map_err(backend)?;
        drop(turn);
        let mut hints = rows
            .iter()
            .map(hint_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        hints.sort_by_key(|h| h.seq);
        Ok(hints)
    }
}

fn audit_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<AuditEntry, StoreError> {
    let what = "audit entry";
    let direction = packed::required(
        what,
        "direction",
        packed::read_name(row, what, "direction")?,
    )?;
    let outcome = packed::required(what, "outcome", packed::read_name(row, what, "outcome")?)?;
    Ok(AuditEntry {
        id: row.try_get("id").map_err(backend)?,
        at: packed::required(what, "at", packed::read_time(row, what, "at")?)?,
        direction: Direction::parse(&direction).ok_or_else(|| StoreError::Corrupt {
            what,
            detail: format!("direction `{direction}`"),
        })?,
        referral_id: packed::read_id(row, what, "referral_id")?,
        crm_entity: packed::read_name(row, what, "crm_entity")?,
        crm_id: packed::read_id(row, what, "crm_id")?,
        outcome: AuditOutcome::parse(&outcome).ok_or_else(|| StoreError::Corrupt {
            what,
            detail: format!("outcome `{outcome}`"),
        })?,
        message: row.try_get("message").map_err(backend)?,
        // No conflicts are stored as NULL (migration 0006), a list as its JSON text.
        conflicts: match row
            .try_get::<Option<String>, _>("conflicts")
            .map_err(backend)?
        {
            None => Vec::new(),
            Some(text) => serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                what,
                detail: format!("conflicts: {e}"),
            })?,
        },
    })
}

fn hint_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<InboxHint, StoreError> {
    let get = |c: &str| row.try_get::<String, _>(c).map_err(backend);
    Ok(InboxHint {
        seq: row.try_get("seq").map_err(backend)?,
        referral_id: get("referral_id")?,
        event: get("event")?,
        change_time: opt_ts(
            "inbox hint",
            row.try_get::<Option<String>, _>("change_time")
                .map_err(backend)?,
        )?,
        received_at: parse_ts("inbox hint", &get("received_at")?)?,
        payload: row
            .try_get::<Option<String>, _>("payload")
            .map_err(backend)?,
    })
}
