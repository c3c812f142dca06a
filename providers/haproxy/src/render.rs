//! Renders the whole HAProxy configuration from the Services' specs:
//! deterministic (sorted), typed values only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferrylb_model::{HealthCheck, LoadBalancerSpec, Protocol};
use sha2::Digest as _;

use crate::options::Options;

/// Process-wide settings rendered into `global` and `defaults`.
#[derive(Debug, Clone)]
pub struct GlobalSettings {
    /// Admin-level stats socket, for the runtime API.
    pub admin_socket: PathBuf,
    /// Old workers still draining connections are stopped after this long.
    pub hard_stop_after: Duration,
    /// Check each node once, with `GET /healthz` on this port (kube-proxy's
    /// health port, 10256), and let every Service's servers for that node
    /// `track` it (KEP-3458). `None`: each server checks its own nodePort.
    /// One check per node instead of one per Service and node is what lets
    /// 1,000 Services × 50 nodes run at all: every checked server holds a
    /// file descriptor.
    pub node_check_port: Option<u16>,
    /// `nbthread`: every thread holds a share of every server, so memory
    /// grows with it. `None`: one per CPU (HAProxy's default).
    pub threads: Option<u16>,
}

/// The backend holding every node's shared health check, one server per
/// node (named as the node's servers in the Services' backends). Rendered
/// even when empty, so a node that appears later is added through the
/// runtime API: a backend cannot be.
pub const NODE_CHECKS: &str = "ferrylb_node_checks";

/// The interval of the shared node checks (the others as in
/// [`check_intervals`]). One check a second per node is cheap; after a
/// failure two more a quarter second apart mark a dead node down in about
/// 1.5 s, where `inter 2s` with HAProxy's defaults took 12 s (each failed
/// check waited out the whole interval: see `CHECK_TIMEOUT`).
const NODE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often a server is checked once a check failed or passed against
/// its state, until it is marked down or up (HAProxy's `fastinter`), at
/// most. HAProxy also uses it for a new server's first check.
const FAST_INTER: Duration = Duration::from_millis(250);

/// How often a server marked down is checked (`downinter`), at most: a
/// new Service's servers are often marked down by that first check, made
/// before kube-proxy programs the nodePort; they come back within about
/// 0.75 s of the node answering, not a whole interval later.
const DOWN_INTER: Duration = Duration::from_millis(500);

/// `timeout check`: a check's read timeout once connected. Set, it also
/// makes a check's connect timeout `min(timeout connect, inter)`; unset,
/// HAProxy gives a check the whole `inter` to connect, so a dead node (no
/// answer at all) took `fall` x 2 x `inter` to be marked down.
const CHECK_TIMEOUT: &str = "1s";

/// How long HAProxy keeps trying nodes for one connection: a node that
/// takes no connection within `timeout connect` (a dead host, or kube-proxy
/// sending it to a pod on one) is retried on another node until this is
/// spent.
const CONNECT_BUDGET: Duration = Duration::from_secs(2);

/// `retries` of a backend whose `timeout connect` is `connect`: as many as
/// fit in [`CONNECT_BUDGET`], at least 3 (HAProxy's default).
pub fn connect_retries(connect: Duration) -> u128 {
    let per_try = connect.as_millis().max(1);
    let tries = CONNECT_BUDGET.as_millis().div_ceil(per_try);
    tries.saturating_sub(1).clamp(3, 20)
}

/// The check options of a Service's servers, for `default-server` and for
/// servers added through the runtime API (which do not inherit it).
pub fn check_options(o: &Options) -> String {
    check_intervals(o.check_interval)
}

/// `check` with interval `inter`, and the faster ones of a server whose
/// state is changing or that is down, never slower than `inter`.
fn check_intervals(inter: Duration) -> String {
    format!(
        "check inter {} fastinter {} downinter {}",
        ms(inter),
        ms(inter.min(FAST_INTER)),
        ms(inter.min(DOWN_INTER))
    )
}

/// Spare check servers in [`NODE_CHECKS`], disabled until a node appears:
/// HAProxy 2.6 lets a server added at runtime track only a server of the
/// configuration, so a new node's check takes a spare (its address set
/// through the runtime API) and its servers track that. The next reload
/// names the check after the node and renders fresh spares.
pub const SPARE_NODE_CHECKS: usize = 32;

