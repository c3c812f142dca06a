//! What a provider is asked to build: a load balancer for one Service.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// Identifies the Service a load balancer belongs to. The uid makes a
/// Service deleted and created again under the same name a different owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything needed to find a load balancer again, and so to delete it:
/// derived from the Service alone, so a restart finds what it made before.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LoadBalancerRef {
    pub key: ServiceKey,
    /// Deterministic name, see [`load_balancer_name`].
    pub name: String,
}

impl LoadBalancerRef {
    /// The reference for a Service, with its deterministic name.
    pub fn for_service(key: ServiceKey) -> Self {
        let name = load_balancer_name(&key);
        Self { key, name }
    }
}

/// The load balancer name for a Service: `fl-<namespace>-<name>-<hash>`,
/// at most 32 characters (AWS's limit for load balancers and target groups),
/// lowercase alphanumerics and `-` only.
///
/// # Contract
/// The same Service (namespace, name, uid) always gets the same name; two
/// different Services get different names (the hash covers all three, so
/// truncating namespace and name loses no uniqueness).
pub fn load_balancer_name(key: &ServiceKey) -> String {
    let digest = Sha256::digest(format!("{}/{}/{}", key.namespace, key.name, key.uid));
    let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!(
        "fl-{}-{}-{hash}",
        name_part(&key.namespace, 8),
        name_part(&key.name, 8)
    )
}

fn name_part(s: &str, max: usize) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    let trimmed = cleaned.trim_matches('-');
    if trimmed.is_empty() {
        "x".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The items of a comma-separated annotation value, trimmed, empty items
/// dropped (`"a, b,,c"` → `["a", "b", "c"]`).
pub fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The name Kubernetes uses (`TCP`, `UDP`, `SCTP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One Service port: traffic to `port` on the load balancer goes to
/// `node_port` on every target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Listener {
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: u16,
    /// The Service port's name (empty for a single unnamed port).
    pub name: String,
}

/// One eligible node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub node: String,
    /// The node's `InternalIP` addresses, in the order the Node lists them.
    pub addresses: Vec<IpAddr>,
    /// `spec.providerID`, e.g. `aws:///us-east-1a/i-0123456789abcdef0`.
    pub provider_id: Option<String>,
}

/// One ready-or-not address of a Service's endpoint on one of its ports,
/// from the Service's EndpointSlices: what a provider registers when it
/// targets pods rather than nodes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The Service port this is for: its name (empty for a single unnamed
    /// port) and protocol, as the EndpointSlice's port names it.
    pub port_name: String,
    pub protocol: Protocol,
    /// The pod's address and the port it serves on.
    pub address: IpAddr,
    pub port: u16,
    /// `conditions.ready` (absent reads as ready, as the API says).
    pub ready: bool,
    /// `conditions.terminating`: the pod is going away; it gets no new
    /// connections.
    pub terminating: bool,
    /// `nodeName`: the node the pod runs on.
    pub node: Option<String>,
    /// `zone`: the endpoint's zone.
    pub zone: Option<String>,
}

impl Endpoint {
    /// Whether this serves `listener`'s port.
    pub fn serves(&self, listener: &Listener) -> bool {
        self.port_name == listener.name && self.protocol == listener.protocol
    }
}

/// How the load balancer decides a node can take traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthCheck {
    /// A TCP connection to the listener's own nodePort.
    TrafficPort,
    /// `externalTrafficPolicy: Local`: kube-proxy answers `GET path` on
    /// `port` (the Service's healthCheckNodePort) with 200 only on nodes
    /// that run a ready endpoint.
    Http { port: u16, path: String },
}

/// A load balancer for one Service, provider-neutral. Built by a pure
/// function from the Service, the eligible Nodes and the controller's
/// configuration; providers only carry it out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoadBalancerSpec {
    pub lb: LoadBalancerRef,
    /// Sorted by (protocol, port).
    pub listeners: Vec<Listener>,
    /// Sorted by node name. Every Service has the same eligible nodes, so
    /// one list is shared by all their specs.
    pub targets: Arc<[Target]>,
    pub health_check: HealthCheck,
    /// Client addresses allowed; empty means everyone.
    pub source_ranges: Vec<IpNet>,
    /// Addresses the Service asks for (`spec.loadBalancerIP` or
    /// `ferrylb.io/load-balancer-ips`), for providers that assign addresses.
    pub requested_ips: Vec<IpAddr>,
    /// `ferrylb.io/allow-shared-ip`: Services with the same key may share an
    /// address when their ports do not collide.
    pub shared_ip_key: Option<String>,
    /// The Service's `spec.ipFamilies`, in its order of preference: an
    /// address-assigning provider hands out addresses of these families
    /// only. Empty: any family.
    pub ip_families: Vec<IpFamily>,
    /// `spec.ipFamilyPolicy: RequireDualStack`: an address-assigning
    /// provider gives one address of each family or none (with
    /// `PreferDualStack`, what it has room in).
    pub require_dual_stack: bool,
    /// Addresses the Service's status already carries: an address-assigning
    /// provider keeps them, so addresses survive restarts with no store of
    /// their own. Not part of what the load balancer should look like; see
    /// [`LoadBalancerSpec::same_desired_state`].
    pub status_ips: Vec<IpAddr>,
    /// The Service's endpoints, sorted, for providers that target pods or
    /// prefer nodes running them: `None` unless the provider asked for them
    /// ([`crate::LoadBalancerProvider::needs_endpoints`]) and the
    /// controller has listed them.
    pub endpoints: Option<Arc<[Endpoint]>>,
    /// The Service's annotations that belong to providers
    /// (`service.beta.kubernetes.io/aws-load-balancer-*`, `ferrylb.io/*`):
    /// each provider parses its own into typed options and rejects bad
    /// values with [`crate::ProviderError::invalid`].
    pub annotations: BTreeMap<String, String>,
}

