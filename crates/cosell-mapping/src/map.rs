//! [`FieldMap`]: the validated configuration and every conversion built on it.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use partner_center_client::models::{
    AdditionalRequirements, Address, AssistanceRequestCode, Consent, CustomerMarketplaceIntent,
    CustomerProfile, InviteContext, Member, PatchOperation, Referral, ReferralDetails,
    ReferralQualification, ReferralStatus, ReferralSubstatus, ReferralType, Requirements,
    SolutionTag, SolutionType, TrackingInfo, check_transition,
};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::config::{MappingConfig, MatchField};
use crate::crm::{
    AccountMatchKey, AccountPayload, AlternateKey, Bind, BindTarget, ContactPayload, CrmPayload,
    CrmRecords, Record, SolutionPayload,
};
use crate::error::{ConfigError, MappingError, Rule};
use crate::mark::{SyncOutcome, apply_mark, audit_entry, strip_mark};
use crate::snapshot::{
    ContactValue, FieldId, FieldValue, MappedSnapshot, OwnershipPolicy, ReferralState,
    SolutionValue, diff,
};
use crate::status::{CrmStatus, RecordKind};

/// The identity of a referral on the CRM record: not merged, set once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralIdentity {
    /// Referral id (the upsert key).
    pub referral_id: String,
    /// Engagement id.
    pub engagement_id: Option<String>,
}

impl ReferralIdentity {
    /// The identity of a referral read from Partner Center; `None` when it has no id.
    pub fn of(referral: &Referral) -> Option<Self> {
        let id = referral.id.as_deref().filter(|s| !s.is_empty())?;
        Some(Self {
            referral_id: id.to_string(),
            engagement_id: referral.engagement_id.clone(),
        })
    }
}

/// An update of an existing referral: JSON Patch operations for the writable paths, plus the
/// changed fields Partner Center does not let a partner write (customer name and address, the
/// name, the Microsoft CRM identifier, the help request, and removals of the non-nullable deal
/// value, currency and closing date), for the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferralUpdate {
    /// Operations for `PATCH /referrals/{id}` (arrays are replaced whole, so a retry is safe).
    pub operations: Vec<PatchOperation>,
    /// Changed fields with no writable path.
    pub not_writable: Vec<FieldId>,
}

impl ReferralUpdate {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }
}

/// A validated field map: the configuration plus the conversions between referrals, mapped
/// snapshots and CRM records. Cheap to share (`&FieldMap` everywhere; no interior state).
///
/// ```
/// use cosell_mapping::FieldMap;
/// let map = FieldMap::default();
/// assert!(map.config().display_check_mark);
/// assert_eq!(map.config().deal_value_field, "estimatedvalue");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMap {
    config: MappingConfig,
    ownership: OwnershipPolicy,
    help_by_value: BTreeMap<i64, String>,
}

impl Default for FieldMap {
    fn default() -> Self {
        let config = MappingConfig::default();
        Self::build(config)
    }
}

fn text(s: Option<&str>) -> Option<FieldValue> {
    s.filter(|s| !s.trim().is_empty())
        .map(|s| FieldValue::Text(s.to_string()))
}

fn opt_string(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty()).map(str::to_string)
}

fn json_text(v: Option<&String>) -> Value {
    v.map_or(Value::Null, |s| Value::String(s.clone()))
}

/// A decimal as a JSON number. Integers stay integers; others are written from their decimal
/// text (JSON numbers are doubles on the wire: exact up to 15 significant digits, which covers
/// Dataverse's Money range with 2 decimals).
fn decimal_json(d: Decimal) -> Value {
    let n = d.normalize();
    if n.scale() == 0
        && let Ok(i) = i64::try_from(n)
    {
        return Value::from(i);
    }
    Number::from_str(&n.to_string()).map_or(Value::Null, Value::Number)
}

fn date_at_midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(NaiveTime::MIN).and_utc()
}

fn valid_country(field: &str, raw: &str) -> Result<String, MappingError> {
    let code = raw.trim().to_ascii_uppercase();
    if code.len() == 2
        && code.chars().all(|c| c.is_ascii_alphabetic())
        && celes::Country::from_alpha2(&code).is_ok()
    {
        Ok(code)
    } else {
        Err(MappingError::new(field, raw, Rule::InvalidCountry))
    }
}

fn valid_currency(field: &str, raw: &str) -> Result<String, MappingError> {
    let code = raw.trim().to_ascii_uppercase();
    if iso_currency::Currency::from_code(&code).is_some() {
        Ok(code)
    } else {
        Err(MappingError::new(field, raw, Rule::InvalidCurrency))
    }
}

