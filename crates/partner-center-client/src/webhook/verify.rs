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
//!    the list is refused **without any request being made**. The default list is one
//!    host-wide rule for Microsoft's documented storage host, [`PARTNER_CENTER_CERTIFICATE_HOST`]
//!    (`https`, default port, any path of `[A-Za-z0-9._-]+` segments, no credentials, query,
//!    fragment, escapes or dot segments): Microsoft sends the URL so the certificate "can be
//!    renewed without you having to redeploy or reconfigure", so no folder or file is pinned.
//!    [`WebhookVerifierBuilder::certificate_hosts`] replaces the set of hosts;
//! 4. the certificate is fetched through the injected [`HttpTransport`] with a GET, a timeout,
//!    no redirect (a 3xx is an error) and a 64 KiB cap, accepted as DER or PEM (a PEM file may
//!    carry intermediates after the leaf), and cached by URL for a TTL (concurrent verifications
//!    of the same URL share one fetch). A failed fetch is remembered for a short negative TTL
//!    (30 s) and every fetch takes a token from a rate limit (10 a minute), so forged callbacks
//!    cannot make the service download on demand;
//! 5. the certificate must be inside its validity window, allow `digitalSignature` if it has a
//!    key usage extension, hold an RSA key, and chain to the trust anchors (rustls-webpki; the
//!    default anchors are the Mozilla roots of `webpki-roots`, which hold Microsoft's RSA/ECC
//!    Root Certificate Authority 2017 and DigiCert's roots). When the chain lacks an
//!    intermediate, the one named by the certificate's Authority Information Access
//!    `caIssuers` URL is fetched, but only from the issuer allow-list (default: http/https on
//!    [`DEFAULT_ISSUER_HOSTS`]), with the same cap, caches, negative cache and rate limit, up to
//!    two levels; an AIA URL off the list is refused without a request. The issuer's
//!    Organization (`O=`) must be exactly the expected one (default `Microsoft Corporation`, as
//!    Microsoft's sample checks; [`OrganizationScope`] can add the subject);
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
//! Microsoft's sample builds the chain with the operating system's store, which downloads
//! missing intermediates; the `.cer` Partner Center points at is most likely the leaf alone.
//! The defaults do the same with an allow-list: the leaf comes from Microsoft's storage host,
//! its issuing CA from Microsoft's or DigiCert's PKI hosts, the root from `webpki-roots`. An
//! intermediate can also be configured ([`WebhookVerifierBuilder::intermediates_pem`]) to need
//! no AIA fetch at all.
//!
//! ## Revocation
//!
//! Not checked. webpki can check CRLs it is given but fetches none, and an online check would be
//! a further request per unknown certificate; Microsoft documents neither the issuer nor any
//! CRL/OCSP location for the dispatch certificate. Leaves of Microsoft's Azure TLS issuing CAs
//! typically name `oneocsp.microsoft.com` (OCSP) and `www.microsoft.com/pkiops/crl/` (CRL); that
//! the dispatch certificate does is not confirmed.
//!
//! ## Fetch size cap
//!
//! Fetches go through [`HttpTransport::send_limited`]: a declared `Content-Length` above the
//! 64 KiB cap is refused before the body is read, and the reqwest transport reads the body chunk
//! by chunk and stops at the cap, so an endless body costs at most 64 KiB; the fetch timeout
//! bounds how long a slow one can take. (A transport without its own `send_limited` buffers the
//! body first and is then refused.)
//!
//! ## Responding
//!
//! [`VerificationError::http_status`] gives the status to answer: 400 for missing
//! `X-MS-Certificate-Url`/`X-MS-Signature-Algorithm` headers or an unparsable body, 401 for a
//! missing, malformed or wrong signature or an untrusted certificate, 503 when the certificate
//! or an intermediate could not be fetched for a reason that may pass, including the fetch
//! rate limit (Partner Center retries). Failures are logged with a reason code and the
//! SHA-256 of the body only: never the body or the headers, which may carry customer data.
//!
//! ```no_run
//! # async fn demo(headers: http::HeaderMap, body: bytes::Bytes) -> Result<(), Box<dyn std::error::Error>> {
//! use partner_center_client::webhook::verify::WebhookVerifier;
//!
//! // Microsoft's storage host, Microsoft/DigiCert issuer hosts, Mozilla roots.
//! let verifier = WebhookVerifier::builder().build()?;
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
use x509_cert::ext::pkix::name::DirectoryString;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{AuthorityInfoAccessSyntax, KeyUsage as X509KeyUsage};
use x509_cert::name::Name;

use super::callback::{CallbackError, WebhookCallback, body_sha256_hex};

