use super::*;
use crate::testing::{listener, node, spec};

#[test]
fn instance_ids_come_from_provider_ids() {
    assert_eq!(
        instance_id("aws:///us-east-1a/i-0abc123"),
        Some("i-0abc123")
    );
    assert_eq!(instance_id("aws:///i-0abc123"), Some("i-0abc123"));
    assert_eq!(instance_id("gce://p/z/i-0abc"), None);
    assert_eq!(instance_id("aws:///us-east-1a/node-1"), None);
}

#[test]
fn names_fit_aws_limits_and_change_with_what_aws_cannot_modify() {
    let s = spec(vec![listener(Protocol::Tcp, 80, 30080)], vec![]);
    let d = Desired::build(&s, &AwsOptions::default(), "c").unwrap();
    assert_eq!(d.name, s.lb.name);
    let internal = nlb_name(&s.lb.name, Scheme::Internal, IpAddressType::Ipv4);
    assert_ne!(internal, d.name);
    assert!(internal.len() <= 32);
    let tg = &d.listeners[&80].target_group.name;
    assert!(tg.len() <= 32, "{tg}");
    let moved = target_group_name(&d.name, 80, ElbProtocol::Tcp, 30081, TargetType::Instance);
    assert_ne!(*tg, moved, "a new nodePort is a new target group");
}

#[test]
fn tcp_and_udp_on_one_port_share_a_tcp_udp_listener_and_sctp_is_reported() {
    let s = spec(
        vec![
            listener(Protocol::Tcp, 53, 30053),
            listener(Protocol::Udp, 53, 30053),
            listener(Protocol::Sctp, 9, 30009),
        ],
        vec![node("n1", Some("aws:///z/i-1")), node("n2", None)],
    );
    let d = Desired::build(&s, &AwsOptions::default(), "c").unwrap();
    assert_eq!(d.listeners.len(), 1);
    assert_eq!(d.listeners[&53].protocol, ElbProtocol::TcpUdp);
    assert_eq!(
        d.listeners[&53].target_group.targets,
        [("i-1".to_owned(), 30053)].into_iter().collect()
    );
    let reasons: Vec<&str> = d.warnings.iter().map(|w| w.reason.as_str()).collect();
    assert_eq!(reasons, ["NodesNotRegistered", "UnsupportedProtocol"]);
    assert!(d.ingress.iter().any(|r| r.protocol == "udp"));
    assert!(d.ingress.iter().any(|r| r.protocol == "tcp"));
}

#[test]
fn tls_applies_to_the_named_ports_only() {
    let s = spec(
        vec![
            listener(Protocol::Tcp, 80, 30080),
            listener(Protocol::Tcp, 443, 30443),
        ],
        vec![],
    );
    let o = AwsOptions {
        tls: Some(crate::options::Tls {
            certificate_arn: "arn:aws:acm:x".into(),
            extra_certificates: vec![],
            ports: Some(["p443".to_owned()].into_iter().collect()),
            policy: "P".into(),
        }),
        ..AwsOptions::default()
    };
    let d = Desired::build(&s, &o, "c").unwrap();
    assert_eq!(d.listeners[&80].protocol, ElbProtocol::Tcp);
    assert_eq!(d.listeners[&443].protocol, ElbProtocol::Tls);
    assert_eq!(d.listeners[&443].target_group.protocol, ElbProtocol::Tcp);
}

#[test]
fn local_traffic_policy_checks_http_on_the_health_node_port() {
    let mut s = spec(vec![listener(Protocol::Tcp, 80, 30080)], vec![]);
    s.health_check = HealthCheck::Http {
        port: 32000,
        path: "/healthz".into(),
    };
    let d = Desired::build(&s, &AwsOptions::default(), "c").unwrap();
    let h = &d.listeners[&80].target_group.health;
    assert_eq!(
        (h.protocol_str(), h.port_string(), h.path.as_deref()),
        ("HTTP", "32000".into(), Some("/healthz"))
    );
}

#[test]
fn ownership_tags_carry_cluster_and_service() {
    let s = spec(vec![listener(Protocol::Tcp, 80, 30080)], vec![]);
    let d = Desired::build(&s, &AwsOptions::default(), "prod").unwrap();
    assert_eq!(d.tags[TAG_CLUSTER], "prod");
    assert_eq!(d.tags[TAG_SERVICE], "shop/web");
    assert_eq!(d.tags[TAG_SERVICE_UID], "u1");
    assert_eq!(d.tags["kubernetes.io/cluster/prod"], "owned");
}

