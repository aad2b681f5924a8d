//! The field map configuration: what a TOML file holds, its defaults and its validation.
//!
//! The complete reference with every key and its default is in the crate documentation
//! (README). Every struct here rejects unknown keys.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ConfigError;
use crate::snapshot::{FieldId, OwnershipPolicy, Policy};

/// The whole field map, as read from TOML. Build a [`FieldMap`](crate::FieldMap) from it to
/// validate it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MappingConfig {
    /// Prefix the opportunity name with ✔ after a successful sync and ✖ after a failure.
    /// Default `true`.
    pub display_check_mark: bool,
    /// Opportunity column receiving the deal value. Default `estimatedvalue`.
    pub deal_value_field: String,
    /// Account column holding the two-letter ISO 3166 country code (plain text). Default
    /// `address1_country`. With [`country_lookup`](Self::country_lookup) set, this is the helper
    /// column that mirrors the lookup's code.
    pub country_code_field: String,
    /// A lookup-based country on the account, handled through the helper column
    /// [`country_code_field`](Self::country_code_field). Default: none (plain text country).
    pub country_lookup: Option<CountryLookup>,
    /// Decimal places deal values are rounded to (Dataverse Money columns keep 2). Default 2.
    pub money_precision: u32,
    /// The longest the audit column may grow, in characters; older entries are dropped first.
    /// Default 4000.
    pub audit_max_chars: usize,
    /// Link to a referral in Partner Center; `{id}` is replaced by the referral id and
    /// `{engagement_id}` by the engagement id. Default
    /// `https://partner.microsoft.com/dashboard/referrals/v2/{id}`.
    pub referral_link_template: String,
    /// Logical names of every CRM table and column the map touches.
    pub columns: Columns,
    /// Option values of CRM choice columns.
    pub choices: Choices,
    /// `statuscode` values used for each referral state.
    pub status: StatusCodes,
    /// Values for mandatory CRM columns the referral does not fill.
    pub defaults: Defaults,
    /// How a referral's customer is matched to an existing account.
    pub account_matching: AccountMatching,
    /// What every new referral carries beyond the mapped fields: the customer's marketplace
    /// intent and, for services co-sell, the partner role, solution area and solution play.
    pub referral_create: ReferralCreate,
    /// Per-field conflict owner, overlaid on the defaults (only the fields listed change).
    #[serde(deserialize_with = "ownership_table")]
    pub ownership: BTreeMap<FieldId, Policy>,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            display_check_mark: true,
            deal_value_field: "estimatedvalue".into(),
            country_code_field: "address1_country".into(),
            country_lookup: None,
            money_precision: 2,
            audit_max_chars: 4000,
            referral_link_template: "https://partner.microsoft.com/dashboard/referrals/v2/{id}"
                .into(),
            columns: Columns::default(),
            choices: Choices::default(),
            status: StatusCodes::default(),
            defaults: Defaults::default(),
            account_matching: AccountMatching::default(),
            referral_create: ReferralCreate::default(),
            ownership: BTreeMap::new(),
        }
    }
}

/// Reads `[ownership]` through string keys, so a bad value is reported at `ownership.<field>`
/// and an unknown field by name.
fn ownership_table<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<FieldId, Policy>, D::Error> {
    let raw = BTreeMap::<String, Policy>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(k, v)| {
            FieldId::ALL
                .iter()
                .find(|f| f.as_str() == k)
                .map(|f| (*f, v))
                .ok_or_else(|| serde::de::Error::unknown_field(&k, &FIELD_NAMES))
        })
        .collect()
}

/// The TOML names of the fields, in [`FieldId::ALL`] order.
const FIELD_NAMES: [&str; 18] = [
    "name",
    "status",
    "deal_value",
    "currency",
    "close_date",
    "notes",
    "help_required",
    "visible_to_microsoft",
    "microsoft_crm_id",
    "customer_name",
    "address_line1",
    "address_line2",
    "city",
    "state",
    "postal_code",
    "country",
    "contacts",
    "solutions",
];

/// A lookup-based country column on the account (for example a lookup to a custom country
/// table). cosell reads the code from the helper text column
/// ([`MappingConfig::country_code_field`]), which the CRM keeps in step with the lookup, and on
/// write also binds the lookup by the country table's alternate key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountryLookup {
    /// Navigation property of the lookup on the account (e.g. `cosell_countryid`).
    pub navigation_property: String,
    /// Entity set of the country table (e.g. `cosell_countries`).
    pub entity_set: String,
    /// Alternate-key column of the country table holding the alpha-2 code.
    pub code_column: String,
}

