//! End-to-end tests of `WebhookVerifier`: a test CA and RSA signing certificates made with
//! rcgen, bodies signed with aws-lc-rs, certificates served by a counting `FnTransport`.
#![cfg(feature = "webhook")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use bytes::Bytes;
use cosell_http::{FnTransport, HttpTransport, TransportError};
use http::HeaderMap;
use partner_center_client::webhook::callback::{CallbackError, CallbackEvent, WebhookCallback};
use partner_center_client::webhook::verify::{
    CertificateUrlRule, FetchFailure, OrganizationScope, PortMatch, SignatureHeader,
    VerificationError, WebhookVerifier,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};

const ORG: &str = "Cosell Test Org";
const MS_URL: &str =
    "https://3psostorageacct.blob.core.windows.net/cert/pcnotifications-dispatch.microsoft.com.cer";
const SANDBOX_URL: &str = "http://127.0.0.1:47011/cert/sandbox-signing.cer";
const BODY: &[u8] = br#"{"EventName":"referral-updated","ResourceUri":"https://api.partner.microsoft.com/v1.0/engagements/referrals/4111fffc-f9ee-4d53-bba6-569135228642","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2030-01-01T00:00:00.1234567+00:00"}"#;
/// 2030-01-01T00:00:00Z: inside every test certificate's validity except the expired one.
const NOW: u64 = 1_893_456_000;

/// Test PKI, generated once per test binary (RSA key generation is the slow part).
struct Pki {
    ca_pem: String,
    /// Leaf (O = ORG) signed by the CA, valid 2020..2040, key usage digitalSignature, EKU
    /// serverAuth + clientAuth.
    leaf_der: Vec<u8>,
    leaf_pem: String,
    /// PKCS#8 of the leaf's key.
    leaf_key: Vec<u8>,
    /// Another RSA key (forgeries).
    other_key: Vec<u8>,
    wrong_org_der: Vec<u8>,
    expired_der: Vec<u8>,
    rogue_der: Vec<u8>,
    no_digital_signature_der: Vec<u8>,
    email_only_der: Vec<u8>,
    /// Intermediate CA (signed by the CA) and a leaf it signed.
    intermediate_pem: String,
    intermediate_der: Vec<u8>,
    via_intermediate_der: Vec<u8>,
    /// Issued by the intermediate, AIA `caIssuers` = [`AIA_URL`] (a default issuer host), no
    /// Organization in its subject: the shape of a Microsoft-issued leaf.
    aia_leaf_der: Vec<u8>,
    /// Like `aia_leaf_der`, AIA on a host off the issuer allow-list.
    evil_aia_leaf_der: Vec<u8>,
    /// Issued (AIA [`OTHER_ORG_AIA_URL`]) by an intermediate of another organization that
    /// chains to the trusted root; subject O = ORG.
    other_org_issuer_leaf_der: Vec<u8>,
    other_org_intermediate_der: Vec<u8>,
}

/// Where the test intermediate is published: Microsoft's PKI repository shape, on a default
/// issuer host, with the `%20` escapes Microsoft's AIA URLs carry.
const AIA_URL: &str = "http://www.microsoft.com/pkiops/certs/Cosell%20Test%20Issuing%20CA.crt";
const EVIL_AIA_URL: &str = "http://attacker.example/pki/issuing.crt";
const OTHER_ORG_AIA_URL: &str = "http://cacerts.digicert.com/ContosoIssuingCA.crt";

/// DER length octets.
fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else if n < 0x100 {
        vec![0x81, n as u8]
    } else {
        vec![0x82, (n >> 8) as u8, n as u8]
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    [vec![tag], der_len(content.len()), content.to_vec()].concat()
}

/// An Authority Information Access extension with one `caIssuers` URI.
fn aia_extension(url: &str) -> rcgen::CustomExtension {
    let oid_ca_issuers = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];
    let description = der_tlv(
        0x30,
        &[oid_ca_issuers.to_vec(), der_tlv(0x86, url.as_bytes())].concat(),
    );
    rcgen::CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 1, 1],
        der_tlv(0x30, &description),
    )
}

/// A leaf as Microsoft's likely is: CN only, issued by an intermediate named by AIA.
fn aia_leaf_params(aia: &str) -> CertificateParams {
    let mut p = leaf_params(ORG);
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "pcnotifications-dispatch.sandbox.test");
    p.custom_extensions = vec![aia_extension(aia)];
    p
}

fn rsa_key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap()
}

fn ca_params(org: &str, cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::OrganizationName, org);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = date_time_ymd(2019, 1, 1);
    p.not_after = date_time_ymd(2049, 1, 1);
    p
}

fn leaf_params(org: &str) -> CertificateParams {
    let mut p =
        CertificateParams::new(vec!["pcnotifications-dispatch.sandbox.test".to_string()]).unwrap();
    p.distinguished_name.push(DnType::OrganizationName, org);
    p.distinguished_name
        .push(DnType::CommonName, "pcnotifications-dispatch.sandbox.test");
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2040, 1, 1);
    p
}

