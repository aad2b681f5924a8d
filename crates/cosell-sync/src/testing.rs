//! In-memory fakes of the engine's two remote seams, [`PartnerCenter`] and [`Crm`], for testing
//! code that drives an [`Engine`](crate::Engine) without a server (feature `testing`).
//!
//! They keep state the way the services do where the engine can tell: Partner Center gives each
//! referral an id, a new eTag and a later `updatedDateTime` on every change and refuses a patch
//! under a stale eTag (412) or a status move its transition table forbids; the CRM upserts by
//! the referral-id alternate key, bumps a row's ETag on every write, refuses a stale one,
//! reports every write (the engine's own too) in its change feed, and keeps `statecode` /
//! `statuscode` to the status steps. Edits "made by a user" on either side go through
//! [`MemoryPartnerCenter::edit`] and [`MemoryCrm::edit`]. Any call can be made to fail once
//! with [`fail_next`](MemoryCrm::fail_next), and calls are counted.
//!
//! They are not emulators: no HTTP, no OData, no throttling. For wire-level fidelity use
//! `cosell-sandbox`.
//!
//! ```
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! use std::sync::Arc;
//! use cosell_mapping::{FieldMap, RecordKind};
//! use cosell_sync::store::MemoryStore;
//! use cosell_sync::testing::{MemoryCrm, MemoryPartnerCenter};
//! use cosell_sync::{Action, Engine, EngineConfig};
//!
//! let pc = MemoryPartnerCenter::new();
//! let crm = MemoryCrm::new(FieldMap::default());
//! let engine = Engine::new(
//!     Arc::new(pc.clone()),
//!     Arc::new(crm.clone()),
//!     Arc::new(MemoryStore::new()),
//!     EngineConfig::default(),
//! );
//! let referral = pc.insert(serde_json::from_value(serde_json::json!({
//!     "name": "Contoso rollout", "status": "Active", "substatus": "Accepted",
//!     "direction": "Incoming",
//!     "customerProfile": { "name": "Contoso", "address": { "country": "US" },
//!                          "team": [ { "firstName": "Sue", "lastName": "Smith" } ] },
//!     "details": { "dealValue": 1000, "currency": "USD" }
//! })).unwrap());
//! let outcome = engine.apply_referral(referral).await.unwrap();
//! assert_eq!(outcome.action, Action::CreatedInCrm);
//! assert_eq!(crm.rows(RecordKind::Opportunity).len(), 1);
//! # });
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cosell_mapping::{
    CrmPayload, CrmRecords, FieldMap, Record, RecordKind, STATE_LOST, STATE_OPEN, STATE_WON,
    StatusStep,
};
use partner_center_client::models::{
    PatchOp, PatchOperation, Referral, ReferralDirection, check_transition,
};
use serde_json::Value;
use uuid::Uuid;

use crate::crm::{Crm, CrmChange, CrmChanges, CrmRow, CrmWritten, WriteTarget};
use crate::partner_center::PartnerCenter;
use crate::remote::{RemoteError, RemoteErrorKind};

const PC: &str = "partner-center";
const CRM: &str = "crm";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock must not hide its own failure behind ours.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Scripted failures and call counts, shared by both fakes.
#[derive(Debug)]
struct Script<Op> {
    failures: Vec<(Op, RemoteError)>,
    calls: HashMap<Op, usize>,
}

impl<Op> Default for Script<Op> {
    fn default() -> Self {
        Script {
            failures: Vec::new(),
            calls: HashMap::new(),
        }
    }
}

impl<Op: Copy + Eq + std::hash::Hash> Script<Op> {
    /// Counts the call and returns the failure scripted for it, if any (oldest first).
    fn call(&mut self, op: Op) -> Result<(), RemoteError> {
        *self.calls.entry(op).or_default() += 1;
        match self.failures.iter().position(|(o, _)| *o == op) {
            Some(i) => Err(self.failures.remove(i).1),
            None => Ok(()),
        }
    }
}

// ------------------------------------------------------------------------- Partner Center

