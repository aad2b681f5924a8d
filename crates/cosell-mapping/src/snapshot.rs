//! The canonical, side-independent view of a referral's mapped fields, and the field-level diff
//! and three-way merge over it.
//!
//! Both sides map into a [`MappedSnapshot`]: a referral through
//! [`FieldMap::snapshot_from_referral`](crate::FieldMap::snapshot_from_referral), CRM records
//! through [`FieldMap::snapshot_from_crm`](crate::FieldMap::snapshot_from_crm). The engine keeps the
//! last synced snapshot in the link row as the merge base; echo suppression is then a plain
//! equality test, and [`merge`] resolves concurrent edits field by field.

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;
use partner_center_client::models::{ReferralStatus, ReferralSubstatus};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One mapped field, named independently of either side's wire names.
///
/// The order of the variants is the order of a snapshot's entries and of every change list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FieldId {
    /// Referral `name` ↔ opportunity `name` / lead `subject` (without the check mark).
    Name,
    /// Referral `status` + `substatus` ↔ CRM entity, `statecode` and `statuscode`.
    Status,
    /// `details.dealValue` ↔ the deal value column (`estimatedvalue`).
    DealValue,
    /// `details.currency` ↔ `transactioncurrencyid` (ISO 4217 code).
    Currency,
    /// `details.closingDateTime` ↔ `estimatedclosedate` (a date).
    CloseDate,
    /// `details.notes` ↔ `description`.
    Notes,
    /// `inviteContext.assistanceRequestCode` ↔ "How can Microsoft help?".
    HelpRequired,
    /// `consent.consentToShareReferralWithMicrosoftSellers` ↔ "Referral Visibility".
    VisibleToMicrosoft,
    /// `trackingInfo.microsoftMsxId` ↔ "Microsoft CRM Identifier".
    MicrosoftCrmId,
    /// `customerProfile.name` ↔ account `name`.
    CustomerName,
    /// `customerProfile.address.addressLine1` ↔ `address1_line1`.
    AddressLine1,
    /// `customerProfile.address.addressLine2` ↔ `address1_line2`.
    AddressLine2,
    /// `customerProfile.address.city` ↔ `address1_city`.
    City,
    /// `customerProfile.address.state` ↔ `address1_stateorprovince`.
    State,
    /// `customerProfile.address.postalCode` ↔ `address1_postalcode`.
    PostalCode,
    /// `customerProfile.address.country` ↔ the country code column (ISO 3166 alpha-2).
    Country,
    /// `customerProfile.team` ↔ the customer contacts.
    Contacts,
    /// `details.requirements.solutions` ↔ the linked solution rows.
    Solutions,
}

impl FieldId {
    /// Every field, in snapshot order.
    pub const ALL: [FieldId; 18] = [
        FieldId::Name,
        FieldId::Status,
        FieldId::DealValue,
        FieldId::Currency,
        FieldId::CloseDate,
        FieldId::Notes,
        FieldId::HelpRequired,
        FieldId::VisibleToMicrosoft,
        FieldId::MicrosoftCrmId,
        FieldId::CustomerName,
        FieldId::AddressLine1,
        FieldId::AddressLine2,
        FieldId::City,
        FieldId::State,
        FieldId::PostalCode,
        FieldId::Country,
        FieldId::Contacts,
        FieldId::Solutions,
    ];

    /// The snake_case name used in TOML (`[ownership]`) and in stored snapshots.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldId::Name => "name",
            FieldId::Status => "status",
            FieldId::DealValue => "deal_value",
            FieldId::Currency => "currency",
            FieldId::CloseDate => "close_date",
            FieldId::Notes => "notes",
            FieldId::HelpRequired => "help_required",
            FieldId::VisibleToMicrosoft => "visible_to_microsoft",
            FieldId::MicrosoftCrmId => "microsoft_crm_id",
            FieldId::CustomerName => "customer_name",
            FieldId::AddressLine1 => "address_line1",
            FieldId::AddressLine2 => "address_line2",
            FieldId::City => "city",
            FieldId::State => "state",
            FieldId::PostalCode => "postal_code",
            FieldId::Country => "country",
            FieldId::Contacts => "contacts",
            FieldId::Solutions => "solutions",
        }
    }

    /// The Partner Center JSON path of the field, as used in error messages
    /// (`details.dealValue`).
    pub fn referral_path(self) -> &'static str {
        match self {
            FieldId::Name => "name",
            FieldId::Status => "status",
            FieldId::DealValue => "details.dealValue",
            FieldId::Currency => "details.currency",
            FieldId::CloseDate => "details.closingDateTime",
            FieldId::Notes => "details.notes",
            FieldId::HelpRequired => "inviteContext.assistanceRequestCode",
            FieldId::VisibleToMicrosoft => "consent.consentToShareReferralWithMicrosoftSellers",
            FieldId::MicrosoftCrmId => "trackingInfo.microsoftMsxId",
            FieldId::CustomerName => "customerProfile.name",
            FieldId::AddressLine1 => "customerProfile.address.addressLine1",
            FieldId::AddressLine2 => "customerProfile.address.addressLine2",
            FieldId::City => "customerProfile.address.city",
            FieldId::State => "customerProfile.address.state",
            FieldId::PostalCode => "customerProfile.address.postalCode",
            FieldId::Country => "customerProfile.address.country",
            FieldId::Contacts => "customerProfile.team",
            FieldId::Solutions => "details.requirements.solutions",
        }
    }
}

