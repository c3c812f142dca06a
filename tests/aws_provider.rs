//! The AWS provider against moto, without a cluster: the provider contract,
//! the call budget, and restarts between any two calls of a create.

mod support;

use std::sync::Arc;

use ferrylb_aws::AwsProvider;
use ferrylb_model::{
    HealthCheck, Listener, LoadBalancerProvider, LoadBalancerSpec, Protocol, Target, conformance,
};
use support::aws::{self, CrashAfter, Seed};
use support::env;

fn target(seed: &Seed, i: usize) -> Target {
    Target {
        node: format!("node-{i}"),
        addresses: vec![format!("10.0.{}.{}", i % 2 + 1, 10 + i).parse().unwrap()],
        provider_id: Some(seed.provider_id(i)),
    }
}

/// A Service with TCP ports 80 and 443 on `nodes` of the seed's instances,
/// in a namespace named after the seed's cluster (names and uids of its own).
fn two_port_spec(seed: &Seed, name: &str, nodes: usize) -> LoadBalancerSpec {
    let targets = (0..nodes).map(|i| target(seed, i)).collect();
    let mut spec = conformance::sample_spec(&seed.cluster, name, 30080, targets);
    spec.listeners.push(Listener {
        protocol: Protocol::Tcp,
        port: 443,
        node_port: 30443,
        name: "https".into(),
    });
    spec
}

#[tokio::test]
async fn aws_provider_passes_the_conformance_suite() {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, 3).await;
    let p = aws::provider(&conf, &seed);
    let targets = |range: std::ops::Range<usize>| range.map(|i| target(&seed, i)).collect();
    // Names of their own: target group names are unique per region.
    let a = conformance::sample_spec(&seed.cluster, "a", 30080, targets(0..2));
    let b = conformance::sample_spec(&seed.cluster, "b", 30081, targets(1..3));
    conformance::run(&p, &a, &b).await;
    assert!(
        aws::inventory(&conf, &seed).await.is_empty(),
        "conformance left resources behind"
    );
}

#[tokio::test]
async fn create_node_changes_and_delete_stay_within_the_call_budget() {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, 4).await;
    let p = aws::provider(&conf, &seed);
    let spec = two_port_spec(&seed, "web", 3);
    let ports = spec.listeners.len() as u64;

    // Create: one NLB, a target group and listener per port, 3 targets each.
    let status = p.ensure(&spec).await.expect("create");
    let create = p.calls().snapshot();
    // The subnet lookup is cached after the first create.
    assert!(
        create.total() <= 4 + 3 * ports + ports + 1,
        "create made {} calls: {create:?}",
        create.total()
    );
    assert_eq!(create.count("CreateLoadBalancer"), 1);
    assert_eq!(create.count("RegisterTargets"), ports);
    let inv = aws::inventory(&conf, &seed).await;
    assert_eq!(inv.load_balancers.len(), 1);
    assert_eq!(inv.target_groups.len(), 2);
    assert_eq!(inv.listeners.len(), 2);
    assert_eq!(inv.security_groups.len(), 1);
    let dns = inv.load_balancers[0].dns_name().unwrap();
    assert!(matches!(&status.ingress[0].address, ferrylb_model::Address::Hostname(h) if h == dns));
    for tg in &inv.target_groups {
        let want_port = if tg.target_group_name().unwrap().ends_with("-80") {
            30080
        } else {
            30443
        };
        let mut want: Vec<(String, u16)> = (0..3)
            .map(|i| (seed.instances[i].0.clone(), want_port))
            .collect();
        want.sort();
        assert_eq!(inv.targets_of(tg.target_group_name().unwrap()), want);
    }

    // A node added: one RegisterTargets per target group, nothing else.
    p.calls().reset();
    let grown = two_port_spec(&seed, "web", 4);
    p.update_targets(&grown).await.expect("node add");
    let add = p.calls().snapshot();
    assert_eq!(add.count("RegisterTargets"), ports, "{add:?}");
    assert_eq!(add.total(), ports, "node add made other calls: {add:?}");

    // A node removed: one DeregisterTargets per target group.
    p.calls().reset();
    p.update_targets(&spec).await.expect("node remove");
    let remove = p.calls().snapshot();
    assert_eq!(remove.count("DeregisterTargets"), ports, "{remove:?}");
    assert_eq!(
        remove.total(),
        ports,
        "node remove made other calls: {remove:?}"
    );

    // Nothing changed: a drift check is describes only.
    p.calls().reset();
    p.ensure(&spec).await.expect("resync");
    let resync = p.calls().snapshot();
    assert_eq!(
        resync.describes(),
        resync.total(),
        "a resync mutated: {resync:?}"
    );

    // Delete: at most 3 + P calls, and nothing left.
    p.calls().reset();
    p.ensure_deleted(&spec.lb).await.expect("delete");
    let delete = p.calls().snapshot();
    assert!(
        delete.total() <= 3 + ports,
        "delete made {} calls: {delete:?}",
        delete.total()
    );
    assert!(aws::inventory(&conf, &seed).await.is_empty());
}

