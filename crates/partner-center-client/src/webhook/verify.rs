//! Verification of signed Partner Center webhook callbacks (feature `webhook`).
//!
//! Partner Center signs the raw callback body with RSA PKCS#1 v1.5 / SHA-256 and names the
//! signing certificate by URL in the `X-MS-Certificate-Url` request header (reference §4.3).
//! Microsoft's sample verifier fetches whatever URL the request names, accepts the hash the
//! request names and substring-matches the issuer; [`WebhookVerifier`] does none of that:
//!
//! 1. the signature is read from `x-ms-signature` (`Signature <base64>` or a bare base64 value)
//!    or, when that header is absent, from `Authorization: Signature <base64>`, by a total parser;
//!    its decoded length must be 256–1024 bytes (RSA 2048–8192), so an empty, truncated or
//!    over-long value is refused before any work is done;
//! 2. `X-MS-Signature-Algorithm` must be `rsa-sha256` (ASCII case-insensitive); anything else is
//!    refused, so there is no downgrade;
//! 3. `X-MS-Certificate-Url` must match an allow-list rule ([`CertificateUrlRule`]); a URL off
//!    the list is refused **without any request being made**. The default rule admits only
//!    `https://3psostorageacct.blob.core.windows.net/cert/<[A-Za-z0-9._-]+>.cer` on the default
//!    port, without credentials, query or fragment;
//! 4. the certificate is fetched through the injected [`HttpTransport`] with a GET, a timeout,
//!    no redirect (a 3xx is an error) and a 64 KiB cap, accepted as DER or PEM (a PEM file may
//!    carry intermediates after the leaf), and cached by URL for a TTL (concurrent verifications
//!    of the same URL share one fetch);
//! 5. the certificate must be inside its validity window, carry exactly one Organization (`O=`)
//!    equal to the expected one (default `Microsoft Corporation`) in its subject and its issuer,
//!    allow `digitalSignature` if it has a key usage extension, hold an RSA key, and chain to the
//!    configured trust anchors (rustls-webpki);
//! 6. the signature is checked over the **raw body bytes** with aws-lc-rs
//!    (`RSA_PKCS1_2048_8192_SHA256`), and only then is the body parsed as a
//!    [`WebhookCallback`].
//!
//! ## Key usage and extended key usage
//!
//! webpki has no "document signing" purpose: [`webpki::KeyUsage::server_auth`] would reject a
//! signing certificate whose EKU lists only `codeSigning` or `clientAuth`, and Microsoft does not
//! document the EKU of its dispatch certificate (its name, `pcnotifications-dispatch.microsoft.com`,
//! suggests a TLS certificate with `serverAuth`/`clientAuth`). The verifier therefore passes its
//! own EKU policy to [`webpki::EndEntityCert::verify_for_usage`]: a certificate **without** an
//! EKU extension is accepted; one **with** it must list one of `serverAuth`, `clientAuth`,
//! `codeSigning`, `documentSigning` (RFC 9336), Microsoft's document signing
//! (`1.3.6.1.4.1.311.10.3.12`) or `anyExtendedKeyUsage`. webpki applies the policy to every
//! certificate on the path, so an intermediate restricted to, say, e-mail protection still
//! fails. The (non-extended) key usage extension is checked here, not by webpki: when present it
//! must include `digitalSignature` (RFC 5280 §4.2.1.3). webpki also refuses a CA certificate as
//! the signing (end-entity) certificate.
//!
//! ## Production trust
//!
//! webpki does not fetch missing intermediates (no AIA chasing). The `.cer` Partner Center points
//! at is most likely the leaf alone, so in production configure the Microsoft issuing CA
//! certificate(s) with [`WebhookVerifierBuilder::intermediates_pem`]; the default anchors are the
//! Mozilla roots of `webpki-roots`.
//!
//! ## Responding
//!
//! [`VerificationError::http_status`] gives the status to answer: 400 for missing
//! `X-MS-Certificate-Url`/`X-MS-Signature-Algorithm` headers or an unparsable body, 401 for a
//! missing, malformed or wrong signature or an untrusted certificate, 503 when the certificate
//! could not be fetched (Partner Center retries). Failures are logged with a reason code and the
//! SHA-256 of the body only: never the body or the headers, which may carry customer data.
//!
//! ```no_run
//! # async fn demo(headers: http::HeaderMap, body: bytes::Bytes) -> Result<(), Box<dyn std::error::Error>> {
//! use partner_center_client::webhook::verify::WebhookVerifier;
//!
//! let verifier = WebhookVerifier::builder()
//!     .intermediates_pem(std::fs::read("microsoft-issuing-ca.pem")?)
//!     .build()?;
//! match verifier.verify(&headers, &body).await {
//!     Ok(verified) => println!("{} {}", verified.callback.event_name, verified.body_sha256),
//!     Err(e) => println!("answer {}", e.http_status()),
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use cosell_http::{HttpTransport, TransportErrorKind};
use http::HeaderMap;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use url::{Host, Url};
use x509_cert::Certificate;
use x509_cert::der::Decode as _;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::ext::pkix::KeyUsage as X509KeyUsage;
use x509_cert::ext::pkix::name::DirectoryString;
use x509_cert::name::Name;

use super::callback::{CallbackError, WebhookCallback, body_sha256_hex};

/// The only host Partner Center serves its signing certificate from (reference §1.4).
pub const PARTNER_CENTER_CERTIFICATE_HOST: &str = "3psostorageacct.blob.core.windows.net";
/// The default expected Organization of the signing certificate's subject and issuer.
pub const DEFAULT_EXPECTED_ORGANIZATION: &str = "Microsoft Corporation";
/// The default cap on a fetched certificate's size (64 KiB).
pub const DEFAULT_MAX_CERTIFICATE_BYTES: usize = 64 * 1024;
/// The default time a fetched certificate is reused (1 hour).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60 * 60);
/// The default time allowed for one certificate fetch (10 s).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Header carrying the signature when the registration sets `SignatureTokenToMsSignatureHeader`.
pub const X_MS_SIGNATURE: &str = "x-ms-signature";
/// Header naming the signature algorithm (must be `rsa-sha256`).
pub const X_MS_SIGNATURE_ALGORITHM: &str = "x-ms-signature-algorithm";
/// Header naming the signing certificate's URL.
pub const X_MS_CERTIFICATE_URL: &str = "x-ms-certificate-url";

