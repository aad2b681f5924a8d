//! `$batch`: a multipart/mixed parser (CRLF only), change sets run atomically with `$n`
//! Content-ID references, stop-on-first-error unless `Prefer: odata.continue-on-error`, and the
//! multipart response laid out as documented (reference §4, §10 F).

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use bytes::Bytes;

use super::error::{DvError, DvResult, codes};
use super::ops::{Ctx, execute, strip_api_root};
use super::request::{OpBody, OpRequest, OpResponse};

/// One inner request as parsed.
#[derive(Debug, Clone)]
pub(crate) struct InnerRequest {
    pub(crate) method: Method,
    pub(crate) url: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// A top-level part.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Single(InnerRequest),
    ChangeSet(Vec<(Option<String>, InnerRequest)>),
}

fn unreadable() -> DvError {
    DvError::payload(
        "",
        "System.ArgumentException: Stream was not readable. (the $batch body must use CRLF line endings and well-formed boundaries)",
    )
}

/// The `boundary` parameter of a multipart/mixed Content-Type.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let mime = parts.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    parts
        .find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"').to_string())
        })
        .filter(|b| !b.is_empty())
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Splits a multipart body into part contents.
fn split<'a>(body: &'a [u8], boundary: &str, outer: bool) -> DvResult<Vec<&'a [u8]>> {
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    // The first delimiter is at the start or after a CRLF (preamble).
    let mut pos = if body.starts_with(d) {
        0
    } else {
        find(body, format!("\r\n{delim}").as_bytes(), 0).ok_or_else(unreadable)? + 2
    };
    let mut parts = Vec::new();
    loop {
        let after = pos + d.len();
        let rest = body.get(after..).ok_or_else(unreadable)?;
        if rest.starts_with(b"--") {
            // Close delimiter; the outer one must end its line with CRLF.
            let tail = &rest[2..];
            let tail = tail.trim_ascii_start_matches_spaces();
            if outer && !tail.starts_with(b"\r\n") {
                return Err(unreadable());
            }
            return Ok(parts);
        }
        let rest_trimmed = rest.trim_ascii_start_matches_spaces();
        if !rest_trimmed.starts_with(b"\r\n") {
            return Err(unreadable());
        }
        let start = after + (rest.len() - rest_trimmed.len()) + 2;
        let next = find(body, format!("\r\n{delim}").as_bytes(), start).ok_or_else(unreadable)?;
        parts.push(&body[start..next]);
        pos = next + 2;
    }
}

trait TrimSpaces {
    fn trim_ascii_start_matches_spaces(&self) -> &Self;
}

impl TrimSpaces for [u8] {
    fn trim_ascii_start_matches_spaces(&self) -> &[u8] {
        let n = self
            .iter()
            .take_while(|b| **b == b' ' || **b == b'\t')
            .count();
        &self[n..]
    }
}

/// Part headers, in order.
type Headers = Vec<(String, String)>;

/// Splits header lines (CRLF) from the rest at the first empty line.
fn headers_and_rest(part: &[u8]) -> DvResult<(Headers, &[u8])> {
    let (head, rest) = if part.starts_with(b"\r\n") {
        (&part[..0], &part[2..])
    } else if let Some(i) = find(part, b"\r\n\r\n", 0) {
        (&part[..i], &part[i + 4..])
    } else if part.is_empty() || part.ends_with(b"\r\n") {
        // Source: "Use FetchXML within a batch request" (D-BATCH example) and D-CLIENTERR: a
        // body-less part (GET, DELETE) may end with its headers and one blank line, the blank
        // line being the CRLF that belongs to the next delimiter.
        (part, &part[part.len()..])
    } else {
        return Err(unreadable());
    };
    let text = std::str::from_utf8(head).map_err(|_| unreadable())?;
    let mut headers = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':').ok_or_else(unreadable)?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok((headers, rest))
}

