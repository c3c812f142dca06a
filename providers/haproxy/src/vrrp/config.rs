//! keepalived's configuration, rendered from typed values only: one VRRPv3
//! instance in state BACKUP with `nopreempt`, the VIPs (twenty in the
//! adverts, the rest moving with them), unicast peers, the tracked health
//! file and the notification FIFO. Running keepalived is `super`'s job.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{VrrpSettings, notify};
use crate::process::sibling;

/// VIPs carried in each VRRP advert; keepalived allows 20, and the rest go
/// into `virtual_ipaddress_excluded`, which moves with the instance too.
const IN_ADVERT: usize = 20;

/// keepalived's configuration for `vips` and `peers`; `None` when there is no
/// VIP to announce (keepalived requires one).
#[must_use]
pub fn render(
    s: &VrrpSettings,
    vips: &BTreeSet<IpAddr>,
    peers: &BTreeSet<IpAddr>,
) -> Option<String> {
    // The instance speaks its source's family; at least one VIP of it must
    // be in the adverts.
    let v6 = s.source.is_some_and(|ip| ip.is_ipv6());
    let (same, other): (Vec<IpAddr>, Vec<IpAddr>) = vips.iter().partition(|ip| ip.is_ipv6() == v6);
    if same.is_empty() {
        return None;
    }
    let line = |ip: &IpAddr| {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        format!("    {ip}/{prefix} dev {}\n", s.interface)
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by FerryLB; every change is replaced.\n\
         global_defs {{\n  router_id {}\n  vrrp_version 3\n  notify_fifo \"{}\"\n}}\n",
        quote_free(&s.name),
        quote_free(&notify::fifo_path(&s.config_path).display().to_string())
    );
    // Non-zero in the file (HAProxy not serving) puts the instance in FAULT.
    let _ = writeln!(
        out,
        "vrrp_track_file ferrylb_haproxy {{\n  file \"{}\"\n  weight 0\n}}\n",
        quote_free(&health_file(&s.config_path).display().to_string())
    );
    let _ = writeln!(
        out,
        "vrrp_instance {INSTANCE} {{\n  state BACKUP\n  interface {}\n  virtual_router_id {}\n  priority {}\n  nopreempt\n  advert_int {}",
        s.interface,
        s.router_id,
        priority(s),
        advert(s.advert_interval)
    );
    if let Some(src) = s.source {
        // Unicast once there is a peer to send to (keepalived refuses a
        // source without peers); alone, adverts go to the VRRP group.
        let peers: Vec<_> = peers
            .iter()
            .filter(|p| **p != src && p.is_ipv6() == v6)
            .collect();
        if !peers.is_empty() {
            let _ = writeln!(out, "  unicast_src_ip {src}\n  unicast_peer {{");
            for p in peers {
                let _ = writeln!(out, "    {p}");
            }
            out.push_str("  }\n");
        }
    }
    out.push_str("  virtual_ipaddress {\n");
    for ip in same.iter().take(IN_ADVERT) {
        out.push_str(&line(ip));
    }
    out.push_str("  }\n");
    let rest: Vec<&IpAddr> = same.iter().skip(IN_ADVERT).chain(other.iter()).collect();
    if !rest.is_empty() {
        out.push_str("  virtual_ipaddress_excluded {\n");
        for ip in rest {
            out.push_str(&line(ip));
        }
        out.push_str("  }\n");
    }
    out.push_str("  track_file {\n    ferrylb_haproxy\n  }\n}\n");
    Some(out)
}

/// The configured priority plus a spread from this host's address (0-99):
/// when the master leaves, the backups' takeover timers then differ by
/// milliseconds per point, so one takes over and the others hear its advert
/// in time, instead of all claiming the VIPs at once. With `nopreempt` a
/// higher priority never takes the VIPs from a healthy master.
pub(super) fn priority(s: &VrrpSettings) -> u16 {
    let last = match s.source {
        Some(IpAddr::V4(ip)) => ip.octets()[3],
        Some(IpAddr::V6(ip)) => ip.octets()[15],
        None => 0,
    };
    // Neighbouring addresses (the usual case) land 37 points apart: a
    // takeover timer about 14 ms earlier at 0.1 s adverts.
    let spread = u16::from(last) * 37 % 100;
    (u16::from(s.priority) + spread).min(254)
}

/// `advert_int` in seconds: VRRPv3 takes hundredths.
pub(super) fn advert(d: Duration) -> String {
    let cs = (d.as_millis() / 10).clamp(1, 4095);
    if cs.is_multiple_of(100) {
        (cs / 100).to_string()
    } else {
        format!("{}.{:02}", cs / 100, cs % 100)
            .trim_end_matches('0')
            .to_owned()
    }
}

/// The one VRRP instance's name.
pub(super) const INSTANCE: &str = "ferrylb";

/// Keeps a value from breaking out of its place in the file.
fn quote_free(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '{' | '}' | '#' | '!'))
        .collect()
}

/// The file keepalived tracks: `0` while the local HAProxy serves.
#[must_use]
pub fn health_file(config: &Path) -> PathBuf {
    sibling(config, "health")
}