impl fmt::Display for FieldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A referral's position in its lifecycle: `status` and `substatus` together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReferralState {
    /// `status`.
    pub status: ReferralStatus,
    /// `substatus`.
    pub substatus: ReferralSubstatus,
}

impl ReferralState {
    /// Builds a state.
    pub fn new(status: ReferralStatus, substatus: ReferralSubstatus) -> Self {
        Self { status, substatus }
    }

    /// How far along the lifecycle this state is: 0 none, 1 new (pending/received), 2 accepted,
    /// 3 closed. Used by the [`Policy::Furthest`] merge policy.
    pub fn rank(&self) -> u8 {
        match self.substatus {
            ReferralSubstatus::Pending | ReferralSubstatus::Received => 1,
            ReferralSubstatus::Accepted => 2,
            ReferralSubstatus::Won
            | ReferralSubstatus::Lost
            | ReferralSubstatus::Declined
            | ReferralSubstatus::Expired => 3,
            _ => match self.status {
                ReferralStatus::New => 1,
                ReferralStatus::Active => 2,
                ReferralStatus::Closed => 3,
                _ => 0,
            },
        }
    }

    /// Whether the state is terminal (won, lost, declined, expired).
    pub fn is_terminal(&self) -> bool {
        self.substatus.is_terminal()
    }

    /// Reads the `Status/Substatus` text [`Display`](fmt::Display) writes; `None` without the
    /// `/`.
    ///
    /// ```
    /// use cosell_mapping::ReferralState;
    /// let s = ReferralState::parse("Closed/Declined").unwrap();
    /// assert_eq!(s.to_string(), "Closed/Declined");
    /// assert_eq!(ReferralState::parse("Closed"), None);
    /// ```
    pub fn parse(s: &str) -> Option<Self> {
        let (status, substatus) = s.split_once('/')?;
        Some(Self::new(
            ReferralStatus::from(status),
            ReferralSubstatus::from(substatus),
        ))
    }
}

impl fmt::Display for ReferralState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.status, self.substatus)
    }
}

/// A customer contact (`customerProfile.team[]` ↔ a contact row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContactValue {
    /// First name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// E-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Job title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl ContactValue {
    /// Whether every part is empty.
    pub fn is_empty(&self) -> bool {
        self.first_name.is_none()
            && self.last_name.is_none()
            && self.email.is_none()
            && self.phone.is_none()
            && self.title.is_none()
    }

    /// The key the engine matches existing contacts by: the e-mail address, trimmed and
    /// lower-cased; `None` without one.
    pub fn match_key(&self) -> Option<String> {
        self.email.as_deref().map(|e| e.trim().to_lowercase())
    }
}

