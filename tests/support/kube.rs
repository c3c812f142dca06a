//! Kubernetes helpers: clients for the test API server, a fresh namespace per
//! test, Nodes with loopback InternalIPs.

use k8s_openapi::api::core::v1::{
    Namespace, Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::env::TestEnv;

/// An admin client for the environment's API server.
pub async fn client(env: &TestEnv) -> Client {
    let kubeconfig = Kubeconfig::read_from(env.kubeconfig()).expect("reading the test kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("building a client config from the test kubeconfig");
    Client::try_from(config).expect("building a client")
}

/// A name unique to this test run: `<prefix>-<pid>-<n>`, DNS-1123 safe.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a fresh namespace for one test and returns its name.
///
/// Namespaces are not deleted afterwards: the test API server runs no
/// namespace controller, and the whole environment is thrown away.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = unique_name(prefix);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating the test namespace");
    name
}

/// A Node object with one `InternalIP`. The API server keeps the status a
/// Node is created with, as kubelet's registration relies on.
pub fn node(name: &str, internal_ip: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: internal_ip.into(),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates a Node with one `InternalIP` and returns it as stored.
pub async fn create_node(client: &Client, name: &str, internal_ip: &str) -> Node {
    create_labelled_node(client, name, internal_ip, &[]).await
}

/// Creates a Node with one `InternalIP` and the given labels.
pub async fn create_labelled_node(
    client: &Client,
    name: &str,
    internal_ip: &str,
    labels: &[(&str, &str)],
) -> Node {
    let mut n = node(name, internal_ip);
    n.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &n)
        .await
        .unwrap_or_else(|e| panic!("creating node {name}: {e}"))
}

/// Deletes a Node; absent is fine.
pub async fn delete_node(client: &Client, name: &str) {
    match Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => panic!("deleting node {name}: {e}"),
    }
}

/// A `type: LoadBalancer` Service with the given TCP ports (port = targetPort).
pub fn lb_service(name: &str, ports: &[i32]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            selector: Some([("app".to_owned(), name.to_owned())].into()),
            ports: Some(
                ports
                    .iter()
                    .map(|&p| ServicePort {
                        name: Some(format!("p{p}")),
                        port: p,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An EndpointSlice of Service `service` named `name`, for port `p<port>`
/// (as [`lb_service`] names them) served on `target_port` by each address
/// in `ready` (ready) and `terminating` (terminating, not ready).
pub fn endpoint_slice(
    name: &str,
    service: &str,
    port: i32,
    target_port: i32,
    ready: &[&str],
    terminating: &[&str],
) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": format!("p{port}"), "port": target_port, "protocol": "TCP"}],
        "endpoints": ready.iter().map(|a| serde_json::json!({
            "addresses": [a], "conditions": {"ready": true, "serving": true, "terminating": false},
        })).chain(terminating.iter().map(|a| serde_json::json!({
            "addresses": [a], "conditions": {"ready": false, "serving": true, "terminating": true},
        }))).collect::<Vec<_>>(),
    }))
    .expect("an EndpointSlice")
}

/// The reasons of the Events about one object in `namespace`, oldest first.
pub async fn event_reasons(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    events(client, namespace, name)
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

/// The Events (events.k8s.io/v1) about one object in `namespace`.
pub async fn events(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    let mut evs: Vec<_> =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), namespace)
            .list(&Default::default())
            .await
            .expect("listing Events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
    evs.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    evs
}
