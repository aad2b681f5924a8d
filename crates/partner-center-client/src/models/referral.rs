//! The Referral resource (reference §2) and the objects nested in it.
//!
//! Everything the service may omit is an `Option` (an empty array is kept apart from an absent
//! one, so `"target": []` survives a round trip); fields this client does not model are kept in
//! each object's `extra` map and written back unchanged. `null` and absent are treated alike:
//! both read as `None`, and `None` is not written.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::enums::{
    AssistanceRequestCode, CustomerMarketplaceIntent, CustomerProfileType, ReferralDirection,
    ReferralQualification, ReferralStatus, ReferralSubstatus, ReferralType, SalesStage,
    SolutionType, TargetType,
};
use super::wire::{
    datetime_opt, decimal_opt, lenient_bool, lenient_id, lenient_string, lenient_vec,
};

/// Unknown JSON members of an object, kept so they are written back unchanged.
pub type Extra = Map<String, Value>;

/// A co-sell referral (lead or opportunity), as read from and written to
/// `/v1.0/engagements/referrals`.
///
/// Build one for a create call with struct-update syntax:
///
/// ```
/// use partner_center_client::models::*;
/// let referral = Referral {
///     name: Some("Contoso - Azure migration".into()),
///     r#type: Some(ReferralType::Shared),
///     customer_profile: Some(CustomerProfile {
///         name: Some("Contoso Customer Inc".into()),
///         address: Some(Address { country: Some("US".into()), ..Default::default() }),
///         ..Default::default()
///     }),
///     consent: Some(Consent { consent_to_share_referral_with_microsoft_sellers: Some(true), ..Default::default() }),
///     details: Some(ReferralDetails { deal_value: Some(120_000.into()), currency: Some("USD".into()), ..Default::default() }),
///     ..Default::default()
/// };
/// let json = serde_json::to_value(&referral).unwrap();
/// assert_eq!(json["details"]["dealValue"], 120000);
/// assert_eq!(json["type"], "Shared");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Referral {
    /// `@odata.context` (sent on GET by id).
    #[serde(
        rename = "@odata.context",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub odata_context: Option<String>,
    /// Referral id (GUID), assigned by the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Engagement id (GUID) grouping the referrals of all parties working one deal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engagement_id: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Owning partner organisation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// Owning partner organisation name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_name: Option<String>,
    /// Partner id (numeric string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpn_id: Option<String>,
    /// The caller's own id for the deal (cosell writes the CRM record id here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_reference_id: Option<String>,
    /// When the referral was created.
    #[serde(
        default,
        with = "datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_date_time: Option<DateTime<Utc>>,
    /// When the referral last changed.
    #[serde(
        default,
        with = "datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub updated_date_time: Option<DateTime<Utc>>,
    /// When an unanswered incoming referral expires.
    #[serde(
        default,
        with = "datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub expiration_date_time: Option<DateTime<Utc>>,
    /// When the referral was accepted (for outgoing referrals, the creation time).
    #[serde(
        default,
        with = "datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub accepted_date_time: Option<DateTime<Utc>>,
    /// When the referral was closed.
    #[serde(
        default,
        with = "datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub closed_date_time: Option<DateTime<Utc>>,
    /// Status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ReferralStatus>,
    /// Substatus (note the lowercase `s` on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substatus: Option<ReferralSubstatus>,
    /// Free-text reason for the status (for example why a deal was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Qualification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualification: Option<ReferralQualification>,
    /// Referral type (`type` on the wire).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<ReferralType>,
    /// Incoming or outgoing, from the caller's point of view (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<ReferralDirection>,
    /// Source of a marketplace lead (values not documented).
    #[serde(
        default,
        with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub referral_source: Option<String>,
    /// Call to action of a marketplace lead (values not documented).
    #[serde(
        default,
        with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub call_to_action: Option<String>,
    /// Sales stage (values disputed, see [`SalesStage`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sales_stage: Option<SalesStage>,
    /// Marketing campaign id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// Referral program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral_program: Option<String>,
    /// Marked as favourite.
    #[serde(
        default,
        with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub favorite: Option<bool>,
    /// Quality (read-only; observed `Unknown`).
    #[serde(
        default,
        with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub quality: Option<String>,
    /// Flagged as spam (read-only).
    #[serde(
        default,
        with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub is_spam: Option<bool>,
    /// Deal sensitivity (observed `None`).
    #[serde(
        default,
        with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub deal_sensitivity: Option<String>,
    /// Deal registration status (read-only; observed `None`, `ReviewPending`).
    #[serde(
        default,
        with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub registration_status: Option<String>,
    /// Tags (read-only).
    #[serde(default, with = "lenient_vec", skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Value>>,
    /// The concurrency token, a quoted opaque string. Send it verbatim as `If-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    /// Who the referral is sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<ReferralTarget>>,
    /// The customer. Required on create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_profile: Option<CustomerProfile>,
    /// Consents. Required on create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<Consent>,
    /// Deal details. Required on create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<ReferralDetails>,
    /// The caller's own sales team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<Vec<Member>>,
    /// Who invited whom, and the help requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite_context: Option<InviteContext>,
    /// Server-generated links (opaque; never parse them to build URLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<ReferralLinks>,
    /// Microsoft-side identifiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_info: Option<TrackingInfo>,
    /// Deal registrations (read-only; written through JSON Patch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registrations: Option<Vec<Registration>>,
    /// Last modified via (usually null).
    #[serde(
        default,
        with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_modified_via: Option<String>,
    /// Last run id (usually null).
    #[serde(
        default,
        with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_run_id: Option<String>,
    /// Created via (usually null).
    #[serde(
        default,
        with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub created_via: Option<String>,
    /// The partner's role on a services co-sell referral ("required for Services co-sell
    /// referrals only"; FY26 taxonomy, values not published in the API reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_role: Option<String>,
    /// The solution area of a services co-sell referral (required for those only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solution_area: Option<String>,
    /// The solution play of a services co-sell referral (required for those only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solution_play: Option<String>,
    /// Members this client does not model, written back unchanged.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Referral {
    /// The customer's marketplace purchase intent
    /// (`details.requirements.additionalRequirements.attributes[type=CustomerMarketplaceIntent]`).
    pub fn marketplace_intent(&self) -> Option<CustomerMarketplaceIntent> {
        self.details
            .as_ref()
            .and_then(|d| d.requirements.as_ref())
            .and_then(|r| r.additional_requirements.as_ref())
            .and_then(AdditionalRequirements::marketplace_intent)
    }

    /// Status and substatus, each `None` when absent.
    pub fn status_pair(&self) -> (ReferralStatus, ReferralSubstatus) {
        (
            self.status.clone().unwrap_or_default(),
            self.substatus.clone().unwrap_or_default(),
        )
    }

    /// Whether the referral is in a terminal substatus (Won, Lost, Declined, Expired).
    pub fn is_terminal(&self) -> bool {
        self.substatus
            .as_ref()
            .is_some_and(ReferralSubstatus::is_terminal)
    }

    /// The solutions listed under `details.requirements.solutions` (empty when absent).
    pub fn solutions(&self) -> &[SolutionTag] {
        self.details
            .as_ref()
            .and_then(|d| d.requirements.as_ref())
            .and_then(|r| r.solutions.as_deref())
            .unwrap_or(&[])
    }
}

