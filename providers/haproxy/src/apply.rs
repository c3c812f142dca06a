//! Applying changes to HAProxy in bursts: one reload for every change that
//! arrives together, however many reconciles run at once.
//!
//! An `ensure` plans its entry into the desired state, then either becomes
//! the applier (when no reload is being prepared or running: it waits for a
//! short quiet window so that concurrent changes join, then renders,
//! validates and reloads once for all of them) or answers
//! [`ProviderError::pending`]: the controller asks again shortly, and by
//! then the entry is loaded, or an applier has taken it, or the asker
//! becomes the applier itself. A failed burst is retried one entry at a time
//! so that one bad change costs only its own Service. Who applies, and what
//! each change's reconcile is told, is the state machine in `burst`.

use std::collections::BTreeMap;
use std::time::Duration;

use ferrylb_model::{LoadBalancerRef, ProviderError};

use crate::render::{self, Entry};
use crate::{HaproxyProvider, Loaded};

/// How long the desired state must stay unchanged before a burst is applied.
const QUIET: Duration = Duration::from_millis(30);
/// The longest a burst waits for the desired state to settle: a client
/// creating 100 Services one after another takes about a second, and two
/// reloads for them instead of one cost the last ones a second more.
const MAX_WAIT: Duration = Duration::from_millis(1500);
/// At start-up, the first burst waits until every Service that existed
/// unprovisioned (see [`HaproxyProvider::awaiting`]) is planned or its
/// reconcile ended otherwise (refused, failed: see
/// [`ferrylb_model::LoadBalancerProvider::reconciled`]), so that a cold
/// start is one reload rather than one a second, each taking CPU from the
/// planning, however busy the machine is; but no longer than this in all.
const START_MAX_WAIT: Duration = Duration::from_secs(30);
/// The soonest a reconcile whose change is pending asks again.
pub(crate) const POLL: Duration = Duration::from_millis(250);
/// The latest: a reconcile never waits longer than this to ask again.
const POLL_MAX: Duration = Duration::from_secs(2);

impl HaproxyProvider {
    /// When a reconcile whose change is pending should ask again: about
    /// when the burst being applied will be loaded (a reload takes as long
    /// as the last one did). Asking every [`POLL`] instead, a thousand
    /// pending Services would take the reconcile slots from the changes
    /// still to be planned.
    pub(crate) fn poll_after(&self) -> Duration {
        if !self.awaiting.lock().expect("awaiting lock").is_empty() {
            // The start-up burst is still gathering: it says when it is
            // loaded, and asking sooner only takes slots from the planning.
            return POLL_MAX;
        }
        let last = *self.last_load.lock().expect("last_load lock");
        last.clamp(POLL, POLL_MAX)
    }

