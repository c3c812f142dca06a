//! What the AWS resources for one Service should look like: names, tags,
//! listeners, target groups, targets and security-group rules, computed by a
//! pure function from the provider-neutral spec and the typed options.

use crate::options::IP_ADDRESS_TYPE;
use std::collections::{BTreeMap, BTreeSet};

use ferrylb_model::reason;
use ferrylb_model::{HealthCheck, LoadBalancerSpec, Protocol, ProviderError, Warning};
use ipnet::IpNet;

use crate::options::{
    AwsOptions, HealthOverrides, HealthPort, HealthProtocol, IpAddressType, PROXY_PROTOCOL_V2,
    SSL_PORTS, Scheme, TargetType,
};

mod names;

pub use names::{
    TAG_CLUSTER, TAG_SERVICE, TAG_SERVICE_UID, cluster_ownership_tag, instance_id, nlb_name,
    target_group_name,
};

/// An ELBv2 protocol for listeners and target groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ElbProtocol {
    Tcp,
    Udp,
    TcpUdp,
    Tls,
}

impl ElbProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ElbProtocol::Tcp => "TCP",
            ElbProtocol::Udp => "UDP",
            ElbProtocol::TcpUdp => "TCP_UDP",
            ElbProtocol::Tls => "TLS",
        }
    }

    /// The IP protocols a security group must open for this listener.
    pub fn ip_protocols(self) -> &'static [&'static str] {
        match self {
            ElbProtocol::Tcp | ElbProtocol::Tls => &["tcp"],
            ElbProtocol::Udp => &["udp"],
            ElbProtocol::TcpUdp => &["tcp", "udp"],
        }
    }
}

/// A target group's health check, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Health {
    pub protocol: HealthProtocol,
    pub port: HealthPort,
    pub path: Option<String>,
    /// `None` leaves AWS's default (or whatever is set) alone.
    pub interval: Option<i32>,
    pub timeout: Option<i32>,
    pub healthy_threshold: Option<i32>,
    pub unhealthy_threshold: Option<i32>,
}

impl Health {
    fn resolve(spec: &HealthCheck, o: &HealthOverrides) -> Health {
        let (protocol, port, path) = match spec {
            HealthCheck::TrafficPort => (HealthProtocol::Tcp, HealthPort::TrafficPort, None),
            HealthCheck::Http { port, path } => (
                HealthProtocol::Http,
                HealthPort::Port(*port),
                Some(path.clone()),
            ),
        };
        let protocol = o.protocol.unwrap_or(protocol);
        let path = match protocol {
            HealthProtocol::Tcp => None,
            _ => o.path.clone().or(path).or_else(|| Some("/".to_owned())),
        };
        // For `externalTrafficPolicy: Local` (kube-proxy's health check
        // node port), the AWS Load Balancer Controller's documented timings:
        // 10 s apart, 6 s to answer, 2 to turn healthy or unhealthy, so a
        // node without a ready pod leaves within about 20 s.
        let local = matches!(spec, HealthCheck::Http { .. });
        let or_local = |v: Option<i32>, local_default: i32| v.or(local.then_some(local_default));
        Health {
            protocol,
            port: o.port.unwrap_or(port),
            path,
            interval: or_local(o.interval, 10),
            timeout: or_local(o.timeout, 6),
            healthy_threshold: or_local(o.healthy_threshold, 2),
            unhealthy_threshold: or_local(o.unhealthy_threshold, 2),
        }
    }

    pub fn protocol_str(&self) -> &'static str {
        match self.protocol {
            HealthProtocol::Tcp => "TCP",
            HealthProtocol::Http => "HTTP",
            HealthProtocol::Https => "HTTPS",
        }
    }

    pub fn port_string(&self) -> String {
        match self.port {
            HealthPort::TrafficPort => "traffic-port".to_owned(),
            HealthPort::Port(p) => p.to_string(),
        }
    }
}

/// A registered target: instance id or IP, on a port.
pub type TargetKey = (String, u16);

