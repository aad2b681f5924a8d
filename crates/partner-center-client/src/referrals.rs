//! Referral operations: create, get, list (OData, paged), related referrals, JSON Patch updates.

use cosell_http::bytes::Bytes;
use cosell_http::http::header::{HeaderName, HeaderValue, IF_MATCH};
use cosell_http::http::{Method, StatusCode};
use cosell_http::url::Url;
use cosell_http::{DecodeError, NextLink, Page, Pager, SendOptions, decode_json, json_body};
use futures::stream::BoxStream;

use crate::client::{PartnerCenterClient, non_empty, request};
use crate::error::{Error, InvalidRequest};
use crate::models::{
    PatchOperation, Referral, ReferralCollection, ReferralStatus, ReferralSubstatus,
    WRITABLE_PATHS, check_transition, requested_status,
};

const PREFER: HeaderName = HeaderName::from_static("prefer");
const RETURN_REPRESENTATION: HeaderValue = HeaderValue::from_static("return=representation");

/// Quotes `value` as an OData string literal: `'…'`, with `'` doubled.
///
/// ```
/// assert_eq!(partner_center_client::odata_string("O'Brien"), "'O''Brien'");
/// ```
pub fn odata_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// A referral decoded from a response must carry its id.
fn with_id(referral: Referral) -> Result<Referral, Error> {
    match referral.id.as_deref() {
        Some(id) if !id.is_empty() => Ok(referral),
        _ => Err(DecodeError::new("referral", "id", "missing field `id`").into()),
    }
}

impl PartnerCenterClient {
    fn referrals_url(&self, id: Option<&str>) -> Result<Url, Error> {
        let endpoint = &self.inner.referrals_endpoint;
        match id {
            None => Self::url(endpoint, &["referrals"]),
            Some(id) => Self::url(endpoint, &["referrals", id]),
        }
    }

