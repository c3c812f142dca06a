//! Benchmark: the HAProxy provider at scale against the real haproxy.
//!
//!   cargo run --release -p ferrylb-haproxy --example scale -- [SERVICES] [NODES]
//!
//! Defaults to 1,000 Services × 50 nodes. Measures rendering, validation and
//! reload of the whole configuration, a target change through the runtime
//! API, and memory. Binds VIPs in 127.1.0.0/16 and nodes at 127.0.1.x (no
//! listeners: health checks fail fast on loopback, which is fine here).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferrylb_haproxy::process::master_command;
use ferrylb_haproxy::{HaproxyProvider, HaproxySettings};
use ferrylb_model::conformance::sample_spec;
use ferrylb_model::{LoadBalancerProvider, LoadBalancerSpec, Target};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let services = args.first().copied().unwrap_or(1000);
    let nodes = args.get(1).copied().unwrap_or(50);
    let dir = std::env::temp_dir().join(format!("ferrylb-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let provider = HaproxyProvider::new(HaproxySettings {
        hard_stop_after: Duration::from_secs(10),
        node_check_port: Some(10256),
        ..HaproxySettings::in_dir("127.1.0.0/16".parse().unwrap(), &dir)
    });
    let targets: Vec<Target> = (1..=nodes)
        .map(|i| Target {
            node: format!("node-{i:03}"),
            addresses: vec![format!("127.0.1.{i}").parse().unwrap()],
            provider_id: None,
        })
        .collect();
    let specs: Vec<LoadBalancerSpec> = (0..services)
        .map(|i| {
            let mut s = sample_spec(
                "bench",
                &format!("svc-{i:04}"),
                30000 + (i % 2700) as u16,
                targets.clone(),
            );
            s.annotations =
                BTreeMap::from([("ferrylb.io/haproxy-check-interval".into(), "10s".into())]);
            s
        })
        .collect();

    println!(
        "HAProxy provider at {services} Services × {nodes} nodes ({} servers)",
        services * nodes
    );
    let t = Instant::now();
    for s in &specs {
        provider.plan(s).unwrap();
    }
    println!("allocate {services} VIPs: {}", ms(t.elapsed()));
    let t = Instant::now();
    let text = provider.render();
    println!(
        "render: {} ({} lines, {} KiB)",
        ms(t.elapsed()),
        text.lines().count(),
        text.len() / 1024
    );

    let t = Instant::now();
    provider.restore(&[]).await.unwrap();
    println!("validate + install + start haproxy: {}", ms(t.elapsed()));

    // A change to one Service's options: render + validate + reload everything.
    let mut reloads = Vec::new();
    for (round, spec) in specs.iter().take(5).enumerate() {
        let mut s = spec.clone();
        s.annotations.insert(
            "ferrylb.io/haproxy-timeout-client".into(),
            format!("{}s", 61 + round),
        );
        let t = Instant::now();
        provider.ensure(&s).await.unwrap();
        reloads.push(t.elapsed());
    }
    reloads.sort();
    println!(
        "render + validate + reload (5 runs): median {}, min {}, max {}",
        ms(reloads[2]),
        ms(reloads[0]),
        ms(reloads[4])
    );

    // A node leaves: every Service's backend loses one server, through the runtime API.
    let t = Instant::now();
    let mut one = Vec::new();
    for s in &specs {
        let mut fewer = s.clone();
        fewer.targets = fewer.targets[..fewer.targets.len() - 1].into();
        let t1 = Instant::now();
        provider.update_targets(&fewer).await.unwrap();
        one.push(t1.elapsed());
    }
    one.sort();
    let (before, _) = provider.reload_counters().await.unwrap();
    println!(
        "node removed from all {services} Services via runtime API: total {}, per Service median {} (p99 {}), reloads during it: none expected",
        ms(t.elapsed()),
        ms(one[one.len() / 2]),
        ms(one[one.len() * 99 / 100])
    );
    assert_eq!(
        provider.reload_counters().await.unwrap().0,
        before,
        "runtime updates must not reload"
    );

    let procs = master_command(&dir.join("master.sock"), "show proc")
        .await
        .unwrap();
    let pids: Vec<u32> = procs
        .lines()
        .filter(|l| l.contains("master") || l.contains("worker"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    let haproxy_rss: u64 = pids.iter().map(|p| rss_kib(*p)).sum();
    println!("haproxy RSS (master + workers): {} MiB", haproxy_rss / 1024);
    println!(
        "provider process RSS (state for all Services): {} MiB",
        rss_kib(std::process::id()) / 1024
    );
    provider.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
