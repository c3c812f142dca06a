use super::*;
use serde_json::json;

fn no_targets() -> std::sync::Arc<[ferrylb_model::Target]> {
    std::sync::Arc::from([])
}

fn svc(spec: serde_json::Value, annotations: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "web", "uid": "u-1", "annotations": annotations},
        "spec": spec,
    }))
    .unwrap()
}

fn lb(extra: serde_json::Value) -> serde_json::Value {
    let mut base = json!({
        "type": "LoadBalancer",
        "ports": [
            {"name": "https", "port": 443, "protocol": "TCP", "nodePort": 30443},
            {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
        ],
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn node(name: &str, ip: &str, extra: serde_json::Value) -> Node {
    let mut n = json!({
        "metadata": {"name": name},
        "spec": {"providerID": format!("aws:///us-east-1a/i-{name}")},
        "status": {"addresses": [
            {"type": "Hostname", "address": name},
            {"type": "InternalIP", "address": ip},
            {"type": "ExternalIP", "address": "203.0.113.9"},
        ]},
    });
    merge(&mut n, extra);
    serde_json::from_value(n).unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn err(spec: serde_json::Value, annotations: serde_json::Value) -> SpecError {
    build(&svc(spec, annotations), &no_targets()).unwrap_err()
}

#[test]
fn listeners_are_sorted_and_carry_node_ports() {
    let s = build(&svc(lb(json!({})), json!({})), &no_targets()).unwrap();
    let got: Vec<_> = s
        .listeners
        .iter()
        .map(|l| (l.port, l.node_port, l.name.as_str()))
        .collect();
    assert_eq!(got, vec![(80, 30080, "http"), (443, 30443, "https")]);
    assert_eq!(s.listeners[0].protocol, Protocol::Tcp);
    assert_eq!(s.health_check, HealthCheck::TrafficPort);
    assert_eq!(s.lb.key.to_string(), "shop/web");
    assert_eq!(s.lb.name, ferrylb_model::load_balancer_name(&s.lb.key));
    assert!(s.source_ranges.is_empty() && s.requested_ips.is_empty() && s.shared_ip_key.is_none());
}

#[test]
fn protocol_defaults_to_tcp_and_accepts_udp_and_sctp() {
    let s = build(
        &svc(
            json!({"type": "LoadBalancer", "ports": [
                {"port": 53, "protocol": "UDP", "nodePort": 30053},
                {"port": 54, "protocol": "SCTP", "nodePort": 30054},
                {"port": 55, "nodePort": 30055},
            ]}),
            json!({}),
        ),
        &no_targets(),
    )
    .unwrap();
    let protos: Vec<_> = s.listeners.iter().map(|l| l.protocol).collect();
    assert_eq!(protos, vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
}

#[test]
fn rejects_unknown_protocol() {
    let e = err(
        json!({"type": "LoadBalancer", "ports": [{"port": 1, "protocol": "QUIC", "nodePort": 30001}]}),
        json!({}),
    );
    assert_eq!(e.field, "spec.ports[0].protocol");
    assert_eq!(e.value, "QUIC");
}

#[test]
fn rejects_missing_and_out_of_range_node_ports() {
    let e = err(
        json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
        json!({}),
    );
    assert_eq!(e.field, "spec.ports[0].nodePort");
    let e = err(
        json!({"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 70000}]}),
        json!({}),
    );
    assert_eq!(
        (e.field.as_str(), e.value.as_str()),
        ("spec.ports[0].nodePort", "70000")
    );
    let e = err(
        json!({"type": "LoadBalancer", "ports": [{"port": 0, "nodePort": 30000}]}),
        json!({}),
    );
    assert_eq!(e.field, "spec.ports[0].port");
}

#[test]
fn rejects_a_service_without_ports_or_uid() {
    assert_eq!(
        err(json!({"type": "LoadBalancer", "ports": []}), json!({})).field,
        "spec.ports"
    );
    let mut s = svc(lb(json!({})), json!({}));
    s.metadata.uid = None;
    assert_eq!(build(&s, &no_targets()).unwrap_err().field, "metadata.uid");
}

#[test]
fn rejects_disabled_node_port_allocation_with_advice() {
    let e = err(
        lb(json!({"allocateLoadBalancerNodePorts": false})),
        json!({}),
    );
    assert_eq!(e.field, "spec.allocateLoadBalancerNodePorts");
    assert!(e.to_string().contains("set it to true"), "{e}");
    assert!(
        build(
            &svc(
                lb(json!({"allocateLoadBalancerNodePorts": true})),
                json!({})
            ),
            &no_targets()
        )
        .is_ok()
    );
}

#[test]
fn local_traffic_policy_checks_health_check_node_port() {
    let s = build(
        &svc(
            lb(json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": 32000})),
            json!({}),
        ),
        &no_targets(),
    )
    .unwrap();
    assert_eq!(
        s.health_check,
        HealthCheck::Http {
            port: 32000,
            path: "/healthz".into()
        }
    );
    let e = err(lb(json!({"externalTrafficPolicy": "Local"})), json!({}));
    assert_eq!(e.field, "spec.healthCheckNodePort");
    let s = build(
        &svc(lb(json!({"externalTrafficPolicy": "Cluster"})), json!({})),
        &no_targets(),
    )
    .unwrap();
    assert_eq!(s.health_check, HealthCheck::TrafficPort);
}

#[test]
fn source_ranges_from_field_win_over_annotation_and_are_normalised() {
    let s = build(
        &svc(
            lb(json!({"loadBalancerSourceRanges": ["10.1.2.3/8", "2001:db8::/32", "10.0.0.0/8"]})),
            json!({ANNOTATION_SOURCE_RANGES: "192.168.0.0/16"}),
        ),
        &no_targets(),
    )
    .unwrap();
    let got: Vec<String> = s.source_ranges.iter().map(|n| n.to_string()).collect();
    assert_eq!(got, vec!["10.0.0.0/8", "2001:db8::/32"]);

    let s = build(
        &svc(
            lb(json!({})),
            json!({ANNOTATION_SOURCE_RANGES: " 192.168.0.0/16 , 127.0.0.5/32"}),
        ),
        &no_targets(),
    )
    .unwrap();
    let got: Vec<String> = s.source_ranges.iter().map(|n| n.to_string()).collect();
    assert_eq!(got, vec!["127.0.0.5/32", "192.168.0.0/16"]);
}

#[test]
fn rejects_bad_source_ranges_naming_where_they_came_from() {
    let e = err(
        lb(json!({"loadBalancerSourceRanges": ["10.0.0.0/33"]})),
        json!({}),
    );
    assert_eq!(
        (e.field.as_str(), e.value.as_str()),
        ("spec.loadBalancerSourceRanges", "10.0.0.0/33")
    );
    let e = err(
        lb(json!({})),
        json!({ANNOTATION_SOURCE_RANGES: "10.0.0.0/8,everyone"}),
    );
    assert_eq!(
        (e.field.as_str(), e.value.as_str()),
        (ANNOTATION_SOURCE_RANGES, "everyone")
    );
    assert!(e.allowed.contains("CIDR"));
}

#[test]
fn requested_ips_from_annotation_or_load_balancer_ip() {
    let s = build(
        &svc(lb(json!({"loadBalancerIP": "127.0.0.150"})), json!({})),
        &no_targets(),
    )
    .unwrap();
    assert_eq!(
        s.requested_ips,
        vec!["127.0.0.150".parse::<IpAddr>().unwrap()]
    );
    let s = build(
        &svc(
            lb(json!({"loadBalancerIP": "127.0.0.150"})),
            json!({ANNOTATION_LOAD_BALANCER_IPS: "127.0.0.151, fd00::1"}),
        ),
        &no_targets(),
    )
    .unwrap();
    assert_eq!(
        s.requested_ips,
        vec![
            "127.0.0.151".parse::<IpAddr>().unwrap(),
            "fd00::1".parse().unwrap()
        ]
    );
}

#[test]
fn rejects_bad_requested_ips() {
    let e = err(
        lb(json!({})),
        json!({ANNOTATION_LOAD_BALANCER_IPS: "127.0.0.1,not-an-ip"}),
    );
    assert_eq!(
        (e.field.as_str(), e.value.as_str()),
        (ANNOTATION_LOAD_BALANCER_IPS, "127.0.0.1,not-an-ip")
    );
    let e = err(
        lb(json!({})),
        json!({ANNOTATION_LOAD_BALANCER_IPS: "127.0.0.1,127.0.0.2"}),
    );
    assert!(e.allowed.contains("at most one IPv4"), "{e}");
    let e = err(lb(json!({"loadBalancerIP": "300.1.1.1"})), json!({}));
    assert_eq!(e.field, "spec.loadBalancerIP");
}

#[test]
fn sharing_key_is_validated() {
    let s = build(
        &svc(
            lb(json!({})),
            json!({ANNOTATION_ALLOW_SHARED_IP: "team-a.dns"}),
        ),
        &no_targets(),
    )
    .unwrap();
    assert_eq!(s.shared_ip_key.as_deref(), Some("team-a.dns"));
    for bad in ["", "a b", "x\ny", &"k".repeat(64)] {
        let e = err(lb(json!({})), json!({ANNOTATION_ALLOW_SHARED_IP: bad}));
        assert_eq!(e.field, ANNOTATION_ALLOW_SHARED_IP, "{bad:?}");
    }
}

#[test]
fn provider_annotations_pass_through_and_others_do_not() {
    let s = build(
        &svc(
            lb(json!({})),
            json!({
                "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal",
                "ferrylb.io/timeout-client": "30s",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "example.com/other": "x",
            }),
        ),
        &no_targets(),
    )
    .unwrap();
    let keys: Vec<&str> = s.annotations.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "ferrylb.io/timeout-client",
            "service.beta.kubernetes.io/aws-load-balancer-scheme"
        ]
    );
}

#[test]
fn status_ips_come_from_the_services_status() {
    let mut s = svc(lb(json!({})), json!({}));
    s.status = serde_json::from_value(
        json!({"loadBalancer": {"ingress": [{"ip": "127.0.0.120"}, {"hostname": "x.example"}]}}),
    )
    .unwrap();
    let spec = build(&s, &no_targets()).unwrap();
    assert_eq!(
        spec.status_ips,
        vec!["127.0.0.120".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn eligible_targets_exclude_labelled_deleting_and_autoscaler_tainted_nodes() {
    let nodes = vec![
        node("n3", "127.0.0.13", json!({})),
        node("n1", "127.0.0.11", json!({})),
        node(
            "ex",
            "127.0.0.14",
            json!({"metadata": {"labels": {LABEL_EXCLUDE_FROM_LB: ""}}}),
        ),
        node(
            "ex-true",
            "127.0.0.19",
            json!({"metadata": {"labels": {LABEL_EXCLUDE_FROM_LB: "true"}}}),
        ),
        node(
            "ex-junk",
            "127.0.0.20",
            json!({"metadata": {"labels": {LABEL_EXCLUDE_FROM_LB: "yes"}}}),
        ),
        node(
            "kept-false",
            "127.0.0.21",
            json!({"metadata": {"labels": {LABEL_EXCLUDE_FROM_LB: "false"}}}),
        ),
        node(
            "kept-zero",
            "127.0.0.22",
            json!({"metadata": {"labels": {LABEL_EXCLUDE_FROM_LB: "0"}}}),
        ),
        node(
            "del",
            "127.0.0.15",
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["x"]}}),
        ),
        node(
            "ca",
            "127.0.0.16",
            json!({"spec": {"taints": [{"key": TAINT_TO_BE_DELETED, "effect": "NoSchedule"}]}}),
        ),
        node(
            "karpenter",
            "127.0.0.23",
            json!({"spec": {"taints": [{"key": TAINT_KARPENTER_DISRUPTED, "effect": "NoSchedule"}]}}),
        ),
        node(
            "cordoned",
            "127.0.0.24",
            json!({"spec": {"unschedulable": true, "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}}),
        ),
        node(
            "other-taint",
            "127.0.0.17",
            json!({"spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]}}),
        ),
        node(
            "notready",
            "127.0.0.18",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        ),
    ];
    let t = targets(&nodes);
    let names: Vec<&str> = t.iter().map(|t| t.node.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "cordoned",
            "kept-false",
            "kept-zero",
            "n1",
            "n3",
            "notready",
            "other-taint"
        ]
    );
    let n1 = &t[3];
    assert_eq!(n1.addresses, vec!["127.0.0.11".parse::<IpAddr>().unwrap()]);
    assert_eq!(n1.provider_id.as_deref(), Some("aws:///us-east-1a/i-n1"));
}

#[test]
fn nodes_without_an_internal_ip_are_not_targets() {
    let mut n = node("n1", "127.0.0.11", json!({}));
    n.status
        .as_mut()
        .unwrap()
        .addresses
        .as_mut()
        .unwrap()
        .retain(|a| a.type_ != "InternalIP");
    assert!(targets(&[n]).is_empty());
    let bad = node("n2", "not-an-ip", json!({}));
    assert!(targets(&[bad]).is_empty());
}

#[test]
fn targets_are_copied_into_the_spec() {
    let t = targets(&[node("n1", "127.0.0.11", json!({}))]);
    let s = build(&svc(lb(json!({})), json!({})), &t).unwrap();
    assert_eq!(s.targets, t);
}

#[test]
fn spec_comparison_ignores_status_ips_and_spots_target_only_changes() {
    let t1 = targets(&[node("n1", "127.0.0.11", json!({}))]);
    let t2 = targets(&[
        node("n1", "127.0.0.11", json!({})),
        node("n2", "127.0.0.12", json!({})),
    ]);
    let a = build(&svc(lb(json!({})), json!({})), &t1).unwrap();
    let mut with_status = a.clone();
    with_status.status_ips = vec!["127.0.0.9".parse().unwrap()];
    assert!(a.same_desired_state(&with_status));
    let b = build(&svc(lb(json!({})), json!({})), &t2).unwrap();
    assert!(!a.same_desired_state(&b));
    assert!(a.differs_only_in_targets(&b));
    let c = build(
        &svc(lb(json!({"loadBalancerIP": "127.0.0.3"})), json!({})),
        &t2,
    )
    .unwrap();
    assert!(!a.differs_only_in_targets(&c));
    assert!(!a.differs_only_in_targets(&a));
}

fn slice(
    address_type: &str,
    ports: serde_json::Value,
    endpoints: serde_json::Value,
) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "ns", "labels": {LABEL_SERVICE_NAME: "web"}},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .unwrap()
}

#[test]
fn endpoints_carry_each_address_on_each_port_with_its_conditions() {
    let a = slice(
        "IPv4",
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
        json!([
            {"addresses": ["10.1.0.5", "10.1.0.99"], "conditions": {"ready": true}, "nodeName": "n1", "zone": "z1"},
            {"addresses": ["10.1.0.6"], "conditions": {"ready": false, "terminating": true}, "nodeName": "n2"},
            {"addresses": ["10.1.0.7"]},
        ]),
    );
    let eps = endpoints([&a]);
    assert_eq!(eps.len(), 6);
    let first = eps
        .iter()
        .find(|e| e.address.to_string() == "10.1.0.5" && e.port == 8080)
        .unwrap();
    assert_eq!(first.port_name, "http");
    assert_eq!(first.protocol, Protocol::Tcp);
    assert!(first.ready && !first.terminating);
    assert_eq!(first.node.as_deref(), Some("n1"));
    assert_eq!(first.zone.as_deref(), Some("z1"));
    // Only the first address of an endpoint counts.
    assert!(!eps.iter().any(|e| e.address.to_string() == "10.1.0.99"));
    let going = eps
        .iter()
        .find(|e| e.address.to_string() == "10.1.0.6" && e.protocol == Protocol::Udp)
        .unwrap();
    assert!(!going.ready && going.terminating);
    assert_eq!(going.port, 5353);
    // No conditions at all reads as ready, as the API says.
    assert!(
        eps.iter()
            .filter(|e| e.address.to_string() == "10.1.0.7")
            .all(|e| e.ready && !e.terminating)
    );
}

#[test]
fn endpoints_skip_fqdn_slices_portless_slices_and_bad_addresses() {
    let fqdn = slice(
        "FQDN",
        json!([{"name": "", "port": 80}]),
        json!([{"addresses": ["db.example.com"]}]),
    );
    let portless = slice(
        "IPv4",
        json!([{"name": ""}]),
        json!([{"addresses": ["10.1.0.5"]}]),
    );
    let bad = slice(
        "IPv6",
        json!([{"name": "", "port": 80}]),
        json!([{"addresses": ["not-an-ip"]}, {"addresses": ["fd00::5"]}]),
    );
    let eps = endpoints([&fqdn, &portless, &bad]);
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0].address.to_string(), "fd00::5");
    assert_eq!(eps[0].protocol, Protocol::Tcp, "protocol defaults to TCP");
}
