//! Dataverse error answers: `{"error":{"code":"0x…","message":"…"}}` with the documented hex
//! codes (reference §6.3). Each code names the page that prints it; a case no page prints a code
//! for is listed in `docs/fidelity-dataverse.md` under "Only a real tenant can confirm".

use axum::http::StatusCode;
use serde_json::json;

/// Hex codes the emulator answers with.
pub mod codes {
    /// ObjectDoesNotExist (404 on a missing row).
    // Source: "Web service error codes" (D-ERR): ObjectDoesNotExist 0x80040217.
    pub const NOT_FOUND: &str = "0x80040217";
    /// RecordNotFoundByEntityKey (404 on a missing row addressed by alternate key).
    // Source: D-ERR: RecordNotFoundByEntityKey 0x80060891 "A record with the specified key values does not exist in {0} entity".
    pub const RECORD_NOT_FOUND_BY_KEY: &str = "0x80060891";
    /// The empty code Microsoft's Web API examples print for some answers.
    // Source: "Perform conditional operations" (D-COND) and D-CLIENTERR print `"code": ""`.
    pub const EMPTY: &str = "";
    /// ConcurrencyVersionMismatch (412 on a stale `If-Match`).
    // Source: D-ERR: ConcurrencyVersionMismatch 0x80060882 with the message D-COND prints.
    pub const CONCURRENCY_MISMATCH: &str = "0x80060882";
    /// DuplicateRecordEntityKey (alternate-key violation).
    // Source: D-ERR: DuplicateRecordEntityKey 0x80060892.
    pub const DUPLICATE_KEY: &str = "0x80060892";
    /// DuplicateRecord (a create with a primary key that exists; an association that exists).
    // Source: D-ERR: DuplicateRecord 0x80040237 "Operation failed due to a SQL integrity violation."
    pub const DUPLICATE_RECORD: &str = "0x80040237";
    /// Resource not found for the segment.
    // Source: D-CLIENTERR: 404 0x8006088a "Resource not found for the segment 'Account'."
    pub const UNKNOWN_SEGMENT: &str = "0x8006088a";
    /// Generic OData error (unknown property, syntax errors).
    // Source: D-CLIENTERR: 400 0x0 "Could not find a property named 'Name' on type …".
    pub const ODATA: &str = "0x0";
    /// ODataClientPayloadError.
    // Source: D-ERR and D-CLIENTERR: ODataClientPayloadError 0x80048d19.
    pub const PAYLOAD: &str = "0x80048d19";
    /// Validation error (length, range).
    // Source: "Execute batch operations" (D-BATCH) prints 0x80044331 for a length violation.
    pub const VALIDATION: &str = "0x80044331";
    /// A choice value outside the column's options.
    // Source: D-ERR: PicklistValueOutOfRange 0x8004431A.
    pub const OPTION_OUT_OF_RANGE: &str = "0x8004431a";
    /// InvalidArgument.
    pub const INVALID_ARGUMENT: &str = "0x80040203";
    /// OpportunityIsAlreadyClosed.
    // Source: D-ERR: OpportunityIsAlreadyClosed 0x80040515 "The opportunity is already closed."
    pub const OPPORTUNITY_CLOSED: &str = "0x80040515";
    /// OpportunityCannotBeClosed.
    // Source: D-ERR: OpportunityCannotBeClosed 0x80040516 "The opportunity cannot be closed."
    pub const OPPORTUNITY_CANNOT_BE_CLOSED: &str = "0x80040516";
    /// The requested operation on a closed (read-only) record.
    pub const RECORD_READ_ONLY: &str = "0x80043b1b";
    /// Service protection: number of requests.
    // Source: "Service protection API limits" (D-LIMITS): 0x80072322, 0x80072321, 0x80072326.
    pub const THROTTLE_REQUESTS: &str = "0x80072322";
    /// Service protection: combined execution time.
    pub const THROTTLE_TIME: &str = "0x80072321";
    /// Service protection: concurrent requests.
    pub const THROTTLE_CONCURRENCY: &str = "0x80072326";
    /// ExpiredVersionStamp: an expired change-tracking token.
    // Source: D-ERR: ExpiredVersionStamp 0x80044352 "Version stamp associated with the client has expired. Please perform a full sync."
    pub const EXPIRED_VERSION_STAMP: &str = "0x80044352";
    /// AccessTokenExpired / authentication required.
    // Source: D-ERR: AccessTokenExpired 0x8005F101 "The requested resource requires authentication."
    pub const AUTHENTICATION: &str = "0x8005F101";
    /// Method not allowed on the resource.
    pub const NOT_SUPPORTED: &str = "0x80040800";
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DvError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

pub(crate) type DvResult<T> = Result<T, DvError>;

impl DvError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        DvError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn odata(message: impl Into<String>) -> Self {
        Self::bad_request(codes::ODATA, message)
    }

    pub(crate) fn payload(entity_set: &str, inner: impl AsRef<str>) -> Self {
        Self::bad_request(
            codes::PAYLOAD,
            format!(
                "Error identified in Payload provided by the user for Entity :'{entity_set}', For more information on this error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ----> InnerException : Microsoft.OData.ODataException: {}",
                inner.as_ref()
            ),
        )
    }

    pub(crate) fn unknown_segment(segment: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            codes::UNKNOWN_SEGMENT,
            format!("Resource not found for the segment '{segment}'."),
        )
    }

    pub(crate) fn unknown_property(property: &str, logical_name: &str) -> Self {
        Self::odata(format!(
            "Could not find a property named '{property}' on type 'Microsoft.Dynamics.CRM.{logical_name}'."
        ))
    }

    pub(crate) fn row_not_found(logical_name: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            format!("{logical_name} With Id = {id} Does Not Exist"),
        )
    }

    pub(crate) fn key_not_found(logical_name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            codes::RECORD_NOT_FOUND_BY_KEY,
            format!(
                "A record with the specified key values does not exist in {logical_name} entity"
            ),
        )
    }

    pub(crate) fn concurrency_mismatch() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            codes::CONCURRENCY_MISMATCH,
            "The version of the existing record doesn't match the RowVersion property provided.",
        )
    }

    pub(crate) fn already_exists() -> Self {
        // Source: D-COND "Prevent update in upsert": 412, code "", this message.
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            codes::EMPTY,
            "A record with matching key values already exists.",
        )
    }

    /// The answer to a function or action called with the wrong method (`POST WhoAmI`).
    pub(crate) fn no_http_resource(url: &str) -> Self {
        // Source: D-CLIENTERR "No HTTP resource was found that matches the request URI": 404, code "".
        Self::new(
            StatusCode::NOT_FOUND,
            codes::EMPTY,
            format!("No HTTP resource was found that matches the request URI '{url}'."),
        )
    }

    /// A create with a primary key (or an association) that already exists.
    pub(crate) fn duplicate_record() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            codes::DUPLICATE_RECORD,
            "Operation failed due to a SQL integrity violation.",
        )
    }

    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            codes::NOT_SUPPORTED,
            message,
        )
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}
