//! Two `ferrylb controller` processes against the real API server and moto:
//! one leads through a Lease, the other waits; after `kill -9` of the leader
//! the other takes over within the lease duration and converges without
//! provisioning anything twice. Also `/metrics`, `/healthz` and `/readyz`
//! of the real binary.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, PostParams};
use support::aws::{self, Seed};
use support::harness::ingress_hostname;
use support::process::ChildGuard;
use support::{env, kube as k, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEASE: Duration = Duration::from_secs(4);
const CLASS: &str = "ferrylb.io/aws";

/// A free port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:`port`: the status code and body, or `None`
/// when nothing answers.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// The value of one metric line (`name{labels} value`) in a scrape.
fn metric(scrape: &str, line_start: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(line_start))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

struct Replica {
    name: String,
    metrics: u16,
    child: ChildGuard,
}

fn start_replica(
    name: &str,
    ns: &str,
    label: &str,
    seed: &Seed,
    extra: &[&str],
    dir: &Path,
) -> Replica {
    let env = env::shared();
    let metrics = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrylb"));
    let kubeconfig = env.kubeconfig();
    cmd.args(["controller", "--providers", "aws"]);
    if !extra.contains(&"--kubeconfig") {
        cmd.args(["--kubeconfig", kubeconfig.to_str().unwrap()]);
    }
    cmd.args(["--namespace", ns])
        .args(["--node-selector", &format!("{label}=true")])
        .args(["--metrics-address", &format!("127.0.0.1:{metrics}")])
        .args(["--leader-elect", "--leader-election-namespace", ns])
        .args([
            "--leader-election-lease-duration",
            &format!("{}s", LEASE.as_secs()),
        ])
        .args([
            "--aws-cluster-name",
            &seed.cluster,
            "--aws-vpc-id",
            &seed.vpc,
        ])
        .args([
            "--aws-region",
            "us-east-1",
            "--aws-endpoint-url",
            &env.aws_endpoint(),
        ])
        .args(["--aws-api-rate-scale", "1000"])
        .args(extra)
        .env("POD_NAME", name)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "ferrylb=debug,info");
    let child = ChildGuard::spawn(name, &mut cmd, &dir.join(format!("{name}.log")));
    Replica {
        name: name.to_owned(),
        metrics,
        child,
    }
}

async fn holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt("ferrylb")
        .await
        .ok()??
        .spec?
        .holder_identity
}

async fn create_service(client: &Client, ns: &str, name: &str) {
    let mut svc = k::lb_service(name, &[80]);
    svc.spec.as_mut().unwrap().load_balancer_class = Some(CLASS.to_owned());
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
}

async fn wait_hostname(client: &Client, ns: &str, name: &str, within: Duration) -> String {
    let api = Api::<Service>::namespaced(client.clone(), ns);
    wait::until(&format!("{name} has a hostname"), within, || async {
        api.get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|s| ingress_hostname(&s))
    })
    .await
}

