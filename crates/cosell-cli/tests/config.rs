//! The `cosell` configuration: the shipped sandbox config loads, and mistakes are reported with
//! the key they are about.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cosell_cli::config;

use std::path::Path;
use std::time::Duration;

use config::Settings;

const SHIPPED: &str = include_str!("../cosell.sandbox.toml");

fn error_of(text: &str) -> String {
    match Settings::parse(text, Path::new("examples")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_shipped_sandbox_config_loads() {
    let s = Settings::load(Path::new("cosell.sandbox.toml")).unwrap();
    assert_eq!(
        s.referrals.as_str(),
        "http://127.0.0.1:7101/v1.0/engagements/"
    );
    assert_eq!(s.dataverse.as_str(), "http://127.0.0.1:7104/");
    assert_eq!(s.listen.port(), 7110);
    assert_eq!(s.admin_listen.port(), 7111);
    assert_eq!(s.limits.max_body_bytes, 65536);
    assert_eq!(s.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(
        s.refresh_token_file,
        Path::new("cosell-state/refresh-token"),
        "beside the store"
    );
    assert_eq!(s.schedule.inbox, Duration::from_millis(250));
    assert_eq!(s.schedule.reconcile, Duration::from_secs(600));
    assert!(s.credentials.sandbox_defaults);
    assert!(!s.take_over_registration);
    assert_eq!(s.resource_hosts, ["127.0.0.1"]);
    assert_eq!(
        s.verification.trust_anchors,
        ["http://127.0.0.1:7103/cert/sandbox-root-ca.pem"]
    );
    assert_eq!(
        s.verification.issuer_url_prefixes,
        ["http://127.0.0.1:7105/pkiops/certs/"]
    );
    assert!(s.map.config().display_check_mark);
}

#[test]
fn a_minimal_production_config_takes_the_defaults() {
    let s = Settings::parse(
        r#"
        [endpoints]
        tenant = "contoso.onmicrosoft.com"
        dataverse = "https://contoso.crm.dynamics.com"
        [credentials]
        client_id = "00000000-0000-0000-0000-000000000000"
        [webhook]
        public_url = "https://cosell.contoso.com/webhook"
        "#,
        Path::new("."),
    )
    .unwrap();
    assert_eq!(
        s.referrals.as_str(),
        partner_center_client::DEFAULT_REFERRALS_ENDPOINT
    );
    assert_eq!(
        s.authority_host.as_str(),
        "https://login.microsoftonline.com/"
    );
    assert_eq!(s.dataverse.as_str(), "https://contoso.crm.dynamics.com/");
    assert_eq!(s.schedule, cosell_sync::Schedule::default());
    assert_eq!(s.engine, cosell_sync::EngineConfig::default());
    assert!(s.verification.certificate_url_prefixes.is_empty());
    assert!(s.verification.certificate_hosts.is_empty() && s.verification.default_roots);
    assert!(s.verification.issuer_url_prefixes.is_empty());
    assert_eq!(
        s.verification.expected_organization,
        "Microsoft Corporation"
    );
    assert!(s.register && s.resource_hosts.is_empty());
    assert_eq!(s.credentials.client_secret_env, "COSELL_CLIENT_SECRET");
    // The admin listener is on loopback unless configured, and needs no token there.
    assert!(s.admin_listen.ip().is_loopback() && s.admin_token_env.is_none());
    assert_eq!(s.limits.max_connections, 512);
}

#[test]
fn mistakes_name_their_key() {
    let cases = [
        (
            SHIPPED.replace(
                "admin_listen = \"127.0.0.1:7111\"",
                "admin_listen = \"0.0.0.0:7111\"",
            ),
            "`server.admin_listen`",
        ),
        (
            SHIPPED.replace(
                "admin_listen = \"127.0.0.1:7111\"",
                "admin_listen = \"127.0.0.1:7110\"",
            ),
            "`server.admin_listen`",
        ),
        (
            SHIPPED.replace("max_body_bytes = 65536", "max_body_bytes = 10"),
            "`server.max_body_bytes`",
        ),
        (
            SHIPPED.replace("max_connections = 512", "max_connections = 0"),
            "`server.max_connections`",
        ),
        (
            SHIPPED.replace(
                "header_read_timeout = \"10s\"",
                "header_read_timeout = \"0s\"",
            ),
            "`server.header_read_timeout`",
        ),
        (
            SHIPPED.replace("[store]", "[store]\nrefresh_token_file = \"\""),
            "unknown field `refresh_token_file`",
        ),
        (
            SHIPPED.replace("[credentials]", "[credentials]\nrefresh_token_file = \"\""),
            "`credentials.refresh_token_file`",
        ),
        (
            SHIPPED.replace("http://127.0.0.1:7104/", "http://crm.example.com/"),
            "`endpoints.dataverse`",
        ),
        (
            SHIPPED.replace("inbox = \"250ms\"", "inbox = \"0s\""),
            "`intervals.inbox`",
        ),
        (
            SHIPPED.replace("inbox = \"250ms\"", "inbox = \"soon\""),
            "inbox = \"soon\"",
        ),
        (
            SHIPPED.replace("127.0.0.1:7110\"", "localhost\""),
            "`server.listen`",
        ),
        (
            SHIPPED.replace(
                "deal_value_field = \"estimatedvalue\"",
                "deal_value_field = \"Deal\"",
            ),
            "`mapping.deal_value_field`",
        ),
        (
            SHIPPED.replace("parallelism = 8", "parallelism = 8\nparalelism = 2"),
            "unknown field `paralelism`",
        ),
        (
            SHIPPED.replace(
                "dataverse = \"http://127.0.0.1:7104/\"",
                "dataverse = \"https://contoso.crm.dynamics.com/\"",
            ),
            "`credentials.sandbox_defaults`",
        ),
        (
            format!("mapping_file = \"m.toml\"\n{SHIPPED}"),
            "`mapping_file`",
        ),
        (
            SHIPPED.replace(
                "issuer_url_prefixes = [\"http://127.0.0.1:7105/pkiops/certs/\"]",
                "issuer_url_prefixes = [\"ldap://127.0.0.1/certs/\"]",
            ),
            "`webhook.verification.issuer_url_prefixes[0]`",
        ),
        (
            SHIPPED.replace(
                "[webhook.verification]",
                "[webhook.verification]\ncertificate_hosts = [\"https://host/cert/\"]",
            ),
            "`webhook.verification.certificate_hosts[0]`",
        ),
    ];
    for (text, expected) in cases {
        let e = error_of(&text);
        assert!(e.contains(expected), "{expected} not in: {e}");
    }
}
