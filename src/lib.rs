//! # cosell
//!
//! Keeps Microsoft Partner Center co-sell referrals and Dynamics 365 (Dataverse) records in
//! two-way sync. This facade re-exports the workspace's crates so an application depends on one
//! package; each crate can also be used alone.
//!
//! | module | crate | what it is |
//! |---|---|---|
//! | [`http`] | `cosell-http` | shared pipeline: transport and credential seams, retries, throttling, paging |
//! | [`partner_center`] | `partner-center-client` | Partner Center Referrals API, webhook registration and callback verification |
//! | [`dataverse`] | `dataverse-client` | Dataverse Web API (OData v4) |
//! | [`mapping`] | `cosell-mapping` | pure translation referral <-> CRM records, driven by a TOML field map |
//! | [`sync`] | `cosell-sync` | the sync engine and its durable state (links, checkpoints, audit) |
//! | [`sandbox`] | `cosell-sandbox` | loopback emulators of both services, with fault injection |
//!
//! [`sandboxed::Sandboxed`] wires all of it to the embedded sandbox in one call. Start with
//! `cargo run --example quickstart`; see the repository README.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "sandbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "sandbox")))]
pub mod sandboxed;

pub use cosell_http as http;
pub use cosell_mapping as mapping;
#[cfg(feature = "sandbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "sandbox")))]
pub use cosell_sandbox as sandbox;
pub use cosell_sync as sync;
pub use dataverse_client as dataverse;
pub use partner_center_client as partner_center;
