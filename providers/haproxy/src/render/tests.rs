use std::collections::BTreeMap;

use ferrylb_model::conformance::sample_spec;
use ferrylb_model::{Listener, Target};
use proptest::prelude::*;

use super::*;

fn target(node: &str, ip: &str) -> Target {
    Target {
        node: node.into(),
        addresses: vec![ip.parse().unwrap()],
        provider_id: None,
    }
}

fn global() -> GlobalSettings {
    GlobalSettings {
        admin_socket: "/run/ferrylb/admin.sock".into(),
        hard_stop_after: Duration::from_secs(30),
        node_check_port: None,
        threads: None,
    }
}

fn entry(name: &str, vip: &str, annotations: BTreeMap<String, String>) -> Entry {
    let mut spec = sample_spec(
        "shop",
        name,
        30080,
        vec![target("n2", "127.0.0.12"), target("n1", "127.0.0.11")],
    );
    let mut targets = spec.targets.to_vec();
    targets.sort();
    spec.targets = targets.into();
    spec.annotations = annotations;
    let options = Options::parse(&spec.annotations).unwrap();
    Entry {
        spec,
        vips: vec![vip.parse().unwrap()],
        options,
    }
}

#[test]
fn renders_frontend_and_backend_per_tcp_port() {
    let mut e = entry("web", "127.0.0.100", BTreeMap::new());
    e.spec.listeners.push(Listener {
        protocol: Protocol::Udp,
        port: 53,
        node_port: 30053,
        name: "dns".into(),
    });
    e.spec.source_ranges = vec![
        "10.0.0.0/8".parse().unwrap(),
        "127.0.0.5/32".parse().unwrap(),
    ];
    let cfg = render(&global(), &[e.clone()]);
    let lb = &e.spec.lb.name;
    let expected_tail = format!(
        "frontend fe_{lb}_80\n  bind 127.0.0.100:80 transparent\n  timeout client 60000ms\n  \
         acl ferrylb_allowed_src src 10.0.0.0/8 127.0.0.5/32\n  \
         tcp-request connection reject if !ferrylb_allowed_src\n  default_backend be_{lb}_80\n\n\
         backend be_{lb}_80\n  balance roundrobin\n  timeout connect 250ms\n  retries 7\n  timeout server 60000ms\n  \
         default-server check inter 2000ms fastinter 250ms downinter 500ms\n  server n1 127.0.0.11:30080\n  server n2 127.0.0.12:30080\n"
    );
    assert!(cfg.ends_with(&expected_tail), "{cfg}");
    assert!(!cfg.contains("53"), "UDP ports are not rendered: {cfg}");
    assert!(cfg.contains("stats socket /run/ferrylb/admin.sock mode 660 level admin"));
    assert!(
        cfg.contains("defaults\n  mode tcp\n  retries 3\n  option redispatch 1\n  timeout connect 250ms\n  timeout check 1s\n"),
        "{cfg}"
    );
}

#[test]
fn local_traffic_policy_and_proxy_protocol() {
    let mut e = entry(
        "web",
        "fd00::10",
        [(crate::options::PROXY_PROTOCOL.to_owned(), "v2".to_owned())].into(),
    );
    e.spec.health_check = HealthCheck::Http {
        port: 32000,
        path: "/healthz".into(),
    };
    let cfg = render(&global(), &[e]);
    assert!(cfg.contains("  bind [fd00::10]:80 transparent\n"), "{cfg}");
    assert!(cfg.contains("  option httpchk GET /healthz\n  http-check expect status 200\n"));
    assert!(cfg.contains(
        "  default-server check inter 2000ms fastinter 250ms downinter 500ms port 32000 send-proxy-v2\n"
    ));
}

#[test]
fn output_is_sorted_whatever_the_input_order() {
    let a = entry("a", "127.0.0.101", BTreeMap::new());
    let b = entry("b", "127.0.0.100", BTreeMap::new());
    let one = render(&global(), &[a.clone(), b.clone()]);
    assert_eq!(one, render(&global(), &[b.clone(), a.clone()]));
    assert!(one.find(&b.spec.lb.name).unwrap() < one.find(&a.spec.lb.name).unwrap());
}

