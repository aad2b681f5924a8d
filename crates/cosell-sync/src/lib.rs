#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod catalogue;
pub mod crm;
pub mod dataverse;
pub mod engine;
pub mod intake;
pub mod partner_center;
pub mod provision;
pub mod remote;
pub mod setup;
pub mod store;

pub use crm::{
    Crm, CrmChange, CrmChanges, CrmRow, CrmWritten, SolutionLinkChange, SolutionLinkChanges,
    WriteTarget,
};
pub use dataverse::{
    DataverseCrm, MappedColumn, SetupProblem, mapped_columns, required_columns, setup_problems,
};
pub use engine::{
    Action, Engine, EngineConfig, EngineError, EngineStats, FieldDirection, Outcome, PlannedWrite,
    Report, Schedule,
};
pub use intake::{IntakeError, Received, WebhookIntake};
pub use partner_center::PartnerCenter;
pub use provision::{ProvisionOptions, ProvisionReport, SetupError, provision};
pub use remote::{RemoteError, RemoteErrorKind};
pub use setup::{
    CheckProblem, PartnerCenterCheck, RegistrationOutcome, WebhookState, dataverse_problems,
    partner_center_problems, register_callback,
};
