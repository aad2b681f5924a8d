//! A complete cosell setup against the embedded sandbox: both emulators, the real clients with
//! the real Entra credential flows, a state store, the engine, and a verifying webhook receiver
//! registered with the emulated Partner Center. For trying cosell out, for examples, tests and
//! benches; production wiring looks the same with real endpoints and credentials (see
//! `examples/sync_service.rs`).
//!
//! ```
//! # let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! let s = cosell::sandboxed::Sandboxed::start().await.unwrap();
//! let report = s.engine.run_once().await.unwrap();
//! assert!(report.outcomes.is_empty(), "nothing to sync yet");
//! # });
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::json;

use crate::dataverse::DataverseClient;
use crate::http::{ClientSecretCredential, PacerConfig, RefreshTokenCredential, RetryPolicy};
use crate::mapping::FieldMap;
use crate::partner_center::PartnerCenterClient;
use crate::sandbox::dataverse::ControlError;
use crate::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use crate::sandbox::{Sandbox, SandboxBuilder};
use crate::sync::store::{MemoryStore, SqliteStore, StateStore};
use crate::sync::{DataverseCrm, Engine, EngineConfig, WebhookIntake, register_callback};

/// Why a sandboxed setup could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// A listener could not bind.
    #[error("sandbox: {0}")]
    Io(#[from] std::io::Error),
    /// A credential could not be built.
    #[error(transparent)]
    Credential(#[from] crate::http::CredentialError),
    /// The Partner Center client could not be built or registration failed.
    #[error(transparent)]
    PartnerCenter(#[from] crate::partner_center::Error),
    /// The Dataverse client could not be built.
    #[error(transparent)]
    Dataverse(#[from] crate::dataverse::Error),
    /// The state store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::sync::store::StoreError),
    /// The webhook verifier could not be configured.
    #[error(transparent)]
    Verifier(#[from] crate::partner_center::webhook::verify::VerifierConfigError),
}

/// Which state store to use.
#[derive(Debug, Clone, Default)]
pub enum StoreChoice {
    /// In memory (the default here).
    #[default]
    Memory,
    /// A SQLite file, created on first use.
    Sqlite(PathBuf),
    /// A store the caller opened (a PostgreSQL store several engines share).
    Shared(Arc<dyn StateStore>),
}

/// Configures a [`Sandboxed`] setup.
#[derive(Debug, Clone)]
pub struct SandboxedBuilder {
    sandbox: SandboxBuilder,
    store: StoreChoice,
    map: FieldMap,
    config: EngineConfig,
    retry: RetryPolicy,
    webhooks: bool,
    pacing: Option<PacerConfig>,
    change_page_size: Option<u32>,
}

impl Default for SandboxedBuilder {
    fn default() -> Self {
        SandboxedBuilder {
            sandbox: Sandbox::builder(),
            store: StoreChoice::default(),
            map: FieldMap::default(),
            config: EngineConfig::default(),
            retry: RetryPolicy::default()
                .with_initial_delay(Duration::from_millis(50))
                .with_max_attempts(5),
            webhooks: true,
            pacing: Some(PacerConfig::default()),
            change_page_size: None,
        }
    }
}

impl SandboxedBuilder {
    /// How the sandbox itself starts (ports, seed, schema).
    pub fn sandbox(mut self, sandbox: SandboxBuilder) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// The state store (default: in memory).
    pub fn store(mut self, store: StoreChoice) -> Self {
        self.store = store;
        self
    }

    /// The field map (default: the original solution's defaults).
    pub fn field_map(mut self, map: FieldMap) -> Self {
        self.map = map;
        self
    }

    /// Engine settings.
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// The clients' retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Whether to run a webhook receiver and register it (default true).
    pub fn webhooks(mut self, on: bool) -> Self {
        self.webhooks = on;
        self
    }

    /// How the Dataverse client paces itself under the service-protection budgets (default:
    /// Dataverse's documented budgets); `None` turns pacing off, for a bench that resets the
    /// emulator's windows between phases.
    pub fn dataverse_pacing(mut self, pacing: Option<PacerConfig>) -> Self {
        self.pacing = pacing;
        self
    }

    /// Reads the CRM change feeds in pages of at most `rows` rows
    /// ([`DataverseCrm::with_change_page_size`]; default: the emulator's 5,000), so a test can
    /// read a feed over many pages with few rows.
    pub fn crm_change_page_size(mut self, rows: u32) -> Self {
        self.change_page_size = Some(rows);
        self
    }

    /// Starts everything.
    pub async fn start(self) -> Result<Sandboxed, SetupError> {
        let sandbox = self.sandbox.clone().start().await?;
        Box::pin(self.start_with(sandbox)).await
    }

    /// Wires the clients, store, engine and webhook receiver to a sandbox that is already
    /// running (the builder's [`sandbox`](Self::sandbox) settings are not used). A bench runs
    /// the emulators on a runtime of their own this way, so what it measures of the engine's
    /// runtime is the engine's alone.
    pub async fn start_with(self, sandbox: Sandbox) -> Result<Sandboxed, SetupError> {
        let urls = sandbox.urls().clone();
        // App+user for the referrals API (a refresh token from the sandbox's "interactive
        // sign-in"), app-only for the webhook API and Dataverse: as in production.
        let refresh = sandbox.entra().issue_refresh_token(SANDBOX_CLIENT_ID);
        let user = RefreshTokenCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, refresh)
            .client_secret(SANDBOX_CLIENT_SECRET)
            .authority_host(urls.entra.as_str())
            .build()?;
        let app = ClientSecretCredential::builder(
            SANDBOX_TENANT,
            SANDBOX_CLIENT_ID,
            SANDBOX_CLIENT_SECRET,
        )
        .authority_host(urls.entra.as_str())
        .build()?;
        let partner_center = PartnerCenterClient::builder()
            .referrals_endpoint(urls.referrals.clone())
            .webhooks_endpoint(urls.webhooks.clone())
            .credential(Arc::new(user))
            .webhooks_credential(Arc::new(app.clone()))
            .retry(self.retry.clone())
            .build()?;
        let dataverse = DataverseClient::builder()
            .environment_url(urls.dataverse.clone())
            .credential(Arc::new(app))
            .retry(self.retry);
        let dataverse = match self.pacing {
            Some(pacing) => dataverse.pacing(pacing),
            None => dataverse.no_pacing(),
        }
        .build()?;
        let store: Arc<dyn StateStore> = match &self.store {
            StoreChoice::Memory => Arc::new(MemoryStore::new()),
            StoreChoice::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
            StoreChoice::Shared(store) => store.clone(),
        };
        let mut crm = DataverseCrm::new(dataverse.clone(), self.map.clone());
        if let Some(rows) = self.change_page_size {
            crm = crm.with_change_page_size(rows);
        }
        let crm = Arc::new(crm);
        let engine = Engine::new(
            Arc::new(partner_center.clone()),
            crm.clone(),
            store.clone(),
            self.config,
        );
        // The production defaults plus the sandbox's certificate host, PKI host and root: the
        // leaf is fetched alone and its intermediate through its AIA URL, as with Microsoft's.
        let verifier = sandbox
            .partner_center()
            .webhook_verifier_builder()
            .and_then(|b| b.build())?;
        let intake = WebhookIntake::new(Arc::new(verifier), store.clone())
            .with_resource_hosts(["127.0.0.1"]);
        let mut webhook_url = None;
        if self.webhooks {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}/webhook", listener.local_addr()?);
            let app = axum::Router::new()
                .route("/webhook", post(receive))
                .with_state(intake.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "webhook receiver stopped");
                }
            });
            register_callback(&partner_center, &url, false).await?;
            webhook_url = Some(url);
        }
        Ok(Sandboxed {
            sandbox,
            partner_center,
            dataverse,
            crm,
            store,
            engine,
            intake,
            webhook_url,
        })
    }
}