#[test]
fn local_traffic_policy_gets_the_load_balancer_controllers_health_timings() {
    let local = HealthCheck::Http {
        port: 32100,
        path: "/healthz".into(),
    };
    let h = Health::resolve(&local, &crate::options::HealthOverrides::default());
    assert_eq!(
        (
            h.interval,
            h.timeout,
            h.healthy_threshold,
            h.unhealthy_threshold
        ),
        (Some(10), Some(6), Some(2), Some(2))
    );
    // Annotated values win; Cluster leaves AWS's defaults.
    let o = crate::options::HealthOverrides {
        interval: Some(30),
        ..Default::default()
    };
    assert_eq!(Health::resolve(&local, &o).interval, Some(30));
    let cluster = Health::resolve(
        &HealthCheck::TrafficPort,
        &crate::options::HealthOverrides::default(),
    );
    assert_eq!((cluster.interval, cluster.timeout), (None, None));
}

/// Past TooManyTargets (kubernetes issue 86441): 1,000 nodes in three zones
/// and two ports is 2,000 registrations counted against 500 per zone; each
/// zone gets 250 of its nodes, the same for both ports, and one node added
/// moves at most one target.
#[test]
fn a_thousand_nodes_and_two_ports_fit_the_target_quota_by_a_stable_subset() {
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    let nodes: Vec<_> = (0..1000)
        .map(|i| {
            node(
                &format!("n{i:04}"),
                Some(&format!("aws:///{}/i-{i:08x}", zones[i % 3])),
            )
        })
        .collect();
    let ports = vec![
        listener(Protocol::Tcp, 80, 30080),
        listener(Protocol::Tcp, 443, 30443),
    ];
    let s = spec(ports.clone(), nodes.clone());
    let d = Desired::build(&s, &AwsOptions::default(), "c").unwrap();
    let t80: BTreeSet<&String> = d.listeners[&80]
        .target_group
        .targets
        .iter()
        .map(|(id, _)| id)
        .collect();
    let t443: BTreeSet<&String> = d.listeners[&443]
        .target_group
        .targets
        .iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(t80.len(), 750);
    assert_eq!(t80, t443);
    assert!(
        d.warnings.iter().any(|w| w.reason == "TargetSubset"
            && w.message.starts_with("750 of 1000 nodes are targets"))
    );
    let mut grown = nodes.clone();
    grown.push(node("n-new", Some("aws:///us-east-1b/i-ffffffff")));
    let d2 = Desired::build(&spec(ports.clone(), grown), &AwsOptions::default(), "c").unwrap();
    let after: BTreeSet<&String> = d2.listeners[&80]
        .target_group
        .targets
        .iter()
        .map(|(id, _)| id)
        .collect();
    assert!(t80.difference(&after).count() <= 1);
    // Under the quota: every node, no warning.
    let few = spec(ports, nodes[..30].to_vec());
    let d3 = Desired::build(&few, &AwsOptions::default(), "c").unwrap();
    assert_eq!(d3.listeners[&80].target_group.targets.len(), 30);
    assert!(d3.warnings.iter().all(|w| w.reason != "TargetSubset"));
    // No subset fits: a permanent error, not a retry loop.
    let e = Desired::build_with(&s, &AwsOptions::default(), "c", 1).unwrap_err();
    assert_eq!(
        (e.reason.as_str(), e.kind),
        ("TooManyTargets", ferrylb_model::ErrorKind::Permanent)
    );
}

fn endpoint(
    address: &str,
    port_name: &str,
    port: u16,
    ready: bool,
    node: &str,
    zone: &str,
) -> ferrylb_model::Endpoint {
    ferrylb_model::Endpoint {
        port_name: port_name.into(),
        protocol: Protocol::Tcp,
        address: address.parse().unwrap(),
        port,
        ready,
        terminating: !ready,
        node: Some(node.into()),
        zone: Some(zone.into()),
    }
}

fn ip_targets() -> AwsOptions {
    let mut a = BTreeMap::new();
    a.insert(
        "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type".to_owned(),
        "ip".to_owned(),
    );
    AwsOptions::parse(&a).unwrap()
}