/// A call to [`MemoryPartnerCenter`], to script a failure or count calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PcCall {
    /// [`PartnerCenter::get_referral`].
    Get,
    /// [`PartnerCenter::referrals_updated_since`].
    List,
    /// [`PartnerCenter::find_by_external_reference`].
    FindByExternalReference,
    /// [`PartnerCenter::create_referral`].
    Create,
    /// [`PartnerCenter::update_referral`].
    Update,
}

#[derive(Debug, Default)]
struct PcState {
    referrals: BTreeMap<String, Referral>,
    version: u64,
    last_update: Option<DateTime<Utc>>,
    script: Script<PcCall>,
}

impl PcState {
    /// Stamps a change as Partner Center does: a new eTag and a later `updatedDateTime`.
    fn stamp(&mut self, referral: &mut Referral) {
        self.version += 1;
        let mut now = Utc::now();
        // Strictly increasing, so "updated since" never misses two changes in one tick.
        if let Some(last) = self.last_update
            && now <= last
        {
            now = last + chrono::Duration::milliseconds(1);
        }
        self.last_update = Some(now);
        referral.e_tag = Some(format!("\"{}\"", self.version));
        referral.updated_date_time = Some(now);
        if referral.created_date_time.is_none() {
            referral.created_date_time = Some(now);
        }
    }

    fn store(&mut self, mut referral: Referral) -> Referral {
        let id = referral
            .id
            .clone()
            .unwrap_or_else(|| Uuid::from_u128(0x9c_0000 + u128::from(self.version)).to_string());
        referral.id = Some(id.clone());
        self.stamp(&mut referral);
        self.referrals.insert(id, referral.clone());
        referral
    }
}

/// An in-memory Partner Center (cheap to clone; clones share the referrals).
#[derive(Debug, Clone, Default)]
pub struct MemoryPartnerCenter {
    state: Arc<Mutex<PcState>>,
}

impl MemoryPartnerCenter {
    /// An empty Partner Center.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts a referral in as Microsoft or a partner would create it: it gets an id (unless it
    /// has one), an eTag and `updatedDateTime`. Returns what is stored.
    pub fn insert(&self, referral: Referral) -> Referral {
        lock(&self.state).store(referral)
    }

    /// A change made in Partner Center (by Microsoft or in the partner's UI): `edit` runs on the
    /// stored referral, which then gets a new eTag and `updatedDateTime`. `None` if unknown.
    pub fn edit(&self, id: &str, edit: impl FnOnce(&mut Referral)) -> Option<Referral> {
        let mut state = lock(&self.state);
        let mut referral = state.referrals.get(id)?.clone();
        edit(&mut referral);
        referral.id = Some(id.to_string());
        Some(state.store(referral))
    }

    /// The stored referral.
    pub fn get(&self, id: &str) -> Option<Referral> {
        lock(&self.state).referrals.get(id).cloned()
    }

    /// Every stored referral, by id.
    pub fn referrals(&self) -> Vec<Referral> {
        lock(&self.state).referrals.values().cloned().collect()
    }

    /// Makes the next call of `call` fail with `error` (scripts queue up per call).
    pub fn fail_next(&self, call: PcCall, error: RemoteError) {
        lock(&self.state).script.failures.push((call, error));
    }

    /// How many times `call` was made (failed ones included).
    pub fn calls(&self, call: PcCall) -> usize {
        lock(&self.state)
            .script
            .calls
            .get(&call)
            .copied()
            .unwrap_or(0)
    }
}

fn not_found(service: &'static str, what: String) -> RemoteError {
    RemoteError::new(
        RemoteErrorKind::NotFound,
        service,
        format!("{what} not found"),
    )
}

