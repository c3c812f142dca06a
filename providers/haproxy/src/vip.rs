//! Putting VIPs on a network interface, so the host answers ARP/NDP for
//! them (needs NET_ADMIN), or leaving that to the operator.
//!
//! A VIP added here is announced, IPv4 with gratuitous ARP (`arping -U`),
//! IPv6 with unsolicited neighbour advertisements (both need NET_RAW): when
//! a VIP moves to this host (another replica took over), the neighbours'
//! caches still name the old host until they expire, which takes seconds
//! to tens of seconds; the announcement moves them at once. IPv6 VIPs are
//! added without duplicate address detection (`nodad`): a tentative
//! address would take no traffic for a second.

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

    /// Announces a VIP on the interface, in the background: an IPv4 one by
    /// gratuitous ARP, an IPv6 one by unsolicited neighbour advertisements.
    pub fn announce(&self, ip: IpAddr) {
        match (&self.interface, ip) {
            (Some(dev), IpAddr::V4(_)) => {
                tokio::spawn(announce(dev.clone(), ip));
            }
            (Some(dev), IpAddr::V6(v6)) => {
                tokio::spawn(advertise(dev.clone(), v6));
            }
            (None, _) => {}
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
        let mut cmd = Command::new(&self.program);
        cmd.args(["addr", verb, &format!("{ip}/{prefix}"), "dev", dev]);
        if verb == "add" && ip.is_ipv6() {
            // No duplicate address detection: the address is ours to move,
            // and a tentative one takes no traffic for a second.
            cmd.arg("nodad");
        }
        let out = cmd.output().await.map_err(|e| {
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

/// Sends two unsolicited neighbour advertisements for `ip` on `dev`
/// (override set, this interface's link-layer address), to all nodes, so
/// that IPv6 neighbours that cached the VIP's previous host move at once.
/// Best effort, as for ARP.
async fn advertise(dev: String, ip: std::net::Ipv6Addr) {
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        match neighbour_advert(&dev, ip) {
            Ok(()) => tracing::debug!(%ip, %dev, "advertised VIP"),
            Err(e) => {
                tracing::warn!(%ip, %dev, error = %e, "unsolicited neighbour advertisement failed (FerryLB needs NET_RAW for it); neighbours learn the VIP's new host when their caches expire");
                return;
            }
        }
    }
}

/// One unsolicited neighbour advertisement (RFC 4861 4.4) for `target`
/// from `dev` to ff02::1, hop limit 255; the kernel sums it.
fn neighbour_advert(dev: &str, target: std::net::Ipv6Addr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sys = |what: &str| std::fs::read_to_string(format!("/sys/class/net/{dev}/{what}"));
    let ifindex: u32 = sys("ifindex")?
        .trim()
        .parse()
        .map_err(|e| std::io::Error::other(format!("ifindex of {dev}: {e}")))?;
    let mac = parse_mac(sys("address")?.trim())
        .ok_or_else(|| std::io::Error::other(format!("{dev} has no Ethernet address")))?;
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.set_multicast_hops_v6(255)?;
    socket.set_multicast_if_v6(ifindex)?;
    let all_nodes = std::net::SocketAddrV6::new(
        std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        0,
        0,
        ifindex,
    );
    socket.send_to(&neighbour_advert_message(target, mac), &all_nodes.into())?;
    Ok(())
}

/// The ICMPv6 message of an unsolicited neighbour advertisement: type 136,
/// the override flag, the target, and the target link-layer address option
/// (checksum left zero: the kernel fills it in).
fn neighbour_advert_message(target: std::net::Ipv6Addr, mac: [u8; 6]) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = 136;
    m[4] = 0x20;
    m[8..24].copy_from_slice(&target.octets());
    m[24] = 2;
    m[25] = 1;
    m[26..32].copy_from_slice(&mac);
    m
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    (parts.next().is_none() && mac != [0; 6]).then_some(mac)
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

    #[test]
    fn a_neighbour_advertisement_overrides_and_carries_the_link_layer_address() {
        let mac = parse_mac("02:42:ac:11:00:02").unwrap();
        assert_eq!(mac, [0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert_eq!(parse_mac("00:00:00:00:00:00"), None, "no Ethernet address");
        assert_eq!(parse_mac("02:42:ac:11:00"), None);
        let target: std::net::Ipv6Addr = "fd51::200".parse().unwrap();
        let m = neighbour_advert_message(target, mac);
        assert_eq!((m[0], m[1]), (136, 0), "type and code");
        assert_eq!(m[4], 0x20, "override, neither router nor solicited");
        assert_eq!(&m[8..24], &target.octets());
        assert_eq!((m[24], m[25]), (2, 1), "target link-layer address, 8 bytes");
        assert_eq!(&m[26..], &mac);
    }

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