/// What spare check servers are called before their number; node names,
/// being DNS names, never contain `_`.
const SPARE_PREFIX: &str = "ferrylb_spare_";

/// The name of spare check server `i` (1-based).
pub fn spare_check(i: usize) -> String {
    format!("{SPARE_PREFIX}{i}")
}

/// The nodes whose shared check `entries` need, by server name: the targets
/// of Services checked on their traffic port.
pub fn node_checks(entries: &[&Entry]) -> BTreeMap<String, IpAddr> {
    entries
        .iter()
        .filter(|e| e.spec.health_check == HealthCheck::TrafficPort)
        .flat_map(|e| e.spec.targets.iter())
        .filter_map(|t| Some((server_name(&t.node), *t.addresses.first()?)))
        .collect()
}

/// One Service as rendered: its spec, its VIP, its typed options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub spec: LoadBalancerSpec,
    /// One address per family the Service is given; the first is its
    /// primary address.
    pub vips: Vec<IpAddr>,
    pub options: Options,
}

impl Entry {
    /// The primary address (the first of the Service's families).
    pub fn vip(&self) -> IpAddr {
        self.vips[0]
    }
}

/// The frontend name for a Service port: `fe_<lb name>_<port>`.
pub fn frontend_name(entry: &Entry, port: u16) -> String {
    format!("fe_{}_{port}", entry.spec.lb.name)
}

/// The backend name for a Service port: `be_<lb name>_<port>`.
pub fn backend_name(entry: &Entry, port: u16) -> String {
    format!("be_{}_{port}", entry.spec.lb.name)
}

/// A server name HAProxy accepts (`[A-Za-z0-9._:-]`), unique for every node
/// name by construction: a name of at most 100 characters drawn from what a
/// valid Node name holds (`[a-z0-9.-]`: every valid short Node name) is used
/// as it is; any other keeps a readable prefix and ends in `_` and a hash of
/// the whole name. No name of the first kind holds a `_`, and every name of
/// the second does, so the two kinds never meet (a 100-character Node name
/// ending in another name's hash stays distinct); two of the second kind
/// differ in their hash.
pub fn server_name(node: &str) -> String {
    const MAX: usize = 100;
    const HASH_HEX: usize = 16;
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-');
    if !node.is_empty() && node.len() <= MAX && node.chars().all(plain) {
        return node.to_owned();
    }
    let prefix: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX - HASH_HEX - 1)
        .collect();
    let digest = sha2::Sha256::digest(node.as_bytes());
    let hash: String = digest
        .iter()
        .take(HASH_HEX / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}_{hash}")
}

/// `ip:port`, with brackets for IPv6.
pub fn addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The ACL of a frontend's `loadBalancerSourceRanges`.
const ALLOWED_ACL: &str = "ferrylb_allowed_src";

/// Source ranges per `acl` line: with `acl <name> src` that is 53 words,
/// well within HAProxy's 64.
const SOURCE_RANGES_PER_LINE: usize = 50;

/// The full configuration for `entries` (any order; output is sorted).
pub fn render(global: &GlobalSettings, entries: &[Entry]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Generated by FerryLB; every change here is overwritten."
    );
    let _ = writeln!(out, "global");
    let _ = writeln!(
        out,
        // 660: in the chart, HAProxy runs as root in group 65532 and
        // FerryLB as 65532:65532; only the pod's containers see the socket.
        "  stats socket {} mode 660 level admin",
        global.admin_socket.display()
    );
    let _ = writeln!(out, "  hard-stop-after {}", ms(global.hard_stop_after));
    let _ = writeln!(out, "  mworker-max-reloads 50");
    let _ = writeln!(out, "  spread-checks 5");
    if let Some(n) = global.threads {
        let _ = writeln!(out, "  nbthread {n}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "defaults");
    let _ = writeln!(out, "  mode tcp");
    // A node that refuses or does not answer (a dead host: `timeout
    // connect`) before its check marks it down costs the client a retry on
    // another node, not its connection (each backend sets its `retries`).
    let _ = writeln!(out, "  retries 3");
    let _ = writeln!(out, "  option redispatch 1");
    let _ = writeln!(out, "  timeout connect 250ms");
    let _ = writeln!(out, "  timeout check {CHECK_TIMEOUT}");
    let _ = writeln!(out, "  timeout client 60s");
    let _ = writeln!(out, "  timeout server 60s");

    if let Some(port) = global.node_check_port {
        let _ = writeln!(out);
        let checks = check_intervals(NODE_CHECK_INTERVAL);
        let _ = writeln!(out, "backend {NODE_CHECKS}");
        let _ = writeln!(out, "  option httpchk GET /healthz");
        let _ = writeln!(out, "  http-check expect status 200");
        for (name, ip) in node_checks(&entries.iter().collect::<Vec<_>>()) {
            let _ = writeln!(out, "  server {name} {} {checks}", addr(ip, port));
        }
        let _ = writeln!(
            out,
            "  server-template {SPARE_PREFIX} 1-{SPARE_NODE_CHECKS} 0.0.0.0:{port} {checks} disabled"
        );
    }

    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| (a.vip(), &a.spec.lb.name).cmp(&(b.vip(), &b.spec.lb.name)));
    for e in sorted {
        for l in e
            .spec
            .listeners
            .iter()
            .filter(|l| l.protocol == Protocol::Tcp)
        {
            render_frontend(&mut out, e, l.port);
            render_backend(
                &mut out,
                e,
                l.port,
                l.node_port,
                global.node_check_port.is_some(),
            );
        }
    }
    out
}