/// Longest header value looked at.
const MAX_HEADER_LEN: usize = 8 * 1024;
/// RSA 2048 to RSA 8192: the only signature lengths `RSA_PKCS1_2048_8192_SHA256` can accept.
const SIGNATURE_LEN: std::ops::RangeInclusive<usize> = 256..=1024;
/// Certificate URLs kept in the cache at most (URLs are allow-listed, but their file names vary).
const MAX_CACHE_ENTRIES: usize = 32;

const OID_ORGANIZATION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Extended key usages a signing certificate may list (see the module docs).
const ACCEPTED_EKUS: &[&[usize]] = &[
    &[1, 3, 6, 1, 5, 5, 7, 3, 1],        // serverAuth
    &[1, 3, 6, 1, 5, 5, 7, 3, 2],        // clientAuth
    &[1, 3, 6, 1, 5, 5, 7, 3, 3],        // codeSigning
    &[1, 3, 6, 1, 5, 5, 7, 3, 36],       // documentSigning (RFC 9336)
    &[1, 3, 6, 1, 4, 1, 311, 10, 3, 12], // Microsoft document signing
    &[2, 5, 29, 37, 0],                  // anyExtendedKeyUsage
];
/// DER of id-kp-serverAuth, only used to describe a failed EKU check to webpki.
const EKU_SERVER_AUTH_DER: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

// ---------------------------------------------------------------------------------------------
// Errors

/// Which header carried the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureHeader {
    /// `Authorization: Signature <base64>` (the default registration).
    Authorization,
    /// `x-ms-signature` (`SignatureTokenToMsSignatureHeader: true`).
    XMsSignature,
}

/// Why the signing certificate could not be obtained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchFailure {
    /// No response within the fetch timeout.
    #[error("timed out")]
    Timeout,
    /// The transport failed below HTTP.
    #[error("transport failure ({0:?})")]
    Transport(TransportErrorKind),
    /// The server answered with a redirect, which is never followed.
    #[error("redirect ({0}) refused")]
    Redirect(u16),
    /// The server answered with a non-success status.
    #[error("status {0}")]
    Status(u16),
    /// The body exceeds the size cap.
    #[error("certificate larger than {0} bytes")]
    TooLarge(usize),
    /// The body is empty.
    #[error("empty response")]
    Empty,
}

/// Why a callback was refused. Every variant is safe to log: none carries the body or a
/// signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerificationError {
    /// A required header is absent (`Authorization`, `x-ms-certificate-url` or
    /// `x-ms-signature-algorithm`).
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// The certificate URL or algorithm header is repeated, too long or not visible ASCII.
    #[error("malformed header `{0}`")]
    MalformedHeader(&'static str),
    /// The signature header is not `Signature <base64>` of a plausible RSA signature.
    #[error("malformed signature: {0}")]
    MalformedSignature(&'static str),
    /// The algorithm is not `rsa-sha256`.
    #[error("unsupported signature algorithm `{0}`")]
    UnsupportedAlgorithm(String),
    /// The certificate URL is not on the allow-list; nothing was fetched.
    #[error("certificate URL not allowed: {0}")]
    CertificateUrlNotAllowed(String),
    /// The certificate could not be fetched.
    #[error("certificate fetch failed: {0}")]
    CertificateFetch(FetchFailure),
    /// The certificate could not be parsed or is unfit for signing.
    #[error("invalid certificate: {0}")]
    CertificateInvalid(String),
    /// The certificate does not chain to a configured trust anchor.
    #[error("certificate does not chain to a trusted root")]
    UntrustedChain,
    /// The certificate's Organization is not the expected one.
    #[error("certificate organization mismatch: expected `{expected}`, found {found:?}")]
    OrganizationMismatch {
        /// The configured Organization.
        expected: String,
        /// The Organization(s) found (subject or issuer, whichever did not match).
        found: Vec<String>,
    },
    /// The certificate (or one on its chain) is past its `notAfter`.
    #[error("certificate expired")]
    Expired,
    /// The certificate (or one on its chain) is before its `notBefore`.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// The signature does not match the body and the certificate's key.
    #[error("signature does not verify")]
    BadSignature,
    /// The signature verified but the body is not a valid callback.
    #[error("callback payload: {0}")]
    Payload(CallbackError),
}

impl VerificationError {
    /// The HTTP status a receiver should answer with.
    ///
    /// * 400: a missing or malformed `x-ms-certificate-url` / `x-ms-signature-algorithm` header
    ///   (as Microsoft's sample does), or a signed body that is not a callback;
    /// * 401: a missing, malformed or wrong signature, a refused algorithm or certificate URL, or
    ///   a certificate that is invalid, untrusted, expired or of the wrong organization;
    /// * 503: the certificate could not be fetched for a reason that may pass (timeout,
    ///   transport failure, 5xx, 429), so Partner Center should retry the delivery.
    pub fn http_status(&self) -> u16 {
        match self {
            VerificationError::MissingHeader(h) | VerificationError::MalformedHeader(h)
                if *h != "Authorization" =>
            {
                400
            }
            VerificationError::Payload(_) => 400,
            VerificationError::CertificateFetch(f) if fetch_is_transient(f) => 503,
            _ => 401,
        }
    }

    /// Whether the receiver should answer 400 (the request is incomplete, not forged).
    pub fn is_client_error(&self) -> bool {
        self.http_status() == 400
    }

    /// Whether the receiver should answer 401 (authentication failed).
    pub fn is_unauthorized(&self) -> bool {
        self.http_status() == 401
    }

    /// Whether the failure may pass on a retry (answer 503).
    pub fn is_retryable(&self) -> bool {
        self.http_status() == 503
    }

    /// A short, stable reason code for logs and metrics.
    pub fn reason_code(&self) -> &'static str {
        match self {
            VerificationError::MissingHeader(_) => "missing_header",
            VerificationError::MalformedHeader(_) => "malformed_header",
            VerificationError::MalformedSignature(_) => "malformed_signature",
            VerificationError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            VerificationError::CertificateUrlNotAllowed(_) => "certificate_url_not_allowed",
            VerificationError::CertificateFetch(_) => "certificate_fetch",
            VerificationError::CertificateInvalid(_) => "certificate_invalid",
            VerificationError::UntrustedChain => "untrusted_chain",
            VerificationError::OrganizationMismatch { .. } => "organization_mismatch",
            VerificationError::Expired => "certificate_expired",
            VerificationError::NotYetValid => "certificate_not_yet_valid",
            VerificationError::BadSignature => "bad_signature",
            VerificationError::Payload(_) => "payload",
        }
    }
}