/// An address family, as `spec.ipFamilies` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    /// The family of `ip`.
    pub fn of(ip: std::net::IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    /// `IPv4` or `IPv6`, as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    /// From Kubernetes' spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Self::V4),
            "IPv6" => Some(Self::V6),
            _ => None,
        }
    }
}

impl LoadBalancerSpec {
    /// Whether `other` asks for the same load balancer (ignoring
    /// `status_ips`, which is feedback, not intent).
    pub fn same_desired_state(&self, other: &LoadBalancerSpec) -> bool {
        self.lb == other.lb
            && self.listeners == other.listeners
            && self.targets == other.targets
            && self.endpoints == other.endpoints
            && self.health_check == other.health_check
            && self.source_ranges == other.source_ranges
            && self.requested_ips == other.requested_ips
            && self.shared_ip_key == other.shared_ip_key
            && self.ip_families == other.ip_families
            && self.require_dual_stack == other.require_dual_stack
            && self.annotations == other.annotations
    }

    /// Whether `other` differs from this spec in its targets (nodes or
    /// endpoints) alone, so a provider's cheap target-only path can carry
    /// the change. A spec that starts or stops carrying endpoints is more
    /// than a target change (the provider asked for them for a reason).
    pub fn differs_only_in_targets(&self, other: &LoadBalancerSpec) -> bool {
        (self.targets != other.targets || self.endpoints != other.endpoints)
            && self.endpoints.is_some() == other.endpoints.is_some()
            && LoadBalancerSpec {
                targets: other.targets.clone(),
                endpoints: other.endpoints.clone(),
                ..self.clone()
            }
            .same_desired_state(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str, uid: &str) -> ServiceKey {
        ServiceKey {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn names_are_short_stable_and_distinct() {
        let a = load_balancer_name(&key("production-payments", "checkout-frontend", "u1"));
        assert!(a.len() <= 32, "{a} is {} chars", a.len());
        assert_eq!(
            a,
            load_balancer_name(&key("production-payments", "checkout-frontend", "u1"))
        );
        assert!(a.starts_with("fl-producti-checkout-"));
        assert_ne!(
            a,
            load_balancer_name(&key("production-payments", "checkout-frontend", "u2"))
        );
        assert_ne!(
            a,
            load_balancer_name(&key("production-payments", "checkout-frontendx", "u1"))
        );
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn an_endpoint_change_is_a_target_change_and_starting_to_carry_them_is_not() {
        let base = crate::conformance::sample_spec("ns", "web", 30080, vec![]);
        let ep = |ready| Endpoint {
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            address: "10.1.0.5".parse().unwrap(),
            port: 8080,
            ready,
            terminating: !ready,
            node: None,
            zone: None,
        };
        let with = |eps: Vec<Endpoint>| LoadBalancerSpec {
            endpoints: Some(eps.into()),
            ..base.clone()
        };
        assert!(with(vec![ep(true)]).differs_only_in_targets(&with(vec![ep(false)])));
        assert!(!with(vec![ep(true)]).same_desired_state(&with(vec![ep(false)])));
        assert!(with(vec![ep(true)]).same_desired_state(&with(vec![ep(true)])));
        assert!(!base.differs_only_in_targets(&with(vec![ep(true)])));
        assert!(!with(vec![]).differs_only_in_targets(&base));
        assert!(ep(true).serves(&base.listeners[0]));
    }

    #[test]
    fn truncation_never_leaves_a_dangling_dash() {
        let n = load_balancer_name(&key("abcdefg-hij", "-------x", "u"));
        assert!(n.starts_with("fl-abcdefg-x-"), "{n}");
        assert!(!n.contains("--"), "{n}");
    }
}