/// `nlb-target-type: ip` means the Service's pods, as the AWS Load
/// Balancer Controller documents it: each ready pod on the port it serves
/// the Service port on, no nodePort hop; terminating pods are not
/// registered (so the NLB drains them), nor are IPv6-only ones.
#[test]
fn ip_targets_are_the_ready_pods_on_their_own_ports() {
    let mut s = spec(
        vec![
            listener(Protocol::Tcp, 80, 30080),
            listener(Protocol::Tcp, 443, 30443),
        ],
        vec![node("n1", Some("aws:///z/i-1"))],
    );
    s.health_check = HealthCheck::Http {
        port: 32000,
        path: "/healthz".into(),
    };
    s.endpoints = Some(
        vec![
            endpoint("10.1.0.5", "p80", 8080, true, "n1", "z"),
            endpoint("10.1.0.5", "p443", 8443, true, "n1", "z"),
            endpoint("10.1.0.6", "p80", 9090, true, "n2", "z"),
            endpoint("10.1.0.7", "p80", 8080, false, "n1", "z"),
            endpoint("fd00::8", "p80", 8080, true, "n1", "z"),
        ]
        .into(),
    );
    let d = Desired::build(&s, &ip_targets(), "c").unwrap();
    let t = |port: u16| -> Vec<(String, u16)> {
        d.listeners[&port]
            .target_group
            .targets
            .iter()
            .cloned()
            .collect()
    };
    assert_eq!(
        t(80),
        [("10.1.0.5".into(), 8080), ("10.1.0.6".into(), 9090)]
    );
    assert_eq!(t(443), [("10.1.0.5".into(), 8443)]);
    let tg = &d.listeners[&80].target_group;
    assert_eq!(tg.target_type, TargetType::Ip);
    // Pods answer on their own port, not on kube-proxy's health node port.
    assert_eq!(tg.health.port, HealthPort::TrafficPort);
    assert_eq!(tg.health.protocol, HealthProtocol::Tcp);
    let w: Vec<&Warning> = d
        .warnings
        .iter()
        .filter(|w| w.reason == "EndpointsNotRegistered")
        .collect();
    assert_eq!(w.len(), 1, "{:?}", d.warnings);
    assert!(w[0].message.contains("IPv6"), "{}", w[0].message);

    // No endpoints known, or none ready: nothing registered, and said.
    s.endpoints = None;
    let d = Desired::build(&s, &ip_targets(), "c").unwrap();
    assert!(d.listeners[&80].target_group.targets.is_empty());
    assert!(
        d.warnings
            .iter()
            .any(|w| w.reason == "EndpointsNotRegistered")
    );
    s.endpoints = Some(vec![endpoint("10.1.0.7", "p80", 8080, false, "n1", "z")].into());
    let d = Desired::build(&s, &ip_targets(), "c").unwrap();
    assert!(d.listeners[&80].target_group.targets.is_empty());
    assert!(
        d.warnings
            .iter()
            .any(|w| w.message.contains("no ready pod")),
        "{:?}",
        d.warnings
    );
}

#[test]
fn endpoints_are_needed_for_pod_targets_and_for_local_services_past_a_zones_budget() {
    let ports = vec![
        listener(Protocol::Tcp, 80, 30080),
        listener(Protocol::Tcp, 443, 30443),
    ];
    let nodes: Vec<_> = (0..300)
        .map(|i| node(&format!("n{i}"), Some(&format!("aws:///z/i-{i:x}"))))
        .collect();
    let mut s = spec(ports.clone(), nodes[..10].to_vec());
    let instance = AwsOptions::default();
    assert!(needs_endpoints(&s, &ip_targets(), 500));
    assert!(!needs_endpoints(&s, &instance, 500));
    s.health_check = HealthCheck::Http {
        port: 32000,
        path: "/healthz".into(),
    };
    assert!(
        !needs_endpoints(&s, &instance, 500),
        "10 nodes fit anywhere"
    );
    let s = LoadBalancerSpec {
        targets: nodes.into(),
        ..s
    };
    // 300 nodes, two target groups: 250 per zone at most.
    assert!(needs_endpoints(&s, &instance, 500));
    assert!(!needs_endpoints(&s, &instance, 600));
    let cluster = LoadBalancerSpec {
        health_check: HealthCheck::TrafficPort,
        ..s
    };
    assert!(!needs_endpoints(&cluster, &instance, 500));
}

