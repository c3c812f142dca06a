//! Target-only changes through the runtime API, without a reload, and the
//! file written once they settle.

use std::sync::Arc;
use std::time::Duration;

use ferrylb_model::ProviderError;

use crate::render::{Entry, GlobalSettings};
use crate::{HaproxyProvider, Loaded, apply, process, render, runtime};

impl HaproxyProvider {
    /// Turns `old` (what HAProxy runs) into `new`, which differs in its
    /// targets alone, through the runtime API, and records it as running.
    /// `Ok(false)`: it needs a reload (no spare node check left). On an
    /// error HAProxy's state is unknown: it is marked so, and the next load
    /// makes it certain.
    pub(crate) async fn apply_runtime(
        &self,
        loaded: &mut Loaded,
        old: &Entry,
        new: &Entry,
    ) -> Result<bool, ProviderError> {
        let checks = self
            .settings
            .node_check_port
            .map(|port| runtime::NodeChecks {
                port,
                slots: &loaded.node_checks,
            });
        let Some(plan) = runtime::commands(old, new, checks) else {
            return Ok(false);
        };
        for batch in plan.checks.iter().chain(&plan.batches) {
            let mut result = runtime::run(&self.settings.admin_socket, batch).await;
            if let Err(e) = &result
                && e.message.contains(runtime::ALREADY_EXISTS)
            {
                // A server whose removal waited for its connections to
                // drain is still there, in maintenance: readdressed and
                // enabled instead.
                result = runtime::run(&self.settings.admin_socket, &runtime::readding(batch)).await;
            }
            if let Err(e) = result {
                loaded.entries = None;
                loaded.served_sha = None;
                loaded.version += 1;
                return Err(e);
            }
        }
        self.record_drains(loaded, new, plan.drains);
        if let Some(slots) = plan.slots {
            loaded.node_checks = slots;
        }
        if let Some(running) = loaded.entries.as_mut() {
            running.insert(new.spec.lb.clone(), new.clone());
        }
        loaded.unchecked.insert(new.spec.lb.clone());
        loaded.file_stale = true;
        loaded.version += 1;
        // HAProxy runs what no file says yet; the flush names it again.
        loaded.served_sha = None;
        Ok(true)
    }

    /// Has the file written once runtime API changes pause.
    pub(crate) fn flush_soon(&self) {
        self.flusher.get_or_init(|| {
            tokio::spawn(flush_loop(
                self.loaded.clone(),
                self.flush.clone(),
                self.global(),
                self.settings.process.config_path.clone(),
            ))
        });
        self.flush.notify_one();
    }
}

/// Whether `new` differs from `old` in what the runtime API can change
/// alone: the targets.
pub(crate) fn runtime_only(old: &Entry, new: &Entry) -> bool {
    old.vips == new.vips
        && old.options == new.options
        && old.spec.differs_only_in_targets(&new.spec)
}

/// How long runtime API changes must pause before the file is written.
const FLUSH_QUIET: Duration = Duration::from_millis(200);
/// The longest the file lags behind a steady stream of runtime changes.
const FLUSH_MAX_WAIT: Duration = Duration::from_secs(2);

/// Writes what HAProxy runs to the file once a burst of runtime API changes
/// settles: one write per burst instead of one per Service. The rendering
/// happens outside the lock, so runtime updates are not held up by it; the
/// file is written only if nothing changed meanwhile (else the next round
/// writes it).
pub(crate) async fn flush_loop(
    loaded: Arc<tokio::sync::Mutex<Loaded>>,
    notify: Arc<tokio::sync::Notify>,
    global: GlobalSettings,
    config_path: std::path::PathBuf,
) {
    loop {
        notify.notified().await;
        let started = tokio::time::Instant::now();
        loop {
            let seen = loaded.lock().await.version;
            tokio::time::sleep(FLUSH_QUIET).await;
            if loaded.lock().await.version == seen || started.elapsed() >= FLUSH_MAX_WAIT {
                break;
            }
        }
        let (entries, version) = {
            let l = loaded.lock().await;
            if !l.file_stale {
                continue;
            }
            let entries: Vec<Entry> = l.entries.iter().flat_map(|e| e.values().cloned()).collect();
            (entries, l.version)
        };
        let text = render::render(&global, &entries);
        drop(entries);
        let mut l = loaded.lock().await;
        if l.version != version {
            // Changed while rendering: written on the next round.
            notify.notify_one();
            continue;
        }
        match process::write_atomically(&config_path, &text).await {
            Ok(()) => {
                l.file_stale = false;
                l.served_sha = Some(apply::sha256_hex(&text));
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing runtime API changes to the configuration file failed")
            }
        }
    }
}
