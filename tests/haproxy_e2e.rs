//! The HAProxy provider end to end: the real API server, the controller, a
//! real haproxy, and real TCP traffic from a VIP to stand-in nodes on
//! 127.0.0.11-14. Each test has its own slice of 127.0.0.0/8 for VIPs and
//! its own haproxy.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ferrylb_haproxy::HaproxyProvider;
use ferrylb_model::conformance;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::controller::{RunningController, config};
use support::haproxy::*;
use support::harness::{Harness, WAIT, condition, first_ingress};
use support::traffic;
use support::{kube as k, wait};

#[tokio::test]
async fn haproxy_provider_passes_the_conformance_suite() {
    let p = provider("127.0.0.90-127.0.0.99");
    let t = |n: &str, ip: &str| ferrylb_model::Target {
        node: n.into(),
        addresses: vec![ip.parse().unwrap()],
        provider_id: None,
    };
    let a = conformance::sample_spec(
        "conf",
        "a",
        30001,
        vec![t("n1", "127.0.0.11"), t("n2", "127.0.0.12")],
    );
    let b = conformance::sample_spec(
        "conf",
        "b",
        30002,
        vec![t("n1", "127.0.0.11"), t("n2", "127.0.0.12")],
    );
    conformance::run(&p, &a, &b).await;
    p.shutdown().await;
}