/// A solution on the referral (`details.requirements.solutions[]` ↔ a solution row).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SolutionValue {
    /// Solution id (`SOL-34104-EBB` or a GUID for Microsoft solutions).
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Solution type (`Name`, `Category`, `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solution_type: Option<String>,
    /// Publisher name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
}

/// The value of one mapped field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum FieldValue {
    /// Text (never empty: an empty string is an absent field).
    Text(String),
    /// A decimal, normalised (no trailing zeros) so equal amounts compare and serialise equal.
    Decimal(Decimal),
    /// A calendar date.
    Date(NaiveDate),
    /// A yes/no value.
    Bool(bool),
    /// Lifecycle state.
    Status(ReferralState),
    /// Customer contacts, in Partner Center's order.
    Contacts(Vec<ContactValue>),
    /// Solutions, sorted by id, without duplicates.
    Solutions(Vec<SolutionValue>),
}

impl FieldValue {
    /// A decimal value, normalised.
    pub fn decimal(d: Decimal) -> Self {
        FieldValue::Decimal(d.normalize())
    }

    /// A solution list, sorted by id and de-duplicated by id.
    pub fn solutions(mut list: Vec<SolutionValue>) -> Self {
        list.sort();
        list.dedup_by(|a, b| a.id == b.id);
        FieldValue::Solutions(list)
    }

    /// The value as text, when it is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            FieldValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a decimal, when it is one.
    pub fn as_decimal(&self) -> Option<Decimal> {
        match self {
            FieldValue::Decimal(d) => Some(*d),
            _ => None,
        }
    }

    /// The value as a date, when it is one.
    pub fn as_date(&self) -> Option<NaiveDate> {
        match self {
            FieldValue::Date(d) => Some(*d),
            _ => None,
        }
    }

    /// The value as a yes/no, when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            FieldValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The value as a lifecycle state, when it is one.
    pub fn as_status(&self) -> Option<&ReferralState> {
        match self {
            FieldValue::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The value as contacts, when it is a contact list.
    pub fn as_contacts(&self) -> Option<&[ContactValue]> {
        match self {
            FieldValue::Contacts(c) => Some(c),
            _ => None,
        }
    }

    /// The value as solutions, when it is a solution list.
    pub fn as_solutions(&self) -> Option<&[SolutionValue]> {
        match self {
            FieldValue::Solutions(s) => Some(s),
            _ => None,
        }
    }
}

/// The mapped fields of one referral, side-independent, ordered by [`FieldId`].
///
/// Absent fields are simply not in the map; empty text and empty lists are never stored, so two
/// snapshots are equal exactly when every mapped field is. Serialises as a JSON object keyed by
/// the snake_case field names, in field order, so the engine can store it as the merge base.
///
/// ```
/// use cosell_mapping::{FieldId, FieldValue, MappedSnapshot};
/// let mut s = MappedSnapshot::new();
/// s.set(FieldId::Name, FieldValue::Text("Contoso".into()));
/// s.set(FieldId::Notes, FieldValue::Text(String::new())); // empty: absent
/// assert_eq!(s.len(), 1);
/// let json = serde_json::to_string(&s).unwrap();
/// assert_eq!(json, r#"{"name":{"kind":"text","value":"Contoso"}}"#);
/// assert_eq!(serde_json::from_str::<MappedSnapshot>(&json).unwrap(), s);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MappedSnapshot {
    fields: BTreeMap<FieldId, FieldValue>,
}

impl MappedSnapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a field; an empty text or empty list removes it instead.
    pub fn set(&mut self, field: FieldId, value: FieldValue) {
        let empty = match &value {
            FieldValue::Text(s) => s.is_empty(),
            FieldValue::Contacts(c) => c.is_empty(),
            FieldValue::Solutions(s) => s.is_empty(),
            _ => false,
        };
        if empty {
            self.fields.remove(&field);
        } else {
            self.fields.insert(field, value);
        }
    }

    /// Sets or removes a field.
    pub fn set_opt(&mut self, field: FieldId, value: Option<FieldValue>) {
        match value {
            Some(v) => self.set(field, v),
            None => {
                self.fields.remove(&field);
            }
        }
    }

    /// Removes a field, returning its value.
    pub fn remove(&mut self, field: FieldId) -> Option<FieldValue> {
        self.fields.remove(&field)
    }

    /// The value of a field.
    pub fn get(&self, field: FieldId) -> Option<&FieldValue> {
        self.fields.get(&field)
    }

    /// Text of a field, when present and text.
    pub fn text(&self, field: FieldId) -> Option<&str> {
        self.get(field).and_then(FieldValue::as_text)
    }

    /// The lifecycle state, when present.
    pub fn status(&self) -> Option<&ReferralState> {
        self.get(FieldId::Status).and_then(FieldValue::as_status)
    }

    /// The customer contacts (empty when absent).
    pub fn contacts(&self) -> &[ContactValue] {
        self.get(FieldId::Contacts)
            .and_then(FieldValue::as_contacts)
            .unwrap_or(&[])
    }

    /// The solutions (empty when absent).
    pub fn solutions(&self) -> &[SolutionValue] {
        self.get(FieldId::Solutions)
            .and_then(FieldValue::as_solutions)
            .unwrap_or(&[])
    }

    /// Whether Microsoft help is requested: an assistance request code other than `Unknown`.
    /// This is what makes a referral co-sell.
    pub fn is_co_sell(&self) -> bool {
        self.text(FieldId::HelpRequired)
            .is_some_and(|code| !code.eq_ignore_ascii_case("Unknown"))
    }

    /// Number of present fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether no field is present.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The present fields in [`FieldId`] order.
    pub fn iter(&self) -> impl Iterator<Item = (FieldId, &FieldValue)> {
        self.fields.iter().map(|(k, v)| (*k, v))
    }

    /// The fields that differ from `base`, in [`FieldId`] order (see [`diff`]).
    pub fn changes_since(&self, base: &MappedSnapshot) -> Vec<FieldChange> {
        diff(base, self)
    }
}