fn render_frontend(out: &mut String, e: &Entry, port: u16) {
    let _ = writeln!(out);
    let _ = writeln!(out, "frontend {}", frontend_name(e, port));
    // `transparent` binds the VIP before this host holds it (HAProxy falls
    // back to IP_FREEBIND, which needs no privilege): HAProxy listens first,
    // and only then is the VIP put on the interface and announced, so no
    // client is ever sent to a host that would refuse it.
    for &vip in &e.vips {
        let _ = writeln!(out, "  bind {} transparent", addr(vip, port));
    }
    let _ = writeln!(out, "  timeout client {}", ms(e.options.timeout_client));
    if !e.spec.source_ranges.is_empty() {
        // HAProxy reads at most 64 words a line and silently drops the
        // rest, so the ranges go on as many lines of one ACL as they need
        // (lines of the same ACL are ORed): any number the API server
        // accepts is served.
        for chunk in e.spec.source_ranges.chunks(SOURCE_RANGES_PER_LINE) {
            let ranges: Vec<String> = chunk.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(out, "  acl {ALLOWED_ACL} src {}", ranges.join(" "));
        }
        let _ = writeln!(out, "  tcp-request connection reject if !{ALLOWED_ACL}");
    }
    let _ = writeln!(out, "  default_backend {}", backend_name(e, port));
}

fn render_backend(out: &mut String, e: &Entry, port: u16, node_port: u16, node_checks: bool) {
    let o = &e.options;
    let _ = writeln!(out);
    let _ = writeln!(out, "backend {}", backend_name(e, port));
    let _ = writeln!(out, "  balance {}", o.balance.as_str());
    let _ = writeln!(out, "  timeout connect {}", ms(o.timeout_connect));
    let _ = writeln!(out, "  retries {}", connect_retries(o.timeout_connect));
    let _ = writeln!(out, "  timeout server {}", ms(o.timeout_server));
    let tracked = node_checks && e.spec.health_check == HealthCheck::TrafficPort;
    let mut server_opts = if tracked {
        String::new()
    } else {
        check_options(o)
    };
    if let HealthCheck::Http { port, path } = &e.spec.health_check {
        // The path is ours ("/healthz"), but keep it to safe characters.
        let path: String = path
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))
            .collect();
        let _ = writeln!(out, "  option httpchk GET {path}");
        let _ = writeln!(out, "  http-check expect status 200");
        let _ = write!(server_opts, " port {port}");
    }
    if o.proxy_protocol_v2 {
        server_opts.push_str(" send-proxy-v2");
    }
    let server_opts = server_opts.trim();
    if !server_opts.is_empty() {
        let _ = writeln!(out, "  default-server {server_opts}");
    }
    for t in e.spec.targets.iter() {
        if let Some(ip) = t.addresses.first() {
            let name = server_name(&t.node);
            let track = if tracked {
                format!(" track {NODE_CHECKS}/{name}")
            } else {
                String::new()
            };
            let _ = writeln!(out, "  server {name} {}{track}", addr(*ip, node_port));
        }
    }
}

#[cfg(test)]
mod tests;
