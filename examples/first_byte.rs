//! Benchmark: Service created → first byte through its VIP, end to end.
//!
//!   cargo run --release --example first_byte -- [ROUNDS]
//!
//! Starts (or attaches to, via FERRYLB_ENV_DIR) the test environment's API
//! server, runs the controller in-process with the HAProxy provider and a
//! real haproxy, creates three Nodes with stand-in listeners, then for each
//! round creates a LoadBalancer Service and times until a byte comes back
//! through VIP:80. Reports each round and the median.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferrylb_haproxy::{HaproxyProvider, HaproxySettings};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use support::harness::Harness;
use support::{kube as k, traffic, wait};

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let dir = support::env::tempdir("first-byte");
    let mut h = Harness::new("bench-fb", |_| {
        HaproxyProvider::new(HaproxySettings {
            hard_stop_after: Duration::from_secs(5),
            ..HaproxySettings::in_dir("127.0.0.200-127.0.0.250".parse().unwrap(), &dir)
        })
    })
    .await;
    for (n, ip) in [
        ("n1", "127.0.0.11"),
        ("n2", "127.0.0.12"),
        ("n3", "127.0.0.13"),
    ] {
        h.node(n, ip).await;
    }
    let _ctl = h.start(false);
    let services: Api<Service> = h.services();
    let mut times = Vec::new();
    let mut listeners = Vec::new();
    for i in 0..rounds {
        let name = format!("fb-{i}");
        let mut svc = k::lb_service(&name, &[80]);
        svc.spec.as_mut().unwrap().load_balancer_class = Some(h.class.clone());
        let start = Instant::now();
        let created = services.create(&PostParams::default(), &svc).await.unwrap();
        // Stand-ins listen on the nodePort the API server just allocated.
        let np = created.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .node_port
            .unwrap() as u16;
        for ip in ["127.0.0.11", "127.0.0.12", "127.0.0.13"] {
            listeners.push(traffic::answer(ip, np, "ok").await);
        }
        wait::until(
            "first byte through the VIP",
            Duration::from_secs(60),
            || async {
                let svc = services.get(&name).await.ok()?;
                let ip = support::harness::first_ingress(&svc)?.ip?.parse().ok()?;
                traffic::reply_from(SocketAddr::new(ip, 80), None).await
            },
        )
        .await;
        let took = start.elapsed();
        println!("round {i}: {:.0} ms", took.as_secs_f64() * 1000.0);
        times.push(took);
    }
    times.sort();
    println!(
        "Service created -> first byte through the VIP: median {:.0} ms over {rounds} rounds (min {:.0} ms, max {:.0} ms)",
        times[times.len() / 2].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0
    );
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}
