//! Benchmark: the HAProxy mode through the controller, at scale.
//!
//!   cargo run --release --example haproxy_controller -- [SERVICES] [NODES] [CONCURRENCY] [CLUSTER_IP] [EXCLUDED_NODES] [THREADS]
//!
//! Defaults: 1,000 LoadBalancer Services, 50 Nodes, concurrency 8 (the
//! controller's default), no other Services or Nodes. CLUSTER_IP ClusterIP
//! Services (in the same namespace, so the controller caches them) and
//! EXCLUDED_NODES Nodes of a real node's size (labels, annotations, 50
//! images, conditions; labelled `exclude-from-external-load-balancers`, so
//! watched but never targets) make the cluster around it realistic. THREADS
//! is haproxy's `nbthread` (`--haproxy-threads`; 0, the default: one per
//! CPU). The real API server (started, or the one
//! `FERRYLB_ENV_DIR` names), the controller in this process with the HAProxy
//! provider and a real haproxy, Nodes on 127.0.3.x with shared node checks
//! (`--haproxy-node-check-port`), which listeners here answer as healthy
//! kube-proxies do. Reports, each with the reloads it took
//! (from the master's `show proc`):
//! - cold start: SERVICES Services exist, the controller starts, until every
//!   one has an address;
//! - once the cold start's Events are published, a burst of 100 Services
//!   created back to back: create → address, p50 and p99;
//! - a Node added, and one removed: until every backend in HAProxy (admin
//!   socket, `show servers state`) has it, or no longer has it;
//! - a Node added again, and right after it a second burst of 100 (deleted
//!   again afterwards): create → address, and how long its load took;
//! - this process's and haproxy's peak memory (VmHWM; this process's is
//!   also printed after each phase);
//! - a restart: a new controller and provider (adopting the running
//!   haproxy) until every Service was reconciled and found its load
//!   balancer, with the reloads it took;
//! - the burst's 100 Services deleted back to back: delete → gone (load
//!   balancer removed, finalizer with it), p50 and p99.
//!
//! It runs itself with `MALLOC_MMAP_THRESHOLD_=131072`, as FerryLB's image
//! and chart do.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrylb_haproxy::{HaproxyProvider, HaproxySettings};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams};
use support::harness::{Harness, first_ingress};
use support::{kube as k, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// glibc's fixed mmap threshold, which the Dockerfile and the chart set.
const MMAP_THRESHOLD: &str = "MALLOC_MMAP_THRESHOLD_";

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Where this process's peak memory was reached: printed after each phase.
fn peak_so_far(after: &str) {
    println!(
        "  (this process's peak memory after {after}: {} MiB)",
        vm_hwm_kib("self") / 1024
    );
}

fn vm_hwm_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The pids of the haproxy processes (master and workers) running `config`.
fn haproxy_processes(config: &std::path::Path) -> Vec<String> {
    let config = config.as_os_str().as_encoded_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.to_owned();
            pid.bytes().all(|b| b.is_ascii_digit()).then_some(pid)
        })
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.ends_with(b"haproxy"))
                && args.windows(2).any(|w| w[0] == b"-f" && w[1] == config)
        })
        .collect()
}

