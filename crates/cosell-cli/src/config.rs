//! The configuration of the `cosell` command: the TOML file, its defaults and its validation.
//! Every key is documented in `docs/sync-service.md`.
//!
//! Secrets are never in the file: it names the environment variables holding them, and they are
//! read into [`SecretString`]s that nothing prints.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cosell_mapping::FieldMap;
use cosell_sandbox::entra::{SANDBOX_CLIENT_SECRET, SANDBOX_REFRESH_TOKEN};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};
use url::{Host, Url};

/// A configuration problem, naming the key (dotted path) it is about.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ConfigError {
    /// Dotted key path (`endpoints.dataverse`); empty for a file-level problem.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl ConfigError {
    fn describe(&self) -> String {
        if self.key.is_empty() {
            format!("configuration: {}", self.message)
        } else {
            format!("configuration key `{}`: {}", self.key, self.message)
        }
    }
}

/// The whole file. Unknown keys are errors, so a typo is not silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// A field map file to load instead of the inline `[mapping]` table.
    #[serde(default)]
    pub(crate) mapping_file: Option<PathBuf>,
    pub(crate) endpoints: Endpoints,
    pub(crate) credentials: Credentials,
    #[serde(default)]
    pub(crate) store: Store,
    #[serde(default)]
    pub(crate) intervals: Intervals,
    #[serde(default)]
    pub(crate) engine: EngineSettings,
    #[serde(default)]
    pub(crate) server: Server,
    pub(crate) webhook: Webhook,
    #[serde(default)]
    pub(crate) shutdown: Shutdown,
    /// The field map inline (cosell's `FieldMap` TOML); absent = the defaults.
    #[serde(default)]
    pub(crate) mapping: Option<toml::Table>,
}

/// Where the services are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Endpoints {
    #[serde(default = "default_authority_host")]
    pub(crate) authority_host: String,
    pub(crate) tenant: String,
    #[serde(default = "default_referrals")]
    pub(crate) referrals: String,
    #[serde(default = "default_webhooks")]
    pub(crate) webhooks: String,
    pub(crate) dataverse: String,
}

fn default_authority_host() -> String {
    "https://login.microsoftonline.com/".to_string()
}
fn default_referrals() -> String {
    partner_center_client::DEFAULT_REFERRALS_ENDPOINT.to_string()
}
fn default_webhooks() -> String {
    partner_center_client::DEFAULT_WEBHOOKS_ENDPOINT.to_string()
}

/// The app registration; secrets by environment variable name only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Not a secret (it is in every token request), so it may be written here.
    pub client_id: String,
    /// The environment variable holding the app's client secret.
    #[serde(default = "default_client_secret_env")]
    pub client_secret_env: String,
    /// The environment variable holding the first app+user refresh token, read when
    /// `refresh_token_file` does not exist yet.
    #[serde(default = "default_refresh_token_env")]
    pub refresh_token_env: String,
    /// The file holding the current refresh token: written by `cosell login` and by the service
    /// each time Entra ID rotates the token (mode `0600`); default `refresh-token` beside the
    /// state store.
    #[serde(default)]
    pub refresh_token_file: Option<PathBuf>,
    /// Use the sandbox's published secret and refresh token when the variables are unset.
    #[serde(default)]
    pub sandbox_defaults: bool,
}

fn default_client_secret_env() -> String {
    "COSELL_CLIENT_SECRET".to_string()
}
fn default_refresh_token_env() -> String {
    "COSELL_REFRESH_TOKEN".to_string()
}

/// The state store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Store {
    pub(crate) path: PathBuf,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            path: PathBuf::from("cosell-sync.sqlite"),
        }
    }
}

/// How often each pass runs (defaults: `Schedule::default()`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Intervals {
    #[serde(deserialize_with = "duration")]
    pub(crate) inbox: Duration,
    #[serde(deserialize_with = "duration")]
    pub(crate) crm_changes: Duration,
    #[serde(deserialize_with = "duration")]
    pub(crate) reconcile: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        let s = cosell_sync::Schedule::default();
        Intervals {
            inbox: s.inbox,
            crm_changes: s.crm_changes,
            reconcile: s.reconcile,
        }
    }
}

