//! The AWS provider behind the controller, against the real API server and
//! moto: Services in, NLBs out, DNS names in the status; Node changes as
//! target registrations; deletion leaves nothing; `ferrylb gc`.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrylb_aws::AwsProvider;
use ferrylb_model::LoadBalancerProvider;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use support::aws::{self, Seed};
use support::harness::{Harness, WAIT, condition, ingress_hostname};
use support::{env, kube as k, wait};

async fn world(
    prefix: &str,
    instances: usize,
) -> (aws_config::SdkConfig, Seed, Harness<AwsProvider>) {
    let conf = aws::sdk_config(env::shared()).await;
    let seed = aws::seed(&conf, instances).await;
    let h = Harness::new(prefix, |_| aws::provider(&conf, &seed)).await;
    (conf, seed, h)
}

/// Deletes `services`, waits until the seed's VPC holds nothing, then stops
/// the controller and removes the test's Nodes.
async fn delete_and_stop(
    h: &Harness<AwsProvider>,
    ctl: support::controller::RunningController,
    conf: &aws_config::SdkConfig,
    seed: &Seed,
    services: &[&str],
) {
    for name in services {
        h.services()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    wait::until("every load balancer deleted", WAIT, || async {
        aws::inventory(conf, seed).await.is_empty().then_some(())
    })
    .await;
    ctl.stop().await;
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn two_ports_on_three_nodes_become_one_nlb_whose_name_is_in_the_status() {
    let (conf, seed, mut h) = world("aws-e2e", 4).await;
    for i in 0..3 {
        h.cloud_node(
            &format!("n{i}"),
            &format!("127.0.3.{}", i + 1),
            &seed.provider_id(i),
        )
        .await;
    }
    let ctl = h.start(false);
    let svc = h.service("web", &[80, 443], Some(&h.class.clone())).await;
    let node_ports: Vec<u16> = svc
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.node_port.unwrap() as u16)
        .collect();

    let svc = h
        .wait_service("a hostname in the status", "web", |s| {
            ingress_hostname(s).is_some()
        })
        .await;
    let inv = aws::inventory(&conf, &seed).await;
    assert_eq!(inv.load_balancers.len(), 1);
    assert_eq!(
        ingress_hostname(&svc).as_deref(),
        inv.load_balancers[0].dns_name()
    );
    assert_eq!(inv.listeners.len(), 2);
    assert_eq!(inv.target_groups.len(), 2);
    for (port, node_port) in [80, 443].into_iter().zip(&node_ports) {
        let l = inv
            .listeners
            .iter()
            .find(|l| l.port() == Some(port))
            .expect("a listener per port");
        let tg = inv
            .target_groups
            .iter()
            .find(|t| t.target_group_arn() == l.default_actions()[0].target_group_arn())
            .unwrap();
        let mut want: Vec<(String, u16)> = (0..3)
            .map(|i| (seed.instances[i].0.clone(), *node_port))
            .collect();
        want.sort();
        assert_eq!(
            inv.targets_of(tg.target_group_name().unwrap()),
            want,
            "port {port}"
        );
    }
    let (ready, _, _) = condition(&svc).unwrap();
    assert_eq!(ready, "True");

    // A fourth node: exactly one RegisterTargets per target group.
    let before = h.provider.calls().snapshot().count("RegisterTargets");
    let describes_before = h.provider.calls().snapshot().describes();
    h.cloud_node("n3", "127.0.3.4", &seed.provider_id(3)).await;
    wait::until("the fourth instance registered", WAIT, || async {
        (aws::inventory(&conf, &seed).await.targets.len() == 8).then_some(())
    })
    .await;
    assert_eq!(
        h.provider.calls().snapshot().count("RegisterTargets") - before,
        2
    );
    let describes_after = h.provider.calls().snapshot().describes();
    assert_eq!(
        describes_after, describes_before,
        "a node add needs no describe"
    );

    // The cluster autoscaler's first signal, a taint, deregisters the node
    // at once (the NLB drains it for the target group's deregistration
    // delay), while its Node still exists: one DeregisterTargets per
    // target group, no describe.
    let before = h.provider.calls().snapshot();
    let n3 = format!("{}-n3", h.ns);
    Api::<Node>::all(h.client.clone())
        .patch(
            &n3,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"taints": [
                {"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}
            ]}})),
        )
        .await
        .unwrap();
    wait::until("the tainted instance deregistered", WAIT, || async {
        (aws::inventory(&conf, &seed).await.targets.len() == 6).then_some(())
    })
    .await;
    let after = h.provider.calls().snapshot();
    assert_eq!(
        after.count("DeregisterTargets") - before.count("DeregisterTargets"),
        2
    );
    assert_eq!(
        after.total() - before.total(),
        2,
        "only the deregistrations"
    );
    assert!(
        Api::<Node>::all(h.client.clone())
            .get_opt(&n3)
            .await
            .unwrap()
            .is_some()
    );

    // A node that cannot be a target (no providerID): the Service hears of
    // it, though only its targets changed.
    let bare = h.node("bare", "127.0.3.9").await;
    let events = wait::until("a Warning naming the bare node", WAIT, || async {
        let evs = k::events(&h.client, &h.ns, "web").await;
        evs.iter()
            .any(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("NodesNotRegistered")
                    && e.note.as_deref().is_some_and(|n| n.contains(&bare))
            })
            .then_some(evs)
    })
    .await;
    assert!(!events.is_empty());
    // The condition says it too: ready, with the warning.
    let svc = h
        .wait_service("the warning in the condition", "web", |s| {
            condition(s).is_some_and(|(_, _, m)| m.contains(&bare))
        })
        .await;
    let (ready, _, message) = condition(&svc).unwrap();
    assert_eq!(ready, "True", "{message}");
    assert!(message.contains("NodesNotRegistered"), "{message}");

    // Deleting the Service leaves nothing tagged for the cluster.
    h.services()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    wait::until("the Service gone", WAIT, || async {
        h.services()
            .get_opt("web")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(aws::inventory(&conf, &seed).await.is_empty());
    assert!(
        h.provider.tagged().await.unwrap().is_empty(),
        "resources still tagged for the cluster"
    );
    ctl.stop().await;
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn an_invalid_annotation_is_an_event_and_other_services_still_converge() {
    let (conf, seed, mut h) = world("aws-bad", 2).await;
    h.cloud_node("n0", "127.0.3.11", &seed.provider_id(0)).await;
    let ctl = h.start(false);
    let class = h.class.clone();
    let mut bad = k::lb_service("bad", &[80]);
    bad.spec.as_mut().unwrap().load_balancer_class = Some(class.clone());
    bad.metadata.annotations = Some(
        [(
            "service.beta.kubernetes.io/aws-load-balancer-healthcheck-interval".to_owned(),
            "often".to_owned(),
        )]
        .into(),
    );
    h.services()
        .create(&Default::default(), &bad)
        .await
        .unwrap();
    h.service("good", &[80], Some(&class)).await;

    h.wait_service("good ready", "good", |s| ingress_hostname(s).is_some())
        .await;
    let bad = h
        .wait_service("bad's condition", "bad", |s| {
            condition(s).is_some_and(|(st, _, _)| st == "False")
        })
        .await;
    let (_, _, message) = condition(&bad).unwrap();
    assert!(
        message.contains("healthcheck-interval")
            && message.contains("often")
            && message.contains("5 to 300"),
        "{message}"
    );
    let events = k::events(&h.client, &h.ns, "bad").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("SyncLoadBalancerFailed")
                && e.note.as_deref().is_some_and(|n| n.contains("often"))),
        "{events:?}"
    );
    assert_eq!(
        aws::inventory(&conf, &seed).await.load_balancers.len(),
        1,
        "only good's NLB"
    );

    // Fixing the annotation heals it.
    h.services()
        .patch(
            "bad",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                "service.beta.kubernetes.io/aws-load-balancer-healthcheck-interval": "10"}}})),
        )
        .await
        .unwrap();
    h.wait_service("bad healed", "bad", |s| ingress_hostname(s).is_some())
        .await;
    let inv = aws::inventory(&conf, &seed).await;
    assert_eq!(inv.load_balancers.len(), 2);
    delete_and_stop(&h, ctl, &conf, &seed, &["bad", "good"]).await;
}

