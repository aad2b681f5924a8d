#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod crm;
pub mod engine;
pub mod partner_center;
pub mod remote;
pub mod store;

pub use crm::{Crm, CrmChange, CrmChanges, CrmRow, CrmWritten};
pub use engine::{
    Action, Engine, EngineConfig, EngineError, EngineStats, FieldDirection, Outcome, Report,
};
pub use partner_center::PartnerCenter;
pub use remote::{RemoteError, RemoteErrorKind};
