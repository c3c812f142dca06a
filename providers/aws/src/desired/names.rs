//! The names and tags FerryLB gives AWS resources. Names are derived from
//! the Service and from what AWS cannot change in place, so a change to any
//! of that is a new resource, and a restart finds the same names again.

use sha2::{Digest, Sha256};

use super::ElbProtocol;
use crate::options::{IpAddressType, Scheme, TargetType};

/// Tag naming the cluster that owns a resource.
pub const TAG_CLUSTER: &str = "ferrylb.io/cluster";
/// Tag naming the owning Service as `namespace/name`.
pub const TAG_SERVICE: &str = "ferrylb.io/service";
/// Tag carrying the owning Service's uid: what FerryLB finds resources by.
pub const TAG_SERVICE_UID: &str = "ferrylb.io/service-uid";

/// The tag AWS tooling uses for cluster ownership.
pub fn cluster_ownership_tag(cluster: &str) -> String {
    format!("kubernetes.io/cluster/{cluster}")
}

fn hash10(parts: &[&str]) -> String {
    let digest = Sha256::digest(parts.join("\u{0}"));
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// The NLB name for a Service's load balancer name, scheme and address type.
pub fn nlb_name(lb_name: &str, scheme: Scheme, ip: IpAddressType) -> String {
    if scheme == Scheme::default() && ip == IpAddressType::default() {
        return lb_name.to_owned();
    }
    let stem = lb_name.rsplit_once('-').map_or(lb_name, |(s, _)| s);
    format!(
        "{stem}-{}",
        hash10(&[lb_name, scheme.as_str(), ip.as_str()])
    )
}

/// A target group name: `fl-<hash>-<port>`, at most 32 characters.
pub fn target_group_name(
    nlb: &str,
    port: u16,
    protocol: ElbProtocol,
    node_port: u16,
    target_type: TargetType,
) -> String {
    let h = hash10(&[
        nlb,
        &port.to_string(),
        protocol.as_str(),
        &node_port.to_string(),
        target_type.as_str(),
    ]);
    format!("fl-{h}-{port}")
}

/// The instance id in a Node's `providerID` (`aws:///us-east-1a/i-0abc…`).
pub fn instance_id(provider_id: &str) -> Option<&str> {
    let rest = provider_id.strip_prefix("aws://")?;
    let id = rest.rsplit('/').next()?;
    (id.starts_with("i-") && id.len() > 2 && id[2..].chars().all(|c| c.is_ascii_alphanumeric()))
        .then_some(id)
}