#[tokio::test]
async fn changing_one_port_touches_only_its_listener_and_target_group() {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, 2).await;
    let p = aws::provider(&conf, &seed);
    let mut spec = two_port_spec(&seed, "ports", 2);
    p.ensure(&spec).await.unwrap();
    let before = aws::inventory(&conf, &seed).await;
    let listener_443 = |inv: &aws::Inventory| {
        inv.listeners
            .iter()
            .find(|l| l.port() == Some(443))
            .map(|l| {
                (
                    l.listener_arn().unwrap().to_owned(),
                    l.default_actions()[0]
                        .target_group_arn()
                        .unwrap()
                        .to_owned(),
                )
            })
            .unwrap()
    };

    // Port 80 moves to nodePort 30081: a new target group for it, the old one
    // gone, port 443 untouched.
    spec.listeners[0].node_port = 30081;
    p.calls().reset();
    p.ensure(&spec).await.unwrap();
    let calls = p.calls().snapshot();
    let after = aws::inventory(&conf, &seed).await;
    assert_eq!(listener_443(&before), listener_443(&after));
    assert_eq!(calls.count("CreateTargetGroup"), 1, "{calls:?}");
    assert_eq!(calls.count("ModifyListener"), 1, "{calls:?}");
    assert_eq!(calls.count("DeleteTargetGroup"), 1, "{calls:?}");
    assert_eq!(calls.count("RegisterTargets"), 1, "{calls:?}");
    assert_eq!(after.target_groups.len(), 2);
    let l80 = after
        .listeners
        .iter()
        .find(|l| l.port() == Some(80))
        .unwrap();
    let tg80 = after
        .target_groups
        .iter()
        .find(|t| t.target_group_arn() == l80.default_actions()[0].target_group_arn())
        .unwrap();
    assert!(
        after
            .targets_of(tg80.target_group_name().unwrap())
            .iter()
            .all(|(_, port)| *port == 30081)
    );

    p.ensure_deleted(&spec.lb).await.unwrap();
    assert!(aws::inventory(&conf, &seed).await.is_empty());
}

#[tokio::test]
async fn a_restart_between_any_two_calls_of_a_create_converges_without_duplicates() {
    let env = env::shared();
    // How many calls a clean create makes.
    let conf = aws::sdk_config(env).await;
    let seed = aws::seed(&conf, 3).await;
    let p = aws::provider(&conf, &seed);
    p.ensure(&two_port_spec(&seed, "crash", 3)).await.unwrap();
    let calls = p.calls().snapshot().total() as usize;
    assert!(calls >= 8, "a create makes {calls} calls");

    for k in 1..=calls {
        let conf = aws::sdk_config(env).await;
        let seed = aws::seed(&conf, 3).await;
        let spec = two_port_spec(&seed, "crash", 3);
        let crashing = AwsProvider::with_interceptors(
            &conf,
            aws::settings(&seed),
            &[
                aws_smithy_runtime_api::client::interceptors::SharedInterceptor::new(
                    CrashAfter::new(k),
                ),
            ],
        );
        let first = crashing.ensure(&spec).await;
        assert!(
            first.is_err() || k == calls,
            "k={k}: the create should have been cut short"
        );

        // The restarted process converges to exactly one of everything.
        let restarted = aws::provider(&conf, &seed);
        restarted
            .ensure(&spec)
            .await
            .unwrap_or_else(|e| panic!("k={k}: {e}"));
        let inv = aws::inventory(&conf, &seed).await;
        assert_eq!(
            inv.load_balancers.len(),
            1,
            "k={k}: {:?}",
            inv.load_balancers
        );
        assert_eq!(inv.target_groups.len(), 2, "k={k}");
        assert_eq!(inv.listeners.len(), 2, "k={k}");
        assert_eq!(inv.security_groups.len(), 1, "k={k}");
        assert_eq!(inv.targets.len(), 6, "k={k}: {:?}", inv.targets);

        restarted.ensure_deleted(&spec.lb).await.unwrap();
        assert!(
            aws::inventory(&conf, &seed).await.is_empty(),
            "k={k}: delete left resources"
        );
    }
}

