//! The Dataverse emulator: the Web API for the tables the sync uses, on `serde_json::Value` rows.
//!
//! # What it serves (under `/api/data/v9.2/`, also `v9.0`/`v9.1`)
//!
//! | route | behaviour |
//! |---|---|
//! | `GET /{set}` | `$select`, `$filter` ([`filter`]), `$orderby`, `$top`, `$count`, `$expand` (lookups, N:N; `$select` inside), `Prefer: odata.maxpagesize` + opaque `@odata.nextLink` (`$skiptoken`), 5000-row pages; `Prefer: odata.track-changes` → `@odata.deltaLink` |
//! | `GET /{set}?$deltatoken=…` | rows created/changed since the token, then `$deletedEntity` entries |
//! | `GET /{set}/$count` | `text/plain` count |
//! | `POST /{set}` | create: 204 + `OData-EntityId`, or 201 + body with `Prefer: return=representation` |
//! | `GET/PATCH/DELETE /{set}({guid})`, `/{set}(key='v'[,k2=…])` | read (304 on a matching `If-None-Match`), upsert (`If-Match`, `If-Match: *`, `If-None-Match: *`; 204 or 201/200), delete |
//! | `GET/PUT/DELETE /{set}(id)/{property}` | single property |
//! | `GET /{set}(id)/{nav}` | related row (lookup) or rows (N:N) |
//! | `PUT/DELETE /{set}(id)/{nav}/$ref`, `POST /{set}(id)/{n:n}/$ref`, `DELETE /{set}(id)/{n:n}({id})/$ref` | set/clear a lookup, associate/disassociate |
//! | `POST /$batch` | multipart/mixed, change sets (atomic), `$n` references, `odata.continue-on-error` |
//! | `POST /WinOpportunity`, `POST /LoseOpportunity` | close the opportunity, create the `opportunityclose` |
//! | `POST /leads(id)/Microsoft.Dynamics.CRM.QualifyLead` | create account/contact/opportunity, qualify the lead |
//! | `GET /WhoAmI` | user, business unit and organization ids |
//! | `GET /systemusers(id)/Microsoft.Dynamics.CRM.RetrievePrincipalAccess(Target=@t)` | the application user's access rights to a row ([`deny_access`](DataverseEmulator::deny_access)) |
//! | `GET /EntityDefinitions(LogicalName='x')[/Attributes[(LogicalName='y')]|/Keys]` | metadata for the schema check (404 on an unknown table) |
//! | `GET …/Attributes(LogicalName='y')/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$expand=OptionSet`, `GET …/ManyToOneRelationships` | a column's own properties and option set; the lookups with their navigation properties |
//! | `POST /EntityDefinitions`, `POST …/Attributes`, `POST …/Keys`, `POST /RelationshipDefinitions` (one-to-many) | metadata writes, each under `MSCRM.SolutionUniqueName` when given; keys index Pending → InProgress → Active over reads ([`fail_next_key_index`](DataverseEmulator::fail_next_key_index)) and refuse upserts until Active |
//! | `PUT /EntityDefinitions(id)`, `POST /PublishXml`, `POST /PublishAllXml`, `POST /ReactivateEntityKey` | the whole definition back (change tracking on, never off), publishing, a failed key queued again |
//! | `GET /$metadata`, `GET /` | minimal CSDL, service document |
//!
//! Every response carries `OData-Version: 4.0`, `x-ms-dop-hint` and the
//! `x-ms-ratelimit-*-remaining-xrm-requests` headers; errors are
//! `{"error":{"code":"0x…","message":"…"}}` with the documented codes ([`codes`]). Bearer tokens
//! must come from the Entra stand-in for the environment URL (scope `{environment}/.default`).
//! Service-protection limits ([`ServiceLimits`]) answer 429 + `Retry-After` with
//! `0x80072322` (requests), `0x80072321` (execution time) or `0x80072326` (concurrency).
//!
//! # Cost
//!
//! Reads are flat in the number of rows: equality indexes (alternate-key columns, lookups,
//! primary names, intersect columns, and each column a `$filter … eq …` names, indexed on its
//! first use) answer upserts, duplicate-key checks, `$expand` of N:N and `$filter`s built of
//! `eq`/`and`/`or`/`In` on them, every candidate still checked against the whole filter; a
//! version index serves delta reads. Other filters scan, with the same results.
//!
//! # Control API (for tests and benches)
//!
//! [`rows`](DataverseEmulator::rows), [`row`](DataverseEmulator::row),
//! [`query`](DataverseEmulator::query), [`count`](DataverseEmulator::count),
//! [`insert_row`](DataverseEmulator::insert_row),
//! [`update_as_user`](DataverseEmulator::update_as_user),
//! [`delete_as_user`](DataverseEmulator::delete_as_user),
//! [`associate`](DataverseEmulator::associate), [`related`](DataverseEmulator::related),
//! [`currency_id`](DataverseEmulator::currency_id),
//! [`limits`](DataverseEmulator::limits) / [`set_limits`](DataverseEmulator::set_limits) /
//! [`reset_limit_windows`](DataverseEmulator::reset_limit_windows) /
//! [`throttle_counts`](DataverseEmulator::throttle_counts) /
//! [`limit_usage`](DataverseEmulator::limit_usage) /
//! [`reset_limit_usage`](DataverseEmulator::reset_limit_usage),
//! [`expire_change_tracking_tokens`](DataverseEmulator::expire_change_tracking_tokens),
//! [`version`](DataverseEmulator::version),
//! [`write_requests`](DataverseEmulator::write_requests),
//! [`metadata_writes`](DataverseEmulator::metadata_writes),
//! [`solution_components`](DataverseEmulator::solution_components),
//! [`key_index_status`](DataverseEmulator::key_index_status).

