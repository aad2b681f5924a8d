//! OData paging as a `futures::Stream`.
//!
//! Both services answer collections as `{"value":[…],"@odata.nextLink":"…"}`; Dataverse's change
//! tracking ends with `@odata.deltaLink`. Links are opaque: they are followed verbatim (only the
//! scheme and authority may be pinned to the configured endpoint, see [`NextLink::rebased_on`]),
//! and both link types serialize so a state store can checkpoint and resume.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use url::Url;

/// An opaque link to the next page of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NextLink(String);

/// An opaque link that returns the changes since the page it came with (Dataverse change
/// tracking). Persist it to resume.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeltaLink(String);

macro_rules! link_impls {
    ($t:ident) => {
        impl $t {
            /// Wraps a link as the service sent it.
            pub fn new(link: impl Into<String>) -> Self {
                $t(link.into())
            }

            /// The link as the service sent it.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The link with scheme, host and port replaced by those of `endpoint`, keeping the
            /// path and query exactly. Partner Center emits `http://` links (and sandboxes,
            /// proxies and sovereign clouds differ in host), while the token must only ever be
            /// sent to the configured endpoint.
            pub fn rebased_on(&self, endpoint: &Url) -> Result<Url, url::ParseError> {
                let mut url = match Url::parse(&self.0) {
                    Ok(u) => u,
                    // A relative link resolves against the endpoint.
                    Err(url::ParseError::RelativeUrlWithoutBase) => endpoint.join(&self.0)?,
                    Err(e) => return Err(e),
                };
                // These setters only fail for special cases (cannot-be-a-base URLs) that a parsed
                // http(s) URL is not; ignore is safe.
                let _ = url.set_scheme(endpoint.scheme());
                let _ = url.set_host(endpoint.host_str());
                let _ = url.set_port(endpoint.port());
                Ok(url)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
link_impls!(NextLink);
link_impls!(DeltaLink);

/// One page of an OData collection, as it comes over the wire.
#[derive(Debug, Clone, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct ODataPage<T> {
    /// The items.
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    /// The next page, if any.
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<NextLink>,
    /// The delta link, on the last page of a change-tracking query.
    #[serde(rename = "@odata.deltaLink", default)]
    pub delta_link: Option<DeltaLink>,
    /// `@odata.count`, when the query asked for it.
    #[serde(rename = "@odata.count", default)]
    pub count: Option<u64>,
}

/// One page as the pager hands it out.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// The link to the next page, if any.
    pub next_link: Option<NextLink>,
    /// The delta link, on the last page of a change-tracking query.
    pub delta_link: Option<DeltaLink>,
    /// The total count, when the service sent one.
    pub count: Option<u64>,
}

impl<T> From<ODataPage<T>> for Page<T> {
    fn from(p: ODataPage<T>) -> Self {
        Page {
            items: p.value,
            next_link: p.next_link,
            delta_link: p.delta_link,
            count: p.count,
        }
    }
}

/// A boxed future of one page.
pub type PageFuture<T, E> = Pin<Box<dyn Future<Output = Result<Page<T>, E>> + Send>>;

type FetchNext<T, E> = Arc<dyn Fn(NextLink) -> PageFuture<T, E> + Send + Sync>;

/// A lazily fetched, link-following collection.
///
/// Nothing is requested until the stream is polled; each page is requested only when the previous
/// one has been consumed. A link seen twice ends the stream with an error instead of looping.
///
/// ```
/// use cosell_http::{NextLink, Page, Pager};
/// use futures::TryStreamExt;
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// # rt.block_on(async {
/// let first = async { Ok::<_, String>(Page { items: vec![1, 2], next_link: Some(NextLink::new("p2")), delta_link: None, count: None }) };
/// let pager = Pager::new(first, |link: NextLink| async move {
///     assert_eq!(link.as_str(), "p2");
///     Ok(Page { items: vec![3], next_link: None, delta_link: None, count: None })
/// }, |link: &NextLink| format!("link repeated: {link}"));
/// let all: Vec<i32> = pager.into_stream().try_collect().await.unwrap();
/// assert_eq!(all, [1, 2, 3]);
/// # });
/// ```
pub struct Pager<T, E> {
    first: PageFuture<T, E>,
    next: FetchNext<T, E>,
    on_loop: Arc<dyn Fn(&NextLink) -> E + Send + Sync>,
}

impl<T, E> fmt::Debug for Pager<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pager").finish_non_exhaustive()
    }
}

