//! The decisions, each from (desired, observed) to what to do, without AWS.
//! The moto tests prove that the calls these lead to are right.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{IpPermission, IpRange, Subnet, Tag as Ec2Tag};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, AvailabilityZone, Certificate, Listener, LoadBalancer, ProtocolEnum,
    TargetDescription, TargetGroup, TargetHealthDescription,
};
use ferrylb_model::{LoadBalancerSpec, Protocol, reason};

use super::listeners::{
    ListenerAction, listener_action, unwanted_listeners, unwanted_target_groups,
};
use super::load_balancer::{attribute_on, drift};
use super::lookup::carries_uid;
use super::security_group::{permissions, rule_changes, rules_of};
use super::subnets::{SubnetQuery, Subnets, explicit_filter, pick};
use super::target_groups::{health_drift, registered, target_changes};
use super::*;
use crate::desired::{Desired, TAG_SERVICE_UID};
use crate::options::{self as o, Scheme};
use crate::testing::{listener, node, spec};

fn with(annotations: &[(&str, &str)]) -> LoadBalancerSpec {
    let mut s = spec(
        vec![listener(Protocol::Tcp, 80, 30080)],
        vec![node("n1", Some("aws:///z/i-1"))],
    );
    s.annotations = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    s
}

fn desired_of(annotations: &[(&str, &str)]) -> Desired {
    desired(&with(annotations), "c").expect("valid")
}

fn nlb(name: &str, arn: &str) -> LoadBalancer {
    LoadBalancer::builder()
        .load_balancer_name(name)
        .load_balancer_arn(arn)
        .build()
}

#[test]
fn the_nlb_of_another_name_is_the_one_replaced() {
    let lbs = [nlb("web-a", "arn:a"), nlb("web-b", "arn:b")];
    let (current, stale) = split_by_name(&lbs, "web-b");
    assert_eq!(current.and_then(|l| l.load_balancer_arn()), Some("arn:b"));
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].load_balancer_arn(), Some("arn:a"));
    let (current, stale) = split_by_name(&lbs[..0], "web-b");
    assert!(current.is_none() && stale.is_empty());
    let w = replacing(&desired_of(&[]), &stale);
    assert_eq!(w.reason, reason::REPLACING_LOAD_BALANCER);
}

#[test]
fn tagged_resources_are_filed_by_kind() {
    let mut owned = Owned::default();
    owned.add("arn:aws:elasticloadbalancing:r:1:loadbalancer/net/web/abc");
    owned.add("arn:aws:elasticloadbalancing:r:1:targetgroup/fl-x-80/abc");
    owned.add("arn:aws:ec2:r:1:security-group/sg-123");
    owned.add("arn:aws:ec2:r:1:instance/i-1");
    assert_eq!(owned.load_balancers.len(), 1);
    assert_eq!(owned.target_groups.len(), 1);
    assert_eq!(owned.security_groups, ["sg-123"]);
    assert!(!owned.is_empty());
    let tags = [(Some(TAG_SERVICE_UID), Some("u1")), (Some("x"), Some("u2"))];
    assert!(carries_uid(tags.iter().copied(), Some("u1")));
    assert!(!carries_uid(tags.iter().copied(), Some("u2")));
}

fn subnet(id: &str, zone: &str, vpc: &str, tags: &[(&str, &str)]) -> Subnet {
    let mut b = Subnet::builder()
        .subnet_id(id)
        .availability_zone(zone)
        .vpc_id(vpc);
    for (k, v) in tags {
        b = b.tags(Ec2Tag::builder().key(*k).value(*v).build());
    }
    b.build()
}

const ELB: &str = "kubernetes.io/role/elb";

fn discovered() -> SubnetQuery {
    SubnetQuery {
        scheme: Scheme::InternetFacing,
        explicit: None,
    }
}

#[test]
fn named_subnets_are_ids_or_names_not_both() {
    let ids = vec!["subnet-1".to_owned(), "subnet-2".to_owned()];
    assert_eq!(explicit_filter(&ids).unwrap().0, "subnet-id");
    assert_eq!(explicit_filter(&["a".into()]).unwrap().0, "tag:Name");
    let e = explicit_filter(&["subnet-1".into(), "a".into()]).unwrap_err();
    assert_eq!(e.reason, reason::INVALID_ANNOTATION);
    assert!(e.message.starts_with(o::SUBNETS), "{}", e.message);
}

