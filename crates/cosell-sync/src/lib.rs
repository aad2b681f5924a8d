#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "dataverse")]
#[cfg_attr(docsrs, doc(cfg(feature = "dataverse")))]
pub mod catalogue;
pub mod crm;
#[cfg(feature = "dataverse")]
#[cfg_attr(docsrs, doc(cfg(feature = "dataverse")))]
pub mod dataverse;
pub mod engine;
#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub mod intake;
pub mod partner_center;
#[cfg(feature = "dataverse")]
#[cfg_attr(docsrs, doc(cfg(feature = "dataverse")))]
pub mod provision;
pub mod remote;
pub mod setup;
pub mod store;
#[cfg(any(test, feature = "testing"))]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use crm::{
    Crm, CrmChange, CrmChanges, CrmRow, CrmWritten, NewRecord, SolutionLinkChange,
    SolutionLinkChanges, WriteTarget,
};
#[cfg(feature = "dataverse")]
pub use dataverse::{DataverseCrm, MappedColumn, mapped_columns, required_columns, setup_problems};
pub use engine::{
    Action, BACKFILL_LANES, DEFAULT_BACKFILL_GROUP, Engine, EngineConfig, EngineError, EngineStats,
    FieldDirection, LeaseConfig, Outcome, PlannedWrite, Report, Schedule,
};
#[cfg(feature = "webhook")]
pub use intake::{IntakeError, Received, WebhookIntake};
pub use partner_center::{PartnerCenter, ReferralPage};
#[cfg(feature = "dataverse")]
pub use provision::{ProvisionOptions, ProvisionReport, SetupError, provision};
pub use remote::{RemoteError, RemoteErrorKind};
#[cfg(feature = "dataverse")]
pub use setup::dataverse_problems;
pub use setup::{
    CheckProblem, PartnerCenterCheck, RegistrationOutcome, WebhookState, partner_center_problems,
    register_callback,
};