static PKI: LazyLock<Pki> = LazyLock::new(|| {
    let ca = CertifiedIssuer::self_signed(ca_params(ORG, "Cosell Test Root"), rsa_key()).unwrap();
    // An impostor CA with the very same name as the trusted one, but another key.
    let rogue =
        CertifiedIssuer::self_signed(ca_params(ORG, "Cosell Test Root"), rsa_key()).unwrap();
    let leaf_key = rsa_key();
    let other_key = rsa_key();
    let sign = |p: CertificateParams, issuer: &rcgen::Issuer<'_, KeyPair>| {
        p.signed_by(&leaf_key, issuer).unwrap()
    };
    let leaf = sign(leaf_params(ORG), &ca);
    let wrong_org = sign(leaf_params("Contoso Ltd"), &ca);
    let mut expired = leaf_params(ORG);
    expired.not_before = date_time_ymd(2000, 1, 1);
    expired.not_after = date_time_ymd(2001, 1, 1);
    let expired = sign(expired, &ca);
    let rogue_leaf = sign(leaf_params(ORG), &rogue);
    let mut no_ds = leaf_params(ORG);
    no_ds.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    let no_ds = sign(no_ds, &ca);
    let mut email = leaf_params(ORG);
    email.extended_key_usages = vec![ExtendedKeyUsagePurpose::EmailProtection];
    let email = sign(email, &ca);
    let intermediate =
        CertifiedIssuer::signed_by(ca_params(ORG, "Cosell Test Issuing CA"), rsa_key(), &ca)
            .unwrap();
    let via_intermediate = sign(leaf_params(ORG), &intermediate);
    let aia_leaf = sign(aia_leaf_params(AIA_URL), &intermediate);
    let evil_aia_leaf = sign(aia_leaf_params(EVIL_AIA_URL), &intermediate);
    let other_org_intermediate = CertifiedIssuer::signed_by(
        ca_params("Contoso Ltd", "Contoso Issuing CA"),
        rsa_key(),
        &ca,
    )
    .unwrap();
    let mut other_org_leaf = leaf_params(ORG);
    other_org_leaf.custom_extensions = vec![aia_extension(OTHER_ORG_AIA_URL)];
    let other_org_leaf = sign(other_org_leaf, &other_org_intermediate);
    Pki {
        ca_pem: ca.pem(),
        leaf_der: leaf.der().to_vec(),
        leaf_pem: leaf.pem(),
        leaf_key: leaf_key.serialize_der(),
        other_key: other_key.serialize_der(),
        wrong_org_der: wrong_org.der().to_vec(),
        expired_der: expired.der().to_vec(),
        rogue_der: rogue_leaf.der().to_vec(),
        no_digital_signature_der: no_ds.der().to_vec(),
        email_only_der: email.der().to_vec(),
        intermediate_pem: intermediate.pem(),
        intermediate_der: intermediate.der().to_vec(),
        via_intermediate_der: via_intermediate.der().to_vec(),
        aia_leaf_der: aia_leaf.der().to_vec(),
        evil_aia_leaf_der: evil_aia_leaf.der().to_vec(),
        other_org_issuer_leaf_der: other_org_leaf.der().to_vec(),
        other_org_intermediate_der: other_org_intermediate.der().to_vec(),
    }
});

fn sign_with(pkcs8: &[u8], body: &[u8]) -> Vec<u8> {
    let key = RsaKeyPair::from_pkcs8(pkcs8).unwrap();
    let mut sig = vec![0; key.public_modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), body, &mut sig)
        .unwrap();
    sig
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

/// The headers Partner Center sends, signature in `Authorization`.
fn signed_headers(body: &[u8], url: &str) -> HeaderMap {
    let sig = format!("Signature {}", b64(&sign_with(&PKI.leaf_key, body)));
    headers(&[
        ("Authorization", &sig),
        ("X-MS-Certificate-Url", url),
        ("X-MS-Signature-Algorithm", "rsa-sha256"),
    ])
}

/// A transport that serves `routes` (URL -> response) and counts every request.
#[derive(Clone)]
struct Server {
    transport: Arc<dyn HttpTransport>,
    fetches: Arc<AtomicUsize>,
}

impl Server {
    fn new(routes: Vec<(&str, u16, Vec<u8>)>) -> Self {
        let routes: Arc<HashMap<String, (u16, Bytes)>> = Arc::new(
            routes
                .into_iter()
                .map(|(u, s, b)| (u.to_string(), (s, Bytes::from(b))))
                .collect(),
        );
        let fetches = Arc::new(AtomicUsize::new(0));
        let count = fetches.clone();
        let transport = FnTransport::new(move |req: http::Request<Bytes>| {
            count.fetch_add(1, Ordering::SeqCst);
            let routes = routes.clone();
            async move {
                assert_eq!(req.method(), http::Method::GET);
                // Let a concurrent verification reach the cache while this fetch is in flight.
                tokio::task::yield_now().await;
                let (status, body) = routes
                    .get(&req.uri().to_string())
                    .cloned()
                    .unwrap_or((404, Bytes::new()));
                let mut resp = http::Response::builder().status(status);
                if (300..400).contains(&status) {
                    resp = resp.header("location", "http://169.254.169.254/latest/meta-data");
                }
                Ok::<_, TransportError>(resp.body(body).unwrap())
            }
        });
        Server {
            transport: Arc::new(transport),
            fetches,
        }
    }

