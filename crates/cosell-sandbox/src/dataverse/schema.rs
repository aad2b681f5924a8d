//! The tables the emulator serves: a small builder over table, column, alternate-key and N:N
//! definitions, and the default co-sell schema (DESIGN §6 on top of the standard CRM tables).

use std::collections::BTreeMap;

/// The type of a column, as far as the emulator validates and compares values.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ColumnType {
    /// Single line of text with a maximum length in characters.
    Text {
        /// Maximum length (characters).
        max_length: usize,
    },
    /// Multiple lines of text with a maximum length in characters.
    Memo {
        /// Maximum length (characters).
        max_length: usize,
    },
    /// Whole number (`Edm.Int32`).
    Integer,
    /// Big integer (`Edm.Int64`), e.g. `versionnumber`.
    BigInt,
    /// Decimal number (`Edm.Decimal`).
    Decimal,
    /// Floating point number (`Edm.Double`).
    Double,
    /// Currency (`Edm.Decimal`, four decimals on the wire).
    Money,
    /// Yes/No (`Edm.Boolean`).
    Boolean,
    /// Date and time, UTC, ISO 8601 with `Z`.
    DateTime,
    /// Date only (`YYYY-MM-DD`), e.g. `estimatedclosedate`.
    DateOnly,
    /// A choice (option set); an empty option list accepts any integer.
    Choice {
        /// Allowed values and their labels.
        options: Vec<(i64, String)>,
    },
    /// `statecode`: validated against the table's [`StateModel`].
    State,
    /// `statuscode`: validated against the table's [`StateModel`].
    Status,
    /// A GUID (`Edm.Guid`), e.g. the primary key.
    Uniqueidentifier,
    /// A lookup: set through `{navigation}@odata.bind`, read back as `_{column}_value`.
    Lookup {
        /// The tables it may point at, each with the navigation property used to bind it.
        targets: Vec<LookupTarget>,
    },
}

impl ColumnType {
    /// The EDM type name used in error messages and metadata.
    pub fn edm_name(&self) -> &'static str {
        match self {
            ColumnType::Text { .. } | ColumnType::Memo { .. } => "Edm.String",
            ColumnType::Integer | ColumnType::State | ColumnType::Status => "Edm.Int32",
            ColumnType::Choice { .. } => "Edm.Int32",
            ColumnType::BigInt => "Edm.Int64",
            ColumnType::Decimal | ColumnType::Money => "Edm.Decimal",
            ColumnType::Double => "Edm.Double",
            ColumnType::Boolean => "Edm.Boolean",
            ColumnType::DateTime => "Edm.DateTimeOffset",
            ColumnType::DateOnly => "Edm.Date",
            ColumnType::Uniqueidentifier | ColumnType::Lookup { .. } => "Edm.Guid",
        }
    }

    /// The `@odata.type` of the attribute metadata (`EntityDefinitions(...)/Attributes`).
    pub fn metadata_type(&self) -> &'static str {
        match self {
            ColumnType::Text { .. } => "#Microsoft.Dynamics.CRM.StringAttributeMetadata",
            ColumnType::Memo { .. } => "#Microsoft.Dynamics.CRM.MemoAttributeMetadata",
            ColumnType::Integer => "#Microsoft.Dynamics.CRM.IntegerAttributeMetadata",
            ColumnType::BigInt => "#Microsoft.Dynamics.CRM.BigIntAttributeMetadata",
            ColumnType::Decimal => "#Microsoft.Dynamics.CRM.DecimalAttributeMetadata",
            ColumnType::Double => "#Microsoft.Dynamics.CRM.DoubleAttributeMetadata",
            ColumnType::Money => "#Microsoft.Dynamics.CRM.MoneyAttributeMetadata",
            ColumnType::Boolean => "#Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
            ColumnType::DateTime | ColumnType::DateOnly => {
                "#Microsoft.Dynamics.CRM.DateTimeAttributeMetadata"
            }
            ColumnType::Choice { .. } => "#Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
            ColumnType::State => "#Microsoft.Dynamics.CRM.StateAttributeMetadata",
            ColumnType::Status => "#Microsoft.Dynamics.CRM.StatusAttributeMetadata",
            ColumnType::Uniqueidentifier => {
                "#Microsoft.Dynamics.CRM.UniqueIdentifierAttributeMetadata"
            }
            ColumnType::Lookup { .. } => "#Microsoft.Dynamics.CRM.LookupAttributeMetadata",
        }
    }

    /// Whether values compare as text.
    pub(crate) fn is_text(&self) -> bool {
        matches!(self, ColumnType::Text { .. } | ColumnType::Memo { .. })
    }
}

