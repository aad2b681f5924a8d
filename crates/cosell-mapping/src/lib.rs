#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod crm;
mod error;
mod map;
mod mark;
mod snapshot;
mod status;

pub use config::{
    AccountColumns, AccountMatching, Choices, Columns, ContactColumns, CountryLookup, Defaults,
    LeadColumns, LeadStatusCodes, MARKETPLACE_INTENTS, MappingConfig, MatchField,
    OpportunityColumns, OpportunityStatusCodes, ReferralCreate, SolutionColumns, StatusCodes,
};
pub use crm::{
    AccountMatchKey, AccountPayload, AlternateKey, Bind, BindTarget, CURRENCY_ENTITY_SET,
    ContactPayload, CrmPayload, CrmRecords, Record, ResolvedIds, SolutionPayload,
};
pub use error::{ConfigError, MappingError, Rule};
pub use map::{FieldMap, ReferralIdentity, ReferralUpdate};
pub use mark::{FAILURE_MARK, SUCCESS_MARK, SyncOutcome, apply_mark, audit_entry, strip_mark};
pub use snapshot::{
    Conflict, ContactValue, FieldChange, FieldId, FieldValue, MappedSnapshot, Merge,
    OwnershipPolicy, PairState, Policy, ReferralState, Side, SolutionValue, diff, merge,
    merge_sides,
};
pub use status::{
    CrmStatus, RecordKind, ReferralAction, STATE_LOST, STATE_OPEN, STATE_WON, StatusStep,
};
