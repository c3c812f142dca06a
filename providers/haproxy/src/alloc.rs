//! Choosing a Service's VIP: what it asks for, what it already has, a
//! compatible shared address, or the first free one.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use ferrylb_model::reason;
use ferrylb_model::{IpFamily, LoadBalancerRef, LoadBalancerSpec, Protocol, ProviderError};

use crate::pool::AddressPool;

/// How soon a Service waiting for an address is tried again (the controller
/// also retries at once when any load balancer is deleted).
pub const RETRY: Duration = Duration::from_secs(30);

/// Who holds an address, as far as allocation cares.
#[derive(Debug, Clone)]
pub struct Holder {
    pub vip: IpAddr,
    pub shared_key: Option<String>,
    pub ports: Vec<(Protocol, u16)>,
}

impl Holder {
    pub fn of(spec: &LoadBalancerSpec, vip: IpAddr) -> Holder {
        Holder {
            vip,
            shared_key: spec.shared_ip_key.clone(),
            ports: spec
                .listeners
                .iter()
                .map(|l| (l.protocol, l.port))
                .collect(),
        }
    }
}

/// Why `ip` cannot go to `spec`, or `None` when it can.
fn conflict(
    ip: IpAddr,
    spec: &LoadBalancerSpec,
    holders: &BTreeMap<LoadBalancerRef, Holder>,
) -> Option<ProviderError> {
    for (r, h) in holders
        .iter()
        .filter(|(r, h)| h.vip == ip && **r != spec.lb)
    {
        let same_key = spec.shared_ip_key.is_some() && spec.shared_ip_key == h.shared_key;
        if !same_key {
            return Some(ProviderError::retry_after(
                RETRY,
                reason::ADDRESS_IN_USE,
                format!(
                    "address {ip} is in use by Service {}; to share it, give both Services the same \
                     ferrylb.io/allow-shared-ip value",
                    r.key
                ),
            ));
        }
        if let Some(p) = spec
            .listeners
            .iter()
            .find(|l| h.ports.contains(&(l.protocol, l.port)))
        {
            return Some(ProviderError::retry_after(
                RETRY,
                reason::PORT_COLLISION,
                format!(
                    "cannot share address {ip} with Service {}: both use port {}/{}",
                    r.key, p.port, p.protocol
                ),
            ));
        }
    }
    None
}

/// The VIP for `spec`, given who holds what (`spec`'s own entry, if any, is
/// ignored as a holder).
///
/// Order: the requested address (`spec.requested_ips`); the address the
/// Service holds now (`current`) or carries in its status; an address shared
/// under the same key; the pool's first free address.
///
/// # Errors
/// `AddressNotInPool` (permanent) for a requested address outside the pool;
/// `AddressInUse`, `PortCollision` and `PoolExhausted` (retried).
pub fn allocate(
    pool: &AddressPool,
    spec: &LoadBalancerSpec,
    current: Option<IpAddr>,
    holders: &BTreeMap<LoadBalancerRef, Holder>,
) -> Result<IpAddr, ProviderError> {
    let family_ok = |ip: IpAddr| wanted(spec, ip);
    // A requested address of another family is the user's choice, and it
    // works (HAProxy proxies it to the nodes' nodePorts); the status warns
    // (see `crate::status_of`).
    if !spec.requested_ips.is_empty() {
        let ip = pick_family(spec, pool);
        if !pool.contains(ip) {
            return Err(ProviderError::permanent(
                reason::ADDRESS_NOT_IN_POOL,
                format!(
                    "requested address {ip} is not in the HAProxy address pool; request an address from the pool or leave it unset"
                ),
            ));
        }
        return match conflict(ip, spec, holders) {
            Some(e) => Err(e),
            None => Ok(ip),
        };
    }
    for ip in current.into_iter().chain(spec.status_ips.iter().copied()) {
        if pool.contains(ip) && family_ok(ip) && conflict(ip, spec, holders).is_none() {
            return Ok(ip);
        }
    }
    if spec.shared_ip_key.is_some() {
        let mut shared: Vec<IpAddr> = holders
            .iter()
            .filter(|(r, h)| **r != spec.lb && h.shared_key == spec.shared_ip_key)
            .map(|(_, h)| h.vip)
            .filter(|ip| family_ok(*ip))
            .collect();
        shared.sort();
        shared.dedup();
        if let Some(ip) = shared
            .into_iter()
            .find(|ip| conflict(*ip, spec, holders).is_none())
        {
            return Ok(ip);
        }
    }
    let used: HashSet<IpAddr> = holders
        .iter()
        .filter(|(r, _)| **r != spec.lb)
        .map(|(_, h)| h.vip)
        .collect();
    // In the Service's order of preference (`PreferDualStack` gets what
    // the pool has room in).
    let order: Vec<Option<IpFamily>> = if spec.ip_families.is_empty() {
        vec![None]
    } else {
        spec.ip_families.iter().copied().map(Some).collect()
    };
    order
        .into_iter()
        .find_map(|f| pool.iter_family(f).find(|ip| !used.contains(ip)))
        .ok_or_else(|| {
            let what = if spec.ip_families.is_empty() {
                "every address in the HAProxy address pool is in use".to_owned()
            } else {
                format!(
                    "no address of the Service's families in the HAProxy address pool is free \
                 (spec.ipFamilies: [{}])",
                    families(spec)
                )
            };
            ProviderError::retry_after(
                RETRY,
                reason::POOL_EXHAUSTED,
                format!("{what}; the Service waits until one is freed (or widen the pool)"),
            )
        })
}

