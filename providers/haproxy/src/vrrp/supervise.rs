//! Keeping keepalived running, stopping it, and telling it whether the
//! local HAProxy serves.

use std::time::Duration;

use tokio::process::Child;

use super::{Inner, Keepalived, health_file, signal};

pub(super) async fn stop_child(inner: &mut Inner) {
    let Some(mut child) = inner.child.take() else {
        return;
    };
    if let Some(pid) = child.id() {
        let _ = signal("TERM", pid).await;
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
        tracing::warn!(pid, "keepalived did not stop within 5s; killing it");
    }
    let _ = child.kill().await;
}

/// Starts keepalived again when it exited on its own.
pub(super) async fn supervise(k: std::sync::Weak<Keepalived>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(k) = k.upgrade() else { return };
        let mut inner = k.inner.lock().await;
        let exited = match inner.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status),
            _ => None,
        };
        if let Some(status) = exited {
            tracing::warn!(%status, "keepalived exited; starting it again");
            inner.child = None;
            k.set_state("STOPPED");
            if inner.applied.is_some() {
                match k.spawn().await {
                    Ok(c) => inner.child = Some(c),
                    Err(e) => tracing::warn!(error = %e, "starting keepalived again failed"),
                }
            }
        }
    }
}

/// Asks the local HAProxy once a second whether a worker serves, and tells
/// keepalived through the health file: `1` after two failed answers in a
/// row, `0` after two good ones.
pub(super) async fn watch_haproxy(k: std::sync::Weak<Keepalived>) {
    let mut written = None::<bool>;
    let mut streak = crate::process::Streak::default();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(k) = k.upgrade() else { return };
        let serving = match crate::process::serving(&k.settings.master_socket).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "haproxy check failed");
                false
            }
        };
        if !streak.settled(serving) || written == Some(serving) {
            continue;
        }
        let path = health_file(&k.settings.config_path);
        let value = if serving { "0\n" } else { "1\n" };
        match crate::process::write_atomically(&path, value).await {
            Ok(()) => {
                if written.is_some() || !serving {
                    tracing::info!(serving, "local haproxy health changed; keepalived follows");
                }
                written = Some(serving);
            }
            Err(e) => tracing::warn!(error = %e, "writing the health file failed"),
        }
    }
}
