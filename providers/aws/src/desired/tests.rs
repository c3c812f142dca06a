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
