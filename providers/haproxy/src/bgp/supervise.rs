//! Keeping BIRD running and following the local HAProxy's health.

use std::process::Stdio;
use std::time::Duration;

use ferrylb_model::ProviderError;
use tokio::process::{Child, Command};

use super::{Bird, control_socket, failed, is_bird};
use crate::process::sibling;

/// Starts BIRD again when it exited on its own.
pub(super) async fn supervise(b: std::sync::Weak<Bird>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(b) = b.upgrade() else { return };
        let mut inner = b.inner.lock().await;
        let exited = match inner.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status),
            _ => None,
        };
        if let Some(status) = exited {
            tracing::warn!(%status, "BIRD exited; starting it again");
            inner.child = None;
            if inner.applied.is_some() && !inner.stopped {
                match b.spawn().await {
                    Ok(c) => inner.child = Some(c),
                    Err(e) => tracing::warn!(error = %e, "starting BIRD again failed"),
                }
            }
        }
    }
}

/// Asks the local HAProxy once a second whether a worker serves; two
/// answers in a row that differ from what BIRD announces change it.
pub(super) async fn watch_haproxy(b: std::sync::Weak<Bird>) {
    let mut streak = crate::process::Streak::default();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(b) = b.upgrade() else { return };
        let Some(socket) = &b.settings.master_socket else {
            return;
        };
        let serving = crate::process::serving(socket)
            .await
            .inspect_err(|e| tracing::debug!(error = %e, "haproxy check failed"))
            .is_ok();
        if streak.settled(serving)
            && let Err(e) = b.set_serving(serving).await
        {
            tracing::warn!(error = %e, "following the local haproxy's health failed");
        }
    }
}

/// Passes BIRD's log to FerryLB's: session changes at info.
pub(super) async fn relay(stream: impl tokio::io::AsyncRead + Unpin) {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains("Established") || line.contains("changed state") || line.contains("BFD") {
            tracing::info!(target: "bird", "{line}");
        } else {
            tracing::debug!(target: "bird", "{line}");
        }
    }
}

impl Bird {
    pub(super) async fn spawn(&self) -> Result<Child, ProviderError> {
        self.clear_pause().await;
        let pid = sibling(&self.settings.config_path, "pid");
        // A BIRD an earlier FerryLB started here (killed before it could
        // stop it) goes first: it holds the sessions and the socket.
        if let Some(old) = tokio::fs::read_to_string(&pid)
            .await
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            && is_bird(old)
        {
            tracing::info!(pid = old, "stopping the BIRD an earlier run started");
            let _ = crate::process::signal("TERM", old);
            for _ in 0..50 {
                if !is_bird(old) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut child = Command::new(&self.settings.bird)
            .arg("-f")
            .arg("-c")
            .arg(&self.settings.config_path)
            .arg("-s")
            .arg(control_socket(&self.settings))
            .arg("-P")
            .arg(&pid)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("starting {}: {e}", self.settings.bird.display())))?;
        tracing::info!(pid = child.id(), config = %self.settings.config_path.display(), "started BIRD");
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            tokio::spawn(relay(stream));
        }
        // Until its control socket answers, `birdc configure` would fail.
        for _ in 0..50 {
            if self
                .birdc(&["show", "status"])
                .await
                .is_ok_and(|s| s.contains("Daemon is up"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(child)
    }
}