#[tokio::test]
async fn a_restart_during_delete_leaves_nothing_behind() {
    let env = env::shared();
    for k in 1..=4 {
        let conf = aws::sdk_config(env).await;
        let seed = aws::seed(&conf, 2).await;
        let spec = two_port_spec(&seed, "del", 2);
        aws::provider(&conf, &seed).ensure(&spec).await.unwrap();
        let crashing = AwsProvider::with_interceptors(
            &conf,
            aws::settings(&seed),
            &[
                aws_smithy_runtime_api::client::interceptors::SharedInterceptor::new(
                    CrashAfter::new(k),
                ),
            ],
        );
        let _ = crashing.ensure_deleted(&spec.lb).await;
        aws::provider(&conf, &seed)
            .ensure_deleted(&spec.lb)
            .await
            .unwrap_or_else(|e| panic!("k={k}: {e}"));
        assert!(aws::inventory(&conf, &seed).await.is_empty(), "k={k}");
    }
}

#[tokio::test]
async fn invalid_annotations_are_permanent_errors_naming_the_value() {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, 1).await;
    let p = aws::provider(&conf, &seed);
    let mut spec = two_port_spec(&seed, "bad", 1);
    spec.annotations.insert(
        "service.beta.kubernetes.io/aws-load-balancer-scheme".into(),
        "public".into(),
    );
    let err = p.ensure(&spec).await.unwrap_err();
    assert_eq!(err.kind, ferrylb_model::ErrorKind::Permanent);
    assert!(
        err.message.contains("aws-load-balancer-scheme"),
        "{}",
        err.message
    );
    assert!(err.message.contains("public"), "{}", err.message);
    assert!(
        err.message.contains("internet-facing, internal"),
        "{}",
        err.message
    );
    assert_eq!(
        p.calls().snapshot().total(),
        0,
        "no AWS call for a bad Service"
    );
    assert!(aws::inventory(&conf, &seed).await.is_empty());
}

#[tokio::test]
async fn scheme_change_replaces_the_nlb_and_deletes_the_old_one_after_publishing() {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, 2).await;
    let p = Arc::new(aws::provider(&conf, &seed));
    let mut spec = two_port_spec(&seed, "scheme", 2);
    let first = p.ensure(&spec).await.unwrap();
    spec.annotations.insert(
        "service.beta.kubernetes.io/aws-load-balancer-scheme".into(),
        "internal".into(),
    );
    let second = p.ensure(&spec).await.unwrap();
    assert_ne!(first.ingress, second.ingress, "the new NLB has a new name");
    assert!(
        second
            .warnings
            .iter()
            .any(|w| w.reason == "ReplacingLoadBalancer")
    );
    // Until the status is published both exist.
    assert_eq!(aws::inventory(&conf, &seed).await.load_balancers.len(), 2);
    p.published(&spec).await.unwrap();
    let inv = aws::inventory(&conf, &seed).await;
    assert_eq!(inv.load_balancers.len(), 1);
    assert_eq!(
        inv.load_balancers[0].scheme().map(|s| s.as_str()),
        Some("internal")
    );
    assert_eq!(inv.target_groups.len(), 2);
    p.ensure_deleted(&spec.lb).await.unwrap();
    assert!(aws::inventory(&conf, &seed).await.is_empty());
}

