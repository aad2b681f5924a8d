//! Change tracking: an initial full read that ends with a delta link, then delta reads that
//! return new/changed rows and deletions.
//!
//! `$filter`, `$orderby`, `$expand` and `$top` are not allowed with change tracking, so this API
//! takes only `$select`: filtering (for example on a "sync with Partner Center" column) is the
//! caller's job, on the rows it receives.

use cosell_http::{DeltaLink, NextLink, Page, Pager};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::client::DataverseClient;
use crate::error::Error;
use crate::model::{Entity, display_path};
use crate::query::encode_pairs;

/// A persistable change-tracking position (the service's `@odata.deltaLink`, opaque).
///
/// Serializes as a plain string, so a state store can keep it. Tokens expire (the organization's
/// `ExpireChangeTrackingInDays`, 7 days by default in current docs): poll well inside that window,
/// and run a full resync on [`Error::is_change_tracking_expired`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChangeToken(DeltaLink);

impl ChangeToken {
    /// Wraps a delta link as the service sent it.
    pub fn new(delta_link: impl Into<String>) -> Self {
        ChangeToken(DeltaLink::new(delta_link))
    }

    /// The delta link.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl From<DeltaLink> for ChangeToken {
    fn from(link: DeltaLink) -> Self {
        ChangeToken(link)
    }
}

/// One change from a delta read.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    /// A row created or updated since the token (Dataverse does not say which), in full.
    Upserted(Entity<T>),
    /// A row deleted since the token.
    Deleted {
        /// The deleted row's id.
        id: Uuid,
    },
}

/// Options for change tracking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeTrackingOptions {
    max_page_size: Option<u32>,
}

impl ChangeTrackingOptions {
    /// Adds `odata.maxpagesize=n` to the `Prefer` header (pages are followed by
    /// `@odata.nextLink` until the page that carries the delta link).
    pub fn max_page_size(mut self, n: u32) -> Self {
        self.max_page_size = Some(n);
        self
    }

    /// The `Prefer` of the initial read: change tracking asked for, with the page size.
    fn prefer(&self) -> Option<String> {
        Some(match self.max_page_size {
            Some(n) => format!("odata.track-changes,odata.maxpagesize={n}"),
            None => "odata.track-changes".to_string(),
        })
    }

    /// The `Prefer` of a delta-link read: the link is called as given, without
    /// `odata.track-changes` (D-CT), so only the page size, if any.
    fn delta_prefer(&self) -> Option<String> {
        self.max_page_size.map(|n| format!("odata.maxpagesize={n}"))
    }
}

/// All changes of one read, with the token to resume from.
#[derive(Debug, Clone, PartialEq)]
pub struct Changes<T> {
    /// The changes, in the service's order (new/updated first, then deletions).
    pub changes: Vec<Change<T>>,
    /// Where the next delta read starts.
    pub token: ChangeToken,
}

/// A page of a change-tracking read still to be read: the service's `@odata.nextLink`, and
/// whether the read is the initial one (its pages are asked for with `Prefer:
/// odata.track-changes`) or a delta read.
///
/// Kept between pages, it lets a read of many pages be taken one page at a time, and resumed
/// after a restart, instead of being held whole in memory. [`Self::to_cursor`] and
/// [`Self::from_cursor`] give it a plain-string form a state store can keep.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChangePageLink {
    link: String,
    initial: bool,
}

/// What [`ChangePageLink::to_cursor`] puts before the link of an initial read's page, and of a
/// delta read's page. A delta link is an absolute URL, so neither form can be taken for one.
const INITIAL_PAGE: &str = "initial-page ";
const DELTA_PAGE: &str = "delta-page ";

impl ChangePageLink {
    /// A next link as the service sent it; `initial` when it is a page of the initial read.
    pub fn new(link: impl Into<String>, initial: bool) -> Self {
        ChangePageLink {
            link: link.into(),
            initial,
        }
    }

    /// The next link.
    pub fn link(&self) -> &str {
        &self.link
    }

    /// Whether this is a page of the initial read (every current row counts as a change).
    pub fn is_initial_read(&self) -> bool {
        self.initial
    }

