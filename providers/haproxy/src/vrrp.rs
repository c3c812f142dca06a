//! VIPs owned by VRRP: FerryLB renders the configuration of a keepalived
//! it runs beside HAProxy, from the VIPs it serves and the other replicas'
//! node addresses, and keepalived moves the VIPs between LB hosts on its
//! own, in fractions of a second, with or without the API server.
//!
//! Every replica runs the same instance (`state BACKUP`, the same priority,
//! `nopreempt`: a replica coming back never takes VIPs from a healthy one),
//! with unicast adverts to its peers, so that it works where multicast does
//! not. FerryLB asks the local HAProxy every second whether a worker serves
//! and writes the answer to a file keepalived tracks (it reacts to the
//! change at once): two failed answers in a row put the instance in FAULT,
//! and a peer takes the VIPs. Each change is validated with `keepalived -t`, which must
//! be clean (a reload applies even a broken file), and applied by SIGHUP,
//! which keepalived applies by difference: unchanged VIPs are not touched.
//!
//! The instance's state (MASTER, BACKUP, FAULT) comes from keepalived's
//! notification FIFO ([`notify`]), its documented interface, never from
//! its log text.
//!
//! A planned stop (`stop`) ends keepalived first: it sends a priority-0
//! advert and the peer takes the VIPs over at once, while this host's
//! HAProxy still serves what it holds. A master pauses new handshakes to
//! its VIPs for a moment before that ([`handover`]), so that what it
//! accepted finishes before the VIPs move.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferrylb_model::ProviderError;
use ferrylb_model::reason;
use tokio::process::Child;

use crate::process::sibling;

mod config;
pub mod handover;
pub mod notify;
mod supervise;

use supervise::{stop_child, supervise, watch_haproxy};

#[cfg(test)]
use config::{INSTANCE, advert, priority};
pub use config::{health_file, render};

/// How keepalived is run and what it announces.
#[derive(Debug, Clone)]
pub struct VrrpSettings {
    /// The keepalived binary.
    pub binary: PathBuf,
    /// The configuration file FerryLB owns; pid files sit beside it.
    pub config_path: PathBuf,
    /// The interface VIPs are added to and adverts are sent on.
    pub interface: String,
    /// `virtual_router_id`: unique among VRRP routers on the segment.
    pub router_id: u8,
    /// This replica's priority (all replicas the same by default).
    pub priority: u8,
    /// Time between adverts; a backup takes over after about three missed.
    pub advert_interval: Duration,
    /// This host's address for unicast adverts (`unicast_src_ip`); `None`
    /// sends multicast adverts.
    pub source: Option<IpAddr>,
    /// The local HAProxy's master socket, asked once a second whether a
    /// worker serves.
    pub master_socket: PathBuf,
    /// Names this host in keepalived's logs.
    pub name: String,
    /// Peers are learnt at run time ([`Keepalived::set_peers`]): keepalived
    /// waits for them, since started without them it would hear no advert,
    /// declare itself master beside the real one, and pull clients to it.
    pub await_peers: bool,
    /// Before a planned stop, a master drops new TCP handshakes to its VIPs
    /// for this long, so that the connections it accepted finish before the
    /// VIPs move (the clients' SYNs come again a second later, to the new
    /// holder); zero hands over at once.
    pub handover_pause: Duration,
    /// The `nft` binary that pauses the handshakes.
    pub nft_binary: PathBuf,
}

/// What keepalived reports, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VrrpStatus {
    /// MASTER, BACKUP, FAULT, or STOPPED when keepalived does not run.
    pub state: String,
    /// How many times the instance entered each state.
    pub transitions: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Inner {
    vips: BTreeSet<IpAddr>,
    peers: BTreeSet<IpAddr>,
    peers_known: bool,
    /// A pause left by an earlier process has been cleared.
    pause_cleared: bool,
    /// Stopped for good: this replica is going away.
    stopped: bool,
    /// The configuration keepalived runs, `None` when it does not run.
    applied: Option<String>,
    child: Option<Child>,
}