fn fetch_is_transient(f: &FetchFailure) -> bool {
    match f {
        FetchFailure::Timeout | FetchFailure::Transport(_) => true,
        FetchFailure::Status(s) => *s >= 500 || *s == 429 || *s == 408,
        _ => false,
    }
}

/// A configuration the builder refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifierConfigError {
    /// No transport was given and the default one could not be built.
    #[error("no transport: {0}")]
    Transport(String),
    /// A PEM input held no certificate or a malformed one.
    #[error("invalid {what} PEM: {reason}")]
    InvalidPem {
        /// `trust anchors` or `intermediates`.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The trust anchor set is empty.
    #[error("no trust anchors")]
    NoTrustAnchors,
    /// No certificate URL rule is configured.
    #[error("no certificate URL is allowed")]
    NoCertificateUrlRule,
    /// A certificate URL rule is unusable.
    #[error("invalid certificate URL rule: {0}")]
    InvalidRule(String),
    /// A rule allows plain `http` but `allow_http_loopback(true)` was not set.
    #[error("rule for http://{0} needs allow_http_loopback(true)")]
    HttpLoopbackNotEnabled(String),
    /// The expected organization is empty.
    #[error("the expected organization is empty")]
    EmptyOrganization,
}

// ---------------------------------------------------------------------------------------------
// Certificate URL allow-list

/// Which port a [`CertificateUrlRule`] admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PortMatch {
    /// Only the scheme's default port (the URL names no port, or names 443/80).
    Default,
    /// Exactly this port.
    Exact(u16),
    /// Any port: allowed only for plain-`http` loopback rules (a sandbox on `127.0.0.1:0`).
    Any,
}

/// One allow-listed certificate location: scheme, host, port and path prefix.
///
/// A URL matches when its scheme and host are equal to the rule's (host compared after URL
/// normalisation, i.e. lower-case), its port matches, it has no user info, query or fragment, and
/// its path is the prefix followed by one file name of `[A-Za-z0-9._-]+` (not starting with `.`)
/// ending in the rule's suffix, if any. The raw header must also contain no `%`, `\`, `@` or
/// white space, so nothing is left to URL normalisation.
///
/// ```
/// use partner_center_client::webhook::verify::{CertificateUrlRule, PortMatch};
/// let ms = CertificateUrlRule::partner_center();
/// assert!(ms.matches_str("https://3psostorageacct.blob.core.windows.net/cert/pcnotifications-dispatch.microsoft.com.cer"));
/// assert!(!ms.matches_str("https://3psostorageacct.blob.core.windows.net/cert/x.cer?sv=1"));
/// assert!(!ms.matches_str("https://evil.blob.core.windows.net/cert/x.cer"));
/// let sandbox = CertificateUrlRule::new("http", "127.0.0.1", PortMatch::Any, "/cert/");
/// assert!(sandbox.matches_str("http://127.0.0.1:41234/cert/sandbox.pem"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateUrlRule {
    scheme: String,
    host: String,
    port: PortMatch,
    path_prefix: String,
    file_suffix: Option<String>,
}

impl CertificateUrlRule {
    /// The Partner Center rule: `https`, host `3psostorageacct.blob.core.windows.net`, default
    /// port, path `/cert/<name>.cer`.
    pub fn partner_center() -> Self {
        CertificateUrlRule::new(
            "https",
            PARTNER_CENTER_CERTIFICATE_HOST,
            PortMatch::Default,
            "/cert/",
        )
        .with_file_suffix(".cer")
    }

    /// A rule for `scheme://host[:port]{path_prefix}<file>`. `scheme` is `https` or `http`
    /// (`http` only on a loopback IP with [`WebhookVerifierBuilder::allow_http_loopback`]);
    /// `host` is a DNS name or an IP literal (`::1` or `[::1]`); `path_prefix` starts and ends
    /// with `/` (a missing slash is added). Checked by [`WebhookVerifierBuilder::build`].
    pub fn new(
        scheme: impl Into<String>,
        host: impl Into<String>,
        port: PortMatch,
        path_prefix: impl Into<String>,
    ) -> Self {
        let mut path_prefix: String = path_prefix.into();
        if !path_prefix.starts_with('/') {
            path_prefix.insert(0, '/');
        }
        if !path_prefix.ends_with('/') {
            path_prefix.push('/');
        }
        let host: String = host.into();
        let host = host.trim().to_ascii_lowercase();
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        CertificateUrlRule {
            scheme: scheme.into().to_ascii_lowercase(),
            host,
            port,
            path_prefix,
            file_suffix: None,
        }
    }