/// One target of a lookup column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupTarget {
    /// Logical name of the target table.
    pub table: String,
    /// Single-valued navigation property used in `{nav}@odata.bind` and `/{nav}/$ref`.
    pub navigation_property: String,
}

/// A column definition.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    /// Logical name (lower case, case-sensitive on the wire).
    pub logical_name: String,
    /// Type.
    pub column_type: ColumnType,
    /// Read-only through the API (`createdon`, `versionnumber`, computed `fullname`, …).
    pub read_only: bool,
    /// Can be set on create but not changed afterwards (`transactioncurrency.isocurrencycode`).
    pub create_only: bool,
}

impl ColumnDef {
    /// A column of any type.
    pub fn new(logical_name: impl Into<String>, column_type: ColumnType) -> Self {
        ColumnDef {
            logical_name: logical_name.into(),
            column_type,
            read_only: false,
            create_only: false,
        }
    }

    /// Single line of text.
    pub fn text(logical_name: impl Into<String>, max_length: usize) -> Self {
        Self::new(logical_name, ColumnType::Text { max_length })
    }

    /// Multiple lines of text.
    pub fn memo(logical_name: impl Into<String>, max_length: usize) -> Self {
        Self::new(logical_name, ColumnType::Memo { max_length })
    }

    /// Whole number.
    pub fn integer(logical_name: impl Into<String>) -> Self {
        Self::new(logical_name, ColumnType::Integer)
    }

    /// Decimal number.
    pub fn decimal(logical_name: impl Into<String>) -> Self {
        Self::new(logical_name, ColumnType::Decimal)
    }

    /// Floating point number.
    pub fn double(logical_name: impl Into<String>) -> Self {
        Self::new(logical_name, ColumnType::Double)
    }

    /// Currency.
    pub fn money(logical_name: impl Into<String>) -> Self {
        Self::new(logical_name, ColumnType::Money)
    }

    /// Yes/No.
    pub fn boolean(logical_name: impl Into<String>) -> Self {
        Self::new(logical_name, ColumnType::Boolean)
    }

    /// Date and time (UTC).
    pub fn date_time(logical_name: impl Into<String>) -> Self {
        Self::new(logical_name, ColumnType::DateTime)
    }

    /// Date only.
    pub fn date_only(logical_name: impl Into<String>) -> Self {
        Self::new(logical_name, ColumnType::DateOnly)
    }

    /// A choice with the given values and labels (empty: any integer).
    pub fn choice(logical_name: impl Into<String>, options: &[(i64, &str)]) -> Self {
        Self::new(
            logical_name,
            ColumnType::Choice {
                options: options.iter().map(|(v, l)| (*v, l.to_string())).collect(),
            },
        )
    }

    /// A lookup to one table; the navigation property has the column's name.
    pub fn lookup(logical_name: impl Into<String>, target_table: impl Into<String>) -> Self {
        let name = logical_name.into();
        let targets = vec![LookupTarget {
            table: target_table.into(),
            navigation_property: name.clone(),
        }];
        Self::new(name, ColumnType::Lookup { targets })
    }

    /// A lookup to several tables (Customer type): one navigation property per target,
    /// `{column}_{table}` (e.g. `customerid_account`, `customerid_contact`).
    pub fn customer(logical_name: impl Into<String>, target_tables: &[&str]) -> Self {
        let name = logical_name.into();
        let targets = target_tables
            .iter()
            .map(|t| LookupTarget {
                table: t.to_string(),
                navigation_property: format!("{name}_{t}"),
            })
            .collect();
        Self::new(name, ColumnType::Lookup { targets })
    }

    /// A lookup with explicit `(navigation property, target table)` pairs (custom lookups bind
    /// by their schema-cased navigation property, e.g. `new_Account`).
    pub fn lookup_with_navigation(
        logical_name: impl Into<String>,
        targets: &[(&str, &str)],
    ) -> Self {
        let targets = targets
            .iter()
            .map(|(nav, table)| LookupTarget {
                table: table.to_string(),
                navigation_property: nav.to_string(),
            })
            .collect();
        Self::new(logical_name, ColumnType::Lookup { targets })
    }

    /// Marks the column read-only.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Marks the column settable on create only.
    pub fn create_only(mut self) -> Self {
        self.create_only = true;
        self
    }