    /// A one-string form: the link with a word in front saying which read it continues.
    ///
    /// ```
    /// use dataverse_client::ChangePageLink;
    /// let page = ChangePageLink::new("https://org.example/api/data/v9.2/leads?$skiptoken=x", true);
    /// assert_eq!(ChangePageLink::from_cursor(&page.to_cursor()), Some(page));
    /// // A delta link is not a page link.
    /// assert_eq!(ChangePageLink::from_cursor("https://org.example/api/data/v9.2/leads?$deltatoken=1"), None);
    /// ```
    pub fn to_cursor(&self) -> String {
        let word = if self.initial {
            INITIAL_PAGE
        } else {
            DELTA_PAGE
        };
        format!("{word}{}", self.link)
    }

    /// Reads [`Self::to_cursor`]'s form back; `None` for any other string (a delta link).
    pub fn from_cursor(cursor: &str) -> Option<Self> {
        if let Some(link) = cursor.strip_prefix(INITIAL_PAGE) {
            Some(ChangePageLink::new(link, true))
        } else {
            cursor
                .strip_prefix(DELTA_PAGE)
                .map(|link| ChangePageLink::new(link, false))
        }
    }
}

/// Where a change-tracking read goes on after a page.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeNext {
    /// More pages of the same read: read this one next.
    Page(ChangePageLink),
    /// The read is complete: the next delta read starts from this token.
    Done(ChangeToken),
}

/// One page of a change-tracking read.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangePage<T> {
    /// The page's changes, in the service's order.
    pub changes: Vec<Change<T>>,
    /// Where the read goes on.
    pub next: ChangeNext,
}

/// The pages of a change-tracking read. The last page carries the delta link.
pub struct ChangePager<T> {
    pager: Pager<Change<T>, Error>,
    /// Whether the pages belong to an initial read.
    initial: bool,
}

impl<T> std::fmt::Debug for ChangePager<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangePager").finish_non_exhaustive()
    }
}

impl<T: Send + 'static> ChangePager<T> {
    /// The pages, in order; the last one has `delta_link` set.
    pub fn into_pages(self) -> BoxStream<'static, Result<Page<Change<T>>, Error>> {
        self.pager.into_pages()
    }

    /// Whether the pages belong to an initial read (every current row counts as a change)
    /// rather than a delta read.
    pub fn is_initial_read(&self) -> bool {
        self.initial
    }

    /// Reads only the next page, and says where the read goes on: a caller applying a large
    /// read page by page (and persisting [`ChangeNext`] after each) holds one page at a time.
    /// Fails if a page has neither `@odata.nextLink` nor `@odata.deltaLink`.
    pub async fn next_page(self) -> Result<ChangePage<T>, Error> {
        let initial = self.initial;
        let mut pages = self.into_pages();
        let page = match pages.next().await {
            Some(page) => page?,
            None => return Err(no_delta_link()),
        };
        let next = match (page.next_link, page.delta_link) {
            (Some(link), _) => ChangeNext::Page(ChangePageLink::new(link.as_str(), initial)),
            (None, Some(link)) => ChangeNext::Done(ChangeToken(link)),
            (None, None) => return Err(no_delta_link()),
        };
        Ok(ChangePage {
            changes: page.items,
            next,
        })
    }

    /// Reads every page and returns the changes with the new token. Fails if the last page has
    /// no `@odata.deltaLink` (change tracking not enabled on the table, or not honoured).
    pub async fn collect(self) -> Result<Changes<T>, Error> {
        let mut pages = self.into_pages();
        let mut changes = Vec::new();
        let mut token = None;
        while let Some(page) = pages.next().await {
            let page = page?;
            changes.extend(page.items);
            if let Some(link) = page.delta_link {
                token = Some(ChangeToken(link));
            }
        }
        let token = token.ok_or_else(no_delta_link)?;
        Ok(Changes { changes, token })
    }
}

fn no_delta_link() -> Error {
    Error::decode(
        "change-tracking response",
        "@odata.deltaLink",
        "the last page has no delta link; is change tracking enabled on the table?",
    )
}

