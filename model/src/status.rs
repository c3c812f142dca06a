//! What a provider reports back: the addresses to publish in the Service's
//! `status.loadBalancer`.

use std::net::IpAddr;

use crate::Protocol;

/// The load balancer's externally reachable addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LoadBalancerStatus {
    pub ingress: Vec<Ingress>,
    /// Things the user should know although the load balancer works, such
    /// as ports the provider cannot serve. Published as Warning Events.
    pub warnings: Vec<Warning>,
}

/// A problem that does not stop the load balancer from working.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Warning {
    /// Short CamelCase reason, e.g. `UnsupportedProtocol`.
    pub reason: String,
    pub message: String,
}

/// One externally reachable address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ingress {
    pub address: Address,
    /// `Proxy` when traffic really passes through a proxy that terminates
    /// connections (HAProxy): kube-proxy then does not short-circuit traffic
    /// to this address inside the cluster.
    pub ip_mode: Option<IpMode>,
    /// Per-port state, for providers that report it.
    pub ports: Vec<PortStatus>,
}

/// An IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Ip(IpAddr),
    Hostname(String),
}

/// `status.loadBalancer.ingress[].ipMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpMode {
    Vip,
    Proxy,
}

impl IpMode {
    /// The value Kubernetes uses (`VIP`, `Proxy`).
    pub fn as_str(self) -> &'static str {
        match self {
            IpMode::Vip => "VIP",
            IpMode::Proxy => "Proxy",
        }
    }
}

/// `status.loadBalancer.ingress[].ports[]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortStatus {
    pub port: u16,
    pub protocol: Protocol,
    /// A CamelCase reason when this port could not be served.
    pub error: Option<String>,
}