/// Logical names per table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Columns {
    /// Opportunity columns.
    pub opportunity: OpportunityColumns,
    /// Lead columns.
    pub lead: LeadColumns,
    /// Account columns.
    pub account: AccountColumns,
    /// Contact columns.
    pub contact: ContactColumns,
    /// The Partner Center solutions table.
    pub solution: SolutionColumns,
}

/// Opportunity table and columns. The deal value column is
/// [`MappingConfig::deal_value_field`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpportunityColumns {
    /// Table logical name. Default `opportunity`.
    pub entity: String,
    /// Entity set name. Default `opportunities`.
    pub entity_set: String,
    /// Topic. Default `name`.
    pub name: String,
    /// Notes. Default `description`.
    pub description: String,
    /// Estimated close date. Default `estimatedclosedate`.
    pub close_date: String,
    /// "Sync with Partner Center" (Yes/No). Default `cosell_syncwithpartnercenter`.
    pub sync_with_partner_center: String,
    /// "Referral Identifier", the alternate key. Default `cosell_referralid`.
    pub referral_id: String,
    /// Engagement id. Default `cosell_engagementid`.
    pub engagement_id: String,
    /// "Referral Link". Default `cosell_referrallink`.
    pub referral_link: String,
    /// "How can Microsoft help?" (choice). Default `cosell_helprequired`.
    pub help_required: String,
    /// "Referral Visibility" (Yes/No). Default `cosell_visibletomicrosoft`.
    pub visible_to_microsoft: String,
    /// "Microsoft CRM Identifier". Default `cosell_microsoftcrmid`.
    pub microsoft_crm_id: String,
    /// "Audit" (multiline text). Default `cosell_audit`.
    pub audit: String,
    /// Navigation property binding the customer account. Default `customerid_account`.
    pub customer_account_bind: String,
    /// Navigation property binding the parent account. Default `parentaccountid`.
    pub parent_account_bind: String,
    /// Navigation property binding the primary customer contact. Default `parentcontactid`.
    pub parent_contact_bind: String,
    /// Navigation property binding the currency. Default `transactioncurrencyid`.
    pub currency_bind: String,
}

