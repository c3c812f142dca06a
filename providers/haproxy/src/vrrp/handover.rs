//! A planned handover that drops no connection: before keepalived gives the
//! VIPs up, this host stops answering new TCP handshakes to them for a
//! moment (an nftables rule drops SYNs), so that the connections it has
//! accepted finish while their packets still reach it. The clients whose
//! SYN was dropped send it again a second later (TCP's initial
//! retransmission timeout), by when the VIPs have moved and the new holder
//! answers. Without the pause, a connection accepted here just before the
//! move has its later packets delivered to the new holder, which knows
//! nothing of it: the client times out.
//!
//! The rule lives in a table of its own (`inet ferrylb_handover`), removed
//! once keepalived has stopped, and removed on start-up too, in case a
//! replica was killed during a handover.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

/// The nftables table FerryLB owns for the pause.
pub const TABLE: &str = "ferrylb_handover";

/// The nftables script that creates (or replaces) the table dropping new
/// TCP handshakes to `vips`; `None` when there is nothing to drop.
#[must_use]
pub fn pause_script(vips: &BTreeSet<IpAddr>) -> Option<String> {
    if vips.is_empty() {
        return None;
    }
    let mut out = clear_script();
    let _ = writeln!(
        out,
        "table inet {TABLE} {{\n  chain input {{\n    type filter hook input priority -150; policy accept;"
    );
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = vips.iter().partition(|ip| ip.is_ipv4());
    for (family, set) in [("ip", v4), ("ip6", v6)] {
        if set.is_empty() {
            continue;
        }
        let list: Vec<String> = set.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "    {family} daddr {{ {} }} tcp flags & (syn | ack) == syn drop",
            list.join(", ")
        );
    }
    out.push_str("  }\n}\n");
    Some(out)
}

/// The nftables script that removes the table, whether or not it exists
/// (declaring it first makes the deletion valid either way).
#[must_use]
pub fn clear_script() -> String {
    format!("table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// Runs nftables scripts with `nft -f -`.
#[derive(Debug, Clone)]
pub struct Nft {
    binary: PathBuf,
}

impl Nft {
    #[must_use]
    pub fn new(binary: PathBuf) -> Self {
        Self { binary }
    }

    /// Drops new TCP handshakes to `vips` until [`Self::resume`].
    ///
    /// # Errors
    /// What `nft` printed when it failed, or why it could not run.
    pub async fn pause(&self, vips: &BTreeSet<IpAddr>) -> Result<(), String> {
        match pause_script(vips) {
            Some(script) => self.run(&script).await,
            None => Ok(()),
        }
    }

    /// Removes the pause (a no-op when there is none).
    ///
    /// # Errors
    /// As [`Self::pause`].
    pub async fn resume(&self) -> Result<(), String> {
        self.run(&clear_script()).await
    }

    async fn run(&self, script: &str) -> Result<(), String> {
        let mut child = Command::new(&self.binary)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.binary.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|e| format!("writing to {}: {e}", self.binary.display()))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("waiting for {}: {e}", self.binary.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} -f - exited with {}: {}",
                self.binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}
