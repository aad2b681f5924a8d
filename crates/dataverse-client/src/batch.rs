//! `$batch`: the multipart/mixed request writer and response parser.
//!
//! Both are pure functions over buffered bytes. The writer uses CRLF everywhere (Dataverse
//! rejects bare LF); the parser accepts CRLF or LF, takes boundaries from `Content-Type` with
//! `mime`, reads each embedded HTTP response head with `httparse`, recurses once into change-set
//! responses, and reports malformed input as [`BatchError`] rather than panicking.

use std::fmt::Write as _;

use bytes::Bytes;
use cosell_http::ServiceError;
use cosell_http::http::header::CONTENT_TYPE;
use cosell_http::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::client::{IF_MATCH, IF_NONE_MATCH, ODATA_ENTITY_ID, PREFER};
use crate::error::{BatchError, Error};
use crate::model::{ETag, Key};
use crate::ops::id_from_entity_url;

/// Dataverse's documented ceiling of requests in one `$batch`.
pub const MAX_BATCH_REQUESTS: usize = 1000;

/// Most headers one embedded part may carry before the parser refuses it.
const MAX_PART_HEADERS: usize = 64;

/// One request inside a `$batch`.
///
/// `path` is relative to the Web API URL (`accounts`, `accounts(<id>)`,
/// `accounts(accountnumber='A1')?$select=name`), or a `$n` reference to an earlier request of the
/// same change set (`$1`, `$1/lastname`).
///
/// ```
/// use dataverse_client::BatchRequest;
/// let r = BatchRequest::post("accounts").json(&serde_json::json!({"name": "Fabrikam"})).unwrap();
/// # let _ = r;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    method: Method,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<String>,
    content_id: Option<String>,
}

impl BatchRequest {
    /// A request with `method` to `path`.
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        BatchRequest {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: None,
            content_id: None,
        }
    }

    /// `GET path` (not allowed inside a change set).
    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    /// `POST path`.
    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    /// `PATCH path`.
    pub fn patch(path: impl Into<String>) -> Self {
        Self::new(Method::PATCH, path)
    }

    /// `DELETE path`.
    pub fn delete(path: impl Into<String>) -> Self {
        Self::new(Method::DELETE, path)
    }

    /// An update of one row (`PATCH {set}({key})` with `If-Match: *` or the ETag).
    pub fn update<B: Serialize + ?Sized>(
        entity_set: &str,
        key: &Key,
        body: &B,
        if_match: Option<&ETag>,
    ) -> Result<Self, Error> {
        Self::patch(format!("{entity_set}({key})"))
            .json(body)?
            .header(IF_MATCH.as_str(), if_match.map_or("*", ETag::as_str))
    }

    /// An upsert by key (`PATCH {set}({key})`, no precondition).
    pub fn upsert<B: Serialize + ?Sized>(
        entity_set: &str,
        key: &Key,
        body: &B,
    ) -> Result<Self, Error> {
        Self::patch(format!("{entity_set}({key})")).json(body)
    }

    /// A create-only upsert by key (`If-None-Match: *`).
    pub fn create_only<B: Serialize + ?Sized>(
        entity_set: &str,
        key: &Key,
        body: &B,
    ) -> Result<Self, Error> {
        Self::upsert(entity_set, key, body)?.header(IF_NONE_MATCH.as_str(), "*")
    }

    /// A JSON body (sent with `Content-Type: application/json; type=entry`).
    pub fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Result<Self, Error> {
        let text = serde_json::to_string(body).map_err(|e| {
            Error::decode("batch request body", ".", format!("cannot serialize: {e}"))
        })?;
        self.body = Some(text);
        Ok(self)
    }

    /// Adds a header to the embedded request (`If-Match`, `Prefer`, …).
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, Error> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::invalid(format!("`{name}` is not a valid header name")))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| Error::invalid(format!("header `{name}` has an invalid value")))?;
        self.headers.push((n, v));
        Ok(self)
    }

    /// `Prefer: return=representation` on this request.
    pub fn return_representation(self) -> Result<Self, Error> {
        self.header(PREFER.as_str(), "return=representation")
    }

    /// The `Content-ID` inside a change set (default: the request's 1-based position in its
    /// change set). Refer to the created row later in the same change set as `$<id>`.
    pub fn content_id(mut self, id: impl Into<String>) -> Self {
        self.content_id = Some(id.into());
        self
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path as given.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// A top-level item of a batch: one request, or an atomic change set.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchPart {
    /// One request, executed on its own.
    Request(BatchRequest),
    /// Requests executed atomically (all or none); no GET allowed.
    ChangeSet(Vec<BatchRequest>),
}