#[test]
fn discovery_takes_one_subnet_per_zone_tagged_for_the_scheme_and_this_cluster() {
    let found = [
        // Zone a: an untagged-cluster subnet loses to this cluster's.
        subnet("subnet-a1", "a", "vpc-1", &[(ELB, "1")]),
        subnet(
            "subnet-a2",
            "a",
            "vpc-1",
            &[(ELB, ""), ("kubernetes.io/cluster/c", "shared")],
        ),
        // Zone b: another cluster's is skipped, the lowest id wins.
        subnet(
            "subnet-b0",
            "b",
            "vpc-1",
            &[(ELB, "1"), ("kubernetes.io/cluster/other", "owned")],
        ),
        subnet("subnet-b2", "b", "vpc-1", &[(ELB, "1")]),
        subnet("subnet-b1", "b", "vpc-1", &[(ELB, "1")]),
        // Zone c: not tagged for load balancers.
        subnet("subnet-c1", "c", "vpc-1", &[]),
        subnet("subnet-c2", "c", "vpc-1", &[(ELB, "0")]),
    ];
    let s = pick(&found, &discovered(), "c", None).unwrap();
    assert_eq!(
        s,
        Subnets {
            ids: vec!["subnet-a2".into(), "subnet-b1".into()],
            vpc: "vpc-1".into()
        }
    );
}

#[test]
fn no_subnet_or_several_vpcs_say_what_to_tag_or_name() {
    let e = pick(&[], &discovered(), "c", Some("vpc-9")).unwrap_err();
    assert_eq!(e.reason, reason::SUBNETS_NOT_FOUND);
    assert!(
        e.message.contains("kubernetes.io/role/elb=1") && e.message.contains("in vpc-9"),
        "{}",
        e.message
    );
    let spread = [
        subnet("subnet-1", "a", "vpc-1", &[(ELB, "1")]),
        subnet("subnet-2", "b", "vpc-2", &[(ELB, "1")]),
    ];
    let e = pick(&spread, &discovered(), "c", None).unwrap_err();
    assert!(e.message.contains("vpc-1, vpc-2"), "{}", e.message);
    // Named subnets need no tags.
    let named = SubnetQuery {
        scheme: Scheme::Internal,
        explicit: Some(vec!["subnet-1".into()]),
    };
    let untagged = [subnet("subnet-1", "a", "vpc-1", &[])];
    assert_eq!(
        pick(&untagged, &named, "c", None).unwrap().ids,
        ["subnet-1"]
    );
    let e = pick(&[], &named, "c", None).unwrap_err();
    assert!(e.message.contains("matches no subnet"), "{}", e.message);
}

#[test]
fn ingress_rules_are_diffed_and_foreign_rules_left_alone() {
    let d = desired_of(&[]);
    assert_eq!(d.ingress.len(), 1);
    let stale_rule = crate::desired::IngressRule {
        protocol: "tcp",
        port: 81,
        cidr: "10.0.0.0/8".parse().unwrap(),
    };
    let have: BTreeSet<_> = [stale_rule.clone()].into();
    let changes = rule_changes(&d.ingress, &have);
    assert_eq!(changes.add, d.ingress.iter().collect::<Vec<_>>());
    assert_eq!(changes.remove, [&stale_rule]);
    assert_eq!(rule_changes(&d.ingress, &d.ingress), Default::default());

    // What FerryLB writes reads back as the same rules.
    let written = permissions(&d.ingress.iter().collect::<Vec<_>>());
    let read: BTreeSet<_> = written.iter().flat_map(rules_of).collect();
    assert_eq!(read, d.ingress);
    // A port range or another protocol is not FerryLB's: never revoked.
    let range = IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(80)
        .to_port(90)
        .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    let icmp = IpPermission::builder()
        .ip_protocol("icmp")
        .from_port(-1)
        .to_port(-1)
        .build();
    assert!(rules_of(&range).is_empty() && rules_of(&icmp).is_empty());
}

