//! The Service annotations the AWS provider honours, parsed into typed
//! options. The names are those users already write for the AWS Load
//! Balancer Controller and the AWS cloud provider
//! (`service.beta.kubernetes.io/aws-load-balancer-*`), so existing manifests
//! keep their meaning. A bad value is an error naming the annotation, the
//! value and what is allowed; an annotation of that family FerryLB does not
//! implement is reported as a warning, never silently ignored.

use std::collections::{BTreeMap, BTreeSet};

use ferrylb_model::reason;
use ferrylb_model::{ProviderError, Warning, split_list};

mod parse;

use parse::{
    Ann, parse_cross_zone, parse_health, parse_tags, parse_tg_attributes, parse_tls,
    valid_subnet_ref,
};

/// Prefix shared by every annotation this module reads.
pub const PREFIX: &str = "service.beta.kubernetes.io/aws-load-balancer-";

pub const TYPE: &str = "service.beta.kubernetes.io/aws-load-balancer-type";
pub const SCHEME: &str = "service.beta.kubernetes.io/aws-load-balancer-scheme";
pub const INTERNAL: &str = "service.beta.kubernetes.io/aws-load-balancer-internal";
pub const SUBNETS: &str = "service.beta.kubernetes.io/aws-load-balancer-subnets";
pub const TARGET_TYPE: &str = "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type";
pub const IP_ADDRESS_TYPE: &str = "service.beta.kubernetes.io/aws-load-balancer-ip-address-type";
pub const HC_PROTOCOL: &str = "service.beta.kubernetes.io/aws-load-balancer-healthcheck-protocol";
pub const HC_PORT: &str = "service.beta.kubernetes.io/aws-load-balancer-healthcheck-port";
pub const HC_PATH: &str = "service.beta.kubernetes.io/aws-load-balancer-healthcheck-path";
pub const HC_INTERVAL: &str = "service.beta.kubernetes.io/aws-load-balancer-healthcheck-interval";
pub const HC_TIMEOUT: &str = "service.beta.kubernetes.io/aws-load-balancer-healthcheck-timeout";
pub const HC_HEALTHY: &str =
    "service.beta.kubernetes.io/aws-load-balancer-healthcheck-healthy-threshold";
pub const HC_UNHEALTHY: &str =
    "service.beta.kubernetes.io/aws-load-balancer-healthcheck-unhealthy-threshold";
pub const CROSS_ZONE: &str =
    "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled";
pub const ATTRIBUTES: &str = "service.beta.kubernetes.io/aws-load-balancer-attributes";
pub const EXTRA_TAGS: &str =
    "service.beta.kubernetes.io/aws-load-balancer-additional-resource-tags";
pub const SSL_CERT: &str = "service.beta.kubernetes.io/aws-load-balancer-ssl-cert";
pub const SSL_PORTS: &str = "service.beta.kubernetes.io/aws-load-balancer-ssl-ports";
pub const SSL_POLICY: &str = "service.beta.kubernetes.io/aws-load-balancer-ssl-negotiation-policy";
pub const PROXY_PROTOCOL: &str = "service.beta.kubernetes.io/aws-load-balancer-proxy-protocol";
pub const TARGET_GROUP_ATTRIBUTES_ANNOTATION: &str =
    "service.beta.kubernetes.io/aws-load-balancer-target-group-attributes";
/// How long AWS keeps a deregistered target's connections (AWS's default
/// 300 s).
pub const DEREGISTRATION_DELAY: &str = "deregistration_delay.timeout_seconds";
/// PROXY protocol v2 towards the targets.
pub const PROXY_PROTOCOL_V2: &str = "proxy_protocol_v2.enabled";

const CROSS_ZONE_ATTRIBUTE: &str = "load_balancing.cross_zone.enabled";
/// TLS policy used when a certificate is set and no policy is named.
pub const DEFAULT_SSL_POLICY: &str = "ELBSecurityPolicy-TLS13-1-2-2021-06";

/// `internet-facing` or `internal`. Cannot change in place: a change
/// replaces the NLB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Scheme {
    #[default]
    InternetFacing,
    Internal,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::InternetFacing => "internet-facing",
            Scheme::Internal => "internal",
        }
    }

    /// The subnet role tag used to discover subnets for this scheme.
    pub fn subnet_role_tag(self) -> &'static str {
        match self {
            Scheme::InternetFacing => "kubernetes.io/role/elb",
            Scheme::Internal => "kubernetes.io/role/internal-elb",
        }
    }
}

