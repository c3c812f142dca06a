//! FerryLB the way its users run it, in the lab (`tests/lab/up`): installed
//! by `helm install` from its chart with the lab's images, two replicas with
//! leader election, the HAProxy sidecar on the nodes' network; nodes whose
//! kube-proxy serves the nodePorts; real pods behind them; a client in a
//! namespace of its own that reaches the VIPs only over the nodes' network.
//!
//! The tests share the lab and FerryLB's release, so they run one at a time.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use support::lab::{self, Lab, Summary};
use support::{kube as k, wait};

const RELEASE: &str = "ferrylb";
const RELEASE_NS: &str = "ferrylb";

/// One test at a time: they share the cluster and the release.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test's turn at the lab (see [`serial`]).
struct Serial {
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Waits for this test's turn at the lab. Should the test fail, what
/// FerryLB's replicas logged meanwhile is printed with the failure.
/// Nodes an earlier test left tainted, excluded, cordoned or deleted (it
/// failed half way) are put back first.
async fn serial() -> Serial {
    let turn = SERIAL.lock().await;
    let lab = lab::shared();
    restore_nodes(lab, &lab.client().await).await;
    Serial { _turn: turn }
}

impl Drop for Serial {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        // Nothing here may panic: it runs while a failure unwinds.
        let lab = lab::shared();
        eprintln!("--- FerryLB's replicas, on this failure ---");
        eprintln!(
            "{}",
            lab.kubectl_quiet(&["-n", RELEASE_NS, "get", "pods", "-o", "wide"])
        );
        eprintln!(
            "{}",
            lab.kubectl_quiet(&[
                "-n",
                RELEASE_NS,
                "logs",
                "-l",
                "app.kubernetes.io/name=ferrylb",
                "-c",
                "controller",
                "--prefix",
                "--since=10m",
                "--tail=300",
            ])
        );
        eprintln!("{}", lab.kubectl_quiet(&["get", "nodes", "-o", "wide"]));
    }
}

fn helm_ok(lab: &Lab, args: &[&str]) -> String {
    let out = lab.helm(args);
    assert!(
        out.status.success(),
        "helm {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs FerryLB's release unless it is there, and waits until both
/// replicas run and one holds the Lease.
async fn ensure_installed(lab: &Lab, client: &kube::Client) {
    if !lab
        .helm(&["status", RELEASE, "-n", RELEASE_NS])
        .status
        .success()
    {
        eprintln!("lab: FerryLB's release is not installed; installing it");
        upgrade_release(lab, &[]);
    }
    leader(client).await;
}

/// `helm upgrade --install` of FerryLB's release with the lab's values and
/// each of `sets` as a `--set`, waiting until it is rolled out.
fn upgrade_release(lab: &Lab, sets: &[&str]) {
    helm_ok(lab, &upgrade_args(sets));
}

/// The `helm` arguments of [`upgrade_release`].
fn upgrade_args<'a>(sets: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "upgrade",
        "--install",
        RELEASE,
        "charts/ferrylb",
        "-n",
        RELEASE_NS,
        "--create-namespace",
        "-f",
        "tests/lab/values.yaml",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    args.extend(["--wait", "--timeout", "3m"]);
    args
}

/// The pod holding FerryLB's Lease (waits for one).
async fn leader(client: &kube::Client) -> String {
    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    wait::until(
        "a FerryLB replica to lead",
        Duration::from_secs(120),
        || {
            let (leases, pods) = (leases.clone(), pods.clone());
            async move {
                let holder = leases.get_opt(RELEASE).await.ok()??.spec?.holder_identity?;
                let pod = pods.get_opt(&holder).await.ok()??;
                (pod.metadata.deletion_timestamp.is_none()).then_some(holder)
            }
        },
    )
    .await
}

/// A Deployment of echo pods and a LoadBalancer Service on port 80 in front
/// of them; returns the VIP once FerryLB published it.
async fn echo_service(
    lab: &Lab,
    client: &kube::Client,
    ns: &str,
    replicas: u32,
    node: Option<&str>,
    local: bool,
) -> String {
    let selector = node
        .map(|n| format!("nodeSelector: {{kubernetes.io/hostname: {n}}}"))
        .unwrap_or_default();
    let policy = if local { "Local" } else { "Cluster" };
    lab.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      {selector}
      terminationGracePeriodSeconds: 2
      topologySpreadConstraints:
        - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway, labelSelector: {{matchLabels: {{app: echo}}}}}}
      containers:
        - name: echo
          image: localhost/echo:lab
          imagePullPolicy: Never
          env:
            - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
            - {{name: NODE_NAME, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
          ports: [{{containerPort: 8080}}]
          readinessProbe:
            tcpSocket: {{port: 8080}}
            periodSeconds: 1
          securityContext:
            runAsNonRoot: true
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {{drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {ns}}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: {policy}
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#
    ));
    lab.kubectl(&[
        "-n",
        ns,
        "rollout",
        "status",
        "deployment/echo",
        "--timeout=120s",
    ]);
    vip_of(client, ns, "echo").await
}

async fn vip_of(client: &kube::Client, ns: &str, name: &str) -> String {
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    wait::until("the Service's VIP", Duration::from_secs(60), || {
        let svcs = svcs.clone();
        async move {
            svcs.get(name)
                .await
                .ok()?
                .status?
                .load_balancer?
                .ingress?
                .first()?
                .ip
                .clone()
        }
    })
    .await
}

/// The Service's addresses once it has `n` of them.
async fn addresses_of(client: &kube::Client, ns: &str, name: &str, n: usize) -> Vec<String> {
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    wait::until(
        &format!("{n} addresses for {ns}/{name}"),
        Duration::from_secs(60),
        || {
            let svcs = svcs.clone();
            async move {
                let ips: Vec<String> = svcs
                    .get(name)
                    .await
                    .ok()?
                    .status?
                    .load_balancer?
                    .ingress?
                    .into_iter()
                    .filter_map(|i| i.ip)
                    .collect();
                (ips.len() == n).then_some(ips)
            }
        },
    )
    .await
}