/// A subset of `EngineConfig` (defaults: `EngineConfig::default()`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EngineSettings {
    pub(crate) dry_run: bool,
    pub(crate) parallelism: usize,
    #[serde(deserialize_with = "duration")]
    pub(crate) reconcile_overlap: Duration,
    #[serde(deserialize_with = "duration")]
    pub(crate) initial_lookback: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        let e = cosell_sync::EngineConfig::default();
        EngineSettings {
            dry_run: e.dry_run,
            parallelism: e.parallelism,
            reconcile_overlap: e.reconcile_overlap.to_std().unwrap_or_default(),
            initial_lookback: e.initial_lookback.to_std().unwrap_or_default(),
        }
    }
}

/// How long a stop waits for the pass in flight.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Shutdown {
    /// `0s` = as long as it takes.
    #[serde(deserialize_with = "duration")]
    pub(crate) grace: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            grace: Duration::from_secs(30),
        }
    }
}

/// The HTTP server (webhook, `/healthz`, `/status`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Server {
    pub(crate) listen: String,
    pub(crate) admin_listen: String,
    pub(crate) admin_token_env: Option<String>,
    pub(crate) max_connections: usize,
    #[serde(deserialize_with = "duration")]
    pub(crate) header_read_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub(crate) body_timeout: Duration,
    pub(crate) max_body_bytes: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "127.0.0.1:8080".to_string(),
            admin_listen: "127.0.0.1:8081".to_string(),
            admin_token_env: None,
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            // A callback is a few hundred bytes of JSON.
            max_body_bytes: 64 * 1024,
        }
    }
}

/// Limits of the webhook listener, so idle or slow connections cannot take it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (and how long an idle
    /// keep-alive connection is kept).
    pub header_read_timeout: Duration,
    /// How long reading a request body may take.
    pub body_timeout: Duration,
    /// The largest request body accepted; a larger one is refused before it is read.
    pub max_body_bytes: usize,
}

/// The callback: its public URL, its registration and its verification.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Webhook {
    pub(crate) public_url: String,
    #[serde(default = "yes")]
    pub(crate) register: bool,
    #[serde(default)]
    pub(crate) take_over_registration: bool,
    /// Hosts a callback's `ResourceUri` may name; empty = Partner Center's.
    #[serde(default)]
    pub(crate) resource_hosts: Vec<String>,
    #[serde(default)]
    pub(crate) verification: Verification,
}

fn yes() -> bool {
    true
}

/// How callbacks are verified (defaults: production Partner Center).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    /// Hosts a signing certificate may be fetched from (https, any path); empty = Microsoft's
    /// documented storage host.
    #[serde(default)]
    pub certificate_hosts: Vec<String>,
    /// Further allow-listed certificate URL prefixes, added to `certificate_hosts`.
    #[serde(default)]
    pub certificate_url_prefixes: Vec<String>,
    /// Further allow-listed issuer (AIA `caIssuers`) URL prefixes, added to the default
    /// Microsoft/DigiCert PKI hosts.
    #[serde(default)]
    pub issuer_url_prefixes: Vec<String>,
    /// PEM files or URLs of root CAs, added to the default (Mozilla) roots.
    #[serde(default)]
    pub trust_anchors: Vec<String>,
    /// Whether the default (Mozilla) roots are trusted; false = `trust_anchors` only.
    #[serde(default = "yes")]
    pub default_roots: bool,
    /// PEM files or URLs of intermediate CAs.
    #[serde(default)]
    pub intermediates: Vec<String>,
    /// The organization (O) the signing certificate's issuer must name.
    #[serde(default = "default_organization")]
    pub expected_organization: String,
}

fn default_organization() -> String {
    "Microsoft Corporation".to_string()
}