#[tokio::test]
async fn health_check_follows_external_traffic_policy_and_back() {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, 2).await;
    let p = aws::provider(&conf, &seed);
    let mut spec = two_port_spec(&seed, "etp", 2);
    let hc = |inv: &aws::Inventory| {
        inv.target_groups
            .iter()
            .map(|t| {
                (
                    t.health_check_protocol().unwrap().as_str().to_owned(),
                    t.health_check_port().unwrap().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    p.ensure(&spec).await.unwrap();
    assert!(
        hc(&aws::inventory(&conf, &seed).await)
            .iter()
            .all(|h| *h == ("TCP".into(), "traffic-port".into()))
    );

    spec.health_check = HealthCheck::Http {
        port: 32100,
        path: "/healthz".into(),
    };
    p.ensure(&spec).await.unwrap();
    let inv = aws::inventory(&conf, &seed).await;
    assert!(
        hc(&inv)
            .iter()
            .all(|h| *h == ("HTTP".into(), "32100".into())),
        "{:?}",
        hc(&inv)
    );
    assert!(
        inv.target_groups
            .iter()
            .all(|t| t.health_check_path() == Some("/healthz"))
    );

    spec.health_check = HealthCheck::TrafficPort;
    p.ensure(&spec).await.unwrap();
    assert!(
        hc(&aws::inventory(&conf, &seed).await)
            .iter()
            .all(|h| *h == ("TCP".into(), "traffic-port".into()))
    );
    p.ensure_deleted(&spec.lb).await.unwrap();
}

#[tokio::test]
async fn source_ranges_become_security_group_rules_and_follow_changes() {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, 1).await;
    let p = aws::provider(&conf, &seed);
    let mut spec = two_port_spec(&seed, "ranges", 1);
    let rules = |inv: &aws::Inventory| {
        let mut r: Vec<(i32, String)> = inv.security_groups[0]
            .ip_permissions()
            .iter()
            .flat_map(|p| {
                p.ip_ranges()
                    .iter()
                    .map(move |c| (p.from_port().unwrap(), c.cidr_ip().unwrap().to_owned()))
            })
            .collect();
        r.sort();
        r
    };
    p.ensure(&spec).await.unwrap();
    assert_eq!(
        rules(&aws::inventory(&conf, &seed).await),
        vec![(80, "0.0.0.0/0".into()), (443, "0.0.0.0/0".into())]
    );
    spec.source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
    p.ensure(&spec).await.unwrap();
    assert_eq!(
        rules(&aws::inventory(&conf, &seed).await),
        vec![(80, "192.0.2.0/24".into()), (443, "192.0.2.0/24".into())]
    );
    // An internal load balancer without source ranges admits its VPC's
    // CIDR blocks, as the AWS Load Balancer Controller does, not the world.
    spec.source_ranges.clear();
    spec.annotations.insert(
        "service.beta.kubernetes.io/aws-load-balancer-type".into(),
        "external".into(),
    );
    p.ensure(&spec).await.unwrap();
    p.published(&spec).await.unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let vpc_cidr = ec2
        .describe_vpcs()
        .vpc_ids(&seed.vpc)
        .send()
        .await
        .unwrap()
        .vpcs()[0]
        .cidr_block()
        .unwrap()
        .to_owned();
    let inv = aws::inventory(&conf, &seed).await;
    assert_eq!(
        inv.load_balancers[0].scheme().map(|s| s.as_str()),
        Some("internal")
    );
    assert_eq!(
        rules(&inv),
        vec![(80, vpc_cidr.clone()), (443, vpc_cidr)],
        "internal: the VPC only"
    );
    p.ensure_deleted(&spec.lb).await.unwrap();
    assert!(aws::inventory(&conf, &seed).await.is_empty());
}

#[tokio::test]
async fn throttling_and_lost_answers_in_front_of_moto_converge_without_duplicates() {
    use support::faults::{FaultProxy, Pattern};
    let env = env::shared();
    let direct = aws::sdk_config(env).await;
    let seed = aws::seed(&direct, 3).await;
    let proxy = FaultProxy::start(
        &env.aws_endpoint(),
        Pattern {
            throttle_percent: 25,
            lose_percent: 15,
        },
    )
    .await;
    let conf = aws::sdk_config_at(&proxy.endpoint, &aws::fresh_account_id()).await;
    let p = aws::provider(&conf, &seed);
    let spec = two_port_spec(&seed, "faults", 3);

    // Reconcile as the controller would: again after every failure.
    let mut failures = 0;
    while let Err(e) = p.ensure(&spec).await {
        failures += 1;
        assert!(failures < 30, "no convergence: {e}");
    }
    // And once more, as a resync would, to check nothing drifts.
    while p.ensure(&spec).await.is_err() {
        failures += 1;
        assert!(failures < 30);
    }
    assert!(
        proxy.injected() > 5,
        "only {} faults injected",
        proxy.injected()
    );
    let inv = aws::inventory(&direct, &seed).await;
    assert_eq!(inv.load_balancers.len(), 1, "{:?}", inv.load_balancers);
    assert_eq!(inv.target_groups.len(), 2);
    assert_eq!(inv.listeners.len(), 2, "{:?}", inv.listeners);
    assert_eq!(inv.security_groups.len(), 1);
    assert_eq!(inv.targets.len(), 6);

    while p.ensure_deleted(&spec.lb).await.is_err() {
        failures += 1;
        assert!(failures < 60);
    }
    assert!(aws::inventory(&direct, &seed).await.is_empty());
}

#[tokio::test]
async fn a_target_group_deleted_behind_its_back_is_rebuilt_on_the_next_node_change() {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, 3).await;
    let p = aws::provider(&conf, &seed);
    let spec = two_port_spec(&seed, "drift", 2);
    p.ensure(&spec).await.unwrap();

    // Someone removes port 80's listener and target group by hand.
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&conf);
    let inv = aws::inventory(&conf, &seed).await;
    let l80 = inv.listeners.iter().find(|l| l.port() == Some(80)).unwrap();
    let tg80 = l80.default_actions()[0]
        .target_group_arn()
        .unwrap()
        .to_owned();
    elb.delete_listener()
        .listener_arn(l80.listener_arn().unwrap())
        .send()
        .await
        .unwrap();
    elb.delete_target_group()
        .target_group_arn(&tg80)
        .send()
        .await
        .unwrap();

    // A node joins: the cheap path finds the target group gone and falls
    // back to a full converge, which rebuilds it.
    p.update_targets(&two_port_spec(&seed, "drift", 3))
        .await
        .unwrap();
    let inv = aws::inventory(&conf, &seed).await;
    assert_eq!(inv.listeners.len(), 2);
    assert_eq!(inv.target_groups.len(), 2);
    assert_eq!(inv.targets.len(), 6, "{:?}", inv.targets);
    p.ensure_deleted(&spec.lb).await.unwrap();
    assert!(aws::inventory(&conf, &seed).await.is_empty());
}

