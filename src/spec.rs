//! Service + eligible Nodes → [`LoadBalancerSpec`]: a pure function, no I/O.
//! Every rejection names the field or annotation, the value, and what is
//! allowed, so the Event a user reads tells them what to fix.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ferrylb_model::{
    Endpoint, HealthCheck, IpFamily, Listener, LoadBalancerRef, LoadBalancerSpec, Protocol,
    ServiceKey, Target, split_list,
};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Addresses a Service asks for, comma-separated.
pub const ANNOTATION_LOAD_BALANCER_IPS: &str = "ferrylb.io/load-balancer-ips";
/// Services with the same value may share one address when ports do not collide.
pub const ANNOTATION_ALLOW_SHARED_IP: &str = "ferrylb.io/allow-shared-ip";
/// Kubernetes' own annotation for source ranges, read when
/// `spec.loadBalancerSourceRanges` is empty.
pub const ANNOTATION_SOURCE_RANGES: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
/// Nodes with this label never receive load balancer traffic.
pub const LABEL_EXCLUDE_FROM_LB: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// The cluster autoscaler's taint on a node it is about to remove.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";
/// Karpenter's taint on a node it is disrupting (draining to remove).
pub const TAINT_KARPENTER_DISRUPTED: &str = "karpenter.sh/disrupted";

/// Annotation prefixes handed through to providers, which parse their own.
const PROVIDER_ANNOTATION_PREFIXES: &[&str] = &[
    "ferrylb.io/",
    "service.beta.kubernetes.io/aws-load-balancer-",
];

/// A Service that cannot be turned into a load balancer as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: invalid value {}: {allowed}", ferrylb_model::excerpt(value))]
pub struct SpecError {
    /// The field path or annotation name, e.g. `spec.ports[1].nodePort`.
    pub field: String,
    pub value: String,
    /// What would be accepted, or what to do.
    pub allowed: String,
}

impl SpecError {
    fn new(field: impl Into<String>, value: impl Into<String>, allowed: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            value: value.into(),
            allowed: allowed.into(),
        }
    }
}

/// Whether a node may receive load balancer traffic (KEP-3458): every node
/// except those being deleted, labelled
/// `node.kubernetes.io/exclude-from-external-load-balancers` (any value but
/// one that reads as false, as Kubernetes' own service controller decides),
/// or tainted for removal (`ToBeDeletedByClusterAutoscaler`, Karpenter's
/// `karpenter.sh/disrupted`). Cordoning alone is no signal (Kubernetes'
/// own service controller stopped treating it as one): a cordoned node
/// still serves. Readiness is the health check's job, so a node flapping
/// Ready rewrites nothing.
pub fn is_eligible(node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let excluded = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_EXCLUDE_FROM_LB))
        .is_some_and(|v| !reads_as_false(v));
    if excluded {
        return false;
    }
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| {
            t.iter()
                .any(|t| t.key == TAINT_TO_BE_DELETED || t.key == TAINT_KARPENTER_DISRUPTED)
        });
    !tainted
}

/// Whether `v` is one of the spellings of false that Go's
/// `strconv.ParseBool` accepts (the upstream predicate parses the label
/// with it; anything it cannot parse excludes the node).
fn reads_as_false(v: &str) -> bool {
    matches!(v, "0" | "f" | "F" | "false" | "FALSE" | "False")
}

/// The targets for the eligible nodes among `nodes`, sorted by node name.
/// Nodes that report no parseable `InternalIP` cannot be targeted and are
/// left out.
pub fn targets<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Arc<[Target]> {
    let mut targets: Vec<Target> = nodes
        .into_iter()
        .filter(|n| is_eligible(n))
        .filter_map(|n| {
            let addresses: Vec<IpAddr> = n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect();
            (!addresses.is_empty()).then(|| Target {
                node: n.metadata.name.clone().unwrap_or_default(),
                addresses,
                provider_id: n.spec.as_ref().and_then(|s| s.provider_id.clone()),
            })
        })
        .collect();
    targets.sort();
    targets.into()
}