    /// The property name this column has in rows and queries (`_x_value` for lookups).
    pub fn property_name(&self) -> String {
        match self.column_type {
            ColumnType::Lookup { .. } => format!("_{}_value", self.logical_name),
            _ => self.logical_name.clone(),
        }
    }
}

/// An alternate key: a named set of columns whose values are unique across the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlternateKey {
    /// Schema name of the key.
    pub name: String,
    /// Column logical names (at most 16).
    pub columns: Vec<String>,
}

/// One state of a table's `statecode`, with its statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateOption {
    /// `statecode` value.
    pub value: i64,
    /// Invariant label (`Open`, `Won`, …).
    pub label: String,
    /// The `statuscode` set when only `statecode` is given.
    pub default_status: i64,
    /// The `statuscode` values valid in this state, with labels.
    pub statuses: Vec<(i64, String)>,
}

/// The `statecode`/`statuscode` pairs of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateModel {
    /// States, the first being the state of a new row.
    pub states: Vec<StateOption>,
    /// Rows in a state other than the first are read-only until reopened (opportunity, lead).
    pub closed_states_read_only: bool,
}

impl StateModel {
    /// Active (0, status 1) / Inactive (1, status 2): accounts, contacts, custom tables.
    pub fn active_inactive() -> Self {
        StateModel {
            states: vec![
                state(0, "Active", 1, &[(1, "Active")]),
                state(1, "Inactive", 2, &[(2, "Inactive")]),
            ],
            closed_states_read_only: false,
        }
    }

    /// Opportunity: Open (1 In Progress, 2 On Hold), Won (3), Lost (4 Canceled, 5 Out-Sold).
    pub fn opportunity() -> Self {
        StateModel {
            states: vec![
                state(0, "Open", 1, &[(1, "In Progress"), (2, "On Hold")]),
                state(1, "Won", 3, &[(3, "Won")]),
                state(2, "Lost", 4, &[(4, "Canceled"), (5, "Out-Sold")]),
            ],
            closed_states_read_only: true,
        }
    }

    /// Lead: Open (1 New, 2 Contacted), Qualified (3), Disqualified (4–7).
    pub fn lead() -> Self {
        StateModel {
            states: vec![
                state(0, "Open", 1, &[(1, "New"), (2, "Contacted")]),
                state(1, "Qualified", 3, &[(3, "Qualified")]),
                state(
                    2,
                    "Disqualified",
                    4,
                    &[
                        (4, "Lost"),
                        (5, "Cannot Contact"),
                        (6, "No Longer Interested"),
                        (7, "Canceled"),
                    ],
                ),
            ],
            closed_states_read_only: true,
        }
    }

    /// Activities (e.g. `opportunityclose`): Open (1), Completed (2), Canceled (3).
    pub fn activity() -> Self {
        StateModel {
            states: vec![
                state(0, "Open", 1, &[(1, "Open")]),
                state(1, "Completed", 2, &[(2, "Completed")]),
                state(2, "Canceled", 3, &[(3, "Canceled")]),
            ],
            closed_states_read_only: false,
        }
    }

    /// The state with this value.
    pub fn state(&self, value: i64) -> Option<&StateOption> {
        self.states.iter().find(|s| s.value == value)
    }

    /// The state a status belongs to.
    pub fn state_of_status(&self, status: i64) -> Option<&StateOption> {
        self.states
            .iter()
            .find(|s| s.statuses.iter().any(|(v, _)| *v == status))
    }

    /// Label of a state.
    pub fn state_label(&self, value: i64) -> Option<&str> {
        self.state(value).map(|s| s.label.as_str())
    }

    /// Label of a status.
    pub fn status_label(&self, value: i64) -> Option<&str> {
        self.states
            .iter()
            .flat_map(|s| s.statuses.iter())
            .find(|(v, _)| *v == value)
            .map(|(_, l)| l.as_str())
    }
}

fn state(value: i64, label: &str, default_status: i64, statuses: &[(i64, &str)]) -> StateOption {
    StateOption {
        value,
        label: label.to_string(),
        default_status,
        statuses: statuses.iter().map(|(v, l)| (*v, l.to_string())).collect(),
    }
}