/// Waits until the client, through `vip`, gets answers from exactly the
/// nodes in `nodes` (over enough requests to see each of them), and every
/// request is answered (HAProxy's checks have settled).
async fn answered_by(lab: &Lab, vip: &str, nodes: &[&str], within: Duration) -> BTreeSet<String> {
    let want: BTreeSet<String> = nodes.iter().map(|s| s.to_string()).collect();
    let mut seen = BTreeSet::new();
    let deadline = std::time::Instant::now() + within;
    loop {
        seen.clear();
        let mut failed = 0;
        for _ in 0..12 {
            match lab.fetch(vip, 80) {
                Some(a) => {
                    seen.insert(a.node);
                }
                None => failed += 1,
            }
        }
        if seen == want && failed == 0 {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "through {vip}: answered by {seen:?} ({failed} of 12 failed), want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The longest time without an answer while an eTP Local Service's only pod
/// moves to another node.
const MOVE_GAP_S: f64 = 10.0;
/// While one replica hands the VIPs to another (the leaving one's HAProxy
/// serves on while FerryLB takes the VIPs off its node; the new leader's
/// HAProxy already runs, reloads, and only then is the VIP put on its node
/// and announced): the longest time without an answer, and the failed
/// connections at 20 a second. Measured: 0 failed, gaps under 0.1 s.
const TAKEOVER_GAP_S: f64 = 2.0;
const TAKEOVER_FAILED: u64 = 5;

/// A takeover may delay connections, never refuse them: a node holds a VIP
/// only while its HAProxy listens on it.
fn assert_takeover_bounded(s: &Summary) {
    assert!(
        s.longest_gap_s < TAKEOVER_GAP_S
            && s.failed <= TAKEOVER_FAILED
            && !s.errors.contains_key("refused"),
        "takeover: {s:?}"
    );
}

fn report(what: &str, s: &Summary) {
    eprintln!(
        "lab: {what}: sent {}, ok {}, failed {} {:?}, longest gap {:.2}s, slow {} (slowest {:.2}s), nodes {:?}",
        s.sent, s.ok, s.failed, s.errors, s.longest_gap_s, s.slow, s.slowest_s, s.nodes
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chart_installs_ferrylb_and_a_vip_reaches_real_pods_on_every_node() {
    let _serial = serial().await;
    let lab = lab::shared();
    let client = lab.client().await;
    ensure_installed(lab, &client).await;

    // FerryLB runs as the pods the chart made, with its own ServiceAccount.
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2, "two replicas");
    for p in &list.items {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some(RELEASE));
        assert_eq!(spec.host_network, Some(true));
        let image = &spec.containers[0].image;
        assert_eq!(image.as_deref(), Some("localhost/ferrylb:lab"));
    }
    let nodes_of_replicas: BTreeSet<_> = list
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(nodes_of_replicas.len(), 2, "replicas on two nodes");

    let ns = k::namespace(&client, "lab-echo").await;
    let vip = echo_service(lab, &client, &ns, 6, None, false).await;
    assert!(vip.starts_with("10.250.0.2"), "VIP {vip} from the pool");

    // Every node's pods answer through the VIP: HAProxy → node:nodePort →
    // kube-proxy → pod.
    answered_by(lab, &vip, &lab::NODES, Duration::from_secs(30)).await;

    // Steady traffic: nothing fails.
    let probe = lab.probe(&vip, 80, 20);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let s = probe.finish().await;
    report("steady state", &s);
    assert!(s.sent >= 150);
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(s.nodes.len(), 3, "{s:?}");

    // The VIP sits on the leader's node only.
    let leader_pod = leader(&client).await;
    let leader_node = pods
        .get(&leader_pod)
        .await
        .unwrap()
        .spec
        .unwrap()
        .node_name
        .unwrap();
    for n in lab::NODES {
        let out = lab.in_ns(
            &format!("ferrylb-lab-{n}"),
            &["ip", "-o", "addr", "show", "dev", "eth0"],
        );
        let has = String::from_utf8_lossy(&out.stdout).contains(&format!(" {vip}/32 "));
        assert_eq!(has, n == leader_node, "{vip} on {n}");
    }
}

/// The Service's condition reason, if it has one.
async fn condition_reason(client: &kube::Client, ns: &str, name: &str) -> Option<(String, String)> {
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    let c = svcs
        .get(name)
        .await
        .ok()?
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == "ferrylb.io/LoadBalancerReady")?;
    Some((c.reason, c.message))
}

/// Deletes namespace `ns` and waits until it is gone (its Services' load
/// balancers removed and their addresses free for the next test).
async fn delete_namespace(client: &kube::Client, ns: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let api: Api<Namespace> = Api::all(client.clone());
    api.delete(ns, &DeleteParams::default()).await.unwrap();
    wait::until(
        &format!("namespace {ns} to be gone"),
        Duration::from_secs(120),
        || {
            let api = api.clone();
            async move { api.get_opt(ns).await.ok()?.is_none().then_some(()) }
        },
    )
    .await;
}

fn lb_service_yaml(ns: &str, name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{type: LoadBalancer, {extra} selector: {{app: echo}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
    )
}

/// The README's first command, `tests/lab/demo`, on the running lab (it
/// reuses it): FerryLB installed by its chart, an echo Service's address,
/// and a real answer through it from the client namespace. Twice: running
/// it again reuses everything.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_demo_prints_an_address_and_a_real_answer() {
    let _serial = serial().await;
    let lab = lab::shared();
    let client = lab.client().await;
    for run in 0..2 {
        let out = std::process::Command::new(support::env::repo_root().join("tests/lab/demo"))
            .arg("--dir")
            .arg(&lab.dir)
            .output()
            .expect("running tests/lab/demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "run {run}: {stdout}\n{stderr}");
        assert!(stderr.contains("reusing the lab"), "run {run}: {stderr}");
        assert!(
            stdout.contains("Service ferrylb-demo/echo has the address 10.250.0.2"),
            "run {run}: {stdout}"
        );
        let answer = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("pod=echo-"))
            .unwrap_or_else(|| panic!("run {run}: no answer printed: {stdout}"));
        assert!(answer.contains(" node=node"), "{answer}");
        assert!(stdout.contains("tests/lab/down --dir"), "{stdout}");
    }
    delete_namespace(&client, "ferrylb-demo").await;
}

/// What a published address promises (README, "What the address
/// promises"): HAProxy listens on it, so a client's connection is taken,
/// never refused; and it answers once a node's kube-proxy has programmed
/// the Service's nodePort and HAProxy's check saw it (measured in the lab: the address
/// appears 0.15-0.26 s after the Service is created, kube-proxy programs
/// the nodePort 0.5-1.5 s after; in between HAProxy takes the connection
/// and closes it when every node refuses, curl's "Empty reply from server").
#[tokio::test(flavor = "multi_thread")]
async fn a_published_address_is_listened_on_and_answers_once_a_node_serves_the_node_port() {
    let _serial = serial().await;
    let lab = lab::shared();
    let client = lab.client().await;
    ensure_installed(lab, &client).await;
    let ns = k::namespace(&client, "lab-promise").await;
    echo_service(lab, &client, &ns, 3, None, false).await;
    for round in 0..3 {
        let name = format!("late-{round}");
        lab.apply(&lb_service_yaml(&ns, &name, ""));
        let vip = vip_of(&client, &ns, &name).await;
        let url = format!("http://{vip}/");
        let first = lab.in_ns(lab::CLIENT_NS, &["curl", "-sS", "-m", "2", &url]);
        // 0: answered; 52: taken and closed (no node serves the nodePort
        // yet). Never 7 (refused) or 28 (no answer at all).
        assert!(
            matches!(first.status.code(), Some(0 | 52)),
            "{name}: the first connection to the address just published: {first:?}"
        );
        let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
        let svc = svcs.get(&name).await.unwrap();
        let node_port = svc.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
        wait::until(
            &format!("{name}: a node to serve its nodePort"),
            Duration::from_secs(60),
            || async {
                lab::NODES
                    .iter()
                    .any(|n| {
                        let url = format!("http://10.250.0.1{}:{node_port}/", &n[4..]);
                        let out = lab.in_ns(lab::CLIENT_NS, &["curl", "-sS", "-m", "2", &url]);
                        out.status.success()
                    })
                    .then_some(())
            },
        )
        .await;
        // HAProxy's first check of a new server comes within a quarter
        // second, often before kube-proxy programmed the nodePort: the
        // server is marked down, and checked again every half second.
        let served = std::time::Instant::now();
        wait::until(
            &format!("{name}: the address {vip} to answer, a node serving the nodePort"),
            Duration::from_secs(10),
            || async { lab.fetch(&vip, 80) },
        )
        .await;
        eprintln!(
            "lab: {name}: answered {:.2}s after a node served the nodePort",
            served.elapsed().as_secs_f64()
        );
    }
    delete_namespace(&client, &ns).await;
}

/// Addresses follow `spec.ipFamilies` with the lab's pool (20 IPv4, 32
/// IPv6): with every IPv4 address taken, an IPv4 Service waits with
/// `PoolExhausted` naming IPv4 (it used to get fd51::200, which its IPv4
/// clients cannot reach), a PreferDualStack one gets IPv6 only, and the
/// waiting one gets the first IPv4 address freed.
#[tokio::test(flavor = "multi_thread")]
async fn ipv4_services_wait_for_an_ipv4_address_and_prefer_dual_stack_takes_what_is_free() {
    let _serial = serial().await;
    let lab = lab::shared();
    let client = lab.client().await;
    ensure_installed(lab, &client).await;
    let all: Api<Service> = Api::all(client.clone());
    let used = all
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|s| s.status.as_ref()?.load_balancer.as_ref()?.ingress.clone())
        .flatten()
        .filter(|i| {
            i.ip.as_deref()
                .is_some_and(|ip| ip.starts_with("10.250.0.2"))
        })
        .count();
    let free = 20 - used;
    let ns = k::namespace(&client, "lab-family").await;
    for i in 0..free {
        lab.apply(&lb_service_yaml(&ns, &format!("fill-{i}"), ""));
    }
    for i in 0..free {
        let vip = vip_of(&client, &ns, &format!("fill-{i}")).await;
        assert!(vip.starts_with("10.250.0.2"), "fill-{i}: {vip}");
    }
    lab.apply(&lb_service_yaml(&ns, "over", ""));
    let (reason, message) = wait::until("over: PoolExhausted", Duration::from_secs(60), || async {
        condition_reason(&client, &ns, "over")
            .await
            .filter(|(r, _)| r == "PoolExhausted")
    })
    .await;
    assert!(message.contains("no IPv4 address"), "{reason}: {message}");
    lab.apply(&lb_service_yaml(
        &ns,
        "prefer",
        "ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4, IPv6],",
    ));
    let prefer = addresses_of(&client, &ns, "prefer", 1).await;
    assert!(prefer[0].starts_with("fd51::2"), "{prefer:?}");
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    assert!(
        svcs.get("over")
            .await
            .unwrap()
            .status
            .unwrap()
            .load_balancer
            .unwrap()
            .ingress
            .is_none_or(|i| i.is_empty()),
        "an IPv4 Service got an address while the IPv4 pool was used up"
    );
    svcs.delete("fill-0", &DeleteParams::default())
        .await
        .unwrap();
    let over = vip_of(&client, &ns, "over").await;
    assert!(over.starts_with("10.250.0.2"), "over: {over}");
    delete_namespace(&client, &ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn external_traffic_policy_local_sends_only_to_nodes_with_a_ready_pod_and_follows_it() {
    let _serial = serial().await;
    let lab = lab::shared();
    let client = lab.client().await;
    ensure_installed(lab, &client).await;
    let ns = k::namespace(&client, "lab-local").await;
    let vip = echo_service(lab, &client, &ns, 1, Some("node2"), true).await;

    // kube-proxy's healthCheckNodePort says which node has a local pod;
    // HAProxy's check on it keeps the others out.
    answered_by(lab, &vip, &["node2"], Duration::from_secs(30)).await;
    let probe = lab.probe(&vip, 80, 20);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = probe.finish().await;
    report("eTP Local, one pod on node2", &s);
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(s.nodes.keys().collect::<Vec<_>>(), ["node2"]);

    // The pod moves to node3: traffic follows it.
    let probe = lab.probe(&vip, 80, 20);
    lab.kubectl(&[
        "-n",
        &ns,
        "patch",
        "deployment/echo",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"spec":{"nodeSelector":{"kubernetes.io/hostname":"node3"}}}}}"#,
    ]);
    lab.kubectl(&[
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/echo",
        "--timeout=120s",
    ]);
    answered_by(lab, &vip, &["node3"], Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = probe.finish().await;
    report("eTP Local, pod rescheduled node2 -> node3", &s);
    assert!(s.nodes.contains_key("node3"), "{s:?}");
    // While node2's pod goes and node3's comes, HAProxy learns both from
    // kube-proxy's healthCheckNodePort (checked every 2 s, 3 failures down,
    // 2 successes up): a bounded gap, documented in the README.
    assert!(s.longest_gap_s < MOVE_GAP_S, "{s:?}");
}

/// What a lab test starts with: the lab to itself, FerryLB installed, and an
/// echo Deployment of `replicas` pods behind a LoadBalancer Service in a new
/// namespace, answering through its VIP from every node.
struct Start {
    _serial: Serial,
    lab: &'static Lab,
    client: kube::Client,
    ns: String,
    vip: String,
}

async fn start_with_echo(prefix: &str, replicas: u32) -> Start {
    let serial = serial().await;
    let lab = lab::shared();
    let client = lab.client().await;
    ensure_installed(lab, &client).await;
    let ns = k::namespace(&client, prefix).await;
    let vip = echo_service(lab, &client, &ns, replicas, None, false).await;
    answered_by(lab, &vip, &lab::NODES, Duration::from_secs(30)).await;
    steady(lab, &vip).await;
    Start {
        _serial: serial,
        lab,
        client,
        ns,
        vip,
    }
}

/// Waits until 2 s at 50 new connections a second to `vip` lose nothing: a
/// Service just created is answered before every node's kube-proxy serves
/// its nodePort, and HAProxy's first checks may then mark every node down
/// for a moment. What a test measures starts from a steady state.
async fn steady(lab: &Lab, vip: &str) {
    let started = std::time::Instant::now();
    loop {
        let probe = lab.probe(vip, 80, 50);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = probe.finish().await;
        if s.failed == 0 && s.ok > 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{vip} still loses connections after 60 s: {s:?}"
        );
        eprintln!(
            "lab: {vip} not steady yet ({} of {} failed)",
            s.failed, s.sent
        );
    }
}

/// Patches a Node with a JSON merge patch.
async fn patch_node(client: &kube::Client, name: &str, patch: serde_json::Value) {
    Api::<Node>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("patching node {name}: {e}"));
}