impl FromIterator<(FieldId, FieldValue)> for MappedSnapshot {
    fn from_iter<T: IntoIterator<Item = (FieldId, FieldValue)>>(iter: T) -> Self {
        let mut s = MappedSnapshot::new();
        for (k, v) in iter {
            s.set(k, v);
        }
        s
    }
}

/// One field that differs between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The field.
    pub field: FieldId,
    /// Its value before (`None`: absent).
    pub before: Option<FieldValue>,
    /// Its value after (`None`: removed).
    pub after: Option<FieldValue>,
}

/// The fields whose value differs between `base` and `current`, in [`FieldId`] order. Empty
/// exactly when the snapshots are equal — the echo test.
///
/// ```
/// use cosell_mapping::{diff, FieldId, FieldValue, MappedSnapshot};
/// let base: MappedSnapshot = [(FieldId::Name, FieldValue::Text("A".into()))].into_iter().collect();
/// let cur: MappedSnapshot = [(FieldId::Name, FieldValue::Text("B".into()))].into_iter().collect();
/// let changes = diff(&base, &cur);
/// assert_eq!(changes.len(), 1);
/// assert_eq!(changes[0].field, FieldId::Name);
/// assert!(diff(&cur, &cur).is_empty());
/// ```
pub fn diff(base: &MappedSnapshot, current: &MappedSnapshot) -> Vec<FieldChange> {
    FieldId::ALL
        .iter()
        .filter_map(|&field| {
            let before = base.get(field);
            let after = current.get(field);
            (before != after).then(|| FieldChange {
                field,
                before: before.cloned(),
                after: after.cloned(),
            })
        })
        .collect()
}

/// One of the two synchronised systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Partner Center (the referral).
    PartnerCenter,
    /// The CRM (Dynamics 365).
    Crm,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::PartnerCenter => Side::Crm,
            Side::Crm => Side::PartnerCenter,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::PartnerCenter => "partner_center",
            Side::Crm => "crm",
        })
    }
}

/// How a field changed on both sides to different values is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Partner Center's value wins (Microsoft-owned fields).
    PartnerCenter,
    /// The CRM's value wins (partner-owned fields).
    Crm,
    /// The value further along a one-way order wins, whichever side holds it: the later
    /// lifecycle state for `status` (ties between closed states: Won, Lost, Declined, Expired in
    /// that order), `true` over `false` for `visible_to_microsoft`. Only valid for those two.
    Furthest,
}

impl Policy {
    /// The policy with the sides swapped.
    pub fn mirrored(self) -> Policy {
        match self {
            Policy::PartnerCenter => Policy::Crm,
            Policy::Crm => Policy::PartnerCenter,
            Policy::Furthest => Policy::Furthest,
        }
    }
}

/// Which side wins each field changed on both sides. Fields not listed follow the CRM.
///
/// The default follows DESIGN §4: Microsoft-owned fields (status, Microsoft CRM identifier)
/// follow Partner Center; visibility follows [`Policy::Furthest`] because it is one-way; all
/// other fields, including deal value, close date and notes, follow the CRM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OwnershipPolicy {
    fields: BTreeMap<FieldId, Policy>,
}

impl Default for OwnershipPolicy {
    fn default() -> Self {
        let mut fields = BTreeMap::new();
        for f in FieldId::ALL {
            let p = match f {
                FieldId::Status | FieldId::MicrosoftCrmId => Policy::PartnerCenter,
                FieldId::VisibleToMicrosoft => Policy::Furthest,
                _ => Policy::Crm,
            };
            fields.insert(f, p);
        }
        Self { fields }
    }
}

impl OwnershipPolicy {
    /// A policy giving every field to one side.
    pub fn all(policy: Policy) -> Self {
        Self {
            fields: FieldId::ALL.iter().map(|&f| (f, policy)).collect(),
        }
    }