/// A table definition. System columns (primary key, `statecode`, `statuscode`, `createdon`,
/// `modifiedon`, `versionnumber`) are added by the emulator.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDef {
    /// Logical name (`opportunity`).
    pub logical_name: String,
    /// Entity set name used in URLs (`opportunities`).
    pub entity_set_name: String,
    /// Primary key column (`opportunityid`).
    pub primary_key: String,
    /// Primary name column (`name`), if any.
    pub primary_name: Option<String>,
    /// Declared columns (system columns excluded).
    pub columns: Vec<ColumnDef>,
    /// Alternate keys.
    pub alternate_keys: Vec<AlternateKey>,
    /// `statecode`/`statuscode` model; `None` for tables without state (intersect tables).
    pub state_model: Option<StateModel>,
    /// Change tracking enabled (default true).
    pub change_tracking: bool,
    /// An N:N intersect table: rows are created by associate/disassociate only.
    pub intersect: bool,
}

impl TableDef {
    /// A table with primary key `{logical_name}id`, the Active/Inactive state model, change
    /// tracking on, and no columns yet.
    pub fn new(logical_name: impl Into<String>, entity_set_name: impl Into<String>) -> Self {
        let logical_name = logical_name.into();
        TableDef {
            primary_key: format!("{logical_name}id"),
            logical_name,
            entity_set_name: entity_set_name.into(),
            primary_name: None,
            columns: Vec::new(),
            alternate_keys: Vec::new(),
            state_model: Some(StateModel::active_inactive()),
            change_tracking: true,
            intersect: false,
        }
    }

    /// Sets the primary key column name.
    pub fn primary_key(mut self, column: impl Into<String>) -> Self {
        self.primary_key = column.into();
        self
    }

    /// Sets the primary name column (add the column itself with [`column`](Self::column)).
    pub fn primary_name(mut self, column: impl Into<String>) -> Self {
        self.primary_name = Some(column.into());
        self
    }

    /// Adds (or replaces) a column.
    pub fn column(mut self, column: ColumnDef) -> Self {
        self.columns
            .retain(|c| c.logical_name != column.logical_name);
        self.columns.push(column);
        self
    }

    /// Adds an alternate key over `columns`.
    pub fn alternate_key(mut self, name: impl Into<String>, columns: &[&str]) -> Self {
        self.alternate_keys.push(AlternateKey {
            name: name.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
        });
        self
    }

    /// Sets the state model.
    pub fn state_model(mut self, model: StateModel) -> Self {
        self.state_model = Some(model);
        self
    }

    /// Turns change tracking on or off.
    pub fn change_tracking(mut self, enabled: bool) -> Self {
        self.change_tracking = enabled;
        self
    }

    /// The declared column with this logical name.
    pub fn declared_column(&self, logical_name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.logical_name == logical_name)
    }
}

/// An N:N relationship between two tables. Its intersect table (logical name = the
/// relationship's schema name, entity set `{schema_name}set`) holds one row per association
/// and is change-tracked like any table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManyToMany {
    /// Relationship schema name; also the collection-valued navigation property on both sides.
    pub schema_name: String,
    /// First table (logical name).
    pub table1: String,
    /// Second table (logical name).
    pub table2: String,
}

/// A currency seeded into `transactioncurrencies` at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedCurrency {
    /// ISO 4217 code.
    pub iso_code: String,
    /// Display name.
    pub name: String,
    /// Symbol.
    pub symbol: String,
    /// Exchange rate against the base currency.
    pub exchange_rate: f64,
    /// Decimal places.
    pub precision: i64,
}

/// Tables, columns, alternate keys and N:N relationships the emulator serves.
/// [`Default`] is the co-sell schema ([`DataverseSchema::cosell`]).
///
/// ```
/// use cosell_sandbox::dataverse::{ColumnDef, DataverseSchema, TableDef};
/// let schema = DataverseSchema::cosell()
///     .with_column("opportunity", ColumnDef::text("new_region", 50))
///     .with_table(
///         TableDef::new("new_project", "new_projects")
///             .primary_name("new_name")
///             .column(ColumnDef::text("new_name", 100))
///             .column(ColumnDef::text("new_code", 20))
///             .alternate_key("new_code_key", &["new_code"]),
///     );
/// assert!(schema.table("new_project").is_some());
/// assert!(schema.table_by_set("opportunities").is_some());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DataverseSchema {
    tables: BTreeMap<String, TableDef>,
    relationships: Vec<ManyToMany>,
    currencies: Vec<SeedCurrency>,
    base_currency: Option<String>,
    qualify_lead_copies: Vec<String>,
}

impl Default for DataverseSchema {
    fn default() -> Self {
        Self::cosell()
    }
}

