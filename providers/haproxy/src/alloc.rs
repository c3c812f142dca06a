//! Choosing a Service's VIPs: one per address family it is given, each what
//! it asks for, what it already has, a compatible shared address, or the
//! first free one.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use ferrylb_model::reason;
use ferrylb_model::{IpFamily, LoadBalancerRef, LoadBalancerSpec, Protocol, ProviderError};

use crate::pool::AddressPool;

/// How soon a Service waiting for an address is tried again (the controller
/// also retries at once when any load balancer is deleted).
pub const RETRY: Duration = Duration::from_secs(30);

/// Who holds which addresses, as far as allocation cares.
#[derive(Debug, Clone)]
pub struct Holder {
    pub vips: Vec<IpAddr>,
    pub shared_key: Option<String>,
    pub ports: Vec<(Protocol, u16)>,
}

impl Holder {
    pub fn of(spec: &LoadBalancerSpec, vips: &[IpAddr]) -> Holder {
        Holder {
            vips: vips.to_vec(),
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
        .filter(|(r, h)| h.vips.contains(&ip) && **r != spec.lb)
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

/// The VIPs for `spec`, given who holds what (`spec`'s own entry, if any, is
/// ignored as a holder): one per family the Service is given, in the order
/// of its `spec.ipFamilies` (the first is its primary address).
///
/// A single-stack Service (or one whose families are not known) gets one
/// address of its family (of any, when not known). A dual-stack Service gets
/// one of each family: with `RequireDualStack` both or none; with
/// `PreferDualStack`, what the pool has room in.
///
/// For each family, in order: the requested address of that family
/// (`spec.requested_ips`); the address the Service holds now (`current`) or
/// carries in its status; an address shared under the same key; the pool's
/// first free address of the family.
///
/// # Errors
/// `AddressNotInPool` and `AddressFamilyMismatch` (permanent) for a
/// requested address outside the pool or of a family the Service does not
/// have; `AddressInUse`, `PortCollision` and `PoolExhausted` (retried).
pub fn allocate(
    pool: &AddressPool,
    spec: &LoadBalancerSpec,
    current: &[IpAddr],
    holders: &BTreeMap<LoadBalancerRef, Holder>,
) -> Result<Vec<IpAddr>, ProviderError> {
    check_requested(pool, spec)?;
    let used: HashSet<IpAddr> = holders
        .iter()
        .filter(|(r, _)| **r != spec.lb)
        .flat_map(|(_, h)| h.vips.iter().copied())
        .collect();
    let slots: Vec<Option<IpFamily>> = if spec.ip_families.is_empty() {
        vec![None]
    } else {
        spec.ip_families.iter().copied().map(Some).collect()
    };
    let mut vips = Vec::new();
    let mut missing = Vec::new();
    for family in slots {
        match for_family(pool, spec, family, current, holders, &used)? {
            Some(ip) => vips.push(ip),
            None => missing.extend(family),
        }
    }
    let dual_stack_short = spec.require_dual_stack && !missing.is_empty();
    if vips.is_empty() || dual_stack_short {
        return Err(exhausted(spec, &missing));
    }
    Ok(vips)
}

/// Refuses requested addresses outside the pool or of a family the Service
/// does not have.
fn check_requested(pool: &AddressPool, spec: &LoadBalancerSpec) -> Result<(), ProviderError> {
    for &ip in &spec.requested_ips {
        if !pool.contains(ip) {
            return Err(ProviderError::permanent(
                reason::ADDRESS_NOT_IN_POOL,
                format!(
                    "requested address {ip} is not in the HAProxy address pool; request an address from the pool or leave it unset"
                ),
            ));
        }
        if !wanted(spec, ip) {
            return Err(ProviderError::permanent(
                reason::ADDRESS_FAMILY_MISMATCH,
                format!(
                    "requested address {ip} is {}, but the Service's spec.ipFamilies is [{}]; \
                     request an address of those families, or make the Service dual-stack \
                     (spec.ipFamilyPolicy: PreferDualStack or RequireDualStack)",
                    IpFamily::of(ip).as_str(),
                    families(spec)
                ),
            ));
        }
    }
    Ok(())
}

/// The address of `family` (any with `None`) for `spec`, `None` when the
/// pool has no free one.
fn for_family(
    pool: &AddressPool,
    spec: &LoadBalancerSpec,
    family: Option<IpFamily>,
    current: &[IpAddr],
    holders: &BTreeMap<LoadBalancerRef, Holder>,
    used: &HashSet<IpAddr>,
) -> Result<Option<IpAddr>, ProviderError> {
    let of_family = |ip: &IpAddr| family.is_none_or(|f| IpFamily::of(*ip) == f);
    if let Some(ip) = spec.requested_ips.iter().copied().find(of_family) {
        return match conflict(ip, spec, holders) {
            Some(e) => Err(e),
            None => Ok(Some(ip)),
        };
    }
    let free = |ip: &IpAddr| conflict(*ip, spec, holders).is_none();
    let kept = current
        .iter()
        .chain(&spec.status_ips)
        .copied()
        .filter(of_family)
        .find(|ip| pool.contains(*ip) && wanted(spec, *ip) && free(ip));
    if kept.is_some() {
        return Ok(kept);
    }
    if spec.shared_ip_key.is_some() {
        let mut shared: Vec<IpAddr> = holders
            .iter()
            .filter(|(r, h)| **r != spec.lb && h.shared_key == spec.shared_ip_key)
            .flat_map(|(_, h)| h.vips.iter().copied())
            .filter(of_family)
            .collect();
        shared.sort();
        shared.dedup();
        if let Some(ip) = shared.into_iter().find(free) {
            return Ok(Some(ip));
        }
    }
    Ok(pool.iter_family(family).find(|ip| !used.contains(ip)))
}

/// `PoolExhausted` for `spec`, naming the families it found no room in.
fn exhausted(spec: &LoadBalancerSpec, missing: &[IpFamily]) -> ProviderError {
    let what = if spec.ip_families.is_empty() {
        "every address in the HAProxy address pool is in use".to_owned()
    } else {
        let names: Vec<&str> = missing.iter().map(|f| f.as_str()).collect();
        format!(
            "no {} address in the HAProxy address pool is free (spec.ipFamilies: [{}]{})",
            names.join(" or "),
            families(spec),
            if spec.require_dual_stack {
                ", ipFamilyPolicy: RequireDualStack"
            } else {
                ""
            }
        )
    };
    ProviderError::retry_after(
        RETRY,
        reason::POOL_EXHAUSTED,
        format!("{what}; the Service waits until one is freed (or widen the pool)"),
    )
}

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

#[cfg(test)]
mod tests {
    use IpFamily::{V4, V6};
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

    /// A pool like the lab's: a few IPv4 addresses, then IPv6 ones.
    fn mixed_pool() -> AddressPool {
        "127.0.0.100-127.0.0.101,fd51::200-fd51::201"
            .parse()
            .unwrap()
    }

    type Holders = BTreeMap<LoadBalancerRef, Holder>;

    fn hold(h: &mut Holders, s: &LoadBalancerSpec, vips: &[IpAddr]) {
        h.insert(s.lb.clone(), Holder::of(s, vips));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The addresses `spec` gets, as text.
    fn got(pool: &AddressPool, spec: &LoadBalancerSpec, current: &[IpAddr], h: &Holders) -> String {
        let vips = allocate(pool, spec, current, h).unwrap();
        vips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn with_families(name: &str, families: &[IpFamily]) -> LoadBalancerSpec {
        let mut s = spec(name, 80, None);
        s.ip_families = families.to_vec();
        s
    }

    #[test]
    fn first_free_then_exhausted() {
        let mut h = Holders::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let s = spec(name, 80, None);
            let vips = allocate(&pool(), &s, &[], &h).unwrap();
            assert_eq!(vips, vec![ip(&format!("127.0.0.{}", 100 + i))]);
            hold(&mut h, &s, &vips);
        }
        let e = allocate(&pool(), &spec("d", 80, None), &[], &h).unwrap_err();
        assert_eq!(e.reason, "PoolExhausted");
        assert!(matches!(e.kind, ferrylb_model::ErrorKind::RetryAfter(_)));
    }

    #[test]
    fn addresses_follow_the_services_ip_families() {
        let mut h = Holders::new();
        for name in ["a", "b"] {
            let s = with_families(name, &[V4]);
            let vips = allocate(&mixed_pool(), &s, &[], &h).unwrap();
            assert!(vips.len() == 1 && vips[0].is_ipv4(), "{vips:?}");
            hold(&mut h, &s, &vips);
        }
        // IPv4 is used up: an IPv4-only Service waits, naming its family,
        // and is never given an IPv6 address.
        let e = allocate(&mixed_pool(), &with_families("c", &[V4]), &[], &h).unwrap_err();
        assert_eq!(e.reason, "PoolExhausted");
        assert!(
            e.message.contains("no IPv4 address") && e.message.contains("[IPv4]"),
            "{e}"
        );
        // An IPv6 Service gets IPv6; a PreferDualStack one what the pool
        // has room in (IPv6 only here).
        assert_eq!(
            got(&mixed_pool(), &with_families("d", &[V6]), &[], &h),
            "fd51::200"
        );
        assert_eq!(
            got(&mixed_pool(), &with_families("e", &[V4, V6]), &[], &h),
            "fd51::200"
        );
        // RequireDualStack: one of each or none.
        let mut required = with_families("r", &[V4, V6]);
        required.require_dual_stack = true;
        let e = allocate(&mixed_pool(), &required, &[], &h).unwrap_err();
        assert_eq!(e.reason, "PoolExhausted");
        assert!(
            e.message.contains("no IPv4 address") && e.message.contains("RequireDualStack"),
            "{e}"
        );
        // No families (a manifest without them): one address of any family.
        assert_eq!(
            got(&mixed_pool(), &with_families("f", &[]), &[], &h),
            "fd51::200"
        );
    }

    #[test]
    fn a_dual_stack_service_gets_one_address_of_each_family_primary_first() {
        let empty = Holders::new();
        let mut s = with_families("a", &[V4, V6]);
        assert_eq!(got(&mixed_pool(), &s, &[], &empty), "127.0.0.100 fd51::200");
        s.require_dual_stack = true;
        assert_eq!(got(&mixed_pool(), &s, &[], &empty), "127.0.0.100 fd51::200");
        let s6 = with_families("b", &[V6, V4]);
        assert_eq!(
            got(&mixed_pool(), &s6, &[], &empty),
            "fd51::200 127.0.0.100"
        );
        // A requested address fixes its family; the other comes from the pool.
        s.requested_ips = vec![ip("fd51::201")];
        assert_eq!(got(&mixed_pool(), &s, &[], &empty), "127.0.0.100 fd51::201");
        // Held addresses are kept, family by family.
        s.requested_ips.clear();
        let current = [ip("127.0.0.101"), ip("fd51::201")];
        assert_eq!(
            got(&mixed_pool(), &s, &current, &empty),
            "127.0.0.101 fd51::201"
        );
        // Sharing works per family too.
        let mut h = Holders::new();
        let mut a = with_families("a", &[V4, V6]);
        a.shared_ip_key = Some("k".into());
        hold(&mut h, &a, &[ip("127.0.0.101"), ip("fd51::201")]);
        let mut b = with_families("b", &[V4, V6]);
        b.shared_ip_key = Some("k".into());
        b.listeners[0].port = 443;
        assert_eq!(got(&mixed_pool(), &b, &[], &h), "127.0.0.101 fd51::201");
    }

    #[test]
    fn requested_and_kept_addresses_follow_the_families() {
        // Of the requested ones, the one of the Service's family.
        let mut s = with_families("a", &[V4]);
        s.requested_ips = vec![ip("127.0.0.101")];
        assert_eq!(got(&mixed_pool(), &s, &[], &Holders::new()), "127.0.0.101");
        // One of a family the Service does not have is refused, naming it.
        s.requested_ips = vec![ip("fd51::201")];
        let e = allocate(&mixed_pool(), &s, &[], &Holders::new()).unwrap_err();
        assert_eq!(
            (e.reason.as_str(), e.kind),
            ("AddressFamilyMismatch", ferrylb_model::ErrorKind::Permanent)
        );
        assert!(
            e.message.contains("fd51::201 is IPv6") && e.message.contains("[IPv4]"),
            "{e}"
        );
        // A status address of the wrong family (given before the fix) is
        // replaced by one of the right family.
        let mut s = with_families("b", &[V4]);
        s.status_ips = vec![ip("fd51::200")];
        assert_eq!(
            got(&mixed_pool(), &s, &[ip("fd51::200")], &Holders::new()),
            "127.0.0.100"
        );
    }

    #[test]
    fn keeps_current_and_status_addresses() {
        let mut h = Holders::new();
        let a = spec("a", 80, None);
        assert_eq!(got(&pool(), &a, &[ip("127.0.0.102")], &h), "127.0.0.102");
        let mut b = spec("b", 80, None);
        b.status_ips = vec![ip("10.9.9.9"), ip("127.0.0.101")];
        assert_eq!(got(&pool(), &b, &[], &h), "127.0.0.101");
        // A status address taken by someone else is not kept.
        hold(&mut h, &a, &[ip("127.0.0.101")]);
        assert_eq!(got(&pool(), &b, &[], &h), "127.0.0.100");
    }

    #[test]
    fn requested_addresses_must_be_in_the_pool_and_free() {
        let mut h = Holders::new();
        let mut a = spec("a", 80, None);
        a.requested_ips = vec![ip("127.0.0.101")];
        assert_eq!(got(&pool(), &a, &[], &h), "127.0.0.101");
        hold(&mut h, &a, &[ip("127.0.0.101")]);
        let mut b = spec("b", 81, None);
        b.requested_ips = vec![ip("127.0.0.101")];
        let e = allocate(&pool(), &b, &[], &h).unwrap_err();
        assert_eq!(e.reason, "AddressInUse");
        assert!(e.message.contains("ns/a"), "{e}");
        b.requested_ips = vec![ip("192.0.2.1")];
        let e = allocate(&pool(), &b, &[], &h).unwrap_err();
        assert_eq!(
            (e.reason.as_str(), e.kind),
            ("AddressNotInPool", ferrylb_model::ErrorKind::Permanent)
        );
    }

    #[test]
    fn sharing_needs_the_same_key_and_distinct_ports() {
        let mut h = Holders::new();
        let a = spec("a", 80, Some("k"));
        hold(&mut h, &a, &[ip("127.0.0.100")]);
        let b = spec("b", 443, Some("k"));
        assert_eq!(got(&pool(), &b, &[], &h), "127.0.0.100");
        let c = spec("c", 80, Some("k"));
        assert_eq!(
            got(&pool(), &c, &[], &h),
            "127.0.0.101",
            "port 80 collides, so a new address"
        );
        let mut d = spec("d", 80, Some("k"));
        d.requested_ips = vec![ip("127.0.0.100")];
        assert_eq!(
            allocate(&pool(), &d, &[], &h).unwrap_err().reason,
            "PortCollision"
        );
        let mut e = spec("e", 8080, Some("other"));
        e.requested_ips = vec![ip("127.0.0.100")];
        assert_eq!(
            allocate(&pool(), &e, &[], &h).unwrap_err().reason,
            "AddressInUse"
        );
    }
}