    /// Creates a referral (`POST /referrals`) and returns it as the service stored it.
    ///
    /// Not idempotent: Partner Center has no idempotency key and no DELETE, so a 500, a timeout
    /// or a lost response is **not** retried (check [`Error::may_have_been_sent`] and look the
    /// referral up by `externalReferenceId` first); 429 and 503, which mean "not processed", are.
    ///
    /// ```no_run
    /// # async fn demo(client: partner_center_client::PartnerCenterClient) -> Result<(), partner_center_client::Error> {
    /// use partner_center_client::models::*;
    /// let created = client.create_referral(&Referral {
    ///     name: Some("Contoso - Azure migration".into()),
    ///     external_reference_id: Some("OPP-00042".into()),
    ///     r#type: Some(ReferralType::Independent),
    ///     ..Default::default()
    /// }).await?;
    /// println!("created {:?} with eTag {:?}", created.id, created.e_tag);
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(skip_all, fields(external_reference_id = referral.external_reference_id.as_deref().unwrap_or("")))]
    pub async fn create_referral(&self, referral: &Referral) -> Result<Referral, Error> {
        let url = self.referrals_url(None)?;
        let body = json_body(referral, "referral")?;
        let req = request(Method::POST, &url, Some(body))?;
        let options = SendOptions::default().idempotent(false);
        let created: Referral = self
            .inner
            .referrals
            .send_json(req, &options, "referral")
            .await?;
        with_id(created)
    }

    /// Reads one referral (`GET /referrals/{id}`).
    ///
    /// ```no_run
    /// # async fn demo(client: partner_center_client::PartnerCenterClient) -> Result<(), partner_center_client::Error> {
    /// match client.get_referral("4111fffc-f9ee-4d53-bba6-569135228642").await {
    ///     Ok(r) => println!("{:?}/{:?}", r.status, r.substatus),
    ///     Err(e) if e.is_not_found() => println!("gone"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(skip_all, fields(referral_id = %id))]
    pub async fn get_referral(&self, id: &str) -> Result<Referral, Error> {
        let id = non_empty(id, "referral id")?;
        let url = self.referrals_url(Some(id))?;
        let req = request(Method::GET, &url, None)?;
        let referral: Referral = self
            .inner
            .referrals
            .send_json(req, &SendOptions::default(), "referral")
            .await?;
        with_id(referral)
    }

    /// Lists referrals (`GET /referrals` with OData options), following `@odata.nextLink`.
    ///
    /// ```no_run
    /// # async fn demo(client: partner_center_client::PartnerCenterClient) -> Result<(), partner_center_client::Error> {
    /// use futures::TryStreamExt;
    /// let mut incoming = client
    ///     .list_referrals()
    ///     .filter("direction eq 'Incoming' and substatus eq 'Pending'")
    ///     .order_by("updatedDateTime desc")
    ///     .top(100)
    ///     .into_stream();
    /// while let Some(referral) = incoming.try_next().await? {
    ///     println!("{:?}", referral.id);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn list_referrals(&self) -> ListReferrals {
        ListReferrals {
            client: self.clone(),
            filter: None,
            order_by: None,
            top: None,
            skip: None,
            select: None,
            count: None,
            resume: None,
        }
    }

    /// The referrals of one engagement (yours, Microsoft's, other partners'):
    /// `GET /referrals?$filter=engagementId eq '<id>'`. There is no separate endpoint.
    pub fn related_referrals(&self, engagement_id: &str) -> ListReferrals {
        self.list_referrals()
            .filter(format!("engagementId eq {}", odata_string(engagement_id)))
    }

    /// Starts a JSON Patch update of a referral (`PATCH /referrals/{id}`).
    ///
    /// ```no_run
    /// # async fn demo(client: partner_center_client::PartnerCenterClient, current: partner_center_client::models::Referral) -> Result<(), partner_center_client::Error> {
    /// use partner_center_client::models::PatchOperation;
    /// let updated = client
    ///     .update_referral("4111fffc-f9ee-4d53-bba6-569135228642", vec![PatchOperation::set_notes("Workshop booked")])
    ///     .if_match(current.e_tag.clone().unwrap_or_default())
    ///     .return_representation()
    ///     .send()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn update_referral(&self, id: &str, ops: Vec<PatchOperation>) -> UpdateReferral {
        UpdateReferral {
            client: self.clone(),
            id: id.to_string(),
            ops,
            if_match: None,
            representation: false,
            expect_current: None,
        }
    }

    /// Moves `current` to a new status/substatus, checked against the transition table before
    /// anything is sent, under `If-Match` with the referral's eTag (when it has one), asking for
    /// the updated referral back. Add more operations with [`UpdateReferral::op`].
    ///
    /// ```no_run
    /// # async fn demo(client: partner_center_client::PartnerCenterClient, current: partner_center_client::models::Referral) -> Result<(), partner_center_client::Error> {
    /// use partner_center_client::models::{ReferralStatus, ReferralSubstatus};
    /// let won = client
    ///     .transition_referral(&current, ReferralStatus::Closed, ReferralSubstatus::Won)
    ///     .send()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn transition_referral(
        &self,
        current: &Referral,
        status: ReferralStatus,
        substatus: ReferralSubstatus,
    ) -> UpdateReferral {
        let (from_status, from_substatus) = current.status_pair();
        let mut update = self
            .update_referral(
                current.id.as_deref().unwrap_or_default(),
                vec![
                    PatchOperation::set_status(&status),
                    PatchOperation::set_substatus(&substatus),
                ],
            )
            .expect_current(from_status, from_substatus)
            .return_representation();
        if let Some(etag) = &current.e_tag {
            update = update.if_match(etag.clone());
        }
        update
    }
}

/// A `GET /referrals` query. Nothing is sent until the stream is polled.
#[derive(Debug, Clone)]
#[must_use = "a query does nothing until turned into a stream"]
pub struct ListReferrals {
    client: PartnerCenterClient,
    filter: Option<String>,
    order_by: Option<String>,
    top: Option<u32>,
    skip: Option<u32>,
    select: Option<String>,
    count: Option<bool>,
    resume: Option<NextLink>,
}