/// Builds the spec for a `type: LoadBalancer` Service.
///
/// `targets` comes from [`targets`], computed once for all Services.
///
/// # Errors
/// A [`SpecError`] naming the first invalid field or annotation.
pub fn build(svc: &Service, targets: &Arc<[Target]>) -> Result<LoadBalancerSpec, SpecError> {
    let meta = &svc.metadata;
    let key = ServiceKey {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().ok_or_else(|| {
            SpecError::new("metadata.uid", "", "a Service stored by the API server")
        })?,
    };
    let spec = svc
        .spec
        .as_ref()
        .ok_or_else(|| SpecError::new("spec", "", "a Service with a spec"))?;
    let annotations = meta.annotations.clone().unwrap_or_default();

    if spec.allocate_load_balancer_node_ports == Some(false) {
        return Err(SpecError::new(
            "spec.allocateLoadBalancerNodePorts",
            "false",
            "FerryLB sends traffic to every node's nodePort, so nodePorts must be allocated; \
             set it to true or remove it",
        ));
    }

    let mut listeners = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                return Err(SpecError::new(
                    format!("spec.ports[{i}].protocol"),
                    other,
                    "one of TCP, UDP, SCTP",
                ));
            }
        };
        let port = u16::try_from(p.port)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| {
                SpecError::new(
                    format!("spec.ports[{i}].port"),
                    p.port.to_string(),
                    "1-65535",
                )
            })?;
        let node_port = match p.node_port {
            Some(np) => u16::try_from(np).ok().filter(|&p| p > 0).ok_or_else(|| {
                SpecError::new(
                    format!("spec.ports[{i}].nodePort"),
                    np.to_string(),
                    "1-65535",
                )
            })?,
            None => {
                return Err(SpecError::new(
                    format!("spec.ports[{i}].nodePort"),
                    "",
                    "a nodePort allocated by the API server; FerryLB targets nodes on it",
                ));
            }
        };
        listeners.push(Listener {
            protocol,
            port,
            node_port,
            name: p.name.clone().unwrap_or_default(),
        });
    }
    if listeners.is_empty() {
        return Err(SpecError::new("spec.ports", "[]", "at least one port"));
    }
    listeners.sort();

    let health_check =
        if spec.external_traffic_policy.as_deref() == Some("Local") {
            let port = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p > 0)
            .ok_or_else(|| {
                SpecError::new(
                    "spec.healthCheckNodePort",
                    spec.health_check_node_port.map(|p| p.to_string()).unwrap_or_default(),
                    "a port 1-65535, allocated by the API server for externalTrafficPolicy: Local",
                )
            })?;
            HealthCheck::Http {
                port,
                path: "/healthz".into(),
            }
        } else {
            HealthCheck::TrafficPort
        };

    let source_ranges = source_ranges(spec.load_balancer_source_ranges.as_deref(), &annotations)?;
    let requested_ips = requested_ips(spec.load_balancer_ip.as_deref(), &annotations)?;
    let shared_ip_key = match annotations.get(ANNOTATION_ALLOW_SHARED_IP) {
        None => None,
        Some(v) if is_sharing_key(v) => Some(v.clone()),
        Some(v) => {
            return Err(SpecError::new(
                ANNOTATION_ALLOW_SHARED_IP,
                v,
                "1-63 characters of letters, digits, '-', '_' and '.'",
            ));
        }
    };
    let status_ips = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    let provider_annotations: BTreeMap<String, String> = annotations
        .into_iter()
        .filter(|(k, _)| {
            PROVIDER_ANNOTATION_PREFIXES
                .iter()
                .any(|p| k.starts_with(p))
        })
        .collect();

    Ok(LoadBalancerSpec {
        lb: LoadBalancerRef::for_service(key),
        listeners,
        targets: targets.clone(),
        health_check,
        source_ranges,
        requested_ips,
        shared_ip_key,
        ip_families: spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|f| IpFamily::parse(f))
            .collect(),
        require_dual_stack: spec.ip_family_policy.as_deref() == Some("RequireDualStack"),
        status_ips,
        endpoints: None,
        annotations: provider_annotations,
    })
}

/// The label on an EndpointSlice naming the Service it belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// A Service's endpoints from its EndpointSlices, one per address and
/// port, sorted. Only the first address of an endpoint counts (the API
/// says they are fungible); FQDN slices, ports without a number and
/// addresses that do not parse are left out.
pub fn endpoints<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Arc<[Endpoint]> {
    let mut out = Vec::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let ports: Vec<(String, Protocol, u16)> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                    "TCP" => Protocol::Tcp,
                    "UDP" => Protocol::Udp,
                    "SCTP" => Protocol::Sctp,
                    _ => return None,
                };
                let port = u16::try_from(p.port?).ok().filter(|&p| p > 0)?;
                Some((p.name.clone().unwrap_or_default(), protocol, port))
            })
            .collect();
        for e in &slice.endpoints {
            let Some(address) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            let conditions = e.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            for (name, protocol, port) in &ports {
                out.push(Endpoint {
                    port_name: name.clone(),
                    protocol: *protocol,
                    address,
                    port: *port,
                    ready,
                    terminating,
                    node: e.node_name.clone(),
                    zone: e.zone.clone(),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out.into()
}

fn source_ranges(
    field: Option<&[String]>,
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<IpNet>, SpecError> {
    let (name, values): (String, Vec<String>) = match field {
        Some(v) if !v.is_empty() => ("spec.loadBalancerSourceRanges".into(), v.to_vec()),
        _ => match annotations.get(ANNOTATION_SOURCE_RANGES) {
            Some(a) => (ANNOTATION_SOURCE_RANGES.into(), split_list(a)),
            None => return Ok(vec![]),
        },
    };
    let mut nets = values
        .iter()
        .map(|v| {
            v.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
                SpecError::new(
                    &name,
                    v,
                    "comma-separated CIDRs such as 10.0.0.0/8 or 2001:db8::/32",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    nets.sort();
    nets.dedup();
    Ok(nets)
}

fn requested_ips(
    field: Option<&str>,
    annotations: &BTreeMap<String, String>,
) -> Result<Vec<IpAddr>, SpecError> {
    let mut ips = Vec::new();
    if let Some(v) = annotations.get(ANNOTATION_LOAD_BALANCER_IPS) {
        for part in split_list(v) {
            let ip = part.parse().map_err(|_| {
                SpecError::new(
                    ANNOTATION_LOAD_BALANCER_IPS,
                    v,
                    "comma-separated IPv4 or IPv6 addresses, at most one of each family",
                )
            })?;
            ips.push(ip);
        }
        if ips.iter().filter(|i: &&IpAddr| i.is_ipv4()).count() > 1
            || ips.iter().filter(|i: &&IpAddr| i.is_ipv6()).count() > 1
        {
            return Err(SpecError::new(
                ANNOTATION_LOAD_BALANCER_IPS,
                v,
                "at most one IPv4 and one IPv6 address",
            ));
        }
    } else if let Some(v) = field.filter(|v| !v.is_empty()) {
        ips.push(
            v.parse()
                .map_err(|_| SpecError::new("spec.loadBalancerIP", v, "an IPv4 or IPv6 address"))?,
        );
    }
    Ok(ips)
}

fn is_sharing_key(v: &str) -> bool {
    (1..=63).contains(&v.len())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests;