/// The customer of a referral.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerProfile {
    /// Id (older documentation versions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Company name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Address; `country` is ISO 3166 alpha-2 and mandatory in practice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    /// Company size (legacy values such as `10to50employees`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// Customer contacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<Vec<Member>>,
    /// External identifiers (D-U-N-S and others). Real payloads also send `{}`, read as no ids.
    #[serde(default, with = "lenient_vec", skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<CustomerProfileId>>,
    /// Customer matching finished (observed only).
    #[serde(
        default,
        with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub is_matching_complete: Option<bool>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A postal address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    /// First line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_line1: Option<String>,
    /// Second line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_line2: Option<String>,
    /// City.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// State or province.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Postal code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    /// ISO 3166 alpha-2 country code, e.g. `US`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A person: a customer contact or a member of a sales team.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// First name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Job title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Contact preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_preference: Option<ContactPreference>,
    /// Members this client does not model (e.g. `emailValidationStatus`).
    #[serde(flatten)]
    pub extra: Extra,
}

/// How a member wants to be contacted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactPreference {
    /// Culture, e.g. `en-us`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// No e-mail notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_notifications: Option<bool>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An external identifier of the customer (`customerProfile.ids[]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerProfileId {
    /// Kind of identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_type: Option<CustomerProfileType>,
    /// The identifier.
    #[serde(with = "lenient_id")]
    pub id: String,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Consents given with a referral.
