#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
// `Error` carries the service's error by value (as `cosell_http::Error` does) so callers can match
// on it directly; the size only matters on the failure path of a network call.
#![allow(clippy::result_large_err)]

#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
mod error;
pub mod models;
#[cfg(feature = "client")]
mod referrals;
pub mod webhook;

#[cfg(feature = "client")]
pub use client::{
    DEFAULT_REFERRALS_ENDPOINT, DEFAULT_WEBHOOKS_ENDPOINT, PartnerCenterClient,
    PartnerCenterClientBuilder, REFERRALS_SCOPE, WEBHOOKS_SCOPE,
};
#[cfg(feature = "client")]
pub use error::{ConfigError, Error, InvalidRequest};
#[cfg(feature = "client")]
pub use referrals::{ListReferrals, UpdateReferral, odata_string};
