//! Driving the `cosell` binary as a user would: a sandbox on loopback, a real configuration
//! file, the binary spawned as a process, HTTP over raw sockets.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use cosell_sandbox::Sandbox;
use cosell_sandbox::entra::SANDBOX_CLIENT_SECRET;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Upper bound of every wait, so a broken build fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sandbox, a directory and a configuration file for one test.
pub struct Setup {
    pub sandbox: Sandbox,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub listen: u16,
    pub admin: u16,
    /// The refresh token given by environment variable (`None`: only the token file).
    pub refresh_token: Option<String>,
    pub envs: Vec<(String, String)>,
}

/// The configuration for `sandbox`'s URLs; `server_extra` goes into `[server]`.
pub fn config_text(
    urls: &cosell_sandbox::SandboxUrls,
    dir: &Path,
    listen: u16,
    admin: u16,
    server_extra: &str,
) -> String {
    format!(
        r#"
[endpoints]
authority_host = "{entra}"
tenant = "sandbox.onmicrosoft.com"
referrals = "{referrals}"
webhooks = "{webhooks}"
dataverse = "{dataverse}"

[credentials]
client_id = "cosell-sandbox-app"
client_secret_env = "COSELL_TEST_CLIENT_SECRET"
refresh_token_env = "COSELL_TEST_REFRESH_TOKEN"

[store]
path = "{state}/cosell.sqlite"

[intervals]
inbox = "100ms"
crm_changes = "1h"
reconcile = "1h"

[shutdown]
grace = "10s"

[server]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
{server_extra}

[webhook]
public_url = "http://127.0.0.1:{listen}/webhook"
resource_hosts = ["127.0.0.1"]

[webhook.verification]
certificate_url_prefixes = ["{certificates}cert/"]
issuer_url_prefixes = ["{pki}pkiops/certs/"]
trust_anchors = ["{certificates}cert/sandbox-root-ca.pem"]
expected_organization = "cosell sandbox"

[mapping]
display_check_mark = true
deal_value_field = "estimatedvalue"
"#,
        entra = urls.entra,
        referrals = urls.referrals,
        webhooks = urls.webhooks,
        dataverse = urls.dataverse,
        certificates = urls.certificates,
        pki = urls.pki,
        state = dir.join("state").display(),
    )
}

impl Setup {
    /// A sandbox on free ports and a configuration for it; `with_token`: a refresh token in
    /// the environment (otherwise only `cosell login` provides one).
    pub async fn new(server_extra: &str, with_token: bool) -> Setup {
        Setup::with_sandbox(Sandbox::builder(), server_extra, with_token).await
    }

    /// [`Setup::new`] on a sandbox built by `builder` (a bare Dataverse, say).
    pub async fn with_sandbox(
        builder: cosell_sandbox::SandboxBuilder,
        server_extra: &str,
        with_token: bool,
    ) -> Setup {
        let sandbox = builder.start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (listen, admin) = (free_port(), free_port());
        let config = dir.path().join("cosell.toml");
        std::fs::write(
            &config,
            config_text(sandbox.urls(), dir.path(), listen, admin, server_extra),
        )
        .unwrap();
        let refresh_token = with_token.then(|| {
            sandbox
                .entra()
                .issue_refresh_token(cosell_sandbox::entra::SANDBOX_CLIENT_ID)
        });
        Setup {
            sandbox,
            dir,
            config,
            listen,
            admin,
            refresh_token,
            envs: Vec::new(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The binary with `args`, configured, its stderr going to `log` in the test directory.
    pub fn command(&self, args: &[&str], log: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cosell"));
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("COSELL_TEST_CLIENT_SECRET", SANDBOX_CLIENT_SECRET)
            .env_remove("COSELL_TEST_REFRESH_TOKEN")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.dir.path().join(log)).unwrap())
            .kill_on_drop(true);
        if let Some(token) = &self.refresh_token {
            c.env("COSELL_TEST_REFRESH_TOKEN", token);
        }
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        c
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Runs a command to its end: exit status and stdout.
    pub async fn run(&self, args: &[&str]) -> (ExitStatus, String) {
        let name = format!("{}.log", args.join("-").replace([':', '/'], "_"));
        let child = self.command(args, &name).spawn().unwrap();
        let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("`cosell {}` did not finish", args.join(" ")))
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            eprintln!(
                "cosell {} → {}\n{stdout}\n{}",
                args.join(" "),
                out.status,
                self.log(&name)
            );
        }
        (out.status, stdout)
    }

    /// Starts `cosell serve` and waits for `/healthz` to answer 200.
    pub async fn serve(&self) -> Child {
        let child = self.command(&["serve"], "serve.log").spawn().unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok((200, _)) = request(self.listen, "GET /healthz", &[], "").await {
                return child;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cosell serve never answered /healthz:\n{}",
                self.log("serve.log")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// SIGTERM, then the exit status.
pub async fn stop(mut child: Child) -> ExitStatus {
    let pid = child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("cosell serve did not stop after SIGTERM")
        .unwrap()
}

/// One HTTP/1.1 request (`"GET /path"`) on a fresh connection: status and body.
pub async fn request(
    port: u16,
    line: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut text = format!("{line} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(text.as_bytes()).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    Ok(parse(&answer))
}

/// Status and (de-chunked) body of a response.
pub fn parse(answer: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    (status, body)
}

/// Polls `f` until it returns `Some`, at most [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