impl OpportunityColumns {
    /// Every column of the section with its config key (`columns.opportunity.name`, …), in the
    /// order of the fields: what the config check and the setup check go through.
    pub fn keyed_columns(&self) -> [(&'static str, &str); 11] {
        let o = self;
        [
            ("columns.opportunity.name", o.name.as_str()),
            ("columns.opportunity.description", o.description.as_str()),
            ("columns.opportunity.close_date", o.close_date.as_str()),
            (
                "columns.opportunity.sync_with_partner_center",
                o.sync_with_partner_center.as_str(),
            ),
            ("columns.opportunity.referral_id", o.referral_id.as_str()),
            (
                "columns.opportunity.engagement_id",
                o.engagement_id.as_str(),
            ),
            (
                "columns.opportunity.referral_link",
                o.referral_link.as_str(),
            ),
            (
                "columns.opportunity.help_required",
                o.help_required.as_str(),
            ),
            (
                "columns.opportunity.visible_to_microsoft",
                o.visible_to_microsoft.as_str(),
            ),
            (
                "columns.opportunity.microsoft_crm_id",
                o.microsoft_crm_id.as_str(),
            ),
            ("columns.opportunity.audit", o.audit.as_str()),
        ]
    }
}

impl Default for OpportunityColumns {
    fn default() -> Self {
        Self {
            entity: "opportunity".into(),
            entity_set: "opportunities".into(),
            name: "name".into(),
            description: "description".into(),
            close_date: "estimatedclosedate".into(),
            sync_with_partner_center: "cosell_syncwithpartnercenter".into(),
            referral_id: "cosell_referralid".into(),
            engagement_id: "cosell_engagementid".into(),
            referral_link: "cosell_referrallink".into(),
            help_required: "cosell_helprequired".into(),
            visible_to_microsoft: "cosell_visibletomicrosoft".into(),
            microsoft_crm_id: "cosell_microsoftcrmid".into(),
            audit: "cosell_audit".into(),
            customer_account_bind: "customerid_account".into(),
            parent_account_bind: "parentaccountid".into(),
            parent_contact_bind: "parentcontactid".into(),
            currency_bind: "transactioncurrencyid".into(),
        }
    }
}

/// Lead table and columns (a referral not yet accepted syncs as a lead). The lead holds the
/// customer and the first contact inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeadColumns {
    /// Table logical name. Default `lead`.
    pub entity: String,
    /// Entity set name. Default `leads`.
    pub entity_set: String,
    /// Topic. Default `subject`.
    pub subject: String,
    /// Notes. Default `description`.
    pub description: String,
    /// Deal value. Default `estimatedamount`, the lead's Money column "Est. Value" (the lead's
    /// `estimatedvalue` is a deprecated Double, unlike the opportunity's).
    pub deal_value: String,
    /// Estimated close date. Default `estimatedclosedate`.
    pub close_date: String,
    /// Company name. Default `companyname`.
    pub company_name: String,
    /// Contact first name. Default `firstname`.
    pub first_name: String,
    /// Contact last name. Default `lastname`.
    pub last_name: String,
    /// Contact e-mail. Default `emailaddress1`.
    pub email: String,
    /// Contact phone. Default `telephone1`.
    pub phone: String,
    /// Contact job title. Default `jobtitle`.
    pub job_title: String,
    /// Street 1. Default `address1_line1`.
    pub address_line1: String,
    /// Street 2. Default `address1_line2`.
    pub address_line2: String,
    /// City. Default `address1_city`.
    pub city: String,
    /// State or province. Default `address1_stateorprovince`.
    pub state: String,
    /// Postal code. Default `address1_postalcode`.
    pub postal_code: String,
    /// Country (two-letter code, plain text). Default `address1_country`.
    pub country: String,
    /// "Sync with Partner Center". Default `cosell_syncwithpartnercenter`.
    pub sync_with_partner_center: String,
    /// "Referral Identifier", the alternate key. Default `cosell_referralid`.
    pub referral_id: String,
    /// "Referral Link", the referral in Partner Center (as on the opportunity). Default
    /// `cosell_referrallink`.
    pub referral_link: String,
    /// Engagement id (as on the opportunity). Default `cosell_engagementid`.
    pub engagement_id: String,
    /// Audit column on the lead, if the solution has one. Default: none.
    pub audit: Option<String>,
    /// Navigation property binding the currency. Default `transactioncurrencyid`.
    pub currency_bind: String,
}

impl Default for LeadColumns {
    fn default() -> Self {
        Self {
            entity: "lead".into(),
            entity_set: "leads".into(),
            subject: "subject".into(),
            description: "description".into(),
            deal_value: "estimatedamount".into(),
            close_date: "estimatedclosedate".into(),
            company_name: "companyname".into(),
            first_name: "firstname".into(),
            last_name: "lastname".into(),
            email: "emailaddress1".into(),
            phone: "telephone1".into(),
            job_title: "jobtitle".into(),
            address_line1: "address1_line1".into(),
            address_line2: "address1_line2".into(),
            city: "address1_city".into(),
            state: "address1_stateorprovince".into(),
            postal_code: "address1_postalcode".into(),
            country: "address1_country".into(),
            sync_with_partner_center: "cosell_syncwithpartnercenter".into(),
            referral_id: "cosell_referralid".into(),
            referral_link: "cosell_referrallink".into(),
            engagement_id: "cosell_engagementid".into(),
            audit: None,
            currency_bind: "transactioncurrencyid".into(),
        }
    }
}

/// Account table and columns. The country column is [`MappingConfig::country_code_field`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountColumns {
    /// Table logical name. Default `account`.
    pub entity: String,
    /// Entity set name. Default `accounts`.
    pub entity_set: String,
    /// Company name. Default `name`.
    pub name: String,
    /// Street 1. Default `address1_line1`.
    pub address_line1: String,
    /// Street 2. Default `address1_line2`.
    pub address_line2: String,
    /// City. Default `address1_city`.
    pub city: String,
    /// State or province. Default `address1_stateorprovince`.
    pub state: String,
    /// Postal code. Default `address1_postalcode`.
    pub postal_code: String,
}

impl Default for AccountColumns {
    fn default() -> Self {
        Self {
            entity: "account".into(),
            entity_set: "accounts".into(),
            name: "name".into(),
            address_line1: "address1_line1".into(),
            address_line2: "address1_line2".into(),
            city: "address1_city".into(),
            state: "address1_stateorprovince".into(),
            postal_code: "address1_postalcode".into(),
        }
    }
}