/// Classifies one delta row: a `$deletedEntity` tombstone or a full row.
pub(crate) fn change_from_json<T: DeserializeOwned>(
    row: Value,
    what: &str,
    path: &str,
) -> Result<Change<T>, Error> {
    let deleted = match &row {
        Value::Object(map) => {
            map.get("@odata.context")
                .and_then(Value::as_str)
                .is_some_and(|c| c.ends_with("$deletedEntity"))
                || (map.get("reason").and_then(Value::as_str) == Some("deleted")
                    && map.contains_key("id")
                    && map
                        .keys()
                        .all(|k| matches!(k.as_str(), "id" | "reason" | "@odata.context")))
        }
        _ => false,
    };
    if !deleted {
        return Entity::from_json(row, what, path).map(Change::Upserted);
    }
    let id_path = display_path(path, "id");
    let id = row
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::decode(what, &id_path, "a deleted entity needs a string `id`"))?;
    let id = Uuid::parse_str(id)
        .map_err(|e| Error::decode(what, &id_path, format!("`{id}` is not a GUID: {e}")))?;
    Ok(Change::Deleted { id })
}

impl DataverseClient {
    /// Starts change tracking on `entity_set`: reads every row (with `Prefer:
    /// odata.track-changes`) and ends with the token for the next delta read.
    ///
    /// Only `$select` is allowed: Dataverse refuses `$filter`, `$orderby`, `$expand` and `$top`
    /// with change tracking, so filtering (for example on a "sync" flag column) is the caller's
    /// job, on the rows it receives. Select every column the filter needs.
    ///
    /// ```no_run
    /// # async fn demo(client: dataverse_client::DataverseClient) -> Result<(), dataverse_client::Error> {
    /// use dataverse_client::{Change, ChangeTrackingOptions};
    /// let first = client
    ///     .track_changes::<serde_json::Value>("opportunities", &["name", "statecode"], &Default::default())
    ///     .collect()
    ///     .await?;
    /// // persist first.token (it serializes as a string), later:
    /// let delta = client
    ///     .changes_since::<serde_json::Value>(&first.token, &ChangeTrackingOptions::default())
    ///     .collect()
    ///     .await;
    /// match delta {
    ///     Ok(d) => for c in d.changes {
    ///         match c {
    ///             Change::Upserted(row) => println!("{}", row.value),
    ///             Change::Deleted { id } => println!("deleted {id}"),
    ///         }
    ///     },
    ///     Err(e) if e.is_change_tracking_expired() => { /* full resync */ }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn track_changes<T: DeserializeOwned + Send + 'static>(
        &self,
        entity_set: &str,
        select: &[&str],
        options: &ChangeTrackingOptions,
    ) -> ChangePager<T> {
        let query = if select.is_empty() {
            None
        } else {
            Some(encode_pairs(&[("$select", select.join(","))]))
        };
        let url = self.set_url(entity_set, query.as_deref());
        self.change_pager(url, options.prefer(), entity_set, true)
    }

    /// Reads the changes since `token` (new/updated rows in full, and deletions), calling the
    /// delta link as given and without `Prefer: odata.track-changes` (D-CT).
    pub fn changes_since<T: DeserializeOwned + Send + 'static>(
        &self,
        token: &ChangeToken,
        options: &ChangeTrackingOptions,
    ) -> ChangePager<T> {
        let url = self.resolve_link(token.as_str());
        self.change_pager(url, options.delta_prefer(), "delta", false)
    }

    /// Goes on with a change-tracking read from one of its pages (from
    /// [`ChangePager::next_page`], perhaps persisted and read back after a restart), asking
    /// for it as the read it belongs to asked for its first page.
    ///
    /// ```no_run
    /// # async fn demo(client: dataverse_client::DataverseClient) -> Result<(), dataverse_client::Error> {
    /// use dataverse_client::{ChangeNext, ChangeTrackingOptions};
    /// let options = ChangeTrackingOptions::default().max_page_size(500);
    /// let mut page = client
    ///     .track_changes::<serde_json::Value>("leads", &["leadid"], &options)
    ///     .next_page()
    ///     .await?;
    /// let token = loop {
    ///     println!("{} changes", page.changes.len());
    ///     match page.next {
    ///         ChangeNext::Page(link) => {
    ///             page = client.changes_from(&link, &options).next_page().await?;
    ///         }
    ///         ChangeNext::Done(token) => break token,
    ///     }
    /// };
    /// # let _ = token; Ok(()) }
    /// ```
    pub fn changes_from<T: DeserializeOwned + Send + 'static>(
        &self,
        page: &ChangePageLink,
        options: &ChangeTrackingOptions,
    ) -> ChangePager<T> {
        let url = self.resolve_link(page.link());
        let (prefer, what) = if page.initial {
            (options.prefer(), "change-tracking page")
        } else {
            (options.delta_prefer(), "delta")
        };
        self.change_pager(url, prefer, what, page.initial)
    }

    fn change_pager<T: DeserializeOwned + Send + 'static>(
        &self,
        first_url: Result<cosell_http::url::Url, Error>,
        prefer: Option<String>,
        what: &str,
        initial: bool,
    ) -> ChangePager<T> {
        let what = what.to_string();
        let client = self.clone();
        let first = {
            let client = client.clone();
            let prefer = prefer.clone();
            let what = what.clone();
            async move {
                let url = first_url?;
                client
                    .fetch_change_page(&url, prefer.as_deref(), &what)
                    .await
            }
        };
        let pager = Pager::new(
            first,
            move |link: NextLink| {
                let client = client.clone();
                let prefer = prefer.clone();
                let what = what.clone();
                async move {
                    let url = client.resolve_link(link.as_str())?;
                    client
                        .fetch_change_page(&url, prefer.as_deref(), &what)
                        .await
                }
            },
            |link: &NextLink| {
                Error::decode(
                    "page",
                    "@odata.nextLink",
                    format!("the service repeated the next link {link}"),
                )
            },
        );
        ChangePager { pager, initial }
    }

    #[tracing::instrument(skip_all, fields(entity_set = %what))]
    async fn fetch_change_page<T: DeserializeOwned>(
        &self,
        url: &cosell_http::url::Url,
        prefer: Option<&str>,
        what: &str,
    ) -> Result<Page<Change<T>>, Error> {
        let raw = self.fetch_raw_page(url, prefer, what).await?;
        let items = raw
            .value
            .into_iter()
            .enumerate()
            .map(|(i, row)| change_from_json(row, what, &format!("value[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            items,
            next_link: raw.next_link,
            delta_link: raw.delta_link,
            count: raw.count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_rows() {
        let c: Change<Value> = change_from_json(
            json!({"@odata.context":"x/$metadata#accounts/$deletedEntity","id":"2e451703-c686-e711-80e5-00155db19e6d","reason":"deleted"}),
            "accounts",
            "value[0]",
        )
        .unwrap();
        assert_eq!(
            c,
            Change::Deleted {
                id: Uuid::parse_str("2e451703-c686-e711-80e5-00155db19e6d").unwrap()
            }
        );
        let c: Change<Value> = change_from_json(
            json!({"id":"2e451703-c686-e711-80e5-00155db19e6d","reason":"deleted"}),
            "accounts",
            "value[0]",
        )
        .unwrap();
        assert!(matches!(c, Change::Deleted { .. }));
        // A row that merely has `id` and `reason` columns among others is a row.
        let c: Change<Value> = change_from_json(
            json!({"@odata.etag":"W/\"1\"","id":"x","reason":"deleted","name":"n"}),
            "accounts",
            "value[0]",
        )
        .unwrap();
        assert!(matches!(c, Change::Upserted(_)));
        let err = change_from_json::<Value>(
            json!({"@odata.context":"$deletedEntity","id":"nope"}),
            "accounts",
            "value[4]",
        )
        .unwrap_err();
        let Error::Decode(d) = err else { panic!() };
        assert_eq!(d.path(), "value[4].id");
    }

    #[test]
    fn token_serializes_as_a_string() {
        let t = ChangeToken::new("https://x/api/data/v9.2/accounts?$deltatoken=1%212");
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(s, "\"https://x/api/data/v9.2/accounts?$deltatoken=1%212\"");
        assert_eq!(serde_json::from_str::<ChangeToken>(&s).unwrap(), t);
    }
}