impl DataverseSchema {
    /// No tables at all (add your own with [`with_table`](Self::with_table)).
    pub fn empty() -> Self {
        DataverseSchema {
            tables: BTreeMap::new(),
            relationships: Vec::new(),
            currencies: Vec::new(),
            base_currency: None,
            qualify_lead_copies: Vec::new(),
        }
    }

    /// The standard CRM tables the sync uses: `opportunity`, `lead`, `account`, `contact`,
    /// `transactioncurrency` (seeded with common currencies, every one the Partner Center
    /// generator emits among them, USD the base) and
    /// `opportunityclose`, without any co-sell customisation.
    pub fn standard() -> Self {
        let address = |t: TableDef| {
            t.column(ColumnDef::text("address1_line1", 250))
                .column(ColumnDef::text("address1_line2", 250))
                .column(ColumnDef::text("address1_line3", 250))
                .column(ColumnDef::text("address1_city", 80))
                .column(ColumnDef::text("address1_stateorprovince", 50))
                .column(ColumnDef::text("address1_postalcode", 20))
                .column(ColumnDef::text("address1_country", 80))
        };
        let opportunity = TableDef::new("opportunity", "opportunities")
            .primary_name("name")
            .state_model(StateModel::opportunity())
            .column(ColumnDef::text("name", 300))
            .column(ColumnDef::memo("description", 2000))
            .column(ColumnDef::money("estimatedvalue"))
            .column(ColumnDef::date_only("estimatedclosedate"))
            .column(ColumnDef::money("actualvalue"))
            .column(ColumnDef::date_only("actualclosedate"))
            .column(ColumnDef::integer("closeprobability"))
            .column(ColumnDef::customer("customerid", &["account", "contact"]))
            .column(ColumnDef::lookup("parentaccountid", "account"))
            .column(ColumnDef::lookup("parentcontactid", "contact"))
            .column(ColumnDef::lookup(
                "transactioncurrencyid",
                "transactioncurrency",
            ))
            .column(ColumnDef::lookup("originatingleadid", "lead"))
            .column(ColumnDef::text("stepname", 200))
            .column(ColumnDef::choice(
                "salesstage",
                &[(0, "Qualify"), (1, "Develop"), (2, "Propose"), (3, "Close")],
            ))
            .column(ColumnDef::choice(
                "opportunityratingcode",
                &[(1, "Hot"), (2, "Warm"), (3, "Cold")],
            ))
            .column(ColumnDef::choice(
                "msdyn_forecastcategory",
                &[
                    (100000001, "Pipeline"),
                    (100000002, "Best case"),
                    (100000003, "Committed"),
                    (100000004, "Omitted"),
                    (100000005, "Won"),
                    (100000006, "Lost"),
                ],
            ))
            .column(ColumnDef::text("emailaddress", 100))
            .column(ColumnDef::boolean("isrevenuesystemcalculated"))
            .column(ColumnDef::decimal("exchangerate").read_only());
        let lead = address(
            TableDef::new("lead", "leads")
                .primary_name("fullname")
                .state_model(StateModel::lead()),
        )
        .column(ColumnDef::text("subject", 300))
        .column(ColumnDef::text("firstname", 50))
        .column(ColumnDef::text("lastname", 50))
        .column(ColumnDef::text("fullname", 160).read_only())
        .column(ColumnDef::text("companyname", 100))
        .column(ColumnDef::text("emailaddress1", 100))
        .column(ColumnDef::text("telephone1", 50))
        .column(ColumnDef::text("jobtitle", 100))
        .column(ColumnDef::text("websiteurl", 200))
        .column(ColumnDef::memo("description", 2000))
        // Source: lead table reference (R-LEAD): `estimatedamount` is the Money column "Est.
        // Value" with its read-only base; `estimatedvalue` is a deprecated Double.
        .column(ColumnDef::money("estimatedamount"))
        .column(ColumnDef::money("estimatedamount_base").read_only())
        .column(ColumnDef::double("estimatedvalue"))
        .column(ColumnDef::date_only("estimatedclosedate"))
        .column(ColumnDef::customer("customerid", &["account", "contact"]))
        .column(ColumnDef::lookup("parentaccountid", "account"))
        .column(ColumnDef::lookup("parentcontactid", "contact"))
        .column(ColumnDef::lookup("qualifyingopportunityid", "opportunity"))
        .column(ColumnDef::lookup(
            "transactioncurrencyid",
            "transactioncurrency",
        ));
        let account = address(TableDef::new("account", "accounts").primary_name("name"))
            .column(ColumnDef::text("name", 160))
            .column(ColumnDef::text("accountnumber", 20))
            .column(ColumnDef::text("telephone1", 50))
            .column(ColumnDef::text("emailaddress1", 100))
            .column(ColumnDef::text("websiteurl", 200))
            .column(ColumnDef::memo("description", 2000))
            .column(ColumnDef::money("revenue"))
            .column(ColumnDef::integer("numberofemployees"))
            .column(ColumnDef::lookup("primarycontactid", "contact"))
            .column(ColumnDef::lookup("parentaccountid", "account"))
            .column(ColumnDef::lookup(
                "transactioncurrencyid",
                "transactioncurrency",
            ))
            .alternate_key("accountnumber_key", &["accountnumber"]);
        let contact = address(TableDef::new("contact", "contacts").primary_name("fullname"))
            .column(ColumnDef::text("firstname", 50))
            .column(ColumnDef::text("lastname", 50))
            .column(ColumnDef::text("fullname", 160).read_only())
            .column(ColumnDef::text("emailaddress1", 100))
            .column(ColumnDef::text("telephone1", 50))
            .column(ColumnDef::text("mobilephone", 50))
            .column(ColumnDef::text("jobtitle", 100))
            .column(ColumnDef::memo("description", 2000))
            .column(ColumnDef::customer(
                "parentcustomerid",
                &["account", "contact"],
            ));
        let currency = TableDef::new("transactioncurrency", "transactioncurrencies")
            .primary_name("currencyname")
            .column(ColumnDef::text("isocurrencycode", 5).create_only())
            .column(ColumnDef::text("currencyname", 100))
            .column(ColumnDef::text("currencysymbol", 10))
            .column(ColumnDef::decimal("exchangerate"))
            .column(ColumnDef::integer("currencyprecision"));
        let close = TableDef::new("opportunityclose", "opportunitycloses")
            .primary_key("activityid")
            .primary_name("subject")
            .state_model(StateModel::activity())
            .column(ColumnDef::text("subject", 200))
            .column(ColumnDef::memo("description", 2000))
            .column(ColumnDef::lookup("opportunityid", "opportunity"))
            .column(ColumnDef::money("actualrevenue"))
            // Source: opportunityclose reference (R-OPPCLOSE), DateTimeBehavior UserLocal:
            // an Edm.DateTimeOffset in the Web API.
            .column(ColumnDef::date_time("actualend"))
            .column(ColumnDef::lookup("competitorid", "competitor"));
        let currencies = [
            ("USD", "US Dollar", "$", 1.0, 2),
            ("EUR", "Euro", "€", 0.92, 2),
            ("GBP", "Pound Sterling", "£", 0.79, 2),
            ("JPY", "Yen", "¥", 151.0, 0),
            ("CAD", "Canadian Dollar", "$", 1.36, 2),
            ("AUD", "Australian Dollar", "$", 1.52, 2),
            ("CHF", "Swiss Franc", "CHF", 0.88, 2),
            ("INR", "Indian Rupee", "₹", 83.0, 2),
            ("BRL", "Brazilian Real", "R$", 5.0, 2),
            ("CNY", "Yuan Renminbi", "¥", 7.2, 2),
            // Every currency the Partner Center generator emits is here, so generated
            // referrals sync cleanly (a missing one is a test's own choice: NOK, PLN, …).
            ("SEK", "Swedish Krona", "kr", 10.5, 2),
            ("SGD", "Singapore Dollar", "S$", 1.35, 2),
            ("ZAR", "Rand", "R", 18.5, 2),
            ("MXN", "Mexican Peso", "$", 17.0, 2),
        ]
        .into_iter()
        .map(|(iso, name, symbol, rate, precision)| SeedCurrency {
            iso_code: iso.to_string(),
            name: name.to_string(),
            symbol: symbol.to_string(),
            exchange_rate: rate,
            precision,
        })
        .collect();
        // Solution components: the publisher whose prefix custom names carry, and the solution
        // that groups them for export (rows created with an ordinary POST).
        let publisher = TableDef::new("publisher", "publishers")
            .primary_name("friendlyname")
            .column(ColumnDef::text("uniquename", 256))
            .column(ColumnDef::text("friendlyname", 256))
            .column(ColumnDef::text("customizationprefix", 8))
            .column(ColumnDef::integer("customizationoptionvalueprefix"))
            .change_tracking(false);
        let solution = TableDef::new("solution", "solutions")
            .primary_name("friendlyname")
            .column(ColumnDef::text("uniquename", 256))
            .column(ColumnDef::text("friendlyname", 256))
            .column(ColumnDef::text("version", 256))
            .column(ColumnDef::memo("description", 2000))
            .column(ColumnDef::lookup("publisherid", "publisher"))
            .change_tracking(false);
        let mut schema = DataverseSchema::empty();
        for t in [
            opportunity,
            lead,
            account,
            contact,
            currency,
            close,
            publisher,
            solution,
        ] {
            schema = schema.with_table(t);
        }
        schema.currencies = currencies;
        schema.base_currency = Some("USD".to_string());
        schema
    }

