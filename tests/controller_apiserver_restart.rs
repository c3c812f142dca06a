//! The controller survives its API server restarting: watches resume and a
//! change made while it was disconnected is applied. Uses a private API
//! server, since it stops it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::controller::{RunningController, config};
use support::env::TestEnv;
use support::recording::RecordingProvider;
use support::{kube as k, wait};

#[tokio::test]
async fn watches_resume_after_an_api_server_restart() {
    let env = TestEnv::start_private(&["kube"]);
    let client = k::client(&env).await;
    let ns = k::namespace(&client, "restart").await;
    let label = format!("test.ferrylb.io/{ns}");
    let class = label.clone();
    k::create_labelled_node(&client, "restart-n1", "127.0.0.11", &[(&label, "true")]).await;
    let provider = Arc::new(RecordingProvider::new(None));
    let _ctl = RunningController::start(
        client.clone(),
        config(vec![(class.clone(), provider.clone())], None, &ns, &label),
    );

    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let mut svc = k::lb_service("web", &[80]);
    svc.spec.as_mut().unwrap().load_balancer_class = Some(class.clone());
    services.create(&PostParams::default(), &svc).await.unwrap();
    let key = format!("{ns}/web");
    wait::until("first ensure", Duration::from_secs(30), || async {
        provider.current(&key).map(|_| ())
    })
    .await;

    env.stop("apiserver");
    env.start(&["kube"]);
    // The controller's watches are still reconnecting (backing off) when
    // these changes land.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [{"name": "p80", "port": 9090, "targetPort": 80, "protocol": "TCP"}]}})),
        )
        .await
        .expect("patching after the restart");
    k::create_labelled_node(&client, "restart-n2", "127.0.0.12", &[(&label, "true")]).await;

    wait::until(
        "the change to reach the provider",
        Duration::from_secs(60),
        || async {
            provider
                .current(&key)
                .filter(|s| s.listeners[0].port == 9090 && s.targets.len() == 2)
        },
    )
    .await;
}