#[tokio::test]
async fn only_the_leader_acts_and_a_follower_takes_over_after_kill_9() {
    let env = env::shared();
    let client = k::client(env).await;
    let conf = aws::sdk_config(env).await;
    let seed = aws::seed(&conf, 2).await;
    let ns = k::namespace(&client, "ha").await;
    let label = format!("test.ferrylb.io/{ns}");
    let mut nodes = Vec::new();
    for i in 0..2 {
        let name = format!("{ns}-n{i}");
        let mut n = k::node(&name, &format!("127.0.4.{}", i + 1));
        n.metadata.labels = Some([(label.clone(), "true".to_owned())].into());
        n.spec.get_or_insert_default().provider_id = Some(seed.provider_id(i));
        Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
            .create(&PostParams::default(), &n)
            .await
            .unwrap();
        nodes.push(name);
    }
    let dir = env::tempdir("ha");
    let mut a = start_replica("replica-a", &ns, &label, &seed, &[], &dir);
    let mut b = start_replica("replica-b", &ns, &label, &seed, &[], &dir);

    let first = wait::until("a leader", Duration::from_secs(30), || holder(&client, &ns)).await;
    let (leader, follower) = if first == a.name {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    create_service(&client, &ns, "one").await;
    wait_hostname(&client, &ns, "one", Duration::from_secs(30)).await;

    // The follower is ready (standing by) but has done nothing.
    let scrape = |port| async move { http_get(port, "/metrics").await.map(|(_, b)| b) };
    let f = wait::until("the follower's metrics", Duration::from_secs(10), || {
        scrape(follower.metrics)
    })
    .await;
    assert_eq!(metric(&f, "ferrylb_leader "), Some(0.0), "{f}");
    assert!(
        !f.contains("ferrylb_provider_calls_total{"),
        "the follower called a provider:\n{f}"
    );
    assert_eq!(
        http_get(follower.metrics, "/readyz").await.map(|(c, _)| c),
        Some(200)
    );
    let l = scrape(leader.metrics).await.unwrap();
    assert_eq!(metric(&l, "ferrylb_leader "), Some(1.0), "{l}");
    assert!(
        metric(
            &l,
            r#"ferrylb_provider_calls_total{provider="aws",operation="ensure",outcome="ok"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{l}"
    );
    assert!(
        metric(&l, r#"ferrylb_reconciles_total{result="ok",reason=""}"#).is_some_and(|v| v >= 1.0),
        "{l}"
    );
    assert_eq!(
        metric(&l, r#"ferrylb_load_balancers{provider="aws"}"#),
        Some(1.0),
        "{l}"
    );

    // kill -9: the Lease is not released; the follower takes it once it
    // expires, and converges what changed meanwhile.
    leader.child.kill();
    let killed_at = std::time::Instant::now();
    create_service(&client, &ns, "two").await;
    let new = wait::until("a new leader", LEASE * 4, || async {
        holder(&client, &ns).await.filter(|h| *h == follower.name)
    })
    .await;
    assert_eq!(new, follower.name);
    assert!(
        killed_at.elapsed() < LEASE * 2,
        "takeover took {:?} with a {LEASE:?} lease",
        killed_at.elapsed()
    );
    wait_hostname(&client, &ns, "two", Duration::from_secs(30)).await;

    // Nothing provisioned twice: one NLB per Service.
    let inv = aws::inventory(&conf, &seed).await;
    assert_eq!(inv.load_balancers.len(), 2, "{:?}", inv.load_balancers);
    assert_eq!(inv.target_groups.len(), 2);

    // SIGTERM: the new leader finishes, releases the Lease and exits 0.
    let pid = follower.child.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while follower.child.running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the leader did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        holder(&client, &ns).await,
        None,
        "the Lease was not released"
    );

    for n in &nodes {
        k::delete_node(&client, n).await;
    }
}

#[tokio::test]
async fn readyz_waits_for_the_caches_and_healthz_does_not() {
    let env = env::shared();
    let client = k::client(env).await;
    let conf = aws::sdk_config(env).await;
    let seed = aws::seed(&conf, 1).await;
    let ns = k::namespace(&client, "ready").await;
    let dir = env::tempdir("ready");
    // A node selector the API server refuses: the Node cache never syncs.
    let mut stuck = start_replica("stuck", &ns, "bad selector (", &seed, &[], &dir);
    let (code, body) = wait::until("healthz", Duration::from_secs(20), || {
        http_get(stuck.metrics, "/healthz")
    })
    .await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = http_get(stuck.metrics, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("caches not synced"), "{body}");
    assert!(stuck.child.running());

    // With a valid selector the same binary becomes ready.
    let label = format!("test.ferrylb.io/{ns}");
    let ok = start_replica("fine", &ns, &label, &seed, &[], &dir);
    wait::until("ready", Duration::from_secs(30), || async {
        http_get(ok.metrics, "/readyz")
            .await
            .filter(|(c, _)| *c == 200)
    })
    .await;
}

#[tokio::test]
async fn sigterm_stops_it_promptly_while_the_api_server_is_unreachable() {
    let dir = env::tempdir("ferrylb-unreachable");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster: {server: https://127.0.0.1:1}\n\
         users:\n- name: x\n  user: {token: x}\ncontexts:\n- name: x\n  context: {cluster: x, user: x}\ncurrent-context: x\n",
    )
    .unwrap();
    for leader_elect in [false, true] {
        let mut cmd = haproxy_controller(
            &kubeconfig,
            &dir.join("haproxy"),
            free_port(),
            "127.0.0.250/32",
        );
        cmd.args(["--haproxy-mode", "external"]);
        if leader_elect {
            cmd.arg("--leader-elect");
        }
        let log = dir.join(format!("ferrylb-{leader_elect}.log"));
        let mut child = ChildGuard::spawn("ferrylb", &mut cmd, &log);
        // Let it reach its retry loop.
        wait::until(
            "ferrylb retrying the API server",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                async move { (text.contains("retrying") || text.contains("failed")).then_some(()) }
            },
        )
        .await;
        Command::new("kill")
            .args(["-TERM", &child.pid().to_string()])
            .status()
            .unwrap();
        wait::until(
            "ferrylb to exit after SIGTERM",
            Duration::from_secs(10),
            || {
                let running = child.running();
                async move { (!running).then_some(()) }
            },
        )
        .await;
    }
}

/// `ferrylb controller` serving the HAProxy class by default, with its
/// HAProxy files in `dir`, metrics on 127.0.0.1:`metrics`, VIPs from `pool`,
/// and the kubeconfig `kubeconfig`.
fn haproxy_controller(kubeconfig: &Path, dir: &Path, metrics: u16, pool: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrylb"));
    cmd.args(["controller", "--providers", "haproxy"])
        .args(["--default-provider", "haproxy", "--haproxy-pool", pool])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--haproxy-dir")
        .arg(dir)
        .args(["--metrics-address", &format!("127.0.0.1:{metrics}")])
        .env("RUST_LOG", "ferrylb=debug,info");
    cmd
}

/// haproxy master processes whose configuration is `cfg`: those of the
/// matching processes whose parent is not one of them (workers are forked
/// by their master with the same command line).
fn haproxy_masters(cfg: &Path) -> usize {
    let out = Command::new("pgrep")
        .args(["-f", &format!("haproxy -W .* -f {}", cfg.display())])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let parent = |pid: &str| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid ...: comm may hold spaces; ppid follows ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_owned))
            .unwrap_or_default()
    };
    pids.iter().filter(|p| !pids.contains(&parent(p))).count()
}

