//! The sandbox signs callbacks the way Microsoft does: root -> intermediate -> leaf, the leaf
//! served alone at the certificate URL, the intermediate at the leaf's AIA `caIssuers` URL on
//! the sandbox's own PKI host; the verifier with the production defaults plus the sandbox's
//! root and hosts accepts them, over loopback and in process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use cosell_http::{FnTransport, HttpTransport, ReqwestTransport};
use cosell_sandbox::Sandbox;
use http::HeaderMap;
use partner_center_client::webhook::verify::{CertificateUrlRule, WebhookVerifier};

const BODY: &[u8] = br#"{"EventName":"referral-updated","ResourceUri":"http://127.0.0.1/v1.0/engagements/referrals/4111fffc-f9ee-4d53-bba6-569135228642","ResourceName":"referral","AuditUri":null,"ResourceChangeUtcDate":"2024-02-25T09:11:02.1034567+00:00"}"#;

/// Wraps `inner`, recording every URL requested.
fn recording(inner: Arc<dyn HttpTransport>) -> (Arc<dyn HttpTransport>, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let t = FnTransport::new(move |req: http::Request<bytes::Bytes>| {
        log.lock().unwrap().push(req.uri().to_string());
        let inner = inner.clone();
        async move { inner.send(req).await }
    });
    (Arc::new(t), seen)
}

fn signed(sandbox: &Sandbox) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in sandbox.partner_center().sign_callback(BODY, false).unwrap() {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

#[tokio::test]
async fn the_leaf_is_served_alone_and_its_intermediate_comes_from_the_pki_host() {
    let sandbox = Sandbox::start().await.unwrap();
    let pc = sandbox.partner_center();
    let reqwest: Arc<dyn HttpTransport> = Arc::new(ReqwestTransport::new().unwrap());

    // The certificate URL serves exactly the leaf (one DER certificate, no chain), the issuer
    // URL exactly the intermediate, on a host of its own.
    let get = |url: String| {
        let t = reqwest.clone();
        async move {
            let req = http::Request::get(url).body(bytes::Bytes::new()).unwrap();
            t.send(req).await.unwrap().into_body()
        }
    };
    assert_eq!(
        get(pc.certificate_url().to_string()).await.to_vec(),
        pc.signing_certificate_der()
    );
    assert_eq!(
        get(pc.issuer_url().to_string()).await.to_vec(),
        pc.intermediate_ca_der()
    );
    assert_eq!(pc.issuer_url().port(), sandbox.urls().pki.port());
    assert_ne!(
        sandbox.urls().pki.port(),
        sandbox.urls().certificates.port()
    );
    assert!(
        pc.issuer_url()
            .path()
            .ends_with("/pkiops/certs/cosell-sandbox-issuing-ca-01.crt")
    );

    let (transport, seen) = recording(reqwest.clone());
    let verifier = pc
        .webhook_verifier_builder()
        .unwrap()
        .transport(transport)
        .build()
        .unwrap();
    verifier.verify(&signed(&sandbox), BODY).await.unwrap();
    verifier.verify(&signed(&sandbox), BODY).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            pc.certificate_url().to_string(),
            pc.issuer_url().to_string()
        ],
        "the leaf, then the intermediate through AIA; both cached afterwards"
    );

    // Without the PKI host on the issuer allow-list the chain cannot be completed, and the
    // intermediate is not fetched.
    let (transport, seen) = recording(reqwest);
    let verifier = WebhookVerifier::builder()
        .transport(transport)
        .allow_http_loopback(true)
        .allow_certificate_url(
            CertificateUrlRule::from_prefix(&pc.certificate_url_prefix()).unwrap(),
        )
        .additional_trust_anchors_pem(pc.root_ca_pem())
        .expected_organization(cosell_sandbox::partner_center::CERTIFICATE_ORGANIZATION)
        .build()
        .unwrap();
    let err = verifier.verify(&signed(&sandbox), BODY).await.unwrap_err();
    assert_eq!(err.reason_code(), "issuer_url_not_allowed");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![pc.certificate_url().to_string()]
    );
    sandbox.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn in_process_the_chain_verifies_through_the_sandbox_transport() {
    let sandbox = Sandbox::builder().start_in_process().unwrap();
    let pc = sandbox.partner_center();
    assert_eq!(sandbox.urls().pki.port(), Some(6));
    let (transport, seen) = recording(sandbox.transport());
    let verifier = pc
        .webhook_verifier_builder()
        .unwrap()
        .transport(transport)
        .build()
        .unwrap();
    verifier.verify(&signed(&sandbox), BODY).await.unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
}
