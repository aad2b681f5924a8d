//! A tour of the Partner Center client: a co-sell scenario, end to end, against the embedded sandbox.
//!
//! ```text
//! cargo run --example partner_center_tour
//! RUST_LOG=debug cargo run --example partner_center_tour   # with the client's and the sandbox's logs
//! ```
//!
//! Everything runs in this process, over real HTTP on 127.0.0.1, without network access, in a
//! few seconds:
//!
//! 1. the sandbox starts (Entra ID, the Partner Center APIs and Microsoft's side of the deal),
//!    and a `PartnerCenterClient` signs in the way production does: a user's refresh token for
//!    the Referrals API (app+user), client credentials for the webhook API (app-only);
//! 2. a webhook receiver verifies every signed callback (signature, certificate chain,
//!    certificate URL allow-list) before trusting it, and is registered for the referral events;
//! 3. Microsoft sends two incoming co-sell referrals: the callbacks arrive and each referral is
//!    read through the API;
//! 4. the partner accepts one and declines the other;
//! 5. the partner creates an outgoing co-sell referral; Microsoft accepts it and links its CRM
//!    opportunity;
//! 6. the deal value is updated under `If-Match`, and a stale eTag is refused with a typed 412;
//! 7. a forbidden transition (reopening a declined referral) is refused before anything is sent;
//! 8. a throttled list call is retried after the server's `Retry-After`;
//! 9. a summary of what the sandbox counted on its side.
//!
//! To run against Partner Center instead, drop the sandbox: keep the default endpoints, build the
//! credentials with your tenant, app and refresh token (without `authority_host`), and build the
//! verifier with the production defaults (`WebhookVerifier::builder()`, which fetches Microsoft's
//! issuing CA through the leaf's AIA URL).

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use chrono::Utc;
use cosell::http::{ClientSecretCredential, RefreshTokenCredential};
use cosell::partner_center::PartnerCenterClient;
use cosell::partner_center::models::{
    Address, AssistanceRequestCode, Consent, CustomerProfile, InviteContext, Member,
    PatchOperation, Referral, ReferralDetails, ReferralQualification, ReferralStatus,
    ReferralSubstatus, ReferralTarget, ReferralType, Requirements, SolutionTag, SolutionType,
    TargetType,
};
use cosell::partner_center::webhook::verify::{
    CertificateUrlRule, VerifiedCallback, WebhookVerifier,
};
use cosell::sandbox::entra::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use cosell::sandbox::partner_center::{
    CERTIFICATE_ORGANIZATION, DeliveryState, MICROSOFT_ORGANIZATION_ID,
};
use cosell::sandbox::{Fault, Sandbox, Service};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use serde_json::json;
use tokio::sync::mpsc;

/// How long to wait for a webhook callback before giving up.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);

type BoxError = Box<dyn Error>;

// ----- the webhook receiver ---------------------------------------------------------------

/// What the callback handler shares: the verifier and where verified callbacks go.
#[derive(Clone)]
struct Receiver {
    verifier: WebhookVerifier,
    verified: mpsc::UnboundedSender<VerifiedCallback>,
}

/// `POST /partner-center/webhook`: verify the raw body first, then hand the callback on.
/// A callback is only a hint that a referral changed; the work happens elsewhere.
async fn on_callback(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    match receiver.verifier.verify(&headers, &body).await {
        Ok(callback) => {
            // The receiving side may be gone at shutdown; the delivery still succeeded.
            let _ = receiver.verified.send(callback);
            StatusCode::OK
        }
        Err(e) => {
            println!("   ! refused a callback: {e} ({})", e.reason_code());
            // 400/401 for a bad callback, 503 when the certificate could not be fetched (so
            // Partner Center retries).
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED)
        }
    }
}

/// The main task's end of the channel: verified callbacks, in the order they arrived.
struct Inbox {
    callbacks: mpsc::UnboundedReceiver<VerifiedCallback>,
    /// Hosts a callback's `ResourceUri` may name (production:
    /// `WebhookCallback::DEFAULT_RESOURCE_HOSTS`).
    resource_hosts: Vec<String>,
    /// Callbacks taken from the channel so far.
    received: usize,
}

