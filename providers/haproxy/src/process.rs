//! The HAProxy process: validate a configuration, install it atomically,
//! reload through the master CLI one reload at a time, and (in managed
//! mode) start and supervise `haproxy -W` ourselves.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferrylb_model::ProviderError;
use ferrylb_model::reason;
use tokio::process::Child;
use tokio::sync::Mutex;

mod master;
mod run;

use master::{alerts, master_pid, parse_master_line};
pub use master::{master_batch, master_command, old_workers, serving};
pub(crate) use run::still_running;
pub use run::{Streak, signal};
use run::{spawn, supervise};

pub use crate::files::write_atomically;
pub(crate) use crate::files::{Checker, check, install_checked, sibling};

/// Who runs HAProxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMode {
    /// FerryLB starts `haproxy -W -S <master socket> -f <config>` and
    /// restarts it if it dies.
    Managed,
    /// Someone else runs HAProxy in master-worker mode with a master socket;
    /// FerryLB writes the configuration and reloads through that socket.
    External,
}

/// Where the HAProxy binary, configuration and master socket are.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    pub binary: PathBuf,
    pub config_path: PathBuf,
    pub master_socket: PathBuf,
    pub mode: RunMode,
}

/// The HAProxy process FerryLB drives.
pub struct Process {
    settings: ProcessSettings,
    child: Arc<Mutex<Option<Child>>>,
    supervisor: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How `haproxy -c` judges a configuration.
fn checker(settings: &ProcessSettings) -> Checker<'_> {
    Checker {
        program: &settings.binary,
        // Not `-q`: it silences the alerts a user needs to see.
        flag: "-c",
        file_flag: "-f",
        name: "haproxy",
        rejected_reason: reason::INVALID_HAPROXY_CONFIGURATION,
        io_error: unavailable,
        said: alerts,
    }
}

/// Checks `sections` (the global ones and some Services') with `haproxy
/// -c`, beside the configuration but apart from the file a load checks, so
/// both may run at once. Installs nothing.
pub(crate) async fn check_sections(
    settings: &ProcessSettings,
    sections: &str,
) -> Result<(), ProviderError> {
    let checked = crate::files::check_as(
        &checker(settings),
        &settings.config_path,
        "sections",
        sections,
    )
    .await?;
    let _ = tokio::fs::remove_file(&checked).await;
    Ok(())
}

pub(crate) fn unavailable(msg: String) -> ProviderError {
    ProviderError::transient(reason::HAPROXY_UNAVAILABLE, msg)
}

