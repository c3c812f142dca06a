//! FerryLB's HAProxy provider: each Service gets a VIP from a pool, and one
//! HAProxy whose configuration FerryLB owns forwards every VIP:port to all
//! eligible nodes' `InternalIP:nodePort`.
//!
//! Configuration changes are rendered whole, validated with `haproxy -c`,
//! installed atomically and loaded with a hitless master-worker reload, one
//! at a time; changes arriving during a reload are coalesced into the next.
#![forbid(unsafe_code)]

mod alloc;
pub mod options;
pub mod pool;
pub mod process;
pub mod render;
mod runtime;
pub mod vip;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use ferrylb_model::{
    Address, Ingress, IpMode, LoadBalancerProvider, LoadBalancerRef, LoadBalancerSpec,
    LoadBalancerStatus, PortStatus, Protocol, ProviderError, Warning,
};

use crate::alloc::Holder;
use crate::options::Options;
use crate::pool::AddressPool;
use crate::process::{Process, ProcessSettings};
use crate::render::{Entry, GlobalSettings};
use crate::vip::VipBinder;

/// Everything the provider needs to know.
#[derive(Debug, Clone)]
pub struct HaproxySettings {
    pub pool: AddressPool,
    pub process: ProcessSettings,
    /// Admin-level stats socket rendered into the configuration.
    pub admin_socket: std::path::PathBuf,
    /// Add VIPs to this interface (and remove them when freed).
    pub vip_interface: Option<String>,
    /// Old workers draining connections are stopped after this long.
    pub hard_stop_after: Duration,
}

/// The HAProxy provider.
pub struct HaproxyProvider {
    settings: HaproxySettings,
    process: Process,
    vips: VipBinder,
    entries: std::sync::Mutex<BTreeMap<LoadBalancerRef, Entry>>,
    /// Serialises configuration applies; holds the text last loaded.
    applied: tokio::sync::Mutex<Option<String>>,
}

impl HaproxyProvider {
    pub fn new(settings: HaproxySettings) -> Self {
        Self {
            process: Process::new(settings.process.clone()),
            vips: VipBinder {
                interface: settings.vip_interface.clone(),
            },
            settings,
            entries: std::sync::Mutex::default(),
            applied: tokio::sync::Mutex::new(None),
        }
    }

    /// The configuration for the current state, as it would be written.
    pub fn render(&self) -> String {
        let entries: Vec<Entry> = self
            .entries
            .lock()
            .expect("entries lock")
            .values()
            .cloned()
            .collect();
        render::render(&self.global(), &entries)
    }

    /// The VIP each Service holds.
    pub fn assignments(&self) -> BTreeMap<LoadBalancerRef, IpAddr> {
        self.entries
            .lock()
            .expect("entries lock")
            .iter()
            .map(|(r, e)| (r.clone(), e.vip))
            .collect()
    }

    /// How many times HAProxy's master has reloaded, and how many of those
    /// failed (from the master CLI's `show proc`).
    pub async fn reload_counters(&self) -> Result<(u64, u64), ProviderError> {
        self.process.reload_counters().await
    }

    /// Stops a managed HAProxy.
    pub async fn shutdown(&self) {
        self.process.stop().await;
    }

    fn global(&self) -> GlobalSettings {
        GlobalSettings {
            admin_socket: self.settings.admin_socket.clone(),
            hard_stop_after: self.settings.hard_stop_after,
        }
    }

    /// Allocates a VIP for `spec` and records it, without applying. Returns
    /// the previous entry, for rolling back.
    pub fn plan(&self, spec: &LoadBalancerSpec) -> Result<(Entry, Option<Entry>), ProviderError> {
        let options = Options::parse(&spec.annotations)?;
        let mut entries = self.entries.lock().expect("entries lock");
        let holders: BTreeMap<LoadBalancerRef, Holder> = entries
            .iter()
            .map(|(r, e)| (r.clone(), Holder::of(&e.spec, e.vip)))
            .collect();
        let current = entries.get(&spec.lb).map(|e| e.vip);
        let vip = alloc::allocate(&self.settings.pool, spec, current, &holders)?;
        let entry = Entry {
            spec: spec.clone(),
            vip,
            options,
        };
        let previous = entries.insert(spec.lb.clone(), entry.clone());
        Ok((entry, previous))
    }

    /// Brings HAProxy to the current state: render, and if it differs from
    /// what is loaded, install and reload. Callers queued behind a reload
    /// find their change already applied by it (coalescing).
    async fn sync(&self) -> Result<(), ProviderError> {
        let mut applied = self.applied.lock().await;
        let text = self.render();
        if applied.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        self.process.install(&text).await?;
        self.process.reload().await?;
        *applied = Some(text);
        Ok(())
    }

