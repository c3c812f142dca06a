//! Keeping keepalived running, stopping it, and telling it whether the
//! local HAProxy serves.

use std::process::Stdio;
use std::time::Duration;

use ferrylb_model::ProviderError;
use tokio::process::{Child, Command};

use super::config::INSTANCE;
use super::{
    Inner, Keepalived, failed, health_file, is_keepalived, notify, pid_files, relay, signal,
};

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

impl Keepalived {
    pub(super) async fn spawn(&self) -> Result<Child, ProviderError> {
        let health = health_file(&self.settings.config_path);
        if !tokio::fs::try_exists(&health).await.unwrap_or(false) {
            // Serving until the first answer says otherwise: HAProxy loaded
            // these VIPs before keepalived was asked to announce them.
            tokio::fs::write(&health, "0\n")
                .await
                .map_err(|e| failed(format!("writing {}: {e}", health.display())))?;
        }
        let fifo = notify::fifo_path(&self.settings.config_path);
        if self.listener.get().is_none() {
            notify::create(&fifo)
                .map_err(|e| failed(format!("creating the FIFO {}: {e}", fifo.display())))?;
            let status = self.status.clone();
            self.listener
                .get_or_init(|| tokio::spawn(notify::listen(fifo, INSTANCE, status)));
        }
        let (pid, vrrp_pid) = pid_files(&self.settings.config_path);
        // A keepalived an earlier FerryLB started here (killed before it
        // could stop it) goes first: two would fight over the VIPs. Then
        // its pid files, which would make the new one refuse to start.
        for f in [&pid, &vrrp_pid] {
            if let Some(old) = tokio::fs::read_to_string(f)
                .await
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
                && is_keepalived(old)
            {
                tracing::info!(pid = old, "stopping the keepalived an earlier run started");
                let _ = signal("TERM", old).await;
            }
            let _ = tokio::fs::remove_file(f).await;
        }
        let mut child = Command::new(&self.settings.binary)
            .args(["-n", "-l", "-D", "-G", "-P"])
            .arg("-f")
            .arg(&self.settings.config_path)
            .arg("-p")
            .arg(&pid)
            .arg("-r")
            .arg(&vrrp_pid)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("starting {}: {e}", self.settings.binary.display())))?;
        tracing::info!(pid = child.id(), config = %self.settings.config_path.display(), "started keepalived");
        if let Some(out) = child.stdout.take() {
            tokio::spawn(relay(out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(relay(err));
        }
        Ok(child)
    }
}
