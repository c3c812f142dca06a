use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;
use crate::testns::{Netns, program, until};

fn peer(address: &str, asn: u32) -> Peer {
    Peer {
        address: address.parse().unwrap(),
        asn,
        password: None,
        bfd: true,
        hold: Duration::from_secs(9),
    }
}

fn bird_config(peers: Vec<Peer>) -> BirdConfig {
    BirdConfig {
        router_id: "10.0.0.11".parse().unwrap(),
        local_asn: 64512,
        peers,
        communities: vec![Community(64512, 100)],
        bfd_interval: Duration::from_millis(100),
        bfd_multiplier: 3,
    }
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn renders_static_routes_per_family_and_one_session_per_peer() {
    let mut p = peer("10.0.0.1", 64500);
    p.password = Some(Password::new("s3cret pass\n").unwrap());
    let text = config::render(
        &bird_config(vec![p, peer("fd00::1", 64500)]),
        &ips(&["10.0.0.200", "fd00::200"]),
    );
    for line in [
        "router id 10.0.0.11;",
        "  route 10.0.0.200/32 unreachable;",
        "  route fd00::200/128 unreachable;",
        "  interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };",
        "protocol bgp peer0 {",
        "  neighbor 10.0.0.1 as 64500;",
        "  password \"s3cret pass\";",
        "  hold time 9; keepalive time 3;",
        "  bfd on;",
        "    export filter { if proto = \"ferrylb_vips_v4\" then { bgp_community.add((64512, 100)); accept; } reject; };",
        "  neighbor fd00::1 as 64500;",
        "    export filter { if proto = \"ferrylb_vips_v6\" then { bgp_community.add((64512, 100)); accept; } reject; };",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // Withdrawn: no route, the sessions stay.
    let none = config::render(
        &bird_config(vec![peer("10.0.0.1", 64500)]),
        &BTreeSet::new(),
    );
    assert!(
        !none.contains("route ") && none.contains("protocol bgp peer0"),
        "{none}"
    );
}

#[test]
fn peers_parse_from_typed_fields_and_strings_cannot_escape() {
    let p: Peer = "address=10.0.0.1,asn=64500,bfd=true,hold=30s"
        .parse()
        .unwrap();
    assert_eq!(
        (p.asn, p.bfd, p.hold),
        (64500, true, Duration::from_secs(30))
    );
    for (bad, says) in [
        ("asn=1", "address=… is required"),
        ("address=10.0.0.1", "asn=… is required"),
        ("address=10.0.0.1;,asn=1", "not an IPv4 or IPv6 address"),
        ("address=10.0.0.1,asn=0", "not an AS number"),
        ("address=10.0.0.1,asn=1,hold=2s", "whole seconds from 3s"),
        (
            "address=10.0.0.1,asn=1,colour=red",
            "unknown key \"colour\"",
        ),
        (
            "address=10.0.0.1,asn=1,password-file=/nonexistent",
            "reading /nonexistent",
        ),
    ] {
        let e = bad.parse::<Peer>().unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
    for bad in ["a\"b", "a\\b", "tab\there", ""] {
        assert!(Password::new(bad).is_err(), "{bad:?}");
    }
    assert!("70000:1".parse::<Community>().is_err());
    assert_eq!("65000:7".parse::<Community>().unwrap(), Community(65000, 7));
}

#[test]
fn session_states_are_read_from_show_protocols() {
    let text = "Name       Proto      Table      State  Since         Info\n\
                device1    Device     ---        up     10:00:00.000  \n\
                peer0      BGP        ---        up     10:00:01.000  Established   \n\
                peer1      BGP        ---        start  10:00:01.000  Active        Socket: Connection refused\n\
                peer2      BGP        ---        down   10:00:01.000  \n";
    assert_eq!(session_state(text, "peer0").as_deref(), Some("Established"));
    assert!(session_state(text, "peer1").unwrap().starts_with("Active"));
    assert_eq!(session_state(text, "peer2").as_deref(), Some("down"));
    assert_eq!(session_state(text, "peer9"), None);
    let bfd = "BIRD 2.0.12 ready.\nferrylb_bfd:\n\
               IP address                Interface  State      Since         Interval  Timeout\n\
               10.0.0.1                  eth0       Up         10:00:00.000    0.100    0.300\n\
               fd00::1                   eth0       Down       10:00:00.000    1.000    0.000\n";
    let states = bfd_states(bfd);
    assert_eq!(states.len(), 2);
    assert_eq!(states[&"10.0.0.1".parse::<IpAddr>().unwrap()], "Up");
    assert_eq!(states[&"fd00::1".parse::<IpAddr>().unwrap()], "Down");
}

use std::path::Path;

#[test]
fn bird_accepts_what_is_rendered() {
    let dir = std::env::temp_dir().join(format!("ferrylb-bird-parse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut p = peer("10.0.0.1", 64500);
    p.password = Some(Password::new("x y").unwrap());
    let mut quiet = peer("fd00::1", 4_200_000_000);
    quiet.bfd = false;
    quiet.hold = Duration::ZERO;
    for vips in [ips(&[]), ips(&["10.0.0.200", "10.0.0.201", "fd00::200"])] {
        let path = dir.join("bird.conf");
        std::fs::write(
            &path,
            config::render(&bird_config(vec![p.clone(), quiet.clone()]), &vips),
        )
        .unwrap();
        let out = std::process::Command::new(program("bird"))
            .args(["-p", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bird -p: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The user's router: a BIRD of the test's own in namespace `ns`, peering
/// with the host at 10.0.0.11 (AS 64512) and putting what it learns into
/// its kernel table.
/// A child process killed when dropped (also when the test fails).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_router(ns: &Netns, dir: &Path) -> Killed {
    let conf = dir.join("router.conf");
    std::fs::write(
        &conf,
        "router id 10.0.0.1;\nprotocol device { }\n\
         protocol kernel { ipv4 { export all; }; merge paths yes; }\n\
         protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n\
         protocol bgp host { local as 64500; neighbor 10.0.0.11 as 64512; bfd on; \
           connect retry time 2; ipv4 { import all; export none; }; }\n",
    )
    .unwrap();
    std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0, &program("bird"), "-f", "-c"])
        .arg(&conf)
        .arg("-s")
        .arg(dir.join("router.ctl"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Killed)
        .expect("starting the router's bird")
}

fn routes(ns: &Netns) -> String {
    String::from_utf8_lossy(&ns.ip(&["route", "show", "proto", "bird"]).stdout).into_owned()
}

/// A real BIRD announcing to a real router BIRD (each in a network
/// namespace of its own; root and bird2, as CI has): the VIPs it is given
/// reach the router's kernel table and sit on the host's `lo`; a changed
/// set is applied without dropping the session; an unhealthy HAProxy
/// withdraws them; a configuration BIRD refuses changes nothing that runs
/// and says why; a planned stop withdraws them before BIRD stops.
#[tokio::test]
async fn bird_announces_what_it_is_given_to_a_real_router_and_withdraws_it() {
    let router = Netns::new("ferrylb-bgp-router");
    let host = Netns::new("ferrylb-bgp-host");
    host.ip_ok(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &router.0,
    ]);
    host.ip_ok(&["addr", "add", "10.0.0.11/24", "dev", "eth0"]);
    router.ip_ok(&["addr", "add", "10.0.0.1/24", "dev", "eth0"]);
    for ns in [&host, &router] {
        ns.ip_ok(&["link", "set", "eth0", "up"]);
        ns.ip_ok(&["link", "set", "lo", "up"]);
    }
    let dir = std::env::temp_dir().join(format!("ferrylb-bgp-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _router_bird = start_router(&router, &dir);

    let settings = BgpSettings {
        bird: host.wrapper(&dir, &program("bird")),
        birdc: host.wrapper(&dir, &program("birdc")),
        ip: host.wrapper(&dir, &program("ip")),
        config_path: dir.join("bird.conf"),
        config: bird_config(vec![peer("10.0.0.1", 64500)]),
        master_socket: None,
        withdraw_pause: Duration::from_millis(500),
        handover_pause: Duration::ZERO,
        nft: host.wrapper(&dir, &program("nft")),
    };
    let bird = Bird::new(settings.clone());
    bird.set_vips(ips(&["10.252.0.5", "10.252.0.6"]))
        .await
        .unwrap();
    until(
        "both VIPs routed by the router",
        Duration::from_secs(30),
        || {
            let r = routes(&router);
            r.contains("10.252.0.5 via 10.0.0.11") && r.contains("10.252.0.6 via 10.0.0.11")
        },
    )
    .await;
    let lo =
        String::from_utf8_lossy(&host.ip(&["-o", "addr", "show", "dev", "lo"]).stdout).into_owned();
    assert!(
        lo.contains("10.252.0.5/32") && lo.contains("10.252.0.6/32"),
        "{lo}"
    );
    let status = bird.status().await;
    assert_eq!(
        status.sessions.values().collect::<Vec<_>>(),
        ["Established"],
        "{status:?}"
    );
    assert_eq!(status.announced, 2);
    for _ in 0..100 {
        if bird.status().await.bfd.values().any(|s| s == "Up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = bird.status().await;
    assert_eq!(
        status.bfd.values().collect::<Vec<_>>(),
        ["Up"],
        "{status:?}"
    );

    // A changed set: by `birdc configure`, the session stays.
    bird.set_vips(ips(&["10.252.0.6", "10.252.0.7"]))
        .await
        .unwrap();
    until("the changed set routed", Duration::from_secs(30), || {
        let r = routes(&router);
        !r.contains("10.252.0.5 ") && r.contains("10.252.0.7 via 10.0.0.11")
    })
    .await;
    let said = bird.birdc(&["show", "protocols", "peer0"]).await.unwrap();
    assert!(said.contains("Established"), "{said}");

    // Refused by BIRD itself (a link-local peer needs an interface): what
    // runs is unchanged, and the error says why.
    let mut refused_settings = settings.clone();
    refused_settings.config.peers.push(peer("fe80::1", 64500));
    let refusing = Bird::new(refused_settings);
    let e = refusing
        .install(&config::render(
            &refusing.settings.config,
            &ips(&["10.252.0.9"]),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.reason, "InvalidBirdConfiguration");
    assert!(
        e.message.contains("bird rejected") && e.message.contains("rejected"),
        "{e}"
    );
    bird.configure().await.unwrap();
    assert!(routes(&router).contains("10.252.0.7 via 10.0.0.11"));
    assert!(!routes(&router).contains("10.252.0.9"));

    // The local HAProxy stops serving (none answers here): withdrawn.
    bird.set_serving(false).await.unwrap();
    until("the routes withdrawn", Duration::from_secs(30), || {
        !routes(&router).contains("10.252.0.")
    })
    .await;
    bird.set_serving(true).await.unwrap();
    until("the routes back", Duration::from_secs(30), || {
        routes(&router).contains("10.252.0.7 via")
    })
    .await;

    // BIRD dies: the supervisor starts it again.
    let pid: u32 = std::fs::read_to_string(dir.join("bird.conf.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = crate::process::signal("KILL", pid);
    until(
        "the routes back after BIRD was killed",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(dir.join("bird.conf.pid"))
                .is_ok_and(|p| p.trim() != pid.to_string())
                && routes(&router).contains("10.252.0.7 via")
        },
    )
    .await;

    // A planned stop: withdrawn first, then BIRD stops, then lo is clean.
    bird.stop().await;
    until(
        "the routes gone after stop",
        Duration::from_secs(30),
        || !routes(&router).contains("10.252.0."),
    )
    .await;
    let lo =
        String::from_utf8_lossy(&host.ip(&["-o", "addr", "show", "dev", "lo"]).stdout).into_owned();
    assert!(!lo.contains("10.252.0."), "{lo}");
    let _ = std::fs::remove_dir_all(&dir);
}