impl BatchPart {
    /// How many requests this part holds.
    pub fn len(&self) -> usize {
        match self {
            BatchPart::Request(_) => 1,
            BatchPart::ChangeSet(r) => r.len(),
        }
    }

    /// Whether this part holds no request (an empty change set).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch of requests for [`DataverseClient::execute_batch`](crate::DataverseClient::execute_batch).
///
/// ```
/// use dataverse_client::{Batch, BatchRequest};
/// let batch = Batch::new()
///     .change_set(vec![
///         BatchRequest::post("accounts").json(&serde_json::json!({"name": "Fabrikam"})).unwrap(),
///         BatchRequest::post("opportunities")
///             .json(&serde_json::json!({"name": "Fabrikam deal", "customerid_account@odata.bind": "$1"}))
///             .unwrap(),
///     ])
///     .request(BatchRequest::get("opportunities?$select=name&$top=1"))
///     .continue_on_error(true);
/// assert_eq!(batch.len(), 3);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub(crate) parts: Vec<BatchPart>,
    pub(crate) continue_on_error: bool,
    pub(crate) max_requests: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            parts: Vec::new(),
            continue_on_error: false,
            max_requests: MAX_BATCH_REQUESTS,
        }
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one request.
    pub fn request(mut self, request: BatchRequest) -> Self {
        self.parts.push(BatchPart::Request(request));
        self
    }

    /// Adds an atomic change set.
    pub fn change_set(mut self, requests: Vec<BatchRequest>) -> Self {
        self.parts.push(BatchPart::ChangeSet(requests));
        self
    }

    /// Adds a part.
    pub fn part(mut self, part: BatchPart) -> Self {
        self.parts.push(part);
        self
    }

    /// `Prefer: odata.continue-on-error`: later requests run even when one fails.
    pub fn continue_on_error(mut self, yes: bool) -> Self {
        self.continue_on_error = yes;
        self
    }

    /// Requests per HTTP `$batch` (default and maximum [`MAX_BATCH_REQUESTS`]); bigger inputs are
    /// split between parts. Some environments refuse more than a few hundred parts, and
    /// Microsoft suggests starting small (10) and adding parallelism instead.
    pub fn max_requests_per_batch(mut self, n: usize) -> Self {
        self.max_requests = n.clamp(1, MAX_BATCH_REQUESTS);
        self
    }

    /// Total requests.
    pub fn len(&self) -> usize {
        self.parts.iter().map(BatchPart::len).sum()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parts.
    pub fn parts(&self) -> &[BatchPart] {
        &self.parts
    }

    /// Splits the parts into HTTP batches of at most `max_requests_per_batch` requests, never
    /// splitting a change set.
    pub(crate) fn chunks(&self) -> Result<Vec<&[BatchPart]>, Error> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut count = 0;
        for (i, part) in self.parts.iter().enumerate() {
            let n = part.len();
            if n == 0 {
                return Err(Error::invalid("a change set needs at least one request"));
            }
            if n > self.max_requests {
                return Err(Error::invalid(format!(
                    "a change set of {n} requests exceeds the {} allowed in one batch",
                    self.max_requests
                )));
            }
            if let BatchPart::ChangeSet(reqs) = part
                && reqs.iter().any(|r| r.method == Method::GET)
            {
                return Err(Error::invalid("GET is not allowed inside a change set"));
            }
            if count + n > self.max_requests {
                out.push(&self.parts[start..i]);
                start = i;
                count = 0;
            }
            count += n;
        }
        if start < self.parts.len() {
            out.push(&self.parts[start..]);
        }
        Ok(out)
    }
}

/// The `Content-Type` of a batch written with `batch_id`.
///
/// ```
/// assert_eq!(dataverse_client::batch_content_type("a1"), r#"multipart/mixed; boundary="batch_a1""#);
/// ```
pub fn batch_content_type(batch_id: &str) -> String {
    format!("multipart/mixed; boundary=\"batch_{batch_id}\"")
}

