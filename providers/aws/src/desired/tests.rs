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
