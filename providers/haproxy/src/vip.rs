//! Putting VIPs on a network interface, so the host answers ARP/NDP for
//! them (needs NET_ADMIN), or leaving that to the operator.
//!
//! A VIP added here is announced with gratuitous ARP (`arping -U`, needs
//! NET_RAW): when a VIP moves to this host (another replica took over), the
//! neighbours' caches still name the old host until they expire, which
//! takes tens of seconds; the announcement moves them at once.

use std::net::IpAddr;

use ferrylb_model::ProviderError;
use tokio::process::Command;

/// Adds and removes VIPs on `interface`; does nothing when `None` (the host
/// already owns the pool's addresses).
#[derive(Debug, Clone, Default)]
pub struct VipBinder {
    pub interface: Option<String>,
}

impl VipBinder {
    /// Adds `ip` to the interface; already present is fine. `true` when it
    /// was added now: [`Self::announce`] it once HAProxy listens on it, so
    /// that neighbours are not sent to a host that would refuse them.
    pub async fn add(&self, ip: IpAddr) -> Result<bool, ProviderError> {
        self.ip_addr("add", ip, "File exists").await
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
        self.ip_addr("del", ip, "Cannot assign requested address")
            .await
            .map(drop)
    }

    /// Runs `ip addr VERB`; `Ok(true)` when it changed the interface,
    /// `Ok(false)` when there was nothing to do.
    async fn ip_addr(&self, verb: &str, ip: IpAddr, benign: &str) -> Result<bool, ProviderError> {
        let Some(dev) = &self.interface else {
            return Ok(false);
        };
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let out = Command::new("ip")
            .args(["addr", verb, &format!("{ip}/{prefix}"), "dev", dev])
            .output()
            .await
            .map_err(|e| {
                ProviderError::transient("VipBindFailed", format!("running ip addr {verb}: {e}"))
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return Ok(true);
        }
        if stderr.contains(benign) {
            return Ok(false);
        }
        Err(ProviderError::transient(
            "VipBindFailed",
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
/// for a moment. Ports FerryLB may not bind itself (below 1024 without the
/// capability) and addresses not on this host are not reported.
pub fn taken(wanted: impl IntoIterator<Item = (IpAddr, u16)>) -> Vec<(IpAddr, u16)> {
    wanted
        .into_iter()
        .filter(|&(ip, port)| {
            matches!(
                std::net::TcpListener::bind((ip, port)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
            )
        })
        .collect()
}