    /// The policy of a field.
    pub fn policy(&self, field: FieldId) -> Policy {
        self.fields.get(&field).copied().unwrap_or(Policy::Crm)
    }

    /// Sets the policy of a field.
    pub fn set(&mut self, field: FieldId, policy: Policy) {
        self.fields.insert(field, policy);
    }

    /// The same policy with Partner Center and the CRM swapped everywhere.
    pub fn mirrored(&self) -> Self {
        Self {
            fields: FieldId::ALL
                .iter()
                .map(|&f| (f, self.policy(f).mirrored()))
                .collect(),
        }
    }
}

/// A field both sides changed to different values since the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// The field.
    pub field: FieldId,
    /// Its value in the base.
    pub base: Option<FieldValue>,
    /// Its value in the CRM.
    pub crm: Option<FieldValue>,
    /// Its value in Partner Center.
    pub partner_center: Option<FieldValue>,
    /// The policy that decided.
    pub policy: Policy,
    /// The side whose value was kept.
    pub winner: Side,
}

impl Conflict {
    /// The same conflict with the sides swapped (and the policy mirrored).
    pub fn mirrored(&self) -> Conflict {
        Conflict {
            field: self.field,
            base: self.base.clone(),
            crm: self.partner_center.clone(),
            partner_center: self.crm.clone(),
            policy: self.policy.mirrored(),
            winner: self.winner.other(),
        }
    }

    /// The value that was kept.
    pub fn resolved(&self) -> Option<&FieldValue> {
        match self.winner {
            Side::Crm => self.crm.as_ref(),
            Side::PartnerCenter => self.partner_center.as_ref(),
        }
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<FieldValue>| match v {
            Some(v) => serde_json::to_string(v).unwrap_or_default(),
            None => "absent".to_string(),
        };
        write!(
            f,
            "conflict on {}: base {}, crm {}, partner_center {}; {} wins ({:?})",
            self.field,
            show(&self.base),
            show(&self.crm),
            show(&self.partner_center),
            self.winner,
            self.policy
        )
    }
}

/// The result of a three-way merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merge {
    /// The merged snapshot: what both sides should hold afterwards.
    pub merged: MappedSnapshot,
    /// Fields changed on both sides to different values, with the side that won, for the audit
    /// trail.
    pub conflicts: Vec<Conflict>,
}

/// Three-way merge of the CRM's and Partner Center's snapshots against the last synced `base`.
///
/// For each field: unchanged on both sides keeps the base; changed on one side takes that side;
/// changed on both to the same value takes it; changed on both to different values is a
/// [`Conflict`] resolved by `policy`.
///
/// Properties (checked by the property tests): `merge(b, x, x, p).merged == x`; a one-sided
/// change is never lost; `merge(b, x, y, p)` and `merge(b, y, x, p.mirrored())` give the same
/// merged snapshot and mirrored conflicts.
///
/// ```
/// use cosell_mapping::{merge, FieldId, FieldValue, MappedSnapshot, OwnershipPolicy, Side};
/// let text = |s: &str| FieldValue::Text(s.into());
/// let base: MappedSnapshot = [(FieldId::Notes, text("a")), (FieldId::Name, text("n"))].into_iter().collect();
/// let crm: MappedSnapshot = [(FieldId::Notes, text("crm")), (FieldId::Name, text("n"))].into_iter().collect();
/// let pc: MappedSnapshot = [(FieldId::Notes, text("pc")), (FieldId::Name, text("renamed"))].into_iter().collect();
/// let m = merge(&base, &crm, &pc, &OwnershipPolicy::default());
/// assert_eq!(m.merged.text(FieldId::Notes), Some("crm")); // notes are partner-owned
/// assert_eq!(m.merged.text(FieldId::Name), Some("renamed")); // one-sided change
/// assert_eq!(m.conflicts.len(), 1);
/// assert_eq!(m.conflicts[0].winner, Side::Crm);
/// ```
pub fn merge(
    base: &MappedSnapshot,
    crm: &MappedSnapshot,
    partner_center: &MappedSnapshot,
    policy: &OwnershipPolicy,
) -> Merge {
    merge_sides(&PairState::settled(base), crm, partner_center, policy)
}

