//! Builders shared by the unit tests: a Service's spec, its ports, its
//! nodes.

use std::collections::BTreeMap;

use ferrylb_model::{
    HealthCheck, Listener, LoadBalancerRef, LoadBalancerSpec, Protocol, ServiceKey, Target,
};

/// The spec of Service `shop/web` (uid `u1`) with these ports and nodes.
pub fn spec(listeners: Vec<Listener>, targets: Vec<Target>) -> LoadBalancerSpec {
    LoadBalancerSpec {
        lb: LoadBalancerRef::for_service(ServiceKey {
            namespace: "shop".into(),
            name: "web".into(),
            uid: "u1".into(),
        }),
        listeners,
        targets: targets.into(),
        health_check: HealthCheck::TrafficPort,
        source_ranges: vec![],
        requested_ips: vec![],
        shared_ip_key: None,
        ip_families: vec![],
        require_dual_stack: false,
        status_ips: vec![],
        endpoints: None,
        annotations: BTreeMap::new(),
    }
}

/// Port `port` (named `p<port>`) on `node_port`.
pub fn listener(protocol: Protocol, port: u16, node_port: u16) -> Listener {
    Listener {
        protocol,
        port,
        node_port,
        name: format!("p{port}"),
    }
}

/// A node at 10.0.0.1 with an optional providerID.
pub fn node(name: &str, provider_id: Option<&str>) -> Target {
    Target {
        node: name.into(),
        addresses: vec!["10.0.0.1".parse().expect("an address")],
        provider_id: provider_id.map(str::to_owned),
    }
}
