//! Benchmark: AWS API calls per operation, counted by the provider's SDK
//! interceptor, for S Services of two TCP ports on K nodes (or K pods).
//!
//!   cargo run --release --example aws_calls -- [SERVICES] [NODES] [TARGETS]
//!   cargo run --release --example aws_calls -- 1,100,1000 10,100 instance,ip
//!
//! Runs against the test environment's moto (started, or attached to via
//! FERRYLB_ENV_DIR). For every (S, K) with node targets (`instance`, the
//! default): creates S Services, runs a resync drift check of each, adds a
//! node, removes it, deletes them all. With pod targets (`ip`): creates S
//! Services of K ready pods each, adds a pod, turns one terminating, deletes
//! them all. Prints the calls each operation made in total, per Service,
//! and by operation name. Pacing is scaled up (moto does not throttle), so
//! the counts are what AWS would see; the times are moto's.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use ferrylb_aws::AwsProvider;
use ferrylb_model::{
    Endpoint, Listener, LoadBalancerProvider, LoadBalancerSpec, Protocol, Target, conformance,
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

/// [`spec`] with `nlb-target-type: ip` and `pods` ready pods (the last one
/// terminating when `terminating`), serving `http` on 8080 and `https` on
/// 8443.
fn pod_spec(seed: &Seed, i: usize, pods: usize, terminating: bool) -> LoadBalancerSpec {
    let mut spec = spec(seed, i, 0);
    spec.annotations.insert(
        "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type".into(),
        "ip".into(),
    );
    let endpoints: Vec<Endpoint> = (0..pods)
        .flat_map(|n| {
            let ready = !(terminating && n + 1 == pods);
            let address = format!("10.0.{}.{}", 100 + n / 250, n % 250 + 1);
            [("http", 8080), ("https", 8443)].map(|(name, port)| Endpoint {
                port_name: name.into(),
                protocol: Protocol::Tcp,
                address: address.parse().expect("an address"),
                port,
                ready,
                terminating: !ready,
                node: None,
                zone: None,
            })
        })
        .collect();
    spec.endpoints = Some(endpoints.into());
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
    let kinds: Vec<String> = args
        .next()
        .unwrap_or_else(|| "instance".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let env = support::env::shared();
    let conf = aws::sdk_config(env).await;
    println!("| Services | nodes | operation | calls | per Service | by operation | time (moto) |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for &k in &nodes {
        let seed = aws::seed(&conf, k + 1).await;
        for &s in services.iter().filter(|_| kinds.iter().any(|k| k == "ip")) {
            pods(&conf, &seed, s, k).await;
        }
        for &s in services
            .iter()
            .filter(|_| kinds.iter().any(|k| k == "instance"))
        {
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

/// The pod-target operations for `s` Services of `k` pods.
async fn pods(conf: &aws_config::SdkConfig, seed: &Seed, s: usize, k: usize) {
    let owned = aws::provider(conf, seed);
    let p = &owned;
    let specs: Vec<_> = (0..s).map(|i| pod_spec(seed, i, k, false)).collect();
    let t = Instant::now();
    each(&specs, |sp| async move {
        p.ensure(&sp).await.map(drop).expect("create")
    })
    .await;
    report("create (pods)", s, k, p, t);

    let grown: Vec<_> = (0..s).map(|i| pod_spec(seed, i, k + 1, false)).collect();
    let t = Instant::now();
    each(&grown, |sp| async move {
        p.update_targets(&sp).await.expect("pod add");
    })
    .await;
    report("pod added", s, k, p, t);

    let going: Vec<_> = (0..s).map(|i| pod_spec(seed, i, k + 1, true)).collect();
    let t = Instant::now();
    each(&going, |sp| async move {
        p.update_targets(&sp).await.expect("pod terminating");
    })
    .await;
    report("pod terminating", s, k, p, t);

    let t = Instant::now();
    each(&specs, |sp| async move {
        p.ensure_deleted(&sp.lb).await.expect("delete")
    })
    .await;
    report("delete (pods)", s, k, p, t);
}