/// Of the requested addresses, the first of a family the pool serves.
/// Whether `ip` is of a family `spec` takes.
pub fn wanted(spec: &LoadBalancerSpec, ip: IpAddr) -> bool {
    spec.ip_families.is_empty() || spec.ip_families.contains(&IpFamily::of(ip))
}

/// `spec.ipFamilies` as Kubernetes spells it: `IPv4, IPv6`.
pub fn families(spec: &LoadBalancerSpec) -> String {
    spec.ip_families
        .iter()
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn pick_family(spec: &LoadBalancerSpec, pool: &AddressPool) -> IpAddr {
    let requested = &spec.requested_ips;
    let in_pool = |ip: &IpAddr| pool.contains(*ip);
    requested
        .iter()
        .copied()
        .find(|ip| in_pool(ip) && wanted(spec, *ip))
        .or_else(|| requested.iter().copied().find(in_pool))
        .unwrap_or(requested[0])
}

#[cfg(test)]
mod tests {
    use ferrylb_model::conformance::sample_spec;

    use super::*;

    fn spec(name: &str, port: u16, key: Option<&str>) -> LoadBalancerSpec {
        let mut s = sample_spec("ns", name, 30000, vec![]);
        s.listeners[0].port = port;
        s.shared_ip_key = key.map(str::to_owned);
        s
    }

    fn pool() -> AddressPool {
        "127.0.0.100-127.0.0.102".parse().unwrap()
    }

    fn hold(h: &mut BTreeMap<LoadBalancerRef, Holder>, s: &LoadBalancerSpec, ip: IpAddr) {
        h.insert(s.lb.clone(), Holder::of(s, ip));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn first_free_then_exhausted() {
        let mut h = BTreeMap::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let s = spec(name, 80, None);
            let got = allocate(&pool(), &s, None, &h).unwrap();
            assert_eq!(got, ip(&format!("127.0.0.{}", 100 + i)));
            hold(&mut h, &s, got);
        }
        let e = allocate(&pool(), &spec("d", 80, None), None, &h).unwrap_err();
        assert_eq!(e.reason, "PoolExhausted");
        assert!(matches!(e.kind, ferrylb_model::ErrorKind::RetryAfter(_)));
    }

    /// A pool like the lab's: a few IPv4 addresses, then IPv6 ones.
    fn mixed_pool() -> AddressPool {
        "127.0.0.100-127.0.0.101,fd51::200-fd51::201"
            .parse()
            .unwrap()
    }

    fn with_families(name: &str, families: &[IpFamily]) -> LoadBalancerSpec {
        let mut s = spec(name, 80, None);
        s.ip_families = families.to_vec();
        s
    }

    #[test]
    fn addresses_follow_the_services_ip_families() {
        use IpFamily::{V4, V6};
        let mut h = BTreeMap::new();
        for name in ["a", "b"] {
            let s = with_families(name, &[V4]);
            let got = allocate(&mixed_pool(), &s, None, &h).unwrap();
            assert!(got.is_ipv4(), "{got}");
            hold(&mut h, &s, got);
        }
        // IPv4 is used up: an IPv4-only Service waits, naming its family,
        // and is never given an IPv6 address.
        let e = allocate(&mixed_pool(), &with_families("c", &[V4]), None, &h).unwrap_err();
        assert_eq!(e.reason, "PoolExhausted");
        assert!(e.message.contains("[IPv4]"), "{e}");
        // An IPv6 Service, and a dual-stack one preferring IPv4, get IPv6.
        let v6 = allocate(&mixed_pool(), &with_families("d", &[V6]), None, &h).unwrap();
        assert_eq!(v6, ip("fd51::200"));
        let prefer = allocate(&mixed_pool(), &with_families("e", &[V4, V6]), None, &h).unwrap();
        assert_eq!(prefer, ip("fd51::200"));
        // No families (a manifest without them): any.
        assert_eq!(
            allocate(&mixed_pool(), &with_families("f", &[]), None, &h).unwrap(),
            ip("fd51::200")
        );
        // An IPv6-only Service first in line takes IPv6 even where IPv4 is free.
        assert_eq!(
            allocate(
                &mixed_pool(),
                &with_families("g", &[V6, V4]),
                None,
                &BTreeMap::new()
            )
            .unwrap(),
            ip("fd51::200")
        );
    }

    #[test]
    fn requested_and_kept_addresses_follow_the_families() {
        use IpFamily::V4;
        // Of the requested ones, one of the Service's family first; one of
        // another family only when asked for alone (the status warns).
        let mut s = with_families("a", &[V4]);
        s.requested_ips = vec![ip("fd51::201"), ip("127.0.0.101")];
        assert_eq!(
            allocate(&mixed_pool(), &s, None, &BTreeMap::new()).unwrap(),
            ip("127.0.0.101")
        );
        s.requested_ips = vec![ip("fd51::201")];
        assert_eq!(
            allocate(&mixed_pool(), &s, None, &BTreeMap::new()).unwrap(),
            ip("fd51::201")
        );
        // A status address of the wrong family (given before the fix) is
        // replaced by one of the right family.
        let mut s = with_families("b", &[V4]);
        s.status_ips = vec![ip("fd51::200")];
        assert_eq!(
            allocate(&mixed_pool(), &s, Some(ip("fd51::200")), &BTreeMap::new()).unwrap(),
            ip("127.0.0.100")
        );
    }

    #[test]
    fn keeps_current_and_status_addresses() {
        let mut h = BTreeMap::new();
        let a = spec("a", 80, None);
        assert_eq!(
            allocate(&pool(), &a, Some(ip("127.0.0.102")), &h).unwrap(),
            ip("127.0.0.102")
        );
        let mut b = spec("b", 80, None);
        b.status_ips = vec![ip("10.9.9.9"), ip("127.0.0.101")];
        assert_eq!(allocate(&pool(), &b, None, &h).unwrap(), ip("127.0.0.101"));
        // A status address taken by someone else is not kept.
        hold(&mut h, &a, ip("127.0.0.101"));
        assert_eq!(allocate(&pool(), &b, None, &h).unwrap(), ip("127.0.0.100"));
    }

    #[test]
    fn requested_addresses_must_be_in_the_pool_and_free() {
        let mut h = BTreeMap::new();
        let mut a = spec("a", 80, None);
        a.requested_ips = vec![ip("127.0.0.101")];
        assert_eq!(allocate(&pool(), &a, None, &h).unwrap(), ip("127.0.0.101"));
        hold(&mut h, &a, ip("127.0.0.101"));
        let mut b = spec("b", 81, None);
        b.requested_ips = vec![ip("127.0.0.101")];
        let e = allocate(&pool(), &b, None, &h).unwrap_err();
        assert_eq!(e.reason, "AddressInUse");
        assert!(e.message.contains("ns/a"), "{e}");
        b.requested_ips = vec![ip("192.0.2.1")];
        let e = allocate(&pool(), &b, None, &h).unwrap_err();
        assert_eq!(
            (e.reason.as_str(), e.kind),
            ("AddressNotInPool", ferrylb_model::ErrorKind::Permanent)
        );
    }

    #[test]
    fn sharing_needs_the_same_key_and_distinct_ports() {
        let mut h = BTreeMap::new();
        let a = spec("a", 80, Some("k"));
        hold(&mut h, &a, ip("127.0.0.100"));
        let b = spec("b", 443, Some("k"));
        assert_eq!(allocate(&pool(), &b, None, &h).unwrap(), ip("127.0.0.100"));
        let c = spec("c", 80, Some("k"));
        assert_eq!(
            allocate(&pool(), &c, None, &h).unwrap(),
            ip("127.0.0.101"),
            "port 80 collides, so a new address"
        );
        let mut d = spec("d", 80, Some("k"));
        d.requested_ips = vec![ip("127.0.0.100")];
        assert_eq!(
            allocate(&pool(), &d, None, &h).unwrap_err().reason,
            "PortCollision"
        );
        let mut e = spec("e", 8080, Some("other"));
        e.requested_ips = vec![ip("127.0.0.100")];
        assert_eq!(
            allocate(&pool(), &e, None, &h).unwrap_err().reason,
            "AddressInUse"
        );
    }
}
