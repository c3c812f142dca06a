//! Parsers for the annotations' values: each error names the annotation,
//! the value and what is allowed.

use std::collections::BTreeMap;

use ferrylb_model::ProviderError;

use super::*;

/// The annotations, values trimmed.
pub(super) struct Ann<'a>(pub(super) &'a BTreeMap<String, String>);

impl<'a> Ann<'a> {
    pub(super) fn get(&self, key: &str) -> Option<&'a str> {
        self.0.get(key).map(|v| v.trim())
    }
}

pub(super) fn valid_subnet_ref(s: &str) -> bool {
    s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
}

pub(super) fn parse_int(
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

pub(super) fn parse_health(a: &Ann<'_>) -> Result<HealthOverrides, ProviderError> {
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

pub(super) fn parse_bool(key: &str, v: &str) -> Result<bool, ProviderError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ProviderError::invalid(key, v, "true or false")),
    }
}

pub(super) fn parse_cross_zone(a: &Ann<'_>) -> Result<Option<bool>, ProviderError> {
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

/// The target group attributes FerryLB sets from
/// `target-group-attributes`, each with what its value may be.
const TARGET_GROUP_ATTRIBUTES: &[(&str, AttributeValue)] = &[
    (DEREGISTRATION_DELAY, AttributeValue::Int(0, 3600)),
    (
        "deregistration_delay.connection_termination.enabled",
        AttributeValue::Bool,
    ),
    ("preserve_client_ip.enabled", AttributeValue::Bool),
    (PROXY_PROTOCOL_V2, AttributeValue::Bool),
    ("stickiness.enabled", AttributeValue::Bool),
    ("stickiness.type", AttributeValue::OneOf(&["source_ip"])),
    (
        "target_health_state.unhealthy.connection_termination.enabled",
        AttributeValue::Bool,
    ),
    (
        "target_health_state.unhealthy.draining_interval_seconds",
        AttributeValue::Int(0, 360_000),
    ),
];

#[derive(Clone, Copy)]
enum AttributeValue {
    Bool,
    Int(u32, u32),
    OneOf(&'static [&'static str]),
}

impl AttributeValue {
    fn accepts(self, v: &str) -> bool {
        match self {
            Self::Bool => matches!(v, "true" | "false"),
            Self::Int(lo, hi) => {
                v.bytes().all(|b| b.is_ascii_digit())
                    && v.parse::<u32>().is_ok_and(|n| (lo..=hi).contains(&n))
            }
            Self::OneOf(values) => values.contains(&v),
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Bool => "true or false".into(),
            Self::Int(lo, hi) => format!("an integer {lo}-{hi}"),
            Self::OneOf(values) => values.join(" or "),
        }
    }
}

/// `target-group-attributes` (`key=value,…`, the AWS Load Balancer
/// Controller's annotation), checked key by key.
pub(super) fn parse_tg_attributes(
    v: Option<&str>,
) -> Result<BTreeMap<String, String>, ProviderError> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return Ok(out) };
    let keys: Vec<&str> = TARGET_GROUP_ATTRIBUTES.iter().map(|(k, _)| *k).collect();
    for item in split_list(v) {
        let Some((key, value)) = item.split_once('=').map(|(k, v)| (k.trim(), v.trim())) else {
            return Err(ProviderError::invalid(
                TARGET_GROUP_ATTRIBUTES_ANNOTATION,
                v,
                &format!("entry {item:?} is not key=value; keys: {}", keys.join(", ")),
            ));
        };
        let Some((_, kind)) = TARGET_GROUP_ATTRIBUTES.iter().find(|(k, _)| *k == key) else {
            return Err(ProviderError::invalid(
                TARGET_GROUP_ATTRIBUTES_ANNOTATION,
                v,
                &format!("key {key:?} is not supported; keys: {}", keys.join(", ")),
            ));
        };
        if !kind.accepts(value) {
            return Err(ProviderError::invalid(
                TARGET_GROUP_ATTRIBUTES_ANNOTATION,
                v,
                &format!("{key} must be {}", kind.describe()),
            ));
        }
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

pub(super) fn parse_tags(v: Option<&str>) -> Result<BTreeMap<String, String>, ProviderError> {
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

/// Certificates a listener holds (AWS's default quota, "Certificates per
/// Network Load Balancer" listener).
const MAX_CERTIFICATES: usize = 25;

pub(super) fn parse_tls(a: &Ann<'_>) -> Result<Option<Tls>, ProviderError> {
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
    let what = "a comma-separated list of certificate ARNs (arn:aws:acm:… or arn:aws:iam:…); \
                the first is the listener's default, at most 25";
    if certs.is_empty() || certs.len() > MAX_CERTIFICATES {
        return Err(ProviderError::invalid(SSL_CERT, cert, what));
    }
    if let Some(bad) = certs.iter().find(|c| !c.starts_with("arn:")) {
        return Err(ProviderError::invalid(
            SSL_CERT,
            cert,
            &format!("entry {bad:?} is not an ARN: {what}"),
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
    let mut extra: Vec<String> = certs[1..].to_vec();
    extra.sort();
    extra.dedup();
    extra.retain(|c| *c != certs[0]);
    Ok(Some(Tls {
        certificate_arn: certs[0].clone(),
        extra_certificates: extra,
        ports,
        policy,
    }))
}