/// A drift check describes what the last converge made, without the tag
/// lookup; an NLB and a security group deleted by hand are rebuilt by that
/// same drift check, without an error.
#[tokio::test]
async fn a_drift_check_needs_no_tag_lookup_and_rebuilds_what_was_deleted_by_hand() {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, 2).await;
    let p = aws::provider(&conf, &seed);
    let spec = two_port_spec(&seed, "gone", 2);
    p.ensure(&spec).await.unwrap();
    p.calls().reset();
    p.ensure(&spec).await.expect("drift check");
    let check = p.calls().snapshot();
    assert_eq!(check.count("GetResources"), 0, "{check:?}");
    assert_eq!(check.describes(), check.total(), "{check:?}");

    // Someone deletes the NLB, then its security group, by hand.
    let inv = aws::inventory(&conf, &seed).await;
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&conf);
    elb.delete_load_balancer()
        .load_balancer_arn(inv.load_balancers[0].load_balancer_arn().unwrap())
        .send()
        .await
        .unwrap();
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    ec2.delete_security_group()
        .group_id(inv.security_groups[0].group_id().unwrap())
        .send()
        .await
        .unwrap();
    let status = p.ensure(&spec).await.expect("the drift check rebuilds");
    let inv = aws::inventory(&conf, &seed).await;
    assert_eq!(inv.load_balancers.len(), 1);
    assert_eq!(inv.security_groups.len(), 1);
    assert_eq!(inv.listeners.len(), 2);
    assert_eq!(inv.targets.len(), 4, "{:?}", inv.targets);
    assert_eq!(
        status.ingress[0].address,
        ferrylb_model::Address::Hostname(inv.load_balancers[0].dns_name().unwrap().to_owned())
    );
    p.ensure_deleted(&spec.lb).await.unwrap();
    assert!(aws::inventory(&conf, &seed).await.is_empty());
}

/// The deregistration delay (and the other `target-group-attributes`) is
/// set on every target group in one call at creation, repaired by the drift
/// check when changed by hand, and costs nothing when already right.
#[tokio::test]
async fn target_group_attributes_are_set_once_and_kept() {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, 2).await;
    let p = aws::provider(&conf, &seed);
    let mut spec = two_port_spec(&seed, "attrs", 2);
    spec.annotations.insert(
        "service.beta.kubernetes.io/aws-load-balancer-target-group-attributes".into(),
        "deregistration_delay.timeout_seconds=30,deregistration_delay.connection_termination.enabled=true".into(),
    );
    p.ensure(&spec).await.unwrap();
    assert_eq!(
        p.calls().snapshot().count("ModifyTargetGroupAttributes"),
        2,
        "one call per target group"
    );
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&conf);
    let attribute = |arn: String, key: &'static str| {
        let elb = elb.clone();
        async move {
            elb.describe_target_group_attributes()
                .target_group_arn(arn)
                .send()
                .await
                .unwrap()
                .attributes()
                .iter()
                .find(|a| a.key() == Some(key))
                .and_then(|a| a.value().map(str::to_owned))
        }
    };
    let arns: Vec<String> = aws::inventory(&conf, &seed)
        .await
        .target_groups
        .iter()
        .map(|t| t.target_group_arn().unwrap().to_owned())
        .collect();
    for arn in &arns {
        assert_eq!(
            attribute(arn.clone(), "deregistration_delay.timeout_seconds")
                .await
                .as_deref(),
            Some("30")
        );
    }
    p.calls().reset();
    p.ensure(&spec).await.unwrap();
    assert_eq!(p.calls().snapshot().count("ModifyTargetGroupAttributes"), 0);

    // Changed by hand: the drift check puts it back.
    elb.modify_target_group_attributes()
        .target_group_arn(&arns[0])
        .attributes(
            aws_sdk_elasticloadbalancingv2::types::TargetGroupAttribute::builder()
                .key("deregistration_delay.timeout_seconds")
                .value("300")
                .build(),
        )
        .send()
        .await
        .unwrap();
    p.calls().reset();
    p.ensure(&spec).await.unwrap();
    assert_eq!(p.calls().snapshot().count("ModifyTargetGroupAttributes"), 1);
    assert_eq!(
        attribute(arns[0].clone(), "deregistration_delay.timeout_seconds")
            .await
            .as_deref(),
        Some("30")
    );
    p.ensure_deleted(&spec.lb).await.unwrap();
    assert!(aws::inventory(&conf, &seed).await.is_empty());
}