    /// A new Dynamics 365 environment: [`standard`](Self::standard) with nothing of cosell's
    /// and change tracking off on opportunity and lead (as on a new environment, where it is
    /// enabled per table). Provisioning turns this into [`cosell`](Self::cosell)'s shape.
    pub fn bare() -> Self {
        Self::standard()
            .with_change_tracking("opportunity", false)
            .with_change_tracking("lead", false)
    }

    /// [`standard`](Self::standard) plus the co-sell customisation of DESIGN §6: the `cosell_*`
    /// columns on opportunity and lead, `cosell_referralid` as an alternate key on both, the
    /// `cosell_partnercentersolution` table, and the change-tracked link table
    /// `cosell_opportunitysolution` (lookups `cosell_OpportunityId` and
    /// `cosell_PartnerCenterSolutionId`) holding one row per solution on an opportunity. QualifyLead copies `cosell_referralid` and
    /// `cosell_syncwithpartnercenter` from the lead to the opportunity it creates (the
    /// solution's attribute maps).
    pub fn cosell() -> Self {
        // The options of "How can Microsoft help?", aligned with cosell-mapping's default
        // `choices.help_required` (one option per assistance-request code).
        let help = [
            (100000000, "No help needed"),
            (100000001, "General or other"),
            (100000002, "Customer technical architecture"),
            (100000003, "Proof of concept or demo"),
            (100000004, "Quotes or licensing"),
            (100000005, "Post-sales customer success"),
            (100000006, "Workload-specific value proposition"),
        ];
        let solution = TableDef::new(
            "cosell_partnercentersolution",
            "cosell_partnercentersolutions",
        )
        .primary_name("cosell_name")
        .column(ColumnDef::text("cosell_name", 200))
        .column(ColumnDef::text("cosell_solutionid", 100))
        .column(ColumnDef::text("cosell_solutiontype", 100))
        .column(ColumnDef::text("cosell_publishername", 200))
        .alternate_key("cosell_solutionid_key", &["cosell_solutionid"]);
        // A custom lookup binds by its schema-cased navigation property (Web API "Associate
        // table rows on create": single-valued navigation properties keep the schema name).
        let solution_link =
            TableDef::new("cosell_opportunitysolution", "cosell_opportunitysolutions")
                .primary_name("cosell_name")
                .column(ColumnDef::text("cosell_name", 200))
                .column(ColumnDef::lookup_with_navigation(
                    "cosell_opportunityid",
                    &[("cosell_OpportunityId", "opportunity")],
                ))
                .column(ColumnDef::lookup_with_navigation(
                    "cosell_partnercentersolutionid",
                    &[(
                        "cosell_PartnerCenterSolutionId",
                        "cosell_partnercentersolution",
                    )],
                ));
        let mut schema = Self::standard()
            .with_columns(
                "opportunity",
                [
                    ColumnDef::boolean("cosell_syncwithpartnercenter"),
                    ColumnDef::text("cosell_referralid", 100),
                    ColumnDef::text("cosell_engagementid", 100),
                    ColumnDef::text("cosell_referrallink", 2000),
                    ColumnDef::choice("cosell_helprequired", &help),
                    ColumnDef::boolean("cosell_visibletomicrosoft"),
                    ColumnDef::text("cosell_microsoftcrmid", 100),
                    ColumnDef::memo("cosell_audit", 100_000),
                ],
            )
            .with_alternate_key(
                "opportunity",
                "cosell_referralid_key",
                &["cosell_referralid"],
            )
            .with_columns(
                "lead",
                [
                    ColumnDef::boolean("cosell_syncwithpartnercenter"),
                    ColumnDef::text("cosell_referralid", 100),
                    ColumnDef::text("cosell_engagementid", 100),
                    ColumnDef::text("cosell_referrallink", 2000),
                    ColumnDef::memo("cosell_audit", 100_000),
                ],
            )
            .with_alternate_key("lead", "cosell_referralid_key", &["cosell_referralid"])
            .with_table(solution)
            .with_table(solution_link);
        schema.qualify_lead_copies = vec![
            "cosell_referralid".to_string(),
            "cosell_syncwithpartnercenter".to_string(),
        ];
        schema
    }