async fn receive(
    State(intake): State<WebhookIntake>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    match intake.receive(&headers, &body).await {
        Ok(_) => StatusCode::OK,
        Err(e) => StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
    }
}

/// Everything, running. Dropping it stops the emulators.
#[derive(Debug)]
pub struct Sandboxed {
    /// The emulators (control API: `sandbox.partner_center()`, `sandbox.dataverse()`,
    /// `sandbox.faults()`).
    pub sandbox: Sandbox,
    /// The Partner Center client.
    pub partner_center: PartnerCenterClient,
    /// The Dataverse client.
    pub dataverse: DataverseClient,
    /// The Dataverse CRM adapter the engine uses.
    pub crm: Arc<DataverseCrm>,
    /// The state store.
    pub store: Arc<dyn StateStore>,
    /// The engine.
    pub engine: Engine,
    /// The webhook intake behind the receiver.
    pub intake: WebhookIntake,
    /// The registered callback URL, when the receiver runs.
    pub webhook_url: Option<String>,
}

impl Sandboxed {
    /// A builder with the defaults.
    pub fn builder() -> SandboxedBuilder {
        SandboxedBuilder::default()
    }

    /// Starts with the defaults (in-memory store, webhooks on).
    pub async fn start() -> Result<Sandboxed, SetupError> {
        Self::builder().start().await
    }

