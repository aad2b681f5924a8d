#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod dataverse;
pub mod entra;
pub mod faults;
pub mod in_process;
pub mod partner_center;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use url::Url;

pub use dataverse::{DataverseEmulator, DataverseSchema};
pub use entra::EntraStandIn;
pub use faults::{Fault, FaultKind, Faults, Service};
pub use in_process::InProcessTransport;
pub use partner_center::PartnerCenterEmulator;

/// The base URLs of a running sandbox, one listener per emulated host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxUrls {
    /// Entra ID authority host: tokens at `{entra}/{tenant}/oauth2/v2.0/token`.
    pub entra: Url,
    /// Partner Center referrals endpoint, `…/v1.0/engagements/` (the client's referrals endpoint).
    pub referrals: Url,
    /// Partner Center webhook API endpoint, `…/webhooks/v1/` (the client's webhooks endpoint).
    pub webhooks: Url,
    /// The host serving the webhook signing certificate (stands in for Microsoft's blob storage).
    pub certificates: Url,
    /// The PKI host serving the intermediate CA the signing certificate's AIA names (stands in
    /// for Microsoft's `www.microsoft.com/pkiops/certs/`).
    pub pki: Url,
    /// Dataverse environment URL (the API is under `api/data/v9.2/`).
    pub dataverse: Url,
}

/// What every emulator is built from: the shared Entra stand-in, fault switch, URLs and seed.
#[derive(Debug, Clone)]
pub struct EmulatorContext {
    /// Issues and checks tokens.
    pub entra: EntraStandIn,
    /// Fault switch and request counters.
    pub faults: Faults,
    /// Where every emulated host listens.
    pub urls: SandboxUrls,
    /// Seed for generated data.
    pub seed: u64,
}

/// The ports an in-process sandbox names in its URLs when none are given: low, privileged ports
/// nothing on a developer machine listens on, so a request that escaped the in-process transport
/// fails to connect instead of reaching something real.
pub const IN_PROCESS_PORTS: SandboxPorts = SandboxPorts {
    entra: 1,
    referrals: 2,
    webhooks: 3,
    certificates: 4,
    dataverse: 5,
    pki: 6,
};

/// Fixed ports for a standalone sandbox (0 = any free port).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxPorts {
    /// Entra ID stand-in.
    pub entra: u16,
    /// Partner Center referrals API.
    pub referrals: u16,
    /// Partner Center webhook API.
    pub webhooks: u16,
    /// Certificate host.
    pub certificates: u16,
    /// Dataverse.
    pub dataverse: u16,
    /// PKI host (the intermediate CA).
    pub pki: u16,
}

/// Configures and starts a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    ip: IpAddr,
    ports: SandboxPorts,
    seed: u64,
    token_lifetime: Duration,
    schema: DataverseSchema,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        SandboxBuilder {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: SandboxPorts::default(),
            seed: 42,
            token_lifetime: Duration::from_secs(3600),
            schema: DataverseSchema::default(),
        }
    }
}

