//! Changing a backend's servers through HAProxy's runtime API (the admin
//! stats socket), without a reload. Used when only a Service's targets
//! changed; the same state is written to the configuration file too, so the
//! next reload keeps it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ferrylb_model::reason;
use ferrylb_model::{HealthCheck, Protocol, ProviderError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::render::{
    self, Entry, NODE_CHECKS, SPARE_NODE_CHECKS, addr, backend_name, server_name, spare_check,
};

/// Whether `line` of a runtime API reply is one HAProxy 2.6 gives when the
/// commands FerryLB sends succeed: nothing (`enable …`, `set server …
/// state`), or the confirmation of `set server … addr`, `add server` or
/// `del server`. Anything else (`Already exists a server with the same
/// name in backend.`, `No such server.`, a usage text) is a refusal: a
/// list of failure words would let an unforeseen one pass as success.
fn is_success_line(line: &str) -> bool {
    let line = line.trim();
    line.is_empty()
        || line == "New server registered."
        || line == "Server deleted."
        || ((line.starts_with("IP changed from ")
            || line.starts_with("no need to change the addr"))
            && line.ends_with(" by 'stats socket command'"))
}

/// Whether every line of a runtime API reply is a success (see
/// [`is_success_line`]).
pub fn all_succeeded(out: &str) -> bool {
    out.lines().all(is_success_line)
}

/// HAProxy's reply to a command naming a server its backend does not hold.
pub const NO_SUCH_SERVER: &str = "No such server.";

/// The shared node checks HAProxy runs (see [`NODE_CHECKS`]): which check
/// server each node's servers track, and the spares still free.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckSlots {
    /// By node server name: the check server and the address it checks.
    pub by_node: BTreeMap<String, (String, IpAddr)>,
    /// Spare check servers not taken yet, the next one last.
    pub free: Vec<String>,
}

impl CheckSlots {
    /// The slots of a configuration just loaded for `entries`: each node's
    /// own check server, and every spare free.
    pub fn loaded(entries: &[&Entry]) -> Self {
        CheckSlots {
            by_node: render::node_checks(entries)
                .into_iter()
                .map(|(name, ip)| (name.clone(), (name, ip)))
                .collect(),
            free: (1..=SPARE_NODE_CHECKS).rev().map(spare_check).collect(),
        }
    }
}

/// The shared node checks, when servers track them.
#[derive(Debug, Clone, Copy)]
pub struct NodeChecks<'a> {
    /// The port each node is checked on.
    pub port: u16,
    pub slots: &'a CheckSlots,
}

/// The runtime commands that turn `old`'s servers into `new`'s, one batch
/// (`;`-separated) per backend, after the shared node checks they need
/// (`checks`). `old` and `new` differ in targets only.
///
/// A node new to HAProxy takes a spare check server (its address set, out
/// of maintenance), and each backend gets a server tracking it: no reload,
/// shared checks or not. Removed servers are put in `drain` in the batch
/// (no new connection; the open ones go on, health checks too) and listed
/// in `drains`: they are deleted once their sessions end or their drain
/// timeout passes (see [`crate::drain`]). A check no Service tracks any
/// more disappears at the next reload.
///
/// `None` when the change needs a reload: no spare check is left.
pub fn commands(old: &Entry, new: &Entry, checks: Option<NodeChecks<'_>>) -> Option<RuntimePlan> {
    let tracked = checks.filter(|_| new.spec.health_check == HealthCheck::TrafficPort);
    let servers = |e: &Entry| -> BTreeMap<String, IpAddr> {
        e.spec
            .targets
            .iter()
            .filter_map(|t| Some((server_name(&t.node), *t.addresses.first()?)))
            .collect()
    };
    let (before, after) = (servers(old), servers(new));
    let node_of: BTreeMap<String, &str> = old
        .spec
        .targets
        .iter()
        .map(|t| (server_name(&t.node), t.node.as_str()))
        .collect();
    let mut plan = RuntimePlan::default();
    if let Some(c) = tracked {
        plan.slots = Some(node_checks(c, &after, &mut plan.checks)?);
    }
    let slots = plan.slots.clone().unwrap_or_default();
    for l in new
        .spec
        .listeners
        .iter()
        .filter(|l| l.protocol == Protocol::Tcp)
    {
        let backend = backend_name(new, l.port);
        let mut cmds = Vec::new();
        for (name, ip) in &after {
            let target = format!("{backend}/{name}");
            match before.get(name) {
                Some(old_ip) if old_ip == ip => {}
                Some(_) => cmds.push(format!(
                    "set server {target} addr {ip} port {}",
                    l.node_port
                )),
                None if tracked.is_some() => {
                    let (check, _) = &slots.by_node[name];
                    cmds.push(format!(
                        "add server {target} {} track {NODE_CHECKS}/{check}{}",
                        addr(*ip, l.node_port),
                        proxy_option(new)
                    ));
                    cmds.push(format!("enable server {target}"));
                }
                None => {
                    cmds.push(format!(
                        "add server {target} {} {}",
                        addr(*ip, l.node_port),
                        server_options(new)
                    ));
                    cmds.push(format!("enable health {target}"));
                    cmds.push(format!("enable server {target}"));
                }
            }
        }
        for name in before.keys().filter(|n| !after.contains_key(*n)) {
            let target = format!("{backend}/{name}");
            cmds.push(format!("set server {target} state drain"));
            plan.drains.push((
                (backend.clone(), name.clone()),
                node_of.get(name).copied().unwrap_or_default().to_owned(),
            ));
        }
        if !cmds.is_empty() {
            plan.batches.push(cmds.join("; "));
        }
    }
    Some(plan)
}