/// Readiness comes from the calls the provider makes anyway: the first
/// check with no call behind it asks AWS once; after that, checks cost
/// nothing while calls are answered, and an unreachable endpoint fails them
/// from the outcome of the call that found it.
#[tokio::test]
async fn readiness_comes_from_the_calls_made_anyway() {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, 2).await;
    let p = aws::provider(&conf, &seed);
    p.check().await.expect("moto answers");
    assert_eq!(p.calls().snapshot().count("DescribeAccountLimits"), 1);
    p.ensure(&two_port_spec(&seed, "ready", 2))
        .await
        .expect("create");
    for _ in 0..5 {
        p.check().await.expect("ready after answered calls");
    }
    assert_eq!(
        p.calls().snapshot().count("DescribeAccountLimits"),
        1,
        "no probe while calls are answered"
    );

    // Nothing listens here: the call fails unanswered, and readiness says so
    // without another call.
    let dead = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(conf.region().cloned())
        .credentials_provider(conf.credentials_provider().unwrap())
        .endpoint_url("http://127.0.0.1:9")
        .build();
    let q = aws::provider(&dead, &seed);
    let lb = two_port_spec(&seed, "unreachable", 2).lb;
    assert!(q.ensure_deleted(&lb).await.is_err());
    let before = q.calls().snapshot().total();
    let err = q.check().await.expect_err("unreachable");
    assert_eq!(err.reason, "AwsUnavailable", "{err:?}");
    assert_eq!(q.calls().snapshot().total(), before, "no probe: {err:?}");
}

/// `aws-load-balancer-ssl-cert` takes a comma-separated list, as the AWS
/// Load Balancer Controller documents: the first is the TLS listener's
/// default certificate, the others are added to it, and a change of the list
/// adds and removes only the difference.
#[tokio::test]
async fn several_certificates_go_on_the_tls_listener_the_first_as_its_default() {
    let account = aws::fresh_account_id();
    let conf = aws::sdk_config_for_account(env::shared(), &account).await;
    let seed = aws::seed(&conf, 1).await;
    let p = aws::provider(&conf, &seed);
    let mut spec = two_port_spec(&seed, "certs", 1);
    let certs: Vec<String> = (0..5)
        .map(|n| {
            aws::request_certificate(
                &env::shared().aws_endpoint(),
                &account,
                &format!("c{n}.example.com"),
            )
        })
        .collect();
    let arn = |n: usize| certs[n].clone();
    let annotate = |spec: &mut LoadBalancerSpec, certs: &[String]| {
        spec.annotations.insert(
            "service.beta.kubernetes.io/aws-load-balancer-ssl-cert".into(),
            certs.join(","),
        );
        spec.annotations.insert(
            "service.beta.kubernetes.io/aws-load-balancer-ssl-ports".into(),
            "443".into(),
        );
    };
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&conf);
    let certificates = || async {
        let lb = aws::inventory(&conf, &seed).await.load_balancers[0]
            .load_balancer_arn()
            .unwrap()
            .to_owned();
        let listeners = elb
            .describe_listeners()
            .load_balancer_arn(lb)
            .send()
            .await
            .unwrap();
        let tls = listeners
            .listeners()
            .iter()
            .find(|l| l.port() == Some(443))
            .unwrap()
            .clone();
        let all = elb
            .describe_listener_certificates()
            .listener_arn(tls.listener_arn().unwrap())
            .send()
            .await
            .unwrap();
        let mut extra: Vec<String> = all
            .certificates()
            .iter()
            .filter(|c| c.is_default() != Some(true))
            .filter_map(|c| c.certificate_arn().map(str::to_owned))
            .collect();
        extra.sort();
        let default = tls.certificates()[0].certificate_arn().unwrap().to_owned();
        (default, extra)
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    annotate(&mut spec, &[arn(1), arn(2), arn(3)]);
    p.ensure(&spec).await.unwrap();
    assert_eq!(certificates().await, (arn(1), sorted(vec![arn(2), arn(3)])));
    annotate(&mut spec, &[arn(1), arn(3), arn(4)]);
    p.ensure(&spec).await.unwrap();
    assert_eq!(certificates().await, (arn(1), sorted(vec![arn(3), arn(4)])));
    p.ensure_deleted(&spec.lb).await.unwrap();
    assert!(aws::inventory(&conf, &seed).await.is_empty());
}

