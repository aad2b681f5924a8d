//! A stand-in for Entra ID's token endpoints, so the real credential code path runs in every
//! test: `POST /{tenant}/oauth2/v2.0/token` with the `client_credentials` and `refresh_token`
//! grants, and the v1 `POST /{tenant}/oauth2/token` with the `password` grant (ROPC) that
//! Microsoft's referral authentication page documents, and the device authorization grant
//! (`POST /{tenant}/oauth2/v2.0/devicecode`, then the token endpoint polled with
//! `authorization_pending` until the user approves the code at `/devicelogin`, where the
//! sandbox asks for the code and nothing else). Issued tokens are opaque, remembered with
//! their audience and expiry, and checked by the emulated APIs, which answer 401 to a missing,
//! unknown, expired or wrong-audience token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Html;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::{DateTime, Utc};
use serde_json::json;

/// The client id of the app registered in the sandbox by default.
pub const SANDBOX_CLIENT_ID: &str = "cosell-sandbox-app";
/// The client secret of the default app.
pub const SANDBOX_CLIENT_SECRET: &str = "cosell-sandbox-secret";
/// The tenant the sandbox answers for (any tenant path segment is accepted).
pub const SANDBOX_TENANT: &str = "sandbox.onmicrosoft.com";
/// A well-known refresh token of the default app that `examples/sandbox.rs` registers with
/// [`EntraStandIn::register_refresh_token`], so a separately started service can sign in with
/// nothing but its configuration. Not registered by [`EntraStandIn::new`].
pub const SANDBOX_REFRESH_TOKEN: &str = "cosell-sandbox-refresh-token";
/// The user (UPN) registered in the sandbox by default, for the v1 `password` grant.
pub const SANDBOX_USERNAME: &str = "referral.admin@sandbox.onmicrosoft.com";
/// The password of [`SANDBOX_USERNAME`].
pub const SANDBOX_PASSWORD: &str = "cosell-sandbox-password";
/// The audience (resource) of the Partner Center referrals API.
pub const REFERRALS_AUDIENCE: &str = "https://api.partner.microsoft.com";
/// The audience of the Partner Center webhook API.
pub const WEBHOOKS_AUDIENCE: &str = "https://api.partnercenter.microsoft.com";

/// Why a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    #[error("the request has no bearer token")]
    Missing,
    /// A token the stand-in never issued (or revoked).
    #[error("the bearer token is not valid")]
    Unknown,
    /// An expired token.
    #[error("the bearer token has expired")]
    Expired,
    /// An app-only token where the API accepts only app+user tokens.
    #[error("the API accepts only app+user tokens; this one is app-only")]
    AppOnly,
    /// A token issued for another resource.
    #[error("the bearer token is for `{found}`, not `{expected}`")]
    WrongAudience {
        /// The audience the API expects.
        expected: String,
        /// The audience the token was issued for.
        found: String,
    },
}

#[derive(Debug, Clone)]
struct IssuedToken {
    audience: String,
    /// Issued through a user's refresh token (app+user) rather than client credentials (app-only).
    delegated: bool,
    expires_on: DateTime<Utc>,
}

/// A device code handed out and not yet redeemed.
#[derive(Debug, Clone)]
struct DeviceCode {
    client_id: String,
    user_code: String,
    scope: String,
    expires_on: DateTime<Utc>,
    approved: bool,
}

/// How long a device code is valid (Microsoft's answer says 900 seconds).
const DEVICE_CODE_LIFETIME: i64 = 900;
/// The polling interval the device code answer asks for, in seconds.
const DEVICE_CODE_INTERVAL: u64 = 1;

#[derive(Debug)]
struct State_ {
    /// Device codes by `device_code`.
    device_codes: HashMap<String, DeviceCode>,
    apps: HashMap<String, String>,
    access_tokens: HashMap<String, IssuedToken>,
    refresh_tokens: HashMap<String, String>,
    users: HashMap<String, String>,
    lifetime: Duration,
    grants: u64,
}

/// The Entra ID stand-in (cheap to clone; clones share state).
#[derive(Debug, Clone)]
pub struct EntraStandIn {
    state: Arc<Mutex<State_>>,
}

