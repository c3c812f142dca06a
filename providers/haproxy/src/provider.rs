//! The provider contract, delegating to the planning, loading and
//! runtime-API paths.

use std::time::Duration;

use async_trait::async_trait;
use ferrylb_model::{
    LoadBalancerProvider, LoadBalancerRef, LoadBalancerSpec, LoadBalancerStatus, Protocol,
    ProviderError, Warning, reason,
};

use crate::options::Options;
use crate::status::{pending, status_of};
use crate::targets::Applied;
use crate::{HaproxyProvider, process};

#[async_trait]
impl LoadBalancerProvider for HaproxyProvider {
    fn name(&self) -> &str {
        "haproxy"
    }

    /// Ready when the haproxy binary runs (every configuration is checked
    /// with it, `haproxy -c`) and, once a configuration was loaded, HAProxy
    /// runs with a current worker: a replica whose HAProxy is down serves
    /// nothing, whatever it loaded before.
    async fn check(&self) -> Result<(), ProviderError> {
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            process::serving(&self.settings.process.master_socket)
                .await
                .map_err(|e| {
                    ProviderError::transient(
                        reason::HAPROXY_UNAVAILABLE,
                        format!("HAProxy is not serving: {e}"),
                    )
                })?;
        }
        let binary = &self.settings.process.binary;
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::process::Command::new(binary).arg("-v").output(),
        )
        .await;
        match out {
            Ok(Ok(o)) if o.status.success() => Ok(()),
            Ok(Ok(o)) => Err(ProviderError::transient(
                reason::HAPROXY_UNAVAILABLE,
                format!("{} -v failed: {}", binary.display(), o.status),
            )),
            Ok(Err(e)) => Err(ProviderError::transient(
                reason::HAPROXY_UNAVAILABLE,
                format!(
                    "cannot run {} ({e}); set --haproxy-binary",
                    binary.display()
                ),
            )),
            Err(_) => Err(ProviderError::transient(
                reason::HAPROXY_UNAVAILABLE,
                format!("{} -v did not answer within 5s", binary.display()),
            )),
        }
    }

    fn applied(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.applied.subscribe())
    }

    /// The `ferrylb.io/haproxy-*` annotations. A Service without a TCP
    /// port is left to [`ensure`](Self::ensure), which gives its VIP back.
    fn validate(&self, spec: &LoadBalancerSpec) -> Result<(), ProviderError> {
        Options::parse(&spec.annotations)
            .map(drop)
            .inspect_err(|_| {
                // Refused before `ensure`: not worth waiting for.
                self.planned(&spec.lb);
            })
    }

    fn starting(&self, unprovisioned: &[LoadBalancerRef]) {
        if !unprovisioned.is_empty() {
            tracing::info!(
                services = unprovisioned.len(),
                "the first load waits until every Service not yet provisioned is planned"
            );
        }
        self.awaiting
            .lock()
            .expect("awaiting lock")
            .extend(unprovisioned.iter().cloned());
    }

    fn reconciled(&self, lb: &LoadBalancerRef) {
        self.planned(lb);
    }

    async fn get(&self, lb: &LoadBalancerRef) -> Result<Option<LoadBalancerStatus>, ProviderError> {
        Ok(self
            .entries
            .lock()
            .expect("entries lock")
            .get(lb)
            .map(status_of))
    }

    async fn ensure(&self, spec: &LoadBalancerSpec) -> Result<LoadBalancerStatus, ProviderError> {
        if !spec.listeners.iter().any(|l| l.protocol == Protocol::Tcp) {
            // Nothing to serve: hold no address (a Service that had TCP
            // ports before gives its VIP back) and say why.
            self.ensure_deleted(&spec.lb).await?;
            return Err(ProviderError::permanent(
                reason::UNSUPPORTED_PROTOCOL,
                "HAProxy balances TCP only and none of this Service's ports is TCP; \
                 use another loadBalancerClass for UDP or SCTP",
            ));
        }
        if let Some(e) = self.take_refusal(&spec.lb) {
            return Err(e);
        }
        let planned = self.plan(spec);
        self.planned(&spec.lb);
        let (entry, previous) = planned?;
        if self
            .already_loaded(&spec.lb, &entry, previous.as_ref())
            .await?
        {
            for &ip in &entry.vips {
                self.hold_vip(ip).await?;
            }
            self.release_overtaken(&entry).await?;
            return self.confirm_served(&entry).await;
        }
        // A VIP that moves is applied at once, so that the old one can be
        // taken off the interface after it.
        let moved = previous.as_ref().is_some_and(|p| p.vips != entry.vips);
        let result = async {
            self.check_binds(&entry, previous.as_ref(), &mut None)
                .await?;
            if moved {
                self.sync().await.map(|()| true)
            } else {
                self.apply_or_join(&spec.lb).await
            }
        }
        .await;
        match result {
            Err(e) => {
                self.roll_back(&spec.lb, previous);
                return Err(e);
            }
            Ok(false) => return Err(pending(self.poll_after())),
            Ok(true) => {}
        }
        // The load put the VIP on the interface; this only retries when
        // that failed.
        for &ip in &entry.vips {
            self.hold_vip(ip).await?;
        }
        for old in previous.map(|p| p.vips).unwrap_or_default() {
            if !entry.vips.contains(&old) && !self.vip_still_used(old) {
                self.vips.remove(old).await?;
            }
        }
        self.release_overtaken(&entry).await?;
        self.confirm_served(&entry).await
    }

    /// Target-only changes go through the runtime API, without a reload,
    /// and are written to the configuration file too. Anything unexpected
    /// (HAProxy not running, a refused command) falls back to a reload.
    async fn update_targets(&self, spec: &LoadBalancerSpec) -> Result<Vec<Warning>, ProviderError> {
        if let Some(e) = self.take_refusal(&spec.lb) {
            return Err(e);
        }
        let (entry, previous) = self.plan(spec)?;
        match self.apply_targets(entry.clone()).await {
            // (The applier has the file written once the batch is through.)
            Applied::Done => Ok(Vec::new()),
            // Applied with the batch after the one going through now.
            Applied::Queued => Err(pending(self.poll_after())),
            // More than targets changed, or no spare node check is left: a
            // reload (rendering fresh spares), loaded together with every
            // other Service's.
            Applied::Reload => self
                .load_with_others(&spec.lb, &entry, previous)
                .await
                .map(|()| Vec::new()),
            Applied::Failed(e) => {
                tracing::warn!(service = %spec.lb.key, error = %e, "runtime API update failed; reloading instead");
                self.sync_or_roll_back(&spec.lb, previous)
                    .await
                    .map(|()| Vec::new())
            }
        }
    }

    /// A removal is a change like any other: loaded with whatever else
    /// changes now (Pending while an applier has it), so that deleting 100
    /// Services is one reload, not one each.
    async fn ensure_deleted(&self, lb: &LoadBalancerRef) -> Result<(), ProviderError> {
        self.planned(lb);
        self.queue().forget(lb);
        // (A refusal of an earlier change to it, not of its removal, is moot.)
        let refused = self.bursts().take_refusal(lb);
        if let Some((e, _)) = refused
            && self
                .deleting
                .lock()
                .expect("deleting lock")
                .remove(lb)
                .is_some()
        {
            // Its removal was refused when its burst was applied: HAProxy
            // still serves it (put back), and the next ask removes it again.
            return Err(e);
        }
        let removed = self.entries.lock().expect("entries lock").remove(lb);
        if let Some(removed) = removed {
            self.deleting
                .lock()
                .expect("deleting lock")
                .insert(lb.clone(), removed.vips);
            self.changed(lb);
        } else if !self
            .deleting
            .lock()
            .expect("deleting lock")
            .contains_key(lb)
        {
            // Never created, or gone already.
            self.bursts().forget(lb);
            return Ok(());
        }
        let done = match self.is_loaded(lb, None).await {
            Some(true) => true,
            Some(false) => self.apply_or_join(lb).await.inspect_err(|_| {
                // The failed burst put it back into the desired state.
                self.deleting.lock().expect("deleting lock").remove(lb);
            })?,
            None => false,
        };
        if !done {
            return Err(pending(self.poll_after()));
        }
        self.bursts().forget(lb);
        let vips = self.deleting.lock().expect("deleting lock").remove(lb);
        for vip in vips.into_iter().flatten() {
            if !self.vip_still_used(vip) {
                self.vips.remove(vip).await?;
            }
        }
        Ok(())
    }

    /// Reserves the addresses Services already carry in their status, then
    /// loads the configuration for all of them at once.
    async fn restore(&self, specs: &[LoadBalancerSpec]) -> Result<(), ProviderError> {
        let mut own = None;
        for spec in specs.iter().filter(|s| !s.status_ips.is_empty()) {
            let mut kept = spec.clone();
            kept.requested_ips.clear();
            match self.plan(&kept) {
                Err(e) => {
                    tracing::warn!(service = %spec.lb.key, error = %e, "not restoring this Service's address");
                }
                // A port another process took while FerryLB was down would
                // keep HAProxy from starting at all, and every other
                // Service with it: that Service alone waits (its reconcile
                // reports PortInUse), the others are served.
                Ok((entry, _)) => {
                    if let Err(e) = self.check_binds(&entry, None, &mut own).await {
                        tracing::warn!(service = %spec.lb.key, error = %e, "not serving this Service until its port is free");
                        self.roll_back(&spec.lb, None);
                        self.bursts().refuse(&spec.lb, e, None);
                    }
                }
            }
        }
        self.sync().await?;
        // The load put every VIP on the interface once HAProxy listened; a
        // follower that already served them is told to hold them now.
        for ip in self.held_vips() {
            self.hold_vip(ip).await?;
        }
        Ok(())
    }
}
