//! Keeping BIRD running and following the local HAProxy's health.

use std::time::Duration;

use tokio::process::Child;

use super::Bird;

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
