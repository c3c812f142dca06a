//! One test's world for controller tests: a namespace, a node label, a
//! class, a provider and a controller serving that class in that namespace.

use std::sync::Arc;
use std::time::Duration;

use ferrylb::controller::FINALIZER;
use ferrylb::controller::status::CONDITION_TYPE;
use ferrylb_model::LoadBalancerProvider;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use kube::Client;
use kube::api::{Api, PostParams};

use super::controller::{RunningController, config};
use super::{env, kube as k, wait};

pub const WAIT: Duration = Duration::from_secs(30);

/// One test's world: a namespace, a node label, a class, a recording
/// provider and a controller serving that class in that namespace.
pub struct Harness<P> {
    pub client: Client,
    pub ns: String,
    pub label: String,
    pub class: String,
    pub provider: Arc<P>,
    pub nodes: Vec<String>,
}

impl<P: LoadBalancerProvider> Harness<P> {
    pub async fn new(prefix: &str, provider: impl FnOnce(&Client) -> P) -> Self {
        let client = k::client(env::shared()).await;
        let ns = k::namespace(&client, prefix).await;
        Harness {
            label: format!("test.ferrylb.io/{ns}"),
            class: format!("test.ferrylb.io/{ns}"),
            provider: Arc::new(provider(&client)),
            client,
            ns,
            nodes: vec![],
        }
    }

    pub fn start(&self, default: bool) -> RunningController {
        let cfg = config(
            vec![(self.class.clone(), self.provider.clone())],
            default.then(|| self.class.clone()),
            &self.ns,
            &self.label,
        );
        RunningController::start(self.client.clone(), cfg)
    }

    pub async fn node(&mut self, suffix: &str, ip: &str) -> String {
        let name = format!("{}-{suffix}", self.ns);
        k::create_labelled_node(&self.client, &name, ip, &[(&self.label, "true")]).await;
        self.nodes.push(name.clone());
        name
    }

    /// A node standing for a cloud instance: `spec.providerID` set.
    pub async fn cloud_node(&mut self, suffix: &str, ip: &str, provider_id: &str) -> String {
        use k8s_openapi::api::core::v1::Node;
        let name = format!("{}-{suffix}", self.ns);
        let mut n = k::node(&name, ip);
        n.metadata.labels = Some([(self.label.clone(), "true".to_owned())].into());
        n.spec.get_or_insert_default().provider_id = Some(provider_id.to_owned());
        Api::<Node>::all(self.client.clone())
            .create(&PostParams::default(), &n)
            .await
            .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
        self.nodes.push(name.clone());
        name
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn service(&self, name: &str, ports: &[i32], class: Option<&str>) -> Service {
        let mut svc = k::lb_service(name, ports);
        svc.spec.as_mut().unwrap().load_balancer_class = class.map(str::to_owned);
        self.services()
            .create(&PostParams::default(), &svc)
            .await
            .expect("creating the Service")
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.ns)
    }

    pub async fn wait_service(
        &self,
        what: &str,
        name: &str,
        pred: impl Fn(&Service) -> bool,
    ) -> Service {
        wait::until(what, WAIT, || async {
            self.services()
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .filter(|s| pred(s))
        })
        .await
    }

    pub async fn cleanup_nodes(&self) {
        for n in &self.nodes {
            k::delete_node(&self.client, n).await;
        }
    }
}

/// The first `status.loadBalancer.ingress` entry.
pub fn first_ingress(svc: &Service) -> Option<LoadBalancerIngress> {
    svc.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()
        .cloned()
}

pub fn ingress_hostname(svc: &Service) -> Option<String> {
    first_ingress(svc)?.hostname
}

pub fn has_finalizer(svc: &Service) -> bool {
    svc.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER)
}

pub fn condition(svc: &Service) -> Option<(String, String, String)> {
    let c = svc
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == CONDITION_TYPE)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}