/// Contact table and columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContactColumns {
    /// Table logical name. Default `contact`.
    pub entity: String,
    /// Entity set name. Default `contacts`.
    pub entity_set: String,
    /// First name. Default `firstname`.
    pub first_name: String,
    /// Last name. Default `lastname`.
    pub last_name: String,
    /// E-mail. Default `emailaddress1`.
    pub email: String,
    /// Phone. Default `telephone1`.
    pub phone: String,
    /// Job title. Default `jobtitle`.
    pub job_title: String,
    /// Navigation property binding the contact to its account. Default
    /// `parentcustomerid_account`.
    pub account_bind: String,
}

impl Default for ContactColumns {
    fn default() -> Self {
        Self {
            entity: "contact".into(),
            entity_set: "contacts".into(),
            first_name: "firstname".into(),
            last_name: "lastname".into(),
            email: "emailaddress1".into(),
            phone: "telephone1".into(),
            job_title: "jobtitle".into(),
            account_bind: "parentcustomerid_account".into(),
        }
    }
}

/// The Partner Center solutions table (co-sell ready and Microsoft solutions) and the child
/// table that links solutions to opportunities.
///
/// The link is a table of its own (one row per opportunity and solution, two lookups) rather
/// than an N:N relationship, because Dataverse change tracking reports rows of a table: adding
/// or removing a solution is then a change the sync sees within the change-feed latency, while
/// an N:N association changes neither row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SolutionColumns {
    /// Table logical name. Default `cosell_partnercentersolution`.
    pub entity: String,
    /// Entity set name. Default `cosell_partnercentersolutions`.
    pub entity_set: String,
    /// Solution id (alternate key). Default `cosell_solutionid`.
    pub solution_id: String,
    /// Name. Default `cosell_name`.
    pub name: String,
    /// Solution type. Default `cosell_solutiontype`.
    pub solution_type: String,
    /// Publisher. Default `cosell_publishername`.
    pub publisher: String,
    /// The link table's logical name. Default `cosell_opportunitysolution`.
    pub link_entity: String,
    /// The link table's entity set. Default `cosell_opportunitysolutions`.
    pub link_entity_set: String,
    /// The link table's lookup to the opportunity (logical name; read as
    /// `_{name}_value`). Default `cosell_opportunityid`.
    pub link_opportunity: String,
    /// Navigation property of that lookup, for `@odata.bind` (the lookup's schema name).
    /// Default `cosell_OpportunityId`.
    pub link_opportunity_bind: String,
    /// The link table's lookup to the solution (logical name). Default
    /// `cosell_partnercentersolutionid`.
    pub link_solution: String,
    /// Navigation property of that lookup. Default `cosell_PartnerCenterSolutionId`.
    pub link_solution_bind: String,
}

impl Default for SolutionColumns {
    fn default() -> Self {
        Self {
            entity: "cosell_partnercentersolution".into(),
            entity_set: "cosell_partnercentersolutions".into(),
            solution_id: "cosell_solutionid".into(),
            name: "cosell_name".into(),
            solution_type: "cosell_solutiontype".into(),
            publisher: "cosell_publishername".into(),
            link_entity: "cosell_opportunitysolution".into(),
            link_entity_set: "cosell_opportunitysolutions".into(),
            link_opportunity: "cosell_opportunityid".into(),
            link_opportunity_bind: "cosell_OpportunityId".into(),
            link_solution: "cosell_partnercentersolutionid".into(),
            link_solution_bind: "cosell_PartnerCenterSolutionId".into(),
        }
    }
}

/// Option values of CRM choice columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Choices {
    /// "How can Microsoft help?": assistance request code → option value. Replaces the whole
    /// default table when given. Default: `Unknown` 100000000 (no help needed),
    /// `GeneralOrOther` 100000001, `CustomerTechnicalArchitecture` 100000002,
    /// `ProofOfConceptOrDemo` 100000003, `QuotesOrLicensing` 100000004,
    /// `PostSalesCustomerSuccess` 100000005, `WorkloadSpecificValueProposition` 100000006.
    pub help_required: BTreeMap<String, i64>,
}

impl Default for Choices {
    fn default() -> Self {
        let codes = [
            "Unknown",
            "GeneralOrOther",
            "CustomerTechnicalArchitecture",
            "ProofOfConceptOrDemo",
            "QuotesOrLicensing",
            "PostSalesCustomerSuccess",
            "WorkloadSpecificValueProposition",
        ];
        Self {
            help_required: codes
                .iter()
                .zip(100_000_000_i64..)
                .map(|(c, v)| ((*c).to_string(), v))
                .collect(),
        }
    }
}

