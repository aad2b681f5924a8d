//! Row operations: create, retrieve, update, delete, upsert by key, and collection queries.

use bytes::Bytes;
use cosell_http::http::header::ETAG;
use cosell_http::http::{HeaderMap, Method, Response, StatusCode};
use cosell_http::{DeltaLink, NextLink, Page, Pager};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::client::{
    DataverseClient, IF_MATCH, IF_NONE_MATCH, ODATA_ENTITY_ID, PREFER, header_value,
};
use crate::error::Error;
use crate::model::{ETag, Entity, Key, KeyValue};
use crate::query::{Query, encode_pairs};

/// Options for [`DataverseClient::retrieve`].
///
/// ```
/// let opts = dataverse_client::RetrieveOptions::default()
///     .select(["name", "revenue"])
///     .expand("primarycontactid($select=fullname)");
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetrieveOptions {
    select: Vec<String>,
    expand: Vec<String>,
    annotations: Option<String>,
}

impl RetrieveOptions {
    /// `$select`: the columns to return.
    pub fn select<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.select.extend(columns.into_iter().map(Into::into));
        self
    }

    /// Adds a `$expand` item, written as given.
    pub fn expand(mut self, item: impl Into<String>) -> Self {
        self.expand.push(item.into());
        self
    }

    /// `Prefer: odata.include-annotations="…"`.
    pub fn include_annotations(mut self, annotations: impl Into<String>) -> Self {
        self.annotations = Some(annotations.into());
        self
    }

    fn query(&self) -> String {
        select_expand(&self.select, &self.expand)
    }
}

fn select_expand(select: &[String], expand: &[String]) -> String {
    let mut pairs = Vec::new();
    if !select.is_empty() {
        pairs.push(("$select", select.join(",")));
    }
    if !expand.is_empty() {
        pairs.push(("$expand", expand.join(",")));
    }
    encode_pairs(&pairs)
}

/// Options for [`DataverseClient::update`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateOptions {
    if_match: Option<ETag>,
}

impl UpdateOptions {
    /// Update only if the row is still at `etag` (else [`Error::PreconditionFailed`]). Without
    /// it the update sends `If-Match: *`, so it never creates a row.
    pub fn if_match(mut self, etag: ETag) -> Self {
        self.if_match = Some(etag);
        self
    }
}

/// What an upsert may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UpsertMode {
    /// Create or update (no precondition header).
    #[default]
    CreateOrUpdate,
    /// Update only (`If-Match: *`): a missing row answers 404.
    UpdateOnly,
    /// Update only if the row is at this ETag (`If-Match: <etag>`): stale answers 412.
    UpdateIfMatch(ETag),
    /// Create only (`If-None-Match: *`): an existing row answers 412
    /// ([`Error::PreconditionFailed`]).
    CreateOnly,
}

/// Options for [`DataverseClient::upsert`].
///
/// ```
/// use dataverse_client::{UpsertMode, UpsertOptions};
/// let opts = UpsertOptions::default().mode(UpsertMode::CreateOnly).return_representation(["accountid"]);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpsertOptions {
    mode: UpsertMode,
    representation: Option<Vec<String>>,
}

impl UpsertOptions {
    /// What the upsert may do (default create or update).
    pub fn mode(mut self, mode: UpsertMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sends `Prefer: return=representation` with this `$select` (keep it to the primary key:
    /// it costs an extra retrieve). Only then can the outcome tell created (201) from updated
    /// (200).
    pub fn return_representation<I, S>(mut self, select: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.representation = Some(select.into_iter().map(Into::into).collect());
        self
    }
}

/// Whether an upsert created or updated the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// 201 Created (only known with `return=representation`).
    Created,
    /// 200 OK (only known with `return=representation`).
    Updated,
    /// 204 No Content: Dataverse does not say which.
    Unknown,
}

/// The result of an upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct Upserted {
    /// Created, updated, or unknown.
    pub outcome: UpsertOutcome,
    /// `OData-EntityId` when sent (on 204 it echoes the key URL, not a GUID).
    pub entity_id_url: Option<String>,
    /// The new row version (`ETag` header or `@odata.etag`).
    pub etag: Option<ETag>,
    /// The returned row, with `return=representation`.
    pub representation: Option<Map<String, Value>>,
}

