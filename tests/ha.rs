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
    cmd.args(["controller", "--providers", "aws"])
        .args(["--kubeconfig", env.kubeconfig().to_str().unwrap()])
        .args(["--namespace", ns])
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