/// Applies RFC 6902 `add`/`replace` operations (the two the client sends) to a referral.
fn apply_patch(
    referral: &Referral,
    operations: &[PatchOperation],
) -> Result<Referral, RemoteError> {
    let rejected = |m: String| RemoteError::new(RemoteErrorKind::Rejected, PC, m);
    let mut doc = serde_json::to_value(referral).map_err(|e| rejected(e.to_string()))?;
    for op in operations {
        let mut segments: Vec<String> = op
            .path
            .strip_prefix('/')
            .ok_or_else(|| rejected(format!("patch path `{}` is not a JSON pointer", op.path)))?
            .split('/')
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        let append = op.op == PatchOp::Add && segments.last().is_some_and(|s| s == "-");
        if append {
            segments.pop();
        }
        let Some(last) = segments.pop() else {
            return Err(rejected(format!(
                "patch path `{}` names no member",
                op.path
            )));
        };
        let mut at = &mut doc;
        for segment in &segments {
            if !at.is_object() {
                return Err(rejected(format!(
                    "patch path `{}` crosses a non-object",
                    op.path
                )));
            }
            at = at
                .as_object_mut()
                .map(|o| {
                    o.entry(segment.clone())
                        .or_insert(Value::Object(Default::default()))
                })
                .ok_or_else(|| rejected(op.path.clone()))?;
            if at.is_null() {
                *at = Value::Object(Default::default());
            }
        }
        let Some(parent) = at.as_object_mut() else {
            return Err(rejected(format!(
                "patch path `{}` crosses a non-object",
                op.path
            )));
        };
        if append {
            let list = parent.entry(last).or_insert(Value::Array(Vec::new()));
            if list.is_null() {
                *list = Value::Array(Vec::new());
            }
            match list.as_array_mut() {
                Some(items) => items.push(op.value.clone()),
                None => return Err(rejected(format!("`{}` is not an array", op.path))),
            }
        } else {
            parent.insert(last, op.value.clone());
        }
    }
    serde_json::from_value(doc).map_err(|e| rejected(format!("patched referral: {e}")))
}

#[async_trait]
impl PartnerCenter for MemoryPartnerCenter {
    async fn get_referral(&self, id: &str) -> Result<Referral, RemoteError> {
        let mut state = lock(&self.state);
        state.script.call(PcCall::Get)?;
        state
            .referrals
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(PC, format!("referral {id}")))
    }

    async fn referrals_updated_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<Referral>, RemoteError> {
        let mut state = lock(&self.state);
        state.script.call(PcCall::List)?;
        let mut found: Vec<Referral> = state
            .referrals
            .values()
            .filter(|r| r.updated_date_time.is_some_and(|t| t >= since))
            .cloned()
            .collect();
        found.sort_by_key(|r| r.updated_date_time);
        Ok(found)
    }

    async fn find_by_external_reference(
        &self,
        external_reference_id: &str,
        created_since: DateTime<Utc>,
    ) -> Result<Option<Referral>, RemoteError> {
        let mut state = lock(&self.state);
        state.script.call(PcCall::FindByExternalReference)?;
        Ok(state
            .referrals
            .values()
            .find(|r| {
                r.external_reference_id.as_deref() == Some(external_reference_id)
                    && r.updated_date_time.is_some_and(|t| t >= created_since)
            })
            .cloned())
    }

    async fn create_referral(&self, referral: &Referral) -> Result<Referral, RemoteError> {
        let mut state = lock(&self.state);
        state.script.call(PcCall::Create)?;
        let mut created = referral.clone();
        // The service assigns the id and the engagement; what the caller sends is ignored.
        created.id = None;
        created.engagement_id =
            Some(Uuid::from_u128(0xe9_0000 + u128::from(state.version)).to_string());
        created.direction = Some(ReferralDirection::Outgoing);
        Ok(state.store(created))
    }

    async fn update_referral(
        &self,
        id: &str,
        etag: &str,
        operations: Vec<PatchOperation>,
    ) -> Result<Referral, RemoteError> {
        let mut state = lock(&self.state);
        state.script.call(PcCall::Update)?;
        let current = state
            .referrals
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(PC, format!("referral {id}")))?;
        if current.e_tag.as_deref() != Some(etag) {
            return Err(RemoteError::new(
                RemoteErrorKind::PreconditionFailed,
                PC,
                format!("referral {id}: If-Match {etag} is stale"),
            ));
        }
        let patched = apply_patch(&current, &operations)?;
        if let (Some(from_st), Some(from_sub), Some(to_st), Some(to_sub)) = (
            current.status.clone(),
            current.substatus.clone(),
            patched.status.clone(),
            patched.substatus.clone(),
        ) && (from_st.clone(), from_sub.clone()) != (to_st.clone(), to_sub.clone())
        {
            check_transition((from_st, from_sub), (to_st, to_sub))
                .map_err(|e| RemoteError::new(RemoteErrorKind::Rejected, PC, e.to_string()))?;
        }
        Ok(state.store(patched))
    }
}

