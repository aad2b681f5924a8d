#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
// `Error` carries `ServiceError` by value, as partner-center-client does, so callers match on
// the same shapes in both clients; errors are rare next to the requests they describe.
#![allow(clippy::result_large_err)]

mod actions;
mod batch;
mod batch_exec;
mod changes;
mod client;
mod error;
mod metadata;
mod model;
mod ops;
mod query;
mod schema;

pub use actions::{OpportunityClose, QualifiedLead, QualifyLead};
pub use batch::{
    Batch, BatchPart, BatchRequest, BatchResponse, MAX_BATCH_REQUESTS, batch_content_type,
    parse_batch_response, write_batch,
};
pub use batch_exec::BatchResult;
pub use changes::{
    Change, ChangeNext, ChangePage, ChangePageLink, ChangePager, ChangeToken,
    ChangeTrackingOptions, Changes,
};
pub use client::{
    DEFAULT_API_PATH, DEFAULT_MAX_CONCURRENCY, DataverseClient, DataverseClientBuilder,
    RateLimitStatus, Raw, RawRequest, RawResponse,
};
pub use error::{
    BatchError, CODE_CONCURRENCY_VERSION_MISMATCH, CODE_DUPLICATE_RECORD,
    CODE_DUPLICATE_RECORD_ENTITY_KEY, CODE_EXPIRED_VERSION_STAMP, CODE_OBJECT_DOES_NOT_EXIST,
    CODE_RECORD_NOT_FOUND_BY_ENTITY_KEY, CODE_THROTTLE_CONCURRENCY, CODE_THROTTLE_EXECUTION_TIME,
    CODE_THROTTLE_REQUESTS, ConfigError, Error, InvalidRequest, ThrottleKind,
};
pub use model::{
    CustomerRef, ETag, Entity, EntityRef, Key, KeyValue, LeadState, LeadStatus, OpportunityState,
    OpportunityStatus, bind_property, date_only, unbind,
};
pub use ops::{
    RetrieveOptions, UpdateOptions, UpsertMode, UpsertOptions, UpsertOutcome, Upserted,
    id_from_entity_url,
};
pub use query::{Filter, Literal, Order, Query, encode_query_value, escape_string_literal};

pub use metadata::{
    ColumnDefinition, ColumnInfo, ColumnKind, LookupRelationship, RelationshipInfo, TableDefinition,
};
pub use schema::{AlternateKeyInfo, SchemaReport, TableSetup};

// Re-exported so callers name the same versions.
pub use cosell_http;