/// Writes a `$batch` body: boundary `batch_{batch_id}`, change set `k` (1-based) bounded by
/// `changeset_{batch_id}_{k}`, request lines made server-relative with `base_path`
/// (`/api/data/v9.2/`), CRLF line endings throughout.
///
/// ```
/// use dataverse_client::{BatchPart, BatchRequest, write_batch};
/// let body = write_batch(&[BatchPart::Request(BatchRequest::get("WhoAmI"))], "x", "/api/data/v9.2/");
/// assert_eq!(body, "--batch_x\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nGET /api/data/v9.2/WhoAmI HTTP/1.1\r\n\r\n\r\n--batch_x--\r\n");
/// ```
pub fn write_batch(parts: &[BatchPart], batch_id: &str, base_path: &str) -> String {
    let mut out = String::new();
    let mut change_sets = 0;
    for part in parts {
        let _ = write!(out, "--batch_{batch_id}\r\n");
        match part {
            BatchPart::Request(r) => {
                out.push_str("Content-Type: application/http\r\n");
                out.push_str("Content-Transfer-Encoding: binary\r\n\r\n");
                write_request(&mut out, r, base_path);
                out.push_str("\r\n");
            }
            BatchPart::ChangeSet(reqs) => {
                change_sets += 1;
                let cs = format!("changeset_{batch_id}_{change_sets}");
                let _ = write!(
                    out,
                    "Content-Type: multipart/mixed; boundary=\"{cs}\"\r\n\r\n"
                );
                for (i, r) in reqs.iter().enumerate() {
                    let _ = write!(out, "--{cs}\r\n");
                    out.push_str("Content-Type: application/http\r\n");
                    out.push_str("Content-Transfer-Encoding: binary\r\n");
                    let id = r.content_id.clone().unwrap_or_else(|| (i + 1).to_string());
                    let _ = write!(out, "Content-ID: {}\r\n\r\n", one_line(&id));
                    write_request(&mut out, r, base_path);
                    out.push_str("\r\n");
                }
                let _ = write!(out, "--{cs}--\r\n\r\n");
            }
        }
    }
    let _ = write!(out, "--batch_{batch_id}--\r\n");
    out
}

fn write_request(out: &mut String, r: &BatchRequest, base_path: &str) {
    let target = if r.path.starts_with('$') || r.path.contains("://") {
        encode_target(&r.path)
    } else {
        format!(
            "{base_path}{}",
            encode_target(r.path.trim_start_matches('/'))
        )
    };
    let _ = write!(out, "{} {target} HTTP/1.1\r\n", r.method);
    let has_ct = r.headers.iter().any(|(n, _)| *n == CONTENT_TYPE);
    if r.body.is_some() && !has_ct {
        out.push_str("Content-Type: application/json; type=entry\r\n");
    }
    for (n, v) in &r.headers {
        // HeaderValue cannot hold CR or LF; lossy text keeps a non-UTF-8 value on one line.
        let _ = write!(
            out,
            "{}: {}\r\n",
            canonical(n.as_str()),
            String::from_utf8_lossy(v.as_bytes())
        );
    }
    out.push_str("\r\n");
    if let Some(body) = &r.body {
        out.push_str(body);
    }
}

