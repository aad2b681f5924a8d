//! The webhook signing identity, shaped as Microsoft's: a test root CA, an issuing
//! (intermediate) CA it signed, and a leaf standing in for Microsoft's
//! `pcnotifications-dispatch.microsoft.com` that the intermediate signed, generated with rcgen
//! (aws-lc-rs backend); RSA PKCS#1 v1.5 SHA-256 signing with aws-lc-rs.
//!
//! As Microsoft's certificate host most likely does, the certificate host serves the leaf
//! alone. The leaf names its issuer by an Authority Information Access `caIssuers` URL on the
//! sandbox's own PKI host ([`SandboxUrls::pki`](crate::SandboxUrls::pki)), which serves the
//! intermediate (DER) at `/pkiops/certs/`[`INTERMEDIATE_FILE`], as `www.microsoft.com` serves
//! Microsoft's; the root is the verifier's trust anchor. The leaf's subject carries no
//! Organization: the verifier checks the issuer's.
//!
//! RSA key generation is slow in unoptimised builds, so the three key pairs are generated once
//! per process and reused; the certificates themselves are issued afresh for every sandbox.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use std::sync::OnceLock;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use chrono::{Datelike, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256,
};

/// The certificate's file name on the certificate host, as in Microsoft's URL.
pub const CERTIFICATE_FILE: &str = "pcnotifications-dispatch.microsoft.com.cer";
/// The leaf's common name.
pub const CERTIFICATE_COMMON_NAME: &str = "pcnotifications-dispatch.microsoft.com";
/// The organization of the sandbox's CAs (root and intermediate): what the verifier expects
/// of the leaf's issuer. The leaf's own subject carries no Organization.
pub const CERTIFICATE_ORGANIZATION: &str = "cosell sandbox";
/// The test root CA's common name.
pub const ROOT_CA_COMMON_NAME: &str = "cosell sandbox test root CA";
/// The issuing (intermediate) CA's common name.
pub const INTERMEDIATE_CA_COMMON_NAME: &str = "cosell sandbox issuing CA 01";
/// The intermediate's file name on the PKI host (under `/pkiops/certs/`).
pub const INTERMEDIATE_FILE: &str = "cosell-sandbox-issuing-ca-01.crt";
/// The path on the PKI host the intermediate is served under.
pub const PKI_CERTS_PATH: &str = "pkiops/certs/";

/// Why the signing identity could not be built.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot build the sandbox signing identity: {0}")]
pub struct IdentityError(String);

struct Keys {
    ca_pkcs8: Vec<u8>,
    intermediate_pkcs8: Vec<u8>,
    leaf_pkcs8: Vec<u8>,
}

fn rsa_pkcs8() -> Result<Vec<u8>, IdentityError> {
    use aws_lc_rs::encoding::AsDer;
    let key = RsaKeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| IdentityError("RSA key generation failed".into()))?;
    let der = key
        .as_der()
        .map_err(|_| IdentityError("RSA key encoding failed".into()))?;
    Ok(der.as_ref().to_vec())
}

fn keys() -> Result<&'static Keys, IdentityError> {
    static KEYS: OnceLock<Result<Keys, IdentityError>> = OnceLock::new();
    KEYS.get_or_init(|| {
        Ok(Keys {
            ca_pkcs8: rsa_pkcs8()?,
            intermediate_pkcs8: rsa_pkcs8()?,
            leaf_pkcs8: rsa_pkcs8()?,
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The sandbox's stand-in for Microsoft's callback signing certificate and its root.
pub(crate) struct SigningIdentity {
    ca_pem: String,
    ca_der: Vec<u8>,
    intermediate_der: Vec<u8>,
    leaf_der: Vec<u8>,
    leaf_pem: String,
    key: RsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("leaf_common_name", &CERTIFICATE_COMMON_NAME)
            .field("organization", &CERTIFICATE_ORGANIZATION)
            .finish_non_exhaustive()
    }
}

fn rcgen_err(e: rcgen::Error) -> IdentityError {
    IdentityError(e.to_string())
}

/// DER length octets.
fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..0x80 => vec![n as u8],
        0x80..0x100 => vec![0x81, n as u8],
        _ => vec![0x82, (n >> 8) as u8, n as u8],
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(content.len()));
    out.extend_from_slice(content);
    out
}

/// An Authority Information Access extension (RFC 5280 §4.2.2.1) with one `caIssuers` URI:
/// `SEQUENCE { SEQUENCE { id-ad-caIssuers, [6] IA5String } }`.
fn aia_extension(ca_issuers: &str) -> rcgen::CustomExtension {
    const ID_AD_CA_ISSUERS: &[u8] = &[0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];
    let mut description = ID_AD_CA_ISSUERS.to_vec();
    description.extend(der_tlv(0x86, ca_issuers.as_bytes()));
    let content = der_tlv(0x30, &der_tlv(0x30, &description));
    rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], content)
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, CERTIFICATE_ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca
}