///
/// The wire name `consentToToShareInfoWithOthers` (doubled "ToTo") is the real one. PascalCase
/// spellings, which the documentation's own create example sends, are accepted on input; output
/// is always camelCase.
///
/// ```
/// use partner_center_client::models::Consent;
/// let c: Consent = serde_json::from_str(r#"{"ConsentToToShareInfoWithOthers": true}"#).unwrap();
/// assert_eq!(c.consent_to_to_share_info_with_others, Some(true));
/// assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"consentToToShareInfoWithOthers":true}"#);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Consent {
    /// Consent to share the customer's information with others.
    #[serde(
        default,
        alias = "ConsentToToShareInfoWithOthers",
        skip_serializing_if = "Option::is_none"
    )]
    pub consent_to_to_share_info_with_others: Option<bool>,
    /// Consent to be contacted.
    #[serde(
        default,
        alias = "ConsentToContact",
        skip_serializing_if = "Option::is_none"
    )]
    pub consent_to_contact: Option<bool>,
    /// Share the referral with Microsoft sellers (private vs shared; one-way once true).
    #[serde(
        default,
        alias = "ConsentToShareReferralWithMicrosoftSellers",
        skip_serializing_if = "Option::is_none"
    )]
    pub consent_to_share_referral_with_microsoft_sellers: Option<bool>,
    /// Consent for Microsoft to contact specific partners.
    #[serde(
        default,
        alias = "ConsentToMicrosoftToContactSpecificPartners",
        skip_serializing_if = "Option::is_none"
    )]
    pub consent_to_microsoft_to_contact_specific_partners: Option<bool>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Deal details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferralDetails {
    /// Notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Deal value, written as a JSON number; read from a number or a numeric string.
    #[serde(default, with = "decimal_opt", skip_serializing_if = "Option::is_none")]
    pub deal_value: Option<Decimal>,
    /// ISO 4217 currency code, e.g. `USD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Expected close date.
    #[serde(
        default,
        with = "datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub closing_date_time: Option<DateTime<Utc>>,
    /// What the customer needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<Requirements>,
    /// Customer asked to be contacted.
    #[serde(
        default,
        with = "lenient_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub customer_requested_contact: Option<bool>,
    /// Customer action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_action: Option<String>,
    /// Incentive level (only ever observed as null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incentive_level: Option<Value>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `details.requirements`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirements {
    /// Industries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub industries: Option<Vec<RequirementItem>>,
    /// Products.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub products: Option<Vec<RequirementItem>>,
    /// Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<RequirementItem>>,
    /// Co-sell ready or Microsoft solutions (at least one is needed to share with Microsoft).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solutions: Option<Vec<SolutionTag>>,
    /// Offers (untyped in the service's schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offers: Option<Vec<Value>>,
    /// Sales plays (untyped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sales_plays: Option<Vec<Value>>,
    /// Additional requirements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_requirements: Option<AdditionalRequirements>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// An industry, product or service reference: `{ "id": … }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequirementItem {
    /// The value, e.g. `Manufacturing`.
    #[serde(with = "lenient_id")]
    pub id: String,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A solution on a referral.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SolutionTag {
    /// Solution id (`SOL-34104-EBB` for partner solutions, a GUID for Microsoft ones).
    #[serde(with = "lenient_id")]
    pub id: String,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kind of reference.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<SolutionType>,
    /// Price (number or numeric string).
    #[serde(default, with = "decimal_opt", skip_serializing_if = "Option::is_none")]
    pub price: Option<Decimal>,
    /// Quantity (number or numeric string).
    #[serde(default, with = "decimal_opt", skip_serializing_if = "Option::is_none")]
    pub quantity: Option<Decimal>,
    /// Currency of the price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Publisher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher_name: Option<String>,
    /// Solution type, e.g. `3P`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solution_type: Option<String>,
    /// Close date for this solution.
    #[serde(
        default,
        with = "datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub closing_date_time: Option<DateTime<Utc>>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `details.requirements.additionalRequirements`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdditionalRequirements {
    /// IoT details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot: Option<IotRequirements>,
    /// Typed attributes, e.g. `{ "id": "HaveNotDecided", "type": "CustomerMarketplaceIntent" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Vec<RequirementAttribute>>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl AdditionalRequirements {
    /// The value of the `CustomerMarketplaceIntent` attribute, if one is listed.
    pub fn marketplace_intent(&self) -> Option<CustomerMarketplaceIntent> {
        self.attributes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|a| {
                a.r#type
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case(MARKETPLACE_INTENT_TYPE))
            })
            .map(|a| CustomerMarketplaceIntent::from(a.id.as_str()))
    }

    /// Sets the `CustomerMarketplaceIntent` attribute (replacing any earlier one).
    pub fn set_marketplace_intent(&mut self, intent: &CustomerMarketplaceIntent) {
        let attributes = self.attributes.get_or_insert_with(Vec::new);
        attributes.retain(|a| {
            !a.r#type
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(MARKETPLACE_INTENT_TYPE))
        });
        attributes.push(RequirementAttribute::marketplace_intent(intent));
    }
}