    /// Puts back `previous` for `lb` (or removes it) after a failed apply.
    fn roll_back(&self, lb: &LoadBalancerRef, previous: Option<Entry>) {
        let mut entries = self.entries.lock().expect("entries lock");
        match previous {
            Some(p) => entries.insert(lb.clone(), p),
            None => entries.remove(lb),
        };
    }

    fn vip_still_used(&self, ip: IpAddr) -> bool {
        self.entries
            .lock()
            .expect("entries lock")
            .values()
            .any(|e| e.vip == ip)
    }
}

/// The status to publish for an entry, and warnings for ports HAProxy
/// cannot serve.
pub fn status_of(entry: &Entry) -> LoadBalancerStatus {
    let mut warnings = Vec::new();
    let ports = entry
        .spec
        .listeners
        .iter()
        .map(|l| {
            let error = (l.protocol != Protocol::Tcp).then(|| {
                warnings.push(Warning {
                    reason: "UnsupportedProtocol".into(),
                    message: format!(
                        "port {}/{} is not served: HAProxy load-balances TCP only; the Service's TCP ports work",
                        l.port, l.protocol
                    ),
                });
                "UnsupportedProtocol".to_owned()
            });
            PortStatus {
                port: l.port,
                protocol: l.protocol,
                error,
            }
        })
        .collect();
    LoadBalancerStatus {
        ingress: vec![Ingress {
            address: Address::Ip(entry.vip),
            ip_mode: Some(IpMode::Proxy),
            ports,
        }],
        warnings,
    }
}

#[async_trait]
impl LoadBalancerProvider for HaproxyProvider {
    fn name(&self) -> &str {
        "haproxy"
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
        let (entry, previous) = self.plan(spec)?;
        let result = async {
            self.vips.add(entry.vip).await?;
            self.sync().await
        }
        .await;
        if let Err(e) = result {
            self.roll_back(&spec.lb, previous);
            return Err(e);
        }
        if let Some(old) = previous.filter(|p| p.vip != entry.vip)
            && !self.vip_still_used(old.vip)
        {
            self.vips.remove(old.vip).await?;
        }
        Ok(status_of(&entry))
    }

    /// Target-only changes go through the runtime API, without a reload,
    /// and are written to the configuration file too. Anything unexpected
    /// (HAProxy not running, a refused command) falls back to a reload.
    async fn update_targets(&self, spec: &LoadBalancerSpec) -> Result<(), ProviderError> {
        let (entry, previous) = self.plan(spec)?;
        let Some(old) = previous.clone().filter(|p| p.vip == entry.vip) else {
            return self.ensure(spec).await.map(|_| ());
        };
        let mut applied = self.applied.lock().await;
        let text = self.render();
        if applied.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        let mut runtime_ok = applied.is_some();
        if runtime_ok {
            for batch in runtime::commands(&old, &entry) {
                if let Err(e) = runtime::run(&self.settings.admin_socket, &batch).await {
                    tracing::warn!(service = %spec.lb.key, error = %e, "runtime API update failed; reloading instead");
                    runtime_ok = false;
                    break;
                }
            }
        }
        let result = async {
            self.process.install(&text).await?;
            if !runtime_ok {
                self.process.reload().await?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                *applied = Some(text);
                Ok(())
            }
            Err(e) => {
                drop(applied);
                self.roll_back(&spec.lb, previous);
                Err(e)
            }
        }
    }

    async fn ensure_deleted(&self, lb: &LoadBalancerRef) -> Result<(), ProviderError> {
        let removed = self.entries.lock().expect("entries lock").remove(lb);
        let Some(removed) = removed else {
            return Ok(());
        };
        if let Err(e) = self.sync().await {
            self.roll_back(lb, Some(removed));
            return Err(e);
        }
        if !self.vip_still_used(removed.vip) {
            self.vips.remove(removed.vip).await?;
        }
        Ok(())
    }

    /// Reserves the addresses Services already carry in their status, then
    /// loads the configuration for all of them at once.
    async fn restore(&self, specs: &[LoadBalancerSpec]) -> Result<(), ProviderError> {
        for spec in specs.iter().filter(|s| !s.status_ips.is_empty()) {
            let mut kept = spec.clone();
            kept.requested_ips.clear();
            if let Err(e) = self.plan(&kept) {
                tracing::warn!(service = %spec.lb.key, error = %e, "not restoring this Service's address");
            }
        }
        let vips: Vec<IpAddr> = self.assignments().into_values().collect();
        for ip in vips {
            self.vips.add(ip).await?;
        }
        self.sync().await
    }
}