impl Upserted {
    /// The row's id: the GUID in `OData-EntityId`, or the `primary_key` column of the
    /// representation.
    pub fn id(&self, primary_key: &str) -> Option<Uuid> {
        self.representation
            .as_ref()
            .and_then(|r| r.get(primary_key))
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .or_else(|| self.entity_id_url.as_deref().and_then(id_from_entity_url))
    }
}

/// The GUID in an entity URL such as `…/accounts(7eb682f1-…)`; `None` for key URLs.
///
/// ```
/// let id = dataverse_client::id_from_entity_url(
///     "https://contoso.crm.dynamics.com/api/data/v9.2/accounts(7eb682f1-ca75-e511-80d4-00155d2a68d1)");
/// assert_eq!(id.unwrap().to_string(), "7eb682f1-ca75-e511-80d4-00155d2a68d1");
/// assert!(dataverse_client::id_from_entity_url("/accounts(accountnumber='1')").is_none());
/// ```
pub fn id_from_entity_url(url: &str) -> Option<Uuid> {
    let open = url.rfind('(')?;
    let rest = &url[open + 1..];
    let close = rest.find(')')?;
    let inner = &rest[..close];
    let inner = inner.rsplit_once('=').map_or(inner, |(_, v)| v);
    Uuid::parse_str(inner.trim()).ok()
}

fn json_bytes<B: Serialize + ?Sized>(body: &B) -> Result<Bytes, Error> {
    cosell_http::json_body(body, "request body").map_err(Error::Decode)
}

/// Whether a body value holds the same value as an alternate-key part.
fn same_key_value(body: &Value, key: &KeyValue) -> bool {
    match (key, body) {
        (KeyValue::String(k), Value::String(b)) => k == b,
        (KeyValue::Int(k), Value::Number(b)) => b.as_i64() == Some(*k),
        (KeyValue::Guid(k), Value::String(b)) => Uuid::parse_str(b).is_ok_and(|b| b == *k),
        (KeyValue::Decimal(k), Value::Number(b)) => {
            k.parse::<f64>().ok() == b.as_f64() && b.as_f64().is_some()
        }
        (KeyValue::Decimal(k), Value::String(b)) => k == b,
        _ => false,
    }
}

/// The body of an upsert: an alternate key's columns are taken out of the body, as Microsoft's
/// upsert guidance asks (the URL carries them; on create the service would take body values
/// over the URL's, on update it drops them). A body column that contradicts the key is refused
/// before anything is sent.
fn upsert_body<B: Serialize + ?Sized>(key: &Key, body: &B) -> Result<Bytes, Error> {
    let Key::Alternate(parts) = key else {
        return json_bytes(body);
    };
    let mut value = serde_json::to_value(body)
        .map_err(|e| Error::invalid(format!("the upsert body does not serialize: {e}")))?;
    if let Value::Object(map) = &mut value {
        for (column, key_value) in parts {
            if let Some(v) = map.get(column) {
                if !same_key_value(v, key_value) {
                    return Err(Error::invalid(format!(
                        "the upsert body sets alternate-key column `{column}` to {v}, but the key in the URL is {}; change a key by its own request, not in an upsert by that key",
                        Key::Alternate(vec![(column.clone(), key_value.clone())])
                    )));
                }
                map.remove(column);
            }
        }
    }
    json_bytes(&value)
}

fn etag_header(resp: &Response<Bytes>) -> Option<ETag> {
    resp.headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(ETag::new)
}