/// `ipv4` or `dualstack`. Cannot change in place: a change replaces the NLB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum IpAddressType {
    #[default]
    Ipv4,
    Dualstack,
}

impl IpAddressType {
    pub fn as_str(self) -> &'static str {
        match self {
            IpAddressType::Ipv4 => "ipv4",
            IpAddressType::Dualstack => "dualstack",
        }
    }
}

/// What a target group's targets are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TargetType {
    /// EC2 instance ids from the Nodes' `spec.providerID`.
    #[default]
    Instance,
    /// The Nodes' InternalIP addresses.
    Ip,
}

impl TargetType {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetType::Instance => "instance",
            TargetType::Ip => "ip",
        }
    }
}

/// Health-check protocol override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthProtocol {
    Tcp,
    Http,
    Https,
}

/// Health-check port override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthPort {
    TrafficPort,
    Port(u16),
}

/// Health-check overrides; `None` keeps what the Service implies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HealthOverrides {
    pub protocol: Option<HealthProtocol>,
    pub port: Option<HealthPort>,
    pub path: Option<String>,
    pub interval: Option<i32>,
    pub timeout: Option<i32>,
    pub healthy_threshold: Option<i32>,
    pub unhealthy_threshold: Option<i32>,
}

/// A TLS listener configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tls {
    /// The listener's default certificate (the first in the annotation).
    pub certificate_arn: String,
    /// The others, added to the listener (SNI picks among them).
    pub extra_certificates: Vec<String>,
    /// Port numbers or names; `None` means every TCP port.
    pub ports: Option<BTreeSet<String>>,
    pub policy: String,
}

/// Everything the annotations say, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsOptions {
    pub scheme: Scheme,
    pub ip_address_type: IpAddressType,
    /// Subnet ids or `Name` tags; `None` means discovery by tags.
    pub subnets: Option<Vec<String>>,
    pub target_type: TargetType,
    pub health: HealthOverrides,
    /// `None`: not managed (AWS's default, off, stays as it is).
    pub cross_zone: Option<bool>,
    pub extra_tags: BTreeMap<String, String>,
    pub tls: Option<Tls>,
    pub proxy_protocol: bool,
    /// `target-group-attributes`, checked: set on every target group.
    pub target_group_attributes: BTreeMap<String, String>,
    /// Annotations of the family that FerryLB does not implement.
    pub warnings: Vec<Warning>,
}

/// Annotations recognised (every other `aws-load-balancer-*` one is reported).
const KNOWN: &[&str] = &[
    TYPE,
    SCHEME,
    INTERNAL,
    SUBNETS,
    TARGET_TYPE,
    IP_ADDRESS_TYPE,
    HC_PROTOCOL,
    HC_PORT,
    HC_PATH,
    HC_INTERVAL,
    HC_TIMEOUT,
    HC_HEALTHY,
    HC_UNHEALTHY,
    CROSS_ZONE,
    ATTRIBUTES,
    EXTRA_TAGS,
    SSL_CERT,
    SSL_PORTS,
    SSL_POLICY,
    PROXY_PROTOCOL,
    TARGET_GROUP_ATTRIBUTES_ANNOTATION,
];

/// Tag keys FerryLB sets itself; additional tags may not override them.
pub const RESERVED_TAG_PREFIXES: &[&str] = &["ferrylb.io/", "kubernetes.io/cluster/", "aws:"];

impl AwsOptions {
    /// Parses the provider's annotations.
    ///
    /// # Errors
    /// The first invalid value, naming the annotation, the value and what is
    /// allowed.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Self, ProviderError> {
        let a = Ann(annotations);
        let mut o = AwsOptions::default();