impl Process {
    pub fn new(settings: ProcessSettings) -> Self {
        Self {
            settings,
            child: Arc::default(),
            supervisor: std::sync::Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &ProcessSettings {
        &self.settings
    }

    /// Checks `text` with `haproxy -c` and, when valid, renames it into place
    /// atomically. An invalid configuration is kept beside the live one as
    /// `<config>.rejected` for inspection; the live one stays untouched.
    pub async fn install(&self, text: &str) -> Result<(), ProviderError> {
        let path = &self.settings.config_path;
        let checked = check(&self.checker(), path, text).await?;
        self.keep_last_good().await;
        tokio::fs::rename(&checked, path)
            .await
            .map_err(|e| unavailable(format!("installing {}: {e}", path.display())))
    }

    /// Installs `text`, the whole configuration, having checked only
    /// `changed` with `haproxy -c`: the global sections and the Services
    /// that changed since HAProxy last loaded a configuration. The others
    /// were checked then, and the master parses the whole file again when
    /// it reloads, keeping the previous configuration serving if that
    /// fails (the file is then put back, see [`Self::reload`]). At 1,000
    /// Services, a burst of 100 is checked in a tenth of the time.
    pub async fn install_changed(&self, text: &str, changed: &str) -> Result<(), ProviderError> {
        let path = &self.settings.config_path;
        let checked = check(&self.checker(), path, changed).await?;
        let _ = tokio::fs::remove_file(&checked).await;
        self.keep_last_good().await;
        write_atomically(path, text).await
    }

    fn checker(&self) -> Checker<'_> {
        checker(&self.settings)
    }

    /// Keeps the installed configuration as `<config>.good` (a hard link)
    /// until the one replacing it is loaded.
    async fn keep_last_good(&self) {
        let path = &self.settings.config_path;
        let good = sibling(path, "good");
        let _ = tokio::fs::remove_file(&good).await;
        // Absent before the first configuration.
        let _ = tokio::fs::hard_link(path, &good).await;
    }

    /// After a reload HAProxy refused: the file goes back to what it
    /// serves, so that a restart of HAProxy serves it too; the refused one
    /// is kept as `<config>.rejected`.
    async fn restore_last_good(&self) {
        let path = &self.settings.config_path;
        let good = sibling(path, "good");
        if !tokio::fs::try_exists(&good).await.unwrap_or(false) {
            return;
        }
        let _ = tokio::fs::rename(path, sibling(path, "rejected")).await;
        if let Err(e) = tokio::fs::rename(&good, path).await {
            tracing::warn!(path = %path.display(), error = %e, "putting back the configuration haproxy serves failed");
        }
    }

    /// Writes `text` into place atomically without validating it: for state
    /// HAProxy already runs (applied through the runtime API), so that the
    /// next reload or restart keeps it.
    pub async fn write(&self, text: &str) -> Result<(), ProviderError> {
        write_atomically(&self.settings.config_path, text).await
    }

    /// Makes the running HAProxy load the installed configuration: starts it
    /// in managed mode when it is not running, otherwise reloads through the
    /// master CLI and waits until the master confirms the reload.
    pub async fn reload(&self) -> Result<(), ProviderError> {
        if self.settings.mode == RunMode::Managed && !self.running().await {
            // An HAProxy answering on our master socket was started by an
            // earlier FerryLB on this directory (killed before it could stop
            // it): adopt it, so that there is never a second one beside it.
            match self.reload_counters().await {
                Ok(_) => {
                    tracing::info!(
                        socket = %self.settings.master_socket.display(),
                        "adopting the haproxy an earlier run started"
                    );
                    // Supervised as one started here: if it dies, it is
                    // started again.
                    self.supervise();
                }
                Err(_) => return self.start().await,
            }
        }
        let before = match self.settings.mode {
            RunMode::Managed => self.reload_counters().await?,
            // The HAProxy beside FerryLB (the chart's sidecar) starts once
            // the configuration exists: give it a moment when it has just
            // been written.
            RunMode::External => self.wait_for_master(Duration::from_secs(10)).await?,
        };
        // The master re-executes itself on reload and answers nothing on 2.6;
        // the counters in `show proc` tell whether it worked.
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            master_command(&self.settings.master_socket, "reload"),
        )
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok(now) = self.reload_counters().await
                && now.0 > before.0
            {
                if now.1 > before.1 {
                    self.restore_last_good().await;
                    return Err(ProviderError::transient(
                        "HAProxyReloadFailed",
                        "haproxy failed to load the new configuration; the previous one keeps serving (see haproxy's log)",
                    ));
                }
                let _ = tokio::fs::remove_file(sibling(&self.settings.config_path, "good")).await;
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(unavailable(
                    "haproxy did not confirm the reload within 15s".into(),
                ));
            }
        }
    }

    /// [`Self::reload_counters`], waiting up to `limit` for the master
    /// socket to answer.
    async fn wait_for_master(&self, limit: Duration) -> Result<(u64, u64), ProviderError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.reload_counters().await {
                Ok(c) => return Ok(c),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// (reloads, failed reloads) from the master's `show proc` line.
    pub async fn reload_counters(&self) -> Result<(u64, u64), ProviderError> {
        let out = master_command(&self.settings.master_socket, "show proc")
            .await
            .map_err(|e| {
                unavailable(format!(
                    "haproxy master socket {}: {e}",
                    self.settings.master_socket.display()
                ))
            })?;
        parse_master_line(&out)
            .ok_or_else(|| unavailable(format!("unexpected `show proc` output: {out:?}")))
    }

    async fn running(&self) -> bool {
        let mut child = self.child.lock().await;
        match child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts `haproxy -W` on the installed configuration and waits for its
    /// master socket; a supervisor restarts it if it exits.
    async fn start(&self) -> Result<(), ProviderError> {
        spawn(&self.settings, &self.child).await?;
        self.supervise();
        Ok(())
    }

    /// Starts the supervisor, once.
    fn supervise(&self) {
        let mut sup = self.supervisor.lock().expect("supervisor lock");
        if sup.is_none() {
            let settings = self.settings.clone();
            let child = self.child.clone();
            *sup = Some(tokio::spawn(supervise(settings, child)));
        }
    }

    /// Stops a managed HAProxy (and its supervisor), the one it started or
    /// the one it adopted.
    pub async fn stop(&self) {
        if let Some(s) = self.supervisor.lock().expect("supervisor lock").take() {
            s.abort();
        }
        if let Some(mut c) = self.child.lock().await.take() {
            let _ = c.kill().await;
            return;
        }
        if self.settings.mode != RunMode::Managed {
            return;
        }
        let master = master_command(&self.settings.master_socket, "show proc")
            .await
            .ok()
            .and_then(|out| master_pid(&out));
        if let Some(pid) = master {
            tracing::info!(pid, "stopping the adopted haproxy");
            if let Err(e) = signal("TERM", pid) {
                tracing::warn!(pid, error = %e, "stopping the adopted haproxy failed");
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(s) = self.supervisor.lock().expect("supervisor lock").take() {
            s.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[tokio::test]
    async fn a_rejected_configuration_says_what_haproxy_said() {
        let dir = std::env::temp_dir().join(format!("ferrylb-process-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = Process::new(ProcessSettings {
            binary: "haproxy".into(),
            config_path: dir.join("haproxy.cfg"),
            master_socket: dir.join("master.sock"),
            mode: RunMode::External,
        });
        let err = p
            .install("global\ndefaults\n  mode tcp\nfrontend f\n  bind 127.0.0.1:1\n  bogus-keyword on\n")
            .await
            .expect_err("haproxy must reject an unknown keyword");
        assert!(
            err.message.contains("[ALERT]") && err.message.contains("bogus-keyword"),
            "{}",
            err.message
        );
        assert!(
            !dir.join("haproxy.cfg").exists(),
            "a rejected file was installed"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A directory for a managed haproxy, its settings, a free port and a
    /// configuration listening on it.
    fn managed(name: &str) -> (PathBuf, ProcessSettings, u16, String) {
        let dir = std::env::temp_dir().join(format!("ferrylb-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let settings = ProcessSettings {
            binary: "haproxy".into(),
            config_path: dir.join("haproxy.cfg"),
            master_socket: dir.join("master.sock"),
            mode: RunMode::Managed,
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = format!(
            "global\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 1s\n  timeout server 1s\n\
             frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\nbackend b\n  server s 127.0.0.1:9\n"
        );
        (dir, settings, port, cfg)
    }

    #[tokio::test]
    async fn a_configuration_haproxy_refuses_to_reload_is_put_back_while_the_old_one_serves() {
        let (dir, settings, port, good) = managed("refused");
        let config = settings.config_path.clone();
        let p = Process::new(settings);
        p.install(&good).await.unwrap();
        p.reload().await.unwrap();
        let serving = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        assert!(serving());

        // The part checked is fine; the whole is not (what a section the
        // check did not see could do).
        let bad = format!("{good}frontend g\n  bind 127.0.0.1:{port}\n  bogus-keyword on\n");
        p.install_changed(&bad, &good).await.unwrap();
        let err = p.reload().await.expect_err("haproxy must refuse the whole");
        assert_eq!(err.reason, "HAProxyReloadFailed");
        assert_eq!(std::fs::read_to_string(&config).unwrap(), good);
        assert_eq!(
            std::fs::read_to_string(sibling(&config, "rejected")).unwrap(),
            bad
        );
        assert!(serving(), "the previous configuration stopped serving");

        // And the next good one loads.
        let next = good.replace("127.0.0.1:9", "127.0.0.1:10");
        p.install_changed(&next, &next).await.unwrap();
        p.reload().await.unwrap();
        assert!(!sibling(&config, "good").exists());
        p.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An HAProxy an earlier run started (killed before it could stop it)
    /// is adopted, and when it dies it is started again, as one started
    /// here is.
    #[tokio::test]
    async fn an_adopted_haproxy_that_dies_is_started_again() {
        let (dir, settings, port, cfg) = managed("adopt");
        // The earlier run: its haproxy outlives it.
        let earlier = Process::new(settings.clone());
        earlier.install(&cfg).await.unwrap();
        earlier.reload().await.unwrap();
        let orphan = earlier.child.lock().await.take().unwrap();
        drop(earlier);
        let first = master_pid(
            &master_command(&settings.master_socket, "show proc")
                .await
                .unwrap(),
        )
        .unwrap();

        let p = Process::new(settings.clone());
        p.reload().await.expect("adopting the running haproxy");
        signal("KILL", first).unwrap();
        let mut orphan = orphan;
        let _ = orphan.wait().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let again = master_command(&settings.master_socket, "show proc")
                .await
                .ok()
                .and_then(|out| master_pid(&out))
                .filter(|pid| *pid != first);
            if again.is_some() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the adopted haproxy was not started again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn siblings_sit_next_to_the_config() {
        assert_eq!(
            sibling(Path::new("/etc/haproxy/ferrylb.cfg"), "new"),
            PathBuf::from("/etc/haproxy/ferrylb.cfg.new")
        );
    }
}