impl ListReferrals {
    /// `$filter`, e.g. `status eq 'Active' and direction eq 'Outgoing'`. Quote string values with
    /// [`odata_string`]. Several calls are joined with `and`.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        let filter = filter.into();
        self.filter = Some(match self.filter.take() {
            None => filter,
            Some(prev) => format!("({prev}) and ({filter})"),
        });
        self
    }

    /// `$orderby`, e.g. `updatedDateTime desc`.
    pub fn order_by(mut self, order_by: impl Into<String>) -> Self {
        self.order_by = Some(order_by.into());
        self
    }

    /// `$top`: at most this many items.
    pub fn top(mut self, n: u32) -> Self {
        self.top = Some(n);
        self
    }

    /// `$skip`.
    pub fn skip(mut self, n: u32) -> Self {
        self.skip = Some(n);
        self
    }

    /// `$select`, e.g. `["id", "status", "customerProfile"]`.
    pub fn select<I, S>(mut self, fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let fields: Vec<String> = fields.into_iter().map(|s| s.as_ref().to_string()).collect();
        self.select = Some(fields.join(","));
        self
    }

    /// `$count`: ask for `@odata.count` on the pages.
    pub fn count(mut self, count: bool) -> Self {
        self.count = Some(count);
        self
    }

    /// Resumes from a saved next link instead of starting the query (the other options are then
    /// ignored: the link carries them).
    pub fn resume_from(mut self, link: NextLink) -> Self {
        self.resume = Some(link);
        self
    }

    /// The URL of the first page.
    pub fn url(&self) -> Result<Url, Error> {
        let endpoint = &self.client.inner.referrals_endpoint;
        if let Some(link) = &self.resume {
            return link
                .rebased_on(endpoint)
                .map_err(|e| InvalidRequest::new(format!("next link {link}: {e}")).into());
        }
        let mut url = PartnerCenterClient::url(endpoint, &["referrals"])?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(f) = &self.filter {
                q.append_pair("$filter", f);
            }
            if let Some(o) = &self.order_by {
                q.append_pair("$orderby", o);
            }
            if let Some(s) = &self.select {
                q.append_pair("$select", s);
            }
            if let Some(n) = self.top {
                q.append_pair("$top", &n.to_string());
            }
            if let Some(n) = self.skip {
                q.append_pair("$skip", &n.to_string());
            }
            if let Some(c) = self.count {
                q.append_pair("$count", if c { "true" } else { "false" });
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        Ok(url)
    }

    /// The pager: pages fetched lazily, one after the other.
    pub fn into_pager(self) -> Pager<Referral, Error> {
        let client = self.client.clone();
        let first_url = self.url();
        let first_client = client.clone();
        let first = async move { fetch_page(&first_client, first_url?).await };
        let next = move |link: NextLink| {
            let client = client.clone();
            async move {
                let url = link
                    .rebased_on(&client.inner.referrals_endpoint)
                    .map_err(|e| DecodeError::new("referrals", "@odata.nextLink", e.to_string()))?;
                fetch_page(&client, url).await
            }
        };
        Pager::new(first, next, |link: &NextLink| {
            DecodeError::new(
                "referrals",
                "@odata.nextLink",
                format!("the service repeated the next link {link}"),
            )
            .into()
        })
    }

    /// The pages, in order (each with its `next_link`, which can be saved and resumed from).
    pub fn into_pages(self) -> BoxStream<'static, Result<Page<Referral>, Error>> {
        self.into_pager().into_pages()
    }

    /// The referrals of every page, in order.
    pub fn into_stream(self) -> BoxStream<'static, Result<Referral, Error>> {
        self.into_pager().into_stream()
    }
}

async fn fetch_page(client: &PartnerCenterClient, url: Url) -> Result<Page<Referral>, Error> {
    let req = request(Method::GET, &url, None)?;
    let page: ReferralCollection = client
        .inner
        .referrals
        .send_json(req, &SendOptions::default(), "referrals")
        .await?;
    Ok(Page {
        items: page.value,
        next_link: page.next_link.map(NextLink::new),
        delta_link: None,
        count: page.odata_count,
    })
}

/// A `PATCH /referrals/{id}` request.
#[derive(Debug, Clone)]
#[must_use = "an update does nothing until `.send()` is awaited"]
pub struct UpdateReferral {
    client: PartnerCenterClient,
    id: String,
    ops: Vec<PatchOperation>,
    if_match: Option<String>,
    representation: bool,
    expect_current: Option<(ReferralStatus, ReferralSubstatus)>,
}