impl Default for EntraStandIn {
    fn default() -> Self {
        Self::new(Duration::from_secs(3600))
    }
}

impl EntraStandIn {
    /// A stand-in issuing tokens valid for `lifetime`, with the default app registered.
    pub fn new(lifetime: Duration) -> Self {
        let mut apps = HashMap::new();
        apps.insert(
            SANDBOX_CLIENT_ID.to_string(),
            SANDBOX_CLIENT_SECRET.to_string(),
        );
        EntraStandIn {
            state: Arc::new(Mutex::new(State_ {
                device_codes: HashMap::new(),
                apps,
                access_tokens: HashMap::new(),
                refresh_tokens: HashMap::new(),
                users: HashMap::from([(
                    SANDBOX_USERNAME.to_ascii_lowercase(),
                    SANDBOX_PASSWORD.to_string(),
                )]),
                lifetime,
                grants: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers another app (client id and secret).
    pub fn register_app(&self, client_id: &str, client_secret: &str) {
        self.lock()
            .apps
            .insert(client_id.to_string(), client_secret.to_string());
    }

    /// Registers a user (UPN, case-insensitive) and password for the v1 `password` grant.
    pub fn register_user(&self, username: &str, password: &str) {
        self.lock()
            .users
            .insert(username.to_ascii_lowercase(), password.to_string());
    }

    /// Issues a refresh token for `client_id`, as an interactive sign-in would (app+user).
    pub fn issue_refresh_token(&self, client_id: &str) -> String {
        let token = format!("sbx-rt-{}", uuid::Uuid::new_v4().simple());
        self.lock()
            .refresh_tokens
            .insert(token.clone(), client_id.to_string());
        token
    }

    /// Registers `token` as a valid refresh token of `client_id`, as if a user had signed in
    /// and Entra ID had issued it. Lets a standalone sandbox accept a fixed, documented token,
    /// so a separately started service needs no copy-pasted secret. Like every sandbox refresh
    /// token it stays valid when the grant rotates it.
    pub fn register_refresh_token(&self, client_id: &str, token: &str) {
        self.lock()
            .refresh_tokens
            .insert(token.to_string(), client_id.to_string());
    }

    /// Issues an app+user access token for `audience` directly (for tests that skip the grant).
    pub fn issue_access_token(&self, audience: &str) -> String {
        let mut s = self.lock();
        let expires_on = Utc::now()
            + chrono::Duration::from_std(s.lifetime).unwrap_or(chrono::Duration::hours(1));
        let token = format!("sbx-at-{}", uuid::Uuid::new_v4().simple());
        s.access_tokens.insert(
            token.clone(),
            IssuedToken {
                audience: audience.trim_end_matches('/').to_string(),
                delegated: true,
                expires_on,
            },
        );
        token
    }

    /// Revokes every access token issued so far (the next call of each client gets a 401 and
    /// must fetch a new token).
    pub fn revoke_access_tokens(&self) {
        self.lock().access_tokens.clear();
    }

    /// Approves the pending device code whose user code is `user_code` (case-insensitive), as
    /// the signed-in user does at the verification page; the next poll of the token endpoint
    /// gets tokens. Returns whether such a code was pending.
    pub fn approve_device_code(&self, user_code: &str) -> bool {
        let now = Utc::now();
        let mut s = self.lock();
        match s
            .device_codes
            .values_mut()
            .find(|d| d.user_code.eq_ignore_ascii_case(user_code.trim()) && d.expires_on > now)
        {
            Some(d) => {
                d.approved = true;
                true
            }
            None => false,
        }
    }

    /// The user codes of the device codes waiting for approval.
    pub fn pending_user_codes(&self) -> Vec<String> {
        let now = Utc::now();
        self.lock()
            .device_codes
            .values()
            .filter(|d| !d.approved && d.expires_on > now)
            .map(|d| d.user_code.clone())
            .collect()
    }

    /// Token grants answered so far.
    pub fn grants(&self) -> u64 {
        self.lock().grants
    }

    /// Checks the bearer token in `headers` for `audience`; app-only and app+user tokens pass.
    pub fn check(&self, headers: &HeaderMap, audience: &str) -> Result<(), AuthFailure> {
        self.check_token(headers, audience, false)
    }

    /// Checks the bearer token in `headers` for `audience` and requires an app+user token, as
    /// the Partner Center referrals API does.
    pub fn check_delegated(&self, headers: &HeaderMap, audience: &str) -> Result<(), AuthFailure> {
        self.check_token(headers, audience, true)
    }

    fn check_token(
        &self,
        headers: &HeaderMap,
        audience: &str,
        require_delegated: bool,
    ) -> Result<(), AuthFailure> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthFailure::Missing)?;
        let s = self.lock();
        let issued = s.access_tokens.get(token).ok_or(AuthFailure::Unknown)?;
        if issued.expires_on <= Utc::now() {
            return Err(AuthFailure::Expired);
        }
        let expected = audience.trim_end_matches('/');
        if issued.audience != expected {
            return Err(AuthFailure::WrongAudience {
                expected: expected.to_string(),
                found: issued.audience.clone(),
            });
        }
        if require_delegated && !issued.delegated {
            return Err(AuthFailure::AppOnly);
        }
        Ok(())
    }

    /// The router serving `POST /{tenant}/oauth2/v2.0/token` and the v1
    /// `POST /{tenant}/oauth2/token`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/{tenant}/oauth2/token", post(token_v1))
            .route("/{tenant}/oauth2/v2.0/devicecode", post(device_code))
            .route("/devicelogin", get(device_login_page).post(device_login))
            .with_state(self.clone())
    }

    /// Records an access token for `audience`; returns it and its expiry.
    fn record(&self, audience: &str, delegated: bool) -> (String, DateTime<Utc>, Duration) {
        let mut s = self.lock();
        s.grants += 1;
        let lifetime = s.lifetime;
        let token = format!("sbx-at-{}", uuid::Uuid::new_v4().simple());
        let expires_on =
            Utc::now() + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::hours(1));
        s.access_tokens.insert(
            token.clone(),
            IssuedToken {
                audience: audience.trim_end_matches('/').to_string(),
                delegated,
                expires_on,
            },
        );
        (token, expires_on, lifetime)
    }

    /// Issues a token for the resource named in `scope`; `None` when the scope names none.
    fn issue(&self, client_id: &str, scope: &str, delegated: bool) -> Option<serde_json::Value> {
        // A v2 scope names the resource: `https://host/.default` (or `https://host/permission`).
        // `openid`, `profile` and `offline_access` say nothing about the audience.
        let resource = scope.split_whitespace().find(|s| s.contains("://"))?;
        let audience = match resource.rfind('/') {
            Some(i)
                if resource[..i].contains("://") && i > resource.find("://").unwrap_or(0) + 3 =>
            {
                &resource[..i]
            }
            _ => resource,
        };
        let (token, _, lifetime) = self.record(audience, delegated);
        // Microsoft identity platform, "OAuth 2.0 client credentials flow" and "authorization
        // code flow" (refresh): `token_type`, `expires_in` (a number in v2), `access_token`;
        // the refresh answer adds `scope` and a new `refresh_token`.
        let mut body = json!({
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": lifetime.as_secs(),
            "ext_expires_in": lifetime.as_secs(),
            "access_token": token,
        });
        if delegated {
            let refresh = format!("sbx-rt-{}", uuid::Uuid::new_v4().simple());
            self.lock()
                .refresh_tokens
                .insert(refresh.clone(), client_id.to_string());
            body["refresh_token"] = json!(refresh);
        }
        Some(body)
    }
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({
            "error": code,
            "error_description": description,
            "error_codes": [],
            "timestamp": Utc::now().to_rfc3339(),
            "trace_id": uuid::Uuid::new_v4().to_string(),
            "correlation_id": uuid::Uuid::new_v4().to_string(),
        })),
    )
        .into_response()
}