/// The shared checks for the nodes in `after` (server name to address):
/// each one's check readdressed, or a spare taken for a node new to
/// HAProxy, the commands pushed onto `cmds`. `None` when no spare is left.
fn node_checks(
    c: NodeChecks<'_>,
    after: &BTreeMap<String, IpAddr>,
    cmds: &mut Vec<String>,
) -> Option<CheckSlots> {
    let mut slots = c.slots.clone();
    for (name, ip) in after {
        match slots.by_node.get(name) {
            Some((_, running)) if running == ip => continue,
            Some((check, _)) => {
                let target = format!("{NODE_CHECKS}/{check}");
                cmds.push(format!("set server {target} addr {ip} port {}", c.port));
                let check = check.clone();
                slots.by_node.insert(name.clone(), (check, *ip));
            }
            None => {
                let check = slots.free.pop()?;
                let target = format!("{NODE_CHECKS}/{check}");
                cmds.push(format!("set server {target} addr {ip} port {}", c.port));
                cmds.push(format!("set server {target} state ready"));
                cmds.push(format!("enable health {target}"));
                slots.by_node.insert(name.clone(), (check, *ip));
            }
        }
    }
    Some(slots)
}

/// HAProxy's reply to `add server` for a name its backend still holds: a
/// server still draining (its node came back before its sessions ended).
pub const ALREADY_EXISTS: &str = "Already exists a server with the same name";

