//! Putting VIPs on a network interface, so the host answers ARP/NDP for
//! them (needs NET_ADMIN), or leaving that to the operator.
//!
//! A VIP added here is announced with gratuitous ARP (`arping -U`, needs
//! NET_RAW): when a VIP moves to this host (another replica took over), the
//! neighbours' caches still name the old host until they expire, which
//! takes tens of seconds; the announcement moves them at once.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ferrylb_model::ProviderError;
use ferrylb_model::reason;
use tokio::process::Command;

/// How `ip addr add` says the address is there already: older iproute2
/// "File exists", newer "Address already assigned".
const ADD_BENIGN: &[&str] = &["File exists", "already assigned"];
/// How `ip addr del` says the address is not there.
const DEL_BENIGN: &[&str] = &["Cannot assign requested address", "Address not found"];

/// Adds and removes VIPs on `interface`; does nothing when `None` (the host
/// already owns the pool's addresses).
#[derive(Debug)]
pub struct VipBinder {
    interface: Option<String>,
    /// The `ip` program (iproute2).
    program: std::path::PathBuf,
    /// What this process put on the interface (or found there), so that
    /// holding a VIP again costs no `ip` command.
    held: std::sync::Mutex<BTreeSet<IpAddr>>,
}

impl VipBinder {
    pub fn new(interface: Option<String>) -> Self {
        Self::with_program(interface, "ip".into())
    }

    /// A binder that runs `program` as `ip`.
    pub fn with_program(interface: Option<String>, program: std::path::PathBuf) -> Self {
        Self {
            interface,
            program,
            held: std::sync::Mutex::default(),
        }
    }

    /// Adds `ip` to the interface; already present is fine. `true` when it
    /// was added now: [`Self::announce`] it (HAProxy must listen on it
    /// first, so that neighbours are not sent to a host that would refuse
    /// them).
    pub async fn add(&self, ip: IpAddr) -> Result<bool, ProviderError> {
        if self.interface.is_none() || self.held.lock().expect("held lock").contains(&ip) {
            return Ok(false);
        }
        let added = self.ip_addr("add", ip, ADD_BENIGN).await?;
        self.held.lock().expect("held lock").insert(ip);
        Ok(added)
    }

    /// Announces an IPv4 VIP on the interface by gratuitous ARP, in the
    /// background.
    pub fn announce(&self, ip: IpAddr) {
        if let (Some(dev), IpAddr::V4(_)) = (&self.interface, ip) {
            tokio::spawn(announce(dev.clone(), ip));
        }
    }

    /// Removes `ip` from the interface; already absent is fine.
    pub async fn remove(&self, ip: IpAddr) -> Result<(), ProviderError> {
        self.ip_addr("del", ip, DEL_BENIGN).await?;
        self.held.lock().expect("held lock").remove(&ip);
        Ok(())
    }

    /// Runs `ip addr VERB`; `Ok(true)` when it changed the interface,
    /// `Ok(false)` when there was nothing to do.
    async fn ip_addr(
        &self,
        verb: &str,
        ip: IpAddr,
        benign: &[&str],
    ) -> Result<bool, ProviderError> {
        let Some(dev) = &self.interface else {
            return Ok(false);
        };
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let out = Command::new(&self.program)
            .args(["addr", verb, &format!("{ip}/{prefix}"), "dev", dev])
            .output()
            .await
            .map_err(|e| {
                ProviderError::transient(
                    reason::VIP_BIND_FAILED,
                    format!("running ip addr {verb}: {e}"),
                )
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return Ok(true);
        }
        if benign.iter().any(|b| stderr.contains(b)) {
            return Ok(false);
        }
        Err(ProviderError::transient(
            reason::VIP_BIND_FAILED,
            format!(
                "ip addr {verb} {ip}/{prefix} dev {dev} failed: {} (FerryLB needs NET_ADMIN for this)",
                stderr.trim()
            ),
        ))
    }
}

/// Sends two gratuitous ARP requests for `ip` on `dev`. Best effort: a
/// failure costs the neighbours' cache expiry, not the VIP, so it is logged.
async fn announce(dev: String, ip: IpAddr) {
    let out = Command::new("arping")
        .args(["-U", "-c", "2", "-I", &dev, &ip.to_string()])
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => tracing::debug!(%ip, %dev, "announced VIP"),
        Ok(o) => tracing::warn!(
            %ip, %dev,
            stderr = %String::from_utf8_lossy(&o.stderr).trim(),
            "gratuitous ARP failed (FerryLB needs NET_RAW for it); neighbours learn the VIP's new host when their caches expire"
        ),
        Err(e) => {
            tracing::warn!(%ip, %dev, error = %e, "running arping failed; neighbours learn the VIP's new host when their caches expire")
        }
    }
}

/// The `(ip, port)`s of `wanted` that some process on this host already
/// listens on (on that address or on the wildcard), found by binding each
/// for a moment, as HAProxy will: free to bind an address the host does not
/// hold yet. Ports FerryLB may not bind itself (below 1024 without the
/// capability) are not reported.
pub fn taken(wanted: impl IntoIterator<Item = (IpAddr, u16)>) -> Vec<(IpAddr, u16)> {
    wanted
        .into_iter()
        .filter(|&(ip, port)| {
            matches!(
                try_bind(std::net::SocketAddr::new(ip, port)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
            )
        })
        .collect()
}

fn try_bind(addr: std::net::SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_freebind_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testns::Netns;

    /// This machine's iproute2 words "already there" and "not there" in a
    /// way the binder recognises (in a network namespace of its own; needs
    /// root, as CI has).
    #[test]
    fn ip_s_wording_for_present_and_absent_addresses_is_recognised() {
        let ns = Netns::new("ferrylb-vip");
        ns.ip_ok(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
        let again = ns.ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert!(ADD_BENIGN.iter().any(|b| stderr.contains(b)), "{stderr}");
        let absent = ns.ip(&["addr", "del", "10.99.0.2/32", "dev", "lo"]);
        let stderr = String::from_utf8_lossy(&absent.stderr);
        assert!(DEL_BENIGN.iter().any(|b| stderr.contains(b)), "{stderr}");
    }
}