/// The host Microsoft documents for the signing certificate (the sample `X-MS-Certificate-Url`
/// of the Partner Center webhooks page): the default certificate host allow-list.
pub const PARTNER_CENTER_CERTIFICATE_HOST: &str = "3psostorageacct.blob.core.windows.net";
/// The default allow-list of issuer (AIA `caIssuers`) hosts: Microsoft's PKI repository
/// (`http://www.microsoft.com/pkiops/certs/…`), Microsoft's `caissuers` host and DigiCert's:
/// where the issuing CAs on Azure's "Certificate Authority details" page are published.
pub const DEFAULT_ISSUER_HOSTS: &[&str] = &[
    "www.microsoft.com",
    "caissuers.microsoft.com",
    "cacerts.digicert.com",
];
/// The default expected Organization of the signing certificate's issuer.
pub const DEFAULT_EXPECTED_ORGANIZATION: &str = "Microsoft Corporation";
/// The default time a failed fetch is remembered and answered from memory (30 s).
pub const DEFAULT_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(30);
/// The default number of fetches (certificates and intermediates together) allowed per
/// [`DEFAULT_FETCH_RATE_PERIOD`], also the burst size.
pub const DEFAULT_FETCH_RATE: u32 = 10;
/// The period of [`DEFAULT_FETCH_RATE`] (1 minute).
pub const DEFAULT_FETCH_RATE_PERIOD: Duration = Duration::from_secs(60);
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
/// Intermediates fetched through AIA for one chain at most (leaf -> 2 CAs -> root).
const MAX_AIA_DEPTH: usize = 2;

