//! The address pool VIPs come from: CIDRs and ranges, IPv4 and IPv6.

use ferrylb_model::IpFamily;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// One block of the pool: an inclusive range of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    first: IpAddr,
    last: IpAddr,
}

/// A set of addresses to hand out, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPool {
    blocks: Vec<Block>,
}

/// A pool entry that is neither a CIDR nor a range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid address pool entry {0:?}: use a CIDR (192.0.2.0/28, 2001:db8::/120) or a range \
     (192.0.2.10-192.0.2.20) of one address family, comma-separated"
)]
pub struct PoolError(pub String);

impl FromStr for AddressPool {
    type Err = PoolError;

    /// Parses `"127.0.0.100-127.0.0.199, 10.0.0.0/30"`.
    fn from_str(s: &str) -> Result<Self, PoolError> {
        let mut blocks = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || PoolError(part.to_owned());
            let block = if let Some((a, b)) = part.split_once('-') {
                let first: IpAddr = a.trim().parse().map_err(|_| bad())?;
                let last: IpAddr = b.trim().parse().map_err(|_| bad())?;
                if first.is_ipv4() != last.is_ipv4() || first > last {
                    return Err(bad());
                }
                Block { first, last }
            } else {
                let net: IpNet = part.parse().map_err(|_| bad())?;
                let net = net.trunc();
                Block {
                    first: net.network(),
                    last: net.broadcast(),
                }
            };
            blocks.push(block);
        }
        if blocks.is_empty() {
            return Err(PoolError(s.to_owned()));
        }
        Ok(AddressPool { blocks })
    }
}

impl AddressPool {
    /// Whether `ip` belongs to the pool.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.blocks
            .iter()
            .any(|b| b.first.is_ipv4() == ip.is_ipv4() && b.first <= ip && ip <= b.last)
    }

    /// The pool's addresses in order, lazily (a /64 is not materialised).
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.iter_family(None)
    }

    /// The pool's addresses of `family` (all with `None`) in order, lazily.
    pub fn iter_family(&self, family: Option<IpFamily>) -> impl Iterator<Item = IpAddr> + '_ {
        self.blocks
            .iter()
            .filter(move |b| family.is_none_or(|f| IpFamily::of(b.first) == f))
            .flat_map(|b| {
                let mut next = Some(b.first);
                std::iter::from_fn(move || {
                    let cur = next?;
                    next = if cur == b.last { None } else { successor(cur) };
                    Some(cur)
                })
            })
    }
}

fn successor(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v) => u32::from(v).checked_add(1).map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(v) => u128::from(v).checked_add(1).map(|n| IpAddr::V6(n.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(pool: &str) -> Vec<String> {
        pool.parse::<AddressPool>()
            .unwrap()
            .iter()
            .map(|i| i.to_string())
            .collect()
    }

    #[test]
    fn ranges_and_cidrs_in_order() {
        assert_eq!(
            ips("127.0.0.100-127.0.0.102"),
            vec!["127.0.0.100", "127.0.0.101", "127.0.0.102"]
        );
        assert_eq!(
            ips("10.0.0.0/31, 127.0.0.5-127.0.0.5"),
            vec!["10.0.0.0", "10.0.0.1", "127.0.0.5"]
        );
        assert_eq!(
            ips("fd00::fe-fd00::100"),
            vec!["fd00::fe", "fd00::ff", "fd00::100"]
        );
        let big: AddressPool = "2001:db8::/64".parse().unwrap();
        assert_eq!(big.iter().take(2).count(), 2);
        assert!(big.contains("2001:db8::ffff".parse().unwrap()));
        assert!(!big.contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn rejects_nonsense() {
        for bad in [
            "",
            "pool",
            "10.0.0.5-10.0.0.1",
            "10.0.0.1-fd00::1",
            "10.0.0.0/33",
            "1.2.3.4-",
        ] {
            assert!(bad.parse::<AddressPool>().is_err(), "{bad:?}");
        }
    }
}