/// `if-match` → `If-Match` (cosmetic; header names are case-insensitive).
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Percent-encodes what a request line cannot carry: controls, space, DEL and non-ASCII
/// (as UTF-8). Everything else is written as given.
fn encode_target(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c.is_ascii() && c > ' ' && c != '\x7f' {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn one_line(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// One response inside a `$batch` response.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResponse {
    /// The embedded status.
    pub status: StatusCode,
    /// The embedded headers.
    pub headers: HeaderMap,
    /// The embedded body.
    pub body: Bytes,
    /// `Content-ID` (echoed inside change sets).
    pub content_id: Option<String>,
    /// The 0-based index of the change set this response belongs to within its HTTP batch, or
    /// `None` for a request outside change sets.
    pub change_set: Option<usize>,
}

impl BatchResponse {
    /// Whether the embedded status is 2xx.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The error for a non-success response, parsed like any Dataverse error.
    pub fn error(&self) -> Option<Error> {
        (!self.is_success()).then(|| {
            Error::from_service(ServiceError::from_response(
                self.status,
                &self.headers,
                &self.body,
            ))
        })
    }

    /// Decodes the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        cosell_http::decode_json(&self.body, "batch response").map_err(Error::Decode)
    }

    /// `OData-EntityId` (or `Location`), for creates.
    pub fn entity_id_url(&self) -> Option<&str> {
        self.headers
            .get(ODATA_ENTITY_ID)
            .or_else(|| self.headers.get(cosell_http::http::header::LOCATION))
            .and_then(|v| v.to_str().ok())
    }

    /// The created row's id, from `OData-EntityId`.
    pub fn entity_id(&self) -> Option<Uuid> {
        self.entity_id_url().and_then(id_from_entity_url)
    }
}

/// Parses a `$batch` response body given its `Content-Type` (which must be `multipart/*` with a
/// `boundary`). Responses come back in request order; change-set responses are flattened with
/// their [`change_set`](BatchResponse::change_set) index.
///
/// ```
/// let body = "--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\n\r\n\r\n--b--\r\n";
/// let parts = dataverse_client::parse_batch_response("multipart/mixed; boundary=b", body.as_bytes()).unwrap();
/// assert_eq!(parts[0].status, 204);
/// assert!(dataverse_client::parse_batch_response("application/json", b"{}").is_err());
/// ```
pub fn parse_batch_response(
    content_type: &str,
    body: &[u8],
) -> Result<Vec<BatchResponse>, BatchError> {
    let boundary = multipart_boundary(content_type)?;
    let mut out = Vec::new();
    let mut change_sets = 0;
    for part in split_multipart(body, &boundary)? {
        let (headers, content) = parse_part_headers(part)?;
        match part_boundary(&headers)? {
            Some(inner) => {
                for sub in split_multipart(content, &inner)? {
                    let (sub_headers, sub_content) = parse_part_headers(sub)?;
                    if part_boundary(&sub_headers)?.is_some() {
                        return Err(BatchError::new("change sets cannot be nested"));
                    }
                    let mut r = parse_http_response(sub_content)?;
                    r.content_id = content_id(&sub_headers).or(r.content_id);
                    r.change_set = Some(change_sets);
                    out.push(r);
                }
                change_sets += 1;
            }
            None => {
                let mut r = parse_http_response(content)?;
                r.content_id = content_id(&headers).or(r.content_id);
                out.push(r);
            }
        }
    }
    Ok(out)
}

fn multipart_boundary(content_type: &str) -> Result<String, BatchError> {
    let mime: mime::Mime = content_type
        .parse()
        .map_err(|e| BatchError::new(format!("Content-Type `{content_type}`: {e}")))?;
    if mime.type_() != mime::MULTIPART {
        return Err(BatchError::new(format!(
            "expected a multipart Content-Type, got `{content_type}`"
        )));
    }
    let boundary = mime
        .get_param(mime::BOUNDARY)
        .map(|b| b.as_str().to_string())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| BatchError::new(format!("no boundary in `{content_type}`")))?;
    Ok(boundary)
}

fn part_boundary(headers: &HeaderMap) -> Result<Option<String>, BatchError> {
    match headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        Some(ct) if ct.trim().to_ascii_lowercase().starts_with("multipart/") => {
            multipart_boundary(ct).map(Some)
        }
        _ => Ok(None),
    }
}