    /// Requires the file name to end with `suffix` (e.g. `.cer`).
    pub fn with_file_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.file_suffix = Some(suffix.into());
        self
    }

    /// A rule from a URL prefix such as `http://127.0.0.1:8080/cert/`: its scheme, host, port
    /// ([`PortMatch::Exact`] when the URL names one, else [`PortMatch::Default`]) and path.
    pub fn from_prefix(prefix: &str) -> Result<Self, VerifierConfigError> {
        let url = Url::parse(prefix)
            .map_err(|e| VerifierConfigError::InvalidRule(format!("`{prefix}`: {e}")))?;
        let host = url
            .host_str()
            .ok_or_else(|| VerifierConfigError::InvalidRule(format!("`{prefix}` has no host")))?;
        let port = url.port().map_or(PortMatch::Default, PortMatch::Exact);
        Ok(CertificateUrlRule::new(
            url.scheme(),
            host,
            port,
            url.path(),
        ))
    }

    /// Whether `raw` (a certificate URL header value) matches this rule.
    pub fn matches_str(&self, raw: &str) -> bool {
        parse_certificate_url(raw).is_some_and(|url| self.matches(&url))
    }

    fn matches(&self, url: &Url) -> bool {
        if url.scheme() != self.scheme
            || !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
            || url.host_str() != Some(self.host.as_str())
        {
            return false;
        }
        let port_ok = match self.port {
            PortMatch::Default => url.port().is_none(),
            PortMatch::Exact(p) => url.port_or_known_default() == Some(p),
            PortMatch::Any => true,
        };
        if !port_ok {
            return false;
        }
        let Some(file) = url.path().strip_prefix(self.path_prefix.as_str()) else {
            return false;
        };
        let name_ok = !file.is_empty()
            && !file.starts_with('.')
            && file
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        let suffix_ok = match &self.file_suffix {
            Some(s) => file.len() > s.len() && file.ends_with(s.as_str()),
            None => true,
        };
        name_ok && suffix_ok
    }

    fn is_loopback_ip(&self) -> bool {
        match Host::parse(&self.host) {
            Ok(Host::Ipv4(ip)) => ip.is_loopback(),
            Ok(Host::Ipv6(ip)) => ip.is_loopback(),
            _ => false,
        }
    }

    fn check(&self, allow_http_loopback: bool) -> Result<(), VerifierConfigError> {
        if Host::parse(&self.host).is_err() || self.host.is_empty() {
            return Err(VerifierConfigError::InvalidRule(format!(
                "bad host `{}`",
                self.host
            )));
        }
        match self.scheme.as_str() {
            "https" => {}
            "http" if self.is_loopback_ip() => {
                if !allow_http_loopback {
                    return Err(VerifierConfigError::HttpLoopbackNotEnabled(
                        self.host.clone(),
                    ));
                }
            }
            "http" => {
                return Err(VerifierConfigError::InvalidRule(format!(
                    "plain http is allowed only on a loopback IP, not `{}`",
                    self.host
                )));
            }
            other => {
                return Err(VerifierConfigError::InvalidRule(format!(
                    "scheme `{other}`"
                )));
            }
        }
        if self.port == PortMatch::Any && !(self.scheme == "http" && self.is_loopback_ip()) {
            return Err(VerifierConfigError::InvalidRule(
                "PortMatch::Any is allowed only for http loopback rules".into(),
            ));
        }
        if self.path_prefix.contains(['?', '#', '%', '\\']) || self.path_prefix.contains("/../") {
            return Err(VerifierConfigError::InvalidRule(format!(
                "bad path prefix `{}`",
                self.path_prefix
            )));
        }
        Ok(())
    }
}

fn parse_certificate_url(raw: &str) -> Option<Url> {
    let raw = raw.trim();
    if raw.is_empty()
        || raw.len() > 2048
        || raw
            .bytes()
            .any(|b| matches!(b, b'%' | b'\\' | b'@') || b.is_ascii_whitespace() || !b.is_ascii())
    {
        return None;
    }
    Url::parse(raw).ok()
}

// ---------------------------------------------------------------------------------------------
// Result

/// A callback whose signature, certificate and payload were verified.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct VerifiedCallback {
    /// The parsed callback.
    pub callback: WebhookCallback,
    /// SHA-256 (lower-case hex) of the signing certificate's DER.
    pub certificate_thumbprint: String,
    /// The (allow-listed) certificate URL the key came from.
    pub certificate_url: String,
    /// SHA-256 (lower-case hex) of the raw body: the delivery dedupe key.
    pub body_sha256: String,
    /// Which header carried the signature.
    pub signature_header: SignatureHeader,
}

/// Which names must carry the expected Organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OrganizationScope {
    /// Subject and issuer (default).
    #[default]
    SubjectAndIssuer,
    /// The subject only.
    Subject,
    /// The issuer only (what Microsoft's sample checks).
    Issuer,
}

// ---------------------------------------------------------------------------------------------
// Builder

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Builder for [`WebhookVerifier`]; see each method for its default.
pub struct WebhookVerifierBuilder {
    transport: Option<Arc<dyn HttpTransport>>,
    rules: Vec<CertificateUrlRule>,
    allow_http_loopback: bool,
    anchors_pem: Vec<Vec<u8>>,
    intermediates_pem: Vec<Vec<u8>>,
    organization: String,
    organization_scope: OrganizationScope,
    cache_ttl: Duration,
    fetch_timeout: Duration,
    max_certificate_bytes: usize,
    clock: Clock,
}

