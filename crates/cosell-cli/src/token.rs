//! The refresh-token file: where `cosell login` puts the first app+user refresh token and the
//! service puts every rotated one, so it keeps running for months with no hand-off.
//!
//! Written atomically (a temporary file renamed over the old one) with mode `0600` on Unix: a
//! refresh token is as good as the user's sign-in for the referrals API.

use std::io::{self, Write};
use std::path::Path;

use secrecy::SecretString;

/// The token in `path`; `None` when the file does not exist or is empty.
pub fn read(path: &Path) -> io::Result<Option<SecretString>> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => Ok(Some(SecretString::from(text.trim().to_string()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the token in `path` (creating its directory `0700` and the file `0600`).
pub fn write(path: &Path, token: &str) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir
        && !dir.exists()
    {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(token.as_bytes())?;
        file.write_all(b"\n")?;
        // Durable before it replaces the old token: a crash leaves one or the other.
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_written_token_reads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("state/refresh-token");
        assert!(read(&path).unwrap_or_else(|e| panic!("{e}")).is_none());
        write(&path, "rt-1").unwrap_or_else(|e| panic!("{e}"));
        write(&path, "rt-2").unwrap_or_else(|e| panic!("{e}"));
        let token = read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(token.as_ref().map(|t| t.expose_secret()), Some("rt-2"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| {
                std::fs::metadata(p)
                    .map(|m| m.permissions().mode() & 0o777)
                    .unwrap_or_default()
            };
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(&dir.path().join("state")), 0o700);
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("state"))
                .map(|d| d.count())
                .unwrap_or(0),
            1
        );
    }
}