/// The `type` of the marketplace-intent attribute.
pub const MARKETPLACE_INTENT_TYPE: &str = "CustomerMarketplaceIntent";

/// IoT requirements.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IotRequirements {
    /// Customer licence agreement number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_license_agreement_number: Option<String>,
    /// Device category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_category: Option<String>,
    /// Silicon type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silicon_type: Option<String>,
    /// Azure certified device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_certified_device: Option<bool>,
    /// Attach services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_services: Option<bool>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A typed attribute under `additionalRequirements.attributes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequirementAttribute {
    /// The value, e.g. `HaveNotDecided`.
    #[serde(with = "lenient_id")]
    pub id: String,
    /// The attribute, e.g. `CustomerMarketplaceIntent`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl RequirementAttribute {
    /// `{ "id": <intent>, "type": "CustomerMarketplaceIntent" }`, as Microsoft's minimal create
    /// example sends it.
    pub fn marketplace_intent(intent: &CustomerMarketplaceIntent) -> Self {
        RequirementAttribute {
            id: intent.as_str().to_string(),
            r#type: Some(MARKETPLACE_INTENT_TYPE.to_string()),
            extra: Extra::new(),
        }
    }
}

/// Who invited whom, and the help requested from Microsoft.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InviteContext {
    /// Notes for the invited party.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// The inviting organisation (`organizationId` is `msft` when Microsoft invited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invited_by: Option<InvitedBy>,
    /// The help requested ("help required"); `Unknown` means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assistance_request_code: Option<AssistanceRequestCode>,
    /// Partner id of the invited party.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invited_mpn_id: Option<String>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl InviteContext {
    /// Whether Microsoft invited (`invitedBy.organizationId == "msft"`).
    pub fn invited_by_microsoft(&self) -> bool {
        self.invited_by
            .as_ref()
            .and_then(|b| b.organization_id.as_deref())
            .is_some_and(|id| id.eq_ignore_ascii_case("msft"))
    }
}

/// `inviteContext.invitedBy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvitedBy {
    /// Organisation id (`msft` for Microsoft).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    /// Organisation name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_name: Option<String>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A recipient of the referral.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferralTarget {
    /// Kind of target.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<TargetType>,
    /// Target id (`msft` targets Microsoft; a solution id for solution profiles).
    #[serde(with = "lenient_id")]
    pub id: String,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

impl ReferralTarget {
    /// The Microsoft target: `{"type":"BusinessProfileLocation","id":"msft"}`.
    pub fn microsoft() -> Self {
        ReferralTarget {
            r#type: Some(TargetType::BusinessProfileLocation),
            id: "msft".into(),
            extra: Extra::new(),
        }
    }
}