#[test]
fn an_existing_nlb_drifts_in_its_security_group_and_named_subnets_only() {
    let lb = LoadBalancer::builder()
        .security_groups("sg-1")
        .availability_zones(AvailabilityZone::builder().subnet_id("subnet-1").build())
        .build();
    let want = Subnets {
        ids: vec!["subnet-2".into()],
        vpc: "vpc-1".into(),
    };
    let discovered = desired_of(&[]);
    assert_eq!(drift(&discovered, &lb, "sg-1", None), Default::default());
    // Discovered subnets are not enforced on an existing NLB.
    assert_eq!(
        drift(&discovered, &lb, "sg-1", Some(&want)),
        Default::default()
    );
    let d = drift(&discovered, &lb, "sg-2", None);
    assert!(d.security_group && d.subnets.is_none());
    let named = desired_of(&[(o::SUBNETS, "subnet-2")]);
    assert_eq!(
        drift(&named, &lb, "sg-1", Some(&want)).subnets,
        Some(vec!["subnet-2".into()])
    );
    let attrs = [(Some("a"), Some("true")), (Some("b"), Some("false"))];
    assert!(attribute_on(attrs.iter().copied(), "a"));
    assert!(!attribute_on(attrs.iter().copied(), "b"));
    assert!(!attribute_on(attrs.iter().copied(), "c"));
}

fn existing_listener(port: i32, protocol: ProtocolEnum, tg: &str) -> Listener {
    Listener::builder()
        .listener_arn(format!("arn:l{port}"))
        .port(port)
        .protocol(protocol)
        .default_actions(
            Action::builder()
                .r#type(ActionTypeEnum::Forward)
                .target_group_arn(tg)
                .build(),
        )
        .build()
}

#[test]
fn a_listener_is_created_kept_or_modified_by_what_differs() {
    let d = desired_of(&[]);
    let l = &d.listeners[&80];
    assert_eq!(listener_action(&[], l, "tg"), ListenerAction::Create);
    let same = [existing_listener(80, ProtocolEnum::Tcp, "tg")];
    assert_eq!(
        listener_action(&same, l, "tg"),
        ListenerAction::Keep("arn:l80")
    );
    // Another target group (a nodePort changed) or protocol.
    assert_eq!(
        listener_action(&same, l, "tg2"),
        ListenerAction::Modify("arn:l80")
    );
    let udp = [existing_listener(80, ProtocolEnum::Udp, "tg")];
    assert_eq!(
        listener_action(&udp, l, "tg"),
        ListenerAction::Modify("arn:l80")
    );
    // TLS: the certificate and the policy must match too.
    let tls = desired_of(&[(o::SSL_CERT, "arn:cert")]);
    let tl = &tls.listeners[&80];
    let with_cert = |cert: &str, policy: &str| {
        let mut x = existing_listener(80, ProtocolEnum::Tls, "tg");
        x.certificates = Some(vec![Certificate::builder().certificate_arn(cert).build()]);
        x.ssl_policy = Some(policy.to_owned());
        [x]
    };
    let policy = o::DEFAULT_SSL_POLICY;
    assert_eq!(
        listener_action(&with_cert("arn:cert", policy), tl, "tg"),
        ListenerAction::Keep("arn:l80")
    );
    assert!(matches!(
        listener_action(&with_cert("arn:old", policy), tl, "tg"),
        ListenerAction::Modify(_)
    ));
    assert!(matches!(
        listener_action(
            &with_cert("arn:cert", "ELBSecurityPolicy-2016-08"),
            tl,
            "tg"
        ),
        ListenerAction::Modify(_)
    ));
}

#[test]
fn listeners_and_target_groups_no_port_wants_go_unless_another_nlb_uses_them() {
    let d = desired_of(&[]);
    let listeners = [
        existing_listener(80, ProtocolEnum::Tcp, "tg"),
        existing_listener(443, ProtocolEnum::Tcp, "tg"),
    ];
    assert_eq!(unwanted_listeners(&listeners, &d), ["arn:l443"]);
    let tg = |name: &str, lbs: &[&str]| {
        TargetGroup::builder()
            .target_group_name(name)
            .target_group_arn(format!("arn:{name}"))
            .set_load_balancer_arns(Some(lbs.iter().map(|s| (*s).to_owned()).collect()))
            .build()
    };
    let tgs = [
        tg("kept", &["arn:lb"]),
        tg("old", &["arn:lb"]),
        tg("loose", &[]),
        tg("stale-nlb", &["arn:old-lb"]),
    ];
    let kept: BTreeSet<&str> = ["kept"].into();
    assert_eq!(
        unwanted_target_groups(&tgs, &kept, "arn:lb"),
        ["arn:old", "arn:loose"]
    );
}

