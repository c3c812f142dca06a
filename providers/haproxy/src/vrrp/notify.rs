//! keepalived's state from its documented notification interface: a FIFO
//! (`notify_fifo` in `global_defs`) to which it writes one line per
//! transition, `INSTANCE "<name>" <STATE> <priority>`. Its log text is for
//! people and may change wording; this line is its interface.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{VrrpStatus, record};
use crate::process::sibling;

/// The FIFO keepalived writes transitions to, beside its configuration.
#[must_use]
pub fn fifo_path(config: &Path) -> PathBuf {
    sibling(config, "notify.fifo")
}

/// Makes `path` a FIFO only its owner may use (whatever was there before
/// is replaced).
///
/// # Errors
/// When it cannot be created.
pub(super) fn create(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()) => return Ok(()),
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .map_err(std::io::Error::from)
}

/// The state one notification line reports for instance `instance`:
/// `MASTER`, `BACKUP`, `FAULT`, or `STOPPED` (keepalived's `STOP`).
#[must_use]
pub fn parse<'a>(line: &'a str, instance: &str) -> Option<&'a str> {
    let mut words = line.split_whitespace();
    if words.next()? != "INSTANCE" {
        return None;
    }
    if words.next()? != format!("\"{instance}\"") {
        return None;
    }
    match words.next()? {
        s @ ("MASTER" | "BACKUP" | "FAULT") => Some(s),
        "STOP" => Some("STOPPED"),
        _ => None,
    }
}

/// Reads the FIFO for as long as the process runs, recording each state
/// keepalived reports. Opened for reading and writing, so a keepalived
/// that exits (and closes its end) never ends the stream.
pub(super) async fn listen(
    path: PathBuf,
    instance: &'static str,
    status: Arc<std::sync::Mutex<VrrpStatus>>,
) {
    use tokio::io::AsyncBufReadExt as _;
    let rx = match tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
    {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(fifo = %path.display(), error = %e, "cannot read keepalived's notifications; the VRRP state stays unknown");
            return;
        }
    };
    let mut lines = tokio::io::BufReader::new(rx).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match parse(&line, instance) {
            Some(state) => {
                tracing::info!(target: "keepalived", state, "VRRP instance entered {state}");
                record(&status, state);
            }
            None => tracing::debug!(target: "keepalived", "notification: {line}"),
        }
    }
}
