//! Sending a [`Batch`]: splitting into HTTP `$batch` calls and collecting the responses.

use cosell_http::ServiceError;
use cosell_http::http::header::CONTENT_TYPE;
use cosell_http::http::{HeaderMap, Method};

use crate::batch::{
    Batch, BatchPart, BatchResponse, batch_content_type, parse_batch_response, write_batch,
};
use crate::client::{DataverseClient, PREFER, header_value};
use crate::error::{BatchError, Error};

/// The responses of a [`Batch`], in request order.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResult {
    /// One response per executed request. Fewer than [`requests`](Self::requests) means the
    /// service stopped at a failure (without `continue_on_error`, or a failed change set): the
    /// requests without a response were **not executed**.
    pub responses: Vec<BatchResponse>,
    /// How many requests the batch held.
    pub requests: usize,
    /// How many HTTP `$batch` calls were sent.
    pub http_batches: usize,
}

impl BatchResult {
    /// Whether every request ran and succeeded.
    pub fn all_succeeded(&self) -> bool {
        self.responses.len() == self.requests && self.responses.iter().all(|r| r.is_success())
    }

    /// The failed responses.
    pub fn failures(&self) -> impl Iterator<Item = &BatchResponse> {
        self.responses.iter().filter(|r| !r.is_success())
    }
}

impl DataverseClient {
    /// Sends a batch as one or more `POST $batch` calls (at most
    /// [`max_requests_per_batch`](Batch::max_requests_per_batch) requests each, change sets never
    /// split). Without `continue_on_error` the calls stop after the first one that reports a
    /// failure.
    ///
    /// A failed request inside the batch is a [`BatchResponse`] with an error status, not an
    /// `Err`; `Err` means the batch as a whole could not be sent or read.
    ///
    /// ```no_run
    /// # async fn demo(client: dataverse_client::DataverseClient) -> Result<(), dataverse_client::Error> {
    /// use dataverse_client::{Batch, BatchRequest};
    /// let batch = Batch::new().change_set(vec![
    ///     BatchRequest::post("accounts").json(&serde_json::json!({"name": "Fabrikam"}))?,
    ///     BatchRequest::post("opportunities")
    ///         .json(&serde_json::json!({"name": "Deal", "customerid_account@odata.bind": "$1"}))?,
    /// ]);
    /// let result = client.execute_batch(&batch).await?;
    /// for r in &result.responses {
    ///     println!("{} {:?}", r.status, r.entity_id());
    /// }
    /// # Ok(()) }
    /// ```
    #[tracing::instrument(skip_all, fields(requests = batch.len()))]
    pub async fn execute_batch(&self, batch: &Batch) -> Result<BatchResult, Error> {
        let chunks = batch.chunks()?;
        let base_path = self.api_url().path().to_string();
        let url = self.url_for(&["$batch"], None)?;
        let mut result = BatchResult {
            responses: Vec::new(),
            requests: batch.len(),
            http_batches: 0,
        };
        for chunk in chunks {
            let id = uuid::Uuid::new_v4().simple().to_string();
            let body = write_batch(chunk, &id, &base_path);
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, header_value(&batch_content_type(&id))?);
            if batch.continue_on_error {
                headers.insert(PREFER, header_value("odata.continue-on-error")?);
            }
            let (resp, request_id) = self
                .execute_any(Method::POST, &url, &mut headers, Some(body.into()), None)
                .await?;
            result.http_batches += 1;
            let status = resp.status();
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let is_multipart = content_type
                .trim()
                .to_ascii_lowercase()
                .starts_with("multipart/");
            if !is_multipart {
                if status.is_success() {
                    return Err(Error::Batch(BatchError::new(format!(
                        "expected a multipart response, got `{content_type}`"
                    ))));
                }
                let (parts, body) = resp.into_parts();
                return Err(Error::from_service(
                    ServiceError::from_response(parts.status, &parts.headers, &body)
                        .with_client_request_id(request_id),
                ));
            }
            let responses = parse_batch_response(&content_type, resp.body())?;
            let expected: usize = chunk.iter().map(BatchPart::len).sum();
            let failed = !status.is_success()
                || responses.len() < expected
                || responses.iter().any(|r| !r.is_success());
            result.responses.extend(responses);
            if failed && !batch.continue_on_error {
                break;
            }
        }
        Ok(result)
    }
}