fn content_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("content-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits a multipart body into part contents (headers + body), ignoring preamble and
/// epilogue. A delimiter is `--boundary` at the start of a line followed only by optional
/// whitespace (or `--` for the last one).
fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, BatchError> {
    let delim = format!("--{boundary}").into_bytes();
    // (start of delimiter line, start of the following line, closing?)
    let mut marks: Vec<(usize, usize, bool)> = Vec::new();
    let mut from = 0;
    let mut closed = false;
    while from < body.len() {
        let Some(off) = find(&body[from..], &delim) else {
            break;
        };
        let pos = from + off;
        from = pos + delim.len();
        if pos > 0 && body[pos - 1] != b'\n' {
            continue;
        }
        let mut after = pos + delim.len();
        let closing = body.get(after..after + 2) == Some(b"--".as_slice());
        if closing {
            after += 2;
        }
        let line_end = body[after..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |p| after + p + 1);
        let padding_ok = body[after..line_end]
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
        if !padding_ok {
            // `--boundary` was only a prefix of some other line.
            continue;
        }
        marks.push((pos, line_end, closing));
        if closing {
            closed = true;
            break;
        }
        from = line_end;
    }
    if marks.is_empty() {
        return Err(BatchError::new(format!(
            "no `--{boundary}` delimiter in the body"
        )));
    }
    if !closed {
        return Err(BatchError::new(format!(
            "the body ends without the closing `--{boundary}--` delimiter"
        )));
    }
    let mut parts = Vec::new();
    for pair in marks.windows(2) {
        let (start, end) = (pair[0].1, pair[1].0);
        if start > end {
            return Err(BatchError::new("overlapping multipart delimiters"));
        }
        let mut content = &body[start..end];
        // The line break before a delimiter belongs to the delimiter.
        if let Some(c) = content.strip_suffix(b"\n") {
            content = c.strip_suffix(b"\r").unwrap_or(c);
        }
        parts.push(content);
    }
    Ok(parts)
}

fn to_header_map(headers: &[httparse::Header<'_>]) -> Result<HeaderMap, BatchError> {
    let mut map = HeaderMap::new();
    for h in headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| BatchError::new(format!("invalid header name `{}`", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| BatchError::new(format!("invalid value for header `{}`", h.name)))?;
        map.append(name, value);
    }
    Ok(map)
}

/// The MIME headers of a part and the rest of it.
fn parse_part_headers(part: &[u8]) -> Result<(HeaderMap, &[u8]), BatchError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
    match httparse::parse_headers(part, &mut storage) {
        Ok(httparse::Status::Complete((offset, headers))) => {
            Ok((to_header_map(headers)?, &part[offset..]))
        }
        Ok(httparse::Status::Partial) => Err(BatchError::new(
            "a part's MIME headers are not followed by a blank line",
        )),
        Err(e) => Err(BatchError::new(format!("a part's MIME headers: {e}"))),
    }
}

/// Parses an embedded `HTTP/1.1 <status>` response: status line, headers, body.
fn parse_http_response(content: &[u8]) -> Result<BatchResponse, BatchError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    match resp.parse(content) {
        Ok(httparse::Status::Complete(n)) => {
            build_response(&resp, Bytes::copy_from_slice(&content[n..]))
        }
        Ok(httparse::Status::Partial) => {
            // Tolerate a head whose closing blank line went with the delimiter's line break.
            let mut padded = content.to_vec();
            padded.extend_from_slice(b"\r\n\r\n");
            let mut storage2 = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
            let mut resp2 = httparse::Response::new(&mut storage2);
            match resp2.parse(&padded) {
                Ok(httparse::Status::Complete(_)) => build_response(&resp2, Bytes::new()),
                _ => Err(BatchError::new(
                    "an embedded HTTP response head is incomplete",
                )),
            }
        }
        Err(e) => Err(BatchError::new(format!(
            "an embedded HTTP response head: {e}"
        ))),
    }
}