    /// The burst protocol's state.
    pub(crate) fn bursts(&self) -> std::sync::MutexGuard<'_, crate::burst::Bursts> {
        self.bursts.lock().expect("bursts lock")
    }

    /// Notes that `lb`'s entry changed (a new burst member).
    pub(crate) fn changed(&self, lb: &LoadBalancerRef) {
        self.bursts().change(lb);
    }

    /// The desired state, and the change count it carries at least: a
    /// load outside a burst settles that many.
    pub(crate) fn desired(&self) -> (BTreeMap<LoadBalancerRef, Entry>, u64) {
        // Read before the copy: a change counted later may be in the copy
        // too, never the other way round.
        let through = self.bursts().requested();
        (self.entries.lock().expect("entries lock").clone(), through)
    }

    /// Records that a load outside a burst settled every change counted up
    /// to `through`.
    pub(crate) fn mark_loaded(&self, through: u64) {
        let settled = self.bursts().settled(through);
        self.tell_applied(settled);
    }

    /// Tells the controller how far changes are settled, when that rose.
    fn tell_applied(&self, settled: Option<u64>) {
        if let Some(through) = settled {
            self.applied.send_replace(through);
        }
    }

    /// For `entry` just planned over `previous`: `true` when HAProxy runs it
    /// already, Pending while a burst carries it, `false` when it is still
    /// to be loaded (a change, counted as a burst member, or one an earlier
    /// ask left waiting).
    pub(crate) async fn already_loaded(
        &self,
        lb: &LoadBalancerRef,
        entry: &Entry,
        previous: Option<&Entry>,
    ) -> Result<bool, ProviderError> {
        if previous != Some(entry) {
            self.changed(lb);
            return Ok(false);
        }
        self.is_loaded(lb, Some(entry))
            .await
            .ok_or_else(|| crate::status::pending(self.poll_after()))
    }

    /// Whether HAProxy runs `entry` (unchanged since it was planned) for
    /// `lb`, or with `None` whether it runs nothing for `lb` (taken out of
    /// the desired state). `None` while a burst is being applied and the
    /// last one did not settle `lb`'s change: ask again later.
    ///
    /// Without a burst, HAProxy's state is read under its lock, which the
    /// runtime API, the file flush and the follower hold only briefly; a
    /// burst that begins meanwhile is waited for, and its result read.
    pub(crate) async fn is_loaded(
        &self,
        lb: &LoadBalancerRef,
        entry: Option<&Entry>,
    ) -> Option<bool> {
        {
            let bursts = self.bursts();
            if bursts.applying() {
                return (bursts.state(lb) == crate::burst::State::Applied).then_some(true);
            }
        }
        let loaded = self.loaded.lock().await;
        // Unknown is not loaded: the next burst makes it certain.
        Some(loaded.entries.as_ref().is_some_and(|r| r.get(lb) == entry))
    }

    /// Waits until the desired state stops moving for [`QUIET`] ([`MAX_WAIT`]
    /// at most), and at start-up until every Service that existed
    /// unprovisioned was planned ([`START_MAX_WAIT`] at most).
    async fn settle(&self) {
        let started = tokio::time::Instant::now();
        loop {
            let seen = self.bursts().requested();
            tokio::time::sleep(QUIET).await;
            let now = self.bursts().requested();
            let awaiting = self.awaiting.lock().expect("awaiting lock").len();
            if awaiting > 0 {
                if started.elapsed() < START_MAX_WAIT {
                    continue;
                }
                tracing::info!(
                    unplanned = awaiting,
                    "loading without the Services not planned yet since start-up"
                );
                self.awaiting.lock().expect("awaiting lock").clear();
            }
            if now == seen || started.elapsed() >= MAX_WAIT {
                return;
            }
        }
    }

    /// Becomes the applier when no one is; `Ok(false)` when another one is
    /// (the change is pending), `Ok(true)` once the burst holding `mine` is
    /// loaded.
    pub(crate) async fn apply_or_join(
        &self,
        mine: &LoadBalancerRef,
    ) -> Result<bool, ProviderError> {
        if !self.bursts().begin() {
            return Ok(false);
        }
        // Ends the burst however this returns (or is dropped).
        let burst = BurstEnd(self);
        let mut loaded = self.loaded.lock().await;
        self.settle().await;
        let through = self.bursts().take();
        let desired = self.entries.lock().expect("entries lock").clone();
        if loaded.entries.as_ref() == Some(&desired) {
            burst.finish();
            return Ok(true);
        }
        let Err(burst_error) = self.load(&mut loaded, desired.clone()).await else {
            burst.finish();
            return Ok(true);
        };
        // Something in the burst is refused: put every change back to what
        // HAProxy runs, then try each alone on top of it (a removal is
        // `None`).
        self.bursts().retry_alone();
        let before = loaded.entries.clone().unwrap_or_default();
        let changed: Vec<(LoadBalancerRef, Option<Entry>)> = desired
            .iter()
            .filter(|(k, e)| before.get(*k) != Some(*e))
            .map(|(k, e)| (k.clone(), Some(e.clone())))
            .chain(
                before
                    .keys()
                    .filter(|k| !desired.contains_key(*k))
                    .map(|k| (k.clone(), None)),
            )
            .collect();
        tracing::warn!(error = %burst_error, changes = changed.len(), through, "a burst of changes was refused; applying them one at a time");
        {
            let mut entries = self.entries.lock().expect("entries lock");
            for (k, _) in &changed {
                match before.get(k) {
                    Some(e) => entries.insert(k.clone(), e.clone()),
                    None => entries.remove(k),
                };
            }
        }
        let mut mine_result = Ok(true);
        for (k, next) in changed {
            let mut trial = loaded.entries.clone().unwrap_or_default();
            match &next {
                Some(entry) => trial.insert(k.clone(), entry.clone()),
                None => trial.remove(&k),
            };
            match self.load(&mut loaded, trial).await {
                Ok(()) => {
                    let mut entries = self.entries.lock().expect("entries lock");
                    match next {
                        Some(entry) => entries.insert(k, entry),
                        None => entries.remove(&k),
                    };
                }
                Err(e) if &k == mine => mine_result = Err(e),
                Err(e) => self.bursts().refuse(&k, e, before.get(&k).cloned()),
            }
        }
        burst.finish();
        mine_result
    }

    /// Renders `desired`, validates and installs it, reloads HAProxy, and
    /// records it as loaded; then puts its VIPs on the interface.
    pub(crate) async fn load(
        &self,
        loaded: &mut Loaded,
        desired: BTreeMap<LoadBalancerRef, Entry>,
    ) -> Result<(), ProviderError> {
        let started = std::time::Instant::now();
        let entries: Vec<Entry> = desired.values().cloned().collect();
        let text = render::render(&self.global(), &entries);
        let rendered = started.elapsed();
        // Entries can differ in what the configuration does not show (a
        // follower's entry and the leader's for the same Service, when one
        // takes over from the other): the same text is no reload.
        let sha = sha256_hex(&text);
        if loaded.served_sha.as_deref() != Some(sha.as_str()) {
            let checking = std::time::Instant::now();
            match changed_since_checked(loaded, &desired) {
                Some(changed) => {
                    let part = render::render(&self.global(), &changed);
                    self.process.install_changed(&text, &part).await?;
                }
                None => self.process.install(&text).await?,
            }
            let checked = checking.elapsed();
            self.process.reload().await?;
            let took = checking.elapsed();
            *self.last_load.lock().expect("last_load lock") = took;
            tracing::debug!(
                services = desired.len(),
                bytes = text.len(),
                render_ms = rendered.as_millis(),
                check_ms = checked.as_millis(),
                reload_ms = (took - checked).as_millis(),
                "haproxy reloaded"
            );
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            loaded.served_sha = Some(sha);
            loaded.unchecked.clear();
            loaded.file_stale = false;
            loaded.node_checks =
                crate::runtime::CheckSlots::loaded(&desired.values().collect::<Vec<_>>());
            crate::drain::after_reload(
                &mut self.drains.lock().expect("drains lock"),
                loaded.entries.as_ref(),
                &desired,
                std::time::Instant::now(),
                |e| self.drain_timeout(e),
            );
        }
        let vips: std::collections::BTreeSet<_> = desired
            .values()
            .flat_map(|e| e.vips.iter().copied())
            .collect();
        loaded.entries = Some(desired);
        loaded.version += 1;
        // HAProxy listens on every VIP now: only now may this host answer
        // for them. A failure here is retried by the Service's reconcile.
        if let Some(k) = &self.keepalived {
            if let Err(e) = k.set_vips(vips).await {
                tracing::warn!(error = %e, "handing the VIPs to keepalived failed");
            }
            return Ok(());
        }
        if let Some(b) = &self.bird {
            if let Err(e) = b.set_vips(vips).await {
                tracing::warn!(error = %e, "announcing the VIPs over BGP failed");
            }
            return Ok(());
        }
        for ip in vips {
            if let Err(e) = self.hold_vip(ip).await {
                tracing::warn!(%ip, error = %e, "putting a VIP on the interface failed");
            }
        }
        Ok(())
    }

    /// Makes this host answer for `ip` (HAProxy listens on it): VRRP
    /// announces it from whichever replica is master, BGP from every
    /// replica; otherwise the leader
    /// puts it on the interface and announces it when it was not there.
    pub(crate) async fn hold_vip(&self, ip: std::net::IpAddr) -> Result<(), ProviderError> {
        if let Some(k) = &self.keepalived {
            return k.include(ip).await;
        }
        if let Some(b) = &self.bird {
            return b.include(ip).await;
        }
        if !self.holding.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        if self.vips.add(ip).await? {
            self.vips.announce(ip);
        }
        Ok(())
    }
}