/// What the engine knows of a pair before a pass: the target both sides should hold (the
/// durable plan) and, per side, what that side was last known to hold. When the pair is in sync
/// all three are equal; after a partial write (one side written, the other not) they differ, and
/// the difference is pending work, not anybody's edit.
#[derive(Debug, Clone, Copy)]
pub struct PairState<'a> {
    /// What both sides should hold.
    pub target: &'a MappedSnapshot,
    /// What the CRM side was last known to hold.
    pub crm_known: &'a MappedSnapshot,
    /// What Partner Center was last known to hold.
    pub partner_center_known: &'a MappedSnapshot,
}

impl<'a> PairState<'a> {
    /// A pair in sync at `base`: target and both sides equal.
    pub fn settled(base: &'a MappedSnapshot) -> Self {
        PairState {
            target: base,
            crm_known: base,
            partner_center_known: base,
        }
    }
}

/// The per-side generalisation of [`merge`]: for each field, an **edit** on a side is a value
/// that differs both from what that side was last known to hold and from the target (a side
/// that reached the target, for example because a write whose answer was lost did land, has not
/// been edited). No edit keeps the target, an edit on one side takes it, edits on both sides to
/// different values are a [`Conflict`] resolved by `policy`.
///
/// With all three of `state` equal this is exactly [`merge`].
///
/// ```
/// use cosell_mapping::{merge_sides, FieldId, FieldValue, MappedSnapshot, OwnershipPolicy, PairState};
/// let notes = |s: &str| -> MappedSnapshot { [(FieldId::Notes, FieldValue::Text(s.into()))].into_iter().collect() };
/// // Microsoft changed the notes to "b"; the CRM was written, Partner Center's answer was lost...
/// let (target, crm_known, pc_known) = (notes("b"), notes("b"), notes("a"));
/// let state = PairState { target: &target, crm_known: &crm_known, partner_center_known: &pc_known };
/// // ...and the seller has since typed "c": a one-sided edit, nothing else.
/// let m = merge_sides(&state, &notes("c"), &notes("b"), &OwnershipPolicy::default());
/// assert_eq!(m.merged.text(FieldId::Notes), Some("c"));
/// assert!(m.conflicts.is_empty());
/// ```
pub fn merge_sides(
    state: &PairState<'_>,
    crm: &MappedSnapshot,
    partner_center: &MappedSnapshot,
    policy: &OwnershipPolicy,
) -> Merge {
    let mut merged = MappedSnapshot::new();
    let mut conflicts = Vec::new();
    for field in FieldId::ALL {
        let t = state.target.get(field);
        let c = crm.get(field);
        let p = partner_center.get(field);
        let crm_edit = c != state.crm_known.get(field) && c != t;
        let pc_edit = p != state.partner_center_known.get(field) && p != t;
        let value = match (crm_edit, pc_edit) {
            (false, false) => t,
            (true, false) => c,
            (false, true) => p,
            (true, true) if c == p => c,
            (true, true) => {
                let pol = policy.policy(field);
                let winner = match pol {
                    Policy::Crm => Side::Crm,
                    Policy::PartnerCenter => Side::PartnerCenter,
                    Policy::Furthest => furthest(c, p),
                };
                conflicts.push(Conflict {
                    field,
                    base: t.cloned(),
                    crm: c.cloned(),
                    partner_center: p.cloned(),
                    policy: pol,
                    winner,
                });
                match winner {
                    Side::Crm => c,
                    Side::PartnerCenter => p,
                }
            }
        };
        merged.set_opt(field, value.cloned());
    }
    Merge { merged, conflicts }
}

/// Which side holds the value further along; symmetric (depends only on the values).
fn furthest(crm: Option<&FieldValue>, pc: Option<&FieldValue>) -> Side {
    if order_key(crm) >= order_key(pc) {
        Side::Crm
    } else {
        Side::PartnerCenter
    }
}

/// A total order on values for [`Policy::Furthest`]; distinct values never tie, so the winner
/// does not depend on which side holds which value.
fn order_key(v: Option<&FieldValue>) -> (u8, u8, String) {
    match v {
        None => (0, 0, String::new()),
        Some(FieldValue::Bool(b)) => (1, u8::from(*b), String::new()),
        Some(FieldValue::Status(s)) => {
            let closed = match s.substatus {
                ReferralSubstatus::Won => 4,
                ReferralSubstatus::Lost => 3,
                ReferralSubstatus::Declined => 2,
                ReferralSubstatus::Expired => 1,
                _ => 0,
            };
            (s.rank() + 1, closed, s.to_string())
        }
        Some(other) => (1, 0, serde_json::to_string(other).unwrap_or_default()),
    }
}
