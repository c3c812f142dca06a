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
    pub certificate_arn: String,
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

        if let Some(v) = a.get(TYPE) {
            match v {
                "nlb" | "external" => {}
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
            (None, Some("false")) | (None, None) => Scheme::InternetFacing,
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
            if list.is_empty() || list.iter().any(|s| !valid_subnet_ref(s)) {
                return Err(ProviderError::invalid(
                    SUBNETS,
                    v,
                    "a comma-separated list of subnet ids (subnet-…) or Name tags",
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

/// The annotations, values trimmed.
struct Ann<'a>(&'a BTreeMap<String, String>);

impl<'a> Ann<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.get(key).map(|v| v.trim())
    }
}

fn valid_subnet_ref(s: &str) -> bool {
    s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
}

fn parse_int(
    a: &Ann<'_>,
    key: &str,
    range: std::ops::RangeInclusive<i32>,
) -> Result<Option<i32>, ProviderError> {
    let Some(v) = a.get(key) else { return Ok(None) };
    match v.parse::<i32>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(ProviderError::invalid(
            key,
            v,
            &format!("a whole number from {} to {}", range.start(), range.end()),
        )),
    }
}

fn parse_health(a: &Ann<'_>) -> Result<HealthOverrides, ProviderError> {
    let protocol = match a.get(HC_PROTOCOL).map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some("tcp") => Some(HealthProtocol::Tcp),
        Some("http") => Some(HealthProtocol::Http),
        Some("https") => Some(HealthProtocol::Https),
        Some(_) => {
            return Err(ProviderError::invalid(
                HC_PROTOCOL,
                a.get(HC_PROTOCOL).unwrap_or_default(),
                "one of tcp, http, https",
            ));
        }
    };
    let port = match a.get(HC_PORT) {
        None => None,
        Some("traffic-port") => Some(HealthPort::TrafficPort),
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p > 0 => Some(HealthPort::Port(p)),
            _ => {
                return Err(ProviderError::invalid(
                    HC_PORT,
                    v,
                    "traffic-port or a port number from 1 to 65535",
                ));
            }
        },
    };
    let path = match a.get(HC_PATH) {
        None => None,
        Some(v)
            if v.starts_with('/') && v.len() <= 1024 && v.chars().all(|c| c.is_ascii_graphic()) =>
        {
            Some(v.to_owned())
        }
        Some(v) => {
            return Err(ProviderError::invalid(
                HC_PATH,
                v,
                "a path starting with / of at most 1024 printable characters",
            ));
        }
    };
    if path.is_some() && protocol == Some(HealthProtocol::Tcp) {
        return Err(ProviderError::invalid(
            HC_PATH,
            a.get(HC_PATH).unwrap_or_default(),
            "a path needs healthcheck-protocol http or https, not tcp",
        ));
    }
    Ok(HealthOverrides {
        protocol,
        port,
        path,
        interval: parse_int(a, HC_INTERVAL, 5..=300)?,
        timeout: parse_int(a, HC_TIMEOUT, 2..=120)?,
        healthy_threshold: parse_int(a, HC_HEALTHY, 2..=10)?,
        unhealthy_threshold: parse_int(a, HC_UNHEALTHY, 2..=10)?,
    })
}

fn parse_bool(key: &str, v: &str) -> Result<bool, ProviderError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ProviderError::invalid(key, v, "true or false")),
    }
}