/// `statuscode` values written for each referral state (`statecode` is fixed by Dataverse:
/// 0 open, 1 won/qualified, 2 lost/disqualified).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusCodes {
    /// Opportunity status reasons.
    pub opportunity: OpportunityStatusCodes,
    /// Lead status reasons.
    pub lead: LeadStatusCodes,
}

/// Opportunity `statuscode` values (reference dataverse §2.8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpportunityStatusCodes {
    /// Active/Accepted: open (statecode 0). Default 1 (In Progress).
    pub open: i64,
    /// Closed/Won: won (statecode 1). Default 3 (Won).
    pub won: i64,
    /// Closed/Lost: lost (statecode 2). Default 5 (Out-Sold).
    pub lost: i64,
    /// Closed/Declined or Expired: lost as cancelled (statecode 2). Default 4 (Canceled).
    pub cancelled: i64,
}

impl Default for OpportunityStatusCodes {
    fn default() -> Self {
        Self {
            open: 1,
            won: 3,
            lost: 5,
            cancelled: 4,
        }
    }
}

/// Lead `statuscode` values (reference dataverse §2.8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeadStatusCodes {
    /// New/Pending or Received: open (statecode 0). Default 1 (New).
    pub open: i64,
    /// Qualified (statecode 1), the lead behind an accepted referral. Default 3 (Qualified).
    pub qualified: i64,
    /// Closed/Declined: disqualified (statecode 2). Default 6 (No Longer Interested).
    pub declined: i64,
    /// Closed/Expired: disqualified (statecode 2). Default 7 (Canceled).
    pub expired: i64,
}

impl Default for LeadStatusCodes {
    fn default() -> Self {
        Self {
            open: 1,
            qualified: 3,
            declined: 6,
            expired: 7,
        }
    }
}

/// Values for mandatory CRM columns the referral does not fill, by logical name. A mapped value
/// always wins over a default. Each table replaces its default table when given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    /// Opportunity defaults. Default: `isrevenuesystemcalculated = false`, so the deal value
    /// written to `estimatedvalue` is not recalculated from products.
    pub opportunity: BTreeMap<String, Value>,
    /// Lead defaults. Default: none.
    pub lead: BTreeMap<String, Value>,
    /// Account defaults. Default: none.
    pub account: BTreeMap<String, Value>,
    /// Contact defaults. Default: none.
    pub contact: BTreeMap<String, Value>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            opportunity: [("isrevenuesystemcalculated".to_string(), Value::Bool(false))]
                .into_iter()
                .collect(),
            lead: BTreeMap::new(),
            account: BTreeMap::new(),
            contact: BTreeMap::new(),
        }
    }
}

/// One part of the account match key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchField {
    /// Company name.
    CustomerName,
    /// Postal code.
    PostalCode,
    /// City.
    City,
    /// State or province.
    State,
    /// Country code.
    Country,
    /// Street 1.
    AddressLine1,
}

impl MatchField {
    /// The snapshot field this part reads.
    pub fn field_id(self) -> FieldId {
        match self {
            MatchField::CustomerName => FieldId::CustomerName,
            MatchField::PostalCode => FieldId::PostalCode,
            MatchField::City => FieldId::City,
            MatchField::State => FieldId::State,
            MatchField::Country => FieldId::Country,
            MatchField::AddressLine1 => FieldId::AddressLine1,
        }
    }
}

/// How a referral's customer is matched to an existing account before one is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountMatching {
    /// The parts of the key, in order. Default `["customer_name", "postal_code"]`.
    pub fields: Vec<MatchField>,
    /// Compare case-insensitively. Default `true`.
    pub ignore_case: bool,
    /// Ignore all whitespace. Default `true`.
    pub ignore_whitespace: bool,
}

impl Default for AccountMatching {
    fn default() -> Self {
        Self {
            fields: vec![MatchField::CustomerName, MatchField::PostalCode],
            ignore_case: true,
            ignore_whitespace: true,
        }
    }
}

/// A Dataverse logical name: lower-case ASCII letters, digits and `_`, starting with a letter
/// or `_`, at most 128 characters.
pub(crate) fn is_logical_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.len() <= 128
}