const OID_ORGANIZATION: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.10");
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_AD_CA_ISSUERS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.2");

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
    /// The fetch rate limit is exhausted; nothing was requested.
    #[error("fetch rate limit reached")]
    RateLimited,
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
    /// The chain lacks an intermediate and the certificate's AIA `caIssuers` URL is absent or
    /// not on the issuer allow-list; nothing was fetched.
    #[error("issuer URL not allowed: {0}")]
    IssuerUrlNotAllowed(String),
    /// An intermediate named by an AIA `caIssuers` URL could not be fetched.
    #[error("intermediate fetch failed: {0}")]
    IssuerFetch(FetchFailure),
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
    /// * 503: the certificate or an intermediate could not be fetched for a reason that may pass
    ///   (timeout, transport failure, 5xx, 429, the verifier's own fetch rate limit), so Partner
    ///   Center should retry the delivery.
    pub fn http_status(&self) -> u16 {
        match self {
            VerificationError::MissingHeader(h) | VerificationError::MalformedHeader(h)
                if *h != "Authorization" =>
            {
                400
            }
            VerificationError::Payload(_) => 400,
            VerificationError::CertificateFetch(f) | VerificationError::IssuerFetch(f)
                if fetch_is_transient(f) =>
            {
                503
            }
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
            VerificationError::IssuerUrlNotAllowed(_) => "issuer_url_not_allowed",
            VerificationError::IssuerFetch(_) => "issuer_fetch",
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
        FetchFailure::Timeout | FetchFailure::Transport(_) | FetchFailure::RateLimited => true,
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

/// One allow-listed location: scheme, host, port and path prefix.
///
/// A URL matches when its scheme and host are equal to the rule's (host compared after URL
/// normalisation, i.e. lower-case), its port matches, it has no user info, query or fragment, and
/// its path is the prefix followed by one file name of `[A-Za-z0-9._-]+` (not starting with `.`)
/// ending in the rule's suffix, if any. A host-wide rule ([`CertificateUrlRule::host`]) admits
/// any number of such segments instead, so the certificate may move to another folder. The raw
/// header must also contain no `%`, `\`, `@`, white space or dot segment, so nothing is left to
/// URL normalisation (issuer URLs may carry `%XX` escapes other than `.`, `/` and `\`, as
/// Microsoft's `…/Microsoft%20Azure%20RSA%20TLS%20Issuing%20CA%2003.crt` do).
///
/// ```
/// use partner_center_client::webhook::verify::{CertificateUrlRule, PortMatch};
/// let ms = CertificateUrlRule::partner_center();
/// assert!(ms.matches_str("https://3psostorageacct.blob.core.windows.net/cert/pcnotifications-dispatch.microsoft.com.cer"));
/// assert!(ms.matches_str("https://3psostorageacct.blob.core.windows.net/cert2026/renewed.cer"));
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
    any_depth: bool,
}

impl CertificateUrlRule {
    /// The default certificate rule: `https`, host [`PARTNER_CENTER_CERTIFICATE_HOST`], default
    /// port, any path on that host. Microsoft sends the URL "so the certificate can be renewed
    /// without you having to redeploy or reconfigure", so no folder or file name is pinned.
    pub fn partner_center() -> Self {
        CertificateUrlRule::host("https", PARTNER_CENTER_CERTIFICATE_HOST, PortMatch::Default)
    }

    /// The default issuer rules: `http` or `https` on each of [`DEFAULT_ISSUER_HOSTS`], default
    /// port, any path.
    pub fn default_issuers() -> Vec<Self> {
        DEFAULT_ISSUER_HOSTS
            .iter()
            .map(|h| CertificateUrlRule::host("http", *h, PortMatch::Default))
            .chain(
                DEFAULT_ISSUER_HOSTS
                    .iter()
                    .map(|h| CertificateUrlRule::host("https", *h, PortMatch::Default)),
            )
            .collect()
    }

    /// A host-wide rule: `scheme://host[:port]/<segment>/…/<file>`, any depth of safe segments.
    pub fn host(scheme: impl Into<String>, host: impl Into<String>, port: PortMatch) -> Self {
        let mut rule = CertificateUrlRule::new(scheme, host, port, "/");
        rule.any_depth = true;
        rule
    }

    /// A rule for `scheme://host[:port]{path_prefix}<file>`. `scheme` is `https` or `http`
    /// (for a certificate rule, `http` only on a loopback IP with
    /// [`WebhookVerifierBuilder::allow_http_loopback`]); `host` is a DNS name or an IP literal
    /// (`::1` or `[::1]`); `path_prefix` starts and ends with `/` (a missing slash is added).
    /// Checked by [`WebhookVerifierBuilder::build`].
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
            any_depth: false,
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
        parse_certificate_url(raw).is_some_and(|url| self.matches(&url, false))
    }

    /// Whether `raw` (an AIA `caIssuers` URL) matches this rule as an issuer rule.
    pub fn matches_issuer_str(&self, raw: &str) -> bool {
        parse_issuer_url(raw).is_some_and(|url| self.matches(&url, true))
    }

    fn matches(&self, url: &Url, escapes: bool) -> bool {
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
        let Some(rest) = url.path().strip_prefix(self.path_prefix.as_str()) else {
            return false;
        };
        let segment_ok = |seg: &str| {
            !seg.is_empty()
                && !seg.starts_with('.')
                && seg.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'.' | b'_' | b'-')
                        || (escapes && b == b'%')
                })
        };
        let (dirs, file) = match rest.rsplit_once('/') {
            Some((dirs, file)) if self.any_depth => (Some(dirs), file),
            Some(_) => return false,
            None => (None, rest),
        };
        let name_ok = segment_ok(file) && dirs.is_none_or(|d| d.split('/').all(segment_ok));
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

    fn check(&self, allow_http_loopback: bool, issuer: bool) -> Result<(), VerifierConfigError> {
        if Host::parse(&self.host).is_err() || self.host.is_empty() {
            return Err(VerifierConfigError::InvalidRule(format!(
                "bad host `{}`",
                self.host
            )));
        }
        match self.scheme.as_str() {
            "https" => {}
            // An intermediate authenticates itself (it must chain to an anchor), and AIA URLs
            // are plain http by convention (RFC 5280 §4.2.2.1).
            "http" if issuer => {}
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
    if raw.bytes().any(|b| b == b'%') {
        return None;
    }
    parse_url(raw)
}

/// Like [`parse_certificate_url`], but `%XX` escapes are allowed unless they encode `.`, `/` or
/// `\` (which could smuggle a dot segment or a separator past the rule).
fn parse_issuer_url(raw: &str) -> Option<Url> {
    let raw = raw.trim();
    let bytes = raw.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            if matches!(value, b'.' | b'/' | b'\\') || value < 0x20 {
                return None;
            }
        }
    }
    parse_url(raw)
}

fn parse_url(raw: &str) -> Option<Url> {
    if raw.is_empty()
        || raw.len() > 2048
        || raw.contains("/.")
        || raw
            .bytes()
            .any(|b| matches!(b, b'\\' | b'@') || b.is_ascii_whitespace() || !b.is_ascii())
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
    /// Subject and issuer.
    SubjectAndIssuer,
    /// The subject only.
    Subject,
    /// The issuer only (default; what Microsoft's sample checks). The issuer name of the leaf
    /// is the subject of the CA certificate that signed it, as the chain check enforces, so
    /// this is the organization of the issuing CA.
    #[default]
    Issuer,
}