impl fmt::Debug for WebhookVerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifierBuilder")
            .field("transport", &self.transport)
            .field("rules", &self.rules)
            .field("allow_http_loopback", &self.allow_http_loopback)
            .field("anchors_pem", &self.anchors_pem.len())
            .field("intermediates_pem", &self.intermediates_pem.len())
            .field("organization", &self.organization)
            .field("organization_scope", &self.organization_scope)
            .field("cache_ttl", &self.cache_ttl)
            .field("fetch_timeout", &self.fetch_timeout)
            .field("max_certificate_bytes", &self.max_certificate_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for WebhookVerifierBuilder {
    fn default() -> Self {
        WebhookVerifierBuilder {
            transport: None,
            rules: vec![CertificateUrlRule::partner_center()],
            allow_http_loopback: false,
            anchors_pem: Vec::new(),
            intermediates_pem: Vec::new(),
            organization: DEFAULT_EXPECTED_ORGANIZATION.to_string(),
            organization_scope: OrganizationScope::default(),
            cache_ttl: DEFAULT_CACHE_TTL,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            max_certificate_bytes: DEFAULT_MAX_CERTIFICATE_BYTES,
            clock: Arc::new(SystemTime::now),
        }
    }
}

impl WebhookVerifierBuilder {
    /// The transport certificates are fetched through. Default:
    /// [`cosell_http::default_transport`] (reqwest, which never follows redirects).
    pub fn transport(mut self, transport: Arc<dyn HttpTransport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Adds an allow-listed certificate location. The list starts with
    /// [`CertificateUrlRule::partner_center`].
    pub fn allow_certificate_url(mut self, rule: CertificateUrlRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Replaces the whole allow-list, including the Partner Center default.
    pub fn certificate_url_rules(
        mut self,
        rules: impl IntoIterator<Item = CertificateUrlRule>,
    ) -> Self {
        self.rules = rules.into_iter().collect();
        self
    }

    /// Allows rules with plain `http` on a loopback IP (`127.0.0.0/8`, `::1`), for the sandbox.
    /// Default: false, and [`build`](Self::build) refuses such rules.
    pub fn allow_http_loopback(mut self, allow: bool) -> Self {
        self.allow_http_loopback = allow;
        self
    }

    /// Trust anchors (root certificates) in PEM. Once given, they **replace** the default
    /// Mozilla set of `webpki-roots`; repeated calls add up.
    pub fn trust_anchors_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.anchors_pem.push(pem.as_ref().to_vec());
        self
    }

    /// Intermediate CA certificates in PEM, used to build the chain from the signing certificate
    /// to an anchor (webpki does not download them). Default: none. Repeated calls add up.
    pub fn intermediates_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.intermediates_pem.push(pem.as_ref().to_vec());
        self
    }

    /// The exact Organization (`O=`) the certificate must carry. Default `Microsoft Corporation`.
    pub fn expected_organization(mut self, organization: impl Into<String>) -> Self {
        self.organization = organization.into();
        self
    }

    /// Which names must carry the organization. Default [`OrganizationScope::SubjectAndIssuer`].
    pub fn organization_scope(mut self, scope: OrganizationScope) -> Self {
        self.organization_scope = scope;
        self
    }

    /// How long a fetched certificate is reused. Default 1 hour ([`DEFAULT_CACHE_TTL`]). A
    /// certificate past its `notAfter` is fetched again regardless.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Time allowed for one certificate fetch. Default 10 s ([`DEFAULT_FETCH_TIMEOUT`]).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Largest certificate body accepted. Default 64 KiB ([`DEFAULT_MAX_CERTIFICATE_BYTES`]).
    pub fn max_certificate_bytes(mut self, max: usize) -> Self {
        self.max_certificate_bytes = max;
        self
    }

    /// The clock used for validity checks and the cache TTL. Default [`SystemTime::now`].
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Checks the configuration and builds the verifier.
    pub fn build(self) -> Result<WebhookVerifier, VerifierConfigError> {
        if self.rules.is_empty() {
            return Err(VerifierConfigError::NoCertificateUrlRule);
        }
        for rule in &self.rules {
            rule.check(self.allow_http_loopback)?;
        }
        if self.organization.trim().is_empty() {
            return Err(VerifierConfigError::EmptyOrganization);
        }
        let anchors: Vec<TrustAnchor<'static>> = if self.anchors_pem.is_empty() {
            webpki_roots::TLS_SERVER_ROOTS.to_vec()
        } else {
            let mut anchors = Vec::new();
            for pem in &self.anchors_pem {
                for der in read_pem_certs(pem, "trust anchors")? {
                    let anchor = webpki::anchor_from_trusted_cert(&der).map_err(|e| {
                        VerifierConfigError::InvalidPem {
                            what: "trust anchors",
                            reason: format!("{e:?}"),
                        }
                    })?;
                    anchors.push(anchor.to_owned());
                }
            }
            anchors
        };
        if anchors.is_empty() {
            return Err(VerifierConfigError::NoTrustAnchors);
        }
        let mut intermediates = Vec::new();
        for pem in &self.intermediates_pem {
            intermediates.extend(read_pem_certs(pem, "intermediates")?);
        }
        let transport = match self.transport {
            Some(t) => t,
            None => cosell_http::default_transport()
                .map_err(|e| VerifierConfigError::Transport(e.to_string()))?,
        };
        Ok(WebhookVerifier {
            inner: Arc::new(Inner {
                transport,
                rules: self.rules,
                anchors,
                intermediates,
                organization: self.organization,
                organization_scope: self.organization_scope,
                cache_ttl: self.cache_ttl,
                fetch_timeout: self.fetch_timeout,
                max_certificate_bytes: self.max_certificate_bytes,
                clock: self.clock,
                cache: StdMutex::new(HashMap::new()),
            }),
        })
    }
}