fn get<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn inner_request(content: &[u8]) -> DvResult<InnerRequest> {
    let line_end = find(content, b"\r\n", 0).ok_or_else(unreadable)?;
    let line = std::str::from_utf8(&content[..line_end]).map_err(|_| unreadable())?;
    let mut words = line.split_whitespace();
    let (Some(method), Some(url)) = (words.next(), words.next()) else {
        return Err(unreadable());
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| unreadable())?;
    let (hs, body) = headers_and_rest(&content[line_end + 2..])?;
    let mut headers = HeaderMap::new();
    for (k, v) in hs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            headers.append(k, v);
        }
    }
    // The part ends right before the CRLF of the next delimiter; extra trailing CRLFs are
    // padding.
    let mut body = body;
    while body.ends_with(b"\r\n") {
        body = &body[..body.len() - 2];
    }
    Ok(InnerRequest {
        method,
        url: url.to_string(),
        headers,
        body: Bytes::copy_from_slice(body),
    })
}

/// An LF-only body that ends with two line endings, rewritten with CRLF; `None` for any other
/// body (CRLF bodies are parsed as they are; other LF bodies are refused).
// Source: "Troubleshoot Dataverse Web API client errors" (D-CLIENTERR): CRLF is what to send,
// but a body with LF line endings is accepted when it ends with two line endings.
fn lf_only_to_crlf(body: &[u8]) -> Option<Vec<u8>> {
    if find(body, b"\r", 0).is_some() || !body.ends_with(b"\n\n") {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + body.len() / 16);
    for b in body {
        if *b == b'\n' {
            out.push(b'\r');
        }
        out.push(*b);
    }
    Some(out)
}

/// Parses a `$batch` body.
pub(crate) fn parse(body: &[u8], boundary: &str) -> DvResult<Vec<Item>> {
    match lf_only_to_crlf(body) {
        Some(crlf) => parse_crlf(&crlf, boundary),
        None => parse_crlf(body, boundary),
    }
}

fn parse_crlf(body: &[u8], boundary: &str) -> DvResult<Vec<Item>> {
    let mut items = Vec::new();
    for part in split(body, boundary, true)? {
        let (headers, rest) = headers_and_rest(part)?;
        let ct = get(&headers, "content-type").unwrap_or("");
        if let Some(cs) = self::boundary(ct) {
            let mut ops = Vec::new();
            for sub in split(rest, &cs, false)? {
                let (h, r) = headers_and_rest(sub)?;
                if !get(&h, "content-type").is_some_and(|c| c.starts_with("application/http")) {
                    return Err(unreadable());
                }
                ops.push((get(&h, "content-id").map(str::to_string), inner_request(r)?));
            }
            items.push(Item::ChangeSet(ops));
        } else if ct.starts_with("application/http") {
            items.push(Item::Single(inner_request(rest)?));
        } else {
            return Err(unreadable());
        }
    }
    Ok(items)
}

/// Number of operations in the batch.
pub(crate) fn operations(items: &[Item]) -> usize {
    items
        .iter()
        .map(|i| match i {
            Item::Single(_) => 1,
            Item::ChangeSet(ops) => ops.len(),
        })
        .sum()
}

fn to_op(req: &InnerRequest, content_ids: &HashMap<String, String>) -> DvResult<OpRequest> {
    let mut url = req.url.clone();
    if url.starts_with('$') {
        let (name, tail) = match url.find(['/', '?']) {
            Some(i) => (url[..i].to_string(), url[i..].to_string()),
            None => (url.clone(), String::new()),
        };
        let Some(target) = content_ids.get(&name) else {
            return Err(DvError::odata(format!(
                "Content-ID Reference: '{name}' does not exist in the batch context."
            )));
        };
        url = format!("{target}{tail}");
    }
    let rel = strip_api_root(&url);
    let (path, query) = rel.split_once('?').unwrap_or((rel, ""));
    Ok(OpRequest {
        method: req.method.clone(),
        path: path.to_string(),
        query: query.to_string(),
        headers: req.headers.clone(),
        body: req.body.clone(),
    })
}

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("")
}

