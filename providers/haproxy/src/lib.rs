//! FerryLB's HAProxy provider: each Service gets a VIP from a pool, and one
//! HAProxy whose configuration FerryLB owns forwards every VIP:port to all
//! eligible nodes' `InternalIP:nodePort`.
//!
//! Configuration changes are rendered whole, validated with `haproxy -c`,
//! installed atomically and loaded with a hitless master-worker reload, one
//! at a time; changes arriving during a reload are coalesced into the next.
#![forbid(unsafe_code)]

mod alloc;
mod apply;
pub mod bgp;
pub mod drain;
mod files;
pub mod options;
pub mod pool;
pub mod process;
pub mod render;
mod runtime;
mod served;
#[cfg(test)]
mod testns;
pub mod vip;
pub mod vrrp;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferrylb_model::reason;
use ferrylb_model::{
    Address, Ingress, IpFamily, IpMode, LoadBalancerProvider, LoadBalancerRef, LoadBalancerSpec,
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
    /// See [`GlobalSettings::node_check_port`].
    pub node_check_port: Option<u16>,
    /// See [`GlobalSettings::threads`].
    pub threads: Option<u16>,
    /// VIPs owned by VRRP: a keepalived FerryLB runs moves them between the
    /// replicas (then `vip_interface` is not used).
    pub vrrp: Option<vrrp::VrrpSettings>,
    /// VIPs announced over BGP: a BIRD FerryLB runs announces every VIP
    /// this replica's HAProxy serves (then `vip_interface` is not used).
    pub bgp: Option<bgp::BgpSettings>,
    /// Without VRRP or BGP: how long a leader that stops drops new TCP
    /// handshakes to its VIPs before it takes them off `vip_interface`
    /// (see [`vrrp::handover`]); zero hands them over at once.
    pub handover_pause: Duration,
    /// The `nft` program, for the handover pause.
    pub nft_binary: std::path::PathBuf,
    /// How long a leaving node's servers drain before the sessions they
    /// still carry are cut (see [`drain`]); a Service may set its own
    /// (`ferrylb.io/haproxy-drain-timeout`).
    pub drain_timeout: Duration,
}