fn read_pem_certs(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, VerifierConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| VerifierConfigError::InvalidPem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(VerifierConfigError::InvalidPem {
            what,
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

// ---------------------------------------------------------------------------------------------
// Verifier

/// Verifies Partner Center webhook callbacks (see the [module docs](self)).
///
/// Cheap to clone (an `Arc` inside); share one instance so its certificate cache is shared.
#[derive(Clone)]
pub struct WebhookVerifier {
    inner: Arc<Inner>,
}

/// One cache slot per certificate URL; its async mutex makes concurrent verifications of the
/// same URL share one fetch.
type Slot = Arc<tokio::sync::Mutex<Option<CacheEntry>>>;

struct Inner {
    transport: Arc<dyn HttpTransport>,
    rules: Vec<CertificateUrlRule>,
    anchors: Vec<TrustAnchor<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
    organization: String,
    organization_scope: OrganizationScope,
    cache_ttl: Duration,
    fetch_timeout: Duration,
    max_certificate_bytes: usize,
    clock: Clock,
    cache: StdMutex<HashMap<String, Slot>>,
}

struct CacheEntry {
    fetched_at: SystemTime,
    certificate: Arc<SigningCertificate>,
}

/// A fetched and parsed signing certificate (time-independent facts only).
struct SigningCertificate {
    leaf: CertificateDer<'static>,
    /// Certificates that followed the leaf in a PEM response.
    extra: Vec<CertificateDer<'static>>,
    thumbprint: String,
    rsa_public_key: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
    subject_organizations: Vec<String>,
    issuer_organizations: Vec<String>,
}

impl fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("WebhookVerifier")
            .field("transport", &i.transport)
            .field("rules", &i.rules)
            .field("anchors", &i.anchors.len())
            .field("intermediates", &i.intermediates.len())
            .field("organization", &i.organization)
            .field("organization_scope", &i.organization_scope)
            .field("cache_ttl", &i.cache_ttl)
            .field("fetch_timeout", &i.fetch_timeout)
            .field("max_certificate_bytes", &i.max_certificate_bytes)
            .finish_non_exhaustive()
    }
}

impl WebhookVerifier {
    /// A builder with the production defaults: Partner Center certificate URL rule, Mozilla
    /// roots, organization `Microsoft Corporation` on subject and issuer, 1 h cache, 10 s fetch
    /// timeout, 64 KiB cap, system clock, default transport.
    pub fn builder() -> WebhookVerifierBuilder {
        WebhookVerifierBuilder::default()
    }

    /// Verifies a callback from its request headers and **raw** body bytes, then parses it.
    ///
    /// On failure logs (at `warn`) only the reason code and the body's SHA-256.
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<VerifiedCallback, VerificationError> {
        let body_sha256 = body_sha256_hex(body);
        match self.verify_inner(headers, body, body_sha256.clone()).await {
            Ok(v) => {
                tracing::debug!(
                    body_sha256 = %v.body_sha256,
                    certificate_thumbprint = %v.certificate_thumbprint,
                    event = %v.callback.event_name,
                    "webhook callback verified"
                );
                Ok(v)
            }
            Err(e) => {
                tracing::warn!(
                    reason = e.reason_code(),
                    body_sha256 = %body_sha256,
                    "webhook callback rejected"
                );
                Err(e)
            }
        }
    }

    async fn verify_inner(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        body_sha256: String,
    ) -> Result<VerifiedCallback, VerificationError> {
        let (signature, signature_header) = read_signature(headers)?;
        let algorithm = single_header(headers, X_MS_SIGNATURE_ALGORITHM)?
            .ok_or(VerificationError::MissingHeader(X_MS_SIGNATURE_ALGORITHM))?;
        if !algorithm.trim().eq_ignore_ascii_case("rsa-sha256") {
            return Err(VerificationError::UnsupportedAlgorithm(sanitize(algorithm)));
        }
        let raw_url = single_header(headers, X_MS_CERTIFICATE_URL)?
            .ok_or(VerificationError::MissingHeader(X_MS_CERTIFICATE_URL))?;
        let url = self.allowed_url(raw_url)?;

        let certificate = self.certificate(&url).await?;
        let now = (self.inner.clock)();
        self.check_certificate(&certificate, now)?;

        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            &certificate.rsa_public_key,
        )
        .verify(body, &signature)
        .map_err(|_| VerificationError::BadSignature)?;

        let callback = WebhookCallback::parse(body).map_err(VerificationError::Payload)?;
        Ok(VerifiedCallback {
            callback,
            certificate_thumbprint: certificate.thumbprint.clone(),
            certificate_url: url.to_string(),
            body_sha256,
            signature_header,
        })
    }

    fn allowed_url(&self, raw: &str) -> Result<Url, VerificationError> {
        parse_certificate_url(raw)
            .filter(|url| self.inner.rules.iter().any(|r| r.matches(url)))
            .ok_or_else(|| VerificationError::CertificateUrlNotAllowed(sanitize(raw)))
    }

    /// The cached certificate for `url`, fetched when absent or stale.
    async fn certificate(&self, url: &Url) -> Result<Arc<SigningCertificate>, VerificationError> {
        let key = url.as_str().to_string();
        let slot = self.slot(&key);
        let mut guard = slot.lock().await;
        let now = (self.inner.clock)();
        let previous_thumbprint = match guard.as_ref() {
            Some(entry) if self.is_fresh(entry, now) => return Ok(entry.certificate.clone()),
            Some(entry) => Some(entry.certificate.thumbprint.clone()),
            None => None,
        };
        let certificate = Arc::new(self.fetch(url).await?);
        if let Some(previous) = previous_thumbprint
            && previous != certificate.thumbprint
        {
            tracing::info!(
                certificate_thumbprint = %certificate.thumbprint,
                previous_thumbprint = %previous,
                "webhook signing certificate changed"
            );
        }
        *guard = Some(CacheEntry {
            fetched_at: now,
            certificate: certificate.clone(),
        });
        Ok(certificate)
    }

    fn is_fresh(&self, entry: &CacheEntry, now: SystemTime) -> bool {
        match now.duration_since(entry.fetched_at) {
            Ok(age) => age < self.inner.cache_ttl && now <= entry.certificate.not_after,
            Err(_) => false, // the clock went back: refetch
        }
    }

    fn slot(&self, key: &str) -> Slot {
        let mut cache = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = cache.get(key) {
            return slot.clone();
        }
        if cache.len() >= MAX_CACHE_ENTRIES {
            // Drop idle slots first (nobody else holds them), then anything idle at all.
            let now = (self.inner.clock)();
            cache.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot
                        .try_lock()
                        .map(|g| g.as_ref().is_some_and(|e| self.is_fresh(e, now)))
                        .unwrap_or(true)
            });
            if cache.len() >= MAX_CACHE_ENTRIES {
                cache.retain(|_, slot| Arc::strong_count(slot) > 1);
            }
        }
        let slot: Slot = Arc::new(tokio::sync::Mutex::new(None));
        cache.insert(key.to_string(), slot.clone());
        slot
    }

    async fn fetch(&self, url: &Url) -> Result<SigningCertificate, VerificationError> {
        let fetch_err = VerificationError::CertificateFetch;
        let request = http::Request::get(url.as_str())
            .header(
                http::header::ACCEPT,
                "application/pkix-cert, application/x-x509-ca-cert, application/x-pem-file, */*",
            )
            .body(Bytes::new())
            .map_err(|_| fetch_err(FetchFailure::Transport(TransportErrorKind::Request)))?;
        let response =
            tokio::time::timeout(self.inner.fetch_timeout, self.inner.transport.send(request))
                .await
                .map_err(|_| fetch_err(FetchFailure::Timeout))?
                .map_err(|e| {
                    if e.is_timeout() {
                        fetch_err(FetchFailure::Timeout)
                    } else {
                        fetch_err(FetchFailure::Transport(e.kind()))
                    }
                })?;
        let status = response.status();
        if status.is_redirection() {
            return Err(fetch_err(FetchFailure::Redirect(status.as_u16())));
        }
        if !status.is_success() {
            return Err(fetch_err(FetchFailure::Status(status.as_u16())));
        }
        let body = response.into_body();
        if body.len() > self.inner.max_certificate_bytes {
            return Err(fetch_err(FetchFailure::TooLarge(
                self.inner.max_certificate_bytes,
            )));
        }
        if body.is_empty() {
            return Err(fetch_err(FetchFailure::Empty));
        }
        parse_signing_certificate(&body)
    }

    fn check_certificate(
        &self,
        cert: &SigningCertificate,
        now: SystemTime,
    ) -> Result<(), VerificationError> {
        if now < cert.not_before {
            return Err(VerificationError::NotYetValid);
        }
        if now > cert.not_after {
            return Err(VerificationError::Expired);
        }

        let end_entity = webpki::EndEntityCert::try_from(&cert.leaf)
            .map_err(|e| VerificationError::CertificateInvalid(format!("{e:?}")))?;
        let mut intermediates = cert.extra.clone();
        intermediates.extend(self.inner.intermediates.iter().cloned());
        let since_epoch = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| VerificationError::NotYetValid)?;
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.inner.anchors,
                &intermediates,
                UnixTime::since_unix_epoch(since_epoch),
                SigningEku,
                None,
                None,
            )
            .map_err(map_webpki_error)?;

        let expected = &self.inner.organization;
        let scope = self.inner.organization_scope;
        let check_subject = matches!(
            scope,
            OrganizationScope::SubjectAndIssuer | OrganizationScope::Subject
        );
        let check_issuer = matches!(
            scope,
            OrganizationScope::SubjectAndIssuer | OrganizationScope::Issuer
        );
        for (check, found) in [
            (check_subject, &cert.subject_organizations),
            (check_issuer, &cert.issuer_organizations),
        ] {
            if check && !(found.len() == 1 && found[0] == *expected) {
                return Err(VerificationError::OrganizationMismatch {
                    expected: expected.clone(),
                    found: found.clone(),
                });
            }
        }
        Ok(())
    }
}