// ------------------------------------------------------------------------------------ CRM

/// A call to [`MemoryCrm`], to script a failure or count calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CrmCall {
    /// [`Crm::find_by_referral`].
    FindByReferral,
    /// [`Crm::read`].
    Read,
    /// [`Crm::write`].
    Write,
    /// [`Crm::update_columns`].
    UpdateColumns,
    /// [`Crm::apply_status`].
    ApplyStatus,
    /// [`Crm::convert_lead`].
    ConvertLead,
    /// [`Crm::changes`].
    Changes,
}

/// A row's place: its table (0 opportunity, 1 lead) and id.
type RowKey = (u8, String);

fn key(kind: RecordKind, id: &str) -> RowKey {
    let table = match kind {
        RecordKind::Opportunity => 0,
        RecordKind::Lead => 1,
    };
    (table, id.to_string())
}

#[derive(Debug, Clone)]
struct StoredRow {
    records: CrmRecords,
    version: u64,
}

#[derive(Debug, Default)]
struct CrmState {
    rows: BTreeMap<RowKey, StoredRow>,
    /// Change feed: the sequence number of each row's last change, and deletions.
    changed: BTreeMap<RowKey, u64>,
    deleted: Vec<(u64, RecordKind, String)>,
    seq: u64,
    next_id: u128,
    disabled_currencies: Vec<String>,
    script: Script<CrmCall>,
}

/// An in-memory CRM holding rows in the field map's logical names (cheap to clone; clones share
/// the rows).
#[derive(Debug, Clone)]
pub struct MemoryCrm {
    map: FieldMap,
    state: Arc<Mutex<CrmState>>,
}

impl MemoryCrm {
    /// An empty CRM with the tables and columns of `map`.
    pub fn new(map: FieldMap) -> Self {
        MemoryCrm {
            map,
            state: Arc::default(),
        }
    }

    fn primary_key(&self, kind: RecordKind) -> String {
        let c = &self.map.config().columns;
        match kind {
            RecordKind::Opportunity => format!("{}id", c.opportunity.entity),
            RecordKind::Lead => format!("{}id", c.lead.entity),
        }
    }

    fn referral_column(&self, kind: RecordKind) -> &str {
        let c = &self.map.config().columns;
        match kind {
            RecordKind::Opportunity => &c.opportunity.referral_id,
            RecordKind::Lead => &c.lead.referral_id,
        }
    }

    /// A row a seller created: its records as the CRM would return them (primary columns,
    /// account, contacts, solutions, currency code). An open row unless `statecode` says
    /// otherwise. Returns its id; it shows up in the change feed.
    pub fn insert(&self, mut records: CrmRecords) -> String {
        let kind = records.kind;
        let pk = self.primary_key(kind);
        let mut state = lock(&self.state);
        state.next_id += 1;
        let id = Uuid::from_u128(0xc0_0000_0000 + state.next_id).to_string();
        records.primary.insert(pk, Value::String(id.clone()));
        records
            .primary
            .entry("statecode")
            .or_insert(Value::from(STATE_OPEN));
        records
            .primary
            .entry("statuscode")
            .or_insert(Value::from(1));
        if kind == RecordKind::Opportunity {
            records.contacts.get_or_insert_with(Vec::new);
            records.solutions.get_or_insert_with(Vec::new);
        }
        put(&mut state, kind, &id, records);
        id
    }

    /// A seller's edit of a row's own columns (`null` clears one). `false` if there is no row.
    pub fn edit(&self, kind: RecordKind, id: &str, columns: Record) -> bool {
        self.edit_records(kind, id, |r| r.primary.extend(columns))
    }

    /// A seller's edit of anything a row's records hold (its account, contacts, solutions).
    /// `false` if there is no row.
    pub fn edit_records(
        &self,
        kind: RecordKind,
        id: &str,
        edit: impl FnOnce(&mut CrmRecords),
    ) -> bool {
        let mut state = lock(&self.state);
        let Some(mut records) = state.rows.get(&key(kind, id)).map(|r| r.records.clone()) else {
            return false;
        };
        edit(&mut records);
        put(&mut state, kind, id, records);
        true
    }

