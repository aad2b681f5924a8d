//! The PostgreSQL state store: for several workers (processes, hosts) sharing one database.
//!
//! Same contract as the SQLite store, schema under its own versioned migrations
//! (`migrations-postgres/` in this crate, applied by sqlx at connect; concurrent connects are
//! serialized by sqlx's advisory lock). Every per-record operation is a point lookup on a key or
//! an index; counts are queries. Leases and inbox claims use the database's clock (`now()`), so
//! the workers' clocks need not agree.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use super::{
    AuditEntry, AuditOutcome, AuditQuery, Commit, CreateIntent, CrmChild, DeadLetter, Direction,
    InboxHint, Link, StateStore, StoreError, compact,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations-postgres");

/// How long a delivery's body hash is remembered for deduplication.
const SEEN_RETENTION: chrono::Duration = chrono::Duration::days(7);

/// The PostgreSQL state store (cheap to clone; clones share the pool).
///
/// ```no_run
/// # async fn f() -> Result<(), cosell_sync::store::StoreError> {
/// use cosell_sync::store::{PostgresStore, StateStore};
/// let store = PostgresStore::connect("postgres://cosell@db.internal/cosell").await?;
/// println!("{} links", store.link_count().await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    schema: Option<String>,
}

impl fmt::Debug for PostgresStore {
    // The pool's options hold the password: only the schema is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::backend_caused_by(e)
}