impl Inbox {
    /// Waits for the next `n` verified callbacks, printing each; returns their referral ids.
    async fn expect(&mut self, n: usize) -> Result<Vec<String>, BoxError> {
        let hosts: Vec<&str> = self.resource_hosts.iter().map(String::as_str).collect();
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let verified = tokio::time::timeout(CALLBACK_TIMEOUT, self.callbacks.recv())
                .await
                .map_err(|_| format!("no webhook callback within {CALLBACK_TIMEOUT:?}"))?
                .ok_or("the webhook receiver stopped")?;
            self.received += 1;
            // The id comes from ResourceUri, which is never fetched.
            let id = verified.callback.referral_id(&hosts)?;
            println!(
                "   webhook  {:<25} referral {}  (signature verified, certificate {})",
                verified.callback.event_name.as_str(),
                short(&id),
                short(&verified.certificate_thumbprint),
            );
            ids.push(id);
        }
        Ok(ids)
    }
}

// ----- printing helpers -----------------------------------------------------------------------

/// The first 8 characters of an id, enough to tell referrals apart on screen.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `Status/Substatus`.
fn state(r: &Referral) -> String {
    let (status, substatus) = r.status_pair();
    format!("{status}/{substatus}")
}

/// `250000.00 USD`, or `-` when the referral has no deal value.
fn deal(r: &Referral) -> String {
    let details = r.details.as_ref();
    match details.and_then(|d| d.deal_value) {
        Some(value) => format!(
            "{value:.2} {}",
            details.and_then(|d| d.currency.as_deref()).unwrap_or("")
        ),
        None => "-".into(),
    }
}

/// The referral's id (every referral the API returns has one).
fn id_of(r: &Referral) -> &str {
    r.id.as_deref().unwrap_or_default()
}

/// The customer's name.
fn customer(r: &Referral) -> &str {
    r.customer_profile
        .as_ref()
        .and_then(|c| c.name.as_deref())
        .unwrap_or("?")
}