    /// Serves `cert` (DER) at both the Microsoft and the sandbox URL.
    fn serving(cert: &[u8]) -> Self {
        Server::new(vec![
            (MS_URL, 200, cert.to_vec()),
            (SANDBOX_URL, 200, cert.to_vec()),
        ])
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// The sandbox configuration: loopback http allowed, the test CA as the only anchor.
fn verifier(server: &Server, clock: Arc<AtomicU64>) -> WebhookVerifier {
    WebhookVerifier::builder()
        .transport(server.transport.clone())
        .allow_http_loopback(true)
        .allow_certificate_url(CertificateUrlRule::new(
            "http",
            "127.0.0.1",
            PortMatch::Any,
            "/cert/",
        ))
        .trust_anchors_pem(&PKI.ca_pem)
        .expected_organization(ORG)
        .clock(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::SeqCst)))
        .build()
        .unwrap()
}

fn now() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(NOW))
}

#[tokio::test]
async fn valid_callback_is_accepted_with_authorization_header() {
    let server = Server::serving(&PKI.leaf_der);
    let v = verifier(&server, now());
    let verified = v.verify(&signed_headers(BODY, MS_URL), BODY).await.unwrap();
    assert_eq!(verified.signature_header, SignatureHeader::Authorization);
    assert_eq!(verified.callback.event_name, CallbackEvent::ReferralUpdated);
    assert_eq!(verified.certificate_url, MS_URL);
    assert_eq!(verified.body_sha256, verified.callback.dedupe_key(BODY));
    assert_eq!(verified.certificate_thumbprint.len(), 64);
    assert_eq!(
        verified
            .callback
            .referral_id(WebhookCallback::DEFAULT_RESOURCE_HOSTS)
            .unwrap(),
        "4111fffc-f9ee-4d53-bba6-569135228642"
    );
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn valid_callback_is_accepted_with_x_ms_signature_header() {
    let server = Server::serving(&PKI.leaf_der);
    let v = verifier(&server, now());
    let sig = b64(&sign_with(&PKI.leaf_key, BODY));
    for value in [format!("Signature {sig}"), sig.clone()] {
        let h = headers(&[
            ("x-ms-signature", &value),
            ("x-ms-certificate-url", SANDBOX_URL),
            ("x-ms-signature-algorithm", "RSA-SHA256"),
        ]);
        let verified = v.verify(&h, BODY).await.unwrap();
        assert_eq!(verified.signature_header, SignatureHeader::XMsSignature);
    }
}

#[tokio::test]
async fn pem_certificate_and_configured_intermediate_are_accepted() {
    let server = Server::new(vec![(MS_URL, 200, PKI.leaf_pem.clone().into_bytes())]);
    verifier(&server, now())
        .verify(&signed_headers(BODY, MS_URL), BODY)
        .await
        .unwrap();

    // A leaf issued by an intermediate: untrusted until the intermediate is configured.
    let server = Server::serving(&PKI.via_intermediate_der);
    let err = verifier(&server, now())
        .verify(&signed_headers(BODY, MS_URL), BODY)
        .await
        .unwrap_err();
    assert_eq!(err, VerificationError::UntrustedChain);
    let v = WebhookVerifier::builder()
        .transport(server.transport.clone())
        .trust_anchors_pem(&PKI.ca_pem)
        .intermediates_pem(&PKI.intermediate_pem)
        .expected_organization(ORG)
        .clock(|| UNIX_EPOCH + Duration::from_secs(NOW))
        .build()
        .unwrap();
    v.verify(&signed_headers(BODY, MS_URL), BODY).await.unwrap();
    // ... or when the certificate file carries it after the leaf.
    let via_pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n{}",
        b64(&PKI.via_intermediate_der),
        PKI.intermediate_pem
    );
    let server = Server::new(vec![(MS_URL, 200, via_pem.into_bytes())]);
    verifier(&server, now())
        .verify(&signed_headers(BODY, MS_URL), BODY)
        .await
        .unwrap();
}

#[tokio::test]
async fn tampered_body_is_rejected() {
    let server = Server::serving(&PKI.leaf_der);
    let v = verifier(&server, now());
    let h = signed_headers(BODY, MS_URL);
    let tampered = String::from_utf8(BODY.to_vec())
        .unwrap()
        .replace("4111fffc", "5111fffc");
    let err = v.verify(&h, tampered.as_bytes()).await.unwrap_err();
    assert_eq!(err, VerificationError::BadSignature);
    assert_eq!(err.http_status(), 401);
    // Re-serialized JSON (same meaning, other bytes) fails too: verification is on raw bytes.
    let reserialized =
        serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(BODY).unwrap()).unwrap();
    assert_ne!(reserialized, BODY);
    assert_eq!(
        v.verify(&h, &reserialized).await.unwrap_err(),
        VerificationError::BadSignature
    );
}

#[tokio::test]
async fn signature_by_another_key_is_rejected() {
    let server = Server::serving(&PKI.leaf_der);
    let v = verifier(&server, now());
    let forged = format!("Signature {}", b64(&sign_with(&PKI.other_key, BODY)));
    let h = headers(&[
        ("authorization", &forged),
        ("x-ms-certificate-url", MS_URL),
        ("x-ms-signature-algorithm", "rsa-sha256"),
    ]);
    assert_eq!(
        v.verify(&h, BODY).await.unwrap_err(),
        VerificationError::BadSignature
    );
}