    /// A new engine over the same clients and store, as a restarted process would build.
    pub fn restart_engine(&self, config: EngineConfig) -> Engine {
        Engine::new(
            Arc::new(self.partner_center.clone()),
            self.crm.clone(),
            self.store.clone(),
            config,
        )
    }

    /// A seller's opportunity marked for sync, written straight into the emulated CRM (as a
    /// CRM user would; not counted as an API call): a valid co-sell deal in USD (when the CRM has it) with its own
    /// customer account (Seattle, US), one contact, and the solution `SOL-34104-EBB` linked.
    /// Column names are the default field map's. Returns the opportunity id.
    ///
    /// ```
    /// # let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    /// # rt.block_on(async {
    /// let s = cosell::sandboxed::Sandboxed::builder().webhooks(false).start().await.unwrap();
    /// let id = s.seed_co_sell_opportunity("Northwind — data platform").unwrap();
    /// let report = s.engine.pull_crm_changes().await.unwrap();
    /// assert_eq!(report.count(cosell::sync::Action::CreatedReferral), 1);
    /// # let _ = id;
    /// # });
    /// ```
    pub fn seed_co_sell_opportunity(&self, name: &str) -> Result<uuid::Uuid, ControlError> {
        let dv = self.sandbox.dataverse();
        let slug: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_lowercase();
        let account = dv.insert_row(
            "account",
            json!({"name": format!("{name} Customer"), "address1_line1": "1 Main St",
                   "address1_city": "Seattle", "address1_postalcode": "98101",
                   "address1_country": "US"}),
        )?;
        let contact = dv.insert_row(
            "contact",
            json!({"firstname": "Sue", "lastname": "Smith",
                   "emailaddress1": format!("sue@{slug}.example"),
                   "parentcustomerid_account@odata.bind": format!("/accounts({account})")}),
        )?;
        let mut row = json!({"name": name, "estimatedvalue": 120000.0,
               "estimatedclosedate": "2027-06-30", "description": "Needs a proof of concept.",
               "cosell_syncwithpartnercenter": true, "cosell_helprequired": 100000003,
               "cosell_visibletomicrosoft": true,
               "customerid_account@odata.bind": format!("/accounts({account})"),
               "parentcontactid@odata.bind": format!("/contacts({contact})")});
        // Without a USD row (a custom schema), Dataverse's base currency applies.
        if let Some(usd) = dv.currency_id("USD") {
            row["transactioncurrencyid@odata.bind"] =
                json!(format!("/transactioncurrencies({usd})"));
        }
        let opportunity = dv.insert_row("opportunity", row)?;
        let solution = self.seed_solution("SOL-34104-EBB", "Contoso Supply Chain Suite")?;
        self.link_solution(opportunity, solution)?;
        Ok(opportunity)
    }

    /// Adds a solution to an opportunity as a seller does: a row in the solution link table
    /// (`cosell_opportunitysolution`, the form's "Solutions" subgrid). The change feed reports
    /// it. Returns the link row's id.
    pub fn link_solution(
        &self,
        opportunity: uuid::Uuid,
        solution: uuid::Uuid,
    ) -> Result<uuid::Uuid, ControlError> {
        self.sandbox.dataverse().insert_row(
            "cosell_opportunitysolution",
            json!({"cosell_OpportunityId@odata.bind": format!("/opportunities({opportunity})"),
                   "cosell_PartnerCenterSolutionId@odata.bind":
                       format!("/cosell_partnercentersolutions({solution})")}),
        )
    }

    /// The solution row with `solution_id`, created when missing.
    fn seed_solution(&self, solution_id: &str, name: &str) -> Result<uuid::Uuid, ControlError> {
        let dv = self.sandbox.dataverse();
        let existing = dv.query(
            "cosell_partnercentersolution",
            &format!("cosell_solutionid eq '{}'", solution_id.replace('\'', "''")),
        )?;
        if let Some(id) = existing
            .first()
            .and_then(|r| r.get("cosell_partnercentersolutionid"))
            .and_then(|v| v.as_str())
            .and_then(|v| uuid::Uuid::parse_str(v).ok())
        {
            return Ok(id);
        }
        dv.insert_row(
            "cosell_partnercentersolution",
            json!({"cosell_solutionid": solution_id, "cosell_name": name}),
        )
    }

    /// Waits until the emulated Partner Center has no webhook delivery in flight.
    pub async fn deliveries_settled(&self) {
        self.sandbox.partner_center().wait_for_deliveries().await;
    }
}