/// The node FerryLB's leader runs on: node events are tested on the others.
async fn leader_node(client: &kube::Client) -> String {
    let pod = leader(client).await;
    Api::<Pod>::namespaced(client.clone(), RELEASE_NS)
        .get(&pod)
        .await
        .unwrap()
        .spec
        .unwrap()
        .node_name
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn node_excluded_tainted_cordoned_or_deleted_and_traffic_keeps_flowing() {
    let Start {
        _serial,
        lab,
        client,
        vip,
        ..
    } = start_with_echo("lab-nodes", 6).await;

    let lead = leader_node(&client).await;
    let victim = *lab::NODES.iter().find(|n| **n != lead).unwrap();
    let exclude = EXCLUDE;

    // Each event: traffic keeps flowing; eTP Cluster still reaches pods on
    // the victim through the other nodes, so what matters is that no
    // connection fails.
    let events: [(&str, serde_json::Value, serde_json::Value); 3] = [
        (
            "labelled excluded",
            serde_json::json!({"metadata": {"labels": {exclude: ""}}}),
            serde_json::json!({"metadata": {"labels": {exclude: null}}}),
        ),
        (
            "tainted ToBeDeletedByClusterAutoscaler",
            serde_json::json!({"spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]}}),
            serde_json::json!({"spec": {"taints": null}}),
        ),
        (
            "cordoned",
            serde_json::json!({"spec": {"unschedulable": true}}),
            serde_json::json!({"spec": {"unschedulable": null}}),
        ),
    ];
    for (what, apply, undo) in events {
        let probe = lab.probe(&vip, 80, 20);
        tokio::time::sleep(Duration::from_secs(2)).await;
        patch_node(&client, victim, apply).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        patch_node(&client, victim, undo).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let s = probe.finish().await;
        report(&format!("{victim} {what}"), &s);
        assert_eq!(s.failed, 0, "{victim} {what}: {s:?}");
    }

    // Deleted: FerryLB drops it from every backend; the Node object is then
    // made again (the kubelet registers only once) and it serves again.
    let probe = lab.probe(&vip, 80, 20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let saved = delete_node(&client, victim).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = probe.finish().await;
    report(&format!("{victim} deleted"), &s);
    assert_eq!(s.failed, 0, "{victim} deleted: {s:?}");
    make_node_again(lab, &client, saved).await;
}

/// Deletes Node `name`, waits until it is gone, and returns it as it was.
async fn delete_node(client: &kube::Client, name: &str) -> Node {
    let node_api: Api<Node> = Api::all(client.clone());
    let saved = node_api.get(name).await.unwrap();
    node_api
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    wait::until("the Node to go", Duration::from_secs(30), || {
        let node_api = node_api.clone();
        async move {
            node_api
                .get_opt(name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        }
    })
    .await;
    saved
}

/// The lab's Nodes as the first test found them (to make one again).
static BASELINE: tokio::sync::OnceCell<Vec<Node>> = tokio::sync::OnceCell::const_new();

/// The label that excludes a node from load balancers.
const EXCLUDE: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// Puts every lab Node back as the lab made it: made again when deleted;
/// no taint, schedulable, not excluded from load balancers.
async fn restore_nodes(lab: &Lab, client: &kube::Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let baseline = BASELINE
        .get_or_init(|| async { nodes.list(&ListParams::default()).await.unwrap().items })
        .await;
    for saved in baseline {
        let name = saved.metadata.name.clone().unwrap_or_default();
        let Some(now) = nodes.get_opt(&name).await.unwrap() else {
            eprintln!("lab: node {name} was left deleted; making it again");
            let mut again = saved.clone();
            if let Some(labels) = again.metadata.labels.as_mut() {
                labels.remove(EXCLUDE);
            }
            make_node_again(lab, client, again).await;
            continue;
        };
        let spec = now.spec.clone().unwrap_or_default();
        let changed = spec.taints.is_some_and(|t| !t.is_empty())
            || spec.unschedulable == Some(true)
            || now
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(EXCLUDE));
        if changed {
            eprintln!("lab: node {name} was left tainted, cordoned or excluded; putting it back");
            patch_node(
                client,
                &name,
                serde_json::json!({
                    "metadata": {"labels": {EXCLUDE: null}},
                    "spec": {"taints": null, "unschedulable": null},
                }),
            )
            .await;
        }
    }
}

/// Makes a deleted Node again, untainted (its kubelet registered only
/// once), and waits until it is Ready.
async fn make_node_again(lab: &Lab, client: &kube::Client, saved: Node) {
    let name = saved.metadata.name.clone().unwrap();
    let mut again = Node {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            labels: saved.metadata.labels.clone(),
            ..Default::default()
        },
        spec: saved.spec.clone(),
        ..Default::default()
    };
    if let Some(spec) = again.spec.as_mut() {
        spec.taints = None;
    }
    Api::<Node>::all(client.clone())
        .create(&Default::default(), &again)
        .await
        .expect("making the Node again");
    lab.kubectl(&[
        "wait",
        "--for=condition=Ready",
        &format!("node/{name}"),
        "--timeout=60s",
    ]);
}

/// The notes of Events with `reason` about the object `kind`/`name` in
/// `ns` (Nodes' Events are in `default`).
async fn event_notes(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
    reason: &str,
) -> Vec<String> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                })
        })
        .filter_map(|e| e.note)
        .collect()
}

/// Waits (at most `within`) until Events with `reason` about `kind`/`name`
/// in `ns` include notes that `wanted` accepts, and returns those.
async fn notes_until(
    client: &kube::Client,
    ns: &str,
    (kind, name, reason): (&str, &str, &str),
    within: Duration,
    wanted: impl Fn(&str) -> bool,
) -> Vec<String> {
    wait::until(&format!("{reason} on {kind} {name}"), within, || async {
        let notes: Vec<String> = event_notes(client, ns, kind, name, reason)
            .await
            .into_iter()
            .filter(|n| wanted(n))
            .collect();
        (!notes.is_empty()).then_some(notes)
    })
    .await
}

/// The FerryLB replica running on `node`.
async fn replica_on(client: &kube::Client, node: &str) -> String {
    replicas(client)
        .await
        .into_iter()
        .find(|(_, n)| n == node)
        .map(|(pod, _)| pod)
        .unwrap_or_else(|| panic!("a replica on {node}"))
}

/// The state (`UP`, `DOWN`, `DRAIN`, ...) of each server of `vip`'s
/// backends in the HAProxy of FerryLB's replica on `node`, read from its
/// admin socket (in the pod's volume, on this host's filesystem).
async fn server_states(lab: &Lab, client: &kube::Client, node: &str) -> BTreeMap<String, String> {
    let pod = replica_on(client, node).await;
    let uid = Api::<Pod>::namespaced(client.clone(), RELEASE_NS)
        .get(&pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let volumes = lab
        .dir
        .join(node)
        .join("kubelet/pods")
        .join(uid)
        .join("volumes/kubernetes.io~empty-dir");
    let socket = std::fs::read_dir(&volumes)
        .unwrap_or_else(|e| panic!("{}: {e}", volumes.display()))
        .filter_map(|d| Some(d.ok()?.path().join("admin.sock")))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no admin.sock under {}", volumes.display()));
    // The path is longer than a socket address holds: reached through a
    // short link.
    let short = support::env::tempdir("fl-sock");
    std::os::unix::fs::symlink(&socket, short.join("s")).unwrap();
    let mut out = String::new();
    {
        use std::io::{Read as _, Write as _};
        let mut s = std::os::unix::net::UnixStream::connect(short.join("s")).unwrap();
        s.write_all(b"show stat -1 4 -1\n").unwrap();
        s.read_to_string(&mut out).unwrap();
    }
    let _ = std::fs::remove_dir_all(&short);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let status = header.iter().position(|c| *c == "status").unwrap();
    out.lines()
        .skip(1)
        .filter(|l| l.starts_with("be_"))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            Some((cols.get(1)?.to_string(), cols.get(status)?.to_string()))
        })
        .collect()
}