fn parse_cross_zone(a: &Ann<'_>) -> Result<Option<bool>, ProviderError> {
    let mut from_attributes = None;
    if let Some(v) = a.get(ATTRIBUTES) {
        for item in split_list(v) {
            match item.split_once('=') {
                Some((CROSS_ZONE_ATTRIBUTE, b)) => {
                    from_attributes = Some(parse_bool(ATTRIBUTES, b.trim()).map_err(|_| {
                        ProviderError::invalid(
                            ATTRIBUTES,
                            v,
                            &format!("{CROSS_ZONE_ATTRIBUTE}=true or {CROSS_ZONE_ATTRIBUTE}=false"),
                        )
                    })?);
                }
                _ => {
                    return Err(ProviderError::invalid(
                        ATTRIBUTES,
                        v,
                        &format!("supported: {CROSS_ZONE_ATTRIBUTE}=true|false"),
                    ));
                }
            }
        }
    }
    let legacy = a
        .get(CROSS_ZONE)
        .map(|v| parse_bool(CROSS_ZONE, v))
        .transpose()?;
    match (legacy, from_attributes) {
        (Some(a), Some(b)) if a != b => Err(ProviderError::invalid(
            CROSS_ZONE,
            &a.to_string(),
            &format!("conflicts with {ATTRIBUTES} {CROSS_ZONE_ATTRIBUTE}={b}; set only one"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

fn parse_tags(v: Option<&str>) -> Result<BTreeMap<String, String>, ProviderError> {
    let mut tags = BTreeMap::new();
    let Some(v) = v else { return Ok(tags) };
    let allowed = "comma-separated key=value pairs; keys of 1-128 and values of at most 256 \
                   letters, digits, spaces and _.:/=+-@, keys not starting with aws:, ferrylb.io/ \
                   or kubernetes.io/cluster/";
    for item in split_list(v) {
        let (k, val) = item.split_once('=').unwrap_or((item.as_str(), ""));
        let (k, val) = (k.trim(), val.trim());
        let ok_chars = |s: &str| {
            s.chars()
                .all(|c| c.is_alphanumeric() || " _.:/=+-@".contains(c))
        };
        if k.is_empty()
            || k.len() > 128
            || val.len() > 256
            || !ok_chars(k)
            || !ok_chars(val)
            || RESERVED_TAG_PREFIXES.iter().any(|p| k.starts_with(p))
        {
            return Err(ProviderError::invalid(EXTRA_TAGS, v, allowed));
        }
        tags.insert(k.to_owned(), val.to_owned());
    }
    if tags.len() > 30 {
        return Err(ProviderError::invalid(
            EXTRA_TAGS,
            v,
            "at most 30 tags (AWS allows 50 per resource; FerryLB uses some)",
        ));
    }
    Ok(tags)
}

fn parse_tls(a: &Ann<'_>) -> Result<Option<Tls>, ProviderError> {
    let Some(cert) = a.get(SSL_CERT) else {
        for key in [SSL_PORTS, SSL_POLICY] {
            if let Some(v) = a.get(key) {
                return Err(ProviderError::invalid(
                    key,
                    v,
                    &format!("only meaningful together with {SSL_CERT}"),
                ));
            }
        }
        return Ok(None);
    };
    let certs = split_list(cert);
    if certs.len() != 1 || !certs[0].starts_with("arn:") {
        return Err(ProviderError::invalid(
            SSL_CERT,
            cert,
            "exactly one certificate ARN (arn:aws:acm:… or arn:aws:iam:…)",
        ));
    }
    let ports = match a.get(SSL_PORTS) {
        None | Some("*") => None,
        Some(v) => {
            let set: BTreeSet<String> = split_list(v).into_iter().collect();
            if set.is_empty() {
                return Err(ProviderError::invalid(
                    SSL_PORTS,
                    v,
                    "\"*\" or a comma-separated list of port numbers or names",
                ));
            }
            Some(set)
        }
    };
    let policy = match a.get(SSL_POLICY) {
        None => DEFAULT_SSL_POLICY.to_owned(),
        Some(v)
            if !v.is_empty()
                && v.len() <= 128
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            v.to_owned()
        }
        Some(v) => {
            return Err(ProviderError::invalid(
                SSL_POLICY,
                v,
                "an ELB security policy name such as ELBSecurityPolicy-TLS13-1-2-2021-06",
            ));
        }
    };
    Ok(Some(Tls {
        certificate_arn: certs[0].clone(),
        ports,
        policy,
    }))
}

#[cfg(test)]
mod tests;