/// A navigation property or relationship schema name: like a logical name, but upper case is
/// allowed (custom lookups bind by their schema-cased name).
pub(crate) fn is_schema_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 128
}

struct Check {
    errors: Vec<ConfigError>,
}

impl Check {
    fn logical(&mut self, key: &str, value: &str) {
        if !is_logical_name(value) {
            self.errors
                .push(ConfigError::invalid(key, value, "is not a logical name"));
        }
    }

    fn schema(&mut self, key: &str, value: &str) {
        if !is_schema_name(value) {
            self.errors.push(ConfigError::invalid(
                key,
                value,
                "is not a navigation property or schema name",
            ));
        }
    }

    fn fail(&mut self, key: &str, value: impl Into<String>, message: &str) {
        self.errors.push(ConfigError::invalid(key, value, message));
    }
}

macro_rules! logical {
    ($check:ident, $prefix:literal, $s:expr, [$($f:ident),* $(,)?]) => {
        $( $check.logical(concat!($prefix, ".", stringify!($f)), &$s.$f); )*
    };
}

macro_rules! schema {
    ($check:ident, $prefix:literal, $s:expr, [$($f:ident),* $(,)?]) => {
        $( $check.schema(concat!($prefix, ".", stringify!($f)), &$s.$f); )*
    };
}

/// The values a create needs that no CRM column maps (`[referral_create]` in TOML).
///
/// Microsoft's "minimal information required" create example carries the customer's
/// marketplace purchase intent, and Partner Center's bulk-operations page calls it required;
/// `partnerRole`, `solutionArea` and `solutionPlay` are "required for Services co-sell
/// referrals only".
///
/// Each value can also come from a column of the opportunity (`*_column`), the configured value
/// being the default for a row that leaves it empty. A marketplace-intent column may be text
/// (`Yes`, `No`, `HaveNotDecided`) or a choice whose option values
/// `marketplace_intent_choices` names.
///
/// ```
/// let cfg: cosell_mapping::MappingConfig = toml::from_str(r#"
/// [referral_create]
/// marketplace_intent = "Yes"
/// services_co_sell = true
/// partner_role = "SolutionDesign"
/// solution_area = "AIBusinessSolutions"
/// solution_play = "CopilotAndAgentsAtWork"
/// "#).unwrap();
/// assert!(cfg.validate().is_ok());
///
/// let cfg: cosell_mapping::MappingConfig = toml::from_str(r#"
/// [referral_create]
/// marketplace_intent_column = "new_marketplaceintent"
/// marketplace_intent_choices = { Yes = 100000000, No = 100000001, HaveNotDecided = 100000002 }
/// services_co_sell = true
/// partner_role_column = "new_partnerrole"
/// solution_area_column = "new_solutionarea"
/// solution_play_column = "new_solutionplay"
/// "#).unwrap();
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReferralCreate {
    /// The customer's marketplace intent sent with every create: `Yes`, `No` or
    /// `HaveNotDecided`. Default: `HaveNotDecided` (the value of Microsoft's example).
    pub marketplace_intent: String,
    /// Whether the partner's co-sell referrals are services co-sell referrals; then
    /// `partner_role`, `solution_area` and `solution_play` are required. Default: false.
    pub services_co_sell: bool,
    /// `partnerRole` of a services co-sell referral (e.g. `SolutionDesign`). Default: none.
    pub partner_role: Option<String>,
    /// `solutionArea` of a services co-sell referral. Default: none.
    pub solution_area: Option<String>,
    /// `solutionPlay` of a services co-sell referral. Default: none.
    pub solution_play: Option<String>,
    /// Opportunity column with the customer's marketplace intent; an empty value takes
    /// `marketplace_intent`. Default: none.
    pub marketplace_intent_column: Option<String>,
    /// Option values of `marketplace_intent_column` when it is a choice, by intent
    /// (`Yes = 100000000`). Default: none (the column holds the intent as text).
    pub marketplace_intent_choices: BTreeMap<String, i64>,
    /// Opportunity column with `partnerRole`; an empty value takes `partner_role`. Default: none.
    pub partner_role_column: Option<String>,
    /// Opportunity column with `solutionArea`; an empty value takes `solution_area`. Default:
    /// none.
    pub solution_area_column: Option<String>,
    /// Opportunity column with `solutionPlay`; an empty value takes `solution_play`. Default:
    /// none.
    pub solution_play_column: Option<String>,
}