impl Default for Verification {
    fn default() -> Self {
        Verification {
            certificate_hosts: Vec::new(),
            certificate_url_prefixes: Vec::new(),
            issuer_url_prefixes: Vec::new(),
            trust_anchors: Vec::new(),
            default_roots: true,
            intermediates: Vec::new(),
            expected_organization: default_organization(),
        }
    }
}

/// Parses `250ms`, `2s`, `10m`, `1h`, `7d`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let millis: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(Duration::from_millis(n.checked_mul(millis)?))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration such as \"250ms\", \"2s\", \"10m\", \"1h\" or \"7d\""
        ))
    })
}

/// Whether `url` names a loopback host (`127.0.0.0/8`, `::1`, `localhost`).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Parses an endpoint URL: http(s), plain http only on loopback (bearer tokens and callbacks
/// must not cross a network in clear text), and a trailing `/` so relative paths join under it.
fn endpoint(key: &str, raw: &str) -> Result<Url, ConfigError> {
    let mut url =
        Url::parse(raw).map_err(|e| ConfigError::new(key, format!("`{raw}` is not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(ConfigError::new(
                key,
                format!("`{raw}`: plain http is only allowed on loopback; use https"),
            ));
        }
        other => {
            return Err(ConfigError::new(
                key,
                format!("`{raw}`: scheme `{other}` is not http or https"),
            ));
        }
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            key,
            format!("`{raw}` must not have a query or fragment"),
        ));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// The configuration, checked: what the service runs with.
#[derive(Debug)]
pub struct Settings {
    /// Entra ID's host (`endpoints.authority_host`).
    pub authority_host: Url,
    /// The tenant (`endpoints.tenant`).
    pub tenant: String,
    /// The referrals API (`endpoints.referrals`).
    pub referrals: Url,
    /// The webhook API (`endpoints.webhooks`).
    pub webhooks: Url,
    /// The Dataverse environment (`endpoints.dataverse`).
    pub dataverse: Url,
    /// The app registration (`[credentials]`).
    pub credentials: Credentials,
    /// Where the refresh token is kept (`credentials.refresh_token_file`, resolved).
    pub refresh_token_file: PathBuf,
    /// The SQLite state store (`store.path`).
    pub store_path: PathBuf,
    /// How often each pass runs (`[intervals]`).
    pub schedule: cosell_sync::Schedule,
    /// The engine's settings (`[engine]`).
    pub engine: cosell_sync::EngineConfig,
    /// The webhook listener (`server.listen`).
    pub listen: SocketAddr,
    /// The admin and status listener (`server.admin_listen`).
    pub admin_listen: SocketAddr,
    /// The environment variable holding the admin bearer token (`server.admin_token_env`).
    pub admin_token_env: Option<String>,
    /// The webhook listener's limits (`server.*`).
    pub limits: ListenerLimits,
    /// What Partner Center calls (`webhook.public_url`).
    pub public_url: Url,
    /// Whether the callback is registered at start-up (`webhook.register`).
    pub register: bool,
    /// Whether another URL's registration may be replaced (`webhook.take_over_registration`).
    pub take_over_registration: bool,
    /// Hosts a callback's `ResourceUri` may name (`webhook.resource_hosts`).
    pub resource_hosts: Vec<String>,
    /// How callbacks are verified (`[webhook.verification]`).
    pub verification: Verification,
    /// How long a stop waits for the pass in flight (`shutdown.grace`).
    pub shutdown_grace: Duration,
    /// The field map (`[mapping]` or `mapping_file`).
    pub map: FieldMap,
}

