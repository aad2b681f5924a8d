#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod crm;
#[cfg(feature = "dataverse")]
#[cfg_attr(docsrs, doc(cfg(feature = "dataverse")))]
pub mod dataverse;
pub mod engine;
#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub mod intake;
pub mod partner_center;
pub mod remote;
pub mod setup;
pub mod store;
#[cfg(any(test, feature = "testing"))]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use crm::{
    Crm, CrmChange, CrmChanges, CrmRow, CrmWritten, SolutionLinkChange, SolutionLinkChanges,
    WriteTarget,
};
#[cfg(feature = "dataverse")]
pub use dataverse::{DataverseCrm, SetupProblem, required_columns, setup_problems};
pub use engine::{
    Action, Engine, EngineConfig, EngineError, EngineStats, FieldDirection, LeaseConfig, Outcome,
    PlannedWrite, Report, Schedule,
};
#[cfg(feature = "webhook")]
pub use intake::{IntakeError, Received, WebhookIntake};
pub use partner_center::PartnerCenter;
pub use remote::{RemoteError, RemoteErrorKind};
pub use setup::{RegistrationOutcome, register_callback};
