#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod credential;
mod error;
mod pacer;
pub mod pager;
mod pipeline;
mod retry;
mod throttle;
pub mod transport;

pub use credential::{
    AccessToken, ClientSecretCredential, CredentialError, CredentialErrorKind,
    EntraCredentialBuilder, RefreshTokenCredential, RefreshTokenOptions, RefreshTokenSink,
    StaticTokenCredential, TokenCredential,
};
pub use error::{DecodeError, Error, MAX_ERROR_BODY, ServiceError, decode_json};
pub use pacer::{
    BudgetPacer, InFlight, MIN_EXECUTION_SCALE, PacerConfig, PacerConfigError, PacerSnapshot,
    Priority, Reservation,
};
pub use pager::{DeltaLink, NextLink, ODataPage, Page, PageFuture, Pager};
pub use pipeline::{Pipeline, PipelineBuilder, SendOptions, json_body};
pub use retry::{RetryPolicy, is_idempotent_method, parse_retry_after};
pub use throttle::{AdaptiveLimiter, LimiterPermit, LimiterSnapshot};
pub use transport::{
    FnTransport, HttpTransport, TransportError, TransportErrorKind, default_transport,
};
#[cfg(feature = "reqwest")]
pub use transport::{ReqwestTransport, ReqwestTransportBuilder};

// Re-exported so clients and embedders name the same versions.
pub use bytes;
pub use http;
pub use secrecy;
pub use url;