impl Inner {
    /// Whether the keepalived started last still runs.
    fn running(&mut self) -> bool {
        crate::process::still_running(self.child.as_mut())
    }
}

/// The keepalived FerryLB runs.
pub struct Keepalived {
    settings: VrrpSettings,
    inner: tokio::sync::Mutex<Inner>,
    status: Arc<std::sync::Mutex<VrrpStatus>>,
    supervisor: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
    /// Reads keepalived's notifications ([`notify`]).
    listener: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

fn failed(msg: String) -> ProviderError {
    ProviderError::transient(reason::VRRP_FAILED, msg)
}

impl Keepalived {
    pub fn new(settings: VrrpSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            inner: tokio::sync::Mutex::default(),
            status: Arc::new(std::sync::Mutex::new(VrrpStatus {
                state: "STOPPED".into(),
                ..VrrpStatus::default()
            })),
            supervisor: std::sync::OnceLock::new(),
            listener: std::sync::OnceLock::new(),
        })
    }

    pub fn settings(&self) -> &VrrpSettings {
        &self.settings
    }

    /// The VIPs keepalived is told to announce.
    pub async fn vips(&self) -> BTreeSet<IpAddr> {
        self.inner.lock().await.vips.clone()
    }

    /// The instance's state and its history.
    pub fn status(&self) -> VrrpStatus {
        self.status.lock().expect("vrrp status lock").clone()
    }

    /// Announces exactly `vips` from now on.
    ///
    /// # Errors
    /// When keepalived rejects the configuration or cannot be started.
    pub async fn set_vips(self: &Arc<Self>, vips: BTreeSet<IpAddr>) -> Result<(), ProviderError> {
        let mut inner = self.inner.lock().await;
        inner.vips = vips;
        self.apply(&mut inner).await
    }

    /// Makes sure `ip` is announced (a no-op when it is and keepalived
    /// runs).
    ///
    /// # Errors
    /// As [`Self::set_vips`].
    pub async fn include(self: &Arc<Self>, ip: IpAddr) -> Result<(), ProviderError> {
        let mut inner = self.inner.lock().await;
        let running = inner.running();
        if inner.vips.contains(&ip) && (running || inner.applied.is_none()) {
            return Ok(());
        }
        inner.vips.insert(ip);
        self.apply(&mut inner).await
    }

    /// Sends adverts to exactly `peers` from now on.
    ///
    /// # Errors
    /// As [`Self::set_vips`].
    pub async fn set_peers(self: &Arc<Self>, peers: BTreeSet<IpAddr>) -> Result<(), ProviderError> {
        let mut inner = self.inner.lock().await;
        inner.peers = peers;
        inner.peers_known = true;
        self.apply(&mut inner).await
    }

    async fn apply(self: &Arc<Self>, inner: &mut Inner) -> Result<(), ProviderError> {
        if inner.stopped {
            return Ok(());
        }
        if self.settings.await_peers && !inner.peers_known {
            tracing::debug!("keepalived waits for the list of peers");
            return Ok(());
        }
        let text = render(&self.settings, &inner.vips, &inner.peers);
        let running = inner.running();
        if text == inner.applied && (running || text.is_none()) {
            return Ok(());
        }
        let Some(text) = text else {
            if !inner.vips.is_empty() {
                tracing::warn!(
                    vips = ?inner.vips,
                    "no VIP of the nodes' address family to announce: keepalived cannot run, so these VIPs are not moved by VRRP"
                );
            }
            stop_child(inner).await;
            inner.applied = None;
            self.set_state("STOPPED");
            return Ok(());
        };
        self.install(&text).await?;
        match inner.child.as_ref().and_then(Child::id) {
            Some(pid) if running => signal("HUP", pid).await?,
            _ => {
                if !inner.pause_cleared {
                    self.clear_pause().await;
                    inner.pause_cleared = true;
                }
                inner.child = Some(self.spawn().await?);
                self.supervisor.get_or_init(|| {
                    let weak = Arc::downgrade(self);
                    tokio::spawn(async move {
                        tokio::join!(supervise(weak.clone()), watch_haproxy(weak));
                    })
                });
            }
        }
        inner.applied = Some(text);
        Ok(())
    }

    /// Validates `text` with `keepalived -t` (clean means exit code 0) and
    /// renames it into place; a rejected file is kept as `.rejected`.
    async fn install(&self, text: &str) -> Result<(), ProviderError> {
        let checker = crate::process::Checker {
            program: &self.settings.binary,
            flag: "-t",
            file_flag: "-f",
            name: "keepalived",
            rejected_reason: reason::INVALID_KEEPALIVED_CONFIGURATION,
            io_error: failed,
            said: keepalived_said,
        };
        crate::process::install_checked(&checker, &self.settings.config_path, text).await
    }

    fn set_state(&self, state: &str) {
        record(&self.status, state);
    }

    /// Stops keepalived for good: its VRRP child sends a priority-0 advert,
    /// and a peer takes the VIPs over at once. A master pauses new
    /// handshakes to its VIPs first, for `handover_pause`. Later changes do
    /// not start keepalived again.
    pub async fn stop(&self) {
        if let Some(s) = self.supervisor.get() {
            s.abort();
        }
        let mut inner = self.inner.lock().await;
        inner.stopped = true;
        let paused = self.pause_before_handover(&mut inner).await;
        stop_child(&mut inner).await;
        if paused {
            self.clear_pause().await;
        }
        inner.applied = None;
        self.set_state("STOPPED");
    }

    /// Drops new handshakes to the VIPs this master holds and waits
    /// `handover_pause` for the accepted connections to finish; `true` when
    /// the pause is in place (and must be cleared).
    async fn pause_before_handover(&self, inner: &mut Inner) -> bool {
        let pause = self.settings.handover_pause;
        if pause.is_zero()
            || inner.vips.is_empty()
            || !inner.running()
            || self.status().state != "MASTER"
        {
            return false;
        }
        if let Err(e) = self.nft().pause(&inner.vips).await {
            tracing::warn!(error = %e, "pausing new connections before the handover failed; handing the VIPs over at once");
            return false;
        }
        tracing::info!(
            pause = ?pause,
            vips = inner.vips.len(),
            "new connections to the VIPs paused; handing them over once the accepted ones finish"
        );
        tokio::time::sleep(pause).await;
        true
    }

    fn nft(&self) -> handover::Nft {
        handover::Nft::new(self.settings.nft_binary.clone())
    }

    /// Removes a handover pause (this process's, or one a replica killed
    /// during its handover left behind).
    async fn clear_pause(&self) {
        if self.settings.handover_pause.is_zero() {
            return;
        }
        if let Err(e) = self.nft().resume().await {
            tracing::warn!(error = %e, "clearing the handover pause failed; planned handovers may drop connections");
        }
    }
}

fn record(status: &std::sync::Mutex<VrrpStatus>, state: &str) {
    let mut s = status.lock().expect("vrrp status lock");
    if s.state != state {
        s.state = state.to_owned();
        *s.transitions.entry(state.to_owned()).or_default() += 1;
    }
}

/// Passes keepalived's output to FerryLB's log (the state comes from its
/// notifications, [`notify`], not from this text).
async fn relay(stream: impl tokio::io::AsyncRead + Unpin) {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(target: "keepalived", "{line}");
    }
}

async fn signal(name: &str, pid: u32) -> Result<(), ProviderError> {
    crate::process::signal(name, pid).map_err(failed)
}

fn is_keepalived(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "keepalived")
}

fn pid_files(config: &Path) -> (PathBuf, PathBuf) {
    (sibling(config, "pid"), sibling(config, "vrrp.pid"))
}

/// keepalived's complaint: its first five lines, 300 bytes each at most.
fn keepalived_said(stdout: &[u8], stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .chain(String::from_utf8_lossy(stdout).lines())
        .take(5)
        .map(|l| l.chars().take(300).collect::<String>())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests;
