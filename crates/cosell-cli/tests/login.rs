//! `cosell login` against the sandbox's device-code endpoint, then `cosell serve` signing in
//! with nothing but the token it saved.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PATIENCE, Setup, eventually, stop};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_saves_a_refresh_token_that_serve_then_uses() {
    // No refresh token anywhere but what the login saves.
    let setup = Setup::new("", false).await;
    let (no_token, _) = setup.run(&["sync", "referral", "x"]).await;
    assert!(!no_token.success(), "nothing to sign in with yet");

    let mut login = setup.command(&["login"], "login.log").spawn().unwrap();
    let stdout = login.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let prompt = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("enter the code") {
                return line;
            }
        }
        panic!("no prompt:\n{}", setup.log("login.log"));
    })
    .await
    .unwrap();
    assert!(prompt.contains("/devicelogin"), "{prompt}");
    let code = prompt.rsplit(' ').next().unwrap().to_string();
    // The user signs in at the page (the sandbox's form posts the code).
    let (status, _) = common::request(
        setup.sandbox.urls().entra.port().unwrap(),
        "POST /devicelogin",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("user_code={code}"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let rest = tokio::spawn(async move {
        let mut out = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            out.push_str(&line);
            out.push('\n');
        }
        out
    });
    let exit = tokio::time::timeout(PATIENCE, login.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{}", setup.log("login.log"));
    assert!(rest.await.unwrap().contains("Signed in"));

    let file = setup.state_dir().join("refresh-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let first = std::fs::read_to_string(&file).unwrap();

    // The service signs in with the saved token: a referral from Microsoft reaches the CRM.
    let service = setup.serve().await;
    setup
        .sandbox
        .partner_center()
        .create_incoming_referral(serde_json::json!({"name": "Signed in"}))
        .unwrap();
    eventually("the lead", || async {
        (setup.sandbox.dataverse().count("lead") == 1).then_some(())
    })
    .await;
    assert!(stop(service).await.success(), "{}", setup.log("serve.log"));
    // …and kept the rotated one.
    assert_ne!(std::fs::read_to_string(&file).unwrap(), first);
}