#[tokio::test]
async fn empty_truncated_and_overlong_signatures_are_rejected() {
    let server = Server::serving(&PKI.leaf_der);
    let v = verifier(&server, now());
    let good = sign_with(&PKI.leaf_key, BODY);
    let mut overlong = good.clone();
    overlong.push(0);
    let mut flipped = good.clone();
    flipped[100] ^= 1;
    let malformed = [
        String::new(),
        "Signature".into(),
        "Signature ".into(),
        "Signature =".into(),
        format!("Signature {}", b64(&good[..1])),
        format!("Signature {}", b64(&good[..255])),
        format!("Signature {}", b64(&[good.as_slice(); 5].concat())),
        format!("Bearer {}", b64(&good)),
        format!("Signature {} {}", b64(&good), b64(&good)),
        format!("Signature {}", &b64(&good)[..300]),
    ];
    for value in &malformed {
        let h = headers(&[
            ("authorization", value),
            ("x-ms-certificate-url", MS_URL),
            ("x-ms-signature-algorithm", "rsa-sha256"),
        ]);
        let err = v.verify(&h, BODY).await.unwrap_err();
        assert!(
            matches!(err, VerificationError::MalformedSignature(_)),
            "{value:?}: {err:?}"
        );
        assert_eq!(err.http_status(), 401);
    }
    // Nothing was fetched for a malformed signature.
    assert_eq!(server.fetches(), 0);
    // Plausible lengths that do not verify.
    for sig in [overlong, flipped, vec![0; 256], good[..256].to_vec()] {
        if sig == good {
            continue;
        }
        let h = headers(&[
            ("authorization", &format!("Signature {}", b64(&sig))),
            ("x-ms-certificate-url", MS_URL),
            ("x-ms-signature-algorithm", "rsa-sha256"),
        ]);
        assert_eq!(
            v.verify(&h, BODY).await.unwrap_err(),
            VerificationError::BadSignature
        );
    }
    // And an empty body with an empty signature does not verify either.
    let h = headers(&[
        ("x-ms-signature", ""),
        ("x-ms-certificate-url", MS_URL),
        ("x-ms-signature-algorithm", "rsa-sha256"),
    ]);
    assert!(matches!(
        v.verify(&h, b"").await,
        Err(VerificationError::MalformedSignature(_))
    ));
}

#[tokio::test]
async fn other_algorithms_are_rejected_without_fetching() {
    let server = Server::serving(&PKI.leaf_der);
    let v = verifier(&server, now());
    for alg in [
        "rsa-sha1",
        "RSA-SHA1",
        "rsa-sha512",
        "hmac-sha256",
        "none",
        "",
    ] {
        let mut h = signed_headers(BODY, MS_URL);
        h.insert("x-ms-signature-algorithm", alg.parse().unwrap());
        let err = v.verify(&h, BODY).await.unwrap_err();
        assert_eq!(err, VerificationError::UnsupportedAlgorithm(alg.into()));
    }
    assert_eq!(server.fetches(), 0);
}

#[tokio::test]
async fn certificate_urls_off_the_allow_list_are_never_fetched() {
    let server = Server::new(vec![]);
    let v = verifier(&server, now());
    for url in [
        "https://attacker.example/cert/pcnotifications-dispatch.microsoft.com.cer",
        "https://evil.blob.core.windows.net/cert/x.cer",
        "https://3psostorageacct.blob.core.windows.net.attacker.example/cert/x.cer",
        "http://3psostorageacct.blob.core.windows.net/cert/x.cer",
        "https://3psostorageacct.blob.core.windows.net:444/cert/x.cer",
        "https://3psostorageacct.blob.core.windows.net/cert/x.cer?redirect=1",
        "https://3psostorageacct.blob.core.windows.net/cert/x.cer#f",
        "https://me@3psostorageacct.blob.core.windows.net/cert/x.cer",
        "https://3psostorageacct.blob.core.windows.net/cert/../x.cer",
        "https://3psostorageacct.blob.core.windows.net/cert/.hidden/x.cer",
        "https://3psostorageacct.blob.core.windows.net/cert/..%2fx.cer",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:47011/admin/x.cer",
        "http://10.0.0.1/cert/x.cer",
        "file:///etc/passwd",
        "not a url",
    ] {
        let err = v
            .verify(&signed_headers(BODY, url), BODY)
            .await
            .unwrap_err();
        assert!(
            matches!(err, VerificationError::CertificateUrlNotAllowed(_)),
            "{url}: {err:?}"
        );
        assert_eq!(err.http_status(), 401);
    }
    assert_eq!(server.fetches(), 0, "no request for a refused URL");
}