    /// Deletes a row; the change feed reports it. `false` if there was none.
    pub fn delete(&self, kind: RecordKind, id: &str) -> bool {
        let mut state = lock(&self.state);
        let key = key(kind, id);
        if state.rows.remove(&key).is_none() {
            return false;
        }
        state.changed.remove(&key);
        state.seq += 1;
        let seq = state.seq;
        state.deleted.push((seq, kind, id.to_string()));
        true
    }

    /// A row with its records and ETag.
    pub fn row(&self, kind: RecordKind, id: &str) -> Option<CrmRow> {
        let state = lock(&self.state);
        state.rows.get(&key(kind, id)).map(|r| row_of(kind, id, r))
    }

    /// Every row of `kind`, by id.
    pub fn rows(&self, kind: RecordKind) -> Vec<CrmRow> {
        let state = lock(&self.state);
        state
            .rows
            .iter()
            .filter(|(_, r)| r.records.kind == kind)
            .map(|((_, id), r)| row_of(kind, id, r))
            .collect()
    }

    /// Makes the currency `code` unknown to the CRM ([`Crm::has_currency`] answers `false`, a
    /// write leaves a row's currency as it was). Every currency is enabled at first.
    pub fn disable_currency(&self, code: &str) {
        lock(&self.state).disabled_currencies.push(code.to_string());
    }

    /// Makes the next call of `call` fail with `error` (scripts queue up per call).
    pub fn fail_next(&self, call: CrmCall, error: RemoteError) {
        lock(&self.state).script.failures.push((call, error));
    }

    /// How many times `call` was made (failed ones included).
    pub fn calls(&self, call: CrmCall) -> usize {
        lock(&self.state)
            .script
            .calls
            .get(&call)
            .copied()
            .unwrap_or(0)
    }

    fn find(&self, state: &CrmState, kind: RecordKind, referral_id: &str) -> Option<String> {
        let column = self.referral_column(kind);
        state
            .rows
            .iter()
            .find(|(_, r)| {
                r.records.kind == kind
                    && r.records.primary.get(column).and_then(Value::as_str) == Some(referral_id)
            })
            .map(|((_, id), _)| id.clone())
    }

    fn stored(
        state: &CrmState,
        kind: RecordKind,
        id: &str,
        etag: Option<&str>,
    ) -> Result<StoredRow, RemoteError> {
        let row = state
            .rows
            .get(&key(kind, id))
            .cloned()
            .ok_or_else(|| not_found(CRM, format!("row {id}")))?;
        if let Some(etag) = etag
            && etag != etag_of(row.version)
        {
            return Err(RemoteError::new(
                RemoteErrorKind::PreconditionFailed,
                CRM,
                format!("row {id}: If-Match {etag} is stale"),
            ));
        }
        Ok(row)
    }
}

fn etag_of(version: u64) -> String {
    format!("W/\"{version}\"")
}

fn row_of(kind: RecordKind, id: &str, row: &StoredRow) -> CrmRow {
    CrmRow {
        kind,
        id: id.to_string(),
        etag: Some(etag_of(row.version)),
        records: row.records.clone(),
    }
}

/// Stores a row's new records under a new version and reports the change in the feed.
fn put(state: &mut CrmState, kind: RecordKind, id: &str, records: CrmRecords) -> String {
    state.seq += 1;
    let seq = state.seq;
    state.rows.insert(
        key(kind, id),
        StoredRow {
            records,
            version: seq,
        },
    );
    state.changed.insert(key(kind, id), seq);
    etag_of(seq)
}

fn set_state(records: &mut CrmRecords, statecode: i64, statuscode: i64) {
    records
        .primary
        .insert("statecode".into(), Value::from(statecode));
    records
        .primary
        .insert("statuscode".into(), Value::from(statuscode));
}

#[async_trait]
impl Crm for MemoryCrm {
    fn field_map(&self) -> &FieldMap {
        &self.map
    }

