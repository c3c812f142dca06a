//! A follower serves what the leader provisioned: the same Services on the
//! VIPs their status carries, through the same loads.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrylb_model::{LoadBalancerRef, LoadBalancerSpec, Protocol, ProviderError};

use crate::HaproxyProvider;
use crate::options::Options;
use crate::render::Entry;
use crate::targets::{Applied, runtime_only};

impl HaproxyProvider {
    /// Serves exactly `specs`, each on the VIP its Service's status carries
    /// (what a follower does: the leader allocated them), in one load.
    /// Services without an address yet, without a TCP port, or whose
    /// annotations are invalid are left out (the leader reports them).
    ///
    /// # Errors
    /// When the configuration cannot be loaded.
    pub async fn mirror(&self, specs: &[LoadBalancerSpec]) -> Result<(), ProviderError> {
        let next: BTreeMap<LoadBalancerRef, Entry> = specs
            .iter()
            .filter(|s| s.listeners.iter().any(|l| l.protocol == Protocol::Tcp))
            .filter_map(|spec| {
                let vips: Vec<IpAddr> = spec
                    .status_ips
                    .iter()
                    .copied()
                    .filter(|ip| self.settings.pool.contains(*ip))
                    .collect();
                if vips.is_empty() {
                    return None;
                }
                let options = Options::parse(&spec.annotations).ok()?;
                Some((
                    spec.lb.clone(),
                    Entry {
                        spec: spec.clone(),
                        vips,
                        options,
                    },
                ))
            })
            .collect();
        *self.entries.lock().expect("entries lock") = next.clone();
        // Only targets changed (a node came or went): the runtime API, as on
        // the leader, and no reload.
        let mut loaded = self.loaded.lock().await;
        if let Some(running) = loaded.entries.clone()
            && running.keys().eq(next.keys())
        {
            let changed: Vec<Entry> = next
                .iter()
                .filter(|(k, new)| running.get(*k) != Some(*new))
                .map(|(_, new)| new.clone())
                .collect();
            if !changed.is_empty()
                && changed
                    .iter()
                    .all(|new| runtime_only(&running[&new.spec.lb], new))
            {
                for outcome in self.apply_runtime(&mut loaded, &changed).await {
                    if let Applied::Failed(e) = outcome {
                        tracing::warn!(error = %e, "runtime API update failed; reloading instead");
                    }
                }
                if loaded.entries.as_ref() == Some(&next) {
                    drop(loaded);
                    self.flush_soon();
                    return Ok(());
                }
            }
        }
        drop(loaded);
        self.sync().await
    }
}