fn map_webpki_error(e: webpki::Error) -> VerificationError {
    #[allow(deprecated)]
    match e {
        // `InvalidSignatureForPublicKey` during path building means a candidate issuer (same
        // name as an anchor or intermediate) did not sign the certificate: an impostor CA.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            VerificationError::UntrustedChain
        }
        webpki::Error::CertExpired { .. } => VerificationError::Expired,
        webpki::Error::CertNotValidYet { .. } => VerificationError::NotYetValid,
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            VerificationError::CertificateInvalid(
                "extended key usage does not allow signing".into(),
            )
        }
        other => VerificationError::CertificateInvalid(format!("{other:?}")),
    }
}

/// The EKU policy for a signing certificate (see the module docs).
#[derive(Debug, Clone, Copy)]
struct SigningEku;

impl webpki::ExtendedKeyUsageValidator for SigningEku {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let mut present = Vec::new();
        for id in iter {
            let oid = id?.to_decoded_oid();
            if ACCEPTED_EKUS.contains(&oid.as_slice()) {
                return Ok(());
            }
            present.push(oid);
        }
        if present.is_empty() {
            return Ok(());
        }
        Err(webpki::Error::RequiredEkuNotFoundContext(
            webpki::RequiredEkuNotFoundContext {
                required: webpki::KeyUsage::required_if_present(EKU_SERVER_AUTH_DER),
                present,
            },
        ))
    }
}

/// Parses a fetched body: DER, or PEM with the leaf first and optional intermediates after it.
fn parse_signing_certificate(body: &[u8]) -> Result<SigningCertificate, VerificationError> {
    let invalid = |reason: &str| VerificationError::CertificateInvalid(reason.to_string());
    let trimmed = body.trim_ascii_start();
    let mut certs: Vec<CertificateDer<'static>> = if trimmed.starts_with(b"-----BEGIN") {
        CertificateDer::pem_slice_iter(trimmed)
            .collect::<Result<_, _>>()
            .map_err(|_| invalid("malformed PEM"))?
    } else {
        vec![CertificateDer::from(body.to_vec())]
    };
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE block in PEM"));
    }
    let leaf = certs.remove(0);
    let parsed =
        Certificate::from_der(leaf.as_ref()).map_err(|_| invalid("not an X.509 certificate"))?;
    let tbs = parsed.tbs_certificate();

    let spki = tbs.subject_public_key_info();
    if spki.algorithm.oid != OID_RSA_ENCRYPTION {
        return Err(invalid("not an RSA key"));
    }
    let rsa_public_key = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| invalid("malformed public key"))?
        .to_vec();

    match tbs.get_extension::<X509KeyUsage>() {
        Ok(None) => {}
        Ok(Some((_, usage))) if usage.digital_signature() => {}
        Ok(Some(_)) => return Err(invalid("key usage lacks digitalSignature")),
        Err(_) => return Err(invalid("malformed key usage")),
    }

    let validity = tbs.validity();
    Ok(SigningCertificate {
        thumbprint: body_sha256_hex(leaf.as_ref()),
        not_before: validity.not_before.to_system_time(),
        not_after: validity.not_after.to_system_time(),
        subject_organizations: organizations(tbs.subject())
            .ok_or_else(|| invalid("malformed subject"))?,
        issuer_organizations: organizations(tbs.issuer())
            .ok_or_else(|| invalid("malformed issuer"))?,
        rsa_public_key,
        leaf,
        extra: certs,
    })
}

/// Every Organization (`O=`) value of a name; `None` when one is not a directory string.
fn organizations(name: &Name) -> Option<Vec<String>> {
    name.iter()
        .filter(|atv| atv.oid == OID_ORGANIZATION)
        .map(|atv| {
            DirectoryString::try_from(&atv.value)
                .ok()
                .map(|s| s.value().into_owned())
        })
        .collect()
}

/// The one value of header `name`, as visible ASCII; a repeated, over-long or non-ASCII value
/// is malformed.
fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h str>, VerificationError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() || first.len() > MAX_HEADER_LEN {
        return Err(VerificationError::MalformedHeader(name));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| VerificationError::MalformedHeader(name))
}