/// Server-generated links.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferralLinks {
    /// Related referrals (same engagement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related_referrals: Option<Link>,
    /// The referral itself (`self` on the wire).
    #[serde(rename = "self", default, skip_serializing_if = "Option::is_none")]
    pub self_link: Option<Link>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One link: `{ "uri": …, "method": "GET" }`. Opaque.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    /// The URI as sent (may contain typos and unquoted filters; do not parse).
    #[serde(with = "lenient_id")]
    pub uri: String,
    /// The HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Microsoft-side identifiers of the deal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackingInfo {
    /// Opportunity id in Microsoft's CRM (set once Microsoft accepts a co-sell referral).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microsoft_msx_id: Option<String>,
    /// US Federal opportunity id.
    #[serde(
        rename = "microsoftUSFedOpportunityId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub microsoft_us_fed_opportunity_id: Option<String>,
    /// US Federal lead id.
    #[serde(
        rename = "microsoftUSFedLeadId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub microsoft_us_fed_lead_id: Option<String>,
    /// Migrated PSC deal id.
    #[serde(
        rename = "migratedPSCDealId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub migrated_psc_deal_id: Option<String>,
    /// Migrated PSC partner deal id.
    #[serde(
        rename = "migratedPSCPartnerDealId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub migrated_psc_partner_deal_id: Option<String>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A deal registration (`registrations[]`, reference §3.6).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// Registration id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Registration type, e.g. `AzureIPCoSell`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    /// When it was registered.
    #[serde(
        default,
        with = "datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub registration_date_time: Option<DateTime<Utc>>,
    /// Status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Status reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<RegistrationContract>,
    /// Solutions registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solution_details: Option<Vec<RegistrationSolution>>,
    /// Status history (`reviewPendingDateTime`, `approvedDateTime`, …), kept as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_history: Option<Extra>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A deal registration's contract.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationContract {
    /// Contract value.
    #[serde(default, with = "decimal_opt", skip_serializing_if = "Option::is_none")]
    pub value: Option<Decimal>,
    /// Currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Term (`Perpetual` or `Finite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    /// Start.
    #[serde(
        default,
        with = "datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub start_date_time: Option<DateTime<Utc>>,
    /// End.
    #[serde(
        default,
        with = "datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub end_date_time: Option<DateTime<Utc>>,
    /// Signed.
    #[serde(
        default,
        with = "datetime_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub sign_date_time: Option<DateTime<Utc>>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A solution in a deal registration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationSolution {
    /// Solution id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Value.
    #[serde(default, with = "decimal_opt", skip_serializing_if = "Option::is_none")]
    pub value: Option<Decimal>,
    /// Currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Deployed on Azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_deployed_on_azure: Option<bool>,
    /// `Customer` or `Partner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_deployment_on: Option<String>,
    /// `PayAsYouGo` or `Other`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing_model: Option<String>,
    /// Marketplace transaction details, kept as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketplace_transaction_details: Option<Extra>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One page of `GET /referrals`, as it comes over the wire.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferralCollection {
    /// `@odata.context`.
    #[serde(
        rename = "@odata.context",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub odata_context: Option<String>,
    /// `@odata.count`, when `$count=true` was asked.
    #[serde(
        rename = "@odata.count",
        default,
        with = "super::wire::u64_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub odata_count: Option<u64>,
    /// The referrals of this page.
    #[serde(default)]
    pub value: Vec<Referral>,
    /// The opaque link to the next page (often `http://` and on another path; follow verbatim).
    #[serde(
        rename = "@odata.nextLink",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub next_link: Option<String>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The service's error body: `{"error":{"code","message","target","innerError"}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorDetail,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One level of an error body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// Error code, e.g. `preconditionFailed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Target, e.g. `referral`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Nested error.
    #[serde(default, alias = "innererror", skip_serializing_if = "Option::is_none")]
    pub inner_error: Option<Box<ErrorDetail>>,
    /// Members this client does not model.
    #[serde(flatten)]
    pub extra: Extra,
}