#[tokio::test]
async fn gc_removes_a_planted_orphan_and_nothing_else() {
    let (conf, seed, mut h) = world("aws-gc", 2).await;
    h.cloud_node("n0", "127.0.3.21", &seed.provider_id(0)).await;
    let ctl = h.start(false);
    h.service("live", &[80], Some(&h.class.clone())).await;
    h.wait_service("live ready", "live", |s| ingress_hostname(s).is_some())
        .await;

    // An orphan: resources of a Service that no longer exists.
    let mut orphan = ferrylb_model::conformance::sample_spec(&h.ns, "gone", 30999, vec![]);
    orphan.lb.key.uid = format!("deleted-{}", h.ns);
    h.provider.ensure(&orphan).await.unwrap();
    assert_eq!(aws::inventory(&conf, &seed).await.load_balancers.len(), 2);

    let dry = ferrylb::gc::collect(&h.client, &h.provider, false)
        .await
        .unwrap();
    let uids: BTreeSet<&str> = dry.orphans.iter().map(|o| o.uid.as_str()).collect();
    assert_eq!(uids, [orphan.lb.key.uid.as_str()].into());
    let text = ferrylb::gc::render(&dry, false);
    assert!(text.contains("dry run"), "{text}");
    assert_eq!(
        aws::inventory(&conf, &seed).await.load_balancers.len(),
        2,
        "a dry run deletes nothing"
    );

    let done = ferrylb::gc::collect(&h.client, &h.provider, true)
        .await
        .unwrap();
    assert!(done.failed.is_empty(), "{:?}", done.failed);
    let inv = aws::inventory(&conf, &seed).await;
    assert_eq!(inv.load_balancers.len(), 1);
    assert_eq!(inv.target_groups.len(), 1);
    assert_eq!(inv.security_groups.len(), 1);
    let live = h.services().get("live").await.unwrap();
    assert_eq!(
        ingress_hostname(&live).as_deref(),
        inv.load_balancers[0].dns_name()
    );

    delete_and_stop(&h, ctl, &conf, &seed, &["live"]).await;
}

