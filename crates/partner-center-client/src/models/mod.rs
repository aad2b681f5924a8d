//! The Partner Center resources, as they are on the wire.
//!
//! Shared by the client, the sandbox emulator and the field mapping. Conventions:
//! - public fields and `Default`, so values are built with `..Default::default()`;
//! - camelCase on the wire, `None` not written, unknown members kept in `extra`;
//! - service enums keep unknown values in `Other(String)`;
//! - money is a [`rust_decimal::Decimal`] written as a JSON number and read from a number or a
//!   numeric string; timestamps are `DateTime<Utc>`, read with any precision and written with
//!   the service's 7 fractional digits.

pub(crate) mod enums;
mod patch;
mod referral;
mod transition;
pub(crate) mod wire;

pub use enums::{
    AssistanceRequestCode, CustomerMarketplaceIntent, CustomerProfileType, ReferralDirection,
    ReferralQualification, ReferralStatus, ReferralSubstatus, ReferralType, SalesStage,
    SolutionType, TargetType,
};
pub use patch::{PatchOp, PatchOperation, WRITABLE_PATHS, requested_status};
pub use referral::{
    AdditionalRequirements, Address, Consent, ContactPreference, CustomerProfile,
    CustomerProfileId, ErrorDetail, ErrorResponse, Extra, InviteContext, InvitedBy,
    IotRequirements, Link, MARKETPLACE_INTENT_TYPE, Member, Referral, ReferralCollection,
    ReferralDetails, ReferralLinks, ReferralTarget, Registration, RegistrationContract,
    RegistrationSolution, RequirementAttribute, RequirementItem, Requirements, SolutionTag,
    TrackingInfo,
};
pub use transition::{
    InvalidTransition, TransitionRule, allowed_next_statuses, allowed_substatuses, check_transition,
};