impl ReferralCreate {
    /// The opportunity columns the create reads, with their config keys.
    pub fn columns(&self) -> Vec<(&'static str, &str)> {
        [
            (
                "referral_create.marketplace_intent_column",
                &self.marketplace_intent_column,
            ),
            (
                "referral_create.partner_role_column",
                &self.partner_role_column,
            ),
            (
                "referral_create.solution_area_column",
                &self.solution_area_column,
            ),
            (
                "referral_create.solution_play_column",
                &self.solution_play_column,
            ),
        ]
        .into_iter()
        .filter_map(|(key, col)| col.as_deref().map(|c| (key, c)))
        .collect()
    }
}

impl Default for ReferralCreate {
    fn default() -> Self {
        Self {
            marketplace_intent: "HaveNotDecided".into(),
            services_co_sell: false,
            partner_role: None,
            solution_area: None,
            solution_play: None,
            marketplace_intent_column: None,
            marketplace_intent_choices: BTreeMap::new(),
            partner_role_column: None,
            solution_area_column: None,
            solution_play_column: None,
        }
    }
}

/// The marketplace intent values Partner Center lists (Yes / No / Have not decided).
pub const MARKETPLACE_INTENTS: [&str; 3] = ["Yes", "No", "HaveNotDecided"];

impl MappingConfig {
    /// Checks every value; the first problem is returned, naming its key path and value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every problem with the configuration, in key order.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut c = Check { errors: Vec::new() };
        c.logical("deal_value_field", &self.deal_value_field);
        c.logical("country_code_field", &self.country_code_field);
        if let Some(l) = &self.country_lookup {
            c.schema("country_lookup.navigation_property", &l.navigation_property);
            c.logical("country_lookup.entity_set", &l.entity_set);
            c.logical("country_lookup.code_column", &l.code_column);
        }
        if self.money_precision > 10 {
            c.fail(
                "money_precision",
                self.money_precision.to_string(),
                "must be between 0 and 10",
            );
        }
        if self.audit_max_chars < 100 {
            c.fail(
                "audit_max_chars",
                self.audit_max_chars.to_string(),
                "must be at least 100",
            );
        }
        if !self.referral_link_template.contains("{id}")
            && !self.referral_link_template.contains("{engagement_id}")
        {
            c.fail(
                "referral_link_template",
                &self.referral_link_template,
                "must contain {id} or {engagement_id}",
            );
        }

        let rc = &self.referral_create;
        if !MARKETPLACE_INTENTS.contains(&rc.marketplace_intent.as_str()) {
            c.fail(
                "referral_create.marketplace_intent",
                &rc.marketplace_intent,
                "must be Yes, No or HaveNotDecided",
            );
        }
        if rc.services_co_sell {
            for (key, value, column) in [
                (
                    "referral_create.partner_role",
                    &rc.partner_role,
                    &rc.partner_role_column,
                ),
                (
                    "referral_create.solution_area",
                    &rc.solution_area,
                    &rc.solution_area_column,
                ),
                (
                    "referral_create.solution_play",
                    &rc.solution_play,
                    &rc.solution_play_column,
                ),
            ] {
                // A column can supply it per record; a record that leaves it empty is refused
                // at create time, naming the field.
                if value.as_deref().is_none_or(|v| v.trim().is_empty()) && column.is_none() {
                    c.fail(
                        key,
                        value.clone().unwrap_or_default(),
                        "is required when services_co_sell is true (or name its *_column)",
                    );
                }
            }
        }
        for (key, column) in rc.columns() {
            c.logical(key, column);
        }
        for intent in rc.marketplace_intent_choices.keys() {
            if !MARKETPLACE_INTENTS.contains(&intent.as_str()) {
                c.fail(
                    "referral_create.marketplace_intent_choices",
                    intent,
                    "keys must be Yes, No or HaveNotDecided",
                );
            }
        }