#[tokio::test]
async fn the_localstack_seed_script_prints_provider_ids_of_real_instances() {
    let env = env::shared();
    let out = std::process::Command::new(env::repo_root().join("localstack/seed"))
        .args([
            "--endpoint",
            &env.aws_endpoint(),
            "--cluster",
            "seedtest",
            "--nodes",
            "2",
        ])
        .output()
        .expect("running localstack/seed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("node "))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(ids.len(), 2, "{text}");
    let conf = aws::sdk_config(env).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    for pid in ids {
        let id = ferrylb_aws::desired::instance_id(pid).unwrap_or_else(|| panic!("{pid}"));
        let found = ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
        assert_eq!(found.reservations().len(), 1, "{id} is not an instance");
    }
}

#[tokio::test]
async fn an_invalid_annotation_costs_no_aws_call() {
    let (conf, seed, mut h) = world("aws-zero", 1).await;
    h.cloud_node("n0", "127.0.3.21", &seed.provider_id(0)).await;
    let ctl = h.start(false);
    let mut bad = k::lb_service("bad", &[80]);
    bad.spec.as_mut().unwrap().load_balancer_class = Some(h.class.clone());
    bad.metadata.annotations = Some(
        [(
            "service.beta.kubernetes.io/aws-load-balancer-scheme".to_owned(),
            "public".to_owned(),
        )]
        .into(),
    );
    h.services()
        .create(&Default::default(), &bad)
        .await
        .unwrap();
    let bad = h
        .wait_service("bad's condition", "bad", |s| {
            condition(s).is_some_and(|(st, _, _)| st == "False")
        })
        .await;
    let (_, reason, message) = condition(&bad).unwrap();
    assert_eq!(reason, "InvalidAnnotation");
    assert!(
        message.contains("aws-load-balancer-scheme") && message.contains("public"),
        "{message}"
    );
    let events = k::events(&h.client, &h.ns, "bad").await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("SyncLoadBalancerFailed")),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.reason.as_deref() == Some("EnsuringLoadBalancer")),
        "nothing is announced for an invalid Service: {events:?}"
    );
    assert_eq!(
        h.provider.calls().snapshot().total(),
        0,
        "{:?}",
        h.provider.calls().snapshot()
    );
    // Once valid, it is built (and the counter counts).
    h.services()
        .patch(
            "bad",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}}})),
        )
        .await
        .unwrap();
    h.wait_service("bad healed", "bad", |s| ingress_hostname(s).is_some())
        .await;
    assert!(h.provider.calls().snapshot().total() > 0);
    delete_and_stop(&h, ctl, &conf, &seed, &["bad"]).await;
}

