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

use crate::render::{Entry, backend_name, server_name};

/// Words in an answer that mean a command failed.
const FAILURE_MARKERS: &[&str] = &[
    "No such",
    "rror",
    "failed",
    "Require",
    "Can't",
    "not found",
    "nvalid",
    "nknown",
];

/// The runtime commands that turn `old`'s servers into `new`'s, one batch
/// (`;`-separated) per backend. `old` and `new` differ in targets only.
///
/// Removed servers are put in maintenance (no new connections) in the
/// batch; deleting them is best effort (`deletions`), since HAProxy refuses
/// while a connection is still open and cutting it would fail a client. A
/// server left in maintenance disappears at the next reload.
///
/// `None` when the change needs a reload: a new server that would track a
/// shared node check (its check backend may not exist yet).
pub fn commands(old: &Entry, new: &Entry, node_checks: bool) -> Option<RuntimePlan> {
    let tracked = node_checks && new.spec.health_check == HealthCheck::TrafficPort;
    let mut plan = RuntimePlan::default();
    for l in new
        .spec
        .listeners
        .iter()
        .filter(|l| l.protocol == Protocol::Tcp)
    {
        let backend = backend_name(new, l.port);
        let servers = |e: &Entry| -> BTreeMap<String, IpAddr> {
            e.spec
                .targets
                .iter()
                .filter_map(|t| Some((server_name(&t.node), *t.addresses.first()?)))
                .collect()
        };
        let (before, after) = (servers(old), servers(new));
        let mut cmds = Vec::new();
        for (name, ip) in &after {
            let target = format!("{backend}/{name}");
            match before.get(name) {
                Some(old_ip) if old_ip == ip => {}
                Some(_) => cmds.push(format!(
                    "set server {target} addr {ip} port {}",
                    l.node_port
                )),
                None if tracked => return None,
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
            cmds.push(format!("set server {target} state maint"));
            plan.deletions.push(format!("del server {target}"));
        }
        if !cmds.is_empty() {
            plan.batches.push(cmds.join("; "));
        }
    }
    Some(plan)
}

/// Runtime API commands for one change.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RuntimePlan {
    /// Must all succeed, one batch per backend.
    pub batches: Vec<String>,
    /// May be refused while connections drain.
    pub deletions: Vec<String>,
}

/// Dynamic servers do not inherit `default-server`: the same options, spelt out.
fn server_options(e: &Entry) -> String {
    let mut o = format!("check inter {}ms", e.options.check_interval.as_millis());
    if let HealthCheck::Http { port, .. } = &e.spec.health_check {
        o.push_str(&format!(" port {port}"));
    }
    if e.options.proxy_protocol_v2 {
        o.push_str(" send-proxy-v2");
    }
    o
}

fn addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v) => format!("{v}:{port}"),
        IpAddr::V6(v) => format!("[{v}]:{port}"),
    }
}

/// Runs one batch on the admin socket.
///
/// # Errors
/// When the socket cannot be reached or HAProxy refuses a command.
pub async fn run(socket: &Path, batch: &str) -> Result<(), ProviderError> {
    let fail = |m: String| ProviderError::transient(reason::HAPROXY_RUNTIME_API_FAILED, m);
    let io = async {
        let mut s = UnixStream::connect(socket).await?;
        s.write_all(format!("{batch}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| fail(format!("admin socket {} timed out", socket.display())))?
        .map_err(|e| fail(format!("admin socket {}: {e}", socket.display())))?;
    if FAILURE_MARKERS.iter().any(|m| out.contains(m)) {
        return Err(fail(format!("haproxy refused `{batch}`: {}", out.trim())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferrylb_model::Target;
    use ferrylb_model::conformance::sample_spec;

    use super::*;
    use crate::options::Options;

    fn entry(targets: &[(&str, &str)]) -> Entry {
        let ts = targets
            .iter()
            .map(|(n, ip)| Target {
                node: (*n).into(),
                addresses: vec![ip.parse().unwrap()],
                provider_id: None,
            })
            .collect();
        let mut spec = sample_spec("ns", "web", 30080, ts);
        spec.annotations = BTreeMap::new();
        Entry {
            spec,
            vip: "127.0.0.100".parse().unwrap(),
            options: Options::default(),
        }
    }

    #[test]
    fn adds_moves_and_removes_servers() {
        let old = entry(&[("n1", "10.0.0.1"), ("n2", "10.0.0.2")]);
        let new = entry(&[("n2", "10.0.0.22"), ("n3", "10.0.0.3")]);
        let be = backend_name(&new, 80);
        assert_eq!(
            commands(&old, &new, false).unwrap(),
            RuntimePlan {
                batches: vec![format!(
                    "set server {be}/n2 addr 10.0.0.22 port 30080; \
                     add server {be}/n3 10.0.0.3:30080 check inter 2000ms; enable health {be}/n3; enable server {be}/n3; \
                     set server {be}/n1 state maint"
                )],
                deletions: vec![format!("del server {be}/n1")],
            }
        );
        assert_eq!(commands(&new, &new, false).unwrap(), RuntimePlan::default());
        assert_eq!(
            commands(&old, &new, true),
            None,
            "a tracked server cannot be added at runtime"
        );
        let fewer = entry(&[("n1", "10.0.0.1")]);
        assert_eq!(
            commands(&old, &fewer, true).unwrap().batches.len(),
            1,
            "removals still can"
        );
    }
}