/// No credentials at all: a reason of its own that says what to configure,
/// and the provider is not ready.
#[tokio::test]
async fn no_credentials_say_what_to_configure() {
    use aws_credential_types::provider::{ProvideCredentials, error::CredentialsError, future};
    #[derive(Debug)]
    struct Nothing;
    impl ProvideCredentials for Nothing {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            )))
        }
    }
    let base = aws::sdk_config(env::shared()).await;
    let conf = base
        .into_builder()
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(Nothing),
        )
        .build();
    let seed_conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&seed_conf, 1).await;
    let p = aws::provider(&conf, &seed);
    let e = p
        .ensure(&two_port_spec(&seed, "nocreds", 1))
        .await
        .unwrap_err();
    assert_eq!(e.reason, "AwsCredentialsMissing", "{e}");
    assert!(
        e.message.contains("IRSA") && e.message.contains("AWS_ACCESS_KEY_ID"),
        "{e}"
    );
    assert!(p.check().await.is_err());
}

/// An endpoint that takes connections and never answers: the call fails
/// within about 10 s, naming the call, and the provider is not ready.
#[tokio::test]
async fn a_hung_endpoint_is_named_within_ten_seconds() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let _hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let seed_conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&seed_conf, 1).await;
    let conf = aws::sdk_config_at(&endpoint, &aws::fresh_account_id()).await;
    let p = aws::provider(&conf, &seed);
    let started = std::time::Instant::now();
    let e = p
        .ensure(&two_port_spec(&seed, "hung", 1))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.reason, "AwsUnavailable", "{e}");
    assert!(
        e.message.starts_with("ec2:")
            || e.message.starts_with("elasticloadbalancing:")
            || e.message.starts_with("tag:"),
        "names the call: {e}"
    );
    assert!(
        took < std::time::Duration::from_secs(15),
        "took {took:?}: {e}"
    );
    let started = std::time::Instant::now();
    assert!(p.check().await.is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}

/// The network rebuilt with new ids while the subnets were cached: the
/// next Service's NotFound drops the cache and the lookup is done again at
/// once, in the same attempt.
#[tokio::test]
async fn subnets_gone_from_the_cache_are_looked_up_again_at_once() {
    let conf = aws::sdk_config(env::shared()).await;
    let old = aws::seed(&conf, 1).await;
    let mut settings = aws::settings(&old);
    settings.vpc_id = None;
    let p = ferrylb_aws::AwsProvider::new(&conf, settings);
    let a = two_port_spec(&old, "before", 1);
    p.ensure(&a).await.unwrap();
    p.ensure_deleted(&a.lb).await.unwrap();
    // Rebuilt: the old subnets and VPC deleted, new ones for the cluster.
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let ids: Vec<String> = old.instances.iter().map(|(id, _)| id.clone()).collect();
    ec2.terminate_instances()
        .set_instance_ids(Some(ids))
        .send()
        .await
        .unwrap();
    for s in &old.subnets {
        ec2.delete_subnet().subnet_id(s).send().await.unwrap();
    }
    let new = aws::seed_cluster(&conf, &old.cluster, 1).await;
    let b = two_port_spec(&new, "after", 1);
    let status = p.ensure(&b).await.unwrap();
    assert!(!status.ingress.is_empty());
    let inv = aws::inventory(&conf, &new).await;
    assert_eq!(inv.load_balancers.len(), 1);
    assert_eq!(inv.load_balancers[0].vpc_id(), Some(new.vpc.as_str()));
    p.ensure_deleted(&b.lb).await.unwrap();
}

/// An NLB that holds fewer targets than the cluster has nodes (here 4 per
/// zone, so 2 per zone for each of two ports): each zone registers a stable
/// subset, the Service says so, and a node added or removed changes at
/// most one registration per target group.
#[tokio::test]
async fn past_the_target_quota_a_stable_subset_per_zone_is_registered() {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, 11).await;
    let mut settings = aws::settings(&seed);
    settings.targets_per_zone = 4;
    let p = ferrylb_aws::AwsProvider::new(&conf, settings);
    let mut spec = two_port_spec(&seed, "subset", 10);
    let status = p.ensure(&spec).await.unwrap();
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.reason == "TargetSubset"
                && w.message.starts_with("4 of 10 nodes are targets")),
        "{:?}",
        status.warnings
    );
    let before = aws::inventory(&conf, &seed).await.registered_ids();
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|t| t.len() == 4), "{before:?}");
    assert_eq!(before[0], before[1], "both ports register the same nodes");
    // One node more: at most one registration moves in each group.
    spec.targets = (0..11).map(|i| target(&seed, i)).collect();
    p.update_targets(&spec).await.unwrap();
    let after = aws::inventory(&conf, &seed).await.registered_ids();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.len(), 4);
        assert!(b.difference(a).count() <= 1, "{b:?} -> {a:?}");
    }
    p.ensure_deleted(&spec.lb).await.unwrap();
    assert!(aws::inventory(&conf, &seed).await.is_empty());
}

