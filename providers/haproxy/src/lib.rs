//! FerryLB's HAProxy provider: each Service gets a VIP from a pool, and one
//! HAProxy whose configuration FerryLB owns forwards every VIP:port to all
//! eligible nodes' `InternalIP:nodePort`.
//!
//! Configuration changes are rendered whole, validated with `haproxy -c`,
//! installed atomically and loaded with a hitless master-worker reload, one
//! at a time; changes arriving during a reload are coalesced into the next.
//!
//! # Modules
//! ```text
//! provider   LoadBalancerProvider: ensure, update_targets, ensure_deleted, ...
//!   |-- planning   spec -> Entry: VIP (alloc, pool, vip), options, free ports
//!   |-- apply      bursts: the desired state, one applier, one reload for all
//!   |     |-- burst     the protocol's state machine: pending, carried,
//!   |     |             applied, refused (pure, table-tested)
//!   |     `-- loading   load with the others, roll back what was refused,
//!   |                   confirm what HAProxy serves (served)
//!   |-- targets    target-only changes through the runtime API (runtime),
//!   |              applied together in few lines; the file written, then
//!   |              checked, once they settle
//!   |     |-- queue      who applies the queued changes; the others hear
//!   |     |              "pending" and ask again (pure, unit-tested)
//!   |     `-- drain      leaving nodes' servers drained, then removed
//!   `-- status     the status a reconcile publishes, or "pending"
//! render      Entry list -> haproxy.cfg text (pure)
//! process     haproxy -c, the atomic install (files), the master CLI, reloads
//! holding     the VIPs on the interface: leader, hand-over, release
//! follower    a follower serving what the leader provisioned
//! vrrp, bgp   keepalived or BIRD owning the VIPs instead
//! ```
//!
//! # Expected flow (one Service's change)
//! 1. `provider::ensure` → `planning::plan`: the entry (VIPs, typed options)
//!    goes into the desired state; a target-only change goes to
//!    `targets::apply_targets` instead (no reload): the first asker applies
//!    the queue (`queue::RuntimeQueue`), batch after batch until it is
//!    empty, and `targets::plan_runtime` decides runtime API or reload for
//!    each change; an asker whose change waits behind a batch is told
//!    "pending" at once, so that a node change reaching 2,000 Services is a
//!    few large batches, not one per reconcile slot.
//! 2. `apply::apply_or_join`: the first reconcile of a burst becomes the
//!    applier (`burst::Bursts::begin`); the others are told "pending" and
//!    ask again, and what they are told comes from `burst::Bursts::state`.
//! 3. `apply::load`: render, check what changed since the last check,
//!    install, reload through the master CLI; then the VIPs go up.
//! 4. The reconcile asking again finds its entry loaded, and
//!    `loading::confirm_served` asks HAProxy whether each port's frontend
//!    is open before the status is published.
//!
//! # Guarantees
//! - Nothing is published as served that HAProxy's current worker does
//!   not serve; a refused burst is retried one change at a time.
//! - A VIP is on the interface only while HAProxy listens on it.
//! - A leaving node's connections finish or reach their drain timeout
//!   before its server is removed.
#![forbid(unsafe_code)]

mod alloc;
mod apply;
pub mod bgp;
mod burst;
pub mod drain;
mod files;
mod follower;
mod holding;
mod loading;
pub mod options;
mod planning;
pub mod pool;
pub mod process;
mod provider;
mod queue;
pub mod render;
mod runtime;
mod served;
mod status;
mod targets;
#[cfg(test)]
mod testns;
pub mod vip;
pub mod vrrp;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrylb_model::{LoadBalancerRef, ProviderError};

use crate::pool::AddressPool;
use crate::process::{Process, ProcessSettings};
use crate::render::Entry;
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
    /// See [`render::GlobalSettings::node_check_port`].
    pub node_check_port: Option<u16>,
    /// See [`render::GlobalSettings::threads`].
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
    /// Target-only changes waiting for the runtime API (see
    /// `targets::apply_targets`).
    runtime_queue: std::sync::Mutex<queue::RuntimeQueue>,
    /// Wakes the task that writes runtime API changes to the file.
    flush: Arc<tokio::sync::Notify>,
    flusher: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
    /// The burst protocol's state: which changes wait, which the running
    /// burst carries, which are loaded or refused (see [`burst`]).
    bursts: std::sync::Mutex<burst::Bursts>,
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
    /// Servers of leaving nodes, draining (see [`drain`]). Changed only
    /// while `loaded` is held too (lock order: `loaded`, then this), so it
    /// stays true to what HAProxy runs; read without `loaded`.
    drains: std::sync::Mutex<BTreeMap<drain::ServerKey, drain::Drain>>,
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
}

impl Loaded {
    /// What HAProxy runs is no longer known: the next load checks and
    /// reloads the whole configuration, making it certain.
    fn forget_running(&mut self) {
        self.entries = None;
        self.served_sha = None;
        self.version += 1;
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
            runtime_queue: std::sync::Mutex::default(),
            flusher: std::sync::OnceLock::new(),
            bursts: std::sync::Mutex::default(),
            served: served::ServedView::default(),
            deleting: std::sync::Mutex::default(),
            drains: std::sync::Mutex::default(),
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

    /// How many times HAProxy's master has reloaded, and how many of those
    /// failed (from the master CLI's `show proc`).
    /// How long the last load took: checking what changed, installing,
    /// reloading.
    pub fn last_load_time(&self) -> Duration {
        *self.last_load.lock().expect("last_load lock")
    }

    pub async fn reload_counters(&self) -> Result<(u64, u64), ProviderError> {
        self.process.reload_counters().await
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
}

pub use status::status_of;
