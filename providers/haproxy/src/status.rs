//! What a reconcile is told: the status to publish for an entry, or that
//! its change is pending.

use std::time::Duration;

use ferrylb_model::{
    Address, Ingress, IpFamily, IpMode, LoadBalancerStatus, PortStatus, Protocol, ProviderError,
    Warning, reason,
};

use crate::render::Entry;

/// The answer for a change that an applier will load with others: ask
/// again after `after`.
pub(crate) fn pending(after: Duration) -> ProviderError {
    ProviderError::pending(
        after,
        "the change is loaded with others in HAProxy's next reload",
    )
}

/// The status to publish for an entry, and warnings for ports HAProxy
/// cannot serve.
pub fn status_of(entry: &Entry) -> LoadBalancerStatus {
    let mut warnings = Vec::new();
    let ports: Vec<PortStatus> = entry
        .spec
        .listeners
        .iter()
        .map(|l| {
            let error = (l.protocol != Protocol::Tcp).then(|| {
                warnings.push(Warning {
                    reason: reason::UNSUPPORTED_PROTOCOL.into(),
                    message: format!(
                        "port {}/{} is not served: HAProxy load-balances TCP only; the Service's TCP ports work",
                        l.port, l.protocol
                    ),
                });
                reason::UNSUPPORTED_PROTOCOL.to_owned()
            });
            PortStatus {
                port: l.port,
                protocol: l.protocol,
                error,
            }
        })
        .collect();
    if entry.vips.len() < entry.spec.ip_families.len() {
        let have: Vec<IpFamily> = entry.vips.iter().map(|ip| IpFamily::of(*ip)).collect();
        let lacking: Vec<&str> = entry
            .spec
            .ip_families
            .iter()
            .filter(|f| !have.contains(f))
            .map(|f| f.as_str())
            .collect();
        warnings.push(Warning {
            reason: reason::POOL_EXHAUSTED.into(),
            message: format!(
                "no {} address in the HAProxy address pool was free: the dual-stack Service \
                 (spec.ipFamilyPolicy: PreferDualStack) is served on {} only; \
                 with RequireDualStack it would wait for one",
                lacking.join(" or "),
                entry
                    .vips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    LoadBalancerStatus {
        ingress: entry
            .vips
            .iter()
            .map(|&vip| Ingress {
                address: Address::Ip(vip),
                ip_mode: Some(IpMode::Proxy),
                ports: ports.clone(),
            })
            .collect(),
        warnings,
    }
}