/// One target group. Its name covers everything AWS cannot change in place
/// (protocol, target type, port), so a change to any of them is a new
/// target group, never an in-place surprise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTargetGroup {
    pub name: String,
    pub protocol: ElbProtocol,
    pub node_port: u16,
    pub target_type: TargetType,
    pub health: Health,
    /// The attributes FerryLB manages (PROXY protocol always, the
    /// `target-group-attributes` ones when given); others are left alone.
    pub attributes: BTreeMap<String, String>,
    pub targets: BTreeSet<TargetKey>,
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredListener {
    pub port: u16,
    pub protocol: ElbProtocol,
    /// Certificate ARN and policy for TLS listeners.
    pub tls: Option<(String, String)>,
    /// Certificates added to a TLS listener beside its default.
    pub extra_certificates: Vec<String>,
    pub target_group: DesiredTargetGroup,
}

/// One security-group ingress rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IngressRule {
    pub protocol: &'static str,
    pub port: u16,
    pub cidr: IpNet,
}

/// Everything one Service's NLB should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The NLB's name: the Service's load balancer name with a hash that
    /// also covers scheme and IP address type, which AWS cannot change in
    /// place; changing either yields a new name and so a replacement.
    pub name: String,
    pub scheme: Scheme,
    pub ip_address_type: IpAddressType,
    pub subnets: Option<Vec<String>>,
    pub security_group_name: String,
    /// The rules from the Service's source ranges, or from everywhere;
    /// empty when they come from the VPC's CIDR blocks
    /// ([`Desired::default_sources`]).
    pub ingress: BTreeSet<IngressRule>,
    /// Where clients are admitted from when the Service names no source
    /// ranges.
    pub default_sources: Option<DefaultSources>,
    /// By listener port.
    pub listeners: BTreeMap<u16, DesiredListener>,
    pub tags: BTreeMap<String, String>,
    pub cross_zone: Option<bool>,
    pub warnings: Vec<Warning>,
}

/// A candidate target: its id (instance id or IPv4 address), the name
/// its weight is drawn from (the node's, or the pod's address) and its zone.
type NodeTarget<'a> = (String, &'a str, Option<&'a str>);

/// The instance ids of `spec`'s nodes, and a warning naming the nodes that
/// have none.
fn target_ids(spec: &LoadBalancerSpec) -> (Vec<NodeTarget<'_>>, Option<Warning>) {
    let mut ids = Vec::new();
    let mut skipped = Vec::new();
    for t in spec.targets.iter() {
        match t.provider_id.as_deref().and_then(instance_id) {
            Some(id) => ids.push((
                id.to_owned(),
                t.node.as_str(),
                t.provider_id.as_deref().and_then(zone_of),
            )),
            None => skipped.push(t.node.as_str()),
        }
    }
    let warning = (!skipped.is_empty()).then(|| Warning {
        reason: reason::NODES_NOT_REGISTERED.into(),
        message: format!(
            "nodes without an AWS providerID (aws:///<zone>/i-…) are not registered as \
             targets: {}",
            skipped.join(", ")
        ),
    });
    (ids, warning)
}

