//! `cosell login`: the OAuth 2.0 device authorization grant for the Referrals admin user, whose
//! app+user refresh token the referrals API needs (Partner Center accepts no app-only token
//! there, and the sign-in may require MFA, so a person signs in once in a browser).
//!
//! Microsoft identity platform, "OAuth 2.0 device authorization grant": `POST
//! {authority}/{tenant}/oauth2/v2.0/devicecode` with the client id and scopes, show the user
//! the code and page, then poll the token endpoint with
//! `grant_type=urn:ietf:params:oauth:grant-type:device_code` every `interval` seconds while it
//! answers `authorization_pending` (`slow_down` adds 5 s). The app registration must allow
//! public client flows.

use std::process::ExitCode;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;
use crate::config::Settings;

#[derive(Debug, Deserialize)]
struct DeviceCode {
    device_code: String,
    user_code: String,
    verification_uri: String,
    expires_in: u64,
    #[serde(default = "five")]
    interval: u64,
}

fn five() -> u64 {
    5
}

#[derive(Deserialize)]
struct TokenAnswer {
    refresh_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

fn describe(what: &str, status: u16, body: &[u8]) -> Error {
    // Entra's error bodies name the problem (`error`, `error_description`), never a secret.
    match serde_json::from_slice::<TokenAnswer>(body) {
        Ok(TokenAnswer {
            error: Some(code),
            error_description,
            ..
        }) => Error::Message(format!(
            "{what}: {code}: {}",
            error_description.unwrap_or_default()
        )),
        _ => Error::Message(format!("{what}: HTTP {status}")),
    }
}

/// Signs the Referrals admin in and saves the refresh token to
/// `credentials.refresh_token_file`, where `cosell serve` reads it.
pub async fn login(s: &Settings) -> Result<ExitCode, Error> {
    let base = format!("{}{}/oauth2/v2.0", s.authority_host, s.tenant);
    let scope = format!("{} offline_access", partner_center_client::REFERRALS_SCOPE);
    let client_id = s.credentials.client_id.as_str();
    let (status, body) = crate::http_post_form(
        &format!("{base}/devicecode"),
        &[("client_id", client_id), ("scope", &scope)],
    )
    .await?;
    if status != 200 {
        return Err(describe("the device code request", status, &body));
    }
    let code: DeviceCode = serde_json::from_slice(&body)
        .map_err(|e| Error::Message(format!("the device code answer: {e}")))?;
    println!(
        "To sign in as the Referrals admin, open {} and enter the code {}",
        code.verification_uri, code.user_code
    );
    println!(
        "Waiting for the sign-in to finish (the code expires in {} s)…",
        code.expires_in
    );
    let mut interval = Duration::from_secs(code.interval.max(1));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(code.expires_in);
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Message(
                "the code expired before the sign-in finished; run `cosell login` again".into(),
            ));
        }
        let (status, body) = crate::http_post_form(
            &format!("{base}/token"),
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", client_id),
                ("device_code", &code.device_code),
            ],
        )
        .await?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            Error::Message(format!(
                "the token endpoint answered HTTP {status}, not JSON"
            ))
        })?;
        match (status, answer.error.as_deref()) {
            (200, _) => {
                let Some(token) = answer.refresh_token else {
                    return Err(Error::Message(
                        "signed in, but Entra ID returned no refresh token (is `offline_access` allowed?)".into(),
                    ));
                };
                crate::token::write(&s.refresh_token_file, &token).map_err(|e| {
                    Error::Message(format!(
                        "credentials.refresh_token_file: cannot write `{}`: {e}",
                        s.refresh_token_file.display()
                    ))
                })?;
                println!(
                    "Signed in. The refresh token is saved in {} (mode 0600); `cosell serve` keeps it current.",
                    s.refresh_token_file.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            (_, Some("authorization_pending")) => {}
            (_, Some("slow_down")) => interval += Duration::from_secs(5),
            _ => return Err(describe("the sign-in", status, &body)),
        }
    }
}