impl Settings {
    /// Reads and checks the file at `path`; a relative `mapping_file` is resolved against the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read `{}`: {e}", path.display())))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parses and checks a configuration; `base` resolves a relative `mapping_file`.
    pub fn parse(text: &str, base: &Path) -> Result<Settings, ConfigError> {
        // toml's message names the line and shows the offending key.
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::new("", e.to_string()))?;
        Self::check(config, base)
    }

    fn check(c: Config, base: &Path) -> Result<Settings, ConfigError> {
        let authority_host = endpoint("endpoints.authority_host", &c.endpoints.authority_host)?;
        let referrals = endpoint("endpoints.referrals", &c.endpoints.referrals)?;
        let webhooks = endpoint("endpoints.webhooks", &c.endpoints.webhooks)?;
        let dataverse = endpoint("endpoints.dataverse", &c.endpoints.dataverse)?;
        let tenant = c.endpoints.tenant.trim().to_string();
        if tenant.is_empty() || tenant.contains(['/', '?', '#']) {
            return Err(ConfigError::new(
                "endpoints.tenant",
                "must be a tenant id or domain (e.g. contoso.onmicrosoft.com)",
            ));
        }

        let cr = &c.credentials;
        if cr.client_id.trim().is_empty() {
            return Err(ConfigError::new(
                "credentials.client_id",
                "must not be empty",
            ));
        }
        for (key, name) in [
            ("credentials.client_secret_env", &cr.client_secret_env),
            ("credentials.refresh_token_env", &cr.refresh_token_env),
        ] {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(ConfigError::new(
                    key,
                    "must be the name of an environment variable",
                ));
            }
        }
        // The sandbox's secrets are public; never let them stand in for a real tenant's.
        if cr.sandbox_defaults {
            for (key, url) in [
                ("endpoints.authority_host", &authority_host),
                ("endpoints.referrals", &referrals),
                ("endpoints.webhooks", &webhooks),
                ("endpoints.dataverse", &dataverse),
            ] {
                if !is_loopback(url) {
                    return Err(ConfigError::new(
                        "credentials.sandbox_defaults",
                        format!(
                            "is only allowed when every endpoint is on loopback; `{key}` is `{url}`"
                        ),
                    ));
                }
            }
        }

        if c.store.path.as_os_str().is_empty() {
            return Err(ConfigError::new("store.path", "must not be empty"));
        }

        for (key, d) in [
            ("intervals.inbox", c.intervals.inbox),
            ("intervals.crm_changes", c.intervals.crm_changes),
            ("intervals.reconcile", c.intervals.reconcile),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be more than zero"));
            }
        }
        if c.engine.parallelism == 0 {
            return Err(ConfigError::new("engine.parallelism", "must be at least 1"));
        }
        let chrono_of = |key: &str, d: Duration| {
            chrono::Duration::from_std(d).map_err(|_| ConfigError::new(key, "is too long"))
        };
        let engine = cosell_sync::EngineConfig {
            dry_run: c.engine.dry_run,
            parallelism: c.engine.parallelism,
            reconcile_overlap: chrono_of("engine.reconcile_overlap", c.engine.reconcile_overlap)?,
            initial_lookback: chrono_of("engine.initial_lookback", c.engine.initial_lookback)?,
            ..cosell_sync::EngineConfig::default()
        };

        let address = |key: &str, raw: &str| {
            raw.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    key,
                    format!("`{raw}` is not an address such as 127.0.0.1:8080"),
                )
            })
        };
        let listen = address("server.listen", &c.server.listen)?;
        let admin_listen = address("server.admin_listen", &c.server.admin_listen)?;
        if admin_listen == listen && admin_listen.port() != 0 {
            return Err(ConfigError::new(
                "server.admin_listen",
                "must differ from `server.listen`: the admin endpoints are never on the webhook listener",
            ));
        }
        if let Some(name) = &c.server.admin_token_env
            && (name.is_empty() || name.contains(['=', '\0']))
        {
            return Err(ConfigError::new(
                "server.admin_token_env",
                "must be the name of an environment variable",
            ));
        }
        // Status and dead letters name customers' records: off loopback, only with a token.
        if !admin_listen.ip().is_loopback() && c.server.admin_token_env.is_none() {
            return Err(ConfigError::new(
                "server.admin_listen",
                format!(
                    "`{admin_listen}` is reachable from other machines; set `server.admin_token_env` too"
                ),
            ));
        }
        if c.server.max_connections == 0 {
            return Err(ConfigError::new(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        for (key, d) in [
            ("server.header_read_timeout", c.server.header_read_timeout),
            ("server.body_timeout", c.server.body_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::new(key, "must be more than zero"));
            }
        }
        if c.server.max_body_bytes < 1024 {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be at least 1024 (a callback is a few hundred bytes)",
            ));
        }
        let limits = ListenerLimits {
            max_connections: c.server.max_connections,
            header_read_timeout: c.server.header_read_timeout,
            body_timeout: c.server.body_timeout,
            max_body_bytes: c.server.max_body_bytes,
        };

        let public_url = Url::parse(&c.webhook.public_url).map_err(|e| {
            ConfigError::new(
                "webhook.public_url",
                format!("`{}` is not a URL: {e}", c.webhook.public_url),
            )
        })?;
        match public_url.scheme() {
            "https" => {}
            "http" if is_loopback(&public_url) => {}
            _ => {
                return Err(ConfigError::new(
                    "webhook.public_url",
                    "must be https (plain http only on loopback, for the sandbox)",
                ));
            }
        }
        for (i, host) in c.webhook.resource_hosts.iter().enumerate() {
            if host.is_empty() || host.contains(['/', ':', ' ']) {
                return Err(ConfigError::new(
                    format!("webhook.resource_hosts[{i}]"),
                    format!("`{host}` is not a host name"),
                ));
            }
        }
        let v = &c.webhook.verification;
        for (i, host) in v.certificate_hosts.iter().enumerate() {
            if host.is_empty() || host.contains(['/', ':', ' ', '@']) {
                return Err(ConfigError::new(
                    format!("webhook.verification.certificate_hosts[{i}]"),
                    format!("`{host}` is not a host name"),
                ));
            }
        }
        for (i, prefix) in v.issuer_url_prefixes.iter().enumerate() {
            let key = format!("webhook.verification.issuer_url_prefixes[{i}]");
            // AIA URLs are plain http by convention: what is fetched must chain to a root.
            let url = Url::parse(prefix)
                .map_err(|e| ConfigError::new(&key, format!("`{prefix}` is not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https")
                || url.query().is_some()
                || url.fragment().is_some()
                || url.as_str() != prefix
                || !prefix.ends_with('/')
            {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "`{prefix}` must be an http(s) URL prefix ending in `/`, such as `http://host/pkiops/certs/`"
                    ),
                ));
            }
        }
        if !v.default_roots && v.trust_anchors.is_empty() {
            return Err(ConfigError::new(
                "webhook.verification.default_roots",
                "false needs at least one `trust_anchors` entry",
            ));
        }
        for (i, prefix) in v.certificate_url_prefixes.iter().enumerate() {
            let key = format!("webhook.verification.certificate_url_prefixes[{i}]");
            let url = endpoint(&key, prefix)?;
            if url.as_str() != prefix {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "`{prefix}` must be a URL prefix ending in `/`, such as `https://host/cert/`"
                    ),
                ));
            }
        }
        for (name, list) in [
            ("trust_anchors", &v.trust_anchors),
            ("intermediates", &v.intermediates),
        ] {
            for (i, source) in list.iter().enumerate() {
                let key = format!("webhook.verification.{name}[{i}]");
                if source.starts_with("http://") || source.starts_with("https://") {
                    endpoint(&key, source)?;
                } else if source.trim().is_empty() {
                    return Err(ConfigError::new(key, "must be a PEM file path or a URL"));
                }
            }
        }
        if v.expected_organization.trim().is_empty() {
            return Err(ConfigError::new(
                "webhook.verification.expected_organization",
                "must not be empty",
            ));
        }

        let map = match (&c.mapping_file, &c.mapping) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "mapping_file",
                    "give either `mapping_file` or a `[mapping]` table, not both",
                ));
            }
            (Some(file), None) => {
                let file = base.join(file);
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    ConfigError::new(
                        "mapping_file",
                        format!("cannot read `{}`: {e}", file.display()),
                    )
                })?;
                FieldMap::from_toml(&text).map_err(|e| {
                    ConfigError::new("mapping_file", format!("`{}`: {e}", file.display()))
                })?
            }
            (None, Some(table)) => {
                let text = toml::to_string(table)
                    .map_err(|e| ConfigError::new("mapping", e.to_string()))?;
                FieldMap::from_toml(&text).map_err(|e| {
                    let key = if e.key().is_empty() {
                        "mapping".to_string()
                    } else {
                        format!("mapping.{}", e.key())
                    };
                    let shown = e.to_string();
                    let message = shown
                        .strip_prefix(&format!("{}: ", e.key()))
                        .unwrap_or(&shown)
                        .to_string();
                    ConfigError::new(key, message)
                })?
            }
            (None, None) => FieldMap::default(),
        };

        let refresh_token_file = match &c.credentials.refresh_token_file {
            Some(p) if p.as_os_str().is_empty() => {
                return Err(ConfigError::new(
                    "credentials.refresh_token_file",
                    "must not be empty",
                ));
            }
            Some(p) => p.clone(),
            None => c
                .store
                .path
                .parent()
                .unwrap_or(Path::new(""))
                .join("refresh-token"),
        };
        Ok(Settings {
            refresh_token_file,
            admin_listen,
            admin_token_env: c.server.admin_token_env,
            limits,
            authority_host,
            tenant,
            referrals,
            webhooks,
            dataverse,
            store_path: c.store.path,
            schedule: cosell_sync::Schedule {
                inbox: c.intervals.inbox,
                crm_changes: c.intervals.crm_changes,
                reconcile: c.intervals.reconcile,
            },
            engine,
            listen,
            public_url,
            register: c.webhook.register,
            take_over_registration: c.webhook.take_over_registration,
            resource_hosts: c.webhook.resource_hosts,
            verification: c.webhook.verification,
            shutdown_grace: c.shutdown.grace,
            credentials: c.credentials,
            map,
        })
    }

    /// The app's client secret, from its environment variable.
    pub fn client_secret(&self) -> Result<SecretString, ConfigError> {
        self.secret(
            "credentials.client_secret_env",
            &self.credentials.client_secret_env,
            SANDBOX_CLIENT_SECRET,
        )
    }

    /// The user's refresh token (app+user, for the referrals API): the one in
    /// `credentials.refresh_token_file` (kept current by `cosell login` and the service), else
    /// the environment variable's.
    pub fn refresh_token(&self) -> Result<SecretString, ConfigError> {
        match crate::token::read(&self.refresh_token_file) {
            Ok(Some(token)) => return Ok(token),
            Ok(None) => {}
            Err(e) => {
                return Err(ConfigError::new(
                    "credentials.refresh_token_file",
                    format!("cannot read `{}`: {e}", self.refresh_token_file.display()),
                ));
            }
        }
        self.secret(
            "credentials.refresh_token_env",
            &self.credentials.refresh_token_env,
            SANDBOX_REFRESH_TOKEN,
        )
    }

    /// The bearer token the admin endpoints require, when `server.admin_token_env` is set.
    pub fn admin_token(&self) -> Result<Option<SecretString>, ConfigError> {
        let Some(var) = &self.admin_token_env else {
            return Ok(None);
        };
        match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(Some(SecretString::from(value))),
            _ => Err(ConfigError::new(
                "server.admin_token_env",
                format!("environment variable `{var}` is not set or empty"),
            )),
        }
    }

    fn secret(&self, key: &str, var: &str, sandbox: &str) -> Result<SecretString, ConfigError> {
        match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(SecretString::from(value)),
            _ if self.credentials.sandbox_defaults => Ok(SecretString::from(sandbox.to_string())),
            Ok(_) => Err(ConfigError::new(
                key,
                format!("environment variable `{var}` is empty"),
            )),
            Err(_) => Err(ConfigError::new(
                key,
                format!("environment variable `{var}` is not set"),
            )),
        }
    }

    /// Whether the listen address is reachable from other machines (worth a log line).
    pub fn listens_publicly(&self) -> bool {
        !matches!(self.listen.ip(), IpAddr::V4(ip) if ip.is_loopback())
            && !matches!(self.listen.ip(), IpAddr::V6(ip) if ip.is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 weeks"), None);
    }
}
