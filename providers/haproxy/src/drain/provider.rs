//! The provider's side of draining: recording drains as the runtime API
//! and reloads start them, and moving them on (see the parent module).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::{Drain, Draining, Finished, ServerKey, Step, parse_sessions, stat_commands, step};
use crate::render::Entry;
use crate::{HaproxyProvider, Loaded, process, runtime};

impl HaproxyProvider {
    /// Records the servers a runtime change put in `drain` for `entry`, and
    /// ends the drains of servers `entry` has again (its node came back).
    pub(crate) fn record_drains(
        &self,
        _loaded: &mut Loaded,
        entry: &Entry,
        drains: Vec<(ServerKey, String)>,
    ) {
        let mut all = self.drains.lock().expect("drains lock");
        if !all.is_empty() {
            let back: BTreeSet<&str> = entry.spec.targets.iter().map(|t| t.node.as_str()).collect();
            all.retain(|_, d| d.lb != entry.spec.lb || !back.contains(d.node.as_str()));
        }
        let now = Instant::now();
        for (key, node) in drains {
            tracing::info!(service = %entry.spec.lb.key, node, backend = key.0, "draining a leaving node's server");
            all.entry(key).or_insert_with(|| {
                Drain::new(entry.spec.lb.clone(), node, now, self.drain_timeout(entry))
            });
        }
    }

    /// The drain timeout of `entry`'s servers.
    pub(crate) fn drain_timeout(&self, entry: &Entry) -> std::time::Duration {
        entry
            .options
            .drain_timeout
            .unwrap_or(self.settings.drain_timeout)
    }