#[tokio::test]
async fn traffic_reaches_every_node_and_follows_node_changes() {
    let mut h = harness("hx-e2e", "127.0.0.100-127.0.0.109").await;
    three_nodes(&mut h).await;
    let _ctl = h.start(false);
    let (svc, ip) = {
        create(&h, k::lb_service("web", &[80])).await;
        wait_vip(&h, "web").await
    };
    assert!((100..=109).contains(&match ip {
        IpAddr::V4(v) => v.octets()[3],
        IpAddr::V6(_) => 0,
    }));
    let np = node_port(&svc, 0);
    let _ls = stand_ins(np, NODES).await;
    let addr = SocketAddr::new(ip, 80);
    wait_answers(addr, &["n1", "n2", "n3"]).await;

    // Excluded: no more traffic to n1.
    let n1 = format!("{}-n1", h.ns);
    Api::<Node>::all(h.client.clone())
        .patch(&n1, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": "true"}}})))
        .await
        .unwrap();
    wait_answers(addr, &["n2", "n3"]).await;
    // Added: traffic to n4. Removed: none to n2.
    h.node("n4", "127.0.0.14").await;
    wait_answers(addr, &["n2", "n3", "n4"]).await;
    k::delete_node(&h.client, &format!("{}-n2", h.ns)).await;
    wait_answers(addr, &["n3", "n4"]).await;

    // Deleted: the frontend goes and the VIP is free again.
    h.services()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    wait::until("the Service and its frontend to go", WAIT, || async {
        (h.services().get_opt("web").await.unwrap().is_none()
            && traffic::reply_from(addr, None).await.is_none())
        .then_some(())
    })
    .await;
    assert!(h.provider.assignments().is_empty());
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn refusals_are_reported_and_leave_other_services_working() {
    let mut h = harness("hx-refuse", "127.0.0.110-127.0.0.111").await;
    h.node("n1", "127.0.0.11").await;
    let _ctl = h.start(false);

    let (a, a_ip) = {
        create(&h, k::lb_service("a", &[80])).await;
        wait_vip(&h, "a").await
    };
    assert_eq!(a_ip.to_string(), "127.0.0.110");
    let _la = traffic::answer("127.0.0.11", node_port(&a, 0), "a").await;

    // Asking for an address in use.
    let mut b = k::lb_service("b", &[80]);
    b.spec.as_mut().unwrap().load_balancer_ip = Some("127.0.0.110".into());
    create(&h, b).await;
    let svc = h
        .wait_service("b's AddressInUse condition", "b", |s| {
            condition(s).is_some_and(|c| c.1 == "AddressInUse")
        })
        .await;
    assert!(condition(&svc).unwrap().2.contains("127.0.0.110"));

    // UDP next to TCP: a Warning, and the TCP port works.
    let mut c = k::lb_service("c", &[81]);
    c.metadata.annotations =
        Some([("ferrylb.io/allow-shared-ip".to_owned(), "k".to_owned())].into());
    c.spec.as_mut().unwrap().ports.as_mut().unwrap().push(
        k8s_openapi::api::core::v1::ServicePort {
            name: Some("dns".into()),
            port: 53,
            protocol: Some("UDP".into()),
            ..Default::default()
        },
    );
    create(&h, c).await;
    let (c, c_ip) = wait_vip(&h, "c").await;
    let _lc = traffic::answer("127.0.0.11", node_port(&c, 0), "c").await;
    wait_answers(SocketAddr::new(c_ip, 81), &["c"]).await;
    let warning = wait::until("an UnsupportedProtocol Warning on c", WAIT, || async {
        k::events(&h.client, &h.ns, "c")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("UnsupportedProtocol"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(warning.note.unwrap().contains("53/UDP"));

    // Sharing c's address on a colliding port.
    let mut d = k::lb_service("d", &[81]);
    d.metadata.annotations = Some(
        [
            ("ferrylb.io/allow-shared-ip".to_owned(), "k".to_owned()),
            ("ferrylb.io/load-balancer-ips".to_owned(), c_ip.to_string()),
        ]
        .into(),
    );
    create(&h, d).await;
    h.wait_service("d's PortCollision condition", "d", |s| {
        condition(s).is_some_and(|c| c.1 == "PortCollision")
    })
    .await;

    // The pool is used up.
    create(&h, k::lb_service("e", &[80])).await;
    h.wait_service("e's PoolExhausted condition", "e", |s| {
        condition(s).is_some_and(|c| c.1 == "PoolExhausted")
    })
    .await;

    // Everyone else kept working throughout.
    wait_answers(SocketAddr::new(a_ip, 80), &["a"]).await;
    let warning = k::events(&h.client, &h.ns, "e")
        .await
        .into_iter()
        .find(|e| e.type_.as_deref() == Some("Warning"))
        .expect("a Warning on e");
    assert!(warning.note.unwrap().contains("pool"));

    // Freeing a's address lets b have it at once (no waiting for a retry timer).
    h.services()
        .delete("e", &DeleteParams::default())
        .await
        .unwrap();
    h.services()
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    let (_, b_ip) = wait_vip(&h, "b").await;
    assert_eq!(b_ip.to_string(), "127.0.0.110");
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn a_port_another_process_holds_is_named_and_costs_only_its_service() {
    let mut h = harness("hx-taken", "127.0.0.170-127.0.0.171").await;
    h.node("n1", "127.0.0.11").await;
    // Something else on the host listens on every address's port P.
    let squatter = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let _ctl = h.start(false);

    create(&h, k::lb_service("taken", &[i32::from(port)])).await;
    let svc = h
        .wait_service("taken's PortInUse condition", "taken", |s| {
            condition(s).is_some_and(|c| c.1 == "PortInUse")
        })
        .await;
    let message = condition(&svc).unwrap().2;
    assert!(message.contains(&format!(":{port}")), "{message}");
    let note = wait::until("a Warning naming the port", WAIT, || async {
        k::events(&h.client, &h.ns, "taken")
            .await
            .into_iter()
            .filter_map(|e| e.note)
            .find(|n| n.contains("PortInUse") || n.contains(&format!(":{port}")))
    })
    .await;
    assert!(note.contains(&format!(":{port}")), "{note}");

    // The next Service is served: the failure did not block reloads.
    create(&h, k::lb_service("fine", &[80])).await;
    let (fine, ip) = wait_vip(&h, "fine").await;
    let _l = traffic::answer("127.0.0.11", node_port(&fine, 0), "fine").await;
    wait_answers(SocketAddr::new(ip, 80), &["fine"]).await;
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn a_service_with_only_udp_ports_holds_no_address_and_is_not_ready() {
    let mut h = harness("hx-udp", "127.0.0.175/32").await;
    h.node("n1", "127.0.0.11").await;
    let _ctl = h.start(false);
    let mut svc = k::lb_service("dns", &[53]);
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
    create(&h, svc).await;
    let dns = h
        .wait_service("dns's UnsupportedProtocol condition", "dns", |s| {
            condition(s).is_some_and(|c| c.0 == "False" && c.1 == "UnsupportedProtocol")
        })
        .await;
    assert!(
        first_ingress(&dns).is_none(),
        "an address for a Service HAProxy cannot serve"
    );
    // The pool's only address is free for a Service that can use it.
    create(&h, k::lb_service("web", &[80])).await;
    let (_, ip) = wait_vip(&h, "web").await;
    assert_eq!(ip.to_string(), "127.0.0.175");
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn twenty_services_at_once_with_concurrency_two_cost_a_handful_of_reloads() {
    let mut h = harness("hx-burst", "127.0.2.0-127.0.2.29").await;
    h.node("n1", "127.0.0.11").await;
    let _ctl = start_at_concurrency(&h, 2);
    // One Service first, so that HAProxy runs before the burst.
    create(&h, k::lb_service("s0", &[80])).await;
    wait_vip(&h, "s0").await;
    let (reloads_before, _) = h.provider.reload_counters().await.unwrap();

    let names: Vec<String> = (1..=20).map(|i| format!("s{i}")).collect();
    futures::future::join_all(names.iter().map(|n| create(&h, k::lb_service(n, &[80])))).await;
    for n in &names {
        wait_vip(&h, n).await;
    }
    let (reloads, failed) = h.provider.reload_counters().await.unwrap();
    let burst = reloads - reloads_before;
    eprintln!("20 Services at concurrency 2: {burst} reloads");
    assert!(burst <= 5, "{burst} reloads for 20 Services");
    assert_eq!(failed, 0);
    // Every one of them is really served.
    let svc = h.services().get("s20").await.unwrap();
    let _l = traffic::answer("127.0.0.11", node_port(&svc, 0), "s20").await;
    wait_answers(SocketAddr::new(vip(&svc).unwrap(), 80), &["s20"]).await;

    // Deleted at once, they go the same way.
    let (reloads_before, _) = h.provider.reload_counters().await.unwrap();
    futures::future::join_all(names.iter().map(|n| async {
        h.services()
            .delete(n, &DeleteParams::default())
            .await
            .unwrap()
    }))
    .await;
    for n in &names {
        wait::until(&format!("{n} to be gone"), WAIT, || async {
            h.services()
                .get_opt(n)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }
    let (reloads, failed) = h.provider.reload_counters().await.unwrap();
    let burst = reloads - reloads_before;
    eprintln!("20 Services deleted at concurrency 2: {burst} reloads");
    assert!(burst <= 5, "{burst} reloads for 20 deletions");
    assert_eq!(failed, 0);
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

/// A harness with nodes n1 and n2, its controller running, and a Service
/// `web` (port 80) provisioned: the harness, the controller, the VIP and
/// the Service's nodePort.
async fn web_on_two_nodes(
    prefix: &str,
    pool: &'static str,
) -> (Harness<HaproxyProvider>, RunningController, IpAddr, u16) {
    let mut h = harness(prefix, pool).await;
    for (ip, n) in &NODES[..2] {
        h.node(n, ip).await;
    }
    let ctl = h.start(false);
    create(&h, k::lb_service("web", &[80])).await;
    let (svc, ip) = wait_vip(&h, "web").await;
    let np = node_port(&svc, 0);
    (h, ctl, ip, np)
}

/// A node that stops answering (here: refuses; a dead host's connections
/// time out after `timeout connect`, 250 ms by default, as in the next
/// test) costs no client connection while its health check still says it
/// is up: HAProxy retries the connection on another node (`option
/// redispatch`).
#[tokio::test]
async fn a_node_that_stops_answering_costs_no_connection_before_its_check_notices() {
    let (h, _ctl, ip, np) = web_on_two_nodes("hx-redispatch", "127.0.2.30-127.0.2.39").await;
    let mut answering = stand_ins(np, &NODES[..2]).await;
    let addr = SocketAddr::new(ip, 80);
    wait_answers(addr, &["n1", "n2"]).await;

    // Checked every 2 s, and after a failed check every 250 ms until three
    // failed: n2 most likely stays up in HAProxy's eyes while the 20
    // connections are made (what is asserted holds either way).
    drop(answering.pop());
    let n2: SocketAddr = format!("127.0.0.12:{np}").parse().unwrap();
    wait::until("n2 to refuse connections", WAIT, || async {
        tokio::net::TcpStream::connect(n2)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(traffic::reply_from(addr, None).await);
    }
    assert!(
        answers.iter().all(|a| a.as_deref() == Some("n1")),
        "every connection answered by the node that still answers: {answers:?}"
    );
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

/// A node that answers nothing at all (a dead host: nothing refuses, its
/// connections and its checks time out) costs no client connection, and
/// its check marks it down within seconds: a check's connect gives up
/// after `timeout connect` (250 ms), and after a first failure the next
/// checks come every 250 ms. With HAProxy's defaults (no `timeout check`),
/// each failed check waited out the whole 2 s interval: 12 s. How long it
/// took is printed (BENCHMARKS.md).
#[tokio::test]
async fn a_node_that_answers_nothing_costs_no_connection_and_is_marked_down() {
    let (h, _ctl, ip, np) = web_on_two_nodes("hx-dead", "127.0.2.50-127.0.2.59").await;
    let _n1 = traffic::answer(NODES[0].0, np, "n1").await;
    let mut n2 = traffic::answer_freezable(NODES[1].0, np, "n2").await;
    let addr = SocketAddr::new(ip, 80);
    wait_answers(addr, &["n1", "n2"]).await;
    let n2_state = || async {
        servers_state(&h.provider)
            .await
            .into_iter()
            .find(|(_, server, _, _)| server.ends_with("-n2"))
            .map(|(_, _, _, state)| state)
    };
    wait::until("n2 to be up", WAIT, || async {
        (n2_state().await? == 2).then_some(())
    })
    .await;

    n2.freeze().await;
    let frozen = std::time::Instant::now();
    let mut answers = Vec::new();
    let down = loop {
        answers.push(traffic::reply_from(addr, None).await);
        if n2_state().await == Some(0) {
            break frozen.elapsed();
        }
        assert!(
            frozen.elapsed() < std::time::Duration::from_secs(60),
            "n2 never marked down"
        );
    };
    eprintln!(
        "a node that answers nothing: marked down {:.2}s after it stopped; {} connections meanwhile",
        down.as_secs_f64(),
        answers.len()
    );
    assert!(
        answers.iter().all(|a| a.as_deref() == Some("n1")),
        "every connection answered by the node that answers: {answers:?}"
    );
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

/// A cold start: Services that exist unprovisioned when the controller
/// starts are loaded by one reload (counted from the master socket), at
/// concurrency 2, although planning 300 takes longer than a burst waits;
/// and one Service refused before `ensure` (an invalid annotation) does not
/// hold the others back. The machine is kept busy meanwhile: the hold ends
/// when every Service's reconcile has ended, not after a quiet second.
#[tokio::test]
async fn services_waiting_at_start_up_are_loaded_by_one_reload() {
    let mut h = harness("hx-cold", "127.5.0.0/23").await;
    h.node("n1", "127.0.0.11").await;
    let names: Vec<String> = (1..=300).map(|i| format!("s{i}")).collect();
    for chunk in names.chunks(50) {
        futures::future::join_all(chunk.iter().map(|n| create(&h, k::lb_service(n, &[80])))).await;
    }
    let mut bad = k::lb_service("bad", &[80]);
    bad.metadata.annotations = Some(
        [(
            ferrylb_haproxy::options::TIMEOUT_CONNECT.to_owned(),
            "soon".to_owned(),
        )]
        .into(),
    );
    create(&h, bad).await;

    // Beside a CPU-bound load on every core: what users get must not
    // depend on how busy the machine is.
    let stop = Arc::new(AtomicBool::new(false));
    let burners: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let _ctl = start_at_concurrency(&h, 2);
    for n in &names {
        wait_vip(&h, n).await;
    }
    stop.store(true, Ordering::Relaxed);
    for b in burners {
        b.join().unwrap();
    }
    let (reloads, failed) = h.provider.reload_counters().await.unwrap();
    assert_eq!(
        (reloads, failed),
        (1, 0),
        "300 Services waiting at start-up: one reload after HAProxy started"
    );
    let bad: Service = h.services().get("bad").await.unwrap();
    assert!(first_ingress(&bad).is_none());
    let svc = h.services().get("s300").await.unwrap();
    let _l = traffic::answer("127.0.0.11", node_port(&svc, 0), "s300").await;
    wait_answers(SocketAddr::new(vip(&svc).unwrap(), 80), &["s300"]).await;
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn no_connection_fails_across_ten_runtime_updates_and_ten_reloads() {
    let mut h = harness("hx-reload", "127.0.0.120-127.0.0.129").await;
    three_nodes(&mut h).await;
    let _ctl = h.start(false);
    create(&h, k::lb_service("web", &[80])).await;
    let (svc, ip) = wait_vip(&h, "web").await;
    let np = node_port(&svc, 0);
    let _ls = stand_ins(np, NODES).await;
    let addr = SocketAddr::new(ip, 80);
    wait_answers(addr, &["n1", "n2", "n3"]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            // Bounded: at most 100,000 connections.
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match traffic::reply_from(addr, None).await {
                    Some(_) => ok.fetch_add(1, Ordering::SeqCst),
                    None => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    // Ten node changes: the runtime API, no reload.
    let reloads_before = h.provider.reload_counters().await.unwrap().0;
    let n4 = format!("{}-n4", h.ns);
    for i in 0..10 {
        let before = ok.load(Ordering::SeqCst);
        let present = i % 2 == 0;
        if present {
            k::create_labelled_node(&h.client, &n4, "127.0.0.14", &[(&h.label, "true")]).await;
        } else {
            k::delete_node(&h.client, &n4).await;
        }
        wait::until("the node change to be applied", WAIT, || async {
            (h.provider.render().contains("127.0.0.14") == present).then_some(())
        })
        .await;
        wait::until("traffic after the change", WAIT, || async {
            (ok.load(Ordering::SeqCst) >= before + 20).then_some(())
        })
        .await;
    }
    assert_eq!(
        h.provider.reload_counters().await.unwrap().0,
        reloads_before,
        "node changes must not reload"
    );

    // Ten option changes: ten reloads.
    for i in 0..10 {
        let before = ok.load(Ordering::SeqCst);
        let timeout = format!("{}s", 61 + i);
        h.services()
            .patch("web", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"ferrylb.io/haproxy-timeout-client": timeout}}})))
            .await
            .unwrap();
        let want = reloads_before + 1 + i;
        wait::until("the option change to be loaded", WAIT, || async {
            h.provider
                .reload_counters()
                .await
                .ok()
                .filter(|(n, _)| *n >= want)
        })
        .await;
        wait::until("traffic after the reload", WAIT, || async {
            (ok.load(Ordering::SeqCst) >= before + 20).then_some(())
        })
        .await;
    }
    let (reloads, failed_reloads) = h.provider.reload_counters().await.unwrap();
    assert_eq!(
        reloads,
        reloads_before + 10,
        "each option change reloads once"
    );
    assert_eq!(failed_reloads, 0);
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!(
        "{ok} connections succeeded, {failed} failed across 10 runtime updates and 10 reloads"
    );
    assert_eq!(failed, 0, "{failed} of {} connections failed", ok + failed);
    assert!(ok >= 200);
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn local_traffic_policy_skips_nodes_whose_health_check_fails() {
    let mut h = harness("hx-local", "127.0.0.130-127.0.0.139").await;
    three_nodes(&mut h).await;
    let _ctl = h.start(false);
    let mut svc = k::lb_service("local", &[80]);
    svc.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    svc.metadata.annotations = Some(
        [(
            "ferrylb.io/haproxy-check-interval".to_owned(),
            "200ms".to_owned(),
        )]
        .into(),
    );
    create(&h, svc).await;
    let (svc, ip) = wait_vip(&h, "local").await;
    let np = node_port(&svc, 0);
    let hc = svc.spec.as_ref().unwrap().health_check_node_port.unwrap() as u16;
    let _a = stand_ins(np, &NODES[..3]).await;
    let _h1 = traffic::health("127.0.0.11", hc, 503).await;
    let _h2 = traffic::health("127.0.0.12", hc, 200).await;
    let _h3 = traffic::health("127.0.0.13", hc, 200).await;
    let addr = SocketAddr::new(ip, 80);
    wait_answers(addr, &["n2", "n3"]).await;
    let later = traffic::sample(addr, 30).await;
    assert!(
        !later.contains("n1"),
        "n1 answers 503 on its health check and must get no traffic: {later:?}"
    );
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn source_ranges_refuse_other_clients() {
    let mut h = harness("hx-src", "127.0.0.140-127.0.0.149").await;
    h.node("n1", "127.0.0.11").await;
    let _ctl = h.start(false);
    let mut svc = k::lb_service("guarded", &[80]);
    svc.spec.as_mut().unwrap().load_balancer_source_ranges = Some(vec!["127.0.0.50/32".into()]);
    create(&h, svc).await;
    let (svc, ip) = wait_vip(&h, "guarded").await;
    let _l = traffic::answer("127.0.0.11", node_port(&svc, 0), "n1").await;
    let addr = SocketAddr::new(ip, 80);
    wait::until("the allowed client to get through", WAIT, || {
        traffic::reply_from(addr, Some("127.0.0.50"))
    })
    .await;
    for _ in 0..5 {
        assert_eq!(
            traffic::reply_from(addr, Some("127.0.0.51")).await,
            None,
            "a client outside the range got through"
        );
    }
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

#[tokio::test]
async fn restarting_the_controller_keeps_every_vip() {
    let mut h = harness("hx-restart", "127.0.0.150-127.0.0.159").await;
    h.node("n1", "127.0.0.11").await;
    let ctl = h.start(false);
    create(&h, k::lb_service("a", &[80])).await;
    create(&h, k::lb_service("b", &[80])).await;
    let (a, a_ip) = wait_vip(&h, "a").await;
    let (_, b_ip) = wait_vip(&h, "b").await;
    ctl.stop().await;
    h.provider.shutdown().await;

    // A new process: new provider (no memory), new haproxy. A Service
    // created first must not take a or b's address.
    create(&h, k::lb_service("c", &[80])).await;
    let fresh = Arc::new(provider("127.0.0.150-127.0.0.159"));
    let _ctl = RunningController::start(
        h.client.clone(),
        config(
            vec![(h.class.clone(), fresh.clone())],
            None,
            &h.ns,
            &h.label,
        ),
    );
    let (_, c_ip) = wait_vip(&h, "c").await;
    assert_ne!(c_ip, a_ip);
    assert_ne!(c_ip, b_ip);
    for (name, ip) in [("a", a_ip), ("b", b_ip)] {
        let svc: Service = h.services().get(name).await.unwrap();
        assert_eq!(
            vip(&svc),
            Some(ip),
            "{name} changed address across a restart"
        );
    }
    let _l = traffic::answer("127.0.0.11", node_port(&a, 0), "a").await;
    wait_answers(SocketAddr::new(a_ip, 80), &["a"]).await;
    fresh.shutdown().await;
    h.cleanup_nodes().await;
}

/// `show servers state` on the provider's admin socket: (backend, server,
/// address, operational state) for every server.
async fn servers_state(p: &HaproxyProvider) -> Vec<(String, String, String, u8)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(&p.settings().admin_socket)
        .await
        .unwrap();
    s.write_all(b"show servers state\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.get(1)?.to_string(),
                f.get(3)?.to_string(),
                f.get(4)?.to_string(),
                f.get(5)?.parse().ok()?,
            ))
        })
        .collect()
}

#[tokio::test]
async fn a_node_added_under_shared_node_checks_reaches_every_backend_without_a_reload() {
    const CHECK_PORT: u16 = 10257;
    let mut h = Harness::new("hx-addnode", |_| {
        let mut p = provider("127.0.2.40-127.0.2.49");
        let mut settings = p.settings().clone();
        settings.node_check_port = Some(CHECK_PORT);
        p = HaproxyProvider::new(settings);
        p
    })
    .await;
    for (ip, n) in &NODES[..2] {
        h.node(n, ip).await;
    }
    let _health: Vec<_> = futures::future::join_all(
        NODES[..3]
            .iter()
            .map(|(ip, _)| traffic::health(ip, CHECK_PORT, 200)),
    )
    .await;
    let _ctl = h.start(false);
    let names = ["a", "b", "c"];
    for n in names {
        create(&h, k::lb_service(n, &[80])).await;
    }
    let mut answerers = Vec::new();
    let mut addrs = Vec::new();
    for n in names {
        let (svc, ip) = wait_vip(&h, n).await;
        answerers.extend(stand_ins(node_port(&svc, 0), &NODES[..3]).await);
        addrs.push(SocketAddr::new(ip, 80));
    }
    for addr in &addrs {
        wait_answers(*addr, &["n1", "n2"]).await;
    }
    let (reloads_before, _) = h.provider.reload_counters().await.unwrap();

    let n3 = h.node("n3", "127.0.0.13").await;
    let state = wait::until("n3 in every backend, tracking its check", WAIT, || async {
        let state = servers_state(&h.provider).await;
        let backends: Vec<_> = state
            .iter()
            .filter(|(b, s, _, op)| b.starts_with("be_") && *s == n3 && *op == 2)
            .collect();
        (backends.len() == names.len()).then_some(state)
    })
    .await;
    // n3 is checked once, by a spare check server now pointing at it.
    assert!(
        state.iter().any(|(b, s, a, op)| b == "ferrylb_node_checks"
            && s.starts_with("ferrylb_spare_")
            && a == "127.0.0.13"
            && *op == 2),
        "n3's shared check: {state:?}"
    );
    for addr in &addrs {
        wait_answers(*addr, &["n1", "n2", "n3"]).await;
    }
    // Every Service's reconcile finished, also those whose change waited
    // for another's batch (told Pending, then asked again).
    for n in names {
        wait::until("the node change told on every Service", WAIT, || async {
            k::events(&h.client, &h.ns, n)
                .await
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some(ferrylb_model::reason::UPDATED)
                        && e.note.as_deref().is_some_and(|n| n.contains("(3 targets)"))
                })
                .then_some(())
        })
        .await;
    }
    let (reloads, failed) = h.provider.reload_counters().await.unwrap();
    assert_eq!(reloads, reloads_before, "a node added costs no reload");
    assert_eq!(failed, 0);
    // The file caught up: a reload now would serve the same.
    wait::until("the file to name n3", WAIT, || async {
        std::fs::read_to_string(&h.provider.settings().process.config_path)
            .ok()
            .filter(|c| c.contains(&format!("track ferrylb_node_checks/{n3}")))
    })
    .await;
    // And was checked, off the reconciles' path: the next burst checks
    // only its own changes.
    wait::until("the node change to be checked", WAIT, || async {
        (h.provider.unchecked_services().await == 0).then_some(())
    })
    .await;
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

/// A follower (serving the leader's Services read-only) takes a node
/// change through the runtime API too: no reload, shared checks or not.
#[tokio::test]
async fn a_follower_serves_a_node_change_without_a_reload() {
    let p = {
        let mut settings = provider("127.0.2.60-127.0.2.69").settings().clone();
        settings.node_check_port = Some(10258);
        HaproxyProvider::new(settings)
    };
    let target = |node: &str, ip: &str| ferrylb_model::Target {
        node: node.into(),
        addresses: vec![ip.parse().unwrap()],
        provider_id: None,
    };
    let specs = |nodes: &[(&str, &str)]| -> Vec<ferrylb_model::LoadBalancerSpec> {
        ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut s = conformance::sample_spec(
                    "follower",
                    name,
                    31000 + i as u16,
                    nodes.iter().map(|(n, ip)| target(n, ip)).collect(),
                );
                s.status_ips = vec![format!("127.0.2.{}", 60 + i).parse().unwrap()];
                s
            })
            .collect()
    };
    p.mirror(&specs(&[("n1", "127.0.0.11"), ("n2", "127.0.0.12")]))
        .await
        .unwrap();
    let (reloads, _) = p.reload_counters().await.unwrap();
    p.mirror(&specs(&[
        ("n1", "127.0.0.11"),
        ("n2", "127.0.0.12"),
        ("n3", "127.0.0.13"),
    ]))
    .await
    .unwrap();
    let state = servers_state(&p).await;
    let with_n3 = state
        .iter()
        .filter(|(b, s, _, _)| b.starts_with("be_") && s == "n3")
        .count();
    assert_eq!(with_n3, 2, "{state:?}");
    // A node gone: out of both (drained, then deleted, as on the leader),
    // still no reload.
    p.mirror(&specs(&[("n1", "127.0.0.11"), ("n3", "127.0.0.13")]))
        .await
        .unwrap();
    let (finished, _) = p.advance_drains().await;
    assert_eq!(finished.len(), 2, "{finished:?}");
    let state = servers_state(&p).await;
    assert!(
        !state
            .iter()
            .any(|(b, s, _, _)| b.starts_with("be_") && s == "n2"),
        "{state:?}"
    );
    assert_eq!(p.reload_counters().await.unwrap().0, reloads);
    p.shutdown().await;
}

/// Moves the provider's drains on until `what` holds of a tick's report.
async fn drains_until<T>(
    p: &HaproxyProvider,
    what: &str,
    mut f: impl FnMut(
        &[ferrylb_haproxy::drain::Finished],
        &std::collections::BTreeMap<String, ferrylb_haproxy::drain::Draining>,
    ) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (finished, draining) = p.advance_drains().await;
        if let Some(t) = f(&finished, &draining) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {finished:?} {draining:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A long-lived connection to `addr` that `node` answers.
async fn kept_on(addr: SocketAddr, node: &str) -> traffic::Kept {
    wait::until(&format!("a connection {node} answers"), WAIT, || async {
        traffic::Kept::open(addr).await.filter(|k| k.name == node)
    })
    .await
}

async fn exclude(h: &Harness<HaproxyProvider>, node: &str, excluded: bool) {
    let label = "node.kubernetes.io/exclude-from-external-load-balancers";
    let value = excluded.then_some("true");
    Api::<Node>::all(h.client.clone())
        .patch(
            &format!("{}-{node}", h.ns),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label: value}}})),
        )
        .await
        .unwrap();
}

/// A node leaving a Service drains: the connection it carries goes on,
/// new ones go elsewhere, and its server is deleted once that connection
/// ends (or, past the Service's drain timeout, the connection is cut);
/// a node coming back while it drains takes new connections again.
#[tokio::test]
async fn a_leaving_node_drains_its_connections_and_is_removed_when_they_end() {
    let mut h = harness("hx-drain", "127.0.2.70-127.0.2.79").await;
    for (ip, n) in &NODES[..2] {
        h.node(n, ip).await;
    }
    let _ctl = h.start(false);
    let mut svc = k::lb_service("web", &[80]);
    create(&h, svc.clone()).await;
    svc.metadata.name = Some("api".into());
    svc.metadata.annotations = Some(
        [(
            "ferrylb.io/haproxy-drain-timeout".to_owned(),
            "2s".to_owned(),
        )]
        .into(),
    );
    create(&h, svc).await;
    let mut addrs = Vec::new();
    let mut _servers = Vec::new();
    for name in ["web", "api"] {
        let (svc, ip) = wait_vip(&h, name).await;
        for (ip, n) in &NODES[..2] {
            _servers.push(traffic::answer_kept(ip, node_port(&svc, 0), n).await);
        }
        addrs.push(SocketAddr::new(ip, 80));
    }
    let (web, api) = (addrs[0], addrs[1]);
    wait_answers(web, &["n1", "n2"]).await;

    // n2 leaves: its open connection goes on, new ones reach n1 only.
    let n2 = format!("{}-n2", h.ns);
    let mut kept = kept_on(web, "n2").await;
    exclude(&h, "n2", true).await;
    wait_answers(web, &["n1"]).await;
    for _ in 0..3 {
        assert_eq!(kept.ask().await.as_deref(), Some("n2"));
        let draining = drains_until(&h.provider, "n2 draining", |f, d| {
            // (api's server for n2 carries nothing: it may finish.)
            assert!(
                !f.iter().any(|f| f.backend.contains("-web-")),
                "finished with a connection open: {f:?}"
            );
            d.get(&n2).cloned()
        })
        .await;
        assert_eq!(draining.sessions, 1, "{draining:?}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert!(
        servers_state(&h.provider)
            .await
            .iter()
            .any(|(b, s, ..)| b.contains("-web-") && *s == n2),
        "deleted while its connection was open"
    );
    drop(kept);
    let done = drains_until(&h.provider, "n2's drain to finish", |f, _| {
        f.iter().find(|f| f.backend.contains("-web-")).cloned()
    })
    .await;
    assert_eq!(done.outcome, ferrylb_haproxy::drain::Outcome::Empty);
    assert!(
        !servers_state(&h.provider)
            .await
            .iter()
            .any(|(b, s, ..)| b.contains("-web-") && *s == n2),
        "a drained server is deleted"
    );

    // Back while draining: new connections reach it again, and its drain
    // ends without a report.
    exclude(&h, "n2", false).await;
    wait_answers(web, &["n1", "n2"]).await;
    let mut kept = kept_on(web, "n2").await;
    exclude(&h, "n2", true).await;
    wait_answers(web, &["n1"]).await;
    exclude(&h, "n2", false).await;
    wait_answers(web, &["n1", "n2"]).await;
    assert_eq!(kept.ask().await.as_deref(), Some("n2"));
    let (finished, draining) = h.provider.advance_drains().await;
    assert!(
        finished.is_empty() && !draining.contains_key(&n2),
        "{finished:?} {draining:?}"
    );

    // Past api's drain timeout (2 s), what is still open is cut.
    let mut long = kept_on(api, "n2").await;
    exclude(&h, "n2", true).await;
    wait_answers(api, &["n1"]).await;
    let done = drains_until(&h.provider, "api's drain to time out", |f, _| {
        f.iter().find(|f| f.node == n2).cloned()
    })
    .await;
    assert_eq!(
        done.outcome,
        ferrylb_haproxy::drain::Outcome::TimedOut { cut: 1 }
    );
    assert!(done.took >= std::time::Duration::from_secs(2), "{done:?}");
    assert_eq!(
        long.ask().await,
        None,
        "the connection past the timeout is closed"
    );
    // web's connection, drained on its own 30 s timeout, goes on.
    assert_eq!(kept.ask().await.as_deref(), Some("n2"));
    drop(kept);
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

/// A reload while a node drains (another Service comes) takes its server
/// out of the new worker; the old worker carries the connection on. The
/// drain is followed there: its session still counts, and it finishes once
/// that connection ends, although the old worker lives on for another.
#[tokio::test]
async fn a_drain_a_reload_interrupts_is_followed_in_the_old_worker() {
    let mut h = harness("hx-drainrl", "127.0.2.80-127.0.2.89").await;
    for (ip, n) in &NODES[..2] {
        h.node(n, ip).await;
    }
    let _ctl = h.start(false);
    create(&h, k::lb_service("web", &[80])).await;
    let (svc, ip) = wait_vip(&h, "web").await;
    let mut _servers = Vec::new();
    for (ip, n) in &NODES[..2] {
        _servers.push(traffic::answer_kept(ip, node_port(&svc, 0), n).await);
    }
    let web = SocketAddr::new(ip, 80);
    wait_answers(web, &["n1", "n2"]).await;
    let n2 = format!("{}-n2", h.ns);
    let mut on_n1 = kept_on(web, "n1").await;
    let mut on_n2 = kept_on(web, "n2").await;
    exclude(&h, "n2", true).await;
    wait_answers(web, &["n1"]).await;
    drains_until(&h.provider, "n2 draining", |_, d| {
        d.get(&n2).filter(|d| d.sessions == 1).cloned()
    })
    .await;

    // Another Service: a reload, and the connections move to the old worker.
    let (reloads, _) = h.provider.reload_counters().await.unwrap();
    create(&h, k::lb_service("other", &[81])).await;
    wait_vip(&h, "other").await;
    assert!(h.provider.reload_counters().await.unwrap().0 > reloads);
    let (finished, draining) = h.provider.advance_drains().await;
    assert!(finished.is_empty(), "{finished:?}");
    assert_eq!(
        draining.get(&n2).map(|d| d.sessions),
        Some(1),
        "the old worker's session through n2 counts: {draining:?}"
    );
    assert_eq!(on_n2.ask().await.as_deref(), Some("n2"));

    drop(on_n2);
    let done = drains_until(&h.provider, "n2's drain to finish", |f, _| {
        f.iter().find(|f| f.node == n2).cloned()
    })
    .await;
    assert_eq!(done.outcome, ferrylb_haproxy::drain::Outcome::Reloaded);
    // The old worker still carries n1's connection: the drain ended with
    // its own last session, not with the worker.
    assert_eq!(on_n1.ask().await.as_deref(), Some("n1"));
    drop(on_n1);
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}
