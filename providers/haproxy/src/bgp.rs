//! VIPs announced over BGP: every replica runs BIRD 2 beside its HAProxy
//! and announces, to the user's routers, each VIP its own HAProxy serves,
//! as a /32 or /128. The routers spread connections over every announcing
//! host (ECMP) and BFD tells them within a fraction of a second when one
//! dies: active-active, with no leader and no API server in the data path.
//!
//! FerryLB renders BIRD's configuration from typed values ([`config`]),
//! has BIRD check it (`bird -p`) before it replaces the running one, and
//! applies it with `birdc configure`, which keeps sessions whose settings
//! did not change. BIRD is supervised: started again when it exits.
//!
//! What is announced is what is served: a VIP is announced only once the
//! HAProxy on this host has loaded its binds (the provider hands the set
//! over after each load), every route is withdrawn while the local HAProxy
//! has no serving worker (two failed answers in a row, asked once a
//! second), and a planned stop withdraws every route first and lets the
//! routers move new connections before BIRD and HAProxy stop. The VIPs
//! are put on `lo` so that the host takes the packets routed to it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferrylb_model::ProviderError;
use ferrylb_model::reason;
use tokio::process::{Child, Command};

use crate::process::sibling;
use crate::vip::VipBinder;

pub mod config;
mod handover;
mod show;
mod supervise;

use show::bird_said;
#[cfg(test)]
use show::{bfd_states, session_state};
use supervise::{supervise, watch_haproxy};

pub use config::{BirdConfig, Community, Password, Peer};

/// How BIRD is run and what it is configured from.
#[derive(Debug, Clone)]
pub struct BgpSettings {
    /// The `bird` and `birdc` binaries.
    pub bird: PathBuf,
    pub birdc: PathBuf,
    /// The `ip` binary, for the VIPs on `lo`.
    pub ip: PathBuf,
    /// The configuration file FerryLB owns; the control socket and pid file
    /// sit beside it.
    pub config_path: PathBuf,
    pub config: BirdConfig,
    /// The local HAProxy's master socket, asked once a second whether a
    /// worker serves (`None`: the caller tells, [`Bird::set_serving`]).
    pub master_socket: Option<PathBuf>,
    /// On a planned stop, how long the routes are withdrawn before BIRD
    /// stops (the routers move new connections meanwhile).
    pub withdraw_pause: Duration,
    /// On a planned stop, new TCP handshakes to the VIPs are dropped for
    /// this long before the routes are withdrawn, so that the connections
    /// this host accepted just before finish while their packets still
    /// reach it; the clients' SYNs come again a second later, and the
    /// routers send them to the hosts that stay. Zero withdraws at once.
    pub handover_pause: Duration,
    /// The `nft` binary that drops the handshakes.
    pub nft: PathBuf,
}

/// What BIRD reports, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BgpStatus {
    /// Each peer's session state as BIRD names it (`Established`,
    /// `Active`, `Connect` …), by peer address.
    pub sessions: BTreeMap<IpAddr, String>,
    /// Each BFD session's state (`Up`, `Down`, `Init` …), by peer address.
    pub bfd: BTreeMap<IpAddr, String>,
    /// Routes announced now (zero while withdrawn).
    pub announced: usize,
    /// The VIPs this host's HAProxy serves (announced unless withdrawn).
    pub serving: usize,
    /// Whether BIRD runs.
    pub running: bool,
}

impl BgpStatus {
    /// Why the routers send this host no traffic, if they do not: BIRD not
    /// running, no session established, or the VIPs it serves withdrawn.
    /// The replica is Ready only without one, so a rolling update replaces
    /// the next replica only once this one carries its share (a router can
    /// keep a peer out for a while after a session failed).
    #[must_use]
    pub fn not_carrying(&self) -> Option<String> {
        if !self.running {
            return Some("BGP: BIRD is not running".into());
        }
        if !self.sessions.values().any(|s| s == "Established") {
            let states: Vec<String> = self
                .sessions
                .iter()
                .map(|(peer, state)| format!("{peer} {state}"))
                .collect();
            return Some(format!(
                "BGP: no session established ({})",
                if states.is_empty() {
                    "none reported".to_owned()
                } else {
                    states.join(", ")
                }
            ));
        }
        if self.serving > 0 && self.announced == 0 {
            return Some(format!(
                "BGP: the {} VIPs served here are withdrawn",
                self.serving
            ));
        }
        None
    }
}

