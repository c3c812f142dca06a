//! The HAProxy provider says what it serves: Ready only for what a real
//! haproxy runs, through the real API server and the controller. Each test
//! has its own slice of 127.0.0.0/8 for VIPs and its own haproxy.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrylb_haproxy::{HaproxyProvider, HaproxySettings};
use ferrylb_model::LoadBalancerProvider;
use k8s_openapi::api::core::v1::Service;
use support::controller::{RunningController, config};
use support::haproxy::*;
use support::harness::{Harness, WAIT, condition};
use support::process::require_program;
use support::{env, kube as k, traffic, wait};

/// A controller for `h`'s class that ensures every Service again every
/// `resync`.
fn start_with_resync(h: &Harness<HaproxyProvider>, resync: Duration) -> RunningController {
    let mut cfg = config(
        vec![(
            h.class.clone(),
            h.provider.clone() as Arc<dyn LoadBalancerProvider>,
        )],
        None,
        &h.ns,
        &h.label,
    );
    cfg.resync = resync;
    RunningController::start(h.client.clone(), cfg)
}

/// Sends one command to the admin socket of `p`'s haproxy.
async fn admin(p: &HaproxyProvider, cmd: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(&p.settings().admin_socket)
        .await
        .unwrap();
    s.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn ready(svc: &Service) -> bool {
    condition(svc).is_some_and(|c| c.0 == "True")
}

/// Any number of source ranges the API server accepts is served (HAProxy
/// reads 64 words a line; they used to share one), and a Service is Ready
/// only while HAProxy serves it: a frontend paused behind FerryLB's back
/// turns the condition False at the next resync, and the repair (a full
/// reload) turns it True again.
#[tokio::test]
async fn many_source_ranges_are_served_and_ready_follows_what_haproxy_runs() {
    let mut h = harness("hx-truth", "127.0.0.180-127.0.0.183").await;
    h.node("n1", "127.0.0.11").await;
    let _ctl = start_with_resync(&h, Duration::from_secs(3));
    for (name, n) in [("r60", 60u32), ("r70", 70), ("r9000", 9000)] {
        let mut ranges: Vec<String> = (0..n - 1)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        ranges.push("127.0.0.50/32".into());
        let mut svc = k::lb_service(name, &[80]);
        svc.spec.as_mut().unwrap().load_balancer_source_ranges = Some(ranges);
        create(&h, svc).await;
    }
    let mut listeners = Vec::new();
    for name in ["r60", "r70", "r9000"] {
        let svc = h.wait_service("Ready", name, ready).await;
        let ip = vip(&svc).unwrap();
        listeners.push(traffic::answer("127.0.0.11", node_port(&svc, 0), name).await);
        let addr = SocketAddr::new(ip, 80);
        wait::until(
            &format!("{name}: the allowed client to get through"),
            WAIT,
            || traffic::reply_from(addr, Some("127.0.0.50")),
        )
        .await;
        assert_eq!(
            traffic::reply_from(addr, Some("127.0.0.51")).await,
            None,
            "{name}: a client outside the ranges got through"
        );
    }

    // What HAProxy runs changes behind FerryLB's back.
    let svc: Service = h.services().get("r70").await.unwrap();
    let ip = vip(&svc).unwrap();
    let frontend = admin(&h.provider, "show stat -1 1 -1")
        .await
        .lines()
        .filter_map(|l| l.split(',').next())
        .find(|n| n.starts_with("fe_") && n.contains("r70"))
        .expect("r70's frontend")
        .to_owned();
    admin(&h.provider, &format!("disable frontend {frontend}")).await;
    let svc = h
        .wait_service("r70 not Ready", "r70", |s| {
            condition(s).is_some_and(|c| c.0 == "False")
        })
        .await;
    let (_, reason, message) = condition(&svc).unwrap();
    assert_eq!(reason, "NotServed");
    assert!(message.contains(&format!("{ip}:80")), "{message}");
    // Repaired: served and Ready again.
    h.wait_service("r70 Ready again", "r70", ready).await;
    let addr = SocketAddr::new(ip, 80);
    wait::until("r70 to answer again", WAIT, || {
        traffic::reply_from(addr, Some("127.0.0.50"))
    })
    .await;
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

/// A port another process takes while FerryLB and its haproxy are down:
/// on start-up every other Service is served, that one is not Ready and
/// says `PortInUse` with the address and port; and a provider whose
/// haproxy is down is not ready.
#[tokio::test]
async fn a_port_taken_while_stopped_costs_only_its_service() {
    let pool = "127.0.0.185-127.0.0.187";
    let mut h = harness("hx-late", pool).await;
    h.node("n1", "127.0.0.11").await;
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ctl = h.start(false);
    create(&h, k::lb_service("late", &[i32::from(port)])).await;
    create(&h, k::lb_service("other", &[80])).await;
    let (_, late_ip) = wait_vip(&h, "late").await;
    let (other, other_ip) = wait_vip(&h, "other").await;
    ctl.stop().await;
    h.provider.shutdown().await;
    assert!(
        h.provider.check().await.is_err(),
        "a provider whose haproxy is down must not be ready"
    );

    // (The stopped haproxy's worker lets go of the port as it exits.)
    let _squatter = wait::until("the port to be free", WAIT, || async {
        std::net::TcpListener::bind(("0.0.0.0", port)).ok()
    })
    .await;
    let fresh = Arc::new(provider(pool));
    let _ctl = RunningController::start(
        h.client.clone(),
        config(
            vec![(h.class.clone(), fresh.clone())],
            None,
            &h.ns,
            &h.label,
        ),
    );
    let _l = traffic::answer("127.0.0.11", node_port(&other, 0), "other").await;
    wait_answers(SocketAddr::new(other_ip, 80), &["other"]).await;
    let late = h
        .wait_service("late's PortInUse condition", "late", |s| {
            condition(s).is_some_and(|c| c.1 == "PortInUse")
        })
        .await;
    let message = condition(&late).unwrap().2;
    assert!(message.contains(&format!("{late_ip}:{port}")), "{message}");
    fresh.check().await.expect("haproxy serves the others");
    let _ = node_port(&late, 0);
    fresh.shutdown().await;
    h.cleanup_nodes().await;
}

/// A refused configuration is retried with the backoff (5 s, 10 s, …), not
/// in a loop: the refusal's message is the same every time (haproxy quotes
/// its pid in every alert, and a status that changes on every attempt
/// triggers the next at once). The refusal comes from a wrapper around the
/// real haproxy that refuses any configuration holding the Service named
/// `refused`, quoting its own pid as haproxy does.
#[tokio::test]
async fn a_refused_configuration_is_retried_with_backoff_and_a_stable_message() {
    let real = require_program(
        "haproxy",
        ".ci/run installs it with `apt-get install haproxy`",
    );
    let dir = env::tempdir("haproxy-refusing");
    let count = dir.join("refusals");
    let wrapper = dir.join("haproxy");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = -c ] && grep -q refused \"$3\"; then\n  echo x >> {count}\n  \
             echo \"[ALERT]    ($$) : config : refused by the test\"\n  exit 1\nfi\nexec {real} \"$@\"\n",
            count = count.display(),
            real = real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut h = Harness::new("hx-backoff", |_| {
        let mut s = HaproxySettings::in_dir("127.0.0.190-127.0.0.191".parse().unwrap(), &dir);
        s.process.binary = wrapper.clone();
        s.hard_stop_after = Duration::from_secs(5);
        HaproxyProvider::new(s)
    })
    .await;
    h.node("n1", "127.0.0.11").await;
    let _ctl = h.start(false);
    create(&h, k::lb_service("refused", &[80])).await;
    let first = h
        .wait_service("refused's condition", "refused", |s| {
            condition(s).is_some_and(|c| c.0 == "False" && c.2.contains("refused by the test"))
        })
        .await;
    let refusals = || {
        std::fs::read_to_string(&count)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let at_first = refusals();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let later = refusals() - at_first;
    // Backoff 5 s then 10 s: two more attempts in 20 s, each a burst and
    // its retry alone (two checks); three allowed for a retry the status
    // write triggers.
    assert!(
        later <= 3 * 2,
        "{later} refused checks in 20 s: the backoff does not hold"
    );
    let now: Service = h.services().get("refused").await.unwrap();
    assert_eq!(
        condition(&now).unwrap().2,
        condition(&first).unwrap().2,
        "the same cause gave another message"
    );

    // Everyone else is served meanwhile.
    create(&h, k::lb_service("fine", &[80])).await;
    let (fine, ip) = wait_vip(&h, "fine").await;
    let _l = traffic::answer("127.0.0.11", node_port(&fine, 0), "fine").await;
    wait_answers(SocketAddr::new(ip, 80), &["fine"]).await;
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

/// Two valid Node names whose server names used to be the same: one long
/// name (hashed) and a 100-character one crafted to end in that hash.
#[tokio::test]
async fn a_node_name_crafted_after_another_ones_hash_is_served_as_its_own_server() {
    use sha2::Digest as _;
    let mut h = harness("hx-names", "127.0.0.195/32").await;
    let a = format!("{}.{}-b", "x".repeat(60), "y".repeat(45));
    let hash: String = sha2::Sha256::digest(a.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let c = format!("{}-{hash}", &a[..83]);
    for (name, ip) in [(&a, "127.0.0.11"), (&c, "127.0.0.12")] {
        k::delete_node(&h.client, name).await;
        k::create_labelled_node(&h.client, name, ip, &[(&h.label, "true")]).await;
    }
    let _ctl = h.start(false);
    create(&h, k::lb_service("web", &[80])).await;
    let (web, ip) = wait_vip(&h, "web").await;
    let _la = traffic::answer("127.0.0.11", node_port(&web, 0), "a").await;
    let _lc = traffic::answer("127.0.0.12", node_port(&web, 0), "c").await;
    wait_answers(SocketAddr::new(ip, 80), &["a", "c"]).await;
    // A third node (through the runtime API) and a change needing a reload
    // still load.
    h.node("n3", "127.0.0.13").await;
    let _l3 = traffic::answer("127.0.0.13", node_port(&web, 0), "n3").await;
    wait_answers(SocketAddr::new(ip, 80), &["a", "c", "n3"]).await;
    let servers = admin(&h.provider, "show servers state").await;
    assert_eq!(
        servers
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(" be_"))
            .count(),
        3,
        "{servers}"
    );
    for name in [&a, &c] {
        k::delete_node(&h.client, name).await;
    }
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

fn with_families(mut svc: Service, policy: &str, families: &[&str]) -> Service {
    let spec = svc.spec.as_mut().unwrap();
    spec.ip_family_policy = Some(policy.into());
    spec.ip_families = Some(families.iter().map(|f| (*f).to_owned()).collect());
    svc
}

fn ingress_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

fn reason_is(reason: &'static str) -> impl Fn(&Service) -> bool {
    move |s| condition(s).is_some_and(|c| c.1 == reason)
}

/// Addresses follow `spec.ipFamilies` and `spec.ipFamilyPolicy` (the API
/// server here has an IPv4 and an IPv6 Service range): an IPv4-only
/// Service gets an IPv4 VIP and, once the pool's IPv4 addresses are used
/// up, waits saying so rather than being given an IPv6 one its clients
/// cannot reach; an address of another family is refused when asked for;
/// `PreferDualStack` gets what the pool has room in, `RequireDualStack` one
/// address of each family or none, and both of its addresses carry traffic.
#[tokio::test]
async fn addresses_follow_the_services_ip_families_and_policy() {
    let mut h = harness("hx-family", "127.0.0.197/32,fd52::1/128,::1/128").await;
    h.node("n1", "127.0.0.11").await;
    let _ctl = h.start(false);
    create(&h, k::lb_service("first", &[80])).await;
    let (first, ip) = wait_vip(&h, "first").await;
    assert_eq!(ip.to_string(), "127.0.0.197");
    assert_eq!(
        first.spec.as_ref().unwrap().ip_families.as_deref(),
        Some(&["IPv4".to_owned()][..])
    );
    create(&h, k::lb_service("second", &[80])).await;
    let second = h
        .wait_service(
            "second's PoolExhausted",
            "second",
            reason_is("PoolExhausted"),
        )
        .await;
    assert!(
        ingress_ips(&second).is_empty(),
        "an IPv4 Service got an IPv6 VIP"
    );
    assert!(condition(&second).unwrap().2.contains("no IPv4 address"));

    // An IPv6 address asked for by an IPv4 Service is refused, naming both.
    let mut wrong = k::lb_service("wrong", &[81]);
    wrong.spec.as_mut().unwrap().load_balancer_ip = Some("fd52::1".into());
    create(&h, wrong).await;
    let wrong = h
        .wait_service(
            "AddressFamilyMismatch",
            "wrong",
            reason_is("AddressFamilyMismatch"),
        )
        .await;
    let message = condition(&wrong).unwrap().2;
    assert!(
        message.contains("fd52::1 is IPv6") && message.contains("[IPv4]"),
        "{message}"
    );

    // PreferDualStack with no IPv4 address free: IPv6 only.
    let prefer = with_families(
        k::lb_service("prefer", &[80]),
        "PreferDualStack",
        &["IPv4", "IPv6"],
    );
    create(&h, prefer).await;
    let prefer = h
        .wait_service("prefer's address", "prefer", |s| !ingress_ips(s).is_empty())
        .await;
    assert_eq!(ingress_ips(&prefer), ["fd52::1"]);

    // RequireDualStack waits for an IPv4 address, then gets one of each.
    let required = with_families(
        k::lb_service("required", &[18097]),
        "RequireDualStack",
        &["IPv4", "IPv6"],
    );
    create(&h, required).await;
    let waiting = h
        .wait_service(
            "required's PoolExhausted",
            "required",
            reason_is("PoolExhausted"),
        )
        .await;
    let message = condition(&waiting).unwrap().2;
    assert!(
        message.contains("RequireDualStack") && message.contains("no IPv4"),
        "{message}"
    );
    assert!(ingress_ips(&waiting).is_empty());
    for name in ["second", "first"] {
        h.services()
            .delete(name, &Default::default())
            .await
            .unwrap();
        wait::until(&format!("{name} to be gone"), WAIT, || async {
            let svc = h.services().get_opt(name).await.ok()?;
            svc.is_none().then_some(())
        })
        .await;
    }
    let required = h
        .wait_service("required's addresses", "required", |s| {
            ingress_ips(s).len() == 2
        })
        .await;
    assert_eq!(ingress_ips(&required), ["127.0.0.197", "::1"]);
    assert!(ready(&required));
    let _node = traffic::answer("127.0.0.11", node_port(&required, 0), "n1").await;
    for ip in ["127.0.0.197", "::1"] {
        wait_answers(SocketAddr::new(ip.parse().unwrap(), 18097), &["n1"]).await;
    }
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}

/// A network namespace of the test's own, removed when dropped.
struct Netns(String);

impl Netns {
    fn new(prefix: &str) -> Self {
        let name = format!("{prefix}-{}", std::process::id());
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip is not installed")
            .success();
        assert!(ok, "creating a network namespace needs root");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// In BGP mode, a configuration BIRD itself refuses (here a link-local
/// peer without an interface, which only BIRD's own check catches) keeps
/// the Service from being published and says why, naming BIRD's complaint;
/// BIRD is never started with it. (The VIPs that would go on `lo` go on a
/// network namespace's `lo` here.)
#[tokio::test]
async fn a_configuration_bird_refuses_is_reported_naming_its_cause() {
    use ferrylb_haproxy::bgp::{BgpSettings, BirdConfig, Peer};
    let ns = Netns::new("ferrylb-bgp-refused");
    let dir = env::tempdir("haproxy-bgp");
    let ip = dir.join("ip");
    std::fs::write(
        &ip,
        format!("#!/bin/sh\nexec ip netns exec {} ip \"$@\"\n", ns.0),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&ip)
        .status()
        .unwrap();
    let bird = require_program("bird", ".ci/run installs it with `apt-get install bird2`");
    let mut settings = HaproxySettings::in_dir("127.0.0.188/32".parse().unwrap(), &dir);
    settings.process.binary = require_program("haproxy", ".ci/run installs it");
    settings.hard_stop_after = Duration::from_secs(5);
    settings.bgp = Some(BgpSettings {
        birdc: bird.with_file_name("birdc"),
        bird,
        ip,
        config_path: dir.join("bird.conf"),
        config: BirdConfig {
            router_id: "127.0.0.1".parse().unwrap(),
            local_asn: 64512,
            peers: vec!["address=fe80::1,asn=64500".parse::<Peer>().unwrap()],
            communities: vec![],
            bfd_interval: Duration::from_millis(100),
            bfd_multiplier: 3,
        },
        master_socket: None,
        withdraw_pause: Duration::ZERO,
        handover_pause: Duration::ZERO,
        nft: "nft".into(),
    });
    let mut h = Harness::new("hx-bgp", |_| HaproxyProvider::new(settings)).await;
    h.node("n1", "127.0.0.11").await;
    let _ctl = h.start(false);
    create(&h, k::lb_service("announced", &[80])).await;
    let svc = h
        .wait_service("InvalidBirdConfiguration", "announced", |s| {
            condition(s).is_some_and(|c| c.1 == "InvalidBirdConfiguration")
        })
        .await;
    let message = condition(&svc).unwrap().2;
    assert!(message.contains("bird rejected"), "{message}");
    assert!(
        message.to_lowercase().contains("link-local"),
        "names BIRD's complaint: {message}"
    );
    assert!(vip(&svc).is_none(), "published although not announced");
    assert!(
        !dir.join("bird.conf.pid").exists(),
        "BIRD was started with a configuration it refused"
    );
    h.provider.shutdown().await;
    h.cleanup_nodes().await;
}