fn issued(body: Option<serde_json::Value>) -> Response {
    match body {
        Some(body) => Json(body).into_response(),
        None => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS70011: The provided request must include a resource scope.",
        ),
    }
}

async fn token(
    State(entra): State<EntraStandIn>,
    Path(_tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let client_id = get("client_id");
    let scope = get("scope");
    let known_secret = entra.lock().apps.get(client_id).cloned();
    let Some(known_secret) = known_secret else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
        );
    };
    let secret_ok = form
        .get("client_secret")
        .is_some_and(|s| *s == known_secret);
    match get("grant_type") {
        "client_credentials" => {
            if !secret_ok {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "AADSTS7000215: Invalid client secret provided.",
                );
            }
            issued(entra.issue(client_id, scope, false))
        }
        "refresh_token" => {
            // A confidential client must authenticate; a public one sends no secret.
            if form.contains_key("client_secret") && !secret_ok {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "AADSTS7000215: Invalid client secret provided.",
                );
            }
            let owner = entra
                .lock()
                .refresh_tokens
                .get(get("refresh_token"))
                .cloned();
            match owner {
                Some(owner) if owner == client_id => issued(entra.issue(client_id, scope, true)),
                _ => oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "AADSTS70000: The provided refresh token is invalid or was issued to another client.",
                ),
            }
        }
        // https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-device-code
        // ("Authenticating the user"): the client polls with the device code; 400 with
        // `authorization_pending` until the user finishes, then the tokens.
        "urn:ietf:params:oauth:grant-type:device_code" => {
            if form.contains_key("client_secret") && !secret_ok {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "AADSTS7000215: Invalid client secret provided.",
                );
            }
            let code = entra.lock().device_codes.get(get("device_code")).cloned();
            match code {
                Some(code) if code.client_id != client_id => oauth_error(
                    StatusCode::BAD_REQUEST,
                    "bad_verification_code",
                    "AADSTS70019: The device code was issued to another client.",
                ),
                None => oauth_error(
                    StatusCode::BAD_REQUEST,
                    "bad_verification_code",
                    "AADSTS70019: The device code was not recognized.",
                ),
                Some(code) if code.expires_on <= Utc::now() => {
                    entra.lock().device_codes.remove(get("device_code"));
                    oauth_error(
                        StatusCode::BAD_REQUEST,
                        "expired_token",
                        "AADSTS70020: The device code has expired; start again.",
                    )
                }
                Some(code) if !code.approved => oauth_error(
                    StatusCode::BAD_REQUEST,
                    "authorization_pending",
                    "AADSTS70016: The user has not yet finished authenticating.",
                ),
                Some(code) => {
                    // Redeemed once: the device code is spent.
                    entra.lock().device_codes.remove(get("device_code"));
                    issued(entra.issue(client_id, &code.scope, true))
                }
            }
        }
        other => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("AADSTS70003: The grant type `{other}` is not supported here."),
        ),
    }
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`: a device code and the user code to enter at the
/// verification page.
async fn device_code(
    State(entra): State<EntraStandIn>,
    Path(_tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let client_id = get("client_id");
    if !entra.lock().apps.contains_key(client_id) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
        );
    }
    if !get("scope").contains("://") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS70011: The provided request must include a resource scope.",
        );
    }
    let device_code = format!("sbx-dc-{}", uuid::Uuid::new_v4().simple());
    let letters = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .to_ascii_uppercase();
    let user_code = letters[..9].to_string();
    entra.lock().device_codes.insert(
        device_code.clone(),
        DeviceCode {
            client_id: client_id.to_string(),
            user_code: user_code.clone(),
            scope: get("scope").to_string(),
            expires_on: Utc::now() + chrono::Duration::seconds(DEVICE_CODE_LIFETIME),
            approved: false,
        },
    );
    // The page is on this server; the Host header says how the client reached it.
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let verification_uri = format!("http://{host}/devicelogin");
    // https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-device-code
    // ("Device authorization response"): these six fields.
    Json(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": verification_uri,
        "expires_in": DEVICE_CODE_LIFETIME,
        "interval": DEVICE_CODE_INTERVAL,
        "message": format!(
            "To sign in, use a web browser to open the page {verification_uri} and enter the code {user_code} to authenticate."
        ),
    }))
    .into_response()
}

/// `GET /devicelogin`: the sandbox's verification page (a form asking for the user code; the
/// sandbox's user is signed in already).
async fn device_login_page() -> Html<&'static str> {
    Html(
        "<!doctype html><title>cosell sandbox sign-in</title>\
         <form method=post><label>Code <input name=user_code autofocus></label>\
         <button>Sign in as the sandbox's referral admin</button></form>",
    )
}

/// `POST /devicelogin` (form `user_code`): approves the code.
async fn device_login(
    State(entra): State<EntraStandIn>,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, &'static str) {
    let code = form.get("user_code").map(String::as_str).unwrap_or("");
    if entra.approve_device_code(code) {
        (
            StatusCode::OK,
            "Signed in. You can close this page and return to the application.\n",
        )
    } else {
        (
            StatusCode::BAD_REQUEST,
            "That code is unknown or has expired.\n",
        )
    }
}

/// The v1 endpoint (`/{tenant}/oauth2/token`) with the `password` grant, as Microsoft's
/// "Referrals API authentication" page documents it: form `resource`, `grant_type=password`,
/// `scope=openid`, `client_id`, `client_secret`, `username`, `password`. Other grants are
/// answered on the v2.0 endpoint only (the sandbox's choice: cosell never uses v1).
async fn token_v1(
    State(entra): State<EntraStandIn>,
    Path(_tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if get("grant_type") != "password" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The sandbox answers only the `password` grant on the v1 endpoint; use /oauth2/v2.0/token.",
        );
    }
    let known_secret = entra.lock().apps.get(get("client_id")).cloned();
    let Some(known_secret) = known_secret else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
        );
    };
    if form
        .get("client_secret")
        .is_some_and(|s| *s != known_secret)
    {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    // v1 names the audience with `resource` (no v2 scope).
    let resource = get("resource");
    if resource.is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS50001: The request must include the `resource` parameter.",
        );
    }
    let user_ok = entra
        .lock()
        .users
        .get(&get("username").to_ascii_lowercase())
        .is_some_and(|p| p == get("password"));
    if !user_ok {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "AADSTS50126: Error validating credentials due to invalid username or password.",
        );
    }
    let (token, expires_on, lifetime) = entra.record(resource, true);
    let not_before = Utc::now();
    // Referrals API authentication page: the numbers of a v1 answer are strings.
    Json(json!({
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs().to_string(),
        "ext_expires_in": lifetime.as_secs().to_string(),
        "expires_on": expires_on.timestamp().to_string(),
        "not_before": not_before.timestamp().to_string(),
        "resource": resource,
        "access_token": token,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_rejects_missing_unknown_and_wrong_audience() {
        let e = EntraStandIn::default();
        let mut h = HeaderMap::new();
        assert_eq!(e.check(&h, REFERRALS_AUDIENCE), Err(AuthFailure::Missing));
        h.insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(e.check(&h, REFERRALS_AUDIENCE), Err(AuthFailure::Unknown));
        let t = e.issue_access_token(WEBHOOKS_AUDIENCE);
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        assert!(matches!(
            e.check(&h, REFERRALS_AUDIENCE),
            Err(AuthFailure::WrongAudience { .. })
        ));
        assert_eq!(e.check(&h, WEBHOOKS_AUDIENCE), Ok(()));
        e.revoke_access_tokens();
        assert_eq!(e.check(&h, WEBHOOKS_AUDIENCE), Err(AuthFailure::Unknown));
    }

    #[tokio::test]
    async fn a_registered_refresh_token_is_redeemed_only_by_its_client() {
        let e = EntraStandIn::default();
        e.register_refresh_token(SANDBOX_CLIENT_ID, SANDBOX_REFRESH_TOKEN);
        let grant = |client_id: &str, refresh_token: &str| {
            let mut form = HashMap::new();
            form.insert("grant_type".to_string(), "refresh_token".to_string());
            form.insert("client_id".to_string(), client_id.to_string());
            form.insert(
                "client_secret".to_string(),
                SANDBOX_CLIENT_SECRET.to_string(),
            );
            form.insert("refresh_token".to_string(), refresh_token.to_string());
            form.insert(
                "scope".to_string(),
                format!("{REFERRALS_AUDIENCE}/.default offline_access"),
            );
            token(State(e.clone()), Path("t".to_string()), Form(form))
        };
        assert_eq!(
            grant(SANDBOX_CLIENT_ID, SANDBOX_REFRESH_TOKEN)
                .await
                .status(),
            200
        );
        // Still valid after being redeemed once (the service restarts with the same token).
        assert_eq!(
            grant(SANDBOX_CLIENT_ID, SANDBOX_REFRESH_TOKEN)
                .await
                .status(),
            200
        );
        assert_eq!(grant(SANDBOX_CLIENT_ID, "sbx-rt-other").await.status(), 400);
        e.register_app("other-app", SANDBOX_CLIENT_SECRET);
        assert_eq!(
            grant("other-app", SANDBOX_REFRESH_TOKEN).await.status(),
            400
        );
    }

    #[tokio::test]
    async fn a_device_code_is_pending_until_approved_then_redeemed_once() {
        let e = EntraStandIn::default();
        let form = |pairs: &[(&str, &str)]| {
            Form(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>(),
            )
        };
        let body = |r: Response| async move {
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        let scope = format!("{REFERRALS_AUDIENCE}/.default offline_access");
        let answer = device_code(
            State(e.clone()),
            Path("t".into()),
            HeaderMap::new(),
            form(&[("client_id", SANDBOX_CLIENT_ID), ("scope", &scope)]),
        )
        .await;
        assert_eq!(answer.status(), 200);
        let answer = body(answer).await;
        let dc = answer["device_code"].as_str().unwrap().to_string();
        let uc = answer["user_code"].as_str().unwrap().to_string();
        assert!(
            answer["verification_uri"]
                .as_str()
                .unwrap()
                .ends_with("/devicelogin")
        );
        let poll = || {
            token(
                State(e.clone()),
                Path("t".into()),
                form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("client_id", SANDBOX_CLIENT_ID),
                    ("device_code", &dc),
                ]),
            )
        };
        let pending = poll().await;
        assert_eq!(pending.status(), 400);
        assert_eq!(body(pending).await["error"], "authorization_pending");
        assert_eq!(e.pending_user_codes(), std::slice::from_ref(&uc));
        assert!(!e.approve_device_code("NOT-A-CODE"));
        assert!(e.approve_device_code(&uc.to_ascii_lowercase()));
        let tokens = body(poll().await).await;
        assert!(tokens["access_token"].is_string() && tokens["refresh_token"].is_string());
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {}", tokens["access_token"].as_str().unwrap())
                .parse()
                .unwrap(),
        );
        assert_eq!(e.check_delegated(&h, REFERRALS_AUDIENCE), Ok(()));
        let again = poll().await;
        assert_eq!(body(again).await["error"], "bad_verification_code");
    }

    #[test]
    fn audience_comes_from_the_scope() {
        let e = EntraStandIn::default();
        let body = e
            .issue(
                "app",
                "offline_access https://api.partner.microsoft.com/.default",
                true,
            )
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {}", body["access_token"].as_str().unwrap())
                .parse()
                .unwrap(),
        );
        assert_eq!(e.check(&h, REFERRALS_AUDIENCE), Ok(()));
        assert_eq!(e.check_delegated(&h, REFERRALS_AUDIENCE), Ok(()));
        assert!(body["refresh_token"].is_string());
        let body = e
            .issue("app", "http://127.0.0.1:5555/.default", false)
            .unwrap();
        h.insert(
            "authorization",
            format!("Bearer {}", body["access_token"].as_str().unwrap())
                .parse()
                .unwrap(),
        );
        assert_eq!(e.check(&h, "http://127.0.0.1:5555/"), Ok(()));
        assert_eq!(
            e.check_delegated(&h, "http://127.0.0.1:5555"),
            Err(AuthFailure::AppOnly)
        );
    }
}