// ---------------------------------------------------------------------------------------------
// Builder

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Builder for [`WebhookVerifier`]; see each method for its default.
pub struct WebhookVerifierBuilder {
    transport: Option<Arc<dyn HttpTransport>>,
    rules: Vec<CertificateUrlRule>,
    issuer_rules: Vec<CertificateUrlRule>,
    allow_http_loopback: bool,
    anchors_pem: Vec<Vec<u8>>,
    extra_anchors_pem: Vec<Vec<u8>>,
    intermediates_pem: Vec<Vec<u8>>,
    organization: String,
    organization_scope: OrganizationScope,
    cache_ttl: Duration,
    negative_cache_ttl: Duration,
    fetch_rate: u32,
    fetch_rate_period: Duration,
    fetch_timeout: Duration,
    max_certificate_bytes: usize,
    clock: Clock,
}

impl fmt::Debug for WebhookVerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerifierBuilder")
            .field("transport", &self.transport)
            .field("rules", &self.rules)
            .field("issuer_rules", &self.issuer_rules)
            .field("allow_http_loopback", &self.allow_http_loopback)
            .field("anchors_pem", &self.anchors_pem.len())
            .field("extra_anchors_pem", &self.extra_anchors_pem.len())
            .field("intermediates_pem", &self.intermediates_pem.len())
            .field("organization", &self.organization)
            .field("organization_scope", &self.organization_scope)
            .field("cache_ttl", &self.cache_ttl)
            .field("negative_cache_ttl", &self.negative_cache_ttl)
            .field("fetch_rate", &(self.fetch_rate, self.fetch_rate_period))
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
            issuer_rules: CertificateUrlRule::default_issuers(),
            allow_http_loopback: false,
            anchors_pem: Vec::new(),
            extra_anchors_pem: Vec::new(),
            intermediates_pem: Vec::new(),
            organization: DEFAULT_EXPECTED_ORGANIZATION.to_string(),
            organization_scope: OrganizationScope::default(),
            cache_ttl: DEFAULT_CACHE_TTL,
            negative_cache_ttl: DEFAULT_NEGATIVE_CACHE_TTL,
            fetch_rate: DEFAULT_FETCH_RATE,
            fetch_rate_period: DEFAULT_FETCH_RATE_PERIOD,
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

    /// Replaces the whole certificate allow-list, including the Partner Center default.
    pub fn certificate_url_rules(
        mut self,
        rules: impl IntoIterator<Item = CertificateUrlRule>,
    ) -> Self {
        self.rules = rules.into_iter().collect();
        self
    }

    /// Replaces the certificate allow-list with host-wide `https` rules for `hosts` (any path,
    /// default port). Default: [`PARTNER_CENTER_CERTIFICATE_HOST`] alone.
    pub fn certificate_hosts<S: AsRef<str>>(mut self, hosts: impl IntoIterator<Item = S>) -> Self {
        self.rules = hosts
            .into_iter()
            .map(|h| CertificateUrlRule::host("https", h.as_ref(), PortMatch::Default))
            .collect();
        self
    }

    /// Adds an allow-listed issuer location: where an intermediate named by a certificate's AIA
    /// `caIssuers` URL may be fetched from. The list starts with
    /// [`CertificateUrlRule::default_issuers`]. Plain `http` is allowed on issuer rules (AIA is
    /// plain http by convention; what is fetched must chain to an anchor anyway).
    pub fn allow_issuer_url(mut self, rule: CertificateUrlRule) -> Self {
        self.issuer_rules.push(rule);
        self
    }

    /// Replaces the whole issuer allow-list; an empty list turns AIA fetching off.
    pub fn issuer_url_rules(mut self, rules: impl IntoIterator<Item = CertificateUrlRule>) -> Self {
        self.issuer_rules = rules.into_iter().collect();
        self
    }

    /// Allows rules with plain `http` on a loopback IP (`127.0.0.0/8`, `::1`), for the sandbox.
    /// Default: false, and [`build`](Self::build) refuses such certificate rules.
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

    /// Trust anchors in PEM **added** to the default set (or to those of
    /// [`trust_anchors_pem`](Self::trust_anchors_pem)), e.g. the sandbox's test root next to
    /// the production roots. Repeated calls add up.
    pub fn additional_trust_anchors_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.extra_anchors_pem.push(pem.as_ref().to_vec());
        self
    }

    /// Intermediate CA certificates in PEM, used to build the chain from the signing certificate
    /// to an anchor before any AIA fetch. Default: none. Repeated calls add up.
    pub fn intermediates_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.intermediates_pem.push(pem.as_ref().to_vec());
        self
    }

    /// The exact Organization (`O=`) the certificate must carry. Default `Microsoft Corporation`.
    pub fn expected_organization(mut self, organization: impl Into<String>) -> Self {
        self.organization = organization.into();
        self
    }

    /// Which names must carry the organization. Default [`OrganizationScope::Issuer`].
    pub fn organization_scope(mut self, scope: OrganizationScope) -> Self {
        self.organization_scope = scope;
        self
    }

    /// How long a fetched certificate or intermediate is reused. Default 1 hour
    /// ([`DEFAULT_CACHE_TTL`]). A certificate past its `notAfter` is fetched again regardless.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// How long a failed fetch is remembered: within it, a verification needing the same URL
    /// fails with the same error without a request. Default 30 s
    /// ([`DEFAULT_NEGATIVE_CACHE_TTL`]); zero turns it off.
    pub fn negative_cache_ttl(mut self, ttl: Duration) -> Self {
        self.negative_cache_ttl = ttl;
        self
    }

    /// At most `fetches` requests (certificates and intermediates together) per `period`, with
    /// bursts of up to `fetches`; beyond it a verification needing a fetch fails with
    /// [`FetchFailure::RateLimited`] (answer 503) without a request. Default 10 per minute
    /// ([`DEFAULT_FETCH_RATE`], [`DEFAULT_FETCH_RATE_PERIOD`]).
    pub fn fetch_rate_limit(mut self, fetches: u32, period: Duration) -> Self {
        self.fetch_rate = fetches;
        self.fetch_rate_period = period;
        self
    }

    /// Time allowed for one fetch. Default 10 s ([`DEFAULT_FETCH_TIMEOUT`]).
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Largest certificate body accepted. Default 64 KiB ([`DEFAULT_MAX_CERTIFICATE_BYTES`]).
    pub fn max_certificate_bytes(mut self, max: usize) -> Self {
        self.max_certificate_bytes = max;
        self
    }

    /// The clock used for validity checks, the caches and the rate limit. Default
    /// [`SystemTime::now`].
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
            rule.check(self.allow_http_loopback, false)?;
        }
        for rule in &self.issuer_rules {
            rule.check(self.allow_http_loopback, true)?;
        }
        if self.fetch_rate == 0 || self.fetch_rate_period.is_zero() {
            return Err(VerifierConfigError::InvalidRule(
                "the fetch rate limit must allow at least one fetch per non-zero period".into(),
            ));
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
        let mut anchors = anchors;
        for pem in &self.extra_anchors_pem {
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
                issuer_rules: self.issuer_rules,
                anchors,
                intermediates,
                organization: self.organization,
                organization_scope: self.organization_scope,
                cache_ttl: self.cache_ttl,
                negative_cache_ttl: self.negative_cache_ttl,
                fetch_timeout: self.fetch_timeout,
                max_certificate_bytes: self.max_certificate_bytes,
                bucket: StdMutex::new(Bucket {
                    capacity: f64::from(self.fetch_rate),
                    per_second: f64::from(self.fetch_rate) / self.fetch_rate_period.as_secs_f64(),
                    tokens: f64::from(self.fetch_rate),
                    last: None,
                }),
                clock: self.clock,
                cache: StdMutex::new(HashMap::new()),
                issuers: StdMutex::new(HashMap::new()),
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

/// One cache slot per URL; its async mutex makes concurrent verifications needing the same URL
/// share one fetch.
type Slot<T> = Arc<tokio::sync::Mutex<Option<CacheEntry<T>>>>;
type Cache<T> = StdMutex<HashMap<String, Slot<T>>>;

struct Inner {
    transport: Arc<dyn HttpTransport>,
    rules: Vec<CertificateUrlRule>,
    issuer_rules: Vec<CertificateUrlRule>,
    anchors: Vec<TrustAnchor<'static>>,
    intermediates: Vec<CertificateDer<'static>>,
    organization: String,
    organization_scope: OrganizationScope,
    cache_ttl: Duration,
    negative_cache_ttl: Duration,
    fetch_timeout: Duration,
    max_certificate_bytes: usize,
    bucket: StdMutex<Bucket>,
    clock: Clock,
    /// Signing certificates by `X-MS-Certificate-Url`.
    cache: Cache<SigningCertificate>,
    /// Intermediates by AIA `caIssuers` URL.
    issuers: Cache<IssuerCertificate>,
}

/// A token bucket over the verifier's clock: every fetch takes one token.
struct Bucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Option<SystemTime>,
}

impl Bucket {
    fn try_take(&mut self, now: SystemTime) -> bool {
        if let Some(last) = self.last {
            // A clock that went back refills nothing.
            let elapsed = now.duration_since(last).unwrap_or_default().as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

enum CacheEntry<T> {
    /// A successful fetch, reused for the TTL.
    Fetched { at: SystemTime, value: Arc<T> },
    /// A failed fetch, answered from memory for the negative TTL.
    Failed {
        at: SystemTime,
        error: VerificationError,
    },
}

/// What the caches need of a cached value.
trait Cached {
    /// After this the value is fetched again whatever the TTL.
    fn not_after(&self) -> SystemTime;
    /// Called when a refetch replaced `previous` by `self`.
    fn replaced(&self, _previous: &Self) {}
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
    /// The AIA `caIssuers` URLs of the leaf, in order.
    ca_issuers: Vec<String>,
}

impl Cached for SigningCertificate {
    fn not_after(&self) -> SystemTime {
        self.not_after
    }

    fn replaced(&self, previous: &Self) {
        if previous.thumbprint != self.thumbprint {
            tracing::info!(
                certificate_thumbprint = %self.thumbprint,
                previous_thumbprint = %previous.thumbprint,
                "webhook signing certificate changed"
            );
        }
    }
}

/// An intermediate fetched through an AIA `caIssuers` URL. It is trusted only as a path
/// candidate: webpki still requires it to chain to an anchor.
struct IssuerCertificate {
    der: CertificateDer<'static>,
    not_after: SystemTime,
    ca_issuers: Vec<String>,
}

impl Cached for IssuerCertificate {
    fn not_after(&self) -> SystemTime {
        self.not_after
    }
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
    /// A builder with the production defaults: Microsoft's certificate host, Microsoft/DigiCert
    /// issuer (AIA) hosts, Mozilla roots, organization `Microsoft Corporation` on the issuer,
    /// 1 h cache, 30 s negative cache, 10 fetches a minute, 10 s fetch timeout, 64 KiB cap,
    /// system clock, default transport.
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
        self.check_certificate(&certificate, now).await?;

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
            .filter(|url| self.inner.rules.iter().any(|r| r.matches(url, false)))
            .ok_or_else(|| VerificationError::CertificateUrlNotAllowed(sanitize(raw)))
    }

    /// The cached certificate for `url`, fetched when absent or stale.
    async fn certificate(&self, url: &Url) -> Result<Arc<SigningCertificate>, VerificationError> {
        self.cached(
            &self.inner.cache,
            url,
            VerificationError::CertificateFetch,
            |body| parse_signing_certificate(&body),
        )
        .await
    }

    /// The cached intermediate at `url` (an allow-listed AIA URL), fetched when absent or stale.
    async fn issuer(&self, url: &Url) -> Result<Arc<IssuerCertificate>, VerificationError> {
        self.cached(
            &self.inner.issuers,
            url,
            VerificationError::IssuerFetch,
            |body| parse_issuer_certificate(&body),
        )
        .await
    }

    /// The value cached for `url` in `cache`; otherwise fetches and parses it, remembering a
    /// success for the TTL and a failure for the negative TTL.
    async fn cached<T: Cached>(
        &self,
        cache: &Cache<T>,
        url: &Url,
        wrap: fn(FetchFailure) -> VerificationError,
        parse: impl FnOnce(Bytes) -> Result<T, VerificationError>,
    ) -> Result<Arc<T>, VerificationError> {
        let slot = self.slot(cache, url.as_str());
        let mut guard = slot.lock().await;
        let now = (self.inner.clock)();
        let previous = match guard.as_ref() {
            Some(entry) if self.is_fresh(entry, now) => {
                return match entry {
                    CacheEntry::Fetched { value, .. } => Ok(value.clone()),
                    CacheEntry::Failed { error, .. } => Err(error.clone()),
                };
            }
            Some(CacheEntry::Fetched { value, .. }) => Some(value.clone()),
            _ => None,
        };
        let result = match self.fetch(url).await {
            Ok(body) => parse(body),
            Err(FetchFailure::RateLimited) => {
                // Nothing was requested: nothing to remember.
                return Err(wrap(FetchFailure::RateLimited));
            }
            Err(failure) => Err(wrap(failure)),
        };
        match result {
            Ok(value) => {
                let value = Arc::new(value);
                if let Some(previous) = previous {
                    value.replaced(&previous);
                }
                *guard = Some(CacheEntry::Fetched {
                    at: now,
                    value: value.clone(),
                });
                Ok(value)
            }
            Err(error) => {
                *guard = Some(CacheEntry::Failed {
                    at: now,
                    error: error.clone(),
                });
                Err(error)
            }
        }
    }

    fn is_fresh<T: Cached>(&self, entry: &CacheEntry<T>, now: SystemTime) -> bool {
        let (at, ttl, not_after) = match entry {
            CacheEntry::Fetched { at, value } => (*at, self.inner.cache_ttl, value.not_after()),
            CacheEntry::Failed { at, .. } => (*at, self.inner.negative_cache_ttl, now),
        };
        match now.duration_since(at) {
            Ok(age) => age < ttl && now <= not_after,
            Err(_) => false, // the clock went back: refetch
        }
    }

    fn slot<T: Cached>(&self, cache: &Cache<T>, key: &str) -> Slot<T> {
        let mut cache = cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = cache.get(key) {
            return slot.clone();
        }
        if cache.len() >= MAX_CACHE_ENTRIES {
            // Drop idle stale slots first (nobody else holds them), then anything idle at all.
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
        let slot: Slot<T> = Arc::new(tokio::sync::Mutex::new(None));
        cache.insert(key.to_string(), slot.clone());
        slot
    }

    /// One GET of `url`: rate-limited, with a timeout, no redirect and the size cap.
    ///
    /// [`HttpTransport`] hands back whole bodies, so the cap cannot stop a transfer midway: a
    /// declared `Content-Length` over the cap is refused before the body is looked at, any
    /// body over it is refused, and the timeout bounds how long a slow or endless body can take.
    async fn fetch(&self, url: &Url) -> Result<Bytes, FetchFailure> {
        let allowed = {
            let mut bucket = self
                .inner
                .bucket
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            bucket.try_take((self.inner.clock)())
        };
        if !allowed {
            return Err(FetchFailure::RateLimited);
        }
        let request = http::Request::get(url.as_str())
            .header(
                http::header::ACCEPT,
                "application/pkix-cert, application/x-x509-ca-cert, application/x-pem-file, */*",
            )
            .body(Bytes::new())
            .map_err(|_| FetchFailure::Transport(TransportErrorKind::Request))?;
        let max = self.inner.max_certificate_bytes;
        // The cap is enforced while reading: a URL that streams without end costs `max` bytes.
        let response = tokio::time::timeout(
            self.inner.fetch_timeout,
            self.inner.transport.send_limited(request, max),
        )
        .await
        .map_err(|_| FetchFailure::Timeout)?
        .map_err(|e| {
            if e.is_timeout() {
                FetchFailure::Timeout
            } else if e.kind() == TransportErrorKind::BodyTooLarge {
                FetchFailure::TooLarge(max)
            } else {
                FetchFailure::Transport(e.kind())
            }
        })?;
        let status = response.status();
        if status.is_redirection() {
            return Err(FetchFailure::Redirect(status.as_u16()));
        }
        if !status.is_success() {
            return Err(FetchFailure::Status(status.as_u16()));
        }
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(FetchFailure::TooLarge(max));
        }
        let body = response.into_body();
        if body.len() > max {
            return Err(FetchFailure::TooLarge(max));
        }
        if body.is_empty() {
            return Err(FetchFailure::Empty);
        }
        Ok(body)
    }

    /// The first AIA URL of `candidates` on the issuer allow-list.
    fn allowed_issuer_url(&self, candidates: &[String]) -> Result<Url, VerificationError> {
        candidates
            .iter()
            .filter_map(|raw| parse_issuer_url(raw))
            .find(|url| self.inner.issuer_rules.iter().any(|r| r.matches(url, true)))
            .ok_or_else(|| {
                VerificationError::IssuerUrlNotAllowed(
                    candidates.first().map(|u| sanitize(u)).unwrap_or_default(),
                )
            })
    }

    async fn check_certificate(
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
        let time = UnixTime::since_unix_epoch(since_epoch);
        // The AIA URLs of the certificate whose issuer is missing: the leaf's first, then those
        // of each intermediate fetched.
        let mut missing_issuer_of = cert.ca_issuers.clone();
        let mut fetched = 0;
        loop {
            let result = end_entity.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.inner.anchors,
                &intermediates,
                time,
                SigningEku,
                None,
                None,
            );
            match result {
                Ok(_) => break,
                Err(webpki::Error::UnknownIssuer)
                    if fetched < MAX_AIA_DEPTH
                        && !self.inner.issuer_rules.is_empty()
                        && !missing_issuer_of.is_empty() =>
                {
                    let url = self.allowed_issuer_url(&missing_issuer_of)?;
                    let issuer = self.issuer(&url).await?;
                    fetched += 1;
                    missing_issuer_of = issuer.ca_issuers.clone();
                    intermediates.push(issuer.der.clone());
                }
                Err(e) => return Err(map_webpki_error(e)),
            }
        }

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
            (check_issuer, &cert.issuer_organizations),
            (check_subject, &cert.subject_organizations),
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
        ca_issuers: ca_issuers(&parsed).ok_or_else(|| invalid("malformed AIA extension"))?,
        leaf,
        extra: certs,
    })
}

/// Parses a fetched intermediate: DER (what AIA URLs serve), or PEM (the first certificate).
fn parse_issuer_certificate(body: &[u8]) -> Result<IssuerCertificate, VerificationError> {
    let invalid = |reason: &str| VerificationError::CertificateInvalid(reason.to_string());
    let trimmed = body.trim_ascii_start();
    let der = if trimmed.starts_with(b"-----BEGIN") {
        CertificateDer::pem_slice_iter(trimmed)
            .next()
            .ok_or_else(|| invalid("no CERTIFICATE block in the intermediate PEM"))?
            .map_err(|_| invalid("malformed intermediate PEM"))?
    } else {
        CertificateDer::from(body.to_vec())
    };
    let parsed = Certificate::from_der(der.as_ref())
        .map_err(|_| invalid("intermediate is not an X.509 certificate"))?;
    Ok(IssuerCertificate {
        not_after: parsed
            .tbs_certificate()
            .validity()
            .not_after
            .to_system_time(),
        ca_issuers: ca_issuers(&parsed)
            .ok_or_else(|| invalid("malformed AIA extension in the intermediate"))?,
        der,
    })
}

/// The `caIssuers` URIs of a certificate's Authority Information Access extension (RFC 5280
/// §4.2.2.1), in order; `None` when the extension is malformed.
fn ca_issuers(cert: &Certificate) -> Option<Vec<String>> {
    match cert
        .tbs_certificate()
        .get_extension::<AuthorityInfoAccessSyntax>()
    {
        Ok(None) => Some(Vec::new()),
        Ok(Some((_, aia))) => Some(
            aia.0
                .iter()
                .filter(|d| d.access_method == OID_AD_CA_ISSUERS)
                .filter_map(|d| match &d.access_location {
                    GeneralName::UniformResourceIdentifier(uri) => Some(uri.to_string()),
                    _ => None,
                })
                .collect(),
        ),
        Err(_) => None,
    }
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
        // Not one pinned folder: the certificate may be renewed under another name or path.
        assert!(r.matches_str("https://3psostorageacct.blob.core.windows.net/cert/a.pem"));
        assert!(r.matches_str("https://3psostorageacct.blob.core.windows.net/cert/sub/a.cer"));
        assert!(r.matches_str("https://3psostorageacct.blob.core.windows.net/other.cer"));
        for bad in [
            "http://3psostorageacct.blob.core.windows.net/cert/a.cer",
            "https://3psostorageacct.blob.core.windows.net:8443/cert/a.cer",
            "https://u:p@3psostorageacct.blob.core.windows.net/cert/a.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/a.cer?x",
            "https://3psostorageacct.blob.core.windows.net/cert/a.cer#x",
            "https://3psostorageacct.blob.core.windows.net/cert/.cer",
            "https://3psostorageacct.blob.core.windows.net/cert//a.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/",
            "https://3psostorageacct.blob.core.windows.net/cert/./a.cer",
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
    fn issuer_urls_allow_escapes_but_not_encoded_separators() {
        let r = CertificateUrlRule::host("http", "www.microsoft.com", PortMatch::Default);
        let ok = "http://www.microsoft.com/pkiops/certs/Microsoft%20Azure%20RSA%20TLS%20Issuing%20CA%2003%20-%20xsign.crt";
        assert!(r.matches_issuer_str(ok));
        assert!(!r.matches_str(ok), "no escapes in certificate URLs");
        for bad in [
            "http://www.microsoft.com/pkiops/certs/..%2fx.crt",
            "http://www.microsoft.com/pkiops/certs/%2e%2e/x.crt",
            "http://www.microsoft.com/pkiops/certs/a%5cb.crt",
            "http://www.microsoft.com/pkiops/certs/a%0a.crt",
            "http://www.microsoft.com/pkiops/certs/a%2.crt",
            "http://www.microsoft.com/pkiops/../x.crt",
            "http://www.microsoft.com:8080/pkiops/x.crt",
            "http://www.microsoft.com.evil.example/pkiops/x.crt",
            "http://www.microsoft.com/pkiops/x.crt?x=1",
            "ldap://www.microsoft.com/x.crt",
        ] {
            assert!(!r.matches_issuer_str(bad), "{bad}");
        }
    }

    #[test]
    fn rate_limit_bucket_refills_with_the_clock() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut b = Bucket {
            capacity: 2.0,
            per_second: 0.1,
            tokens: 2.0,
            last: None,
        };
        assert!(b.try_take(t0) && b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_secs(5)));
        assert!(b.try_take(t0 + Duration::from_secs(10)));
        // The clock going back refills nothing.
        assert!(!b.try_take(t0));
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
