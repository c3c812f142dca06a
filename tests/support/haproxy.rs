//! The HAProxy provider's tests: a provider with its own haproxy, the
//! stand-in nodes on 127.0.0.11-14, and waits for what a Service shows.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ferrylb_haproxy::{HaproxyProvider, HaproxySettings};
use k8s_openapi::api::core::v1::Service;
use kube::api::PostParams;

use super::controller::{RunningController, config};
use super::harness::{Harness, WAIT, first_ingress};
use super::process::require_program;
use super::traffic::{self, names};
use super::{env, wait};

pub fn provider(pool: &str) -> HaproxyProvider {
    let binary = require_program(
        "haproxy",
        ".ci/run installs it with `apt-get install haproxy`",
    );
    let dir = env::tempdir("haproxy");
    let mut settings = HaproxySettings::in_dir(pool.parse().unwrap(), &dir);
    settings.process.binary = binary;
    settings.hard_stop_after = Duration::from_secs(5);
    HaproxyProvider::new(settings)
}

/// The stand-in nodes: (InternalIP, name).
pub const NODES: &[(&str, &str)] = &[
    ("127.0.0.11", "n1"),
    ("127.0.0.12", "n2"),
    ("127.0.0.13", "n3"),
    ("127.0.0.14", "n4"),
];

/// Nodes n1, n2, n3 at 127.0.0.11-13.
pub async fn three_nodes(h: &mut Harness<HaproxyProvider>) {
    for (ip, n) in &NODES[..3] {
        h.node(n, ip).await;
    }
}

/// A stand-in for each node, answering with its name on `node_port`.
pub async fn stand_ins(node_port: u16, nodes: &[(&str, &str)]) -> Vec<traffic::Answerer> {
    futures::future::join_all(
        nodes
            .iter()
            .map(|(ip, name)| traffic::answer(ip, node_port, name)),
    )
    .await
}

/// The controller for `h`'s class, running `concurrency` reconciles at once.
pub fn start_at_concurrency(h: &Harness<HaproxyProvider>, concurrency: u16) -> RunningController {
    let mut cfg = config(
        vec![(
            h.class.clone(),
            h.provider.clone() as Arc<dyn ferrylb_model::LoadBalancerProvider>,
        )],
        None,
        &h.ns,
        &h.label,
    );
    cfg.concurrency = concurrency;
    RunningController::start(h.client.clone(), cfg)
}

pub async fn harness(prefix: &str, pool: &'static str) -> Harness<HaproxyProvider> {
    Harness::new(prefix, |_| provider(pool)).await
}

pub fn vip(svc: &Service) -> Option<IpAddr> {
    let ing = first_ingress(svc)?;
    assert_eq!(ing.ip_mode.as_deref(), Some("Proxy"));
    ing.ip?.parse().ok()
}

pub fn node_port(svc: &Service, i: usize) -> u16 {
    svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[i]
        .node_port
        .unwrap() as u16
}

pub async fn create(h: &Harness<HaproxyProvider>, mut svc: Service) -> Service {
    svc.spec.as_mut().unwrap().load_balancer_class = Some(h.class.clone());
    h.services()
        .create(&PostParams::default(), &svc)
        .await
        .expect("creating the Service")
}

pub async fn wait_vip(h: &Harness<HaproxyProvider>, name: &str) -> (Service, IpAddr) {
    let svc = h
        .wait_service("a VIP in the status", name, |s| vip(s).is_some())
        .await;
    let ip = vip(&svc).unwrap();
    (svc, ip)
}

/// Waits until `n` connections to `addr` are answered by exactly `expected`.
pub async fn wait_answers(addr: SocketAddr, expected: &[&str]) {
    let want = names(expected);
    wait::until(
        &format!("{addr} to be answered by {expected:?}"),
        WAIT,
        || async { (traffic::sample(addr, 4 * expected.len().max(1)).await == want).then_some(()) },
    )
    .await;
}
