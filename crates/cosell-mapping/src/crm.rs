//! CRM-side data: the records the engine reads for a referral and the payload it writes. Plain
//! JSON objects keyed by logical names; lookups the mapping cannot resolve by itself (the account
//! it matched or created, the contacts, the currency row) are listed as [`Bind`]s and filled in
//! by [`CrmPayload::body`] once the engine knows the ids.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{MappingError, Rule};
use crate::status::{CrmStatus, RecordKind};

/// One CRM row as a JSON object keyed by logical name.
pub type Record = Map<String, Value>;

/// Entity set of the system currency table.
pub const CURRENCY_ENTITY_SET: &str = "transactioncurrencies";

/// The CRM rows of one referral, as read from Dataverse.
///
/// `None` for a related part means "not fetched": the field is then carried over from the merge
/// base. `Some(vec![])` means "fetched, there are none".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmRecords {
    /// Which table `primary` comes from.
    pub kind: RecordKind,
    /// The opportunity or lead row (must include `statecode` and `statuscode`).
    pub primary: Record,
    /// The customer account.
    pub account: Option<Record>,
    /// The customer contacts, primary contact first.
    pub contacts: Option<Vec<Record>>,
    /// The linked solution rows.
    pub solutions: Option<Vec<Record>>,
    /// ISO 4217 code of the record's `transactioncurrencyid`. When `None`, an expanded
    /// `transactioncurrencyid` object with `isocurrencycode` in `primary` is used
    /// (`$expand=transactioncurrencyid($select=isocurrencycode)`).
    pub currency_code: Option<String>,
}

impl CrmRecords {
    /// Records holding just a primary row.
    pub fn new(kind: RecordKind, primary: Record) -> Self {
        Self {
            kind,
            primary,
            account: None,
            contacts: None,
            solutions: None,
            currency_code: None,
        }
    }
}

/// A row addressed by an alternate key: `/entity_set(column='value')`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlternateKey {
    /// Entity set.
    pub entity_set: String,
    /// Key column.
    pub column: String,
    /// Key value.
    pub value: String,
}

impl AlternateKey {
    /// The OData address, with single quotes in the value doubled: `/accounts(code='O''Neil')`.
    pub fn path(&self) -> String {
        format!(
            "/{}({}='{}')",
            self.entity_set,
            self.column,
            self.value.replace('\'', "''")
        )
    }
}

/// What a lookup points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BindTarget {
    /// The customer account the engine matched or created.
    Account,
    /// The customer contact at this index of [`CrmPayload::contacts`].
    Contact {
        /// Index into the contacts.
        index: usize,
    },
    /// The currency row with this ISO 4217 code.
    Currency {
        /// ISO 4217 code.
        code: String,
    },
    /// A row addressed by alternate key; needs no resolution.
    Key(AlternateKey),
}

/// A lookup column to set with `<navigation_property>@odata.bind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Navigation property (`customerid_account`).
    pub navigation_property: String,
    /// The row it points at.
    pub target: BindTarget,
    /// Whether the record cannot be written without it.
    pub required: bool,
}

/// Record ids the engine resolved for a payload's binds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedIds {
    /// The account id.
    pub account: Option<String>,
    /// Contact ids, by index of [`CrmPayload::contacts`].
    pub contacts: Vec<Option<String>>,
    /// The `transactioncurrencyid` of the payload's currency.
    pub currency: Option<String>,
}

/// Applies binds to `body`, resolving with `ids`. `account_set` and `contact_set` are the
/// entity sets of accounts and contacts.
fn apply_binds(
    body: &mut Record,
    binds: &[Bind],
    ids: &ResolvedIds,
    account_set: &str,
    contact_set: &str,
) -> Result<(), MappingError> {
    for b in binds {
        let path = match &b.target {
            BindTarget::Account => ids
                .account
                .as_ref()
                .map(|id| format!("/{account_set}({id})")),
            BindTarget::Contact { index } => ids
                .contacts
                .get(*index)
                .and_then(Option::as_ref)
                .map(|id| format!("/{contact_set}({id})")),
            BindTarget::Currency { .. } => ids
                .currency
                .as_ref()
                .map(|id| format!("/{CURRENCY_ENTITY_SET}({id})")),
            BindTarget::Key(k) => Some(k.path()),
        };
        match path {
            Some(p) => {
                body.insert(
                    format!("{}@odata.bind", b.navigation_property),
                    Value::String(p),
                );
            }
            None if b.required => {
                let value = match &b.target {
                    BindTarget::Currency { code } => code.clone(),
                    BindTarget::Contact { index } => format!("contact #{index}"),
                    _ => String::new(),
                };
                return Err(MappingError::new(
                    b.navigation_property.clone(),
                    value,
                    Rule::UnresolvedLookup,
                ));
            }
            None => {}
        }
    }
    Ok(())
}