/// A TCP server that accepts connections and never answers: an AWS
/// endpoint behind a black hole.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn an_endpoint_that_never_answers_fails_the_reconcile_within_the_limit_and_others_converge() {
    let (conf, seed, mut h) = world("aws-hole", 2).await;
    h.cloud_node("n0", "127.0.3.31", &seed.provider_id(0)).await;
    let (endpoint, hole) = black_hole().await;
    let stuck_conf = aws::sdk_config_at(&endpoint, &aws::fresh_account_id()).await;
    let stuck: Arc<dyn LoadBalancerProvider> =
        Arc::new(AwsProvider::new(&stuck_conf, aws::settings(&seed)));
    let stuck_class = format!("{}-stuck", h.class);
    let limit = Duration::from_secs(4);
    let mut cfg = support::controller::config(
        vec![
            (h.class.clone(), h.provider.clone()),
            (stuck_class.clone(), stuck),
        ],
        None,
        &h.ns,
        &h.label,
    );
    cfg.provider_timeout = limit;
    let ctl = support::controller::RunningController::start(h.client.clone(), cfg);

    let started = Instant::now();
    h.service("stuck", &[80], Some(&stuck_class)).await;
    h.service("good1", &[80], Some(&h.class)).await;
    h.service("good2", &[81], Some(&h.class)).await;
    for name in ["good1", "good2"] {
        h.wait_service("good converged", name, |s| ingress_hostname(s).is_some())
            .await;
    }
    let stuck_svc = h
        .wait_service("stuck's condition", "stuck", |s| {
            condition(s).is_some_and(|(st, _, _)| st == "False")
        })
        .await;
    let failed_after = started.elapsed();
    let (_, reason, message) = condition(&stuck_svc).unwrap();
    assert_eq!(reason, "ProviderTimeout", "{message}");
    assert!(
        message.contains("did not finish ensure within 4s"),
        "{message}"
    );
    assert!(
        failed_after < limit + Duration::from_secs(15),
        "failed after {failed_after:?}"
    );
    let events = k::events(&h.client, &h.ns, "stuck").await;
    assert!(
        events.iter().any(|e| e.type_.as_deref() == Some("Warning")
            && e.reason.as_deref() == Some("SyncLoadBalancerFailed")
            && e.note.as_deref().is_some_and(|n| n.contains("ensure"))),
        "{events:?}"
    );

    // The stuck Service cannot be deleted through a dead endpoint: stop the
    // controller and let it go by hand, then clean up the good ones.
    ctl.stop().await;
    h.services()
        .patch(
            "stuck",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    h.services()
        .delete("stuck", &DeleteParams::default())
        .await
        .unwrap();
    hole.abort();
    let ctl = h.start(false);
    delete_and_stop(&h, ctl, &conf, &seed, &["good1", "good2"]).await;
}

/// The targets registered in every target group, by (id, port).
async fn registered(conf: &aws_config::SdkConfig, seed: &Seed) -> BTreeSet<(String, u16)> {
    aws::inventory(conf, seed)
        .await
        .targets
        .into_iter()
        .map(|(_, id, port)| (id, port))
        .collect()
}

fn pods(targets: &[(&str, u16)]) -> BTreeSet<(String, u16)> {
    targets.iter().map(|(a, p)| ((*a).to_owned(), *p)).collect()
}

