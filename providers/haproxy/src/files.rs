//! Configuration files written safely, for HAProxy, keepalived and BIRD
//! alike: atomic writes (a temporary file and a rename), and checked
//! installs (the program's own test mode judges the file before it
//! replaces the live one; a rejected file is kept beside it).

use std::path::{Path, PathBuf};

use ferrylb_model::ProviderError;
use tokio::process::Command;

use crate::process::unavailable;

/// Writes `text` to `path` through a temporary file and a rename.
pub async fn write_atomically(path: &Path, text: &str) -> Result<(), ProviderError> {
    let tmp = sibling(path, "runtime");
    tokio::fs::write(&tmp, text)
        .await
        .map_err(|e| unavailable(format!("writing {}: {e}", tmp.display())))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| unavailable(format!("installing {}: {e}", path.display())))
}

/// A program that checks a configuration file in a test mode of its own
/// (`haproxy -c`, `keepalived -t`), and how its answers are reported.
pub(crate) struct Checker<'a> {
    pub program: &'a Path,
    pub flag: &'a str,
    /// The option naming the file (`-f`; BIRD's `-c`).
    pub file_flag: &'a str,
    pub name: &'a str,
    /// The reason a rejected configuration is reported under.
    pub rejected_reason: &'static str,
    /// Makes an I/O failure an error.
    pub io_error: fn(String) -> ProviderError,
    /// What the program said, bounded, from its stdout and stderr.
    pub said: fn(&[u8], &[u8]) -> String,
}

/// Writes `text` beside `path`, has the checker judge it (exit code 0 is
/// clean), and renames it into place atomically. A rejected file is kept as
/// `<path>.rejected` for inspection; the live one stays untouched.
pub(crate) async fn install_checked(
    c: &Checker<'_>,
    path: &Path,
    text: &str,
) -> Result<(), ProviderError> {
    let checked = check(c, path, text).await?;
    tokio::fs::rename(&checked, path)
        .await
        .map_err(|e| (c.io_error)(format!("installing {}: {e}", path.display())))
}

/// Writes `text` beside `path` and has the checker judge it (exit code 0
/// is clean): the checked file's path, or an error saying what the checker
/// said, the file kept as `<path>.rejected` for inspection.
pub(crate) async fn check(
    c: &Checker<'_>,
    path: &Path,
    text: &str,
) -> Result<PathBuf, ProviderError> {
    check_as(c, path, "new", text).await
}

/// [`check`], written to `<path>.<suffix>`: checks that may run at the same
/// time use different files.
pub(crate) async fn check_as(
    c: &Checker<'_>,
    path: &Path,
    suffix: &str,
    text: &str,
) -> Result<PathBuf, ProviderError> {
    let tmp = sibling(path, suffix);
    tokio::fs::write(&tmp, text)
        .await
        .map_err(|e| (c.io_error)(format!("writing {}: {e}", tmp.display())))?;
    let out = Command::new(c.program)
        .arg(c.flag)
        .arg(c.file_flag)
        .arg(&tmp)
        .output()
        .await
        .map_err(|e| (c.io_error)(format!("running {} {}: {e}", c.program.display(), c.flag)))?;
    if !out.status.success() {
        let rejected = sibling(path, "rejected");
        let _ = tokio::fs::rename(&tmp, &rejected).await;
        return Err(ProviderError::transient(
            c.rejected_reason,
            format!(
                "{} rejected the rendered configuration (kept as {}): {}",
                c.name,
                rejected.display(),
                (c.said)(&out.stdout, &out.stderr)
            ),
        ));
    }
    Ok(tmp)
}

pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}
