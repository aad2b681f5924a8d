//! The default [`Crm`]: Dynamics 365 through the Dataverse Web API.
//!
//! Reads a referral's row with its account, contact and currency in one request (`$expand` of
//! the N:1 navigations) and its solutions in a second (the opportunity's rows in the solution
//! link table, each with its solution expanded), writes the primary record by upsert on the
//! referral-id alternate key (idempotent under retries and crashes), finds accounts by the
//! mapping's matching rule before creating one, and reads changes through Dataverse change
//! tracking, of the solution link table too: adding or removing a solution changes a link row,
//! never the opportunity's.

use crate::setup::CheckProblem;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cosell_mapping::{
    AccountMatchKey, AccountPayload, BindTarget, ContactPayload, CrmPayload, CrmRecords, FieldMap,
    MappingError, RecordKind, ResolvedIds, StatusStep,
};
use dataverse_client::{
    Batch, BatchRequest, Change, ChangeNext, ChangePageLink, ChangeToken, ChangeTrackingOptions,
    DataverseClient, ETag, Filter, Key, LeadStatus, OpportunityClose, OpportunityStatus,
    QualifyLead, Query, RetrieveOptions, UpdateOptions, UpsertMode, UpsertOptions, UpsertOutcome,
};
use futures::TryStreamExt;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::crm::{
    Crm, CrmChange, CrmChanges, CrmRow, CrmWritten, NewRecord, SolutionLinkChange,
    SolutionLinkChanges, WriteTarget,
};
use crate::remote::{RemoteError, RemoteErrorKind};

const SERVICE: &str = "dataverse";

/// A `$batch` answer's row version: its `ETag` header, else the body's `@odata.etag`.
fn response_etag(response: &dataverse_client::BatchResponse) -> Option<String> {
    response
        .headers
        .get(dataverse_client::cosell_http::http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            response
                .json::<Map<String, Value>>()
                .ok()?
                .get("@odata.etag")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
}

/// The first page of one query of a [`DataverseCrm::read_batch`].
struct ReadPage {
    rows: Vec<Map<String, Value>>,
    /// Whether the query had more rows than the page (`@odata.nextLink`).
    more: bool,
}

/// Most catalogue rows [`DataverseCrm`] remembers the solution ids of.
const SOLUTION_KEYS_CAP: usize = 10_000;

impl From<dataverse_client::Error> for RemoteError {
    fn from(e: dataverse_client::Error) -> Self {
        use dataverse_client::Error as E;
        let kind = match &e {
            E::PreconditionFailed(_) => RemoteErrorKind::PreconditionFailed,
            E::ChangeTrackingExpired(_) => RemoteErrorKind::CursorExpired,
            E::Credential(_) => RemoteErrorKind::Unauthorized,
            E::InvalidRequest(_) | E::Config(_) => RemoteErrorKind::Rejected,
            _ if e.is_not_found() => RemoteErrorKind::NotFound,
            _ if e.is_conflict() => RemoteErrorKind::Conflict,
            _ if e.is_throttled() => RemoteErrorKind::Throttled,
            _ if e
                .status()
                .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) =>
            {
                RemoteErrorKind::Unauthorized
            }
            _ if e.may_have_been_sent() && !e.is_retryable() => RemoteErrorKind::UnknownOutcome,
            _ if e.is_retryable() => RemoteErrorKind::Transient,
            _ => RemoteErrorKind::Rejected,
        };
        let retry_after = e.retry_after();
        RemoteError::new(kind, SERVICE, e.to_string())
            .with_retry_after(retry_after)
            .with_source(e)
    }
}

fn mapping(e: MappingError) -> RemoteError {
    RemoteError::new(RemoteErrorKind::Rejected, SERVICE, e.to_string()).with_source(e)
}

fn parse_id(id: &str) -> Result<Uuid, RemoteError> {
    Uuid::parse_str(id).map_err(|_| {
        RemoteError::new(
            RemoteErrorKind::Rejected,
            SERVICE,
            format!("`{id}` is not a Dataverse row id"),
        )
    })
}

/// A [`Crm`] over a [`DataverseClient`], with table and column names from the field map.
#[derive(Debug, Clone)]
pub struct DataverseCrm {
    client: DataverseClient,
    map: FieldMap,
    /// ISO code -> `transactioncurrencyid`. Only hits are kept (a currency enabled later is
    /// found on the next write); dropped when a write fails, in case a currency was removed.
    currencies: Arc<Mutex<HashMap<String, String>>>,
    /// Held while a currency missing from the cache is looked up, so tasks side by side
    /// (backfill lanes) wait for one look-up instead of each sending its own.
    currency_lookup: Arc<tokio::sync::Mutex<()>>,
    /// Catalogue row id -> solution id (its alternate key), for the solution link feed. Rows
    /// of the catalogue are created, never re-keyed, so a hit stays true.
    solution_keys: Arc<Mutex<HashMap<String, String>>>,
    /// The `odata.maxpagesize` of change-tracking reads (`None`: the service's 5,000).
    change_page_size: Option<u32>,
}

/// One page of a change-tracking read, as [`DataverseCrm::changes_of`] returns it.
struct ChangesPage {
    changes: Vec<Change<Map<String, Value>>>,
    cursor: String,
    more: bool,
    initial: bool,
}

impl DataverseCrm {
    /// An adapter writing through `client` with the names of `map`; an [`Engine`](crate::Engine)
    /// built over it maps with the same `map` ([`Crm::field_map`]).
    pub fn new(client: DataverseClient, map: FieldMap) -> Self {
        DataverseCrm {
            client,
            map,
            currencies: Arc::default(),
            currency_lookup: Arc::default(),
            solution_keys: Arc::default(),
            change_page_size: None,
        }
    }

    /// Reads the CRM's change feeds in pages of at most `rows` rows (`Prefer:
    /// odata.maxpagesize`) instead of the service's 5,000. The engine applies and checkpoints
    /// a page before it reads the next, so this bounds what a large first read holds at once.
    ///
    /// ```
    /// # fn demo(client: dataverse_client::DataverseClient, map: cosell_mapping::FieldMap) {
    /// let crm = cosell_sync::DataverseCrm::new(client, map).with_change_page_size(1_000);
    /// # let _ = crm; }
    /// ```
    pub fn with_change_page_size(mut self, rows: u32) -> Self {
        self.change_page_size = Some(rows.max(1));
        self
    }

    /// The client.
    pub fn client(&self) -> &DataverseClient {
        &self.client
    }

