//! Benchmark: AWS API calls per operation, counted by the provider's SDK
//! interceptor, for S Services of two TCP ports on K nodes.
//!
//!   cargo run --release --example aws_calls -- [SERVICES] [NODES]...
//!   cargo run --release --example aws_calls -- 1,100,1000 10,100
//!
//! Runs against the test environment's moto (started, or attached to via
//! FERRYLB_ENV_DIR). For every (S, K): creates S Services, runs a resync
//! drift check of each, adds a node, removes it, deletes them all, and
//! prints the calls each operation made in total, per Service, and by
//! operation name. Pacing is scaled up (moto does not throttle), so the
//! counts are what AWS would see; the times are moto's.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use ferrylb_aws::AwsProvider;
use ferrylb_model::{
    Listener, LoadBalancerProvider, LoadBalancerSpec, Protocol, Target, conformance,
};
use futures::stream::{self, StreamExt};
use support::aws::{self, Seed};

/// Reconciles at once, as `ferrylb controller --concurrency 20` runs them: enough
/// to fill a 20-ARN batch.
const CONCURRENCY: usize = 20;

fn spec(seed: &Seed, i: usize, nodes: usize) -> LoadBalancerSpec {
    let targets = (0..nodes)
        .map(|n| Target {
            node: format!("node-{n}"),
            addresses: vec![],
            provider_id: Some(seed.provider_id(n)),
        })
        .collect();
    let node_port = 30000 + (i % 1000) as u16;
    let mut spec = conformance::sample_spec(&seed.cluster, &format!("svc-{i}"), node_port, targets);
    spec.listeners.push(Listener {
        protocol: Protocol::Tcp,
        port: 443,
        node_port: node_port + 1000,
        name: "https".into(),
    });
    spec
}

fn parse_list(arg: Option<String>, default: &[usize]) -> Vec<usize> {
    arg.map(|a| a.split(',').map(|n| n.parse().expect("a number")).collect())
        .unwrap_or_else(|| default.to_vec())
}

async fn each<F, Fut>(specs: &[LoadBalancerSpec], f: F)
where
    F: Fn(LoadBalancerSpec) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    stream::iter(specs.iter().cloned().map(f))
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

fn report(op: &str, s: usize, k: usize, p: &AwsProvider, started: Instant) {
    let calls = p.calls().snapshot();
    let total = calls.total();
    let by_op: Vec<String> = calls
        .0
        .iter()
        .map(|(name, n)| format!("{}={n}", name.rsplit(':').next().unwrap_or(name)))
        .collect();
    println!(
        "| {s} | {k} | {op} | {total} | {:.2} | {} | {:.1}s |",
        total as f64 / s as f64,
        by_op.join(" "),
        started.elapsed().as_secs_f64()
    );
    p.calls().reset();
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let services = parse_list(args.next(), &[1, 100]);
    let nodes = parse_list(args.next(), &[10, 100]);
    let env = support::env::shared();
    let conf = aws::sdk_config(env).await;
    println!("| Services | nodes | operation | calls | per Service | by operation | time (moto) |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for &k in &nodes {
        let seed = aws::seed(&conf, k + 1).await;
        for &s in &services {
            let owned = aws::provider(&conf, &seed);
            let p = &owned;
            let specs: Vec<_> = (0..s).map(|i| spec(&seed, i, k)).collect();

            let t = Instant::now();
            each(&specs, |sp| async move {
                p.ensure(&sp).await.map(drop).expect("create")
            })
            .await;
            report("create", s, k, p, t);

            let t = Instant::now();
            each(&specs, |sp| async move {
                p.ensure(&sp).await.map(drop).expect("resync")
            })
            .await;
            report("resync (drift check)", s, k, p, t);

            let grown: Vec<_> = (0..s).map(|i| spec(&seed, i, k + 1)).collect();
            let t = Instant::now();
            each(&grown, |sp| async move {
                p.update_targets(&sp).await.expect("node add");
            })
            .await;
            report("node added", s, k, p, t);

            let t = Instant::now();
            each(&specs, |sp| async move {
                p.update_targets(&sp).await.expect("node remove");
            })
            .await;
            report("node removed", s, k, p, t);

            let t = Instant::now();
            each(&specs, |sp| async move {
                p.ensure_deleted(&sp.lb).await.expect("delete")
            })
            .await;
            report("delete", s, k, p, t);
        }
    }
}