impl SandboxBuilder {
    /// The address to bind (default 127.0.0.1; keep it on loopback).
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip = ip;
        self
    }

    /// Fixed ports (default: any free port for each host).
    pub fn ports(mut self, ports: SandboxPorts) -> Self {
        self.ports = ports;
        self
    }

    /// Seed for generated data and probabilistic faults (default 42).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Lifetime of issued access tokens (default one hour).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// The Dataverse tables, columns and alternate keys (default: the co-sell schema).
    pub fn dataverse_schema(mut self, schema: DataverseSchema) -> Self {
        self.schema = schema;
        self
    }

    /// Starts Dataverse bare, as a new environment: the standard tables only, nothing of
    /// cosell's ([`DataverseSchema::bare`]); provisioning creates the rest.
    pub fn bare_dataverse(self) -> Self {
        self.dataverse_schema(DataverseSchema::bare())
    }

    /// Binds every listener and starts serving. The servers stop when the [`Sandbox`] is dropped
    /// or [`Sandbox::shutdown`] is called.
    pub async fn start(self) -> io::Result<Sandbox> {
        let bind = |port: u16| TcpListener::bind(SocketAddr::new(self.ip, port));
        let entra_l = bind(self.ports.entra).await?;
        let referrals_l = bind(self.ports.referrals).await?;
        let webhooks_l = bind(self.ports.webhooks).await?;
        let certificates_l = bind(self.ports.certificates).await?;
        let dataverse_l = bind(self.ports.dataverse).await?;
        let pki_l = bind(self.ports.pki).await?;
        let port = |l: &TcpListener| l.local_addr().map(|a| a.port());
        let ports = SandboxPorts {
            entra: port(&entra_l)?,
            referrals: port(&referrals_l)?,
            webhooks: port(&webhooks_l)?,
            certificates: port(&certificates_l)?,
            dataverse: port(&dataverse_l)?,
            pki: port(&pki_l)?,
        };
        let mut sandbox = self.assemble(ports)?;
        let routers = sandbox.transport.routers();
        let mut tasks = JoinSet::new();
        for listener in [
            entra_l,
            referrals_l,
            webhooks_l,
            certificates_l,
            dataverse_l,
            pki_l,
        ] {
            let Some(router) = listener
                .local_addr()
                .ok()
                .and_then(|a| routers.get(&a.port()).cloned())
            else {
                continue;
            };
            tasks.spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!(error = %e, "sandbox listener stopped");
                }
            });
        }
        sandbox.partner_center.start_background(&mut tasks);
        sandbox.tasks = tasks;
        Ok(sandbox)
    }

    /// Builds the sandbox without sockets and without background tasks: its URLs name
    /// `http://<ip>:<port>/…` on ports that are never bound (the [`ports`](Self::ports) given,
    /// else [`IN_PROCESS_PORTS`]), and [`Sandbox::transport`] serves them in process, through
    /// the same fault middleware and counters as the listeners. Safe under paused tokio time and
    /// deterministic for a given seed; needs no runtime to build.
    ///
    /// Webhook deliveries are not sent in this mode (there is no delivery worker): push inbox
    /// hints yourself, or call [`PartnerCenterEmulator::start_background`] on a task set whose
    /// deliveries go through [`PartnerCenterEmulator::set_delivery_transport`].
    ///
    /// ```
    /// let sandbox = cosell_sandbox::Sandbox::builder().seed(7).start_in_process().unwrap();
    /// assert_eq!(sandbox.urls().dataverse.as_str(), "http://127.0.0.1:5/");
    /// ```
    pub fn start_in_process(self) -> io::Result<Sandbox> {
        let given = self.ports;
        let pick = |p: u16, default: u16| if p == 0 { default } else { p };
        let d = IN_PROCESS_PORTS;
        let ports = SandboxPorts {
            entra: pick(given.entra, d.entra),
            referrals: pick(given.referrals, d.referrals),
            webhooks: pick(given.webhooks, d.webhooks),
            certificates: pick(given.certificates, d.certificates),
            dataverse: pick(given.dataverse, d.dataverse),
            pki: pick(given.pki, d.pki),
        };
        self.assemble(ports)
    }

    /// The emulators, their URLs on `ports` and the in-process transport over their routers.
    fn assemble(self, ports: SandboxPorts) -> io::Result<Sandbox> {
        let mut seen = std::collections::BTreeSet::new();
        for p in [
            ports.entra,
            ports.referrals,
            ports.webhooks,
            ports.certificates,
            ports.dataverse,
            ports.pki,
        ] {
            if !seen.insert(p) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("port {p} is given to two emulated hosts"),
                ));
            }
        }
        let base = |port: u16, path: &str| -> io::Result<Url> {
            let addr = SocketAddr::new(self.ip, port);
            Url::parse(&format!("http://{addr}/{path}"))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        };
        let urls = SandboxUrls {
            entra: base(ports.entra, "")?,
            referrals: base(ports.referrals, "v1.0/engagements/")?,
            webhooks: base(ports.webhooks, "webhooks/v1/")?,
            certificates: base(ports.certificates, "")?,
            dataverse: base(ports.dataverse, "")?,
            pki: base(ports.pki, "")?,
        };
        let entra = EntraStandIn::new(self.token_lifetime);
        let faults = Faults::new(self.seed);
        let ctx = EmulatorContext {
            entra: entra.clone(),
            faults: faults.clone(),
            urls: urls.clone(),
            seed: self.seed,
        };
        let partner_center = PartnerCenterEmulator::new(ctx.clone());
        let dataverse = DataverseEmulator::new(ctx, self.schema);

        let with_faults = |router: Router, service: Service| {
            router.layer(axum::middleware::from_fn_with_state(
                faults::FaultLayerState {
                    service,
                    faults: faults.clone(),
                },
                faults::middleware,
            ))
        };
        let transport = InProcessTransport::new(
            self.ip.to_string(),
            [
                (
                    ports.entra,
                    "entra",
                    with_faults(entra.router(), Service::Entra),
                ),
                (
                    ports.referrals,
                    "referrals",
                    with_faults(partner_center.referrals_router(), Service::Referrals),
                ),
                (
                    ports.webhooks,
                    "webhooks",
                    with_faults(partner_center.webhooks_router(), Service::Webhooks),
                ),
                // The certificate host is Microsoft's storage, not an API: no faults, not counted.
                (
                    ports.certificates,
                    "certificates",
                    partner_center.certificates_router(),
                ),
                (
                    ports.dataverse,
                    "dataverse",
                    with_faults(dataverse.router(), Service::Dataverse),
                ),
                // Likewise the PKI host.
                (ports.pki, "pki", partner_center.pki_router()),
            ],
        );
        Ok(Sandbox {
            urls,
            entra,
            faults,
            partner_center,
            dataverse,
            transport: Arc::new(transport),
            tasks: JoinSet::new(),
        })
    }
}