/// What the cluster autoscaler does to a node it removes, at 50 new
/// connections a second and with 12 long-lived connections sending a line
/// a second: tainted `ToBeDeletedByClusterAutoscaler`, then deleted. The
/// VIP holder's HAProxy drains the node's servers: the long-lived
/// connections through it go on (none breaks), new ones go elsewhere (none
/// fails); once the long-lived ones close, the drain finishes and says so
/// in an Event on the Service and on the Node; deleting the Node then costs
/// nothing either.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_tainted_for_removal_then_deleted_drains_and_loses_no_connection() {
    let Start {
        _serial,
        lab,
        client,
        vip,
        ns,
    } = start_with_echo("lab-nodedrain", 6).await;
    let holder = leader(&client).await;
    let lead = leader_node(&client).await;
    let victim = *lab::NODES.iter().find(|n| **n != lead).unwrap();
    // Every node's server is up in the holder's HAProxy before the
    // long-lived connections open, so round robin puts some on the victim.
    eprintln!(
        "lab: servers in {lead}'s HAProxy: {:?}",
        server_states(lab, &client, &lead).await
    );
    wait::until(
        "every node's server up in the holder's HAProxy",
        Duration::from_secs(60),
        || async {
            let states = server_states(lab, &client, &lead).await;
            (states.len() == lab::NODES.len() && states.values().all(|s| s == "UP")).then_some(())
        },
    )
    .await;
    let probe = lab.probe(&vip, 80, 50);
    let kept = lab.probe_kept(&vip, 80, 12).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    patch_node(
        &client,
        victim,
        serde_json::json!({"spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]}}),
    )
    .await;
    eprintln!("long-lived connections open; tainting {victim} (the VIP holder is {lead})");
    // The holder drains what the long-lived connections carry through the
    // victim (round robin put about a third of them there).
    let metric = format!("ferrylb_haproxy_draining_sessions{{node=\"{victim}\"}}");
    let draining = wait::until(
        "the victim's sessions draining",
        Duration::from_secs(30),
        || {
            let text = replica_metrics(lab, &lead);
            let metric = metric.clone();
            async move {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{metric} ")))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .filter(|n| *n > 0)
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let k = kept.finish().await;
    report(
        &format!("long-lived connections through {victim}'s drain"),
        &k,
    );
    assert_eq!(k.failed, 0, "long-lived connections broke: {k:?}");
    assert!(k.sent >= 12 * 8, "{k:?}");
    // They closed: the drain finishes, and says so.
    let svc_notes = notes_until(
        &client,
        &ns,
        ("Service", "echo", "NodeDrained"),
        Duration::from_secs(30),
        |n| n.contains(victim) && n.contains(&holder),
    )
    .await;
    let node_notes = notes_until(
        &client,
        "default",
        ("Node", victim, "LoadBalancersDrained"),
        Duration::from_secs(30),
        |n| n.contains(&holder),
    )
    .await;
    eprintln!("{draining} sessions drained; {svc_notes:?}; {node_notes:?}");
    let saved = delete_node(&client, victim).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = probe.finish().await;
    report(
        &format!("{victim} tainted ToBeDeletedByClusterAutoscaler, then deleted"),
        &s,
    );
    assert_eq!(s.failed, 0, "{s:?}");
    make_node_again(lab, &client, saved).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_pod_deleted_and_the_other_replica_takes_over_the_vips() {
    let Start {
        _serial,
        lab,
        client,
        vip,
        ..
    } = start_with_echo("lab-leader", 3).await;

    let old = leader(&client).await;
    let probe = lab.probe(&vip, 80, 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Api::<Pod>::namespaced(client.clone(), RELEASE_NS)
        .delete(&old, &DeleteParams::default())
        .await
        .unwrap();
    let new = wait::until("another replica to lead", Duration::from_secs(60), || {
        let (client, old) = (client.clone(), old.clone());
        async move {
            let l = leader(&client).await;
            (l != old).then_some(l)
        }
    })
    .await;
    answered_by(lab, &vip, &lab::NODES, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = probe.finish().await;
    report(&format!("leader {old} deleted, {new} took over"), &s);
    assert!(s.ok > 0 && s.nodes.len() == 3, "{s:?}");
    // The VIP moves with leadership: a short gap, not a dead VIP, and (the
    // leaving leader pausing new handshakes before it lets go) nothing lost.
    assert_takeover_bounded(&s);
    assert_eq!(s.failed, 0, "{s:?}");
    // The Deployment replaces the deleted pod.
    lab.kubectl(&[
        "-n",
        RELEASE_NS,
        "rollout",
        "status",
        &format!("deployment/{RELEASE}"),
        "--timeout=120s",
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_upgrade_keeps_serving_and_uninstall_leaves_nothing() {
    let Start {
        _serial,
        lab,
        client,
        ns,
        vip,
    } = start_with_echo("lab-upgrade", 3).await;

    // Upgrade with changed values: every node checked once on kube-proxy's
    // health port (10256), answered by the real kube-proxy.
    let probe = lab.probe(&vip, 80, 50);
    upgrade_release(lab, &["haproxy.nodeCheckPort=10256"]);
    leader(&client).await;
    answered_by(lab, &vip, &lab::NODES, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = probe.finish().await;
    report("helm upgrade (nodeCheckPort 10256)", &s);
    assert!(s.ok > 0, "{s:?}");
    assert_takeover_bounded(&s);
    assert_eq!(s.failed, 0, "{s:?}");

    // `kubectl rollout restart`: both replicas replaced one after the
    // other, the VIP handed over on the way.
    let probe = lab.probe(&vip, 80, 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.kubectl(&[
        "-n",
        RELEASE_NS,
        "rollout",
        "restart",
        &format!("deployment/{RELEASE}"),
    ]);
    lab.kubectl(&[
        "-n",
        RELEASE_NS,
        "rollout",
        "status",
        &format!("deployment/{RELEASE}"),
        "--timeout=180s",
    ]);
    leader(&client).await;
    answered_by(lab, &vip, &lab::NODES, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = probe.finish().await;
    report("kubectl rollout restart of FerryLB", &s);
    assert_takeover_bounded(&s);
    assert_eq!(s.failed, 0, "{s:?}");

    // Uninstall with the Service in place: the chart's pre-delete hook
    // stops the replicas and lets go of it; nothing of FerryLB's is left on
    // the nodes or on the Service, and deleting it completes.
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    helm_ok(
        lab,
        &[
            "uninstall",
            RELEASE,
            "-n",
            RELEASE_NS,
            "--wait",
            "--timeout",
            "2m",
        ],
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    wait::until("FerryLB's pods to be gone", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
    for n in lab::NODES {
        let out = lab.in_ns(
            &format!("ferrylb-lab-{n}"),
            &["ip", "-o", "addr", "show", "dev", "eth0"],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("10.250.0.2"), "a VIP left on {n}: {text}");
        let out = lab.in_ns(&format!("ferrylb-lab-{n}"), &["ss", "-Htlnp"]);
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("haproxy"),
            "haproxy still listening on {n}"
        );
    }
    assert!(lab.fetch(&vip, 80).is_none(), "{vip} still answers");
    let svc = svcs.get("echo").await.unwrap();
    assert!(
        !support::harness::has_finalizer(&svc),
        "FerryLB's finalizer left: {:?}",
        svc.metadata.finalizers
    );
    assert!(
        support::harness::first_ingress(&svc).is_none(),
        "a dead EXTERNAL-IP left: {:?}",
        svc.status
    );
    assert!(
        !svc.metadata
            .annotations
            .unwrap_or_default()
            .contains_key("ferrylb.io/provisioned-class")
    );
    let jobs = lab.kubectl(&["-n", RELEASE_NS, "get", "jobs", "-o", "name"]);
    assert!(jobs.trim().is_empty(), "the hook's Job left: {jobs}");
    svcs.delete("echo", &DeleteParams::default()).await.unwrap();
    wait::until("the Service to be gone", Duration::from_secs(10), || {
        let svcs = svcs.clone();
        async move { svcs.get_opt("echo").await.unwrap().is_none().then_some(()) }
    })
    .await;
}

/// The longest a client may go without an answer while VRRP moves the VIPs
/// off a node that died (defaults: 0.1 s adverts, taken over after about
/// three missed).
const VRRP_FAILOVER_GAP_S: f64 = 1.0;

/// A planned move with VRRP, at 100 new connections a second: at most
/// `lost` lost. The holder pauses new handshakes for
/// `haproxy.vrrp.handoverPause` (300 ms) before the VIPs move; the
/// connections started meanwhile are answered on their SYN's retry a second
/// later, by the new holder (the probe counts them as slow), so every start
/// is answered and the gap between answered starts stays that of the rate.
fn assert_planned_move(s: &Summary, lost: u64) {
    assert!(s.sent >= 2_000, "{s:?}");
    assert!(s.longest_gap_s < 0.5, "{s:?}");
    assert!(
        s.failed <= lost,
        "at most {lost} connections lost in a planned move: {s:?}"
    );
}

/// What deleting the holder's pod may lose. 0 in 8 of 9 runs; one lost 6
/// of 2,184, all started within 0.1 s of the pod's deletion (while the
/// test creates a Service, which reloads both replicas' HAProxy) and
/// unanswered on their SYN's retry too. Not understood yet.
const LOST_WHEN_THE_HOLDER_IS_DELETED: u64 = 10;

/// Installs (or upgrades to) FerryLB with VRRP: keepalived on every replica.
async fn install_vrrp(lab: &Lab, client: &kube::Client) {
    upgrade_release(lab, &["haproxy.vrrp.enabled=true"]);
    leader(client).await;
}

/// FerryLB's running pods and their nodes.
async fn replicas(client: &kube::Client) -> Vec<(String, String)> {
    Api::<Pod>::namespaced(client.clone(), RELEASE_NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name?, p.spec?.node_name?)))
        .collect()
}

/// The HAProxy configuration a replica serves, read from its sidecar.
fn served_config(lab: &Lab, pod: &str) -> String {
    lab.kubectl(&[
        "-n",
        RELEASE_NS,
        "exec",
        pod,
        "-c",
        "haproxy",
        "--",
        "busybox",
        "cat",
        "/run/ferrylb/haproxy.cfg",
    ])
}

/// Waits until every replica serves the same configuration, with `want` in
/// it; returns it.
async fn replicas_agree(lab: &'static Lab, client: &kube::Client, want: &str) -> String {
    let client = client.clone();
    let want = want.to_owned();
    wait::until(
        "both replicas to serve the same configuration",
        Duration::from_secs(60),
        || {
            let (client, want) = (client.clone(), want.clone());
            async move {
                let pods = replicas(&client).await;
                if pods.len() < 2 {
                    return None;
                }
                let configs: BTreeSet<String> =
                    pods.iter().map(|(p, _)| served_config(lab, p)).collect();
                let one = configs.into_iter().next()?;
                (pods.len() >= 2 && one.contains(&want)).then_some(one)
            }
        },
    )
    .await
}

/// The node whose interface holds `vip` (waits for exactly one).
async fn holder_of(lab: &Lab, vip: &str) -> String {
    wait::until("one node to hold the VIP", Duration::from_secs(30), || {
        let holders = holders(lab, vip);
        let one = (holders.len() == 1).then(|| holders[0].to_owned());
        async move { one }
    })
    .await
}

/// The nodes whose interface holds `vip` now.
fn holders(lab: &Lab, vip: &str) -> Vec<&'static str> {
    lab::NODES
        .iter()
        .copied()
        .filter(|n| {
            let out = lab.in_ns(
                &format!("ferrylb-lab-{n}"),
                &["ip", "-o", "addr", "show", "dev", "eth0"],
            );
            String::from_utf8_lossy(&out.stdout).contains(&format!(" {vip}/"))
        })
        .collect()
}

/// Cuts `node` off the lab's network (its link to the bridge goes down), or
/// reconnects it.
fn link(lab: &Lab, node: &str, up: bool) {
    let out = lab.in_ns(
        "ferrylb-lab-host",
        &[
            "ip",
            "link",
            "set",
            &format!("v{node}"),
            if up { "up" } else { "down" },
        ],
    );
    assert!(out.status.success(), "{out:?}");
}

/// `/metrics` of the replica on `node` (on the node's address, as the chart
/// serves it on the host network).
fn replica_metrics(lab: &Lab, node: &str) -> String {
    let ip = format!("10.250.0.1{}", node.trim_start_matches("node"));
    let out = lab.in_ns(
        "ferrylb-lab-host",
        &[
            "curl",
            "-sS",
            "-m",
            "5",
            &format!("http://{ip}:8080/metrics"),
        ],
    );
    assert!(out.status.success(), "metrics of {node}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `birdc` on the lab's router (the users' router, not FerryLB's).
fn router_birdc(lab: &Lab, args: &[&str]) {
    let ctl = lab.dir.join("router-bird.ctl");
    let mut cmd = vec!["birdc", "-s", ctl.to_str().unwrap()];
    cmd.extend_from_slice(args);
    let out = lab.in_ns(lab::ROUTER_NS, &cmd);
    assert!(
        out.status.success(),
        "birdc {args:?} on the router: {out:?}"
    );
}

/// Sends `sig` to the lab's kube-apiserver.
fn apiserver_signal(lab: &Lab, sig: &str) {
    let pid = std::fs::read_to_string(lab.dir.join("apiserver.pid")).expect("apiserver.pid");
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.trim())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} kube-apiserver");
}

/// `vip` as a URL host: IPv6 in brackets.
fn host(vip: &str) -> String {
    if vip.contains(':') {
        format!("[{vip}]")
    } else {
        vip.to_owned()
    }
}

/// What a client saw of each VIP while its holder was cut off.
struct Cut {
    seen: Vec<(String, Summary)>,
    old: String,
    new: String,
}

/// Cuts the node holding `vips` off the network while a client connects 20
/// times a second to each; the VIPs move together, to the new holder.
async fn cut_holder(lab: &Lab, vips: &[&str]) -> Cut {
    let old = holder_of(lab, vips[0]).await;
    let probes: Vec<_> = vips
        .iter()
        .map(|v| (v.to_string(), lab.probe(&host(v), 80, 20)))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    link(lab, &old, false);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut seen = Vec::new();
    for (v, p) in probes {
        seen.push((v, p.finish().await));
    }
    let new = holder_of_except(lab, vips[0], &old, Duration::from_secs(10)).await;
    for v in &vips[1..] {
        assert_eq!(
            holder_of_except(lab, v, &old, Duration::from_secs(10)).await,
            new,
            "{v} moved elsewhere"
        );
    }
    link(lab, &old, true);
    // The node comes back still master in its own view: VRRP settles on one
    // master again (the higher priority wins), which may move the VIPs once
    // more, and keepalived repeats its announcements 5 s after a change.
    // Measure nothing else until that is over.
    settled(lab, vips[0]).await;
    Cut { seen, old, new }
}

/// Waits until one node has held `vip` for eight seconds in a row.
async fn settled(lab: &Lab, vip: &str) {
    let (mut last, mut steady) = (String::new(), 0);
    for _ in 0..60 {
        let now = holder_of(lab, vip).await;
        steady = if now == last { steady + 1 } else { 0 };
        if steady >= 8 {
            return;
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("{vip} did not settle on one node within 60 s");
}

/// Every VIP answered again within [`VRRP_FAILOVER_GAP_S`].
fn assert_failover(what: &str, cut: &Cut) {
    for (vip, s) in &cut.seen {
        report(
            &format!("{what}: {} cut off, {} took over {vip}", cut.old, cut.new),
            s,
        );
        assert!(
            s.longest_gap_s < VRRP_FAILOVER_GAP_S,
            "new connections to {vip} must succeed again within {VRRP_FAILOVER_GAP_S}s: {s:?}"
        );
    }
}

/// The node other than `not` whose interface holds `vip`.
async fn holder_of_except(lab: &Lab, vip: &str, not: &str, within: Duration) -> String {
    wait::until("another node to hold the VIP", within, || {
        let found = holders(lab, vip)
            .into_iter()
            .find(|n| *n != not)
            .map(str::to_owned);
        async move { found }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn vrrp_every_replica_serves_and_vips_move_without_the_leader_or_the_api_server() {
    let _serial = serial().await;
    let lab = lab::shared();
    let client = lab.client().await;
    install_vrrp(lab, &client).await;
    // An earlier run of this test on a lab kept up holds the addresses it
    // asks for: its Services go first.
    for old in lab
        .kubectl(&["get", "namespaces", "-o", "name"])
        .lines()
        .filter(|n| n.starts_with("namespace/lab-vrrp-"))
    {
        lab.kubectl(&["delete", old, "--wait=true", "--timeout=60s"]);
    }
    let ns = k::namespace(&client, "lab-vrrp").await;
    let vip = echo_service(lab, &client, &ns, 3, None, false).await;
    answered_by(lab, &vip, &lab::NODES, Duration::from_secs(60)).await;

    // A burst of changes: both replicas end up serving the identical file.
    for i in 1..=4 {
        lab.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: burst-{i}, namespace: {ns}}}\n\
             spec: {{type: LoadBalancer, selector: {{app: echo}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
        ));
    }
    lab.kubectl(&["-n", &ns, "delete", "service", "burst-2", "burst-3"]);
    let burst_4 = vip_of(&client, &ns, "burst-4").await;
    let config = replicas_agree(lab, &client, &format!("bind {burst_4}:80")).await;
    assert!(config.contains(&format!("bind {vip}:80")), "{config}");
    eprintln!(
        "lab: vrrp: {} replicas serve the same configuration ({} bytes)",
        replicas(&client).await.len(),
        config.len()
    );

    // A dual-stack Service: an IPv6 VIP (the one it asks for) beside an
    // IPv4 one, both answering.
    lab.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: six, namespace: {ns}, annotations: {{ferrylb.io/load-balancer-ips: \"fd51::20a\"}}}}\n\
         spec: {{type: LoadBalancer, ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv4, IPv6], selector: {{app: echo}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
    ));
    let addresses = addresses_of(&client, &ns, "six", 2).await;
    assert!(addresses[0].starts_with("10.250.0.2"), "{addresses:?}");
    let six = addresses[1].clone();
    assert_eq!(six, "fd51::20a");
    for a in &addresses {
        answered_by(lab, &host(a), &lab::NODES, Duration::from_secs(60)).await;
    }

    // The node holding the VIPs dies (its link is cut): another takes them
    // over, IPv4 and IPv6 together.
    let cut = cut_holder(lab, &[&vip, &six]).await;
    assert_failover("vrrp", &cut);

    // The same with the API server stopped: VRRP needs neither it nor the
    // Lease.
    apiserver_signal(lab, "STOP");
    let cut = cut_holder(lab, &[&vip]).await;
    apiserver_signal(lab, "CONT");
    assert_failover("vrrp, API server stopped", &cut);

    // A planned stop of the replica holding the VIPs: its keepalived hands
    // them over first, its HAProxy finishes what it holds. Meanwhile a
    // Service created with one replica down is served, and by both once the
    // replacement runs.
    let holder = holder_of(lab, &vip).await;
    let (pod, _) = replicas(&client)
        .await
        .into_iter()
        .find(|(_, n)| *n == holder)
        .expect("a replica on the holding node");
    let probe = lab.probe(&vip, 80, 100);
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    Api::<Pod>::namespaced(client.clone(), RELEASE_NS)
        .delete(&pod, &DeleteParams::default())
        .await
        .unwrap();
    lab.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: late, namespace: {ns}}}\n\
         spec: {{type: LoadBalancer, selector: {{app: echo}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
    ));
    let late = vip_of(&client, &ns, "late").await;
    answered_by(lab, &late, &lab::NODES, Duration::from_secs(60)).await;
    lab.kubectl(&[
        "-n",
        RELEASE_NS,
        "rollout",
        "status",
        "deployment/ferrylb",
        "--timeout=120s",
    ]);
    replicas_agree(lab, &client, &format!("bind {late}:80")).await;
    // At least 2,000 connections, 100 a second.
    let left = Duration::from_secs(22).saturating_sub(started.elapsed());
    tokio::time::sleep(left).await;
    let s = probe.finish().await;
    report(&format!("vrrp: replica on {holder} deleted"), &s);
    assert_planned_move(&s, LOST_WHEN_THE_HOLDER_IS_DELETED);

    // What the replicas say of themselves: one is MASTER and holds the
    // VIPs, both serve the same configuration.
    let pods = replicas(&client).await;
    let metrics: Vec<(String, String)> = pods
        .iter()
        .map(|(_, node)| (node.clone(), replica_metrics(lab, node)))
        .collect();
    let masters: Vec<&String> = metrics
        .iter()
        .filter(|(_, m)| m.contains(r#"ferrylb_vrrp_state{state="MASTER"} 1"#))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(masters.len(), 1, "one MASTER: {metrics:?}");
    let held = format!(r#"ferrylb_haproxy_vip_held{{vip="{vip}"}} 1"#);
    for (node, m) in &metrics {
        assert_eq!(m.contains(&held), node == masters[0], "{node}: {m}");
    }
    let served: BTreeSet<&str> = metrics
        .iter()
        .filter_map(|(_, m)| {
            m.lines()
                .find(|l| l.starts_with("ferrylb_haproxy_config_generation{"))?
                .split('"')
                .nth(1)
        })
        .collect();
    assert_eq!(served.len(), 1, "the same configuration: {metrics:?}");

    // `helm upgrade` rolls both replicas: nothing lost either.
    let probe = lab.probe(&vip, 80, 100);
    let started = std::time::Instant::now();
    upgrade_release(
        lab,
        &["haproxy.vrrp.enabled=true", "podAnnotations.rolled=again"],
    );
    let left = Duration::from_secs(22).saturating_sub(started.elapsed());
    tokio::time::sleep(left.max(Duration::from_secs(3))).await;
    let s = probe.finish().await;
    report("vrrp: helm upgrade", &s);
    assert_planned_move(&s, 0);

    // Back to the lab's usual release (VIPs by the leader), Services first.
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    for name in ["echo", "burst-1", "burst-4", "late", "six"] {
        svcs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait::until("the Services to be gone", Duration::from_secs(60), || {
        let svcs = svcs.clone();
        async move {
            svcs.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await;
    upgrade_release(lab, &[]);
}

/// The figures in BENCHMARKS.md: the VIPs' holder cut off ten times with
/// VRRP (defaults), and three times with the VIPs held by the leader (no
/// VRRP), each while a client connects 20 times a second (BGP mode:
/// [`failover_trials_bgp`]). Not part of the suite (about eight minutes):
///   cargo test --test lab -- --ignored failover_trials --nocapture
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run it by name"]
async fn failover_trials() {
    let _serial = serial().await;
    let lab = lab::shared();
    let client = lab.client().await;
    install_vrrp(lab, &client).await;
    let ns = k::namespace(&client, "lab-trials").await;
    let vip = echo_service(lab, &client, &ns, 3, None, false).await;
    answered_by(lab, &vip, &lab::NODES, Duration::from_secs(60)).await;

    let mut gaps = Vec::new();
    let mut failed = Vec::new();
    for _ in 0..10 {
        every_server_up(lab, &client, Duration::from_secs(60)).await;
        let cut = cut_holder(lab, &[&vip]).await;
        let s = &cut.seen[0].1;
        gaps.push(s.longest_gap_s);
        failed.push(s.failed);
        // The node that was cut comes back before the next trial.
        answered_by(lab, &vip, &lab::NODES, Duration::from_secs(60)).await;
    }
    gaps.sort_by(f64::total_cmp);
    eprintln!(
        "lab: failover trials, vrrp (10): longest gap median {:.2}s max {:.2}s; failed per trial {failed:?}",
        (gaps[4] + gaps[5]) / 2.0,
        gaps[9]
    );

    // The same without VRRP: the leader holds the VIPs; cut off, it stops
    // renewing its Lease, and the other replica takes over once it expires.
    upgrade_release(lab, &[]);
    leader(&client).await;
    answered_by(lab, &vip, &lab::NODES, Duration::from_secs(60)).await;
    for _ in 0..3 {
        let old = holder_of(lab, &vip).await;
        let probe = lab.probe(&vip, 80, 20);
        tokio::time::sleep(Duration::from_secs(2)).await;
        link(lab, &old, false);
        let back = holder_of_except(lab, &vip, &old, Duration::from_secs(120)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let s = probe.finish().await;
        link(lab, &old, true);
        eprintln!(
            "lab: failover trial, leader-held VIP: {old} cut off, {back} took over: longest gap {:.2}s, failed {}",
            s.longest_gap_s, s.failed
        );
        // The old leader lost its Lease and restarts; wait for both again.
        lab.kubectl(&[
            "-n",
            RELEASE_NS,
            "rollout",
            "status",
            "deployment/ferrylb",
            "--timeout=180s",
        ]);
        leader(&client).await;
        answered_by(lab, &vip, &lab::NODES, Duration::from_secs(120)).await;
    }
    Api::<Service>::namespaced(client.clone(), &ns)
        .delete("echo", &DeleteParams::default())
        .await
        .unwrap();
}

/// The BGP mode's row beside [`failover_trials`]: every node serves, and a
/// node whose link is cut is routed around by the router (BFD). The same
/// pods (one per node) and client rate, the client behind the router;
/// each node's link cut three times in turn. The router hashes as its
/// requirement says (resilient), or as `FERRYLB_LAB_HASHING` says
/// (`plain`). Not part of the suite (about five minutes):
///   cargo test --test lab -- --ignored failover_trials_bgp --nocapture
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run it by name"]
async fn failover_trials_bgp() {
    let _serial = serial().await;
    let lab = lab::shared();
    let client = lab.client().await;
    let (ns, _restore, vip) = bgp_echo(lab, &client, "lab-trials-bgp", 3).await;
    let hashing = std::env::var("FERRYLB_LAB_HASHING").unwrap_or_else(|_| "resilient".into());
    router_hashing(lab, &vip, &hashing).await;
    let mut gaps = Vec::new();
    let mut failed = Vec::new();
    let mut withdrawn = Vec::new();
    for trial in 0..9 {
        let i = trial % 3;
        let node = lab::NODES[i];
        every_server_up(lab, &client, Duration::from_secs(60)).await;
        let rest: Vec<&str> = NODE_IPS
            .iter()
            .copied()
            .filter(|ip| *ip != NODE_IPS[i])
            .collect();
        let probe = lab.probe_from(lab::OUTSIDE_NS, &vip, 80, 20);
        tokio::time::sleep(Duration::from_secs(2)).await;
        link(lab, node, false);
        let cut = nexthops_become(lab, &vip, &rest, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(4) - Duration::from_secs_f64(cut.min(4.0))).await;
        let s = probe.finish().await;
        link(lab, node, true);
        eprintln!(
            "lab: failover trial, bgp: {node}'s link cut, withdrawn after {cut:.2}s: longest gap {:.2}s, failed {} of {} {:?}",
            s.longest_gap_s, s.failed, s.sent, s.errors
        );
        gaps.push(s.longest_gap_s);
        failed.push(s.failed);
        withdrawn.push(cut);
        nexthops_become(lab, &vip, &NODE_IPS, Duration::from_secs(120)).await;
    }
    gaps.sort_by(f64::total_cmp);
    withdrawn.sort_by(f64::total_cmp);
    eprintln!(
        "lab: failover trials, bgp, {hashing} hashing (9): withdrawn after {:.2}-{:.2}s; longest gap median {:.2}s max {:.2}s; failed per trial {failed:?}",
        withdrawn[0], withdrawn[8], gaps[4], gaps[8]
    );
    delete_namespace(&client, &ns).await;
}

/// Waits until the HAProxy of every replica has every server of every
/// Service up: a node cut off before is checked up again everywhere.
async fn every_server_up(lab: &Lab, client: &kube::Client, within: Duration) {
    let nodes: BTreeSet<String> = replicas(client).await.into_iter().map(|(_, n)| n).collect();
    for node in nodes {
        wait::until(
            &format!("every server up in {node}'s HAProxy"),
            within,
            || async {
                let states = server_states(lab, client, &node).await;
                states.values().all(|s| s == "UP").then_some(())
            },
        )
        .await;
    }
}

/// FerryLB in BGP mode: three replicas, each announcing to the lab's router.
/// The release's values in BGP mode (over the lab's).
const BGP_VALUES: [&str; 8] = [
    "replicaCount=3",
    "haproxy.pool=10.252.0.1-10.252.0.14\\,fd52::1-fd52::e",
    "haproxy.vipInterface=",
    "haproxy.bgp.enabled=true",
    "haproxy.bgp.peers[0].address=10.250.0.254",
    "haproxy.bgp.peers[0].asn=64500",
    "haproxy.bgp.peers[1].address=fd51::fe",
    "haproxy.bgp.peers[1].asn=64500",
];

async fn install_bgp(lab: &Lab, client: &kube::Client) {
    upgrade_release(lab, &BGP_VALUES);
    leader(client).await;
}

/// The addresses the router's kernel routes `vip` through (its ECMP set).
fn router_nexthops(lab: &Lab, vip: &str) -> BTreeSet<String> {
    let family = if vip.contains(':') { "-6" } else { "-4" };
    let out = lab.in_ns(lab::ROUTER_NS, &["ip", family, "route", "show", vip]);
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == "via")
        .map(|w| w[1].to_owned())
        .collect()
}

/// Waits until the router routes `vip` through exactly `want`; the time it
/// took.
async fn nexthops_become(lab: &Lab, vip: &str, want: &[&str], within: Duration) -> f64 {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    let start = std::time::Instant::now();
    loop {
        let now = router_nexthops(lab, vip);
        if now == want {
            return start.elapsed().as_secs_f64();
        }
        assert!(
            start.elapsed() < within,
            "the router routes {vip} via {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const NODE_IPS: [&str; 3] = ["10.250.0.11", "10.250.0.12", "10.250.0.13"];

/// Counters on the router of new connections (SYNs) to `vip` it sends to
/// each node.
fn count_syns(lab: &Lab, vip: &str) {
    let mut script = String::from(
        "table ip ferrylb_lab_spread\ndelete table ip ferrylb_lab_spread\n\
         table ip ferrylb_lab_spread {\n  chain post {\n    type filter hook postrouting priority 0; policy accept;\n",
    );
    for (node, ip) in lab::NODES.iter().zip(NODE_IPS) {
        script.push_str(&format!(
            "    ip daddr {vip} tcp flags & (syn | ack) == syn rt ip nexthop {ip} counter comment \"{node}\"\n"
        ));
    }
    script.push_str("  }\n}\n");
    let path = support::env::tempdir("ferrylb-spread").join("spread.nft");
    std::fs::write(&path, script).unwrap();
    let out = lab.in_ns(lab::ROUTER_NS, &["nft", "-f", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

/// Deletes the BGP replica on node3 and waits until the router routed
/// `vip` around node3 and then through it again (its replacement
/// announcing); how long each took, and a moment more for the traffic.
async fn node3_replica_replaced(lab: &Lab, client: &kube::Client, vip: &str) -> (f64, f64) {
    let pod = replica_on(client, "node3").await;
    lab.kubectl(&["-n", RELEASE_NS, "delete", "pod", &pod, "--wait=false"]);
    let withdrawn = nexthops_become(lab, vip, &NODE_IPS[..2], Duration::from_secs(30)).await;
    let back = nexthops_become(lab, vip, &NODE_IPS, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    (withdrawn, back)
}

/// How the lab's router hashes new flows over the paths it learned:
/// `plain` (hash-threshold ECMP) or `resilient` (a resilient nexthop
/// group; tests/lab/router-routes).
/// Waits until the router routes `vip` that way.
async fn router_hashing(lab: &Lab, vip: &str, mode: &str) {
    std::fs::write(lab.dir.join("router-hashing"), format!("{mode}\n")).unwrap();
    let resilient = mode == "resilient";
    wait::until(
        &format!("the router to route {vip} with {mode} hashing"),
        Duration::from_secs(10),
        || async {
            let out = lab.in_ns(lab::ROUTER_NS, &["ip", "route", "show", vip]);
            let text = String::from_utf8_lossy(&out.stdout);
            (text.contains("via") && text.contains("nhid") == resilient).then_some(())
        },
    )
    .await;
}

/// What [`count_syns`] counted, by node; the counters are removed.
fn syns_counted(lab: &Lab) -> std::collections::BTreeMap<String, u64> {
    let out = lab.in_ns(
        lab::ROUTER_NS,
        &["nft", "list", "table", "ip", "ferrylb_lab_spread"],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = lab.in_ns(
        lab::ROUTER_NS,
        &["nft", "delete", "table", "ip", "ferrylb_lab_spread"],
    );
    text.lines()
        .filter_map(|l| {
            let packets = l
                .split("packets ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            let node = l
                .split("comment \"")
                .nth(1)?
                .trim_end_matches('"')
                .to_owned();
            Some((node, packets))
        })
        .collect()
}

/// BGP mode, active-active (README, "VIPs announced over BGP"): every
/// replica announces every VIP its HAProxy serves to the lab's router (a
/// BIRD of its own), which routes it over all three nodes; new
/// connections from a client behind the router spread over them; a replica
/// deleted (a planned move) withdraws before it stops and no new
/// connection fails; the API server unreachable for 60 s changes nothing;
/// a node's link cut is noticed by BFD. The figures go to BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread")]
async fn bgp_every_replica_announces_and_the_router_spreads_connections_over_them() {
    let _serial = serial().await;
    let lab = lab::shared();
    let client = lab.client().await;
    let (ns, _restore, vip) = bgp_echo(lab, &client, "lab-bgp", 6).await;
    let all = NODE_IPS;
    for node in lab::NODES {
        wait::until(
            &format!("{node}'s BGP metrics"),
            Duration::from_secs(30),
            || async {
                let m = replica_metrics(lab, node);
                (m.contains("ferrylb_bgp_session_up{peer=\"10.250.0.254\"} 1")
                    && m.contains("ferrylb_bgp_session_up{peer=\"fd51::fe\"} 1")
                    // At least this Service's (other tests' Services
                    // stay in the lab and are announced too).
                    && m.lines().any(|l| {
                        l.strip_prefix("ferrylb_bgp_routes_announced ")
                            .and_then(|n| n.trim().parse::<u64>().ok())
                            .is_some_and(|n| n >= 1)
                    }))
                .then_some(())
            },
        )
        .await;
    }

    // Each node's HAProxy answers (kube-proxy has programmed the nodePort).
    for node in lab::NODES {
        wait::until(
            &format!("{node}'s HAProxy to answer"),
            Duration::from_secs(60),
            || async {
                let url = format!("http://{vip}/");
                let ns = format!("ferrylb-lab-{node}");
                let out = lab.in_ns(&ns, &["curl", "-sS", "-m", "2", &url]);
                out.status.success().then_some(())
            },
        )
        .await;
    }

    // New connections spread over the three nodes.
    count_syns(lab, &vip);
    let probe = lab.probe_from(lab::OUTSIDE_NS, &vip, 80, 50);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let s = probe.finish().await;
    let spread = syns_counted(lab);
    report("bgp: steady state", &s);
    eprintln!("lab: bgp: new connections per node: {spread:?}");
    assert_eq!(s.failed, 0, "{s:?}");
    assert!(
        lab::NODES
            .iter()
            .all(|n| spread.get(*n).is_some_and(|c| *c > 0)),
        "every node takes new connections: {spread:?}"
    );

    // The router takes its session with node1 down: node1's replica says
    // so in an Event on its pod, and again when the session is back.
    let node1_pod = replica_on(&client, "node1").await;
    router_birdc(lab, &["disable", "node1"]);
    let about = |reason| ("Pod", node1_pod.as_str(), reason);
    let down = notes_until(
        &client,
        RELEASE_NS,
        about("BgpSessionDown"),
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    router_birdc(lab, &["enable", "node1"]);
    let up = notes_until(
        &client,
        RELEASE_NS,
        about("BgpSessionUp"),
        Duration::from_secs(60),
        |_| true,
    )
    .await;
    eprintln!("lab: bgp: {down:?}; {up:?}");
    assert!(down[0].contains("10.250.0.254"), "{down:?}");
    nexthops_become(lab, &vip, &all, Duration::from_secs(60)).await;

    // IPv6: a dual-stack Service's IPv6 VIP is announced over the IPv6
    // sessions and answers a client behind the router.
    lab.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: six, namespace: {ns}}}\n\
         spec: {{type: LoadBalancer, ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv4, IPv6], \
         selector: {{app: echo}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
    ));
    let six = addresses_of(&client, &ns, "six", 2).await;
    let v6 = six[1].clone();
    assert!(v6.starts_with("fd52::"), "{six:?}");
    nexthops_become(
        lab,
        &v6,
        &["fd51::11", "fd51::12", "fd51::13"],
        Duration::from_secs(60),
    )
    .await;
    wait::until(
        "the IPv6 VIP to answer the client behind the router",
        Duration::from_secs(60),
        || async {
            let url = format!("http://[{v6}]/");
            let out = lab.in_ns(lab::OUTSIDE_NS, &["curl", "-g", "-sS", "-m", "2", &url]);
            out.status.success().then_some(())
        },
    )
    .await;
    eprintln!("lab: bgp: the IPv6 VIP {v6} routed over three nodes and answered");

    // A planned move: the replica on node3 is deleted. It drops new
    // handshakes for a moment, withdraws, and only then stops.
    let probe = lab.probe_from(lab::OUTSIDE_NS, &vip, 80, 50);
    // Long-lived connections through it, spread by the router over the
    // three nodes: what happens to them is recorded (the router's plain
    // hash-threshold ECMP moves some flows of the nodes that stay when a
    // path leaves; the README's router requirement is resilient hashing).
    let kept = lab.probe_kept_from(lab::OUTSIDE_NS, &vip, 80, 12).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (withdrawn, back) = node3_replica_replaced(lab, &client, &vip).await;
    let s = probe.finish().await;
    report("bgp: replica deleted (planned)", &s);
    let k = kept.finish().await;
    report(
        "bgp: 12 long-lived connections through the planned move",
        &k,
    );
    eprintln!(
        "lab: bgp: withdrawn {withdrawn:.2}s after the delete, announced again {back:.2}s later"
    );
    // New connections to the leaving node wait for their SYN's retry and
    // are answered by a node that stays. The router's plain hash-threshold
    // ECMP (no resilient hashing, the README's router requirement) moves
    // some flows of the nodes that stay when a path leaves or comes back:
    // a connection in flight at that instant can be reset by the node it
    // lands on (1 of 745 in one run), so resets are recorded, not promised
    // away; nothing else may fail.
    assert!(
        s.errors.keys().all(|e| e == "reset") && s.failed <= 2,
        "in a planned move only a re-hashed connection may fail: {s:?}"
    );

    // The same move with the router requirement met: resilient hashing
    // (a nexthop group that moves only the leaving path's flows). No new
    // connection fails, and of the long-lived ones only those the router
    // had sent to node3 may break.
    router_hashing(lab, &vip, "resilient").await;
    count_syns(lab, &vip);
    let kept = lab.probe_kept_from(lab::OUTSIDE_NS, &vip, 80, 12).await;
    let opened = syns_counted(lab);
    let via_node3 = opened.get("node3").copied().unwrap_or(0);
    let probe = lab.probe_from(lab::OUTSIDE_NS, &vip, 80, 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (withdrawn, back) = node3_replica_replaced(lab, &client, &vip).await;
    let s = probe.finish().await;
    let k = kept.finish().await;
    report("bgp: replica deleted (planned), resilient hashing", &s);
    report(
        &format!(
            "bgp: 12 long-lived connections through the planned move, resilient hashing \
             ({via_node3} opened through node3)"
        ),
        &k,
    );
    eprintln!(
        "lab: bgp: resilient hashing: withdrawn {withdrawn:.2}s after the delete, announced again {back:.2}s later"
    );
    assert_eq!(s.failed, 0, "no new connection fails: {s:?}");
    assert!(
        k.failed <= via_node3,
        "only connections through the leaving node may break ({via_node3} went through node3): {k:?}"
    );

    // The other planned moves, the router requirement still met: node2
    // drained of its replica (the replacement waits for the uncordon), and
    // `helm upgrade` replacing every replica one after another.
    let probe = lab.probe_from(lab::OUTSIDE_NS, &vip, 80, 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    lab.kubectl(&[
        "drain",
        "node2",
        "--pod-selector=app.kubernetes.io/name=ferrylb",
        "--delete-emptydir-data",
        "--timeout=120s",
    ]);
    let withdrawn = nexthops_become(lab, &vip, &[all[0], all[2]], Duration::from_secs(30)).await;
    lab.kubectl(&["uncordon", "node2"]);
    nexthops_become(lab, &vip, &all, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = probe.finish().await;
    report("bgp: node2 drained (planned), resilient hashing", &s);
    eprintln!(
        "lab: bgp: node2's replica evicted; the router routed around node2 {withdrawn:.2}s after the drain returned"
    );
    assert_eq!(s.failed, 0, "no new connection fails in a drain: {s:?}");

    let probe = lab.probe_from(lab::OUTSIDE_NS, &vip, 80, 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut args = upgrade_args(&BGP_VALUES);
    args.extend(["--set", "haproxy.nodeCheckPort=10256"]);
    // One replica per node: each replacement waits for the pod it
    // replaces to be gone.
    let timeout = args.iter().position(|a| *a == "3m").expect("a timeout");
    args[timeout] = "8m";
    helm_ok(lab, &args);
    nexthops_become(lab, &vip, &all, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = probe.finish().await;
    router_hashing(lab, &vip, "plain").await;
    report(
        "bgp: helm upgrade, every replica replaced (planned), resilient hashing",
        &s,
    );
    assert_eq!(s.failed, 0, "no new connection fails in an upgrade: {s:?}");

    // The API server unreachable for 60 s: nothing changes.
    let probe = lab.probe_from(lab::OUTSIDE_NS, &vip, 80, 20);
    apiserver_signal(lab, "STOP");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let during = router_nexthops(lab, &vip);
    apiserver_signal(lab, "CONT");
    let s = probe.finish().await;
    report("bgp: API server stopped 60 s", &s);
    assert_eq!(
        during.len(),
        3,
        "announcements while the API server was away: {during:?}"
    );
    assert_eq!(s.failed, 0, "{s:?}");

    // Unplanned: node3's link is cut. BFD (100 ms x 3) withdraws its
    // routes; connections hashed to it meanwhile fail (recorded).
    let probe = lab.probe_from(lab::OUTSIDE_NS, &vip, 80, 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    link(lab, "node3", false);
    let cut = nexthops_become(lab, &vip, &all[..2], Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    link(lab, "node3", true);
    let s = probe.finish().await;
    report("bgp: node3's link cut", &s);
    eprintln!("lab: bgp: the router withdrew node3 {cut:.2}s after its link was cut");
    nexthops_become(lab, &vip, &all, Duration::from_secs(120)).await;

    delete_namespace(&client, &ns).await;
}

/// FerryLB in BGP mode and an echo Service of `pods` pods in a new
/// namespace: the namespace, the guard that puts the lab's release back
/// when dropped (also when the test fails), and the Service's VIP, once
/// the router routes it over all three nodes.
async fn bgp_echo(
    lab: &'static Lab,
    client: &kube::Client,
    prefix: &str,
    pods: u32,
) -> (String, RestoreRelease, String) {
    install_bgp(lab, client).await;
    let ns = k::namespace(client, prefix).await;
    let restore = RestoreRelease {
        lab,
        ns: ns.clone(),
    };
    let vip = echo_service(lab, client, &ns, pods, None, false).await;
    assert!(vip.starts_with("10.252.0."), "VIP {vip} from the BGP pool");
    nexthops_become(lab, &vip, &NODE_IPS, Duration::from_secs(60)).await;
    (ns, restore, vip)
}

/// Puts FerryLB's release back to the lab's values (two replicas, VIPs on
/// the nodes' network) when dropped, also when the test failed, and waits
/// until only those two pods are left.
struct RestoreRelease {
    lab: &'static Lab,
    ns: String,
}

impl Drop for RestoreRelease {
    fn drop(&mut self) {
        // Nothing here may panic: it also runs while a failure unwinds.
        let kubectl = |args: &[&str]| self.lab.kubectl_quiet(args);
        let _ = std::fs::write(self.lab.dir.join("router-hashing"), "plain\n");
        kubectl(&["delete", "namespace", &self.ns, "--wait=false"]);
        let out = self.lab.helm(&upgrade_args(&[]));
        if !out.status.success() {
            eprintln!(
                "restoring the release failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for _ in 0..240 {
            let pods = kubectl(&["-n", RELEASE_NS, "get", "pods", "--no-headers"]);
            if pods.lines().count() == 2 {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Every change of `vip` on each node's interface, as `ip monitor` reports
/// it the moment it happens, stamped on arrival: (when, node, present).
type AddressEvents =
    std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, &'static str, bool)>>>;

struct AddressLog {
    events: AddressEvents,
    children: Vec<tokio::process::Child>,
}

impl AddressLog {
    async fn start(vip: &str) -> Self {
        use tokio::io::AsyncBufReadExt;
        let events = AddressEvents::default();
        let mut children = Vec::new();
        for node in lab::NODES {
            let mut child = tokio::process::Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/ferrylb-lab-{node}"))
                .args(["ip", "-o", "monitor", "address", "dev", "eth0"])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("ip monitor");
            let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let (events, needle) = (events.clone(), format!(" {vip}/"));
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.contains(&needle) {
                        let present = !line.starts_with("Deleted");
                        events
                            .lock()
                            .unwrap()
                            .push((std::time::Instant::now(), node, present));
                    }
                }
            });
            children.push(child);
        }
        // `ip monitor` reports changes only after it subscribed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Self { events, children }
    }

    /// The times `vip` was on two nodes at once, given who held it when the
    /// log started; and when it was added on each node.
    fn overlaps(
        &self,
        initial: &[&'static str],
    ) -> (Vec<String>, Vec<(std::time::Instant, &'static str)>) {
        let mut on: BTreeSet<&str> = initial.iter().copied().collect();
        let mut overlaps = Vec::new();
        let mut added = Vec::new();
        for (at, node, present) in self.events.lock().unwrap().iter() {
            if *present {
                on.insert(node);
                added.push((*at, *node));
            } else {
                on.remove(node);
            }
            if on.len() > 1 {
                overlaps.push(format!("{on:?}"));
            }
        }
        (overlaps, added)
    }
}

impl AddressLog {
    /// When `vip` first left `node`.
    fn removed_from(&self, node: &str) -> Option<std::time::Instant> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .find(|(_, n, present)| *n == node && !present)
            .map(|(at, _, _)| *at)
    }
}

impl Drop for AddressLog {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
    }
}

/// Drops the FerryLB pods' packets to the API server on `node` (to the
/// `kubernetes` Service, which is how pods reach it; the kubelet's own
/// connection goes to the host address and stays up, as does the data
/// path), or lifts that.
fn cut_from_api_server(lab: &Lab, node: &str, cut: bool) {
    let ns = format!("ferrylb-lab-{node}");
    let out = if cut {
        let path = support::env::tempdir("ferrylb-cut").join("cut.nft");
        std::fs::write(
            &path,
            "table inet ferrylb_lab_cut {\n  chain out {\n    type filter hook output priority 0;\n    \
             meta l4proto tcp ct original ip daddr 10.96.0.1 ct original proto-dst 443 drop\n  }\n}\n",
        )
        .unwrap();
        lab.in_ns(&ns, &["nft", "-f", path.to_str().unwrap()])
    } else {
        lab.in_ns(&ns, &["nft", "delete", "table", "inet", "ferrylb_lab_cut"])
    };
    assert!(out.status.success(), "{out:?}");
}

/// Lifts the cut when the test ends, however it ends.
struct CutGuard(&'static Lab, String);

impl Drop for CutGuard {
    fn drop(&mut self) {
        let _ = self.0.in_ns(
            &format!("ferrylb-lab-{}", self.1),
            &["nft", "delete", "table", "inet", "ferrylb_lab_cut"],
        );
    }
}

/// The leader's last renewal of the Lease, as the Lease records it.
async fn renewed_by(client: &kube::Client, holder: &str) -> Option<std::time::SystemTime> {
    let spec = Api::<Lease>::namespaced(client.clone(), RELEASE_NS)
        .get_opt(RELEASE)
        .await
        .ok()??
        .spec?;
    (spec.holder_identity.as_deref() == Some(holder)).then_some(())?;
    let t = spec.renew_time?.0;
    Some(std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(t.as_nanosecond()).ok()?))
}

/// The leader's node cut off from the API server only, for 40 s, while a
/// client opens 50 connections a second: recorded from every node, the VIP
/// is never on two nodes at once; the deposed leader takes it off before
/// its lease runs out and stands by; the new one serves within the lease duration plus 2 s
/// of the old leader's last renewal; a client that waits for its SYNs to
/// be answered (10 s) loses nothing outside the hand-over, and at most a
/// handful in it (most runs: none).
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_off_from_the_api_server_never_shares_the_vip() {
    let Start {
        _serial,
        lab,
        client,
        vip,
        ..
    } = start_with_echo("lab-cut", 3).await;
    let old_pod = leader(&client).await;
    let old_node = leader_node(&client).await;
    let initial = holders(lab, &vip);
    assert_eq!(initial, [old_node.as_str()]);
    let log = AddressLog::start(&vip).await;
    let probe = lab.probe_patient(&vip, 80, 50, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let _guard = CutGuard(lab, old_node.clone());
    cut_from_api_server(lab, &old_node, true);
    let cut_at = std::time::Instant::now();
    // The old leader's last renewal, read until someone else holds the Lease.
    let mut last_renewal = None;
    let new_pod = loop {
        if let Some(t) = renewed_by(&client, &old_pod).await {
            last_renewal = Some(t);
        }
        let holder = Api::<Lease>::namespaced(client.clone(), RELEASE_NS)
            .get_opt(RELEASE)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity);
        if let Some(h) = holder.filter(|h| *h != old_pod) {
            break h;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(40),
            "no takeover in 40 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let new_node = holder_of_except(lab, &vip, &old_node, Duration::from_secs(20)).await;
    let left = Duration::from_secs(40).saturating_sub(cut_at.elapsed());
    tokio::time::sleep(left).await;
    cut_from_api_server(lab, &old_node, false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = probe.finish().await;
    report(
        &format!(
            "leader {old_pod} on {old_node} cut from the API server 40 s, {new_pod} on {new_node} took over"
        ),
        &s,
    );

    let (overlaps, added) = log.overlaps(&initial);
    assert!(
        overlaps.is_empty(),
        "the VIP was on two nodes at once: {overlaps:?}"
    );
    let (served_at, node) = added
        .iter()
        .find(|(_, n)| *n == new_node)
        .copied()
        .expect("the VIP added on the new leader's node");
    assert_eq!(node, new_node);
    // When the old lease ran out, on the Instant clock.
    let last_renewal = last_renewal.expect("the old leader's renewal seen");
    let since_renewal = std::time::SystemTime::now()
        .duration_since(last_renewal)
        .unwrap();
    let ran_out = std::time::Instant::now() - since_renewal + Duration::from_secs(15);
    let late = served_at.saturating_duration_since(ran_out);
    eprintln!(
        "lab: the VIP left {old_node} and came to {new_node} {:.2} s after the cut, {:.2} s after the old lease ran out",
        (served_at - cut_at).as_secs_f64(),
        late.as_secs_f64()
    );
    assert!(
        late <= Duration::from_secs(2),
        "served {late:?} after the lease ran out"
    );
    // The deposed leader took the VIP off before its lease ran out (and
    // stands by: its pod still runs).
    let left = log
        .removed_from(&old_node)
        .expect("the VIP taken off the old node");
    assert!(
        left <= ran_out,
        "the VIP left {:?} after the old lease ran out",
        left - ran_out
    );
    assert!(
        Api::<Pod>::namespaced(client.clone(), RELEASE_NS)
            .get_opt(&old_pod)
            .await
            .unwrap()
            .is_some()
    );
    // Safety comes first: between the VIP leaving the old node and
    // arriving on the new one (the third of the lease the old leader's
    // renew deadline leaves) nobody answers for it, and a connection in
    // flight then (accepted by a busy HAProxy just before, or a SYN whose
    // retries miss the new holder) may be lost. Only then: any failure
    // outside that window, or more than a handful, is a bug.
    assert!(s.ok > 0, "{s:?}");
    let to_instant = |t: f64| {
        let ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            - (s.started_at + t);
        std::time::Instant::now() - Duration::from_secs_f64(ago.max(0.0))
    };
    let window = (left - Duration::from_secs(2))..=(served_at + Duration::from_secs(1));
    let outside: Vec<_> = s
        .failures
        .iter()
        .filter(|(t, _)| !window.contains(&to_instant(*t)))
        .collect();
    assert!(
        outside.is_empty() && s.failed <= 5,
        "connections failed outside the hand-over ({outside:?}), or too many: {s:?}"
    );
}

/// Without VRRP, an IPv6 VIP that moves to the new leader's node is
/// announced by unsolicited neighbour advertisements: a client that talked
/// to the old holder (its neighbour cache names the old node) reaches the
/// new one within 1 s of the VIP arriving there, as IPv4 clients do after
/// gratuitous ARP.
#[tokio::test(flavor = "multi_thread")]
async fn an_ipv6_vip_taken_over_is_announced_to_neighbours() {
    let Start {
        _serial,
        lab,
        client,
        ns,
        ..
    } = start_with_echo("lab-na", 3).await;
    lab.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: six, namespace: {ns}}}\n\
         spec: {{type: LoadBalancer, ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv4, IPv6], selector: {{app: echo}}, ports: [{{port: 80, targetPort: 8080}}]}}\n"
    ));
    let six = addresses_of(&client, &ns, "six", 2).await[1].clone();
    answered_by(lab, &host(&six), &lab::NODES, Duration::from_secs(60)).await;
    let old_node = leader_node(&client).await;
    assert_eq!(holders(lab, &six), [old_node.as_str()]);
    let url = format!("http://{}/", host(&six));
    let answered = |timeout: &str| {
        lab.in_ns(lab::CLIENT_NS, &["curl", "-g", "-sS", "-m", timeout, &url])
            .status
            .success()
    };
    // The client's neighbour cache now names the old holder.
    assert!(answered("2"));
    let log = AddressLog::start(&six).await;

    let old = leader(&client).await;
    Api::<Pod>::namespaced(client.clone(), RELEASE_NS)
        .delete(&old, &DeleteParams::default())
        .await
        .unwrap();
    let arrived = wait::until(
        "the IPv6 VIP on another node",
        Duration::from_secs(60),
        || {
            let added = log.overlaps(&[old_node_static(&old_node)]).1;
            let found = added
                .into_iter()
                .find(|(_, n)| *n != old_node)
                .map(|(at, _)| at);
            async move { found }
        },
    )
    .await;
    let reached = loop {
        if answered("0.3") {
            break std::time::Instant::now();
        }
        assert!(
            arrived.elapsed() < Duration::from_secs(30),
            "the client never reached the new holder"
        );
    };
    let after = reached.saturating_duration_since(arrived);
    eprintln!(
        "lab: IPv6 VIP moved from {old_node}; the client reached the new holder {:.2} s after the VIP arrived there",
        after.as_secs_f64()
    );
    assert!(after <= Duration::from_secs(1), "{after:?}");
    lab.kubectl(&[
        "-n",
        RELEASE_NS,
        "rollout",
        "status",
        &format!("deployment/{RELEASE}"),
        "--timeout=120s",
    ]);
}

/// `node` as one of the lab's node names.
fn old_node_static(node: &str) -> &'static str {
    lab::NODES
        .iter()
        .copied()
        .find(|n| *n == node)
        .expect("a lab node")
}

/// `kubectl drain` of the node holding the VIPs (FerryLB's pod evicted),
/// without VRRP, three times at 50 new connections a second: the leader there pauses new handshakes
/// to its VIPs (the accepted ones finish), takes them off, and the other
/// replica, watching the Lease, takes them over; a dropped SYN is answered
/// on its retry a second later. No connection fails.
#[tokio::test(flavor = "multi_thread")]
async fn draining_the_vip_holder_loses_no_connection() {
    let Start {
        _serial,
        lab,
        client,
        vip,
        ..
    } = start_with_echo("lab-drain", 6).await;
    for run in 1..=3 {
        let holder = holder_of(lab, &vip).await;
        let probe = lab.probe(&vip, 80, 50);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // FerryLB's pod only: evicting the echo pods too measures how
        // kube-proxy handles terminating pods, not the VIP's handover (it
        // lost 0–1 of ~550 that way, HAProxy finding every node's path to
        // a just-killed pod closed).
        lab.kubectl(&[
            "drain",
            &holder,
            "--pod-selector=app.kubernetes.io/name=ferrylb",
            "--delete-emptydir-data",
            "--timeout=120s",
        ]);
        let new = holder_of_except(lab, &vip, &holder, Duration::from_secs(30)).await;
        lab.kubectl(&[
            "-n",
            RELEASE_NS,
            "rollout",
            "status",
            &format!("deployment/{RELEASE}"),
            "--timeout=120s",
        ]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let s = probe.finish().await;
        lab.kubectl(&["uncordon", &holder]);
        report(
            &format!("drain {run} of {holder} (held the VIP), {new} took over"),
            &s,
        );
        assert!(s.sent >= 250, "{s:?}");
        assert_eq!(s.failed, 0, "drain {run}: {s:?}");
        leader(&client).await;
    }
}

/// Sends SIGCONT to the API server when dropped (a failed assertion must
/// not leave it stopped for the tests that follow).
struct ApiServerStopped(&'static Lab);

impl ApiServerStopped {
    fn stop(lab: &'static Lab) -> Self {
        apiserver_signal(lab, "STOP");
        Self(lab)
    }
}

impl Drop for ApiServerStopped {
    fn drop(&mut self) {
        apiserver_signal(self.0, "CONT");
    }
}

/// The API server stopped for 40 s (SIGSTOP) at 50 new connections a
/// second, without VRRP: the leader cannot renew its Lease, asks the other
/// replica past its renew deadline, hears that it does not reach the API
/// server either, and keeps the VIP. Recorded on every node, the VIP never
/// leaves its holder nor shows up elsewhere; no connection fails; the same
/// replica leads afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn the_vip_stays_through_an_api_server_outage_without_vrrp() {
    let Start {
        _serial,
        lab,
        client,
        vip,
        ..
    } = start_with_echo("lab-outage", 3).await;
    let pod = leader(&client).await;
    let node = old_node_static(&leader_node(&client).await);
    let initial = holders(lab, &vip);
    assert_eq!(initial, [node]);
    let log = AddressLog::start(&vip).await;
    let probe = lab.probe(&vip, 80, 50);
    tokio::time::sleep(Duration::from_secs(2)).await;
    {
        let _stopped = ApiServerStopped::stop(lab);
        tokio::time::sleep(Duration::from_secs(40)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let s = probe.finish().await;
    report("API server stopped 40 s (no VRRP)", &s);
    let (overlaps, added) = log.overlaps(&initial);
    assert!(overlaps.is_empty(), "the VIP on two nodes: {overlaps:?}");
    assert_eq!(log.removed_from(node), None, "the VIP left its holder");
    assert!(added.is_empty(), "the VIP added elsewhere: {added:?}");
    assert_eq!(s.failed, 0, "{s:?}");
    assert_eq!(leader(&client).await, pod, "another replica took over");
}