/// About 1,000 nodes and two ports against an NLB's quota of 500 targets per
/// zone (enforced in front of moto as AWS enforces it): the Service is
/// served with no TooManyTargets, 250 nodes per zone, the same for both
/// ports; a node added moves at most one registration.
#[tokio::test]
async fn a_thousand_nodes_and_two_ports_are_served_within_the_target_quota() {
    use aws_smithy_runtime_api::client::interceptors::SharedInterceptor;
    // A moto of its own: creating a thousand instances races the tagging
    // API that the other tests call on the shared one.
    let private = env::TestEnv::start_private(&["aws"]);
    let conf = aws::sdk_config(&private).await;
    let seed = aws::seed(&conf, 0).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let mut nodes = Vec::new();
    let mut zone_of = std::collections::HashMap::new();
    for (cidr, zone) in [
        ("10.0.8.0/22", "us-east-1a"),
        ("10.0.12.0/22", "us-east-1b"),
    ] {
        // Room for 500 instances (the seed's subnets are /24s).
        let subnet = ec2
            .create_subnet()
            .vpc_id(&seed.vpc)
            .cidr_block(cidr)
            .availability_zone(zone)
            .send()
            .await
            .expect("CreateSubnet");
        let run = ec2
            .run_instances()
            .image_id("ami-12345678")
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .subnet_id(subnet.subnet().and_then(|s| s.subnet_id()).unwrap())
            .min_count(500)
            .max_count(500)
            .send()
            .await
            .expect("RunInstances");
        for i in run.instances() {
            let id = i.instance_id().unwrap().to_owned();
            zone_of.insert(id.clone(), zone.to_owned());
            nodes.push(Target {
                node: format!("node-{id}"),
                addresses: vec![
                    i.private_ip_address()
                        .unwrap_or("10.0.1.1")
                        .parse()
                        .unwrap(),
                ],
                provider_id: Some(format!("aws:///{zone}/{id}")),
            });
        }
    }
    assert_eq!(nodes.len(), 1000);
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let added = nodes.pop().unwrap();
    assert_eq!(nodes.len(), 999);
    // The quota bites: a provider told the NLB holds more is refused.
    let strict = std::sync::Arc::new(aws::TargetQuota::new(500, zone_of.clone()));
    let mut unaware = aws::settings(&seed);
    unaware.targets_per_zone = 100_000;
    let unaware = AwsProvider::with_interceptors(
        &conf,
        unaware,
        &[SharedInterceptor::new(Quota(strict.clone()))],
    );
    let mut over = two_port_spec(&seed, "over", 0);
    over.targets = nodes.clone().into();
    assert!(unaware.ensure(&over).await.is_err());
    assert!(strict.refused.load(std::sync::atomic::Ordering::SeqCst) > 0);
    unaware.ensure_deleted(&over.lb).await.unwrap();

    let quota = std::sync::Arc::new(aws::TargetQuota::new(500, zone_of));
    let p = AwsProvider::with_interceptors(
        &conf,
        aws::settings(&seed),
        &[SharedInterceptor::new(Quota(quota.clone()))],
    );
    let mut spec = two_port_spec(&seed, "thousand", 0);
    spec.targets = nodes.clone().into();
    let status = p.ensure(&spec).await.unwrap();
    assert!(
        status.warnings.iter().any(|w| w.reason == "TargetSubset"),
        "{:?}",
        status.warnings
    );
    assert_eq!(quota.refused.load(std::sync::atomic::Ordering::SeqCst), 0);
    let before = aws::inventory(&conf, &seed).await.registered_ids();
    assert_eq!(before.len(), 2);
    assert_eq!(before[0].len(), 500);
    assert_eq!(before[0], before[1]);
    nodes.push(added);
    spec.targets = nodes.into();
    p.update_targets(&spec).await.unwrap();
    let after = aws::inventory(&conf, &seed).await.registered_ids();
    let moved = before[0].difference(&after[0]).count();
    eprintln!("aws: 999 -> 1,000 nodes, two ports: {moved} target(s) moved per target group");
    assert!(moved <= 1);
    assert_eq!(quota.refused.load(std::sync::atomic::Ordering::SeqCst), 0);
    p.ensure_deleted(&spec.lb).await.unwrap();
}

/// The shared quota as an interceptor.
#[derive(Debug)]
struct Quota(std::sync::Arc<aws::TargetQuota>);

impl aws_smithy_runtime_api::client::interceptors::Intercept for Quota {
    fn name(&self) -> &'static str {
        "Quota"
    }

    fn read_before_transmit(
        &self,
        ctx: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        rc: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        self.0.read_before_transmit(ctx, rc, cfg)
    }
}
