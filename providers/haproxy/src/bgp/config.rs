//! BIRD 2's configuration for announcing VIPs over BGP, rendered from typed
//! values only: addresses, numbers and durations are printed by Rust, and
//! the one string (a peer's password) is checked against what a BIRD string
//! may hold before it gets here ([`Password::new`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

/// A BGP session to one of the user's routers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub address: IpAddr,
    pub asn: u32,
    /// TCP MD5 password (RFC 2385), read from a file (a Secret).
    pub password: Option<Password>,
    /// BFD on this session (the router must run BFD too).
    pub bfd: bool,
    /// BGP hold time; keepalives are sent every third of it.
    pub hold: Duration,
}

/// A BGP password BIRD can hold in a string: printable ASCII without `"`
/// and `\`, at most 80 characters (the TCP MD5 key limit).
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(…)")
    }
}

impl Password {
    /// # Errors
    /// Naming what is not allowed (never the password itself).
    pub fn new(text: &str) -> Result<Self, String> {
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() || text.len() > 80 {
            return Err(format!(
                "a BGP password has 1 to 80 characters, this one {}",
                text.len()
            ));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_graphic() || *c == ' ') || matches!(c, '"' | '\\'))
        {
            return Err(format!(
                "a BGP password holds printable ASCII other than '\"' and '\\'; this one holds {c:?}"
            ));
        }
        Ok(Self(text.to_owned()))
    }
}

impl FromStr for Peer {
    type Err = String;

    /// `address=10.0.0.1,asn=64500[,bfd=true][,hold=9s][,password-file=PATH]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut address, mut asn, mut bfd, mut hold, mut password) =
            (None, None, false, Duration::from_secs(9), None);
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            match k {
                "address" => {
                    address =
                        Some(v.parse::<IpAddr>().map_err(|_| {
                            format!("address: {v:?} is not an IPv4 or IPv6 address")
                        })?);
                }
                "asn" => {
                    asn =
                        Some(v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                            format!("asn: {v:?} is not an AS number 1-4294967295")
                        })?);
                }
                "bfd" => {
                    bfd = v
                        .parse()
                        .map_err(|_| format!("bfd: {v:?} is not true or false"))?;
                }
                "hold" => {
                    hold = humantime::parse_duration(v)
                        .ok()
                        .filter(|d| *d == Duration::ZERO || (3..=65535).contains(&d.as_secs()))
                        .filter(|d| d.subsec_nanos() == 0)
                        .ok_or_else(|| {
                            format!("hold: {v:?} is not 0s or whole seconds from 3s to 65535s")
                        })?;
                }
                "password-file" => {
                    let text = std::fs::read_to_string(v)
                        .map_err(|e| format!("password-file: reading {v}: {e}"))?;
                    password =
                        Some(Password::new(&text).map_err(|e| format!("password-file {v}: {e}"))?);
                }
                other => {
                    return Err(format!(
                        "unknown key {other:?} (allowed: address, asn, bfd, hold, password-file)"
                    ));
                }
            }
        }
        Ok(Peer {
            address: address.ok_or("address=… is required")?,
            asn: asn.ok_or("asn=… is required")?,
            password,
            bfd,
            hold,
        })
    }
}

/// Standard BGP community `(asn, value)` added to every announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Community(pub u16, pub u16);

impl FromStr for Community {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a community ASN:VALUE, each 0-65535");
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        Ok(Community(
            a.parse().map_err(|_| bad())?,
            b.parse().map_err(|_| bad())?,
        ))
    }
}

/// What BIRD is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdConfig {
    pub router_id: Ipv4Addr,
    pub local_asn: u32,
    pub peers: Vec<Peer>,
    pub communities: Vec<Community>,
    /// BFD's transmit and receive interval, and how many missed packets
    /// declare a peer down.
    pub bfd_interval: Duration,
    pub bfd_multiplier: u8,
}

/// The static protocol holding the announced IPv4 (`_v4`) or IPv6 routes.
const STATIC_V4: &str = "ferrylb_vips_v4";
const STATIC_V6: &str = "ferrylb_vips_v6";

/// BIRD's configuration announcing `vips` (none: every route withdrawn,
/// the sessions stay up).
#[must_use]
pub fn render(c: &BirdConfig, vips: &BTreeSet<IpAddr>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Rendered by FerryLB from typed values; do not edit.");
    let _ = writeln!(
        out,
        "log stderr {{ info, remote, warning, error, auth, fatal, bug }};"
    );
    let _ = writeln!(out, "router id {};", c.router_id);
    let _ = writeln!(out, "protocol device {{ }}");
    for (name, v4) in [(STATIC_V4, true), (STATIC_V6, false)] {
        let _ = writeln!(out, "protocol static {name} {{");
        let _ = writeln!(out, "  {};", if v4 { "ipv4" } else { "ipv6" });
        for ip in vips.iter().filter(|ip| ip.is_ipv4() == v4) {
            let len = if v4 { 32 } else { 128 };
            let _ = writeln!(out, "  route {ip}/{len} unreachable;");
        }
        let _ = writeln!(out, "}}");
    }
    if c.peers.iter().any(|p| p.bfd) {
        let ms = c.bfd_interval.as_millis();
        let _ = writeln!(out, "protocol bfd ferrylb_bfd {{");
        let _ = writeln!(
            out,
            "  interface \"*\" {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier {}; }};",
            c.bfd_multiplier
        );
        let _ = writeln!(
            out,
            "  multihop {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier {}; }};",
            c.bfd_multiplier
        );
        let _ = writeln!(out, "}}");
    }
    let mut add = String::new();
    for Community(a, b) in &c.communities {
        let _ = write!(add, " bgp_community.add(({a}, {b}));");
    }
    for (i, p) in c.peers.iter().enumerate() {
        let (channel, source) = if p.address.is_ipv4() {
            ("ipv4", STATIC_V4)
        } else {
            ("ipv6", STATIC_V6)
        };
        let _ = writeln!(out, "protocol bgp peer{i} {{");
        let _ = writeln!(out, "  local as {};", c.local_asn);
        let _ = writeln!(out, "  neighbor {} as {};", p.address, p.asn);
        let hold = p.hold.as_secs();
        if hold == 0 {
            let _ = writeln!(out, "  hold time 0;");
        } else {
            let _ = writeln!(
                out,
                "  hold time {hold}; keepalive time {};",
                (hold / 3).max(1)
            );
        }
        // Reconnect soon after a session drops (BIRD waits 120 s by default).
        let _ = writeln!(out, "  connect retry time 2; error wait time 1, 16;");
        if let Some(Password(pw)) = &p.password {
            let _ = writeln!(out, "  password \"{pw}\";");
        }
        if p.bfd {
            let _ = writeln!(out, "  bfd on;");
        }
        let _ = writeln!(out, "  {channel} {{");
        let _ = writeln!(out, "    import none;");
        let _ = writeln!(
            out,
            "    export filter {{ if proto = \"{source}\" then {{{add} accept; }} reject; }};"
        );
        let _ = writeln!(out, "  }};");
        let _ = writeln!(out, "}}");
    }
    out
}