/// Reads the signature: `x-ms-signature` when present (`Signature <b64>` or bare `<b64>`),
/// otherwise `Authorization: Signature <b64>`. Total: anything malformed is an error.
fn read_signature(headers: &HeaderMap) -> Result<(Vec<u8>, SignatureHeader), VerificationError> {
    let malformed = VerificationError::MalformedSignature;
    let repeated = |_| malformed("signature header repeated, too long or not ASCII");
    let (value, which) =
        if let Some(v) = single_header(headers, X_MS_SIGNATURE).map_err(repeated)? {
            (v, SignatureHeader::XMsSignature)
        } else if let Some(v) = single_header(headers, "authorization").map_err(repeated)? {
            (v, SignatureHeader::Authorization)
        } else {
            return Err(VerificationError::MissingHeader("Authorization"));
        };
    let value = value.trim();
    let token = match value.split_once([' ', '\t']) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("Signature") => rest.trim(),
        Some(_) => return Err(malformed("scheme is not `Signature`")),
        None if which == SignatureHeader::XMsSignature => value,
        None => return Err(malformed("Authorization lacks the `Signature` scheme")),
    };
    if token.is_empty() {
        return Err(malformed("empty signature"));
    }
    if token.contains([' ', '\t']) {
        return Err(malformed("unexpected white space in signature"));
    }
    // A 1024-byte signature is 1368 base64 characters; refuse longer input before decoding.
    if token.len() > 1400 {
        return Err(malformed("signature too long"));
    }
    let signature = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| malformed("signature is not base64"))?;
    if !SIGNATURE_LEN.contains(&signature.len()) {
        return Err(malformed(
            "signature length is not that of an RSA 2048-8192 signature",
        ));
    }
    Ok((signature, which))
}

/// A header value fit for an error message: at most 120 characters, controls replaced.
fn sanitize(value: &str) -> String {
    value
        .chars()
        .take(120)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rule_is_strict() {
        let r = CertificateUrlRule::partner_center();
        let ok = "https://3psostorageacct.blob.core.windows.net/cert/pcnotifications-dispatch.microsoft.com.cer";
        assert!(r.matches_str(ok));
        assert!(r.matches_str("https://3psostorageacct.blob.core.windows.net:443/cert/a.cer"));
        for bad in [
            "http://3psostorageacct.blob.core.windows.net/cert/a.cer",
            "https://3psostorageacct.blob.core.windows.net:8443/cert/a.cer",
            "https://u:p@3psostorageacct.blob.core.windows.net/cert/a.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/a.cer?x",
            "https://3psostorageacct.blob.core.windows.net/cert/a.cer#x",
            "https://3psostorageacct.blob.core.windows.net/cert/a.pem",
            "https://3psostorageacct.blob.core.windows.net/cert/.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/sub/a.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/../a.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/%2e%2e/a.cer",
            "https://3psostorageacct.blob.core.windows.net\\@evil.example/cert/a.cer",
            "https://3psostorageacct.blob.core.windows.net.evil.example/cert/a.cer",
            "https://evil.blob.core.windows.net/cert/a.cer",
            "https://169.254.169.254/cert/a.cer",
            "",
            "cert/a.cer",
        ] {
            assert!(!r.matches_str(bad), "{bad}");
        }
    }

    #[test]
    fn build_refuses_unsafe_rules() {
        let http_lo = CertificateUrlRule::new("http", "127.0.0.1", PortMatch::Any, "/cert/");
        assert_eq!(
            WebhookVerifier::builder()
                .allow_certificate_url(http_lo.clone())
                .build()
                .unwrap_err(),
            VerifierConfigError::HttpLoopbackNotEnabled("127.0.0.1".into())
        );
        assert!(matches!(
            WebhookVerifier::builder()
                .allow_http_loopback(true)
                .allow_certificate_url(CertificateUrlRule::new(
                    "http",
                    "example.com",
                    PortMatch::Default,
                    "/"
                ))
                .build(),
            Err(VerifierConfigError::InvalidRule(_))
        ));
        assert!(matches!(
            WebhookVerifier::builder()
                .allow_certificate_url(CertificateUrlRule::new(
                    "https",
                    "example.com",
                    PortMatch::Any,
                    "/"
                ))
                .build(),
            Err(VerifierConfigError::InvalidRule(_))
        ));
        let v6 = CertificateUrlRule::new("http", "::1", PortMatch::Exact(8080), "cert");
        assert!(v6.matches_str("http://[::1]:8080/cert/x.pem"));
        assert!(
            CertificateUrlRule::from_prefix("http://127.0.0.1:8080/cert/")
                .unwrap()
                .matches_str("http://127.0.0.1:8080/cert/x.cer")
        );
    }

    #[test]
    fn signature_header_parser_is_total() {
        let sig = base64::engine::general_purpose::STANDARD.encode([7u8; 256]);
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Signature {sig}").parse().unwrap());
        assert_eq!(
            read_signature(&h).unwrap().1,
            SignatureHeader::Authorization
        );
        h.insert(X_MS_SIGNATURE, sig.parse().unwrap());
        assert_eq!(read_signature(&h).unwrap().1, SignatureHeader::XMsSignature);
        for bad in [
            "",
            "Signature",
            "Signature ",
            "Bearer abc",
            "Signature a b",
            "Signature !!!!",
            "Signature AAAA",
        ] {
            let mut h = HeaderMap::new();
            h.insert("authorization", bad.parse().unwrap());
            assert!(
                matches!(
                    read_signature(&h),
                    Err(VerificationError::MalformedSignature(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(
            VerificationError::MissingHeader(X_MS_CERTIFICATE_URL).http_status(),
            400
        );
        assert_eq!(
            VerificationError::MissingHeader("Authorization").http_status(),
            401
        );
        assert!(VerificationError::BadSignature.is_unauthorized());
        assert!(VerificationError::CertificateFetch(FetchFailure::Timeout).is_retryable());
        assert!(VerificationError::CertificateFetch(FetchFailure::Redirect(302)).is_unauthorized());
    }
}