/// Running emulators of Entra ID, Partner Center (referrals, webhooks, certificate and PKI hosts) and
/// Dataverse on loopback. Dropping it stops them.
///
/// ```
/// # let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// let sandbox = cosell_sandbox::Sandbox::builder().start().await.unwrap();
/// assert_eq!(sandbox.urls().referrals.host_str(), Some("127.0.0.1"));
/// sandbox.shutdown().await;
/// # });
/// ```
#[derive(Debug)]
pub struct Sandbox {
    urls: SandboxUrls,
    entra: EntraStandIn,
    faults: Faults,
    partner_center: PartnerCenterEmulator,
    dataverse: DataverseEmulator,
    transport: Arc<InProcessTransport>,
    tasks: JoinSet<()>,
}

impl Sandbox {
    /// A builder with the defaults (loopback, free ports, seed 42).
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// Starts a sandbox with the defaults.
    pub async fn start() -> io::Result<Sandbox> {
        Self::builder().start().await
    }

    /// Where each emulated host listens.
    pub fn urls(&self) -> &SandboxUrls {
        &self.urls
    }

    /// The Entra ID stand-in (register apps, issue refresh tokens, revoke tokens).
    pub fn entra(&self) -> &EntraStandIn {
        &self.entra
    }

    /// The fault switch and request counters.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The Partner Center emulator: control API (Microsoft's side), data, webhook deliveries.
    pub fn partner_center(&self) -> &PartnerCenterEmulator {
        &self.partner_center
    }

    /// The Dataverse emulator: tables, rows, limits.
    pub fn dataverse(&self) -> &DataverseEmulator {
        &self.dataverse
    }

    /// A transport that serves every emulated host in process (no socket), through the fault
    /// middleware and counters: give it to the clients and credentials with their
    /// `.transport(…)` builder methods. The only way to reach an in-process sandbox
    /// ([`SandboxBuilder::start_in_process`]); with listeners it skips the sockets.
    pub fn transport(&self) -> Arc<dyn cosell_http::HttpTransport> {
        self.transport.clone()
    }

    /// Stops every listener and background task.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}