#[test]
fn server_names_keep_only_safe_characters() {
    assert_eq!(server_name("node-1.eu.example"), "node-1.eu.example");
    let odd = server_name("a b\nc#d");
    assert!(odd.starts_with("a_b_c_d_") && odd.len() == 8 + 16, "{odd}");
    assert_ne!(server_name("a b"), server_name("a_b"));
    assert!(!server_name("").is_empty());
}

/// Two valid Node names sharing their first 100 characters.
fn long_twins() -> [String; 2] {
    let stem = format!("{}.{}", "x".repeat(60), "y".repeat(45));
    [format!("{stem}-a"), format!("{stem}-b")]
}

#[test]
fn long_node_names_sharing_a_prefix_get_distinct_server_names() {
    let [a, b] = long_twins();
    let (sa, sb) = (server_name(&a), server_name(&b));
    assert_ne!(sa, sb);
    assert!(sa.len() <= 100 && sb.len() <= 100);
    assert!(sa.starts_with(&"x".repeat(60)));
}

/// A valid 100-character Node name made to end in the hash another, longer
/// Node name's server name ends in: it used to render as that server name.
fn crafted_pair() -> [String; 2] {
    use sha2::Digest as _;
    let a = long_twins()[1].clone();
    let hash: String = sha2::Sha256::digest(a.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let c = format!("{}-{hash}", &a[..83]);
    assert_eq!(c.len(), 100);
    [a, c]
}

#[test]
fn a_node_name_crafted_after_another_ones_hash_gets_its_own_server_name() {
    let [a, c] = crafted_pair();
    assert_ne!(server_name(&a), server_name(&c));
    assert_eq!(server_name(&c), c, "a valid short name is used as it is");
    assert!(server_name(&a).contains('_'));
    // Uppercase or `_` (never in a valid Node name) are hashed too.
    assert_ne!(server_name("Node-1"), "Node-1");
    assert_ne!(server_name("node_1"), "node_1");
}

#[test]
fn haproxy_accepts_a_configuration_with_long_twin_node_names_and_its_settings() {
    let [a, b] = long_twins();
    let [_, c] = crafted_pair();
    let mut e = entry("web", "127.0.0.100", BTreeMap::new());
    // Dual-stack: one bind of each family in the same frontend.
    e.vips.push("fd51::200".parse().unwrap());
    e.spec.targets = vec![
        target(&a, "127.0.0.11"),
        target(&b, "127.0.0.12"),
        target(&c, "127.0.0.13"),
    ]
    .into();
    // Many more source ranges than HAProxy reads words on one line.
    e.spec.source_ranges = (0..9000u32)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap())
        .collect();
    let dir = std::env::temp_dir().join(format!("ferrylb-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("haproxy.cfg");
    let mut g = global();
    g.admin_socket = dir.join("admin.sock");
    for (node_check_port, threads) in [(None, None), (Some(10256), Some(2))] {
        g.node_check_port = node_check_port;
        g.threads = threads;
        let text = render(&g, &[e.clone()]);
        assert_eq!(text.contains("\n  nbthread 2\n"), threads.is_some());
        assert!(
            text.contains(
                "\n  bind 127.0.0.100:80 transparent\n  bind [fd51::200]:80 transparent\n"
            )
        );
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(&cfg)
            .output()
            .expect("haproxy is not installed; tests/run installs it from Debian");
        assert!(
            out.status.success(),
            "haproxy -c rejected it:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first word of every line: the configuration's structure.
fn shape(cfg: &str) -> Vec<String> {
    cfg.lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

const KEYS: &[&str] = &[
    crate::options::BALANCE,
    crate::options::TIMEOUT_CONNECT,
    crate::options::TIMEOUT_CLIENT,
    crate::options::TIMEOUT_SERVER,
    crate::options::CHECK_INTERVAL,
    crate::options::PROXY_PROTOCOL,
    "ferrylb.io/haproxy-anything",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        // Near-valid values with hostile suffixes.
        (
            prop::sample::select(vec!["30s", "leastconn", "v2", "5m", "100ms"]),
            "[\\n\\r#;\"'\\\\${}\\[\\] a-z]{0,12}"
        )
            .prop_map(|(a, b)| format!("{a}{b}")),
        any::<String>(),
        Just("1s\nlisten evil\n  bind :1".to_owned()),
        Just("30s # comment".to_owned()),
        Just("\"${HOME}\"".to_owned()),
    ]
}

proptest! {
    /// No annotation value, however hostile, adds a line or a directive: it
    /// is either rejected or re-rendered from a typed value.
    #[test]
    fn annotations_never_add_lines_or_directives(pairs in prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), value(), 0..6)) {
        let annotations: BTreeMap<String, String> = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let Ok(options) = Options::parse(&annotations) else { return Ok(()); };
        let mut e = entry("web", "127.0.0.100", BTreeMap::new());
        e.spec.annotations = annotations;
        e.options = options;
        let cfg = render(&global(), &[e]);
        let baseline = render(&global(), &[entry("web", "127.0.0.100", BTreeMap::new())]);
        prop_assert_eq!(shape(&cfg), shape(&baseline));
        for line in cfg.lines() {
            prop_assert!(line.chars().all(|c| c.is_ascii_alphanumeric() || " ._:/[]{}!#,;-".contains(c)), "unexpected character in {:?}", line);
            prop_assert!(!line.contains('"') && !line.contains('$') && !line.contains('\\'));
        }
    }
}

#[test]
fn shared_node_checks_are_tracked_by_every_service() {
    let mut g = global();
    g.node_check_port = Some(10256);
    let a = entry("a", "127.0.0.100", BTreeMap::new());
    let mut local = entry("local", "127.0.0.101", BTreeMap::new());
    local.spec.health_check = HealthCheck::Http {
        port: 32000,
        path: "/healthz".into(),
    };
    let cfg = render(&g, &[a.clone(), local]);
    assert_eq!(
        cfg.matches("backend ferrylb_node_checks").count(),
        1,
        "one check backend for every node: {cfg}"
    );
    assert!(cfg.contains("backend ferrylb_node_checks\n  option httpchk GET /healthz\n  http-check expect status 200\n  server n1 127.0.0.11:10256 check inter 1000ms fastinter 250ms downinter 500ms\n  server n2 "), "{cfg}");
    let be = format!("backend be_{}_80", a.spec.lb.name);
    let a_part = &cfg[cfg.find(&be).unwrap()..];
    assert!(
        a_part.contains("  server n1 127.0.0.11:30080 track ferrylb_node_checks/n1\n"),
        "{cfg}"
    );
    // eTP Local keeps its own per-Service check.
    assert!(
        cfg.contains(
            "default-server check inter 2000ms fastinter 250ms downinter 500ms port 32000"
        ),
        "{cfg}"
    );
}

#[test]
fn retries_fill_the_connect_budget_and_never_drop_below_three() {
    let ms = Duration::from_millis;
    assert_eq!(connect_retries(ms(250)), 7, "8 tries of 250 ms: 2 s");
    assert_eq!(connect_retries(ms(500)), 3);
    assert_eq!(connect_retries(ms(300)), 6, "7 tries cover 2 s");
    assert_eq!(connect_retries(Duration::from_secs(5)), 3);
    assert_eq!(connect_retries(ms(1)), 20, "bounded");
    let e = entry(
        "web",
        "127.0.0.100",
        [(crate::options::TIMEOUT_CONNECT.to_owned(), "1s".to_owned())].into(),
    );
    assert!(
        render(&global(), &[e]).contains("  timeout connect 1000ms\n  retries 3\n"),
        "a Service's own connect timeout sets its retries"
    );
}

#[test]
fn a_failing_server_is_checked_faster_but_never_slower_than_its_interval() {
    let mut o = Options::default();
    assert_eq!(
        check_options(&o),
        "check inter 2000ms fastinter 250ms downinter 500ms"
    );
    o.check_interval = Duration::from_millis(100);
    assert_eq!(
        check_options(&o),
        "check inter 100ms fastinter 100ms downinter 100ms"
    );
}
