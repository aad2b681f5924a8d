//! A PostgreSQL server for tests: the one `COSELL_TEST_POSTGRES_URL` names, or a throwaway one
//! started from the binaries on this machine (loopback only, data in a temporary directory).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::store::{PostgresStore, StoreError};

/// The variable naming a PostgreSQL server for tests (`postgres://user@127.0.0.1:port/db`).
pub const URL_VAR: &str = "COSELL_TEST_POSTGRES_URL";

/// A PostgreSQL server for tests. Each [`store`](Self::store) is a fresh schema, so tests that
/// share one server stay independent. A server this started is stopped when dropped.
#[derive(Debug)]
pub struct TestPostgres {
    url: String,
    started: Option<Started>,
}

#[derive(Debug)]
struct Started {
    pg_ctl: PathBuf,
    data: PathBuf,
    as_postgres_user: bool,
    _dir: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = pg_command(&self.pg_ctl, self.as_postgres_user)
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// `program`, run as the `postgres` system user when we are root (initdb refuses root).
fn pg_command(program: &Path, as_postgres_user: bool) -> Command {
    if as_postgres_user {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The directory holding `initdb` and `pg_ctl`: on `PATH`, or a Debian package's.
fn find_binaries() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        // Newest first.
        versions.sort();
        versions.reverse();
        dirs.extend(versions);
    }
    dirs.into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("{what} could not run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl TestPostgres {
    /// The server `COSELL_TEST_POSTGRES_URL` names, or else a throwaway one started from the
    /// PostgreSQL binaries on `PATH` or under `/usr/lib/postgresql/*/bin` (as the `postgres`
    /// user when running as root). The error says why neither was possible.
    pub fn start() -> Result<TestPostgres, String> {
        if let Ok(url) = std::env::var(URL_VAR)
            && !url.is_empty()
        {
            return Ok(TestPostgres { url, started: None });
        }
        let bin = find_binaries().ok_or(
            "no PostgreSQL binaries (initdb, pg_ctl) on PATH or under /usr/lib/postgresql",
        )?;
        let as_postgres_user = is_root();
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        if as_postgres_user {
            let mut chown = Command::new("chown");
            chown.arg("postgres:").arg(dir.path());
            run(chown, "chown of the data directory to the postgres user")?;
        }
        let data = dir.path().join("data");
        let mut initdb = pg_command(&bin.join("initdb"), as_postgres_user);
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        run(initdb, "initdb")?;
        // A free port: bound and released, then handed to the server (loopback only).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let pg_ctl = bin.join("pg_ctl");
        let mut start = pg_command(&pg_ctl, as_postgres_user);
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
                dir.path().display()
            ))
            .args(["-w", "start"]);
        let started = Started {
            pg_ctl,
            data,
            as_postgres_user,
            _dir: dir,
        };
        run(start, "pg_ctl start")?;
        Ok(TestPostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            started: Some(started),
        })
    }

    /// A server for a test, or `None` with a loud message when there is none on a developer's
    /// machine. Panics when the variable `CI` is set: CI must run the PostgreSQL tests.
    pub fn for_test(test: &str) -> Option<TestPostgres> {
        match TestPostgres::start() {
            Ok(pg) => Some(pg),
            Err(why) if std::env::var_os("CI").is_some() => {
                panic!("{test}: PostgreSQL is required on CI ({URL_VAR} or binaries): {why}")
            }
            Err(why) => {
                eprintln!(
                    "\n!!! SKIPPED {test}: no PostgreSQL ({why}). Set {URL_VAR} or install \
                     PostgreSQL to run it. !!!\n"
                );
                None
            }
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this started the server (rather than using `COSELL_TEST_POSTGRES_URL`).
    pub fn is_throwaway(&self) -> bool {
        self.started.is_some()
    }

    /// A store in a schema of its own (`<prefix>_<random>`), migrated.
    pub async fn store(&self, prefix: &str) -> Result<PostgresStore, StoreError> {
        let prefix: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(24)
            .collect();
        let schema = format!("t_{prefix}_{}", uuid::Uuid::new_v4().simple());
        PostgresStore::connect_in_schema(&self.url, &schema).await
    }
}