    async fn find_by_referral(
        &self,
        kind: RecordKind,
        referral_id: &str,
    ) -> Result<Option<CrmRow>, RemoteError> {
        let mut state = lock(&self.state);
        state.script.call(CrmCall::FindByReferral)?;
        Ok(self.find(&state, kind, referral_id).and_then(|id| {
            state
                .rows
                .get(&key(kind, &id))
                .map(|r| row_of(kind, &id, r))
        }))
    }

    async fn read(&self, kind: RecordKind, id: &str) -> Result<Option<CrmRow>, RemoteError> {
        let mut state = lock(&self.state);
        state.script.call(CrmCall::Read)?;
        Ok(state.rows.get(&key(kind, id)).map(|r| row_of(kind, id, r)))
    }

    async fn write(
        &self,
        payload: &CrmPayload,
        extra: &Record,
        target: WriteTarget<'_>,
    ) -> Result<CrmWritten, RemoteError> {
        let kind = payload.kind;
        let mut state = lock(&self.state);
        state.script.call(CrmCall::Write)?;
        let existing = match target {
            WriteTarget::ByKey => self.find(&state, kind, &payload.key.value),
            WriteTarget::Row { id, etag } => {
                Some(Self::stored(&state, kind, id, etag).map(|_| id.to_string())?)
            }
        };
        let mut written = self.map.written_records(payload);
        written
            .primary
            .extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        written.primary.insert(
            payload.key.column.clone(),
            Value::String(payload.key.value.clone()),
        );
        if let Some(code) = &written.currency_code
            && state.disabled_currencies.contains(code)
        {
            written.currency_code = None;
        }
        let (id, records, created) = match existing {
            Some(id) => {
                let mut records = Self::stored(&state, kind, &id, None)?.records;
                // An update: the row keeps its state (only the status steps move it) and what
                // the payload does not name.
                written.primary.remove("statecode");
                written.primary.remove("statuscode");
                records.primary.extend(written.primary);
                if written.account.is_some() {
                    records.account = written.account;
                }
                if let Some(contacts) = written.contacts.filter(|c| !c.is_empty()) {
                    records.contacts = Some(contacts);
                }
                if written.currency_code.is_some() {
                    records.currency_code = written.currency_code;
                }
                if kind == RecordKind::Opportunity {
                    let column = &self.map.config().columns.solution.solution_id;
                    let mut solutions = records.solutions.take().unwrap_or_default();
                    solutions.retain(|s| {
                        !s.get(column)
                            .and_then(Value::as_str)
                            .is_some_and(|id| payload.solutions_removed.iter().any(|r| r == id))
                    });
                    for s in written.solutions.unwrap_or_default() {
                        if !solutions
                            .iter()
                            .any(|known| known.get(column) == s.get(column))
                        {
                            solutions.push(s);
                        }
                    }
                    records.solutions = Some(solutions);
                }
                (id, records, false)
            }
            None => {
                state.next_id += 1;
                let id = Uuid::from_u128(0xc0_0000_0000 + state.next_id).to_string();
                // A row is created open; closing it is a status step.
                if payload.status.statecode != STATE_OPEN {
                    set_state(&mut written, STATE_OPEN, 1);
                }
                (id, written, true)
            }
        };
        let mut records = records;
        records
            .primary
            .insert(self.primary_key(kind), Value::String(id.clone()));
        let etag = put(&mut state, kind, &id, records);
        Ok(CrmWritten {
            id,
            etag: Some(etag),
            created,
        })
    }