fn entity_id_header(resp: &Response<Bytes>) -> Option<String> {
    // Lossy rather than `to_str`: a key URL may echo non-ASCII key values unencoded.
    resp.headers()
        .get(ODATA_ENTITY_ID)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

pub(crate) fn decode_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Error> {
    cosell_http::decode_json(body, what).map_err(Error::Decode)
}

fn decode_entity<T: DeserializeOwned>(
    resp: &Response<Bytes>,
    what: &str,
) -> Result<Entity<T>, Error> {
    let value: Value = decode_body(resp.body(), what)?;
    let mut entity = Entity::from_json(value, what, "")?;
    if entity.etag.is_none() {
        entity.etag = etag_header(resp);
    }
    Ok(entity)
}

impl DataverseClient {
    /// Creates a row and returns its id (from `OData-EntityId`). Not retried on an unknown
    /// outcome: a POST is not idempotent.
    ///
    /// ```no_run
    /// # async fn demo(client: dataverse_client::DataverseClient) -> Result<(), dataverse_client::Error> {
    /// use dataverse_client::CustomerRef;
    /// let account = uuid::Uuid::parse_str("7eb682f1-ca75-e511-80d4-00155d2a68d1").unwrap();
    /// let mut row = serde_json::Map::new();
    /// row.insert("name".into(), "Contoso – Azure migration".into());
    /// let (k, v) = CustomerRef::Account(account).bind("customerid");
    /// row.insert(k, v);
    /// let id = client.create("opportunities", &row).await?;
    /// # let _ = id; Ok(()) }
    /// ```
    #[tracing::instrument(skip_all, fields(entity_set = %entity_set))]
    pub async fn create<B: Serialize + ?Sized>(
        &self,
        entity_set: &str,
        body: &B,
    ) -> Result<Uuid, Error> {
        let url = self.set_url(entity_set, None)?;
        let resp = self
            .execute(
                Method::POST,
                &url,
                HeaderMap::new(),
                Some(json_bytes(body)?),
                None,
            )
            .await?;
        let header = entity_id_header(&resp).ok_or_else(|| {
            Error::decode(
                entity_set,
                "OData-EntityId",
                format!(
                    "the {} response has no OData-EntityId header",
                    resp.status()
                ),
            )
        })?;
        id_from_entity_url(&header).ok_or_else(|| {
            Error::decode(
                entity_set,
                "OData-EntityId",
                format!("`{header}` does not end with a row id"),
            )
        })
    }

    /// Creates a row with `Prefer: return=representation` and returns it (201), with the
    /// `select`ed columns.
    #[tracing::instrument(skip_all, fields(entity_set = %entity_set))]
    pub async fn create_returning<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        entity_set: &str,
        body: &B,
        select: &[&str],
    ) -> Result<Entity<T>, Error> {
        let select: Vec<String> = select.iter().map(|s| s.to_string()).collect();
        let url = self.set_url(entity_set, Some(&select_expand(&select, &[])))?;
        let mut headers = HeaderMap::new();
        headers.insert(PREFER, header_value("return=representation")?);
        let resp = self
            .execute(Method::POST, &url, headers, Some(json_bytes(body)?), None)
            .await?;
        decode_entity(&resp, entity_set)
    }

    /// Retrieves one row. A missing row is an error with
    /// [`is_not_found`](Error::is_not_found); see [`try_retrieve`](Self::try_retrieve).
    #[tracing::instrument(skip_all, fields(entity_set = %entity_set))]
    pub async fn retrieve<T: DeserializeOwned>(
        &self,
        entity_set: &str,
        key: &Key,
        options: &RetrieveOptions,
    ) -> Result<Entity<T>, Error> {
        let url = self.row_url(entity_set, key, Some(&options.query()))?;
        let mut headers = HeaderMap::new();
        if let Some(a) = &options.annotations {
            headers.insert(
                PREFER,
                header_value(&format!("odata.include-annotations=\"{a}\""))?,
            );
        }
        let resp = self.execute(Method::GET, &url, headers, None, None).await?;
        decode_entity(&resp, entity_set)
    }

    /// Retrieves one row, `None` when it does not exist (404).
    pub async fn try_retrieve<T: DeserializeOwned>(
        &self,
        entity_set: &str,
        key: &Key,
        options: &RetrieveOptions,
    ) -> Result<Option<Entity<T>>, Error> {
        match self.retrieve(entity_set, key, options).await {
            Ok(e) => Ok(Some(e)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Updates a row with the columns in `body` (send only what changed). Sends
    /// `If-Match: *` (or the given ETag), so it never creates a row: a missing row is 404, a
    /// stale ETag [`Error::PreconditionFailed`].
    #[tracing::instrument(skip_all, fields(entity_set = %entity_set))]
    pub async fn update<B: Serialize + ?Sized>(
        &self,
        entity_set: &str,
        key: &Key,
        body: &B,
        options: &UpdateOptions,
    ) -> Result<(), Error> {
        let url = self.row_url(entity_set, key, None)?;
        let mut headers = HeaderMap::new();
        let etag = options.if_match.as_ref().map_or("*", ETag::as_str);
        headers.insert(IF_MATCH, header_value(etag)?);
        self.execute(
            Method::PATCH,
            &url,
            headers,
            Some(json_bytes(body)?),
            Some(true),
        )
        .await?;
        Ok(())
    }

    /// Deletes a row, optionally only if it is still at `if_match`.
    #[tracing::instrument(skip_all, fields(entity_set = %entity_set))]
    pub async fn delete(
        &self,
        entity_set: &str,
        key: &Key,
        if_match: Option<&ETag>,
    ) -> Result<(), Error> {
        let url = self.row_url(entity_set, key, None)?;
        let mut headers = HeaderMap::new();
        if let Some(etag) = if_match {
            headers.insert(IF_MATCH, header_value(etag.as_str())?);
        }
        self.execute(Method::DELETE, &url, headers, None, None)
            .await?;
        Ok(())
    }

    /// Upserts by key: `PATCH /{set}({key})`. An alternate key's columns are taken out of
    /// `body` before it is sent (Microsoft's upsert guidance: Dataverse ignores them on update
    /// and lets them win on create); a body value that contradicts the key is an
    /// [`Error::InvalidRequest`] and nothing is sent.
    ///
    /// Key values are escaped (`'` doubled) and percent-encoded; Dataverse itself rejects key
    /// values containing `/ \ < > * % & : ? + #`.
    ///
    /// ```no_run
    /// # async fn demo(client: dataverse_client::DataverseClient) -> Result<(), dataverse_client::Error> {
    /// use dataverse_client::{Key, UpsertOptions, UpsertOutcome};
    /// let body = serde_json::json!({"name": "Contoso Ltd", "address1_postalcode": "98052"});
    /// let r = client
    ///     .upsert("accounts", &Key::alternate("accountnumber", "PC-000123"), &body,
    ///         &UpsertOptions::default().return_representation(["accountid"]))
    ///     .await?;
    /// assert_ne!(r.outcome, UpsertOutcome::Unknown);
    /// println!("{:?}", r.id("accountid"));
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(skip_all, fields(entity_set = %entity_set))]
    pub async fn upsert<B: Serialize + ?Sized>(
        &self,
        entity_set: &str,
        key: &Key,
        body: &B,
        options: &UpsertOptions,
    ) -> Result<Upserted, Error> {
        let query = options
            .representation
            .as_ref()
            .map(|s| select_expand(s, &[]));
        let url = self.row_url(entity_set, key, query.as_deref())?;
        let mut headers = HeaderMap::new();
        match &options.mode {
            UpsertMode::CreateOrUpdate => {}
            UpsertMode::UpdateOnly => {
                headers.insert(IF_MATCH, header_value("*")?);
            }
            UpsertMode::UpdateIfMatch(etag) => {
                headers.insert(IF_MATCH, header_value(etag.as_str())?);
            }
            UpsertMode::CreateOnly => {
                headers.insert(IF_NONE_MATCH, header_value("*")?);
            }
        }
        if options.representation.is_some() {
            headers.insert(PREFER, header_value("return=representation")?);
        }
        let resp = self
            .execute(
                Method::PATCH,
                &url,
                headers,
                Some(upsert_body(key, body)?),
                Some(true),
            )
            .await?;
        let outcome = match resp.status() {
            StatusCode::CREATED => UpsertOutcome::Created,
            StatusCode::OK => UpsertOutcome::Updated,
            _ => UpsertOutcome::Unknown,
        };
        let entity_id_url = entity_id_header(&resp);
        let mut etag = etag_header(&resp);
        let representation = if resp.body().is_empty() {
            None
        } else {
            let e: Entity<Map<String, Value>> = decode_entity(&resp, entity_set)?;
            if e.etag.is_some() {
                etag = e.etag;
            }
            Some(e.value)
        };
        Ok(Upserted {
            outcome,
            entity_id_url,
            etag,
            representation,
        })
    }

    /// Queries an entity set. Nothing is sent until the stream is polled; later pages follow
    /// `@odata.nextLink` verbatim (pinned to the configured host) with the same `Prefer`.
    ///
    /// ```no_run
    /// # async fn demo(client: dataverse_client::DataverseClient) -> Result<(), dataverse_client::Error> {
    /// use futures::TryStreamExt;
    /// use dataverse_client::{Filter, Query};
    /// #[derive(serde::Deserialize)]
    /// struct Account { accountid: uuid::Uuid, name: String }
    /// let q = Query::new()
    ///     .select(["name"])
    ///     .filter(Filter::eq("name", "Contoso").and(Filter::eq("address1_postalcode", "98052")))
    ///     .max_page_size(500);
    /// let rows: Vec<_> = client.query::<Account>("accounts", &q).into_stream().try_collect().await?;
    /// # let _ = rows; Ok(()) }
    /// ```
    pub fn query<T: DeserializeOwned + Send + 'static>(
        &self,
        entity_set: &str,
        query: &Query,
    ) -> Pager<Entity<T>, Error> {
        let first_url = self.set_url(entity_set, Some(&query.to_query_string()));
        self.pager(first_url, query.prefer(), entity_set)
    }

    /// A pager over a collection URL, decoding rows as `Entity<T>`.
    pub(crate) fn pager<T: DeserializeOwned + Send + 'static>(
        &self,
        first_url: Result<cosell_http::url::Url, Error>,
        prefer: Option<String>,
        what: &str,
    ) -> Pager<Entity<T>, Error> {
        let what = what.to_string();
        let client = self.clone();
        let first = {
            let client = client.clone();
            let prefer = prefer.clone();
            let what = what.clone();
            async move {
                let url = first_url?;
                client.fetch_page(&url, prefer.as_deref(), &what).await
            }
        };
        Pager::new(
            first,
            move |link: NextLink| {
                let client = client.clone();
                let prefer = prefer.clone();
                let what = what.clone();
                async move {
                    let url = client.resolve_link(link.as_str())?;
                    client.fetch_page(&url, prefer.as_deref(), &what).await
                }
            },
            |link: &NextLink| {
                Error::decode(
                    "page",
                    "@odata.nextLink",
                    format!("the service repeated the next link {link}"),
                )
            },
        )
    }

    #[tracing::instrument(skip_all, fields(entity_set = %what))]
    pub(crate) async fn fetch_page<T: DeserializeOwned>(
        &self,
        url: &cosell_http::url::Url,
        prefer: Option<&str>,
        what: &str,
    ) -> Result<Page<Entity<T>>, Error> {
        let raw = self.fetch_raw_page(url, prefer, what).await?;
        let items = raw
            .value
            .into_iter()
            .enumerate()
            .map(|(i, row)| Entity::from_json(row, what, &format!("value[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            items,
            next_link: raw.next_link,
            delta_link: raw.delta_link,
            count: raw.count,
        })
    }

    pub(crate) async fn fetch_raw_page(
        &self,
        url: &cosell_http::url::Url,
        prefer: Option<&str>,
        what: &str,
    ) -> Result<RawPage, Error> {
        let mut headers = HeaderMap::new();
        if let Some(p) = prefer {
            headers.insert(PREFER, header_value(p)?);
        }
        let resp = self.execute(Method::GET, url, headers, None, None).await?;
        decode_body(resp.body(), what)
    }
}

/// One collection page before its rows are decoded.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct RawPage {
    #[serde(default)]
    pub(crate) value: Vec<Value>,
    #[serde(rename = "@odata.nextLink", default)]
    pub(crate) next_link: Option<NextLink>,
    #[serde(rename = "@odata.deltaLink", default)]
    pub(crate) delta_link: Option<DeltaLink>,
    #[serde(rename = "@odata.count", default)]
    pub(crate) count: Option<u64>,
}