/// For `nlb-target-type: ip`: the Service's ready pods with an IPv4
/// address, by address (each pod once, whatever its ports), and a warning
/// when there are none to register or some cannot be (IPv6 only: the
/// target groups are IPv4). Terminating and unready pods are left out, so
/// the NLB deregisters them and drains their connections for its
/// deregistration delay.
fn pod_targets(spec: &LoadBalancerSpec) -> (Vec<NodeTarget<'_>>, Option<Warning>) {
    let Some(endpoints) = spec.endpoints.as_deref() else {
        return (
            Vec::new(),
            Some(Warning {
                reason: reason::ENDPOINTS_NOT_REGISTERED.into(),
                message: "nlb-target-type ip registers the Service's pods from its \
                          EndpointSlices, and none are known"
                    .into(),
            }),
        );
    };
    let mut by_address: BTreeMap<String, NodeTarget<'_>> = BTreeMap::new();
    let mut ipv6 = 0usize;
    for e in endpoints.iter().filter(|e| e.ready) {
        if e.address.is_ipv4() {
            let id = e.address.to_string();
            by_address
                .entry(id.clone())
                .or_insert_with(|| (id, "", e.zone.as_deref()));
        } else {
            ipv6 += 1;
        }
    }
    let warning = if ipv6 > 0 {
        Some(Warning {
            reason: reason::ENDPOINTS_NOT_REGISTERED.into(),
            message: format!(
                "{ipv6} ready endpoint port(s) with an IPv6 address are not registered: \
                 the target groups take IPv4 pod addresses"
            ),
        })
    } else if by_address.is_empty() {
        Some(Warning {
            reason: reason::ENDPOINTS_NOT_REGISTERED.into(),
            message: "the Service has no ready pod to register as a target".into(),
        })
    } else {
        None
    };
    (by_address.into_values().collect(), warning)
}

/// For `externalTrafficPolicy: Local` when the nodes exceed what a zone
/// holds: only the nodes running a ready endpoint can take traffic, so the
/// subset is drawn from them (all nodes when the endpoints are not known).
fn with_ready_endpoints<'a>(
    spec: &'a LoadBalancerSpec,
    nodes: Vec<NodeTarget<'a>>,
    per_zone: usize,
) -> Vec<NodeTarget<'a>> {
    let Some(endpoints) = spec.endpoints.as_deref() else {
        return nodes;
    };
    if !matches!(spec.health_check, HealthCheck::Http { .. }) || !over_budget(&nodes, per_zone) {
        return nodes;
    }
    let serving: BTreeSet<&str> = endpoints
        .iter()
        .filter(|e| e.ready)
        .filter_map(|e| e.node.as_deref())
        .collect();
    nodes
        .into_iter()
        .filter(|(_, node, _)| serving.contains(node))
        .collect()
}