/// `nlb-target-type: ip` registers the Service's ready pods on their own
/// port, straight from its EndpointSlices; a slice change registers and
/// deregisters only the difference (a terminating pod leaves, so the NLB
/// drains it), with no describe.
#[tokio::test]
async fn ip_targets_are_the_services_ready_pods_and_follow_its_endpoint_slices() {
    let (conf, seed, mut h) = world("aws-ip", 2).await;
    for i in 0..2 {
        h.cloud_node(
            &format!("n{i}"),
            &format!("127.0.3.{}", i + 11),
            &seed.provider_id(i),
        )
        .await;
    }
    let slices: kube::Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        kube::Api::namespaced(h.client.clone(), &h.ns);
    let pp = kube::api::PostParams::default();
    slices
        .create(
            &pp,
            &k::endpoint_slice("web-a", "web", 80, 8080, &["10.0.9.5", "10.0.9.6"], &[]),
        )
        .await
        .unwrap();
    let ctl = h.start(false);
    let mut svc = k::lb_service("web", &[80]);
    svc.metadata.annotations = Some(
        [(
            "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type".to_owned(),
            "ip".to_owned(),
        )]
        .into(),
    );
    svc.spec.as_mut().unwrap().load_balancer_class = Some(h.class.clone());
    h.services().create(&pp, &svc).await.unwrap();
    h.wait_service("a hostname in the status", "web", |s| {
        ingress_hostname(s).is_some()
    })
    .await;
    let inv = aws::inventory(&conf, &seed).await;
    assert_eq!(inv.target_groups.len(), 1);
    assert_eq!(
        inv.target_groups[0].target_type().map(|t| t.as_str()),
        Some("ip")
    );
    assert_eq!(
        registered(&conf, &seed).await,
        pods(&[("10.0.9.5", 8080), ("10.0.9.6", 8080)]),
        "the pods on their own port, not the nodes"
    );

    // One pod terminating, one new: one Deregister, one Register, nothing else.
    let before = h.provider.calls().snapshot();
    slices
        .replace("web-a", &pp, &{
            let mut s = k::endpoint_slice("web-a", "web", 80, 8080, &["10.0.9.5"], &["10.0.9.6"]);
            s.metadata.resource_version =
                slices.get("web-a").await.unwrap().metadata.resource_version;
            s
        })
        .await
        .unwrap();
    slices
        .create(
            &pp,
            &k::endpoint_slice("web-b", "web", 80, 8081, &["10.0.9.7"], &[]),
        )
        .await
        .unwrap();
    wait::until("the terminating pod out, the new one in", WAIT, || async {
        (registered(&conf, &seed).await == pods(&[("10.0.9.5", 8080), ("10.0.9.7", 8081)]))
            .then_some(())
    })
    .await;
    let after = h.provider.calls().snapshot();
    assert_eq!(
        after.describes(),
        before.describes(),
        "no describe for a slice change"
    );
    assert_eq!(
        after.count("DeregisterTargets") - before.count("DeregisterTargets"),
        1
    );
    assert!(after.count("RegisterTargets") - before.count("RegisterTargets") <= 2);
    assert_eq!(
        after.total() - before.total(),
        after.count("RegisterTargets") - before.count("RegisterTargets") + 1,
        "only registrations: {after:?}"
    );

    // The Service's last pod gone: nothing registered, and the Service says why.
    slices
        .delete("web-a", &DeleteParams::default())
        .await
        .unwrap();
    slices
        .delete("web-b", &DeleteParams::default())
        .await
        .unwrap();
    h.wait_service("the condition says no pod is ready", "web", |s| {
        condition(s).is_some_and(|(_, _, m)| m.contains("EndpointsNotRegistered"))
    })
    .await;
    assert!(registered(&conf, &seed).await.is_empty());

    delete_and_stop(&h, ctl, &conf, &seed, &["web"]).await;
}

/// A node tainted for removal leaves an instance-target NLB at once, and
/// the Service says so twice: when it leaves (how the NLB drains it, and
/// until when) and when the target group's deregistration delay is over.
#[tokio::test]
async fn a_node_leaving_is_announced_and_so_is_the_end_of_its_drain() {
    let (conf, seed, mut h) = world("aws-drain", 2).await;
    for i in 0..2 {
        h.cloud_node(
            &format!("n{i}"),
            &format!("127.0.3.{}", 31 + i),
            &seed.provider_id(i),
        )
        .await;
    }
    let ctl = h.start(false);
    let mut svc = k::lb_service("drainy", &[80]);
    svc.spec.as_mut().unwrap().load_balancer_class = Some(h.class.clone());
    svc.metadata.annotations = Some(
        [(
            "service.beta.kubernetes.io/aws-load-balancer-target-group-attributes".to_owned(),
            "deregistration_delay.timeout_seconds=2".to_owned(),
        )]
        .into(),
    );
    h.services()
        .create(&Default::default(), &svc)
        .await
        .unwrap();
    wait::until("both instances registered", WAIT, || async {
        (aws::inventory(&conf, &seed).await.targets.len() == 2).then_some(())
    })
    .await;
    let n1 = format!("{}-n1", h.ns);
    Api::<Node>::all(h.client.clone())
        .patch(
            &n1,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"taints": [
                {"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}
            ]}})),
        )
        .await
        .unwrap();
    let notes = |reason: &'static str| {
        let (client, ns, n1) = (h.client.clone(), h.ns.clone(), n1.clone());
        async move {
            let evs = k::events(&client, &ns, "drainy").await;
            let found: Vec<String> = evs
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .filter_map(|e| e.note)
                .filter(|n| n.contains(&n1))
                .collect();
            (!found.is_empty()).then_some(found)
        }
    };
    let left = wait::until("NodeDeregistered", WAIT, || notes("NodeDeregistered")).await;
    assert!(left[0].contains("(2 s,"), "{left:?}");
    assert_eq!(aws::inventory(&conf, &seed).await.targets.len(), 1);
    let drained = wait::until("NodeDrained", WAIT, || notes("NodeDrained")).await;
    assert!(drained[0].contains("(2 s)"), "{drained:?}");
    delete_and_stop(&h, ctl, &conf, &seed, &["drainy"]).await;
}