    /// Adds (or replaces) a table.
    pub fn with_table(mut self, table: TableDef) -> Self {
        self.tables.insert(table.logical_name.clone(), table);
        self
    }

    /// Adds a column to an existing table (ignored when the table is unknown).
    pub fn with_column(self, table: &str, column: ColumnDef) -> Self {
        self.with_columns(table, [column])
    }

    /// Adds columns to an existing table (ignored when the table is unknown).
    pub fn with_columns(
        mut self,
        table: &str,
        columns: impl IntoIterator<Item = ColumnDef>,
    ) -> Self {
        if let Some(t) = self.tables.remove(table) {
            let t = columns.into_iter().fold(t, TableDef::column);
            self.tables.insert(t.logical_name.clone(), t);
        }
        self
    }

    /// Adds an alternate key to an existing table (ignored when the table is unknown).
    pub fn with_alternate_key(mut self, table: &str, name: &str, columns: &[&str]) -> Self {
        if let Some(t) = self.tables.remove(table) {
            let t = t.alternate_key(name, columns);
            self.tables.insert(t.logical_name.clone(), t);
        }
        self
    }

    /// Turns change tracking on or off on an existing table (ignored when unknown).
    pub fn with_change_tracking(mut self, table: &str, enabled: bool) -> Self {
        if let Some(t) = self.tables.get_mut(table) {
            t.change_tracking = enabled;
        }
        self
    }

