//! Reading what BIRD says: `birdc` answers and its complaints.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{BgpStatus, Bird};

impl Bird {
    /// Each peer's session state and what is announced.
    pub async fn status(&self) -> BgpStatus {
        let (running, announced, serving) = {
            let mut inner = self.inner.lock().await;
            (inner.running(), inner.announced, inner.vips.len())
        };
        let mut status = BgpStatus {
            running,
            announced: if running { announced } else { 0 },
            serving,
            ..BgpStatus::default()
        };
        if running && let Ok(text) = self.birdc(&["show", "protocols"]).await {
            for (i, p) in self.settings.config.peers.iter().enumerate() {
                let state = session_state(&text, &format!("peer{i}"));
                status
                    .sessions
                    .insert(p.address, state.unwrap_or_else(|| "Unknown".into()));
            }
        }
        if running
            && self.settings.config.peers.iter().any(|p| p.bfd)
            && let Ok(text) = self.birdc(&["show", "bfd", "sessions"]).await
        {
            status.bfd = bfd_states(&text);
        }
        status
    }
}

/// The state BIRD's `show protocols` gives the protocol `name`: its last
/// column (`Established`, `Active` …), or its state (`down`) when that is
/// empty.
pub(super) fn session_state(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        if words.next()? != name {
            return None;
        }
        let words: Vec<&str> = words.collect();
        // name proto table state since [info]: info follows the time.
        let info = words.get(4..).map(|w| w.join(" ")).unwrap_or_default();
        Some(if info.is_empty() {
            (*words.get(2)?).to_owned()
        } else {
            info
        })
    })
}

/// The state of each session BIRD's `show bfd sessions` lists, by address.
pub(super) fn bfd_states(text: &str) -> BTreeMap<IpAddr, String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            let _interface = words.next()?;
            Some((ip, words.next()?.to_owned()))
        })
        .collect()
}

/// What BIRD said: its first five lines, 300 bytes each at most.
pub(super) fn bird_said(stdout: &[u8], stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .chain(String::from_utf8_lossy(stdout).lines())
        .filter(|l| !l.trim().is_empty())
        .take(5)
        .map(|l| l.chars().take(300).collect::<String>())
        .collect::<Vec<_>>()
        .join("; ")
}
