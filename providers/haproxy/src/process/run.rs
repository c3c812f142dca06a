//! Running `haproxy -W` ourselves (managed mode): starting it, relaying
//! its output at the level it deserves, and starting it again when it dies.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ferrylb_model::ProviderError;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::master::master_command;
use super::{ProcessSettings, unavailable};

pub(super) async fn spawn(
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
pub(super) async fn relay(stream: impl tokio::io::AsyncRead + Unpin) {
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
pub(super) enum Weight {
    Alert,
    State,
    Noise,
}

pub(super) fn classify(line: &str) -> Weight {
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
pub(super) const ADOPTED_SILENCE: u32 = 3;

/// Restarts a managed HAProxy that exited, with a pause between attempts:
/// the one started here (its exit is seen), or one adopted from an earlier
/// run (no child of ours: it is dead when its master socket stays silent).
pub(super) async fn supervise(settings: ProcessSettings, slot: Arc<Mutex<Option<Child>>>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