    /// Removes a column from an existing table (a test's way to misconfigure an environment).
    pub fn without_column(mut self, table: &str, column: &str) -> Self {
        if let Some(t) = self.tables.get_mut(table) {
            t.columns.retain(|c| c.logical_name != column);
            t.alternate_keys
                .retain(|k| !k.columns.iter().any(|c| c == column));
        }
        self
    }

    /// Removes an alternate key from an existing table.
    pub fn without_alternate_key(mut self, table: &str, key: &str) -> Self {
        if let Some(t) = self.tables.get_mut(table) {
            t.alternate_keys.retain(|k| k.name != key);
        }
        self
    }

    /// Adds an N:N relationship (and its intersect table).
    pub fn with_many_to_many(mut self, schema_name: &str, table1: &str, table2: &str) -> Self {
        self.relationships.push(ManyToMany {
            schema_name: schema_name.to_string(),
            table1: table1.to_string(),
            table2: table2.to_string(),
        });
        self
    }

    /// Replaces the currencies seeded at start-up; the first is the base currency (the default
    /// `transactioncurrencyid` of new rows).
    pub fn with_currencies(mut self, currencies: Vec<SeedCurrency>) -> Self {
        self.base_currency = currencies.first().map(|c| c.iso_code.clone());
        self.currencies = currencies;
        self
    }

    /// Columns QualifyLead copies from the lead to the opportunity it creates, when both
    /// tables have them (besides the standard mappings).
    pub fn with_qualify_lead_copies(mut self, columns: &[&str]) -> Self {
        self.qualify_lead_copies = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// The table with this logical name.
    pub fn table(&self, logical_name: &str) -> Option<&TableDef> {
        self.tables.get(logical_name)
    }

    /// The table with this entity set name.
    pub fn table_by_set(&self, entity_set_name: &str) -> Option<&TableDef> {
        self.tables
            .values()
            .find(|t| t.entity_set_name == entity_set_name)
    }

    /// Every table (intersect tables excluded), by logical name.
    pub fn tables(&self) -> impl Iterator<Item = &TableDef> {
        self.tables.values()
    }

    /// N:N relationships.
    pub fn relationships(&self) -> &[ManyToMany] {
        &self.relationships
    }

    /// Currencies seeded at start-up.
    pub fn currencies(&self) -> &[SeedCurrency] {
        &self.currencies
    }

    /// ISO code of the base currency.
    pub fn base_currency(&self) -> Option<&str> {
        self.base_currency.as_deref()
    }

    /// Columns QualifyLead copies from the lead to the new opportunity.
    pub fn qualify_lead_copies(&self) -> &[String] {
        &self.qualify_lead_copies
    }
}
