#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod partner_center;
pub mod remote;
pub mod store;

pub use partner_center::PartnerCenter;
pub use remote::{RemoteError, RemoteErrorKind};