fn build_response(
    resp: &httparse::Response<'_, '_>,
    body: Bytes,
) -> Result<BatchResponse, BatchError> {
    let code = resp
        .code
        .ok_or_else(|| BatchError::new("an embedded HTTP response has no status"))?;
    let status = StatusCode::from_u16(code)
        .map_err(|_| BatchError::new(format!("invalid embedded status {code}")))?;
    let headers = to_header_map(resp.headers)?;
    let content_id = content_id(&headers);
    Ok(BatchResponse {
        status,
        headers,
        body,
        content_id,
        change_set: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use proptest::prelude::*;
    use serde_json::json;

    fn crlf(s: &str) -> String {
        s.replace("\r\n", "\n").replace('\n', "\r\n")
    }

    #[test]
    fn writes_the_documented_layout() {
        let parts = vec![
            BatchPart::ChangeSet(vec![
                BatchRequest::post("accounts")
                    .json(&json!({"name": "Fabrikam"}))
                    .unwrap(),
                BatchRequest::post("opportunities")
                    .json(&json!({"name": "Fabrikam deal", "customerid_account@odata.bind": "$1"}))
                    .unwrap(),
            ]),
            BatchPart::Request(BatchRequest::get("opportunities?$select=name&$top=1")),
        ];
        let body = write_batch(&parts, "a1", "/api/data/v9.2/");
        let expected = crlf(
            r#"--batch_a1
Content-Type: multipart/mixed; boundary="changeset_a1_1"

--changeset_a1_1
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

POST /api/data/v9.2/accounts HTTP/1.1
Content-Type: application/json; type=entry

{"name":"Fabrikam"}
--changeset_a1_1
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 2

POST /api/data/v9.2/opportunities HTTP/1.1
Content-Type: application/json; type=entry

{"customerid_account@odata.bind":"$1","name":"Fabrikam deal"}
--changeset_a1_1--

--batch_a1
Content-Type: application/http
Content-Transfer-Encoding: binary

GET /api/data/v9.2/opportunities?$select=name&$top=1 HTTP/1.1


--batch_a1--
"#,
        );
        assert_eq!(body, expected);
        assert!(!body.replace("\r\n", "").contains('\n'), "bare LF");
    }

    #[test]
    fn writes_headers_references_and_encodes_targets() {
        let key = Key::alternate("accountnumber", "O'Neil Ü 1");
        let parts = vec![BatchPart::ChangeSet(vec![
            BatchRequest::update("accounts", &key, &json!({"name": "x"}), None)
                .unwrap()
                .content_id("a"),
            BatchRequest::patch("$a")
                .json(&json!({}))
                .unwrap()
                .return_representation()
                .unwrap(),
        ])];
        let body = write_batch(&parts, "z", "/api/data/v9.2/");
        assert!(body.contains(
            "Content-ID: a\r\n\r\nPATCH /api/data/v9.2/accounts(accountnumber='O''Neil%20%C3%9C%201') HTTP/1.1\r\nContent-Type: application/json; type=entry\r\nIf-Match: *\r\n\r\n{\"name\":\"x\"}\r\n"
        ), "{body}");
        assert!(
            body.contains("Content-ID: 2\r\n\r\nPATCH $a HTTP/1.1\r\n"),
            "{body}"
        );
        assert!(body.contains("Prefer: return=representation\r\n"));
        assert!(BatchRequest::get("x").header("X-A", "b\r\nc").is_err());
    }

    #[test]
    fn chunks_respect_the_limit_and_keep_change_sets_whole() {
        let r = || BatchRequest::delete("accounts(00000000-0000-0000-0000-000000000000)");
        let mut b = Batch::new().max_requests_per_batch(3);
        for _ in 0..4 {
            b = b.request(r());
        }
        b = b.change_set(vec![r(), r()]).request(r());
        let sizes: Vec<usize> = b
            .chunks()
            .unwrap()
            .iter()
            .map(|c| c.iter().map(BatchPart::len).sum())
            .collect();
        assert_eq!(sizes, [3, 3, 1]);
        let too_big = Batch::new()
            .max_requests_per_batch(2)
            .change_set(vec![r(), r(), r()]);
        assert!(too_big.chunks().is_err());
        assert!(
            Batch::new()
                .change_set(vec![BatchRequest::get("x")])
                .chunks()
                .is_err()
        );
        assert!(Batch::new().change_set(vec![]).chunks().is_err());
        assert!(Batch::new().chunks().unwrap().is_empty());
    }

    const DOC_RESPONSE: &str = r#"--batchresponse_f27ef42d
Content-Type: multipart/mixed; boundary=changesetresponse_64cc3fff

--changesetresponse_64cc3fff
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

HTTP/1.1 204 No Content
OData-Version: 4.0
Location: https://contoso.crm.dynamics.com/api/data/v9.2/accounts(e73ffc82-e292-ed11-aad1-000d3a9933c9)
OData-EntityId: https://contoso.crm.dynamics.com/api/data/v9.2/accounts(e73ffc82-e292-ed11-aad1-000d3a9933c9)


--changesetresponse_64cc3fff
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 2

HTTP/1.1 204 No Content
OData-Version: 4.0
OData-EntityId: https://contoso.crm.dynamics.com/api/data/v9.2/opportunities(e83ffc82-e292-ed11-aad1-000d3a9933c9)


--changesetresponse_64cc3fff--
--batchresponse_f27ef42d
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 200 OK
Content-Type: application/json; odata.metadata=minimal; odata.streaming=true
OData-Version: 4.0

{"value":[{"name":"Fabrikam deal"}]}
--batchresponse_f27ef42d--
"#;

    #[test]
    fn parses_nested_change_sets_with_crlf_and_lf() {
        for body in [crlf(DOC_RESPONSE), DOC_RESPONSE.to_string()] {
            let parts = parse_batch_response(
                "multipart/mixed; boundary=batchresponse_f27ef42d",
                body.as_bytes(),
            )
            .unwrap();
            assert_eq!(parts.len(), 3);
            assert_eq!(parts[0].status, StatusCode::NO_CONTENT);
            assert_eq!(parts[0].content_id.as_deref(), Some("1"));
            assert_eq!(parts[0].change_set, Some(0));
            assert_eq!(
                parts[0].entity_id().unwrap().to_string(),
                "e73ffc82-e292-ed11-aad1-000d3a9933c9"
            );
            assert!(parts[0].body.is_empty());
            assert_eq!(parts[1].content_id.as_deref(), Some("2"));
            assert_eq!(parts[2].change_set, None);
            assert_eq!(parts[2].status, StatusCode::OK);
            let v: serde_json::Value = parts[2].json().unwrap();
            assert_eq!(v["value"][0]["name"], "Fabrikam deal");
        }
    }

    #[test]
    fn parses_a_failed_change_set_and_a_stopped_batch() {
        let body = crlf(
            r#"preamble is ignored
--batchresponse_1
Content-Type: multipart/mixed; boundary="changesetresponse_2"

--changesetresponse_2
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

HTTP/1.1 400 Bad Request
REQ_ID: 5ecd1cb3-1730-4ffc-909c-d44c22270026
Content-Type: application/json; odata.metadata=minimal
OData-Version: 4.0

{"error":{"code":"0x80044331","message":"A validation error occurred."}}
--changesetresponse_2--
--batchresponse_1
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 204 No Content
OData-Version: 4.0


--batchresponse_1--
epilogue"#,
        );
        let parts =
            parse_batch_response("multipart/mixed; boundary=batchresponse_1", body.as_bytes())
                .unwrap();
        assert_eq!(parts.len(), 2);
        let err = parts[0].error().unwrap();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
        assert_eq!(err.dataverse_code(), Some("0x80044331"));
        assert_eq!(parts[0].change_set, Some(0));
        assert!(parts[1].is_success());
        assert!(parts[1].error().is_none());
    }

    #[test]
    fn malformed_input_is_a_typed_error() {
        let ct = "multipart/mixed; boundary=b";
        for body in [
            "",
            "no delimiters",
            "--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            "--b\r\nContent-Type: application/http\r\n\r\nnot http\r\n--b--",
            "--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 999x\r\n\r\n\r\n--b--",
            "--b\r\nBad Header\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\r\n--b--",
            "--b\r\nContent-Type: multipart/mixed\r\n\r\n--b--",
            "--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\nContent-Type: multipart/mixed; boundary=d\r\n\r\n--d--\r\n--c--\r\n--b--",
        ] {
            assert!(
                parse_batch_response(ct, body.as_bytes()).is_err(),
                "{body:?}"
            );
        }
        assert!(parse_batch_response("text/plain", b"").is_err());
        assert!(parse_batch_response("multipart/mixed", b"").is_err());
        assert!(parse_batch_response("%%%", b"").is_err());
        // A boundary that is a prefix of a longer line is not a delimiter.
        let body = "--bb\r\n--b\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\r\n--b--\r\n";
        assert_eq!(parse_batch_response(ct, body.as_bytes()).unwrap().len(), 1);
        // A head without its blank line is tolerated.
        let body = "--b\r\n\r\nHTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\n--b--\r\n";
        assert_eq!(
            parse_batch_response(ct, body.as_bytes()).unwrap()[0].status,
            204
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_batch_response("multipart/mixed; boundary=b", &bytes);
        }

        #[test]
        fn parser_never_panics_on_near_valid_input(
            cut in 0usize..700,
            junk in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut body = crlf(DOC_RESPONSE).into_bytes();
            let cut = cut.min(body.len());
            body.splice(cut..cut, junk);
            let _ = parse_batch_response("multipart/mixed; boundary=batchresponse_f27ef42d", &body);
        }
    }
}