impl UpdateReferral {
    /// Adds one more operation.
    pub fn op(mut self, op: PatchOperation) -> Self {
        self.ops.push(op);
        self
    }

    /// Sends `If-Match` with this eTag, verbatim (quotes included, as the referral's `eTag`
    /// holds it). A stale eTag fails with [`Error::PreconditionFailed`]. With it, the update is
    /// safe to retry.
    pub fn if_match(mut self, etag: impl Into<String>) -> Self {
        self.if_match = Some(etag.into());
        self
    }

    /// Sends `Prefer: return=representation` so the service answers with the updated referral.
    pub fn return_representation(mut self) -> Self {
        self.representation = true;
        self
    }

    /// Declares the referral's current status, so a status change in the patch is checked
    /// against the transition table before anything is sent.
    pub fn expect_current(mut self, status: ReferralStatus, substatus: ReferralSubstatus) -> Self {
        self.expect_current = Some((status, substatus));
        self
    }

    /// The operations to send.
    pub fn operations(&self) -> &[PatchOperation] {
        &self.ops
    }

    /// Checks the request without sending it: a non-empty id and patch, every path one Partner
    /// Center lets a partner write ([`WRITABLE_PATHS`], or a deal-registration path), no `null`
    /// for the non-nullable `dealValue`, and a status change allowed from the declared current
    /// status.
    pub fn validate(&self) -> Result<(), Error> {
        non_empty(&self.id, "referral id")?;
        if self.ops.is_empty() {
            return Err(InvalidRequest::new("the patch has no operations").into());
        }
        for op in &self.ops {
            if !op.is_documented_path() {
                return Err(InvalidRequest::new(format!(
                    "path `{}` is not writable in Partner Center (the writable paths are {})",
                    op.path,
                    WRITABLE_PATHS.join(", ")
                ))
                .into());
            }
            if op.path == "/details/dealValue" && !op.value.is_number() && !op.value.is_string() {
                return Err(InvalidRequest::new(format!(
                    "path `/details/dealValue` has the value `{}`; Partner Center's dealValue is a non-nullable decimal",
                    op.value
                ))
                .into());
            }
        }
        if let (Some(current), Some((status, substatus))) =
            (&self.expect_current, requested_status(&self.ops))
        {
            let to = (
                status.unwrap_or_else(|| current.0.clone()),
                substatus.unwrap_or_else(|| current.1.clone()),
            );
            check_transition(current.clone(), to)?;
        } else if let Some(current) = &self.expect_current
            && current.1.is_terminal()
        {
            // No status change, but a terminal referral takes no updates at all.
            check_transition(current.clone(), current.clone())?;
        }
        Ok(())
    }

    /// Sends the patch. `Ok(None)` for 204 No Content; `Ok(Some(referral))` when the service sent
    /// the updated referral (200, with [`return_representation`](Self::return_representation)).
    #[tracing::instrument(skip_all, fields(referral_id = %self.id, ops = self.ops.len()))]
    pub async fn send(self) -> Result<Option<Referral>, Error> {
        self.validate()?;
        let id = non_empty(&self.id, "referral id")?;
        let url = self.client.referrals_url(Some(id))?;
        let body: Bytes = json_body(&self.ops, "patch")?;
        let mut req = request(Method::PATCH, &url, Some(body))?;
        if let Some(etag) = &self.if_match {
            let value = HeaderValue::from_str(etag).map_err(|_| {
                InvalidRequest::new("the eTag has characters not allowed in a header")
            })?;
            req.headers_mut().insert(IF_MATCH, value);
        }
        if self.representation {
            req.headers_mut().insert(PREFER, RETURN_REPRESENTATION);
        }
        // Under If-Match a repeat cannot apply twice (it would fail with 412); without it an
        // `add …/-` could append twice, so only then is an unknown outcome not retried.
        let options = SendOptions::default().idempotent(self.if_match.is_some());
        let resp = self.client.inner.referrals.send(req, &options).await?;
        if resp.status() == StatusCode::NO_CONTENT
            || resp.body().iter().all(u8::is_ascii_whitespace)
        {
            return Ok(None);
        }
        let referral: Referral = decode_json(resp.body(), "referral")?;
        Ok(Some(referral))
    }
}