#[tokio::test]
async fn a_killed_controller_s_haproxy_is_adopted_not_doubled() {
    let env = env::shared();
    let client = k::client(env).await;
    let ns = k::namespace(&client, "ha-adopt").await;
    let label = format!("test.ferrylb.io/{ns}");
    let node = format!("{ns}-n1");
    k::create_labelled_node(&client, &node, "127.0.0.11", &[(&label, "true")]).await;
    let dir = env::tempdir("ferrylb-adopt");
    let hdir = dir.join("haproxy");
    let cfg = hdir.join("haproxy.cfg");
    let binary = support::process::require_program("haproxy", ".ci/run installs it from Debian");
    let start = |n: u32| {
        let mut cmd = haproxy_controller(
            &env.kubeconfig(),
            &hdir,
            free_port(),
            "127.0.0.190-127.0.0.191",
        );
        cmd.args(["--namespace", &ns])
            .args(["--node-selector", &format!("{label}=true")])
            .arg("--haproxy-binary")
            .arg(&binary);
        ChildGuard::spawn("ferrylb", &mut cmd, &dir.join(format!("ferrylb-{n}.log")))
    };
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let vip_port = |svc: &Service| -> Option<std::net::SocketAddr> {
        let ip = svc
            .status
            .as_ref()?
            .load_balancer
            .as_ref()?
            .ingress
            .as_ref()?
            .first()?
            .ip
            .clone()?;
        Some(std::net::SocketAddr::new(ip.parse().ok()?, 8081))
    };
    let accepts = |addr: std::net::SocketAddr| {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
    };

    let mut first = start(1);
    svcs.create(&PostParams::default(), &k::lb_service("web", &[8081]))
        .await
        .unwrap();
    let addr = wait::until("web's VIP accepting", Duration::from_secs(60), || {
        let svcs = svcs.clone();
        async move {
            let svc = svcs.get("web").await.ok()?;
            vip_port(&svc).filter(|a| accepts(*a))
        }
    })
    .await;
    assert_eq!(haproxy_masters(&cfg), 1);

    // SIGKILL: the controller cannot stop its HAProxy, which serves on.
    first.kill();
    assert!(accepts(addr), "the data plane survives the controller");
    let mut second = start(2);
    svcs.delete("web", &Default::default()).await.unwrap();
    wait::until(
        "the deleted Service's VIP to stop accepting",
        Duration::from_secs(60),
        || {
            let gone = !accepts(addr);
            async move { gone.then_some(()) }
        },
    )
    .await;
    assert_eq!(
        haproxy_masters(&cfg),
        1,
        "a second haproxy beside the first"
    );

    // A clean stop takes the adopted HAProxy with it.
    Command::new("kill")
        .args(["-TERM", &second.pid().to_string()])
        .status()
        .unwrap();
    wait::until(
        "ferrylb and its haproxy to stop",
        Duration::from_secs(30),
        || {
            let done = !second.running() && haproxy_masters(&cfg) == 0;
            async move { done.then_some(()) }
        },
    )
    .await;
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .delete(&node, &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn readyz_fails_while_the_haproxy_binary_is_missing() {
    let env = env::shared();
    let client = k::client(env).await;
    let ns = k::namespace(&client, "ha-nobinary").await;
    let dir = env::tempdir("ferrylb-nobinary");
    let metrics = free_port();
    let mut cmd = haproxy_controller(
        &env.kubeconfig(),
        &dir.join("haproxy"),
        metrics,
        "127.0.0.195/32",
    );
    cmd.args(["--namespace", &ns])
        .args(["--haproxy-binary", "/nonexistent/haproxy"]);
    let _child = ChildGuard::spawn("ferrylb", &mut cmd, &dir.join("ferrylb.log"));
    // Alive, caches synced, and still not ready, saying why.
    wait::until("/healthz to answer", Duration::from_secs(30), || async {
        http_get(metrics, "/healthz")
            .await
            .filter(|(s, _)| *s == 200)
    })
    .await;
    let (status, body) = wait::until("/readyz to answer", Duration::from_secs(30), || async {
        http_get(metrics, "/readyz").await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status2, body2) = http_get(metrics, "/readyz").await.unwrap();
    assert!(
        status != 200 && status2 != 200,
        "{status} {body} / {status2} {body2}"
    );
    assert!(body2.contains("/nonexistent/haproxy"), "{body2}");
}

/// A TCP relay to the API server that can be cut: while cut, it relays
/// nothing in either direction and new connections hang (what a dropped
/// route does), so calls stall rather than fail fast.
struct CuttableRelay {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableRelay {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut open = rx.clone();
                    if open.wait_for(|c| !*c).await.is_err() {
                        return;
                    }
                    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pump(dr, uw, rx.clone()), pump(ur, dw, rx));
                });
            }
        });
        Self { port, cut, task }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for CuttableRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding each chunk back while the relay is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The leader cut off from the API server (its calls hang, nothing fails
/// fast) stops leading at its renew deadline and stands by, before the
/// follower may take the Lease: never two leaders. It keeps running. The follower takes over
/// within the lease duration plus a retry period and 2 s of the cut.
#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_before_a_follower_takes_over() {
    let env = env::shared();
    let client = k::client(env).await;
    let conf = aws::sdk_config(env).await;
    let seed = aws::seed(&conf, 1).await;
    let ns = k::namespace(&client, "cut").await;
    let label = format!("test.ferrylb.io/{ns}");
    let dir = env::tempdir("ha-cut");
    let text = std::fs::read_to_string(env.kubeconfig()).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .unwrap()
        .to_owned();
    let relay = CuttableRelay::start(server.parse().unwrap()).await;
    let relayed = dir.join("relayed-kubeconfig");
    std::fs::write(
        &relayed,
        text.replace(&server, &format!("127.0.0.1:{}", relay.port)),
    )
    .unwrap();

    let mut a = start_replica(
        "replica-a",
        &ns,
        &label,
        &seed,
        &["--kubeconfig", relayed.to_str().unwrap()],
        &dir,
    );
    wait::until("replica-a leads", Duration::from_secs(30), || async {
        holder(&client, &ns).await.filter(|h| h == "replica-a")
    })
    .await;
    let _b = start_replica("replica-b", &ns, &label, &seed, &[], &dir);
    // The follower has seen the leader's record at least once.
    tokio::time::sleep(LEASE / 2).await;

    relay.set_cut(true);
    let cut_at = std::time::Instant::now();
    let mut a_exited = None;
    let taken = loop {
        // It stops leading and stands by (its /metrics is local).
        if a_exited.is_none()
            && http_get(a.metrics, "/metrics")
                .await
                .is_some_and(|(_, m)| metric(&m, "ferrylb_leader ") == Some(0.0))
        {
            a_exited = Some(cut_at.elapsed());
        }
        if holder(&client, &ns).await.as_deref() == Some("replica-b") {
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < LEASE * 4,
            "no takeover within {:?}",
            LEASE * 4
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let a_exited = a_exited.expect("the cut-off leader still led when the follower took over");
    eprintln!(
        "cut-off leader stopped leading after {a_exited:?}; follower took over after {taken:?}"
    );
    assert!(
        a_exited < taken,
        "the old leader stopped at {a_exited:?}, after the takeover at {taken:?}"
    );
    let retry = (LEASE / 3).min(Duration::from_secs(2));
    assert!(
        taken <= LEASE + retry + Duration::from_secs(2),
        "takeover {taken:?} after the cut, with a {LEASE:?} lease"
    );
    let log = std::fs::read_to_string(dir.join("replica-a.log")).unwrap_or_default();
    assert!(
        log.contains("no renewal of the Lease within the renew deadline"),
        "{log}"
    );
    assert!(
        a.child.running(),
        "the deposed leader stands by, it does not exit"
    );
    relay.set_cut(false);
}