impl FieldMap {
    /// Validates `config` and builds the map.
    pub fn new(config: MappingConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self::build(config))
    }

    fn build(config: MappingConfig) -> Self {
        let ownership = config.ownership_policy();
        let help_by_value = config
            .choices
            .help_required
            .iter()
            .map(|(k, v)| (*v, k.clone()))
            .collect();
        Self {
            config,
            ownership,
            help_by_value,
        }
    }

    /// Parses and validates a TOML field map. Unknown keys, wrong types and invalid values are
    /// errors naming the key path.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let line = e
                .span()
                .map(|r| text[..r.start.min(text.len())].lines().count().max(1))
                .unwrap_or(1);
            ConfigError::syntax(format!("line {line}"), e.message().to_string())
        })?;
        let config: MappingConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let message = e.inner().message().to_string();
            let mut key = e.path().to_string();
            if key == "." {
                key.clear();
            }
            // An unknown key of a map table (`[ownership] budget = ...`) is reported at the
            // table; name the key itself, as for struct tables.
            if let Some(name) = message
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
                && !key.ends_with(name)
            {
                key = if key.is_empty() {
                    name.to_string()
                } else {
                    format!("{key}.{name}")
                };
            }
            ConfigError::syntax(key, message)
        })?;
        Self::new(config)
    }

    /// The configuration.
    pub fn config(&self) -> &MappingConfig {
        &self.config
    }

    /// The effective per-field conflict policy.
    pub fn ownership(&self) -> &OwnershipPolicy {
        &self.ownership
    }

    fn round_money(&self, d: Decimal) -> Decimal {
        d.round_dp_with_strategy(
            self.config.money_precision,
            RoundingStrategy::MidpointAwayFromZero,
        )
        .normalize()
    }

    /// The link to a referral in Partner Center, from
    /// [`referral_link_template`](MappingConfig::referral_link_template).
    pub fn referral_link(&self, identity: &ReferralIdentity) -> String {
        self.config
            .referral_link_template
            .replace("{id}", &identity.referral_id)
            .replace(
                "{engagement_id}",
                identity.engagement_id.as_deref().unwrap_or(""),
            )
    }

    // ---------------------------------------------------------------- referral -> snapshot

    /// The mapped fields of a referral. Fails on a country that is not ISO 3166 alpha-2 or a
    /// currency that is not ISO 4217. Any leading check mark is removed from the name; the deal
    /// value is rounded to [`money_precision`](MappingConfig::money_precision).
    pub fn snapshot_from_referral(
        &self,
        referral: &Referral,
    ) -> Result<MappedSnapshot, MappingError> {
        let mut s = MappedSnapshot::new();
        s.set_opt(
            FieldId::Name,
            text(referral.name.as_deref().map(strip_mark)),
        );
        if referral.status.is_some() || referral.substatus.is_some() {
            let (status, substatus) = referral.status_pair();
            s.set(
                FieldId::Status,
                FieldValue::Status(ReferralState::new(status, substatus)),
            );
        }
        if let Some(d) = &referral.details {
            if let Some(v) = d.deal_value {
                s.set(FieldId::DealValue, FieldValue::decimal(self.round_money(v)));
            }
            if let Some(c) = opt_string(d.currency.as_deref()) {
                let code = valid_currency(FieldId::Currency.referral_path(), &c)?;
                s.set(FieldId::Currency, FieldValue::Text(code));
            }
            if let Some(at) = d.closing_date_time {
                s.set(FieldId::CloseDate, FieldValue::Date(at.date_naive()));
            }
            s.set_opt(FieldId::Notes, text(d.notes.as_deref()));
            let solutions = referral
                .solutions()
                .iter()
                .filter(|t| !t.id.trim().is_empty())
                .map(|t| SolutionValue {
                    id: t.id.clone(),
                    name: opt_string(t.name.as_deref()),
                    solution_type: t
                        .r#type
                        .as_ref()
                        .map(|t| t.as_str().to_string())
                        .filter(|t| !t.is_empty()),
                    publisher: opt_string(t.publisher_name.as_deref()),
                })
                .collect();
            s.set(FieldId::Solutions, FieldValue::solutions(solutions));
        }
        if let Some(code) = referral
            .invite_context
            .as_ref()
            .and_then(|i| i.assistance_request_code.as_ref())
        {
            s.set_opt(FieldId::HelpRequired, text(Some(code.as_str())));
        }
        if let Some(v) = referral
            .consent
            .as_ref()
            .and_then(|c| c.consent_to_share_referral_with_microsoft_sellers)
        {
            s.set(FieldId::VisibleToMicrosoft, FieldValue::Bool(v));
        }
        s.set_opt(
            FieldId::MicrosoftCrmId,
            text(
                referral
                    .tracking_info
                    .as_ref()
                    .and_then(|t| t.microsoft_msx_id.as_deref()),
            ),
        );
        if let Some(p) = &referral.customer_profile {
            s.set_opt(FieldId::CustomerName, text(p.name.as_deref()));
            if let Some(a) = &p.address {
                s.set_opt(FieldId::AddressLine1, text(a.address_line1.as_deref()));
                s.set_opt(FieldId::AddressLine2, text(a.address_line2.as_deref()));
                s.set_opt(FieldId::City, text(a.city.as_deref()));
                s.set_opt(FieldId::State, text(a.state.as_deref()));
                s.set_opt(FieldId::PostalCode, text(a.postal_code.as_deref()));
                if let Some(c) = opt_string(a.country.as_deref()) {
                    let code = valid_country(FieldId::Country.referral_path(), &c)?;
                    s.set(FieldId::Country, FieldValue::Text(code));
                }
            }
            let contacts: Vec<ContactValue> = p
                .team
                .as_deref()
                .unwrap_or(&[])
                .iter()
                .map(|m| ContactValue {
                    first_name: opt_string(m.first_name.as_deref()),
                    last_name: opt_string(m.last_name.as_deref()),
                    email: opt_string(m.email.as_deref()),
                    phone: opt_string(m.phone_number.as_deref()),
                    title: opt_string(m.title.as_deref()),
                })
                .filter(|c| !c.is_empty())
                .collect();
            s.set(FieldId::Contacts, FieldValue::Contacts(contacts));
        }
        Ok(s)
    }

    // ---------------------------------------------------------------- snapshot -> CRM

    /// Maps a referral straight to its CRM payload (see [`to_crm`](Self::to_crm)).
    pub fn map_referral(
        &self,
        referral: &Referral,
        existing: Option<RecordKind>,
    ) -> Result<CrmPayload, MappingError> {
        let identity = ReferralIdentity::of(referral)
            .ok_or_else(|| MappingError::new("id", "", Rule::Missing))?;
        let snapshot = self.snapshot_from_referral(referral)?;
        self.to_crm(&snapshot, &identity, existing)
    }

    /// The CRM payload for a snapshot: a lead while the referral is new, an opportunity once it
    /// is accepted (and for closed ones; `existing` says which table already holds the
    /// referral, which decides where a declined or expired one lands). Mapped fields that are
    /// absent are written as `null` so removals propagate. The name carries ✔ when
    /// [`display_check_mark`](MappingConfig::display_check_mark) is on: the payload is what a
    /// successful sync writes.
    pub fn to_crm(
        &self,
        snapshot: &MappedSnapshot,
        identity: &ReferralIdentity,
        existing: Option<RecordKind>,
    ) -> Result<CrmPayload, MappingError> {
        let state = snapshot.status().cloned().unwrap_or(ReferralState::new(
            ReferralStatus::Active,
            ReferralSubstatus::Accepted,
        ));
        let status = self.config.status.crm_status(&state, existing)?;
        match status.kind {
            RecordKind::Opportunity => self.opportunity_payload(snapshot, identity, status),
            RecordKind::Lead => self.lead_payload(snapshot, identity, status),
        }
    }

    fn display_name(&self, snapshot: &MappedSnapshot) -> Result<Value, MappingError> {
        let name = snapshot
            .text(FieldId::Name)
            .ok_or_else(|| MappingError::new(FieldId::Name.referral_path(), "", Rule::Missing))?;
        Ok(Value::String(if self.config.display_check_mark {
            apply_mark(name, SyncOutcome::Success)
        } else {
            name.to_string()
        }))
    }

    fn put_text(r: &mut Record, col: &str, s: &MappedSnapshot, f: FieldId) {
        r.insert(
            col.to_string(),
            s.text(f)
                .map_or(Value::Null, |t| Value::String(t.to_string())),
        );
    }

    fn put_common(&self, r: &mut Record, s: &MappedSnapshot, deal_col: &str, close_col: &str) {
        r.insert(
            deal_col.to_string(),
            s.get(FieldId::DealValue)
                .and_then(FieldValue::as_decimal)
                .map_or(Value::Null, decimal_json),
        );
        r.insert(
            close_col.to_string(),
            s.get(FieldId::CloseDate)
                .and_then(FieldValue::as_date)
                .map_or(Value::Null, |d| {
                    Value::String(d.format("%Y-%m-%d").to_string())
                }),
        );
    }

    fn apply_defaults(r: &mut Record, defaults: &BTreeMap<String, Value>) {
        for (k, v) in defaults {
            let mapped = r.get(k).is_some_and(|v| !v.is_null());
            if !mapped {
                r.insert(k.clone(), v.clone());
            }
        }
    }

    fn currency_bind(&self, s: &MappedSnapshot, nav: &str, required: bool) -> Option<Bind> {
        s.text(FieldId::Currency).map(|code| Bind {
            navigation_property: nav.to_string(),
            target: BindTarget::Currency {
                code: code.to_string(),
            },
            required,
        })
    }

    fn country(&self, s: &MappedSnapshot) -> Result<Option<String>, MappingError> {
        s.text(FieldId::Country)
            .map(|c| valid_country(FieldId::Country.referral_path(), c))
            .transpose()
    }

    fn opportunity_payload(
        &self,
        s: &MappedSnapshot,
        identity: &ReferralIdentity,
        status: CrmStatus,
    ) -> Result<CrmPayload, MappingError> {
        let cfg = &self.config;
        let c = &cfg.columns.opportunity;
        if let Some(code) = s.text(FieldId::Currency) {
            valid_currency(FieldId::Currency.referral_path(), code)?;
        }
        let mut r = Record::new();
        r.insert(c.name.clone(), self.display_name(s)?);
        Self::put_text(&mut r, &c.description, s, FieldId::Notes);
        self.put_common(&mut r, s, &cfg.deal_value_field, &c.close_date);
        r.insert(c.sync_with_partner_center.clone(), Value::Bool(true));
        r.insert(
            c.referral_id.clone(),
            Value::String(identity.referral_id.clone()),
        );
        r.insert(
            c.engagement_id.clone(),
            json_text(identity.engagement_id.as_ref()),
        );
        r.insert(
            c.referral_link.clone(),
            Value::String(self.referral_link(identity)),
        );
        let help = match s.text(FieldId::HelpRequired) {
            None => Value::Null,
            Some(code) => {
                let v = self
                    .config
                    .choices
                    .help_required
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(code))
                    .map(|(_, v)| *v)
                    .ok_or_else(|| {
                        MappingError::new(
                            FieldId::HelpRequired.referral_path(),
                            code,
                            Rule::UnknownChoice,
                        )
                    })?;
                Value::from(v)
            }
        };
        r.insert(c.help_required.clone(), help);
        r.insert(
            c.visible_to_microsoft.clone(),
            s.get(FieldId::VisibleToMicrosoft)
                .and_then(FieldValue::as_bool)
                .map_or(Value::Null, Value::Bool),
        );
        Self::put_text(&mut r, &c.microsoft_crm_id, s, FieldId::MicrosoftCrmId);
        Self::apply_defaults(&mut r, &cfg.defaults.opportunity);

        let mut binds = vec![
            Bind {
                navigation_property: c.customer_account_bind.clone(),
                target: BindTarget::Account,
                required: true,
            },
            Bind {
                navigation_property: c.parent_account_bind.clone(),
                target: BindTarget::Account,
                required: false,
            },
        ];
        let contacts = self.contact_payloads(s);
        if !contacts.is_empty() {
            binds.push(Bind {
                navigation_property: c.parent_contact_bind.clone(),
                target: BindTarget::Contact { index: 0 },
                required: false,
            });
        }
        binds.extend(self.currency_bind(s, &c.currency_bind, true));

        let sc = &cfg.columns.solution;
        let solutions = s
            .solutions()
            .iter()
            .map(|sol| {
                let mut rec = Record::new();
                rec.insert(sc.solution_id.clone(), Value::String(sol.id.clone()));
                rec.insert(sc.name.clone(), json_text(sol.name.as_ref()));
                rec.insert(
                    sc.solution_type.clone(),
                    json_text(sol.solution_type.as_ref()),
                );
                rec.insert(sc.publisher.clone(), json_text(sol.publisher.as_ref()));
                SolutionPayload {
                    key: AlternateKey {
                        entity_set: sc.entity_set.clone(),
                        column: sc.solution_id.clone(),
                        value: sol.id.clone(),
                    },
                    record: rec,
                }
            })
            .collect();

        Ok(CrmPayload {
            kind: RecordKind::Opportunity,
            entity: c.entity.clone(),
            key: AlternateKey {
                entity_set: c.entity_set.clone(),
                column: c.referral_id.clone(),
                value: identity.referral_id.clone(),
            },
            record: r,
            binds,
            status,
            account: Some(self.account_payload(s)?),
            contacts,
            solutions,
            solutions_removed: Vec::new(),
        })
    }

    fn account_payload(&self, s: &MappedSnapshot) -> Result<AccountPayload, MappingError> {
        let cfg = &self.config;
        let a = &cfg.columns.account;
        let mut r = Record::new();
        Self::put_text(&mut r, &a.name, s, FieldId::CustomerName);
        Self::put_text(&mut r, &a.address_line1, s, FieldId::AddressLine1);
        Self::put_text(&mut r, &a.address_line2, s, FieldId::AddressLine2);
        Self::put_text(&mut r, &a.city, s, FieldId::City);
        Self::put_text(&mut r, &a.state, s, FieldId::State);
        Self::put_text(&mut r, &a.postal_code, s, FieldId::PostalCode);
        let country = self.country(s)?;
        r.insert(cfg.country_code_field.clone(), json_text(country.as_ref()));
        Self::apply_defaults(&mut r, &cfg.defaults.account);
        let binds = match (&cfg.country_lookup, country) {
            (Some(l), Some(code)) => vec![Bind {
                navigation_property: l.navigation_property.clone(),
                target: BindTarget::Key(AlternateKey {
                    entity_set: l.entity_set.clone(),
                    column: l.code_column.clone(),
                    value: code,
                }),
                required: false,
            }],
            _ => Vec::new(),
        };
        Ok(AccountPayload {
            entity: a.entity.clone(),
            entity_set: a.entity_set.clone(),
            record: r,
            binds,
            match_key: self.account_match_key(s),
        })
    }

    fn contact_payloads(&self, s: &MappedSnapshot) -> Vec<ContactPayload> {
        let c = &self.config.columns.contact;
        s.contacts()
            .iter()
            .map(|ct| {
                let mut r = Record::new();
                r.insert(c.first_name.clone(), json_text(ct.first_name.as_ref()));
                r.insert(c.last_name.clone(), json_text(ct.last_name.as_ref()));
                r.insert(c.email.clone(), json_text(ct.email.as_ref()));
                r.insert(c.phone.clone(), json_text(ct.phone.as_ref()));
                r.insert(c.job_title.clone(), json_text(ct.title.as_ref()));
                Self::apply_defaults(&mut r, &self.config.defaults.contact);
                ContactPayload {
                    entity: c.entity.clone(),
                    entity_set: c.entity_set.clone(),
                    record: r,
                    binds: vec![Bind {
                        navigation_property: c.account_bind.clone(),
                        target: BindTarget::Account,
                        required: false,
                    }],
                    match_key: ct.match_key(),
                }
            })
            .collect()
    }

    fn lead_payload(
        &self,
        s: &MappedSnapshot,
        identity: &ReferralIdentity,
        status: CrmStatus,
    ) -> Result<CrmPayload, MappingError> {
        let cfg = &self.config;
        let l = &cfg.columns.lead;
        if let Some(code) = s.text(FieldId::Currency) {
            valid_currency(FieldId::Currency.referral_path(), code)?;
        }
        let mut r = Record::new();
        r.insert(l.subject.clone(), self.display_name(s)?);
        Self::put_text(&mut r, &l.description, s, FieldId::Notes);
        self.put_common(&mut r, s, &l.deal_value, &l.close_date);
        Self::put_text(&mut r, &l.company_name, s, FieldId::CustomerName);
        Self::put_text(&mut r, &l.address_line1, s, FieldId::AddressLine1);
        Self::put_text(&mut r, &l.address_line2, s, FieldId::AddressLine2);
        Self::put_text(&mut r, &l.city, s, FieldId::City);
        Self::put_text(&mut r, &l.state, s, FieldId::State);
        Self::put_text(&mut r, &l.postal_code, s, FieldId::PostalCode);
        r.insert(l.country.clone(), json_text(self.country(s)?.as_ref()));
        let first = s.contacts().first().cloned().unwrap_or_default();
        r.insert(l.first_name.clone(), json_text(first.first_name.as_ref()));
        r.insert(l.last_name.clone(), json_text(first.last_name.as_ref()));
        r.insert(l.email.clone(), json_text(first.email.as_ref()));
        r.insert(l.phone.clone(), json_text(first.phone.as_ref()));
        r.insert(l.job_title.clone(), json_text(first.title.as_ref()));
        r.insert(l.sync_with_partner_center.clone(), Value::Bool(true));
        r.insert(
            l.referral_id.clone(),
            Value::String(identity.referral_id.clone()),
        );
        // Like the opportunity, the lead links to its referral and engagement.
        r.insert(
            l.referral_link.clone(),
            Value::String(self.referral_link(identity)),
        );
        r.insert(
            l.engagement_id.clone(),
            json_text(identity.engagement_id.as_ref()),
        );
        Self::apply_defaults(&mut r, &cfg.defaults.lead);
        Ok(CrmPayload {
            kind: RecordKind::Lead,
            entity: l.entity.clone(),
            key: AlternateKey {
                entity_set: l.entity_set.clone(),
                column: l.referral_id.clone(),
                value: identity.referral_id.clone(),
            },
            record: r,
            binds: self
                // Required like the opportunity's: a lead silently left in the CRM's base
                // currency would misstate the deal value and write that currency back to Microsoft.
                .currency_bind(s, &l.currency_bind, true)
                .into_iter()
                .collect(),
            status,
            account: None,
            contacts: Vec::new(),
            solutions: Vec::new(),
            solutions_removed: Vec::new(),
        })
    }

    /// The rows Dataverse holds after `payload` was written (with `statecode`/`statuscode`,
    /// without lookups, the currency given by code): what the engine would read back. Reading
    /// it with [`snapshot_from_crm`](Self::snapshot_from_crm) gives the snapshot the payload
    /// was made from.
    pub fn written_records(&self, payload: &CrmPayload) -> CrmRecords {
        let mut primary = payload.record.clone();
        primary.insert("statecode".into(), Value::from(payload.status.statecode));
        primary.insert("statuscode".into(), Value::from(payload.status.statuscode));
        let currency_code = payload.binds.iter().find_map(|b| match &b.target {
            BindTarget::Currency { code } => Some(code.clone()),
            _ => None,
        });
        let is_opp = payload.kind == RecordKind::Opportunity;
        CrmRecords {
            kind: payload.kind,
            primary,
            account: payload.account.as_ref().map(|a| a.record.clone()),
            // The opportunity is bound to its first contact (`parentcontactid`); that is the
            // contact a read brings back.
            contacts: is_opp.then(|| {
                payload
                    .contacts
                    .iter()
                    .take(1)
                    .map(|c| c.record.clone())
                    .collect()
            }),
            solutions: is_opp.then(|| payload.solutions.iter().map(|s| s.record.clone()).collect()),
            currency_code,
        }
    }

    // ---------------------------------------------------------------- CRM -> snapshot

    /// The mapped fields of CRM records. Fields the records do not carry (a lead has no
    /// solutions or Partner Center columns; parts not fetched are `None`) are taken from
    /// `base`, as is the exact referral state when the CRM state is the one `base` maps to.
    pub fn snapshot_from_crm(
        &self,
        records: &CrmRecords,
        base: Option<&MappedSnapshot>,
    ) -> Result<MappedSnapshot, MappingError> {
        let cfg = &self.config;
        let mut s = MappedSnapshot::new();
        let carry = |s: &mut MappedSnapshot, f: FieldId| {
            s.set_opt(f, base.and_then(|b| b.get(f)).cloned());
        };
        let p = &records.primary;
        let entity = match records.kind {
            RecordKind::Opportunity => cfg.columns.opportunity.entity.as_str(),
            RecordKind::Lead => cfg.columns.lead.entity.as_str(),
        };
        let rd = Reader { entity, record: p };
        let (name_col, notes_col, deal_col, close_col) = match records.kind {
            RecordKind::Opportunity => {
                let c = &cfg.columns.opportunity;
                (
                    &c.name,
                    &c.description,
                    &cfg.deal_value_field,
                    &c.close_date,
                )
            }
            RecordKind::Lead => {
                let l = &cfg.columns.lead;
                (&l.subject, &l.description, &l.deal_value, &l.close_date)
            }
        };
        s.set_opt(
            FieldId::Name,
            text(rd.text(name_col)?.as_deref().map(strip_mark)),
        );
        let statecode = rd.int("statecode")?;
        let statuscode = rd.int("statuscode")?;
        if let (Some(statecode), Some(statuscode)) = (statecode, statuscode) {
            let crm = CrmStatus {
                kind: records.kind,
                statecode,
                statuscode,
            };
            let prev = base.and_then(MappedSnapshot::status);
            let state = cfg.status.referral_state(crm, prev)?;
            s.set(FieldId::Status, FieldValue::Status(state));
        } else {
            carry(&mut s, FieldId::Status);
        }
        if let Some(d) = rd.decimal(deal_col)? {
            s.set(FieldId::DealValue, FieldValue::decimal(self.round_money(d)));
        }
        let currency = match &records.currency_code {
            Some(c) => Some(c.clone()),
            None => {
                let nav = match records.kind {
                    RecordKind::Opportunity => &cfg.columns.opportunity.currency_bind,
                    RecordKind::Lead => &cfg.columns.lead.currency_bind,
                };
                p.get(nav)
                    .and_then(|v| v.get("isocurrencycode"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }
        };
        if let Some(c) = opt_string(currency.as_deref()) {
            let field = format!("{entity}.transactioncurrencyid");
            s.set(
                FieldId::Currency,
                FieldValue::Text(valid_currency(&field, &c)?),
            );
        }
        if let Some(d) = rd.date(close_col)? {
            s.set(FieldId::CloseDate, FieldValue::Date(d));
        }
        s.set_opt(FieldId::Notes, text(rd.text(notes_col)?.as_deref()));

        match records.kind {
            RecordKind::Opportunity => {
                let c = &cfg.columns.opportunity;
                match rd.int(&c.help_required)? {
                    None => {}
                    Some(v) => {
                        let code = self.help_by_value.get(&v).ok_or_else(|| {
                            MappingError::new(
                                format!("{entity}.{}", c.help_required),
                                v.to_string(),
                                Rule::UnknownChoice,
                            )
                        })?;
                        s.set(FieldId::HelpRequired, FieldValue::Text(code.clone()));
                    }
                }
                if let Some(b) = rd.bool(&c.visible_to_microsoft)? {
                    s.set(FieldId::VisibleToMicrosoft, FieldValue::Bool(b));
                }
                s.set_opt(
                    FieldId::MicrosoftCrmId,
                    text(rd.text(&c.microsoft_crm_id)?.as_deref()),
                );
                match &records.account {
                    Some(acc) => self.read_account(&mut s, acc)?,
                    None => {
                        for f in CUSTOMER_FIELDS {
                            carry(&mut s, f);
                        }
                    }
                }
                match &records.contacts {
                    Some(list) => {
                        let ct = &cfg.columns.contact;
                        let mut contacts = Vec::new();
                        for rec in list {
                            let r = Reader {
                                entity: &ct.entity,
                                record: rec,
                            };
                            let v = ContactValue {
                                first_name: r.text(&ct.first_name)?,
                                last_name: r.text(&ct.last_name)?,
                                email: r.text(&ct.email)?,
                                phone: r.text(&ct.phone)?,
                                title: r.text(&ct.job_title)?,
                            };
                            if !v.is_empty() {
                                contacts.push(v);
                            }
                        }
                        s.set(FieldId::Contacts, FieldValue::Contacts(contacts));
                    }
                    None => carry(&mut s, FieldId::Contacts),
                }
                match &records.solutions {
                    Some(list) => {
                        let sc = &cfg.columns.solution;
                        let mut sols = Vec::new();
                        for rec in list {
                            let r = Reader {
                                entity: &sc.entity,
                                record: rec,
                            };
                            let Some(id) = r.text(&sc.solution_id)? else {
                                continue;
                            };
                            sols.push(SolutionValue {
                                id,
                                name: r.text(&sc.name)?,
                                solution_type: r.text(&sc.solution_type)?,
                                publisher: r.text(&sc.publisher)?,
                            });
                        }
                        s.set(FieldId::Solutions, FieldValue::solutions(sols));
                    }
                    None => carry(&mut s, FieldId::Solutions),
                }
            }
            RecordKind::Lead => {
                let l = &cfg.columns.lead;
                s.set_opt(
                    FieldId::CustomerName,
                    text(rd.text(&l.company_name)?.as_deref()),
                );
                s.set_opt(
                    FieldId::AddressLine1,
                    text(rd.text(&l.address_line1)?.as_deref()),
                );
                s.set_opt(
                    FieldId::AddressLine2,
                    text(rd.text(&l.address_line2)?.as_deref()),
                );
                s.set_opt(FieldId::City, text(rd.text(&l.city)?.as_deref()));
                s.set_opt(FieldId::State, text(rd.text(&l.state)?.as_deref()));
                s.set_opt(
                    FieldId::PostalCode,
                    text(rd.text(&l.postal_code)?.as_deref()),
                );
                if let Some(c) = rd.text(&l.country)? {
                    let field = format!("{entity}.{}", l.country);
                    s.set(
                        FieldId::Country,
                        FieldValue::Text(valid_country(&field, &c)?),
                    );
                }
                // The lead's inline contact seeds the contacts only when there is no base.
                if base.is_some() {
                    carry(&mut s, FieldId::Contacts);
                } else {
                    let v = ContactValue {
                        first_name: rd.text(&l.first_name)?,
                        last_name: rd.text(&l.last_name)?,
                        email: rd.text(&l.email)?,
                        phone: rd.text(&l.phone)?,
                        title: rd.text(&l.job_title)?,
                    };
                    if !v.is_empty() {
                        s.set(FieldId::Contacts, FieldValue::Contacts(vec![v]));
                    }
                }
                for f in [
                    FieldId::HelpRequired,
                    FieldId::VisibleToMicrosoft,
                    FieldId::MicrosoftCrmId,
                    FieldId::Solutions,
                ] {
                    carry(&mut s, f);
                }
            }
        }
        Ok(s)
    }

    fn read_account(&self, s: &mut MappedSnapshot, acc: &Record) -> Result<(), MappingError> {
        let a = &self.config.columns.account;
        let r = Reader {
            entity: &a.entity,
            record: acc,
        };
        s.set_opt(FieldId::CustomerName, text(r.text(&a.name)?.as_deref()));
        s.set_opt(
            FieldId::AddressLine1,
            text(r.text(&a.address_line1)?.as_deref()),
        );
        s.set_opt(
            FieldId::AddressLine2,
            text(r.text(&a.address_line2)?.as_deref()),
        );
        s.set_opt(FieldId::City, text(r.text(&a.city)?.as_deref()));
        s.set_opt(FieldId::State, text(r.text(&a.state)?.as_deref()));
        s.set_opt(
            FieldId::PostalCode,
            text(r.text(&a.postal_code)?.as_deref()),
        );
        let col = &self.config.country_code_field;
        match r.text(col)? {
            Some(c) => {
                let field = format!("{}.{col}", a.entity);
                s.set(
                    FieldId::Country,
                    FieldValue::Text(valid_country(&field, &c)?),
                );
            }
            None => {
                s.remove(FieldId::Country);
            }
        }
        Ok(())
    }

    /// Whether "Sync with Partner Center" is Yes on a CRM row (absent or null reads as No).
    pub fn sync_enabled(&self, kind: RecordKind, record: &Record) -> bool {
        let col = match kind {
            RecordKind::Opportunity => &self.config.columns.opportunity.sync_with_partner_center,
            RecordKind::Lead => &self.config.columns.lead.sync_with_partner_center,
        };
        record.get(col).and_then(Value::as_bool).unwrap_or(false)
    }

    /// The referral id stored on a CRM row, if any.
    pub fn referral_id_of(&self, kind: RecordKind, record: &Record) -> Option<String> {
        let col = match kind {
            RecordKind::Opportunity => &self.config.columns.opportunity.referral_id,
            RecordKind::Lead => &self.config.columns.lead.referral_id,
        };
        record
            .get(col)
            .and_then(Value::as_str)
            .and_then(|s| opt_string(Some(s)))
    }

    // ---------------------------------------------------------------- rules

    /// Checks a snapshot about to be written to Partner Center against the rules of the
    /// original solution, returning every violation: a co-sell referral needs a customer
    /// contact and a solution; visibility once granted in `base` cannot be withdrawn; country
    /// and currency must be ISO codes; a status change must be one Partner Center allows. A
    /// non-co-sell referral may become co-sell at any time.
    pub fn check_outgoing(
        &self,
        target: &MappedSnapshot,
        base: Option<&MappedSnapshot>,
    ) -> Vec<MappingError> {
        let mut errors = Vec::new();
        if target.is_co_sell() {
            let code = target.text(FieldId::HelpRequired).unwrap_or_default();
            if target.contacts().is_empty() {
                errors.push(MappingError::new(
                    FieldId::Contacts.referral_path(),
                    code,
                    Rule::CoSellNeedsContact,
                ));
            }
            if target.solutions().is_empty() {
                errors.push(MappingError::new(
                    FieldId::Solutions.referral_path(),
                    code,
                    Rule::CoSellNeedsSolution,
                ));
            }
        }
        let was_visible = base
            .and_then(|b| b.get(FieldId::VisibleToMicrosoft))
            .and_then(FieldValue::as_bool)
            == Some(true);
        // A co-sell record is visible by implication: a CRM row with help requested and the
        // visibility column left empty is not a withdrawal.
        let visible = Self::visible(target);
        if was_visible && visible != Some(true) {
            errors.push(MappingError::new(
                FieldId::VisibleToMicrosoft.referral_path(),
                visible.map_or(String::new(), |v| v.to_string()),
                Rule::VisibilityIrreversible,
            ));
        }
        if let Some(c) = target.text(FieldId::Country)
            && let Err(e) = valid_country(FieldId::Country.referral_path(), c)
        {
            errors.push(e);
        }
        if let Some(c) = target.text(FieldId::Currency)
            && let Err(e) = valid_currency(FieldId::Currency.referral_path(), c)
        {
            errors.push(e);
        }
        if let (Some(from), Some(to)) = (base.and_then(MappedSnapshot::status), target.status())
            && from != to
            && check_transition(
                (from.status.clone(), from.substatus.clone()),
                (to.status.clone(), to.substatus.clone()),
            )
            .is_err()
        {
            errors.push(MappingError::new(
                "status",
                to.to_string(),
                Rule::ForbiddenTransition {
                    from: from.to_string(),
                },
            ));
        }
        if let Some(code) = target.text(FieldId::HelpRequired)
            && !self
                .config
                .choices
                .help_required
                .keys()
                .any(|k| k.eq_ignore_ascii_case(code))
        {
            errors.push(MappingError::new(
                FieldId::HelpRequired.referral_path(),
                code,
                Rule::UnknownChoice,
            ));
        }
        errors
    }

    fn first_error(errors: Vec<MappingError>) -> Result<(), MappingError> {
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether the referral is visible to Microsoft: explicitly, or because help is requested
    /// ("when Microsoft help is required, the referral is visible to Microsoft sellers by
    /// default").
    fn visible(s: &MappedSnapshot) -> Option<bool> {
        let v = s
            .get(FieldId::VisibleToMicrosoft)
            .and_then(FieldValue::as_bool);
        if s.is_co_sell() { Some(true) } else { v }
    }

    // ---------------------------------------------------------------- snapshot -> referral

    /// The body of `POST /referrals` for a CRM record, after [`check_outgoing`](Self::check_outgoing).
    /// `external_reference_id` is the CRM record id. The referral is created New/Pending
    /// (Partner Center answers with Active/Accepted for outgoing referrals); a co-sell referral
    /// is `Shared` and visible to Microsoft sellers, any other `Independent`.
    pub fn referral_create(
        &self,
        s: &MappedSnapshot,
        external_reference_id: &str,
    ) -> Result<Referral, MappingError> {
        self.referral_create_from_row(s, external_reference_id, &Record::new())
    }

    /// [`referral_create`](Self::referral_create) for the opportunity `row` it was mapped
    /// from: the `[referral_create]` values whose `*_column` is set come from the row (an empty
    /// one takes the configured value). A value that is not one Partner Center knows is an
    /// error naming the column and the value.
    pub fn referral_create_from_row(
        &self,
        s: &MappedSnapshot,
        external_reference_id: &str,
        row: &Record,
    ) -> Result<Referral, MappingError> {
        Self::first_error(self.check_outgoing(s, None))?;
        let name = s
            .text(FieldId::Name)
            .ok_or_else(|| MappingError::new(FieldId::Name.referral_path(), "", Rule::Missing))?;
        let t = |f| s.text(f).map(str::to_string);
        let co_sell = s.is_co_sell();
        // Required on create (Microsoft's minimal example; bulk-operations page), and for
        // services co-sell also the role, area and play: from `[referral_create]`.
        let rc = &self.config.referral_create;
        let intent_path =
            "details.requirements.additionalRequirements.attributes[CustomerMarketplaceIntent]";
        let intent_text = match rc
            .marketplace_intent_column
            .as_ref()
            .and_then(|c| row.get(c).map(|v| (c, v)))
        {
            Some((_, Value::String(t))) if !t.trim().is_empty() => t.trim().to_string(),
            Some((column, Value::Number(n))) => rc
                .marketplace_intent_choices
                .iter()
                .find(|(_, option)| n.as_i64() == Some(**option))
                .map(|(intent, _)| intent.clone())
                .ok_or_else(|| {
                    MappingError::new(intent_path, format!("{column} = {n}"), Rule::UnknownChoice)
                })?,
            _ => rc.marketplace_intent.clone(),
        };
        let intent = CustomerMarketplaceIntent::from(intent_text.as_str());
        if matches!(intent, CustomerMarketplaceIntent::Other(_)) {
            return Err(MappingError::new(
                intent_path,
                intent_text.as_str(),
                Rule::UnknownChoice,
            ));
        }
        let mut additional = AdditionalRequirements::default();
        additional.set_marketplace_intent(&intent);
        let services = co_sell && rc.services_co_sell;
        // A services value: the row's column when set and not empty, else the configured one.
        let pick = |column: &Option<String>, default: &Option<String>| {
            column
                .as_ref()
                .and_then(|c| row.get(c))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .or_else(|| default.clone().filter(|v| !v.trim().is_empty()))
        };
        let partner_role = pick(&rc.partner_role_column, &rc.partner_role);
        let solution_area = pick(&rc.solution_area_column, &rc.solution_area);
        let solution_play = pick(&rc.solution_play_column, &rc.solution_play);
        if services {
            for (path, value, column) in [
                ("partnerRole", &partner_role, &rc.partner_role_column),
                ("solutionArea", &solution_area, &rc.solution_area_column),
                ("solutionPlay", &solution_play, &rc.solution_play_column),
            ] {
                if value.is_none() {
                    let named = column.as_deref().unwrap_or_default();
                    return Err(MappingError::new(path, named, Rule::Missing));
                }
            }
        }
        let address = Address {
            address_line1: t(FieldId::AddressLine1),
            address_line2: t(FieldId::AddressLine2),
            city: t(FieldId::City),
            state: t(FieldId::State),
            postal_code: t(FieldId::PostalCode),
            country: t(FieldId::Country),
            ..Default::default()
        };
        Ok(Referral {
            name: Some(name.to_string()),
            external_reference_id: Some(external_reference_id.to_string()),
            status: Some(ReferralStatus::New),
            substatus: Some(ReferralSubstatus::Pending),
            qualification: Some(ReferralQualification::SalesQualified),
            r#type: Some(if co_sell {
                ReferralType::Shared
            } else {
                ReferralType::Independent
            }),
            customer_profile: Some(CustomerProfile {
                name: t(FieldId::CustomerName),
                address: Some(address),
                team: Some(members(s.contacts())),
                ..Default::default()
            }),
            consent: Some(Consent {
                consent_to_share_referral_with_microsoft_sellers: Some(
                    Self::visible(s).unwrap_or(false),
                ),
                ..Default::default()
            }),
            details: Some(ReferralDetails {
                notes: t(FieldId::Notes),
                deal_value: s.get(FieldId::DealValue).and_then(FieldValue::as_decimal),
                currency: t(FieldId::Currency),
                closing_date_time: s
                    .get(FieldId::CloseDate)
                    .and_then(FieldValue::as_date)
                    .map(date_at_midnight),
                requirements: Some(Requirements {
                    solutions: Some(tags(s.solutions())),
                    additional_requirements: Some(additional),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            partner_role: services.then_some(partner_role).flatten(),
            solution_area: services.then_some(solution_area).flatten(),
            solution_play: services.then_some(solution_play).flatten(),
            invite_context: t(FieldId::HelpRequired).map(|code| InviteContext {
                assistance_request_code: Some(AssistanceRequestCode::from(code)),
                ..Default::default()
            }),
            tracking_info: t(FieldId::MicrosoftCrmId).map(|id| TrackingInfo {
                microsoft_msx_id: Some(id),
                ..Default::default()
            }),
            target: Some(Vec::new()),
            ..Default::default()
        })
    }

    /// The JSON Patch operations that take a referral from `base` to `target`, after
    /// [`check_outgoing`](Self::check_outgoing) (so withdrawing visibility or a forbidden status
    /// change is an error, not a patch; a rule `base` already breaks does not refuse the
    /// change). Arrays (contacts, solutions) are replaced whole.
    pub fn referral_update(
        &self,
        base: &MappedSnapshot,
        target: &MappedSnapshot,
    ) -> Result<ReferralUpdate, MappingError> {
        // Only a violation the change introduces refuses it: a co-sell referral Microsoft sent
        // without a solution still takes the seller's acceptance or deal value.
        let already = self.check_outgoing(base, Some(base));
        Self::first_error(
            self.check_outgoing(target, Some(base))
                .into_iter()
                .filter(|e| !already.contains(e))
                .collect(),
        )?;
        let mut up = ReferralUpdate::default();
        let visible_before = Self::visible(base);
        for change in diff(base, target) {
            let after = change.after.as_ref();
            match change.field {
                FieldId::Status => {
                    if let Some(st) = after.and_then(FieldValue::as_status) {
                        up.operations.push(PatchOperation::set_status(&st.status));
                        up.operations
                            .push(PatchOperation::set_substatus(&st.substatus));
                    }
                }
                // `dealValue` is a non-nullable decimal (connector schema): a removed value
                // cannot be written, so it is audited instead of patched as `null`.
                FieldId::DealValue => match after.and_then(FieldValue::as_decimal) {
                    Some(d) => up.operations.push(PatchOperation::set_deal_value(d)),
                    None => up.not_writable.push(change.field),
                },
                // A currency code and a closing date can be changed, not removed: neither is
                // declared nullable, so a removal is audited rather than written as `null`.
                FieldId::Currency => match after.and_then(FieldValue::as_text) {
                    Some(c) => up.operations.push(PatchOperation::set_currency(c)),
                    None => up.not_writable.push(change.field),
                },
                FieldId::CloseDate => match after.and_then(FieldValue::as_date) {
                    Some(d) => up
                        .operations
                        .push(PatchOperation::set_closing_date_time(date_at_midnight(d))),
                    None => up.not_writable.push(change.field),
                },
                // Notes are text: cleared notes are written as an empty string, not `null`.
                FieldId::Notes => up.operations.push(PatchOperation::set_notes(
                    after.and_then(FieldValue::as_text).unwrap_or_default(),
                )),
                // `inviteContext` is not among the writable paths (connector PatchReferralById):
                // a changed help request is audited as not writable.
                FieldId::HelpRequired => up.not_writable.push(change.field),
                FieldId::VisibleToMicrosoft => {}
                FieldId::Contacts => {
                    up.operations
                        .push(PatchOperation::set_customer_contacts(&members(
                            target.contacts(),
                        )))
                }
                FieldId::Solutions => up
                    .operations
                    .push(PatchOperation::set_solutions(&tags(target.solutions()))),
                FieldId::Name
                | FieldId::MicrosoftCrmId
                | FieldId::CustomerName
                | FieldId::AddressLine1
                | FieldId::AddressLine2
                | FieldId::City
                | FieldId::State
                | FieldId::PostalCode
                | FieldId::Country => up.not_writable.push(change.field),
            }
        }
        // Visibility: explicit or implied by a help request; one-way, so only ever set to true.
        if Self::visible(target) == Some(true) && visible_before != Some(true) {
            up.operations
                .push(PatchOperation::set_share_with_microsoft_sellers(true));
        } else if let Some(v) = Self::visible(target)
            && visible_before.is_none()
        {
            up.operations
                .push(PatchOperation::set_share_with_microsoft_sellers(v));
        }
        Ok(up)
    }

    // ---------------------------------------------------------------- marks and audit

    /// The columns recording a sync outcome on the primary record: the name with its mark
    /// (✔/✖, or unmarked when [`display_check_mark`](MappingConfig::display_check_mark) is off)
    /// and the audit column with `message` prepended (bounded by
    /// [`audit_max_chars`](MappingConfig::audit_max_chars)). `record` is the row as read (its
    /// current name and audit text); `at` is the time of the outcome.
    pub fn outcome_columns(
        &self,
        kind: RecordKind,
        record: &Record,
        outcome: SyncOutcome,
        message: &str,
        at: DateTime<Utc>,
    ) -> Record {
        let cfg = &self.config;
        let (name_col, audit_col) = match kind {
            RecordKind::Opportunity => (
                &cfg.columns.opportunity.name,
                Some(&cfg.columns.opportunity.audit),
            ),
            RecordKind::Lead => (&cfg.columns.lead.subject, cfg.columns.lead.audit.as_ref()),
        };
        let mut out = Record::new();
        if let Some(name) = record.get(name_col).and_then(Value::as_str) {
            let new = if cfg.display_check_mark {
                apply_mark(name, outcome)
            } else {
                strip_mark(name).to_string()
            };
            if new != name {
                out.insert(name_col.clone(), Value::String(new));
            }
        }
        if let Some(col) = audit_col {
            let prev = record.get(col).and_then(Value::as_str);
            let label = match outcome {
                SyncOutcome::Success => "ok",
                SyncOutcome::Failure => "error",
            };
            let entry = if message.is_empty() {
                label.to_string()
            } else {
                format!("{label}: {message}")
            };
            out.insert(
                col.clone(),
                Value::String(audit_entry(prev, at, &entry, cfg.audit_max_chars)),
            );
        }
        out
    }

    /// Gives the payload's name the mark of `outcome`. [`to_crm`](Self::to_crm) marks it ✔
    /// (what a successful sync writes); a record written only in part (a currency the CRM
    /// lacks, [`Rule::CurrencyNotEnabled`]) carries ✖ instead. Nothing changes when
    /// [`display_check_mark`](MappingConfig::display_check_mark) is off.
    pub fn mark_payload(&self, payload: &mut CrmPayload, outcome: SyncOutcome) {
        if !self.config.display_check_mark {
            return;
        }
        let col = match payload.kind {
            RecordKind::Opportunity => &self.config.columns.opportunity.name,
            RecordKind::Lead => &self.config.columns.lead.subject,
        };
        if let Some(Value::String(name)) = payload.record.get_mut(col) {
            *name = apply_mark(name, outcome);
        }
    }

    // ---------------------------------------------------------------- account matching

    fn normalise(&self, s: &str) -> String {
        let m = &self.config.account_matching;
        let mut out: String = if m.ignore_whitespace {
            s.chars().filter(|c| !c.is_whitespace()).collect()
        } else {
            s.trim().to_string()
        };
        if m.ignore_case {
            out = out.to_lowercase();
        }
        out
    }

    /// The normalised account match key of a snapshot's customer.
    ///
    /// ```
    /// use cosell_mapping::{FieldId, FieldMap, FieldValue, MappedSnapshot};
    /// let map = FieldMap::default();
    /// let s: MappedSnapshot = [
    ///     (FieldId::CustomerName, FieldValue::Text("Contoso  Ltd".into())),
    ///     (FieldId::PostalCode, FieldValue::Text("98 052".into())),
    /// ].into_iter().collect();
    /// assert_eq!(map.account_match_key(&s).0, vec!["contosoltd", "98052"]);
    /// ```
    pub fn account_match_key(&self, s: &MappedSnapshot) -> AccountMatchKey {
        AccountMatchKey(
            self.config
                .account_matching
                .fields
                .iter()
                .map(|f| self.normalise(s.text(f.field_id()).unwrap_or("")))
                .collect(),
        )
    }

    fn account_column(&self, f: MatchField) -> &str {
        let a = &self.config.columns.account;
        match f {
            MatchField::CustomerName => &a.name,
            MatchField::PostalCode => &a.postal_code,
            MatchField::City => &a.city,
            MatchField::State => &a.state,
            MatchField::Country => &self.config.country_code_field,
            MatchField::AddressLine1 => &a.address_line1,
        }
    }

    /// The account columns the matching rule compares, in its order.
    pub fn account_match_columns(&self) -> Vec<&str> {
        self.config
            .account_matching
            .fields
            .iter()
            .map(|f| self.account_column(*f))
            .collect()
    }

    /// The normalised account match key of an account row.
    pub fn account_match_key_of(&self, account: &Record) -> AccountMatchKey {
        AccountMatchKey(
            self.config
                .account_matching
                .fields
                .iter()
                .map(|f| {
                    self.normalise(
                        account
                            .get(self.account_column(*f))
                            .and_then(Value::as_str)
                            .unwrap_or(""),
                    )
                })
                .collect(),
        )
    }

    /// The account columns and raw values to narrow a candidate query by (for example
    /// `address1_postalcode eq '98052'`); the engine then picks with
    /// [`find_account`](Self::find_account). Parts that are empty are left out.
    pub fn account_query_hints(&self, s: &MappedSnapshot) -> Vec<(String, String)> {
        self.config
            .account_matching
            .fields
            .iter()
            .filter_map(|f| {
                s.text(f.field_id())
                    .map(|v| (self.account_column(*f).to_string(), v.to_string()))
            })
            .collect()
    }

    /// The index of the first candidate account matching the snapshot's customer, if any. A
    /// blank key (no name, no postal code) never matches.
    pub fn find_account<'a>(
        &self,
        s: &MappedSnapshot,
        candidates: impl IntoIterator<Item = &'a Record>,
    ) -> Option<usize> {
        let key = self.account_match_key(s);
        if key.is_blank() {
            return None;
        }
        candidates
            .into_iter()
            .position(|c| self.account_match_key_of(c) == key)
    }
}

const CUSTOMER_FIELDS: [FieldId; 7] = [
    FieldId::CustomerName,
    FieldId::AddressLine1,
    FieldId::AddressLine2,
    FieldId::City,
    FieldId::State,
    FieldId::PostalCode,
    FieldId::Country,
];

fn members(contacts: &[ContactValue]) -> Vec<Member> {
    contacts
        .iter()
        .map(|c| Member {
            first_name: c.first_name.clone(),
            last_name: c.last_name.clone(),
            email: c.email.clone(),
            phone_number: c.phone.clone(),
            title: c.title.clone(),
            ..Default::default()
        })
        .collect()
}

fn tags(solutions: &[SolutionValue]) -> Vec<SolutionTag> {
    solutions
        .iter()
        .map(|s| SolutionTag {
            id: s.id.clone(),
            name: s.name.clone(),
            r#type: s.solution_type.as_deref().map(SolutionType::from),
            publisher_name: s.publisher.clone(),
            ..Default::default()
        })
        .collect()
}

/// Typed reads of CRM columns with errors naming `entity.column` and the value.
struct Reader<'a> {
    entity: &'a str,
    record: &'a Record,
}

impl Reader<'_> {
    fn get(&self, col: &str) -> Option<&Value> {
        self.record.get(col).filter(|v| !v.is_null())
    }

    fn wrong(&self, col: &str, v: &Value, expected: &'static str) -> MappingError {
        MappingError::new(
            format!("{}.{col}", self.entity),
            v.to_string(),
            Rule::WrongType { expected },
        )
    }

    fn text(&self, col: &str) -> Result<Option<String>, MappingError> {
        match self.get(col) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(opt_string(Some(s))),
            Some(v) => Err(self.wrong(col, v, "text")),
        }
    }

    fn int(&self, col: &str) -> Result<Option<i64>, MappingError> {
        match self.get(col) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.wrong(col, v, "a whole number")),
        }
    }

    fn bool(&self, col: &str) -> Result<Option<bool>, MappingError> {
        match self.get(col) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong(col, v, "yes/no (a boolean)")),
        }
    }

    fn decimal(&self, col: &str) -> Result<Option<Decimal>, MappingError> {
        let parse = |s: &str| {
            Decimal::from_str(s)
                .or_else(|_| Decimal::from_scientific(s))
                .ok()
        };
        match self.get(col) {
            None => Ok(None),
            Some(v @ Value::Number(n)) => parse(&n.to_string())
                .map(Some)
                .ok_or_else(|| self.wrong(col, v, "a decimal number")),
            Some(v @ Value::String(s)) => parse(s)
                .map(Some)
                .ok_or_else(|| self.wrong(col, v, "a decimal number")),
            Some(v) => Err(self.wrong(col, v, "a decimal number")),
        }
    }

    fn date(&self, col: &str) -> Result<Option<NaiveDate>, MappingError> {
        match self.get(col) {
            None => Ok(None),
            Some(v @ Value::String(s)) => s
                .get(..10)
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                .map(Some)
                .ok_or_else(|| self.wrong(col, v, "a date (YYYY-MM-DD)")),
            Some(v) => Err(self.wrong(col, v, "a date (YYYY-MM-DD)")),
        }
    }
}
