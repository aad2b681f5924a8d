//! # cosell
//!
//! Keeps Microsoft Partner Center co-sell referrals and Dynamics 365 (Dataverse) records in
//! two-way sync. This facade re-exports the workspace's crates so a service depends on one
//! package; each crate can also be used alone.
//!
//! | module | crate | what it is |
//! |---|---|---|
//! | [`http`] | `cosell-http` | shared pipeline: transport and credential seams, retries, throttling, paging |
//! | [`partner_center`] | `partner-center-client` | Partner Center Referrals API, webhook registration and callback verification |
//! | [`dataverse`] | `dataverse-client` | Dataverse Web API (OData v4) |
//! | [`mapping`] | `cosell-mapping` | pure translation referral <-> CRM records, driven by a TOML field map |
//! | [`sync`] | `cosell-sync` | the sync engine and its durable state (links, checkpoints, audit); start at its crate page |
//! | `sandbox` | `cosell-sandbox` | loopback emulators of both services, with fault injection (feature `sandbox`) |
//!
//! ## Features
//!
//! | feature | default | what it brings |
//! |---|---|---|
//! | `rustls` | yes | the reqwest transport (rustls, aws-lc-rs) for both clients |
//! | `system-proxy` | yes | `HTTP(S)_PROXY` from the environment |
//! | `webhook` | yes | verification of Partner Center callbacks, the engine's `WebhookIntake` |
//! | `sqlite` | yes | the SQLite state store |
//! | `testing` | no | in-memory fakes of the engine's `PartnerCenter` and `Crm` (`sync::testing`) |
//! | `sandbox` | no | the emulators (`cosell::sandbox`) and `cosell::sandboxed`, which wires all of it to them in one call; brings axum |
//!
//! A service needs only the defaults; `sandbox` is for trying cosell out, examples and tests
//! (`cargo run --example quickstart` in the repository).
//!
//! cosell is an independent, unofficial project, not affiliated with, endorsed by or supported
//! by Microsoft. Microsoft, Partner Center, Dynamics 365 and Dataverse are trademarks of the
//! Microsoft group of companies.

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