/// Whether some zone holds more of `nodes` than `per_zone`.
fn over_budget(nodes: &[NodeTarget<'_>], per_zone: usize) -> bool {
    let mut zones: BTreeMap<Option<&str>, usize> = BTreeMap::new();
    nodes.iter().any(|(_, _, z)| {
        let n = zones.entry(*z).or_default();
        *n += 1;
        *n > per_zone
    })
}

/// The pods among `kept` on the port each serves the first of `listeners`
/// on (the listeners of one port number; TCP first when TCP and UDP share
/// it).
fn pod_ports(
    spec: &LoadBalancerSpec,
    listeners: &[&ferrylb_model::Listener],
    kept: &BTreeSet<String>,
) -> BTreeSet<TargetKey> {
    let Some(first) = listeners.iter().min_by_key(|l| l.protocol) else {
        return BTreeSet::new();
    };
    spec.endpoints
        .iter()
        .flat_map(|e| e.iter())
        .filter(|e| e.ready && e.serves(first))
        .map(|e| (e.address.to_string(), e.port))
        .filter(|(a, _)| kept.contains(a))
        .collect()
}

/// The target group attributes FerryLB manages: PROXY protocol v2 on or
/// off as `proxy-protocol` says (so removing it turns it off), and every
/// `target-group-attributes` entry.
fn target_group_attributes(o: &AwsOptions) -> BTreeMap<String, String> {
    let mut a = o.target_group_attributes.clone();
    a.entry(PROXY_PROTOCOL_V2.to_owned())
        .or_insert_with(|| o.proxy_protocol.to_string());
    a
}

/// What a new NLB target group has, as AWS documents it.
pub const TARGET_GROUP_DEFAULTS: &[(&str, &str)] = &[
    (PROXY_PROTOCOL_V2, "false"),
    (crate::options::DEREGISTRATION_DELAY, "300"),
];

impl DesiredTargetGroup {
    /// Whether the targets get PROXY protocol v2.
    pub fn proxy_protocol(&self) -> bool {
        self.attributes
            .get(PROXY_PROTOCOL_V2)
            .is_some_and(|v| v == "true")
    }

    /// The managed attributes whose value differs from `current` (what AWS
    /// reports; one it does not report has AWS's default, when FerryLB
    /// knows it, and differs otherwise).
    pub fn attributes_to_set<'a>(
        &self,
        current: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> BTreeMap<String, String> {
        let mut now: BTreeMap<&str, &str> = TARGET_GROUP_DEFAULTS.iter().copied().collect();
        now.extend(current);
        self.attributes
            .iter()
            .filter(|(k, v)| now.get(k.as_str()) != Some(&v.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Whether a load balancer built from `spec` with options `o` needs the
/// Service's endpoints: pod targets always; `externalTrafficPolicy: Local`
/// only when the nodes may exceed what a zone holds, so that the subset is
/// drawn from nodes running a ready pod.
pub fn needs_endpoints(spec: &LoadBalancerSpec, o: &AwsOptions, targets_per_zone: usize) -> bool {
    match o.target_type {
        TargetType::Ip => true,
        TargetType::Instance => {
            let groups = ports_by_number(spec).0.len().max(1);
            matches!(spec.health_check, HealthCheck::Http { .. })
                && spec.targets.len() > targets_per_zone / groups
        }
    }
}

/// The zone in an AWS providerID (`aws:///us-east-1a/i-…`).
fn zone_of(provider_id: &str) -> Option<&str> {
    let rest = provider_id.strip_prefix("aws:///")?;
    let (zone, _) = rest.split_once('/')?;
    (!zone.is_empty()).then_some(zone)
}

/// Targets an NLB holds per zone (AWS's quota, "Targets per Availability
/// Zone per Network Load Balancer"); each target group counts separately.
pub const TARGETS_PER_ZONE: usize = 500;

/// The targets of `nodes` within `targets_per_zone` shared by `groups`
/// target groups: all of them when they fit, else a stable subset per
/// zone ([`ferrylb_model::subset`]), with a warning saying so.
///
/// # Errors
/// When not even one target per zone fits.
fn within_budget(
    spec: &LoadBalancerSpec,
    nodes: Vec<NodeTarget<'_>>,
    groups: usize,
    targets_per_zone: usize,
    target_type: TargetType,
) -> Result<(BTreeSet<String>, Option<Warning>), ProviderError> {
    let per_zone = targets_per_zone / groups.max(1);
    if per_zone == 0 {
        return Err(ProviderError::permanent(
            reason::TOO_MANY_TARGETS,
            format!(
                "{groups} target groups cannot share an NLB's {targets_per_zone} targets per zone: \
                 use fewer ports"
            ),
        ));
    }
    let total = nodes.len();
    let what = match target_type {
        TargetType::Ip => "pods",
        TargetType::Instance => "nodes",
    };
    let service = spec.lb.key.to_string();
    let name = |(id, n, _): &NodeTarget<'_>| {
        if n.is_empty() {
            id.clone()
        } else {
            (*n).to_owned()
        }
    };
    let names: Vec<(String, Option<&str>)> = nodes.iter().map(|t| (name(t), t.2)).collect();
    let kept: BTreeSet<&str> = ferrylb_model::subset::subset(
        names.iter().map(|(n, z)| (n.as_str(), *z)),
        &service,
        per_zone,
    )
    .into_iter()
    .collect();
    let ids: BTreeSet<String> = nodes
        .iter()
        .filter(|t| kept.contains(name(t).as_str()))
        .map(|(id, _, _)| id.clone())
        .collect();
    let warning = (kept.len() < total).then(|| Warning {
        reason: reason::TARGET_SUBSET.into(),
        message: format!(
            "{} of {total} {what} are targets: an NLB holds {targets_per_zone} targets per zone and \
             each of its {groups} target groups counts, so each zone gets at most {per_zone} \
             (chosen per Service, stable as {what} come and go)",
            kept.len()
        ),
    });
    Ok((ids, warning))
}

/// The Service's ports grouped by port number (TCP and UDP on one port
/// become one TCP_UDP listener), and a warning per SCTP port left out.
fn ports_by_number(
    spec: &LoadBalancerSpec,
) -> (BTreeMap<u16, Vec<&ferrylb_model::Listener>>, Vec<Warning>) {
    let mut by_port: BTreeMap<u16, Vec<&ferrylb_model::Listener>> = BTreeMap::new();
    let mut warnings = Vec::new();
    for l in &spec.listeners {
        if l.protocol == Protocol::Sctp {
            warnings.push(Warning {
                reason: reason::UNSUPPORTED_PROTOCOL.into(),
                message: format!(
                    "port {}/SCTP is not served: Network Load Balancers do not support SCTP",
                    l.port
                ),
            });
            continue;
        }
        by_port.entry(l.port).or_default().push(l);
    }
    (by_port, warnings)
}

/// The ELBv2 protocol, nodePort and port names of one port number's
/// Service ports.
fn port_protocol(
    port: u16,
    ls: &[&ferrylb_model::Listener],
) -> Result<(ElbProtocol, u16, Vec<String>), ProviderError> {
    match ls {
        [l] => Ok((
            match l.protocol {
                Protocol::Udp => ElbProtocol::Udp,
                _ => ElbProtocol::Tcp,
            },
            l.node_port,
            vec![l.name.clone()],
        )),
        [a, b] if a.node_port == b.node_port => Ok((
            ElbProtocol::TcpUdp,
            a.node_port,
            vec![a.name.clone(), b.name.clone()],
        )),
        _ => Err(ProviderError::permanent(
            reason::UNSUPPORTED_PORTS,
            format!(
                "port {port} is used for TCP and UDP with different nodePorts; a TCP_UDP listener needs one nodePort"
            ),
        )),
    }
}

/// The listener protocol and TLS settings for `port` (whose Service ports
/// are named `names`): TLS where the ssl-ports annotation covers it.
fn tls_for(
    o: &AwsOptions,
    port: u16,
    protocol: ElbProtocol,
    names: &[String],
) -> Result<(ElbProtocol, Option<(String, String)>), ProviderError> {
    let here = o.tls.as_ref().filter(|t| {
        t.ports
            .as_ref()
            .is_none_or(|ps| ps.contains(&port.to_string()) || names.iter().any(|n| ps.contains(n)))
    });
    match (here, protocol) {
        (None, p) => Ok((p, None)),
        (Some(t), ElbProtocol::Tcp) => Ok((
            ElbProtocol::Tls,
            Some((t.certificate_arn.clone(), t.policy.clone())),
        )),
        // TLS on every port: the UDP ones stay as they are.
        (Some(t), p) if t.ports.is_none() => Ok((p, None)),
        (Some(_), p) => Err(ProviderError::invalid(
            SSL_PORTS,
            &port.to_string(),
            &format!("TLS is for TCP ports; port {port} is {}", p.as_str()),
        )),
    }
}

/// Inbound rules a security group holds per address family (AWS's default
/// quota, "Inbound or outbound rules per security group").
pub const SECURITY_GROUP_RULES: usize = 60;

/// Where the security group admits clients from when the Service names no
/// source ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultSources {
    /// Everywhere (`0.0.0.0/0`, and `::/0` when dualstack): an
    /// internet-facing load balancer.
    Everywhere,
    /// The VPC's CIDR blocks, looked up when applied: an internal load
    /// balancer, as the AWS Load Balancer Controller does.
    Vpc,
}

/// The client ranges of `spec`, refusing IPv6 ranges on an IPv4-only load
/// balancer (the rule would admit nobody).
fn source_ranges(spec: &LoadBalancerSpec, o: &AwsOptions) -> Result<Vec<IpNet>, ProviderError> {
    if o.ip_address_type != IpAddressType::Dualstack
        && let Some(v6) = spec
            .source_ranges
            .iter()
            .find(|n| matches!(n, IpNet::V6(_)))
    {
        return Err(ProviderError::invalid(
            "spec.loadBalancerSourceRanges",
            &v6.to_string(),
            &format!(
                "an IPv4 range: the load balancer is IPv4-only, so an IPv6 range admits nobody \
                 (for IPv6 clients set {IP_ADDRESS_TYPE}: dualstack)"
            ),
        ));
    }
    Ok(spec.source_ranges.clone())
}

/// The security-group rules: every listener's IP protocols on its port,
/// from each of `cidrs`.
///
/// # Errors
/// When they are more than a security group holds.
pub fn ingress_rules(
    listeners: &BTreeMap<u16, DesiredListener>,
    cidrs: &[IpNet],
) -> Result<BTreeSet<IngressRule>, ProviderError> {
    let rules: BTreeSet<IngressRule> = listeners
        .values()
        .flat_map(|l| {
            l.protocol.ip_protocols().iter().flat_map(|p| {
                cidrs.iter().map(|c| IngressRule {
                    protocol: p,
                    port: l.port,
                    cidr: *c,
                })
            })
        })
        .collect();
    for (family, v4) in [("IPv4", true), ("IPv6", false)] {
        let n = rules
            .iter()
            .filter(|r| matches!(r.cidr, IpNet::V4(_)) == v4)
            .count();
        if n > SECURITY_GROUP_RULES {
            return Err(ProviderError::permanent(
                reason::INVALID_ANNOTATION,
                format!(
                    "the load balancer's security group would need {n} {family} inbound rules \
                     (each port and protocol from each source range); a security group holds \
                     {SECURITY_GROUP_RULES}: use fewer ports or fewer source ranges"
                ),
            ));
        }
    }
    Ok(rules)
}

impl Desired {
    /// Computes the desired resources.
    ///
    /// # Errors
    /// Permanent errors for what AWS cannot build (SCTP only, TLS on UDP,
    /// TCP and UDP on one port with different nodePorts).
    pub fn build(
        spec: &LoadBalancerSpec,
        o: &AwsOptions,
        cluster: &str,
    ) -> Result<Desired, ProviderError> {
        Self::build_with(spec, o, cluster, TARGETS_PER_ZONE)
    }

    /// [`Desired::build`] with an NLB that holds `targets_per_zone`.
    ///
    /// # Errors
    /// As [`Desired::build`].
    pub fn build_with(
        spec: &LoadBalancerSpec,
        o: &AwsOptions,
        cluster: &str,
        targets_per_zone: usize,
    ) -> Result<Desired, ProviderError> {
        let name = nlb_name(&spec.lb.name, o.scheme, o.ip_address_type);
        let mut warnings = o.warnings.clone();
        let (by_port, unsupported) = ports_by_number(spec);
        let groups = by_port.len().max(1);
        let (candidates, skipped) = match o.target_type {
            TargetType::Ip => pod_targets(spec),
            TargetType::Instance => {
                let (nodes, skipped) = target_ids(spec);
                let nodes = with_ready_endpoints(spec, nodes, targets_per_zone / groups);
                (nodes, skipped)
            }
        };
        warnings.extend(skipped);
        let (targets, subset) = within_budget(
            spec,
            candidates,
            by_port.len(),
            targets_per_zone,
            o.target_type,
        )?;
        warnings.extend(subset);
        warnings.extend(unsupported);
        if by_port.is_empty() {
            return Err(ProviderError::permanent(
                reason::UNSUPPORTED_PROTOCOL,
                "the Service has no TCP or UDP port a Network Load Balancer can serve",
            ));
        }

        // Pods answer on their own port, never on kube-proxy's health check
        // node port: pod targets are checked on the traffic port.
        let health = match o.target_type {
            TargetType::Ip => Health::resolve(&HealthCheck::TrafficPort, &o.health),
            TargetType::Instance => Health::resolve(&spec.health_check, &o.health),
        };
        let mut listeners = BTreeMap::new();
        for (port, ls) in by_port {
            let (protocol, node_port, names) = port_protocol(port, &ls)?;
            let (protocol, tls) = tls_for(o, port, protocol, &names)?;
            // The target group forwards plain TCP behind a TLS listener.
            let tg_protocol = if protocol == ElbProtocol::Tls {
                ElbProtocol::Tcp
            } else {
                protocol
            };
            let target_group = DesiredTargetGroup {
                name: target_group_name(&name, port, tg_protocol, node_port, o.target_type),
                protocol: tg_protocol,
                node_port,
                target_type: o.target_type,
                health: health.clone(),
                attributes: target_group_attributes(o),
                targets: match o.target_type {
                    TargetType::Ip => pod_ports(spec, &ls, &targets),
                    TargetType::Instance => {
                        targets.iter().map(|id| (id.clone(), node_port)).collect()
                    }
                },
            };
            listeners.insert(
                port,
                DesiredListener {
                    port,
                    protocol,
                    extra_certificates: match (&tls, &o.tls) {
                        (Some(_), Some(t)) => t.extra_certificates.clone(),
                        _ => Vec::new(),
                    },
                    tls,
                    target_group,
                },
            );
        }

        let mut tags = o.extra_tags.clone();
        tags.insert(TAG_CLUSTER.into(), cluster.into());
        tags.insert(cluster_ownership_tag(cluster), "owned".into());
        tags.insert(TAG_SERVICE.into(), spec.lb.key.to_string());
        tags.insert(TAG_SERVICE_UID.into(), spec.lb.key.uid.clone());

        let mut cidrs = source_ranges(spec, o)?;
        let default_sources = cidrs.is_empty().then_some(match o.scheme {
            Scheme::Internal => DefaultSources::Vpc,
            Scheme::InternetFacing => DefaultSources::Everywhere,
        });
        if default_sources == Some(DefaultSources::Everywhere) {
            cidrs.push("0.0.0.0/0".parse().expect("a CIDR"));
            if o.ip_address_type == IpAddressType::Dualstack {
                cidrs.push("::/0".parse().expect("a CIDR"));
            }
        }
        // The VPC's blocks are looked up when applied; one stands in for
        // them in the count here.
        let placeholder = ["10.0.0.0/16".parse().expect("a CIDR")];
        let counted = if default_sources == Some(DefaultSources::Vpc) {
            &placeholder[..]
        } else {
            &cidrs[..]
        };
        let ingress = ingress_rules(&listeners, counted)?;
        Ok(Desired {
            security_group_name: spec.lb.name.clone(),
            ingress: if default_sources == Some(DefaultSources::Vpc) {
                BTreeSet::new()
            } else {
                ingress
            },
            default_sources,
            name,
            scheme: o.scheme,
            ip_address_type: o.ip_address_type,
            subnets: o.subnets.clone(),
            listeners,
            tags,
            cross_zone: o.cross_zone,
            warnings,
        })
    }
}

/// How the NLB drains a deregistered node, from the target group
/// attributes the Service sets (AWS's defaults otherwise: 300 s, open
/// connections left open).
#[must_use]
pub fn node_drain(attributes: &BTreeMap<String, String>) -> ferrylb_model::NodeDrain {
    let secs: u64 = attributes
        .get(crate::options::DEREGISTRATION_DELAY)
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let closes = attributes
        .get("deregistration_delay.connection_termination.enabled")
        .is_some_and(|v| v == "true");
    ferrylb_model::NodeDrain {
        lasts: std::time::Duration::from_secs(secs),
        how: format!(
            "the NLB deregistered it, sends it no new connection, and keeps the ones it carries for the \
             target group's deregistration delay ({secs} s, deregistration_delay.timeout_seconds){}",
            if closes {
                ", then closes them"
            } else {
                "; connections still open then are not closed \
                 (deregistration_delay.connection_termination.enabled=true closes them)"
            }
        ),
    }
}

#[cfg(test)]
mod tests;