/// One `application/http` part with its inner response.
fn http_part(out: &mut String, resp: &OpResponse, content_id: Option<&str>) {
    out.push_str("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n");
    if let Some(id) = content_id {
        out.push_str(&format!("Content-ID: {id}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&format!(
        "HTTP/1.1 {} {}\r\n",
        resp.status.as_u16(),
        reason(resp.status)
    ));
    let ct = resp.header_value("content-type");
    if let Some(ct) = ct {
        // D-BATCH example: a query's part adds `odata.streaming=true`; an error part is plain
        // `application/json; odata.metadata=minimal`.
        let ct = if ct.starts_with("application/json") && resp.is_success() {
            format!("{ct}; odata.streaming=true")
        } else {
            ct.to_string()
        };
        out.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    out.push_str("OData-Version: 4.0\r\n");
    if !resp.is_success() {
        out.push_str(&format!("REQ_ID: {}\r\n", uuid::Uuid::new_v4()));
    }
    if let Some(loc) = resp.header_value("odata-entityid") {
        out.push_str(&format!("Location: {loc}\r\n"));
    }
    for (k, v) in &resp.headers {
        if k.eq_ignore_ascii_case("content-type") {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    match &resp.body {
        Some(OpBody::Json(v)) => out.push_str(&super::money::to_json(v)),
        Some(OpBody::Text(t)) => out.push_str(t),
        None => {}
    }
    out.push_str("\r\n");
}

/// The outcome of a batch: status, Content-Type boundary and body, operations executed.
#[derive(Debug)]
pub(crate) struct BatchOutcome {
    pub(crate) status: StatusCode,
    pub(crate) boundary: String,
    pub(crate) body: String,
    pub(crate) executed: usize,
}

/// Runs the parsed batch against the store.
pub(crate) fn run(ctx: &mut Ctx<'_>, items: &[Item], continue_on_error: bool) -> BatchOutcome {
    let boundary = format!("batchresponse_{}", uuid::Uuid::new_v4());
    let mut body = String::new();
    let mut executed = 0;
    let empty = HashMap::new();
    for item in items {
        match item {
            Item::Single(req) => {
                executed += 1;
                let resp = match to_op(req, &empty) {
                    Ok(op) => {
                        let mut inner = Ctx {
                            model: ctx.model,
                            store: &mut *ctx.store,
                            api_base: ctx.api_base,
                            content_ids: &empty,
                            identity: ctx.identity,
                        };
                        execute(&mut inner, &op)
                    }
                    Err(e) => OpResponse::error(&e),
                };
                if !resp.is_success() && !continue_on_error {
                    return stopped(&boundary, &resp, executed);
                }
                body.push_str(&format!("--{boundary}\r\n"));
                http_part(&mut body, &resp, None);
            }
            Item::ChangeSet(ops) => {
                let mut ids: HashMap<String, String> = HashMap::new();
                let mut done: Vec<(Option<&str>, OpResponse)> = Vec::new();
                let mut failed = None;
                ctx.store.begin();
                for (cid, req) in ops {
                    executed += 1;
                    let resp = if req.method == Method::GET {
                        OpResponse::error(&DvError::odata(
                            "GET requests are not allowed inside a change set.",
                        ))
                    } else {
                        match to_op(req, &ids) {
                            Ok(op) => {
                                let mut inner = Ctx {
                                    model: ctx.model,
                                    store: &mut *ctx.store,
                                    api_base: ctx.api_base,
                                    content_ids: &ids,
                                    identity: ctx.identity,
                                };
                                execute(&mut inner, &op)
                            }
                            Err(e) => OpResponse::error(&e),
                        }
                    };
                    if !resp.is_success() {
                        failed = Some((cid.as_deref(), resp));
                        break;
                    }
                    if let (Some(cid), Some(url)) = (cid, resp.header_value("odata-entityid")) {
                        ids.insert(format!("${cid}"), url.to_string());
                    }
                    done.push((cid.as_deref(), resp));
                }
                match failed {
                    Some((cid, resp)) => {
                        ctx.store.rollback();
                        if !continue_on_error {
                            return stopped(&boundary, &resp, executed);
                        }
                        body.push_str(&format!("--{boundary}\r\n"));
                        http_part(&mut body, &resp, cid);
                    }
                    None => {
                        ctx.store.commit();
                        let cs = format!("changesetresponse_{}", uuid::Uuid::new_v4());
                        body.push_str(&format!(
                            "--{boundary}\r\nContent-Type: multipart/mixed; boundary={cs}\r\n\r\n"
                        ));
                        for (cid, resp) in &done {
                            body.push_str(&format!("--{cs}\r\n"));
                            http_part(&mut body, resp, *cid);
                        }
                        body.push_str(&format!("--{cs}--\r\n"));
                    }
                }
            }
        }
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    BatchOutcome {
        status: StatusCode::OK,
        boundary,
        body,
        executed,
    }
}

/// A batch that could not be read at all, answered as Dataverse does: the error's status,
/// with one `batchresponse_` part holding the error.
// Source: reference Corrections (D-BATCH failure example): a batch-level error comes back as a
// `batchresponse_` multipart body.
pub(crate) fn unreadable_batch(error: &DvError) -> BatchOutcome {
    let boundary = format!("batchresponse_{}", uuid::Uuid::new_v4());
    stopped(&boundary, &OpResponse::error(error), 0)
}

/// Without `continue-on-error` the batch answers the failing operation's status and only its
/// response (reference §4: "the body holds a single part").
fn stopped(boundary: &str, resp: &OpResponse, executed: usize) -> BatchOutcome {
    let mut body = format!("--{boundary}\r\n");
    http_part(&mut body, resp, None);
    body.push_str(&format!("--{boundary}--\r\n"));
    BatchOutcome {
        status: resp.status,
        boundary: boundary.to_string(),
        body,
        executed,
    }
}

/// The error when the batch has too many operations.
pub(crate) fn too_many(max: usize) -> DvError {
    DvError::bad_request(
        codes::INVALID_ARGUMENT,
        format!(
            "The current batch message contains too many parts. Only batch messages with a maximum number of '{max}' query operations, including changeset operations, are allowed."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "--batch_a1\r\nContent-Type: multipart/mixed; boundary=\"changeset_c1\"\r\n\r\n--changeset_c1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\nPOST /api/data/v9.2/accounts HTTP/1.1\r\nContent-Type: application/json; type=entry\r\n\r\n{\"name\":\"Fabrikam\"}\r\n--changeset_c1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 2\r\n\r\nPOST /api/data/v9.2/opportunities HTTP/1.1\r\nContent-Type: application/json; type=entry\r\n\r\n{\"name\":\"Fabrikam deal\",\"customerid_account@odata.bind\":\"$1\"}\r\n--changeset_c1--\r\n\r\n--batch_a1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\nGET /api/data/v9.2/opportunities?$select=name&$top=1 HTTP/1.1\r\n\r\n\r\n--batch_a1--\r\n";

    #[test]
    fn parses_the_documented_example() {
        assert_eq!(
            boundary("multipart/mixed; boundary=\"batch_a1\"").as_deref(),
            Some("batch_a1")
        );
        let items = parse(BODY.as_bytes(), "batch_a1").unwrap();
        assert_eq!(items.len(), 2);
        let Item::ChangeSet(ops) = &items[0] else {
            panic!()
        };
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[1].0.as_deref(), Some("2"));
        assert_eq!(ops[1].1.method, Method::POST);
        assert!(ops[1].1.body.ends_with(b"\"$1\"}"));
        let Item::Single(get) = &items[1] else {
            panic!()
        };
        assert_eq!(get.url, "/api/data/v9.2/opportunities?$select=name&$top=1");
        assert!(get.body.is_empty());
        assert_eq!(operations(&items), 3);
    }

    #[test]
    fn rejects_lf_only_and_missing_final_crlf() {
        let lf = BODY.replace("\r\n", "\n");
        assert!(parse(lf.as_bytes(), "batch_a1").is_err());
        let no_crlf = BODY.trim_end_matches("\r\n");
        assert!(parse(no_crlf.as_bytes(), "batch_a1").is_err());
        assert!(parse(b"garbage", "batch_a1").is_err());
        assert!(parse(b"--batch_a1\r\n", "batch_a1").is_err());
    }
}