/// `batch` for servers that may still exist, draining (see
/// [`ALREADY_EXISTS`]): each `add server` becomes `set server … addr …
/// port …` and `set server … state ready` (out of drain), the enabling
/// that follows it stays. Every command of a batch is idempotent, so the
/// whole batch runs again.
pub fn readding(batch: &str) -> String {
    batch
        .split("; ")
        .map(|cmd| {
            let words: Vec<&str> = cmd.split_whitespace().collect();
            match (words.first(), words.get(1), words.get(2), words.get(3)) {
                (Some(&"add"), Some(&"server"), Some(target), Some(at)) => {
                    match at.parse::<std::net::SocketAddr>() {
                        Ok(sa) => format!(
                            "set server {target} addr {} port {}; set server {target} state ready",
                            sa.ip(),
                            sa.port()
                        ),
                        Err(_) => cmd.to_owned(),
                    }
                }
                _ => cmd.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The longest runtime API line FerryLB sends: HAProxy reads a command line
/// into one buffer (16 KiB by default), so this leaves room.
pub const LINE_MAX: usize = 8192;

/// Packs `items` (each one command or several joined by `; `) into runtime
/// API lines of at most about `max` bytes, each with the indexes of the
/// items it carries, in order. An item longer than `max` has a line of its
/// own; empty items are left out.
#[must_use]
pub fn pack(items: impl IntoIterator<Item = String>, max: usize) -> Vec<(String, Vec<usize>)> {
    let mut lines: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        if item.is_empty() {
            continue;
        }
        match lines.last_mut() {
            Some((l, members)) if l.len() + 2 + item.len() <= max => {
                l.push_str("; ");
                l.push_str(&item);
                members.push(i);
            }
            _ => lines.push((item, vec![i])),
        }
    }
    lines
}

/// Runtime API commands for one change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RuntimePlan {
    /// Shared node checks to add or readdress, one command each, before
    /// the batches (whose servers track them).
    pub checks: Vec<String>,
    /// Must all succeed, one batch per backend.
    pub batches: Vec<String>,
    /// Servers put in `drain`, with the node each is for.
    pub drains: Vec<(crate::drain::ServerKey, String)>,
    /// The shared node checks once `checks` ran (with them on).
    pub slots: Option<CheckSlots>,
}

fn proxy_option(e: &Entry) -> &'static str {
    if e.options.proxy_protocol_v2 {
        " send-proxy-v2"
    } else {
        ""
    }
}

/// Dynamic servers do not inherit `default-server`: the same options, spelt out.
fn server_options(e: &Entry) -> String {
    let mut o = crate::render::check_options(&e.options);
    if let HealthCheck::Http { port, .. } = &e.spec.health_check {
        o.push_str(&format!(" port {port}"));
    }
    o.push_str(proxy_option(e));
    o
}

/// Sends `line` to the admin socket and returns HAProxy's whole answer,
/// within 5 s.
///
/// # Errors
/// When the socket cannot be reached or does not answer in time.
pub async fn ask(socket: &Path, line: &str) -> Result<String, String> {
    let io = async {
        let mut s = UnixStream::connect(socket).await?;
        s.write_all(format!("{line}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| format!("admin socket {} timed out", socket.display()))?
        .map_err(|e| format!("admin socket {}: {e}", socket.display()))
}

/// Runs one batch on the admin socket.
///
/// # Errors
/// When the socket cannot be reached or HAProxy refuses a command.
pub async fn run(socket: &Path, batch: &str) -> Result<(), ProviderError> {
    let fail = |m: String| ProviderError::transient(reason::HAPROXY_RUNTIME_API_FAILED, m);
    let out = ask(socket, batch).await.map_err(fail)?;
    if !all_succeeded(&out) {
        return Err(fail(format!("haproxy refused `{batch}`: {}", out.trim())));
    }
    Ok(())
}

/// A test entry for Service `ns/name` on nodePort 30080, port 80, with
/// `nodes` (name, address) as targets and default options.
#[cfg(test)]
pub(crate) fn test_entry(name: &str, nodes: &[(&str, &str)]) -> Entry {
    let targets = nodes
        .iter()
        .map(|(n, ip)| ferrylb_model::Target {
            node: (*n).into(),
            addresses: vec![ip.parse().unwrap()],
            provider_id: None,
        })
        .collect();
    let mut spec = ferrylb_model::conformance::sample_spec("ns", name, 30080, targets);
    spec.annotations = BTreeMap::new();
    Entry {
        spec,
        vips: vec!["127.0.0.100".parse().unwrap()],
        options: crate::options::Options::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(targets: &[(&str, &str)]) -> Entry {
        test_entry("web", targets)
    }

    #[test]
    fn a_server_still_draining_is_readdressed_and_made_ready_instead_of_added() {
        let batch = "set server be/n2 addr 10.0.0.22 port 30080; \
                     add server be/n3 10.0.0.3:30080 check inter 2000ms fastinter 250ms downinter 500ms; enable health be/n3; enable server be/n3; \
                     add server be/n6 [fd00::6]:30080 track ferrylb_node_checks/n6; enable server be/n6";
        assert_eq!(
            readding(batch),
            "set server be/n2 addr 10.0.0.22 port 30080; \
             set server be/n3 addr 10.0.0.3 port 30080; set server be/n3 state ready; enable health be/n3; enable server be/n3; \
             set server be/n6 addr fd00::6 port 30080; set server be/n6 state ready; enable server be/n6"
        );
    }

    /// Replies HAProxy 2.6 gave to the commands FerryLB sends.
    #[test]
    fn items_are_packed_into_bounded_lines_that_name_what_they_carry() {
        let items = vec![
            "a".repeat(40),
            String::new(),
            "b".repeat(40),
            "c".repeat(150),
            "d".repeat(10),
        ];
        let lines = pack(items.clone(), 100);
        let carried: Vec<&[usize]> = lines.iter().map(|(_, m)| m.as_slice()).collect();
        // The empty item is left out; the long one has a line of its own.
        assert_eq!(carried, [&[0, 2][..], &[3], &[4]]);
        assert_eq!(lines[0].0, format!("{}; {}", items[0], items[2]));
        assert!(lines.iter().all(|(l, m)| l.len() <= 100 || m.len() == 1));
        assert!(pack(Vec::new(), 100).is_empty());
    }

    #[test]
    fn only_documented_success_replies_count_as_success() {
        let ok = [
            "IP changed from '127.0.0.1' to '127.0.0.2', port changed from '1' to '2' by 'stats socket command'\n\n",
            "no need to change the addr, no need to change the port by 'stats socket command'\n\n",
            "New server registered.\n\n\n\n",
            "\nServer deleted.\n",
            "\n\n",
        ];
        for out in ok {
            assert!(out.lines().all(is_success_line), "{out:?}");
        }
        let refused = [
            "Already exists a server with the same name in backend.\n\n",
            "No such server.\n\n",
            "Unknown command. Please enter one of the following commands only :\n",
            "New server registered.\nsomething unforeseen\n",
        ];
        for out in refused {
            assert!(!out.lines().all(is_success_line), "{out:?}");
        }
    }

    #[test]
    fn adds_moves_and_removes_servers() {
        let old = entry(&[("n1", "10.0.0.1"), ("n2", "10.0.0.2")]);
        let new = entry(&[("n2", "10.0.0.22"), ("n3", "10.0.0.3")]);
        let be = backend_name(&new, 80);
        assert_eq!(
            commands(&old, &new, None).unwrap(),
            RuntimePlan {
                batches: vec![format!(
                    "set server {be}/n2 addr 10.0.0.22 port 30080; \
                     add server {be}/n3 10.0.0.3:30080 check inter 2000ms fastinter 250ms downinter 500ms; enable health {be}/n3; enable server {be}/n3; \
                     set server {be}/n1 state drain"
                )],
                drains: vec![((be.clone(), "n1".into()), "n1".into())],
                ..RuntimePlan::default()
            }
        );
        assert_eq!(commands(&new, &new, None).unwrap(), RuntimePlan::default());
    }

    #[test]
    fn a_new_node_takes_a_spare_check_and_its_servers_track_it() {
        let old = entry(&[("n1", "10.0.0.1"), ("n2", "10.0.0.2")]);
        let new = entry(&[("n1", "10.0.0.1"), ("n2", "10.0.0.22"), ("n3", "10.0.0.3")]);
        let be = backend_name(&new, 80);
        let loaded = CheckSlots::loaded(&[&old]);
        assert_eq!(loaded.free.len(), SPARE_NODE_CHECKS);
        let checks = |slots| Some(NodeChecks { port: 10256, slots });
        let plan = commands(&old, &new, checks(&loaded)).unwrap();
        assert_eq!(
            plan.checks,
            [
                "set server ferrylb_node_checks/n2 addr 10.0.0.22 port 10256",
                "set server ferrylb_node_checks/ferrylb_spare_1 addr 10.0.0.3 port 10256",
                "set server ferrylb_node_checks/ferrylb_spare_1 state ready",
                "enable health ferrylb_node_checks/ferrylb_spare_1",
            ]
        );
        assert_eq!(
            plan.batches,
            [format!(
                "set server {be}/n2 addr 10.0.0.22 port 30080; \
                 add server {be}/n3 10.0.0.3:30080 track ferrylb_node_checks/ferrylb_spare_1; enable server {be}/n3"
            )]
        );
        // The next Service finds the check in place, and tracks the same.
        let slots = plan.slots.unwrap();
        assert_eq!(slots.free.len(), SPARE_NODE_CHECKS - 1);
        let next = commands(&old, &new, checks(&slots)).unwrap();
        assert!(next.checks.is_empty());
        assert!(next.batches[0].contains("track ferrylb_node_checks/ferrylb_spare_1"));
        // No spare left: a reload.
        let none_left = CheckSlots {
            free: vec![],
            ..loaded.clone()
        };
        assert_eq!(commands(&old, &new, checks(&none_left)), None);
        // A Service with its own check (eTP Local) tracks nothing.
        let mut local = new.clone();
        local.spec.health_check = HealthCheck::Http {
            port: 32000,
            path: "/healthz".into(),
        };
        let plan = commands(&old, &local, checks(&loaded)).unwrap();
        assert!(plan.checks.is_empty());
        assert!(
            plan.batches[0]
                .contains("check inter 2000ms fastinter 250ms downinter 500ms port 32000"),
            "{plan:?}"
        );
    }
}
