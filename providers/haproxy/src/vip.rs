//! Putting VIPs on a network interface, so the host answers ARP/NDP for
//! them (needs NET_ADMIN), or leaving that to the operator.

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
    /// Adds `ip` to the interface; already present is fine.
    pub async fn add(&self, ip: IpAddr) -> Result<(), ProviderError> {
        self.ip_addr("add", ip, "File exists").await
    }

    /// Removes `ip` from the interface; already absent is fine.
    pub async fn remove(&self, ip: IpAddr) -> Result<(), ProviderError> {
        self.ip_addr("del", ip, "Cannot assign requested address")
            .await
    }

    async fn ip_addr(&self, verb: &str, ip: IpAddr, benign: &str) -> Result<(), ProviderError> {
        let Some(dev) = &self.interface else {
            return Ok(());
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
        if out.status.success() || stderr.contains(benign) {
            return Ok(());
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
