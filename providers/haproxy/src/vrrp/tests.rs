use super::*;
use crate::testns::{Netns, program, until};

fn settings() -> VrrpSettings {
    VrrpSettings {
        binary: "keepalived".into(),
        config_path: "/run/ferrylb/keepalived.conf".into(),
        interface: "eth0".into(),
        router_id: 51,
        priority: 100,
        advert_interval: Duration::from_millis(100),
        source: Some("10.0.0.11".parse().unwrap()),
        master_socket: "/run/ferrylb/master.sock".into(),
        name: "node1".into(),
        await_peers: false,
        handover_pause: Duration::ZERO,
        nft_binary: "nft".into(),
    }
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn renders_one_backup_instance_with_unicast_peers_and_the_check() {
    let cfg = render(
        &settings(),
        &ips(&["10.0.0.200", "fd00::200"]),
        &ips(&["10.0.0.11", "10.0.0.12", "fd00::12"]),
    )
    .unwrap();
    for want in [
        "  router_id node1\n",
        "  vrrp_version 3\n",
        "vrrp_track_file ferrylb_haproxy {\n  file \"/run/ferrylb/keepalived.conf.health\"\n  weight 0\n}\n",
        // 100 and the spread from 10.0.0.11 (11 * 37 % 100).
        "  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority 107\n  nopreempt\n  advert_int 0.1\n",
        "  unicast_src_ip 10.0.0.11\n  unicast_peer {\n    10.0.0.12\n  }\n",
        "  virtual_ipaddress {\n    10.0.0.200/32 dev eth0\n  }\n",
        "  virtual_ipaddress_excluded {\n    fd00::200/128 dev eth0\n  }\n",
        "  track_file {\n    ferrylb_haproxy\n  }\n",
    ] {
        assert!(cfg.contains(want), "{want:?} missing in\n{cfg}");
    }
}

#[test]
fn adverts_carry_twenty_vips_and_the_rest_move_with_them() {
    let many: BTreeSet<IpAddr> = (1..=25u8).map(|i| IpAddr::from([10, 0, 1, i])).collect();
    let cfg = render(&settings(), &many, &BTreeSet::new()).unwrap();
    let advert = cfg
        .split("virtual_ipaddress {")
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    assert_eq!(advert.matches("/32 dev eth0").count(), 20);
    let excluded = cfg.split("virtual_ipaddress_excluded {").nth(1).unwrap();
    assert_eq!(excluded.matches("/32 dev eth0").count(), 5);
    assert!(!cfg.contains("unicast"), "no peers, multicast:\n{cfg}");
}

#[test]
fn nothing_to_announce_is_no_configuration() {
    assert_eq!(
        render(&settings(), &BTreeSet::new(), &BTreeSet::new()),
        None
    );
    // keepalived needs a VIP of the instance's family in its adverts.
    assert_eq!(
        render(&settings(), &ips(&["fd00::1"]), &BTreeSet::new()),
        None
    );
}

#[test]
fn neighbouring_hosts_get_priorities_far_apart() {
    let p = |ip: &str| {
        let mut s = settings();
        s.source = Some(ip.parse().unwrap());
        priority(&s)
    };
    let ps = [p("10.0.0.11"), p("10.0.0.12"), p("10.0.0.13")];
    assert_eq!(ps, [107, 144, 181]);
    let mut s = settings();
    s.source = None;
    assert_eq!(priority(&s), 100);
    s.priority = 155;
    s.source = Some("10.0.0.2".parse().unwrap());
    assert_eq!(priority(&s), 229);
}

#[test]
fn advert_intervals_in_hundredths() {
    let f = |ms| advert(Duration::from_millis(ms));
    assert_eq!(f(100), "0.1");
    assert_eq!(f(250), "0.25");
    assert_eq!(f(1000), "1");
    assert_eq!(f(1500), "1.5");
    assert_eq!(f(1), "0.01");
}

#[test]
fn notifications_name_the_state_of_our_instance_only() {
    assert_eq!(
        notify::parse("INSTANCE \"ferrylb\" MASTER 100", INSTANCE),
        Some("MASTER")
    );
    assert_eq!(
        notify::parse("INSTANCE \"ferrylb\" BACKUP 100", INSTANCE),
        Some("BACKUP")
    );
    assert_eq!(
        notify::parse("INSTANCE \"ferrylb\" FAULT 0", INSTANCE),
        Some("FAULT")
    );
    assert_eq!(
        notify::parse("INSTANCE \"ferrylb\" STOP 100", INSTANCE),
        Some("STOPPED")
    );
    assert_eq!(
        notify::parse("INSTANCE \"other\" MASTER 100", INSTANCE),
        None
    );
    assert_eq!(
        notify::parse("GROUP \"ferrylb\" MASTER 100", INSTANCE),
        None
    );
    assert_eq!(
        notify::parse("(ferrylb) Entering MASTER STATE", INSTANCE),
        None
    );
}

#[test]
fn the_configuration_names_the_notification_fifo() {
    let text = render(&settings(), &ips(&["10.0.0.200"]), &BTreeSet::new()).unwrap();
    let fifo = notify::fifo_path(&settings().config_path);
    assert!(
        text.contains(&format!("  notify_fifo \"{}\"\n", fifo.display())),
        "{text}"
    );
}

#[test]
fn values_cannot_break_out_of_their_place() {
    let mut s = settings();
    s.name = "node1\"}\nvrrp_instance evil {".into();
    let cfg = render(&s, &ips(&["10.0.0.200"]), &BTreeSet::new()).unwrap();
    assert!(
        cfg.contains("  router_id node1vrrp_instance evil \n"),
        "{cfg}"
    );
    assert_eq!(cfg.matches("vrrp_instance").count(), 2);
}

/// What FerryLB renders, keepalived accepts cleanly (`-t` exits 0), in a
/// network namespace with an `eth0` (needs root and keepalived, as CI has).
#[test]
fn keepalived_accepts_what_is_rendered() {
    let ns = Netns::new("ferrylb-vrrp");
    ns.with_eth0();
    let dir = std::env::temp_dir().join(format!("ferrylb-vrrp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = settings();
    s.config_path = dir.join("keepalived.conf");
    std::fs::write(health_file(&s.config_path), "0\n").unwrap();
    let many: BTreeSet<IpAddr> = (1..=30u8)
        .map(|i| IpAddr::from([10, 0, 1, i]))
        .chain(ips(&["fd00::200"]))
        .collect();
    let cfg = render(&s, &many, &ips(&["10.0.0.12", "10.0.0.13"])).unwrap();
    let path = dir.join("keepalived.conf");
    std::fs::write(&path, &cfg).unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(program("keepalived"))
        .arg("-t")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("keepalived is not installed (.ci/run installs it with apt-get)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "keepalived -t: {}{}\n{cfg}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The addresses on `eth0` in `ns`.
fn addresses(ns: &Netns) -> String {
    String::from_utf8_lossy(&ns.ip(&["-o", "addr", "show", "dev", "eth0"]).stdout).into_owned()
}

/// A real keepalived, alone on its network (so it becomes MASTER): the VIPs
/// it is given appear on the interface, a changed set is applied by SIGHUP
/// (added and removed), and stopping it takes them off. In a network
/// namespace of its own (needs root and keepalived, as CI has).
#[tokio::test]
async fn keepalived_holds_the_vips_it_is_given_and_follows_changes() {
    let ns = Netns::new("ferrylb-vrrp-run");
    ns.with_eth0();
    ns.ip_ok(&["addr", "add", "10.0.0.11/24", "dev", "eth0"]);
    ns.ip_ok(&["link", "set", "eth1", "up"]);
    let dir = std::env::temp_dir().join(format!("ferrylb-vrrp-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = settings();
    s.binary = ns.wrapper(&dir, &program("keepalived"));
    s.config_path = dir.join("keepalived.conf");
    s.master_socket = dir.join("master.sock");
    let k = Keepalived::new(s);

    k.set_vips(ips(&["10.0.0.200"])).await.unwrap();
    until("MASTER with the first VIP", Duration::from_secs(10), || {
        k.status().state == "MASTER" && addresses(&ns).contains("10.0.0.200/32")
    })
    .await;
    k.set_vips(ips(&["10.0.0.201", "fd00::201"])).await.unwrap();
    until("the changed set applied", Duration::from_secs(10), || {
        let a = addresses(&ns);
        a.contains("10.0.0.201/32") && a.contains("fd00::201/128") && !a.contains("10.0.0.200/")
    })
    .await;
    assert_eq!(
        k.status().transitions.get("MASTER"),
        Some(&1),
        "{:?}",
        k.status()
    );
    k.stop().await;
    until("the VIPs released on stop", Duration::from_secs(10), || {
        !addresses(&ns).contains("10.0.0.201/")
    })
    .await;
    assert_eq!(k.status().state, "STOPPED");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_handover_pause_drops_only_new_handshakes_to_the_vips() {
    let script = handover::pause_script(&ips(&["10.0.0.200", "10.0.0.201", "fd00::200"])).unwrap();
    assert!(script.starts_with(&handover::clear_script()), "{script}");
    assert!(
        script.contains("ip daddr { 10.0.0.200, 10.0.0.201 } tcp flags & (syn | ack) == syn drop"),
        "{script}"
    );
    assert!(
        script.contains("ip6 daddr { fd00::200 } tcp flags & (syn | ack) == syn drop"),
        "{script}"
    );
    assert_eq!(handover::pause_script(&BTreeSet::new()), None);
}

/// A client in the namespace: connects to VIP:8080 (served by a listener in
/// the same process), says `ready`, and after a line on stdin tries a new
/// connection (0.5 s) and a round trip on the first; prints both outcomes.
const CLIENT: &str = r#"
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("10.0.0.200", 8080)); srv.listen(16)
def serve():
    while True:
        c, _ = srv.accept()
        threading.Thread(target=lambda c=c: [c.sendall(d) for d in iter(lambda: c.recv(64), b"")], daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
old = socket.create_connection(("10.0.0.200", 8080), timeout=2)
print("ready", flush=True)
sys.stdin.readline()
try:
    socket.create_connection(("10.0.0.200", 8080), timeout=0.5).close(); new = "connected"
except OSError as e:
    new = type(e).__name__
old.sendall(b"ping")
print(new, old.recv(64).decode(), flush=True)
"#;

/// A master being stopped first drops new handshakes to its VIPs (a real
/// nftables rule in its namespace) while the connections it accepted keep
/// working, then hands over, and leaves no rule behind.
#[tokio::test]
async fn a_stopping_master_pauses_new_handshakes_then_hands_over_and_clears_the_pause() {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let ns = Netns::new("ferrylb-vrrp-pause");
    ns.with_eth0();
    ns.ip_ok(&["addr", "add", "10.0.0.11/24", "dev", "eth0"]);
    ns.ip_ok(&["link", "set", "eth1", "up"]);
    ns.ip_ok(&["link", "set", "lo", "up"]);
    let dir = std::env::temp_dir().join(format!("ferrylb-vrrp-pause-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut s = settings();
    s.binary = ns.wrapper(&dir, &program("keepalived"));
    s.nft_binary = ns.wrapper(&dir, &program("nft"));
    s.config_path = dir.join("keepalived.conf");
    s.master_socket = dir.join("master.sock");
    s.handover_pause = Duration::from_secs(2);
    let tables = |ns: &Netns| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.0, &program("nft"), "list", "tables"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A pause a killed replica left behind is cleared when keepalived starts.
    handover::Nft::new(s.nft_binary.clone())
        .pause(&ips(&["10.0.0.200"]))
        .await
        .unwrap();
    assert!(tables(&ns).contains(handover::TABLE));
    let k = Keepalived::new(s);
    k.set_vips(ips(&["10.0.0.200"])).await.unwrap();
    until("MASTER with the VIP", Duration::from_secs(10), || {
        k.status().state == "MASTER" && addresses(&ns).contains("10.0.0.200/32")
    })
    .await;
    assert!(!tables(&ns).contains(handover::TABLE), "{}", tables(&ns));

    let mut client = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c", CLIENT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));

    let stopping = tokio::spawn({
        let k = k.clone();
        async move { k.stop().await }
    });
    until("the pause in place", Duration::from_secs(10), || {
        tables(&ns).contains(handover::TABLE)
    })
    .await;
    assert!(
        addresses(&ns).contains("10.0.0.200/32"),
        "the VIP is still held during the pause"
    );
    stdin.write_all(b"go\n").await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome.as_deref(),
        Some("TimeoutError ping"),
        "during the pause a new connection gets no answer and the accepted one works"
    );
    stopping.await.unwrap();
    assert!(!addresses(&ns).contains("10.0.0.200/"), "handed over");
    assert!(!tables(&ns).contains(handover::TABLE), "{}", tables(&ns));
    let _ = std::fs::remove_dir_all(&dir);
}
