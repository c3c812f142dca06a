//! From a Service's spec to the entry HAProxy should run: its VIPs, its
//! options, and the ports it may bind.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ferrylb_model::{LoadBalancerRef, LoadBalancerSpec, Protocol, ProviderError, reason};

use crate::alloc::Holder;
use crate::options::Options;
use crate::render::{Entry, GlobalSettings};
use crate::{HaproxyProvider, alloc, process, render, vip};

/// The binds HAProxy runs, read once for several [`HaproxyProvider::check_binds`]
/// (a restore checks every Service's; the file holds them all).
pub(crate) type OwnBinds = Option<HashSet<String>>;

impl HaproxyProvider {
    /// `lb` came to the provider: the first burst need not wait for it.
    pub(crate) fn planned(&self, lb: &LoadBalancerRef) {
        let mut awaiting = self.awaiting.lock().expect("awaiting lock");
        if !awaiting.is_empty() {
            awaiting.remove(lb);
        }
    }

    pub(crate) fn global(&self) -> GlobalSettings {
        GlobalSettings {
            admin_socket: self.settings.admin_socket.clone(),
            hard_stop_after: self.settings.hard_stop_after,
            node_check_port: self.settings.node_check_port,
            threads: self.settings.threads,
        }
    }

    /// Allocates a VIP for `spec` and records it, without applying. Returns
    /// the previous entry, for rolling back.
    pub fn plan(&self, spec: &LoadBalancerSpec) -> Result<(Entry, Option<Entry>), ProviderError> {
        let options = Options::parse(&spec.annotations)?;
        let mut entries = self.entries.lock().expect("entries lock");
        let current = entries.get(&spec.lb);
        // Nothing the address depends on changed (a node came or went): it
        // stays, without looking at every other Service's.
        let kept = current
            .filter(|e| {
                e.spec.listeners == spec.listeners
                    && e.spec.requested_ips == spec.requested_ips
                    && e.spec.shared_ip_key == spec.shared_ip_key
                    && e.spec.ip_families == spec.ip_families
                    && e.spec.require_dual_stack == spec.require_dual_stack
                    && e.vips.iter().all(|ip| self.settings.pool.contains(*ip))
            })
            .map(|e| e.vips.clone());
        let vips = match kept {
            Some(vips) => vips,
            None => {
                let holders: BTreeMap<LoadBalancerRef, Holder> = entries
                    .iter()
                    .map(|(r, e)| (r.clone(), Holder::of(&e.spec, &e.vips)))
                    .collect();
                let current = current.map(|e| e.vips.as_slice()).unwrap_or_default();
                alloc::allocate(&self.settings.pool, spec, current, &holders)?
            }
        };
        let entry = Entry {
            spec: spec.clone(),
            vips,
            options,
        };
        let previous = entries.insert(spec.lb.clone(), entry.clone());
        Ok((entry, previous))
    }

    /// The addresses the installed configuration binds, while HAProxy runs
    /// it: its own ports, not another process's. (A port taken while it
    /// was stopped is another process's.)
    async fn own_binds(&self) -> HashSet<String> {
        if process::serving(&self.settings.process.master_socket)
            .await
            .is_err()
        {
            return HashSet::new();
        }
        std::fs::read_to_string(&self.settings.process.config_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("bind ")?
                    .strip_suffix(" transparent")
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Refuses `entry` when a VIP:port it adds (one `previous` did not bind)
    /// is held by another process on this host: HAProxy would fail to bind
    /// it, and the whole reload with it; found first, it costs only this
    /// Service. Ports the installed configuration binds are HAProxy's own.
    pub(crate) async fn check_binds(
        &self,
        entry: &Entry,
        previous: Option<&Entry>,
        own: &mut OwnBinds,
    ) -> Result<(), ProviderError> {
        let bound = |e: Option<&Entry>, vip: IpAddr, port: u16| {
            e.is_some_and(|e| {
                e.vips.contains(&vip)
                    && e.spec
                        .listeners
                        .iter()
                        .any(|l| l.protocol == Protocol::Tcp && l.port == port)
            })
        };
        let new = entry.vips.iter().flat_map(|&vip| {
            entry
                .spec
                .listeners
                .iter()
                .filter(move |l| l.protocol == Protocol::Tcp && !bound(previous, vip, l.port))
                .map(move |l| (vip, l.port))
        });
        let taken = vip::taken(new);
        if taken.is_empty() {
            return Ok(());
        }
        if own.is_none() {
            *own = Some(self.own_binds().await);
        }
        let ours = own.as_ref().expect("read just now");
        match taken
            .into_iter()
            .map(|(ip, port)| (render::addr(ip, port), port))
            .find(|(addr, _)| !ours.contains(addr))
        {
            None => Ok(()),
            Some((addr, port)) => Err(ProviderError::transient(
                reason::PORT_IN_USE,
                format!(
                    "{addr}: another process on this host already listens on port {port} \
                     (on that address or on all addresses), so HAProxy cannot bind it; \
                     free the port or use another"
                ),
            )),
        }
    }
}