        // `external` is the AWS Load Balancer Controller's form, whose
        // documented scheme default is internal; `nlb`, the in-tree form,
        // is internet-facing by default.
        let mut external = false;
        if let Some(v) = a.get(TYPE) {
            match v {
                "nlb" => {}
                "external" => external = true,
                "nlb-ip" => o.target_type = TargetType::Ip,
                _ => {
                    return Err(ProviderError::invalid(
                        TYPE,
                        v,
                        "FerryLB builds Network Load Balancers: one of nlb, external, nlb-ip",
                    ));
                }
            }
        }
        o.scheme = match (a.get(SCHEME), a.get(INTERNAL)) {
            (Some("internet-facing"), None | Some("false")) => Scheme::InternetFacing,
            (Some("internal"), None | Some("true")) => Scheme::Internal,
            (Some(v @ ("internet-facing" | "internal")), Some(i)) => {
                return Err(ProviderError::invalid(
                    INTERNAL,
                    i,
                    &format!("conflicts with {SCHEME}={v}; set only one of them"),
                ));
            }
            (Some(v), _) => {
                return Err(ProviderError::invalid(
                    SCHEME,
                    v,
                    "one of internet-facing, internal",
                ));
            }
            (None, Some("true")) => Scheme::Internal,
            (None, Some("false")) => Scheme::InternetFacing,
            (None, None) if external => Scheme::Internal,
            (None, None) => Scheme::InternetFacing,
            (None, Some(v)) => return Err(ProviderError::invalid(INTERNAL, v, "true or false")),
        };
        if let Some(v) = a.get(IP_ADDRESS_TYPE) {
            o.ip_address_type = match v {
                "ipv4" => IpAddressType::Ipv4,
                "dualstack" => IpAddressType::Dualstack,
                _ => {
                    return Err(ProviderError::invalid(
                        IP_ADDRESS_TYPE,
                        v,
                        "one of ipv4, dualstack",
                    ));
                }
            };
        }
        if let Some(v) = a.get(SUBNETS) {
            let list = split_list(v);
            let what = "a comma-separated list of subnet ids (subnet-…) or Name tags \
                        (letters, digits and -_.:/, at most 255 each)";
            if list.is_empty() {
                return Err(ProviderError::invalid(SUBNETS, v, what));
            }
            if let Some(bad) = list.iter().find(|s| !valid_subnet_ref(s)) {
                return Err(ProviderError::invalid(
                    SUBNETS,
                    v,
                    &format!("entry {bad:?} is not valid: {what}"),
                ));
            }
            o.subnets = Some(list);
        }
        if let Some(v) = a.get(TARGET_TYPE) {
            o.target_type = match v {
                "instance" => TargetType::Instance,
                "ip" => TargetType::Ip,
                _ => {
                    return Err(ProviderError::invalid(
                        TARGET_TYPE,
                        v,
                        "one of instance, ip",
                    ));
                }
            };
        }
        o.health = parse_health(&a)?;
        o.cross_zone = parse_cross_zone(&a)?;
        o.extra_tags = parse_tags(a.get(EXTRA_TAGS))?;
        o.tls = parse_tls(&a)?;
        if let Some(v) = a.get(PROXY_PROTOCOL) {
            if v != "*" {
                return Err(ProviderError::invalid(
                    PROXY_PROTOCOL,
                    v,
                    "\"*\" (PROXY protocol v2 on every port)",
                ));
            }
            o.proxy_protocol = true;
        }
        o.target_group_attributes = parse_tg_attributes(a.get(TARGET_GROUP_ATTRIBUTES_ANNOTATION))?;
        if o.proxy_protocol
            && o.target_group_attributes
                .get(PROXY_PROTOCOL_V2)
                .is_some_and(|v| v == "false")
        {
            return Err(ProviderError::invalid(
                TARGET_GROUP_ATTRIBUTES_ANNOTATION,
                a.get(TARGET_GROUP_ATTRIBUTES_ANNOTATION)
                    .unwrap_or_default(),
                &format!(
                    "{PROXY_PROTOCOL_V2}=false conflicts with {PROXY_PROTOCOL}=\"*\"; set only one"
                ),
            ));
        }
        for key in annotations.keys() {
            if key.starts_with(PREFIX) && !KNOWN.contains(&key.as_str()) {
                o.warnings.push(Warning {
                    reason: reason::UNSUPPORTED_ANNOTATION.into(),
                    message: format!(
                        "annotation {key} is not supported by FerryLB's AWS provider and has no effect"
                    ),
                });
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests;