    fn entity_set(&self, kind: RecordKind) -> &str {
        let c = &self.map.config().columns;
        match kind {
            RecordKind::Opportunity => &c.opportunity.entity_set,
            RecordKind::Lead => &c.lead.entity_set,
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

    /// The id of the lead that carries `referral_id`, if any: the lead an opportunity written
    /// by key for that referral replaces.
    async fn lead_of_referral(&self, referral_id: &str) -> Result<Option<String>, RemoteError> {
        let pk = self.primary_key(RecordKind::Lead);
        let rows: Vec<Map<String, Value>> = self
            .client
            .query::<Map<String, Value>>(
                self.entity_set(RecordKind::Lead),
                &Query::new()
                    .select([pk.as_str()])
                    .filter(Filter::eq(
                        self.referral_column(RecordKind::Lead),
                        referral_id,
                    ))
                    .top(1),
            )
            .into_stream()
            .map_ok(|e| e.value)
            .try_collect()
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.get(&pk))
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// The columns a change-tracking read selects: the engine takes from a changed row only its
    /// id, its sync switch and its referral id (it re-reads the row before mapping it). D-CT
    /// pairs `Prefer: odata.track-changes` with `$select`; the delta link keeps the selection.
    fn tracked_columns(&self, kind: RecordKind) -> Vec<String> {
        let c = &self.map.config().columns;
        let (sync, referral) = match kind {
            RecordKind::Opportunity => (
                &c.opportunity.sync_with_partner_center,
                &c.opportunity.referral_id,
            ),
            RecordKind::Lead => (&c.lead.sync_with_partner_center, &c.lead.referral_id),
        };
        vec![self.primary_key(kind), sync.clone(), referral.clone()]
    }

    /// One page of the changes to `entity_set` since `cursor`: a delta link, a page of a read
    /// under way ([`ChangePageLink::to_cursor`]'s form), or `None` to start tracking (every
    /// row, with the `select`ed columns). Returns the page, the cursor to go on from, whether
    /// it leads to another page of the same read, and whether the read is an initial one.
    async fn changes_of(
        &self,
        entity_set: &str,
        select: &[&str],
        cursor: Option<&str>,
    ) -> Result<ChangesPage, RemoteError> {
        let mut options = ChangeTrackingOptions::default();
        if let Some(n) = self.change_page_size {
            options = options.max_page_size(n);
        }
        let pager = match cursor {
            Some(c) => match ChangePageLink::from_cursor(c) {
                Some(page) => self.client.changes_from(&page, &options),
                None => self.client.changes_since(&ChangeToken::new(c), &options),
            },
            None => self.client.track_changes(entity_set, select, &options),
        };
        let initial = pager.is_initial_read();
        let page = pager.next_page().await?;
        let (cursor, more) = match page.next {
            ChangeNext::Page(link) => (link.to_cursor(), true),
            ChangeNext::Done(token) => (token.as_str().to_string(), false),
        };
        Ok(ChangesPage {
            changes: page.changes,
            cursor,
            more,
            initial,
        })
    }

    /// The `$expand` items that bring a row's N:1 related records along. The solutions come
    /// from the link table, read by [`Self::attach_solutions`].
    fn expansions(&self, kind: RecordKind) -> Vec<String> {
        let c = &self.map.config().columns;
        let currency = match kind {
            RecordKind::Opportunity => &c.opportunity.currency_bind,
            RecordKind::Lead => &c.lead.currency_bind,
        };
        let mut items = vec![format!("{currency}($select=isocurrencycode)")];
        if kind == RecordKind::Opportunity {
            items.push(c.opportunity.customer_account_bind.clone());
            items.push(c.opportunity.parent_contact_bind.clone());
        }
        items
    }

    fn link_primary_key(&self) -> String {
        format!("{}id", self.map.config().columns.solution.link_entity)
    }

    fn solution_primary_key(&self) -> String {
        format!("{}id", self.map.config().columns.solution.entity)
    }

    /// The active link rows of an opportunity, each with its solution row expanded (an N:1, so
    /// one request).
    async fn solution_links(
        &self,
        opportunity_id: &str,
    ) -> Result<Vec<Map<String, Value>>, RemoteError> {
        let s = &self.map.config().columns.solution;
        let query = Query::new()
            .select([self.link_primary_key()])
            .filter(
                Filter::eq(
                    &format!("_{}_value", s.link_opportunity),
                    parse_id(opportunity_id)?,
                )
                // An inactive link row is a removed solution.
                .and(Filter::eq("statecode", 0)),
            )
            .expand(format!(
                "{}($select={},{},{},{},{})",
                s.link_solution_bind,
                self.solution_primary_key(),
                s.solution_id,
                s.name,
                s.solution_type,
                s.publisher
            ));
        Ok(self
            .client
            .query::<Map<String, Value>>(&s.link_entity_set, &query)
            .into_stream()
            .map_ok(|e| e.value)
            .try_collect()
            .await?)
    }

    /// Reads an opportunity's solutions (its link rows) into `row` under the link table's
    /// entity set name, where [`Self::records_of`] expects them. A solution linked twice
    /// counts once.
    async fn attach_solutions(
        &self,
        kind: RecordKind,
        row: &mut Map<String, Value>,
    ) -> Result<(), RemoteError> {
        if kind != RecordKind::Opportunity {
            return Ok(());
        }
        let pk = self.primary_key(kind);
        let Some(id) = row.get(&pk).and_then(Value::as_str).map(str::to_string) else {
            return Ok(());
        };
        let s = &self.map.config().columns.solution;
        let mut solutions: Vec<Value> = Vec::new();
        for mut link in self.solution_links(&id).await? {
            if let Some(Value::Object(solution)) = link.remove(&s.link_solution_bind)
                && !solutions
                    .iter()
                    .any(|known| known.get(&s.solution_id) == solution.get(&s.solution_id))
            {
                solutions.push(Value::Object(solution));
            }
        }
        row.insert(s.link_entity_set.clone(), Value::Array(solutions));
        Ok(())
    }

    /// Splits an expanded row into the records the mapping reads.
    fn records_of(&self, kind: RecordKind, mut row: Map<String, Value>) -> CrmRecords {
        let c = &self.map.config().columns;
        let currency_nav = match kind {
            RecordKind::Opportunity => &c.opportunity.currency_bind,
            RecordKind::Lead => &c.lead.currency_bind,
        };
        let currency_code = row.remove(currency_nav).and_then(|v| {
            v.get("isocurrencycode")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let mut records = CrmRecords::new(kind, Map::new());
        records.currency_code = currency_code;
        if kind == RecordKind::Opportunity {
            records.account = match row.remove(&c.opportunity.customer_account_bind) {
                Some(Value::Object(a)) => Some(a),
                _ => None,
            };
            records.contacts = Some(match row.remove(&c.opportunity.parent_contact_bind) {
                Some(Value::Object(contact)) => vec![contact],
                _ => Vec::new(),
            });
            records.solutions = Some(match row.remove(&c.solution.link_entity_set) {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .filter_map(|v| match v {
                        Value::Object(o) => Some(o),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            });
        }
        records.primary = row;
        records
    }

    fn row_of(
        &self,
        kind: RecordKind,
        etag: Option<ETag>,
        row: Map<String, Value>,
    ) -> Result<CrmRow, RemoteError> {
        let pk = self.primary_key(kind);
        let id = row
            .get(&pk)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                RemoteError::new(
                    RemoteErrorKind::Rejected,
                    SERVICE,
                    format!("row without `{pk}`"),
                )
            })?
            .to_string();
        Ok(CrmRow {
            kind,
            id,
            etag: etag.map(|e| e.as_str().to_string()),
            records: self.records_of(kind, row),
        })
    }

    /// Every non-blank part of the account matching rule as an exact filter (the batched
    /// look-up and `resolve_account` find candidates alike).
    fn account_filters(&self, account: &AccountPayload) -> Vec<Filter> {
        self.map
            .account_match_columns()
            .into_iter()
            .filter_map(|column| {
                let v = account.record.get(column).and_then(Value::as_str)?;
                (!v.trim().is_empty()).then(|| Filter::eq(column, v))
            })
            .collect()
    }

    async fn resolve_account(&self, account: &AccountPayload) -> Result<String, RemoteError> {
        let c = &self.map.config().columns.account;
        // Every part of the matching rule as an exact filter, all pages read: the right row is
        // among the candidates however many accounts share a name or a postal code (a `$top`
        // page of "name or postal code" once missed it and created duplicates). Dataverse's
        // `eq` on text is case-insensitive, as the rule's default; the rule then decides.
        let filters = self.account_filters(account);
        if !account.match_key.is_blank()
            && let Some(filter) = Filter::all(filters)
        {
            let pk = format!("{}id", c.entity);
            let candidates: Vec<Map<String, Value>> = self
                .client
                .query::<Map<String, Value>>(&c.entity_set, &Query::new().filter(filter))
                .into_stream()
                .map_ok(|e| e.value)
                .try_collect()
                .await?;
            if let Some(found) = candidates
                .iter()
                .find(|a| self.map.account_match_key_of(a) == account.match_key)
                && let Some(id) = found.get(&pk).and_then(Value::as_str)
            {
                return Ok(id.to_string());
            }
        }
        let body = account.body().map_err(mapping)?;
        Ok(self.client.create(&c.entity_set, &body).await?.to_string())
    }

    async fn resolve_contact(
        &self,
        contact: &ContactPayload,
        account_id: Option<&str>,
    ) -> Result<String, RemoteError> {
        let c = &self.map.config().columns.contact;
        if let Some(email) = &contact.match_key {
            let found: Vec<Map<String, Value>> = self
                .client
                .query::<Map<String, Value>>(
                    &c.entity_set,
                    &Query::new()
                        .filter(Filter::eq(&c.email, email.as_str()))
                        .top(1),
                )
                .into_stream()
                .map_ok(|e| e.value)
                .try_collect()
                .await?;
            if let Some(id) = found
                .first()
                .and_then(|r| r.get(&format!("{}id", c.entity)))
                .and_then(Value::as_str)
            {
                return Ok(id.to_string());
            }
        }
        let account_set = &self.map.config().columns.account.entity_set;
        let body = contact.body(account_id, account_set).map_err(mapping)?;
        Ok(self.client.create(&c.entity_set, &body).await?.to_string())
    }

    /// Sends `queries` (GETs) in one `$batch` through `client` and returns each one's first
    /// page, in order. A batch answered in part, or a query that failed, fails the whole read.
    async fn read_batch(
        client: &DataverseClient,
        queries: Vec<BatchRequest>,
    ) -> Result<Vec<ReadPage>, RemoteError> {
        let sent = queries.len();
        let batch = queries
            .into_iter()
            .fold(Batch::new(), Batch::request)
            .continue_on_error(true);
        let result = client.execute_batch(&batch).await?;
        if result.responses.len() != sent {
            return Err(RemoteError::new(
                RemoteErrorKind::Transient,
                SERVICE,
                format!(
                    "a $batch of {sent} reads answered {}",
                    result.responses.len()
                ),
            ));
        }
        let mut pages = Vec::with_capacity(sent);
        for response in &result.responses {
            if let Some(e) = response.error() {
                return Err(e.into());
            }
            let page: Map<String, Value> = response.json()?;
            pages.push(ReadPage {
                rows: match page.get("value") {
                    Some(Value::Array(items)) => items
                        .iter()
                        .filter_map(|v| v.as_object().cloned())
                        .collect(),
                    _ => Vec::new(),
                },
                more: page.contains_key("@odata.nextLink"),
            });
        }
        Ok(pages)
    }

    /// The solution ids (catalogue alternate keys) of catalogue rows, by lower-case row id:
    /// from the cache, and the rows it lacks read by id, 100 to a query and up to 10 queries
    /// to a `$batch` (one request toward the limits for 1,000 rows: a first read of the link
    /// feed over 100,000 pairs names as many rows when every deal has a solution of its own).
    /// A row that is gone has no entry.
    async fn solution_keys_of(
        &self,
        rows: &[&str],
    ) -> Result<HashMap<String, String>, RemoteError> {
        let cached = || self.solution_keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: HashMap<String, String> = HashMap::new();
        let mut missing: Vec<String> = Vec::new();
        {
            let cache = cached();
            for row in rows.iter().map(|r| r.to_ascii_lowercase()) {
                match cache.get(&row) {
                    Some(key) => {
                        keys.insert(row, key.clone());
                    }
                    None => missing.push(row),
                }
            }
        }
        missing.sort();
        missing.dedup();
        let s = &self.map.config().columns.solution;
        let pk = self.solution_primary_key();
        let query_of = |part: &[String]| {
            Query::new()
                .select([pk.as_str(), s.solution_id.as_str()])
                .filter(Filter::is_in(&pk, part.iter().cloned()))
        };
        for ids in missing.chunks(1000) {
            for id in ids {
                parse_id(id)?;
            }
            // One query alone goes as a GET; more in a `$batch`.
            let rows: Vec<Map<String, Value>> = if ids.len() <= 100 {
                self.client
                    .query::<Map<String, Value>>(&s.entity_set, &query_of(ids))
                    .into_stream()
                    .map_ok(|e| e.value)
                    .try_collect()
                    .await?
            } else {
                let queries = ids
                    .chunks(100)
                    .map(|part| {
                        BatchRequest::get(format!(
                            "{}?{}",
                            s.entity_set,
                            query_of(part).to_query_string()
                        ))
                    })
                    .collect();
                Self::read_batch(&self.client, queries)
                    .await?
                    .into_iter()
                    .flat_map(|page| page.rows)
                    .collect()
            };
            let mut cache = cached();
            // Bounded: a catalogue is tens of rows; a seed with a solution per deal would
            // otherwise keep every one.
            if cache.len() > SOLUTION_KEYS_CAP {
                cache.clear();
            }
            for row in rows {
                if let (Some(id), Some(key)) = (
                    row.get(&pk).and_then(Value::as_str),
                    row.get(&s.solution_id).and_then(Value::as_str),
                ) {
                    cache.insert(id.to_ascii_lowercase(), key.to_string());
                    keys.insert(id.to_ascii_lowercase(), key.to_string());
                }
            }
        }
        Ok(keys)
    }

    fn cached_currencies(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.currencies.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn currency_id(&self, code: &str) -> Result<Option<String>, RemoteError> {
        if let Some(id) = self.cached_currencies().get(code) {
            return Ok(Some(id.clone()));
        }
        let _lookup = self.currency_lookup.lock().await;
        if let Some(id) = self.cached_currencies().get(code) {
            return Ok(Some(id.clone()));
        }
        let found: Vec<Map<String, Value>> = self
            .client
            .query::<Map<String, Value>>(
                "transactioncurrencies",
                &Query::new()
                    .select(["transactioncurrencyid"])
                    .filter(Filter::eq("isocurrencycode", code))
                    .top(1),
            )
            .into_stream()
            .map_ok(|e| e.value)
            .try_collect()
            .await?;
        let id = found
            .first()
            .and_then(|r| r.get("transactioncurrencyid"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(id) = &id {
            self.cached_currencies()
                .insert(code.to_string(), id.clone());
        }
        Ok(id)
    }

    /// Links the payload's solutions to the opportunity and unlinks `solutions_removed`.
    ///
    /// A link row's id is derived from the opportunity and solution ids, so creating it is an
    /// idempotent upsert: a retry or a crash between the request and its answer never links a
    /// solution twice. Only the solutions the plan removed are unlinked; a link a seller adds
    /// meanwhile stays.
    async fn link_solutions(
        &self,
        payload: &CrmPayload,
        opportunity_id: &str,
    ) -> Result<(), RemoteError> {
        if payload.solutions.is_empty() && payload.solutions_removed.is_empty() {
            return Ok(());
        }
        let s = &self.map.config().columns.solution;
        let solution_pk = self.solution_primary_key();
        let link_pk = self.link_primary_key();
        let opportunities = &self.map.config().columns.opportunity.entity_set;
        let links = self.solution_links(opportunity_id).await?;
        let linked_solution = |link: &Map<String, Value>| {
            link.get(&s.link_solution_bind)
                .and_then(|sol| sol.get(&s.solution_id))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let linked: Vec<String> = links.iter().filter_map(linked_solution).collect();
        for solution in &payload.solutions {
            if linked.contains(&solution.key.value) {
                continue;
            }
            let key = Key::alternate(solution.key.column.clone(), solution.key.value.clone());
            // A referral often names a solution by id alone: only what it knows is written, so
            // linking never blanks a catalogue row's name, publisher or type.
            let record = known_values(&solution.record);
            let up = self
                .client
                .upsert(
                    &solution.key.entity_set,
                    &key,
                    &record,
                    &UpsertOptions::default()
                        .return_representation([solution_pk.as_str(), s.name.as_str()]),
                )
                .await?;
            let Some(solution_id) = up.id(&solution_pk) else {
                continue;
            };
            let link_id = solution_link_id(opportunity_id, &solution_id.to_string());
            let mut body = Map::new();
            let name = up
                .representation
                .as_ref()
                .and_then(|r| r.get(&s.name))
                .or_else(|| record.get(&s.name))
                .filter(|v| !v.is_null());
            if let Some(name) = name {
                body.insert(s.name.clone(), name.clone());
            }
            body.insert(
                format!("{}@odata.bind", s.link_opportunity_bind),
                Value::String(format!("/{opportunities}({opportunity_id})")),
            );
            body.insert(
                format!("{}@odata.bind", s.link_solution_bind),
                Value::String(format!("/{}({solution_id})", solution.key.entity_set)),
            );
            self.client
                .upsert(
                    &s.link_entity_set,
                    &Key::id(link_id),
                    &body,
                    &UpsertOptions::default().mode(UpsertMode::CreateOrUpdate),
                )
                .await?;
        }
        for link in &links {
            let removed =
                linked_solution(link).is_some_and(|id| payload.solutions_removed.contains(&id));
            let Some(link_id) = link.get(&link_pk).and_then(Value::as_str) else {
                continue;
            };
            if removed {
                match self
                    .client
                    .delete(&s.link_entity_set, &Key::id(parse_id(link_id)?), None)
                    .await
                {
                    Ok(()) => {}
                    // Already gone (a retry, or the seller removed it too): the same outcome.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }
}

/// The values of `record` that say something: nulls and blank text dropped.
fn known_values(record: &Map<String, Value>) -> Map<String, Value> {
    record
        .iter()
        .filter(|(_, v)| match v {
            Value::Null => false,
            Value::String(t) => !t.trim().is_empty(),
            _ => true,
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The id of the link row between an opportunity and a solution row: a name-based UUID, the
/// same on every attempt.
fn solution_link_id(opportunity_id: &str, solution_row_id: &str) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x3c5e_11d0_7a4b_4e2f_9d61_c05e_11ab_5e11);
    Uuid::new_v5(
        &NAMESPACE,
        format!(
            "{}/{}",
            opportunity_id.to_ascii_lowercase(),
            solution_row_id.to_ascii_lowercase()
        )
        .as_bytes(),
    )
}

/// One look-up of a grouped read ([`DataverseCrm::create_new_batched`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lookup {
    /// Accounts by the matching rule's exact filters.
    Account(AccountMatchKey),
    /// A contact by e-mail.
    Contact(String),
    /// A catalogue row by its solution id.
    Solution(String),
    /// The lead carrying a referral id (the lineage of an opportunity written for it).
    Lead(String),
}

/// What a grouped read found (absent: not found).
#[derive(Debug, Default)]
struct Found {
    accounts: HashMap<AccountMatchKey, String>,
    contacts: HashMap<String, String>,
    solution_names: HashMap<String, Value>,
    leads: HashMap<String, String>,
}

/// A row id that stands in for a lookup bound by a `$n` reference instead (overwritten before
/// the request is sent; never written).
const PLACEHOLDER_ID: &str = "00000000-0000-0000-0000-000000000000";

/// Sets the `@odata.bind` of every bind of `binds` that points at the account (or contact
/// `index`) to `reference`.
fn rebind(
    body: &mut Map<String, Value>,
    binds: &[cosell_mapping::Bind],
    wants: impl Fn(&BindTarget) -> Option<String>,
) {
    for b in binds {
        if let Some(reference) = wants(&b.target) {
            body.insert(
                format!("{}@odata.bind", b.navigation_property),
                Value::String(reference),
            );
        }
    }
}

/// The records a `$batch` response answered for one change set: its responses on success, or
/// the failing request's response.
enum ChangeSetAnswer<'a> {
    Done(&'a [dataverse_client::BatchResponse]),
    Failed(&'a dataverse_client::BatchResponse),
    Missing,
}

impl DataverseCrm {
    /// The ids of rows of `kind` carrying one of `referral_ids`, as a `$batch` GET.
    fn rows_by_referral_request(&self, kind: RecordKind, referral_ids: &[String]) -> BatchRequest {
        let column = self.referral_column(kind);
        let query = Query::new()
            .select([column])
            .filter(Filter::is_in(column, referral_ids.iter().cloned()));
        BatchRequest::get(format!(
            "{}?{}",
            self.entity_set(kind),
            query.to_query_string()
        ))
    }

    /// The query of one look-up, `None` when it cannot match anything (a blank account key).
    fn lookup_request(&self, lookup: &Lookup, account: Option<&AccountPayload>) -> Option<String> {
        let c = &self.map.config().columns;
        let (set, query) = match lookup {
            Lookup::Account(_) => {
                let account = account?;
                // The same exact filters as `resolve_account`: every part of the matching rule.
                let filters = self.account_filters(account);
                (
                    c.account.entity_set.as_str(),
                    Query::new().filter(Filter::all(filters)?),
                )
            }
            Lookup::Contact(email) => (
                c.contact.entity_set.as_str(),
                Query::new()
                    .select([format!("{}id", c.contact.entity)])
                    .filter(Filter::eq(&c.contact.email, email.as_str()))
                    .top(1),
            ),
            Lookup::Solution(id) => (
                c.solution.entity_set.as_str(),
                Query::new()
                    .select([self.solution_primary_key(), c.solution.name.clone()])
                    .filter(Filter::eq(&c.solution.solution_id, id.as_str()))
                    .top(1),
            ),
            Lookup::Lead(referral_id) => (
                self.entity_set(RecordKind::Lead),
                Query::new()
                    .select([self.primary_key(RecordKind::Lead)])
                    .filter(Filter::eq(
                        self.referral_column(RecordKind::Lead),
                        referral_id.as_str(),
                    ))
                    .top(1),
            ),
        };
        Some(format!("{set}?{}", query.to_query_string()))
    }

    /// Reads what the records of one round need (accounts by the matching rule, contacts by
    /// e-mail, catalogue rows, leads by referral id) in one `$batch` of GETs.
    async fn grouped_read(&self, records: &[&NewRecord]) -> Result<Found, RemoteError> {
        let c = &self.map.config().columns;
        let mut lookups: Vec<Lookup> = Vec::new();
        let mut requests: Vec<BatchRequest> = Vec::new();
        let mut seen: HashSet<Lookup> = HashSet::new();
        let mut add = |lookup: Lookup, account: Option<&AccountPayload>| {
            if seen.contains(&lookup) {
                return;
            }
            if let Some(path) = self.lookup_request(&lookup, account) {
                seen.insert(lookup.clone());
                lookups.push(lookup);
                requests.push(BatchRequest::get(path));
            }
        };
        for r in records {
            let p = &r.payload;
            if let Some(a) = &p.account
                && !a.match_key.is_blank()
            {
                add(Lookup::Account(a.match_key.clone()), Some(a));
            }
            for contact in &p.contacts {
                if let Some(email) = &contact.match_key {
                    add(Lookup::Contact(email.clone()), None);
                }
            }
            for s in &p.solutions {
                add(Lookup::Solution(s.key.value.clone()), None);
            }
            if p.kind == RecordKind::Opportunity {
                add(Lookup::Lead(p.key.value.clone()), None);
            }
        }
        let mut found = Found::default();
        if requests.is_empty() {
            return Ok(found);
        }
        // Bulk work: background priority, so live syncs keep their share of the budget.
        let pages = Self::read_batch(&self.client.background(), requests).await?;
        let id_of = |row: &Map<String, Value>, pk: &str| {
            row.get(pk).and_then(Value::as_str).map(str::to_string)
        };
        for (lookup, page) in lookups.into_iter().zip(pages) {
            let rows = page.rows;
            match lookup {
                Lookup::Account(key) => {
                    let pk = format!("{}id", c.account.entity);
                    let hit = rows
                        .iter()
                        .find(|a| self.map.account_match_key_of(a) == key)
                        .and_then(|a| id_of(a, &pk));
                    match hit {
                        Some(id) => {
                            found.accounts.insert(key, id);
                        }
                        // More candidates than a page: the right one may be on a later page,
                        // so this account is resolved the per-record way, reading every page.
                        None if page.more => {
                            let account = records
                                .iter()
                                .find_map(|r| {
                                    r.payload.account.as_ref().filter(|a| a.match_key == key)
                                })
                                .cloned();
                            if let Some(account) = account {
                                let id = self.resolve_account(&account).await?;
                                found.accounts.insert(key, id);
                            }
                        }
                        None => {}
                    }
                }
                Lookup::Contact(email) => {
                    if let Some(id) = rows
                        .first()
                        .and_then(|r| id_of(r, &format!("{}id", c.contact.entity)))
                    {
                        found.contacts.insert(email, id);
                    }
                }
                Lookup::Solution(id) => {
                    if let Some(name) = rows
                        .first()
                        .and_then(|r| r.get(&c.solution.name))
                        .filter(|v| !v.is_null())
                    {
                        found.solution_names.insert(id, name.clone());
                    }
                }
                Lookup::Lead(referral_id) => {
                    if let Some(id) = rows
                        .first()
                        .and_then(|r| id_of(r, &self.primary_key(RecordKind::Lead)))
                    {
                        found.leads.insert(referral_id, id);
                    }
                }
            }
        }
        Ok(found)
    }

    /// The change set that writes one record: the account and contacts it lacks (created in
    /// the change set and referred to as `$n`), the primary record upserted by its alternate
    /// key (answering its id and ETag), its solutions upserted into the catalogue and linked.
    /// Returns the requests and the index of the primary record's.
    async fn change_set_of(
        &self,
        record: &NewRecord,
        found: &Found,
    ) -> Result<(Vec<BatchRequest>, usize), RemoteError> {
        let c = &self.map.config().columns;
        let payload = &record.payload;
        let mut requests: Vec<BatchRequest> = Vec::new();
        let next_ref = |requests: &mut Vec<BatchRequest>, request: BatchRequest| {
            let n = requests.len() + 1;
            requests.push(request.content_id(n.to_string()));
            format!("${n}")
        };
        let account_ref = match &payload.account {
            None => None,
            Some(a) => Some(match found.accounts.get(&a.match_key) {
                Some(id) if !a.match_key.is_blank() => format!("/{}({id})", a.entity_set),
                _ => {
                    let body = a.body().map_err(mapping)?;
                    next_ref(
                        &mut requests,
                        BatchRequest::post(a.entity_set.as_str()).json(&body)?,
                    )
                }
            }),
        };
        let mut contact_refs: Vec<String> = Vec::new();
        let mut created_emails: HashMap<&str, String> = HashMap::new();
        for contact in &payload.contacts {
            let email = contact.match_key.as_deref();
            if let Some(id) = email.and_then(|e| found.contacts.get(e)) {
                contact_refs.push(format!("/{}({id})", contact.entity_set));
                continue;
            }
            if let Some(r) = email.and_then(|e| created_emails.get(e)) {
                contact_refs.push(r.clone());
                continue;
            }
            let placeholder = account_ref.as_ref().map(|_| PLACEHOLDER_ID);
            let mut body = contact
                .body(placeholder, &c.account.entity_set)
                .map_err(mapping)?;
            if let Some(account_ref) = &account_ref {
                rebind(&mut body, &contact.binds, |t| {
                    matches!(t, BindTarget::Account).then(|| account_ref.clone())
                });
            }
            let r = next_ref(
                &mut requests,
                BatchRequest::post(contact.entity_set.as_str()).json(&body)?,
            );
            if let Some(e) = email {
                created_emails.insert(e, r.clone());
            }
            contact_refs.push(r);
        }
        let mut ids = ResolvedIds {
            account: account_ref.as_ref().map(|_| PLACEHOLDER_ID.to_string()),
            contacts: contact_refs
                .iter()
                .map(|_| Some(PLACEHOLDER_ID.to_string()))
                .collect(),
            currency: None,
        };
        for bind in &payload.binds {
            if let BindTarget::Currency { code } = &bind.target {
                ids.currency = self.currency_id(code).await?;
            }
        }
        let mut body = payload.body(&ids).map_err(mapping)?;
        rebind(&mut body, &payload.binds, |t| match t {
            BindTarget::Account => account_ref.clone(),
            BindTarget::Contact { index } => contact_refs.get(*index).cloned(),
            _ => None,
        });
        body.extend(record.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        if payload.kind == RecordKind::Opportunity
            && let Some(lead) = found.leads.get(&payload.key.value)
        {
            // R-OPP: as `write`, the opportunity that replaces a lead is bound to it.
            body.insert(
                "originatingleadid@odata.bind".into(),
                Value::String(format!("/{}({lead})", c.lead.entity_set)),
            );
        }
        let pk = self.primary_key(payload.kind);
        let key = Key::alternate(payload.key.column.clone(), payload.key.value.clone());
        let primary = requests.len();
        next_ref(
            &mut requests,
            BatchRequest::patch(format!("{}({key})?$select={pk}", payload.key.entity_set))
                .json(&body)?
                .return_representation()?,
        );
        if payload.kind == RecordKind::Opportunity {
            let s = &c.solution;
            let mut linked: HashSet<&str> = HashSet::new();
            for solution in &payload.solutions {
                if !linked.insert(solution.key.value.as_str()) {
                    continue;
                }
                // As `link_solutions`: only what the referral knows goes to the catalogue row.
                let record = known_values(&solution.record);
                let key = Key::alternate(solution.key.column.clone(), solution.key.value.clone());
                next_ref(
                    &mut requests,
                    BatchRequest::upsert(&solution.key.entity_set, &key, &record)?,
                );
                // The link row binds both rows by their alternate keys: neither id needs to be
                // known, and inside the change set a link exists only if its opportunity does.
                let mut link = Map::new();
                let name = record
                    .get(&s.name)
                    .or_else(|| found.solution_names.get(&solution.key.value))
                    .filter(|v| !v.is_null());
                if let Some(name) = name {
                    link.insert(s.name.clone(), name.clone());
                }
                link.insert(
                    format!("{}@odata.bind", s.link_opportunity_bind),
                    Value::String(payload.key.path()),
                );
                link.insert(
                    format!("{}@odata.bind", s.link_solution_bind),
                    Value::String(solution.key.path()),
                );
                next_ref(
                    &mut requests,
                    BatchRequest::post(s.link_entity_set.as_str()).json(&link)?,
                );
            }
        }
        // The status last, as `apply_status` moves it, addressing the row by its key.
        for step in &record.steps {
            let request = match step {
                StatusStep::WinOpportunity { status } | StatusStep::LoseOpportunity { status } => {
                    let (action, subject) = match step {
                        StatusStep::WinOpportunity { .. } => {
                            ("WinOpportunity", "Won in Partner Center")
                        }
                        _ => ("LoseOpportunity", "Closed in Partner Center"),
                    };
                    BatchRequest::post(action).json(&json!({
                        "Status": status,
                        "OpportunityClose": {
                            "subject": subject,
                            "opportunityid@odata.bind": payload.key.path(),
                        },
                    }))?
                }
                StatusStep::SetState {
                    kind,
                    statecode,
                    statuscode,
                } if *kind == payload.kind => BatchRequest::update(
                    self.entity_set(*kind),
                    &key,
                    &json!({ "statecode": statecode, "statuscode": statuscode }),
                    None,
                )?,
                // Qualifying a lead, or a step on another row, is no step of a create.
                other => {
                    return Err(RemoteError::new(
                        RemoteErrorKind::Rejected,
                        SERVICE,
                        format!("status step {other:?} cannot follow a create"),
                    ));
                }
            };
            next_ref(&mut requests, request);
        }
        Ok((requests, primary))
    }

    /// One round of [`Crm::create_new`]: a grouped read, then one `$batch` with a change set
    /// per record (continue-on-error). A record that would create an account or contact an
    /// earlier record of the round creates too is left for the next round (`None`), which finds
    /// it: two change sets never create one customer twice.
    async fn create_round(
        &self,
        records: &[&NewRecord],
    ) -> Result<Vec<Option<Result<CrmWritten, RemoteError>>>, RemoteError> {
        let found = self.grouped_read(records).await?;
        let mut claimed_accounts: HashSet<&AccountMatchKey> = HashSet::new();
        let mut claimed_emails: HashSet<&str> = HashSet::new();
        let mut out: Vec<Option<Result<CrmWritten, RemoteError>>> = Vec::new();
        // (index into `out`, requests in the change set, index of the primary's request)
        let mut sent: Vec<(usize, usize, usize)> = Vec::new();
        // Records with status steps, read back after every change set (by `out` index): the
        // steps move the row past the version the upsert answered, and without the final one
        // the change feed cannot tell the row for our own write (a read per record created
        // closed, 0.25 requests per pair on the feed's first read after a backfill).
        let mut read_back: Vec<(usize, BatchRequest)> = Vec::new();
        let mut batch = Batch::new().continue_on_error(true);
        for record in records {
            let p = &record.payload;
            let new_account = p
                .account
                .as_ref()
                .map(|a| &a.match_key)
                .filter(|k| !k.is_blank() && !found.accounts.contains_key(*k));
            let new_emails: Vec<&str> = p
                .contacts
                .iter()
                .filter_map(|c| c.match_key.as_deref())
                .filter(|e| !found.contacts.contains_key(*e))
                .collect();
            if new_account.is_some_and(|k| claimed_accounts.contains(k))
                || new_emails.iter().any(|e| claimed_emails.contains(e))
            {
                out.push(None);
                continue;
            }
            match self.change_set_of(record, &found).await {
                Ok((requests, primary)) => {
                    claimed_accounts.extend(new_account);
                    claimed_emails.extend(new_emails);
                    if !record.steps.is_empty() {
                        let kind = p.kind;
                        let key = Key::alternate(p.key.column.clone(), p.key.value.clone());
                        read_back.push((
                            out.len(),
                            BatchRequest::get(format!(
                                "{}({key})?$select={}",
                                self.entity_set(kind),
                                self.primary_key(kind)
                            )),
                        ));
                    }
                    sent.push((out.len(), requests.len(), primary));
                    batch = batch.change_set(requests);
                    out.push(Some(Err(RemoteError::new(
                        RemoteErrorKind::UnknownOutcome,
                        SERVICE,
                        "no answer for the record's change set",
                    ))));
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        if batch.is_empty() {
            return Ok(out);
        }
        let read_slots: Vec<usize> = read_back.iter().map(|(slot, _)| *slot).collect();
        for (_, request) in read_back {
            batch = batch.request(request);
        }
        // Bulk work: background priority, so live syncs keep their share of the budget.
        let result = self.client.background().execute_batch(&batch).await?;
        let mut responses = result.responses.as_slice();
        for (slot, len, primary) in sent {
            // A change set that ran answers one response per request inside its own part; one
            // that failed answers the failing request's response alone, outside any part.
            let answer = match responses.first() {
                None => ChangeSetAnswer::Missing,
                Some(first) if first.change_set.is_some() && responses.len() >= len => {
                    let (mine, rest) = responses.split_at(len);
                    responses = rest;
                    ChangeSetAnswer::Done(mine)
                }
                Some(first) => {
                    responses = &responses[1..];
                    ChangeSetAnswer::Failed(first)
                }
            };
            out[slot] = Some(match answer {
                ChangeSetAnswer::Done(mine) => {
                    self.written_of(&mine[primary], records[slot]).map(|mut w| {
                        if !records[slot].steps.is_empty() {
                            // The steps moved the row on since the upsert answered its ETag;
                            // the read after the change sets gives the final one.
                            w.etag = None;
                        }
                        w
                    })
                }
                ChangeSetAnswer::Failed(r) => Err(r.error().map_or_else(
                    || {
                        RemoteError::new(
                            RemoteErrorKind::UnknownOutcome,
                            SERVICE,
                            format!("change set answered {} without its requests", r.status),
                        )
                    },
                    RemoteError::from,
                )),
                ChangeSetAnswer::Missing => Err(RemoteError::new(
                    RemoteErrorKind::Transient,
                    SERVICE,
                    "the $batch stopped before the record's change set",
                )),
            });
        }
        // The reads come after every change set, in the order they were added. A read that
        // failed (its change set did) leaves the ETag unknown, as before.
        if responses.len() == read_slots.len() {
            for (slot, response) in read_slots.into_iter().zip(responses) {
                if let Some(Ok(w)) = out[slot].as_mut()
                    && response.error().is_none()
                {
                    w.etag = response_etag(response);
                }
            }
        }
        Ok(out)
    }

    /// The written record from the primary upsert's answer (its row id and ETag).
    fn written_of(
        &self,
        response: &dataverse_client::BatchResponse,
        record: &NewRecord,
    ) -> Result<CrmWritten, RemoteError> {
        let pk = self.primary_key(record.payload.kind);
        let row: Map<String, Value> = response.json()?;
        let id = row
            .get(&pk)
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| response.entity_id().map(|u| u.to_string()))
            .ok_or_else(|| {
                RemoteError::new(
                    RemoteErrorKind::UnknownOutcome,
                    SERVICE,
                    "upsert answered without the row id",
                )
            })?;
        let etag = response_etag(response);
        Ok(CrmWritten {
            id,
            etag,
            created: response.status.as_u16() == 201,
        })
    }

    /// [`Crm::create_new`] in `$batch` requests: per round one of reads and one of writes
    /// (a change set per record), rounds repeated only for records sharing a new customer.
    async fn create_new_batched(
        &self,
        records: &[NewRecord],
    ) -> Result<Vec<Result<CrmWritten, RemoteError>>, RemoteError> {
        let mut results: Vec<Option<Result<CrmWritten, RemoteError>>> =
            (0..records.len()).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..records.len()).collect();
        while !pending.is_empty() {
            let round: Vec<&NewRecord> = pending.iter().map(|&i| &records[i]).collect();
            let answers = self.create_round(&round).await?;
            let mut later = Vec::new();
            for (i, answer) in pending.iter().zip(answers) {
                match answer {
                    Some(r) => results[*i] = Some(r),
                    None => later.push(*i),
                }
            }
            // Every round writes its first record at least, so this ends.
            if later.len() == pending.len() {
                break;
            }
            pending = later;
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(RemoteError::new(
                        RemoteErrorKind::Transient,
                        SERVICE,
                        "not written",
                    ))
                })
            })
            .collect())
    }

    /// [`Crm::referrals_with_rows`] as one `$batch` of two GETs (opportunities and leads by
    /// `In` over the referral-id column).
    async fn referrals_with_rows_batched(
        &self,
        referral_ids: &[String],
    ) -> Result<HashSet<String>, RemoteError> {
        let mut found = HashSet::new();
        if referral_ids.is_empty() {
            return Ok(found);
        }
        let kinds = [RecordKind::Opportunity, RecordKind::Lead];
        let queries = kinds
            .iter()
            .map(|k| self.rows_by_referral_request(*k, referral_ids))
            .collect();
        // Bulk work: background priority, so live syncs keep their share of the budget.
        let pages = Self::read_batch(&self.client.background(), queries).await?;
        for (kind, page) in kinds.iter().zip(pages) {
            let column = self.referral_column(*kind);
            for row in page.rows {
                if let Some(id) = row.get(column).and_then(Value::as_str) {
                    found.insert(id.to_string());
                }
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Crm for DataverseCrm {
    fn field_map(&self) -> &FieldMap {
        &self.map
    }

    async fn find_by_referral(
        &self,
        kind: RecordKind,
        referral_id: &str,
    ) -> Result<Option<CrmRow>, RemoteError> {
        let mut query = Query::new()
            .filter(Filter::eq(self.referral_column(kind), referral_id))
            .top(1);
        for item in self.expansions(kind) {
            query = query.expand(item);
        }
        let rows: Vec<_> = self
            .client
            .query::<Map<String, Value>>(self.entity_set(kind), &query)
            .into_stream()
            .try_collect()
            .await?;
        let Some(mut entity) = rows.into_iter().next() else {
            return Ok(None);
        };
        self.attach_solutions(kind, &mut entity.value).await?;
        self.row_of(kind, entity.etag, entity.value).map(Some)
    }

    async fn read(&self, kind: RecordKind, id: &str) -> Result<Option<CrmRow>, RemoteError> {
        let Ok(uuid) = Uuid::parse_str(id) else {
            // Not a row id (an external reference from another system): no such row.
            return Ok(None);
        };
        let mut options = RetrieveOptions::default();
        for item in self.expansions(kind) {
            options = options.expand(item);
        }
        let entity = self
            .client
            .try_retrieve::<Map<String, Value>>(self.entity_set(kind), &Key::id(uuid), &options)
            .await?;
        let Some(mut entity) = entity else {
            return Ok(None);
        };
        self.attach_solutions(kind, &mut entity.value).await?;
        self.row_of(kind, entity.etag, entity.value).map(Some)
    }

    async fn write(
        &self,
        payload: &CrmPayload,
        extra: &Map<String, Value>,
        target: WriteTarget<'_>,
    ) -> Result<CrmWritten, RemoteError> {
        let mut ids = ResolvedIds::default();
        if let Some(account) = &payload.account {
            ids.account = Some(self.resolve_account(account).await?);
        }
        for contact in &payload.contacts {
            ids.contacts.push(Some(
                self.resolve_contact(contact, ids.account.as_deref())
                    .await?,
            ));
        }
        for bind in &payload.binds {
            if let BindTarget::Currency { code } = &bind.target {
                ids.currency = self.currency_id(code).await?;
            }
        }
        let mut body = payload.body(&ids).map_err(mapping)?;
        body.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        if payload.kind == RecordKind::Opportunity
            && matches!(target, WriteTarget::ByKey)
            && let Some(lead) = self.lead_of_referral(&payload.key.value).await?
        {
            // R-OPP: the opportunity that replaces a lead is bound to it in the create, so the
            // CRM keeps the lineage (`originatingleadid`).
            let leads = &self.map.config().columns.lead.entity_set;
            body.insert(
                "originatingleadid@odata.bind".into(),
                Value::String(format!("/{leads}({lead})")),
            );
        }
        let pk = self.primary_key(payload.kind);
        let (key, mode) = match target {
            WriteTarget::ByKey => (
                Key::alternate(payload.key.column.clone(), payload.key.value.clone()),
                UpsertMode::CreateOrUpdate,
            ),
            WriteTarget::Row { id, etag } => (
                Key::id(parse_id(id)?),
                match etag {
                    Some(e) => UpsertMode::UpdateIfMatch(ETag::new(e)),
                    // Update only: a write to a known row must never resurrect a deleted one.
                    None => UpsertMode::UpdateOnly,
                },
            ),
        };
        let up = self
            .client
            .upsert(
                &payload.key.entity_set,
                &key,
                &body,
                &UpsertOptions::default()
                    .mode(mode)
                    .return_representation([pk.as_str()]),
            )
            .await
            .inspect_err(|_| {
                // A cached currency id may be what the service refused.
                if ids.currency.is_some() {
                    self.cached_currencies().clear();
                }
            })?;
        let id = up
            .id(&pk)
            .ok_or_else(|| {
                RemoteError::new(
                    RemoteErrorKind::UnknownOutcome,
                    SERVICE,
                    "upsert answered without the row id",
                )
            })?
            .to_string();
        if payload.kind == RecordKind::Opportunity {
            self.link_solutions(payload, &id).await?;
        }
        Ok(CrmWritten {
            id,
            etag: up.etag.map(|e| e.as_str().to_string()),
            created: up.outcome == UpsertOutcome::Created,
        })
    }

    async fn has_currency(&self, code: &str) -> Result<bool, RemoteError> {
        // R-CUR: looked up by `isocurrencycode`; a hit is cached (and used by the write).
        Ok(self.currency_id(code).await?.is_some())
    }

    async fn update_columns(
        &self,
        kind: RecordKind,
        id: &str,
        columns: &Map<String, Value>,
        etag: Option<&str>,
    ) -> Result<Option<String>, RemoteError> {
        if columns.is_empty() {
            return Ok(None);
        }
        let pk = self.primary_key(kind);
        let mode = match etag {
            Some(e) => UpsertMode::UpdateIfMatch(ETag::new(e)),
            // Update only: a write-back must never resurrect a deleted row.
            None => UpsertMode::UpdateOnly,
        };
        let up = self
            .client
            .upsert(
                self.entity_set(kind),
                &Key::id(parse_id(id)?),
                columns,
                &UpsertOptions::default()
                    .mode(mode)
                    .return_representation([pk.as_str()]),
            )
            .await?;
        Ok(up.etag.map(|e| e.as_str().to_string()))
    }

    async fn apply_status(
        &self,
        _kind: RecordKind,
        id: &str,
        step: &StatusStep,
    ) -> Result<Option<String>, RemoteError> {
        let uuid = parse_id(id)?;
        match step {
            StatusStep::QualifyLead { status } => {
                // The engine has already written the opportunity (upsert on the referral id),
                // so qualifying only closes the lead: no second opportunity.
                let options = QualifyLead {
                    create_account: false,
                    create_contact: false,
                    create_opportunity: false,
                    status: LeadStatus::from_code(*status as i32),
                    ..QualifyLead::default()
                };
                self.client.qualify_lead(uuid, &options).await?;
                Ok(None)
            }
            StatusStep::WinOpportunity { status } => {
                self.client
                    .win_opportunity(
                        uuid,
                        &OpportunityClose::new("Won in Partner Center"),
                        OpportunityStatus::from_code(*status as i32),
                    )
                    .await?;
                Ok(None)
            }
            StatusStep::LoseOpportunity { status } => {
                self.client
                    .lose_opportunity(
                        uuid,
                        &OpportunityClose::new("Closed in Partner Center"),
                        OpportunityStatus::from_code(*status as i32),
                    )
                    .await?;
                Ok(None)
            }
            StatusStep::SetState {
                kind: step_kind,
                statecode,
                statuscode,
            } => {
                self.client
                    .update(
                        self.entity_set(*step_kind),
                        &Key::id(uuid),
                        &json!({ "statecode": statecode, "statuscode": statuscode }),
                        &UpdateOptions::default(),
                    )
                    .await?;
                Ok(None)
            }
        }
    }

    async fn convert_lead(
        &self,
        lead_id: &str,
        qualified_status: i64,
    ) -> Result<Option<String>, RemoteError> {
        // No account or contact from the lead: the engine matches or creates the customer with
        // the mapping's rules when it writes the opportunity.
        let options = QualifyLead {
            create_account: false,
            create_contact: false,
            create_opportunity: true,
            status: LeadStatus::from_code(qualified_status as i32),
            ..QualifyLead::default()
        };
        let qualified = self
            .client
            .qualify_lead(parse_id(lead_id)?, &options)
            .await?;
        Ok(qualified.opportunity_id.map(|id| id.to_string()))
    }

    async fn changes(
        &self,
        kind: RecordKind,
        cursor: Option<&str>,
    ) -> Result<CrmChanges, RemoteError> {
        let columns = self.tracked_columns(kind);
        let select: Vec<&str> = columns.iter().map(String::as_str).collect();
        let collected = self
            .changes_of(self.entity_set(kind), &select, cursor)
            .await?;
        let pk = self.primary_key(kind);
        let changes = collected
            .changes
            .into_iter()
            .filter_map(|c| match c {
                Change::Upserted(e) => {
                    let id = e.value.get(&pk).and_then(Value::as_str)?.to_string();
                    Some(CrmChange::Upserted {
                        kind,
                        id,
                        etag: e.etag.map(|t| t.as_str().to_string()),
                        row: e.value,
                    })
                }
                Change::Deleted { id } => Some(CrmChange::Deleted {
                    kind,
                    id: id.to_string(),
                }),
            })
            .collect();
        Ok(CrmChanges {
            changes,
            cursor: collected.cursor,
            more: collected.more,
            initial: collected.initial,
        })
    }

    async fn solution_link_changes(
        &self,
        cursor: Option<&str>,
    ) -> Result<Option<SolutionLinkChanges>, RemoteError> {
        let s = &self.map.config().columns.solution;
        let link_pk = self.link_primary_key();
        let opportunity_value = format!("_{}_value", s.link_opportunity);
        let solution_value = format!("_{}_value", s.link_solution);
        let collected = self
            .changes_of(
                &s.link_entity_set,
                &[
                    link_pk.as_str(),
                    opportunity_value.as_str(),
                    solution_value.as_str(),
                    "statecode",
                ],
                cursor,
            )
            .await?;
        let rows: Vec<&str> = collected
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Upserted(e) => e.value.get(&solution_value).and_then(Value::as_str),
                Change::Deleted { .. } => None,
            })
            .collect();
        let keys = self.solution_keys_of(&rows).await?;
        let changes = collected
            .changes
            .into_iter()
            .filter_map(|c| match c {
                Change::Upserted(e) => Some(SolutionLinkChange::Linked {
                    link_id: e.value.get(&link_pk).and_then(Value::as_str)?.to_string(),
                    opportunity_id: e
                        .value
                        .get(&opportunity_value)
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    solution_id: e
                        .value
                        .get(&solution_value)
                        .and_then(Value::as_str)
                        .and_then(|row| keys.get(&row.to_ascii_lowercase()))
                        .cloned(),
                    // Dataverse's statecode 0 is Active on every table.
                    active: e.value.get("statecode").and_then(Value::as_i64) == Some(0),
                }),
                Change::Deleted { id } => Some(SolutionLinkChange::Unlinked {
                    link_id: id.to_string(),
                }),
            })
            .collect();
        Ok(Some(SolutionLinkChanges {
            changes,
            cursor: collected.cursor,
            more: collected.more,
            initial: collected.initial,
        }))
    }

    async fn referrals_with_rows(
        &self,
        referral_ids: &[String],
    ) -> Result<HashSet<String>, RemoteError> {
        self.referrals_with_rows_batched(referral_ids).await
    }

    async fn create_new(
        &self,
        records: &[NewRecord],
    ) -> Result<Vec<Result<CrmWritten, RemoteError>>, RemoteError> {
        self.create_new_batched(records).await
    }

    fn is_cursor_expired(&self, error: &RemoteError) -> bool {
        error.kind() == RemoteErrorKind::CursorExpired
    }
}

/// Checks what the sync needs of each table beyond its columns: the alternate keys every
/// upsert goes by (present, covering the right column, index Active) and change tracking on
/// the tables whose changes sync. Columns are [`required_columns`]' job.
pub async fn setup_problems(
    client: &DataverseClient,
    map: &FieldMap,
) -> Result<Vec<CheckProblem>, dataverse_client::Error> {
    let c = &map.config().columns;
    // (table, key column, its config key, whether its changes are tracked, the table's key)
    let needs: [(&str, Option<&str>, &'static str, bool, &'static str); 4] = [
        (
            &c.opportunity.entity,
            Some(&c.opportunity.referral_id),
            "columns.opportunity.referral_id",
            true,
            "columns.opportunity.entity",
        ),
        (
            &c.lead.entity,
            Some(&c.lead.referral_id),
            "columns.lead.referral_id",
            true,
            "columns.lead.entity",
        ),
        (
            &c.solution.entity,
            Some(&c.solution.solution_id),
            "columns.solution.solution_id",
            false,
            "columns.solution.entity",
        ),
        (
            &c.solution.link_entity,
            None,
            "columns.solution.link_entity",
            true,
            "columns.solution.link_entity",
        ),
    ];
    let mut problems = Vec::new();
    for (table, key_column, key_config, tracked, table_config) in needs {
        let Some(setup) = client.table_setup(table).await? else {
            problems.push(CheckProblem {
                config_key: table_config.into(),
                message: format!("table `{table}` does not exist"),
            });
            continue;
        };
        if let Some(column) = key_column {
            match setup.key_covering(&[column]) {
                None => problems.push(CheckProblem {
                    config_key: key_config.into(),
                    message: format!(
                        "`{table}` has no alternate key on `{column}`: every upsert by it fails \
                         (\"The key in the request URI is not valid\")"
                    ),
                }),
                Some(k) if !k.is_active() => problems.push(CheckProblem {
                    config_key: key_config.into(),
                    message: format!(
                        "the alternate key `{}` of `{table}` is {}, not Active: upserts by it fail \
                         until its index is built (reactivate a Failed one)",
                        k.logical_name, k.index_status
                    ),
                }),
                Some(_) => {}
            }
        }
        if tracked && !setup.change_tracking_enabled {
            problems.push(CheckProblem {
                config_key: table_config.into(),
                message: format!(
                    "change tracking is off on `{table}`: its changes never reach Partner Center"
                ),
            });
        }
    }
    Ok(problems)
}

/// A column the field map reads or writes, with the config key that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedColumn {
    /// Table logical name.
    pub table: String,
    /// Column logical name.
    pub column: String,
    /// The config key to change if the name is wrong (`columns.lead.company_name`,
    /// `defaults.opportunity.x`).
    pub config_key: String,
}

/// Every column the field map reads or writes, the `[referral_create]` columns and every
/// configured default, each with its config key, so a typo in any fails the check instead of
/// every record at run time.
pub fn mapped_columns(map: &FieldMap) -> Vec<MappedColumn> {
    let cfg = map.config();
    let c = &cfg.columns;
    let (o, l, a, ct, s) = (&c.opportunity, &c.lead, &c.account, &c.contact, &c.solution);
    let mut out: Vec<MappedColumn> = Vec::new();
    let mut add = |entity: &str, columns: &[(&str, &str)]| {
        for (key, col) in columns {
            out.push(MappedColumn {
                table: entity.to_string(),
                column: col.to_string(),
                config_key: key.to_string(),
            });
        }
    };
    add(&o.entity, &o.keyed_columns());
    add(&o.entity, &[("deal_value_field", &cfg.deal_value_field)]);
    add(&o.entity, &cfg.referral_create.columns());
    add(
        &l.entity,
        &[
            ("columns.lead.subject", &l.subject),
            ("columns.lead.description", &l.description),
            ("columns.lead.deal_value", &l.deal_value),
            ("columns.lead.close_date", &l.close_date),
            ("columns.lead.company_name", &l.company_name),
            ("columns.lead.first_name", &l.first_name),
            ("columns.lead.last_name", &l.last_name),
            ("columns.lead.email", &l.email),
            ("columns.lead.phone", &l.phone),
            ("columns.lead.job_title", &l.job_title),
            ("columns.lead.city", &l.city),
            ("columns.lead.state", &l.state),
            ("columns.lead.postal_code", &l.postal_code),
            ("columns.lead.country", &l.country),
            (
                "columns.lead.sync_with_partner_center",
                &l.sync_with_partner_center,
            ),
            ("columns.lead.referral_id", &l.referral_id),
            ("columns.lead.referral_link", &l.referral_link),
            ("columns.lead.engagement_id", &l.engagement_id),
        ],
    );
    if let Some(audit) = &l.audit {
        add(&l.entity, &[("columns.lead.audit", audit)]);
    }
    add(
        &a.entity,
        &[
            ("columns.account.name", &a.name),
            ("columns.account.address_line1", &a.address_line1),
            ("columns.account.address_line2", &a.address_line2),
            ("columns.account.city", &a.city),
            ("columns.account.state", &a.state),
            ("columns.account.postal_code", &a.postal_code),
            ("country_code_field", &cfg.country_code_field),
        ],
    );
    add(
        &ct.entity,
        &[
            ("columns.contact.first_name", &ct.first_name),
            ("columns.contact.last_name", &ct.last_name),
            ("columns.contact.email", &ct.email),
            ("columns.contact.phone", &ct.phone),
            ("columns.contact.job_title", &ct.job_title),
        ],
    );
    add(
        &s.entity,
        &[
            ("columns.solution.solution_id", &s.solution_id),
            ("columns.solution.name", &s.name),
            ("columns.solution.solution_type", &s.solution_type),
            ("columns.solution.publisher", &s.publisher),
        ],
    );
    add(
        &s.link_entity,
        &[
            ("columns.solution.link_opportunity", &s.link_opportunity),
            ("columns.solution.link_solution", &s.link_solution),
        ],
    );
    // Configured defaults name columns too (a `nav@odata.bind` key is a lookup, not a column).
    let d = &cfg.defaults;
    for (entity, values, section) in [
        (&o.entity, &d.opportunity, "opportunity"),
        (&l.entity, &d.lead, "lead"),
        (&a.entity, &d.account, "account"),
        (&ct.entity, &d.contact, "contact"),
    ] {
        for k in values.keys().filter(|k| !k.contains('@')) {
            out.push(MappedColumn {
                table: entity.to_string(),
                column: k.clone(),
                config_key: format!("defaults.{section}.{k}"),
            });
        }
    }
    out
}

/// The (table, column) pairs the field map needs in the CRM, for [`DataverseClient::check_schema`]:
/// [`mapped_columns`] without their config keys, sorted, each once.
pub fn required_columns(map: &FieldMap) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = mapped_columns(map)
        .into_iter()
        .map(|m| (m.table, m.column))
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_columns_follow_the_map() {
        let map = FieldMap::default();
        let pairs = required_columns(&map);
        assert!(pairs.contains(&("opportunity".into(), "cosell_referralid".into())));
        assert!(pairs.contains(&("opportunity".into(), "estimatedvalue".into())));
        assert!(pairs.contains(&("account".into(), "address1_country".into())));
        assert!(pairs.contains(&("lead".into(), "cosell_referralid".into())));
        assert!(pairs.contains(&(
            "cosell_opportunitysolution".into(),
            "cosell_opportunityid".into()
        )));
        // Every mapped column, not only the co-sell ones.
        assert!(pairs.contains(&("lead".into(), "companyname".into())));
        assert!(pairs.contains(&("contact".into(), "jobtitle".into())));
        assert!(pairs.contains(&("opportunity".into(), "isrevenuesystemcalculated".into())));
        let typo = FieldMap::from_toml("[columns.lead]\ncompany_name = \"companynam\"\n").unwrap();
        assert!(required_columns(&typo).contains(&("lead".into(), "companynam".into())));
    }

    #[test]
    fn a_link_row_id_is_the_same_on_every_attempt() {
        let opp = "6F9619FF-8B86-D011-B42D-00C04FC964FF";
        let sol = "0b6b9c2e-2d56-4a43-9a54-8f1d6a3b0c11";
        assert_eq!(
            solution_link_id(opp, sol),
            solution_link_id(&opp.to_lowercase(), sol)
        );
        assert_ne!(solution_link_id(opp, sol), solution_link_id(sol, opp));
    }
}
