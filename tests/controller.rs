//! The controller against the real API server, with an in-memory provider
//! that records its calls.

mod support;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::sync::Arc;

use ferrylb_model::LoadBalancerProvider;
use support::controller::{RunningController, config};
use support::harness::{Harness, WAIT, condition, has_finalizer, ingress_hostname};
use support::recording::{Call, RecordingProvider};
use support::{kube as k, wait};

/// Waits until the provider's last call about `name` satisfies `pred`.
async fn wait_call(
    h: &Harness<RecordingProvider>,
    what: &str,
    name: &str,
    pred: impl Fn(&Call) -> bool,
) -> Call {
    let key = h.key(name);
    wait::until(what, WAIT, || {
        let last = h
            .provider
            .calls_for(&key)
            .last()
            .filter(|c| pred(c))
            .cloned();
        async move { last }
    })
    .await
}

fn targets_of(call: &Call) -> Vec<String> {
    match call {
        Call::Ensure { targets, .. } | Call::UpdateTargets { targets, .. } => targets.clone(),
        _ => vec![],
    }
}

async fn new(prefix: &str) -> Harness<RecordingProvider> {
    Harness::new(prefix, |c| RecordingProvider::new(Some(c.clone()))).await
}

#[tokio::test]
async fn new_service_gets_finalizer_before_ensure_then_status_and_events() {
    let mut h = new("ctl-new").await;
    let n1 = h.node("n1", "127.0.0.11").await;
    let _ctl = h.start(false);
    h.service("web", &[80], Some(&h.class.clone())).await;

    let call = wait_call(&h, "ensure of web", "web", |c| {
        matches!(c, Call::Ensure { .. })
    })
    .await;
    let Call::Ensure {
        finalizer_present,
        created,
        targets,
        ..
    } = call
    else {
        unreachable!()
    };
    assert_eq!(
        finalizer_present,
        Some(true),
        "the finalizer must be on the Service before ensure"
    );
    assert!(created);
    assert_eq!(targets, vec![n1]);

    let svc = h
        .wait_service("status of web", "web", |s| ingress_hostname(s).is_some())
        .await;
    let lb = h.provider.current(&h.key("web")).unwrap().lb;
    assert_eq!(
        ingress_hostname(&svc).unwrap(),
        format!("{}.lb.test", lb.name)
    );
    assert!(has_finalizer(&svc));
    assert_eq!(
        condition(&svc).map(|c| (c.0, c.1)),
        Some(("True".into(), "Ensured".into()))
    );

    wait::until("Ensuring and Ensured events", WAIT, || async {
        let r = k::event_reasons(&h.client, &h.ns, "web").await;
        (r.contains(&"EnsuringLoadBalancer".into()) && r.contains(&"EnsuredLoadBalancer".into()))
            .then_some(())
    })
    .await;
    // Writing our own status did not cause a second ensure.
    assert_eq!(
        h.provider.calls_for(&h.key("web")).len(),
        1,
        "{:?}",
        h.provider.calls()
    );
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn node_changes_reach_the_provider_and_ready_flaps_do_not() {
    let mut h = new("ctl-nodes").await;
    let n1 = h.node("n1", "127.0.0.11").await;
    let n2 = h.node("n2", "127.0.0.12").await;
    let _ctl = h.start(false);
    let class = h.class.clone();
    h.service("a", &[80], Some(&class)).await;
    h.service("b", &[81], Some(&class)).await;
    for s in ["a", "b"] {
        wait_call(&h, "first ensure", s, |c| targets_of(c).len() == 2).await;
    }

    // Added: both Services see the third node through the target-only path.
    let n3 = h.node("n3", "127.0.0.13").await;
    for s in ["a", "b"] {
        let c = wait_call(&h, "node added", s, |c| targets_of(c).len() == 3).await;
        assert!(matches!(c, Call::UpdateTargets { .. }), "{c:?}");
    }
    // Labelled excluded.
    let nodes: Api<Node> = Api::all(h.client.clone());
    nodes
        .patch(&n1, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": ""}}})))
        .await
        .unwrap();
    wait_call(&h, "node excluded", "a", |c| {
        targets_of(c) == vec![n2.clone(), n3.clone()]
    })
    .await;
    // Removed.
    k::delete_node(&h.client, &n2).await;
    wait_call(&h, "node removed", "a", |c| {
        targets_of(c) == vec![n3.clone()]
    })
    .await;
    wait_call(&h, "node removed", "b", |c| {
        targets_of(c) == vec![n3.clone()]
    })
    .await;

    // Ready → NotReady → Ready: no provider call. A later real change is the
    // barrier that proves the flaps were processed and ignored.
    let before = h.provider.calls().len();
    for status in ["False", "True", "False", "True"] {
        nodes
            .patch_status(&n3, &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": status, "reason": "Test", "message": "flap"}]}})))
            .await
            .unwrap();
    }
    let n4 = h.node("n4", "127.0.0.14").await;
    wait_call(&h, "barrier node", "a", |c| targets_of(c).contains(&n4)).await;
    wait_call(&h, "barrier node", "b", |c| targets_of(c).contains(&n4)).await;
    assert_eq!(
        h.provider.calls().len(),
        before + 2,
        "Ready flaps must not call the provider: {:?}",
        &h.provider.calls()[before..]
    );

    // A change to one Service re-ensures that Service only.
    let before = h.provider.calls().len();
    h.services()
        .patch("a", &PatchParams::default(), &Patch::Merge(json!({"spec": {"ports": [{"name": "p80", "port": 8080, "targetPort": 80, "protocol": "TCP"}]}})))
        .await
        .unwrap();
    wait_call(&h, "port change", "a", |c| matches!(c, Call::Ensure { .. })).await;
    let after: Vec<Call> = h.provider.calls()[before..].to_vec();
    assert!(
        after.iter().all(|c| c.svc() == Some(&h.key("a"))),
        "only a was re-ensured: {after:?}"
    );
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn type_change_and_deletion_delete_the_load_balancer_and_let_go() {
    let mut h = new("ctl-del").await;
    h.node("n1", "127.0.0.11").await;
    let _ctl = h.start(false);
    let class = h.class.clone();
    h.service("to-cip", &[80], Some(&class)).await;
    h.service("doomed", &[80], Some(&class)).await;
    for s in ["to-cip", "doomed"] {
        h.wait_service("provisioned", s, |s| ingress_hostname(s).is_some())
            .await;
    }

    // Type → ClusterIP (the class must go with it).
    h.services()
        .patch("to-cip", &PatchParams::default(), &Patch::Merge(json!({"spec": {"type": "ClusterIP", "loadBalancerClass": null, "allocateLoadBalancerNodePorts": null, "externalTrafficPolicy": null, "ports": [{"name": "p80", "port": 80, "protocol": "TCP", "nodePort": null}]}})))
        .await
        .expect("changing the type to ClusterIP");
    wait_call(&h, "delete after type change", "to-cip", |c| {
        matches!(c, Call::Delete { .. })
    })
    .await;
    let svc = h
        .wait_service("status cleared and finalizer gone", "to-cip", |s| {
            !has_finalizer(s) && ingress_hostname(s).is_none()
        })
        .await;
    assert_eq!(condition(&svc), None);
    assert_eq!(h.provider.current(&h.key("to-cip")), None);

    // A failing delete keeps the finalizer, warns, and is retried.
    h.provider.set_fail_deletes(true);
    h.services()
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    wait_call(&h, "failing delete", "doomed", |c| {
        matches!(c, Call::Delete { .. })
    })
    .await;
    wait::until("a Warning about the failed delete", WAIT, || async {
        let evs = k::events(&h.client, &h.ns, "doomed").await;
        evs.iter()
            .any(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.note.as_deref().is_some_and(|n| n.contains("injected"))
            })
            .then_some(())
    })
    .await;
    let svc = h
        .services()
        .get("doomed")
        .await
        .expect("the Service is kept while its delete fails");
    assert!(has_finalizer(&svc));
    assert!(h.provider.current(&h.key("doomed")).is_some());

    h.provider.set_fail_deletes(false);
    wait::until(
        "the Service to disappear after a retried delete",
        WAIT,
        || async {
            h.services()
                .get_opt("doomed")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert_eq!(h.provider.current(&h.key("doomed")), None);
    let deletes = h
        .provider
        .calls_for(&h.key("doomed"))
        .iter()
        .filter(|c| matches!(c, Call::Delete { .. }))
        .count();
    assert!(deletes >= 2, "the delete was retried");
    // Deletion Events are published in the background: waited for, not
    // expected the moment the Service is gone.
    wait::until(
        "DeletingLoadBalancer and DeletedLoadBalancer",
        WAIT,
        || async {
            let reasons = k::event_reasons(&h.client, &h.ns, "doomed").await;
            (reasons.contains(&"DeletingLoadBalancer".into())
                && reasons.contains(&"DeletedLoadBalancer".into()))
            .then_some(())
        },
    )
    .await;
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn other_classes_are_untouched_and_no_class_needs_a_default() {
    let mut h = new("ctl-class").await;
    h.node("n1", "127.0.0.11").await;
    let ctl = h.start(false);
    h.service("other", &[80], Some("example.com/someone-else"))
        .await;
    h.service("classless", &[81], None).await;
    let class = h.class.clone();
    h.service("mine", &[82], Some(&class)).await;
    // "mine" converging proves the controller ran over the others too.
    h.wait_service("mine provisioned", "mine", |s| {
        ingress_hostname(s).is_some()
    })
    .await;
    for name in ["other", "classless"] {
        let svc = h.services().get(name).await.unwrap();
        assert!(
            !has_finalizer(&svc) && ingress_hostname(&svc).is_none() && condition(&svc).is_none(),
            "{name} was touched"
        );
        assert!(
            k::event_reasons(&h.client, &h.ns, name).await.is_empty(),
            "{name} got Events"
        );
        assert!(h.provider.calls_for(&h.key(name)).is_empty());
    }
    ctl.stop().await;

    // As the default implementation, the classless Service is ours too.
    let _ctl = h.start(true);
    h.wait_service("classless provisioned", "classless", |s| {
        ingress_hostname(s).is_some() && has_finalizer(s)
    })
    .await;
    let other = h.services().get("other").await.unwrap();
    assert!(!has_finalizer(&other) && ingress_hostname(&other).is_none());
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn a_service_another_controller_provisioned_is_never_written() {
    let mut h = new("ctl-owner").await;
    h.node("n1", "127.0.0.11").await;
    // Another FerryLB, serving a class of its own, provisions "small".
    let small_class = format!("{}-small", h.class);
    let owner = Arc::new(RecordingProvider::new(Some(h.client.clone())));
    let owner_provider: Arc<dyn LoadBalancerProvider> = owner.clone();
    let _owner = RunningController::start(
        h.client.clone(),
        config(
            vec![(small_class.clone(), owner_provider)],
            None,
            &h.ns,
            &h.label,
        ),
    );
    h.service("small", &[80], Some(&small_class)).await;
    let before = h
        .wait_service("small provisioned by its owner", "small", |s| {
            ingress_hostname(s).is_some() && has_finalizer(s) && condition(s).is_some()
        })
        .await;

    // This controller, the default implementation, serves another class.
    let _ctl = h.start(true);
    h.service("mine", &[81], None).await;
    // "mine" converging proves it ran over "small" too.
    h.wait_service("mine provisioned", "mine", |s| {
        ingress_hostname(s).is_some()
    })
    .await;
    let after = h.services().get("small").await.unwrap();
    assert_eq!(
        condition(&after),
        condition(&before),
        "the owner's condition was overwritten"
    );
    let reasons = k::event_reasons(&h.client, &h.ns, "small").await;
    assert!(
        !reasons.iter().any(|r| r == "SyncLoadBalancerFailed"),
        "a controller that does not serve the class published {reasons:?}"
    );
    assert!(h.provider.calls_for(&h.key("small")).is_empty());
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn no_eligible_node_is_a_warning_and_not_ready() {
    let mut h = new("ctl-nonodes").await;
    let n1 = h.node("n1", "127.0.0.11").await;
    let _ctl = h.start(false);
    let class = h.class.clone();
    h.service("web", &[80], Some(&class)).await;
    h.wait_service("web ready", "web", |s| {
        condition(s).is_some_and(|c| c.0 == "True")
    })
    .await;
    Api::<Node>::all(h.client.clone())
        .patch(
            &n1,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "node.kubernetes.io/exclude-from-external-load-balancers": ""
            }}})),
        )
        .await
        .unwrap();
    let svc = h
        .wait_service("web's UnAvailableLoadBalancer condition", "web", |s| {
            condition(s).is_some_and(|c| c.0 == "False" && c.1 == "UnAvailableLoadBalancer")
        })
        .await;
    assert!(condition(&svc).unwrap().2.contains("no available nodes"));
    let warning = wait::until("an UnAvailableLoadBalancer Warning", WAIT, || async {
        k::events(&h.client, &h.ns, "web")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("UnAvailableLoadBalancer"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn a_huge_invalid_value_is_named_and_quoted_in_a_bounded_excerpt() {
    let mut h = new("ctl-huge").await;
    h.node("n1", "127.0.0.11").await;
    let _ctl = h.start(false);
    let mut bad = k::lb_service("huge", &[80]);
    bad.spec.as_mut().unwrap().load_balancer_class = Some(h.class.clone());
    let field = "ferrylb.io/load-balancer-ips";
    bad.metadata.annotations = Some([(field.to_owned(), "9".repeat(100_000))].into());
    h.services()
        .create(&PostParams::default(), &bad)
        .await
        .unwrap();
    let svc = h
        .wait_service("huge's condition", "huge", |s| {
            condition(s).is_some_and(|c| c.0 == "False")
        })
        .await;
    let message = condition(&svc).unwrap().2;
    assert!(
        message.contains(field) && message.contains("100000 bytes"),
        "{message}"
    );
    assert!(
        message.len() < 1_000,
        "a {}-byte condition message",
        message.len()
    );
    let note = wait::until("a Warning Event on huge", WAIT, || async {
        k::events(&h.client, &h.ns, "huge")
            .await
            .into_iter()
            .find(|e| e.type_.as_deref() == Some("Warning"))
            .and_then(|e| e.note)
    })
    .await;
    assert!(
        note.contains(field),
        "the Event hides the annotation's name: {note}"
    );
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn a_hung_provider_call_fails_within_the_limit_and_others_converge() {
    let mut h = new("ctl-hang").await;
    h.node("n1", "127.0.0.11").await;
    h.provider.hang_ensures_of("stuck");
    let mut cfg = config(
        vec![(
            h.class.clone(),
            h.provider.clone() as Arc<dyn LoadBalancerProvider>,
        )],
        None,
        &h.ns,
        &h.label,
    );
    cfg.provider_timeout = std::time::Duration::from_secs(2);
    let _ctl = RunningController::start(h.client.clone(), cfg);
    let class = h.class.clone();
    h.service("stuck", &[80], Some(&class)).await;
    h.service("fine", &[81], Some(&class)).await;
    let svc = h
        .wait_service("stuck's ProviderTimeout condition", "stuck", |s| {
            condition(s).is_some_and(|c| c.1 == "ProviderTimeout")
        })
        .await;
    let message = condition(&svc).unwrap().2;
    assert!(
        message.contains("ensure") && message.contains("2s"),
        "{message}"
    );
    h.wait_service("fine provisioned", "fine", |s| {
        ingress_hostname(s).is_some()
    })
    .await;
    let warning = wait::until("a Warning naming the operation", WAIT, || async {
        k::events(&h.client, &h.ns, "stuck")
            .await
            .into_iter()
            .filter_map(|e| e.note)
            .find(|n| n.contains("did not finish ensure"))
    })
    .await;
    assert!(warning.contains("--provider-timeout"), "{warning}");
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn invalid_input_warns_names_the_value_and_leaves_others_alone() {
    let mut h = new("ctl-bad").await;
    h.node("n1", "127.0.0.11").await;
    let _ctl = h.start(false);
    let class = h.class.clone();
    let mut bad = k::lb_service("bad", &[80]);
    bad.spec.as_mut().unwrap().load_balancer_class = Some(class.clone());
    bad.metadata.annotations = Some(
        [(
            "ferrylb.io/load-balancer-ips".to_owned(),
            "not-an-ip".to_owned(),
        )]
        .into(),
    );
    h.services()
        .create(&PostParams::default(), &bad)
        .await
        .unwrap();
    let mut no_np = k::lb_service("no-nodeports", &[80]);
    no_np.spec.as_mut().unwrap().load_balancer_class = Some(class.clone());
    no_np
        .spec
        .as_mut()
        .unwrap()
        .allocate_load_balancer_node_ports = Some(false);
    h.services()
        .create(&PostParams::default(), &no_np)
        .await
        .unwrap();
    h.service("good", &[81], Some(&class)).await;

    h.wait_service("good provisioned", "good", |s| {
        ingress_hostname(s).is_some()
    })
    .await;
    let svc = h
        .wait_service("bad's condition", "bad", |s| {
            condition(s).is_some_and(|c| c.0 == "False")
        })
        .await;
    let (_, reason, message) = condition(&svc).unwrap();
    assert_eq!(reason, "InvalidService");
    assert!(
        message.contains("ferrylb.io/load-balancer-ips") && message.contains("not-an-ip"),
        "{message}"
    );
    let warning = wait::until("a Warning Event on bad", WAIT, || async {
        k::events(&h.client, &h.ns, "bad")
            .await
            .into_iter()
            .find(|e| e.type_.as_deref() == Some("Warning"))
    })
    .await;
    assert_eq!(warning.reason.as_deref(), Some("SyncLoadBalancerFailed"));
    assert!(warning.note.unwrap().contains("not-an-ip"));
    assert!(
        h.provider.calls_for(&h.key("bad")).is_empty(),
        "an invalid Service must not reach the provider"
    );

    let svc = h
        .wait_service("no-nodeports condition", "no-nodeports", |s| {
            condition(s).is_some_and(|c| c.0 == "False")
        })
        .await;
    assert!(
        condition(&svc)
            .unwrap()
            .2
            .contains("allocateLoadBalancerNodePorts")
    );

    // Fixing the annotation converges.
    h.services()
        .patch("bad", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"ferrylb.io/load-balancer-ips": "127.0.0.150"}}})))
        .await
        .unwrap();
    let svc = h
        .wait_service("bad fixed", "bad", |s| ingress_hostname(s).is_some())
        .await;
    assert_eq!(condition(&svc).map(|c| c.0), Some("True".into()));
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn transient_provider_failures_back_off_and_recover() {
    let mut h = new("ctl-retry").await;
    h.node("n1", "127.0.0.11").await;
    h.provider.set_fail_ensures(true);
    let _ctl = h.start(false);
    let class = h.class.clone();
    h.service("flaky", &[80], Some(&class)).await;
    let svc = h
        .wait_service("failure condition", "flaky", |s| {
            condition(s).is_some_and(|c| c.1 == "InjectedFailure")
        })
        .await;
    assert!(ingress_hostname(&svc).is_none());
    h.provider.set_fail_ensures(false);
    h.wait_service("recovered after backoff", "flaky", |s| {
        ingress_hostname(s).is_some()
    })
    .await;
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn a_restarted_controller_converges_without_duplicate_creates() {
    let mut h = new("ctl-restart").await;
    h.node("n1", "127.0.0.11").await;
    let class = h.class.clone();
    let ctl = h.start(false);
    h.service("one", &[80], Some(&class)).await;
    h.wait_service("one provisioned", "one", |s| ingress_hostname(s).is_some())
        .await;
    ctl.stop().await;

    // While it is down: a change to one Service, a new Service, a new node.
    h.services()
        .patch("one", &PatchParams::default(), &Patch::Merge(json!({"spec": {"ports": [{"name": "p80", "port": 8080, "targetPort": 80, "protocol": "TCP"}]}})))
        .await
        .unwrap();
    h.service("two", &[81], Some(&class)).await;
    let n2 = h.node("n2", "127.0.0.12").await;

    let _ctl = h.start(false);
    h.wait_service("two provisioned", "two", |s| ingress_hostname(s).is_some())
        .await;
    wait::until("one converged to port 8080 and two nodes", WAIT, || async {
        h.provider
            .current(&h.key("one"))
            .filter(|s| s.listeners[0].port == 8080 && s.targets.iter().any(|t| t.node == n2))
    })
    .await;
    for name in ["one", "two"] {
        let creates = h
            .provider
            .calls_for(&h.key(name))
            .iter()
            .filter(|c| matches!(c, Call::Ensure { created: true, .. }))
            .count();
        assert_eq!(
            creates,
            1,
            "{name} created more than once: {:?}",
            h.provider.calls()
        );
    }
    assert_eq!(h.provider.count(), 2);
    let restores: Vec<Call> = h
        .provider
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Restore { .. }))
        .collect();
    assert_eq!(
        restores.last(),
        Some(&Call::Restore {
            services: vec![h.key("one")]
        }),
        "the restart restored what existed"
    );
    h.cleanup_nodes().await;
}

/// `ferrylb uninstall` (the chart's pre-delete hook) against the real API
/// server: FerryLB's Deployment scaled to zero; a Service of the released
/// class loses its address, condition, finalizer and class annotation;
/// one of another class keeps everything and is named; a second run finds
/// nothing to do.
#[tokio::test]
async fn uninstall_stops_the_replicas_and_lets_go_of_the_released_classes_services() {
    let env = support::env::shared();
    let client = k::client(env).await;
    let ns = k::namespace(&client, "uninstall").await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "ferrylb"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "ferrylb"}},
                    "template": {
                        "metadata": {"labels": {"app": "ferrylb"}},
                        "spec": {"containers": [{"name": "c", "image": "ferrylb"}]},
                    },
                },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &ns);
    for (name, class, ip) in [
        ("bare", "ferrylb.io/haproxy", "10.9.0.1"),
        ("cloud", "ferrylb.io/aws", "10.9.0.2"),
    ] {
        let mut svc = k::lb_service(name, &[80]);
        svc.metadata.finalizers = Some(vec!["service.kubernetes.io/load-balancer-cleanup".into()]);
        svc.metadata.annotations =
            Some([("ferrylb.io/provisioned-class".to_owned(), class.to_owned())].into());
        services.create(&PostParams::default(), &svc).await.unwrap();
        services
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "loadBalancer": {"ingress": [{"ip": ip}]},
                    "conditions": [{"type": "ferrylb.io/LoadBalancerReady", "status": "True",
                        "reason": "Ensured", "message": "", "lastTransitionTime": "2026-12-06T00:00:00Z"}],
                }})),
            )
            .await
            .unwrap();
    }
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferrylb"))
            .args([
                "uninstall",
                "--kubeconfig",
                env.kubeconfig().to_str().unwrap(),
            ])
            .args(["--namespace", &ns, "--deployment", "ferrylb"])
            .args(["--release-class", "ferrylb.io/haproxy", "--timeout", "10s"])
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("released {ns}/bare")), "{stdout}");
    assert!(
        stdout.contains(&format!("kept {ns}/cloud (class ferrylb.io/aws)")),
        "{stdout}"
    );
    let d = deployments.get("ferrylb").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(0));

    let bare = services.get("bare").await.unwrap();
    assert!(!has_finalizer(&bare), "{:?}", bare.metadata.finalizers);
    assert!(
        !bare
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("ferrylb.io/provisioned-class")
    );
    let status = bare.status.unwrap_or_default();
    assert!(
        status
            .load_balancer
            .and_then(|l| l.ingress)
            .unwrap_or_default()
            .is_empty(),
        "the address is cleared"
    );
    assert!(
        status
            .conditions
            .unwrap_or_default()
            .iter()
            .all(|c| c.type_ != "ferrylb.io/LoadBalancerReady")
    );
    let cloud = services.get("cloud").await.unwrap();
    assert!(
        has_finalizer(&cloud),
        "an NLB may exist: the finalizer stays"
    );
    assert!(
        ingress_hostname(&cloud).is_none() && support::harness::first_ingress(&cloud).is_some()
    );

    // Deleting the released one completes at once; a second run is a no-op.
    services
        .delete("bare", &DeleteParams::default())
        .await
        .unwrap();
    assert!(services.get_opt("bare").await.unwrap().is_none());
    let again = run();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    assert!(!stdout.contains("released"), "{stdout}");
    services
        .patch(
            "cloud",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
}