    async fn update_columns(
        &self,
        kind: RecordKind,
        id: &str,
        columns: &Record,
        etag: Option<&str>,
    ) -> Result<Option<String>, RemoteError> {
        let mut state = lock(&self.state);
        state.script.call(CrmCall::UpdateColumns)?;
        if columns.is_empty() {
            return Ok(None);
        }
        let mut records = Self::stored(&state, kind, id, etag)?.records;
        records
            .primary
            .extend(columns.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(Some(put(&mut state, kind, id, records)))
    }

    async fn apply_status(
        &self,
        kind: RecordKind,
        id: &str,
        step: &StatusStep,
    ) -> Result<Option<String>, RemoteError> {
        let mut state = lock(&self.state);
        state.script.call(CrmCall::ApplyStatus)?;
        let (kind, statecode, statuscode) = match step {
            StatusStep::QualifyLead { status } => (kind, STATE_WON, *status),
            StatusStep::WinOpportunity { status } => (kind, STATE_WON, *status),
            StatusStep::LoseOpportunity { status } => (kind, STATE_LOST, *status),
            StatusStep::SetState {
                kind: step_kind,
                statecode,
                statuscode,
            } => (*step_kind, *statecode, *statuscode),
        };
        let mut records = Self::stored(&state, kind, id, None)?.records;
        set_state(&mut records, statecode, statuscode);
        Ok(Some(put(&mut state, kind, id, records)))
    }

    async fn convert_lead(
        &self,
        lead_id: &str,
        qualified_status: i64,
    ) -> Result<Option<String>, RemoteError> {
        let mut state = lock(&self.state);
        state.script.call(CrmCall::ConvertLead)?;
        let mut lead = Self::stored(&state, RecordKind::Lead, lead_id, None)?.records;
        set_state(&mut lead, STATE_WON, qualified_status);
        put(&mut state, RecordKind::Lead, lead_id, lead);
        // QualifyLead makes an open opportunity that remembers its lead; the engine fills it.
        state.next_id += 1;
        let id = Uuid::from_u128(0xc0_0000_0000 + state.next_id).to_string();
        let mut opportunity = CrmRecords::new(RecordKind::Opportunity, Record::new());
        opportunity.primary.insert(
            self.primary_key(RecordKind::Opportunity),
            Value::String(id.clone()),
        );
        opportunity.primary.insert(
            "_originatingleadid_value".into(),
            Value::String(lead_id.to_string()),
        );
        set_state(&mut opportunity, STATE_OPEN, 1);
        opportunity.contacts = Some(Vec::new());
        opportunity.solutions = Some(Vec::new());
        put(&mut state, RecordKind::Opportunity, &id, opportunity);
        Ok(Some(id))
    }

    async fn changes(
        &self,
        kind: RecordKind,
        cursor: Option<&str>,
    ) -> Result<CrmChanges, RemoteError> {
        let mut state = lock(&self.state);
        state.script.call(CrmCall::Changes)?;
        let since = match cursor {
            None => 0,
            Some(c) => c.parse::<u64>().map_err(|_| {
                RemoteError::new(
                    RemoteErrorKind::CursorExpired,
                    CRM,
                    format!("`{c}` is not a cursor of this CRM"),
                )
            })?,
        };
        let mut changes: Vec<(u64, CrmChange)> = state
            .changed
            .iter()
            .filter(|(_, seq)| **seq > since)
            .filter_map(|(at, seq)| {
                let row = state.rows.get(at).filter(|r| r.records.kind == kind)?;
                Some((
                    *seq,
                    CrmChange::Upserted {
                        kind,
                        id: at.1.clone(),
                        etag: Some(etag_of(row.version)),
                        row: row.records.primary.clone(),
                    },
                ))
            })
            .collect();
        if cursor.is_some() {
            // The first read lists what exists; deletions before it are not news.
            changes.extend(
                state
                    .deleted
                    .iter()
                    .filter(|(seq, k, _)| *k == kind && *seq > since)
                    .map(|(seq, k, id)| {
                        (
                            *seq,
                            CrmChange::Deleted {
                                kind: *k,
                                id: id.clone(),
                            },
                        )
                    }),
            );
        }
        changes.sort_by_key(|(seq, _)| *seq);
        // One page per read: the paged reads are Dataverse's, tested against its emulator.
        Ok(CrmChanges {
            changes: changes.into_iter().map(|(_, c)| c).collect(),
            cursor: state.seq.to_string(),
            more: false,
            initial: cursor.is_none(),
        })
    }

    async fn has_currency(&self, code: &str) -> Result<bool, RemoteError> {
        Ok(!lock(&self.state)
            .disabled_currencies
            .iter()
            .any(|c| c == code))
    }

    fn is_cursor_expired(&self, error: &RemoteError) -> bool {
        error.kind() == RemoteErrorKind::CursorExpired
    }
}

/// Engine unit tests on the fakes.
#[cfg(test)]
mod tests;