/// `show servers state` on the admin socket.
async fn servers_state(socket: &std::path::Path) -> String {
    let Ok(mut s) = tokio::net::UnixStream::connect(socket).await else {
        return String::new();
    };
    let _ = s.write_all(b"show servers state\n").await;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// Answers HAProxy's node checks (`GET /healthz` on the node check port)
/// for every node address in `addrs` with 200, as a healthy kube-proxy does:
/// the benchmark's nodes are healthy, as most of a cluster's are. (Without
/// it every node's check fails, and each reload is followed a few seconds
/// later by every server of every backend going down, one log line each:
/// 100,000 lines at 2,000 Services, not what a node change costs.)
fn healthy_nodes(addrs: impl IntoIterator<Item = String>, port: u16) {
    for addr in addrs {
        let listener = std::net::TcpListener::bind((addr.as_str(), port))
            .unwrap_or_else(|e| panic!("binding the node check {addr}:{port}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = conn.read(&mut request).await;
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
    }
}

/// How many backends hold a server named `server`.
async fn backends_with(socket: &std::path::Path, server: &str) -> usize {
    servers_state(socket)
        .await
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some(server))
        .count()
}

/// The benchmark's load balancers (`bench=lb`) or its burst (`bench=burst`):
/// the client's own lists stay small whatever else the namespace holds, so
/// the process's peak memory is the controller's.
fn labelled(value: &str) -> ListParams {
    ListParams::default().labels(&format!("bench={value}"))
}

/// When each Service of the burst (`bench=burst`) first had an address, and
/// when each was gone, as a watch reports them: the client measures without
/// listing the namespace 50 times a second, which at 10,000 Services loaded
/// the API server the controller writes to.
struct BurstWatch {
    addressed: Arc<Mutex<HashMap<String, Instant>>>,
    gone: Arc<Mutex<HashMap<String, Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

impl BurstWatch {
    fn start(services: Api<Service>) -> Self {
        use futures::StreamExt as _;
        use kube::runtime::watcher;
        let (addressed, gone) = (Seen::default(), Seen::default());
        let (a, g) = (addressed.clone(), gone.clone());
        let task = tokio::spawn(async move {
            let events = watcher(services, watcher::Config::default().labels("bench=burst"));
            futures::pin_mut!(events);
            while let Some(ev) = events.next().await {
                let now = Instant::now();
                match ev {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s))
                        if first_ingress(&s).and_then(|i| i.ip).is_some() =>
                    {
                        let name = s.metadata.name.unwrap_or_default();
                        a.lock().unwrap().entry(name).or_insert(now);
                    }
                    Ok(watcher::Event::Delete(s)) => {
                        let name = s.metadata.name.unwrap_or_default();
                        g.lock().unwrap().entry(name).or_insert(now);
                    }
                    _ => {}
                }
            }
        });
        Self {
            addressed,
            gone,
            task,
        }
    }

    /// Each of `started` (name, when) until `seen` has it, sorted.
    async fn latencies(seen: &Seen, started: &[(String, Instant)]) -> Vec<Duration> {
        loop {
            let got: Option<Vec<Duration>> = {
                let seen = seen.lock().unwrap();
                started
                    .iter()
                    .map(|(name, at)| seen.get(name).map(|t| t.saturating_duration_since(*at)))
                    .collect()
            };
            if let Some(mut l) = got {
                l.sort();
                return l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `act` on a burst's 100 names (`b0`…`b99` for `b`), one after another:
/// when each began, and how long all took.
async fn one_after_another<F, Fut>(prefix: &str, mut act: F) -> (Vec<(String, Instant)>, Duration)
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let t0 = Instant::now();
    let mut began = Vec::new();
    for i in 0..100 {
        let name = format!("{prefix}{i}");
        began.push((name.clone(), Instant::now()));
        act(name).await;
    }
    (began, t0.elapsed())
}

/// A Node as big as a real one: what a kubelet reports, minus nothing.
fn realistic_node(name: &str, ip: &str, label: &str) -> k8s_openapi::api::core::v1::Node {
    use k8s_openapi::api::core::v1::{ContainerImage, NodeCondition};
    let mut n = k::node(name, ip);
    n.metadata.labels = Some(
        [
            (label.to_owned(), "true".to_owned()),
            (
                "node.kubernetes.io/exclude-from-external-load-balancers".to_owned(),
                "true".to_owned(),
            ),
            ("kubernetes.io/hostname".to_owned(), name.to_owned()),
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
            (
                "node.kubernetes.io/instance-type".to_owned(),
                "m5.xlarge".to_owned(),
            ),
            (
                "topology.kubernetes.io/zone".to_owned(),
                "zone-a".to_owned(),
            ),
            (
                "topology.kubernetes.io/region".to_owned(),
                "region-1".to_owned(),
            ),
        ]
        .into(),
    );
    n.metadata.annotations = Some(
        [
            ("node.alpha.kubernetes.io/ttl".to_owned(), "0".to_owned()),
            (
                "volumes.kubernetes.io/controller-managed-attach-detach".to_owned(),
                "true".to_owned(),
            ),
            (
                "csi.volume.kubernetes.io/nodeid".to_owned(),
                format!("{{\"ebs.csi.aws.com\":\"{name}\"}}"),
            ),
        ]
        .into(),
    );
    let status = n.status.get_or_insert_default();
    status.images = Some(
        (0..50)
            .map(|i| ContainerImage {
                names: Some(vec![
                    format!("registry.example.com/team/service-{i}@sha256:{:064x}", i),
                    format!("registry.example.com/team/service-{i}:v1.{i}.0"),
                ]),
                size_bytes: Some(50_000_000 + i),
            })
            .collect(),
    );
    status.conditions = Some(
        ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
            .iter()
            .map(|t| NodeCondition {
                type_: (*t).to_owned(),
                status: if *t == "Ready" { "True" } else { "False" }.to_owned(),
                reason: Some(format!("Kubelet{t}")),
                message: Some(format!("kubelet reports {t} as expected")),
                ..Default::default()
            })
            .collect(),
    );
    n
}

/// How many of the load balancers have an address, read 200 at a time.
async fn addressed(services: &Api<Service>) -> usize {
    let mut count = 0;
    let mut params = labelled("lb").limit(200);
    loop {
        let Ok(page) = services.list(&params).await else {
            return 0;
        };
        count += page
            .items
            .iter()
            .filter(|s| first_ingress(s).and_then(|i| i.ip).is_some())
            .count();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return count,
        }
    }
}

#[tokio::main]
async fn main() {
    // Measure the allocator as FerryLB's image and chart run it.
    if std::env::var_os(MMAP_THRESHOLD).is_none() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env(MMAP_THRESHOLD, "131072")
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    let (n_services, n_nodes, concurrency) = (arg(1, 1000), arg(2, 50), arg(3, 8) as u16);
    let (n_cluster_ip, n_excluded) = (arg(4, 0), arg(5, 0));
    let threads = u16::try_from(arg(6, 0)).ok().filter(|t| *t > 0);
    let dir = support::env::tempdir("haproxy-controller");
    const NODE_CHECK_PORT: u16 = 10256;
    healthy_nodes(
        (1..=n_nodes)
            .chain([249, 250])
            .map(|i| format!("127.0.3.{i}")),
        NODE_CHECK_PORT,
    );
    let settings = || HaproxySettings {
        hard_stop_after: Duration::from_secs(5),
        node_check_port: Some(NODE_CHECK_PORT),
        threads,
        ..HaproxySettings::in_dir("127.1.0.0/16".parse().unwrap(), &dir)
    };
    let mut h = Harness::new("bench-hc", |_| HaproxyProvider::new(settings())).await;
    for i in 0..n_nodes {
        h.node(&format!("n{i}"), &format!("127.0.3.{}", i + 1))
            .await;
    }
    let nodes_api = Api::<k8s_openapi::api::core::v1::Node>::all(h.client.clone());
    for chunk in (0..n_excluded).collect::<Vec<_>>().chunks(50) {
        futures::future::join_all(chunk.iter().map(|i| {
            let name = format!("{}-x{i}", h.ns);
            h.nodes.push(name.clone());
            let node = realistic_node(&name, &format!("127.0.4.{}", i % 250 + 1), &h.label);
            let api = nodes_api.clone();
            async move { api.create(&PostParams::default(), &node).await.unwrap() }
        }))
        .await;
    }
    let services = h.services();
    for chunk in (0..n_cluster_ip).collect::<Vec<_>>().chunks(50) {
        futures::future::join_all(chunk.iter().map(|i| {
            let mut svc = k::lb_service(&format!("c{i}"), &[80, 443]);
            svc.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
            let services = services.clone();
            async move { services.create(&PostParams::default(), &svc).await.unwrap() }
        }))
        .await;
    }
    let class = h.class.clone();
    let create = |name: String, group: &'static str| {
        let services = services.clone();
        let class = class.clone();
        async move {
            let mut svc = k::lb_service(&name, &[80]);
            svc.metadata.labels = Some([("bench".to_owned(), group.to_owned())].into());
            svc.spec.as_mut().unwrap().load_balancer_class = Some(class);
            services.create(&PostParams::default(), &svc).await.unwrap();
        }
    };
    let delete = |name: String| {
        let services = services.clone();
        async move {
            services.delete(&name, &Default::default()).await.unwrap();
        }
    };
    for chunk in (0..n_services).collect::<Vec<_>>().chunks(50) {
        futures::future::join_all(chunk.iter().map(|i| create(format!("s{i}"), "lb"))).await;
    }
    let provider = h.provider.clone();
    let reloads = || {
        let p = provider.clone();
        async move { p.reload_counters().await.map(|r| r.0).unwrap_or(0) }
    };

    // Cold start.
    let mut cfg = support::controller::config(
        vec![(
            class.clone(),
            h.provider.clone() as std::sync::Arc<dyn ferrylb_model::LoadBalancerProvider>,
        )],
        None,
        &h.ns,
        &h.label,
    );
    cfg.concurrency = concurrency;
    let config_for = |provider: std::sync::Arc<HaproxyProvider>| {
        let mut cfg = cfg.clone();
        cfg.classes = [(
            class.clone(),
            provider as std::sync::Arc<dyn ferrylb_model::LoadBalancerProvider>,
        )]
        .into();
        cfg.telemetry = std::sync::Arc::default();
        cfg
    };
    let started = Instant::now();
    let _ctl = support::controller::RunningController::start(h.client.clone(), cfg.clone());
    wait::until(
        "every Service addressed",
        Duration::from_secs(1800),
        || async { (addressed(&services).await >= n_services).then_some(()) },
    )
    .await;
    println!(
        "cold start, {n_services} Services x {n_nodes} nodes ({n_cluster_ip} ClusterIP Services and {n_excluded} excluded Nodes besides), concurrency {concurrency}: all addressed in {:.1} s, {} reloads after the first start",
        started.elapsed().as_secs_f64(),
        reloads().await
    );

    peak_so_far("the cold start");
    // The burst is measured at 1,000 existing, not during the cold start's
    // tail: wait until the Events the cold start queued are published (their
    // count in the namespace stops growing).
    let settling = Instant::now();
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(h.client.clone(), &h.ns);
    let count = || {
        let events = events.clone();
        async move {
            let page = events.list(&ListParams::default().limit(1)).await.unwrap();
            page.items.len() as i64 + page.metadata.remaining_item_count.unwrap_or(0)
        }
    };
    let (mut last, mut still) = (count().await, 0);
    while still < 4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = count().await;
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    println!(
        "settled: the cold start's {last} Events published {:.1} s after every Service was addressed",
        settling.elapsed().as_secs_f64()
    );

    // A burst of 100, back to back.
    let burst = BurstWatch::start(services.clone());
    let before = reloads().await;
    let (created_at, creating) = one_after_another("b", |name| create(name, "burst")).await;
    let latencies = BurstWatch::latencies(&burst.addressed, &created_at).await;
    println!(
        "burst of 100 at {n_services} (created in {:.2} s): create -> address p50 {:.2} s, p99 {:.2} s, {} reloads, the last load {:.2} s",
        creating.as_secs_f64(),
        latencies[49].as_secs_f64(),
        latencies[98].as_secs_f64(),
        reloads().await - before,
        provider.last_load_time().as_secs_f64()
    );

    peak_so_far("the burst");
    // A node added, then removed.
    let admin = dir.join("admin.sock");
    let backends = n_services + 100;
    let before = reloads().await;
    let t = Instant::now();
    let added = h.node("extra", "127.0.3.250").await;
    let server = ferrylb_haproxy::render::server_name(&added);
    wait::until(
        "the new node in every backend",
        Duration::from_secs(600),
        || async { (backends_with(&admin, &server).await >= backends).then_some(()) },
    )
    .await;
    println!(
        "node added: in every backend after {:.2} s, {} reloads",
        t.elapsed().as_secs_f64(),
        reloads().await - before
    );
    let before = reloads().await;
    let t = Instant::now();
    k::delete_node(&h.client, &added).await;
    wait::until(
        "the node gone from every backend",
        Duration::from_secs(600),
        || async {
            let state = servers_state(&admin).await;
            // Removed servers drain (admin state 8) until their sessions
            // end, then are deleted: out of rotation either way.
            let live = state
                .lines()
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.get(3) == Some(&server.as_str()) && f.get(6) == Some(&"0")
                })
                .count();
            (!state.is_empty() && live == 0).then_some(())
        },
    )
    .await;
    println!(
        "node removed: out of every backend after {:.2} s, {} reloads",
        t.elapsed().as_secs_f64(),
        reloads().await - before
    );

    peak_so_far("the node changes");
    // A burst right after a node change: the runtime API changed every
    // backend, and the burst's load checks only its own 100 (the node
    // change is checked once its file is written, off the reconciles'
    // path). Deleted again afterwards, so what follows is measured as
    // before.
    let before = reloads().await;
    let again = h.node("again", "127.0.3.249").await;
    let server = ferrylb_haproxy::render::server_name(&again);
    wait::until(
        "the node in every backend",
        Duration::from_secs(600),
        || async { (backends_with(&admin, &server).await >= backends).then_some(()) },
    )
    .await;
    let (created_at, creating) = one_after_another("a", |name| create(name, "burst")).await;
    let latencies = BurstWatch::latencies(&burst.addressed, &created_at).await;
    println!(
        "burst of 100 right after a node was added (created in {:.2} s): create -> address p50 {:.2} s, p99 {:.2} s, {} reloads, the last load {:.2} s",
        creating.as_secs_f64(),
        latencies[49].as_secs_f64(),
        latencies[98].as_secs_f64(),
        reloads().await - before,
        provider.last_load_time().as_secs_f64()
    );
    let (deleted_at, _) = one_after_another("a", delete).await;
    BurstWatch::latencies(&burst.gone, &deleted_at).await;

    let haproxy = haproxy_processes(&dir.join("haproxy.cfg"));
    let haproxy_kib: u64 = haproxy.iter().map(|pid| vm_hwm_kib(pid)).sum();
    println!(
        "peak memory: this process (controller, provider, test client) {} MiB; haproxy ({} processes: master and workers) {} MiB",
        vm_hwm_kib("self") / 1024,
        haproxy.len(),
        haproxy_kib / 1024
    );
    peak_so_far("the burst after a node change");
    // A restart: the controller stops, a new one starts with a new provider
    // (no memory) on the same directory, which adopts the running haproxy;
    // steady once every Service was reconciled and found its load balancer
    // (the new process counts it then).
    _ctl.stop().await;
    let before = reloads().await;
    let t = Instant::now();
    let fresh = std::sync::Arc::new(HaproxyProvider::new(settings()));
    let cfg = config_for(fresh.clone());
    let telemetry = cfg.telemetry.clone();
    let _ctl = support::controller::RunningController::start(h.client.clone(), cfg);
    let total = n_services + 100;
    wait::until(
        "every Service reconciled after the restart",
        Duration::from_secs(600),
        || {
            let telemetry = telemetry.clone();
            async move {
                let known: usize = telemetry
                    .encode()
                    .lines()
                    .filter(|l| !l.starts_with('#') && l.contains("load_balancers{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as usize;
                (known >= total).then_some(())
            }
        },
    )
    .await;
    println!(
        "restart: every Service reconciled and its load balancer found after {:.2} s, {} reloads",
        t.elapsed().as_secs_f64(),
        reloads().await - before
    );

    // The burst deleted, back to back: until each Service is gone (its load
    // balancer removed and the finalizer with it).
    let before = reloads().await;
    let (deleted_at, deleting) = one_after_another("b", delete).await;
    let latencies = BurstWatch::latencies(&burst.gone, &deleted_at).await;
    burst.task.abort();
    println!(
        "burst of 100 deleted (in {:.2} s): delete -> gone p50 {:.2} s, p99 {:.2} s, {} reloads",
        deleting.as_secs_f64(),
        latencies[49].as_secs_f64(),
        latencies[98].as_secs_f64(),
        reloads().await - before
    );

    // The test API server has no namespace controller: the Services go one
    // by one, so that their nodePorts are free for the next run.
    drop(_ctl);
    let all = services.list(&ListParams::default()).await.unwrap();
    for chunk in all.items.chunks(50) {
        futures::future::join_all(chunk.iter().map(|s| {
            let services = services.clone();
            let name = s.metadata.name.clone().unwrap_or_default();
            async move {
                let _ = services
                    .patch(
                        &name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(
                            serde_json::json!({"metadata": {"finalizers": null}}),
                        ),
                    )
                    .await;
                let _ = services.delete(&name, &Default::default()).await;
            }
        }))
        .await;
    }
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}