enum Cursor<T, E> {
    First(PageFuture<T, E>),
    Next(NextLink),
    Done,
}

impl<T: Send + 'static, E: Send + 'static> Pager<T, E> {
    /// A pager whose first page comes from `first` and later pages from `next(link)`;
    /// `on_loop` builds the error returned when a link repeats.
    pub fn new<F1, FN, FutN, L>(first: F1, next: FN, on_loop: L) -> Self
    where
        F1: Future<Output = Result<Page<T>, E>> + Send + 'static,
        FN: Fn(NextLink) -> FutN + Send + Sync + 'static,
        FutN: Future<Output = Result<Page<T>, E>> + Send + 'static,
        L: Fn(&NextLink) -> E + Send + Sync + 'static,
    {
        Pager {
            first: Box::pin(first),
            next: Arc::new(move |link| Box::pin(next(link))),
            on_loop: Arc::new(on_loop),
        }
    }

    /// The pages, in order.
    pub fn into_pages(self) -> BoxStream<'static, Result<Page<T>, E>> {
        let next = self.next;
        let on_loop = self.on_loop;
        let seen = std::collections::HashSet::<NextLink>::new();
        stream::try_unfold(
            (Cursor::First(self.first), seen),
            move |(cursor, mut seen)| {
                let next = next.clone();
                let on_loop = on_loop.clone();
                async move {
                    let page = match cursor {
                        Cursor::Done => return Ok(None),
                        Cursor::First(fut) => fut.await?,
                        Cursor::Next(link) => {
                            if !seen.insert(link.clone()) {
                                return Err(on_loop(&link));
                            }
                            next(link).await?
                        }
                    };
                    let cursor = match &page.next_link {
                        Some(link) => Cursor::Next(link.clone()),
                        None => Cursor::Done,
                    };
                    Ok(Some((page, (cursor, seen))))
                }
            },
        )
        .boxed()
    }

    /// The items of every page, in order.
    pub fn into_stream(self) -> BoxStream<'static, Result<T, E>> {
        self.into_pages()
            .map_ok(|page| stream::iter(page.items.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_keeps_path_and_query() {
        let endpoint = Url::parse("https://127.0.0.1:8443/v1.0/engagements/").unwrap();
        let link =
            NextLink::new("http://api.partner.microsoft.com/v1.0/referrals?$skiptoken=abc%3D");
        assert_eq!(
            link.rebased_on(&endpoint).unwrap().as_str(),
            "https://127.0.0.1:8443/v1.0/referrals?$skiptoken=abc%3D"
        );
        let rel = NextLink::new("referrals?$skiptoken=x");
        assert_eq!(
            rel.rebased_on(&endpoint).unwrap().as_str(),
            "https://127.0.0.1:8443/v1.0/engagements/referrals?$skiptoken=x"
        );
    }

    #[test]
    fn odata_page_decodes_links_and_count() {
        let p: ODataPage<serde_json::Value> = serde_json::from_str(
            r#"{"@odata.context":"x","@odata.count":3,"value":[1,2],"@odata.nextLink":"n"}"#,
        )
        .unwrap();
        let p: Page<_> = p.into();
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.count, Some(3));
        assert_eq!(p.next_link, Some(NextLink::new("n")));
        assert_eq!(p.delta_link, None);
    }

    #[tokio::test]
    async fn repeated_link_ends_with_error() {
        let pager = Pager::new(
            async {
                Ok::<_, String>(Page {
                    items: vec![1],
                    next_link: Some(NextLink::new("same")),
                    delta_link: None,
                    count: None,
                })
            },
            |_link| async {
                Ok(Page {
                    items: vec![2],
                    next_link: Some(NextLink::new("same")),
                    delta_link: None,
                    count: None,
                })
            },
            |l| format!("loop at {l}"),
        );
        let items: Vec<Result<i32, String>> = pager.into_stream().collect().await;
        assert_eq!(items, vec![Ok(1), Ok(2), Err("loop at same".to_string())]);
    }
}