impl HaproxySettings {
    /// Settings for a managed `haproxy` (found on `PATH`) whose
    /// configuration and sockets live in `dir`: `haproxy.cfg`,
    /// `master.sock`, `admin.sock`. Per-server health checks, 30 s
    /// hard-stop-after, VIPs already owned by the host.
    pub fn in_dir(pool: AddressPool, dir: &std::path::Path) -> Self {
        HaproxySettings {
            pool,
            process: ProcessSettings {
                binary: "haproxy".into(),
                config_path: dir.join("haproxy.cfg"),
                master_socket: dir.join("master.sock"),
                mode: process::RunMode::Managed,
            },
            admin_socket: dir.join("admin.sock"),
            vip_interface: None,
            hard_stop_after: Duration::from_secs(30),
            node_check_port: None,
            threads: None,
            vrrp: None,
            bgp: None,
            handover_pause: Duration::ZERO,
            nft_binary: "nft".into(),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// The HAProxy provider.
pub struct HaproxyProvider {
    settings: HaproxySettings,
    process: Process,
    vips: VipBinder,
    entries: std::sync::Mutex<BTreeMap<LoadBalancerRef, Entry>>,
    /// What HAProxy runs now; its lock serialises every change to HAProxy.
    loaded: Arc<tokio::sync::Mutex<Loaded>>,
    /// Wakes the task that writes runtime API changes to the file.
    flush: Arc<tokio::sync::Notify>,
    flusher: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
    /// Counts changes to the desired state: a burst is applied once it
    /// stops moving (see `apply`).
    requested: std::sync::atomic::AtomicU64,
    /// The value of `requested` when each Service's entry last changed.
    changed_at: std::sync::Mutex<std::collections::HashMap<LoadBalancerRef, u64>>,
    /// Every change counted up to this value is loaded (or refused and
    /// recorded in `failed`): what a reconcile asking again is told while
    /// the next burst is being applied.
    loaded_through: std::sync::atomic::AtomicU64,
    /// Why a pending change was refused when its burst was applied, for the
    /// reconcile that asks again, with the entry HAProxy runs for it (put
    /// back into the desired state when the refusal is reported).
    failed: std::sync::Mutex<BTreeMap<LoadBalancerRef, (ProviderError, Option<Entry>)>>,
    /// What HAProxy's current worker serves, asked of it.
    served: served::ServedView,
    /// Load balancers taken out of the desired state whose removal is not
    /// known to be loaded yet, with the VIP each held (given back once it
    /// is, unless another Service shares it).
    deleting: std::sync::Mutex<BTreeMap<LoadBalancerRef, Vec<IpAddr>>>,
    /// Owns the VIPs when VRRP is on.
    keepalived: Option<Arc<vrrp::Keepalived>>,
    bird: Option<Arc<bgp::Bird>>,
    /// Whether this replica puts VIPs on `vip_interface` (the leader does;
    /// a follower serves the same configuration without them).
    holding: std::sync::atomic::AtomicBool,
    /// Configurations loaded.
    generation: std::sync::atomic::AtomicU64,
    /// How long the last reload took (render, validate, install, reload).
    last_load: std::sync::Mutex<Duration>,
    /// Carries `loaded_through` to the controller (see
    /// [`LoadBalancerProvider::applied`]).
    applied: tokio::sync::watch::Sender<u64>,
    /// Services that existed unprovisioned at start-up and have not come to
    /// `ensure` yet: the first burst waits for them (see
    /// [`LoadBalancerProvider::starting`]).
    awaiting: std::sync::Mutex<std::collections::HashSet<LoadBalancerRef>>,
}

/// The entries HAProxy runs, and whether the file lags behind them.
#[derive(Default)]
struct Loaded {
    entries: Option<BTreeMap<LoadBalancerRef, Entry>>,
    /// Services whose entries in `entries` changed through the runtime API
    /// since a configuration was checked: checked with the next burst.
    unchecked: std::collections::BTreeSet<LoadBalancerRef>,
    file_stale: bool,
    /// The SHA-256 of the configuration HAProxy serves; `None` while
    /// runtime API changes are not in a file yet (or the state is unknown).
    served_sha: Option<String>,
    /// The shared node checks HAProxy has (see [`render::NODE_CHECKS`]):
    /// those loaded, and spares taken since through the runtime API.
    node_checks: runtime::CheckSlots,
    /// Counts changes to what HAProxy runs (loads and runtime API changes),
    /// so the file is only written for the state it was rendered from.
    version: u64,
    /// Servers of leaving nodes, draining (see [`drain`]).
    drains: BTreeMap<drain::ServerKey, drain::Drain>,
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
async fn flush_loop(
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

impl HaproxyProvider {
    pub fn new(settings: HaproxySettings) -> Self {
        Self {
            process: Process::new(settings.process.clone()),
            vips: VipBinder::new(if settings.vrrp.is_some() || settings.bgp.is_some() {
                None
            } else {
                settings.vip_interface.clone()
            }),
            keepalived: settings.vrrp.clone().map(vrrp::Keepalived::new),
            bird: settings.bgp.clone().map(bgp::Bird::new),
            holding: std::sync::atomic::AtomicBool::new(true),
            generation: std::sync::atomic::AtomicU64::new(0),
            last_load: std::sync::Mutex::new(Duration::ZERO),
            awaiting: std::sync::Mutex::default(),
            applied: tokio::sync::watch::Sender::new(0),
            settings,
            entries: std::sync::Mutex::default(),
            loaded: Arc::default(),
            flush: Arc::default(),
            flusher: std::sync::OnceLock::new(),
            requested: std::sync::atomic::AtomicU64::new(0),
            changed_at: std::sync::Mutex::default(),
            loaded_through: std::sync::atomic::AtomicU64::new(0),
            failed: std::sync::Mutex::default(),
            served: served::ServedView::default(),
            deleting: std::sync::Mutex::default(),
        }
    }

    /// The settings the provider runs with.
    pub fn settings(&self) -> &HaproxySettings {
        &self.settings
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

    /// The VIPs each Service holds (one per family it is given).
    pub fn assignments(&self) -> BTreeMap<LoadBalancerRef, Vec<IpAddr>> {
        self.entries
            .lock()
            .expect("entries lock")
            .iter()
            .map(|(r, e)| (r.clone(), e.vips.clone()))
            .collect()
    }

    /// Every VIP some Service holds.
    fn held_vips(&self) -> std::collections::BTreeSet<IpAddr> {
        self.entries
            .lock()
            .expect("entries lock")
            .values()
            .flat_map(|e| e.vips.iter().copied())
            .collect()
    }

    /// How many times HAProxy's master has reloaded, and how many of those
    /// failed (from the master CLI's `show proc`).
    pub async fn reload_counters(&self) -> Result<(u64, u64), ProviderError> {
        self.process.reload_counters().await
    }

    /// Whether this replica puts VIPs on `vip_interface`: the leader does,
    /// a follower (serving the same configuration) does not. Without VRRP
    /// only one host may answer for a VIP.
    pub fn set_holding(&self, holding: bool) {
        self.holding
            .store(holding, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops holding VIPs at once (a leader that lost its Lease): takes
    /// every VIP off `vip_interface`, so that the next leader is the only
    /// host answering for them. With VRRP or BGP the VIPs are theirs, and
    /// nothing changes here.
    pub async fn stop_holding(&self) {
        self.set_holding(false);
        if !self.binds_vips() {
            return;
        }
        for ip in self.held_vips() {
            if let Err(e) = self.vips.remove(ip).await {
                tracing::warn!(%ip, error = %e, "removing a VIP from the interface failed");
            }
        }
    }

    /// Whether this replica puts VIPs on an interface itself (not VRRP,
    /// not BGP).
    fn binds_vips(&self) -> bool {
        self.settings.vip_interface.is_some() && self.keepalived.is_none() && self.bird.is_none()
    }

    /// A planned stop of the replica holding the VIPs on `vip_interface`:
    /// drops new TCP handshakes to them for `handover_pause`, so that the
    /// connections HAProxy accepted finish while their packets still reach
    /// this host, then takes them off (clients send a dropped SYN again a
    /// second later, to the next holder). Holds no VIP afterwards.
    pub async fn hand_over(&self) {
        self.set_holding(false);
        if !self.binds_vips() {
            return;
        }
        let vips = self.held_vips();
        let pause = self.settings.handover_pause;
        let nft = vrrp::handover::Nft::new(self.settings.nft_binary.clone());
        let paused = !pause.is_zero()
            && !vips.is_empty()
            && match nft.pause(&vips).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "pausing new connections to the VIPs failed; handing them over at once");
                    false
                }
            };
        if paused {
            tracing::info!(
                ?pause,
                vips = vips.len(),
                "new connections to the VIPs paused; handing them over once the accepted ones finish"
            );
            tokio::time::sleep(pause).await;
        }
        self.stop_holding().await;
        if paused {
            self.clear_handover_pause().await;
        }
    }

    /// Starts holding VIPs (a follower that became the leader): puts every
    /// VIP its HAProxy already serves (the mirror loaded them) on `vip_interface` at
    /// once and announces it, rather than when each Service is next
    /// reconciled, so a handover's gap is a Lease round trip.
    pub async fn start_holding(&self) {
        self.set_holding(true);
        if !self.binds_vips() {
            return;
        }
        // Only what HAProxy runs: a VIP is never put up before HAProxy
        // listens on it.
        let serving: std::collections::BTreeSet<IpAddr> = self
            .loaded
            .lock()
            .await
            .entries
            .iter()
            .flat_map(|e| e.values())
            .flat_map(|e| e.vips.iter().copied())
            .collect();
        for ip in serving {
            match self.vips.add(ip).await {
                Ok(true) => self.vips.announce(ip),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%ip, error = %e, "putting a VIP on the interface failed; the next reconcile tries again")
                }
            }
        }
    }

    /// Removes a handover pause a replica killed during its handover left
    /// on this host (it would drop handshakes to the VIPs for good).
    pub async fn clear_handover_pause(&self) {
        if !self.binds_vips() || self.settings.handover_pause.is_zero() {
            return;
        }
        let nft = vrrp::handover::Nft::new(self.settings.nft_binary.clone());
        if let Err(e) = nft.resume().await {
            tracing::warn!(error = %e, "clearing the handover pause failed; new connections to the VIPs may be dropped");
        }
    }

    /// The keepalived that owns the VIPs, when VRRP is on.
    pub fn keepalived(&self) -> Option<&Arc<vrrp::Keepalived>> {
        self.keepalived.as_ref()
    }

    /// The BIRD that announces the VIPs, when BGP is on.
    pub fn bird(&self) -> Option<&Arc<bgp::Bird>> {
        self.bird.as_ref()
    }

    /// How many configurations this process loaded, and the SHA-256 of the
    /// one HAProxy serves (equal on every replica that serves the same
    /// state); `None` while runtime API changes are not written yet.
    pub async fn served(&self) -> (u64, Option<String>) {
        (
            self.generation.load(std::sync::atomic::Ordering::SeqCst),
            self.loaded.lock().await.served_sha.clone(),
        )
    }

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
            let changed: Vec<(&Entry, &Entry)> = next
                .iter()
                .filter_map(|(k, new)| Some((running.get(k)?, new)))
                .filter(|(old, new)| old != new)
                .collect();
            if !changed.is_empty() && changed.iter().all(|(old, new)| runtime_only(old, new)) {
                for (old, new) in changed {
                    match self.apply_runtime(&mut loaded, old, new).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "runtime API update failed; reloading instead");
                            break;
                        }
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

    /// Hands the VIPs over (stops keepalived, withdraws the BGP routes, or
    /// takes them off `vip_interface`), so the replica that takes over is the only host
    /// answering for them, then stops a managed HAProxy: in this order, this
    /// host never answers for a VIP nobody listens on.
    pub async fn shutdown(&self) {
        if let Some(f) = self.flusher.get() {
            f.abort();
        }
        if let Some(k) = &self.keepalived {
            k.stop().await;
        }
        if let Some(b) = &self.bird {
            b.stop().await;
        }
        for ip in self.held_vips() {
            if let Err(e) = self.vips.remove(ip).await {
                tracing::warn!(%ip, error = %e, "removing a VIP from the interface on shutdown failed");
            }
        }
        self.process.stop().await;
    }

    /// `lb` came to the provider: the first burst need not wait for it.
    fn planned(&self, lb: &LoadBalancerRef) {
        let mut awaiting = self.awaiting.lock().expect("awaiting lock");
        if !awaiting.is_empty() {
            awaiting.remove(lb);
        }
    }

    /// Writes an empty configuration when there is none yet, so that an
    /// HAProxy started beside FerryLB (the chart's sidecar, which waits for
    /// the file) runs before this replica has anything to serve: when it
    /// takes over, a reload is all it takes to serve.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub async fn write_initial_config(&self) -> Result<(), ProviderError> {
        let path = &self.settings.process.config_path;
        if tokio::fs::try_exists(path).await.unwrap_or(false) {
            return Ok(());
        }
        process::write_atomically(path, &render::render(&self.global(), &[])).await
    }

    fn global(&self) -> GlobalSettings {
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

    /// Brings HAProxy to the current state: render, and if it differs from
    /// what is loaded, install and reload. Callers queued behind a reload
    /// find their change already applied by it (coalescing).
    async fn sync(&self) -> Result<(), ProviderError> {
        let mut loaded = self.loaded.lock().await;
        let (desired, through) = self.desired();
        if loaded.entries.as_ref() != Some(&desired) {
            self.load(&mut loaded, desired).await?;
        }
        self.mark_loaded(through);
        Ok(())
    }

    /// [`Self::sync`], rolling `lb` back to `previous` when it fails.
    async fn sync_or_roll_back(
        &self,
        lb: &LoadBalancerRef,
        previous: Option<Entry>,
    ) -> Result<(), ProviderError> {
        let result = self.sync().await;
        if result.is_err() {
            self.roll_back(lb, previous);
        }
        result
    }

    /// Loads `entry` (planned over `previous`) with whatever else changes
    /// now: `Ok` once loaded, Pending while an applier has it.
    async fn load_with_others(
        &self,
        lb: &LoadBalancerRef,
        entry: &Entry,
        previous: Option<Entry>,
    ) -> Result<(), ProviderError> {
        if self.already_loaded(lb, entry, previous.as_ref())? {
            return Ok(());
        }
        match self.apply_or_join(lb).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(pending(self.poll_after())),
            Err(e) => {
                self.roll_back(lb, previous);
                Err(e)
            }
        }
    }

    /// Puts back `previous` for `lb` (or removes it) after a failed apply.
    fn roll_back(&self, lb: &LoadBalancerRef, previous: Option<Entry>) {
        let mut entries = self.entries.lock().expect("entries lock");
        match previous {
            Some(p) => entries.insert(lb.clone(), p),
            None => entries.remove(lb),
        };
    }

    /// Refuses `entry` when a VIP:port it adds (one `previous` did not bind)
    /// is held by another process on this host: HAProxy would fail to bind
    /// it, and the whole reload with it; found first, it costs only this
    /// Service. Ports the installed configuration binds are HAProxy's own.
    async fn check_binds(
        &self,
        entry: &Entry,
        previous: Option<&Entry>,
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
        // The installed file's binds are HAProxy's own only while it runs:
        // a port taken while it was stopped is another process's.
        let installed = if process::serving(&self.settings.process.master_socket)
            .await
            .is_ok()
        {
            std::fs::read_to_string(&self.settings.process.config_path).unwrap_or_default()
        } else {
            String::new()
        };
        let ours = |addr: &str| {
            installed
                .lines()
                .any(|l| l.trim() == format!("bind {addr} transparent"))
        };
        match taken
            .into_iter()
            .map(|(ip, port)| (render::addr(ip, port), port))
            .find(|(addr, _)| !ours(addr))
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

    /// Turns `old` (what HAProxy runs) into `new`, which differs in its
    /// targets alone, through the runtime API, and records it as running.
    /// `Ok(false)`: it needs a reload (no spare node check left). On an
    /// error HAProxy's state is unknown: it is marked so, and the next load
    /// makes it certain.
    async fn apply_runtime(
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
    fn flush_soon(&self) {
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

    /// Gives back the VIP of a removal `entry` overtook (its Service lost
    /// its TCP ports and got them back before the removal was loaded),
    /// unless it is in use.
    async fn release_overtaken(&self, entry: &Entry) -> Result<(), ProviderError> {
        let overtaken = self
            .deleting
            .lock()
            .expect("deleting lock")
            .remove(&entry.spec.lb);
        for old in overtaken.into_iter().flatten() {
            if !entry.vips.contains(&old) && !self.vip_still_used(old) {
                self.vips.remove(old).await?;
            }
        }
        Ok(())
    }

    /// The refusal of `lb`'s change when its burst was applied, if any: its
    /// entry goes back to what HAProxy runs for it, so nothing refused
    /// stays planned as though it were served.
    fn take_refusal(&self, lb: &LoadBalancerRef) -> Option<ProviderError> {
        let (e, running) = self.failed.lock().expect("failed lock").remove(lb)?;
        self.roll_back(lb, running);
        Some(e)
    }

    /// The status for `entry` once HAProxy is seen serving each of its TCP
    /// ports (asked of HAProxy, not taken from what was loaded). When it
    /// does not, what HAProxy runs is no longer known: the next load checks
    /// and reloads the whole configuration, repairing it.
    async fn confirm_served(&self, entry: &Entry) -> Result<LoadBalancerStatus, ProviderError> {
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let frontends = self
            .served
            .frontends(&self.settings.admin_socket, generation)
            .await?;
        if let Err(e) = served::check(entry, &frontends) {
            self.served.forget().await;
            if let Ok(mut loaded) = self.loaded.try_lock() {
                loaded.entries = None;
                loaded.served_sha = None;
                loaded.version += 1;
            }
            return Err(e);
        }
        Ok(status_of(entry))
    }

    fn vip_still_used(&self, ip: IpAddr) -> bool {
        self.entries
            .lock()
            .expect("entries lock")
            .values()
            .any(|e| e.vips.contains(&ip))
    }
}

/// Whether `new` differs from `old` in what the runtime API can change
/// alone: the targets.
fn runtime_only(old: &Entry, new: &Entry) -> bool {
    old.vips == new.vips
        && old.options == new.options
        && old.spec.differs_only_in_targets(&new.spec)
}

/// The answer for a change that an applier will load with others: ask
/// again after `after`.
fn pending(after: Duration) -> ProviderError {
    ProviderError::pending(
        after,
        "the change is loaded with others in HAProxy's next reload",
    )
}

/// The status to publish for an entry, and warnings for ports HAProxy
/// cannot serve.
pub fn status_of(entry: &Entry) -> LoadBalancerStatus {
    let mut warnings = Vec::new();
    let ports: Vec<PortStatus> = entry
        .spec
        .listeners
        .iter()
        .map(|l| {
            let error = (l.protocol != Protocol::Tcp).then(|| {
                warnings.push(Warning {
                    reason: reason::UNSUPPORTED_PROTOCOL.into(),
                    message: format!(
                        "port {}/{} is not served: HAProxy load-balances TCP only; the Service's TCP ports work",
                        l.port, l.protocol
                    ),
                });
                reason::UNSUPPORTED_PROTOCOL.to_owned()
            });
            PortStatus {
                port: l.port,
                protocol: l.protocol,
                error,
            }
        })
        .collect();
    if entry.vips.len() < entry.spec.ip_families.len() {
        let have: Vec<IpFamily> = entry.vips.iter().map(|ip| IpFamily::of(*ip)).collect();
        let lacking: Vec<&str> = entry
            .spec
            .ip_families
            .iter()
            .filter(|f| !have.contains(f))
            .map(|f| f.as_str())
            .collect();
        warnings.push(Warning {
            reason: reason::POOL_EXHAUSTED.into(),
            message: format!(
                "no {} address in the HAProxy address pool was free: the dual-stack Service \
                 (spec.ipFamilyPolicy: PreferDualStack) is served on {} only; \
                 with RequireDualStack it would wait for one",
                lacking.join(" or "),
                entry
                    .vips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    LoadBalancerStatus {
        ingress: entry
            .vips
            .iter()
            .map(|&vip| Ingress {
                address: Address::Ip(vip),
                ip_mode: Some(IpMode::Proxy),
                ports: ports.clone(),
            })
            .collect(),
        warnings,
    }
}

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
        if self.already_loaded(&spec.lb, &entry, previous.as_ref())? {
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
            self.check_binds(&entry, previous.as_ref()).await?;
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
        let mut loaded = self.loaded.lock().await;
        // Diff against what HAProxy runs; anything else is a reload.
        let running_old = loaded
            .entries
            .as_ref()
            .and_then(|r| r.get(&spec.lb))
            .filter(|old| **old == entry || runtime_only(old, &entry))
            .cloned();
        let Some(old) = running_old else {
            drop(loaded);
            return self
                .load_with_others(&spec.lb, &entry, previous)
                .await
                .map(|()| Vec::new());
        };
        if old == entry {
            return Ok(Vec::new());
        }
        match self.apply_runtime(&mut loaded, &old, &entry).await {
            Ok(true) => {
                drop(loaded);
                self.flush_soon();
                Ok(Vec::new())
            }
            // No spare node check left: a reload (rendering fresh spares),
            // loaded together with every other Service's.
            Ok(false) => {
                drop(loaded);
                self.load_with_others(&spec.lb, &entry, previous)
                    .await
                    .map(|()| Vec::new())
            }
            Err(e) => {
                tracing::warn!(service = %spec.lb.key, error = %e, "runtime API update failed; reloading instead");
                drop(loaded);
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
        // (A refusal of an earlier change to it, not of its removal, is moot.)
        let refused = self.failed.lock().expect("failed lock").remove(lb);
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
            self.changed_at.lock().expect("changed_at lock").remove(lb);
            return Ok(());
        }
        let done = match self.is_removed(lb) {
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
        self.changed_at.lock().expect("changed_at lock").remove(lb);
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
                    if let Err(e) = self.check_binds(&entry, None).await {
                        tracing::warn!(service = %spec.lb.key, error = %e, "not serving this Service until its port is free");
                        self.roll_back(&spec.lb, None);
                        self.failed
                            .lock()
                            .expect("failed lock")
                            .insert(spec.lb.clone(), (e, None));
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