#[tokio::test]
async fn redirects_error_statuses_and_oversized_certificates_are_refused() {
    let big = vec![0x30; 64 * 1024 + 1];
    for (status, body, expected) in [
        (302, Vec::new(), FetchFailure::Redirect(302)),
        (301, Vec::new(), FetchFailure::Redirect(301)),
        (404, Vec::new(), FetchFailure::Status(404)),
        (503, Vec::new(), FetchFailure::Status(503)),
        (200, big, FetchFailure::TooLarge(64 * 1024)),
        (200, Vec::new(), FetchFailure::Empty),
    ] {
        let server = Server::new(vec![(MS_URL, status, body)]);
        let err = verifier(&server, now())
            .verify(&signed_headers(BODY, MS_URL), BODY)
            .await
            .unwrap_err();
        assert_eq!(err, VerificationError::CertificateFetch(expected.clone()));
        assert_eq!(
            server.fetches(),
            1,
            "{expected:?}: one request, no redirect follow"
        );
    }
    let server = Server::new(vec![(MS_URL, 503, Vec::new())]);
    let err = verifier(&server, now())
        .verify(&signed_headers(BODY, MS_URL), BODY)
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.http_status(), 503);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_certificate_server_times_out() {
    let transport = FnTransport::new(|_req| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Err(TransportError::connect("unreachable"))
    });
    let v = WebhookVerifier::builder()
        .transport(Arc::new(transport))
        .trust_anchors_pem(&PKI.ca_pem)
        .expected_organization(ORG)
        .fetch_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert_eq!(
        v.verify(&signed_headers(BODY, MS_URL), BODY)
            .await
            .unwrap_err(),
        VerificationError::CertificateFetch(FetchFailure::Timeout)
    );
}

#[tokio::test]
async fn garbage_certificate_is_invalid() {
    let server = Server::new(vec![(MS_URL, 200, b"hello".to_vec())]);
    let err = verifier(&server, now())
        .verify(&signed_headers(BODY, MS_URL), BODY)
        .await
        .unwrap_err();
    assert!(matches!(err, VerificationError::CertificateInvalid(_)));
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_rejected() {
    let server = Server::serving(&PKI.expired_der);
    assert_eq!(
        verifier(&server, now())
            .verify(&signed_headers(BODY, MS_URL), BODY)
            .await
            .unwrap_err(),
        VerificationError::Expired
    );
    let server = Server::serving(&PKI.leaf_der);
    let clock = Arc::new(AtomicU64::new(1_500_000_000)); // 2017, before notBefore
    assert_eq!(
        verifier(&server, clock)
            .verify(&signed_headers(BODY, MS_URL), BODY)
            .await
            .unwrap_err(),
        VerificationError::NotYetValid
    );
}

#[tokio::test]
async fn wrong_organization_is_rejected() {
    let server = Server::serving(&PKI.wrong_org_der);
    let strict = WebhookVerifier::builder()
        .transport(server.transport.clone())
        .trust_anchors_pem(&PKI.ca_pem)
        .expected_organization(ORG)
        .organization_scope(OrganizationScope::SubjectAndIssuer)
        .clock(|| UNIX_EPOCH + Duration::from_secs(NOW))
        .build()
        .unwrap();
    let err = strict
        .verify(&signed_headers(BODY, MS_URL), BODY)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        VerificationError::OrganizationMismatch {
            expected: ORG.into(),
            found: vec!["Contoso Ltd".into()],
        }
    );
    // The issuer alone does match: the scope decides, and the default scope is the issuer's.
    verifier(&server, now())
        .verify(&signed_headers(BODY, MS_URL), BODY)
        .await
        .unwrap();
    // A substring is not a match (Microsoft's sample uses Contains).
    let v = WebhookVerifier::builder()
        .transport(Server::serving(&PKI.leaf_der).transport)
        .trust_anchors_pem(&PKI.ca_pem)
        .expected_organization("Cosell Test")
        .clock(|| UNIX_EPOCH + Duration::from_secs(NOW))
        .build()
        .unwrap();
    assert!(matches!(
        v.verify(&signed_headers(BODY, MS_URL), BODY).await,
        Err(VerificationError::OrganizationMismatch { .. })
    ));
}

#[tokio::test]
async fn certificate_from_an_untrusted_ca_is_rejected() {
    let server = Server::serving(&PKI.rogue_der);
    assert_eq!(
        verifier(&server, now())
            .verify(&signed_headers(BODY, MS_URL), BODY)
            .await
            .unwrap_err(),
        VerificationError::UntrustedChain
    );
    // The default anchors (Mozilla) do not trust the test CA either.
    let v = WebhookVerifier::builder()
        .transport(Server::serving(&PKI.leaf_der).transport)
        .expected_organization(ORG)
        .clock(|| UNIX_EPOCH + Duration::from_secs(NOW))
        .build()
        .unwrap();
    assert_eq!(
        v.verify(&signed_headers(BODY, MS_URL), BODY)
            .await
            .unwrap_err(),
        VerificationError::UntrustedChain
    );
}

