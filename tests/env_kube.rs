//! The test environment's API server is real: it allocates nodePorts and
//! stores Nodes with their addresses.

mod support;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, PostParams};
use support::{env, kube as k};

#[tokio::test]
async fn api_server_allocates_node_ports_for_load_balancer_services() {
    let client = k::client(env::shared()).await;
    let ns = k::namespace(&client, "env").await;
    let services: Api<Service> = Api::namespaced(client, &ns);

    services
        .create(&PostParams::default(), &k::lb_service("web", &[80, 443]))
        .await
        .expect("creating a LoadBalancer Service");
    let svc = services.get("web").await.expect("reading the Service back");

    let spec = svc.spec.expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let node_ports: Vec<i32> = spec
        .ports
        .expect("ports")
        .iter()
        .map(|p| p.node_port.expect("the API server allocates a nodePort"))
        .collect();
    assert_eq!(node_ports.len(), 2);
    for np in &node_ports {
        assert!(
            (30000..=32767).contains(np),
            "nodePort {np} outside the default range"
        );
    }
    assert_ne!(node_ports[0], node_ports[1]);
    assert!(spec.cluster_ip.is_some_and(|ip| ip.starts_with("10.96.")));
}

#[tokio::test]
async fn nodes_are_stored_with_their_internal_ips() {
    let client = k::client(env::shared()).await;
    let a = k::unique_name("node-a");
    let b = k::unique_name("node-b");
    k::create_node(&client, &a, "127.0.0.11").await;
    k::create_node(&client, &b, "127.0.0.12").await;

    let nodes: Api<Node> = Api::all(client.clone());
    for (name, ip) in [(&a, "127.0.0.11"), (&b, "127.0.0.12")] {
        let node = nodes.get(name).await.expect("reading the Node back");
        let addrs = node.status.and_then(|s| s.addresses).unwrap_or_default();
        assert!(
            addrs
                .iter()
                .any(|x| x.type_ == "InternalIP" && x.address == ip),
            "node {name} lost its InternalIP: {addrs:?}"
        );
    }
    k::delete_node(&client, &a).await;
    k::delete_node(&client, &b).await;
}
