//! partner-center-client: a typed async client for the Microsoft Partner Center Referrals API
//! and the webhook registration API.
//!
//! - [`models`]: the Referral resource and friends, shared with the emulator and the mapping.
//! - [`PartnerCenterClient`]: create, get, list (paged), related referrals, JSON Patch updates
//!   with client-side transition checks, and webhook registration.
//! - [`Error`]: one error type with predicates (`is_precondition_failed`, `is_retryable`, …).
#![cfg_attr(docsrs, feature(doc_cfg))]
// `Error` carries the service's error by value (as `cosell_http::Error` does) so callers can match
// on it directly; the size only matters on the failure path of a network call.
#![allow(clippy::result_large_err)]

mod client;
mod error;
pub mod models;
mod referrals;
pub mod webhook;

pub use client::{
    DEFAULT_REFERRALS_ENDPOINT, DEFAULT_WEBHOOKS_ENDPOINT, PartnerCenterClient,
    PartnerCenterClientBuilder, REFERRALS_SCOPE, WEBHOOKS_SCOPE,
};
pub use error::{ConfigError, Error, InvalidRequest};
pub use referrals::{ListReferrals, UpdateReferral, odata_string};