#[derive(Default)]
struct Inner {
    /// The VIPs HAProxy serves here.
    vips: BTreeSet<IpAddr>,
    /// Whether the local HAProxy serves (routes withdrawn while not).
    unhealthy: bool,
    /// Stopped for good: routes withdrawn, BIRD not started again.
    stopped: bool,
    /// The configuration BIRD runs.
    applied: Option<String>,
    announced: usize,
    child: Option<Child>,
}

impl Inner {
    fn running(&mut self) -> bool {
        crate::process::still_running(self.child.as_mut())
    }
}

/// The BIRD FerryLB runs.
pub struct Bird {
    settings: BgpSettings,
    lo: VipBinder,
    inner: tokio::sync::Mutex<Inner>,
    supervisor: std::sync::OnceLock<tokio::task::JoinHandle<()>>,
}

fn failed(msg: String) -> ProviderError {
    ProviderError::transient(reason::BGP_FAILED, msg)
}

impl Bird {
    pub fn new(settings: BgpSettings) -> Arc<Self> {
        Arc::new(Self {
            lo: VipBinder::with_program(Some("lo".into()), settings.ip.clone()),
            settings,
            inner: tokio::sync::Mutex::default(),
            supervisor: std::sync::OnceLock::new(),
        })
    }

    pub fn settings(&self) -> &BgpSettings {
        &self.settings
    }

    /// The VIPs this host serves (announced unless withdrawn).
    pub async fn vips(&self) -> BTreeSet<IpAddr> {
        self.inner.lock().await.vips.clone()
    }

    /// Announces exactly `vips` from now on (HAProxy serves their binds).
    ///
    /// # Errors
    /// When BIRD rejects the configuration (what runs is left as it was) or
    /// cannot be started, or a VIP cannot be put on `lo`.
    pub async fn set_vips(self: &Arc<Self>, vips: BTreeSet<IpAddr>) -> Result<(), ProviderError> {
        let mut inner = self.inner.lock().await;
        for ip in vips.difference(&inner.vips) {
            self.lo.add(*ip).await?;
        }
        let gone: Vec<IpAddr> = inner.vips.difference(&vips).copied().collect();
        inner.vips = vips;
        let result = self.apply(&mut inner).await;
        // Taken off `lo` only once no longer announced.
        if result.is_ok() {
            for ip in gone {
                self.lo.remove(ip).await?;
            }
        }
        result
    }

    /// Makes sure `ip` is announced.
    ///
    /// # Errors
    /// As [`Self::set_vips`].
    pub async fn include(self: &Arc<Self>, ip: IpAddr) -> Result<(), ProviderError> {
        let mut vips = self.vips().await;
        let running = self.inner.lock().await.running();
        if vips.contains(&ip) && running {
            return Ok(());
        }
        vips.insert(ip);
        self.set_vips(vips).await
    }

    /// Withdraws every route while the local HAProxy does not serve, and
    /// announces them again once it does.
    ///
    /// # Errors
    /// As [`Self::set_vips`].
    pub async fn set_serving(self: &Arc<Self>, serving: bool) -> Result<(), ProviderError> {
        let mut inner = self.inner.lock().await;
        if inner.unhealthy != serving {
            return Ok(());
        }
        inner.unhealthy = !serving;
        tracing::info!(
            serving,
            "local haproxy health changed: {}",
            if serving {
                "announcing the VIPs again"
            } else {
                "withdrawing every VIP"
            }
        );
        self.apply(&mut inner).await
    }

