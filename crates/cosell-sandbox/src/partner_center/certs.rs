//! The webhook signing identity: a test root CA and a leaf certificate standing in for
//! Microsoft's `pcnotifications-dispatch.microsoft.com`, generated with rcgen (aws-lc-rs backend),
//! and RSA PKCS#1 v1.5 SHA-256 signing with aws-lc-rs.
//!
//! RSA key generation is slow in unoptimised builds, so the two key pairs are generated once per
//! process and reused; the certificates themselves are issued afresh for every sandbox.

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
/// The leaf's (and the CA's) organization.
pub const CERTIFICATE_ORGANIZATION: &str = "cosell sandbox";
/// The test root CA's common name.
pub const ROOT_CA_COMMON_NAME: &str = "cosell sandbox test root CA";

/// Why the signing identity could not be built.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot build the sandbox signing identity: {0}")]
pub struct IdentityError(String);

struct Keys {
    ca_pkcs8: Vec<u8>,
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

impl SigningIdentity {
    /// Issues a root CA and a leaf (`O = cosell sandbox`, `CN = pcnotifications-dispatch.microsoft.com`),
    /// valid from last year to two years ahead.
    pub(crate) fn generate() -> Result<Self, IdentityError> {
        let keys = keys()?;
        let ca_key = KeyPair::from_pkcs8_der_and_sign_algo(
            &keys.ca_pkcs8.as_slice().into(),
            &PKCS_RSA_SHA256,
        )
        .map_err(rcgen_err)?;
        let leaf_key = KeyPair::from_pkcs8_der_and_sign_algo(
            &keys.leaf_pkcs8.as_slice().into(),
            &PKCS_RSA_SHA256,
        )
        .map_err(rcgen_err)?;
        let year = Utc::now().year();
        let validity = |p: &mut CertificateParams| {
            p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
            p.not_after = rcgen::date_time_ymd(year + 2, 12, 31);
        };

        let mut ca = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, CERTIFICATE_ORGANIZATION);
        dn.push(DnType::CommonName, ROOT_CA_COMMON_NAME);
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut ca);
        let ca_cert = ca.self_signed(&ca_key).map_err(rcgen_err)?;

        let mut leaf =
            CertificateParams::new(vec![CERTIFICATE_COMMON_NAME.to_string()]).map_err(rcgen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, CERTIFICATE_ORGANIZATION);
        dn.push(DnType::CommonName, CERTIFICATE_COMMON_NAME);
        leaf.distinguished_name = dn;
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        leaf.use_authority_key_identifier_extension = true;
        validity(&mut leaf);
        let issuer = Issuer::new(ca, &ca_key);
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(rcgen_err)?;

        let key = RsaKeyPair::from_pkcs8(&keys.leaf_pkcs8)
            .map_err(|e| IdentityError(format!("leaf key rejected: {e}")))?;
        Ok(SigningIdentity {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().to_vec(),
            leaf_der: leaf_cert.der().to_vec(),
            leaf_pem: leaf_cert.pem(),
            key,
            rng: SystemRandom::new(),
        })
    }

    /// The root CA, PEM (configure it as the verifier's trust anchor).
    pub(crate) fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The root CA, DER.
    pub(crate) fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The signing (leaf) certificate, DER — what the certificate host serves.
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

#[cfg(test)]
mod tests {
    use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    use base64::Engine as _;

    use super::*;

    #[test]
    fn signatures_verify_with_the_leaf_key() {
        let id = SigningIdentity::generate().unwrap();
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