#[tokio::test]
async fn certificates_unfit_for_signing_are_rejected() {
    for der in [&PKI.no_digital_signature_der, &PKI.email_only_der] {
        let server = Server::serving(der);
        let err = verifier(&server, now())
            .verify(&signed_headers(BODY, MS_URL), BODY)
            .await
            .unwrap_err();
        assert!(
            matches!(err, VerificationError::CertificateInvalid(_)),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn certificates_are_cached_by_url() {
    let server = Server::serving(&PKI.leaf_der);
    let clock = now();
    let v = verifier(&server, clock.clone());
    let h = signed_headers(BODY, MS_URL);
    v.verify(&h, BODY).await.unwrap();
    v.verify(&h, BODY).await.unwrap();
    assert_eq!(server.fetches(), 1);

    // Concurrent verifications share one fetch.
    let server = Server::serving(&PKI.leaf_der);
    let v = verifier(&server, clock.clone());
    let (a, b, c) = tokio::join!(v.verify(&h, BODY), v.verify(&h, BODY), v.verify(&h, BODY));
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    assert_eq!(server.fetches(), 1);

    // Another URL is another entry; after the TTL the certificate is fetched again.
    v.verify(&signed_headers(BODY, SANDBOX_URL), BODY)
        .await
        .unwrap();
    assert_eq!(server.fetches(), 2);
    clock.fetch_add(2 * 3600, Ordering::SeqCst);
    v.verify(&h, BODY).await.unwrap();
    assert_eq!(server.fetches(), 3);
    // A failed fetch is not cached as a success: it is remembered as a failure for the
    // negative TTL (30 s by default), then fetched again.
    let bad = Server::new(vec![(MS_URL, 500, Vec::new())]);
    let clock = now();
    let v = verifier(&bad, clock.clone());
    assert!(v.verify(&h, BODY).await.is_err());
    assert!(v.verify(&h, BODY).await.is_err());
    assert_eq!(bad.fetches(), 1);
    clock.fetch_add(31, Ordering::SeqCst);
    assert!(v.verify(&h, BODY).await.is_err());
    assert_eq!(bad.fetches(), 2);
}

#[tokio::test]
async fn missing_headers_map_to_400_or_401() {
    let server = Server::serving(&PKI.leaf_der);
    let v = verifier(&server, now());
    let full = signed_headers(BODY, MS_URL);
    for (drop, status) in [
        ("authorization", 401),
        ("x-ms-certificate-url", 400),
        ("x-ms-signature-algorithm", 400),
    ] {
        let mut h = full.clone();
        h.remove(drop);
        let err = v.verify(&h, BODY).await.unwrap_err();
        assert!(
            matches!(err, VerificationError::MissingHeader(_)),
            "{drop}: {err:?}"
        );
        assert_eq!(err.http_status(), status, "{drop}");
    }
    // Repeated headers are ambiguous.
    let mut h = full.clone();
    h.append("x-ms-certificate-url", MS_URL.parse().unwrap());
    assert_eq!(
        v.verify(&h, BODY).await.unwrap_err(),
        VerificationError::MalformedHeader("x-ms-certificate-url")
    );
    assert_eq!(server.fetches(), 0);
}

#[tokio::test]
async fn a_signed_body_that_is_not_a_callback_is_a_payload_error() {
    let server = Server::serving(&PKI.leaf_der);
    let v = verifier(&server, now());
    let body = br#"{"EventName":"referral-created"}"#;
    let err = v
        .verify(&signed_headers(body, MS_URL), body)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        VerificationError::Payload(CallbackError::MissingField("ResourceUri"))
    );
    assert!(err.is_client_error());
}

#[tokio::test]
async fn referral_id_never_trusts_a_foreign_host() {
    let body = br#"{"EventName":"referral-created","ResourceUri":"https://attacker.example/v1.0/engagements/referrals/4111fffc-f9ee-4d53-bba6-569135228642","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2030-01-01T00:00:00.0000000+00:00"}"#;
    let server = Server::serving(&PKI.leaf_der);
    let verified = verifier(&server, now())
        .verify(&signed_headers(body, MS_URL), body)
        .await
        .unwrap();
    assert_eq!(
        verified
            .callback
            .referral_id(WebhookCallback::DEFAULT_RESOURCE_HOSTS),
        Err(CallbackError::ForeignHost("attacker.example".into()))
    );
    assert_eq!(server.fetches(), 1, "ResourceUri was not fetched");
}

mod malformed_headers {
    use proptest::prelude::*;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Arbitrary header values never panic and never verify; only allow-listed URLs can
        /// cause a fetch.
        #[test]
        fn never_panics_never_verifies(
            auth in "(Signature |signature |Bearer |)[ -~]{0,400}",
            xms in proptest::option::of("[ -~]{0,80}"),
            alg in "[ -~]{0,20}|rsa-sha256|RSA-SHA256",
            url in "[ -~]{0,80}|https://3psostorageacct\\.blob\\.core\\.windows\\.net/cert/[ -~]{0,20}",
        ) {
            let server = Server::serving(&PKI.leaf_der);
            let v = verifier(&server, now());
            let mut h = HeaderMap::new();
            for (name, value) in [
                ("authorization", Some(auth)),
                ("x-ms-signature", xms),
                ("x-ms-signature-algorithm", Some(alg)),
                ("x-ms-certificate-url", Some(url)),
            ] {
                if let Some(value) = value
                    && let Ok(value) = http::HeaderValue::from_str(&value)
                {
                    h.insert(name, value);
                }
            }
            let result = runtime().block_on(v.verify(&h, BODY));
            prop_assert!(result.is_err());
        }

        /// Arbitrary bodies never panic the payload parser.
        #[test]
        fn callback_parse_is_total(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = WebhookCallback::parse(&body);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Microsoft-shaped chains: leaf served alone, intermediate through AIA, root in the trust store.

/// The production defaults (Microsoft's certificate host, Microsoft/DigiCert issuer hosts,
/// organization on the issuer), with the test root as the anchor and the test organization.
fn production_verifier(server: &Server, clock: Arc<AtomicU64>) -> WebhookVerifier {
    WebhookVerifier::builder()
        .transport(server.transport.clone())
        .trust_anchors_pem(&PKI.ca_pem)
        .expected_organization(ORG)
        .clock(move || UNIX_EPOCH + Duration::from_secs(clock.load(Ordering::SeqCst)))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_leaf_served_alone_verifies_with_its_intermediate_fetched_through_aia() {
    const RENEWED_URL: &str = "https://3psostorageacct.blob.core.windows.net/cert-2027/renewed.cer";
    let server = Server::new(vec![
        (MS_URL, 200, PKI.aia_leaf_der.clone()),
        (RENEWED_URL, 200, PKI.aia_leaf_der.clone()),
        (AIA_URL, 200, PKI.intermediate_der.clone()),
    ]);
    let v = production_verifier(&server, now());
    // The leaf has no Organization in its subject; its issuer's is checked.
    let verified = v.verify(&signed_headers(BODY, MS_URL), BODY).await.unwrap();
    assert_eq!(verified.certificate_url, MS_URL);
    assert_eq!(
        server.fetches(),
        2,
        "the leaf, then the intermediate via AIA"
    );

    // Both are cached: a second verification makes no fetch.
    v.verify(&signed_headers(BODY, MS_URL), BODY).await.unwrap();
    assert_eq!(server.fetches(), 2);

    // A certificate at another path of the same host (a renewal) costs one fetch: the
    // intermediate comes from its own cache.
    v.verify(&signed_headers(BODY, RENEWED_URL), BODY)
        .await
        .unwrap();
    assert_eq!(server.fetches(), 3);

    // Without AIA fetching (empty issuer allow-list) the same leaf does not chain.
    let server = Server::new(vec![
        (MS_URL, 200, PKI.aia_leaf_der.clone()),
        (AIA_URL, 200, PKI.intermediate_der.clone()),
    ]);
    let v = WebhookVerifier::builder()
        .transport(server.transport.clone())
        .trust_anchors_pem(&PKI.ca_pem)
        .expected_organization(ORG)
        .issuer_url_rules([])
        .clock(|| UNIX_EPOCH + Duration::from_secs(NOW))
        .build()
        .unwrap();
    assert_eq!(
        v.verify(&signed_headers(BODY, MS_URL), BODY)
            .await
            .unwrap_err(),
        VerificationError::UntrustedChain
    );
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn an_aia_url_off_the_issuer_allow_list_is_never_fetched() {
    let server = Server::new(vec![
        (MS_URL, 200, PKI.evil_aia_leaf_der.clone()),
        (EVIL_AIA_URL, 200, PKI.intermediate_der.clone()),
    ]);
    let v = production_verifier(&server, now());
    let err = v
        .verify(&signed_headers(BODY, MS_URL), BODY)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        VerificationError::IssuerUrlNotAllowed(EVIL_AIA_URL.into())
    );
    assert_eq!(err.http_status(), 401);
    assert_eq!(err.reason_code(), "issuer_url_not_allowed");
    assert_eq!(server.fetches(), 1, "only the leaf was fetched");

    // Allowing the host explicitly makes the same chain verify.
    let v = WebhookVerifier::builder()
        .transport(server.transport.clone())
        .trust_anchors_pem(&PKI.ca_pem)
        .expected_organization(ORG)
        .allow_issuer_url(CertificateUrlRule::host(
            "http",
            "attacker.example",
            PortMatch::Default,
        ))
        .clock(|| UNIX_EPOCH + Duration::from_secs(NOW))
        .build()
        .unwrap();
    v.verify(&signed_headers(BODY, MS_URL), BODY).await.unwrap();
}

#[tokio::test]
async fn the_issuer_organization_is_what_is_checked() {
    // Subject O = ORG, issued by a CA of another organization that chains to the trusted root.
    let server = Server::new(vec![
        (MS_URL, 200, PKI.other_org_issuer_leaf_der.clone()),
        (
            OTHER_ORG_AIA_URL,
            200,
            PKI.other_org_intermediate_der.clone(),
        ),
    ]);
    let err = production_verifier(&server, now())
        .verify(&signed_headers(BODY, MS_URL), BODY)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        VerificationError::OrganizationMismatch {
            expected: ORG.into(),
            found: vec!["Contoso Ltd".into()],
        }
    );
    // The subject scope alone would have let it through: the default is not the subject.
    let v = WebhookVerifier::builder()
        .transport(server.transport.clone())
        .trust_anchors_pem(&PKI.ca_pem)
        .expected_organization(ORG)
        .organization_scope(OrganizationScope::Subject)
        .clock(|| UNIX_EPOCH + Duration::from_secs(NOW))
        .build()
        .unwrap();
    v.verify(&signed_headers(BODY, MS_URL), BODY).await.unwrap();
}

#[tokio::test]
async fn the_certificate_host_allow_list_is_configurable() {
    const OTHER_HOST_URL: &str = "https://certs.example.net/dispatch/2027/signing.cer";
    let server = Server::new(vec![
        (MS_URL, 200, PKI.leaf_der.clone()),
        (OTHER_HOST_URL, 200, PKI.leaf_der.clone()),
    ]);
    // Default: Microsoft's documented host, any path, refuses the other host unfetched.
    let v = production_verifier(&server, now());
    v.verify(&signed_headers(BODY, MS_URL), BODY).await.unwrap();
    assert!(matches!(
        v.verify(&signed_headers(BODY, OTHER_HOST_URL), BODY).await,
        Err(VerificationError::CertificateUrlNotAllowed(_))
    ));
    assert_eq!(server.fetches(), 1);
    // Configured: the other host only.
    let v = WebhookVerifier::builder()
        .transport(server.transport.clone())
        .trust_anchors_pem(&PKI.ca_pem)
        .expected_organization(ORG)
        .certificate_hosts(["certs.example.net"])
        .clock(|| UNIX_EPOCH + Duration::from_secs(NOW))
        .build()
        .unwrap();
    v.verify(&signed_headers(BODY, OTHER_HOST_URL), BODY)
        .await
        .unwrap();
    assert_eq!(server.fetches(), 2);
    for url in [
        MS_URL,
        "http://certs.example.net/a.cer",
        "https://certs.example.net:8443/a.cer",
    ] {
        let err = v
            .verify(&signed_headers(BODY, url), BODY)
            .await
            .unwrap_err();
        assert!(
            matches!(err, VerificationError::CertificateUrlNotAllowed(_)),
            "{url}: {err:?}"
        );
    }
    assert_eq!(server.fetches(), 2, "no fetch for a refused URL");
}

#[tokio::test]
async fn failed_intermediate_fetches_are_remembered_for_a_short_time() {
    let server = Server::new(vec![
        (MS_URL, 200, PKI.aia_leaf_der.clone()),
        (AIA_URL, 503, Vec::new()),
    ]);
    let clock = now();
    let v = production_verifier(&server, clock.clone());
    let expected = VerificationError::IssuerFetch(FetchFailure::Status(503));
    let err = v
        .verify(&signed_headers(BODY, MS_URL), BODY)
        .await
        .unwrap_err();
    assert_eq!(err, expected);
    assert!(err.is_retryable());
    assert_eq!(server.fetches(), 2);
    // Forged or repeated callbacks within the negative TTL cause no request.
    for _ in 0..5 {
        assert_eq!(
            v.verify(&signed_headers(BODY, MS_URL), BODY)
                .await
                .unwrap_err(),
            expected
        );
    }
    assert_eq!(server.fetches(), 2);
    clock.fetch_add(31, Ordering::SeqCst);
    assert_eq!(
        v.verify(&signed_headers(BODY, MS_URL), BODY)
            .await
            .unwrap_err(),
        expected
    );
    assert_eq!(server.fetches(), 3, "fetched again after the negative TTL");
}

#[tokio::test]
async fn certificate_fetches_are_rate_limited() {
    let server = Server::new(vec![]);
    let clock = now();
    let c = clock.clone();
    let v = WebhookVerifier::builder()
        .transport(server.transport.clone())
        .trust_anchors_pem(&PKI.ca_pem)
        .expected_organization(ORG)
        .fetch_rate_limit(3, Duration::from_secs(60))
        .clock(move || UNIX_EPOCH + Duration::from_secs(c.load(Ordering::SeqCst)))
        .build()
        .unwrap();
    // Forged callbacks naming ever new allow-listed URLs (each a 404).
    let url =
        |i: usize| format!("https://3psostorageacct.blob.core.windows.net/cert/forged-{i}.cer");
    for i in 0..3 {
        assert_eq!(
            v.verify(&signed_headers(BODY, &url(i)), BODY)
                .await
                .unwrap_err(),
            VerificationError::CertificateFetch(FetchFailure::Status(404))
        );
    }
    for i in 3..8 {
        let err = v
            .verify(&signed_headers(BODY, &url(i)), BODY)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            VerificationError::CertificateFetch(FetchFailure::RateLimited)
        );
        assert_eq!(err.http_status(), 503, "Partner Center retries later");
    }
    assert_eq!(server.fetches(), 3);
    // One token comes back every 20 s.
    clock.fetch_add(20, Ordering::SeqCst);
    assert!(matches!(
        v.verify(&signed_headers(BODY, &url(8)), BODY).await,
        Err(VerificationError::CertificateFetch(FetchFailure::Status(
            404
        )))
    ));
    assert!(matches!(
        v.verify(&signed_headers(BODY, &url(9)), BODY).await,
        Err(VerificationError::CertificateFetch(
            FetchFailure::RateLimited
        ))
    ));
    assert_eq!(server.fetches(), 4);
}

#[tokio::test]
async fn a_declared_oversized_body_is_refused() {
    let transport = FnTransport::new(|_req| async {
        Ok::<_, TransportError>(
            http::Response::builder()
                .status(200)
                .header("content-length", "104857600")
                .body(Bytes::from(PKI.leaf_der.clone()))
                .unwrap(),
        )
    });
    let v = WebhookVerifier::builder()
        .transport(Arc::new(transport))
        .trust_anchors_pem(&PKI.ca_pem)
        .expected_organization(ORG)
        .clock(|| UNIX_EPOCH + Duration::from_secs(NOW))
        .build()
        .unwrap();
    assert_eq!(
        v.verify(&signed_headers(BODY, MS_URL), BODY)
            .await
            .unwrap_err(),
        VerificationError::CertificateFetch(FetchFailure::TooLarge(64 * 1024))
    );
}
