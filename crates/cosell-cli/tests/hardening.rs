//! What a hostile or careless network cannot do to `cosell serve`: idle and slow connections
//! are bounded and timed out, an oversize body is refused unread, the admin routes want their
//! token, and the state on disk is private.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{PATIENCE, Setup, request, stop};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITS: &str = r#"
max_connections = 64
header_read_timeout = "1s"
body_timeout = "2s"
max_body_bytes = 4096
admin_token_env = "COSELL_TEST_ADMIN_TOKEN"
"#;

/// Whether the server closes `stream` (EOF or reset) before [`PATIENCE`].
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408 may come before the close.
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_cannot_take_the_listener_down() {
    let mut setup = Setup::new(LIMITS, true).await;
    setup
        .envs
        .push(("COSELL_TEST_ADMIN_TOKEN".into(), "s3cret-admin".into()));
    let service = setup.serve().await;

    // 300 idle connections, far more than the 64 served at once.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(
            TcpStream::connect(("127.0.0.1", setup.listen))
                .await
                .unwrap(),
        );
    }
    // Slow-loris: headers a byte at a time, never finished.
    let mut loris = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", setup.listen))
            .await
            .unwrap();
        s.write_all(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        loris.push(s);
    }
    let dripping = tokio::spawn(async move {
        for _ in 0..40 {
            for s in &mut loris {
                let _ = s.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        loris
    });

    // The health check still gets through: the idle ones are closed after the header timeout.
    let (code, body) = request(setup.listen, "GET /healthz", &[], "")
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    assert!(
        closed_by_server(&mut idle[0]).await,
        "an idle connection stays open"
    );
    assert!(
        closed_by_server(&mut idle[299]).await,
        "an idle connection stays open"
    );
    let mut loris = dripping.await.unwrap();
    assert!(
        closed_by_server(&mut loris[0]).await,
        "a slow-loris connection stays open"
    );

    // An oversize body is refused from its Content-Length, before it is sent.
    let mut big = TcpStream::connect(("127.0.0.1", setup.listen))
        .await
        .unwrap();
    big.write_all(
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(PATIENCE, big.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let (code, _) = common::parse(&answer[..n]);
    assert_eq!(code, 413);

    // The admin routes want the token; they answer with it.
    let (code, _) = request(setup.admin, "GET /status", &[], "").await.unwrap();
    assert_eq!(code, 401);
    let (code, _) = request(
        setup.admin,
        "GET /metrics",
        &[("Authorization", "Bearer wrong")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(code, 401);
    let auth = [("Authorization", "Bearer s3cret-admin")];
    let (code, body) = request(setup.admin, "GET /status", &auth, "")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, _) = request(setup.admin, "GET /healthz", &[], "").await.unwrap();
    assert_eq!(code, 200, "the admin health check needs no token");
    // `cosell status` reads the token from the same variable.
    let (ok, out) = setup.run(&["status"]).await;
    assert!(ok.success() && out.contains("\"registration\""), "{out}");

    assert!(stop(service).await.success(), "{}", setup.log("serve.log"));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_on_disk_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut setup = Setup::new("", true).await;
    setup.envs.push(("COSELL_LOG_FORMAT".into(), "json".into()));
    let service = setup.serve().await;
    setup
        .sandbox
        .partner_center()
        .create_incoming_referral(serde_json::json!({"name": "Private"}))
        .unwrap();
    common::eventually("the lead", || async {
        (setup.sandbox.dataverse().count("lead") == 1).then_some(())
    })
    .await;
    assert!(stop(service).await.success());
    // Asked for JSON, every log line is a JSON object (a collector parses them).
    let log = setup.log("serve.log");
    assert!(log.contains("record synced"), "{log}");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let state = setup.state_dir();
    assert_eq!(mode(&state), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&state).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    // The database and the refresh token the service saved when Entra ID rotated it.
    assert!(files >= 2, "{files} files");
    let saved = std::fs::read_to_string(state.join("refresh-token")).unwrap();
    assert_ne!(saved.trim(), setup.refresh_token.as_deref().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_503_while_stopping_until_the_listener_closes() {
    use cosell_sandbox::{Fault, Service};
    let setup = Setup::new("", true).await;
    let service = setup.serve().await;
    let faults = setup.sandbox.faults();
    let before = faults.calls(Service::Dataverse);
    // Every Dataverse call now takes 3 s: the pass a referral starts is still in flight below.
    faults.inject(
        Service::Dataverse,
        Fault::latency(Duration::from_secs(3)).times(3),
    );
    setup
        .sandbox
        .partner_center()
        .create_incoming_referral(serde_json::json!({"name": "Slow"}))
        .unwrap();
    common::eventually("a Dataverse call in flight", || async {
        (faults.calls(Service::Dataverse) > before).then_some(())
    })
    .await;
    let pid = service.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let (code, body) = common::eventually("503 from /healthz", || async {
        let answer = request(setup.listen, "GET /healthz", &[], "").await.ok()?;
        (answer.0 == 503).then_some(answer)
    })
    .await;
    assert_eq!((code, body.as_str()), (503, "stopping\n"));
    let exit = stop_after_signal(service).await;
    assert!(exit.success(), "{}", setup.log("serve.log"));
    // Closed now.
    assert!(
        request(setup.listen, "GET /healthz", &[], "")
            .await
            .is_err()
    );
}

async fn stop_after_signal(mut child: tokio::process::Child) -> std::process::ExitStatus {
    tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("cosell serve did not stop")
        .unwrap()
}