mod actions;
mod batch;
pub mod error;
pub mod filter;
#[cfg(test)]
mod index_tests;
mod limits;
mod metadata;
mod money;
mod ops;
mod query;
mod request;
mod schema;
mod schema_file;
mod store;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use error::codes;
pub use limits::{LimitKind, LimitUsage, ServiceLimits, ThrottleCounts};
pub use schema::{
    AlternateKey, ColumnDef, ColumnType, DataverseSchema, LookupTarget, ManyToMany, SeedCurrency,
    StateModel, StateOption, TableDef,
};
pub use schema_file::SchemaFileError;

use crate::EmulatorContext;
use error::{DvError, DvResult};
use limits::Limiter;
use ops::{Ctx, Identity};
use request::{OpBody, OpRequest, OpResponse, Prefer};
use store::{Model, Row, Store};

/// The API version in the URLs the emulator writes.
pub const API_PATH: &str = "api/data/v9.2/";

/// An error from the control API (the same validation the Web API applies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlError {
    status: u16,
    code: String,
    message: String,
}

impl ControlError {
    /// The HTTP status the Web API would answer.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The Dataverse hex code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ControlError {}

impl From<DvError> for ControlError {
    fn from(e: DvError) -> Self {
        ControlError {
            status: e.status.as_u16(),
            code: e.code.to_string(),
            message: e.message,
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// Replaced (under the store lock) when a metadata write changes the schema.
    model: RwLock<Arc<Model>>,
    /// Requests other than GET (a `$batch` counts once).
    writes: AtomicU64,
    store: Mutex<Store>,
    limiter: Limiter,
    identity: Identity,
    api_base: String,
}

/// The Dataverse emulator (cheap to clone; clones share state).
#[derive(Debug, Clone)]
pub struct DataverseEmulator {
    ctx: EmulatorContext,
    inner: Arc<Inner>,
}

fn seeded_id(rng: &mut StdRng) -> Uuid {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

impl DataverseEmulator {
    /// Creates the emulator with `schema`, seeding `transactioncurrencies`.
    pub fn new(ctx: EmulatorContext, schema: DataverseSchema) -> Self {
        let model = Model::compile(schema);
        let mut store = Store::new(&model, ctx.seed);
        let mut rng = StdRng::seed_from_u64(ctx.seed ^ 0x5eed_0f1d);
        let identity = Identity {
            user_id: seeded_id(&mut rng),
            business_unit_id: seeded_id(&mut rng),
            organization_id: seeded_id(&mut rng),
        };
        if model.table("transactioncurrency").is_some() {
            for c in model.schema.currencies() {
                let id = store.new_id();
                let mut row = Row::new();
                row.insert(
                    "transactioncurrencyid".into(),
                    Value::String(id.to_string()),
                );
                row.insert("isocurrencycode".into(), Value::String(c.iso_code.clone()));
                row.insert("currencyname".into(), Value::String(c.name.clone()));
                row.insert("currencysymbol".into(), Value::String(c.symbol.clone()));
                row.insert("exchangerate".into(), serde_json::json!(c.exchange_rate));
                row.insert("currencyprecision".into(), Value::from(c.precision));
                row.insert("statecode".into(), Value::from(0));
                row.insert("statuscode".into(), Value::from(1));
                store.put("transactioncurrency", id, row);
            }
        }
        let api_base = format!("{}{API_PATH}", ctx.urls.dataverse);
        DataverseEmulator {
            inner: Arc::new(Inner {
                model: RwLock::new(Arc::new(model)),
                writes: AtomicU64::new(0),
                store: Mutex::new(store),
                limiter: Limiter::new(ServiceLimits::default()),
                identity,
                api_base,
            }),
            ctx,
        }
    }

    /// The shared context.
    pub fn context(&self) -> &EmulatorContext {
        &self.ctx
    }

    /// The schema served (metadata writes through the API change it).
    pub fn schema(&self) -> DataverseSchema {
        self.model().schema.clone()
    }

    fn model(&self) -> Arc<Model> {
        self.inner
            .model
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The Web API root, `{environment}/api/data/v9.2/`.
    pub fn api_url(&self) -> String {
        self.inner.api_base.clone()
    }

    /// Routes of the Dataverse host.
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_ctx<T>(&self, f: impl FnOnce(&mut Ctx<'_>) -> T) -> T {
        let mut store = self.lock();
        // Read under the store lock: a metadata write replaces the model under it too.
        let model = self.model();
        let empty = HashMap::new();
        let mut ctx = Ctx {
            model: &model,
            store: &mut store,
            api_base: &self.inner.api_base,
            content_ids: &empty,
            identity: &self.inner.identity,
        };
        let out = f(&mut ctx);
        if let Some(schema) = store.meta.schema_change.take() {
            let next = Model::compile(schema);
            store.reindex(&next);
            *self.inner.model.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        }
        out
    }

    // ----- control API: data ------------------------------------------------------------

    /// Every row of `table` (logical or entity set name), as the API renders it without
    /// `$select` (lookups as `_x_value`, `@odata.etag`, `versionnumber`). Empty when unknown.
    pub fn rows(&self, table: &str) -> Vec<Value> {
        let model = self.model();
        let Ok(t) = table_in(&model, table) else {
            return Vec::new();
        };
        let store = self.lock();
        store
            .rows(t.logical())
            .map(|rows| {
                rows.values()
                    .map(|r| {
                        Value::Object(ops::render(&model, &store, t, r, None, &Prefer::default()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One row by primary key.
    pub fn row(&self, table: &str, id: Uuid) -> Option<Value> {
        let model = self.model();
        let t = table_in(&model, table).ok()?;
        let store = self.lock();
        store
            .get(t.logical(), &id)
            .map(|r| Value::Object(ops::render(&model, &store, t, r, None, &Prefer::default())))
    }

    /// Rows matching a `$filter` expression (same parser and semantics as the API).
    pub fn query(&self, table: &str, filter: &str) -> Result<Vec<Value>, ControlError> {
        let model = self.model();
        let t = table_in(&model, table)?;
        let expr = filter::parse(filter, &HashMap::new())
            .map_err(|e| ControlError::from(DvError::odata(e.message().to_string())))?;
        let bound = query::bind(t, &expr)?;
        let mut store = self.lock();
        store.index_filter(t.logical(), &bound);
        Ok(store
            .table_data(t.logical())
            .map(|d| {
                query::filter_rows(d, Some(&bound))
                    .into_iter()
                    .map(|r| {
                        Value::Object(ops::render(&model, &store, t, r, None, &Prefer::default()))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Number of rows in `table` (0 when unknown).
    pub fn count(&self, table: &str) -> usize {
        let model = self.model();
        let Ok(t) = table_in(&model, table) else {
            return 0;
        };
        self.lock().rows(t.logical()).map_or(0, |r| r.len())
    }

    /// Inserts a row as a create through the API would (same body format: columns,
    /// `nav@odata.bind`, validation, alternate keys), without counting as a request.
    pub fn insert_row(&self, table: &str, body: Value) -> Result<Uuid, ControlError> {
        let model = self.model();
        let t = table_in(&model, table)?;
        let body = as_object(t, body)?;
        Ok(self.with_ctx(|ctx| ops::atomic(ctx, |ctx| ops::create_row(ctx, t, &body, None, &[])))?)
    }

    /// Changes a row as a CRM user editing it would: a PATCH's semantics (new version, so
    /// change tracking and ETags see it; closed rows stay read-only).
    pub fn update_as_user(
        &self,
        table: &str,
        id: Uuid,
        changes: Value,
    ) -> Result<(), ControlError> {
        let model = self.model();
        let t = table_in(&model, table)?;
        let body = as_object(t, changes)?;
        Ok(self.with_ctx(|ctx| ops::atomic(ctx, |ctx| ops::update_row(ctx, t, id, &body, &[])))?)
    }

    /// Deletes a row as a CRM user would (change tracking reports it as deleted).
    pub fn delete_as_user(&self, table: &str, id: Uuid) -> Result<(), ControlError> {
        let model = self.model();
        let t = table_in(&model, table)?;
        self.with_ctx(|ctx| {
            if ctx.store.get(t.logical(), &id).is_none() {
                return Err(DvError::row_not_found(t.logical(), &id.to_string()).into());
            }
            ops::delete_row(ctx, t, id);
            Ok(())
        })
    }

    /// Associates two rows through an N:N relationship (`relationship` is its schema name;
    /// `id` belongs to `table`).
    pub fn associate(
        &self,
        table: &str,
        id: Uuid,
        relationship: &str,
        other: Uuid,
    ) -> Result<(), ControlError> {
        let model = self.model();
        let t = table_in(&model, table)?;
        Ok(self.with_ctx(|ctx| {
            let Some(n) = t.collections.get(relationship) else {
                return Err(DvError::unknown_property(relationship, t.logical()));
            };
            if ctx.store.get(&n.other_table, &other).is_none() {
                return Err(DvError::row_not_found(&n.other_table, &other.to_string()));
            }
            ops::atomic(ctx, |ctx| ops::associate(ctx, t, id, relationship, other))
        })?)
    }

    /// Ids of the rows related to `id` through an N:N relationship.
    pub fn related(&self, table: &str, id: Uuid, relationship: &str) -> Vec<Uuid> {
        let model = self.model();
        let Ok(t) = table_in(&model, table) else {
            return Vec::new();
        };
        let Some(n) = t.collections.get(relationship) else {
            return Vec::new();
        };
        ops::related_ids(&self.lock(), n, Some(id))
    }

    /// The id of a seeded (or created) currency by ISO code.
    pub fn currency_id(&self, iso_code: &str) -> Option<Uuid> {
        ops::currency_by_iso(&self.lock(), iso_code)
    }

    /// The current version stamp (the highest `versionnumber` handed out).
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Expires every change-tracking token issued so far: the next call of an existing delta
    /// link fails with "Version stamp associated with the client has expired. Please perform
    /// a full sync."
    pub fn expire_change_tracking_tokens(&self) {
        let mut s = self.lock();
        s.token_floor = s.version + 1;
    }

    // ----- control API: metadata ---------------------------------------------------------

    /// Requests other than GET the API accepted for processing (a `$batch` counts once):
    /// a provisioning run against a provisioned environment must leave it unchanged.
    pub fn write_requests(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    /// Metadata writes applied: tables, columns, alternate keys, relationships, definition
    /// updates.
    pub fn metadata_writes(&self) -> u64 {
        self.lock().meta.writes
    }

    /// How many times customisations were published (`PublishXml`, `PublishAllXml`).
    pub fn publishes(&self) -> u64 {
        self.lock().meta.publishes
    }

    /// `(solution unique name, component kind, name)` of every component created under an
    /// `MSCRM.SolutionUniqueName` header, in order (kind: `table`, `column`, `key`,
    /// `relationship`).
    pub fn solution_components(&self) -> Vec<(String, String, String)> {
        self.lock().meta.components.clone()
    }

    /// Makes the index of the next alternate key created fail (`EntityKeyIndexStatus` Failed
    /// until `ReactivateEntityKey`).
    pub fn fail_next_key_index(&self) {
        self.lock().meta.fail_next_key = true;
    }

    /// Marks an existing alternate key's index Failed (upserts by it then fail).
    pub fn set_key_index_failed(&self, table: &str, key: &str) {
        self.lock()
            .meta
            .keys
            .insert(format!("{table}#{key}"), store::KeyIndex::Failed);
    }

    /// Takes an access right (`WriteAccess`, `CreateAccess`, …) on `table` from the application
    /// user, as a security role without that privilege would: `RetrievePrincipalAccess` no
    /// longer reports it (the data operations themselves are not refused).
    pub fn deny_access(&self, table: &str, right: &str) {
        self.lock()
            .meta
            .denied
            .entry(table.to_string())
            .or_default()
            .push(right.to_string());
    }

    /// The index status of an alternate key: `Pending`, `InProgress`, `Active` or `Failed`.
    pub fn key_index_status(&self, table: &str, key: &str) -> &'static str {
        self.lock().meta.key_status(table, key)
    }

    // ----- control API: limits ----------------------------------------------------------

    /// The service-protection limits in force.
    pub fn limits(&self) -> ServiceLimits {
        self.inner.limiter.config()
    }

    /// Replaces the service-protection limits (takes effect on the next request).
    pub fn set_limits(&self, limits: ServiceLimits) {
        self.inner.limiter.set_config(limits);
    }

    /// Forgets the request and execution-time windows, the throttle counts, the
    /// [`limit_usage`](Self::limit_usage) counters and any running `Retry-After`.
    pub fn reset_limit_windows(&self) {
        self.inner.limiter.reset();
    }

    /// How many 429s each limit answered.
    pub fn throttle_counts(&self) -> ThrottleCounts {
        self.inner.limiter.counts()
    }

    /// The service-protection accounting since the emulator started or the last
    /// [`reset_limit_windows`](Self::reset_limit_windows) /
    /// [`reset_limit_usage`](Self::reset_limit_usage): requests counted toward the request limit
    /// (a `$batch` once), operations and execution time accrued (a `$batch` per part), 429s per
    /// limit, and requests that arrived while an earlier 429's `Retry-After` was still running.
    /// Counted whether or not [`ServiceLimits::enabled`] is set.
    pub fn limit_usage(&self) -> LimitUsage {
        self.inner.limiter.usage()
    }

    /// Zeroes the counters of [`limit_usage`](Self::limit_usage) (and the throttle counts)
    /// without forgetting the sliding windows or a `Retry-After` still running: a bench
    /// measures one phase after another under the same limits.
    pub fn reset_limit_usage(&self) {
        self.inner.limiter.reset_usage();
    }
}

fn table_in<'m>(model: &'m Model, name: &str) -> Result<&'m store::Table, ControlError> {
    model
        .resolve(name)
        .ok_or_else(|| DvError::unknown_segment(name).into())
}

fn as_object(t: &store::Table, v: Value) -> Result<Map<String, Value>, ControlError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(DvError::payload(t.set(), "The body must be a JSON object.").into()),
    }
}

/// `/api/data/v9.x/rest` → `rest`; `None` when the path is not under the API.
fn api_relative(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/data/v9.")?;
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let rest = &rest[digits..];
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix('/')
}

fn into_response(op: OpResponse) -> Response {
    let mut builder = Response::builder().status(op.status);
    for (k, v) in &op.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let body = match op.body {
        Some(OpBody::Json(v)) => Body::from(money::to_json(&v)),
        Some(OpBody::Text(t)) => Body::from(t),
        None => Body::empty(),
    };
    builder.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

fn error_response(e: &DvError) -> Response {
    into_response(ops::json_response(e.status, e.body()))
}

/// Largest request body accepted (Dataverse's batch limit is far above what tests send).
const MAX_BODY: usize = 64 * 1024 * 1024;

async fn handle(State(emu): State<DataverseEmulator>, request: Request) -> Response {
    let mut resp = serve(&emu, request).await;
    let h = resp.headers_mut();
    h.insert("odata-version", HeaderValue::from_static("4.0"));
    for (k, v) in emu.inner.limiter.headers() {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    resp
}

async fn serve(emu: &DataverseEmulator, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Some(rel) = api_relative(parts.uri.path()).map(str::to_string) else {
        let seg = parts.uri.path().trim_start_matches('/');
        return error_response(&DvError::unknown_segment(seg));
    };
    if let Err(f) = emu
        .ctx
        .entra
        .check(&parts.headers, emu.ctx.urls.dataverse.as_str())
    {
        let mut r = error_response(&DvError::new(
            StatusCode::UNAUTHORIZED,
            codes::AUTHENTICATION,
            format!("The requested resource requires authentication: {f}."),
        ));
        let challenge = format!(
            "Bearer authorization_uri={}{}/oauth2/authorize, resource_id={}",
            emu.ctx.urls.entra,
            crate::entra::SANDBOX_TENANT,
            emu.ctx.urls.dataverse
        );
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return r;
    }
    let permit = match emu.inner.limiter.admit() {
        Ok(p) => p,
        Err(t) => {
            let mut r = error_response(&DvError::new(
                StatusCode::TOO_MANY_REQUESTS,
                t.kind.code(),
                t.message,
            ));
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(t.retry_after));
            return r;
        }
    };
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(&DvError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                codes::PAYLOAD,
                "The request body is too large.",
            ));
        }
    };
    let delay = emu.inner.limiter.config().processing_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if parts.method != axum::http::Method::GET {
        emu.inner.writes.fetch_add(1, Ordering::Relaxed);
    }
    let started = Instant::now();
    let op = OpRequest {
        method: parts.method.clone(),
        path: rel.clone(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers.clone(),
        body: bytes,
    };
    let (resp, operations) = if rel == "$batch" {
        emu.batch(&op)
    } else {
        (into_response(emu.with_ctx(|ctx| ops::execute(ctx, &op))), 1)
    };
    // Execution time is the server's own time on the request, so an emulated cost is also
    // spent (holding the concurrency slot): a client timing its requests sees it, as it would
    // against Dataverse (https://learn.microsoft.com/power-apps/developer/data-platform/api-limits).
    if let Some(cost) = emu.inner.limiter.config().operation_cost {
        let due = cost.saturating_mul(u32::try_from(operations).unwrap_or(u32::MAX));
        if let Some(rest) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    emu.inner.limiter.record(operations, started.elapsed());
    drop(permit);
    resp
}

impl DataverseEmulator {
    fn batch(&self, op: &OpRequest) -> (Response, usize) {
        let result: DvResult<(Response, usize)> = (|| {
            if op.method != axum::http::Method::POST {
                return Err(DvError::method_not_allowed("Use POST for $batch."));
            }
            let ct = request::header(&op.headers, "content-type").unwrap_or("");
            let boundary = batch::boundary(ct).ok_or_else(|| {
                DvError::odata("A $batch request needs Content-Type: multipart/mixed; boundary=….")
            })?;
            let items = match batch::parse(&op.body, &boundary) {
                Ok(items) => items,
                Err(e) => {
                    let outcome = batch::unreadable_batch(&e);
                    let resp = Response::builder()
                        .status(outcome.status)
                        .header(
                            header::CONTENT_TYPE,
                            format!("multipart/mixed; boundary={}", outcome.boundary),
                        )
                        .body(Body::from(outcome.body))
                        .map_err(|e| {
                            DvError::new(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                codes::ODATA,
                                e.to_string(),
                            )
                        })?;
                    return Ok((resp, 1));
                }
            };
            let max = self.inner.limiter.config().max_batch_operations;
            if batch::operations(&items) > max {
                return Err(batch::too_many(max));
            }
            let prefer = Prefer::parse(&op.headers);
            let outcome = self.with_ctx(|ctx| batch::run(ctx, &items, prefer.continue_on_error));
            let mut b = Response::builder().status(outcome.status).header(
                header::CONTENT_TYPE,
                format!("multipart/mixed; boundary={}", outcome.boundary),
            );
            if prefer.continue_on_error {
                b = b.header("preference-applied", "odata.continue-on-error");
            }
            let resp = b.body(Body::from(outcome.body)).map_err(|e| {
                DvError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    codes::ODATA,
                    e.to_string(),
                )
            })?;
            Ok((resp, outcome.executed.max(1)))
        })();
        result.unwrap_or_else(|e| (error_response(&e), 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths() {
        assert_eq!(api_relative("/api/data/v9.2/accounts"), Some("accounts"));
        assert_eq!(api_relative("/api/data/v9.0/"), Some(""));
        assert_eq!(api_relative("/api/data/v9.2"), Some(""));
        assert_eq!(api_relative("/api/data/v8.2/accounts"), None);
        assert_eq!(api_relative("/api/data/v9.x/accounts"), None);
    }
}