/// A `std` duration as seconds for `make_interval` (saturating: a lease has no business being
/// centuries long).
fn seconds(d: Duration) -> f64 {
    d.as_secs_f64().min(1e9)
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`) and brings
    /// its schema up to date. The password never appears in an error.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, None).await
    }

    /// Like [`connect`](Self::connect), with every table in the schema `schema` (created when
    /// missing): several independent stores in one database (tests, tenants).
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<Self, StoreError> {
        let valid = !schema.is_empty()
            && schema.len() <= 63
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !schema.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(StoreError::backend(format!(
                "schema `{schema}` is not a plain PostgreSQL name (lower-case letters, digits, \
                 `_`, at most 63, not starting with a digit)"
            )));
        }
        Self::open(url, Some(schema)).await
    }

    async fn open(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(url).map_err(|_| {
            StoreError::backend(
                "the PostgreSQL URL is not valid (expected postgres://user@host:port/database)",
            )
        })?;
        if let Some(schema) = schema {
            // Created over a plain connection first: the pool's connections start in it.
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await
                .map_err(backend)?;
            // The name was checked to be a plain identifier above.
            let create = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(create.as_str()))
                .execute(&admin)
                .await
                .map_err(backend)?;
            admin.close().await;
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(backend)?;
        MIGRATOR.run(&pool).await.map_err(backend)?;
        Ok(PostgresStore {
            pool,
            schema: schema.map(str::to_string),
        })
    }

    /// The schema the tables live in, when connected with
    /// [`connect_in_schema`](Self::connect_in_schema).
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The schema version (the latest applied migration).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }

    /// What the store's tables and their indexes take on disk, in bytes
    /// (`pg_total_relation_size` summed): for sizing a database.
    pub async fn size_on_disk(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname = current_schema()",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(backend)
    }

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn intents_where(
        &self,
        key: Option<(&str, &str)>,
    ) -> Result<Vec<CreateIntent>, StoreError> {
        let (entity, id) = key.unzip();
        let rows = sqlx::query(
            "SELECT crm_entity, crm_id, external_reference_id, recorded_at, attempts, target, crm_etag \
             FROM create_intents WHERE ($1::TEXT IS NULL OR (crm_entity = $1 AND crm_id = $2)) \
             ORDER BY recorded_at",
        )
        .bind(entity)
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                Ok(CreateIntent {
                    crm_entity: row.try_get("crm_entity").map_err(backend)?,
                    crm_id: row.try_get("crm_id").map_err(backend)?,
                    external_reference_id: row.try_get("external_reference_id").map_err(backend)?,
                    recorded_at: row.try_get("recorded_at").map_err(backend)?,
                    attempts: row.try_get::<i64, _>("attempts").map_err(backend)?.max(0) as u32,
                    target: json_column(row, "intent", "target")?,
                    crm_etag: row.try_get("crm_etag").map_err(backend)?,
                })
            })
            .collect()
    }

    async fn dead_letters_where(&self, key: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT key, direction, error, attempts, first_failed_at, last_failed_at \
             FROM dead_letters WHERE ($1::TEXT IS NULL OR key = $1) ORDER BY first_failed_at",
        )
        .bind(key)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let direction: String = row.try_get("direction").map_err(backend)?;
                Ok(DeadLetter {
                    key: row.try_get("key").map_err(backend)?,
                    direction: Direction::parse(&direction).ok_or_else(|| StoreError::Corrupt {
                        what: "dead letter",
                        detail: format!("direction `{direction}`"),
                    })?,
                    error: row.try_get("error").map_err(backend)?,
                    attempts: row.try_get::<i64, _>("attempts").map_err(backend)?.max(0) as u32,
                    first_failed_at: row.try_get("first_failed_at").map_err(backend)?,
                    last_failed_at: row.try_get("last_failed_at").map_err(backend)?,
                })
            })
            .collect()
    }
}

/// An optional snapshot column of `row`, decoded: the compact form, or the JSON text of rows
/// written before it (migration 0002).
fn json_column(
    row: &PgRow,
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

fn link_from_row(row: &PgRow) -> Result<Link, StoreError> {
    let snapshot = |c: &str| json_column(row, "link", c);
    Ok(Link {
        referral_id: row.try_get("referral_id").map_err(backend)?,
        engagement_id: row.try_get("engagement_id").map_err(backend)?,
        crm_entity: row.try_get("crm_entity").map_err(backend)?,
        crm_id: row.try_get("crm_id").map_err(backend)?,
        pc_etag: row.try_get("pc_etag").map_err(backend)?,
        pc_updated_at: row.try_get("pc_updated_at").map_err(backend)?,
        crm_etag: row.try_get("crm_etag").map_err(backend)?,
        target: snapshot("target")?.ok_or_else(|| StoreError::Corrupt {
            what: "link",
            detail: "no target snapshot".into(),
        })?,
        crm_known: snapshot("crm_known")?,
        pc_known: snapshot("pc_known")?,
        in_sync: row.try_get("in_sync").map_err(backend)?,
        crm_status_in_transit: row.try_get("crm_status_in_transit").map_err(backend)?,
        synced_at: row.try_get("synced_at").map_err(backend)?,
    })
}

fn hint_from_row(row: &PgRow) -> Result<InboxHint, StoreError> {
    Ok(InboxHint {
        seq: row.try_get("seq").map_err(backend)?,
        referral_id: row.try_get("referral_id").map_err(backend)?,
        event: row.try_get("event").map_err(backend)?,
        change_time: row.try_get("change_time").map_err(backend)?,
        received_at: row.try_get("received_at").map_err(backend)?,
        payload: row.try_get("payload").map_err(backend)?,
    })
}

/// The link columns, as a macro so queries stay `&'static str`.
macro_rules! link_columns {
    () => {
        "referral_id, engagement_id, crm_entity, crm_id, pc_etag, pc_updated_at, crm_etag, target, crm_known, pc_known, in_sync, crm_status_in_transit, synced_at"
    };
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn link_by_referral(&self, referral_id: &str) -> Result<Option<Link>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            link_columns!(),
            " FROM links WHERE referral_id = $1"
        ))
        .bind(referral_id)
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
            " FROM links WHERE crm_entity = $1 AND crm_id = $2"
        ))
        .bind(crm_entity)
        .bind(crm_id)
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
        let rows = sqlx::query(concat!(
            "SELECT ",
            link_columns!(),
            " FROM links WHERE crm_entity = $1 AND crm_id = ANY($2)"
        ))
        .bind(crm_entity)
        .bind(crm_ids)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(link_from_row).collect()
    }

    async fn links(&self) -> Result<Vec<Link>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            link_columns!(),
            " FROM links ORDER BY referral_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(link_from_row).collect()
    }

    async fn links_by_engagement(&self, engagement_id: &str) -> Result<Vec<Link>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            link_columns!(),
            " FROM links WHERE engagement_id = $1 ORDER BY referral_id"
        ))
        .bind(engagement_id)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(link_from_row).collect()
    }

    async fn link_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM links")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(n.max(0) as u64)
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT value FROM checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
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

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        // NULL is LIMIT ALL.
        let limit = (query.limit > 0).then(|| i64::try_from(query.limit).unwrap_or(i64::MAX));
        let rows = sqlx::query(
            "SELECT id, at, direction, referral_id, crm_entity, crm_id, outcome, message, conflicts \
             FROM audit WHERE ($1::TEXT IS NULL OR referral_id = $1) AND ($2::TEXT IS NULL OR crm_id = $2) \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(query.referral_id.as_deref())
        .bind(query.crm_id.as_deref())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let direction: String = row.try_get("direction").map_err(backend)?;
                let outcome: String = row.try_get("outcome").map_err(backend)?;
                let conflicts: String = row.try_get("conflicts").map_err(backend)?;
                Ok(AuditEntry {
                    id: row.try_get("id").map_err(backend)?,
                    at: row.try_get::<DateTime<Utc>, _>("at").map_err(backend)?,
                    direction: Direction::parse(&direction).ok_or_else(|| StoreError::Corrupt {
                        what: "audit entry",
                        detail: format!("direction `{direction}`"),
                    })?,
                    referral_id: row.try_get("referral_id").map_err(backend)?,
                    crm_entity: row.try_get("crm_entity").map_err(backend)?,
                    crm_id: row.try_get("crm_id").map_err(backend)?,
                    outcome: AuditOutcome::parse(&outcome).ok_or_else(|| StoreError::Corrupt {
                        what: "audit entry",
                        detail: format!("outcome `{outcome}`"),
                    })?,
                    message: row.try_get("message").map_err(backend)?,
                    conflicts: serde_json::from_str(&conflicts).map_err(|e| {
                        StoreError::Corrupt {
                            what: "audit entry",
                            detail: format!("conflicts: {e}"),
                        }
                    })?,
                })
            })
            .collect()
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Retention runs on the database's clock, not on the timestamps a caller supplies.
        sqlx::query("DELETE FROM inbox_seen WHERE seen_at < now() - make_interval(secs => $1)")
            .bind(SEEN_RETENTION.num_seconds() as f64)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let mut new = 0;
        for (body_hash, hint) in &hints {
            // A hash seen before, in an earlier push or earlier in this one, is a duplicate.
            let fresh = sqlx::query(
                "INSERT INTO inbox_seen (body_hash, seen_at) VALUES ($1, now()) ON CONFLICT DO NOTHING",
            )
            .bind(body_hash)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected()
                == 1;
            if fresh {
                sqlx::query(
                    "INSERT INTO inbox (referral_id, event, change_time, received_at, payload) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&hint.referral_id)
                .bind(&hint.event)
                .bind(hint.change_time)
                .bind(hint.received_at)
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
             ORDER BY seq LIMIT $1",
        )
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(hint_from_row).collect()
    }

    async fn crm_child(&self, entity: &str, id: &str) -> Result<Option<CrmChild>, StoreError> {
        let row = sqlx::query(
            "SELECT parent_entity, parent_id FROM crm_children WHERE entity = $1 AND id = $2",
        )
        .bind(entity)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| {
            Ok(CrmChild {
                entity: entity.to_string(),
                id: id.to_string(),
                parent_entity: r.try_get("parent_entity").map_err(backend)?,
                parent_id: r.try_get("parent_id").map_err(backend)?,
            })
        })
        .transpose()
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for id in &commit.remove_links {
            sqlx::query("DELETE FROM links WHERE referral_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        for link in &commit.links {
            let result = sqlx::query(
                "INSERT INTO links (referral_id, engagement_id, crm_entity, crm_id, pc_etag, pc_updated_at, crm_etag, target, crm_known, pc_known, in_sync, crm_status_in_transit, synced_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (referral_id) DO UPDATE SET engagement_id = excluded.engagement_id, \
                 crm_entity = excluded.crm_entity, crm_id = excluded.crm_id, pc_etag = excluded.pc_etag, \
                 pc_updated_at = excluded.pc_updated_at, crm_etag = excluded.crm_etag, target = excluded.target, \
                 crm_known = excluded.crm_known, pc_known = excluded.pc_known, in_sync = excluded.in_sync, \
                 crm_status_in_transit = excluded.crm_status_in_transit, synced_at = excluded.synced_at",
            )
            .bind(&link.referral_id)
            .bind(link.engagement_id.as_deref())
            .bind(&link.crm_entity)
            .bind(link.crm_id.as_deref())
            .bind(link.pc_etag.as_deref())
            .bind(link.pc_updated_at)
            .bind(link.crm_etag.as_deref())
            .bind(compact::encode(&link.target))
            .bind(link.crm_known.as_ref().map(compact::encode))
            .bind(link.pc_known.as_ref().map(compact::encode))
            .bind(link.in_sync)
            .bind(link.crm_status_in_transit)
            .bind(link.synced_at)
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
            sqlx::query("DELETE FROM create_intents WHERE crm_entity = $1 AND crm_id = $2")
                .bind(entity)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        for intent in &commit.intents {
            sqlx::query(
                "INSERT INTO create_intents (crm_entity, crm_id, external_reference_id, recorded_at, attempts, target, crm_etag) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (crm_entity, crm_id) DO UPDATE SET \
                 external_reference_id = excluded.external_reference_id, recorded_at = excluded.recorded_at, \
                 attempts = excluded.attempts, target = excluded.target, crm_etag = excluded.crm_etag",
            )
            .bind(&intent.crm_entity)
            .bind(&intent.crm_id)
            .bind(&intent.external_reference_id)
            .bind(intent.recorded_at)
            .bind(i64::from(intent.attempts))
            .bind(intent.target.as_ref().map(compact::encode))
            .bind(intent.crm_etag.as_deref())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        for (name, value) in &commit.checkpoints {
            sqlx::query(
                "INSERT INTO checkpoints (name, value, updated_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        for (entity, id) in &commit.forget_crm_children {
            sqlx::query("DELETE FROM crm_children WHERE entity = $1 AND id = $2")
                .bind(entity)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        for child in &commit.crm_children {
            sqlx::query(
                "INSERT INTO crm_children (entity, id, parent_entity, parent_id) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (entity, id) DO UPDATE SET parent_entity = excluded.parent_entity, \
                 parent_id = excluded.parent_id",
            )
            .bind(&child.entity)
            .bind(&child.id)
            .bind(&child.parent_entity)
            .bind(&child.parent_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        for entry in &commit.audit {
            sqlx::query(
                "INSERT INTO audit (at, direction, referral_id, crm_entity, crm_id, outcome, message, conflicts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(entry.at)
            .bind(entry.direction.as_str())
            .bind(entry.referral_id.as_deref())
            .bind(entry.crm_entity.as_deref())
            .bind(entry.crm_id.as_deref())
            .bind(entry.outcome.as_str())
            .bind(&entry.message)
            .bind(serde_json::to_string(&entry.conflicts).map_err(backend)?)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        for key in &commit.clear_dead_letters {
            sqlx::query("DELETE FROM dead_letters WHERE key = $1")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        for letter in &commit.dead_letters {
            sqlx::query(
                "INSERT INTO dead_letters (key, direction, error, attempts, first_failed_at, last_failed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key) DO UPDATE SET direction = excluded.direction, \
                 error = excluded.error, attempts = excluded.attempts, last_failed_at = excluded.last_failed_at",
            )
            .bind(&letter.key)
            .bind(letter.direction.as_str())
            .bind(&letter.error)
            .bind(i64::from(letter.attempts))
            .bind(letter.first_failed_at)
            .bind(letter.last_failed_at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        if !commit.ack_hints.is_empty() {
            sqlx::query("DELETE FROM inbox WHERE seq = ANY($1)")
                .bind(&commit.ack_hints)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn try_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        // One statement: taken when free, expired or ours; a live lease of another holder is
        // left alone (the row is locked for the statement, so two workers cannot both win).
        let taken = sqlx::query(
            "INSERT INTO leases (key, holder, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3)) \
             ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= now()",
        )
        .bind(key)
        .bind(holder)
        .bind(seconds(ttl))
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected();
        Ok(taken == 1)
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE key = $1 AND holder = $2")
            .bind(key)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn release_leases(&self, keys: &[String], holder: &str) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM leases WHERE holder = $1 AND key = ANY($2)")
            .bind(holder)
            .bind(keys)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn claim_hints(
        &self,
        holder: &str,
        max: usize,
        ttl: Duration,
    ) -> Result<Vec<InboxHint>, StoreError> {
        // SKIP LOCKED: a worker claiming at the same moment takes the next hints instead of
        // waiting for these.
        let rows = sqlx::query(
            "UPDATE inbox SET claimed_by = $1, claimed_until = now() + make_interval(secs => $2) \
             WHERE seq IN (SELECT seq FROM inbox \
               WHERE claimed_until IS NULL OR claimed_until <= now() \
               ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING seq, referral_id, event, change_time, received_at, payload",
        )
        .bind(holder)
        .bind(seconds(ttl))
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut hints = rows
            .iter()
            .map(hint_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        hints.sort_by_key(|h| h.seq);
        Ok(hints)
    }
}