// ----- the scenario ---------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let started = Instant::now();

    // 1. The sandbox, and a client signed in as production does -------------------------------
    println!("1. Start the sandbox and sign in");
    let sandbox = Sandbox::start().await?;
    let urls = sandbox.urls().clone();
    let microsoft = sandbox.partner_center(); // the control API: Microsoft's side of the deal
    println!("   Entra ID stand-in   {}", urls.entra);
    println!("   Referrals API       {}", urls.referrals);
    println!("   Webhook API         {}", urls.webhooks);

    // The Referrals API only accepts app+user tokens: a user signed in once, interactively, and
    // the app keeps their refresh token (the sandbox issues one, as that sign-in would).
    let refresh_token = sandbox.entra().issue_refresh_token(SANDBOX_CLIENT_ID);
    let user = RefreshTokenCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, refresh_token)
        .client_secret(SANDBOX_CLIENT_SECRET)
        .authority_host(urls.entra.as_str())
        // Entra rotates the refresh token on every use: persist the new one in your secret store.
        .on_rotated(Arc::new(|_new_refresh_token| {}))
        .build()?;
    // The webhook API also accepts app-only tokens: plain client credentials.
    let app =
        ClientSecretCredential::builder(SANDBOX_TENANT, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET)
            .authority_host(urls.entra.as_str())
            .build()?;
    let client = PartnerCenterClient::builder()
        .referrals_endpoint(urls.referrals.clone())
        .webhooks_endpoint(urls.webhooks.clone())
        .credential(Arc::new(user))
        .webhooks_credential(Arc::new(app))
        .build()?;
    println!(
        "   client ready: refresh-token credential (referrals), client credentials (webhooks)"
    );

    // 2. A webhook receiver that verifies every callback, registered for the referral events ----
    println!("\n2. Start a verifying webhook receiver and register it");
    // Production: `WebhookVerifier::builder()` as is (Microsoft's certificate host, the leaf's
    // intermediate fetched through AIA from Microsoft/DigiCert PKI hosts, Mozilla roots,
    // organization "Microsoft Corporation" on the issuer). Here: those defaults plus the
    // sandbox's certificate and PKI hosts (plain http on loopback), its test root CA and its
    // CAs' organization.
    let verifier = WebhookVerifier::builder()
        .allow_certificate_url(CertificateUrlRule::from_prefix(
            &microsoft.certificate_url_prefix(),
        )?)
        .allow_issuer_url(CertificateUrlRule::from_prefix(
            &microsoft.issuer_url_prefix(),
        )?)
        .allow_http_loopback(true)
        .additional_trust_anchors_pem(microsoft.root_ca_pem())
        .expected_organization(CERTIFICATE_ORGANIZATION)
        .build()?;
    let (verified_tx, callbacks) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/partner-center/webhook", axum::routing::post(on_callback))
        .with_state(Receiver {
            verifier,
            verified: verified_tx,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let callback_url = format!("http://{}/partner-center/webhook", listener.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "webhook receiver stopped");
        }
    });
    let registration = client
        .register_referral_webhook(&callback_url, true)
        .await?;
    let events: Vec<&str> = registration
        .webhook_events
        .iter()
        .map(|e| e.as_str())
        .collect();
    println!("   registered {}", registration.webhook_url);
    println!("   events     {}", events.join(", "));
    let mut inbox = Inbox {
        callbacks,
        resource_hosts: vec![urls.referrals.host_str().unwrap_or("127.0.0.1").to_string()],
        received: 0,
    };

    // 3. Microsoft sends two co-sell referrals ---------------------------------------------------
    println!("\n3. Microsoft sends two incoming co-sell referrals");
    for (customer_name, value) in [
        ("Contoso Pharmaceuticals", 180_000),
        ("Tailspin Toys", 45_000),
    ] {
        microsoft.create_incoming_referral(json!({
            "customerProfile": { "name": customer_name },
            "details": { "dealValue": value, "currency": "USD" },
        }))?;
    }
    let incoming_ids = inbox.expect(2).await?;
    let mut incoming = Vec::new();
    for id in &incoming_ids {
        let r = client.get_referral(id).await?;
        println!(
            "   read     {}  {:<24} {:<16} {:>14}  expires {}",
            short(id),
            customer(&r),
            state(&r),
            deal(&r),
            r.expiration_date_time
                .map_or("-".into(), |t| t.format("%Y-%m-%d").to_string()),
        );
        incoming.push(r);
    }
    let [to_accept, to_decline] = incoming.as_slice() else {
        return Err("expected exactly two incoming referrals".into());
    };

    // 4. Accept one, decline the other -------------------------------------------------------
    println!("\n4. Accept one incoming referral, decline the other");
    // The transition is checked against the status table before sending, and sent under
    // If-Match with the eTag we read: if someone changed the referral meanwhile, we get a 412.
    let accepted = client
        .transition_referral(
            to_accept,
            ReferralStatus::Active,
            ReferralSubstatus::Accepted,
        )
        .op(PatchOperation::set_notes(
            "Accepted: discovery call booked.",
        ))
        .send()
        .await?
        .ok_or("no referral in the answer")?;
    println!(
        "   accepted {}  {} -> {}",
        short(id_of(&accepted)),
        state(to_accept),
        state(&accepted)
    );
    let declined = client
        .transition_referral(
            to_decline,
            ReferralStatus::Closed,
            ReferralSubstatus::Declined,
        )
        .op(PatchOperation::set_status_reason(
            "Outside our practice area.",
        ))
        .send()
        .await?
        .ok_or("no referral in the answer")?;
    println!(
        "   declined {}  {} -> {}  ({})",
        short(id_of(&declined)),
        state(to_decline),
        state(&declined),
        declined.status_reason.as_deref().unwrap_or_default()
    );
    inbox.expect(2).await?;

    // 5. An outgoing co-sell referral, accepted by Microsoft -----------------------------------
    println!("\n5. Create an outgoing co-sell referral; Microsoft accepts it");
    let solution = SolutionTag {
        id: "SOL-48213-FAB".into(),
        name: Some("Fabrikam Cloud Migration Factory".into()),
        r#type: Some(SolutionType::Name),
        ..Default::default()
    };
    let request = Referral {
        name: Some("Northwind Traders - Azure migration".into()),
        external_reference_id: Some("CRM-OPP-000123".into()), // your CRM's opportunity id
        r#type: Some(ReferralType::Shared),
        qualification: Some(ReferralQualification::SalesQualified),
        customer_profile: Some(CustomerProfile {
            name: Some("Northwind Traders".into()),
            size: Some("251to1000employees".into()),
            address: Some(Address {
                address_line1: Some("1 Microsoft Way".into()),
                city: Some("Redmond".into()),
                state: Some("WA".into()),
                postal_code: Some("98052".into()),
                country: Some("US".into()),
                ..Default::default()
            }),
            team: Some(vec![Member {
                first_name: Some("Nancy".into()),
                last_name: Some("Davolio".into()),
                email: Some("nancy.davolio@northwind.example".into()),
                phone_number: Some("+1 425 555 0100".into()),
                title: Some("CIO".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        consent: Some(Consent {
            consent_to_to_share_info_with_others: Some(true),
            consent_to_contact: Some(true),
            consent_to_share_referral_with_microsoft_sellers: Some(true),
            ..Default::default()
        }),
        details: Some(ReferralDetails {
            notes: Some("Move 120 VMs and two SQL Server clusters to Azure.".into()),
            deal_value: Some("250000.00".parse::<Decimal>()?),
            currency: Some("USD".into()),
            closing_date_time: Some(Utc::now() + chrono::Duration::days(90)),
            requirements: Some(Requirements {
                solutions: Some(vec![solution.clone()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        target: Some(vec![ReferralTarget {
            r#type: Some(TargetType::SolutionProfile),
            id: solution.id.clone(),
            ..Default::default()
        }]),
        invite_context: Some(InviteContext {
            notes: Some("We would like Microsoft's help with the architecture review.".into()),
            assistance_request_code: Some(AssistanceRequestCode::CustomerTechnicalArchitecture),
            ..Default::default()
        }),
        ..Default::default()
    };
    let outgoing = client.create_referral(&request).await?;
    let outgoing_id = id_of(&outgoing).to_string();
    println!(
        "   created  {}  {:<24} {:<16} {:>14}  {}",
        short(&outgoing_id),
        customer(&outgoing),
        state(&outgoing),
        deal(&outgoing),
        outgoing.direction.as_ref().map_or("-", |d| d.as_str()),
    );
    inbox.expect(1).await?;
    // Microsoft accepts: its seller joins the engagement and links a Microsoft CRM opportunity.
    microsoft.microsoft_accept(&outgoing_id)?;
    inbox.expect(2).await?;
    let outgoing = client.get_referral(&outgoing_id).await?;
    println!(
        "   read     {}  Microsoft CRM id {}",
        short(&outgoing_id),
        outgoing
            .tracking_info
            .as_ref()
            .and_then(|t| t.microsoft_msx_id.as_deref())
            .unwrap_or("-"),
    );

    // 6. Update under If-Match; a stale eTag is refused ----------------------------------------
    println!("\n6. Update the deal value under If-Match, then retry with the stale eTag");
    let stale_etag = outgoing.e_tag.clone().ok_or("the referral has no eTag")?;
    let updated = client
        .update_referral(
            &outgoing_id,
            vec![PatchOperation::set_deal_value("275000.50".parse()?)],
        )
        .if_match(stale_etag.clone())
        .return_representation()
        .send()
        .await?
        .ok_or("no referral in the answer")?;
    println!(
        "   updated  {}  deal value {} -> {}",
        short(&outgoing_id),
        deal(&outgoing),
        deal(&updated),
    );
    println!(
        "            eTag {stale_etag} -> {}",
        updated.e_tag.as_deref().unwrap_or("-"),
    );
    inbox.expect(1).await?;
    let second_try = client
        .update_referral(
            &outgoing_id,
            vec![PatchOperation::set_deal_value("300000".parse()?)],
        )
        .if_match(stale_etag)
        .send()
        .await;
    match second_try {
        Err(e) if e.is_precondition_failed() => println!(
            "   refused  HTTP {} is_precondition_failed() = true: re-read, merge, try again",
            e.status().map_or(0, |s| s.as_u16()),
        ),
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("a stale eTag was accepted".into()),
    }

    // 7. A forbidden transition never leaves the client ------------------------------------------
    println!("\n7. Try to reopen the declined referral");
    let patches = || {
        sandbox
            .faults()
            .calls_matching(Service::Referrals, &Method::PATCH, "/referrals/{id}")
    };
    let patches_before = patches();
    let reopen = client
        .transition_referral(
            &declined,
            ReferralStatus::Active,
            ReferralSubstatus::Accepted,
        )
        .send()
        .await;
    match reopen {
        Err(cosell::partner_center::Error::InvalidTransition(t)) => {
            println!("   refused  {t} (rule {:?})", t.rule());
        }
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("a declined referral was reopened".into()),
    }
    println!(
        "            the emulator received {} PATCH request(s): nothing was sent",
        patches() - patches_before
    );

    // 8. Throttling: the client waits for Retry-After and tries again ---------------------------
    println!("\n8. List active referrals while the API throttles once (429, Retry-After: 1)");
    sandbox.faults().inject(
        Service::Referrals,
        Fault::throttle(Duration::from_secs(1))
            .on_method(Method::GET)
            .times(1),
    );
    let gets_before = sandbox.faults().calls(Service::Referrals);
    let list_started = Instant::now();
    let active: Vec<Referral> = client
        .list_referrals()
        .filter("status eq 'Active'")
        .order_by("createdDateTime desc")
        .into_stream()
        .try_collect()
        .await?;
    println!(
        "   listed   {} active referral(s) in {:.1} s; the emulator got {} GETs (429, then 200)",
        active.len(),
        list_started.elapsed().as_secs_f64(),
        sandbox.faults().calls(Service::Referrals) - gets_before,
    );
    for r in &active {
        println!(
            "            {}  {:<24} {:<16} {:>14}",
            short(id_of(r)),
            customer(r),
            r.direction.as_ref().map_or("-", |d| d.as_str()),
            deal(r),
        );
    }

    // 9. What the sandbox saw ---------------------------------------------------------------
    microsoft.wait_for_deliveries().await;
    let deliveries = microsoft.deliveries();
    let delivered = deliveries
        .iter()
        .filter(|d| d.state == DeliveryState::Delivered)
        .count();
    let faults = sandbox.faults();
    println!("\n9. Summary");
    let stored = microsoft.referrals();
    let microsofts = stored
        .iter()
        .filter(|r| r["organizationId"] == MICROSOFT_ORGANIZATION_ID)
        .count();
    println!(
        "   referrals in the emulator  {} ({} ours, {microsofts} Microsoft's)",
        stored.len(),
        stored.len() - microsofts,
    );
    println!(
        "   webhooks                   {delivered} of {} delivered, {} verified",
        deliveries.len(),
        inbox.received,
    );
    println!(
        "   API calls (server side)    entra {}, referrals {}, webhooks {}",
        faults.calls(Service::Entra),
        faults.calls(Service::Referrals),
        faults.calls(Service::Webhooks),
    );
    println!("   faults injected            {}", faults.injected());
    println!(
        "   elapsed                    {:.1} s",
        started.elapsed().as_secs_f64()
    );

    sandbox.shutdown().await;
    Ok(())
}