impl SigningIdentity {
    /// Issues a root CA, an intermediate it signs, and a leaf the intermediate signs
    /// (`CN = pcnotifications-dispatch.microsoft.com`, AIA `caIssuers` = `ca_issuers_url`), all
    /// valid from last year to two years ahead.
    pub(crate) fn generate(ca_issuers_url: &str) -> Result<Self, IdentityError> {
        let keys = keys()?;
        let load = |pkcs8: &[u8]| {
            KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.into(), &PKCS_RSA_SHA256)
                .map_err(rcgen_err)
        };
        let ca_key = load(&keys.ca_pkcs8)?;
        let intermediate_key = load(&keys.intermediate_pkcs8)?;
        let leaf_key = load(&keys.leaf_pkcs8)?;
        let year = Utc::now().year();
        let validity = |p: &mut CertificateParams| {
            p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
            p.not_after = rcgen::date_time_ymd(year + 2, 12, 31);
        };

        let mut ca = ca_params(ROOT_CA_COMMON_NAME);
        validity(&mut ca);
        let ca_cert = ca.self_signed(&ca_key).map_err(rcgen_err)?;
        let root = Issuer::new(ca, &ca_key);

        let mut intermediate = ca_params(INTERMEDIATE_CA_COMMON_NAME);
        intermediate.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        intermediate.use_authority_key_identifier_extension = true;
        validity(&mut intermediate);
        let intermediate_cert = intermediate
            .signed_by(&intermediate_key, &root)
            .map_err(rcgen_err)?;
        let issuing = Issuer::new(intermediate, &intermediate_key);

        let mut leaf =
            CertificateParams::new(vec![CERTIFICATE_COMMON_NAME.to_string()]).map_err(rcgen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CERTIFICATE_COMMON_NAME);
        leaf.distinguished_name = dn;
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        leaf.use_authority_key_identifier_extension = true;
        leaf.custom_extensions = vec![aia_extension(ca_issuers_url)];
        validity(&mut leaf);
        let leaf_cert = leaf.signed_by(&leaf_key, &issuing).map_err(rcgen_err)?;

        let key = RsaKeyPair::from_pkcs8(&keys.leaf_pkcs8)
            .map_err(|e| IdentityError(format!("leaf key rejected: {e}")))?;
        Ok(SigningIdentity {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            intermediate_der: intermediate_cert.der().to_vec(),
            leaf_der: leaf_cert.der().to_vec(),
            leaf_pem: leaf_cert.pem(),
            key,
            rng: SystemRandom::new(),
        })
    }

    /// The intermediate CA, DER — what the PKI host serves at the leaf's AIA URL.
    pub(crate) fn intermediate_der(&self) -> &[u8] {
        &self.intermediate_der
    }

    /// The root CA, PEM (configure it as the verifier's trust anchor).
    pub(crate) fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The root CA, DER.
    pub(crate) fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The signing (leaf) certificate, DER — what the certificate host serves, alone.
    pub(crate) fn certificate_der(&self) -> &[u8] {
        &self.leaf_der
    }

    /// The signing (leaf) certificate, PEM.
    pub(crate) fn certificate_pem(&self) -> &str {
        &self.leaf_pem
    }

    /// RSA PKCS#1 v1.5 SHA-256 signature of `body`, base64 (standard alphabet, padded).
    pub(crate) fn sign_base64(&self, body: &[u8]) -> Result<String, IdentityError> {
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, body, &mut sig)
            .map_err(|_| IdentityError("signing failed".into()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sig))
    }
}

/// Routes of the PKI host: `GET /pkiops/certs/{file}` serves the intermediate (DER) under
/// [`INTERMEDIATE_FILE`], as Microsoft's PKI repository serves its issuing CAs.
pub(crate) fn pki_router(pc: super::PartnerCenterEmulator) -> Router {
    Router::new()
        .route("/pkiops/certs/{file}", get(issuer_certificate))
        .with_state(pc)
}

async fn issuer_certificate(
    State(pc): State<super::PartnerCenterEmulator>,
    Path(file): Path<String>,
) -> Response {
    let Ok(identity) = pc.inner.identity.as_ref() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no signing identity").into_response();
    };
    if file != INTERMEDIATE_FILE {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/pkix-cert")],
        identity.intermediate_der().to_vec(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    use base64::Engine as _;

    use super::*;

    #[test]
    fn signatures_verify_with_the_leaf_key() {
        let id = SigningIdentity::generate("http://127.0.0.1:6/pkiops/certs/x.crt").unwrap();
        let body = br#"{"EventName":"referral-created"}"#;
        let sig = base64::engine::general_purpose::STANDARD
            .decode(id.sign_base64(body).unwrap())
            .unwrap();
        let public = aws_lc_rs::signature::KeyPair::public_key(&id.key);
        let key = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public.as_ref());
        assert!(key.verify(body, &sig).is_ok());
        assert!(key.verify(b"tampered", &sig).is_err());
        assert!(id.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!id.certificate_der().is_empty());
    }
}
