//! The HAProxy process: validate a configuration, install it atomically,
//! reload through the master CLI one reload at a time, and (in managed
//! mode) start and supervise `haproxy -W` ourselves.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferrylb_model::ProviderError;
use ferrylb_model::reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

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
        Checker {
            program: &self.settings.binary,
            // Not `-q`: it silences the alerts a user needs to see.
            flag: "-c",
            file_flag: "-f",
            name: "haproxy",
            rejected_reason: reason::INVALID_HAPROXY_CONFIGURATION,
            io_error: unavailable,
            said: alerts,
        }
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

async fn spawn(
    settings: &ProcessSettings,
    slot: &Mutex<Option<Child>>,
) -> Result<(), ProviderError> {
    let _ = tokio::fs::remove_file(&settings.master_socket).await;
    let child = Command::new(&settings.binary)
        .arg("-W")
        .arg("-db")
        .arg("-S")
        .arg(format!("{},mode,600", settings.master_socket.display()))
        .arg("-f")
        .arg(&settings.config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| unavailable(format!("starting {}: {e}", settings.binary.display())))?;
    tracing::info!(pid = child.id(), config = %settings.config_path.display(), "started haproxy");
    let mut child = child;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(relay(out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(relay(err));
    }
    *slot.lock().await = Some(child);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while master_command(&settings.master_socket, "show proc")
        .await
        .is_err()
    {
        if tokio::time::Instant::now() > deadline {
            return Err(unavailable(
                "haproxy's master socket did not come up within 10s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Passes HAProxy's output on to FerryLB's log by weight: alerts as
/// warnings, servers changing state as info, and the rest (each reload has
/// every old proxy print "stopped", thousands of lines at scale) at debug.
/// Reads until HAProxy closes its output, so that it never blocks on a full
/// pipe.
async fn relay(stream: impl tokio::io::AsyncRead + Unpin) {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match classify(&line) {
            Weight::Alert => tracing::warn!(target: "haproxy", "{line}"),
            Weight::State => tracing::info!(target: "haproxy", "{line}"),
            Weight::Noise => tracing::debug!(target: "haproxy", "{line}"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Weight {
    Alert,
    State,
    Noise,
}

fn classify(line: &str) -> Weight {
    if line.contains("[ALERT]") {
        Weight::Alert
    } else if line.contains("[WARNING]")
        && line.contains("Server ")
        && (line.contains(" is DOWN") || line.contains(" is UP"))
    {
        Weight::State
    } else {
        Weight::Noise
    }
}

/// Checks of an adopted HAProxy's master in a row that must go unanswered
/// before it is taken for dead (a reload re-executes the master, which
/// leaves its socket briefly silent).
const ADOPTED_SILENCE: u32 = 3;

/// Restarts a managed HAProxy that exited, with a pause between attempts:
/// the one started here (its exit is seen), or one adopted from an earlier
/// run (no child of ours: it is dead when its master socket stays silent).
async fn supervise(settings: ProcessSettings, slot: Arc<Mutex<Option<Child>>>) {
    let mut silent = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ours = {
            let mut child = slot.lock().await;
            child.as_mut().map(|c| c.try_wait())
        };
        let gone = match ours {
            Some(Ok(Some(status))) => Some(format!("haproxy exited ({status})")),
            Some(_) => None,
            None => {
                if master_command(&settings.master_socket, "show proc")
                    .await
                    .is_ok()
                {
                    silent = 0;
                } else {
                    silent += 1;
                }
                (silent >= ADOPTED_SILENCE)
                    .then(|| "the adopted haproxy's master no longer answers".to_owned())
            }
        };
        if let Some(why) = gone {
            tracing::warn!(why, "restarting haproxy");
            silent = 0;
            if let Err(e) = spawn(&settings, &slot).await {
                tracing::warn!(error = %e, "restarting haproxy failed");
            }
        }
    }
}

/// Sends one command to HAProxy's master CLI and returns its answer, which
/// ends at an empty line (the master does not always close the connection).
pub async fn master_command(socket: &Path, cmd: &str) -> std::io::Result<String> {
    let io = async {
        let mut s = UnixStream::connect(socket).await?;
        s.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.ends_with(b"\n\n") {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "master CLI timed out"))?
}

/// Sends the signal `name` (`HUP`, `TERM`, `KILL`) to `pid`: without a
/// `kill` command, which FerryLB's image does not have.
///
/// # Errors
/// When there is no such process or signal, or it may not be signalled.
pub fn signal(name: &str, pid: u32) -> Result<(), String> {
    use rustix::process::{Pid, Signal, kill_process};
    let sig = match name {
        "HUP" => Signal::HUP,
        "TERM" => Signal::TERM,
        "KILL" => Signal::KILL,
        other => return Err(format!("unknown signal {other}")),
    };
    let target = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| format!("no process {pid}"))?;
    kill_process(target, sig).map_err(|e| format!("kill -{name} {pid}: {e}"))
}

/// Whether `child` (a daemon FerryLB started) still runs.
pub(crate) fn still_running(child: Option<&mut tokio::process::Child>) -> bool {
    child.is_some_and(|c| matches!(c.try_wait(), Ok(None)))
}

/// Two equal answers in a row: how a health follower tells a change from a
/// blip.
#[derive(Debug, Default)]
pub struct Streak {
    last: Option<bool>,
    count: u8,
}

impl Streak {
    /// Records `answer`; `true` once the same answer came twice in a row.
    pub fn settled(&mut self, answer: bool) -> bool {
        if self.last == Some(answer) {
            self.count = self.count.saturating_add(1);
        } else {
            self.last = Some(answer);
            self.count = 1;
        }
        self.count >= 2
    }
}

/// Whether the HAProxy behind `socket` has a current worker (one listed
/// before the old workers that are still draining).
///
/// # Errors
/// Why it does not: no master answering, or no worker.
pub async fn serving(socket: &Path) -> Result<(), String> {
    let out = master_command(socket, "show proc").await.map_err(|e| {
        format!(
            "haproxy's master at {} does not answer: {e}",
            socket.display()
        )
    })?;
    if current_workers(&out) > 0 {
        Ok(())
    } else {
        Err("haproxy has no worker serving".into())
    }
}

/// The old workers in `show proc`'s answer: those still carrying
/// connections of a configuration a reload replaced.
pub fn old_workers(show_proc: &str) -> usize {
    show_proc
        .lines()
        .skip_while(|l| !l.starts_with("# old workers"))
        .filter(|l| l.split_whitespace().nth(1) == Some("worker"))
        .count()
}

fn current_workers(show_proc: &str) -> usize {
    show_proc
        .lines()
        .take_while(|l| !l.starts_with("# old workers"))
        .filter(|l| l.split_whitespace().nth(1) == Some("worker"))
        .count()
}

/// From `show proc`: `<pid> master <reloads> [failed: <n>] ...`.
/// The master's pid from `show proc`.
fn master_pid(out: &str) -> Option<u32> {
    out.lines()
        .find(|l| l.contains("master"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn parse_master_line(out: &str) -> Option<(u64, u64)> {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("master"))?;
    let mut words = line.split_whitespace().skip(2);
    let reloads = words.next()?.parse().ok()?;
    let failed = line
        .split("failed:")
        .nth(1)?
        .trim()
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .split(']')
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some((reloads, failed))
}

/// `line` without the process id HAProxy prints after its level
/// (`[ALERT]    (1234) : …`): a message quoting it would differ on every
/// attempt for the same cause, and each change of a Service's status
/// triggers another reconcile, around the backoff.
fn without_pid(line: &str) -> String {
    let line = line.trim();
    let Some(rest) = line.strip_prefix("[ALERT]") else {
        return line.to_owned();
    };
    let rest = rest.trim_start();
    let said = rest
        .strip_prefix('(')
        .and_then(|r| r.split_once(')'))
        .filter(|(pid, _)| pid.chars().all(|c| c.is_ascii_digit()))
        .map_or(rest, |(_, after)| {
            after.trim_start().trim_start_matches(':').trim_start()
        });
    format!("[ALERT] {said}")
}

/// haproxy's `[ALERT]` lines from `haproxy -c`, bounded: at most 5 lines of
/// at most 300 bytes each, and how many more there were.
fn alerts(stdout: &[u8], stderr: &[u8]) -> String {
    const LINES: usize = 5;
    const WIDTH: usize = 300;
    let (out, err) = (
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr),
    );
    let all: Vec<String> = err
        .lines()
        .chain(out.lines())
        .filter(|l| l.contains("ALERT"))
        .map(without_pid)
        .collect();
    let mut shown: Vec<String> = all
        .iter()
        .take(LINES)
        .map(|l| match l.char_indices().nth(WIDTH) {
            Some((cut, _)) => format!("{}…", &l[..cut]),
            None => (*l).to_owned(),
        })
        .collect();
    if all.len() > LINES {
        shown.push(format!("and {} more", all.len() - LINES));
    }
    if shown.is_empty() {
        return "haproxy printed no alert".into();
    }
    shown.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_current_workers_only() {
        let out = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
            10              master          2 [failed: 0]   0d00h01m00s     2.6.12\n\
            # workers\n\
            31              worker          0               0d00h00m10s     2.6.12\n\
            # old workers\n\
            20              worker          1               0d00h00m50s     2.6.12\n\n";
        assert_eq!(current_workers(out), 1);
        assert_eq!(old_workers(out), 1);
        assert_eq!(old_workers(out.split("# old").next().unwrap()), 0);
        let draining_only = out.replace("31              worker", "# none");
        assert_eq!(current_workers(&draining_only), 0);
    }

    #[test]
    fn parses_show_proc() {
        let out = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
                   20286           master          3 [failed: 1]   0d00h00m01s     2.6.12-1+deb12u4\n\
                   # workers\n20289           worker          0               0d00h00m01s     2.6.12\n";
        assert_eq!(parse_master_line(out), Some((3, 1)));
        assert_eq!(master_pid(out), Some(20286));
        assert_eq!(parse_master_line("garbage"), None);
    }

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
    fn haproxy_output_is_weighed() {
        assert_eq!(
            classify(
                "[ALERT]    (1) : Binding [cfg:8] for frontend f: cannot bind socket (Address already in use) for [127.0.0.1:80]"
            ),
            Weight::Alert
        );
        assert_eq!(
            classify("[WARNING]  (7) : Server be_x_80/n1 is DOWN, reason: Layer4 timeout"),
            Weight::State
        );
        assert_eq!(
            classify("[WARNING]  (7) : Proxy fe_x_80 stopped (cumulated conns: FE: 4, BE: 0)."),
            Weight::Noise
        );
        assert_eq!(
            classify("[NOTICE]   (1) : New worker (9) forked"),
            Weight::Noise
        );
    }

    #[test]
    fn alerts_are_bounded() {
        let many: String = (0..20)
            .map(|i| format!("[ALERT] {i}: {}\n", "z".repeat(1000)))
            .collect();
        let text = alerts(many.as_bytes(), b"");
        assert!(text.contains("and 15 more"), "{text}");
        assert!(text.len() < 5 * 310 + 20, "{}", text.len());
    }

    #[test]
    fn alerts_do_not_quote_the_process_id() {
        let say = |pid: u32| {
            alerts(
                format!("[NOTICE]   ({pid}) : haproxy version is 2.6.12\n[ALERT]    ({pid}) : config : parsing [h.cfg:7] : unknown keyword 'x'.\n").as_bytes(),
                b"",
            )
        };
        assert_eq!(say(41), say(4242), "the same cause, the same message");
        assert_eq!(
            say(41),
            "[ALERT] config : parsing [h.cfg:7] : unknown keyword 'x'."
        );
        assert_eq!(without_pid("[ALERT] (x) : odd"), "[ALERT] (x) : odd");
    }

    #[test]
    fn siblings_sit_next_to_the_config() {
        assert_eq!(
            sibling(Path::new("/etc/haproxy/ferrylb.cfg"), "new"),
            PathBuf::from("/etc/haproxy/ferrylb.cfg.new")
        );
    }
}
