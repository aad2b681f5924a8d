//! `cosell sandbox` + `cosell serve`, as the README tells someone who installed the binary:
//! both spawned, the service configured for the sandbox's ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{PATIENCE, eventually, free_port, request};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_binary_and_the_service_work_together() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let written = dir.path().join("written.toml");
    let mut sandbox = Command::new(env!("CARGO_BIN_EXE_cosell"));
    sandbox
        .arg("sandbox")
        .args(["--entra-port", &ports[0].to_string()])
        .args(["--referrals-port", &ports[1].to_string()])
        .args(["--webhooks-port", &ports[2].to_string()])
        .args(["--certificates-port", &ports[3].to_string()])
        .args(["--dataverse-port", &ports[4].to_string()])
        .args(["--pki-port", &ports[5].to_string()])
        .arg("--write-config")
        .arg(&written)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut sandbox = sandbox.spawn().unwrap();
    let mut lines = BufReader::new(sandbox.stdout.take().unwrap()).lines();
    tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("Ctrl-C stops it") {
                return;
            }
        }
        panic!("the sandbox never said it was running");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // The written configuration is the shipped one, for the default ports; move it to ours.
    let shipped = std::fs::read_to_string(&written).unwrap();
    assert!(cosell_cli::config::Settings::parse(&shipped, dir.path()).is_ok());
    let (listen, admin) = (free_port(), free_port());
    let mut config = shipped;
    for (default, port) in [7100u16, 7101, 7102, 7103, 7104, 7105].iter().zip(&ports) {
        config = config.replace(&format!(":{default}/"), &format!(":{port}/"));
    }
    config = config
        .replace("127.0.0.1:7110", &format!("127.0.0.1:{listen}"))
        .replace("127.0.0.1:7111", &format!("127.0.0.1:{admin}"))
        .replace(
            "cosell-state/cosell.sqlite",
            &dir.path().join("state/cosell.sqlite").display().to_string(),
        )
        .replace("inbox = \"250ms\"", "inbox = \"100ms\"");
    let path = dir.path().join("cosell.toml");
    std::fs::write(&path, config).unwrap();

    let mut serve = Command::new(env!("CARGO_BIN_EXE_cosell"));
    serve
        .arg("--config")
        .arg(&path)
        .arg("serve")
        // The sandbox's published secrets (sandbox_defaults = true in its configuration).
        .env_remove("COSELL_CLIENT_SECRET")
        .env_remove("COSELL_REFRESH_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
        .kill_on_drop(true);
    let serve = serve.spawn().unwrap();
    let log = || std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    eventually("the service's health check", || async {
        matches!(request(listen, "GET /healthz", &[], "").await, Ok((200, _))).then_some(())
    })
    .await;

    // Microsoft's side, played over the sandbox's control API: a referral arrives.
    let (code, _) = request(ports[1], "POST /_sandbox/referrals/incoming", &[], "")
        .await
        .unwrap();
    assert_eq!(code, 201, "{}", log());
    let links = eventually("the referral linked", || async {
        let (_, body) = request(admin, "GET /status", &[], "").await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["links"] == 1).then_some(v)
    })
    .await;
    assert_eq!(links["registration"]["outcome"], "registered", "{links:#}");

    let exit = common::stop(serve).await;
    assert!(exit.success(), "{}", log());
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &sandbox.id().unwrap().to_string()])
        .status();
    let stopped = tokio::time::timeout(Duration::from_secs(10), sandbox.wait()).await;
    assert!(stopped.is_ok_and(|s| s.is_ok_and(|s| s.success())));
}