/// The normalised key accounts are matched by (default: company name + postal code, case- and
/// space-insensitive). Empty parts still count, so two keys match only when every part does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountMatchKey(pub Vec<String>);

impl AccountMatchKey {
    /// Whether every part is empty (such a key never matches).
    pub fn is_blank(&self) -> bool {
        self.0.iter().all(String::is_empty)
    }
}

/// The customer account to find or create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountPayload {
    /// Table logical name.
    pub entity: String,
    /// Entity set.
    pub entity_set: String,
    /// Columns to write.
    pub record: Record,
    /// Lookups (a lookup-based country).
    pub binds: Vec<Bind>,
    /// Key to look for an existing account with (see
    /// [`FieldMap::find_account`](crate::FieldMap::find_account)).
    pub match_key: AccountMatchKey,
}

impl AccountPayload {
    /// The JSON body to create or update the account with.
    pub fn body(&self) -> Result<Record, MappingError> {
        let mut body = self.record.clone();
        apply_binds(&mut body, &self.binds, &ResolvedIds::default(), "", "")?;
        Ok(body)
    }
}

/// A customer contact to find (by e-mail) or create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactPayload {
    /// Table logical name.
    pub entity: String,
    /// Entity set.
    pub entity_set: String,
    /// Columns to write.
    pub record: Record,
    /// Lookups (the parent account).
    pub binds: Vec<Bind>,
    /// Lower-cased e-mail to look for an existing contact with; `None` without an e-mail.
    pub match_key: Option<String>,
}

impl ContactPayload {
    /// The JSON body, with the parent account bound when `account_id` is known.
    pub fn body(
        &self,
        account_id: Option<&str>,
        account_set: &str,
    ) -> Result<Record, MappingError> {
        let mut body = self.record.clone();
        let ids = ResolvedIds {
            account: account_id.map(str::to_string),
            ..ResolvedIds::default()
        };
        apply_binds(&mut body, &self.binds, &ids, account_set, &self.entity_set)?;
        Ok(body)
    }
}

/// A solution row, upserted by its Partner Center id and linked to the opportunity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolutionPayload {
    /// Upsert key (the solution id column).
    pub key: AlternateKey,
    /// Columns to write.
    pub record: Record,
}

/// Everything the engine writes to the CRM for one referral.
///
/// Write order: find-or-create the account (`account`), then the contacts, resolve the currency,
/// then upsert the primary record by `key` with [`body`](Self::body), upsert the solutions and
/// link each to the opportunity (a row of the solution link table), unlink the ones in
/// `solutions_removed`, and finally apply
/// [`StatusCodes::steps`](crate::config::StatusCodes::steps) towards `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmPayload {
    /// Opportunity or lead.
    pub kind: RecordKind,
    /// Table logical name of the primary record.
    pub entity: String,
    /// Upsert key of the primary record (the referral id column).
    pub key: AlternateKey,
    /// Columns of the primary record (not `statecode`/`statuscode`: see `status`).
    pub record: Record,
    /// Lookups of the primary record still to resolve.
    pub binds: Vec<Bind>,
    /// Where the record should stand.
    pub status: CrmStatus,
    /// The customer account (opportunities only; a lead holds the customer inline).
    pub account: Option<AccountPayload>,
    /// The customer contacts (opportunities only; a lead holds the first contact inline).
    pub contacts: Vec<ContactPayload>,
    /// The solutions (opportunities only).
    pub solutions: Vec<SolutionPayload>,
    /// Solution ids (the solution table's alternate key) to unlink from the opportunity: the
    /// ones the CRM held when read that the plan removes. Only these are unlinked, so a
    /// solution a seller links meanwhile is never undone. Set by the engine, which knows what
    /// it read; empty from the mapping.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub solutions_removed: Vec<String>,
}

impl CrmPayload {
    /// The JSON body of the primary record with every lookup bound from `ids`. A required
    /// lookup left unresolved is an error naming the navigation property.
    pub fn body(&self, ids: &ResolvedIds) -> Result<Record, MappingError> {
        let mut body = self.record.clone();
        let account_set = self
            .account
            .as_ref()
            .map(|a| a.entity_set.as_str())
            .unwrap_or("accounts");
        let contact_set = self
            .contacts
            .first()
            .map(|c| c.entity_set.as_str())
            .unwrap_or("contacts");
        apply_binds(&mut body, &self.binds, ids, account_set, contact_set)?;
        Ok(body)
    }

    /// The primary record's columns that differ from `base`'s (for a `PATCH` that sends only
    /// what changed). Columns present in `base` but not here are sent as `null`.
    pub fn changed_columns(&self, base: &CrmPayload) -> Record {
        let mut out = Record::new();
        for (k, v) in &self.record {
            if base.record.get(k) != Some(v) {
                out.insert(k.clone(), v.clone());
            }
        }
        for k in base.record.keys() {
            if !self.record.contains_key(k) {
                out.insert(k.clone(), Value::Null);
            }
        }
        out
    }
}