    /// Moves every drain on: asks HAProxy what its draining servers still
    /// carry (in the current worker and, for servers a reload took out, in
    /// the old workers), removes those that are empty or past their timeout
    /// (cutting what is left), and returns the drains that finished, and
    /// what drains on, by node. Call it about once a second.
    pub async fn advance_drains(&self) -> (Vec<Finished>, BTreeMap<String, Draining>) {
        let drains = self.drains.lock().expect("drains lock").clone();
        if drains.is_empty() {
            return Default::default();
        }
        let live: BTreeSet<&str> = drains
            .iter()
            .filter(|(_, d)| !d.reloaded)
            .map(|((b, _), _)| b.as_str())
            .collect();
        let (sessions, answered) = match self.sessions_in(live, None).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "asking HAProxy about draining servers failed");
                return (Vec::new(), by_node(&drains, &BTreeMap::new(), None));
            }
        };
        let in_old_workers: BTreeSet<&str> = drains
            .iter()
            .filter(|(k, d)| d.reloaded || !sessions.contains_key(*k))
            .map(|((b, _), _)| b.as_str())
            .collect();
        let old = self.sessions_in_old_workers(in_old_workers).await;
        let now = Instant::now();
        let mut finished = Vec::new();
        for (key, d) in &drains {
            if !d.reloaded && !answered.contains(&key.0) {
                // Its backend did not answer: nothing is known of it.
                continue;
            }
            let in_old = old.as_ref().map(|o| o.get(key).copied().unwrap_or(0));
            match step(d, sessions.get(key).copied(), in_old, now) {
                Step::Wait => {}
                Step::Remove { cut } => {
                    if let Some(f) = self.remove_drained(key, d, cut).await {
                        finished.push(f);
                    }
                }
                Step::Forget => {
                    let _loaded = self.loaded.lock().await;
                    let mut all = self.drains.lock().expect("drains lock");
                    if all.get(key).is_some_and(|now| now.started == d.started) {
                        all.remove(key);
                        finished.push(finish(key, d));
                    }
                }
            }
        }
        for f in &finished {
            tracing::info!(service = %f.lb.key, node = f.node, backend = f.backend, took_ms = f.took.as_millis(), outcome = ?f.outcome, "a leaving node's server finished draining");
        }
        let left = self.drains.lock().expect("drains lock").clone();
        (finished, by_node(&left, &sessions, old.as_ref()))
    }

    /// The sessions of `backends`' servers, and the backends that answered:
    /// in the current worker (`old_worker` `None`, through the runtime API)
    /// or in the old worker of that pid (through the master CLI).
    async fn sessions_in(
        &self,
        backends: BTreeSet<&str>,
        old_worker: Option<u32>,
    ) -> Result<(BTreeMap<ServerKey, u64>, BTreeSet<String>), String> {
        let prefix = old_worker
            .map(|pid| format!("@!{pid} "))
            .unwrap_or_default();
        let mut sessions = BTreeMap::new();
        let mut answered = BTreeSet::new();
        for line in stat_commands(backends, &prefix, runtime::LINE_MAX) {
            let out = match old_worker {
                None => runtime::ask(&self.settings.admin_socket, &line).await,
                Some(_) => process::master_batch(&self.settings.process.master_socket, &line)
                    .await
                    .map_err(|e| e.to_string()),
            }?;
            let (s, seen) = parse_sessions(&out);
            sessions.extend(s);
            answered.extend(seen);
        }
        Ok((sessions, answered))
    }

    /// The sessions through `backends`' servers summed over every old
    /// worker (none when no old worker runs); `None` when unknown.
    async fn sessions_in_old_workers(
        &self,
        backends: BTreeSet<&str>,
    ) -> Option<BTreeMap<ServerKey, u64>> {
        if backends.is_empty() {
            return Some(BTreeMap::new());
        }
        let master = &self.settings.process.master_socket;
        let pids = match process::master_command(master, "show proc").await {
            Ok(out) => process::old_workers(&out),
            Err(e) => {
                tracing::debug!(error = %e, "asking HAProxy's master for old workers failed");
                return None;
            }
        };
        let mut total: BTreeMap<ServerKey, u64> = BTreeMap::new();
        for pid in pids {
            // An old worker without the backend carries nothing through it.
            match self.sessions_in(backends.clone(), Some(pid)).await {
                Ok((s, _)) => {
                    for (k, n) in s {
                        *total.entry(k).or_default() += n;
                    }
                }
                Err(e) => {
                    tracing::debug!(pid, error = %e, "asking an old HAProxy worker about draining servers failed");
                    return None;
                }
            }
        }
        Some(total)
    }

    /// Deletes a drained server (first closing `cut` sessions still open),
    /// unless its drain ended meanwhile; `Some` once it is gone.
    async fn remove_drained(&self, key: &ServerKey, d: &Drain, cut: u64) -> Option<Finished> {
        // Runtime changes wait meanwhile: a node coming back is not
        // re-added while its old server is being deleted.
        let _loaded = self.loaded.lock().await;
        {
            let mut all = self.drains.lock().expect("drains lock");
            let current = all.get_mut(key)?;
            if current.started != d.started {
                return None;
            }
            current.cut = current.cut.max(cut);
        }
        let target = format!("{}/{}", key.0, key.1);
        if cut > 0 {
            tracing::warn!(service = %d.lb.key, node = d.node, server = target, sessions = cut, "drain timeout passed: closing the sessions left");
            if let Err(e) = runtime::run(
                &self.settings.admin_socket,
                &format!("shutdown sessions server {target}"),
            )
            .await
            {
                tracing::debug!(error = %e, "closing a drained server's sessions failed");
            }
        }
        let batch = format!("set server {target} state maint; del server {target}");
        match runtime::ask(&self.settings.admin_socket, &batch).await {
            Ok(out) if runtime::all_succeeded(&out) || out.contains(runtime::NO_SUCH_SERVER) => {
                let d = self.drains.lock().expect("drains lock").remove(key)?;
                Some(finish(key, &d))
            }
            // Refused while a connection is still attached: the next tick
            // tries again.
            Ok(out) => {
                tracing::debug!(
                    server = target,
                    answer = out.trim(),
                    "deleting a drained server refused"
                );
                None
            }
            Err(e) => {
                tracing::debug!(server = target, error = %e, "deleting a drained server failed");
                None
            }
        }
    }
}

fn finish(key: &ServerKey, d: &Drain) -> Finished {
    Finished {
        lb: d.lb.clone(),
        node: d.node.clone(),
        backend: key.0.clone(),
        took: d.started.elapsed(),
        outcome: d.outcome(),
    }
}

/// The drains by node, with the sessions known through their servers: in
/// the current worker, or (for a server a reload took out) in old workers.
fn by_node(
    drains: &BTreeMap<ServerKey, Drain>,
    sessions: &BTreeMap<ServerKey, u64>,
    old: Option<&BTreeMap<ServerKey, u64>>,
) -> BTreeMap<String, Draining> {
    let mut out: BTreeMap<String, Draining> = BTreeMap::new();
    for (key, d) in drains {
        let n = out.entry(d.node.clone()).or_default();
        n.servers += 1;
        n.sessions += match sessions.get(key) {
            Some(s) if !d.reloaded => *s,
            _ => old.and_then(|o| o.get(key)).copied().unwrap_or(0),
        };
    }
    out
}