    async fn apply(self: &Arc<Self>, inner: &mut Inner) -> Result<(), ProviderError> {
        let announce = if inner.stopped || inner.unhealthy {
            BTreeSet::new()
        } else {
            inner.vips.clone()
        };
        let text = config::render(&self.settings.config, &announce);
        let running = inner.running();
        if inner.applied.as_ref() == Some(&text) && running {
            return Ok(());
        }
        if inner.stopped && !running {
            return Ok(());
        }
        self.install(&text).await?;
        if running {
            self.configure().await?;
        } else {
            inner.child = Some(self.spawn().await?);
            self.supervise();
        }
        inner.applied = Some(text);
        inner.announced = announce.len();
        Ok(())
    }

    /// Starts the tasks that restart BIRD and follow HAProxy's health, once.
    fn supervise(self: &Arc<Self>) {
        self.supervisor.get_or_init(|| {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::join!(supervise(weak.clone()), watch_haproxy(weak));
            })
        });
    }

    /// Validates `text` with `bird -p` and renames it into place; a
    /// rejected file is kept as `.rejected`, and what runs is untouched.
    async fn install(&self, text: &str) -> Result<(), ProviderError> {
        let checker = crate::process::Checker {
            program: &self.settings.bird,
            flag: "-p",
            file_flag: "-c",
            name: "bird",
            rejected_reason: reason::INVALID_BIRD_CONFIGURATION,
            io_error: failed,
            said: bird_said,
        };
        crate::process::install_checked(&checker, &self.settings.config_path, text).await
    }

    /// `birdc configure`: BIRD reads the installed file and applies the
    /// difference (sessions whose settings did not change stay up).
    async fn configure(&self) -> Result<(), ProviderError> {
        let out = self.birdc(&["configure"]).await?;
        if out.contains("Reconfigured") || out.contains("Reconfiguration in progress") {
            return Ok(());
        }
        Err(failed(format!(
            "birdc configure: {}",
            bird_said(out.as_bytes(), &[])
        )))
    }

    async fn birdc(&self, args: &[&str]) -> Result<String, ProviderError> {
        let out = Command::new(&self.settings.birdc)
            .arg("-s")
            .arg(control_socket(&self.settings))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| failed(format!("running {}: {e}", self.settings.birdc.display())))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(text)
    }

    /// Withdraws every route, waits `withdraw_pause` for the routers to
    /// move new connections elsewhere, then stops BIRD and takes the VIPs
    /// off `lo`. Later changes do not start BIRD again.
    pub async fn stop(&self) {
        if let Some(s) = self.supervisor.get() {
            s.abort();
        }
        let mut inner = self.inner.lock().await;
        inner.stopped = true;
        let paused = self.pause_before_withdrawal(&inner).await;
        if inner.running() && inner.announced > 0 {
            let text = config::render(&self.settings.config, &BTreeSet::new());
            match self.install(&text).await {
                Ok(()) => match self.configure().await {
                    Ok(()) => {
                        inner.applied = Some(text);
                        inner.announced = 0;
                        tracing::info!(pause = ?self.settings.withdraw_pause, "every VIP withdrawn; stopping BIRD after the pause");
                        tokio::time::sleep(self.settings.withdraw_pause).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "withdrawing the VIPs failed; stopping BIRD at once")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "withdrawing the VIPs failed; stopping BIRD at once")
                }
            }
        }
        if let Some(mut child) = inner.child.take() {
            if let Some(pid) = child.id() {
                let _ = crate::process::signal("TERM", pid);
            }
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        inner.applied = None;
        if paused {
            self.clear_pause().await;
        }
        for ip in std::mem::take(&mut inner.vips) {
            if let Err(e) = self.lo.remove(ip).await {
                tracing::warn!(%ip, error = %e, "taking a VIP off lo failed");
            }
        }
    }
}

fn control_socket(s: &BgpSettings) -> PathBuf {
    sibling(&s.config_path, "ctl")
}

fn is_bird(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "bird")
}

#[cfg(test)]
mod tests;