fn target_group_like(
    d: &Desired,
) -> aws_sdk_elasticloadbalancingv2::types::builders::TargetGroupBuilder {
    let h = &d.listeners[&80].target_group.health;
    TargetGroup::builder()
        .health_check_protocol(ProtocolEnum::from(h.protocol_str()))
        .health_check_port(h.port_string())
        .set_health_check_path(h.path.clone())
        .set_health_check_interval_seconds(h.interval)
        .set_health_check_timeout_seconds(h.timeout)
        .set_healthy_threshold_count(h.healthy_threshold)
        .set_unhealthy_threshold_count(h.unhealthy_threshold)
}

#[test]
fn each_health_check_field_drifts_on_its_own() {
    // Unset numbers are AWS's default: whatever is there never drifts, and
    // neither does the path of a TCP check.
    let tcp = desired_of(&[]);
    let h = &tcp.listeners[&80].target_group.health;
    let tg = target_group_like(&tcp)
        .health_check_interval_seconds(30)
        .health_check_path("/anything")
        .build();
    assert!(health_drift(h, &tg).is_empty());

    let http = desired_of(&[
        (o::HC_PROTOCOL, "HTTP"),
        (o::HC_PORT, "8080"),
        (o::HC_PATH, "/healthz"),
        (o::HC_INTERVAL, "10"),
        (o::HC_TIMEOUT, "6"),
        (o::HC_HEALTHY, "2"),
        (o::HC_UNHEALTHY, "3"),
    ]);
    let h = &http.listeners[&80].target_group.health;
    assert!(health_drift(h, &target_group_like(&http).build()).is_empty());
    let cases = [
        (
            target_group_like(&http).health_check_protocol(ProtocolEnum::Tcp),
            "HealthCheckProtocol",
        ),
        (
            target_group_like(&http).health_check_port("traffic-port"),
            "HealthCheckPort",
        ),
        (
            target_group_like(&http).health_check_path("/"),
            "HealthCheckPath",
        ),
        (
            target_group_like(&http).health_check_interval_seconds(30),
            "HealthCheckIntervalSeconds",
        ),
        (
            target_group_like(&http).health_check_timeout_seconds(10),
            "HealthCheckTimeoutSeconds",
        ),
        (
            target_group_like(&http).healthy_threshold_count(5),
            "HealthyThresholdCount",
        ),
        (
            target_group_like(&http).unhealthy_threshold_count(5),
            "UnhealthyThresholdCount",
        ),
    ];
    for (tg, field) in cases {
        assert_eq!(health_drift(h, &tg.build()), [field]);
    }
}

#[test]
fn targets_change_by_difference_and_are_read_from_target_health() {
    let have: BTreeSet<_> = [("i-1".to_owned(), 30080), ("i-2".to_owned(), 30080)].into();
    let want: BTreeSet<_> = [("i-2".to_owned(), 30080), ("i-3".to_owned(), 30080)].into();
    let (add, remove) = target_changes(&have, &want);
    assert_eq!(add, [&("i-3".to_owned(), 30080)]);
    assert_eq!(remove, [&("i-1".to_owned(), 30080)]);
    let health = [
        TargetHealthDescription::builder()
            .target(TargetDescription::builder().id("i-1").port(30080).build())
            .build(),
        // No port: not a target FerryLB registered.
        TargetHealthDescription::builder()
            .target(TargetDescription::builder().id("i-9").build())
            .build(),
    ];
    assert_eq!(registered(&health), [("i-1".to_owned(), 30080)].into());
}

#[test]
fn a_replacement_leaves_the_old_nlb_and_its_target_groups_to_delete() {
    let lbs = [nlb("web", "arn:new"), nlb("web-old", "arn:old")];
    let tgs = [
        TargetGroup::builder()
            .target_group_name("fl-new-80")
            .target_group_arn("arn:tg-new")
            .build(),
        TargetGroup::builder()
            .target_group_name("fl-old-80")
            .target_group_arn("arn:tg-old")
            .build(),
    ];
    let kept: BTreeMap<String, ()> = [("fl-new-80".to_owned(), ())].into();
    let old = delete::stale_parts(&lbs, &tgs, "web", &kept);
    assert_eq!(old.load_balancers, ["arn:old"]);
    assert_eq!(old.target_groups, ["arn:tg-old"]);
    assert!(old.security_groups.is_empty());
}

#[test]
fn an_invalid_annotation_fails_before_anything_is_built() {
    let e = desired(&with(&[(o::HC_INTERVAL, "often")]), "c").unwrap_err();
    assert_eq!(e.reason, reason::INVALID_ANNOTATION);
    assert!(e.message.contains("often"), "{}", e.message);
}