/// `externalTrafficPolicy: Local` past a zone's budget: the subset is
/// drawn from the nodes running a ready pod only (the others would fail
/// the health check anyway); within the budget every node stays.
#[test]
fn a_local_service_past_the_budget_targets_only_nodes_with_ready_pods() {
    let nodes: Vec<_> = (0..20)
        .map(|i| node(&format!("n{i:02}"), Some(&format!("aws:///z/i-{i:x}"))))
        .collect();
    let mut s = spec(vec![listener(Protocol::Tcp, 80, 30080)], nodes);
    s.health_check = HealthCheck::Http {
        port: 32000,
        path: "/healthz".into(),
    };
    s.endpoints = Some(
        vec![
            endpoint("10.1.0.5", "p80", 8080, true, "n03", "z"),
            endpoint("10.1.0.6", "p80", 8080, true, "n11", "z"),
            endpoint("10.1.0.7", "p80", 8080, false, "n12", "z"),
        ]
        .into(),
    );
    let d = Desired::build_with(&s, &AwsOptions::default(), "c", 5).unwrap();
    let ids: Vec<&str> = d.listeners[&80]
        .target_group
        .targets
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(ids, ["i-3", "i-b"]);
    // Within the budget: every node, the health check decides.
    let d = Desired::build_with(&s, &AwsOptions::default(), "c", 500).unwrap();
    assert_eq!(d.listeners[&80].target_group.targets.len(), 20);
}

/// The managed attributes: PROXY protocol always (so removing the
/// annotation turns it off), the `target-group-attributes` ones when given;
/// only those that differ from what AWS reports are set.
#[test]
fn target_group_attributes_set_only_what_differs() {
    let s = spec(vec![listener(Protocol::Tcp, 80, 30080)], vec![]);
    let d = Desired::build(&s, &AwsOptions::default(), "c").unwrap();
    let tg = &d.listeners[&80].target_group;
    assert!(!tg.proxy_protocol());
    assert!(
        tg.attributes_to_set([("proxy_protocol_v2.enabled", "false"), ("x", "y")])
            .is_empty()
    );
    assert_eq!(
        tg.attributes_to_set([("proxy_protocol_v2.enabled", "true")])
            .into_iter()
            .collect::<Vec<_>>(),
        [("proxy_protocol_v2.enabled".to_owned(), "false".to_owned())]
    );
    let mut a = BTreeMap::new();
    a.insert(
        "service.beta.kubernetes.io/aws-load-balancer-target-group-attributes".to_owned(),
        "deregistration_delay.timeout_seconds=30".to_owned(),
    );
    a.insert(
        "service.beta.kubernetes.io/aws-load-balancer-proxy-protocol".to_owned(),
        "*".to_owned(),
    );
    let d = Desired::build(&s, &AwsOptions::parse(&a).unwrap(), "c").unwrap();
    let tg = &d.listeners[&80].target_group;
    assert!(tg.proxy_protocol());
    let set = tg.attributes_to_set([
        ("deregistration_delay.timeout_seconds", "300"),
        ("proxy_protocol_v2.enabled", "true"),
    ]);
    assert_eq!(
        set.into_iter().collect::<Vec<_>>(),
        [(
            "deregistration_delay.timeout_seconds".to_owned(),
            "30".to_owned()
        )]
    );
}

#[test]
fn a_node_drains_for_the_deregistration_delay_and_says_whether_it_is_cut() {
    let d = node_drain(&BTreeMap::new());
    assert_eq!(d.lasts, std::time::Duration::from_secs(300));
    assert!(
        d.how.contains("(300 s,") && d.how.contains("not closed"),
        "{}",
        d.how
    );
    let d = node_drain(&BTreeMap::from([
        (
            "deregistration_delay.timeout_seconds".to_owned(),
            "45".to_owned(),
        ),
        (
            "deregistration_delay.connection_termination.enabled".to_owned(),
            "true".to_owned(),
        ),
    ]));
    assert_eq!(d.lasts, std::time::Duration::from_secs(45));
    assert!(d.how.ends_with("then closes them"), "{}", d.how);
}