        let o = &self.columns.opportunity;
        logical!(
            c,
            "columns.opportunity",
            o,
            [
                entity,
                entity_set,
                name,
                description,
                close_date,
                sync_with_partner_center,
                referral_id,
                engagement_id,
                referral_link,
                help_required,
                visible_to_microsoft,
                microsoft_crm_id,
                audit,
            ]
        );
        schema!(
            c,
            "columns.opportunity",
            o,
            [
                customer_account_bind,
                parent_account_bind,
                parent_contact_bind,
                currency_bind,
            ]
        );
        let l = &self.columns.lead;
        logical!(
            c,
            "columns.lead",
            l,
            [
                entity,
                entity_set,
                subject,
                description,
                deal_value,
                close_date,
                company_name,
                first_name,
                last_name,
                email,
                phone,
                job_title,
                address_line1,
                address_line2,
                city,
                state,
                postal_code,
                country,
                sync_with_partner_center,
                referral_id,
                referral_link,
                engagement_id,
            ]
        );
        if let Some(a) = &l.audit {
            c.logical("columns.lead.audit", a);
        }
        schema!(c, "columns.lead", l, [currency_bind]);
        let a = &self.columns.account;
        logical!(
            c,
            "columns.account",
            a,
            [
                entity,
                entity_set,
                name,
                address_line1,
                address_line2,
                city,
                state,
                postal_code,
            ]
        );
        let ct = &self.columns.contact;
        logical!(
            c,
            "columns.contact",
            ct,
            [
                entity, entity_set, first_name, last_name, email, phone, job_title,
            ]
        );
        schema!(c, "columns.contact", ct, [account_bind]);
        let s = &self.columns.solution;
        logical!(
            c,
            "columns.solution",
            s,
            [
                entity,
                entity_set,
                solution_id,
                name,
                solution_type,
                publisher,
                link_entity,
                link_entity_set,
                link_opportunity,
                link_solution,
            ]
        );
        schema!(
            c,
            "columns.solution",
            s,
            [link_opportunity_bind, link_solution_bind]
        );

        // The opportunity's mapped columns must be distinct, or one value would overwrite another.
        let mut seen = BTreeMap::new();
        let columns = o.keyed_columns();
        for (key, col) in
            std::iter::once(("deal_value_field", self.deal_value_field.as_str())).chain(columns)
        {
            if let Some(first) = seen.insert(col, key) {
                c.fail(key, col, &format!("is already used by {first}"));
            }
        }

        if self.choices.help_required.is_empty() {
            c.fail("choices.help_required", "{}", "must map at least one code");
        }
        let mut values = BTreeMap::new();
        for (code, value) in &self.choices.help_required {
            let key = format!("choices.help_required.{code}");
            if code.is_empty() || !code.chars().all(|ch| ch.is_ascii_alphanumeric()) {
                c.fail(&key, code.as_str(), "is not an assistance request code");
            }
            if let Some(first) = values.insert(*value, code) {
                c.fail(
                    &key,
                    value.to_string(),
                    &format!("is already the value of {first}"),
                );
            }
        }

        let so = &self.status.opportunity;
        if so.lost == so.cancelled {
            c.fail(
                "status.opportunity.cancelled",
                so.cancelled.to_string(),
                "must differ from status.opportunity.lost",
            );
        }
        let sl = &self.status.lead;
        if sl.declined == sl.expired {
            c.fail(
                "status.lead.expired",
                sl.expired.to_string(),
                "must differ from status.lead.declined",
            );
        }

        for (table, map) in [
            ("opportunity", &self.defaults.opportunity),
            ("lead", &self.defaults.lead),
            ("account", &self.defaults.account),
            ("contact", &self.defaults.contact),
        ] {
            for key in map.keys() {
                let is_bind = key.strip_suffix("@odata.bind").is_some_and(is_schema_name);
                if !is_bind && !is_logical_name(key) {
                    c.fail(
                        &format!("defaults.{table}"),
                        key.as_str(),
                        "is not a logical name",
                    );
                }
            }
        }

        if self.account_matching.fields.is_empty() {
            c.fail(
                "account_matching.fields",
                "[]",
                "must name at least one field",
            );
        }
        let mut parts = BTreeSet::new();
        for f in &self.account_matching.fields {
            if !parts.insert(*f) {
                c.fail(
                    "account_matching.fields",
                    format!("{f:?}"),
                    "is listed twice",
                );
            }
        }

        for (field, policy) in &self.ownership {
            if *policy == Policy::Furthest
                && !matches!(field, FieldId::Status | FieldId::VisibleToMicrosoft)
            {
                c.fail(
                    &format!("ownership.{field}"),
                    "furthest",
                    "is only valid for status and visible_to_microsoft",
                );
            }
        }
        c.errors
    }

    /// The effective ownership policy: the defaults with [`ownership`](Self::ownership)
    /// overlaid.
    pub fn ownership_policy(&self) -> OwnershipPolicy {
        let mut p = OwnershipPolicy::default();
        for (f, pol) in &self.ownership {
            p.set(*f, *pol);
        }
        p
    }
}