/// Ends the burst its applier runs: [`BurstEnd::finish`] once it is
/// loaded (or refused), or, dropped before that (the reconcile went away
/// mid-burst), abandons it so that what it carried is read afresh.
struct BurstEnd<'a>(&'a HaproxyProvider);

impl BurstEnd<'_> {
    fn finish(self) {
        let settled = self.0.bursts().finish();
        self.0.tell_applied(settled);
        std::mem::forget(self);
    }
}

impl Drop for BurstEnd<'_> {
    fn drop(&mut self) {
        self.0.bursts().abandon();
    }
}

/// The entries of `desired` that no configuration HAProxy was given held
/// as they are (new, changed, or changed through the runtime API since);
/// `None` when what HAProxy runs is not known, and everything is checked.
fn changed_since_checked(
    loaded: &Loaded,
    desired: &BTreeMap<LoadBalancerRef, Entry>,
) -> Option<Vec<Entry>> {
    let running = loaded.entries.as_ref()?;
    Some(
        desired
            .iter()
            .filter(|(k, e)| running.get(*k) != Some(*e) || loaded.unchecked.contains(*k))
            .map(|(_, e)| e.clone())
            .collect(),
    )
}

pub(crate) fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use ferrylb_model::conformance::sample_spec;

    use super::*;
    use crate::options::Options;

    fn entry(name: &str, node_port: u16) -> (LoadBalancerRef, Entry) {
        let spec = sample_spec("shop", name, node_port, Vec::new());
        let options = Options::parse(&spec.annotations).unwrap();
        let lb = spec.lb.clone();
        let vips = vec!["127.0.0.100".parse().unwrap()];
        (
            lb,
            Entry {
                spec,
                vips,
                options,
            },
        )
    }

    fn names(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.spec.lb.name.as_str()).collect()
    }

    #[test]
    fn only_what_no_loaded_configuration_held_is_checked_again() {
        let (a, a_entry) = entry("a", 30001);
        let (b, b_entry) = entry("b", 30002);
        let (c, c_entry) = entry("c", 30003);
        let mut loaded = Loaded::default();
        let desired: BTreeMap<_, _> = [(a.clone(), a_entry.clone()), (b.clone(), b_entry)].into();
        assert!(
            changed_since_checked(&loaded, &desired).is_none(),
            "what HAProxy runs is unknown: check everything"
        );

        loaded.entries = Some(desired.clone());
        let mut next = desired.clone();
        next.insert(b.clone(), entry("b", 30012).1);
        next.insert(c.clone(), c_entry);
        next.remove(&a);
        let changed = changed_since_checked(&loaded, &next).unwrap();
        assert_eq!(names(&changed), [&b.name, &c.name]);

        // A change made through the runtime API was never checked.
        next.insert(a.clone(), a_entry);
        loaded.unchecked.insert(a.clone());
        let changed = changed_since_checked(&loaded, &next).unwrap();
        assert_eq!(changed.len(), 3);
        assert!(names(&changed).contains(&a.name.as_str()));
    }
}
