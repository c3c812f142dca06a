//! What the AWS provider would create for one Service, as text.

use std::fmt::Write as _;

use ferrylb_aws::desired::{Desired, DesiredListener, Health};
use ferrylb_aws::options::{AwsOptions, TargetType};
use ferrylb_model::{LoadBalancerSpec, ProviderError};

/// Whether the AWS provider needs `spec`'s endpoints (as
/// [`ferrylb_aws::desired::needs_endpoints`] decides with the default quota).
pub fn needs_endpoints(spec: &LoadBalancerSpec) -> bool {
    AwsOptions::parse(&spec.annotations).is_ok_and(|o| {
        ferrylb_aws::desired::needs_endpoints(spec, &o, ferrylb_aws::desired::TARGETS_PER_ZONE)
    })
}

/// `spec`'s resources, indented under its name.
///
/// # Errors
/// What the provider would refuse the Service for (an invalid annotation, no
/// port an NLB can serve), as the controller would report it.
pub fn describe(spec: &LoadBalancerSpec, cluster: &str) -> Result<String, ProviderError> {
    let o = AwsOptions::parse(&spec.annotations)?;
    let d = Desired::build(spec, &o, cluster)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  network load balancer {}: {}, {}{}",
        d.name,
        d.scheme.as_str(),
        d.ip_address_type.as_str(),
        match d.cross_zone {
            Some(true) => ", cross-zone on",
            Some(false) => ", cross-zone off",
            None => "",
        }
    );
    let _ = match &d.subnets {
        Some(s) => writeln!(out, "  subnets: {}", s.join(", ")),
        None => writeln!(
            out,
            "  subnets: one per zone tagged {}=1 (looked up when applied)",
            d.scheme.subnet_role_tag()
        ),
    };
    let _ = writeln!(out, "  security group {}:", d.security_group_name);
    for r in &d.ingress {
        let _ = writeln!(out, "    allow {}/{} from {}", r.protocol, r.port, r.cidr);
    }
    if d.default_sources == Some(ferrylb_aws::desired::DefaultSources::Vpc) {
        for l in d.listeners.values() {
            for p in l.protocol.ip_protocols() {
                let _ = writeln!(
                    out,
                    "    allow {p}/{} from the VPC's CIDR blocks (internal; looked up when applied)",
                    l.port
                );
            }
        }
    }
    for l in d.listeners.values() {
        listener(&mut out, l);
    }
    let tags: Vec<String> = d.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "  tags: {}", tags.join(", "));
    for w in &d.warnings {
        let _ = writeln!(out, "  warning: {}", w.message);
    }
    Ok(out)
}

fn listener(out: &mut String, l: &DesiredListener) {
    let tg = &l.target_group;
    let _ = write!(
        out,
        "  listener {}/{} -> target group {}",
        l.port,
        l.protocol.as_str(),
        tg.name
    );
    let _ = match &l.tls {
        Some((cert, policy)) if l.extra_certificates.is_empty() => {
            writeln!(out, " (certificate {cert}, policy {policy})")
        }
        Some((cert, policy)) => writeln!(
            out,
            " (certificate {cert}, also {}, policy {policy})",
            l.extra_certificates.join(", ")
        ),
        None => writeln!(out),
    };
    let _ = writeln!(
        out,
        "    target group {}: {} to {}, {} targets{}",
        tg.name,
        tg.protocol.as_str(),
        match tg.target_type {
            TargetType::Instance => format!("nodePort {}", tg.node_port),
            TargetType::Ip => "each pod's own port".to_owned(),
        },
        tg.target_type.as_str(),
        if tg.proxy_protocol() {
            ", proxy protocol v2"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "    health check: {}", health(&tg.health));
    let attributes: Vec<String> = tg
        .attributes_to_set([])
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !attributes.is_empty() {
        let _ = writeln!(out, "    attributes: {}", attributes.join(", "));
    }
    let targets: Vec<String> = tg
        .targets
        .iter()
        .map(|(id, port)| format!("{id}:{port}"))
        .collect();
    let _ = writeln!(
        out,
        "    targets: {}",
        if targets.is_empty() {
            "none".to_owned()
        } else {
            targets.join(", ")
        }
    );
}

fn health(h: &Health) -> String {
    let mut s = format!("{} on {}", h.protocol_str(), h.port_string());
    if let Some(p) = &h.path {
        let _ = write!(s, " path {p}");
    }
    let settings = [
        ("interval", h.interval, "s"),
        ("timeout", h.timeout, "s"),
        ("healthy after", h.healthy_threshold, ""),
        ("unhealthy after", h.unhealthy_threshold, ""),
    ];
    for (what, v, unit) in settings {
        if let Some(v) = v {
            let _ = write!(s, ", {what} {v}{unit}");
        }
    }
    s
}
